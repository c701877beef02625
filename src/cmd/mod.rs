//! The commands: one file per subcommand, each a function from parsed arguments to an outcome,
//! and [`CmdError`], the one error type the binary turns into a miette report and an exit code
//! (0 success, 1 failure at run time, 2 bad input).
//!
//! Owns: gluing the library's steps together for a user (paths defaulted from the spec, one
//! tokio runtime for the whole run). Wording and progress display are [`crate::ui`]'s; nothing
//! in the library imports from here.

mod apply;
mod bench;
mod build;
mod certs;
mod docs;
mod info;
mod init;
mod render;
mod secrets;
mod testenv;
mod turn;
mod verify;

use std::path::{Path, PathBuf};

use astrtc::cli::Command;
use astrtc::plan::{HostFacts, Plan};
use thiserror::Error;

/// Any failure of a command.
#[derive(Debug, Error, miette::Diagnostic)]
pub enum CmdError {
    /// Bad spec or secrets.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Spec(#[from] astrtc::spec::SpecError),
    /// `init` failed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Init(#[from] astrtc::init::InitError),
    /// Gathering inputs, rendering or writing the output failed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Deploy(#[from] astrtc::deploy::DeployError),
    /// Building an image failed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Image(#[from] astrtc::image::ImageError),
    /// ACME issuance, or storing its result, failed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Acme(#[from] astrtc::certs::lifecycle::LifecycleError),
    /// The sidecar's ACME settings file is unreadable or malformed.
    #[error("{}: {message}", path.display())]
    #[diagnostic(
        code(astrtc::certs::acme_config),
        help("it is written by `astrtc render` in ACME mode; render again")
    )]
    AcmeConfig {
        /// The settings file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// `certs check`: no usable certificate.
    #[error("{}: no usable certificate for {names}: {state}", keys.display())]
    #[diagnostic(code(astrtc::certs::unusable))]
    CertUnusable {
        /// The keys directory.
        keys: PathBuf,
        /// The names the certificate must cover.
        names: String,
        /// What is wrong: missing, other names, key mismatch, expired.
        state: String,
    },
    /// `certs` needs an ACME-mode spec.
    #[error("{spec} is not in ACME mode (tls.mode = \"acme\")")]
    #[diagnostic(code(astrtc::certs::not_acme), help("in self-signed mode `astrtc render` makes the certificate"))]
    NotAcme {
        /// The spec path.
        spec: String,
    },
    /// `verify` found failures.
    #[error("{failed} check{s} failed", s = if *failed == 1 { "" } else { "s" })]
    #[diagnostic(code(astrtc::verify::failed), help("each failure above says what to do"))]
    VerifyFailed {
        /// Number of failed checks.
        failed: usize,
    },
    /// A command-line value does not fit the spec (e.g. `--endpoint` names no endpoint).
    #[error("{0}")]
    #[diagnostic(code(astrtc::bad_argument))]
    BadArgument(String),
    /// `bench calls` set up no call at any level.
    #[error("no call was set up at any level")]
    #[diagnostic(
        code(astrtc::bench::no_calls),
        help("`astrtc verify --spec ... --call` places one call of each kind and names what fails")
    )]
    BenchNoCalls,
    /// A bench run could not go on.
    #[error(transparent)]
    Bench(#[from] astrtc::bench::BenchError),
    /// A file could not be written.
    #[error("failed to write {}", path.display())]
    WriteFile {
        /// The file.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be read.
    #[error("failed to read {}", path.display())]
    ReadFile {
        /// The file that could not be read.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// `render --check` found differences.
    #[error("{out} is out of date with {spec}: {count} difference{s}", s = if *count == 1 { "" } else { "s" })]
    #[diagnostic(code(astrtc::render::out_of_date), help("run `astrtc render` to update it"))]
    OutOfDate {
        /// Spec path.
        spec: String,
        /// Output path.
        out: String,
        /// Number of differences.
        count: usize,
    },
    /// `apply` failed to reach the running deployment or to change it.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Apply(#[from] astrtc::apply::ApplyError),
    /// `apply` needs a restart, and nobody confirmed it.
    #[error("not restarted: {reason}")]
    #[diagnostic(
        code(astrtc::apply::not_confirmed),
        help("the new configs are rendered; run `astrtc apply --yes` to restart, or restart later yourself")
    )]
    RestartNotConfirmed {
        /// Why not.
        reason: String,
    },
    /// A test environment failed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Testenv(#[from] astrtc::testenv::TestenvError),
    /// Writing to standard output failed.
    #[error("failed to write to standard output")]
    Output {
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The async runtime could not start (out of threads or file descriptors).
    #[error("failed to start the async runtime")]
    Runtime(#[source] std::io::Error),
}

impl CmdError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            CmdError::Spec(_) => 2,
            CmdError::Init(e) if e.is_bad_input() => 2,
            CmdError::Testenv(e) if e.is_bad_input() => 2,
            CmdError::NotAcme { .. }
            | CmdError::AcmeConfig { .. }
            | CmdError::BadArgument(_)
            | CmdError::RestartNotConfirmed { .. }
            | CmdError::Apply(astrtc::apply::ApplyError::UnstagedKeyChange { .. }) => 2,
            _ => 1,
        }
    }
}

/// Runs one command on one runtime, printing progress to stderr and results to stdout.
pub fn run(command: Command) -> Result<(), CmdError> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(CmdError::Runtime)?;
    runtime.block_on(async {
        match command {
            Command::Init { .. } => init::run(command),
            Command::Render { spec, out, check } => render::run(&spec, out, check),
            Command::Apply { spec, out, yes } => apply::run(&spec, out, yes).await,
            Command::Build { spec, context, extra_ca, verbose, monitoring } => {
                build::run(&spec, context, extra_ca, verbose, monitoring).await
            }
            Command::Info { spec, out } => info::run(&spec, out),
            Command::Verify { deployment, json, call, endpoints, target, hold, relay, relay_transport } => {
                let call = call.then_some(verify::CallArgs { endpoints, target, hold, relay, relay_transport });
                let astrtc::cli::RunningDeployment { spec, out, host, ca, container } = deployment;
                verify::run(&spec, out, host, ca, container, json, call).await
            }
            Command::Certs { command } => certs::run(command).await,
            Command::Secrets { spec, rotate, finish_rotation } => match (rotate, finish_rotation) {
                (Some(astrtc::cli::RotatableSecret::EdgeKey), _) => {
                    secrets::rotate(&spec, astrtc::init::Rotation::Start)
                }
                (_, Some(astrtc::cli::RotatableSecret::EdgeKey)) => {
                    secrets::rotate(&spec, astrtc::init::Rotation::Finish)
                }
                (None, None) => secrets::run(&spec),
            },
            Command::Testenv { command } => testenv::run(command).await,
            Command::TurnCredentials { spec, user, ttl, json } => turn::credentials(&spec, &user, ttl, json),
            Command::Bench { command: astrtc::cli::BenchCommand::Calls(args) } => bench::calls(args).await,
            Command::Completions { shell } => docs::completions(shell),
            Command::Man => docs::man(),
        }
    })
}

/// Loads and validates a spec and its secrets into a plan, warning when the secrets file is
/// readable by others.
pub fn load_plan(spec_path: &Path) -> Result<Plan, CmdError> {
    let loaded = astrtc::spec::load(spec_path)?;
    let secrets = loaded.load_secrets()?;
    if let Some(mode) = mode_too_open(&secrets.source.path) {
        eprintln!(
            "warning: {} is readable by others (mode {mode:o}); run `chmod 600 {}`",
            secrets.source.path.display(),
            secrets.source.path.display()
        );
    }
    Ok(astrtc::plan::build(&loaded, &secrets, HostFacts::detect())?)
}

/// The file's mode when group or others may read or write it.
fn mode_too_open(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then_some(mode)
}

/// `--out`, or `deploy` beside the spec.
fn out_dir(spec: &Path, out: Option<PathBuf>) -> PathBuf {
    out.unwrap_or_else(|| astrtc::deploy::default_out(spec))
}
