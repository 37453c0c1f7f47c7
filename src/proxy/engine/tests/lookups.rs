//! Decisions whose next hop is a name still to be looked up: they wait,
//! send nothing meanwhile, and go on (or fail with 478) once the name is
//! known, while other calls are untouched.

use super::*;

/// `slow.example` is not looked up yet; everything else is `hop_of`'s.
fn waiting_for_slow(uri: &str) -> Result<Hop, HopError> {
    match Uri::parse(uri) {
        Ok(parsed) if parsed.host == "slow.example" => Err(HopError::Lookup("slow.example".into())),
        _ => hop_of(uri),
    }
}

/// `slow.example` now resolves to NEXT.
fn slow_resolved(uri: &str) -> Result<Hop, HopError> {
    match Uri::parse(uri) {
        Ok(parsed) if parsed.host == "slow.example" => Ok(Hop::new(addr(NEXT), Protocol::Udp)),
        _ => hop_of(uri),
    }
}

/// `slow.example` did not resolve.
fn slow_failed(uri: &str) -> Result<Hop, HopError> {
    match Uri::parse(uri) {
        Ok(parsed) if parsed.host == "slow.example" => {
            Err(HopError::Unresolvable("slow.example".into()))
        }
        _ => hop_of(uri),
    }
}

impl Harness {
    /// An INVITE whose script relays it to `uri`, with `slow.example`
    /// still being looked up.
    fn relay_waiting(&mut self, call_id: &str, action: Action) -> Deferred {
        let run = self
            .receive(invite(call_id), UAC, Protocol::Udp)
            .expect("script runs");
        let decision = script_decision(&run, action);
        let deferred = self
            .engine
            .handle_decision(self.now, run.ticket, decision, &mut waiting_for_slow)
            .expect("the decision waits for the lookup");
        self.collect();
        assert_eq!(deferred.ticket, run.ticket);
        assert_eq!(deferred.hosts, ["slow.example"]);
        deferred
    }

    fn resume(
        &mut self,
        deferred: Deferred,
        hop: fn(&str) -> Result<Hop, HopError>,
    ) -> Option<Deferred> {
        let mut hop = hop;
        let again =
            self.engine
                .handle_decision(self.now, deferred.ticket, deferred.decision, &mut hop);
        self.collect();
        again
    }
}

fn relay_to(uri: &str) -> Action {
    Action::Relay {
        uri: Some(uri.to_string()),
    }
}

#[test]
fn a_relay_to_a_name_being_looked_up_waits_and_then_goes_on() {
    let mut h = Harness::new();
    let deferred = h.relay_waiting("wait", relay_to("sip:bob@slow.example"));
    // The caller has its 100 Trying; nothing went anywhere yet.
    assert_eq!(h.reply_codes(), [100]);
    assert!(h.sent_to(NEXT).is_empty());
    // Meanwhile another call is relayed at once.
    h.relay(invite("other"), Some("sip:backend1.example"));
    assert_eq!(h.sent_to(BACKEND1).len(), 1);
    // The answer comes two seconds later: the waiting INVITE goes out, to
    // the address found, with the script's Request-URI untouched.
    h.advance(Duration::from_secs(2));
    h.take();
    assert!(h.resume(deferred, slow_resolved).is_none());
    let sent = h.sent_to(NEXT);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].request_uri(), Some("sip:bob@example.com"));
    h.respond(answer(&sent[0], 200, &[]), NEXT);
    assert_eq!(h.reply_codes(), [200]);
}

#[test]
fn a_name_that_does_not_resolve_gets_478() {
    let mut h = Harness::new();
    let deferred = h.relay_waiting("nxdomain", relay_to("sip:bob@slow.example"));
    h.take();
    assert!(h.resume(deferred, slow_failed).is_none());
    assert_eq!(h.reply_codes(), [478]);
}

#[test]
fn a_call_cancelled_while_its_lookup_runs_is_not_relayed_afterwards() {
    let mut h = Harness::new();
    let deferred = h.relay_waiting("cancelled", relay_to("sip:bob@slow.example"));
    h.take();
    let cancel = cancel_of("cancelled");
    h.receive(cancel, UAC, Protocol::Udp);
    let mut codes = h.reply_codes();
    codes.sort_unstable();
    assert_eq!(codes, [200, 487]);
    assert!(h.resume(deferred, slow_resolved).is_none());
    assert!(h.sent_to(NEXT).is_empty(), "relayed after the CANCEL");
    assert!(h.reply_codes().is_empty());
}

#[test]
fn a_fork_waits_until_every_branch_is_known_and_opens_each_once() {
    let mut h = Harness::new();
    let deferred = h.relay_waiting(
        "fork",
        fork(&["sip:bob@backend1.example", "sip:bob@slow.example"]),
    );
    // No branch opened while one of them waits.
    assert!(h.sent_to(BACKEND1).is_empty());
    assert!(h.resume(deferred, slow_resolved).is_none());
    assert_eq!(h.sent_to(BACKEND1).len(), 1);
    assert_eq!(h.sent_to(NEXT).len(), 1);
}

#[test]
fn a_route_through_a_name_being_looked_up_waits_too() {
    let mut h = Harness::new();
    // No uri: the request follows its Route, whose first hop is the name.
    let run = h
        .receive(
            request(
                "INVITE",
                "sip:bob@example.com",
                "z9hG4bK-routed",
                "routed",
                "Route: <sip:slow.example;lr>\n",
            ),
            UAC,
            Protocol::Udp,
        )
        .expect("script runs");
    let decision = script_decision(&run, Action::Relay { uri: None });
    let deferred = h
        .engine
        .handle_decision(h.now, run.ticket, decision, &mut waiting_for_slow)
        .expect("waits");
    h.collect();
    assert!(h.resume(deferred, slow_resolved).is_none());
    let sent = h.sent_to(NEXT);
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].header_named("Route"),
        Some("<sip:slow.example;lr>"),
        "a loose route stays in the Route set"
    );
}

#[test]
fn a_fork_over_two_names_asks_for_both_at_once_and_waits_for_the_last() {
    let mut h = Harness::new();
    let run = h
        .receive(invite("two-names"), UAC, Protocol::Udp)
        .expect("script runs");
    let action = fork(&["sip:bob@slow.example", "sip:bob@late.example"]);
    let decision = script_decision(&run, action);
    let missing = |known: &'static [&'static str]| {
        move |uri: &str| match Uri::parse(uri) {
            Ok(parsed) if known.contains(&parsed.host) => Ok(Hop::new(
                addr(if parsed.host == "slow.example" {
                    NEXT
                } else {
                    BACKEND3
                }),
                Protocol::Udp,
            )),
            Ok(parsed) => Err(HopError::Lookup(parsed.host.to_string())),
            Err(e) => Err(HopError::Unsupported(e.to_string())),
        }
    };
    let deferred = h
        .engine
        .handle_decision(h.now, run.ticket, decision, &mut missing(&[]))
        .expect("waits");
    assert_eq!(deferred.hosts, ["slow.example", "late.example"]);
    // slow.example answers first: the fork still waits for late.example.
    let deferred = h
        .engine
        .handle_decision(
            h.now,
            run.ticket,
            deferred.decision,
            &mut missing(&["slow.example"]),
        )
        .expect("still waits");
    assert_eq!(deferred.hosts, ["late.example"]);
    h.collect();
    assert!(h.sent_to(NEXT).is_empty());
    let both = &["slow.example", "late.example"];
    assert!(h
        .engine
        .handle_decision(h.now, run.ticket, deferred.decision, &mut missing(both))
        .is_none());
    h.collect();
    assert_eq!(h.sent_to(NEXT).len(), 1);
    assert_eq!(h.sent_to(BACKEND3).len(), 1);
}
