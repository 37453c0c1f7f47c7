//! Bounded state: the transaction table's limit, and timers that do not
//! outlive their transactions.

use super::*;

fn limited(max_transactions: usize) -> Harness {
    let mut h = Harness::new();
    h.engine.config.max_transactions = max_transactions;
    h
}

fn options(call_id: &str) -> Message {
    request(
        "OPTIONS",
        "sip:bob@example.com",
        &format!("z9hG4bK-{call_id}"),
        call_id,
        "",
    )
}

#[test]
fn a_full_table_answers_new_invites_503_with_retry_after_and_drops_the_rest() {
    let mut h = limited(2);
    h.relay(invite("one"), Some("sip:backend1.example"));
    h.take();
    assert_eq!(h.engine.active(), 2, "a server and a client transaction");
    // Full: the next INVITE is refused without running the script ...
    assert!(h.receive(invite("two"), UAC, Protocol::Udp).is_none());
    let replies = h.replies();
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].status(), Some(503));
    assert_eq!(replies[0].header_named("Retry-After"), Some("5"));
    // ... and another new request gets nothing at all.
    assert!(h.receive(options("three"), UAC, Protocol::Udp).is_none());
    assert!(h.take().is_empty(), "a dropped request was answered");
    assert_eq!(h.engine.active(), 2, "refusals hold no state");
    // The call in progress goes on: its retransmission is still absorbed
    // and its answer still reaches the caller.
    let sent = {
        h.receive(invite("one"), UAC, Protocol::Udp);
        h.take();
        h.engine.active()
    };
    assert_eq!(sent, 2);
}

#[test]
fn room_in_the_table_lets_new_calls_in_again() {
    let mut h = limited(2);
    h.relay(invite("first"), Some("sip:backend1.example"));
    let sent = h.sent_to(BACKEND1);
    h.take();
    h.respond(answer(&sent[0], 486, &[]), BACKEND1);
    h.take();
    // The 486 ends both transactions once their linger timers run out.
    h.run_for(Duration::from_secs(40), Duration::from_millis(500));
    h.take();
    assert_eq!(h.engine.active(), 0);
    assert_eq!(h.engine.ended(), 0, "ended ones too");
    assert!(h.receive(invite("second"), UAC, Protocol::Udp).is_some());
}

#[test]
fn ended_transactions_leave_no_timers_behind() {
    let mut h = Harness::new();
    // Calls answered at once: each leaves a Timer C (180 s) and Timer A/B
    // entries that nothing will ever want.
    for n in 0..20_000 {
        let call = format!("call-{n}");
        h.relay(invite(&call), Some("sip:backend1.example"));
        let sent = h.sent_to(BACKEND1);
        h.respond(answer(&sent[0], 200, &[]), BACKEND1);
        h.take();
        if n % 100 == 0 {
            // 100 calls a second of virtual time.
            h.advance(Duration::from_secs(1));
            h.take();
        }
    }
    h.run_for(Duration::from_secs(40), Duration::from_secs(1));
    h.take();
    assert_eq!(h.engine.active(), 0, "every transaction ended");
    assert_eq!(h.engine.ended(), 0, "and their timers ended them");
    assert!(
        h.engine.timer_entries() <= TIMER_SWEEP_FLOOR,
        "{} timer entries for no transaction",
        h.engine.timer_entries()
    );
}
