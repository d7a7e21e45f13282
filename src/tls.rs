//! TLS for the origin's manifest and key API (rustls, ring provider).
//!
//! The origin makes a throwaway CA and a server certificate at start-up
//! (rcgen), so nothing secret is ever committed. It writes the CA
//! certificate where a client can be told to trust it (`--ca`). Clients trust
//! that CA, or the webpki roots when none is given.
//!
//! Clients (the relay's `https://` origins and parents, the viewer's key
//! API) open a
//! connection with [`connect`]: TCP through [`crate::connect::tcp`], then the
//! rustls handshake, checked against the server name. The relay's own TLS
//! listener is `crate::server`'s (`TlsCerts`).

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::pki_types::{InvalidDnsNameError, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_rustls::client::TlsStream;

use crate::connect::ConnectError;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Certificate generation failed.
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// A CA file held no usable certificate.
    #[error("no certificate in CA file: {0}")]
    Pem(String),
}

/// Why a TLS client connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TlsConnectError {
    /// The host is neither a DNS name nor an IP address.
    #[error("server name {host}: {source}")]
    ServerName {
        /// The host as given.
        host: String,
        /// What rustls said.
        source: InvalidDnsNameError,
    },
    /// The TCP connection failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The TLS handshake failed (certificate verification included).
    #[error("{0}")]
    Handshake(std::io::Error),
}

/// Connects to `addr` within `connect_timeout` and runs the TLS handshake
/// with `config`, verifying the certificate against `host` (a DNS name or an
/// IP address; an IPv6 literal may keep its brackets). The name is checked
/// before anything is connected. The handshake itself is not bounded here:
/// the caller's own deadline covers it.
pub async fn connect(
    config: &Arc<ClientConfig>,
    host: &str,
    addr: impl ToSocketAddrs,
    connect_timeout: Duration,
) -> Result<TlsStream<TcpStream>, TlsConnectError> {
    let host = host.trim_matches(['[', ']']);
    let name =
        ServerName::try_from(host.to_string()).map_err(|source| TlsConnectError::ServerName {
            host: host.to_string(),
            source,
        })?;
    let tcp = crate::connect::tcp(addr, connect_timeout).await?;
    tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
        .map_err(TlsConnectError::Handshake)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A run-time test PKI: a CA and one server certificate signed by it.
pub struct TestPki {
    /// The CA certificate, PEM, for clients to trust.
    pub ca_pem: String,
    /// The server side, ready for a TLS acceptor.
    pub server: Arc<ServerConfig>,
}

impl TestPki {
    /// Makes a CA and a certificate for `names` (DNS names or IP addresses).
    pub fn generate(names: &[String]) -> Result<TestPki, TlsError> {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "mlcache run-time test CA");
        let ca_key = rcgen::KeyPair::generate()?;
        let ca = ca_params.self_signed(&ca_key)?;
        let mut leaf_params = rcgen::CertificateParams::new(names.to_vec())?;
        leaf_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "mlcache origin");
        let leaf_key = rcgen::KeyPair::generate()?;
        let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone(), ca.der().clone()], key)?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TestPki {
            ca_pem: ca.pem(),
            server: Arc::new(server),
        })
    }
}

/// A client configuration that trusts the CA in `ca_pem`, or the webpki
/// roots when `None`, offering ALPN `http/1.1`.
pub fn client_config(ca_pem: Option<&[u8]>) -> Result<Arc<ClientConfig>, TlsError> {
    client_config_alpn(ca_pem, &[b"http/1.1"])
}

/// [`client_config`] offering the ALPN protocols `alpn` (`h2` for a parent
/// relay).
pub fn client_config_alpn(
    ca_pem: Option<&[u8]>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| TlsError::Pem(e.to_string()))?;
                roots.add(cert)?;
            }
            if roots.is_empty() {
                return Err(TlsError::Pem("no CERTIFICATE block".into()));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let mut c = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(c))
}
