//! Responses going upstream: a non-INVITE 2xx at once, late 2xx
//! retransmissions, response selection and Timer C, and where TCP
//! responses are sent.

use super::*;

// ---------------------------------------------------------------------------
// Bug 2: a non-INVITE 2xx in a fork goes upstream at once (§16.7 step 5)
// ---------------------------------------------------------------------------

#[test]
fn a_non_invite_2xx_is_forwarded_without_waiting_for_other_branches() {
    let mut h = Harness::new();
    let message = request("MESSAGE", "sip:bob@example.com", "z9hG4bK-msg", "msg", "");
    let (first, second) = h.fork_to_both(message, Protocol::Udp);
    assert_eq!(second.len(), 1);
    h.respond(answer(&first[0], 200, &[]), BACKEND1);
    assert_eq!(h.reply_codes(), [200], "the 2xx did not wait for backend 2");
}

// ---------------------------------------------------------------------------
// Bug 11: a 2xx retransmission after Timer L still goes upstream
// ---------------------------------------------------------------------------

#[test]
fn a_late_2xx_retransmission_of_a_forked_call_is_forwarded() {
    let mut h = Harness::new();
    late_2xx_retransmission(&mut h, Protocol::Udp);
    let forwarded = h.sent_to(UAC);
    assert_eq!(forwarded.len(), 1, "the 2xx retransmission was dropped");
    assert_eq!(forwarded[0].status(), Some(200));
}

// ---------------------------------------------------------------------------
// Bug 12: response selection and Timer C
// ---------------------------------------------------------------------------

#[test]
fn challenges_are_merged_and_preferred_over_other_4xx() {
    let mut h = Harness::new();
    let run = h.receive(invite("auth"), UAC, Protocol::Udp).unwrap();
    let targets = [
        "sip:bob@backend1.example",
        "sip:bob@backend2.example",
        "sip:bob@backend3.example",
    ];
    h.decide(&run, script_decision(&run, fork(&targets)));
    let one = h.sent_to(BACKEND1);
    let two = h.sent_to(BACKEND2);
    let three = h.sent_to(BACKEND3);
    h.respond(answer(&one[0], 486, &[]), BACKEND1);
    h.respond(
        answer(
            &two[0],
            407,
            &[("Proxy-Authenticate", "Digest realm=\"a\", nonce=\"1\"")],
        ),
        BACKEND2,
    );
    h.respond(
        answer(
            &three[0],
            401,
            &[("WWW-Authenticate", "Digest realm=\"b\", nonce=\"2\"")],
        ),
        BACKEND3,
    );
    let replies = h.replies();
    let last = replies.last().expect("a final response");
    assert_eq!(last.status(), Some(407));
    assert_eq!(
        last.header_named("Proxy-Authenticate"),
        Some("Digest realm=\"a\", nonce=\"1\"")
    );
    assert_eq!(
        last.header_named("WWW-Authenticate"),
        Some("Digest realm=\"b\", nonce=\"2\"")
    );
    assert_eq!(
        last.header_values(HeaderName::Via).count(),
        1,
        "our Via is gone"
    );
}

/// An INVITE branch answers `first` after 1 s and `second` after 100 s;
/// returns the seconds since `second` at which Timer C CANCELed the branch.
fn timer_c_fires_after(first: u16, second: u16) -> u64 {
    let mut h = Harness::new();
    h.relay(
        invite(&format!("timer-c-{first}-{second}")),
        Some("sip:backend1.example"),
    );
    let sent = h.sent_to(BACKEND1);
    h.advance(Duration::from_secs(1));
    h.respond(answer(&sent[0], first, &[]), BACKEND1);
    h.run_for(Duration::from_secs(99), Duration::from_secs(1));
    h.respond(answer(&sent[0], second, &[]), BACKEND1);
    h.take();
    for elapsed in 1..=300 {
        h.advance(Duration::from_secs(1));
        if h.sent_to(BACKEND1)
            .iter()
            .any(|m| m.method_str() == "CANCEL")
        {
            return elapsed;
        }
    }
    panic!("Timer C never fired");
}

#[test]
fn a_100_trying_does_not_reset_timer_c() {
    // 180 s after the 180, that is 81 s after the late 100.
    assert_eq!(timer_c_fires_after(180, 100), 81);
}

#[test]
fn a_180_resets_timer_c() {
    assert_eq!(timer_c_fires_after(100, 180), 180);
}

#[test]
fn an_invite_held_by_180s_ends_at_its_max_lifetime_with_408_and_cancel() {
    let mut h = Harness::new();
    h.engine.config.timers.max_invite_lifetime = Duration::from_secs(100);
    h.relay(invite("held"), Some("sip:backend1.example"));
    let sent = h.sent_to(BACKEND1);
    // A 180 every 30 s would push Timer C (180 s) back for ever.
    let mut cancelled_at = None;
    for second in 1..=200u64 {
        h.advance(Duration::from_secs(1));
        if second % 30 == 0 {
            h.respond(answer(&sent[0], 180, &[]), BACKEND1);
        }
        let cancels = h
            .sent_to(BACKEND1)
            .iter()
            .filter(|m| m.method_str() == "CANCEL")
            .count();
        if cancels > 0 {
            cancelled_at = Some(second);
            break;
        }
    }
    assert_eq!(
        cancelled_at,
        Some(100),
        "CANCELed downstream at the lifetime"
    );
    // The CANCEL's 200 and the INVITE's 487 come back: the caller has 408.
    h.run_for(Duration::from_secs(40), Duration::from_secs(1));
    let codes = h.distinct_reply_codes();
    assert!(codes.contains(&408), "{codes:?}");
}

#[test]
fn a_6xx_cancels_the_other_branches_and_wins() {
    let mut h = Harness::new();
    let (one, two) = h.fork_to_both(invite("decline"), Protocol::Udp);
    h.respond(answer(&two[0], 180, &[]), BACKEND2);
    h.respond(answer(&one[0], 603, &[]), BACKEND1);
    let to_two = h.sent_to(BACKEND2);
    assert!(to_two.iter().any(|m| m.method_str() == "CANCEL"));
    h.respond(answer(&two[0], 487, &[]), BACKEND2);
    assert_eq!(h.reply_codes(), [100, 180, 603]);
}

#[test]
fn a_lone_503_becomes_a_500() {
    let mut h = Harness::new();
    h.relay(invite("unavailable"), Some("sip:backend1.example"));
    let sent = h.sent_to(BACKEND1);
    h.respond(answer(&sent[0], 503, &[]), BACKEND1);
    assert_eq!(h.reply_codes(), [100, 500]);
}

// ---------------------------------------------------------------------------
// Bug 14: responses over TCP can find their way back
// ---------------------------------------------------------------------------

#[test]
fn tcp_responses_name_the_sent_by_port_to_reconnect_to() {
    let mut h = Harness::new();
    let msg = edited(
        &invite("tcp"),
        "SIP/2.0/UDP 198.51.100.10:5060",
        "SIP/2.0/TCP 198.51.100.10:5070",
    );
    h.receive(msg, "198.51.100.10:40001", Protocol::Tcp)
        .unwrap();
    let dests: Vec<SocketAddr> = h
        .take()
        .into_iter()
        .filter_map(|o| match o {
            Output::Reply { dest, .. } => Some(dest),
            _ => None,
        })
        .collect();
    assert_eq!(dests, [addr("198.51.100.10:5070")]);
}

#[test]
fn timer_c_waits_in_the_queue_only_for_a_branch_still_proceeding_at_timer_b() {
    let mut h = Harness::new();
    let run = h.relay(invite("no-timer-c"), Some("sip:backend1.example"));
    let sent = h.sent_to(BACKEND1);
    h.respond(answer(&sent[0], 200, &[]), BACKEND1);
    drop(run);
    assert!(
        !h.engine.timer_kinds().contains(&TimerKind::C),
        "an answered branch leaves no Timer C minutes ahead"
    );
    // A branch still ringing at Timer B gets its Timer C then, due 185 s
    // after its 180 as ever (a_180_resets_timer_c).
    h.relay(invite("ringing"), Some("sip:backend1.example"));
    let sent = h.sent_to(BACKEND1);
    h.respond(answer(&sent[0], 180, &[]), BACKEND1);
    h.advance(Duration::from_secs(33));
    assert!(h.engine.timer_kinds().contains(&TimerKind::C));
}
