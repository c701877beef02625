//! The self-signed mode's local CA: made once per deployment, kept beside the spec (not in
//! `deploy/`, which is mounted into the container), and reused on every render so that a browser
//! that trusts `ca.crt` keeps trusting re-rendered deployments.
//!
//! Owns: creating and loading the CA (`ca.crt` 0644, `ca.key` 0600 in a 0700 directory, written
//! with [`fsx::write_atomic`]) and issuing or reusing the WSS leaf certificate.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use super::{cert_facts, CertError, CertLayout};
use crate::fsx;

/// CA certificate file in the CA directory.
pub const CA_CERT_FILE: &str = "ca.crt";
/// CA key file in the CA directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// Lifetime of the CA.
pub const CA_LIFETIME_DAYS: i64 = 3650;
/// Lifetime of a leaf certificate.
pub const LEAF_LIFETIME_DAYS: i64 = 365;
/// A leaf with fewer days left than this is re-issued.
pub const LEAF_RENEW_DAYS: i64 = 30;

/// A loaded local CA.
pub struct LocalCa {
    dir: PathBuf,
    cert_pem: String,
    key: KeyPair,
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS random source failed");
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // no leading zero byte
    SerialNumber::from(bytes.to_vec())
}

impl LocalCa {
    /// Loads the CA in `dir`; `Ok(None)` when there is none yet.
    pub fn load(dir: &Path) -> Result<Option<LocalCa>, CertError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        if !cert_path.exists() && !key_path.exists() {
            return Ok(None);
        }
        let read = |p: &Path| fs::read_to_string(p).map_err(|source| CertError::Read { path: p.into(), source });
        let cert_pem = read(&cert_path)?;
        let key_pem = read(&key_path)?;
        let bad = |reason: String| CertError::BadCa { dir: dir.into(), reason };
        let key = KeyPair::from_pem(&key_pem).map_err(|e| bad(format!("{CA_KEY_FILE}: {e}")))?;
        let facts = cert_facts(&cert_pem).map_err(|e| bad(format!("{CA_CERT_FILE}: {e}")))?;
        if facts.spki_der != key.subject_public_key_info() {
            return Err(bad(format!("{CA_KEY_FILE} does not belong to {CA_CERT_FILE}")));
        }
        if facts.seconds_left < Duration::days(LEAF_LIFETIME_DAYS).whole_seconds() {
            return Err(bad("it expires within a year".into()));
        }
        Ok(Some(LocalCa { dir: dir.into(), cert_pem, key }))
    }

    /// Loads the CA in `dir`, or makes one there.
    pub fn load_or_create(dir: &Path, label: &str) -> Result<LocalCa, CertError> {
        if let Some(ca) = LocalCa::load(dir)? {
            return Ok(ca);
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        let mut tag = [0u8; 3];
        getrandom::fill(&mut tag).expect("the OS random source failed");
        let tag: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        // A distinct name per CA: browsers get confused by two CAs with the same subject.
        dn.push(DnType::CommonName, format!("astrtc local CA {label} {tag}"));
        dn.push(DnType::OrganizationName, "astrtc");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(CA_LIFETIME_DAYS);
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        let ca = LocalCa { dir: dir.into(), cert_pem: cert.pem(), key };
        ca.store()?;
        Ok(ca)
    }

    fn store(&self) -> Result<(), CertError> {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CertError::WriteCa { path, source }
        };
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir).map_err(err(&self.dir))?;
        fsx::write_atomic(&self.dir.join(CA_KEY_FILE), self.key.serialize_pem().as_bytes(), 0o600)
            .map_err(err(&self.dir.join(CA_KEY_FILE)))?;
        fsx::write_atomic(&self.dir.join(CA_CERT_FILE), self.cert_pem.as_bytes(), 0o644)
            .map_err(err(&self.dir.join(CA_CERT_FILE)))?;
        Ok(())
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Returns the existing leaf when it is still good for `names` (same names, issued by this
    /// CA, key matching, not near expiry); otherwise issues a new one.
    pub fn leaf(&self, names: &[String], existing: Option<&CertLayout>) -> Result<CertLayout, CertError> {
        if let Some(existing) = existing {
            if self.is_reusable(names, existing) {
                return Ok(CertLayout { ca_pem: Some(self.cert_pem.clone()), ..existing.clone() });
            }
        }
        self.issue(names)
    }

    fn is_reusable(&self, names: &[String], existing: &CertLayout) -> bool {
        let Ok(leaf) = cert_facts(&existing.chain_pem) else {
            return false;
        };
        let Ok(key) = KeyPair::from_pem(&existing.key_pem) else {
            return false;
        };
        let Ok(ca_der) = x509_parser::pem::parse_x509_pem(self.cert_pem.as_bytes()) else {
            return false;
        };
        let Ok(ca_cert) = ca_der.1.parse_x509() else {
            return false;
        };
        let signed_by_us = x509_parser::pem::parse_x509_pem(existing.chain_pem.as_bytes())
            .ok()
            .and_then(|(_, p)| p.parse_x509().ok().map(|c| c.verify_signature(Some(ca_cert.public_key())).is_ok()))
            .unwrap_or(false);
        let wanted: std::collections::BTreeSet<String> = names.iter().map(|n| n.to_ascii_lowercase()).collect();
        signed_by_us
            && leaf.dns_names == wanted
            && leaf.spki_der == key.subject_public_key_info()
            && leaf.seconds_left > Duration::days(LEAF_RENEW_DAYS).whole_seconds()
            && existing.chain_pem.ends_with(&self.cert_pem)
    }

    fn issue(&self, names: &[String]) -> Result<CertLayout, CertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, names[0].clone());
        params.distinguished_name = dn;
        params.subject_alt_names =
            names.iter().map(|n| Ok(SanType::DnsName(n.clone().try_into()?))).collect::<Result<_, rcgen::Error>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(LEAF_LIFETIME_DAYS);
        params.serial_number = Some(random_serial());
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(CertLayout {
            chain_pem: format!("{}{}", cert.pem(), self.cert_pem),
            key_pem: key.serialize_pem(),
            ca_pem: Some(self.cert_pem.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn ca_is_created_once_and_reused_with_private_modes() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        let a = LocalCa::load_or_create(&ca_dir, "t").unwrap();
        let b = LocalCa::load_or_create(&ca_dir, "t").unwrap();
        assert_eq!(a.cert_pem(), b.cert_pem());
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&ca_dir), 0o700);
        assert_eq!(mode(&ca_dir.join(CA_KEY_FILE)), 0o600);
        assert_eq!(mode(&ca_dir.join(CA_CERT_FILE)), 0o644);
    }

    #[test]
    fn leaf_is_reused_until_names_change() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(dir.path(), "t").unwrap();
        let first = ca.leaf(&names(&["pbx.example.test"]), None).unwrap();
        let facts = cert_facts(&first.chain_pem).unwrap();
        assert_eq!(facts.dns_names.iter().collect::<Vec<_>>(), ["pbx.example.test"]);
        let again = ca.leaf(&names(&["pbx.example.test"]), Some(&first)).unwrap();
        assert_eq!(again.chain_pem, first.chain_pem);
        assert_eq!(again.key_pem, first.key_pem);
        let renamed = ca.leaf(&names(&["pbx.example.test", "sip.example.test"]), Some(&first)).unwrap();
        assert_ne!(renamed.chain_pem, first.chain_pem);
        assert_eq!(cert_facts(&renamed.chain_pem).unwrap().dns_names.len(), 2);
    }

    #[test]
    fn leaf_from_another_ca_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let ca1 = LocalCa::load_or_create(&dir.path().join("1"), "t").unwrap();
        let ca2 = LocalCa::load_or_create(&dir.path().join("2"), "t").unwrap();
        let leaf1 = ca1.leaf(&names(&["localhost"]), None).unwrap();
        let leaf2 = ca2.leaf(&names(&["localhost"]), Some(&leaf1)).unwrap();
        assert_ne!(leaf1.chain_pem, leaf2.chain_pem);
        assert!(leaf2.chain_pem.ends_with(ca2.cert_pem()));
    }

    #[test]
    fn mismatched_ca_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        LocalCa::load_or_create(&dir.path().join("1"), "t").unwrap();
        LocalCa::load_or_create(&dir.path().join("2"), "t").unwrap();
        fs::copy(dir.path().join("2").join(CA_KEY_FILE), dir.path().join("1").join(CA_KEY_FILE)).unwrap();
        let err = LocalCa::load(&dir.path().join("1")).err().expect("must fail");
        assert!(err.to_string().contains("not usable"), "{err}");
    }
}
