//! Failover inside the transaction and passive health reports (DESIGN.md
//! §4.3), on virtual time: which outcomes move a request to the next
//! candidate of its gateway group, and which never do.

use super::*;
use crate::proxy::decision::{FailoverPolicy, GatewayRelay, RelayCandidate, RelayFailure};

const BACKENDS: [(&str, &str); 3] = [
    ("sip:backend1.example", BACKEND1),
    ("sip:backend2.example", BACKEND2),
    ("sip:backend3.example", BACKEND3),
];

/// A relay to the group "pool", its candidates in `order` (indexes into
/// BACKENDS), as `gateway.select` ranks them.
pub(super) fn gateway(order: &[usize], policy: FailoverPolicy) -> GatewayRelay {
    GatewayRelay {
        group: Arc::from("pool"),
        policy: Arc::new(policy),
        candidates: order
            .iter()
            .map(|&i| RelayCandidate {
                uri: Arc::from(BACKENDS[i].0),
                hop: Hop::new(addr(BACKENDS[i].1), Protocol::Udp),
                report_success: false,
                capacity: None,
            })
            .collect(),
    }
}

impl Harness {
    /// The failover events so far, taken: `(failed, next)`.
    fn failovers(&mut self) -> Vec<(String, String, RelayFailure)> {
        let (mine, rest): (Vec<_>, Vec<_>) = self
            .take()
            .into_iter()
            .partition(|o| matches!(o, Output::Failover(_)));
        self.out = rest;
        mine.into_iter()
            .filter_map(|o| match o {
                Output::Failover(event) => Some((
                    event.failed.to_string(),
                    event.next.to_string(),
                    event.failure,
                )),
                _ => None,
            })
            .collect()
    }
}

fn invites(sent: &[Message]) -> usize {
    sent.iter()
        .filter(|m| m.method() == Some(Method::Invite))
        .count()
}

#[test]
fn a_silent_candidate_fails_over_to_the_next_in_ranking_order() {
    let mut h = Harness::new();
    h.relay_to_gateway(
        invite("silent"),
        gateway(&[1, 0, 2], FailoverPolicy::default()),
    );
    h.one_sent_to(BACKEND2);
    // Timer A retransmits to the first choice until the silence limit.
    h.run_for(Duration::from_millis(990), Duration::from_millis(10));
    assert_eq!(invites(&h.sent_to(BACKEND2)), 1, "one retransmission at T1");
    assert!(h.sent_to(BACKEND1).is_empty());
    h.advance(Duration::from_millis(10));
    // 1 s of silence: the next in ranking order gets the call.
    let second = h.one_sent_to(BACKEND1);
    assert_eq!(
        h.failovers(),
        [(
            "sip:backend2.example".to_string(),
            "sip:backend1.example".to_string(),
            RelayFailure::NoResponse
        )]
    );
    assert_eq!(
        h.health(),
        [(
            "sip:backend2.example".to_string(),
            Some(RelayFailure::NoResponse)
        )]
    );
    // The given-up branch is still retransmitted, to get the 1xx it needs
    // before it can be CANCELed (§9.1).
    h.run_for(Duration::from_millis(600), Duration::from_millis(10));
    assert_eq!(invites(&h.sent_to(BACKEND2)), 1, "Timer A at 1.5 s");
    h.respond(answer(&second, 180, &[]), BACKEND1);
    h.respond(answer(&second, 200, &[]), BACKEND1);
    assert_eq!(h.reply_codes(), [100, 180, 200]);
    assert!(h.sent_to(BACKEND3).is_empty(), "the call was taken");
}

#[test]
fn a_503_fails_over_and_the_caller_sees_only_the_answer() {
    let mut h = Harness::new();
    h.relay_to_gateway(
        invite("busy-503"),
        gateway(&[0, 1, 2], FailoverPolicy::default()),
    );
    let first = h.one_sent_to(BACKEND1);
    h.respond(answer(&first, 503, &[("Retry-After", "120")]), BACKEND1);
    // The 503 is ACKed hop by hop and the next candidate gets the INVITE.
    let to_first = h.sent_to(BACKEND1);
    assert_eq!(to_first.len(), 1);
    assert_eq!(to_first[0].method(), Some(Method::Ack));
    let second = h.one_sent_to(BACKEND2);
    assert_eq!(second.method(), Some(Method::Invite));
    let reports: Vec<_> = h
        .take()
        .into_iter()
        .filter_map(|o| match o {
            Output::Health(report) => Some(report.failure),
            _ => None,
        })
        .collect();
    assert_eq!(
        reports,
        [Some((
            RelayFailure::Status(503),
            Some(Duration::from_secs(120))
        ))]
    );
    h.respond(answer(&second, 200, &[]), BACKEND2);
    assert_eq!(h.reply_codes(), [200], "no 503 or 500 went upstream");
}

#[test]
fn every_candidate_is_tried_once_then_the_caller_gets_500() {
    let mut h = Harness::new();
    h.relay_to_gateway(
        invite("all-503"),
        gateway(&[2, 0, 1], FailoverPolicy::default()),
    );
    for hop in [BACKEND3, BACKEND1, BACKEND2] {
        let sent = h.sent_to(hop);
        assert_eq!(invites(&sent), 1, "{hop} tried once");
        let invite = sent
            .into_iter()
            .find(|m| m.method() == Some(Method::Invite));
        h.respond(answer(&invite.expect("invite"), 503, &[]), hop);
    }
    // §16.7 step 6: a 503 from the backends becomes a 500 from us.
    assert_eq!(h.reply_codes(), [100, 500]);
    h.run_for(Duration::from_secs(2), Duration::from_millis(100));
    for hop in [BACKEND1, BACKEND2, BACKEND3] {
        assert_eq!(invites(&h.sent_to(hop)), 0, "{hop} not tried again");
    }
}

#[test]
fn max_attempts_bounds_the_branches() {
    let mut h = Harness::new();
    let policy = FailoverPolicy {
        max_attempts: 2,
        ..FailoverPolicy::default()
    };
    h.relay_to_gateway(invite("max-attempts"), gateway(&[0, 1, 2], policy));
    let first = h.one_sent_to(BACKEND1);
    h.respond(answer(&first, 503, &[]), BACKEND1);
    let second = h.sent_to(BACKEND2);
    h.respond(answer(&second[0], 503, &[]), BACKEND2);
    assert_eq!(h.reply_codes(), [100, 500]);
    assert!(h.sent_to(BACKEND3).is_empty());
}

#[test]
fn other_finals_are_not_failed_over() {
    for code in [302, 404, 486, 500, 603] {
        let mut h = Harness::new();
        h.relay_to_gateway(invite("final"), gateway(&[0, 1], FailoverPolicy::default()));
        let first = h.one_sent_to(BACKEND1);
        h.respond(answer(&first, code, &[]), BACKEND1);
        assert_eq!(h.reply_codes(), [100, code], "{code} goes upstream");
        assert!(h.sent_to(BACKEND2).is_empty(), "{code} is not failed over");
        assert!(h.failovers().is_empty());
    }
}

#[test]
fn listed_codes_fail_over() {
    let mut h = Harness::new();
    let policy = FailoverPolicy {
        on_codes: vec![503, 480],
        ..FailoverPolicy::default()
    };
    h.relay_to_gateway(invite("on-codes"), gateway(&[0, 1], policy));
    let first = h.one_sent_to(BACKEND1);
    h.respond(answer(&first, 480, &[]), BACKEND1);
    assert_eq!(invites(&h.sent_to(BACKEND2)), 1);
}

#[test]
fn no_failover_once_a_branch_rang() {
    let mut h = Harness::new();
    h.relay_to_gateway(invite("rang"), gateway(&[0, 1], FailoverPolicy::default()));
    let first = h.one_sent_to(BACKEND1);
    h.respond(answer(&first, 180, &[]), BACKEND1);
    h.respond(answer(&first, 503, &[]), BACKEND1);
    assert_eq!(h.reply_codes(), [100, 180, 500]);
    assert!(
        invites(&h.sent_to(BACKEND2)) == 0,
        "the call had been taken"
    );
}

#[test]
fn no_failover_after_the_callers_cancel() {
    let mut h = Harness::new();
    h.relay_to_gateway(
        invite("cancelled"),
        gateway(&[0, 1], FailoverPolicy::default()),
    );
    let first = h.one_sent_to(BACKEND1);
    let cancel = cancel_of("cancelled");
    assert!(h.receive(cancel, UAC, Protocol::Udp).is_none());
    // The CANCEL gets its 200 and, the branch never having answered, the
    // INVITE its 487 at once rather than after Timer B.
    assert_eq!(h.distinct_reply_codes(), [100, 200, 487]);
    // The silence limit passes after the CANCEL: no new branch. The
    // given-up branch is still retransmitted (its 1xx may have been lost,
    // and only a 1xx lets us CANCEL it).
    h.run_for(Duration::from_secs(2), Duration::from_millis(10));
    assert!(h.sent_to(BACKEND2).is_empty());
    assert!(h.failovers().is_empty());
    let to_first = h.sent_to(BACKEND1);
    assert_eq!(invites(&to_first), 2, "Timer A at 0.5 s and 1.5 s");
    // Should it wake up and ring, it is CANCELed, and the caller hears no more.
    h.respond(answer(&first, 180, &[]), BACKEND1);
    let to_first = h.sent_to(BACKEND1);
    assert_eq!(to_first.len(), 1);
    assert_eq!(to_first[0].method(), Some(Method::Cancel));
    assert!(
        h.reply_codes().iter().all(|&code| code == 487),
        "only 487 retransmissions"
    );
}

#[test]
fn a_100_trying_waits_for_timer_b_then_fails_over() {
    let mut h = Harness::new();
    h.relay_to_gateway(
        invite("trying"),
        gateway(&[0, 1], FailoverPolicy::default()),
    );
    let first = h.one_sent_to(BACKEND1);
    h.respond(answer(&first, 100, &[]), BACKEND1);
    h.run_for(Duration::from_secs(31), Duration::from_millis(100));
    assert!(h.sent_to(BACKEND2).is_empty(), "100 extends the wait");
    h.run_for(Duration::from_millis(1_100), Duration::from_millis(100));
    assert_eq!(invites(&h.sent_to(BACKEND2)), 1, "Timer B fails over");
    // The given-up branch had answered 100, so it is CANCELed.
    let to_first = h.sent_to(BACKEND1);
    assert!(to_first.iter().any(|m| m.method() == Some(Method::Cancel)));
}

#[test]
fn a_non_invite_fails_over_and_never_gets_408() {
    let mut h = Harness::new();
    let register = request(
        "REGISTER",
        "sip:example.com",
        "z9hG4bK-reg-fo",
        "reg-fo",
        "",
    );
    h.relay_to_gateway(register, gateway(&[0, 1], FailoverPolicy::default()));
    h.one_sent_to(BACKEND1);
    h.run_for(Duration::from_millis(1_000), Duration::from_millis(10));
    let second = h.sent_to(BACKEND2);
    assert_eq!(second.len(), 1);
    h.respond(answer(&second[0], 200, &[]), BACKEND2);
    assert_eq!(h.reply_codes(), [200]);
}

#[test]
fn with_failover_off_a_503_is_reported_but_not_failed_over() {
    let mut h = Harness::new();
    let policy = FailoverPolicy {
        enabled: false,
        ..FailoverPolicy::default()
    };
    h.relay_to_gateway(invite("off"), gateway(&[0, 1], policy));
    let first = h.one_sent_to(BACKEND1);
    h.respond(answer(&first, 503, &[]), BACKEND1);
    assert_eq!(
        h.health(),
        [(
            "sip:backend1.example".to_string(),
            Some(RelayFailure::Status(503))
        )]
    );
    assert_eq!(h.reply_codes(), [100, 500]);
    assert!(h.sent_to(BACKEND2).is_empty());
}

#[test]
fn a_success_is_reported_only_when_the_group_asked() {
    let mut h = Harness::new();
    let mut relay = gateway(&[0, 1], FailoverPolicy::default());
    relay.candidates[0].report_success = true;
    h.relay_to_gateway(invite("asked"), relay);
    let first = h.one_sent_to(BACKEND1);
    h.respond(answer(&first, 180, &[]), BACKEND1);
    h.respond(answer(&first, 200, &[]), BACKEND1);
    assert_eq!(h.health(), [("sip:backend1.example".to_string(), None)]);

    let mut h = Harness::new();
    h.relay_to_gateway(invite("quiet"), gateway(&[0, 1], FailoverPolicy::default()));
    let first = h.one_sent_to(BACKEND1);
    h.respond(answer(&first, 200, &[]), BACKEND1);
    assert!(h.health().is_empty(), "the usual call sends no report");
}

#[test]
fn on_failure_gets_the_best_response_and_may_relay_again() {
    let mut h = Harness::new();
    h.hold_failures = true;
    let policy = FailoverPolicy {
        enabled: false,
        ..FailoverPolicy::default()
    };
    h.relay_to_gateway(invite("hook"), gateway(&[0, 1], policy));
    let first = h.one_sent_to(BACKEND1);
    h.respond(answer(&first, 486, &[]), BACKEND1);
    let run = h.failure_runs.pop().expect("on_failure runs");
    assert_eq!(run.response.as_ref().and_then(Message::status), Some(486));
    assert_eq!(
        h.reply_codes(),
        [100],
        "nothing final before the hook decides"
    );
    // The hook sends the call elsewhere; that branch answers.
    let decision = Decision {
        action: Some(Action::Relay {
            uri: Some("sip:backend3.example".into()),
        }),
        ..Decision::default()
    };
    h.engine
        .handle_decision(h.now, run.ticket, decision, &mut hop_of);
    h.collect();
    let third = h.one_sent_to(BACKEND3);
    h.respond(answer(&third, 200, &[]), BACKEND3);
    assert_eq!(h.reply_codes(), [200]);
}

#[test]
fn on_failure_doing_nothing_sends_the_best_response() {
    let mut h = Harness::new();
    h.hold_failures = true;
    h.relay(invite("hook-none"), Some("sip:backend1.example"));
    let first = h.one_sent_to(BACKEND1);
    h.respond(answer(&first, 404, &[]), BACKEND1);
    let run = h.failure_runs.pop().expect("on_failure runs");
    h.engine
        .handle_decision(h.now, run.ticket, Decision::default(), &mut hop_of);
    h.collect();
    assert_eq!(h.reply_codes(), [100, 404]);
}

#[test]
fn on_failure_gets_none_after_a_timeout() {
    let mut h = Harness::new();
    h.hold_failures = true;
    h.relay(invite("hook-timeout"), Some("sip:backend1.example"));
    h.run_for(Duration::from_secs(33), Duration::from_millis(100));
    let run = h.failure_runs.pop().expect("on_failure runs");
    assert!(run.response.is_none());
    let decision = Decision {
        action: Some(Action::Reply {
            code: 480,
            reason: None,
            headers: Vec::new(),
        }),
        ..Decision::default()
    };
    h.engine
        .handle_decision(h.now, run.ticket, decision, &mut hop_of);
    h.collect();
    assert_eq!(h.distinct_reply_codes(), [100, 480]);
}

#[test]
fn a_draining_proxy_refuses_new_invites_and_options_with_retry_after() {
    let mut h = Harness::new();
    for method in ["INVITE", "OPTIONS"] {
        let msg = request(method, "sip:proxy.example", "z9hG4bK-drain", "drain", "");
        h.engine.handle_request(h.now, msg, addr(UAC), 0, 1, true);
        h.collect();
        let replies = h.replies();
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].status(), Some(503), "{method}");
        assert_eq!(
            replies[0].header_named("Retry-After"),
            Some("7"),
            "{method}"
        );
    }
}

#[test]
fn a_refused_tcp_connection_fails_over_at_once() {
    let mut h = Harness::new();
    let mut relay = gateway(&[0, 1], FailoverPolicy::default());
    relay.candidates[0].hop.protocol = Protocol::Tcp;
    h.relay_to_gateway(invite("refused"), relay);
    h.one_sent_to(BACKEND1);
    // Another hop's failure changes nothing.
    h.engine
        .handle_link_failure(h.now, &Hop::new(addr(BACKEND3), Protocol::Tcp));
    h.collect();
    assert!(h.sent_to(BACKEND2).is_empty());
    h.engine
        .handle_link_failure(h.now, &Hop::new(addr(BACKEND1), Protocol::Tcp));
    h.collect();
    assert_eq!(
        invites(&h.sent_to(BACKEND2)),
        1,
        "no wait for the silence limit"
    );
    assert_eq!(
        h.health(),
        [(
            "sip:backend1.example".to_string(),
            Some(RelayFailure::Transport)
        )]
    );
}

#[test]
fn a_late_ringing_from_a_given_up_branch_is_cancelled_not_forwarded() {
    let mut h = Harness::new();
    h.relay_to_gateway(
        invite("late-180"),
        gateway(&[0, 1, 2], FailoverPolicy::default()),
    );
    let first = h.one_sent_to(BACKEND1);
    h.run_for(Duration::from_millis(1_000), Duration::from_millis(10));
    let second = h.sent_to(BACKEND2);
    assert_eq!(invites(&second), 1);
    h.take();
    // The first wakes up and rings: it is CANCELed, the caller hears nothing.
    h.respond(answer(&first, 180, &[]), BACKEND1);
    let to_first = h.sent_to(BACKEND1);
    assert_eq!(to_first.len(), 1);
    assert_eq!(to_first[0].method(), Some(Method::Cancel));
    assert!(h.replies().is_empty(), "no 180 from the given-up branch");
    // It did not take the call: the second's 503 still fails over.
    h.respond(answer(&second[0], 503, &[]), BACKEND2);
    assert_eq!(invites(&h.sent_to(BACKEND3)), 1);
}

#[test]
fn a_100_is_not_a_success_for_passive_health() {
    let mut h = Harness::new();
    let policy = FailoverPolicy {
        enabled: false,
        ..FailoverPolicy::default()
    };
    let mut relay = gateway(&[0, 1], policy);
    relay.candidates[0].report_success = true;
    h.relay_to_gateway(invite("trying-then-503"), relay);
    let first = h.one_sent_to(BACKEND1);
    h.respond(answer(&first, 100, &[]), BACKEND1);
    h.respond(answer(&first, 503, &[]), BACKEND1);
    assert_eq!(
        h.health(),
        [(
            "sip:backend1.example".to_string(),
            Some(RelayFailure::Status(503))
        )],
        "only the failure, once"
    );
}

#[test]
fn a_dead_link_to_the_last_candidate_ends_the_call_at_once() {
    let mut h = Harness::new();
    let mut relay = gateway(&[0], FailoverPolicy::default());
    relay.candidates[0].hop.protocol = Protocol::Tcp;
    h.relay_to_gateway(invite("last-link"), relay);
    h.one_sent_to(BACKEND1);
    h.take();
    let hop = Hop::new(addr(BACKEND1), Protocol::Tcp);
    h.engine.handle_link_failure(h.now, &hop);
    h.collect();
    // §16.9: a transport error is a 503, which goes upstream as a 500.
    assert_eq!(h.reply_codes(), [500], "at once, not a 408 after Timer B");
    assert_eq!(h.health().len(), 1, "reported once");
    // Its silence limit and Timer B change nothing more.
    h.run_for(Duration::from_secs(40), Duration::from_millis(100));
    assert!(h.health().is_empty());
}

#[test]
fn a_cancel_after_a_provisional_answer_from_on_failure_gets_487() {
    let mut h = Harness::new();
    h.hold_failures = true;
    h.relay(invite("hook-1xx"), Some("sip:backend1.example"));
    let first = h.one_sent_to(BACKEND1);
    h.respond(answer(&first, 486, &[]), BACKEND1);
    let run = h.failure_runs.pop().expect("on_failure runs");
    let ringing = Decision {
        action: Some(Action::Reply {
            code: 180,
            reason: None,
            headers: Vec::new(),
        }),
        ..Decision::default()
    };
    h.engine
        .handle_decision(h.now, run.ticket, ringing, &mut hop_of);
    h.collect();
    h.take();
    let cancel = cancel_of("hook-1xx");
    assert!(h.receive(cancel, UAC, Protocol::Udp).is_none());
    assert_eq!(h.distinct_reply_codes(), [200, 487]);
}
