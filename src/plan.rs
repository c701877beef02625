//! The plan: every value the outputs need, resolved once — the validated spec ([`Valid`]) plus
//! the facts of the host that renders (who owns secret files) and of the images (uids, paths
//! inside the containers, image references split once).
//!
//! Owns: derived values. Renderers, the certificate code, the image builder and `verify` read the
//! plan and never look at the spec again. It is serialisable: the plan is the intermediate
//! representation every template sees (passwords excepted).

use serde::Serialize;

use crate::image::{self, ImageRef};
pub use crate::spec::valid::{
    Acme, Bridge, BundledTurn, Cluster, Dialplan, Endpoint, Lifecycle, Logging, Metrics, Nat, Network, Performance,
    Resources, Rtp, Security, Tls, Transport, Turn, TurnService, Valid,
};
use crate::spec::{LoadedSpec, SpecError};

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

    /// The group to give secret files, when this process may give them one.
    pub fn chgrp(&self) -> Option<u32> {
        self.chown.then_some(self.gid)
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
    pub network: Network,
    /// Media ports and ICE helpers.
    pub rtp: Rtp,
    /// The WSS certificate.
    pub tls: Tls,
    /// Dialplan.
    pub dialplan: Dialplan,
    /// Endpoints, in spec order.
    pub endpoints: Vec<Endpoint>,
    /// What Asterisk logs.
    pub logging: Logging,
    /// Memory the Asterisk container may use.
    pub resources: Resources,
    /// The TURN relay browsers use.
    pub turn: Option<TurnService>,
    /// What limits how many calls it carries.
    pub performance: Performance,
    /// Shutdown.
    pub lifecycle: Lifecycle,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Ownership of secret files.
    pub secret_access: SecretAccess,
    /// Ban settings.
    pub security: Security,
    /// Which SIP listeners exist and where they bind, derived from the endpoints' transports.
    pub listeners: Listeners,
    /// The guard (fail2ban), when `security.guard` is on.
    pub guard: Option<Guard>,
    /// The cluster (edge, relay, database, pool), with `topology = "cluster"`: `network` and
    /// `rtp` are then the edge's and the relay's, and every pool member uses the same SIP port
    /// at its own address.
    pub cluster: Option<Cluster>,
}

/// The SIP listeners, derived from what the endpoints use.
#[derive(Debug, Clone, Serialize)]
pub struct Listeners {
    /// Whether a phone uses SIP over UDP: then `transport-udp` binds every address; otherwise it
    /// binds loopback only (local tools and checks still reach it; scanners on the network do not).
    pub sip_udp_public: bool,
    /// The address `transport-udp` binds.
    pub sip_udp_bind: String,
    /// Whether a phone uses SIP over TLS (`transport-tls` on `network.sip_tls_port`; in a cluster
    /// the edge's listener on that port, the pool has none).
    pub sip_tls: bool,
}

impl Listeners {
    fn for_endpoints(endpoints: &[Endpoint], cluster: bool) -> Listeners {
        // A pool member takes SIP over UDP from the edge, on its own network.
        let sip_udp_public = cluster || endpoints.iter().any(|e| e.transport == Transport::Udp);
        Listeners {
            sip_udp_public,
            sip_udp_bind: if sip_udp_public { "0.0.0.0" } else { "127.0.0.1" }.to_string(),
            sip_tls: endpoints.iter().any(|e| e.transport == Transport::Tls),
        }
    }
}

/// The guard's derived settings: what fail2ban watches, which ports a ban closes, where its
/// nftables rules live.
#[derive(Debug, Clone, Serialize)]
pub struct Guard {
    /// The guard image.
    pub image: String,
    /// The jail: fail2ban's own `asterisk` jail (jail.conf), enabled and tuned by jail.d/astrtc.local.
    pub jail: String,
    /// The nftables table of this deployment's bans (one per deployment, so two deployments on a
    /// host never remove each other's rules).
    pub nft_table: String,
    /// The ports a ban closes (for TCP and UDP alike, as fail2ban's asterisk jail does), in
    /// fail2ban's `port` syntax (`a,b,c:d`): SIP (when public), SIP over TLS (when used), WSS, the
    /// RTP range and, with the bundled TURN relay, its listening ports (a banned address must not
    /// go on through the relay: it reaches every UDP port of Asterisk's addresses). Not the relay
    /// range: only peers an allocation's owner gave a permission reach those ports.
    pub ports: String,
    /// Addresses never banned: loopback, then `security.allow`.
    pub ignore: Vec<String>,
    /// Asterisk's security log, as both containers see it.
    pub log_file: String,
    /// The directory of that log (a volume both containers mount).
    pub log_dir: String,
    /// fail2ban's ban database, in its volume.
    pub db_file: String,
    /// The volume's mount point.
    pub db_dir: String,
    /// Seconds fail2ban keeps bans in its database: at least the ban time.
    pub db_purge_seconds: u32,
}

impl Guard {
    fn new(
        name: &str,
        network: &Network,
        rtp: &Rtp,
        security: &Security,
        listeners: &Listeners,
        turn: Option<&TurnService>,
    ) -> Guard {
        let mut ports = Vec::new();
        if listeners.sip_udp_public {
            ports.push(network.sip_port.to_string());
        }
        if listeners.sip_tls {
            ports.push(network.sip_tls_port.to_string());
        }
        ports.push(network.wss_port.to_string());
        ports.push(format!("{}:{}", rtp.start, rtp.end));
        if let Some(t) = turn.filter(|t| t.bundled.is_some()) {
            ports.push(t.port.to_string());
            ports.extend(t.tls_port.map(|p| p.to_string()));
        }
        let mut ignore = vec!["127.0.0.1/8".to_string(), "::1/128".to_string()];
        ignore.extend(security.allow.iter().cloned());
        Guard {
            image: image::GUARD_IMAGE.to_string(),
            jail: "asterisk".to_string(),
            nft_table: format!("f2b-{name}"),
            ports: ports.join(","),
            ignore,
            log_file: format!("{}/{}", image::LOG_DIR, image::SECURITY_LOG),
            log_dir: image::LOG_DIR.to_string(),
            db_file: image::GUARD_DB_FILE.to_string(),
            db_dir: image::GUARD_DB_DIR.to_string(),
            db_purge_seconds: security.ban_seconds.max(86400),
        }
    }
}

impl Plan {
    /// The plan of validated values, rendered on a host with these facts.
    pub fn new(valid: Valid, spec_file: &str, host: HostFacts) -> Plan {
        let Valid {
            name,
            image,
            network,
            rtp,
            tls,
            dialplan,
            endpoints,
            logging,
            resources,
            performance,
            security,
            lifecycle,
            metrics,
            turn,
            cluster,
        } = valid;
        let listeners = Listeners::for_endpoints(&endpoints, cluster.is_some());
        let guard = security.guard.then(|| Guard::new(&name, &network, &rtp, &security, &listeners, turn.as_ref()));
        Plan {
            name,
            image,
            spec_file: spec_file.to_string(),
            network,
            rtp,
            tls,
            dialplan,
            endpoints,
            logging,
            resources,
            turn,
            performance,
            lifecycle,
            metrics,
            secret_access: SecretAccess::for_host(host),
            security,
            listeners,
            guard,
            cluster,
        }
    }

    /// The Asterisk image reference, split.
    pub fn image_ref(&self) -> ImageRef {
        ImageRef::parse(&self.image)
    }
}

/// Validates a loaded spec with its secrets and resolves the plan; every problem at once.
pub fn build(
    spec: &LoadedSpec,
    secrets: &crate::spec::secrets::LoadedSecrets,
    host: HostFacts,
) -> Result<Plan, SpecError> {
    let valid = spec.validate(secrets)?;
    let spec_file =
        spec.source.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "astrtc.toml".into());
    Ok(Plan::new(valid, &spec_file, host))
}

/// Reads a spec file and its secrets and resolves the plan.
pub fn load(spec_path: &std::path::Path, host: HostFacts) -> Result<Plan, SpecError> {
    let spec = crate::spec::load(spec_path)?;
    let secrets = spec.load_secrets()?;
    build(&spec, &secrets, host)
}
