//! Command-line types (clap derive) and nothing else: parsing lives here, running in
//! [`crate::run`].

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// astrtc: one spec file to a WebRTC-ready Asterisk.
#[derive(Debug, Parser)]
#[command(name = "astrtc", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a commented starter spec (astrtc.toml) and a secrets file with generated passwords.
    #[command(after_help = "Example:\n  astrtc init --dir pbx --domain pbx.example.test")]
    Init {
        /// Directory to write into.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// DNS name browsers connect to (wss://DOMAIN:8089/ws).
        #[arg(long, default_value = "localhost")]
        domain: String,
        /// Overwrite existing files (generates new passwords).
        #[arg(long)]
        force: bool,
    },
    /// Render Asterisk configs, keys and compose.yaml from the spec.
    #[command(after_help = "Examples:\n  astrtc render --spec pbx/astrtc.toml --out pbx/deploy\n  \
                            astrtc render --spec pbx/astrtc.toml --out pbx/deploy --check")]
    Render {
        /// The spec file.
        #[arg(long, default_value = "astrtc.toml")]
        spec: PathBuf,
        /// Output directory (replaced as a whole, atomically).
        #[arg(long, default_value = "deploy")]
        out: PathBuf,
        /// Write nothing; exit 0 when the output is up to date, else print a diff and exit 1.
        #[arg(long)]
        check: bool,
    },
    /// Generate passwords for endpoints of the spec that have none in the secrets file.
    Secrets {
        /// The spec file.
        #[arg(long, default_value = "astrtc.toml")]
        spec: PathBuf,
    },
    /// Build the Asterisk image (Asterisk 22 from source, bundled pjproject, opus) and tag it as
    /// the spec's `image`.
    Build {
        /// The spec file.
        #[arg(long, default_value = "astrtc.toml")]
        spec: PathBuf,
        /// Build from this directory instead of the copy embedded in astrtc (e.g. images/asterisk).
        #[arg(long)]
        context: Option<PathBuf>,
        /// Extra CA certificates (PEM) to trust for package downloads during the build, e.g. the
        /// host's bundle behind a TLS-inspecting proxy. Not copied into the final image.
        #[arg(long, env = "ASTRTC_EXTRA_CA")]
        extra_ca: Option<PathBuf>,
        /// Print the full build log.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Print what a person needs to use a rendered deployment: WSS URL, endpoints, where the
    /// passwords are, the CA to import in browsers.
    Info {
        /// The spec file.
        #[arg(long, default_value = "astrtc.toml")]
        spec: PathBuf,
        /// The rendered output directory.
        #[arg(long, default_value = "deploy")]
        out: PathBuf,
    },
    /// Check a running deployment of the spec: TLS, WebSocket upgrade, SIP REGISTER over WSS for
    /// each WebRTC endpoint, SIP OPTIONS over UDP, and (when local) modules and endpoints.
    #[command(after_help = "Examples:\n  astrtc verify --spec pbx/astrtc.toml --out pbx/deploy\n  \
                            astrtc verify --spec pbx/astrtc.toml --host 203.0.113.10 --json")]
    Verify {
        /// The spec file.
        #[arg(long, default_value = "astrtc.toml")]
        spec: PathBuf,
        /// The rendered output directory (its keys/ca.crt is the CA to verify against).
        #[arg(long, default_value = "deploy")]
        out: PathBuf,
        /// Host to connect to [default: the spec's tls.domain].
        #[arg(long)]
        host: Option<String>,
        /// CA certificate(s) the WSS certificate must chain to [default: OUT/keys/ca.crt, or the
        /// system trust store when there is none, as for a publicly trusted certificate].
        #[arg(long)]
        ca: Option<PathBuf>,
        /// The Asterisk container (name or id) [default: found by the compose project name].
        #[arg(long)]
        container: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}
