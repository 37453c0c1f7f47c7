//! Flow tokens: the Record-Route for a caller on a connection names the
//! connection, and a request coming back toward the caller goes over it,
//! whatever its Request-URI says.

use super::*;

/// A request from the backend back toward the caller, with ROUTES.
fn toward_caller(method: &str, ruri: &str, routes: &[String]) -> Message {
    let mut text = format!(
        "{method} {ruri} SIP/2.0\n\
         Via: SIP/2.0/UDP 198.51.100.21:5060;branch=z9hG4bK-back-{method}\n\
         Max-Forwards: 70\n\
         From: <sip:bob@example.com>;tag=uas-tag\n\
         To: <sip:alice@example.com>;tag=a1\n\
         Call-ID: flow\n\
         CSeq: 7 {method}\n"
    );
    for route in routes {
        text.push_str(&format!("Route: {route}\n"));
    }
    text.push_str("Content-Length: 0\n\n");
    parse(&text)
}

/// The Record-Route values of the INVITE a TCP caller's call put out.
fn record_routes_of_a_tcp_call(h: &mut Harness) -> Vec<String> {
    let run = h
        .receive(invite("flow"), UAC, Protocol::Tcp)
        .expect("script runs");
    let relay = Action::Relay {
        uri: Some("sip:backend1.example".into()),
    };
    h.decide(&run, script_decision(&run, relay));
    let sent = h.sent_to(BACKEND1);
    h.take();
    sent[0]
        .header_values(HeaderName::RecordRoute)
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .collect()
}

/// Runs the script's in-dialog branch (loose_route, relay) for MSG from
/// SOURCE and returns where it was sent.
fn relay_in_dialog(h: &mut Harness, msg: Message, source: &str, protocol: Protocol) -> Vec<Hop> {
    let run = h.receive(msg, source, protocol).expect("script runs");
    h.decide(&run, script_decision(&run, Action::Relay { uri: None }));
    h.sent_hops()
}

#[test]
fn the_caller_side_record_route_carries_a_token_for_its_connection() {
    let mut h = Harness::new();
    let routes = record_routes_of_a_tcp_call(&mut h);
    assert_eq!(routes.len(), 2, "TCP in, UDP out: {routes:?}");
    assert!(
        routes[0].starts_with("<sip:192.0.2.1:5060;lr;dlg="),
        "{routes:?}"
    );
    let caller_side = &routes[1];
    assert!(caller_side.starts_with("<sip:f"), "{caller_side}");
    assert!(
        caller_side.contains("@192.0.2.1:5060;transport=tcp;lr;dlg="),
        "{caller_side}"
    );
    // A UDP caller's entry has none: it is reached at its address.
    let mut h = Harness::new();
    h.relay(invite("udp"), Some("sip:backend1.example"));
    let sent = h.sent_to(BACKEND1);
    let record_route = sent[0].header(HeaderName::RecordRoute).unwrap();
    assert!(
        record_route.starts_with("<sip:192.0.2.1:5060;lr;dlg="),
        "{record_route}"
    );
}

#[test]
fn the_callees_bye_goes_back_over_the_callers_connection() {
    let mut h = Harness::new();
    let routes = record_routes_of_a_tcp_call(&mut h);
    // The caller's Contact is a browser's: it does not resolve.
    let bye = toward_caller(
        "BYE",
        "sip:alice@df7jal23ls0d.invalid;transport=tcp",
        &routes,
    );
    let hops = relay_in_dialog(&mut h, bye, BACKEND1, Protocol::Udp);
    assert_eq!(hops, [Hop::new(addr(UAC), Protocol::Tcp)]);
    assert!(
        hops[0].flow,
        "over the caller's own connection, never dialled"
    );
}

#[test]
fn the_callers_own_bye_goes_on_to_the_callee() {
    let mut h = Harness::new();
    let routes = record_routes_of_a_tcp_call(&mut h);
    let reversed: Vec<String> = routes.iter().rev().cloned().collect();
    let mut bye = String::from_utf8_lossy(
        toward_caller("BYE", "sip:bob@backend1.example", &reversed).as_bytes(),
    )
    .into_owned();
    bye = bye.replace(
        "Via: SIP/2.0/UDP 198.51.100.21:5060;branch=z9hG4bK-back-BYE",
        "Via: SIP/2.0/TCP 198.51.100.10:5060;branch=z9hG4bK-caller-bye",
    );
    let bye = parse(&bye.replace("\r\n", "\n"));
    // From the connection the token names: the token is not for it.
    let hops = relay_in_dialog(&mut h, bye, UAC, Protocol::Tcp);
    assert_eq!(hops, [Hop::new(addr(BACKEND1), Protocol::Udp)]);
}

#[test]
fn a_forged_token_is_ignored() {
    let mut h = Harness::new();
    let routes = record_routes_of_a_tcp_call(&mut h);
    // Aim the token at another address: the MAC no longer matches.
    let forged = routes[1].replacen("<sip:f", "<sip:f0", 1);
    let bye = toward_caller(
        "BYE",
        "sip:alice@df7jal23ls0d.invalid;transport=tcp",
        &[routes[0].clone(), forged],
    );
    let run = h
        .receive(bye, BACKEND1, Protocol::Udp)
        .expect("script runs");
    h.decide(&run, script_decision(&run, Action::Relay { uri: None }));
    assert_eq!(h.reply_codes(), [478], "sent toward a forged flow");
}

/// A REGISTER from a TCP client relayed to the backend with
/// record_route(): the Path it carries there.
fn path_of_a_tcp_register(h: &mut Harness) -> String {
    let register = request(
        "REGISTER",
        "sip:example.com",
        "z9hG4bK-reg",
        "reg",
        "Supported: path\n",
    );
    let run = h
        .receive(register, UAC, Protocol::Tcp)
        .expect("script runs");
    let relay = Action::Relay {
        uri: Some("sip:backend1.example".into()),
    };
    h.decide(&run, script_decision(&run, relay));
    let sent = h.sent_to(BACKEND1);
    h.take();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].header(HeaderName::RecordRoute),
        None,
        "a REGISTER gets a Path, not a Record-Route"
    );
    sent[0]
        .header(HeaderName::Path)
        .expect("our Path")
        .to_string()
}

/// The registrar's INVITE for the client: its Request-URI is the
/// client's Contact, and its Route the binding's Path.
fn from_the_registrar(path: &str, branch: &str) -> Message {
    parse(&format!(
        "INVITE sip:alice@df7jal23ls0d.invalid;transport=tcp SIP/2.0\n\
         Via: SIP/2.0/UDP 198.51.100.21:5060;branch={branch}\n\
         Max-Forwards: 69\n\
         From: <sip:carol@example.com>;tag=c1\n\
         To: <sip:alice@example.com>\n\
         Call-ID: {branch}\n\
         CSeq: 1 INVITE\n\
         Route: {path}\n\
         Record-Route: <sip:198.51.100.21;lr>\n\
         Content-Length: 0\n\n"
    ))
}

#[test]
fn a_register_from_a_connection_carries_a_path_token_facing_the_registrar() {
    let mut h = Harness::new();
    let path = path_of_a_tcp_register(&mut h);
    // The backend reaches us on the UDP side; the user part names the
    // client's TCP flow.
    assert!(path.starts_with("<sip:p"), "{path}");
    assert!(path.ends_with("@192.0.2.1:5060;lr>"), "{path}");
}

#[test]
fn a_udp_phones_register_carries_a_path_and_its_calls_come_back_to_its_address() {
    // A UDP phone behind NAT: its pinhole is with us, so the registrar's
    // INVITE must come through us, to the address its REGISTER came from.
    let mut h = Harness::new();
    h.relay(
        request("REGISTER", "sip:example.com", "z9hG4bK-u", "u", ""),
        Some("sip:backend1.example"),
    );
    let sent = h.sent_to(BACKEND1);
    assert_eq!(sent[0].header(HeaderName::RecordRoute), None);
    let path = sent[0]
        .header(HeaderName::Path)
        .expect("a Path")
        .to_string();
    assert!(
        path.starts_with("<sip:p") && path.ends_with("@192.0.2.1:5060;lr>"),
        "{path}"
    );
    let run = h.receive(
        from_the_registrar(&path, "z9hG4bK-udp-in"),
        BACKEND1,
        Protocol::Udp,
    );
    assert!(run.is_none(), "the core routes it");
    let hops: Vec<Hop> = h.sent_hops();
    assert_eq!(hops.len(), 1);
    // The registrar's INVITE names a Contact behind NAT (a .invalid host
    // here): it goes to the address the REGISTER came from.
    assert_eq!((hops[0].addr, hops[0].protocol), (addr(UAC), Protocol::Udp));
    // A Contact on the REGISTER's own host names the phone's SIP port
    // there (it registered from another socket): that port gets it.
    let to_contact = from_the_registrar(&path, "z9hG4bK-udp-in2")
        .as_bytes()
        .to_vec();
    let to_contact = String::from_utf8(to_contact)
        .unwrap()
        .replace(
            "INVITE sip:alice@df7jal23ls0d.invalid;transport=tcp SIP/2.0",
            "INVITE sip:alice@198.51.100.10:5070 SIP/2.0",
        )
        .replace("\r\n", "\n");
    assert!(h
        .receive(parse(&to_contact), BACKEND1, Protocol::Udp)
        .is_none());
    let hops: Vec<Hop> = h.sent_hops();
    assert_eq!(hops.len(), 1);
    assert_eq!(hops[0].addr, addr("198.51.100.10:5070"));
}

#[test]
fn path_is_required_of_the_registrar_and_supported_for_a_phone_that_did_not_say() {
    // RFC 3327 §5.2: Require: path, so a registrar without Path fails
    // loudly (420) rather than calling the phone past us; a phone that
    // does not announce Path gets `Supported: path` said for it, so a
    // registrar that insists on it (Kamailio's path_mode 2) keeps the Path.
    let options = |msg: &Message, name: HeaderName| -> Vec<String> {
        msg.header_values(name)
            .flat_map(|v| v.split(','))
            .map(|v| v.trim().to_ascii_lowercase())
            .collect()
    };
    for (extra, supported) in [
        ("", vec!["path"]),
        ("Supported: outbound, path\n", vec!["outbound", "path"]),
        ("Supported: gruu\n", vec!["gruu", "path"]),
    ] {
        let mut h = Harness::new();
        let register = request("REGISTER", "sip:example.com", "z9hG4bK-s", "s", extra);
        h.relay(register, Some("sip:backend1.example"));
        let sent = h.sent_to(BACKEND1).remove(0);
        assert_eq!(options(&sent, HeaderName::Supported), supported, "{extra}");
        assert_eq!(options(&sent, HeaderName::Require), ["path"], "{extra}");
    }
}

#[test]
fn the_registrars_invite_goes_over_the_clients_connection_without_the_script() {
    let mut h = Harness::new();
    let path = path_of_a_tcp_register(&mut h);
    let run = h.receive(
        from_the_registrar(&path, "z9hG4bK-in1"),
        BACKEND1,
        Protocol::Udp,
    );
    assert!(run.is_none(), "the core routes it: the script does not run");
    let (hops, sent): (Vec<Hop>, Vec<Message>) = h
        .take()
        .into_iter()
        .filter_map(|o| match o {
            Output::Send { hop, bytes, .. } => Some((hop, sip::parse(bytes).ok()?)),
            _ => None,
        })
        .unzip();
    assert_eq!(hops, [Hop::new(addr(UAC), Protocol::Tcp)]);
    assert!(hops[0].flow, "over the client's own connection");
    let invite = &sent[0];
    assert_eq!(
        invite.header(HeaderName::Route),
        None,
        "our Path entry is consumed"
    );
    // We stay in the dialog, named once per side: the client's side with
    // its Record-Route token, so the backend's BYE finds the connection.
    let routes: Vec<String> = invite
        .header_values(HeaderName::RecordRoute)
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .collect();
    assert_eq!(routes.len(), 3, "{routes:?}");
    assert!(routes[0].starts_with("<sip:f"), "{routes:?}");
    assert!(routes[0].contains("@192.0.2.1:5060;transport=tcp;lr;dlg="));
    assert!(
        routes[1].starts_with("<sip:192.0.2.1:5060;lr;dlg="),
        "{routes:?}"
    );
    // The backend's BYE in that dialog, with the route set the client's
    // 200 gave it (the Record-Route reversed, §12.1.2).
    let bye = toward_caller(
        "BYE",
        "sip:alice@df7jal23ls0d.invalid;transport=tcp",
        &[routes[1].clone(), routes[0].clone()],
    );
    let bye = String::from_utf8_lossy(bye.as_bytes())
        .replace("Call-ID: flow", "Call-ID: z9hG4bK-in1")
        .replace("tag=a1", "tag=c1")
        .replace("\r\n", "\n");
    let bye = parse(&bye);
    let hops = relay_in_dialog(&mut h, bye, BACKEND1, Protocol::Udp);
    assert_eq!(hops, [Hop::new(addr(UAC), Protocol::Tcp)]);
    assert!(hops[0].flow);
}

#[test]
fn a_record_route_token_does_not_start_requests_toward_a_client() {
    // A dialog peer learns the Record-Route token of the client's side; an
    // initial request it aims with that token goes to the script like any.
    let mut h = Harness::new();
    let routes = record_routes_of_a_tcp_call(&mut h);
    let run = h.receive(
        from_the_registrar(&routes[1], "z9hG4bK-peer"),
        BACKEND1,
        Protocol::Udp,
    );
    assert!(run.is_some(), "the script decides");
}

#[test]
fn a_path_token_of_an_earlier_run_is_answered_430() {
    let mut earlier = Harness::new();
    earlier.engine.config.flow_tokens = crate::proxy::flow::FlowTokens::new([4; 32]);
    let path = path_of_a_tcp_register(&mut earlier);
    let mut h = Harness::new();
    let run = h.receive(
        from_the_registrar(&path, "z9hG4bK-old"),
        BACKEND1,
        Protocol::Udp,
    );
    assert!(run.is_none());
    assert_eq!(h.distinct_reply_codes(), [100, 430]);
}

#[test]
fn a_branch_over_a_closed_connection_ends_with_430_flow_failed() {
    let mut h = Harness::new();
    let path = path_of_a_tcp_register(&mut h);
    h.receive(
        from_the_registrar(&path, "z9hG4bK-gone"),
        BACKEND1,
        Protocol::Udp,
    );
    let sent = h.sent_to(UAC);
    assert_eq!(sent.len(), 1);
    // Ringing, then the connection closes: the INVITE would otherwise
    // wait for Timer C.
    h.respond(answer(&sent[0], 180, &[]), UAC);
    assert_eq!(h.reply_codes(), [100, 180]);
    // A connection we dialled to the same address is another: nothing ends.
    for other in [
        Hop::new(addr(UAC), Protocol::Tcp),
        Hop::flow(addr(UAC), Protocol::Udp),
    ] {
        h.engine.handle_link_failure(h.now, &other);
        h.collect();
        assert!(h.reply_codes().is_empty(), "{other:?}");
    }
    h.engine
        .handle_link_failure(h.now, &Hop::flow(addr(UAC), Protocol::Tcp));
    h.collect();
    assert_eq!(h.reply_codes(), [430]);
}

#[test]
fn a_plain_branch_whose_connection_fails_ends_at_once_as_a_503_would() {
    let mut h = Harness::new();
    h.relay(invite("tcp-next"), Some("sip:next.example;transport=tcp"));
    assert_eq!(h.sent_to(NEXT).len(), 1);
    h.engine
        .handle_link_failure(h.now, &Hop::new(addr(NEXT), Protocol::Tcp));
    h.collect();
    // §16.9 and §16.7 step 6: a 503 from the hop, a 500 from us.
    assert_eq!(h.reply_codes(), [100, 500]);
}

/// A BYE from the caller of a `record_routes_of_a_tcp_call` dialog, with
/// its route set (the Record-Route reversed), over TCP from `source`.
fn callers_bye(routes: &[String], source: &str) -> Message {
    let reversed: Vec<String> = routes.iter().rev().cloned().collect();
    let bye = String::from_utf8_lossy(
        toward_caller("BYE", "sip:bob@backend1.example", &reversed).as_bytes(),
    )
    .replace(
        "Via: SIP/2.0/UDP 198.51.100.21:5060;branch=z9hG4bK-back-BYE",
        &format!("Via: SIP/2.0/TCP {source};branch=z9hG4bK-caller-bye"),
    );
    parse(&bye.replace("\r\n", "\n"))
}

#[test]
fn a_reconnected_callers_bye_goes_to_the_callee_not_to_its_old_connection() {
    // A browser whose WebSocket reconnected, or a phone that moved from
    // Wi-Fi to LTE, sends its BYE from a new address: the token of its own
    // side (the first entry it pops) names the old, dead connection.
    for moved_to in ["198.51.100.10:40001", "203.0.113.77:5060"] {
        let mut h = Harness::new();
        let routes = record_routes_of_a_tcp_call(&mut h);
        let bye = callers_bye(&routes, moved_to);
        let hops = relay_in_dialog(&mut h, bye, moved_to, Protocol::Tcp);
        assert_eq!(
            hops,
            [Hop::new(addr(BACKEND1), Protocol::Udp)],
            "{moved_to}"
        );
    }
}

#[test]
fn on_one_listener_both_sides_are_named_so_either_may_reconnect() {
    // TCP in and TCP out through the same listener.
    let mut h = Harness::new();
    let run = h.receive(invite("flow"), UAC, Protocol::Tcp).unwrap();
    let relay = Action::Relay {
        uri: Some("sip:backend1.example;transport=tcp".into()),
    };
    h.decide(&run, script_decision(&run, relay));
    let sent = h.sent_to(BACKEND1);
    h.take();
    let routes: Vec<String> = sent[0]
        .header_values(HeaderName::RecordRoute)
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .collect();
    assert_eq!(routes.len(), 2, "{routes:?}");
    assert!(routes[0].starts_with("<sip:192.0.2.1:5060;transport=tcp;lr;dlg="));
    assert!(routes[1].starts_with("<sip:f"), "{routes:?}");
    // The callee's BYE reaches the caller's connection...
    let bye = toward_caller("BYE", "sip:alice@df7jal23ls0d.invalid", &routes);
    let hops = relay_in_dialog(&mut h, bye, BACKEND1, Protocol::Tcp);
    assert_eq!(hops, [Hop::flow(addr(UAC), Protocol::Tcp)]);
    // ...and the reconnected caller's BYE reaches the callee (at its
    // Request-URI), not the caller's old connection.
    let bye = callers_bye(&routes, "198.51.100.10:40002");
    let hops = relay_in_dialog(&mut h, bye, "198.51.100.10:40002", Protocol::Tcp);
    assert_eq!(hops.len(), 1);
    assert!(hops[0].addr == addr(BACKEND1) && !hops[0].flow, "{hops:?}");
}

#[test]
fn a_record_route_token_does_not_route_an_initial_request() {
    // A dialog peer aims the client's Record-Route token at it in a new
    // INVITE, and the script relays along the Route: the token is not
    // followed (the Request-URI does not resolve, so nothing is sent).
    let mut h = Harness::new();
    let routes = record_routes_of_a_tcp_call(&mut h);
    let hops = relay_in_dialog(
        &mut h,
        from_the_registrar(&routes[1], "z9hG4bK-peer2"),
        BACKEND1,
        Protocol::Udp,
    );
    assert!(hops.is_empty(), "{hops:?}");
}

#[test]
fn a_route_user_that_starts_with_p_is_no_path_token() {
    // A UA configured with `sip:proxy@<us>` as its outbound proxy.
    let mut h = Harness::new();
    let msg = request(
        "INVITE",
        "sip:bob@example.com",
        "z9hG4bK-outbound",
        "outbound",
        "Route: <sip:proxy@192.0.2.1:5060;lr>\n",
    );
    let run = h.receive(msg, UAC, Protocol::Udp);
    assert!(run.is_some(), "the script runs: no 430");
    assert_eq!(run.unwrap().preroute.routes_popped, 1);
}

#[test]
fn a_dialog_of_an_earlier_build_with_one_token_entry_still_ends() {
    // Builds before both sides were always named wrote one entry through
    // one listener: the caller's own token. Its BYE goes the other way.
    let mut h = Harness::new();
    let routes = record_routes_of_a_tcp_call(&mut h);
    let caller_side = routes[1].clone();
    let bye = callers_bye(&[caller_side], "198.51.100.10:5060");
    let hops = relay_in_dialog(&mut h, bye, UAC, Protocol::Tcp);
    assert_eq!(hops.len(), 1);
    assert!(hops[0].addr == addr(BACKEND1) && !hops[0].flow, "{hops:?}");
}

#[test]
fn a_udp_phone_called_through_its_path_gets_a_token_for_its_dialog() {
    // Its later BYE or re-INVITE must reach the NAT pinhole too, not the
    // private Contact.
    let mut h = Harness::new();
    h.relay(
        request("REGISTER", "sip:example.com", "z9hG4bK-u2", "u2", ""),
        Some("sip:backend1.example"),
    );
    let path = h.sent_to(BACKEND1)[0]
        .header(HeaderName::Path)
        .unwrap()
        .to_string();
    assert!(h
        .receive(
            from_the_registrar(&path, "z9hG4bK-udp-rr"),
            BACKEND1,
            Protocol::Udp
        )
        .is_none());
    let sent = h.sent_to(UAC);
    let routes: Vec<String> = sent[0]
        .header_values(HeaderName::RecordRoute)
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .collect();
    assert!(routes[0].starts_with("<sip:f"), "{routes:?}");
}
