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

/// Relays every new request to its Request-URI, whose host is a domain
/// without a port: RFC 3263 finds where it goes.
const SIP_DOMAIN_LB: &str = r#"listen:
  udp: ["127.0.0.1:@PORT@"]
  tcp: ["127.0.0.1:@PORT@"]
script:
  path: "script.py"
dns:
  servers: ["@DNS@"]
  timeout_ms: 1000
# A dead server is given up at 63·T1 (§4.3): 3.15 s here.
transaction: {t1_ms: 50}
log: {level: debug, format: pretty}
"#;

const TO_THE_DOMAIN: &str = r#"from siphon import proxy

@proxy.on_request
def route(request):
    if request.in_dialog:
        if request.loose_route():
            request.relay()
        else:
            request.reply(404, "Not Here")
        return
    request.record_route()
    request.relay()
"#;

/// An INVITE to RURI through LB, from a caller of its own.
fn call(lb: &Siphon, ruri: &str) -> UdpPeer {
    let caller = UdpPeer::bind();
    let invite = RawRequest::new("INVITE", ruri, Transport::Udp, caller.local_addr());
    caller.send_to(invite.render().as_bytes(), lb.addr());
    caller
}

#[test]
fn a_domain_is_reached_through_its_srv_records_and_fails_over_to_the_next() {
    // _sip._udp.carrier.test names two servers: priority 10 is dead (it
    // reads and never answers), priority 20 answers. The INVITE goes to
    // the first, then fails over to the second inside the transaction.
    let dead = UdpPeer::bind();
    let dead_port = dead.local_addr().port();
    let dir = tempfile::tempdir().unwrap();
    let live_port = free_port();
    let _live = Backend::start(dir.path(), "live", live_port);
    let local: std::net::Ipv4Addr = "127.0.0.1".parse().unwrap();
    let a = |ip| Record::A {
        ip,
        ttl: 60,
        delay: Duration::ZERO,
    };
    let dns = DnsServer::start(&[
        (
            "_sip._udp.carrier.test",
            Record::Srv {
                priority: 10,
                weight: 1,
                port: dead_port,
                target: "dead-sbc.carrier.test",
            },
        ),
        (
            "_sip._udp.carrier.test",
            Record::Srv {
                priority: 20,
                weight: 1,
                port: live_port,
                target: "live-sbc.carrier.test",
            },
        ),
        ("dead-sbc.carrier.test", a(local)),
        ("live-sbc.carrier.test", a(local)),
        ("carrier.test", a(local)),
    ]);
    let lb = Siphon::start(
        &SIP_DOMAIN_LB.replace("@DNS@", &dns.addr().to_string()),
        TO_THE_DOMAIN,
    );
    let caller = call(&lb, "sip:+15551234@carrier.test");
    let (first, _) = dead
        .recv(Duration::from_secs(3))
        .unwrap_or_else(|| panic!("the priority-10 server got nothing\n{}", lb.log_tail(30)));
    assert!(
        first.starts_with("INVITE sip:+15551234@carrier.test "),
        "{first}"
    );
    let answer = caller.recv_final(Duration::from_secs(5), &mut Vec::new());
    assert_eq!(
        answer.as_deref().and_then(status_code),
        Some(200),
        "the priority-20 server did not answer\n{}",
        lb.log_tail(30)
    );
    assert!(lb.wait_for_log("failover", Duration::from_secs(1)));
}

#[test]
fn a_naptr_record_picks_tcp_and_its_srv_target() {
    // carrier.test's NAPTR offers SIP over TCP only.
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let local: std::net::Ipv4Addr = "127.0.0.1".parse().unwrap();
    let dns = DnsServer::start(&[
        (
            "naptr.test",
            Record::Naptr {
                order: 10,
                preference: 10,
                service: "SIP+D2T",
                replacement: "_sip._tcp.naptr.test",
            },
        ),
        (
            "_sip._tcp.naptr.test",
            Record::Srv {
                priority: 10,
                weight: 1,
                port,
                target: "sbc.naptr.test",
            },
        ),
        (
            "sbc.naptr.test",
            Record::A {
                ip: local,
                ttl: 60,
                delay: Duration::ZERO,
            },
        ),
    ]);
    let lb = Siphon::start(
        &SIP_DOMAIN_LB.replace("@DNS@", &dns.addr().to_string()),
        TO_THE_DOMAIN,
    );
    let _caller = call(&lb, "sip:+15551234@naptr.test");
    server.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let stream = loop {
        match server.accept() {
            Ok((stream, _)) => break stream,
            Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!(
                "no TCP connection to the NAPTR's server ({e})\n{}",
                lb.log_tail(30)
            ),
        }
    };
    stream.set_nonblocking(false).unwrap();
    let mut connection = common::TcpPeer::from_stream(stream);
    let relayed = connection.recv(Duration::from_secs(3)).expect("the INVITE");
    assert!(
        relayed.starts_with("INVITE sip:+15551234@naptr.test "),
        "{relayed}"
    );
    let via = common::header(&relayed, "Via").unwrap();
    assert!(via.starts_with("SIP/2.0/TCP "), "{via}");
}

#[test]
fn a_reload_points_the_resolver_at_new_servers_and_forgets_the_names_kept() {
    let dir = tempfile::tempdir().unwrap();
    let old_server = DnsServer::start(&dns_records());
    let local = "127.0.0.1".parse().unwrap();
    let new_server = DnsServer::start(&[(
        "moved.test",
        Record::A {
            ip: local,
            ttl: 60,
            delay: Duration::ZERO,
        },
    )]);
    let backend_port = free_port();
    let _backend = Backend::start(dir.path(), "b1", backend_port);
    let (lb, admin) = start_lb(&old_server, 600, backend_port);
    let peer = UdpPeer::bind();
    // The old server does not know the name: 478, remembered for 30 s.
    assert_eq!(ask(&peer, "moved1", lb.addr()).0, Some(478));
    assert_eq!(ask(&peer, "moved2", lb.addr()).0, Some(478));
    assert_eq!(old_server.a_queries("moved.test"), 1);

    let config = LB_CONFIG
        .replace("@DNS@", &new_server.addr().to_string())
        .replace("@TIMEOUT@", "600")
        .replace("@ADMIN@", &admin.port().to_string());
    lb.replace_config(&config);
    let (status, body) = common::http(admin, "POST", "/admin/reload", None);
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(answer["changes"]["applied"], serde_json::json!(["dns"]));
    assert_eq!(ask(&peer, "moved3", lb.addr()).0, Some(200));
    assert_eq!(new_server.a_queries("moved.test"), 1);
    assert_eq!(
        old_server.a_queries("moved.test"),
        1,
        "the old server asked again"
    );
}
