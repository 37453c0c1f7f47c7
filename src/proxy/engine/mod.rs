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
mod client;
mod context;
#[cfg(test)]
mod fuzz;
pub mod route;
mod server;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use self::branch::{
    parse_client_branch, push_client_branch, push_stateless_branch, BranchTokens, CLIENT_BRANCH_LEN,
};
use self::client::{CancelTx, ClientState, ClientTx, Owner, SentMethod};
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

/// The failover of a relay to a name RFC 3263 found several places for:
/// a group of its own (`dns`) whose candidates share the URI and report
/// no health. §4.3: the next place after a transaction timeout (`timeout`,
/// 63·T1, just before Timer B or F would end the branch: a slow answer to
/// a MESSAGE must not deliver it twice) or a 503.
fn dns_failover(target: &str, first: Hop, alternates: Vec<Hop>, timeout: Duration) -> GatewayRelay {
    let uri: Arc<str> = Arc::from(target);
    GatewayRelay {
        group: Arc::from("dns"),
        policy: Arc::new(crate::proxy::decision::FailoverPolicy {
            passive_health: false,
            no_response: timeout,
            ..Default::default()
        }),
        candidates: std::iter::once(first)
            .chain(alternates)
            .map(|hop| crate::proxy::decision::RelayCandidate {
                uri: uri.clone(),
                hop,
                report_success: false,
                capacity: None,
            })
            .collect(),
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
    /// Transactions held at most (`limits.max_transactions`, this shard's
    /// share): above it new INVITEs get 503 and other new requests are dropped.
    pub max_transactions: usize,
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
}

/// The settings a reload changes in a running engine.
#[derive(Debug, Clone)]
pub struct Reconfigure {
    pub timers: TimerSettings,
    pub max_transactions: usize,
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

/// The timer queue is swept of ended transactions' timers once it holds
/// this many entries and more than [`TIMERS_PER_TRANSACTION`] per live
/// transaction (live ones hold at most four), so sweeps stay rare.
const TIMER_SWEEP_FLOOR: usize = 4096;
const TIMERS_PER_TRANSACTION: usize = 8;

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
    RunFailure(FailureRun),
    /// Every candidate of this group left was full, paced or drained.
    GatewayFull { group: Arc<str> },
    /// A call no BYE ended stopped counting after `call_max`.
    CallCollected(Collected),
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
}

/// The request whose branches all failed, and the best response they left
/// (None when they timed out).
#[derive(Debug)]
pub struct FailureRun {
    pub ticket: u64,
    pub request: Arc<Message>,
    pub source: SocketAddr,
    pub protocol: Protocol,
    pub preroute: Preroute,
    pub response: Option<Message>,
}

/// A request for the script, and the ticket its decision must name.
#[derive(Debug, Clone)]
pub struct ScriptRun {
    pub ticket: u64,
    pub request: Arc<Message>,
    pub source: SocketAddr,
    pub protocol: Protocol,
    pub preroute: Preroute,
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

    /// Transactions held (server, client and CANCEL).
    pub fn active(&self) -> usize {
        self.servers.len() + self.clients.len() + self.cancels.len()
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

    // ----- requests -------------------------------------------------------

    /// A request arrived from `source` over `protocol`; `flow` is the way
    /// back. `draining` refuses new dialogs with 503.
    pub fn handle_request(
        &mut self,
        now: Instant,
        msg: Message,
        source: SocketAddr,
        listener: usize,
        flow: F,
        draining: bool,
    ) {
        let Some(protocol) = self.config.listeners.get(listener).map(|l| l.protocol) else {
            tracing::warn!(listener, "request on an unknown listener; dropped");
            return;
        };
        let method = msg.method();
        let key = ServerKey::of(&msg, self.config.branch_secret[0]);
        match method {
            Some(Method::Ack) => {
                if self.absorb_ack_of_our_2xx(&msg) {
                    return;
                }
                if let Some(&slot) = self.server_index.get(&key) {
                    if self.absorb_ack(slot, now) {
                        return;
                    }
                    // An ACK for a 2xx (an RFC 2543 one shares the INVITE's
                    // key): end to end, so the script routes it.
                } else if msg.to_tag().is_some_and(|tag| key.is_stateless_tag(tag)) {
                    // The ACK of a refusal we sent statelessly (483, 482,
                    // 420, 503): it ends here.
                    return;
                }
            }
            Some(Method::Cancel) => {
                self.on_cancel(now, &msg, key, source, protocol, flow);
                return;
            }
            _ => {
                if let Some(&slot) = self.server_index.get(&key) {
                    self.replay_last_response(slot);
                    return;
                }
            }
        }

        let is_ack = method == Some(Method::Ack);
        let reply_to = reply_destination(&msg, source, protocol);
        let reply = |engine: &mut Self, code: u16, reason: &str, extra: &[(&str, &str)]| {
            let addresses = (source, reply_to);
            engine.reply_stateless(&msg, &key, &flow, addresses, code, reason, extra)
        };
        let refused_while_draining = matches!(method, Some(Method::Invite | Method::Options));
        if draining && refused_while_draining && msg.to_tag().is_none() {
            // Tell whoever balances over us to go elsewhere for a while.
            let retry_after = itoa::Buffer::new()
                .format(self.config.drain_secs.max(1))
                .to_string();
            let extra = [("Retry-After", retry_after.as_str())];
            reply(self, 503, "Service Unavailable", &extra);
            return;
        }
        if !is_ack && self.active() >= self.config.max_transactions {
            crate::metrics::get().transactions_refused.inc();
            if method == Some(Method::Invite) {
                reply(
                    self,
                    503,
                    "Service Unavailable",
                    &[("Retry-After", FULL_RETRY_AFTER)],
                );
            }
            return;
        }
        let loop_hash = forward::loop_hash(&msg);
        if is_ack && msg.max_forwards() == Some(0) {
            // §16.3 step 3 holds for ACK too (it cannot be answered): it
            // bounds an ACK loop at Max-Forwards hops.
            tracing::debug!(
                call_id = msg.call_id().unwrap_or(""),
                "ACK dropped: Max-Forwards 0"
            );
            return;
        }
        if !is_ack {
            let looping = || forward::is_looping(&msg, loop_hash, |via| self.is_our_via(via));
            if let Some(refusal) = route::refusal(&msg, looping) {
                let unsupported = refusal
                    .unsupported
                    .as_deref()
                    .map(|list| ("Unsupported", list));
                let extra: Vec<(&str, &str)> = unsupported.into_iter().collect();
                reply(self, refusal.code, refusal.reason, &extra);
                return;
            }
        }

        let mut preroute = route::preroute(&msg, &self.config.local);
        let checked = match msg.to_tag() {
            Some(_) => self.check_dialog_route(&msg, &preroute),
            None => Ok(None),
        };
        preroute.dialog_caller = checked.unwrap_or(None);
        if let Err(refused) = checked {
            crate::metrics::get().relay_refused(refused);
            if is_ack {
                tracing::debug!(
                    call_id = msg.call_id().unwrap_or(""),
                    "ACK dropped: our Route without a valid seal"
                );
            } else {
                reply(self, 403, "Forbidden", &[]);
            }
            return;
        }
        let ours = preroute.routes_popped > 0 || preroute.strict_ruri.is_some();
        if method == Some(Method::Bye) && ours {
            // The dialog ends here: its call no longer counts. A BYE that
            // does not follow our Route is not relayed by us, so the call
            // goes on as far as we know.
            let tags = (msg.from_tag().unwrap_or(""), msg.to_tag().unwrap_or(""));
            self.calls.end(msg.call_id().unwrap_or(""), tags.0, tags.1);
        }
        let msg = Arc::new(msg);
        self.next_slot += 1;
        let ticket = self.next_slot;
        let slot = (!is_ack).then(|| {
            let invite = method == Some(Method::Invite);
            let mut tx = ServerTx {
                key,
                started: now,
                request: Some(msg.clone()),
                flow: flow.clone(),
                protocol,
                listener,
                source,
                reply_to,
                invite,
                state: ServerState::Proceeding,
                last_response: None,
                to_tag: None,
                branches: Vec::new(),
                context: ResponseContext::default(),
                final_sent: false,
                cancelled: false,
                retransmit: self.settings().t1,
                loop_hash,
                preroute: preroute.clone(),
                failover: None,
                failure_hook: FailureHook::NotRun,
                ack_key: None,
            };
            if invite {
                let trying = Bytes::from(local_response(&msg, source, 100, "Trying", None, &[]));
                self.reply(&flow, reply_to, trying.clone(), Some(100));
                tx.last_response = Some(trying);
            }
            self.server_index.insert(key, ticket);
            self.servers.insert(ticket, tx);
            ticket
        });
        self.pending.insert(
            ticket,
            Pending {
                msg: msg.clone(),
                source,
                protocol,
                listener,
                loop_hash,
                preroute: preroute.clone(),
                slot,
                failure_run: false,
            },
        );
        match self.path_route(&msg, &preroute, (source, protocol)) {
            Some(PathRoute::Flow) => {
                // Toward a client registered through us: over its flow,
                // and we stay in the dialog (both sides named).
                let decision = Decision {
                    action: Some(Action::Relay { uri: None }),
                    record_route: true,
                    routes_popped: preroute.routes_popped,
                    new_ruri: preroute.strict_ruri.clone(),
                    ..Decision::default()
                };
                let mut no_lookup = |uri: &str| Err(HopError::Unsupported(uri.to_string()));
                self.handle_decision(now, ticket, decision, &mut no_lookup);
            }
            Some(PathRoute::Stale) => {
                self.pending.remove(&ticket);
                match slot {
                    Some(slot) => self.reply_local(slot, 430, "Flow Failed", &[], now),
                    None => tracing::debug!("ACK toward a stale flow dropped"),
                }
            }
            None => self.out.push_back(Output::RunScript(ScriptRun {
                ticket,
                request: msg,
                source,
                protocol,
                preroute,
            })),
        }
    }

    /// An in-dialog request that pops our Route must carry our seal over
    /// its dialog (see `proxy::seal`): a Route of ours copied into another
    /// dialog, or written by hand, is refused. One that pops nothing of
    /// ours is the script's to judge (`loose_route()` is then False).
    /// Returns the dialog's caller the seal proves, or why the request is
    /// refused (the metric's reason).
    fn check_dialog_route(
        &self,
        msg: &Message,
        preroute: &Preroute,
    ) -> Result<Option<IpAddr>, &'static str> {
        let strict = preroute.strict_ruri.is_some();
        if preroute.routes_popped == 0 && !strict {
            return Ok(None);
        }
        match self.config.seals.check(msg, preroute.routes_popped, strict) {
            SealCheck::Valid(caller) => Ok(Some(caller)),
            SealCheck::Missing if self.config.accept_unsealed => Ok(None),
            SealCheck::Missing => Err("dialog_seal_missing"),
            SealCheck::Forged => Err("dialog_seal_forged"),
        }
    }

    /// A retransmitted request: send the last response again (RFC 3261
    /// §17.2.1, §17.2.2), except after a 2xx, which the UAs retransmit.
    fn replay_last_response(&mut self, slot: u64) {
        let Some(tx) = self.servers.get(&slot) else {
            return;
        };
        if let (Some(response), false) = (&tx.last_response, tx.state == ServerState::Accepted) {
            let (flow, dest, bytes) = (tx.flow.clone(), tx.reply_to, response.clone());
            self.reply(&flow, dest, bytes, None);
        }
    }

    /// Absorbs the ACK of a non-2xx final; false when the transaction did
    /// not send one (the ACK is then for a 2xx, and goes on).
    fn absorb_ack(&mut self, slot: u64, now: Instant) -> bool {
        let t4 = self.settings().t4;
        let Some(tx) = self.servers.get_mut(&slot) else {
            return false;
        };
        match tx.state {
            ServerState::Completed => {
                tx.state = ServerState::Confirmed;
                let linger = if tx.protocol.is_reliable() {
                    Duration::ZERO
                } else {
                    t4
                };
                self.timers
                    .arm(now, linger, TimerOwner::Server(slot), TimerKind::I);
                true
            }
            ServerState::Confirmed => true,
            ServerState::Proceeding | ServerState::Accepted => false,
        }
    }

    fn on_cancel(
        &mut self,
        now: Instant,
        msg: &Message,
        key: ServerKey,
        source: SocketAddr,
        protocol: Protocol,
        flow: F,
    ) {
        let reply_to = reply_destination(msg, source, protocol);
        // The INVITE with the same branch and sent-by, from the same host.
        let slot = self
            .server_index
            .get(&key.invite_of_cancel())
            .copied()
            .filter(|slot| {
                self.servers
                    .get(slot)
                    .is_some_and(|tx| tx.source.ip() == source.ip())
            });
        let Some(slot) = slot else {
            let reason = "Call/Transaction Does Not Exist";
            self.reply_stateless(msg, &key, &flow, (source, reply_to), 481, reason, &[]);
            return;
        };
        let Some(tx) = self.servers.get_mut(&slot) else {
            return;
        };
        let to_tag = tx.to_tag.get_or_insert_with(build::new_tag).clone();
        let ok = local_response(msg, source, 200, "OK", Some(&to_tag), &[]);
        self.reply(&flow, reply_to, Bytes::from(ok), Some(200));
        self.cancel_request(slot, now);
    }

    /// The caller gave the request up (its CANCEL, or its connection
    /// closed): every branch is CANCELed, and the caller gets 487.
    fn cancel_request(&mut self, slot: u64, now: Instant) {
        let Some(tx) = self.servers.get_mut(&slot) else {
            return;
        };
        let done = tx.final_sent || tx.cancelled;
        tx.cancelled = true;
        let branches = tx.branches.clone();
        let hook_running = matches!(tx.failure_hook, FailureHook::Running(_));
        let nothing_pending = tx.context.branches_pending() == 0;
        if done {
            return;
        }
        if hook_running {
            // Every branch is over; the script's answer is no longer wanted.
            self.send_best(slot, now);
            return;
        }
        if nothing_pending {
            // No branch is running (none yet, or the script answered only
            // provisionally after they ended): 487 from here.
            self.reply_local(slot, 487, "Request Terminated", &[], now);
            return;
        }
        for token in branches {
            self.cancel_branch(token, now);
            self.give_up_if_unanswered(slot, token, now);
        }
    }

    /// After the caller's CANCEL, a branch that has not answered at all
    /// cannot be CANCELed yet (§9.1) and may never answer: it is given up
    /// at once as if it had returned 487, so the caller hears 487 without
    /// waiting for Timer B (Kamailio's `cancel_b_method` 1). It is still
    /// CANCELed, and its final ACKed, should it answer later.
    fn give_up_if_unanswered(&mut self, slot: u64, token: u64, now: Instant) {
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        if client.got_provisional || client.settled || !client.invite {
            return;
        }
        client.abandoned = true;
        client.settled = true;
        self.branch_done(slot, Some(Candidate::TIMEOUT), now);
    }

    // ----- decisions --------------------------------------------------------

    /// The script's decision for the request of `ticket`. `next_hop` maps a
    /// URI to where its packets go (a gateway address, or DNS). When a next
    /// hop's name is not resolved yet ([`HopError::Lookup`]), nothing is sent
    /// and the decision comes back as [`Deferred`]: hand it in again once
    /// the name is looked up. The request stays pending meanwhile, and a
    /// CANCEL answered in the wait makes the later call a no-op.
    pub fn handle_decision(
        &mut self,
        now: Instant,
        ticket: u64,
        mut decision: Decision,
        next_hop: &mut dyn NextHops,
    ) -> Option<Deferred> {
        let pending = self.pending.remove(&ticket)?;
        let slot = pending.slot;
        if slot.is_some_and(|slot| self.servers.get(&slot).is_none_or(|tx| tx.final_sent)) {
            // Answered meanwhile (a CANCEL's 487): nothing more to do.
            return None;
        }
        let msg = pending.msg.clone();
        if pending.failure_run {
            let slot = slot?;
            let cancelled = self.servers.get_mut(&slot).is_none_or(|tx| {
                tx.failure_hook = FailureHook::Ran;
                tx.cancelled
            });
            if decision.action.is_none() || cancelled {
                // Nothing more to try: the best response goes upstream.
                self.send_best(slot, now);
                return None;
            }
        }
        if decision.failed {
            match slot {
                Some(slot) => self.reply_local(slot, 500, "Server Internal Error", &[], now),
                None => tracing::warn!(
                    call_id = msg.call_id().unwrap_or(""),
                    "ACK dropped: the script failed"
                ),
            }
            return None;
        }
        match decision.action.take() {
            None => {
                self.no_action(slot, &msg, now);
                None
            }
            Some(Action::Reply {
                code,
                reason,
                headers,
            }) => {
                let Some(slot) = slot else {
                    tracing::debug!("script replied to an ACK; nothing sent");
                    return None;
                };
                let reason = reason.as_deref().unwrap_or(build::default_reason(code));
                let extra: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(name, value)| (name.as_str(), value.as_str()))
                    .collect();
                self.reply_local(slot, code, reason, &extra, now);
                if code < 200 {
                    // Nothing else will answer: bound the transaction's life.
                    self.timers.arm(
                        now,
                        self.settings().timeout(),
                        TimerOwner::Server(slot),
                        TimerKind::Guard,
                    );
                }
                None
            }
            Some(Action::Relay { uri }) => {
                let (mut decision, host) =
                    self.relay(now, &pending, decision, uri.as_deref(), next_hop)?;
                decision.action = Some(Action::Relay { uri });
                Some(self.defer(ticket, pending, decision, vec![host]))
            }
            Some(Action::Fork { targets }) => {
                let Some(slot) = slot else {
                    tracing::debug!("script forked an ACK; nothing sent");
                    return None;
                };
                let hops: Vec<_> = targets
                    .iter()
                    .map(|target| {
                        let first_hop = target.path.first().map_or_else(
                            || target.uri.clone(),
                            |route| {
                                sip::NameAddr::parse(route)
                                    .map_or_else(|_| route.clone(), |a| a.uri.to_string())
                            },
                        );
                        next_hop.next_hop(&first_hop)
                    })
                    .collect();
                // Every branch's hop is known before the first opens, so a
                // lookup never leaves the fork half open.
                // Every name missing is looked up at once.
                let hosts: Vec<String> = hops
                    .iter()
                    .filter_map(|hop| match hop {
                        Err(HopError::Lookup(host)) => Some(host.clone()),
                        _ => None,
                    })
                    .collect();
                if !hosts.is_empty() {
                    decision.action = Some(Action::Fork { targets });
                    return Some(self.defer(ticket, pending, decision, hosts));
                }
                // RFC 5393: the branches share the request's Max-Breadth.
                let parallel = targets.len();
                let Some(shares) = breadth_shares(&msg, parallel) else {
                    self.reply_local(slot, 440, "Max-Breadth Exceeded", &[], now);
                    return None;
                };
                let mut refused = 0;
                for ((target, hop), breadth) in targets.iter().zip(hops).zip(shares) {
                    if !sip::parse::is_valid_request_uri(&target.uri) {
                        tracing::warn!(target = %target.uri, "fork branch skipped: not a Request-URI");
                        continue;
                    }
                    let hop = match hop {
                        Err(HopError::Refused(hop, why))
                            if target.vouched && why.may_be_vouched() =>
                        {
                            Ok(hop)
                        }
                        Err(HopError::Refused(hop, why)) => {
                            refused += 1;
                            relay_refused(&target.uri, &hop, why);
                            continue;
                        }
                        hop => hop,
                    };
                    match hop {
                        Ok(hop) if !self.listening[hop.protocol.index()] => {
                            tracing::debug!(target = %target.uri, protocol = hop.protocol.as_str(), "fork branch skipped: no listener of its protocol")
                        }
                        Ok(hop) => {
                            let plan = BranchPlan {
                                hop,
                                new_ruri: Some(&target.uri),
                                push_routes: &target.path,
                                routes_popped: decision.routes_popped,
                                append_route: None,
                                candidate: None,
                                max_breadth: Some(breadth),
                                may_leave_udp: !pins_udp(
                                    target.path.first().unwrap_or(&target.uri),
                                ),
                                call_slot: None,
                            };
                            self.open_branch(now, &pending, &decision, plan);
                        }
                        Err(e) => {
                            tracing::warn!(target = %target.uri, error = %e, "fork branch skipped")
                        }
                    }
                }
                if self
                    .servers
                    .get(&slot)
                    .is_some_and(|tx| tx.context.branches_pending() == 0)
                {
                    if refused > 0 {
                        self.reply_local(slot, 403, "Forbidden", &[], now);
                    } else {
                        self.reply_local(slot, 478, "Unresolvable Destination", &[], now);
                    }
                }
                None
            }
        }
    }

    /// Keeps the request pending while `host` is looked up.
    fn defer(
        &mut self,
        ticket: u64,
        pending: Pending,
        decision: Decision,
        hosts: Vec<String>,
    ) -> Deferred {
        self.pending.insert(ticket, pending);
        Deferred {
            ticket,
            decision,
            hosts,
        }
    }

    /// The script took no action. An INVITE has had its 100 Trying and must
    /// not be left hanging: it gets a 500. Anything else is dropped.
    fn no_action(&mut self, slot: Option<u64>, msg: &Message, now: Instant) {
        let Some(slot) = slot else {
            tracing::debug!(
                call_id = msg.call_id().unwrap_or(""),
                "ACK dropped: no action"
            );
            return;
        };
        if msg.method() == Some(Method::Invite) {
            tracing::warn!(
                call_id = msg.call_id().unwrap_or(""),
                "the script took no action on an INVITE; answering 500"
            );
            self.reply_local(slot, 500, "Server Internal Error", &[], now);
        } else {
            tracing::debug!(
                method = msg.method_str(),
                call_id = msg.call_id().unwrap_or(""),
                "script took no action; request dropped"
            );
            self.absorb_retransmissions(slot, now);
        }
    }

    /// A non-INVITE dropped without an answer: its transaction stays, with
    /// nothing to replay, until Timer J, so its retransmissions end here
    /// rather than run the script again.
    fn absorb_retransmissions(&mut self, slot: u64, now: Instant) {
        let timeout = self.settings().timeout();
        let Some(tx) = self.servers.get_mut(&slot) else {
            return;
        };
        tx.final_sent = true;
        tx.state = ServerState::Completed;
        tx.request = None;
        tx.failover = None;
        tx.last_response = None;
        let linger = if tx.protocol.is_reliable() {
            Duration::ZERO
        } else {
            timeout
        };
        self.timers
            .arm(now, linger, TimerOwner::Server(slot), TimerKind::J);
    }

    /// `relay(uri)`: to `uri` as the next hop, else along the Route set
    /// (§16.6 step 7 when its first hop is a strict router), else to the
    /// Request-URI. A next hop still to be looked up gives the decision
    /// back, with the name.
    fn relay(
        &mut self,
        now: Instant,
        pending: &Pending,
        mut decision: Decision,
        uri: Option<&str>,
        next_hop: &mut dyn NextHops,
    ) -> Option<(Decision, String)> {
        let gateway = decision.gateway.take();
        if let (Some(slot), Some(relay), Some(uri)) = (pending.slot, gateway, uri) {
            let first = relay.candidates.first();
            if first.is_some_and(|c| *c.uri == *uri) {
                self.relay_to_gateway(now, pending, slot, decision, relay);
                return None;
            }
        }
        let msg = &pending.msg;
        let dropped = usize::from(pending.preroute.strict_ruri.is_some());
        let route::RelayTarget {
            target,
            first_remaining,
            routes_popped,
            new_ruri,
            append_route,
        } = route::relay_target(msg, &decision, uri, dropped);
        // Toward a caller on a connection: over that connection, whatever
        // its Contact says (a browser's does not resolve).
        let flow = match (uri, &first_remaining) {
            (None, false) => self
                .popped_flow(msg, routes_popped, (pending.source, pending.protocol))
                .map(|(_, hop)| udp_flow_or_contact(hop, &target)),
            _ => None,
        };
        // The dialog's own caller may be reached wherever it sits: its
        // address is under our seal.
        let from_flow = flow.is_some();
        let hop = match flow.map_or_else(|| next_hop.next_hop(&target), Ok) {
            Err(HopError::Refused(hop, why))
                if why.may_be_vouched_by_dialog()
                    && pending.preroute.dialog_caller
                        == Some(crate::security::canonical(hop.addr.ip())) =>
            {
                Ok(hop)
            }
            hop => hop,
        };
        match hop {
            Ok(hop) => {
                // RFC 3263: a name with more than one place to try fails
                // over to the next on a timeout or a 503 (§4.3), as a
                // gateway group's candidates do (without their health).
                // Places over a protocol we do not listen on are dropped:
                // no Via could name how the request left (§18.1.1).
                let mut alternates = match (pending.slot, &append_route, from_flow) {
                    (Some(_), None, false) => next_hop.alternates(&target),
                    _ => Vec::new(),
                };
                alternates.retain(|alternate| self.listening[alternate.protocol.index()]);
                let hop = match (self.listening[hop.protocol.index()], alternates.is_empty()) {
                    (true, _) => hop,
                    (false, false) => alternates.remove(0),
                    (false, true) => {
                        tracing::debug!(%target, protocol = hop.protocol.as_str(), "no listener of the next hop's protocol");
                        if let Some(slot) = pending.slot {
                            self.reply_local(slot, 503, "Service Unavailable", &[], now)
                        }
                        return None;
                    }
                };
                if let (Some(slot), false) = (pending.slot, alternates.is_empty()) {
                    let decision = Decision {
                        new_ruri: new_ruri.clone(),
                        routes_popped,
                        ..decision
                    };
                    let relay = dns_failover(&target, hop, alternates, self.settings().t1 * 63);
                    self.relay_to_gateway(now, pending, slot, decision, relay);
                    return None;
                }
                let plan = BranchPlan {
                    hop,
                    new_ruri: new_ruri.as_deref(),
                    push_routes: &[],
                    routes_popped,
                    append_route: append_route.as_deref(),
                    candidate: None,
                    max_breadth: None,
                    may_leave_udp: !pins_udp(&target),
                    call_slot: None,
                };
                self.open_branch(now, pending, &decision, plan);
            }
            Err(HopError::Lookup(host)) => return Some((decision, host)),
            Err(HopError::Refused(hop, why)) => {
                relay_refused(&target, &hop, why);
                if let Some(slot) = pending.slot {
                    self.reply_local(slot, 403, "Forbidden", &[], now)
                }
            }
            Err(e) => {
                tracing::debug!(target = %target, error = %e, "cannot relay");
                if let Some(slot) = pending.slot {
                    if routable_scheme(&target) {
                        self.reply_local(slot, 478, "Unresolvable Destination", &[], now)
                    } else {
                        // §16.3 step 1 / §21.4.16.
                        self.reply_local(slot, 416, "Unsupported URI Scheme", &[], now)
                    }
                }
            }
        }
        None
    }

    /// Our Record-Route or Path entry on `listener`'s side for the peer
    /// at `peer` over `protocol`: the listener's, with a flow token of
    /// `kind` as its user part.
    fn flow_entry(
        &self,
        kind: TokenKind,
        protocol: Protocol,
        peer: SocketAddr,
        (listener, sips): (usize, bool),
    ) -> String {
        let token = self.config.flow_tokens.encode(kind, protocol, peer);
        let name = self.route_name(listener, sips);
        let (scheme, host_and_params) = name
            .strip_prefix("<sips:")
            .map(|rest| ("sips", rest))
            .unwrap_or(("sip", name.strip_prefix("<sip:").unwrap_or(name)));
        format!("<{scheme}:{token}@{host_and_params}")
    }

    /// Our Record-Route value on `listener`: `sips:` on a TLS or WSS
    /// listener when the request is a `sips:` one.
    fn route_name(&self, listener: usize, sips: bool) -> &str {
        let secure = sips
            .then(|| {
                self.record_route_sips
                    .get(listener)
                    .and_then(Option::as_deref)
            })
            .flatten();
        secure.unwrap_or_else(|| self.record_route.get(listener).map_or("", String::as_str))
    }

    /// The connection a request that popped our Route goes on: the one
    /// the flow token in the *last* entry we popped names. Where a token is
    /// involved we write one entry for each side (see `route_entries`), and
    /// a request pops the sender's side first, so the last names the other
    /// side, whatever address the sender now has (a browser whose
    /// WebSocket reconnected, a phone that moved networks). A Record-Route
    /// token counts only within a dialog: an initial request must not reach
    /// a client through a token some dialog peer has seen.
    fn popped_flow(
        &self,
        msg: &Message,
        popped: usize,
        (source, protocol): (SocketAddr, Protocol),
    ) -> Option<(TokenKind, Hop)> {
        let last = msg.header_values(HeaderName::Route).take(popped).last()?;
        let (kind, hop) = self.config.flow_tokens.decode(route_user(last)?)?;
        // A dialog from an earlier build, which wrote one entry only: a
        // token naming the sender's own flow is going the other way.
        let own_flow = popped == 1 && hop.addr == source && hop.protocol == protocol;
        (!own_flow && (kind == TokenKind::Path || msg.to_tag().is_some())).then_some((kind, hop))
    }

    /// How the core routes an initial request that our Path sent here
    /// (RFC 3327), without the script: its popped Route names a client's
    /// flow by a Path token. None for any other request.
    fn path_route(
        &self,
        msg: &Message,
        preroute: &Preroute,
        arrived: (SocketAddr, Protocol),
    ) -> Option<PathRoute> {
        let popped = preroute.routes_popped;
        if popped == 0 || msg.to_tag().is_some() || msg.method() == Some(Method::Ack) {
            return None;
        }
        let dropped = usize::from(preroute.strict_ruri.is_some());
        if route::first_remaining_route(msg, popped, dropped).is_some() {
            return None;
        }
        if let Some((TokenKind::Path, _)) = self.popped_flow(msg, popped, arrived) {
            return Some(PathRoute::Flow);
        }
        // A Path token that does not verify is one of an earlier run's
        // (connections do not outlive us): the flow is gone. Only the
        // token's shape says so: `sip:proxy@...` is no token.
        msg.header_values(HeaderName::Route)
            .take(popped)
            .filter_map(route_user)
            .any(|user| {
                crate::proxy::flow::is_token_shaped(TokenKind::Path, user)
                    && self.config.flow_tokens.decode(user).is_none()
            })
            .then_some(PathRoute::Stale)
    }

    /// `relay(uri)` to the first of a gateway group's candidates: the
    /// request keeps the rest to fail over to (DESIGN.md §4.3).
    fn relay_to_gateway(
        &mut self,
        now: Instant,
        pending: &Pending,
        slot: u64,
        decision: Decision,
        relay: GatewayRelay,
    ) {
        let failover = Box::new(Failover {
            relay,
            decision,
            next: 0,
            attempts: 0,
            accepted: false,
        });
        self.open_candidate(now, pending, slot, failover);
    }

    /// Opens a branch to the failover's next candidate that can take the
    /// request, and keeps the failover with the server transaction. An
    /// INVITE takes a slot at its destination first: one that is full,
    /// paced or drained is skipped like one that is down, without
    /// counting as a failure. When none is left, the request is answered
    /// 503 with Retry-After (or `@proxy.on_failure` runs). Returns the
    /// candidate's uri.
    fn open_candidate(
        &mut self,
        now: Instant,
        pending: &Pending,
        slot: u64,
        mut failover: Box<Failover>,
    ) -> Option<Arc<str>> {
        let invite = pending.msg.method() == Some(Method::Invite);
        let mut refused: Option<u64> = None;
        let (index, candidate, call_slot) = loop {
            let index = failover.next;
            let Some(candidate) = failover.relay.candidates.get(index) else {
                let group = failover.relay.group.clone();
                if let Some(tx) = self.servers.get_mut(&slot) {
                    tx.failover = Some(failover);
                }
                if let Some(retry_after) = refused {
                    self.every_candidate_full(now, slot, group, retry_after);
                }
                return None;
            };
            failover.next += 1;
            let record_routed = failover.decision.record_route;
            match take_slot(
                candidate,
                &failover.relay.group,
                now,
                (invite, record_routed),
            ) {
                Ok(call_slot) => break (index, candidate.clone(), call_slot),
                Err(refusal) => {
                    let wait = refusal.retry_after_secs();
                    refused = Some(refused.map_or(wait, |known| known.min(wait)));
                }
            }
        };
        failover.attempts += 1;
        let decision = &failover.decision;
        let plan = BranchPlan {
            hop: candidate.hop,
            new_ruri: decision.new_ruri.as_deref(),
            push_routes: &[],
            routes_popped: decision.routes_popped,
            append_route: None,
            candidate: Some((
                index,
                failover.relay.policy.no_response,
                failover.relay.policy.strict_source,
            )),
            max_breadth: None,
            may_leave_udp: !pins_udp(&candidate.uri),
            call_slot,
        };
        self.open_branch(now, pending, decision, plan);
        if let Some(tx) = self.servers.get_mut(&slot) {
            tx.failover = Some(failover);
        }
        Some(candidate.uri)
    }

    /// No candidate could take the request: it settles as a 503 with
    /// `retry_after` once its other branches (if any) are done.
    fn every_candidate_full(&mut self, now: Instant, slot: u64, group: Arc<str>, retry_after: u64) {
        self.out.push_back(Output::GatewayFull { group });
        let Some(tx) = self.servers.get_mut(&slot) else {
            return;
        };
        tx.context.open_branch();
        self.branch_done(slot, Some(Candidate::Full(retry_after)), now);
    }

    /// A branch to gateway candidate `index` failed: its group hears of it,
    /// and the request fails over to the next candidate when it still may
    /// (never after a CANCEL, a final response sent, or a branch that took
    /// the call). Returns whether a new branch was opened.
    fn gateway_failed(
        &mut self,
        now: Instant,
        (slot, token, index): (u64, u64, usize),
        failure: RelayFailure,
        retry_after: Option<Duration>,
    ) -> bool {
        // A branch counts once for its destination's health, whatever else
        // befalls it (silence, then Timer B; a link failure, then silence).
        // A destination that answered 100 is up: silence after it, or a 408,
        // is its callee's timeout, which any caller can provoke by calling
        // a number that never answers.
        let first_report = self.clients.get_mut(&token).is_some_and(|client| {
            let callee_timeout = client.got_provisional
                && matches!(
                    failure,
                    RelayFailure::NoResponse | RelayFailure::Status(408)
                );
            !std::mem::replace(&mut client.failure_reported, true) && !callee_timeout
        });
        let Some(tx) = self.servers.get_mut(&slot) else {
            return false;
        };
        let Some(failover) = tx.failover.take() else {
            return false;
        };
        let group = failover.relay.group.clone();
        let failed = failover.relay.candidates.get(index).map(|c| c.uri.clone());
        let passive_health = failover.relay.policy.passive_health;
        if let (Some(uri), true, true) = (&failed, first_report, passive_health) {
            self.out.push_back(Output::Health(HealthReport {
                group: group.clone(),
                uri: uri.clone(),
                failure: Some((failure, retry_after)),
            }));
        }
        // Never past an INVITE's end of life: its caller is owed a 408.
        let alive = !tx.invite || now < tx.started + self.config.timers.max_invite_lifetime;
        let may_fail_over = !tx.final_sent && !tx.cancelled && alive;
        let request = tx.request.clone();
        let (Some(msg), Some(failed), true, Some(_)) =
            (request, failed, may_fail_over, failover.next_candidate())
        else {
            tx.failover = Some(failover);
            return false;
        };
        let pending = self.pending_of(slot, msg);
        let call_id = pending.msg.call_id().unwrap_or("").to_string();
        let Some(next) = self.open_candidate(now, &pending, slot, failover) else {
            return false;
        };
        self.out.push_back(Output::Failover(FailoverEvent {
            group,
            call_id,
            failed,
            next,
            failure,
        }));
        true
    }

    /// A candidate branch answered `code`: a success for its destination's
    /// passive health when from 101 to 499 (a 100 proves only that the
    /// host is up), and a 101–299 takes the call, unless the branch was
    /// given up for another already. A given-up branch's late answer is no
    /// success: it came too late for its caller, and it would wipe out the
    /// failure its silence counted.
    fn gateway_answered(&mut self, slot: u64, index: usize, code: u16, abandoned: bool) {
        let Some(failover) = self
            .servers
            .get_mut(&slot)
            .and_then(|tx| tx.failover.as_mut())
        else {
            return;
        };
        if (101..300).contains(&code) && !abandoned {
            failover.accepted = true;
        }
        let group = &failover.relay.group;
        let Some(candidate) = failover.relay.candidates.get_mut(index) else {
            return;
        };
        if (101..500).contains(&code) && !abandoned && std::mem::take(&mut candidate.report_success)
        {
            self.out.push_back(Output::Health(HealthReport {
                group: group.clone(),
                uri: candidate.uri.clone(),
                failure: None,
            }));
        }
    }

    /// The failure a final response from a candidate amounts to, if its
    /// group's policy lists the code.
    fn status_failure(&self, slot: u64, code: u16) -> Option<RelayFailure> {
        let failover = self.servers.get(&slot)?.failover.as_ref()?;
        failover
            .relay
            .policy
            .on_codes
            .contains(&code)
            .then_some(RelayFailure::Status(code))
    }

    /// The connection to `hop` failed (a TCP connect refused, a reset; a
    /// flow when the peer had opened it). A branch there with no answer yet
    /// ends now rather than at Timer B/F:
    /// - toward a gateway candidate, the request fails over (RFC 3261
    ///   §8.1.3.1 treats a transport error as a 503);
    /// - toward any other hop, it is as if the hop had answered 503 (§16.9),
    ///   which goes upstream as a 500 (§16.7 step 6);
    /// - over a client's own connection (a flow), it ends with 430 Flow
    ///   Failed (RFC 5626 §5.3), ringing or not: no answer can come, and
    ///   nothing can be sent to it any more.
    pub fn handle_link_failure(&mut self, now: Instant, hop: &Hop) {
        if hop.flow {
            // A caller's own connection closed (a browser tab, a phone
            // gone): when no new connection can reach it (§18.2.2 would
            // open one to its Via), nobody is left to answer its pending
            // INVITEs, so they are CANCELed rather than left ringing until
            // Timer C.
            let orphaned: Vec<u64> = self
                .servers
                .iter()
                .filter(|(_, tx)| {
                    tx.invite
                        && !tx.final_sent
                        && tx.protocol == hop.protocol
                        && tx.source == hop.addr
                        && !reachable_anew(tx)
                })
                .map(|(&slot, _)| slot)
                .collect();
            for slot in orphaned {
                tracing::debug!(caller = %hop.addr, "the caller's connection closed; CANCELing its INVITE");
                self.cancel_request(slot, now);
            }
        }
        let waiting: Vec<(u64, bool, bool)> = self
            .clients
            .iter()
            .filter(|(_, c)| c.hop == *hop && c.hop.flow == hop.flow && !c.settled)
            .filter(|(_, c)| match c.hop.flow {
                true => matches!(c.state, ClientState::Trying | ClientState::Proceeding),
                false => c.state == ClientState::Trying,
            })
            .map(|(&token, c)| (token, c.hop.flow, c.candidate.is_some()))
            .collect();
        for (token, flow, candidate) in waiting {
            if self.fall_back_to_udp(token, now) {
                continue;
            }
            match (flow, candidate) {
                (true, _) => {
                    self.end_branch(token, now, "flow failed", |_| Some(Candidate::FLOW_FAILED))
                }
                (false, true) => self.candidate_failed(now, token, RelayFailure::Transport),
                (false, false) => self.end_branch(token, now, "transport error", |_| {
                    Some(Candidate::TRANSPORT_ERROR)
                }),
            }
        }
    }

    /// A branch to a candidate got no response in time: if the request
    /// fails over, this branch is given up (CANCELed once it answers).
    fn candidate_silent(&mut self, now: Instant, token: u64) {
        self.candidate_failed(now, token, RelayFailure::NoResponse);
    }

    /// A branch to a candidate failed without a final response: if the
    /// request fails over, this branch is given up (CANCELed should it
    /// answer after all).
    fn candidate_failed(&mut self, now: Instant, token: u64, failure: RelayFailure) {
        let Some(client) = self.clients.get(&token) else {
            return;
        };
        let (Owner::Server(slot), Some(index), false) =
            (client.owner, client.candidate, client.settled)
        else {
            return;
        };
        if !self.gateway_failed(now, (slot, token, index), failure, None) {
            if failure == RelayFailure::Transport {
                // Nowhere left to go, and nothing will come over a dead
                // link: the branch ends now rather than at Timer B, as if
                // it had answered 503 (§16.9).
                self.end_branch(token, now, "transport error", |_| {
                    Some(Candidate::TRANSPORT_ERROR)
                });
            }
            return;
        }
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        client.abandoned = true;
        client.settled = true;
        // Given up for another: its slot goes free now, not at Timer B (a
        // late 2xx from it is then relayed but not counted).
        client.call_slot = None;
        let invite = client.invite;
        self.cancel_branch(token, now);
        if let Some(tx) = self.servers.get_mut(&slot) {
            tx.context.settle(invite.then_some(Candidate::TIMEOUT));
        }
    }

    /// What another branch of a server transaction's request is built from.
    fn pending_of(&self, slot: u64, msg: Arc<Message>) -> Pending {
        let tx = self.servers.get(&slot);
        Pending {
            msg,
            source: tx.map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |tx| tx.source),
            protocol: tx.map_or(Protocol::Udp, |tx| tx.protocol),
            listener: tx.map_or(0, |tx| tx.listener),
            loop_hash: tx.map_or(0, |tx| tx.loop_hash),
            preroute: tx.map(|tx| tx.preroute.clone()).unwrap_or_default(),
            slot: Some(slot),
            failure_run: false,
        }
    }

    /// Forwards the request on one new branch (statelessly for an ACK).
    fn open_branch(
        &mut self,
        now: Instant,
        pending: &Pending,
        decision: &Decision,
        plan: BranchPlan<'_>,
    ) {
        let msg = &pending.msg;
        let mut hop = plan.hop.clone();
        let token = pending.slot.map(|_| self.fresh_token());
        let mut bytes = self.branch_bytes(pending, decision, &plan, &hop, token);
        let mut udp_fallback = None;
        if token.is_some() && plan.may_leave_udp && self.too_large_for_udp(&hop, bytes.len()) {
            // §18.1.1: IP fragments are what cloud NATs drop first.
            let over_tcp = Hop {
                protocol: Protocol::Tcp,
                ..hop.clone()
            };
            let tcp_bytes = self.branch_bytes(pending, decision, &plan, &over_tcp, token);
            udp_fallback = Some(std::mem::replace(&mut bytes, tcp_bytes));
            hop = over_tcp;
        }
        self.send(hop.clone(), bytes.clone());
        let (Some(slot), Some(token)) = (pending.slot, token) else {
            return;
        };
        let settings = self.settings();
        let mut client = ClientTx::new(
            Owner::Server(slot),
            pending.loop_hash,
            SentMethod::of(msg.method_str()),
            bytes,
            hop,
            settings.t1,
            now + settings.timer_c,
        );
        if let Some(started) = self.servers.get(&slot).map(|tx| tx.started) {
            client.lifetime_end = Some(started + settings.max_invite_lifetime);
            client.push_timer_c(now + settings.timer_c);
        }
        client.udp_fallback = udp_fallback;
        client.call_slot = plan.call_slot;
        client.caller_flow = (pending.protocol != Protocol::Udp)
            .then(|| Hop::flow(pending.source, pending.protocol));
        if let Some((index, silence, strict_source)) = plan.candidate {
            client.candidate = Some(index);
            client.strict_source = strict_source;
            client.no_response = Some(silence);
            let owner = TimerOwner::Client(token);
            self.timers.arm(now, silence, owner, TimerKind::NoResponse);
        }
        self.add_client(now, token, client);
        if let Some(tx) = self.servers.get_mut(&slot) {
            tx.branches.push(token);
            tx.context.open_branch();
        }
    }

    /// The copy of the request one branch sends to `hop`: our Via (with
    /// the branch of `token`, or a stateless one for an ACK) from the
    /// listener that reaches it, and the plan's edits.
    fn branch_bytes(
        &self,
        pending: &Pending,
        decision: &Decision,
        plan: &BranchPlan<'_>,
        hop: &Hop,
        token: Option<u64>,
    ) -> Bytes {
        let msg = &pending.msg;
        let out_listener = self.listener_for(hop);
        let via = self.via_value(out_listener, |out| match token {
            Some(token) => push_client_branch(out, pending.loop_hash, token),
            None => {
                let upstream = msg.top_via().and_then(|v| v.branch()).unwrap_or("");
                push_stateless_branch(out, pending.loop_hash, upstream)
            }
        });
        let (record_route, path) = self.route_entries(pending, decision, hop, out_listener);
        Bytes::from(forward::forward_request(
            msg,
            &ForwardEdits {
                new_ruri: plan.new_ruri,
                routes_popped: plan.routes_popped,
                routes_dropped: usize::from(pending.preroute.strict_ruri.is_some()),
                append_route: plan.append_route,
                header_edits: &decision.header_edits,
                record_route: record_route.as_deref(),
                path: path.as_deref(),
                push_routes: plan.push_routes,
                max_breadth: plan.max_breadth,
                via: &via,
                source: pending.source,
            },
        ))
    }

    /// A request of `len` bytes to `hop` is over `limits.udp_max_request_bytes`
    /// and could go over TCP instead (we have a TCP listener to name).
    fn too_large_for_udp(&self, hop: &Hop, len: usize) -> bool {
        let limit = self.config.udp_max_request_bytes;
        limit > 0
            && len > limit
            && hop.protocol == Protocol::Udp
            && !hop.flow
            && self
                .config
                .listeners
                .iter()
                .any(|l| l.protocol == Protocol::Tcp)
    }

    /// A branch that left UDP for its size and whose TCP connection
    /// failed is sent over UDP after all (§18.1.1). False when the branch
    /// did not switch.
    fn fall_back_to_udp(&mut self, token: u64, now: Instant) -> bool {
        let t1 = self.settings().t1;
        let Some(client) = self.clients.get_mut(&token) else {
            return false;
        };
        let Some(udp) = client.udp_fallback.take() else {
            return false;
        };
        client.hop.protocol = Protocol::Udp;
        client.request = udp.clone();
        client.retransmit = t1;
        let kind = if client.invite {
            TimerKind::A
        } else {
            TimerKind::E
        };
        let hop = client.hop.clone();
        self.timers.arm(now, t1, TimerOwner::Client(token), kind);
        self.send(hop, udp);
        true
    }

    /// What we add to a request we forward when the script asked for
    /// record_route(): the Record-Route (RFC 5658: leaving by another
    /// interface, address family or transport, it names us once for each
    /// side, the outbound one on top, as the callee's first hop), or for a
    /// REGISTER, a Path (RFC 3327) instead, so that the registrar's requests
    /// for the client come back through us and over its connection (or to
    /// the address its UDP REGISTER came from). A peer on a connection is named by a flow token
    /// in the entry for its side (see `proxy::flow`).
    fn route_entries(
        &self,
        pending: &Pending,
        decision: &Decision,
        hop: &Hop,
        out_listener: usize,
    ) -> (Option<Cow<'_, str>>, Option<String>) {
        if !decision.record_route {
            return (None, None);
        }
        let caller_on_connection = pending.protocol != Protocol::Udp;
        let sips = pending.msg.request_uri().is_some_and(|uri| {
            uri.get(..5)
                .is_some_and(|s| s.eq_ignore_ascii_case("sips:"))
        });
        if pending.msg.method() == Some(Method::Register) {
            // Whatever the transport: a UDP phone behind NAT is reached
            // only at the address its REGISTER came from, through us.
            let path = self.flow_entry(
                TokenKind::Path,
                pending.protocol,
                pending.source,
                (out_listener, sips),
            );
            return (None, Some(path));
        }
        let caller_side = caller_on_connection.then(|| {
            self.flow_entry(
                TokenKind::RecordRoute,
                pending.protocol,
                pending.source,
                (pending.listener, sips),
            )
        });
        // A callee on a flow: its connection, or (UDP) the address a Path
        // token sent us to, which its dialog's requests must use too.
        let callee_side = hop.flow.then(|| {
            self.flow_entry(
                TokenKind::RecordRoute,
                hop.protocol,
                hop.addr,
                (out_listener, sips),
            )
        });
        let name = |index: usize| self.route_name(index, sips);
        // Every entry of ours carries the dialog's seal (`proxy::seal`).
        let msg = &pending.msg;
        let seal = self.config.seals.seal(
            msg.call_id().unwrap_or(""),
            msg.from_tag().unwrap_or(""),
            pending.source.ip(),
        );
        let sealed = |entry: &str| sealed_entry(entry, &seal);
        // Where a token is involved both sides get an entry, even on one
        // listener: a request pops its sender's side first, and goes on by
        // the other (see `popped_flow`).
        let record_route = match (pending.listener == out_listener, callee_side, caller_side) {
            (true, None, None) => sealed(name(out_listener)),
            (_, callee_side, caller_side) => format!(
                "{}, {}",
                sealed(callee_side.as_deref().unwrap_or(name(out_listener))),
                sealed(caller_side.as_deref().unwrap_or(name(pending.listener)))
            ),
        };
        (Some(Cow::Owned(record_route)), None)
    }

    /// A token no live client transaction has.
    fn fresh_token(&mut self) -> u64 {
        loop {
            let token = self.tokens.next_token();
            if !self.clients.contains_key(&token) {
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
        if invite && matches!(client.owner, Owner::Server(_)) {
            let wait = client.timer_c_due.saturating_duration_since(now);
            self.timers.arm(now, wait, owner, TimerKind::C);
        }
        self.clients.insert(token, client);
    }

    /// Sends CANCEL on a branch once it has answered provisionally; before
    /// that, remembers to (RFC 3261 §9.1). A CANCELed branch that never
    /// answers is given up after 64·T1.
    fn cancel_branch(&mut self, token: u64, now: Instant) {
        let settings = self.settings();
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        if client.cancel_sent
            || !client.invite
            || !matches!(client.state, ClientState::Trying | ClientState::Proceeding)
        {
            return;
        }
        if !client.got_provisional {
            client.cancel_pending = true;
            return;
        }
        client.cancel_sent = true;
        let give_up = now + settings.timeout();
        if give_up < client.timer_c_due {
            client.timer_c_due = give_up;
            self.timers.arm(
                now,
                settings.timeout(),
                TimerOwner::Client(token),
                TimerKind::C,
            );
        }
        let Ok(sent) = sip::parse(client.request.clone()) else {
            return;
        };
        let cancel = Bytes::from(build::cancel(&sent));
        let hop = client.hop.clone();
        let loop_hash = client.loop_hash;
        self.send(hop.clone(), cancel.clone());
        let owner = TimerOwner::Cancel(token);
        if !hop.protocol.is_reliable() {
            self.timers.arm(now, settings.t1, owner, TimerKind::E);
        }
        self.timers
            .arm(now, settings.timeout(), owner, TimerKind::F);
        self.cancels.insert(
            token,
            CancelTx {
                request: cancel,
                hop,
                loop_hash,
                retransmit: settings.t1,
            },
        );
    }

    // ----- responses ------------------------------------------------------

    /// A response arrived from `source`.
    pub fn handle_response(&mut self, now: Instant, msg: Message, source: SocketAddr) {
        let Some(via) = msg.top_via() else { return };
        if !self.is_our_via(&via) {
            tracing::debug!(
                call_id = msg.call_id().unwrap_or(""),
                "response not for us; dropped"
            );
            return;
        }
        let Some((loop_hash, token)) = via.branch().and_then(parse_client_branch) else {
            tracing::debug!("response with a branch we never sent; dropped");
            return;
        };
        let method = msg.cseq().map_or("", |(_, method)| method);
        if method == "CANCEL" {
            let matches = self
                .cancels
                .get(&token)
                .is_some_and(|cancel| cancel.loop_hash == loop_hash);
            if matches && msg.status().unwrap_or(0) >= 200 {
                self.cancels.remove(&token);
            }
            return;
        }
        match self.clients.get(&token) {
            Some(client) => {
                // §17.1.3 matches on branch and method only: a hop behind
                // a VIP, or bound to every address of a multi-homed host,
                // answers from another address than we sent to. The
                // branch's token is keyed, so it cannot be guessed.
                if client.loop_hash != loop_hash
                    || !client.method.matches(method)
                    || !client.accepts_from(source)
                {
                    tracing::debug!(
                        %source,
                        "response does not match the request we sent; dropped"
                    );
                    return;
                }
                self.on_client_response(now, token, msg);
            }
            // RFC 6026 §8.5: a response that matches no client transaction
            // is not forwarded (late 2xx ride on the Accepted state).
            None => tracing::debug!("response for no transaction; dropped"),
        }
    }

    fn on_client_response(&mut self, now: Instant, token: u64, msg: Message) {
        let code = msg.status().unwrap_or(0);
        let settings = self.settings();
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        let slot = match client.owner {
            Owner::Server(slot) => slot,
            Owner::Probe { probe, sent } => {
                if code >= 200 {
                    self.clients.remove(&token);
                    self.out.push_back(Output::ProbeDone {
                        probe,
                        outcome: ProbeOutcome {
                            status: Some(code),
                            retry_after: retry_after(&msg),
                            latency: now.saturating_duration_since(sent),
                        },
                    });
                }
                return;
            }
        };
        let candidate = client.candidate;
        let abandoned = client.abandoned;
        if let Some(index) = candidate {
            self.gateway_answered(slot, index, code, abandoned);
        }
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        if code < 200 {
            if client.state == ClientState::Trying {
                client.state = ClientState::Proceeding;
                // Timer C only ends a Proceeding branch: one that fired
                // while the branch was still Trying (a branch opened near
                // its INVITE's end of life) must come again.
                if client.invite && client.timer_c_due <= now {
                    self.timers
                        .arm(now, Duration::ZERO, TimerOwner::Client(token), TimerKind::C);
                }
            }
            if client.state != ClientState::Proceeding {
                return;
            }
            client.got_provisional = true;
            client.accepted |= code > 100;
            // §16.8: only a provisional other than 100 resets Timer C, and
            // nothing extends a branch that is being CANCELed.
            if code > 100 && !client.cancel_sent {
                client.push_timer_c(now + settings.timer_c);
            }
            let abandoned = client.abandoned;
            if std::mem::take(&mut client.cancel_pending) {
                self.cancel_branch(token, now);
            }
            // A branch given up for another is being CANCELed: its ringing
            // or early media is not the caller's.
            if code > 100 && !abandoned {
                self.forward_provisional(slot, &msg);
            }
            return;
        }
        let success = (200..300).contains(&code);
        if client.invite && success {
            let first = client.state != ClientState::Accepted;
            client.state = ClientState::Accepted;
            if let Some(call_slot) = client.call_slot.take().filter(|s| s.record_routed) {
                // The call counts at its destination until its BYE.
                let call_id = msg.call_id().unwrap_or("");
                let callee_tag = msg.to_tag().unwrap_or("");
                let started = self.calls.start(call_slot, call_id, callee_tag, now);
                if started == Err(NotCounted::TableFull) {
                    self.untracked_calls += 1;
                    if self.untracked_calls % 10_000 == 1 {
                        tracing::warn!(
                            untracked = self.untracked_calls,
                            counted = self.calls.len(),
                            "the table of calls is full: calls are relayed but not counted against their destinations"
                        );
                    }
                }
            }
            let Some(client) = self.clients.get_mut(&token) else {
                return;
            };
            // Only 2xx retransmissions are left to forward: nothing to resend.
            client.request = Bytes::new();
            let was_settled = std::mem::replace(&mut client.settled, true);
            if first {
                self.timers.arm(
                    now,
                    settings.timeout(),
                    TimerOwner::Client(token),
                    TimerKind::M,
                );
            }
            if !was_settled {
                if let Some(tx) = self.servers.get_mut(&slot) {
                    tx.context.settle(None);
                }
            }
            let caller_flow = client.caller_flow.clone();
            self.forward_2xx(slot, &msg, caller_flow, now);
            return;
        }
        if matches!(client.state, ClientState::Completed | ClientState::Accepted) {
            // A retransmitted final: re-send an INVITE's ACK, absorb the rest.
            if client.invite && client.state == ClientState::Completed {
                let (hop, ack) = (client.hop.clone(), client.request.clone());
                self.send(hop, ack);
            }
            return;
        }
        client.state = ClientState::Completed;
        // No call: the slot is free at once, not when Timer D ends.
        client.call_slot = None;
        let reliable = client.hop.protocol.is_reliable();
        let was_settled = std::mem::replace(&mut client.settled, true);
        let invite = client.invite;
        if invite {
            self.send_ack(token, &msg);
            let linger = if reliable {
                Duration::ZERO
            } else {
                Duration::from_secs(32).max(settings.timeout())
            };
            self.timers
                .arm(now, linger, TimerOwner::Client(token), TimerKind::D);
        } else {
            client.request = Bytes::new();
            let linger = if reliable {
                Duration::ZERO
            } else {
                settings.t4
            };
            self.timers
                .arm(now, linger, TimerOwner::Client(token), TimerKind::K);
        }
        if was_settled {
            return;
        }
        if success {
            // §16.7 step 5: a non-INVITE 2xx goes upstream at once.
            if let Some(tx) = self.servers.get_mut(&slot) {
                tx.context.settle(None);
            }
            let bytes = Bytes::from(forward::strip_top_via(&msg));
            self.send_final(slot, code, bytes, now);
        } else {
            if let (Some(index), Some(failure)) = (candidate, self.status_failure(slot, code)) {
                // The next candidate's branch opens before this one settles,
                // so the context does not conclude in between.
                self.gateway_failed(now, (slot, token, index), failure, retry_after(&msg));
            }
            self.branch_done(slot, Some(Candidate::Response(msg)), now);
        }
    }

    /// ACKs a non-2xx final hop by hop (RFC 3261 §17.1.1.3).
    fn send_ack(&mut self, token: u64, response: &Message) {
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        let Ok(sent) = sip::parse(client.request.clone()) else {
            return;
        };
        let ack = Bytes::from(build::ack_for_non2xx(&sent, response));
        // From now on the ACK is what a retransmitted final gets.
        client.request = ack.clone();
        let hop = client.hop.clone();
        self.send(hop, ack);
    }

    fn forward_provisional(&mut self, slot: u64, msg: &Message) {
        let Some(tx) = self.servers.get_mut(&slot) else {
            return;
        };
        if tx.final_sent {
            return;
        }
        let bytes = Bytes::from(forward::strip_top_via(msg));
        tx.last_response = Some(bytes.clone());
        let (flow, dest) = (tx.flow.clone(), tx.reply_to);
        self.reply(&flow, dest, bytes, msg.status());
    }

    /// Every 2xx goes upstream, even after another branch's (§16.7 step 5);
    /// the first one also settles the server transaction. Once the server
    /// transaction is gone, a retransmitted 2xx still goes on, by its Via.
    fn forward_2xx(&mut self, slot: u64, msg: &Message, caller_flow: Option<Hop>, now: Instant) {
        let code = msg.status().unwrap_or(200);
        let Some(tx) = self.servers.get(&slot) else {
            self.forward_stray(msg, caller_flow);
            return;
        };
        let bytes = Bytes::from(forward::strip_top_via(msg));
        if tx.final_sent {
            let (flow, dest) = (tx.flow.clone(), tx.reply_to);
            self.reply(&flow, dest, bytes, Some(code));
        } else {
            self.send_final(slot, code, bytes, now);
        }
    }

    /// A branch ended with a non-2xx final, or gave up (`candidate` is then
    /// a timeout for an INVITE and nothing otherwise). Once no branch is
    /// pending, the best response goes upstream (§16.7 step 6).
    fn branch_done(&mut self, slot: u64, candidate: Option<Candidate>, now: Instant) {
        let Some(tx) = self.servers.get_mut(&slot) else {
            return;
        };
        let six_hundred = candidate.as_ref().is_some_and(|c| c.code() >= 600);
        tx.context.settle(candidate);
        if tx.final_sent {
            return;
        }
        if tx.invite && six_hundred {
            // §16.7: CANCEL the others; those that never answered are given
            // up at once, as after the caller's CANCEL, so the 6xx need not
            // wait for Timer B.
            for token in tx.branches.clone() {
                self.cancel_branch(token, now);
                self.give_up_if_unanswered(slot, token, now);
            }
        }
        let Some(tx) = self.servers.get_mut(&slot) else {
            return;
        };
        if tx.context.branches_pending() > 0 {
            return;
        }
        // §16.7: after a 6xx no new branch may open, so the failure hook
        // (which may relay or fork) does not run.
        let declined = tx.context.has_global_failure();
        if let (false, false, FailureHook::NotRun, Some(request)) =
            (tx.cancelled, declined, tx.failure_hook, tx.request.clone())
        {
            // Failover (if any) has run out: the script may try elsewhere.
            self.next_slot += 1;
            let ticket = self.next_slot;
            tx.failure_hook = FailureHook::Running(ticket);
            let response = tx.context.best_response();
            let pending = Pending {
                failure_run: true,
                ..self.pending_of(slot, request)
            };
            self.out.push_back(Output::RunFailure(FailureRun {
                ticket,
                request: pending.msg.clone(),
                source: pending.source,
                protocol: pending.protocol,
                preroute: pending.preroute.clone(),
                response,
            }));
            self.pending.insert(ticket, pending);
            return;
        }
        self.send_best(slot, now);
    }

    /// Every branch is done: the best response goes upstream (§16.7 step 6).
    fn send_best(&mut self, slot: u64, now: Instant) {
        let Some(tx) = self.servers.get_mut(&slot) else {
            return;
        };
        if tx.final_sent {
            return;
        }
        let cancelled = tx.cancelled;
        match tx.context.take_best() {
            Some(Best::Response { msg, challenges }) => {
                let code = msg.status().unwrap_or(500);
                if code == 503 {
                    // §16.7 step 6: a 503 would mean this proxy is unavailable.
                    self.reply_local(slot, 500, "Server Internal Error", &[], now);
                } else {
                    let bytes = Bytes::from(upstream_copy(&msg, &challenges));
                    self.send_final(slot, code, bytes, now);
                }
            }
            Some(Best::Local(..) | Best::Full(_)) if cancelled => {
                self.reply_local(slot, 487, "Request Terminated", &[], now)
            }
            Some(Best::Local(code, reason)) => self.reply_local(slot, code, reason, &[], now),
            Some(Best::Full(retry_after)) => {
                let retry_after = itoa::Buffer::new().format(retry_after).to_string();
                let extra = [("Retry-After", retry_after.as_str())];
                self.reply_local(slot, 503, "Service Unavailable", &extra, now);
            }
            None if cancelled => self.reply_local(slot, 487, "Request Terminated", &[], now),
            None => {
                // Every non-INVITE branch timed out: RFC 4320 §4.2 forbids
                // a 408, and there is nothing else to send.
                tracing::debug!("every branch of a non-INVITE timed out; no response");
                self.remove_server(slot);
            }
        }
    }

    /// A 2xx whose server transaction is gone while its client transaction
    /// is still Accepted: it goes on statelessly (the UAs retransmit it end
    /// to end until the ACK), over the caller's connection when it came on
    /// one (a browser's Via names no reachable host), else by the next Via.
    /// Only a 2xx to an INVITE.
    fn forward_stray(&mut self, msg: &Message, caller_flow: Option<Hop>) {
        let is_2xx = msg.status().is_some_and(|c| (200..300).contains(&c));
        let to_invite = msg.cseq().is_some_and(|(_, method)| method == "INVITE");
        if !(is_2xx && to_invite) {
            tracing::debug!("response for no transaction; dropped");
            return;
        }
        if let Some(flow) = caller_flow {
            let bytes = Bytes::from(forward::strip_top_via(msg));
            self.send(flow, bytes);
            return;
        }
        let Some(next) = msg.header_values(HeaderName::Via).nth(1) else {
            return;
        };
        let Ok(via) = Via::parse(next) else { return };
        let Some(addr) = forward::response_destination(&via) else {
            return;
        };
        let protocol = Protocol::from_token(via.transport).unwrap_or(Protocol::Udp);
        let bytes = Bytes::from(forward::strip_top_via(msg));
        self.send(Hop::new(addr, protocol), bytes);
    }

    // ----- responses from here --------------------------------------------

    fn reply(&mut self, flow: &F, dest: SocketAddr, bytes: Bytes, code: Option<u16>) {
        self.out.push_back(Output::Reply {
            flow: flow.clone(),
            dest,
            bytes,
            code,
        });
    }

    /// Answers the request of a server transaction from this proxy.
    fn reply_local(
        &mut self,
        slot: u64,
        code: u16,
        reason: &str,
        extra: &[(&str, &str)],
        now: Instant,
    ) {
        let Some(tx) = self.servers.get_mut(&slot) else {
            return;
        };
        let Some(request) = &tx.request else {
            return; // a final response went out already
        };
        let to_tag = if code > 100 && request.to_tag().is_none() {
            Some(tx.to_tag.get_or_insert_with(build::new_tag).clone())
        } else {
            None
        };
        let bytes = Bytes::from(local_response(
            request,
            tx.source,
            code,
            reason,
            to_tag.as_deref(),
            extra,
        ));
        if code < 200 {
            tx.last_response = Some(bytes.clone());
            let (flow, dest) = (tx.flow.clone(), tx.reply_to);
            self.reply(&flow, dest, bytes, Some(code));
            return;
        }
        // §13.3.1.4: our own 2xx to an INVITE is retransmitted until its
        // ACK, which a stateless UDP network may lose.
        let ack = (tx.invite && code < 300).then(|| {
            let tag = to_tag.as_deref().or(request.to_tag()).unwrap_or("");
            let cseq = request.cseq().map_or(0, |(n, _)| n);
            ack_key(request.call_id().unwrap_or(""), tag, cseq)
        });
        self.send_final(slot, code, bytes.clone(), now);
        if let Some(key) = ack {
            let t1 = self.settings().t1;
            if let Some(tx) = self.servers.get_mut(&slot) {
                tx.ack_key = Some(key);
                tx.last_response = Some(bytes);
                tx.retransmit = t1;
                if !tx.protocol.is_reliable() {
                    self.timers
                        .arm(now, t1, TimerOwner::Server(slot), TimerKind::G);
                }
                self.awaiting_ack.insert(key, slot);
            }
        }
    }

    /// Sends a final response upstream and moves the server transaction on.
    fn send_final(&mut self, slot: u64, code: u16, bytes: Bytes, now: Instant) {
        let settings = self.settings();
        let Some(tx) = self.servers.get_mut(&slot) else {
            return;
        };
        if tx.final_sent {
            return;
        }
        tx.final_sent = true;
        // What lingers for the timers is kept small: the key, the flow and
        // the response to replay (none after a 2xx, which the UAs resend).
        // No branch opens any more, so the failover state goes too.
        tx.request = None;
        tx.failover = None;
        tx.last_response = Some(bytes.clone());
        let reliable = tx.protocol.is_reliable();
        let owner = TimerOwner::Server(slot);
        if tx.invite && (200..300).contains(&code) {
            tx.state = ServerState::Accepted;
            tx.last_response = None;
            self.timers
                .arm(now, settings.timeout(), owner, TimerKind::L);
        } else if tx.invite {
            tx.state = ServerState::Completed;
            if !reliable {
                self.timers.arm(now, settings.t1, owner, TimerKind::G);
            }
            self.timers
                .arm(now, settings.timeout(), owner, TimerKind::H);
        } else {
            tx.state = ServerState::Completed;
            let linger = if reliable {
                Duration::ZERO
            } else {
                settings.timeout()
            };
            self.timers.arm(now, linger, owner, TimerKind::J);
        }
        let branches = std::mem::take(&mut tx.branches);
        let (flow, dest) = (tx.flow.clone(), tx.reply_to);
        self.reply(&flow, dest, bytes, Some(code));
        // Branches still running are no longer wanted.
        for token in branches {
            self.cancel_branch(token, now);
        }
    }

    /// Answers without a server transaction. The To tag comes from the
    /// request's key, so a retransmission gets the same one (§8.2.7).
    #[allow(clippy::too_many_arguments)]
    fn reply_stateless(
        &mut self,
        msg: &Message,
        key: &ServerKey,
        flow: &F,
        (source, dest): (SocketAddr, SocketAddr),
        code: u16,
        reason: &str,
        extra: &[(&str, &str)],
    ) {
        let tag = key.stateless_tag();
        let to_tag = msg.to_tag().is_none().then_some(tag.as_str());
        let bytes = local_response(msg, source, code, reason, to_tag, extra);
        self.reply(flow, dest, Bytes::from(bytes), Some(code));
    }

    fn remove_server(&mut self, slot: u64) {
        if let Some(tx) = self.servers.remove(&slot) {
            self.server_index.remove(&tx.key);
            if let Some(key) = tx.ack_key {
                self.awaiting_ack.remove(&key);
            }
        }
    }

    /// The ACK of a 2xx the script sent itself ends its retransmissions
    /// here (the script answered as the UAS: the ACK is ours).
    fn absorb_ack_of_our_2xx(&mut self, ack: &Message) -> bool {
        if self.awaiting_ack.is_empty() {
            return false;
        }
        let (Some(call_id), Some(tag), Some((cseq, _))) = (ack.call_id(), ack.to_tag(), ack.cseq())
        else {
            return false;
        };
        let Some(slot) = self.awaiting_ack.remove(&ack_key(call_id, tag, cseq)) else {
            return false;
        };
        if let Some(tx) = self.servers.get_mut(&slot) {
            tx.ack_key = None;
            tx.last_response = None;
        }
        true
    }

    // ----- timers -----------------------------------------------------------

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.calls.next_deadline().is_some_and(|due| now >= due) {
            for collected in self.calls.collect(now) {
                self.out.push_back(Output::CallCollected(collected));
            }
        }
        while let Some((owner, kind)) = self.timers.pop_due(now) {
            match owner {
                TimerOwner::Server(slot) => self.server_timer(slot, kind, now),
                TimerOwner::Client(token) => self.client_timer(token, kind, now),
                TimerOwner::Cancel(token) => self.cancel_timer(token, kind, now),
            }
        }
        // A transaction has a few timers live at once; many more entries
        // than that are ended transactions' (Timer C above all).
        if self.timers.len() >= TIMER_SWEEP_FLOOR.max(TIMERS_PER_TRANSACTION * self.active()) {
            let (servers, clients, cancels) = (&self.servers, &self.clients, &self.cancels);
            self.timers.retain(|owner| match owner {
                TimerOwner::Server(slot) => servers.contains_key(&slot),
                TimerOwner::Client(token) => clients.contains_key(&token),
                TimerOwner::Cancel(token) => cancels.contains_key(&token),
            });
        }
    }

    /// Timer entries held, live or not yet swept (for tests).
    pub fn timer_entries(&self) -> usize {
        self.timers.len()
    }

    fn server_timer(&mut self, slot: u64, kind: TimerKind, now: Instant) {
        let settings = self.settings();
        let Some(tx) = self.servers.get_mut(&slot) else {
            return;
        };
        match kind {
            TimerKind::G if tx.state == ServerState::Completed => {
                tx.retransmit = settings.backoff(tx.retransmit, true);
                self.timers
                    .arm(now, tx.retransmit, TimerOwner::Server(slot), TimerKind::G);
                if let Some(response) = tx.last_response.clone() {
                    let (flow, dest) = (tx.flow.clone(), tx.reply_to);
                    self.reply(&flow, dest, response, None);
                }
            }
            // Our own 2xx, until its ACK or Timer L.
            TimerKind::G if tx.state == ServerState::Accepted && tx.ack_key.is_some() => {
                tx.retransmit = settings.backoff(tx.retransmit, true);
                self.timers
                    .arm(now, tx.retransmit, TimerOwner::Server(slot), TimerKind::G);
                if let Some(response) = tx.last_response.clone() {
                    let (flow, dest) = (tx.flow.clone(), tx.reply_to);
                    self.reply(&flow, dest, response, None);
                }
            }
            TimerKind::H if tx.state == ServerState::Completed => {
                tracing::debug!("no ACK for a final response (Timer H)");
                self.remove_server(slot);
            }
            TimerKind::I | TimerKind::J | TimerKind::L => self.remove_server(slot),
            // A script's provisional reply was all this request got.
            TimerKind::Guard if !tx.final_sent && tx.context.branches_pending() == 0 => {
                if tx.invite {
                    self.reply_local(slot, 408, "Request Timeout", &[], now);
                } else {
                    self.remove_server(slot);
                }
            }
            _ => {}
        }
    }

    fn client_timer(&mut self, token: u64, kind: TimerKind, now: Instant) {
        let settings = self.settings();
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        let live = matches!(client.state, ClientState::Trying | ClientState::Proceeding);
        match kind {
            // A branch given up for another goes on until it answers
            // provisionally (and is CANCELed) or Timer B: its 1xx may have
            // been lost, and §9.1 allows no CANCEL before one.
            TimerKind::A if client.state == ClientState::Trying => {
                client.retransmit = settings.backoff(client.retransmit, false);
                let (hop, bytes) = (client.hop.clone(), client.request.clone());
                let next = (client.retransmit, TimerOwner::Client(token), TimerKind::A);
                self.resend(now, hop, bytes, next);
            }
            TimerKind::E if live && !client.abandoned => {
                client.retransmit = if client.state == ClientState::Proceeding {
                    settings.t2
                } else {
                    settings.backoff(client.retransmit, true)
                };
                let (hop, bytes) = (client.hop.clone(), client.request.clone());
                let next = (client.retransmit, TimerOwner::Client(token), TimerKind::E);
                self.resend(now, hop, bytes, next);
            }
            TimerKind::B if client.state == ClientState::Trying => {
                self.branch_timeout(token, now, "Timer B")
            }
            // A candidate that sent only 100 by Timer B has not taken the
            // call: fail over rather than wait for Timer C.
            TimerKind::B
                if client.state == ClientState::Proceeding
                    && client.candidate.is_some()
                    && !client.accepted =>
            {
                self.candidate_silent(now, token)
            }
            TimerKind::NoResponse if matches!(client.owner, Owner::Probe { .. }) && live => {
                self.end_branch(token, now, "probe given up", |_| None)
            }
            // A branch that left UDP for its size and heard nothing (a
            // firewall that drops the SYN) tries UDP before failing over.
            TimerKind::NoResponse
                if client.state == ClientState::Trying && client.udp_fallback.is_some() =>
            {
                let silence = client.no_response.unwrap_or(settings.t1);
                if self.fall_back_to_udp(token, now) {
                    self.timers.arm(
                        now,
                        silence,
                        TimerOwner::Client(token),
                        TimerKind::NoResponse,
                    );
                }
            }
            TimerKind::NoResponse if client.state == ClientState::Trying => {
                self.candidate_silent(now, token)
            }
            TimerKind::F if live => self.branch_timeout(token, now, "Timer F"),
            TimerKind::C if client.state == ClientState::Proceeding => {
                if now < client.timer_c_due {
                    let wait = client.timer_c_due - now;
                    self.timers
                        .arm(now, wait, TimerOwner::Client(token), TimerKind::C);
                    return;
                }
                // §16.8: CANCEL the branch and act as if it returned 408.
                let why = if client.past_lifetime(now) {
                    "max_invite_lifetime"
                } else {
                    "Timer C"
                };
                self.cancel_branch(token, now);
                self.branch_timeout(token, now, why);
            }
            // A CANCELed branch that then answered 2xx is Accepted: Timer M,
            // not the D armed when it was given up, ends it.
            TimerKind::D if client.state == ClientState::Accepted => {}
            TimerKind::D | TimerKind::K | TimerKind::M => {
                self.clients.remove(&token);
            }
            _ => {}
        }
    }

    /// Sends a request again and arms the retransmission after it.
    fn resend(
        &mut self,
        now: Instant,
        hop: Hop,
        bytes: Bytes,
        (after, owner, kind): (Duration, TimerOwner, TimerKind),
    ) {
        self.timers.arm(now, after, owner, kind);
        self.send(hop, bytes);
    }

    /// A branch got no final response in time: an INVITE branch counts as a
    /// 408 (§16.7, §16.8); a non-INVITE one leaves nothing (RFC 4320).
    fn branch_timeout(&mut self, token: u64, now: Instant, timer: &str) {
        self.end_branch(token, now, timer, |invite| {
            invite.then_some(Candidate::TIMEOUT)
        });
    }

    /// A branch ends with no final response from its peer; `left` says
    /// what it leaves in the response context (given whether it is an
    /// INVITE's).
    fn end_branch(
        &mut self,
        token: u64,
        now: Instant,
        why: &str,
        left: impl FnOnce(bool) -> Option<Candidate>,
    ) {
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        let slot = match client.owner {
            Owner::Server(slot) => slot,
            Owner::Probe { probe, sent } => {
                self.clients.remove(&token);
                self.out.push_back(Output::ProbeDone {
                    probe,
                    outcome: ProbeOutcome {
                        status: None,
                        retry_after: None,
                        latency: now.saturating_duration_since(sent),
                    },
                });
                return;
            }
        };
        let was_settled = std::mem::replace(&mut client.settled, true);
        let invite = client.invite;
        client.call_slot = None;
        // A CANCELed branch stays (settled) to ACK its 487 when that comes;
        // Timer D removes it either way.
        if client.cancel_sent {
            let linger = self.settings().timeout();
            self.timers
                .arm(now, linger, TimerOwner::Client(token), TimerKind::D);
        } else {
            self.clients.remove(&token);
        }
        if was_settled {
            return;
        }
        tracing::debug!(why, "branch ended without a response");
        self.branch_done(slot, left(invite), now);
    }

    fn cancel_timer(&mut self, token: u64, kind: TimerKind, now: Instant) {
        let settings = self.settings();
        let Some(cancel) = self.cancels.get_mut(&token) else {
            return;
        };
        match kind {
            TimerKind::E => {
                cancel.retransmit = settings.backoff(cancel.retransmit, true);
                let (hop, bytes) = (cancel.hop.clone(), cancel.request.clone());
                let next = (cancel.retransmit, TimerOwner::Cancel(token), TimerKind::E);
                self.resend(now, hop, bytes, next);
            }
            TimerKind::F => {
                self.cancels.remove(&token);
            }
            _ => {}
        }
    }

    // ----- probes -----------------------------------------------------------

    /// Sends an OPTIONS probe to `uri` at `target` as a non-INVITE client
    /// transaction; its outcome comes back as [`Output::ProbeDone`] with
    /// `probe`, a timeout once the prober gives up on it (the transaction
    /// then ends, rather than retransmit until Timer F for nobody).
    pub fn start_probe(
        &mut self,
        now: Instant,
        probe: u64,
        uri: &str,
        target: ProbeTarget,
        call_id: &str,
    ) {
        let ProbeTarget {
            hop,
            strict_source,
            give_up,
            from,
        } = target;
        let token = self.fresh_token();
        let out_listener = self.listener_for(&hop);
        let via = self.via_value(out_listener, |out| push_client_branch(out, 0, token));
        let host = self
            .config
            .listeners
            .get(out_listener)
            .map_or("invalid", Listener::host);
        let from = match from {
            Some(uri) => format!("<{uri}>;tag={}", build::new_tag()),
            None => format!("<sip:siphon@{host}>;tag={}", build::new_tag()),
        };
        let to = format!("<{uri}>");
        let bytes = Bytes::from(build::request(
            "OPTIONS",
            uri,
            &via,
            &from,
            &to,
            call_id,
            1,
            &[],
        ));
        self.send(hop.clone(), bytes.clone());
        let mut client = ClientTx::new(
            Owner::Probe { probe, sent: now },
            0,
            SentMethod::Known(Method::Options),
            bytes,
            hop,
            self.settings().t1,
            now,
        );
        client.strict_source = strict_source;
        self.add_client(now, token, client);
        self.timers.arm(
            now,
            give_up,
            TimerOwner::Client(token),
            TimerKind::NoResponse,
        );
    }
}

/// A response made here to `request` from `source`: its top Via stamped
/// with `received`/`rport` as a forwarded request's would be (RFC 3581),
/// so a UA behind NAT learns its public address from our answers too.
/// The user part of a Route value: ours that carry one hold a flow token.
/// A value without `@` costs no parsing.
/// A gateway candidate's go-ahead: for an INVITE, a slot at its
/// destination (its call limit and pace); for anything else, only that it
/// is not drained. A place that is no destination always goes.
fn take_slot(
    candidate: &crate::proxy::decision::RelayCandidate,
    group: &Arc<str>,
    now: Instant,
    (invite, record_routed): (bool, bool),
) -> Result<Option<CallSlot>, Refusal> {
    let Some(capacity) = &candidate.capacity else {
        return Ok(None);
    };
    if !invite {
        return match capacity.is_draining() {
            true => Err(Refusal::Draining),
            false => Ok(None),
        };
    }
    Ok(Some(CallSlot {
        reservation: capacity.reserve(now)?,
        group: group.clone(),
        uri: candidate.uri.clone(),
        record_routed,
    }))
}

fn route_user(value: &str) -> Option<&str> {
    if !value.contains('@') {
        return None;
    }
    let addr = sip::NameAddr::parse(value).ok()?;
    sip::Uri::parse(addr.uri).ok()?.user
}

/// Whether a caller whose connection closed can be reached by a new one
/// (RFC 3261 §18.2.2): a TCP or TLS caller whose Via names a host (its
/// name, or the address it connected from). Not a WebSocket client, nor
/// one whose Via is `.invalid` or another address than its own (behind NAT).
fn reachable_anew<F>(tx: &ServerTx<F>) -> bool {
    let Some(via) = tx.request.as_ref().and_then(|r| r.top_via()) else {
        return false;
    };
    let host = via.host.trim_matches(['[', ']']);
    let reachable = match host.parse::<IpAddr>() {
        Ok(ip) => crate::security::canonical(ip) == crate::security::canonical(tx.source.ip()),
        Err(_) => !host.to_ascii_lowercase().ends_with(".invalid"),
    };
    matches!(tx.protocol, Protocol::Tcp | Protocol::Tls) && reachable
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

/// RFC 5393 §5.3: the Max-Breadth we hold for a request (60 when it has
/// none, and never more).
const MAX_BREADTH: u32 = 60;

/// Each of `parallel` branches' share of the request's Max-Breadth, or
/// None when there is not one unit for each (440 Max-Breadth Exceeded).
/// A single branch is forwarding, not forking: it keeps the whole.
fn breadth_shares(msg: &Message, parallel: usize) -> Option<impl Iterator<Item = u32>> {
    let received = msg
        .header_named("Max-Breadth")
        .and_then(|v| v.trim().parse::<u32>().ok());
    let breadth = received.map_or(MAX_BREADTH, |b| b.min(MAX_BREADTH));
    let n = u32::try_from(parallel.max(1)).unwrap_or(u32::MAX);
    if n > 1 && n > breadth {
        return None;
    }
    Some((0..n).map(move |i| breadth / n + u32::from(i < breadth % n)))
}

/// Where a request our UDP Path token routes goes: the address the phone's
/// REGISTER came from, which is the only way to a phone behind NAT; but a
/// Request-URI (its Contact) on that same host names the phone's own SIP
/// port there, which a client that registers from another socket listens
/// on.
fn udp_flow_or_contact(hop: Hop, target: &str) -> Hop {
    if hop.protocol != Protocol::Udp {
        return hop;
    }
    let Ok(uri) = sip::Uri::parse(target) else {
        return hop;
    };
    match uri.host.trim_matches(['[', ']']).parse::<IpAddr>() {
        Ok(ip) if ip == hop.addr.ip() => Hop::flow(
            SocketAddr::new(ip, uri.port.unwrap_or(Protocol::Udp.default_port())),
            Protocol::Udp,
        ),
        _ => hop,
    }
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

/// Whether a URI's scheme is one we route (sip, sips).
fn routable_scheme(uri: &str) -> bool {
    let scheme = uri.split(':').next().unwrap_or("");
    scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips")
}

/// An initial request our Path routed here (see [`Engine::path_route`]).
enum PathRoute {
    /// Over the client's flow.
    Flow,
    /// With a token of ours from an earlier run: answered 430.
    Stale,
}

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
