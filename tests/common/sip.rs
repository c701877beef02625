//! Blocking SIP helpers for tests that run code on threads of their own (e.g. inside a network
//! namespace): OPTIONS over UDP, a WebSocket connection that REGISTERs with a given password
//! until the server stops answering, and a connection (TLS or WebSocket) held open that carries
//! whatever SIP a test writes. Built on astrtc's own user agent (`astrtc::media::sip`) and
//! WebSocket, each call on a current-thread runtime of the calling thread, so its sockets live
//! where that thread lives.

use std::net::SocketAddr;
use std::time::Duration;

use astrtc::media::sip::{SipError, Transport, UserAgent};
use astrtc::media::ws::WsConn;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

pub use astrtc::media::sip::digest::authorization as digest_authorization;

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

/// OPTIONS to `addr` over UDP: `Some((code, reason))`, or `None` when nothing answered in time.
pub fn options_over_udp(addr: SocketAddr, timeout: Duration) -> Option<(u16, String)> {
    block_on(async {
        let mut ua = UserAgent::new(Transport::udp(addr).await.ok()?, "astrtc-test", "", "astrtc.invalid");
        ua.timeout = timeout;
        match ua.options(&format!("sip:{addr}")).await {
            Ok(resp) => Some((resp.code().unwrap_or_default(), resp.reason().to_string())),
            Err(SipError::Timeout { .. }) => None,
            Err(e) => panic!("OPTIONS to {addr}: {e}"),
        }
    })
}

/// A SIP connection (WSS or UDP) for one user with one password.
pub struct Registrar {
    runtime: tokio::runtime::Runtime,
    ua: UserAgent,
}

impl Registrar {
    /// Opens the WebSocket (TLS verified against `ca_pem` for `domain`).
    pub fn open(wss: SocketAddr, domain: &str, ca_pem: &str, user: &str, password: &str) -> Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let conn = runtime.block_on(WsConn::connect(wss, domain, ca_pem, "/ws")).map_err(|e| e.to_string())?;
        let mut ua = UserAgent::new(Transport::wss(conn), user, password, domain);
        ua.timeout = Duration::from_secs(5);
        Ok(Registrar { runtime, ua })
    }

    /// SIP over UDP to `server`, from an ephemeral port of the calling thread's network namespace.
    pub fn udp(server: SocketAddr, domain: &str, user: &str, password: &str) -> Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let transport = runtime.block_on(Transport::udp(server)).map_err(|e| e.to_string())?;
        let mut ua = UserAgent::new(transport, user, password, domain);
        ua.timeout = Duration::from_secs(5);
        Ok(Registrar { runtime, ua })
    }

    /// One REGISTER with digest auth: `Ok(code)` for any final answer (200, or 401/403 for a
    /// wrong password), `Err` when the connection failed or nothing answered.
    pub fn register(&mut self) -> Result<u16, String> {
        match self.runtime.block_on(self.ua.register(60)) {
            Ok(resp) => Ok(resp.code().unwrap_or_default()),
            Err(SipError::AuthRejected { code, .. } | SipError::Rejected { code, .. }) => Ok(code),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// SIP over one connection that stays open: TLS as phones use, or a secure WebSocket as browsers use. The test
/// writes each message itself; what the server sends (answers, and requests such as keepalives)
/// is read one message at a time.
pub struct SipConnection {
    runtime: tokio::runtime::Runtime,
    link: Link,
    via: String,
}

/// A byte stream SIP is written on as it is (TLS over TCP).
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

enum Link {
    Stream { stream: Box<dyn Stream>, buf: Vec<u8> },
    Wss(Box<WsConn>),
}

impl SipConnection {
    /// SIP over TLS to `server` (no WebSocket: SIP written on the TLS stream, as phones do), the
    /// certificate verified against `ca_pem` for `domain`.
    pub fn tls(server: SocketAddr, domain: &str, ca_pem: &str) -> Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let config = astrtc::certs::trust::client_config(ca_pem).map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from(domain.to_string()).map_err(|e| e.to_string())?;
        let stream = runtime
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(5), async {
                    let tcp = TcpStream::connect(server).await.map_err(|e| format!("TCP to {server}: {e}"))?;
                    tcp.set_nodelay(true).ok();
                    let me = tcp.local_addr().map_err(|e| e.to_string())?;
                    let tls = tokio_rustls::TlsConnector::from(config)
                        .connect(name, tcp)
                        .await
                        .map_err(|e| format!("TLS to {server}: {e}"))?;
                    Ok::<_, String>((tls, me))
                })
                .await
            })
            .map_err(|_| format!("TLS to {server}: timed out"))?;
        let (stream, me) = stream?;
        let link = Link::Stream { stream: Box::new(stream), buf: Vec::new() };
        Ok(SipConnection { runtime, link, via: format!("TLS {me}") })
    }

    /// A WebSocket to `wss` (path `/ws`, TLS verified against `ca_pem` for `domain`).
    pub fn wss(wss: SocketAddr, domain: &str, ca_pem: &str) -> Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let conn = runtime.block_on(WsConn::connect(wss, domain, ca_pem, "/ws")).map_err(|e| e.to_string())?;
        let via = format!("WSS {}.invalid", std::process::id());
        Ok(SipConnection { runtime, link: Link::Wss(Box::new(conn)), via })
    }

    /// This end as a Via header names it: `TLS address:port` or `WSS name.invalid`.
    pub fn via(&self) -> &str {
        &self.via
    }

    /// Writes one SIP message.
    pub fn send(&mut self, message: &str) -> Result<(), String> {
        let SipConnection { runtime, link, .. } = self;
        runtime.block_on(async {
            match link {
                Link::Stream { stream, .. } => stream.write_all(message.as_bytes()).await.map_err(|e| e.to_string()),
                Link::Wss(conn) => conn.send_text(message).await.map_err(|e| e.to_string()),
            }
        })
    }

    /// The next message the server sends within `limit`: `Ok(None)` when none came, `Err` when the
    /// connection is closed or broken.
    pub fn next(&mut self, limit: Duration) -> Result<Option<String>, String> {
        let SipConnection { runtime, link, .. } = self;
        let read = async {
            match link {
                Link::Stream { stream, buf } => loop {
                    if let Some(message) = take_message(buf) {
                        return Ok(message);
                    }
                    let mut chunk = [0u8; 8192];
                    match stream.read(&mut chunk).await {
                        Ok(0) => return Err("the server closed the connection".to_string()),
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        Err(e) => return Err(e.to_string()),
                    }
                },
                Link::Wss(conn) => conn.recv_text().await.map_err(|e| e.to_string()),
            }
        };
        // Both reads are cancel-safe: a timeout loses nothing that was read.
        match runtime.block_on(async { tokio::time::timeout(limit, read).await }) {
            Ok(Ok(message)) => Ok(Some(message)),
            Ok(Err(e)) => Err(e),
            Err(_) => Ok(None),
        }
    }
}

/// One whole SIP message from the front of a stream's bytes (its head and `Content-Length`
/// bytes of body), if all of it is there; CRLF keepalives before it are dropped.
fn take_message(buf: &mut Vec<u8>) -> Option<String> {
    let start = buf.iter().position(|b| !matches!(b, b'\r' | b'\n')).unwrap_or(buf.len());
    buf.drain(..start);
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let body = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            let name = name.trim();
            (name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("l"))
                .then(|| value.trim().parse::<usize>().ok())
                .flatten()
        })
        .unwrap_or(0);
    if buf.len() < head_end + body {
        return None;
    }
    let message: Vec<u8> = buf.drain(..head_end + body).collect();
    Some(String::from_utf8_lossy(&message).into_owned())
}
