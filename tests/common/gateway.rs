//! Gateway-test helpers shared by `e2e_gateway` and `e2e_failover`: sipp
//! backends that can be killed, frozen and restarted on their port, the
//! seed's `lb.py`, and what the callers' logs say about routing.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{send_signal, wait_until_bound, Siphon, SippSpec, Transport};

/// The uri of backend N in the tests' gateway configs.
pub fn backend_uri(n: usize) -> String {
    format!("sip:backend{n}.example.com:5060")
}

/// The seed's routing script, byte for byte.
pub fn seed_lb_script() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/lb.py");
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A sipp UAS backend on a fixed port; killed on drop.
pub struct Backend {
    sipp: Option<super::Sipp>,
}

impl Backend {
    /// Starts backend NAME (a `gw_uas.xml` UAS) on PORT.
    pub fn start(dir: &Path, name: &str, port: u16) -> Backend {
        Backend::start_scenario(dir, "gw_uas.xml", &[("backend", name)], port)
    }

    /// Starts SCENARIO with KEYS on PORT and waits until it listens.
    pub fn start_scenario(dir: &Path, scenario: &str, keys: &[(&str, &str)], port: u16) -> Backend {
        let spec = keys.iter().fold(
            SippSpec::new(&format!("uas_{port}"), scenario, Transport::Udp)
                .port(port)
                .calls(1_000_000)
                .timeout_secs(120),
            |spec, (name, value)| spec.key(name, value),
        );
        let sipp = spec.spawn(dir);
        assert!(
            wait_until_bound(port, Transport::Udp, Duration::from_secs(1)),
            "backend {scenario} did not bind port {port}"
        );
        Backend { sipp: Some(sipp) }
    }

    /// SIGSTOP: the backend hangs, answering nothing (no ICMP either), as
    /// a host stuck in swap or a deadlocked process does.
    pub fn freeze(&self) {
        if let Some(sipp) = &self.sipp {
            assert!(send_signal(sipp.pid(), "STOP"), "SIGSTOP the backend");
        }
    }

    /// SIGCONT: a frozen backend answers again.
    pub fn thaw(&self) {
        if let Some(sipp) = &self.sipp {
            assert!(send_signal(sipp.pid(), "CONT"), "SIGCONT the backend");
        }
    }

    /// SIGKILL: the backend vanishes without a word, as a crashed host does.
    pub fn kill(&mut self) {
        self.sipp.take();
    }
}

/// Waits for the group's transition line for URI (`up -> down` or
/// `down -> up`); returns how long it took.
pub fn wait_for_transition(siphon: &Siphon, uri: &str, to: &str, timeout: Duration) -> Duration {
    let started = Instant::now();
    let arrow = format!("-> {to} ");
    let uri_field = format!("uri={uri} ");
    let seen = siphon.wait_for_log_line(timeout, |line| {
        line.contains("gateway destination") && line.contains(&arrow) && line.contains(&uri_field)
    });
    assert!(
        seen,
        "{uri} not marked {to} within {timeout:?}; log tail:\n{}",
        siphon.log_tail(30)
    );
    started.elapsed()
}

/// `ROUTE <user> <backend>` lines of a gateway caller's log (`gw_uac.xml`),
/// as user → backend. A user routed twice is a test error.
pub fn routes_in(log: &str) -> BTreeMap<String, String> {
    let mut routes = BTreeMap::new();
    for line in log.lines() {
        let mut words = line.split_whitespace();
        if let (Some("ROUTE"), Some(user), Some(backend)) =
            (words.next(), words.next(), words.next())
        {
            let previous = routes.insert(user.to_string(), backend.to_string());
            assert!(previous.is_none(), "user {user} called twice");
        }
    }
    routes
}
