//! End to end: gateway groups with the seed's `lb.py`, run unchanged, in front
//! of sipp backends; health probing, failover, recovery, the all-down 503,
//! and the script API (attrs, marks, add/remove/list) from a script.
//!
//! Each backend is a sipp UAS (`gw_uas.xml`) that answers probes and calls and
//! tags every answer with `X-Backend: <name>`; the caller (`gw_uac.xml`) logs
//! `ROUTE <user> <backend>` per call, which is how the tests see which backend
//! took which user.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::gateway::{backend_uri, routes_in, seed_lb_script, wait_for_transition, Backend};
use common::{
    free_port, get_json, run_check, scenario_dir, status_code, tail, RawRequest, Siphon, Transport,
    UdpPeer, LOCALHOST,
};

/// Probe settings of the tests: a dead backend is down within
/// `INTERVAL × THRESHOLD (+10% jitter) + TIMEOUT` = 2.5 s.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
const PROBE_THRESHOLD: u32 = 2;
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);
/// Allowance on top of the bound for log polling and a busy 2-core machine.
const SLACK: Duration = Duration::from_millis(1000);

/// The seed's siphon.yaml for the load balancer, with 127.0.0.1 addresses and
/// short probe intervals. `@B1@`..`@B3@` are the backends' ports.
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
        - uri: "sip:backend1.example.com:5060"
          address: "127.0.0.1:@B1@"
          weight: 2
          attrs: {region: "us-east"}
        - uri: "sip:backend2.example.com:5060"
          address: "127.0.0.1:@B2@"
        - uri: "sip:backend3.example.com:5060"
          address: "127.0.0.1:@B3@"
log: {level: info, format: pretty}
"#;

/// `LB_CONFIG` with the backends on `ports`.
fn lb_config(ports: &[u16; 3]) -> String {
    LB_CONFIG
        .replace("@B1@", &ports[0].to_string())
        .replace("@B2@", &ports[1].to_string())
        .replace("@B3@", &ports[2].to_string())
}

/// Backends b1, b2, b3 on `ports`.
fn start_backends(dir: &Path, ports: &[u16; 3]) -> Vec<Backend> {
    ports
        .iter()
        .enumerate()
        .map(|(i, &port)| Backend::start(dir, &format!("b{}", i + 1), port))
        .collect()
}

// ---------------------------------------------------------------------------
// Local helpers: backends that can be killed and restarted on their port, and
// a caller that reads its users from a CSV (the shared harness has neither).
// ---------------------------------------------------------------------------

/// One caller run: its exit code and which backend answered each user.
struct Pass {
    exit_code: Option<i32>,
    routes: BTreeMap<String, String>,
    report: String,
}

impl Pass {
    fn assert_all_succeeded(&self, users: usize) {
        assert_eq!(self.exit_code, Some(0), "{}", self.report);
        assert_eq!(self.routes.len(), users, "calls routed\n{}", self.report);
    }

    /// Only the users `before` sent to `dead` went elsewhere.
    fn assert_only_moved_off(&self, before: &Pass, dead: &str) {
        for (user, was) in &before.routes {
            let now = &self.routes[user];
            if was == dead {
                assert_ne!(now, dead, "{user} still routed to the dead backend");
            } else {
                assert_eq!(now, was, "{user} moved although {was} is alive");
            }
        }
    }

    fn users_of(&self, backend: &str) -> Vec<&String> {
        self.routes
            .iter()
            .filter(|(_, b)| b.as_str() == backend)
            .map(|(user, _)| user)
            .collect()
    }
}

/// Calls each of USERS once through the LB (To = the user), with
/// `X-Region: REGION`, and collects who answered. Bounded by sipp's timeout.
fn call_users(dir: &Path, lb: SocketAddr, users: &[String], region: &str, tag: &str) -> Pass {
    run_users(dir, lb, users, "gw_uac.xml", region, tag)
}

/// Runs SCENARIO (a caller that logs `ROUTE <user> <backend>`) once for each
/// of USERS through the LB, and collects who answered.
fn run_users(
    dir: &Path,
    lb: SocketAddr,
    users: &[String],
    scenario: &str,
    region: &str,
    tag: &str,
) -> Pass {
    let file = |what: &str| dir.join(format!("uac_{tag}_{what}"));
    let csv = file("users.csv");
    let mut text = String::from("SEQUENTIAL\n");
    for user in users {
        text.push_str(user);
        text.push_str(";\n");
    }
    fs::write(&csv, text).expect("write users csv");
    let route_log: PathBuf = file("routes.log");
    let output = Command::new("timeout")
        .arg("60")
        .arg("sipp")
        .arg(lb.to_string())
        .arg("-sf")
        .arg(scenario_dir().join(scenario))
        .arg("-inf")
        .arg(&csv)
        .args(["-i", LOCALHOST, "-p", &free_port().to_string(), "-t", "u1"])
        .args(["-m", &users.len().to_string(), "-r", "100"])
        .args(["-key", "region", region])
        .args(["-timeout", "40s", "-timeout_error", "-nostdin"])
        .args(["-trace_logs", "-log_file"])
        .arg(&route_log)
        .args(["-trace_err", "-error_file"])
        .arg(file("errors.log"))
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run sipp caller");
    let logged = fs::read_to_string(&route_log).unwrap_or_default();
    let routes = routes_in(&logged);
    let errors = fs::read_to_string(file("errors.log")).unwrap_or_default();
    Pass {
        exit_code: output.status.code(),
        routes,
        report: format!(
            "caller pass {tag}: exit {:?}\n-- stderr --\n{}\n-- errors (tail) --\n{}",
            output.status.code(),
            tail(&String::from_utf8_lossy(&output.stderr), 10),
            tail(&errors, 30)
        ),
    }
}

/// Sends one INVITE through the LB from a raw socket and returns the final
/// response's status code.
fn raw_invite_status(lb: SocketAddr, headers: &[(&str, &str)]) -> Option<u16> {
    let peer = UdpPeer::bind();
    let mut request = RawRequest::new(
        "INVITE",
        &format!("sip:someone@{lb}"),
        Transport::Udp,
        peer.local_addr(),
    );
    for (name, value) in headers {
        request = request.header(name, value);
    }
    peer.send_to(request.render().as_bytes(), lb);
    let mut seen = Vec::new();
    let reply = peer.recv_final(Duration::from_secs(5), &mut seen)?;
    status_code(&reply)
}

/// Sends a control OPTIONS (`X-Action: ACTION`) to the test script and
/// returns the status it answered with.
fn control(lb: SocketAddr, action: &str) -> Option<u16> {
    let peer = UdpPeer::bind();
    let request = RawRequest::new(
        "OPTIONS",
        &format!("sip:control@{lb}"),
        Transport::Udp,
        peer.local_addr(),
    )
    .header("X-Action", action);
    peer.send_to(request.render().as_bytes(), lb);
    let mut seen = Vec::new();
    let reply = peer.recv_final(Duration::from_secs(5), &mut seen)?;
    status_code(&reply)
}

// ---------------------------------------------------------------------------
// The seed's load balancer
// ---------------------------------------------------------------------------

/// 3 backends × 300 users with `lb.py`: stable affinity, failover within the
/// probe bound without moving the survivors' users, and recovery.
#[test]
fn hash_affinity_survives_failover_and_recovery() {
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    let ports = [free_port(), free_port(), free_port()];
    let mut backends = start_backends(dir, &ports);
    let config = lb_config(&ports);
    let siphon = Siphon::start(&config, &seed_lb_script());
    let users: Vec<String> = (0..300).map(|i| format!("sub{i:03}")).collect();

    // Every user lands on one backend, and on the same one again.
    let first = call_users(dir, siphon.addr(), &users, "any", "first");
    first.assert_all_succeeded(users.len());
    for name in ["b1", "b2", "b3"] {
        assert!(
            !first.users_of(name).is_empty(),
            "backend {name} got no user: {:?}",
            first.routes
        );
    }
    let second = call_users(dir, siphon.addr(), &users, "any", "second");
    second.assert_all_succeeded(users.len());
    assert_eq!(
        first.routes, second.routes,
        "affinity changed between passes"
    );

    // Kill backend 2: marked down within interval × threshold + timeout.
    backends[1].kill();
    let bound = PROBE_INTERVAL.mul_f64(1.1) * PROBE_THRESHOLD + PROBE_TIMEOUT + SLACK;
    let took = wait_for_transition(&siphon, &backend_uri(2), "down", bound * 2);
    assert!(took <= bound, "marked down after {took:?}, bound {bound:?}");
    assert!(
        siphon
            .log_lines(&format!("uri={} ", backend_uri(2)))
            .iter()
            .any(|l| l.contains("2 consecutive failures (last: timeout)")),
        "the down line names the reason; log tail:\n{}",
        siphon.log_tail(20)
    );

    // All calls succeed again; only backend 2's users moved.
    let failover = call_users(dir, siphon.addr(), &users, "any", "failover");
    failover.assert_all_succeeded(users.len());
    failover.assert_only_moved_off(&first, "b2");

    // Restart it on its port: marked up, and its users return.
    backends[1] = Backend::start(dir, "b2", ports[1]);
    wait_for_transition(&siphon, &backend_uri(2), "up", Duration::from_secs(5));
    let recovered = call_users(dir, siphon.addr(), &users, "any", "recovered");
    recovered.assert_all_succeeded(users.len());
    assert_eq!(first.routes, recovered.routes, "users did not return");
}

/// 60 subscribers register with a bare To and are then called the way
/// softphones call (a display name, an upper-case host, `;transport=udp` in
/// the To): `lb.py`, unchanged, sends every call to the backend that took
/// the subscriber's REGISTER.
#[test]
fn calls_reach_the_backend_that_took_the_register_whatever_the_phone_adds() {
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    let ports = [free_port(), free_port(), free_port()];
    let _backends = start_backends(dir, &ports);
    let admin_port = free_port();
    let config = lb_config(&ports) + &format!("admin: {{listen: \"127.0.0.1:{admin_port}\"}}\n");
    let siphon = Siphon::start(&config, &seed_lb_script());
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let users: Vec<String> = (0..60).map(|i| format!("phone{i:02}")).collect();

    let registered = run_users(
        dir,
        siphon.addr(),
        &users,
        "gw_uac_register.xml",
        "any",
        "reg",
    );
    registered.assert_all_succeeded(users.len());
    for name in ["b1", "b2", "b3"] {
        assert!(
            !registered.users_of(name).is_empty(),
            "backend {name} took no REGISTER: {:?}",
            registered.routes
        );
    }
    let called = run_users(
        dir,
        siphon.addr(),
        &users,
        "gw_uac_phone.xml",
        "any",
        "call",
    );
    called.assert_all_succeeded(users.len());
    let strays: Vec<String> = users
        .iter()
        .filter(|user| called.routes[*user] != registered.routes[*user])
        .map(|user| {
            format!(
                "{user}: REGISTER -> {}, INVITE -> {}",
                registered.routes[user], called.routes[user]
            )
        })
        .collect();
    assert!(
        strays.is_empty(),
        "{} of {} calls missed the registering backend:\n{}",
        strays.len(),
        users.len(),
        strays.join("\n")
    );

    // The admin API's select names the same backend for each subscriber,
    // whatever form of the AoR it is asked about.
    for user in &users[..10] {
        let backend = registered.routes[user].trim_start_matches('b');
        let expected = format!("sip:backend{backend}.example.com:5060");
        for key in [
            format!("sip:{user}@example.com"),
            format!("%22Sub%22%20%3Csip:{user}@EXAMPLE.COM;transport=udp%3E"),
        ] {
            let answer = get_json(admin, &format!("/admin/gateways/backends/select?key={key}"));
            assert_eq!(answer["destination"]["uri"], expected.as_str(), "{answer}");
            assert_eq!(
                answer["hashed_key"],
                format!("sip:{user}@example.com").as_str()
            );
            assert_eq!(
                answer["ranking"].as_array().map(Vec::len),
                Some(3),
                "{answer}"
            );
        }
    }
    let (status, _) = common::get(admin, "/admin/gateways/nonesuch/select?key=x");
    assert_eq!(status, 404);
}

/// With every backend dead, `lb.py` answers 503 itself.
#[test]
fn all_backends_down_gets_the_scripts_503() {
    // Ports nobody listens on: probes time out.
    let ports = [free_port(), free_port(), free_port()];
    let config = lb_config(&ports);
    let siphon = Siphon::start(&config, &seed_lb_script());
    let bound = PROBE_INTERVAL.mul_f64(1.1) * PROBE_THRESHOLD + PROBE_TIMEOUT + SLACK;
    for n in 1..=3 {
        wait_for_transition(&siphon, &backend_uri(n), "down", bound * 2);
    }
    assert_eq!(raw_invite_status(siphon.addr(), &[]), Some(503));
    assert!(
        siphon.wait_for_log(
            "no healthy backend in 'backends' group",
            Duration::from_secs(2)
        ),
        "the script's error line; log tail:\n{}",
        siphon.log_tail(20)
    );
}

/// One backend behind `lb.py`, probed with a threshold of 3.
const SINGLE_CONFIG: &str = r#"listen:
  udp: ["127.0.0.1:@PORT@"]
  tcp: ["127.0.0.1:@PORT@"]
script:
  path: "script.py"
gateway:
  groups:
    - name: "backends"
      algorithm: hash
      probe: {enabled: true, interval_secs: 1, failure_threshold: 3, timeout_ms: 300}
      destinations:
        - uri: "sip:backend1.example.com:5060"
          address: "127.0.0.1:@B1@"
log: {level: info, format: pretty}
"#;

/// A 503 with Retry-After holds a destination down at once (whatever the
/// threshold) and for as long as it asks; then it comes back by itself.
#[test]
fn retry_after_holds_a_busy_backend_down() {
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    let port = free_port();
    let mut busy = Backend::start_scenario(dir, "gw_uas_busy.xml", &[("retry", "2")], port);
    let config = SINGLE_CONFIG.replace("@B1@", &port.to_string());
    let siphon = Siphon::start(&config, &seed_lb_script());
    let uri = backend_uri(1);
    wait_for_transition(&siphon, &uri, "down", Duration::from_secs(3));
    assert!(
        siphon
            .log_lines("-> down")
            .iter()
            .any(|l| l.contains("Retry-After hold of 2s (status 503)")),
        "log tail:\n{}",
        siphon.log_tail(20)
    );
    assert_eq!(raw_invite_status(siphon.addr(), &[]), Some(503));
    // Still answering 503: the hold is renewed, nothing comes back.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        siphon.log_lines("-> up").is_empty(),
        "{}",
        siphon.log_tail(20)
    );

    // The backend recovers: up once the hold has run out.
    busy.kill();
    let _healthy = Backend::start(dir, "b1", port);
    wait_for_transition(&siphon, &uri, "up", Duration::from_secs(5));
    let users = vec!["after".to_string()];
    let pass = call_users(dir, siphon.addr(), &users, "any", "after");
    pass.assert_all_succeeded(1);
    assert_eq!(pass.users_of("b1").len(), 1);
}

// ---------------------------------------------------------------------------
// The script API from a script of our own
// ---------------------------------------------------------------------------

const POOL_CONFIG: &str = r#"listen:
  udp: ["127.0.0.1:@PORT@"]
  tcp: ["127.0.0.1:@PORT@"]
script:
  path: "script.py"
gateway:
  groups:
    - name: "pool"
      algorithm: round_robin
      probe: {enabled: true, interval_secs: 1, failure_threshold: 2, timeout_ms: 300}
      destinations:
        - uri: "sip:east.example.com"
          address: "127.0.0.1:@EAST@"
          attrs: {region: "us-east"}
        - uri: "sip:west.example.com"
          address: "127.0.0.1:@WEST@"
          weight: 3
          attrs: {region: "us-west", tier: 1}
log: {level: info, format: pretty}
"#;

/// Routes INVITEs to `pool` filtered by `X-Region`; OPTIONS with `X-Action`
/// drive the rest of the API. `@DEAD@` is a port nobody listens on.
const POOL_SCRIPT: &str = r#"from siphon import proxy, gateway, log

# Defined at load time, before the daemon runs: its prober starts with it.
gateway.add_group(
    "dynamic",
    [{"uri": "sip:dynamic.example.com", "address": "127.0.0.1:@DEAD@", "attrs": {"tier": 2}}],
    algorithm="hash",
    probe={"enabled": True, "interval_secs": 1, "failure_threshold": 1, "timeout_ms": 200},
)

def describe():
    out = []
    for name in gateway.groups():
        for d in gateway.list(name):
            out.append(f"{d.group}|{d}|{d.address}|{d.weight}|{sorted(d.attrs.items())}|{d.healthy}|{bool(d)}")
    return " ; ".join(out)

@proxy.on_request
def route(request):
    if request.in_dialog:
        if request.loose_route():
            request.relay()
        else:
            request.reply(404, "Not Here")
        return
    action = request.header("X-Action")
    if action:
        verb, _, arg = action.partition(" ")
        if verb == "mark_down":
            ok = gateway.mark_down("pool", arg)
        elif verb == "mark_up":
            ok = gateway.mark_up("pool", arg)
        elif verb == "remove":
            ok = gateway.remove_group(arg)
        elif verb == "describe":
            log.info("DESCRIBE " + describe())
            log.info(f"UNKNOWN {gateway.select('nope')!r} {gateway.list('nope')!r}")
            ok = True
        elif verb == "select":
            d = gateway.select("pool", attrs={"tier": 1})
            log.info(f"SELECTED {d!r} {d.uri} {d.attrs['tier']}")
            ok = True
        else:
            ok = False
        request.reply(200 if ok else 404, "Done" if ok else "Unknown")
        return
    region = request.header("X-Region")
    attrs = None if region in (None, "any") else {"region": region}
    destination = gateway.select("pool", key=request.call_id, attrs=attrs)
    if not destination:
        request.reply(503, "No Match")
        return
    request.record_route()
    request.relay(destination)
"#;

#[test]
fn script_filters_by_attrs_and_marks_destinations() {
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    let (east_port, west_port) = (free_port(), free_port());
    let _east = Backend::start(dir, "east", east_port);
    let _west = Backend::start(dir, "west", west_port);
    let config = POOL_CONFIG
        .replace("@EAST@", &east_port.to_string())
        .replace("@WEST@", &west_port.to_string());
    let script = POOL_SCRIPT.replace("@DEAD@", &free_port().to_string());
    let siphon = Siphon::start(&config, &script);
    let lb = siphon.addr();
    let users = |prefix: &str| -> Vec<String> { (0..10).map(|i| format!("{prefix}{i}")).collect() };

    // attrs filter: every key present with an equal value.
    let west = call_users(dir, lb, &users("w"), "us-west", "west");
    west.assert_all_succeeded(10);
    assert_eq!(west.users_of("west").len(), 10, "{:?}", west.routes);
    let east = call_users(dir, lb, &users("e"), "us-east", "east");
    east.assert_all_succeeded(10);
    assert_eq!(east.users_of("east").len(), 10, "{:?}", east.routes);
    let both = call_users(dir, lb, &users("a"), "any", "both");
    both.assert_all_succeeded(10);
    assert_eq!(
        both.users_of("east").len(),
        5,
        "round robin: {:?}",
        both.routes
    );
    assert_eq!(
        raw_invite_status(lb, &[("X-Region", "eu-central")]),
        Some(503)
    );

    // mark_down holds the destination down, and probes do not lift it.
    assert_eq!(control(lb, "mark_down sip:west.example.com"), Some(200));
    assert!(
        siphon.wait_for_log_line(Duration::from_secs(2), |l| l.contains("up -> down")
            && l.contains("uri=sip:west.example.com ")
            && l.contains("source=script")
            && l.contains("marked down"))
    );
    assert_eq!(raw_invite_status(lb, &[("X-Region", "us-west")]), Some(503));
    std::thread::sleep(PROBE_INTERVAL * 2 + PROBE_TIMEOUT);
    assert_eq!(raw_invite_status(lb, &[("X-Region", "us-west")]), Some(503));
    let held = call_users(dir, lb, &users("h"), "any", "held");
    held.assert_all_succeeded(10);
    assert_eq!(held.users_of("east").len(), 10, "{:?}", held.routes);

    // mark_up brings it back; unknown uris are reported.
    assert_eq!(control(lb, "mark_up sip:west.example.com"), Some(200));
    let back = call_users(dir, lb, &users("u"), "us-west", "back");
    back.assert_all_succeeded(10);
    assert_eq!(back.users_of("west").len(), 10, "{:?}", back.routes);
    assert_eq!(control(lb, "mark_down sip:nobody.example.com"), Some(404));
    assert_eq!(control(lb, "select"), Some(200));
    assert!(siphon.wait_for_log(
        "SELECTED <Destination sip:west.example.com group=\"pool\"",
        Duration::from_secs(2)
    ));
    assert!(siphon.wait_for_log(" sip:west.example.com 1", Duration::from_secs(2)));

    // The script-defined group is probed (its port is dead) and listed.
    wait_for_transition(
        &siphon,
        "sip:dynamic.example.com",
        "down",
        Duration::from_secs(4),
    );
    assert_eq!(control(lb, "describe"), Some(200));
    let described = siphon.log_lines("DESCRIBE ");
    let line = described.last().expect("describe line");
    assert!(
        line.contains(&format!(
            "dynamic|sip:dynamic.example.com|127.0.0.1:{}|1|[('tier', '2')]|False|False",
            script_port(&script)
        )),
        "{line}"
    );
    assert!(
        line.contains(&format!(
            "pool|sip:west.example.com|127.0.0.1:{west_port}|3|[('region', 'us-west'), ('tier', '1')]|True|True"
        )),
        "{line}"
    );
    assert!(siphon.log().contains("UNKNOWN None []"));
    assert!(siphon
        .log_lines("gateway.select: unknown group")
        .iter()
        .any(|l| l.contains("group=nope")));

    // remove_group drops it (and stops its prober); a second remove is False.
    assert_eq!(control(lb, "remove dynamic"), Some(200));
    assert_eq!(control(lb, "remove dynamic"), Some(404));
    assert_eq!(control(lb, "describe"), Some(200));
    let after = siphon.log_lines("DESCRIBE ");
    let last = after.last().expect("describe line");
    assert!(!last.contains("dynamic|"), "{last}");
    assert!(last.contains("pool|sip:east.example.com"), "{last}");
    assert!(siphon.log().contains("gateway group removed group=dynamic"));
}

/// The dead port written into POOL_SCRIPT.
fn script_port(script: &str) -> String {
    let start = script.find("127.0.0.1:").expect("address in script") + "127.0.0.1:".len();
    script[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect()
}

/// `gateway.add_group` validates like the config: `siphon --check` fails on
/// the script's ValueError, which names the bad key.
#[test]
fn add_group_errors_name_the_key() {
    let config = "listen:\n  udp: [\"127.0.0.1:@PORT@\"]\nscript:\n  path: \"script.py\"\n";
    let cases: HashMap<&str, &str> = HashMap::from([
        (
            r#"[{"uri": "sip:a.example.com", "address": "127.0.0.1:5060", "wieght": 2}]"#,
            "destinations[0].wieght: unknown key",
        ),
        (
            r#"[{"uri": "sip:a.example.com", "address": "127.0.0.1:5060"}, {"uri": "sip:b.example.com", "address": "nonsense"}]"#,
            "destinations[1].address",
        ),
        (
            r#"[{"uri": "http://a.example.com", "address": "127.0.0.1:5060"}]"#,
            "destinations[0].uri",
        ),
        (
            r#"[{"uri": "sip:a.example.com", "address": "127.0.0.1:5060", "weight": -1}]"#,
            "destinations[0].weight",
        ),
        (
            r#"[{"uri": "sip:a.example.com", "address": "127.0.0.1:5060", "weight": 0}]"#,
            "destinations: every destination has weight 0",
        ),
        (
            r#"[{"uri": "sip:a.example.com", "address": "127.0.0.1:5060"}], algorithm="random""#,
            "algorithm: unknown algorithm",
        ),
        (
            r#"[{"uri": "sip:a.example.com", "address": "127.0.0.1:5060"}], probe={"enabled": True, "interval_secs": 0}"#,
            "probe.interval_secs: must be from 1 to 3600",
        ),
        (
            r#"[{"uri": "sip:a.example.com", "address": "127.0.0.1:5060"}], probe={"every": 3}"#,
            "probe.every: unknown key",
        ),
    ]);
    for (arguments, expected) in cases {
        let script = format!(
            "from siphon import proxy, gateway\ngateway.add_group(\"g\", {arguments})\n\n@proxy.on_request\ndef route(request):\n    request.reply(500)\n"
        );
        let outcome = run_check(config, &script);
        assert_eq!(outcome.code, Some(1), "{arguments}: {}", outcome.output);
        assert!(
            outcome.output.contains("ValueError") && outcome.output.contains(expected),
            "{arguments}: expected {expected:?} in\n{}",
            outcome.output
        );
    }
    // And a valid group passes the check.
    let script = "from siphon import proxy, gateway\ngateway.add_group(\"g\", [{\"uri\": \"sip:a.example.com\", \"address\": \"127.0.0.1:5060\", \"attrs\": {\"x\": True}}], algorithm=\"hash\")\nassert gateway.groups() == [\"g\"]\nassert gateway.list(\"g\")[0].attrs == {\"x\": \"true\"}\n\n@proxy.on_request\ndef route(request):\n    request.reply(500)\n";
    let outcome = run_check(config, script);
    assert_eq!(outcome.code, Some(0), "{}", outcome.output);
}

/// `request.to_uri.aor` gives scripts the key `gateway.select` hashes: the
/// address of record, whatever the phone wrote around it.
#[test]
fn scripts_read_the_address_of_record_of_a_uri() {
    let config = "listen:\n  udp: [\"127.0.0.1:@PORT@\"]\nscript:\n  path: \"script.py\"\n";
    let script = r#"from siphon import proxy

@proxy.on_request
def route(request):
    request.reply(200, f"{request.to_uri.aor} from {request.to_uri}")
"#;
    let siphon = Siphon::start(config, script);
    let peer = UdpPeer::bind();
    // RawRequest writes the Request-URI, without its parameters, as the To.
    let request = RawRequest::new(
        "OPTIONS",
        "sip:alice@EXAMPLE.com:5060;transport=udp",
        Transport::Udp,
        peer.local_addr(),
    );
    peer.send_to(request.render().as_bytes(), siphon.addr());
    let mut seen = Vec::new();
    let reply = peer
        .recv_final(Duration::from_secs(5), &mut seen)
        .expect("a final response");
    let status_line = reply.lines().next().unwrap_or_default();
    assert_eq!(
        status_line,
        "SIP/2.0 200 sip:alice@example.com from sip:alice@EXAMPLE.com:5060"
    );
}

/// `gateway.share_health: redis` with two LBs on one Redis: a backend that
/// LB 1's probes find dead, and one an operator marks down on LB 1, are
/// avoided by LB 2 (which does not probe) within a second, its log naming
/// lb1; LB 1's "up" brings them back on LB 2.
#[test]
fn a_backend_one_lb_finds_dead_is_avoided_by_the_other_within_a_second() {
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    let redis = common::redis::RedisServer::start();
    let ports = [free_port(), free_port(), free_port()];
    let mut backends = start_backends(dir, &ports);
    let sharing_lb = |instance: &str, probe: bool| {
        let shared = format!(
            "  share_health: redis\nregistrar: {{redis: {{url: \"{}\"}}}}\nserver: {{instance_id: {instance}}}\n",
            redis.url()
        );
        let config =
            lb_config(&ports).replace("log: {level: info", &format!("{shared}log: {{level: info"));
        if probe {
            config
        } else {
            config.replace("probe: {enabled: true,", "probe: {enabled: false,")
        }
    };
    let admin_port = free_port();
    let lb1 = Siphon::start(
        &(sharing_lb("lb1", true) + &format!("admin: {{listen: \"127.0.0.1:{admin_port}\"}}\n")),
        &seed_lb_script(),
    );
    let lb1_admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let admin_port = free_port();
    let lb2 = Siphon::start(
        &(sharing_lb("lb2", false) + &format!("admin: {{listen: \"127.0.0.1:{admin_port}\"}}\n")),
        &seed_lb_script(),
    );
    let lb2_admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    for lb in [&lb1, &lb2] {
        assert!(
            lb.wait_for_log_line(Duration::from_secs(5), |l| l
                .contains("sharing gateway health")),
            "{}",
            lb.log_tail(20)
        );
    }
    let users: Vec<String> = (0..60).map(|i| format!("sub{i:02}")).collect();
    let first = call_users(dir, lb2.addr(), &users, "any", "first");
    first.assert_all_succeeded(users.len());
    assert!(!first.users_of("b2").is_empty(), "{:?}", first.routes);

    // LB 1's probes find backend 2 dead; LB 2 follows within a second.
    backends[1].kill();
    wait_for_transition(&lb1, &backend_uri(2), "down", Duration::from_secs(6));
    let took = wait_for_transition(&lb2, &backend_uri(2), "down", Duration::from_secs(3));
    assert!(
        took <= Duration::from_secs(1),
        "LB 2 followed after {took:?}"
    );
    let line = lb2
        .log_lines(&format!("uri={} ", backend_uri(2)))
        .join("\n");
    assert!(
        line.contains("source=peer")
            && line.contains("node=lb1")
            && line.contains("peer_source=probe"),
        "LB 2's line names the node and its source: {line}"
    );
    let listed = get_json(lb2_admin, "/admin/gateways");
    let b2 = &listed["groups"][0]["destinations"][1];
    assert_eq!(b2["healthy"], false, "{listed}");
    assert_eq!(
        b2["peers_reporting_down"],
        serde_json::json!(["lb1"]),
        "{listed}"
    );
    let moved = call_users(dir, lb2.addr(), &users, "any", "moved");
    moved.assert_all_succeeded(users.len());
    moved.assert_only_moved_off(&first, "b2");

    // An operator's mark on LB 1 reaches LB 2 too, and so does lifting it.
    let mark = |state: &str| {
        let body = format!("{{\"uri\": \"{}\"}}", backend_uri(3));
        let path = format!("/admin/gateways/backends/{state}");
        let (status, answer) = common::http(lb1_admin, "POST", &path, Some(&body));
        assert_eq!(status, 200, "{answer}");
    };
    mark("down");
    let took = wait_for_transition(&lb2, &backend_uri(3), "down", Duration::from_secs(3));
    assert!(
        took <= Duration::from_secs(1),
        "LB 2 followed the mark after {took:?}"
    );
    assert!(
        lb2.log_lines(&format!("uri={} ", backend_uri(3)))
            .iter()
            .any(|l| l.contains("peer_source=admin") && l.contains("marked down")),
        "{}",
        lb2.log_tail(10)
    );
    mark("up");
    wait_for_transition(&lb2, &backend_uri(3), "up", Duration::from_secs(2));

    // Backend 2 comes back: LB 1's probes say so, and LB 2 uses it again.
    backends[1] = Backend::start(dir, "b2", ports[1]);
    wait_for_transition(&lb1, &backend_uri(2), "up", Duration::from_secs(5));
    wait_for_transition(&lb2, &backend_uri(2), "up", Duration::from_secs(2));
    let back = call_users(dir, lb2.addr(), &users, "any", "back");
    back.assert_all_succeeded(users.len());
    assert_eq!(first.routes, back.routes, "users did not return");
}
