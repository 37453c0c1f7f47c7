//! `dns`: the resolver that looks up host names met while relaying (a
//! Request-URI, Route or Contact with a name in it), off the SIP threads.

use super::*;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Name servers, `ip` or `ip:port`; empty: those of /etc/resolv.conf.
    /// /etc/hosts is read either way.
    pub servers: Vec<String>,
    /// How long one lookup may take; the relay then fails with 478.
    pub timeout_ms: u64,
    /// Names kept per shard (and responses kept by the resolver).
    pub cache_size: usize,
    /// How long a name that did not resolve is remembered as such.
    pub negative_ttl_secs: u64,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            servers: Vec::new(),
            timeout_ms: 2000,
            cache_size: 4096,
            negative_ttl_secs: 30,
        }
    }
}

impl DnsConfig {
    /// The name servers; they were checked at load.
    pub fn server_addresses(&self) -> Vec<SocketAddr> {
        self.servers
            .iter()
            .filter_map(|text| parse_server(text).ok())
            .collect()
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    pub fn negative_ttl(&self) -> Duration {
        Duration::from_secs(self.negative_ttl_secs)
    }
}

fn parse_server(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Ok(address);
    }
    let bare = text.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| {
            format!("`{text}` is not an ip or ip:port; write it like \"192.0.2.53\" or \"127.0.0.1:5353\"")
        })
}

pub(super) fn check_dns(dns: &DnsConfig, origin: &Path) -> Result<(), ConfigError> {
    for (index, text) in dns.servers.iter().enumerate() {
        parse_server(text)
            .map_err(|message| invalid(origin, format!("dns.servers[{index}]"), message))?;
    }
    check_range(
        origin,
        "dns.timeout_ms",
        dns.timeout_ms,
        10,
        30_000,
        "milliseconds",
    )?;
    check_range(
        origin,
        "dns.cache_size",
        dns.cache_size,
        16,
        100_000,
        "names",
    )?;
    check_range(
        origin,
        "dns.negative_ttl_secs",
        dns.negative_ttl_secs,
        1,
        3600,
        "seconds",
    )
}
