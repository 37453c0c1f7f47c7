//! End to end over TLS, with certificates the test makes: a Python `ssl`
//! caller through the LB's TLS listener to a UDP backend (double
//! Record-Route), and a `transport=tls` gateway destination probed and
//! called over TLS, beside one whose certificate names another host.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::gateway::{seed_lb_script, wait_for_transition, Backend};
use common::tls::{python_tls_call, PythonTlsPeer, TestCa};
use common::{free_port, get_json, metric, Siphon, SippSpec, Transport};

const TLS_LB: &str = r#"listen:
  udp: ["127.0.0.1:@PORT@"]
  tls: [{address: "127.0.0.1:@TLS@", cert: "@CERT@", key: "@KEY@"}]
script:
  path: "script.py"
gateway:
  groups:
    - name: "backends"
      algorithm: hash
      destinations:
        - uri: "sip:backend1.example.com:5060"
          address: "127.0.0.1:@B1@"
admin: {listen: "127.0.0.1:@ADMIN@"}
log: {level: info, format: pretty}
"#;

#[test]
fn a_tls_caller_reaches_a_udp_backend_with_a_record_route_for_each_side() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let ca_file = ca.write(dir.path());
    let lb_cert = ca.issue(dir.path(), "lb", &["lb.test", "127.0.0.1"]);
    let backend_port = free_port();
    let _backend = Backend::start(dir.path(), "b1", backend_port);
    let (tls_port, admin) = (free_port(), free_port());
    let config = TLS_LB
        .replace("@TLS@", &tls_port.to_string())
        .replace("@CERT@", &lb_cert.cert.display().to_string())
        .replace("@KEY@", &lb_cert.key.display().to_string())
        .replace("@B1@", &backend_port.to_string())
        .replace("@ADMIN@", &admin.to_string());
    let lb = Siphon::start(&config, &seed_lb_script());
    assert!(lb.log().contains("listening on TLS"), "{}", lb.log_tail(20));
    let tls_addr = SocketAddr::from(([127, 0, 0, 1], tls_port));

    // The caller verifies the LB's certificate by name, as a phone does.
    let lines = python_tls_call(tls_addr, &ca_file, "lb.test", "alice")
        .unwrap_or_else(|e| panic!("{e}\n{}", lb.log_tail(30)));
    assert!(
        lines.contains(&"STATUS 200 INVITE".to_string()),
        "{lines:?}"
    );
    assert!(lines.contains(&"STATUS 200 BYE".to_string()), "{lines:?}");
    assert_eq!(lines.last().map(String::as_str), Some("DONE"));
    // Two Record-Routes (RFC 5658): the UDP side toward the backend, then
    // the TLS side the caller's ACK and BYE come back on.
    let routes: Vec<String> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("RR "))
        .map(siphon::proxy::seal::unsealed)
        .collect();
    assert_eq!(routes.len(), 2, "{routes:?}");
    assert_eq!(routes[0], format!("<sip:127.0.0.1:{};lr>", lb.port));
    // The caller's side names its connection with a flow token.
    assert!(routes[1].starts_with("<sip:f"), "{routes:?}");
    assert!(
        routes[1].ends_with(&format!("@127.0.0.1:{tls_port};transport=tls;lr>")),
        "{routes:?}"
    );
    let admin = SocketAddr::from(([127, 0, 0, 1], admin));
    assert!(metric(admin, "siphon_requests_total", "method=\"invite\"") >= 1.0);

    // A client that does not trust the LB's CA is refused in the handshake,
    // and the LB goes on.
    let other_ca = TestCa::new();
    let other_dir = tempfile::tempdir().unwrap();
    let untrusted = other_ca.write(other_dir.path());
    assert!(python_tls_call(tls_addr, &untrusted, "lb.test", "mallory").is_err());
    assert!(metric(admin, "siphon_tls_handshake_failures_total", "inbound") >= 1.0);
    let again = python_tls_call(tls_addr, &ca_file, "lb.test", "bob");
    assert!(again.is_ok(), "{again:?}");

    // SIGHUP reads the certificate files again: a renewed certificate (for
    // another name here, so the test can tell) is presented from then on.
    let renewed = ca.issue(dir.path(), "renewed", &["lb2.test"]);
    std::fs::copy(&renewed.cert, &lb_cert.cert).unwrap();
    std::fs::copy(&renewed.key, &lb_cert.key).unwrap();
    assert!(lb.signal("HUP"));
    assert!(lb.wait_for_log("TLS certificate reloaded", Duration::from_secs(5)));
    let renewed_call = python_tls_call(tls_addr, &ca_file, "lb2.test", "carol");
    assert!(renewed_call.is_ok(), "{renewed_call:?}");
    assert!(python_tls_call(tls_addr, &ca_file, "lb.test", "dave").is_err());
}

const TLS_BACKEND: &str = r#"listen:
  udp: ["127.0.0.1:@PORT@"]
  tls: [{address: "127.0.0.1:@TLS@", cert: "@CERT@", key: "@KEY@"}]
script:
  path: "script.py"
log: {level: info, format: pretty}
"#;

/// A backend that takes requests over TLS only, answers probes, and relays
/// calls to the sipp UAS.
const BACKEND_SCRIPT: &str = r#"from siphon import proxy

@proxy.on_request
def route(request):
    if request.transport != "tls":
        request.reply(403, "TLS Only")
        return
    if request.in_dialog:
        if request.loose_route():
            request.relay()
        else:
            request.reply(404, "Not Here")
        return
    if request.method == "OPTIONS":
        request.reply(200, "OK")
        return
    request.record_route()
    request.relay("sip:uas@127.0.0.1:@UAS@")
"#;

const LB_TO_TLS: &str = r#"listen:
  udp: ["127.0.0.1:@PORT@"]
  # Our Via and Record-Route toward a TLS destination name a TLS listener.
  tls: [{address: "127.0.0.1:@LBTLS@", cert: "@LBCERT@", key: "@LBKEY@"}]
script:
  path: "script.py"
tls:
  ca_file: "@CA@"
gateway:
  groups:
    - name: "backends"
      algorithm: hash
      probe: {enabled: true, interval_secs: 1, failure_threshold: 1}
      destinations:
        - uri: "sip:tlsbackend.test:@GOOD@;transport=tls"
          address: "127.0.0.1:@GOOD@"
        - uri: "sip:badcert.test:@BAD@"
          address: "127.0.0.1:@BAD@"
          transport: tls
admin: {listen: "127.0.0.1:@ADMIN@"}
log: {level: info, format: pretty}
"#;

fn start_tls_backend(uas: u16, tls_port: u16, cert: &common::tls::Issued) -> Siphon {
    let config = TLS_BACKEND
        .replace("@TLS@", &tls_port.to_string())
        .replace("@CERT@", &cert.cert.display().to_string())
        .replace("@KEY@", &cert.key.display().to_string());
    Siphon::start(&config, &BACKEND_SCRIPT.replace("@UAS@", &uas.to_string()))
}

#[test]
fn a_tls_destination_is_probed_and_called_over_tls_and_a_wrong_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let ca_file = ca.write(dir.path());
    let uas_port = free_port();
    let _uas = Backend::start(dir.path(), "uas", uas_port);
    let (good_port, bad_port) = (free_port(), free_port());
    let good_cert = ca.issue(dir.path(), "good", &["tlsbackend.test"]);
    // Signed by the same CA, but for another name than the uri's host.
    let bad_cert = ca.issue(dir.path(), "bad", &["other.test"]);
    let good = start_tls_backend(uas_port, good_port, &good_cert);
    let _bad = start_tls_backend(uas_port, bad_port, &bad_cert);

    let admin = free_port();
    let lb_cert = ca.issue(dir.path(), "lb", &["lb.test"]);
    let config = with_lb_listener(LB_TO_TLS, &lb_cert)
        .replace("@CA@", &ca_file.display().to_string())
        .replace("@GOOD@", &good_port.to_string())
        .replace("@BAD@", &bad_port.to_string())
        .replace("@ADMIN@", &admin.to_string());
    let lb = Siphon::start(&config, &seed_lb_script());
    let admin = SocketAddr::from(([127, 0, 0, 1], admin));

    // The wrong certificate: the probe's handshake fails, says why, and the
    // destination goes down; the right one stays up.
    let bad_uri = format!("sip:badcert.test:{bad_port}");
    wait_for_transition(&lb, &bad_uri, "down", Duration::from_secs(10));
    let refusal = lb.log_lines("TLS handshake failed");
    assert!(
        refusal.iter().any(
            |l| l.contains("name=badcert.test") && l.contains("certificate not valid for name")
        ),
        "no clear log line for the refused certificate: {refusal:?}"
    );
    let gateways = get_json(admin, "/admin/gateways");
    let destinations = gateways["groups"][0]["destinations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let good_uri = format!("sip:tlsbackend.test:{good_port};transport=tls");
    let up = |uri: &str| {
        destinations
            .iter()
            .find(|d| d["uri"] == uri)
            .map(|d| d["healthy"].clone())
    };
    assert_eq!(
        up(&good_uri),
        Some(serde_json::Value::Bool(true)),
        "{gateways}"
    );
    assert_eq!(
        up(&bad_uri),
        Some(serde_json::Value::Bool(false)),
        "{gateways}"
    );
    // The probes of the good one reach it over TLS (its first probe may
    // still be in its handshake: a destination starts up).
    assert!(good.log().contains("listening on TLS"));
    assert!(
        eventually(Duration::from_secs(5), || metric(
            admin,
            "siphon_connections",
            "transport=\"tls\""
        ) >= 1.0),
        "no TLS connection to the good destination"
    );
    assert!(metric(admin, "siphon_tls_handshake_failures_total", "outbound") >= 1.0);

    // Calls from a UDP caller go to the backend over TLS and are answered.
    let outcome = SippSpec::new("caller", "uac_call.xml", Transport::Udp)
        .target(lb.addr())
        .callee(lb.addr())
        .calls(5)
        .rate(10)
        .timeout_secs(20)
        .run(dir.path());
    outcome.assert_all_succeeded();
    assert!(metric(admin, "siphon_responses_total", "code=\"200\"") >= 5.0);
}

const LB_MTLS: &str = r#"listen:
  udp: ["127.0.0.1:@PORT@"]
  # Our Via and Record-Route toward a TLS destination name a TLS listener.
  tls: [{address: "127.0.0.1:@LBTLS@", cert: "@LBCERT@", key: "@LBKEY@"}]
script:
  path: "script.py"
tls:
  ca_file: "@CA@"
@CLIENT@
gateway:
  groups:
    - name: "trunks"
      probe: {enabled: true, interval_secs: 1, failure_threshold: 1}
      destinations:
        - uri: "sip:127.0.0.1:@TRUNK@;transport=tls"
admin: {listen: "127.0.0.1:@ADMIN@"}
log: {level: info, format: pretty}
"#;

/// CONFIG with `@LBTLS@`, `@LBCERT@` and `@LBKEY@` filled: a TLS listener
/// of the LB's own on a free port, with CERT.
fn with_lb_listener(config: &str, cert: &common::tls::Issued) -> String {
    config
        .replace("@LBTLS@", &free_port().to_string())
        .replace("@LBCERT@", &cert.cert.display().to_string())
        .replace("@LBKEY@", &cert.key.display().to_string())
}

fn start_mtls_lb(
    ca: &std::path::Path,
    trunk: u16,
    (listener, client): (&common::tls::Issued, Option<&common::tls::Issued>),
) -> (Siphon, SocketAddr) {
    let admin = free_port();
    let client = client.map_or(String::new(), |c| {
        format!(
            "  client_cert: \"{}\"\n  client_key: \"{}\"",
            c.cert.display(),
            c.key.display()
        )
    });
    let config = with_lb_listener(LB_MTLS, listener)
        .replace("@CA@", &ca.display().to_string())
        .replace("@CLIENT@", &client)
        .replace("@TRUNK@", &trunk.to_string())
        .replace("@ADMIN@", &admin.to_string());
    let lb = Siphon::start(&config, &seed_lb_script());
    (lb, SocketAddr::from(([127, 0, 0, 1], admin)))
}

/// Polls CONDITION for up to TIMEOUT.
fn eventually(timeout: Duration, condition: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    condition()
}

#[test]
fn a_trunk_that_wants_mutual_tls_gets_the_client_certificate_and_an_address_is_verified() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let ca_file = ca.write(dir.path());
    // The trunk's certificate names its address only (subjectAltName IP).
    let trunk_cert = ca.issue(dir.path(), "trunk", &["127.0.0.1"]);
    let client_cert = ca.issue(dir.path(), "lb.example.com", &["lb.example.com"]);
    let trunk_port = free_port();
    let trunk = PythonTlsPeer::start(dir.path(), trunk_port, &trunk_cert, &ca_file);
    let trunk_uri = format!("sip:127.0.0.1:{trunk_port};transport=tls");

    // With its client certificate the LB's probes are answered.
    let (with_cert, admin) =
        start_mtls_lb(&ca_file, trunk_port, (&client_cert, Some(&client_cert)));
    let healthy = || {
        let gateways = get_json(admin, "/admin/gateways");
        let destination = &gateways["groups"][0]["destinations"][0];
        destination["uri"] == trunk_uri.as_str()
            && destination["healthy"] == true
            && destination["last_probe_latency_ms"].is_number()
    };
    assert!(
        eventually(Duration::from_secs(6), healthy),
        "trunk saw {:?}\n{}",
        trunk.lines(),
        with_cert.log_tail(20)
    );
    assert!(trunk.lines().iter().any(|l| l == "PEER lb.example.com"));
    drop(with_cert);

    // Without one the trunk refuses the handshake and the probe marks it down.
    let (without, _admin) = start_mtls_lb(&ca_file, trunk_port, (&client_cert, None));
    wait_for_transition(&without, &trunk_uri, "down", Duration::from_secs(10));
    assert!(
        trunk.lines().iter().any(|l| l.starts_with("REFUSED")),
        "{:?}",
        trunk.lines()
    );
}
