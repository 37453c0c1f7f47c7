//! End-to-end tests: sipp UAC → siphon (scripts/proxy.py) → sipp UAS over UDP
//! and TCP, plus crafted messages from a raw client for the cases sipp cannot
//! produce (retransmitted bytes, malformed input, script behaviour).
//!
//! Each test starts its own daemon on free ports, so nextest can run them in
//! parallel. Every sipp run asserts both its exit code and its counters.

mod common;

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Start the daemon with the shipped `scripts/proxy.py` at LEVEL.
fn start_proxy(level: &str) -> Siphon {
    Siphon::start(&proxy_config(level), &example_script("proxy.py"))
}

/// Run a UAC scenario against a UAS scenario through SIPHON: the UAS is
/// started first (in the background), then the UAC in the foreground; both
/// outcomes are returned once both have exited. TRACE records both sides'
/// messages (`-trace_msg`).
#[allow(clippy::too_many_arguments)]
fn uac_through_proxy(
    siphon: &Siphon,
    dir: &Path,
    transport: Transport,
    uac_scenario: &str,
    uas_scenario: &str,
    calls: u32,
    rate: u32,
    trace: bool,
) -> (SippOutcome, SippOutcome) {
    let timeout = calls / rate.max(1) + 30;
    let mut uas_spec = SippSpec::new("uas", uas_scenario, transport)
        .calls(calls)
        .timeout_secs(timeout);
    if trace {
        uas_spec = uas_spec.trace_messages();
    }
    let uas_addr = uas_spec.addr();
    let uas = uas_spec.spawn(dir);
    let mut uac_spec = SippSpec::new("uac", uac_scenario, transport)
        .target(siphon.addr())
        .callee(uas_addr)
        .calls(calls)
        .rate(rate)
        .timeout_secs(timeout);
    if trace {
        uac_spec = uac_spec.trace_messages();
    }
    let uac = uac_spec.run(dir);
    let uas = uas.wait();
    (uac, uas)
}

fn work_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("siphon-sipp-")
        .tempdir()
        .expect("tempdir")
}

// ---------------------------------------------------------------------------
// 1. Basic calls at load, record-routed
// ---------------------------------------------------------------------------

/// 500 calls at 100 calls/s: INVITE/100/180/200/ACK/BYE/200 with ACK and BYE
/// routed through the proxy; the UAS scenario fails any INVITE without a
/// Record-Route carrying `;lr`.
fn calls_at_100_cps(transport: Transport) {
    let siphon = start_proxy(&std::env::var("SIPHON_E2E_LOG").unwrap_or_else(|_| "info".into()));
    let dir = work_dir();
    let (uac, uas) = uac_through_proxy(
        &siphon,
        dir.path(),
        transport,
        "uac_call.xml",
        "uas_call.xml",
        500,
        100,
        false,
    );
    assert_all_succeeded(&[&uac, &uas]);
    assert_eq!(uac.stats.outgoing_calls, 500, "{}", uac.report());
    assert_eq!(uas.stats.incoming_calls, 500, "{}", uas.report());
    // sipp ran at the requested rate: 500 calls cannot take less than ~5 s.
    assert!(uac.elapsed >= Duration::from_secs(4), "{}", uac.report());
    eprintln!(
        "{transport:?}: uac retransmissions {}, uas retransmissions {}",
        uac.stats.retransmissions, uas.stats.retransmissions
    );
}

/// Several shards on their own threads: every message crosses the Call-ID
/// router, so a dialog's requests and responses must all meet on one shard.
#[test]
fn calls_through_two_shards_udp() {
    let config = format!("{}\nserver: {{workers: 2}}\n", proxy_config("info"));
    let siphon = Siphon::start(&config, &example_script("proxy.py"));
    assert!(siphon.log().contains("shards=2"), "{}", siphon.log_tail(10));
    let dir = work_dir();
    let (uac, uas) = uac_through_proxy(
        &siphon,
        dir.path(),
        Transport::Udp,
        "uac_call.xml",
        "uas_call.xml",
        300,
        100,
        false,
    );
    assert_all_succeeded(&[&uac, &uas]);
    assert_eq!(uas.stats.incoming_calls, 300, "{}", uas.report());
}

#[test]
fn calls_through_proxy_udp_500_at_100cps() {
    calls_at_100_cps(Transport::Udp);
}

#[test]
fn calls_through_proxy_tcp_500_at_100cps() {
    calls_at_100_cps(Transport::Tcp);
}

// ---------------------------------------------------------------------------
// 2. Busy: hop-by-hop ACK
// ---------------------------------------------------------------------------

/// The UAS answers 486; the UAC gets it and ACKs; the UAS receives an ACK
/// built by the proxy (one Via, the proxy's), not the UAC's forwarded ACK.
fn busy_486(transport: Transport) {
    let siphon = start_proxy("debug");
    let dir = work_dir();
    let calls = 10;
    let (uac, uas) = uac_through_proxy(
        &siphon,
        dir.path(),
        transport,
        "uac_busy.xml",
        "uas_busy.xml",
        calls,
        10,
        true,
    );
    assert_all_succeeded(&[&uac, &uas]);
    let acks: Vec<String> = uas
        .received_messages()
        .into_iter()
        .filter(|m| method(m) == Some("ACK"))
        .collect();
    assert!(acks.len() >= calls as usize, "UAS saw {} ACKs", acks.len());
    let proxy_port = format!(":{}", siphon.port);
    for ack in &acks {
        let vias = header_values(ack, "Via");
        assert_eq!(
            vias.len(),
            1,
            "ACK to the UAS must be the proxy's own:\n{ack}"
        );
        assert!(
            vias[0].contains(&proxy_port),
            "ACK Via is not the proxy's:\n{ack}"
        );
    }
}

#[test]
fn busy_486_is_acked_hop_by_hop_udp() {
    busy_486(Transport::Udp);
}

#[test]
fn busy_486_is_acked_hop_by_hop_tcp() {
    busy_486(Transport::Tcp);
}

// ---------------------------------------------------------------------------
// 3. CANCEL of a ringing call
// ---------------------------------------------------------------------------

/// The UAC CANCELs after 180: it gets 200 for the CANCEL and 487 for the
/// INVITE; the UAS gets a CANCEL from the proxy, answers 487 and gets the ACK.
fn cancel_ringing(transport: Transport) {
    let siphon = start_proxy("debug");
    let dir = work_dir();
    let (uac, uas) = uac_through_proxy(
        &siphon,
        dir.path(),
        transport,
        "uac_cancel.xml",
        "uas_cancel.xml",
        5,
        5,
        false,
    );
    assert_all_succeeded(&[&uac, &uas]);
}

#[test]
fn cancel_ringing_call_udp() {
    cancel_ringing(Transport::Udp);
}

#[test]
fn cancel_ringing_call_tcp() {
    cancel_ringing(Transport::Tcp);
}

// ---------------------------------------------------------------------------
// 4. Timeouts: Timer B (no answer at all) and Timer C (rings forever)
// ---------------------------------------------------------------------------

/// Time from the UAC sending its INVITE to it receiving the 408, read from
/// its message trace (sipp start-up and shutdown do not count).
fn invite_to_408(uac: &SippOutcome) -> Duration {
    let trace = uac.trace();
    let sent = trace
        .iter()
        .find(|m| !m.received && method(&m.text) == Some("INVITE"));
    let answered = trace
        .iter()
        .find(|m| m.received && status_code(&m.text) == Some(408));
    match (sent, answered) {
        (Some(sent), Some(answered)) => {
            Duration::from_secs_f64((answered.at_secs - sent.at_secs).max(0.0))
        }
        _ => panic!("no INVITE sent or no 408 received\n{}", uac.report()),
    }
}

/// One call through the proxy to a UAS running UAS_SCENARIO that does not
/// answer: the UAC must get 408 between EARLIEST and LATEST after its INVITE.
fn times_out_with_408(
    transport: Transport,
    uas_scenario: &str,
    earliest: Duration,
    latest: Duration,
) -> (SippOutcome, SippOutcome) {
    let siphon = start_proxy("debug");
    let dir = work_dir();
    let (uac, uas) = uac_through_proxy(
        &siphon,
        dir.path(),
        transport,
        "uac_timeout.xml",
        uas_scenario,
        1,
        10,
        true,
    );
    uac.assert_all_succeeded();
    let waited = invite_to_408(&uac);
    eprintln!(
        "{uas_scenario} over {transport:?}: 408 after {waited:?}; uac ran {:?}",
        uac.elapsed
    );
    assert!(
        waited >= earliest,
        "408 after {waited:?}, before the timer ({earliest:?})"
    );
    assert!(
        waited <= latest,
        "408 after {waited:?}, long after the timer ({latest:?})"
    );
    (uac, uas)
}

/// A UAS that never answers: with T1 = 50 ms, Timer B fires 64*T1 = 3.2 s
/// after the proxy relays the INVITE, and the UAC gets 408.
fn no_answer_times_out(transport: Transport) {
    let (uac, uas) = times_out_with_408(
        transport,
        "uas_silent.xml",
        Duration::from_millis(3100),
        Duration::from_millis(4500),
    );
    assert_eq!(uas.stats.incoming_calls, 1, "{}", uas.report());
    // The proxy answered 100 Trying at once, so the caller never had to
    // retransmit its INVITE while the proxy waited for Timer B.
    let got_100 = uac
        .trace()
        .iter()
        .any(|m| m.received && status_code(&m.text) == Some(100));
    assert!(got_100, "no 100 Trying\n{}", uac.report());
    assert_eq!(uac.stats.retransmissions, 0, "{}", uac.report());
}

#[test]
fn no_answer_gets_408_after_timer_b_udp() {
    no_answer_times_out(Transport::Udp);
}

#[test]
fn no_answer_gets_408_after_timer_b_tcp() {
    no_answer_times_out(Transport::Tcp);
}

/// A UAS that rings and never answers: Timer C (3 s, restarted by the 180)
/// CANCELs the branch downstream (the UAS scenario requires the CANCEL and
/// answers it) and the UAC gets 408.
#[test]
fn ringing_forever_gets_408_after_timer_c_udp() {
    let (_uac, uas) = times_out_with_408(
        Transport::Udp,
        "uas_cancel.xml",
        Duration::from_millis(2900),
        Duration::from_millis(4500),
    );
    uas.assert_all_succeeded();
}

// ---------------------------------------------------------------------------
// 5. REGISTER
// ---------------------------------------------------------------------------

fn register_relayed(transport: Transport) {
    let siphon = start_proxy("debug");
    let dir = work_dir();
    let (uac, uas) = uac_through_proxy(
        &siphon,
        dir.path(),
        transport,
        "uac_register.xml",
        "uas_register.xml",
        5,
        10,
        true,
    );
    assert_all_succeeded(&[&uac, &uas]);
    let registers: Vec<String> = uas
        .received_messages()
        .into_iter()
        .filter(|m| method(m) == Some("REGISTER"))
        .collect();
    assert_eq!(registers.len(), 5, "{}", uas.report());
    for register in &registers {
        let vias = header_values(register, "Via");
        assert!(
            vias.len() >= 2 && vias[0].contains(&format!(":{}", siphon.port)),
            "the proxy's Via must be on top of the relayed REGISTER:\n{register}"
        );
    }
}

#[test]
fn register_relayed_and_answered_udp() {
    register_relayed(Transport::Udp);
}

#[test]
fn register_relayed_and_answered_tcp() {
    register_relayed(Transport::Tcp);
}

// ---------------------------------------------------------------------------
// 6. Retransmissions are absorbed
// ---------------------------------------------------------------------------

/// The very same INVITE bytes sent three times while the callee rings: the
/// UAS receives ONE INVITE, and each copy is answered with the latest
/// provisional response (100 or 180), so the client sees at least four 1xx:
/// 100 and the relayed 180 for the first copy, one replay per retransmission.
#[test]
fn invite_retransmissions_are_absorbed() {
    let siphon = start_proxy("debug");
    let dir = work_dir();
    let uas_spec = SippSpec::new("uas", "uas_slow_busy.xml", Transport::Udp)
        .calls(1)
        .timeout_secs(15)
        .trace_messages();
    let uas_addr = uas_spec.addr();
    let uas = uas_spec.spawn(dir.path());

    let client = UdpPeer::bind();
    let invite = RawRequest::new(
        "INVITE",
        &format!("sip:service@{uas_addr};transport=udp"),
        Transport::Udp,
        client.local_addr(),
    );
    let bytes = invite.render();
    for _ in 0..3 {
        client.send_to(bytes.as_bytes(), siphon.addr());
        thread::sleep(Duration::from_millis(40));
    }
    let mut seen = Vec::new();
    let last = client.recv_final(Duration::from_secs(5), &mut seen);
    let final_response = last.unwrap_or_else(|| panic!("no final response; got {seen:#?}"));
    assert_eq!(status_code(&final_response), Some(486), "{final_response}");

    // ACK the 486 (same branch: it belongs to the INVITE transaction).
    let mut ack = RawRequest::new("ACK", &invite.ruri, Transport::Udp, client.local_addr());
    ack.call_id = invite.call_id.clone();
    ack.branch = invite.branch.clone();
    ack.from_tag = invite.from_tag.clone();
    ack.to_tag = header(&final_response, "To")
        .and_then(|to| to.split(";tag=").nth(1))
        .map(str::to_owned);
    client.send_to(ack.render().as_bytes(), siphon.addr());

    let provisional = seen
        .iter()
        .filter(|m| status_code(m).is_some_and(|c| (100..200).contains(&c)))
        .count();
    assert!(
        seen.iter().any(|m| status_code(m) == Some(100)),
        "no 100 Trying: {seen:#?}"
    );
    assert!(
        provisional >= 4,
        "each INVITE retransmission deserves the latest provisional again; got {provisional}: {seen:#?}"
    );

    let uas = uas.wait();
    uas.assert_all_succeeded();
    let invites = uas
        .received_messages()
        .into_iter()
        .filter(|m| method(m) == Some("INVITE"))
        .count();
    assert_eq!(invites, 1, "UAS must see one INVITE\n{}", uas.messages);
}

// ---------------------------------------------------------------------------
// 7. Malformed input during live traffic
// ---------------------------------------------------------------------------

/// How the daemon handled one bad message.
fn answered_or_logged(
    siphon: &Siphon,
    what: &str,
    response: Option<String>,
    client_port: u16,
    allowed: &[u16],
) {
    eprintln!(
        "{what}: {}",
        response
            .as_deref()
            .and_then(|m| m.lines().next())
            .unwrap_or("no answer")
    );
    match response {
        Some(message) => {
            let code = status_code(&message);
            assert!(
                code.is_some_and(|c| allowed.contains(&c)),
                "{what}: unexpected answer (allowed {allowed:?}):\n{message}"
            );
        }
        None => {
            let port = format!(":{client_port}");
            assert!(
                siphon.wait_for_log(&port, Duration::from_secs(2)),
                "{what}: neither answered nor logged (no log line names port {port});\nlog tail:\n{}",
                siphon.log_tail(30)
            );
            eprintln!("{what}: logged {:?}", siphon.log_lines(&port));
        }
    }
}

/// While sipp runs 200 calls at 50 calls/s, bad input arrives: garbage, a
/// truncated message, a ~65,000-byte datagram, a 70 KB message over TCP and a
/// bad Content-Length. Each is answered 4xx/5xx or dropped with a log line;
/// the calls all succeed and the daemon still answers afterwards.
#[test]
fn malformed_input_does_not_disturb_calls() {
    let siphon = start_proxy("debug");
    let dir = work_dir();
    let calls = 200;
    let uas_spec = SippSpec::new("uas", "uas_call.xml", Transport::Udp)
        .calls(calls)
        .timeout_secs(40);
    let uas_addr = uas_spec.addr();
    let uas = uas_spec.spawn(dir.path());
    let uac = SippSpec::new("uac", "uac_call.xml", Transport::Udp)
        .target(siphon.addr())
        .callee(uas_addr)
        .calls(calls)
        .rate(50)
        .timeout_secs(40)
        .spawn(dir.path());
    thread::sleep(Duration::from_millis(500));
    let wait = Duration::from_secs(2);
    let bad = [400, 413, 416, 420, 501, 513];

    // Garbage bytes.
    let peer = UdpPeer::bind();
    peer.send_to(
        b"\x00\x01\x02 this is not SIP \xff\xfe\r\n\r\n",
        siphon.addr(),
    );
    let answer = peer.recv(wait).map(|(m, _)| m);
    answered_or_logged(&siphon, "garbage", answer, peer.local_addr().port(), &bad);

    // A truncated message: the header section ends in the middle of a line.
    let peer = UdpPeer::bind();
    let full = RawRequest::new(
        "OPTIONS",
        &format!("sip:service@{uas_addr}"),
        Transport::Udp,
        peer.local_addr(),
    )
    .render();
    let cut = full.find("Call-ID").unwrap_or(full.len() / 2) + 4;
    peer.send_to(&full.as_bytes()[..cut], siphon.addr());
    let answer = peer.recv(wait).map(|(m, _)| m);
    answered_or_logged(&siphon, "truncated", answer, peer.local_addr().port(), &bad);

    // Bad Content-Length: says 500 bytes, carries 10. Readable, so 400.
    let peer = UdpPeer::bind();
    let request = RawRequest::new(
        "OPTIONS",
        &format!("sip:service@{uas_addr}"),
        Transport::Udp,
        peer.local_addr(),
    )
    .render()
    .replace(
        "Content-Length: 0\r\n\r\n",
        "Content-Length: 500\r\n\r\n0123456789",
    );
    peer.send_to(request.as_bytes(), siphon.addr());
    let answer = peer.recv(wait).map(|(m, _)| m);
    let code = answer.as_deref().and_then(status_code);
    assert_eq!(code, Some(400), "bad Content-Length over UDP: {answer:?}");

    // A ~65,000-byte datagram (the largest UDP payload over IPv4 is 65,507).
    // It is an oversized, junk-padded request: either refused, or answered
    // as the OPTIONS it is, but never fatal.
    let peer = UdpPeer::bind();
    let padding = "a".repeat(64_000);
    let big = RawRequest::new(
        "OPTIONS",
        "sip:127.0.0.1",
        Transport::Udp,
        peer.local_addr(),
    )
    .header("X-Padding", &padding)
    .render();
    assert!(big.len() > 64_000 && big.len() < 65_507);
    peer.send_to(big.as_bytes(), siphon.addr());
    let answer = peer.recv(wait).map(|(m, _)| m);
    let mut allowed = bad.to_vec();
    allowed.push(200);
    answered_or_logged(
        &siphon,
        "65 KB datagram",
        answer,
        peer.local_addr().port(),
        &allowed,
    );

    // A 70 KB message over TCP (no UDP datagram can be that large).
    let mut tcp = TcpPeer::connect(siphon.addr());
    let body = "b".repeat(70_000);
    let huge = RawRequest::new(
        "INVITE",
        &format!("sip:service@{uas_addr};transport=tcp"),
        Transport::Tcp,
        tcp.local_addr(),
    )
    .header("Content-Type", "text/plain")
    .body(&body)
    .render();
    let tcp_port = tcp.local_addr().port();
    let _ = tcp.send(huge.as_bytes());
    let mut seen = Vec::new();
    let answer = tcp.recv_final(wait, &mut seen);
    if answer.is_none() {
        assert!(
            tcp.wait_closed(Duration::from_secs(2))
                || siphon.log().contains(&format!(":{tcp_port}")),
            "70 KB over TCP: no answer, connection open and nothing logged; got {seen:?}"
        );
    }
    answered_or_logged(&siphon, "70 KB over TCP", answer, tcp_port, &bad);

    let uac = uac.wait();
    let uas = uas.wait();
    assert_all_succeeded(&[&uac, &uas]);

    // Still alive and answering.
    let peer = UdpPeer::bind();
    let options = RawRequest::new(
        "OPTIONS",
        "sip:127.0.0.1",
        Transport::Udp,
        peer.local_addr(),
    );
    peer.send_to(options.render().as_bytes(), siphon.addr());
    let mut seen = Vec::new();
    let answer = peer.recv_final(Duration::from_secs(3), &mut seen);
    assert_eq!(
        answer.as_deref().and_then(status_code),
        Some(200),
        "{seen:?}"
    );
}

// ---------------------------------------------------------------------------
// Script behaviour (raw client)
// ---------------------------------------------------------------------------

/// Send one request built by BUILD to SIPHON over UDP; return its final response.
fn ask(siphon: &Siphon, build: impl FnOnce(std::net::SocketAddr) -> RawRequest) -> String {
    let peer = UdpPeer::bind();
    let request = build(peer.local_addr());
    peer.send_to(request.render().as_bytes(), siphon.addr());
    let mut seen = Vec::new();
    peer.recv_final(Duration::from_secs(5), &mut seen)
        .unwrap_or_else(|| {
            panic!(
                "no final response; saw {seen:?}\nlog:\n{}",
                siphon.log_tail(30)
            )
        })
}

fn options_to_proxy(from: std::net::SocketAddr) -> RawRequest {
    RawRequest::new("OPTIONS", "sip:127.0.0.1", Transport::Udp, from)
}

#[test]
fn handler_that_raises_gets_500_and_logs_traceback() {
    let script = r#"from siphon import proxy, log

@proxy.on_request
def route(request):
    raise RuntimeError("boom from the test script")
"#;
    let siphon = Siphon::start(&proxy_config("debug"), script);
    let response = ask(&siphon, options_to_proxy);
    assert_eq!(status_code(&response), Some(500), "{response}");
    assert!(
        siphon.wait_for_log("Traceback", Duration::from_secs(2)),
        "{}",
        siphon.log_tail(30)
    );
    assert!(
        siphon.log().contains("boom from the test script"),
        "{}",
        siphon.log_tail(30)
    );
}

#[test]
fn reply_with_custom_reason() {
    let script = r#"from siphon import proxy

@proxy.on_request
def route(request):
    request.reply(403, "Nope")
"#;
    let siphon = Siphon::start(&proxy_config("debug"), script);
    let response = ask(&siphon, options_to_proxy);
    assert!(response.starts_with("SIP/2.0 403 Nope\r\n"), "{response}");
}

/// A handler that neither relays nor replies: the request is dropped, with
/// a log line naming its Call-ID, and the client gets no answer.
#[test]
fn handler_without_action_drops_the_request() {
    let script = r#"from siphon import proxy, log

@proxy.on_request
def route(request):
    log.debug("looked at " + request.method)
"#;
    let siphon = Siphon::start(&proxy_config("debug"), script);
    let peer = UdpPeer::bind();
    let request = options_to_proxy(peer.local_addr());
    peer.send_to(request.render().as_bytes(), siphon.addr());
    let answer = peer.recv(Duration::from_millis(800));
    assert!(answer.is_none(), "expected silence, got {answer:?}");
    let call_id = request.call_id.clone();
    let logged = siphon.wait_for_log_line(Duration::from_secs(2), |line| {
        line.contains(&call_id) && line.to_ascii_lowercase().contains("drop")
    });
    assert!(
        logged,
        "no drop logged for {call_id}:\n{}",
        siphon.log_tail(20)
    );
}

/// RFC 4475 bext01: extensions a proxy must support (Proxy-Require) that
/// siphon does not get 420 with Unsupported from the core; the script, which
/// would answer 200, never sees the request. Require is for the UAS and goes
/// on untouched.
#[test]
fn proxy_require_gets_420_from_the_core() {
    let script = r#"from siphon import proxy

@proxy.on_request
def route(request):
    request.reply(200)
"#;
    let siphon = Siphon::start(&proxy_config("debug"), script);
    let response = ask(&siphon, |from| {
        options_to_proxy(from)
            .header("Require", "nothingSupportsThis, nothingSupportsThisEither")
            .header(
                "Proxy-Require",
                "noProxiesSupportThis, norDoAnyProxiesSupportThis",
            )
    });
    assert_eq!(status_code(&response), Some(420), "{response}");
    assert_eq!(
        header(&response, "Unsupported"),
        Some("noProxiesSupportThis, norDoAnyProxiesSupportThis"),
        "{response}"
    );
    let plain = ask(&siphon, |from| {
        options_to_proxy(from).header("Require", "nothingSupportsThis")
    });
    assert_eq!(status_code(&plain), Some(200), "{plain}");
}

/// An INVITE the script takes no action on has had its 100 Trying: it gets
/// a 500 instead of silence.
#[test]
fn an_invite_without_action_gets_500() {
    let script = r#"from siphon import proxy

@proxy.on_request
def route(request):
    pass
"#;
    let siphon = Siphon::start(&proxy_config("debug"), script);
    let response = ask(&siphon, |from| {
        RawRequest::new("INVITE", "sip:bob@127.0.0.1", Transport::Udp, from)
    });
    assert_eq!(status_code(&response), Some(500), "{response}");
}

/// `set_header` adds/replaces and `remove_header` deletes, as the callee sees.
#[test]
fn header_edits_reach_the_callee() {
    let script = r#"from siphon import proxy

@proxy.on_request
def route(request):
    request.set_header("X-Siphon", "touched")
    request.set_header("X-Replace", "new")
    request.remove_header("X-Secret")
    request.relay()
"#;
    let siphon = Siphon::start(&proxy_config("debug"), script);
    let callee = UdpPeer::bind();
    let callee_addr = callee.local_addr();
    let client = UdpPeer::bind();
    let request = RawRequest::new(
        "OPTIONS",
        &format!("sip:someone@{callee_addr}"),
        Transport::Udp,
        client.local_addr(),
    )
    .header("X-Secret", "do-not-forward")
    .header("X-Replace", "old")
    .header("X-Keep", "kept");
    client.send_to(request.render().as_bytes(), siphon.addr());

    let (relayed, from) = callee
        .recv(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("callee got nothing\nlog:\n{}", siphon.log_tail(30)));
    assert_eq!(method(&relayed), Some("OPTIONS"), "{relayed}");
    assert_eq!(header(&relayed, "X-Siphon"), Some("touched"), "{relayed}");
    assert_eq!(
        header_values(&relayed, "X-Replace"),
        vec!["new"],
        "{relayed}"
    );
    assert_eq!(header(&relayed, "X-Secret"), None, "{relayed}");
    assert_eq!(header(&relayed, "X-Keep"), Some("kept"), "{relayed}");
    assert_eq!(header(&relayed, "Max-Forwards"), Some("69"), "{relayed}");

    callee.send_to(response_to(&relayed, 200, "OK").as_bytes(), from);
    let mut seen = Vec::new();
    let answer = client.recv_final(Duration::from_secs(5), &mut seen);
    assert_eq!(
        answer.as_deref().and_then(status_code),
        Some(200),
        "{seen:?}"
    );
}

#[test]
fn max_forwards_zero_gets_483() {
    let siphon = start_proxy("debug");
    let callee = UdpPeer::bind();
    let target = format!("sip:someone@{}", callee.local_addr());
    let response = ask(&siphon, |from| {
        RawRequest::new("OPTIONS", &target, Transport::Udp, from).max_forwards(0)
    });
    assert_eq!(status_code(&response), Some(483), "{response}");
    assert!(
        callee.recv(Duration::from_millis(300)).is_none(),
        "request was relayed"
    );
}

/// A request whose Request-URI points back at the first proxy comes round
/// again through a second with the first's own Via on it: the loop is
/// detected and answered 482.
#[test]
fn request_looping_through_the_proxy_gets_482() {
    // B relays everything to its Request-URI; A relays everything to B.
    let relay_all =
        "from siphon import proxy\n\n@proxy.on_request\ndef route(request):\n    request.relay()\n";
    let b = Siphon::start(&proxy_config("debug"), relay_all);
    let to_b = relay_all.replace(
        "request.relay()",
        &format!("request.relay(\"sip:{}\")", b.addr()),
    );
    let a = Siphon::start(&proxy_config("debug"), &to_b);
    let target = format!("sip:someone@{}", a.addr());
    let response = ask(&a, |from| {
        RawRequest::new("OPTIONS", &target, Transport::Udp, from)
    });
    assert_eq!(
        status_code(&response),
        Some(482),
        "{response}\nlog:\n{}",
        a.log_tail(20)
    );
}

/// A relay straight back to one of the proxy's own listeners is refused
/// before it leaves (security.relay_to), whatever the allow list says.
#[test]
fn a_relay_to_the_proxy_s_own_listener_is_refused_403() {
    let relay_all =
        "from siphon import proxy\n\n@proxy.on_request\ndef route(request):\n    request.relay()\n";
    let siphon = Siphon::start(&proxy_config("debug"), relay_all);
    let target = format!("sip:someone@{}", siphon.addr());
    let response = ask(&siphon, |from| {
        RawRequest::new("OPTIONS", &target, Transport::Udp, from)
    });
    assert_eq!(status_code(&response), Some(403), "{response}");
}

#[test]
fn options_to_the_proxy_itself_is_answered_by_proxy_py() {
    let siphon = start_proxy("debug");
    let response = ask(&siphon, options_to_proxy);
    assert_eq!(status_code(&response), Some(200), "{response}");
}

#[test]
fn check_accepts_a_good_config() {
    let outcome = run_check(&proxy_config("info"), &example_script("proxy.py"));
    assert_eq!(outcome.code, Some(0), "{}", outcome.output);
}

#[test]
fn check_rejects_an_unknown_key_and_names_it() {
    let config = proxy_config("info").replace("domain:", "bogus_knob: 3\ndomain:");
    let outcome = run_check(&config, &example_script("proxy.py"));
    assert_eq!(outcome.code, Some(1), "{}", outcome.output);
    assert!(outcome.output.contains("bogus_knob"), "{}", outcome.output);
    assert!(outcome.output.contains("siphon.yaml"), "{}", outcome.output);
}

#[test]
fn check_rejects_a_script_with_a_syntax_error() {
    let script =
        "from siphon import proxy\n\n@proxy.on_request\ndef route(request)\n    request.relay()\n";
    let outcome = run_check(&proxy_config("info"), script);
    assert_eq!(outcome.code, Some(1), "{}", outcome.output);
    assert!(outcome.output.contains("script.py"), "{}", outcome.output);
}

/// SIGHUP reloads the script; a broken replacement is refused and the old
/// script keeps running.
#[test]
fn sighup_reloads_the_script_and_keeps_the_old_one_if_broken() {
    let script = |reason: &str| {
        format!("from siphon import proxy\n\n@proxy.on_request\ndef route(request):\n    request.reply(403, \"{reason}\")\n")
    };
    let siphon = Siphon::start(&proxy_config("debug"), &script("First"));
    let reason = |siphon: &Siphon| {
        let response = ask(siphon, options_to_proxy);
        response.lines().next().unwrap_or_default().to_owned()
    };
    assert_eq!(reason(&siphon), "SIP/2.0 403 First");

    siphon.replace_script(&script("Second"));
    assert!(siphon.signal("HUP"));
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut line = reason(&siphon);
    while line != "SIP/2.0 403 Second" && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
        line = reason(&siphon);
    }
    assert_eq!(line, "SIP/2.0 403 Second", "{}", siphon.log_tail(20));

    let before = siphon.log().len();
    siphon.replace_script("from siphon import proxy\n\ndef broken(:\n");
    assert!(siphon.signal("HUP"));
    let logged = wait_for_new_log(&siphon, before, "SyntaxError", Duration::from_secs(5));
    assert!(
        logged,
        "no SyntaxError logged after a broken reload:\n{}",
        siphon.log_tail(20)
    );
    assert_eq!(reason(&siphon), "SIP/2.0 403 Second");
}

/// Whether NEEDLE appears in the log after byte offset FROM, within TIMEOUT.
fn wait_for_new_log(siphon: &Siphon, from: usize, needle: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let log = siphon.log();
        let new = log.as_bytes().get(from..).unwrap_or_default();
        if String::from_utf8_lossy(new).contains(needle) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// RFC 3261 §18.2.2: a response for a TCP request whose connection has
/// closed goes over a new connection to the request's source IP and its Via
/// sent-by port.
#[test]
fn a_response_after_the_tcp_connection_closed_reconnects_to_sent_by() {
    let sent_by = std::net::TcpListener::bind((LOCALHOST, 0)).expect("listener");
    let sent_by_addr = sent_by.local_addr().expect("listener addr");
    let backend = UdpPeer::bind();
    let script = format!(
        r#"from siphon import proxy

@proxy.on_request
def route(request):
    request.relay("sip:{}")
"#,
        backend.local_addr()
    );
    let siphon = Siphon::start(&proxy_config("debug"), &script);
    let mut caller = TcpPeer::connect(siphon.addr());
    let invite = RawRequest::new("INVITE", "sip:bob@127.0.0.1", Transport::Tcp, sent_by_addr);
    assert!(caller.send(invite.render().as_bytes()));
    let (forwarded, _) = backend
        .recv(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("INVITE not relayed\n{}", siphon.log_tail(20)));
    // The caller goes away before the answer comes.
    drop(caller);
    thread::sleep(Duration::from_millis(300));
    backend.send_to(
        response_to(&forwarded, 486, "Busy Here").as_bytes(),
        siphon.addr(),
    );
    sent_by.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut stream = loop {
        match sent_by.accept() {
            Ok((stream, _)) => break stream,
            Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!(
                "siphon did not connect to sent-by ({e})\n{}",
                siphon.log_tail(20)
            ),
        }
    };
    stream.set_nonblocking(false).expect("blocking");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&received).contains("486 Busy Here") {
        match std::io::Read::read(&mut stream, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => received.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&received);
    assert!(text.contains("SIP/2.0 486 Busy Here"), "got {text:?}");
    assert!(text.contains(&invite.call_id), "{text}");
}
