//! The one error type of the SIP layer. It carries enough for the proxy to
//! decide what to answer (`kind`), a human reason for the 400 reason phrase or
//! the log line, and, when the framing parsed but validation failed, the
//! message itself so a response can be built from whatever headers exist.

use std::fmt;

use super::message::Message;

/// What went wrong, coarse enough to pick a response code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParseErrorKind {
    /// Only CRLF / whitespace: a NAT keepalive, to be ignored silently.
    Keepalive,
    /// Larger than [`super::MAX_MESSAGE_SIZE`].
    TooLarge,
    /// More than [`super::MAX_HEADERS`] header lines.
    TooManyHeaders,
    /// Request or status line malformed.
    BadStartLine,
    /// A protocol version other than SIP/2.0 (answer 505).
    BadVersion,
    /// A header line that is not `name: value`, or headers never terminated.
    BadHeader,
    /// Content-Length negative, non-numeric, conflicting, missing on a stream,
    /// or larger than the bytes received.
    BadContentLength,
    /// A header every request/response must carry is absent.
    MissingHeader,
    /// A header that must appear once (Call-ID, CSeq, From, To, Max-Forwards)
    /// appears several times.
    DuplicateHeader,
    /// CSeq not `number method`, number too large, or method mismatch.
    BadCSeq,
    /// Max-Forwards not a number in 0..=255.
    BadMaxForwards,
    /// Request-URI malformed (whitespace, `<>`, escaped headers...).
    BadRequestUri,
    /// A URI that does not parse.
    BadUri,
    /// From / To / Contact value that is not a valid name-addr or addr-spec.
    BadAddress,
    /// A Via value that does not parse.
    BadVia,
}

impl ParseErrorKind {
    /// The status code a server should answer a request with this error.
    pub fn status_code(&self) -> u16 {
        match self {
            ParseErrorKind::BadVersion => 505,
            ParseErrorKind::TooLarge => 513,
            _ => 400,
        }
    }
}

/// A parse or validation failure, with an optional partially parsed message.
#[derive(Debug)]
pub struct ParseError {
    pub kind: ParseErrorKind,
    pub reason: String,
    /// Set when the start line and headers were framed but the message failed
    /// validation: build the error response from it.
    pub partial: Option<Box<Message>>,
}

impl ParseError {
    pub(crate) fn new(kind: ParseErrorKind, reason: impl Into<String>) -> Self {
        ParseError {
            kind,
            reason: reason.into(),
            partial: None,
        }
    }

    pub(crate) fn with_partial(mut self, msg: Message) -> Self {
        self.partial = Some(Box::new(msg));
        self
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for ParseError {}
