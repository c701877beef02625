//! The WSS listener's certificate seen as a browser sees it: a TLS handshake that must verify
//! against the given CA for the spec's domain (trust from [`crate::certs::trust`], the same the
//! WSS client of [`crate::media::ws`] uses), and a plain HTTPS GET for the tests' servers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};

use crate::certs::trust;
use crate::certs::{cert_facts_der, CertFacts};

/// Why the TLS check failed (the same error the WSS client of [`crate::media`] reports).
pub use crate::certs::trust::TlsError as VerifyError;

/// What the TLS check saw.
#[derive(Debug, Clone)]
pub struct TlsReport {
    /// Negotiated protocol version, e.g. `TLSv1_3`.
    pub protocol: String,
    /// The leaf certificate served.
    pub leaf: CertFacts,
    /// Certificates the server sent.
    pub chain_len: usize,
}

/// A TLS client stream.
pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

fn connect(addr: SocketAddr, domain: &str, ca_pem: &str) -> Result<TlsStream, VerifyError> {
    let config = trust::client_config(ca_pem)?;
    let name = ServerName::try_from(domain.to_string()).map_err(|_| VerifyError::BadName(domain.into()))?;
    let conn = ClientConnection::new(config, name).map_err(|e| VerifyError::Tls {
        addr,
        domain: domain.into(),
        source: std::io::Error::other(e),
    })?;
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|source| VerifyError::Connect { addr, source })?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok();
    tcp.set_write_timeout(Some(Duration::from_secs(5))).ok();
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).map_err(|source| VerifyError::Tls {
            addr,
            domain: domain.into(),
            source,
        })?;
    }
    Ok(tls)
}

/// Connects to `addr`, verifies the served chain against `ca_pem` for `domain`, and reports.
pub fn check_tls(addr: SocketAddr, domain: &str, ca_pem: &str) -> Result<TlsReport, VerifyError> {
    let tls = connect(addr, domain, ca_pem)?;
    let peer = tls.conn.peer_certificates().unwrap_or_default();
    let leaf = cert_facts_der(peer.first().map(|c| c.as_ref()).unwrap_or_default()).map_err(|e| VerifyError::Tls {
        addr,
        domain: domain.into(),
        source: std::io::Error::other(e),
    })?;
    Ok(TlsReport {
        protocol: tls.conn.protocol_version().map(|v| format!("{v:?}")).unwrap_or_default(),
        leaf,
        chain_len: peer.len(),
    })
}

/// A plain HTTP/1.1 GET over verified TLS; returns the whole response (head and body).
pub fn https_get(addr: SocketAddr, domain: &str, ca_pem: &str, path: &str) -> Result<String, VerifyError> {
    https_get_with(addr, domain, ca_pem, path, "")
}

/// [`https_get`] with extra header lines (each ending in `\r\n`), e.g. `Authorization`.
pub fn https_get_with(
    addr: SocketAddr,
    domain: &str,
    ca_pem: &str,
    path: &str,
    headers: &str,
) -> Result<String, VerifyError> {
    let mut tls = connect(addr, domain, ca_pem)?;
    let io = |source| VerifyError::Tls { addr, domain: domain.into(), source };
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {domain}:{}\r\nConnection: close\r\n{headers}\r\n", addr.port());
    tls.write_all(request.as_bytes()).map_err(io)?;
    let mut out = Vec::new();
    match tls.read_to_end(&mut out) {
        Ok(_) => {}
        // Servers that close without close_notify: keep what arrived.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => return Err(io(e)),
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}
