//! The WSS listener seen as a browser sees it: a TLS handshake that must verify against the
//! given CA for the spec's domain, then an HTTP/1.1 WebSocket upgrade with the `sip`
//! subprotocol.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use thiserror::Error;

use crate::certs::{cert_facts_der, CertFacts};

/// Why a check failed.
#[derive(Debug, Error, miette::Diagnostic)]
pub enum VerifyError {
    /// The CA file is not usable.
    #[error("the CA certificate is not usable: {0}")]
    BadCa(String),
    /// The domain is not a valid server name.
    #[error("{0:?} is not a valid TLS server name")]
    BadName(String),
    /// No connection.
    #[error("failed to connect to {addr}")]
    Connect {
        /// Address.
        addr: SocketAddr,
        /// The TLS library's error (names the certificate problem).
        #[source]
        source: std::io::Error,
    },
    /// The handshake or certificate verification failed.
    #[error("TLS to {addr} failed for {domain}: {source}")]
    Tls {
        /// Address.
        addr: SocketAddr,
        /// The name verified.
        domain: String,
        /// Why (e.g. the certificate is for another name, or unknown issuer).
        #[source]
        source: std::io::Error,
    },
    /// The WebSocket upgrade was refused.
    #[error("the WebSocket upgrade on {path} was answered {status:?} (subprotocol {protocol:?})")]
    Upgrade {
        /// Path.
        path: String,
        /// The status line.
        status: String,
        /// The subprotocol answered.
        protocol: Option<String>,
    },
}

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
    let mut roots = RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| VerifyError::BadCa(e.to_string()))?;
    if certs.is_empty() {
        return Err(VerifyError::BadCa("no certificate in the PEM".into()));
    }
    for c in certs {
        roots.add(c).map_err(|e| VerifyError::BadCa(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(domain.to_string()).map_err(|_| VerifyError::BadName(domain.into()))?;
    let conn = ClientConnection::new(Arc::new(config), name).map_err(|e| VerifyError::Tls {
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
        protocol: format!("{:?}", tls.conn.protocol_version().expect("after handshake")),
        leaf,
        chain_len: peer.len(),
    })
}

/// Performs the WebSocket upgrade a SIP-over-WSS client does; returns the subprotocol answered.
pub fn websocket_upgrade(addr: SocketAddr, domain: &str, ca_pem: &str, path: &str) -> Result<String, VerifyError> {
    websocket(addr, domain, ca_pem, path).map(|_| "sip".to_string())
}

/// Opens a WebSocket with the `sip` subprotocol and returns the stream, ready for frames.
pub fn websocket(addr: SocketAddr, domain: &str, ca_pem: &str, path: &str) -> Result<TlsStream, VerifyError> {
    let mut tls = connect(addr, domain, ca_pem)?;
    let io = |source| VerifyError::Tls { addr, domain: domain.into(), source };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {domain}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: sip\r\nOrigin: https://{domain}\r\n\r\n",
        port = addr.port()
    );
    tls.write_all(request.as_bytes()).map_err(io)?;
    tls.flush().map_err(io)?;
    // Read the response head byte by byte so no frame data is consumed.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tls.read(&mut byte).map_err(io)? == 0 || head.len() > 16384 {
            break;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head.lines().next().unwrap_or("").trim().to_string();
    let protocol = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case("sec-websocket-protocol").then(|| v.trim().to_string())
    });
    if status.split_whitespace().nth(1) == Some("101") && protocol.as_deref() == Some("sip") {
        Ok(tls)
    } else {
        Err(VerifyError::Upgrade { path: path.into(), status, protocol })
    }
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
