//! Certificates for the WSS listener, in the layout the WebRTC guides use for
//! `/etc/asterisk/keys`: `asterisk.crt` (full chain), `asterisk.key`, `asterisk.pem` (certificate
//! then key), and `ca.crt` in self-signed mode.
//!
//! Owns: the layout ([`CertLayout`]) and the checks shared by every way of getting a
//! certificate (names, expiry, key match). [`local_ca`] makes and reuses the self-signed CA.
//! Writing files is the bundle's job (render) — nothing here writes into `deploy/`.
//! [`trust`] builds the TLS client configuration that trusts a CA file (verify and media share it).

pub mod acme;
pub mod dns;
pub mod lifecycle;
pub mod local_ca;
pub mod store;
pub mod trust;

use std::collections::BTreeSet;
use std::path::PathBuf;

use thiserror::Error;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::parse_x509_pem;

/// File names in the keys directory.
pub mod files {
    /// Leaf certificate followed by the rest of its chain.
    pub const CERT: &str = "asterisk.crt";
    /// The leaf's private key (PKCS#8 PEM).
    pub const KEY: &str = "asterisk.key";
    /// Certificate chain followed by the key, for tools that want one file.
    pub const PEM: &str = "asterisk.pem";
    /// The local CA certificate users import into their browser (self-signed mode).
    pub const CA: &str = "ca.crt";
}

/// The WSS certificate files, in memory.
#[derive(Clone)]
pub struct CertLayout {
    /// `asterisk.crt`: the leaf followed by its issuer(s).
    pub chain_pem: String,
    /// `asterisk.key`.
    pub key_pem: String,
    /// `ca.crt`, in self-signed mode.
    pub ca_pem: Option<String>,
}

impl std::fmt::Debug for CertLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertLayout").field("chain_pem", &self.chain_pem).field("key_pem", &"<redacted>").finish()
    }
}

impl CertLayout {
    /// `asterisk.pem`: the chain followed by the key.
    pub fn combined_pem(&self) -> String {
        format!("{}{}", self.chain_pem, self.key_pem)
    }
}

/// Errors while making or reading certificates.
#[derive(Debug, Error, miette::Diagnostic)]
pub enum CertError {
    /// A file of the CA or the keys directory could not be read.
    #[error("failed to read {}", path.display())]
    Read {
        /// The file that could not be read.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The local CA could not be stored.
    #[error("failed to write the local CA to {}", path.display())]
    #[diagnostic(help("check that the directory is writable, or set tls.ca_dir in the spec"))]
    WriteCa {
        /// The file that could not be written.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The stored CA is not usable.
    #[error("the local CA in {} is not usable: {reason}", dir.display())]
    #[diagnostic(help("move the directory away to make a new CA (browsers must then trust the new ca.crt)"))]
    BadCa {
        /// The CA directory.
        dir: PathBuf,
        /// What makes it unusable.
        reason: String,
    },
    /// Certificate generation failed.
    #[error("failed to generate a certificate")]
    Generate(#[from] rcgen::Error),
    /// A certificate was expected in the check-only mode but the CA does not exist yet.
    #[error("the local CA does not exist yet in {}", dir.display())]
    #[diagnostic(help("run `astrtc render` without --check once to create it"))]
    NoCa {
        /// Where it was looked for.
        dir: PathBuf,
    },
}

/// What a certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    /// DNS names in the subject alternative name extension, lowercase.
    pub dns_names: BTreeSet<String>,
    /// Seconds until it expires (negative when expired).
    pub seconds_left: i64,
    /// Its whole validity period, in seconds.
    pub lifetime_seconds: i64,
    /// Subject public key info, DER.
    pub spki_der: Vec<u8>,
    /// Issuer distinguished name, DER.
    pub issuer_der: Vec<u8>,
    /// Serial number, hex.
    pub serial: String,
}

/// Reads the first certificate of a PEM chain.
pub fn cert_facts(pem: &str) -> Result<CertFacts, String> {
    let (_, pem) = parse_x509_pem(pem.as_bytes()).map_err(|e| format!("not PEM: {e}"))?;
    cert_facts_der(&pem.contents)
}

/// Reads a DER certificate.
pub fn cert_facts_der(der: &[u8]) -> Result<CertFacts, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let mut dns_names = BTreeSet::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(n) = name {
                dns_names.insert(n.to_ascii_lowercase());
            }
        }
    }
    let not_after = cert.validity().not_after.timestamp();
    let not_before = cert.validity().not_before.timestamp();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    Ok(CertFacts {
        dns_names,
        seconds_left: not_after - now,
        lifetime_seconds: not_after - not_before,
        spki_der: cert.public_key().raw.to_vec(),
        issuer_der: cert.issuer().as_raw().to_vec(),
        serial: cert.raw_serial_as_string(),
    })
}
