//! What real deployments show and loopback peers do not (issue 27): hops
//! that answer from another address, lost provisionals, late answers,
//! 6xx, and the ACKs of our stateless refusals.

use super::*;
use crate::proxy::decision::{FailoverPolicy, GatewayRelay, RelayCandidate, RelayFailure};

/// Another address of BACKEND1's host (a VIP's real address, or the
/// primary address of a host bound to 0.0.0.0).
const BACKEND1_OTHER: &str = "198.51.100.121:5060";

fn pool(first_report_success: bool, on_codes: &[u16]) -> GatewayRelay {
    let candidate = |uri: &str, at: &str, report_success| RelayCandidate {
        uri: Arc::from(uri),
        hop: Hop::new(addr(at), Protocol::Udp),
        report_success,
        capacity: None,
    };
    GatewayRelay {
        group: Arc::from("pool"),
        policy: Arc::new(FailoverPolicy {
            on_codes: on_codes.to_vec(),
            ..FailoverPolicy::default()
        }),
        candidates: vec![
            candidate("sip:backend1.example", BACKEND1, first_report_success),
            candidate("sip:backend2.example", BACKEND2, false),
        ],
    }
}

fn methods(sent: &[Message]) -> Vec<String> {
    sent.iter().map(|m| m.method_str().to_string()).collect()
}

#[test]
fn responses_from_another_address_of_the_hop_are_taken() {
    let mut h = Harness::new();
    h.relay(invite("vip"), Some("sip:backend1.example"));
    let sent = h.sent_to_after_relay();
    h.respond(answer(&sent, 180, &[]), BACKEND1_OTHER);
    h.respond(answer(&sent, 200, &[]), BACKEND1_OTHER);
    assert_eq!(h.reply_codes(), [100, 180, 200]);
    // Nor does a probe's answer have to come from the probed address.
    let hop = hop_of("sip:backend1.example").unwrap();
    h.engine.start_probe(
        h.now,
        3,
        "sip:backend1.example",
        probe_target(hop, false),
        "probe-vip",
    );
    h.collect();
    let options = h.sent_to(BACKEND1);
    h.respond(answer(&options[0], 200, &[]), BACKEND1_OTHER);
    let statuses: Vec<Option<u16>> = h
        .take()
        .into_iter()
        .filter_map(|o| match o {
            Output::ProbeDone { outcome, .. } => Some(outcome.status),
            _ => None,
        })
        .collect();
    assert_eq!(statuses, [Some(200)]);
}

#[test]
fn a_cancelled_branch_whose_1xx_was_lost_is_retransmitted_then_cancelled() {
    let mut h = Harness::new();
    h.relay(invite("lost-1xx"), Some("sip:backend1.example"));
    let sent = h.sent_to_after_relay();
    let cancel = cancel_of("lost-1xx");
    assert!(h.receive(cancel, UAC, Protocol::Udp).is_none());
    // The caller hears 487 at once.
    assert_eq!(h.distinct_reply_codes(), [100, 200, 487]);
    // The backend's 100 and 180 were lost: the INVITE goes on asking.
    h.run_for(Duration::from_millis(600), Duration::from_millis(10));
    assert_eq!(methods(&h.sent_to(BACKEND1)), ["INVITE"]);
    // Its retransmitted 180 arrives: now it is CANCELed.
    h.respond(answer(&sent, 180, &[]), BACKEND1);
    assert_eq!(methods(&h.sent_to(BACKEND1)), ["CANCEL"]);
    h.run_for(Duration::from_secs(2), Duration::from_millis(10));
    assert!(
        h.sent_to(BACKEND1)
            .iter()
            .all(|m| m.method_str() == "CANCEL"),
        "no INVITE once it answered"
    );
    assert!(h.replies().iter().all(|r| r.status() == Some(487)));
}

#[test]
fn a_failed_over_branch_is_retransmitted_until_it_answers_then_cancelled() {
    let mut h = Harness::new();
    h.relay_to_gateway(invite("two-ring"), pool(false, &[503]));
    let first = h.one_sent_to(BACKEND1);
    h.advance(Duration::from_secs(1));
    h.one_sent_to(BACKEND2);
    h.run_for(Duration::from_millis(600), Duration::from_millis(10));
    assert_eq!(methods(&h.sent_to(BACKEND1)), ["INVITE"], "Timer A goes on");
    h.respond(answer(&first, 180, &[]), BACKEND1);
    assert_eq!(methods(&h.sent_to(BACKEND1)), ["CANCEL"]);
    assert!(
        !h.reply_codes().contains(&180),
        "the given-up branch's ringing is not the caller's"
    );
    // Never answering, it stops at Timer B.
    let mut h = Harness::new();
    h.relay_to_gateway(invite("dead"), pool(false, &[503]));
    h.advance(Duration::from_secs(1));
    h.run_for(Duration::from_secs(40), Duration::from_millis(100));
    let last = h.sent_to(BACKEND1);
    assert!(invites_in(&last) >= 4, "retransmitted until Timer B");
    h.run_for(Duration::from_secs(20), Duration::from_millis(100));
    assert!(h.sent_to(BACKEND1).is_empty());
}

fn invites_in(sent: &[Message]) -> usize {
    sent.iter()
        .filter(|m| m.method() == Some(Method::Invite))
        .count()
}

#[test]
fn a_late_answer_on_a_failed_over_branch_is_no_success() {
    let mut h = Harness::new();
    // backend1 had failures: an answer from it would be reported.
    h.relay_to_gateway(invite("late"), pool(true, &[503]));
    let first = h.one_sent_to(BACKEND1);
    h.advance(Duration::from_secs(1));
    assert_eq!(
        h.health(),
        [(
            "sip:backend1.example".to_string(),
            Some(RelayFailure::NoResponse)
        )]
    );
    // It answers 1.5 s in: too late for this call, so no success either.
    h.advance(Duration::from_millis(500));
    h.respond(answer(&first, 180, &[]), BACKEND1);
    assert_eq!(h.health(), []);
}

#[test]
fn a_backend_that_sent_100_is_not_blamed_for_its_callees_timeout() {
    // Silence after a 100 until Timer B: the request fails over, but the
    // backend is up.
    let mut h = Harness::new();
    h.relay_to_gateway(invite("after-100"), pool(false, &[503, 408]));
    let first = h.one_sent_to(BACKEND1);
    h.respond(answer(&first, 100, &[]), BACKEND1);
    h.run_for(Duration::from_secs(32), Duration::from_millis(100));
    assert_eq!(
        invites_in(&h.sent_to(BACKEND2)),
        1,
        "failed over at Timer B"
    );
    assert_eq!(h.health(), []);
    // Its own 408 after a 100 (an operator listing 408 in on_codes).
    let mut h = Harness::new();
    h.relay_to_gateway(invite("408-after-100"), pool(false, &[503, 408]));
    let first = h.one_sent_to(BACKEND1);
    h.respond(answer(&first, 100, &[]), BACKEND1);
    h.respond(answer(&first, 408, &[]), BACKEND1);
    assert_eq!(invites_in(&h.sent_to(BACKEND2)), 1);
    assert_eq!(h.health(), []);
    // Without the 100, a 408 in on_codes is the backend's failure.
    let mut h = Harness::new();
    h.relay_to_gateway(invite("408-cold"), pool(false, &[503, 408]));
    let first = h.one_sent_to(BACKEND1);
    h.respond(answer(&first, 408, &[]), BACKEND1);
    assert_eq!(
        h.health(),
        [(
            "sip:backend1.example".to_string(),
            Some(RelayFailure::Status(408))
        )]
    );
}

#[test]
fn a_6xx_is_sent_at_once_and_the_failure_hook_does_not_run() {
    let mut h = Harness::new();
    h.hold_failures = true;
    let (one, _) = h.fork_to_both(invite("decline-now"), Protocol::Udp);
    // backend2 never answers; backend1 declines.
    h.respond(answer(&one[0], 603, &[]), BACKEND1);
    assert_eq!(h.reply_codes(), [100, 603], "not after Timer B");
    assert!(
        h.failure_runs.is_empty(),
        "§16.7: no new branch after a 6xx"
    );
    // A 486 alone does run it.
    let mut h = Harness::new();
    h.hold_failures = true;
    h.relay(invite("busy"), Some("sip:backend1.example"));
    let sent = h.sent_to_after_relay();
    h.respond(answer(&sent, 486, &[]), BACKEND1);
    assert_eq!(h.failure_runs.len(), 1);
}

#[test]
fn the_ack_of_a_stateless_refusal_ends_here() {
    let mut h = Harness::new();
    let looped = out_of_hops(&invite("mf0"));
    assert!(h.receive(looped, UAC, Protocol::Udp).is_none());
    let refusal = h.replies().remove(0);
    assert_eq!(refusal.status(), Some(483));
    let tag = refusal.to_tag().unwrap().to_string();
    let ack = with_to_tag(
        request("ACK", "sip:bob@example.com", "z9hG4bK-mf0", "mf0", ""),
        &tag,
    );
    assert!(h.receive(ack, UAC, Protocol::Udp).is_none(), "not routed");
    assert!(h.take().is_empty());
    // An ACK with another To tag (a 2xx's) goes to the script.
    let ack = with_to_tag(
        request("ACK", "sip:bob@example.com", "z9hG4bK-mf0", "mf0", ""),
        "0123456789abcdef",
    );
    assert!(h.receive(ack, UAC, Protocol::Udp).is_some());
}

fn with_to_tag(msg: Message, tag: &str) -> Message {
    let to = "To: <sip:bob@example.com>";
    edited(&msg, to, &format!("{to};tag={tag}"))
}

#[test]
fn timer_c_defaults_to_more_than_three_minutes() {
    // §16.6 step 11; and an INVITE's whole life is longer still.
    let timers = TimerSettings::default();
    assert!(timers.timer_c > Duration::from_secs(180));
    assert!(timers.max_invite_lifetime > timers.timer_c);
    let config = crate::config::TransactionConfig::default();
    assert_eq!(config.timer_c(), timers.timer_c);
    assert_eq!(config.max_invite_lifetime(), timers.max_invite_lifetime);
}

#[test]
fn a_non_invite_the_script_ignores_is_not_run_again_on_retransmission() {
    let mut h = Harness::new();
    let message = || request("MESSAGE", "sip:bob@example.com", "z9hG4bK-msg", "msg", "");
    let run = h.receive(message(), UAC, Protocol::Udp).unwrap();
    h.decide(&run, Decision::default());
    assert!(h.take().is_empty(), "dropped, unanswered");
    h.advance(Duration::from_secs(1));
    assert!(h.receive(message(), UAC, Protocol::Udp).is_none());
    assert!(h.take().is_empty());
    // Timer J (64·T1) ends it; a request with that branch is new again.
    h.advance(Duration::from_secs(32));
    assert!(h.receive(message(), UAC, Protocol::Udp).is_some());
}

#[test]
fn an_unknown_uri_scheme_gets_416() {
    // §16.3 step 1, before the script: RFC 4475's unkscm and novelsc.
    let mut h = Harness::new();
    let msg = request(
        "INVITE",
        "nope:bob@example.com",
        "z9hG4bK-scheme",
        "scheme",
        "",
    );
    assert!(
        h.receive(msg, UAC, Protocol::Udp).is_none(),
        "no script run"
    );
    assert_eq!(h.reply_codes(), [416]);
    // tel: is the script's to route (to a gateway, say).
    let msg = request("INVITE", "tel:+15551234", "z9hG4bK-tel", "tel", "");
    assert!(h.receive(msg, UAC, Protocol::Udp).is_some());
    h.take();
    // A relay the script aims at a scheme we cannot reach.
    let msg = request("INVITE", "sip:bob@example.com", "z9hG4bK-aim", "aim", "");
    h.relay(msg, Some("nope:bob@example.com"));
    assert_eq!(h.reply_codes(), [100, 416]);
    // A sip: URI that does not resolve is still 478.
    let msg = request(
        "INVITE",
        "sip:bob@unknown.invalid",
        "z9hG4bK-478",
        "478",
        "",
    );
    h.relay(msg, None);
    assert_eq!(h.reply_codes(), [100, 478]);
}

/// The Max-Breadth of each request sent, in order.
fn breadths(h: &mut Harness, hops: &[&str]) -> Vec<Option<u32>> {
    hops.iter()
        .flat_map(|hop| h.sent_to(hop))
        .map(|m| {
            m.header_named("Max-Breadth")
                .and_then(|v| v.trim().parse().ok())
        })
        .collect()
}

fn fork_of(h: &mut Harness, call_id: &str, extra: &str, targets: &[&str]) {
    let msg = request(
        "INVITE",
        "sip:bob@example.com",
        &format!("z9hG4bK-{call_id}"),
        call_id,
        extra,
    );
    let run = h.receive(msg, UAC, Protocol::Udp).unwrap();
    h.decide(&run, script_decision(&run, fork(targets)));
}

#[test]
fn forks_share_max_breadth_and_too_many_branches_get_440() {
    let three = [
        "sip:bob@backend1.example",
        "sip:bob@backend2.example",
        "sip:bob@backend3.example",
    ];
    // None received: 60, shared out.
    let mut h = Harness::new();
    fork_of(&mut h, "mb-default", "", &three);
    assert_eq!(
        breadths(&mut h, &[BACKEND1, BACKEND2, BACKEND3]),
        [Some(20), Some(20), Some(20)]
    );
    // 5 over two branches; more than 60 is held to 60.
    let mut h = Harness::new();
    fork_of(&mut h, "mb-5", "Max-Breadth: 5\n", &three[..2]);
    assert_eq!(breadths(&mut h, &[BACKEND1, BACKEND2]), [Some(3), Some(2)]);
    let mut h = Harness::new();
    fork_of(&mut h, "mb-big", "Max-Breadth: 1000\n", &three[..2]);
    assert_eq!(
        breadths(&mut h, &[BACKEND1, BACKEND2]),
        [Some(30), Some(30)]
    );
    // Fewer units than branches: 440, and nothing is sent.
    let mut h = Harness::new();
    fork_of(&mut h, "mb-2", "Max-Breadth: 2\n", &three);
    assert_eq!(h.reply_codes(), [100, 440]);
    assert!(breadths(&mut h, &[BACKEND1, BACKEND2, BACKEND3]).is_empty());
    // One target is forwarding, not forking: even Max-Breadth 0 passes.
    let mut h = Harness::new();
    fork_of(&mut h, "mb-0", "Max-Breadth: 0\n", &three[..1]);
    assert_eq!(breadths(&mut h, &[BACKEND1]), [Some(0)]);
}

#[test]
fn a_fork_spiralling_back_through_us_runs_out_of_breadth() {
    // Ten contacts that each lead back here: the first fork gives each
    // branch 6, so the spiral's second fork of ten is refused.
    let ten: Vec<String> = (0..10)
        .map(|i| format!("sip:bob@backend1.example;x={i}"))
        .collect();
    let targets: Vec<&str> = ten.iter().map(String::as_str).collect();
    let mut h = Harness::new();
    fork_of(&mut h, "spiral", "", &targets);
    let sent = h.sent_to(BACKEND1);
    assert_eq!(sent.len(), 10);
    let back = &sent[0];
    assert_eq!(back.header_named("Max-Breadth"), Some("6"));
    let run = h.receive(back.clone(), BACKEND1, Protocol::Udp).unwrap();
    h.decide(&run, script_decision(&run, fork(&targets)));
    assert!(h.sent_to(BACKEND1).is_empty(), "no second fork");
    assert!(h.reply_codes().contains(&440));
}

#[test]
fn a_strict_source_group_takes_answers_only_from_the_address_it_sent_to() {
    let mut relay = pool(false, &[503]);
    Arc::make_mut(&mut relay.policy).strict_source = true;
    let mut h = Harness::new();
    h.relay_to_gateway(invite("strict"), relay);
    let sent = h.one_sent_to(BACKEND1);
    h.respond(answer(&sent, 486, &[]), BACKEND1_OTHER);
    assert_eq!(
        h.reply_codes(),
        [100],
        "an answer from elsewhere is dropped"
    );
    h.respond(answer(&sent, 180, &[]), BACKEND1);
    h.respond(answer(&sent, 200, &[]), BACKEND1);
    assert_eq!(h.reply_codes(), [180, 200]);
    // A strict probe likewise.
    let hop = hop_of("sip:backend1.example").unwrap();
    h.engine.start_probe(
        h.now,
        4,
        "sip:backend1.example",
        probe_target(hop, true),
        "probe-strict",
    );
    h.collect();
    let options = h.sent_to(BACKEND1);
    h.respond(answer(&options[0], 200, &[]), BACKEND1_OTHER);
    assert!(!h
        .take()
        .iter()
        .any(|o| matches!(o, Output::ProbeDone { .. })));
    h.respond(answer(&options[0], 200, &[]), BACKEND1);
    assert!(h
        .take()
        .iter()
        .any(|o| matches!(o, Output::ProbeDone { .. })));
}

/// An INVITE with a body of `size` bytes (a WebRTC offer is 3–6 KB).
fn invite_with_body(call_id: &str, size: usize) -> Message {
    let body = "a".repeat(size);
    edited(
        &invite(call_id),
        "Content-Length: 0\r\n\r\n",
        &format!("Content-Length: {size}\r\n\r\n{body}"),
    )
}

/// Where the one request to BACKEND1 went, and its top Via's transport.
fn sent_over(h: &mut Harness) -> (Protocol, String) {
    let (mine, rest): (Vec<_>, Vec<_>) = h
        .take()
        .into_iter()
        .partition(|o| matches!(o, Output::Send { hop, .. } if hop.addr == addr(BACKEND1)));
    h.out = rest;
    assert_eq!(mine.len(), 1);
    match mine.into_iter().next() {
        Some(Output::Send { hop, bytes, .. }) => {
            let msg = sip::parse(bytes).unwrap();
            (hop.protocol, msg.top_via().unwrap().transport.to_string())
        }
        _ => unreachable!(),
    }
}

#[test]
fn a_request_too_large_for_udp_goes_over_tcp_unless_the_uri_pins_udp() {
    let mut h = Harness::new();
    h.relay(invite_with_body("small", 600), Some("sip:backend1.example"));
    assert_eq!(sent_over(&mut h), (Protocol::Udp, "UDP".to_string()));
    h.relay(
        invite_with_body("large", 3000),
        Some("sip:backend1.example"),
    );
    assert_eq!(sent_over(&mut h), (Protocol::Tcp, "TCP".to_string()));
    h.relay(
        invite_with_body("pinned", 3000),
        Some("sip:backend1.example;transport=udp"),
    );
    assert_eq!(sent_over(&mut h), (Protocol::Udp, "UDP".to_string()));
    // 0 turns it off.
    let mut h = Harness::new();
    h.engine.config.udp_max_request_bytes = 0;
    h.relay(invite_with_body("off", 3000), Some("sip:backend1.example"));
    assert_eq!(sent_over(&mut h), (Protocol::Udp, "UDP".to_string()));
}

#[test]
fn a_large_request_whose_tcp_connection_is_refused_goes_over_udp_after_all() {
    let mut h = Harness::new();
    h.relay(
        invite_with_body("refused", 3000),
        Some("sip:backend1.example"),
    );
    let (_, via) = sent_over(&mut h);
    assert_eq!(via, "TCP");
    h.engine
        .handle_link_failure(h.now, &Hop::new(addr(BACKEND1), Protocol::Tcp));
    h.collect();
    let (protocol, via) = sent_over(&mut h);
    assert_eq!((protocol, via.as_str()), (Protocol::Udp, "UDP"));
    assert!(!h.reply_codes().iter().any(|&c| c >= 200), "no final yet");
    // Timer A now runs over UDP, and the answer is taken.
    h.advance(Duration::from_millis(500));
    let again = h.sent_to(BACKEND1);
    assert_eq!(again.len(), 1);
    h.respond(answer(&again[0], 200, &[]), BACKEND1);
    assert_eq!(h.reply_codes(), [200]);
}

/// A harness where MSG came over TCP from the UAC, was relayed to
/// backend1 and rings there; and what backend1 got.
fn ringing_over_tcp(msg: Message) -> (Harness, Message) {
    let mut h = Harness::new();
    let run = h.receive(msg, UAC, Protocol::Tcp).unwrap();
    let relay = Action::Relay {
        uri: Some("sip:backend1.example".into()),
    };
    h.decide(&run, script_decision(&run, relay));
    let sent = h.one_sent_to(BACKEND1);
    h.respond(answer(&sent, 180, &[]), BACKEND1);
    h.take();
    (h, sent)
}

/// The TCP connection from PEER closed.
fn connection_closed(h: &mut Harness, peer: &str) {
    h.engine
        .handle_link_failure(h.now, &Hop::flow(addr(peer), Protocol::Tcp));
    h.collect();
}

#[test]
fn a_callers_closed_connection_cancels_its_ringing_invite() {
    // A phone behind NAT (its Via names its private address) gone while
    // the callee rings: no new connection can reach it (§18.2.2), so
    // nobody can answer it.
    let behind_nat = edited(
        &invite("tab-closed"),
        "SIP/2.0/UDP 198.51.100.10:5060",
        "SIP/2.0/TCP 192.168.1.20:5060",
    );
    let (mut h, sent) = ringing_over_tcp(behind_nat);
    connection_closed(&mut h, UAC);
    assert_eq!(methods(&h.sent_to(BACKEND1)), ["CANCEL"]);
    h.respond(answer(&sent, 487, &[]), BACKEND1);
    assert_eq!(methods(&h.sent_to(BACKEND1)), ["ACK"]);
    // A caller that §18.2.2 can reach anew (its Via names its address)
    // keeps its call: the answer will go over a new connection.
    let reachable = edited(&invite("reachable"), "SIP/2.0/UDP", "SIP/2.0/TCP");
    let (mut h, _) = ringing_over_tcp(reachable);
    connection_closed(&mut h, UAC);
    assert!(h.sent_to(BACKEND1).is_empty(), "no CANCEL");
    // Another caller's connection closing touches nothing.
    let (mut h, _) = ringing_over_tcp(invite("other"));
    connection_closed(&mut h, "198.51.100.99:5060");
    assert!(h.sent_to(BACKEND1).is_empty());
}

#[test]
fn a_probe_ends_when_its_prober_gives_up() {
    let mut h = Harness::new();
    let hop = hop_of("sip:backend1.example").unwrap();
    h.engine.start_probe(
        h.now,
        9,
        "sip:backend1.example",
        probe_target(hop, false),
        "probe-gone",
    );
    h.collect();
    h.run_for(Duration::from_secs(2), Duration::from_millis(100));
    let done: Vec<Option<u16>> = h
        .take()
        .into_iter()
        .filter_map(|o| match o {
            Output::ProbeDone { probe: 9, outcome } => Some(outcome.status),
            _ => None,
        })
        .collect();
    assert_eq!(done, [None], "a timeout, when the prober gives up");
    assert_eq!(h.engine.active(), 0);
    assert_eq!(h.engine.ended(), 0, "ended ones too");
    h.run_for(Duration::from_secs(10), Duration::from_millis(500));
    assert!(
        h.sent_to(BACKEND1).is_empty(),
        "no retransmission for nobody"
    );
}

#[test]
fn a_sips_request_over_tls_is_record_routed_with_sips() {
    // §16.6 step 4: a SIPS Request-URI makes our Record-Route SIPS.
    let listeners = vec![
        Listener::new(Protocol::Udp, addr(PROXY), None),
        Listener::new(Protocol::Tcp, addr(PROXY), None),
        Listener::new(Protocol::Tls, addr("192.0.2.1:5061"), None),
    ];
    let routes_of = |ruri: &str, relay_to: &str| -> Vec<String> {
        let mut h = Harness::with_listeners(listeners.clone(), Arc::new(|_| None));
        let msg = request("INVITE", ruri, "z9hG4bK-sips", "sips", "");
        let run = h.receive_on(msg, UAC, 2).unwrap();
        let relay = Action::Relay {
            uri: Some(relay_to.into()),
        };
        h.decide(&run, script_decision(&run, relay));
        let sent = h.one_sent_to(BACKEND1);
        sent.header_values(HeaderName::RecordRoute)
            .flat_map(|v| v.split(','))
            .map(|v| v.trim().to_string())
            .collect()
    };
    let routes = routes_of("sips:bob@example.com", "sips:backend1.example");
    assert_eq!(routes.len(), 2, "{routes:?}");
    assert!(
        routes[0].starts_with("<sips:192.0.2.1:5061;lr;dlg="),
        "{routes:?}"
    );
    assert!(routes[1].starts_with("<sips:f"), "{routes:?}");
    assert!(routes[1].contains("@192.0.2.1:5061;lr;dlg="), "{routes:?}");
    // A sip: request over the same TLS listener keeps sip: with the transport.
    let routes = routes_of("sip:bob@example.com", "sip:backend1.example;transport=tls");
    assert!(
        routes[0].starts_with("<sip:192.0.2.1:5061;transport=tls;lr;dlg="),
        "{routes:?}"
    );
}

#[test]
fn the_scripts_own_2xx_to_an_invite_is_retransmitted_until_its_ack() {
    let mut h = Harness::new();
    let run = h.receive(invite("self-200"), UAC, Protocol::Udp).unwrap();
    let reply = Action::Reply {
        code: 200,
        reason: None,
        headers: Vec::new(),
    };
    h.decide(&run, script_decision(&run, reply));
    let ok = h.replies().pop().unwrap();
    assert_eq!(ok.status(), Some(200));
    h.advance(Duration::from_millis(500));
    assert_eq!(h.reply_codes(), [200], "T1 later, again");
    h.advance(Duration::from_millis(1000));
    assert_eq!(h.reply_codes(), [200], "2·T1 later, again");
    // The ACK ends it, and is not the script's to route.
    let tag = ok.to_tag().unwrap().to_string();
    let ack = with_to_tag(
        request(
            "ACK",
            "sip:bob@example.com",
            "z9hG4bK-ack-self",
            "self-200",
            "",
        ),
        &tag,
    );
    assert!(h.receive(ack, UAC, Protocol::Udp).is_none());
    h.run_for(Duration::from_secs(10), Duration::from_millis(250));
    assert!(h.reply_codes().is_empty());
}

#[test]
fn a_relay_over_a_protocol_we_do_not_listen_on_gets_503() {
    // UDP and TCP listeners only: no Via could say TLS.
    let mut h = Harness::new();
    h.relay(invite("no-tls"), Some("sip:backend1.example;transport=tls"));
    assert!(h.sent_to(BACKEND1).is_empty());
    assert_eq!(h.reply_codes(), [100, 503]);
}

#[test]
fn a_late_2xx_retransmission_reaches_a_tcp_caller_over_its_connection() {
    // As `a_late_2xx_retransmission_of_a_forked_call_is_forwarded`, with
    // the caller on TCP: the stray goes over its connection, never dialled.
    let mut h = Harness::new();
    late_2xx_retransmission(&mut h, Protocol::Tcp);
    let hops: Vec<Hop> = h.sent_hops();
    assert_eq!(hops, [Hop::flow(addr(UAC), Protocol::Tcp)]);
    assert!(hops[0].flow);
}

/// A name with three places to try (RFC 3263), as the shard's DNS cache
/// would give them: backend1, backend2, backend3.
struct ThreePlaces;

impl NextHops for ThreePlaces {
    fn next_hop(&mut self, uri: &str) -> Result<Hop, HopError> {
        match uri {
            "sip:bob@srv.example" => Ok(Hop::new(addr(BACKEND1), Protocol::Udp)),
            other => hop_of(other),
        }
    }

    fn alternates(&mut self, uri: &str) -> Vec<Hop> {
        match uri {
            "sip:bob@srv.example" => vec![
                Hop::new(addr(BACKEND2), Protocol::Udp),
                Hop::new(addr(BACKEND3), Protocol::Udp),
            ],
            _ => Vec::new(),
        }
    }
}

#[test]
fn a_name_with_several_places_fails_over_on_silence_and_503_without_health() {
    let mut h = Harness::new();
    let msg = request("INVITE", "sip:bob@srv.example", "z9hG4bK-srv", "srv", "");
    let run = h.receive(msg, UAC, Protocol::Udp).unwrap();
    let decision = script_decision(&run, Action::Relay { uri: None });
    h.engine
        .handle_decision(h.now, run.ticket, decision, &mut ThreePlaces);
    h.collect();
    let first = h.one_sent_to(BACKEND1);
    assert_eq!(first.request_uri(), Some("sip:bob@srv.example"));
    // The first stays silent until the transaction would time out
    // (§4.3): only then does the next address of the name get it.
    h.run_for(Duration::from_millis(31_000), Duration::from_millis(500));
    assert!(h.sent_to(BACKEND2).is_empty(), "not on a mere slow answer");
    h.take();
    h.advance(Duration::from_millis(500));
    let second = h.one_sent_to(BACKEND2);
    assert_eq!(second.request_uri(), Some("sip:bob@srv.example"));
    // It answers 503: the third.
    h.respond(answer(&second, 503, &[]), BACKEND2);
    let third = h.one_sent_to(BACKEND3);
    h.respond(answer(&third, 200, &[]), BACKEND3);
    assert!(h.reply_codes().contains(&200));
    assert_eq!(h.health(), [], "the places of a name belong to no group");
    // An in-dialog request (to a flow) or an ACK takes no such detour; a
    // name with one place relays as before.
    let mut h = Harness::new();
    h.relay(invite("one-place"), Some("sip:backend1.example"));
    h.one_sent_to(BACKEND1);
    h.advance(Duration::from_secs(1));
    assert!(h.sent_to(BACKEND2).is_empty());
}

#[test]
fn a_large_invite_whose_tcp_attempt_stays_silent_tries_udp_before_failing_over() {
    // A firewall drops the SYN: no link failure for seconds. The silence
    // limit sends it over UDP first, to the same backend, uncounted.
    let mut h = Harness::new();
    let run = h
        .receive(invite_with_body("syn-dropped", 3000), UAC, Protocol::Udp)
        .unwrap();
    let relay = pool(false, &[503]);
    let uri = relay.candidates[0].uri.to_string();
    let decision = Decision {
        gateway: Some(relay),
        ..script_decision(&run, Action::Relay { uri: Some(uri) })
    };
    h.decide(&run, decision);
    assert_eq!(sent_over(&mut h).0, Protocol::Tcp);
    h.advance(Duration::from_secs(1));
    assert_eq!(sent_over(&mut h), (Protocol::Udp, "UDP".to_string()));
    assert!(h.sent_to(BACKEND2).is_empty(), "no failover yet");
    assert_eq!(h.health(), []);
    // Silent over UDP too: now the next backend, and a failure counted.
    h.advance(Duration::from_secs(1));
    assert_eq!(h.sent_to(BACKEND2).len(), 1);
    assert_eq!(h.health().len(), 1);
}

/// A name whose first place is over TLS, which the harness does not
/// listen on, then one over UDP.
struct TlsThenUdp;

impl NextHops for TlsThenUdp {
    fn next_hop(&mut self, _uri: &str) -> Result<Hop, HopError> {
        Ok(Hop::new(addr(BACKEND1), Protocol::Tls))
    }

    fn alternates(&mut self, _uri: &str) -> Vec<Hop> {
        vec![Hop::new(addr(BACKEND2), Protocol::Udp)]
    }
}

#[test]
fn places_over_a_transport_we_do_not_listen_on_are_skipped() {
    let mut h = Harness::new();
    let msg = request(
        "INVITE",
        "sip:bob@tls-first.example",
        "z9hG4bK-tf",
        "tf",
        "",
    );
    let run = h.receive(msg, UAC, Protocol::Udp).unwrap();
    let decision = script_decision(&run, Action::Relay { uri: None });
    h.engine
        .handle_decision(h.now, run.ticket, decision, &mut TlsThenUdp);
    h.collect();
    assert!(h.sent_to(BACKEND1).is_empty());
    assert_eq!(h.one_sent_to(BACKEND2).method(), Some(Method::Invite));
}

#[test]
fn a_caller_whose_via_names_its_host_is_reached_anew_not_cancelled() {
    // A TLS trunk's Via carries its name: §18.2.2 reconnects to it.
    let named = edited(
        &invite("named"),
        "SIP/2.0/UDP 198.51.100.10:5060",
        "SIP/2.0/TCP trunk.example.net:5060",
    );
    let (mut h, _) = ringing_over_tcp(named);
    connection_closed(&mut h, UAC);
    assert!(h.sent_to(BACKEND1).is_empty(), "no CANCEL");
}

#[test]
fn a_udp_uri_pin_is_seen_inside_a_name_addr() {
    assert!(pins_udp("sip:gw.example;transport=udp"));
    assert!(pins_udp("<sip:edge.example;lr;transport=UDP>"));
    assert!(!pins_udp("<sip:edge.example;lr>;transport=udp"));
    assert!(!pins_udp("sip:gw.example;transport=tcp"));
}
