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
use crate::config::ListenAddr;
use crate::proxy::local::Listener;
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

/// The way back to a peer: the UDP socket (by its listener index) a
/// datagram arrived on, or the TCP connection it arrived over with the
/// listener that connection belongs to.
#[derive(Clone, Debug)]
pub enum Flow {
    Udp(usize),
    Tcp(Addr<TcpConnection>, usize),
}

impl Flow {
    pub fn protocol(&self) -> Protocol {
        match self {
            Flow::Udp(_) => Protocol::Udp,
            Flow::Tcp(..) => Protocol::Tcp,
        }
    }

    /// The listener (see [`Transports::listeners`]) the message came in on.
    pub fn listener(&self) -> usize {
        match self {
            Flow::Udp(index) | Flow::Tcp(_, index) => *index,
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

    /// Tells every shard that the TCP connection to `peer` failed or closed,
    /// so requests waiting on it fail over (rare: no per-message cost).
    pub fn broadcast_link_failure(&self, peer: SocketAddr) {
        for shard in self.shards.iter() {
            shard.do_send(crate::actors::transaction::LinkFailed { peer });
        }
    }

    /// Hands a probe to the shard that will receive its responses (the one
    /// its Call-ID hashes to).
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
}

/// Everything a shard needs to put bytes on the wire: the UDP sockets, the pool
/// of TCP connections (inbound and outbound, reused by peer address), and the
/// router for messages that arrive on connections we open.
#[derive(Clone)]
pub struct Transports {
    udp: Arc<[UdpOut]>,
    /// Every listener: the UDP sockets (same index), then the TCP ones.
    listeners: Arc<[Listener]>,
    tcp_pool: Arc<Mutex<HashMap<SocketAddr, Addr<TcpConnection>>>>,
    router: Arc<OnceLock<Router>>,
}

impl Transports {
    /// Binds every UDP socket (with a large receive buffer: drops there are
    /// the first limit under load) and every TCP listener, a wildcard
    /// address once per local address of its family, so that each socket
    /// has a concrete address to name in Via and Record-Route (as Kamailio
    /// does; see README "Multi-homed hosts"). `advertise` names every
    /// listener that has no name of its own.
    pub fn bind(
        udp: &[ListenAddr],
        tcp: &[ListenAddr],
        advertise: Option<&str>,
    ) -> io::Result<(Self, Vec<UdpSocket>, Vec<std::net::TcpListener>)> {
        let mut outs = Vec::new();
        let mut receivers = Vec::new();
        let mut listeners = Vec::new();
        for listen in udp {
            let name = listen.advertise.as_deref().or(advertise);
            for addr in expand_wildcard(listen.address)? {
                let socket = bind_udp(addr).map_err(|e| with_address(e, "UDP", addr))?;
                let local = socket.local_addr()?;
                let receiver = socket.try_clone()?;
                receiver.set_nonblocking(true)?;
                receivers.push(UdpSocket::from_std(receiver)?);
                outs.push(UdpOut { socket });
                listeners.push(Listener::new(Protocol::Udp, local, name));
            }
        }
        let mut tcp_sockets = Vec::new();
        for listen in tcp {
            let name = listen.advertise.as_deref().or(advertise);
            for addr in expand_wildcard(listen.address)? {
                let socket = bind_tcp(addr).map_err(|e| with_address(e, "TCP", addr))?;
                let local = socket.local_addr()?;
                tcp_sockets.push(socket);
                listeners.push(Listener::new(Protocol::Tcp, local, name));
            }
        }
        Ok((
            Transports {
                udp: outs.into(),
                listeners: listeners.into(),
                tcp_pool: Arc::default(),
                router: Arc::default(),
            },
            receivers,
            tcp_sockets,
        ))
    }

    /// Every socket, UDP first (a UDP flow's index is its listener's).
    pub fn listeners(&self) -> &[Listener] {
        &self.listeners
    }

    /// The index of the first TCP listener, which the first TCP socket
    /// [`Transports::bind`] returned belongs to.
    pub fn first_tcp_listener(&self) -> usize {
        self.udp.len()
    }

    /// The TCP listener a connection with local address `local` belongs to:
    /// the one bound there, else the first on that IP, else the first.
    fn tcp_listener_of(&self, local: Option<SocketAddr>) -> usize {
        let tcp = || {
            self.listeners
                .iter()
                .enumerate()
                .filter(|(_, l)| l.protocol == Protocol::Tcp)
        };
        local
            .and_then(|local| {
                tcp()
                    .find(|(_, l)| l.local == local)
                    .or_else(|| tcp().find(|(_, l)| l.local.ip() == local.ip()))
            })
            .or_else(|| tcp().next())
            .map_or(0, |(index, _)| index)
    }

    pub fn set_router(&self, router: Router) {
        let _ = self.router.set(router);
    }

    pub fn router(&self) -> Option<&Router> {
        self.router.get()
    }

    /// Every address we listen on.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(|l| l.local).collect()
    }

    pub fn has_protocol(&self, protocol: Protocol) -> bool {
        self.listeners.iter().any(|l| l.protocol == protocol)
    }

    /// Sends back over the flow a message arrived on.
    /// Over TCP, `dest` is where to connect when the request's connection
    /// is gone (RFC 3261 §18.2.2: its source IP and the Via's sent-by port).
    pub fn reply(&self, flow: &Flow, dest: SocketAddr, bytes: Bytes) {
        match flow {
            Flow::Udp(index) => self.send_udp(*index, dest, &bytes),
            Flow::Tcp(conn, _) if conn.connected() => conn.do_send(SendBytes(bytes)),
            Flow::Tcp(..) => self.send_tcp(dest, bytes),
        }
    }

    /// Sends to a peer over `protocol`, reusing an open TCP connection to it or
    /// opening one.
    /// Over UDP it leaves from listener `from`'s socket.
    pub fn send(&self, protocol: Protocol, from: usize, dest: SocketAddr, bytes: Bytes) {
        match protocol {
            Protocol::Udp => self.send_udp(from, dest, &bytes),
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

/// Which local address the kernel's routing table sends to an address from:
/// a UDP socket "connected" to it (no packet leaves) tells. Answers are kept,
/// so each destination costs one lookup; the engine asks only when more than
/// one listener could send.
pub fn route_lookup() -> crate::proxy::engine::RouteLookup {
    let known: Mutex<HashMap<std::net::IpAddr, Option<std::net::IpAddr>>> = Mutex::default();
    Arc::new(move |dest: std::net::IpAddr| {
        let mut known = known.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(local) = known.get(&dest) {
            return *local;
        }
        let unspecified: std::net::IpAddr = if dest.is_ipv4() {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        };
        let local = std::net::UdpSocket::bind((unspecified, 0))
            .and_then(|socket| {
                socket.connect((dest, 9))?;
                socket.local_addr()
            })
            .ok()
            .map(|addr| addr.ip());
        if known.len() >= 4096 {
            known.clear();
        }
        known.insert(dest, local);
        local
    })
}

/// The addresses a listen address stands for: itself, or for `0.0.0.0` and
/// `[::]` every local address of that family (IPv6 link-local ones left
/// out: they need a scope to be reached).
fn expand_wildcard(addr: SocketAddr) -> io::Result<Vec<SocketAddr>> {
    if !addr.ip().is_unspecified() {
        return Ok(vec![addr]);
    }
    let mut expanded: Vec<SocketAddr> = local_addresses()?
        .into_iter()
        .filter(|ip| ip.is_ipv4() == addr.is_ipv4())
        .filter(|ip| match ip {
            std::net::IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
            std::net::IpAddr::V4(_) => true,
        })
        .map(|ip| SocketAddr::new(ip, addr.port()))
        .collect();
    expanded.sort();
    expanded.dedup();
    if expanded.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            format!("{addr}: no local address of that family to bind"),
        ));
    }
    Ok(expanded)
}

/// Every address of every interface that is up (getifaddrs).
fn local_addresses() -> io::Result<Vec<std::net::IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below; we only
    // read it in between.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut found = Vec::new();
    let mut entry = head;
    while !entry.is_null() {
        // SAFETY: `entry` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*entry };
        entry = ifa.ifa_next;
        let up = ifa.ifa_flags & (libc::IFF_UP as libc::c_uint) != 0;
        if ifa.ifa_addr.is_null() || !up {
            continue;
        }
        // SAFETY: ifa_addr points at a sockaddr whose family says its type.
        let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        if family == libc::AF_INET {
            let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
            found.push(std::net::IpAddr::from(
                u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
            ));
        } else if family == libc::AF_INET6 {
            let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
            found.push(std::net::IpAddr::from(sin6.sin6_addr.s6_addr));
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(found)
}

fn with_address(error: io::Error, transport: &str, addr: SocketAddr) -> io::Error {
    io::Error::new(
        error.kind(),
        format!("cannot bind {transport} {addr}: {error}"),
    )
}

fn bind_tcp(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    let _ = socket.set_reuse_address(true);
    if addr.is_ipv6() {
        // `[::]` is expanded per address: no IPv4 through IPv6 sockets.
        let _ = socket.set_only_v6(true);
    }
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

fn bind_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(true);
    }
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
    /// Its index in [`Transports::listeners`].
    index: usize,
    transports: Transports,
}

impl TcpAcceptor {
    pub fn new(listener: TcpListener, index: usize, transports: Transports) -> Self {
        TcpAcceptor {
            listener: Some(listener),
            index,
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
                let index = self.index;
                let conn = TcpConnection::create(|ctx| {
                    let mut conn = TcpConnection::new(peer, None, transports);
                    conn.listener = index;
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
    /// The listener its messages count as arriving on.
    listener: usize,
}

impl TcpConnection {
    fn new(peer: SocketAddr, connect_to: Option<SocketAddr>, transports: Transports) -> Self {
        TcpConnection {
            peer,
            connect_to,
            writer: None,
            pending: Vec::new(),
            listener: transports.tcp_listener_of(None),
            transports,
        }
    }

    /// Starts an outbound connection on the current arbiter; messages sent to it
    /// wait in its mailbox until the connect completes.
    fn connect(dest: SocketAddr, transports: Transports) -> Addr<Self> {
        TcpConnection::new(dest, Some(dest), transports).start()
    }

    fn attach(&mut self, stream: TcpStream, ctx: &mut Context<Self>) {
        if self.connect_to.is_some() {
            self.listener = self.transports.tcp_listener_of(stream.local_addr().ok());
        }
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
                let flow = Flow::Tcp(ctx.address(), self.listener);
                accept_bytes(bytes, self.peer, flow, &self.transports);
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
