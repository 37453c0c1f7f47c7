//! The running side of gateway groups: one [`GroupActor`] per group and one
//! [`Prober`] per probed destination, plus the process-wide [`GatewayService`]
//! that the config loader, the server and the script's `gateway` namespace use
//! to add, remove and mark groups.
//!
//! The group actor is the one writer of its group: probe results, passive
//! health reports from the shards, script and admin marks, Retry-After and
//! ejection expiry, each logged once per transition; after each change it
//! publishes the group's view. Selection reads that view on the shard's own
//! thread, with the shard's own rotation state (no lock and no 35–70 µs
//! cross-thread round trip per call, DESIGN.md §6); `Select` asks the actor
//! itself, for the admin API.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::actors::health_share::HealthShare;
use crate::actors::transaction::{ProbeOutcome, SendProbe};
use crate::actors::transport::Transports;
use crate::config::{GroupConfig, ProbeConfig};
use crate::gateway::share::{HealthNews, PEER_RENEW};
use crate::gateway::{FailureReason, Gateways, SharedGroup, Transition, TransitionReason};
use crate::proxy::decision::RelayFailure;
use crate::proxy::forward::Hop;

/// How often a group looks for Retry-After holds that ran out, so the "up"
/// line is logged even when nothing else happens.
const REFRESH_INTERVAL: Duration = Duration::from_millis(500);

/// Share of the interval by which each probe is moved earlier or later, so
/// probes of many destinations (and many LBs) do not fire in lockstep.
const JITTER: f64 = 0.10;

// ---------------------------------------------------------------------------
// Service: the registry of groups and their actors
// ---------------------------------------------------------------------------

/// Every gateway group of this process with its actor.
///
/// Groups can be added before the actor system runs (the config at boot, or a
/// script's module-level `gateway.add_group` while it is first loaded); their
/// actors start in [`GatewayService::start`]. After that, adding a group from
/// a script starts its actor at once, on the system's arbiter.
pub struct GatewayService {
    gateways: Arc<Gateways>,
    transports: OnceLock<Transports>,
    groups: Mutex<HashMap<String, GroupEntry>>,
    /// The shared channel, with `gateway.share_health`.
    share: OnceLock<HealthShare>,
    /// Where changes of a destination's state go (script, webhook).
    events: OnceLock<Arc<crate::actors::events::EventBus>>,
    /// One install, edit or removal at a time (shards run scripts' add_group
    /// while the admin API and reloads run on the system's arbiter): the
    /// registry and the actors must name the same group.
    installing: Mutex<()>,
}

/// What the service remembers about one group besides its selection state.
struct GroupEntry {
    /// The probe settings when probing is enabled.
    probe: Option<ProbeConfig>,
    /// Its actor, once started.
    actor: Option<Addr<GroupActor>>,
    /// The config it runs with now.
    config: GroupConfig,
    /// What the config file says of it (None: the file has no such group).
    file: Option<GroupConfig>,
    origin: GroupOrigin,
}

/// Who made a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupOrigin {
    /// The config file (at boot or a reload).
    File,
    /// The script's `gateway.add_group`.
    Script,
    /// The admin API (`POST /admin/gateways`): kept until the next reload
    /// or restart.
    Admin,
}

/// A group's config as it runs, against the file's.
#[derive(Debug, Clone)]
pub struct GroupConfigs {
    pub running: GroupConfig,
    pub file: Option<GroupConfig>,
    pub origin: GroupOrigin,
}

impl GroupConfigs {
    /// Where what runs comes from: `file`, `script`, or `runtime` when the
    /// admin API made or changed it (a reload undoes that).
    pub fn source(&self) -> &'static str {
        match (self.origin, &self.file) {
            (GroupOrigin::Script, _) => "script",
            (GroupOrigin::File, Some(file)) if *file == self.running => "file",
            _ => "runtime",
        }
    }

    /// Whether destination `uri` is as the file has it.
    pub fn destination_from_file(&self, uri: &str) -> bool {
        let running = self.running.destinations.iter().find(|d| d.uri == uri);
        let file = self
            .file
            .as_ref()
            .and_then(|f| f.destinations.iter().find(|d| d.uri == uri));
        matches!((running, file), (Some(a), Some(b)) if a == b)
    }
}

impl GatewayService {
    /// The service boot builds and hands to the server, the script and the
    /// admin API.
    pub fn new(metrics: &'static crate::metrics::Metrics) -> Self {
        GatewayService {
            gateways: Arc::new(Gateways::new(metrics)),
            transports: OnceLock::new(),
            groups: Mutex::new(HashMap::new()),
            share: OnceLock::new(),
            events: OnceLock::new(),
            installing: Mutex::new(()),
        }
    }

    /// Sends every change of a destination's state to `events` from now
    /// on. Call before [`GatewayService::start`].
    pub fn publish_events(&self, events: Arc<crate::actors::events::EventBus>) {
        if self.events.set(events).is_err() {
            tracing::warn!("gateway events are already published");
        }
    }

    /// Where events go (None before [`GatewayService::publish_events`]).
    pub fn events(&self) -> Option<&Arc<crate::actors::events::EventBus>> {
        self.events.get()
    }

    fn publish(&self, group: &str, uri: &str, states: (&'static str, &'static str), reason: &str) {
        if let Some(events) = self.events.get() {
            events.publish(group, uri, states, reason);
        }
    }

    /// Shares every group's health over `share` from now on. Call before
    /// [`GatewayService::start`].
    pub fn share_health(&self, share: HealthShare) {
        if self.share.set(share).is_err() {
            tracing::warn!("gateway health is already shared");
        }
    }

    /// Another node's verdict on one of its destinations, for the group of
    /// that name here (ignored when there is none).
    pub fn peer_news(&self, news: HealthNews) {
        let actor = self
            .entries()
            .get(&news.group)
            .and_then(|entry| entry.actor.clone());
        match actor {
            Some(actor) => actor.do_send(PeerNews(news)),
            None => {
                tracing::debug!(group = %news.group, node = %news.node, "news of a group not here")
            }
        }
    }

    /// The selection registry (what the relay path and `gateway.select` read).
    pub fn gateways(&self) -> Arc<Gateways> {
        self.gateways.clone()
    }

    /// Adds a group from the script, or replaces the group of that name
    /// (its actor and probers stop; destinations that remain keep their
    /// health, counters, calls and drain).
    pub fn add_group(&self, config: &GroupConfig) {
        self.install(config, GroupOrigin::Script);
    }

    /// Adds or replaces a group made by `origin`. A group from the file
    /// remembers the file's version; one the admin API changes keeps it.
    pub fn install(&self, config: &GroupConfig, origin: GroupOrigin) {
        let _one_at_a_time = self.installing.lock().unwrap_or_else(|p| p.into_inner());
        self.install_locked(config, origin);
    }

    fn install_locked(&self, config: &GroupConfig, origin: GroupOrigin) {
        let kept = self
            .entries()
            .get(&config.name)
            .map(|e| (e.origin, e.file.clone()));
        let (file, origin) = match (origin, kept) {
            (GroupOrigin::File, _) => (Some(config.clone()), GroupOrigin::File),
            (GroupOrigin::Script, _) => (None, GroupOrigin::Script),
            // An edit of a group from the file (or the script) stays theirs.
            (GroupOrigin::Admin, Some((GroupOrigin::File, Some(file)))) => {
                (Some(file), GroupOrigin::File)
            }
            (GroupOrigin::Admin, Some((GroupOrigin::Script, _))) => (None, GroupOrigin::Script),
            (GroupOrigin::Admin, _) => (None, GroupOrigin::Admin),
        };
        let group = config.to_group();
        let probe = config.probe.enabled.then(|| config.probe.clone());
        let policy = crate::proxy::decision::FailoverPolicy {
            strict_source: config.strict_source,
            ..config.failover.policy()
        };
        let (shared, _) = self.gateways.insert(group, policy);
        let actor = self.start_actor(&config.name, &shared, probe.as_ref());
        let previous = self.entries().insert(
            config.name.clone(),
            GroupEntry {
                probe: probe.clone(),
                actor,
                config: config.clone(),
                file,
                origin,
            },
        );
        if let Some(old) = previous.and_then(|entry| entry.actor) {
            old.do_send(StopGroup);
        }
        tracing::info!(
            group = %config.name,
            algorithm = %config.algorithm,
            destinations = config.destinations.len(),
            probing = probe.is_some(),
            "gateway group added"
        );
    }

    /// Adds a group from the config unless one of that name exists already
    /// (a script that defines the group at load time wins over the config).
    pub fn add_configured_group(&self, config: &GroupConfig) {
        if self.gateways.get(&config.name).is_some() {
            tracing::warn!(
                group = %config.name,
                "gateway group from the config not added: the script's add_group already defines it"
            );
            return;
        }
        self.install(config, GroupOrigin::File);
    }

    /// A group's config as it runs, and the file's. None when unknown.
    pub fn group_configs(&self, name: &str) -> Option<GroupConfigs> {
        let entries = self.entries();
        let entry = entries.get(name)?;
        Some(GroupConfigs {
            running: entry.config.clone(),
            file: entry.file.clone(),
            origin: entry.origin,
        })
    }

    /// Every group's configs, by name.
    pub fn all_group_configs(&self) -> Vec<(String, GroupConfigs)> {
        let mut all: Vec<(String, GroupConfigs)> = self
            .entries()
            .iter()
            .map(|(name, entry)| {
                let configs = GroupConfigs {
                    running: entry.config.clone(),
                    file: entry.file.clone(),
                    origin: entry.origin,
                };
                (name.clone(), configs)
            })
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Changes the running config of group `name` with `change`, checks it
    /// as the YAML is checked, and installs it. The error names the field.
    pub fn edit_group(
        &self,
        name: &str,
        change: impl FnOnce(&mut GroupConfig) -> Result<(), EditError>,
    ) -> Result<GroupConfig, EditError> {
        let _one_at_a_time = self.installing.lock().unwrap_or_else(|p| p.into_inner());
        let mut config = self
            .entries()
            .get(name)
            .map(|entry| entry.config.clone())
            .ok_or(EditError::NotFound)?;
        change(&mut config)?;
        config
            .check()
            .map_err(|e| EditError::Invalid(e.to_string()))?;
        self.install_locked(&config, GroupOrigin::Admin);
        Ok(config)
    }

    /// Removes a group and stops its actor and probers. False when unknown.
    pub fn remove_group(&self, name: &str) -> bool {
        let _one_at_a_time = self.installing.lock().unwrap_or_else(|p| p.into_inner());
        let removed = self.gateways.remove(name).is_some();
        if let Some(actor) = self.entries().remove(name).and_then(|entry| entry.actor) {
            actor.do_send(StopGroup);
        }
        if removed {
            tracing::info!(group = %name, "gateway group removed");
        }
        removed
    }

    /// Remembers how to send probes and starts the actors of every group
    /// added so far. Call once, from inside the actor system, after the
    /// transaction shards are routed.
    pub fn start(&self, transports: Transports) {
        if self.transports.set(transports).is_err() {
            tracing::warn!("gateway service already started");
            return;
        }
        let waiting: Vec<(String, Option<ProbeConfig>)> = self
            .entries()
            .iter()
            .filter(|(_, entry)| entry.actor.is_none())
            .map(|(name, entry)| (name.clone(), entry.probe.clone()))
            .collect();
        for (name, probe) in waiting {
            let Some(shared) = self.gateways.get(&name) else {
                continue;
            };
            let actor = self.start_actor(&name, &shared, probe.as_ref());
            if let Some(entry) = self.entries().get_mut(&name) {
                entry.actor = actor;
            }
        }
    }

    /// Script/admin hold (`down`) or release of one destination; `source`
    /// (`script` or `admin`) goes in the log line. `None` when the group is
    /// unknown, `Some(false)` when the uri is not in it.
    pub fn mark(&self, group: &str, uri: &str, down: bool, source: &'static str) -> Option<bool> {
        let shared = self.gateways.get(group)?;
        if shared.view().find(uri).is_none() {
            return Some(false);
        }
        let actor = self
            .entries()
            .get(group)
            .and_then(|entry| entry.actor.clone());
        match actor {
            // The actor is the writer of its group's health.
            Some(actor) => actor.do_send(Mark {
                uri: uri.to_string(),
                down,
                source,
            }),
            // Before the actors run (boot, a script's first load) nothing
            // else writes.
            None => {
                apply_mark(group, &shared, uri, down, source, self.events.get());
            }
        }
        Some(true)
    }

    /// Starts (`draining`) or ends the drain of `uri` in `group`: it takes
    /// no new requests while its calls go on. `Some(changed)` when the
    /// destination exists; None for an unknown group or uri.
    pub fn drain(&self, group: &str, uri: &str, draining: bool, source: &str) -> Option<bool> {
        let view = self.gateways.get(group)?.view();
        let destination = &view.destinations[view.find(uri)?];
        let capacity = destination.capacity();
        let changed = capacity.set_draining(draining);
        if changed {
            let states = if draining {
                ("up", "draining")
            } else {
                ("draining", "up")
            };
            self.publish(group, uri, states, source);
            let verb = if draining { "draining" } else { "drain ended" };
            tracing::info!(
                group = %group,
                destination = %uri,
                active_calls = capacity.active_calls(),
                source,
                "destination {verb}"
            );
        }
        Some(changed)
    }

    /// A relay outcome for passive health, handed to the group's actor (the
    /// writer of its health). Only failures, and successes after failures,
    /// come here, so the usual call sends nothing.
    pub fn report_relay(&self, report: crate::proxy::engine::HealthReport) {
        let actor = self
            .entries()
            .get(&*report.group)
            .and_then(|entry| entry.actor.clone());
        if let Some(actor) = actor {
            actor.do_send(PassiveReport(report));
        }
    }

    /// Asks the group's actor for the ranking of `key`; None when the group
    /// is unknown or its actor is not running.
    pub fn ask_select(
        &self,
        group: &str,
        key: Option<String>,
    ) -> Option<tokio::sync::oneshot::Receiver<Vec<(String, String)>>> {
        let actor = self.entries().get(group)?.actor.clone()?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        actor.try_send(Select { key, reply }).ok()?;
        Some(answer)
    }

    /// The group's actor is running (for tests and the admin API).
    pub fn is_running(&self, name: &str) -> bool {
        self.entries()
            .get(name)
            .and_then(|entry| entry.actor.as_ref())
            .is_some_and(Addr::connected)
    }

    /// Starts a group actor when the actor system runs and the service has
    /// been started; otherwise [`GatewayService::start`] does it later.
    fn start_actor(
        &self,
        name: &str,
        shared: &Arc<SharedGroup>,
        probe: Option<&ProbeConfig>,
    ) -> Option<Addr<GroupActor>> {
        let transports = self.transports.get()?.clone();
        // On the system's arbiter, wherever the call comes from: a script's
        // add_group runs on an executor thread, whose handler may hang.
        let system = System::try_current()?.arbiter().clone();
        let actor = GroupActor {
            name: name.to_string(),
            shared: shared.clone(),
            probe: probe.cloned(),
            transports,
            probers: Vec::new(),
            share: self.share.get().cloned(),
            events: self.events.get().cloned(),
            full: Vec::new(),
        };
        Some(GroupActor::start_in_arbiter(&system, move |_| actor))
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, GroupEntry>> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The script's handle on the groups (see [`crate::gateway::GatewayControl`]).
impl crate::gateway::GatewayControl for GatewayService {
    fn gateways(&self) -> Arc<Gateways> {
        GatewayService::gateways(self)
    }

    fn mark(&self, group: &str, uri: &str, down: bool, source: &'static str) -> Option<bool> {
        GatewayService::mark(self, group, uri, down, source)
    }

    fn drain(&self, group: &str, uri: &str, draining: bool, source: &str) -> Option<bool> {
        GatewayService::drain(self, group, uri, draining, source)
    }

    fn add_group(&self, config: &GroupConfig) {
        GatewayService::add_group(self, config)
    }

    fn remove_group(&self, name: &str) -> bool {
        GatewayService::remove_group(self, name)
    }
}

/// Why an admin edit of a group was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EditError {
    /// No such group (or destination).
    NotFound,
    /// The result would not pass the config's checks: the field and why.
    Invalid(String),
}

/// Sets or lifts a script/admin hold and logs the change of availability.
fn apply_mark(
    group_name: &str,
    shared: &SharedGroup,
    uri: &str,
    down: bool,
    source: &str,
    events: Option<&Arc<crate::actors::events::EventBus>>,
) -> bool {
    let now = Instant::now();
    let change = shared.update(|group| {
        let index = group.find(uri)?;
        let before = group.health(index).map(|h| h.availability(now));
        if down {
            group.mark_down(uri);
        } else {
            group.mark_up(uri, now);
        }
        Some((before, group.health(index).map(|h| h.availability(now))))
    });
    let Some((before, after)) = change else {
        return false;
    };
    let reason = if down { "marked down" } else { "marked up" };
    match (before, after) {
        (Some(from), Some(to)) if from != to => {
            tracing::info!(group = %group_name, uri = %uri, %source, %reason, "gateway destination {from} -> {to}");
            if let Some(events) = events {
                events.publish(group_name, uri, (state_name(from), state_name(to)), reason);
            }
        }
        _ => {
            tracing::debug!(group = %group_name, uri = %uri, %source, %reason, "gateway destination unchanged")
        }
    }
    true
}

/// An availability as events name it.
fn state_name(availability: crate::gateway::Availability) -> &'static str {
    match availability {
        crate::gateway::Availability::Up => "up",
        crate::gateway::Availability::Down => "down",
    }
}

// ---------------------------------------------------------------------------
// Group actor
// ---------------------------------------------------------------------------

/// One gateway group at run time: receives probe results, logs every health
/// transition, ends Retry-After holds on time, and owns the group's probers.
pub struct GroupActor {
    name: String,
    shared: Arc<SharedGroup>,
    probe: Option<ProbeConfig>,
    transports: Transports,
    probers: Vec<Addr<Prober>>,
    share: Option<HealthShare>,
    events: Option<Arc<crate::actors::events::EventBus>>,
    /// Which destinations were full (`max_calls`) at the last refresh.
    full: Vec<bool>,
}

impl GroupActor {
    /// Publishes the changes of this node's own verdicts (with
    /// `gateway.share_health`); `marked_by` names who made a mark.
    fn share_news(&self, marked_by: Option<&str>) {
        let Some(share) = &self.share else {
            return;
        };
        let news: Vec<(String, Transition)> = {
            let mut group = self.shared.lock();
            group
                .take_news()
                .into_iter()
                .filter_map(|(index, t)| Some((group.destination(index)?.uri.clone(), t)))
                .collect()
        };
        for (uri, transition) in news {
            let source =
                marked_by.filter(|_| matches!(transition.reason, TransitionReason::Marked { .. }));
            share.publish(HealthNews::of_transition(
                share.node(),
                &self.name,
                &uri,
                &transition,
                source,
            ));
        }
    }

    /// Says again which destinations this node still finds down.
    fn renew_news(&self) {
        let Some(share) = &self.share else {
            return;
        };
        let down: Vec<String> = {
            let group = self.shared.lock();
            group
                .own_down(Instant::now())
                .into_iter()
                .filter_map(|index| Some(group.destination(index)?.uri.clone()))
                .collect()
        };
        for uri in down {
            share.publish(HealthNews::renewal(share.node(), &self.name, &uri));
        }
    }

    fn log_transition(&self, uri: &str, transition: &Transition) {
        macro_rules! transition_line {
            ($level:ident) => {
                tracing::$level!(
                    group = %self.name,
                    uri = %uri,
                    source = %transition.reason.source(),
                    reason = %transition.reason,
                    "gateway destination {} -> {}",
                    transition.from,
                    transition.to
                )
            };
        }
        // A destination lost is worth a warning; one back, news.
        if transition.to == crate::gateway::Availability::Down {
            transition_line!(warn);
        } else {
            transition_line!(info);
        }
        if let Some(events) = &self.events {
            let states = (state_name(transition.from), state_name(transition.to));
            events.publish(&self.name, uri, states, &transition.reason.to_string());
        }
    }

    /// Publishes the destinations that became full or took calls again.
    fn publish_fullness(&mut self) {
        let Some(events) = &self.events else {
            return;
        };
        let view = self.shared.view();
        let now = Instant::now();
        self.full.resize(view.destinations.len(), false);
        for (index, destination) in view.destinations.iter().enumerate() {
            let capacity = destination.capacity();
            let full = capacity.refusal(now, true) == Some(crate::proxy::capacity::Refusal::Full);
            if std::mem::replace(&mut self.full[index], full) != full {
                let states = if full { ("up", "full") } else { ("full", "up") };
                let reason = format!("max_calls {}", capacity.max_calls().unwrap_or(0));
                events.publish(&self.name, &destination.uri, states, &reason);
            }
        }
    }

    fn refresh(&mut self) {
        let _busy = crate::metrics::actors().gateway.measure();
        let now = Instant::now();
        let changes: Vec<(String, Transition)> = self.shared.update(|group| {
            let expired: Vec<(usize, Transition)> = group.refresh(now).collect();
            expired
                .into_iter()
                .filter_map(|(index, t)| Some((group.destination(index)?.uri.clone(), t)))
                .collect()
        });
        for (uri, transition) in changes {
            self.log_transition(&uri, &transition);
        }
        self.share_news(None);
        self.publish_fullness();
    }
}

impl Actor for GroupActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(REFRESH_INTERVAL, |actor, _| actor.refresh());
        if self.share.is_some() {
            ctx.run_interval(PEER_RENEW, |actor, _| actor.renew_news());
        }
        let Some(probe) = self.probe.clone() else {
            return;
        };
        let targets: Vec<(usize, String, Hop)> = self
            .shared
            .lock()
            .destinations()
            .iter()
            .enumerate()
            .map(|(index, d)| (index, d.uri.clone(), d.hop().clone()))
            .collect();
        let group = ctx.address();
        for (index, uri, hop) in targets {
            let prober = Prober::new(
                self.name.clone(),
                index,
                uri,
                (hop, self.shared.policy().strict_source),
                &probe,
                self.transports.clone(),
                group.clone(),
            );
            self.probers.push(prober.start());
        }
        tracing::debug!(group = %self.name, probers = self.probers.len(), "gateway group started");
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        for prober in self.probers.drain(..) {
            prober.do_send(StopProbing);
        }
        tracing::debug!(group = %self.name, "gateway group stopped");
    }
}

/// One probe's verdict, sent by a prober to its group.
#[derive(Message, Debug, Clone, PartialEq)]
#[rtype(result = "()")]
pub struct ProbeReport {
    pub index: usize,
    pub verdict: ProbeVerdict,
}

/// Whether a probe proved the destination alive.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeVerdict {
    Alive {
        latency: Duration,
        /// The final response's code (any that `reply_codes` accepts).
        status: u16,
    },
    Failed {
        reason: FailureReason,
        retry_after: Option<Duration>,
    },
}

impl Handler<ProbeReport> for GroupActor {
    type Result = ();

    fn handle(&mut self, report: ProbeReport, _ctx: &mut Self::Context) {
        let _busy = crate::metrics::actors().gateway.measure();
        let now = Instant::now();
        if let Some(metrics) = self.shared.metrics(report.index) {
            match &report.verdict {
                ProbeVerdict::Alive { latency, .. } => {
                    metrics.probe_latency.observe(latency.as_secs_f64());
                }
                ProbeVerdict::Failed { .. } => {
                    metrics.probe_failures.inc();
                }
            }
        }
        let (uri, transition) = self.shared.update(|group| {
            let transition = match report.verdict {
                ProbeVerdict::Alive { latency, status } => {
                    group.note_probe_reply(report.index, Some(status));
                    group.record_success(report.index, latency, now)
                }
                ProbeVerdict::Failed {
                    reason,
                    retry_after,
                } => group.record_failure(report.index, reason, retry_after, now),
            };
            let uri = group.destination(report.index).map(|d| d.uri.clone());
            (uri, transition)
        });
        if let (Some(uri), Some(transition)) = (uri, transition) {
            self.log_transition(&uri, &transition);
        }
        self.share_news(None);
    }
}

/// A relay outcome from a transaction shard, for passive health.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PassiveReport(pub crate::proxy::engine::HealthReport);

impl Handler<PassiveReport> for GroupActor {
    type Result = ();

    fn handle(&mut self, PassiveReport(report): PassiveReport, _ctx: &mut Self::Context) {
        let _busy = crate::metrics::actors().gateway.measure();
        let now = Instant::now();
        let metrics = &self.shared;
        let transition = self.shared.update(|group| {
            // None when the group was replaced and the destination is gone.
            let index = group.find(&report.uri)?;
            match report.failure {
                None => {
                    group.record_passive_success(index);
                    None
                }
                Some((failure, retry_after)) => {
                    let reason = match failure {
                        RelayFailure::NoResponse => FailureReason::Timeout,
                        RelayFailure::Status(code) => FailureReason::Status(code),
                        RelayFailure::Transport => FailureReason::Transport("relay".into()),
                    };
                    let pacing = group.is_pacing_hold(index, &reason, retry_after);
                    if let (false, Some(metrics)) = (pacing, metrics.metrics(index)) {
                        metrics.passive_failures.inc();
                    }
                    group.record_passive_failure(index, reason, retry_after, now)
                }
            }
        });
        if let Some(transition) = transition {
            self.log_transition(&report.uri, &transition);
        }
        self.share_news(None);
    }
}

/// A script or admin hold, or its release, for the group's actor to apply.
#[derive(Message)]
#[rtype(result = "()")]
struct Mark {
    uri: String,
    down: bool,
    source: &'static str,
}

impl Handler<Mark> for GroupActor {
    type Result = ();

    fn handle(&mut self, mark: Mark, _ctx: &mut Self::Context) {
        let _busy = crate::metrics::actors().gateway.measure();
        apply_mark(
            &self.name,
            &self.shared,
            &mark.uri,
            mark.down,
            mark.source,
            self.events.as_ref(),
        );
        self.share_news(Some(mark.source));
    }
}

/// Another node's verdict on a destination of this group.
#[derive(Message)]
#[rtype(result = "()")]
struct PeerNews(HealthNews);

impl Handler<PeerNews> for GroupActor {
    type Result = ();

    fn handle(&mut self, PeerNews(news): PeerNews, _ctx: &mut Self::Context) {
        let _busy = crate::metrics::actors().gateway.measure();
        let now = Instant::now();
        let transition = self
            .shared
            .update(|group| group.record_peer(&news.uri, &news.node, news.down, &news.reason, now));
        match transition {
            Some(transition) => tracing::info!(
                group = %self.name,
                uri = %news.uri,
                source = %"peer",
                node = %news.node,
                peer_source = %news.source,
                reason = %transition.reason,
                "gateway destination {} -> {}",
                transition.from,
                transition.to
            ),
            None => tracing::debug!(
                group = %self.name,
                uri = %news.uri,
                node = %news.node,
                down = news.down,
                "peer news changes nothing"
            ),
        }
    }
}

/// Asks a group's actor which destinations `key` gets: the first choice,
/// then the failover order, as `(uri, address)`. The actor ranks a copy of
/// its group, so asking moves no rotation and counts no selection (like
/// Kamailio's `dispatcher.hash`, an operator's question, not a call).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Select {
    pub key: Option<String>,
    pub reply: tokio::sync::oneshot::Sender<Vec<(String, String)>>,
}

impl Handler<Select> for GroupActor {
    type Result = ();

    fn handle(&mut self, select: Select, _ctx: &mut Self::Context) {
        let _busy = crate::metrics::actors().gateway.measure();
        let mut group = self.shared.lock().clone();
        let key = select.key.as_deref().map(str::as_bytes);
        let ranking = group
            .ranked(key, None, Instant::now())
            .to_vec()
            .into_iter()
            .filter_map(|index| group.destination(index))
            .map(|d| (d.uri.clone(), d.address.to_string()))
            .collect();
        let _ = select.reply.send(ranking);
    }
}

/// Stops a group actor (its probers stop with it).
#[derive(Message)]
#[rtype(result = "()")]
struct StopGroup;

impl Handler<StopGroup> for GroupActor {
    type Result = ();

    fn handle(&mut self, _: StopGroup, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

// ---------------------------------------------------------------------------
// Prober
// ---------------------------------------------------------------------------

/// Probes one destination with OPTIONS on a jittered interval, each probe with
/// its own timeout, and reports every verdict to its group.
pub struct Prober {
    group_name: String,
    index: usize,
    uri: String,
    hop: Hop,
    /// Answers count only from the probed address (`strict_source`).
    strict_source: bool,
    interval: Duration,
    timeout: Duration,
    /// `probe.reply_codes`: what proves the destination alive.
    reply_codes: Option<Arc<[u16]>>,
    /// `probe.from`.
    from: Option<Arc<str>>,
    transports: Transports,
    group: Addr<GroupActor>,
    /// The probe in flight: its number and when it was handed to a shard.
    pending: Option<(u64, Instant)>,
    sequence: u64,
    /// Makes Call-IDs unique across probers and restarts.
    call_id_base: String,
}

impl Prober {
    fn new(
        group_name: String,
        index: usize,
        uri: String,
        (hop, strict_source): (Hop, bool),
        probe: &ProbeConfig,
        transports: Transports,
        group: Addr<GroupActor>,
    ) -> Self {
        Prober {
            group_name,
            index,
            uri,
            hop,
            strict_source,
            interval: probe.interval(),
            timeout: probe.timeout(),
            reply_codes: probe.reply_codes.as_deref().map(Arc::from),
            from: probe.from.as_deref().map(|from| Arc::from(from.trim())),
            transports,
            group,
            pending: None,
            sequence: 0,
            call_id_base: format!("probe-{:016x}", rand::random::<u64>()),
        }
    }

    fn schedule(&self, ctx: &mut Context<Self>, delay: Duration) {
        ctx.run_later(delay, |prober, ctx| {
            prober.send_probe(ctx);
            let next = jittered(prober.interval, rand::random_range(-1.0..=1.0));
            prober.schedule(ctx, next);
        });
    }

    fn send_probe(&mut self, ctx: &mut Context<Self>) {
        let _busy = crate::metrics::actors().prober.measure();
        if !self.group.connected() {
            ctx.stop();
            return;
        }
        if self.pending.is_some() {
            // The previous probe's timeout is longer than the interval; its
            // verdict is still to come.
            return;
        }
        let Some(router) = self.transports.router() else {
            return;
        };
        self.sequence += 1;
        let sequence = self.sequence;
        self.pending = Some((sequence, Instant::now()));
        router.dispatch_probe(SendProbe {
            uri: self.uri.clone(),
            hop: self.hop.clone(),
            strict_source: self.strict_source,
            give_up: self.timeout,
            from: self.from.clone(),
            call_id: format!("{}-{sequence}@siphon", self.call_id_base),
            reply_to: ctx.address().recipient(),
        });
        ctx.run_later(self.timeout, move |prober, _| {
            if prober.pending.is_some_and(|(number, _)| number == sequence) {
                prober.pending = None;
                prober.report(ProbeVerdict::Failed {
                    reason: FailureReason::Timeout,
                    retry_after: None,
                });
            }
        });
    }

    fn report(&self, verdict: ProbeVerdict) {
        tracing::trace!(group = %self.group_name, uri = %self.uri, ?verdict, "probe verdict");
        self.group.do_send(ProbeReport {
            index: self.index,
            verdict,
        });
    }
}

impl Actor for Prober {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // First probe soon, spread over a tenth of the interval.
        let first = self.interval.mul_f64(rand::random_range(0.0..=JITTER));
        self.schedule(ctx, first);
    }
}

impl Handler<ProbeOutcome> for Prober {
    type Result = ();

    fn handle(&mut self, outcome: ProbeOutcome, _ctx: &mut Self::Context) {
        let _busy = crate::metrics::actors().prober.measure();
        let Some((_, sent)) = self.pending else {
            return; // timed out already: a late answer changes nothing
        };
        if !answers_probe_sent_at(Instant::now(), outcome.latency, sent) {
            return; // the late answer of an earlier probe
        }
        self.pending = None;
        self.report(verdict_of(&outcome, self.reply_codes.as_deref()));
    }
}

/// Stops a prober.
#[derive(Message)]
#[rtype(result = "()")]
struct StopProbing;

impl Handler<StopProbing> for Prober {
    type Result = ();

    fn handle(&mut self, _: StopProbing, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// A probe outcome as a verdict: a final response below 500 is alive
/// (or one of `reply_codes`, when the group lists them); anything else and
/// a timeout are failures; Retry-After only counts on a 503.
pub fn verdict_of(outcome: &ProbeOutcome, reply_codes: Option<&[u16]>) -> ProbeVerdict {
    let alive = |code: u16| match reply_codes {
        Some(codes) => codes.contains(&code),
        None => code < 500,
    };
    match outcome.status {
        Some(code) if alive(code) => ProbeVerdict::Alive {
            latency: outcome.latency,
            status: code,
        },
        Some(code) => ProbeVerdict::Failed {
            reason: FailureReason::Status(code),
            retry_after: outcome.retry_after.filter(|_| code == 503),
        },
        None => ProbeVerdict::Failed {
            reason: FailureReason::Timeout,
            retry_after: None,
        },
    }
}

/// Whether an outcome received at `now` that took `latency` belongs to the
/// probe handed over at `sent`. The shard measures latency from when it sent
/// the probe, which is never before `sent`, so an earlier probe's late answer
/// implies a send time before `sent`.
pub fn answers_probe_sent_at(now: Instant, latency: Duration, sent: Instant) -> bool {
    now.checked_sub(latency).is_some_and(|began| began >= sent)
}

/// `interval` moved by `offset` (in -1.0..=1.0) times the jitter share.
pub fn jittered(interval: Duration, offset: f64) -> Duration {
    interval.mul_f64(1.0 + JITTER * offset.clamp(-1.0, 1.0))
}

/// Probes go over TCP only when the destination's uri asks for it.
/// Test-only: the group's probers.
#[cfg(test)]
#[derive(Message)]
#[rtype(result = "Vec<Addr<Prober>>")]
struct ListProbers;

#[cfg(test)]
impl Handler<ListProbers> for GroupActor {
    type Result = MessageResult<ListProbers>;

    fn handle(&mut self, _: ListProbers, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.probers.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DestinationConfig;
    use crate::gateway::Algorithm;
    use std::collections::BTreeMap;
    use std::net::SocketAddr;

    fn group_config(name: &str, probe_enabled: bool) -> GroupConfig {
        let destination = |n: u16| DestinationConfig {
            uri: format!("sip:backend{n}.example.com"),
            address: SocketAddr::from(([127, 0, 0, 1], 40_000 + n)),
            weight: 1,
            attrs: BTreeMap::new(),
            transport: None,
            priority: 0,
            max_calls: None,
            max_cps: None,
        };
        GroupConfig {
            name: name.to_string(),
            algorithm: Algorithm::RoundRobin,
            probe: ProbeConfig {
                enabled: probe_enabled,
                interval_secs: 60,
                failure_threshold: 1,
                timeout_ms: Some(100),
                ..ProbeConfig::default()
            },
            destinations: vec![destination(1), destination(2)],
            failover: Default::default(),
            passive: Default::default(),
            max_retry_after_secs: crate::config::DEFAULT_MAX_RETRY_AFTER_SECS,
            spill_threshold: 1,
            hash_bound: None,
            strict_source: false,
        }
    }

    fn transports() -> Transports {
        let local = SocketAddr::from(([127, 0, 0, 1], 0));
        let (transports, _receivers, _) = Transports::bind(
            &crate::config::Listen {
                udp: vec![local.into()],
                ..Default::default()
            },
            None,
        )
        .expect("bind UDP");
        transports
    }

    fn actor_of(service: &GatewayService, name: &str) -> Addr<GroupActor> {
        service
            .entries()
            .get(name)
            .and_then(|entry| entry.actor.clone())
            .expect("group actor running")
    }

    /// Lets stop messages and `stopped` hooks run.
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    #[test]
    fn verdicts_follow_the_status_classes() {
        let outcome = |status, retry_after| ProbeOutcome {
            status,
            retry_after,
            latency: Duration::from_millis(7),
        };
        let hold = Some(Duration::from_secs(30));
        for code in [200, 404, 481, 499] {
            assert_eq!(
                verdict_of(&outcome(Some(code), hold), None),
                ProbeVerdict::Alive {
                    latency: Duration::from_millis(7),
                    status: code
                }
            );
        }
        assert_eq!(
            verdict_of(&outcome(Some(503), hold), None),
            ProbeVerdict::Failed {
                reason: FailureReason::Status(503),
                retry_after: hold
            }
        );
        // Retry-After only holds a destination down on a 503.
        for code in [500, 502, 600, 603] {
            assert_eq!(
                verdict_of(&outcome(Some(code), hold), None),
                ProbeVerdict::Failed {
                    reason: FailureReason::Status(code),
                    retry_after: None
                }
            );
        }
        // `probe.reply_codes`: only the codes listed prove it alive.
        let only_200 = Some(&[200u16][..]);
        assert!(matches!(
            verdict_of(&outcome(Some(200), None), only_200),
            ProbeVerdict::Alive { .. }
        ));
        assert_eq!(
            verdict_of(&outcome(Some(404), None), only_200),
            ProbeVerdict::Failed {
                reason: FailureReason::Status(404),
                retry_after: None
            }
        );
        assert_eq!(
            verdict_of(&outcome(None, None), None),
            ProbeVerdict::Failed {
                reason: FailureReason::Timeout,
                retry_after: None
            }
        );
    }

    #[test]
    fn late_answers_of_earlier_probes_are_recognised() {
        let sent = Instant::now();
        let now = sent + Duration::from_millis(1500);
        assert!(answers_probe_sent_at(now, Duration::from_millis(20), sent));
        assert!(answers_probe_sent_at(
            now,
            Duration::from_millis(1500),
            sent
        ));
        // Sent 2.5 s ago: an earlier probe's answer.
        assert!(!answers_probe_sent_at(
            now,
            Duration::from_millis(2500),
            sent
        ));
        // A latency longer than the clock has run cannot be ours either.
        assert!(!answers_probe_sent_at(now, Duration::MAX, sent));
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let interval = Duration::from_secs(5);
        assert_eq!(jittered(interval, 0.0), interval);
        assert_eq!(jittered(interval, -1.0), Duration::from_millis(4500));
        assert_eq!(jittered(interval, 1.0), Duration::from_millis(5500));
        assert_eq!(jittered(interval, 7.0), Duration::from_millis(5500));
        for _ in 0..1000 {
            let delay = jittered(interval, rand::random_range(-1.0..=1.0));
            assert!((4500..=5500).contains(&delay.as_millis()), "{delay:?}");
        }
    }

    #[actix_rt::test]
    async fn groups_added_before_start_get_actors_at_start() {
        let service = GatewayService::new(crate::metrics::get());
        service.add_group(&group_config("early", false));
        assert!(service.gateways().get("early").is_some());
        assert!(!service.is_running("early"), "no actors before start");
        service.start(transports());
        assert!(service.is_running("early"));
        service.add_group(&group_config("late", false));
        assert!(service.is_running("late"), "started at once after start");
        assert_eq!(service.gateways().names(), vec!["early", "late"]);
    }

    #[actix_rt::test]
    async fn probe_reports_change_health_and_marks_hold() {
        let service = GatewayService::new(crate::metrics::get());
        service.start(transports());
        service.add_group(&group_config("pool", false));
        let actor = actor_of(&service, "pool");
        let shared = service.gateways().get("pool").expect("group");
        let failed = ProbeVerdict::Failed {
            reason: FailureReason::Timeout,
            retry_after: None,
        };
        actor
            .send(ProbeReport {
                index: 1,
                verdict: failed.clone(),
            })
            .await
            .expect("delivered");
        assert!(!shared.lock().is_up(1, Instant::now()), "threshold 1");
        assert!(shared.lock().is_up(0, Instant::now()));
        let alive = ProbeVerdict::Alive {
            latency: Duration::from_millis(3),
            status: 200,
        };
        actor
            .send(ProbeReport {
                index: 1,
                verdict: alive.clone(),
            })
            .await
            .expect("delivered");
        assert!(shared.lock().is_up(1, Instant::now()));
        // A report for an index the group does not have is ignored.
        actor
            .send(ProbeReport {
                index: 9,
                verdict: failed,
            })
            .await
            .expect("delivered");

        // A script hold survives probe successes until mark_up.
        let uri = "sip:backend1.example.com";
        assert_eq!(service.mark("pool", uri, true, "script"), Some(true));
        actor
            .send(ProbeReport {
                index: 0,
                verdict: alive,
            })
            .await
            .expect("delivered");
        assert!(!shared.lock().is_up(0, Instant::now()));
        assert!(
            !shared.view().is_up(0, Instant::now()),
            "the hot path sees the hold"
        );
        // Marks go through the actor, the writer of health: the release
        // lands once it has handled the message.
        assert_eq!(service.mark("pool", uri, false, "script"), Some(true));
        settle().await;
        assert!(shared.lock().is_up(0, Instant::now()));
        assert!(shared.view().is_up(0, Instant::now()));
        assert_eq!(
            service.mark("pool", "sip:nobody.example.com", true, "script"),
            Some(false)
        );
        assert_eq!(service.mark("missing", uri, true, "script"), None);
    }

    #[actix_rt::test]
    async fn removing_or_replacing_a_group_stops_its_probers() {
        let service = GatewayService::new(crate::metrics::get());
        service.start(transports());
        service.add_group(&group_config("probed", true));
        let first = actor_of(&service, "probed");
        let probers = first.send(ListProbers).await.expect("delivered");
        assert_eq!(probers.len(), 2, "one prober per destination");
        assert!(probers.iter().all(Addr::connected));

        // Replacing: the old actor and its probers stop, new ones run.
        service.add_group(&group_config("probed", true));
        settle().await;
        assert!(!first.connected());
        assert!(probers.iter().all(|p| !p.connected()));
        let second = actor_of(&service, "probed");
        let new_probers = second.send(ListProbers).await.expect("delivered");
        assert_eq!(new_probers.len(), 2);

        // Removing: gone from the registry, actor and probers stopped.
        assert!(service.remove_group("probed"));
        assert!(!service.remove_group("probed"));
        settle().await;
        assert!(service.gateways().get("probed").is_none());
        assert!(!service.is_running("probed"));
        assert!(!second.connected());
        assert!(new_probers.iter().all(|p| !p.connected()));
    }

    #[actix_rt::test]
    async fn groups_without_probing_start_no_probers() {
        let service = GatewayService::new(crate::metrics::get());
        service.start(transports());
        service.add_group(&group_config("quiet", false));
        let actor = actor_of(&service, "quiet");
        assert!(actor.send(ListProbers).await.expect("delivered").is_empty());
    }

    #[actix_rt::test]
    async fn configured_groups_do_not_replace_script_groups() {
        let service = GatewayService::new(crate::metrics::get());
        let mut from_script = group_config("backends", false);
        from_script.destinations.truncate(1);
        service.add_group(&from_script);
        service.add_configured_group(&group_config("backends", false));
        let shared = service.gateways().get("backends").expect("group");
        assert_eq!(shared.lock().len(), 1, "the script's group stays");
        service.add_configured_group(&group_config("other", false));
        assert!(service.gateways().get("other").is_some());
    }
}
