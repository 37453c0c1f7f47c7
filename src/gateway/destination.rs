//! A backend in a gateway group, and the health state that decides whether it
//! may receive new transactions.
//!
//! Health is kept apart from selection: the selector only ever sees the indexes
//! of destinations that are currently up, so an algorithm never has to know why
//! a destination is down.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::proxy::capacity::Capacity;
use crate::proxy::forward::{uri_protocol, Hop};
use crate::sip::Protocol;

/// One backend of a gateway group.
///
/// `uri` is the stable identity (hashing and script lookups use it); `address`
/// is where packets go, resolved once at load so that no call waits on DNS.
#[derive(Debug, Clone)]
pub struct Destination {
    pub uri: String,
    pub address: SocketAddr,
    /// Relative share of traffic. 0 makes the destination a standby: it is only
    /// chosen first when no eligible destination has a positive weight.
    pub weight: u32,
    pub attrs: BTreeMap<String, String>,
    /// Its tier: lower first; a higher tier takes calls only while the
    /// lower ones cannot (down, full, paced or drained).
    pub priority: i32,
    /// Its calls, limits and drain, shared by every shard and by the
    /// requests relayed to it (a reload keeps them for a uri that stays).
    capacity: Arc<Capacity>,
    /// `uri` again, shared: a request's candidate list holds it without a copy.
    shared_uri: Arc<str>,
    /// Where requests and probes go: `address`, over the transport the uri
    /// asks for (`;transport=`, TLS for `sips:`) or the config names, with
    /// the uri's host as the name a TLS certificate must carry.
    hop: Hop,
}

impl Destination {
    /// A destination with weight 1 and no attributes.
    pub fn new(uri: impl Into<String>, address: SocketAddr) -> Self {
        let uri = uri.into();
        let parsed = crate::sip::Uri::parse(&uri).ok();
        let protocol = parsed
            .as_ref()
            .and_then(|u| uri_protocol(u).ok())
            .unwrap_or(Protocol::Udp);
        let host = parsed.as_ref().map_or("", |u| u.host);
        let hop = Hop::to_host(address, protocol, host);
        Destination {
            shared_uri: Arc::from(uri.as_str()),
            uri,
            address,
            weight: 1,
            attrs: BTreeMap::new(),
            priority: 0,
            capacity: Arc::new(Capacity::default()),
            hop,
        }
    }

    /// Builder-style tier setter.
    pub fn with_priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Builder-style limits (`max_calls`, `max_cps`).
    pub fn with_limits(self, max_calls: Option<u32>, max_cps: Option<f64>) -> Self {
        self.capacity.set_limits(max_calls, max_cps);
        self
    }

    /// Its counters, limits and drain.
    pub fn capacity(&self) -> &Arc<Capacity> {
        &self.capacity
    }

    /// Takes over the counters and drain of `previous` (the same uri in a
    /// group that replaces its own), keeping this one's limits.
    pub fn adopt_capacity(&mut self, previous: &Destination) {
        let (max_calls, max_cps) = (self.capacity.max_calls(), self.capacity.max_cps());
        self.capacity = previous.capacity.clone();
        self.capacity.set_limits(max_calls, max_cps);
    }

    /// Reached over `protocol` whatever the uri says (the config's
    /// `transport:`).
    pub fn with_protocol(mut self, protocol: Protocol) -> Self {
        let host = crate::sip::Uri::parse(&self.uri).map_or(String::new(), |u| u.host.to_string());
        self.hop = Hop::to_host(self.address, protocol, &host);
        self
    }

    /// The uri as a shared string.
    pub fn shared_uri(&self) -> &Arc<str> {
        &self.shared_uri
    }

    /// The transport requests and probes to this destination use.
    pub fn protocol(&self) -> Protocol {
        self.hop.protocol
    }

    /// Where requests and probes to this destination go.
    pub fn hop(&self) -> &Hop {
        &self.hop
    }

    /// Builder-style attribute map setter.
    pub fn with_attrs(mut self, attrs: BTreeMap<String, String>) -> Self {
        self.attrs = attrs;
        self
    }

    /// Builder-style weight setter, handy for tests and `add_group`.
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Builder-style attribute setter.
    pub fn with_attr(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.attrs.insert(key.into(), value.into());
        self
    }

    /// True when every key of `filter` is present here with an equal value.
    /// An empty filter matches every destination.
    pub fn matches_attrs(&self, filter: &BTreeMap<String, String>) -> bool {
        filter
            .iter()
            .all(|(key, value)| self.attrs.get(key) == Some(value))
    }
}

/// Equal in what the config says (counters aside).
impl PartialEq for Destination {
    fn eq(&self, other: &Self) -> bool {
        let limits = |d: &Destination| (d.capacity.max_calls(), d.capacity.max_cps());
        (
            &self.uri,
            self.address,
            self.weight,
            &self.attrs,
            self.priority,
            &self.hop,
        ) == (
            &other.uri,
            other.address,
            other.weight,
            &other.attrs,
            other.priority,
            &other.hop,
        ) && limits(self) == limits(other)
    }
}

/// Whether a destination may receive new transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    Up,
    Down,
}

impl fmt::Display for Availability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Availability::Up => "up",
            Availability::Down => "down",
        })
    }
}

/// Why a probe (or a relayed request) counted as a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureReason {
    /// No final response before the probe's timeout.
    Timeout,
    /// A final response of 500 or above.
    Status(u16),
    /// The request could not be sent (socket or connection error).
    Transport(String),
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureReason::Timeout => f.write_str("timeout"),
            FailureReason::Status(code) => write!(f, "status {code}"),
            FailureReason::Transport(detail) => write!(f, "transport error: {detail}"),
        }
    }
}

/// What caused an up/down change; carried in [`Transition`] for the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransitionReason {
    /// `failures` consecutive failures reached the threshold; `last` is the latest.
    FailureThreshold { failures: u32, last: FailureReason },
    /// The destination asked to be left alone (503 with Retry-After).
    RetryAfter { hold: Duration, last: FailureReason },
    /// A probe succeeded while the destination was down.
    ProbeSucceeded { latency: Duration },
    /// A Retry-After hold ran out and nothing else keeps the destination down.
    RetryAfterExpired,
    /// Relayed requests failed `failures` times in a row (passive health):
    /// ejected for `eject`.
    Ejected {
        failures: u32,
        last: FailureReason,
        eject: Duration,
    },
    /// A passive ejection ended.
    EjectionOver,
    /// A script or admin hold was set or lifted (only in [`Health::take_news`]:
    /// marks are logged where they are made).
    Marked { down: bool },
    /// Another node sharing health reports it down (`gateway.share_health`).
    PeerDown { node: String, reason: String },
    /// The node that reported it down reports it up again.
    PeerUp { node: String },
    /// A peer's report ran out without being renewed (the peer stopped, or
    /// lost the shared channel).
    PeerSilent { node: String },
}

impl TransitionReason {
    /// What caused it, as the log's `source` field: `probe`, `passive`,
    /// `retry-after`, `mark` or `peer` (script and admin marks are logged
    /// where they are made, with `script` or `admin`).
    pub fn source(&self) -> &'static str {
        match self {
            TransitionReason::Marked { .. } => "mark",
            TransitionReason::PeerDown { .. }
            | TransitionReason::PeerUp { .. }
            | TransitionReason::PeerSilent { .. } => "peer",
            TransitionReason::FailureThreshold { .. } | TransitionReason::ProbeSucceeded { .. } => {
                "probe"
            }
            TransitionReason::RetryAfter { .. } | TransitionReason::RetryAfterExpired => {
                "retry-after"
            }
            TransitionReason::Ejected { .. } | TransitionReason::EjectionOver => "passive",
        }
    }
}

impl fmt::Display for TransitionReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransitionReason::FailureThreshold { failures, last } => {
                write!(f, "{failures} consecutive failures (last: {last})")
            }
            TransitionReason::RetryAfter { hold, last } => {
                write!(f, "Retry-After hold of {}s ({last})", hold.as_secs())
            }
            TransitionReason::ProbeSucceeded { latency } => {
                write!(f, "probe succeeded in {} ms", latency.as_millis())
            }
            TransitionReason::RetryAfterExpired => f.write_str("Retry-After hold expired"),
            TransitionReason::Ejected {
                failures,
                last,
                eject,
            } => write!(
                f,
                "{failures} relayed requests failed in a row (last: {last}); ejected for {}s",
                eject.as_secs()
            ),
            TransitionReason::EjectionOver => f.write_str("passive ejection over"),
            TransitionReason::Marked { down: true } => f.write_str("marked down"),
            TransitionReason::Marked { down: false } => f.write_str("marked up"),
            TransitionReason::PeerDown { node, reason } => {
                write!(f, "node {node} reports it down ({reason})")
            }
            TransitionReason::PeerUp { node } => write!(f, "node {node} reports it up"),
            TransitionReason::PeerSilent { node } => {
                write!(f, "node {node}'s report was not renewed")
            }
        }
    }
}

/// An up/down change, reported exactly once so the caller can log it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: Availability,
    pub to: Availability,
    pub reason: TransitionReason,
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}: {}", self.from, self.to, self.reason)
    }
}

/// Health of one destination: a small state machine fed by probe results,
/// Retry-After and script/admin holds.
///
/// A destination is up when all of these agree:
/// - the probe state is healthy (`failure_threshold` consecutive failures make
///   it unhealthy, one success makes it healthy again);
/// - no script/admin hold is set (`mark_down` holds until `mark_up`; probe
///   successes do not lift it);
/// - no Retry-After hold is running (it ends by itself at its deadline);
/// - no passive ejection is running;
/// - no peer sharing health reports it down (`gateway.share_health`; each
///   report holds until that peer reports up, or for [`PEER_HOLD`] unless
///   renewed).
///
/// The first four are this node's own verdict: peers' reports only ever keep
/// a destination out, never bring it back, and this node shares only its own
/// verdict ([`Health::take_news`]), so two nodes never echo each other.
///
/// Transitions are reported once: the state last reported is remembered, and
/// a `record_*`/[`Health::refresh`] call returns a [`Transition`] only when the
/// availability differs from it. Admin marks report through their `bool`.
#[derive(Debug, Clone)]
pub struct Health {
    probe_healthy: bool,
    consecutive_failures: u32,
    failure_threshold: u32,
    /// Probe successes in a row while probed down, and how many bring it
    /// back (`probe.success_threshold`).
    consecutive_successes: u32,
    success_threshold: u32,
    held_down: bool,
    retry_after_until: Option<Instant>,
    last_latency: Option<Duration>,
    /// Why the last probe failed, while the probes fail.
    last_probe_failure: Option<FailureReason>,
    /// The last probe's final response (a backend that answers 404 or 478,
    /// alive as that is, says here that something is wrong).
    last_probe_reply: Option<u16>,
    selections: u64,
    reported: Availability,
    /// Consecutive failures of relayed requests (passive health).
    passive_failures: u32,
    ejection: Option<Ejection>,
    /// Ejections in a row, for the doubling of the next one.
    ejections: u32,
    /// Peers that report this destination down, each until its report runs
    /// out (at most [`MAX_PEER_HOLDS`]).
    peer_holds: Vec<PeerHold>,
    /// This node's own verdict as last taken for sharing.
    announced: Availability,
    /// A change of this node's own verdict not yet taken for sharing.
    news: Option<Transition>,
}

/// How long a peer's "down" keeps a destination out unless renewed; peers
/// renew every [`PEER_RENEW`] what they still find down.
pub const PEER_HOLD: Duration = Duration::from_secs(15);

/// How often a node repeats the destinations it finds down, so a node that
/// joins late, or missed a message, learns them.
pub const PEER_RENEW: Duration = Duration::from_secs(5);

/// The most peers whose reports one destination remembers.
pub const MAX_PEER_HOLDS: usize = 32;

/// One peer's report that a destination is down.
#[derive(Debug, Clone)]
struct PeerHold {
    node: String,
    until: Instant,
}

/// How relay outcomes feed a destination's health (per group config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassivePolicy {
    /// Consecutive failures that eject.
    pub failure_threshold: u32,
    /// The first ejection; each repeated one doubles, up to [`MAX_EJECTION`].
    pub eject: Duration,
    /// After an ejection, wait for a probe success (the group is probed).
    pub await_probe: bool,
}

impl Default for PassivePolicy {
    fn default() -> Self {
        PassivePolicy {
            failure_threshold: 3,
            eject: Duration::from_secs(30),
            await_probe: false,
        }
    }
}

/// The longest passive ejection, as with Envoy's outlier detection.
pub const MAX_EJECTION: Duration = Duration::from_secs(300);

/// A passive ejection in force.
#[derive(Debug, Clone, Copy)]
struct Ejection {
    until: Instant,
    /// Once `until` passes, a probe success (not time alone) ends it.
    await_probe: bool,
}

impl Default for Health {
    fn default() -> Self {
        Health::new(Health::DEFAULT_FAILURE_THRESHOLD)
    }
}

impl Health {
    /// The threshold used when the config says nothing (matches the docs' example).
    pub const DEFAULT_FAILURE_THRESHOLD: u32 = 3;

    /// A healthy destination. A threshold of 0 is treated as 1: one failure
    /// marks down.
    pub fn new(failure_threshold: u32) -> Self {
        Health {
            probe_healthy: true,
            consecutive_failures: 0,
            failure_threshold: failure_threshold.max(1),
            consecutive_successes: 0,
            success_threshold: 1,
            held_down: false,
            retry_after_until: None,
            last_latency: None,
            last_probe_failure: None,
            last_probe_reply: None,
            selections: 0,
            reported: Availability::Up,
            passive_failures: 0,
            ejection: None,
            ejections: 0,
            peer_holds: Vec::new(),
            announced: Availability::Up,
            news: None,
        }
    }

    /// May this destination receive new transactions at `now`?
    pub fn is_up(&self, now: Instant) -> bool {
        self.own_verdict_up(now) && !self.peer_held(now)
    }

    /// This node's own verdict: probes, holds, Retry-After and ejection,
    /// without what peers report.
    fn own_verdict_up(&self, now: Instant) -> bool {
        self.probe_healthy && !self.held_down && !self.in_retry_after(now) && !self.ejected(now)
    }

    /// This node's own verdict as an [`Availability`] (what it shares).
    pub fn own_availability(&self, now: Instant) -> Availability {
        if self.own_verdict_up(now) {
            Availability::Up
        } else {
            Availability::Down
        }
    }

    /// Whether a peer's report keeps it out at `now`.
    fn peer_held(&self, now: Instant) -> bool {
        self.peer_holds.iter().any(|hold| now < hold.until)
    }

    /// The peers whose reports keep it out at `now`.
    pub fn peers_reporting_down(&self, now: Instant) -> impl Iterator<Item = &str> {
        self.peer_holds
            .iter()
            .filter(move |hold| now < hold.until)
            .map(|hold| hold.node.as_str())
    }

    /// Peer `node` finds it down (`reason` is its own log's): out until
    /// `until`, or until that peer reports it up. A repeated report renews.
    pub fn record_peer_down(
        &mut self,
        node: &str,
        reason: &str,
        until: Instant,
        now: Instant,
    ) -> Option<Transition> {
        match self.peer_holds.iter_mut().find(|hold| hold.node == node) {
            Some(hold) => hold.until = hold.until.max(until),
            None => {
                if self.peer_holds.len() >= MAX_PEER_HOLDS {
                    // Forget the report that runs out first.
                    let soonest = (0..self.peer_holds.len())
                        .min_by_key(|&i| self.peer_holds[i].until)
                        .unwrap_or(0);
                    self.peer_holds.swap_remove(soonest);
                }
                self.peer_holds.push(PeerHold {
                    node: node.to_string(),
                    until,
                });
            }
        }
        let cause = TransitionReason::PeerDown {
            node: node.to_string(),
            reason: reason.to_string(),
        };
        self.report(now, cause)
    }

    /// Peer `node` finds it up again: its report no longer keeps it out.
    pub fn record_peer_up(&mut self, node: &str, now: Instant) -> Option<Transition> {
        let before = self.peer_holds.len();
        self.peer_holds.retain(|hold| hold.node != node);
        if self.peer_holds.len() == before {
            return None;
        }
        self.report(
            now,
            TransitionReason::PeerUp {
                node: node.to_string(),
            },
        )
    }

    /// The change of this node's own verdict since the last call, to share
    /// with peers: only the latest, so at most one waits per destination.
    pub fn take_news(&mut self) -> Option<Transition> {
        self.news.take()
    }

    /// Remembers a change of this node's own verdict for [`Self::take_news`].
    fn note_own_verdict(&mut self, own: Availability, reason: impl FnOnce() -> TransitionReason) {
        if own == self.announced {
            return;
        }
        self.news = match self.news.take() {
            // Back to what peers last heard before the news was taken.
            Some(pending) if pending.from == own => None,
            _ => Some(Transition {
                from: self.announced,
                to: own,
                reason: reason(),
            }),
        };
        self.announced = own;
    }

    /// A relayed request to this destination failed. With `retry_after` it
    /// is held down for that long; at `policy.failure_threshold` failures in
    /// a row it is ejected, unless `may_eject` is false (it is the group's
    /// last destination up).
    pub fn record_passive_failure(
        &mut self,
        policy: &PassivePolicy,
        reason: FailureReason,
        retry_after: Option<Duration>,
        may_eject: bool,
        now: Instant,
    ) -> Option<Transition> {
        if self.ejected(now) {
            // Calls already in flight when it was ejected: they say nothing
            // new, and must not eject it again the moment it is back.
            return None;
        }
        self.passive_failures = self.passive_failures.saturating_add(1);
        if let Some(hold) = retry_after {
            self.hold_for(hold, now);
            return self.report(now, TransitionReason::RetryAfter { hold, last: reason });
        }
        if self.passive_failures < policy.failure_threshold.max(1) || !may_eject {
            return None;
        }
        let doubling = 1u32 << self.ejections.min(4);
        let eject = policy.eject.saturating_mul(doubling).min(MAX_EJECTION);
        self.ejections = self.ejections.saturating_add(1);
        self.passive_failures = 0;
        self.ejection = Some(Ejection {
            until: now + eject,
            await_probe: policy.await_probe,
        });
        let failures = policy.failure_threshold.max(1);
        let cause = TransitionReason::Ejected {
            failures,
            last: reason,
            eject,
        };
        self.report(now, cause)
    }

    /// A relayed request got a response below 500: the run of passive
    /// failures is over.
    pub fn record_passive_success(&mut self) {
        self.passive_failures = 0;
        if self.ejection.is_none() {
            self.ejections = 0;
        }
    }

    /// From when this destination may be chosen, as far as time alone
    /// decides: `now` or later when a Retry-After hold or an ejection runs
    /// out by itself; None while only an event (a probe success, a mark)
    /// can bring it back.
    pub fn up_from(&self, now: Instant) -> Option<Instant> {
        let mut from = self.own_up_from(now)?;
        for hold in &self.peer_holds {
            if now < hold.until {
                from = from.max(hold.until);
            }
        }
        Some(from)
    }

    /// [`Self::up_from`] by this node's own verdict alone, ignoring peers'
    /// reports: what selection falls back to when peers' reports would
    /// leave a group with nothing.
    pub fn own_up_from(&self, now: Instant) -> Option<Instant> {
        if !self.probe_healthy || self.held_down {
            return None;
        }
        let mut from = now;
        if let Some(until) = self.retry_after_until {
            from = from.max(until);
        }
        if let Some(ejection) = self.ejection {
            if ejection.await_probe {
                return None;
            }
            from = from.max(ejection.until);
        }
        Some(from)
    }

    /// Consecutive passive failures on record.
    pub fn passive_failures(&self) -> u32 {
        self.passive_failures
    }

    /// Whether a passive ejection keeps the destination out at `now`.
    pub fn ejected(&self, now: Instant) -> bool {
        self.ejection
            .is_some_and(|e| now < e.until || e.await_probe)
    }

    /// [`Health::is_up`] as an [`Availability`].
    pub fn availability(&self, now: Instant) -> Availability {
        if self.is_up(now) {
            Availability::Up
        } else {
            Availability::Down
        }
    }

    /// A probe (or relayed request) got a response that proves the destination
    /// alive. Marks it healthy; it is up again unless held by a script/admin
    /// mark or a running Retry-After hold.
    pub fn record_success(&mut self, latency: Duration, now: Instant) -> Option<Transition> {
        self.consecutive_failures = 0;
        self.last_latency = Some(latency);
        self.last_probe_failure = None;
        if !self.probe_healthy {
            // A flapping backend must prove itself `success_threshold` times.
            self.consecutive_successes = self.consecutive_successes.saturating_add(1);
            if self.consecutive_successes < self.success_threshold {
                return None;
            }
        }
        self.consecutive_successes = 0;
        self.probe_healthy = true;
        // An ejection ends on a probe success only once its time is up: a
        // backend that answers OPTIONS but fails calls stays out meanwhile.
        if self.ejection.is_some_and(|e| now >= e.until) {
            self.ejection = None;
        }
        self.report(now, TransitionReason::ProbeSucceeded { latency })
    }

    /// A probe failed. With `retry_after` (503 + Retry-After) the destination is
    /// held down for that long whatever the threshold; otherwise it goes down
    /// when the consecutive failures reach `failure_threshold`.
    pub fn record_failure(
        &mut self,
        reason: FailureReason,
        retry_after: Option<Duration>,
        now: Instant,
    ) -> Option<Transition> {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.consecutive_successes = 0;
        self.last_probe_reply = match &reason {
            FailureReason::Status(code) => Some(*code),
            _ => None,
        };
        self.last_probe_failure = Some(reason.clone());
        if self.consecutive_failures >= self.failure_threshold {
            self.probe_healthy = false;
        }
        let cause = match retry_after {
            Some(hold) => {
                self.hold_for(hold, now);
                TransitionReason::RetryAfter { hold, last: reason }
            }
            None => TransitionReason::FailureThreshold {
                failures: self.consecutive_failures,
                last: reason,
            },
        };
        self.report(now, cause)
    }

    /// A Retry-After hold: a later, longer hold extends; a shorter one never
    /// shortens.
    fn hold_for(&mut self, hold: Duration, now: Instant) {
        let until = now.checked_add(hold);
        self.retry_after_until = match (self.retry_after_until, until) {
            (Some(current), Some(new)) => Some(current.max(new)),
            (current, new) => new.or(current),
        };
    }

    /// Report a Retry-After hold, an ejection or a peer's report that ran
    /// out since the last call. The actor calls this on a timer so the "up"
    /// line is logged even without probes.
    pub fn refresh(&mut self, now: Instant) -> Option<Transition> {
        let mut reason = TransitionReason::RetryAfterExpired;
        if self.retry_after_until.is_some_and(|until| now >= until) {
            self.retry_after_until = None;
        }
        if self
            .ejection
            .is_some_and(|e| now >= e.until && !e.await_probe)
        {
            self.ejection = None;
            reason = TransitionReason::EjectionOver;
        }
        // This node's own verdict changes only by its own holds running out.
        let own_reason = reason.clone();
        self.note_own_verdict(self.own_availability(now), || own_reason);
        if let Some(expired) = self.peer_holds.iter().position(|hold| now >= hold.until) {
            reason = TransitionReason::PeerSilent {
                node: self.peer_holds[expired].node.clone(),
            };
            self.peer_holds.retain(|hold| now < hold.until);
        }
        self.report(now, reason)
    }

    /// Script/admin hold: down until [`Health::mark_up`], whatever probes say.
    /// Returns whether anything changed.
    pub fn mark_down(&mut self) -> bool {
        let changed = !self.held_down;
        self.held_down = true;
        self.reported = Availability::Down;
        self.note_own_verdict(Availability::Down, || TransitionReason::Marked {
            down: true,
        });
        changed
    }

    /// Script/admin override to up: lifts the hold and forgets probe failures
    /// and any Retry-After hold (the operator knows better). Probes may mark it
    /// down again later. Peers' reports still hold (they are lifted by the
    /// peer, or run out). Returns whether anything changed.
    pub fn mark_up(&mut self, now: Instant) -> bool {
        let changed = self.held_down
            || !self.probe_healthy
            || self.consecutive_failures > 0
            || self.retry_after_until.is_some();
        let changed = changed || self.ejection.is_some();
        self.held_down = false;
        self.probe_healthy = true;
        self.consecutive_failures = 0;
        self.retry_after_until = None;
        self.passive_failures = 0;
        self.ejection = None;
        self.ejections = 0;
        // Down still while a peer's report holds; the refresh that finds it
        // run out reports the change.
        self.reported = if self.peer_held(now) {
            Availability::Down
        } else {
            Availability::Up
        };
        self.note_own_verdict(Availability::Up, || TransitionReason::Marked {
            down: false,
        });
        changed
    }

    /// Count one selection served (for `gateway.list` and metrics).
    pub fn record_selection(&mut self) {
        self.selections = self.selections.saturating_add(1);
    }

    /// Whether the last probe results say healthy (ignores holds).
    pub fn probe_healthy(&self) -> bool {
        self.probe_healthy
    }

    /// Why the probes fail, while they do.
    pub fn last_probe_failure(&self) -> Option<&FailureReason> {
        self.last_probe_failure.as_ref()
    }

    /// The final response the last probe got, if one came.
    pub fn last_probe_reply(&self) -> Option<u16> {
        self.last_probe_reply
    }

    pub fn note_probe_reply(&mut self, status: Option<u16>) {
        self.last_probe_reply = status;
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    pub fn failure_threshold(&self) -> u32 {
        self.failure_threshold
    }

    /// A new probe threshold (a reloaded group's), keeping the rest.
    pub fn set_failure_threshold(&mut self, failure_threshold: u32) {
        self.failure_threshold = failure_threshold.max(1);
    }

    pub fn success_threshold(&self) -> u32 {
        self.success_threshold
    }

    /// Probe successes in a row that bring it back from probed down.
    pub fn set_success_threshold(&mut self, success_threshold: u32) {
        self.success_threshold = success_threshold.max(1);
    }

    /// A Retry-After hold that is no failure: a paced trunk's 503 (its
    /// `max_cps` exceeded) says "not now", not "broken". Returns the
    /// transition to log.
    pub fn record_pacing_hold(
        &mut self,
        reason: FailureReason,
        hold: Duration,
        now: Instant,
    ) -> Option<Transition> {
        self.hold_for(hold, now);
        self.report(now, TransitionReason::RetryAfter { hold, last: reason })
    }

    /// Whether a script/admin `mark_down` is in force.
    pub fn is_held_down(&self) -> bool {
        self.held_down
    }

    /// End of the running Retry-After hold, if any (may be in the past until
    /// the next `refresh`).
    pub fn retry_after_until(&self) -> Option<Instant> {
        self.retry_after_until
    }

    /// Latency of the last successful probe.
    pub fn last_latency(&self) -> Option<Duration> {
        self.last_latency
    }

    /// How many selections chose this destination first.
    pub fn selections(&self) -> u64 {
        self.selections
    }

    fn in_retry_after(&self, now: Instant) -> bool {
        self.retry_after_until.is_some_and(|until| now < until)
    }

    /// Compare with what was last reported; report and remember a change.
    fn report(&mut self, now: Instant, reason: TransitionReason) -> Option<Transition> {
        // A peer's report is never this node's news; a change of the own
        // verdict by time alone is taken by the next refresh, with its reason.
        if reason.source() != "peer" {
            let own = self.own_availability(now);
            self.note_own_verdict(own, || reason.clone());
        }
        let current = self.availability(now);
        if current == self.reported {
            return None;
        }
        let from = self.reported;
        self.reported = current;
        Some(Transition {
            from,
            to: current,
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn the_uri_or_the_config_chooses_the_transport_and_tls_names_the_host() {
        let address: SocketAddr = "192.0.2.30:5061".parse().unwrap();
        let hop = |uri: &str| Destination::new(uri, address).hop().clone();
        assert_eq!(hop("sip:a.example.com:5060").protocol, Protocol::Udp);
        assert_eq!(
            hop("sip:a.example.com;transport=TCP").protocol,
            Protocol::Tcp
        );
        assert_eq!(
            hop("sip:a.example.com;transport=udp").protocol,
            Protocol::Udp
        );
        assert_eq!(hop("not a uri").protocol, Protocol::Udp);
        let tls = hop("sips:A.example.com");
        assert_eq!((tls.protocol, tls.addr), (Protocol::Tls, address));
        assert_eq!(tls.tls_name.as_deref(), Some("a.example.com"));
        assert_eq!(hop("sip:192.0.2.30;transport=tls").tls_name, None);
        let configured =
            Destination::new("sip:b.example.com", address).with_protocol(Protocol::Tls);
        assert_eq!(configured.protocol(), Protocol::Tls);
        assert_eq!(configured.hop().tls_name.as_deref(), Some("b.example.com"));
    }

    #[test]
    fn starts_healthy() {
        let now = Instant::now();
        let health = Health::new(3);
        assert!(health.is_up(now));
        assert_eq!(health.consecutive_failures(), 0);
        assert_eq!(health.selections(), 0);
    }

    #[test]
    fn goes_down_exactly_at_threshold_and_reports_once() {
        let now = Instant::now();
        let mut health = Health::new(3);
        assert_eq!(
            health.record_failure(FailureReason::Timeout, None, now),
            None
        );
        assert!(health.is_up(now));
        assert_eq!(
            health.record_failure(FailureReason::Status(500), None, now),
            None
        );
        assert!(health.is_up(now));
        let transition = health
            .record_failure(FailureReason::Timeout, None, now)
            .expect("third failure crosses the threshold");
        assert_eq!(transition.from, Availability::Up);
        assert_eq!(transition.to, Availability::Down);
        assert_eq!(
            transition.reason,
            TransitionReason::FailureThreshold {
                failures: 3,
                last: FailureReason::Timeout
            }
        );
        assert!(!health.is_up(now));
        // Further failures keep it down without reporting again.
        assert_eq!(
            health.record_failure(FailureReason::Timeout, None, now),
            None
        );
        assert_eq!(health.consecutive_failures(), 4);
    }

    #[test]
    fn success_resets_the_failure_count() {
        let now = Instant::now();
        let mut health = Health::new(2);
        assert_eq!(
            health.record_failure(FailureReason::Timeout, None, now),
            None
        );
        assert_eq!(health.record_success(Duration::from_millis(5), now), None);
        assert_eq!(
            health.record_failure(FailureReason::Timeout, None, now),
            None
        );
        assert!(health.is_up(now), "failures were not consecutive");
    }

    #[test]
    fn one_success_marks_up_and_reports_once() {
        let now = Instant::now();
        let mut health = Health::new(1);
        assert!(health
            .record_failure(FailureReason::Timeout, None, now)
            .is_some());
        let latency = Duration::from_millis(7);
        let transition = health
            .record_success(latency, now)
            .expect("success after down is a transition");
        assert_eq!(transition.from, Availability::Down);
        assert_eq!(transition.to, Availability::Up);
        assert_eq!(
            transition.reason,
            TransitionReason::ProbeSucceeded { latency }
        );
        assert!(health.is_up(now));
        assert_eq!(health.last_latency(), Some(latency));
        assert_eq!(health.record_success(latency, now), None);
    }

    #[test]
    fn zero_threshold_means_one_failure() {
        let now = Instant::now();
        let mut health = Health::new(0);
        assert_eq!(health.failure_threshold(), 1);
        assert!(health
            .record_failure(FailureReason::Timeout, None, now)
            .is_some());
        assert!(!health.is_up(now));
    }

    #[test]
    fn mark_down_holds_against_probe_successes_until_mark_up() {
        let now = Instant::now();
        let mut health = Health::new(3);
        assert!(health.mark_down());
        assert!(!health.mark_down(), "second mark_down changes nothing");
        assert!(!health.is_up(now));
        for _ in 0..5 {
            assert_eq!(health.record_success(Duration::from_millis(1), now), None);
            assert!(!health.is_up(now));
        }
        assert!(health.is_held_down());
        assert!(health.mark_up(now));
        assert!(health.is_up(now));
        assert!(!health.mark_up(now), "already up");
        // The admin mark is not reported again by the next probe.
        assert_eq!(health.record_success(Duration::from_millis(1), now), None);
    }

    #[test]
    fn mark_up_overrides_probe_failures() {
        let now = Instant::now();
        let mut health = Health::new(1);
        assert!(health
            .record_failure(FailureReason::Timeout, None, now)
            .is_some());
        assert!(health.mark_up(now));
        assert!(health.is_up(now));
        assert_eq!(health.consecutive_failures(), 0);
        // And probes can take it down again, reported once.
        assert!(health
            .record_failure(FailureReason::Timeout, None, now)
            .is_some());
        assert!(!health.is_up(now));
    }

    #[test]
    fn retry_after_holds_down_for_its_duration_then_releases() {
        let start = Instant::now();
        let mut health = Health::new(3);
        let transition = health
            .record_failure(FailureReason::Status(503), Some(secs(30)), start)
            .expect("retry-after holds down at once, below the threshold");
        assert_eq!(transition.to, Availability::Down);
        assert_eq!(
            transition.reason,
            TransitionReason::RetryAfter {
                hold: secs(30),
                last: FailureReason::Status(503)
            }
        );
        // A success inside the hold does not lift it.
        assert_eq!(
            health.record_success(Duration::from_millis(2), start + secs(10)),
            None
        );
        assert!(!health.is_up(start + secs(29)));
        assert!(health.is_up(start + secs(30)));
        // The expiry is reported once, by whichever call notices first.
        let transition = health
            .refresh(start + secs(31))
            .expect("expiry is a transition");
        assert_eq!(transition.from, Availability::Down);
        assert_eq!(transition.to, Availability::Up);
        assert_eq!(transition.reason, TransitionReason::RetryAfterExpired);
        assert_eq!(health.refresh(start + secs(32)), None);
        assert_eq!(health.retry_after_until(), None);
    }

    #[test]
    fn shorter_retry_after_does_not_shorten_a_running_hold() {
        let start = Instant::now();
        let mut health = Health::new(10);
        health.record_failure(FailureReason::Status(503), Some(secs(60)), start);
        health.record_failure(FailureReason::Status(503), Some(secs(1)), start + secs(1));
        assert!(!health.is_up(start + secs(30)));
        assert!(health.is_up(start + secs(60)));
    }

    #[test]
    fn retry_after_expiry_leaves_it_down_when_threshold_was_reached() {
        let start = Instant::now();
        let mut health = Health::new(1);
        assert!(health
            .record_failure(FailureReason::Status(503), Some(secs(5)), start)
            .is_some());
        // The 503 also counted as a failure that reached the threshold, so the
        // end of the hold alone does not bring it back: a probe must succeed.
        assert_eq!(health.refresh(start + secs(6)), None);
        assert!(!health.is_up(start + secs(6)));
        assert!(health
            .record_success(Duration::from_millis(1), start + secs(7))
            .is_some());
        assert!(health.is_up(start + secs(7)));
    }

    #[test]
    fn mark_down_while_down_reports_nothing_later() {
        let now = Instant::now();
        let mut health = Health::new(1);
        assert!(health
            .record_failure(FailureReason::Timeout, None, now)
            .is_some());
        assert!(health.mark_down());
        assert_eq!(
            health.record_failure(FailureReason::Timeout, None, now),
            None
        );
        assert_eq!(health.record_success(Duration::from_millis(1), now), None);
    }

    #[test]
    fn attrs_filter_requires_every_key_equal() {
        let address: SocketAddr = "10.0.0.1:5060".parse().expect("literal address");
        let destination = Destination::new("sip:a", address)
            .with_attr("region", "us-east")
            .with_attr("tier", "gold");
        let mut filter = BTreeMap::new();
        assert!(destination.matches_attrs(&filter), "empty filter matches");
        filter.insert("region".to_string(), "us-east".to_string());
        assert!(destination.matches_attrs(&filter));
        filter.insert("tier".to_string(), "silver".to_string());
        assert!(!destination.matches_attrs(&filter), "unequal value");
        filter.remove("tier");
        filter.insert("zone".to_string(), "a".to_string());
        assert!(!destination.matches_attrs(&filter), "missing key");
    }

    #[test]
    fn transition_displays_for_logs() {
        let transition = Transition {
            from: Availability::Up,
            to: Availability::Down,
            reason: TransitionReason::FailureThreshold {
                failures: 3,
                last: FailureReason::Timeout,
            },
        };
        assert_eq!(
            transition.to_string(),
            "up -> down: 3 consecutive failures (last: timeout)"
        );
    }
}
