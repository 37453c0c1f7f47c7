//! baresip softphones for the end-to-end tests: each registers as
//! `USER@example.com` through an outbound proxy, is driven over baresip's
//! `ctrl_tcp` socket (netstring-framed JSON commands and events), answers
//! automatically, and runs its audio through `aubridge` (no sound device).

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{free_port, tail, Transport, LOCALHOST};

/// The subscribers' domain.
pub const DOMAIN: &str = "example.com";

/// How long a phone may take to register, answer or hang up.
pub const PHONE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long each call lasts before it is hung up.
const TALK_TIME: Duration = Duration::from_millis(200);

fn free_port_pair() -> u16 {
    loop {
        let port = free_port();
        if port < u16::MAX && TcpListener::bind((LOCALHOST, port + 1)).is_ok() {
            return port;
        }
    }
}

/// A baresip softphone registered as `USER@example.com` through the LB.
pub struct Phone {
    pub user: &'static str,
    /// The host of the phone's AoR.
    pub domain: String,
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
    pub fn start(dir: &Path, user: &'static str, lb: SocketAddr, transport: Transport) -> Phone {
        let account = format!(
            "<sip:{user}@{DOMAIN};transport={t}>;outbound=\"sip:{lb};transport={t}\"",
            t = transport.param()
        );
        Phone::start_with(dir, user, (DOMAIN, account))
    }

    /// A phone set up as a newcomer does it: domain DOMAIN (its registrar
    /// on port 5060 there), any user name, no password, no outbound proxy.
    pub fn start_at(dir: &Path, user: &'static str, domain: &str, transport: Transport) -> Phone {
        let account = format!("<sip:{user}@{domain};transport={}>", transport.param());
        Phone::start_with(dir, user, (domain, account))
    }

    fn start_with(dir: &Path, user: &'static str, (domain, account): (&str, String)) -> Phone {
        let home = dir.join(user);
        fs::create_dir_all(&home).expect("phone config dir");
        let sip_port = free_port_pair();
        let control_port = free_port();
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
        // transport (and maybe an outbound proxy).
        fs::write(
            home.join("accounts"),
            format!("{account};regint=60;answermode=auto\n"),
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
            domain: domain.to_string(),
            child,
            control,
            unread: Vec::new(),
            untaken: Vec::new(),
            seen: Vec::new(),
            log,
        }
    }

    /// What baresip has logged (its SIP trace and status lines).
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn report(&self) -> String {
        format!(
            "phone {}: frames seen:\n{}\n-- log tail --\n{}",
            self.user,
            self.seen.join("\n"),
            tail(&fs::read_to_string(&self.log).unwrap_or_default(), 60)
        )
    }

    /// Sends a ctrl_tcp command and waits for its response.
    pub fn command(&mut self, command: &str, params: &str) {
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
    pub fn wait_event(&mut self, kind: &str) -> Value {
        self.wait_for(|frame| frame["event"] == true && frame["type"] == kind)
    }

    /// The first frame, received or still to come, that satisfies WANTED
    /// and was not taken before; panics after PHONE_TIMEOUT. Frames that do
    /// not match stay for later waits: a hangup's response and its
    /// CALL_CLOSED event arrive in either order.
    pub fn wait_for(&mut self, wanted: impl Fn(&Value) -> bool) -> Value {
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

/// CALLER calls CALLEE, who answers automatically; HANGER ends the call.
/// Both phones must see the call established and closed.
pub fn call(phones: &mut [Phone; 2], caller: usize, hanger: usize) {
    let callee = 1 - caller;
    let callee_uri = format!("sip:{}@{}", phones[callee].user, phones[callee].domain);
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
