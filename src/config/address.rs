//! Destination URIs and addresses, resolved once at load time.

use super::*;

/// Host and port of a `sip:`/`sips:` URI ([`crate::sip::Uri`]), the host
/// without IPv6 brackets and the port defaulting to 5060 (5061 for `sips:`).
pub fn sip_uri_host_port(uri: &str) -> Result<(String, u16), String> {
    let example = "write it like \"sip:backend1.example.com:5060\"";
    let scheme = uri.split(':').next().unwrap_or("");
    if !(scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips")) {
        return Err(format!("`{uri}` is not a sip: URI; {example}"));
    }
    let parsed =
        crate::sip::Uri::parse(uri).map_err(|e| format!("`{uri}`: {}; {example}", e.reason))?;
    let default_port = if parsed.scheme.eq_ignore_ascii_case("sip") {
        5060
    } else if parsed.is_secure() {
        5061
    } else {
        return Err(format!("`{uri}` is not a sip: URI; {example}"));
    };
    if parsed.port == Some(0) {
        return Err(format!("`{uri}`: `0` is not a port number (1-65535)"));
    }
    let host = parsed.host.trim_start_matches('[').trim_end_matches(']');
    Ok((host.to_string(), parsed.port.unwrap_or(default_port)))
}

/// Splits `host`, `host:port`, `[v6]` or `[v6]:port`; the host comes back
/// without brackets.
pub(super) fn split_host_port(text: &str, default_port: u16) -> Result<(String, u16), String> {
    let (host, port_text) = if let Some(bracketed) = text.strip_prefix('[') {
        let close = bracketed
            .find(']')
            .ok_or_else(|| "an IPv6 address lacks its closing `]`".to_string())?;
        let after = &bracketed[close + 1..];
        let port = match after.strip_prefix(':') {
            Some(port) => Some(port),
            None if after.is_empty() => None,
            None => return Err(format!("unexpected `{after}` after the IPv6 address")),
        };
        (&bracketed[..close], port)
    } else {
        match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.is_empty() {
        return Err("the host is missing".to_string());
    }
    let port = match port_text {
        None => default_port,
        Some(digits) => match digits.parse::<u16>() {
            Ok(port) if port > 0 && digits.chars().all(|c| c.is_ascii_digit()) => port,
            _ => return Err(format!("`{digits}` is not a port number (1-65535)")),
        },
    };
    Ok((host.to_string(), port))
}

/// Resolves a destination `address`: `ip:port`, `host:port`, or a bare
/// host/ip that takes the uri's port.
pub(super) fn resolve_address(text: &str, default_port: u16) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Ok(address);
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    let (host, port) = split_host_port(text, default_port)
        .map_err(|reason| format!("`{text}`: {reason}; write it like \"10.0.0.1:5060\""))?;
    resolve_host(&host, port)
}

/// One DNS/hosts lookup, done at load time only.
pub(super) fn resolve_host(host: &str, port: u16) -> Result<SocketAddr, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    match (host, port).to_socket_addrs() {
        Ok(mut addresses) => addresses
            .next()
            .ok_or_else(|| format!("`{host}` resolves to no address")),
        Err(error) => Err(format!("cannot resolve `{host}`: {error}")),
    }
}
