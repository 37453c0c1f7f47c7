//! A script that answers too late (`Engine::script_timed_out`): the request
//! gets what the script's failure would give it, once, and the late
//! decision changes nothing.

use super::*;

const TIMEOUT: Duration = Duration::from_millis(200);

#[test]
fn a_request_whose_decision_is_late_gets_500_once_and_the_decision_is_ignored() {
    let mut h = Harness::new();
    let run = h
        .receive(invite("late"), UAC, Protocol::Udp)
        .expect("script runs");
    assert!(h.engine.awaits_decision(run.ticket));
    h.engine.script_timed_out(h.now, run.ticket, TIMEOUT);
    h.collect();
    assert_eq!(h.reply_codes(), [100, 500]);
    assert!(!h.engine.awaits_decision(run.ticket));
    // The decision comes after all: nothing is relayed, nothing answered.
    h.decide(&run, script_decision(&run, Action::Relay { uri: None }));
    assert!(h.sent_to(BACKEND1).is_empty());
    assert!(h.reply_codes().is_empty());
    // A second timeout of the same run does nothing either.
    h.engine.script_timed_out(h.now, run.ticket, TIMEOUT);
    h.collect();
    assert!(h.reply_codes().is_empty());
}

#[test]
fn a_late_failure_handler_leaves_the_best_response_not_a_500() {
    let mut h = Harness::new();
    h.hold_failures = true;
    h.relay(invite("late-hook"), Some("sip:backend1.example"));
    let sent = h.sent_to_after_relay();
    h.respond(answer(&sent, 486, &[]), BACKEND1);
    let run = h.failure_runs.pop().expect("on_failure runs");
    h.take();
    h.engine.script_timed_out(h.now, run.ticket, TIMEOUT);
    h.collect();
    assert_eq!(h.reply_codes(), [486]);
}

#[test]
fn a_late_ack_or_a_cancelled_request_gets_no_500() {
    let mut h = Harness::new();
    // An ACK for a 2xx runs the script and has no transaction to answer.
    let ack = request(
        "ACK",
        "sip:bob@example.com",
        "z9hG4bK-late-ack",
        "late-ack",
        "",
    );
    let run = h
        .receive(ack, UAC, Protocol::Udp)
        .expect("the script routes an ACK");
    h.engine.script_timed_out(h.now, run.ticket, TIMEOUT);
    h.collect();
    assert!(h.replies().is_empty());
    // An INVITE CANCELed while its handler runs has had its 487.
    let run = h
        .receive(invite("late-cancel"), UAC, Protocol::Udp)
        .expect("script runs");
    h.engine
        .handle_request(h.now, cancel_of("late-cancel"), addr(UAC), 0, 1, false);
    h.collect();
    assert_eq!(h.distinct_reply_codes(), [100, 200, 487]);
    h.engine.script_timed_out(h.now, run.ticket, TIMEOUT);
    h.collect();
    assert!(h.reply_codes().is_empty(), "no 500 after the 487");
}
