//! Cutting a TCP byte stream into messages. On a stream Content-Length is
//! the only frame boundary (RFC 3261 §18.3), so it is mandatory; everything
//! is bounded by [`super::MAX_MESSAGE_SIZE`] so a peer cannot make us buffer
//! without limit.

use memchr::memchr_iter;

use super::error::{ParseError, ParseErrorKind};
use super::message::HeaderName;
use super::params::is_token_byte;
use super::MAX_MESSAGE_SIZE;

/// Number of leading CR/LF bytes (keepalives between messages, RFC 5626 §4.4.1).
/// A caller whose buffer is all keepalive can drain this many bytes.
pub fn leading_crlf(buf: &[u8]) -> usize {
    buf.iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count()
}

/// Offset just past the empty line that ends the headers, if received.
fn head_end(head: &[u8]) -> Option<usize> {
    memchr_iter(b'\n', head).find_map(|lf| match (head.get(lf + 1), head.get(lf + 2)) {
        (Some(b'\n'), _) => Some(lf + 2),
        (Some(b'\r'), Some(b'\n')) => Some(lf + 3),
        _ => None,
    })
}

/// Frame the next message in `buf`: `Ok(Some((skip, len)))` means the message
/// is `buf[skip..skip + len]` (skip = leading CRLFs); `Ok(None)` means more
/// bytes are needed (including when `buf` holds only CRLF keepalives, see
/// [`leading_crlf`]). Errors are fatal for the connection.
pub fn frame_len(buf: &[u8]) -> Result<Option<(usize, usize)>, ParseError> {
    Ok(declared_frame(buf)?.filter(|&(skip, total)| buf.len() - skip >= total))
}

/// Like [`frame_len`], but as soon as the headers are complete: the
/// message's leading CRLFs and its whole length, body included, whether
/// the body has arrived or not.
fn declared_frame(buf: &[u8]) -> Result<Option<(usize, usize)>, ParseError> {
    let skip = leading_crlf(buf);
    let data = &buf[skip..];
    let too_large = |n: usize| {
        ParseError::new(
            ParseErrorKind::TooLarge,
            format!("message of {n} bytes exceeds {MAX_MESSAGE_SIZE}"),
        )
    };
    let window = &data[..data.len().min(MAX_MESSAGE_SIZE)];
    let Some(head_len) = head_end(window) else {
        if data.len() >= MAX_MESSAGE_SIZE {
            return Err(too_large(data.len()));
        }
        return Ok(None);
    };
    let head = &data[..head_len];
    let mut declared: Option<usize> = None;
    // Skip the start line; look at each header line's name.
    let mut line_start = memchr::memchr(b'\n', head).map_or(head.len(), |i| i + 1);
    while line_start < head.len() {
        let line_end =
            memchr::memchr(b'\n', &head[line_start..]).map_or(head.len(), |i| line_start + i);
        let line = &head[line_start..line_end];
        line_start = line_end + 1;
        let name_len = line
            .iter()
            .position(|&b| !is_token_byte(b))
            .unwrap_or(line.len());
        let name = std::str::from_utf8(&line[..name_len]).unwrap_or("");
        if name_len == 0 || HeaderName::from_name(name) != HeaderName::ContentLength {
            continue;
        }
        let after_name = &line[name_len..];
        let value = after_name
            .iter()
            .position(|&b| b == b':')
            .map(|colon| after_name[colon + 1..].trim_ascii())
            .unwrap_or(&[]);
        if value.is_empty() || value.len() > 9 || !value.iter().all(u8::is_ascii_digit) {
            return Err(ParseError::new(
                ParseErrorKind::BadContentLength,
                format!(
                    "invalid Content-Length {:?}",
                    String::from_utf8_lossy(value)
                ),
            ));
        }
        let n = value
            .iter()
            .fold(0usize, |acc, d| acc * 10 + usize::from(d - b'0'));
        if declared.is_some_and(|prev| prev != n) {
            return Err(ParseError::new(
                ParseErrorKind::BadContentLength,
                "conflicting Content-Length values",
            ));
        }
        declared = Some(n);
    }
    let body_len = declared.ok_or_else(|| {
        ParseError::new(
            ParseErrorKind::BadContentLength,
            "missing Content-Length on a stream transport",
        )
    })?;
    let total = head_len + body_len;
    if total > MAX_MESSAGE_SIZE {
        return Err(too_large(total));
    }
    Ok(Some((skip, total)))
}

/// [`frame_len`] for a stream read a piece at a time. It remembers how far
/// it has searched for the end of the headers, and the length of a message
/// whose body is still arriving, so each byte is looked at a bounded number
/// of times however finely the peer splits its writes (a peer trickling a
/// byte at a time would otherwise cost a rescan of the headers per byte).
#[derive(Debug, Default)]
pub struct StreamFramer {
    /// Bytes after the leading CRLFs already searched for the empty line.
    searched: usize,
    /// The whole length of the message whose headers are in.
    declared: Option<(usize, usize)>,
    /// How much of a `\r\n\r\n` ping the keepalives so far have spelt.
    ping_progress: usize,
}

/// CR/LF keepalives consumed between two messages (RFC 5626 §4.4.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Keepalives {
    /// How many bytes they were.
    pub bytes: usize,
    /// How many double-CRLF pings they completed (each asks for a pong,
    /// a single CRLF).
    pub pings: usize,
}

const PING: &[u8; 4] = b"\r\n\r\n";

impl StreamFramer {
    /// Consumes the CR and LF bytes at the start of `buf` when no message
    /// has begun (the caller then drops `bytes` from the front of its
    /// buffer), so that keepalives never pile up in it.
    pub fn take_keepalives(&mut self, buf: &[u8]) -> Keepalives {
        if self.searched > 0 || self.declared.is_some() {
            return Keepalives::default();
        }
        let bytes = leading_crlf(buf);
        let mut pings = 0;
        for &byte in &buf[..bytes] {
            if byte == PING[self.ping_progress] {
                self.ping_progress += 1;
            } else {
                self.ping_progress = usize::from(byte == b'\r');
            }
            if self.ping_progress == PING.len() {
                pings += 1;
                self.ping_progress = 0;
            }
        }
        Keepalives { bytes, pings }
    }

    /// Same contract as [`frame_len`]; `buf` must hold what the previous
    /// call saw, plus what arrived since (minus any message it returned).
    pub fn next_frame(&mut self, buf: &[u8]) -> Result<Option<(usize, usize)>, ParseError> {
        if self.declared.is_none() {
            let skip = leading_crlf(buf);
            let data = &buf[skip..];
            let window = &data[..data.len().min(MAX_MESSAGE_SIZE)];
            // Three bytes back: the empty line may straddle two reads.
            let from = self.searched.saturating_sub(3).min(window.len());
            if head_end(&window[from..]).is_none() {
                self.searched = window.len();
                if data.len() >= MAX_MESSAGE_SIZE {
                    return Err(ParseError::new(
                        ParseErrorKind::TooLarge,
                        format!("header section exceeds {MAX_MESSAGE_SIZE} bytes"),
                    ));
                }
                return Ok(None);
            }
            self.declared = declared_frame(buf)?;
        }
        match self.declared {
            Some((skip, total)) if buf.len() - skip >= total => {
                // A message between keepalives starts the ping afresh.
                *self = StreamFramer::default();
                Ok(Some((skip, total)))
            }
            _ => Ok(None),
        }
    }

    /// How far into the message the framer has got (for tests).
    pub fn searched(&self) -> usize {
        self.searched
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] =
        b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nl: 5\r\n\r\nhello";

    #[test]
    fn keepalives_are_consumed_as_they_come_and_double_crlfs_are_pings() {
        let mut framer = StreamFramer::default();
        // A ping split across reads, then a lone CRLF (a pong, or noise).
        assert_eq!(
            framer.take_keepalives(b"\r\n\r"),
            Keepalives { bytes: 3, pings: 0 }
        );
        assert_eq!(
            framer.take_keepalives(b"\n"),
            Keepalives { bytes: 1, pings: 1 }
        );
        assert_eq!(
            framer.take_keepalives(b"\r\n"),
            Keepalives { bytes: 2, pings: 0 }
        );
        assert_eq!(
            framer.take_keepalives(b"\r\n\r\n\r\n\r\nOPT"),
            Keepalives { bytes: 8, pings: 2 }
        );
        assert_eq!(framer.take_keepalives(b"OPTIONS"), Keepalives::default());
        // Inside a message, CRLFs are the message's own.
        assert_eq!(framer.next_frame(&MSG[..30]).unwrap(), None);
        assert_eq!(framer.take_keepalives(b"\r\n"), Keepalives::default());
        // A flood of them is consumed whole each time: nothing is kept.
        let mut framer = StreamFramer::default();
        let flood = vec![b'\n'; 1 << 20];
        assert_eq!(framer.take_keepalives(&flood).bytes, flood.len());
    }

    #[test]
    fn frames_complete_and_partial_messages() {
        assert_eq!(frame_len(MSG).unwrap(), Some((0, MSG.len())));
        for cut in 0..MSG.len() {
            assert_eq!(frame_len(&MSG[..cut]).unwrap(), None, "cut at {cut}");
        }
        let mut two = b"\r\n\r\n".to_vec();
        two.extend_from_slice(MSG);
        two.extend_from_slice(MSG);
        assert_eq!(frame_len(&two).unwrap(), Some((4, MSG.len())));
        assert_eq!(frame_len(b"\r\n\r\n").unwrap(), None);
        assert_eq!(leading_crlf(b"\r\n\r\nX"), 4);
    }

    #[test]
    fn the_stream_framer_frames_what_frame_len_does_at_every_split() {
        let mut stream = b"\r\n".to_vec();
        stream.extend_from_slice(MSG);
        stream.extend_from_slice(MSG);
        for step in [1, 2, 3, 7, 40, stream.len()] {
            let mut framer = StreamFramer::default();
            let mut buf = Vec::new();
            let mut frames = Vec::new();
            for piece in stream.chunks(step) {
                buf.extend_from_slice(piece);
                while let Some((skip, len)) = framer.next_frame(&buf).unwrap() {
                    frames.push(buf[skip..skip + len].to_vec());
                    buf.drain(..skip + len);
                }
            }
            assert_eq!(frames, vec![MSG.to_vec(), MSG.to_vec()], "step {step}");
        }
    }

    #[test]
    fn a_trickled_header_is_searched_once() {
        // A peer sending one byte at a time: each call looks at a few new
        // bytes, not the whole header again.
        let mut framer = StreamFramer::default();
        let mut buf = b"OPTIONS sip:a@b SIP/2.0\r\n".to_vec();
        for _ in 0..2000 {
            buf.extend_from_slice(b"X");
            assert_eq!(framer.next_frame(&buf).unwrap(), None);
            assert_eq!(framer.searched(), buf.len());
        }
        let endless = vec![b'a'; MAX_MESSAGE_SIZE + 1];
        assert_eq!(
            StreamFramer::default()
                .next_frame(&endless)
                .unwrap_err()
                .kind,
            ParseErrorKind::TooLarge
        );
    }

    #[test]
    fn stream_errors() {
        let no_cl = b"OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\n\r\n";
        assert_eq!(
            frame_len(no_cl).unwrap_err().kind,
            ParseErrorKind::BadContentLength
        );
        let neg = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: -1\r\n\r\n";
        assert_eq!(
            frame_len(neg).unwrap_err().kind,
            ParseErrorKind::BadContentLength
        );
        let conflict = b"OPTIONS sip:a@b SIP/2.0\r\nl: 1\r\nContent-Length: 2\r\n\r\nab";
        assert_eq!(
            frame_len(conflict).unwrap_err().kind,
            ParseErrorKind::BadContentLength
        );
        let huge = b"OPTIONS sip:a@b SIP/2.0\r\nl: 999999\r\n\r\n";
        assert_eq!(frame_len(huge).unwrap_err().kind, ParseErrorKind::TooLarge);
        let endless = vec![b'a'; MAX_MESSAGE_SIZE + 10];
        assert_eq!(
            frame_len(&endless).unwrap_err().kind,
            ParseErrorKind::TooLarge
        );
        // bare LF framing is tolerated like the parser does
        assert_eq!(
            frame_len(b"X sip:a SIP/2.0\nl: 0\n\n").unwrap(),
            Some((0, 22))
        );
    }
}
