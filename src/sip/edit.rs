//! Build the outbound copy of a message from an edit list. Untouched lines and
//! the body are copied byte for byte from the received buffer, and the output
//! is one allocation sized up front: forwarding costs a single memcpy-like pass.

use std::ops::Range;

use super::message::{Message, Span, StartLine};

/// Where an edited header value comes from.
#[derive(Clone, Copy, Debug)]
enum ValueSource {
    /// A sub-range of the received message (e.g. what is left after popping
    /// the first value of a joined line).
    Original(Span),
    /// Text stored in the rewriter's arena.
    Arena(Span),
}

#[derive(Clone, Copy, Debug)]
enum LineEdit {
    Remove,
    Value(ValueSource),
}

/// Accumulates edits against a parsed message; [`Rewriter::finish`] renders
/// them. Edits to the same header line combine (replace then pop, pop twice...).
pub struct Rewriter<'m> {
    msg: &'m Message,
    /// Backing store for every inserted piece of text.
    arena: Vec<u8>,
    request_uri: Option<Span>,
    /// Rendered `Name: value\r\n` lines, in push order (emitted newest first).
    top: Vec<Span>,
    appended: Vec<Span>,
    /// At most one entry per header index; edits are few so a Vec beats a map.
    edits: Vec<(usize, LineEdit)>,
}

impl<'m> Rewriter<'m> {
    /// A message that arrived without Content-Length (allowed on UDP and
    /// WebSocket, where it means "the rest") gets one: every copy we send
    /// may cross onto a stream, where it is a MUST (RFC 3261 §18.3, §16.6
    /// step 9) and its absence breaks the framing of the whole connection.
    pub fn new(msg: &'m Message) -> Self {
        let mut rw = Rewriter {
            msg,
            // Room for a Via, a Record-Route and a rewritten line or two
            // without growing.
            arena: Vec::with_capacity(256),
            request_uri: None,
            top: Vec::new(),
            appended: Vec::new(),
            edits: Vec::new(),
        };
        if msg.header(super::HeaderName::ContentLength).is_none() {
            rw.append_header(
                "Content-Length",
                itoa::Buffer::new().format(msg.body().len()),
            );
        }
        rw
    }

    fn store(&mut self, parts: &[&[u8]]) -> Span {
        let start = self.arena.len();
        for part in parts {
            self.arena.extend_from_slice(part);
        }
        Span::new(start, self.arena.len())
    }

    fn set_edit(&mut self, index: usize, edit: LineEdit) {
        match self.edits.iter_mut().find(|(i, _)| *i == index) {
            Some(slot) => slot.1 = edit,
            None => self.edits.push((index, edit)),
        }
    }

    fn edit_for(&self, index: usize) -> Option<LineEdit> {
        self.edits
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, e)| *e)
    }

    /// Replace the Request-URI (ignored for responses).
    pub fn set_request_uri(&mut self, uri: &str) -> &mut Self {
        if self.msg.is_request() {
            self.request_uri = Some(self.store(&[uri.as_bytes()]));
        }
        self
    }

    /// Insert a header line above all existing lines. Each push goes above the
    /// previous ones, so the last pushed line ends up first.
    pub fn push_top_header(&mut self, name: &str, value: &str) -> &mut Self {
        let line = self.store(&[name.as_bytes(), b": ", value.as_bytes(), b"\r\n"]);
        self.top.push(line);
        self
    }

    /// Drop header line `index` (an index into `msg.headers()`).
    pub fn remove_header(&mut self, index: usize) -> &mut Self {
        if index < self.msg.headers().len() {
            self.set_edit(index, LineEdit::Remove);
        }
        self
    }

    /// Replace the value of line `index`, keeping the name as written.
    pub fn replace_header(&mut self, index: usize, value: &str) -> &mut Self {
        if index < self.msg.headers().len() {
            let span = self.store(&[value.as_bytes()]);
            self.set_edit(index, LineEdit::Value(ValueSource::Arena(span)));
        }
        self
    }

    /// Drop the first comma-separated value of line `index`; the whole line
    /// goes when it held only one value.
    pub fn remove_first_value(&mut self, index: usize) -> &mut Self {
        let Some(header) = self.msg.headers().get(index) else {
            return self;
        };
        let current = match self.edit_for(index) {
            Some(LineEdit::Remove) => return self,
            Some(LineEdit::Value(src)) => src,
            None => ValueSource::Original(header.value_span),
        };
        let (base, span) = match current {
            ValueSource::Original(s) => (self.msg.as_bytes(), s),
            ValueSource::Arena(s) => (self.arena.as_slice(), s),
        };
        let text = base.get(span.range()).unwrap_or(&[]);
        let rest_start = first_top_level_comma(text).map(|comma| {
            let after = &text[comma + 1..];
            comma + 1 + after.iter().take_while(|b| is_separator(**b)).count()
        });
        let edit = match rest_start {
            Some(offset) if offset < text.len() => {
                let rest = Span::new(span.start as usize + offset, span.end as usize);
                LineEdit::Value(match current {
                    ValueSource::Original(_) => ValueSource::Original(rest),
                    ValueSource::Arena(_) => ValueSource::Arena(rest),
                })
            }
            _ => LineEdit::Remove,
        };
        self.set_edit(index, edit);
        self
    }

    /// Add a header line after the existing ones (before the blank line).
    pub fn append_header(&mut self, name: &str, value: &str) -> &mut Self {
        let line = self.store(&[name.as_bytes(), b": ", value.as_bytes(), b"\r\n"]);
        self.appended.push(line);
        self
    }

    fn arena_bytes(&self, span: Span) -> &[u8] {
        self.arena.get(span.range()).unwrap_or(&[])
    }

    fn value_bytes(&self, src: ValueSource) -> &[u8] {
        match src {
            ValueSource::Original(s) => self.msg.as_bytes().get(s.range()).unwrap_or(&[]),
            ValueSource::Arena(s) => self.arena_bytes(s),
        }
    }

    /// Render the edited message.
    pub fn finish(&self) -> Vec<u8> {
        let msg = self.msg;
        let raw = msg.as_bytes();
        let slice = |r: Range<usize>| raw.get(r).unwrap_or(&[]);
        let start_line_end = msg.start_line_end as usize;
        let uri_span = match (msg.start, self.request_uri) {
            (StartLine::Request { uri_span, .. }, Some(new)) => Some((uri_span, new)),
            _ => None,
        };

        // Size everything first so the output is allocated exactly once.
        let mut len = match uri_span {
            Some((old, new)) => start_line_end - old.range().len() + new.range().len(),
            None => start_line_end,
        };
        len += self.top.iter().map(|s| s.range().len()).sum::<usize>();
        for (i, h) in msg.headers().iter().enumerate() {
            len += match self.edit_for(i) {
                None => h.line_span.range().len(),
                Some(LineEdit::Remove) => 0,
                Some(LineEdit::Value(src)) => {
                    h.name_span.range().len() + 2 + self.value_bytes(src).len() + 2
                }
            };
        }
        len += self.appended.iter().map(|s| s.range().len()).sum::<usize>();
        len += raw.len().saturating_sub(msg.headers_end as usize);

        let mut out = Vec::with_capacity(len);
        match uri_span {
            Some((old, new)) => {
                out.extend_from_slice(slice(0..old.start as usize));
                out.extend_from_slice(self.arena_bytes(new));
                out.extend_from_slice(slice(old.end as usize..start_line_end));
            }
            None => out.extend_from_slice(slice(0..start_line_end)),
        }
        for line in self.top.iter().rev() {
            out.extend_from_slice(self.arena_bytes(*line));
        }
        for (i, h) in msg.headers().iter().enumerate() {
            match self.edit_for(i) {
                None => out.extend_from_slice(slice(h.line_span.range())),
                Some(LineEdit::Remove) => {}
                Some(LineEdit::Value(src)) => {
                    out.extend_from_slice(slice(h.name_span.range()));
                    out.extend_from_slice(b": ");
                    out.extend_from_slice(self.value_bytes(src));
                    out.extend_from_slice(b"\r\n");
                }
            }
        }
        for line in &self.appended {
            out.extend_from_slice(self.arena_bytes(*line));
        }
        out.extend_from_slice(slice(msg.headers_end as usize..raw.len()));
        debug_assert_eq!(out.len(), len);
        out
    }
}

fn is_separator(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b',')
}

/// Offset of the first comma outside quotes and `<>`.
fn first_top_level_comma(text: &[u8]) -> Option<usize> {
    let mut in_quotes = false;
    let mut in_angle = false;
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'\\' if in_quotes => i += 1,
            b'"' if !in_angle => in_quotes = !in_quotes,
            b'<' if !in_quotes => in_angle = true,
            b'>' if !in_quotes => in_angle = false,
            b',' if !in_quotes && !in_angle => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::{parse, HeaderName};
    use bytes::Bytes;

    const REQ: &str = "INVITE sip:bob@lb.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP a.example.com;branch=z9hG4bK1\r\n\
Route: <sip:lb.example.com;lr>, <sip:next.example.com;lr>\r\n\
Route: <sip:last.example.com;lr>\r\n\
Max-Forwards: 70\r\n\
To: <sip:bob@example.com>\r\n\
From: <sip:alice@example.com>;tag=1\r\n\
Call-ID: c1\r\n\
CSeq: 1 INVITE\r\n\
X-Odd :   folded\r\n  value\r\n\
Content-Length: 4\r\n\
\r\n\
body";

    fn msg() -> Message {
        parse(Bytes::from_static(REQ.as_bytes())).unwrap()
    }

    #[test]
    fn untouched_is_identical() {
        let m = msg();
        assert_eq!(Rewriter::new(&m).finish(), REQ.as_bytes());
    }

    #[test]
    fn a_message_without_content_length_gets_one_for_its_body() {
        let raw = "OPTIONS sip:b@example.com SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\n\
To: <sip:b@example.com>\r\nFrom: <sip:a@example.com>;tag=1\r\nCall-ID: c\r\n\
CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n\r\nhello";
        let m = parse(Bytes::from(raw)).unwrap();
        let out = parse(Bytes::from(Rewriter::new(&m).finish())).unwrap();
        assert_eq!(out.header(HeaderName::ContentLength), Some("5"));
        assert_eq!(out.body(), b"hello");
        let empty = raw.trim_end_matches("hello");
        let m = parse(Bytes::from(empty)).unwrap();
        let out = parse(Bytes::from(Rewriter::new(&m).finish())).unwrap();
        assert_eq!(out.header(HeaderName::ContentLength), Some("0"));
    }

    #[test]
    fn combined_proxy_edits() {
        let m = msg();
        let out = Rewriter::new(&m)
            .push_top_header("Record-Route", "<sip:lb.example.com;lr>")
            .push_top_header("Via", "SIP/2.0/UDP lb.example.com;branch=z9hG4bKlb")
            .replace_header(3, "69")
            .remove_first_value(1)
            .set_request_uri("sip:bob@10.0.0.1:5060")
            .append_header("X-LB", "1")
            .finish();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "INVITE sip:bob@10.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP lb.example.com;branch=z9hG4bKlb\r\n\
Record-Route: <sip:lb.example.com;lr>\r\n\
Via: SIP/2.0/UDP a.example.com;branch=z9hG4bK1\r\n\
Route: <sip:next.example.com;lr>\r\n\
Route: <sip:last.example.com;lr>\r\n\
Max-Forwards: 69\r\n\
To: <sip:bob@example.com>\r\n\
From: <sip:alice@example.com>;tag=1\r\n\
Call-ID: c1\r\n\
CSeq: 1 INVITE\r\n\
X-Odd :   folded\r\n  value\r\n\
Content-Length: 4\r\n\
X-LB: 1\r\n\
\r\n\
body"
        );
        let again = parse(Bytes::from(text)).unwrap();
        assert_eq!(again.header_values(HeaderName::Route).count(), 2);
        assert_eq!(again.max_forwards(), Some(69));
    }

    #[test]
    fn popping_values_until_the_line_goes() {
        let m = msg();
        let out = Rewriter::new(&m)
            .remove_first_value(1)
            .remove_first_value(1)
            .finish();
        let again = parse(Bytes::from(out)).unwrap();
        let routes: Vec<_> = again.header_values(HeaderName::Route).collect();
        assert_eq!(routes, ["<sip:last.example.com;lr>"]);
        let out = Rewriter::new(&m)
            .remove_first_value(2)
            .remove_header(0)
            .finish();
        let again = parse(Bytes::from(out));
        // no Via left: still framed, reported as missing
        let e = again.unwrap_err();
        assert_eq!(e.to_string(), "missing Via header");
        assert_eq!(
            e.partial.unwrap().header_values(HeaderName::Route).count(),
            2
        );
    }

    #[test]
    fn replace_then_pop_and_out_of_range() {
        let m = msg();
        let out = Rewriter::new(&m)
            .replace_header(2, "<sip:x;lr>, <sip:y;lr>")
            .remove_first_value(2)
            .remove_header(99)
            .replace_header(99, "x")
            .remove_first_value(99)
            .finish();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("\r\nRoute: <sip:y;lr>\r\nMax-Forwards"));
    }
}
