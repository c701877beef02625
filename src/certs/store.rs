//! The keys directory as ACME mode keeps it: whether the certificate there is due, and replacing
//! it so that a reader can never see a half-written file or a certificate beside another
//! certificate's key.
//!
//! Owns: which files make up a certificate and when it is due. The on-disk protocol — one
//! generation directory per certificate, switched by one rename of the `.live` symlink, the names
//! Asterisk reads being stable symlinks through it — is [`crate::fsx::Generations`]:
//!
//! ```text
//! keys/asterisk.crt -> .live/asterisk.crt      (0644)
//! keys/asterisk.key -> .live/asterisk.key      (0640, group = the asterisk user's)
//! keys/asterisk.pem -> .live/asterisk.pem      (0640)
//! keys/.live        -> .gen-1764147600123456789
//! ```

use std::path::Path;

use super::{cert_facts, files, CertLayout};
use crate::fsx::{GenerationFile, Generations};
use crate::plan::SecretAccess;

/// When to renew.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RenewPolicy {
    /// When less than a third of the certificate's lifetime is left (Let's Encrypt's advice:
    /// day 60 of 90).
    #[default]
    ThirdOfLifetime,
    /// When fewer than this many days are left.
    DaysLeft(i64),
}

impl RenewPolicy {
    /// Seconds before expiry at which a certificate with this lifetime is due.
    pub fn renew_before_seconds(self, lifetime_seconds: i64) -> i64 {
        match self {
            RenewPolicy::ThirdOfLifetime => lifetime_seconds / 3,
            RenewPolicy::DaysLeft(d) => d * 86400,
        }
    }
}

/// Whether the certificate in a keys directory needs replacing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    /// No complete certificate and key.
    Missing,
    /// The names differ from the spec's.
    NamesChanged,
    /// The key does not belong to the certificate.
    KeyMismatch,
    /// Inside the renewal window.
    Renew {
        /// Days left.
        days_left: i64,
    },
    /// Valid and not due.
    NotDue {
        /// Days left.
        days_left: i64,
        /// Seconds until it becomes due.
        due_in_seconds: i64,
    },
}

/// Looks at `keys/asterisk.crt` and `keys/asterisk.key`.
pub fn due(keys: &Path, names: &[String], policy: RenewPolicy) -> Due {
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
    if !key_matches(&key, &facts.spki_der) {
        return Due::KeyMismatch;
    }
    // Whole days, rounded down: a certificate that expired an hour ago has -1 days left, not 0.
    let days_left = facts.seconds_left.div_euclid(86400);
    let due_in_seconds = facts.seconds_left - policy.renew_before_seconds(facts.lifetime_seconds);
    if due_in_seconds <= 0 {
        Due::Renew { days_left }
    } else {
        Due::NotDue { days_left, due_in_seconds }
    }
}

/// Whether a PEM private key belongs to the certificate with this SubjectPublicKeyInfo.
pub fn key_matches(key_pem: &str, spki_der: &[u8]) -> bool {
    rcgen::KeyPair::from_pem(key_pem).is_ok_and(|k| rcgen::PublicKeyData::subject_public_key_info(&k) == spki_der)
}

/// Writes the certificate as a new generation of `keys` and switches to it. Plain files left by
/// an older layout (or a render) are first adopted unchanged as a generation of their own, so
/// that replacing them by symlinks never pairs a new certificate with an old key.
pub fn write(keys: &Path, cert: &CertLayout, access: SecretAccess) -> std::io::Result<()> {
    let gens = Generations::new(keys, access.chown.then_some(access.gid));
    if gens.is_plain_file(files::CERT) || gens.is_plain_file(files::KEY) {
        if let (Ok(chain_pem), Ok(key_pem)) =
            (std::fs::read_to_string(keys.join(files::CERT)), std::fs::read_to_string(keys.join(files::KEY)))
        {
            switch(&gens, &CertLayout { chain_pem, key_pem, ca_pem: None })?;
        }
    }
    switch(&gens, cert)
}

/// Removes what a writer killed mid-switch left in `keys` (see [`Generations::tidy`]).
pub fn tidy(keys: &Path, access: SecretAccess) -> std::io::Result<()> {
    Generations::new(keys, access.chown.then_some(access.gid)).tidy()
}

fn switch(gens: &Generations, cert: &CertLayout) -> std::io::Result<()> {
    let pem = cert.combined_pem();
    gens.switch(&[
        GenerationFile { name: files::KEY, bytes: cert.key_pem.as_bytes(), mode: 0o640 },
        GenerationFile { name: files::PEM, bytes: pem.as_bytes(), mode: 0o640 },
        GenerationFile { name: files::CERT, bytes: cert.chain_pem.as_bytes(), mode: 0o644 },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::local_ca::LocalCa;

    fn leaf(ca: &LocalCa, name: &str) -> CertLayout {
        ca.leaf(&[name.to_string()], None).unwrap()
    }

    #[test]
    fn certificates_replace_plain_files_and_are_due_by_names_and_policy() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(&dir.path().join("ca"), "test").unwrap();
        let keys = dir.path().join("keys");
        // An older layout: plain files, as a self-signed render leaves them.
        let old = leaf(&ca, "a.test");
        std::fs::create_dir_all(&keys).unwrap();
        std::fs::write(keys.join(files::CERT), &old.chain_pem).unwrap();
        std::fs::write(keys.join(files::KEY), &old.key_pem).unwrap();
        let access = SecretAccess { gid: 0, chown: false, group_add: None };
        let cert = leaf(&ca, "a.test");
        write(&keys, &cert, access).unwrap();
        assert_eq!(std::fs::read_to_string(keys.join(files::CERT)).unwrap(), cert.chain_pem);
        assert_eq!(std::fs::read_to_string(keys.join(files::KEY)).unwrap(), cert.key_pem);
        assert_eq!(std::fs::read_to_string(keys.join(files::PEM)).unwrap(), cert.combined_pem());
        assert!(std::fs::symlink_metadata(keys.join(files::KEY)).unwrap().file_type().is_symlink());
        assert!(matches!(due(&keys, &["a.test".into()], RenewPolicy::default()), Due::NotDue { .. }));
        assert_eq!(due(&keys, &["b.test".into()], RenewPolicy::default()), Due::NamesChanged);
        assert!(matches!(due(&keys, &["a.test".into()], RenewPolicy::DaysLeft(100_000)), Due::Renew { .. }));
        std::fs::remove_file(keys.join(files::KEY)).unwrap();
        assert_eq!(due(&keys, &["a.test".into()], RenewPolicy::default()), Due::Missing);
    }
}
