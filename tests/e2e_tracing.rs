//! End to end: `tracing.otlp` sends the spans of traced calls to an
//! OpenTelemetry collector over OTLP/HTTP. The collector here is
//! `tests/otlp_receiver.py`, which decodes with OpenTelemetry's own Python
//! protobuf classes (PyPI's opentelemetry-proto). A sipp call whose first
//! backend answers 503 is one trace under the caller's `traceparent`; the
//! backend that takes it gets a `traceparent` naming its branch's span;
//! the log lines about the call carry its Call-ID and trace id; with the
//! collector gone, calls go on and the spans dropped are counted.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::calls::{backend, callers, destination, users, Lb};
use common::gateway::{backend_uri, seed_lb_script, Backend};
use common::{free_port, SippSpec, Transport};
use serde_json::Value;

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

const CONFIG: &str = r#"listen:
  udp: ["127.0.0.1:@PORT@"]
script:
  path: "script.py"
gateway:
  groups:
    - name: "backends"
      algorithm: weighted
      destinations:
@DESTINATIONS@
tracing:
  otlp: {endpoint: "http://127.0.0.1:@OTLP@", sample: @SAMPLE@, service_name: "edge-lb"}
# The caller is an SBC in front of us: its traceparent is followed (the
# default follows only security.trusted peers').
security:
  trusted: ["127.0.0.1/32"]
admin: {listen: "127.0.0.1:@ADMIN@"}
log: {level: info, format: @FORMAT@}
"#;

fn lb(destinations: &str, otlp: u16, sample: &str, format: &str) -> Lb {
    let config = CONFIG
        .replace("@DESTINATIONS@", destinations.trim_end())
        .replace("@OTLP@", &otlp.to_string())
        .replace("@SAMPLE@", sample)
        .replace("@FORMAT@", format);
    Lb::start_with_template(&config, &seed_lb_script())
}

/// The OTLP receiver; killed on drop.
struct Receiver {
    child: Child,
    spans: std::path::PathBuf,
}

impl Receiver {
    fn start(dir: &Path, port: u16) -> Receiver {
        let spans = dir.join("spans.jsonl");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/otlp_receiver.py");
        let child = Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .arg(&spans)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3");
        assert!(
            common::wait_until_bound(port, Transport::Tcp, Duration::from_secs(10)),
            "the OTLP receiver does not listen (is opentelemetry-proto installed? test.sh installs it)"
        );
        Receiver { child, spans }
    }

    /// The spans of `trace_id` received so far.
    fn spans_of(&self, trace_id: &str) -> Vec<Value> {
        fs::read_to_string(&self.spans)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|span| span["trace_id"] == trace_id)
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn attribute<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

#[test]
fn a_call_that_fails_over_is_one_trace_under_the_callers_traceparent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let otlp = free_port();
    let receiver = Receiver::start(dir.path(), otlp);
    let (refusing, taking) = (free_port(), free_port());
    let _b1 = Backend::start_scenario(
        dir.path(),
        "gw_uas_refuse.xml",
        &[("backend", "b1")],
        refusing,
    );
    let _b2 = Backend::start_scenario(dir.path(), "trace_uas.xml", &[("backend", "b2")], taking);
    // Backend 1 is the first tier: every call goes there first, and fails
    // over to backend 2 on its 503. No call is sampled by ratio: only the
    // caller's sampled traceparent makes this one traced.
    let destinations =
        destination(1, refusing, ", priority: 0") + &destination(2, taking, ", priority: 1");
    let lb = lb(&destinations, otlp, "0.0", "json");

    let traceparent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let outcome = SippSpec::new("traced", "trace_uac.xml", Transport::Udp)
        .target(lb.addr())
        .key("traceparent", &traceparent)
        .calls(1)
        .timeout_secs(30)
        .args(&["-d", "100"])
        .trace_messages()
        .run(dir.path());
    outcome.assert_all_succeeded();
    assert!(
        outcome.actions_log().contains("ROUTE b2"),
        "{}",
        outcome.actions_log()
    );
    let invite = outcome
        .sent_messages()
        .into_iter()
        .find(|m| m.starts_with("INVITE"))
        .expect("the caller's INVITE");
    let call_id = common::header_values(&invite, "Call-ID")[0].to_string();

    // One trace: the server span, the script's, and a branch to each backend.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut spans = receiver.spans_of(CALLER_TRACE);
    while spans.len() < 4 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
        spans = receiver.spans_of(CALLER_TRACE);
    }
    let named =
        |name: &str| -> Vec<&Value> { spans.iter().filter(|s| s["name"] == name).collect() };
    let servers = named("INVITE");
    assert_eq!(servers.len(), 1, "{spans:#?}");
    let server = servers[0];
    assert_eq!(server["kind"], "server");
    assert_eq!(
        server["parent_span_id"], CALLER_SPAN,
        "continues the caller's span"
    );
    assert_eq!(server["service"], "edge-lb");
    assert_eq!(attribute(server, "sip.call_id"), call_id.as_str());
    assert_eq!(attribute(server, "sip.status_code"), 200);
    assert_eq!(attribute(server, "client.address"), "127.0.0.1");
    let scripts = named("script");
    assert_eq!(scripts.len(), 1, "{spans:#?}");
    assert_eq!(scripts[0]["parent_span_id"], server["span_id"]);
    assert_eq!(attribute(scripts[0], "script.handler"), "proxy.on_request");
    assert_eq!(
        attribute(scripts[0], "script.decision"),
        format!("relay {}", backend_uri(1)).as_str()
    );
    let mut branches = named("sip.branch");
    branches.sort_by_key(|b| attribute(b, "sip.attempt").as_i64());
    assert_eq!(branches.len(), 2, "{spans:#?}");
    assert!(branches
        .iter()
        .all(|b| b["parent_span_id"] == server["span_id"] && b["kind"] == "client"));
    assert_eq!(
        attribute(branches[0], "sip.destination"),
        backend_uri(1).as_str()
    );
    assert_eq!(attribute(branches[0], "server.port"), i64::from(refusing));
    assert_eq!(attribute(branches[0], "sip.status_code"), 503);
    assert_eq!(attribute(branches[0], "sip.failover_reason"), "status 503");
    assert_eq!(attribute(branches[0], "gateway.group"), "backends");
    assert_eq!(branches[0]["error"], true);
    assert_eq!(
        attribute(branches[1], "sip.destination"),
        backend_uri(2).as_str()
    );
    assert_eq!(attribute(branches[1], "sip.status_code"), 200);
    assert!(attribute(branches[1], "sip.failover_reason").is_null());
    for span in &spans {
        let (start, end) = (
            span["start"].as_u64().unwrap(),
            span["end"].as_u64().unwrap(),
        );
        assert!(start > 0 && end >= start, "{span}");
    }

    // The backend that took the call got the trace, naming its branch.
    let backend_log = fs::read_to_string(dir.path().join(format!("uas_{taking}_actions.log")))
        .unwrap_or_default();
    let got = backend_log
        .lines()
        .find_map(|line| line.strip_prefix("TRACEPARENT "))
        .unwrap_or_else(|| panic!("backend 2 logged no traceparent: {backend_log}"));
    let fields: Vec<&str> = got.trim().split('-').collect();
    assert_eq!(
        fields,
        [
            "00",
            CALLER_TRACE,
            branches[1]["span_id"].as_str().unwrap(),
            "01"
        ]
    );

    // The script's log line about the call carries its Call-ID and trace id
    // (JSON log).
    let logged = lb.siphon.log_lines("LB INVITE");
    assert!(!logged.is_empty(), "{}", lb.siphon.log_tail(20));
    let line: Value = serde_json::from_str(&logged[0]).expect("a JSON log line");
    assert_eq!(line["fields"]["call_id"], call_id.as_str(), "{line}");
    assert_eq!(line["fields"]["trace_id"], CALLER_TRACE, "{line}");
    // So does the failover's.
    let failover: Vec<Value> = lb
        .siphon
        .log_lines("\"failover\"")
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(failover.len(), 1, "{}", lb.siphon.log_tail(20));
    assert_eq!(failover[0]["fields"]["call_id"], call_id.as_str());
    assert_eq!(failover[0]["fields"]["trace_id"], CALLER_TRACE);
}

#[test]
fn with_the_collector_gone_calls_go_on_and_the_spans_dropped_are_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (port, gone) = (free_port(), free_port());
    let _backend = backend(dir.path(), 1, port);
    let lb = lb(&destination(1, port, ""), gone, "1.0", "pretty");
    let outcome = callers("untraced", lb.addr(), &users("gone", 20), 20, 100).run(dir.path());
    outcome.assert_all_succeeded();
    let deadline = Instant::now() + Duration::from_secs(10);
    let dropped = || lb.metric("siphon_otlp_dropped_spans_total{reason=\"export_failed\"}");
    while dropped() < 20.0 * 3.0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    // INVITE and BYE of each call: a server, a script and a branch span.
    assert!(
        dropped() >= 20.0 * 3.0,
        "{} dropped\n{}",
        dropped(),
        lb.siphon.log_tail(20)
    );
    assert_eq!(lb.metric("siphon_otlp_exported_spans_total"), 0.0);
    let warned = lb.siphon.log_lines("tracing.otlp: export failed");
    assert!(
        !warned.is_empty() && warned.len() < 5,
        "throttled: {warned:?}"
    );
    // The pretty log names the call and its trace too.
    let logged = lb.siphon.log_lines("LB INVITE");
    assert_eq!(logged.len(), 20);
    assert!(
        logged
            .iter()
            .all(|l| l.contains("call_id=") && l.contains("trace_id=")),
        "{logged:?}"
    );
}
