//! End to end: `capture.hep` sends every SIP message siphon sends and
//! receives as HEPv3. sngrep (Debian's, listening for HEP with `-L`) gets
//! a UDP call and a TLS call, the TLS leg in plain text, and writes them to
//! a pcap the test reads; a HEP-over-TCP receiver in the test decodes the
//! chunks itself; with the collector gone, calls go on and the drops are
//! counted.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::calls::{backend, callers, destination, Lb};
use common::tls::{python_tls_call, TestCa};
use common::{free_port, send_signal};

/// An LB with a UDP and a TLS listener, one backend, and `@CAPTURE@`.
const CONFIG: &str = r#"listen:
  udp: ["127.0.0.1:@PORT@"]
  tls: [{address: "127.0.0.1:@TLS@", cert: "@CERT@", key: "@KEY@"}]
script:
  path: "script.py"
gateway:
  groups:
    - name: "backends"
      algorithm: hash
      destinations:
@DESTINATIONS@
capture:
  hep: @CAPTURE@
admin: {listen: "127.0.0.1:@ADMIN@"}
log: {level: info, format: pretty}
"#;

/// One message as the capture shows it.
#[derive(Debug, Clone)]
struct Seen {
    source: SocketAddr,
    destination: SocketAddr,
    /// 6 (a stream) or 17.
    protocol: u8,
    first_line: String,
    call_id: String,
    payload: Vec<u8>,
}

fn header(text: &str, name: &str) -> String {
    text.split("\r\n")
        .find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default()
}

fn seen(source: SocketAddr, destination: SocketAddr, protocol: u8, payload: &[u8]) -> Seen {
    let text = String::from_utf8_lossy(payload);
    Seen {
        source,
        destination,
        protocol,
        first_line: text.split("\r\n").next().unwrap_or("").to_string(),
        call_id: header(&text, "Call-ID"),
        payload: payload.to_vec(),
    }
}

/// The messages of a pcap sngrep wrote (Ethernet, IPv4, then UDP or TCP).
fn read_pcap(path: &std::path::Path) -> Vec<Seen> {
    let data = std::fs::read(path).unwrap_or_default();
    let mut found = Vec::new();
    let mut at = 24;
    while at + 16 <= data.len() {
        let length = u32::from_le_bytes(data[at + 8..at + 12].try_into().unwrap()) as usize;
        let Some(frame) = data.get(at + 16..at + 16 + length) else {
            break;
        };
        at += 16 + length;
        let ip = &frame[14..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let protocol = ip[9];
        let address = |o: usize| std::net::Ipv4Addr::new(ip[o], ip[o + 1], ip[o + 2], ip[o + 3]);
        let transport = &ip[ihl..];
        let port = |o: usize| u16::from_be_bytes([transport[o], transport[o + 1]]);
        let header_length = match protocol {
            6 => usize::from(transport[12] >> 4) * 4,
            _ => 8,
        };
        found.push(seen(
            SocketAddr::from((address(12), port(0))),
            SocketAddr::from((address(16), port(2))),
            protocol,
            &transport[header_length..],
        ));
    }
    found
}

/// `first_line` starts (a method, or a status code) of each message of
/// `call_id`, in the order captured.
/// The messages of `call_id`, a retransmission (the same bytes between the
/// same ends) counted once: a loaded machine may retransmit.
fn of_call<'a>(seen: &'a [Seen], call_id: &str) -> Vec<&'a Seen> {
    let mut kept: Vec<&Seen> = Vec::new();
    for s in seen.iter().filter(|s| s.call_id == call_id) {
        let again = kept.iter().any(|k| {
            (k.source, k.destination, &k.payload) == (s.source, s.destination, &s.payload)
        });
        if !again {
            kept.push(s);
        }
    }
    kept
}

fn starts(messages: &[&Seen]) -> Vec<String> {
    messages
        .iter()
        .map(|s| {
            let words: Vec<&str> = s.first_line.split(' ').collect();
            match words.first() {
                Some(&"SIP/2.0") => words.get(1).unwrap_or(&"").to_string(),
                _ => words.first().unwrap_or(&"").to_string(),
            }
        })
        .collect()
}

struct Setup {
    lb: Lb,
    _backend: common::gateway::Backend,
    backend: SocketAddr,
    tls: SocketAddr,
    ca_file: std::path::PathBuf,
    dir: tempfile::TempDir,
}

fn start(capture: &str) -> Setup {
    start_with_script(capture, &common::gateway::seed_lb_script())
}

fn start_with_script(capture: &str, script: &str) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new();
    let ca_file = ca.write(dir.path());
    let cert = ca.issue(dir.path(), "lb", &["lb.test", "127.0.0.1"]);
    let backend_port = free_port();
    let started = backend(dir.path(), 1, backend_port);
    let tls_port = free_port();
    let config = CONFIG
        .replace("@TLS@", &tls_port.to_string())
        .replace("@CERT@", &cert.cert.display().to_string())
        .replace("@KEY@", &cert.key.display().to_string())
        .replace(
            "@DESTINATIONS@",
            destination(1, backend_port, "").trim_end(),
        )
        .replace("@CAPTURE@", capture);
    let lb = Lb::start_with_template(&config, script);
    Setup {
        lb,
        _backend: started,
        backend: SocketAddr::from(([127, 0, 0, 1], backend_port)),
        tls: SocketAddr::from(([127, 0, 0, 1], tls_port)),
        ca_file,
        dir,
    }
}

/// One UDP call through the LB; its caller's address and Call-ID.
fn udp_call(setup: &Setup, name: &str) -> (SocketAddr, String) {
    let spec = callers(name, setup.lb.addr(), &[format!("{name}-user")], 1, 100).trace_messages();
    let caller = spec.addr();
    let outcome = spec.spawn(setup.dir.path()).wait();
    outcome.assert_all_succeeded();
    let invite = outcome
        .sent_messages()
        .into_iter()
        .find(|m| m.starts_with("INVITE"))
        .expect("the caller sent an INVITE");
    (caller, header(&invite, "Call-ID"))
}

struct Sngrep {
    child: Child,
}

impl Drop for Sngrep {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sngrep_fed_by_hep_shows_every_message_of_a_udp_call_and_of_a_tls_call() {
    let hep = free_port();
    let setup = start(&format!("{{address: \"127.0.0.1:{hep}\"}}"));
    let pcap = setup.dir.path().join("capture.pcap");
    let mut sngrep = Sngrep {
        child: Command::new("sngrep")
            .args(["-N", "-q", "-L", &format!("udp:127.0.0.1:{hep}"), "-O"])
            .arg(&pcap)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sngrep (Debian package sngrep)"),
    };
    assert!(
        common::wait_until_bound(hep, common::Transport::Udp, Duration::from_secs(5)),
        "sngrep does not listen"
    );

    let (caller, call_id) = udp_call(&setup, "hep-udp");
    let lines = python_tls_call(setup.tls, &setup.ca_file, "lb.test", "tls-user")
        .unwrap_or_else(|e| panic!("{e}\n{}", setup.lb.siphon.log_tail(30)));
    assert_eq!(lines.last().map(String::as_str), Some("DONE"), "{lines:?}");
    thread::sleep(Duration::from_millis(1000));
    assert!(send_signal(sngrep.child.id(), "TERM"));
    let _ = sngrep.child.wait();
    let captured = read_pcap(&pcap);

    // The UDP call: every message of it, each way, with its addresses.
    let udp = of_call(&captured, &call_id);
    let lb = setup.lb.addr();
    let from_caller: Vec<_> = udp.iter().filter(|s| s.source == caller).copied().collect();
    let to_caller: Vec<_> = udp
        .iter()
        .filter(|s| s.destination == caller)
        .copied()
        .collect();
    let to_backend: Vec<_> = udp
        .iter()
        .filter(|s| s.destination == setup.backend)
        .copied()
        .collect();
    let from_backend: Vec<_> = udp
        .iter()
        .filter(|s| s.source == setup.backend)
        .copied()
        .collect();
    assert_eq!(starts(&from_caller), ["INVITE", "ACK", "BYE"], "{udp:#?}");
    assert!(from_caller
        .iter()
        .all(|s| s.destination == lb && s.protocol == 17));
    assert_eq!(starts(&to_caller), ["100", "180", "200", "200"], "{udp:#?}");
    assert!(to_caller.iter().all(|s| s.source == lb));
    assert_eq!(starts(&to_backend), ["INVITE", "ACK", "BYE"], "{udp:#?}");
    assert!(to_backend.iter().all(|s| s.source == lb));
    assert_eq!(starts(&from_backend), ["180", "200", "200"], "{udp:#?}");

    // The TLS call: its leg from the caller in plain text, to and from the
    // TLS listener (sngrep writes HEP packets as UDP frames whatever their
    // protocol chunk, which the TCP receiver below checks), and its UDP leg
    // to the backend.
    let tls_invite = captured
        .iter()
        .find(|s| s.first_line.starts_with("INVITE") && s.destination == setup.tls)
        .unwrap_or_else(|| panic!("no INVITE to the TLS listener in {captured:#?}"));
    let tls = of_call(&captured, &tls_invite.call_id);
    let over_tls: Vec<_> = tls
        .iter()
        .filter(|s| s.source == setup.tls || s.destination == setup.tls)
        .copied()
        .collect();
    assert_eq!(
        starts(
            &over_tls
                .iter()
                .filter(|s| s.destination == setup.tls)
                .copied()
                .collect::<Vec<_>>()
        ),
        ["INVITE", "ACK", "BYE"]
    );
    assert_eq!(
        starts(
            &over_tls
                .iter()
                .filter(|s| s.source == setup.tls)
                .copied()
                .collect::<Vec<_>>()
        ),
        ["100", "180", "200", "200"],
        "{over_tls:#?}"
    );
    let to_backend: Vec<_> = tls
        .iter()
        .filter(|s| s.destination == setup.backend)
        .copied()
        .collect();
    assert_eq!(starts(&to_backend), ["INVITE", "ACK", "BYE"], "{tls:#?}");
}

/// Reads HEPv3 packets from a TCP stream until `quiet` passes with none.
fn read_hep(stream: &mut std::net::TcpStream, quiet: Duration) -> Vec<Vec<u8>> {
    stream.set_read_timeout(Some(quiet)).unwrap();
    let mut packets = Vec::new();
    loop {
        let mut head = [0u8; 6];
        if stream.read_exact(&mut head).is_err() {
            return packets;
        }
        assert_eq!(&head[..4], b"HEP3", "not a HEPv3 packet");
        let total = usize::from(u16::from_be_bytes([head[4], head[5]]));
        let mut rest = vec![0u8; total - 6];
        stream
            .read_exact(&mut rest)
            .expect("the rest of the packet");
        packets.push([&head[..], &rest[..]].concat());
    }
}

/// A packet's generic chunks by type (vendor 0), decoded here rather than
/// by siphon's own decoder.
fn decode(packet: &[u8]) -> BTreeMap<u16, Vec<u8>> {
    let mut chunks = BTreeMap::new();
    let mut at = 6;
    while at < packet.len() {
        let vendor = u16::from_be_bytes([packet[at], packet[at + 1]]);
        let kind = u16::from_be_bytes([packet[at + 2], packet[at + 3]]);
        let length = usize::from(u16::from_be_bytes([packet[at + 4], packet[at + 5]]));
        assert!(length >= 6, "a chunk shorter than its header");
        if vendor == 0 {
            chunks.insert(kind, packet[at + 6..at + length].to_vec());
        }
        at += length;
    }
    chunks
}

#[test]
fn hep_over_tcp_carries_addresses_ports_times_and_the_call_id_and_a_gone_collector_costs_no_call() {
    let collector = TcpListener::bind("127.0.0.1:0").unwrap();
    let hep = collector.local_addr().unwrap();
    let setup = start(&format!(
        "{{address: \"{hep}\", transport: tcp, id: 2001, password: \"hep-secret\"}}"
    ));
    // A CR/LF keepalive is no SIP message: it is not captured.
    let pinger = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    pinger.send_to(b"\r\n\r\n", setup.lb.addr()).unwrap();
    let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let (caller, call_id) = udp_call(&setup, "hep-tcp");
    let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    collector.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut stream = loop {
        match collector.accept() {
            Ok((stream, _)) => break stream,
            Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("siphon did not connect to the collector: {e}"),
        }
    };
    stream.set_nonblocking(false).unwrap();
    let all: Vec<_> = read_hep(&mut stream, Duration::from_millis(1500))
        .iter()
        .map(|p| decode(p))
        .collect();
    let pinger_addr = pinger.local_addr().unwrap();
    let address_of = |c: &BTreeMap<u16, Vec<u8>>| {
        let ip: [u8; 4] = c[&3].clone().try_into().expect("an IPv4 address");
        SocketAddr::from((ip, u16::from_be_bytes([c[&7][0], c[&7][1]])))
    };
    assert!(
        all.iter().all(|c| address_of(c) != pinger_addr),
        "a keepalive was captured"
    );
    let mut packets: Vec<BTreeMap<u16, Vec<u8>>> = Vec::new();
    for chunks in all {
        // A retransmission (the same bytes between the same ends) once.
        let again = packets.iter().any(|p| {
            [3, 4, 7, 8, 15]
                .iter()
                .all(|kind| p.get(kind) == chunks.get(kind))
        });
        let ours = chunks.get(&17).is_some_and(|id| id == call_id.as_bytes());
        if ours && !again {
            packets.push(chunks);
        }
    }
    let lb = setup.lb.addr();
    let address = |c: &BTreeMap<u16, Vec<u8>>, ip: u16, port: u16| {
        let ip: [u8; 4] = c[&ip].clone().try_into().expect("an IPv4 address");
        SocketAddr::from((ip, u16::from_be_bytes([c[&port][0], c[&port][1]])))
    };
    let mut legs = Vec::new();
    for chunks in &packets {
        assert_eq!(chunks[&1], [2], "IPv4");
        assert_eq!(chunks[&2], [17], "UDP");
        assert_eq!(chunks[&11], [1], "SIP");
        assert_eq!(chunks[&12], 2001u32.to_be_bytes(), "capture id");
        assert_eq!(chunks[&14], b"hep-secret", "auth key");
        let seconds = u64::from(u32::from_be_bytes(chunks[&9].clone().try_into().unwrap()));
        let micros = u32::from_be_bytes(chunks[&10].clone().try_into().unwrap());
        let at = Duration::new(seconds, micros * 1000);
        assert!(
            micros < 1_000_000 && at + Duration::from_millis(1) >= before && at <= after,
            "{at:?}"
        );
        let payload = String::from_utf8_lossy(&chunks[&15]).to_string();
        assert_eq!(header(&payload, "Call-ID"), call_id);
        legs.push((address(chunks, 3, 7), address(chunks, 4, 8), payload));
    }
    let count = |from: SocketAddr, to: SocketAddr| {
        legs.iter()
            .filter(|(s, d, _)| *s == from && *d == to)
            .count()
    };
    assert_eq!(count(caller, lb), 3, "INVITE, ACK, BYE in: {legs:#?}");
    assert_eq!(count(lb, caller), 4, "100, 180, 200, 200 out");
    assert_eq!(count(lb, setup.backend), 3, "INVITE, ACK, BYE relayed");
    assert_eq!(count(setup.backend, lb), 3, "180, 200, 200 back");

    // A TLS call: its caller's leg, in plain text, says TCP (6).
    let lines = python_tls_call(setup.tls, &setup.ca_file, "lb.test", "tls-user")
        .unwrap_or_else(|e| panic!("{e}\n{}", setup.lb.siphon.log_tail(30)));
    assert_eq!(lines.last().map(String::as_str), Some("DONE"), "{lines:?}");
    let tls_leg: Vec<_> = read_hep(&mut stream, Duration::from_millis(1500))
        .iter()
        .map(|p| decode(p))
        .filter(|c| address(c, 4, 8) == setup.tls || address(c, 3, 7) == setup.tls)
        .collect();
    assert!(
        tls_leg.len() >= 6,
        "{} packets on the TLS leg",
        tls_leg.len()
    );
    assert!(tls_leg.iter().all(|c| c[&2] == [6]), "the TLS leg is TCP");
    assert!(tls_leg
        .iter()
        .any(|c| String::from_utf8_lossy(&c[&15]).starts_with("INVITE sip:tls-user")));

    // The collector goes away: calls go on, and what cannot be sent is
    // counted.
    drop(stream);
    drop(collector);
    let started = Instant::now();
    udp_call(&setup, "hep-gone");
    assert!(started.elapsed() < Duration::from_secs(10));
    let dropped = || {
        setup
            .lb
            .metric("siphon_hep_dropped_total{reason=\"send_failed\"}")
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    while dropped() < 1.0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    assert!(dropped() >= 1.0, "no drop counted: {}", dropped());
}

/// OPTIONS pings answered by the script, which takes them out of capture;
/// the seed's `lb.py` for the rest.
const PINGS_UNCAPTURED: &str = r#"from siphon import proxy

@proxy.on_request("OPTIONS")
def ping(request):
    request.capture(False)
    request.reply(200)

"#;

#[test]
fn a_script_takes_a_call_out_of_capture_with_request_capture_false() {
    let collector = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let hep = collector.local_addr().unwrap();
    let script = format!("{PINGS_UNCAPTURED}{}", common::gateway::seed_lb_script());
    let setup = start_with_script(&format!("{{address: \"{hep}\"}}"), &script);
    let pinger = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    pinger
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // The first is a warm-up (its handler is the script's first run);
    // the others must be out of capture, request and answer.
    let pings: Vec<String> = (0..4).map(|n| format!("ping-{n}@monitor")).collect();
    for (n, call_id) in pings.iter().enumerate() {
        let options = format!(
            "OPTIONS sip:{lb} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-ping{n}\r\n\
             From: <sip:monitor@{me}>;tag=m1\r\nTo: <sip:{lb}>\r\nCall-ID: {call_id}\r\n\
             CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            lb = setup.lb.addr(),
            me = pinger.local_addr().unwrap(),
        );
        pinger.send_to(options.as_bytes(), setup.lb.addr()).unwrap();
        let mut answer = [0u8; 2048];
        let (n, _) = pinger.recv_from(&mut answer).expect("an answer to OPTIONS");
        assert!(
            answer[..n].starts_with(b"SIP/2.0 200"),
            "{}",
            String::from_utf8_lossy(&answer[..n])
        );
    }
    let (_, call_id) = udp_call(&setup, "hep-kept");

    collector
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut correlation_ids = Vec::new();
    let mut packet = [0u8; 65535];
    while let Ok(n) = collector.recv(&mut packet) {
        let chunks = decode(&packet[..n]);
        correlation_ids.push(String::from_utf8_lossy(&chunks[&17]).to_string());
    }
    assert!(
        correlation_ids.iter().filter(|id| **id == call_id).count() >= 13,
        "the call is captured: {correlation_ids:?}"
    );
    for ping in &pings[1..] {
        assert!(
            !correlation_ids.contains(ping),
            "{ping} was captured: {correlation_ids:?}"
        );
    }
}
