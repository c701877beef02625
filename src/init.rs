//! A new deployment's files: a commented starter spec and a secrets file with generated
//! passwords (`astrtc init`), and passwords for endpoints added later (`astrtc secrets`).
//!
//! Owns: the starter spec's text (`templates/init/astrtc.toml.j2`, every option shown with its
//! default, taken from [`crate::spec::defaults`] so the two can never disagree), validating it
//! before anything is written, and refusing to overwrite. The secrets file is written with mode
//! 0600 from its first byte ([`crate::fsx::write_atomic`]) and its passwords are never printed.

use std::fs;
use std::path::{Path, PathBuf};

use minijinja::{context, Environment, UndefinedBehavior};
use thiserror::Error;

use crate::fsx;
use crate::spec::defaults as d;
use crate::spec::secrets::{generate_password, ClusterSecrets, MetricsSecrets, Secrets};
use crate::spec::validate::{dns_name, MAX_BRIDGE_RTP_PORTS};

/// The starter spec's template in the embedded `templates/` tree.
const SPEC_TEMPLATE: &str = "init/astrtc.toml.j2";

/// Spec file name `init` writes.
pub const SPEC_FILE: &str = "astrtc.toml";

/// Errors of `astrtc init`.
#[derive(Debug, Error, miette::Diagnostic)]
pub enum InitError {
    /// A file exists and `--force` was not given.
    #[error("{} already exists", path.display())]
    #[diagnostic(code(astrtc::init::exists), help("pass --force to overwrite it (new passwords are generated)"))]
    Exists {
        /// The file that exists.
        path: PathBuf,
    },
    /// The domain is not a DNS name.
    #[error("--domain: {reason}")]
    #[diagnostic(code(astrtc::init::domain))]
    Domain {
        /// What is wrong with it.
        reason: String,
    },
    /// The flags make an invalid spec.
    #[error("the flags make an invalid spec: {reason}")]
    #[diagnostic(code(astrtc::init::flags))]
    Flags {
        /// The flag combination that makes the spec invalid, and the problem.
        reason: String,
    },
    /// A rotation the secrets file cannot take (no cluster, one already under way, none to finish).
    #[error("{reason}")]
    #[diagnostic(code(astrtc::secrets::rotation), help("{help}"))]
    Rotation {
        /// Why not.
        reason: String,
        /// What to do.
        help: String,
    },
    /// Writing failed.
    #[error("failed to write {}", path.display())]
    Write {
        /// The file that could not be written.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
}

impl InitError {
    /// True for errors in the user's flags (exit code 2).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            InitError::Exists { .. } | InitError::Domain { .. } | InitError::Flags { .. } | InitError::Rotation { .. }
        )
    }
}

/// What `init` wrote.
#[derive(Debug)]
pub struct Written {
    /// The spec.
    pub spec: PathBuf,
    /// The secrets file.
    pub secrets: PathBuf,
    /// Endpoint ids that got passwords.
    pub endpoints: Vec<String>,
}

/// ACME choices for `init --tls acme`.
#[derive(Debug, Clone)]
pub struct InitAcme {
    /// Contact e-mail.
    pub email: String,
    /// Directory URL.
    pub directory: Option<String>,
    /// Extra CA bundle for the ACME server.
    pub ca: Option<PathBuf>,
    /// `http-01` or `dns-01`.
    pub challenge: &'static str,
    /// HTTP-01 port.
    pub http_port: u16,
    /// DNS-01 hook.
    pub dns_hook: Option<PathBuf>,
}

/// A TOML string literal (quoted and escaped).
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The starter spec's text for `domain`, in ACME mode when `acme` is given.
pub fn spec_text_with(domain: &str, acme: Option<&InitAcme>) -> String {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .keep_trailing_newline(true)
            .build()
            .expect("default delimiters are valid"),
    );
    let quoted = |list: &[&str]| format!("[{}]", list.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", "));
    let defaults = context! {
        NAME => d::NAME, IMAGE => d::IMAGE, SECRETS_FILE => d::SECRETS_FILE,
        SIP_PORT => d::SIP_PORT, WSS_PORT => d::WSS_PORT, HTTP_PORT => d::HTTP_PORT,
        RTP_START => d::RTP_START, RTP_END => d::RTP_END,
        BRIDGE_SUBNET => d::BRIDGE_SUBNET, BRIDGE_ADDRESS => d::BRIDGE_ADDRESS.to_string(),
        CA_DIR => d::CA_DIR, CONTEXT => d::CONTEXT, ECHO_EXTENSION => d::ECHO_EXTENSION,
        ACME_DIRECTORY => d::ACME_DIRECTORY, DNS_TIMEOUT => d::DNS_TIMEOUT,
        MAX_CONTACTS => d::MAX_CONTACTS, SIP_TLS_PORT => d::SIP_TLS_PORT,
        RTP_TIMEOUT_WEBRTC => d::RTP_TIMEOUT_WEBRTC, RTP_TIMEOUT_SIP => d::RTP_TIMEOUT_SIP,
        RTP_TIMEOUT_HOLD => d::RTP_TIMEOUT_HOLD, VERBOSE => d::VERBOSE,
        MEMORY_LIMIT_MB => d::MEMORY_LIMIT_MB, MEMORY_REQUEST_MB => d::MEMORY_REQUEST_MB,
        TURN_PORT => d::TURN_PORT, TURN_TLS_PORT => d::TURN_TLS_PORT,
        TURN_RELAY_START => d::TURN_RELAY_START, TURN_RELAY_END => d::TURN_RELAY_END,
        TURN_USER_QUOTA => d::TURN_USER_QUOTA,
        MEMORY_LIMIT_MB => d::MEMORY_LIMIT_MB, MEMORY_REQUEST_MB => d::MEMORY_REQUEST_MB, WSS_SESSIONS => d::WSS_SESSIONS,
        BAN_AFTER => d::BAN_AFTER, FIND_SECONDS => d::FIND_SECONDS, BAN_SECONDS => d::BAN_SECONDS,
        DRAIN_SECONDS => d::DRAIN_SECONDS,
        METRICS_USERNAME => d::METRICS_USERNAME, PROMETHEUS_PORT => d::PROMETHEUS_PORT, EXPORTER_PORT => d::EXPORTER_PORT,
    };
    let template = crate::assets::text(&crate::assets::TEMPLATES, SPEC_TEMPLATE).unwrap_or_default();
    env.render_str(
        template,
        context! {
            d => defaults,
            domain => domain,
            max_bridge => MAX_BRIDGE_RTP_PORTS,
            local_nets => quoted(d::LOCAL_NETS),
            webrtc_codecs => quoted(d::WEBRTC_CODECS),
            sip_codecs => quoted(d::SIP_CODECS),
            acme => acme.map(|a| context! {
                email => toml_str(&a.email),
                directory => a.directory.as_deref().map(toml_str),
                ca => a.ca.as_ref().map(|p| toml_str(&p.display().to_string())),
                challenge => a.challenge,
                http_port => a.http_port,
                dns_hook => a.dns_hook.as_ref().map(|p| toml_str(&p.display().to_string())),
            }),
        },
    )
    .expect("the embedded starter spec renders")
}

/// The endpoint ids of the starter spec.
pub const STARTER_ENDPOINTS: &[&str] = &["199", "3001", "3002"];

/// Writes `DIR/astrtc.toml` and `DIR/astrtc.secrets.toml`. The spec is checked before anything
/// is written, so bad flags leave nothing behind.
pub fn init(dir: &Path, domain: &str, force: bool, acme: Option<&InitAcme>) -> Result<Written, InitError> {
    dns_name(domain).map_err(|reason| InitError::Domain { reason })?;
    let text = spec_text_with(domain, acme);
    let parsed = crate::spec::parse(SPEC_FILE, &text).map_err(|e| InitError::Flags { reason: e.to_string() })?;
    let mut s = Secrets::default();
    for id in STARTER_ENDPOINTS {
        s.endpoints.insert(id.to_string(), generate_password());
    }
    s.metrics = Some(MetricsSecrets { password: generate_password() });
    if let Err(problems) = crate::spec::validate::validate(&parsed.spec, dir, &s) {
        if let Some(p) = problems.spec.iter().chain(&problems.secrets).next() {
            return Err(InitError::Flags { reason: format!("{}: {}", p.path, p.message) });
        }
    }
    let spec = dir.join(SPEC_FILE);
    let secrets = dir.join(d::SECRETS_FILE);
    if !force {
        for p in [&spec, &secrets] {
            if p.exists() {
                return Err(InitError::Exists { path: p.clone() });
            }
        }
    }
    let werr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| InitError::Write { path, source }
    };
    fs::create_dir_all(dir).map_err(werr(dir))?;
    fsx::write_atomic(&secrets, s.to_toml().as_bytes(), 0o600).map_err(werr(&secrets))?;
    fsx::write_atomic(&spec, text.as_bytes(), 0o644).map_err(werr(&spec))?;
    Ok(Written { spec, secrets, endpoints: STARTER_ENDPOINTS.iter().map(|s| s.to_string()).collect() })
}

/// What a secret `fill_secrets` generated is for.
pub const TURN_SECRET_NAME: &str = "[turn] secret";
/// What the pool's key for the edge is called when `fill_secrets` generates it.
pub const EDGE_KEY_NAME: &str = "the pool's key for the edge";

/// A step of a secret's rotation (`astrtc secrets --rotate`, `--finish-rotation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// The current key becomes the previous one (still taken) and a new one is generated.
    Start,
    /// The previous key is removed (no longer taken).
    Finish,
}

/// Rotates the pool's key for the edge in the secrets file at `path` (written atomically, 0600):
/// [`Rotation::Start`] keeps the current key as `edge_key_previous` and generates a new
/// `edge_key`; [`Rotation::Finish`] removes `edge_key_previous`. Refused — nothing written — for
/// a secrets file with no cluster key, a start while a rotation is under way (its previous key
/// would be lost while pool members may still need it) and a finish with none under way.
pub fn rotate_edge_key(path: &Path, mut s: Secrets, step: Rotation) -> Result<(), InitError> {
    let refuse = |reason: &str, help: &str| InitError::Rotation { reason: reason.to_string(), help: help.to_string() };
    let Some(c) = s.cluster.as_mut().filter(|c| c.edge_key.is_some()) else {
        return Err(refuse(
            "the secrets file has no [cluster] edge_key to rotate",
            "a cluster spec (topology = \"cluster\") gets one from `astrtc secrets`",
        ));
    };
    match (step, c.edge_key_previous.is_some()) {
        (Rotation::Start, true) => {
            return Err(refuse(
                "a rotation of the edge's key is under way (edge_key_previous is set)",
                "finish it first: `astrtc apply`, then `astrtc secrets --finish-rotation edge-key` and `astrtc apply`",
            ))
        }
        (Rotation::Finish, false) => {
            return Err(refuse(
                "no rotation of the edge's key is under way (no edge_key_previous)",
                "start one with `astrtc secrets --rotate edge-key`",
            ))
        }
        (Rotation::Start, false) => {
            c.edge_key_previous = c.edge_key.replace(generate_password());
        }
        (Rotation::Finish, true) => c.edge_key_previous = None,
    }
    fsx::write_atomic(path, s.to_toml().as_bytes(), 0o600)
        .map_err(|source| InitError::Write { path: path.to_path_buf(), source })
}

/// Adds generated passwords for endpoints that have none, the metrics password when it is
/// missing and `metrics` is on, the TURN shared secret when `turn_secret` is asked for and
/// missing, and the cluster's database password and the pool's key for the edge when `cluster`
/// is on and they are missing; returns what was added (endpoint ids, `metrics`,
/// [`TURN_SECRET_NAME`], the database, [`EDGE_KEY_NAME`]).
pub fn fill_secrets(
    path: &Path,
    existing: Option<Secrets>,
    ids: &[String],
    metrics: bool,
    turn_secret: bool,
    cluster: bool,
) -> Result<Vec<String>, InitError> {
    let mut s = existing.unwrap_or_default();
    let mut added = Vec::new();
    for id in ids {
        if !s.endpoints.contains_key(id) {
            s.endpoints.insert(id.clone(), generate_password());
            added.push(id.clone());
        }
    }
    if metrics && s.metrics.is_none() {
        s.metrics = Some(MetricsSecrets { password: generate_password() });
        added.push("metrics".to_string());
    }
    if turn_secret && s.turn.as_ref().is_none_or(|t| t.secret.is_none()) {
        // Two generated passwords: 64 characters, 380 bits.
        s.turn.get_or_insert_with(Default::default).secret = Some(generate_password() + &generate_password());
        added.push(TURN_SECRET_NAME.to_string());
    }
    if cluster && s.cluster.is_none() {
        s.cluster =
            Some(ClusterSecrets { database_password: generate_password(), edge_key: None, edge_key_previous: None });
        added.push("the cluster's database".to_string());
    }
    // The pool's key for the edge, also for a cluster whose secrets file predates it.
    if let Some(c) = s.cluster.as_mut().filter(|c| cluster && c.edge_key.is_none()) {
        c.edge_key = Some(generate_password());
        added.push(EDGE_KEY_NAME.to_string());
    }
    if !added.is_empty() {
        fsx::write_atomic(path, s.to_toml().as_bytes(), 0o600)
            .map_err(|source| InitError::Write { path: path.to_path_buf(), source })?;
    }
    Ok(added)
}
