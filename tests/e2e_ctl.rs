//! End to end: `siphon ctl` against a running LB whose admin API wants a
//! token (the edge issue's `admin.token`), and destinations changed over
//! the admin API: every verb, its exit codes, the table, and a weight set
//! by `ctl set` that changes the spread of 1000 calls until a reload
//! undoes it.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::calls::{backends, callers, destination, lb_config, outcomes, users, Lb};
use common::free_port;
use common::gateway::{backend_uri, seed_lb_script};

const TOKEN: &str = "s3cret-admin-token";

/// Runs `siphon ctl ARGS` with `--config` the LB's own file.
fn ctl(lb: &Lb, args: &[&str]) -> Output {
    let config = lb.siphon.dir().join("siphon.yaml");
    Command::new(env!("CARGO_BIN_EXE_siphon"))
        .arg("--config")
        .arg(&config)
        .arg("ctl")
        .args(args)
        .output()
        .expect("run siphon ctl")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn report(output: &Output) -> String {
    format!(
        "exit {:?}\n-- stdout --\n{}\n-- stderr --\n{}",
        output.status.code(),
        stdout(output),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// An LB over backends on PORTS whose admin API wants `TOKEN`.
fn lb_with_token(dir: &Path, ports: &[u16]) -> Lb {
    let destinations: String = ports
        .iter()
        .enumerate()
        .map(|(i, &port)| destination(i + 1, port, ""))
        .collect();
    let _ = dir;
    let config = lb_config("weighted", "", &destinations, 14_400).replace(
        "admin: {listen: \"127.0.0.1:@ADMIN@\"}",
        &format!("admin: {{listen: \"127.0.0.1:@ADMIN@\", token: \"{TOKEN}\"}}"),
    );
    Lb::start_with_template(&config, &seed_lb_script())
}

#[test]
fn siphon_ctl_runs_every_verb_against_a_daemon_that_wants_a_token() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_backends, ports) = backends(dir.path(), 3);
    let lb = lb_with_token(dir.path(), &ports[..2]);
    let (b1, b3) = (backend_uri(1), backend_uri(3));

    // Without the token the API refuses; ctl says so and exits 1.
    let url = format!("http://{}", lb.admin);
    let output = Command::new(env!("CARGO_BIN_EXE_siphon"))
        .args(["ctl", "--url", &url, "gateways"])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1), "{}", report(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("401"),
        "{}",
        report(&output)
    );

    let output = ctl(&lb, &["gateways"]);
    assert!(output.status.success(), "{}", report(&output));
    let table = stdout(&output);
    assert!(table.starts_with("GROUP"), "{table}");
    assert!(table.contains(&b1) && table.contains("up"), "{table}");

    for (args, expect) in [
        (
            vec!["down", "backends", b1.as_str(), "--force"],
            "\"healthy\":false",
        ),
        (vec!["up", "backends", b1.as_str()], "\"healthy\":true"),
        (vec!["drain", "backends", b1.as_str()], "\"draining\":true"),
        (vec!["undrain", "backends", b1.as_str()], "\"changed\":true"),
    ] {
        let output = ctl(&lb, &args);
        assert!(output.status.success(), "{args:?}: {}", report(&output));
        assert!(
            stdout(&output).contains(expect),
            "{args:?}: {}",
            report(&output)
        );
    }

    // add, set, select, remove.
    let address = format!("address=127.0.0.1:{}", ports[2]);
    let output = ctl(
        &lb,
        &["add", "backends", &b3, &address, "weight=2", "priority=0"],
    );
    assert!(output.status.success(), "{}", report(&output));
    assert!(stdout(&output).contains(&b3), "{}", report(&output));
    let output = ctl(&lb, &["set", "backends", &b3, "weight=5", "max_calls=10"]);
    assert!(output.status.success(), "{}", report(&output));
    let output = ctl(&lb, &["--json", "gateways"]);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let added = json["groups"][0]["destinations"]
        .as_array()
        .and_then(|list| list.iter().find(|d| d["uri"] == b3.as_str()).cloned())
        .expect("b3 listed");
    assert_eq!(
        (added["weight"].as_u64(), added["max_calls"].as_u64()),
        (Some(5), Some(10))
    );
    assert_eq!(added["source"], "runtime");
    assert_eq!(json["groups"][0]["source"], "runtime");
    let output = ctl(&lb, &["select", "backends", "sip:alice@example.com"]);
    assert!(
        stdout(&output).starts_with("1. sip:backend"),
        "{}",
        report(&output)
    );
    let output = ctl(&lb, &["remove", "backends", &b3]);
    assert!(output.status.success(), "{}", report(&output));
    assert!(!stdout(&output).contains(&b3));

    // Errors from the daemon exit 1 and say why; a bad word exits 2.
    let output = ctl(&lb, &["remove", "backends", "sip:nobody.example.com"]);
    assert_eq!(output.status.code(), Some(1), "{}", report(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no destination"));
    let output = ctl(&lb, &["set", "backends", &b1, "weight=-1"]);
    assert_eq!(output.status.code(), Some(1), "{}", report(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("weight"),
        "{}",
        report(&output)
    );
    let output = ctl(&lb, &["set", "backends", &b1, "weight"]);
    assert_eq!(output.status.code(), Some(2), "{}", report(&output));
    let output = ctl(&lb, &["frobnicate"]);
    assert_eq!(output.status.code(), Some(2), "{}", report(&output));

    // reload, registrations, bans, unban, metrics.
    let output = ctl(&lb, &["reload"]);
    assert!(output.status.success(), "{}", report(&output));
    assert!(
        stdout(&output).starts_with("reloaded"),
        "{}",
        report(&output)
    );
    let output = ctl(&lb, &["registrations", "sip:alice@example.com"]);
    assert!(output.status.success(), "{}", report(&output));
    assert!(
        stdout(&output).contains("no bindings"),
        "{}",
        report(&output)
    );
    let output = ctl(&lb, &["bans"]);
    assert!(
        output.status.success() && stdout(&output).starts_with("IP"),
        "{}",
        report(&output)
    );
    let output = ctl(&lb, &["unban", "192.0.2.7"]);
    assert_eq!(output.status.code(), Some(1), "{}", report(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not banned"));
    let output = ctl(&lb, &["metrics"]);
    assert!(
        stdout(&output).contains("siphon_gateway_active_calls"),
        "{}",
        report(&output)
    );

    // A config without an admin API: ctl says what to set.
    let bare = dir.path().join("bare.yaml");
    std::fs::write(&bare, "script: {path: script.py}\n").expect("write");
    std::fs::write(dir.path().join("script.py"), "").expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_siphon"))
        .arg("--config")
        .arg(&bare)
        .args(["ctl", "gateways"])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("admin API not enabled: set admin.listen"),
        "{}",
        report(&output)
    );
}

#[test]
fn a_weight_set_by_ctl_changes_the_spread_of_1000_calls_until_a_reload() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_backends, ports) = backends(dir.path(), 2);
    let lb = lb_with_token(dir.path(), &ports);
    let output = ctl(&lb, &["set", "backends", &backend_uri(2), "weight=3"]);
    assert!(output.status.success(), "{}", report(&output));

    let outcome = callers("spread", lb.addr(), &users("u", 1000), 400, 0).run(dir.path());
    outcome.assert_all_succeeded();
    let (routes, _) = outcomes(&outcome);
    let b2 = routes.get("b2").copied().unwrap_or(0);
    eprintln!("{routes:?}");
    assert!(
        (720..=780).contains(&b2),
        "weights 1:3 give b2 about 750: {routes:?}"
    );

    // --check names what a reload would undo.
    let check = Command::new(env!("CARGO_BIN_EXE_siphon"))
        .arg("--config")
        .arg(lb.siphon.dir().join("siphon.yaml"))
        .arg("--check")
        .output()
        .expect("run --check");
    let text = stdout(&check);
    assert!(check.status.success(), "{}", report(&check));
    let undone = format!(
        "backends: the admin API's change to {} would be undone",
        backend_uri(2)
    );
    assert!(text.contains(&undone), "{text}");

    // A reload puts the file's weight back, and says so.
    let output = ctl(&lb, &["--json", "reload"]);
    assert!(output.status.success(), "{}", report(&output));
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(answer["runtime_undone"], serde_json::json!(["backends"]));
    assert_eq!(lb_destination_weight(&lb, 2), Some(1));
}

fn lb_destination_weight(lb: &Lb, n: usize) -> Option<u64> {
    let output = ctl(lb, &["--json", "gateways"]);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    json["groups"][0]["destinations"]
        .as_array()?
        .iter()
        .find(|d| d["uri"] == backend_uri(n).as_str())?["weight"]
        .as_u64()
}

/// A script that answers a request from a backend of `backends` otherwise
/// than a caller's.
const MEMBERSHIP_SCRIPT: &str = r#"from siphon import proxy, gateway

@proxy.on_request
def route(request):
    if gateway.is_from("backends", request):
        request.reply(299, "Backend " + str(request.source_group))
    else:
        request.reply(403, "Caller " + str(request.source_group))
"#;

#[test]
fn is_from_routes_a_backends_request_otherwise_than_a_callers() {
    let backend_socket = common::UdpPeer::bind();
    let caller = common::UdpPeer::bind();
    let config = lb_config(
        "weighted",
        "",
        &destination(1, backend_socket.local_addr().port(), ""),
        14_400,
    );
    let lb = Lb::start_with_template(&config, MEMBERSHIP_SCRIPT);
    let answer = |peer: &common::UdpPeer| {
        let request = common::RawRequest::new(
            "OPTIONS",
            "sip:127.0.0.1",
            common::Transport::Udp,
            peer.local_addr(),
        );
        peer.send_to(request.render().as_bytes(), lb.addr());
        let (text, _) = peer.recv(Duration::from_secs(3)).expect("an answer");
        text.lines().next().unwrap_or("").to_string()
    };
    assert_eq!(answer(&backend_socket), "SIP/2.0 299 Backend backends");
    assert_eq!(answer(&caller), "SIP/2.0 403 Caller None");
}

/// A local HTTP receiver for the webhook: answers 200 to every POST and
/// keeps the JSON bodies.
struct Receiver {
    addr: std::net::SocketAddr,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl Receiver {
    fn start() -> Receiver {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream);
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(value) = lower.strip_prefix("content-length:") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_ok() {
                    if let Ok(json) = serde_json::from_slice(&body) {
                        kept.lock().unwrap().push(json);
                    }
                }
                let _ = reader.get_mut().write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        Receiver { addr, bodies }
    }

    fn saw(&self, uri: &str, new_state: &str) -> bool {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .any(|e| e["uri"] == uri && e["new_state"] == new_state)
    }
}

#[test]
fn on_change_and_the_webhook_see_a_frozen_backend_go_down_and_come_back() {
    use common::gateway::Backend;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().expect("temp dir");
    let ports = [free_port(), free_port()];
    let b1 = Backend::start(dir.path(), "b1", ports[0]);
    let _b2 = Backend::start(dir.path(), "b2", ports[1]);
    let receiver = Receiver::start();
    let changes = dir.path().join("changes.log");
    let destinations = destination(1, ports[0], "") + &destination(2, ports[1], "");
    let config = lb_config(
        "weighted",
        "      probe: {enabled: true, interval_secs: 1, failure_threshold: 1, timeout_ms: 400}\n",
        &destinations,
        14_400,
    )
    .replace(
        "  call_max_secs:",
        &format!(
            "  webhook: {{url: \"http://{}/hooks/siphon\", timeout_ms: 500}}\n  call_max_secs:",
            receiver.addr
        ),
    );
    let script = seed_lb_script()
        + &format!(
            "\n\n@gateway.on_change\ndef changed(group, uri, old, new, reason):\n    with open({:?}, \"a\") as f:\n        f.write(f\"{{group}} {{uri}} {{old}} {{new}} {{reason}}\\n\")\n",
            changes.display().to_string()
        );
    let lb = Lb::start_with_template(&config, &script);
    let uri = backend_uri(1);
    let seen = |state: &str| {
        let line = std::fs::read_to_string(&changes).unwrap_or_default();
        let in_script = line.lines().any(|l| {
            l.starts_with(&format!("backends {uri} ")) && l.split(' ').nth(3) == Some(state)
        });
        in_script && receiver.saw(&uri, state)
    };
    let wait = |state: &str| {
        let deadline = Instant::now() + Duration::from_secs(8);
        while !seen(state) {
            assert!(
                Instant::now() < deadline,
                "no `{state}` event for {uri}: script {:?}, webhook {:?}\n{}",
                std::fs::read_to_string(&changes).unwrap_or_default(),
                receiver.bodies.lock().unwrap(),
                lb.siphon.log_tail(20)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    b1.freeze();
    wait("down");
    b1.thaw();
    wait("up");
    let event = receiver
        .bodies
        .lock()
        .unwrap()
        .iter()
        .find(|e| e["new_state"] == "down")
        .cloned()
        .expect("a down event");
    assert_eq!(
        (event["group"].as_str(), event["old_state"].as_str()),
        (Some("backends"), Some("up"))
    );
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    assert!(
        event["node"]
            .as_str()
            .is_some_and(|n| n.starts_with(host.trim())),
        "the node's default name, host and port: {event}"
    );
    assert!(
        event["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{event}"
    );
    // A drain is an event too.
    let output = ctl(&lb, &["drain", "backends", &uri]);
    assert!(output.status.success(), "{}", report(&output));
    wait("draining");
}

#[test]
fn ctl_help_and_the_man_page_come_from_the_command_line_itself() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_siphon"))
            .args(args)
            .output()
            .expect("run siphon")
    };
    let help = run(&["ctl", "--help"]);
    assert!(help.status.success(), "{}", report(&help));
    for verb in [
        "gateways",
        "drain",
        "set",
        "reload",
        "registrations",
        "unban",
    ] {
        assert!(stdout(&help).contains(verb), "{verb}: {}", stdout(&help));
    }
    let page = run(&["man"]);
    assert!(page.status.success(), "{}", report(&page));
    let page = stdout(&page);
    assert!(page.starts_with(".TH SIPHON 1"), "{page}");
    assert!(page.contains("\\fBsiphon ctl reload\\fR"), "{page}");
    assert!(
        page.contains("\\fBsiphon ctl set\\fR \\fIGROUP\\fR \\fIURI\\fR"),
        "{page}"
    );
}

#[test]
fn ctl_registrations_lists_the_aors_a_registrar_holds() {
    let admin = common::free_port();
    let config = format!(
        "listen:\n  udp: [\"127.0.0.1:@PORT@\"]\ndomain:\n  local: [\"example.com\"]\nscript:\n  path: \"script.py\"\nadmin: {{listen: \"127.0.0.1:{admin}\"}}\nlog: {{level: info, format: pretty}}\n"
    );
    let registrar = common::Siphon::start(&config, &common::example_script("proxy.py"));
    let phone = common::UdpPeer::bind();
    for user in ["alice", "bob"] {
        let register = common::RawRequest::new(
            "REGISTER",
            &format!("sip:{user}@example.com"),
            common::Transport::Udp,
            phone.local_addr(),
        );
        phone.send_to(register.render().as_bytes(), registrar.addr());
        let answer = phone.recv_final(Duration::from_secs(2), &mut Vec::new());
        assert_eq!(
            answer.as_deref().and_then(common::status_code),
            Some(200),
            "{answer:?}"
        );
    }
    let url = format!("http://127.0.0.1:{admin}");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_siphon"))
            .args(["ctl", "--url", &url])
            .args(args)
            .output()
            .expect("run siphon ctl")
    };
    let output = run(&["registrations"]);
    assert!(output.status.success(), "{}", report(&output));
    let lines: Vec<String> = stdout(&output).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[0].starts_with("AOR"), "{lines:?}");
    assert!(lines[1].starts_with("sip:alice@example.com") && lines[1].ends_with('1'));
    assert!(lines[2].starts_with("sip:bob@example.com"), "{lines:?}");
    let output = run(&["--json", "registrations"]);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(json["total"], 2);
    let output = run(&["registrations", "sip:alice@example.com"]);
    assert!(
        stdout(&output).contains(&format!("sip:tester@{}", phone.local_addr())),
        "{}",
        report(&output)
    );
}
