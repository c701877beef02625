//! `astrtc build`: builds the Asterisk image, and in ACME mode the sidecar image, through the
//! Docker engine API (bollard).
//!
//! Owns: the build contexts (`images/asterisk`, embedded in the binary by [`crate::assets`] so an
//! installed `astrtc` needs no checkout, or read from disk with `--context`; `images/astrtc` plus
//! this very binary for the sidecar), the build arguments that carry versions and uids
//! ([`super::asterisk_build_args`]), connecting to the engine with a clear error when none
//! answers, progress display, and turning error items of the build stream into failures (a failed
//! build still answers HTTP 200).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bollard::query_parameters::BuildImageOptionsBuilder;
use bollard::Docker;
use futures_util::StreamExt;
use thiserror::Error;

/// What a build reports while it runs, for display.
#[derive(Debug, Clone, Copy)]
pub enum BuildEvent<'a> {
    /// The build of this tag started.
    Started {
        /// The tag being built.
        tag: &'a str,
    },
    /// A Dockerfile step started, e.g. "step 9/25 : RUN ...".
    Step {
        /// The step, shortened.
        step: &'a str,
    },
    /// A line of build output.
    Output {
        /// The line.
        line: &'a str,
    },
    /// The build ended (successfully or not).
    Finished,
}

/// How many lines of build output are kept to show when a step fails.
const LOG_TAIL: usize = 60;

/// Errors of `astrtc build`.
#[derive(Debug, Error, miette::Diagnostic)]
pub enum ImageError {
    /// No engine answered.
    #[error("no Docker engine answered at {endpoint}")]
    #[diagnostic(
        code(astrtc::image::no_engine),
        help(
            "start one: `make deps` installs docker.io and starts dockerd on Debian; elsewhere \
             `sudo systemctl start docker`. Set DOCKER_HOST to use an engine at another address."
        )
    )]
    NoEngine {
        /// Where it was looked for.
        endpoint: String,
        /// The engine client's error.
        #[source]
        source: bollard::errors::Error,
    },
    /// The build context could not be read.
    #[error("failed to read the build context {}", path.display())]
    Context {
        /// The file or directory.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The build failed at a step.
    #[error("the image build failed at {step}: {message}")]
    #[diagnostic(code(astrtc::image::build_failed), help("the step's last output:\n{log_tail}"))]
    BuildFailed {
        /// The step, e.g. "step 9/25 (RUN ...)".
        step: String,
        /// The engine's error message.
        message: String,
        /// The last lines of output.
        log_tail: String,
    },
    /// The engine API failed.
    #[error("the Docker engine API failed")]
    Api(#[from] bollard::errors::Error),
}

/// Where the build context comes from.
#[derive(Debug, Clone)]
pub enum BuildContext {
    /// The copy embedded in this binary.
    Embedded,
    /// A directory on disk (e.g. a checkout's `images/asterisk`).
    Dir(PathBuf),
}

/// Name of the extra CA bundle inside the build context (always present, maybe empty).
pub const EXTRA_CA_FILE: &str = "extra-ca.pem";

/// The host's CA bundle, when it has one: builds pass it with `--extra-ca` so package downloads
/// inside the build trust what the host trusts (TLS-inspecting proxies).
pub const HOST_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The outcome of a build.
#[derive(Debug, Clone)]
pub struct Built {
    /// The tag the image was given.
    pub tag: String,
    /// How long it took.
    pub elapsed: Duration,
}

/// Connects to the engine (DOCKER_HOST or the local socket) and checks that it answers.
pub async fn connect() -> Result<Docker, ImageError> {
    let endpoint = std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
    let no_engine = |source| ImageError::NoEngine { endpoint: endpoint.clone(), source };
    let docker = Docker::connect_with_local_defaults().map_err(no_engine)?;
    let docker = docker.negotiate_version().await.map_err(no_engine)?;
    docker.ping().await.map_err(no_engine)?;
    Ok(docker)
}

/// The embedded directory of `images/` that is the Asterisk image's build context.
pub const ASTERISK_CONTEXT: &str = "asterisk";
/// The embedded directory of `images/` that holds the sidecar's Dockerfile.
pub const SIDECAR_CONTEXT: &str = "astrtc";
/// The embedded directory of `images/` that is the TURN image's build context.
pub const TURN_CONTEXT: &str = "turn";
/// The embedded directory of `images/` that holds the Prometheus image's Dockerfile.
pub const PROMETHEUS_CONTEXT: &str = "prometheus";

/// The embedded directory of `images/` that is the guard image's build context.
pub const GUARD_CONTEXT: &str = "guard";
/// The cluster images' build contexts (`images/edge`, `images/relay`, `images/db`).
pub const CLUSTER_CONTEXTS: [&str; 3] = ["edge", "relay", "db"];

/// One file of a build context: path inside it, mode, contents.
type ContextEntry<'a> = (String, u32, std::borrow::Cow<'a, [u8]>);

/// Tars a build context in memory: `(path, mode, contents)` entries, with fixed mtimes so equal
/// contexts make equal tars (and hit the engine's cache).
fn tar_of<'a>(entries: impl IntoIterator<Item = ContextEntry<'a>>) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, mode, bytes) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(mode);
        header.set_mtime(0);
        header.set_cksum();
        tar.append_data(&mut header, path, bytes.as_ref())?;
    }
    tar.into_inner()
}

/// The files of a build context directory on disk, with their modes.
fn dir_entries(dir: &Path) -> Result<Vec<ContextEntry<'static>>, ImageError> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<ContextEntry<'static>>) -> Result<(), ImageError> {
        let cerr = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ImageError::Context { path, source }
        };
        let mut entries: Vec<_> =
            std::fs::read_dir(dir).map_err(cerr(dir))?.collect::<Result<_, _>>().map_err(cerr(dir))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let meta = std::fs::metadata(&p).map_err(cerr(&p))?;
            if meta.is_dir() {
                walk(root, &p, out)?;
            } else {
                let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777;
                let rel = p.strip_prefix(root).unwrap_or(&p).display().to_string();
                out.push((rel, mode, std::fs::read(&p).map_err(cerr(&p))?.into()));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    Ok(out)
}

/// Tars the Asterisk image's build context in memory, with the extra CA bundle (empty when none).
pub fn context_tar(ctx: &BuildContext, extra_ca: Option<&Path>) -> Result<Vec<u8>, ImageError> {
    let cerr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ImageError::Context { path, source }
    };
    let mut entries = match ctx {
        BuildContext::Embedded => crate::assets::files_under(&crate::assets::IMAGES, ASTERISK_CONTEXT)
            .into_iter()
            .map(|a| (a.path.to_string(), a.mode(), a.contents.into()))
            .collect(),
        BuildContext::Dir(dir) => dir_entries(dir)?,
    };
    let ca = match extra_ca {
        Some(p) => std::fs::read(p).map_err(cerr(p))?,
        None => Vec::new(),
    };
    entries.retain(|(p, _, _)| p != EXTRA_CA_FILE);
    entries.push((EXTRA_CA_FILE.to_string(), 0o644, ca.into()));
    tar_of(entries).map_err(cerr(Path::new("build context")))
}

/// Builds the image and tags it `tag`. Shows a spinner with the current step and elapsed time;
/// Fails on any error item in the build stream.
pub async fn build(
    docker: &Docker,
    ctx: &BuildContext,
    extra_ca: Option<&Path>,
    tag: &str,
    progress: &dyn Fn(BuildEvent<'_>),
) -> Result<Built, ImageError> {
    let body = context_tar(ctx, extra_ca)?;
    build_tar(docker, body, tag, &super::asterisk_build_args(), progress).await
}

/// The sidecar's build context: its Dockerfile and the astrtc executable at `exe`.
pub fn sidecar_context_tar(exe: &Path) -> Result<Vec<u8>, ImageError> {
    let cerr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ImageError::Context { path, source }
    };
    let binary = std::fs::read(exe).map_err(cerr(exe))?;
    let mut entries: Vec<ContextEntry<'_>> = crate::assets::files_under(&crate::assets::IMAGES, SIDECAR_CONTEXT)
        .into_iter()
        .map(|a| (a.path.to_string(), a.mode(), a.contents.into()))
        .collect();
    entries.push(("astrtc".to_string(), 0o755, binary.into()));
    tar_of(entries).map_err(cerr(Path::new("build context")))
}

/// Builds the sidecar image from the astrtc executable at `exe` and tags it `tag`.
pub async fn build_sidecar(
    docker: &Docker,
    exe: &Path,
    tag: &str,
    progress: &dyn Fn(BuildEvent<'_>),
) -> Result<Built, ImageError> {
    build_tar(docker, sidecar_context_tar(exe)?, tag, &super::sidecar_build_args(), progress).await
}

/// Builds the TURN image (Debian's coturn on the base image, `images/turn`) and tags it `tag`.
pub async fn build_turn(docker: &Docker, tag: &str, progress: &dyn Fn(BuildEvent<'_>)) -> Result<Built, ImageError> {
    let entries = crate::assets::files_under(&crate::assets::IMAGES, TURN_CONTEXT)
        .into_iter()
        .map(|a| (a.path.to_string(), a.mode(), a.contents.into()));
    let body = tar_of(entries).map_err(|source| ImageError::Context { path: "build context".into(), source })?;
    build_tar(docker, body, tag, &super::turn_build_args(), progress).await
}

/// The guard's build context (`images/guard`, embedded).
pub fn guard_context_tar() -> Result<Vec<u8>, ImageError> {
    let entries = crate::assets::files_under(&crate::assets::IMAGES, GUARD_CONTEXT)
        .into_iter()
        .map(|a| (a.path.to_string(), a.mode(), a.contents.into()));
    tar_of(entries).map_err(|source| ImageError::Context { path: PathBuf::from("build context"), source })
}

/// Builds the guard image (fail2ban, `images/guard`) and tags it `tag`.
pub async fn build_guard(docker: &Docker, tag: &str, progress: &dyn Fn(BuildEvent<'_>)) -> Result<Built, ImageError> {
    build_tar(docker, guard_context_tar()?, tag, &super::guard_build_args(), progress).await
}

/// Builds the monitoring profile's Prometheus image (Debian's package) and tags it `tag`.
pub async fn build_prometheus(
    docker: &Docker,
    tag: &str,
    progress: &dyn Fn(BuildEvent<'_>),
) -> Result<Built, ImageError> {
    let entries: Vec<ContextEntry<'_>> = crate::assets::files_under(&crate::assets::IMAGES, PROMETHEUS_CONTEXT)
        .into_iter()
        .map(|a| (a.path.to_string(), a.mode(), a.contents.into()))
        .collect();
    let body = tar_of(entries).map_err(|source| ImageError::Context { path: "build context".into(), source })?;
    build_tar(docker, body, tag, &super::prometheus_build_args(), progress).await
}

/// Which cluster image to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterImage {
    /// Kamailio (`images/edge`).
    Edge,
    /// rtpengine (`images/relay`).
    Relay,
    /// PostgreSQL (`images/db`).
    Database,
}

impl ClusterImage {
    /// All three.
    pub const ALL: [ClusterImage; 3] = [ClusterImage::Edge, ClusterImage::Relay, ClusterImage::Database];

    /// The reference astrtc builds and runs it under unless the spec names another
    /// (`cluster.edge_image`, `relay_image`, `db_image`).
    pub fn tag(self) -> &'static str {
        match self {
            ClusterImage::Edge => super::EDGE_IMAGE,
            ClusterImage::Relay => super::RELAY_IMAGE,
            ClusterImage::Database => super::DB_IMAGE,
        }
    }

    /// What it is, for messages.
    pub fn what(self) -> &'static str {
        match self {
            ClusterImage::Edge => "the edge: Kamailio",
            ClusterImage::Relay => "the relay: rtpengine",
            ClusterImage::Database => "the database: PostgreSQL",
        }
    }

    fn context(self) -> &'static str {
        match self {
            ClusterImage::Edge => CLUSTER_CONTEXTS[0],
            ClusterImage::Relay => CLUSTER_CONTEXTS[1],
            ClusterImage::Database => CLUSTER_CONTEXTS[2],
        }
    }
}

/// Builds one of the cluster's images (Debian's Kamailio, rtpengine or PostgreSQL on the base
/// image) and tags it `tag`.
pub async fn build_cluster_image(
    docker: &Docker,
    image: ClusterImage,
    tag: &str,
    progress: &dyn Fn(BuildEvent<'_>),
) -> Result<Built, ImageError> {
    build_tar(docker, cluster_context_tar(image)?, tag, &super::cluster_build_args(), progress).await
}

/// The build context of a cluster image, as [`build_cluster_image`] sends it (its build
/// arguments are [`super::cluster_build_args`]).
pub fn cluster_context_tar(image: ClusterImage) -> Result<Vec<u8>, ImageError> {
    let entries = crate::assets::files_under(&crate::assets::IMAGES, image.context())
        .into_iter()
        .map(|a| (a.path.to_string(), a.mode(), a.contents.into()));
    tar_of(entries).map_err(|source| ImageError::Context { path: "build context".into(), source })
}

async fn build_tar(
    docker: &Docker,
    body: Vec<u8>,
    tag: &str,
    args: &[(&str, String)],
    progress: &dyn Fn(BuildEvent<'_>),
) -> Result<Built, ImageError> {
    let started = Instant::now();
    let buildargs: std::collections::HashMap<String, String> =
        args.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let options = BuildImageOptionsBuilder::default()
        .dockerfile("Dockerfile")
        .t(tag)
        .rm(true)
        .forcerm(true)
        .buildargs(&buildargs)
        .build();
    progress(BuildEvent::Started { tag });

    let mut stream = docker.build_image(options, None, Some(bollard::body_full(body.into())));
    let mut step = String::from("the start");
    let mut tail: VecDeque<String> = VecDeque::new();
    while let Some(item) = stream.next().await {
        let info = match item {
            Ok(info) => info,
            Err(bollard::errors::Error::DockerStreamError { error }) => {
                progress(BuildEvent::Finished);
                return Err(failed(&step, error, &tail));
            }
            Err(e) => {
                progress(BuildEvent::Finished);
                return Err(e.into());
            }
        };
        if let Some(text) = &info.stream {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                if let Some(rest) = line.strip_prefix("Step ") {
                    step = format!("step {}", truncate(rest, 100));
                    progress(BuildEvent::Step { step: &step });
                    // Keep only the current step's output for the failure report.
                    tail.clear();
                }
                progress(BuildEvent::Output { line });
                if tail.len() == LOG_TAIL {
                    tail.pop_front();
                }
                tail.push_back(line.to_string());
            }
        }
        let error = info.error_detail.as_ref().and_then(|d| d.message.clone());
        if let Some(message) = error {
            progress(BuildEvent::Finished);
            return Err(failed(&step, message, &tail));
        }
    }
    progress(BuildEvent::Finished);
    // Confirm the tag exists: the stream can end early without an error item.
    docker.inspect_image(tag).await?;
    Ok(Built { tag: tag.into(), elapsed: started.elapsed() })
}

fn failed(step: &str, message: String, tail: &VecDeque<String>) -> ImageError {
    ImageError::BuildFailed {
        step: step.to_string(),
        message: message.trim().to_string(),
        log_tail: tail.iter().cloned().collect::<Vec<_>>().join("\n"),
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(max).collect::<String>())
    }
}
