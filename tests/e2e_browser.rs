//! A real browser behind the LB: headless Chromium runs JsSIP (npm, pinned
//! in `tests/browser/package.json`) from a page this test serves. The phone
//! registers over WSS (a certificate the test makes) through the LB running
//! the seed's `lb.py` to a siphon backend running `scripts/proxy.py`; sipp
//! calls it through the LB and it answers; then it calls a sipp UAS.
//!
//! The registrar's INVITE reaches the browser only by the Path token the LB
//! put in the REGISTER: its Request-URI is the browser's `.invalid` Contact.
//!
//! Skipped, with a message, when Chromium or the JsSIP bundle is missing:
//! `apt-get install chromium`, then `npm ci --prefix tests/browser && npm run
//! --prefix tests/browser build`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::tls::TestCa;
use common::{free_port, metric, Siphon, SippSpec, Transport};

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Chromium's binary: `$CHROMIUM`, else the first of the usual names on PATH.
fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| {
            ["chromium", "chromium-browser", "google-chrome"].map(|name| dir.join(name))
        })
        .find(|candidate| candidate.is_file())
}

/// What keeps the test from running here, if anything.
fn missing() -> Option<String> {
    if chromium().is_none() {
        return Some(
            "Chromium is not installed (apt-get install chromium, or set CHROMIUM)".into(),
        );
    }
    if !browser_dir().join("jssip.bundle.js").is_file() {
        return Some(
            "the JsSIP bundle is missing (npm ci --prefix tests/browser && npm run --prefix tests/browser build)"
                .into(),
        );
    }
    None
}

/// One step the page reported: `{"event": ..., "detail": ...}`.
#[derive(Debug, Clone)]
struct PageEvent {
    event: String,
    detail: String,
}

/// Serves the page and the JsSIP bundle over HTTP on loopback, and passes
/// on what the page POSTs to /event.
struct PageServer {
    addr: SocketAddr,
    events: mpsc::Receiver<PageEvent>,
}

impl PageServer {
    fn start() -> PageServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the page server");
        let addr = listener.local_addr().unwrap();
        let (sender, events) = mpsc::channel();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let sender = sender.clone();
                thread::spawn(move || serve(stream, &sender));
            }
        });
        PageServer { addr, events }
    }

    /// Waits for EVENT, keeping every event seen on the way in SEEN.
    fn wait_for(&self, event: &str, timeout: Duration, seen: &mut Vec<PageEvent>) -> PageEvent {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(got) => {
                    seen.push(got.clone());
                    if got.event == event {
                        return got;
                    }
                    assert!(
                        !got.event.ends_with("failed") && got.event != "error",
                        "the page reported {got:?}; so far {seen:?}"
                    );
                }
                Err(_) => panic!("no {event} from the page within {timeout:?}; got {seen:?}"),
            }
        }
    }
}

fn serve(stream: TcpStream, events: &mpsc::Sender<PageEvent>) {
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let path = request_line.split(' ').nth(1).unwrap_or("/");
    let path = path.split('?').next().unwrap_or(path);
    let (status, kind, content) = match path {
        "/event" => {
            let text = String::from_utf8_lossy(&body);
            let field = |name: &str| {
                let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                value[name].as_str().unwrap_or_default().to_string()
            };
            let _ = events.send(PageEvent {
                event: field("event"),
                detail: field("detail"),
            });
            ("204 No Content", "text/plain", Vec::new())
        }
        "/phone.html" | "/jssip.bundle.js" => {
            let kind = match path.ends_with(".js") {
                true => "text/javascript",
                false => "text/html; charset=utf-8",
            };
            let file = browser_dir().join(&path[1..]);
            ("200 OK", kind, std::fs::read(file).unwrap_or_default())
        }
        _ => ("404 Not Found", "text/plain", Vec::new()),
    };
    let mut stream = reader.into_inner();
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        content.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&content);
}

/// Headless Chromium on URL; killed on drop.
struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn open(url: &str, spki_hash: &str, log: &Path) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(log).unwrap();
        let child = Command::new(chromium().expect("chromium"))
            .args([
                "--headless=new",
                "--no-sandbox", // CI runs as root
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                // Trust the LB's certificate, and only it.
                &format!("--ignore-certificate-errors-spki-list={spki_hash}"),
                // Nothing leaves loopback: no name resolves, no background
                // service calls home.
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-domain-reliability",
                "--no-pings",
                "--enable-logging=stderr",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start chromium");
        Browser {
            child,
            _profile: profile,
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The base64 SHA-256 of a certificate's public key, as
/// `--ignore-certificate-errors-spki-list` wants it.
fn spki_hash(cert: &Path) -> String {
    let script = format!(
        "openssl x509 -in '{}' -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64",
        cert.display()
    );
    let out = Command::new("sh")
        .args(["-c", &script])
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The backend trusts its front LB (as `config/backend.yaml` does), so
/// proxy.py, with no `auth:`, relays the browser's call to another domain.
const BACKEND: &str = r#"listen:
  udp: ["127.0.0.1:@PORT@"]
domain:
  local: ["webrtc.test"]
script:
  path: "script.py"
security:
  trusted: ["127.0.0.1/32"]
registrar:
  backend: memory
log: {level: info, format: pretty}
"#;

const LB: &str = r#"listen:
  udp: ["127.0.0.1:@PORT@"]
  wss: [{address: "127.0.0.1:@WSS@", cert: "@CERT@", key: "@KEY@", allowed_origins: ["@ORIGIN@"]}]
script:
  path: "script.py"
gateway:
  groups:
    - name: "backends"
      algorithm: hash
      destinations:
        - uri: "sip:127.0.0.1:@BACKEND@"
admin: {listen: "127.0.0.1:@ADMIN@"}
log: {level: info, format: pretty}
"#;

#[test]
fn a_browser_registers_through_the_lb_then_answers_a_call_and_places_one() {
    if let Some(why) = missing() {
        eprintln!("SKIPPED a_browser_registers_through_the_lb...: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let cert = ca.issue(dir.path(), "lb", &["127.0.0.1"]);
    let pages = PageServer::start();
    let origin = format!("http://{}", pages.addr);

    let backend = Siphon::start(BACKEND, &common::example_script("proxy.py"));
    let (wss, admin) = (free_port(), free_port());
    let lb = Siphon::start(
        &LB.replace("@WSS@", &wss.to_string())
            .replace("@CERT@", &cert.cert.display().to_string())
            .replace("@KEY@", &cert.key.display().to_string())
            .replace("@ORIGIN@", &origin)
            .replace("@BACKEND@", &backend.port.to_string())
            .replace("@ADMIN@", &admin.to_string()),
        &common::gateway::seed_lb_script(),
    );
    // The callee of the browser's own call.
    let callee = SippSpec::new("callee", "webrtc_uas.xml", Transport::Udp)
        .timeout_secs(60)
        .trace_messages()
        .spawn(dir.path());

    let url = format!(
        "{origin}/phone.html?wss=wss://127.0.0.1:{wss}&uri=sip:alice@webrtc.test&call=sip:echo@{}",
        callee.addr()
    );
    let _browser = Browser::open(
        &url,
        &spki_hash(&cert.cert),
        &dir.path().join("chromium.log"),
    );
    let mut seen = Vec::new();
    let registered = pages.wait_for("registered", Duration::from_secs(30), &mut seen);
    assert_eq!(registered.detail, "200");
    let admin = SocketAddr::from(([127, 0, 0, 1], admin));
    assert_eq!(
        metric(admin, "siphon_connections", "transport=\"wss\""),
        1.0,
        "the browser's one connection"
    );

    // sipp calls alice through the LB; the backend's INVITE comes back
    // through the LB (the binding's Path) and over the browser's WSS.
    let caller = SippSpec::new("caller", "webrtc_uac.xml", Transport::Udp)
        .target(lb.addr())
        .key("domain", "webrtc.test")
        .args(&["-s", "alice"])
        .timeout_secs(40)
        .trace_messages()
        .spawn(dir.path());
    let incoming = pages.wait_for("incoming", Duration::from_secs(20), &mut seen);
    assert!(
        incoming.detail.contains(".invalid"),
        "the Request-URI is the browser's Contact: {incoming:?}"
    );
    pages.wait_for("incoming-confirmed", Duration::from_secs(20), &mut seen);
    let ended = pages.wait_for("incoming-ended", Duration::from_secs(20), &mut seen);
    assert!(
        ended.detail.starts_with("remote"),
        "sipp hung up: {ended:?}"
    );
    let caller = caller.wait();
    caller.assert_all_succeeded();
    // The LB's core carried the backend's INVITE over the flow: lb.py saw
    // only sipp's (it logs each new request it balances).
    let balanced = lb.log_lines("LB INVITE");
    assert_eq!(balanced.len(), 1, "{balanced:?}");
    assert!(
        balanced[0].contains("sip:alice@webrtc.test"),
        "{balanced:?}"
    );

    // The browser calls out through the LB and the backend, and hangs up.
    pages.wait_for("outgoing-confirmed", Duration::from_secs(20), &mut seen);
    let ended = pages.wait_for("outgoing-ended", Duration::from_secs(20), &mut seen);
    assert!(
        ended.detail.starts_with("local"),
        "the browser hung up: {ended:?}"
    );
    let callee = callee.wait();
    callee.assert_all_succeeded();
    let invite = callee
        .received_messages()
        .into_iter()
        .find(|m| m.starts_with("INVITE"))
        .expect("the browser's INVITE");
    // Over the LB's WSS listener first, then the LB's UDP side.
    let via = common::header_values(&invite, "Via");
    assert!(via.iter().any(|v| v.contains("SIP/2.0/WSS")), "{via:?}");
    drop(lb);
    drop(backend);
}
