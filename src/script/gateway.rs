//! `gateway`: the script's view of the gateway groups (DESIGN.md §4.2).
//!
//! `select` runs on the executor thread that runs the script: it reads what the
//! group's actor published (which destinations are up) and ranks them with
//! this thread's own selector, so it takes no lock, writes nothing the actor
//! owns, and pays no actor round trip. The ranking is remembered for the
//! run, so that `request.relay(d.uri)` fails over in the same order. Marks
//! go to the group's actor; additions and removals go through the
//! process-wide [`crate::gateway::GatewayControl`] (the daemon's starts and
//! stops the actors).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString};

use crate::config::{
    DestinationConfig, FailoverConfig, GroupConfig, PassiveConfig, ProbeConfig,
    DEFAULT_MAX_RETRY_AFTER_SECS,
};
use crate::gateway::group::GroupView;
use crate::gateway::tiers::{RankFor, RankScratch};
use crate::gateway::{Algorithm, AnySelector, Destination, Gateways, SharedGroup};
use crate::proxy::decision::{Action, Decision, GatewayRelay, RelayCandidate};
use crate::proxy::fast_hash::FastMap;

/// The most rankings one script run remembers (a script that selects in a
/// loop keeps the latest).
const RANKINGS_KEPT: usize = 8;

thread_local! {
    /// What `gateway.select` ranked during the script run on this thread,
    /// so that `request.relay(d.uri)` fails over in the same order. Scripts
    /// run one at a time per thread, and each run starts it afresh.
    static RANKINGS: RefCell<Vec<GatewayRelay>> = const { RefCell::new(Vec::new()) };

    /// This thread's selector of each group, and scratch space. Each
    /// executor ranks with its own rotation state over what the group's
    /// actor publishes, so selecting writes nothing the actor owns (and
    /// takes no lock): smooth weighted and round-robin stay smooth per
    /// executor, and
    /// HRW needs no state at all.
    static SELECTORS: RefCell<Selectors> = RefCell::new(Selectors::default());

    /// The request of the script run on this thread is an INVITE: call
    /// limits, paces and `hash_bound` shape its ranking.
    static RUN_IS_INVITE: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };

    /// The process's gateway groups, for `request.source_group` (set by
    /// the first run on this thread; the registry lives as long as the
    /// process).
    static GATEWAYS: std::cell::OnceCell<Arc<Gateways>> = const { std::cell::OnceCell::new() };
}

/// The first group whose destination sent the request (IP and port).
pub(super) fn source_group(source: std::net::SocketAddr) -> Option<String> {
    GATEWAYS.with(|gateways| {
        let group = gateways.get()?.group_of_source(source, false)?;
        Some(group.to_string())
    })
}

/// The most groups whose selectors a thread keeps (groups added and removed
/// by a script in a loop do not grow it without bound).
const SELECTORS_KEPT: usize = 64;

#[derive(Default)]
struct Selectors {
    by_group: FastMap<u64, AnySelector>,
    eligible: Vec<usize>,
    scratch: RankScratch,
    ranking: Vec<usize>,
}

/// Ranks the destinations of `shared` for `key` and `attrs` on this thread,
/// counts a selection of the first, and remembers the ranking for this
/// run's relay. Returns the first choice.
fn rank(
    shared: &SharedGroup,
    key: Option<&[u8]>,
    attrs: Option<&BTreeMap<String, String>>,
) -> Option<(Arc<GroupView>, usize)> {
    let view = shared.view();
    let relay = SELECTORS.with(|selectors| {
        let selectors = &mut *selectors.borrow_mut();
        if selectors.by_group.len() >= SELECTORS_KEPT
            && !selectors.by_group.contains_key(&shared.id())
        {
            selectors.by_group.clear();
        }
        let selector = selectors
            .by_group
            .entry(shared.id())
            .or_insert_with(|| view.new_selector());
        let request = RankFor {
            key,
            attrs,
            for_call: RUN_IS_INVITE.get(),
            now: std::time::Instant::now(),
        };
        view.rank(
            selector,
            request,
            (&mut selectors.eligible, &mut selectors.scratch),
            &mut selectors.ranking,
        );
        let candidates = selectors
            .ranking
            .iter()
            .filter_map(|&index| candidate(&view, index))
            .collect::<Vec<_>>();
        Some((selectors.ranking.first().copied()?, candidates))
    });
    let (chosen, candidates) = relay?;
    shared.count_selection(chosen);
    remember(GatewayRelay {
        group: shared.name().clone(),
        policy: shared.policy().clone(),
        candidates,
    });
    Some((view, chosen))
}

/// Forgets the rankings of the previous run on this thread, and notes
/// whether this run's request is a new call.
pub(super) fn begin_run(invite: bool, gateways: &Arc<Gateways>) {
    RANKINGS.with(|rankings| rankings.borrow_mut().clear());
    RUN_IS_INVITE.set(invite);
    GATEWAYS.with(|cell| {
        cell.get_or_init(|| gateways.clone());
    });
}

/// Gives a relay to a gateway destination its candidates: the ranking
/// `gateway.select` made for it in this run, else (the script named the
/// destination itself) its group's other destinations that are up.
pub(super) fn with_relay_candidates(mut decision: Decision, gateways: &Gateways) -> Decision {
    let Some(Action::Relay { uri: Some(uri) }) = &decision.action else {
        return decision;
    };
    let ranked = RANKINGS.with(|rankings| {
        let mut rankings = rankings.borrow_mut();
        let found = rankings
            .iter()
            .rposition(|relay| relay.candidates.iter().any(|c| *c.uri == **uri))?;
        let mut relay = rankings.swap_remove(found);
        // The script may relay to another than the first: it leads.
        if let Some(at) = relay.candidates.iter().position(|c| *c.uri == **uri) {
            relay.candidates[..=at].rotate_right(1);
        }
        Some(relay)
    });
    decision.gateway = ranked.or_else(|| {
        let shared = gateways.group_of(uri)?;
        let view = shared.view();
        let first = view.find(uri)?;
        let now = std::time::Instant::now();
        let others = (0..view.destinations.len()).filter(|&i| i != first && view.is_up(i, now));
        let candidates = std::iter::once(first)
            .chain(others)
            .filter_map(|index| candidate(&view, index))
            .collect();
        Some(GatewayRelay {
            group: shared.name().clone(),
            policy: shared.policy().clone(),
            candidates,
        })
    });
    decision
}

/// Destination `index` of `view` as a relay candidate.
fn candidate(view: &GroupView, index: usize) -> Option<RelayCandidate> {
    let destination = view.destinations.get(index)?;
    Some(RelayCandidate {
        uri: destination.shared_uri().clone(),
        hop: destination.hop().clone(),
        report_success: view.has_passive_failures(index),
        capacity: Some(destination.capacity().clone()),
    })
}

/// Remembers a ranking for this run's relay.
fn remember(relay: GatewayRelay) {
    RANKINGS.with(|rankings| {
        let mut rankings = rankings.borrow_mut();
        if rankings.len() >= RANKINGS_KEPT {
            rankings.remove(0);
        }
        rankings.push(relay);
    });
}

/// A destination as the script sees it: a snapshot taken when it was selected
/// or listed. `bool(d)` is `d.healthy`; `str(d)` is `d.uri`, so
/// `request.relay(d)` and `request.relay(d.uri)` both work.
#[pyclass(name = "Destination", module = "siphon", frozen)]
pub struct PyDestination {
    #[pyo3(get)]
    uri: String,
    /// Where packets go; shown to scripts as `"ip:port"`, formatted only
    /// when a script reads it.
    address: std::net::SocketAddr,
    #[pyo3(get)]
    weight: u32,
    attrs: BTreeMap<String, String>,
    #[pyo3(get)]
    healthy: bool,
    #[pyo3(get)]
    group: String,
    /// Its tier (lower first).
    #[pyo3(get)]
    priority: i32,
    /// Calls established through it when the snapshot was taken.
    #[pyo3(get)]
    active_calls: u32,
    #[pyo3(get)]
    max_calls: Option<u32>,
    #[pyo3(get)]
    max_cps: Option<f64>,
    #[pyo3(get)]
    draining: bool,
}

impl PyDestination {
    fn snapshot(group: &str, destination: &Destination, healthy: bool) -> Self {
        PyDestination {
            uri: destination.uri.clone(),
            address: destination.address,
            weight: destination.weight,
            attrs: destination.attrs.clone(),
            healthy,
            group: group.to_string(),
            priority: destination.priority,
            active_calls: destination.capacity().active_calls(),
            max_calls: destination.capacity().max_calls(),
            max_cps: destination.capacity().max_cps(),
            draining: destination.capacity().is_draining(),
        }
    }
}

#[pymethods]
impl PyDestination {
    #[getter]
    fn address(&self) -> String {
        self.address.to_string()
    }

    #[getter]
    fn attrs(&self) -> BTreeMap<String, String> {
        self.attrs.clone()
    }

    fn __bool__(&self) -> bool {
        self.healthy
    }

    fn __str__(&self) -> String {
        self.uri.clone()
    }

    fn __repr__(&self) -> String {
        format!(
            "<Destination {} group={:?} address={} weight={} healthy={}>",
            self.uri,
            self.group,
            self.address,
            self.weight,
            if self.healthy { "True" } else { "False" }
        )
    }
}

/// The `gateway` object of the `siphon` module.
#[pyclass(name = "Gateway", module = "siphon", frozen)]
pub(super) struct GatewayApi {
    service: Arc<dyn crate::gateway::GatewayControl>,
}

impl GatewayApi {
    pub(super) fn new(service: Arc<dyn crate::gateway::GatewayControl>) -> Self {
        GatewayApi { service }
    }

    fn set_drain(&self, group: &str, uri: &str, draining: bool) -> bool {
        let known = self.service.drain(group, uri, draining, "script").is_some();
        if !known {
            let verb = if draining { "drain" } else { "undrain" };
            tracing::warn!(target: "siphon::script", group = %group, uri = %uri, "gateway.{verb}: unknown group or uri");
        }
        known
    }

    fn mark(&self, group: &str, uri: &str, down: bool) -> bool {
        let verb = if down { "mark_down" } else { "mark_up" };
        match self.service.mark(group, uri, down, "script") {
            Some(true) => true,
            Some(false) => {
                tracing::warn!(target: "siphon::script", group = %group, uri = %uri, "gateway.{verb}: uri not in group");
                false
            }
            None => {
                tracing::warn!(target: "siphon::script", group = %group, "gateway.{verb}: unknown group");
                false
            }
        }
    }
}

#[pymethods]
impl GatewayApi {
    /// A healthy destination of `group` matching `attrs`, picked by the
    /// group's algorithm (`key` gives affinity with `hash`), or None.
    #[pyo3(signature = (group, key=None, attrs=None))]
    fn select(
        &self,
        group: &str,
        key: Option<Bound<'_, PyAny>>,
        attrs: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Option<PyDestination>> {
        let filter = attrs.map(|a| attr_map(&a, "attrs")).transpose()?;
        let Some(shared) = self.service.gateways().get(group) else {
            tracing::warn!(target: "siphon::script", group = %group, "gateway.select: unknown group");
            return Ok(None);
        };
        // Turn the key into bytes before locking: str() may run script code.
        let text;
        let key_bytes: Option<&[u8]> = match &key {
            None => None,
            Some(key) => match key.cast::<PyBytes>() {
                Ok(bytes) => Some(bytes.as_bytes()),
                Err(_) => {
                    text = key.str()?;
                    Some(text.to_str()?.as_bytes())
                }
            },
        };
        // The whole ranking: the first choice, then the failover order.
        let Some((view, chosen)) = rank(&shared, key_bytes, filter.as_ref()) else {
            return Ok(None);
        };
        Ok(view
            .destinations
            .get(chosen)
            .map(|destination| PyDestination::snapshot(group, destination, true)))
    }

    /// Holds `uri` down until `mark_up`; probes do not lift it. False when
    /// the group or the uri is unknown.
    fn mark_down(&self, group: &str, uri: &str) -> bool {
        self.mark(group, uri, true)
    }

    /// Lifts a hold (and forgets probe failures). False when unknown.
    fn mark_up(&self, group: &str, uri: &str) -> bool {
        self.mark(group, uri, false)
    }

    /// Whether `request` came from one of `group`'s destinations: its
    /// source IP, and port unless `any_port` (Kamailio's `ds_is_from_list`).
    /// False for an unknown group.
    #[pyo3(signature = (group, request, any_port=false))]
    fn is_from(
        &self,
        group: &str,
        request: PyRef<'_, super::request::Request>,
        any_port: bool,
    ) -> PyResult<bool> {
        let (source, _) = request.source()?;
        Ok(self.service.gateways().is_from(group, source, any_port))
    }

    /// `@gateway.on_change`: called `(group, uri, old_state, new_state,
    /// reason)` on every change of a destination's state (`up`, `down`,
    /// `draining`, `full`), on a thread of its own, off the SIP path.
    fn on_change(&self, py: Python<'_>, func: Py<PyAny>) -> PyResult<Py<PyAny>> {
        if !func.bind(py).is_callable() {
            return Err(PyTypeError::new_err(
                "on_change decorates a function taking (group, uri, old_state, new_state, reason)",
            ));
        }
        super::register_handler(super::HandlerKind::GatewayChange, None, func.clone_ref(py));
        Ok(func)
    }

    /// Drains `uri`: it takes no new requests (its hash keys go to their
    /// next choice) while its calls and their in-dialog requests go on.
    /// False when the group or the uri is unknown.
    fn drain(&self, group: &str, uri: &str) -> bool {
        self.set_drain(group, uri, true)
    }

    /// Ends a drain. False when the group or the uri is unknown.
    fn undrain(&self, group: &str, uri: &str) -> bool {
        self.set_drain(group, uri, false)
    }

    /// Adds (or replaces) a group; `destinations` are dicts with the config's
    /// keys (`uri`, `address`, `weight`, `attrs`), `probe` a dict with the
    /// config's probe keys. Raises ValueError naming the bad key.
    #[pyo3(signature = (name, destinations, algorithm="weighted", probe=None, failover=None, passive=None, max_retry_after_secs=None, spill_threshold=1, hash_bound=None))]
    #[allow(clippy::too_many_arguments)]
    fn add_group(
        &self,
        name: &str,
        destinations: Bound<'_, PyAny>,
        algorithm: &str,
        probe: Option<Bound<'_, PyAny>>,
        failover: Option<Bound<'_, PyAny>>,
        passive: Option<Bound<'_, PyAny>>,
        max_retry_after_secs: Option<u64>,
        spill_threshold: u32,
        hash_bound: Option<f64>,
    ) -> PyResult<()> {
        let policies = GroupPolicies {
            failover: failover.as_ref(),
            passive: passive.as_ref(),
            max_retry_after_secs,
            spill_threshold,
            hash_bound,
        };
        let config = group_config(name, &destinations, algorithm, probe.as_ref(), policies)
            .map_err(|message| PyValueError::new_err(format!("add_group({name:?}): {message}")))?;
        self.service.add_group(&config);
        Ok(())
    }

    /// Removes a group and stops its probers. False when unknown.
    fn remove_group(&self, name: &str) -> bool {
        self.service.remove_group(name)
    }

    /// Every group name, sorted.
    fn groups(&self) -> Vec<String> {
        self.service.gateways().names()
    }

    /// Every destination of `group` in config order, healthy or not. An
    /// unknown group gives an empty list and a warning.
    fn list(&self, group: &str) -> Vec<PyDestination> {
        let Some(shared) = self.service.gateways().get(group) else {
            tracing::warn!(target: "siphon::script", group = %group, "gateway.list: unknown group");
            return Vec::new();
        };
        let view = shared.view();
        let now = std::time::Instant::now();
        view.destinations
            .iter()
            .enumerate()
            .map(|(index, destination)| {
                PyDestination::snapshot(group, destination, view.is_up(index, now))
            })
            .collect()
    }
}

/// The keys a destination dict may have, as in the config.
const DESTINATION_KEYS: [&str; 8] = [
    "uri",
    "address",
    "weight",
    "attrs",
    "transport",
    "priority",
    "max_calls",
    "max_cps",
];
/// The keys a failover dict may have, as in the config.
const FAILOVER_KEYS: [&str; 4] = ["enabled", "no_response_ms", "on_codes", "max_attempts"];
/// The keys a passive dict may have, as in the config.
const PASSIVE_KEYS: [&str; 2] = ["failure_threshold", "eject_secs"];

/// `add_group`'s optional health and failover arguments.
struct GroupPolicies<'a, 'py> {
    failover: Option<&'a Bound<'py, PyAny>>,
    passive: Option<&'a Bound<'py, PyAny>>,
    max_retry_after_secs: Option<u64>,
    spill_threshold: u32,
    hash_bound: Option<f64>,
}

/// A dict argument with only `known` keys, or None when absent.
fn policy_dict<'a, 'py>(
    value: Option<&'a Bound<'py, PyAny>>,
    at: &str,
    known: &[&str],
) -> Result<Option<&'a Bound<'py, PyDict>>, String> {
    let Some(value) = value.filter(|v| !v.is_none()) else {
        return Ok(None);
    };
    let dict = value
        .cast::<PyDict>()
        .map_err(|_| format!("{at}: must be a dict with {}", known.join(", ")))?;
    check_keys(dict, at, known)?;
    Ok(Some(dict))
}

fn failover_config(value: Option<&Bound<'_, PyAny>>) -> Result<FailoverConfig, String> {
    let at = "failover";
    let defaults = FailoverConfig::default();
    let Some(dict) = policy_dict(value, at, &FAILOVER_KEYS)? else {
        return Ok(defaults);
    };
    Ok(FailoverConfig {
        enabled: optional(dict, "enabled", at)?.unwrap_or(defaults.enabled),
        no_response_ms: optional(dict, "no_response_ms", at)?.unwrap_or(defaults.no_response_ms),
        on_codes: optional(dict, "on_codes", at)?.unwrap_or(defaults.on_codes),
        max_attempts: optional(dict, "max_attempts", at)?,
    })
}

fn passive_config(value: Option<&Bound<'_, PyAny>>) -> Result<PassiveConfig, String> {
    let at = "passive";
    let defaults = PassiveConfig::default();
    let Some(dict) = policy_dict(value, at, &PASSIVE_KEYS)? else {
        return Ok(defaults);
    };
    Ok(PassiveConfig {
        failure_threshold: optional(dict, "failure_threshold", at)?
            .unwrap_or(defaults.failure_threshold),
        eject_secs: optional(dict, "eject_secs", at)?.unwrap_or(defaults.eject_secs),
    })
}

/// The keys a probe dict may have, as in the config.
const PROBE_KEYS: [&str; 7] = [
    "enabled",
    "interval_secs",
    "failure_threshold",
    "timeout_ms",
    "reply_codes",
    "success_threshold",
    "from",
];

/// Checks `add_group`'s arguments with the config's rules. The error names
/// the key, e.g. `destinations[1].address: ...`.
fn group_config(
    name: &str,
    destinations: &Bound<'_, PyAny>,
    algorithm: &str,
    probe: Option<&Bound<'_, PyAny>>,
    policies: GroupPolicies<'_, '_>,
) -> Result<GroupConfig, String> {
    let algorithm: Algorithm = algorithm
        .trim()
        .parse()
        .map_err(|e| format!("algorithm: {e}"))?;
    let list = destinations
        .cast::<PyList>()
        .map_err(|_| "destinations: must be a list of dicts".to_string())?;
    let mut unresolved = Vec::with_capacity(list.len());
    for (index, item) in list.iter().enumerate() {
        let at = format!("destinations[{index}]");
        unresolved.push(destination_config(&item, &at)?);
    }
    // A name may take a while to look up: other threads run Python meanwhile.
    let resolved = destinations.py().detach(|| {
        unresolved
            .into_iter()
            .map(Unresolved::resolve)
            .collect::<Result<Vec<_>, String>>()
    })?;
    let probe = match probe {
        None => ProbeConfig::default(),
        Some(value) if value.is_none() => ProbeConfig::default(),
        Some(value) => probe_config(value)?,
    };
    let config = GroupConfig {
        name: name.trim().to_string(),
        algorithm,
        probe,
        destinations: resolved,
        failover: failover_config(policies.failover)?,
        passive: passive_config(policies.passive)?,
        max_retry_after_secs: policies
            .max_retry_after_secs
            .unwrap_or(DEFAULT_MAX_RETRY_AFTER_SECS),
        strict_source: false,
        spill_threshold: policies.spill_threshold,
        hash_bound: policies.hash_bound,
    };
    config.check().map_err(|e| e.to_string())?;
    Ok(config)
}

/// A destination as the script gave it, before its address is looked up.
struct Unresolved {
    at: String,
    uri: String,
    address: Option<String>,
    weight: u32,
    attrs: BTreeMap<String, String>,
    transport: Option<String>,
    priority: i32,
    max_calls: Option<u32>,
    max_cps: Option<f64>,
}

impl Unresolved {
    fn resolve(self) -> Result<DestinationConfig, String> {
        DestinationConfig::resolve(&self.uri, self.address.as_deref(), self.weight, self.attrs)
            .and_then(|d| d.with_transport(self.transport.as_deref()))
            .and_then(|d| d.with_capacity(self.priority, self.max_calls, self.max_cps))
            .map_err(|e| format!("{}.{}: {}", self.at, e.key, e.message))
    }
}

fn destination_config(item: &Bound<'_, PyAny>, at: &str) -> Result<Unresolved, String> {
    let dict = item
        .cast::<PyDict>()
        .map_err(|_| format!("{at}: must be a dict with uri, address, weight, attrs"))?;
    check_keys(dict, at, &DESTINATION_KEYS)?;
    let uri: String = required(dict, "uri", at)?;
    let address: Option<String> = optional(dict, "address", at)?;
    let weight: u32 = optional(dict, "weight", at)?.unwrap_or(1);
    let transport: Option<String> = optional(dict, "transport", at)?;
    let priority: i32 = optional(dict, "priority", at)?.unwrap_or(0);
    let max_calls: Option<u32> = optional(dict, "max_calls", at)?;
    let max_cps: Option<f64> = optional(dict, "max_cps", at)?;
    let attrs = match dict
        .get_item("attrs")
        .map_err(|e| format!("{at}.attrs: {e}"))?
    {
        Some(value) if !value.is_none() => {
            attr_map(&value, &format!("{at}.attrs")).map_err(|e| e.to_string())?
        }
        _ => BTreeMap::new(),
    };
    Ok(Unresolved {
        at: at.to_string(),
        uri,
        address,
        weight,
        attrs,
        transport,
        priority,
        max_calls,
        max_cps,
    })
}

fn probe_config(value: &Bound<'_, PyAny>) -> Result<ProbeConfig, String> {
    let at = "probe";
    let dict = value
        .cast::<PyDict>()
        .map_err(|_| format!("{at}: must be a dict with {}", PROBE_KEYS.join(", ")))?;
    check_keys(dict, at, &PROBE_KEYS)?;
    let defaults = ProbeConfig::default();
    Ok(ProbeConfig {
        enabled: optional(dict, "enabled", at)?.unwrap_or(defaults.enabled),
        interval_secs: optional(dict, "interval_secs", at)?.unwrap_or(defaults.interval_secs),
        failure_threshold: optional(dict, "failure_threshold", at)?
            .unwrap_or(defaults.failure_threshold),
        timeout_ms: optional(dict, "timeout_ms", at)?,
        reply_codes: optional(dict, "reply_codes", at)?,
        success_threshold: optional(dict, "success_threshold", at)?
            .unwrap_or(defaults.success_threshold),
        from: optional(dict, "from", at)?,
    })
}

/// Rejects keys the config would reject, naming the first unknown one.
fn check_keys(dict: &Bound<'_, PyDict>, at: &str, known: &[&str]) -> Result<(), String> {
    for key in dict.keys() {
        let name = key.str().map(|s| s.to_string()).unwrap_or_default();
        if !known.contains(&name.as_str()) {
            return Err(format!(
                "{at}.{name}: unknown key, expected one of {}",
                known.join(", ")
            ));
        }
    }
    Ok(())
}

fn required<T>(dict: &Bound<'_, PyDict>, key: &str, at: &str) -> Result<T, String>
where
    T: for<'a, 'py> FromPyObject<'a, 'py>,
{
    optional(dict, key, at)?.ok_or_else(|| format!("{at}.{key}: missing"))
}

/// The value of `key`, None when absent or None; a wrong type names the key.
fn optional<T>(dict: &Bound<'_, PyDict>, key: &str, at: &str) -> Result<Option<T>, String>
where
    T: for<'a, 'py> FromPyObject<'a, 'py>,
{
    match dict.get_item(key) {
        Err(e) => Err(format!("{at}.{key}: {e}")),
        Ok(None) => Ok(None),
        Ok(Some(value)) if value.is_none() => Ok(None),
        Ok(Some(value)) => value
            .extract::<T>()
            .map(Some)
            .map_err(|_| format!("{at}.{key}: {}", expected_type::<T>())),
    }
}

fn expected_type<T>() -> &'static str {
    let name = std::any::type_name::<T>();
    if name.ends_with("String") {
        "must be a string"
    } else if name == "bool" {
        "must be True or False"
    } else {
        "must be a whole number of the right range (0 or more)"
    }
}

/// A string map from a dict whose values are strings, numbers or booleans
/// (converted as the YAML config converts them: `true`, `1`).
fn attr_map(value: &Bound<'_, PyAny>, at: &str) -> PyResult<BTreeMap<String, String>> {
    let dict = value
        .cast::<PyDict>()
        .map_err(|_| PyTypeError::new_err(format!("{at}: must be a dict of strings")))?;
    let mut map = BTreeMap::new();
    for (key, value) in dict.iter() {
        let key = key
            .cast::<PyString>()
            .map_err(|_| PyTypeError::new_err(format!("{at}: keys must be strings")))?
            .to_str()?
            .to_string();
        let text = if let Ok(flag) = value.cast::<PyBool>() {
            if flag.is_true() { "true" } else { "false" }.to_string()
        } else if let Ok(text) = value.cast::<PyString>() {
            text.to_str()?.to_string()
        } else if value.is_instance_of::<PyInt>() || value.is_instance_of::<PyFloat>() {
            value.str()?.to_string()
        } else {
            return Err(PyTypeError::new_err(format!(
                "{at}.{key}: must be a string, number or boolean"
            )));
        };
        map.insert(key, text);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    /// Evaluates a Python expression and hands the value to `check`.
    fn with_value<R>(expression: &str, check: impl FnOnce(&Bound<'_, PyAny>) -> R) -> R {
        Python::initialize();
        Python::attach(|py| {
            let code = CString::new(expression).expect("no NUL");
            let value = py.eval(&code, None, None).expect("valid expression");
            check(&value)
        })
    }

    fn config_of(destinations: &str, algorithm: &str, probe: &str) -> Result<GroupConfig, String> {
        with_value(&format!("({destinations}, {probe})"), |pair| {
            let destinations = pair.get_item(0).expect("destinations");
            let probe = pair.get_item(1).expect("probe");
            let policies = GroupPolicies {
                failover: None,
                passive: None,
                max_retry_after_secs: None,
                spill_threshold: 1,
                hash_bound: None,
            };
            group_config(" g ", &destinations, algorithm, Some(&probe), policies)
        })
    }

    #[test]
    fn destination_dicts_use_the_config_defaults_and_conversions() {
        let config = config_of(
            r#"[{"uri": "sip:a.example.com:5070", "address": "127.0.0.1:5071",
                 "attrs": {"region": "eu", "tier": 2, "edge": True}},
                {"uri": "sip:127.0.0.1:5072", "weight": 3}]"#,
            "round_robin",
            r#"{"enabled": True, "interval_secs": 2}"#,
        )
        .expect("valid");
        assert_eq!(config.name, "g");
        assert_eq!(config.algorithm, Algorithm::RoundRobin);
        let first = &config.destinations[0];
        assert_eq!(first.address.to_string(), "127.0.0.1:5071");
        assert_eq!(first.weight, 1);
        let attrs: Vec<(&str, &str)> = first
            .attrs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(attrs, [("edge", "true"), ("region", "eu"), ("tier", "2")]);
        // No address: the uri's host and port.
        assert_eq!(config.destinations[1].address.to_string(), "127.0.0.1:5072");
        assert_eq!(config.destinations[1].weight, 3);
        assert!(config.probe.enabled);
        assert_eq!(config.probe.interval_secs, 2);
        assert_eq!(config.probe.failure_threshold, 3);
        assert_eq!(config.probe.timeout_ms, None);
    }

    #[test]
    fn bad_arguments_name_the_key() {
        let one = r#"[{"uri": "sip:a.example.com", "address": "127.0.0.1:5060"}]"#;
        let cases = [
            (
                r#"[{"uri": 5}]"#,
                "weighted",
                "None",
                "destinations[0].uri: must be a string",
            ),
            (
                r#"[{"address": "127.0.0.1:1"}]"#,
                "weighted",
                "None",
                "destinations[0].uri: missing",
            ),
            (
                r#"[{"uri": "sip:a.example.com", "attrs": {"k": [1]}}]"#,
                "weighted",
                "None",
                "destinations[0].attrs.k",
            ),
            (
                r#"["sip:a.example.com"]"#,
                "weighted",
                "None",
                "destinations[0]: must be a dict",
            ),
            (
                r#"{"uri": "sip:a.example.com"}"#,
                "weighted",
                "None",
                "destinations: must be a list",
            ),
            (
                "[]",
                "weighted",
                "None",
                "destinations: a group needs at least one destination",
            ),
            (
                one,
                "fastest",
                "None",
                "algorithm: unknown algorithm \"fastest\"",
            ),
            (
                one,
                "hash",
                r#"{"failure_threshold": 0}"#,
                "probe.failure_threshold",
            ),
            (one, "hash", r#"{"timeout_ms": 0}"#, "probe.timeout_ms"),
            (
                one,
                "hash",
                r#"{"enabled": "yes"}"#,
                "probe.enabled: must be True or False",
            ),
            (one, "hash", "5", "probe: must be a dict"),
        ];
        for (destinations, algorithm, probe, expected) in cases {
            let error = config_of(destinations, algorithm, probe).expect_err(expected);
            assert!(error.contains(expected), "{error:?} lacks {expected:?}");
        }
    }

    #[test]
    fn select_list_and_marks_through_the_api() {
        let api = GatewayApi::new(crate::gateway::Unmanaged::new());
        let group = "script-gateway-unit";
        with_value(
            r#"[{"uri": "sip:one.example.com", "address": "127.0.0.1:6001", "attrs": {"zone": "a"}},
                {"uri": "sip:two.example.com", "address": "127.0.0.1:6002", "weight": 2}]"#,
            |destinations| {
                api.add_group(
                    group,
                    destinations.clone(),
                    "hash",
                    None,
                    None,
                    None,
                    None,
                    1,
                    None,
                )
            },
        )
        .expect("added");
        assert!(api.groups().contains(&group.to_string()));

        // The same key picks the same destination, as str or as bytes.
        let by_text = with_value("'sip:alice@example.com'", |key| {
            api.select(group, Some(key.clone()), None)
        })
        .expect("select")
        .expect("a destination");
        let by_bytes = with_value("b'sip:alice@example.com'", |key| {
            api.select(group, Some(key.clone()), None)
        })
        .expect("select")
        .expect("a destination");
        assert_eq!(by_text.uri, by_bytes.uri);
        assert!(by_text.__bool__());
        assert_eq!(by_text.__str__(), by_text.uri);
        assert_eq!(by_text.group, group);

        // attrs filter, then a hold on the only match.
        let zoned = with_value("{'zone': 'a'}", |attrs| {
            api.select(group, None, Some(attrs.clone()))
        })
        .expect("select")
        .expect("zone a exists");
        assert_eq!(zoned.uri, "sip:one.example.com");
        assert_eq!(zoned.address(), "127.0.0.1:6001");
        assert!(api.mark_down(group, "sip:one.example.com"));
        let none = with_value("{'zone': 'a'}", |attrs| {
            api.select(group, None, Some(attrs.clone()))
        })
        .expect("select");
        assert!(none.is_none());
        let listed = api.list(group);
        assert_eq!(listed.len(), 2);
        assert!(!listed[0].healthy && listed[1].healthy);
        assert_eq!(listed[1].weight, 2);
        assert!(listed[0].__repr__().contains("healthy=False"));
        assert!(api.mark_up(group, "sip:one.example.com"));
        assert!(api.list(group)[0].healthy);
        assert!(!api.mark_up(group, "sip:nobody.example.com"));

        // Unknown groups: None, empty, False.
        assert!(api
            .select("no-such-group", None, None)
            .expect("ok")
            .is_none());
        assert!(api.list("no-such-group").is_empty());
        assert!(!api.mark_down("no-such-group", "sip:one.example.com"));
        assert!(api.remove_group(group));
        assert!(!api.remove_group(group));
        assert!(!api.groups().contains(&group.to_string()));
    }
}
