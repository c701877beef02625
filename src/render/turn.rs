//! `deploy/turn/`, the bundled TURN relay's configuration (coturn's `turnserver.conf`, mounted at
//! `/etc/coturn`) and its shared secret (`auth-secret`, mode 0640), each with a context of its own.
//!
//! Owns: keeping the relay closed. The config refuses every peer in the loopback, private,
//! link-local, shared (CGNAT), documentation, benchmarking and reserved ranges ([`DENIED_PEERS`],
//! coturn's own recommended list plus the IPv6 ones), allows back only Asterisk's addresses the
//! plan names, refuses multicast peers and TCP relays, and has no CLI or web-admin listener. The
//! secret never enters `turnserver.conf`: the image's entrypoint appends it to a private copy.

use minijinja::context;
use minijinja::value::{Serde, Value};

use crate::image;
use crate::plan::Plan;

/// Peers the relay never sends to (coturn `denied-peer-ip`), unless allowed by name.
/// Loopback (127.0.0.0/8, ::1) is refused by coturn itself unless `allow-loopback-peers`; it is
/// listed as well so the config says so.
pub const DENIED_PEERS: &[&str] = &[
    "0.0.0.0-0.255.255.255",
    "10.0.0.0-10.255.255.255",
    "100.64.0.0-100.127.255.255",
    "127.0.0.0-127.255.255.255",
    "169.254.0.0-169.254.255.255",
    "172.16.0.0-172.31.255.255",
    "192.0.0.0-192.0.0.255",
    "192.0.2.0-192.0.2.255",
    "192.88.99.0-192.88.99.255",
    "192.168.0.0-192.168.255.255",
    "198.18.0.0-198.19.255.255",
    "198.51.100.0-198.51.100.255",
    "203.0.113.0-203.0.113.255",
    "240.0.0.0-255.255.255.255",
    "::1",
    "64:ff9b::-64:ff9b::ffff:ffff",
    "::ffff:0.0.0.0-::ffff:255.255.255.255",
    "100::-100::ffff:ffff:ffff:ffff",
    "2001::-2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff",
    "2001:db8::-2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
    "2002::-2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    "fc00::-fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    "fe80::-febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
];

/// `turn/turnserver.conf`.
pub const CONFIG_FILE: &str = "turn/turnserver.conf";
/// `turn/auth-secret` (secret): the shared secret alone, one line.
pub const SECRET_FILE: &str = "turn/auth-secret";

/// Whether the plan deploys coturn.
pub fn bundled(plan: &Plan) -> bool {
    plan.turn.as_ref().is_some_and(|t| t.bundled.is_some())
}

/// The context of `turnserver.conf`: the plan's TURN service (no secret in it) and the paths in
/// the TURN container.
pub fn context(plan: &Plan) -> Value {
    context! {
        plan => Value::from(Serde(plan)),
        turn => Value::from(Serde(&plan.turn)),
        denied_peers => Value::from(Serde(DENIED_PEERS)),
        keys_dir => image::TURN_KEYS_DIR,
        run_dir => image::TURN_RUN_DIR,
        tls_ciphers => super::asterisk::TLS_CIPHERS.join(":"),
    }
}

/// The context of `auth-secret`: the shared secret, nothing else.
pub fn secret_context(plan: &Plan) -> Value {
    context! { secret => plan.turn.as_ref().map(|t| t.secret.expose()) }
}
