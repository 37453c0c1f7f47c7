//! Route handling of the core: §16.4 before the script runs, and §16.6 step
//! 7 (a strict router as next hop) when a request is forwarded.

use crate::proxy::decision::Preroute;
use crate::proxy::local::LocalIdentity;
use crate::sip::parse::is_valid_request_uri;
use crate::sip::{HeaderName, Message, NameAddr, Uri};

/// A URI this proxy wrote into a Record-Route: no user part, one of our
/// host:port pairs, and `lr` (ours always carry it).
pub fn is_our_record_route(uri: &str, local: &LocalIdentity) -> bool {
    Uri::parse(uri)
        .is_ok_and(|u| u.user.is_none() && local.is_local(u.host, u.port) && u.has_param("lr"))
}

/// A core refusal of a request before any routing (§16.3 steps 3, 4 and 5):
/// the status, its reason and, for 420, the `Unsupported` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: u16,
    pub reason: &'static str,
    pub unsupported: Option<String>,
}

/// §16.3's checks of a request that is not an ACK: a Request-URI scheme we
/// cannot route (416; `tel:` is left to the script, which may send it to a
/// gateway), Max-Forwards 0 (483), a loop (482, `looping` is asked only
/// when needed), a Proxy-Require (420: this proxy supports no extension a
/// proxy must know).
pub fn refusal(msg: &Message, looping: impl FnOnce() -> bool) -> Option<Refusal> {
    let refuse = |code, reason, unsupported| {
        Some(Refusal {
            code,
            reason,
            unsupported,
        })
    };
    let scheme = msg
        .request_uri()
        .and_then(|uri| uri.split_once(':'))
        .map_or("", |(scheme, _)| scheme);
    if !["sip", "sips", "tel"]
        .iter()
        .any(|known| scheme.eq_ignore_ascii_case(known))
    {
        return refuse(416, "Unsupported URI Scheme", None);
    }
    if msg.max_forwards() == Some(0) {
        return refuse(483, "Too Many Hops", None);
    }
    if looping() {
        return refuse(482, "Loop Detected", None);
    }
    if msg.header(HeaderName::ProxyRequire).is_some()
        && msg.method() != Some(crate::sip::Method::Cancel)
    {
        let list: Vec<&str> = msg.header_values(HeaderName::ProxyRequire).collect();
        return refuse(420, "Bad Extension", Some(list.join(", ")));
    }
    None
}

fn value_uri(value: &str) -> Option<&str> {
    NameAddr::parse(value).ok().map(|addr| addr.uri)
}

/// §16.4 route information preprocessing: when the Request-URI is a URI we
/// Record-Routed (a strict router put it there), the last Route value
/// becomes the Request-URI and leaves the set; then the Route values at the
/// top that name this proxy are removed.
pub fn preroute(msg: &Message, local: &LocalIdentity) -> Preroute {
    if msg.header(HeaderName::Route).is_none() {
        return Preroute::default();
    }
    // One walk over the set: its length, its last value, and how many
    // values at the top name this proxy.
    let (mut count, mut ours_at_top, mut last) = (0, 0, None);
    for value in msg.header_values(HeaderName::Route) {
        if ours_at_top == count && value_uri(value).is_some_and(|uri| local.is_local_uri(uri)) {
            ours_at_top += 1;
        }
        count += 1;
        last = Some(value);
    }
    let strict_ruri = msg
        .request_uri()
        .filter(|ruri| is_our_record_route(ruri, local))
        .and(last)
        .and_then(value_uri)
        // Only a valid URI can become the Request-URI: a garbled last
        // value leaves the request as it came.
        .filter(|uri| is_valid_request_uri(uri))
        .map(str::to_string);
    // The value moved into the Request-URI is not popped from the top.
    let routes_popped = ours_at_top.min(count - usize::from(strict_ruri.is_some()));
    Preroute {
        had_routes: true,
        routes_popped,
        strict_ruri,
        dialog_caller: None,
    }
}

/// The first Route value left after `popped` from the top and `dropped` from
/// the bottom are removed.
pub fn first_remaining_route(msg: &Message, popped: usize, dropped: usize) -> Option<String> {
    msg.header(HeaderName::Route)?;
    let mut values = msg.header_values(HeaderName::Route).skip(popped);
    let first = values.next()?;
    // The first left must not be one of the `dropped` at the bottom.
    if values.count() < dropped {
        return None;
    }
    value_uri(first).map(str::to_string)
}

/// Where a relay goes, as §16.6 steps 6 and 7 decide it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayTarget {
    /// The next hop's URI.
    pub target: String,
    /// A Route value is left after the popped ones.
    pub first_remaining: bool,
    pub routes_popped: usize,
    pub new_ruri: Option<String>,
    /// Appended to the Route set (our Request-URI, for a strict router).
    pub append_route: Option<String>,
}

/// The next hop of a relay: `uri` when the script named one, else the
/// first Route left (a strict router gets its URI as the Request-URI, and
/// ours goes to the bottom of the Route set: §16.6 step 7), else the
/// Request-URI. `dropped` Route values at the bottom are not used.
pub fn relay_target(
    msg: &Message,
    decision: &crate::proxy::decision::Decision,
    uri: Option<&str>,
    dropped: usize,
) -> RelayTarget {
    let first_route = first_remaining_route(msg, decision.routes_popped, dropped);
    let first_remaining = first_route.is_some();
    let ruri = decision
        .new_ruri
        .clone()
        .or_else(|| msg.request_uri().map(str::to_string))
        .unwrap_or_default();
    let mut routes_popped = decision.routes_popped;
    let mut new_ruri = decision.new_ruri.clone();
    let mut append_route = None;
    let target = match (uri, first_route) {
        (Some(uri), _) => uri.to_string(),
        (None, Some(route)) if is_strict_router(&route) => {
            routes_popped += 1;
            new_ruri = Some(route.clone());
            append_route = Some(format!("<{ruri}>"));
            route
        }
        (None, Some(route)) => route,
        (None, None) => ruri,
    };
    RelayTarget {
        target,
        first_remaining,
        routes_popped,
        new_ruri,
        append_route,
    }
}

/// True when the next hop named by a Route URI is a strict router: its URI
/// has no `lr` (§16.6 step 7).
pub fn is_strict_router(route_uri: &str) -> bool {
    is_valid_request_uri(route_uri) && Uri::parse(route_uri).is_ok_and(|u| !u.has_param("lr"))
}
