//! End to end: a backend that dies costs no call. The seed's `lb.py`, run
//! unchanged, in front of three sipp backends with the seed's probe
//! settings (every 5 s, 3 failures), while one backend hangs (SIGSTOP),
//! crashes (SIGKILL) or sheds load (503 to every INVITE, 200 to OPTIONS).
//! The caller (`gw_uac.xml`) logs which backend took each user, and the
//! admin API says which backends each user's key ranks first and second.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use common::gateway::{backend_uri, routes_in, seed_lb_script, wait_for_transition, Backend};
use common::{free_port, get_json, RawRequest, Siphon, SippOutcome, SippSpec, Transport, UdpPeer};

/// The seed's LB config with 127.0.0.1 addresses and the seed's probe
/// settings; `@EJECT@` is the passive ejection (short, so that a test can
/// see a restarted backend come back).
const LB_CONFIG: &str = r#"listen:
  udp: ["127.0.0.1:@PORT@"]
  tcp: ["127.0.0.1:@PORT@"]
script:
  path: "script.py"
gateway:
  groups:
    - name: "backends"
      algorithm: hash
      probe: {enabled: @PROBE@, interval_secs: 5, failure_threshold: 3}
      passive: {failure_threshold: 3, eject_secs: @EJECT@}
      destinations:
        - uri: "sip:backend1.example.com:5060"
          address: "127.0.0.1:@B1@"
        - uri: "sip:backend2.example.com:5060"
          address: "127.0.0.1:@B2@"
        - uri: "sip:backend3.example.com:5060"
          address: "127.0.0.1:@B3@"
admin: {listen: "127.0.0.1:@ADMIN@"}
log: {level: info, format: pretty}
"#;

/// An LB in front of backends on PORTS, and its admin address.
fn start_lb(ports: [u16; 3], probe: bool, eject_secs: u64) -> (Siphon, SocketAddr) {
    let admin = free_port();
    let config = LB_CONFIG
        .replace("@B1@", &ports[0].to_string())
        .replace("@B2@", &ports[1].to_string())
        .replace("@B3@", &ports[2].to_string())
        .replace("@PROBE@", if probe { "true" } else { "false" })
        .replace("@EJECT@", &eject_secs.to_string())
        .replace("@ADMIN@", &admin.to_string());
    let siphon = Siphon::start(&config, &seed_lb_script());
    (siphon, SocketAddr::from(([127, 0, 0, 1], admin)))
}

fn users(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("sub{i:04}")).collect()
}

/// Backend name (`b1`..`b3`) of a destination uri.
fn name_of(uri: &str) -> String {
    (1..=3)
        .find(|&n| backend_uri(n) == uri)
        .map_or_else(|| uri.to_string(), |n| format!("b{n}"))
}

/// Each user's ranking (backend names, best first) as the admin API gives
/// it for the key `lb.py` hashes (the To URI).
fn rankings(admin: SocketAddr, lb: SocketAddr, users: &[String]) -> BTreeMap<String, Vec<String>> {
    users
        .iter()
        .map(|user| {
            let key = format!("sip:{user}@{lb}");
            let answer = get_json(admin, &format!("/admin/gateways/backends/select?key={key}"));
            let ranking = answer["ranking"]
                .as_array()
                .map(|list| {
                    list.iter()
                        .filter_map(|d| d["uri"].as_str())
                        .map(name_of)
                        .collect()
                })
                .unwrap_or_default();
            (user.clone(), ranking)
        })
        .collect()
}

/// Starts a caller that calls each of USERS once at RATE calls/s.
fn caller(dir: &Path, lb: SocketAddr, users: &[String], rate: u32, tag: &str) -> common::Sipp {
    let csv = dir.join(format!("{tag}_users.csv"));
    let mut text = String::from("SEQUENTIAL\n");
    for user in users {
        text.push_str(user);
        text.push_str(";\n");
    }
    fs::write(&csv, text).expect("write users csv");
    SippSpec::new(tag, "gw_uac.xml", Transport::Udp)
        .target(lb)
        .inf(&csv)
        .key("region", "any")
        .calls(users.len() as u32)
        .rate(rate)
        .timeout_secs(60)
        .spawn(dir)
}

/// The first `up -> down` line for URI, if any.
fn first_down_line(siphon: &Siphon, uri: &str) -> Option<String> {
    let field = format!("uri={uri} ");
    siphon
        .log_lines("gateway destination up -> down")
        .into_iter()
        .find(|line| line.contains(&field))
}

/// The failover lines that name URI as the destination that failed.
fn failovers_from(siphon: &Siphon, uri: &str) -> usize {
    let field = format!("failed={uri} ");
    siphon
        .log_lines(" failover")
        .iter()
        .filter(|line| line.contains(&field))
        .count()
}

/// What a run under load must show when backend 2 stopped answering at
/// some point: no call lost beyond `lost_at_most`, every user of another
/// backend unmoved, and every user of backend 2 served by its second
/// choice in HRW order (so spread over both others).
fn assert_served_by_the_ranking(
    outcome: &SippOutcome,
    ranked: &BTreeMap<String, Vec<String>>,
    lost_at_most: u64,
) {
    let failed = outcome.stats.failed_calls;
    eprintln!(
        "{}: {} calls, {} successful, {failed} failed",
        outcome.name, outcome.stats.outgoing_calls, outcome.stats.successful_calls
    );
    assert!(
        failed <= lost_at_most,
        "{failed} calls failed (at most {lost_at_most} allowed)\n{}",
        outcome.report()
    );
    let routes = routes_in(&outcome.actions_log());
    assert!(
        routes.len() as u64 + failed >= ranked.len() as u64,
        "{} of {} calls answered\n{}",
        routes.len(),
        ranked.len(),
        outcome.report()
    );
    let mut moved_to = BTreeMap::<String, usize>::new();
    for (user, backend) in &routes {
        let ranking = &ranked[user];
        if ranking[0] == "b2" && backend != "b2" {
            assert_eq!(
                backend, &ranking[1],
                "{user} went to {backend}, not its second choice"
            );
            *moved_to.entry(backend.clone()).or_default() += 1;
        } else {
            assert_eq!(
                backend, &ranking[0],
                "{user} moved although its backend is alive"
            );
        }
    }
    for other in ["b1", "b3"] {
        assert!(
            moved_to.get(other).copied().unwrap_or(0) > 0,
            "backend 2's users were not spread over b1 and b3: {moved_to:?}"
        );
    }
}

/// The passive ejection is what took backend 2 out, and soon: the first
/// down line names `source=passive`, long before three failed probes 5 s
/// apart could.
fn assert_ejected_passively(siphon: &Siphon, since: Instant) {
    let uri = backend_uri(2);
    let took = wait_for_transition(siphon, &uri, "down", Duration::from_secs(8));
    let line = first_down_line(siphon, &uri).expect("a down line");
    assert!(
        line.contains("source=passive"),
        "not a passive ejection: {line}"
    );
    assert!(
        since.elapsed() < Duration::from_secs(20) && took < Duration::from_secs(8),
        "ejected only after {took:?}"
    );
}

/// A 150 calls/s run of USERS through an LB over three backends, during
/// which backend 2 is lost by LOSE two seconds in.
struct LossUnderLoad {
    siphon: Siphon,
    admin: SocketAddr,
    ports: [u16; 3],
    backends: Vec<Backend>,
    ranked: BTreeMap<String, Vec<String>>,
    outcome: SippOutcome,
    work: tempfile::TempDir,
}

fn lose_backend_2_under_load(
    users: usize,
    eject_secs: u64,
    tag: &str,
    lose: impl FnOnce(&mut Backend),
) -> LossUnderLoad {
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    let ports = [free_port(), free_port(), free_port()];
    let mut backends: Vec<Backend> = (0..3)
        .map(|i| Backend::start(dir, &format!("b{}", i + 1), ports[i]))
        .collect();
    let (siphon, admin) = start_lb(ports, true, eject_secs);
    let users = self::users(users);
    let ranked = rankings(admin, siphon.addr(), &users);
    let run = caller(dir, siphon.addr(), &users, 150, tag);
    thread::sleep(Duration::from_secs(2));
    lose(&mut backends[1]);
    assert_ejected_passively(&siphon, Instant::now());
    let outcome = run.wait();
    // Only calls already set up on it when it was lost may fail (their BYE).
    assert_served_by_the_ranking(&outcome, &ranked, 5);
    LossUnderLoad {
        siphon,
        admin,
        ports,
        backends,
        ranked,
        outcome,
        work,
    }
}

#[test]
fn a_frozen_backend_costs_no_call_and_is_ejected_long_before_probes_notice() {
    let run = lose_backend_2_under_load(1200, 30, "frozen", |backend| backend.freeze());
    let (siphon, admin) = (&run.siphon, run.admin);
    assert_eq!(run.outcome.stats.outgoing_calls, 1200);
    // Passive health stopped new calls to it within about a second (the
    // silence limit): at 50 calls/s for backend 2 that is some fifty
    // failovers, where the 6 s left of the run would have sent it 300.
    let failovers = failovers_from(siphon, &backend_uri(2));
    eprintln!("{failovers} calls failed over from the frozen backend");
    assert!(
        (1..=120).contains(&failovers),
        "{failovers} calls failed over from the frozen backend"
    );

    // What an operator sees: the failovers counted by reason, and the
    // frozen backend ejected in the admin API.
    let (_, metrics) = common::get(admin, "/metrics");
    let counted =
        format!("siphon_failovers_total{{group=\"backends\",reason=\"timeout\"}} {failovers}");
    assert!(metrics.contains(&counted), "no `{counted}` in:\n{metrics}");
    let listing = get_json(admin, "/admin/gateways");
    let frozen = listing["groups"][0]["destinations"]
        .as_array()
        .and_then(|list| list.iter().find(|d| d["uri"] == backend_uri(2).as_str()))
        .cloned()
        .expect("backend 2 listed");
    assert_eq!(frozen["healthy"], false, "{frozen}");
    assert_eq!(frozen["ejected"], true, "{frozen}");
}

#[test]
fn a_killed_backend_costs_no_call_and_its_users_return_when_it_restarts() {
    // A short ejection, so the restarted backend is back within the test.
    let mut run = lose_backend_2_under_load(900, 3, "killed", |backend| backend.kill());
    let dir = run.work.path().to_path_buf();
    let lb = run.siphon.addr();

    // Restarted on its port: once the ejection is over, a probe success
    // brings it back, and its users return to it.
    run.backends[1] = Backend::start(&dir, "b2", run.ports[1]);
    wait_for_transition(&run.siphon, &backend_uri(2), "up", Duration::from_secs(15));
    let again = users(300);
    let outcome = caller(&dir, lb, &again, 100, "restarted").wait();
    outcome.assert_all_succeeded();
    let routes = routes_in(&outcome.actions_log());
    for (user, backend) in &routes {
        assert_eq!(backend, &run.ranked[user][0], "{user} did not return");
    }
    assert_eq!(routes.len(), again.len());
}

#[test]
fn a_backend_that_refuses_every_invite_with_503_costs_no_call() {
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    let ports = [free_port(), free_port(), free_port()];
    let _backends = [
        Backend::start(dir, "b1", ports[0]),
        Backend::start_scenario(dir, "gw_uas_refuse.xml", &[("backend", "b2")], ports[1]),
        Backend::start(dir, "b3", ports[2]),
    ];
    let (siphon, admin) = start_lb(ports, true, 30);
    let users = users(600);
    let ranked = rankings(admin, siphon.addr(), &users);
    let started = Instant::now();
    let outcome = caller(dir, siphon.addr(), &users, 150, "refused").wait();
    outcome.assert_all_succeeded();
    assert_served_by_the_ranking(&outcome, &ranked, 0);
    let routes = routes_in(&outcome.actions_log());
    assert!(routes.values().all(|b| b != "b2"), "a 503 reached a caller");
    // Its OPTIONS get 200, yet passive health took it out.
    assert_ejected_passively(&siphon, started);
    let failovers = failovers_from(&siphon, &backend_uri(2));
    assert!(
        (3..=60).contains(&failovers),
        "{failovers} calls failed over from the refusing backend"
    );
}

#[test]
fn a_cancel_during_failover_ends_the_call_with_487_and_opens_no_new_branch() {
    // Three backends that take INVITEs and never answer.
    let silent: Vec<UdpPeer> = (0..3).map(|_| UdpPeer::bind()).collect();
    let ports: Vec<u16> = silent.iter().map(|p| p.local_addr().port()).collect();
    let (siphon, _admin) = start_lb([ports[0], ports[1], ports[2]], false, 30);
    let lb = siphon.addr();

    let caller = UdpPeer::bind();
    let invite = RawRequest::new(
        "INVITE",
        &format!("sip:someone@{lb}"),
        Transport::Udp,
        caller.local_addr(),
    );
    caller.send_to(invite.render().as_bytes(), lb);
    // The first choice stays silent for the 1 s limit: the second gets it.
    thread::sleep(Duration::from_millis(1_400));
    caller.send_to(invite.cancel().render().as_bytes(), lb);
    let mut seen = Vec::new();
    let terminated = caller.recv_until(Duration::from_secs(3), &mut seen, |m| {
        common::status_code(m) == Some(487)
    });
    let codes: Vec<Option<u16>> = seen
        .iter()
        .chain(terminated.iter())
        .map(|m| common::status_code(m))
        .collect();
    assert!(codes.contains(&Some(487)), "no 487: {codes:?}");
    assert!(
        codes.contains(&Some(200)),
        "the CANCEL got no 200: {codes:?}"
    );

    // Exactly two backends were tried, and the third never heard of it.
    thread::sleep(Duration::from_millis(1_500));
    let tried: Vec<usize> = silent
        .iter()
        .map(|backend| {
            let mut invites = 0;
            while let Some((message, _)) = backend.recv(Duration::from_millis(50)) {
                invites += usize::from(message.starts_with("INVITE "));
            }
            invites
        })
        .collect();
    assert_eq!(
        tried.iter().filter(|&&n| n > 0).count(),
        2,
        "INVITEs per backend: {tried:?}\n{}",
        siphon.log_tail(20)
    );
    let failovers = siphon.log_lines(" failover").len();
    assert_eq!(failovers, 1, "{}", siphon.log_tail(20));
}
