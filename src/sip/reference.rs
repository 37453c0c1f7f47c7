//! The parser's previous, straightforward implementations, kept only for
//! tests: the optimised code must classify and slice every input exactly as
//! these do (differential property tests below and in `proptests`).

#![allow(dead_code)]

use super::error::{ParseError, ParseErrorKind};
use super::uri::is_scheme;

/// RFC 3261 `token` character.
#[inline]
pub fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
        )
}

/// True when `s` is a non-empty RFC 3261 token.
#[inline]
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token_byte)
}

/// Linear whitespace, including the CRLF of a folded line.
#[inline]
pub fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Byte index of the first `delim` in `s` that is not inside a quoted string
/// (backslash escapes honoured). `None` if absent or a quote is unterminated.
pub fn find_unquoted(s: &str, delim: u8) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut in_quotes = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if in_quotes {
            if b == b'\\' {
                i += 1;
            } else if b == b'"' {
                in_quotes = false;
            }
        } else if b == b'"' {
            in_quotes = true;
        } else if b == delim {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// True when every quoted string in `s` is closed.
pub fn quotes_balanced(s: &str) -> bool {
    let bytes = s.as_bytes();
    let mut in_quotes = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_quotes => i += 1,
            b'"' => in_quotes = !in_quotes,
            _ => {}
        }
        i += 1;
    }
    !in_quotes
}

/// Iterator over the `;`-separated items of a parameter list, each split into
/// a trimmed name and optional trimmed value. Text before the first `;` is
/// skipped (callers pass the list starting at or before its first `;`).
/// Empty items (`;;`) are yielded with an empty name so validators can see them.
pub struct Params<'a> {
    rest: Option<&'a str>,
}

impl<'a> Params<'a> {
    pub fn new(list: &'a str) -> Self {
        let rest = find_unquoted(list, b';').map(|i| &list[i + 1..]);
        Params { rest }
    }
}

impl<'a> Iterator for Params<'a> {
    type Item = (&'a str, Option<&'a str>);

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.rest?;
        let item = match find_unquoted(rest, b';') {
            Some(i) => {
                self.rest = Some(&rest[i + 1..]);
                &rest[..i]
            }
            None => {
                self.rest = None;
                rest
            }
        };
        Some(match item.find('=') {
            Some(eq) => (trim_lws(&item[..eq]), Some(trim_lws(&item[eq + 1..]))),
            None => (trim_lws(item), None),
        })
    }
}

/// Look up a parameter by case-insensitive name: `Some(None)` for a flag such
/// as `;lr`, `Some(Some(v))` for `;name=v` (quoted values keep their quotes).
pub fn find_param<'a>(list: &'a str, name: &str) -> Option<Option<&'a str>> {
    Params::new(list)
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

fn trim_lws(s: &str) -> &str {
    s.trim_matches(|c| matches!(c, ' ' | '\t' | '\r' | '\n'))
}

/// Validate a header parameter list: empty, or LWS then `;param` items where
/// each name is a token and each value is a token, host, or quoted string.
pub fn valid_header_params(list: &str) -> bool {
    let trimmed = trim_lws(list);
    if trimmed.is_empty() {
        return true;
    }
    if !trimmed.starts_with(';') || !quotes_balanced(trimmed) {
        return false;
    }
    Params::new(trimmed).all(|(name, value)| {
        is_token(name)
            && match value {
                None => true,
                Some(v) if v.starts_with('"') => v.len() >= 2 && v.ends_with('"'),
                // host values may carry IPv6 brackets and colons
                Some(v) => {
                    !v.is_empty()
                        && v.bytes()
                            .all(|b| is_token_byte(b) || matches!(b, b'[' | b']' | b':'))
                }
            }
    })
}

/// Old `Via::parse`: (transport, host, port, params).
pub(crate) fn via_parse(value: &str) -> Result<(&str, &str, Option<u16>, &str), ParseError> {
    let bad = |reason: String| ParseError::new(ParseErrorKind::BadVia, reason);
    let s = skip_lws(value);
    // sent-protocol = name SLASH version SLASH transport, LWS allowed around '/'
    let (name, rest) = take_token(s);
    let rest = skip_lws(rest)
        .strip_prefix('/')
        .ok_or_else(|| bad(String::from("Via missing '/' after protocol name")))?;
    let (version, rest) = take_token(skip_lws(rest));
    let rest = skip_lws(rest)
        .strip_prefix('/')
        .ok_or_else(|| bad(String::from("Via missing '/' after protocol version")))?;
    let (transport, rest) = take_token(skip_lws(rest));
    if !name.eq_ignore_ascii_case("SIP") || !is_token(version) || !is_token(transport) {
        return Err(bad(format!(
            "invalid Via protocol in {:?}",
            trim_lws(value)
        )));
    }
    if !rest.starts_with(|c: char| c.is_ascii() && is_lws(c as u8)) {
        return Err(bad(String::from("Via needs whitespace before sent-by")));
    }
    let rest = skip_lws(rest);
    let host_end = if rest.starts_with('[') {
        rest.find(']')
            .map(|i| i + 1)
            .ok_or_else(|| bad(String::from("unterminated IPv6 reference in Via")))?
    } else {
        rest.bytes()
            .position(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')))
            .unwrap_or(rest.len())
    };
    let host = &rest[..host_end];
    if host.is_empty() || host == "[]" {
        return Err(bad(String::from("Via has no sent-by host")));
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
    Ok((transport, host, port, rest))
}

fn skip_lws(s: &str) -> &str {
    s.trim_start_matches([' ', '\t', '\r', '\n'])
}

fn take_token(s: &str) -> (&str, &str) {
    let end = s.bytes().position(|b| !is_token_byte(b)).unwrap_or(s.len());
    (&s[..end], &s[end..])
}

/// Minimal shape check of an absolute URI: `scheme:` followed by text with no
/// whitespace. Scheme-specific parsing is left to [`super::Uri`].
fn check_absolute_uri(uri: &str) -> Result<(), ParseError> {
    let colon = uri
        .find(':')
        .ok_or_else(|| bad(format!("address URI {uri:?} has no scheme")))?;
    if !is_scheme(&uri[..colon]) || colon + 1 == uri.len() {
        return Err(bad(format!("invalid address URI {uri:?}")));
    }
    if uri
        .bytes()
        .any(|b| is_lws(b) || matches!(b, b'<' | b'>' | b'"'))
    {
        return Err(bad(format!(
            "address URI {uri:?} contains whitespace or delimiters"
        )));
    }
    Ok(())
}

/// Old `NameAddr::parse`: (display, uri, params).
pub(crate) fn name_addr_parse(value: &str) -> Result<(Option<&str>, &str, &str), ParseError> {
    let s = trim_lws(value);
    if s == "*" {
        return Ok((None, "*", ""));
    }
    let (display, rest) = if let Some(quoted) = s.strip_prefix('"') {
        let close = closing_quote(quoted).ok_or_else(|| bad("unterminated quoted display name"))?;
        let after = trim_lws(&quoted[close + 1..]);
        if !after.starts_with('<') {
            return Err(bad("quoted display name not followed by <uri>"));
        }
        (Some(&quoted[..close]), after)
    } else if let Some(lt) = s.find('<') {
        let display = trim_lws(&s[..lt]);
        if !display
            .split(|c: char| c.is_ascii_whitespace())
            .filter(|w| !w.is_empty())
            .all(is_token)
        {
            return Err(bad(format!("display name {display:?} must be quoted")));
        }
        ((!display.is_empty()).then_some(display), &s[lt..])
    } else {
        // Bare addr-spec: its URI cannot contain ';', ',' or '?', so
        // everything from the first ';' are header parameters.
        let end = s.find(';').unwrap_or(s.len());
        let uri = trim_lws(&s[..end]);
        check_absolute_uri(uri)?;
        if uri.contains([',', '?']) {
            return Err(bad(format!(
                "URI {uri:?} with ',' or '?' must be enclosed in <>"
            )));
        }
        let params = &s[end..];
        if !valid_header_params(params) {
            return Err(bad(format!("malformed parameters {params:?}")));
        }
        return Ok((None, uri, params));
    };
    // rest starts with '<'
    let inner = &rest[1..];
    let gt = inner
        .find('>')
        .ok_or_else(|| bad("missing '>' in address"))?;
    let uri = &inner[..gt];
    check_absolute_uri(uri)?;
    let params = &inner[gt + 1..];
    if !valid_header_params(params) {
        return Err(bad(format!("malformed parameters {params:?}")));
    }
    Ok((display, uri, params))
}

/// Index of the closing quote in text following an opening quote.
fn closing_quote(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// Iterator over the top-level comma-separated values of a header, trimmed,
/// including empty ones (used by validation to spot `a,,b`).
pub(crate) struct RawValues<'a> {
    rest: Option<&'a str>,
}

impl<'a> RawValues<'a> {
    pub(crate) fn new(value: &'a str) -> Self {
        RawValues { rest: Some(value) }
    }
}

impl<'a> Iterator for RawValues<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let s = self.rest?;
        let bytes = s.as_bytes();
        let mut in_quotes = false;
        let mut in_angle = false;
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' if in_quotes => i += 1,
                b'"' if !in_angle => in_quotes = !in_quotes,
                b'<' if !in_quotes => in_angle = true,
                b'>' if !in_quotes => in_angle = false,
                b',' if !in_quotes && !in_angle => {
                    self.rest = Some(&s[i + 1..]);
                    return Some(trim_lws(&s[..i]));
                }
                _ => {}
            }
            i += 1;
        }
        self.rest = None;
        Some(trim_lws(s))
    }
}

fn bad(reason: impl Into<String>) -> ParseError {
    ParseError::new(ParseErrorKind::BadAddress, reason)
}

/// `1*DIGIT LWS method`, number below 2^31 (RFC 3261 §8.1.1.5).
pub(crate) fn parse_cseq(value: &str) -> Option<(u32, &str)> {
    let digits_end = value
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(value.len());
    let digits = &value[..digits_end];
    if digits.is_empty() || digits.len() > 10 {
        return None;
    }
    let number: u32 = digits.parse().ok()?;
    if number >= 1 << 31 {
        return None;
    }
    let rest = &value[digits_end..];
    let method = trim_lws(rest);
    if method.len() == rest.len() || !is_token(method) {
        return None; // no separating LWS, or not a token
    }
    Some((number, method))
}

use super::message::HeaderName;

/// Case-insensitive lookup, including RFC 3261 / 3265 / 3515 compact forms.
pub(crate) fn header_name(name: &str) -> HeaderName {
    let bytes = name.as_bytes();
    if bytes.len() == 1 {
        return match bytes[0].to_ascii_lowercase() {
            b'v' => HeaderName::Via,
            b'i' => HeaderName::CallId,
            b'l' => HeaderName::ContentLength,
            b'f' => HeaderName::From,
            b't' => HeaderName::To,
            b'm' => HeaderName::Contact,
            b'c' => HeaderName::ContentType,
            b'k' => HeaderName::Supported,
            b's' => HeaderName::Subject,
            b'e' => HeaderName::ContentEncoding,
            b'o' => HeaderName::Event,
            b'r' => HeaderName::ReferTo,
            b'u' => HeaderName::AllowEvents,
            _ => HeaderName::Other,
        };
    }
    // Lower-case into a stack buffer, then match exact byte strings.
    let mut lower = [0u8; 20];
    if bytes.len() > lower.len() {
        return HeaderName::Other;
    }
    for (dst, src) in lower.iter_mut().zip(bytes) {
        *dst = src.to_ascii_lowercase();
    }
    match &lower[..bytes.len()] {
        b"via" => HeaderName::Via,
        b"from" => HeaderName::From,
        b"to" => HeaderName::To,
        b"call-id" => HeaderName::CallId,
        b"cseq" => HeaderName::CSeq,
        b"content-length" => HeaderName::ContentLength,
        b"content-type" => HeaderName::ContentType,
        b"contact" => HeaderName::Contact,
        b"max-forwards" => HeaderName::MaxForwards,
        b"route" => HeaderName::Route,
        b"record-route" => HeaderName::RecordRoute,
        b"expires" => HeaderName::Expires,
        b"min-expires" => HeaderName::MinExpires,
        b"path" => HeaderName::Path,
        b"retry-after" => HeaderName::RetryAfter,
        b"require" => HeaderName::Require,
        b"proxy-require" => HeaderName::ProxyRequire,
        b"supported" => HeaderName::Supported,
        b"unsupported" => HeaderName::Unsupported,
        b"subject" => HeaderName::Subject,
        b"event" => HeaderName::Event,
        b"refer-to" => HeaderName::ReferTo,
        b"allow-events" => HeaderName::AllowEvents,
        b"content-encoding" => HeaderName::ContentEncoding,
        _ => HeaderName::Other,
    }
}

use super::uri::Uri;

fn uri_bad(reason: impl Into<String>) -> ParseError {
    ParseError::new(ParseErrorKind::BadUri, reason)
}

fn is_host_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')
}

pub(crate) fn uri_parse<'a>(s: &'a str) -> Result<Uri<'a>, ParseError> {
    if s.bytes().any(is_lws) {
        return Err(uri_bad("URI contains whitespace"));
    }
    let colon = s.find(':').ok_or_else(|| uri_bad("URI has no scheme"))?;
    let scheme = &s[..colon];
    let rest = &s[colon + 1..];
    if scheme.eq_ignore_ascii_case("tel") {
        return uri_parse_tel(scheme, rest);
    }
    if !(scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips")) {
        return Err(uri_bad(format!("unsupported URI scheme {scheme:?}")));
    }
    // userinfo cannot hold an unescaped '@', while params and headers may
    // not either, so the first '@' ends the userinfo (RFC 3261 §25.1).
    let (user, password, hostpart) = match rest.find('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let (user, password) = match userinfo.find(':') {
                Some(c) => (&userinfo[..c], Some(&userinfo[c + 1..])),
                None => (userinfo, None),
            };
            if user.is_empty() {
                return Err(uri_bad("URI has an empty user part"));
            }
            (Some(user), password, &rest[at + 1..])
        }
        None => (None, None, rest),
    };
    let host_end = if hostpart.starts_with('[') {
        hostpart
            .find(']')
            .map(|i| i + 1)
            .ok_or_else(|| uri_bad("unterminated IPv6 reference in URI"))?
    } else {
        hostpart.find([':', ';', '?']).unwrap_or(hostpart.len())
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
    if !valid_host {
        return Err(uri_bad(format!("invalid URI host {host:?}")));
    }
    let mut after = &hostpart[host_end..];
    let mut port = None;
    if let Some(p) = after.strip_prefix(':') {
        let end = p.find([';', '?']).unwrap_or(p.len());
        let digits = &p[..end];
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(uri_bad(format!("invalid URI port {digits:?}")));
        }
        port = Some(
            digits
                .parse::<u16>()
                .map_err(|_| uri_bad(format!("URI port {digits} out of range")))?,
        );
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

fn uri_parse_tel<'a>(scheme: &'a str, rest: &'a str) -> Result<Uri<'a>, ParseError> {
    let end = rest.find([';', '?']).unwrap_or(rest.len());
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
        return Err(uri_bad(format!("invalid telephone number {number:?}")));
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

/// Split `[;params][?headers]` keeping each part's leading delimiter.
fn split_params_headers(s: &str) -> Result<(&str, &str), ParseError> {
    if s.is_empty() {
        return Ok(("", ""));
    }
    if !(s.starts_with(';') || s.starts_with('?')) {
        return Err(uri_bad(format!(
            "unexpected characters {s:?} after URI host"
        )));
    }
    let q = s.find('?').unwrap_or(s.len());
    Ok((&s[..q], &s[q..]))
}

#[cfg(test)]
pub(crate) mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;

    use crate::sip::addr::RawValues as NewRawValues;
    use crate::sip::message::parse_cseq as new_parse_cseq;
    use crate::sip::params::{scan_header_params, valid_header_params as new_valid_params};
    use crate::sip::{parse, HeaderName as NewHeaderName, Message, NameAddr, Uri, Via};

    /// New and old code agree on one piece of text, whatever it is.
    fn same_answers(s: &str) {
        assert_eq!(new_valid_params(s), super::valid_header_params(s), "{s:?}");
        for wanted in ["branch", "tag", "lr", "x", ""] {
            let expected = super::valid_header_params(s).then(|| super::find_param(s, wanted));
            assert_eq!(
                scan_header_params(s, wanted).ok(),
                expected,
                "{s:?} {wanted}"
            );
            assert_eq!(
                crate::sip::params::find_param(s, wanted),
                super::find_param(s, wanted),
                "{s:?}"
            );
        }
        match (Via::parse(s), super::via_parse(s)) {
            (Ok(v), Ok(old)) => {
                assert_eq!((v.transport, v.host, v.port, v.params), old, "{s:?}");
                assert_eq!(v.branch(), super::find_param(old.3, "branch").flatten());
            }
            (Err(e), Err(old)) => assert_eq!(e.reason, old.reason, "{s:?}"),
            (new, old) => panic!("Via {s:?}: {new:?} vs {old:?}"),
        }
        match (
            NameAddr::parse_with_param(s, "tag"),
            super::name_addr_parse(s),
        ) {
            (Ok((a, tag)), Ok(old)) => {
                assert_eq!((a.display, a.uri, a.params), old, "{s:?}");
                assert_eq!(tag, super::find_param(old.2, "tag"), "{s:?}");
            }
            (Err(e), Err(old)) => assert_eq!(e.reason, old.reason, "{s:?}"),
            (new, old) => panic!("NameAddr {s:?}: {new:?} vs {old:?}"),
        }
        match (Uri::parse(s), super::uri_parse(s)) {
            (Ok(u), Ok(old)) => assert_eq!(u, old, "{s:?}"),
            (Err(e), Err(old)) => assert_eq!(e.reason, old.reason, "{s:?}"),
            (new, old) => panic!("Uri {s:?}: {new:?} vs {old:?}"),
        }
        assert_eq!(
            NewRawValues::new(s).collect::<Vec<_>>(),
            super::RawValues::new(s).collect::<Vec<_>>()
        );
        assert_eq!(new_parse_cseq(s), super::parse_cseq(s), "{s:?}");
        assert_eq!(NewHeaderName::from_name(s), super::header_name(s), "{s:?}");
        assert_eq!(crate::sip::params::trim_lws(s), super::trim_lws(s));
    }

    /// What a parsed message answers, read through the remembered spans and
    /// again by re-reading the headers, must be the same.
    pub(crate) fn remembered_matches_headers(m: &Message) {
        let slow = m.without_remembered();
        assert_eq!(m.top_via(), slow.top_via());
        assert_eq!(
            m.top_via().and_then(|v| v.branch()),
            slow.top_via().and_then(|v| v.branch())
        );
        assert_eq!(m.from_tag(), slow.from_tag());
        assert_eq!(m.to_tag(), slow.to_tag());
        assert_eq!(m.call_id(), slow.call_id());
        assert_eq!(m.cseq(), slow.cseq());
        assert_eq!(m.max_forwards(), slow.max_forwards());
        assert_eq!(m.method_str(), slow.method_str());
    }

    #[test]
    fn torture_corpus_agrees() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/rfc4475");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("corpus directory") {
            let path = entry.expect("corpus entry").path();
            let bytes = std::fs::read(&path).expect("corpus file");
            let msg = match parse(Bytes::from(bytes)) {
                Ok(m) => m,
                Err(e) => match e.partial {
                    Some(p) => *p,
                    None => continue,
                },
            };
            if msg.remembered.is_some() {
                remembered_matches_headers(&msg);
            }
            for h in msg.headers() {
                same_answers(h.value(&msg));
                for v in NewRawValues::new(h.value(&msg)) {
                    same_answers(v);
                }
            }
            seen += 1;
        }
        assert!(seen > 30, "only {seen} corpus messages");
    }

    #[test]
    fn tricky_texts_agree() {
        for s in [
            "SIP/2.0/UDP h;branch=\"a;b\" ;x",
            "SIP/2.0/UDP h;branch=\"a\"x\"y\"",
            "SIP/2.0/UDP h ; branch = z9hG4bK1 ;",
            "SIP/2.0/UDP h;x=\"a\\\"",
            "<sip:a@b>;tag=\"q\" \"r\"",
            "<sip:a@b>;TAG=1;tag=2",
            "a\x0cb <sip:a@b>",
            "sip:a@b;tag",
            "sip:u@[::1]:5060;lr?x=y",
            "0009\r\n  INVITE",
            "4294967296 INVITE",
            "Content-Length",
            "content-lengtH",
            "call\rid",
            "ÿ;a=b",
        ] {
            same_answers(s);
        }
    }

    proptest! {
        #[test]
        fn random_texts_agree(s in "[ \t\r\n;=,\"<>:@?\\[\\]\\\\a-cA-C0-9./_~*'-]{0,40}") {
            same_answers(&s);
        }

        #[test]
        fn shaped_texts_agree(
            head in prop_oneof![
                Just("SIP/2.0/UDP h.example".to_string()),
                Just("SIP / 2.0 / TCP [::1] : 5060".to_string()),
                Just("\"Al;ice\" <sip:a@b;lr>".to_string()),
                Just("Bob <sip:b@c>".to_string()),
                Just("sip:c@d".to_string()),
            ],
            tail in "([ \t]{0,2};[ \t]{0,2}[a-zA-Z!~]{0,4}([ \t]{0,2}=[ \t]{0,2}([a-z0-9.:\\[\\]]{0,5}|\"[a-z;\\\\\" ]{0,4}\"?))?){0,4}[ ,x]{0,1}",
        ) {
            same_answers(&format!("{head}{tail}"));
        }

        #[test]
        fn remembered_fields_agree_on_mutations(
            text in "(INVITE|OPTIONS|x) sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1(, SIP/2.0/TCP g)?\r\nFrom: <sip:a@b>(;tag=[a-z]{1,3})?\r\nTo: (\"B\" )?<sip:b@c>(;tag=x)?\r\nCall-ID: [a-z]{1,4}\r\nCSeq: [0-9]{1,3} (INVITE|OPTIONS|x)\r\n(Max-Forwards: [0-9]{1,3}\r\n)?\r\n",
        ) {
            if let Ok(m) = parse(Bytes::from(text.into_bytes())) {
                remembered_matches_headers(&m);
            }
        }
    }
}
