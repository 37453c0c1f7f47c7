//! A proxy with an interface toward callers (192.0.2.1), one toward
//! backends (198.51.100.1) and IPv6 on both: which address each side is
//! given in Via and Record-Route, which listener each message leaves from,
//! and RFC 5658 double Record-Route.

use super::*;

const UAC_V4: &str = "192.0.2.10:5060";

const CALLER_SIDE: usize = 0;
const BACKEND_SIDE: usize = 1;
const BACKEND_SIDE_TCP: usize = 2;
const CALLER_SIDE_V6: usize = 3;
const BACKEND_SIDE_V6: usize = 4;

fn multihomed() -> Harness {
    let listeners = vec![
        Listener::new(Protocol::Udp, addr("192.0.2.1:5060"), None),
        Listener::new(Protocol::Udp, addr("198.51.100.1:5060"), None),
        Listener::new(Protocol::Tcp, addr("198.51.100.1:5060"), None),
        Listener::new(Protocol::Udp, addr("[2001:db8:1::1]:5060"), None),
        Listener::new(Protocol::Udp, addr("[2001:db8:2::1]:5060"), None),
    ];
    // The host's routing table: each network is on its own interface.
    let route: RouteLookup = Arc::new(|ip| {
        let text = ip.to_string();
        let local = if text.starts_with("198.51.100.") {
            "198.51.100.1"
        } else if text.starts_with("192.0.2.") {
            "192.0.2.1"
        } else if text.starts_with("2001:db8:2::") {
            "2001:db8:2::1"
        } else {
            "2001:db8:1::1"
        };
        local.parse().ok()
    });
    Harness::with_listeners(listeners, route)
}

/// The one message sent to HOP, and the listener it left from.
fn sent_from(h: &mut Harness, hop: &str) -> (Message, usize) {
    let hop = addr(hop);
    let index = h
        .out
        .iter()
        .position(|o| matches!(o, Output::Send { hop: sent, .. } if sent.addr == hop))
        .expect("a message to the hop");
    match h.out.remove(index) {
        Output::Send { bytes, from, .. } => (sip::parse(bytes).expect("parses"), from),
        _ => unreachable!(),
    }
}

/// Where a URI goes: an IP literal host as written, a name as in the other
/// tests.
fn ip_hop(uri: &str) -> Result<Hop, HopError> {
    let parsed = Uri::parse(uri).map_err(|e| HopError::Unsupported(e.to_string()))?;
    match parsed
        .host
        .trim_matches(['[', ']'])
        .parse::<std::net::IpAddr>()
    {
        Ok(ip) => Ok(Hop::new(
            SocketAddr::new(ip, parsed.port.unwrap_or(5060)),
            Protocol::Udp,
        )),
        Err(_) => hop_of(uri),
    }
}

fn decide_ip(h: &mut Harness, run: &ScriptRun, decision: Decision) {
    h.engine
        .handle_decision(h.now, run.ticket, decision, &mut ip_hop);
    h.collect();
}

fn relay_from(h: &mut Harness, msg: Message, source: &str, listener: usize, to: &str) {
    let run = h.receive_on(msg, source, listener).expect("script runs");
    let decision = script_decision(
        &run,
        Action::Relay {
            uri: Some(to.into()),
        },
    );
    decide_ip(h, &run, decision);
}

fn invite_from(source: &str, call_id: &str) -> Message {
    let text = format!(
        "INVITE sip:bob@example.com SIP/2.0\n\
         Via: SIP/2.0/UDP {source};branch=z9hG4bK-{call_id};rport\n\
         Max-Forwards: 70\n\
         From: <sip:alice@example.com>;tag=a1\n\
         To: <sip:bob@example.com>\n\
         Call-ID: {call_id}\n\
         CSeq: 1 INVITE\n\
         Contact: <sip:alice@{source}>\n\
         Content-Length: 0\n\n"
    );
    parse(&text)
}

#[test]
fn each_side_is_given_the_address_it_can_reach_and_two_record_routes() {
    let mut h = multihomed();
    relay_from(
        &mut h,
        invite_from("192.0.2.10:5060", "two-sides"),
        "192.0.2.10:5060",
        CALLER_SIDE,
        "sip:backend1.example",
    );
    let (sent, from) = sent_from(&mut h, BACKEND1);
    assert_eq!(from, BACKEND_SIDE, "it leaves by the backends' interface");
    let via = sent.top_via().expect("our Via");
    assert_eq!((via.host, via.port), ("198.51.100.1", Some(5060)));
    let routes: Vec<String> = sent
        .header_values(HeaderName::RecordRoute)
        .map(unsealed)
        .collect();
    assert_eq!(
        routes,
        ["<sip:198.51.100.1:5060;lr>", "<sip:192.0.2.1:5060;lr>"],
        "the backend's side on top, the caller's next"
    );
    // The 100 Trying goes back where the INVITE came in.
    let trying = h.take().into_iter().find_map(|o| match o {
        Output::Reply { bytes, .. } => sip::parse(bytes).ok(),
        _ => None,
    });
    assert_eq!(trying.and_then(|m| m.status()), Some(100));
}

#[test]
fn one_interface_on_both_sides_writes_one_record_route() {
    let mut h = multihomed();
    relay_from(
        &mut h,
        invite_from("198.51.100.40:5060", "one-side"),
        "198.51.100.40:5060",
        BACKEND_SIDE,
        "sip:backend1.example",
    );
    let (sent, from) = sent_from(&mut h, BACKEND1);
    assert_eq!(from, BACKEND_SIDE);
    let routes: Vec<String> = sent
        .header_values(HeaderName::RecordRoute)
        .map(unsealed)
        .collect();
    assert_eq!(routes, ["<sip:198.51.100.1:5060;lr>"]);
}

#[test]
fn a_change_of_transport_is_recorded_twice() {
    let mut h = multihomed();
    relay_from(
        &mut h,
        invite_from("198.51.100.40:5060", "to-tcp"),
        "198.51.100.40:5060",
        BACKEND_SIDE,
        "sip:backend1.example;transport=tcp",
    );
    let (sent, from) = sent_from(&mut h, BACKEND1);
    assert_eq!(from, BACKEND_SIDE_TCP);
    assert_eq!(sent.top_via().map(|v| v.transport), Some("TCP"));
    let routes: Vec<String> = sent
        .header_values(HeaderName::RecordRoute)
        .map(unsealed)
        .collect();
    assert_eq!(
        routes,
        [
            "<sip:198.51.100.1:5060;transport=tcp;lr>",
            "<sip:198.51.100.1:5060;lr>"
        ]
    );
}

#[test]
fn a_request_in_the_dialog_pops_both_entries_and_leaves_by_the_other_side() {
    // The callee's BYE comes back through the backends' interface with
    // both our entries on top of its route set.
    let mut h = multihomed();
    let seal = sealed_for("bye-back", "a1", "192.0.2.10");
    let bye = parse(&format!(
        "BYE sip:alice@192.0.2.10:5060 SIP/2.0\n\
         Via: SIP/2.0/UDP 198.51.100.21:5060;branch=z9hG4bK-bye;rport\n\
         Max-Forwards: 70\n\
         Route: <sip:198.51.100.1:5060;lr{seal}>, <sip:192.0.2.1:5060;lr{seal}>\n\
         From: <sip:bob@example.com>;tag=b1\n\
         To: <sip:alice@example.com>;tag=a1\n\
         Call-ID: bye-back\n\
         CSeq: 2 BYE\n\
         Content-Length: 0\n\n",
    ));
    let run = h
        .receive_on(bye, BACKEND1, BACKEND_SIDE)
        .expect("script runs");
    assert_eq!(run.preroute.routes_popped, 2, "both entries name us");
    let decision = Decision {
        record_route: false,
        ..script_decision(&run, Action::Relay { uri: None })
    };
    decide_ip(&mut h, &run, decision);
    let (sent, from) = sent_from(&mut h, UAC_V4);
    assert_eq!(from, CALLER_SIDE, "it leaves by the callers' interface");
    assert!(sent.header(HeaderName::Route).is_none(), "no Route left");
    let via = sent.top_via().expect("our Via");
    assert_eq!(via.host, "192.0.2.1");
}

#[test]
fn ipv6_addresses_are_written_in_brackets() {
    let mut h = multihomed();
    let invite = invite_from("[2001:db8:1::10]:5060", "v6");
    let run = h
        .receive_on(invite, "[2001:db8:1::10]:5060", CALLER_SIDE_V6)
        .expect("script runs");
    let to = "sip:[2001:db8:2::21]:5060";
    let decision = script_decision(
        &run,
        Action::Relay {
            uri: Some(to.into()),
        },
    );
    decide_ip(&mut h, &run, decision);
    let (sent, from) = sent_from(&mut h, "[2001:db8:2::21]:5060");
    assert_eq!(from, BACKEND_SIDE_V6);
    let via = sent.top_via().expect("our Via");
    assert_eq!((via.host, via.port), ("[2001:db8:2::1]", Some(5060)));
    let routes: Vec<String> = sent
        .header_values(HeaderName::RecordRoute)
        .map(unsealed)
        .collect();
    assert_eq!(
        routes,
        [
            "<sip:[2001:db8:2::1]:5060;lr>",
            "<sip:[2001:db8:1::1]:5060;lr>"
        ]
    );
    // The caller's Via got received/rport with its IPv6 address.
    let vias: Vec<&str> = sent.header_values(HeaderName::Via).collect();
    assert!(vias[1].contains("rport=5060"), "{vias:?}");
}

#[test]
fn an_advertised_name_is_written_and_recognised() {
    let listeners = vec![Listener::new(
        Protocol::Udp,
        addr("192.0.2.1:5060"),
        Some("sip.example.net:5080"),
    )];
    let mut h = Harness::with_listeners(listeners, Arc::new(|_| None));
    relay_from(
        &mut h,
        invite_from("192.0.2.10:5060", "advertised"),
        "192.0.2.10:5060",
        0,
        "sip:backend1.example",
    );
    let (sent, _) = sent_from(&mut h, BACKEND1);
    let via = sent.top_via().expect("our Via");
    assert_eq!((via.host, via.port), ("sip.example.net", Some(5080)));
    assert_eq!(
        sent.header(HeaderName::RecordRoute)
            .map(unsealed)
            .as_deref(),
        Some("<sip:sip.example.net:5080;lr>")
    );
    // A response naming that Via is ours.
    h.respond(answer(&sent, 180, &[]), BACKEND1);
    assert_eq!(h.reply_codes(), [100, 180]);
}
