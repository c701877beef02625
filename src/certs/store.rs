//! The keys directory as ACME mode keeps it: whether the certificate there is due, and replacing
//! it so that a reader can never see a half-written file or a certificate beside another
//! certificate's key.
//!
//! Owns: the on-disk layout of ACME certificates. Each certificate is written into its own
//! generation directory (every file through a temporary file, fsync and rename), then one
//! symlink, `.live`, is switched to it with a single `rename(2)`. The names Asterisk reads are
//! stable symlinks through it:
//!
//! ```text
//! keys/asterisk.crt -> .live/asterisk.crt      (0644)
//! keys/asterisk.key -> .live/asterisk.key      (0640, group = the asterisk user's)
//! keys/asterisk.pem -> .live/asterisk.pem      (0640)
//! keys/.live        -> .gen-1764147600123456789
//! ```
//!
//! This is the scheme Kubernetes uses for Secret volumes (`..data`), so the same reader code
//! works for both. The previous generation is kept (a reader that resolved `.live` just before
//! the switch can still open its files); older ones are removed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::{cert_facts, files, CertLayout};
use crate::plan::SecretAccess;

/// The symlink that names the current generation.
pub const LIVE: &str = ".live";
const GEN_PREFIX: &str = ".gen-";

/// Whether a directory entry is part of the generation machinery (not a file Asterisk reads).
pub fn is_internal(name: &std::ffi::OsStr) -> bool {
    let name = name.to_string_lossy();
    name == LIVE || name.starts_with(GEN_PREFIX)
}

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
    let days_left = facts.seconds_left / 86400;
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

/// Writes the certificate into a new generation directory in `keys` and switches `.live` to
/// it. Plain files left by an older layout are replaced by the symlinks.
pub fn write(keys: &Path, cert: &CertLayout, access: SecretAccess) -> std::io::Result<()> {
    std::fs::create_dir_all(keys)?;
    adopt_plain_files(keys, access)?;
    write_generation(keys, cert, access)
}

/// Plain files from an older layout (or a render) are first moved under `.live` unchanged, so
/// that replacing them by symlinks never pairs a new certificate with an old key.
fn adopt_plain_files(keys: &Path, access: SecretAccess) -> std::io::Result<()> {
    let plain = |name: &str| std::fs::symlink_metadata(keys.join(name)).is_ok_and(|m| m.file_type().is_file());
    if !plain(files::CERT) && !plain(files::KEY) {
        return Ok(());
    }
    let (Ok(chain_pem), Ok(key_pem)) =
        (std::fs::read_to_string(keys.join(files::CERT)), std::fs::read_to_string(keys.join(files::KEY)))
    else {
        return Ok(()); // nothing consistent to keep
    };
    write_generation(keys, &CertLayout { chain_pem, key_pem, ca_pem: None }, access)
}

fn write_generation(keys: &Path, cert: &CertLayout, access: SecretAccess) -> std::io::Result<()> {
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let gen_name = format!("{GEN_PREFIX}{stamp}");
    let gen = keys.join(&gen_name);
    std::fs::create_dir(&gen)?;
    std::fs::set_permissions(&gen, std::fs::Permissions::from_mode(0o750))?;
    let group = |path: &Path| -> std::io::Result<()> {
        if access.chown {
            std::os::unix::fs::chown(path, None, Some(access.gid))?;
        }
        Ok(())
    };
    group(&gen)?;
    for (name, text, mode) in [
        (files::KEY, cert.key_pem.clone(), 0o640),
        (files::PEM, cert.combined_pem(), 0o640),
        (files::CERT, cert.chain_pem.clone(), 0o644),
    ] {
        let path = gen.join(name);
        super::local_ca::write_atomic(&path, text.as_bytes(), mode)?;
        group(&path)?;
    }
    sync_dir(&gen);
    let previous = std::fs::read_link(keys.join(LIVE)).ok();
    replace_symlink(keys, LIVE, Path::new(&gen_name))?;
    for name in [files::CERT, files::KEY, files::PEM] {
        let target = Path::new(LIVE).join(name);
        if std::fs::read_link(keys.join(name)).ok().as_deref() != Some(&target) {
            replace_symlink(keys, name, &target)?;
        }
    }
    sync_dir(keys);
    remove_old_generations(keys, &gen_name, previous.as_deref());
    Ok(())
}

/// Points `dir/name` at `target` with one rename, whatever `dir/name` was before.
fn replace_symlink(dir: &Path, name: &str, target: &Path) -> std::io::Result<()> {
    let tmp: PathBuf = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    std::fs::rename(&tmp, dir.join(name))
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Removes generation directories other than the current and the previous one, and temporary
/// files a killed writer left behind.
fn remove_old_generations(keys: &Path, current: &str, previous: Option<&Path>) {
    let Ok(entries) = std::fs::read_dir(keys) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let keep = name == current || previous.is_some_and(|p| p == Path::new(&name));
        if name.starts_with(GEN_PREFIX) && !keep {
            let _ = std::fs::remove_dir_all(entry.path());
        } else if name.starts_with('.') && name.contains(".tmp") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::local_ca::LocalCa;

    fn leaf(ca: &LocalCa, name: &str) -> CertLayout {
        ca.leaf(&[name.to_string()], None).unwrap()
    }

    #[test]
    fn generations_switch_with_one_symlink_and_old_ones_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(&dir.path().join("ca"), "test").unwrap();
        let keys = dir.path().join("keys");
        // An older layout: plain files.
        std::fs::create_dir_all(&keys).unwrap();
        std::fs::write(keys.join(files::CERT), "old").unwrap();
        let access = SecretAccess { gid: 0, chown: false, group_add: None };
        for _ in 0..4 {
            let cert = leaf(&ca, "a.test");
            write(&keys, &cert, access).unwrap();
            assert_eq!(std::fs::read_to_string(keys.join(files::CERT)).unwrap(), cert.chain_pem);
            assert_eq!(std::fs::read_to_string(keys.join(files::KEY)).unwrap(), cert.key_pem);
        }
        let gens = std::fs::read_dir(&keys)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with(GEN_PREFIX))
            .count();
        assert_eq!(gens, 2, "current and previous generation kept");
        assert!(std::fs::symlink_metadata(keys.join(files::CERT)).unwrap().file_type().is_symlink());
        let key_mode = std::fs::metadata(keys.join(files::KEY)).unwrap().permissions().mode() & 0o777;
        assert_eq!(key_mode, 0o640);
        assert!(matches!(due(&keys, &["a.test".into()], RenewPolicy::default()), Due::NotDue { .. }));
        assert_eq!(due(&keys, &["b.test".into()], RenewPolicy::default()), Due::NamesChanged);
        assert!(matches!(due(&keys, &["a.test".into()], RenewPolicy::DaysLeft(100_000)), Due::Renew { .. }));
    }
}
