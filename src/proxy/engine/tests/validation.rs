//! What the core checks and answers by itself: Proxy-Require, Max-Forwards,
//! loops and spirals, stray responses, stateless To tags, decisions after
//! a CANCEL, and received/rport on our own responses.

use super::*;

// ---------------------------------------------------------------------------
// Bug 13: Proxy-Require
// ---------------------------------------------------------------------------

#[test]
fn an_unsupported_proxy_require_gets_420_with_unsupported() {
    let mut h = Harness::new();
    let msg = request(
        "INVITE",
        "sip:bob@example.com",
        "z9hG4bK-ext",
        "ext",
        "Proxy-Require: foo, bar\n",
    );
    assert!(
        h.receive(msg, UAC, Protocol::Udp).is_none(),
        "the script ran"
    );
    let replies = h.replies();
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].status(), Some(420));
    assert_eq!(replies[0].header(HeaderName::Unsupported), Some("foo, bar"));
}

// ---------------------------------------------------------------------------
// Found in review: loops, strays, stateless tags, late decisions
// ---------------------------------------------------------------------------

#[test]
fn an_ack_with_max_forwards_zero_is_dropped() {
    let mut h = Harness::new();
    let ack = request(
        "ACK",
        "sip:bob@198.51.100.10",
        "z9hG4bK-ack-mf0",
        "ack-mf0",
        "",
    );
    let ack = out_of_hops(&ack);
    assert!(h.receive(ack, UAC, Protocol::Udp).is_none(), "routed");
    assert!(h.take().is_empty());
}

#[test]
fn a_spiral_through_the_route_set_is_not_a_loop_but_a_loop_is() {
    let mut h = Harness::new();
    // B's route set passes this proxy twice: [P, next, P].
    let bye = request(
        "BYE",
        "sip:alice@198.51.100.10",
        "z9hG4bK-spiral",
        "spiral",
        "Route: <sip:192.0.2.1:5060;lr>, <sip:next.example;lr>, <sip:192.0.2.1:5060;lr>\n",
    );
    h.relay(bye, None);
    let sent = h.sent_to(NEXT);
    assert_eq!(sent.len(), 1);
    let forwarded = String::from_utf8(sent[0].bytes().to_vec()).unwrap();
    // `next` sends it back with its own Via (branch BRANCH) and ROUTES.
    let back = |routes: &str, branch: &str| {
        let via = format!(
            "Via: SIP/2.0/UDP 198.51.100.30:5060;branch={branch}\r\nVia: SIP/2.0/UDP 192.0.2.1"
        );
        let text = forwarded
            .replacen("Via: SIP/2.0/UDP 192.0.2.1", &via, 1)
            .replacen(
                "Route: <sip:next.example;lr>, <sip:192.0.2.1:5060;lr>",
                routes,
                1,
            );
        sip::parse(Bytes::from(text)).unwrap()
    };
    // next pops itself: the request comes back with a shorter Route set.
    let spiral = back("Route: <sip:192.0.2.1:5060;lr>", "z9hG4bK-next-1");
    assert!(
        h.receive(spiral, NEXT, Protocol::Udp).is_some(),
        "482 to a spiral"
    );
    h.take();
    // With the Route set it first came with, it is a loop.
    let looped = back(
        "Route: <sip:192.0.2.1:5060;lr>, <sip:next.example;lr>, <sip:192.0.2.1:5060;lr>",
        "z9hG4bK-next-2",
    );
    assert!(h.receive(looped, NEXT, Protocol::Udp).is_none());
    assert_eq!(h.reply_codes(), [482]);
}

#[test]
fn a_forged_stray_2xx_is_not_reflected() {
    let mut h = Harness::new();
    let forged = "SIP/2.0 200 OK\n\
         Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK0000000000000000.0000000000000001\n\
         Via: SIP/2.0/UDP 203.0.113.66:5060;branch=z9hG4bK-victim\n\
         From: <sip:a@example.com>;tag=1\n\
         To: <sip:b@example.com>;tag=2\n\
         Call-ID: forged\n\
         CSeq: 1 INVITE\n\
         Content-Length: 0\n\n";
    h.respond(parse(forged), "203.0.113.9:5060");
    assert!(h.take().is_empty(), "the forged 200 went somewhere");
}

#[test]
fn stateless_replies_repeat_their_to_tag() {
    let mut h = Harness::new();
    let tags: Vec<String> = (0..2)
        .map(|_| {
            h.receive(out_of_hops(&invite("mf0")), UAC, Protocol::Udp);
            let replies = h.replies();
            assert_eq!(replies[0].status(), Some(483));
            replies[0].to_tag().expect("a To tag").to_string()
        })
        .collect();
    assert_eq!(tags[0], tags[1]);
}

#[test]
fn a_decision_after_the_cancel_forwards_nothing() {
    let mut h = Harness::new();
    let run = h.receive(invite("late"), UAC, Protocol::Udp).unwrap();
    let cancel = cancel_of("late");
    h.receive(cancel, UAC, Protocol::Udp);
    assert_eq!(h.reply_codes(), [100, 200, 487]);
    let decision = script_decision(
        &run,
        Action::Relay {
            uri: Some("sip:backend1.example".into()),
        },
    );
    h.decide(&run, decision);
    assert!(h.sent_to(BACKEND1).is_empty(), "relayed after the 487");
}

#[test]
fn our_own_responses_carry_received_and_rport() {
    // RFC 3581 §4: a UA behind NAT learns its public address from any
    // response, ours included; received is added even when it equals
    // sent-by, because rport was asked for.
    let mut h = Harness::new();
    h.receive(invite("nat"), UAC, Protocol::Udp).unwrap();
    let trying = h.replies();
    let via = trying[0].header(HeaderName::Via).unwrap();
    assert_eq!(
        via,
        "SIP/2.0/UDP 198.51.100.10:5060;branch=z9hG4bK-nat;rport=5060;received=198.51.100.10"
    );
    // From behind a NAT (the source is not the sent-by), a stateless 483.
    h.receive(
        out_of_hops(&invite("nat3")),
        "203.0.113.7:40111",
        Protocol::Udp,
    );
    let replies = h.replies();
    assert_eq!(replies[0].status(), Some(483));
    assert_eq!(
        replies[0].header(HeaderName::Via),
        Some("SIP/2.0/UDP 198.51.100.10:5060;branch=z9hG4bK-nat3;rport=40111;received=203.0.113.7")
    );
}
