//! The secrets file (`astrtc.secrets.toml`): endpoint passwords and the TURN password, kept
//! apart from the spec so the spec can be committed and shared.
//!
//! Owns: the file's format, generating strong passwords, and writing the file with mode 0600.
//! It never prints a secret; `Debug` of [`Secrets`] redacts them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{SourceFile, SpecError};

/// Length of generated passwords: 32 characters from a 62-letter alphabet is 190 bits.
pub const GENERATED_PASSWORD_LEN: usize = 32;

/// The parsed secrets file.
#[derive(Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Secrets {
    /// Endpoint id → SIP digest password.
    #[serde(default)]
    pub endpoints: BTreeMap<String, String>,
    /// TURN credentials: the password of `rtp.turn_username`, the shared secret of `[turn]`.
    pub turn: Option<TurnSecrets>,
    /// The password scrapers give for `/metrics`, when metrics are on.
    pub metrics: Option<MetricsSecrets>,
    /// The cluster's database password (`topology = "cluster"`).
    pub cluster: Option<ClusterSecrets>,
}

/// `[cluster]` in the secrets file.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSecrets {
    /// The password the edge logs in to PostgreSQL with (role `kamailio`).
    pub database_password: String,
    /// The key the pool knows the edge by: the edge sends it in an `X-Astrtc-Edge` header on
    /// every request to a pool member, and each member refuses a call without it (the edge's
    /// address alone is shared by every process on the host). `None` in a secrets file from
    /// before it existed: `astrtc secrets` adds one; there is no default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge_key: Option<String>,
    /// The key before `astrtc secrets --rotate edge-key` replaced it: the pool takes it too until
    /// `astrtc secrets --finish-rotation edge-key` removes it, so no call is refused between the
    /// pool's reload and the edge's restart that a rotation's `apply` does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge_key_previous: Option<String>,
}

/// `[metrics]` in the secrets file.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSecrets {
    /// The basic-auth password of `/metrics`.
    pub password: String,
}

/// `[turn]` in the secrets file.
#[derive(Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TurnSecrets {
    /// The password of `rtp.turn_username` on `rtp.turn` (the TURN server Asterisk itself uses).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// The shared secret of the spec's `[turn]` server: TURN REST credentials are HMACs made with
    /// it (coturn `static-auth-secret`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secrets")
            .field("endpoints", &self.endpoints.keys().collect::<Vec<_>>())
            .field("turn", &self.turn.as_ref().map(|_| "<redacted>"))
            .field("metrics", &self.metrics.as_ref().map(|_| "<redacted>"))
            .field("cluster", &self.cluster.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A secrets file as read from disk.
#[derive(Debug, Clone)]
pub struct LoadedSecrets {
    /// The parsed secrets.
    pub secrets: Secrets,
    /// The file, for error positions.
    pub source: SourceFile,
}

/// Reads and parses a secrets file.
pub fn load(path: &Path) -> Result<LoadedSecrets, SpecError> {
    let source = SourceFile::read(path)?.secret();
    let secrets = source.parse::<Secrets>()?;
    Ok(LoadedSecrets { secrets, source })
}

/// A new random password of [`GENERATED_PASSWORD_LEN`] letters and digits (≥128 bits).
pub fn generate_password() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(GENERATED_PASSWORD_LEN);
    while out.len() < GENERATED_PASSWORD_LEN {
        let mut buf = [0u8; 64];
        getrandom::fill(&mut buf).expect("the OS random source failed");
        // Rejection sampling: 248 = 4 * 62, so bytes below it map uniformly.
        for b in buf.iter().filter(|b| **b < 248) {
            if out.len() == GENERATED_PASSWORD_LEN {
                break;
            }
            out.push(ALPHABET[(*b % 62) as usize] as char);
        }
    }
    out
}

impl Secrets {
    /// The file's text, with a header saying what it is.
    pub fn to_toml(&self) -> String {
        let mut text = String::from(
            "# astrtc secrets: SIP passwords for the endpoints in astrtc.toml (and the metrics password).\n\
             # Keep this file private (mode 0600) and out of version control.\n\
             # [turn] secret: the TURN server's shared secret (short-lived credentials are made from it).\n\
             # [cluster] database_password: the edge's PostgreSQL password (A-Z a-z 0-9 - _ . ~, 32-128).\n\
             # [cluster] edge_key: the key the pool knows the edge by (A-Z a-z 0-9, 32-128);\n\
             #   edge_key_previous: the key before a rotation, taken too until the rotation is finished.\n\
             # Passwords: 16-128 characters of A-Z a-z 0-9 - _ . ~ + / ! @ % ^ * ( ) , : ?\n\n",
        );
        text.push_str(&toml::to_string(self).expect("secrets serialize"));
        text
    }
}
