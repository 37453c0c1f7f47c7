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
    if data.len() < total {
        return Ok(None);
    }
    Ok(Some((skip, total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] =
        b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nl: 5\r\n\r\nhello";

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
