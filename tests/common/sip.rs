//! Blocking SIP helpers for tests that run code on threads of their own (e.g. inside a network
//! namespace): OPTIONS over UDP, and a WebSocket connection that REGISTERs with a given password
//! until the server stops answering. Built on astrtc's own user agent (`astrtc::media::sip`), each
//! call on a current-thread runtime of the calling thread, so its sockets live where that thread
//! lives.

use std::net::SocketAddr;
use std::time::Duration;

use astrtc::media::sip::{SipError, Transport, UserAgent};
use astrtc::media::ws::WsConn;

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
