//! Calls counted in the core and what a destination can take (DESIGN.md
//! §4.3, "capacity"), on virtual time: a call counts from its 2xx to its
//! BYE, a failed or CANCELed INVITE never counts, and a full, paced or
//! drained destination is skipped without counting as a failure.

use super::*;
use crate::proxy::capacity::Capacity;
use crate::proxy::decision::{FailoverPolicy, GatewayRelay, RelayCandidate};

/// A relay to "pool": backend1 then backend2, each with its capacity.
fn pool(capacities: [&Arc<Capacity>; 2]) -> GatewayRelay {
    let candidate = |uri: &str, at: &str, capacity: &Arc<Capacity>| RelayCandidate {
        uri: Arc::from(uri),
        hop: Hop::new(addr(at), Protocol::Udp),
        report_success: false,
        capacity: Some(capacity.clone()),
    };
    GatewayRelay {
        group: Arc::from("pool"),
        policy: Arc::new(FailoverPolicy::default()),
        candidates: vec![
            candidate("sip:backend1.example", BACKEND1, capacities[0]),
            candidate("sip:backend2.example", BACKEND2, capacities[1]),
        ],
    }
}

fn counts(capacity: &Capacity) -> (u32, u32) {
    (capacity.calls_in_use(), capacity.active_calls())
}

impl Harness {
    /// The outputs of kinds the capacity rules add, taken.
    fn capacity_events(&mut self) -> Vec<String> {
        let (mine, rest): (Vec<_>, Vec<_>) = self.take().into_iter().partition(|o| {
            matches!(
                o,
                Output::GatewayFull { .. } | Output::CallCollected(_) | Output::Health(_)
            )
        });
        self.out = rest;
        mine.into_iter()
            .map(|o| match o {
                Output::GatewayFull { group } => format!("full {group}"),
                Output::CallCollected(call) => format!("collected {}", call.call_id),
                Output::Health(report) => format!("health {}", report.uri),
                _ => String::new(),
            })
            .collect()
    }
}

/// A BYE from the callee of `call_id`, through our Record-Route `route`.
fn bye_from_callee(call_id: &str, route: &str) -> Message {
    parse(&format!(
        "BYE sip:alice@198.51.100.10 SIP/2.0\n\
         Via: SIP/2.0/UDP 198.51.100.21:5060;branch=z9hG4bK-bye-{call_id}\n\
         Max-Forwards: 70\n\
         From: <sip:bob@example.com>;tag=uas-tag\n\
         To: <sip:alice@example.com>;tag=a1\n\
         Call-ID: {call_id}\n\
         CSeq: 9 BYE\n\
         Route: {route}\n\
         Content-Length: 0\n\n"
    ))
}

/// A BYE from the caller of `call_id`, through our Route `route`.
fn bye_from_caller(call_id: &str, route: &str) -> Message {
    parse(&format!(
        "BYE sip:bob@198.51.100.21 SIP/2.0\n\
         Via: SIP/2.0/UDP 198.51.100.10:5060;branch=z9hG4bK-bye-{call_id}\n\
         Max-Forwards: 70\n\
         From: <sip:alice@example.com>;tag=a1\n\
         To: <sip:bob@example.com>;tag=uas-tag\n\
         Call-ID: {call_id}\n\
         CSeq: 2 BYE\n\
         Route: {route}\n\
         Content-Length: 0\n\n"
    ))
}

/// Relays an INVITE for `call_id` to `relay` and has backend1 answer 200.
/// Returns our Record-Route.
fn answered_call(h: &mut Harness, call_id: &str, relay: GatewayRelay) -> String {
    h.take();
    h.relay_to_gateway(invite(call_id), relay);
    let sent = h.one_sent_to(BACKEND1);
    h.respond(answer(&sent, 200, &[]), BACKEND1);
    assert_eq!(h.reply_codes(), [100, 200]);
    sent.header(HeaderName::RecordRoute)
        .expect("record-routed")
        .to_string()
}

#[test]
fn a_call_counts_from_its_2xx_until_the_bye_of_either_side() {
    let (one, two) = (Arc::new(Capacity::default()), Arc::new(Capacity::default()));
    let mut h = Harness::new();
    h.relay_to_gateway(invite("counted"), pool([&one, &two]));
    let sent = h.one_sent_to(BACKEND1);
    assert_eq!(counts(&one), (1, 0), "set up: held, not yet active");
    h.respond(answer(&sent, 180, &[]), BACKEND1);
    assert_eq!(counts(&one), (1, 0));
    h.respond(answer(&sent, 200, &[]), BACKEND1);
    assert_eq!(counts(&one), (1, 1), "the 2xx makes it a call");
    h.respond(answer(&sent, 200, &[]), BACKEND1);
    assert_eq!(counts(&one), (1, 1), "a repeated 2xx counts once");
    assert_eq!(h.engine.calls_counted(), 1);
    let route = sent.header(HeaderName::RecordRoute).unwrap().to_string();
    let run = h.receive(bye_from_callee("counted", &route), BACKEND1, Protocol::Udp);
    assert!(run.is_some(), "the BYE is relayed");
    assert_eq!(counts(&one), (0, 0));
    assert_eq!(counts(&two), (0, 0));

    // The caller's BYE ends a call just the same, and only once.
    let route = answered_call(&mut h, "caller-ends", pool([&one, &two]));
    assert_eq!(counts(&one), (1, 1));
    h.receive(bye_from_caller("caller-ends", &route), UAC, Protocol::Udp);
    assert_eq!(counts(&one), (0, 0));
    let retransmitted = bye_from_caller("caller-ends", &route);
    h.receive(retransmitted, UAC, Protocol::Udp);
    assert_eq!(counts(&one), (0, 0));
    assert_eq!(h.engine.calls_counted(), 0);
}

#[test]
fn a_bye_that_does_not_follow_our_route_ends_nothing() {
    let (one, two) = (Arc::new(Capacity::default()), Arc::new(Capacity::default()));
    let mut h = Harness::new();
    answered_call(&mut h, "stray-bye", pool([&one, &two]));
    let stray = String::from_utf8_lossy(bye_from_caller("stray-bye", "<sip:x>").as_bytes())
        .replace("Route: <sip:x>\r\n", "");
    h.receive(parse(&stray.replace("\r\n", "\n")), UAC, Protocol::Udp);
    assert_eq!(counts(&one), (1, 1), "not through us: the call goes on");
}

#[test]
fn a_failed_or_cancelled_invite_never_counts_and_frees_its_slot_at_once() {
    let (one, two) = (Arc::new(Capacity::default()), Arc::new(Capacity::default()));
    let mut h = Harness::new();
    h.relay_to_gateway(invite("busy"), pool([&one, &two]));
    let sent = h.one_sent_to(BACKEND1);
    h.respond(answer(&sent, 486, &[]), BACKEND1);
    assert_eq!(counts(&one), (0, 0), "free at the 486, not at Timer D");
    h.take();

    h.relay_to_gateway(invite("cancelled"), pool([&one, &two]));
    let sent = h.one_sent_to(BACKEND1);
    h.respond(answer(&sent, 180, &[]), BACKEND1);
    h.receive(cancel_of("cancelled"), UAC, Protocol::Udp);
    assert_eq!(counts(&one), (1, 0), "ringing until its 487");
    h.respond(answer(&sent, 487, &[]), BACKEND1);
    assert_eq!(counts(&one), (0, 0));
    h.take();

    // A branch that never answers gives its slot back when it ends.
    let policy = FailoverPolicy {
        enabled: false,
        ..FailoverPolicy::default()
    };
    let silent = GatewayRelay {
        policy: Arc::new(policy),
        ..pool([&one, &two])
    };
    h.relay_to_gateway(invite("silent"), silent);
    assert_eq!(counts(&one), (1, 0));
    h.run_for(Duration::from_secs(40), Duration::from_millis(500));
    assert_eq!(counts(&one), (0, 0));
    assert_eq!(h.engine.calls_counted(), 0);
}

#[test]
fn a_full_destination_is_skipped_without_a_failure_or_a_failover() {
    let one = Arc::new(Capacity::new(Some(1), None));
    let two = Arc::new(Capacity::default());
    let _held = one.reserve(Instant::now()).unwrap();
    let mut h = Harness::new();
    h.relay_to_gateway(invite("skip-full"), pool([&one, &two]));
    assert!(h.sent_to(BACKEND1).is_empty());
    let sent = h.one_sent_to(BACKEND2);
    assert_eq!(counts(&two), (1, 0));
    assert!(
        h.capacity_events().is_empty(),
        "no health report, nothing full"
    );
    h.respond(answer(&sent, 200, &[]), BACKEND2);
    assert_eq!(counts(&two), (1, 1));
    // Other requests are not calls: a full destination still takes them.
    let message = request("MESSAGE", "sip:bob@example.com", "z9hG4bK-m", "msg", "");
    h.relay_to_gateway(message, pool([&one, &two]));
    assert_eq!(h.sent_to(BACKEND1).len(), 1);
}

#[test]
fn when_every_destination_is_full_the_caller_gets_503_with_retry_after() {
    let one = Arc::new(Capacity::new(Some(1), None));
    let two = Arc::new(Capacity::new(Some(1), None));
    let _held = (
        one.reserve(Instant::now()).unwrap(),
        two.reserve(Instant::now()).unwrap(),
    );
    let mut h = Harness::new();
    h.relay_to_gateway(invite("all-full"), pool([&one, &two]));
    assert!(h.sent_to(BACKEND1).is_empty() && h.sent_to(BACKEND2).is_empty());
    assert_eq!(h.capacity_events(), ["full pool"]);
    let replies = h.replies();
    let last = replies.last().expect("a final response");
    assert_eq!(last.status(), Some(503));
    assert_eq!(last.header_named("Retry-After"), Some("5"));
    assert_eq!(counts(&one), (1, 0));
}

#[test]
fn every_full_destination_runs_the_failure_hook_first() {
    let one = Arc::new(Capacity::new(Some(1), None));
    let two = Arc::new(Capacity::new(Some(1), None));
    let _held = (
        one.reserve(Instant::now()).unwrap(),
        two.reserve(Instant::now()).unwrap(),
    );
    let mut h = Harness::new();
    h.hold_failures = true;
    h.relay_to_gateway(invite("hooked"), pool([&one, &two]));
    assert_eq!(h.failure_runs.len(), 1, "@proxy.on_failure runs");
    assert!(h.failure_runs[0].response.is_none(), "no response to show");
}

#[test]
fn a_paced_destination_takes_one_call_a_second_and_the_rest_go_on() {
    let one = Arc::new(Capacity::new(None, Some(1.0)));
    let two = Arc::new(Capacity::default());
    let mut h = Harness::new();
    let mut to_one = 0;
    for n in 0..15 {
        h.relay_to_gateway(invite(&format!("paced-{n}")), pool([&one, &two]));
        let (first, second) = (h.sent_to(BACKEND1), h.sent_to(BACKEND2));
        assert_eq!(
            first.len() + second.len(),
            1,
            "INVITE {n} goes to one of them"
        );
        to_one += first.len();
        for (sent, from) in first
            .iter()
            .map(|m| (m, BACKEND1))
            .chain(second.iter().map(|m| (m, BACKEND2)))
        {
            h.respond(answer(sent, 200, &[]), from);
        }
        h.take();
        h.advance(Duration::from_millis(200));
    }
    assert_eq!(to_one, 3, "five a second for three seconds: one a second");
    assert!(h.capacity_events().is_empty(), "no failure, nothing full");
    assert_eq!(counts(&one), (3, 3));
    assert_eq!(counts(&two), (12, 12));
}

#[test]
fn a_drained_destination_takes_no_new_request_while_its_calls_go_on() {
    let (one, two) = (Arc::new(Capacity::default()), Arc::new(Capacity::default()));
    let mut h = Harness::new();
    let route = answered_call(&mut h, "before-drain", pool([&one, &two]));
    one.set_draining(true);
    h.relay_to_gateway(invite("after-drain"), pool([&one, &two]));
    assert!(h.sent_to(BACKEND1).is_empty());
    h.one_sent_to(BACKEND2);
    let options = request("OPTIONS", "sip:bob@example.com", "z9hG4bK-o", "opt", "");
    h.relay_to_gateway(options, pool([&one, &two]));
    assert!(h.sent_to(BACKEND1).is_empty(), "nothing new at all");
    assert_eq!(h.sent_to(BACKEND2).len(), 1);
    // The drained destination's call ends as ever.
    assert_eq!(counts(&one), (1, 1));
    let run = h.receive(bye_from_caller("before-drain", &route), UAC, Protocol::Udp);
    assert!(run.is_some(), "the script relays it along its route");
    assert_eq!(counts(&one), (0, 0));
}

#[test]
fn a_call_no_bye_ends_is_collected_after_call_max() {
    let (one, two) = (Arc::new(Capacity::default()), Arc::new(Capacity::default()));
    let mut h = Harness::new();
    answered_call(&mut h, "forgotten", pool([&one, &two]));
    h.take();
    h.advance(Duration::from_secs(3 * 3600));
    assert_eq!(counts(&one), (1, 1));
    assert!(h.capacity_events().is_empty());
    h.advance(Duration::from_secs(3600));
    assert_eq!(h.capacity_events(), ["collected forgotten"]);
    assert_eq!(counts(&one), (0, 0));
    assert_eq!(h.engine.poll_timeout(), None, "nothing left to collect");
}

#[test]
fn a_call_the_script_did_not_record_route_counts_only_while_it_is_set_up() {
    let (one, two) = (Arc::new(Capacity::default()), Arc::new(Capacity::default()));
    let mut h = Harness::new();
    let run = h
        .receive(invite("no-rr"), UAC, Protocol::Udp)
        .expect("runs");
    let decision = Decision {
        gateway: Some(pool([&one, &two])),
        record_route: false,
        ..script_decision(
            &run,
            Action::Relay {
                uri: Some("sip:backend1.example".to_string()),
            },
        )
    };
    h.decide(&run, decision);
    let sent = h.one_sent_to(BACKEND1);
    assert_eq!(counts(&one), (1, 0), "its setup counts");
    h.respond(answer(&sent, 200, &[]), BACKEND1);
    assert_eq!(counts(&one), (0, 0), "its BYE will not come through us");
    assert_eq!(h.engine.calls_counted(), 0);
}

#[test]
fn a_branch_given_up_for_another_frees_its_slot_at_once() {
    let (one, two) = (Arc::new(Capacity::default()), Arc::new(Capacity::default()));
    let mut h = Harness::new();
    h.relay_to_gateway(invite("given-up"), pool([&one, &two]));
    h.one_sent_to(BACKEND1);
    // 1 s of silence: the call moves to backend2.
    h.run_for(Duration::from_millis(1000), Duration::from_millis(10));
    let sent = h.one_sent_to(BACKEND2);
    assert_eq!(counts(&one), (0, 0));
    assert_eq!(counts(&two), (1, 0));
    h.respond(answer(&sent, 200, &[]), BACKEND2);
    assert_eq!(counts(&two), (1, 1));
}
