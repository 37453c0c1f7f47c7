//! TLS: `listen.tls` (an address with its certificate and key) and the
//! `tls` section (how outbound connections verify peers, and the client
//! certificate for mutual TLS). The files are read when siphon starts and
//! again on SIGHUP; paths are taken from the config file's directory.

use super::*;

/// One TLS listener.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsListen {
    pub address: SocketAddr,
    /// The name to put in Via and Record-Route, as for the other listeners.
    #[serde(default)]
    pub advertise: Option<String>,
    /// PEM: the certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM: its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl TlsListen {
    pub fn listen_addr(&self) -> ListenAddr {
        ListenAddr {
            address: self.address,
            advertise: self.advertise.clone(),
        }
    }
}

/// `tls`: outbound verification and client certificates.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM roots that outbound peers' certificates must chain to; default:
    /// the system's roots.
    pub ca_file: Option<PathBuf>,
    /// A client certificate and key, for trunks that require mutual TLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// How long a handshake may take, either way.
    pub handshake_timeout_ms: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            ca_file: None,
            client_cert: None,
            client_key: None,
            handshake_timeout_ms: 5000,
        }
    }
}

impl TlsConfig {
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
}

/// A relative path, from the config file's directory.
pub(super) fn beside(origin: &Path, path: &Path) -> PathBuf {
    match (path.is_relative(), origin.parent()) {
        (true, Some(dir)) => dir.join(path),
        _ => path.to_path_buf(),
    }
}

pub(super) fn check_tls(
    listen: &mut Listen,
    tls: &mut TlsConfig,
    origin: &Path,
) -> Result<(), ConfigError> {
    for listener in &mut listen.tls {
        listener.cert = beside(origin, &listener.cert);
        listener.key = beside(origin, &listener.key);
    }
    for path in [&mut tls.ca_file, &mut tls.client_cert, &mut tls.client_key]
        .into_iter()
        .flatten()
    {
        *path = beside(origin, path);
    }
    if tls.client_cert.is_some() != tls.client_key.is_some() {
        let missing = if tls.client_cert.is_some() {
            "tls.client_key"
        } else {
            "tls.client_cert"
        };
        return Err(invalid(
            origin,
            missing,
            "client_cert and client_key go together: set both, or neither",
        ));
    }
    check_range(
        origin,
        "tls.handshake_timeout_ms",
        tls.handshake_timeout_ms,
        100,
        60_000,
        "ms",
    )
}
