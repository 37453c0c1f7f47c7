//! Messages the proxy originates itself: error and status responses, the
//! CANCEL and ACK a stateful proxy must generate (RFC 3261 §9.1, §17.1.1.3),
//! and simple requests such as OPTIONS health probes.

use super::addr::{split_values, NameAddr};
use super::message::{HeaderName, Message};

/// Where a builder writes: [`Measure`] first sums the length, then the same
/// builder fills a `Vec` allocated exactly once with that capacity.
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

/// Counts bytes instead of storing them.
struct Measure(usize);

impl Sink for Measure {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
}

impl Sink for Vec<u8> {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Run `write` once to size the output and once to fill it: one allocation,
/// exactly as large as the message.
fn render(write: impl Fn(&mut dyn Sink)) -> Vec<u8> {
    let mut measure = Measure(0);
    write(&mut measure);
    let mut out = Vec::with_capacity(measure.0);
    write(&mut out);
    debug_assert_eq!(out.len(), measure.0);
    out
}

fn push_header(out: &mut dyn Sink, name: &[u8], value: &[u8]) {
    out.put(name);
    out.put(b": ");
    out.put(value);
    out.put(b"\r\n");
}

/// Copy every line of `name` from `msg`, normalised to `Name: value\r\n`
/// with the name as written.
fn copy_lines(out: &mut dyn Sink, msg: &Message, name: HeaderName) {
    for h in msg.headers().iter().filter(|h| h.name == name) {
        push_header(out, h.name_str(msg).as_bytes(), h.value_bytes(msg));
    }
}

/// Copy the first line of `name`, if present.
fn copy_first(out: &mut dyn Sink, msg: &Message, name: HeaderName) {
    if let Some(h) = msg.headers().iter().find(|h| h.name == name) {
        push_header(out, h.name_str(msg).as_bytes(), h.value_bytes(msg));
    }
}

fn finish(out: &mut dyn Sink, extra: &[(&str, &str)]) {
    for (name, value) in extra {
        push_header(out, name.as_bytes(), value.as_bytes());
    }
    out.put(b"Content-Length: 0\r\n\r\n");
}

/// A response to `req` (which may be a `ParseError::partial`): every Via line
/// in order, From, To (with `to_tag` added if it has none), Call-ID, CSeq,
/// then `extra` and `Content-Length: 0`.
pub fn response(
    req: &Message,
    code: u16,
    reason: &str,
    to_tag: Option<&str>,
    extra: &[(&str, &str)],
) -> Vec<u8> {
    response_with_top_via(req, code, reason, to_tag, extra, None)
}

/// [`response`] with the request's first Via line replaced by `top_via`
/// when given: the line as stamped with `received`/`rport` (RFC 3581).
pub fn response_with_top_via(
    req: &Message,
    code: u16,
    reason: &str,
    to_tag: Option<&str>,
    extra: &[(&str, &str)],
    top_via: Option<&str>,
) -> Vec<u8> {
    let to = req.headers().iter().find(|h| h.name == HeaderName::To);
    // The tag to append, when the request's To has none yet.
    let add_tag = to_tag.filter(|_| {
        let has_tag = to
            .and_then(|h| std::str::from_utf8(h.value_bytes(req)).ok())
            .and_then(|v| NameAddr::parse(v).ok())
            .is_some_and(|a| a.tag().is_some());
        !has_tag
    });
    let mut code_text = itoa::Buffer::new();
    let code_text = code_text.format(code).as_bytes();
    render(|out| {
        out.put(b"SIP/2.0 ");
        out.put(code_text);
        out.put(b" ");
        out.put(reason.as_bytes());
        out.put(b"\r\n");
        let mut vias = req.headers().iter().filter(|h| h.name == HeaderName::Via);
        if let (Some(first), Some(stamped)) = (vias.next(), top_via) {
            push_header(out, first.name_str(req).as_bytes(), stamped.as_bytes());
        } else if let Some(first) = req.headers().iter().find(|h| h.name == HeaderName::Via) {
            push_header(out, first.name_str(req).as_bytes(), first.value_bytes(req));
        }
        for h in vias {
            push_header(out, h.name_str(req).as_bytes(), h.value_bytes(req));
        }
        copy_first(out, req, HeaderName::From);
        if let Some(h) = to {
            out.put(h.name_str(req).as_bytes());
            out.put(b": ");
            out.put(h.value_bytes(req));
            if let Some(tag) = add_tag {
                out.put(b";tag=");
                out.put(tag.as_bytes());
            }
            out.put(b"\r\n");
        }
        copy_first(out, req, HeaderName::CallId);
        copy_first(out, req, HeaderName::CSeq);
        finish(out, extra);
    })
}

/// Request line, the top Via value only, and the Route lines: the part that
/// CANCEL and non-2xx ACK share with the INVITE they refer to.
fn start_like_invite(out: &mut dyn Sink, method: &str, invite: &Message) {
    out.put(method.as_bytes());
    out.put(b" ");
    out.put(invite.request_uri().unwrap_or("").as_bytes());
    out.put(b" SIP/2.0\r\n");
    if let Some(top) = invite
        .header(HeaderName::Via)
        .and_then(|v| split_values(v).next())
    {
        push_header(out, b"Via", top.as_bytes());
    }
    copy_lines(out, invite, HeaderName::Route);
}

fn cseq_line(out: &mut dyn Sink, number: &[u8], method: &str) {
    out.put(b"CSeq: ");
    out.put(number);
    out.put(b" ");
    out.put(method.as_bytes());
    out.put(b"\r\nMax-Forwards: 70\r\n");
}

/// CANCEL for an INVITE as we sent it downstream (RFC 3261 §9.1).
pub fn cancel(invite: &Message) -> Vec<u8> {
    let mut number = itoa::Buffer::new();
    let number = number
        .format(invite.cseq().map_or(0, |(n, _)| n))
        .as_bytes();
    render(|out| {
        start_like_invite(out, "CANCEL", invite);
        copy_first(out, invite, HeaderName::From);
        copy_first(out, invite, HeaderName::To);
        copy_first(out, invite, HeaderName::CallId);
        cseq_line(out, number, "CANCEL");
        finish(out, &[]);
    })
}

/// ACK for a non-2xx final response to our INVITE (RFC 3261 §17.1.1.3): To
/// comes from the response so it carries the downstream tag.
pub fn ack_for_non2xx(invite: &Message, response: &Message) -> Vec<u8> {
    let mut number = itoa::Buffer::new();
    let number = number
        .format(invite.cseq().map_or(0, |(n, _)| n))
        .as_bytes();
    render(|out| {
        start_like_invite(out, "ACK", invite);
        copy_first(out, invite, HeaderName::From);
        copy_first(out, response, HeaderName::To);
        copy_first(out, invite, HeaderName::CallId);
        cseq_line(out, number, "ACK");
        finish(out, &[]);
    })
}

/// A new out-of-dialog request (OPTIONS probes): `via` is a full Via value.
#[allow(clippy::too_many_arguments)]
pub fn request(
    method: &str,
    ruri: &str,
    via: &str,
    from: &str,
    to: &str,
    call_id: &str,
    cseq: u32,
    extra: &[(&str, &str)],
) -> Vec<u8> {
    let mut number = itoa::Buffer::new();
    let number = number.format(cseq).as_bytes();
    render(|out| {
        out.put(method.as_bytes());
        out.put(b" ");
        out.put(ruri.as_bytes());
        out.put(b" SIP/2.0\r\n");
        push_header(out, b"Via", via.as_bytes());
        push_header(out, b"From", from.as_bytes());
        push_header(out, b"To", to.as_bytes());
        push_header(out, b"Call-ID", call_id.as_bytes());
        cseq_line(out, number, method);
        finish(out, extra);
    })
}

/// Append `len` random alphanumerics (at most 21: one u128 of entropy).
fn push_random_token(out: &mut String, len: usize) {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut bits: u128 = rand::random();
    for _ in 0..len {
        out.push(char::from(
            ALPHABET[(bits % ALPHABET.len() as u128) as usize],
        ));
        bits /= ALPHABET.len() as u128;
    }
}

/// The RFC 3261 magic cookie every branch we generate starts with.
const BRANCH_COOKIE: &str = "z9hG4bK";

/// A fresh RFC 3261 branch: magic cookie plus 16 random alphanumerics
/// (~95 bits, enough to be unique across restarts and nodes).
pub fn new_branch() -> String {
    let mut branch = String::with_capacity(BRANCH_COOKIE.len() + 16);
    branch.push_str(BRANCH_COOKIE);
    push_random_token(&mut branch, 16);
    branch
}

/// A fresh From/To tag (~59 bits of randomness).
pub fn new_tag() -> String {
    let mut tag = String::with_capacity(10);
    push_random_token(&mut tag, 10);
    tag
}

/// RFC 3261 §21 reason phrases (plus a few common extensions).
pub fn default_reason(code: u16) -> &'static str {
    specific_reason(code).unwrap_or(match code {
        100..=199 => "Session Progress",
        200..=299 => "OK",
        300..=399 => "Redirection",
        400..=499 => "Client Error",
        500..=599 => "Server Error",
        _ => "Global Failure",
    })
}

fn specific_reason(code: u16) -> Option<&'static str> {
    Some(match code {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Moved Temporarily",
        305 => "Use Proxy",
        380 => "Alternative Service",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        410 => "Gone",
        413 => "Request Entity Too Large",
        414 => "Request-URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        421 => "Extension Required",
        423 => "Interval Too Brief",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        484 => "Address Incomplete",
        485 => "Ambiguous",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        493 => "Undecipherable",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        606 => "Not Acceptable",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::{parse, ParseErrorKind};
    use bytes::Bytes;

    const INVITE: &str = "INVITE sip:bob@10.0.0.2 SIP/2.0\r\n\
Via: SIP/2.0/UDP lb.example.com;branch=z9hG4bKlb, SIP/2.0/UDP a.example.com;branch=z9hG4bK1\r\n\
v: SIP/2.0/UDP b.example.com;branch=z9hG4bK0\r\n\
Route: <sip:r1.example.com;lr>\r\n\
Max-Forwards: 69\r\n\
To: Bob <sip:bob@example.com>\r\n\
f: <sip:alice@example.com>;tag=1\r\n\
Call-ID: c1\r\n\
CSeq: 7 INVITE\r\n\
Content-Length: 0\r\n\r\n";

    fn invite() -> Message {
        parse(Bytes::from_static(INVITE.as_bytes())).unwrap()
    }

    #[test]
    fn response_copies_dialog_headers() {
        let m = invite();
        let out = response(
            &m,
            486,
            default_reason(486),
            Some("srv1"),
            &[("Retry-After", "5")],
        );
        let r = parse(Bytes::from(out)).unwrap();
        assert_eq!(r.status(), Some(486));
        assert_eq!(r.reason(), Some("Busy Here"));
        assert_eq!(r.header_values(HeaderName::Via).count(), 3);
        assert_eq!(r.top_via().unwrap().host, "lb.example.com");
        assert_eq!(r.to_tag(), Some("srv1"));
        assert_eq!(r.from_tag(), Some("1"));
        assert_eq!(r.call_id(), Some("c1"));
        assert_eq!(r.cseq(), Some((7, "INVITE")));
        assert_eq!(r.header_named("Retry-After"), Some("5"));
        assert_eq!(r.header(HeaderName::Route), None);
        // an existing To tag is kept, not doubled
        let again = response(&r, 200, "OK", Some("other"), &[]);
        assert_eq!(parse(Bytes::from(again)).unwrap().to_tag(), Some("srv1"));
    }

    #[test]
    fn response_from_partial_message() {
        let broken = INVITE.replace("Call-ID: c1\r\n", "");
        let e = parse(Bytes::from(broken)).unwrap_err();
        assert_eq!(e.kind, ParseErrorKind::MissingHeader);
        let partial = e.partial.unwrap();
        let out = response(&partial, 400, &e.reason, None, &[]);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("SIP/2.0 400 missing Call-ID header\r\n"));
        assert!(text.contains("CSeq: 7 INVITE\r\n"));
        assert!(text.ends_with("Content-Length: 0\r\n\r\n"));
    }

    #[test]
    fn cancel_and_ack() {
        let inv = invite();
        let c = parse(Bytes::from(cancel(&inv))).unwrap();
        assert_eq!(c.method_str(), "CANCEL");
        assert_eq!(c.request_uri(), Some("sip:bob@10.0.0.2"));
        assert_eq!(c.header_values(HeaderName::Via).count(), 1);
        assert_eq!(c.top_via().unwrap().branch(), Some("z9hG4bKlb"));
        assert_eq!(c.cseq(), Some((7, "CANCEL")));
        assert_eq!(c.header(HeaderName::Route), Some("<sip:r1.example.com;lr>"));
        assert_eq!(c.max_forwards(), Some(70));
        assert_eq!(c.to_tag(), None);

        let resp = parse(Bytes::from(response(
            &inv,
            486,
            "Busy Here",
            Some("t9"),
            &[],
        )))
        .unwrap();
        let a = parse(Bytes::from(ack_for_non2xx(&inv, &resp))).unwrap();
        assert_eq!(a.method_str(), "ACK");
        assert_eq!(a.cseq(), Some((7, "ACK")));
        assert_eq!(a.to_tag(), Some("t9"));
        assert_eq!(a.from_tag(), Some("1"));
        assert_eq!(a.header_values(HeaderName::Via).count(), 1);
        assert_eq!(a.top_via().unwrap().branch(), Some("z9hG4bKlb"));
    }

    #[test]
    fn options_probe() {
        let branch = new_branch();
        let via = format!("SIP/2.0/UDP 192.0.2.10:5060;branch={branch}");
        let tag = new_tag();
        let from = format!("<sip:siphon@192.0.2.10>;tag={tag}");
        let out = request(
            "OPTIONS",
            "sip:backend1.example.com:5060",
            &via,
            &from,
            "<sip:backend1.example.com:5060>",
            "probe-1",
            3,
            &[("Accept", "application/sdp")],
        );
        let m = parse(Bytes::from(out)).unwrap();
        assert_eq!(m.method(), Some(crate::sip::Method::Options));
        assert_eq!(m.top_via().unwrap().branch(), Some(branch.as_str()));
        assert_eq!(m.from_tag(), Some(tag.as_str()));
        assert_eq!(m.cseq(), Some((3, "OPTIONS")));
        assert!(branch.starts_with("z9hG4bK") && branch.len() == 23);
        assert_ne!(new_branch(), new_branch());
        assert_ne!(new_tag(), new_tag());
    }

    #[test]
    fn reasons() {
        assert_eq!(default_reason(404), "Not Found");
        assert_eq!(default_reason(483), "Too Many Hops");
        assert_eq!(default_reason(499), "Client Error");
        assert_eq!(default_reason(699), "Global Failure");
    }
}
