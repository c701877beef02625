//! Whom a TLS client trusts: a rustls client configuration whose only roots are the CA
//! certificates of a PEM file (the deployment's local CA, a private ACME root, or the system
//! bundle), and how connecting to a TLS server fails ([`TlsError`]). Shared by `verify`'s TLS
//! check and the WSS client of [`crate::media`], so both accept exactly the same servers and
//! report a refusal the same way.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use thiserror::Error;

/// Why a CA PEM cannot be trusted.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum TrustError {
    /// The text is not PEM.
    #[error("the CA certificate is not usable: {0}")]
    BadPem(String),
    /// The PEM holds no certificate.
    #[error("the CA certificate is not usable: no certificate in the PEM")]
    Empty,
    /// rustls refused a certificate as a root.
    #[error("the CA certificate is not usable: {0}")]
    Refused(String),
}

/// Why a TLS connection to a server failed.
#[derive(Debug, Error, miette::Diagnostic)]
pub enum TlsError {
    /// The CA file is not usable.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// The domain is not a valid server name.
    #[error("{0:?} is not a valid TLS server name")]
    BadName(String),
    /// No TCP connection.
    #[error("failed to connect to {addr}")]
    Connect {
        /// Address.
        addr: SocketAddr,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The handshake or certificate verification failed, or the connection broke after it.
    #[error("TLS to {addr} failed for {domain}: {source}")]
    Tls {
        /// Address.
        addr: SocketAddr,
        /// The name verified.
        domain: String,
        /// Why (the certificate is for another name, an unknown issuer...).
        #[source]
        source: std::io::Error,
    },
}

/// A client configuration (ring, TLS 1.2 and 1.3, no client certificate) trusting every
/// certificate in `ca_pem` and nothing else.
pub fn client_config(ca_pem: &str) -> Result<Arc<ClientConfig>, TrustError> {
    let mut roots = RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TrustError::BadPem(e.to_string()))?;
    if certs.is_empty() {
        return Err(TrustError::Empty);
    }
    for c in certs {
        roots.add(c).map_err(|e| TrustError::Refused(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TrustError::Refused(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_and_empty_pem_are_refused() {
        assert_eq!(client_config("").unwrap_err(), TrustError::Empty);
        assert!(client_config("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n").is_err());
    }
}
