//! Bounded random testing of the engine, and of the forwarding rewriter,
//! Via stamping and loop detection it drives. Random sequences of requests,
//! script decisions, responses, mutated messages and the passing of time,
//! well-formed and hostile alike, must never panic; every message the engine
//! puts out must parse; and once every request is decided and ten minutes
//! have passed, no transaction may remain.
//!
//! Coverage-free and on the stable toolchain: a seeded generator runs for
//! `SIPHON_FUZZ_SECS` seconds (1 by default, as part of the suite; the
//! closing note of issue 9 gives a 10-minute run). A failure prints its seed;
//! `SIPHON_FUZZ_SEED=<seed>` replays exactly that sequence.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::proxy::capacity::Capacity;
use crate::proxy::decision::{FailoverPolicy, ForkTarget, RelayCandidate};
use crate::sip::Uri;

/// xorshift64*: small, fast and reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const PROXY: &str = "192.0.2.1:5060";
const SOURCES: [&str; 3] = [
    "198.51.100.10:5060",
    "198.51.100.11:40000",
    "203.0.113.66:5060",
];
const HOSTS: [(&str, &str); 4] = [
    ("backend1.example", "198.51.100.21:5060"),
    ("backend2.example", "198.51.100.22:5060"),
    ("198.51.100.10", "198.51.100.10:5060"),
    ("strict.example", "198.51.100.31:5060"),
];
const URIS: [&str; 8] = [
    "sip:bob@backend1.example",
    "sip:backend2.example;transport=tcp",
    "sip:alice@198.51.100.10",
    "sip:strict.example",
    "sip:nowhere.example",
    "sips:bob@backend1.example",
    "sip:192.0.2.1:5060;lr",
    "tel:+15551234",
];

fn hop_of(uri: &str) -> Result<Hop, HopError> {
    let parsed = Uri::parse(uri).map_err(|e| HopError::Unsupported(e.to_string()))?;
    let (_, addr) = HOSTS
        .iter()
        .find(|(host, _)| *host == parsed.host)
        .ok_or_else(|| HopError::Unresolvable(parsed.host.to_string()))?;
    let protocol = match parsed.param("transport").flatten() {
        Some(t) if t.eq_ignore_ascii_case("tcp") => Protocol::Tcp,
        _ => Protocol::Udp,
    };
    Ok(Hop::new(addr.parse().expect("host address"), protocol))
}

/// One fuzzing run: the engine, its clock and what it has said.
struct Run {
    rng: Rng,
    engine: Engine<u8>,
    now: Instant,
    pending: Vec<ScriptRun>,
    /// Recent messages: what the engine sent (to answer or mutate).
    sent: Vec<(Hop, Bytes)>,
    seen: Vec<Bytes>,
    /// Each host's call counters, some with a limit or a pace: nothing
    /// may leak whatever the sequence.
    capacities: Vec<Arc<Capacity>>,
    /// The server spans of the traces emitted: each transaction's once.
    traced: std::collections::HashSet<u64>,
}

impl Run {
    fn new(seed: u64) -> Self {
        let listeners = vec![
            Listener::new(Protocol::Udp, PROXY.parse().unwrap(), None),
            Listener::new(Protocol::Tcp, PROXY.parse().unwrap(), None),
            Listener::new(Protocol::Udp, "198.51.100.1:5060".parse().unwrap(), None),
        ];
        let local = LocalIdentity::new(&["proxy.example".to_string()], &listeners);
        Run {
            rng: Rng(seed | 1),
            engine: Engine::new(EngineConfig {
                timers: TimerSettings::default(),
                local: Arc::new(local),
                listeners,
                // Two UDP listeners: the backends' side is reached from the second.
                route: Arc::new(|ip: std::net::IpAddr| {
                    let backends = ip.to_string().starts_with("198.51.100.");
                    let local = if backends {
                        "198.51.100.1"
                    } else {
                        "192.0.2.1"
                    };
                    local.parse().ok()
                }),
                branch_secret: [seed, !seed],
                drain_secs: 5,
                max_transactions: usize::MAX,
                // A third of the runs evict ended transactions early.
                ended_bytes: if seed.is_multiple_of(3) {
                    4096
                } else {
                    usize::MAX
                },
                flow_tokens: crate::proxy::flow::FlowTokens::new([3; 32]),
                seals: crate::proxy::seal::DialogSeals::new(b"fuzz", None),
                accept_unsealed: false,
                udp_max_request_bytes: 1300,
                call_max: Duration::from_secs(4 * 3600),
                max_tracked_calls: 1000,
                // Half the runs trace every call, so spans meet every path too.
                tracing: seed
                    .is_multiple_of(2)
                    .then(|| crate::telemetry::TraceSettings {
                        sampler: crate::telemetry::Sampler::new(1.0),
                        follow: crate::telemetry::FollowTraceparent::Any,
                    }),
            }),
            now: Instant::now(),
            pending: Vec::new(),
            traced: Default::default(),
            sent: Vec::new(),
            seen: Vec::new(),
            capacities: (0..HOSTS.len())
                .map(|i| {
                    let max_calls = [None, Some(1), Some(3)][(seed as usize + i) % 3];
                    let max_cps = [None, None, Some(2.0)][(seed as usize / 3 + i) % 3];
                    Arc::new(Capacity::new(max_calls, max_cps))
                })
                .collect(),
        }
    }

    fn source(&mut self) -> SocketAddr {
        self.rng.pick(&SOURCES).parse().unwrap()
    }

    /// Takes the engine's outputs, checking that each message parses.
    fn drain(&mut self) {
        while let Some(output) = self.engine.poll_output() {
            match output {
                Output::Send { hop, bytes, .. } => {
                    if let Err(e) = sip::parse(bytes.clone()) {
                        panic!("sent a message that does not parse ({e:?}): {bytes:?}");
                    }
                    remember(&mut self.sent, (hop, bytes));
                }
                Output::Reply { bytes, .. } => {
                    assert!(
                        sip::parse(bytes.clone()).is_ok(),
                        "replied with a message that does not parse: {bytes:?}"
                    );
                    remember(&mut self.seen, bytes);
                }
                Output::RunScript(run) => self.pending.push(run),
                Output::RunFailure(run) => self.pending.push(ScriptRun {
                    ticket: run.ticket,
                    request: run.request,
                    source: run.source,
                    protocol: run.protocol,
                    preroute: run.preroute,
                    trace_id: run.trace_id,
                }),
                Output::Trace(trace) => {
                    check_trace(&trace);
                    assert!(
                        self.traced.insert(trace.spans[0].span_id),
                        "a transaction's trace went twice"
                    );
                }
                Output::ProbeDone { .. }
                | Output::Health(_)
                | Output::Failover(_)
                | Output::GatewayFull { .. }
                | Output::CallCollected(_) => {}
            }
        }
    }

    fn step(&mut self) {
        match self.rng.below(100) {
            0..=29 => self.request(),
            30..=49 => self.decide_one(),
            50..=74 => self.respond(),
            75..=84 => self.garbage(),
            85..=89 => self.probe(),
            _ => self.advance(),
        }
        self.drain();
    }

    fn request(&mut self) {
        let method = *self.rng.pick(&[
            "INVITE", "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "MESSAGE", "FOO",
        ]);
        let branch = *self.rng.pick(&[
            "z9hG4bK-a",
            "z9hG4bK-b",
            "z9hG4bK-c",
            "z9hG4bK",
            "1234",
            "z9hG4bK-d",
        ]);
        let call_id = *self.rng.pick(&["c1", "c2", "c3", "c4"]);
        let ruri = *self.rng.pick(&URIS[..7]);
        let sent_by =
            *self
                .rng
                .pick(&["198.51.100.10:5060", "198.51.100.11", "[2001:db8::1]:5070"]);
        let transport = if self.rng.chance(20) { "TCP" } else { "UDP" };
        let mut text = format!("{method} {ruri} SIP/2.0\r\n");
        if self.rng.chance(10) {
            // Our own Via below the sender's: a loop, or a spiral.
            let loop_hash = if self.rng.chance(50) {
                0
            } else {
                self.rng.next()
            };
            text.push_str(&format!(
                "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK{loop_hash:016x}.{:016x}\r\n",
                self.rng.next()
            ));
        }
        let rport = *self
            .rng
            .pick(&[";rport", "", ";rport=1;received=203.0.113.9"]);
        text = text.replacen(
            "\r\n",
            &format!("\r\nVia: SIP/2.0/{transport} {sent_by};branch={branch}{rport}\r\n"),
            1,
        );
        let max_forwards = *self.rng.pick(&["70", "70", "1", "0"]);
        text.push_str(&format!("Max-Forwards: {max_forwards}\r\n"));
        text.push_str("From: <sip:alice@example.com>;tag=f1\r\n");
        let to_tag = if self.rng.chance(30) { ";tag=t1" } else { "" };
        text.push_str(&format!(
            "To: <sip:bob@example.com>{to_tag}\r\nCall-ID: {call_id}\r\n"
        ));
        let cseq = 1 + self.rng.below(3);
        text.push_str(&format!("CSeq: {cseq} {method}\r\n"));
        if self.rng.chance(40) {
            let routes = *self.rng.pick(&[
                "<sip:192.0.2.1:5060;lr>",
                "<sip:192.0.2.1:5060;lr>, <sip:backend1.example;lr>",
                "<sip:strict.example>, <sip:bob@198.51.100.10>",
                "<sip:backend2.example;lr>",
                "<sip:192.0.2.1:5060;lr>, <sip:192.0.2.1:5060;lr>",
            ]);
            text.push_str(&format!("Route: {routes}\r\n"));
        }
        if self.rng.chance(5) {
            text.push_str("Proxy-Require: foo\r\n");
        }
        text.push_str("Contact: <sip:alice@198.51.100.10>\r\nContent-Length: 0\r\n\r\n");
        let bytes = Bytes::from(text);
        remember(&mut self.seen, bytes.clone());
        if let Ok(msg) = sip::parse(bytes) {
            let source = self.source();
            let protocol = if transport == "TCP" {
                Protocol::Tcp
            } else {
                Protocol::Udp
            };
            let draining = self.rng.chance(5);
            self.engine
                .handle_request(self.now, msg, source, protocol as usize, 0, draining);
        }
    }

    fn decision(&mut self, run: &ScriptRun) -> Decision {
        let mut gateway = None;
        let action = match self.rng.below(7) {
            0 => None,
            1 => Some(Action::Reply {
                code: *self.rng.pick(&[100, 180, 200, 302, 404, 486, 503, 603]),
                reason: None,
                headers: if self.rng.chance(30) {
                    vec![("Contact".into(), "<sip:a@198.51.100.10>".into())]
                } else {
                    Vec::new()
                },
            }),
            2 | 3 => Some(Action::Relay {
                uri: self
                    .rng
                    .chance(50)
                    .then(|| self.rng.pick(&URIS).to_string()),
            }),
            4 => {
                // A relay to a gateway group: its candidates in some order.
                let mut candidates: Vec<RelayCandidate> = Vec::new();
                for (index, (host, addr)) in HOSTS.iter().enumerate() {
                    if self.rng.chance(70) {
                        let counted = self.rng.chance(70);
                        candidates.push(RelayCandidate {
                            uri: Arc::from(format!("sip:{host}").as_str()),
                            hop: Hop::new(addr.parse().unwrap(), Protocol::Udp),
                            report_success: self.rng.chance(50),
                            capacity: counted.then(|| self.capacities[index].clone()),
                        });
                    }
                }
                if candidates.is_empty() {
                    None
                } else {
                    let first = self.rng.below(candidates.len());
                    candidates.swap(0, first);
                    gateway = Some(GatewayRelay {
                        group: Arc::from("fuzz"),
                        policy: Arc::new(FailoverPolicy {
                            enabled: self.rng.chance(80),
                            no_response: Duration::from_millis(*self.rng.pick(&[1, 500, 1000])),
                            on_codes: vec![503, 500],
                            max_attempts: 1 + self.rng.below(4),
                            strict_source: self.rng.chance(50),
                            passive_health: self.rng.chance(80),
                        }),
                        candidates,
                    });
                    Some(Action::Relay {
                        uri: gateway.as_ref().map(|g| g.candidates[0].uri.to_string()),
                    })
                }
            }
            _ => Some(Action::Fork {
                targets: (0..1 + self.rng.below(3))
                    .map(|_| ForkTarget {
                        uri: self.rng.pick(&URIS).to_string(),
                        path: if self.rng.chance(20) {
                            vec!["<sip:backend2.example;lr>".into()]
                        } else {
                            Vec::new()
                        },
                        vouched: self.rng.chance(50),
                    })
                    .collect(),
            }),
        };
        let mut header_edits = Vec::new();
        if self.rng.chance(30) {
            header_edits.push(("X-Edit".to_string(), Some("1".to_string())));
        }
        if self.rng.chance(20) {
            header_edits.push(("Contact".to_string(), None));
        }
        Decision {
            action,
            failed: self.rng.chance(5),
            record_route: self.rng.chance(60),
            header_edits,
            routes_popped: run.preroute.routes_popped + self.rng.below(3),
            new_ruri: run.preroute.strict_ruri.clone(),
            gateway,
            registrar_lookups: Vec::new(),
            capture: None,
        }
    }

    fn decide_one(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let index = self.rng.below(self.pending.len());
        let run = self.pending.swap_remove(index);
        let decision = self.decision(&run);
        self.engine
            .handle_decision(self.now, run.ticket, decision, &mut hop_of);
    }

    fn respond(&mut self) {
        if self.sent.is_empty() {
            return;
        }
        let (hop, bytes) = self.sent[self.rng.below(self.sent.len())].clone();
        let Ok(request) = sip::parse(bytes) else {
            return;
        };
        if !request.is_request() || request.method() == Some(Method::Ack) {
            return;
        }
        let code = *self.rng.pick(&[
            100, 180, 183, 200, 202, 302, 401, 404, 407, 408, 486, 487, 500, 503, 600, 603,
        ]);
        let mut extra: Vec<(&str, &str)> = Vec::new();
        if code == 401 {
            extra.push(("WWW-Authenticate", "Digest realm=\"a\", nonce=\"1\""));
        }
        if code == 407 {
            extra.push(("Proxy-Authenticate", "Digest realm=\"b\", nonce=\"2\""));
        }
        if code == 503 && self.rng.chance(50) {
            extra.push(("Retry-After", "120"));
        }
        let tag = if self.rng.chance(50) { "u1" } else { "u2" };
        let mut response = build::response(&request, code, "Reason", Some(tag), &extra);
        if self.rng.chance(10) {
            // A forger's guess at the branch.
            let text = String::from_utf8_lossy(&response).replace("z9hG4bK", "z9hG4bK0");
            response = text.into_bytes();
        }
        let source = if self.rng.chance(85) {
            hop.addr
        } else {
            self.source()
        };
        if let Ok(msg) = sip::parse(Bytes::from(response)) {
            self.engine.handle_response(self.now, msg, source);
        }
    }

    fn garbage(&mut self) {
        let pool = if self.rng.chance(50) {
            &self.sent
        } else {
            &Vec::new()
        };
        let original = if !pool.is_empty() {
            pool[self.rng.below(pool.len())].1.clone()
        } else if !self.seen.is_empty() {
            self.seen[self.rng.below(self.seen.len())].clone()
        } else {
            return;
        };
        let mut bytes = original.to_vec();
        for _ in 0..1 + self.rng.below(4) {
            let at = self.rng.below(bytes.len());
            bytes[at] = *self.rng.pick(b" :;,<>\"\r\n0aZ=@\x00\xff");
        }
        if self.rng.chance(20) {
            bytes.truncate(self.rng.below(bytes.len()));
        }
        let Ok(msg) = sip::parse(Bytes::from(bytes)) else {
            return;
        };
        let source = self.source();
        if msg.is_request() {
            self.engine
                .handle_request(self.now, msg, source, 0, 0, false);
        } else {
            self.engine.handle_response(self.now, msg, source);
        }
    }

    fn probe(&mut self) {
        let hop = hop_of("sip:backend1.example").expect("known host");
        let id = self.rng.next();
        let target = ProbeTarget {
            hop,
            strict_source: self.rng.chance(50),
            give_up: Duration::from_millis(*self.rng.pick(&[100, 2_000, 60_000])),
            from: None,
        };
        self.engine
            .start_probe(self.now, id, "sip:backend1.example", target, "probe-call");
    }

    fn advance(&mut self) {
        let by = *self.rng.pick(&[1, 10, 500, 4_000, 32_000, 180_000]);
        self.now += Duration::from_millis(by);
        self.engine.handle_timeout(self.now);
    }

    /// Decides everything left, lets ten minutes pass, and checks that no
    /// state remains.
    fn finish(&mut self) {
        for _ in 0..1000 {
            self.drain();
            if self.pending.is_empty() {
                break;
            }
            while let Some(run) = self.pending.pop() {
                let decision = self.decision(&run);
                self.engine
                    .handle_decision(self.now, run.ticket, decision, &mut hop_of);
            }
        }
        for _ in 0..600 {
            self.now += Duration::from_secs(1);
            self.engine.handle_timeout(self.now);
            self.drain();
            // A timeout may end a request's branches: `@proxy.on_failure`.
            while let Some(run) = self.pending.pop() {
                let decision = self.decision(&run);
                self.engine
                    .handle_decision(self.now, run.ticket, decision, &mut hop_of);
                self.drain();
            }
        }
        assert_eq!(self.engine.active(), 0, "transactions outlived every timer");
        assert_eq!(
            self.engine.ended(),
            0,
            "ended transactions outlived their timers"
        );
        assert_eq!(
            self.engine.ended_bytes(),
            0,
            "ended transactions' charge left behind"
        );
        assert!(self.engine.pending.is_empty(), "script runs left behind");
        assert!(self.engine.timers.is_empty(), "timers left behind");
        // Every transaction is over: what still counts is an established
        // call (no setup slot left), each in the table once.
        let active: usize = self
            .capacities
            .iter()
            .map(|c| {
                assert_eq!(c.calls_in_use(), c.active_calls(), "a setup slot leaked");
                c.active_calls() as usize
            })
            .sum();
        assert_eq!(
            active,
            self.engine.calls_counted(),
            "counts and table disagree"
        );
        // And call_max collects them all.
        self.now += Duration::from_secs(5 * 3600);
        self.engine.handle_timeout(self.now);
        self.drain();
        for capacity in &self.capacities {
            assert_eq!(capacity.calls_in_use(), 0, "a call outlived call_max");
        }
        assert_eq!(self.engine.poll_timeout(), None);
    }
}

/// Keeps the last few messages of a kind.
fn remember<T>(list: &mut Vec<T>, item: T) {
    if list.len() >= 64 {
        list.remove(0);
    }
    list.push(item);
}

fn budget() -> Duration {
    let secs = std::env::var("SIPHON_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    Duration::from_secs_f64(secs)
}

/// Prints the seed of the sequence that panicked, for replaying it.
struct SeedOnPanic(u64);

impl Drop for SeedOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("failing sequence: SIPHON_FUZZ_SEED={}", self.0);
        }
    }
}

#[test]
fn random_sequences_never_panic_and_leave_nothing_behind() {
    let fixed = std::env::var("SIPHON_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok());
    let started = Instant::now();
    let mut seed = fixed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let mut sequences = 0u64;
    loop {
        let _report = SeedOnPanic(seed);
        let mut run = Run::new(seed);
        let steps = 20 + run.rng.below(300);
        for _ in 0..steps {
            run.step();
        }
        run.finish();
        sequences += 1;
        if fixed.is_some() || started.elapsed() >= budget() {
            break;
        }
        seed = run.rng.next();
    }
    eprintln!("{sequences} random sequences in {:?}", started.elapsed());
}

/// A transaction's spans make one tree under its server span, each ending
/// no earlier than it began.
fn check_trace(trace: &crate::telemetry::CallTrace) {
    let server = &trace.spans[0];
    assert_eq!(server.kind, crate::telemetry::SpanKind::Server, "{trace:?}");
    let ids: std::collections::HashSet<u64> = trace.spans.iter().map(|s| s.span_id).collect();
    assert_eq!(ids.len(), trace.spans.len(), "span ids repeat: {trace:?}");
    for span in &trace.spans {
        assert!(
            span.end >= span.start,
            "a span ends before it began: {span:?}"
        );
        assert_ne!(span.span_id, 0);
        if span.span_id != server.span_id {
            assert!(
                ids.contains(&span.parent_span_id),
                "an orphan span: {span:?}"
            );
        }
    }
}
