//! Prometheus metrics and the per-actor statistics logged every
//! `metrics.log_interval_secs`.
//!
//! Metrics are process-wide (one registry), so any actor updates them without
//! plumbing. Hot-path label sets are `&'static str` or integers, so counting a
//! request allocates nothing; per-destination handles are created once and
//! kept by the gateway layer.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestinationLabels {
    pub group: String,
    pub destination: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailoverLabels {
    pub group: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    pub group: String,
}

/// A destination by group and uri (the capacity metrics' labels).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UriLabels {
    pub group: String,
    pub uri: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExecutorLabels {
    pub executor: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabels {
    pub transport: &'static str,
}

/// Every metric siphon exports.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<MethodLabels, Counter>,
    pub responses: Family<CodeLabels, Counter>,
    pub transactions_active: Gauge,
    pub script_executions: Counter,
    pub script_errors: Counter,
    pub script_duration: Histogram,
    pub gateway_selections: Family<DestinationLabels, Counter>,
    pub destination_up: Family<DestinationLabels, Gauge>,
    pub probe_latency: Family<DestinationLabels, Histogram>,
    pub probe_failures: Family<DestinationLabels, Counter>,
    pub passive_failures: Family<DestinationLabels, Counter>,
    pub failovers: Family<FailoverLabels, Counter>,
    pub gateway_full: Family<GroupLabels, Counter>,
    pub calls_collected: Family<GroupLabels, Counter>,
    pub active_calls: Family<UriLabels, Gauge>,
    pub registrations_active: Gauge,
    pub malformed: Family<TransportLabels, Counter>,
    pub ingress_dropped: Counter,
    pub edge_drops: Family<ReasonLabels, Counter>,
    pub edge_bans: Gauge,
    pub transactions_refused: Counter,
    pub relays_refused: Family<ReasonLabels, Counter>,
    pub tcp_refused: Family<ReasonLabels, Counter>,
    pub script_timeouts: Counter,
    pub auth_checks: Family<ReasonLabels, Counter>,
    pub dns_lookups: Family<ReasonLabels, Counter>,
    pub shared_lookups: Family<ReasonLabels, Counter>,
    pub connections: Family<TransportLabels, Gauge>,
    pub tls_handshake_failures: Family<ReasonLabels, Counter>,
    pub executor_runs: Family<ExecutorLabels, Counter>,
    pub executor_queue: Family<ExecutorLabels, Gauge>,
    pub executor_busy: Family<ExecutorLabels, Counter<f64, AtomicU64>>,
    pub executor_timeouts: Family<ExecutorLabels, Counter>,
    pub executor_abandoned: Family<ExecutorLabels, Counter>,
    pub script_late_decisions: Counter,
    pub script_wait: Histogram,
    pub hep_dropped: Family<ReasonLabels, Counter>,
    pub otlp_dropped: Family<ReasonLabels, Counter>,
    pub otlp_exported: Counter,
    pub transactions_evicted: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub version: &'static str,
}

/// The handles one gateway destination updates, created once per destination.
#[derive(Clone)]
pub struct DestinationMetrics {
    pub selections: Counter,
    pub up: Gauge,
    pub probe_latency: Histogram,
    pub probe_failures: Counter,
    pub passive_failures: Counter,
    pub active_calls: Gauge,
}

impl Metrics {
    /// Counts a relay refused for `reason`.
    pub fn relay_refused(&self, reason: &'static str) {
        self.relays_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    fn new() -> Self {
        let mut registry = Registry::with_prefix("siphon");
        let m = Metrics {
            requests: Family::default(),
            responses: Family::default(),
            transactions_active: Gauge::default(),
            script_executions: Counter::default(),
            script_errors: Counter::default(),
            script_duration: Histogram::new(exponential_buckets(0.000_005, 2.0, 16)),
            gateway_selections: Family::default(),
            destination_up: Family::default(),
            probe_latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_1, 2.0, 16))
            }),
            probe_failures: Family::default(),
            passive_failures: Family::default(),
            failovers: Family::default(),
            gateway_full: Family::default(),
            calls_collected: Family::default(),
            active_calls: Family::default(),
            registrations_active: Gauge::default(),
            malformed: Family::default(),
            ingress_dropped: Counter::default(),
            edge_drops: Family::default(),
            edge_bans: Gauge::default(),
            transactions_refused: Counter::default(),
            relays_refused: Family::default(),
            tcp_refused: Family::default(),
            script_timeouts: Counter::default(),
            auth_checks: Family::default(),
            dns_lookups: Family::default(),
            shared_lookups: Family::default(),
            connections: Family::default(),
            tls_handshake_failures: Family::default(),
            executor_runs: Family::default(),
            executor_queue: Family::default(),
            executor_busy: Family::default(),
            executor_timeouts: Family::default(),
            executor_abandoned: Family::default(),
            script_late_decisions: Counter::default(),
            hep_dropped: Family::default(),
            otlp_dropped: Family::default(),
            otlp_exported: Counter::default(),
            transactions_evicted: Counter::default(),
            script_wait: Histogram::new(exponential_buckets(0.000_010, 2.0, 16)),
            registry: Registry::default(),
        };
        registry.register(
            "requests",
            "SIP requests received, by method",
            m.requests.clone(),
        );
        registry.register(
            "responses",
            "SIP responses sent upstream, by status code",
            m.responses.clone(),
        );
        registry.register(
            "transactions_active",
            "Live server and client transactions (not the ended ones lingering for their timers): what limits.max_transactions bounds",
            m.transactions_active.clone(),
        );
        registry.register(
            "script_executions",
            "Routing script runs",
            m.script_executions.clone(),
        );
        registry.register(
            "script_errors",
            "Routing script runs that raised",
            m.script_errors.clone(),
        );
        registry.register(
            "script_duration_seconds",
            "Time spent in the routing script per request",
            m.script_duration.clone(),
        );
        registry.register(
            "gateway_selections",
            "Destinations chosen by gateway.select",
            m.gateway_selections.clone(),
        );
        registry.register(
            "gateway_destination_up",
            "1 when a gateway destination is healthy",
            m.destination_up.clone(),
        );
        registry.register(
            "gateway_probe_latency_seconds",
            "OPTIONS probe round-trip time",
            m.probe_latency.clone(),
        );
        registry.register(
            "gateway_probe_failures",
            "OPTIONS probes that failed or timed out",
            m.probe_failures.clone(),
        );
        registry.register(
            "gateway_passive_failures",
            "Relayed requests to a destination that failed (no response, transport error, a failover code)",
            m.passive_failures.clone(),
        );
        registry.register(
            "failovers",
            "Requests moved to the next destination of their group, by reason",
            m.failovers.clone(),
        );
        registry.register(
            "gateway_full",
            "Requests no destination of the group could take (every one left full, paced or drained)",
            m.gateway_full.clone(),
        );
        registry.register(
            "gateway_calls_collected",
            "Calls that stopped counting at gateway.call_max_secs because no BYE ended them",
            m.calls_collected.clone(),
        );
        registry.register(
            "gateway_active_calls",
            "Calls established through a gateway destination (2xx seen, no BYE yet)",
            m.active_calls.clone(),
        );
        registry.register(
            "registrations_active",
            "Registrar bindings held",
            m.registrations_active.clone(),
        );
        registry.register(
            "malformed_messages",
            "Messages dropped or answered 400 because they did not parse",
            m.malformed.clone(),
        );
        registry.register(
            "ingress_dropped",
            "Messages dropped because a transaction shard's queue was full",
            m.ingress_dropped.clone(),
        );
        registry.register(
            "edge_dropped",
            "Messages from untrusted sources dropped at the edge, by reason",
            m.edge_drops.clone(),
        );
        registry.register(
            "edge_bans",
            "Sources banned at the last edge summary",
            m.edge_bans.clone(),
        );
        registry.register(
            "relays_refused",
            "Relays refused 403: an in-dialog Route of ours without a valid seal, or a target security.relay_to refuses, by reason",
            m.relays_refused.clone(),
        );
        registry.register(
            "transactions_refused",
            "New requests refused because limits.max_transactions was reached",
            m.transactions_refused.clone(),
        );
        registry.register(
            "tcp_refused",
            "TCP connections refused or closed by a limit, by reason",
            m.tcp_refused.clone(),
        );
        registry.register(
            "script_timeouts",
            "Script handlers interrupted at script.timeout_ms",
            m.script_timeouts.clone(),
        );
        registry.register(
            "auth_checks",
            "auth.check outcomes (ok, challenge, stale)",
            m.auth_checks.clone(),
        );
        registry.register(
            "dns_lookups",
            "DNS lookups made while relaying, by outcome (found, not_found, timeout)",
            m.dns_lookups.clone(),
        );
        registry.register(
            "registrar_shared_lookups",
            "Registrar lookups that missed locally and read Redis, by outcome (found, absent, error)",
            m.shared_lookups.clone(),
        );
        registry.register(
            "connections",
            "Open stream connections (inbound and outbound), by transport",
            m.connections.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed (inbound, outbound, timeout)",
            m.tls_handshake_failures.clone(),
        );
        registry.register(
            "script_executor_runs",
            "Script handler runs, by script-executor actor",
            m.executor_runs.clone(),
        );
        registry.register(
            "script_executor_queue",
            "Script runs sent to an executor and not yet run, by executor",
            m.executor_queue.clone(),
        );
        registry.register(
            "script_executor_busy_seconds",
            "Time each script executor spent running handlers",
            m.executor_busy.clone(),
        );
        registry.register(
            "script_executor_timeouts",
            "Requests answered 500 because their executor gave no decision within script.timeout_ms",
            m.executor_timeouts.clone(),
        );
        registry.register(
            "script_executor_abandoned",
            "Executors given up at script.abandon_ms, stuck in a handler, and replaced",
            m.executor_abandoned.clone(),
        );
        registry.register(
            "script_late_decisions",
            "Script decisions dropped because they came after script.timeout_ms",
            m.script_late_decisions.clone(),
        );
        registry.register(
            "script_wait_seconds",
            "Time from a shard handing a request to its script executor to the decision coming back",
            m.script_wait.clone(),
        );
        registry.register(
            "hep_dropped",
            "Messages not captured to the HEP collector: its queue was full, a send failed, or HEP cannot carry it",
            m.hep_dropped.clone(),
        );
        registry.register(
            "otlp_dropped_spans",
            "Spans of traced calls not exported: the queue to the export thread was full, or the collector failed or was unreachable",
            m.otlp_dropped.clone(),
        );
        registry.register(
            "transactions_evicted",
            "Ended transactions dropped before their timers ran out, to keep them within limits.ended_transactions_mb",
            m.transactions_evicted.clone(),
        );
        registry.register(
            "otlp_exported_spans",
            "Spans of traced calls the OpenTelemetry collector accepted",
            m.otlp_exported.clone(),
        );
        let build_info = Family::<VersionLabels, Gauge>::default();
        build_info
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "build_info",
            "This build of siphon (always 1), by version",
            build_info,
        );
        let m = Metrics { registry, ..m };
        m.start_at_zero();
        m
    }

    /// The series whose labels are known in advance exist from the start,
    /// at 0, so that a rate() over them works before their first event.
    fn start_at_zero(&self) {
        for (_, method) in KNOWN_METHODS.iter().chain(&[("", "other")]) {
            drop(self.requests.get_or_create(&MethodLabels { method }));
        }
        let reasons = [
            (
                &self.dns_lookups,
                &["found", "not_found", "timeout", "error"][..],
            ),
            (&self.edge_drops, &["rate_limit", "scanner"][..]),
            (
                &self.hep_dropped,
                &["queue_full", "send_failed", "unframable"][..],
            ),
            (&self.otlp_dropped, &["queue_full", "export_failed"][..]),
            (
                &self.tls_handshake_failures,
                &["inbound", "outbound", "timeout"][..],
            ),
        ];
        for (family, known) in reasons {
            for reason in known {
                drop(family.get_or_create(&ReasonLabels { reason }));
            }
        }
    }

    /// The Prometheus text exposition of every metric, and the process's
    /// own (`process_*`: CPU, memory, descriptors, start time).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        let process = crate::process_metrics::exposition();
        match out.rfind("# EOF") {
            Some(end) => out.insert_str(end, &process),
            None => out.push_str(&process),
        }
        out
    }

    pub fn request(&self, method: &str) {
        self.requests
            .get_or_create(&MethodLabels {
                method: method_label(method),
            })
            .inc();
    }

    pub fn response(&self, code: u16) {
        self.responses.get_or_create(&CodeLabels { code }).inc();
    }

    pub fn destination(&self, group: &str, uri: &str) -> DestinationMetrics {
        let labels = DestinationLabels {
            group: group.to_string(),
            destination: uri.to_string(),
        };
        DestinationMetrics {
            selections: self.gateway_selections.get_or_create(&labels).clone(),
            up: self.destination_up.get_or_create(&labels).clone(),
            probe_latency: self.probe_latency.get_or_create(&labels).clone(),
            probe_failures: self.probe_failures.get_or_create(&labels).clone(),
            passive_failures: self.passive_failures.get_or_create(&labels).clone(),
            active_calls: self
                .active_calls
                .get_or_create(&UriLabels {
                    group: group.to_string(),
                    uri: uri.to_string(),
                })
                .clone(),
        }
    }

    /// Forgets a removed destination's series.
    pub fn remove_destination(&self, group: &str, uri: &str) {
        let labels = DestinationLabels {
            group: group.to_string(),
            destination: uri.to_string(),
        };
        self.gateway_selections.remove(&labels);
        self.destination_up.remove(&labels);
        self.probe_latency.remove(&labels);
        self.probe_failures.remove(&labels);
        self.passive_failures.remove(&labels);
        self.active_calls.remove(&UriLabels {
            group: group.to_string(),
            uri: uri.to_string(),
        });
    }

    pub fn edge_dropped(&self, reason: &'static str) {
        count(&self.edge_drops, reason);
    }

    pub fn tcp_refused(&self, reason: &'static str) {
        count(&self.tcp_refused, reason);
    }

    pub fn auth_check(&self, reason: &'static str) {
        count(&self.auth_checks, reason);
    }

    pub fn dns_lookup(&self, outcome: &'static str) {
        count(&self.dns_lookups, outcome);
    }

    pub fn hep_dropped(&self, reason: &'static str) {
        count(&self.hep_dropped, reason);
    }

    pub fn otlp_dropped(&self, reason: &'static str, spans: u64) {
        self.otlp_dropped
            .get_or_create(&ReasonLabels { reason })
            .inc_by(spans);
    }

    pub fn otlp_exported(&self, spans: u64) {
        self.otlp_exported.inc_by(spans);
    }

    pub fn shared_lookup(&self, outcome: &'static str) {
        count(&self.shared_lookups, outcome);
    }

    pub fn tls_handshake_failed(&self, reason: &'static str) {
        count(&self.tls_handshake_failures, reason);
    }

    pub fn connection_opened(&self, protocol: crate::sip::Protocol) {
        self.connections_of(protocol).inc();
    }

    pub fn connection_closed(&self, protocol: crate::sip::Protocol) {
        self.connections_of(protocol).dec();
    }

    fn connections_of(&self, protocol: crate::sip::Protocol) -> Gauge {
        self.connections
            .get_or_create(&TransportLabels {
                transport: protocol.name(),
            })
            .clone()
    }

    /// The handles script executor `index` updates; its series start at 0
    /// and its figures join the actor metrics log line.
    pub fn executor(&self, index: usize) -> Arc<ExecutorStats> {
        let labels = ExecutorLabels {
            executor: index as u16,
        };
        let stats = Arc::new(ExecutorStats {
            index,
            actor: ActorStats::default(),
            runs: self.executor_runs.get_or_create(&labels).clone(),
            queue: self.executor_queue.get_or_create(&labels).clone(),
            busy: self.executor_busy.get_or_create(&labels).clone(),
            timeouts: self.executor_timeouts.get_or_create(&labels).clone(),
            abandoned: self.executor_abandoned.get_or_create(&labels).clone(),
        });
        let mut logged = actors().executors.lock().unwrap_or_else(|p| p.into_inner());
        logged.retain(|s| s.index != index);
        logged.push(stats.clone());
        stats
    }

    /// A request no destination of `group` could take.
    pub fn gateway_full(&self, group: &str) {
        let labels = GroupLabels {
            group: group.to_string(),
        };
        self.gateway_full.get_or_create(&labels).inc();
    }

    /// A call of `group` collected at `gateway.call_max_secs`.
    pub fn call_collected(&self, group: &str) {
        let labels = GroupLabels {
            group: group.to_string(),
        };
        self.calls_collected.get_or_create(&labels).inc();
    }

    pub fn failover(&self, group: &str, reason: &'static str) {
        let labels = FailoverLabels {
            group: group.to_string(),
            reason,
        };
        self.failovers.get_or_create(&labels).inc();
    }
}

fn count(family: &Family<ReasonLabels, Counter>, reason: &'static str) {
    family.get_or_create(&ReasonLabels { reason }).inc();
}

/// The methods counted by name, and their labels: lower case, as every
/// label value here is (`transport="udp"`, `reason="rate_limit"`).
const KNOWN_METHODS: [(&str, &str); 14] = [
    ("INVITE", "invite"),
    ("ACK", "ack"),
    ("BYE", "bye"),
    ("CANCEL", "cancel"),
    ("REGISTER", "register"),
    ("OPTIONS", "options"),
    ("INFO", "info"),
    ("UPDATE", "update"),
    ("PRACK", "prack"),
    ("SUBSCRIBE", "subscribe"),
    ("NOTIFY", "notify"),
    ("MESSAGE", "message"),
    ("REFER", "refer"),
    ("PUBLISH", "publish"),
];

/// Known methods keep their name as a label; anything else is `other`, so a
/// stream of made-up methods cannot grow the series without bound.
fn method_label(method: &str) -> &'static str {
    KNOWN_METHODS
        .iter()
        .find(|(name, _)| *name == method)
        .map_or("other", |(_, label)| label)
}

/// The process-wide metrics.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Counters one kind of actor keeps for the periodic log line: messages
/// handled, messages queued and not yet handled, and time spent handling.
#[derive(Default)]
pub struct ActorStats {
    pub handled: AtomicU64,
    pub queued: AtomicI64,
    pub busy_nanos: AtomicU64,
}

impl ActorStats {
    pub fn enqueued(&self) -> i64 {
        self.queued.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn record(&self, busy: Duration) {
        self.handled.fetch_add(1, Ordering::Relaxed);
        self.queued.fetch_sub(1, Ordering::Relaxed);
        self.busy_nanos
            .fetch_add(busy.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Counts a message handled that was not counted as queued.
    pub fn record_unqueued(&self, busy: Duration) {
        self.handled.fetch_add(1, Ordering::Relaxed);
        self.busy_nanos
            .fetch_add(busy.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Counts one handled message, busy until the guard drops. For actors
    /// whose mailbox depth is not tracked.
    pub fn measure(&self) -> BusyGuard<'_> {
        BusyGuard {
            stats: self,
            started: std::time::Instant::now(),
        }
    }

    /// Handled and busy time since the last call, and the current queue.
    pub fn take_interval(&self) -> (u64, i64, Duration) {
        let handled = self.handled.swap(0, Ordering::Relaxed);
        let busy = self.busy_nanos.swap(0, Ordering::Relaxed);
        (
            handled,
            self.queued.load(Ordering::Relaxed).max(0),
            Duration::from_nanos(busy),
        )
    }
}

/// Records the time until it is dropped as one handled message.
pub struct BusyGuard<'a> {
    stats: &'a ActorStats,
    started: std::time::Instant,
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.stats.record_unqueued(self.started.elapsed());
    }
}

/// What one script-executor actor counts: the actor figures of the log
/// line, and its Prometheus series.
pub struct ExecutorStats {
    pub index: usize,
    pub actor: ActorStats,
    pub runs: Counter,
    pub queue: Gauge,
    pub busy: Counter<f64, AtomicU64>,
    pub timeouts: Counter,
    pub abandoned: Counter,
}

impl ExecutorStats {
    /// A run was queued for this executor.
    pub fn enqueued(&self) {
        self.actor.enqueued();
        self.queue.inc();
    }

    /// A queued run left the queue without running (answered at the
    /// timeout, or sent to a replacement).
    pub fn dequeued(&self) {
        self.actor.queued.fetch_sub(1, Ordering::Relaxed);
        self.queue.dec();
    }

    /// A run took `busy` (it left the queue: see [`Self::dequeued`]).
    pub fn ran(&self, busy: Duration) {
        self.actor.record_unqueued(busy);
        self.runs.inc();
        self.busy.inc_by(busy.as_secs_f64());
    }
}

/// The actor kinds that report in the periodic log line.
pub struct ActorKinds {
    pub udp: ActorStats,
    pub tcp: ActorStats,
    pub transaction: ActorStats,
    pub gateway: ActorStats,
    pub prober: ActorStats,
    pub registrar: ActorStats,
    /// Each script executor's, registered as they start.
    pub executors: Mutex<Vec<Arc<ExecutorStats>>>,
}

pub fn actors() -> &'static ActorKinds {
    static ACTORS: OnceLock<ActorKinds> = OnceLock::new();
    ACTORS.get_or_init(|| ActorKinds {
        udp: ActorStats::default(),
        tcp: ActorStats::default(),
        transaction: ActorStats::default(),
        gateway: ActorStats::default(),
        prober: ActorStats::default(),
        registrar: ActorStats::default(),
        executors: Mutex::default(),
    })
}

/// Logs one line per actor kind with its figures for the interval.
pub fn log_actor_stats(interval: Duration) {
    let kinds = actors();
    for (name, stats) in [
        ("udp_transport", &kinds.udp),
        ("tcp_transport", &kinds.tcp),
        ("transaction_shard", &kinds.transaction),
        ("gateway_group", &kinds.gateway),
        ("prober", &kinds.prober),
        ("registrar", &kinds.registrar),
    ] {
        let (handled, queued, busy) = stats.take_interval();
        let busy_pct = 100.0 * busy.as_secs_f64() / interval.as_secs_f64().max(1e-9);
        tracing::info!(
            target: "siphon::actors",
            actor = name,
            handled,
            mailbox = queued,
            busy_ms = busy.as_millis() as u64,
            busy_pct = format!("{busy_pct:.1}"),
            "actor metrics"
        );
    }
    let executors = kinds
        .executors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    for stats in executors {
        let (handled, queued, busy) = stats.actor.take_interval();
        let busy_pct = 100.0 * busy.as_secs_f64() / interval.as_secs_f64().max(1e-9);
        tracing::info!(
            target: "siphon::actors",
            actor = "script_executor",
            executor = stats.index,
            handled,
            mailbox = queued,
            busy_ms = busy.as_millis() as u64,
            busy_pct = format!("{busy_pct:.1}"),
            timeouts = stats.timeouts.get(),
            abandoned = stats.abandoned.get(),
            "actor metrics"
        );
    }
    let m = get();
    let handshake_failures: u64 = ["inbound", "outbound", "timeout"]
        .iter()
        .map(|reason| {
            m.tls_handshake_failures
                .get_or_create(&ReasonLabels { reason })
                .get()
        })
        .sum();
    tracing::info!(
        target: "siphon::actors",
        tcp = m.connections_of(crate::sip::Protocol::Tcp).get(),
        tls = m.connections_of(crate::sip::Protocol::Tls).get(),
        tls_handshake_failures = handshake_failures,
        "connections"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_show_up_in_the_exposition() {
        let m = Metrics::new();
        m.request("INVITE");
        m.request("FOOBAR");
        m.response(486);
        let d = m.destination("backends", "sip:b1");
        d.selections.inc();
        d.up.set(1);
        let text = m.encode();
        assert!(
            text.contains("siphon_requests_total{method=\"invite\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("siphon_requests_total{method=\"other\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("siphon_responses_total{code=\"486\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "siphon_gateway_selections_total{group=\"backends\",destination=\"sip:b1\"} 1"
            ),
            "{text}"
        );
    }

    #[test]
    fn actor_stats_report_and_reset_per_interval() {
        let stats = ActorStats::default();
        stats.enqueued();
        stats.enqueued();
        stats.record(Duration::from_millis(3));
        let (handled, queued, busy) = stats.take_interval();
        assert_eq!((handled, queued, busy), (1, 1, Duration::from_millis(3)));
        assert_eq!(stats.take_interval().0, 0);
    }
}
