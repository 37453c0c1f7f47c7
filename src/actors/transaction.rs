//! The transaction shard: a thin actor around the sans-I/O engine
//! ([`crate::proxy::engine`]) for every Call-ID that hashes to this shard.
//! It feeds the engine received messages, script decisions, probes and the
//! passing of time, and carries out what comes back: datagrams and TCP
//! writes, script runs, probe outcomes and metrics.
//!
//! Each shard runs on its own arbiter thread. The script runs on the
//! script-executor actors ([`crate::actors::executor`]): the shard hands a
//! request over and goes on, so a handler that hangs does not stop the
//! retransmissions, responses, timers and probes of the other calls.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::actors::dispatcher::Dispatcher;
use crate::actors::executor::{run_job, ExecutorPool, Job, ScriptDone};
use crate::actors::transport::{parse_or_answer, Flow, Inbound, Received, Transports};
use crate::proxy::dns::{Answer, HostCache, Wait};
use crate::proxy::engine::NextHops;
use crate::proxy::engine::{Deferred, Engine, EngineConfig, Output, ScriptRun};
use crate::proxy::fast_hash::FastMap;
use crate::proxy::forward;
use crate::proxy::{Decision, HopError, TimerSettings};
use crate::script::{LocalIdentity, Replay, Run, ScriptCache};
use crate::sip::Message;

pub use crate::proxy::engine::ProbeOutcome;

/// How many times one decision may wait for names (see
/// [`TransactionShard::decide_again`]).
const MAX_WAITS: u32 = 4;

/// The most script runs a shard keeps waiting for Redis reads; past it a
/// lookup that misses in memory answers "no binding" at once.
const MAX_AWAITING_RUNS: usize = 1024;

/// How often the shard lets the engine's timers fire.
const TICK: Duration = Duration::from_millis(10);

/// What every shard shares: transports, the script, timers and identity.
pub struct ShardConfig {
    pub transports: Transports,
    /// Where the script runs, and how long a run may take.
    pub executors: Arc<ExecutorPool>,
    pub script_timeout: Duration,
    pub timers: TimerSettings,
    pub local: Arc<LocalIdentity>,
    /// Draining refuses new dialogs with 503.
    pub lifecycle: Arc<crate::lifecycle::Lifecycle>,
    /// Gateway groups: relaying to a destination's uri uses its address.
    pub gateways: Arc<crate::gateway::Gateways>,
    /// Where relay outcomes go for passive health.
    pub gateway_service: Arc<crate::actors::gateway::GatewayService>,
    /// The Retry-After of the 503s sent while draining.
    pub drain_secs: u64,
    /// Each shard's share of `limits.max_transactions`.
    pub max_transactions: usize,
    /// Each shard's share of `limits.ended_transactions_mb`, in bytes.
    pub ended_bytes: usize,
    /// `limits.udp_max_request_bytes`.
    pub udp_max_request_bytes: usize,
    /// `gateway.call_max_secs`.
    pub call_max: Duration,
    /// Each shard's share of the calls counted at once.
    pub max_tracked_calls: usize,
    /// The bound on each shard's queue, given back as messages are handled.
    pub ingress: Arc<crate::actors::transport::IngressGate>,
    /// Looks up the names a relay meets, off this thread.
    pub dns: Arc<crate::actors::dns::Dns>,
    /// One key for every shard (see `proxy::flow`).
    pub flow_tokens: crate::proxy::flow::FlowTokens,
    /// Seals our Record-Routes (`proxy::seal`), and whether an unsealed
    /// one is still accepted.
    pub seals: crate::proxy::seal::DialogSeals,
    pub accept_unsealed: bool,
    /// Where a script's relay may go (`security.relay_to`).
    pub relay_policy: Arc<crate::security::RelayPolicy>,
    /// Reads the AoRs that scripts' lookups miss in memory from Redis.
    pub registrar: Arc<crate::registrar::Registrar>,
    /// `tracing.otlp`: where the spans of traced calls go (None: off).
    pub traces: Option<Arc<crate::actors::otlp::TraceExport>>,
}

/// The shard actor.
pub struct TransactionShard {
    id: usize,
    config: Arc<ShardConfig>,
    engine: Engine<Flow>,
    /// The script runs sent to the executors and not answered yet.
    dispatcher: Dispatcher,
    /// Scratch for the runs [`Dispatcher::check`] times out.
    timed_out: Vec<u64>,
    /// With `script.workers: 0`, this shard runs the script itself.
    inline: Option<ScriptCache>,
    /// Names looked up, and the names being looked up now.
    hosts: HostCache,
    /// Decisions waiting for names, by ticket, with how often they waited.
    deferred: FastMap<u64, (Decision, u32)>,
    /// Script runs waiting for an AoR read from Redis, by AoR.
    awaiting_aor: FastMap<String, Vec<(ScriptRun, Replay)>>,
    awaiting_runs: usize,
    /// This actor, for lookups to report back to.
    myself: Option<Addr<TransactionShard>>,
    /// Probers waiting for the outcome of their OPTIONS, by probe id.
    probes: FastMap<u64, Recipient<ProbeOutcome>>,
    next_probe: u64,
    /// This shard's share of the `transactions_active` gauge.
    reported_active: i64,
    /// Who we are (with `security.trusted`) and where relays may go: the
    /// config's at boot, a reload's since.
    local: Arc<LocalIdentity>,
    relay_policy: Arc<crate::security::RelayPolicy>,
}

impl TransactionShard {
    pub fn new(id: usize, config: Arc<ShardConfig>) -> Self {
        let engine = Engine::new(EngineConfig {
            timers: config.timers,
            local: config.local.clone(),
            listeners: config.transports.listeners().to_vec(),
            route: crate::actors::transport::route_lookup(),
            branch_secret: [rand::random(), rand::random()],
            drain_secs: config.drain_secs,
            max_transactions: config.max_transactions,
            ended_bytes: config.ended_bytes,
            flow_tokens: config.flow_tokens.clone(),
            seals: config.seals.clone(),
            accept_unsealed: config.accept_unsealed,
            udp_max_request_bytes: config.udp_max_request_bytes,
            call_max: config.call_max,
            max_tracked_calls: config.max_tracked_calls,
            tracing: config.traces.as_ref().map(|traces| traces.settings()),
        });
        TransactionShard {
            id,
            engine,
            dispatcher: Dispatcher::new(config.executors.clone(), config.script_timeout),
            timed_out: Vec::new(),
            inline: config
                .executors
                .is_empty()
                .then(|| config.executors.script().cache()),
            hosts: config.dns.host_cache(),
            deferred: FastMap::default(),
            awaiting_aor: FastMap::default(),
            awaiting_runs: 0,
            myself: None,
            probes: FastMap::default(),
            next_probe: 0,
            reported_active: 0,
            local: config.local.clone(),
            relay_policy: config.relay_policy.clone(),
            config,
        }
    }

    fn on_message(&mut self, msg: Message, source: SocketAddr, flow: Flow, now: Instant) {
        if msg.is_request() {
            crate::metrics::get().request(msg.method_str());
            let draining = self.config.lifecycle.is_draining();
            self.engine
                .handle_request(now, msg, source, flow.listener(), flow, draining);
        } else {
            self.engine.handle_response(now, msg, source);
        }
        self.carry_out(now);
        self.report_active();
    }

    /// Carries out everything the engine has asked for, handing script runs
    /// to the executors.
    fn carry_out(&mut self, now: Instant) {
        while let Some(output) = self.engine.poll_output() {
            match output {
                Output::Send { hop, from, bytes } => self.config.transports.send(&hop, from, bytes),
                Output::Reply {
                    flow,
                    dest,
                    bytes,
                    code,
                } => {
                    self.config.transports.reply(&flow, dest, bytes);
                    if let Some(code) = code {
                        crate::metrics::get().response(code);
                    }
                }
                Output::RunScript(run) => self.run_script(now, run, None),
                Output::RunFailure(run) => {
                    let ticket = run.ticket;
                    self.hand_to_script(now, ticket, Job::Failure(run));
                }
                Output::Health(report) => self.config.gateway_service.report_relay(report),
                Output::Failover(event) => {
                    crate::metrics::get().failover(&event.group, event.failure.label());
                    tracing::info!(
                        call_id = %event.call_id,
                        trace_id = event.trace_id.map(|t| t.hex()),
                        group = %event.group,
                        failed = %event.failed,
                        next = %event.next,
                        reason = %event.failure,
                        "failover"
                    );
                }
                Output::GatewayFull { group } => {
                    crate::metrics::get().gateway_full(&group);
                    tracing::debug!(group = %group, "every destination full; 503");
                }
                Output::CallCollected(call) => {
                    crate::metrics::get().call_collected(&call.group);
                    tracing::warn!(
                        call_id = %call.call_id,
                        group = %call.group,
                        destination = %call.uri,
                        lasted_secs = call.lasted.as_secs(),
                        "call no BYE ended stopped counting at gateway.call_max_secs"
                    );
                }
                Output::Trace(trace) => {
                    if let Some(traces) = &self.config.traces {
                        traces.record(trace);
                    }
                }
                Output::ProbeDone { probe, outcome } => {
                    if let Some(prober) = self.probes.remove(&probe) {
                        prober.do_send(outcome);
                    }
                }
            }
        }
    }

    /// Has `@proxy.on_request` run: a first run (`replay` None), whose
    /// lookup may park it until a Redis read is done, or the second run.
    fn run_script(&mut self, now: Instant, run: ScriptRun, replay: Option<Replay>) {
        let ticket = run.ticket;
        let job = Job::Request {
            run,
            replay,
            // Any run sent may come back asking for a read.
            may_fetch: self.awaiting_runs + self.dispatcher.may_fetch() < MAX_AWAITING_RUNS,
        };
        self.hand_to_script(now, ticket, job);
    }

    /// Sends `job` to its executor, or runs it here with `script.workers: 0`
    /// (no thread hand-off, but a handler that never returns stops this
    /// shard).
    fn hand_to_script(&mut self, now: Instant, ticket: u64, job: Job) {
        let Some(cache) = &mut self.inline else {
            if !self.dispatcher.send(now, ticket, job, &self.local) {
                self.engine
                    .script_timed_out(now, ticket, self.config.script_timeout);
            }
            return;
        };
        let script = self.config.executors.script();
        let outcome = run_job(script, cache, &job, self.local.clone());
        // The run took time on this thread: its decision comes now.
        self.decided(Instant::now(), ticket, outcome, job);
    }

    /// An executor's answer for the run of `done.ticket`.
    fn script_done(&mut self, now: Instant, done: ScriptDone) {
        let metrics = crate::metrics::get();
        let Some(sent) = self.dispatcher.done(done.ticket, done.slot) else {
            metrics.script_late_decisions.inc();
            return;
        };
        metrics
            .script_wait
            .observe(now.saturating_duration_since(sent.at).as_secs_f64());
        if !self.engine.awaits_decision(done.ticket) {
            // Answered 500 at script.timeout_ms already.
            metrics.script_late_decisions.inc();
            return;
        }
        self.decided(now, done.ticket, done.outcome, sent.job);
    }

    /// The script's outcome for the `job` of `ticket`.
    fn decided(&mut self, now: Instant, ticket: u64, outcome: Run, job: Job) {
        match (outcome, job) {
            (Run::Decided(decision), job) => {
                if let Some(on) = decision.capture {
                    let request = match &job {
                        Job::Request { run, .. } => &run.request,
                        Job::Failure(run) => &run.request,
                    };
                    let call_id = request.call_id().unwrap_or("");
                    self.config.transports.set_captured(call_id, on);
                }
                self.decide(now, ticket, decision)
            }
            (Run::Fetch(aor, replay), Job::Request { run, .. }) => {
                self.await_aor(now, aor, run, replay)
            }
            // A failure handler never waits for a read.
            (Run::Fetch(..), Job::Failure(_)) => self.decide(now, ticket, Decision::default()),
        }
    }

    /// Answers 500 for the runs that took longer than `script.timeout_ms`,
    /// and lets the dispatcher replace executors stuck for good.
    fn check_script_runs(&mut self, now: Instant) {
        let mut timed_out = std::mem::take(&mut self.timed_out);
        self.dispatcher.check(now, &self.local, &mut timed_out);
        for ticket in timed_out.drain(..) {
            self.engine
                .script_timed_out(now, ticket, self.config.script_timeout);
        }
        self.timed_out = timed_out;
    }

    /// Parks `run` until `aor` is read from Redis (one read per AoR however
    /// many runs wait for it), off this thread.
    fn await_aor(&mut self, now: Instant, aor: String, run: ScriptRun, mut replay: Replay) {
        if run.trace_id.is_some() {
            replay.read_started(&aor, now);
        }
        let waiting = self.awaiting_aor.entry(aor.clone()).or_default();
        waiting.push((run, replay));
        self.awaiting_runs += 1;
        if waiting.len() > 1 {
            return;
        }
        match (
            self.config.registrar.fetch(aor.clone()),
            self.myself.clone(),
        ) {
            (Some(read), Some(myself)) => {
                actix::spawn(async move {
                    let _ = read.await;
                    myself.do_send(AorRead { aor });
                });
            }
            // No Redis reader (cannot happen once running): decide now.
            _ => self.aor_read(now, &aor),
        }
    }

    /// The runs waiting for `aor` run again, now that its read is cached.
    fn aor_read(&mut self, now: Instant, aor: &str) {
        for (run, replay) in self.awaiting_aor.remove(aor).unwrap_or_default() {
            self.awaiting_runs -= 1;
            self.run_script(now, run, Some(replay));
        }
    }

    /// Hands a script decision to the engine, with how to find next hops.
    /// A decision that needs a name not yet looked up waits for it, and the
    /// shard goes on with other messages meanwhile.
    fn decide(&mut self, now: Instant, ticket: u64, decision: Decision) {
        self.decide_again(now, ticket, decision, 0);
    }

    /// [`Self::decide`] for a decision that has waited `rounds` times. A
    /// fork's names may each be answered, and expire, while it waits for
    /// another: past [`MAX_WAITS`] a name still missing counts as failed.
    fn decide_again(&mut self, now: Instant, ticket: u64, decision: Decision, rounds: u32) {
        let may_wait = rounds < MAX_WAITS;
        let Some(Deferred {
            ticket,
            decision,
            hosts,
        }) = self.hand_over(now, ticket, decision, may_wait)
        else {
            return;
        };
        let mut waiting = false;
        for host in hosts {
            match self.hosts.wait(&host, ticket) {
                Wait::Start => {
                    waiting = true;
                    self.look_up(now, host);
                }
                Wait::Joined => waiting = true,
                Wait::Full => {
                    crate::metrics::get().dns_lookup("refused");
                    tracing::debug!(%host, "too many DNS lookups in flight");
                }
            }
        }
        if waiting {
            self.deferred.insert(ticket, (decision, rounds + 1));
        } else {
            self.hand_over(now, ticket, decision, false);
        }
    }

    /// The engine's part of [`Self::decide`]. Without `may_wait`, a name
    /// not in the cache counts as unresolvable.
    fn hand_over(
        &mut self,
        now: Instant,
        ticket: u64,
        decision: Decision,
        may_wait: bool,
    ) -> Option<Deferred> {
        let mut hops = ShardHops {
            config: &self.config,
            relay_policy: &self.relay_policy,
            hosts: &self.hosts,
            now,
            may_wait,
            rest: None,
        };
        self.engine
            .handle_decision(now, ticket, decision, &mut hops)
    }

    /// Starts a lookup of `host`; its answer comes back as [`Resolved`].
    fn look_up(&mut self, now: Instant, host: String) {
        let Some(myself) = self.myself.clone() else {
            // Not started (cannot happen once running): fail the name now
            // rather than leave it in flight for ever.
            self.hosts.complete(now, &host, Answer::Unreachable);
            return;
        };
        let answer = self.config.dns.lookup_key(host.clone());
        actix::spawn(async move {
            let answer = answer.await;
            myself.do_send(Resolved { host, answer });
        });
    }

    /// Moves the process-wide gauge by how much this shard's count changed.
    fn report_active(&mut self) {
        let active = self.engine.active() as i64;
        if active != self.reported_active {
            crate::metrics::get()
                .transactions_active
                .inc_by(active - self.reported_active);
            self.reported_active = active;
        }
    }
}

/// Where a shard's decisions lead: gateway addresses, its DNS cache (RFC
/// 3263 included), and `security.relay_to`.
struct ShardHops<'a> {
    config: &'a ShardConfig,
    relay_policy: &'a crate::security::RelayPolicy,
    hosts: &'a crate::proxy::dns::HostCache,
    now: Instant,
    /// Without it, a name not in the cache counts as unresolvable.
    may_wait: bool,
    /// The other places of the last URI asked for, when it had several,
    /// for [`NextHops::alternates`] (which asks right after).
    rest: Option<(String, Vec<forward::Hop>)>,
}

impl ShardHops<'_> {
    /// `security.relay_to`'s verdict on a hop.
    fn allowed(&self, hop: forward::Hop) -> Result<forward::Hop, HopError> {
        let configured = self.config.gateways.is_destination_address(hop.addr);
        match self.relay_policy.verdict(hop.addr, configured) {
            Err(why)
                if why.may_be_vouched()
                    && self
                        .config
                        .registrar
                        .has_contact_at(hop.addr, crate::registrar::unix_now()) =>
            {
                Ok(hop)
            }
            Err(why) => Err(HopError::Refused(hop, why)),
            Ok(()) => Ok(hop),
        }
    }
}

impl NextHops for ShardHops<'_> {
    fn next_hop(&mut self, uri: &str) -> Result<forward::Hop, HopError> {
        let gateways = &self.config.gateways;
        let places = forward::places(uri, self.now, self.hosts, |uri| gateways.address_of(uri));
        let first = match places {
            Err(HopError::Lookup(host)) if !self.may_wait => {
                return Err(HopError::Unresolvable(format!(
                    "cannot resolve {host} now (too many lookups, or too long a wait)"
                )))
            }
            Err(e) => return Err(e),
            Ok(forward::Places::One(hop)) => hop,
            Ok(forward::Places::Many(mut hops)) => {
                let first = hops.remove(0);
                self.rest = Some((uri.to_string(), hops));
                first
            }
        };
        self.allowed(first)
    }

    fn alternates(&mut self, uri: &str) -> Vec<forward::Hop> {
        match self.rest.take() {
            Some((asked, hops)) if asked == uri => hops
                .into_iter()
                .filter_map(|hop| self.allowed(hop).ok())
                .collect(),
            _ => Vec::new(),
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
    /// Its answer counts only from the probed address.
    pub strict_source: bool,
    /// How long the prober waits for the answer.
    pub give_up: std::time::Duration,
    /// `probe.from`.
    pub from: Option<Arc<str>>,
    pub call_id: String,
    pub reply_to: Recipient<ProbeOutcome>,
}

/// The TCP connection to `peer` failed (connect refused, reset, closed):
/// branches waiting on it fail over.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LinkFailed {
    /// The connection's peer and protocol; `flow` when the peer opened it.
    pub hop: forward::Hop,
}

impl Handler<LinkFailed> for TransactionShard {
    type Result = ();

    fn handle(&mut self, failed: LinkFailed, _ctx: &mut Self::Context) {
        let now = Instant::now();
        self.engine.handle_link_failure(now, &failed.hop);
        self.carry_out(now);
        self.report_active();
    }
}

/// A lookup that [`TransactionShard::look_up`] started has its answer: the
/// decisions waiting for the name go on.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Resolved {
    pub host: String,
    pub answer: Answer,
}

impl Handler<Resolved> for TransactionShard {
    type Result = ();

    fn handle(&mut self, resolved: Resolved, _ctx: &mut Self::Context) {
        let now = Instant::now();
        for ticket in self.hosts.complete(now, &resolved.host, resolved.answer) {
            if let Some((decision, rounds)) = self.deferred.remove(&ticket) {
                self.decide_again(now, ticket, decision, rounds);
            }
        }
        self.carry_out(now);
        self.report_active();
    }
}

/// A Redis read that [`TransactionShard::await_aor`] started is done (its
/// answer is in the registrar's cache): the runs waiting for it go on.
#[derive(Message)]
#[rtype(result = "()")]
struct AorRead {
    aor: String,
}

impl Handler<AorRead> for TransactionShard {
    type Result = ();

    fn handle(&mut self, read: AorRead, _ctx: &mut Self::Context) {
        let now = Instant::now();
        self.aor_read(now, &read.aor);
        self.carry_out(now);
        self.report_active();
    }
}

impl Handler<ScriptDone> for TransactionShard {
    type Result = ();

    fn handle(&mut self, done: ScriptDone, _ctx: &mut Self::Context) {
        let started = Instant::now();
        self.script_done(started, done);
        self.carry_out(started);
        self.report_active();
        crate::metrics::actors()
            .transaction
            .record_unqueued(started.elapsed());
    }
}

impl actix::Message for ProbeOutcome {
    type Result = ();
}

impl Actor for TransactionShard {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.myself = Some(ctx.address());
        self.dispatcher.reply_to(ctx.address().recipient());
        if self.inline.is_some() {
            crate::script::keep_thread_state();
        }
        ctx.run_interval(TICK, |shard, _ctx| {
            let now = Instant::now();
            shard.check_script_runs(now);
            shard.engine.handle_timeout(now);
            shard.carry_out(now);
            shard.report_active();
        });
        tracing::debug!(shard = self.id, "transaction shard started");
    }
}

/// A reload's settings for new transactions (`transaction`, `limits`,
/// `gateway.call_max_secs`, `security` and `dns`).
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct Reconfigure {
    pub engine: crate::proxy::engine::Reconfigure,
    /// `security.relay_to` (and `trusted`).
    pub relay_policy: Arc<crate::security::RelayPolicy>,
    /// `dns.cache_size` and `dns.negative_ttl_secs`; the names this
    /// shard has cached are looked up again (the servers may have changed).
    pub dns_cache: Option<(usize, Duration)>,
}

impl Handler<Reconfigure> for TransactionShard {
    type Result = ();

    fn handle(&mut self, change: Reconfigure, _ctx: &mut Self::Context) {
        self.local = change.engine.local.clone();
        self.relay_policy = change.relay_policy;
        if let Some((capacity, negative_ttl)) = change.dns_cache {
            self.hosts.reconfigure(capacity, negative_ttl);
        }
        self.engine.reconfigure(change.engine);
    }
}

impl Handler<SendProbe> for TransactionShard {
    type Result = ();

    fn handle(&mut self, probe: SendProbe, _ctx: &mut Self::Context) {
        let now = Instant::now();
        self.next_probe += 1;
        self.probes.insert(self.next_probe, probe.reply_to);
        let target = crate::proxy::engine::ProbeTarget {
            hop: probe.hop,
            strict_source: probe.strict_source,
            give_up: probe.give_up,
            from: probe.from,
        };
        self.engine
            .start_probe(now, self.next_probe, &probe.uri, target, &probe.call_id);
        self.carry_out(now);
    }
}

impl Handler<Inbound> for TransactionShard {
    type Result = ();

    fn handle(&mut self, inbound: Inbound, _ctx: &mut Self::Context) {
        let started = Instant::now();
        self.config.ingress.release(self.id);
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
        self.config
            .transports
            .captured_datagram(socket, source, &bytes);
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
