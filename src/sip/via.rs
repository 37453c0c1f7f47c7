//! One Via value: `SIP/2.0/transport sent-by *(;param)`. Responses are routed
//! by the top Via, so this is on the hot path for every response.

use memchr::memchr;

use super::error::{ParseError, ParseErrorKind};
use super::params::{
    find_param, is_host_byte, is_lws, scan_header_params, skip_lws_at, token_end_at, trim_lws,
};

#[derive(Clone, Copy, Debug, Eq)]
pub struct Via<'a> {
    /// Transport as written (`UDP`, `TCP`, `TLS`...).
    pub transport: &'a str,
    /// sent-by host; IPv6 references keep their brackets.
    pub host: &'a str,
    pub port: Option<u16>,
    /// Raw parameter text starting at the first `;` (possibly after LWS).
    pub params: &'a str,
    /// The `branch` found while `params` was validated, so that transaction
    /// matching does not walk the list again.
    branch_cache: BranchCache<'a>,
}

/// A remembered `branch` lookup, valid only for the exact `params` slice it
/// was computed from (the public field may be reassigned by a caller).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BranchCache<'a> {
    params: &'a str,
    branch: Option<&'a str>,
}

impl PartialEq for Via<'_> {
    /// Equal when the written parts are; the cache is derived from them.
    fn eq(&self, other: &Self) -> bool {
        self.transport == other.transport
            && self.host == other.host
            && self.port == other.port
            && self.params == other.params
    }
}

fn bad(reason: impl Into<String>) -> ParseError {
    ParseError::new(ParseErrorKind::BadVia, reason)
}

/// `1*DIGIT` as a port; `None` when empty or above 65535 (leading zeros are
/// fine, as with `str::parse::<u16>`).
fn port_number(digits: &[u8]) -> Option<u16> {
    if digits.is_empty() {
        return None;
    }
    let mut n: u32 = 0;
    for &d in digits {
        n = n * 10 + u32::from(d - b'0');
        if n > u32::from(u16::MAX) {
            return None;
        }
    }
    u16::try_from(n).ok()
}

impl<'a> Via<'a> {
    /// A Via whose parts were validated earlier (the parser remembers them
    /// for [`super::Message::top_via`]); `branch` is what `params` holds.
    pub(crate) fn from_validated_parts(
        transport: &'a str,
        host: &'a str,
        port: Option<u16>,
        params: &'a str,
        branch: Option<&'a str>,
    ) -> Via<'a> {
        Via {
            transport,
            host,
            port,
            params,
            branch_cache: BranchCache { params, branch },
        }
    }

    pub fn parse(value: &'a str) -> Result<Via<'a>, ParseError> {
        // Every index below sits next to an ASCII byte (or at an end), so
        // slicing `value` at it is on a char boundary.
        let b = value.as_bytes();
        // sent-protocol = name SLASH version SLASH transport, LWS allowed around '/'
        let name_start = skip_lws_at(b, 0);
        let name_end = token_end_at(b, name_start);
        let slash = skip_lws_at(b, name_end);
        if b.get(slash) != Some(&b'/') {
            return Err(bad("Via missing '/' after protocol name"));
        }
        let version_start = skip_lws_at(b, slash + 1);
        let version_end = token_end_at(b, version_start);
        let slash = skip_lws_at(b, version_end);
        if b.get(slash) != Some(&b'/') {
            return Err(bad("Via missing '/' after protocol version"));
        }
        let transport_start = skip_lws_at(b, slash + 1);
        let transport_end = token_end_at(b, transport_start);
        if !b[name_start..name_end].eq_ignore_ascii_case(b"SIP")
            || version_end == version_start
            || transport_end == transport_start
        {
            return Err(bad(format!(
                "invalid Via protocol in {:?}",
                trim_lws(value)
            )));
        }
        if !b.get(transport_end).is_some_and(|&c| is_lws(c)) {
            return Err(bad("Via needs whitespace before sent-by"));
        }
        let host_start = skip_lws_at(b, transport_end);
        let host_end = if b.get(host_start) == Some(&b'[') {
            memchr(b']', &b[host_start..])
                .map(|i| host_start + i + 1)
                .ok_or_else(|| bad("unterminated IPv6 reference in Via"))?
        } else {
            let mut end = host_start;
            while end < b.len() && is_host_byte(b[end]) {
                end += 1;
            }
            end
        };
        let host = &value[host_start..host_end];
        if host.is_empty() || host == "[]" {
            return Err(bad("Via has no sent-by host"));
        }
        let mut params_start = skip_lws_at(b, host_end);
        let mut port = None;
        if b.get(params_start) == Some(&b':') {
            let digits_start = skip_lws_at(b, params_start + 1);
            let mut digits_end = digits_start;
            while digits_end < b.len() && b[digits_end].is_ascii_digit() {
                digits_end += 1;
            }
            port = Some(
                port_number(&b[digits_start..digits_end])
                    .ok_or_else(|| bad(format!("invalid Via port in {:?}", trim_lws(value))))?,
            );
            params_start = digits_end;
        }
        let params = &value[params_start..];
        let branch = scan_header_params(params, "branch")
            .map_err(|_| bad(format!("malformed Via parameters {:?}", trim_lws(params))))?;
        Ok(Via::from_validated_parts(
            &value[transport_start..transport_end],
            host,
            port,
            params,
            branch.flatten(),
        ))
    }

    /// Via parameter by case-insensitive name; `Some(None)` for a flag.
    pub fn param(&self, name: &str) -> Option<Option<&'a str>> {
        find_param(self.params, name)
    }

    pub fn branch(&self) -> Option<&'a str> {
        let cache = self.branch_cache;
        if cache.params.as_ptr() == self.params.as_ptr() && cache.params.len() == self.params.len()
        {
            return cache.branch;
        }
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
    fn branch_follows_reassigned_params() {
        let mut v = Via::parse("SIP/2.0/UDP h;branch=z9hG4bKold").unwrap();
        assert_eq!(v.branch(), Some("z9hG4bKold"));
        v.params = ";rport;branch=z9hG4bKnew";
        assert_eq!(v.branch(), Some("z9hG4bKnew"));
        v.params = "";
        assert_eq!(v.branch(), None);
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
