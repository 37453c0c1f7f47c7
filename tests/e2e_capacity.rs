//! End to end: balancing by capacity (DESIGN.md §4.3). sipp backends that
//! hold their calls until the caller's BYE (`cap_uas.xml`, which logs when
//! it answers and when the BYE comes, so each backend keeps its own count),
//! callers that hold their calls for `-d` (`cap_uac.xml`), and an LB whose
//! admin API shows the counts the core keeps.
//!
//! - `max_calls`: a destination never holds more than its limit, the rest
//!   go elsewhere or get 503 with Retry-After when every one is full;
//! - the counts return to 0 after calls that ended, failed, were CANCELed
//!   or were cut by a killed caller (collected at `call_max_secs`);
//! - priority tiers, least_calls, `max_cps` and drain.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use common::calls::{backend, backends, callers, destination, held_at_most, outcomes, users, Lb};
use common::gateway::{backend_uri, seed_lb_script, Backend};
use common::{free_port, get_json, http, SippSpec, Transport};

/// lb.py with what every test needs and nothing else.
fn lb_script() -> String {
    seed_lb_script()
}

#[test]
fn max_calls_holds_at_the_backend_and_the_rest_go_elsewhere_or_get_503() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_backends, ports) = backends(dir.path(), 2);
    let destinations =
        destination(1, ports[0], ", max_calls: 20") + &destination(2, ports[1], ", max_calls: 50");
    let lb = Lb::start("hash", "", &destinations, &lb_script());

    // 100 calls within a second, each held 4 s: at most 70 fit.
    let outcome = callers("full", lb.addr(), &users("user", 100), 100, 4000).run(dir.path());
    let (routes, full) = outcomes(&outcome);
    assert_eq!(outcome.stats.failed_calls, 0, "{}", outcome.report());
    let b1 = routes.get("b1").copied().unwrap_or(0);
    let b2 = routes.get("b2").copied().unwrap_or(0);
    eprintln!("b1 {b1}, b2 {b2}, 503 {}", full.len());
    assert_eq!(b1 + b2 + full.len(), 100, "every call answered");
    assert!(b1 >= 20 && b2 >= 50, "both filled up: b1 {b1}, b2 {b2}");
    assert!(!full.is_empty(), "the calls past 70 were refused");
    assert!(
        full.iter().all(|retry| retry == "5"),
        "Retry-After: {full:?}"
    );
    // The backends' own counts.
    let (most1, most2) = (
        held_at_most(dir.path(), ports[0]),
        held_at_most(dir.path(), ports[1]),
    );
    assert!(
        most1 <= 20 && most2 <= 50,
        "held at once: b1 {most1}, b2 {most2}"
    );
    assert_eq!(most1, 20, "b1 was filled");
    lb.wait_for_no_calls("backends", &[1, 2], Duration::from_secs(5));
    assert!(lb.metric("siphon_gateway_full_total") >= full.len() as f64);
}

/// The test script: INVITEs to `busy` and `ring` go to groups of those
/// names, the rest as in lb.py.
const STEERING_SCRIPT: &str = r#"from siphon import proxy, gateway

@proxy.on_request
def route(request):
    if request.in_dialog:
        if request.loose_route():
            request.relay()
        else:
            request.reply(404, "Not Here")
        return
    user = request.to_uri.user
    group = user if user in ("busy", "ring") else "backends"
    destination = gateway.select(group, key=str(request.to_uri))
    if not destination:
        request.reply(503, "Service Unavailable")
        return
    request.record_route()
    request.relay(destination.uri)
"#;

#[test]
fn counts_return_to_zero_after_calls_that_ended_failed_were_cancelled_or_lost_their_caller() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (ok, busy, ring) = (free_port(), free_port(), free_port());
    let _ok = backend(dir.path(), 1, ok);
    let _busy = Backend::start_scenario(dir.path(), "uas_busy.xml", &[], busy);
    let _ring = Backend::start_scenario(dir.path(), "uas_cancel.xml", &[], ring);
    let extra_groups = format!(
        "    - name: busy\n      destinations:\n{}    - name: ring\n      destinations:\n{}",
        destination(2, busy, ""),
        destination(3, ring, "")
    );
    let config_destinations = destination(1, ok, "") + &extra_groups;
    let lb = Lb::start_with_call_max("weighted", "", &config_destinations, STEERING_SCRIPT, 3);

    // Calls that end with a BYE.
    let outcome = callers("ended", lb.addr(), &users("user", 10), 20, 300).run(dir.path());
    outcome.assert_all_succeeded();
    // Calls refused with 486 (never counted).
    let outcome = SippSpec::new("busy", "uac_busy.xml", Transport::Udp)
        .target(lb.addr())
        .callee(lb.addr())
        .args(&["-s", "busy"])
        .calls(5)
        .run(dir.path());
    outcome.assert_all_succeeded();
    // Calls the caller CANCELs while they ring.
    let outcome = SippSpec::new("cancel", "uac_cancel.xml", Transport::Udp)
        .target(lb.addr())
        .callee(lb.addr())
        .args(&["-s", "ring"])
        .calls(5)
        .run(dir.path());
    outcome.assert_all_succeeded();
    lb.wait_for_no_calls("backends", &[1], Duration::from_secs(3));

    // Callers that die mid-call: no BYE ever comes.
    let dying = callers("dying", lb.addr(), &users("gone", 4), 20, 60_000).spawn(dir.path());
    let deadline = Instant::now() + Duration::from_secs(5);
    while lb.load(1).0 < 4 {
        assert!(Instant::now() < deadline, "4 calls up: {:?}", lb.load(1));
        thread::sleep(Duration::from_millis(50));
    }
    common::send_signal(dying.pid(), "KILL");
    drop(dying);
    assert_eq!(lb.load(1), (4, 0), "counted until call_max_secs");
    // call_max_secs is 3: collected within 3 s and a sixteenth.
    lb.wait_for_no_calls("backends", &[1], Duration::from_secs(6));
    assert!(lb.siphon.wait_for_log(
        "stopped counting at gateway.call_max_secs",
        Duration::from_secs(1)
    ));
    assert_eq!(lb.metric("siphon_gateway_calls_collected_total"), 4.0);
    lb.wait_for_no_calls("busy", &[2], Duration::from_secs(1));
    lb.wait_for_no_calls("ring", &[3], Duration::from_secs(1));
}

#[test]
fn tier_one_takes_calls_only_while_tier_zero_is_down_or_full() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_backends, ports) = backends(dir.path(), 3);
    let destinations = destination(1, ports[0], ", max_calls: 5")
        + &destination(2, ports[1], ", max_calls: 5")
        + &destination(3, ports[2], ", priority: 1");
    let lb = Lb::start("hash", "", &destinations, &lb_script());

    // Short calls: tier 0 takes them all.
    let outcome = callers("tier0", lb.addr(), &users("a", 20), 20, 100).run(dir.path());
    outcome.assert_all_succeeded();
    let (routes, _) = outcomes(&outcome);
    assert_eq!(routes.get("b3"), None, "tier 1 got nothing: {routes:?}");

    // Long calls past tier 0's 10: the rest spill to tier 1.
    let outcome = callers("spill", lb.addr(), &users("b", 16), 50, 2000).run(dir.path());
    outcome.assert_all_succeeded();
    let (routes, full) = outcomes(&outcome);
    assert!(full.is_empty());
    assert_eq!(routes.get("b3"), Some(&6), "spilled: {routes:?}");
    assert_eq!(
        routes.get("b1").unwrap_or(&0) + routes.get("b2").unwrap_or(&0),
        10
    );

    // Tier 0 down: everything to tier 1; up again: back.
    for n in [1, 2] {
        assert_eq!(lb.act("down", n, true).0, 200);
    }
    let outcome = callers("down", lb.addr(), &users("c", 10), 20, 100).run(dir.path());
    outcome.assert_all_succeeded();
    assert_eq!(outcomes(&outcome).0.get("b3"), Some(&10));
    for n in [1, 2] {
        assert_eq!(lb.act("up", n, false).0, 200);
    }
    let outcome = callers("back", lb.addr(), &users("d", 10), 20, 100).run(dir.path());
    outcome.assert_all_succeeded();
    assert_eq!(outcomes(&outcome).0.get("b3"), None, "back on tier 0");
}

#[test]
fn least_calls_keeps_the_loads_within_one_call_per_weight() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_backends, ports) = backends(dir.path(), 3);
    let destinations = destination(1, ports[0], "")
        + &destination(2, ports[1], ", weight: 2")
        + &destination(3, ports[2], "");
    let lb = Lb::start("least_calls", "", &destinations, &lb_script());

    // Short and long calls at once: their lengths differ tenfold.
    let short = callers("short", lb.addr(), &users("s", 120), 30, 300).spawn(dir.path());
    let long = callers("long", lb.addr(), &users("l", 40), 10, 3000).spawn(dir.path());
    let (mut samples, mut within_one, mut busiest) = (0, 0, 0);
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        // Calls per weight, scaled by 2 (the weights are 1, 2, 1).
        let loads: Vec<u64> = [(1, 2), (2, 1), (3, 2)]
            .iter()
            .map(|&(n, scale)| {
                let (active, setup) = lb.load(n);
                (active + setup) * scale
            })
            .collect();
        let spread = loads.iter().max().unwrap() - loads.iter().min().unwrap();
        // Calls that end together (a CPU-starved sipp sends BYEs in
        // bursts) open a gap until the next calls arrive.
        assert!(
            spread <= 6,
            "more than three calls per weight apart: {loads:?} (x2)"
        );
        samples += 1;
        within_one += usize::from(spread <= 2);
        busiest = busiest.max(*loads.iter().max().unwrap());
        thread::sleep(Duration::from_millis(50));
    }
    short.wait().assert_all_succeeded();
    long.wait().assert_all_succeeded();
    eprintln!("{within_one} of {samples} samples within one call per weight");
    assert!(busiest >= 8, "the test loaded the group: {busiest}");
    // Each call is placed where the load per weight is least; calls that
    // end can open a gap until the next arrive.
    assert!(within_one * 10 >= samples * 6, "{within_one} of {samples}");
    lb.wait_for_no_calls("backends", &[1, 2, 3], Duration::from_secs(3));
}

#[test]
fn a_one_cps_destination_takes_one_call_a_second_and_the_rest_go_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_backends, ports) = backends(dir.path(), 2);
    let destinations =
        destination(1, ports[0], ", max_cps: 1") + &destination(2, ports[1], ", priority: 1");
    let lb = Lb::start("weighted", "", &destinations, &lb_script());

    // Five calls a second for four seconds.
    let started = Instant::now();
    let outcome = callers("cps", lb.addr(), &users("u", 20), 5, 100).run(dir.path());
    let elapsed = started.elapsed();
    outcome.assert_all_succeeded();
    let (routes, full) = outcomes(&outcome);
    assert!(full.is_empty(), "nothing refused: {full:?}");
    let b1 = routes.get("b1").copied().unwrap_or(0);
    let most = usize::try_from(elapsed.as_secs()).unwrap_or(0) + 1;
    eprintln!("b1 took {b1} of 20 in {elapsed:.1?}");
    assert!((3..=most).contains(&b1), "one a second: {routes:?}");
    assert_eq!(routes.get("b2").copied().unwrap_or(0), 20 - b1);
    // The pace is no failure: b1 is still healthy, never ejected.
    assert_eq!(lb.destination(1)["healthy"], true);
    assert_eq!(lb.metric("siphon_failovers_total"), 0.0);
}

#[test]
fn a_drained_destinations_calls_fall_to_zero_while_the_others_go_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_backends, ports) = backends(dir.path(), 2);
    let destinations = destination(1, ports[0], "") + &destination(2, ports[1], "");
    let lb = Lb::start("least_calls", "", &destinations, &lb_script());

    let first = callers("first", lb.addr(), &users("f", 10), 20, 2500).spawn(dir.path());
    let deadline = Instant::now() + Duration::from_secs(5);
    while lb.load(1).0 < 5 {
        assert!(Instant::now() < deadline, "calls up: {:?}", lb.load(1));
        thread::sleep(Duration::from_millis(50));
    }
    let (status, answer) = lb.act("drain", 1, false);
    assert_eq!(status, 200, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).expect("JSON");
    assert_eq!(answer["destination"]["draining"], true);
    assert_eq!(answer["destination"]["drained"], false, "its calls go on");

    // New calls meanwhile all go to b2; b1's calls end by their BYEs.
    let second = callers("second", lb.addr(), &users("g", 10), 10, 200).run(dir.path());
    second.assert_all_succeeded();
    assert_eq!(outcomes(&second).0.get("b1"), None);
    first.wait().assert_all_succeeded();
    let deadline = Instant::now() + Duration::from_secs(3);
    while lb.destination(1)["drained"] != true {
        assert!(Instant::now() < deadline, "{}", lb.destination(1));
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(lb.load(1), (0, 0));
    assert_eq!(lb.act("undrain", 1, false).0, 200);
    assert_eq!(lb.destination(1)["draining"], false);
    let (status, _) = http(
        lb.admin,
        "POST",
        "/admin/gateways/backends/drain?uri=sip:nope",
        None,
    );
    assert_eq!(status, 404);
}

/// `count` users drawn with Zipf(1) weights over `users` subscribers, in a
/// fixed pseudo-random order (the same on every run).
fn zipf_users(users: usize, count: usize) -> Vec<String> {
    let weights: Vec<f64> = (1..=users).map(|k| 1.0 / k as f64).collect();
    let total: f64 = weights.iter().sum();
    let mut state: u64 = 0x5eed_2026_1207;
    (0..count)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let mut draw = (state >> 11) as f64 / (1u64 << 53) as f64 * total;
            let k = weights
                .iter()
                .position(|w| {
                    draw -= w;
                    draw <= 0.0
                })
                .unwrap_or(users - 1);
            format!("sub{k:04}")
        })
        .collect()
}

/// What a skewed load does to a `hash` group with `hash_bound` (or none):
/// the share of calls that left their first choice, and the busiest
/// backend's calls over the mean (averaged over samples, and the worst).
fn skewed_run(dir: &Path, bound: Option<f64>) -> (f64, f64, f64) {
    let (_backends, ports) = backends(dir, 4);
    let destinations: String = (0..4).map(|i| destination(i + 1, ports[i], "")).collect();
    let group_extra = bound.map_or(String::new(), |b| format!("      hash_bound: {b}\n"));
    let lb = Lb::start("hash", &group_extra, &destinations, &lb_script());
    let calls = zipf_users(300, 1000);
    let name = format!("skew{}", bound.map_or(0, |b| (b * 100.0) as u32));
    let run = callers(&name, lb.addr(), &calls, 50, 2000).spawn(dir);
    let (mut ratios, mut worst) = (Vec::new(), 0.0f64);
    let until = Instant::now() + Duration::from_secs(20);
    thread::sleep(Duration::from_secs(3));
    while Instant::now() < until {
        let loads: Vec<f64> = (1..=4)
            .map(|n| {
                let (active, setup) = lb.load(n);
                (active + setup) as f64
            })
            .collect();
        let mean = loads.iter().sum::<f64>() / 4.0;
        if mean >= 10.0 {
            let ratio = loads.iter().cloned().fold(0.0, f64::max) / mean;
            worst = worst.max(ratio);
            ratios.push(ratio);
        }
        thread::sleep(Duration::from_millis(100));
    }
    let outcome = run.wait();
    outcome.assert_all_succeeded();
    // Each user's first choice, asked once the calls are over (idle, the
    // bound changes nothing).
    let mut first_choice = BTreeMap::new();
    for user in &calls {
        first_choice.entry(user.clone()).or_insert_with(|| {
            let key = format!("sip:{user}@{}", lb.addr());
            let answer = get_json(
                lb.admin,
                &format!("/admin/gateways/backends/select?key={key}"),
            );
            let uri = answer["ranking"][0]["uri"]
                .as_str()
                .unwrap_or("")
                .to_string();
            (1..=4)
                .find(|&n| backend_uri(n) == uri)
                .map(|n| format!("b{n}"))
        });
    }
    let mut moved = 0;
    let mut answered = 0;
    for line in outcome.actions_log().lines() {
        if let ["ROUTE", user, backend] = line.split_whitespace().collect::<Vec<_>>()[..] {
            answered += 1;
            moved += usize::from(first_choice[user].as_deref() != Some(backend));
        }
    }
    assert_eq!(answered, calls.len());
    let mean_ratio = ratios.iter().sum::<f64>() / ratios.len().max(1) as f64;
    (moved as f64 / answered as f64, mean_ratio, worst)
}

#[test]
fn hash_bound_caps_the_busiest_backend_of_a_skewed_load_and_moves_few_calls() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (moved, mean, worst) = skewed_run(dir.path(), None);
    eprintln!(
        "hash_bound none: {:.1}% moved, peak/mean {mean:.3} (worst {worst:.3})",
        moved * 100.0
    );
    assert_eq!(moved, 0.0, "no bound: every call on its first choice");
    let (moved_bounded, mean_bounded, worst_bounded) = skewed_run(dir.path(), Some(1.25));
    eprintln!(
        "hash_bound 1.25: {:.1}% moved, peak/mean {mean_bounded:.3} (worst {worst_bounded:.3})",
        moved_bounded * 100.0
    );
    assert!(mean > 1.3, "the load is skewed: {mean:.3}");
    assert!(mean_bounded < mean, "{mean_bounded:.3} vs {mean:.3}");
    assert!(mean_bounded <= 1.3, "held near 1.25: {mean_bounded:.3}");
    assert!(
        moved_bounded > 0.0 && moved_bounded < 0.3,
        "{moved_bounded}"
    );
}
