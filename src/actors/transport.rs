//! Transport actors: one per UDP socket, a TCP listener, and one per TCP
//! connection. They frame and parse bytes, answer what cannot be parsed, and hand
//! each message to the transaction shard that owns its Call-ID.
//!
//! Sending never goes through an actor for UDP: every shard holds a clone of the
//! socket (`Transports`) and writes to it directly, so a relay costs no hop.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context as TaskContext, Poll};

use actix::io::{WriteHandler, Writer};
use actix::prelude::*;
use bytes::{Buf, Bytes, BytesMut};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::codec::{Decoder, FramedRead};

use crate::actors::transaction::TransactionShard;
use crate::sip::{self, Message, ParseErrorKind};

/// Largest SIP message we accept on any transport (RFC 3261 §18.1.1 keeps UDP
/// below the MTU; TCP messages above this are refused rather than buffered).
pub const MAX_MESSAGE: usize = 65_535;

pub use crate::sip::Protocol;

/// Messages waiting for one transaction shard, beyond which new ones are
/// dropped (about a second of traffic at the measured peak rate).
const MAX_QUEUED: i64 = 20_000;

/// Bounds the messages queued for each transaction shard. Each shard has
/// its own count, taken when a message is sent to it and given back when it
/// has handled it, so a stuck or dead shard never holds the others' share.
pub struct IngressGate {
    queued: Box<[AtomicI64]>,
    limit: i64,
    /// A dead shard is reported once, not per message.
    reported_gone: Box<[AtomicBool]>,
}

impl IngressGate {
    pub fn new(shards: usize) -> Self {
        IngressGate::with_limit(shards, MAX_QUEUED)
    }

    fn with_limit(shards: usize, limit: i64) -> Self {
        IngressGate {
            queued: (0..shards).map(|_| AtomicI64::new(0)).collect(),
            limit,
            reported_gone: (0..shards).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    /// Takes a place in SHARD's queue; false when it is full.
    pub fn admit(&self, shard: usize) -> bool {
        let Some(queued) = self.queued.get(shard) else {
            return false;
        };
        if queued.fetch_add(1, Ordering::Relaxed) >= self.limit {
            queued.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// SHARD handled a message it was admitted for.
    pub fn release(&self, shard: usize) {
        if let Some(queued) = self.queued.get(shard) {
            queued.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// SHARD's mailbox is closed: its messages are dropped, and logged once.
    fn shard_gone(&self, shard: usize) {
        crate::metrics::get().ingress_dropped.inc();
        if let Some(reported) = self.reported_gone.get(shard) {
            if !reported.swap(true, Ordering::Relaxed) {
                tracing::error!(shard, "transaction shard stopped; its messages are dropped");
            }
        }
    }
}

/// The way back to a peer: the UDP socket a datagram arrived on, or the TCP
/// connection it arrived over.
#[derive(Clone, Debug)]
pub enum Flow {
    Udp(usize),
    Tcp(Addr<TcpConnection>),
}

impl Flow {
    pub fn protocol(&self) -> Protocol {
        match self {
            Flow::Udp(_) => Protocol::Udp,
            Flow::Tcp(_) => Protocol::Tcp,
        }
    }
}

/// A parsed message for a transaction shard.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Inbound {
    pub msg: Message,
    pub source: SocketAddr,
    pub flow: Flow,
}

/// Spreads inbound messages over the transaction shards by Call-ID, so that
/// every transaction of a dialog lives on one shard.
#[derive(Clone)]
pub struct Router {
    shards: Arc<[Addr<TransactionShard>]>,
    ingress: Arc<IngressGate>,
}

impl Router {
    pub fn new(shards: Vec<Addr<TransactionShard>>, ingress: Arc<IngressGate>) -> Self {
        Router {
            shards: shards.into(),
            ingress,
        }
    }

    pub fn dispatch(&self, msg: Message, source: SocketAddr, flow: Flow) {
        let index = self.shard_of(msg.call_id().unwrap_or(""));
        let shard = &self.shards[index];
        if !shard.connected() {
            self.ingress.shard_gone(index);
            return;
        }
        // do_send ignores mailbox capacity, so ingress is bounded here, per
        // shard: past the limit a burst is shed (UDP peers retransmit)
        // instead of growing memory without end.
        if !self.ingress.admit(index) {
            crate::metrics::get().ingress_dropped.inc();
            tracing::debug!(%source, shard = index, "transaction shard overloaded; message dropped");
            return;
        }
        crate::metrics::actors().transaction.enqueued();
        shard.do_send(Inbound { msg, source, flow });
    }

    /// Hands a probe to the shard that will receive its responses (the one
    /// its Call-ID hashes to).
    /// Tells every shard that the TCP connection to `peer` failed or closed,
    /// so requests waiting on it fail over (rare: no per-message cost).
    pub fn broadcast_link_failure(&self, peer: SocketAddr) {
        for shard in self.shards.iter() {
            shard.do_send(crate::actors::transaction::LinkFailed { peer });
        }
    }

    pub fn dispatch_probe(&self, probe: crate::actors::transaction::SendProbe) {
        let index = self.shard_of(&probe.call_id);
        self.shards[index].do_send(probe);
    }

    fn shard_of(&self, call_id: &str) -> usize {
        match self.shards.len() {
            1 => 0,
            n => (xxhash_rust::xxh3::xxh3_64(call_id.as_bytes()) % n as u64) as usize,
        }
    }
}

/// A local UDP socket, as used for sending.
struct UdpOut {
    socket: std::net::UdpSocket,
    local: SocketAddr,
}

/// Everything a shard needs to put bytes on the wire: the UDP sockets, the pool
/// of TCP connections (inbound and outbound, reused by peer address), and the
/// router for messages that arrive on connections we open.
#[derive(Clone)]
pub struct Transports {
    udp: Arc<[UdpOut]>,
    tcp_listen: Arc<[SocketAddr]>,
    tcp_pool: Arc<Mutex<HashMap<SocketAddr, Addr<TcpConnection>>>>,
    router: Arc<OnceLock<Router>>,
}

impl Transports {
    /// Binds every UDP socket (with a large receive buffer: drops there are the
    /// first limit under load) and remembers the TCP listen addresses.
    pub fn bind(udp: &[SocketAddr], tcp: &[SocketAddr]) -> io::Result<(Self, Vec<UdpSocket>)> {
        let mut outs = Vec::with_capacity(udp.len());
        let mut receivers = Vec::with_capacity(udp.len());
        for addr in udp {
            let socket = bind_udp(*addr)?;
            let local = socket.local_addr()?;
            let receiver = socket.try_clone()?;
            receiver.set_nonblocking(true)?;
            receivers.push(UdpSocket::from_std(receiver)?);
            outs.push(UdpOut { socket, local });
        }
        Ok((
            Transports {
                udp: outs.into(),
                tcp_listen: tcp.to_vec().into(),
                tcp_pool: Arc::default(),
                router: Arc::default(),
            },
            receivers,
        ))
    }

    pub fn set_router(&self, router: Router) {
        let _ = self.router.set(router);
    }

    pub fn router(&self) -> Option<&Router> {
        self.router.get()
    }

    /// The local address of UDP socket `index` (or of the first TCP listener
    /// when there is no UDP socket).
    pub fn local_addr(&self, protocol: Protocol) -> Option<SocketAddr> {
        match protocol {
            Protocol::Udp => self.udp.first().map(|u| u.local),
            Protocol::Tcp => self.tcp_listen.first().copied(),
        }
        .or_else(|| self.udp.first().map(|u| u.local))
        .or_else(|| self.tcp_listen.first().copied())
    }

    /// Every address we listen on, for recognising our own Via and Route entries.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        let mut all: Vec<SocketAddr> = self.udp.iter().map(|u| u.local).collect();
        all.extend(self.tcp_listen.iter().copied());
        all
    }

    pub fn has_protocol(&self, protocol: Protocol) -> bool {
        match protocol {
            Protocol::Udp => !self.udp.is_empty(),
            Protocol::Tcp => !self.tcp_listen.is_empty(),
        }
    }

    /// Sends back over the flow a message arrived on.
    /// Over TCP, `dest` is where to connect when the request's connection
    /// is gone (RFC 3261 §18.2.2: its source IP and the Via's sent-by port).
    pub fn reply(&self, flow: &Flow, dest: SocketAddr, bytes: Bytes) {
        match flow {
            Flow::Udp(index) => self.send_udp(*index, dest, &bytes),
            Flow::Tcp(conn) if conn.connected() => conn.do_send(SendBytes(bytes)),
            Flow::Tcp(_) => self.send_tcp(dest, bytes),
        }
    }

    /// Sends to a peer over `protocol`, reusing an open TCP connection to it or
    /// opening one.
    pub fn send(&self, protocol: Protocol, dest: SocketAddr, bytes: Bytes) {
        match protocol {
            Protocol::Udp => self.send_udp(0, dest, &bytes),
            Protocol::Tcp => self.send_tcp(dest, bytes),
        }
    }

    fn send_udp(&self, index: usize, dest: SocketAddr, bytes: &[u8]) {
        let Some(out) = self.udp.get(index).or_else(|| self.udp.first()) else {
            tracing::warn!(%dest, "no UDP socket to send on; message dropped");
            return;
        };
        if let Err(e) = out.socket.send_to(bytes, dest) {
            tracing::warn!(%dest, error = %e, "UDP send failed; message dropped");
        }
    }

    fn send_tcp(&self, dest: SocketAddr, bytes: Bytes) {
        let mut pool = match self.tcp_pool.lock() {
            Ok(pool) => pool,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(conn) = pool.get(&dest) {
            if conn.connected() {
                conn.do_send(SendBytes(bytes));
                return;
            }
        }
        let conn = TcpConnection::connect(dest, self.clone());
        conn.do_send(SendBytes(bytes));
        pool.insert(dest, conn);
    }

    fn register_tcp(&self, peer: SocketAddr, conn: Addr<TcpConnection>) {
        if let Ok(mut pool) = self.tcp_pool.lock() {
            pool.insert(peer, conn);
        }
    }

    fn forget_tcp(&self, peer: SocketAddr) {
        if let Ok(mut pool) = self.tcp_pool.lock() {
            if pool.get(&peer).is_some_and(|c| !c.connected()) {
                pool.remove(&peer);
            }
        }
    }
}

fn bind_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Parses one framed message and hands it on, or answers/drops what is broken.
/// Shared by the UDP and TCP actors so both treat bad input the same way.
fn accept_bytes(bytes: Bytes, source: SocketAddr, flow: Flow, transports: &Transports) {
    if let Some(msg) = parse_or_answer(bytes, source, &flow, transports) {
        match transports.router.get() {
            Some(router) => router.dispatch(msg, source, flow),
            None => tracing::warn!(%source, "message before start-up finished; dropped"),
        }
    }
}

/// Parses one framed message. What does not parse is answered (400, or 505
/// for a bad version) when it is a readable request, else logged and
/// dropped; keepalives vanish silently.
pub fn parse_or_answer(
    bytes: Bytes,
    source: SocketAddr,
    flow: &Flow,
    transports: &Transports,
) -> Option<Message> {
    let err = match sip::parse(bytes) {
        Ok(msg) => return Some(msg),
        Err(err) => err,
    };
    if err.kind == ParseErrorKind::Keepalive {
        return None;
    }
    // Counted, and logged at debug only: a flood must not flood the log.
    crate::metrics::get()
        .malformed
        .get_or_create(&crate::metrics::TransportLabels {
            transport: flow.protocol().as_str(),
        })
        .inc();
    let answerable = err.partial.as_deref().filter(|m| m.is_request());
    match answerable {
        Some(partial) if partial.method() != Some(sip::Method::Ack) => {
            let (code, reason) = if err.kind == ParseErrorKind::BadVersion {
                (505, "Version Not Supported".to_string())
            } else {
                (400, format!("Bad Request ({})", err.reason))
            };
            tracing::debug!(%source, code, error = %err, "rejected malformed request");
            let reply = sip::build::response(partial, code, &reason, None, &[]);
            transports.reply(flow, source, Bytes::from(reply));
        }
        _ => tracing::debug!(%source, error = %err, "dropped malformed message"),
    }
    None
}

/// A datagram as received on UDP socket `socket`, or the socket's error.
pub struct Received {
    pub socket: usize,
    pub result: io::Result<(Bytes, SocketAddr)>,
}

impl Received {
    /// The datagram, unless it is an error or too large to be SIP (both are
    /// logged here, for every receiver alike).
    pub fn into_datagram(self) -> Option<(Bytes, SocketAddr)> {
        match self.result {
            Ok((bytes, source)) if bytes.len() > MAX_MESSAGE => {
                tracing::debug!(%source, len = bytes.len(), "dropped oversized datagram");
                None
            }
            Ok(datagram) => Some(datagram),
            // ICMP errors from earlier sends surface here; they are not fatal.
            Err(e) => {
                tracing::debug!(error = %e, "UDP receive error");
                None
            }
        }
    }
}

/// One UDP socket: receives datagrams and passes them to `accept_bytes`.
pub struct UdpTransport {
    index: usize,
    socket: Option<UdpSocket>,
    transports: Transports,
}

impl UdpTransport {
    pub fn new(index: usize, socket: UdpSocket, transports: Transports) -> Self {
        UdpTransport {
            index,
            socket: Some(socket),
            transports,
        }
    }
}

impl Actor for UdpTransport {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(socket) = self.socket.take() {
            ctx.add_stream(Datagrams::new(self.index, socket));
        }
    }
}

impl StreamHandler<Received> for UdpTransport {
    fn handle(&mut self, item: Received, _ctx: &mut Self::Context) {
        if let Some((bytes, source)) = item.into_datagram() {
            let _busy = crate::metrics::actors().udp.measure();
            accept_bytes(bytes, source, Flow::Udp(self.index), &self.transports);
        }
    }

    fn finished(&mut self, _ctx: &mut Self::Context) {
        tracing::error!(socket = self.index, "UDP receive stream ended");
    }
}

/// Datagrams from a socket as a stream. Each is copied once out of a reusable
/// scratch buffer into an exactly sized `Bytes`.
pub struct Datagrams {
    index: usize,
    socket: UdpSocket,
    scratch: Vec<u8>,
}

impl Datagrams {
    pub fn new(index: usize, socket: UdpSocket) -> Self {
        Datagrams {
            index,
            socket,
            scratch: vec![0; MAX_MESSAGE + 1],
        }
    }
}

impl futures_core::Stream for Datagrams {
    type Item = Received;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let mut buf = tokio::io::ReadBuf::new(&mut this.scratch);
        this.socket.poll_recv_from(cx, &mut buf).map(|result| {
            Some(Received {
                socket: this.index,
                result: result.map(|source| (Bytes::copy_from_slice(buf.filled()), source)),
            })
        })
    }
}

/// Accepts TCP connections and starts a `TcpConnection` actor for each.
pub struct TcpAcceptor {
    listener: Option<TcpListener>,
    transports: Transports,
}

impl TcpAcceptor {
    pub fn new(listener: TcpListener, transports: Transports) -> Self {
        TcpAcceptor {
            listener: Some(listener),
            transports,
        }
    }
}

impl Actor for TcpAcceptor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(listener) = self.listener.take() {
            ctx.add_stream(Incoming { listener });
        }
    }
}

struct Incoming {
    listener: TcpListener,
}

impl futures_core::Stream for Incoming {
    type Item = io::Result<(TcpStream, SocketAddr)>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        self.listener.poll_accept(cx).map(Some)
    }
}

impl StreamHandler<io::Result<(TcpStream, SocketAddr)>> for TcpAcceptor {
    fn handle(&mut self, item: io::Result<(TcpStream, SocketAddr)>, _ctx: &mut Self::Context) {
        match item {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let transports = self.transports.clone();
                let conn = TcpConnection::create(|ctx| {
                    let mut conn = TcpConnection::new(peer, None, transports);
                    conn.attach(stream, ctx);
                    conn
                });
                self.transports.register_tcp(peer, conn);
            }
            Err(e) => tracing::warn!(error = %e, "TCP accept failed"),
        }
    }

    fn finished(&mut self, _ctx: &mut Self::Context) {}
}

/// Bytes to write on a TCP connection.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SendBytes(pub Bytes);

/// One TCP connection, inbound or outbound. Reads are framed by Content-Length;
/// writes queue until an outbound connect completes.
pub struct TcpConnection {
    peer: SocketAddr,
    connect_to: Option<SocketAddr>,
    writer: Option<Writer<OwnedWriteHalf, io::Error>>,
    pending: Vec<Bytes>,
    transports: Transports,
}

impl TcpConnection {
    fn new(peer: SocketAddr, connect_to: Option<SocketAddr>, transports: Transports) -> Self {
        TcpConnection {
            peer,
            connect_to,
            writer: None,
            pending: Vec::new(),
            transports,
        }
    }

    /// Starts an outbound connection on the current arbiter; messages sent to it
    /// wait in its mailbox until the connect completes.
    fn connect(dest: SocketAddr, transports: Transports) -> Addr<Self> {
        TcpConnection::new(dest, Some(dest), transports).start()
    }

    fn attach(&mut self, stream: TcpStream, ctx: &mut Context<Self>) {
        let (read, write) = stream.into_split();
        ctx.add_stream(FramedRead::new(read, SipStreamCodec));
        let mut writer = Writer::new(write, ctx);
        for bytes in self.pending.drain(..) {
            writer.write(&bytes);
        }
        self.writer = Some(writer);
    }
}

impl Actor for TcpConnection {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let Some(dest) = self.connect_to else {
            return;
        };
        let connecting = async move {
            let stream =
                tokio::time::timeout(std::time::Duration::from_secs(5), TcpStream::connect(dest))
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
            let _ = stream.set_nodelay(true);
            Ok::<_, io::Error>(stream)
        };
        ctx.wait(
            connecting
                .into_actor(self)
                .map(move |result, conn, ctx| match result {
                    Ok(stream) => conn.attach(stream, ctx),
                    Err(e) => {
                        tracing::warn!(%dest, error = %e, "TCP connect failed; queued messages dropped");
                        ctx.stop();
                    }
                }),
        );
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        tracing::debug!(peer = %self.peer, "TCP connection closed");
        self.transports.forget_tcp(self.peer);
        // An outbound connection that failed to connect, was reset or was
        // closed leaves whatever was sent on it unanswered.
        if self.connect_to.is_some() {
            if let Some(router) = self.transports.router.get() {
                router.broadcast_link_failure(self.peer);
            }
        }
    }
}

impl Handler<SendBytes> for TcpConnection {
    type Result = ();

    fn handle(&mut self, msg: SendBytes, _ctx: &mut Self::Context) {
        match &mut self.writer {
            Some(writer) => writer.write(&msg.0),
            None => self.pending.push(msg.0),
        }
    }
}

impl WriteHandler<io::Error> for TcpConnection {
    fn error(&mut self, err: io::Error, _ctx: &mut Self::Context) -> Running {
        tracing::debug!(peer = %self.peer, error = %err, "TCP write failed");
        Running::Stop
    }
}

impl StreamHandler<io::Result<Bytes>> for TcpConnection {
    fn handle(&mut self, item: io::Result<Bytes>, ctx: &mut Self::Context) {
        match item {
            Ok(bytes) => {
                let _busy = crate::metrics::actors().tcp.measure();
                accept_bytes(bytes, self.peer, Flow::Tcp(ctx.address()), &self.transports);
            }
            Err(e) => {
                tracing::debug!(peer = %self.peer, error = %e, "closing TCP connection after framing error");
                ctx.stop();
            }
        }
    }
}

/// Frames SIP messages on a byte stream by Content-Length (RFC 3261 §18.3).
struct SipStreamCodec;

impl Decoder for SipStreamCodec {
    type Item = Bytes;
    type Error = io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> io::Result<Option<Bytes>> {
        match sip::framing::frame_len(buf) {
            Ok(Some((skip, len))) => {
                if len > MAX_MESSAGE {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("message of {len} bytes exceeds {MAX_MESSAGE}"),
                    ));
                }
                buf.advance(skip);
                if buf.len() < len {
                    buf.reserve(len - buf.len());
                    return Ok(None);
                }
                Ok(Some(buf.split_to(len).freeze()))
            }
            Ok(None) if buf.len() > MAX_MESSAGE => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "header section exceeds 64 KiB",
            )),
            Ok(None) => Ok(None),
            Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::IngressGate;

    #[test]
    fn a_shard_that_never_drains_does_not_block_the_others() {
        let gate = IngressGate::with_limit(2, 3);
        // Shard 0 is stuck: it takes messages and never handles them.
        let admitted = (0..10).filter(|_| gate.admit(0)).count();
        assert_eq!(admitted, 3, "shard 0 is bounded");
        // Shard 1 goes on for ever, taking and handling.
        for _ in 0..100_000 {
            assert!(gate.admit(1), "shard 1 was starved by shard 0");
            gate.release(1);
        }
        // Once shard 0 handles one message, it takes one more.
        gate.release(0);
        assert!(gate.admit(0));
        assert!(!gate.admit(0));
    }
}
