//! The transaction shard: RFC 3261 §17 server and client transactions and the
//! §16 proxy core for every Call-ID that hashes to this shard.
//!
//! Each shard runs on its own arbiter thread, which is also a Python worker:
//! the script runs inline, so a request costs no cross-thread round trip.
//! Timers live in one queue per shard, drained by a short periodic tick.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;

use crate::actors::transport::{parse_or_answer, Flow, Inbound, Protocol, Received, Transports};
use crate::proxy::fast_hash::FastMap;
use crate::proxy::forward::{self, ForwardEdits, Resolver};
use crate::proxy::timers::TimerOwner;
use crate::proxy::{better_response, next_hop, TimerKind, TimerQueue, TimerSettings};
use crate::script::{Action, Decision, LocalIdentity, RequestInput, ScriptCache, ScriptEngine};
use crate::sip::{self, build, HeaderName, Message, Method, Via};

/// How often the shard looks at its timer queue.
const TICK: Duration = Duration::from_millis(10);

/// What every shard shares: transports, the script, timers and identity.
pub struct ShardConfig {
    pub transports: Transports,
    pub script: Arc<ScriptEngine>,
    pub timers: TimerSettings,
    pub local: Arc<LocalIdentity>,
    /// Draining refuses new dialogs with 503.
    pub lifecycle: Arc<crate::lifecycle::Lifecycle>,
    /// Gateway groups: relaying to a destination's uri uses its address.
    pub gateways: Arc<crate::gateway::Gateways>,
    /// Host written in our Via and Record-Route (advertise, or the listen IP).
    pub via_host: String,
}

/// A server transaction is found by the branch of the request's top Via and
/// by method class (ACK joins its INVITE; CANCEL has its own).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ServerKey {
    branch: Box<str>,
    class: MethodClass,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum MethodClass {
    Invite,
    Cancel,
    Other,
}

impl MethodClass {
    fn of(method: Option<Method>) -> Self {
        match method {
            Some(Method::Invite | Method::Ack) => MethodClass::Invite,
            Some(Method::Cancel) => MethodClass::Cancel,
            _ => MethodClass::Other,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ServerState {
    Proceeding,
    /// A non-2xx final was sent (INVITE: awaiting ACK; others: absorbing).
    Completed,
    /// ACK received for the non-2xx final.
    Confirmed,
    /// A 2xx was sent for an INVITE (RFC 6026).
    Accepted,
}

struct ServerTx {
    key: ServerKey,
    /// The request, until a final response is sent (then only the key,
    /// the flow and the last response are needed).
    request: Option<Arc<Message>>,
    flow: Flow,
    reply_to: SocketAddr,
    invite: bool,
    state: ServerState,
    /// The last response sent, replayed for a retransmitted request.
    last_response: Option<Bytes>,
    to_tag: Option<String>,
    /// Client transactions this request was forwarded on.
    branches: Vec<u64>,
    /// Branches that have not yet produced a final response.
    pending: usize,
    best: Option<(u16, Bytes)>,
    final_sent: bool,
    cancelled: bool,
    retransmit: Duration,
}

impl ServerTx {
    fn reliable(&self) -> bool {
        matches!(self.flow, Flow::Tcp(_))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientState {
    /// INVITE: Calling; non-INVITE: Trying.
    Trying,
    Proceeding,
    Completed,
    Accepted,
}

/// Who a client transaction answers to: the server transaction it forks
/// from, or a health prober waiting for the outcome of its OPTIONS.
enum Owner {
    Server(u64),
    Probe {
        reply_to: Recipient<ProbeOutcome>,
        sent: Instant,
    },
}

struct ClientTx {
    owner: Owner,
    request: Bytes,
    hop: forward::Hop,
    invite: bool,
    state: ClientState,
    retransmit: Duration,
    got_provisional: bool,
    /// CANCEL this branch as soon as it answers provisionally.
    cancel_pending: bool,
    cancel_sent: bool,
    /// The branch's outcome has been counted in its response context.
    settled: bool,
    /// Timer C's deadline; pushed back by every provisional response.
    timer_c_due: Instant,
}

/// Sends a response upstream (not a retransmission) and counts it.
fn send_upstream(config: &ShardConfig, flow: &Flow, dest: SocketAddr, bytes: Bytes, code: u16) {
    config.transports.reply(flow, dest, bytes);
    crate::metrics::get().response(code);
}

/// Where one branch goes: its next hop, Request-URI and pre-loaded routes.
struct BranchPlan<'a> {
    hop: forward::Hop,
    new_ruri: Option<&'a str>,
    push_routes: &'a [String],
}

/// A CANCEL we sent for a branch (a non-INVITE client transaction of its own).
struct CancelTx {
    request: Bytes,
    hop: forward::Hop,
    retransmit: Duration,
}

/// The shard actor.
pub struct TransactionShard {
    id: usize,
    config: Arc<ShardConfig>,
    script: Option<ScriptCache>,
    servers: FastMap<u64, ServerTx>,
    server_index: FastMap<ServerKey, u64>,
    clients: FastMap<u64, ClientTx>,
    cancels: FastMap<u64, CancelTx>,
    timers: TimerQueue,
    resolver: Resolver,
    next_id: u64,
    /// This shard's share of the `transactions_active` gauge.
    reported_active: i64,
    own: OwnHeaders,
}

/// Our Via prefix and Record-Route value per transport (indexed by
/// `Protocol as usize`), written once instead of per request.
struct OwnHeaders {
    via_prefix: [String; 2],
    record_route: [String; 2],
}

impl OwnHeaders {
    fn new(config: &ShardConfig) -> Self {
        let host = &config.via_host;
        let port = |protocol| {
            config
                .transports
                .local_addr(protocol)
                .map_or(5060, |a| a.port())
        };
        let (udp, tcp) = (port(Protocol::Udp), port(Protocol::Tcp));
        OwnHeaders {
            via_prefix: [
                format!("SIP/2.0/UDP {host}:{udp};branch="),
                format!("SIP/2.0/TCP {host}:{tcp};branch="),
            ],
            record_route: [
                format!("<sip:{host}:{udp};lr>"),
                format!("<sip:{host}:{tcp};transport=tcp;lr>"),
            ],
        }
    }
}

impl TransactionShard {
    pub fn new(id: usize, config: Arc<ShardConfig>) -> Self {
        TransactionShard {
            own: OwnHeaders::new(&config),
            id,
            config,
            script: None,
            servers: FastMap::default(),
            server_index: FastMap::default(),
            clients: FastMap::default(),
            cancels: FastMap::default(),
            timers: TimerQueue::default(),
            resolver: Resolver::default(),
            next_id: 0,
            reported_active: 0,
        }
    }

    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn settings(&self) -> TimerSettings {
        self.config.timers
    }

    fn is_our_via(&self, via: &Via<'_>) -> bool {
        self.config.local.is_local(via.host, via.port)
    }

    /// Our Via with branch `z9hG4bK<loop hash>.<tail>`; `tail` is the
    /// client transaction id in hex (or `a<hash>` for a stateless ACK).
    fn via_value(
        &self,
        protocol: Protocol,
        loop_hash: u64,
        tail: std::fmt::Arguments<'_>,
    ) -> String {
        use std::fmt::Write;
        let prefix = &self.own.via_prefix[protocol as usize];
        let mut via = String::with_capacity(prefix.len() + 48);
        via.push_str(prefix);
        let _ = write!(via, "z9hG4bK{loop_hash:016x}.{tail};rport");
        via
    }

    // ----- requests -------------------------------------------------------

    fn on_request(&mut self, msg: Message, source: SocketAddr, flow: Flow) {
        let method = msg.method();
        let class = MethodClass::of(method);
        let key = ServerKey {
            branch: transaction_branch(&msg),
            class,
        };
        let now = Instant::now();

        match method {
            Some(Method::Ack) => {
                if let Some(&slot) = self.server_index.get(&key) {
                    self.absorb_ack(slot, now);
                    return;
                }
                // ACK for a 2xx: a new request the script routes (statelessly).
            }
            Some(Method::Cancel) => {
                self.on_cancel(&msg, key, source, flow, now);
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
        let reply_to = forward::reply_address(&msg, source);
        if method == Some(Method::Invite)
            && msg.to_tag().is_none()
            && self.config.lifecycle.is_draining()
        {
            self.reply_stateless(&msg, &flow, reply_to, 503, "Service Unavailable");
            return;
        }
        let loop_hash = forward::loop_hash(&msg);
        if !is_ack {
            if msg.max_forwards() == Some(0) {
                self.reply_stateless(&msg, &flow, reply_to, 483, "Too Many Hops");
                return;
            }
            if forward::is_looping(&msg, loop_hash, |via| self.is_our_via(via)) {
                self.reply_stateless(&msg, &flow, reply_to, 482, "Loop Detected");
                return;
            }
        }

        let msg = Arc::new(msg);
        let slot = if is_ack {
            None
        } else {
            let slot = self.new_id();
            let invite = method == Some(Method::Invite);
            let mut tx = ServerTx {
                key: key.clone(),
                request: Some(msg.clone()),
                flow: flow.clone(),
                reply_to,
                invite,
                state: ServerState::Proceeding,
                last_response: None,
                to_tag: None,
                branches: Vec::new(),
                pending: 0,
                best: None,
                final_sent: false,
                cancelled: false,
                retransmit: self.settings().t1,
            };
            if invite {
                let trying = Bytes::from(build::response(&msg, 100, "Trying", None, &[]));
                self.send_upstream(&flow, reply_to, trying.clone(), 100);
                tx.last_response = Some(trying);
            }
            self.server_index.insert(key, slot);
            self.servers.insert(slot, tx);
            Some(slot)
        };

        let input = RequestInput {
            msg,
            source,
            protocol: flow.protocol(),
            local: self.config.local.clone(),
        };
        let engine = self.config.script.clone();
        let cache = self.script.get_or_insert_with(|| engine.cache());
        let decision = engine.run(cache, input);
        self.apply(decision, slot, source, loop_hash, now);
    }

    /// A retransmitted request: send the last response again (RFC 3261
    /// §17.2.1, §17.2.2), except after a 2xx, which the UAs retransmit.
    fn replay_last_response(&self, slot: u64) {
        let Some(tx) = self.servers.get(&slot) else {
            return;
        };
        if let (Some(response), false) = (&tx.last_response, tx.state == ServerState::Accepted) {
            self.config
                .transports
                .reply(&tx.flow, tx.reply_to, response.clone());
        }
    }

    /// Carries out what the script decided. `slot` is the server
    /// transaction (None for an ACK, which is relayed statelessly).
    fn apply(
        &mut self,
        decision: Decision,
        slot: Option<u64>,
        source: SocketAddr,
        loop_hash: u64,
        now: Instant,
    ) {
        let Some(input) = &decision.input else {
            if let Some(slot) = slot {
                self.reply_local(slot, 500, "Server Internal Error", now);
            }
            return;
        };
        let msg = &input.msg;
        if decision.failed {
            match slot {
                Some(slot) => self.reply_local(slot, 500, "Server Internal Error", now),
                None => tracing::warn!(
                    call_id = msg.call_id().unwrap_or(""),
                    "ACK dropped: script failed"
                ),
            }
            return;
        }
        match &decision.action {
            None => {
                tracing::debug!(
                    method = msg.method_str(),
                    call_id = msg.call_id().unwrap_or(""),
                    "script took no action; request dropped"
                );
                if let Some(slot) = slot {
                    self.remove_server(slot);
                }
            }
            Some(Action::Reply {
                code,
                reason,
                headers,
            }) => match slot {
                Some(slot) => {
                    let reason = reason.as_deref().unwrap_or(build::default_reason(*code));
                    self.reply_local_with(slot, *code, reason, headers, now);
                }
                None => tracing::debug!("script replied to an ACK; nothing sent"),
            },
            Some(Action::Relay { uri }) => {
                let target = uri
                    .clone()
                    .or_else(|| forward::route_uri(msg, decision.routes_popped))
                    .or_else(|| decision.new_ruri.clone())
                    .or_else(|| msg.request_uri().map(str::to_string))
                    .unwrap_or_default();
                match self.hop_for(&target) {
                    Ok(hop) => {
                        let plan = BranchPlan {
                            hop,
                            new_ruri: decision.new_ruri.as_deref(),
                            push_routes: &[],
                        };
                        self.relay(&decision, plan, slot, source, loop_hash, now)
                    }
                    Err(e) => {
                        tracing::warn!(target = %target, error = %e, "cannot relay");
                        if let Some(slot) = slot {
                            self.reply_local(slot, 478, "Unresolvable Destination", now)
                        }
                    }
                }
            }
            Some(Action::Fork { targets }) => {
                let Some(slot) = slot else {
                    tracing::debug!("script forked an ACK; nothing sent");
                    return;
                };
                for target in targets {
                    let first_hop = target.path.first().map_or_else(
                        || target.uri.clone(),
                        |route| {
                            sip::NameAddr::parse(route)
                                .map_or_else(|_| route.clone(), |a| a.uri.to_string())
                        },
                    );
                    match self.hop_for(&first_hop) {
                        Ok(hop) => {
                            let plan = BranchPlan {
                                hop,
                                new_ruri: Some(&target.uri),
                                push_routes: &target.path,
                            };
                            self.relay(&decision, plan, Some(slot), source, loop_hash, now);
                        }
                        Err(e) => {
                            tracing::warn!(target = %target.uri, error = %e, "fork branch skipped")
                        }
                    }
                }
                if self
                    .servers
                    .get(&slot)
                    .is_some_and(|tx| tx.branches.is_empty())
                {
                    self.reply_local(slot, 478, "Unresolvable Destination", now);
                }
            }
        }
    }

    /// The next hop for a URI: a gateway destination's address, or DNS.
    fn hop_for(&mut self, uri: &str) -> Result<forward::Hop, forward::HopError> {
        let gateways = &self.config.gateways;
        next_hop(uri, &mut self.resolver, |uri| gateways.address_of(uri))
    }

    /// Forwards the request on one new branch (or statelessly for an ACK).
    fn relay(
        &mut self,
        decision: &Decision,
        plan: BranchPlan<'_>,
        slot: Option<u64>,
        source: SocketAddr,
        loop_hash: u64,
        now: Instant,
    ) {
        let Some(input) = &decision.input else { return };
        let msg = &input.msg;
        let hop = plan.hop;
        let id = self.new_id();
        let via = match slot {
            Some(_) => self.via_value(hop.protocol, loop_hash, format_args!("{id:x}")),
            // A stateless ACK keeps one branch across its retransmissions.
            None => {
                let upstream = msg.top_via().and_then(|v| v.branch()).unwrap_or("");
                let hash = xxhash_rust::xxh3::xxh3_64(upstream.as_bytes());
                self.via_value(hop.protocol, loop_hash, format_args!("a{hash:x}"))
            }
        };
        let record_route = decision
            .record_route
            .then(|| self.own.record_route[input.protocol as usize].as_str());
        let bytes = Bytes::from(forward::forward_request(
            msg,
            &ForwardEdits {
                new_ruri: plan.new_ruri,
                routes_popped: decision.routes_popped,
                header_edits: &decision.header_edits,
                record_route,
                push_routes: plan.push_routes,
                via: &via,
                source,
            },
        ));
        self.config
            .transports
            .send(hop.protocol, hop.addr, bytes.clone());
        let Some(slot) = slot else { return };
        let invite = msg.method() == Some(Method::Invite);
        let settings = self.settings();
        self.clients.insert(
            id,
            ClientTx {
                owner: Owner::Server(slot),
                request: bytes,
                hop: hop.clone(),
                invite,
                state: ClientState::Trying,
                retransmit: settings.t1,
                got_provisional: false,
                cancel_pending: false,
                cancel_sent: false,
                settled: false,
                timer_c_due: now + settings.timer_c,
            },
        );
        if let Some(tx) = self.servers.get_mut(&slot) {
            tx.branches.push(id);
            tx.pending += 1;
        }
        let owner = TimerOwner::Client(id);
        if hop.protocol == Protocol::Udp {
            self.timers.arm(
                now,
                settings.t1,
                owner,
                if invite { TimerKind::A } else { TimerKind::E },
            );
        }
        self.timers.arm(
            now,
            settings.timeout(),
            owner,
            if invite { TimerKind::B } else { TimerKind::F },
        );
        if invite {
            self.timers.arm(now, settings.timer_c, owner, TimerKind::C);
        }
    }

    fn absorb_ack(&mut self, slot: u64, now: Instant) {
        let t4 = self.settings().t4;
        if let Some(tx) = self.servers.get_mut(&slot) {
            if tx.state == ServerState::Completed {
                tx.state = ServerState::Confirmed;
                let linger = if tx.reliable() { Duration::ZERO } else { t4 };
                self.timers
                    .arm(now, linger, TimerOwner::Server(slot), TimerKind::I);
            }
        }
    }

    fn on_cancel(
        &mut self,
        msg: &Message,
        key: ServerKey,
        source: SocketAddr,
        flow: Flow,
        now: Instant,
    ) {
        let reply_to = forward::reply_address(msg, source);
        let invite_key = ServerKey {
            branch: key.branch,
            class: MethodClass::Invite,
        };
        let Some(&slot) = self.server_index.get(&invite_key) else {
            self.reply_stateless(msg, &flow, reply_to, 481, "Call/Transaction Does Not Exist");
            return;
        };
        let Some(tx) = self.servers.get_mut(&slot) else {
            return;
        };
        let to_tag = tx.to_tag.get_or_insert_with(build::new_tag).clone();
        let ok = build::response(msg, 200, "OK", Some(&to_tag), &[]);
        send_upstream(&self.config, &flow, reply_to, Bytes::from(ok), 200);
        if tx.final_sent || tx.cancelled {
            return;
        }
        tx.cancelled = true;
        let branches = tx.branches.clone();
        if branches.is_empty() {
            self.reply_local(slot, 487, "Request Terminated", now);
            return;
        }
        for id in branches {
            self.cancel_branch(id, now);
        }
    }

    /// Sends CANCEL on a branch once it has answered provisionally; before
    /// that, remembers to (RFC 3261 §9.1).
    fn cancel_branch(&mut self, id: u64, now: Instant) {
        let Some(client) = self.clients.get_mut(&id) else {
            return;
        };
        if client.cancel_sent
            || !client.invite
            || client.state != ClientState::Proceeding && client.state != ClientState::Trying
        {
            return;
        }
        if !client.got_provisional {
            client.cancel_pending = true;
            return;
        }
        client.cancel_sent = true;
        let Ok(sent) = sip::parse(client.request.clone()) else {
            return;
        };
        let cancel = Bytes::from(build::cancel(&sent));
        let hop = client.hop.clone();
        self.config
            .transports
            .send(hop.protocol, hop.addr, cancel.clone());
        let settings = self.settings();
        if hop.protocol == Protocol::Udp {
            self.timers
                .arm(now, settings.t1, TimerOwner::Cancel(id), TimerKind::E);
        }
        self.timers.arm(
            now,
            settings.timeout(),
            TimerOwner::Cancel(id),
            TimerKind::F,
        );
        self.cancels.insert(
            id,
            CancelTx {
                request: cancel,
                hop,
                retransmit: settings.t1,
            },
        );
    }

    // ----- responses ------------------------------------------------------

    fn on_response(&mut self, msg: Message, now: Instant) {
        let Some(via) = msg.top_via() else { return };
        if !self.is_our_via(&via) {
            tracing::debug!(
                call_id = msg.call_id().unwrap_or(""),
                "response not for us; dropped"
            );
            return;
        }
        let id = via.branch().and_then(parse_client_id);
        let is_cancel = msg.cseq().is_some_and(|(_, m)| m == "CANCEL");
        match id {
            Some(id) if is_cancel => {
                if msg.status().unwrap_or(0) >= 200 {
                    self.cancels.remove(&id);
                }
            }
            Some(id) if self.clients.contains_key(&id) => self.on_client_response(id, msg, now),
            _ => self.forward_stray(&msg),
        }
    }

    fn on_client_response(&mut self, id: u64, msg: Message, now: Instant) {
        let code = msg.status().unwrap_or(0);
        let settings = self.settings();
        let Some(client) = self.clients.get_mut(&id) else {
            return;
        };
        let slot = match &client.owner {
            Owner::Server(slot) => *slot,
            Owner::Probe { reply_to, sent } => {
                if code >= 200 {
                    reply_to.do_send(ProbeOutcome {
                        status: Some(code),
                        retry_after: retry_after(&msg),
                        latency: now.saturating_duration_since(*sent),
                    });
                    self.clients.remove(&id);
                }
                return;
            }
        };
        if code < 200 {
            if client.state == ClientState::Trying {
                client.state = ClientState::Proceeding;
            }
            if client.state != ClientState::Proceeding {
                return;
            }
            client.got_provisional = true;
            client.timer_c_due = now + settings.timer_c;
            if client.cancel_pending {
                client.cancel_pending = false;
                self.cancel_branch(id, now);
            }
            if code > 100 {
                self.forward_provisional(slot, &msg);
            }
            return;
        }
        if client.invite && (200..300).contains(&code) {
            let first = client.state != ClientState::Accepted;
            client.state = ClientState::Accepted;
            // Only 2xx retransmissions are left to forward: nothing to resend.
            client.request = Bytes::new();
            let was_settled = std::mem::replace(&mut client.settled, true);
            if first {
                self.timers.arm(
                    now,
                    settings.timeout(),
                    TimerOwner::Client(id),
                    TimerKind::M,
                );
            }
            if !was_settled {
                self.branch_settled(slot);
            }
            self.forward_2xx(slot, &msg, now);
            return;
        }
        if client.state == ClientState::Completed || client.state == ClientState::Accepted {
            // A retransmitted final: re-send an INVITE's ACK, absorb the rest.
            if client.invite && client.state == ClientState::Completed {
                self.config.transports.send(
                    client.hop.protocol,
                    client.hop.addr,
                    client.request.clone(),
                );
            }
            return;
        }
        client.state = ClientState::Completed;
        let reliable = client.hop.protocol == Protocol::Tcp;
        let was_settled = std::mem::replace(&mut client.settled, true);
        let invite = client.invite;
        if !invite {
            client.request = Bytes::new();
        }
        if invite {
            self.send_ack(id, &msg);
            let linger = if reliable {
                Duration::ZERO
            } else {
                Duration::from_secs(32).min(settings.timeout())
            };
            self.timers
                .arm(now, linger, TimerOwner::Client(id), TimerKind::D);
        } else {
            let linger = if reliable {
                Duration::ZERO
            } else {
                settings.t4
            };
            self.timers
                .arm(now, linger, TimerOwner::Client(id), TimerKind::K);
        }
        if !was_settled {
            self.branch_settled(slot);
            let upstream = Bytes::from(forward::strip_top_via(&msg));
            self.branch_final(slot, code, upstream, now);
        }
    }

    /// ACKs a non-2xx final hop by hop (RFC 3261 §17.1.1.3).
    fn send_ack(&mut self, id: u64, response: &Message) {
        let Some(client) = self.clients.get(&id) else {
            return;
        };
        let Ok(sent) = sip::parse(client.request.clone()) else {
            return;
        };
        let ack = Bytes::from(build::ack_for_non2xx(&sent, response));
        self.config
            .transports
            .send(client.hop.protocol, client.hop.addr, ack.clone());
        // From now on the ACK is what a retransmitted final gets.
        if let Some(client) = self.clients.get_mut(&id) {
            client.request = ack;
        }
    }

    fn branch_settled(&mut self, slot: u64) {
        if let Some(tx) = self.servers.get_mut(&slot) {
            tx.pending = tx.pending.saturating_sub(1);
        }
    }

    fn forward_provisional(&mut self, slot: u64, msg: &Message) {
        let Some(tx) = self.servers.get_mut(&slot) else {
            return;
        };
        if tx.final_sent {
            return;
        }
        let bytes = Bytes::from(forward::strip_top_via(msg));
        let code = msg.status().unwrap_or(0);
        send_upstream(&self.config, &tx.flow, tx.reply_to, bytes.clone(), code);
        tx.last_response = Some(bytes);
    }

    /// Every 2xx goes upstream, even after another branch's (§16.7 step 5);
    /// the first one also settles the server transaction.
    fn forward_2xx(&mut self, slot: u64, msg: &Message, now: Instant) {
        let bytes = Bytes::from(forward::strip_top_via(msg));
        let code = msg.status().unwrap_or(200);
        let Some(tx) = self.servers.get(&slot) else {
            return;
        };
        if tx.final_sent {
            send_upstream(&self.config, &tx.flow, tx.reply_to, bytes, code);
        } else {
            self.send_final(slot, code, bytes, now);
        }
    }

    /// A branch ended with a non-2xx final (or timed out): keep the best, and
    /// answer upstream once no branch is left pending (§16.7 step 6).
    fn branch_final(&mut self, slot: u64, code: u16, upstream: Bytes, now: Instant) {
        let Some(tx) = self.servers.get_mut(&slot) else {
            return;
        };
        if tx.final_sent {
            return;
        }
        if better_response(tx.best.as_ref().map(|(c, _)| *c), code) {
            tx.best = Some((code, upstream));
        }
        if tx.invite && code >= 600 {
            let others: Vec<u64> = tx.branches.clone();
            for id in others {
                self.cancel_branch(id, now);
            }
        }
        let Some(tx) = self.servers.get_mut(&slot) else {
            return;
        };
        if tx.pending > 0 {
            return;
        }
        match tx.best.take() {
            Some((503, _)) => self.reply_local(slot, 500, "Server Internal Error", now),
            Some((code, bytes)) => self.send_final(slot, code, bytes, now),
            None => self.reply_local(slot, 408, "Request Timeout", now),
        }
    }

    /// A stray response whose top Via is ours: pop it and send it on by the
    /// next Via (2xx retransmissions after the transaction ended take this way).
    fn forward_stray(&mut self, msg: &Message) {
        let Some(next) = msg.header_values(HeaderName::Via).nth(1) else {
            return;
        };
        let Some(dest) = Via::parse(next)
            .ok()
            .as_ref()
            .and_then(forward::response_destination)
        else {
            return;
        };
        let protocol = match Via::parse(next).map(|v| v.transport.to_ascii_uppercase()) {
            Ok(t) if t == "TCP" => Protocol::Tcp,
            _ => Protocol::Udp,
        };
        let bytes = Bytes::from(forward::strip_top_via(msg));
        self.config.transports.send(protocol, dest, bytes);
    }

    // ----- local responses -------------------------------------------------

    /// Answers a request from this proxy (not forwarded from a branch).
    fn reply_local(&mut self, slot: u64, code: u16, reason: &str, now: Instant) {
        self.reply_local_with(slot, code, reason, &[], now);
    }

    fn reply_local_with(
        &mut self,
        slot: u64,
        code: u16,
        reason: &str,
        headers: &[(String, String)],
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
        let extra: Vec<(&str, &str)> = headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        let bytes = Bytes::from(build::response(
            request,
            code,
            reason,
            to_tag.as_deref(),
            &extra,
        ));
        if code < 200 {
            send_upstream(&self.config, &tx.flow, tx.reply_to, bytes.clone(), code);
            tx.last_response = Some(bytes);
            return;
        }
        self.send_final(slot, code, bytes, now);
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
        send_upstream(&self.config, &tx.flow, tx.reply_to, bytes.clone(), code);
        // What lingers for the timers is kept small: the key, the flow and
        // the response to replay (none after a 2xx, which the UAs resend).
        tx.request = None;
        tx.best = None;
        tx.last_response = Some(bytes);
        let reliable = tx.reliable();
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
        // Branches still running are no longer wanted.
        for id in std::mem::take(&mut tx.branches) {
            self.cancel_branch(id, now);
        }
    }

    fn reply_stateless(
        &self,
        msg: &Message,
        flow: &Flow,
        dest: SocketAddr,
        code: u16,
        reason: &str,
    ) {
        let to_tag = (msg.to_tag().is_none()).then(build::new_tag);
        let bytes = build::response(msg, code, reason, to_tag.as_deref(), &[]);
        self.send_upstream(flow, dest, Bytes::from(bytes), code);
    }

    fn send_upstream(&self, flow: &Flow, dest: SocketAddr, bytes: Bytes, code: u16) {
        send_upstream(&self.config, flow, dest, bytes, code);
    }

    fn remove_server(&mut self, slot: u64) {
        if let Some(tx) = self.servers.remove(&slot) {
            self.server_index.remove(&tx.key);
        }
    }

    // ----- timers -----------------------------------------------------------

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some((owner, kind)) = self.timers.pop_due(now) {
            match owner {
                TimerOwner::Server(slot) => self.server_timer(slot, kind, now),
                TimerOwner::Client(id) => self.client_timer(id, kind, now),
                TimerOwner::Cancel(id) => self.cancel_timer(id, kind, now),
            }
        }
    }

    fn server_timer(&mut self, slot: u64, kind: TimerKind, now: Instant) {
        let settings = self.settings();
        let Some(tx) = self.servers.get_mut(&slot) else {
            return;
        };
        match kind {
            TimerKind::G if tx.state == ServerState::Completed => {
                if let Some(response) = &tx.last_response {
                    self.config
                        .transports
                        .reply(&tx.flow, tx.reply_to, response.clone());
                }
                tx.retransmit = settings.backoff(tx.retransmit, true);
                self.timers
                    .arm(now, tx.retransmit, TimerOwner::Server(slot), TimerKind::G);
            }
            TimerKind::H if tx.state == ServerState::Completed => {
                tracing::debug!(
                    call_id = tx.key.branch.as_ref(),
                    "no ACK for final response (Timer H)"
                );
                self.remove_server(slot);
            }
            TimerKind::I | TimerKind::J | TimerKind::L => self.remove_server(slot),
            _ => {}
        }
    }

    fn client_timer(&mut self, id: u64, kind: TimerKind, now: Instant) {
        let settings = self.settings();
        let Some(client) = self.clients.get_mut(&id) else {
            return;
        };
        let live = matches!(client.state, ClientState::Trying | ClientState::Proceeding);
        match kind {
            TimerKind::A if client.state == ClientState::Trying => {
                self.config.transports.send(
                    client.hop.protocol,
                    client.hop.addr,
                    client.request.clone(),
                );
                client.retransmit = settings.backoff(client.retransmit, false);
                self.timers
                    .arm(now, client.retransmit, TimerOwner::Client(id), TimerKind::A);
            }
            TimerKind::E if live => {
                self.config.transports.send(
                    client.hop.protocol,
                    client.hop.addr,
                    client.request.clone(),
                );
                client.retransmit = if client.state == ClientState::Proceeding {
                    settings.t2
                } else {
                    settings.backoff(client.retransmit, true)
                };
                self.timers
                    .arm(now, client.retransmit, TimerOwner::Client(id), TimerKind::E);
            }
            TimerKind::B if client.state == ClientState::Trying => {
                self.branch_timeout(id, now, "Timer B")
            }
            TimerKind::F if live => self.branch_timeout(id, now, "Timer F"),
            TimerKind::C
                if client.state == ClientState::Proceeding
                    || client.state == ClientState::Trying =>
            {
                if now < client.timer_c_due {
                    let wait = client.timer_c_due - now;
                    self.timers
                        .arm(now, wait, TimerOwner::Client(id), TimerKind::C);
                    return;
                }
                if client.state == ClientState::Proceeding {
                    // §16.8: CANCEL the branch and act as if it returned 408.
                    self.cancel_branch(id, now);
                    self.branch_timeout(id, now, "Timer C");
                }
            }
            TimerKind::D | TimerKind::K | TimerKind::M => {
                self.clients.remove(&id);
            }
            _ => {}
        }
    }

    /// A branch got no final response in time: it counts as a 408 (§16.7, §16.8).
    fn branch_timeout(&mut self, id: u64, now: Instant, timer: &str) {
        let Some(client) = self.clients.get_mut(&id) else {
            return;
        };
        let slot = match &client.owner {
            Owner::Server(slot) => *slot,
            Owner::Probe { reply_to, sent } => {
                reply_to.do_send(ProbeOutcome {
                    status: None,
                    retry_after: None,
                    latency: now.saturating_duration_since(*sent),
                });
                self.clients.remove(&id);
                return;
            }
        };
        let was_settled = std::mem::replace(&mut client.settled, true);
        // A branch cancelled by Timer C stays (already settled) to ACK its
        // 487 when that comes; Timer D removes it either way.
        if client.cancel_sent {
            let linger = self.config.timers.timeout();
            self.timers
                .arm(now, linger, TimerOwner::Client(id), TimerKind::D);
        } else {
            self.clients.remove(&id);
        }
        if was_settled {
            return;
        }
        tracing::info!(branch = id, timer, "branch timed out; counting it as 408");
        self.branch_settled(slot);
        let Some(tx) = self.servers.get(&slot) else {
            return;
        };
        let Some(request) = &tx.request else {
            return; // answered already
        };
        let to_tag = tx.to_tag.clone().unwrap_or_else(build::new_tag);
        let timeout = Bytes::from(build::response(
            request,
            408,
            "Request Timeout",
            Some(&to_tag),
            &[],
        ));
        if let Some(tx) = self.servers.get_mut(&slot) {
            tx.to_tag.get_or_insert(to_tag);
        }
        self.branch_final(slot, 408, timeout, now);
    }

    fn cancel_timer(&mut self, id: u64, kind: TimerKind, now: Instant) {
        let settings = self.settings();
        let Some(cancel) = self.cancels.get_mut(&id) else {
            return;
        };
        match kind {
            TimerKind::E => {
                self.config.transports.send(
                    cancel.hop.protocol,
                    cancel.hop.addr,
                    cancel.request.clone(),
                );
                cancel.retransmit = settings.backoff(cancel.retransmit, true);
                self.timers
                    .arm(now, cancel.retransmit, TimerOwner::Cancel(id), TimerKind::E);
            }
            TimerKind::F => {
                self.cancels.remove(&id);
            }
            _ => {}
        }
    }

    /// Sends an OPTIONS probe as a non-INVITE client transaction from our own
    /// listen socket; the outcome goes to the prober.
    fn send_probe(&mut self, probe: SendProbe, now: Instant) {
        let id = self.new_id();
        let via = self.via_value(probe.hop.protocol, 0, format_args!("{id:x}"));
        let from = format!(
            "<sip:siphon@{}>;tag={}",
            self.config.via_host,
            build::new_tag()
        );
        let to = format!("<{}>", probe.uri);
        let bytes = Bytes::from(build::request(
            "OPTIONS",
            &probe.uri,
            &via,
            &from,
            &to,
            &probe.call_id,
            1,
            &[],
        ));
        self.config
            .transports
            .send(probe.hop.protocol, probe.hop.addr, bytes.clone());
        let settings = self.settings();
        self.clients.insert(
            id,
            ClientTx {
                owner: Owner::Probe {
                    reply_to: probe.reply_to,
                    sent: now,
                },
                request: bytes,
                hop: probe.hop.clone(),
                invite: false,
                state: ClientState::Trying,
                retransmit: settings.t1,
                got_provisional: false,
                cancel_pending: false,
                cancel_sent: false,
                settled: false,
                timer_c_due: now,
            },
        );
        let owner = TimerOwner::Client(id);
        if probe.hop.protocol == Protocol::Udp {
            self.timers.arm(now, settings.t1, owner, TimerKind::E);
        }
        self.timers
            .arm(now, settings.timeout(), owner, TimerKind::F);
    }

    /// Moves the process-wide gauge by how much this shard's count changed.
    fn report_active(&mut self) {
        let active = (self.servers.len() + self.clients.len() + self.cancels.len()) as i64;
        if active != self.reported_active {
            crate::metrics::get()
                .transactions_active
                .inc_by(active - self.reported_active);
            self.reported_active = active;
        }
    }
}

/// Ask a shard to probe a destination with OPTIONS. Route it with
/// `Router::dispatch_probe` so that the shard owning `call_id` sends it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SendProbe {
    pub uri: String,
    pub hop: forward::Hop,
    pub call_id: String,
    pub reply_to: Recipient<ProbeOutcome>,
}

/// The result of one probe: the final status, or None when it timed out.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct ProbeOutcome {
    pub status: Option<u16>,
    pub retry_after: Option<Duration>,
    pub latency: Duration,
}

/// Retry-After in seconds (RFC 3261 §20.33), ignoring any comment or params.
fn retry_after(msg: &Message) -> Option<Duration> {
    let value = msg.header(HeaderName::RetryAfter)?;
    let digits: &str = value
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap_or("");
    digits.parse().ok().map(Duration::from_secs)
}

/// The server-transaction identifier: the RFC 3261 branch, or for an RFC 2543
/// request (no magic cookie) the fields that identify it instead.
fn transaction_branch(msg: &Message) -> Box<str> {
    let branch = msg.top_via().and_then(|v| v.branch()).unwrap_or("");
    if branch.starts_with("z9hG4bK") {
        return branch.into();
    }
    format!(
        "2543|{}|{}|{}|{}",
        msg.call_id().unwrap_or(""),
        msg.cseq().map_or(0, |(n, _)| n),
        msg.from_tag().unwrap_or(""),
        msg.header(HeaderName::Via).unwrap_or("")
    )
    .into()
}

/// Our client transaction id from a branch `z9hG4bK<loop>.<id>`.
fn parse_client_id(branch: &str) -> Option<u64> {
    let rest = branch.strip_prefix("z9hG4bK")?;
    let (_, id) = rest.split_once('.')?;
    u64::from_str_radix(id, 16).ok()
}

impl Actor for TransactionShard {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        crate::script::keep_thread_state();
        ctx.run_interval(TICK, |shard, _ctx| {
            shard.fire_timers();
            shard.report_active();
        });
        tracing::debug!(shard = self.id, "transaction shard started");
    }
}

impl Handler<SendProbe> for TransactionShard {
    type Result = ();

    fn handle(&mut self, probe: SendProbe, _ctx: &mut Self::Context) {
        self.send_probe(probe, Instant::now());
    }
}

impl TransactionShard {
    fn on_message(&mut self, msg: Message, source: SocketAddr, flow: Flow, now: Instant) {
        if msg.is_request() {
            crate::metrics::get().request(msg.method_str());
            self.on_request(msg, source, flow);
        } else {
            self.on_response(msg, now);
        }
        self.report_active();
    }
}

impl Handler<Inbound> for TransactionShard {
    type Result = ();

    fn handle(&mut self, inbound: Inbound, _ctx: &mut Self::Context) {
        let started = Instant::now();
        self.on_message(inbound.msg, inbound.source, inbound.flow, started);
        crate::metrics::actors()
            .transaction
            .record(started.elapsed());
    }
}

/// A lone shard reads its UDP sockets itself (see `server::start`): a
/// datagram is parsed and handled in one go, with no mailbox in between.
impl StreamHandler<Received> for TransactionShard {
    fn handle(&mut self, item: Received, _ctx: &mut Self::Context) {
        let socket = item.socket;
        let Some((bytes, source)) = item.into_datagram() else {
            return;
        };
        let flow = Flow::Udp(socket);
        // Receiving and parsing count as the UDP transport's work, the rest
        // as the shard's, as they would with the actors apart.
        let parsed = {
            let _busy = crate::metrics::actors().udp.measure();
            parse_or_answer(bytes, source, &flow, &self.config.transports)
        };
        if let Some(msg) = parsed {
            let _busy = crate::metrics::actors().transaction.measure();
            self.on_message(msg, source, flow, Instant::now());
        }
    }

    fn finished(&mut self, _ctx: &mut Self::Context) {
        tracing::error!(shard = self.id, "UDP receive stream ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_round_trip_through_our_branch_format() {
        assert_eq!(
            parse_client_id(&format!("z9hG4bK{:016x}.{:x}", 0xabc_u64, 42)),
            Some(42)
        );
        assert_eq!(parse_client_id("z9hG4bK-sipp-1"), None);
        assert_eq!(parse_client_id("garbage"), None);
    }

    #[test]
    fn ack_joins_its_invite_and_cancel_stands_apart() {
        assert_eq!(
            MethodClass::of(Some(Method::Ack)),
            MethodClass::of(Some(Method::Invite))
        );
        assert_ne!(
            MethodClass::of(Some(Method::Cancel)),
            MethodClass::of(Some(Method::Invite))
        );
        assert_eq!(MethodClass::of(Some(Method::Bye)), MethodClass::Other);
    }
}
