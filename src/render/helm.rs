//! `deploy/helm/astrtc/`, a complete Helm chart for the plan: the context of its generated files
//! and the copies it carries of the configs compose mounts.
//!
//! Owns: the chart's values. Its Go templates (`templates/deploy/helm/astrtc/templates/`) are
//! copied verbatim — minijinja never sees a `{{ }}` of Helm's; Chart.yaml, values.yaml,
//! values.schema.json and the Ingress variant of http.conf are rendered from the plan; the
//! Asterisk configs and keys under `files/` are copies of the bundle's own, so compose and
//! Kubernetes run the very same configs.

use std::path::PathBuf;

use minijinja::context;
use minijinja::value::{Serde, Value};

use super::{Bundle, BundleFile, FileKind};
use crate::image::{self, ClusterImage, ImageRef};
use crate::plan::{Acme, Plan};
use crate::spec::validate::MAX_BRIDGE_RTP_PORTS;
use crate::spec::{AcmeChallenge, NetworkMode};

/// Where the chart goes in the output.
pub const CHART_DIR: &str = "helm/astrtc";
/// The restart digest in the chart (`files/restart-digest`): the pod annotation
/// `checksum/restart`, so a `helm upgrade` restarts the pod exactly when a change needs it. Both
/// charts carry it: the single topology's Asterisk pod and a cluster's pool members (the digest of
/// the pool's Asterisk configs, whose restart view compose's pool members' labels also hash); every
/// other change reaches the running pods through their `reloader` containers.
pub const RESTART_DIGEST_FILE: &str = "files/restart-digest";

/// The context of the chart's generated files.
pub fn context(plan: &Plan) -> Value {
    let ImageRef { repository, tag } = plan.image_ref();
    let sidecar = ImageRef::parse(image::SIDECAR_IMAGE);
    let guard = ImageRef::parse(image::GUARD_IMAGE);
    let exporter = ImageRef::parse(image::PROMETHEUS_IMAGE);
    let rtp_ports = plan.rtp.len();
    let bundled_keys = plan.tls.mode == crate::spec::TlsMode::SelfSigned;
    let host_port_ok = i64::from(rtp_ports) <= MAX_BRIDGE_RTP_PORTS;
    let allowed_modes: Vec<&str> = if host_port_ok { vec!["hostNetwork", "hostPort"] } else { vec!["hostNetwork"] };
    context! {
        plan => Value::from(Serde(plan)),
        chart_version => env!("CARGO_PKG_VERSION"),
        asterisk_version => image::ASTERISK_VERSION,
        image_repository => repository,
        image_tag => tag,
        network_mode => if plan.network.mode == NetworkMode::Bridge { "hostPort" } else { "hostNetwork" },
        max_host_ports => MAX_BRIDGE_RTP_PORTS,
        rtp_ports => rtp_ports,
        allowed_modes => Value::from(Serde(allowed_modes)),
        asterisk_uid => image::ASTERISK_UID,
        // The rendered certificate can be bundled only when there is one (not in ACME mode).
        certificate_modes => Value::from(Serde(if bundled_keys {
            vec!["bundled", "existingSecret", "certManager"]
        } else {
            vec!["acme", "existingSecret", "certManager"]
        })),
        certificate_mode => if bundled_keys { "bundled" } else { "acme" },
        sidecar_repository => sidecar.repository,
        sidecar_tag => sidecar.tag,
        sidecar_uid => image::SIDECAR_UID,
        sip_tls_port => if plan.listeners.sip_tls { plan.network.sip_tls_port } else { 0 },
        guard_enabled => plan.guard.is_some(),
        guard_available => plan.guard.is_some(),
        guard_repository => guard.repository,
        guard_tag => guard.tag,
        acme_challenge => Value::from(Serde(plan.tls.acme.as_ref().map_or(AcmeChallenge::Http01, |a| a.challenge))),
        acme_http_port => plan.tls.acme.as_ref().map_or(80, |a| a.http_port),
        acme_startup_seconds => plan.tls.acme.as_ref().map_or(300, Acme::first_certificate_wait),
        // ACME mode: the Secret holding the certificate `astrtc certs issue` (or cert-manager) made.
        memory_request => format!("{}Mi", plan.resources.memory_request_mb),
        memory_limit => format!("{}Mi", plan.resources.memory_limit_mb),
        existing_secret => if bundled_keys { String::new() } else { format!("{}-tls", plan.name) },
        turn => turn_values(plan),
        // The node exporter sidecar (the Prometheus image) serving astrtc-metrics' text file.
        exporter => context! {
            enabled => plan.metrics.enabled,
            repository => exporter.repository,
            tag => exporter.tag,
            port => plan.metrics.exporter_port,
            uid => image::PROMETHEUS_UID,
        },
    }
}

/// The chart's `turn` values: the bundled TURN relay's image and ports (from the spec), or a
/// disabled one (the key is always there, so the schema is the same for every spec).
fn turn_values(plan: &Plan) -> Value {
    let image = ImageRef::parse(image::TURN_IMAGE);
    let service = plan.turn.as_ref().filter(|t| t.bundled.is_some());
    context! {
        enabled => service.is_some(),
        host => service.map_or(plan.tls.domain.clone(), |t| t.host.clone()),
        repository => image.repository,
        tag => image.tag,
        port => service.map_or(0, |t| t.port),
        tls_port => service.and_then(|t| t.tls_port).unwrap_or(0),
        uid => image::TURN_UID,
    }
}

/// The copies the chart carries of the very files compose mounts: configs (passwords into the
/// chart's Secret), the sidecar's settings, the guard's fail2ban files, the TURN relay's config
/// and secret, keys.
pub fn chart_files(bundle: &Bundle) -> Vec<(PathBuf, BundleFile)> {
    copies(bundle, |p, name, f| {
        let to = if let Some(rest) = p.strip_prefix("asterisk/") {
            match f.kind {
                FileKind::Public => format!("{CHART_DIR}/files/asterisk/{rest}"),
                FileKind::Secret | FileKind::SecretExecutable => format!("{CHART_DIR}/files/secrets/{rest}"),
            }
        } else if let Some(rest) = p.strip_prefix("guard/") {
            format!("{CHART_DIR}/files/guard/{rest}")
        } else if let Some(rest) = p.strip_prefix("certs/") {
            format!("{CHART_DIR}/files/certs/{rest}")
        } else if let Some(rest) = p.strip_prefix("turn/") {
            match f.kind {
                FileKind::Public => format!("{CHART_DIR}/files/turn/{rest}"),
                FileKind::Secret | FileKind::SecretExecutable => format!("{CHART_DIR}/files/turn-secret/{rest}"),
            }
        } else if p == crate::render::templates::PROMETHEUS_PASSWORD {
            format!("{CHART_DIR}/files/metrics/password")
        } else if p.starts_with("keys/") && matches!(name, "asterisk.crt" | "asterisk.key" | "ca.crt") {
            format!("{CHART_DIR}/files/keys/{name}")
        } else {
            return None;
        };
        Some(to)
    })
}

/// The chart's copies of bundle files: each file `to` (path, file name, file) gives a place in
/// the chart, at that place.
fn copies(bundle: &Bundle, to: impl Fn(&str, &str, &BundleFile) -> Option<String>) -> Vec<(PathBuf, BundleFile)> {
    bundle
        .files()
        .iter()
        .filter_map(|(path, f)| {
            let place = to(path.to_str()?, path.file_name()?.to_str()?, f)?;
            Some((PathBuf::from(place), f.clone()))
        })
        .collect()
}

/// Where a cluster's chart templates are (`templates/deploy/helm-cluster/`): rendered and copied
/// into the same chart directory as the single topology's, which a cluster does not get.
pub const CLUSTER_TEMPLATES: &str = "helm-cluster/";

/// The context of a cluster chart's generated files: the plan (no secret in it), the images and
/// their users, the values the schema pins.
pub fn cluster_context(plan: &Plan) -> Value {
    let asterisk = plan.image_ref();
    let of = |which: ClusterImage| ImageRef::parse(plan.cluster.as_ref().map_or(which.tag(), |c| c.image(which)));
    let (edge, relay, db) = (of(ClusterImage::Edge), of(ClusterImage::Relay), of(ClusterImage::Database));
    let pool_size = plan.cluster.as_ref().map_or(0, |c| c.pool_size);
    context! {
        plan => Value::from(Serde(plan)),
        chart_version => env!("CARGO_PKG_VERSION"),
        asterisk_version => image::ASTERISK_VERSION,
        pool_size => pool_size,
        asterisk => context! { repository => asterisk.repository, tag => asterisk.tag, uid => image::ASTERISK_UID },
        edge => context! { repository => edge.repository, tag => edge.tag, uid => image::EDGE_UID },
        relay => context! { repository => relay.repository, tag => relay.tag, uid => image::RELAY_UID },
        db => context! { repository => db.repository, tag => db.tag, uid => image::DB_UID },
        memory_request => format!("{}Mi", plan.resources.memory_request_mb),
        memory_limit => format!("{}Mi", plan.resources.memory_limit_mb),
    }
}

/// The copies a cluster's chart carries of the files compose mounts: the pool's configs (passwords
/// into a Secret, the pool's key for the edge among them), the edge's Kamailio config and TLS
/// settings and (secret) its copy of that key, the relay's config, Kamailio's schema and
/// (secret) the users' HA1 digests, the certificate. Not copied: what names compose's
/// addresses or holds the database password (`edge/database.cfg`,
/// `asterisk/pjsip_edge.conf`, `db/pg_hba.conf`, `db/password`): the chart writes its own from
/// its values, and the password comes from an existing Secret. The pool's restart digest is
/// written beside them as the single chart's is ([`RESTART_DIGEST_FILE`]).
pub fn cluster_chart_files(bundle: &Bundle) -> Vec<(PathBuf, BundleFile)> {
    copies(bundle, |p, name, f| {
        let to = match p {
            _ if p == crate::render::templates::PJSIP_EDGE_CONF => return None,
            _ if p.starts_with("asterisk/") => match f.kind {
                FileKind::Public => format!("{CHART_DIR}/files/asterisk/{name}"),
                FileKind::Secret | FileKind::SecretExecutable => format!("{CHART_DIR}/files/secrets/{name}"),
            },
            "edge/kamailio.cfg" | "edge/tls.cfg" | "edge/listen.cfg" => format!("{CHART_DIR}/files/edge/{name}"),
            "relay/rtpengine.conf" => format!("{CHART_DIR}/files/relay/{name}"),
            "db/schema.sql" => format!("{CHART_DIR}/files/db/{name}"),
            crate::render::cluster::DB_SUBSCRIBERS_FILE => format!("{CHART_DIR}/files/db-secret/{name}"),
            crate::render::cluster::EDGE_KEY_FILE => format!("{CHART_DIR}/files/edge-secret/{name}"),
            "keys/asterisk.crt" | "keys/asterisk.key" | "keys/ca.crt" => format!("{CHART_DIR}/files/keys/{name}"),
            _ => return None,
        };
        Some(to)
    })
}
