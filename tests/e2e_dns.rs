//! End to end: host names met while relaying are looked up off the SIP
//! threads, against a real DNS server on loopback (`common::dns`). A slow
//! answer holds up only the request that needs it; answers and failures
//! are cached; a server that never answers costs `dns.timeout_ms`, then 478.

mod common;

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use common::dns::{DnsServer, Record};
use common::gateway::Backend;
use common::{free_port, metric, status_code, RawRequest, Siphon, SippSpec, Transport, UdpPeer};

const LB_CONFIG: &str = r#"listen:
  udp: ["127.0.0.1:@PORT@"]
script:
  path: "script.py"
dns:
  servers: ["@DNS@"]
  timeout_ms: @TIMEOUT@
  negative_ttl_secs: 30
admin: {listen: "127.0.0.1:@ADMIN@"}
log: {level: info, format: pretty}
"#;

/// Relays each new request to `sip:USER@HOST:PORT`, where HOST is the
/// name before the first digit of USER followed by `.test`: `slow1` goes
/// to slow.test, `fast` to fast.test.
const SCRIPT: &str = r#"from siphon import proxy

BACKEND_PORT = @BACKEND@

@proxy.on_request
def route(request):
    if request.in_dialog:
        if request.loose_route():
            request.relay()
        else:
            request.reply(404, "Not Here")
        return
    user = request.ruri.user or ""
    name = user.rstrip("0123456789")
    request.record_route()
    request.relay(f"sip:{user}@{name}.test:{BACKEND_PORT}")
"#;

const SLOW: Duration = Duration::from_secs(3);

fn dns_records() -> Vec<(&'static str, Record)> {
    let local = "127.0.0.1".parse().unwrap();
    vec![
        (
            "slow.test",
            Record::A {
                ip: local,
                ttl: 60,
                delay: SLOW,
            },
        ),
        (
            "fast.test",
            Record::A {
                ip: local,
                ttl: 60,
                delay: Duration::ZERO,
            },
        ),
        ("dead.test", Record::Silent),
    ]
}

/// The LB, asking DNS at DNS and waiting up to TIMEOUT_MS for an answer.
fn start_lb(dns: &DnsServer, timeout_ms: u64, backend: u16) -> (Siphon, SocketAddr) {
    let admin = free_port();
    let config = LB_CONFIG
        .replace("@DNS@", &dns.addr().to_string())
        .replace("@TIMEOUT@", &timeout_ms.to_string())
        .replace("@ADMIN@", &admin.to_string());
    let script = SCRIPT.replace("@BACKEND@", &backend.to_string());
    let lb = Siphon::start(&config, &script);
    (lb, SocketAddr::from(([127, 0, 0, 1], admin)))
}

/// An OPTIONS to `sip:USER@LB` from PEER.
fn options(user: &str, lb: SocketAddr, peer: &UdpPeer) -> RawRequest {
    RawRequest::new(
        "OPTIONS",
        &format!("sip:{user}@{lb}"),
        Transport::Udp,
        peer.local_addr(),
    )
}

#[test]
fn a_slow_dns_answer_holds_up_only_the_request_that_needs_it() {
    let dir = tempfile::tempdir().unwrap();
    let dns = DnsServer::start(&dns_records());
    let backend_port = free_port();
    let _backend = Backend::start(dir.path(), "b1", backend_port);
    let (lb, admin) = start_lb(&dns, 5000, backend_port);

    // The request whose next hop is slow.test: its answer takes 3 s.
    let waiting = UdpPeer::bind();
    let started = Instant::now();
    waiting.send_to(
        options("slow1", lb.addr(), &waiting).render().as_bytes(),
        lb.addr(),
    );
    // Meanwhile ten calls go to fast.test, through the same shards.
    thread::sleep(Duration::from_millis(100));
    let calls = SippSpec::new("fast", "uac_call.xml", Transport::Udp)
        .target(lb.addr())
        .callee(lb.addr())
        .args(&["-s", "fast"])
        .calls(10)
        .rate(20)
        .timeout_secs(20);
    let outcome = calls.run(dir.path());
    let calls_done = started.elapsed();
    outcome.assert_all_succeeded();
    assert!(
        calls_done < SLOW - Duration::from_millis(500),
        "the calls took {calls_done:?}: they waited behind the slow lookup"
    );

    // The waiting request went on once its answer came, to the address found.
    let mut seen = Vec::new();
    let answer = waiting
        .recv_final(Duration::from_secs(8), &mut seen)
        .unwrap_or_else(|| {
            panic!(
                "no answer for the slow request; got {seen:?}\n{}",
                lb.log_tail(30)
            )
        });
    let waited = started.elapsed();
    assert_eq!(status_code(&answer), Some(200), "{answer}");
    assert!(
        waited >= SLOW - Duration::from_millis(200),
        "answered after {waited:?}, before the DNS server answered"
    );

    // One query, though ten calls needed fast.test. (The resolver may
    // repeat its query to slow.test while it waits: that is one lookup.)
    assert_eq!(dns.a_queries("fast.test"), 1);
    let slow_queries = dns.a_queries("slow.test");
    assert!(metric(admin, "siphon_dns_lookups_total", "found") >= 2.0);
    // A second request to slow.test is answered from the cache at once.
    let (status, took) = ask(&waiting, "slow2", lb.addr());
    assert_eq!(status, Some(200));
    assert!(took < Duration::from_secs(1), "answered after {took:?}");
    assert_eq!(
        dns.a_queries("slow.test"),
        slow_queries,
        "the cached answer was asked again"
    );
}

/// Sends an OPTIONS for USER from PEER; the final status, and how long it took.
fn ask(peer: &UdpPeer, user: &str, lb: SocketAddr) -> (Option<u16>, Duration) {
    let asked = Instant::now();
    peer.send_to(options(user, lb, peer).render().as_bytes(), lb);
    let answer = peer.recv_final(Duration::from_secs(4), &mut Vec::new());
    (answer.as_deref().and_then(status_code), asked.elapsed())
}

#[test]
fn unknown_and_silent_names_get_478_and_a_failure_is_remembered() {
    let dir = tempfile::tempdir().unwrap();
    let dns = DnsServer::start(&dns_records());
    let backend_port = free_port();
    let _backend = Backend::start(dir.path(), "b1", backend_port);
    let (lb, admin) = start_lb(&dns, 600, backend_port);
    let peer = UdpPeer::bind();

    // NXDOMAIN: 478 at once, three times, with one query.
    for user in ["nowhere1", "nowhere2", "nowhere3"] {
        assert_eq!(ask(&peer, user, lb.addr()).0, Some(478), "{user}");
    }
    assert_eq!(
        dns.a_queries("nowhere.test"),
        1,
        "the failure was not cached"
    );

    // A server that never answers: 478 once dns.timeout_ms (600) is up.
    let (status, took) = ask(&peer, "dead1", lb.addr());
    assert_eq!(status, Some(478));
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_millis(2000),
        "478 after {took:?}"
    );
    assert_eq!(metric(admin, "siphon_dns_lookups_total", "timeout"), 1.0);
    // Remembered as failed for a second: the next one is refused at once ...
    let (status, took) = ask(&peer, "dead2", lb.addr());
    assert_eq!(status, Some(478));
    assert!(took < Duration::from_millis(400), "478 after {took:?}");
    // ... and then asked again: a timeout is not an NXDOMAIN.
    thread::sleep(Duration::from_millis(1100));
    let (status, took) = ask(&peer, "dead3", lb.addr());
    assert_eq!(status, Some(478));
    assert!(took >= Duration::from_millis(500), "478 after {took:?}");
    assert_eq!(metric(admin, "siphon_dns_lookups_total", "timeout"), 2.0);

    // Names with an address still work beside them.
    assert_eq!(ask(&peer, "fast", lb.addr()).0, Some(200));
}
