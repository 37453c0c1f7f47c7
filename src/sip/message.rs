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
}

impl Message {
    #[inline]
    pub(crate) fn slice(&self, span: Span) -> &[u8] {
        self.buf.get(span.range()).unwrap_or(&[])
    }

    #[inline]
    pub(crate) fn text(&self, span: Span) -> &str {
        std::str::from_utf8(self.slice(span)).unwrap_or("")
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
        self.header(HeaderName::CallId)
    }

    /// `(number, method)`; `None` when absent or malformed.
    pub fn cseq(&self) -> Option<(u32, &str)> {
        parse_cseq(self.header(HeaderName::CSeq)?)
    }

    pub fn from_tag(&self) -> Option<&str> {
        NameAddr::parse(self.header(HeaderName::From)?).ok()?.tag()
    }

    pub fn to_tag(&self) -> Option<&str> {
        NameAddr::parse(self.header(HeaderName::To)?).ok()?.tag()
    }

    pub fn max_forwards(&self) -> Option<u32> {
        let v = self.header(HeaderName::MaxForwards)?;
        if v.is_empty() || v.len() > 9 || !v.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        v.parse().ok()
    }

    /// First value of the first Via line.
    pub fn top_via(&self) -> Option<Via<'_>> {
        let line = self.header(HeaderName::Via)?;
        Via::parse(split_values(line).next()?).ok()
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
    let method = super::params::trim_lws(rest);
    if method.len() == rest.len() || !super::params::is_token(method) {
        return None; // no separating LWS, or not a token
    }
    Some((number, method))
}

#[cfg(test)]
mod tests {
    use super::*;

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
