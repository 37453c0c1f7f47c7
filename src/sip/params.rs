//! Lexical helpers shared by the URI, address and Via views: token
//! characters, LWS trimming, and `;name=value` parameter lists (with LWS and
//! quoted values, as header parameters allow).

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

/// Trim LWS (SP, HT, CR, LF) from both ends.
#[inline]
pub fn trim_lws(s: &str) -> &str {
    s.trim_matches(|c| matches!(c, ' ' | '\t' | '\r' | '\n'))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_with_lws_and_quotes() {
        let list = "  ;\r\n  tag = 98asjd8 ; lr;x=\"a;b\"";
        assert_eq!(find_param(list, "TAG"), Some(Some("98asjd8")));
        assert_eq!(find_param(list, "lr"), Some(None));
        assert_eq!(find_param(list, "x"), Some(Some("\"a;b\"")));
        assert_eq!(find_param(list, "missing"), None);
        assert!(valid_header_params(list));
    }

    #[test]
    fn invalid_params_are_rejected() {
        assert!(!valid_header_params(";;"));
        assert!(!valid_header_params("tag=1"));
        assert!(!valid_header_params(";x=\"open"));
        assert!(!valid_header_params(";a b=1"));
        assert!(valid_header_params(""));
    }

    #[test]
    fn token_chars() {
        assert!(is_token("!interesting-Method0123456789_*+`.%indeed'~"));
        assert!(!is_token("a,b"));
        assert!(!is_token(""));
    }
}
