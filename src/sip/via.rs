//! One Via value: `SIP/2.0/transport sent-by *(;param)`. Responses are routed
//! by the top Via, so this is on the hot path for every response.

use super::error::{ParseError, ParseErrorKind};
use super::params::{find_param, is_lws, is_token, trim_lws, valid_header_params};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Via<'a> {
    /// Transport as written (`UDP`, `TCP`, `TLS`...).
    pub transport: &'a str,
    /// sent-by host; IPv6 references keep their brackets.
    pub host: &'a str,
    pub port: Option<u16>,
    /// Raw parameter text starting at the first `;` (possibly after LWS).
    pub params: &'a str,
}

fn bad(reason: impl Into<String>) -> ParseError {
    ParseError::new(ParseErrorKind::BadVia, reason)
}

fn skip_lws(s: &str) -> &str {
    s.trim_start_matches([' ', '\t', '\r', '\n'])
}

/// Take a token from the front of `s`, returning it and the remainder.
fn take_token(s: &str) -> (&str, &str) {
    let end = s
        .bytes()
        .position(|b| !super::params::is_token_byte(b))
        .unwrap_or(s.len());
    (&s[..end], &s[end..])
}

impl<'a> Via<'a> {
    pub fn parse(value: &'a str) -> Result<Via<'a>, ParseError> {
        let s = skip_lws(value);
        // sent-protocol = name SLASH version SLASH transport, LWS allowed around '/'
        let (name, rest) = take_token(s);
        let rest = skip_lws(rest)
            .strip_prefix('/')
            .ok_or_else(|| bad("Via missing '/' after protocol name"))?;
        let (version, rest) = take_token(skip_lws(rest));
        let rest = skip_lws(rest)
            .strip_prefix('/')
            .ok_or_else(|| bad("Via missing '/' after protocol version"))?;
        let (transport, rest) = take_token(skip_lws(rest));
        if !name.eq_ignore_ascii_case("SIP") || !is_token(version) || !is_token(transport) {
            return Err(bad(format!(
                "invalid Via protocol in {:?}",
                trim_lws(value)
            )));
        }
        if !rest.starts_with(|c: char| c.is_ascii() && is_lws(c as u8)) {
            return Err(bad("Via needs whitespace before sent-by"));
        }
        let rest = skip_lws(rest);
        let host_end = if rest.starts_with('[') {
            rest.find(']')
                .map(|i| i + 1)
                .ok_or_else(|| bad("unterminated IPv6 reference in Via"))?
        } else {
            rest.bytes()
                .position(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')))
                .unwrap_or(rest.len())
        };
        let host = &rest[..host_end];
        if host.is_empty() || host == "[]" {
            return Err(bad("Via has no sent-by host"));
        }
        let mut rest = skip_lws(&rest[host_end..]);
        let mut port = None;
        if let Some(p) = rest.strip_prefix(':') {
            let p = skip_lws(p);
            let end = p
                .bytes()
                .position(|b| !b.is_ascii_digit())
                .unwrap_or(p.len());
            port = Some(
                p[..end]
                    .parse::<u16>()
                    .map_err(|_| bad(format!("invalid Via port in {:?}", trim_lws(value))))?,
            );
            rest = &p[end..];
        }
        if !valid_header_params(rest) {
            return Err(bad(format!(
                "malformed Via parameters {:?}",
                trim_lws(rest)
            )));
        }
        Ok(Via {
            transport,
            host,
            port,
            params: rest,
        })
    }

    /// Via parameter by case-insensitive name; `Some(None)` for a flag.
    pub fn param(&self, name: &str) -> Option<Option<&'a str>> {
        find_param(self.params, name)
    }

    pub fn branch(&self) -> Option<&'a str> {
        self.param("branch").flatten()
    }

    pub fn received(&self) -> Option<&'a str> {
        self.param("received").flatten()
    }

    /// `Some(None)` for a bare `;rport` (the client asks for it),
    /// `Some(Some(port))` once filled in.
    pub fn rport(&self) -> Option<Option<u16>> {
        self.param("rport").map(|v| v.and_then(|p| p.parse().ok()))
    }

    /// True when the branch carries the RFC 3261 magic cookie plus an
    /// identifier, so it can be used alone as the transaction key (a bare
    /// cookie, RFC 4475 badbranch, falls back to RFC 2543 matching).
    pub fn has_rfc3261_branch(&self) -> bool {
        self.branch()
            .is_some_and(|b| b.len() > 7 && b.starts_with("z9hG4bK"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_via() {
        let v = Via::parse("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776;rport;received=10.0.0.1")
            .unwrap();
        assert_eq!(v.transport, "UDP");
        assert_eq!(v.host, "192.0.2.1");
        assert_eq!(v.port, Some(5060));
        assert_eq!(v.branch(), Some("z9hG4bK776"));
        assert_eq!(v.rport(), Some(None));
        assert_eq!(v.received(), Some("10.0.0.1"));
        assert!(v.has_rfc3261_branch());
        let filled = Via::parse("SIP/2.0/TCP h;rport=5062").unwrap();
        assert_eq!(filled.rport(), Some(Some(5062)));
        assert_eq!(filled.port, None);
        assert_eq!(filled.branch(), None);
    }

    #[test]
    fn lws_everywhere() {
        let v = Via::parse("SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw").unwrap();
        assert_eq!(v.transport, "UDP");
        assert_eq!(v.host, "192.0.2.2");
        assert_eq!(v.branch(), Some("390skdjuw"));
        let w = Via::parse(
            "SIP  / 2.0  / TCP     spindle.example.com   ;\r\n  branch  =   z9hG4bK9ikj8",
        )
        .unwrap();
        assert_eq!(w.transport, "TCP");
        assert_eq!(w.host, "spindle.example.com");
        assert_eq!(w.branch(), Some("z9hG4bK9ikj8"));
        let x = Via::parse("SIP/2.0/UDP  192.168.255.111   ; branch=\r\n z9hG4bK30239").unwrap();
        assert_eq!(x.branch(), Some("z9hG4bK30239"));
        let y = Via::parse("SIP/2.0/TLS [2001:db8::9] : 5061 ;branch=z9hG4bKx").unwrap();
        assert_eq!(y.host, "[2001:db8::9]");
        assert_eq!(y.port, Some(5061));
    }

    #[test]
    fn rejects_malformed() {
        for s in [
            "",
            "SIP/2.0/UDP",
            "SIP/2.0/UDP ",
            "SIP/2.0 host",
            "HTTP/2.0/UDP host",
            "SIP/2.0/UDPhost",
            "SIP/2.0/UDP 192.0.2.15;;",
            "SIP/2.0/UDP host:99999",
            "SIP/2.0/UDP host:",
            "SIP/2.0/UDP host junk",
            "SIP/2.0/UDP [::1",
        ] {
            assert!(Via::parse(s).is_err(), "{s:?} should fail");
        }
    }
}
