//! Ended transactions (`engine::ended`): they linger for their RFC 3261
//! timers, answer retransmissions and absorb ACKs, count apart from live
//! ones against `limits.max_transactions`, and are bounded by memory,
//! those whose timers end soonest going first.

use super::*;

fn reply_with(h: &mut Harness, msg: Message, code: u16) -> ScriptRun {
    let run = h.receive(msg, UAC, Protocol::Udp).expect("script runs");
    let action = Action::Reply {
        code,
        reason: None,
        headers: Vec::new(),
    };
    h.decide(&run, script_decision(&run, action));
    run
}

fn message(call_id: &str) -> Message {
    request(
        "MESSAGE",
        "sip:bob@example.com",
        &format!("z9hG4bK-{call_id}"),
        call_id,
        "",
    )
}

fn ack_of(call_id: &str) -> Message {
    request(
        "ACK",
        "sip:bob@example.com",
        &format!("z9hG4bK-{call_id}"),
        call_id,
        "",
    )
}

#[test]
fn a_retransmitted_request_is_answered_from_an_ended_transaction() {
    let mut h = Harness::new();
    reply_with(&mut h, message("ended-1"), 200);
    assert_eq!(h.reply_codes(), [200]);
    assert_eq!(
        (h.engine.active(), h.engine.ended()),
        (0, 1),
        "ended, not live"
    );
    h.advance(Duration::from_secs(10));
    assert!(
        h.receive(message("ended-1"), UAC, Protocol::Udp).is_none(),
        "a retransmission runs no script"
    );
    assert_eq!(h.reply_codes(), [200], "it gets the 200 again");
    // Timer J (64·T1 = 32 s) ends it.
    h.advance(Duration::from_secs(23));
    assert_eq!((h.engine.ended(), h.engine.ended_bytes()), (0, 0));
}

#[test]
fn an_ack_for_a_non_2xx_is_absorbed_by_the_ended_invite() {
    let mut h = Harness::new();
    reply_with(&mut h, invite("ended-486"), 486);
    assert_eq!(h.distinct_reply_codes(), [100, 486]);
    assert_eq!((h.engine.active(), h.engine.ended()), (0, 1));
    assert!(h.receive(ack_of("ended-486"), UAC, Protocol::Udp).is_none());
    assert!(h.sent_hops().is_empty(), "the ACK goes nowhere");
    // Confirmed: Timer I (T4 = 5 s) ends it, not Timer H.
    assert_eq!(h.engine.ended(), 1);
    h.advance(Duration::from_millis(5_100));
    assert_eq!(h.engine.ended(), 0);
}

#[test]
fn past_the_bound_the_ended_transaction_due_soonest_goes_first() {
    let mut h = Harness::new();
    // A ends first, due at Timer J (32 s).
    reply_with(&mut h, message("evict-a"), 200);
    h.advance(Duration::from_secs(1));
    // B ends later, due at Timer H (32 s), then its ACK brings it to
    // Timer I (5 s): due before A.
    reply_with(&mut h, invite("evict-b"), 486);
    h.advance(Duration::from_secs(1));
    assert!(h.receive(ack_of("evict-b"), UAC, Protocol::Udp).is_none());
    h.take();
    let both = h.engine.ended_bytes();
    h.engine.config.ended_bytes = both + 10;
    h.advance(Duration::from_secs(1));
    reply_with(&mut h, message("evict-c"), 200);
    assert_eq!(h.engine.ended(), 3, "over the bound until the next tick");
    h.advance(Duration::from_millis(10));
    h.take();
    assert_eq!(h.engine.ended(), 2, "one made room");
    assert!(h.engine.ended_bytes() <= both + 10);
    // B went: its INVITE again is a new request. A is still there.
    assert!(h.receive(message("evict-a"), UAC, Protocol::Udp).is_none());
    assert_eq!(h.reply_codes(), [200], "A answers its retransmission");
    assert!(
        h.receive(invite("evict-b"), UAC, Protocol::Udp).is_some(),
        "B was evicted"
    );
}

#[test]
fn the_bound_holds_and_only_live_transactions_count_against_max_transactions() {
    let mut h = Harness::new();
    h.engine.config.max_transactions = 3;
    reply_with(&mut h, message("size"), 200);
    let one = h.engine.ended_bytes();
    h.engine.config.ended_bytes = 5 * one + one / 2;
    for n in 0..50 {
        reply_with(&mut h, message(&format!("bound-{n}")), 200);
        h.advance(Duration::from_millis(10));
        assert!(h.engine.ended_bytes() <= h.engine.config.ended_bytes);
        assert!(h.engine.ended() <= 5, "{} ended", h.engine.ended());
    }
    assert_eq!(h.engine.active(), 0);
    h.take();
    // Three INVITEs waiting for the script are live: a fourth is refused.
    for n in 0..3 {
        assert!(h
            .receive(invite(&format!("live-{n}")), UAC, Protocol::Udp)
            .is_some());
    }
    assert!(h.receive(invite("live-3"), UAC, Protocol::Udp).is_none());
    assert!(
        h.reply_codes().contains(&503),
        "the table of live ones is full"
    );
}

/// A call relayed to backend 1, which answers `code`; what it sent, and
/// the branch moved to the compact table by the tick after.
fn relayed_and_answered(h: &mut Harness, call_id: &str, code: u16) -> Message {
    h.relay(invite(call_id), Some("sip:bob@backend1.example"));
    let sent = h.sent_to_after_relay();
    h.respond(answer(&sent, code, &[]), BACKEND1);
    h.advance(Duration::from_millis(10));
    sent
}

#[test]
fn an_ended_branch_acks_a_retransmitted_final_and_passes_a_late_2xx_on() {
    let mut h = Harness::new();
    let sent = relayed_and_answered(&mut h, "branch-486", 486);
    assert_eq!(h.engine.ended_branches(), 1, "compact after the tick");
    let acks = h.sent_to(BACKEND1);
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].method_str(), "ACK");
    assert_eq!(h.distinct_reply_codes(), [100, 486]);
    // The final again: the same ACK again, nothing upstream.
    h.respond(answer(&sent, 486, &[]), BACKEND1);
    let again = h.sent_to(BACKEND1);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].as_bytes(), acks[0].as_bytes());
    assert!(h.replies().is_empty(), "a retransmission is absorbed");
    // A 2xx after it (RFC 6026 §7.2) still reaches the caller, and Timer M
    // (64·T1), not Timer D, ends the branch.
    h.respond(answer(&sent, 200, &[]), BACKEND1);
    assert_eq!(h.reply_codes(), [200]);
    h.advance(Duration::from_secs(31));
    h.take();
    h.respond(answer(&sent, 200, &[]), BACKEND1);
    assert_eq!(h.reply_codes(), [200], "Accepted until Timer M");
    h.advance(Duration::from_secs(2));
    assert_eq!(h.engine.ended_branches(), 0);
    h.advance(Duration::from_secs(40));
    assert_eq!((h.engine.ended(), h.engine.ended_bytes()), (0, 0));
}

#[test]
fn a_response_from_elsewhere_does_not_match_an_ended_branch_of_a_strict_group() {
    let mut h = Harness::new();
    let sent = relayed_and_answered(&mut h, "branch-strict", 486);
    h.take();
    h.engine
        .ended_clients
        .values_mut()
        .for_each(|ended| ended.strict_source = true);
    h.respond(answer(&sent, 486, &[]), BACKEND2);
    assert!(h.sent_to(BACKEND1).is_empty(), "no ACK for a stranger");
    h.respond(answer(&sent, 486, &[]), BACKEND1);
    assert_eq!(h.sent_to(BACKEND1).len(), 1);
}

#[test]
fn the_timers_an_ended_branch_no_longer_needs_are_swept() {
    const CALLS: usize = 5_000;
    let mut h = Harness::new();
    for n in 0..CALLS {
        h.relay(
            invite(&format!("swept-{n}")),
            Some("sip:bob@backend1.example"),
        );
        let sent = h.sent_to_after_relay();
        h.respond(answer(&sent, 200, &[]), BACKEND1);
        h.take();
    }
    h.advance(Duration::from_secs(1));
    h.take();
    assert_eq!(
        h.engine.ended(),
        2 * CALLS,
        "each call's INVITE, both sides"
    );
    // Left: Timer L of each server transaction, Timer M of each branch;
    // not Timers B and C (180 s) of the branches.
    assert!(
        h.engine.timer_entries() <= 2 * CALLS,
        "{} timer entries for {CALLS} calls",
        h.engine.timer_entries()
    );
}
