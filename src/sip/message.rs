//! The parsed message: the original bytes plus an index of spans (start line,
//! one entry per header line, body). Accessors slice the buffer on demand, so
//! parsing allocates only the header index.

use bytes::Bytes;

use super::addr::{split_values, NameAddr};
use super::via::Via;

/// Byte range into the message buffer. u32 keeps [`Header`] small; messages
/// are capped at 64 KiB anyway.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    #[inline]
    pub(crate) fn new(start: usize, end: usize) -> Span {
        Span {
            start: start as u32,
            end: end as u32,
        }
    }

    #[inline]
    pub(crate) fn range(self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }
}

/// Request methods the proxy treats specially; anything else is `Other` and
/// its spelling is available from [`Message::method_str`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Register,
    Options,
    Info,
    Update,
    Prack,
    Subscribe,
    Notify,
    Message,
    Refer,
    Publish,
    Other,
}

impl Method {
    /// Methods are case-sensitive (RFC 3261 §7.1).
    pub fn from_token(token: &str) -> Method {
        match token {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "REGISTER" => Method::Register,
            "OPTIONS" => Method::Options,
            "INFO" => Method::Info,
            "UPDATE" => Method::Update,
            "PRACK" => Method::Prack,
            "SUBSCRIBE" => Method::Subscribe,
            "NOTIFY" => Method::Notify,
            "MESSAGE" => Method::Message,
            "REFER" => Method::Refer,
            "PUBLISH" => Method::Publish,
            _ => Method::Other,
        }
    }

    /// Canonical spelling, `None` for `Other`.
    pub fn as_str(&self) -> Option<&'static str> {
        Some(match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Register => "REGISTER",
            Method::Options => "OPTIONS",
            Method::Info => "INFO",
            Method::Update => "UPDATE",
            Method::Prack => "PRACK",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Message => "MESSAGE",
            Method::Refer => "REFER",
            Method::Publish => "PUBLISH",
            Method::Other => return None,
        })
    }
}

/// Headers the proxy reads; every other name is `Other` and is forwarded as is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HeaderName {
    Via,
    From,
    To,
    CallId,
    CSeq,
    ContentLength,
    ContentType,
    Contact,
    MaxForwards,
    Route,
    RecordRoute,
    Expires,
    MinExpires,
    Path,
    RetryAfter,
    Require,
    ProxyRequire,
    Supported,
    Unsupported,
    Subject,
    Event,
    ReferTo,
    AllowEvents,
    ContentEncoding,
    Other,
}

impl HeaderName {
    /// Case-insensitive lookup, including RFC 3261 / 3265 / 3515 compact forms.
    pub fn from_name(name: &str) -> HeaderName {
        HeaderName::from_bytes(name.as_bytes())
    }

    /// [`HeaderName::from_name`] on raw bytes. Runs for every header line of
    /// every message, so it dispatches on the length and compares against at
    /// most a few candidates instead of trying every known name.
    pub(crate) fn from_bytes(bytes: &[u8]) -> HeaderName {
        let is = |candidate: &[u8]| eq_ignore_case_lower(bytes, candidate);
        match bytes.len() {
            1 => match bytes[0].to_ascii_lowercase() {
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
            },
            2 if is(b"to") => HeaderName::To,
            3 if is(b"via") => HeaderName::Via,
            4 => match bytes[0].to_ascii_lowercase() {
                b'f' if is(b"from") => HeaderName::From,
                b'c' if is(b"cseq") => HeaderName::CSeq,
                b'p' if is(b"path") => HeaderName::Path,
                _ => HeaderName::Other,
            },
            5 => match bytes[0].to_ascii_lowercase() {
                b'r' if is(b"route") => HeaderName::Route,
                b'e' if is(b"event") => HeaderName::Event,
                _ => HeaderName::Other,
            },
            7 => match bytes[0].to_ascii_lowercase() {
                b'c' if is(b"call-id") => HeaderName::CallId,
                b'c' if is(b"contact") => HeaderName::Contact,
                b'e' if is(b"expires") => HeaderName::Expires,
                b'r' if is(b"require") => HeaderName::Require,
                b's' if is(b"subject") => HeaderName::Subject,
                _ => HeaderName::Other,
            },
            8 if is(b"refer-to") => HeaderName::ReferTo,
            9 if is(b"supported") => HeaderName::Supported,
            11 => match bytes[0].to_ascii_lowercase() {
                b'm' if is(b"min-expires") => HeaderName::MinExpires,
                b'r' if is(b"retry-after") => HeaderName::RetryAfter,
                b'u' if is(b"unsupported") => HeaderName::Unsupported,
                _ => HeaderName::Other,
            },
            12 => match bytes[0].to_ascii_lowercase() {
                b'c' if is(b"content-type") => HeaderName::ContentType,
                b'm' if is(b"max-forwards") => HeaderName::MaxForwards,
                b'r' if is(b"record-route") => HeaderName::RecordRoute,
                b'a' if is(b"allow-events") => HeaderName::AllowEvents,
                _ => HeaderName::Other,
            },
            13 if is(b"proxy-require") => HeaderName::ProxyRequire,
            14 if is(b"content-length") => HeaderName::ContentLength,
            16 if is(b"content-encoding") => HeaderName::ContentEncoding,
            _ => HeaderName::Other,
        }
    }

    /// The long-form spelling, `None` for `Other`.
    pub fn canonical(&self) -> Option<&'static str> {
        Some(match self {
            HeaderName::Via => "Via",
            HeaderName::From => "From",
            HeaderName::To => "To",
            HeaderName::CallId => "Call-ID",
            HeaderName::CSeq => "CSeq",
            HeaderName::ContentLength => "Content-Length",
            HeaderName::ContentType => "Content-Type",
            HeaderName::Contact => "Contact",
            HeaderName::MaxForwards => "Max-Forwards",
            HeaderName::Route => "Route",
            HeaderName::RecordRoute => "Record-Route",
            HeaderName::Expires => "Expires",
            HeaderName::MinExpires => "Min-Expires",
            HeaderName::Path => "Path",
            HeaderName::RetryAfter => "Retry-After",
            HeaderName::Require => "Require",
            HeaderName::ProxyRequire => "Proxy-Require",
            HeaderName::Supported => "Supported",
            HeaderName::Unsupported => "Unsupported",
            HeaderName::Subject => "Subject",
            HeaderName::Event => "Event",
            HeaderName::ReferTo => "Refer-To",
            HeaderName::AllowEvents => "Allow-Events",
            HeaderName::ContentEncoding => "Content-Encoding",
            HeaderName::Other => return None,
        })
    }
}

/// ASCII case-insensitive equality against a lower-case `candidate` made of
/// letters and punctuation: a letter matches either case, anything else only
/// itself. Cheaper than `eq_ignore_ascii_case`, which lower-cases both sides.
#[inline(always)]
fn eq_ignore_case_lower(bytes: &[u8], candidate: &[u8]) -> bool {
    bytes.len() == candidate.len()
        && bytes.iter().zip(candidate).all(|(&b, &c)| {
            let folded = if c.is_ascii_lowercase() { b | 0x20 } else { b };
            folded == c
        })
}

/// One header line (with its continuation lines) as spans into the message.
#[derive(Clone, Copy, Debug)]
pub struct Header {
    pub name: HeaderName,
    pub(crate) name_span: Span,
    /// Trimmed value, from the first to the last non-whitespace byte.
    pub(crate) value_span: Span,
    /// Whole line from its first byte through its final line terminator.
    pub(crate) line_span: Span,
}

impl Header {
    /// The name as written (e.g. `v`, `VIA`, `X-Custom`).
    pub fn name_str<'a>(&self, msg: &'a Message) -> &'a str {
        msg.text(self.name_span)
    }

    /// The trimmed raw value; may contain folded CRLF+WS. Empty if the value
    /// is not valid UTF-8 (use [`Header::value_bytes`] to forward it).
    pub fn value<'a>(&self, msg: &'a Message) -> &'a str {
        msg.text(self.value_span)
    }

    pub fn value_bytes<'a>(&self, msg: &'a Message) -> &'a [u8] {
        msg.slice(self.value_span)
    }

    /// The raw line including its name, folding and terminator.
    pub fn line_bytes<'a>(&self, msg: &'a Message) -> &'a [u8] {
        msg.slice(self.line_span)
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum StartLine {
    Request {
        method: Method,
        method_span: Span,
        uri_span: Span,
    },
    Response {
        status: u16,
        reason_span: Span,
    },
}

/// A framed SIP message: the bytes plus the span index built by
/// [`super::parse`].
#[derive(Clone, Debug)]
pub struct Message {
    pub(crate) buf: Bytes,
    pub(crate) start: StartLine,
    /// Offset just past the start line's terminator (= first header line).
    pub(crate) start_line_end: u32,
    pub(crate) headers: Vec<Header>,
    /// Offset of the empty line that ends the headers.
    pub(crate) headers_end: u32,
    /// Offset of the first body byte; the body runs to the end of `buf`.
    pub(crate) body_start: u32,
    /// Routing fields recorded by validation; `None` on a message that did
    /// not pass it (a [`super::ParseError::partial`]), whose accessors then
    /// fall back to reading the headers.
    pub(crate) remembered: Option<Remembered>,
    /// Every byte of `buf` is ASCII (nearly every SIP message): any span of
    /// it is then text as it stands, with no UTF-8 check per access.
    pub(crate) ascii: bool,
}

/// Where the fields the proxy reads on every message sit in the buffer, as
/// found while validating them, so their accessors are span lookups.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Remembered {
    pub top_via: TopViaSpans,
    pub from_tag: Option<Span>,
    pub to_tag: Option<Span>,
    pub call_id: Span,
    pub cseq_number: u32,
    pub cseq_method: Span,
    pub max_forwards: Option<u32>,
}

/// The parts of the first Via value, each a span inside `value`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TopViaSpans {
    pub value: Span,
    pub transport: Span,
    pub host: Span,
    pub port: Option<u16>,
    pub params: Span,
    pub branch: Option<Span>,
}

impl Span {
    /// The span of `part`, a sub-slice of `base`. Cheap pointer arithmetic,
    /// used to remember where the views built during validation point.
    pub(crate) fn of(base: &[u8], part: &str) -> Span {
        let start = (part.as_ptr() as usize).wrapping_sub(base.as_ptr() as usize);
        debug_assert!(start
            .checked_add(part.len())
            .is_some_and(|end| end <= base.len()));
        Span::new(start, start.wrapping_add(part.len()))
    }

    /// This span relative to `outer`, which must contain it.
    #[inline]
    fn within(self, outer: Span) -> std::ops::Range<usize> {
        self.start.wrapping_sub(outer.start) as usize..self.end.wrapping_sub(outer.start) as usize
    }
}

impl Message {
    #[inline]
    pub(crate) fn slice(&self, span: Span) -> &[u8] {
        self.buf.get(span.range()).unwrap_or(&[])
    }

    #[inline]
    pub(crate) fn text(&self, span: Span) -> &str {
        let bytes = self.slice(span);
        if self.ascii {
            // SAFETY: `ascii` says every byte of `buf` is below 0x80 (it is
            // checked when `buf` is set), and any run of ASCII bytes is
            // valid UTF-8.
            unsafe { std::str::from_utf8_unchecked(bytes) }
        } else {
            std::str::from_utf8(bytes).unwrap_or("")
        }
    }

    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    pub fn method(&self) -> Option<Method> {
        match self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The request's method token, or for a response the CSeq method.
    pub fn method_str(&self) -> &str {
        match self.start {
            StartLine::Request { method_span, .. } => self.text(method_span),
            StartLine::Response { .. } => self.cseq().map(|(_, m)| m).unwrap_or(""),
        }
    }

    pub fn request_uri(&self) -> Option<&str> {
        match self.start {
            StartLine::Request { uri_span, .. } => Some(self.text(uri_span)),
            StartLine::Response { .. } => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { status, .. } => Some(status),
            StartLine::Request { .. } => None,
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self.start {
            StartLine::Response { reason_span, .. } => Some(self.text(reason_span)),
            StartLine::Request { .. } => None,
        }
    }

    /// Header lines in wire order.
    pub fn headers(&self) -> &[Header] {
        &self.headers
    }

    /// Value of the first line of that header, trimmed.
    pub fn header(&self, name: HeaderName) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| h.value(self))
    }

    /// First value by any spelling: long, compact, or an unknown name.
    pub fn header_named(&self, name: &str) -> Option<&str> {
        match HeaderName::from_name(name) {
            HeaderName::Other => self
                .headers
                .iter()
                .find(|h| {
                    h.name == HeaderName::Other && h.name_str(self).eq_ignore_ascii_case(name)
                })
                .map(|h| h.value(self)),
            known => self.header(known),
        }
    }

    /// Every comma-separated value across all lines of a list header, in order.
    pub fn header_values(&self, name: HeaderName) -> impl Iterator<Item = &str> {
        self.headers
            .iter()
            .filter(move |h| h.name == name)
            .flat_map(move |h| split_values(h.value(self)))
    }

    pub fn call_id(&self) -> Option<&str> {
        match &self.remembered {
            Some(r) => Some(self.text(r.call_id)),
            None => self.header(HeaderName::CallId),
        }
    }

    /// `(number, method)`; `None` when absent or malformed.
    pub fn cseq(&self) -> Option<(u32, &str)> {
        match &self.remembered {
            Some(r) => Some((r.cseq_number, self.text(r.cseq_method))),
            None => parse_cseq(self.header(HeaderName::CSeq)?),
        }
    }

    pub fn from_tag(&self) -> Option<&str> {
        match &self.remembered {
            Some(r) => r.from_tag.map(|span| self.text(span)),
            None => NameAddr::parse(self.header(HeaderName::From)?).ok()?.tag(),
        }
    }

    pub fn to_tag(&self) -> Option<&str> {
        match &self.remembered {
            Some(r) => r.to_tag.map(|span| self.text(span)),
            None => NameAddr::parse(self.header(HeaderName::To)?).ok()?.tag(),
        }
    }

    pub fn max_forwards(&self) -> Option<u32> {
        if let Some(r) = &self.remembered {
            return r.max_forwards;
        }
        let v = self.header(HeaderName::MaxForwards)?;
        if v.is_empty() || v.len() > 9 || !v.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        v.parse().ok()
    }

    /// First value of the first Via line.
    pub fn top_via(&self) -> Option<Via<'_>> {
        let Some(r) = &self.remembered else {
            let line = self.header(HeaderName::Via)?;
            return Via::parse(split_values(line).next()?).ok();
        };
        let spans = &r.top_via;
        // One UTF-8 check for the whole value, then plain sub-slicing.
        let value = self.text(spans.value);
        let part = |span: Span| value.get(span.within(spans.value)).unwrap_or("");
        Some(Via::from_validated_parts(
            part(spans.transport),
            part(spans.host),
            spans.port,
            part(spans.params),
            spans.branch.map(part),
        ))
    }

    /// A copy that has forgotten the remembered fields, so its accessors
    /// re-read the headers (to check the two agree).
    #[cfg(test)]
    pub(crate) fn without_remembered(&self) -> Message {
        Message {
            remembered: None,
            ..self.clone()
        }
    }

    pub fn body(&self) -> &[u8] {
        self.buf.get(self.body_start as usize..).unwrap_or(&[])
    }

    /// The message as framed (leading CRLFs and bytes past Content-Length
    /// excluded).
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    pub fn bytes(&self) -> &Bytes {
        &self.buf
    }
}

/// `1*DIGIT LWS method`, number below 2^31 (RFC 3261 §8.1.1.5).
pub(crate) fn parse_cseq(value: &str) -> Option<(u32, &str)> {
    let bytes = value.as_bytes();
    let digits_end = bytes
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(bytes.len());
    if digits_end == 0 || digits_end > 10 {
        return None;
    }
    // At most ten digits: fits in a u64 without overflow.
    let number = bytes[..digits_end]
        .iter()
        .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
    let number = u32::try_from(number).ok().filter(|n| *n < 1 << 31)?;
    let rest = &value[digits_end..];
    let method = super::params::trim_lws(rest);
    if method.len() == rest.len() || !super::params::is_token(method) {
        return None; // no separating LWS, or not a token
    }
    Some((number, method))
}

/// Whether a header name written by a script names the same header as
/// `wanted` (compact and long forms match).
pub fn same_header(written: &str, wanted: HeaderName, wanted_text: &str) -> bool {
    match wanted {
        HeaderName::Other => written.eq_ignore_ascii_case(wanted_text),
        known => HeaderName::from_name(written) == known,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_read_unchecked_only_from_an_all_ascii_message() {
        let message = |from: &[u8]| {
            let mut raw = b"OPTIONS sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKx\r\nFrom: ".to_vec();
            raw.extend_from_slice(from);
            raw.extend_from_slice(b";tag=1\r\nTo: <sip:a@example.com>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n\r\n");
            crate::sip::parse(bytes::Bytes::from(raw))
        };
        let ascii = message(b"<sip:b@example.com>").expect("parses");
        assert!(ascii.ascii);
        assert_eq!(
            ascii.header(HeaderName::From),
            Some("<sip:b@example.com>;tag=1")
        );
        let utf8 = message("\"J\u{f6}rg\" <sip:b@example.com>".as_bytes()).expect("parses");
        assert!(!utf8.ascii);
        assert_eq!(
            utf8.header(HeaderName::From),
            Some("\"J\u{f6}rg\" <sip:b@example.com>;tag=1")
        );
        // Latin-1 in a display name is no text: read as empty, as before.
        let latin1 = message(b"\"J\xf6rg\" <sip:b@example.com>")
            .unwrap_or_else(|e| *e.partial.expect("framed"));
        assert!(!latin1.ascii);
        assert_eq!(latin1.header(HeaderName::From), Some(""));
        assert_eq!(latin1.call_id(), Some("c"));
    }

    #[test]
    fn header_names() {
        assert_eq!(HeaderName::from_name("v"), HeaderName::Via);
        assert_eq!(HeaderName::from_name("I"), HeaderName::CallId);
        assert_eq!(
            HeaderName::from_name("MaX-fOrWaRdS"),
            HeaderName::MaxForwards
        );
        assert_eq!(
            HeaderName::from_name("content-ENCODING"),
            HeaderName::ContentEncoding
        );
        assert_eq!(HeaderName::from_name("C%6Fntact"), HeaderName::Other);
        assert_eq!(HeaderName::from_name("x"), HeaderName::Other);
        assert_eq!(
            HeaderName::from_name("a-very-long-unknown-header-name"),
            HeaderName::Other
        );
        for name in [
            HeaderName::Via,
            HeaderName::CallId,
            HeaderName::RecordRoute,
            HeaderName::AllowEvents,
            HeaderName::ProxyRequire,
            HeaderName::MinExpires,
            HeaderName::ReferTo,
        ] {
            let canonical = name.canonical().unwrap();
            assert_eq!(HeaderName::from_name(canonical), name);
        }
        assert_eq!(HeaderName::Other.canonical(), None);
    }

    #[test]
    fn methods() {
        assert_eq!(Method::from_token("INVITE"), Method::Invite);
        assert_eq!(Method::from_token("invite"), Method::Other);
        assert_eq!(Method::Prack.as_str(), Some("PRACK"));
    }

    #[test]
    fn cseq_values() {
        assert_eq!(parse_cseq("0009\r\n  INVITE"), Some((9, "INVITE")));
        assert_eq!(parse_cseq("1 ACK"), Some((1, "ACK")));
        assert_eq!(parse_cseq("2147483647 BYE"), Some((2147483647, "BYE")));
        assert_eq!(parse_cseq("2147483648 BYE"), None);
        assert_eq!(parse_cseq("36893488147419103232 REGISTER"), None);
        assert_eq!(parse_cseq("1INVITE"), None);
        assert_eq!(parse_cseq("1"), None);
        assert_eq!(parse_cseq("x INVITE"), None);
        assert_eq!(parse_cseq("1 INVITE junk"), None);
    }
}
