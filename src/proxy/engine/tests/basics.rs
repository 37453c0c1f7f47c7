//! The basics the RFC rules below build on: an INVITE relayed, answered
//! and its retransmission replayed, and Timer A.

use super::*;

// ---------------------------------------------------------------------------
// The basics the bugs below build on
// ---------------------------------------------------------------------------

#[test]
fn an_invite_is_relayed_answered_and_its_retransmission_replayed() {
    let mut h = Harness::new();
    h.relay(invite("basic"), Some("sip:backend1.example"));
    assert_eq!(h.reply_codes(), [100]);
    let sent = h.sent_to(BACKEND1);
    assert_eq!(sent.len(), 1);
    // A retransmitted INVITE gets the 100 again and is not forwarded again.
    assert!(h.receive(invite("basic"), UAC, Protocol::Udp).is_none());
    assert_eq!(h.reply_codes(), [100]);
    assert!(h.sent_to(BACKEND1).is_empty());
    h.respond(answer(&sent[0], 180, &[]), BACKEND1);
    h.respond(answer(&sent[0], 200, &[]), BACKEND1);
    assert_eq!(h.reply_codes(), [180, 200]);
}

#[test]
fn udp_invite_is_retransmitted_with_timer_a_until_it_is_answered() {
    let mut h = Harness::new();
    h.relay(invite("timer-a"), Some("sip:backend1.example"));
    h.take();
    h.run_for(Duration::from_millis(3_600), Duration::from_millis(100));
    // T1 doubling: at 0.5, 1.5 and 3.5 s.
    assert_eq!(h.sent_to(BACKEND1).len(), 3);
}
