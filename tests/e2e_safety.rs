//! End to end: safe by default at the edge (issue "Safe by default"). The
//! shipped lb.py and proxy.py, unchanged, behind siphon's defaults: no relay
//! along a Route someone else wrote or into this host, no dialog Route of
//! ours without its seal, and Content-Length on every copy that goes out
//! over a stream. Attackers send from 127.0.0.66; "internal services" are
//! TCP listeners the tests open on loopback and watch.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::gateway::seed_lb_script;
use common::{
    example_script, free_port, header, status_code, RawRequest, Siphon, SippSpec, Transport,
    UdpPeer, ANSWER_200,
};

const ATTACKER: &str = "127.0.0.66";

/// The seed's load balancer with the default `security` (relay_to given
/// empty, so the test harness adds no loopback allowance).
const LB_CONFIG: &str = r#"listen:
  udp: ["127.0.0.1:@PORT@"]
  tcp: ["127.0.0.1:@PORT@"]
script:
  path: "script.py"
security:
  relay_to: {allow: []}
gateway:
  groups:
    - name: "backends"
      algorithm: hash
      destinations:
        - uri: "sip:backend1.example.com:5060"
          address: "127.0.0.1:@B1@"
          transport: @TRANSPORT@
log: {level: debug, format: pretty}
"#;

fn start_lb(backend_port: u16, transport: &str) -> Siphon {
    let config = LB_CONFIG
        .replace("@B1@", &backend_port.to_string())
        .replace("@TRANSPORT@", transport);
    Siphon::start(&config, &seed_lb_script())
}

/// A TCP service on loopback that must never hear from siphon, standing for
/// the Redis or admin port an attacker aims at.
struct Watched {
    listener: TcpListener,
}

impl Watched {
    fn open() -> Watched {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        Watched { listener }
    }

    fn addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap()
    }

    /// The bytes of the first connection within WAIT, if one came.
    fn heard(&self, wait: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if let Ok((mut stream, _)) = self.listener.accept() {
                stream.set_nonblocking(false).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
                let mut bytes = vec![0; 65536];
                let n = stream.read(&mut bytes).unwrap_or(0);
                bytes.truncate(n);
                return Some(bytes);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// An in-dialog BYE from the attacker to RURI with ROUTE.
fn bye(lb: SocketAddr, ruri: &str, route: &str) -> (UdpPeer, RawRequest) {
    let peer = UdpPeer::bind_ip(ATTACKER);
    let mut request = RawRequest::new("BYE", ruri, Transport::Udp, peer.local_addr())
        .header("Route", route)
        .body("FLUSHALL\r\n");
    request.to_tag = Some("victim".into());
    let _ = lb;
    (peer, request)
}

fn final_status(peer: &UdpPeer, lb: SocketAddr, request: &RawRequest) -> Option<u16> {
    peer.send_to(request.render().as_bytes(), lb);
    peer.recv_final(Duration::from_secs(3), &mut Vec::new())
        .and_then(|m| status_code(&m))
}

#[test]
fn a_bye_with_a_foreign_route_reaches_nothing_and_gets_404() {
    let internal = Watched::open();
    let lb_siphon = start_lb(free_port(), "udp");
    let lb = lb_siphon.addr();
    let route = format!("<sip:{};transport=tcp;lr>", internal.addr());
    let (peer, request) = bye(lb, &format!("sip:x@{}", internal.addr()), &route);
    assert_eq!(
        final_status(&peer, lb, &request),
        Some(404),
        "lb.py: not ours"
    );
    assert!(
        internal.heard(Duration::from_secs(1)).is_none(),
        "nothing dialled"
    );
}

#[test]
fn a_bye_with_our_route_but_no_valid_seal_is_refused_403() {
    let internal = Watched::open();
    let lb_siphon = start_lb(free_port(), "udp");
    let lb = lb_siphon.addr();
    let ruri = format!("sip:x@{};transport=tcp", internal.addr());
    for route in [
        format!("<sip:{lb};lr>"),
        format!("<sip:{lb};lr;dlg=0123456789abcdef7f000042>"),
    ] {
        let (peer, request) = bye(lb, &ruri, &route);
        assert_eq!(final_status(&peer, lb, &request), Some(403), "{route}");
    }
    assert!(
        internal.heard(Duration::from_secs(1)).is_none(),
        "nothing dialled"
    );
}

#[test]
fn real_calls_hang_up_from_either_side_through_the_sealed_route() {
    let dir = tempfile::tempdir().unwrap();
    for (uac, uas) in [
        ("uac_call.xml", "uas_call.xml"),
        ("uac_bye.xml", "uas_bye.xml"),
    ] {
        let backend_port = free_port();
        // The default policy: the callee's BYE reaches the caller on
        // loopback because our seal names the address the call came from.
        let config = LB_CONFIG
            .replace("@B1@", &backend_port.to_string())
            .replace("@TRANSPORT@", "udp");
        // The callee binds its port before the LB takes a free one.
        let callee = SippSpec::new(&format!("callee_{uas}"), uas, Transport::Udp)
            .port(backend_port)
            .spawn(dir.path());
        common::wait_until_bound(backend_port, Transport::Udp, Duration::from_secs(5));
        let lb = Siphon::start(&config, &seed_lb_script());
        let caller = SippSpec::new(&format!("caller_{uac}"), uac, Transport::Udp)
            .target(lb.addr())
            .key("uas", &lb.addr().to_string())
            .key("service", "bob")
            .spawn(dir.path());
        let (caller, callee) = (caller.wait(), callee.wait());
        common::assert_all_succeeded(&[&caller, &callee]);
        assert!(
            lb.log_lines("relay refused").is_empty(),
            "{uac}/{uas}: nothing refused:\n{}",
            lb.log_tail(30)
        );
    }
}

#[test]
fn an_initial_invite_to_this_host_is_refused_403() {
    let internal = Watched::open();
    // The sender is even a trusted peer, so proxy.py relays its requests
    // to their Request-URI: the core's policy refuses them.
    let config = r#"listen:
  udp: ["127.0.0.1:@PORT@"]
domain:
  local: ["example.com"]
script:
  path: "script.py"
security:
  trusted: ["127.0.0.66/32"]
  relay_to: {allow: []}
log: {level: debug, format: pretty}
"#;
    let proxy = Siphon::start(config, &example_script("proxy.py"));
    let peer = UdpPeer::bind_ip(ATTACKER);
    for ruri in [
        format!("sip:x@{};transport=tcp", internal.addr()),
        "sip:x@169.254.169.254:80;transport=tcp".to_string(),
    ] {
        let request = RawRequest::new("INVITE", &ruri, Transport::Udp, peer.local_addr());
        assert_eq!(
            final_status(&peer, proxy.addr(), &request),
            Some(403),
            "{ruri}"
        );
    }
    assert!(
        internal.heard(Duration::from_secs(1)).is_none(),
        "nothing dialled"
    );
    assert!(
        proxy.wait_for_log("relay refused", Duration::from_secs(1)),
        "a debug line says why"
    );
}

#[test]
fn a_udp_request_without_content_length_reaches_a_tcp_backend_with_one() {
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let lb_siphon = start_lb(backend.local_addr().unwrap().port(), "tcp");
    let lb = lb_siphon.addr();
    let peer = UdpPeer::bind();
    for (body, length) in [("", "0"), ("hello", "5")] {
        let request = RawRequest::new(
            "MESSAGE",
            &format!("sip:bob@{lb}"),
            Transport::Udp,
            peer.local_addr(),
        )
        .body(body)
        .render()
        .replace(&format!("Content-Length: {}\r\n", body.len()), "");
        assert!(!request.contains("Content-Length"));
        peer.send_to(request.as_bytes(), lb);
        let (mut stream, _) = accept_within(&backend, Duration::from_secs(3));
        let received = read_message(&mut stream);
        assert_eq!(
            header(&received, "Content-Length"),
            Some(length),
            "{received}"
        );
        assert!(received.ends_with(&format!("\r\n\r\n{body}")), "{received}");
    }
}

fn accept_within(listener: &TcpListener, wait: Duration) -> (TcpStream, SocketAddr) {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + wait;
    loop {
        match listener.accept() {
            Ok((stream, from)) => {
                stream.set_nonblocking(false).unwrap();
                return (stream, from);
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("no connection from siphon: {e}"),
        }
    }
}

/// Reads one message: up to the blank line, then Content-Length bytes (or
/// what arrives within half a second when there is none).
fn read_message(stream: &mut TcpStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut bytes = Vec::new();
    let mut chunk = [0; 4096];
    while let Ok(n) = stream.read(&mut chunk) {
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&bytes);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            if header(head, "Content-Length")
                .and_then(|l| l.parse::<usize>().ok())
                .is_some_and(|l| body.len() >= l)
            {
                break;
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

// ---------------------------------------------------------------------------
// CR/LF keepalives on streams (RFC 5626 §4.4.1)
// ---------------------------------------------------------------------------

const STREAM_CONFIG: &str = r#"listen:
  udp: ["127.0.0.1:@PORT@"]
  tcp: ["127.0.0.1:@PORT@"]
script:
  path: "script.py"
gateway:
  groups:
    - name: "backends"
      destinations:
        - uri: "sip:backend1.example.com:5060"
          address: "127.0.0.1:@B1@"
limits:
  tcp: {idle_secs: 2, first_message_secs: 2}
log: {level: info, format: pretty}
"#;

fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// An OPTIONS over STREAM; with `hops` 0 the core answers it (483) and the
/// script never sees it.
fn options_over(stream: &mut TcpStream, lb: SocketAddr, hops: u32) {
    use std::io::Write;
    let local = stream.local_addr().unwrap();
    let options =
        RawRequest::new("OPTIONS", &format!("sip:{lb}"), Transport::Tcp, local).max_forwards(hops);
    let _ = stream.write_all(options.render().as_bytes());
}

#[test]
fn a_double_crlf_ping_gets_a_pong_and_keeps_the_connection_past_idle() {
    use std::io::Write;
    let lb = Siphon::start(
        &STREAM_CONFIG.replace("@B1@", &free_port().to_string()),
        ANSWER_200,
    );
    let mut stream = TcpStream::connect(lb.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    options_over(&mut stream, lb.addr(), 70);
    let _ = read_message(&mut stream);
    // Pings for twice idle_secs: each answered, the connection kept.
    for round in 0..4 {
        stream.write_all(b"\r\n\r\n").unwrap();
        let mut pong = [0u8; 2];
        stream
            .read_exact(&mut pong)
            .unwrap_or_else(|e| panic!("round {round}: no pong: {e}"));
        assert_eq!(&pong, b"\r\n", "round {round}");
        std::thread::sleep(Duration::from_millis(1000));
    }
    // A ping split over two writes is one ping.
    stream.write_all(b"\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    stream.write_all(b"\r\n").unwrap();
    let mut pong = [0u8; 2];
    stream.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"\r\n");
    // The connection still carries SIP.
    options_over(&mut stream, lb.addr(), 70);
    let answer = read_message(&mut stream);
    assert!(status_code(&answer).is_some(), "{answer:?}");
}

#[test]
fn a_connection_of_only_crlfs_is_closed_after_first_message_secs() {
    use std::io::Write;
    let lb = Siphon::start(
        &STREAM_CONFIG.replace("@B1@", &free_port().to_string()),
        &seed_lb_script(),
    );
    let mut stream = TcpStream::connect(lb.addr()).unwrap();
    let opened = Instant::now();
    let closed = loop {
        if stream.write_all(b"\r\n\r\n").is_err() || opened.elapsed() > Duration::from_secs(8) {
            break opened.elapsed();
        }
        let mut pong = [0u8; 2];
        stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        if matches!(stream.read(&mut pong), Ok(0)) {
            break opened.elapsed();
        }
        // A phone's pace (one a second would do), not a flood's.
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        closed >= Duration::from_secs(2) && closed < Duration::from_secs(6),
        "closed after {closed:?}"
    );
}

#[test]
fn a_crlf_flood_does_not_grow_memory_and_udp_calls_go_on() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let backend_port = free_port();
    let callee = SippSpec::new("callee", "uas_call.xml", Transport::Udp)
        .port(backend_port)
        .calls(50)
        .spawn(dir.path());
    common::wait_until_bound(backend_port, Transport::Udp, Duration::from_secs(5));
    let mut lb = Siphon::start(
        &STREAM_CONFIG.replace("@B1@", &backend_port.to_string()),
        &seed_lb_script(),
    );
    let before = resident_kib(lb.pid());
    let target = lb.addr();
    // 200 MB of CR/LF from the attacker, a connection at a time: each
    // opens with one OPTIONS, then streams CR/LF until siphon closes it.
    let flood = std::thread::spawn(move || {
        let chunk = vec![b'\n'; 64 * 1024];
        let (mut sent, mut connections) = (0usize, 0u32);
        while sent < 200 << 20 {
            let socket =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            socket
                .bind(&SocketAddr::from(([127, 0, 0, 66], 0)).into())
                .unwrap();
            if socket.connect(&target.into()).is_err() {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            let mut stream: TcpStream = socket.into();
            connections += 1;
            options_over(&mut stream, target, 0);
            while sent < 200 << 20 {
                match stream.write(&chunk) {
                    Ok(n) if n > 0 => sent += n,
                    _ => break,
                }
            }
        }
        (sent, connections)
    });
    let caller = SippSpec::new("caller", "uac_call.xml", Transport::Udp)
        .target(lb.addr())
        .key("uas", &lb.addr().to_string())
        .key("service", "bob")
        .calls(50)
        .rate(20)
        .spawn(dir.path());
    let (caller, callee) = (caller.wait(), callee.wait());
    let (sent, connections) = flood.join().unwrap();
    let after = resident_kib(lb.pid());
    common::assert_all_succeeded(&[&caller, &callee]);
    assert!(sent >= 200 << 20);
    assert!(
        after < before + 10 * 1024,
        "RSS grew from {before} KiB to {after} KiB over {connections} connections"
    );
    assert!(lb.is_running(), "siphon survived");
}

// ---------------------------------------------------------------------------
// The admin API asks who you are
// ---------------------------------------------------------------------------

const ADMIN_TOKEN: &str = "0123456789abcdef-admin-token";

/// One HTTP/1.1 request with HEADERS; the status code and body.
fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &str,
) -> (u16, String) {
    use std::io::Write;
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = String::new();
    let _ = stream.read_to_string(&mut raw);
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, raw)
}

#[test]
fn the_admin_api_wants_its_token_json_and_force_for_the_last_backend() {
    let admin_port = free_port();
    let config = LB_CONFIG
        .replace("@B1@", &free_port().to_string())
        .replace("@TRANSPORT@", "udp")
        .replace(
            "log:",
            &format!(
                "admin: {{listen: \"127.0.0.1:{admin_port}\", token: \"{ADMIN_TOKEN}\"}}\nlog:"
            ),
        );
    let _lb = Siphon::start(&config, &seed_lb_script());
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let bearer = format!("Authorization: Bearer {ADMIN_TOKEN}");
    let json = "Content-Type: application/json";
    // Without the token, or with another, nothing is read or changed.
    for headers in [vec![], vec!["Authorization: Bearer wrong-token-0000000"]] {
        for (method, path) in [
            ("GET", "/admin/gateways"),
            ("GET", "/admin/bans"),
            ("GET", "/metrics"),
        ] {
            let (status, raw) = http_with(admin, method, path, &headers, "");
            assert_eq!(status, 401, "{method} {path}: {raw}");
        }
    }
    let (status, _) = http_with(admin, "GET", "/admin/gateways", &[&bearer], "");
    assert_eq!(status, 200);
    // A browser's form POST (no JSON content type) changes nothing.
    let body = r#"{"uri": "sip:backend1.example.com:5060"}"#;
    let path = "/admin/gateways/backends/down";
    let (status, _) = http_with(
        admin,
        "POST",
        path,
        &[&bearer, "Content-Type: text/plain"],
        body,
    );
    assert_eq!(status, 415);
    // The only backend is the last healthy one: it takes force.
    let (status, raw) = http_with(admin, "POST", path, &[&bearer, json], body);
    assert_eq!(status, 409, "{raw}");
    let forced = r#"{"uri": "sip:backend1.example.com:5060", "force": true}"#;
    let (status, raw) = http_with(admin, "POST", path, &[&bearer, json], forced);
    assert_eq!(status, 200, "{raw}");
}

#[test]
fn an_admin_api_open_to_other_hosts_without_a_token_is_refused() {
    let config = LB_CONFIG
        .replace("@B1@", &free_port().to_string())
        .replace("@TRANSPORT@", "udp")
        .replace(
            "log:",
            &format!("admin: {{listen: \"0.0.0.0:{}\"}}\nlog:", free_port()),
        );
    let outcome = common::run_check(&config, &seed_lb_script());
    assert_eq!(outcome.code, Some(1), "{}", outcome.output);
    assert!(outcome.output.contains("admin.token"), "{}", outcome.output);
    let refused = Siphon::try_start(&config, &seed_lb_script());
    let message = refused.err().expect("the daemon refuses to start");
    assert!(message.contains("admin.token"), "{message}");
}

// ---------------------------------------------------------------------------
// proxy.py is no open relay
// ---------------------------------------------------------------------------

/// proxy.py for example.com only; `@AUTH@` and `@TRUSTED@` filled in. The
/// relay target (another port on loopback) is allowed, so that only the
/// script decides.
const RELAY_CONFIG: &str = r#"listen:
  udp: ["127.0.0.1:@PORT@"]
domain:
  local: ["example.com"]
script:
  path: "script.py"
security:
  trusted: [@TRUSTED@]
  relay_to: {allow: ["127.0.0.0/8"]}
@AUTH@
log: {level: info, format: pretty}
"#;

/// An INVITE claiming a foreign From, sent from SOURCE_IP to the proxy,
/// for a target on another domain (a UDP peer standing for a gateway):
/// the proxy's answer, and whether the target heard it.
fn foreign_invite(config: &str, source_ip: &str) -> (Option<u16>, bool) {
    let proxy = Siphon::start(config, &example_script("proxy.py"));
    let target = UdpPeer::bind();
    let caller = UdpPeer::bind_ip(source_ip);
    let request = RawRequest::new(
        "INVITE",
        &format!("sip:+15550100@{}", target.local_addr()),
        Transport::Udp,
        caller.local_addr(),
    )
    .render()
    .replace(
        &format!("From: <sip:tester@{}>", caller.local_addr()),
        "From: <sip:boss@evil.example>",
    );
    caller.send_to(request.as_bytes(), proxy.addr());
    let heard = target.recv(Duration::from_secs(1)).is_some();
    let answer = caller
        .recv_until(Duration::from_secs(2), &mut Vec::new(), |m| {
            status_code(m).is_some_and(|c| c >= 300)
        })
        .and_then(|m| status_code(&m));
    (answer, heard)
}

#[test]
fn proxy_py_relays_to_another_domain_only_for_those_it_trusts_or_who_authenticate() {
    let auth = "auth:\n  realm: \"example.com\"\n  credentials: {alice: \"s3cret\"}";
    let untrusted = RELAY_CONFIG.replace("@TRUSTED@", "");
    // With auth: a proxy challenge, 407, whatever the From says.
    let (answer, heard) = foreign_invite(&untrusted.replace("@AUTH@", auth), ATTACKER);
    assert_eq!(answer, Some(407));
    assert!(!heard);
    // Without auth: nobody untrusted relays at all.
    let (answer, heard) = foreign_invite(&untrusted.replace("@AUTH@", ""), ATTACKER);
    assert_eq!(answer, Some(403));
    assert!(!heard);
    // Without auth, a trusted peer (a PBX of ours) is relayed; with auth,
    // even it is challenged (behind an LB every request comes from a
    // trusted address).
    let trusted = RELAY_CONFIG.replace("@TRUSTED@", "\"127.0.0.83\"");
    let (_, heard) = foreign_invite(&trusted.replace("@AUTH@", ""), "127.0.0.83");
    assert!(heard, "the trusted peer's INVITE reached its target");
    let (answer, heard) = foreign_invite(&trusted.replace("@AUTH@", auth), "127.0.0.83");
    assert_eq!(answer, Some(407));
    assert!(!heard);
}

// ---------------------------------------------------------------------------
// Bounded INVITEs
// ---------------------------------------------------------------------------

#[test]
fn an_invite_held_by_a_ringing_callee_ends_at_max_invite_lifetime() {
    let callee = UdpPeer::bind();
    let config = LB_CONFIG
        .replace("@B1@", &callee.local_addr().port().to_string())
        .replace("@TRANSPORT@", "udp")
        .replace(
            "log:",
            "transaction: {timer_c_secs: 180, max_invite_lifetime_secs: 3}\nlog:",
        );
    let lb = Siphon::start(&config, &seed_lb_script());
    let caller = UdpPeer::bind();
    let invite = RawRequest::new(
        "INVITE",
        &format!("sip:bob@{}", lb.addr()),
        Transport::Udp,
        caller.local_addr(),
    );
    let started = Instant::now();
    caller.send_to(invite.render().as_bytes(), lb.addr());
    // The callee rings, and rings again every second (each 180 would
    // restart Timer C), until a CANCEL comes.
    let (received, _) = callee.recv(Duration::from_secs(3)).expect("the INVITE");
    let mut cancelled = None;
    while started.elapsed() < Duration::from_secs(10) {
        callee.send_to(
            common::response_to(&received, 180, "Ringing").as_bytes(),
            lb.addr(),
        );
        if let Some((message, _)) = callee.recv(Duration::from_secs(1)) {
            if message.starts_with("CANCEL ") {
                cancelled = Some(started.elapsed());
                callee.send_to(
                    common::response_to(&message, 200, "OK").as_bytes(),
                    lb.addr(),
                );
                let to_tag = common::response_to(&received, 487, "Request Terminated");
                callee.send_to(to_tag.as_bytes(), lb.addr());
                break;
            }
        }
    }
    let cancelled = cancelled.expect("the LB CANCELs the held INVITE");
    assert!(
        cancelled >= Duration::from_secs(3) && cancelled < Duration::from_secs(5),
        "CANCEL after {cancelled:?}"
    );
    let answer = caller
        .recv_final(Duration::from_secs(3), &mut Vec::new())
        .expect("a final answer upstream");
    assert_eq!(status_code(&answer), Some(408), "{answer}");
}

// ---------------------------------------------------------------------------
// Redis with credentials and TLS
// ---------------------------------------------------------------------------

/// A `redis-server` (or Sentinel) run with ARGS in DIR; killed on drop.
struct RedisProcess(std::process::Child);

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_redis(program: &str, args: &[String], dir: &std::path::Path) -> RedisProcess {
    let child = std::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdout(std::fs::File::create(dir.join(format!("{program}.log"))).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    RedisProcess(child)
}

/// `redis-cli ARGS` (with the password), its output.
fn redis_cli(args: &[&str]) -> String {
    let output = std::process::Command::new("redis-cli")
        .args(args)
        .env("REDISCLI_AUTH", "primary-password")
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Waits for redis-cli ARGS to print something with NEEDLE.
fn wait_for_redis(args: &[&str], needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = redis_cli(args);
        if out.contains(needle) || Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

const REGISTRAR_CONFIG: &str = r#"listen:
  udp: ["127.0.0.1:@PORT@"]
domain:
  local: ["example.com", "127.0.0.1"]
script:
  path: "script.py"
registrar:
  backend: redis
  redis:
@REDIS@
log: {level: info, format: pretty}
"#;

/// A REGISTER for alice@example.com through SIPHON; its final status.
fn register_alice(siphon: &Siphon) -> Option<u16> {
    let peer = UdpPeer::bind();
    let request = RawRequest::new(
        "REGISTER",
        &format!("sip:{}", siphon.addr()),
        Transport::Udp,
        peer.local_addr(),
    )
    .header("Expires", "600")
    .render()
    .replacen(
        &format!("To: <sip:{}>", siphon.addr()),
        "To: <sip:alice@example.com>",
        1,
    );
    peer.send_to(request.as_bytes(), siphon.addr());
    peer.recv_final(Duration::from_secs(3), &mut Vec::new())
        .and_then(|m| status_code(&m))
}

#[test]
fn a_register_is_stored_in_a_password_protected_tls_only_redis() {
    let dir = tempfile::tempdir().unwrap();
    let ca = common::tls::TestCa::new();
    let ca_file = ca.write(dir.path());
    let server = ca.issue(dir.path(), "redis", &["127.0.0.1"]);
    let port = free_port();
    let _redis = spawn_redis(
        "redis-server",
        &[
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--tls-cert-file".into(),
            server.cert.display().to_string(),
            "--tls-key-file".into(),
            server.key.display().to_string(),
            "--tls-ca-cert-file".into(),
            ca_file.display().to_string(),
            "--tls-auth-clients".into(),
            "no".into(),
            "--requirepass".into(),
            "primary-password".into(),
            "--save".into(),
            "".into(),
        ],
        dir.path(),
    );
    let port_text = port.to_string();
    let ca_text = ca_file.display().to_string();
    let cli = [
        "--tls",
        "--cacert",
        ca_text.as_str(),
        "-h",
        "127.0.0.1",
        "-p",
        port_text.as_str(),
    ];
    assert!(wait_for_redis(&[&cli[..], &["PING"]].concat(), "PONG").contains("PONG"));
    let redis = format!(
        "    url: \"rediss://:primary-password@127.0.0.1:{port}\"\n    tls_ca_file: \"{}\"",
        ca_file.display()
    );
    let siphon = Siphon::start(
        &REGISTRAR_CONFIG.replace("@REDIS@", &redis),
        &example_script("proxy.py"),
    );
    assert_eq!(register_alice(&siphon), Some(200));
    let keys = wait_for_redis(&[&cli[..], &["KEYS", "*"]].concat(), "alice@example.com");
    assert!(
        keys.contains("alice@example.com"),
        "Redis holds: {keys:?}\n{}",
        siphon.log_tail(20)
    );
}

#[test]
fn the_primary_found_through_sentinel_gets_its_own_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let primary_port = free_port();
    let _primary = spawn_redis(
        "redis-server",
        &[
            "--port".into(),
            primary_port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--requirepass".into(),
            "primary-password".into(),
            "--save".into(),
            "".into(),
        ],
        dir.path(),
    );
    let sentinel_port = free_port();
    std::fs::write(
        dir.path().join("sentinel.conf"),
        format!(
            "port {sentinel_port}\nbind 127.0.0.1\ndir {}\n\
             sentinel monitor siphon 127.0.0.1 {primary_port} 1\n\
             sentinel auth-pass siphon primary-password\n\
             requirepass sentinel-password\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let _sentinel = spawn_redis(
        "redis-sentinel",
        &[dir.path().join("sentinel.conf").display().to_string()],
        dir.path(),
    );
    let primary_text = primary_port.to_string();
    let primary_cli = ["-h", "127.0.0.1", "-p", primary_text.as_str()];
    assert!(wait_for_redis(&[&primary_cli[..], &["PING"]].concat(), "PONG").contains("PONG"));
    let sentinel_text = sentinel_port.to_string();
    let sentinel_up = wait_for_redis(
        &[
            "-h",
            "127.0.0.1",
            "-p",
            sentinel_text.as_str(),
            "--pass",
            "sentinel-password",
            "PING",
        ],
        "PONG",
    );
    assert!(sentinel_up.contains("PONG"), "{sentinel_up}");
    let redis = format!(
        "    sentinels: [\"127.0.0.1:{sentinel_port}\"]\n    master_name: \"siphon\"\n    password: \"primary-password\"\n    sentinel_password: \"sentinel-password\""
    );
    let siphon = Siphon::start(
        &REGISTRAR_CONFIG.replace("@REDIS@", &redis),
        &example_script("proxy.py"),
    );
    assert_eq!(register_alice(&siphon), Some(200));
    let keys = wait_for_redis(
        &[&primary_cli[..], &["KEYS", "*"]].concat(),
        "alice@example.com",
    );
    assert!(
        keys.contains("alice@example.com"),
        "Redis holds: {keys:?}\n{}",
        siphon.log_tail(20)
    );
}

#[test]
fn a_gateway_destination_is_never_rate_limited_while_a_stranger_is() {
    let backend = UdpPeer::bind_ip("127.0.0.84");
    let config = format!(
        r#"listen:
  udp: ["127.0.0.1:@PORT@"]
script:
  path: "script.py"
security:
  rate_limit: {{requests_per_sec: 1, burst: 3, ban_secs: 60}}
gateway:
  groups:
    - name: "backends"
      destinations:
        - uri: "sip:backend1.example.com"
          address: "{}"
log: {{level: info, format: pretty}}
"#,
        backend.local_addr()
    );
    let lb = Siphon::start(&config, ANSWER_200);
    let stranger = UdpPeer::bind_ip("127.0.0.85");
    let answered = |peer: &UdpPeer| {
        (0..20)
            .filter(|_| {
                let request = RawRequest::new(
                    "OPTIONS",
                    &format!("sip:{}", lb.addr()),
                    Transport::Udp,
                    peer.local_addr(),
                );
                peer.send_to(request.render().as_bytes(), lb.addr());
                peer.recv_final(Duration::from_millis(300), &mut Vec::new())
                    .is_some()
            })
            .count()
    };
    assert_eq!(answered(&backend), 20, "the backend is never limited");
    assert!(answered(&stranger) <= 5, "the stranger is");
}
