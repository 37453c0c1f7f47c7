//! The engine on virtual time: one test per RFC rule, each driving requests,
//! responses, decisions and timers by hand and checking what comes out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::proxy::decision::ForkTarget;
use crate::sip::{build, Uri};

const UAC: &str = "198.51.100.10:5060";
const PROXY: &str = "192.0.2.1:5060";
const BACKEND1: &str = "198.51.100.21:5060";
const BACKEND2: &str = "198.51.100.22:5060";
const BACKEND3: &str = "198.51.100.23:5060";
const NEXT: &str = "198.51.100.30:5060";
const STRICT: &str = "198.51.100.31:5060";

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("test address")
}

fn settings() -> TimerSettings {
    TimerSettings {
        t1: Duration::from_millis(500),
        t2: Duration::from_secs(4),
        t4: Duration::from_secs(5),
        timer_c: Duration::from_secs(180),
        max_invite_lifetime: Duration::from_secs(600),
    }
}

/// Where the test's URIs go: a host name per peer, `;transport=tcp` for TCP.
fn hop_of(uri: &str) -> Result<Hop, HopError> {
    let parsed = Uri::parse(uri).map_err(|e| HopError::Unsupported(e.to_string()))?;
    let addr = match parsed.host {
        "backend1.example" => BACKEND1,
        "backend2.example" => BACKEND2,
        "backend3.example" => BACKEND3,
        "next.example" => NEXT,
        "strict.example" => STRICT,
        "198.51.100.10" => UAC,
        other => return Err(HopError::Unresolvable(other.to_string())),
    };
    let protocol = match parsed.param("transport").flatten() {
        _ if parsed.scheme.eq_ignore_ascii_case("sips") => Protocol::Tls,
        Some(t) if t.eq_ignore_ascii_case("tcp") => Protocol::Tcp,
        Some(t) if t.eq_ignore_ascii_case("tls") => Protocol::Tls,
        _ => Protocol::Udp,
    };
    Ok(Hop::new(addr.parse().expect("hop"), protocol))
}

/// A probe to HOP that its prober gives up on after 2 s.
fn probe_target(hop: Hop, strict_source: bool) -> ProbeTarget {
    ProbeTarget {
        hop,
        strict_source,
        give_up: Duration::from_secs(2),
        from: None,
    }
}

fn parse(text: &str) -> Message {
    sip::parse(Bytes::from(text.replace('\n', "\r\n"))).expect("test message parses")
}

/// A request from the UAC. `extra` lines go before Content-Length.
fn request(method: &str, ruri: &str, branch: &str, call_id: &str, extra: &str) -> Message {
    let mut text = format!(
        "{method} {ruri} SIP/2.0\n\
         Via: SIP/2.0/UDP 198.51.100.10:5060;branch={branch};rport\n\
         Max-Forwards: 70\n\
         From: <sip:alice@example.com>;tag=a1\n\
         To: <sip:bob@example.com>\n\
         Call-ID: {call_id}\n\
         CSeq: 1 {method}\n\
         Contact: <sip:alice@198.51.100.10>\n"
    );
    text.push_str(extra);
    text.push_str("Content-Length: 0\n\n");
    parse(&text)
}

use crate::proxy::seal::unsealed;

/// The `;dlg=` parameter the harness's engine writes for a dialog started
/// with TAG by a caller at CALLER.
fn sealed_for(call_id: &str, tag: &str, caller: &str) -> String {
    let seals = crate::proxy::seal::DialogSeals::new(HARNESS_ROUTE_SECRET, None);
    let seal = seals.seal(call_id, tag, caller.parse().expect("caller IP"));
    let entry = crate::proxy::seal::sealed_entry("<sip:x>", &seal);
    entry["<sip:x".len()..entry.len() - 1].to_string()
}

const HARNESS_ROUTE_SECRET: &[u8] = b"test";

/// The engine, the virtual clock, and everything it put out so far.
struct Harness {
    engine: Engine<u32>,
    now: Instant,
    out: Vec<Output<u32>>,
    /// `@proxy.on_failure` runs waiting for a test's decision; when false
    /// (the default) each is answered at once with no action, as with a
    /// script that has no such handler.
    hold_failures: bool,
    failure_runs: Vec<FailureRun>,
}

/// The proxy of most tests: UDP and TCP on 192.0.2.1:5060, listeners 0
/// and 1 (so `protocol as usize` is the listener a request arrives on).
fn one_address() -> Vec<Listener> {
    vec![
        Listener::new(Protocol::Udp, addr(PROXY), None),
        Listener::new(Protocol::Tcp, addr(PROXY), None),
    ]
}

impl Harness {
    fn new() -> Self {
        Harness::with_listeners(one_address(), Arc::new(|_| None))
    }

    fn with_listeners(listeners: Vec<Listener>, route: RouteLookup) -> Self {
        let local = LocalIdentity::new(&["proxy.example".to_string()], &listeners);
        Harness {
            engine: Engine::new(EngineConfig {
                timers: settings(),
                local: Arc::new(local),
                listeners,
                route,
                branch_secret: [7, 9],
                drain_secs: 7,
                max_transactions: usize::MAX,
                flow_tokens: crate::proxy::flow::FlowTokens::new([3; 32]),
                seals: crate::proxy::seal::DialogSeals::new(HARNESS_ROUTE_SECRET, None),
                accept_unsealed: false,
                udp_max_request_bytes: 1300,
                call_max: Duration::from_secs(4 * 3600),
                max_tracked_calls: 1000,
            }),
            now: Instant::now(),
            out: Vec::new(),
            hold_failures: false,
            failure_runs: Vec::new(),
        }
    }

    fn collect(&mut self) {
        while let Some(output) = self.engine.poll_output() {
            match output {
                Output::RunFailure(run) if !self.hold_failures => {
                    self.engine.handle_decision(
                        self.now,
                        run.ticket,
                        Decision::default(),
                        &mut hop_of,
                    );
                }
                Output::RunFailure(run) => self.failure_runs.push(run),
                other => self.out.push(other),
            }
        }
    }

    /// A request from `source`; returns the script run it asks for, if any.
    fn receive(&mut self, msg: Message, source: &str, protocol: Protocol) -> Option<ScriptRun> {
        self.receive_on(msg, source, protocol as usize)
    }

    /// A request from `source` on listener `listener`.
    fn receive_on(&mut self, msg: Message, source: &str, listener: usize) -> Option<ScriptRun> {
        self.engine
            .handle_request(self.now, msg, addr(source), listener, 1, false);
        self.collect();
        let index = self
            .out
            .iter()
            .position(|o| matches!(o, Output::RunScript(_)))?;
        match self.out.remove(index) {
            Output::RunScript(run) => Some(run),
            _ => None,
        }
    }

    fn decide(&mut self, run: &ScriptRun, decision: Decision) {
        self.engine
            .handle_decision(self.now, run.ticket, decision, &mut hop_of);
        self.collect();
    }

    /// Receives REQUEST over UDP from the UAC and has the script relay it
    /// (to `uri` when given), as `request.relay(uri)` does.
    fn relay(&mut self, msg: Message, uri: Option<&str>) -> ScriptRun {
        let run = self.receive(msg, UAC, Protocol::Udp).expect("script runs");
        let decision = script_decision(
            &run,
            Action::Relay {
                uri: uri.map(str::to_string),
            },
        );
        self.decide(&run, decision);
        run
    }

    /// Receives MSG from the UAC and relays it to the first of RELAY's
    /// candidates, as `request.relay(gateway.select(...).uri)` does.
    fn relay_to_gateway(
        &mut self,
        msg: Message,
        relay: crate::proxy::decision::GatewayRelay,
    ) -> ScriptRun {
        let run = self.receive(msg, UAC, Protocol::Udp).expect("script runs");
        let uri = relay.candidates[0].uri.to_string();
        let decision = Decision {
            gateway: Some(relay),
            ..script_decision(&run, Action::Relay { uri: Some(uri) })
        };
        self.decide(&run, decision);
        run
    }

    fn respond(&mut self, msg: Message, source: &str) {
        self.engine.handle_response(self.now, msg, addr(source));
        self.collect();
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.engine.handle_timeout(self.now);
        self.collect();
    }

    /// Runs the clock forward in steps of `step` for `total`.
    fn run_for(&mut self, total: Duration, step: Duration) {
        let end = self.now + total;
        while self.now < end {
            self.advance(step);
        }
    }

    fn take(&mut self) -> Vec<Output<u32>> {
        std::mem::take(&mut self.out)
    }

    /// The messages sent to HOP (requests, ACKs, CANCELs), taken.
    fn sent_to(&mut self, hop: &str) -> Vec<Message> {
        let hop = addr(hop);
        let (mine, rest): (Vec<_>, Vec<_>) = self
            .take()
            .into_iter()
            .partition(|o| matches!(o, Output::Send { hop: h, .. } if h.addr == hop));
        self.out = rest;
        mine.into_iter()
            .filter_map(|o| match o {
                Output::Send { bytes, .. } => sip::parse(bytes).ok(),
                _ => None,
            })
            .collect()
    }

    /// Where every message sent so far went, taken with the outputs.
    fn sent_hops(&mut self) -> Vec<Hop> {
        self.take()
            .into_iter()
            .filter_map(|o| match o {
                Output::Send { hop, .. } => Some(hop),
                _ => None,
            })
            .collect()
    }

    /// The responses sent upstream on the request's flow, taken.
    fn replies(&mut self) -> Vec<Message> {
        let (mine, rest): (Vec<_>, Vec<_>) = self
            .take()
            .into_iter()
            .partition(|o| matches!(o, Output::Reply { .. }));
        self.out = rest;
        mine.into_iter()
            .filter_map(|o| match o {
                Output::Reply { bytes, .. } => sip::parse(bytes).ok(),
                _ => None,
            })
            .collect()
    }

    fn reply_codes(&mut self) -> Vec<u16> {
        self.replies().iter().filter_map(Message::status).collect()
    }

    /// The codes sent upstream, a final's Timer G retransmissions folded.
    fn distinct_reply_codes(&mut self) -> Vec<u16> {
        let mut codes = self.reply_codes();
        codes.dedup();
        codes
    }
}

/// The decision a script makes that only takes ACTION: it starts from what
/// the core did to the Route set, as the script layer's state does.
fn script_decision(run: &ScriptRun, action: Action) -> Decision {
    Decision {
        action: Some(action),
        routes_popped: run.preroute.routes_popped,
        new_ruri: run.preroute.strict_ruri.clone(),
        record_route: true,
        ..Decision::default()
    }
}

/// A response to a request we sent, as its UAS would build it.
fn answer(sent: &Message, code: u16, extra: &[(&str, &str)]) -> Message {
    let reason = build::default_reason(code);
    let bytes = build::response(sent, code, reason, Some("uas-tag"), extra);
    sip::parse(Bytes::from(bytes)).expect("response parses")
}

/// MSG with its first FROM replaced by TO, parsed again.
fn edited(msg: &Message, from: &str, to: &str) -> Message {
    let text = String::from_utf8_lossy(msg.as_bytes()).replacen(from, to, 1);
    sip::parse(Bytes::from(text)).expect("edited message parses")
}

/// MSG as it arrives after its last hop: Max-Forwards 0.
fn out_of_hops(msg: &Message) -> Message {
    edited(msg, "Max-Forwards: 70", "Max-Forwards: 0")
}

fn invite(call_id: &str) -> Message {
    request(
        "INVITE",
        "sip:bob@example.com",
        &format!("z9hG4bK-{call_id}"),
        call_id,
        "",
    )
}

/// The caller's CANCEL of `invite(call_id)` (§9.1: its branch, Call-ID,
/// From and CSeq number).
fn cancel_of(call_id: &str) -> Message {
    request(
        "CANCEL",
        "sip:bob@example.com",
        &format!("z9hG4bK-{call_id}"),
        call_id,
        "",
    )
}

fn fork(targets: &[&str]) -> Action {
    Action::Fork {
        targets: targets
            .iter()
            .map(|uri| ForkTarget {
                uri: uri.to_string(),
                path: Vec::new(),
                vouched: false,
            })
            .collect(),
    }
}

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

impl Harness {
    /// The one request the last relay sent to BACKEND1.
    /// The passive health reports so far, taken: `(uri, failure)`.
    fn health(&mut self) -> Vec<(String, Option<RelayFailure>)> {
        let (mine, rest): (Vec<_>, Vec<_>) = self
            .take()
            .into_iter()
            .partition(|o| matches!(o, Output::Health(_)));
        self.out = rest;
        mine.into_iter()
            .filter_map(|o| match o {
                Output::Health(report) => {
                    Some((report.uri.to_string(), report.failure.map(|(f, _)| f)))
                }
                _ => None,
            })
            .collect()
    }

    /// The one INVITE (or other request) sent to HOP, taken.
    fn one_sent_to(&mut self, hop: &str) -> Message {
        let mut sent = self.sent_to(hop);
        assert_eq!(sent.len(), 1, "one request to {hop}");
        sent.remove(0)
    }

    /// Receives MSG from the UAC over PROTOCOL and has the script fork it
    /// to backends 1 and 2; what each got, taken.
    fn fork_to_both(&mut self, msg: Message, protocol: Protocol) -> (Vec<Message>, Vec<Message>) {
        let run = self.receive(msg, UAC, protocol).expect("script runs");
        let targets = fork(&["sip:bob@backend1.example", "sip:bob@backend2.example"]);
        self.decide(&run, script_decision(&run, targets));
        (self.sent_to(BACKEND1), self.sent_to(BACKEND2))
    }

    fn sent_to_after_relay(&mut self) -> Message {
        let mut sent = self.sent_to(BACKEND1);
        assert_eq!(sent.len(), 1, "one request to the backend");
        sent.remove(0)
    }
}

// ---------------------------------------------------------------------------
// Bug 2: a non-INVITE 2xx in a fork goes upstream at once (§16.7 step 5)
// ---------------------------------------------------------------------------

#[test]
fn a_non_invite_2xx_is_forwarded_without_waiting_for_other_branches() {
    let mut h = Harness::new();
    let message = request("MESSAGE", "sip:bob@example.com", "z9hG4bK-msg", "msg", "");
    let (first, second) = h.fork_to_both(message, Protocol::Udp);
    assert_eq!(second.len(), 1);
    h.respond(answer(&first[0], 200, &[]), BACKEND1);
    assert_eq!(h.reply_codes(), [200], "the 2xx did not wait for backend 2");
}

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

// ---------------------------------------------------------------------------
// Bug 11: a 2xx retransmission after Timer L still goes upstream
// ---------------------------------------------------------------------------

#[test]
fn a_late_2xx_retransmission_of_a_forked_call_is_forwarded() {
    let mut h = Harness::new();
    late_2xx_retransmission(&mut h, Protocol::Udp);
    let forwarded = h.sent_to(UAC);
    assert_eq!(forwarded.len(), 1, "the 2xx retransmission was dropped");
    assert_eq!(forwarded[0].status(), Some(200));
}

/// A call from the UAC over PROTOCOL forks to two backends; both answer
/// 200, and backend 2 retransmits its 200 once the server transaction is
/// gone (Timer L, 64·T1 after the first 2xx) while its client transaction
/// (Timer M) lives on for 2 s more. Leaves what that retransmission sent.
fn late_2xx_retransmission(h: &mut Harness, protocol: Protocol) {
    let (first, second) = h.fork_to_both(invite("two-2xx"), protocol);
    h.respond(answer(&first[0], 200, &[]), BACKEND1);
    h.advance(Duration::from_secs(2));
    let late_ok = answer(&second[0], 200, &[]);
    h.respond(late_ok.clone(), BACKEND2);
    assert_eq!(h.reply_codes(), [100, 200, 200], "every 2xx goes upstream");
    h.advance(Duration::from_millis(30_500));
    h.take();
    h.respond(late_ok, BACKEND2);
}

// ---------------------------------------------------------------------------
// Bug 12: response selection and Timer C
// ---------------------------------------------------------------------------

#[test]
fn challenges_are_merged_and_preferred_over_other_4xx() {
    let mut h = Harness::new();
    let run = h.receive(invite("auth"), UAC, Protocol::Udp).unwrap();
    let targets = [
        "sip:bob@backend1.example",
        "sip:bob@backend2.example",
        "sip:bob@backend3.example",
    ];
    h.decide(&run, script_decision(&run, fork(&targets)));
    let one = h.sent_to(BACKEND1);
    let two = h.sent_to(BACKEND2);
    let three = h.sent_to(BACKEND3);
    h.respond(answer(&one[0], 486, &[]), BACKEND1);
    h.respond(
        answer(
            &two[0],
            407,
            &[("Proxy-Authenticate", "Digest realm=\"a\", nonce=\"1\"")],
        ),
        BACKEND2,
    );
    h.respond(
        answer(
            &three[0],
            401,
            &[("WWW-Authenticate", "Digest realm=\"b\", nonce=\"2\"")],
        ),
        BACKEND3,
    );
    let replies = h.replies();
    let last = replies.last().expect("a final response");
    assert_eq!(last.status(), Some(407));
    assert_eq!(
        last.header_named("Proxy-Authenticate"),
        Some("Digest realm=\"a\", nonce=\"1\"")
    );
    assert_eq!(
        last.header_named("WWW-Authenticate"),
        Some("Digest realm=\"b\", nonce=\"2\"")
    );
    assert_eq!(
        last.header_values(HeaderName::Via).count(),
        1,
        "our Via is gone"
    );
}

/// An INVITE branch answers `first` after 1 s and `second` after 100 s;
/// returns the seconds since `second` at which Timer C CANCELed the branch.
fn timer_c_fires_after(first: u16, second: u16) -> u64 {
    let mut h = Harness::new();
    h.relay(
        invite(&format!("timer-c-{first}-{second}")),
        Some("sip:backend1.example"),
    );
    let sent = h.sent_to(BACKEND1);
    h.advance(Duration::from_secs(1));
    h.respond(answer(&sent[0], first, &[]), BACKEND1);
    h.run_for(Duration::from_secs(99), Duration::from_secs(1));
    h.respond(answer(&sent[0], second, &[]), BACKEND1);
    h.take();
    for elapsed in 1..=300 {
        h.advance(Duration::from_secs(1));
        if h.sent_to(BACKEND1)
            .iter()
            .any(|m| m.method_str() == "CANCEL")
        {
            return elapsed;
        }
    }
    panic!("Timer C never fired");
}

#[test]
fn a_100_trying_does_not_reset_timer_c() {
    // 180 s after the 180, that is 81 s after the late 100.
    assert_eq!(timer_c_fires_after(180, 100), 81);
}

#[test]
fn a_180_resets_timer_c() {
    assert_eq!(timer_c_fires_after(100, 180), 180);
}

#[test]
fn an_invite_held_by_180s_ends_at_its_max_lifetime_with_408_and_cancel() {
    let mut h = Harness::new();
    h.engine.config.timers.max_invite_lifetime = Duration::from_secs(100);
    h.relay(invite("held"), Some("sip:backend1.example"));
    let sent = h.sent_to(BACKEND1);
    // A 180 every 30 s would push Timer C (180 s) back for ever.
    let mut cancelled_at = None;
    for second in 1..=200u64 {
        h.advance(Duration::from_secs(1));
        if second % 30 == 0 {
            h.respond(answer(&sent[0], 180, &[]), BACKEND1);
        }
        let cancels = h
            .sent_to(BACKEND1)
            .iter()
            .filter(|m| m.method_str() == "CANCEL")
            .count();
        if cancels > 0 {
            cancelled_at = Some(second);
            break;
        }
    }
    assert_eq!(
        cancelled_at,
        Some(100),
        "CANCELed downstream at the lifetime"
    );
    // The CANCEL's 200 and the INVITE's 487 come back: the caller has 408.
    h.run_for(Duration::from_secs(40), Duration::from_secs(1));
    let codes = h.distinct_reply_codes();
    assert!(codes.contains(&408), "{codes:?}");
}

#[test]
fn a_6xx_cancels_the_other_branches_and_wins() {
    let mut h = Harness::new();
    let (one, two) = h.fork_to_both(invite("decline"), Protocol::Udp);
    h.respond(answer(&two[0], 180, &[]), BACKEND2);
    h.respond(answer(&one[0], 603, &[]), BACKEND1);
    let to_two = h.sent_to(BACKEND2);
    assert!(to_two.iter().any(|m| m.method_str() == "CANCEL"));
    h.respond(answer(&two[0], 487, &[]), BACKEND2);
    assert_eq!(h.reply_codes(), [100, 180, 603]);
}

#[test]
fn a_lone_503_becomes_a_500() {
    let mut h = Harness::new();
    h.relay(invite("unavailable"), Some("sip:backend1.example"));
    let sent = h.sent_to(BACKEND1);
    h.respond(answer(&sent[0], 503, &[]), BACKEND1);
    assert_eq!(h.reply_codes(), [100, 500]);
}

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
// Bug 14: responses over TCP can find their way back
// ---------------------------------------------------------------------------

#[test]
fn tcp_responses_name_the_sent_by_port_to_reconnect_to() {
    let mut h = Harness::new();
    let msg = edited(
        &invite("tcp"),
        "SIP/2.0/UDP 198.51.100.10:5060",
        "SIP/2.0/TCP 198.51.100.10:5070",
    );
    h.receive(msg, "198.51.100.10:40001", Protocol::Tcp)
        .unwrap();
    let dests: Vec<SocketAddr> = h
        .take()
        .into_iter()
        .filter_map(|o| match o {
            Output::Reply { dest, .. } => Some(dest),
            _ => None,
        })
        .collect();
    assert_eq!(dests, [addr("198.51.100.10:5070")]);
}

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

mod capacity;
mod deployments;
mod failover;
mod flows;
mod limits;
mod lookups;
mod multihomed;
mod seals;
