//! End to end: siphon as a service. systemd's readiness protocol on a
//! test `NOTIFY_SOCKET` (READY=1 once it serves, RELOADING=1 and READY=1
//! around a SIGHUP, STOPPING=1 on SIGTERM), journald priorities when
//! stderr is the journal, a closed stderr pipe that costs no call, and the
//! plain messages for a port in use and a port below 1024.

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, status_code, wait_with_timeout, RawRequest, Transport, UdpPeer};

/// proxy.py on a UDP port, at `level`.
fn write_config(dir: &Path, port: u16, level: &str) -> std::path::PathBuf {
    let config = dir.join("siphon.yaml");
    std::fs::write(
        &config,
        format!(
            "listen:\n  udp: [\"127.0.0.1:{port}\"]\ndomain:\n  local: [\"example.com\"]\nscript:\n  path: \"script.py\"\nlog: {{level: {level}, format: pretty}}\n"
        ),
    )
    .unwrap();
    std::fs::write(dir.join("script.py"), common::example_script("proxy.py")).unwrap();
    config
}

fn siphon(config: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_siphon"));
    command
        .arg("--config")
        .arg(config)
        .current_dir(config.parent().unwrap())
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null());
    command
}

/// An OPTIONS to the proxy itself: its status.
fn options(proxy: SocketAddr) -> Option<u16> {
    let peer = UdpPeer::bind();
    let request = RawRequest::new(
        "OPTIONS",
        &format!("sip:{proxy}"),
        Transport::Udp,
        peer.local_addr(),
    );
    peer.send_to(request.render().as_bytes(), proxy);
    peer.recv_final(Duration::from_secs(2), &mut Vec::new())
        .as_deref()
        .and_then(status_code)
}

fn stop(child: &mut Child) -> bool {
    common::send_signal(child.id(), "TERM");
    let stopped = wait_with_timeout(child, Duration::from_secs(10)).is_some();
    if !stopped {
        let _ = child.kill();
    }
    stopped
}

#[test]
fn notify_socket_hears_ready_reloading_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), port, "info");
    let socket_path = dir.path().join("notify.sock");
    let manager = UnixDatagram::bind(&socket_path).unwrap();
    manager
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut child = siphon(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 512];
    let mut next = || {
        let n = manager.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let ready = next();
    assert!(ready.starts_with("READY=1\n"), "{ready}");
    // Ready means serving.
    let proxy = SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(options(proxy), Some(200));

    assert!(common::send_signal(child.id(), "HUP"));
    let reloading = next();
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|v| v.parse().ok())
        .expect("a number");
    assert!(usec > 0);
    assert!(next().starts_with("READY=1\n"));

    common::send_signal(child.id(), "TERM");
    assert!(next().starts_with("STOPPING=1\n"));
    assert!(wait_with_timeout(&mut child, Duration::from_secs(10)).is_some());
}

#[test]
fn under_the_journal_each_line_carries_its_priority_and_no_colour() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), port, "info");
    let log_path = dir.path().join("journal.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let meta = log.metadata().unwrap();
    let mut child = siphon(&config)
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let read = || std::fs::read_to_string(&log_path).unwrap_or_default();
    while !read().contains("siphon ready") {
        assert!(Instant::now() < deadline, "{}", read());
        std::thread::sleep(Duration::from_millis(50));
    }
    // A change that needs a restart is a warning.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("example.com", "example.org")).unwrap();
    common::send_signal(child.id(), "HUP");
    while !read().contains("needs a restart") {
        assert!(Instant::now() < deadline, "{}", read());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(stop(&mut child));
    let text = read();
    assert!(
        !text.contains('\u{1b}'),
        "ANSI colours in the journal:\n{text}"
    );
    for line in text.lines().filter(|l| !l.is_empty()) {
        assert!(
            ["<3>", "<4>", "<6>", "<7>"]
                .iter()
                .any(|p| line.starts_with(p)),
            "a line without its priority: {line}"
        );
    }
    assert!(text
        .lines()
        .any(|l| l.starts_with("<6>") && l.contains("siphon ready")));
    assert!(text
        .lines()
        .any(|l| l.starts_with("<4>") && l.contains("needs a restart")));
}

#[test]
fn with_stderr_a_closed_pipe_the_daemon_still_answers_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // debug: every request writes to the closed pipe.
    let config = write_config(dir.path(), port, "debug");
    let mut child = siphon(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // As `siphon 2>&1 | head -3` does: read a few lines, then close.
    let mut stderr = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(15);
    while !String::from_utf8_lossy(&seen).contains("siphon ready") {
        assert!(Instant::now() < deadline);
        let n = stderr.read(&mut chunk).unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&chunk[..n]);
    }
    drop(stderr);
    drop(child.stdout.take());
    let proxy = SocketAddr::from(([127, 0, 0, 1], port));
    for round in 0..20 {
        assert_eq!(options(proxy), Some(200), "request {round}");
    }
    assert!(common::send_signal(child.id(), "HUP"));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(options(proxy), Some(200), "after a reload");
    assert!(stop(&mut child), "SIGTERM did not stop it");
}

#[test]
fn a_port_in_use_or_below_1024_is_one_plain_error() {
    let dir = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = write_config(dir.path(), free_port(), "info");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!(
            "{text}admin: {{listen: \"{}\"}}\n",
            busy.local_addr().unwrap()
        ),
    )
    .unwrap();
    let output = siphon(&config).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot bind admin.listen"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // A port below 1024 as a user without CAP_NET_BIND_SERVICE.
    let low = write_config(dir.path(), 506, "info");
    let output = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(env!("CARGO_BIN_EXE_siphon"))
        .arg("--config")
        .arg(&low)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot bind UDP 127.0.0.1:506") && stderr.contains("CAP_NET_BIND_SERVICE"),
        "{stderr}"
    );
}

#[test]
fn a_helper_module_beside_the_script_is_imported_and_reloaded_by_sighup() {
    let script = "from siphon import proxy\nimport replies\n\n@proxy.on_request\ndef route(request):\n    request.reply(replies.CODE, replies.REASON)\n";
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), port, "info");
    std::fs::write(dir.path().join("script.py"), script).unwrap();
    let helper = dir.path().join("replies.py");
    std::fs::write(&helper, "CODE = 486\nREASON = \"Busy Here\"\n").unwrap();
    let log_path = dir.path().join("siphon.log");
    let mut child = siphon(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let read = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !read().contains("siphon ready") {
        assert!(Instant::now() < deadline, "{}", read());
        std::thread::sleep(Duration::from_millis(50));
    }
    let proxy = SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(options(proxy), Some(486));
    std::fs::write(&helper, "CODE = 480\nREASON = \"Later\"\n").unwrap();
    assert!(common::send_signal(child.id(), "HUP"));
    while read().matches("script reloaded").count() < 1 {
        assert!(Instant::now() < deadline, "{}", read());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(options(proxy), Some(480), "{}", read());
    assert!(stop(&mut child));
}

#[test]
fn check_finds_a_misspelt_group_and_an_admin_port_shared_with_metrics() {
    let config = "listen:\n  udp: [\"127.0.0.1:@PORT@\"]\nscript:\n  path: \"script.py\"\ngateway:\n  groups:\n    - name: backends\n      destinations: [{uri: \"sip:b1.example.com\", address: \"127.0.0.1:5071\"}]\n";
    let misspelt = "from siphon import proxy, gateway\n\n@proxy.on_request\ndef route(request):\n    d = gateway.select(\"backnds\", key=str(request.to_uri))\n    request.relay(d.uri)\n";
    let outcome = common::run_check(config, misspelt);
    assert_eq!(outcome.code, Some(1), "{}", outcome.output);
    assert!(
        outcome
            .output
            .contains("script.py:5: gateway.select(\"backnds\"): no such gateway group (configured: backends)"),
        "{}",
        outcome.output
    );
    // A group the script makes itself is no mistake.
    let made = misspelt.replace(
        "@proxy.on_request",
        "gateway.add_group(\"backnds\", [{\"uri\": \"sip:x.example.com\", \"address\": \"127.0.0.1:5072\"}])\n\n@proxy.on_request",
    );
    let outcome = common::run_check(config, &made);
    assert_eq!(outcome.code, Some(0), "{}", outcome.output);
    // So is one made under a name computed at run time: nothing to tell.
    let computed = misspelt.replace(
        "@proxy.on_request",
        "for name in (\"eu\", \"backnds\"):\n    gateway.add_group(name, [{\"uri\": \"sip:x.example.com\", \"address\": \"127.0.0.1:5072\"}])\n\n@proxy.on_request",
    );
    let outcome = common::run_check(config, &computed);
    assert_eq!(outcome.code, Some(0), "{}", outcome.output);

    let shared = format!(
        "{config}admin: {{listen: \"127.0.0.1:9123\"}}\nmetrics: {{prometheus: {{listen: \"127.0.0.1:9123\"}}}}\n"
    );
    let outcome = common::run_check(&shared, &common::example_script("lb.py"));
    assert_eq!(outcome.code, Some(1), "{}", outcome.output);
    assert!(
        outcome.output.contains("metrics.prometheus.listen"),
        "{}",
        outcome.output
    );
}

#[test]
fn a_backend_whose_probes_get_404_shows_it_in_the_admin_api_and_ctl() {
    // A "backend" that answers every probe 404 (not its domain).
    let backend = UdpPeer::bind();
    let backend_addr = backend.local_addr();
    let answering = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(8);
        while Instant::now() < deadline {
            if let Some((request, from)) = backend.recv(Duration::from_millis(200)) {
                backend.send_to(
                    common::response_to(&request, 404, "Not Here").as_bytes(),
                    from,
                );
            }
        }
    });
    // "lenient" counts any answer below 500 as alive (the default),
    // "strict" only a 200 (`probe.reply_codes`).
    let group = |name: &str, codes: &str| {
        format!("    - name: {name}\n      probe: {{enabled: true, interval_secs: 1, failure_threshold: 2, timeout_ms: 300{codes}}}\n      destinations: [{{uri: \"sip:b1.example.com\", address: \"{backend_addr}\"}}]\n")
    };
    let admin = free_port();
    let config = format!(
        "listen:\n  udp: [\"127.0.0.1:@PORT@\"]\nscript:\n  path: \"script.py\"\ngateway:\n  groups:\n{}{}admin: {{listen: \"127.0.0.1:{admin}\"}}\nlog: {{level: info, format: pretty}}\n",
        group("lenient", ""),
        group("strict", ", reply_codes: [200]"),
    );
    let lb = common::Siphon::start(&config, &common::example_script("lb.py"));
    let admin = SocketAddr::from(([127, 0, 0, 1], admin));
    let destination_of = |group: usize| {
        let (_, body) = common::http(admin, "GET", "/admin/gateways", None);
        let listing: serde_json::Value = serde_json::from_str(&body).unwrap();
        listing["groups"][group]["destinations"][0].clone()
    };
    let deadline = Instant::now() + Duration::from_secs(6);
    while destination_of(1)["healthy"] != false || destination_of(0)["last_probe_reply"] != 404 {
        assert!(Instant::now() < deadline, "{}", destination_of(1));
        std::thread::sleep(Duration::from_millis(200));
    }
    let lenient = destination_of(0);
    assert_eq!(lenient["healthy"], true, "{lenient}");
    let strict = destination_of(1);
    assert_eq!(strict["last_probe_failure"], "status 404", "{strict}");
    assert_eq!(strict["last_probe_reply"], 404, "{strict}");
    let output = Command::new(env!("CARGO_BIN_EXE_siphon"))
        .args(["ctl", "--url", &format!("http://{admin}"), "gateways"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.contains("probe answered 404"), "{table}");
    assert!(table.contains("(last: status 404)"), "{table}");
    let warned = lb
        .log()
        .lines()
        .any(|l| l.contains("WARN") && l.contains("gateway destination up -> down"));
    assert!(warned, "a destination lost is a warning:\n{}", lb.log());
    drop(lb);
    answering.join().unwrap();
}
