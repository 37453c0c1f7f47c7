//! Defence at the edge, as pure logic: who may talk to us ([`edge`]) and
//! who they are (digest authentication, [`digest`]). The actors call in
//! with `now` and what arrived; nothing here touches a socket or a clock.

pub mod digest;
pub mod edge;
pub mod guesses;
pub mod relay;

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

pub use edge::{
    BanEntry, BanReason, Banning, Channel, EdgeGuard, EdgePolicy, EdgeSummary, RateLimit, Verdict,
};
pub use relay::{RelayPolicy, RelayRefusal};

/// An IPv4-mapped IPv6 address (`::ffff:192.0.2.1`) counts as the IPv4
/// address it carries.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// An IP network, `192.0.2.0/24` or `2001:db8::/32`; a bare address is a
/// network of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The network of `prefix` bits around `ip` (host bits cleared, so two
    /// addresses of one network make equal values).
    pub fn new(ip: IpAddr, prefix: u8) -> Cidr {
        let network = match ip {
            IpAddr::V4(v4) => {
                let prefix = prefix.min(32);
                IpAddr::V4((u32::from(v4) & mask32(prefix)).into())
            }
            IpAddr::V6(v6) => {
                let prefix = prefix.min(128);
                IpAddr::V6((u128::from(v6) & mask128(prefix)).into())
            }
        };
        let prefix = if ip.is_ipv4() {
            prefix.min(32)
        } else {
            prefix.min(128)
        };
        Cidr { network, prefix }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = mask32(self.prefix);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = mask128(self.prefix);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

fn mask32(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

fn mask128(prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(prefix))
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR (e.g. 10.0.0.0/8)"))?;
        let longest = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => longest,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= longest)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {longest}"))?,
        };
        Ok(Cidr { network, prefix })
    }
}

impl fmt::Display for Cidr {
    /// `192.0.2.0/24`; a network of one address is the address alone.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.network.is_ipv4() { 32 } else { 128 };
        if self.prefix == host {
            write!(f, "{}", self.network)
        } else {
            write!(f, "{}/{}", self.network, self.prefix)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Cidr;

    #[test]
    fn cidrs_match_their_networks_only() {
        let net: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains("10.255.1.2".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(!net.contains("::ffff:10.0.0.1".parse().unwrap()));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("198.51.100.1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("example.com/8".parse::<Cidr>().is_err());
    }
}
