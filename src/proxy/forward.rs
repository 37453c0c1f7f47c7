//! Forwarding a request (RFC 3261 §16.6) and a response (§16.7 step 9).

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use crate::proxy::dns::{sip_lookup_key, Cached, HostCache, SipTarget};

use crate::sip::{self, split_values, HeaderName, Message, NameAddr, Protocol, Rewriter, Uri, Via};

/// Where a request goes next. Over TLS, `tls_name` is the name the peer's
/// certificate must carry (the URI's host; an address is checked against
/// the certificate's IP addresses). Two hops are the same when they reach
/// the same address over the same protocol, whatever the name.
#[derive(Clone, Debug)]
pub struct Hop {
    pub addr: SocketAddr,
    pub protocol: Protocol,
    pub tls_name: Option<std::sync::Arc<str>>,
    /// Over the connection the peer opened to us, named by a flow token:
    /// never dialled, and the only way to a WebSocket peer.
    pub flow: bool,
}

impl Hop {
    pub fn new(addr: SocketAddr, protocol: Protocol) -> Self {
        Hop {
            addr,
            protocol,
            tls_name: None,
            flow: false,
        }
    }

    /// The connection `addr` opened to us over `protocol`.
    pub fn flow(addr: SocketAddr, protocol: Protocol) -> Self {
        Hop {
            flow: true,
            ..Hop::new(addr, protocol)
        }
    }

    /// A hop to `host` (a URI's host): over TLS the host is the name to
    /// verify, unless it is an address.
    pub fn to_host(addr: SocketAddr, protocol: Protocol, host: &str) -> Self {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let named = protocol == Protocol::Tls && bare.parse::<IpAddr>().is_err();
        Hop {
            tls_name: named.then(|| std::sync::Arc::from(bare.to_ascii_lowercase())),
            ..Hop::new(addr, protocol)
        }
    }
}

impl PartialEq for Hop {
    fn eq(&self, other: &Self) -> bool {
        self.addr == other.addr && self.protocol == other.protocol
    }
}

impl Eq for Hop {}

#[derive(Debug, PartialEq, Eq)]
pub enum HopError {
    /// The URI does not parse or uses a scheme/transport we cannot reach.
    Unsupported(String),
    /// The host did not resolve.
    Unresolvable(String),
    /// The host is not in the cache: the decision waits for a lookup.
    Lookup(String),
    /// `security.relay_to` refuses the address (see `security::relay`);
    /// the hop is kept for a target someone vouched for.
    Refused(Hop, crate::security::RelayRefusal),
}

impl std::fmt::Display for HopError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HopError::Unsupported(why) | HopError::Unresolvable(why) => f.write_str(why),
            HopError::Lookup(host) => write!(f, "{host} is being looked up"),
            HopError::Refused(hop, why) => {
                write!(f, "relay to {} refused: {}", hop.addr, why.as_str())
            }
        }
    }
}

/// The transport a URI asks for: `;transport=` (udp, tcp, tls), TLS for a
/// `sips:` URI whatever its parameter (RFC 5630), else UDP. An error names
/// what cannot be reached.
pub fn uri_protocol(uri: &Uri) -> Result<Protocol, String> {
    let secure = uri.scheme.eq_ignore_ascii_case("sips");
    if !secure && !uri.scheme.eq_ignore_ascii_case("sip") {
        return Err("only sip: and sips: URIs are routed".to_string());
    }
    match uri.param("transport").flatten() {
        _ if secure => Ok(Protocol::Tls),
        None => Ok(Protocol::Udp),
        Some(t) => match Protocol::from_token(t) {
            Some(protocol) => Ok(protocol),
            None => Err(format!("transport {t} is not supported")),
        },
    }
}

/// The next hop for a URI: the first of [`next_hops`].
pub fn next_hop(
    uri: &str,
    now: Instant,
    hosts: &HostCache,
    known: impl Fn(&str) -> Option<SocketAddr>,
) -> Result<Hop, HopError> {
    Ok(match places(uri, now, hosts, known)? {
        Places::One(hop) => hop,
        Places::Many(mut hops) => hops.swap_remove(0),
    })
}

/// Where a URI's requests go: one place (the common case, with no
/// allocation), or several in order.
pub enum Places {
    One(Hop),
    Many(Vec<Hop>),
}

/// Every place of [`places`], in order.
pub fn next_hops(
    uri: &str,
    now: Instant,
    hosts: &HostCache,
    known: impl Fn(&str) -> Option<SocketAddr>,
) -> Result<Vec<Hop>, HopError> {
    Ok(match places(uri, now, hosts, known)? {
        Places::One(hop) => vec![hop],
        Places::Many(hops) => hops,
    })
}

/// Where a URI's requests go, in the order to try (never empty):
/// - a gateway destination's fixed address (`known`), or an IP address, or
///   a name with a port: that one place, `;transport=` (or `sips:`)
///   choosing the protocol;
/// - a name without a port: RFC 3263, the targets its NAPTR and SRV
///   records give (those of the URI's transport, when it names one), or,
///   without any, the name's own address.
///
/// A name `hosts` does not hold yet is a [`HopError::Lookup`] of the key
/// to look up.
pub fn places(
    uri: &str,
    now: Instant,
    hosts: &HostCache,
    known: impl Fn(&str) -> Option<SocketAddr>,
) -> Result<Places, HopError> {
    let parsed =
        Uri::parse(uri).map_err(|e| HopError::Unsupported(format!("bad uri {uri}: {e}")))?;
    let protocol = uri_protocol(&parsed)
        .map_err(|why| HopError::Unsupported(format!("cannot reach {uri}: {why}")))?;
    if protocol.is_websocket() {
        // By address it could be anybody's socket: only a flow token,
        // which we signed, names one.
        return Err(HopError::Unsupported(format!(
            "cannot reach {uri}: a WebSocket client is reached through the flow token of our Record-Route"
        )));
    }
    if let Some(addr) = known(uri) {
        return Ok(Places::One(Hop::to_host(addr, protocol, parsed.host)));
    }
    let port = parsed.port.unwrap_or(protocol.default_port());
    let bare = parsed.host.trim_start_matches('[').trim_end_matches(']');
    let is_name = bare.parse::<IpAddr>().is_err();
    if is_name && parsed.port.is_none() {
        let secure = parsed.scheme.eq_ignore_ascii_case("sips");
        let pinned = parsed.param("transport").is_some();
        match hosts.get(now, &sip_lookup_key(bare)) {
            Cached::Missing => return Err(HopError::Lookup(sip_lookup_key(bare))),
            Cached::Targets(targets) => {
                let wanted = |t: &&SipTarget| match (secure, pinned) {
                    (true, _) => t.protocol == Protocol::Tls,
                    (false, true) => t.protocol == protocol,
                    (false, false) => true,
                };
                let mut hops: Vec<Hop> = targets
                    .iter()
                    .filter(wanted)
                    .map(|t| Hop::to_host(t.addr, t.protocol, bare))
                    .collect();
                match hops.len() {
                    0 => {}
                    1 => return Ok(Places::One(hops.swap_remove(0))),
                    _ => return Ok(Places::Many(hops)),
                }
            }
            // No SRV for it: the name's own address (§4.2).
            Cached::Failed | Cached::Addr(_) => {}
        }
    }
    let ip = match bare.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) => match hosts.get(now, bare) {
            Cached::Addr(ip) => ip,
            Cached::Failed | Cached::Targets(_) => {
                return Err(HopError::Unresolvable(format!("cannot resolve {bare}")))
            }
            Cached::Missing => return Err(HopError::Lookup(bare.to_string())),
        },
    };
    Ok(Places::One(Hop::to_host(
        SocketAddr::new(ip, port),
        protocol,
        bare,
    )))
}

/// A hash of what identifies a request for loop detection (RFC 3261 §16.3
/// step 4, §16.6 step 8): the same request arriving again with the same
/// Request-URI and Route set gives the same value; a spiral (a new
/// Request-URI, or an in-dialog request whose route passes this proxy
/// twice, with fewer Route values the second time) does not.
pub fn loop_hash(msg: &Message) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::with_seed(0x5195_0e5a);
    h.update(msg.request_uri().unwrap_or("").as_bytes());
    h.update(b"\0");
    h.update(msg.from_tag().unwrap_or("").as_bytes());
    h.update(b"\0");
    h.update(msg.to_tag().unwrap_or("").as_bytes());
    h.update(b"\0");
    h.update(msg.call_id().unwrap_or("").as_bytes());
    h.update(b"\0");
    if let Some((number, _)) = msg.cseq() {
        h.update(&number.to_le_bytes());
    }
    for header in msg.headers().iter().filter(|h| h.name == HeaderName::Route) {
        h.update(b"\0");
        h.update(header.value(msg).as_bytes());
    }
    h.digest()
}

/// The loop hash in one of our branches, `z9hG4bK<16 hex digits>.<tail>`.
pub fn branch_loop_hash(branch: &str) -> Option<u64> {
    let hex = branch.strip_prefix("z9hG4bK")?.get(..16)?;
    if branch.as_bytes().get(7 + 16) != Some(&b'.') {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// True when one of the request's Vias is ours and carries this request's loop
/// hash: the request came back unchanged, a loop (482).
pub fn is_looping(msg: &Message, loop_hash: u64, is_ours: impl Fn(&Via) -> bool) -> bool {
    msg.header_values(HeaderName::Via)
        .filter_map(|value| Via::parse(value).ok())
        .any(|via| is_ours(&via) && via.branch().and_then(branch_loop_hash) == Some(loop_hash))
}

/// What the script decided, reduced to what changes the forwarded copy.
pub struct ForwardEdits<'a> {
    pub new_ruri: Option<&'a str>,
    /// Route values removed from the top of the set.
    pub routes_popped: usize,
    /// Route values removed from the bottom of the set (the value a strict
    /// router's fix-up moved into the Request-URI, RFC 3261 §16.4).
    pub routes_dropped: usize,
    /// A value added below the Route set: the Request-URI, when the next
    /// hop is a strict router (§16.6 step 7).
    pub append_route: Option<&'a str>,
    pub header_edits: &'a [(String, Option<String>)],
    pub record_route: Option<&'a str>,
    /// Our Path entry, for a REGISTER (RFC 3327).
    pub path: Option<&'a str>,
    /// Routes to put on top of the Route set (a fork target's Path).
    pub push_routes: &'a [String],
    /// Max-Breadth to write, replacing the request's (RFC 5393; forks only).
    pub max_breadth: Option<u32>,
    pub via: &'a str,
    /// `received`/`rport` to stamp on the previous hop's Via (RFC 3581).
    pub source: SocketAddr,
    /// A W3C `traceparent` replacing the request's (the call is traced).
    pub traceparent: Option<&'a str>,
}

/// Whether a header of option tags (Supported, Require) lists `tag`.
fn lists_option(msg: &Message, name: HeaderName, tag: &str) -> bool {
    msg.header_values(name)
        .flat_map(|value| value.split(','))
        .any(|option| option.trim().eq_ignore_ascii_case(tag))
}

/// Builds the forwarded request: our Via on top, Max-Forwards decremented,
/// consumed Routes removed, the script's header edits, and Record-Route.
pub fn forward_request(msg: &Message, edits: &ForwardEdits<'_>) -> Vec<u8> {
    let mut rw = Rewriter::new(msg);
    if let Some(ruri) = edits.new_ruri {
        rw.set_request_uri(ruri);
    }
    let mut max_forwards_seen = false;
    // Route values are numbered across every Route line; those outside
    // `keep_routes` go.
    let route_values = if edits.routes_popped + edits.routes_dropped > 0 {
        msg.header_values(HeaderName::Route).count()
    } else {
        0
    };
    let keep_routes = edits.routes_popped
        ..route_values
            .saturating_sub(edits.routes_dropped)
            .max(edits.routes_popped);
    let mut route_index = 0;
    let mut first_via = true;
    for (index, header) in msg.headers().iter().enumerate() {
        match header.name {
            HeaderName::MaxForwards if !max_forwards_seen => {
                max_forwards_seen = true;
                let n = msg.max_forwards().unwrap_or(70);
                rw.replace_header(index, itoa::Buffer::new().format(n.saturating_sub(1)));
            }
            HeaderName::Route if keep_routes.start > 0 || keep_routes.end < route_values => {
                let values: Vec<&str> = split_values(header.value(msg)).collect();
                let here = route_index..route_index + values.len();
                route_index = here.end;
                let kept: Vec<&str> = values
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| keep_routes.contains(&(here.start + i)))
                    .map(|(_, value)| *value)
                    .collect();
                if kept.is_empty() {
                    rw.remove_header(index);
                } else if kept.len() < values.len() {
                    rw.replace_header(index, &kept.join(", "));
                }
            }
            HeaderName::Via if first_via => {
                first_via = false;
                if let Some(stamped) = stamp_via(header.value(msg), edits.source) {
                    rw.replace_header(index, &stamped);
                }
            }
            _ => {}
        }
        if edits.max_breadth.is_some() && header.name_str(msg).eq_ignore_ascii_case("Max-Breadth") {
            rw.remove_header(index);
        }
        if edits.traceparent.is_some() && header.name_str(msg).eq_ignore_ascii_case("traceparent") {
            rw.remove_header(index);
        }
        if !edits.header_edits.is_empty()
            && edits
                .header_edits
                .iter()
                .any(|(name, _)| sip::message::same_header(name, header.name, header.name_str(msg)))
        {
            rw.remove_header(index);
        }
    }
    // A traced request's branch names its own span: the script's
    // traceparent, if it set one, gives way.
    let ours = |name: &str| edits.traceparent.is_some() && name.eq_ignore_ascii_case("traceparent");
    if !max_forwards_seen {
        rw.append_header("Max-Forwards", "70");
    }
    if let Some(breadth) = edits.max_breadth {
        rw.append_header("Max-Breadth", itoa::Buffer::new().format(breadth));
    }
    // Only the last edit of each name is kept: set after remove wins and vice versa.
    for (i, (name, value)) in edits.header_edits.iter().enumerate() {
        let later = edits.header_edits[i + 1..]
            .iter()
            .any(|(other, _)| other.eq_ignore_ascii_case(name));
        if let (Some(value), false, false) = (value, later, ours(name)) {
            rw.append_header(name, value);
        }
    }
    if let Some(traceparent) = edits.traceparent {
        rw.append_header("traceparent", traceparent);
    }
    for route in edits.push_routes.iter().rev() {
        rw.push_top_header("Route", route);
    }
    if let Some(route) = edits.append_route {
        rw.append_header("Route", route);
    }
    if let Some(record_route) = edits.record_route {
        rw.push_top_header("Record-Route", record_route);
    }
    if let Some(path) = edits.path {
        rw.push_top_header("Path", path);
        // RFC 3327 §5.2: the client is reached only through us, so the
        // registrar must keep the Path (`Require`). A phone that does not
        // say it supports Path gets it said for it, as Kamailio's path
        // module advises, so that a registrar that insists on
        // `Supported: path` (Kamailio's `path_mode` 2) keeps it rather than
        // answering 420; the phone itself never sees Path.
        if !lists_option(msg, HeaderName::Supported, "path") {
            rw.append_header("Supported", "path");
        }
        if !lists_option(msg, HeaderName::Require, "path") {
            rw.append_header("Require", "path");
        }
    }
    rw.push_top_header("Via", edits.via);
    rw.finish()
}

/// Adds `received` when the sent-by host is not the packet's source address,
/// and fills in an empty `rport` (RFC 3261 §18.2.1, RFC 3581 §4). A
/// `received` the sender wrote itself is replaced when it is not the real
/// source: responses follow it, so it must not be the sender's to choose.
/// Only the first value of a comma-joined line changes.
pub fn stamp_via(line: &str, source: SocketAddr) -> Option<String> {
    let mut values = split_values(line);
    let first = values.next()?;
    let via = Via::parse(first).ok()?;
    let is_source = |host: &str| {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        bare.parse::<IpAddr>().is_ok_and(|ip| ip == source.ip())
    };
    let sent_from_host = is_source(via.host);
    // One walk over the parameters for `received` and `rport` as written
    // (this runs for every request forwarded and every response made here).
    let (mut received, mut rport) = (None, None);
    for param in via.params.split(';').skip(1) {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim())),
            None => (param.trim(), None),
        };
        if name.eq_ignore_ascii_case("received") {
            received = Some(value.unwrap_or(""));
        } else if name.eq_ignore_ascii_case("rport") {
            rport = Some(value);
        }
    }
    let received_wrong = received.is_some_and(|r| !is_source(r));
    // RFC 3581 §4: with rport, received is added even when it equals sent-by.
    let needs_received =
        (received.is_none() && (!sent_from_host || rport.is_some())) || received_wrong;
    let empty_rport = rport == Some(None);
    if !needs_received && !empty_rport {
        return None;
    }
    let mut stamped = String::with_capacity(first.len() + 40);
    let head_len = first.len() - via.params.len();
    stamped.push_str(first[..head_len].trim_end());
    for param in via.params.split(';').skip(1) {
        let trimmed = param.trim();
        let name = trimmed.split('=').next().unwrap_or("").trim();
        if name.eq_ignore_ascii_case("rport") && empty_rport {
            stamped.push_str(";rport=");
            stamped.push_str(itoa::Buffer::new().format(source.port()));
        } else if !(received_wrong && name.eq_ignore_ascii_case("received")) {
            stamped.push(';');
            stamped.push_str(trimmed);
        }
    }
    if needs_received {
        use std::fmt::Write as _;
        let _ = write!(stamped, ";received={}", source.ip());
    }
    for rest in values {
        stamped.push_str(", ");
        stamped.push_str(rest);
    }
    Some(stamped)
}

/// The request's first Via line as a response to it carries it: stamped
/// with `received`/`rport` (None when it needs no change).
pub fn stamped_top_via(msg: &Message, source: SocketAddr) -> Option<String> {
    let first = msg.headers().iter().find(|h| h.name == HeaderName::Via)?;
    stamp_via(first.value(msg), source)
}

/// Where a response goes when no transaction holds the upstream address
/// (RFC 3261 §18.2.2 with RFC 3581): `received` and `rport` win over sent-by.
pub fn response_destination(via: &Via<'_>) -> Option<SocketAddr> {
    let host = via.received().unwrap_or(via.host);
    let port = match via.rport() {
        Some(Some(port)) => port,
        _ => via.port.unwrap_or(5060),
    };
    let ip: IpAddr = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    Some(SocketAddr::new(ip, port))
}

/// The address a response to this request goes back to, given the packet's
/// source: the source IP always, and the source port when the top Via asked
/// for `rport` (or when it names no port we could use).
pub fn reply_address(msg: &Message, source: SocketAddr) -> SocketAddr {
    match msg.top_via() {
        Some(via) if via.rport().is_none() => {
            SocketAddr::new(source.ip(), via.port.unwrap_or(5060))
        }
        _ => source,
    }
}

/// The response with our top Via removed, ready to go upstream.
pub fn strip_top_via(msg: &Message) -> Vec<u8> {
    let mut rw = Rewriter::new(msg);
    if let Some(index) = msg.headers().iter().position(|h| h.name == HeaderName::Via) {
        rw.remove_first_value(index);
    }
    rw.finish()
}

/// The first Route value's URI after `skip` consumed values.
pub fn route_uri(msg: &Message, skip: usize) -> Option<String> {
    msg.header_values(HeaderName::Route)
        .nth(skip)
        .and_then(|value| NameAddr::parse(value).ok())
        .map(|addr| addr.uri.to_string())
}

/// A Record-Route or Via host:port text for a local address.
pub fn host_port(host: &str, port: u16) -> String {
    format!("{host}:{port}")
}

/// True if the message's top Via is one we put there.
pub fn top_via_is_ours(msg: &Message, is_ours: impl Fn(&Via) -> bool) -> bool {
    msg.top_via().is_some_and(|via| is_ours(&via))
}

/// A request whose body we never touch still needs a valid message: used by
/// tests to confirm forwarding keeps it parseable.
pub fn reparse(bytes: Vec<u8>) -> Result<Message, sip::ParseError> {
    sip::parse(bytes::Bytes::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Message {
        sip::parse(bytes::Bytes::from(text.replace('\n', "\r\n"))).expect("test message parses")
    }

    const INVITE: &str = "INVITE sip:bob@127.0.0.1:5070 SIP/2.0\n\
Via: SIP/2.0/UDP 10.0.0.9:5061;branch=z9hG4bK-1;rport\n\
Max-Forwards: 70\n\
Route: <sip:127.0.0.1:5060;lr>, <sip:10.1.1.1;lr>\n\
From: <sip:alice@a.example>;tag=a1\n\
To: <sip:bob@b.example>\n\
Call-ID: c1@a\n\
CSeq: 1 INVITE\n\
X-Custom: keep me\n\
Content-Length: 4\n\
\n\
body";

    #[test]
    fn forwarded_invite_has_our_via_rr_decremented_mf_and_one_route_left() {
        let msg = parse(INVITE);
        let edits = vec![("X-Added".to_string(), Some("yes".to_string()))];
        let out = forward_request(
            &msg,
            &ForwardEdits {
                new_ruri: None,
                routes_popped: 1,
                header_edits: &edits,
                record_route: Some("<sip:127.0.0.1:5060;lr>"),
                path: None,
                push_routes: &[],
                routes_dropped: 0,
                append_route: None,
                max_breadth: None,
                via: "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKabc.1;rport",
                source: "10.0.0.9:5061".parse().unwrap(),
                traceparent: None,
            },
        );
        let fwd = reparse(out).expect("forwarded request parses");
        let vias: Vec<&str> = fwd.header_values(HeaderName::Via).collect();
        assert_eq!(vias.len(), 2);
        assert!(vias[0].contains("z9hG4bKabc.1"));
        assert!(vias[1].contains("rport=5061"), "{}", vias[1]);
        assert_eq!(fwd.max_forwards(), Some(69));
        let routes: Vec<&str> = fwd.header_values(HeaderName::Route).collect();
        assert_eq!(routes, vec!["<sip:10.1.1.1;lr>"]);
        assert_eq!(
            fwd.header(HeaderName::RecordRoute),
            Some("<sip:127.0.0.1:5060;lr>")
        );
        assert_eq!(fwd.header_named("X-Custom"), Some("keep me"));
        assert_eq!(fwd.header_named("X-Added"), Some("yes"));
        assert_eq!(fwd.body(), b"body");
    }

    #[test]
    fn header_edits_remove_and_replace() {
        let msg = parse(INVITE);
        let edits = vec![
            ("x-custom".to_string(), None),
            ("Subject".to_string(), Some("hi".to_string())),
        ];
        let out = forward_request(
            &msg,
            &ForwardEdits {
                new_ruri: Some("sip:carol@10.2.2.2"),
                routes_popped: 0,
                header_edits: &edits,
                record_route: None,
                path: None,
                push_routes: &["<sip:edge.example;lr>".to_string()],
                routes_dropped: 0,
                append_route: None,
                max_breadth: None,
                via: "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKabc.2",
                source: "10.0.0.9:5061".parse().unwrap(),
                traceparent: None,
            },
        );
        let fwd = reparse(out).unwrap();
        assert_eq!(fwd.header_named("X-Custom"), None);
        assert_eq!(fwd.header(HeaderName::Subject), Some("hi"));
        assert_eq!(fwd.request_uri(), Some("sip:carol@10.2.2.2"));
        let routes: Vec<&str> = fwd.header_values(HeaderName::Route).collect();
        assert_eq!(routes[0], "<sip:edge.example;lr>");
        assert_eq!(routes.len(), 3);
    }

    #[test]
    fn ipv6_sources_are_stamped_and_followed_back() {
        let source: SocketAddr = "[2001:db8:1::10]:40000".parse().unwrap();
        let stamped = stamp_via(
            "SIP/2.0/UDP [2001:db8:1::10]:5060;branch=z9hG4bK1;rport",
            source,
        )
        .expect("rport is filled in");
        assert_eq!(
            stamped,
            "SIP/2.0/UDP [2001:db8:1::10]:5060;branch=z9hG4bK1;rport=40000;received=2001:db8:1::10"
        );
        let via = Via::parse(&stamped).expect("parses");
        assert_eq!(response_destination(&via), Some(source));
        // Behind NAT: the sent-by is another address.
        let natted = stamp_via("SIP/2.0/UDP [2001:db8:9::1]:5060;branch=z9hG4bK2", source)
            .expect("received added");
        assert!(natted.ends_with(";received=2001:db8:1::10"), "{natted}");
    }

    #[test]
    fn a_received_the_sender_wrote_is_replaced_by_the_real_source() {
        let source = "10.0.0.9:5061".parse().unwrap();
        assert_eq!(
            stamp_via(
                "SIP/2.0/UDP host.example:5061;received=203.0.113.66;branch=z9hG4bK1;rport",
                source,
            )
            .as_deref(),
            Some("SIP/2.0/UDP host.example:5061;branch=z9hG4bK1;rport=5061;received=10.0.0.9")
        );
        // The same address is kept as it is.
        assert_eq!(
            stamp_via(
                "SIP/2.0/UDP host.example:5061;received=10.0.0.9;branch=z9hG4bK1",
                source
            ),
            None
        );
    }

    #[test]
    fn received_is_added_when_sent_by_differs_from_source() {
        let stamped = stamp_via(
            "SIP/2.0/UDP host.example:5061;branch=z9hG4bK1",
            "10.0.0.9:5061".parse().unwrap(),
        );
        assert_eq!(
            stamped.as_deref(),
            Some("SIP/2.0/UDP host.example:5061;branch=z9hG4bK1;received=10.0.0.9")
        );
        assert_eq!(
            stamp_via(
                "SIP/2.0/UDP 10.0.0.9:5061;branch=z9hG4bK1",
                "10.0.0.9:5061".parse().unwrap()
            ),
            None
        );
    }

    #[test]
    fn loop_hash_round_trips_through_our_branch_format() {
        let branch = format!("z9hG4bK{:016x}.{:x}", 0xfeed_u64, 42);
        assert_eq!(branch_loop_hash(&branch), Some(0xfeed));
        assert_eq!(branch_loop_hash("z9hG4bK-sipp-1-2"), None);
        assert_eq!(branch_loop_hash("z9hG4bK"), None);
    }

    #[test]
    fn loop_hash_is_stable_for_the_same_request_and_changes_with_the_ruri() {
        let a = parse(INVITE);
        let b = parse(&INVITE.replace("sip:bob@127.0.0.1:5070", "sip:bob@127.0.0.1:5071"));
        assert_eq!(loop_hash(&a), loop_hash(&parse(INVITE)));
        assert_ne!(loop_hash(&a), loop_hash(&b));
    }

    #[test]
    fn next_hop_uses_port_and_transport_param() {
        let hosts = HostCache::new(16, 4, std::time::Duration::from_secs(30));
        let now = Instant::now();
        assert_eq!(
            next_hop("sip:bob@127.0.0.1:5070;transport=tcp", now, &hosts, |_| {
                None
            }),
            Ok(Hop::new("127.0.0.1:5070".parse().unwrap(), Protocol::Tcp))
        );
        assert_eq!(
            next_hop("sip:127.0.0.1", now, &hosts, |_| None).map(|h| h.addr.port()),
            Ok(5060)
        );
        assert_eq!(
            next_hop("sip:[2001:db8::5]:5070", now, &hosts, |_| None).map(|h| h.addr),
            Ok("[2001:db8::5]:5070".parse().unwrap())
        );
        assert!(matches!(
            next_hop("tel:+123", now, &hosts, |_| None),
            Err(HopError::Unsupported(_))
        ));
        assert!(matches!(
            next_hop("sip:127.0.0.1;transport=sctp", now, &hosts, |_| None),
            Err(HopError::Unsupported(_))
        ));
        // A WebSocket client by address could be anybody's socket.
        assert!(matches!(
            next_hop("sip:bob@192.0.2.10:50123;transport=ws", now, &hosts, |_| {
                None
            }),
            Err(HopError::Unsupported(_))
        ));
    }

    #[test]
    fn sips_and_transport_tls_go_over_tls_to_5061_and_name_the_host_to_verify() {
        let mut hosts = HostCache::new(16, 4, std::time::Duration::from_secs(30));
        let now = Instant::now();
        let ip = "192.0.2.20".parse().unwrap();
        hosts.complete(
            now,
            "trunk.example",
            crate::proxy::dns::Answer::Found(ip, std::time::Duration::from_secs(60)),
        );
        // It publishes no SRV (RFC 3263 §4.2: then its own address).
        let no_srv =
            crate::proxy::dns::Answer::FoundTargets(Vec::new(), std::time::Duration::from_secs(60));
        hosts.complete(now, "sip:trunk.example", no_srv);
        for uri in [
            "sips:bob@Trunk.Example",
            "sip:bob@trunk.example;transport=TLS",
        ] {
            let hop = next_hop(uri, now, &hosts, |_| None).unwrap();
            assert_eq!(hop.protocol, Protocol::Tls, "{uri}");
            assert_eq!(hop.addr, SocketAddr::new(ip, 5061), "{uri}");
            assert_eq!(hop.tls_name.as_deref(), Some("trunk.example"), "{uri}");
        }
        // sips: with transport=tcp is still TLS (RFC 5630 §3.2).
        let hop = next_hop("sips:192.0.2.21:5071;transport=tcp", now, &hosts, |_| None).unwrap();
        assert_eq!(hop.protocol, Protocol::Tls);
        // An address is verified against the certificate's IP addresses.
        assert_eq!(hop.tls_name, None);
        // Over UDP and TCP there is nothing to verify.
        let hop = next_hop("sip:trunk.example;transport=tcp", now, &hosts, |_| None).unwrap();
        assert_eq!(hop.tls_name, None);
    }

    #[test]
    fn a_name_without_a_port_goes_where_its_srv_records_say() {
        use crate::proxy::dns::{Answer, SipTarget};
        let mut hosts = HostCache::new(16, 4, std::time::Duration::from_secs(30));
        let now = Instant::now();
        let at = |text: &str| -> SocketAddr { text.parse().unwrap() };
        let targets = vec![
            SipTarget {
                addr: at("192.0.2.31:5070"),
                protocol: Protocol::Udp,
            },
            SipTarget {
                addr: at("192.0.2.32:5071"),
                protocol: Protocol::Tcp,
            },
            SipTarget {
                addr: at("192.0.2.33:5072"),
                protocol: Protocol::Tls,
            },
        ];
        hosts.complete(
            now,
            "sip:carrier.example",
            Answer::FoundTargets(targets, std::time::Duration::from_secs(60)),
        );
        let places = |uri: &str| -> Vec<(SocketAddr, Protocol)> {
            next_hops(uri, now, &hosts, |_| None)
                .unwrap()
                .into_iter()
                .map(|h| (h.addr, h.protocol))
                .collect()
        };
        assert_eq!(
            places("sip:+15551234@carrier.example"),
            [
                (at("192.0.2.31:5070"), Protocol::Udp),
                (at("192.0.2.32:5071"), Protocol::Tcp),
                (at("192.0.2.33:5072"), Protocol::Tls)
            ]
        );
        assert_eq!(
            places("sip:+15551234@carrier.example;transport=tcp"),
            [(at("192.0.2.32:5071"), Protocol::Tcp)]
        );
        assert_eq!(
            places("sips:+15551234@carrier.example"),
            [(at("192.0.2.33:5072"), Protocol::Tls)]
        );
        // The TLS name to verify is the domain, not the SRV target (RFC 5922).
        let hop = next_hop("sips:+15551234@carrier.example", now, &hosts, |_| None).unwrap();
        assert_eq!(hop.tls_name.as_deref(), Some("carrier.example"));
        // A port in the URI skips SRV: the name's own address.
        assert_eq!(
            next_hop("sip:carrier.example:5060", now, &hosts, |_| None),
            Err(HopError::Lookup("carrier.example".into()))
        );
    }

    #[test]
    fn a_host_name_comes_from_the_cache_or_asks_for_a_lookup() {
        use crate::proxy::dns::Answer;
        let mut hosts = HostCache::new(16, 4, std::time::Duration::from_secs(30));
        let now = Instant::now();
        let uri = "sip:bob@Backend.Example:5080";
        assert_eq!(
            next_hop(uri, now, &hosts, |_| None),
            Err(HopError::Lookup("Backend.Example".into()))
        );
        let ip = "192.0.2.9".parse().unwrap();
        hosts.complete(
            now,
            "backend.example",
            Answer::Found(ip, std::time::Duration::from_secs(60)),
        );
        assert_eq!(
            next_hop(uri, now, &hosts, |_| None).map(|h| h.addr),
            Ok(SocketAddr::new(ip, 5080))
        );
        hosts.complete(now, "gone.example", Answer::NotFound);
        hosts.complete(now, "sip:gone.example", Answer::NotFound);
        assert!(matches!(
            next_hop("sip:gone.example", now, &hosts, |_| None),
            Err(HopError::Unresolvable(_))
        ));
        // A name without a port asks for its RFC 3263 lookup first.
        assert_eq!(
            next_hop("sip:bob@srv.example", now, &hosts, |_| None),
            Err(HopError::Lookup("sip:srv.example".into()))
        );
        // A gateway destination's own address needs no DNS at all.
        let fixed: SocketAddr = "198.51.100.4:5060".parse().unwrap();
        assert_eq!(
            next_hop("sip:gw.example", now, &hosts, |_| Some(fixed)).map(|h| h.addr),
            Ok(fixed)
        );
    }
}
