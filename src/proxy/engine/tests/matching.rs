//! Which transaction a message belongs to: responses matched by branch
//! token, loop hash, method and source; transaction keys and CANCELs
//! (§17.2.3); the ACK of a 2xx routed and the ACK of a non-2xx absorbed.

use super::*;

// ---------------------------------------------------------------------------
// Bug 1: responses are matched by their branch token, loop hash, method and
// source, and tokens cannot be guessed
// ---------------------------------------------------------------------------

#[test]
fn forged_responses_do_not_reach_the_caller() {
    let mut h = Harness::new();
    h.relay(invite("forged"), Some("sip:backend1.example"));
    let sent = h.sent_to_after_relay();
    h.take();
    let real = answer(&sent, 486, &[]);

    // A guessed sequential branch, as the old ids were.
    let guessed = build::response(
        &sent,
        503,
        "Service Unavailable",
        Some("x"),
        &[("Retry-After", "999999999")],
    );
    let guessed = String::from_utf8(guessed).unwrap();
    let our_branch = sent.top_via().unwrap().branch().unwrap().to_string();
    let forged = guessed.replace(&our_branch, "z9hG4bK0000000000000000.0000000000000003");
    h.respond(sip::parse(Bytes::from(forged)).unwrap(), BACKEND1);
    // The right branch and source, but the wrong CSeq method.
    let wrong_method = String::from_utf8(build::response(&sent, 486, "Busy Here", Some("y"), &[]))
        .unwrap()
        .replace("CSeq: 1 INVITE", "CSeq: 1 BYE");
    h.respond(sip::parse(Bytes::from(wrong_method)).unwrap(), BACKEND1);
    // Our token with another request's loop hash.
    let (loop_hash, token) = branch::parse_client_branch(&our_branch).unwrap();
    let other_loop = branch::client_branch(loop_hash ^ 1, token);
    let relooped = String::from_utf8(build::response(&sent, 486, "Busy Here", Some("z"), &[]))
        .unwrap()
        .replace(&our_branch, &other_loop);
    h.respond(sip::parse(Bytes::from(relooped)).unwrap(), BACKEND1);
    assert!(h.replies().is_empty(), "a forged response went upstream");
    assert!(
        h.sent_to(BACKEND1).is_empty(),
        "a forged response was ACKed"
    );

    h.respond(real, BACKEND1);
    assert_eq!(h.reply_codes(), [486]);
}

#[test]
fn branch_tokens_are_not_sequential() {
    let mut h = Harness::new();
    let mut tokens = Vec::new();
    for n in 0..3 {
        h.relay(invite(&format!("tokens-{n}")), Some("sip:backend1.example"));
        let sent = h.sent_to(BACKEND1);
        let branch = sent[0].top_via().unwrap().branch().unwrap().to_string();
        tokens.push(branch::parse_client_branch(&branch).unwrap().1);
    }
    assert!(
        tokens.windows(2).all(|w| w[1].abs_diff(w[0]) > 1 << 32),
        "{tokens:x?}"
    );
}

// ---------------------------------------------------------------------------
// Bug 8: transaction keys (§17.2.3)
// ---------------------------------------------------------------------------

#[test]
fn bare_magic_cookie_branches_do_not_share_a_transaction() {
    let mut h = Harness::new();
    let first = request("INVITE", "sip:bob@example.com", "z9hG4bK", "bare-1", "");
    let second = request("INVITE", "sip:carol@example.com", "z9hG4bK", "bare-2", "");
    assert!(h.receive(first, UAC, Protocol::Udp).is_some());
    assert!(
        h.receive(second, UAC, Protocol::Udp).is_some(),
        "treated as a retransmission"
    );
}

#[test]
fn a_cancel_from_another_sender_does_not_cancel_the_call() {
    let mut h = Harness::new();
    h.relay(invite("victim"), Some("sip:backend1.example"));
    let sent = h.sent_to(BACKEND1);
    h.respond(answer(&sent[0], 180, &[]), BACKEND1);
    h.take();
    // The same branch, but another sent-by.
    let other_sent_by = String::from_utf8(invite("victim").bytes().to_vec())
        .unwrap()
        .replace("INVITE sip:", "CANCEL sip:")
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL")
        .replace("198.51.100.10:5060;branch", "203.0.113.66:5060;branch");
    let cancel = sip::parse(Bytes::from(other_sent_by)).unwrap();
    h.receive(cancel, "203.0.113.66:5060", Protocol::Udp);
    assert_eq!(h.reply_codes(), [481]);
    // The same branch and sent-by, from another host.
    let cancel = cancel_of("victim");
    h.receive(cancel, "203.0.113.66:5060", Protocol::Udp);
    assert_eq!(h.reply_codes(), [481]);
    assert!(h.sent_to(BACKEND1).is_empty(), "the branch was CANCELed");
    // The caller itself can.
    let cancel = cancel_of("victim");
    h.receive(cancel, UAC, Protocol::Udp);
    assert_eq!(h.reply_codes(), [200]);
    let cancels = h.sent_to(BACKEND1);
    assert_eq!(cancels[0].method_str(), "CANCEL");
}

// ---------------------------------------------------------------------------
// Bug 9: an RFC 2543 ACK for a 2xx goes on
// ---------------------------------------------------------------------------

#[test]
fn an_rfc2543_ack_for_a_2xx_is_routed_not_absorbed() {
    let mut h = Harness::new();
    let old_invite = request("INVITE", "sip:bob@example.com", "1", "rfc2543", "");
    h.relay(old_invite, Some("sip:backend1.example"));
    let sent = h.sent_to(BACKEND1);
    h.respond(answer(&sent[0], 200, &[]), BACKEND1);
    assert_eq!(h.reply_codes(), [100, 200]);
    let ack = request("ACK", "sip:bob@example.com", "1", "rfc2543", "");
    assert!(
        h.receive(ack, UAC, Protocol::Udp).is_some(),
        "the ACK for the 2xx was absorbed"
    );
}

#[test]
fn the_ack_of_a_non_2xx_is_absorbed() {
    let mut h = Harness::new();
    h.relay(invite("busy"), Some("sip:backend1.example"));
    let sent = h.sent_to(BACKEND1);
    h.respond(answer(&sent[0], 486, &[]), BACKEND1);
    assert_eq!(h.reply_codes(), [100, 486]);
    let acks = h.sent_to(BACKEND1);
    assert_eq!(acks[0].method_str(), "ACK", "the 486 is ACKed hop by hop");
    let ack = request("ACK", "sip:bob@example.com", "z9hG4bK-busy", "busy", "");
    assert!(h.receive(ack, UAC, Protocol::Udp).is_none());
}
