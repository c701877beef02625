//! Rendering: plan + [`Inputs`] → [`Bundle`] (every output file in memory). Pure: it reads
//! nothing from disk — whatever it needs from there (the certificate, a private ACME CA bundle, a
//! DNS hook) is gathered before and passed in as [`Inputs`] (see [`crate::deploy`]).
//!
//! Owns: which files a deployment has and the context each template sees. The embedded tree
//! `templates/deploy/` is the output directory file for file ([`crate::assets`]): `.j2` files are
//! rendered, every other file is copied, and a few are conditional (TURN, ACME, certificates).
//! One module per output family provides its template context ([`asterisk`], [`cluster`],
//! [`compose`], [`guard`], [`helm`], [`turn`]); secrets reach only the templates of the secret files, through
//! contexts of their own. The [`Bundle`] compares itself with disk (`render --check`) and writes itself with
//! [`crate::fsx::replace_dir`].

pub mod asterisk;
mod bundle;
pub mod cluster;
pub mod compose;
pub mod guard;
pub mod helm;
pub mod restart;
pub mod templates;
pub mod turn;

pub use bundle::{file_gid, Bundle, BundleFile, Change, CheckReport, FileKind, LIVE_DIRS};

use std::path::{Path, PathBuf};

use minijinja::{context, Environment};
use thiserror::Error;

use crate::assets::{self, TEMPLATE_SUFFIX};
use crate::certs::CertLayout;
use crate::image;
use crate::plan::Plan;

/// Errors while rendering or writing outputs. All mean exit code 1.
#[derive(Debug, Error, miette::Diagnostic)]
pub enum RenderError {
    /// A template failed; this is a bug in astrtc, not in the spec.
    #[error("failed to render {name}")]
    #[diagnostic(help("this is a bug in astrtc; please report it with the spec that caused it"))]
    Template {
        /// Template name.
        name: String,
        /// The template engine's error.
        #[source]
        source: minijinja::Error,
    },
    /// Writing the output failed; the previous output is untouched.
    #[error("failed to write {}", path.display())]
    #[diagnostic(help("the previous output directory was left as it was"))]
    Write {
        /// The path that could not be written.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The sidecar's settings could not be written as TOML (a bug in astrtc).
    #[error("failed to write the ACME sidecar's settings as TOML")]
    Settings(#[from] toml::ser::Error),
    /// Reading the existing output, or a file the spec names, failed.
    #[error("failed to read {}", path.display())]
    Read {
        /// The path that could not be read.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
}

/// What rendering needs besides the plan: everything that comes from disk, read beforehand.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// The WSS certificate for `keys/`: the local CA's leaf (self-signed mode), or what
    /// `astrtc certs issue` wrote, carried over (ACME mode; `None` before the first issuance).
    pub certs: Option<CertLayout>,
    /// ACME mode: the contents of `tls.acme.ca_bundle`, copied to `certs/acme-ca.pem`.
    pub acme_ca_bundle: Option<Vec<u8>>,
    /// ACME mode: the contents of `tls.acme.dns_hook`, copied to `certs/dns-hook`.
    pub dns_hook: Option<Vec<u8>>,
}

/// Files that hold secrets (mode 0640, never shown in a diff).
pub const SECRET_FILES: &[&str] = &[
    templates::PJSIP_AUTH_CONF,
    templates::RTP_TURN_CONF,
    templates::PROMETHEUS_AUTH_CONF,
    templates::PROMETHEUS_PASSWORD,
    turn::SECRET_FILE,
    cluster::EDGE_DATABASE_FILE,
    cluster::DB_SUBSCRIBERS_FILE,
    cluster::DB_PASSWORD_FILE,
    cluster::EDGE_KEY_FILE,
    templates::EXTENSIONS_EDGE_CONF,
    "keys/asterisk.key",
    "keys/asterisk.pem",
];

/// The sidecar's settings file in `certs/`.
pub const SIDECAR_CONFIG_FILE: &str = "acme.toml";
/// The private ACME CA bundle in `certs/` (a copy of the file the spec names).
pub const SIDECAR_CA_FILE: &str = "acme-ca.pem";
/// The DNS hook in `certs/` (a copy of the file the spec names).
pub const SIDECAR_HOOK_FILE: &str = "dns-hook";

pub(crate) fn render_template(
    env: &Environment<'_>,
    name: &str,
    ctx: &minijinja::Value,
) -> Result<Vec<u8>, RenderError> {
    let tmpl = env.get_template(name).map_err(|source| RenderError::Template { name: name.into(), source })?;
    let text = tmpl.render(ctx).map_err(|source| RenderError::Template { name: name.into(), source })?;
    Ok(text.into_bytes())
}

/// Whether the output file at `path` belongs in this deployment.
fn wanted(plan: &Plan, inputs: &Inputs, path: &str) -> bool {
    if path == templates::RTP_TURN_CONF {
        plan.rtp.turn.is_some()
    } else if path == templates::PJSIP_EDGE_CONF || path == templates::EXTENSIONS_EDGE_CONF {
        plan.cluster.is_some()
    } else if path == templates::PROMETHEUS_AUTH_CONF || path.starts_with("prometheus/") {
        plan.metrics.enabled
    } else if path == "keys/ca.crt" {
        inputs.certs.as_ref().is_some_and(|c| c.ca_pem.is_some())
    } else if path.starts_with("keys/") {
        inputs.certs.is_some()
    } else if path.starts_with("certs/") {
        plan.tls.acme.is_some()
    } else if path.starts_with("turn/") {
        turn::bundled(plan)
    } else if path.starts_with("guard/") {
        plan.guard.is_some()
    } else if cluster::is_cluster_file(path) {
        plan.cluster.is_some()
    } else if path.starts_with("helm/") {
        // The chart of one Asterisk; a cluster's chart has templates of its own (helm-cluster/).
        plan.cluster.is_none()
    } else if path.starts_with(helm::CLUSTER_TEMPLATES) {
        plan.cluster.is_some()
    } else {
        true
    }
}

/// Renders every output of a plan.
pub fn render(plan: &Plan, inputs: &Inputs) -> Result<Bundle, RenderError> {
    let env = templates::environment();
    let contexts = Contexts::new(plan, inputs)?;
    let mut bundle = Bundle::default();
    for asset in assets::files_under(&assets::TEMPLATES, templates::DEPLOY_DIR) {
        let (path, template) = match asset.path.strip_suffix(TEMPLATE_SUFFIX) {
            Some(out) => (out, true),
            None => (asset.path, false),
        };
        if !wanted(plan, inputs, path) {
            continue;
        }
        let bytes =
            if template { render_template(&env, path, &contexts.for_file(path))? } else { asset.contents.to_vec() };
        let kind = if SECRET_FILES.contains(&path) { FileKind::Secret } else { FileKind::Public };
        // A cluster's chart templates are written where the chart goes (one chart directory).
        let out = match path.strip_prefix(helm::CLUSTER_TEMPLATES) {
            Some(rest) => format!("helm/{rest}"),
            None => path.to_string(),
        };
        bundle.add(out, bytes, kind);
    }
    // The keys directory is mounted even before it holds a certificate (ACME mode).
    bundle.add_dir("keys");
    // Files the spec names, copied as they are.
    if let Some(ca) = &inputs.acme_ca_bundle {
        bundle.add(format!("certs/{SIDECAR_CA_FILE}"), ca.clone(), FileKind::Public);
    }
    if let Some(hook) = &inputs.dns_hook {
        bundle.add(format!("certs/{SIDECAR_HOOK_FILE}"), hook.clone(), FileKind::SecretExecutable);
    }
    // Last: the chart carries copies of the very files compose mounts.
    let copies = if plan.cluster.is_none() { helm::chart_files(&bundle) } else { helm::cluster_chart_files(&bundle) };
    for (path, file) in copies {
        bundle.add(path, file.bytes, file.kind);
    }
    // The restart digests: the chart's pod annotation, compose's container label.
    let view = restart::config_view(&bundle);
    bundle.add(
        format!("{}/{}", helm::CHART_DIR, helm::RESTART_DIGEST_FILE),
        restart::digest(&view).into_bytes(),
        FileKind::Public,
    );
    if let Some(compose) = bundle.text(templates::COMPOSE_YAML).map(str::to_string) {
        // A cluster's pool is one service, scaled: its count starts or drains members and
        // restarts none, so it is not in the digest.
        let service: String = compose_service(&compose, "asterisk")
            .lines()
            .filter(|l| !(plan.cluster.is_some() && l.starts_with("    scale: ")))
            .map(|l| format!("{l}\n"))
            .collect();
        let label = restart::digest(&format!("{view}==> compose service\n{service}"));
        let mut compose_out = compose.replace(compose::RESTART_DIGEST_PLACEHOLDER, &label);
        if plan.cluster.is_some() {
            for (name, outputs) in cluster::RESTART_VIEWS {
                let mut view = String::new();
                for (path, file) in bundle.files() {
                    let p = path.to_string_lossy();
                    if outputs.iter().any(|o| if o.ends_with('/') { p.starts_with(o) } else { p == *o }) {
                        let text = String::from_utf8_lossy(&file.bytes);
                        view.push_str(&format!("==> {p}\n{}\n", cluster::restart_view_of(&p, &text)));
                    }
                }
                view.push_str(&format!("==> compose service\n{}", compose_service(&compose, name)));
                compose_out = compose_out.replace(&compose::restart_digest_placeholder(name), &restart::digest(&view));
            }
        }
        bundle.add(templates::COMPOSE_YAML, compose_out.into_bytes(), FileKind::Public);
    }
    Ok(bundle)
}

/// The lines of one service of a rendered compose.yaml (the file's own layout: two-space
/// service names under `services:`).
fn compose_service(compose: &str, name: &str) -> String {
    // minijinja's YAML quoting writes some names quoted (`"asterisk-1":`).
    let (header, quoted) = (format!("  {name}:"), format!("  \"{name}\":"));
    let mut out = String::new();
    let mut inside = false;
    for line in compose.lines() {
        if line == header || line == quoted {
            inside = true;
        } else if inside && (!line.starts_with(' ') || (line.starts_with("  ") && !line.starts_with("   "))) {
            // The next service, or the comment above it (two spaces in: it belongs to the next
            // one — a pool member's count there must not move the previous service's digest).
            break;
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The template contexts, one per output family; secrets only in the secret files' own.
struct Contexts {
    asterisk: minijinja::Value,
    pjsip_auth: minijinja::Value,
    rtp_turn: minijinja::Value,
    turn: minijinja::Value,
    turn_secret: minijinja::Value,
    metrics_secret: minijinja::Value,
    prometheus: minijinja::Value,
    compose: minijinja::Value,
    helm: minijinja::Value,
    helm_cluster: minijinja::Value,
    keys: minijinja::Value,
    acme: minijinja::Value,
    guard: minijinja::Value,
    cluster: minijinja::Value,
    cluster_secret: minijinja::Value,
    subscribers: minijinja::Value,
    edge_key: minijinja::Value,
    pool_edge_key: minijinja::Value,
}

impl Contexts {
    fn new(plan: &Plan, inputs: &Inputs) -> Result<Self, RenderError> {
        Ok(Contexts {
            asterisk: asterisk::context(plan),
            pjsip_auth: asterisk::auth_context(plan),
            rtp_turn: asterisk::turn_context(plan),
            turn: turn::context(plan),
            turn_secret: turn::secret_context(plan),
            metrics_secret: asterisk::metrics_context(plan),
            prometheus: compose::prometheus_context(plan),
            compose: compose::context(plan),
            helm: helm::context(plan),
            helm_cluster: helm::cluster_context(plan),
            keys: match &inputs.certs {
                Some(c) => context! { certs => context! {
                    chain_pem => &c.chain_pem, key_pem => &c.key_pem, ca_pem => &c.ca_pem,
                } },
                None => context! {},
            },
            acme: sidecar_context(plan)?,
            guard: guard::context(plan),
            cluster: cluster::context(plan),
            cluster_secret: cluster::secret_context(plan),
            subscribers: cluster::subscribers_context(plan),
            edge_key: cluster::edge_key_context(plan),
            pool_edge_key: asterisk::edge_key_context(plan),
        })
    }

    fn for_file(&self, path: &str) -> minijinja::Value {
        match path {
            templates::PJSIP_AUTH_CONF => self.pjsip_auth.clone(),
            templates::RTP_TURN_CONF => self.rtp_turn.clone(),
            turn::SECRET_FILE => self.turn_secret.clone(),
            cluster::EDGE_DATABASE_FILE | cluster::DB_PASSWORD_FILE => self.cluster_secret.clone(),
            cluster::DB_SUBSCRIBERS_FILE => self.subscribers.clone(),
            cluster::EDGE_KEY_FILE => self.edge_key.clone(),
            templates::EXTENSIONS_EDGE_CONF => self.pool_edge_key.clone(),
            _ if cluster::is_cluster_file(path) => self.cluster.clone(),
            _ if path.starts_with("turn/") => self.turn.clone(),
            templates::PROMETHEUS_AUTH_CONF | templates::PROMETHEUS_PASSWORD => self.metrics_secret.clone(),
            templates::PROMETHEUS_YML => self.prometheus.clone(),
            _ if path.starts_with("asterisk/") => self.asterisk.clone(),
            _ if path.starts_with("keys/") => self.keys.clone(),
            _ if path.starts_with("certs/") => self.acme.clone(),
            _ if path.starts_with("guard/") => self.guard.clone(),
            _ if path.starts_with("helm/") => self.helm.clone(),
            _ if path.starts_with(helm::CLUSTER_TEMPLATES) => self.helm_cluster.clone(),
            _ => self.compose.clone(),
        }
    }
}

/// ACME mode: the sidecar's settings with the paths it sees in its container (the account
/// volume, the copied CA bundle and hook). No passwords: the sidecar never sees the secrets file.
fn sidecar_context(plan: &Plan) -> Result<minijinja::Value, RenderError> {
    let Some(acme) = &plan.tls.acme else { return Ok(context! {}) };
    let mut config = acme.clone();
    config.account_dir = PathBuf::from(image::SIDECAR_ACME_DIR);
    if config.ca_bundle.is_some() {
        config.ca_bundle = Some(Path::new(image::SIDECAR_CONFIG_DIR).join(SIDECAR_CA_FILE));
    }
    if config.dns_hook.is_some() {
        config.dns_hook = Some(Path::new(image::SIDECAR_CONFIG_DIR).join(SIDECAR_HOOK_FILE));
    }
    // TOML written by the toml crate: every value quoted and escaped as TOML needs.
    let settings = toml::to_string(&config)?;
    Ok(context! { spec_file => &plan.spec_file, settings => settings })
}
