//! Separate hosts for the tests, made of network namespaces joined by veth
//! pairs: a caller, a proxy in the middle with one interface toward each
//! side, and a backend, with documentation addresses and no route between
//! the caller and the backend, so whatever the proxy writes into Via and
//! Record-Route must be right for the side that reads it.
//!
//! ```text
//!  caller                   proxy                      backend
//!  192.0.2.10      ---  192.0.2.1 | 198.51.100.1  ---  198.51.100.10
//!  2001:db8:1::10       2001:db8:1::1 | 2001:db8:2::1  2001:db8:2::10
//! ```
//!
//! It needs root (`ip netns`), as CI has; [`Topology::create`] returns None
//! otherwise, and the test says it skipped. Dropping the topology deletes
//! the namespaces (and with them the veth pairs), also when a test fails.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

pub const CALLER_V4: &str = "192.0.2.10";
pub const LB_CALLER_SIDE_V4: &str = "192.0.2.1";
pub const LB_BACKEND_SIDE_V4: &str = "198.51.100.1";
pub const BACKEND_V4: &str = "198.51.100.10";
pub const CALLER_V6: &str = "2001:db8:1::10";
pub const LB_CALLER_SIDE_V6: &str = "2001:db8:1::1";
pub const LB_BACKEND_SIDE_V6: &str = "2001:db8:2::1";
pub const BACKEND_V6: &str = "2001:db8:2::10";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Three namespaces: `caller`, `lb` and `backend`.
pub struct Topology {
    pub caller: String,
    pub lb: String,
    pub backend: String,
}

/// Runs `ip ARGS`; its stderr goes to the test's output on failure.
fn ip(args: &[&str]) -> bool {
    let output = Command::new("ip").args(args).stdin(Stdio::null()).output();
    match output {
        Ok(output) if output.status.success() => true,
        Ok(output) => {
            eprintln!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            );
            false
        }
        Err(e) => {
            eprintln!("ip {}: {e}", args.join(" "));
            false
        }
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl Topology {
    /// Builds the three hosts, or None (with a message) when this is not
    /// root or `ip netns` does not work here.
    pub fn create() -> Option<Topology> {
        if !is_root() {
            eprintln!("SKIPPED: network namespaces need root (CI runs the tests as root)");
            return None;
        }
        let id = format!(
            "{}{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let topology = Topology {
            caller: format!("sc{id}"),
            lb: format!("sl{id}"),
            backend: format!("sb{id}"),
        };
        if !topology.build(&id) {
            eprintln!("SKIPPED: could not build the network namespaces");
            return None;
        }
        Some(topology)
    }

    fn build(&self, id: &str) -> bool {
        let (caller, lb, backend) = (&self.caller, &self.lb, &self.backend);
        let (c0, c1, b0, b1) = (
            format!("vc{id}a"),
            format!("vc{id}b"),
            format!("vb{id}a"),
            format!("vb{id}b"),
        );
        let mut ok = [caller, lb, backend]
            .iter()
            .all(|ns| ip(&["netns", "add", ns]) && ip(&["-n", ns, "link", "set", "lo", "up"]));
        ok =
            ok && ip(&[
                "link", "add", &c0, "netns", caller, "type", "veth", "peer", "name", &c1, "netns",
                lb,
            ]) && ip(&[
                "link", "add", &b0, "netns", backend, "type", "veth", "peer", "name", &b1, "netns",
                lb,
            ]);
        let addresses = [
            (caller.as_str(), c0.as_str(), CALLER_V4, 24, CALLER_V6),
            (lb, &c1, LB_CALLER_SIDE_V4, 24, LB_CALLER_SIDE_V6),
            (lb, &b1, LB_BACKEND_SIDE_V4, 24, LB_BACKEND_SIDE_V6),
            (backend, &b0, BACKEND_V4, 24, BACKEND_V6),
        ];
        for (ns, dev, v4, len, v6) in addresses {
            ok = ok
                && ip(&["-n", ns, "addr", "add", &format!("{v4}/{len}"), "dev", dev])
                // nodad: usable at once, not after duplicate detection.
                && ip(&["-n", ns, "-6", "addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"])
                && ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        ok
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in [&self.caller, &self.lb, &self.backend] {
            ip(&["netns", "del", ns]);
        }
    }
}
