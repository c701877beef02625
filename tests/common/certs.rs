//! Certificates made to order for the tests: any names, any validity (also in the past), self-signed
//! or signed by a given CA (e.g. a deployment's local CA, read from its `ca_dir`).

use time::{Duration, OffsetDateTime};

/// A certificate and its key, PEM.
pub struct Made {
    /// The certificate alone (no chain).
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

/// `n` days (negative: in the past), for [`make`].
pub fn days(n: i64) -> Duration {
    Duration::days(n)
}

/// A leaf for `names`, valid from now + `valid.start` to now + `valid.end` (negative: in the
/// past), signed by the CA `(ca_cert_pem, ca_key_pem)` or else self-signed.
pub fn make(names: &[&str], valid: std::ops::Range<Duration>, issuer: Option<(&str, &str)>) -> Made {
    let mut params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let now = OffsetDateTime::now_utc();
    params.not_before = now + valid.start;
    params.not_after = now + valid.end;
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = match issuer {
        Some((ca_pem, ca_key_pem)) => {
            let ca_key = rcgen::KeyPair::from_pem(ca_key_pem).unwrap();
            let issuer = rcgen::Issuer::from_ca_cert_pem(ca_pem, ca_key).unwrap();
            params.signed_by(&key, &issuer).unwrap()
        }
        None => params.self_signed(&key).unwrap(),
    };
    Made { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
}

/// Writes a certificate and key into an ACME keys directory the way `astrtc certs` does
/// (generations behind `.live`); `key_pem` may belong to another certificate.
pub fn store(keys: &std::path::Path, chain_pem: &str, key_pem: &str) {
    let layout =
        astrtc::certs::CertLayout { chain_pem: chain_pem.to_string(), key_pem: key_pem.to_string(), ca_pem: None };
    let access = astrtc::plan::SecretAccess { gid: 0, chown: false, group_add: None };
    astrtc::certs::store::write(keys, &layout, access).unwrap();
}

/// What a keys directory holds: each entry's name and its symlink target or contents. Equal
/// before and after means nothing was written.
pub fn listing(dir: &std::path::Path) -> std::collections::BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let path = e.path();
            let what = match std::fs::read_link(&path) {
                Ok(target) => format!("-> {}", target.display()),
                Err(_) if path.is_dir() => format!("dir {:?}", listing(&path)),
                Err(_) => std::fs::read_to_string(&path).unwrap_or_default(),
            };
            (e.file_name().to_string_lossy().into_owned(), what)
        })
        .collect()
}
