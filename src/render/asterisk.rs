//! The Asterisk configuration directory (`deploy/asterisk/`, mounted at `/etc/asterisk`): the
//! context each of its templates sees, and the modules it does not load.
//!
//! Owns: keeping secrets apart. Passwords reach only `pjsip_auth.conf` and `rtp_turn.conf`, and
//! the SHA-1 of a cluster's key for the edge only `extensions_edge.conf` (mode 0640), through
//! contexts of their own; the public files `#include` them, so configs can be shared or put in a ConfigMap without
//! passwords.

use minijinja::context;
use minijinja::value::{Serde, Value};

use crate::image;
use crate::plan::Plan;

/// Modules a WebRTC PBX does not run: old channel drivers, telephony hardware, databases and
/// interfaces that would widen the attack surface (ARI, AMI are enabled by their own configs
/// only, but a PBX that does not use them should not load them at all).
pub const NOLOAD: &[&str] = &[
    "chan_iax2.so",
    "chan_mgcp.so",
    "chan_skinny.so",
    "chan_unistim.so",
    "chan_motif.so",
    "chan_console.so",
    "chan_alsa.so",
    "chan_oss.so",
    "chan_dahdi.so",
    "chan_audiosocket.so",
    "chan_rtp.so",
    "res_phoneprov.so",
    "res_pjsip_phoneprov_provider.so",
    "res_ari.so",
    "res_ari_applications.so",
    "res_ari_asterisk.so",
    "res_ari_bridges.so",
    "res_ari_channels.so",
    "res_ari_device_states.so",
    "res_ari_endpoints.so",
    "res_ari_events.so",
    "res_ari_playbacks.so",
    "res_ari_recordings.so",
    "res_ari_sounds.so",
    "res_ari_model.so",
    "res_stasis_http.so",
    "res_pjsip_config_wizard.so",
    "res_config_sqlite3.so",
    "res_config_pgsql.so",
    "res_config_mysql.so",
    "cdr_sqlite3_custom.so",
    "cdr_custom.so",
    "cdr_manager.so",
    "cel_sqlite3_custom.so",
    "cel_custom.so",
    "cel_manager.so",
    "pbx_ael.so",
    "pbx_lua.so",
    "pbx_dundi.so",
    "pbx_realtime.so",
    "res_clialiases.so",
    "res_smdi.so",
    "res_adsi.so",
    "app_adsiprog.so",
    "app_getcpeid.so",
    "res_hep.so",
    "res_hep_pjsip.so",
    "res_hep_rtcp.so",
    "res_statsd.so",
    "res_pjsip_notify.so",
    "res_manager_devicestate.so",
    "res_manager_presencestate.so",
    "res_mwi_external.so",
    "res_mwi_external_ami.so",
    "res_stun_monitor.so",
    "res_musiconhold.so",
    "app_amd.so",
    "app_followme.so",
    "cdr_csv.so",
    "app_alarmreceiver.so",
    "app_page.so",
    "app_queue.so",
];

/// The TLS 1.2 cipher suites the WSS and SIP-TLS listeners offer (OpenSSL names): forward-secret
/// key exchange (ECDHE) with an AEAD cipher only, for ECDSA (astrtc's local CA) and RSA
/// certificates. TLS 1.3's suites are all forward-secret AEAD and are left at OpenSSL's default;
/// TLS 1.0 and 1.1 are off.
pub const TLS_CIPHERS: &[&str] = &[
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-RSA-CHACHA20-POLY1305",
];

/// The modules not loaded: [`NOLOAD`], and `res_security_log.so` unless the guard reads the
/// security log (it formats about 2.4 security events per registration; unread, they only cost
/// CPU, and its queue hit its high-water mark during REGISTER storms).
pub fn noload(plan: &Plan) -> Vec<&'static str> {
    let mut v = NOLOAD.to_vec();
    if plan.guard.is_none() {
        v.push("res_security_log.so");
    }
    v
}

/// The context of every Asterisk config but the secret ones: the plan (no passwords in it) and
/// the container paths.
pub fn context(plan: &Plan) -> Value {
    context! {
        plan => Value::from(Serde(plan)),
        edge => plan.cluster.as_ref().map(|c| edge_endpoint(plan, c)),
        keys_dir => image::KEYS_DIR,
        noload => Value::from(Serde(noload(plan))),
        auth_file => AUTH_FILE,
        rtp_secrets_file => RTP_SECRETS_FILE,
        tls_ciphers => Value::from(Serde(TLS_CIPHERS)),
        security_log => image::SECURITY_LOG,
        metrics_secrets_file => METRICS_SECRETS_FILE,
        edge_key_file => EDGE_KEY_FILE,
        edge_key_header => super::cluster::EDGE_KEY_HEADER,
        edge_check => EDGE_CHECK_CONTEXT,
        edge_key_variable => EDGE_KEY_VARIABLE,
        edge_key_previous_variable => EDGE_KEY_PREVIOUS_VARIABLE,
    }
}

/// A pool member's view of the cluster's edge: the endpoint every call arrives on. It allows every
/// codec any endpoint allows (in first-seen order: the edge passes the clients' offers through),
/// and hangs up after the longest `rtp_timeout` of any endpoint (0, never, if one says never).
fn edge_endpoint(plan: &Plan, cluster: &crate::plan::Cluster) -> Value {
    let mut codecs: Vec<String> = Vec::new();
    for e in &plan.endpoints {
        for c in &e.codecs {
            if !codecs.contains(c) {
                codecs.push(c.clone());
            }
        }
    }
    let longest = |f: fn(&crate::plan::Endpoint) -> u32| {
        if plan.endpoints.iter().any(|e| f(e) == 0) {
            0
        } else {
            plan.endpoints.iter().map(f).max().unwrap_or(0)
        }
    };
    context! {
        id => EDGE_ENDPOINT,
        address => cluster.edge_address.to_string(),
        match_file => EDGE_MATCH_FILE,
        codecs => codecs,
        rtp_timeout => longest(|e| e.rtp_timeout),
        rtp_timeout_hold => longest(|e| e.rtp_timeout_hold),
    }
}

/// The file of the edge's `match` lines, included into its identify section by name (compose
/// renders the host's address on the pool's network; the chart writes its own from its values).
pub const EDGE_MATCH_FILE: &str = "pjsip_edge.conf";

/// The pool members' endpoint for the edge (an endpoint id the spec may not use in a cluster).
pub const EDGE_ENDPOINT: &str = "edge";

/// The context of `prometheus_auth.conf` and the monitoring profile's password file: the
/// metrics password, nothing else.
pub fn metrics_context(plan: &Plan) -> Value {
    context! { metrics_password => plan.metrics.password.expose() }
}

/// The context of `pjsip_auth.conf`: the endpoints' ids and passwords, nothing else. A cluster's
/// pool member gets none: the edge authenticates the users (against HA1 digests in the
/// database), and every call reaches the pool as the edge's endpoint, so no member holds a
/// password or takes a user's credentials from anyone who reaches it directly.
pub fn auth_context(plan: &Plan) -> Value {
    let pool = plan.cluster.is_some();
    let auth: Vec<_> = plan
        .endpoints
        .iter()
        .filter(|_| !pool)
        .map(|e| context! { id => &e.id, password => e.password.expose() })
        .collect();
    context! { endpoints => auth, pool => pool }
}

/// The context of `extensions_edge.conf` (a cluster's pool member): the SHA-1 of the pool's key
/// for the edge and, during a rotation, of the previous key (else empty), nothing else (the
/// member compares the header's SHA-1 with them, and holds no key).
/// It is a `[globals]` value, so it stays out of `extensions.conf` (and out of the chart's
/// ConfigMap).
pub fn edge_key_context(plan: &Plan) -> Value {
    context! {
        edge_key_sha1 => plan.cluster.as_ref().map(|c| super::cluster::edge_key_sha1(c.edge_key.expose())),
        previous_sha1 => plan
            .cluster
            .as_ref()
            .and_then(|c| c.edge_key_previous.as_ref().map(crate::spec::valid::Secret::expose))
            .map(super::cluster::edge_key_sha1)
            .unwrap_or_default(),
        variable => EDGE_KEY_VARIABLE,
        previous_variable => EDGE_KEY_PREVIOUS_VARIABLE,
    }
}

/// `extensions_edge.conf`, as extensions.conf's `[globals]` includes it (secret: the SHA-1 of the
/// edge's key).
pub const EDGE_KEY_FILE: &str = "extensions_edge.conf";
/// The global variable holding the SHA-1 of the pool's key for the edge.
pub const EDGE_KEY_VARIABLE: &str = "ASTRTC_EDGE_KEY_SHA1";
/// The global variable holding the SHA-1 of the key before a rotation, empty when none is under
/// way.
pub const EDGE_KEY_PREVIOUS_VARIABLE: &str = "ASTRTC_EDGE_KEY_PREVIOUS_SHA1";
/// The dialplan subroutine every extension of a pool member's context runs first: it hangs up
/// (cause 21, call rejected: 403) a call that does not carry the edge's key.
pub const EDGE_CHECK_CONTEXT: &str = "astrtc-edge-check";

/// The context of `rtp_turn.conf`: the TURN password, nothing else.
pub fn turn_context(plan: &Plan) -> Value {
    context! { turn_password => plan.rtp.turn.as_ref().map(|t| t.password.expose()) }
}

/// `pjsip_auth.conf`, as pjsip.conf includes it.
pub const AUTH_FILE: &str = "pjsip_auth.conf";
/// `prometheus_auth.conf`, as prometheus.conf includes it.
pub const METRICS_SECRETS_FILE: &str = "prometheus_auth.conf";
/// `rtp_turn.conf`, as rtp.conf includes it.
pub const RTP_SECRETS_FILE: &str = "rtp_turn.conf";
