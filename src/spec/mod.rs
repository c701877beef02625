//! The spec: what the user wrote in `astrtc.toml` (and, apart, in `astrtc.secrets.toml`), in
//! three layers: [`Spec`] as parsed (every field the user may leave out is an `Option`, so it
//! says exactly what was written; serde refuses unknown keys), [`validate`] (defaults from
//! [`defaults`] applied once, every rule checked, all problems at once), and [`valid::Valid`], the
//! typed values the [`crate::plan`] is built from.
//!
//! Nothing here renders or writes, and nothing here knows about the plan.

pub mod defaults;
pub mod secrets;
pub mod source;
pub mod valid;
pub mod validate;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use source::{Problem, SourceFile, SpecError};

/// The parsed `astrtc.toml`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Deployment name: the compose project name and the prefix of everything it creates.
    pub name: Option<String>,
    /// Image reference of the Asterisk image (`astrtc build` tags it, compose runs it).
    pub image: Option<String>,
    /// Path of the secrets file, relative to the spec file.
    pub secrets: Option<PathBuf>,
    /// How the container is attached to the network, and the ports it listens on.
    #[serde(default)]
    pub network: NetworkSpec,
    /// Media ports and ICE helpers.
    #[serde(default)]
    pub rtp: RtpSpec,
    /// The certificate of the WSS listener.
    #[serde(default)]
    pub tls: TlsSpec,
    /// The dialplan context and test extensions.
    #[serde(default)]
    pub dialplan: DialplanSpec,
    /// The endpoints, in the order they are rendered.
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
    /// Bans for scanners and password guessers (the `guard` service: fail2ban).
    #[serde(default)]
    pub security: SecuritySpec,
    /// What Asterisk logs.
    #[serde(default)]
    pub logging: LoggingSpec,
    /// Memory the deployment may use.
    #[serde(default)]
    pub resources: ResourcesSpec,
    /// Shutdown: how long calls in progress may go on once Asterisk is asked to stop.
    #[serde(default)]
    pub lifecycle: LifecycleSpec,
    /// Asterisk's Prometheus metrics (`res_prometheus`).
    #[serde(default)]
    pub metrics: MetricsSpec,
    /// The TURN relay browsers use (absent: none).
    pub turn: Option<TurnSpec>,
    /// What limits how many calls the deployment carries.
    #[serde(default)]
    pub performance: PerformanceSpec,
    /// `single` (default: one Asterisk) or `cluster` (a Kamailio edge, an rtpengine relay,
    /// PostgreSQL and a pool of Asterisk servers; settings in `[cluster]`).
    pub topology: Option<Topology>,
    /// The cluster's settings, with `topology = "cluster"`.
    pub cluster: Option<ClusterSpec>,
}

/// How many machines' worth of parts the deployment has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Topology {
    /// One Asterisk does everything.
    Single,
    /// Kamailio edge + rtpengine relay + PostgreSQL + a pool of Asterisk servers.
    Cluster,
}

/// `[cluster]`: the pool, the edge's health checks, the relay and the database.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// Asterisk servers in the pool (default 2): compose starts so many replicas of its
    /// `asterisk` service (`docker compose up --scale asterisk=N` runs another number; the edge
    /// follows the replicas either way), the chart's StatefulSet so many pods.
    pub pool_size: Option<i64>,
    /// The pool's network (IPv4 CIDR, /16-/28): the database gets a fixed address in its lower
    /// half, the pool's members addresses from its upper half [default: 172.29.0.0/24].
    pub subnet: Option<String>,
    /// Seconds between the edge's OPTIONS probes of each pool member (1-60, default 2): a member
    /// that stops answering 2xx takes no new calls after about one interval.
    pub probe_seconds: Option<i64>,
    /// Seconds between the edge's keepalives (SIP OPTIONS) to each phone registered over UDP
    /// from behind a NAT (5-300, default 20): they keep the NAT's mapping open, so calls can
    /// reach the phone between its registrations.
    pub natping_seconds: Option<i64>,
    /// Requests a second from one address above which the edge takes it for a flood: over UDP
    /// (whose source anyone can forge) its requests are dropped while the flood lasts, over a
    /// connection (WSS, TCP) the address is banned for `security.ban_seconds` (10-100000, default
    /// 50; averaged over 2 s; loopback, the pool and `security.allow` are exempt).
    pub flood_requests_per_second: Option<i64>,
    /// The relay's control port (rtpengine's ng protocol, on 127.0.0.1; default 2223).
    pub relay_control_port: Option<i64>,
    /// The address the relay's media sockets bind and put in SDP [default:
    /// `network.local_address`, else the address of the host's default route, found when the
    /// relay starts].
    pub relay_address: Option<IpAddr>,
    /// `bundled` (the only mode for compose: PostgreSQL deployed with the stack; its password
    /// lives in the secrets file).
    pub database: Option<DatabaseMode>,
    /// Image reference of the edge's image (Kamailio; `astrtc build` tags it, compose and the
    /// chart run it) [default: astrtc/edge:VERSION].
    pub edge_image: Option<String>,
    /// Image reference of the relay's image (rtpengine) [default: astrtc/relay:VERSION].
    pub relay_image: Option<String>,
    /// Image reference of the bundled database's image (PostgreSQL) [default: astrtc/db:VERSION].
    pub db_image: Option<String>,
}

/// Where the cluster's database runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatabaseMode {
    /// PostgreSQL deployed by astrtc beside the edge.
    Bundled,
}

/// `[turn]`: the TURN relay browsers use when UDP to the RTP range does not get through.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TurnSpec {
    /// `bundled` (default: coturn deployed beside Asterisk) or `external` (a TURN server the user
    /// runs, sharing the secret of the secrets file).
    pub mode: Option<TurnMode>,
    /// The DNS name (or IPv4 address) clients reach the TURN server at [bundled: `tls.domain`,
    /// whose certificate TURN over TLS serves].
    pub host: Option<String>,
    /// TURN over UDP and TCP (default 3478).
    pub port: Option<i64>,
    /// TURN over TLS (`turns:`) [bundled: 5349; 443 passes most firewalls; external: none].
    pub tls_port: Option<i64>,
    /// Bundled: first port of the relayed addresses (default 49152).
    pub relay_start: Option<i64>,
    /// Bundled: last port of the relayed addresses (default 65535).
    pub relay_end: Option<i64>,
    /// Bundled: the realm of the long-term credentials [default: `tls.domain`].
    pub realm: Option<String>,
    /// Bundled: allocations one user may hold at once (default 12: a browser allocates once per
    /// TURN URL, three per call).
    pub user_quota: Option<i64>,
    /// Bundled: allocations the server holds at once [default: unlimited].
    pub total_quota: Option<i64>,
    /// Bundled: private addresses the relay may send to besides `network.local_address`,
    /// `network.public_address` and the bridge address (Asterisk's, when coturn cannot know it).
    pub allowed_peers: Option<Vec<IpAddr>>,
}

/// Who runs the TURN server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TurnMode {
    /// coturn, deployed by astrtc beside Asterisk (compose service, Kubernetes workload).
    Bundled,
    /// A TURN server the user runs with `use-auth-secret` and the same shared secret.
    External,
}

/// `[performance]`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PerformanceSpec {
    /// WebSocket (WSS) sessions Asterisk's HTTP server accepts at once (`http.conf`
    /// `sessionlimit`; Asterisk's own default, 100, caps a deployment at 100 browsers).
    pub wss_sessions: Option<i64>,
    /// The opus encoder's complexity (0-10) for the calls Asterisk transcodes into opus: lower
    /// costs less CPU per call for a little quality. Unset: libopus' default.
    pub opus_complexity: Option<i64>,
}

/// `[logging]`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LoggingSpec {
    /// Asterisk's verbosity (0-10): 0 logs notices, warnings and errors only; 3 adds a line per
    /// call step and per registration, for debugging.
    pub verbose: Option<i64>,
}

/// `[resources]`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ResourcesSpec {
    /// Memory limit of the Asterisk container, MiB (compose `mem_limit`, Kubernetes limit).
    pub memory_limit_mb: Option<i64>,
    /// Memory reserved for it, MiB (compose `mem_reservation`, Kubernetes request).
    pub memory_request_mb: Option<i64>,
}

/// `[security]`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SecuritySpec {
    /// Run the guard (fail2ban reading Asterisk's security log, banning with nftables).
    pub guard: Option<bool>,
    /// Failures (failed digest, unknown endpoint, ACL refusal) from one address that ban it.
    pub ban_after: Option<i64>,
    /// The window, in seconds, in which `ban_after` failures must fall.
    pub find_seconds: Option<i64>,
    /// How long a ban lasts, in seconds.
    pub ban_seconds: Option<i64>,
    /// Networks (CIDR) never banned, e.g. the office. Loopback is never banned either.
    pub allow: Option<Vec<String>>,
}

/// `[lifecycle]`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LifecycleSpec {
    /// Seconds established calls may go on after a stop is asked for (compose stop, pod deletion,
    /// a restart by `astrtc apply`); new calls get 503 meanwhile. Then Asterisk stops anyway.
    pub drain_seconds: Option<i64>,
}

/// `[metrics]`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MetricsSpec {
    /// Serve `/metrics` (res_prometheus, basic auth with the password from the secrets file).
    pub enabled: Option<bool>,
    /// The port of the compose `monitoring` profile's Prometheus (on 127.0.0.1).
    pub prometheus_port: Option<i64>,
    /// The port of the compose `monitoring` profile's node exporter (on 127.0.0.1).
    pub exporter_port: Option<i64>,
}

/// `[network]`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// `host` (default) or `bridge`.
    pub mode: Option<NetworkMode>,
    /// Public address clients reach Asterisk at, when it sits behind NAT.
    pub public_address: Option<IpAddr>,
    /// Networks reached without NAT (CIDR), used with `public_address`.
    pub local_nets: Option<Vec<String>>,
    /// The server's own address that a 1:1 NAT forwards `public_address` to: WebRTC clients get
    /// `public_address` as an ICE candidate in its place.
    pub local_address: Option<IpAddr>,
    /// SIP over UDP port.
    pub sip_port: Option<i64>,
    /// SIP over TLS port (phones with `transport = "tls"`).
    pub sip_tls_port: Option<i64>,
    /// WSS (SIP over secure WebSocket) port of Asterisk's HTTPS server.
    pub wss_port: Option<i64>,
    /// Plain HTTP port, bound to loopback only.
    pub http_port: Option<i64>,
    /// Bridge mode: the user-defined network's subnet (CIDR).
    pub bridge_subnet: Option<String>,
    /// Bridge mode: the container's fixed address in that subnet.
    pub bridge_address: Option<IpAddr>,
}

/// How the Asterisk container reaches the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetworkMode {
    /// Host networking: every port, including the whole RTP range, without Docker's proxy.
    Host,
    /// A user-defined bridge with a fixed address; only a narrow RTP range is published.
    Bridge,
}

/// `[rtp]`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RtpSpec {
    /// First RTP port.
    pub start: Option<i64>,
    /// Last RTP port.
    pub end: Option<i64>,
    /// STUN server as `host:port`.
    pub stun: Option<String>,
    /// TURN server as `host:port` (its password lives in the secrets file).
    pub turn: Option<String>,
    /// TURN user name.
    pub turn_username: Option<String>,
}

/// `[tls]`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    /// `self-signed` (default): a local CA made once and reused.
    pub mode: Option<TlsMode>,
    /// The name browsers connect to (`wss://DOMAIN:PORT/ws`).
    pub domain: Option<String>,
    /// More DNS names for the certificate.
    pub extra_names: Option<Vec<String>>,
    /// Where the local CA's certificate and key are kept, relative to the spec file.
    pub ca_dir: Option<PathBuf>,
    /// ACME settings, with `mode = "acme"`.
    pub acme: Option<AcmeSpec>,
}

/// `[tls.acme]`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AcmeSpec {
    /// Contact e-mail for the ACME account (expiry notices).
    pub email: Option<String>,
    /// ACME directory URL (default: Let's Encrypt production).
    pub directory: Option<String>,
    /// Use Let's Encrypt's staging directory.
    pub staging: Option<bool>,
    /// Extra CA certificates (PEM) to trust for a private ACME server, relative to the spec.
    pub ca_bundle: Option<PathBuf>,
    /// `http-01` (default) or `dns-01`.
    pub challenge: Option<AcmeChallenge>,
    /// HTTP-01: the port the standalone responder listens on (default 80).
    pub http_port: Option<i64>,
    /// DNS-01: an executable run as `HOOK add|remove NAME VALUE`, relative to the spec. Without
    /// one, DNS-01 is manual: astrtc prints the TXT record and waits until it is visible.
    pub dns_hook: Option<PathBuf>,
    /// DNS-01: name servers (`IP` or `IP:PORT`) asked whether the TXT record is visible before
    /// the CA is told to look [default: the zone's authoritative servers].
    pub dns_resolvers: Option<Vec<String>>,
    /// DNS-01: seconds to wait for the TXT record to become visible (default 600).
    pub dns_timeout: Option<i64>,
    /// Renew when fewer than this many days are left [default: when a third of the
    /// certificate's lifetime is left, day 60 of Let's Encrypt's 90].
    pub renew_before_days: Option<i64>,
}

/// How ACME authorizations are proven.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum AcmeChallenge {
    /// A standalone HTTP responder on port 80.
    #[serde(rename = "http-01")]
    Http01,
    /// A TXT record, published by a hook or by hand.
    #[serde(rename = "dns-01")]
    Dns01,
}

/// Where the WSS certificate comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// A local CA made by astrtc, for development and private networks.
    SelfSigned,
    /// A certificate from an ACME CA (Let's Encrypt or any RFC 8555 server): `astrtc certs issue`.
    Acme,
}

/// `[dialplan]`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DialplanSpec {
    /// The context every endpoint sends calls to.
    pub context: Option<String>,
    /// The extension that answers and echoes audio back.
    pub echo_extension: Option<String>,
}

/// One `[[endpoints]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    /// The endpoint id: SIP user name and the extension that rings it.
    pub id: String,
    /// `webrtc` (browser over WSS) or `sip` (plain SIP phone over UDP).
    pub kind: EndpointKind,
    /// Codecs in order of preference.
    pub codecs: Option<Vec<String>>,
    /// Caller id name shown to the called party.
    pub display_name: Option<String>,
    /// How many registrations at once (default 1; a new one replaces the oldest).
    pub max_contacts: Option<i64>,
    /// Seconds without RTP after which Asterisk hangs up a call (0: never) [default: 30 for
    /// webrtc, 60 for sip: some phones send nothing during silence].
    pub rtp_timeout: Option<i64>,
    /// The same while the call is on hold (0: never) [default: 600].
    pub rtp_timeout_hold: Option<i64>,
    /// Whose codec order wins when a call is set up: `client` (default: the order the browser
    /// or phone offers, Asterisk's default) or `spec` (this endpoint's `codecs` order).
    pub codec_preference: Option<CodecPreference>,
    /// `kind = "sip"` only: `udp` (default) or `tls` (SIP over TLS with SRTP media, SDES keys).
    pub transport: Option<SipTransport>,
}

/// How a plain SIP phone reaches Asterisk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SipTransport {
    /// SIP over UDP, RTP in the clear.
    Udp,
    /// SIP over TLS, SRTP media with SDES keys (`media_encryption = sdes`).
    Tls,
}

/// Whose codec order an endpoint's calls follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CodecPreference {
    /// The order the client offers (browsers put opus first).
    Client,
    /// The endpoint's `codecs` order, e.g. `["ulaw", "opus"]`: browsers calling G.711 phones are
    /// answered with G.711 and nothing is transcoded.
    Spec,
}

/// What kind of client an endpoint serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndpointKind {
    /// A browser: WSS, DTLS-SRTP, ICE, AVPF, rtcp-mux.
    Webrtc,
    /// A plain SIP phone: UDP with RTP, or TLS with SRTP.
    Sip,
}

impl Spec {
    /// Whether the spec asks for the cluster topology.
    pub fn is_cluster(&self) -> bool {
        self.topology == Some(Topology::Cluster)
    }

    /// Whether `/metrics` is served: the spec's word, else on for one Asterisk and off in a
    /// cluster (whose pool members sit on a network Prometheus here does not reach).
    pub fn metrics_enabled(&self) -> bool {
        self.metrics.enabled.unwrap_or(defaults::METRICS_ENABLED && !self.is_cluster())
    }

    /// Whether the guard runs: the spec's word, else on for one Asterisk and off in a cluster
    /// (fail2ban reads Asterisk's security log; in a cluster the edge authenticates).
    pub fn guard_enabled(&self) -> bool {
        self.security.guard.unwrap_or(defaults::GUARD && !self.is_cluster())
    }
}

/// A spec file as read from disk, kept whole so errors can point into it.
#[derive(Debug, Clone)]
pub struct LoadedSpec {
    /// The parsed spec.
    pub spec: Spec,
    /// The file it came from, with its text.
    pub source: SourceFile,
}

impl LoadedSpec {
    /// The directory relative paths in the spec are resolved against.
    pub fn base_dir(&self) -> &Path {
        match self.source.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        }
    }
}

/// Reads and parses a spec file. Syntax errors, unknown keys and wrong types are reported with
/// the position in the file.
pub fn load(path: &Path) -> Result<LoadedSpec, SpecError> {
    let source = SourceFile::read(path)?;
    let spec = source.parse::<Spec>()?;
    Ok(LoadedSpec { spec, source })
}

/// Parses spec text that did not come from a file (tests, `init`).
pub fn parse(name: &str, text: &str) -> Result<LoadedSpec, SpecError> {
    let source = SourceFile::new(PathBuf::from(name), text.to_string());
    let spec = source.parse::<Spec>()?;
    Ok(LoadedSpec { spec, source })
}

impl LoadedSpec {
    /// Where the spec's secrets file is (`secrets`, relative to the spec; default beside it).
    pub fn secrets_path(&self) -> PathBuf {
        let rel = self.spec.secrets.clone().unwrap_or_else(|| PathBuf::from(defaults::SECRETS_FILE));
        if rel.is_absolute() {
            rel
        } else {
            self.base_dir().join(rel)
        }
    }

    /// Reads the spec's secrets file.
    pub fn load_secrets(&self) -> Result<secrets::LoadedSecrets, SpecError> {
        secrets::load(&self.secrets_path())
    }

    /// Validates the spec with its secrets: the typed values, or every problem located in the
    /// file it is in.
    pub fn validate(&self, secrets: &secrets::LoadedSecrets) -> Result<valid::Valid, SpecError> {
        validate::validate(&self.spec, self.base_dir(), &secrets.secrets).map_err(|problems| {
            let mut located: Vec<_> = problems.spec.into_iter().map(|p| self.source.locate(p)).collect();
            located.extend(problems.secrets.into_iter().map(|p| secrets.source.locate(p)));
            SpecError::Invalid(source::InvalidSpec { file: self.source.path.clone(), problems: located })
        })
    }
}
