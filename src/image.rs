//! `astrtc build`: builds the Asterisk image, and in ACME mode the sidecar image, through the
//! Docker engine API (bollard).
//!
//! Owns: the build contexts (the `images/asterisk` directory, embedded in the binary so an
//! installed `astrtc` needs no checkout, or read from disk with `--context`; `images/astrtc`
//! plus this very binary for the sidecar), connecting to the
//! engine with a clear error when none answers, progress display, and turning error items of the
//! build stream into failures (a failed build still answers HTTP 200).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bollard::query_parameters::BuildImageOptionsBuilder;
use bollard::Docker;
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use thiserror::Error;

/// The embedded build context: path inside the context, mode, contents.
pub const EMBEDDED_CONTEXT: &[(&str, u32, &[u8])] = &[
    ("Dockerfile", 0o644, include_bytes!("../images/asterisk/Dockerfile")),
    ("build/fetch-source", 0o755, include_bytes!("../images/asterisk/build/fetch-source")),
    ("build/configure", 0o755, include_bytes!("../images/asterisk/build/configure")),
    ("build/install-runtime", 0o755, include_bytes!("../images/asterisk/build/install-runtime")),
    ("runtime/astrtc-entrypoint", 0o755, include_bytes!("../images/asterisk/runtime/astrtc-entrypoint")),
    ("runtime/astrtc-healthcheck", 0o755, include_bytes!("../images/asterisk/runtime/astrtc-healthcheck")),
    ("runtime/astrtc-cert-reloader", 0o755, include_bytes!("../images/asterisk/runtime/astrtc-cert-reloader")),
    ("phone/package.json", 0o644, include_bytes!("../images/asterisk/phone/package.json")),
    ("phone/index.html", 0o644, include_bytes!("../images/asterisk/phone/index.html")),
    ("phone/phone.js", 0o644, include_bytes!("../images/asterisk/phone/phone.js")),
];

/// The sidecar's Dockerfile; the context is it plus the astrtc binary.
pub const SIDECAR_DOCKERFILE: &[u8] = include_bytes!("../images/astrtc/Dockerfile");

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
        /// Why.
        #[source]
        source: bollard::errors::Error,
    },
    /// The build context could not be read.
    #[error("failed to read the build context {}", path.display())]
    Context {
        /// The file or directory.
        path: PathBuf,
        /// Why.
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
    /// The tag.
    pub tag: String,
    /// The image id.
    pub id: Option<String>,
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

/// Tars the build context in memory.
pub fn context_tar(ctx: &BuildContext, extra_ca: Option<&Path>) -> Result<Vec<u8>, ImageError> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |path: &str, mode: u32, bytes: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(mode);
        header.set_mtime(0);
        header.set_cksum();
        tar.append_data(&mut header, path, bytes)
    };
    let cerr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ImageError::Context { path, source }
    };
    match ctx {
        BuildContext::Embedded => {
            for (path, mode, bytes) in EMBEDDED_CONTEXT {
                add(path, *mode, bytes).map_err(cerr(Path::new(path)))?;
            }
        }
        BuildContext::Dir(dir) => {
            for (path, _, _) in EMBEDDED_CONTEXT {
                let full = dir.join(path);
                let bytes = std::fs::read(&full).map_err(cerr(&full))?;
                let mode = std::os::unix::fs::PermissionsExt::mode(
                    &std::fs::metadata(&full).map_err(cerr(&full))?.permissions(),
                ) & 0o777;
                add(path, mode, &bytes).map_err(cerr(&full))?;
            }
        }
    }
    let ca = match extra_ca {
        Some(p) => std::fs::read(p).map_err(cerr(p))?,
        None => Vec::new(),
    };
    add(EXTRA_CA_FILE, 0o644, &ca).map_err(cerr(Path::new(EXTRA_CA_FILE)))?;
    tar.into_inner().map_err(cerr(Path::new("build context")))
}

/// Builds the image and tags it `tag`. Shows a spinner with the current step and elapsed time;
/// with `verbose`, the full log. Fails on any error item in the build stream.
pub async fn build(
    docker: &Docker,
    ctx: &BuildContext,
    extra_ca: Option<&Path>,
    tag: &str,
    verbose: bool,
) -> Result<Built, ImageError> {
    let body = context_tar(ctx, extra_ca)?;
    build_tar(docker, body, tag, verbose).await
}

/// The sidecar's build context: its Dockerfile and the astrtc executable at `exe`.
pub fn sidecar_context_tar(exe: &Path) -> Result<Vec<u8>, ImageError> {
    let cerr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ImageError::Context { path, source }
    };
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(SIDECAR_DOCKERFILE.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_cksum();
    tar.append_data(&mut header, "Dockerfile", SIDECAR_DOCKERFILE).map_err(cerr(Path::new("Dockerfile")))?;
    let mut file = std::fs::File::open(exe).map_err(cerr(exe))?;
    let mut header = tar::Header::new_gnu();
    header.set_size(file.metadata().map_err(cerr(exe))?.len());
    header.set_mode(0o755);
    header.set_mtime(0);
    header.set_cksum();
    tar.append_data(&mut header, "astrtc", &mut file).map_err(cerr(exe))?;
    tar.into_inner().map_err(cerr(Path::new("build context")))
}

/// Builds the sidecar image from the astrtc executable at `exe` and tags it `tag`.
pub async fn build_sidecar(docker: &Docker, exe: &Path, tag: &str, verbose: bool) -> Result<Built, ImageError> {
    build_tar(docker, sidecar_context_tar(exe)?, tag, verbose).await
}

async fn build_tar(docker: &Docker, body: Vec<u8>, tag: &str, verbose: bool) -> Result<Built, ImageError> {
    let started = Instant::now();
    let options = BuildImageOptionsBuilder::default().dockerfile("Dockerfile").t(tag).rm(true).forcerm(true).build();
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}").expect("valid template"));
    bar.enable_steady_tick(Duration::from_millis(200));
    bar.set_message(format!("building {tag}"));

    let mut stream = docker.build_image(options, None, Some(bollard::body_full(body.into())));
    let mut step = String::from("the start");
    let mut tail: VecDeque<String> = VecDeque::new();
    let mut id = None;
    while let Some(item) = stream.next().await {
        let info = match item {
            Ok(info) => info,
            Err(bollard::errors::Error::DockerStreamError { error }) => {
                bar.finish_and_clear();
                return Err(failed(&step, error, &tail));
            }
            Err(e) => {
                bar.finish_and_clear();
                return Err(e.into());
            }
        };
        if let Some(text) = &info.stream {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                if let Some(rest) = line.strip_prefix("Step ") {
                    step = format!("step {}", truncate(rest, 100));
                    bar.set_message(step.clone());
                    // Keep only the current step's output for the failure report.
                    tail.clear();
                }
                if verbose {
                    bar.suspend(|| eprintln!("{line}"));
                }
                if tail.len() == LOG_TAIL {
                    tail.pop_front();
                }
                tail.push_back(line.to_string());
            }
        }
        if let Some(bollard::models::BuildInfoAux::Default(image_id)) = &info.aux {
            id = image_id.id.clone().or(id);
        }
        let error = info.error_detail.as_ref().and_then(|d| d.message.clone());
        if let Some(message) = error {
            bar.finish_and_clear();
            return Err(failed(&step, message, &tail));
        }
    }
    bar.finish_and_clear();
    // Confirm the tag exists: the stream can end early without an error item.
    docker.inspect_image(tag).await?;
    Ok(Built { tag: tag.into(), id, elapsed: started.elapsed() })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file of images/asterisk that the Dockerfile may use is in the embedded context
    /// (templates are rendered by astrtc, not used by the build).
    #[test]
    fn embedded_context_lists_every_image_file() {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(root, &p, out);
                } else {
                    out.push(p.strip_prefix(root).unwrap().display().to_string());
                }
            }
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/asterisk");
        let mut on_disk = Vec::new();
        walk(&root, &root, &mut on_disk);
        on_disk.retain(|p| !p.starts_with("templates/"));
        on_disk.sort();
        let mut embedded: Vec<String> = EMBEDDED_CONTEXT.iter().map(|(p, _, _)| p.to_string()).collect();
        embedded.sort();
        assert_eq!(embedded, on_disk);
        for (path, mode, _) in EMBEDDED_CONTEXT {
            let disk =
                std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(root.join(path)).unwrap().permissions());
            assert_eq!(disk & 0o111 != 0, mode & 0o111 != 0, "{path}: executable bit differs");
        }
    }
}
