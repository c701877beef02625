//! The images astrtc builds and runs: the facts every other part relies on (versions, uids,
//! paths inside the containers) and, in [`build`], building them through the Docker engine API.
//!
//! Owns: the one source of truth for versions and uids. The Dockerfiles receive them as build
//! arguments from here ([`build_args`]); nothing else writes them down.

pub mod build;

pub use build::{
    build, build_cluster_image, build_guard, build_prometheus, build_sidecar, build_turn, cluster_context_tar, connect,
    context_tar, sidecar_context_tar, BuildContext, Built, ClusterImage, ImageError, EXTRA_CA_FILE, HOST_CA_BUNDLE,
};

/// Expands to the Asterisk version as a literal (for `concat!`).
macro_rules! asterisk_version {
    () => {
        "22.10.1"
    };
}

/// The Asterisk version the image builds.
pub const ASTERISK_VERSION: &str = asterisk_version!();
/// The exact Debian source package it is built from (sid carries Asterisk 22). Pinned so the image
/// is reproducible; when sid moves on, the fetch fails naming this version.
pub const ASTERISK_DEB_VERSION: &str = concat!("1:", asterisk_version!(), "+dfsg+~cs6.17.60671434-1");
/// The pjproject version bundled with that source.
pub const PJPROJECT_VERSION: &str = "2.17";
/// The default image reference `astrtc build` tags.
pub const DEFAULT_IMAGE: &str = concat!("astrtc/asterisk:", asterisk_version!());
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
/// The TURN image (`images/turn`: Debian's coturn), the same version as this astrtc.
pub const TURN_IMAGE: &str = concat!("astrtc/turn:", env!("CARGO_PKG_VERSION"));
/// Uid of the TURN image's user (its group is the asterisk group, which may read the keys).
pub const TURN_UID: u32 = 10063;
/// Where the TURN service reads `turnserver.conf` and `auth-secret` (mounted).
pub const TURN_CONFIG_DIR: &str = "/etc/coturn";
/// Where the TURN service reads the certificate (mounted).
pub const TURN_KEYS_DIR: &str = "/etc/coturn-keys";
/// The TURN service's writable runtime directory (tmpfs): the config with the secret, the pid.
pub const TURN_RUN_DIR: &str = "/run/coturn";
/// The TURN image's healthcheck command: a STUN Binding request answered by coturn.
pub const TURN_HEALTHCHECK: &str = "/usr/local/bin/astrtc-turn-healthcheck";
/// The guard image (`images/guard`: fail2ban), the same version as this astrtc.
pub const GUARD_IMAGE: &str = concat!("astrtc/guard:", env!("CARGO_PKG_VERSION"));
/// Asterisk's log directory: a volume shared with the guard, which reads the security log there.
pub const LOG_DIR: &str = "/var/log/asterisk";
/// The security log's file name in [`LOG_DIR`] (logger.conf's `security => security` channel).
pub const SECURITY_LOG: &str = "security.log";
/// fail2ban's configuration directory in the guard image.
pub const GUARD_CONFIG_DIR: &str = "/etc/fail2ban";
/// The guard image's healthcheck: fail2ban answers and runs its jails.
pub const GUARD_HEALTHCHECK: &str = "/usr/local/bin/astrtc-guard-healthcheck";
/// The guard's volume: fail2ban's state.
pub const GUARD_DB_DIR: &str = "/var/lib/fail2ban";
/// fail2ban's ban database, in the guard's volume: bans outlive a restart.
pub const GUARD_DB_FILE: &str = "/var/lib/fail2ban/fail2ban.sqlite3";
/// The compose `monitoring` profile's Prometheus image (`images/prometheus`, Debian's package).
pub const PROMETHEUS_IMAGE: &str = concat!("astrtc/prometheus:", env!("CARGO_PKG_VERSION"));
/// Uid (and gid) of the Prometheus image's user.
pub const PROMETHEUS_UID: u32 = 10062;
/// Where the Prometheus container reads its settings (`deploy/prometheus`, mounted).
pub const PROMETHEUS_CONFIG_DIR: &str = "/etc/prometheus";
/// The environment variable the image's opus codec reads its encoder complexity from (0-10;
/// `images/asterisk/build/patch-opus`), set from `performance.opus_complexity`.
pub const OPUS_COMPLEXITY_ENV: &str = "ASTRTC_OPUS_COMPLEXITY";
/// Debian's node exporter in the Prometheus image (the monitoring profile's `node-exporter`).
pub const NODE_EXPORTER: &str = "/usr/bin/prometheus-node-exporter";
/// Where astrtc-metrics (Asterisk image) writes its text file and the node exporter reads it:
/// one volume, read-write in Asterisk, read-only in the exporter.
pub const METRICS_TEXTFILE_DIR: &str = "/var/lib/astrtc-metrics";
/// The cluster's edge image (`images/edge`: Debian's Kamailio), the same version as this astrtc.
pub const EDGE_IMAGE: &str = concat!("astrtc/edge:", env!("CARGO_PKG_VERSION"));
/// Uid of the edge's user (its group is the asterisk group, which may read the keys).
pub const EDGE_UID: u32 = 10064;
/// Where the edge reads `kamailio.cfg` and the rest of `deploy/edge` (mounted).
pub const EDGE_CONFIG_DIR: &str = "/etc/astrtc-edge";
/// Where the edge reads the WSS certificate (mounted).
pub const EDGE_KEYS_DIR: &str = "/etc/astrtc-edge-keys";
/// The edge's runtime directory (in memory): Kamailio's control socket, which the pool watcher
/// uses too.
pub const EDGE_RUN_DIR: &str = "/run/kamailio";
/// The pool watcher (`images/edge/runtime/astrtc-pool-watch`): keeps the edge's dispatcher list
/// to the pool's members as the orchestrator has them.
pub const POOL_WATCH: &str = "/usr/local/bin/astrtc-pool-watch";
/// Where the pool watcher writes the list the edge loads (in memory, shared with the edge).
pub const POOL_LIST_DIR: &str = "/run/astrtc-pool";
/// The list the pool watcher writes and the edge loads (`ASTRTC_EDGE_DISPATCHER_LIST`).
pub const POOL_LIST: &str = "/run/astrtc-pool/dispatcher.list";
/// The edge image's healthcheck: Kamailio answers on its control socket.
pub const EDGE_HEALTHCHECK: &str = "/usr/local/bin/astrtc-edge-healthcheck";
/// The cluster's relay image (`images/relay`: Debian's rtpengine).
pub const RELAY_IMAGE: &str = concat!("astrtc/relay:", env!("CARGO_PKG_VERSION"));
/// Uid (and gid) of the relay's user.
pub const RELAY_UID: u32 = 10065;
/// Where the relay reads `rtpengine.conf` (mounted).
pub const RELAY_CONFIG_DIR: &str = "/etc/astrtc-relay";
/// The relay image's healthcheck: rtpengine answers a ping on its control port.
pub const RELAY_HEALTHCHECK: &str = "/usr/local/bin/astrtc-relay-healthcheck";
/// The cluster's database image (`images/db`: Debian's PostgreSQL 17).
pub const DB_IMAGE: &str = concat!("astrtc/db:", env!("CARGO_PKG_VERSION"));
/// Uid of the database's user (Debian's postgres user, moved; in the asterisk group).
pub const DB_UID: u32 = 10066;
/// Where the database reads `deploy/db` (mounted).
pub const DB_CONFIG_DIR: &str = "/etc/astrtc-db";
/// The database's data directory (a volume).
pub const DB_DATA_DIR: &str = "/var/lib/postgresql/data";
/// The database image's healthcheck: a query in the edge's database.
pub const DB_HEALTHCHECK: &str = "/usr/local/bin/astrtc-db-healthcheck";
/// Where configs are mounted.
pub const CONFIG_DIR: &str = "/etc/asterisk";
/// Where keys are mounted: beside the config directory, not inside it, so each is one directory
/// mount that can be switched as a whole (a mount inside a Kubernetes ConfigMap volume cannot be).
pub const KEYS_DIR: &str = "/etc/asterisk-keys";
/// The image's healthcheck command.
pub const HEALTHCHECK: &str = "/usr/local/bin/astrtc-healthcheck";

/// Build arguments of the Asterisk image's Dockerfile.
pub fn asterisk_build_args() -> Vec<(&'static str, String)> {
    vec![
        ("ASTERISK_VERSION", ASTERISK_VERSION.to_string()),
        ("ASTERISK_DEB_VERSION", ASTERISK_DEB_VERSION.to_string()),
        ("PJPROJECT_VERSION", PJPROJECT_VERSION.to_string()),
        ("ASTERISK_UID", ASTERISK_UID.to_string()),
    ]
}

/// Build arguments of the Prometheus image's Dockerfile.
pub fn prometheus_build_args() -> Vec<(&'static str, String)> {
    vec![("PROMETHEUS_UID", PROMETHEUS_UID.to_string())]
}

/// Build arguments of the sidecar image's Dockerfile.
pub fn sidecar_build_args() -> Vec<(&'static str, String)> {
    vec![("ASTERISK_GID", ASTERISK_UID.to_string()), ("SIDECAR_UID", SIDECAR_UID.to_string())]
}

/// Build arguments of the TURN image's Dockerfile.
pub fn turn_build_args() -> Vec<(&'static str, String)> {
    vec![("ASTERISK_GID", ASTERISK_UID.to_string()), ("TURN_UID", TURN_UID.to_string())]
}

/// Build arguments of the cluster images' Dockerfiles (each takes those it names).
pub fn cluster_build_args() -> Vec<(&'static str, String)> {
    vec![
        ("ASTERISK_GID", ASTERISK_UID.to_string()),
        ("EDGE_UID", EDGE_UID.to_string()),
        ("RELAY_UID", RELAY_UID.to_string()),
        ("DB_UID", DB_UID.to_string()),
    ]
}

/// Build arguments of the guard image's Dockerfile.
pub fn guard_build_args() -> Vec<(&'static str, String)> {
    vec![("ASTERISK_GID", ASTERISK_UID.to_string())]
}

/// An image reference split into repository and tag (`latest` when none is given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `[registry[:port]/]path`.
    pub repository: String,
    /// The tag (`latest` when the reference has none).
    pub tag: String,
}

impl ImageRef {
    /// Splits `[registry[:port]/]path[:tag]`: the tag is what follows the last `:` only when no
    /// `/` follows it (`localhost:5000/pbx/asterisk` has no tag).
    pub fn parse(reference: &str) -> ImageRef {
        match reference.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => ImageRef { repository: r.to_string(), tag: t.to_string() },
            _ => ImageRef { repository: reference.to_string(), tag: "latest".to_string() },
        }
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.repository, self.tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_split_at_the_tag_not_the_registry_port() {
        let r = ImageRef::parse("localhost:5000/pbx/asterisk");
        assert_eq!((r.repository.as_str(), r.tag.as_str()), ("localhost:5000/pbx/asterisk", "latest"));
        let r = ImageRef::parse("localhost:5000/pbx/asterisk:1.2");
        assert_eq!((r.repository.as_str(), r.tag.as_str()), ("localhost:5000/pbx/asterisk", "1.2"));
        let r = ImageRef::parse(DEFAULT_IMAGE);
        assert_eq!(r.tag, ASTERISK_VERSION);
        assert_eq!(ImageRef::parse("asterisk").to_string(), "asterisk:latest");
    }

    /// Each image's user is its own: a uid shared by two images would let one container's process
    /// own (and signal, on a shared pid namespace, or read through a shared volume) the other's
    /// files. The TURN user and the sidecar share only the asterisk group, by design.
    #[test]
    fn every_image_user_has_its_own_uid() {
        let uids = [ASTERISK_UID, SIDECAR_UID, TURN_UID, PROMETHEUS_UID, EDGE_UID, RELAY_UID, DB_UID];
        let distinct: std::collections::BTreeSet<u32> = uids.into_iter().collect();
        assert_eq!(distinct.len(), uids.len(), "{uids:?}");
    }
}
