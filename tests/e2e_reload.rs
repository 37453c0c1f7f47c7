//! End to end: changing a running LB. SIGHUP (and `POST /admin/reload`)
//! read the YAML again: a destination added takes calls under load, one
//! removed takes no new call while its calls end cleanly, a broken file is
//! refused and the old config serves on, a listener change is reported as
//! needing a restart, and health and active calls survive.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::calls::{backend, backends, callers, destination, lb_config, outcomes, users, Lb};
use common::gateway::{backend_uri, seed_lb_script};
use common::{free_port, http};

/// Waits for the reload's summary line after log byte `from`.
fn wait_for_reload(lb: &Lb, from: usize, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = lb.siphon.log();
        if String::from_utf8_lossy(log.as_bytes().get(from..).unwrap_or_default()).contains(needle)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no `{needle}` after the reload:\n{}",
            lb.siphon.log_tail(30)
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_destination_added_to_the_yaml_takes_calls_after_sighup_with_no_failed_call() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_backends, ports) = backends(dir.path(), 2);
    let one = destination(1, ports[0], "");
    let lb = Lb::start("weighted", "", &one, &seed_lb_script());

    // 10 s of calls; the YAML gains backend 2 after 3 s.
    let load = callers("load", lb.addr(), &users("u", 200), 20, 200).spawn(dir.path());
    thread::sleep(Duration::from_secs(3));
    let both = one.clone() + &destination(2, ports[1], "");
    lb.rewrite_config(&lb_config("weighted", "", &both, 14_400));
    let from = lb.siphon.log().len();
    assert!(lb.siphon.signal("HUP"));
    wait_for_reload(&lb, from, "destination sip:backend2.example.com:5060 added");
    let outcome = load.wait();
    outcome.assert_all_succeeded();
    let (routes, _) = outcomes(&outcome);
    eprintln!("{routes:?}");
    assert!(
        routes.get("b2").copied().unwrap_or(0) >= 40,
        "b2 took calls: {routes:?}"
    );
    assert!(routes.get("b1").copied().unwrap_or(0) >= 100, "{routes:?}");
}

#[test]
fn a_destination_removed_takes_no_new_call_while_its_calls_end_cleanly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_backends, ports) = backends(dir.path(), 2);
    let one = destination(1, ports[0], "");
    let both = one.clone() + &destination(2, ports[1], "");
    let lb = Lb::start("least_calls", "", &both, &seed_lb_script());

    let long = callers("long", lb.addr(), &users("l", 10), 20, 3000).spawn(dir.path());
    let deadline = Instant::now() + Duration::from_secs(5);
    while lb.load(2).0 < 4 {
        assert!(
            Instant::now() < deadline,
            "calls up on b2: {:?}",
            lb.load(2)
        );
        thread::sleep(Duration::from_millis(50));
    }
    lb.rewrite_config(&lb_config("least_calls", "", &one, 14_400));
    let from = lb.siphon.log().len();
    let (status, body) = http(lb.admin, "POST", "/admin/reload", None);
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(answer["ok"], true);
    let changes = answer["changes"]["groups_changed"][0]["changes"].to_string();
    assert!(
        changes.contains("destination sip:backend2.example.com:5060 removed"),
        "{answer}"
    );
    wait_for_reload(&lb, from, "removed");

    let after = callers("after", lb.addr(), &users("a", 20), 20, 100).run(dir.path());
    after.assert_all_succeeded();
    assert_eq!(outcomes(&after).0.get("b2"), None, "no new call to b2");
    // b2's calls in progress end with their BYEs, answered by b2.
    let long = long.wait();
    long.assert_all_succeeded();
    assert!(outcomes(&long).0.get("b2").copied().unwrap_or(0) >= 4);
}

#[test]
fn a_broken_yaml_is_refused_and_the_old_one_keeps_serving() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let _b1 = backend(dir.path(), 1, port);
    let one = destination(1, port, "");
    let lb = Lb::start("weighted", "", &one, &seed_lb_script());
    let broken = lb_config(
        "weighted",
        "",
        &destination(1, port, ", weight: -3"),
        14_400,
    );
    lb.rewrite_config(&broken);
    let (status, body) = http(lb.admin, "POST", "/admin/reload", None);
    assert_eq!(status, 422, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(answer["ok"], false);
    let error = answer["error"].as_str().unwrap_or("");
    assert!(
        error.contains("gateway.groups[0].destinations[0].weight"),
        "{error}"
    );
    assert!(lb.siphon.wait_for_log(
        "reload refused; the running config stays",
        Duration::from_secs(2)
    ));
    // The same by SIGHUP, and calls go on.
    assert!(lb.siphon.signal("HUP"));
    let outcome = callers("still", lb.addr(), &users("s", 10), 20, 100).run(dir.path());
    outcome.assert_all_succeeded();
    assert_eq!(outcomes(&outcome).0.get("b1"), Some(&10));
}

#[test]
fn a_listener_change_needs_a_restart_and_the_rest_applies() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_backends, ports) = backends(dir.path(), 2);
    let one = destination(1, ports[0], "");
    let lb = Lb::start("weighted", "", &one, &seed_lb_script());
    let both = one.clone() + &destination(2, ports[1], ", weight: 3");
    let moved = lb_config("weighted", "", &both, 14_400).replace(
        "udp: [\"127.0.0.1:@PORT@\"]",
        &format!("udp: [\"127.0.0.1:{}\"]", free_port()),
    );
    lb.rewrite_config(&moved);
    let (status, body) = http(lb.admin, "POST", "/admin/reload", None);
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        answer["changes"]["needs_restart"],
        serde_json::json!(["listen"])
    );
    assert!(lb
        .siphon
        .wait_for_log("listen changed and needs a restart", Duration::from_secs(2)));
    // The old listener serves on, with the new destination.
    let outcome = callers("after", lb.addr(), &users("x", 20), 20, 100).run(dir.path());
    outcome.assert_all_succeeded();
    assert!(outcomes(&outcome).0.get("b2").copied().unwrap_or(0) >= 10);
}

#[test]
fn health_and_active_calls_survive_a_reload() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_backends, ports) = backends(dir.path(), 2);
    let both = destination(1, ports[0], "") + &destination(2, ports[1], "");
    let lb = Lb::start("least_calls", "", &both, &seed_lb_script());
    assert_eq!(lb.act("down", 1, true).0, 200);
    let long = callers("long", lb.addr(), &users("l", 6), 20, 4000).spawn(dir.path());
    let deadline = Instant::now() + Duration::from_secs(5);
    while lb.load(2).0 < 6 {
        assert!(
            Instant::now() < deadline,
            "calls up on b2: {:?}",
            lb.load(2)
        );
        thread::sleep(Duration::from_millis(50));
    }
    let changed =
        destination(1, ports[0], "") + &destination(2, ports[1], ", weight: 2, max_calls: 50");
    lb.rewrite_config(&lb_config("least_calls", "", &changed, 14_400));
    let (status, body) = http(lb.admin, "POST", "/admin/reload", None);
    assert_eq!(status, 200, "{body}");
    let b1 = lb.destination(1);
    assert_eq!(b1["held_down"], true, "{b1}");
    assert_eq!(b1["healthy"], false);
    let b2 = lb.destination(2);
    assert_eq!(b2["active_calls"], 6, "{b2}");
    assert_eq!(
        (b2["weight"].as_u64(), b2["max_calls"].as_u64()),
        (Some(2), Some(50))
    );
    long.wait().assert_all_succeeded();
    lb.wait_for_no_calls("backends", &[1, 2], Duration::from_secs(3));
}

#[test]
fn transaction_limits_change_in_place() {
    // A backend that never answers: each INVITE holds its transaction.
    let silent = common::UdpPeer::bind();
    let one = destination(1, silent.local_addr().port(), "");
    let lb = Lb::start("weighted", "", &one, &seed_lb_script());
    let limited = lb_config("weighted", "", &one, 14_400) + "limits: {max_transactions: 1}\n";
    lb.rewrite_config(&limited);
    let (status, body) = http(lb.admin, "POST", "/admin/reload", None);
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        answer["changes"]["applied"],
        serde_json::json!(["limits.max_transactions"])
    );
    assert_eq!(answer["changes"]["needs_restart"], serde_json::json!([]));

    let caller = common::UdpPeer::bind();
    let invite = || {
        let request = common::RawRequest::new(
            "INVITE",
            &format!("sip:bob@{}", lb.addr()),
            common::Transport::Udp,
            caller.local_addr(),
        );
        caller.send_to(request.render().as_bytes(), lb.addr());
        let mut codes = Vec::new();
        while let Some((text, _)) = caller.recv(Duration::from_millis(500)) {
            codes.push(text.lines().next().unwrap_or("").to_string());
        }
        codes
    };
    assert_eq!(
        invite(),
        ["SIP/2.0 100 Trying"],
        "the first holds the one transaction"
    );
    let second = invite();
    assert_eq!(second.len(), 1, "{second:?}");
    assert!(second[0].starts_with("SIP/2.0 503"), "{second:?}");
    assert!(lb.metric("siphon_transactions_refused_total") >= 1.0);
}

#[test]
fn a_reload_puts_back_a_group_the_admin_api_removed_and_drops_one_it_added() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let _b1 = backend(dir.path(), 1, port);
    let one = destination(1, port, "");
    let lb = Lb::start("weighted", "", &one, &seed_lb_script());
    let (status, _) = http(lb.admin, "DELETE", "/admin/gateways/backends", None);
    assert_eq!(status, 200);
    let added = format!(
        "{{\"name\": \"extra\", \"destinations\": [{{\"uri\": \"{}\", \"address\": \"127.0.0.1:{port}\"}}]}}",
        backend_uri(2)
    );
    let (status, body) = http(lb.admin, "POST", "/admin/gateways", Some(&added));
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(answer["source"], "runtime");
    let (status, body) = http(lb.admin, "POST", "/admin/reload", None);
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let mut undone: Vec<String> =
        serde_json::from_value(answer["runtime_undone"].clone()).expect("list");
    undone.sort();
    assert_eq!(undone, ["backends", "extra"]);
    assert_eq!(lb.destination(1)["source"], "file");
    let outcome = callers("back", lb.addr(), &users("b", 5), 10, 100).run(dir.path());
    outcome.assert_all_succeeded();
}

#[test]
fn the_edge_takes_a_new_scanner_list_from_a_reload() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let _backend = common::gateway::Backend::start(dir.path(), "b1", port);
    let one = destination(1, port, "");
    let lb = Lb::start("weighted", "", &one, &seed_lb_script());
    let caller = common::UdpPeer::bind();
    let options = || {
        let request = common::RawRequest::new(
            "OPTIONS",
            &format!("sip:bob@{}", lb.addr()),
            common::Transport::Udp,
            caller.local_addr(),
        )
        .header("User-Agent", "evilbot/1.0");
        caller.send_to(request.render().as_bytes(), lb.addr());
        caller
            .recv(Duration::from_secs(1))
            .map(|(text, _)| text.lines().next().unwrap_or("").to_string())
    };
    assert_eq!(
        options().as_deref(),
        Some("SIP/2.0 200 OK"),
        "relayed to b1"
    );
    let scanners = lb_config("weighted", "", &one, 14_400)
        + "security:\n  scanner_user_agents: [\"evilbot\"]\n";
    lb.rewrite_config(&scanners);
    let (status, body) = http(lb.admin, "POST", "/admin/reload", None);
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        answer["changes"]["applied"],
        serde_json::json!(["security.scanner_user_agents"])
    );
    assert_eq!(options(), None, "a scanner gets no answer");
}

/// proxy.py for example.com; `@SECURITY@` and `@AUTH@` filled in.
const PROXY_CONFIG: &str = r#"listen:
  udp: ["127.0.0.1:@PORT@"]
domain:
  local: ["example.com"]
script:
  path: "script.py"
security:
@SECURITY@
@AUTH@
log: {level: info, format: pretty}
"#;

fn proxy_config(security: &str, auth: &str) -> String {
    PROXY_CONFIG
        .replace("@SECURITY@", security)
        .replace("@AUTH@", auth)
}

/// Rewrites the config, sends SIGHUP, and waits for the reload's line.
fn sighup(proxy: &common::Siphon, config: &str, needle: &str) {
    let from = proxy.log().len();
    proxy.replace_config(config);
    assert!(proxy.signal("HUP"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(proxy.log().as_bytes().get(from..).unwrap_or_default())
        .contains(needle)
    {
        assert!(
            Instant::now() < deadline,
            "no `{needle}`:\n{}",
            proxy.log_tail(30)
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// An INVITE from CALLER through PROXY to TARGET on another domain: the
/// final answer, and whether the target heard it.
fn foreign_invite(
    proxy: &common::Siphon,
    caller: &common::UdpPeer,
    target: &common::UdpPeer,
) -> (Option<String>, bool) {
    let request = common::RawRequest::new(
        "INVITE",
        &format!("sip:+15550100@{}", target.local_addr()),
        common::Transport::Udp,
        caller.local_addr(),
    );
    caller.send_to(request.render().as_bytes(), proxy.addr());
    let heard = target.recv(Duration::from_secs(1)).is_some();
    let answer = caller.recv_until(Duration::from_secs(2), &mut Vec::new(), |m| {
        common::status_code(m).is_some_and(|c| c >= 300)
    });
    (answer, heard)
}

#[test]
fn trusted_networks_and_relay_targets_change_with_sighup() {
    let relay_to = "  relay_to: {allow: [\"127.0.0.0/8\"]}";
    let proxy = common::Siphon::start(
        &proxy_config(&format!("  trusted: []\n{relay_to}"), ""),
        &common::example_script("proxy.py"),
    );
    let pbx = common::UdpPeer::bind_ip("127.0.0.83");
    let target = common::UdpPeer::bind();
    let (answer, heard) = foreign_invite(&proxy, &pbx, &target);
    assert_eq!(answer.as_deref().and_then(common::status_code), Some(403));
    assert!(!heard, "an untrusted peer is no one to relay for");

    sighup(
        &proxy,
        &proxy_config(&format!("  trusted: [\"127.0.0.83\"]\n{relay_to}"), ""),
        "security.trusted changed and applies now",
    );
    let (_, heard) = foreign_invite(&proxy, &pbx, &target);
    assert!(heard, "the peer trusted since the reload is relayed");

    // relay_to's deny list, in place: the same target is refused now.
    sighup(
        &proxy,
        &proxy_config(
            "  trusted: [\"127.0.0.83\"]\n  relay_to: {allow: [\"127.0.0.0/8\"], deny: [\"127.0.0.1/32\"]}",
            "",
        ),
        "security.relay_to changed and applies now",
    );
    // (The first target still hears the retransmissions of its INVITE.)
    let other_target = common::UdpPeer::bind();
    let (answer, heard) = foreign_invite(&proxy, &pbx, &other_target);
    assert!(!heard, "a denied target is not dialled");
    let code = answer.as_deref().and_then(common::status_code);
    assert!(code.is_some_and(|c| c >= 400), "{answer:?}");
    assert!(
        !proxy.log().contains("needs a restart"),
        "{}",
        proxy.log_tail(20)
    );
}

#[test]
fn an_auth_realm_changed_by_sighup_is_the_one_challenged_with() {
    let auth =
        |realm: &str| format!("auth:\n  realm: \"{realm}\"\n  credentials: {{alice: \"s3cret\"}}");
    let relay_to = "  relay_to: {allow: [\"127.0.0.0/8\"]}";
    let proxy = common::Siphon::start(
        &proxy_config(relay_to, &auth("example.com")),
        &common::example_script("proxy.py"),
    );
    let caller = common::UdpPeer::bind();
    let target = common::UdpPeer::bind();
    let realm_challenged = |caller: &common::UdpPeer| {
        let (answer, heard) = foreign_invite(&proxy, caller, &target);
        assert!(!heard);
        let answer = answer.expect("a challenge");
        assert_eq!(common::status_code(&answer), Some(407), "{answer}");
        common::header(&answer, "Proxy-Authenticate")
            .and_then(|c| c.split("realm=\"").nth(1))
            .and_then(|rest| rest.split('"').next())
            .map(str::to_string)
    };
    assert_eq!(realm_challenged(&caller).as_deref(), Some("example.com"));
    sighup(
        &proxy,
        &proxy_config(relay_to, &auth("sip.example.org")),
        "credentials reloaded",
    );
    let caller = common::UdpPeer::bind();
    assert_eq!(
        realm_challenged(&caller).as_deref(),
        Some("sip.example.org")
    );
}
