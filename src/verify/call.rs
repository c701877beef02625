//! `astrtc verify --call`: a real call to the echo extension for each kind of endpoint, placed
//! by [`crate::media`] from wherever verify runs, and what its failure means for this
//! deployment.
//!
//! Owns: which endpoints call (by default the spec's first WebRTC and first plain SIP endpoint,
//! concurrently on the caller's runtime) and the diagnosis — each [`CallFailure`] turned into a
//! cause in the spec's own terms (`network.public_address`, `rtp.start`-`rtp.end`, an endpoint's
//! `codecs`, the secrets file) with its remedy. For a media path that never came up it gathers
//! evidence first: which of the addresses Asterisk gave for media this client can reach at all
//! (TCP to the WSS port, or SIP OPTIONS to the SIP port, on each address). An address that
//! answers means the RTP ports are blocked; none answering means the addresses are wrong.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;

use super::report::Check;
use crate::media::netif::is_private;
use crate::media::probe::RelayProblem;
use crate::media::sip::{Transport, UserAgent};
use crate::media::turn::TurnServer;
use crate::media::{self, CallFailure, CallReport, CallSetup, Leg, LegSetup, SharedMedia};
use crate::plan::{Endpoint, Plan};
use crate::spec::valid::Transport as SpecTransport;
use crate::spec::EndpointKind;

/// How long each reachability probe of an address waits.
pub const REACH_TIMEOUT: Duration = Duration::from_secs(2);

/// What `--call` asks for.
#[derive(Debug, Clone)]
pub struct CallOptions {
    /// Endpoints to call as; empty: the first WebRTC and the first plain SIP endpoint.
    pub endpoints: Vec<String>,
    /// Extension to call [default: the spec's echo extension]; it must echo.
    pub target: Option<String>,
    /// How long each call is held.
    pub hold: Duration,
    /// Force WebRTC media through this TURN server (`--relay`: the spec's `rtp.turn`).
    pub relay: Option<TurnServer>,
}

/// The endpoints `ids` names, or by default the first WebRTC one and the first SIP one over UDP;
/// an unknown id is an error naming the endpoints the spec has, and so is a SIP phone over TLS
/// (the call's SIP leg is UDP only, and a cluster's edge refuses a user over a transport the
/// spec does not give it).
pub fn select_endpoints<'a>(plan: &'a Plan, ids: &[String]) -> Result<Vec<&'a Endpoint>, String> {
    if ids.is_empty() {
        let first = |kind| plan.endpoints.iter().find(|e| e.kind == kind && e.transport != SpecTransport::Tls);
        return Ok([first(EndpointKind::Webrtc), first(EndpointKind::Sip)].into_iter().flatten().collect());
    }
    ids.iter()
        .map(|id| {
            let ep = plan.endpoints.iter().find(|e| &e.id == id).ok_or_else(|| {
                let have: Vec<_> = plan.endpoints.iter().map(|e| e.id.as_str()).collect();
                format!("--endpoint {id}: the spec has no endpoint {id} (it has {})", have.join(", "))
            })?;
            if ep.transport == SpecTransport::Tls {
                return Err(format!(
                    "--endpoint {id}: endpoint {id} is a SIP phone over TLS; `verify --call` places SIP calls over \
                     UDP only (call it from a TLS phone instead)"
                ));
            }
            Ok(ep)
        })
        .collect()
}

/// What a diagnosis needs to know about where the call went.
struct Context<'a> {
    plan: &'a Plan,
    endpoint: &'a Endpoint,
    /// Where signalling went.
    server: SocketAddr,
}

/// Places the calls and returns one check each (with the call's figures attached). `wss` and
/// `sip` are the resolved listeners; `skip` names a reason to skip a kind of call because an
/// earlier check of its transport failed.
pub async fn call_checks(
    plan: &Plan,
    endpoints: &[&Endpoint],
    options: &CallOptions,
    wss: SocketAddr,
    sip: SocketAddr,
    ca_pem: &str,
    skip: impl Fn(EndpointKind) -> Option<String>,
) -> Vec<Check> {
    let shared = match SharedMedia::new() {
        Ok(s) => s,
        Err(e) => {
            let detail = format!("cannot prepare the media: {}", media::probe::error_chain(&e));
            return endpoints
                .iter()
                .map(|ep| Check::fail(format!("call {}", ep.id), detail.clone(), "this is a bug in astrtc"))
                .collect();
        }
    };
    let ca_pem: Arc<str> = Arc::from(ca_pem);
    let target = options.target.clone().unwrap_or_else(|| plan.dialplan.echo_extension.clone());
    let calls = endpoints.iter().map(|ep| {
        let (shared, ca_pem, target) = (shared.clone(), ca_pem.clone(), target.clone());
        let skipped = skip(ep.kind);
        async move {
            let name = format!("call {}", ep.id);
            if let Some(why) = skipped {
                return Check::skip(name, why);
            }
            let (leg, server) = match ep.kind {
                EndpointKind::Webrtc => {
                    (LegSetup::Webrtc { wss, ca_pem, local_ips: Vec::new(), relay: options.relay.clone() }, wss)
                }
                EndpointKind::Sip => (LegSetup::Sip { server: sip }, sip),
            };
            let setup = CallSetup {
                leg,
                domain: plan.tls.domain.clone(),
                user: ep.id.clone(),
                password: ep.password.expose().to_string(),
                extension: target,
                hold: options.hold,
                register: true,
                offer: media::session::Offer::Opus,
                reencoded: false,
                release: None,
            };
            let report = media::call(&setup, &shared).await;
            let ctx = Context { plan, endpoint: ep, server };
            judge(&ctx, report).await
        }
    });
    join_all(calls).await
}

fn ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1} ms")).unwrap_or_else(|| "never".into())
}

/// The check for one finished call.
async fn judge(ctx: &Context<'_>, report: CallReport) -> Check {
    let name = format!("call {}", ctx.endpoint.id);
    let kind = match report.leg {
        Leg::Webrtc => "webrtc",
        Leg::Sip => "sip",
    };
    let Some(failure) = report.failure.clone() else {
        let m = report.media.clone().unwrap_or_default();
        let detail = format!(
            "{kind} call to {}: {} packets echoed of {}, first back {} after the INVITE",
            report.target,
            m.matched,
            m.sent,
            ms(report.first_rtp_ms)
        );
        return with_call(Check::pass(name, detail), report);
    };
    let (detail, remedy) = diagnose(ctx, &report, &failure).await;
    with_call(Check::fail(name, format!("{kind} call to {}: {detail}", report.target), remedy), report)
}

fn with_call(mut check: Check, report: CallReport) -> Check {
    check.call = Some(Box::new(report));
    check
}

/// How the spec names a codec the probe offers.
fn spec_codec(leg: Leg) -> (&'static str, &'static str) {
    match leg {
        Leg::Webrtc => ("opus", "opus/48000/2, as every browser offers first"),
        Leg::Sip => ("ulaw", "PCMU/8000 (G.711 µ-law, spec name ulaw)"),
    }
}

/// The cause in the deployment's terms, and the remedy.
async fn diagnose(ctx: &Context<'_>, report: &CallReport, failure: &CallFailure) -> (String, String) {
    let ep = ctx.endpoint;
    let plan = ctx.plan;
    let restart = "render and restart Asterisk (`docker compose up -d --force-recreate`)";
    match failure {
        CallFailure::AuthRejected { method, code, attempts } => (
            format!("{method} answered {code} again after digest auth ({attempts} attempts): the password was refused"),
            format!(
                "wrong password for endpoint {}: the running Asterisk does not accept the password the secrets file \
                 has for it; if the secrets file is right, {restart}",
                ep.id
            ),
        ),
        CallFailure::Rejected { method, code: code @ (488 | 415 | 406), reason, .. } if method == "INVITE" => {
            let (name, offered) = spec_codec(report.leg);
            let allows = ep.codecs.join(", ");
            let remedy = if ep.codecs.iter().any(|c| c == name) {
                format!(
                    "the spec allows {name} for endpoint {} but the running Asterisk refused it: its configuration is \
                     older than the spec; {restart}",
                    ep.id
                )
            } else {
                format!(
                    "add {name} to the codecs of endpoint {} in the spec (codecs = [\"{name}\", ...]), then {restart}",
                    ep.id
                )
            };
            (
                format!(
                    "INVITE answered {code} {reason}: no codec in common — the call offered {offered}; endpoint {} \
                     allows {allows}",
                    ep.id
                ),
                remedy,
            )
        }
        CallFailure::Rejected { method, code: 404, reason, .. } if method == "INVITE" => (
            format!("INVITE answered 404 {reason}"),
            format!(
                "extension {} does not exist in context {}: call the echo extension (dialplan.echo_extension = \"{}\")",
                report.target, plan.dialplan.context, plan.dialplan.echo_extension
            ),
        ),
        CallFailure::Rejected { method, code, reason, warning } => (
            format!("{method} answered {code} {reason}{}", warning.as_ref().map(|w| format!(" ({w})")).unwrap_or_default()),
            "Asterisk refused the request: its log (`docker compose logs asterisk`) says why".into(),
        ),
        CallFailure::NoResponse { method, .. } => (
            failure.to_string(),
            format!("Asterisk did not answer the {method}: is it running, and does it know endpoint {}?", ep.id),
        ),
        CallFailure::Connect { message } => (
            message.clone(),
            match report.leg {
                Leg::Webrtc => format!(
                    "no WebSocket to {}: is the stack running and network.wss_port {} open (see the tls and websocket checks)?",
                    ctx.server,
                    plan.network.wss_port
                ),
                Leg::Sip => "this host could not open a UDP socket to the server".into(),
            },
        ),
        CallFailure::Relay { problem, message } => (format!("no relay: {message}"), relay_remedy(plan, *problem)),
        CallFailure::Local { message } => {
            (message.clone(), "this host has no usable address for media (no network interface up?)".into())
        }
        CallFailure::Signalling { message } => {
            (message.clone(), "the signalling broke off: see the Asterisk log (`docker compose logs asterisk`)".into())
        }
        CallFailure::BadAnswer { message } => (
            format!("the answer is not usable: {message}"),
            "Asterisk answered with SDP this client cannot use: see the Asterisk log".into(),
        ),
        CallFailure::Media { message } => (format!("the media engine failed: {message}"), "this is a bug in astrtc".into()),
        CallFailure::IceNotConnected { .. } => media_path_down(ctx, report).await,
        CallFailure::DtlsNotConnected => {
            let pair = report.pair.as_ref().map(|p| format!(" over {} -> {}", p.local, p.remote)).unwrap_or_default();
            (
                format!(
                    "ICE connected{pair} but the DTLS handshake never completed (datagrams in: {}; out: {})",
                    report.datagrams_in.map(|d| d.to_string()).unwrap_or_default(),
                    report.datagrams_out.map(|d| d.to_string()).unwrap_or_default()
                ),
                format!(
                    "Asterisk's DTLS-SRTP for endpoint {} failed: it needs res_srtp.so running and webrtc = yes (astrtc \
                     renders it); the Asterisk log names the DTLS error",
                    ep.id
                ),
            )
        }
        CallFailure::NoMediaBack => no_media_back(ctx, report).await,
        CallFailure::Loss { percent } => (
            format!(
                "{percent:.1} % of the audio was lost{}",
                report.asterisk_loss_percent.map(|l| format!(" (Asterisk's RTCP reports {l:.1} % loss its way)")).unwrap_or_default()
            ),
            "the network between here and the server drops packets: the figures below show where it starts".into(),
        ),
    }
}

/// Whether anything answers at `ip` on the call's signalling port: TCP to the WSS port (a
/// refused connection also proves the address is reached), or SIP OPTIONS over UDP.
async fn reachable(ip: IpAddr, leg: Leg, plan: &Plan) -> bool {
    match leg {
        Leg::Webrtc => {
            let addr = SocketAddr::new(ip, plan.network.wss_port);
            match tokio::time::timeout(REACH_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(_)) => true,
                Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionRefused,
                Err(_) => false,
            }
        }
        Leg::Sip => {
            let server = SocketAddr::new(ip, plan.network.sip_port);
            let Ok(transport) = Transport::udp(server).await else { return false };
            let mut ua = UserAgent::new(transport, "astrtc", "", &plan.tls.domain);
            ua.timeout = REACH_TIMEOUT;
            ua.options(&format!("sip:{server}")).await.is_ok()
        }
    }
}

/// Which of `ips` answer, probed at once.
async fn reach(ips: &[IpAddr], leg: Leg, plan: &Plan) -> Vec<(IpAddr, bool)> {
    let answers = join_all(ips.iter().map(|ip| reachable(*ip, leg, plan))).await;
    ips.iter().copied().zip(answers).collect()
}

fn list(ips: &[IpAddr]) -> String {
    ips.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(", ")
}

/// The cause when media never flowed although the call was answered: `offered` are the
/// addresses Asterisk gave for media, `what` says how it gave them.
async fn unreachable_media(ctx: &Context<'_>, report: &CallReport, offered: &[IpAddr], what: &str) -> (String, String) {
    let plan = ctx.plan;
    let (start, end) = (plan.rtp.start, plan.rtp.end);
    let port_name = match report.leg {
        Leg::Webrtc => format!("TCP {} (WSS)", plan.network.wss_port),
        Leg::Sip => format!("SIP OPTIONS on UDP {}", plan.network.sip_port),
    };
    let probed = reach(offered, report.leg, plan).await;
    let answering: Vec<IpAddr> = probed.iter().filter(|(_, ok)| *ok).map(|(ip, _)| *ip).collect();
    let silent: Vec<IpAddr> = probed.iter().filter(|(_, ok)| !*ok).map(|(ip, _)| *ip).collect();
    let signalling_ip = ctx.server.ip();
    let evidence = match (answering.len(), silent.len()) {
        (0, _) => format!("{what}; from here none of them answers {port_name}"),
        (_, 0) => format!("{what}; from here all of them answer {port_name}"),
        _ => format!("{what}; from here {} answer {port_name}, {} do not", list(&answering), list(&silent)),
    };
    if !answering.is_empty() {
        return (
            format!("{evidence}: the server is reachable, its media ports are not"),
            format!(
                "UDP {start}-{end} (the spec's rtp.start-rtp.end) is probably blocked between here and the server: open \
                 that range to the server in its firewall or security group (or give clients a TURN relay: [turn] in the spec)"
            ),
        );
    }
    let detail = format!("{evidence}; signalling reached the server at {signalling_ip}");
    match &plan.network.nat {
        None => {
            let private = offered.iter().all(|ip| is_private(*ip));
            let hint = if is_private(signalling_ip) {
                "the address clients reach the server at".to_string()
            } else {
                format!("the address clients reach the server at, here {signalling_ip}")
            };
            let ice = match report.leg {
                Leg::Webrtc => format!(
                    ", network.local_address to the server's own address the NAT forwards it to (one of {})",
                    list(offered)
                ),
                Leg::Sip => String::new(),
            };
            (
                format!(
                    "{detail}: Asterisk offered {}addresses this client cannot reach",
                    if private { "only private " } else { "" }
                ),
                format!(
                    "the server is behind NAT and the spec has no network.public_address: set network.public_address to \
                     {hint}{ice} (and network.local_nets to the networks reached directly), then render and restart \
                     Asterisk"
                ),
            )
        }
        Some(nat) if offered.contains(&nat.public_address) => (
            format!("{detail}: Asterisk offered network.public_address {}, which this client cannot reach", nat.public_address),
            format!(
                "network.public_address = \"{}\" is probably wrong: it must be the address clients reach the server at{}; \
                 fix it, then render and restart Asterisk",
                nat.public_address,
                if is_private(signalling_ip) { String::new() } else { format!(" (here {signalling_ip})") }
            ),
        ),
        Some(nat) => {
            let public = nat.public_address;
            let remedy = match (report.leg, nat.local_address) {
                (Leg::Webrtc, None) => format!(
                    "Asterisk offers WebRTC clients only its own addresses: set network.local_address to the one the NAT \
                     forwards {public} to (one of {}), then render and restart Asterisk",
                    list(offered)
                ),
                (Leg::Webrtc, Some(local)) if !offered.contains(&local) => format!(
                    "network.local_address = \"{local}\" is not an address of this server (Asterisk offered {}): set it \
                     to the one the NAT forwards {public} to, then render and restart Asterisk",
                    list(offered)
                ),
                _ => format!(
                    "the running Asterisk does not use the spec's network.public_address {public} for this client: check \
                     network.local_nets (this client must not be inside them), then render and restart Asterisk"
                ),
            };
            (format!("{detail}: Asterisk did not offer network.public_address {public}"), remedy)
        }
    }
}

/// What to do when the relay could not be set up: for `[turn]` (credentials astrtc minted from
/// its secret) or for `rtp.turn` (a fixed user).
fn relay_remedy(plan: &Plan, problem: RelayProblem) -> String {
    if let Some(turn) = &plan.turn {
        let urls = crate::turn::urls(turn).join(", ");
        let service =
            if turn.bundled.is_some() { "the `turn` service (docker compose ps turn)" } else { "your TURN server" };
        return match problem {
            RelayProblem::Unreachable => format!(
                "nothing answers TURN at {urls} from here: is {service} running, and port {} (UDP and TCP){} open from \
                 the clients' networks?",
                turn.port,
                turn.tls_port.map(|p| format!(" and {p} (TCP)")).unwrap_or_default()
            ),
            RelayProblem::Unauthorized => format!(
                "the TURN server refused credentials made with the [turn] secret of the secrets file: its shared secret \
                 (coturn static-auth-secret, use-auth-secret) must be the same{}; and its clock must not be ahead by \
                 more than their lifetime (10 minutes)",
                if turn.bundled.is_some() { " — render and restart the turn service" } else { "" }
            ),
            RelayProblem::Refused => format!(
                "the TURN server refused the request: a 403 to CreatePermission means it may not relay to any of \
                 Asterisk's addresses — list the one it reaches Asterisk at in turn.allowed_peers (or \
                 network.local_address), then render and restart {service}; a 486 that the user's quota \
                 (turn.user_quota) is used up"
            ),
        };
    }
    let (turn, user) = match &plan.rtp.turn {
        Some(t) => (t.address.as_str(), t.username.as_str()),
        None => ("(none)", ""),
    };
    match problem {
        RelayProblem::Unreachable => format!(
            "nothing answers TURN at {turn} (rtp.turn) from here: is the TURN server running, and UDP to it \
             open from the clients' networks?"
        ),
        RelayProblem::Unauthorized => format!(
            "the TURN server refused user {user:?} (rtp.turn_username) with the [turn] password of the secrets \
             file: they must be a user the TURN server knows (coturn: lt-cred-mech with that user)"
        ),
        RelayProblem::Refused => format!(
            "the TURN server at {turn} refused the request: a 403 to CreatePermission means it may not relay to \
             Asterisk's addresses (coturn: denied-peer-ip, no-loopback-peers), a 486 that its quota is used up"
        ),
    }
}

async fn media_path_down(ctx: &Context<'_>, report: &CallReport) -> (String, String) {
    let mut offered: Vec<IpAddr> = Vec::new();
    for c in &report.remote_candidates {
        if !offered.contains(&c.addr.ip()) {
            offered.push(c.addr.ip());
        }
    }
    if offered.is_empty() {
        return (
            "ICE never connected: Asterisk's answer has no ICE candidates".into(),
            format!(
                "endpoint {} needs ICE support (webrtc = yes, which astrtc renders): render and restart",
                ctx.endpoint.id
            ),
        );
    }
    let cands = report.remote_candidates.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    let stun = match (report.datagrams_in, report.datagrams_out) {
        (Some(i), Some(o)) => format!(" ({} ICE checks sent, {} STUN datagrams back)", o.stun, i.stun),
        _ => String::new(),
    };
    if let Some(relay) = &report.relay {
        let (start, end) = (ctx.plan.rtp.start, ctx.plan.rtp.end);
        return (
            format!(
                "ICE through the TURN relay {} (server {}) never connected{stun}; Asterisk offered {cands}",
                relay.relayed, relay.server
            ),
            format!(
                "the TURN server reaches none of Asterisk's addresses: UDP {start}-{end} (rtp.start-rtp.end) must be open \
                 from the TURN server to Asterisk, and the TURN server must be allowed to relay to them"
            ),
        );
    }
    let what = format!("ICE never connected{stun}; Asterisk offered {cands}");
    unreachable_media(ctx, report, &offered, &what).await
}

async fn no_media_back(ctx: &Context<'_>, report: &CallReport) -> (String, String) {
    let sent = report.media.as_ref().map(|m| m.sent).unwrap_or(0);
    if let Some(dir) = report.answer_direction.as_deref().filter(|d| *d != "sendrecv") {
        return (
            format!("{sent} RTP packets sent, none came back: Asterisk answered a={dir}"),
            "Asterisk will not send on this call: see the Asterisk log for why it put the call on hold".into(),
        );
    }
    match (report.leg, report.rtp_path) {
        (Leg::Sip, Some((_, remote))) => {
            let what = format!("{sent} RTP packets sent to {remote} (the answer's media address), none came back");
            unreachable_media(ctx, report, &[remote.ip()], &what).await
        }
        _ => (
            format!("DTLS connected and {sent} RTP packets sent, none came back"),
            format!(
                "extension {} did not echo: call the echo extension (dialplan.echo_extension = \"{}\")",
                report.target, ctx.plan.dialplan.echo_extension
            ),
        ),
    }
}
