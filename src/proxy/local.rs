//! Which hosts and ports are this proxy.

use std::net::SocketAddr;

use crate::sip::{self, uri::host_text};

/// Which hosts and ports are this proxy: `domain.local`, the advertised host
/// and every listen address. Used for `ruri.is_local` and for loose routing.
///
/// They are a handful, so plain lists beat hashing: this is asked several
/// times per message (our Via on every response, Route and R-URI checks).
#[derive(Debug, Default)]
pub struct LocalIdentity {
    hosts: Vec<String>,
    ports: Vec<u16>,
}

impl LocalIdentity {
    pub fn new(domains: &[String], advertise: Option<&str>, listen: &[SocketAddr]) -> Self {
        let mut hosts: Vec<String> = Vec::new();
        let mut add = |host: String| {
            if !hosts.contains(&host) {
                hosts.push(host);
            }
        };
        domains.iter().for_each(|d| add(d.to_ascii_lowercase()));
        if let Some(host) = advertise {
            add(host.to_ascii_lowercase());
        }
        let mut ports = Vec::new();
        for addr in listen {
            if !ports.contains(&addr.port()) {
                ports.push(addr.port());
            }
            if addr.ip().is_unspecified() {
                add("127.0.0.1".into());
            } else {
                add(host_text(addr));
            }
        }
        LocalIdentity { hosts, ports }
    }

    /// A host (with its port, when the URI has one) that names this proxy.
    pub fn is_local(&self, host: &str, port: Option<u16>) -> bool {
        let known = self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host));
        known && port.is_none_or(|p| self.ports.contains(&p))
    }

    /// A URI (as written in a Route or Request-URI) that names this proxy.
    pub fn is_local_uri(&self, uri: &str) -> bool {
        sip::Uri::parse(uri).is_ok_and(|u| self.is_local(u.host, u.port))
    }
}
