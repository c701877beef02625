//! Command-line types (clap derive) and nothing else: parsing lives here, running in the
//! binary's `cmd` module (one file per subcommand).

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
        /// Where the WSS certificate comes from.
        #[arg(long, value_enum, default_value = "self-signed")]
        tls: InitTls,
        /// ACME: contact e-mail (required with --tls acme).
        #[arg(long)]
        acme_email: Option<String>,
        /// ACME: directory URL [default: Let's Encrypt production].
        #[arg(long)]
        acme_directory: Option<String>,
        /// ACME: extra CA certificates (PEM) to trust for a private ACME server.
        #[arg(long)]
        acme_ca: Option<PathBuf>,
        /// ACME: how to prove control of the names.
        #[arg(long, value_enum, default_value = "http-01")]
        challenge: InitChallenge,
        /// ACME HTTP-01: the responder's port.
        #[arg(long, default_value_t = 80)]
        http_port: u16,
        /// ACME DNS-01: executable run as `HOOK add|remove NAME VALUE`.
        #[arg(long)]
        dns_hook: Option<PathBuf>,
    },
    /// Obtain or renew the WSS certificate (ACME mode).
    Certs {
        /// What to do.
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Render Asterisk configs, keys and compose.yaml from the spec.
    #[command(after_help = "Examples:\n  astrtc render --spec pbx/astrtc.toml            # writes pbx/deploy\n  \
                            astrtc render --spec pbx/astrtc.toml --check")]
    Render {
        /// The spec file.
        #[arg(long, default_value = "astrtc.toml")]
        spec: PathBuf,
        /// Output directory (replaced as a whole, atomically) [default: `deploy` beside the spec].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Write nothing; exit 0 when the output is up to date, else print a diff and exit 1.
        #[arg(long)]
        check: bool,
    },
    /// Render, then bring the running compose deployment to the new configs with the least
    /// disruptive action: a reload in place (endpoints, passwords, codecs, display names,
    /// dialplan, certificates: calls go on) or, for what only a restart applies (ports, the RTP
    /// range, modules, network mode, the image), a graceful restart: new calls get 503, calls in
    /// progress go on for up to lifecycle.drain_seconds, then Asterisk restarts. A cluster: the
    /// users are written into its database (the edge is not restarted), the pool reloads in place,
    /// and a service whose start-time config changed (edge, relay, database, a pool member) is
    /// restarted once confirmed.
    #[command(after_help = "Examples:\n  astrtc apply --spec pbx/astrtc.toml\n  \
                            astrtc apply --spec pbx/astrtc.toml --yes    # restart without asking")]
    Apply {
        /// The spec file.
        #[arg(long, default_value = "astrtc.toml")]
        spec: PathBuf,
        /// The rendered output directory [default: `deploy` beside the spec].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Proceed with a restart without asking (needed when there is no terminal to ask on).
        #[arg(long)]
        yes: bool,
    },
    /// Generate passwords for endpoints of the spec that have none in the secrets file; or rotate
    /// a cluster's key for the edge in two steps, each followed by `astrtc apply`: `--rotate
    /// edge-key` (a new key; the pool takes the old one too, so no call is refused while the edge
    /// restarts with the new), then `--finish-rotation edge-key` (the old one no longer taken).
    /// Nothing secret is printed.
    #[command(after_help = "Examples:\n  astrtc secrets --spec pbx/astrtc.toml\n  \
                            astrtc secrets --spec pbx/astrtc.toml --rotate edge-key && astrtc apply --spec pbx/astrtc.toml\n  \
                            astrtc secrets --spec pbx/astrtc.toml --finish-rotation edge-key && astrtc apply --spec pbx/astrtc.toml")]
    Secrets {
        /// The spec file.
        #[arg(long, default_value = "astrtc.toml")]
        spec: PathBuf,
        /// Start a rotation: a new key, the current one kept as the previous (still taken).
        #[arg(long, value_name = "SECRET", conflicts_with = "finish_rotation")]
        rotate: Option<RotatableSecret>,
        /// Finish a rotation: the previous key removed (no longer taken).
        #[arg(long, value_name = "SECRET")]
        finish_rotation: Option<RotatableSecret>,
    },
    /// Build the Asterisk image (Asterisk 22 from source, bundled pjproject, opus) and tag it as
    /// the spec's `image`; in ACME mode also the sidecar image (astrtc/astrtc:VERSION) from this
    /// astrtc binary.
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
        /// Also build the Prometheus image of the compose `monitoring` profile (Debian's package).
        #[arg(long)]
        monitoring: bool,
    },
    /// Print what a person needs to use a rendered deployment: WSS URL, endpoints, where the
    /// passwords are, the CA to import in browsers.
    Info {
        /// The spec file.
        #[arg(long, default_value = "astrtc.toml")]
        spec: PathBuf,
        /// The rendered output directory [default: `deploy` beside the spec].
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check a running deployment of the spec: TLS, WebSocket upgrade, SIP REGISTER over WSS for
    /// each WebRTC endpoint, SIP OPTIONS over UDP, and (when local) modules and endpoints. With
    /// --call, then a real call to the echo extension for each kind of endpoint (WebRTC: WSS,
    /// ICE, DTLS-SRTP, opus; SIP: UDP, RTP, G.711), its figures, and the cause of a failure.
    #[command(after_help = "Examples:\n  astrtc verify --spec pbx/astrtc.toml\n  \
                            astrtc verify --spec pbx/astrtc.toml --host 203.0.113.10 --json\n  \
                            astrtc verify --spec pbx/astrtc.toml --call\n  \
                            astrtc verify --spec pbx/astrtc.toml --call --endpoint 199 --hold 10")]
    Verify {
        /// The deployment.
        #[command(flatten)]
        deployment: RunningDeployment,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// After the checks, place a real call to the echo extension as each endpoint of --endpoint
        /// (default: the spec's first WebRTC and first SIP endpoint) and measure the echoed audio.
        #[arg(long)]
        call: bool,
        /// Call as this endpoint (repeatable) [default: the first of each kind].
        #[arg(long = "endpoint", value_name = "ID", requires = "call")]
        endpoints: Vec<String>,
        /// Extension to call; it must echo [default: the spec's dialplan.echo_extension].
        #[arg(long, value_name = "EXT", requires = "call")]
        target: Option<String>,
        /// Seconds to hold each call (ICE and DTLS must come up within them).
        #[arg(long, value_name = "S", default_value_t = 5.0, requires = "call",
              value_parser = parse_hold)]
        hold: f64,
        /// Force the WebRTC call's media through the spec's TURN server: `[turn]` with credentials
        /// astrtc mints, or else `rtp.turn` with its user and password.
        #[arg(long, requires = "call")]
        relay: bool,
        /// How to reach the TURN server with --relay: udp, tcp, or tls (`[turn]`'s tls_port; the
        /// way through a network that blocks all UDP).
        #[arg(long, value_enum, default_value = "udp", requires = "relay")]
        relay_transport: RelayTransport,
    },
    /// Print short-lived credentials for the spec's TURN server as a browser's `iceServers`
    /// entry (TURN REST: user name EXPIRY:USER, password base64(HMAC-SHA1(secret, user name))).
    #[command(after_help = "Examples:\n  astrtc turn-credentials --spec pbx/astrtc.toml --user alice\n  \
                            astrtc turn-credentials --spec pbx/astrtc.toml --user alice --ttl 10m --json")]
    TurnCredentials {
        /// The spec file.
        #[arg(long, default_value = "astrtc.toml")]
        spec: PathBuf,
        /// Who the credentials are for (1-64 letters, digits or `._-@`); it appears in the TURN
        /// server's log and counts against its per-user quota.
        #[arg(long)]
        user: String,
        /// How long they are valid (e.g. 90s, 10m, 1h; at most 7d).
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: std::time::Duration,
        /// Print only the `iceServers` entry, as one line of JSON.
        #[arg(long)]
        json: bool,
    },
    /// Load tests against a running deployment.
    Bench {
        /// What to measure.
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Ephemeral test environments: complete deployments on free ports, side by side, ready in
    /// seconds, for test suites in any language.
    Testenv {
        /// What to do.
        #[command(subcommand)]
        command: TestenvCommand,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    #[command(after_help = "Example:\n  astrtc completions bash > /etc/bash_completion.d/astrtc")]
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) to stdout.
    #[command(after_help = "Example:\n  astrtc man > /usr/local/share/man/man1/astrtc.1")]
    Man,
}

/// A secret `astrtc secrets` rotates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RotatableSecret {
    /// A cluster's key for the edge (`[cluster] edge_key`).
    EdgeKey,
}

/// `verify --relay-transport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RelayTransport {
    /// TURN over UDP.
    Udp,
    /// TURN over TCP, on the UDP port's number.
    Tcp,
    /// TURN over TLS (`turns:`), on `[turn]` tls_port.
    Tls,
}

/// `astrtc bench ...`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Many simultaneous calls from this one process, level after level: setup success and time,
    /// loss, jitter, and the CPU each call costs Asterisk (its container's cgroup) and this
    /// generator; the capacity is the largest level with at least 99.5 % of calls set up, less
    /// than 1 % loss and p99 jitter below 30 ms.
    #[command(
        after_help = "Examples:\n  astrtc bench calls --spec pbx/astrtc.toml --kind webrtc-echo --levels 50,100,200 --hold 20\n  \
                            astrtc bench calls --spec pbx/astrtc.toml --kind webrtc-to-sip --levels 10,20,40 --hold 10 \\\n    \
                            --json target/bench.json --plot target/bench.svg"
    )]
    Calls(BenchCallsArgs),
}

/// `bench calls`' arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchCallsArgs {
    /// The deployment.
    #[command(flatten)]
    pub deployment: RunningDeployment,
    /// The kind of call.
    #[arg(long, value_enum)]
    pub kind: BenchKind,
    /// Concurrent calls per level, comma-separated, run in this order.
    #[arg(long, value_delimiter = ',', required = true, value_parser = clap::value_parser!(u32).range(1..=20000))]
    pub levels: Vec<u32>,
    /// Seconds of the measurement window, with every call of a level up.
    #[arg(long, value_name = "S", default_value_t = 10.0, value_parser = parse_hold)]
    pub hold: f64,
    /// New calls per second while a level ramps up.
    #[arg(long, default_value_t = 20.0, value_parser = parse_rate)]
    pub rate: f64,
    /// Endpoint the calls are placed as [default: the first WebRTC endpoint; sip-echo: the
    /// first SIP endpoint].
    #[arg(long, value_name = "ID")]
    pub caller: Option<String>,
    /// webrtc-to-sip: the SIP endpoint the bench registers and answers as [default: the first
    /// SIP endpoint].
    #[arg(long, value_name = "ID")]
    pub callee: Option<String>,
    /// Write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write an SVG plot of CPU and loss against concurrency to this file.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// WebRTC kinds: how the calls' media reaches the network — one UDP port served by one task
    /// for every call (str0m's sessions told apart by Asterisk's address), or a socket and a task
    /// per call (as `verify --call`).
    #[arg(long, value_enum, default_value_t = BenchWebrtcMedia::SharedPort)]
    pub webrtc_media: BenchWebrtcMedia,
    /// WebRTC kinds with `--webrtc-media shared-port`: how many such ports, each served by a task
    /// of its own, the calls taking them in turn [default: this host's CPU count].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub webrtc_ports: Option<u32>,
}

/// `bench calls --webrtc-media`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchWebrtcMedia {
    /// Shared UDP ports (`--webrtc-ports`), one task each, for every call's media.
    SharedPort,
    /// A socket and a task per call.
    PerCall,
}

/// A running deployment of a spec, and how to reach it from here (`verify`, `bench`).
#[derive(Debug, Clone, clap::Args)]
pub struct RunningDeployment {
    /// The spec file.
    #[arg(long, default_value = "astrtc.toml")]
    pub spec: PathBuf,
    /// The rendered output directory (its keys/ca.crt is the CA to verify against) [default:
    /// `deploy` beside the spec].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Host to connect to [default: the spec's tls.domain].
    #[arg(long)]
    pub host: Option<String>,
    /// CA certificate(s) the WSS certificate must chain to [default: self-signed specs: the
    /// local CA (OUT/keys/ca.crt, else tls.ca_dir/ca.crt); ACME specs: the system trust store].
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// The Asterisk container (name or id) [default: found by the compose project name].
    #[arg(long)]
    pub container: Option<String>,
}

/// `bench calls --kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchKind {
    /// WebRTC (WSS, ICE, DTLS-SRTP, opus) to the echo extension: no transcoding.
    WebrtcEcho,
    /// Plain SIP over UDP with G.711 µ-law to the echo extension.
    SipEcho,
    /// WebRTC opus to a SIP endpoint the bench registers and answers with G.711: Asterisk
    /// transcodes both ways.
    WebrtcToSip,
}

/// `init --tls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InitTls {
    /// A local CA made by astrtc.
    SelfSigned,
    /// A certificate from an ACME CA.
    Acme,
}

/// `init --challenge`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InitChallenge {
    /// HTTP-01.
    #[value(name = "http-01")]
    Http01,
    /// DNS-01.
    #[value(name = "dns-01")]
    Dns01,
}

/// Where `astrtc certs` reads its settings and keeps the certificate.
#[derive(Debug, Clone, clap::Args)]
pub struct CertsInput {
    /// The spec file.
    #[arg(long, default_value = "astrtc.toml")]
    pub spec: PathBuf,
    /// Read the ACME settings from a rendered sidecar config (DIR/certs/acme.toml, written by
    /// `astrtc render` in ACME mode) instead of the spec. It holds no passwords.
    #[arg(long, conflicts_with = "spec", env = "ASTRTC_ACME_CONFIG")]
    pub acme_config: Option<PathBuf>,
    /// The keys directory (asterisk.crt, asterisk.key, asterisk.pem) [default: `deploy/keys`
    /// beside the spec, or `keys` beside the rendered `certs/` directory of --acme-config].
    #[arg(long, env = "ASTRTC_KEYS")]
    pub keys: Option<PathBuf>,
}

/// `astrtc certs ...`.
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Obtain a certificate now, unless a valid one for the same names exists and is not due.
    Issue {
        /// Settings and keys directory.
        #[command(flatten)]
        input: CertsInput,
        /// Issue even when the current certificate is not due.
        #[arg(long)]
        force: bool,
    },
    /// Renew the certificate if it is due (by default when a third of its lifetime is left) or
    /// missing; otherwise do nothing. Safe to run from cron.
    Renew {
        /// Settings and keys directory.
        #[command(flatten)]
        input: CertsInput,
    },
    /// Keep the certificate valid forever (the sidecar): issue if missing, sleep until due,
    /// renew. After a failure it retries with exponential backoff, leaving the current
    /// certificate in place. Asterisk's reloader notices new files by itself.
    #[command(
        after_help = "Example:\n  astrtc certs watch --acme-config deploy/certs/acme.toml --keys /var/lib/astrtc/keys"
    )]
    Watch {
        /// Settings and keys directory.
        #[command(flatten)]
        input: CertsInput,
        /// Seconds to wait after the first failure; doubled after each further one.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
        retry_initial: u64,
        /// Longest wait between retries, in seconds.
        #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
        retry_max: u64,
    },
    /// Exit 0 when the keys directory holds a usable certificate for the names (present, key
    /// matching, not expired), else 1. The sidecar's health check.
    Check {
        /// Settings and keys directory.
        #[command(flatten)]
        input: CertsInput,
    },
}

/// `astrtc testenv ...`.
#[derive(Debug, Subcommand)]
pub enum TestenvCommand {
    /// Start an isolated deployment on free ports; returns once it is ready (TLS handshake
    /// verified, every endpoint loaded) and prints what a test needs.
    #[command(after_help = "Examples:\n  astrtc testenv up --json\n  \
                            astrtc testenv up --name ci-1 --endpoints 2 --ttl 30m\n  \
                            astrtc testenv up --spec pbx/astrtc.toml --json")]
    Up {
        /// A spec whose endpoints, codecs and dialplan to use (ports, TLS and name are the
        /// instance's own) [default: a built-in spec with --endpoints WebRTC and SIP endpoints].
        #[arg(long)]
        spec: Option<PathBuf>,
        /// Instance name (lowercase letters, digits, '-') [default: random].
        #[arg(long)]
        name: Option<String>,
        /// WebRTC and SIP endpoints of the built-in spec, each (1-50).
        #[arg(long, default_value_t = 1)]
        endpoints: u8,
        /// RTP ports to publish (2-200; two per call).
        #[arg(long, default_value_t = 20)]
        rtp_ports: u16,
        /// Remove the instance by itself after this long (e.g. 90s, 30m, 2h).
        #[arg(long, value_parser = crate::testenv::parse_duration)]
        ttl: Option<std::time::Duration>,
        /// Image to run [default: the spec's image].
        #[arg(long, env = "ASTRTC_TESTENV_IMAGE")]
        image: Option<String>,
        /// Print the instance as JSON (URLs, addresses, the CA, every endpoint and its password).
        #[arg(long)]
        json: bool,
    },
    /// Remove an instance (container, network, state), or all of them.
    Down {
        /// The instance.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        name: Option<String>,
        /// Every instance on this host.
        #[arg(long)]
        all: bool,
    },
    /// List the instances on this host.
    List {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove an instance when its TTL ends (started by `up --ttl`, detached).
    #[command(hide = true)]
    Reap {
        /// The instance.
        name: String,
        /// Its expiry, unix seconds.
        #[arg(long)]
        at: u64,
    },
}

/// `--ttl` of `turn-credentials`: a duration up to [`crate::turn::MAX_TTL`].
fn parse_ttl(s: &str) -> Result<std::time::Duration, String> {
    let ttl = crate::testenv::parse_duration(s)?;
    if ttl > crate::turn::MAX_TTL {
        return Err("TURN credentials cannot be revoked: at most 7d (mint new ones instead)".into());
    }
    Ok(ttl)
}

/// `--rate`: 0.5 to 1000 calls per second.
fn parse_rate(s: &str) -> Result<f64, String> {
    number_within(s, 0.5..=1000.0, "calls per second", "the rate")
}

/// `--hold`: 1 to 3600 seconds.
fn parse_hold(s: &str) -> Result<f64, String> {
    number_within(s, 1.0..=3600.0, "seconds", "the hold time")
}

/// A number of `unit` in `range`; `what` names it in the error.
fn number_within(s: &str, range: std::ops::RangeInclusive<f64>, unit: &str, what: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number of {unit}"))?;
    if range.contains(&v) {
        Ok(v)
    } else {
        Err(format!("{what} must be between {} and {} {unit}", range.start(), range.end()))
    }
}
