//! `listen.ws` and `listen.wss`: SIP over WebSocket (RFC 7118), for
//! browsers. An entry is `"ip:port"` or `{address, advertise,
//! allowed_origins}`; a `wss` entry also has `cert` and `key`, as a TLS
//! listener does.

use super::*;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsListen {
    pub address: SocketAddr,
    pub advertise: Option<String>,
    /// `Origin` values a browser may connect from; empty: any.
    pub allowed_origins: Vec<String>,
    /// For `wss`: the certificate and key, as for `listen.tls`.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawWsListen {
    Address(SocketAddr),
    Full(FullWsListen),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FullWsListen {
    address: SocketAddr,
    #[serde(default)]
    advertise: Option<String>,
    #[serde(default)]
    allowed_origins: Vec<String>,
    #[serde(default)]
    cert: Option<PathBuf>,
    #[serde(default)]
    key: Option<PathBuf>,
}

impl<'de> Deserialize<'de> for WsListen {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = RawWsListen::deserialize(deserializer).map_err(|_| {
            de::Error::custom(
                "expected \"ip:port\" or {address, advertise, allowed_origins, cert, key}",
            )
        })?;
        Ok(match raw {
            RawWsListen::Address(address) => WsListen {
                address,
                advertise: None,
                allowed_origins: Vec::new(),
                cert: None,
                key: None,
            },
            RawWsListen::Full(full) => WsListen {
                address: full.address,
                advertise: full.advertise,
                allowed_origins: full.allowed_origins,
                cert: full.cert,
                key: full.key,
            },
        })
    }
}

impl WsListen {
    pub fn listen_addr(&self) -> ListenAddr {
        ListenAddr {
            address: self.address,
            advertise: self.advertise.clone(),
        }
    }

    /// A `wss` entry as the TLS listener it also is.
    pub fn tls_listen(&self) -> Option<TlsListen> {
        Some(TlsListen {
            address: self.address,
            advertise: self.advertise.clone(),
            cert: self.cert.clone()?,
            key: self.key.clone()?,
        })
    }

    /// Whether a browser page from `origin` may connect.
    pub fn allows_origin(&self, origin: Option<&str>) -> bool {
        self.allowed_origins.is_empty()
            || origin.is_some_and(|origin| {
                self.allowed_origins.iter().any(|allowed| {
                    allowed
                        .trim_end_matches('/')
                        .eq_ignore_ascii_case(origin.trim_end_matches('/'))
                })
            })
    }
}

pub(super) fn check_websocket(listen: &mut Listen, origin: &Path) -> Result<(), ConfigError> {
    for (index, ws) in listen.ws.iter().enumerate() {
        if ws.cert.is_some() || ws.key.is_some() {
            return Err(invalid(
                origin,
                format!("listen.ws[{index}]"),
                "a plain WebSocket listener takes no cert or key; put it in listen.wss",
            ));
        }
    }
    for (index, wss) in listen.wss.iter_mut().enumerate() {
        for (key, path) in [("cert", &mut wss.cert), ("key", &mut wss.key)] {
            match path {
                Some(path) => *path = beside(origin, path),
                None => {
                    return Err(invalid(
                        origin,
                        format!("listen.wss[{index}].{key}"),
                        "is missing: a secure WebSocket listener needs a certificate and key",
                    ))
                }
            }
        }
    }
    Ok(())
}
