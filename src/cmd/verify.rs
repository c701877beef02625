//! `astrtc verify`: check a running deployment of the spec (with `--call`, also place real
//! calls), human or JSON report.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use astrtc::cli::RelayTransport;
use astrtc::media::turn::{TurnServer, TurnTransport};

use astrtc::plan::Plan;
use astrtc::spec::TlsMode;
use astrtc::verify;

use super::{load_plan, out_dir, CmdError};

/// What `--call` and its options asked for.
pub struct CallArgs {
    /// `--endpoint`, repeatable.
    pub endpoints: Vec<String>,
    /// `--target`.
    pub target: Option<String>,
    /// `--hold`, seconds.
    pub hold: f64,
    /// `--relay`.
    pub relay: bool,
    /// `--relay-transport`.
    pub relay_transport: RelayTransport,
}

/// Runs `verify`.
pub async fn run(
    spec: &Path,
    out: Option<PathBuf>,
    host: Option<String>,
    ca: Option<PathBuf>,
    container: Option<String>,
    json: bool,
    call: Option<CallArgs>,
) -> Result<(), CmdError> {
    let plan = load_plan(spec)?;
    let ca_path = ca.unwrap_or_else(|| default_ca(&plan, &out_dir(spec, out)));
    let ca_pem =
        std::fs::read_to_string(&ca_path).map_err(|source| CmdError::ReadFile { path: ca_path.clone(), source })?;
    let call = match call {
        Some(args) => Some(call_options(&plan, args, host.as_deref(), &ca_pem)?),
        None => None,
    };
    let target = verify::Target {
        host: host.unwrap_or_else(|| plan.tls.domain.clone()),
        ca_pem,
        ca_file: ca_path.display().to_string(),
        container,
        call,
    };
    let report = verify::verify(&plan, &target).await;
    if json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        print!("{report}");
    }
    match report.checks.iter().filter(|c| c.status == verify::Status::Fail).count() {
        0 => Ok(()),
        failed => Err(CmdError::VerifyFailed { failed }),
    }
}

/// `--call`'s options, checked against the spec before anything is sent (bad input: exit 2).
fn call_options(
    plan: &Plan,
    args: CallArgs,
    host: Option<&str>,
    ca_pem: &str,
) -> Result<verify::CallOptions, CmdError> {
    verify::call::select_endpoints(plan, &args.endpoints).map_err(CmdError::BadArgument)?;
    let relay = if args.relay { Some(relay_server(plan, args.relay_transport, host, ca_pem)?) } else { None };
    Ok(verify::CallOptions {
        endpoints: args.endpoints,
        target: args.target,
        hold: Duration::from_secs_f64(args.hold),
        relay,
    })
}

/// The user name on credentials `verify --call --relay` mints for itself.
const VERIFY_TURN_USER: &str = "astrtc-verify";

/// The TURN server `--relay` goes through: the spec's `[turn]`, with credentials minted here for
/// ten minutes (a bundled server runs on the deployment's host, so `--host` reaches it too), or
/// else `rtp.turn` with its fixed user and password.
fn relay_server(
    plan: &Plan,
    transport: RelayTransport,
    host: Option<&str>,
    ca_pem: &str,
) -> Result<TurnServer, CmdError> {
    let resolve = |name: &str, port: u16, key: &str| {
        (name, port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.find(SocketAddr::is_ipv4))
            .ok_or_else(|| CmdError::BadArgument(format!("--relay: cannot resolve {key} {name:?}")))
    };
    if let Some(turn) = &plan.turn {
        let port = match transport {
            RelayTransport::Udp | RelayTransport::Tcp => turn.port,
            RelayTransport::Tls => turn.tls_port.ok_or_else(|| {
                CmdError::BadArgument("--relay-transport tls needs [turn] tls_port (TURN over TLS)".into())
            })?,
        };
        let name = match (host, turn.bundled.is_some()) {
            (Some(h), true) => h,
            _ => turn.host.as_str(),
        };
        let addr = resolve(name, port, "[turn] host")?;
        let cred =
            astrtc::turn::mint(turn.secret.expose(), VERIFY_TURN_USER, Duration::from_secs(600), SystemTime::now());
        let transport = match transport {
            RelayTransport::Udp => TurnTransport::Udp,
            RelayTransport::Tcp => TurnTransport::Tcp,
            RelayTransport::Tls => TurnTransport::Tls { name: turn.host.clone(), ca_pem: ca_pem.to_string() },
        };
        return Ok(TurnServer { addr, username: cred.username, password: cred.password, transport });
    }
    let turn = plan.rtp.turn.as_ref().ok_or_else(|| {
        CmdError::BadArgument("--relay uses the spec's TURN server, and the spec has no [turn] nor rtp.turn".into())
    })?;
    let transport = match transport {
        RelayTransport::Udp => TurnTransport::Udp,
        RelayTransport::Tcp => TurnTransport::Tcp,
        RelayTransport::Tls => {
            return Err(CmdError::BadArgument(
                "--relay-transport tls needs [turn] with a tls_port; rtp.turn names no TLS port".into(),
            ))
        }
    };
    let (name, port) = turn.address.rsplit_once(':').unwrap_or((turn.address.as_str(), "3478"));
    let addr = resolve(name, port.parse().unwrap_or(3478), "rtp.turn")?;
    Ok(TurnServer { addr, username: turn.username.clone(), password: turn.password.clone(), transport })
}

/// The CA the WSS certificate must chain to when `--ca` is not given: in self-signed mode the
/// local CA the spec names (the rendered copy in `OUT/keys/ca.crt`, else `tls.ca_dir/ca.crt`);
/// in ACME mode the system trust store (`SSL_CERT_FILE`, else Debian's bundle).
pub(super) fn default_ca(plan: &Plan, out: &Path) -> PathBuf {
    match plan.tls.mode {
        TlsMode::SelfSigned => {
            let rendered = out.join("keys").join(astrtc::certs::files::CA);
            if rendered.exists() {
                rendered
            } else {
                plan.tls.ca_dir.join(astrtc::certs::local_ca::CA_CERT_FILE)
            }
        }
        TlsMode::Acme => std::env::var_os("SSL_CERT_FILE")
            .map(PathBuf::from)
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("/etc/ssl/certs/ca-certificates.crt")),
    }
}
