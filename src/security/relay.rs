//! Where a relay may go (`security.relay_to`). A front proxy that relays
//! wherever a Request-URI or Route points is a door into the network behind
//! it: a BYE with `Route: <sip:10.0.0.5:6379;transport=tcp;lr>` would make it
//! dial an internal Redis and write the sender's bytes to it. So every hop a
//! script's relay or fork picked by URI passes this policy:
//! - never one of our own listeners (a loop through ourselves);
//! - never a network the operator denied;
//! - an address the operator wrote down (a gateway destination's exact
//!   address, or a network in `relay_to.allow`) may be anywhere else;
//! - otherwise not loopback, link-local, multicast or unspecified (this
//!   host's own services stay out of reach, whoever asks);
//! - and not a private range (RFC 1918, CGNAT 100.64/10, ULA fc00::/7)
//!   unless it is in `security.trusted` or a registered contact's exact
//!   address (both only vouch for a private address, never a host one).
//!
//! Hops over a flow token (a connection a peer opened to us) and gateway
//! candidates never come here.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{canonical, Cidr};

/// Why a hop is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayRefusal {
    /// One of our own listening addresses: never, whoever vouches.
    OwnListener,
    /// In `relay_to.deny`.
    Denied,
    /// Loopback, link-local, multicast or unspecified.
    HostScope,
    /// A private range, and nobody vouched for the address.
    Private,
}

impl RelayRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            RelayRefusal::OwnListener => "one of our own listeners",
            RelayRefusal::Denied => "a network in security.relay_to.deny",
            RelayRefusal::HostScope => "a loopback, link-local or multicast address",
            RelayRefusal::Private => {
                "a private address no gateway, contact or trusted network names"
            }
        }
    }

    /// The `reason` label of the `relays_refused` metric.
    pub fn label(self) -> &'static str {
        match self {
            RelayRefusal::OwnListener => "own_listener",
            RelayRefusal::Denied => "denied",
            RelayRefusal::HostScope => "host_scope",
            RelayRefusal::Private => "private",
        }
    }

    /// A refusal that a sealed dialog lifts for its own caller's address:
    /// the caller sent us the dialog's first request from there.
    pub fn may_be_vouched_by_dialog(self) -> bool {
        matches!(self, RelayRefusal::HostScope | RelayRefusal::Private)
    }

    /// A refusal that a registered contact's vouching lifts: a phone may
    /// sit on a private network, never on this host.
    pub fn may_be_vouched(self) -> bool {
        self == RelayRefusal::Private
    }
}

/// The policy, built once from the config.
#[derive(Debug, Clone, Default)]
pub struct RelayPolicy {
    /// `relay_to.allow`: anywhere but our own listeners; networks, and
    /// exact addresses (one port of a host, say a front LB's listener).
    pub allow: Vec<Cidr>,
    pub allow_addresses: Vec<SocketAddr>,
    /// `security.trusted`: their private addresses may be reached.
    pub trusted: Vec<Cidr>,
    pub deny: Vec<Cidr>,
    /// Our listeners; an unspecified IP (0.0.0.0, ::) stands for every
    /// address of this host, which the policy cannot list: such a port is
    /// ours on loopback and on any address in `local_ips`.
    pub listeners: Vec<SocketAddr>,
    /// Addresses of this host other than loopback (advertised ones).
    pub local_ips: Vec<IpAddr>,
}

impl RelayPolicy {
    /// May a relay go to `addr`? `configured` says it is exactly a
    /// gateway destination's address.
    pub fn verdict(&self, addr: SocketAddr, configured: bool) -> Result<(), RelayRefusal> {
        let ip = embedded_v4(canonical(addr.ip()));
        if self.is_own_listener(ip, addr.port()) {
            return Err(RelayRefusal::OwnListener);
        }
        if self.deny.iter().any(|net| net.contains(ip)) {
            return Err(RelayRefusal::Denied);
        }
        let allowed = self.allow.iter().any(|net| net.contains(ip))
            || self
                .allow_addresses
                .iter()
                .any(|a| canonical(a.ip()) == ip && a.port() == addr.port());
        if configured || allowed {
            return Ok(());
        }
        if is_host_scoped(ip) {
            return Err(RelayRefusal::HostScope);
        }
        if is_private(ip) && !self.trusted.iter().any(|net| net.contains(ip)) {
            return Err(RelayRefusal::Private);
        }
        Ok(())
    }

    fn is_own_listener(&self, ip: IpAddr, port: u16) -> bool {
        self.listeners.iter().any(|listener| {
            listener.port() == port
                && (canonical(listener.ip()) == ip
                    || (listener.ip().is_unspecified()
                        && (ip.is_loopback()
                            || ip.is_unspecified()
                            || self.local_ips.contains(&ip))))
        })
    }
}

fn is_host_scoped(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.octets()[0] == 0
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_unspecified()
                || v4.is_broadcast()
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_multicast()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// An IPv6 address that carries an IPv4 one a host would reach through it:
/// NAT64's well-known prefix 64:ff9b::/96 and the old IPv4-compatible
/// `::a.b.c.d`. Judged as that IPv4 address.
fn embedded_v4(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else {
        return ip;
    };
    let s = v6.segments();
    let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    let compatible = s[..6] == [0, 0, 0, 0, 0, 0] && (s[6] != 0 || s[7] > 1);
    if nat64 || compatible {
        let [a, b] = s[6].to_be_bytes();
        let [c, d] = s[7].to_be_bytes();
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    } else {
        ip
    }
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private() || in_v4(v4, Ipv4Addr::new(100, 64, 0, 0), 10),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00 || is_v6_site_local(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: Ipv4Addr, prefix: u32) -> bool {
    let mask = u32::MAX << (32 - prefix);
    u32::from(ip) & mask == u32::from(net) & mask
}

/// fec0::/10, deprecated but still routed inside some networks.
fn is_v6_site_local(v6: Ipv6Addr) -> bool {
    (v6.segments()[0] & 0xffc0) == 0xfec0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn policy() -> RelayPolicy {
        RelayPolicy {
            allow: vec!["198.51.100.128/25".parse().unwrap()],
            trusted: vec![
                "10.1.0.0/16".parse().unwrap(),
                "127.0.0.0/8".parse().unwrap(),
            ],
            allow_addresses: vec![addr("127.0.0.1:5070")],
            deny: vec!["203.0.113.0/24".parse().unwrap()],
            listeners: vec![addr("192.0.2.10:5060"), addr("0.0.0.0:5080")],
            local_ips: vec!["192.0.2.11".parse().unwrap()],
        }
    }

    #[test]
    fn public_addresses_pass_and_the_host_s_own_ones_do_not() {
        let p = policy();
        assert_eq!(p.verdict(addr("198.51.100.7:5060"), false), Ok(()));
        for (target, why) in [
            ("127.0.0.1:6379", RelayRefusal::HostScope),
            ("127.9.9.9:5060", RelayRefusal::HostScope),
            ("[::1]:5060", RelayRefusal::HostScope),
            ("169.254.169.254:80", RelayRefusal::HostScope),
            ("[fe80::1]:5060", RelayRefusal::HostScope),
            ("224.0.0.1:5060", RelayRefusal::HostScope),
            ("0.0.0.0:5060", RelayRefusal::HostScope),
            ("[::ffff:127.0.0.1]:6379", RelayRefusal::HostScope),
            ("[64:ff9b::7f00:1]:6379", RelayRefusal::HostScope),
            ("[::127.0.0.1]:6379", RelayRefusal::HostScope),
            ("0.1.2.3:6379", RelayRefusal::HostScope),
            ("[64:ff9b::a00:5]:6379", RelayRefusal::Private),
            ("10.0.0.5:6379", RelayRefusal::Private),
            ("172.16.3.4:5060", RelayRefusal::Private),
            ("192.168.1.1:5060", RelayRefusal::Private),
            ("100.64.0.9:5060", RelayRefusal::Private),
            ("[fd00::5]:5060", RelayRefusal::Private),
            ("203.0.113.9:5060", RelayRefusal::Denied),
        ] {
            assert_eq!(p.verdict(addr(target), false), Err(why), "{target}");
        }
    }

    #[test]
    fn a_configured_or_allowed_address_passes_but_never_our_own_listener() {
        let p = policy();
        assert_eq!(p.verdict(addr("10.0.0.5:5060"), true), Ok(()));
        assert_eq!(p.verdict(addr("127.0.0.1:5071"), true), Ok(()));
        // Trusted networks open their private addresses, not this host.
        assert_eq!(p.verdict(addr("10.1.2.3:5060"), false), Ok(()));
        assert_eq!(
            p.verdict(addr("127.0.0.1:6379"), false),
            Err(RelayRefusal::HostScope)
        );
        // An allowed address is that port only.
        assert_eq!(p.verdict(addr("127.0.0.1:5070"), false), Ok(()));
        assert_eq!(p.verdict(addr("198.51.100.200:5060"), false), Ok(()));
        // Denied stays denied, whoever vouches.
        assert_eq!(
            p.verdict(addr("203.0.113.9:5060"), true),
            Err(RelayRefusal::Denied)
        );
        for own in [
            "192.0.2.10:5060",
            "127.0.0.1:5080",
            "192.0.2.11:5080",
            "[::ffff:127.0.0.1]:5080",
        ] {
            assert_eq!(
                p.verdict(addr(own), true),
                Err(RelayRefusal::OwnListener),
                "{own}"
            );
        }
        // Another port of ours is not a listener.
        assert_eq!(p.verdict(addr("192.0.2.10:5061"), false), Ok(()));
        assert!(RelayRefusal::Private.may_be_vouched());
        assert!(!RelayRefusal::HostScope.may_be_vouched());
        assert!(!RelayRefusal::OwnListener.may_be_vouched());
    }
}
