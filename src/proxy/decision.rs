//! What the routing script decided for one request, as plain data. The
//! script layer fills it in; the engine carries it out.

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
}
