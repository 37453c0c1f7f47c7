//! A borrowed view of a `sip:`, `sips:` or `tel:` URI. Parsing only finds the
//! component boundaries; escapes are left as written so the URI can be
//! forwarded and displayed exactly as received.

use std::borrow::Cow;
use std::fmt;
use std::fmt::Write as _;

use memchr::memchr;

use super::addr::NameAddr;
use super::error::{ParseError, ParseErrorKind};
use super::params::{find_param, is_host_byte, is_lws, trim_lws};

/// `scheme:[user[:password]@]host[:port][;params][?headers]`.
///
/// `params` keeps its leading `;` and `headers` its leading `?` (both empty
/// when absent), so [`fmt::Display`] reproduces the input exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Uri<'a> {
    pub scheme: &'a str,
    pub user: Option<&'a str>,
    pub password: Option<&'a str>,
    /// Host as written; IPv6 references keep their brackets. For `tel:` the
    /// telephone number.
    pub host: &'a str,
    pub port: Option<u16>,
    pub params: &'a str,
    pub headers: &'a str,
}

fn bad(reason: impl Into<String>) -> ParseError {
    ParseError::new(ParseErrorKind::BadUri, reason)
}

/// RFC 3986 scheme: ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ).
pub(crate) fn is_scheme(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

impl<'a> Uri<'a> {
    /// Parse a sip, sips or tel URI. Any other scheme is an error (the caller
    /// may still route such a Request-URI opaquely).
    pub fn parse(s: &'a str) -> Result<Uri<'a>, ParseError> {
        if s.bytes().any(is_lws) {
            return Err(bad("URI contains whitespace"));
        }
        let colon = memchr(b':', s.as_bytes()).ok_or_else(|| bad("URI has no scheme"))?;
        let scheme = &s[..colon];
        let rest = &s[colon + 1..];
        if scheme.eq_ignore_ascii_case("tel") {
            return Self::parse_tel(scheme, rest);
        }
        if !(scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips")) {
            return Err(bad(format!("unsupported URI scheme {scheme:?}")));
        }
        // userinfo cannot hold an unescaped '@', while params and headers may
        // not either, so the first '@' ends the userinfo (RFC 3261 §25.1).
        let (user, password, hostpart) = match memchr(b'@', rest.as_bytes()) {
            Some(at) => {
                let userinfo = &rest[..at];
                let (user, password) = match memchr(b':', userinfo.as_bytes()) {
                    Some(c) => (&userinfo[..c], Some(&userinfo[c + 1..])),
                    None => (userinfo, None),
                };
                if user.is_empty() {
                    return Err(bad("URI has an empty user part"));
                }
                (Some(user), password, &rest[at + 1..])
            }
            None => (None, None, rest),
        };
        let host_end = if hostpart.starts_with('[') {
            memchr(b']', hostpart.as_bytes())
                .map(|i| i + 1)
                .ok_or_else(|| bad("unterminated IPv6 reference in URI"))?
        } else {
            position_of_any(hostpart, b":;?").unwrap_or(hostpart.len())
        };
        let host = &hostpart[..host_end];
        let valid_host = if let Some(inner) = host.strip_prefix('[') {
            let inner = &inner[..inner.len().saturating_sub(1)];
            !inner.is_empty()
                && inner
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        } else {
            !host.is_empty() && host.bytes().all(is_host_byte)
        };
        if host.is_empty() {
            return Err(bad("the host is missing"));
        }
        if !valid_host {
            return Err(bad(format!("invalid URI host {host:?}")));
        }
        let mut after = &hostpart[host_end..];
        let mut port = None;
        if let Some(p) = after.strip_prefix(':') {
            let end = position_of_any(p, b";?").unwrap_or(p.len());
            let digits = &p[..end];
            let not_a_port = || bad(format!("`{digits}` is not a port number (1-65535)"));
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(not_a_port());
            }
            port = Some(digits.parse::<u16>().map_err(|_| not_a_port())?);
            after = &p[end..];
        }
        let (params, headers) = split_params_headers(after)?;
        Ok(Uri {
            scheme,
            user,
            password,
            host,
            port,
            params,
            headers,
        })
    }

    /// Parse the URI of an address: a bare URI, or a name-addr such as a
    /// To header value (`"Alice" <sip:alice@example.com>;tag=1`), whose
    /// display name and header parameters are skipped.
    pub fn parse_address(text: &'a str) -> Result<Uri<'a>, ParseError> {
        Self::parse_address_text(text).map(|(_, uri)| uri)
    }

    /// [`Uri::parse_address`], with the URI's own text.
    fn parse_address_text(text: &'a str) -> Result<(&'a str, Uri<'a>), ParseError> {
        let text = trim_lws(text);
        // A bare URI first: it may hold `?headers`, which a bare addr-spec
        // may not, and it is the common case.
        if let Ok(uri) = Uri::parse(text) {
            return Ok((text, uri));
        }
        let uri_text = NameAddr::parse(text)?.uri;
        Ok((uri_text, Uri::parse(uri_text)?))
    }

    fn parse_tel(scheme: &'a str, rest: &'a str) -> Result<Uri<'a>, ParseError> {
        let end = position_of_any(rest, b";?").unwrap_or(rest.len());
        let number = &rest[..end];
        if number.is_empty()
            || !number.bytes().all(|b| {
                b.is_ascii_hexdigit()
                    || matches!(
                        b,
                        b'+' | b'-' | b'.' | b'(' | b')' | b'*' | b'#' | b'p' | b'w'
                    )
            })
        {
            return Err(bad(format!("invalid telephone number {number:?}")));
        }
        let (params, headers) = split_params_headers(&rest[end..])?;
        Ok(Uri {
            scheme,
            user: None,
            password: None,
            host: number,
            port: None,
            params,
            headers,
        })
    }

    /// URI parameter by case-insensitive name; `Some(None)` for a flag (`lr`).
    pub fn param(&self, name: &str) -> Option<Option<&'a str>> {
        find_param(self.params, name)
    }

    pub fn has_param(&self, name: &str) -> bool {
        self.param(name).is_some()
    }

    /// True for the `sips` scheme.
    pub fn is_secure(&self) -> bool {
        self.scheme.eq_ignore_ascii_case("sips")
    }

    /// The port a client uses when the URI names none (RFC 3261 §19.1.2).
    fn default_port(&self) -> Option<u16> {
        if self.is_secure() {
            Some(5061)
        } else if self.scheme.eq_ignore_ascii_case("sip") {
            Some(5060)
        } else {
            None
        }
    }

    /// The port as an address of record keeps it: `None` when it is the
    /// scheme's default, so `sip:a@h:5060` and `sip:a@h` are one subscriber.
    pub fn aor_port(&self) -> Option<u16> {
        self.port.filter(|&port| Some(port) != self.default_port())
    }

    /// True when [`Uri::write_aor`] would write `text`, the text this URI
    /// was parsed from, exactly as it is. Comparing lengths rules out a
    /// password, parameters, headers and a port written with leading zeros.
    fn is_aor(&self, text: &str) -> bool {
        let aor_len = self.scheme.len()
            + 1
            + self.user.map_or(0, |user| user.len() + 1)
            + self.host.len()
            + self.aor_port().map_or(0, |port| 1 + decimal_len(port));
        text.len() == aor_len
            && !self.scheme.bytes().any(|b| b.is_ascii_uppercase())
            && !self.host.bytes().any(|b| b.is_ascii_uppercase())
    }

    /// Appends the address of record (RFC 3261 §10.3): the scheme and host
    /// lower-cased, the user as written (it is case-sensitive), the port
    /// unless it is the default, and no password, parameters or headers.
    pub fn write_aor(&self, out: &mut String) {
        push_lowercase(out, self.scheme);
        out.push(':');
        if let Some(user) = self.user {
            out.push_str(user);
            out.push('@');
        }
        push_lowercase(out, self.host);
        if let Some(port) = self.aor_port() {
            let _ = write!(out, ":{port}");
        }
    }

    /// The address of record as a new string (see [`Uri::write_aor`]).
    pub fn aor(&self) -> String {
        let mut out = String::with_capacity(self.scheme.len() + self.host.len() + 24);
        self.write_aor(&mut out);
        out
    }
}

/// `host` as it appears in a URI: IPv6 addresses in brackets.
pub fn host_text(addr: &std::net::SocketAddr) -> String {
    match addr {
        std::net::SocketAddr::V4(v4) => v4.ip().to_string(),
        std::net::SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
    }
}

fn decimal_len(n: u16) -> usize {
    n.checked_ilog10().map_or(1, |digits| digits as usize + 1)
}

fn push_lowercase(out: &mut String, s: &str) {
    out.extend(s.chars().map(|c| c.to_ascii_lowercase()));
}

/// The address of record that `text` names, when it is a SIP, SIPS or tel
/// URI, bare (`sip:alice@example.com;transport=udp`) or as a name-addr
/// (`"Alice" <sip:alice@EXAMPLE.com>;tag=1`). Borrowed when `text` is already
/// canonical, so a plain AoR costs one parse and no allocation. `None` when
/// `text` is not such a URI.
///
/// This is the one canonical form for every key that stands for a
/// subscriber: the `hash` algorithm's key, the registrar's bindings and their
/// Redis keys, and the script's `Uri.aor`.
pub fn address_of_record(text: &str) -> Option<Cow<'_, str>> {
    let (uri_text, uri) = Uri::parse_address_text(text).ok()?;
    Some(if uri.is_aor(uri_text) {
        Cow::Borrowed(uri_text)
    } else {
        Cow::Owned(uri.aor())
    })
}

/// Index of the first byte of `s` that is one of `set` (all ASCII).
#[inline]
fn position_of_any(s: &str, set: &[u8]) -> Option<usize> {
    s.bytes().position(|b| set.contains(&b))
}

/// Split `[;params][?headers]` keeping each part's leading delimiter.
fn split_params_headers(s: &str) -> Result<(&str, &str), ParseError> {
    if s.is_empty() {
        return Ok(("", ""));
    }
    if !(s.starts_with(';') || s.starts_with('?')) {
        return Err(bad(format!("unexpected characters {s:?} after URI host")));
    }
    let q = memchr(b'?', s.as_bytes()).unwrap_or(s.len());
    Ok((&s[..q], &s[q..]))
}

impl fmt::Display for Uri<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.scheme)?;
        if let Some(user) = self.user {
            f.write_str(user)?;
            if let Some(pw) = self.password {
                write!(f, ":{pw}")?;
            }
            f.write_str("@")?;
        }
        f.write_str(self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        write!(f, "{}{}", self.params, self.headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_sip_uri() {
        let u =
            Uri::parse("sip:alice:secret@example.com:5070;transport=tcp;lr?subject=hi").unwrap();
        assert_eq!(u.scheme, "sip");
        assert_eq!(u.user, Some("alice"));
        assert_eq!(u.password, Some("secret"));
        assert_eq!(u.host, "example.com");
        assert_eq!(u.port, Some(5070));
        assert_eq!(u.params, ";transport=tcp;lr");
        assert_eq!(u.headers, "?subject=hi");
        assert_eq!(u.param("TRANSPORT"), Some(Some("tcp")));
        assert_eq!(u.param("lr"), Some(None));
        assert!(u.has_param("lr"));
        assert!(!u.has_param("maddr"));
    }

    #[test]
    fn ipv6_and_tel() {
        let u = Uri::parse("sips:[2001:db8::1]:5061;lr").unwrap();
        assert_eq!(u.host, "[2001:db8::1]");
        assert_eq!(u.port, Some(5061));
        assert!(u.is_secure());
        let t = Uri::parse("tel:+1-201-555-0123;phone-context=example.com").unwrap();
        assert_eq!(t.host, "+1-201-555-0123");
        assert_eq!(t.user, None);
        assert_eq!(t.param("phone-context"), Some(Some("example.com")));
    }

    #[test]
    fn torture_user_parts() {
        // RFC 4475 intmeth: the first '@' ends the userinfo, the first ':' in it
        // starts the password.
        let s = "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com";
        let u = Uri::parse(s).unwrap();
        assert_eq!(
            u.user,
            Some("1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*")
        );
        assert_eq!(
            u.password,
            Some("&it+has=1,weird!*pas$wo~d_too.(doesn't-it)")
        );
        assert_eq!(u.host, "example.com");
        let semi = Uri::parse("sip:user;par=u%40example.net@example.com").unwrap();
        assert_eq!(semi.user, Some("user;par=u%40example.net"));
        assert_eq!(semi.params, "");
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "sip:example.com",
            "sip:a@b.c:5060;lr",
            "SIP:Bob@[::1];maddr=x?h=v&i=w",
            "tel:+4930123",
            "sip:u:@h",
        ] {
            assert_eq!(Uri::parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn phones_variants_of_one_subscriber_have_one_address_of_record() {
        for text in [
            "sip:alice@example.com",
            "<sip:alice@EXAMPLE.com;transport=udp>",
            "sip:alice@example.com:5060;user=phone",
            "\"Alice Liddell\" <sip:alice@Example.Com:5060;transport=tcp>;tag=9fxced76sl",
            "Alice <SIP:alice:secret@example.com?subject=hi>",
            "  sip:alice@example.com;lr  ",
        ] {
            assert_eq!(
                address_of_record(text).as_deref(),
                Some("sip:alice@example.com"),
                "{text:?}"
            );
        }
    }

    #[test]
    fn other_subscribers_keep_distinct_addresses_of_record() {
        let aor = |text| address_of_record(text).unwrap().into_owned();
        let alice = aor("sip:alice@example.com");
        for other in [
            "sip:bob@example.com",
            "sip:Alice@example.com", // the user part is case-sensitive
            "sip:alice@example.org",
            "sip:alice@example.com:5070",
            "sips:alice@example.com",
            "sip:example.com",
        ] {
            assert_ne!(aor(other), alice, "{other:?}");
        }
        assert_eq!(
            aor("sip:alice@example.com:5070"),
            "sip:alice@example.com:5070"
        );
        assert_eq!(aor("sips:alice@example.com:5061"), "sips:alice@example.com");
        assert_eq!(
            aor("sips:alice@example.com:5060"),
            "sips:alice@example.com:5060"
        );
        assert_eq!(
            aor("sip:alice@[2001:DB8::1]:5060"),
            "sip:alice@[2001:db8::1]"
        );
        assert_eq!(
            aor("tel:+1-201-555-0123;phone-context=x"),
            "tel:+1-201-555-0123"
        );
        assert_eq!(
            aor("sip:alice@example.com:05070"),
            "sip:alice@example.com:5070"
        );
        assert_eq!(aor("sip:alice@example.com:0"), "sip:alice@example.com:0");
    }

    #[test]
    fn canonical_text_is_borrowed_and_non_uris_are_none() {
        assert!(matches!(
            address_of_record("sip:alice@example.com"),
            Some(Cow::Borrowed("sip:alice@example.com"))
        ));
        assert!(matches!(
            address_of_record("<sip:alice@example.com>"),
            Some(Cow::Borrowed("sip:alice@example.com"))
        ));
        for text in [
            "",
            "alice",
            "a84b4c76e66710@pc33.atlanta.com",
            "http://x",
            "urn:x:y",
            "<sip:>",
        ] {
            assert_eq!(address_of_record(text), None, "{text:?}");
        }
    }

    #[test]
    fn rejects_malformed() {
        for s in [
            "",
            "sip:",
            "sip:user@",
            "sip:@host",
            "sip:host:",
            "sip:host:99999",
            "sip:host:12a",
            "sip:[::1",
            "sip:ho st",
            "<sip:host>",
            "http://example.com",
            "sip:host>",
            "tel:",
        ] {
            assert!(Uri::parse(s).is_err(), "{s:?} should fail");
        }
    }
}
