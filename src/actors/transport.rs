//! Transport actors: one per UDP socket, one per TCP or TLS listener, and one
//! per stream connection (TCP, or TLS over TCP). They frame and parse bytes,
//! answer what cannot be parsed, and hand each message to the transaction
//! shard that owns its Call-ID.
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

use actix::prelude::*;
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::codec::{Decoder, FramedRead};

use crate::actors::tls::Tls;
use crate::actors::transaction::TransactionShard;
use crate::config::{Listen, TcpLimits, WsListen};
use crate::logging::Throttle;
use crate::proxy::forward::Hop;
use crate::proxy::local::Listener;
use crate::security::{Channel, Verdict};
use crate::sip::{self, Message, ParseErrorKind};

/// Largest SIP message we accept on any transport (RFC 3261 §18.1.1 keeps UDP
/// below the MTU; TCP messages above this are refused rather than buffered).
pub const MAX_MESSAGE: usize = 65_535;

pub use crate::sip::Protocol;

/// Messages waiting for one transaction shard, beyond which new ones are
/// dropped (about a second of traffic at the measured peak rate).
const MAX_QUEUED: i64 = 20_000;
/// Places past [`MAX_QUEUED`] kept for trusted peers and gateway
/// destinations, whose messages go first when strangers fill a queue.
const PRIORITY_RESERVE: i64 = 5_000;

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

    /// Takes a place in SHARD's queue; false when it is full. A message
    /// from a `priority` source (asked only then) may take one of the
    /// places kept for them.
    pub fn admit(&self, shard: usize, priority: impl FnOnce() -> bool) -> bool {
        let Some(queued) = self.queued.get(shard) else {
            return false;
        };
        let before = queued.fetch_add(1, Ordering::Relaxed);
        if before < self.limit
            || (before < self.limit + self.limit.min(PRIORITY_RESERVE) && priority())
        {
            return true;
        }
        queued.fetch_sub(1, Ordering::Relaxed);
        false
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
/// datagram arrived on, or the connection (TCP, TLS, WS or WSS) it arrived
/// over with the listener that connection belongs to.
#[derive(Clone, Debug)]
pub enum Flow {
    Udp(usize),
    Stream(Addr<TcpConnection>, usize, Protocol),
}

impl Flow {
    pub fn protocol(&self) -> Protocol {
        match self {
            Flow::Udp(_) => Protocol::Udp,
            Flow::Stream(_, _, protocol) => *protocol,
        }
    }

    /// Datagrams can be forged; a stream's peer proved its address.
    pub fn channel(&self) -> Channel {
        match self {
            Flow::Udp(_) => Channel::Datagram,
            Flow::Stream(..) => Channel::Stream,
        }
    }

    /// The listener (see [`Transports::listeners`]) the message came in on.
    pub fn listener(&self) -> usize {
        match self {
            Flow::Udp(index) | Flow::Stream(_, index, _) => *index,
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
    /// Hands every shard its share of a reload's settings.
    pub fn reconfigure(&self, mut change: crate::actors::transaction::Reconfigure) {
        let shards = self.shards.len().max(1);
        change.engine.max_transactions = (change.engine.max_transactions / shards).max(1);
        change.engine.ended_bytes /= shards;
        for shard in self.shards.iter() {
            shard.do_send(change.clone());
        }
    }

    pub fn new(shards: Vec<Addr<TransactionShard>>, ingress: Arc<IngressGate>) -> Self {
        Router {
            shards: shards.into(),
            ingress,
        }
    }

    /// Hands a message to its shard. `priority` says, when the shard's queue
    /// is full, whether the source is one whose messages go first.
    pub fn dispatch(
        &self,
        msg: Message,
        source: SocketAddr,
        flow: Flow,
        priority: impl FnOnce() -> bool,
    ) {
        let index = self.shard_of(msg.call_id().unwrap_or(""));
        let shard = &self.shards[index];
        if !shard.connected() {
            self.ingress.shard_gone(index);
            return;
        }
        // do_send ignores mailbox capacity, so ingress is bounded here, per
        // shard: past the limit a burst is shed (UDP peers retransmit)
        // instead of growing memory without end.
        if !self.ingress.admit(index, priority) {
            crate::metrics::get().ingress_dropped.inc();
            tracing::debug!(%source, shard = index, "transaction shard overloaded; message dropped");
            return;
        }
        crate::metrics::actors().transaction.enqueued();
        shard.do_send(Inbound { msg, source, flow });
    }

    /// Tells every shard that the stream connection to `peer` failed or
    /// closed, so requests waiting on it fail over (rare: no per-message
    /// cost).
    pub fn broadcast_link_failure(&self, hop: &Hop) {
        for shard in self.shards.iter() {
            shard.do_send(crate::actors::transaction::LinkFailed { hop: hop.clone() });
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
/// of stream connections (inbound and outbound, reused by protocol and peer
/// address), and the router for messages that arrive on connections we open.
#[derive(Clone)]
pub struct Transports {
    udp: Arc<[UdpOut]>,
    /// Every listener: the UDP sockets (same index), then the TCP and TLS ones.
    listeners: Arc<[Listener]>,
    tcp_pool: Arc<Mutex<StreamPool>>,
    /// Certificates and verification for TLS, when configured.
    tls: Option<Arc<Tls>>,
    router: Arc<OnceLock<Router>>,
    /// Who may talk to us (rate limits, bans, scanners).
    edge: Arc<crate::actors::edge::Edge>,
    /// `limits.tcp`, swapped by a reload.
    tcp_limits: Arc<arc_swap::ArcSwap<TcpLimits>>,
    /// Open TCP connections, in all and per peer IP.
    tcp_count: Arc<Mutex<TcpCount>>,
    /// Send failures toward an address are a peer's to cause (a
    /// Request-URI that does not answer): their warnings are throttled.
    send_warnings: Arc<SendWarnings>,
    /// `capture.hep`: a copy of every message sent and received.
    capture: Option<Arc<crate::actors::capture::Capture>>,
}

/// One throttle per kind of send failure.
struct SendWarnings {
    udp: Throttle,
    connect: Throttle,
    handshake: Throttle,
}

impl Default for SendWarnings {
    fn default() -> Self {
        let every = || Throttle::new(std::time::Duration::from_secs(1));
        SendWarnings {
            udp: every(),
            connect: every(),
            handshake: every(),
        }
    }
}

/// Counts of open TCP connections, for `limits.tcp`.
#[derive(Default)]
struct TcpCount {
    total: usize,
    per_ip: HashMap<std::net::IpAddr, usize>,
}

/// Open stream connections by protocol and peer address.
type StreamPool = HashMap<PoolKey, Addr<TcpConnection>>;

/// A pooled connection's protocol and peer, and for one we opened over TLS
/// the name (or address) its certificate was verified for: a connection
/// is reused only for what it was verified for, and one a peer opened to
/// us (`None`) never stands for a verified TLS hop.
type PoolKey = (Protocol, SocketAddr, Option<Arc<str>>);

/// The key of the connection we open for `hop`.
fn outbound_key(hop: &Hop) -> PoolKey {
    let verified = match hop.protocol {
        Protocol::Tls => Some(
            hop.tls_name
                .clone()
                .unwrap_or_else(|| Arc::from(hop.addr.ip().to_string())),
        ),
        _ => None,
    };
    (hop.protocol, hop.addr, verified)
}

/// A bound stream listener, for a [`TcpAcceptor`]: its index in
/// [`Transports::listeners`], and for TLS its `listen.tls` entry.
pub struct StreamSocket {
    pub listener: usize,
    pub tls: Option<usize>,
    /// A WebSocket listener's settings (origins).
    pub websocket: Option<Arc<WsListen>>,
    pub socket: std::net::TcpListener,
}

impl Transports {
    /// Binds every UDP socket (with a large receive buffer: drops there are
    /// the first limit under load) and every TCP listener, a wildcard
    /// address once per local address of its family, so that each socket
    /// has a concrete address to name in Via and Record-Route (as Kamailio
    /// does; see README "Multi-homed hosts"). `advertise` names every
    /// listener that has no name of its own.
    pub fn bind(
        listen: &Listen,
        advertise: Option<&str>,
    ) -> io::Result<(Self, Vec<UdpSocket>, Vec<StreamSocket>)> {
        let mut outs = Vec::new();
        let mut receivers = Vec::new();
        let mut listeners = Vec::new();
        for listen in &listen.udp {
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
        let mut stream_sockets = Vec::new();
        // TLS acceptors are numbered as `Tls::load` gets them: listen.tls,
        // then listen.wss.
        let tls_count = listen.tls.len();
        let streams = (listen
            .tcp
            .iter()
            .map(|l| (Protocol::Tcp, None, None, l.clone())))
        .chain(
            listen
                .tls
                .iter()
                .enumerate()
                .map(|(i, l)| (Protocol::Tls, Some(i), None, l.listen_addr())),
        )
        .chain(listen.ws.iter().map(|l| {
            (
                Protocol::Ws,
                None,
                Some(Arc::new(l.clone())),
                l.listen_addr(),
            )
        }))
        .chain(listen.wss.iter().enumerate().map(|(i, l)| {
            let ws = Some(Arc::new(l.clone()));
            (Protocol::Wss, Some(tls_count + i), ws, l.listen_addr())
        }));
        for (protocol, tls, websocket, listen) in streams {
            let name = listen.advertise.as_deref().or(advertise);
            for addr in expand_wildcard(listen.address)? {
                let socket =
                    bind_tcp(addr).map_err(|e| with_address(e, protocol.as_str(), addr))?;
                let local = socket.local_addr()?;
                stream_sockets.push(StreamSocket {
                    listener: listeners.len(),
                    tls,
                    websocket: websocket.clone(),
                    socket,
                });
                listeners.push(Listener::new(protocol, local, name));
            }
        }
        Ok((
            Transports {
                udp: outs.into(),
                listeners: listeners.into(),
                tcp_pool: Arc::default(),
                tls: None,
                router: Arc::default(),
                edge: crate::actors::edge::Edge::open(),
                tcp_limits: Arc::new(arc_swap::ArcSwap::from_pointee(TcpLimits::default())),
                tcp_count: Arc::default(),
                send_warnings: Arc::default(),
                capture: None,
            },
            receivers,
            stream_sockets,
        ))
    }

    /// Puts TLS in force (before cloning).
    pub fn with_tls(mut self, tls: Arc<Tls>) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Copies every message sent and received to `capture` (before cloning).
    pub fn with_capture(mut self, capture: Arc<crate::actors::capture::Capture>) -> Self {
        self.capture = Some(capture);
        self
    }

    /// The script's `request.capture(on)` for the call `call_id` (nothing
    /// with `capture` off).
    pub fn set_captured(&self, call_id: &str, on: bool) {
        if let Some(capture) = &self.capture {
            capture.set_captured(call_id, on);
        }
    }

    /// A message that crossed the wire, for `capture.hep`.
    fn captured(&self, source: SocketAddr, destination: SocketAddr, stream: bool, bytes: &Bytes) {
        if let Some(capture) = &self.capture {
            // Keepalives (CR/LF, STUN, pongs) are not SIP messages.
            if crate::capture::looks_like_sip(bytes) {
                capture.record(source, destination, stream, bytes);
            }
        }
    }

    /// A datagram received on UDP listener `index` from `source`.
    pub fn captured_datagram(&self, index: usize, source: SocketAddr, bytes: &Bytes) {
        if self.capture.is_some() {
            if let Some(listener) = self.listeners.get(index) {
                self.captured(source, listener.local, false, bytes);
            }
        }
    }

    /// Puts the edge guard and the TCP limits in force (before cloning).
    pub fn with_limits(mut self, edge: Arc<crate::actors::edge::Edge>, tcp: TcpLimits) -> Self {
        self.edge = edge;
        self.tcp_limits = Arc::new(arc_swap::ArcSwap::from_pointee(tcp));
        self
    }

    /// A reload's `limits.tcp`: for new connections, and for the idle and
    /// pending-bytes checks of the open ones.
    pub fn set_tcp_limits(&self, tcp: TcpLimits) {
        self.tcp_limits.store(Arc::new(tcp));
    }

    /// Our own addresses, that a script's relay may not target: every
    /// listener's, and the IPs our listeners advertise.
    pub fn own_addresses(&self) -> (Vec<SocketAddr>, Vec<std::net::IpAddr>) {
        let listeners = self.listeners.iter().map(|l| l.local).collect();
        let advertised = self
            .listeners
            .iter()
            .filter_map(|l| {
                let uri = format!("sip:{}", l.sent_by);
                let host = crate::sip::Uri::parse(&uri).ok()?.host;
                host.trim_matches(['[', ']']).parse().ok()
            })
            .collect();
        (listeners, advertised)
    }

    pub fn edge(&self) -> &Arc<crate::actors::edge::Edge> {
        &self.edge
    }

    /// Every socket, UDP first (a UDP flow's index is its listener's).
    pub fn listeners(&self) -> &[Listener] {
        &self.listeners
    }

    /// The `protocol` listener a connection with local address `local`
    /// belongs to: the one bound there, else the first on that IP, else the
    /// first of that protocol.
    fn stream_listener_of(&self, protocol: Protocol, local: Option<SocketAddr>) -> usize {
        let tcp = || {
            self.listeners
                .iter()
                .enumerate()
                .filter(|(_, l)| l.protocol == protocol)
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
            Flow::Stream(conn, ..) if conn.connected() => conn.do_send(SendBytes(bytes)),
            Flow::Stream(..) => self.send(&Hop::new(dest, flow.protocol()), 0, bytes),
        }
    }

    /// Sends to a hop, reusing an open connection to it or opening one
    /// (over TLS verifying the hop's name). Over UDP it leaves from
    /// listener `from`'s socket.
    pub fn send(&self, hop: &Hop, from: usize, bytes: Bytes) {
        match hop.protocol {
            Protocol::Udp => self.send_udp(from, hop.addr, &bytes),
            _ if hop.flow => self.send_over_flow(hop, bytes),
            Protocol::Tcp | Protocol::Tls => self.send_stream(hop, bytes),
            // A WebSocket peer is reached only over the connection it opened.
            Protocol::Ws | Protocol::Wss => {
                tracing::debug!(dest = %hop.addr, "a WebSocket peer is reached through its flow only; message dropped")
            }
        }
    }

    fn send_udp(&self, index: usize, dest: SocketAddr, bytes: &Bytes) {
        let Some(out) = self.udp.get(index).or_else(|| self.udp.first()) else {
            tracing::warn!(%dest, "no UDP socket to send on; message dropped");
            return;
        };
        if self.capture.is_some() {
            let from = self.listeners.get(index).or_else(|| self.listeners.first());
            if let Some(listener) = from {
                self.captured(listener.local, dest, false, bytes);
            }
        }
        if let Err(e) = out.socket.send_to(bytes, dest) {
            if let Some(held_back) = self.send_warnings.udp.allow() {
                tracing::warn!(%dest, error = %e, held_back, "UDP send failed; message dropped");
            }
        }
    }

    fn send_stream(&self, hop: &Hop, bytes: Bytes) {
        let mut pool = match self.tcp_pool.lock() {
            Ok(pool) => pool,
            Err(poisoned) => poisoned.into_inner(),
        };
        let key = outbound_key(hop);
        if let Some(conn) = pool.get(&key) {
            if conn.connected() {
                conn.do_send(SendBytes(bytes));
                return;
            }
        }
        if hop.protocol == Protocol::Tls && hop.tls_name.is_none() {
            // A hop named by its address only (a Record-Route of a peer
            // that did not advertise a name) goes over a connection we
            // opened and verified to that address, whatever name it was
            // verified for: it is the peer we already trust there. Only a
            // new connection has to show the address in its certificate.
            let verified = pool.iter().find(|((protocol, addr, name), conn)| {
                *protocol == Protocol::Tls
                    && *addr == hop.addr
                    && name.is_some()
                    && conn.connected()
            });
            if let Some((_, conn)) = verified {
                conn.do_send(SendBytes(bytes));
                return;
            }
        }
        if pool.len() >= self.tcp_limits.load().max_connections {
            // Request-URIs are the sender's to choose: connections we open
            // are bounded like the ones peers open.
            drop(pool);
            crate::metrics::get().tcp_refused("outbound_limit");
            if let Some(held_back) = self.send_warnings.connect.allow() {
                tracing::warn!(dest = %hop.addr, held_back, "limits.tcp.max_connections reached; no new outbound connection, message dropped");
            }
            if let Some(router) = self.router.get() {
                router.broadcast_link_failure(hop);
            }
            return;
        }
        let conn = TcpConnection::connect(hop, key.clone(), self.clone());
        conn.do_send(SendBytes(bytes));
        pool.insert(key, conn);
    }

    /// Over the connection the peer opened to us; never dialled (its port
    /// is the peer's ephemeral one).
    fn send_over_flow(&self, hop: &Hop, bytes: Bytes) {
        let pool = self.tcp_pool.lock().unwrap_or_else(|p| p.into_inner());
        match pool.get(&(hop.protocol, hop.addr, None)) {
            Some(conn) if conn.connected() => conn.do_send(SendBytes(bytes)),
            _ => {
                drop(pool);
                tracing::debug!(dest = %hop.addr, "the flow's connection is gone; message dropped");
                // Its branch fails now rather than at Timer F.
                if let Some(router) = self.router.get() {
                    router.broadcast_link_failure(hop);
                }
            }
        }
    }

    fn register_stream(&self, key: PoolKey, conn: Addr<TcpConnection>) {
        if let Ok(mut pool) = self.tcp_pool.lock() {
            pool.insert(key, conn);
        }
    }

    /// Removes `conn` from the pool as it stops. It still looks connected
    /// from inside `stopped()`, so the entry is matched by identity: a newer
    /// connection to the same peer stays.
    fn forget_stream(&self, key: &PoolKey, conn: &Addr<TcpConnection>) {
        if let Ok(mut pool) = self.tcp_pool.lock() {
            if pool.get(key).is_some_and(|c| c == conn) {
                pool.remove(key);
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
    io::Error::new(error.kind(), bind_failure(transport, addr, &error))
}

/// Why `addr` could not be bound, with what to do about a port below 1024.
pub fn bind_failure(what: &str, addr: SocketAddr, error: &io::Error) -> String {
    let hint = if error.kind() == io::ErrorKind::PermissionDenied && addr.port() < 1024 {
        " (ports below 1024 need root or CAP_NET_BIND_SERVICE: run it as root, or give the capability as the systemd unit does, AmbientCapabilities=CAP_NET_BIND_SERVICE)"
    } else {
        ""
    };
    format!("cannot bind {what} {addr}: {error}{hint}")
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
            Some(router) => {
                router.dispatch(msg, source, flow, || transports.edge.is_exempt(source.ip()))
            }
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
    let refused = match transports.edge.admit(source.ip(), flow.channel()) {
        Verdict::Pass => None,
        Verdict::Drop => return None,
        Verdict::Refuse { retry_after_secs } => Some(retry_after_secs),
    };
    let err = match sip::parse(bytes) {
        Ok(msg) if refused.is_some() || msg.is_request() && is_scanner(&msg, transports) => {
            if let Some(retry_after) = refused {
                refuse_over_limit(&msg, retry_after, source, flow, transports);
            }
            return None;
        }
        Ok(msg) => return Some(msg),
        Err(err) => err,
    };
    if refused.is_some() {
        return None;
    }
    if err.kind == ParseErrorKind::Keepalive {
        return None;
    }
    // Counted, and logged at debug only: a flood must not flood the log.
    crate::metrics::get()
        .malformed
        .get_or_create(&crate::metrics::TransportLabels {
            transport: flow.protocol().name(),
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

/// A request whose User-Agent names a scanner: it gets no answer at all.
fn is_scanner(msg: &Message, transports: &Transports) -> bool {
    msg.header_named("User-Agent")
        .is_some_and(|ua| transports.edge.is_scanner(ua))
}

/// `on_limit: reply`: a limited request gets 503 with the time it must
/// wait (an ACK, or a response, gets nothing).
fn refuse_over_limit(
    msg: &Message,
    retry_after: u64,
    source: SocketAddr,
    flow: &Flow,
    transports: &Transports,
) {
    if !msg.is_request() || msg.method() == Some(sip::Method::Ack) {
        return;
    }
    let retry_after = retry_after.to_string();
    let reply = sip::build::response(
        msg,
        503,
        "Service Unavailable",
        None,
        &[("Retry-After", &retry_after)],
    );
    transports.reply(flow, source, Bytes::from(reply));
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
            self.transports
                .captured_datagram(self.index, source, &bytes);
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

/// Accepts TCP connections (for a TLS listener, completing the handshake
/// first) and starts a `TcpConnection` actor for each.
pub struct TcpAcceptor {
    listener: Option<TcpListener>,
    /// Its index in [`Transports::listeners`].
    index: usize,
    transports: Transports,
    /// The handshake of a TLS (or WSS) listener.
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// A WebSocket listener's settings: the upgrade follows (TLS and) accept.
    websocket: Option<Arc<WsListen>>,
}

/// An accepted connection, its handshakes done.
enum Established {
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Ws(Box<tokio_tungstenite::WebSocketStream<TcpStream>>),
    Wss(Box<tokio_tungstenite::WebSocketStream<tokio_rustls::server::TlsStream<TcpStream>>>),
}

impl TcpAcceptor {
    pub fn new(
        listener: TcpListener,
        index: usize,
        tls: Option<tokio_rustls::TlsAcceptor>,
        websocket: Option<Arc<WsListen>>,
        transports: Transports,
    ) -> Self {
        TcpAcceptor {
            listener: Some(listener),
            index,
            transports,
            tls,
            websocket,
        }
    }

    /// Starts the connection actor for an accepted connection, its
    /// handshakes done.
    fn open(&self, established: Connection, peer: SocketAddr, local: Option<SocketAddr>) {
        let transports = self.transports.clone();
        let index = self.index;
        let protocol = established.protocol();
        let conn = TcpConnection::create(|ctx| {
            let mut conn = TcpConnection::new(peer, protocol, None, transports);
            conn.listener = index;
            conn.counted = true;
            match established {
                Connection::Tcp(stream) => conn.attach(stream, local, ctx),
                Connection::Up(Established::Tls(stream)) => conn.attach(*stream, local, ctx),
                Connection::Up(Established::Ws(ws)) => conn.attach_websocket(*ws, local, ctx),
                Connection::Up(Established::Wss(ws)) => conn.attach_websocket(*ws, local, ctx),
            }
            conn
        });
        self.transports
            .register_stream((protocol, peer, None), conn);
    }

    /// The TLS handshake and WebSocket upgrade of an accepted connection,
    /// bounded in time together; a failure closes it and gives its place
    /// back.
    fn establish(&self, stream: TcpStream, peer: SocketAddr, ctx: &mut Context<Self>) {
        let timeout = self
            .transports
            .tls
            .as_ref()
            .map_or(std::time::Duration::from_secs(5), |tls| {
                tls.handshake_timeout()
            });
        let local = stream.local_addr().ok();
        let (tls, websocket) = (self.tls.clone(), self.websocket.clone());
        let handshakes = async move {
            let secure = match tls {
                Some(acceptor) => Ok(acceptor
                    .accept(stream)
                    .await
                    .map_err(|e| ("tls", e.to_string()))?),
                None => Err(stream),
            };
            match (secure, websocket) {
                (Ok(tls), None) => Ok(Established::Tls(Box::new(tls))),
                (Ok(tls), Some(ws)) => crate::actors::websocket::accept(tls, ws)
                    .await
                    .map(|ws| Established::Wss(Box::new(ws)))
                    .map_err(|e| ("websocket", e)),
                (Err(plain), Some(ws)) => crate::actors::websocket::accept(plain, ws)
                    .await
                    .map(|ws| Established::Ws(Box::new(ws)))
                    .map_err(|e| ("websocket", e)),
                (Err(_), None) => Err(("tcp", "nothing to establish".to_string())),
            }
        };
        let bounded = async move { tokio::time::timeout(timeout, handshakes).await };
        ctx.spawn(
            bounded
                .into_actor(self)
                .map(move |outcome, acceptor, _ctx| {
                    match outcome {
                        Ok(Ok(established)) => {
                            acceptor.open(Connection::Up(established), peer, local)
                        }
                        failed => {
                            let (kind, error) = match failed {
                                Ok(Err((kind, error))) => (kind, error),
                                _ => ("timeout", "handshake timed out".to_string()),
                            };
                            match kind {
                                "tls" => crate::metrics::get().tls_handshake_failed("inbound"),
                                "timeout" => crate::metrics::get().tls_handshake_failed("timeout"),
                                _ => crate::metrics::get().tcp_refused("websocket_handshake"),
                            }
                            // At debug: a scanner's junk must not flood the log.
                            tracing::debug!(%peer, kind, %error, "handshake from a client failed");
                            acceptor.transports.release_connection(peer);
                        }
                    }
                }),
        );
    }
}

/// What an acceptor opens a connection actor for.
enum Connection {
    Tcp(TcpStream),
    Up(Established),
}

impl Connection {
    fn protocol(&self) -> Protocol {
        match self {
            Connection::Tcp(_) => Protocol::Tcp,
            Connection::Up(Established::Tls(_)) => Protocol::Tls,
            Connection::Up(Established::Ws(_)) => Protocol::Ws,
            Connection::Up(Established::Wss(_)) => Protocol::Wss,
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
    fn handle(&mut self, item: io::Result<(TcpStream, SocketAddr)>, ctx: &mut Self::Context) {
        match item {
            Ok((stream, peer)) => {
                if let Err(reason) = self.transports.admit_connection(peer) {
                    crate::metrics::get().tcp_refused(reason);
                    tracing::debug!(%peer, reason, "TCP connection refused");
                    return; // dropping the stream closes it
                }
                let _ = stream.set_nodelay(true);
                if self.tls.is_none() && self.websocket.is_none() {
                    let local = stream.local_addr().ok();
                    self.open(Connection::Tcp(stream), peer, local);
                } else {
                    self.establish(stream, peer, ctx);
                }
            }
            // EMFILE and the like: logged at debug, since a flood of
            // connections would otherwise flood the log.
            Err(e) => {
                crate::metrics::get().tcp_refused("accept_error");
                tracing::debug!(error = %e, "TCP accept failed");
            }
        }
    }

    fn finished(&mut self, _ctx: &mut Self::Context) {}
}

impl Transports {
    /// Takes a place for an inbound connection from `peer`, or says which
    /// limit refuses it. The place is given back by [`Transports::release_connection`].
    fn admit_connection(&self, peer: SocketAddr) -> Result<(), &'static str> {
        let ip = peer.ip();
        if self.edge.refuses_connection(ip) {
            return Err("banned");
        }
        let limits = self.tcp_limits.load();
        let mut count = self.tcp_count.lock().unwrap_or_else(|p| p.into_inner());
        if count.total >= limits.max_connections {
            return Err("max_connections");
        }
        let per_ip = count.per_ip.get(&ip).copied().unwrap_or(0);
        if per_ip >= limits.max_per_ip && !self.edge.is_trusted(ip) {
            return Err("max_per_ip");
        }
        count.total += 1;
        *count.per_ip.entry(ip).or_insert(0) += 1;
        Ok(())
    }

    fn release_connection(&self, peer: SocketAddr) {
        let mut count = self.tcp_count.lock().unwrap_or_else(|p| p.into_inner());
        count.total = count.total.saturating_sub(1);
        if let std::collections::hash_map::Entry::Occupied(mut entry) =
            count.per_ip.entry(peer.ip())
        {
            *entry.get_mut() -= 1;
            if *entry.get() == 0 {
                entry.remove();
            }
        }
    }

    /// Open inbound TCP connections (for tests and the bound).
    pub fn tcp_connections(&self) -> usize {
        self.tcp_count.lock().map_or(0, |c| c.total)
    }

    /// Connections held in the pool (for tests and the bound).
    pub fn tcp_pool_size(&self) -> usize {
        self.tcp_pool.lock().map_or(0, |p| p.len())
    }
}

/// Bytes to write on a TCP connection.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SendBytes(pub Bytes);

/// The connection's writer task failed: the connection closes.
#[derive(Message)]
#[rtype(result = "()")]
struct WriteFailed(io::Error);

/// How often a connection checks its idle and first-message times.
const TCP_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// One TCP connection, inbound or outbound. Reads are framed by
/// Content-Length; writes go through a writer task whose queue is bounded
/// by `limits.tcp.max_pending_bytes` (a peer that does not read is closed,
/// not buffered for), and messages wait in `pending` until an outbound
/// connect completes.
pub struct TcpConnection {
    peer: SocketAddr,
    /// TCP, or TLS over TCP.
    protocol: Protocol,
    connect_to: Option<SocketAddr>,
    /// The name an outbound TLS connection verifies (else the address).
    tls_name: Option<Arc<str>>,
    /// The stream is up (counted in the connections gauge).
    attached: bool,
    /// Its entry in the pool.
    pool_key: PoolKey,
    writer: Option<tokio::sync::mpsc::UnboundedSender<Bytes>>,
    /// Bytes handed to the writer task and not yet written.
    unwritten: Arc<std::sync::atomic::AtomicUsize>,
    pending: Vec<Bytes>,
    transports: Transports,
    /// The listener its messages count as arriving on.
    listener: usize,
    /// An inbound connection holding a place in the TCP counts.
    counted: bool,
    opened: std::time::Instant,
    last_activity: std::time::Instant,
    /// A whole message has arrived on it.
    delivered: bool,
    /// Our end, once connected (for `capture.hep`).
    local: Option<SocketAddr>,
    /// Keepalive bytes since the last message.
    keepalive_bytes: usize,
}

impl TcpConnection {
    fn new(
        peer: SocketAddr,
        protocol: Protocol,
        connect_to: Option<SocketAddr>,
        transports: Transports,
    ) -> Self {
        let now = std::time::Instant::now();
        TcpConnection {
            peer,
            protocol,
            connect_to,
            tls_name: None,
            attached: false,
            pool_key: (protocol, peer, None),
            writer: None,
            unwritten: Arc::default(),
            pending: Vec::new(),
            listener: transports.stream_listener_of(protocol, None),
            transports,
            counted: false,
            opened: now,
            last_activity: now,
            delivered: false,
            keepalive_bytes: 0,
            local: None,
        }
    }

    /// Starts an outbound connection on the current arbiter; messages sent to it
    /// wait in its mailbox until the connect (and TLS handshake) completes.
    fn connect(hop: &Hop, pool_key: PoolKey, transports: Transports) -> Addr<Self> {
        let mut conn = TcpConnection::new(hop.addr, hop.protocol, Some(hop.addr), transports);
        conn.tls_name = hop.tls_name.clone();
        conn.pool_key = pool_key;
        conn.start()
    }

    fn attach<S>(&mut self, stream: S, local: Option<SocketAddr>, ctx: &mut Context<Self>)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read, write) = tokio::io::split(stream);
        ctx.add_stream(FramedRead::new(read, SipStreamCodec::default()));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        ctx.spawn(write_all(write, rx, self.unwritten.clone(), ctx.address()).into_actor(self));
        self.start_writing(tx, local, ctx);
    }

    /// A WebSocket: one SIP message per frame each way, no Content-Length
    /// framing (RFC 7118 §5).
    fn attach_websocket<S>(
        &mut self,
        ws: tokio_tungstenite::WebSocketStream<S>,
        local: Option<SocketAddr>,
        ctx: &mut Context<Self>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        use futures_util::StreamExt;
        let (sink, frames) = ws.split();
        ctx.add_stream(crate::actors::websocket::messages(frames));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let conn = ctx.address();
        let unwritten = self.unwritten.clone();
        let writing = async move {
            if let Err(error) = crate::actors::websocket::write_frames(sink, rx, unwritten).await {
                conn.do_send(WriteFailed(io::Error::other(error)));
            }
        };
        ctx.spawn(writing.into_actor(self));
        self.start_writing(tx, local, ctx);
    }

    /// The connection is up: count it and send what waited.
    fn start_writing(
        &mut self,
        writer: tokio::sync::mpsc::UnboundedSender<Bytes>,
        local: Option<SocketAddr>,
        ctx: &mut Context<Self>,
    ) {
        if self.connect_to.is_some() {
            self.listener = self.transports.stream_listener_of(self.protocol, local);
        }
        self.attached = true;
        self.local = local;
        crate::metrics::get().connection_opened(self.protocol);
        self.writer = Some(writer);
        for bytes in std::mem::take(&mut self.pending) {
            self.write(bytes, ctx);
        }
    }

    /// Queues bytes for the writer task, or closes a connection whose peer
    /// has left more than `max_pending_bytes` unread.
    fn write(&mut self, bytes: Bytes, ctx: &mut Context<Self>) {
        let Some(writer) = &self.writer else {
            if self.pending.iter().map(Bytes::len).sum::<usize>() + bytes.len()
                <= self.transports.tcp_limits.load().max_pending_bytes
            {
                self.pending.push(bytes);
            }
            return;
        };
        let queued = self.unwritten.load(Ordering::Relaxed) + bytes.len();
        if queued > self.transports.tcp_limits.load().max_pending_bytes {
            crate::metrics::get().tcp_refused("slow_reader");
            tracing::debug!(peer = %self.peer, queued, "TCP peer does not read; closing");
            ctx.stop();
            return;
        }
        self.unwritten.fetch_add(bytes.len(), Ordering::Relaxed);
        self.last_activity = std::time::Instant::now();
        if let Some(local) = self.local {
            self.transports.captured(local, self.peer, true, &bytes);
        }
        if writer.send(bytes).is_err() {
            ctx.stop();
        }
    }

    /// Keepalives are activity, pass the source's rate bucket like a
    /// message, and a ping gets its pong (one for what one read brought:
    /// a flood of pings is not answered byte for byte). Past
    /// [`MAX_KEEPALIVE_BYTES`] between two messages the connection closes.
    fn on_keepalives(&mut self, keepalives: sip::framing::Keepalives, ctx: &mut Context<Self>) {
        self.last_activity = std::time::Instant::now();
        self.keepalive_bytes += keepalives.bytes;
        let reason = if self.keepalive_bytes > MAX_KEEPALIVE_BYTES {
            Some("keepalive_flood")
        } else if keepalives.bytes > 0
            && self.transports.edge.admit(self.peer.ip(), Channel::Stream) != Verdict::Pass
        {
            Some("rate_limited")
        } else {
            None
        };
        if let Some(reason) = reason {
            self.close(reason, ctx);
            return;
        }
        if keepalives.pings > 0 {
            self.write(Bytes::from_static(b"\r\n"), ctx);
        }
    }

    /// Closes an inbound connection that sent no message in time, or any
    /// connection idle too long.
    fn check_timers(&mut self, ctx: &mut Context<Self>) {
        let now = std::time::Instant::now();
        let limits = self.transports.tcp_limits.load();
        let reason = if self.counted
            && !self.delivered
            && now.duration_since(self.opened).as_secs() >= limits.first_message_secs
        {
            Some("first_message_timeout")
        } else if now.duration_since(self.last_activity).as_secs() >= limits.idle_secs {
            Some("idle")
        } else {
            None
        };
        if let Some(reason) = reason {
            self.close(reason, ctx);
        }
    }

    /// Closes the connection for `reason`, counted and logged at debug.
    fn close(&mut self, reason: &'static str, ctx: &mut Context<Self>) {
        crate::metrics::get().tcp_refused(reason);
        tracing::debug!(peer = %self.peer, reason, "closing TCP connection");
        ctx.stop();
    }
}

/// The writer task of one connection: writes what it is given in order,
/// counting down `unwritten`, and reports the first failure.
async fn write_all<W: AsyncWrite>(
    write: W,
    mut queue: tokio::sync::mpsc::UnboundedReceiver<Bytes>,
    unwritten: Arc<std::sync::atomic::AtomicUsize>,
    conn: Addr<TcpConnection>,
) {
    use tokio::io::AsyncWriteExt;
    let mut write = std::pin::pin!(write);
    while let Some(bytes) = queue.recv().await {
        if let Err(e) = write.write_all(&bytes).await {
            conn.do_send(WriteFailed(e));
            return;
        }
        unwritten.fetch_sub(bytes.len(), Ordering::Relaxed);
    }
    let _ = write.shutdown().await;
}

impl Actor for TcpConnection {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(TCP_CHECK, |conn, ctx| conn.check_timers(ctx));
        let Some(dest) = self.connect_to else {
            return;
        };
        let tls = match self.protocol {
            Protocol::Tls => match &self.transports.tls {
                Some(tls) => Some((
                    tls.connector(),
                    crate::actors::tls::server_name(self.tls_name.as_deref(), dest),
                    tls.handshake_timeout(),
                )),
                None => {
                    tracing::warn!(%dest, "TLS is not set up; message dropped");
                    ctx.stop();
                    return;
                }
            },
            _ => None,
        };
        let connecting = async move {
            let stream =
                tokio::time::timeout(std::time::Duration::from_secs(5), TcpStream::connect(dest))
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
            let _ = stream.set_nodelay(true);
            let local = stream.local_addr().ok();
            let Some((connector, name, timeout)) = tls else {
                return Ok::<_, Connect>((Connected::Plain(stream), local));
            };
            let stream = tokio::time::timeout(timeout, connector.connect(name, stream))
                .await
                .map_err(|_| Connect::Handshake("handshake timed out".to_string()))?
                .map_err(|e| Connect::Handshake(e.to_string()))?;
            Ok((Connected::Tls(Box::new(stream)), local))
        };
        ctx.wait(
            connecting
                .into_actor(self)
                .map(move |result, conn, ctx| match result {
                    Ok((Connected::Plain(stream), local)) => conn.attach(stream, local, ctx),
                    Ok((Connected::Tls(stream), local)) => conn.attach(stream, local, ctx),
                    Err(Connect::Io(e)) => {
                        if let Some(held_back) = conn.transports.send_warnings.connect.allow() {
                            tracing::warn!(%dest, transport = conn.protocol.as_str(), error = %e, held_back, "connect failed; queued messages dropped");
                        }
                        ctx.stop();
                    }
                    Err(Connect::Handshake(e)) => {
                        crate::metrics::get().tls_handshake_failed("outbound");
                        let name = conn.tls_name.as_deref().map_or_else(|| dest.ip().to_string(), str::to_string);
                        if let Some(held_back) = conn.transports.send_warnings.handshake.allow() {
                            tracing::warn!(%dest, %name, error = %e, held_back, "TLS handshake failed; the peer's certificate was not accepted or the handshake broke off");
                        }
                        ctx.stop();
                    }
                }),
        );
    }

    fn stopped(&mut self, ctx: &mut Self::Context) {
        tracing::debug!(peer = %self.peer, transport = self.protocol.as_str(), "connection closed");
        if self.attached {
            crate::metrics::get().connection_closed(self.protocol);
        }
        self.transports
            .forget_stream(&self.pool_key, &ctx.address());
        if self.counted {
            self.transports.release_connection(self.peer);
        }
        // A connection that failed to connect, was reset or was closed
        // leaves whatever was sent on it unanswered: toward a gateway over
        // one we dialled, toward a client over its own (a flow).
        if let Some(router) = self.transports.router.get() {
            let hop = match self.connect_to.is_some() {
                true => Hop::new(self.peer, self.protocol),
                false => Hop::flow(self.peer, self.protocol),
            };
            router.broadcast_link_failure(&hop);
        }
    }
}

impl Handler<SendBytes> for TcpConnection {
    type Result = ();

    fn handle(&mut self, msg: SendBytes, ctx: &mut Self::Context) {
        self.write(msg.0, ctx);
    }
}

impl Handler<WriteFailed> for TcpConnection {
    type Result = ();

    fn handle(&mut self, failed: WriteFailed, ctx: &mut Self::Context) {
        tracing::debug!(peer = %self.peer, error = %failed.0, "TCP write failed");
        ctx.stop();
    }
}

/// What a stream connection's reader hands its actor.
#[derive(Debug)]
pub enum StreamEvent {
    /// One framed SIP message.
    Message(Bytes),
    /// Keepalives: CR/LF between messages (RFC 5626 §4.4.1), or a
    /// WebSocket pong (zero bytes).
    Keepalive(sip::framing::Keepalives),
}

/// The most keepalive bytes a connection may send between two messages:
/// a phone sends four every half minute, a flood millions.
const MAX_KEEPALIVE_BYTES: usize = 64 * 1024;

impl StreamHandler<io::Result<StreamEvent>> for TcpConnection {
    fn handle(&mut self, item: io::Result<StreamEvent>, ctx: &mut Self::Context) {
        match item {
            Ok(StreamEvent::Keepalive(keepalives)) => self.on_keepalives(keepalives, ctx),
            Ok(StreamEvent::Message(bytes)) => {
                let _busy = crate::metrics::actors().tcp.measure();
                self.last_activity = std::time::Instant::now();
                self.delivered = true;
                self.keepalive_bytes = 0;
                if let Some(local) = self.local {
                    self.transports.captured(self.peer, local, true, &bytes);
                }
                let flow = Flow::Stream(ctx.address(), self.listener, self.protocol);
                accept_bytes(bytes, self.peer, flow, &self.transports);
            }
            Err(e) => {
                tracing::debug!(peer = %self.peer, error = %e, "closing TCP connection after framing error");
                ctx.stop();
            }
        }
    }
}

/// An outbound stream, once connected.
enum Connected {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Why an outbound connection did not come up.
enum Connect {
    Io(io::Error),
    Handshake(String),
}

impl From<io::Error> for Connect {
    fn from(error: io::Error) -> Self {
        Connect::Io(error)
    }
}

/// Frames SIP messages on a byte stream by Content-Length (RFC 3261 §18.3).
#[derive(Default)]
struct SipStreamCodec {
    framer: sip::framing::StreamFramer,
}

impl Decoder for SipStreamCodec {
    type Item = StreamEvent;
    type Error = io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> io::Result<Option<StreamEvent>> {
        let keepalives = self.framer.take_keepalives(buf);
        if keepalives.bytes > 0 {
            buf.advance(keepalives.bytes);
            return Ok(Some(StreamEvent::Keepalive(keepalives)));
        }
        match self.framer.next_frame(buf) {
            Ok(Some((skip, len))) => {
                buf.advance(skip);
                Ok(Some(StreamEvent::Message(buf.split_to(len).freeze())))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{IngressGate, PRIORITY_RESERVE};

    #[test]
    fn a_shard_that_never_drains_does_not_block_the_others() {
        let gate = IngressGate::with_limit(2, 3);
        // Shard 0 is stuck: it takes messages and never handles them.
        let admitted = (0..10).filter(|_| gate.admit(0, || false)).count();
        assert_eq!(admitted, 3, "shard 0 is bounded");
        // Shard 1 goes on for ever, taking and handling.
        for _ in 0..100_000 {
            assert!(gate.admit(1, || false), "shard 1 was starved by shard 0");
            gate.release(1);
        }
        // Once shard 0 handles one message, it takes one more.
        gate.release(0);
        assert!(gate.admit(0, || false));
        assert!(!gate.admit(0, || false));
        // A trusted peer's message still gets in, up to the reserve.
        let reserve = 3.min(PRIORITY_RESERVE) as usize;
        assert_eq!((0..10).filter(|_| gate.admit(0, || true)).count(), reserve);
    }
}
