//! Defaults for everything a spec may leave out: the one place they are written down. The
//! validators apply them, once, where they read each value; `astrtc init` shows them in the
//! starter spec's comments.

use std::net::{IpAddr, Ipv4Addr};

/// Deployment (compose project) name.
pub const NAME: &str = "astrtc";
/// The image `astrtc build` makes: the Asterisk version it builds.
pub const IMAGE: &str = crate::image::DEFAULT_IMAGE;
/// Secrets file, beside the spec.
pub const SECRETS_FILE: &str = "astrtc.secrets.toml";
/// SIP over UDP.
pub const SIP_PORT: i64 = 5060;
/// SIP over TLS.
pub const SIP_TLS_PORT: i64 = 5061;
/// WSS on Asterisk's HTTPS server.
pub const WSS_PORT: i64 = 8089;
/// Plain HTTP, on loopback only.
pub const HTTP_PORT: i64 = 8088;
/// First RTP port.
pub const RTP_START: i64 = 10000;
/// Last RTP port.
pub const RTP_END: i64 = 20000;
/// Bridge mode subnet.
pub const BRIDGE_SUBNET: &str = "172.28.0.0/24";
/// Bridge mode container address.
pub const BRIDGE_ADDRESS: IpAddr = IpAddr::V4(Ipv4Addr::new(172, 28, 0, 10));
/// Networks reached without NAT when a public address is set.
pub const LOCAL_NETS: &[&str] = &["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"];
/// TLS name.
pub const DOMAIN: &str = "localhost";
/// Local CA directory, beside the spec.
pub const CA_DIR: &str = ".astrtc/ca";
/// Dialplan context.
pub const CONTEXT: &str = "from-internal";
/// Echo test extension.
pub const ECHO_EXTENSION: &str = "600";
/// Codecs of WebRTC endpoints.
pub const WEBRTC_CODECS: &[&str] = &["opus", "ulaw"];
/// Codecs of plain SIP endpoints.
pub const SIP_CODECS: &[&str] = &["ulaw", "alaw", "opus"];
/// Registrations per endpoint.
pub const MAX_CONTACTS: i64 = 1;
/// Let's Encrypt's production ACME directory.
pub const ACME_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging ACME directory.
pub const ACME_STAGING_DIRECTORY: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";
/// HTTP-01 responder port.
pub const ACME_HTTP_PORT: i64 = 80;
/// ACME account state, beside the spec.
pub const ACME_STATE_DIR: &str = ".astrtc/acme";
/// Seconds to wait for DNS-01 records to become visible.
pub const DNS_TIMEOUT: i64 = 600;
/// Seconds without RTP before a WebRTC endpoint's call is hung up (browsers send continuously).
pub const RTP_TIMEOUT_WEBRTC: i64 = 30;
/// Seconds without RTP before a plain SIP endpoint's call is hung up (some phones stop sending
/// during silence).
pub const RTP_TIMEOUT_SIP: i64 = 60;
/// Seconds without RTP before a call on hold is hung up.
pub const RTP_TIMEOUT_HOLD: i64 = 600;
/// Asterisk's verbosity: production logging (notices, warnings, errors; no line per call step or
/// registration, which cost about a third of REGISTER CPU).
pub const VERBOSE: i64 = 0;
/// Memory limit of the Asterisk container, MiB: about 400 REGISTER/s sustained over UDP, or
/// 12,000 phones re-registering within 32 s (README, "Memory").
pub const MEMORY_LIMIT_MB: i64 = 512;
/// Memory reserved for it, MiB.
pub const MEMORY_REQUEST_MB: i64 = 128;
/// TURN over UDP and TCP.
pub const TURN_PORT: i64 = 3478;
/// TURN over TLS (bundled coturn).
pub const TURN_TLS_PORT: i64 = 5349;
/// First relayed port of bundled coturn (coturn's own default range).
pub const TURN_RELAY_START: i64 = 49152;
/// Last relayed port of bundled coturn.
pub const TURN_RELAY_END: i64 = 65535;
/// Allocations one TURN user may hold at once: a browser allocates once per TURN URL it is
/// given (UDP, TCP, TLS), so three per call, four calls.
pub const TURN_USER_QUOTA: i64 = 12;
/// Lifetime of the TURN credentials `astrtc turn-credentials` prints.
pub const TURN_CREDENTIAL_TTL_SECONDS: u64 = 3600;
/// WSS sessions Asterisk accepts at once: Asterisk's own default (100) stops the 101st browser;
/// `astrtc bench calls` carried more than that on 2 cores (README, "Sizing").
pub const WSS_SESSIONS: i64 = 1000;
/// Whether the guard (fail2ban) runs.
pub const GUARD: bool = true;
/// Failures from one address that ban it.
pub const BAN_AFTER: i64 = 5;
/// The window those failures must fall in, in seconds.
pub const FIND_SECONDS: i64 = 600;
/// How long a ban lasts, in seconds.
pub const BAN_SECONDS: i64 = 3600;
/// Seconds calls in progress may go on after a stop is asked for (an hour: most calls end well
/// before; a Kubernetes node drain waits this long at most).
pub const DRAIN_SECONDS: i64 = 3600;
/// The longest drain a spec may ask for (a day).
pub const MAX_DRAIN_SECONDS: i64 = 86_400;
/// Metrics are on: `/metrics` with basic auth.
pub const METRICS_ENABLED: bool = true;
/// The basic-auth user of `/metrics` (its password is in the secrets file).
pub const METRICS_USERNAME: &str = "prometheus";
/// The compose `monitoring` profile's Prometheus listens on 127.0.0.1 at this port.
pub const PROMETHEUS_PORT: i64 = 9090;
/// The monitoring profile's node exporter (host CPU and memory, and what res_prometheus lacks:
/// task-processor queues, RTP loss, Asterisk's own CPU), on 127.0.0.1. Not 9100, the port a
/// host's own node exporter usually has.
pub const EXPORTER_PORT: i64 = 9101;
/// Asterisk servers in a cluster's pool.
pub const POOL_SIZE: i64 = 2;
/// The cluster pool's network.
pub const CLUSTER_SUBNET: &str = "172.29.0.0/24";
/// Seconds between the edge's OPTIONS probes of each pool member.
pub const PROBE_SECONDS: i64 = 2;
/// Seconds between the edge's keepalives to phones registered over UDP from behind a NAT: below
/// the 30 s after which many NATs forget an idle UDP mapping.
pub const NATPING_SECONDS: i64 = 20;
/// Requests a second from one address above which the edge bans it as a flood.
pub const FLOOD_REQUESTS_PER_SECOND: i64 = 50;
/// The relay's control port (rtpengine ng, on loopback).
pub const RELAY_CONTROL_PORT: i64 = 2223;
