//! RFC 3261 §10.3 REGISTER processing as plain functions: the address of
//! record, the contact expiry rules, Call-ID/CSeq ordering, wildcard removal,
//! q values and Path (RFC 3327). No clock and no storage: callers pass the
//! current bindings and `now` (Unix seconds) and get the new bindings back,
//! or the error reply to send.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::sip::{self, HeaderName, Message, NameAddr};

/// The registrar's expiry and size policy (from `registrar:` in the config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub default_expires: u32,
    pub min_expires: u32,
    pub max_expires: u32,
    pub max_contacts: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            default_expires: 3600,
            min_expires: 60,
            max_expires: 7200,
            max_contacts: 10,
        }
    }
}

/// q value of a contact that carries none: ranked as the most preferred.
pub const DEFAULT_Q: u16 = 1000;

/// One contact bound to an address of record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// The Contact URI as the UA wrote it (without `<>` and header params).
    pub uri: String,
    /// q value in thousandths (0..=1000), so it compares exactly.
    pub q: u16,
    /// Absolute expiry, Unix seconds.
    pub expires_at: u64,
    pub call_id: String,
    pub cseq: u32,
    /// Path header values of the REGISTER that made this binding (RFC 3327),
    /// in order, as Route-ready strings such as `<sip:edge;lr>`.
    #[serde(default)]
    pub path: Vec<String>,
}

impl Binding {
    /// Seconds left at `now` (0 once expired).
    pub fn remaining(&self, now: u64) -> u64 {
        self.expires_at.saturating_sub(now)
    }

    pub fn is_live(&self, now: u64) -> bool {
        self.expires_at > now
    }

    /// The q value as the wire shows it: `0.5`, `1`, `0.125`.
    pub fn q_text(&self) -> String {
        q_text(self.q)
    }
}

fn q_text(q: u16) -> String {
    if q >= 1000 {
        return "1".to_string();
    }
    let text = format!("0.{q:03}");
    let trimmed = text.trim_end_matches('0');
    if trimmed == "0." {
        "0".to_string()
    } else {
        trimmed.to_string()
    }
}

/// A response the registrar wants sent: status, reason phrase and the extra
/// headers (Contact list, Min-Expires, Path).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
}

impl Reply {
    fn error(code: u16, reason: &str) -> Reply {
        Reply {
            code,
            reason: reason.to_string(),
            headers: Vec::new(),
        }
    }

    fn bad_request(reason: &str) -> Reply {
        Reply::error(400, reason)
    }
}

// ---------------------------------------------------------------------------
// Address of record
// ---------------------------------------------------------------------------

/// The hosts that name this node (`domain.local`, the advertised host, the
/// listen addresses), and the one they all fold into.
///
/// A subscriber who registers as `sip:alice@<lb-ip>` and is called as
/// `sip:alice@example.com`, where both hosts are ours, is the same person: so
/// when an AoR's host is local it is rewritten to the canonical domain (the
/// first `domain.local` entry) and its port is dropped. Hosts that are not
/// ours are kept as written (lowercased), so foreign domains stay distinct.
#[derive(Clone, Debug, Default)]
pub struct LocalDomains {
    hosts: HashSet<String>,
    canonical: Option<String>,
}

impl LocalDomains {
    /// `hosts` in order of preference: the first becomes the canonical domain.
    pub fn new<I, S>(hosts: I) -> LocalDomains
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut set = HashSet::new();
        let mut canonical = None;
        for host in hosts {
            let host = host.as_ref().trim().to_ascii_lowercase();
            if host.is_empty() {
                continue;
            }
            if canonical.is_none() {
                canonical = Some(host.clone());
            }
            set.insert(host);
        }
        LocalDomains {
            hosts: set,
            canonical,
        }
    }

    pub fn is_local(&self, host: &str) -> bool {
        self.hosts.contains(&host.to_ascii_lowercase())
    }

    /// The AoR key for a URI (bare, or a name-addr such as a To value):
    /// its address of record ([`sip::uri::address_of_record`]: scheme and host
    /// lower-cased, the default port and every parameter dropped), with a
    /// local host folded into the canonical domain. `None` for text that is
    /// not a SIP, SIPS or tel URI.
    pub fn normalise(&self, uri: &str) -> Option<String> {
        let parsed = sip::Uri::parse_address(uri).ok()?;
        match self.canonical.as_ref() {
            Some(canonical)
                if !parsed.scheme.eq_ignore_ascii_case("tel") && self.is_local(parsed.host) =>
            {
                let local = sip::Uri {
                    host: canonical,
                    port: None,
                    ..parsed
                };
                Some(local.aor())
            }
            _ => Some(parsed.aor()),
        }
    }

    /// The AoR of a REGISTER: its To URI, normalised.
    pub fn aor_of(&self, msg: &Message) -> Result<String, Reply> {
        let to = msg
            .header(HeaderName::To)
            .ok_or_else(|| Reply::bad_request("Missing To header"))?;
        NameAddr::parse(to).map_err(|_| Reply::bad_request("Malformed To header"))?;
        self.normalise(to)
            .ok_or_else(|| Reply::bad_request("Unsupported To URI"))
    }
}

// ---------------------------------------------------------------------------
// Parsing a REGISTER
// ---------------------------------------------------------------------------

/// What a REGISTER asks for, validated and with every expiry resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisterRequest {
    pub call_id: String,
    pub cseq: u32,
    pub contacts: ContactUpdate,
    /// The request's Path values, stored with each binding it makes.
    pub path: Vec<String>,
    /// The UA sent `Supported: path`, so the 200 echoes Path (RFC 3327 §5.3).
    pub path_supported: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContactUpdate {
    /// No Contact: a query, answered with the current bindings.
    Query,
    /// `Contact: *` with `Expires: 0`: remove every binding.
    RemoveAll,
    /// Add, refresh (expires > 0) or remove (expires == 0) these contacts.
    Contacts(Vec<ContactRequest>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContactRequest {
    pub uri: String,
    /// Resolved and capped at `max_expires`; 0 removes.
    pub expires: u32,
    pub q: u16,
}

/// `delta-seconds`; values past 2^32-1 count as 2^32-1 (RFC 3261 §10.2.1.1).
fn parse_delta_seconds(text: &str) -> Option<u32> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = text.trim_start_matches('0');
    if digits.len() > 10 {
        return Some(u32::MAX);
    }
    Some(
        digits
            .parse::<u64>()
            .map_or(0, |v| v.min(u64::from(u32::MAX)) as u32),
    )
}

/// `qvalue = ("0" ["." 0*3DIGIT]) / ("1" ["." 0*3("0")])`, in thousandths.
fn parse_q(text: &str) -> Option<u16> {
    let (whole, fraction) = match text.split_once('.') {
        Some((w, f)) => (w, f),
        None => (text, ""),
    };
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    match whole {
        "0" => {
            let padded = format!("{fraction:0<3}");
            padded.parse::<u16>().ok()
        }
        "1" if fraction.bytes().all(|b| b == b'0') => Some(1000),
        _ => None,
    }
}

/// Reads and validates a REGISTER against the expiry policy. Errors are the
/// reply to send: 400 for malformed input, 423 below `min_expires`.
pub fn parse_register(msg: &Message, limits: &Limits) -> Result<RegisterRequest, Reply> {
    let call_id = msg
        .call_id()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| Reply::bad_request("Missing Call-ID"))?
        .to_string();
    let (cseq, _) = msg
        .cseq()
        .ok_or_else(|| Reply::bad_request("Malformed CSeq"))?;
    let header_expires = match msg.header(HeaderName::Expires) {
        None => None,
        Some(value) => Some(
            parse_delta_seconds(value)
                .ok_or_else(|| Reply::bad_request("Malformed Expires header"))?,
        ),
    };
    let path: Vec<String> = msg
        .header_values(HeaderName::Path)
        .map(str::to_string)
        .collect();
    for value in &path {
        NameAddr::parse(value).map_err(|_| Reply::bad_request("Malformed Path header"))?;
    }
    let path_supported = msg
        .header_values(HeaderName::Supported)
        .any(|token| token.eq_ignore_ascii_case("path"));

    let values: Vec<&str> = msg.header_values(HeaderName::Contact).collect();
    let contacts = if values.is_empty() {
        ContactUpdate::Query
    } else if values.iter().any(|v| v.trim() == "*") {
        if values.len() != 1 {
            return Err(Reply::bad_request("Contact: * must be the only Contact"));
        }
        if header_expires != Some(0) {
            return Err(Reply::bad_request("Contact: * requires Expires: 0"));
        }
        ContactUpdate::RemoveAll
    } else {
        let mut list = Vec::with_capacity(values.len());
        let mut too_brief = false;
        for value in values {
            let addr =
                NameAddr::parse(value).map_err(|_| Reply::bad_request("Malformed Contact"))?;
            sip::Uri::parse(addr.uri).map_err(|_| Reply::bad_request("Unsupported Contact URI"))?;
            let expires = match addr.param("expires") {
                Some(Some(text)) => parse_delta_seconds(text)
                    .ok_or_else(|| Reply::bad_request("Malformed Contact expires"))?,
                Some(None) => return Err(Reply::bad_request("Malformed Contact expires")),
                None => header_expires.unwrap_or(limits.default_expires),
            };
            if expires != 0 && expires < limits.min_expires {
                too_brief = true;
            }
            let q = match addr.param("q") {
                Some(Some(text)) => {
                    parse_q(text).ok_or_else(|| Reply::bad_request("Invalid q value"))?
                }
                Some(None) => return Err(Reply::bad_request("Invalid q value")),
                None => DEFAULT_Q,
            };
            list.push(ContactRequest {
                uri: addr.uri.to_string(),
                expires: expires.min(limits.max_expires),
                q,
            });
        }
        if too_brief {
            return Err(Reply {
                code: 423,
                reason: "Interval Too Brief".to_string(),
                headers: vec![("Min-Expires".to_string(), limits.min_expires.to_string())],
            });
        }
        ContactUpdate::Contacts(list)
    };
    Ok(RegisterRequest {
        call_id,
        cseq,
        contacts,
        path,
        path_supported,
    })
}

// ---------------------------------------------------------------------------
// Applying it
// ---------------------------------------------------------------------------

/// RFC 3261 §19.1.4 URI comparison, reduced to what tells contacts apart:
/// scheme and host case-insensitively, user and password exactly, the same
/// port, and the same parameters (names case-insensitive, in any order).
pub fn same_contact(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    let (Ok(x), Ok(y)) = (sip::Uri::parse(a), sip::Uri::parse(b)) else {
        return false;
    };
    let params = |list: &str| {
        let mut items: Vec<(String, Option<String>)> = sip::params::Params::new(list)
            .map(|(n, v)| (n.to_ascii_lowercase(), v.map(|v| v.to_ascii_lowercase())))
            .collect();
        items.sort();
        items
    };
    x.scheme.eq_ignore_ascii_case(y.scheme)
        && x.user == y.user
        && x.password == y.password
        && x.host.eq_ignore_ascii_case(y.host)
        && x.port == y.port
        && params(x.params) == params(y.params)
        && x.headers == y.headers
}

/// Applies a REGISTER to the AoR's current bindings (expired ones are
/// dropped first). The whole request fails or succeeds: on error nothing
/// changes and the reply says why (500 for an out-of-order CSeq, 403 over
/// `max_contacts`).
///
/// `max_contacts` answers 403 "Too Many Contacts": the limit is a policy that
/// retrying will not change, and 503 would send the UA to another server
/// (RFC 3263) for a refusal that is not about load. A request that does not
/// add contacts (a refresh, a removal) is never refused for the limit.
pub fn apply(
    request: &RegisterRequest,
    current: &[Binding],
    limits: &Limits,
    now: u64,
) -> Result<Vec<Binding>, Reply> {
    let mut bindings: Vec<Binding> = current.iter().filter(|b| b.is_live(now)).cloned().collect();
    let out_of_order =
        |existing: &Binding| existing.call_id == request.call_id && request.cseq <= existing.cseq;
    match &request.contacts {
        ContactUpdate::Query => {}
        ContactUpdate::RemoveAll => {
            if bindings.iter().any(out_of_order) {
                return Err(Reply::error(500, "Out Of Order CSeq"));
            }
            bindings.clear();
        }
        ContactUpdate::Contacts(contacts) => {
            let before = bindings.len();
            for contact in contacts {
                let existing = bindings
                    .iter()
                    .position(|b| same_contact(&b.uri, &contact.uri));
                if let Some(index) = existing {
                    if out_of_order(&bindings[index]) {
                        return Err(Reply::error(500, "Out Of Order CSeq"));
                    }
                    if contact.expires == 0 {
                        bindings.remove(index);
                        continue;
                    }
                }
                if contact.expires == 0 {
                    continue;
                }
                let binding = Binding {
                    uri: contact.uri.clone(),
                    q: contact.q,
                    expires_at: now + u64::from(contact.expires),
                    call_id: request.call_id.clone(),
                    cseq: request.cseq,
                    path: request.path.clone(),
                };
                match existing {
                    Some(index) => bindings[index] = binding,
                    None => bindings.push(binding),
                }
            }
            let limit = limits.max_contacts as usize;
            if bindings.len() > limit && bindings.len() > before {
                return Err(Reply::error(403, "Too Many Contacts"));
            }
        }
    }
    Ok(bindings)
}

/// The 200 for a successful REGISTER: one Contact per current binding with
/// its remaining expires (and q when set below 1), plus Path when the UA
/// supports it.
pub fn ok_reply(request: &RegisterRequest, bindings: &[Binding], now: u64) -> Reply {
    let mut headers = Vec::with_capacity(bindings.len() + request.path.len());
    for binding in bindings {
        let mut value = format!("<{}>;expires={}", binding.uri, binding.remaining(now));
        if binding.q < DEFAULT_Q {
            value.push_str(";q=");
            value.push_str(&binding.q_text());
        }
        headers.push(("Contact".to_string(), value));
    }
    if request.path_supported {
        for path in &request.path {
            headers.push(("Path".to_string(), path.clone()));
        }
    }
    Reply {
        code: 200,
        reason: "OK".to_string(),
        headers,
    }
}

/// Orders bindings for a lookup: highest q first, then the most recently
/// refreshed (latest expiry) first.
pub fn rank(bindings: &mut [Binding]) {
    bindings.sort_by(|a, b| b.q.cmp(&a.q).then(b.expires_at.cmp(&a.expires_at)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    const NOW: u64 = 1_000_000;

    fn register(extra: &str) -> Message {
        let text = format!(
            "REGISTER sip:example.com SIP/2.0\r\n\
             Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1\r\n\
             From: <sip:alice@example.com>;tag=1\r\n\
             To: <sip:alice@example.com>\r\n\
             Call-ID: call-1\r\n\
             {extra}\
             Content-Length: 0\r\n\r\n"
        );
        sip::parse(Bytes::from(text)).expect("test REGISTER parses")
    }

    fn with_cseq(cseq: u32, extra: &str) -> Message {
        register(&format!("CSeq: {cseq} REGISTER\r\n{extra}"))
    }

    fn limits() -> Limits {
        Limits::default()
    }

    fn run(msg: &Message, current: &[Binding]) -> Result<Vec<Binding>, Reply> {
        let request = parse_register(msg, &limits())?;
        apply(&request, current, &limits(), NOW)
    }

    #[test]
    fn aor_normalisation() {
        let local = LocalDomains::new(["example.com", "127.0.0.1"]);
        let cases = [
            ("sip:Alice@EXAMPLE.com", "sip:Alice@example.com"),
            ("SIP:bob@Other.NET:5060;transport=tcp", "sip:bob@other.net"),
            ("sip:bob@other.net:5070", "sip:bob@other.net:5070"),
            ("sips:bob@other.net:5061", "sips:bob@other.net"),
            ("sip:carol@127.0.0.1:5090", "sip:carol@example.com"),
            ("sip:other.net", "sip:other.net"),
            // What phones put in the To of their calls but not their REGISTER.
            (
                "<sip:dave@EXAMPLE.com;transport=udp>",
                "sip:dave@example.com",
            ),
            (
                "\"Dave\" <sip:dave@example.com:5060>;tag=1",
                "sip:dave@example.com",
            ),
            ("sip:dave@example.com?subject=hi", "sip:dave@example.com"),
        ];
        for (input, expected) in cases {
            assert_eq!(local.normalise(input).as_deref(), Some(expected), "{input}");
        }
        assert_eq!(local.normalise("http://x"), None);
        assert_eq!(
            LocalDomains::default().normalise("sip:a@Host:5060"),
            Some("sip:a@host".into())
        );
    }

    #[test]
    fn aor_from_to_header() {
        let local = LocalDomains::new(["example.com"]);
        let msg = with_cseq(1, "");
        assert_eq!(local.aor_of(&msg).unwrap(), "sip:alice@example.com");
    }

    #[test]
    fn expiry_sources_and_cap() {
        let msg = with_cseq(
            1,
            "Expires: 120\r\nContact: <sip:a@10.0.0.1>;expires=300, <sip:b@10.0.0.2>, <sip:c@10.0.0.3>;expires=99999\r\n",
        );
        let bindings = run(&msg, &[]).unwrap();
        let expiries: Vec<u64> = bindings.iter().map(|b| b.remaining(NOW)).collect();
        assert_eq!(expiries, [300, 120, 7200]);
        let defaulted = run(&with_cseq(1, "Contact: <sip:a@10.0.0.1>\r\n"), &[]).unwrap();
        assert_eq!(defaulted[0].remaining(NOW), 3600);
    }

    #[test]
    fn below_min_expires_is_423() {
        let reply = run(
            &with_cseq(1, "Expires: 30\r\nContact: <sip:a@10.0.0.1>\r\n"),
            &[],
        )
        .unwrap_err();
        assert_eq!(reply.code, 423);
        assert_eq!(
            reply.headers,
            [("Min-Expires".to_string(), "60".to_string())]
        );
        // expires=0 is a removal, not too brief
        assert!(run(
            &with_cseq(1, "Contact: <sip:a@10.0.0.1>;expires=0\r\n"),
            &[]
        )
        .is_ok());
    }

    #[test]
    fn malformed_input_is_400() {
        for extra in [
            "Expires: soon\r\nContact: <sip:a@10.0.0.1>\r\n",
            "Contact: <sip:a@10.0.0.1>;expires=ten\r\n",
            "Contact: <sip:a@10.0.0.1>;expires\r\n",
            "Contact: <sip:a@10.0.0.1>;q=1.5\r\n",
            "Contact: <sip:a@10.0.0.1>;q=0.1234\r\n",
            "Contact: <sip:a@10.0.0.1\r\n",
            "Contact: <http://web>\r\n",
            "Contact: *\r\n",
            "Expires: 0\r\nContact: *, <sip:a@10.0.0.1>\r\n",
            "Expires: 60\r\nContact: *\r\n",
        ] {
            let reply = run(&with_cseq(1, extra), &[]).unwrap_err();
            assert_eq!(reply.code, 400, "{extra:?} gave {reply:?}");
            assert!(!reply.reason.is_empty());
        }
    }

    #[test]
    fn q_values() {
        assert_eq!(parse_q("0"), Some(0));
        assert_eq!(parse_q("0.5"), Some(500));
        assert_eq!(parse_q("0.125"), Some(125));
        assert_eq!(parse_q("1"), Some(1000));
        assert_eq!(parse_q("1.000"), Some(1000));
        assert_eq!(parse_q("1.001"), None);
        assert_eq!(parse_q(".5"), None);
        assert_eq!(parse_q("0.5x"), None);
        assert_eq!(q_text(500), "0.5");
        assert_eq!(q_text(125), "0.125");
        assert_eq!(q_text(0), "0");
        assert_eq!(q_text(1000), "1");
    }

    #[test]
    fn refresh_replaces_and_zero_removes() {
        let first = run(
            &with_cseq(
                1,
                "Contact: <sip:a@10.0.0.1>;expires=100, <sip:b@10.0.0.2>;expires=100\r\n",
            ),
            &[],
        )
        .unwrap();
        assert_eq!(first.len(), 2);
        // The same contact again: refreshed, not duplicated.
        let refreshed = run(
            &with_cseq(2, "Contact: <sip:a@10.0.0.1>;expires=500\r\n"),
            &first,
        )
        .unwrap();
        assert_eq!(refreshed.len(), 2);
        assert_eq!(refreshed[0].remaining(NOW), 500);
        assert_eq!(refreshed[0].cseq, 2);
        let removed = run(
            &with_cseq(3, "Contact: <sip:A@10.0.0.1>;expires=0\r\n"),
            &refreshed,
        )
        .unwrap();
        assert_eq!(removed.len(), 2, "user part is case-sensitive");
        let removed = run(
            &with_cseq(3, "Contact: <sip:a@10.0.0.1>;expires=0\r\n"),
            &refreshed,
        )
        .unwrap();
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].uri, "sip:b@10.0.0.2");
    }

    #[test]
    fn wildcard_removes_all() {
        let bindings = run(
            &with_cseq(1, "Contact: <sip:a@10.0.0.1>, <sip:b@10.0.0.2>\r\n"),
            &[],
        )
        .unwrap();
        let cleared = run(&with_cseq(2, "Expires: 0\r\nContact: *\r\n"), &bindings).unwrap();
        assert!(cleared.is_empty());
        let stale = run(&with_cseq(1, "Expires: 0\r\nContact: *\r\n"), &bindings).unwrap_err();
        assert_eq!(stale.code, 500);
    }

    #[test]
    fn same_call_id_needs_higher_cseq() {
        let bindings = run(&with_cseq(5, "Contact: <sip:a@10.0.0.1>\r\n"), &[]).unwrap();
        let reply = run(&with_cseq(5, "Contact: <sip:a@10.0.0.1>\r\n"), &bindings).unwrap_err();
        assert_eq!(reply.code, 500);
        let reply = run(
            &with_cseq(4, "Contact: <sip:a@10.0.0.1>;expires=0\r\n"),
            &bindings,
        )
        .unwrap_err();
        assert_eq!(reply.code, 500);
        // Another Call-ID may update regardless of CSeq.
        let mut other = bindings.clone();
        other[0].call_id = "another".into();
        assert!(run(&with_cseq(1, "Contact: <sip:a@10.0.0.1>\r\n"), &other).is_ok());
    }

    #[test]
    fn expired_bindings_are_dropped() {
        let mut bindings = run(&with_cseq(1, "Contact: <sip:a@10.0.0.1>\r\n"), &[]).unwrap();
        bindings[0].expires_at = NOW;
        let after = run(&with_cseq(2, "Contact: <sip:b@10.0.0.2>\r\n"), &bindings).unwrap();
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].uri, "sip:b@10.0.0.2");
    }

    #[test]
    fn max_contacts_is_403_only_when_adding() {
        let tight = Limits {
            max_contacts: 1,
            ..Limits::default()
        };
        let go = |msg: &Message, current: &[Binding]| {
            apply(&parse_register(msg, &tight).unwrap(), current, &tight, NOW)
        };
        let one = go(&with_cseq(1, "Contact: <sip:a@10.0.0.1>\r\n"), &[]).unwrap();
        let reply = go(&with_cseq(2, "Contact: <sip:b@10.0.0.2>\r\n"), &one).unwrap_err();
        assert_eq!(reply.code, 403);
        // Over the limit already (config lowered): a refresh still works.
        let two = run(
            &with_cseq(1, "Contact: <sip:a@10.0.0.1>, <sip:b@10.0.0.2>\r\n"),
            &[],
        )
        .unwrap();
        assert!(go(&with_cseq(2, "Contact: <sip:a@10.0.0.1>\r\n"), &two).is_ok());
    }

    #[test]
    fn query_lists_bindings_and_path_is_kept() {
        let msg = with_cseq(
            1,
            "Path: <sip:edge1.example.com;lr>, <sip:edge2.example.com;lr>\r\nSupported: path\r\nContact: <sip:a@10.0.0.1>;q=0.5;expires=600\r\n",
        );
        let request = parse_register(&msg, &limits()).unwrap();
        let bindings = apply(&request, &[], &limits(), NOW).unwrap();
        assert_eq!(
            bindings[0].path,
            ["<sip:edge1.example.com;lr>", "<sip:edge2.example.com;lr>"]
        );
        let reply = ok_reply(&request, &bindings, NOW + 100);
        assert_eq!(reply.code, 200);
        assert_eq!(
            reply.headers,
            [
                (
                    "Contact".to_string(),
                    "<sip:a@10.0.0.1>;expires=500;q=0.5".to_string()
                ),
                ("Path".to_string(), "<sip:edge1.example.com;lr>".to_string()),
                ("Path".to_string(), "<sip:edge2.example.com;lr>".to_string()),
            ]
        );
        let query = parse_register(&with_cseq(2, ""), &limits()).unwrap();
        assert_eq!(query.contacts, ContactUpdate::Query);
        let listed = apply(&query, &bindings, &limits(), NOW).unwrap();
        assert_eq!(listed, bindings);
    }

    #[test]
    fn ranking_prefers_high_q_then_fresh() {
        let make = |uri: &str, q: u16, expires_at: u64| Binding {
            uri: uri.into(),
            q,
            expires_at,
            call_id: "c".into(),
            cseq: 1,
            path: Vec::new(),
        };
        let mut list = vec![
            make("sip:low@h", 100, NOW + 10),
            make("sip:old@h", 1000, NOW + 10),
            make("sip:new@h", 1000, NOW + 20),
        ];
        rank(&mut list);
        let order: Vec<&str> = list.iter().map(|b| b.uri.as_str()).collect();
        assert_eq!(order, ["sip:new@h", "sip:old@h", "sip:low@h"]);
    }

    #[test]
    fn contact_equivalence() {
        assert!(same_contact(
            "sip:a@HOST;Transport=TCP",
            "SIP:a@host;transport=tcp"
        ));
        assert!(!same_contact("sip:a@host:5070", "sip:a@host"));
        assert!(!same_contact("sip:a@host;transport=tcp", "sip:a@host"));
    }
}
