//! Route preprocessing (§16.4) and strict routers (§16.6.7).

use super::*;

// ---------------------------------------------------------------------------
// Bugs 3 and 4: Route preprocessing (§16.4) and strict routers (§16.6.7)
// ---------------------------------------------------------------------------

#[test]
fn the_core_removes_its_own_route_entry_before_the_script_runs() {
    let mut h = Harness::new();
    let msg = request(
        "INVITE",
        "sip:bob@example.com",
        "z9hG4bK-route",
        "route",
        "Route: <sip:192.0.2.1:5060;lr>, <sip:next.example;lr>\n",
    );
    let run = h.relay(msg, None);
    assert_eq!(run.preroute.routes_popped, 1);
    let sent = h.sent_to(NEXT);
    assert_eq!(sent.len(), 1, "relayed along the Route set");
    let routes: Vec<&str> = sent[0].header_values(HeaderName::Route).collect();
    assert_eq!(routes, ["<sip:next.example;lr>"]);
}

#[test]
fn a_strict_routers_rewrite_is_undone_only_for_a_uri_we_record_routed() {
    let mut h = Harness::new();
    // The upstream strict router put our Record-Route URI in the R-URI and
    // the remote target at the bottom of the Route set.
    let msg = request(
        "BYE",
        "sip:192.0.2.1:5060;lr",
        "z9hG4bK-strict",
        "strict",
        "Route: <sip:next.example;lr>, <sip:bob@198.51.100.10>\n",
    );
    let run = h.relay(msg, None);
    assert_eq!(
        run.preroute.strict_ruri.as_deref(),
        Some("sip:bob@198.51.100.10")
    );
    let sent = h.sent_to(NEXT);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].request_uri(), Some("sip:bob@198.51.100.10"));
    let routes: Vec<&str> = sent[0].header_values(HeaderName::Route).collect();
    assert_eq!(
        routes,
        ["<sip:next.example;lr>"],
        "the last value left the set"
    );

    // A local R-URI that is a user of ours, not our Record-Route: no fix-up.
    let msg = request(
        "MESSAGE",
        "sip:bob@192.0.2.1",
        "z9hG4bK-local",
        "local",
        "Route: <sip:next.example;lr>, <sip:carol@198.51.100.10>\n",
    );
    let run = h.relay(msg, None);
    assert_eq!(run.preroute.strict_ruri, None);
    let sent = h.sent_to(NEXT);
    assert_eq!(sent[0].request_uri(), Some("sip:bob@192.0.2.1"));
    assert_eq!(sent[0].header_values(HeaderName::Route).count(), 2);
}

#[test]
fn a_garbled_last_route_is_not_moved_into_the_request_uri() {
    // Found by the fuzzer: the Route value is not a URI, and making it the
    // Request-URI would forward a request nobody can parse.
    let mut h = Harness::new();
    let msg = request(
        "BYE",
        "sip:192.0.2.1:5060;lr",
        "z9hG4bK-garbled",
        "garbled",
        "Route: <sip:next.example;lr>, <sip:bob@198.51.100.10:5a60>\n",
    );
    let run = h.relay(msg, Some("sip:next.example"));
    assert_eq!(run.preroute.strict_ruri, None);
    let sent = h.sent_to(NEXT);
    assert_eq!(sent.len(), 1, "the forwarded copy parses");
    assert_eq!(sent[0].request_uri(), Some("sip:192.0.2.1:5060;lr"));
    // Nor is a garbled next hop without `lr` taken for a strict router.
    let msg = request(
        "BYE",
        "sip:bob@198.51.100.10",
        "z9hG4bK-garbled-next",
        "garbled-next",
        "Route: <sip:next.example;l\0>\n",
    );
    h.relay(msg, None);
    let sent = h.sent_to(NEXT);
    assert_eq!(sent.len(), 1, "the forwarded copy parses");
    assert_eq!(sent[0].request_uri(), Some("sip:bob@198.51.100.10"));
}

#[test]
fn a_strict_next_hop_gets_its_uri_as_the_request_uri() {
    let mut h = Harness::new();
    let msg = request(
        "BYE",
        "sip:bob@198.51.100.10",
        "z9hG4bK-strict-next",
        "strict-next",
        "Route: <sip:strict.example>, <sip:next.example;lr>\n",
    );
    h.relay(msg, None);
    let sent = h.sent_to(STRICT);
    assert_eq!(sent.len(), 1, "sent to the strict router");
    assert_eq!(sent[0].request_uri(), Some("sip:strict.example"));
    let routes: Vec<&str> = sent[0].header_values(HeaderName::Route).collect();
    assert_eq!(routes, ["<sip:next.example;lr>", "<sip:bob@198.51.100.10>"]);
}
