//! One pass over the bytes: start line, header lines (with folding), then
//! Content-Length framing, then the validation the proxy needs before it can
//! route a message. Framing errors are fatal; validation errors come back
//! with the framed message in [`ParseError::partial`] so a 400 can be built.

use bytes::Bytes;
use memchr::memchr;

use super::addr::{NameAddr, RawValues};
use super::error::{ParseError, ParseErrorKind};
use super::message::{
    parse_cseq, Header, HeaderName, Message, Method, Remembered, Span, StartLine, TopViaSpans,
};
use super::params::{has_request_uri_delimiter, is_lws, is_token, token_end_at};
use super::uri::{is_scheme, Uri};
use super::via::Via;
use super::{MAX_HEADERS, MAX_MESSAGE_SIZE};

type Deferred = Option<(ParseErrorKind, String)>;

/// Parse one datagram (or one frame cut by [`super::framing::frame_len`]).
pub fn parse(buf: Bytes) -> Result<Message, ParseError> {
    if buf.len() > MAX_MESSAGE_SIZE {
        return Err(ParseError::new(
            ParseErrorKind::TooLarge,
            format!("message of {} bytes exceeds {MAX_MESSAGE_SIZE}", buf.len()),
        ));
    }
    let skip = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    if buf[skip..].iter().all(|&b| is_lws(b)) {
        return Err(ParseError::new(ParseErrorKind::Keepalive, "keepalive"));
    }
    let mut buf = buf.slice(skip..);
    let (mut msg, mut deferred) = frame(&buf)?;

    // Content-Length: absent means "the rest of the datagram".
    let available = buf.len() - msg.body_start as usize;
    let mut body_len = available;
    match content_length(&msg, &buf) {
        Ok(Some(declared)) if declared > available => {
            deferred.get_or_insert((
                ParseErrorKind::BadContentLength,
                format!("Content-Length {declared} exceeds body of {available} bytes"),
            ));
        }
        Ok(Some(declared)) => body_len = declared,
        Ok(None) => {}
        Err(reason) => {
            deferred.get_or_insert((ParseErrorKind::BadContentLength, reason));
        }
    }
    buf.truncate(msg.body_start as usize + body_len);
    msg.ascii = buf.is_ascii();
    msg.buf = buf;

    if deferred.is_none() {
        match validate(&msg) {
            Ok(remembered) => msg.remembered = Some(remembered),
            Err(e) => deferred = Some(e),
        }
    }
    match deferred {
        None => Ok(msg),
        Some((kind, reason)) => Err(ParseError::new(kind, reason).with_partial(msg)),
    }
}

fn hard(kind: ParseErrorKind, reason: impl Into<String>) -> ParseError {
    ParseError::new(kind, reason)
}

/// Find the next line starting at `pos`: returns (content end, next line start).
/// Accepts bare LF as well as CRLF.
#[inline]
fn next_line(b: &[u8], pos: usize) -> Option<(usize, usize)> {
    let lf = pos + memchr(b'\n', b.get(pos..)?)?;
    let end = if lf > pos && b[lf - 1] == b'\r' {
        lf - 1
    } else {
        lf
    };
    Some((end, lf + 1))
}

/// Start line and header index. The body is not looked at.
fn frame(b: &[u8]) -> Result<(Message, Deferred), ParseError> {
    let (line_end, mut pos) = next_line(b, 0).ok_or_else(|| {
        hard(
            ParseErrorKind::BadStartLine,
            "message has no complete start line",
        )
    })?;
    let (start, mut deferred) = parse_start_line(&b[..line_end])?;
    let start_line_end = pos;

    let mut headers: Vec<Header> = Vec::with_capacity(16);
    let headers_end;
    let body_start;
    loop {
        let (end, next) = next_line(b, pos).ok_or_else(|| {
            hard(
                ParseErrorKind::BadHeader,
                "headers are not terminated by an empty line",
            )
        })?;
        let line = &b[pos..end];
        if line.is_empty() {
            headers_end = pos;
            body_start = next;
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            // Folded continuation of the previous header's value.
            let last = headers.last_mut().ok_or_else(|| {
                hard(
                    ParseErrorKind::BadHeader,
                    "continuation line before the first header",
                )
            })?;
            if let Some(first) = line.iter().position(|&c| c != b' ' && c != b'\t') {
                let last_non_ws = line
                    .iter()
                    .rposition(|&c| c != b' ' && c != b'\t')
                    .unwrap_or(first);
                if last.value_span.start == last.value_span.end {
                    last.value_span.start = (pos + first) as u32;
                }
                last.value_span.end = (pos + last_non_ws + 1) as u32;
            }
            last.line_span.end = next as u32;
        } else {
            if headers.len() == MAX_HEADERS {
                return Err(hard(
                    ParseErrorKind::TooManyHeaders,
                    format!("more than {MAX_HEADERS} header lines"),
                ));
            }
            headers.push(parse_header_line(line, pos, next)?);
        }
        pos = next;
    }
    let msg = Message {
        buf: Bytes::new(),
        start,
        start_line_end: start_line_end as u32,
        headers,
        headers_end: headers_end as u32,
        body_start: body_start as u32,
        remembered: None,
        ascii: false,
    };
    if deferred.is_none() && msg.headers.is_empty() {
        deferred = Some((
            ParseErrorKind::MissingHeader,
            "message has no headers".into(),
        ));
    }
    Ok((msg, deferred))
}

fn parse_header_line(line: &[u8], pos: usize, next: usize) -> Result<Header, ParseError> {
    let name_len = token_end_at(line, 0);
    if name_len == 0 {
        return Err(hard(
            ParseErrorKind::BadHeader,
            "header line does not start with a name",
        ));
    }
    let mut i = name_len;
    while i < line.len() && (line[i] == b' ' || line[i] == b'\t') {
        i += 1;
    }
    if line.get(i) != Some(&b':') {
        let shown = String::from_utf8_lossy(&line[..name_len.min(40)]).into_owned();
        return Err(hard(
            ParseErrorKind::BadHeader,
            format!("header {shown:?} has no colon"),
        ));
    }
    i += 1;
    let value_start = line[i..]
        .iter()
        .position(|&c| c != b' ' && c != b'\t')
        .map(|p| i + p)
        .unwrap_or(line.len());
    let value_end = line
        .iter()
        .rposition(|&c| c != b' ' && c != b'\t')
        .map(|p| (p + 1).max(value_start))
        .unwrap_or(value_start);
    Ok(Header {
        name: HeaderName::from_bytes(&line[..name_len]),
        name_span: Span::new(pos, pos + name_len),
        value_span: Span::new(pos + value_start, pos + value_end),
        line_span: Span::new(pos, next),
    })
}

/// Request-Line or Status-Line. Malformed request lines whose method is still
/// recognisable are deferred so the caller gets a partial message to answer.
fn parse_start_line(line: &[u8]) -> Result<(StartLine, Deferred), ParseError> {
    let bad_line = |reason: &str| hard(ParseErrorKind::BadStartLine, reason.to_string());
    if line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"SIP/") {
        let sp = memchr(b' ', line).ok_or_else(|| bad_line("status line has no status code"))?;
        if !line[..sp].eq_ignore_ascii_case(b"SIP/2.0") {
            return Err(hard(
                ParseErrorKind::BadVersion,
                format!(
                    "unsupported SIP version {:?}",
                    String::from_utf8_lossy(&line[..sp])
                ),
            ));
        }
        let rest = &line[sp + 1..];
        let code_len = rest
            .iter()
            .position(|c| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if code_len != 3 || !(code_len == rest.len() || rest[code_len] == b' ') {
            return Err(bad_line(
                "status code must be three digits followed by a space",
            ));
        }
        let status = rest[..3]
            .iter()
            .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
        if !(100..=699).contains(&status) {
            return Err(bad_line("status code out of range 100-699"));
        }
        let reason_start = (sp + 1 + 3 + 1).min(line.len());
        return Ok((
            StartLine::Response {
                status,
                reason_span: Span::new(reason_start, line.len()),
            },
            None,
        ));
    }

    let method_end =
        memchr(b' ', line).ok_or_else(|| bad_line("request line has no Request-URI"))?;
    let method_bytes = &line[..method_end];
    if method_end == 0 || token_end_at(method_bytes, 0) != method_end {
        return Err(bad_line("request method is not a token"));
    }
    let method = Method::from_token(std::str::from_utf8(method_bytes).unwrap_or(""));
    let uri_start = method_end + 1;
    let uri_end = memchr(b' ', &line[uri_start..])
        .map(|p| uri_start + p)
        .unwrap_or(line.len());
    let start = StartLine::Request {
        method,
        method_span: Span::new(0, method_end),
        uri_span: Span::new(uri_start, uri_end),
    };
    let version = line.get(uri_end + 1..).unwrap_or(&[]);
    let deferred = if uri_end == uri_start {
        Some((
            ParseErrorKind::BadStartLine,
            "empty Request-URI or extra spaces in request line".into(),
        ))
    } else if uri_end == line.len() {
        Some((
            ParseErrorKind::BadStartLine,
            "request line has no SIP version".into(),
        ))
    } else if version.eq_ignore_ascii_case(b"SIP/2.0") {
        check_request_uri(&line[uri_start..uri_end]).err()
    } else if version.len() > 4
        && version[..4].eq_ignore_ascii_case(b"SIP/")
        && !version.iter().any(|&c| is_lws(c))
    {
        Some((
            ParseErrorKind::BadVersion,
            format!(
                "unsupported SIP version {:?}",
                String::from_utf8_lossy(version)
            ),
        ))
    } else {
        Some((
            ParseErrorKind::BadStartLine,
            "malformed request line (whitespace in Request-URI or after version)".into(),
        ))
    };
    Ok((start, deferred))
}

/// True when `uri` may stand as a Request-URI (what [`parse`] accepts), so a
/// proxy never forwards a request that the next hop cannot parse.
pub fn is_valid_request_uri(uri: &str) -> bool {
    check_request_uri(uri.as_bytes()).is_ok()
}

/// Request-URI sanity: an absolute URI without whitespace or `<>`; sip/sips
/// URIs must parse and carry no escaped headers (RFC 3261 §19.1.5).
fn check_request_uri(raw: &[u8]) -> Result<(), (ParseErrorKind, String)> {
    let bad = |reason: String| (ParseErrorKind::BadRequestUri, reason);
    let uri = std::str::from_utf8(raw).map_err(|_| bad("Request-URI is not valid UTF-8".into()))?;
    let colon =
        memchr(b':', raw).ok_or_else(|| bad(format!("Request-URI {uri:?} has no scheme")))?;
    let scheme = &uri[..colon];
    if !is_scheme(scheme) || has_request_uri_delimiter(raw) {
        return Err(bad(format!("malformed Request-URI {uri:?}")));
    }
    if scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips") {
        let parsed = Uri::parse(uri).map_err(|e| bad(format!("malformed Request-URI: {e}")))?;
        if !parsed.headers.is_empty() {
            return Err(bad("Request-URI must not contain headers".into()));
        }
    }
    Ok(())
}

/// Declared Content-Length: `Ok(None)` when absent; error when non-numeric,
/// negative or conflicting.
fn content_length(msg: &Message, b: &[u8]) -> Result<Option<usize>, String> {
    let mut found: Option<usize> = None;
    for h in msg
        .headers
        .iter()
        .filter(|h| h.name == HeaderName::ContentLength)
    {
        let raw = b.get(h.value_span.range()).unwrap_or(&[]);
        if raw.is_empty() || raw.len() > 9 || !raw.iter().all(u8::is_ascii_digit) {
            return Err(format!(
                "invalid Content-Length {:?}",
                String::from_utf8_lossy(raw)
            ));
        }
        let n = raw
            .iter()
            .fold(0usize, |acc, d| acc * 10 + usize::from(d - b'0'));
        match found {
            Some(prev) if prev != n => {
                return Err(format!("conflicting Content-Length values {prev} and {n}"))
            }
            _ => found = Some(n),
        }
    }
    Ok(found)
}

/// Checks that let the proxy rely on the accessors it uses to route. On
/// success, returns where those accessors' answers sit so they need not look
/// again.
fn validate(msg: &Message) -> Result<Remembered, (ParseErrorKind, String)> {
    let buf = msg.as_bytes();
    // One UTF-8 check for the whole head; header values are then plain
    // sub-slices. A head with stray non-UTF-8 bytes (allowed in headers we
    // only forward) falls back to checking the values we read one by one.
    let head = buf
        .get(..msg.headers_end as usize)
        .and_then(|h| std::str::from_utf8(h).ok());
    let utf8_value = |h: &Header, name: &str| match head.and_then(|t| t.get(h.value_span.range())) {
        Some(value) => Ok(value),
        None => utf8_value(msg, h, name),
    };

    let mut first: [Option<&Header>; 5] = [None; 5];
    let mut top_via: Option<TopViaSpans> = None;
    for h in &msg.headers {
        let slot = match h.name {
            HeaderName::Via => {
                let value = utf8_value(h, "Via")?;
                for v in RawValues::new(value) {
                    if v.is_empty() {
                        return Err((ParseErrorKind::BadVia, "empty Via value".into()));
                    }
                    let via = Via::parse(v).map_err(|e| (ParseErrorKind::BadVia, e.reason))?;
                    top_via.get_or_insert_with(|| TopViaSpans {
                        value: Span::of(buf, v),
                        transport: Span::of(buf, via.transport),
                        host: Span::of(buf, via.host),
                        port: via.port,
                        params: Span::of(buf, via.params),
                        branch: via.branch().map(|b| Span::of(buf, b)),
                    });
                }
                continue;
            }
            HeaderName::CallId => 0,
            HeaderName::CSeq => 1,
            HeaderName::From => 2,
            HeaderName::To => 3,
            HeaderName::MaxForwards => 4,
            _ => continue,
        };
        if first[slot].is_some() {
            return Err((
                ParseErrorKind::DuplicateHeader,
                format!("multiple {} headers", h.name.canonical().unwrap_or("")),
            ));
        }
        first[slot] = Some(h);
    }
    let [call_id, cseq, from, to, max_forwards] = first;
    let top_via =
        top_via.ok_or_else(|| (ParseErrorKind::MissingHeader, "missing Via header".into()))?;
    let tag_of = |h: Option<&Header>, name: &str| {
        let value = utf8_value(require(h, name)?, name)?;
        let (_, found) = NameAddr::parse_with_param(value, "tag").map_err(|e| {
            (
                ParseErrorKind::BadAddress,
                format!("malformed {name} header: {e}"),
            )
        })?;
        Ok::<_, (ParseErrorKind, String)>(found.flatten().map(|t| Span::of(buf, t)))
    };
    let from_tag = tag_of(from, "From")?;
    let to_tag = tag_of(to, "To")?;
    let call_id = utf8_value(require(call_id, "Call-ID")?, "Call-ID")?;
    if call_id.is_empty() || call_id.bytes().any(is_lws) {
        return Err((ParseErrorKind::BadHeader, "malformed Call-ID header".into()));
    }
    let cseq_value = utf8_value(require(cseq, "CSeq")?, "CSeq")?;
    let (cseq_number, cseq_method) = parse_cseq(cseq_value).ok_or_else(|| {
        (
            ParseErrorKind::BadCSeq,
            format!("malformed CSeq {cseq_value:?}"),
        )
    })?;
    let max_forwards = match max_forwards {
        None => None,
        Some(h) => {
            // An undecodable value reads as "" and is reported as such.
            let v = head
                .and_then(|t| t.get(h.value_span.range()))
                .unwrap_or_else(|| h.value(msg));
            let n = (!v.is_empty() && v.len() <= 9 && v.bytes().all(|c| c.is_ascii_digit()))
                .then(|| v.parse::<u32>().ok())
                .flatten()
                .filter(|n| *n <= 255);
            match n {
                Some(n) => Some(n),
                None => {
                    return Err((
                        ParseErrorKind::BadMaxForwards,
                        format!("invalid Max-Forwards {v:?}"),
                    ))
                }
            }
        }
    };
    if msg.is_request() {
        let method = msg.method_str();
        if cseq_method != method {
            return Err((
                ParseErrorKind::BadCSeq,
                format!("CSeq method {cseq_method} does not match request method {method}"),
            ));
        }
    }
    debug_assert!(is_token(cseq_method));
    Ok(Remembered {
        top_via,
        from_tag,
        to_tag,
        call_id: Span::of(buf, call_id),
        cseq_number,
        cseq_method: Span::of(buf, cseq_method),
        max_forwards,
    })
}

fn require<'h>(h: Option<&'h Header>, name: &str) -> Result<&'h Header, (ParseErrorKind, String)> {
    h.ok_or_else(|| {
        (
            ParseErrorKind::MissingHeader,
            format!("missing {name} header"),
        )
    })
}

fn utf8_value<'a>(
    msg: &'a Message,
    h: &Header,
    name: &str,
) -> Result<&'a str, (ParseErrorKind, String)> {
    std::str::from_utf8(h.value_bytes(msg)).map_err(|_| {
        (
            ParseErrorKind::BadHeader,
            format!("{name} header is not valid UTF-8"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Message, ParseError> {
        parse(Bytes::copy_from_slice(s.as_bytes()))
    }

    const INVITE: &str = "INVITE sip:bob@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP pc33.example.com;branch=z9hG4bK776asdhds, SIP/2.0/TCP relay.example.net;branch=z9hG4bKa\r\n\
v: SIP/2.0/UDP first.example.org;branch=z9hG4bKb;rport=5070;received=192.0.2.9\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@example.com>\r\n\
From: \"Alice\" <sip:alice@example.com>;tag=1928301774\r\n\
i: a84b4c76e66710@pc33.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Route: <sip:p1.example.com;lr>,<sip:p2.example.com;lr>\r\n\
Route: <sip:p3.example.com;lr>\r\n\
X-Custom:  kept   as is \r\n\
l: 4\r\n\
\r\n\
bodyEXTRA";

    #[test]
    fn parses_a_request() {
        let m = p(INVITE).unwrap();
        assert!(m.is_request());
        assert_eq!(m.method(), Some(Method::Invite));
        assert_eq!(m.method_str(), "INVITE");
        assert_eq!(m.request_uri(), Some("sip:bob@example.com"));
        assert_eq!(m.call_id(), Some("a84b4c76e66710@pc33.example.com"));
        assert_eq!(m.cseq(), Some((314159, "INVITE")));
        assert_eq!(m.from_tag(), Some("1928301774"));
        assert_eq!(m.to_tag(), None);
        assert_eq!(m.max_forwards(), Some(70));
        assert_eq!(m.body(), b"body");
        assert!(m.as_bytes().ends_with(b"\r\n\r\nbody"));
        assert_eq!(m.headers().len(), 11);
        let top = m.top_via().unwrap();
        assert_eq!(top.host, "pc33.example.com");
        assert_eq!(top.branch(), Some("z9hG4bK776asdhds"));
        let vias: Vec<_> = m.header_values(HeaderName::Via).collect();
        assert_eq!(vias.len(), 3);
        assert!(vias[2].starts_with("SIP/2.0/UDP first.example.org"));
        let routes: Vec<_> = m.header_values(HeaderName::Route).collect();
        assert_eq!(
            routes,
            [
                "<sip:p1.example.com;lr>",
                "<sip:p2.example.com;lr>",
                "<sip:p3.example.com;lr>"
            ]
        );
        assert_eq!(m.header_named("x-custom"), Some("kept   as is"));
        assert_eq!(
            m.header_named("Call-ID"),
            Some("a84b4c76e66710@pc33.example.com")
        );
        assert_eq!(m.header_named("i"), Some("a84b4c76e66710@pc33.example.com"));
        assert_eq!(m.header_named("X-Missing"), None);
        let h = &m.headers()[1];
        assert_eq!(h.name, HeaderName::Via);
        assert_eq!(h.name_str(&m), "v");
        assert_eq!(m.status(), None);
        assert_eq!(m.reason(), None);
    }

    #[test]
    fn parses_a_response() {
        let m = p("SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nTo: <sip:b@c>;tag=x\r\nFrom: <sip:a@c>;tag=y\r\nCall-ID: 1\r\nCSeq: 2 INVITE\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert!(!m.is_request());
        assert_eq!(m.status(), Some(180));
        assert_eq!(m.reason(), Some("Ringing"));
        assert_eq!(m.method_str(), "INVITE");
        assert_eq!(m.method(), None);
        assert_eq!(m.request_uri(), None);
        assert_eq!(m.to_tag(), Some("x"));
        assert!(m.body().is_empty());
    }

    #[test]
    fn folding_and_leading_crlf() {
        let m = p("\r\n\r\nOPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n ;branch=z9hG4bKq\r\nTo:\r\n <sip:a@b>\r\nFrom: <sip:c@d>;tag=1\r\nCall-ID: x\r\nCSeq: 1\r\n\tOPTIONS\r\n\r\n").unwrap();
        assert!(m.as_bytes().starts_with(b"OPTIONS"));
        assert_eq!(m.header(HeaderName::To), Some("<sip:a@b>"));
        assert_eq!(m.top_via().unwrap().branch(), Some("z9hG4bKq"));
        assert_eq!(m.cseq(), Some((1, "OPTIONS")));
    }

    #[test]
    fn keepalives() {
        for k in ["", "\r\n", "\r\n\r\n", " \t\r\n"] {
            assert_eq!(p(k).unwrap_err().kind, ParseErrorKind::Keepalive, "{k:?}");
        }
    }

    fn kind_of(s: &str) -> (ParseErrorKind, bool) {
        let e = p(s).unwrap_err();
        (e.kind, e.partial.is_some())
    }

    #[test]
    fn validation_errors_carry_partial() {
        let base = INVITE.replace("l: 4\r\n", "");
        let missing = base.replace("i: a84b4c76e66710@pc33.example.com\r\n", "");
        let e = p(&missing).unwrap_err();
        assert_eq!(e.kind, ParseErrorKind::MissingHeader);
        assert_eq!(e.to_string(), "missing Call-ID header");
        assert!(e.partial.unwrap().top_via().is_some());

        assert_eq!(
            kind_of(&base.replace("314159 INVITE", "314159 BYE")),
            (ParseErrorKind::BadCSeq, true)
        );
        assert_eq!(
            kind_of(&base.replace("Max-Forwards: 70", "Max-Forwards: abc")),
            (ParseErrorKind::BadMaxForwards, true)
        );
        assert_eq!(
            kind_of(&base.replace("Max-Forwards: 70", "Max-Forwards: 256")),
            (ParseErrorKind::BadMaxForwards, true)
        );
        assert_eq!(
            kind_of(&base.replace("SIP/2.0\r\n", "SIP/3.0\r\n")),
            (ParseErrorKind::BadVersion, true)
        );
        assert_eq!(
            kind_of(&base.replace("sip:bob@example.com SIP", "<sip:bob@example.com> SIP")),
            (ParseErrorKind::BadRequestUri, true)
        );
        assert_eq!(
            kind_of(&base.replace("Route: <sip:p3.example.com;lr>\r\n", "Call-ID: again\r\n")),
            (ParseErrorKind::DuplicateHeader, true)
        );
        assert_eq!(
            kind_of(&base.replace("pc33.example.com;branch", "pc33.example.com;;branch")),
            (ParseErrorKind::BadVia, true)
        );
        assert_eq!(
            kind_of(&INVITE.replace("l: 4", "l: 40")),
            (ParseErrorKind::BadContentLength, true)
        );
        assert_eq!(
            kind_of(&INVITE.replace("l: 4", "l: -4")),
            (ParseErrorKind::BadContentLength, true)
        );
        assert_eq!(
            kind_of(&INVITE.replace("l: 4", "l: 4\r\nContent-Length: 5")),
            (ParseErrorKind::BadContentLength, true)
        );
        // identical duplicates are harmless
        assert!(p(&INVITE.replace("l: 4", "l: 4\r\nContent-Length: 4")).is_ok());
        let e = p(&INVITE.replace("l: 4", "l: 200")).unwrap_err();
        assert_eq!(e.to_string(), "Content-Length 200 exceeds body of 9 bytes");
    }

    #[test]
    fn framing_errors() {
        assert_eq!(
            kind_of("INVITE sip:a@b SIP/2.0\r\nTo: x\r\n").0,
            ParseErrorKind::BadHeader
        );
        assert_eq!(
            kind_of("INVITE sip:a@b SIP/2.0\r\nno colon here\r\n\r\n").0,
            ParseErrorKind::BadHeader
        );
        assert_eq!(
            kind_of("INVITE sip:a@b SIP/2.0\r\n continued\r\n\r\n").0,
            ParseErrorKind::BadHeader
        );
        assert_eq!(
            kind_of("SIP/2.0 99 Low\r\n\r\n").0,
            ParseErrorKind::BadStartLine
        );
        assert_eq!(
            kind_of("SIP/2.0 4294967301 big\r\n\r\n").0,
            ParseErrorKind::BadStartLine
        );
        assert_eq!(
            kind_of("SIP/3.0 200 OK\r\n\r\n").0,
            ParseErrorKind::BadVersion
        );
        assert_eq!(kind_of("garbage").0, ParseErrorKind::BadStartLine);
        assert_eq!(
            kind_of("IN(VITE sip:a SIP/2.0\r\n\r\n").0,
            ParseErrorKind::BadStartLine
        );
        let many = format!("OPTIONS sip:a@b SIP/2.0\r\n{}\r\n", "X: y\r\n".repeat(300));
        assert_eq!(kind_of(&many).0, ParseErrorKind::TooManyHeaders);
        let big = vec![b'a'; MAX_MESSAGE_SIZE + 1];
        assert_eq!(
            parse(Bytes::from(big)).unwrap_err().kind,
            ParseErrorKind::TooLarge
        );
    }

    #[test]
    fn non_utf8_bytes_forward_unless_needed() {
        let mut raw = INVITE.as_bytes().to_vec();
        let at = raw.windows(10).position(|w| w == b"X-Custom: ").unwrap() + 10;
        raw.splice(at..at, [0xff, 0xfe, b' ']);
        let m = parse(Bytes::from(raw.clone())).unwrap();
        let h = m
            .headers()
            .iter()
            .find(|h| h.name_str(&m) == "X-Custom")
            .unwrap();
        assert_eq!(h.value(&m), "");
        assert!(h.value_bytes(&m).starts_with(&[0xff, 0xfe]));
        assert_eq!(crate::sip::Rewriter::new(&m).finish(), m.as_bytes());

        let mut bad_call_id = INVITE.as_bytes().to_vec();
        let at = bad_call_id.windows(3).position(|w| w == b"i: ").unwrap() + 3;
        bad_call_id.insert(at, 0xff);
        let e = parse(Bytes::from(bad_call_id)).unwrap_err();
        assert_eq!(e.kind, ParseErrorKind::BadHeader);
        assert_eq!(e.reason, "Call-ID header is not valid UTF-8");
    }

    #[test]
    fn header_limit_is_inclusive() {
        let base = INVITE.replace("l: 4\r\n", "");
        let (head, body) = base.split_once("\r\n\r\n").unwrap();
        let fill = MAX_HEADERS - 10;
        let ok = format!("{head}\r\n{}\r\n{body}", "X: y\r\n".repeat(fill));
        assert_eq!(p(&ok).unwrap().headers().len(), MAX_HEADERS);
        let over = format!("{head}\r\n{}\r\n{body}", "X: y\r\n".repeat(fill + 1));
        assert_eq!(kind_of(&over).0, ParseErrorKind::TooManyHeaders);
    }

    #[test]
    fn response_without_reason_phrase() {
        let rest = "Via: SIP/2.0/UDP a\r\nTo: <sip:b@c>\r\nFrom: <sip:a@c>;tag=y\r\nCall-ID: 1\r\nCSeq: 2 INVITE\r\n\r\n";
        for line in ["SIP/2.0 100 \r\n", "SIP/2.0 100\r\n"] {
            let m = p(&format!("{line}{rest}")).unwrap();
            assert_eq!(m.status(), Some(100));
            assert_eq!(m.reason(), Some(""));
        }
    }
}
