//! A plain SIP phone that answers: registered over UDP as one endpoint, it answers every INVITE
//! the server sends it with G.711 µ-law and sends each call's audio straight back (an echo on
//! the phone's side). `astrtc bench calls --kind webrtc-to-sip` calls it from WebRTC, so that
//! Asterisk transcodes opus to G.711 and back on every call.
//!
//! Owns: the registration, the answering side of each dialog (100 Trying, 200 OK with SDP,
//! 200 retransmitted until the ACK arrives — RFC 3261 timer G doubling from 500 ms up to 4 s,
//! given up after 32 s — and 200 to the server's BYE) and one RTP socket pair for all the calls
//! it answers: every call's SDP names the same port, each packet goes back to the address it
//! came from (each of Asterisk's channels sends from a port of its own), so a thousand calls
//! cost two sockets. It is one future on the caller's runtime and spawns nothing.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;

use super::rtp::{bind_pair, enlarge_receive_buffer, pcmu_sdp, SHARED_BUFFER_BYTES};
use super::sip::{SipError, SipMessage, StartLine, Transport, UserAgent};
use super::token;

/// How long a registration asks for; the phone refreshes it at half time (a refresh answers
/// INVITEs that arrive while it waits with 501: runs are far shorter than half an hour).
const REGISTER_EXPIRES: u32 = 3600;

/// Why the answering phone could not start.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    /// Registering failed.
    #[error("the answering phone could not register")]
    Register(#[source] SipError),
    /// A socket could not be bound.
    #[error("failed to bind the answering phone's RTP sockets on {addr}")]
    Socket {
        /// The address.
        addr: IpAddr,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The SIP socket has no local address.
    #[error("the SIP socket has no local address")]
    NoAddress,
}

/// What the answering phone did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnswerFigures {
    /// INVITEs received (new calls; retransmissions not counted).
    pub invites: u64,
    /// Calls confirmed by the server's ACK.
    pub confirmed: u64,
    /// Calls the server hung up (BYE).
    pub hung_up: u64,
    /// RTP packets received and sent back.
    pub echoed: u64,
}

struct Pending {
    request: SipMessage,
    tag: String,
    next: tokio::time::Instant,
    interval: Duration,
    given_up_at: tokio::time::Instant,
}

/// A registered phone that answers every call.
pub struct AnsweringPhone {
    ua: UserAgent,
    rtp: UdpSocket,
    rtcp: UdpSocket,
    rtp_addr: SocketAddr,
    figures: AnswerFigures,
}

impl AnsweringPhone {
    /// Registers `user` at the SIP server over UDP and binds the RTP pair on the address that
    /// routes to it.
    pub async fn register(
        server: SocketAddr,
        user: &str,
        password: &str,
        domain: &str,
    ) -> Result<AnsweringPhone, AnswerError> {
        let transport = Transport::udp(server).await.map_err(AnswerError::Register)?;
        let ip = transport.local_addr().ok_or(AnswerError::NoAddress)?.ip();
        let (rtp, rtcp) = bind_pair(ip).await.map_err(|source| AnswerError::Socket { addr: ip, source })?;
        let rtp_addr = rtp.local_addr().map_err(|source| AnswerError::Socket { addr: ip, source })?;
        // Every call's audio lands in this one socket: a default buffer (about 160 small
        // datagrams) overflows in a 50 ms stall at 60 calls. Measured: 21 % loss at 60 calls
        // before, from the kernel's RcvbufErrors.
        enlarge_receive_buffer(&rtp, SHARED_BUFFER_BYTES);
        let mut ua = UserAgent::new(transport, user, password, domain);
        ua.register(REGISTER_EXPIRES).await.map_err(AnswerError::Register)?;
        Ok(AnsweringPhone { ua, rtp, rtcp, rtp_addr, figures: AnswerFigures::default() })
    }

    /// Answers calls and echoes their audio until `stop` fires; then unregisters and returns
    /// what it did. A SIP error on the socket ends it early.
    pub async fn run(mut self, mut stop: oneshot::Receiver<()>) -> Result<AnswerFigures, SipError> {
        let mut pending: HashMap<String, Pending> = HashMap::new();
        let mut tags: HashMap<String, String> = HashMap::new();
        let (mut buf, mut rtcp_buf) = (vec![0u8; 2048], vec![0u8; 2048]);
        let refresh_every = Duration::from_secs(u64::from(REGISTER_EXPIRES / 2));
        let mut refresh = tokio::time::interval_at(tokio::time::Instant::now() + refresh_every, refresh_every);
        let sdp = pcmu_sdp(self.rtp_addr);
        let contact = format!("Contact: {}", self.ua.contact());
        loop {
            let next_retransmit = pending.values().map(|p| p.next).min();
            tokio::select! {
                m = self.ua.next_message() => {
                    let m = m?;
                    let StartLine::Request { method, .. } = &m.start else { continue };
                    let call_id = m.header("Call-ID").unwrap_or_default().to_string();
                    match method.as_str() {
                        "INVITE" => {
                            let known = tags.contains_key(&call_id);
                            let tag = tags.entry(call_id.clone()).or_insert_with(token).clone();
                            if !known {
                                self.figures.invites += 1;
                            }
                            self.ua.respond(&m, "100 Trying", None, &[], None).await?;
                            self.ua.respond(&m, "200 OK", Some(&tag), std::slice::from_ref(&contact), Some(&sdp)).await?;
                            let now = tokio::time::Instant::now();
                            let interval = Duration::from_millis(500);
                            pending.insert(call_id, Pending {
                                request: m, tag, next: now + interval, interval, given_up_at: now + Duration::from_secs(32),
                            });
                        }
                        "ACK" => {
                            if pending.remove(&call_id).is_some() {
                                self.figures.confirmed += 1;
                            }
                        }
                        "BYE" | "CANCEL" => {
                            pending.remove(&call_id);
                            if tags.remove(&call_id).is_some() {
                                self.figures.hung_up += 1;
                            }
                            self.ua.respond(&m, "200 OK", None, &[], None).await?;
                        }
                        "OPTIONS" => self.ua.respond(&m, "200 OK", None, &[], None).await?,
                        _ => self.ua.respond(&m, "501 Not Implemented", None, &[], None).await?,
                    }
                }
                r = self.rtp.recv_from(&mut buf) => {
                    if let Ok((n, from)) = r {
                        // An ICMP error from an earlier send: nothing to echo.
                        if self.rtp.send_to(&buf[..n], from).await.is_ok() {
                            self.figures.echoed += 1;
                        }
                    }
                }
                _ = self.rtcp.recv_from(&mut rtcp_buf) => {}
                _ = tokio::time::sleep_until(next_retransmit.unwrap_or_else(tokio::time::Instant::now)), if next_retransmit.is_some() => {
                    let now = tokio::time::Instant::now();
                    pending.retain(|_, p| p.given_up_at > now);
                    for p in pending.values_mut().filter(|p| p.next <= now) {
                        self.ua.respond(&p.request, "200 OK", Some(&p.tag), std::slice::from_ref(&contact), Some(&sdp)).await?;
                        p.interval = (p.interval * 2).min(Duration::from_secs(4));
                        p.next = now + p.interval;
                    }
                }
                _ = refresh.tick() => {
                    self.ua.register(REGISTER_EXPIRES).await?;
                }
                _ = &mut stop => break,
            }
        }
        let _ = self.ua.register(0).await;
        self.ua.close().await;
        Ok(self.figures)
    }
}
