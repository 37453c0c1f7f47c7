//! Harness for the end-to-end tests: free ports, a `siphon` daemon in a temp
//! directory, `sipp` peers, and a raw SIP client for crafted messages.
//!
//! Every process started here is killed when its handle is dropped, so a
//! failing or panicking test leaves nothing behind. Tests run in parallel
//! under nextest (one process per test), so nothing here uses fixed ports.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashSet;
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub mod baresip;
pub mod calls;
pub mod dns;
pub mod gateway;
pub mod netns;
pub mod redis;
pub mod tls;

/// Loopback address every test binds and targets.
pub const LOCALHOST: &str = "127.0.0.1";

/// How long `Siphon::start` waits for the `siphon ready` log line.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The log line the daemon prints once listeners are bound and the script loaded.
pub const READY_LINE: &str = "siphon ready";

// ---------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------

/// Ports already handed out in this process, so two helpers in one test never
/// get the same one even if the kernel reuses it.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A port free for both UDP and TCP on 127.0.0.1 right now.
///
/// The kernel picks a free UDP port; we keep it only if TCP can bind it too
/// (the daemon listens on both with the same port). Other test processes get
/// their own kernel-chosen ports, so parallel tests do not collide.
pub fn free_port() -> u16 {
    for _ in 0..200 {
        let Ok(udp) = UdpSocket::bind((LOCALHOST, 0)) else {
            continue;
        };
        let Ok(addr) = udp.local_addr() else {
            continue;
        };
        let port = addr.port();
        if TcpListener::bind((LOCALHOST, port)).is_err() {
            continue;
        }
        let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if guard.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
    panic!("no free UDP+TCP port found on {LOCALHOST}");
}

/// A token unique within this test run, for Call-IDs, tags and branches.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}{}x{nanos:x}x{n}", std::process::id())
}

/// Directory holding the sipp scenarios (`tests/sipp`).
pub fn scenario_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sipp")
}

/// The example scripts shipped with the crate (`scripts/`).
pub fn example_script(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Send SIGNAL (a name such as `TERM`, `HUP`, `KILL`) to a process. Uses the
/// `kill` utility so the tests need no libc binding.
pub fn send_signal(pid: u32, signal: &str) -> bool {
    Command::new("kill")
        .arg("-s")
        .arg(signal)
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Wait up to TIMEOUT for CHILD to exit.
pub fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => return None,
        }
    }
}

/// The last N lines of TEXT.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------
// The daemon
// ---------------------------------------------------------------------------

/// A config template for the proxy tests. `@PORT@` becomes the daemon's port
/// (UDP and TCP), `@LEVEL@` the log level. Timers are short so the timeout
/// tests finish quickly: T1 50 ms gives Timer B = 64*T1 = 3.2 s. The
/// callers (sipp on 127.0.0.1) are trusted peers, so proxy.py relays their
/// calls to the callee's address without asking them to authenticate.
pub const PROXY_CONFIG: &str = r#"listen:
  udp: ["127.0.0.1:@PORT@"]
  tcp: ["127.0.0.1:@PORT@"]
domain:
  local: ["127.0.0.1", "localhost"]
script:
  path: "script.py"
security:
  trusted: ["127.0.0.1/32"]
transaction:
  t1_ms: 50
  t2_ms: 4000
  t4_ms: 5000
  timer_c_secs: 3
log:
  level: @LEVEL@
  format: pretty
"#;

/// `PROXY_CONFIG` with the given log level (load tests use `info`).
pub fn proxy_config(level: &str) -> String {
    PROXY_CONFIG.replace("@LEVEL@", level)
}

/// A routing script that answers every request 200 itself.
pub const ANSWER_200: &str =
    "from siphon import proxy\n\n@proxy.on_request\ndef route(request):\n    request.reply(200)\n";

/// Every peer of these tests lives on loopback, which `security.relay_to`
/// refuses by default (a front proxy must not relay into its own host). A
/// config that says nothing of `relay_to` gets loopback allowed, as an
/// operator allows their own network; the tests of the policy set it.
pub fn allow_loopback_relays(config: &str) -> String {
    if config.contains("relay_to") {
        return config.to_string();
    }
    let allow = "  relay_to:\n    allow: [\"127.0.0.0/8\", \"::1\"]\n";
    match config.find("\nsecurity:\n") {
        Some(at) => {
            let after = at + "\nsecurity:\n".len();
            format!("{}{allow}{}", &config[..after], &config[after..])
        }
        None => format!("{}\nsecurity:\n{allow}", config.trim_end()),
    }
}

/// A running `siphon` daemon in its own temp directory (config, script, log).
/// Dropping it sends SIGTERM, then SIGKILL after 3 s; if the test is
/// panicking the log tail is printed to help diagnose it.
pub struct Siphon {
    child: Child,
    /// Taken (kept on disk) when the test fails, for post-mortem reading.
    dir: Option<TempDir>,
    /// The UDP and TCP port the daemon listens on.
    pub port: u16,
}

impl Siphon {
    /// Write `siphon.yaml` (from TEMPLATE, `@PORT@` replaced) and `script.py`
    /// into a temp dir, start the daemon and wait for `siphon ready`.
    /// Panics with the log tail if it does not become ready within 10 s.
    pub fn start(yaml_template: &str, script_text: &str) -> Siphon {
        match Siphon::try_start(yaml_template, script_text) {
            Ok(siphon) => siphon,
            Err(message) => panic!("{message}"),
        }
    }

    /// Like `start`, but returns the failure (with the log tail) instead of
    /// panicking.
    pub fn try_start(yaml_template: &str, script_text: &str) -> Result<Siphon, String> {
        Siphon::try_start_in(None, yaml_template, script_text)
    }

    /// Like `start`, inside network namespace NS (see `netns.rs`).
    pub fn start_in_netns(ns: &str, yaml_template: &str, script_text: &str) -> Siphon {
        match Siphon::try_start_in(Some(ns), yaml_template, script_text) {
            Ok(siphon) => siphon,
            Err(message) => panic!("{message}"),
        }
    }

    fn try_start_in(
        netns: Option<&str>,
        yaml_template: &str,
        script_text: &str,
    ) -> Result<Siphon, String> {
        let dir = tempfile::Builder::new()
            .prefix("siphon-e2e-")
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        let port = free_port();
        let config = allow_loopback_relays(&yaml_template.replace("@PORT@", &port.to_string()));
        fs::write(dir.path().join("siphon.yaml"), config).map_err(|e| e.to_string())?;
        fs::write(dir.path().join("script.py"), script_text).map_err(|e| e.to_string())?;
        let log = fs::File::create(dir.path().join("siphon.log")).map_err(|e| e.to_string())?;
        let mut command = match netns {
            Some(ns) => {
                // `ip netns exec` execs the binary: the pid is siphon's.
                let mut command = Command::new("ip");
                command.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_siphon")]);
                command
            }
            None => Command::new(env!("CARGO_BIN_EXE_siphon")),
        };
        let child = command
            .arg("--config")
            .arg(dir.path().join("siphon.yaml"))
            .current_dir(dir.path())
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG") // the config level applies: `siphon ready` is info
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", env!("CARGO_BIN_EXE_siphon")))?;
        let mut siphon = Siphon {
            child,
            dir: Some(dir),
            port,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if siphon.log().contains(READY_LINE) {
                return Ok(siphon);
            }
            if let Ok(Some(status)) = siphon.child.try_wait() {
                return Err(format!(
                    "siphon exited before ready ({status}); log tail:\n{}",
                    tail(&siphon.log(), 40)
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "siphon not ready within {READY_TIMEOUT:?}; log tail:\n{}",
                    tail(&siphon.log(), 40)
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Address of the daemon's UDP and TCP listeners.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The temp directory holding config, script and log.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new("."), |d| d.path())
    }

    /// The whole log so far (stderr of the daemon).
    pub fn log(&self) -> String {
        fs::read(self.dir().join("siphon.log"))
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// Log lines containing NEEDLE.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|line| line.contains(needle))
            .map(str::to_owned)
            .collect()
    }

    /// Poll the log until PREDICATE holds for some line, up to TIMEOUT.
    pub fn wait_for_log_line(&self, timeout: Duration, predicate: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().lines().any(&predicate) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Poll the log until it contains NEEDLE, up to TIMEOUT.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        self.wait_for_log_line(timeout, |line| line.contains(needle))
    }

    /// The last N log lines, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log(), lines)
    }

    /// Overwrite the routing script (take effect after `signal("HUP")`).
    pub fn replace_script(&self, script_text: &str) {
        let path = self.dir().join("script.py");
        fs::write(&path, script_text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// Overwrite the config (`@PORT@` replaced as at start; takes effect
    /// after `signal("HUP")` or `POST /admin/reload`).
    pub fn replace_config(&self, yaml_template: &str) {
        let config =
            allow_loopback_relays(&yaml_template.replace("@PORT@", &self.port.to_string()));
        let path = self.dir().join("siphon.yaml");
        fs::write(&path, config).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// Send a signal by name (`HUP`, `TERM`...).
    pub fn signal(&self, signal: &str) -> bool {
        send_signal(self.child.id(), signal)
    }

    /// Whether the daemon is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Siphon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            send_signal(self.child.id(), "TERM");
            if wait_with_timeout(&mut self.child, Duration::from_secs(3)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        if thread::panicking() {
            eprintln!("---- siphon log tail ({}) ----", self.dir().display());
            eprintln!("{}", self.log_tail(60));
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!("---- siphon files kept in {} ----", kept.display());
            }
        }
    }
}

/// Result of `siphon --check`: exit code and everything it printed.
pub struct CheckOutcome {
    pub code: Option<i32>,
    pub output: String,
}

/// Run `siphon --check --config <dir>/siphon.yaml` on the given files (a
/// fresh temp dir; `@PORT@` replaced by a free port).
pub fn run_check(yaml_template: &str, script_text: &str) -> CheckOutcome {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = yaml_template.replace("@PORT@", &free_port().to_string());
    fs::write(dir.path().join("siphon.yaml"), config).expect("write config");
    fs::write(dir.path().join("script.py"), script_text).expect("write script");
    let mut child = Command::new(env!("CARGO_BIN_EXE_siphon"))
        .arg("--check")
        .arg("--config")
        .arg(dir.path().join("siphon.yaml"))
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG") // the config level applies: `siphon ready` is info
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn siphon --check");
    let status = wait_with_timeout(&mut child, Duration::from_secs(20));
    if status.is_none() {
        let _ = child.kill();
    }
    let output = child.wait_with_output().expect("collect --check output");
    CheckOutcome {
        code: status.and_then(|s| s.code()),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

// ---------------------------------------------------------------------------
// sipp
// ---------------------------------------------------------------------------

/// SIP transport for sipp and the raw clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    /// sipp's `-t` value: one socket for all calls.
    fn sipp_mode(self) -> &'static str {
        match self {
            Transport::Udp => "u1",
            Transport::Tcp => "t1",
        }
    }

    /// The URI `transport=` parameter value.
    pub fn param(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// What to run: a scenario file from `tests/sipp`, its role and limits.
pub struct SippSpec {
    name: String,
    scenario: String,
    transport: Transport,
    port: u16,
    calls: u32,
    rate: u32,
    timeout_secs: u32,
    target: Option<SocketAddr>,
    keys: Vec<(String, String)>,
    trace_messages: bool,
    inf: Option<PathBuf>,
    /// Run inside this network namespace.
    netns: Option<String>,
    /// Bind here instead of 127.0.0.1.
    local_ip: Option<String>,
    /// More command-line arguments (`-au`, `-ap`, `-s`, ...).
    extra: Vec<String>,
}

impl SippSpec {
    /// A sipp instance called NAME (used for its trace file names) running
    /// SCENARIO (file name in `tests/sipp`) on a fresh port.
    pub fn new(name: &str, scenario: &str, transport: Transport) -> SippSpec {
        SippSpec {
            name: name.to_owned(),
            scenario: scenario.to_owned(),
            transport,
            port: free_port(),
            calls: 1,
            rate: 10,
            timeout_secs: 30,
            target: None,
            keys: vec![("tp".to_owned(), transport.param().to_owned())],
            trace_messages: false,
            inf: None,
            netns: None,
            local_ip: None,
            extra: Vec::new(),
        }
    }

    /// Stop after N calls (`-m`).
    pub fn calls(mut self, n: u32) -> SippSpec {
        self.calls = n;
        self
    }

    /// Calls per second (`-r`), UAC only.
    pub fn rate(mut self, calls_per_second: u32) -> SippSpec {
        self.rate = calls_per_second;
        self
    }

    /// Global timeout (`-timeout` with `-timeout_error`), so sipp always ends.
    pub fn timeout_secs(mut self, secs: u32) -> SippSpec {
        self.timeout_secs = secs;
        self
    }

    /// Where a UAC sends its requests (the proxy).
    pub fn target(mut self, addr: SocketAddr) -> SippSpec {
        self.target = Some(addr);
        self
    }

    /// Listen on PORT instead of a fresh one (a backend restarted in place).
    pub fn port(mut self, port: u16) -> SippSpec {
        self.port = port;
        self
    }

    /// The callee a UAC addresses in its Request-URI (`-key uas`).
    pub fn callee(self, addr: SocketAddr) -> SippSpec {
        self.key("uas", &addr.to_string())
    }

    /// A scenario keyword (`-key NAME VALUE`).
    pub fn key(mut self, name: &str, value: &str) -> SippSpec {
        self.keys.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Run in network namespace NS, bound to LOCAL_IP (see `netns.rs`).
    pub fn in_netns(mut self, ns: &str, local_ip: &str) -> SippSpec {
        self.netns = Some(ns.to_owned());
        self.local_ip(local_ip)
    }

    /// Bind to LOCAL_IP (`::1`, say) instead of 127.0.0.1.
    pub fn local_ip(mut self, local_ip: &str) -> SippSpec {
        self.local_ip = Some(local_ip.to_owned());
        self
    }

    /// Call fields from a CSV file (`-inf`).
    pub fn inf(mut self, csv: &Path) -> SippSpec {
        self.inf = Some(csv.to_owned());
        self
    }

    /// Record every message sent and received (`-trace_msg`).
    /// Passes ARGS to sipp as they are.
    pub fn args(mut self, args: &[&str]) -> SippSpec {
        self.extra.extend(args.iter().map(|a| a.to_string()));
        self
    }

    pub fn trace_messages(mut self) -> SippSpec {
        self.trace_messages = true;
        self
    }

    /// The address this instance listens on.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Start sipp in the background; its traces go to DIR.
    pub fn spawn(self, dir: &Path) -> Sipp {
        let file = |suffix: &str| dir.join(format!("{}_{suffix}", self.name));
        let scenario = scenario_dir().join(&self.scenario);
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns, "sipp"]);
                cmd
            }
            None => Command::new("sipp"),
        };
        if let Some(target) = self.target {
            cmd.arg(target.to_string());
        }
        let local_ip = self.local_ip.as_deref().unwrap_or(LOCALHOST);
        cmd.arg("-sf")
            .arg(&scenario)
            .args(["-i", local_ip, "-p", &self.port.to_string()])
            .args(["-t", self.transport.sipp_mode()])
            .args(["-m", &self.calls.to_string()])
            .args(["-r", &self.rate.to_string()])
            .args([
                "-timeout",
                &format!("{}s", self.timeout_secs),
                "-timeout_error",
            ])
            .arg("-nostdin")
            .args(["-trace_err", "-error_file"])
            .arg(file("errors.log"))
            .args(["-trace_stat", "-fd", "1", "-stf"])
            .arg(file("stats.csv"))
            .args(["-trace_screen", "-screen_file"])
            .arg(file("screen.log"))
            .args(["-trace_logs", "-log_file"])
            .arg(file("actions.log"));
        if self.trace_messages {
            cmd.args(["-trace_msg", "-message_file"])
                .arg(file("messages.log"));
        }
        for (name, value) in &self.keys {
            cmd.args(["-key", name, value]);
        }
        if let Some(csv) = &self.inf {
            cmd.arg("-inf").arg(csv);
        }
        cmd.args(&self.extra);
        let stderr = fs::File::create(file("stderr.log")).expect("create sipp stderr log");
        let child = cmd
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn sipp (is sip-tester installed?): {e}"));
        if self.target.is_none() && self.local_ip.is_none() {
            // A callee: wait until it listens, so the first call finds it.
            wait_until_bound(self.port, self.transport, Duration::from_secs(5));
        } else if self.target.is_none() {
            // On another address (or in a namespace) the probe above cannot
            // see its port.
            thread::sleep(Duration::from_millis(500));
        }
        Sipp {
            child,
            name: self.name,
            dir: dir.to_owned(),
            port: self.port,
            calls: self.calls,
            timeout: Duration::from_secs(u64::from(self.timeout_secs) + 10),
            started: Instant::now(),
        }
    }

    /// Run sipp in the foreground until it exits.
    pub fn run(self, dir: &Path) -> SippOutcome {
        self.spawn(dir).wait()
    }
}

/// Wait until something else holds PORT (our bind attempt fails), up to TIMEOUT.
pub fn wait_until_bound(port: u16, transport: Transport, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let taken = match transport {
            Transport::Udp => UdpSocket::bind((LOCALHOST, port)).is_err(),
            Transport::Tcp => TcpListener::bind((LOCALHOST, port)).is_err(),
        };
        if taken {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A running sipp process; killed on drop.
pub struct Sipp {
    child: Child,
    name: String,
    dir: PathBuf,
    pub port: u16,
    calls: u32,
    timeout: Duration,
    started: Instant,
}

impl Sipp {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Wait for sipp to exit (it always does: `-timeout`), then collect its
    /// exit code, final counters and traces.
    pub fn wait(mut self) -> SippOutcome {
        let status = wait_with_timeout(&mut self.child, self.timeout);
        if status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let elapsed = self.started.elapsed();
        let read = |suffix: &str| {
            fs::read(self.dir.join(format!("{}_{suffix}", self.name)))
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        let stats_csv = read("stats.csv");
        SippOutcome {
            name: self.name.clone(),
            dir: self.dir.clone(),
            exit_code: status.and_then(|s| s.code()),
            expected_calls: self.calls,
            stats: SippStats::parse(&stats_csv),
            elapsed,
            errors: read("errors.log"),
            screen: read("screen.log"),
            stderr: read("stderr.log"),
            messages: read("messages.log"),
        }
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Cumulative counters from the last row of sipp's `-trace_stat` CSV.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SippStats {
    pub outgoing_calls: u64,
    pub incoming_calls: u64,
    pub successful_calls: u64,
    pub failed_calls: u64,
    pub retransmissions: u64,
    /// False when the CSV was missing or unreadable.
    pub found: bool,
}

impl SippStats {
    /// Parse the `;`-separated stats file: a header row, then one row per
    /// dump; the last row holds the final cumulative `(C)` counters.
    pub fn parse(csv: &str) -> SippStats {
        let mut lines = csv.lines().filter(|l| !l.trim().is_empty());
        let Some(header) = lines.next() else {
            return SippStats::default();
        };
        let Some(last) = lines.next_back() else {
            return SippStats::default();
        };
        let names: Vec<&str> = header.split(';').collect();
        let values: Vec<&str> = last.split(';').collect();
        let get = |name: &str| -> u64 {
            names
                .iter()
                .position(|n| *n == name)
                .and_then(|i| values.get(i))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        SippStats {
            outgoing_calls: get("OutgoingCall(C)"),
            incoming_calls: get("IncomingCall(C)"),
            successful_calls: get("SuccessfulCall(C)"),
            failed_calls: get("FailedCall(C)"),
            retransmissions: get("Retransmissions(C)"),
            found: names.contains(&"SuccessfulCall(C)"),
        }
    }
}

/// What a finished sipp run reported.
pub struct SippOutcome {
    pub name: String,
    dir: PathBuf,
    /// sipp's exit code: 0 = every call succeeded, 1 = some failed,
    /// 97/99 = stopped early, None = killed after the timeout.
    pub exit_code: Option<i32>,
    pub expected_calls: u32,
    pub stats: SippStats,
    pub elapsed: Duration,
    pub errors: String,
    pub screen: String,
    pub stderr: String,
    /// The `-trace_msg` log (empty unless `trace_messages()` was set).
    pub messages: String,
}

impl SippOutcome {
    /// The scenario's `<log>` lines (`-trace_logs`).
    pub fn actions_log(&self) -> String {
        fs::read_to_string(self.dir.join(format!("{}_actions.log", self.name))).unwrap_or_default()
    }

    /// A readable account of the run for assertion messages.
    pub fn report(&self) -> String {
        format!(
            "sipp {}: exit {:?} after {:.1?}, {:?}\n-- stderr --\n{}\n-- errors (tail) --\n{}\n-- screen (tail) --\n{}\n-- messages (tail) --\n{}",
            self.name,
            self.exit_code,
            self.elapsed,
            self.stats,
            tail(&self.stderr, 10),
            tail(&self.errors, 60),
            tail(&self.screen, 30),
            tail(&self.messages, 60),
        )
    }

    /// Exit code 0 AND the counters show every expected call succeeded, so a
    /// run that made no calls cannot pass.
    pub fn assert_all_succeeded(&self) {
        if let Some(failure) = self.failure() {
            panic!("{failure}");
        }
    }

    /// Why this run did not fully succeed, or None if every expected call
    /// succeeded (exit code 0, counters complete, no failed call).
    pub fn failure(&self) -> Option<String> {
        let expected = u64::from(self.expected_calls);
        if self.exit_code == Some(0)
            && self.stats.found
            && self.stats.successful_calls == expected
            && self.stats.failed_calls == 0
        {
            return None;
        }
        Some(format!(
            "expected {expected} successful calls and exit code 0\n{}",
            self.report()
        ))
    }

    /// The SIP messages this sipp instance received, in order (from the
    /// `-trace_msg` log).
    pub fn received_messages(&self) -> Vec<String> {
        parse_message_trace(&self.messages, "received")
    }

    /// Every traced message with its time stamp.
    pub fn trace(&self) -> Vec<TracedMessage> {
        parse_trace(&self.messages)
    }

    /// The SIP messages this sipp instance sent.
    pub fn sent_messages(&self) -> Vec<String> {
        parse_message_trace(&self.messages, "sent")
    }
}

/// Assert that every run succeeded; on failure, report ALL of them (the
/// caller's errors often explain themselves only next to the callee's).
pub fn assert_all_succeeded(outcomes: &[&SippOutcome]) {
    let failures: Vec<String> = outcomes.iter().filter_map(|o| o.failure()).collect();
    if !failures.is_empty() {
        let all: Vec<String> = outcomes.iter().map(|o| o.report()).collect();
        panic!(
            "{} sipp run(s) failed:\n{}\n==== all runs ====\n{}",
            failures.len(),
            failures.join("\n"),
            all.join("\n")
        );
    }
}

/// One message from a sipp `-trace_msg` log.
#[derive(Clone, Debug)]
pub struct TracedMessage {
    /// Seconds since midnight (the trace stamps wall-clock time of day).
    pub at_secs: f64,
    /// True for a message sipp received, false for one it sent.
    pub received: bool,
    pub text: String,
}

/// Parse a sipp `-trace_msg` log: blocks start with a dashed separator and a
/// `YYYY-MM-DD HH:MM:SS.micros` stamp, then a banner such as
/// `UDP message received [356] bytes :` or `UDP message sent (313 bytes):`.
pub fn parse_trace(trace: &str) -> Vec<TracedMessage> {
    let separator = "-----------------------------------------------";
    trace
        .split(separator)
        .filter_map(|block| {
            let mut lines = block.lines();
            let stamp = lines.next()?.trim();
            let time = stamp.split_whitespace().nth(1)?;
            let mut parts = time.split(':');
            let hours: f64 = parts.next()?.parse().ok()?;
            let minutes: f64 = parts.next()?.parse().ok()?;
            let seconds: f64 = parts.next()?.parse().ok()?;
            let banner = lines.next()?;
            if !banner.contains("message") {
                return None;
            }
            let received = banner.contains("received");
            let body: Vec<&str> = lines.skip_while(|l| l.trim().is_empty()).collect();
            Some(TracedMessage {
                at_secs: hours * 3600.0 + minutes * 60.0 + seconds,
                received,
                text: body.join("\r\n"),
            })
        })
        .collect()
}

/// The texts of the traced messages received (DIRECTION "received") or sent.
pub fn parse_message_trace(trace: &str, direction: &str) -> Vec<String> {
    let want_received = direction == "received";
    parse_trace(trace)
        .into_iter()
        .filter(|m| m.received == want_received)
        .map(|m| m.text)
        .collect()
}

// ---------------------------------------------------------------------------
// Raw SIP messages
// ---------------------------------------------------------------------------

/// The status code of a response, None for a request or garbage.
pub fn status_code(message: &str) -> Option<u16> {
    let first = message.lines().next()?;
    let rest = first.strip_prefix("SIP/2.0 ")?;
    rest.get(..3)?.parse().ok()
}

/// The request method, None for a response.
pub fn method(message: &str) -> Option<&str> {
    let first = message.lines().next()?;
    if first.starts_with("SIP/2.0") {
        return None;
    }
    first.split(' ').next()
}

/// Every value of header NAME (case-insensitive; compact forms not handled,
/// the tests only read headers they wrote or standard long names).
pub fn header_values<'a>(message: &'a str, name: &str) -> Vec<&'a str> {
    message
        .lines()
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .filter_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
        })
        .collect()
}

/// The first value of header NAME.
pub fn header<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    header_values(message, name).into_iter().next()
}

/// Fields for a crafted request. The Via names the client's own address.
pub struct RawRequest {
    pub method: String,
    pub ruri: String,
    pub transport: Transport,
    pub via_addr: SocketAddr,
    pub call_id: String,
    pub branch: String,
    pub from_tag: String,
    pub to_tag: Option<String>,
    pub cseq: u32,
    pub max_forwards: u32,
    pub extra_headers: Vec<(String, String)>,
    pub body: String,
}

impl RawRequest {
    /// A request with fresh Call-ID, branch and tag.
    pub fn new(method: &str, ruri: &str, transport: Transport, via_addr: SocketAddr) -> RawRequest {
        RawRequest {
            method: method.to_owned(),
            ruri: ruri.to_owned(),
            transport,
            via_addr,
            call_id: unique("call"),
            branch: format!("z9hG4bK{}", unique("b")),
            from_tag: unique("t"),
            to_tag: None,
            cseq: 1,
            max_forwards: 70,
            extra_headers: Vec::new(),
            body: String::new(),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> RawRequest {
        self.extra_headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn max_forwards(mut self, hops: u32) -> RawRequest {
        self.max_forwards = hops;
        self
    }

    pub fn body(mut self, body: &str) -> RawRequest {
        self.body = body.to_owned();
        self
    }

    /// The CANCEL of this request (RFC 3261 §9.1: the same branch, Call-ID,
    /// From, To and CSeq number).
    pub fn cancel(&self) -> RawRequest {
        RawRequest {
            method: "CANCEL".to_owned(),
            ruri: self.ruri.clone(),
            transport: self.transport,
            via_addr: self.via_addr,
            call_id: self.call_id.clone(),
            branch: self.branch.clone(),
            from_tag: self.from_tag.clone(),
            to_tag: None,
            cseq: self.cseq,
            max_forwards: self.max_forwards,
            extra_headers: Vec::new(),
            body: String::new(),
        }
    }

    /// The wire form, with a correct Content-Length.
    pub fn render(&self) -> String {
        let transport = match self.transport {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        };
        let to_tag = self
            .to_tag
            .as_ref()
            .map(|t| format!(";tag={t}"))
            .unwrap_or_default();
        let to_uri = self.ruri.split(';').next().unwrap_or(&self.ruri);
        let mut text = format!(
            "{method} {ruri} SIP/2.0\r\n\
             Via: SIP/2.0/{transport} {via};branch={branch};rport\r\n\
             Max-Forwards: {mf}\r\n\
             From: <sip:tester@{via}>;tag={from_tag}\r\n\
             To: <{to_uri}>{to_tag}\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} {method}\r\n\
             Contact: <sip:tester@{via}>\r\n",
            method = self.method,
            ruri = self.ruri,
            via = self.via_addr,
            branch = self.branch,
            mf = self.max_forwards,
            from_tag = self.from_tag,
            call_id = self.call_id,
            cseq = self.cseq,
        );
        for (name, value) in &self.extra_headers {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        text.push_str(&format!("Content-Length: {}\r\n\r\n", self.body.len()));
        text.push_str(&self.body);
        text
    }
}

/// A response to REQUEST (copies Via, From, To, Call-ID, CSeq), as a callee
/// played by a raw socket would send it.
pub fn response_to(request: &str, code: u16, reason: &str) -> String {
    let mut text = format!("SIP/2.0 {code} {reason}\r\n");
    for via in header_values(request, "Via") {
        text.push_str(&format!("Via: {via}\r\n"));
    }
    for name in ["From", "Call-ID", "CSeq"] {
        if let Some(value) = header(request, name) {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    if let Some(to) = header(request, "To") {
        if to.contains(";tag=") || code == 100 {
            text.push_str(&format!("To: {to}\r\n"));
        } else {
            text.push_str(&format!("To: {to};tag={}\r\n", unique("uas")));
        }
    }
    text.push_str("Content-Length: 0\r\n\r\n");
    text
}

// ---------------------------------------------------------------------------
// Raw clients
// ---------------------------------------------------------------------------

/// A UDP socket on 127.0.0.1 that sends crafted datagrams and reads replies.
pub struct UdpPeer {
    pub socket: UdpSocket,
}

impl UdpPeer {
    pub fn bind() -> UdpPeer {
        UdpPeer::bind_ip(LOCALHOST)
    }

    /// A socket on IP (another 127.0.0.x: a second host, or an attacker).
    pub fn bind_ip(ip: &str) -> UdpPeer {
        let socket = UdpSocket::bind((ip, 0)).expect("bind raw UDP client");
        UdpPeer { socket }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.socket.local_addr().expect("local addr")
    }

    pub fn send_to(&self, bytes: &[u8], target: SocketAddr) {
        self.socket.send_to(bytes, target).expect("send datagram");
    }

    /// The next datagram within TIMEOUT, with its sender.
    pub fn recv(&self, timeout: Duration) -> Option<(String, SocketAddr)> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 70_000];
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            if left.is_zero() {
                return None;
            }
            self.socket.set_read_timeout(Some(left)).ok()?;
            match self.socket.recv_from(&mut buf) {
                Ok((n, from)) => {
                    return Some((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return None,
            }
        }
    }

    /// Read datagrams until one satisfies PREDICATE (returned) or TIMEOUT;
    /// everything read along the way is appended to SEEN.
    pub fn recv_until(
        &self,
        timeout: Duration,
        seen: &mut Vec<String>,
        predicate: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let (message, _) = self.recv(left)?;
            seen.push(message.clone());
            if predicate(&message) {
                return Some(message);
            }
        }
    }

    /// Read until a final (>= 200) response arrives.
    pub fn recv_final(&self, timeout: Duration, seen: &mut Vec<String>) -> Option<String> {
        self.recv_until(timeout, seen, |m| status_code(m).is_some_and(|c| c >= 200))
    }
}

/// A TCP connection to the daemon, reading messages framed by Content-Length.
pub struct TcpPeer {
    pub stream: TcpStream,
    buffer: Vec<u8>,
    closed: bool,
}

impl TcpPeer {
    pub fn connect(target: SocketAddr) -> TcpPeer {
        let stream = TcpStream::connect_timeout(&target, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect {target}: {e}"));
        TcpPeer {
            stream,
            buffer: Vec::new(),
            closed: false,
        }
    }

    /// A connection the test accepted (the peer is the daemon).
    pub fn from_stream(stream: TcpStream) -> TcpPeer {
        TcpPeer {
            stream,
            buffer: Vec::new(),
            closed: false,
        }
    }

    /// A connection from LOCAL_IP (another 127.0.0.x: the same client
    /// after it moved networks).
    pub fn connect_from(local_ip: &str, target: SocketAddr) -> TcpPeer {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        let local: SocketAddr = format!("{local_ip}:0").parse().expect("local address");
        socket.bind(&local.into()).expect("bind");
        socket
            .connect_timeout(&target.into(), Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect {target} from {local_ip}: {e}"));
        TcpPeer {
            stream: socket.into(),
            buffer: Vec::new(),
            closed: false,
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().expect("local addr")
    }

    /// Write BYTES; false if the peer already closed the connection.
    pub fn send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).is_ok()
    }

    /// Whether the daemon closed the connection (seen by the last read).
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// The next complete message within TIMEOUT.
    pub fn recv(&mut self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(message) = self.take_message() {
                return Some(message);
            }
            if self.closed {
                return None;
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            if left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left)).ok()?;
            let mut chunk = [0u8; 16384];
            match self.stream.read(&mut chunk) {
                Ok(0) => self.closed = true,
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return None
                }
                Err(_) => self.closed = true,
            }
        }
    }

    /// Read until a final (>= 200) response arrives.
    pub fn recv_final(&mut self, timeout: Duration, seen: &mut Vec<String>) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let message = self.recv(left)?;
            seen.push(message.clone());
            if status_code(&message).is_some_and(|c| c >= 200) {
                return Some(message);
            }
        }
    }

    /// Cut one message off the front of the buffer if it is complete.
    fn take_message(&mut self) -> Option<String> {
        // Skip keep-alive CRLFs between messages.
        while self.buffer.starts_with(b"\r\n") {
            self.buffer.drain(..2);
        }
        let head_end = self.buffer.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let head = String::from_utf8_lossy(&self.buffer[..head_end]).into_owned();
        let body_len = header(&head, "Content-Length")
            .or_else(|| header(&head, "l"))
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        if self.buffer.len() < head_end + body_len {
            return None;
        }
        let message: Vec<u8> = self.buffer.drain(..head_end + body_len).collect();
        Some(String::from_utf8_lossy(&message).into_owned())
    }

    /// Wait up to TIMEOUT for the daemon to close the connection.
    pub fn wait_closed(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.closed {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            if self.recv(left).is_none() && Instant::now() >= deadline {
                break;
            }
        }
        self.closed
    }
}

// ---------------------------------------------------------------------------
// HTTP (the admin API)
// ---------------------------------------------------------------------------

/// One HTTP/1.1 exchange (`Connection: close`): the status code and the body.
pub fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("set read timeout");
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .unwrap_or_else(|e| panic!("send {method} {path}: {e}"));
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {path}: no HTTP header in {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: bad status line in {head:?}"));
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    (status, body)
}

/// Decodes a chunked HTTP body.
fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            break;
        }
        body.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    body
}

/// The sum of the `/metrics` samples whose line starts with NAME and
/// contains LABEL (0 when there are none).
pub fn metric(admin: SocketAddr, name: &str, label: &str) -> f64 {
    let (_, text) = http(admin, "GET", "/metrics", None);
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path, None)
}

/// GET a JSON document; panics unless the answer is 200 and JSON.
pub fn get_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = get(addr, path);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"))
}
