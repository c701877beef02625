//! Short-lived TURN credentials and the `iceServers` entry a browser is given — the TURN REST
//! scheme coturn checks with `use-auth-secret`: the user name is `EXPIRY:USER` (EXPIRY in Unix
//! seconds), the password is `base64(HMAC-SHA1(secret, user name))`. Anyone holding the shared
//! secret (astrtc, an application server) can mint them; the TURN server recomputes the HMAC
//! and refuses a user name whose time has passed. No state, no database, nothing to revoke:
//! credentials simply expire.
//!
//! Owns: minting and formatting. It reads the plan's [`TurnService`] (where clients reach the
//! server); the secret never leaves through here except inside the HMAC.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::plan::TurnService;
use crate::spec::valid::Secret;

/// coturn's default separator between the expiry and the user (`rest-api-separator`).
pub const SEPARATOR: char = ':';
/// Longest lifetime `turn-credentials` will mint: a credential cannot be revoked before it
/// expires, so keep it short and mint new ones.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 86400);

/// A TURN user name and password good until `expires`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// `EXPIRY:USER`.
    pub username: String,
    /// base64(HMAC-SHA1(secret, username)).
    pub password: Secret,
    /// Unix seconds after which the TURN server refuses it.
    pub expires: u64,
}

/// One entry of `RTCConfiguration.iceServers`, as a browser takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    /// `turn:` and `turns:` URLs.
    pub urls: Vec<String>,
    /// The user name.
    pub username: String,
    /// The password: in the JSON as the plain string a browser takes; never in `Debug`.
    #[serde(with = "crate::spec::valid::plain_secret")]
    pub credential: Secret,
}

/// Checks a user id for credentials: 1-64 letters, digits or `._-@`, so it cannot contain the
/// separator and reads the same in a log line.
pub fn user_id(user: &str) -> Result<(), String> {
    crate::spec::validate::simple_token(user, 64, "._-@")
}

/// A credential for `user`, valid for `ttl` from `now`.
pub fn mint(secret: &str, user: &str, ttl: Duration, now: SystemTime) -> Credential {
    let expires = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() + ttl.as_secs();
    let username = format!("{expires}{SEPARATOR}{user}");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    let tag = ring::hmac::sign(&key, username.as_bytes());
    Credential {
        username,
        password: Secret::new(base64::engine::general_purpose::STANDARD.encode(tag.as_ref())),
        expires,
    }
}

/// The URLs clients use: TURN over UDP and TCP on `port`, TURN over TLS on `tls_port`.
pub fn urls(turn: &TurnService) -> Vec<String> {
    let host = &turn.host;
    let mut urls =
        vec![format!("turn:{host}:{}?transport=udp", turn.port), format!("turn:{host}:{}?transport=tcp", turn.port)];
    if let Some(tls) = turn.tls_port {
        urls.push(format!("turns:{host}:{tls}?transport=tcp"));
    }
    urls
}

/// The `iceServers` entry for `user`, valid for `ttl` from `now`.
pub fn ice_server(turn: &TurnService, user: &str, ttl: Duration, now: SystemTime) -> (IceServer, Credential) {
    let cred = mint(turn.secret.expose(), user, ttl, now);
    (IceServer { urls: urls(turn), username: cred.username.clone(), credential: cred.password.clone() }, cred)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_the_rest_scheme_coturn_checks() {
        // The same HMAC as `echo -n "$user" | openssl dgst -binary -sha1 -hmac "$secret" | base64`.
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let c = mint("north-wind-harbor-lamp-0123456789", "alice", Duration::from_secs(3600), now);
        assert_eq!(c.username, "1700003600:alice");
        assert_eq!(c.expires, 1_700_003_600);
        assert_eq!(c.password.expose(), "EEEJfW/BATCZ6ZWnYrbKaGELUPM=");
    }

    #[test]
    fn a_credentials_debug_hides_its_password() {
        let c = Credential {
            username: "1700003600:alice".into(),
            password: Secret::new("pw-7f3a9c-not-in-debug"),
            expires: 1,
        };
        assert!(!format!("{c:?}").contains("pw-7f3a9c"), "Credential's Debug shows its password: {c:?}");
    }

    #[test]
    fn an_ice_server_entry_shows_its_credential_in_json_not_in_debug() {
        let entry = IceServer {
            urls: vec!["turn:turn.example:3478?transport=udp".into()],
            username: "1700003600:alice".into(),
            credential: Secret::new("pw-7f3a9c-not-in-debug"),
        };
        assert!(!format!("{entry:?}").contains("pw-7f3a9c"), "IceServer's Debug shows its credential: {entry:?}");
        let json = r#"{"urls":["turn:turn.example:3478?transport=udp"],"username":"1700003600:alice","credential":"pw-7f3a9c-not-in-debug"}"#;
        assert_eq!(serde_json::to_string(&entry).unwrap(), json);
        assert_eq!(serde_json::from_str::<IceServer>(json).unwrap(), entry);
    }

    #[test]
    fn user_ids_cannot_carry_the_separator() {
        assert!(user_id("alice").is_ok() && user_id("ops.team@example").is_ok());
        for bad in ["", "a:b", "a b", "a\nb", "é", &"a".repeat(65)] {
            assert!(user_id(bad).is_err(), "{bad:?}");
        }
    }
}
