//! Ephemeral test environments (`astrtc testenv`): a complete, isolated Asterisk deployment on
//! free ports, ready when this returns, for test suites in any language — and as a Rust API.
//!
//! Owns: choosing ports, rendering an instance (through the same spec → plan → render path as
//! every deployment), running it with the Docker engine API, waiting until it is ready, and
//! removing everything it made. Each instance gets its own bridge network and container, both
//! labelled [`LABEL`]; it listens on host ports chosen free at start (SIP, WSS and a narrow RTP
//! range, published one to one), so any number run side by side. Certificates come from one
//! shared test CA kept in the state directory (a browser or test runner trusts it once, for
//! every instance), each instance with its own leaf for `localhost`.
//!
//! State lives in [`state_dir`]: `ca/` (the shared CA, key 0600) and one directory per instance
//! (its spec, secrets, rendered `deploy/` and `instance.json`). Ports are chosen under an
//! exclusive lock and reserved until the container has bound them (see [`ports`]), so parallel
//! `testenv up` runs never pick the same ports, yet do not wait for each other.

mod ports;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bollard::models::{ContainerCreateBody, HostConfig, NetworkCreateRequest, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, ListNetworksOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::image;
use crate::plan::{HostFacts, Plan};
use crate::spec::secrets::{generate_password, Secrets};
use crate::spec::valid::Secret;
use crate::spec::EndpointKind;

pub use ports::PortRange;

/// The label every container and network of an instance carries (value: the instance name).
pub const LABEL: &str = "io.astrtc.testenv";
/// The label naming the deployment (the spec's `name`) a container runs, so `astrtc verify`
/// finds it without `--container`.
pub const DEPLOYMENT_LABEL: &str = "io.astrtc.deployment";
/// The label holding an instance's expiry (unix seconds), when it has a TTL.
pub const EXPIRES_LABEL: &str = "io.astrtc.testenv.expires";
/// The TLS name of every instance (its certificate is for this name; it resolves to loopback).
pub const DOMAIN: &str = "localhost";
/// RTP ports an instance gets by default (10 simultaneous calls).
pub const DEFAULT_RTP_PORTS: u16 = 20;
/// The most RTP ports an instance may publish (Docker starts a proxy per published port).
pub const MAX_RTP_PORTS: u16 = 200;
/// How long an instance may take to become ready before `up` gives up.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// What to start.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// A spec to start (its endpoints, codecs, dialplan); ports, TLS and name are the
    /// instance's own. Without one, a built-in spec with `endpoints` WebRTC and SIP endpoints.
    pub spec: Option<PathBuf>,
    /// The instance name (letters, digits, `-`); a random one when none is given.
    pub name: Option<String>,
    /// Endpoints of each kind in the built-in spec (default 1).
    pub endpoints: Option<u8>,
    /// RTP ports to publish (default [`DEFAULT_RTP_PORTS`], at most [`MAX_RTP_PORTS`]).
    pub rtp_ports: Option<u16>,
    /// Remove the instance by itself after this long.
    pub ttl: Option<Duration>,
    /// The image to run [default: the spec's, else astrtc's default image].
    pub image: Option<String>,
    /// Where free ports are looked for [default: 20000-32767, below Linux's ephemeral range].
    pub port_range: Option<PortRange>,
}

/// One endpoint of an instance, with what a client needs to use it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InstanceEndpoint {
    /// SIP user name and extension.
    pub id: String,
    /// `webrtc` (WSS) or `sip` (UDP).
    pub kind: EndpointKind,
    /// Its digest password (generated for this instance, which is throwaway and local). In the
    /// JSON as the plain string clients log in with; never in `Debug`.
    #[serde(with = "crate::spec::valid::plain_secret")]
    pub password: Secret,
}

/// A running instance: everything a test needs, as `testenv up --json` prints it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Instance {
    /// Instance name.
    pub name: String,
    /// The container's name.
    pub container: String,
    /// The instance's bridge network.
    pub network: String,
    /// `wss://localhost:PORT/ws`.
    pub wss_url: String,
    /// The demo softphone served by the instance.
    pub phone_url: String,
    /// SIP over UDP: `127.0.0.1:PORT`.
    pub sip: SocketAddr,
    /// WSS: `127.0.0.1:PORT`.
    pub wss: SocketAddr,
    /// The published RTP range.
    pub rtp: PortRange,
    /// The shared test CA clients must trust.
    pub ca_file: PathBuf,
    /// The same CA, PEM.
    pub ca_pem: String,
    /// Every endpoint with its password.
    pub endpoints: Vec<InstanceEndpoint>,
    /// The extension that answers and echoes.
    pub echo_extension: String,
    /// The instance's spec file (for `astrtc verify --spec`).
    pub spec: PathBuf,
    /// When it removes itself (unix seconds), with a TTL.
    pub expires_at: Option<u64>,
    /// Milliseconds from `up` to ready.
    pub ready_ms: u64,
    /// The command that removes it.
    pub down: String,
}

/// Errors of `testenv`.
#[derive(Debug, Error, miette::Diagnostic)]
pub enum TestenvError {
    /// No engine.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Engine(#[from] image::ImageError),
    /// The engine refused a request.
    #[error("the Docker engine failed to {action}")]
    Docker {
        /// What was asked.
        action: String,
        /// The engine's error.
        #[source]
        source: bollard::errors::Error,
    },
    /// The image is not there.
    #[error("the image {image} is not on this host")]
    #[diagnostic(code(astrtc::testenv::no_image), help("build it first: `astrtc build` (or `make up`)"))]
    NoImage {
        /// The image reference.
        image: String,
    },
    /// No free ports.
    #[error("no {count} free consecutive ports between {} and {}", range.start, range.end)]
    #[diagnostic(
        code(astrtc::testenv::no_ports),
        help("stop instances you no longer need (`astrtc testenv down --all`), or widen the range with ASTRTC_TESTENV_PORTS=LOW-HIGH")
    )]
    NoPorts {
        /// Where ports were looked for.
        range: PortRange,
        /// How many were needed at once.
        count: u16,
    },
    /// Bad options.
    #[error("{0}")]
    #[diagnostic(code(astrtc::testenv::options))]
    Options(String),
    /// An instance of that name exists.
    #[error("a test environment named {0:?} exists")]
    #[diagnostic(code(astrtc::testenv::exists), help("pick another --name, or `astrtc testenv down` it"))]
    Exists(String),
    /// No instance of that name.
    #[error("no test environment named {0:?}")]
    #[diagnostic(code(astrtc::testenv::unknown), help("`astrtc testenv list` shows the running ones"))]
    Unknown(String),
    /// The spec is invalid.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Spec(#[from] crate::spec::SpecError),
    /// Rendering failed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Deploy(#[from] crate::deploy::DeployError),
    /// A state file could not be read or written.
    #[error("failed to use {}", path.display())]
    State {
        /// The file or directory.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The instance did not become ready; it was removed.
    #[error("test environment {name} did not become ready: {reason}")]
    #[diagnostic(code(astrtc::testenv::not_ready), help("the container's last log lines:\n{log_tail}"))]
    NotReady {
        /// Instance name.
        name: String,
        /// What was still missing.
        reason: String,
        /// The end of the container's log.
        log_tail: String,
    },
}

impl TestenvError {
    /// True for errors in the user's input (exit code 2).
    pub fn is_bad_input(&self) -> bool {
        matches!(self, TestenvError::Options(_) | TestenvError::Exists(_) | TestenvError::Spec(_))
    }
}

fn docker_err(action: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> TestenvError {
    let action = action.into();
    move |source| TestenvError::Docker { action, source }
}

fn state_err(path: &Path) -> impl FnOnce(std::io::Error) -> TestenvError + '_ {
    move |source| TestenvError::State { path: path.to_path_buf(), source }
}

/// Where instances and the shared CA are kept: `$ASTRTC_TESTENV_DIR`, else
/// `$XDG_STATE_HOME/astrtc/testenv`, else `~/.local/state/astrtc/testenv`.
pub fn state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("ASTRTC_TESTENV_DIR") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_STATE_HOME").map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp")).join(".local/state")
    });
    base.join("astrtc/testenv")
}

/// Names of a container and network.
fn resource_name(instance: &str) -> String {
    format!("astrtc-testenv-{instance}")
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 40
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn random_name() -> String {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).unwrap_or_default();
    format!("t{}", b.iter().map(|x| format!("{x:02x}")).collect::<String>())
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// The built-in spec: `n` WebRTC endpoints (1001…) and `n` SIP endpoints (2001…), echo on 600.
pub fn builtin_spec(n: u8) -> String {
    let mut s = String::from("# astrtc testenv: the built-in spec.\n");
    for (kind, base) in [("webrtc", 1000), ("sip", 2000)] {
        for i in 1..=u16::from(n) {
            s.push_str(&format!("\n[[endpoints]]\nid = \"{}\"\nkind = \"{kind}\"\n", base + i));
        }
    }
    s
}

/// What an instance's spec is made from.
struct SpecInputs<'a> {
    /// The base spec's text (the user's, or the built-in one).
    base: &'a str,
    /// Where it came from, for messages.
    base_name: &'a str,
    /// The instance name.
    name: &'a str,
    /// `--image`, overriding the spec's.
    image: Option<&'a str>,
    /// The ports chosen for it.
    ports: ports::Chosen,
    /// The shared test CA's directory.
    ca_dir: &'a Path,
}

/// The instance's spec: the user's (or the built-in one) with the instance's own name, image,
/// ports, TLS and secrets file. Returns the text and the endpoint ids.
fn instance_spec(i: &SpecInputs<'_>) -> Result<(String, Vec<String>), TestenvError> {
    let SpecInputs { base, base_name, name, image: image_ref, ports: chosen, ca_dir } = *i;
    let (sip, wss, http, rtp) = (chosen.sip, chosen.wss, chosen.http, chosen.rtp);
    let loaded = crate::spec::parse(base_name, base)?;
    let mut doc: toml::Table = toml::from_str(base).map_err(|e| TestenvError::Options(format!("{base_name}: {e}")))?;
    let image = image_ref.map(str::to_string).or_else(|| loaded.spec.image.clone());
    doc.insert("name".into(), resource_name(name).into());
    match image {
        Some(i) => doc.insert("image".into(), i.into()),
        None => doc.remove("image"),
    };
    doc.insert("secrets".into(), "astrtc.secrets.toml".into());
    let mut network = toml::Table::new();
    network.insert("sip_port".into(), i64::from(sip).into());
    network.insert("wss_port".into(), i64::from(wss).into());
    network.insert("http_port".into(), i64::from(http).into());
    doc.insert("network".into(), network.into());
    let mut rtp_t = match doc.remove("rtp") {
        Some(toml::Value::Table(t)) => t,
        _ => toml::Table::new(),
    };
    rtp_t.insert("start".into(), i64::from(rtp.start).into());
    rtp_t.insert("end".into(), i64::from(rtp.end).into());
    doc.insert("rtp".into(), rtp_t.into());
    let mut tls = toml::Table::new();
    tls.insert("domain".into(), DOMAIN.into());
    tls.insert("ca_dir".into(), ca_dir.display().to_string().into());
    doc.insert("tls".into(), tls.into());
    let ids = loaded.spec.endpoints.iter().map(|e| e.id.clone()).collect();
    let text = toml::to_string(&doc).map_err(|e| TestenvError::Options(format!("{base_name}: {e}")))?;
    Ok((format!("# astrtc testenv instance {name}, from {base_name}. Generated: do not edit.\n{text}"), ids))
}

/// Starts an instance and returns once it is ready: its TLS listener completes a handshake
/// verified against the test CA, Asterisk has loaded every endpoint and has fully booted.
pub async fn up(opts: &Options) -> Result<Instance, TestenvError> {
    let started = Instant::now();
    let docker = image::connect().await?;
    reap_expired(&docker).await;
    let name = opts.name.clone().unwrap_or_else(random_name);
    if !valid_name(&name) {
        return Err(TestenvError::Options(format!(
            "--name {name:?}: use 1-40 lowercase letters, digits and '-', starting with a letter or digit"
        )));
    }
    let rtp_ports = opts.rtp_ports.unwrap_or(DEFAULT_RTP_PORTS);
    if !(2..=MAX_RTP_PORTS).contains(&rtp_ports) {
        return Err(TestenvError::Options(format!(
            "--rtp-ports {rtp_ports}: between 2 and {MAX_RTP_PORTS} (Docker starts a proxy per published port)"
        )));
    }
    let n = opts.endpoints.unwrap_or(1);
    if opts.spec.is_none() && !(1..=50).contains(&n) {
        return Err(TestenvError::Options(format!("--endpoints {n}: between 1 and 50")));
    }
    let root = state_dir();
    let dir = root.join(&name);
    if dir.exists() || find_container(&docker, &name).await?.is_some() {
        return Err(TestenvError::Exists(name));
    }
    let (base, base_name) = match &opts.spec {
        Some(p) => (std::fs::read_to_string(p).map_err(state_err(p))?, p.display().to_string()),
        None => (builtin_spec(n), "the built-in spec".to_string()),
    };
    std::fs::create_dir_all(&root).map_err(state_err(&root))?;

    // The shared CA is made once, and ports are chosen and reserved, under one short lock.
    let ca_dir = root.join("ca");
    let range = opts.port_range.unwrap_or_else(ports::search_range);
    let reservation = ports::reserve(&root, range, rtp_ports, || {
        crate::certs::local_ca::LocalCa::load_or_create(&ca_dir, "testenv")
            .map(drop)
            .map_err(|e| TestenvError::Deploy(e.into()))
    })?;
    let chosen = reservation.chosen;
    let (spec_text, ids) = instance_spec(&SpecInputs {
        base: &base,
        base_name: &base_name,
        name: &name,
        image: opts.image.as_deref(),
        ports: chosen,
        ca_dir: &ca_dir,
    })?;
    std::fs::create_dir_all(&dir).map_err(state_err(&dir))?;
    let prepared = Prepared { dir: &dir, name: &name, spec_text: &spec_text, ids: &ids, chosen, ttl: opts.ttl };
    let result = start(&docker, &prepared, started, reservation).await;
    if result.is_err() {
        let _ = remove(&docker, &name).await;
    }
    result
}

/// An instance whose ports and spec are chosen, about to start.
struct Prepared<'a> {
    dir: &'a Path,
    name: &'a str,
    spec_text: &'a str,
    ids: &'a [String],
    chosen: ports::Chosen,
    ttl: Option<Duration>,
}

async fn start(
    docker: &Docker,
    p: &Prepared<'_>,
    started: Instant,
    reservation: ports::Reservation,
) -> Result<Instance, TestenvError> {
    let Prepared { dir, name, spec_text, ids, chosen, ttl } = *p;
    let spec_path = dir.join("astrtc.toml");
    let mut secrets = Secrets::default();
    for id in ids {
        secrets.endpoints.insert(id.clone(), generate_password());
    }
    secrets.metrics = Some(crate::spec::secrets::MetricsSecrets { password: generate_password() });
    crate::fsx::write_atomic(&dir.join("astrtc.secrets.toml"), secrets.to_toml().as_bytes(), 0o600)
        .map_err(state_err(dir))?;
    crate::fsx::write_atomic(&spec_path, spec_text.as_bytes(), 0o644).map_err(state_err(dir))?;
    let plan = crate::plan::load(&spec_path, HostFacts::detect())?;
    let deploy = dir.join("deploy");
    crate::deploy::write(&plan, &deploy)?;
    if docker.inspect_image(&plan.image).await.is_err() {
        return Err(TestenvError::NoImage { image: plan.image.clone() });
    }

    let resource = resource_name(name);
    let expires_at = ttl.map(|t| now_unix() + t.as_secs());
    let mut labels = HashMap::from([(LABEL.to_string(), name.to_string())]);
    if let Some(at) = expires_at {
        labels.insert(EXPIRES_LABEL.to_string(), at.to_string());
    }
    docker
        .create_network(NetworkCreateRequest {
            name: resource.clone(),
            driver: Some("bridge".into()),
            labels: Some(labels.clone()),
            ..Default::default()
        })
        .await
        .map_err(docker_err("create the instance's network"))?;
    let mut container_labels = labels.clone();
    container_labels.insert(DEPLOYMENT_LABEL.to_string(), plan.name.clone());
    docker
        .create_container(
            Some(CreateContainerOptionsBuilder::default().name(&resource).build()),
            container_body(&plan, &deploy, &resource, container_labels, chosen),
        )
        .await
        .map_err(docker_err("create the instance's container"))?;
    docker.start_container(&resource, None).await.map_err(docker_err("start the instance's container"))?;
    // The engine has bound the published ports: they need no reservation any more.
    drop(reservation);

    let ca_file = dir.parent().unwrap_or(dir).join("ca").join(crate::certs::local_ca::CA_CERT_FILE);
    let ca_pem = std::fs::read_to_string(&ca_file).map_err(state_err(&ca_file))?;
    wait_ready(docker, &plan, &resource, name, &ca_pem).await?;
    if let Some(at) = expires_at {
        spawn_reaper(name, at);
    }
    let instance = Instance {
        name: name.to_string(),
        container: resource.clone(),
        network: resource,
        wss_url: format!("wss://{DOMAIN}:{}/ws", chosen.wss),
        phone_url: format!("https://{DOMAIN}:{}/static/phone/index.html", chosen.wss),
        sip: SocketAddr::from(([127, 0, 0, 1], chosen.sip)),
        wss: SocketAddr::from(([127, 0, 0, 1], chosen.wss)),
        rtp: chosen.rtp,
        ca_file,
        ca_pem,
        endpoints: plan
            .endpoints
            .iter()
            .map(|e| InstanceEndpoint { id: e.id.clone(), kind: e.kind, password: e.password.clone() })
            .collect(),
        echo_extension: plan.dialplan.echo_extension.clone(),
        spec: spec_path,
        expires_at,
        ready_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        down: format!("astrtc testenv down {name}"),
    };
    let json = serde_json::to_vec_pretty(&InstanceFile::from(&instance)).unwrap_or_default();
    crate::fsx::write_atomic(&dir.join("instance.json"), &json, 0o600).map_err(state_err(dir))?;
    Ok(instance)
}

/// What `instance.json` keeps (no passwords: those stay in the secrets file).
#[derive(Serialize, Deserialize)]
struct InstanceFile {
    name: String,
    container: String,
    wss_url: String,
    sip: SocketAddr,
    rtp: PortRange,
    expires_at: Option<u64>,
}

impl From<&Instance> for InstanceFile {
    fn from(i: &Instance) -> Self {
        InstanceFile {
            name: i.name.clone(),
            container: i.container.clone(),
            wss_url: i.wss_url.clone(),
            sip: i.sip,
            rtp: i.rtp,
            expires_at: i.expires_at,
        }
    }
}

/// The container: the plan's image on the instance's network, configs and keys mounted read-only,
/// SIP, WSS and the RTP range published one to one, read-only root, as compose runs it.
fn container_body(
    plan: &Plan,
    deploy: &Path,
    network: &str,
    labels: HashMap<String, String>,
    chosen: ports::Chosen,
) -> ContainerCreateBody {
    let mut published: Vec<String> = vec![format!("{}/udp", chosen.sip), format!("{}/tcp", chosen.wss)];
    published.extend((chosen.rtp.start..=chosen.rtp.end).map(|p| format!("{p}/udp")));
    let bindings = published
        .iter()
        .map(|key| {
            let port = key.split('/').next().unwrap_or_default().to_string();
            let binding = PortBinding { host_ip: Some("0.0.0.0".into()), host_port: Some(port) };
            (key.clone(), Some(vec![binding]))
        })
        .collect();
    let uid = image::ASTERISK_UID;
    let tmpfs = HashMap::from([
        ("/run/asterisk".to_string(), format!("uid={uid},gid={uid},mode=0755")),
        ("/var/spool/asterisk".to_string(), format!("uid={uid},gid={uid},mode=0750")),
        ("/var/log/asterisk".to_string(), format!("uid={uid},gid={uid},mode=0750")),
        ("/var/lib/asterisk".to_string(), format!("uid={uid},gid={uid},mode=0750")),
    ]);
    ContainerCreateBody {
        image: Some(plan.image.clone()),
        labels: Some(labels),
        exposed_ports: Some(published),
        host_config: Some(HostConfig {
            network_mode: Some(network.to_string()),
            port_bindings: Some(bindings),
            binds: Some(vec![
                format!("{}:{}:ro", deploy.join("asterisk").display(), image::CONFIG_DIR),
                format!("{}:{}:ro", deploy.join("keys").display(), image::KEYS_DIR),
            ]),
            readonly_rootfs: Some(true),
            tmpfs: Some(tmpfs),
            group_add: plan.secret_access.group_add.map(|g| vec![g.to_string()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Polls until the TLS listener completes a verified handshake, Asterisk has loaded every
/// endpoint and has fully booted; fails at once when the container stops.
async fn wait_ready(
    docker: &Docker,
    plan: &Plan,
    container: &str,
    name: &str,
    ca_pem: &str,
) -> Result<(), TestenvError> {
    let wss = SocketAddr::from(([127, 0, 0, 1], plan.network.wss_port));
    let mut want: Vec<String> = plan.endpoints.iter().map(|e| e.id.clone()).collect();
    want.sort();
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut reason;
    loop {
        let running = docker
            .inspect_container(container, None)
            .await
            .ok()
            .and_then(|c| c.state)
            .and_then(|s| s.running)
            .unwrap_or(false);
        if !running {
            reason = "the container stopped".into();
            break;
        }
        let ca = ca_pem.to_string();
        let tls = tokio::task::spawn_blocking(move || crate::verify::check_tls(wss, DOMAIN, &ca)).await;
        match tls {
            Ok(Ok(_)) => match crate::verify::asterisk_rx(docker, container, "pjsip show endpoints").await {
                Ok(out) => {
                    let mut have = crate::verify::parse_endpoints(&out);
                    have.sort();
                    if have != want {
                        reason = format!("Asterisk has loaded [{}] of [{}]", have.join(", "), want.join(", "));
                    } else if fully_booted(docker, container, deadline).await {
                        return Ok(());
                    } else {
                        reason = "Asterisk has not fully booted".into();
                    }
                }
                Err(e) => reason = format!("asterisk -rx failed: {e}"),
            },
            Ok(Err(e)) => reason = e.to_string(),
            Err(e) => reason = e.to_string(),
        }
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(TestenvError::NotReady { name: name.to_string(), reason, log_tail: log_tail(docker, container).await })
}

/// Whether Asterisk says it has fully booted. Until then its SIP stack drops every request it
/// receives (res_pjsip's distributor: "Let the peer retransmit messages until we are ready"), and
/// over WSS nothing is retransmitted: a REGISTER sent in that window is never answered (a CI run
/// of the pytest example saw exactly that). `core waitfullybooted` blocks until then, so it is
/// waited on until the readiness deadline (a readiness condition of its own).
async fn fully_booted(docker: &Docker, container: &str, deadline: Instant) -> bool {
    let wait = crate::verify::asterisk_rx(docker, container, "core waitfullybooted");
    let left = deadline.saturating_duration_since(Instant::now());
    matches!(tokio::time::timeout(left, wait).await, Ok(Ok(out)) if out.contains("fully booted"))
}

async fn log_tail(docker: &Docker, container: &str) -> String {
    let mut out = String::new();
    let mut logs =
        docker.logs(container, Some(LogsOptionsBuilder::default().stdout(true).stderr(true).tail("30").build()));
    while let Some(Ok(chunk)) = logs.next().await {
        out.push_str(&chunk.to_string());
    }
    out
}

async fn find_container(docker: &Docker, name: &str) -> Result<Option<String>, TestenvError> {
    let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL}={name}")])]);
    let list = docker
        .list_containers(Some(ListContainersOptionsBuilder::default().all(true).filters(&filters).build()))
        .await
        .map_err(docker_err("list containers"))?;
    Ok(list.first().and_then(|c| c.id.clone()))
}

/// Removes an instance's container, network and state; true when there was anything to remove.
async fn remove(docker: &Docker, name: &str) -> Result<bool, TestenvError> {
    let mut found = false;
    let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL}={name}")])]);
    let containers = docker
        .list_containers(Some(ListContainersOptionsBuilder::default().all(true).filters(&filters).build()))
        .await
        .map_err(docker_err("list containers"))?;
    for c in containers {
        if let Some(id) = c.id {
            found = true;
            docker
                .remove_container(&id, Some(RemoveContainerOptionsBuilder::default().force(true).v(true).build()))
                .await
                .map_err(docker_err(format!("remove container {id}")))?;
        }
    }
    let networks = docker
        .list_networks(Some(ListNetworksOptionsBuilder::default().filters(&filters).build()))
        .await
        .map_err(docker_err("list networks"))?;
    for n in networks {
        if let Some(id) = n.id {
            found = true;
            docker.remove_network(&id).await.map_err(docker_err(format!("remove network {id}")))?;
        }
    }
    let dir = state_dir().join(name);
    if dir.exists() {
        found = true;
        std::fs::remove_dir_all(&dir).map_err(state_err(&dir))?;
    }
    Ok(found)
}

/// Removes one instance: its container, network and state. Unknown names are an error.
pub async fn down(name: &str) -> Result<(), TestenvError> {
    let docker = image::connect().await?;
    if !valid_name(name) || !remove(&docker, name).await? {
        return Err(TestenvError::Unknown(name.to_string()));
    }
    Ok(())
}

/// Removes every instance; returns their names.
pub async fn down_all() -> Result<Vec<String>, TestenvError> {
    let docker = image::connect().await?;
    let names = names(&docker).await?;
    for n in &names {
        remove(&docker, n).await?;
    }
    Ok(names)
}

/// The names of every instance (containers, networks or state directories), sorted.
async fn names(docker: &Docker) -> Result<Vec<String>, TestenvError> {
    let filters = HashMap::from([("label".to_string(), vec![LABEL.to_string()])]);
    let mut names: Vec<String> = Vec::new();
    let containers = docker
        .list_containers(Some(ListContainersOptionsBuilder::default().all(true).filters(&filters).build()))
        .await
        .map_err(docker_err("list containers"))?;
    names.extend(containers.into_iter().filter_map(|c| c.labels?.get(LABEL).cloned()));
    let networks = docker
        .list_networks(Some(ListNetworksOptionsBuilder::default().filters(&filters).build()))
        .await
        .map_err(docker_err("list networks"))?;
    names.extend(networks.into_iter().filter_map(|n| n.labels?.get(LABEL).cloned()));
    if let Ok(entries) = std::fs::read_dir(state_dir()) {
        names.extend(
            entries
                .flatten()
                .filter(|e| e.path().join("instance.json").exists() || e.path().join("astrtc.toml").exists())
                .map(|e| e.file_name().to_string_lossy().into_owned()),
        );
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// One line per running instance: name, WSS URL, SIP address, expiry.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    /// Instance name.
    pub name: String,
    /// Its WSS URL, when its state is readable.
    pub wss_url: Option<String>,
    /// Its SIP address.
    pub sip: Option<SocketAddr>,
    /// When it removes itself.
    pub expires_at: Option<u64>,
}

/// The instances on this host.
pub async fn list() -> Result<Vec<Listed>, TestenvError> {
    let docker = image::connect().await?;
    Ok(names(&docker)
        .await?
        .into_iter()
        .map(|name| {
            let file = std::fs::read(state_dir().join(&name).join("instance.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<InstanceFile>(&b).ok());
            Listed {
                wss_url: file.as_ref().map(|f| f.wss_url.clone()),
                sip: file.as_ref().map(|f| f.sip),
                expires_at: file.and_then(|f| f.expires_at),
                name,
            }
        })
        .collect())
}

/// Removes instances whose TTL has passed (every `up` does this first, in case a reaper was
/// killed, e.g. by a reboot).
async fn reap_expired(docker: &Docker) {
    let filters = HashMap::from([("label".to_string(), vec![EXPIRES_LABEL.to_string()])]);
    let Ok(containers) =
        docker.list_containers(Some(ListContainersOptionsBuilder::default().all(true).filters(&filters).build())).await
    else {
        return;
    };
    for c in containers {
        let labels = c.labels.unwrap_or_default();
        let expired = labels.get(EXPIRES_LABEL).and_then(|t| t.parse::<u64>().ok()).is_some_and(|t| t <= now_unix());
        if let (true, Some(name)) = (expired, labels.get(LABEL)) {
            let _ = remove(docker, name).await;
        }
    }
}

/// Waits until `at` (unix seconds), then removes the instance if it is still the one that
/// carries that expiry (a newer instance of the same name is left alone). `testenv reap` runs
/// this in a process of its own, started by `up --ttl`.
pub async fn reap(name: &str, at: u64) -> Result<(), TestenvError> {
    let wait = at.saturating_sub(now_unix());
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let docker = image::connect().await?;
    let filters =
        HashMap::from([("label".to_string(), vec![format!("{LABEL}={name}"), format!("{EXPIRES_LABEL}={at}")])]);
    let ours = docker
        .list_containers(Some(ListContainersOptionsBuilder::default().all(true).filters(&filters).build()))
        .await
        .map_err(docker_err("list containers"))?;
    if !ours.is_empty() {
        remove(&docker, name).await?;
    }
    Ok(())
}

/// Starts `astrtc testenv reap NAME --at AT` detached from this process (its own session,
/// no terminal, no inherited output), so it outlives the `up` that started it.
fn spawn_reaper(name: &str, at: u64) {
    use std::os::unix::process::CommandExt;
    let Ok(exe) = std::env::current_exe() else { return };
    if exe.file_name().is_none_or(|n| n != "astrtc") {
        return; // a library user's test binary: `up` reaps expired instances instead
    }
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["testenv", "reap", name, "--at", &at.to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let _ = cmd.spawn();
}

/// Parses a duration: `90`, `90s`, `10m`, `2h`, `1d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration (e.g. 90s, 10m, 1h)"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("{s:?} is not a duration (e.g. 90s, 10m, 1h)")),
    };
    if secs == 0 {
        return Err("a TTL must be at least 1 s".into());
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint_with_a_known_password() -> InstanceEndpoint {
        InstanceEndpoint {
            id: "3001".into(),
            kind: EndpointKind::Webrtc,
            password: Secret::new("pw-7f3a9c-not-in-debug"),
        }
    }

    #[test]
    fn an_instance_endpoints_debug_hides_its_password() {
        let e = endpoint_with_a_known_password();
        assert!(!format!("{e:?}").contains("pw-7f3a9c"), "InstanceEndpoint's Debug shows its password: {e:?}");
    }

    #[test]
    fn an_instance_endpoints_json_still_carries_its_password() {
        // `testenv up --json` is read by test suites in other languages (examples/pytest).
        let json = r#"{"id":"3001","kind":"webrtc","password":"pw-7f3a9c-not-in-debug"}"#;
        assert_eq!(serde_json::to_string(&endpoint_with_a_known_password()).unwrap(), json);
        assert_eq!(serde_json::from_str::<InstanceEndpoint>(json).unwrap(), endpoint_with_a_known_password());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        for bad in ["", "0", "1w", "x", "-5s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_builtin_spec_is_valid_for_any_endpoint_count() {
        for n in [1, 3, 50] {
            let text = builtin_spec(n);
            let loaded = crate::spec::parse("builtin", &text).unwrap();
            assert_eq!(loaded.spec.endpoints.len(), usize::from(n) * 2);
        }
    }

    #[test]
    fn instance_specs_take_their_own_ports_and_tls_whatever_the_base_says() {
        let base =
            "name = \"x\"\n[network]\nmode = \"bridge\"\nsip_port = 5060\n[rtp]\nstun = \"stun.example.test:3478\"\n\
                    [tls]\ndomain = \"pbx.example.test\"\n[[endpoints]]\nid = \"7\"\nkind = \"sip\"\n";
        let rtp = PortRange { start: 21000, end: 21019 };
        let ports = ports::Chosen { sip: 21100, wss: 21101, http: 21102, rtp };
        let (text, ids) = instance_spec(&SpecInputs {
            base,
            base_name: "base",
            name: "a1",
            image: None,
            ports,
            ca_dir: Path::new("/state/ca"),
        })
        .unwrap();
        assert_eq!(ids, ["7"]);
        let spec = crate::spec::parse("i", &text).unwrap().spec;
        assert_eq!(spec.name.as_deref(), Some("astrtc-testenv-a1"));
        assert_eq!((spec.network.sip_port, spec.network.wss_port), (Some(21100), Some(21101)));
        assert!(spec.network.mode.is_none(), "the instance runs host-mode configs on its own bridge network");
        assert_eq!((spec.rtp.start, spec.rtp.end), (Some(21000), Some(21019)));
        assert_eq!(spec.rtp.stun.as_deref(), Some("stun.example.test:3478"));
        assert_eq!(spec.tls.domain.as_deref(), Some("localhost"));
    }
}
