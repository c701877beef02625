//! A TURN client (RFC 8656) just big enough to force a call's WebRTC media through a relay, as a
//! browser does with `iceTransportPolicy: "relay"`: an Allocate with long-term credentials (the
//! 401 challenge answered with MESSAGE-INTEGRITY, a stale nonce retried), CreatePermission for
//! each of the peer's addresses, and media carried in Send and Data indications. It reaches the
//! TURN server over UDP, TCP or TLS (`turns:`; RFC 8656 section 3.1: the relay is UDP either way,
//! only the leg to the server changes — the way through a network that blocks all UDP).
//! str0m has no TURN of its own: it only knows the relayed address as a local ICE candidate.
//!
//! Owns: the STUN wire format of these few messages ([`Message`]), its framing on a stream
//! ([`TurnStream`]) and one [`Allocation`]. The exchanges before the media starts are
//! request/response (retransmitted over UDP) on the call's own socket or stream; during the
//! media, [`Allocation::wrap`] and [`Allocation::unwrap`] translate datagrams and refreshes are
//! sent without waiting for answers. Parsing never panics on what arrives.

use std::future::poll_fn;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use md5::{Digest, Md5};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UdpSocket};

use crate::spec::valid::Secret;

/// The STUN magic cookie (RFC 5389).
const MAGIC: u32 = 0x2112_A442;

const BINDING: u16 = 0x0001;
const ALLOCATE: u16 = 0x0003;
const REFRESH: u16 = 0x0004;
const CREATE_PERMISSION: u16 = 0x0008;
const SEND_INDICATION: u16 = 0x0016;
const DATA_INDICATION: u16 = 0x0017;
/// Class bits of a success response.
const SUCCESS: u16 = 0x0100;

const ATTR_USERNAME: u16 = 0x0006;
const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
const ATTR_ERROR_CODE: u16 = 0x0009;
const ATTR_LIFETIME: u16 = 0x000D;
const ATTR_XOR_PEER_ADDRESS: u16 = 0x0012;
const ATTR_DATA: u16 = 0x0013;
const ATTR_REALM: u16 = 0x0014;
const ATTR_NONCE: u16 = 0x0015;
const ATTR_XOR_RELAYED_ADDRESS: u16 = 0x0016;
const ATTR_REQUESTED_TRANSPORT: u16 = 0x0019;
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
const ATTR_SOFTWARE: u16 = 0x8022;

/// How long one request waits for its answer, in all (retransmitted at 250 ms, doubling).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// A TURN server, how to reach it, and the long-term credentials for it.
#[derive(Debug, Clone)]
pub struct TurnServer {
    /// Its address (UDP, or TCP for the stream transports).
    pub addr: SocketAddr,
    /// User name.
    pub username: String,
    /// Password.
    pub password: Secret,
    /// UDP, TCP or TLS.
    pub transport: TurnTransport,
}

/// How the client reaches the TURN server (the relay itself is UDP in every case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TurnTransport {
    /// `turn:…?transport=udp`.
    Udp,
    /// `turn:…?transport=tcp`: STUN messages framed by their own length on one connection.
    Tcp,
    /// `turns:`: the same over TLS, the certificate verified for `name` against `ca_pem`.
    Tls {
        /// The name the certificate must carry.
        name: String,
        /// The CA certificates to trust (PEM).
        ca_pem: String,
    },
}

impl std::fmt::Display for TurnTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TurnTransport::Udp => "udp",
            TurnTransport::Tcp => "tcp",
            TurnTransport::Tls { .. } => "tls",
        })
    }
}

/// Why the relay could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    /// The socket or connection failed.
    #[error("the connection to the TURN server {server} failed")]
    Io {
        /// The server.
        server: SocketAddr,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// No TCP connection, or the TLS handshake failed (certificate for another name, unknown
    /// issuer, expired...).
    #[error("no {transport} connection to the TURN server {server}: {message}")]
    Connect {
        /// The server.
        server: SocketAddr,
        /// tcp or tls.
        transport: String,
        /// Why.
        message: String,
    },
    /// No answer.
    #[error("no answer from the TURN server {server} to {request} within {REQUEST_TIMEOUT:?}")]
    Timeout {
        /// The server.
        server: SocketAddr,
        /// Binding, Allocate or CreatePermission.
        request: &'static str,
    },
    /// The server refused the credentials (a second 401).
    #[error("the TURN server {server} refused the credentials of {username:?} ({code} {reason})")]
    Unauthorized {
        /// The server.
        server: SocketAddr,
        /// The user name sent.
        username: String,
        /// 401 (or 441).
        code: u16,
        /// Its reason phrase.
        reason: String,
    },
    /// Another error response.
    #[error("the TURN server {server} answered {request} with {code} {reason}")]
    Rejected {
        /// The server.
        server: SocketAddr,
        /// Allocate or CreatePermission.
        request: &'static str,
        /// Error code (403: the peer is not allowed, 486: allocation quota...).
        code: u16,
        /// Its reason phrase.
        reason: String,
    },
    /// A success response without the address it must carry.
    #[error("the TURN server {server} answered {request} without {missing}")]
    Incomplete {
        /// The server.
        server: SocketAddr,
        /// Allocate.
        request: &'static str,
        /// The attribute missing.
        missing: &'static str,
    },
}

/// A STUN message: its type, transaction id and attributes (values unpadded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Method and class.
    pub kind: u16,
    /// Transaction id.
    pub txid: [u8; 12],
    /// Attributes in order.
    pub attrs: Vec<(u16, Vec<u8>)>,
}

impl Message {
    fn new(kind: u16) -> Message {
        Message { kind, txid: super::random_bytes::<12>(), attrs: Vec::new() }
    }

    fn attr(mut self, kind: u16, value: Vec<u8>) -> Message {
        self.attrs.push((kind, value));
        self
    }

    /// The first attribute of this type.
    pub fn get(&self, kind: u16) -> Option<&[u8]> {
        self.attrs.iter().find(|(k, _)| *k == kind).map(|(_, v)| v.as_slice())
    }

    /// The message on the wire; with `key`, a MESSAGE-INTEGRITY (HMAC-SHA1) ends it.
    pub fn encode(&self, key: Option<&[u8]>) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&self.kind.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&MAGIC.to_be_bytes());
        out.extend_from_slice(&self.txid);
        for (kind, value) in &self.attrs {
            push_attr(&mut out, *kind, value);
        }
        if let Some(key) = key {
            // The length covers the integrity attribute itself (RFC 5389 section 15.4).
            set_length(&mut out, 24);
            let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key), &out);
            push_attr(&mut out, ATTR_MESSAGE_INTEGRITY, tag.as_ref());
        }
        set_length(&mut out, 0);
        out
    }

    /// Parses a STUN message; `None` for anything else (RTP, DTLS, garbage).
    pub fn decode(b: &[u8]) -> Option<Message> {
        if b.len() < 20 || b[0] & 0xc0 != 0 || u32::from_be_bytes([b[4], b[5], b[6], b[7]]) != MAGIC {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([b[2], b[3]]));
        let body = b.get(20..20 + len)?;
        let mut txid = [0u8; 12];
        txid.copy_from_slice(&b[8..20]);
        let mut attrs = Vec::new();
        let mut at = 0;
        while at + 4 <= body.len() {
            let kind = u16::from_be_bytes([body[at], body[at + 1]]);
            let alen = usize::from(u16::from_be_bytes([body[at + 2], body[at + 3]]));
            let value = body.get(at + 4..at + 4 + alen)?;
            attrs.push((kind, value.to_vec()));
            at += 4 + alen.div_ceil(4) * 4;
        }
        Some(Message { kind: u16::from_be_bytes([b[0], b[1]]), txid, attrs })
    }

    /// The ERROR-CODE attribute: code and reason.
    pub fn error(&self) -> Option<(u16, String)> {
        let v = self.get(ATTR_ERROR_CODE)?;
        let code = u16::from(*v.get(2)? & 0x07) * 100 + u16::from(*v.get(3)?);
        Some((code, String::from_utf8_lossy(v.get(4..)?).into_owned()))
    }
}

fn push_attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
    out.resize(out.len() + (4 - value.len() % 4) % 4, 0);
}

/// Sets the header's length to the body so far plus `extra` bytes still to come.
fn set_length(out: &mut [u8], extra: usize) {
    let len = (out.len() - 20 + extra) as u16;
    out[2..4].copy_from_slice(&len.to_be_bytes());
}

/// An XOR-…-ADDRESS value (RFC 5389 section 15.2).
pub fn xor_address(addr: SocketAddr, txid: &[u8; 12]) -> Vec<u8> {
    let port = addr.port() ^ (MAGIC >> 16) as u16;
    let mut v = vec![0u8, if addr.is_ipv4() { 1 } else { 2 }];
    v.extend_from_slice(&port.to_be_bytes());
    let mut mask = MAGIC.to_be_bytes().to_vec();
    mask.extend_from_slice(txid);
    match addr.ip() {
        IpAddr::V4(ip) => v.extend(ip.octets().iter().zip(&mask).map(|(a, m)| a ^ m)),
        IpAddr::V6(ip) => v.extend(ip.octets().iter().zip(&mask).map(|(a, m)| a ^ m)),
    }
    v
}

/// Reads an XOR-…-ADDRESS value.
pub fn read_xor_address(v: &[u8], txid: &[u8; 12]) -> Option<SocketAddr> {
    let port = u16::from_be_bytes([*v.get(2)?, *v.get(3)?]) ^ (MAGIC >> 16) as u16;
    let mut mask = MAGIC.to_be_bytes().to_vec();
    mask.extend_from_slice(txid);
    let ip = match v.get(1)? {
        1 => {
            let b = v.get(4..8)?;
            IpAddr::from([b[0] ^ mask[0], b[1] ^ mask[1], b[2] ^ mask[2], b[3] ^ mask[3]])
        }
        2 => {
            let b = v.get(4..20)?;
            let mut o = [0u8; 16];
            for (i, x) in o.iter_mut().enumerate() {
                *x = b[i] ^ mask[i];
            }
            IpAddr::from(o)
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// A relayed address held on a TURN server for one call.
#[derive(Debug, Clone)]
pub struct Allocation {
    server: SocketAddr,
    username: String,
    realm: Vec<u8>,
    nonce: Vec<u8>,
    key: LongTermKey,
    password: Secret,
    /// The relayed address: peers send here, the ICE candidate of type relay.
    pub relayed: SocketAddr,
    /// Our address as the TURN server saw it (server-reflexive).
    pub mapped: Option<SocketAddr>,
    peers: Vec<IpAddr>,
    /// Peers the server would not let us reach (a 403 to their CreatePermission), with the
    /// answer's code and reason.
    pub refused: Vec<(IpAddr, u16, String)>,
}

/// The long-term credential key ([`long_term_key`]): as good as the password to the server,
/// so its `Debug` shows none of it.
#[derive(Clone)]
struct LongTermKey(Vec<u8>);

impl std::fmt::Debug for LongTermKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LongTermKey(<redacted>)")
    }
}

/// Where the control exchanges go: the call's UDP socket, or its stream to the server.
pub enum Link<'a> {
    /// A UDP socket (requests retransmitted).
    Udp(&'a UdpSocket),
    /// A TCP or TLS stream (reliable: sent once).
    Stream(&'a mut TurnStream),
}

/// Sends `msg` and waits for the response with its transaction id (retransmitting over UDP).
async fn exchange(
    link: &mut Link<'_>,
    server: SocketAddr,
    request: &'static str,
    msg: &Message,
    key: Option<&[u8]>,
) -> Result<Message, TurnError> {
    let bytes = msg.encode(key);
    let io = |source| TurnError::Io { server, source };
    let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
    let sock = match link {
        Link::Stream(stream) => {
            stream.send(&bytes).await.map_err(io)?;
            return loop {
                let frame = match tokio::time::timeout_at(deadline, stream.recv_frame()).await {
                    Err(_) => return Err(TurnError::Timeout { server, request }),
                    Ok(r) => r.map_err(io)?,
                };
                if let Some(m) = Message::decode(&frame).filter(|m| m.txid == msg.txid) {
                    break Ok(m);
                }
            };
        }
        Link::Udp(sock) => *sock,
    };
    let mut rto = Duration::from_millis(250);
    let mut buf = [0u8; 2048];
    loop {
        sock.send_to(&bytes, server).await.map_err(io)?;
        let wait = (tokio::time::Instant::now() + rto).min(deadline);
        loop {
            match tokio::time::timeout_at(wait, sock.recv_from(&mut buf)).await {
                Err(_) => break,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                Ok(Err(e)) => return Err(io(e)),
                Ok(Ok((n, from))) => {
                    if from != server {
                        continue;
                    }
                    if let Some(m) = Message::decode(&buf[..n]).filter(|m| m.txid == msg.txid) {
                        return Ok(m);
                    }
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(TurnError::Timeout { server, request });
        }
        rto *= 2;
    }
}

/// Anything a TURN stream can run over: plain TCP or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A TCP or TLS connection to a TURN server, carrying STUN messages (and ChannelData, which this
/// client never asks for) back to back, each framed by its own length (RFC 8656 section 12.5).
/// Reads are buffered in place, so [`TurnStream::poll_frame`] is cancel-safe.
pub struct TurnStream {
    io: Box<dyn Io>,
    buf: Vec<u8>,
    local: SocketAddr,
}

/// How long the TCP connect and TLS handshake may take together.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl TurnStream {
    /// Connects to the server as its transport says (TCP or TLS); `None` for UDP.
    pub async fn connect(server: &TurnServer) -> Result<Option<TurnStream>, TurnError> {
        let addr = server.addr;
        let fail =
            |message: String| TurnError::Connect { server: addr, transport: server.transport.to_string(), message };
        let tls = match &server.transport {
            TurnTransport::Udp => return Ok(None),
            TurnTransport::Tcp => None,
            TurnTransport::Tls { name, ca_pem } => {
                let config = crate::certs::trust::client_config(ca_pem).map_err(|e| fail(e.to_string()))?;
                let name = rustls::pki_types::ServerName::try_from(name.clone())
                    .map_err(|_| fail(format!("{name:?} is not a valid TLS server name")))?;
                Some((tokio_rustls::TlsConnector::from(config), name))
            }
        };
        let connect = async {
            let tcp = TcpStream::connect(addr).await.map_err(|e| fail(e.to_string()))?;
            tcp.set_nodelay(true).ok();
            let local = tcp.local_addr().map_err(|e| fail(e.to_string()))?;
            let io: Box<dyn Io> = match tls {
                None => Box::new(tcp),
                Some((connector, name)) => {
                    Box::new(connector.connect(name, tcp).await.map_err(|e| fail(e.to_string()))?)
                }
            };
            Ok(TurnStream { io, buf: Vec::new(), local })
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| fail(format!("no connection within {CONNECT_TIMEOUT:?}")))?
            .map(Some)
    }

    /// This end's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Writes one message.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await
    }

    /// The next whole frame.
    pub async fn recv_frame(&mut self) -> std::io::Result<Vec<u8>> {
        poll_fn(|cx| self.poll_frame(cx)).await
    }

    /// Polls for the next whole frame; an error when the server closed the connection.
    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<Vec<u8>>> {
        loop {
            if let Some(n) = frame_len(&self.buf) {
                if self.buf.len() >= n {
                    return Poll::Ready(Ok(self.buf.drain(..n).collect()));
                }
            }
            let mut chunk = [0u8; 4096];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                    return Poll::Ready(Err(std::io::ErrorKind::UnexpectedEof.into()))
                }
                Poll::Ready(Ok(())) => self.buf.extend_from_slice(rb.filled()),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// The length of the frame at the start of `buf`, once its header is there: a STUN message is its
/// 20-byte header plus the length it states; ChannelData (first two bits 01) its 4-byte header
/// plus the length, padded to four bytes on a stream.
pub fn frame_len(buf: &[u8]) -> Option<usize> {
    let first = *buf.first()?;
    let len = usize::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]));
    match first >> 6 {
        0 => Some(20 + len),
        1 => Some(4 + len.div_ceil(4) * 4),
        // Nothing else belongs on a TURN stream: take the rest as one frame for the caller to drop.
        _ => Some(buf.len()),
    }
}

impl Allocation {
    /// Allocates a UDP relay on `server` through `link` (which then carries the relayed media).
    pub async fn new(link: &mut Link<'_>, server: &TurnServer) -> Result<Allocation, TurnError> {
        Allocation::with_protocol(link, server, 17).await
    }

    /// Allocates a relay of IP protocol `protocol` (17 UDP; 6 TCP, RFC 6062, which a server
    /// that relays only UDP refuses with 442).
    pub async fn with_protocol(
        link: &mut Link<'_>,
        server: &TurnServer,
        protocol: u8,
    ) -> Result<Allocation, TurnError> {
        let addr = server.addr;
        let request = Message::new(ALLOCATE).attr(ATTR_REQUESTED_TRANSPORT, vec![protocol, 0, 0, 0]);
        let first = exchange(link, addr, "Allocate", &request, None).await?;
        let (realm, nonce) = match first.error() {
            Some((401, _)) => {
                (first.get(ATTR_REALM).unwrap_or_default().to_vec(), first.get(ATTR_NONCE).unwrap_or_default().to_vec())
            }
            Some((code, reason)) => {
                return Err(TurnError::Rejected { server: addr, request: "Allocate", code, reason })
            }
            None => return Err(TurnError::Incomplete { server: addr, request: "Allocate", missing: "a challenge" }),
        };
        let key = long_term_key(&server.username, &realm, server.password.expose());
        let mut alloc = Allocation {
            server: addr,
            username: server.username.clone(),
            realm,
            nonce,
            key,
            password: server.password.clone(),
            relayed: addr,
            mapped: None,
            peers: Vec::new(),
            refused: Vec::new(),
        };
        let ok = alloc
            .authenticated(link, "Allocate", || {
                Message::new(ALLOCATE)
                    .attr(ATTR_REQUESTED_TRANSPORT, vec![protocol, 0, 0, 0])
                    .attr(ATTR_SOFTWARE, b"astrtc".to_vec())
            })
            .await?;
        alloc.relayed = ok
            .get(ATTR_XOR_RELAYED_ADDRESS)
            .and_then(|v| read_xor_address(v, &ok.txid))
            .ok_or(TurnError::Incomplete { server: addr, request: "Allocate", missing: "XOR-RELAYED-ADDRESS" })?;
        alloc.mapped = ok.get(ATTR_XOR_MAPPED_ADDRESS).and_then(|v| read_xor_address(v, &ok.txid));
        Ok(alloc)
    }

    /// The TURN server.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// The request `build` makes with the credentials added; a stale nonce (438) or a repeated
    /// challenge with a new nonce is retried once.
    async fn authenticated(
        &mut self,
        link: &mut Link<'_>,
        request: &'static str,
        build: impl Fn() -> Message,
    ) -> Result<Message, TurnError> {
        for attempt in 0..2 {
            let msg = self.credentials(build());
            let resp = exchange(link, self.server, request, &msg, Some(&self.key.0)).await?;
            match resp.error() {
                None if resp.kind & 0x0110 == SUCCESS => return Ok(resp),
                None => return Err(TurnError::Incomplete { server: self.server, request, missing: "a result" }),
                Some((401 | 438, _)) if attempt == 0 && resp.get(ATTR_NONCE).is_some_and(|n| n != self.nonce) => {
                    self.nonce = resp.get(ATTR_NONCE).unwrap_or_default().to_vec();
                    if let Some(realm) = resp.get(ATTR_REALM) {
                        self.realm = realm.to_vec();
                        self.key = long_term_key(&self.username, &self.realm, self.password.expose());
                    }
                }
                Some((code @ (401 | 441), reason)) => {
                    return Err(TurnError::Unauthorized {
                        server: self.server,
                        username: self.username.clone(),
                        code,
                        reason,
                    })
                }
                Some((code, reason)) => return Err(TurnError::Rejected { server: self.server, request, code, reason }),
            }
        }
        Err(TurnError::Unauthorized {
            server: self.server,
            username: self.username.clone(),
            code: 401,
            reason: "stale nonce twice".into(),
        })
    }

    fn credentials(&self, msg: Message) -> Message {
        msg.attr(ATTR_USERNAME, self.username.as_bytes().to_vec())
            .attr(ATTR_REALM, self.realm.clone())
            .attr(ATTR_NONCE, self.nonce.clone())
    }

    /// Lets `peers` send to the relayed address (and us to them): one CreatePermission each, as
    /// browsers do, so a server that refuses some addresses (403: not allowed to relay there)
    /// still permits the others. Fails only when it refuses them all.
    pub async fn permit(&mut self, link: &mut Link<'_>, peers: &[IpAddr]) -> Result<(), TurnError> {
        let peers: Vec<IpAddr> = peers.iter().copied().filter(|p| p.is_ipv4() == self.relayed.is_ipv4()).collect();
        let mut last = None;
        for peer in &peers {
            match self.authenticated(link, "CreatePermission", || permission(&[*peer])).await {
                Ok(_) => self.peers.push(*peer),
                Err(TurnError::Rejected { code: code @ 403, reason, .. }) => {
                    self.refused.push((*peer, code, reason.clone()));
                    last = Some(TurnError::Rejected { server: self.server, request: "CreatePermission", code, reason });
                }
                Err(e) => return Err(e),
            }
        }
        match last {
            Some(e) if self.peers.is_empty() => Err(e),
            _ => Ok(()),
        }
    }

    /// Keep-alives for a long call: a Refresh and the permissions again, sent without waiting
    /// for the answers (an allocation lives 10 minutes, a permission 5).
    pub fn refreshes(&self) -> Vec<Vec<u8>> {
        let refresh = self.credentials(Message::new(REFRESH).attr(ATTR_LIFETIME, 600u32.to_be_bytes().to_vec()));
        let mut out = vec![refresh.encode(Some(&self.key.0))];
        if !self.peers.is_empty() {
            out.push(self.credentials(permission(&self.peers)).encode(Some(&self.key.0)));
        }
        out
    }

    /// The Refresh with lifetime 0 that frees the allocation.
    pub fn release(&self) -> Vec<u8> {
        self.credentials(Message::new(REFRESH).attr(ATTR_LIFETIME, vec![0, 0, 0, 0])).encode(Some(&self.key.0))
    }

    /// `data` for `peer` as a Send indication to the server.
    pub fn wrap(&self, peer: SocketAddr, data: &[u8]) -> Vec<u8> {
        let mut msg = Message::new(SEND_INDICATION);
        let addr = xor_address(peer, &msg.txid);
        msg = msg.attr(ATTR_XOR_PEER_ADDRESS, addr).attr(ATTR_DATA, data.to_vec());
        msg.encode(None)
    }

    /// What a Data indication from the server carries: the peer and its data.
    pub fn unwrap(datagram: &[u8]) -> Option<(SocketAddr, Vec<u8>)> {
        let m = Message::decode(datagram).filter(|m| m.kind == DATA_INDICATION)?;
        let peer = read_xor_address(m.get(ATTR_XOR_PEER_ADDRESS)?, &m.txid)?;
        Some((peer, m.get(ATTR_DATA)?.to_vec()))
    }
}

/// A STUN Binding request to `server` (any STUN or TURN server answers it): our address as the
/// server sees it.
pub async fn binding(sock: &UdpSocket, server: SocketAddr) -> Result<SocketAddr, TurnError> {
    let resp = exchange(&mut Link::Udp(sock), server, "Binding", &Message::new(BINDING), None).await?;
    resp.get(ATTR_XOR_MAPPED_ADDRESS).and_then(|v| read_xor_address(v, &resp.txid)).ok_or(TurnError::Incomplete {
        server,
        request: "Binding",
        missing: "XOR-MAPPED-ADDRESS",
    })
}

fn permission(peers: &[IpAddr]) -> Message {
    let mut msg = Message::new(CREATE_PERMISSION);
    for p in peers {
        let v = xor_address(SocketAddr::new(*p, 0), &msg.txid);
        msg = msg.attr(ATTR_XOR_PEER_ADDRESS, v);
    }
    msg
}

/// The long-term credential key: MD5(username ":" realm ":" password).
fn long_term_key(username: &str, realm: &[u8], password: &str) -> LongTermKey {
    let mut h = Md5::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm);
    h.update(b":");
    h.update(password.as_bytes());
    LongTermKey(h.finalize().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xor_addresses_round_trip_for_both_families() {
        let txid = [7u8; 12];
        for a in ["203.0.113.10:3478", "[2001:db8::1]:49152"] {
            let addr: SocketAddr = a.parse().unwrap();
            assert_eq!(read_xor_address(&xor_address(addr, &txid), &txid), Some(addr));
        }
        // RFC 5769 section 2.2's mapped address: 192.0.2.1 port 32853.
        let v = [0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43];
        assert_eq!(read_xor_address(&v, &txid), Some("192.0.2.1:32853".parse().unwrap()));
    }

    #[test]
    fn message_integrity_matches_rfc5769_long_term_vector() {
        // RFC 5769 section 2.4: a request with long-term authentication.
        let txid = [0x78, 0xad, 0x34, 0x33, 0xc6, 0xad, 0x72, 0xc0, 0x29, 0xda, 0x41, 0x2e];
        let username = "\u{30de}\u{30c8}\u{30ea}\u{30c3}\u{30af}\u{30b9}";
        let nonce = b"f//499k954d6OL34oL9FSTvy64sA".to_vec();
        let realm = b"example.org".to_vec();
        let msg = Message {
            kind: 0x0001,
            txid,
            attrs: vec![
                (ATTR_USERNAME, username.as_bytes().to_vec()),
                (ATTR_NONCE, nonce),
                (ATTR_REALM, realm.clone()),
            ],
        };
        let key = long_term_key(username, &realm, "TheMatrIX");
        let bytes = msg.encode(Some(&key.0));
        let tag = &bytes[bytes.len() - 20..];
        assert_eq!(
            tag,
            [
                0xf6, 0x70, 0x24, 0x65, 0x6d, 0xd6, 0x4a, 0x3e, 0x02, 0xb8, 0xe0, 0x71, 0x2e, 0x85, 0xc9, 0xa2, 0x8c,
                0xa8, 0x96, 0x66
            ]
        );
    }

    #[test]
    fn indications_round_trip_and_garbage_is_not_stun() {
        let peer: SocketAddr = "192.0.2.2:30000".parse().unwrap();
        let server: SocketAddr = "192.0.2.9:3478".parse().unwrap();
        let a = Allocation {
            server,
            username: "u".into(),
            realm: vec![],
            nonce: vec![],
            key: LongTermKey(vec![]),
            password: Secret::new(""),
            relayed: server,
            mapped: None,
            peers: vec![],
            refused: vec![],
        };
        let mut sent = Message::decode(&a.wrap(peer, b"hello")).unwrap();
        assert_eq!(sent.kind, SEND_INDICATION);
        sent.kind = DATA_INDICATION;
        assert_eq!(Allocation::unwrap(&sent.encode(None)), Some((peer, b"hello".to_vec())));
        for garbage in
            [&[0x80u8, 0, 0, 0][..], &[0u8; 19][..], &[0u8; 20][..], b"\x00\x17\x00\x08\x21\x12\xa4\x42xxxxxxxxxxxx"]
        {
            assert!(Allocation::unwrap(garbage).is_none());
        }
    }

    #[test]
    fn a_turn_servers_debug_hides_its_password() {
        let server = TurnServer {
            addr: "192.0.2.9:3478".parse().unwrap(),
            username: "1700003600:alice".into(),
            password: Secret::new("pw-7f3a9c-not-in-debug"),
            transport: TurnTransport::Udp,
        };
        assert!(!format!("{server:?}").contains("pw-7f3a9c"), "TurnServer's Debug shows its password: {server:?}");
    }

    #[test]
    fn an_allocations_debug_hides_its_password_and_key() {
        let server: SocketAddr = "192.0.2.9:3478".parse().unwrap();
        let key = long_term_key("u", b"realm", "pw-7f3a9c-not-in-debug");
        let key_bytes = format!("{:?}", key.0);
        let a = Allocation {
            server,
            username: "u".into(),
            realm: b"realm".to_vec(),
            nonce: vec![],
            key,
            password: Secret::new("pw-7f3a9c-not-in-debug"),
            relayed: server,
            mapped: None,
            peers: vec![],
            refused: vec![],
        };
        let debug = format!("{a:?}");
        assert!(!debug.contains("pw-7f3a9c"), "Allocation's Debug shows its password: {debug}");
        assert!(!debug.contains(&key_bytes), "Allocation's Debug shows its long-term key: {debug}");
    }

    #[test]
    fn stream_frames_are_cut_at_their_own_lengths() {
        let stun = Message::new(SEND_INDICATION).attr(ATTR_DATA, vec![1, 2, 3]).encode(None);
        assert_eq!(frame_len(&stun), Some(stun.len()));
        assert_eq!(frame_len(&stun[..3]), None);
        // ChannelData with 5 bytes of data is padded to 8 on a stream.
        assert_eq!(frame_len(&[0x40, 0x00, 0x00, 0x05]), Some(12));
    }
}
