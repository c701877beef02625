//! The keys directory as ACME mode keeps it: whether the certificate there is due, and writing a
//! new one in place (each file through a temporary file, fsync and rename; key files 0640, owned
//! by the group that may read them), so a running Asterisk never reads a half-written file.

use std::path::Path;

use super::{cert_facts, files, CertLayout};
use crate::plan::SecretAccess;

/// Whether the certificate in a keys directory needs replacing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    /// No complete certificate and key.
    Missing,
    /// The names differ from the spec's.
    NamesChanged,
    /// The key does not belong to the certificate.
    KeyMismatch,
    /// Less than a third of its lifetime is left.
    Renew {
        /// Days left.
        days_left: i64,
    },
    /// Valid and not due.
    NotDue {
        /// Days left.
        days_left: i64,
    },
}

/// Looks at `keys/asterisk.crt` and `keys/asterisk.key`.
pub fn due(keys: &Path, names: &[String]) -> Due {
    let (Ok(chain), Ok(key)) =
        (std::fs::read_to_string(keys.join(files::CERT)), std::fs::read_to_string(keys.join(files::KEY)))
    else {
        return Due::Missing;
    };
    let Ok(facts) = cert_facts(&chain) else { return Due::Missing };
    let wanted: std::collections::BTreeSet<String> = names.iter().map(|n| n.to_ascii_lowercase()).collect();
    if facts.dns_names != wanted {
        return Due::NamesChanged;
    }
    match rcgen::KeyPair::from_pem(&key) {
        Ok(k) if rcgen::PublicKeyData::subject_public_key_info(&k) == facts.spki_der => {}
        _ => return Due::KeyMismatch,
    }
    let days_left = facts.seconds_left / 86400;
    if facts.seconds_left * 3 < facts.lifetime_seconds {
        Due::Renew { days_left }
    } else {
        Due::NotDue { days_left }
    }
}

/// Writes the certificate files into `keys` in place.
pub fn write(keys: &Path, cert: &CertLayout, access: SecretAccess) -> std::io::Result<()> {
    std::fs::create_dir_all(keys)?;
    let secret = |name: &str, text: String| -> std::io::Result<()> {
        let path = keys.join(name);
        super::local_ca::write_atomic(&path, text.as_bytes(), 0o640)?;
        if access.chown {
            std::os::unix::fs::chown(&path, None, Some(access.gid))?;
        }
        Ok(())
    };
    // Key first, certificate last: a reader that sees the new certificate sees its key.
    secret(files::KEY, cert.key_pem.clone())?;
    secret(files::PEM, cert.combined_pem())?;
    super::local_ca::write_atomic(&keys.join(files::CERT), cert.chain_pem.as_bytes(), 0o644)
}
