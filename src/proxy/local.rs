//! Which hosts and ports are this proxy, and the addresses it listens on.

use std::net::SocketAddr;

use crate::sip::{self, uri::host_text, Protocol};

/// One socket this proxy listens and sends on, with the name its Via and
/// Record-Route give peers for it. A wildcard listen address (`0.0.0.0`,
/// `[::]`) is bound once per local address, so every listener has a
/// concrete address, and each side of a multi-homed host is named by the
/// address that side can reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub protocol: Protocol,
    pub local: SocketAddr,
    /// `host:port` for Via sent-by and Record-Route: the advertised name
    /// (its port, else the listener's), or the bound address.
    pub sent_by: String,
}

impl Listener {
    /// A listener on `local`, named by `advertise` (`host`, `host:port`,
    /// `[v6]` or `[v6]:port`) when given.
    pub fn new(protocol: Protocol, local: SocketAddr, advertise: Option<&str>) -> Self {
        // A bare IPv6 address gets the brackets a URI needs.
        let bracketed = advertise
            .filter(|name| name.trim().parse::<std::net::Ipv6Addr>().is_ok())
            .map(|name| format!("[{}]", name.trim()));
        let advertise = bracketed.as_deref().or(advertise);
        let sent_by = match advertise.map(split_host_port) {
            Some((host, Some(port))) => format!("{host}:{port}"),
            Some((host, None)) => format!("{host}:{}", local.port()),
            None => format!("{}:{}", host_text(&local), local.port()),
        };
        Listener {
            protocol,
            local,
            sent_by,
        }
    }

    /// The host part of `sent_by`.
    pub fn host(&self) -> &str {
        split_host_port(&self.sent_by).0
    }
}

/// `host[:port]` into its parts; an IPv6 reference keeps its brackets.
pub fn split_host_port(text: &str) -> (&str, Option<u16>) {
    let text = text.trim();
    if text.starts_with('[') {
        return match text.find(']') {
            Some(end) => {
                let port = text[end + 1..]
                    .strip_prefix(':')
                    .and_then(|p| p.parse().ok());
                (&text[..=end], port)
            }
            None => (text, None),
        };
    }
    match text.rsplit_once(':') {
        // One colon: host:port. More: a bare IPv6 address, no port.
        Some((host, port)) if !host.contains(':') => (host, port.parse().ok()),
        _ => (text, None),
    }
}

/// Which hosts and ports are this proxy: `domain.local`, every listener's
/// address and advertised name. Used for `ruri.is_local`, for loose routing
/// (both entries of a double Record-Route are ours), and to know our Via.
///
/// They are a handful, so plain lists beat hashing: this is asked several
/// times per message (our Via on every response, Route and R-URI checks).
#[derive(Debug, Default)]
pub struct LocalIdentity {
    hosts: Vec<String>,
    ports: Vec<u16>,
    /// `security.trusted`: peers that are as good as us (a script asks
    /// `request.source_trusted`).
    trusted: Vec<crate::security::Cidr>,
}

impl LocalIdentity {
    pub fn new(domains: &[String], listeners: &[Listener]) -> Self {
        let mut hosts: Vec<String> = Vec::new();
        let mut add = |host: String| {
            if !hosts.contains(&host) {
                hosts.push(host);
            }
        };
        domains.iter().for_each(|d| add(d.to_ascii_lowercase()));
        let mut ports = Vec::new();
        let mut add_port = |port: u16| {
            if !ports.contains(&port) {
                ports.push(port);
            }
        };
        for listener in listeners {
            add_port(listener.local.port());
            if let (_, Some(port)) = split_host_port(&listener.sent_by) {
                add_port(port);
            }
            add(listener.host().to_ascii_lowercase());
            add(host_text(&listener.local));
        }
        LocalIdentity {
            hosts,
            ports,
            trusted: Vec::new(),
        }
    }

    /// With the networks of `security.trusted`.
    pub fn with_trusted(mut self, trusted: Vec<crate::security::Cidr>) -> Self {
        self.trusted = trusted;
        self
    }

    /// A source in one of the trusted networks.
    pub fn is_trusted(&self, ip: std::net::IpAddr) -> bool {
        let ip = crate::security::canonical(ip);
        self.trusted.iter().any(|net| net.contains(ip))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("address")
    }

    #[test]
    fn advertise_with_or_without_a_port_names_the_listener() {
        let local = addr("192.0.2.1:5060");
        let plain = Listener::new(Protocol::Udp, local, None);
        assert_eq!(plain.sent_by, "192.0.2.1:5060");
        let host = Listener::new(Protocol::Udp, local, Some("sip.example.com"));
        assert_eq!(host.sent_by, "sip.example.com:5060");
        let with_port = Listener::new(Protocol::Udp, local, Some("sip.example.com:5080"));
        assert_eq!(
            with_port.sent_by, "sip.example.com:5080",
            "not host:port:5060"
        );
        let v6 = Listener::new(Protocol::Tcp, addr("[2001:db8::1]:5060"), None);
        assert_eq!(v6.sent_by, "[2001:db8::1]:5060");
        assert_eq!(v6.host(), "[2001:db8::1]");
        let v6_advertised = Listener::new(Protocol::Udp, local, Some("[2001:db8::9]:5070"));
        assert_eq!(v6_advertised.sent_by, "[2001:db8::9]:5070");
        let v6_bare = Listener::new(Protocol::Udp, local, Some("2001:db8::9"));
        assert_eq!(v6_bare.sent_by, "[2001:db8::9]:5060");
        assert_eq!(v6_bare.host(), "[2001:db8::9]");
    }

    #[test]
    fn host_and_port_are_split_for_names_and_both_ip_families() {
        assert_eq!(split_host_port("example.com"), ("example.com", None));
        assert_eq!(
            split_host_port("example.com:5080"),
            ("example.com", Some(5080))
        );
        assert_eq!(
            split_host_port("[2001:db8::1]:5060"),
            ("[2001:db8::1]", Some(5060))
        );
        assert_eq!(split_host_port("[2001:db8::1]"), ("[2001:db8::1]", None));
        assert_eq!(split_host_port("2001:db8::1"), ("2001:db8::1", None));
    }

    #[test]
    fn every_listener_and_advertised_name_is_local() {
        let listeners = [
            Listener::new(Protocol::Udp, addr("192.0.2.1:5060"), None),
            Listener::new(Protocol::Udp, addr("198.51.100.1:5060"), None),
            Listener::new(Protocol::Udp, addr("[2001:db8:1::1]:5060"), None),
            Listener::new(
                Protocol::Udp,
                addr("203.0.113.5:5060"),
                Some("sip.example.com:5080"),
            ),
        ];
        let local = LocalIdentity::new(&["example.com".into()], &listeners);
        for (host, port) in [
            ("192.0.2.1", Some(5060)),
            ("198.51.100.1", None),
            ("[2001:db8:1::1]", Some(5060)),
            ("sip.example.com", Some(5080)),
            ("203.0.113.5", Some(5060)),
            ("EXAMPLE.com", None),
        ] {
            assert!(local.is_local(host, port), "{host} {port:?}");
        }
        assert!(!local.is_local("192.0.2.2", Some(5060)));
        assert!(!local.is_local("192.0.2.1", Some(5099)));
    }
}
