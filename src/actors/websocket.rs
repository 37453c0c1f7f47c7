//! The WebSocket side of SIP over WebSocket (RFC 7118): the opening
//! handshake, which must offer the `sip` subprotocol and come from an
//! allowed Origin, and the writer task that sends each SIP message as one
//! frame and pings an idle peer.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::actors::transport::StreamEvent;
use crate::config::WsListen;

/// How often an idle WebSocket is pinged, so NATs and proxies on the way
/// keep it open and a dead browser is noticed.
pub const PING_EVERY: Duration = Duration::from_secs(30);

/// Why a WebSocket handshake was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The client did not offer `Sec-WebSocket-Protocol: sip`.
    NoSipSubprotocol,
    /// Its `Origin` is not in `allowed_origins`.
    Origin(String),
}

impl Refusal {
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NoSipSubprotocol => "no_sip_subprotocol",
            Refusal::Origin(_) => "origin",
        }
    }
}

/// Checks an opening handshake (RFC 7118 §4.1, RFC 6455 §10.2).
pub fn check_request(request: &Request, listen: &WsListen) -> Result<(), Refusal> {
    let offers_sip = request
        .headers()
        .get_all("Sec-WebSocket-Protocol")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("sip"));
    if !offers_sip {
        return Err(Refusal::NoSipSubprotocol);
    }
    let origin = request
        .headers()
        .get("Origin")
        .and_then(|value| value.to_str().ok());
    if !listen.allows_origin(origin) {
        return Err(Refusal::Origin(origin.unwrap_or("none").to_string()));
    }
    Ok(())
}

/// Upgrades an accepted stream. The error says why it was refused, or
/// that the handshake broke.
// The callback's error type is tungstenite's HTTP response.
#[allow(clippy::result_large_err)]
pub async fn accept<S>(stream: S, listen: Arc<WsListen>) -> Result<WebSocketStream<S>, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut refused = None;
    let callback = |request: &Request, mut response: Response| match check_request(request, &listen)
    {
        Ok(()) => {
            response
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("sip"));
            Ok(response)
        }
        Err(refusal) => {
            let status = match refusal {
                Refusal::NoSipSubprotocol => StatusCode::BAD_REQUEST,
                Refusal::Origin(_) => StatusCode::FORBIDDEN,
            };
            let mut reply = ErrorResponse::new(Some(format!("{refusal:?}")));
            *reply.status_mut() = status;
            refused = Some(refusal);
            Err(reply)
        }
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(crate::actors::transport::MAX_MESSAGE))
        .max_frame_size(Some(crate::actors::transport::MAX_MESSAGE));
    let result =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await;
    match (result, refused) {
        (Ok(ws), _) => Ok(ws),
        (Err(_), Some(refusal)) => Err(format!("refused: {refusal:?}")),
        (Err(error), None) => Err(error.to_string()),
    }
}

/// The SIP messages arriving on a WebSocket, one per data frame; control
/// frames are handled below (pongs are sent as the stream is read).
pub fn messages(
    stream: impl Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>,
) -> impl Stream<Item = io::Result<StreamEvent>> {
    stream.filter_map(|frame| async move {
        match frame {
            Ok(Message::Text(text)) => Some(Ok(StreamEvent::Message(Bytes::from(text)))),
            Ok(Message::Binary(bytes)) => Some(Ok(StreamEvent::Message(bytes))),
            // The answer to our ping: the peer is alive (it keeps the
            // connection's idle timer from closing it).
            Ok(Message::Pong(_)) => Some(Ok(StreamEvent::Keepalive(Default::default()))),
            Ok(_) => None,
            Err(error) => Some(Err(io::Error::other(error))),
        }
    })
}

/// Writes each message as one frame (text when it is UTF-8, as browsers
/// expect), pings every [`PING_EVERY`], and closes the socket when the
/// queue ends. Returns the first write error.
pub async fn write_frames<S>(
    mut sink: futures_util::stream::SplitSink<WebSocketStream<S>, Message>,
    mut queue: tokio::sync::mpsc::UnboundedReceiver<Bytes>,
    unwritten: Arc<AtomicUsize>,
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            next = queue.recv() => {
                let Some(bytes) = next else { break };
                let len = bytes.len();
                let frame = match std::str::from_utf8(&bytes) {
                    Ok(_) => Message::Text(bytes.try_into().map_err(|_| "not UTF-8".to_string())?),
                    Err(_) => Message::Binary(bytes),
                };
                sink.send(frame).await.map_err(|e| e.to_string())?;
                unwritten.fetch_sub(len, Ordering::Relaxed);
            }
            _ = ping.tick() => {
                sink.send(Message::Ping(Bytes::new())).await.map_err(|e| e.to_string())?;
            }
        }
    }
    let _ = sink.close().await;
    Ok(())
}
