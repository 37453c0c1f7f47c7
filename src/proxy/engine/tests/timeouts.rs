//! No request is left hanging and no transaction leaks: branches that
//! time out, no 408 to a non-INVITE (RFC 4320), and CANCELed branches
//! that never answer.

use super::*;

// ---------------------------------------------------------------------------
// Bugs 5 and 6: no request is left hanging, and no transaction leaks
// ---------------------------------------------------------------------------

#[test]
fn an_invite_the_script_takes_no_action_on_gets_a_500() {
    let mut h = Harness::new();
    let run = h.receive(invite("no-action"), UAC, Protocol::Udp).unwrap();
    h.decide(&run, Decision::default());
    assert_eq!(h.reply_codes(), [100, 500]);
    // A non-INVITE with no action is dropped and leaves nothing behind.
    let options = request("OPTIONS", "sip:bob@example.com", "z9hG4bK-opt", "opt", "");
    let run = h.receive(options, UAC, Protocol::Udp).unwrap();
    h.decide(&run, Decision::default());
    assert!(h.replies().is_empty());
    h.run_for(Duration::from_secs(40), Duration::from_secs(1));
    assert_eq!(h.engine.active(), 0);
    assert_eq!(h.engine.ended(), 0, "ended ones too");
}

#[test]
fn a_provisional_reply_alone_does_not_leak_the_transaction() {
    let mut h = Harness::new();
    let run = h.receive(invite("ringing"), UAC, Protocol::Udp).unwrap();
    let decision = script_decision(
        &run,
        Action::Reply {
            code: 180,
            reason: None,
            headers: Vec::new(),
        },
    );
    h.decide(&run, decision);
    assert_eq!(h.reply_codes(), [100, 180]);
    h.run_for(Duration::from_secs(70), Duration::from_millis(500));
    assert_eq!(
        h.distinct_reply_codes(),
        [408],
        "the caller is not left waiting"
    );
    h.receive(
        request(
            "ACK",
            "sip:bob@example.com",
            "z9hG4bK-ringing",
            "ringing",
            "",
        ),
        UAC,
        Protocol::Udp,
    );
    h.run_for(Duration::from_secs(10), Duration::from_secs(1));
    assert_eq!(h.engine.active(), 0, "every transaction ended");
    assert_eq!(h.engine.ended(), 0, "and their timers ended them");
}

// ---------------------------------------------------------------------------
// Bug 7: no 408 to a non-INVITE (RFC 4320 §4.2)
// ---------------------------------------------------------------------------

#[test]
fn a_non_invite_branch_timing_out_sends_no_408() {
    let mut h = Harness::new();
    let options = request(
        "OPTIONS",
        "sip:bob@example.com",
        "z9hG4bK-quiet",
        "quiet",
        "",
    );
    h.relay(options, Some("sip:backend1.example"));
    h.run_for(Duration::from_secs(40), Duration::from_millis(500));
    assert!(h.replies().is_empty(), "a response went upstream");
    assert_eq!(h.engine.active(), 0);
    assert_eq!(h.engine.ended(), 0, "ended ones too");
}

#[test]
fn an_invite_branch_timing_out_counts_as_408() {
    let mut h = Harness::new();
    h.relay(invite("quiet-invite"), Some("sip:backend1.example"));
    h.take();
    h.run_for(Duration::from_secs(33), Duration::from_millis(500));
    assert_eq!(h.distinct_reply_codes(), [408]);
}

// ---------------------------------------------------------------------------
// Bug 10: a CANCELed branch that never answers is given up after 64·T1
// ---------------------------------------------------------------------------

#[test]
fn a_cancelled_branch_that_never_answers_ends_within_64_t1() {
    let mut h = Harness::new();
    h.relay(invite("deaf"), Some("sip:backend1.example"));
    let sent = h.sent_to(BACKEND1);
    h.respond(answer(&sent[0], 180, &[]), BACKEND1);
    let cancel = cancel_of("deaf");
    h.receive(cancel, UAC, Protocol::Udp);
    assert_eq!(h.reply_codes(), [100, 180, 200]);
    h.run_for(Duration::from_secs(33), Duration::from_millis(500));
    assert_eq!(
        h.distinct_reply_codes(),
        [487],
        "the caller heard nothing for Timer C"
    );
}
