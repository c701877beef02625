//! The context of `deploy/compose.yaml`, the main deployment path (`docker compose up`).
//!
//! Owns: the compose-specific derived strings (published ports, tmpfs options). Every value is
//! JSON-escaped by the environment (a JSON literal is a valid YAML scalar), so no spec value can
//! add a key.

use minijinja::context;
use minijinja::value::{Serde, Value};

use crate::image;
use crate::plan::Plan;
use crate::spec::{AcmeChallenge, NetworkMode};

/// Name of the user-defined network in bridge mode.
pub const NETWORK_NAME: &str = "astrtc";
/// Name of the cluster pool's network (the pool members and the database).
pub const CLUSTER_NETWORK_NAME: &str = "pool";

/// The guard's rendered files (`deploy/guard/`), each mounted over its place in fail2ban's
/// configuration directory, beside the package's untouched `*.conf` files.
pub const GUARD_FILES: &[&str] =
    &["fail2ban.d/astrtc.local", "jail.d/astrtc.local", "filter.d/asterisk.local", "action.d/nftables.local"];

/// The context of `compose.yaml`.
pub fn context(plan: &Plan) -> Value {
    let n = &plan.network;
    let rtp_range = format!("{}-{}", plan.rtp.start, plan.rtp.end);
    let published_ports: Vec<String> = if n.mode == NetworkMode::Bridge {
        // Only the listeners that exist on the network: UDP SIP when a phone uses it (otherwise
        // it answers on the container's loopback only), SIP over TLS when a phone uses that.
        let mut ports = vec![format!("{0}:{0}/tcp", n.wss_port)];
        if plan.listeners.sip_udp_public {
            ports.push(format!("{0}:{0}/udp", n.sip_port));
        }
        if plan.listeners.sip_tls {
            ports.push(format!("{0}:{0}/tcp", n.sip_tls_port));
        }
        ports.push(format!("{rtp_range}:{rtp_range}/udp"));
        ports
    } else {
        Vec::new()
    };
    let sidecar = plan.tls.acme.as_ref().map(|a| {
        let http01 = a.challenge == AcmeChallenge::Http01;
        // Until the first certificate exists the sidecar is "starting"; Asterisk waits for it.
        let start_period = a.first_certificate_wait();
        context! {
            image => image::SIDECAR_IMAGE,
            config_dir => image::SIDECAR_CONFIG_DIR,
            keys_dir => image::SIDECAR_KEYS_DIR,
            acme_dir => image::SIDECAR_ACME_DIR,
            challenge => Value::from(Serde(a.challenge)),
            http_port => a.http_port,
            publish => (http01 && n.mode == NetworkMode::Bridge).then(|| format!("{0}:{0}/tcp", a.http_port)),
            bind_cap => http01 && a.http_port < 1024,
            start_period => format!("{start_period}s"),
            healthcheck => Value::from(Serde(["CMD", "/usr/local/bin/astrtc", "certs", "check"])),
        }
    });
    let turn = plan.turn.as_ref().filter(|t| t.bundled.is_some()).map(|t| {
        context! {
            image => image::TURN_IMAGE,
            config_dir => image::TURN_CONFIG_DIR,
            keys_dir => image::TURN_KEYS_DIR,
            run_tmpfs => format!("{}:uid={},gid={},mode=0700", image::TURN_RUN_DIR, image::TURN_UID, image::ASTERISK_UID),
            bind_cap => t.binds_privileged_port(),
            ports => match t.tls_port {
                Some(tls) => format!("{} (UDP, TCP) and {tls} (TLS)", t.port),
                None => format!("{} (UDP, TCP)", t.port),
            },
            healthcheck => Value::from(Serde(["CMD", image::TURN_HEALTHCHECK])),
        }
    });
    let guard_files: Vec<_> = GUARD_FILES
        .iter()
        .map(|f| context! { source => format!("./guard/{f}"), target => format!("{}/{f}", image::GUARD_CONFIG_DIR) })
        .collect();
    let cluster = plan.cluster.as_ref().map(|c| {
        context! {
            network => CLUSTER_NETWORK_NAME,
            db_image => &c.db_image,
            db_config_dir => image::DB_CONFIG_DIR,
            db_data_dir => image::DB_DATA_DIR,
            db_run_tmpfs => format!("/run/postgresql:uid={},gid={},mode=2775", image::DB_UID, image::DB_UID),
            db_healthcheck => Value::from(Serde(["CMD", image::DB_HEALTHCHECK])),
            relay_image => &c.relay_image,
            relay_config_dir => image::RELAY_CONFIG_DIR,
            relay_healthcheck => Value::from(Serde(["CMD", image::RELAY_HEALTHCHECK])),
            edge_image => &c.edge_image,
            edge_config_dir => image::EDGE_CONFIG_DIR,
            edge_keys_dir => image::EDGE_KEYS_DIR,
            edge_run_dir => image::EDGE_RUN_DIR,
            edge_run_options => format!("uid={},gid={},mode=0700,size=16m", image::EDGE_UID, image::ASTERISK_UID),
            pool_entrypoint => Value::from(Serde([image::POOL_WATCH])),
            pool_list => image::POOL_LIST,
            pool_list_dir => image::POOL_LIST_DIR,
            pool_list_options => format!("uid={},gid={},mode=0755,size=1m", image::EDGE_UID, image::ASTERISK_UID),
            pool_restart_digest => restart_digest_placeholder("pool-watch"),
            edge_healthcheck => Value::from(Serde(["CMD", image::EDGE_HEALTHCHECK])),
            db_restart_digest => restart_digest_placeholder("db"),
            relay_restart_digest => restart_digest_placeholder("relay"),
            edge_restart_digest => restart_digest_placeholder("edge"),
            edge_key_fingerprint => super::cluster::edge_key_fingerprint(c.edge_key.expose()),
        }
    });
    context! {
        cluster => cluster,
        guard => Value::from(Serde(&plan.guard)),
        guard_files => guard_files,
        guard_healthcheck => Value::from(Serde(["CMD", image::GUARD_HEALTHCHECK])),
        sidecar => sidecar,
        turn => turn,
        plan => Value::from(Serde(plan)),
        rtp_range => rtp_range,
        published_ports => published_ports,
        network_name => NETWORK_NAME,
        config_dir => image::CONFIG_DIR,
        keys_dir => image::KEYS_DIR,
        asterisk_uid => image::ASTERISK_UID,
        healthcheck => Value::from(Serde(["CMD", image::HEALTHCHECK])),
        memory_limit => format!("{}m", plan.resources.memory_limit_mb),
        memory_request => format!("{}m", plan.resources.memory_request_mb),
        drain_seconds => plan.lifecycle.drain_seconds.to_string(),
        stop_grace_period => format!("{}s", plan.lifecycle.stop_grace_seconds()),
        restart_digest => RESTART_DIGEST_PLACEHOLDER,
        prometheus => plan.metrics.enabled.then(|| context! {
            image => image::PROMETHEUS_IMAGE,
            uid => image::PROMETHEUS_UID,
            config_dir => image::PROMETHEUS_CONFIG_DIR,
            listen => format!("127.0.0.1:{}", plan.metrics.prometheus_port),
            exporter_listen => format!("127.0.0.1:{}", plan.metrics.exporter_port),
            textfile_dir => image::METRICS_TEXTFILE_DIR,
            exporter_entrypoint => Value::from(Serde([image::NODE_EXPORTER])),
            exporter_args => Value::from(Serde([
                format!("--web.listen-address=127.0.0.1:{}", plan.metrics.exporter_port),
                "--collector.disable-defaults".to_string(),
                "--collector.cpu".to_string(),
                "--collector.meminfo".to_string(),
                "--collector.loadavg".to_string(),
                "--collector.textfile".to_string(),
                format!("--collector.textfile.directory={}", image::METRICS_TEXTFILE_DIR),
            ])),
            // The image has no HTTP client (promtool asks Prometheus' own `/-/healthy`): bash
            // asks for /metrics and wants a 200.
            exporter_healthcheck => Value::from(Serde([
                "CMD".to_string(),
                "/bin/bash".to_string(),
                "-c".to_string(),
                format!(
                    "exec 3<>/dev/tcp/127.0.0.1/{} && printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '",
                    plan.metrics.exporter_port
                ),
            ])),
            group => plan.secret_access.group_add.unwrap_or(image::ASTERISK_UID).to_string(),
            args => Value::from(Serde([
                format!("--config.file={}/prometheus.yml", image::PROMETHEUS_CONFIG_DIR),
                "--storage.tsdb.path=/prometheus".to_string(),
                "--storage.tsdb.retention.time=15d".to_string(),
                format!("--web.listen-address=127.0.0.1:{}", plan.metrics.prometheus_port),
            ])),
            healthcheck => Value::from(Serde([
                "CMD".to_string(),
                "/usr/bin/promtool".to_string(),
                "check".to_string(),
                "healthy".to_string(),
                "--url".to_string(),
                format!("http://127.0.0.1:{}", plan.metrics.prometheus_port),
            ])),
        }),
    }
}

/// What the restart digest label holds in the template; the real digest is put in its place
/// once every other file is rendered (see [`crate::render::restart`]).
pub const RESTART_DIGEST_PLACEHOLDER: &str = "@@ASTRTC_RESTART_DIGEST@@";
/// What the restart digest label of one of a cluster's own services (`edge`, `relay`, `db`) holds
/// in the template, until [`crate::render::render`] puts the digest of that service's restart view
/// ([`crate::render::cluster::RESTART_VIEWS`]) in its place.
pub fn restart_digest_placeholder(service: &str) -> String {
    format!("@@ASTRTC_RESTART_DIGEST_{}@@", service.to_ascii_uppercase())
}
/// The label on the Asterisk container (and a cluster's edge, relay and database) naming the restart digest it was created with.
pub const RESTART_DIGEST_LABEL: &str = "io.astrtc.restart-digest";
/// The label on a cluster's edge naming the key it was created with (the key it sends), as
/// [`super::cluster::edge_key_fingerprint`]: what `astrtc apply` compares a new key with,
/// whatever the rendered files say since.
pub const EDGE_KEY_LABEL: &str = "io.astrtc.edge-key";

/// The context of the monitoring profile's `prometheus.yml`: Asterisk's loopback HTTP listener
/// as the target (Prometheus shares Asterisk's network namespace).
pub fn prometheus_context(plan: &Plan) -> Value {
    context! {
        plan => Value::from(Serde(plan)),
        target => format!("127.0.0.1:{}", plan.network.http_port),
        exporter_target => format!("127.0.0.1:{}", plan.metrics.exporter_port),
        password_file => format!("{}/metrics-password", image::PROMETHEUS_CONFIG_DIR),
    }
}
