//! The downstream TLS side: the certificate the relay presents, reloadable
//! without a restart, and the rustls configuration of the TLS listener
//! (`--listen-tls`, ALPN `h2` and `http/1.1` on one port).
//!
//! [`TlsCerts`] holds the current certificate chain and key behind a lock
//! that is only taken for a pointer copy: rustls asks it for the key of
//! each new handshake (`ResolvesServerCert`), and [`TlsCerts::reload`]
//! (SIGHUP) swaps in a new one after reading and checking the files. A
//! handshake already done keeps the key it used, so open connections are
//! untouched by a reload; a file that cannot be read or does not parse, or a
//! key that does not match its certificate, is refused and the old pair
//! stays. The accept loop and connection tasks are the clear listener's
//! ([`listener`](super::listener), [`conn`](super::conn)): a TLS connection
//! only adds the handshake, bounded by `tls-handshake-timeout`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

/// The ALPN protocols of the TLS listener, most preferred first.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why a certificate and key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error("no certificate in {0}")]
    NoCert(PathBuf),
    /// The key file holds no PEM private key.
    #[error("no private key in {0}: {1}")]
    NoKey(PathBuf, String),
    /// rustls refused the key, or the key does not match the certificate.
    #[error("unusable key or certificate: {0}")]
    Key(#[from] rustls::Error),
}

/// The relay's server certificate, swapped on reload.
#[derive(Debug)]
pub struct TlsCerts {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl TlsCerts {
    /// Loads the PEM certificate chain in `cert` and the private key in `key`.
    pub fn load(cert: &Path, key: &Path) -> Result<TlsCerts, CertError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let current = read_pair(cert, key, &provider)?;
        Ok(TlsCerts {
            cert: cert.to_owned(),
            key: key.to_owned(),
            provider,
            current: RwLock::new(Arc::new(current)),
        })
    }

    /// Reads the files again and, if they hold a usable pair, serves it to
    /// every new handshake. On error the old pair stays.
    pub fn reload(&self) -> Result<(), CertError> {
        let fresh = read_pair(&self.cert, &self.key, &self.provider)?;
        *self.current.write() = Arc::new(fresh);
        Ok(())
    }

    /// The rustls server configuration presenting these certificates, with
    /// ALPN [`ALPN`].
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, CertError> {
        let mut c = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        c.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(c))
    }
}

impl ResolvesServerCert for TlsCerts {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}

fn read_pair(cert: &Path, key: &Path, p: &CryptoProvider) -> Result<CertifiedKey, CertError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| CertError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let chain = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| CertError::NoCert(cert.to_owned()))?;
    if chain.is_empty() {
        return Err(CertError::NoCert(cert.to_owned()));
    }
    let der = PrivateKeyDer::from_pem_slice(&read(key)?)
        .map_err(|e| CertError::NoKey(key.to_owned(), e.to_string()))?;
    Ok(CertifiedKey::from_der(chain, der, p)?)
}
