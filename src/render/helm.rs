//! Renders `deploy/helm/astrtc/`, a complete Helm chart for the plan.
//!
//! Owns: which chart files are static (the Go templates in the repo's `helm/astrtc/`, copied
//! verbatim — minijinja never sees a `{{ }}` of Helm's) and which come from the plan (Chart.yaml,
//! values.yaml, values.schema.json, and the Asterisk configs and keys under `files/`, copied from
//! the bundle so compose and Kubernetes run the very same configs).

use minijinja::value::{Serde, Value};
use minijinja::{context, Environment};

use super::templates::*;
use super::{Bundle, FileKind, RenderError};
use crate::plan::{image, AcmePlan, Plan};
use crate::spec::validate::MAX_BRIDGE_RTP_PORTS;
use crate::spec::{AcmeChallenge, NetworkMode};

/// Where the chart goes in the output.
pub const CHART_DIR: &str = "helm/astrtc";

/// The chart's static files: output path, contents.
pub const STATIC_FILES: &[(&str, &str)] = &[
    ("helm/astrtc/.helmignore", include_str!("../../helm/astrtc/.helmignore")),
    ("helm/astrtc/README.md", include_str!("../../helm/astrtc/README.md")),
    ("helm/astrtc/templates/_helpers.tpl", include_str!("../../helm/astrtc/templates/_helpers.tpl")),
    ("helm/astrtc/templates/NOTES.txt", include_str!("../../helm/astrtc/templates/NOTES.txt")),
    (
        "helm/astrtc/templates/asterisk-deployment.yaml",
        include_str!("../../helm/astrtc/templates/asterisk-deployment.yaml"),
    ),
    (
        "helm/astrtc/templates/asterisk-configmap.yaml",
        include_str!("../../helm/astrtc/templates/asterisk-configmap.yaml"),
    ),
    ("helm/astrtc/templates/asterisk-secret.yaml", include_str!("../../helm/astrtc/templates/asterisk-secret.yaml")),
    ("helm/astrtc/templates/asterisk-acme.yaml", include_str!("../../helm/astrtc/templates/asterisk-acme.yaml")),
    ("helm/astrtc/templates/asterisk-service.yaml", include_str!("../../helm/astrtc/templates/asterisk-service.yaml")),
    ("helm/astrtc/templates/asterisk-ingress.yaml", include_str!("../../helm/astrtc/templates/asterisk-ingress.yaml")),
    (
        "helm/astrtc/templates/asterisk-certificate.yaml",
        include_str!("../../helm/astrtc/templates/asterisk-certificate.yaml"),
    ),
];

/// Adds the chart to the bundle. Must run after the Asterisk configs and keys are in it.
pub fn render(env: &Environment<'_>, plan: &Plan, bundle: &mut Bundle) -> Result<(), RenderError> {
    for (path, text) in STATIC_FILES {
        bundle.add(*path, text.as_bytes().to_vec(), FileKind::Public);
    }
    let (repository, tag) = match plan.image.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r.to_string(), t.to_string()),
        _ => (plan.image.clone(), "latest".to_string()),
    };
    let rtp_ports = plan.rtp.len();
    let bundled_keys = plan.tls.mode == crate::spec::TlsMode::SelfSigned;
    let host_port_ok = i64::from(rtp_ports) <= MAX_BRIDGE_RTP_PORTS;
    let allowed_modes: Vec<&str> = if host_port_ok { vec!["hostNetwork", "hostPort"] } else { vec!["hostNetwork"] };
    let ctx = context! {
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
        sidecar_repository => image::SIDECAR_IMAGE.rsplit_once(':').map(|(r, _)| r).unwrap_or(image::SIDECAR_IMAGE),
        sidecar_tag => env!("CARGO_PKG_VERSION"),
        sidecar_uid => image::SIDECAR_UID,
        acme_challenge => Value::from(Serde(plan.tls.acme.as_ref().map_or(AcmeChallenge::Http01, |a| a.challenge))),
        acme_http_port => plan.tls.acme.as_ref().map_or(80, |a| a.http_port),
        acme_startup_seconds => plan.tls.acme.as_ref().map_or(300, AcmePlan::first_certificate_wait),
        // ACME mode: the Secret holding the certificate `astrtc certs issue` (or cert-manager) made.
        existing_secret => if bundled_keys { String::new() } else { format!("{}-tls", plan.name) },
    };
    for name in [HELM_CHART_YAML, HELM_VALUES_YAML, HELM_VALUES_SCHEMA, HTTP_INGRESS_CONF] {
        bundle.add(name, super::render_template(env, name, &ctx)?, FileKind::Public);
    }
    // The very files compose mounts: configs, passwords (for the chart's Secret), keys.
    let copies: Vec<(String, Vec<u8>, FileKind)> = bundle
        .files()
        .iter()
        .filter_map(|(path, f)| {
            let p = path.to_str()?;
            let name = path.file_name()?.to_str()?;
            let to = if let Some(rest) = p.strip_prefix("asterisk/") {
                match f.kind {
                    FileKind::Public => format!("{CHART_DIR}/files/asterisk/{rest}"),
                    FileKind::Secret | FileKind::SecretExecutable => format!("{CHART_DIR}/files/secrets/{rest}"),
                }
            } else if let Some(rest) = p.strip_prefix("certs/") {
                format!("{CHART_DIR}/files/certs/{rest}")
            } else if p.starts_with("keys/") && matches!(name, "asterisk.crt" | "asterisk.key" | "ca.crt") {
                format!("{CHART_DIR}/files/keys/{name}")
            } else {
                return None;
            };
            Some((to, f.bytes.clone(), f.kind))
        })
        .collect();
    for (to, bytes, kind) in copies {
        bundle.add(to, bytes, kind);
    }
    Ok(())
}
