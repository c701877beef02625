//! What validation returns: the spec with every default applied once and every value in the type
//! it has from then on (ports as `u16`, networks normalised, paths resolved against the spec's
//! directory, passwords attached to their endpoints). Everything downstream reads these; nothing
//! needs to check or default a value again.
//!
//! Owns: the typed values only. They are built by [`super::validate`], which is the only code
//! that constructs them from user input, so holding one means the input was valid.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{AcmeChallenge, CodecPreference, DatabaseMode, EndpointKind, NetworkMode, TlsMode, TurnMode};

/// A value from the secrets file (a password, a key, a shared secret). Its `Debug` shows none of
/// it, so a `{:?}` of any spec value — in a log line, a panic, a test failure — cannot print a
/// secret; it has no `Display` and no `Serialize` (the fields holding one are `skip_serializing`):
/// a template gets a secret only through its own context, from [`Secret::expose`], the one way to
/// the value (so every use of one can be found by that name).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value read from the secrets file.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself, for the one place that must use it (a rendered secret file, a digest,
    /// a login).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A [`Secret`] field in JSON a client logs in with (`testenv up --json`, a browser's
/// `iceServers`): the plain string, as before the field was a `Secret`. Named on the field
/// (`#[serde(with = "crate::spec::valid::plain_secret")]`), so each such place is deliberate.
pub mod plain_secret {
    use super::Secret;
    use serde::Deserialize;

    /// Writes the value itself.
    pub fn serialize<S: serde::Serializer>(secret: &Secret, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(secret.expose())
    }

    /// Reads the plain string back.
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

/// A valid spec and its secrets.
#[derive(Debug, Clone)]
pub struct Valid {
    /// Deployment name.
    pub name: String,
    /// Asterisk image reference.
    pub image: String,
    /// Network attachment and ports.
    pub network: Network,
    /// Media ports and ICE helpers.
    pub rtp: Rtp,
    /// The WSS certificate.
    pub tls: Tls,
    /// Dialplan.
    pub dialplan: Dialplan,
    /// Endpoints, in spec order, with their passwords.
    pub endpoints: Vec<Endpoint>,
    /// Bans.
    pub security: Security,
    /// What Asterisk logs.
    pub logging: Logging,
    /// Memory the deployment may use.
    pub resources: Resources,
    /// Shutdown.
    pub lifecycle: Lifecycle,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// The TURN relay browsers use.
    pub turn: Option<TurnService>,
    /// What limits how many calls it carries.
    pub performance: Performance,
    /// The cluster (edge, relay, database, pool), with `topology = "cluster"`.
    pub cluster: Option<Cluster>,
}

/// `topology = "cluster"`: a Kamailio edge and an rtpengine relay on the host network, PostgreSQL
/// at a fixed address and a pool of Asterisk servers (one compose service, scaled) on a network of
/// their own.
#[derive(Debug, Clone, Serialize)]
pub struct Cluster {
    /// Asterisk servers in the pool.
    pub pool_size: u32,
    /// The pool's network, `address/prefix` with the network's own address.
    pub subnet: String,
    /// The host's address on that network (its gateway): where the pool sees the edge.
    pub edge_address: Ipv4Addr,
    /// The database's fixed address on it.
    pub database_address: Ipv4Addr,
    /// The part of the pool's network Docker gives the pool's members (and the pool watcher)
    /// their addresses from (`address/prefix`, the subnet's upper half): so many members, and any
    /// number compose is told to scale to, never take the database's fixed address.
    pub pool_range: String,
    /// Seconds between the edge's OPTIONS probes.
    pub probe_seconds: u32,
    /// Seconds between the edge's keepalives to phones registered over UDP from behind a NAT.
    pub natping_seconds: u32,
    /// Requests a second from one address above which the edge bans it as a flood.
    pub flood_requests_per_second: u32,
    /// The relay's control port on 127.0.0.1.
    pub relay_control_port: u16,
    /// The relay's media address; None: found when it starts (the default route's address).
    pub relay_address: Option<IpAddr>,
    /// Where the database runs.
    pub database: DatabaseMode,
    /// The edge's database password (secrets file); never serialized.
    #[serde(skip_serializing)]
    pub database_password: Secret,
    /// The pool's key for the edge (secrets file): sent by the edge in `X-Astrtc-Edge`, required
    /// by each pool member's dialplan; never serialized.
    #[serde(skip_serializing)]
    pub edge_key: Secret,
    /// The key before a rotation (secrets file), which the pool takes too until the rotation
    /// is finished; never serialized.
    #[serde(skip_serializing)]
    pub edge_key_previous: Option<Secret>,
    /// The edge's image reference.
    pub edge_image: String,
    /// The relay's image reference.
    pub relay_image: String,
    /// The database's image reference.
    pub db_image: String,
}

impl Cluster {
    /// The reference `astrtc build` tags `which` with and compose and the chart run.
    pub fn image(&self, which: crate::image::ClusterImage) -> &str {
        match which {
            crate::image::ClusterImage::Edge => &self.edge_image,
            crate::image::ClusterImage::Relay => &self.relay_image,
            crate::image::ClusterImage::Database => &self.db_image,
        }
    }
}

/// The TURN relay browsers use (`[turn]`): where clients reach it and, when astrtc deploys it,
/// how coturn runs.
#[derive(Debug, Clone, Serialize)]
pub struct TurnService {
    /// Bundled (coturn beside Asterisk) or external.
    pub mode: TurnMode,
    /// The DNS name or IPv4 address in the `turn:`/`turns:` URLs.
    pub host: String,
    /// TURN over UDP and TCP.
    pub port: u16,
    /// TURN over TLS, if offered.
    pub tls_port: Option<u16>,
    /// coturn's settings (bundled mode).
    pub bundled: Option<BundledTurn>,
    /// The shared secret REST credentials are made with (secrets file); never serialized (only
    /// the TURN service's own secret file gets it, through its own context).
    #[serde(skip_serializing)]
    pub secret: Secret,
}

/// How the bundled coturn runs.
#[derive(Debug, Clone, Serialize)]
pub struct BundledTurn {
    /// First relayed port.
    pub relay_start: u16,
    /// Last relayed port.
    pub relay_end: u16,
    /// The realm of the credentials.
    pub realm: String,
    /// Allocations per user at once.
    pub user_quota: u32,
    /// Allocations at once, in all (None: unlimited).
    pub total_quota: Option<u32>,
    /// Private addresses the relay may send to (Asterisk's), each exempt from the denied ranges.
    pub allowed_peers: Vec<IpAddr>,
    /// coturn `external-ip` (`public/private`) behind a 1:1 NAT, so relayed addresses are public.
    pub external_ip: Option<String>,
}

impl TurnService {
    /// Whether coturn listens on a port below 1024 (and so needs `CAP_NET_BIND_SERVICE`).
    pub fn binds_privileged_port(&self) -> bool {
        self.port < 1024 || self.tls_port.is_some_and(|p| p < 1024)
    }
}

/// What limits how many calls the deployment carries.
#[derive(Debug, Clone, Serialize)]
pub struct Performance {
    /// WSS sessions Asterisk accepts at once (http.conf `sessionlimit`).
    pub wss_sessions: u32,
    /// The opus encoder's complexity (0-10), passed to the codec as `ASTRTC_OPUS_COMPLEXITY`;
    /// `None` keeps libopus' default.
    pub opus_complexity: Option<u8>,
}

/// What Asterisk logs.
#[derive(Debug, Clone, Serialize)]
pub struct Logging {
    /// Verbosity, 0-10.
    pub verbose: u8,
}

/// Memory the Asterisk container may use.
#[derive(Debug, Clone, Serialize)]
pub struct Resources {
    /// Limit, MiB.
    pub memory_limit_mb: u32,
    /// Request (reservation), MiB; at most the limit.
    pub memory_request_mb: u32,
}

/// `[security]`: the guard's settings.
#[derive(Debug, Clone, Serialize)]
pub struct Security {
    /// Whether the guard runs.
    pub guard: bool,
    /// Failures from one address within `find_seconds` that ban it.
    pub ban_after: u32,
    /// The window, in seconds.
    pub find_seconds: u32,
    /// Ban length, in seconds.
    pub ban_seconds: u32,
    /// Networks never banned, as `address/prefix`.
    pub allow: Vec<String>,
}

/// How Asterisk stops.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Lifecycle {
    /// Seconds calls in progress may go on after a stop is asked for; new calls get 503.
    pub drain_seconds: u32,
}

impl Lifecycle {
    /// What the orchestrator waits before killing the container: the drain, plus time for
    /// Asterisk to hang up what is left and stop (`core stop now` waits up to 15 s).
    pub fn stop_grace_seconds(&self) -> u32 {
        self.drain_seconds + 30
    }
}

/// Asterisk's `/metrics` (res_prometheus).
#[derive(Debug, Clone, Serialize)]
pub struct Metrics {
    /// Whether `/metrics` is served.
    pub enabled: bool,
    /// Basic-auth user.
    pub username: String,
    /// Basic-auth password (from the secrets file); never serialized.
    #[serde(skip_serializing)]
    pub password: Secret,
    /// The compose `monitoring` profile's Prometheus port (127.0.0.1).
    pub prometheus_port: u16,
    /// The compose `monitoring` profile's node exporter port (127.0.0.1).
    pub exporter_port: u16,
}

/// Network attachment.
#[derive(Debug, Clone, Serialize)]
pub struct Network {
    /// Host or bridge.
    pub mode: NetworkMode,
    /// SIP over UDP port.
    pub sip_port: u16,
    /// SIP over TLS port.
    pub sip_tls_port: u16,
    /// WSS port.
    pub wss_port: u16,
    /// Loopback-only HTTP port.
    pub http_port: u16,
    /// NAT settings, when a public address is given.
    pub nat: Option<Nat>,
    /// Bridge settings, in bridge mode.
    pub bridge: Option<Bridge>,
}

/// NAT settings for the transports.
#[derive(Debug, Clone, Serialize)]
pub struct Nat {
    /// The address clients see.
    pub public_address: IpAddr,
    /// Networks reached directly, as `address/prefix` with the network's own address.
    pub local_nets: Vec<String>,
    /// The server's own address the NAT forwards `public_address` to (host mode: from the spec;
    /// bridge mode: the container's fixed address), which Asterisk's ICE host candidate for it is
    /// replaced with — the local one kept for clients inside. None: ICE offers local addresses
    /// only, which WebRTC clients outside cannot reach.
    pub local_address: Option<IpAddr>,
}

/// A user-defined bridge network.
#[derive(Debug, Clone, Serialize)]
pub struct Bridge {
    /// Its subnet.
    pub subnet: String,
    /// The container's fixed address.
    pub address: IpAddr,
}

/// RTP ports and ICE helpers.
#[derive(Debug, Clone, Serialize)]
pub struct Rtp {
    /// First port.
    pub start: u16,
    /// Last port (above `start`).
    pub end: u16,
    /// STUN server as `host:port`.
    pub stun: Option<String>,
    /// TURN server and credentials.
    pub turn: Option<Turn>,
}

impl Rtp {
    /// Number of ports in the range.
    pub fn len(&self) -> u32 {
        u32::from(self.end) - u32::from(self.start) + 1
    }

    /// Never true for a valid range; here for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.end < self.start
    }
}

/// A TURN server Asterisk uses for its own ICE candidates.
#[derive(Debug, Clone, Serialize)]
pub struct Turn {
    /// `host:port`.
    pub address: String,
    /// User name.
    pub username: String,
    /// Password (from the secrets file); never serialized (only `rtp_turn.conf` gets it, through
    /// its own context).
    #[serde(skip_serializing)]
    pub password: Secret,
}

/// The WSS certificate.
#[derive(Debug, Clone, Serialize)]
pub struct Tls {
    /// Where it comes from.
    pub mode: TlsMode,
    /// The main name, lowercase.
    pub domain: String,
    /// All DNS names for the certificate, the main name first, lowercase.
    pub names: Vec<String>,
    /// The local CA's directory (self-signed mode), resolved against the spec's directory.
    pub ca_dir: PathBuf,
    /// ACME settings (ACME mode).
    pub acme: Option<Acme>,
}

/// ACME settings, resolved: everything `astrtc certs` needs, and nothing secret. Also the format
/// of the sidecar's `certs/acme.toml`, which render writes with container paths.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Acme {
    /// DNS names for the certificate, the main name first.
    pub names: Vec<String>,
    /// Contact e-mail.
    pub email: String,
    /// Directory URL.
    pub directory: String,
    /// Extra CA certificates to trust for the ACME server.
    pub ca_bundle: Option<PathBuf>,
    /// `http-01` or `dns-01`.
    pub challenge: AcmeChallenge,
    /// HTTP-01 responder port.
    pub http_port: u16,
    /// DNS-01 hook; none means the manual flow.
    pub dns_hook: Option<PathBuf>,
    /// DNS-01: servers asked whether the records are visible (empty: authoritative servers).
    #[serde(default)]
    pub dns_resolvers: Vec<SocketAddr>,
    /// DNS-01: seconds to wait for the records to become visible.
    pub dns_timeout: u64,
    /// Renew when fewer days are left; none: when a third of the lifetime is left.
    pub renew_before_days: Option<i64>,
    /// Where the ACME account credentials are kept.
    pub account_dir: PathBuf,
}

impl Acme {
    /// Seconds a deployment should wait for the first certificate before calling the sidecar
    /// unhealthy: the order, plus the DNS propagation wait for DNS-01.
    pub fn first_certificate_wait(&self) -> u64 {
        match self.challenge {
            AcmeChallenge::Http01 => 300,
            AcmeChallenge::Dns01 => self.dns_timeout + 300,
        }
    }
}

/// Dialplan.
#[derive(Debug, Clone, Serialize)]
pub struct Dialplan {
    /// The context all endpoints use.
    pub context: String,
    /// The echo test extension.
    pub echo_extension: String,
}

/// The SIP transport of an endpoint: WSS for browsers, UDP or TLS for phones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// SIP over secure WebSocket (WebRTC endpoints).
    Wss,
    /// SIP over UDP.
    Udp,
    /// SIP over TLS, SRTP media.
    Tls,
}

impl Transport {
    /// Its name in the spec (`wss`, `udp`, `tls`), as the cluster's database keeps it.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Wss => "wss",
            Transport::Udp => "udp",
            Transport::Tls => "tls",
        }
    }
}

/// One endpoint, fully resolved.
#[derive(Debug, Clone, Serialize)]
pub struct Endpoint {
    /// Id: SIP user name and extension.
    pub id: String,
    /// WebRTC or plain SIP.
    pub kind: EndpointKind,
    /// The transport it registers over.
    pub transport: Transport,
    /// Codecs in preference order.
    pub codecs: Vec<String>,
    /// Caller id name.
    pub display_name: String,
    /// Registrations at once.
    pub max_contacts: u32,
    /// Seconds without RTP before Asterisk hangs up (0: never).
    pub rtp_timeout: u32,
    /// The same on hold.
    pub rtp_timeout_hold: u32,
    /// Whose codec order wins.
    pub codec_preference: CodecPreference,
    /// Digest password; never serialized (templates get passwords through their own context).
    #[serde(skip_serializing)]
    pub password: Secret,
}
