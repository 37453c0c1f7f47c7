//! The SIP message layer: a zero-copy parser, URI / address / Via views, an
//! edit-list rewriter for forwarding, builders for proxy-originated messages,
//! and TCP stream framing. No actors and no async: everything here is plain
//! functions over bytes, so it is cheap to test and to fuzz.
//!
//! The parser indexes header spans over the original [`bytes::Bytes`]; nothing
//! is copied until a message is rewritten for forwarding, and headers the proxy
//! does not understand are forwarded byte for byte.

pub mod addr;
pub mod build;
pub mod edit;
pub mod error;
pub mod framing;
pub mod message;
pub mod params;
pub mod parse;
#[cfg(test)]
mod proptests;
pub mod protocol;
pub mod uri;
pub mod via;

pub use addr::{split_values, NameAddr};
pub use edit::Rewriter;
pub use error::{ParseError, ParseErrorKind};
pub use message::{Header, HeaderName, Message, Method};
pub use parse::parse;
pub use protocol::Protocol;
pub use uri::Uri;
pub use via::Via;

/// Largest message we accept on any transport (UDP datagrams and TCP frames).
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024;
/// Most header lines we index in one message; more is treated as an attack.
pub const MAX_HEADERS: usize = 256;
