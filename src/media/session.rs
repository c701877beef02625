//! The WebRTC media of one call, driven by str0m (sans-IO): one UDP socket per local address as
//! an ICE host candidate, an SDP offer with one audio m-line as a browser makes it (BUNDLE,
//! rtcp-mux, DTLS-SRTP, AVPF, opus), then a run loop that feeds datagrams and timeouts into the
//! `Rtc`, sends what it transmits, writes a 20 ms opus frame on every tick once DTLS is up, and
//! measures the echo.
//!
//! Owns: the `Rtc` and the call's sockets ([`SocketSet`]: polled in place — no task, no channel
//! per call; with a TURN relay, the set also translates between Send/Data indications and what
//! str0m sees, a relayed candidate), and the workarounds Asterisk needs (see [`with_default_candidate`],
//! [`lowercase_fingerprint_hash`], and why every datagram goes to `handle_input`). What several
//! calls share (DTLS certificate, crypto provider, encoded tone) comes in as [`SharedMedia`].
//! The SIP side — where the SDP travels — is not this module's business.

use std::future::poll_fn;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::crypto::dtls::DtlsCert;
use str0m::crypto::CryptoProvider;
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcError};
use tokio::io::ReadBuf;
use tokio::net::UdpSocket;

use super::audio::{ToneLoop, LOOP_FRAMES};
use super::rtp::RtpPortHandle;
use super::sdp::{self, CandidateInfo};
use super::stats::{EchoMeter, MediaFigures};
use super::turn::{Allocation, Link, TurnError, TurnServer, TurnStream};
use super::udp_batch::BatchSender;
use super::webrtc_port::WebrtcPortHandle;
use super::RunPlan;

/// Why the WebRTC media could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// A socket could not be bound.
    #[error("failed to bind a UDP socket on {addr}")]
    Socket {
        /// The address.
        addr: IpAddr,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// No local address to offer.
    #[error("no local address to use as an ICE host candidate")]
    NoCandidates,
    /// str0m refused something.
    #[error("str0m: {0}")]
    Rtc(#[from] RtcError),
    /// The answer could not be used.
    #[error("the SDP answer is not usable: {0}")]
    BadAnswer(String),
    /// No opus encoder (libopus refused its settings).
    #[error("the opus encoder failed: {0}")]
    Opus(#[from] opus::Error),
    /// The TURN relay could not be set up.
    #[error(transparent)]
    Turn(#[from] TurnError),
}

/// How often a relayed call refreshes its TURN allocation and permissions.
const REFRESH_EVERY: Duration = Duration::from_secs(60);

/// What every call of one run shares, made once: the crypto provider, one DTLS certificate
/// (generating a key per call costs more than the rest of the setup) and the encoded tones.
/// Cheap to clone.
#[derive(Clone)]
pub struct SharedMedia {
    crypto: Arc<CryptoProvider>,
    dtls_cert: DtlsCert,
    /// The opus tone loop.
    pub opus: Arc<ToneLoop>,
    /// The G.711 µ-law tone loop.
    pub ulaw: Arc<ToneLoop>,
    /// The RTP port plain SIP calls from its address share ([`super::rtp::RtpPort`]); without one, each
    /// call serves a port of its own.
    pub rtp_port: Option<RtpPortHandle>,
    /// The UDP ports WebRTC calls from their address share, relay-less
    /// ([`super::webrtc_port::WebrtcPort`], each served by a task of its own), taken in turn
    /// ([`SharedMedia::webrtc_port`]); without any, each call binds sockets of its own.
    pub webrtc_ports: Vec<WebrtcPortHandle>,
    /// The next of `webrtc_ports` a call takes.
    next_webrtc_port: Arc<AtomicUsize>,
}

impl SharedMedia {
    /// Makes the certificate and encodes the tones (about 50 ms).
    pub fn new() -> Result<SharedMedia, SessionError> {
        let crypto = str0m::crypto::from_feature_flags();
        let dtls_cert = crypto
            .dtls_provider
            .generate_certificate()
            .ok_or_else(|| SessionError::BadAnswer("the crypto provider cannot make a DTLS certificate".into()))?;
        Ok(SharedMedia {
            crypto: Arc::new(crypto),
            dtls_cert,
            opus: Arc::new(ToneLoop::opus(LOOP_FRAMES)?),
            ulaw: Arc::new(ToneLoop::ulaw(LOOP_FRAMES)),
            rtp_port: None,
            webrtc_ports: Vec::new(),
            next_webrtc_port: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The shared WebRTC port a new call uses: each of `webrtc_ports` in turn, so the calls'
    /// media is spread evenly over the ports' tasks (and so over the cores); `None` without any.
    pub fn webrtc_port(&self) -> Option<&WebrtcPortHandle> {
        if self.webrtc_ports.is_empty() {
            return None;
        }
        let turn = self.next_webrtc_port.fetch_add(1, Ordering::Relaxed);
        self.webrtc_ports.get(turn % self.webrtc_ports.len())
    }
}

/// A datagram as read: arrival time, source, the local address it arrived on, its length in
/// the set's buffer.
struct Datagram {
    at: Instant,
    source: SocketAddr,
    destination: SocketAddr,
    len: usize,
    /// What a TURN Data indication carried (then `len` is unused).
    relayed: Option<Vec<u8>>,
}

/// The UDP sockets of one call, read in place: one poll over all of them (and the stream to a
/// TURN server reached over TCP or TLS), one buffer.
pub struct SocketSet {
    sockets: Vec<(SocketAddr, UdpSocket)>,
    buf: Box<[u8]>,
    next: usize,
    /// The TURN allocation and the local address of the socket (or stream) it was made from.
    relay: Option<(Allocation, SocketAddr)>,
    /// The connection to the TURN server, when it is reached over TCP or TLS.
    stream: Option<TurnStream>,
}

/// A relay a call's media went through.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RelayInfo {
    /// The TURN server.
    pub server: SocketAddr,
    /// The relayed address (our ICE candidate of type relay).
    pub relayed: SocketAddr,
    /// Our address as the TURN server saw it.
    pub mapped: Option<SocketAddr>,
    /// How we reached the TURN server: udp, tcp or tls.
    #[serde(default)]
    pub transport: String,
    /// Peers the TURN server refused to relay to (CreatePermission answered 403), as `ADDRESS
    /// (CODE REASON)`: addresses of Asterisk's it may not reach.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<String>,
}

impl SocketSet {
    /// Binds one socket on an ephemeral port of each address.
    pub async fn bind(ips: &[IpAddr]) -> Result<SocketSet, SessionError> {
        let mut sockets = Vec::with_capacity(ips.len());
        for ip in ips {
            let err = |source| SessionError::Socket { addr: *ip, source };
            let sock = UdpSocket::bind(SocketAddr::new(*ip, 0)).await.map_err(err)?;
            sockets.push((sock.local_addr().map_err(err)?, sock));
        }
        Ok(SocketSet { sockets, buf: vec![0u8; 2048].into_boxed_slice(), next: 0, relay: None, stream: None })
    }

    /// No socket: the call's datagrams go through a [`WebrtcPortHandle`]'s port.
    fn none() -> SocketSet {
        SocketSet { sockets: Vec::new(), buf: Box::default(), next: 0, relay: None, stream: None }
    }

    /// Allocates a relay on `server` from the first socket (or over a new stream, for TCP and
    /// TLS); returns the relayed address and the local base.
    async fn allocate(&mut self, server: &TurnServer) -> Result<(SocketAddr, SocketAddr), SessionError> {
        let (base, sock) = self.sockets.first().ok_or(SessionError::NoCandidates)?;
        let (alloc, base) = match TurnStream::connect(server).await? {
            None => (Allocation::new(&mut Link::Udp(sock), server).await?, *base),
            Some(mut stream) => {
                let alloc = Allocation::new(&mut Link::Stream(&mut stream), server).await?;
                let base = stream.local_addr();
                self.stream = Some(stream);
                (alloc, base)
            }
        };
        let relayed = alloc.relayed;
        self.relay = Some((alloc, base));
        Ok((relayed, base))
    }

    /// Lets `peers` reach the relayed address.
    async fn permit(&mut self, peers: &[IpAddr]) -> Result<(), SessionError> {
        let SocketSet { sockets, relay, stream, .. } = self;
        let Some((alloc, _)) = relay.as_mut() else { return Ok(()) };
        match (stream.as_mut(), sockets.first()) {
            (Some(stream), _) => alloc.permit(&mut Link::Stream(stream), peers).await?,
            (None, Some((_, sock))) => alloc.permit(&mut Link::Udp(sock), peers).await?,
            (None, None) => {}
        }
        Ok(())
    }

    /// Sends raw bytes to the TURN server (refreshes, release); errors are ignored.
    async fn send_to_relay_server(&mut self, messages: Vec<Vec<u8>>) {
        let SocketSet { sockets, relay, stream, .. } = self;
        let Some((alloc, _)) = relay.as_ref() else { return };
        for m in messages {
            match (stream.as_mut(), sockets.first()) {
                (Some(stream), _) => {
                    let _ = stream.send(&m).await;
                }
                (None, Some((_, sock))) => {
                    let _ = sock.send_to(&m, alloc.server()).await;
                }
                (None, None) => {}
            }
        }
    }

    /// Local addresses, in bind order.
    pub fn addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.sockets.iter().map(|(a, _)| *a)
    }

    /// Sends from the socket bound to `source`; errors (a firewall's EPERM, an ICMP error from
    /// an earlier datagram) are loss, not failure.
    pub async fn send(&mut self, source: SocketAddr, destination: SocketAddr, bytes: &[u8]) {
        let SocketSet { sockets, relay, stream, .. } = self;
        if let Some((alloc, base)) = relay.as_ref().filter(|(a, _)| a.relayed == source) {
            let wrapped = alloc.wrap(destination, bytes);
            if let Some(stream) = stream.as_mut() {
                let _ = stream.send(&wrapped).await;
            } else if let Some((_, sock)) = sockets.iter().find(|(a, _)| a == base) {
                let _ = sock.send_to(&wrapped, alloc.server()).await;
            }
        } else if let Some((_, sock)) = sockets.iter().find(|(a, _)| *a == source) {
            let _ = sock.send_to(bytes, destination).await;
        }
    }

    /// The next datagram on any socket (or relayed over the stream), stamped as it is read.
    /// Cancel-safe (a datagram is taken from a socket, or a frame from the stream's buffer, only
    /// when it is returned).
    async fn recv(&mut self) -> Datagram {
        loop {
            let d = self.recv_raw().await;
            let Some((alloc, _)) = self.relay.as_ref() else { return d };
            // From the TURN server: media in a Data indication, or an answer to a refresh.
            let from_server = match &d.relayed {
                Some(frame) => Some(frame.as_slice()),
                None if d.source == alloc.server() => Some(&self.buf[..d.len]),
                None => None,
            };
            let Some(frame) = from_server else { return d };
            if let Some((peer, data)) = Allocation::unwrap(frame) {
                return Datagram { source: peer, destination: alloc.relayed, relayed: Some(data), ..d };
            }
        }
    }

    /// The next datagram from a socket, or the next frame from the TURN stream (whole, in
    /// `relayed`). A closed stream is never ready again: the call then just hears nothing.
    async fn recv_raw(&mut self) -> Datagram {
        let SocketSet { sockets, buf, next, stream, relay } = self;
        let server = relay.as_ref().map(|(a, _)| a.server());
        poll_fn(|cx| {
            if let (Some(s), Some(server)) = (stream.as_mut(), server) {
                match s.poll_frame(cx) {
                    Poll::Ready(Ok(frame)) => {
                        let at = Instant::now();
                        let local = s.local_addr();
                        return Poll::Ready(Datagram {
                            at,
                            source: server,
                            destination: local,
                            len: 0,
                            relayed: Some(frame),
                        });
                    }
                    Poll::Ready(Err(_)) => *stream = None,
                    Poll::Pending => {}
                }
            }
            let n = sockets.len();
            for k in 0..n {
                // Start at a different socket each time so none is starved.
                let i = (*next + k) % n;
                let (local, sock) = &sockets[i];
                loop {
                    let mut rb = ReadBuf::new(buf);
                    match sock.poll_recv_from(cx, &mut rb) {
                        Poll::Ready(Ok(source)) => {
                            *next = i + 1;
                            let len = rb.filled().len();
                            let at = Instant::now();
                            return Poll::Ready(Datagram { at, source, destination: *local, len, relayed: None });
                        }
                        // An ICMP error for an earlier send surfaces here on Linux: read on.
                        Poll::Ready(Err(_)) => continue,
                        Poll::Pending => break,
                    }
                }
            }
            Poll::Pending
        })
        .await
    }
}

/// An offer made, waiting for its answer.
pub struct WebrtcSession {
    rtc: Rtc,
    sockets: SocketSet,
    mid: Mid,
    pending: Option<SdpPendingOffer>,
    local: Vec<CandidateInfo>,
    remote: Vec<CandidateInfo>,
    /// The answer's payload types, in its order of preference.
    answer_pts: Vec<u8>,
    opus: Arc<ToneLoop>,
    ulaw: Arc<ToneLoop>,
    /// How the TURN server is reached (with a relay).
    transport: String,
    /// The shared port the call's datagrams go through (then `sockets` is empty).
    port: Option<WebrtcPortHandle>,
}

/// What a WebRTC call offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// opus only: a call that must get opus (verify's probe).
    Opus,
    /// opus, then G.711 µ-law, as browsers offer them: the answer's order decides what is
    /// sent, as in a browser (a deployment that prefers G.711 gets G.711).
    OpusThenPcmu,
}

/// Datagram counts by kind, demultiplexed as RFC 7983 does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Datagrams {
    /// STUN (ICE checks and answers), first byte 0-3.
    pub stun: u64,
    /// DTLS, first byte 20-63.
    pub dtls: u64,
    /// SRTP and SRTCP, first byte 128-191.
    pub srtp: u64,
}

impl Datagrams {
    fn count(&mut self, bytes: &[u8]) {
        match bytes.first() {
            Some(0..=3) => self.stun += 1,
            Some(20..=63) => self.dtls += 1,
            Some(128..=191) => self.srtp += 1,
            _ => {}
        }
    }
}

impl std::fmt::Display for Datagrams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} STUN, {} DTLS, {} SRTP", self.stun, self.dtls, self.srtp)
    }
}

/// How the media of a call ended badly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaFailure {
    /// ICE found no working pair before the call ended (str0m never declares failure).
    IceNotConnected {
        /// The last ICE state (`New`, `Checking`, `Disconnected`).
        state: String,
    },
    /// ICE connected, the DTLS handshake did not complete.
    DtlsNotConnected,
    /// str0m stopped with an error.
    Rtc(String),
}

/// What the WebRTC media measured.
#[derive(Debug, Clone)]
pub struct WebrtcReport {
    /// ICE state `checking`.
    pub ice_checking: Option<Instant>,
    /// ICE state `connected`.
    pub ice_connected: Option<Instant>,
    /// DTLS handshake done (str0m's `Event::Connected`; SRTP keys ready).
    pub dtls_connected: Option<Instant>,
    /// The last ICE state.
    pub ice_state: String,
    /// Negotiated send codec, e.g. `opus/48000/2`.
    pub codec: Option<String>,
    /// Selected pair: local then remote.
    pub pair: Option<(CandidateInfo, CandidateInfo)>,
    /// Echo figures.
    pub media: MediaFigures,
    /// Asterisk's view from its RTCP receiver reports: fraction lost, jitter in RTP units.
    pub remote_report: Option<(f32, u32)>,
    /// Our candidates.
    pub local_candidates: Vec<CandidateInfo>,
    /// Asterisk's candidates from the answer.
    pub remote_candidates: Vec<CandidateInfo>,
    /// The TURN relay, with `--relay`.
    pub relay: Option<RelayInfo>,
    /// Datagrams received.
    pub datagrams_in: Datagrams,
    /// Datagrams sent.
    pub datagrams_out: Datagrams,
    /// Why the media failed, if it did.
    pub failure: Option<MediaFailure>,
}

impl WebrtcSession {
    /// Binds one UDP socket per address in `ips`, adds each as a host candidate and makes the
    /// offer (opus only). With `relay`, binds one socket on `ips[0]` instead, allocates a relay
    /// on the TURN server from it, and offers only the relayed candidate (as a browser does with
    /// `iceTransportPolicy: "relay"`). Returns the session and the offer's SDP text.
    pub async fn offer(
        ips: &[IpAddr],
        shared: &SharedMedia,
        relay: Option<&TurnServer>,
        codecs: Offer,
    ) -> Result<(WebrtcSession, String), SessionError> {
        if ips.is_empty() {
            return Err(SessionError::NoCandidates);
        }
        let mut rtc = new_rtc(shared, codecs);
        let mut local = Vec::new();
        let sockets = match relay {
            Some(server) => {
                let mut sockets = SocketSet::bind(&ips[..1]).await?;
                let (relayed, base) = sockets.allocate(server).await?;
                let cand =
                    Candidate::relayed(relayed, base, "udp").map_err(|e| SessionError::BadAnswer(e.to_string()))?;
                if rtc.add_local_candidate(cand).is_some() {
                    local.push(CandidateInfo { kind: "relay".into(), addr: relayed });
                }
                sockets
            }
            None => {
                let sockets = SocketSet::bind(ips).await?;
                for addr in sockets.addrs() {
                    add_host_candidate(&mut rtc, addr, &mut local)?;
                }
                sockets
            }
        };
        let transport = relay.map(|r| r.transport.to_string()).unwrap_or_default();
        WebrtcSession::offered(rtc, sockets, None, local, shared, transport)
    }

    /// Like [`WebrtcSession::offer`] with no relay, its one host candidate the shared `port`'s
    /// address: the call binds no socket, its datagrams go through the port, which serves it
    /// once [`WebrtcSession::run`] hands it over.
    pub fn offer_on_port(
        port: &WebrtcPortHandle,
        shared: &SharedMedia,
        codecs: Offer,
    ) -> Result<(WebrtcSession, String), SessionError> {
        let mut rtc = new_rtc(shared, codecs);
        let mut local = Vec::new();
        add_host_candidate(&mut rtc, port.local(), &mut local)?;
        WebrtcSession::offered(rtc, SocketSet::none(), Some(port.clone()), local, shared, String::new())
    }

    /// Makes the offer of an `Rtc` whose candidates are added.
    fn offered(
        mut rtc: Rtc,
        sockets: SocketSet,
        port: Option<WebrtcPortHandle>,
        local: Vec<CandidateInfo>,
        shared: &SharedMedia,
        transport: String,
    ) -> Result<(WebrtcSession, String), SessionError> {
        let first = local.first().ok_or(SessionError::NoCandidates)?.addr;
        let mut change = rtc.sdp_api();
        let mid = change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
        let (offer, pending) =
            change.apply().ok_or_else(|| SessionError::BadAnswer("str0m made no offer for the audio m-line".into()))?;
        let sdp = with_default_candidate(&offer.to_sdp_string(), first);
        let session = WebrtcSession {
            rtc,
            sockets,
            mid,
            pending: Some(pending),
            local,
            remote: Vec::new(),
            answer_pts: Vec::new(),
            opus: shared.opus.clone(),
            ulaw: shared.ulaw.clone(),
            transport,
            port,
        };
        Ok((session, sdp))
    }

    /// Our host candidates.
    pub fn local_candidates(&self) -> &[CandidateInfo] {
        &self.local
    }

    /// The relay, when the offer was made through one.
    pub fn relay(&self) -> Option<RelayInfo> {
        let transport = self.transport.clone();
        self.sockets.relay.as_ref().map(|(a, _)| RelayInfo {
            server: a.server(),
            relayed: a.relayed,
            mapped: a.mapped,
            transport,
            refused: a.refused.iter().map(|(ip, code, reason)| format!("{ip} ({code} {reason})")).collect(),
        })
    }

    /// With a relay: lets the addresses of Asterisk's candidates reach it (TURN permissions).
    pub async fn permit_remote(&mut self) -> Result<(), SessionError> {
        let mut peers: Vec<IpAddr> = Vec::new();
        for c in &self.remote {
            if !peers.contains(&c.addr.ip()) {
                peers.push(c.addr.ip());
            }
        }
        self.sockets.permit(&peers).await
    }

    /// Applies the SDP answer (from the 200 OK).
    pub fn accept_answer(&mut self, sdp: &str) -> Result<(), SessionError> {
        let audio = sdp::audio(sdp);
        self.remote = audio
            .as_ref()
            .map(|a| a.candidates.iter().filter_map(|c| sdp::parse_candidate(c)).collect())
            .unwrap_or_default();
        self.answer_pts = audio.map(|a| a.payload_types).unwrap_or_default();
        let sdp = lowercase_fingerprint_hash(sdp);
        let answer = SdpAnswer::from_sdp_string(&sdp).map_err(|e| SessionError::BadAnswer(e.to_string()))?;
        let pending = self.pending.take().ok_or_else(|| SessionError::BadAnswer("a second answer".into()))?;
        self.rtc.sdp_api().accept_answer(pending, answer)?;
        Ok(())
    }

    /// The codec to send: the first of the answer's that we offered, as a browser picks it.
    fn send_codec(&mut self) -> Option<SendCodec> {
        let writer = self.rtc.writer(self.mid)?;
        let params: Vec<_> = writer.payload_params().collect();
        let p =
            self.answer_pts.iter().find_map(|pt| params.iter().find(|p| *p.pt() == *pt)).or_else(|| params.first())?;
        let spec = p.spec();
        let name = format!("{}/{}/{}", codec_name(spec.codec), spec.clock_rate.get(), spec.channels.unwrap_or(1));
        let tone = match spec.codec {
            Codec::PCMU => self.ulaw.clone(),
            _ => self.opus.clone(),
        };
        Some(SendCodec { pt: p.pt(), name, clock: spec.clock_rate, tone })
    }

    /// Runs the media until `plan.stop` fires (then `plan.tail` more), measuring the echo.
    pub async fn run(mut self, plan: RunPlan) -> WebrtcReport {
        if let Some(port) = self.port.take() {
            return port.serve(Driver::new(self), plan).await;
        }
        let mut driver = Driver::new(self);
        let result = driver.run(plan).await;
        let release = driver.session.sockets.relay.as_ref().map(|(a, _)| vec![a.release()]);
        if let Some(release) = release {
            driver.session.sockets.send_to_relay_server(release).await;
        }
        driver.finish(result)
    }
}

/// An `Rtc` as a browser's: the shared certificate, opus (then PCMU), stats every 500 ms.
fn new_rtc(shared: &SharedMedia, codecs: Offer) -> Rtc {
    Rtc::builder()
        .set_crypto_provider(shared.crypto.clone())
        .set_dtls_cert(shared.dtls_cert.clone())
        .clear_codecs()
        .enable_opus(true, false)
        .enable_pcmu(codecs == Offer::OpusThenPcmu, false)
        .set_stats_interval(Some(Duration::from_millis(500)))
        .build(Instant::now())
}

/// Adds `addr` as a host candidate (str0m skips a duplicate).
fn add_host_candidate(rtc: &mut Rtc, addr: SocketAddr, local: &mut Vec<CandidateInfo>) -> Result<(), SessionError> {
    let cand = Candidate::host(addr, "udp").map_err(|e| SessionError::BadAnswer(e.to_string()))?;
    if rtc.add_local_candidate(cand).is_some() {
        local.push(CandidateInfo { kind: "host".into(), addr });
    }
    Ok(())
}

/// The codec a call sends, and its tone.
struct SendCodec {
    pt: Pt,
    name: String,
    clock: Frequency,
    tone: Arc<ToneLoop>,
}

/// The run loop's state: the session and what it has measured so far. Driven by its own loop
/// ([`Driver::run`], the call's sockets) or by a shared port's ([`super::webrtc_port`]).
pub(crate) struct Driver {
    session: WebrtcSession,
    report: WebrtcReport,
    meter: EchoMeter,
    codec: Option<SendCodec>,
    frame_no: u64,
    /// The SSRC taken for the audio though the answer never named it ([`expect_unsignalled`]).
    unsignalled: Option<u32>,
    /// Audio has come in (str0m decrypted and delivered some).
    heard: bool,
    /// The latest time the `Rtc` was given: str0m's clock must not go back, and a datagram read
    /// in a batch arrived before the timeouts handled since ([`super::webrtc_port`]).
    clock: Instant,
    /// The arrival times of the last RTP packets, by sequence number: the echo meter's receive
    /// time (str0m's `network_time` is the clock's, which may be later).
    arrivals: [(u16, Instant); ARRIVALS],
}

/// RTP arrival times kept (a second of one stream at 20 ms).
const ARRIVALS: usize = 64;

impl Driver {
    fn new(session: WebrtcSession) -> Driver {
        Driver {
            report: WebrtcReport {
                ice_checking: None,
                ice_connected: None,
                dtls_connected: None,
                ice_state: "New".into(),
                codec: None,
                pair: None,
                media: MediaFigures::default(),
                remote_report: None,
                local_candidates: session.local.clone(),
                remote_candidates: session.remote.clone(),
                relay: session.relay(),
                datagrams_in: Datagrams::default(),
                datagrams_out: Datagrams::default(),
                failure: None,
            },
            session,
            meter: EchoMeter::new(48_000),
            codec: None,
            frame_no: 0,
            unsignalled: None,
            heard: false,
            clock: Instant::now(),
            arrivals: [(0, Instant::now()); ARRIVALS],
        }
    }

    /// `t`, or the `Rtc`'s clock when `t` is earlier; the clock moves to it.
    fn tick_to(&mut self, t: Instant) -> Instant {
        self.clock = self.clock.max(t);
        self.clock
    }

    /// The report of a run that ended with `result`.
    pub(crate) fn finish(self, result: Result<(), RtcError>) -> WebrtcReport {
        let mut report = self.report;
        report.failure = match result {
            Err(e) => Some(MediaFailure::Rtc(e.to_string())),
            Ok(()) if report.ice_connected.is_none() => {
                Some(MediaFailure::IceNotConnected { state: report.ice_state.clone() })
            }
            Ok(()) if report.dtls_connected.is_none() => Some(MediaFailure::DtlsNotConnected),
            Ok(()) => None,
        };
        report.media = self.meter.figures();
        report
    }

    /// The report so far, failed with `why` (the port serving the call went away).
    pub(crate) fn failed_report(&self, why: &str) -> WebrtcReport {
        WebrtcReport { failure: Some(MediaFailure::Rtc(why.into())), ..self.report.clone() }
    }

    /// Asterisk's candidate addresses from the answer.
    pub(crate) fn remote_addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.session.remote.iter().map(|c| c.addr)
    }

    /// Whether the call's `Rtc` takes `input` (a datagram from an address no answer named).
    pub(crate) fn accepts(&self, input: &Input) -> bool {
        self.session.rtc.accepts(input)
    }

    /// Whether DTLS is up.
    pub(crate) fn dtls_connected(&self) -> bool {
        self.report.dtls_connected.is_some()
    }

    /// Once DTLS is up, picks the codec to send (once); true when it did just now.
    pub(crate) fn pick_codec(&mut self) -> bool {
        if self.report.dtls_connected.is_none() || self.codec.is_some() {
            return false;
        }
        let Some(codec) = self.session.send_codec() else { return false };
        self.report.codec = Some(codec.name.clone());
        // Nothing was sent or received yet: measure on the codec's clock.
        self.meter = EchoMeter::new(codec.clock.get());
        self.codec = Some(codec);
        true
    }

    /// Polls the `Rtc` until its next timeout, queueing what it transmits on `out` (from the
    /// shared port: every transmit's source is the port's address).
    pub(crate) fn drain_into(&mut self, out: &mut BatchSender) -> Result<Instant, RtcError> {
        loop {
            match self.session.rtc.poll_output()? {
                Output::Timeout(t) => return Ok(t),
                Output::Transmit(t) => {
                    self.report.datagrams_out.count(&t.contents);
                    out.push(&t.contents, t.destination);
                }
                Output::Event(e) => self.on_event(e),
            }
        }
    }

    /// Feeds the `Rtc` the time.
    pub(crate) fn on_timeout(&mut self, now: Instant) -> Result<(), RtcError> {
        let now = self.tick_to(now);
        self.session.rtc.handle_input(Input::Timeout(now))
    }

    /// The canonical str0m loop: drain `poll_output` to a timeout, then wait for ONE of a
    /// datagram, the timeout, the 20 ms audio tick or the end; feed it in; repeat.
    async fn run(&mut self, mut plan: RunPlan) -> Result<(), RtcError> {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let connect_deadline = tokio::time::Instant::now() + plan.connect_timeout;
        let mut end: Option<tokio::time::Instant> = None;
        // A relayed call keeps its allocation and permissions alive (they expire after 5 minutes).
        let relayed = self.session.sockets.relay.is_some();
        let mut refresh = tokio::time::interval_at(tokio::time::Instant::now() + REFRESH_EVERY, REFRESH_EVERY);
        loop {
            let timeout = self.drain().await?;
            if self.pick_codec() {
                // The interval idled until now: with Burst it would fire every missed tick.
                tick.reset_immediately();
            }
            let sending = self.codec.is_some() && end.is_none();
            let connecting = self.report.dtls_connected.is_none() && end.is_none();
            tokio::select! {
                d = self.session.sockets.recv() => self.on_datagram(d)?,
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(timeout)) => {
                    self.on_timeout(Instant::now())?;
                }
                _ = tick.tick(), if sending => self.send_frame()?,
                _ = refresh.tick(), if relayed => {
                    let messages = self.session.sockets.relay.as_ref().map(|(a, _)| a.refreshes()).unwrap_or_default();
                    self.session.sockets.send_to_relay_server(messages).await;
                }
                _ = &mut plan.stop, if end.is_none() => end = Some(tokio::time::Instant::now() + plan.tail),
                _ = tokio::time::sleep_until(end.unwrap_or(connect_deadline)), if end.is_some() => return Ok(()),
                // ICE never declares failure: give up waiting for the media path.
                _ = tokio::time::sleep_until(connect_deadline), if connecting => return Ok(()),
            }
        }
    }

    /// Polls the `Rtc` until it returns its next timeout: sends what it transmits, records its
    /// events.
    async fn drain(&mut self) -> Result<Instant, RtcError> {
        loop {
            match self.session.rtc.poll_output()? {
                Output::Timeout(t) => return Ok(t),
                Output::Transmit(t) => {
                    self.report.datagrams_out.count(&t.contents);
                    self.session.sockets.send(t.source, t.destination, &t.contents).await;
                }
                Output::Event(e) => self.on_event(e),
            }
        }
    }

    fn on_datagram(&mut self, d: Datagram) -> Result<(), RtcError> {
        if let Some(bytes) = &d.relayed {
            return self.on_receive(d.at, d.source, d.destination, bytes);
        }
        // The bytes are in the socket set's buffer: lend it out for the call (no copy).
        let buf = std::mem::take(&mut self.session.sockets.buf);
        let result = self.on_receive(d.at, d.source, d.destination, &buf[..d.len]);
        self.session.sockets.buf = buf;
        result
    }

    /// A datagram from `source` to our `destination` that arrived `at`.
    pub(crate) fn on_receive(
        &mut self,
        at: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
    ) -> Result<(), RtcError> {
        self.report.datagrams_in.count(data);
        let Ok(contents) = data.try_into() else { return Ok(()) };
        // Every datagram goes in. `accepts()` is for demultiplexing several `Rtc`s on one
        // socket, and it rejects DTLS from a pair whose own check has not succeeded yet:
        // Asterisk (DTLS client, `a=setup:active`) sends its ClientHello as soon as our first
        // check reaches it, often before that check's response is back to us, and dropping it
        // costs Asterisk's 1 s DTLS retransmit (seen in about one call in four).
        if let Some(seq) = rtp_seq(data) {
            self.arrivals[usize::from(seq) % ARRIVALS] = (seq, at);
        }
        let now = self.tick_to(at);
        let input = Input::Receive(now, Receive { proto: Protocol::Udp, source, destination, contents });
        // RTP of an SSRC the answer never named: only once ICE and DTLS are up, and only from
        // the address the ICE agent sends to (or another validated pair).
        if let Some(ssrc) = rtp_ssrc(data) {
            let rtc = &mut self.session.rtc;
            if rtc.is_connected() && rtc.accepts(&input) {
                expect_unsignalled(rtc, self.session.mid, &mut self.unsignalled, self.heard, ssrc);
            }
        }
        self.session.rtc.handle_input(input)
    }

    pub(crate) fn send_frame(&mut self) -> Result<(), RtcError> {
        let Some(codec) = &self.codec else { return Ok(()) };
        let data = codec.tone.frame(self.frame_no).to_vec();
        let now = Instant::now();
        let rtp_time = self.frame_no * u64::from(codec.tone.samples_per_frame);
        self.meter.on_sent(&data, now);
        self.frame_no += 1;
        let (pt, clock) = (codec.pt, codec.clock);
        let Some(writer) = self.session.rtc.writer(self.session.mid) else { return Ok(()) };
        writer.write(pt, now, MediaTime::new(rtp_time, clock), data)?;
        // str0m packetizes one written frame per timeout it handles. Left to the loop, a
        // starved caller whose ticks fire in a burst writes faster than it handles timeouts,
        // and after 512 pending frames str0m refuses the write (WriteWithoutPoll; seen for 50
        // of 200 calls in `bench calls` on a loaded host, which had sent half their frames).
        self.on_timeout(now)
    }

    fn on_event(&mut self, e: Event) {
        let now = Instant::now();
        let report = &mut self.report;
        match e {
            Event::IceConnectionStateChange(s) => {
                report.ice_state = format!("{s:?}");
                match s {
                    IceConnectionState::Checking => {
                        report.ice_checking.get_or_insert(now);
                    }
                    IceConnectionState::Connected | IceConnectionState::Completed => {
                        report.ice_connected.get_or_insert(now);
                    }
                    _ => {}
                }
            }
            Event::Connected => {
                report.dtls_connected.get_or_insert(now);
            }
            Event::MediaData(d) => {
                self.heard = true;
                let seq = **d.seq_range.start() as u16;
                let at = match self.arrivals[usize::from(seq) % ARRIVALS] {
                    (s, at) if s == seq => at.min(d.network_time),
                    _ => d.network_time,
                };
                self.meter.on_received(&d.data, at, d.time.numer() as u32, seq);
            }
            Event::PeerStats(s) => {
                if let Some(p) = s.selected_candidate_pair {
                    let name = |known: &[CandidateInfo], addr: SocketAddr| {
                        known
                            .iter()
                            .find(|c| c.addr == addr)
                            .cloned()
                            .unwrap_or(CandidateInfo { kind: "prflx".into(), addr })
                    };
                    report.pair = Some((
                        name(&report.local_candidates, p.local.addr),
                        name(&report.remote_candidates, p.remote.addr),
                    ));
                }
            }
            Event::MediaEgressStats(s) => {
                if let (Some(loss), Some(remote)) = (s.loss, s.remote) {
                    report.remote_report = Some((loss, remote.jitter));
                }
            }
            _ => {}
        }
    }
}

fn codec_name(c: Codec) -> &'static str {
    match c {
        Codec::Opus => "opus",
        Codec::PCMU => "PCMU",
        Codec::PCMA => "PCMA",
        Codec::G722 => "G722",
        _ => "other",
    }
}

/// Takes audio from an SSRC the answer never named, as a browser's one audio m-line does: str0m
/// places RTP by the SDP's `a=ssrc` lines or a `mid` header extension, and a relay answering for
/// a plain RTP peer (rtpengine for the cluster's pool) sends neither. Never when the answer
/// named an SSRC (Asterisk does), never SSRC 0 (libwebrtc's bandwidth probes, str0m's own). The
/// taken SSRC is provisional until audio is heard on it: a packet that fails SRTP leaves it
/// declared, so a later unknown SSRC replaces it until then; once audio has come in it stays
/// (a peer switching SSRCs mid-call is not followed).
fn expect_unsignalled(rtc: &mut Rtc, mid: Mid, taken: &mut Option<u32>, heard: bool, ssrc: u32) {
    if ssrc == 0 || rtc.media(mid).is_none() {
        return;
    }
    let mut api = rtc.direct_api();
    if api.stream_rx(&ssrc.into()).is_some() {
        return;
    }
    match *taken {
        None if api.stream_rx_by_mid(mid, None).is_none() => {}
        Some(old) if !heard => {
            api.remove_stream_rx(old.into());
        }
        _ => return,
    }
    api.expect_stream_rx(ssrc.into(), None, mid, None);
    *taken = Some(ssrc);
}

/// The SSRC of an RTP packet (RFC 7983: first byte 128-191; RTCP's packet types 192-223 have
/// 64-95 in the second byte's low seven bits); `None` for RTCP, STUN, DTLS and short packets.
fn rtp_ssrc(data: &[u8]) -> Option<u32> {
    let rtp = data.len() >= 12 && (128..=191).contains(&data[0]) && !(64..=95).contains(&(data[1] & 0x7f));
    rtp.then(|| u32::from_be_bytes([data[8], data[9], data[10], data[11]]))
}

/// The sequence number of an RTP packet (as [`rtp_ssrc`] tells RTP from the rest).
fn rtp_seq(data: &[u8]) -> Option<u16> {
    rtp_ssrc(data).map(|_| u16::from_be_bytes([data[2], data[3]]))
}

/// Asterisk writes `a=fingerprint:SHA-256`; str0m up to 0.24 compared the hash name
/// case-sensitively with its own "sha-256" and refused DTLS ("remote fingerprint no match").
/// RFC 8122 names are case-insensitive: lower-case them.
pub fn lowercase_fingerprint_hash(sdp: &str) -> String {
    sdp.split_inclusive('\n')
        .map(|l| match l.strip_prefix("a=fingerprint:").and_then(|r| r.split_once(' ')) {
            Some((hash, rest)) => format!("a=fingerprint:{} {rest}", hash.to_ascii_lowercase()),
            None => l.to_string(),
        })
        .collect()
}

/// Puts `addr` into the offer's `c=` line and audio `m=` port, as a non-trickle browser does
/// (RFC 8839 default candidate). str0m writes `c=IN IP4 0.0.0.0` and port 9 (trickle style);
/// Asterisk reads `0.0.0.0` the old SIP way, as hold, and answers `a=recvonly`: ICE and DTLS
/// still connect but no audio ever comes back.
pub fn with_default_candidate(sdp: &str, addr: SocketAddr) -> String {
    let family = if addr.is_ipv4() { "IP4" } else { "IP6" };
    sdp.split("\r\n")
        .map(|l| {
            if l.starts_with("c=IN ") {
                format!("c=IN {family} {}", addr.ip())
            } else if let Some(rest) = l.strip_prefix("m=audio ") {
                let (_, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                format!("m=audio {} {tail}", addr.port())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rtp_packets_give_an_ssrc() {
        let mut rtp = vec![0x80, 111, 0, 1, 0, 0, 0, 160, 0xde, 0xad, 0xbe, 0xef];
        assert_eq!(rtp_ssrc(&rtp), Some(0xdead_beef));
        rtp[1] = 0x80 | 111; // the marker bit set
        assert_eq!(rtp_ssrc(&rtp), Some(0xdead_beef));
        for rtcp_pt in [200u8, 201, 205, 206] {
            rtp[1] = rtcp_pt;
            assert_eq!(rtp_ssrc(&rtp), None, "RTCP {rtcp_pt}");
        }
        rtp[1] = 111;
        assert_eq!(rtp_ssrc(&rtp[..11]), None, "too short");
        let stun = [0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4];
        let dtls = [22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!((rtp_ssrc(&stun), rtp_ssrc(&dtls)), (None, None));
    }

    #[test]
    fn an_unnamed_ssrc_is_taken_only_where_nothing_was_named_and_kept_once_heard() {
        let crypto = std::sync::Arc::new(str0m::crypto::from_feature_flags());
        let new_rtc = || Rtc::builder().set_crypto_provider(crypto.clone()).build(Instant::now());
        let mid: Mid = "0".into();
        let streams = |rtc: &mut Rtc| {
            let mut api = rtc.direct_api();
            [0u32, 5, 7, 8, 9].into_iter().filter(|s| api.stream_rx(&(*s).into()).is_some()).collect::<Vec<_>>()
        };
        // No media negotiated yet: nothing (str0m would panic).
        let mut rtc = new_rtc();
        let mut taken = None;
        expect_unsignalled(&mut rtc, mid, &mut taken, false, 7);
        assert_eq!(taken, None);
        rtc.direct_api().declare_media(mid, MediaKind::Audio);
        // SSRC 0 is libwebrtc's probe, never audio.
        expect_unsignalled(&mut rtc, mid, &mut taken, false, 0);
        assert_eq!((taken, streams(&mut rtc)), (None, vec![]));
        // The first unnamed SSRC is taken; while nothing was heard a later one replaces it.
        expect_unsignalled(&mut rtc, mid, &mut taken, false, 7);
        assert_eq!((taken, streams(&mut rtc)), (Some(7), vec![7]));
        expect_unsignalled(&mut rtc, mid, &mut taken, false, 8);
        assert_eq!((taken, streams(&mut rtc)), (Some(8), vec![8]));
        // Once audio came in on it, it stays.
        expect_unsignalled(&mut rtc, mid, &mut taken, true, 9);
        assert_eq!((taken, streams(&mut rtc)), (Some(8), vec![8]));
        // An answer that named its SSRC (5) is never second-guessed.
        let mut rtc = new_rtc();
        rtc.direct_api().declare_media(mid, MediaKind::Audio);
        rtc.direct_api().expect_stream_rx(5.into(), None, mid, None);
        let mut taken = None;
        expect_unsignalled(&mut rtc, mid, &mut taken, false, 7);
        assert_eq!((taken, streams(&mut rtc)), (None, vec![5]));
    }

    #[test]
    fn fingerprint_hash_is_lowercased() {
        let sdp = "m=audio 1 UDP/TLS/RTP/SAVPF 111\r\na=fingerprint:SHA-256 0F:71\r\na=setup:active\r\n";
        assert_eq!(
            lowercase_fingerprint_hash(sdp),
            "m=audio 1 UDP/TLS/RTP/SAVPF 111\r\na=fingerprint:sha-256 0F:71\r\na=setup:active\r\n"
        );
    }

    #[test]
    fn default_candidate_replaces_connection_and_port() {
        let sdp = "v=0\r\nc=IN IP4 0.0.0.0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n";
        let out = with_default_candidate(sdp, "192.0.2.2:40000".parse().unwrap());
        assert_eq!(out, "v=0\r\nc=IN IP4 192.0.2.2\r\nm=audio 40000 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n");
    }

    #[tokio::test]
    async fn an_offer_is_what_a_browser_sends_with_a_real_default_candidate() {
        let shared = SharedMedia::new().unwrap();
        let (session, sdp) =
            WebrtcSession::offer(&["127.0.0.1".parse().unwrap()], &shared, None, Offer::Opus).await.unwrap();
        let port = session.local_candidates()[0].addr.port();
        for needle in [
            "a=group:BUNDLE".to_string(),
            "a=rtcp-mux".into(),
            "UDP/TLS/RTP/SAVPF".into(),
            "opus/48000/2".into(),
            "a=fingerprint:sha-256".into(),
            "c=IN IP4 127.0.0.1".into(),
            format!("m=audio {port} "),
        ] {
            assert!(sdp.contains(&needle), "{needle} missing from\n{sdp}");
        }
    }
}
