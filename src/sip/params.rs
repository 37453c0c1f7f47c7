//! Lexical helpers shared by the URI, address and Via views: token
//! characters, LWS trimming, and `;name=value` parameter lists (with LWS and
//! quoted values, as header parameters allow).
//!
//! Everything here runs on every parsed message, so character classes are one
//! lookup in a 256-entry table and parameter lists are walked once.

/// Bit flags of [`CLASS`].
const TOKEN: u8 = 1;
const LWS: u8 = 2;
/// Host-ish parameter value byte: token plus the IPv6 `[`, `]` and `:`.
const PARAM_VALUE: u8 = 4;
/// Hostname byte: alphanumeric, `-`, `.`, `_`.
const HOST: u8 = 8;
/// Not allowed in a name-addr URI: LWS, `<`, `>`, `"`.
const NOT_IN_ADDR_URI: u8 = 16;
/// Not allowed in a Request-URI: controls, SP, `<`, `>`, `"`.
const NOT_IN_REQUEST_URI: u8 = 32;

/// Character classes of every byte value, computed at compile time.
static CLASS: [u8; 256] = build_classes();

const fn build_classes() -> [u8; 256] {
    let mut table = [0u8; 256];
    let mut b = 0usize;
    while b < 256 {
        let c = b as u8;
        let alnum = c.is_ascii_alphanumeric();
        let token = alnum
            || matches!(
                c,
                b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
            );
        let mut class = 0;
        if token {
            class |= TOKEN | PARAM_VALUE;
        }
        if matches!(c, b'[' | b']' | b':') {
            class |= PARAM_VALUE;
        }
        if matches!(c, b' ' | b'\t' | b'\r' | b'\n') {
            class |= LWS;
        }
        if alnum || matches!(c, b'-' | b'.' | b'_') {
            class |= HOST;
        }
        if matches!(c, b' ' | b'\t' | b'\r' | b'\n' | b'<' | b'>' | b'"') {
            class |= NOT_IN_ADDR_URI;
        }
        if c < 0x21 || matches!(c, b'<' | b'>' | b'"') {
            class |= NOT_IN_REQUEST_URI;
        }
        table[b] = class;
        b += 1;
    }
    table
}

/// RFC 3261 `token` character.
#[inline]
pub fn is_token_byte(b: u8) -> bool {
    CLASS[b as usize] & TOKEN != 0
}

/// True when `s` is a non-empty RFC 3261 token.
#[inline]
pub fn is_token(s: &str) -> bool {
    is_token_bytes(s.as_bytes())
}

/// Byte-slice form of [`is_token`].
#[inline]
pub(crate) fn is_token_bytes(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_token_byte(b))
}

/// Linear whitespace, including the CRLF of a folded line.
#[inline]
pub fn is_lws(b: u8) -> bool {
    CLASS[b as usize] & LWS != 0
}

/// Hostname character (alphanumeric, `-`, `.`, `_`), as Via sent-by and
/// SIP URI hosts allow.
#[inline]
pub(crate) fn is_host_byte(b: u8) -> bool {
    CLASS[b as usize] & HOST != 0
}

/// True when `uri` holds LWS, `<`, `>` or `"` (not allowed in a name-addr URI).
#[inline]
pub(crate) fn has_addr_uri_delimiter(uri: &[u8]) -> bool {
    uri.iter()
        .any(|&b| CLASS[b as usize] & NOT_IN_ADDR_URI != 0)
}

/// True when `uri` holds a control byte, SP, `<`, `>` or `"`.
#[inline]
pub(crate) fn has_request_uri_delimiter(uri: &[u8]) -> bool {
    uri.iter()
        .any(|&b| CLASS[b as usize] & NOT_IN_REQUEST_URI != 0)
}

/// Index of the first byte at or after `from` that is not LWS.
#[inline]
pub(crate) fn skip_lws_at(bytes: &[u8], mut from: usize) -> usize {
    while from < bytes.len() && is_lws(bytes[from]) {
        from += 1;
    }
    from
}

/// Index of the first byte at or after `from` that is not a token byte.
#[inline]
pub(crate) fn token_end_at(bytes: &[u8], mut from: usize) -> usize {
    while from < bytes.len() && is_token_byte(bytes[from]) {
        from += 1;
    }
    from
}

/// `(start, end)` of `bytes[from..to]` with LWS trimmed from both ends.
#[inline]
fn trim_lws_range(bytes: &[u8], mut from: usize, mut to: usize) -> (usize, usize) {
    while from < to && is_lws(bytes[from]) {
        from += 1;
    }
    while to > from && is_lws(bytes[to - 1]) {
        to -= 1;
    }
    (from, to)
}

/// Trim LWS (SP, HT, CR, LF) from both ends.
#[inline]
pub fn trim_lws(s: &str) -> &str {
    let (start, end) = trim_lws_range(s.as_bytes(), 0, s.len());
    // Both ends sit next to an ASCII byte (or at the ends), so they are char
    // boundaries.
    &s[start..end]
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

/// Split one parameter item at its first `=` into a trimmed name and an
/// optional trimmed value.
#[inline]
fn split_item(item: &str) -> (&str, Option<&str>) {
    match item.bytes().position(|b| b == b'=') {
        // '=' is ASCII, so both sides start and end on char boundaries.
        Some(eq) => (trim_lws(&item[..eq]), Some(trim_lws(&item[eq + 1..]))),
        None => (trim_lws(item), None),
    }
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
        Some(split_item(item))
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
    scan_header_params(list, "").is_ok()
}

/// The list failed [`valid_header_params`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct InvalidParams;

/// What [`find_param`] would answer for the wanted name.
pub(crate) type FoundParam<'a> = Option<Option<&'a str>>;

/// [`valid_header_params`] and [`find_param`] in one walk over the list:
/// `Ok(find_param(list, wanted))` when the list is valid. Parsing a Via or a
/// From/To needs both (validate, then read `branch` / `tag`).
pub(crate) fn scan_header_params<'a>(
    list: &'a str,
    wanted: &str,
) -> Result<FoundParam<'a>, InvalidParams> {
    match scan_plain_params(list, wanted) {
        Some(found) => Ok(found),
        None => scan_params_exactly(list, wanted),
    }
}

/// Fast path for the lists real traffic carries: `;name[=value]` items made
/// of tokens, host values or one quoted string, with optional LWS around
/// the punctuation. Only ever answers "valid"; `None` means "not sure", and
/// the caller falls back to [`scan_params_exactly`], which decides.
fn scan_plain_params<'a>(list: &'a str, wanted: &str) -> Option<FoundParam<'a>> {
    let bytes = list.as_bytes();
    let mut found: FoundParam<'a> = None;
    let mut i = skip_lws_at(bytes, 0);
    if i == bytes.len() {
        return Some(None);
    }
    if bytes[i] != b';' {
        return None;
    }
    while i < bytes.len() {
        // bytes[i] is the ';' opening an item.
        let name_start = skip_lws_at(bytes, i + 1);
        let name_end = token_end_at(bytes, name_start);
        if name_end == name_start {
            return None;
        }
        i = skip_lws_at(bytes, name_end);
        let mut value = None;
        if i < bytes.len() && bytes[i] == b'=' {
            let value_start = skip_lws_at(bytes, i + 1);
            let value_end = if bytes.get(value_start) == Some(&b'"') {
                closing_quote_at(bytes, value_start + 1)? + 1
            } else {
                let mut end = value_start;
                while end < bytes.len() && CLASS[bytes[end] as usize] & PARAM_VALUE != 0 {
                    end += 1;
                }
                if end == value_start {
                    return None;
                }
                end
            };
            // Boundaries sit next to ASCII bytes ('=', LWS, '"', ';').
            value = Some(&list[value_start..value_end]);
            i = skip_lws_at(bytes, value_end);
        }
        if i < bytes.len() && bytes[i] != b';' {
            return None;
        }
        if found.is_none() {
            let name = &bytes[name_start..name_end];
            if name.len() == wanted.len() && name.eq_ignore_ascii_case(wanted.as_bytes()) {
                found = Some(value);
            }
        }
    }
    Some(found)
}

/// Index of the `"` closing a quoted string whose content starts at `from`.
#[inline]
fn closing_quote_at(bytes: &[u8], mut from: usize) -> Option<usize> {
    while from < bytes.len() {
        match bytes[from] {
            b'\\' => from += 2,
            b'"' => return Some(from),
            _ => from += 1,
        }
    }
    None
}

/// The definition of a valid header parameter list, item by item; slower
/// than [`scan_plain_params`] but exact on every input.
fn scan_params_exactly<'a>(list: &'a str, wanted: &str) -> Result<FoundParam<'a>, InvalidParams> {
    let trimmed = trim_lws(list);
    if trimmed.is_empty() {
        return Ok(None);
    }
    if !trimmed.starts_with(';') || !quotes_balanced(trimmed) {
        return Err(InvalidParams);
    }
    let mut found = None;
    for (name, value) in Params::new(trimmed) {
        let valid_value = match value {
            None => true,
            Some(v) if v.starts_with('"') => v.len() >= 2 && v.ends_with('"'),
            // host values may carry IPv6 brackets and colons
            Some(v) => !v.is_empty() && v.bytes().all(|b| CLASS[b as usize] & PARAM_VALUE != 0),
        };
        if !is_token(name) || !valid_value {
            return Err(InvalidParams);
        }
        if found.is_none() && name.eq_ignore_ascii_case(wanted) {
            found = Some(value);
        }
    }
    Ok(found)
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
