//! End to end with real softphones: two baresip instances register through
//! the seed's `lb.py` to two `proxy.py` backends (memory registrar) and call
//! each other, over UDP and over TCP.
//!
//! baresip writes the account's transport into the To URI of its calls
//! (`To: <sip:alice@example.com;transport=udp>`) but not into its REGISTER
//! (`To: <sip:alice@example.com>`), so these calls reach the backend that
//! holds the callee's binding only because the `hash` key is reduced to the
//! address of record. Each phone is driven over baresip's `ctrl_tcp` socket
//! (netstring-framed JSON commands and events) and answers automatically;
//! audio runs through `aubridge`, so no sound device is needed.

mod common;

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use common::baresip::{call, Phone, DOMAIN, PHONE_TIMEOUT};
use common::{example_script, free_port, get_json, Siphon, Transport};

/// The front load balancer: the seed's config shape, two backends.
const LB_CONFIG: &str = r#"listen:
  udp: ["127.0.0.1:@PORT@"]
  tcp: ["127.0.0.1:@PORT@"]
script:
  path: "script.py"
gateway:
  groups:
    - name: "backends"
      algorithm: hash
      probe: {enabled: true, interval_secs: 2, failure_threshold: 2, timeout_ms: 500}
      destinations:
        - uri: "sip:backend1.example.com"
          address: "127.0.0.1:@B1@"
        - uri: "sip:backend2.example.com"
          address: "127.0.0.1:@B2@"
log: {level: info, format: pretty}
"#;

/// A backend node: `proxy.py` with the memory registrar and the admin API,
/// which is how the test sees the bindings it holds.
const BACKEND_CONFIG: &str = r#"listen:
  udp: ["127.0.0.1:@PORT@"]
  tcp: ["127.0.0.1:@PORT@"]
domain:
  local: ["example.com", "@NAME@", "127.0.0.1"]
script:
  path: "script.py"
admin: {listen: "127.0.0.1:@ADMIN@"}
log: {level: info, format: pretty}
"#;

/// A backend siphon and the port of its admin API.
struct Backend {
    name: &'static str,
    siphon: Siphon,
    admin: SocketAddr,
}

impl Backend {
    fn start(name: &'static str) -> Backend {
        let admin_port = free_port();
        let config = BACKEND_CONFIG
            .replace("@NAME@", name)
            .replace("@ADMIN@", &admin_port.to_string());
        Backend {
            name,
            siphon: Siphon::start(&config, &example_script("proxy.py")),
            admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
        }
    }

    /// How many bindings this backend holds for USER's AoR.
    fn bindings_of(&self, user: &str) -> usize {
        let view = get_json(
            self.admin,
            &format!("/admin/registrations/sip:{user}@{DOMAIN}"),
        );
        view["bindings"].as_array().map_or(0, Vec::len)
    }
}

/// A port free for UDP and TCP whose successor is free for TCP as well:
/// baresip opens a TLS listener on the SIP port + 1.
/// Which backend the LB sent USER's REGISTER to, from `lb.py`'s log line
/// `LB REGISTER sip:USER@example.com -> sip:backendN.example.com`.
fn registered_backend(lb: &Siphon, user: &str) -> String {
    let prefix = format!("LB REGISTER sip:{user}@{DOMAIN} -> ");
    let lines = lb.log_lines(&prefix);
    let line = lines
        .last()
        .unwrap_or_else(|| panic!("no REGISTER for {user} in the LB log:\n{}", lb.log_tail(30)));
    // The script's message, then the call's fields (call_id=...).
    let uri = &line[line.find(&prefix).expect("prefix") + prefix.len()..];
    let uri = uri.split_whitespace().next().unwrap_or("");
    uri.trim_start_matches("sip:").to_string()
}

fn phones_call_each_other_through_the_lb(transport: Transport) {
    let backends = [
        Backend::start("backend1.example.com"),
        Backend::start("backend2.example.com"),
    ];
    let config = LB_CONFIG
        .replace("@B1@", &backends[0].siphon.port.to_string())
        .replace("@B2@", &backends[1].siphon.port.to_string());
    let lb = Siphon::start(&config, &example_script("lb.py"));
    let work = tempfile::tempdir().expect("tempdir");
    let mut phones = [
        Phone::start(work.path(), "alice", lb.addr(), transport),
        Phone::start(work.path(), "bob", lb.addr(), transport),
    ];

    // Each phone's binding is on the backend the LB hashed its REGISTER to,
    // and only there.
    let deadline = Instant::now() + PHONE_TIMEOUT;
    let mut holders = Vec::new();
    for phone in &phones {
        let holder = loop {
            let holding: Vec<&Backend> = backends
                .iter()
                .filter(|b| b.bindings_of(phone.user) > 0)
                .collect();
            if let [only] = holding.as_slice() {
                break only.name;
            }
            assert!(
                holding.len() < 2,
                "{} is bound on both backends",
                phone.user
            );
            assert!(
                Instant::now() < deadline,
                "{} never registered\n{}\n-- LB --\n{}",
                phone.user,
                phone.report(),
                lb.log_tail(30)
            );
            thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(holder, registered_backend(&lb, phone.user));
        holders.push(holder);
    }
    // With these two backend names the two AoRs hash apart, so each call
    // crosses from one backend's subscriber to the other's.
    assert_ne!(holders[0], holders[1], "alice and bob share a backend");

    // Both directions, each hung up once by the caller and once by the callee.
    for (caller, hanger) in [(0, 0), (0, 1), (1, 1), (1, 0)] {
        call(&mut phones, caller, hanger);
    }

    // The calls' To carried the transport parameter, and each INVITE went to
    // the backend holding the callee's binding.
    for (callee, holder) in phones.iter().zip(&holders) {
        let routed = format!(
            "LB INVITE sip:{}@{DOMAIN};transport={} -> sip:{holder}",
            callee.user,
            transport.param()
        );
        assert_eq!(
            lb.log_lines(&routed).len(),
            2,
            "expected two INVITEs logged as {routed:?}; LB log:\n{}",
            lb.log_tail(40)
        );
    }
}

#[test]
fn baresip_phones_call_each_other_over_udp() {
    phones_call_each_other_through_the_lb(Transport::Udp);
}

#[test]
fn baresip_phones_call_each_other_over_tcp() {
    phones_call_each_other_through_the_lb(Transport::Tcp);
}
