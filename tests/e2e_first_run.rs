//! End to end: the first run. A bare `siphon` (no --config, no
//! ./siphon.yaml) runs the example load balancer on 127.0.0.1:5060 with two
//! demo backends on :5071 and :5072, says once what to point a phone at,
//! and two baresip phones set up as a newcomer would (domain 127.0.0.1,
//! any user, no password) register and call each other both ways. A
//! `--config` turns the demo backends off.

mod common;

use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::baresip::{call, Phone, PHONE_TIMEOUT};
use common::{send_signal, wait_with_timeout, Transport};

const DEMO_PORTS: [u16; 3] = [5060, 5071, 5072];

/// A bare siphon, stopped (with its demo backends) when the test ends;
/// its log is printed when the test fails.
struct Bare(Child, std::path::PathBuf);

impl Drop for Bare {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.1).unwrap_or_default();
            eprintln!("-- siphon --\n{}", common::tail(&log, 40));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `siphon` with no arguments in an empty directory, its stderr in a file.
fn bare_siphon(dir: &std::path::Path) -> Bare {
    let child = Command::new(env!("CARGO_BIN_EXE_siphon"))
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("siphon.log")).unwrap())
        .spawn()
        .unwrap();
    Bare(child, dir.join("siphon.log"))
}

/// Whether something answers UDP on 127.0.0.1:PORT (an OPTIONS gets a reply).
fn answers(port: u16) -> bool {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let local = socket.local_addr().unwrap();
    let request = common::RawRequest::new(
        "OPTIONS",
        &format!("sip:127.0.0.1:{port}"),
        Transport::Udp,
        local,
    );
    socket
        .send_to(request.render().as_bytes(), ("127.0.0.1", port))
        .unwrap();
    let mut buf = [0u8; 2048];
    socket.recv(&mut buf).is_ok()
}

fn ports_free() -> bool {
    DEMO_PORTS
        .iter()
        .all(|port| UdpSocket::bind(("127.0.0.1", *port)).is_ok())
}

#[test]
fn a_bare_siphon_lets_two_phones_call_each_other_through_its_demo_backends() {
    assert!(
        ports_free(),
        "the demo's ports 5060, 5071 and 5072 are taken"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut siphon = bare_siphon(dir.path());
    let pid = siphon.0.id();
    let log = || std::fs::read_to_string(dir.path().join("siphon.log")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !log().contains("siphon ready") || !DEMO_PORTS.iter().all(|p| answers(*p)) {
        assert!(Instant::now() < deadline, "not ready:\n{}", log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = log();
    assert_eq!(
        text.matches("point two SIP phones at 127.0.0.1").count(),
        1,
        "the hint is said once:\n{text}"
    );
    assert_eq!(children_of(pid), 2, "two demo backends");
    // Both backends probed up before the phones come.
    std::thread::sleep(Duration::from_millis(500));

    let work = tempfile::tempdir().unwrap();
    let mut phones = [
        Phone::start_at(work.path(), "alice", "127.0.0.1", Transport::Udp),
        Phone::start_at(work.path(), "bob", "127.0.0.1", Transport::Udp),
    ];
    // Registered: baresip logs the 200 and its binding (the event may
    // come before the control socket is connected).
    let deadline = Instant::now() + PHONE_TIMEOUT;
    for phone in &phones {
        let registered = format!("{}@127.0.0.1: {{0/UDP/v4}} 200 OK", phone.user);
        while !phone.log_text().contains(&registered) {
            assert!(Instant::now() < deadline, "{}\n{}", phone.report(), log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // Both directions, hung up by the caller and by the callee.
    for (caller, hanger) in [(0, 0), (1, 0)] {
        call(&mut phones, caller, hanger);
    }
    drop(phones);

    send_signal(pid, "TERM");
    assert!(
        wait_with_timeout(&mut siphon.0, Duration::from_secs(15)).is_some(),
        "{}",
        log()
    );
    // The demo backends went with it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ports_free() {
        assert!(Instant::now() < deadline, "a demo backend outlived the LB");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_config_turns_the_demo_backends_off() {
    let siphon = common::Siphon::start(
        "listen:\n  udp: [\"127.0.0.1:@PORT@\"]\nscript:\n  path: \"script.py\"\nlog: {level: info, format: pretty}\n",
        &common::example_script("proxy.py"),
    );
    assert!(!siphon.log().contains("demo backends"), "{}", siphon.log());
    assert_eq!(children_of(siphon.pid()), 0, "it started processes");
}

/// How many processes have PARENT as their parent.
fn children_of(parent: u32) -> usize {
    let parent_line = format!("PPid:\t{parent}");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path().join("status")).ok())
        .filter(|status| status.lines().any(|line| line == parent_line))
        .count()
}
