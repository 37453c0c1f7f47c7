//! The proxy core as a sans-I/O state machine: RFC 3261 §17 server and
//! client transactions and the §16 proxy rules, for every request a shard
//! owns.
//!
//! The engine never reads the clock and never touches a socket. Its inputs
//! are a received request or response (with its source), the script's
//! decision for a request, a probe to send, and the passing of time; each
//! call takes `now`. Its outputs, taken with [`Engine::poll_output`], are
//! messages to send, requests for the script to run, and probe outcomes;
//! [`Engine::poll_timeout`] says when it next wants [`Engine::handle_timeout`].
//! Next hops are looked up through a function the caller passes with the
//! decision, so the engine does no DNS itself. A test can therefore drive an
//! hour of timers in a microsecond.
//!
//! `F` is the caller's handle for the way back to a peer (the UDP socket or
//! TCP connection a request came in on); the engine only hands it back.

pub(crate) mod branch;
mod cancel;
mod client;
mod context;
mod decision;
mod ended;
mod failover;
#[cfg(test)]
mod fuzz;
mod probe;
mod request;
mod response;
pub mod route;
mod server;
#[cfg(test)]
mod tests;
mod timers;
mod trace;

use std::borrow::Cow;
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use self::branch::{
    parse_client_branch, push_client_branch, push_stateless_branch, BranchTokens, CLIENT_BRANCH_LEN,
};
use self::client::{accepts_from, CancelTx, ClientState, ClientTx, Owner, SentMethod};
use self::context::{upstream_copy, Best, Candidate, ResponseContext};
use self::server::{Failover, FailureHook, ServerKey, ServerState, ServerTx};
use crate::proxy::capacity::{ActiveCalls, CallSlot, Collected, NotCounted, Refusal};
use crate::proxy::decision::{Action, Decision, GatewayRelay, Preroute, RelayFailure};
use crate::proxy::fast_hash::FastMap;
use crate::proxy::flow::TokenKind;
use crate::proxy::forward::{self, ForwardEdits, Hop, HopError};
use crate::proxy::local::{Listener, LocalIdentity};
use crate::proxy::seal::{sealed_entry, SealCheck};
use crate::proxy::timers::{TimerKind, TimerOwner, TimerQueue, TimerSettings};
use crate::sip::{self, build, HeaderName, Message, Method, Protocol, Via};

pub use self::branch::MAGIC_COOKIE;

/// Which local address the host's routing table sends to an address from
/// (None when it has no route). Only asked when more than one listener
/// could send a message; the caller keeps the answers.
pub type RouteLookup = Arc<dyn Fn(IpAddr) -> Option<IpAddr> + Send + Sync>;

/// Where the URIs of a decision lead: the caller's DNS cache and relay
/// policy. Any `FnMut(&str) -> Result<Hop, HopError>` is one (with no
/// alternates).
pub trait NextHops {
    /// The first place to send a request for `uri`.
    fn next_hop(&mut self, uri: &str) -> Result<Hop, HopError>;

    /// The other places RFC 3263 found for `uri`'s name, in order, to fail
    /// over to.
    fn alternates(&mut self, _uri: &str) -> Vec<Hop> {
        Vec::new()
    }
}

impl<F: FnMut(&str) -> Result<Hop, HopError>> NextHops for F {
    fn next_hop(&mut self, uri: &str) -> Result<Hop, HopError> {
        self(uri)
    }
}

/// What the engine needs to know about the node it runs in.
pub struct EngineConfig {
    pub timers: TimerSettings,
    pub local: Arc<LocalIdentity>,
    /// Every socket, by index: requests arrive on one, and our Via and
    /// Record-Route name the one a message leaves from.
    pub listeners: Vec<Listener>,
    pub route: RouteLookup,
    /// The secret behind our branch tokens (random at boot).
    pub branch_secret: [u64; 2],
    /// While draining, new INVITEs and OPTIONS get 503 with this Retry-After.
    pub drain_secs: u64,
    /// Live transactions held at most (`limits.max_transactions`, this
    /// shard's share): above it new INVITEs get 503 and other new requests
    /// are dropped. Ended ones lingering for their timers do not count.
    pub max_transactions: usize,
    /// What ended transactions may take, in bytes
    /// (`limits.ended_transactions_mb`, this shard's share).
    pub ended_bytes: usize,
    /// Names a caller's connection in our Record-Route (one key for every
    /// shard: a token must read the same wherever its request lands).
    pub flow_tokens: crate::proxy::flow::FlowTokens,
    /// Seal our Record-Routes and check them on in-dialog requests.
    pub seals: crate::proxy::seal::DialogSeals,
    /// An in-dialog request through our Route without a seal is relayed
    /// (a rolling upgrade from a build without seals), not refused.
    pub accept_unsealed: bool,
    /// `limits.udp_max_request_bytes` (0: never leave UDP for size).
    pub udp_max_request_bytes: usize,
    /// `gateway.call_max_secs`: a call no BYE ends is collected after it.
    pub call_max: Duration,
    /// The most calls this shard counts at once.
    pub max_tracked_calls: usize,
    /// `tracing.otlp`: which calls leave spans (None: tracing is off).
    pub tracing: Option<crate::telemetry::TraceSettings>,
}

/// The settings a reload changes in a running engine.
#[derive(Debug, Clone)]
pub struct Reconfigure {
    pub timers: TimerSettings,
    pub max_transactions: usize,
    pub ended_bytes: usize,
    pub udp_max_request_bytes: usize,
    pub call_max: Duration,
    /// Who we are, with `security.trusted`.
    pub local: Arc<LocalIdentity>,
    /// New route secrets; None keeps the running ones (a secret taken out
    /// of the file would otherwise turn every dialog's Route away). With
    /// no previous secret of their own, the running one stays as previous.
    pub seals: Option<crate::proxy::seal::DialogSeals>,
    pub accept_unsealed: bool,
}

/// The Retry-After of a 503 sent because the transaction table is full.
const FULL_RETRY_AFTER: &str = "5";

/// The timer queue is swept of the timers nothing will act on (those of
/// gone transactions, and an ended one's Timers B, C and F) once it holds
/// this many entries and twice what the last sweep kept: a sweep costs a
/// pass over the queue, and the doubling makes it a constant per timer.
const TIMER_SWEEP_FLOOR: usize = 4096;

/// Something for the caller to carry out.
#[derive(Debug)]
pub enum Output<F> {
    /// A request (or ACK, CANCEL, probe) to a next hop, from listener `from`.
    Send { hop: Hop, from: usize, bytes: Bytes },
    /// A response upstream on the flow its request came in on; `dest` is
    /// the UDP destination, or over TCP where to connect if that connection
    /// is gone (RFC 3261 §18.2.2). `code` is set the first time a response
    /// is sent (for metrics) and None for a retransmission.
    Reply {
        flow: F,
        dest: SocketAddr,
        bytes: Bytes,
        code: Option<u16>,
    },
    /// Run the routing script; answer with [`Engine::handle_decision`].
    RunScript(ScriptRun),
    /// An OPTIONS probe ended.
    ProbeDone { probe: u64, outcome: ProbeOutcome },
    /// A relay to a gateway destination ended in a way its group's passive
    /// health counts.
    Health(HealthReport),
    /// A branch to a gateway destination failed and the request moved on.
    Failover(FailoverEvent),
    /// Every branch failed: run `@proxy.on_failure`; answer with
    /// [`Engine::handle_decision`] (no action sends the best response).
    RunFailure(Box<FailureRun>),
    /// Every candidate of this group left was full, paced or drained.
    GatewayFull { group: Arc<str> },
    /// A call no BYE ended stopped counting after `call_max`.
    CallCollected(Collected),
    /// A traced server transaction's spans, to export.
    Trace(Box<crate::telemetry::CallTrace>),
}

/// A relay outcome for a destination's passive health.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthReport {
    pub group: Arc<str>,
    pub uri: Arc<str>,
    /// None for a success; a failure with the Retry-After it carried.
    pub failure: Option<(RelayFailure, Option<Duration>)>,
}

/// One failover, for the log line and `siphon_failovers_total`.
#[derive(Debug, Clone, PartialEq)]
pub struct FailoverEvent {
    pub group: Arc<str>,
    pub call_id: String,
    pub failed: Arc<str>,
    pub next: Arc<str>,
    pub failure: RelayFailure,
    /// The call's trace, when it is traced.
    pub trace_id: Option<crate::telemetry::TraceId>,
}

/// The request whose branches all failed, and the best response they left
/// (None when they timed out).
#[derive(Debug, Clone)]
pub struct FailureRun {
    pub ticket: u64,
    pub request: Arc<Message>,
    pub source: SocketAddr,
    pub protocol: Protocol,
    pub preroute: Preroute,
    pub response: Option<Message>,
    /// The call's trace, when it is traced (for the script's log lines).
    pub trace_id: Option<crate::telemetry::TraceId>,
}

/// A request for the script, and the ticket its decision must name.
#[derive(Debug, Clone)]
pub struct ScriptRun {
    pub ticket: u64,
    pub request: Arc<Message>,
    pub source: SocketAddr,
    pub protocol: Protocol,
    pub preroute: Preroute,
    /// The call's trace, when it is traced (for the script's log lines).
    pub trace_id: Option<crate::telemetry::TraceId>,
}

/// A decision that waits for `hosts` to be looked up; give it back to
/// [`Engine::handle_decision`] with the same ticket once they are known
/// (found or not). A name still missing then defers it again.
#[derive(Debug)]
pub struct Deferred {
    pub ticket: u64,
    pub decision: Decision,
    pub hosts: Vec<String>,
}

/// Where a probe goes and how its answer is judged.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    pub hop: Hop,
    /// Its answer counts only from the probed address (`strict_source`).
    pub strict_source: bool,
    /// How long the prober waits for it.
    pub give_up: Duration,
    /// Its From URI (`probe.from`); None: `sip:siphon@` our address.
    pub from: Option<Arc<str>>,
}

/// The result of one probe: the final status, or None when it timed out.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeOutcome {
    pub status: Option<u16>,
    pub retry_after: Option<Duration>,
    pub latency: Duration,
}

/// A request waiting for its script decision.
struct Pending {
    msg: Arc<Message>,
    source: SocketAddr,
    protocol: Protocol,
    /// The listener it arrived on.
    listener: usize,
    loop_hash: u64,
    preroute: Preroute,
    /// The server transaction (None for an ACK, which is relayed statelessly).
    slot: Option<u64>,
    /// The decision asked for is `@proxy.on_failure`'s.
    failure_run: bool,
}

/// Where one branch goes and how its copy differs from the request.
struct BranchPlan<'a> {
    hop: Hop,
    new_ruri: Option<&'a str>,
    push_routes: &'a [String],
    routes_popped: usize,
    append_route: Option<&'a str>,
    /// A gateway candidate: its index, how long it may stay silent, and
    /// whether its answers count only from its address.
    candidate: Option<(usize, Duration, bool)>,
    /// The branch's share of Max-Breadth (RFC 5393), when forking.
    max_breadth: Option<u32>,
    /// The next hop's URI does not pin `transport=udp`: a request too
    /// large for UDP may go over TCP instead (§18.1.1).
    may_leave_udp: bool,
    /// An INVITE's slot at its gateway destination, for its branch to hold.
    call_slot: Option<CallSlot>,
}

/// The transaction engine of one shard.
pub struct Engine<F> {
    config: EngineConfig,
    servers: FastMap<u64, ServerTx<F>>,
    server_index: FastMap<ServerKey, u64>,
    /// Client transactions by branch token.
    clients: FastMap<u64, ClientTx>,
    /// CANCELs by the token of the branch they cancel.
    cancels: FastMap<u64, CancelTx>,
    /// Server transactions whose own 2xx waits for its ACK, by
    /// [`ack_key`].
    awaiting_ack: FastMap<u64, u64>,
    pending: FastMap<u64, Pending>,
    timers: TimerQueue,
    tokens: BranchTokens,
    next_slot: u64,
    out: VecDeque<Output<F>>,
    /// Our Via prefix and Record-Route value, by listener.
    via_prefix: Vec<String>,
    record_route: Vec<String>,
    /// The Record-Route value of a TLS or WSS listener for a `sips:`
    /// request (§16.6 step 4), by listener; None for the others.
    record_route_sips: Vec<Option<String>>,
    /// The listener of each protocol when it has only one (no route to
    /// look up), by `Protocol as usize`.
    only_listener: [Option<usize>; Protocol::ALL.len()],
    /// Whether we listen on each protocol at all: our Via must name a
    /// listener of the protocol a request leaves by.
    listening: [bool; Protocol::ALL.len()],
    /// Calls to gateway destinations from their 2xx to their BYE.
    calls: ActiveCalls,
    /// Calls not counted because `calls` was full.
    untracked_calls: u64,
    /// Server transactions that sent their final response and linger for
    /// their timers, compact (see [`ended`]).
    /// Boxed, like `ended_clients`: a table sized for the peak holds
    /// pointers, not entries, in its spare room.
    ended_servers: FastMap<u64, Box<ended::EndedServer<F>>>,
    /// Branches that got their final response and linger for their
    /// timers, compact; moved there at the tick after they ended.
    ended_clients: FastMap<u64, Box<ended::EndedClient>>,
    /// Timer entries the last sweep kept.
    timers_kept: usize,
    /// What ended transactions are charged, by deadline.
    ended: ended::EndedStore,
}

impl<F: Clone> Engine<F> {
    pub fn new(config: EngineConfig) -> Self {
        let listeners = &config.listeners;
        let only = |protocol: Protocol| {
            let mut of_protocol = listeners
                .iter()
                .enumerate()
                .filter(|(_, l)| l.protocol == protocol);
            match (of_protocol.next(), of_protocol.next()) {
                (Some((index, _)), None) => Some(index),
                _ => None,
            }
        };
        Engine {
            via_prefix: listeners
                .iter()
                .map(|l| format!("SIP/2.0/{} {};branch=", l.protocol.as_str(), l.sent_by))
                .collect(),
            record_route: listeners
                .iter()
                .map(|l| match l.protocol.uri_param() {
                    None => format!("<sip:{};lr>", l.sent_by),
                    Some(transport) => format!("<sip:{};transport={transport};lr>", l.sent_by),
                })
                .collect(),
            record_route_sips: listeners
                .iter()
                .map(|l| match l.protocol {
                    Protocol::Tls => Some(format!("<sips:{};lr>", l.sent_by)),
                    // RFC 7118: a secure WebSocket is `sips:` with `ws`.
                    Protocol::Wss => Some(format!("<sips:{};transport=ws;lr>", l.sent_by)),
                    _ => None,
                })
                .collect(),
            only_listener: Protocol::ALL.map(only),
            listening: Protocol::ALL.map(|p| listeners.iter().any(|l| l.protocol == p)),
            tokens: BranchTokens::new(config.branch_secret),
            calls: ActiveCalls::new(
                config.branch_secret[1],
                config.call_max,
                config.max_tracked_calls,
            ),
            untracked_calls: 0,
            ended_servers: FastMap::default(),
            ended_clients: FastMap::default(),
            timers_kept: 0,
            ended: ended::EndedStore::default(),
            config,
            servers: FastMap::default(),
            server_index: FastMap::default(),
            clients: FastMap::default(),
            cancels: FastMap::default(),
            awaiting_ack: FastMap::default(),
            pending: FastMap::default(),
            timers: TimerQueue::default(),
            next_slot: 0,
            out: VecDeque::new(),
        }
    }

    /// The next thing to carry out.
    pub fn poll_output(&mut self) -> Option<Output<F>> {
        self.out.pop_front()
    }

    /// When the engine next wants [`Engine::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        let calls = self.calls.next_deadline();
        match (self.timers.next_due(), calls) {
            (Some(timer), Some(calls)) => Some(timer.min(calls)),
            (timer, calls) => timer.or(calls),
        }
    }

    /// What a reload changes in place: the timers of new transactions,
    /// this shard's transaction limit, the UDP size limit, how long a call
    /// may last uncounted by a BYE, the trusted peers and the route
    /// secrets (dialogs sealed with the secret now named previous go on).
    pub fn reconfigure(&mut self, change: Reconfigure) {
        self.config.timers = change.timers;
        self.config.max_transactions = change.max_transactions;
        self.config.ended_bytes = change.ended_bytes;
        self.config.udp_max_request_bytes = change.udp_max_request_bytes;
        self.calls.set_call_max(change.call_max);
        self.config.local = change.local;
        if let Some(seals) = change.seals {
            self.config.seals = seals.succeeding(&self.config.seals);
        }
        self.config.accept_unsealed = change.accept_unsealed;
    }

    /// Calls this shard counts now (2xx seen, no BYE yet).
    pub fn calls_counted(&self) -> usize {
        self.calls.len()
    }

    /// True while the request of `ticket` waits for its script decision: a
    /// decision that comes after its run timed out ([`Engine::script_timed_out`])
    /// is no longer awaited.
    pub fn awaits_decision(&self, ticket: u64) -> bool {
        self.pending.contains_key(&ticket)
    }

    /// The script run of `ticket` took too long: the request is answered
    /// as if the script had failed (500; the best response after
    /// `@proxy.on_failure`), and a later decision for it is ignored.
    pub fn script_timed_out(&mut self, now: Instant, ticket: u64, timeout: Duration) {
        if let Some(pending) = self.pending.get(&ticket) {
            let (method, call_id) = (
                pending.msg.method_str(),
                pending.msg.call_id().unwrap_or("-"),
            );
            let timeout_ms = timeout.as_millis() as u64;
            let trace_id = self.trace_id_of(pending.slot).map(|t| t.hex());
            let trace_id = trace_id.as_deref();
            let answered = pending
                .slot
                .is_none_or(|slot| self.servers.get(&slot).is_none_or(|tx| tx.final_sent));
            if pending.failure_run {
                tracing::error!(method, call_id, trace_id, timeout_ms, "no @proxy.on_failure decision within script.timeout_ms; sending the best response");
            } else if answered {
                tracing::debug!(method, call_id, trace_id, timeout_ms, "no script decision within script.timeout_ms for a request with nothing left to answer");
            } else {
                tracing::error!(
                    method,
                    call_id,
                    trace_id,
                    timeout_ms,
                    "no script decision within script.timeout_ms; answering 500"
                );
            }
        }
        let mut no_lookup = |uri: &str| Err(HopError::Unsupported(uri.to_string()));
        self.handle_decision(now, ticket, Decision::failed(), &mut no_lookup);
    }

    /// Live transactions held (server, client and CANCEL): not the ended
    /// ones lingering for their timers.
    pub fn active(&self) -> usize {
        self.servers.len() + self.clients.len() + self.cancels.len() - self.ended.clients()
    }

    fn settings(&self) -> TimerSettings {
        self.config.timers
    }

    /// The listener a message to `hop` leaves from: the only one of its
    /// protocol, else the one with the address the routing table picks
    /// (of the hop's family), else the first of its protocol and family.
    fn listener_for(&self, hop: &Hop) -> usize {
        if let Some(only) = self.only_listener[hop.protocol.index()] {
            return only;
        }
        let listeners = &self.config.listeners;
        let fits =
            |l: &Listener| l.protocol == hop.protocol && l.local.is_ipv4() == hop.addr.is_ipv4();
        let routed = (self.config.route)(hop.addr.ip());
        listeners
            .iter()
            .position(|l| fits(l) && Some(l.local.ip()) == routed)
            .or_else(|| listeners.iter().position(fits))
            .or_else(|| listeners.iter().position(|l| l.protocol == hop.protocol))
            .unwrap_or(0)
    }

    /// Queues a message to `hop`, from the listener that reaches it.
    fn send(&mut self, hop: Hop, bytes: Bytes) {
        let from = self.listener_for(&hop);
        self.out.push_back(Output::Send { hop, from, bytes });
    }

    /// Our Via for `listener`, its branch written by `branch`.
    fn via_value(&self, listener: usize, branch: impl FnOnce(&mut String)) -> String {
        let prefix = self.via_prefix.get(listener).map_or("", String::as_str);
        let mut via = String::with_capacity(prefix.len() + CLIENT_BRANCH_LEN + 8);
        via.push_str(prefix);
        branch(&mut via);
        via.push_str(";rport");
        via
    }

    fn is_our_via(&self, via: &Via<'_>) -> bool {
        self.config.local.is_local(via.host, via.port)
    }

    /// A token no live client transaction has.
    fn fresh_token(&mut self) -> u64 {
        loop {
            let token = self.tokens.next_token();
            if !self.clients.contains_key(&token) && !self.ended_clients.contains_key(&token) {
                return token;
            }
        }
    }

    /// Registers a client transaction and arms its timers.
    fn add_client(&mut self, now: Instant, token: u64, client: ClientTx) {
        let settings = self.settings();
        let owner = TimerOwner::Client(token);
        let (invite, reliable) = (client.invite, client.hop.protocol.is_reliable());
        if !reliable {
            let kind = if invite { TimerKind::A } else { TimerKind::E };
            self.timers.arm(now, settings.t1, owner, kind);
        }
        let kind = if invite { TimerKind::B } else { TimerKind::F };
        self.timers.arm(now, settings.timeout(), owner, kind);
        // Timer C (185 s) due after Timer B is armed when B fires on a
        // branch still Proceeding: nearly every branch has its final long
        // before, and an entry minutes ahead would outlive its branch in
        // the queue.
        let wait = client.timer_c_due.saturating_duration_since(now);
        if invite && matches!(client.owner, Owner::Server(_)) && wait <= settings.timeout() {
            self.timers.arm(now, wait, owner, TimerKind::C);
        }
        self.clients.insert(token, client);
    }
}

/// The user part of a Route value: ours that carry one hold a flow token.
/// A value without `@` costs no parsing.
fn route_user(value: &str) -> Option<&str> {
    if !value.contains('@') {
        return None;
    }
    let addr = sip::NameAddr::parse(value).ok()?;
    sip::Uri::parse(addr.uri).ok()?.user
}

/// Finds the ACK of a 2xx we made: the dialog's Call-ID, our To tag and
/// the INVITE's CSeq number (a re-INVITE's 2xx is another).
fn ack_key(call_id: &str, to_tag: &str, cseq: u32) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(call_id.as_bytes());
    hasher.update(&[0]);
    hasher.update(to_tag.as_bytes());
    hasher.update(&cseq.to_be_bytes());
    hasher.digest()
}

/// Whether a URI asks for UDP by name (`;transport=udp`), which keeps
/// even a large request on UDP.
fn pins_udp(uri: &str) -> bool {
    // A Route or Path value is a name-addr: only what is inside `<>`.
    let uri = uri.split_once('<').map_or(uri, |(_, inner)| inner);
    let uri = uri.split('>').next().unwrap_or(uri);
    let params = uri.split('?').next().unwrap_or(uri);
    params.split(';').skip(1).any(|param| {
        let (name, value) = param.split_once('=').unwrap_or((param, ""));
        name.trim().eq_ignore_ascii_case("transport") && value.trim().eq_ignore_ascii_case("udp")
    })
}

/// A response made here to `request` from `source`: its top Via stamped
/// with `received`/`rport` as a forwarded request's would be (RFC 3581),
/// so a UA behind NAT learns its public address from our answers too.
fn local_response(
    request: &Message,
    source: SocketAddr,
    code: u16,
    reason: &str,
    to_tag: Option<&str>,
    extra: &[(&str, &str)],
) -> Vec<u8> {
    let top_via = forward::stamped_top_via(request, source);
    build::response_with_top_via(request, code, reason, to_tag, extra, top_via.as_deref())
}

/// Logs and counts a relay `security.relay_to` refused (a debug line: any
/// sender can cause one per packet).
fn relay_refused(target: &str, hop: &Hop, why: crate::security::RelayRefusal) {
    tracing::debug!(%target, address = %hop.addr, reason = why.as_str(), "relay refused (security.relay_to)");
    crate::metrics::get().relay_refused(why.label());
}

/// Where responses to a request go. Over UDP: the source IP, and the source
/// port when the Via asked for rport (RFC 3581) or its sent-by port. Over
/// TCP responses use the request's connection; this is where to open a new
/// one if that is gone: the source IP and the sent-by port (§18.2.2).
fn reply_destination(msg: &Message, source: SocketAddr, protocol: Protocol) -> SocketAddr {
    match protocol {
        Protocol::Udp => forward::reply_address(msg, source),
        Protocol::Tcp | Protocol::Tls | Protocol::Ws | Protocol::Wss => {
            let port = msg
                .top_via()
                .and_then(|via| via.port)
                .unwrap_or(protocol.default_port());
            SocketAddr::new(source.ip(), port)
        }
    }
}

/// Retry-After in seconds (RFC 3261 §20.33), ignoring any comment or params.
pub fn retry_after(msg: &Message) -> Option<Duration> {
    let value = msg.header(HeaderName::RetryAfter)?;
    let digits: &str = value
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap_or("");
    digits.parse().ok().map(Duration::from_secs)
}
