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
                ended_bytes: usize::MAX,
                flow_tokens: crate::proxy::flow::FlowTokens::new([3; 32]),
                seals: crate::proxy::seal::DialogSeals::new(HARNESS_ROUTE_SECRET, None),
                accept_unsealed: false,
                udp_max_request_bytes: 1300,
                call_max: Duration::from_secs(4 * 3600),
                max_tracked_calls: 1000,
                tracing: None,
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
                Output::RunFailure(run) => self.failure_runs.push(*run),
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

mod basics;
mod capacity;
mod deployments;
mod ended;
mod failover;
mod flows;
mod late_decisions;
mod limits;
mod lookups;
mod matching;
mod multihomed;
mod probes;
mod responses;
mod routing;
mod seals;
mod timeouts;
mod tracing;
mod validation;
