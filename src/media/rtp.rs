//! The media of a plain SIP call: RTP/AVP over UDP with G.711 µ-law, SDP written by hand, no
//! ICE, no SRTP, no rtcp-mux (an even/odd port pair is bound so Asterisk's RTCP has somewhere to
//! go). Asterisk's plain endpoints have `rtp_symmetric = yes`: it sends to where our RTP comes
//! from, so a client behind NAT works once its first packet arrives.
//!
//! Owns: the socket pair, the offer, RTP packets (built and parsed), and the send/receive loop
//! with its echo measurement. Parsing never panics on what arrives.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

use super::audio::ToneLoop;
use super::sdp;
use super::stats::{EchoMeter, MediaFigures};
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

/// An offer made, waiting for its answer.
pub struct PlainRtpSession {
    rtp: UdpSocket,
    rtcp: UdpSocket,
    local: SocketAddr,
    remote: Option<SocketAddr>,
    tone: Arc<ToneLoop>,
}

impl PlainRtpSession {
    /// Binds an even RTP port and the odd one above it on `ip`, and writes the SDP offer
    /// (PCMU and telephone-event, 20 ms).
    pub async fn offer(ip: IpAddr, tone: Arc<ToneLoop>) -> Result<(PlainRtpSession, String), RtpError> {
        let err = |source| RtpError::Socket { addr: ip, source };
        let (rtp, rtcp) = bind_pair(ip).await.map_err(err)?;
        let local = rtp.local_addr().map_err(err)?;
        Ok((PlainRtpSession { rtp, rtcp, local, remote: None, tone }, pcmu_sdp(local)))
    }

    /// Our RTP address.
    pub fn local(&self) -> SocketAddr {
        self.local
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

    /// Sends the tone every 20 ms until `plan.stop` fires (then listens `plan.tail` more).
    pub async fn run(self, mut plan: RunPlan) -> PlainReport {
        let Some(remote) = self.remote else {
            return PlainReport {
                local: self.local,
                remote: self.local,
                media: MediaFigures::default(),
                rtcp_received: 0,
            };
        };
        let mut meter = EchoMeter::new(8000);
        let rnd = super::random_bytes::<10>();
        let ssrc = u32::from_be_bytes([rnd[0], rnd[1], rnd[2], rnd[3]]);
        let mut ts = u32::from_be_bytes([rnd[4], rnd[5], rnd[6], rnd[7]]);
        let mut seq = u16::from_be_bytes([rnd[8], rnd[9]]);
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut end: Option<tokio::time::Instant> = None;
        let (mut buf, mut rtcp_buf) = (vec![0u8; 2048], vec![0u8; 2048]);
        let mut rtcp_received = 0;
        let mut frame_no = 0u64;
        let mut packet = Vec::with_capacity(12 + 160);
        loop {
            tokio::select! {
                _ = tick.tick(), if end.is_none() => {
                    let payload = self.tone.frame(frame_no);
                    RtpPacket { marker: frame_no == 0, pt: PCMU, seq, ts, ssrc, payload }.write(&mut packet);
                    meter.on_sent(payload, Instant::now());
                    // A send error (ICMP unreachable from an earlier packet) is loss, not failure.
                    let _ = self.rtp.send_to(&packet, remote).await;
                    frame_no += 1;
                    seq = seq.wrapping_add(1);
                    ts = ts.wrapping_add(self.tone.samples_per_frame);
                }
                r = self.rtp.recv_from(&mut buf) => {
                    let at = Instant::now();
                    if let Ok((n, _from)) = r {
                        if let Some(p) = RtpPacket::parse(&buf[..n]).filter(|p| p.pt == PCMU) {
                            meter.on_received(p.payload, at, p.ts, p.seq);
                        }
                    }
                }
                r = self.rtcp.recv_from(&mut rtcp_buf) => {
                    if r.is_ok() {
                        rtcp_received += 1;
                    }
                }
                _ = &mut plan.stop, if end.is_none() => end = Some(tokio::time::Instant::now() + plan.tail),
                _ = tokio::time::sleep_until(end.unwrap_or_else(tokio::time::Instant::now)), if end.is_some() => break,
            }
        }
        PlainReport { local: self.local, remote, media: meter.figures(), rtcp_received }
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
    async fn the_offer_binds_an_even_odd_pair_and_names_pcmu() {
        let tone = Arc::new(ToneLoop::ulaw(10));
        let (session, sdp) = PlainRtpSession::offer("127.0.0.1".parse().unwrap(), tone).await.unwrap();
        assert_eq!(session.local().port() % 2, 0);
        assert!(sdp.contains(&format!("m=audio {} RTP/AVP 0 101", session.local().port())), "{sdp}");
    }
}
