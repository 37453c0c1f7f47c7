//! End to end: what operators run and watch. The HA demo's `validate.sh`, the
//! Prometheus `/metrics` values after real traffic, every admin API endpoint
//! (and its JSON errors), the periodic actor metrics log lines, and the
//! graceful drain on SIGTERM.
//!
//! Backends are sipp UAS instances (`gw_uas.xml` answers the LB's OPTIONS
//! probes and calls); HTTP is spoken over a plain `TcpStream`, so the tests
//! need no HTTP client crate.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    free_port, get, get_json, header, header_values, http, status_code, tail, unique, RawRequest,
    Siphon, SippSpec, Transport, UdpPeer,
};

// ---------------------------------------------------------------------------
// Helpers: HTTP, Prometheus text, polling
// ---------------------------------------------------------------------------

/// The value of the sample NAME whose labels are exactly LABELS (any order),
/// from a Prometheus text exposition.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    wanted.sort();
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((metric, rest)) => (metric, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let mut got: Vec<String> = if label_text.is_empty() {
                Vec::new()
            } else {
                label_text.split(',').map(str::to_owned).collect()
            };
            got.sort();
            (got == wanted).then(|| value.parse().ok())?
        })
}

/// Like `sample`, but panics with the exposition when the series is missing.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(text, name, labels)
        .unwrap_or_else(|| panic!("no sample {name}{labels:?} in /metrics:\n{text}"))
}

/// Poll CHECK every 100 ms until it holds or TIMEOUT passes.
fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The `healthy` flag of destination URI in the admin API's gateway listing.
fn destination_field(admin: SocketAddr, uri: &str, field: &str) -> Option<serde_json::Value> {
    let listing = get_json(admin, "/admin/gateways");
    listing["groups"]
        .as_array()?
        .iter()
        .flat_map(|group| {
            group["destinations"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .find(|dest| dest["uri"] == uri)
        .map(|dest| dest[field].clone())
}

fn work_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("siphon-ops-")
        .tempdir()
        .expect("tempdir")
}

/// Send one request to SIPHON from a fresh UDP socket; its final response.
fn ask(siphon: &Siphon, build: impl FnOnce(SocketAddr) -> RawRequest) -> Option<String> {
    let peer = UdpPeer::bind();
    let request = build(peer.local_addr());
    peer.send_to(request.render().as_bytes(), siphon.addr());
    let mut seen = Vec::new();
    peer.recv_final(Duration::from_secs(5), &mut seen)
}

/// A REGISTER of `sip:USER@127.0.0.1` (Contact: the sending socket); the
/// final status code.
fn register(siphon: &Siphon, user: &str) -> Option<u16> {
    let answer = ask(siphon, |via| {
        RawRequest::new(
            "REGISTER",
            &format!("sip:{user}@127.0.0.1"),
            Transport::Udp,
            via,
        )
        .header("Expires", "600")
    });
    answer.as_deref().and_then(status_code)
}

// ---------------------------------------------------------------------------
// (a) the HA and cluster demos
// ---------------------------------------------------------------------------

/// Runs `deploy/DEMO/validate.sh` against this build within `limit` and
/// checks that all its `assertions` passed. This is how `.ci/run` (through
/// the test suite) runs the demos. On a failure the script keeps its logs
/// and prints where.
fn demo_passes(demo: &str, assertions: usize, limit: Duration) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("deploy/{demo}/validate.sh"));
    let dir = work_dir();
    let out_path = dir.path().join("validate.out");
    let out = std::fs::File::create(&out_path).expect("create validate.out");
    let err = out.try_clone().expect("clone validate.out");
    let mut child = Command::new("bash")
        .arg(&script)
        .env("SIPHON_BIN", env!("CARGO_BIN_EXE_siphon"))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            // validate.sh stops its processes on TERM (trap EXIT), a few
            // seconds each at most: give it time before the KILL.
            common::send_signal(child.id(), "TERM");
            let grace = Instant::now() + Duration::from_secs(30);
            while Instant::now() < grace && matches!(child.try_wait(), Ok(None)) {
                thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(100));
    };
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "{demo}/validate.sh failed:\n{output}"
    );
    assert!(
        output.contains(&format!("ALL {assertions} ASSERTIONS PASSED")),
        "{demo}/validate.sh output:\n{output}"
    );
    assert_eq!(output.matches("PASS ").count(), assertions, "{output}");
    assert!(!output.contains("FAIL "), "{output}");
}

/// The HA demo: a front LB, two backends, one Redis; all eight assertions.
#[test]
fn ha_demo_validate_sh_passes() {
    demo_passes("ha-demo", 8, Duration::from_secs(80));
}

/// The cluster demo: two LBs, three backends, Redis with a replica and three
/// Sentinels on 127.0.0.x; its four assertions (calls across LBs, a backend
/// killed under load, a primary failover, shared health).
#[test]
fn cluster_demo_validate_sh_passes() {
    demo_passes("cluster-demo", 4, Duration::from_secs(150));
}

// ---------------------------------------------------------------------------
// (b) Prometheus
// ---------------------------------------------------------------------------

/// The seed's LB script with one addition: a request carrying `X-Boom`
/// raises, so the script error metric has something to count.
const LB_SCRIPT_WITH_BOOM: &str = r#"from siphon import proxy, gateway, log

@proxy.on_request
def route(request):
    if request.header("X-Boom"):
        raise RuntimeError("boom requested by the test")
    if request.in_dialog:
        if request.loose_route():
            request.relay()
        else:
            request.reply(404, "Not Here")
        return
    destination = gateway.select("backends", key=str(request.to_uri))
    if not destination:
        request.reply(503, "Service Unavailable")
        return
    log.info(f"LB {request.method} {request.to_uri} -> {destination.uri}")
    request.record_route()
    request.relay(destination.uri)
"#;

/// An LB over two sipp backends, with Prometheus and the admin API.
/// `@B1@`, `@B2@`, `@ADMIN@`, `@PROM@` are filled in by `lb_config`.
const LB_CONFIG: &str = r#"listen:
  udp: ["127.0.0.1:@PORT@"]
  tcp: ["127.0.0.1:@PORT@"]
script:
  path: "script.py"
gateway:
  groups:
    - name: "backends"
      algorithm: hash
      probe: {enabled: true, interval_secs: 1, failure_threshold: 2, timeout_ms: 300}
      destinations:
        - uri: "sip:b1.example.com"
          address: "127.0.0.1:@B1@"
        - uri: "sip:b2.example.com"
          address: "127.0.0.1:@B2@"
server: {instance_id: "ops-lb", drain_secs: 2}
metrics:
  prometheus: {listen: "127.0.0.1:@PROM@"}
  log_interval_secs: @LOGINT@
admin: {listen: "127.0.0.1:@ADMIN@"}
transaction: {t1_ms: 50, t2_ms: 4000, t4_ms: 5000, timer_c_secs: 5}
log: {level: info, format: pretty}
"#;

const B1: &str = "sip:b1.example.com";
const B2: &str = "sip:b2.example.com";

struct LbPorts {
    admin: SocketAddr,
    prometheus: SocketAddr,
}

fn lb_config(b1: u16, b2: u16, log_interval: u32) -> (String, LbPorts) {
    let admin = free_port();
    let prometheus = free_port();
    let text = LB_CONFIG
        .replace("@B1@", &b1.to_string())
        .replace("@B2@", &b2.to_string())
        .replace("@ADMIN@", &admin.to_string())
        .replace("@PROM@", &prometheus.to_string())
        .replace("@LOGINT@", &log_interval.to_string());
    let ports = LbPorts {
        admin: SocketAddr::from(([127, 0, 0, 1], admin)),
        prometheus: SocketAddr::from(([127, 0, 0, 1], prometheus)),
    };
    (text, ports)
}

/// A sipp backend (`gw_uas.xml`) that answers probes and calls for the whole
/// test; killed when dropped.
fn sipp_backend(dir: &Path, name: &str) -> common::Sipp {
    SippSpec::new(name, "gw_uas.xml", Transport::Udp)
        .key("backend", name)
        .calls(100_000)
        .timeout_secs(85)
        .spawn(dir)
}

#[test]
fn prometheus_metrics_count_real_traffic() {
    let dir = work_dir();
    let backend1 = sipp_backend(dir.path(), "b1");
    let backend2 = sipp_backend(dir.path(), "b2");
    let (config, ports) = lb_config(backend1.port, backend2.port, 60);
    let lb = Siphon::start(&config, LB_SCRIPT_WITH_BOOM);
    let metrics = |path: &str| {
        let (status, body) = get(ports.prometheus, path);
        assert_eq!(status, 200, "GET {path} on the Prometheus listener: {body}");
        body
    };

    // Both destinations probed and up before any call.
    assert!(
        eventually(Duration::from_secs(5), || {
            let text = metrics("/metrics");
            [B1, B2].iter().all(|uri| {
                let labels = [("group", "backends"), ("destination", *uri)];
                sample(&text, "siphon_gateway_destination_up", &labels) == Some(1.0)
                    && sample(&text, "siphon_gateway_probe_latency_seconds_count", &labels)
                        .is_some_and(|n| n > 0.0)
            })
        }),
        "destinations not up and probed:\n{}",
        metrics("/metrics")
    );

    // Real calls: sipp UAC -> LB -> one sipp backend (hash on the To URI).
    let calls = 10;
    let uac = SippSpec::new("uac", "uac_call.xml", Transport::Udp)
        .target(lb.addr())
        .callee(lb.addr())
        .calls(calls)
        .rate(20)
        .timeout_secs(30)
        .run(dir.path());
    uac.assert_all_succeeded();
    assert_eq!(uac.stats.retransmissions, 0, "{}", uac.report());

    // A request whose script run raises: 500 and one script error.
    let boom = ask(&lb, |via| {
        RawRequest::new("OPTIONS", "sip:nobody@127.0.0.1", Transport::Udp, via)
            .header("X-Boom", "1")
    });
    assert_eq!(boom.as_deref().and_then(status_code), Some(500), "{boom:?}");

    // Three datagrams that are not SIP at all.
    let garbage = UdpPeer::bind();
    for n in 0..3 {
        garbage.send_to(
            format!("\x00\x01 not SIP at all {n}\r\n\r\n").as_bytes(),
            lb.addr(),
        );
    }

    let want_calls = f64::from(calls);
    let mut text = String::new();
    let settled = eventually(Duration::from_secs(3), || {
        text = metrics("/metrics");
        sample(
            &text,
            "siphon_malformed_messages_total",
            &[("transport", "udp")],
        ) == Some(3.0)
            && sample(&text, "siphon_requests_total", &[("method", "bye")]) == Some(want_calls)
            && sample(&text, "siphon_responses_total", &[("code", "500")]) == Some(1.0)
            && sample(&text, "siphon_responses_total", &[("code", "200")]) == Some(2.0 * want_calls)
    });
    // Counters are bumped just after the packet leaves, so poll briefly; the
    // exact values are asserted one by one below for a readable failure.
    assert!(settled, "counters never settled:\n{text}");

    // Requests by method: exactly what sipp and the raw client sent.
    for (method, count) in [
        ("invite", want_calls),
        ("ack", want_calls),
        ("bye", want_calls),
    ] {
        assert_eq!(
            value(&text, "siphon_requests_total", &[("method", method)]),
            count,
            "{method}"
        );
    }
    assert_eq!(
        value(&text, "siphon_requests_total", &[("method", "options")]),
        1.0,
        "the X-Boom OPTIONS (the LB's own probes are not received requests)"
    );
    // Responses by code: 180 and 200 per call (200 for INVITE and BYE), the
    // 100 Trying the LB sends, and the 500 for the script error.
    assert_eq!(
        value(&text, "siphon_responses_total", &[("code", "180")]),
        want_calls
    );
    assert_eq!(
        value(&text, "siphon_responses_total", &[("code", "200")]),
        2.0 * want_calls
    );
    assert_eq!(
        value(&text, "siphon_responses_total", &[("code", "100")]),
        want_calls
    );
    assert_eq!(
        value(&text, "siphon_responses_total", &[("code", "500")]),
        1.0
    );
    // Active transactions: a gauge that is present and never negative.
    assert!(value(&text, "siphon_transactions_active", &[]) >= 0.0);
    // Script: one run per request received (INVITE, ACK, BYE, OPTIONS).
    let runs = 3.0 * want_calls + 1.0;
    assert_eq!(value(&text, "siphon_script_executions_total", &[]), runs);
    assert_eq!(value(&text, "siphon_script_errors_total", &[]), 1.0);
    assert_eq!(
        value(&text, "siphon_script_duration_seconds_count", &[]),
        runs
    );
    assert!(value(&text, "siphon_script_duration_seconds_sum", &[]) > 0.0);
    // Gateway selections: one per INVITE, and the same figures as the admin
    // API reports per destination.
    let selections: Vec<f64> = [B1, B2]
        .iter()
        .map(|uri| {
            sample(
                &text,
                "siphon_gateway_selections_total",
                &[("group", "backends"), ("destination", uri)],
            )
            .unwrap_or(0.0)
        })
        .collect();
    assert_eq!(selections.iter().sum::<f64>(), want_calls, "{text}");
    for (uri, count) in [B1, B2].iter().zip(&selections) {
        let admin_count = destination_field(ports.admin, uri, "selections")
            .and_then(|v| v.as_f64())
            .unwrap_or(-1.0);
        assert_eq!(
            admin_count, *count,
            "selections of {uri}: admin API vs /metrics"
        );
    }
    assert_eq!(value(&text, "siphon_registrations_active", &[]), 0.0);
    // The admin listener serves the same exposition.
    let (status, admin_text) = get(ports.admin, "/metrics");
    assert_eq!(status, 200);
    assert!(admin_text.contains("siphon_requests_total{method=\"invite\"}"));

    // Stop backend 2: probes fail, it is marked down.
    drop(backend2);
    let labels2 = [("group", "backends"), ("destination", B2)];
    let down = eventually(Duration::from_secs(5), || {
        text = metrics("/metrics");
        sample(&text, "siphon_gateway_destination_up", &labels2) == Some(0.0)
    });
    assert!(down, "backend 2 still up 5 s after it stopped:\n{text}");
    assert!(
        value(&text, "siphon_gateway_probe_failures_total", &labels2) >= 2.0,
        "threshold 2: at least two failed probes\n{text}"
    );
    assert_eq!(
        value(
            &text,
            "siphon_gateway_destination_up",
            &[("group", "backends"), ("destination", B1)]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "siphon_gateway_probe_failures_total",
            &[("group", "backends"), ("destination", B1)]
        )
        .unwrap_or(0.0),
        0.0,
        "backend 1 never failed a probe"
    );
    drop(backend1);
}

/// A registrar node: REGISTERs are saved, OPTIONS answered.
const REGISTRAR_SCRIPT: &str = r#"from siphon import proxy, registrar

@proxy.on_request
def route(request):
    if request.method == "REGISTER":
        registrar.save(request)
        return
    if request.in_dialog:
        if request.loose_route():
            request.relay()
        else:
            request.reply(404, "Not Here")
        return
    if request.method == "OPTIONS" and not request.ruri.user:
        request.reply(200)
        return
    contacts = registrar.lookup(request.ruri)
    if not contacts:
        request.reply(404, "Not Found")
        return
    request.record_route()
    request.fork(contacts)
"#;

/// A node with a registrar, a gateway group without probes, the admin API
/// and Prometheus. `@ADMIN@`, `@PROM@` and `@LOGINT@` are filled in.
const REGISTRAR_CONFIG: &str = r#"listen:
  udp: ["127.0.0.1:@PORT@"]
  tcp: ["127.0.0.1:@PORT@"]
domain:
  local: ["127.0.0.1"]
script:
  path: "script.py"
gateway:
  groups:
    - name: "carriers"
      algorithm: weighted
      destinations:
        - uri: "sip:gw1.example.net"
          address: "127.0.0.1:9"
          weight: 2
          attrs: {region: "eu"}
        - uri: "sip:gw2.example.net"
          address: "127.0.0.1:9"
registrar: {backend: memory}
server: {instance_id: "ops-registrar", drain_secs: 2}
metrics:
  prometheus: {listen: "127.0.0.1:@PROM@"}
  log_interval_secs: @LOGINT@
admin: {listen: "127.0.0.1:@ADMIN@"}
log: {level: info, format: pretty}
"#;

fn start_registrar_node(log_interval: u32) -> (Siphon, LbPorts) {
    let admin = free_port();
    let prometheus = free_port();
    let config = REGISTRAR_CONFIG
        .replace("@ADMIN@", &admin.to_string())
        .replace("@PROM@", &prometheus.to_string())
        .replace("@LOGINT@", &log_interval.to_string());
    let siphon = Siphon::start(&config, REGISTRAR_SCRIPT);
    let ports = LbPorts {
        admin: SocketAddr::from(([127, 0, 0, 1], admin)),
        prometheus: SocketAddr::from(([127, 0, 0, 1], prometheus)),
    };
    (siphon, ports)
}

#[test]
fn prometheus_counts_active_registrations() {
    let (node, ports) = start_registrar_node(60);
    let users: Vec<String> = (0..5).map(|n| unique(&format!("reg{n}u"))).collect();
    for user in &users {
        assert_eq!(register(&node, user), Some(200), "REGISTER {user}");
    }
    let mut text = String::new();
    assert!(
        eventually(Duration::from_secs(3), || {
            text = get(ports.prometheus, "/metrics").1;
            sample(&text, "siphon_registrations_active", &[]) == Some(5.0)
        }),
        "registrations_active after 5 REGISTERs:\n{text}"
    );
    assert_eq!(
        value(&text, "siphon_requests_total", &[("method", "register")]),
        5.0
    );
    assert_eq!(
        value(&text, "siphon_responses_total", &[("code", "200")]),
        5.0
    );
    // Removing one binding through the admin API lowers the gauge.
    let (status, body) = http(
        ports.admin,
        "DELETE",
        &format!("/admin/registrations/sip:{}@127.0.0.1", users[0]),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        eventually(Duration::from_secs(3), || {
            text = get(ports.prometheus, "/metrics").1;
            sample(&text, "siphon_registrations_active", &[]) == Some(4.0)
        }),
        "registrations_active after one DELETE:\n{text}"
    );
}

// ---------------------------------------------------------------------------
// (c) the admin API
// ---------------------------------------------------------------------------

/// Asserts a 4xx answer whose body is a JSON object with an "error" string.
fn assert_json_error(answer: (u16, String), want: u16, what: &str) {
    let (status, body) = answer;
    assert_eq!(status, want, "{what}: {body}");
    let json: serde_json::Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{what}: error body is not JSON ({e}): {body:?}"));
    assert!(
        json["error"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: no \"error\" message in {json}"
    );
}

#[test]
fn admin_api_endpoints_and_errors() {
    let (node, ports) = start_registrar_node(60);
    let admin = ports.admin;

    let health = get_json(admin, "/admin/health");
    assert_eq!(health["status"], "alive", "{health}");
    let ready = get_json(admin, "/admin/ready");
    assert_eq!(ready["status"], "ready", "{ready}");

    // The gateway listing: every field of every destination.
    let listing = get_json(admin, "/admin/gateways");
    let groups = listing["groups"].as_array().expect("groups array");
    assert_eq!(groups.len(), 1, "{listing}");
    assert_eq!(groups[0]["name"], "carriers");
    assert_eq!(groups[0]["algorithm"], "weighted");
    let destinations = groups[0]["destinations"].as_array().expect("destinations");
    assert_eq!(destinations.len(), 2, "{listing}");
    let gw1 = &destinations[0];
    assert_eq!(gw1["uri"], "sip:gw1.example.net");
    assert_eq!(gw1["address"], "127.0.0.1:9");
    assert_eq!(gw1["weight"], 2);
    assert_eq!(gw1["attrs"]["region"], "eu");
    assert_eq!(gw1["healthy"], true);
    assert_eq!(gw1["held_down"], false);
    assert_eq!(gw1["consecutive_failures"], 0);
    assert!(
        gw1["last_probe_latency_ms"].is_null(),
        "never probed: {gw1}"
    );
    assert_eq!(gw1["selections"], 0);

    // select answers from the group actor without counting a selection or
    // moving the weighted rotation.
    let first = get_json(admin, "/admin/gateways/carriers/select?key=x");
    let again = get_json(admin, "/admin/gateways/carriers/select?key=x");
    assert_eq!(
        first["destination"]["uri"], "sip:gw1.example.net",
        "{first}"
    );
    assert_eq!(first["ranking"], again["ranking"], "{again}");
    assert_eq!(
        destination_field(admin, "sip:gw1.example.net", "selections"),
        Some(serde_json::Value::from(0))
    );

    // mark down, then up, as the script's gateway.mark_down / mark_up.
    let body = r#"{"uri": "sip:gw1.example.net"}"#;
    let (status, answer) = http(admin, "POST", "/admin/gateways/carriers/down", Some(body));
    assert_eq!(status, 200, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).expect("JSON");
    assert_eq!(answer["healthy"], false, "{answer}");
    assert_eq!(answer["changed"], true, "{answer}");
    assert_eq!(
        destination_field(admin, "sip:gw1.example.net", "healthy"),
        Some(serde_json::Value::Bool(false))
    );
    assert_eq!(
        destination_field(admin, "sip:gw2.example.net", "healthy"),
        Some(serde_json::Value::Bool(true)),
        "only the named destination goes down"
    );
    let (status, answer) = http(admin, "POST", "/admin/gateways/carriers/up", Some(body));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        destination_field(admin, "sip:gw1.example.net", "healthy"),
        Some(serde_json::Value::Bool(true))
    );

    // Registrations: a REGISTER shows up, DELETE removes it.
    let user = unique("adm");
    assert_eq!(register(&node, &user), Some(200));
    let path = format!("/admin/registrations/sip:{user}@127.0.0.1");
    let bindings = get_json(admin, &path);
    let list = bindings["bindings"].as_array().expect("bindings array");
    assert_eq!(list.len(), 1, "{bindings}");
    assert!(
        list[0]["uri"]
            .as_str()
            .is_some_and(|u| u.starts_with("sip:tester@127.0.0.1:")),
        "{bindings}"
    );
    assert!(
        list[0]["expires"]
            .as_u64()
            .is_some_and(|e| e > 0 && e <= 600),
        "{bindings}"
    );
    let (status, answer) = http(admin, "DELETE", &path, None);
    assert_eq!(status, 200, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).expect("JSON");
    assert_eq!(answer["removed"], 1, "{answer}");
    let bindings = get_json(admin, &path);
    assert_eq!(
        bindings["bindings"].as_array().map(Vec::len),
        Some(0),
        "{bindings}"
    );
    // The binding is really gone: a call to the user is not routed.
    let call = ask(&node, |via| {
        RawRequest::new(
            "MESSAGE",
            &format!("sip:{user}@127.0.0.1"),
            Transport::Udp,
            via,
        )
    });
    assert_eq!(call.as_deref().and_then(status_code), Some(404), "{call:?}");

    // Errors: JSON bodies with 4xx.
    assert_json_error(get(admin, "/admin/nothing-here"), 404, "unknown path");
    assert_json_error(get(admin, "/"), 404, "root path");
    assert_json_error(
        http(
            admin,
            "POST",
            "/admin/gateways/carriers/down",
            Some("not json"),
        ),
        400,
        "body that is not JSON",
    );
    assert_json_error(
        http(
            admin,
            "POST",
            "/admin/gateways/carriers/down",
            Some(r#"{"url": "x"}"#),
        ),
        400,
        "body without uri",
    );
    assert_json_error(
        http(
            admin,
            "POST",
            "/admin/gateways/carriers/down",
            Some(r#"["sip:gw1.example.net"]"#),
        ),
        400,
        "body that is not an object",
    );
    assert_json_error(
        http(
            admin,
            "POST",
            "/admin/gateways/nosuchgroup/down",
            Some(body),
        ),
        404,
        "unknown group",
    );
    // A failed mark changed nothing.
    assert_eq!(
        destination_field(admin, "sip:gw1.example.net", "healthy"),
        Some(serde_json::Value::Bool(true))
    );
    // A destination the group does not have is a 404 too (GatewayAdmin's
    // contract: `None` unless both the group and the destination exist).
    assert_json_error(
        http(
            admin,
            "POST",
            "/admin/gateways/carriers/up",
            Some(r#"{"uri": "sip:nobody.example.net"}"#),
        ),
        404,
        "unknown destination",
    );
}

// ---------------------------------------------------------------------------
// (d) actor metrics in the logs
// ---------------------------------------------------------------------------

#[test]
fn actor_metrics_are_logged_for_every_actor_kind() {
    let dir = work_dir();
    let backend1 = sipp_backend(dir.path(), "ab1");
    let backend2 = sipp_backend(dir.path(), "ab2");
    let (config, _ports) = lb_config(backend1.port, backend2.port, 1);
    let lb = Siphon::start(&config, LB_SCRIPT_WITH_BOOM);
    // Some traffic so the UDP transport and the transaction shards have work.
    for _ in 0..5 {
        let answer = ask(&lb, |via| {
            RawRequest::new("OPTIONS", "sip:nobody@127.0.0.1", Transport::Udp, via)
                .header("X-Boom", "1")
        });
        assert_eq!(answer.as_deref().and_then(status_code), Some(500));
    }
    let kinds = [
        "udp_transport",
        "tcp_transport",
        "transaction_shard",
        "gateway_group",
        "prober",
        "registrar",
    ];
    let all_logged = |log: &str| {
        kinds.iter().all(|kind| {
            log.lines().any(|line| {
                line.contains("actor metrics") && line.contains(&format!("actor=\"{kind}\""))
                    || line.contains("actor metrics") && line.contains(&format!("actor={kind} "))
            })
        })
    };
    assert!(
        eventually(Duration::from_secs(4), || all_logged(&lb.log())),
        "not every actor kind logged within 4 s at log_interval_secs 1:\n{}",
        lb.log_tail(40)
    );
    let lines = lb.log_lines("actor metrics");
    for line in &lines {
        assert!(line.contains("siphon::actors"), "target: {line}");
        for field in ["handled=", "mailbox=", "busy_ms=", "busy_pct="] {
            assert!(line.contains(field), "{field} missing: {line}");
        }
    }
    // Once per interval, not more: after ~2 more seconds, at most ~3 lines more per kind.
    let before = lb.log_lines("actor=\"prober\"").len() + lb.log_lines("actor=prober ").len();
    thread::sleep(Duration::from_millis(2200));
    let after = lb.log_lines("actor=\"prober\"").len() + lb.log_lines("actor=prober ").len();
    assert!(
        (1..=3).contains(&(after - before)),
        "prober lines in 2.2 s at a 1 s interval: {}",
        after - before
    );
    // Every kind that had work shows it: the UDP transport and the shards (the
    // OPTIONS and the probe answers), the probers (an OPTIONS every second)
    // and the gateway group (their results).
    let handled = |kind: &str| -> u64 {
        lb.log_lines("actor metrics")
            .iter()
            .filter(|l| {
                l.contains(&format!("actor={kind}")) || l.contains(&format!("actor=\"{kind}\""))
            })
            .filter_map(|l| {
                let rest = l.split("handled=").nth(1)?;
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    };
    for kind in [
        "udp_transport",
        "transaction_shard",
        "prober",
        "gateway_group",
    ] {
        assert!(
            handled(kind) > 0,
            "{kind} handled nothing:\n{}",
            lines.join("\n")
        );
    }
}

// ---------------------------------------------------------------------------
// (e) graceful drain
// ---------------------------------------------------------------------------

/// A plain proxy that records the route, so in-dialog requests pass through it.
const PROXY_SCRIPT: &str = r#"from siphon import proxy

@proxy.on_request
def route(request):
    if request.in_dialog:
        if request.loose_route():
            request.relay()
        else:
            request.reply(404, "Not Here")
        return
    request.record_route()
    request.relay()
"#;

const DRAIN_CONFIG: &str = r#"listen:
  udp: ["127.0.0.1:@PORT@"]
  tcp: ["127.0.0.1:@PORT@"]
domain:
  local: ["localhost"]
script:
  path: "script.py"
server: {instance_id: "ops-drain", drain_secs: @DRAIN@}
admin: {listen: "127.0.0.1:@ADMIN@"}
transaction: {t1_ms: 50, t2_ms: 4000, t4_ms: 5000, timer_c_secs: 10}
log: {level: info, format: pretty}
"#;

/// A 2xx to REQUEST from the callee: Contact at the callee, Record-Route kept.
fn answer_200(request: &str, callee: SocketAddr, to_tag: &str) -> String {
    let mut text = String::from("SIP/2.0 200 OK\r\n");
    for via in header_values(request, "Via") {
        text.push_str(&format!("Via: {via}\r\n"));
    }
    for rr in header_values(request, "Record-Route") {
        text.push_str(&format!("Record-Route: {rr}\r\n"));
    }
    for name in ["From", "Call-ID", "CSeq"] {
        if let Some(value) = header(request, name) {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    let to = header(request, "To").unwrap_or_default();
    if to.contains(";tag=") {
        text.push_str(&format!("To: {to}\r\n"));
    } else {
        text.push_str(&format!("To: {to};tag={to_tag}\r\n"));
    }
    text.push_str(&format!(
        "Contact: <sip:callee@{callee}>\r\nContent-Length: 0\r\n\r\n"
    ));
    text
}

/// Reads requests on CALLEE until one with METHOD arrives.
fn callee_receives(callee: &UdpPeer, method: &str) -> String {
    let mut seen = Vec::new();
    callee
        .recv_until(Duration::from_secs(5), &mut seen, |m| {
            common::method(m) == Some(method)
        })
        .unwrap_or_else(|| panic!("callee never got {method}; saw {seen:?}"))
}

#[test]
fn drain_on_sigterm_finishes_the_call_in_progress_and_refuses_new_ones() {
    let drain_secs = 4;
    let admin_port = free_port();
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let config = DRAIN_CONFIG
        .replace("@ADMIN@", &admin_port.to_string())
        .replace("@DRAIN@", &drain_secs.to_string());
    let mut proxy = Siphon::start(&config, PROXY_SCRIPT);
    assert_eq!(get(admin, "/admin/ready").0, 200);

    // A call in progress: INVITE -> 200 -> ACK, all through the proxy.
    let caller = UdpPeer::bind();
    let callee = UdpPeer::bind();
    let callee_addr = callee.local_addr();
    let invite = RawRequest::new(
        "INVITE",
        &format!("sip:callee@{callee_addr}"),
        Transport::Udp,
        caller.local_addr(),
    );
    let call_id = invite.call_id.clone();
    let from_tag = invite.from_tag.clone();
    caller.send_to(invite.render().as_bytes(), proxy.addr());
    let invite_at_callee = callee_receives(&callee, "INVITE");
    let to_tag = unique("callee");
    let ok = answer_200(&invite_at_callee, callee_addr, &to_tag);
    callee.send_to(ok.as_bytes(), proxy.addr());
    let mut seen = Vec::new();
    let final_response = caller
        .recv_final(Duration::from_secs(5), &mut seen)
        .unwrap_or_else(|| panic!("caller got no final response; saw {seen:?}"));
    assert_eq!(status_code(&final_response), Some(200), "{final_response}");
    let routes: Vec<String> = header_values(&final_response, "Record-Route")
        .into_iter()
        .rev()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        routes.len(),
        1,
        "the proxy recorded its route: {final_response}"
    );
    let in_dialog = |method: &str, cseq: u32| {
        let mut request = RawRequest::new(
            method,
            &format!("sip:callee@{callee_addr}"),
            Transport::Udp,
            caller.local_addr(),
        );
        request.call_id = call_id.clone();
        request.from_tag = from_tag.clone();
        request.to_tag = Some(to_tag.clone());
        request.cseq = cseq;
        for route in &routes {
            request = request.header("Route", route);
        }
        request
    };
    caller.send_to(in_dialog("ACK", 1).render().as_bytes(), proxy.addr());
    callee_receives(&callee, "ACK");

    // SIGTERM: not ready any more, new calls refused with 503.
    assert!(proxy.signal("TERM"), "send SIGTERM");
    let term_at = Instant::now();
    let mut last = (0, String::new());
    assert!(
        eventually(Duration::from_secs(1), || {
            last = get(admin, "/admin/ready");
            last.0 == 503
        }),
        "/admin/ready while draining: {last:?}"
    );
    let json: serde_json::Value = serde_json::from_str(&last.1).expect("ready body is JSON");
    assert_eq!(json["status"], "draining", "{json}");
    assert_eq!(get(admin, "/admin/health").0, 200, "alive while draining");
    let refused = ask(&proxy, |via| {
        RawRequest::new(
            "INVITE",
            &format!("sip:other@{callee_addr}"),
            Transport::Udp,
            via,
        )
    });
    assert_eq!(
        refused.as_deref().and_then(status_code),
        Some(503),
        "new INVITE while draining: {refused:?}"
    );

    // The call in progress still ends normally: BYE through the proxy, 200 back.
    caller.send_to(in_dialog("BYE", 2).render().as_bytes(), proxy.addr());
    let bye = callee_receives(&callee, "BYE");
    callee.send_to(
        common::response_to(&bye, 200, "OK").as_bytes(),
        proxy.addr(),
    );
    let mut seen = Vec::new();
    let bye_answer = caller.recv_final(Duration::from_secs(3), &mut seen);
    assert_eq!(
        bye_answer.as_deref().and_then(status_code),
        Some(200),
        "BYE of the call in progress while draining: {seen:?}"
    );

    // The process exits within drain_secs (plus a little for the poll).
    let exited = eventually(Duration::from_secs(drain_secs + 2), || !proxy.is_running());
    let took = term_at.elapsed();
    assert!(
        exited,
        "still running {took:?} after SIGTERM\n{}",
        proxy.log_tail(20)
    );
    assert!(
        took <= Duration::from_millis(drain_secs * 1000 + 700),
        "exited after {took:?}, drain_secs is {drain_secs}"
    );
    assert!(
        proxy.log().contains("draining"),
        "{}",
        tail(&proxy.log(), 20)
    );
}

// ---------------------------------------------------------------------------
// `siphon route`: the dry run
// ---------------------------------------------------------------------------

/// Runs `siphon route --config config/lb.yaml ARGS... FILE` on an INVITE
/// for bob; exit code, stdout and stderr.
fn dry_run(args: &[&str]) -> (Option<i32>, String, String) {
    let dir = work_dir();
    let message = dir.path().join("invite.sip");
    std::fs::write(
        &message,
        "INVITE sip:bob@example.com SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKdry\n\
         Max-Forwards: 70\nFrom: <sip:alice@example.net>;tag=1\nTo: <sip:bob@example.com>\n\
         Call-ID: dry-1\nCSeq: 1 INVITE\nContent-Length: 0\n\n",
    )
    .expect("write the message");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/lb.yaml");
    let output = Command::new(env!("CARGO_BIN_EXE_siphon"))
        .arg("route")
        .arg("--config")
        .arg(&config)
        .args(args)
        .arg(&message)
        .env("NO_COLOR", "1")
        .output()
        .expect("run siphon route");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The decision is one JSON object naming the backend and its address; a
/// marked-down backend moves the call to the other, both down is the
/// script's 503, and a bad `--mark-down` is an error naming it.
#[test]
fn route_prints_the_scripts_decision_as_json() {
    let (code, out, err) = dry_run(&[]);
    assert_eq!(code, Some(0), "{err}");
    let decision: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(decision["action"], "relay", "{out}");
    assert_eq!(decision["record_route"], true, "{out}");
    let first = decision["uri"].as_str().expect("uri").to_string();
    let address = |uri: &str| match uri {
        "sip:backend1.example.com" => "127.0.0.1:5071",
        _ => "127.0.0.1:5072",
    };
    assert_eq!(decision["address"], address(&first), "{out}");

    let (code, out, err) = dry_run(&["--mark-down", &format!("backends={first}")]);
    assert_eq!(code, Some(0), "{err}");
    let moved: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
    assert_ne!(moved["uri"], first.as_str(), "{out}");
    assert_eq!(
        moved["address"],
        address(moved["uri"].as_str().unwrap_or(""))
    );

    let both = [
        "--mark-down",
        "backends=sip:backend1.example.com",
        "--mark-down",
        "backends=sip:backend2.example.com",
    ];
    let (code, out, _) = dry_run(&both);
    assert_eq!(code, Some(0));
    let refused: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
    assert_eq!(
        (refused["action"].as_str(), refused["code"].as_u64()),
        (Some("reply"), Some(503))
    );

    let (code, _, err) = dry_run(&["--mark-down", "backends=sip:nobody.example.com"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains(
            "--mark-down backends=sip:nobody.example.com: group backends has no destination"
        ),
        "{err}"
    );
}
