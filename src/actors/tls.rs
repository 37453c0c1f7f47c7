//! TLS for the stream transports (rustls, ring). The server side of each
//! `listen.tls` listener presents a certificate that SIGHUP reloads without
//! touching open connections; the client side verifies peers against the
//! system roots or `tls.ca_file` (names and IP addresses alike) and may
//! present a client certificate for mutual TLS.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::{TlsConfig, TlsListen};

/// The TLS state shared by every listener and outbound connection.
pub struct Tls {
    /// One per `listen.tls` entry, in config order.
    servers: Vec<ServerSide>,
    client: ArcSwap<TlsConnector>,
    config: TlsConfig,
}

struct ServerSide {
    listen: TlsListen,
    certificate: Arc<ReloadableCert>,
    acceptor: TlsAcceptor,
}

/// The certificate a listener presents, swapped in place on reload: a
/// handshake in progress keeps the one it started with.
#[derive(Debug)]
struct ReloadableCert {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Tls {
    /// Reads every certificate, key and root the config names. The error
    /// names the key whose file is wrong.
    pub fn load(listeners: &[TlsListen], config: &TlsConfig) -> Result<Arc<Tls>, String> {
        let mut servers = Vec::with_capacity(listeners.len());
        for (index, listen) in listeners.iter().enumerate() {
            let key = certified_key(&listen.cert, &listen.key)
                .map_err(|e| format!("listen.tls[{index}]: {e}"))?;
            let certificate = Arc::new(ReloadableCert {
                current: ArcSwap::from_pointee(key),
            });
            let server = rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("listen.tls[{index}]: {e}"))?
                .with_no_client_auth()
                .with_cert_resolver(certificate.clone());
            servers.push(ServerSide {
                listen: listen.clone(),
                certificate,
                acceptor: TlsAcceptor::from(Arc::new(server)),
            });
        }
        let client = client_connector(config)?;
        Ok(Arc::new(Tls {
            servers,
            client: ArcSwap::from_pointee(client),
            config: config.clone(),
        }))
    }

    /// Reads the files again (SIGHUP). What fails to load is logged and the
    /// old certificate stays; open connections are not touched.
    pub fn reload(&self) {
        for (index, server) in self.servers.iter().enumerate() {
            match certified_key(&server.listen.cert, &server.listen.key) {
                Ok(key) => {
                    server.certificate.current.store(Arc::new(key));
                    tracing::info!(listener = index, cert = %server.listen.cert.display(), "TLS certificate reloaded");
                }
                Err(error) => {
                    tracing::error!(listener = index, %error, "TLS certificate not reloaded; the old one stays")
                }
            }
        }
        match client_connector(&self.config) {
            Ok(client) => self.client.store(Arc::new(client)),
            Err(error) => {
                tracing::error!(%error, "TLS client settings not reloaded; the old ones stay")
            }
        }
    }

    /// The acceptor of `listen.tls[index]`.
    pub fn acceptor(&self, index: usize) -> Option<TlsAcceptor> {
        self.servers.get(index).map(|s| s.acceptor.clone())
    }

    pub fn connector(&self) -> Arc<TlsConnector> {
        self.client.load_full()
    }

    pub fn handshake_timeout(&self) -> Duration {
        self.config.handshake_timeout()
    }
}

/// The name an outbound handshake verifies: the hop's host name, else its
/// address (checked against the certificate's IP addresses).
pub fn server_name(name: Option<&str>, addr: std::net::SocketAddr) -> ServerName<'static> {
    name.and_then(|n| ServerName::try_from(n.to_string()).ok())
        .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()))
}

fn certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let chain = read_certificates(cert).map_err(|e| format!("cert: {e}"))?;
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("key: cannot read a private key from {}: {e}", key.display()))?;
    CertifiedKey::from_der(chain, private, &provider()).map_err(|e| {
        format!(
            "key: {} does not go with {}: {e}",
            key.display(),
            cert.display()
        )
    })
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok(certificates)
}

fn client_connector(config: &TlsConfig) -> Result<TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    match &config.ca_file {
        Some(path) => {
            for certificate in read_certificates(path).map_err(|e| format!("tls.ca_file: {e}"))? {
                roots
                    .add(certificate)
                    .map_err(|e| format!("tls.ca_file: {}: {e}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!("no system CA certificates found; outbound TLS needs tls.ca_file");
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_root_certificates(roots);
    let client = match (&config.client_cert, &config.client_key) {
        (Some(cert), Some(key)) => {
            let chain = read_certificates(cert).map_err(|e| format!("tls.client_cert: {e}"))?;
            let private = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                format!(
                    "tls.client_key: cannot read a private key from {}: {e}",
                    key.display()
                )
            })?;
            builder
                .with_client_auth_cert(chain, private)
                .map_err(|e| format!("tls.client_key: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(TlsConnector::from(Arc::new(client)))
}
