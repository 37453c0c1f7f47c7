//! Probes: their status or timeout, and their From header.

use super::*;

// ---------------------------------------------------------------------------
// Probes
// ---------------------------------------------------------------------------

#[test]
fn a_probe_reports_its_status_or_its_timeout() {
    let mut h = Harness::new();
    let hop = hop_of("sip:backend1.example").unwrap();
    h.engine.start_probe(
        h.now,
        7,
        "sip:backend1.example",
        probe_target(hop.clone(), false),
        "probe-1",
    );
    h.collect();
    let sent = h.sent_to(BACKEND1);
    h.advance(Duration::from_millis(3));
    h.respond(answer(&sent[0], 200, &[]), BACKEND1);
    let outcomes: Vec<(u64, Option<u16>)> = h
        .take()
        .into_iter()
        .filter_map(|o| match o {
            Output::ProbeDone { probe, outcome } => Some((probe, outcome.status)),
            _ => None,
        })
        .collect();
    assert_eq!(outcomes, [(7, Some(200))]);

    h.engine.start_probe(
        h.now,
        8,
        "sip:backend1.example",
        probe_target(hop, false),
        "probe-2",
    );
    h.collect();
    h.run_for(Duration::from_secs(33), Duration::from_millis(500));
    let timed_out = h
        .take()
        .into_iter()
        .any(|o| matches!(o, Output::ProbeDone { probe: 8, outcome } if outcome.status.is_none()));
    assert!(timed_out);
    assert_eq!(h.engine.active(), 0);
    assert_eq!(h.engine.ended(), 0, "ended ones too");
}

#[test]
fn a_probe_names_probe_from_in_its_from_header() {
    let mut h = Harness::new();
    let hop = hop_of("sip:backend1.example").unwrap();
    let own = |h: &mut Harness, from: Option<&str>| {
        let target = ProbeTarget {
            from: from.map(Arc::from),
            ..probe_target(hop.clone(), false)
        };
        h.engine
            .start_probe(h.now, 9, "sip:backend1.example", target, "probe-from");
        h.collect();
        let sent = h.sent_to(BACKEND1);
        sent[0].header(HeaderName::From).unwrap_or("").to_string()
    };
    let from = own(&mut h, Some("sip:ping@lb.example.com"));
    assert!(from.starts_with("<sip:ping@lb.example.com>;tag="), "{from}");
    let from = own(&mut h, None);
    assert!(from.starts_with("<sip:siphon@192.0.2.1"), "{from}");
}
