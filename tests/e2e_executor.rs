//! End to end: the script runs on script-executor actors, so a handler that
//! never returns costs its own request a 500 and nothing else. A handler
//! that catches every exception in a loop (the watchdog's TimeoutError
//! included) while 200 calls for other users go through the same shard
//! with 5 % packet loss; and a handler blocked in C, in a regular
//! expression that backtracks, where the GIL stops every other handler.

mod common;

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use common::calls::{callers, destination, outcomes, users, Lb};
use common::{status_code, RawRequest, SippSpec, Transport, UdpPeer};

const TIMEOUT_MS: u64 = 200;
const ABANDON_MS: u64 = 1000;

/// One shard (the default `server.workers: 1`), one executor (the default
/// `script.workers`), two backends probed every second.
const CONFIG: &str = r#"listen:
  udp: ["127.0.0.1:@PORT@"]
script:
  path: "script.py"
  timeout_ms: @TIMEOUT@
  abandon_ms: @ABANDON@
@EXTRA@
gateway:
  groups:
    - name: "backends"
      algorithm: hash
      probe: {enabled: true, interval_secs: 1, failure_threshold: 2, timeout_ms: 300}
      destinations:
@DESTINATIONS@
admin: {listen: "127.0.0.1:@ADMIN@"}
metrics: {log_interval_secs: 1}
log: {level: info, format: pretty}
"#;

/// The seed's balancing, with two users whose handlers do not return:
/// `stubborn` catches every exception in a loop, `regex` backtracks in C.
const SCRIPT: &str = r#"import re
import threading
from siphon import proxy, gateway, log

@proxy.on_request
def route(request):
    if request.ruri.user == "stubborn":
        while True:
            try:
                while True:
                    pass
            except Exception:
                pass
    if request.ruri.user == "regex":
        re.match(r"(a+)+$", "a" * @REGEX_LENGTH@ + "b")
        request.reply(200)
        return
    log.info(f"RUN {request.call_id} {request.method} {threading.get_ident()}")
    if request.in_dialog:
        if request.loose_route():
            request.relay()
        else:
            request.reply(404)
        return
    if request.method == "OPTIONS":
        request.reply(200)
        return
    destination = gateway.select("backends", key=str(request.to_uri))
    request.record_route()
    request.relay(destination.uri)
"#;

fn start_lb(ports: &[u16], regex_length: u32) -> Lb {
    start_lb_with(ports, regex_length, "")
}

/// The LB with `extra` lines after `script.abandon_ms` (more `script` keys,
/// then other sections).
fn start_lb_with(ports: &[u16], regex_length: u32, extra: &str) -> Lb {
    let extra_lines = match extra {
        "" => String::new(),
        lines => format!("{lines}\n"),
    };
    let destinations: String = ports
        .iter()
        .enumerate()
        .map(|(i, &port)| destination(i + 1, port, ""))
        .collect();
    let config = CONFIG
        .replace("@TIMEOUT@", &TIMEOUT_MS.to_string())
        .replace("@ABANDON@", &ABANDON_MS.to_string())
        .replace("@DESTINATIONS@", destinations.trim_end())
        .replace("@EXTRA@\n", &extra_lines);
    let script = SCRIPT.replace("@REGEX_LENGTH@", &regex_length.to_string());
    Lb::start_with_template(&config, &script)
}

/// Backends that answer calls (`cap_uas.xml`) and probes (`-aa`).
fn probed_backends(dir: &std::path::Path) -> (Vec<common::Sipp>, Vec<u16>) {
    let ports: Vec<u16> = (0..2).map(|_| common::free_port()).collect();
    let sipps = ports
        .iter()
        .enumerate()
        .map(|(i, &port)| {
            let sipp = SippSpec::new(&format!("uas_{port}"), "cap_uas.xml", Transport::Udp)
                .port(port)
                .calls(1_000_000)
                .timeout_secs(120)
                .key("backend", &format!("b{}", i + 1))
                .args(&["-aa"])
                .spawn(dir);
            assert!(common::wait_until_bound(
                port,
                Transport::Udp,
                Duration::from_secs(1)
            ));
            sipp
        })
        .collect();
    (sipps, ports)
}

/// Sends an OPTIONS for `user` from a fresh peer; the final answer and how
/// long it took.
fn ask(lb: SocketAddr, user: &str, wait: Duration) -> (Option<u16>, Duration) {
    let peer = UdpPeer::bind();
    let request = RawRequest::new(
        "OPTIONS",
        &format!("sip:{user}@{lb}"),
        Transport::Udp,
        peer.local_addr(),
    );
    let asked = Instant::now();
    peer.send_to(request.render().as_bytes(), lb);
    let answer = peer.recv_final(wait, &mut Vec::new());
    (answer.as_deref().and_then(status_code), asked.elapsed())
}

/// Whether each backend is up, and its last probe answer, from the admin API.
fn probe_view(lb: &Lb) -> Vec<(bool, serde_json::Value)> {
    (1..=2)
        .map(|n| {
            let d = lb.destination(n);
            (d["healthy"] == true, d["last_probe_reply"].clone())
        })
        .collect()
}

#[test]
fn a_handler_that_never_returns_costs_its_own_request_a_500_and_no_other_call() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_backends, ports) = probed_backends(dir.path());
    let lb = start_lb(&ports, 1);
    thread::sleep(Duration::from_millis(1500));
    assert!(
        probe_view(&lb).iter().all(|(up, _)| *up),
        "{:?}",
        probe_view(&lb)
    );

    // 200 calls held 3 s each, 100 a second: all 200 at once at the peak,
    // with sipp losing 5 % of what it sends and receives.
    let callers = callers("executor_calls", lb.addr(), &users("user", 200), 100, 3000)
        .args(&["-l", "200", "-lost", "5"])
        .spawn(dir.path());
    thread::sleep(Duration::from_millis(700));

    // The stubborn handler: its request is answered 500 at the timeout,
    // by the shard, within a tick (the executor stays stuck in it).
    let (code, took) = ask(lb.addr(), "stubborn", Duration::from_secs(3));
    assert_eq!(code, Some(500), "{}", lb.siphon.log_tail(40));
    let limit = Duration::from_millis(TIMEOUT_MS + 100);
    assert!(
        took >= Duration::from_millis(TIMEOUT_MS) && took < limit,
        "the stubborn handler's 500 came after {took:?}"
    );
    eprintln!("stubborn handler answered 500 after {took:?} (timeout_ms {TIMEOUT_MS})");

    // At abandon_ms a new executor takes the queue, and every call ends
    // well: INVITE, ACK and BYE, with their retransmissions.
    assert!(
        lb.siphon
            .wait_for_log("started a new executor", Duration::from_secs(5)),
        "{}",
        lb.siphon.log_tail(40)
    );
    let calls = callers.wait();
    calls.assert_all_succeeded();
    assert!(
        calls.stats.retransmissions > 0,
        "5 % loss and no retransmission? {:?}",
        calls.stats
    );
    let (routes, full) = outcomes(&calls);
    assert!(full.is_empty(), "503s: {full:?}");
    assert_eq!(routes.values().sum::<usize>(), 200, "{routes:?}");

    // A second stubborn request, on the new executor while the abandoned
    // thread still spins (and takes the GIL in turns): 500 at the timeout.
    let (code, took) = ask(lb.addr(), "stubborn", Duration::from_secs(3));
    assert_eq!(code, Some(500));
    assert!(took < limit, "the second 500 came after {took:?}");
    let (code, _) = ask(lb.addr(), "alice", Duration::from_secs(5));
    assert_eq!(code, Some(200), "{}", lb.siphon.log_tail(40));

    // The probes went on: both backends up, their last probe answered.
    let view = probe_view(&lb);
    assert!(
        view.iter().all(|(up, reply)| *up && reply == 200),
        "{view:?}"
    );
    let log = lb.siphon.log();
    assert!(!log.contains("-> down"), "a backend went down:\n{log}");
    assert!(lb.metric("siphon_script_executor_abandoned_total") >= 1.0);
    assert!(lb.metric("siphon_script_executor_timeouts_total") >= 2.0);
    assert!(lb.metric("siphon_script_executor_runs_total") >= 600.0);
    assert!(
        log.contains("actor=\"script_executor\"") || log.contains("actor=script_executor"),
        "no executor line in the actor metrics"
    );
}

/// The length of `(a+)+$` against "a"*N + "b" that backtracks for about
/// three seconds in this machine's Python (time doubles with each a).
fn regex_length_for_three_seconds() -> u32 {
    let timed = std::process::Command::new("python3")
        .args([
            "-c",
            "import re, time\nt = time.monotonic()\nre.match(r'(a+)+$', 'a' * 20 + 'b')\nprint(time.monotonic() - t)",
        ])
        .output()
        .expect("python3");
    let seconds: f64 = String::from_utf8_lossy(&timed.stdout)
        .trim()
        .parse()
        .expect("a duration");
    let doublings = (3.0 / seconds.max(1e-6)).log2().round().clamp(0.0, 12.0);
    20 + doublings as u32
}

#[test]
fn a_handler_blocked_in_c_holds_the_gil_but_not_the_shard() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_backends, ports) = probed_backends(dir.path());
    let length = regex_length_for_three_seconds();
    let lb = start_lb(&ports, length);
    thread::sleep(Duration::from_millis(1500));

    let blocked = thread::spawn({
        let lb = lb.addr();
        move || ask(lb, "regex", Duration::from_secs(3))
    });
    thread::sleep(Duration::from_millis(50));
    // While the regex holds the GIL, no handler runs: a request that needs
    // the script waits to start, at most abandon_ms where it was sent, and
    // again on the executor that replaced that one, which cannot take the
    // GIL either; then it gets its 500.
    let (other, other_took) = ask(lb.addr(), "alice", Duration::from_secs(4));
    let (code, took) = blocked.join().expect("the blocked request");
    eprintln!(
        "regex of {length}: its 500 after {took:?}; another request meanwhile: {other:?} after {other_took:?}"
    );
    assert_eq!(code, Some(500));
    assert!(took < Duration::from_millis(TIMEOUT_MS + 100), "{took:?}");
    assert_eq!(other, Some(500), "{}", lb.siphon.log_tail(40));
    assert!(
        other_took > Duration::from_millis(ABANDON_MS)
            && other_took < Duration::from_millis(2 * ABANDON_MS + 300),
        "{other_took:?}"
    );
    // The shard and the probes do not need the GIL: still up.
    let view = probe_view(&lb);
    assert!(view.iter().all(|(up, _)| *up), "{view:?}");

    // Once the regex returns, its abandoned thread ends and handlers run again.
    assert!(
        lb.siphon
            .wait_for_log("returned at last", Duration::from_secs(20)),
        "{}",
        lb.siphon.log_tail(40)
    );
    let (code, _) = ask(lb.addr(), "bob", Duration::from_secs(3));
    assert_eq!(code, Some(200), "{}", lb.siphon.log_tail(40));
    assert!(!lb.siphon.log().contains("-> down"));
}

#[test]
fn calls_spread_over_two_executors_and_run_inline_with_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_backends, ports) = probed_backends(dir.path());
    for (workers, shards) in [(2usize, 2usize), (0, 1)] {
        let extra = format!("  workers: {workers}\nserver: {{workers: {shards}}}");
        let lb = start_lb_with(&ports, 1, &extra);
        let name = format!("spread_{workers}");
        let calls = callers(&name, lb.addr(), &users(&name, 100), 100, 200).spawn(dir.path());
        calls.wait().assert_all_succeeded();
        let runs = |executor: u32| {
            lb.metric(&format!(
                "siphon_script_executor_runs_total{{executor=\"{executor}\"}}"
            ))
        };
        let executed = lb.metric("siphon_script_executions_total");
        assert!(executed >= 300.0, "{executed} runs for 100 calls");
        // Every request of a call ran on one thread: its executor's.
        let mut threads: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
            Default::default();
        for line in lb.siphon.log_lines("RUN ") {
            let words: Vec<&str> = line
                .split("RUN ")
                .nth(1)
                .unwrap_or("")
                .split_whitespace()
                .collect();
            if let [call_id, _method, thread, ..] = words.as_slice() {
                threads
                    .entry(call_id.to_string())
                    .or_default()
                    .insert(thread.to_string());
            }
        }
        assert!(threads.len() >= 100, "{} calls logged", threads.len());
        assert!(
            threads.values().all(|t| t.len() == 1),
            "a call ran on two threads: {threads:?}"
        );
        let all: std::collections::BTreeSet<&String> = threads.values().flatten().collect();
        let (_, text) = common::http(lb.admin, "GET", "/metrics", None);
        if workers == 0 {
            assert!(
                !text.contains("siphon_script_executor_runs_total"),
                "an executor exists with script.workers: 0"
            );
            assert_eq!(all.len(), shards, "the shard threads ran the script");
        } else {
            // Each Call-ID's requests go to one executor: both get some,
            // from both shards.
            assert!(runs(0) > 0.0 && runs(1) > 0.0, "{} / {}", runs(0), runs(1));
            assert_eq!(all.len(), workers, "the executor threads ran the script");
        }
    }
}
