//! End to end with real softphones: two baresip instances register through
//! the seed's `lb.py` to two `proxy.py` backends (memory registrar) and call
//! each other, over UDP and over TCP.
//!
//! baresip writes the account's transport into the To URI of its calls
//! (`To: <sip:alice@example.com;transport=udp>`) but not into its REGISTER
//! (`To: <sip:alice@example.com>`), so these calls reach the backend that
//! holds the callee's binding only because the `hash` key is reduced to the
//! address of record. Each phone is driven over baresip's `ctrl_tcp` socket
//! (netstring-framed JSON commands and events) and answers automatically;
//! audio runs through `aubridge`, so no sound device is needed.

mod common;

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::{example_script, free_port, get_json, tail, Siphon, Transport, LOCALHOST};

/// The subscribers' domain, local on both backends.
const DOMAIN: &str = "example.com";

/// How long a phone may take to register, answer or hang up.
const PHONE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long each call lasts before it is hung up.
const TALK_TIME: Duration = Duration::from_millis(200);

/// The front load balancer: the seed's config shape, two backends.
const LB_CONFIG: &str = r#"listen:
  udp: ["127.0.0.1:@PORT@"]
  tcp: ["127.0.0.1:@PORT@"]
script:
  path: "script.py"
gateway:
  groups:
    - name: "backends"
      algorithm: hash
      probe: {enabled: true, interval_secs: 2, failure_threshold: 2, timeout_ms: 500}
      destinations:
        - uri: "sip:backend1.example.com"
          address: "127.0.0.1:@B1@"
        - uri: "sip:backend2.example.com"
          address: "127.0.0.1:@B2@"
log: {level: info, format: pretty}
"#;

/// A backend node: `proxy.py` with the memory registrar and the admin API,
/// which is how the test sees the bindings it holds.
const BACKEND_CONFIG: &str = r#"listen:
  udp: ["127.0.0.1:@PORT@"]
  tcp: ["127.0.0.1:@PORT@"]
domain:
  local: ["example.com", "@NAME@", "127.0.0.1"]
script:
  path: "script.py"
admin: {listen: "127.0.0.1:@ADMIN@"}
log: {level: info, format: pretty}
"#;

/// A backend siphon and the port of its admin API.
struct Backend {
    name: &'static str,
    siphon: Siphon,
    admin: SocketAddr,
}

impl Backend {
    fn start(name: &'static str) -> Backend {
        let admin_port = free_port();
        let config = BACKEND_CONFIG
            .replace("@NAME@", name)
            .replace("@ADMIN@", &admin_port.to_string());
        Backend {
            name,
            siphon: Siphon::start(&config, &example_script("proxy.py")),
            admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
        }
    }

    /// How many bindings this backend holds for USER's AoR.
    fn bindings_of(&self, user: &str) -> usize {
        let view = get_json(
            self.admin,
            &format!("/admin/registrations/sip:{user}@{DOMAIN}"),
        );
        view["bindings"].as_array().map_or(0, Vec::len)
    }
}

/// A port free for UDP and TCP whose successor is free for TCP as well:
/// baresip opens a TLS listener on the SIP port + 1.
fn free_port_pair() -> u16 {
    loop {
        let port = free_port();
        if port < u16::MAX && TcpListener::bind((LOCALHOST, port + 1)).is_ok() {
            return port;
        }
    }
}

/// A baresip softphone registered as `USER@example.com` through the LB.
struct Phone {
    user: &'static str,
    child: Child,
    control: TcpStream,
    /// Bytes read from the control socket that do not yet form a netstring.
    unread: Vec<u8>,
    /// Frames received and not yet taken by a wait.
    untaken: Vec<Value>,
    /// Every frame received, for the failure report.
    seen: Vec<String>,
    log: PathBuf,
}

impl Phone {
    fn start(dir: &Path, user: &'static str, lb: SocketAddr, transport: Transport) -> Phone {
        let home = dir.join(user);
        fs::create_dir_all(&home).expect("phone config dir");
        let sip_port = free_port_pair();
        let control_port = free_port();
        let transport = transport.param();
        fs::write(
            home.join("config"),
            format!(
                "poll_method epoll\n\
                 net_interface {LOCALHOST}\n\
                 sip_listen {LOCALHOST}:{sip_port}\n\
                 module_path /usr/lib/baresip/modules\n\
                 module g711.so\n\
                 module aubridge.so\n\
                 module_app account.so\n\
                 module_app ctrl_tcp.so\n\
                 module_app menu.so\n\
                 ctrl_tcp_listen {LOCALHOST}:{control_port}\n\
                 audio_player aubridge,{user}\n\
                 audio_source aubridge,{user}\n\
                 audio_alert aubridge,{user}\n"
            ),
        )
        .expect("write baresip config");
        // The account as a user types it into a phone: the AoR with its
        // transport, and the LB as outbound proxy.
        fs::write(
            home.join("accounts"),
            format!(
                "<sip:{user}@{DOMAIN};transport={transport}>;\
                 outbound=\"sip:{lb};transport={transport}\";regint=60;answermode=auto\n"
            ),
        )
        .expect("write baresip accounts");
        let log = dir.join(format!("{user}.log"));
        let log_file = fs::File::create(&log).expect("phone log");
        let child = Command::new("baresip")
            .arg("-s") // SIP trace in the log, for the failure report
            .arg("-f")
            .arg(&home)
            .stdin(Stdio::null())
            .stderr(log_file.try_clone().expect("phone log"))
            .stdout(log_file)
            .spawn()
            .expect("spawn baresip (Debian package baresip-core)");
        let control_addr = SocketAddr::from(([127, 0, 0, 1], control_port));
        let deadline = Instant::now() + PHONE_TIMEOUT;
        let control = loop {
            match TcpStream::connect_timeout(&control_addr, Duration::from_millis(200)) {
                Ok(stream) => break stream,
                Err(e) if Instant::now() >= deadline => panic!(
                    "baresip {user}: control socket {control_addr}: {e}\n{}",
                    tail(&fs::read_to_string(&log).unwrap_or_default(), 30)
                ),
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        };
        control
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("control read timeout");
        Phone {
            user,
            child,
            control,
            unread: Vec::new(),
            untaken: Vec::new(),
            seen: Vec::new(),
            log,
        }
    }

    fn report(&self) -> String {
        format!(
            "phone {}: frames seen:\n{}\n-- log tail --\n{}",
            self.user,
            self.seen.join("\n"),
            tail(&fs::read_to_string(&self.log).unwrap_or_default(), 60)
        )
    }

    /// Sends a ctrl_tcp command and waits for its response.
    fn command(&mut self, command: &str, params: &str) {
        let body =
            serde_json::json!({"command": command, "params": params, "token": command}).to_string();
        let frame = format!("{}:{body},", body.len());
        self.control
            .write_all(frame.as_bytes())
            .unwrap_or_else(|e| panic!("{}: send {command}: {e}", self.user));
        let response = self.wait_for(|frame| frame["response"] == true);
        assert_eq!(
            response["ok"],
            true,
            "{command} {params} refused: {response}\n{}",
            self.report()
        );
    }

    /// Waits for the call event TYPE (`CALL_ESTABLISHED`, `CALL_CLOSED`).
    fn wait_event(&mut self, kind: &str) -> Value {
        self.wait_for(|frame| frame["event"] == true && frame["type"] == kind)
    }

    /// The first frame, received or still to come, that satisfies WANTED
    /// and was not taken before; panics after PHONE_TIMEOUT. Frames that do
    /// not match stay for later waits: a hangup's response and its
    /// CALL_CLOSED event arrive in either order.
    fn wait_for(&mut self, wanted: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + PHONE_TIMEOUT;
        loop {
            while let Some(frame) = self.next_frame() {
                self.seen.push(frame.to_string());
                self.untaken.push(frame);
            }
            if let Some(index) = self.untaken.iter().position(&wanted) {
                return self.untaken.remove(index);
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting on the phone\n{}",
                self.report()
            );
            let mut buf = [0u8; 4096];
            match self.control.read(&mut buf) {
                Ok(0) => panic!("control socket closed\n{}", self.report()),
                Ok(n) => self.unread.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("control socket: {e}\n{}", self.report()),
            }
        }
    }

    /// The next complete netstring (`len:json,`) in `unread`, parsed.
    fn next_frame(&mut self) -> Option<Value> {
        let colon = self.unread.iter().position(|&b| b == b':')?;
        let len: usize = std::str::from_utf8(&self.unread[..colon])
            .ok()
            .and_then(|digits| digits.parse().ok())
            .unwrap_or_else(|| panic!("bad netstring from baresip: {:?}", self.unread));
        let end = colon + 1 + len;
        if self.unread.len() <= end {
            return None;
        }
        let frame = serde_json::from_slice(&self.unread[colon + 1..end])
            .unwrap_or_else(|e| panic!("baresip sent bad JSON ({e})"));
        self.unread.drain(..=end);
        Some(frame)
    }
}

impl Drop for Phone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("{}", self.report());
        }
    }
}

/// Which backend the LB sent USER's REGISTER to, from `lb.py`'s log line
/// `LB REGISTER sip:USER@example.com -> sip:backendN.example.com`.
fn registered_backend(lb: &Siphon, user: &str) -> String {
    let prefix = format!("LB REGISTER sip:{user}@{DOMAIN} -> ");
    let lines = lb.log_lines(&prefix);
    let line = lines
        .last()
        .unwrap_or_else(|| panic!("no REGISTER for {user} in the LB log:\n{}", lb.log_tail(30)));
    let uri = &line[line.find(&prefix).expect("prefix") + prefix.len()..];
    uri.trim_start_matches("sip:").trim().to_string()
}

/// CALLER calls CALLEE, who answers automatically; HANGER ends the call.
/// Both phones must see the call established and closed.
fn call(phones: &mut [Phone; 2], caller: usize, hanger: usize) {
    let callee = 1 - caller;
    let callee_uri = format!("sip:{}@{DOMAIN}", phones[callee].user);
    phones[caller].command("dial", &callee_uri);
    let answered = phones[caller].wait_event("CALL_ESTABLISHED");
    let peer = answered["peeruri"].as_str().unwrap_or_default();
    assert!(peer.starts_with(&callee_uri), "{answered}");
    let incoming = phones[callee].wait_event("CALL_ESTABLISHED");
    assert_eq!(incoming["direction"], "incoming", "{incoming}");
    thread::sleep(TALK_TIME);
    phones[hanger].command("hangup", "");
    for phone in phones.iter_mut() {
        phone.wait_event("CALL_CLOSED");
    }
}

fn phones_call_each_other_through_the_lb(transport: Transport) {
    let backends = [
        Backend::start("backend1.example.com"),
        Backend::start("backend2.example.com"),
    ];
    let config = LB_CONFIG
        .replace("@B1@", &backends[0].siphon.port.to_string())
        .replace("@B2@", &backends[1].siphon.port.to_string());
    let lb = Siphon::start(&config, &example_script("lb.py"));
    let work = tempfile::tempdir().expect("tempdir");
    let mut phones = [
        Phone::start(work.path(), "alice", lb.addr(), transport),
        Phone::start(work.path(), "bob", lb.addr(), transport),
    ];

    // Each phone's binding is on the backend the LB hashed its REGISTER to,
    // and only there.
    let deadline = Instant::now() + PHONE_TIMEOUT;
    let mut holders = Vec::new();
    for phone in &phones {
        let holder = loop {
            let holding: Vec<&Backend> = backends
                .iter()
                .filter(|b| b.bindings_of(phone.user) > 0)
                .collect();
            if let [only] = holding.as_slice() {
                break only.name;
            }
            assert!(
                holding.len() < 2,
                "{} is bound on both backends",
                phone.user
            );
            assert!(
                Instant::now() < deadline,
                "{} never registered\n{}\n-- LB --\n{}",
                phone.user,
                phone.report(),
                lb.log_tail(30)
            );
            thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(holder, registered_backend(&lb, phone.user));
        holders.push(holder);
    }
    // With these two backend names the two AoRs hash apart, so each call
    // crosses from one backend's subscriber to the other's.
    assert_ne!(holders[0], holders[1], "alice and bob share a backend");

    // Both directions, each hung up once by the caller and once by the callee.
    for (caller, hanger) in [(0, 0), (0, 1), (1, 1), (1, 0)] {
        call(&mut phones, caller, hanger);
    }

    // The calls' To carried the transport parameter, and each INVITE went to
    // the backend holding the callee's binding.
    for (callee, holder) in phones.iter().zip(&holders) {
        let routed = format!(
            "LB INVITE sip:{}@{DOMAIN};transport={} -> sip:{holder}",
            callee.user,
            transport.param()
        );
        assert_eq!(
            lb.log_lines(&routed).len(),
            2,
            "expected two INVITEs logged as {routed:?}; LB log:\n{}",
            lb.log_tail(40)
        );
    }
}

#[test]
fn baresip_phones_call_each_other_over_udp() {
    phones_call_each_other_through_the_lb(Transport::Udp);
}

#[test]
fn baresip_phones_call_each_other_over_tcp() {
    phones_call_each_other_through_the_lb(Transport::Tcp);
}
