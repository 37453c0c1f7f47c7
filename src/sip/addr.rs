//! Name-addr / addr-spec values (From, To, Contact, Route, Record-Route) and
//! splitting of comma-joined header values.

use memchr::memchr;

use super::error::{ParseError, ParseErrorKind};
use super::params::{
    find_param, has_addr_uri_delimiter, is_token_byte, scan_header_params, trim_lws, FoundParam,
};
use super::uri::is_scheme;

/// `[display] <uri> ;params`, a bare `uri;params`, or `*` (Contact wildcard).
///
/// `display` is the text between the quotes (escapes left as written) or the
/// unquoted token sequence. `params` is the raw header-parameter text after
/// the URI (starting at its first `;`, possibly after LWS), empty if none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameAddr<'a> {
    pub display: Option<&'a str>,
    pub uri: &'a str,
    pub params: &'a str,
}

fn bad(reason: impl Into<String>) -> ParseError {
    ParseError::new(ParseErrorKind::BadAddress, reason)
}

/// Minimal shape check of an absolute URI: `scheme:` followed by text with no
/// whitespace. Scheme-specific parsing is left to [`super::Uri`].
fn check_absolute_uri(uri: &str) -> Result<(), ParseError> {
    let bytes = uri.as_bytes();
    let colon =
        memchr(b':', bytes).ok_or_else(|| bad(format!("address URI {uri:?} has no scheme")))?;
    if !is_scheme(&uri[..colon]) || colon + 1 == uri.len() {
        return Err(bad(format!("invalid address URI {uri:?}")));
    }
    if has_addr_uri_delimiter(bytes) {
        return Err(bad(format!(
            "address URI {uri:?} contains whitespace or delimiters"
        )));
    }
    Ok(())
}

/// An unquoted display name is a sequence of tokens separated by ASCII
/// whitespace (which, unlike LWS, includes form feed).
fn valid_unquoted_display(display: &str) -> bool {
    display
        .bytes()
        .all(|b| is_token_byte(b) || b.is_ascii_whitespace())
}

impl<'a> NameAddr<'a> {
    pub fn parse(value: &'a str) -> Result<NameAddr<'a>, ParseError> {
        Self::parse_with_param(value, "").map(|(addr, _)| addr)
    }

    /// Parse and, in the same walk over the parameters, look one up: the
    /// second item is what `addr.param(wanted)` would return. The parser uses
    /// it to remember the From/To tag.
    pub(crate) fn parse_with_param(
        value: &'a str,
        wanted: &str,
    ) -> Result<(NameAddr<'a>, FoundParam<'a>), ParseError> {
        let s = trim_lws(value);
        if s == "*" {
            let star = NameAddr {
                display: None,
                uri: "*",
                params: "",
            };
            return Ok((star, None));
        }
        let bytes = s.as_bytes();
        let (display, rest) = if let Some(quoted) = s.strip_prefix('"') {
            let close =
                closing_quote(quoted).ok_or_else(|| bad("unterminated quoted display name"))?;
            let after = trim_lws(&quoted[close + 1..]);
            if !after.starts_with('<') {
                return Err(bad("quoted display name not followed by <uri>"));
            }
            (Some(&quoted[..close]), after)
        } else if let Some(lt) = memchr(b'<', bytes) {
            let display = trim_lws(&s[..lt]);
            if !valid_unquoted_display(display) {
                return Err(bad(format!("display name {display:?} must be quoted")));
            }
            ((!display.is_empty()).then_some(display), &s[lt..])
        } else {
            // Bare addr-spec: its URI cannot contain ';', ',' or '?', so
            // everything from the first ';' are header parameters.
            let end = memchr(b';', bytes).unwrap_or(s.len());
            let uri = trim_lws(&s[..end]);
            check_absolute_uri(uri)?;
            if uri.bytes().any(|b| b == b',' || b == b'?') {
                return Err(bad(format!(
                    "URI {uri:?} with ',' or '?' must be enclosed in <>"
                )));
            }
            let params = &s[end..];
            let found = scan_header_params(params, wanted)
                .map_err(|_| bad(format!("malformed parameters {params:?}")))?;
            let addr = NameAddr {
                display: None,
                uri,
                params,
            };
            return Ok((addr, found));
        };
        // rest starts with '<'
        let inner = &rest[1..];
        let gt = memchr(b'>', inner.as_bytes()).ok_or_else(|| bad("missing '>' in address"))?;
        let uri = &inner[..gt];
        check_absolute_uri(uri)?;
        let params = &inner[gt + 1..];
        let found = scan_header_params(params, wanted)
            .map_err(|_| bad(format!("malformed parameters {params:?}")))?;
        let addr = NameAddr {
            display,
            uri,
            params,
        };
        Ok((addr, found))
    }

    /// Header parameter (`tag`, `expires`, `q`...); `Some(None)` for a flag.
    pub fn param(&self, name: &str) -> Option<Option<&'a str>> {
        find_param(self.params, name)
    }

    /// The `tag` parameter value, if any.
    pub fn tag(&self) -> Option<&'a str> {
        self.param("tag").flatten()
    }
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
        if memchr(b',', bytes).is_none() {
            // The common single-value line: no need to track quotes and <>.
            self.rest = None;
            return Some(trim_lws(s));
        }
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

/// Split a header value on top-level commas (not inside quotes or `<>`),
/// trimmed; empty items are skipped. Only meaningful for list headers (Via,
/// Route, Record-Route, Contact...), not for Date or auth challenges.
pub fn split_values(value: &str) -> impl Iterator<Item = &str> {
    RawValues::new(value).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_addr_forms() {
        let a = NameAddr::parse(
            "\"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>\r\n  ;\r\n  tag = 98asjd8",
        )
        .unwrap();
        assert_eq!(a.display, Some("J Rosenberg \\\\\\\""));
        assert_eq!(a.uri, "sip:jdrosen@example.com");
        assert_eq!(a.tag(), Some("98asjd8"));

        let b =
            NameAddr::parse("sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n").unwrap();
        assert_eq!(b.display, None);
        assert_eq!(b.uri, "sip:vivekg@chair-dnrc.example.com");
        assert_eq!(b.tag(), Some("1918181833n"));

        let c = NameAddr::parse("caller<sip:caller@example.com>;tag=323").unwrap();
        assert_eq!(c.display, Some("caller"));
        assert_eq!(c.tag(), Some("323"));

        let d = NameAddr::parse(
            "token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;q=0.5;expires=60",
        )
        .unwrap();
        assert_eq!(d.display, Some("token1~` token2'+_ token3*%!.-"));
        assert_eq!(d.param("q"), Some(Some("0.5")));
        assert_eq!(d.param("expires"), Some(Some("60")));
        assert_eq!(d.param("tag"), None);

        let star = NameAddr::parse(" * ").unwrap();
        assert_eq!(star.uri, "*");

        let e = NameAddr::parse("<sip:a@b;lr>").unwrap();
        assert_eq!(e.uri, "sip:a@b;lr");
        assert_eq!(e.params, "");
        assert_eq!(
            NameAddr::parse("isbn:2983792873").unwrap().uri,
            "isbn:2983792873"
        );
    }

    #[test]
    fn name_addr_rejects_torture_cases() {
        for bad in [
            "\"Mr. J. User <sip:j.user@example.com>", // quotbal
            "Bell, Alexander <sip:a.g.bell@example.com>;tag=43", // baddn
            "\"Watson, Thomas\" < sip:t.watson@example.org >", // badaspec
            "sip:user@example.com?Route=%3Csip:sip.example.com%3E", // regbadct
            "\"Joe\" <sip:joe@example.org>;;;;",
            "<sip:a@b",
            "",
            "nocolon",
            "<sip:a@b> junk",
        ] {
            assert!(NameAddr::parse(bad).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn split_values_respects_quotes_and_angles() {
        let v: Vec<_> = split_values("<sip:a@b;x=1,2>, \"Doe, J\" <sip:c@d> ,sip:e@f,,").collect();
        assert_eq!(v, ["<sip:a@b;x=1,2>", "\"Doe, J\" <sip:c@d>", "sip:e@f"]);
        let raw: Vec<_> = RawValues::new("a,,b").collect();
        assert_eq!(raw, ["a", "", "b"]);
        assert_eq!(split_values("").count(), 0);
    }
}
