//! Calls held for a while through an LB, and what its admin API says
//! about them: shared by `e2e_capacity` and `e2e_reload`. Backends run
//! `cap_uas.xml` (answers, holds the call until the BYE, logs START/END so
//! each keeps its own count); callers run `cap_uac.xml` (holds each call
//! for `-d`, logs which backend took it or a 503 when every one was full).

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use super::gateway::{backend_uri, Backend};
use super::{free_port, get_json, http, Siphon, SippOutcome, SippSpec, Transport};

/// The LB's config: group "backends" (`@ALGORITHM@`, `@GROUP_EXTRA@`) over
/// the destinations in `@DESTINATIONS@`, plus `@EXTRA@` at the top level.
pub const LB_CONFIG: &str = r#"listen:
  udp: ["127.0.0.1:@PORT@"]
script:
  path: "script.py"
gateway:
  call_max_secs: @CALL_MAX@
  groups:
    - name: "backends"
      algorithm: @ALGORITHM@
@GROUP_EXTRA@      destinations:
@DESTINATIONS@
admin: {listen: "127.0.0.1:@ADMIN@"}
log: {level: info, format: pretty}
"#;

/// One destination line of the config: backend N on PORT with `extra` keys.
pub fn destination(n: usize, port: u16, extra: &str) -> String {
    format!(
        "        - {{uri: \"{}\", address: \"127.0.0.1:{port}\"{extra}}}\n",
        backend_uri(n)
    )
}

pub struct Lb {
    pub siphon: Siphon,
    pub admin: SocketAddr,
}

/// The config template of an LB with group "backends" (`algorithm`,
/// `group_extra` lines) over `destinations`; `@PORT@` and `@ADMIN@` left
/// to fill.
pub fn lb_config(
    algorithm: &str,
    group_extra: &str,
    destinations: &str,
    call_max_secs: u64,
) -> String {
    LB_CONFIG
        .replace("@ALGORITHM@", algorithm)
        .replace("@GROUP_EXTRA@", group_extra)
        .replace("@DESTINATIONS@", destinations.trim_end())
        .replace("@CALL_MAX@", &call_max_secs.to_string())
}

impl Lb {
    pub fn start(algorithm: &str, group_extra: &str, destinations: &str, script: &str) -> Lb {
        Lb::start_with_call_max(algorithm, group_extra, destinations, script, 14_400)
    }

    pub fn start_with_call_max(
        algorithm: &str,
        group_extra: &str,
        destinations: &str,
        script: &str,
        call_max_secs: u64,
    ) -> Lb {
        let config = lb_config(algorithm, group_extra, destinations, call_max_secs);
        Lb::start_with_template(&config, script)
    }

    /// An LB from a whole config template (`@PORT@` and `@ADMIN@` to fill).
    pub fn start_with_template(config_template: &str, script: &str) -> Lb {
        let admin = free_port();
        let config = config_template.replace("@ADMIN@", &admin.to_string());
        Lb {
            siphon: Siphon::start(&config, script),
            admin: SocketAddr::from(([127, 0, 0, 1], admin)),
        }
    }

    /// Writes a new config (`lb_config`'s form, its admin address kept) to
    /// be read by the next reload.
    pub fn rewrite_config(&self, config_template: &str) {
        let config = config_template.replace("@ADMIN@", &self.admin.port().to_string());
        self.siphon.replace_config(&config);
    }

    pub fn addr(&self) -> SocketAddr {
        self.siphon.addr()
    }

    /// `/admin/gateways`'s view of backend N of group "backends".
    pub fn destination(&self, n: usize) -> serde_json::Value {
        self.destination_of("backends", n)
    }

    pub fn destination_of(&self, group: &str, n: usize) -> serde_json::Value {
        let snapshot = get_json(self.admin, "/admin/gateways");
        let uri = backend_uri(n);
        snapshot["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|g| g["name"] == group)
            .flat_map(|g| g["destinations"].as_array().cloned().unwrap_or_default())
            .find(|d| d["uri"] == uri.as_str())
            .unwrap_or_else(|| panic!("{uri} in group {group}: {snapshot}"))
    }

    /// `POST /admin/gateways/backends/{action}` (down, up, drain,
    /// undrain) for backend N, `force` as given: the status and the body.
    pub fn act(&self, action: &str, n: usize, force: bool) -> (u16, String) {
        let body = format!("{{\"uri\": \"{}\", \"force\": {force}}}", backend_uri(n));
        let path = format!("/admin/gateways/backends/{action}");
        http(self.admin, "POST", &path, Some(&body))
    }

    /// Active calls and calls in setup of backend N.
    pub fn load(&self, n: usize) -> (u64, u64) {
        let d = self.destination(n);
        let field = |name: &str| d[name].as_u64().unwrap_or_else(|| panic!("{name}: {d}"));
        (field("active_calls"), field("calls_in_setup"))
    }

    /// Waits until every backend in `backends` shows no call at all.
    pub fn wait_for_no_calls(&self, group: &str, backends: &[usize], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let loads: Vec<serde_json::Value> = backends
                .iter()
                .map(|&n| {
                    let d = self.destination_of(group, n);
                    serde_json::json!([d["active_calls"], d["calls_in_setup"]])
                })
                .collect();
            if loads.iter().all(|l| l == &serde_json::json!([0, 0])) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "calls still counted in {group}: {loads:?}\n{}",
                self.siphon.log_tail(30)
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn metric(&self, name: &str) -> f64 {
        let (status, text) = http(self.admin, "GET", "/metrics", None);
        assert_eq!(status, 200);
        text.lines()
            .filter(|line| line.starts_with(name))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// A capacity backend (`cap_uas.xml`) named `b<n>` on PORT.
pub fn backend(dir: &Path, n: usize, port: u16) -> Backend {
    Backend::start_scenario(dir, "cap_uas.xml", &[("backend", &format!("b{n}"))], port)
}

/// `count` capacity backends, `b1`.., on fresh ports: the backends (kept
/// alive by the caller) and their ports.
pub fn backends(dir: &Path, count: usize) -> (Vec<Backend>, Vec<u16>) {
    let ports: Vec<u16> = (0..count).map(|_| free_port()).collect();
    let started = ports
        .iter()
        .enumerate()
        .map(|(i, &port)| backend(dir, i + 1, port))
        .collect();
    (started, ports)
}

/// The most calls the backend on PORT held at once, by its own log.
pub fn held_at_most(dir: &Path, port: u16) -> usize {
    let log = fs::read_to_string(dir.join(format!("uas_{port}_actions.log"))).unwrap_or_default();
    let mut events: Vec<(u64, i32)> = log
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let delta = match words.next()? {
                "START" => 1,
                "END" => -1,
                _ => return None,
            };
            Some((words.next()?.parse().ok()?, delta))
        })
        .collect();
    // An END before a START at the same tick: never counts one call twice.
    events.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, delta) in events {
        now += delta;
        most = most.max(now);
    }
    usize::try_from(most).unwrap_or(0)
}

/// Callers: CALLS calls at RATE per second, each held HOLD_MS, to the
/// users of the CSV (one per line), through the LB.
pub fn callers(name: &str, lb: SocketAddr, users: &[String], rate: u32, hold_ms: u32) -> SippSpec {
    let dir = std::env::temp_dir();
    let csv = dir.join(format!("{}_{name}_users.csv", super::unique("cap")));
    let mut text = String::from("SEQUENTIAL\n");
    for user in users {
        text.push_str(user);
        text.push('\n');
    }
    fs::write(&csv, text).expect("write users");
    SippSpec::new(name, "cap_uac.xml", Transport::Udp)
        .target(lb)
        .calls(u32::try_from(users.len()).unwrap_or(u32::MAX))
        .rate(rate)
        .timeout_secs(60)
        .inf(&csv)
        .args(&["-d", &hold_ms.to_string()])
}

pub fn users(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}{i:04}")).collect()
}

/// Each backend's calls and the 503s, from the callers' log.
pub fn outcomes(outcome: &SippOutcome) -> (BTreeMap<String, usize>, Vec<String>) {
    let mut routes = BTreeMap::new();
    let mut full = Vec::new();
    for line in outcome.actions_log().lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["ROUTE", _, backend] => *routes.entry(backend.to_string()).or_insert(0) += 1,
            ["FULL", _, retry_after] => full.push(retry_after.to_string()),
            _ => {}
        }
    }
    (routes, full)
}
