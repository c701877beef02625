//! The plan: every value the outputs need, resolved once from the spec, its secrets and a few
//! facts about the host.
//!
//! Owns: defaults (the [`defaults`] module is the one place they are written down) and every
//! derived value — endpoints with passwords, ports, RTP range, network mode, TLS names, file
//! locations inside the container. Renderers, the certificate code and the image builder read the
//! plan and never look at the spec again. Building a plan fails only on invalid input, with
//! every problem at once.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::spec::secrets::{self, LoadedSecrets, Secrets};
use crate::spec::source::InvalidSpec;
use crate::spec::validate::{self, parse_cidr};
use crate::spec::{AcmeChallenge, EndpointKind, LoadedSpec, NetworkMode, SpecError, TlsMode};

/// Defaults for everything a spec may leave out.
pub mod defaults {
    use std::net::{IpAddr, Ipv4Addr};

    /// Deployment (compose project) name.
    pub const NAME: &str = "astrtc";
    /// The image `astrtc build` makes.
    pub const IMAGE: &str = "astrtc/asterisk:22.10.1";
    /// Secrets file, beside the spec.
    pub const SECRETS_FILE: &str = "astrtc.secrets.toml";
    /// SIP over UDP.
    pub const SIP_PORT: i64 = 5060;
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
}

/// Fixed facts about the image astrtc builds.
pub mod image {
    /// The Asterisk version the image builds (images/asterisk/Dockerfile, ASTERISK_VERSION).
    pub const ASTERISK_VERSION: &str = "22.10.1";
    /// Uid and gid of the `asterisk` user in the image.
    pub const ASTERISK_UID: u32 = 10060;
    /// The sidecar image (`images/astrtc`), the same version as this astrtc.
    pub const SIDECAR_IMAGE: &str = concat!("astrtc/astrtc:", env!("CARGO_PKG_VERSION"));
    /// Uid of the sidecar's user (its group is the asterisk group).
    pub const SIDECAR_UID: u32 = 10061;
    /// Where the sidecar reads its settings (`certs/acme.toml`, mounted).
    pub const SIDECAR_CONFIG_DIR: &str = "/etc/astrtc";
    /// The sidecar's keys volume.
    pub const SIDECAR_KEYS_DIR: &str = "/var/lib/astrtc/keys";
    /// The sidecar's ACME account volume.
    pub const SIDECAR_ACME_DIR: &str = "/var/lib/astrtc/acme";
    /// Where configs are mounted.
    pub const CONFIG_DIR: &str = "/etc/asterisk";
    /// Where keys are mounted.
    pub const KEYS_DIR: &str = "/etc/asterisk/keys";
    /// The image's healthcheck command.
    pub const HEALTHCHECK: &str = "/usr/local/bin/astrtc-healthcheck";
}

/// Facts about the machine that renders, which decide file ownership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostFacts {
    /// Effective uid of this process.
    pub uid: u32,
    /// Effective gid of this process.
    pub gid: u32,
}

impl HostFacts {
    /// The running process's facts.
    pub fn detect() -> Self {
        // SAFETY: geteuid/getegid cannot fail and touch no memory.
        unsafe { HostFacts { uid: libc::geteuid(), gid: libc::getegid() } }
    }
}

/// Who may read secret files (keys, passwords) inside the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SecretAccess {
    /// Group the secret files belong to (mode 0640).
    pub gid: u32,
    /// Whether files must be chowned to `gid` (only root can give files to another group).
    pub chown: bool,
    /// Extra group the container process needs to read them (`group_add`), if any.
    pub group_add: Option<u32>,
}

impl SecretAccess {
    /// Root gives the files to the image's asterisk group; anyone else keeps their own group
    /// and lets the container join it.
    pub fn for_host(host: HostFacts) -> Self {
        if host.uid == 0 {
            SecretAccess { gid: image::ASTERISK_UID, chown: true, group_add: None }
        } else {
            SecretAccess { gid: host.gid, chown: false, group_add: Some(host.gid) }
        }
    }
}

/// The complete, resolved deployment.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Deployment name.
    pub name: String,
    /// Asterisk image reference.
    pub image: String,
    /// The spec file this plan came from (for headers in generated files).
    pub spec_file: String,
    /// Network attachment and ports.
    pub network: NetworkPlan,
    /// Media ports and ICE helpers.
    pub rtp: RtpPlan,
    /// The WSS certificate.
    pub tls: TlsPlan,
    /// Dialplan.
    pub dialplan: DialplanPlan,
    /// Endpoints, in spec order.
    pub endpoints: Vec<Endpoint>,
    /// Ownership of secret files.
    pub secret_access: SecretAccess,
}

/// Network attachment.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkPlan {
    /// Host or bridge.
    pub mode: NetworkMode,
    /// SIP over UDP port.
    pub sip_port: u16,
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
    /// Networks reached directly.
    pub local_nets: Vec<String>,
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
pub struct RtpPlan {
    /// First port.
    pub start: u16,
    /// Last port.
    pub end: u16,
    /// STUN server.
    pub stun: Option<String>,
    /// TURN server and credentials.
    pub turn: Option<Turn>,
}

impl RtpPlan {
    /// Number of ports in the range.
    pub fn len(&self) -> u32 {
        u32::from(self.end) - u32::from(self.start) + 1
    }

    /// Never true for a valid plan; here for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.end < self.start
    }
}

/// TURN server.
#[derive(Debug, Clone, Serialize)]
pub struct Turn {
    /// `host:port`.
    pub address: String,
    /// User name.
    pub username: String,
    /// Password (from the secrets file).
    pub password: String,
}

/// The WSS certificate.
#[derive(Debug, Clone, Serialize)]
pub struct TlsPlan {
    /// Where it comes from.
    pub mode: TlsMode,
    /// The main name.
    pub domain: String,
    /// All DNS names for the certificate, the main name first.
    pub names: Vec<String>,
    /// The local CA's directory (self-signed mode), resolved against the spec's directory.
    pub ca_dir: PathBuf,
    /// ACME settings (acme mode).
    pub acme: Option<AcmePlan>,
}

/// ACME settings, resolved: everything `astrtc certs` needs, and nothing secret. Also the
/// format of the sidecar's `certs/acme.toml`, which render writes with container paths.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AcmePlan {
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
    pub dns_resolvers: Vec<std::net::SocketAddr>,
    /// DNS-01: seconds to wait for the records to become visible.
    pub dns_timeout: u64,
    /// Renew when fewer days are left; none: when a third of the lifetime is left.
    pub renew_before_days: Option<i64>,
    /// Where the ACME account credentials are kept.
    pub account_dir: PathBuf,
}

impl AcmePlan {
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
pub struct DialplanPlan {
    /// The context all endpoints use.
    pub context: String,
    /// The echo test extension.
    pub echo_extension: String,
}

/// One endpoint, fully resolved.
#[derive(Debug, Clone, Serialize)]
pub struct Endpoint {
    /// Id: SIP user name and extension.
    pub id: String,
    /// WebRTC or plain SIP.
    pub kind: EndpointKind,
    /// Codecs in preference order.
    pub codecs: Vec<String>,
    /// Caller id name.
    pub display_name: String,
    /// Registrations at once.
    pub max_contacts: u32,
    /// Digest password.
    #[serde(skip_serializing)]
    pub password: String,
}

/// Where the secrets file of a spec is.
pub fn secrets_path(spec: &LoadedSpec) -> PathBuf {
    let rel = spec.spec.secrets.clone().unwrap_or_else(|| PathBuf::from(defaults::SECRETS_FILE));
    resolve(spec.base_dir(), &rel)
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Loads the spec's secrets file.
pub fn load_secrets(spec: &LoadedSpec) -> Result<LoadedSecrets, SpecError> {
    secrets::load(&secrets_path(spec))
}

/// Checks the spec and its secrets and resolves every value. All problems are reported at once.
pub fn build(spec: &LoadedSpec, secrets: &LoadedSecrets, host: HostFacts) -> Result<Plan, SpecError> {
    let problems = validate::validate(&spec.spec, Some(&secrets.secrets));
    if !problems.is_empty() {
        let mut located: Vec<_> = problems.spec.into_iter().map(|p| spec.source.locate(p)).collect();
        located.extend(problems.secrets.into_iter().map(|p| secrets.source.locate(p)));
        return Err(InvalidSpec { file: spec.source.path.clone(), problems: located }.into());
    }
    Ok(resolve_valid(spec, &secrets.secrets, host))
}

fn port(v: Option<i64>, default: i64) -> u16 {
    u16::try_from(v.unwrap_or(default)).expect("validated port")
}

fn resolve_valid(loaded: &LoadedSpec, secrets: &Secrets, host: HostFacts) -> Plan {
    let s = &loaded.spec;
    let net = &s.network;
    let mode = net.mode.unwrap_or(NetworkMode::Host);
    let nat = net.public_address.map(|public_address| Nat {
        public_address,
        local_nets: net
            .local_nets
            .clone()
            .unwrap_or_else(|| defaults::LOCAL_NETS.iter().map(|n| n.to_string()).collect())
            .iter()
            .map(|n| {
                // Normalise to the network address: Asterisk wants "a.b.c.d/n".
                let (addr, prefix) = parse_cidr(n).expect("validated cidr");
                format!("{addr}/{prefix}")
            })
            .collect(),
    });
    let bridge = (mode == NetworkMode::Bridge).then(|| Bridge {
        subnet: net.bridge_subnet.clone().unwrap_or_else(|| defaults::BRIDGE_SUBNET.into()),
        address: net.bridge_address.unwrap_or(defaults::BRIDGE_ADDRESS),
    });
    let domain = s.tls.domain.clone().unwrap_or_else(|| defaults::DOMAIN.into()).to_ascii_lowercase();
    let mut names = vec![domain.clone()];
    names.extend(s.tls.extra_names.iter().flatten().map(|n| n.to_ascii_lowercase()));
    let ca_dir = resolve(loaded.base_dir(), s.tls.ca_dir.as_deref().unwrap_or(Path::new(defaults::CA_DIR)));
    let endpoints = s
        .endpoints
        .iter()
        .map(|e| Endpoint {
            id: e.id.clone(),
            kind: e.kind,
            codecs: e.codecs.clone().unwrap_or_else(|| {
                let d = match e.kind {
                    EndpointKind::Webrtc => defaults::WEBRTC_CODECS,
                    EndpointKind::Sip => defaults::SIP_CODECS,
                };
                d.iter().map(|c| c.to_string()).collect()
            }),
            display_name: e.display_name.clone().unwrap_or_else(|| e.id.clone()),
            max_contacts: u32::try_from(e.max_contacts.unwrap_or(defaults::MAX_CONTACTS)).expect("validated"),
            password: secrets.endpoints[&e.id].clone(),
        })
        .collect();
    let secret_access = SecretAccess::for_host(host);
    Plan {
        name: s.name.clone().unwrap_or_else(|| defaults::NAME.into()),
        image: s.image.clone().unwrap_or_else(|| defaults::IMAGE.into()),
        spec_file: loaded
            .source
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "astrtc.toml".into()),
        network: NetworkPlan {
            mode,
            sip_port: port(net.sip_port, defaults::SIP_PORT),
            wss_port: port(net.wss_port, defaults::WSS_PORT),
            http_port: port(net.http_port, defaults::HTTP_PORT),
            nat,
            bridge,
        },
        rtp: RtpPlan {
            start: port(s.rtp.start, defaults::RTP_START),
            end: port(s.rtp.end, defaults::RTP_END),
            stun: s.rtp.stun.clone(),
            turn: s.rtp.turn.clone().map(|address| Turn {
                address,
                username: s.rtp.turn_username.clone().expect("validated"),
                password: secrets.turn.as_ref().expect("validated").password.clone(),
            }),
        },
        tls: TlsPlan {
            mode: s.tls.mode.unwrap_or(TlsMode::SelfSigned),
            domain,
            names: names.clone(),
            ca_dir,
            acme: s.tls.acme.as_ref().filter(|_| s.tls.mode == Some(TlsMode::Acme)).map(|a| AcmePlan {
                email: a.email.clone().expect("validated"),
                directory: a.directory.clone().unwrap_or_else(|| {
                    if a.staging == Some(true) { defaults::ACME_STAGING_DIRECTORY } else { defaults::ACME_DIRECTORY }
                        .to_string()
                }),
                ca_bundle: a.ca_bundle.as_ref().map(|p| resolve(loaded.base_dir(), p)),
                challenge: a.challenge.unwrap_or(AcmeChallenge::Http01),
                http_port: port(a.http_port, defaults::ACME_HTTP_PORT),
                dns_hook: a.dns_hook.as_ref().map(|p| resolve(loaded.base_dir(), p)),
                dns_resolvers: a
                    .dns_resolvers
                    .iter()
                    .flatten()
                    .map(|r| crate::spec::parse_resolver(r).expect("validated"))
                    .collect(),
                dns_timeout: u64::try_from(a.dns_timeout.unwrap_or(defaults::DNS_TIMEOUT)).expect("validated"),
                renew_before_days: a.renew_before_days,
                names: names.clone(),
                account_dir: resolve(loaded.base_dir(), Path::new(defaults::ACME_STATE_DIR)),
            }),
        },
        dialplan: DialplanPlan {
            context: s.dialplan.context.clone().unwrap_or_else(|| defaults::CONTEXT.into()),
            echo_extension: s.dialplan.echo_extension.clone().unwrap_or_else(|| defaults::ECHO_EXTENSION.into()),
        },
        endpoints,
        secret_access,
    }
}
