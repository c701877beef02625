//! One call from start to end — register, INVITE the echo extension, run the media for the hold
//! time, BYE, unregister — and its report. Failures are part of the report ([`CallFailure`]:
//! which step failed, with what the server said), not errors: a probe's job is to describe them.
//!
//! Owns: the order of the steps and the timeline (every time is measured from the first INVITE).
//! A call is one future on the caller's runtime: it spawns nothing, owns its sockets and
//! connection, and shares only what [`SharedMedia`] holds — so a load generator can run hundreds
//! of them at once with `join_all` or one task each. A plain SIP call's RTP goes through the
//! shared [`RtpPort`] when `SharedMedia` has one on its address, else through a port of its own
//! that the call's future serves beside it. A WebRTC call offering just the address of
//! `SharedMedia`'s [`super::webrtc_port::WebrtcPort`]s (and no relay) has its media served by the
//! next of them in turn; any other has sockets of its own. Diagnosing a failure for a particular
//! deployment (which spec key to change) is the caller's job: this module knows no spec.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use super::netif;
use super::rtp::{PlainRtpSession, RtpPort, RtpPortHandle};
use super::sdp::{self, CandidateInfo};
use super::session::{Datagrams, MediaFailure, Offer, RelayInfo, SessionError, SharedMedia, WebrtcSession};
use super::sip::{CallEnd, Dialog, InviteOutcome, SipError, Transport, UserAgent};
use super::stats::MediaFigures;
use super::turn::{TurnError, TurnServer};
use super::ws::WsConn;
use super::RunPlan;

/// A call that lost more than this share of its packets (from the first one echoed on) failed.
pub const MAX_LOSS_PERCENT: f64 = 5.0;

/// How long echoes still in flight are waited for after the last packet is sent.
pub const TAIL: Duration = Duration::from_millis(500);

/// Which kind of client the call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Leg {
    /// A browser: SIP over WSS, ICE, DTLS-SRTP, opus.
    Webrtc,
    /// A desk phone: SIP over UDP, RTP, G.711 µ-law.
    Sip,
}

/// How to reach the server for this kind of call.
#[derive(Debug, Clone)]
pub enum LegSetup {
    /// SIP over WSS to `wss` (path `/ws`), the certificate verified against `ca_pem` for the
    /// domain; ICE host candidates on `local_ips` (empty: this host's LAN addresses and the one
    /// that routes to the server), or with `relay` only a candidate relayed by that TURN server.
    Webrtc {
        /// The WSS listener.
        wss: SocketAddr,
        /// CA certificate(s) the WSS certificate must chain to.
        ca_pem: Arc<str>,
        /// Local addresses to offer.
        local_ips: Vec<IpAddr>,
        /// Force the media through this TURN server.
        relay: Option<TurnServer>,
    },
    /// SIP over UDP to `server`; RTP from the address that routes to it.
    Sip {
        /// The SIP UDP listener.
        server: SocketAddr,
    },
}

/// Who calls whom, and for how long. Its `Debug` shows no password.
#[derive(Clone)]
pub struct CallSetup {
    /// Transport and media kind.
    pub leg: LegSetup,
    /// SIP domain (and the TLS name for WSS).
    pub domain: String,
    /// Endpoint to call as.
    pub user: String,
    /// Its digest password (a plain `String`: the integration tests build setups from the
    /// plan's `Secret`s; `Debug` redacts it).
    pub password: String,
    /// Extension to call; it must echo (the spec's echo extension).
    pub extension: String,
    /// How long to keep the call up once answered. ICE and DTLS must come up within it.
    pub hold: Duration,
    /// REGISTER first (a softphone does; Asterisk also takes an INVITE alone).
    pub register: bool,
    /// What a WebRTC call offers (opus alone, or opus then G.711 as browsers do).
    pub offer: Offer,
    /// The echo comes back re-encoded (a transcoded leg in between): loss is counted, not
    /// matched by payload, and there is no per-packet round trip.
    pub reencoded: bool,
    /// Hang up when this turns true, even before `hold` has passed (a load generator ends its
    /// calls together).
    pub release: Option<watch::Receiver<bool>>,
}

impl std::fmt::Debug for CallSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Every field named, so a new one cannot be left out (nor a second secret let in) unseen.
        let CallSetup { leg, domain, user, password: _, extension, hold, register, offer, reencoded, release } = self;
        f.debug_struct("CallSetup")
            .field("leg", leg)
            .field("domain", domain)
            .field("user", user)
            .field("password", &format_args!("<redacted>"))
            .field("extension", extension)
            .field("hold", hold)
            .field("register", register)
            .field("offer", offer)
            .field("reencoded", reencoded)
            .field("release", release)
            .finish()
    }
}

/// How setting up a TURN relay failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RelayProblem {
    /// The TURN server did not answer.
    Unreachable,
    /// It refused the credentials.
    Unauthorized,
    /// It refused the allocation or a permission (e.g. 403: the peer's address is not allowed).
    Refused,
}

fn relay_failure(e: &SessionError) -> CallFailure {
    let problem = match e {
        SessionError::Turn(TurnError::Unauthorized { .. }) => RelayProblem::Unauthorized,
        SessionError::Turn(TurnError::Rejected { .. } | TurnError::Incomplete { .. }) => RelayProblem::Refused,
        _ => RelayProblem::Unreachable,
    };
    CallFailure::Relay { problem, message: error_chain(e) }
}

/// Why a call failed, as a cause a report can act on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cause", rename_all = "snake_case")]
pub enum CallFailure {
    /// The TURN relay could not be set up (`--relay`): allocation or permissions refused, or
    /// the TURN server did not answer.
    Relay {
        /// Which way it failed.
        problem: RelayProblem,
        /// What failed.
        message: String,
    },
    /// Nothing on this side could start (no socket, no local address).
    Local {
        /// What failed.
        message: String,
    },
    /// The signalling connection failed (TCP, TLS, WebSocket upgrade, UDP).
    Connect {
        /// What failed.
        message: String,
    },
    /// The server challenged again after digest authentication: it refused the password.
    AuthRejected {
        /// REGISTER or INVITE.
        method: String,
        /// 401 or 407.
        code: u16,
        /// Requests sent.
        attempts: u32,
    },
    /// A final error response, e.g. 488 (no codec in common) or 404.
    Rejected {
        /// REGISTER or INVITE.
        method: String,
        /// Status code.
        code: u16,
        /// Reason phrase.
        reason: String,
        /// Warning or Reason header, if the server gave one.
        warning: Option<String>,
    },
    /// No final response in time.
    NoResponse {
        /// The request.
        method: String,
        /// Milliseconds waited.
        waited_ms: f64,
    },
    /// Any other signalling failure (a challenge that cannot be answered, the connection lost).
    Signalling {
        /// What failed.
        message: String,
    },
    /// The answer's SDP could not be used.
    BadAnswer {
        /// Why.
        message: String,
    },
    /// ICE found no working candidate pair while the call was up.
    IceNotConnected {
        /// The last ICE state.
        state: String,
    },
    /// ICE connected but the DTLS handshake did not complete.
    DtlsNotConnected,
    /// RTP was sent but none came back.
    NoMediaBack,
    /// Some came back, but less than it should.
    Loss {
        /// Loss in percent.
        percent: f64,
    },
    /// The media engine stopped with an error.
    Media {
        /// What failed.
        message: String,
    },
}

impl std::fmt::Display for CallFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallFailure::Local { message } | CallFailure::Connect { message } => write!(f, "{message}"),
            CallFailure::Relay { message, .. } => write!(f, "TURN: {message}"),
            CallFailure::AuthRejected { method, code, attempts } => {
                write!(f, "{method} answered {code} again after digest auth ({attempts} attempts)")
            }
            CallFailure::Rejected { method, code, reason, warning } => {
                write!(f, "{method} answered {code} {reason}")?;
                match warning {
                    Some(w) => write!(f, " ({w})"),
                    None => Ok(()),
                }
            }
            CallFailure::NoResponse { method, waited_ms } => {
                write!(f, "no final response to {method} within {:.1} s", waited_ms / 1000.0)
            }
            CallFailure::Signalling { message } => write!(f, "signalling failed: {message}"),
            CallFailure::BadAnswer { message } => write!(f, "{message}"),
            CallFailure::IceNotConnected { state } => write!(f, "ICE never connected (state {state})"),
            CallFailure::DtlsNotConnected => write!(f, "ICE connected, DTLS never did"),
            CallFailure::NoMediaBack => write!(f, "RTP sent, none came back"),
            CallFailure::Loss { percent } => write!(f, "{percent:.1} % of the audio was lost"),
            CallFailure::Media { message } => write!(f, "the media failed: {message}"),
        }
    }
}

fn sip_failure(e: SipError) -> CallFailure {
    match e {
        SipError::AuthRejected { method, code, attempts, .. } => CallFailure::AuthRejected { method, code, attempts },
        SipError::Rejected { method, code, reason, warning } => CallFailure::Rejected { method, code, reason, warning },
        SipError::Timeout { method, waited } => {
            CallFailure::NoResponse { method, waited_ms: waited.as_secs_f64() * 1000.0 }
        }
        other => CallFailure::Signalling { message: error_chain(&other) },
    }
}

/// An error and its sources, `: `-joined (rustls's reason is the source of a TLS error).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The selected ICE candidate pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CandidatePair {
    /// Ours.
    pub local: CandidateInfo,
    /// Asterisk's.
    pub remote: CandidateInfo,
}

/// What one call saw. Times are milliseconds from the first INVITE.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallReport {
    /// Which kind of client.
    pub leg: Leg,
    /// The endpoint called as.
    pub endpoint: String,
    /// The extension called.
    pub target: String,
    /// Where signalling went, e.g. `wss://localhost:8089/ws at 127.0.0.1:8089`.
    pub signalling: String,
    /// REGISTER to its 200 OK, digest challenge included, when registered.
    pub registered_ms: Option<f64>,
    /// 200 OK to the INVITE.
    pub answered_ms: Option<f64>,
    /// INVITEs sent (2 with a digest challenge).
    pub invites: u32,
    /// ICE connected (WebRTC).
    pub ice_connected_ms: Option<f64>,
    /// DTLS connected (WebRTC).
    pub dtls_connected_ms: Option<f64>,
    /// First RTP packet back.
    pub first_rtp_ms: Option<f64>,
    /// The codecs we offered.
    pub offered: Vec<String>,
    /// The codecs the answer accepted, in its order.
    pub answered_codecs: Vec<String>,
    /// The answer's direction (`sendrecv` unless Asterisk put the call on hold).
    pub answer_direction: Option<String>,
    /// The codec used.
    pub codec: Option<String>,
    /// Our ICE candidates (WebRTC).
    pub local_candidates: Vec<CandidateInfo>,
    /// Asterisk's ICE candidates (WebRTC).
    pub remote_candidates: Vec<CandidateInfo>,
    /// The selected ICE pair (WebRTC).
    pub pair: Option<CandidatePair>,
    /// The TURN relay the media was forced through (WebRTC with `--relay`).
    pub relay: Option<RelayInfo>,
    /// Our RTP address and the one Asterisk's answer named (plain SIP).
    pub rtp_path: Option<(SocketAddr, SocketAddr)>,
    /// What the echo measured.
    pub media: Option<MediaFigures>,
    /// Asterisk's own view from its RTCP reports: loss % (WebRTC).
    pub asterisk_loss_percent: Option<f64>,
    /// RTCP packets from Asterisk (plain SIP, on the odd port).
    pub rtcp_received: Option<u64>,
    /// Datagrams received by kind (WebRTC).
    pub datagrams_in: Option<Datagrams>,
    /// Datagrams sent by kind (WebRTC).
    pub datagrams_out: Option<Datagrams>,
    /// How the call ended: `BYE answered 200`, `Asterisk hung up`.
    pub hangup: Option<String>,
    /// Every SIP message, one line each.
    pub ladder: Vec<String>,
    /// Why the call failed; `None` for a healthy call.
    pub failure: Option<CallFailure>,
}

impl CallReport {
    fn new(leg: Leg, setup: &CallSetup, signalling: String) -> CallReport {
        CallReport {
            leg,
            endpoint: setup.user.clone(),
            target: setup.extension.clone(),
            signalling,
            registered_ms: None,
            answered_ms: None,
            invites: 0,
            ice_connected_ms: None,
            dtls_connected_ms: None,
            first_rtp_ms: None,
            offered: Vec::new(),
            answered_codecs: Vec::new(),
            answer_direction: None,
            codec: None,
            local_candidates: Vec::new(),
            remote_candidates: Vec::new(),
            pair: None,
            relay: None,
            rtp_path: None,
            media: None,
            asterisk_loss_percent: None,
            rtcp_received: None,
            datagrams_in: None,
            datagrams_out: None,
            hangup: None,
            ladder: Vec::new(),
            failure: None,
        }
    }

    /// True when the call connected and got its audio back.
    pub fn healthy(&self) -> bool {
        self.failure.is_none()
    }

    /// Sets the failure from the media figures, when nothing earlier failed.
    fn judge_media(&mut self, reencoded: bool) {
        if self.failure.is_some() {
            return;
        }
        if reencoded {
            self.failure = match &self.media {
                Some(m) if m.received == 0 => Some(CallFailure::NoMediaBack),
                Some(m) if m.counted_loss_percent > MAX_LOSS_PERCENT => {
                    Some(CallFailure::Loss { percent: m.counted_loss_percent })
                }
                Some(_) => None,
                None => Some(CallFailure::NoMediaBack),
            };
            return;
        }
        self.failure = match &self.media {
            Some(m) if m.sent > 0 && m.matched == 0 => Some(CallFailure::NoMediaBack),
            Some(m) if m.steady_loss_percent > MAX_LOSS_PERCENT => {
                Some(CallFailure::Loss { percent: m.steady_loss_percent })
            }
            Some(_) => None,
            None => Some(CallFailure::NoMediaBack),
        };
    }
}

fn ms_since(t0: Instant, t: Option<Instant>) -> Option<f64> {
    t.map(|t| t.saturating_duration_since(t0).as_secs_f64() * 1000.0)
}

/// Places one call and reports it.
pub async fn call(setup: &CallSetup, shared: &SharedMedia) -> CallReport {
    match &setup.leg {
        LegSetup::Webrtc { wss, ca_pem, local_ips, relay } => {
            webrtc_call(setup, *wss, ca_pem, local_ips, relay.as_ref(), shared).await
        }
        LegSetup::Sip { server } => sip_call(setup, *server, shared).await,
    }
}

/// The agent registered (when asked) on `transport`; the failure otherwise.
async fn signed_in(setup: &CallSetup, transport: Transport, report: &mut CallReport) -> Option<UserAgent> {
    let mut ua = UserAgent::new(transport, &setup.user, &setup.password, &setup.domain);
    if setup.register {
        let sent = Instant::now();
        if let Err(e) = ua.register(60).await {
            report.failure = Some(sip_failure(e));
            report.ladder = ua.ladder().to_vec();
            ua.close().await;
            return None;
        }
        report.registered_ms = Some(sent.elapsed().as_secs_f64() * 1000.0);
    }
    Some(ua)
}

/// Removes the registration (if made), keeps the ladder, closes the transport.
async fn sign_out(mut ua: UserAgent, setup: &CallSetup, report: &mut CallReport) {
    if setup.register {
        let _ = ua.register(0).await;
    }
    report.ladder = ua.ladder().to_vec();
    ua.close().await;
}

/// Holds the call while `media` runs (until `hold` has passed or `release` turns true); then
/// stops the media, waits for it, hangs up.
async fn hold_and_hang_up<F: std::future::Future>(
    ua: &mut UserAgent,
    dialog: &mut Dialog,
    setup: &CallSetup,
    stop: oneshot::Sender<()>,
    media: F,
    report: &mut CallReport,
) -> F::Output {
    tokio::pin!(media);
    let until = tokio::time::Instant::now() + setup.hold;
    let release = async {
        match setup.release.clone() {
            Some(mut rx) => {
                // A dropped sender releases too.
                let _ = rx.wait_for(|released| *released).await;
            }
            None => std::future::pending().await,
        }
    };
    let (end, early) = tokio::select! {
        end = ua.hold_call(dialog, until) => (end, None),
        r = &mut media => (Ok(CallEnd::Elapsed), Some(r)),
        _ = release => (Ok(CallEnd::Elapsed), None),
    };
    let _ = stop.send(());
    let result = match early {
        Some(r) => r,
        None => media.await,
    };
    report.hangup = Some(match end {
        Ok(CallEnd::RemoteBye) => "Asterisk hung up (BYE)".into(),
        Ok(CallEnd::Elapsed) => match ua.bye(dialog).await {
            Ok(r) => format!("BYE answered {} {}", r.code().unwrap_or_default(), r.reason()),
            Err(e) => format!("BYE failed: {e}"),
        },
        Err(e) => format!("signalling failed during the call: {e}"),
    });
    result
}

/// INVITEs with `offer`; the agent and the answered call, or `None` after recording the failure
/// and signing out.
async fn answered(
    mut ua: UserAgent,
    setup: &CallSetup,
    offer: &str,
    report: &mut CallReport,
) -> Option<(UserAgent, InviteOutcome)> {
    match ua.invite(&setup.extension, offer).await {
        Ok(call) => {
            report.invites = call.attempts;
            report.answered_ms = ms_since(call.first_invite_sent, Some(call.answered));
            if let Some(a) = sdp::audio(&call.dialog.remote_sdp) {
                report.answered_codecs = a.codec_names();
                report.answer_direction = Some(a.direction);
            }
            Some((ua, call))
        }
        Err(e) => {
            report.failure = Some(sip_failure(e));
            sign_out(ua, setup, report).await;
            None
        }
    }
}

/// Hangs up a call whose answer cannot be used.
async fn refuse_answer(
    mut ua: UserAgent,
    dialog: &mut Dialog,
    setup: &CallSetup,
    why: String,
    report: &mut CallReport,
) {
    report.failure = Some(CallFailure::BadAnswer { message: why });
    let _ = ua.bye(dialog).await;
    sign_out(ua, setup, report).await;
}

fn run_plan(setup: &CallSetup) -> (oneshot::Sender<()>, RunPlan) {
    let (stop_tx, stop) = oneshot::channel();
    (stop_tx, RunPlan { stop, tail: TAIL, connect_timeout: setup.hold })
}

async fn webrtc_call(
    setup: &CallSetup,
    wss: SocketAddr,
    ca_pem: &str,
    local_ips: &[IpAddr],
    relay: Option<&TurnServer>,
    shared: &SharedMedia,
) -> CallReport {
    let mut report = CallReport::new(Leg::Webrtc, setup, format!("wss://{}:{}/ws at {wss}", setup.domain, wss.port()));
    report.offered = match setup.offer {
        Offer::Opus => vec!["opus/48000/2".into()],
        Offer::OpusThenPcmu => vec!["opus/48000/2".into(), "PCMU/8000".into()],
    };
    let ips = match (relay, local_ips.is_empty()) {
        (_, false) => local_ips.to_vec(),
        (Some(turn), true) => netif::route_to(turn.addr).map(|ip| vec![ip]).unwrap_or_default(),
        (None, true) => default_candidates(wss),
    };
    // The next of the run's shared ports when the call offers just their address (no relay); else
    // sockets of the call's own.
    let port = shared.webrtc_port().filter(|p| relay.is_none() && ips == [p.local().ip()]);
    let offered = match port {
        Some(port) => WebrtcSession::offer_on_port(port, shared, setup.offer),
        None => WebrtcSession::offer(&ips, shared, relay, setup.offer).await,
    };
    let (mut session, offer) = match offered {
        Ok(s) => s,
        Err(e @ SessionError::Turn(_)) => {
            report.failure = Some(relay_failure(&e));
            return report;
        }
        Err(e) => {
            report.failure = Some(CallFailure::Local { message: error_chain(&e) });
            return report;
        }
    };
    report.relay = session.relay();
    report.local_candidates = session.local_candidates().to_vec();
    let conn = match WsConn::connect(wss, &setup.domain, ca_pem, "/ws").await {
        Ok(c) => c,
        Err(e) => {
            report.failure = Some(CallFailure::Connect { message: error_chain(&e) });
            return report;
        }
    };
    let Some(ua) = signed_in(setup, Transport::wss(conn), &mut report).await else { return report };
    let Some((mut ua, mut call)) = answered(ua, setup, &offer, &mut report).await else { return report };
    let t0 = call.first_invite_sent;
    if let Err(e) = session.accept_answer(&call.dialog.remote_sdp) {
        refuse_answer(ua, &mut call.dialog, setup, e.to_string(), &mut report).await;
        return report;
    }
    let permitted = session.permit_remote().await;
    // The relay's refusals of some of Asterisk's addresses are known only now.
    report.relay = session.relay();
    if let Err(e) = permitted {
        report.failure = Some(relay_failure(&e));
        let _ = ua.bye(&mut call.dialog).await;
        sign_out(ua, setup, &mut report).await;
        return report;
    }
    let (stop, plan) = run_plan(setup);
    let m = hold_and_hang_up(&mut ua, &mut call.dialog, setup, stop, session.run(plan), &mut report).await;
    sign_out(ua, setup, &mut report).await;
    report.ice_connected_ms = ms_since(t0, m.ice_connected);
    report.dtls_connected_ms = ms_since(t0, m.dtls_connected);
    report.first_rtp_ms = ms_since(t0, m.media.first_received);
    report.codec = m.codec;
    report.remote_candidates = m.remote_candidates;
    report.local_candidates = m.local_candidates;
    report.pair = m.pair.map(|(local, remote)| CandidatePair { local, remote });
    report.asterisk_loss_percent = m.remote_report.map(|(loss, _)| f64::from(loss) * 100.0);
    report.datagrams_in = Some(m.datagrams_in);
    report.datagrams_out = Some(m.datagrams_out);
    report.failure = m.failure.map(|f| match f {
        MediaFailure::IceNotConnected { state } => CallFailure::IceNotConnected { state },
        MediaFailure::DtlsNotConnected => CallFailure::DtlsNotConnected,
        MediaFailure::Rtc(message) => CallFailure::Media { message },
    });
    report.media = Some(m.media);
    report.judge_media(setup.reencoded);
    report
}

async fn sip_call(setup: &CallSetup, server: SocketAddr, shared: &SharedMedia) -> CallReport {
    let mut report = CallReport::new(Leg::Sip, setup, format!("udp {server}"));
    report.offered = vec!["PCMU/8000".into()];
    let transport = match Transport::udp(server).await {
        Ok(t) => t,
        Err(e) => {
            report.failure = Some(CallFailure::Connect { message: error_chain(&e) });
            return report;
        }
    };
    let Some(rtp_ip) = transport.local_addr().map(|a| a.ip()) else {
        report.failure = Some(CallFailure::Local { message: "the SIP socket has no local address".into() });
        return report;
    };
    // The run's shared RTP port when it is on this address; else one of the call's own, served
    // beside it.
    if let Some(port) = shared.rtp_port.as_ref().filter(|p| p.local().ip() == rtp_ip) {
        return sip_media_call(setup, transport, port.clone(), shared, report).await;
    }
    match RtpPort::bind(rtp_ip).await {
        Ok((own, port)) => tokio::join!(sip_media_call(setup, transport, port, shared, report), own.run()).0,
        Err(e) => {
            report.failure = Some(CallFailure::Local { message: error_chain(&e) });
            report
        }
    }
}

/// The rest of [`sip_call`], its media on `port`.
async fn sip_media_call(
    setup: &CallSetup,
    transport: Transport,
    port: RtpPortHandle,
    shared: &SharedMedia,
    mut report: CallReport,
) -> CallReport {
    let (mut session, offer) = PlainRtpSession::offer(&port, shared.ulaw.clone());
    drop(port);
    let Some(ua) = signed_in(setup, transport, &mut report).await else { return report };
    let Some((mut ua, mut call)) = answered(ua, setup, &offer, &mut report).await else { return report };
    let t0 = call.first_invite_sent;
    match session.accept_answer(&call.dialog.remote_sdp) {
        Ok(remote) => {
            report.rtp_path = Some((session.local(), remote));
            report.codec = Some("PCMU/8000".into());
        }
        Err(e) => {
            refuse_answer(ua, &mut call.dialog, setup, e.to_string(), &mut report).await;
            return report;
        }
    }
    let (stop, plan) = run_plan(setup);
    let m = hold_and_hang_up(&mut ua, &mut call.dialog, setup, stop, session.run(plan), &mut report).await;
    sign_out(ua, setup, &mut report).await;
    report.first_rtp_ms = ms_since(t0, m.media.first_received);
    report.rtcp_received = Some(m.rtcp_received);
    report.media = Some(m.media);
    report.judge_media(setup.reencoded);
    report
}

/// What a browser offers: every LAN address, plus the one that routes to the server (loopback
/// when the server is on this host: Asterisk answers checks from it).
fn default_candidates(server: SocketAddr) -> Vec<IpAddr> {
    let mut ips = netif::host_ips(netif::CandidateSet::Lan).unwrap_or_default();
    if let Ok(ip) = netif::route_to(server) {
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    ips
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::turn::TurnTransport;
    use crate::spec::valid::Secret;

    #[test]
    fn a_call_setups_debug_hides_its_password() {
        let (_release, released) = watch::channel(false);
        let setup = CallSetup {
            leg: LegSetup::Webrtc {
                wss: "127.0.0.1:8089".parse().unwrap(),
                ca_pem: Arc::from("ca"),
                local_ips: vec![],
                relay: Some(TurnServer {
                    addr: "192.0.2.9:3478".parse().unwrap(),
                    username: "turn-user".into(),
                    password: Secret::new("pw-7f3a9c-not-in-debug-either"),
                    transport: TurnTransport::Udp,
                }),
            },
            domain: "example.test".into(),
            user: "3001".into(),
            password: "pw-7f3a9c-not-in-debug".into(),
            extension: "600".into(),
            hold: Duration::from_secs(1),
            register: true,
            offer: Offer::OpusThenPcmu,
            reencoded: false,
            release: Some(released),
        };
        let debug = format!("{setup:?}");
        assert!(!debug.contains("pw-7f3a9c"), "CallSetup's Debug shows a password: {debug}");
        assert!(debug.contains("user: \"3001\"") && debug.contains("extension: \"600\""), "{debug}");
    }
}
