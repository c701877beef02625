//! The media of a plain SIP call: RTP/AVP over UDP with G.711 µ-law, SDP written by hand, no
//! ICE, no SRTP, no rtcp-mux (an even/odd port pair is bound so Asterisk's RTCP has somewhere to
//! go). Asterisk's plain endpoints have `rtp_symmetric = yes`: it sends to where our RTP comes
//! from, so a client behind NAT works once its first packet arrives.
//!
//! Owns: the port pair ([`RtpPort`]: one for any number of calls, one future serving them all,
//! its I/O batched by [`super::udp_batch`]), the offer, RTP packets (built and parsed), and each
//! call's sending and echo measurement. Parsing never panics on what arrives.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use super::audio::ToneLoop;
use super::sdp;
use super::stats::{EchoMeter, MediaFigures};
use super::udp_batch::{next_wake, stamp_arrivals, BatchReceiver, BatchSender};
use super::RunPlan;

/// PCMU's static payload type.
pub const PCMU: u8 = 0;

/// Why the plain RTP media could not start.
#[derive(Debug, thiserror::Error)]
pub enum RtpError {
    /// A socket could not be bound.
    #[error("failed to bind a UDP socket on {addr}")]
    Socket {
        /// The address.
        addr: IpAddr,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The answer could not be used.
    #[error("the SDP answer is not usable: {0}")]
    BadAnswer(String),
}

/// What the plain RTP media measured.
#[derive(Debug, Clone)]
pub struct PlainReport {
    /// Our RTP address.
    pub local: SocketAddr,
    /// Where Asterisk said to send RTP.
    pub remote: SocketAddr,
    /// Echo figures.
    pub media: MediaFigures,
    /// RTCP packets received on the odd port.
    pub rtcp_received: u64,
}

/// The receive buffer of a port that many calls share: about two seconds of 1000 calls' audio
/// (a default buffer, about 160 small datagrams, overflows in a 50 ms stall at 60 calls).
pub(crate) const SHARED_BUFFER_BYTES: usize = 64 << 20;

/// Asks for a receive buffer of `bytes`: beyond `net.core.rmem_max` when allowed (root:
/// `SO_RCVBUFFORCE`), else up to it. Best effort: a smaller buffer only means loss sooner.
pub(crate) fn enlarge_receive_buffer(sock: &impl std::os::fd::AsRawFd, bytes: usize) {
    let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: setsockopt reads `len` bytes from a live c_int on a socket this process owns.
        let ok = unsafe {
            libc::setsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, option, std::ptr::from_ref(&size).cast(), len)
        } == 0;
        if ok {
            return;
        }
    }
}

/// What a call asks of the port it shares.
enum Command {
    /// Start sending the tone to `remote` every 20 ms and measuring its echo.
    Start { id: u64, remote: SocketAddr, tone: Arc<ToneLoop>, tail: Duration, report: oneshot::Sender<PlainReport> },
    /// Stop sending; keep receiving for the call's tail, then report.
    Stop { id: u64 },
}

/// One call's media on a shared port.
struct PortCall {
    remote: SocketAddr,
    tone: Arc<ToneLoop>,
    meter: EchoMeter,
    ssrc: u32,
    ts: u32,
    seq: u16,
    frame_no: u64,
    /// When the next frame is due.
    next: tokio::time::Instant,
    tail: Duration,
    /// Set once stopped: when the call reports.
    end: Option<tokio::time::Instant>,
    rtcp_received: u64,
    report: Option<oneshot::Sender<PlainReport>>,
}

/// An even/odd UDP port pair that carries the plain RTP of any number of calls, as
/// [`super::answer`]'s phone does for the calls it answers: every call's SDP names the same
/// port, Asterisk's channels each send from a port of their own (and with `rtp_symmetric` back
/// to where our RTP comes from), so a datagram's source tells its call. One future serves them
/// all ([`RtpPort::run`]): it wakes when a frame is due (at least every [`READ_EVERY`]), sends
/// every frame due with one `sendmmsg` and reads whatever has arrived with `recvmmsg` — so
/// hundreds of calls cost one task's wake-ups a millisecond, not one task's per call per packet
/// and per 20 ms tick. No datagram wakes it (its sockets are outside tokio's reactor); each keeps
/// the kernel's arrival time, so a late read moves no round trip.
pub struct RtpPort {
    rtp: std::net::UdpSocket,
    rtcp: std::net::UdpSocket,
    local: SocketAddr,
    commands: mpsc::UnboundedReceiver<Command>,
}

/// A handle on an [`RtpPort`]: what a call needs to use it. Cheap to clone.
#[derive(Clone)]
pub struct RtpPortHandle {
    local: SocketAddr,
    commands: mpsc::UnboundedSender<Command>,
    ids: Arc<AtomicU64>,
}

impl RtpPortHandle {
    /// The port's RTP address.
    pub fn local(&self) -> SocketAddr {
        self.local
    }
}

impl RtpPort {
    /// Binds an even RTP port on `ip` and the odd one above it.
    pub async fn bind(ip: IpAddr) -> Result<(RtpPort, RtpPortHandle), RtpError> {
        let err = |source| RtpError::Socket { addr: ip, source };
        let (rtp, rtcp) = bind_pair(ip).await.map_err(err)?;
        let local = rtp.local_addr().map_err(err)?;
        // Read in batches when the port wakes up anyway, never woken by a datagram: out of
        // tokio's reactor (still non-blocking), each datagram stamped by the kernel.
        let (rtp, rtcp) = (rtp.into_std().map_err(err)?, rtcp.into_std().map_err(err)?);
        stamp_arrivals(&rtp).map_err(err)?;
        enlarge_receive_buffer(&rtp, SHARED_BUFFER_BYTES);
        let (tx, commands) = mpsc::unbounded_channel();
        let handle = RtpPortHandle { local, commands: tx, ids: Arc::new(AtomicU64::new(0)) };
        Ok((RtpPort { rtp, rtcp, local, commands }, handle))
    }

    /// Serves the calls until every handle is dropped and the last call has reported.
    pub async fn run(mut self) {
        let mut calls: HashMap<u64, PortCall> = HashMap::new();
        // Each call's next event (a frame due, or its end), earliest first.
        let mut due: BinaryHeap<Reverse<(tokio::time::Instant, u64)>> = BinaryHeap::new();
        // Where each call's RTP and RTCP come from (learnt from the first datagram when it is
        // not the answer's address: a multi-homed server may send from another of its IPs).
        let mut by_source: HashMap<SocketAddr, u64> = HashMap::new();
        let (mut receiver, mut sender) = (BatchReceiver::default(), BatchSender::default());
        let mut packet = Vec::with_capacity(12 + 160);
        let mut open = true;
        let sleep = tokio::time::sleep_until(tokio::time::Instant::now());
        tokio::pin!(sleep);
        loop {
            // What has arrived since the last wake-up, each datagram at its arrival time.
            receiver.drain(&self.rtp, |from, at, bytes| {
                let Some(call) = call_of(&mut by_source, &calls, from, 0).and_then(|id| calls.get_mut(&id)) else {
                    return;
                };
                if let Some(p) = RtpPacket::parse(bytes).filter(|p| p.pt == PCMU) {
                    call.meter.on_received(p.payload, at, p.ts, p.seq);
                }
            });
            receiver.drain(&self.rtcp, |from, _, _| {
                if let Some(call) = call_of(&mut by_source, &calls, from, 1).and_then(|id| calls.get_mut(&id)) {
                    call.rtcp_received += 1;
                }
            });
            let now = tokio::time::Instant::now();
            while let Some(&Reverse((at, id))) = due.peek() {
                if at > now {
                    break;
                }
                due.pop();
                let Some(call) = calls.get_mut(&id) else { continue };
                match call.end {
                    Some(end) if end <= now => {
                        let call = calls.remove(&id).expect("present");
                        by_source.retain(|_, v| *v != id);
                        if let Some(tx) = call.report {
                            let media = call.meter.figures();
                            let (local, remote, rtcp_received) = (self.local, call.remote, call.rtcp_received);
                            let _ = tx.send(PlainReport { local, remote, media, rtcp_received });
                        }
                    }
                    // A frame event of a stopped call: its end event is queued.
                    Some(_) => {}
                    None => {
                        // Every frame is sent, late ones at once (as a Burst interval would).
                        let payload = call.tone.frame(call.frame_no);
                        let (pt, seq, ts, ssrc) = (PCMU, call.seq, call.ts, call.ssrc);
                        RtpPacket { marker: call.frame_no == 0, pt, seq, ts, ssrc, payload }.write(&mut packet);
                        call.meter.on_sent(payload, Instant::now());
                        sender.push(&packet, call.remote);
                        call.frame_no += 1;
                        call.seq = call.seq.wrapping_add(1);
                        call.ts = call.ts.wrapping_add(call.tone.samples_per_frame);
                        call.next += FRAME;
                        due.push(Reverse((call.next, id)));
                    }
                }
            }
            // The frames due now, in one system call (a refused one is loss, not failure).
            sender.flush(&self.rtp);
            if !open && calls.is_empty() {
                return;
            }
            // Wake for the next event, and at least every READ_EVERY while calls are up.
            let wake = next_wake(due.peek().map(|Reverse((at, _))| *at), !calls.is_empty(), now, READ_EVERY);
            if let Some(at) = wake {
                sleep.as_mut().reset(at);
            }
            tokio::select! {
                c = self.commands.recv(), if open => match c {
                    Some(Command::Start { id, remote, tone, tail, report }) => {
                        let rnd = super::random_bytes::<10>();
                        let next = tokio::time::Instant::now();
                        by_source.insert(remote, id);
                        calls.insert(id, PortCall {
                            remote,
                            tone,
                            meter: EchoMeter::new(8000),
                            ssrc: u32::from_be_bytes([rnd[0], rnd[1], rnd[2], rnd[3]]),
                            ts: u32::from_be_bytes([rnd[4], rnd[5], rnd[6], rnd[7]]),
                            seq: u16::from_be_bytes([rnd[8], rnd[9]]),
                            frame_no: 0,
                            next,
                            tail,
                            end: None,
                            rtcp_received: 0,
                            report: Some(report),
                        });
                        due.push(Reverse((next, id)));
                    }
                    Some(Command::Stop { id }) => {
                        if let Some(call) = calls.get_mut(&id).filter(|c| c.end.is_none()) {
                            let end = tokio::time::Instant::now() + call.tail;
                            call.end = Some(end);
                            due.push(Reverse((end, id)));
                        }
                    }
                    None => open = false,
                },
                _ = &mut sleep, if wake.is_some() => {}
            }
        }
    }
}

/// Longest a port with calls up leaves what arrived unread (the datagrams keep the kernel's
/// arrival times, so this bounds only the buffer they wait in).
const READ_EVERY: Duration = Duration::from_millis(2);

/// 20 ms of audio per packet.
const FRAME: Duration = Duration::from_millis(20);

/// The call a datagram from `from` belongs to: by its source address, else (the first datagram
/// from another address of the server) the only call on the port, or the one call whose answer
/// named that port less `offset` (0 for RTP, 1 for RTCP on the port above); learnt for the next
/// time.
fn call_of(
    by_source: &mut HashMap<SocketAddr, u64>,
    calls: &HashMap<u64, PortCall>,
    from: SocketAddr,
    offset: u16,
) -> Option<u64> {
    if let Some(id) = by_source.get(&from) {
        return Some(*id);
    }
    // The only call on the port takes anything, as a port of its own would (one `verify --call`).
    let id = match calls.keys().next() {
        Some(id) if calls.len() == 1 => *id,
        _ => {
            let port = from.port().checked_sub(offset)?;
            let mut matching = calls.iter().filter(|(_, c)| c.remote.port() == port);
            let (id, _) = matching.next()?;
            if matching.next().is_some() {
                return None;
            }
            *id
        }
    };
    by_source.insert(from, id);
    Some(id)
}

/// An offer made, waiting for its answer.
pub struct PlainRtpSession {
    port: RtpPortHandle,
    remote: Option<SocketAddr>,
    tone: Arc<ToneLoop>,
}

impl PlainRtpSession {
    /// A call on `port` (whose SDP it names), and the SDP offer (PCMU and telephone-event,
    /// 20 ms).
    pub fn offer(port: &RtpPortHandle, tone: Arc<ToneLoop>) -> (PlainRtpSession, String) {
        (PlainRtpSession { port: port.clone(), remote: None, tone }, pcmu_sdp(port.local))
    }

    /// Our RTP address.
    pub fn local(&self) -> SocketAddr {
        self.port.local
    }

    /// Reads where to send from the answer and checks it accepted PCMU.
    pub fn accept_answer(&mut self, sdp: &str) -> Result<SocketAddr, RtpError> {
        let audio = sdp::audio(sdp).ok_or_else(|| RtpError::BadAnswer("no m=audio line".into()))?;
        let remote = audio.addr().ok_or_else(|| RtpError::BadAnswer("no c= address for the audio".into()))?;
        if remote.port() == 0 {
            return Err(RtpError::BadAnswer("the audio stream was rejected (port 0)".into()));
        }
        if !audio.payload_types.contains(&PCMU) {
            return Err(RtpError::BadAnswer(format!("the answer has {:?}, not PCMU", audio.codec_names())));
        }
        self.remote = Some(remote);
        Ok(remote)
    }

    /// Has the port send the tone every 20 ms until `plan.stop` fires (then listen `plan.tail`
    /// more); its report. Nothing measured when the port is gone.
    pub async fn run(self, plan: RunPlan) -> PlainReport {
        let local = self.port.local;
        let nothing = |remote| PlainReport { local, remote, media: MediaFigures::default(), rtcp_received: 0 };
        let Some(remote) = self.remote else { return nothing(local) };
        let id = self.port.ids.fetch_add(1, Ordering::Relaxed);
        let (report, reported) = oneshot::channel();
        let start = Command::Start { id, remote, tone: self.tone, tail: plan.tail, report };
        if self.port.commands.send(start).is_err() {
            return nothing(remote);
        }
        // This task sleeps until the call ends; the port does the media.
        let _ = plan.stop.await;
        let _ = self.port.commands.send(Command::Stop { id });
        reported.await.unwrap_or_else(|_| nothing(remote))
    }
}

/// Binds an even RTP port on `ip` and the odd one above it, as a phone does.
pub async fn bind_pair(ip: IpAddr) -> std::io::Result<(UdpSocket, UdpSocket)> {
    loop {
        let rtp = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
        let port = rtp.local_addr()?.port();
        if port % 2 != 0 || port == u16::MAX {
            continue;
        }
        if let Ok(rtcp) = UdpSocket::bind(SocketAddr::new(ip, port + 1)).await {
            return Ok((rtp, rtcp));
        }
    }
}

/// A phone's SDP for `rtp`: PCMU and telephone-event, 20 ms, sendrecv (an offer or an answer).
pub fn pcmu_sdp(rtp: SocketAddr) -> String {
    let ip = rtp.ip();
    let family = if ip.is_ipv4() { "IP4" } else { "IP6" };
    let session_id = u32::from_be_bytes(super::random_bytes::<4>());
    format!(
        "v=0\r\no=- {session_id} 1 IN {family} {ip}\r\ns=astrtc\r\nc=IN {family} {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP {PCMU} 101\r\na=rtpmap:{PCMU} PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
         a=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n",
        port = rtp.port(),
    )
}

/// An RTP packet's fields (RFC 3550 section 5.1), borrowing its payload.
#[derive(Debug, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    /// Marker bit.
    pub marker: bool,
    /// Payload type.
    pub pt: u8,
    /// Sequence number.
    pub seq: u16,
    /// Timestamp.
    pub ts: u32,
    /// SSRC.
    pub ssrc: u32,
    /// Payload, without padding.
    pub payload: &'a [u8],
}

impl<'a> RtpPacket<'a> {
    /// Parses an RTP packet; `None` for RTCP (PT 72-76 with the marker bit) or malformed input.
    pub fn parse(b: &'a [u8]) -> Option<RtpPacket<'a>> {
        if b.len() < 12 || b[0] >> 6 != 2 {
            return None;
        }
        let pt = b[1] & 0x7f;
        if (72..=76).contains(&pt) {
            return None;
        }
        let cc = usize::from(b[0] & 0x0f);
        let mut at = 12 + 4 * cc;
        if b[0] & 0x10 != 0 {
            let len = usize::from(u16::from_be_bytes([*b.get(at + 2)?, *b.get(at + 3)?]));
            at += 4 + 4 * len;
        }
        let mut end = b.len();
        if b[0] & 0x20 != 0 {
            end = end.checked_sub(usize::from(*b.last()?))?;
        }
        Some(RtpPacket {
            marker: b[1] & 0x80 != 0,
            pt,
            seq: u16::from_be_bytes([b[2], b[3]]),
            ts: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            ssrc: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
            payload: b.get(at..end)?,
        })
    }

    /// Writes the packet into `out` (cleared first): version 2, no padding, extension or CSRC.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.clear();
        out.push(0x80);
        out.push(if self.marker { 0x80 | self.pt } else { self.pt });
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.ts.to_be_bytes());
        out.extend_from_slice(&self.ssrc.to_be_bytes());
        out.extend_from_slice(self.payload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtp_header_with_csrc_extension_and_padding() {
        let mut p = vec![0xB1, 0x00, 0x00, 0x07, 0, 0, 0, 160, 1, 2, 3, 4, 9, 9, 9, 9];
        p.extend_from_slice(&[0xBE, 0xDE, 0x00, 0x01, 1, 2, 3, 4]);
        p.extend_from_slice(&[0xAA, 0xBB, 0x00, 0x02]);
        let r = RtpPacket::parse(&p).unwrap();
        assert_eq!((r.pt, r.seq, r.ts, r.ssrc), (0, 7, 160, 0x01020304));
        assert_eq!(r.payload, &[0xAA, 0xBB]);
        assert!(RtpPacket::parse(&[0x80, 0xC8, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0]).is_none());
    }

    #[test]
    fn written_packets_parse_back_and_truncated_ones_do_not_panic() {
        let mut out = Vec::new();
        RtpPacket { marker: true, pt: 0, seq: 65535, ts: 7, ssrc: 9, payload: &[1, 2, 3] }.write(&mut out);
        let p = RtpPacket::parse(&out).unwrap();
        assert_eq!((p.marker, p.seq, p.ts, p.ssrc, p.payload), (true, 65535, 7, 9, &[1u8, 2, 3][..]));
        for n in 0..out.len() {
            let _ = RtpPacket::parse(&out[..n]);
        }
        // Padding longer than the packet, an extension running past the end.
        assert!(RtpPacket::parse(&[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff]).is_none());
        assert!(RtpPacket::parse(&[0x90, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]).is_none());
    }

    #[tokio::test]
    async fn the_offer_names_the_ports_even_rtp_port_and_pcmu() {
        let tone = Arc::new(ToneLoop::ulaw(10));
        let (_port, handle) = RtpPort::bind("127.0.0.1".parse().unwrap()).await.unwrap();
        let (session, sdp) = PlainRtpSession::offer(&handle, tone);
        assert_eq!(session.local().port() % 2, 0);
        assert!(sdp.contains(&format!("m=audio {} RTP/AVP 0 101", session.local().port())), "{sdp}");
    }

    /// Two echoes on loopback, each sending back what it gets; `mangle` echoes from another
    /// port than the one the answer named (as a stranger would).
    async fn echo(stranger: bool) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                let out = if stranger { &other } else { &sock };
                let _ = out.send_to(&buf[..n], from).await;
            }
        });
        (addr, task)
    }

    #[tokio::test]
    async fn calls_sharing_a_port_each_get_their_own_echo_and_nobody_a_strangers() {
        let (port, handle) = RtpPort::bind("127.0.0.1".parse().unwrap()).await.unwrap();
        let served = tokio::spawn(port.run());
        let tone = Arc::new(ToneLoop::ulaw(50));
        let (a, b, c) = (echo(false).await, echo(false).await, echo(true).await);
        let mut runs = Vec::new();
        for (remote, _) in [&a, &b, &c] {
            let (mut session, _) = PlainRtpSession::offer(&handle, tone.clone());
            let sdp = format!("v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio {} RTP/AVP 0\r\n", remote.port());
            session.accept_answer(&sdp).unwrap();
            let (stop, stopped) = oneshot::channel();
            let plan = RunPlan { stop: stopped, tail: Duration::from_millis(200), connect_timeout: Duration::ZERO };
            runs.push((stop, tokio::spawn(session.run(plan))));
            // The stranger's call joins a port that already has two (the only call on a port
            // takes anything, as a port of its own would).
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(handle);
        tokio::time::sleep(Duration::from_millis(300)).await;
        // All stop at once: none is alone on the port while it still sends.
        let (stops, runs): (Vec<_>, Vec<_>) = runs.into_iter().unzip();
        for stop in stops {
            let _ = stop.send(());
        }
        let mut reports = Vec::new();
        for run in runs {
            reports.push(run.await.unwrap());
        }
        for (r, remote) in reports.iter().zip([a.0, b.0, c.0]) {
            assert_eq!(r.remote, remote);
            assert!(r.media.sent > 0, "{r:?}");
        }
        // Each echoed call matched every packet it got back to one it sent: none of the other's.
        for r in &reports[..2] {
            assert!(r.media.received > 0 && r.media.matched == r.media.received, "{r:?}");
        }
        // The echo from a port no answer named, with two other calls on the port: nobody's.
        assert_eq!(reports[2].media.received, 0, "{:?}", reports[2]);
        // The port's future ends with its last call once every handle is gone.
        served.await.unwrap();
    }
}
