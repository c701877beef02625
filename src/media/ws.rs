//! SIP over secure WebSocket (RFC 7118) as a browser opens it: TLS verified against the
//! deployment's CA for its domain ([`crate::certs::trust`]), an HTTP/1.1 upgrade with the `sip`
//! subprotocol, then one SIP message per text frame.
//!
//! Owns: the connection and the framing (RFC 6455, client side: masked frames, pings answered,
//! fragments joined, frames over [`MAX_MESSAGE`] refused). Reads are buffered, so
//! [`WsConn::recv_text`] is cancel-safe inside `select!`. It knows nothing of SIP.

use std::net::SocketAddr;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::certs::trust::{self, TlsError};

/// The largest message accepted from the server (a SIP message is a few kB).
pub const MAX_MESSAGE: usize = 1 << 20;

/// How long the TCP connect, TLS handshake and upgrade may take together.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the WebSocket could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    /// TCP connect or the TLS handshake failed (the certificate is for another name, unknown
    /// issuer...).
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Connect, handshake and upgrade did not finish in time.
    #[error("no WebSocket to {addr} within {CONNECT_TIMEOUT:?}")]
    Timeout {
        /// Address.
        addr: SocketAddr,
    },
    /// Reading or writing the open connection failed.
    #[error("the WebSocket to {addr} failed")]
    Io {
        /// Address.
        addr: SocketAddr,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The upgrade was refused.
    #[error("the WebSocket upgrade on {path} was answered {status:?} (subprotocol {protocol:?})")]
    Upgrade {
        /// The path asked for.
        path: String,
        /// The status line.
        status: String,
        /// The subprotocol answered.
        protocol: Option<String>,
    },
    /// The server broke the framing rules or sent too much.
    #[error("the server broke the WebSocket protocol: {0}")]
    Protocol(&'static str),
    /// The server closed the WebSocket.
    #[error("the server closed the WebSocket")]
    Closed,
}

/// An open WebSocket carrying SIP.
pub struct WsConn {
    stream: TlsStream<TcpStream>,
    addr: SocketAddr,
    buf: Vec<u8>,
    fragments: Vec<u8>,
}

impl WsConn {
    /// Connects to `addr`, verifies the certificate for `domain` against `ca_pem`, and upgrades
    /// `path` to a WebSocket with the `sip` subprotocol.
    pub async fn connect(addr: SocketAddr, domain: &str, ca_pem: &str, path: &str) -> Result<WsConn, WsError> {
        let config = trust::client_config(ca_pem).map_err(TlsError::from)?;
        let name = ServerName::try_from(domain.to_string()).map_err(|_| TlsError::BadName(domain.into()))?;
        tokio::time::timeout(CONNECT_TIMEOUT, async {
            let tcp = TcpStream::connect(addr).await.map_err(|source| TlsError::Connect { addr, source })?;
            tcp.set_nodelay(true).ok();
            let stream = TlsConnector::from(config).connect(name, tcp).await.map_err(|source| TlsError::Tls {
                addr,
                domain: domain.into(),
                source,
            })?;
            let mut conn = WsConn { stream, addr, buf: Vec::new(), fragments: Vec::new() };
            conn.upgrade(domain, path).await?;
            Ok(conn)
        })
        .await
        .map_err(|_| WsError::Timeout { addr })?
    }

    async fn upgrade(&mut self, domain: &str, path: &str) -> Result<(), WsError> {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {domain}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\n\
             Origin: https://{domain}\r\n\r\n",
            port = self.addr.port(),
            key = base64(&super::random_bytes::<16>()),
        );
        self.write(request.as_bytes()).await?;
        let head = loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 4);
                break head;
            }
            if self.buf.len() > 16384 || self.fill().await? == 0 {
                return Err(WsError::Upgrade {
                    path: path.into(),
                    status: "connection closed before a response".into(),
                    protocol: None,
                });
            }
        };
        let status = head.lines().next().unwrap_or("").trim().to_string();
        let protocol = head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case("sec-websocket-protocol").then(|| v.trim().to_string())
        });
        if status.split_whitespace().nth(1) == Some("101") && protocol.as_deref() == Some("sip") {
            Ok(())
        } else {
            Err(WsError::Upgrade { path: path.into(), status, protocol })
        }
    }

    /// The server's address.
    pub fn peer(&self) -> SocketAddr {
        self.addr
    }

    async fn fill(&mut self) -> Result<usize, WsError> {
        let mut tmp = [0u8; 8192];
        let n = self.stream.read(&mut tmp).await.map_err(|source| WsError::Io { addr: self.addr, source })?;
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), WsError> {
        let addr = self.addr;
        self.stream.write_all(bytes).await.map_err(|source| WsError::Io { addr, source })?;
        self.stream.flush().await.map_err(|source| WsError::Io { addr, source })
    }

    async fn send_frame(&mut self, opcode: u8, payload: &[u8]) -> Result<(), WsError> {
        let frame = encode_frame(opcode, payload, super::random_bytes::<4>());
        self.write(&frame).await
    }

    /// Sends one text frame.
    pub async fn send_text(&mut self, text: &str) -> Result<(), WsError> {
        self.send_frame(0x1, text.as_bytes()).await
    }

    /// Receives the next text or binary message as text; answers pings. Cancel-safe.
    pub async fn recv_text(&mut self) -> Result<String, WsError> {
        loop {
            while let Some(frame) = take_frame(&mut self.buf)? {
                match frame.opcode {
                    0x0..=0x2 => {
                        if self.fragments.len() + frame.payload.len() > MAX_MESSAGE {
                            return Err(WsError::Protocol("a message larger than 1 MiB"));
                        }
                        self.fragments.extend_from_slice(&frame.payload);
                        if frame.fin {
                            let message = std::mem::take(&mut self.fragments);
                            return Ok(String::from_utf8_lossy(&message).into_owned());
                        }
                    }
                    0x8 => return Err(WsError::Closed),
                    0x9 => self.send_frame(0xA, &frame.payload).await?,
                    _ => {}
                }
            }
            if self.fill().await? == 0 {
                return Err(WsError::Closed);
            }
        }
    }

    /// Closes as a browser does: a close frame (1000), the server's close frame (up to 1 s),
    /// then TLS close_notify. Without this Asterisk logs "Error reading from web socket" and
    /// "SSL_shutdown() failed" for every call.
    pub async fn close(mut self) {
        if self.send_frame(0x8, &1000u16.to_be_bytes()).await.is_ok() {
            let _ =
                tokio::time::timeout(Duration::from_secs(1), async { while self.recv_text().await.is_ok() {} }).await;
        }
        let _ = self.stream.shutdown().await;
    }
}

/// A client frame: FIN set, masked with `mask`.
fn encode_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        frame.push(0x80 | len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&short.to_be_bytes());
    } else {
        frame.push(0x80 | 127);
        frame.extend_from_slice(&(len as u64).to_be_bytes());
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

#[derive(Debug, PartialEq)]
struct Frame {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

/// Removes one complete frame from the front of `buf`, if there is one.
fn take_frame(buf: &mut Vec<u8>) -> Result<Option<Frame>, WsError> {
    let [b0, b1, ..] = buf[..] else { return Ok(None) };
    let (fin, opcode, masked) = (b0 & 0x80 != 0, b0 & 0x0f, b1 & 0x80 != 0);
    let (len, mut at) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4usize),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => (u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]), 10),
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if len > MAX_MESSAGE as u64 {
        return Err(WsError::Protocol("a frame larger than 1 MiB"));
    }
    let mask = if masked {
        let Some(m) = buf.get(at..at + 4) else { return Ok(None) };
        let m = [m[0], m[1], m[2], m[3]];
        at += 4;
        Some(m)
    } else {
        None
    };
    let end = at + len as usize;
    let Some(payload) = buf.get(at..end) else { return Ok(None) };
    let mut payload = payload.to_vec();
    if let Some(m) = mask {
        payload.iter_mut().enumerate().for_each(|(i, b)| *b ^= m[i % 4]);
    }
    buf.drain(..end);
    Ok(Some(Frame { fin, opcode, payload }))
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_taken_whole_or_not_at_all() {
        let mut buf = vec![0x81, 0x03, b'a', b'b'];
        assert!(take_frame(&mut buf).unwrap().is_none());
        buf.push(b'c');
        buf.extend_from_slice(&[0x81, 0x01]);
        assert_eq!(take_frame(&mut buf).unwrap(), Some(Frame { fin: true, opcode: 1, payload: b"abc".to_vec() }));
        assert_eq!(buf, vec![0x81, 0x01]);
    }

    #[test]
    fn masked_frames_round_trip_and_lengths_use_the_right_form() {
        for len in [0usize, 125, 126, 65535, 65536] {
            let payload = vec![7u8; len];
            let mut buf = encode_frame(0x1, &payload, [1, 2, 3, 4]);
            let frame = take_frame(&mut buf).unwrap().unwrap();
            assert_eq!((frame.opcode, frame.payload.len(), frame.fin), (1, len, true));
            assert!(frame.payload.iter().all(|b| *b == 7));
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn hostile_lengths_are_refused_without_allocating() {
        let mut buf = vec![0x81, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(take_frame(&mut buf), Err(WsError::Protocol(_))));
    }

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(b"fooba"), "Zm9vYmE=");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
    }
}
