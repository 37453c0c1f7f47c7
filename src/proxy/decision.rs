//! What the routing script decided for one request, as plain data. The
//! script layer fills it in; the engine carries it out.

use std::sync::Arc;
use std::time::Duration;

use crate::proxy::forward::Hop;

/// What the script asked for. Only the first of relay/reply/fork counts.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Forward to `uri` as the next hop, else along the Route set / Request-URI.
    Relay { uri: Option<String> },
    /// Answer from here; `headers` are added to the response (registrar
    /// Contact list, Min-Expires...).
    Reply {
        code: u16,
        reason: Option<String>,
        headers: Vec<(String, String)>,
    },
    /// Parallel forking (RFC 3261 §16.7): one branch per target.
    Fork { targets: Vec<ForkTarget> },
}

/// One fork branch: the new Request-URI, reached through `path` (RFC 3327)
/// as a pre-loaded Route set when there is one.
#[derive(Debug, Clone, PartialEq)]
pub struct ForkTarget {
    pub uri: String,
    pub path: Vec<String>,
    /// A registered contact (from `registrar.lookup`): its address may be
    /// private or loopback (`security::relay`).
    pub vouched: bool,
}

/// The outcome of running the script on a request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decision {
    pub action: Option<Action>,
    /// True when the handler raised: the request gets a 500.
    pub failed: bool,
    pub record_route: bool,
    /// Header edits in the order made: `(name, Some(value))` sets, `None` removes.
    pub header_edits: Vec<(String, Option<String>)>,
    /// How many Route values are consumed from the top (the engine's own
    /// §16.4 removal included).
    pub routes_popped: usize,
    /// A new Request-URI (the engine's strict-route fix-up, or the script's).
    pub new_ruri: Option<String>,
    /// The relay goes to a gateway destination: the group's candidates for
    /// this request, for failover and passive health.
    pub gateway: Option<GatewayRelay>,
    /// The registrar lookups the run made, for their spans when the call
    /// is traced.
    pub registrar_lookups: Vec<crate::telemetry::LookupRecord>,
    /// `request.capture(on)`: whether the call's messages go to
    /// `capture.hep` from now on (None: as they were).
    pub capture: Option<bool>,
}

/// A relay to a destination of a gateway group (DESIGN.md §4.3): the
/// group's ranking for this request, best first. The first candidate is the
/// relay's target; the rest are the order to fail over in.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayRelay {
    pub group: Arc<str>,
    pub policy: Arc<FailoverPolicy>,
    pub candidates: Vec<RelayCandidate>,
}

/// One destination a gateway relay may use.
#[derive(Debug, Clone, PartialEq)]
pub struct RelayCandidate {
    pub uri: Arc<str>,
    pub hop: Hop,
    /// The destination had passive failures on record when it was ranked,
    /// so its group wants to hear of a success (otherwise successes are
    /// not reported: the common case costs no message).
    pub report_success: bool,
    /// The destination's call counters and limits: an INVITE takes a slot
    /// there when its branch opens (None: a place that is no destination).
    pub capacity: Option<Arc<crate::proxy::capacity::Capacity>>,
}

/// When a gateway relay moves on to the next candidate (per group config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverPolicy {
    pub enabled: bool,
    /// A branch with no response at all by then has failed.
    pub no_response: Duration,
    /// Final responses that fail over (and count as passive failures).
    pub on_codes: Vec<u16>,
    /// Branches per request at most, the first included.
    pub max_attempts: usize,
    /// Take UDP responses (and probe answers) only from the address the
    /// request went to (`strict_source`): off by default, since a backend
    /// behind a VIP or bound to every address answers from another one.
    pub strict_source: bool,
    /// Relay outcomes feed the destinations' passive health (not for the
    /// places RFC 3263 finds for a name, which belong to no group).
    pub passive_health: bool,
}

impl Default for FailoverPolicy {
    fn default() -> Self {
        FailoverPolicy {
            enabled: true,
            no_response: Duration::from_millis(1000),
            on_codes: vec![503],
            max_attempts: usize::MAX,
            strict_source: false,
            passive_health: true,
        }
    }
}

/// Why a branch to a gateway destination failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayFailure {
    /// No response at all within `no_response` (or only a 100 by Timer B).
    NoResponse,
    /// The request could not be sent (TCP connect refused or reset).
    Transport,
    /// A final response listed in `on_codes`.
    Status(u16),
}

impl RelayFailure {
    /// The `reason` label of `siphon_failovers_total`.
    pub fn label(self) -> &'static str {
        match self {
            RelayFailure::NoResponse => "timeout",
            RelayFailure::Transport => "transport",
            RelayFailure::Status(_) => "status",
        }
    }
}

impl std::fmt::Display for RelayFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RelayFailure::NoResponse => f.write_str("no response"),
            RelayFailure::Transport => f.write_str("transport error"),
            RelayFailure::Status(code) => write!(f, "status {code}"),
        }
    }
}

impl Decision {
    /// A decision that carries out nothing but a failure: the request gets a 500.
    pub fn failed() -> Self {
        Decision {
            failed: true,
            ..Decision::default()
        }
    }
}

/// What the engine did to the Route set before the script ran (RFC 3261
/// §16.4), so that the script sees the request as the core will forward it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preroute {
    /// The request carried a Route header field.
    pub had_routes: bool,
    /// Route values naming this proxy, removed from the top.
    pub routes_popped: usize,
    /// The Request-URI was a URI we Record-Routed (a strict router sent
    /// it): it is replaced by the last Route value, which is removed.
    pub strict_ruri: Option<String>,
    /// The address the dialog's caller sent its first request from, as
    /// our sealed Route proves: relays there are the dialog's own.
    pub dialog_caller: Option<std::net::IpAddr>,
}
