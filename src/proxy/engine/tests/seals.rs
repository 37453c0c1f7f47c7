//! Dialog seals: an in-dialog request that pops our Route is relayed only
//! with the seal our Record-Route carried for its dialog (`proxy::seal`).

use super::*;

/// An in-dialog request from the callee back toward the caller.
fn in_dialog(method: &str, call_id: &str, routes: &[&str]) -> Message {
    let mut text = format!(
        "{method} sip:alice@198.51.100.10 SIP/2.0\n\
         Via: SIP/2.0/UDP 198.51.100.21:5060;branch=z9hG4bK-dlg-{method}\n\
         Max-Forwards: 70\n\
         From: <sip:bob@example.com>;tag=uas-tag\n\
         To: <sip:alice@example.com>;tag=a1\n\
         Call-ID: {call_id}\n\
         CSeq: 7 {method}\n"
    );
    for route in routes {
        text.push_str(&format!("Route: {route}\n"));
    }
    text.push_str("Content-Length: 0\n\n");
    parse(&text)
}

/// The Record-Route our INVITE for CALL_ID put out.
fn our_record_route(h: &mut Harness, call_id: &str) -> String {
    h.relay(invite(call_id), Some("sip:backend1.example"));
    let sent = h.sent_to(BACKEND1);
    h.take();
    sent[0].header(HeaderName::RecordRoute).unwrap().to_string()
}

#[test]
fn a_request_with_the_seal_of_its_own_dialog_reaches_the_script() {
    let mut h = Harness::new();
    let record_route = our_record_route(&mut h, "sealed");
    let run = h.receive(
        in_dialog("BYE", "sealed", &[&record_route]),
        BACKEND1,
        Protocol::Udp,
    );
    let run = run.expect("the script runs");
    assert_eq!(run.preroute.routes_popped, 1);
    // The caller's own requests carry its tag in From: sealed too.
    let bye = String::from_utf8_lossy(in_dialog("BYE", "sealed", &[&record_route]).as_bytes())
        .replace("tag=uas-tag", "tag=tmp")
        .replace(
            "To: <sip:alice@example.com>;tag=a1",
            "To: <sip:alice@example.com>;tag=uas-tag",
        )
        .replace(
            "From: <sip:bob@example.com>;tag=tmp",
            "From: <sip:bob@example.com>;tag=a1",
        )
        .replace("branch=z9hG4bK-dlg-BYE", "branch=z9hG4bK-dlg-BYE2");
    assert!(h
        .receive(parse(&bye.replace("\r\n", "\n")), UAC, Protocol::Udp)
        .is_some());
}

#[test]
fn a_route_of_ours_without_a_seal_or_with_another_dialogs_is_refused_403() {
    let mut h = Harness::new();
    let other_dialogs = our_record_route(&mut h, "other");
    for route in [
        "<sip:192.0.2.1:5060;lr>",
        "<sip:192.0.2.1:5060;lr;dlg=0123456789abcdefc6336407>",
        other_dialogs.as_str(),
    ] {
        let run = h.receive(in_dialog("BYE", "victim", &[route]), UAC, Protocol::Udp);
        assert!(run.is_none(), "{route}: no script run");
        assert_eq!(h.reply_codes(), [403], "{route}");
        assert!(h.sent_to(BACKEND1).is_empty());
    }
    // An ACK cannot be answered: it is dropped.
    let ack = in_dialog("ACK", "victim", &["<sip:192.0.2.1:5060;lr>"]);
    assert!(h.receive(ack, UAC, Protocol::Udp).is_none());
    assert!(h.take().is_empty());
}

#[test]
fn a_first_route_of_someone_else_is_left_to_the_script_with_nothing_popped() {
    let mut h = Harness::new();
    let bye = in_dialog("BYE", "foreign", &["<sip:10.0.0.5:6379;transport=tcp;lr>"]);
    let run = h
        .receive(bye, UAC, Protocol::Udp)
        .expect("the script decides");
    assert_eq!(run.preroute.routes_popped, 0);
    assert!(run.preroute.strict_ruri.is_none());
}

#[test]
fn during_a_rolling_upgrade_an_unsealed_route_of_ours_may_be_accepted() {
    let mut h = Harness::new();
    h.engine.config.accept_unsealed = true;
    let bye = in_dialog("BYE", "old", &["<sip:192.0.2.1:5060;lr>"]);
    assert!(h.receive(bye, UAC, Protocol::Udp).is_some());
    // A forged seal is still refused.
    let mut h = Harness::new();
    h.engine.config.accept_unsealed = true;
    let bye = in_dialog(
        "BYE",
        "old",
        &["<sip:192.0.2.1:5060;lr;dlg=0123456789abcdefc6336407>"],
    );
    assert!(h.receive(bye, UAC, Protocol::Udp).is_none());
    assert_eq!(h.reply_codes(), [403]);
}

/// A reload's `Reconfigure` with the engine's other settings as they are.
fn reconfigure_seals(h: &mut Harness, seals: Option<crate::proxy::seal::DialogSeals>) {
    let local = h.engine.config.local.clone();
    h.engine.reconfigure(Reconfigure {
        timers: settings(),
        max_transactions: usize::MAX,
        ended_bytes: usize::MAX,
        udp_max_request_bytes: 1300,
        call_max: Duration::from_secs(4 * 3600),
        local,
        seals,
        accept_unsealed: false,
    });
}

#[test]
fn a_reload_that_rotates_the_route_secret_keeps_dialogs_sealed_with_the_previous_one() {
    use crate::proxy::seal::DialogSeals;
    let mut h = Harness::new();
    let before = our_record_route(&mut h, "rotated");
    reconfigure_seals(
        &mut h,
        Some(DialogSeals::new(
            b"the new secret of the second key",
            Some(HARNESS_ROUTE_SECRET),
        )),
    );
    let run = h.receive(
        in_dialog("BYE", "rotated", &[&before]),
        BACKEND1,
        Protocol::Udp,
    );
    assert!(run.is_some(), "a dialog of the previous secret goes on");
    // New dialogs are sealed with the new secret: a reload that drops the
    // previous one turns the old dialog away, not the new one.
    let after = our_record_route(&mut h, "fresh");
    reconfigure_seals(
        &mut h,
        Some(DialogSeals::new(b"the new secret of the second key", None)),
    );
    let update = in_dialog("UPDATE", "fresh", &[&after]);
    assert!(h.receive(update, BACKEND1, Protocol::Udp).is_some());
    let old = in_dialog("INFO", "rotated", &[&before]);
    assert!(h.receive(old, BACKEND1, Protocol::Udp).is_none());
    assert_eq!(h.reply_codes(), [403]);
}

#[test]
fn a_reload_without_new_seals_keeps_the_running_ones() {
    let mut h = Harness::new();
    let record_route = our_record_route(&mut h, "kept");
    reconfigure_seals(&mut h, None);
    let bye = in_dialog("BYE", "kept", &[&record_route]);
    assert!(h.receive(bye, BACKEND1, Protocol::Udp).is_some());
}

#[test]
fn a_first_route_secret_set_by_a_reload_keeps_the_dialogs_of_the_runs_random_key() {
    use crate::proxy::seal::DialogSeals;
    let mut h = Harness::new();
    let before = our_record_route(&mut h, "random");
    reconfigure_seals(
        &mut h,
        Some(DialogSeals::new(b"a secret set while running", None)),
    );
    let bye = in_dialog("BYE", "random", &[&before]);
    assert!(h.receive(bye, BACKEND1, Protocol::Udp).is_some());
}
