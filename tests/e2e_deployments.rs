//! End to end: what real deployments do and loopback peers usually do not
//! (issue "Protocol correctness where real deployments differ"). The
//! backends here are raw UDP sockets the tests drive, because the point is
//! what they do differently: answer from another address of their host,
//! lose their provisionals. Callers move to another address mid-call.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use common::gateway::seed_lb_script;
use common::{
    header, header_values, method, response_to, status_code, RawRequest, Siphon, TcpPeer,
    Transport, UdpPeer,
};

/// The seed's load balancer in front of one backend at @BACKEND@.
const LB_CONFIG: &str = r#"listen:
  udp: ["127.0.0.1:@PORT@"]
  tcp: ["127.0.0.1:@PORT@"]
script:
  path: "script.py"
gateway:
  groups:
    - name: "backends"
      algorithm: hash
      destinations:
        - uri: "sip:backend1.example.com:5060"
          address: "@BACKEND@"
log: {level: debug, format: pretty}
"#;

fn start_lb(backend: SocketAddr) -> Siphon {
    let config = LB_CONFIG.replace("@BACKEND@", &backend.to_string());
    Siphon::start(&config, &seed_lb_script())
}

/// A UAS's answer: `response_to` plus the Record-Route it echoes and a
/// Contact.
fn answer(request: &str, code: u16, reason: &str, contact: SocketAddr) -> String {
    let mut text = response_to(request, code, reason);
    let mut extra = String::new();
    for value in header_values(request, "Record-Route") {
        extra.push_str(&format!("Record-Route: {value}\r\n"));
    }
    extra.push_str(&format!("Contact: <sip:callee@{contact}>\r\n"));
    let at = text.find("Content-Length").expect("a Content-Length");
    text.insert_str(at, &extra);
    text
}

/// A backend played by raw sockets: it listens on `listen` and answers
/// from `answer_from` (the same socket or another address of its host),
/// as `respond` says, until dropped. What it received is kept in order.
struct RawBackend {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// What a raw backend sends for one request: (code, reason) answers, in
/// order, given the request and how many of its method came before.
type Respond = Box<dyn Fn(&str, usize) -> Vec<(u16, &'static str)> + Send>;

impl RawBackend {
    fn start(listen_ip: &str, answer_ip: Option<&str>, respond: Respond) -> RawBackend {
        let listen = UdpPeer::bind_ip(listen_ip);
        let answer_from = answer_ip.map(UdpPeer::bind_ip);
        let addr = listen.local_addr();
        let received: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, stopped) = (received.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let Some((message, source)) = listen.recv(Duration::from_millis(50)) else {
                    continue;
                };
                let Some(request_method) = method(&message).map(str::to_string) else {
                    continue; // a response (to nothing we sent)
                };
                let before = {
                    let mut seen = seen.lock().unwrap();
                    let before = seen
                        .iter()
                        .filter(|m: &&String| method(m.as_str()) == Some(request_method.as_str()))
                        .count();
                    seen.push(message.clone());
                    before
                };
                let sender = answer_from.as_ref().unwrap_or(&listen);
                for (code, reason) in respond(&message, before) {
                    let text = answer(&message, code, reason, addr);
                    sender.send_to(text.as_bytes(), source);
                }
            }
        });
        RawBackend {
            addr,
            received,
            stop,
            thread: Some(thread),
        }
    }

    /// How many requests of METHOD it has received.
    fn count(&self, wanted: &str) -> usize {
        let seen = self.received.lock().unwrap();
        seen.iter().filter(|m| method(m) == Some(wanted)).count()
    }

    fn wait_for(&self, wanted: &str, n: usize, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if self.count(wanted) >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A UAS that rings and answers every INVITE and answers anything else 200.
fn answering(request: &str, _before: usize) -> Vec<(u16, &'static str)> {
    match method(request) {
        Some("INVITE") => vec![(100, "Trying"), (180, "Ringing"), (200, "OK")],
        Some("ACK") => vec![],
        _ => vec![(200, "OK")],
    }
}

#[test]
fn a_backend_behind_a_vip_answers_from_its_real_address() {
    // Reached at 127.0.0.61 (the VIP), it answers from 127.0.0.62, as a
    // keepalived pair or an Asterisk bound to 0.0.0.0 does.
    let backend = RawBackend::start("127.0.0.61", Some("127.0.0.62"), Box::new(answering));
    let lb = start_lb(backend.addr);
    let caller = UdpPeer::bind();
    let invite = RawRequest::new(
        "INVITE",
        "sip:bob@example.com",
        Transport::Udp,
        caller.local_addr(),
    );
    caller.send_to(invite.render().as_bytes(), lb.addr());
    let mut seen = Vec::new();
    let last = caller.recv_final(Duration::from_millis(900), &mut seen);
    let codes: Vec<u16> = seen.iter().filter_map(|m| status_code(m)).collect();
    assert_eq!(
        last.as_deref().and_then(status_code),
        Some(200),
        "answered before the failover's 1 s of silence: {codes:?}\n{}",
        lb.log_tail(20)
    );
    assert!(codes.contains(&180), "{codes:?}");
    assert_eq!(backend.count("INVITE"), 1, "its answers were taken at once");
    assert!(lb.log_lines("failover").is_empty(), "no failover");
}

#[test]
fn a_cancelled_call_whose_ringing_was_lost_is_cancelled_at_the_backend() {
    // The backend's 100 and 180 to the first INVITE are lost; it answers
    // the retransmission. The caller has CANCELed meanwhile: the LB must
    // keep asking until it can CANCEL (§9.1), or the phone rings on.
    let backend = RawBackend::start(
        "127.0.0.63",
        None,
        Box::new(|request, before| match method(request) {
            Some("INVITE") if before == 0 => vec![],
            Some("INVITE") => vec![(100, "Trying"), (180, "Ringing")],
            Some("CANCEL") => vec![(200, "OK")],
            _ => vec![],
        }),
    );
    let lb = start_lb(backend.addr);
    let caller = UdpPeer::bind();
    let invite = RawRequest::new(
        "INVITE",
        "sip:bob@example.com",
        Transport::Udp,
        caller.local_addr(),
    );
    caller.send_to(invite.render().as_bytes(), lb.addr());
    assert!(backend.wait_for("INVITE", 1, Duration::from_secs(2)));
    caller.send_to(invite.cancel().render().as_bytes(), lb.addr());
    let mut seen = Vec::new();
    let to_invite = caller.recv_until(Duration::from_secs(2), &mut seen, |m| {
        status_code(m) == Some(487)
    });
    assert!(
        to_invite.is_some(),
        "the caller hears 487 at once: {seen:?}"
    );
    assert!(
        backend.wait_for("CANCEL", 1, Duration::from_secs(3)),
        "the backend never got a CANCEL; it got {} INVITEs\n{}",
        backend.count("INVITE"),
        lb.log_tail(20)
    );
    assert!(backend.count("INVITE") >= 2, "the INVITE was sent again");
}

#[test]
fn a_tcp_caller_that_moved_to_another_address_hangs_up_through_the_lb() {
    let backend = RawBackend::start("127.0.0.64", None, Box::new(answering));
    let lb = start_lb(backend.addr);
    let mut first = TcpPeer::connect(lb.addr());
    let mut invite = RawRequest::new(
        "INVITE",
        "sip:bob@example.com",
        Transport::Tcp,
        first.local_addr(),
    );
    invite.from_tag = "moving".into();
    assert!(first.send(invite.render().as_bytes()));
    let ok = first
        .recv_final(Duration::from_secs(3), &mut Vec::new())
        .expect("a final answer");
    assert_eq!(status_code(&ok), Some(200), "{ok}");
    let record_route: Vec<String> = header_values(&ok, "Record-Route")
        .iter()
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .collect();
    assert_eq!(record_route.len(), 2, "{record_route:?}");
    let to_tag = header(&ok, "To")
        .and_then(|to| to.split("tag=").nth(1))
        .expect("a To tag")
        .to_string();
    // The phone moves: a new connection, from another address.
    drop(first);
    let mut moved = TcpPeer::connect_from("127.0.0.65", lb.addr());
    let mut bye = RawRequest::new(
        "BYE",
        &format!("sip:callee@{}", backend.addr),
        Transport::Tcp,
        moved.local_addr(),
    );
    bye.call_id = invite.call_id.clone();
    bye.from_tag = invite.from_tag.clone();
    bye.to_tag = Some(to_tag);
    bye.cseq = 2;
    for route in record_route.iter().rev() {
        bye = bye.header("Route", route);
    }
    assert!(moved.send(bye.render().as_bytes()));
    let answer = moved.recv_final(Duration::from_secs(3), &mut Vec::new());
    assert_eq!(
        answer.as_deref().and_then(status_code),
        Some(200),
        "{answer:?}\n{}",
        lb.log_tail(20)
    );
    assert!(backend.wait_for("BYE", 1, Duration::from_secs(1)));
}

/// An INVITE with a WebRTC-sized offer (4 KB of SDP).
fn large_invite(caller: &UdpPeer) -> RawRequest {
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n{}",
        "a=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host generation 0\r\n".repeat(60)
    );
    RawRequest::new(
        "INVITE",
        "sip:bob@example.com",
        Transport::Udp,
        caller.local_addr(),
    )
    .header("Content-Type", "application/sdp")
    .body(&sdp)
}

#[test]
fn a_large_invite_leaves_the_lb_over_tcp() {
    // §18.1.1: 4 KB over UDP would be IP-fragmented, which cloud NATs drop.
    let backend = std::net::TcpListener::bind("127.0.0.67:0").unwrap();
    let lb = start_lb(backend.local_addr().unwrap());
    let caller = UdpPeer::bind();
    let invite = large_invite(&caller);
    caller.send_to(invite.render().as_bytes(), lb.addr());
    backend.set_nonblocking(false).unwrap();
    let (stream, _) = backend.accept().expect("the LB connects over TCP");
    let mut connection = TcpPeer::from_stream(stream);
    let relayed = connection
        .recv(Duration::from_secs(3))
        .expect("the INVITE over TCP");
    assert_eq!(method(&relayed), Some("INVITE"));
    let via = header(&relayed, "Via").unwrap();
    assert!(via.starts_with("SIP/2.0/TCP "), "our Via says TCP: {via}");
    let contact: SocketAddr = "127.0.0.67:5060".parse().unwrap();
    for (code, reason) in [(180, "Ringing"), (200, "OK")] {
        assert!(connection.send(answer(&relayed, code, reason, contact).as_bytes()));
    }
    let last = caller.recv_final(Duration::from_secs(3), &mut Vec::new());
    assert_eq!(last.as_deref().and_then(status_code), Some(200));
}

#[test]
fn a_large_invite_to_a_backend_without_tcp_goes_over_udp_after_all() {
    // Nothing listens on TCP there: the connection is refused, and the
    // INVITE goes over UDP (§18.1.1), without a failover.
    let backend = RawBackend::start("127.0.0.68", None, Box::new(answering));
    let lb = start_lb(backend.addr);
    let caller = UdpPeer::bind();
    let invite = large_invite(&caller);
    caller.send_to(invite.render().as_bytes(), lb.addr());
    let last = caller.recv_final(Duration::from_secs(3), &mut Vec::new());
    assert_eq!(
        last.as_deref().and_then(status_code),
        Some(200),
        "{}",
        lb.log_tail(20)
    );
    assert_eq!(backend.count("INVITE"), 1);
    let received = backend.received.lock().unwrap();
    let via = header(&received[0], "Via").unwrap();
    assert!(via.starts_with("SIP/2.0/UDP "), "{via}");
    assert!(lb.log_lines("failover").is_empty());
}
