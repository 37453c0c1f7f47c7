//! End to end with a registrar no one here wrote: Kamailio 5.6 (Debian's
//! package) holds the bindings behind siphon running the seed's `lb.py`,
//! and two baresip phones, which do not announce Path support, register and
//! call each other both ways, over UDP and over TCP. Kamailio keeps the
//! registrar's defaults except `use_path` (without it a registrar ignores
//! Path altogether): `path_mode` stays 2, which answers 420 to a REGISTER
//! with a Path but without `Supported: path`. A call to a phone must reach
//! it through the LB (the Path Kamailio stored), not at its Contact.

mod common;

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::baresip::{call, Phone};
use common::{example_script, free_port, tail, wait_until_bound, Siphon, Transport};

/// A registrar and proxy for example.com, in Kamailio's own language.
const KAMAILIO_CFG: &str = r#"#!KAMAILIO
debug=2
log_stderror=yes
children=2
tcp_children=2
auto_aliases=no
listen=udp:127.0.0.1:@KPORT@
listen=tcp:127.0.0.1:@KPORT@
alias="example.com"
mpath="@MPATH@"

loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"

modparam("registrar", "use_path", 1)

request_route {
    if (!mf_process_maxfwd_header("10")) {
        sl_send_reply("483", "Too Many Hops");
        exit;
    }
    if (has_totag()) {
        if (loose_route()) {
            t_relay();
            exit;
        }
        if (is_method("ACK")) {
            if (t_check_trans()) {
                t_relay();
            }
            exit;
        }
        sl_send_reply("404", "Not here");
        exit;
    }
    if (is_method("CANCEL")) {
        if (t_check_trans()) {
            t_relay();
        }
        exit;
    }
    if (is_method("REGISTER")) {
        xlog("L_INFO", "REGISTER $tU path=[$hdr(Path)] supported=[$hdr(Supported)]\n");
        if (!save("location")) {
            sl_reply_error();
        }
        exit;
    }
    record_route();
    if (!lookup("location")) {
        sl_send_reply("404", "Not Found");
        exit;
    }
    xlog("L_INFO", "LOOKUP $tU via [$du]\n");
    t_relay();
}
"#;

/// The LB in front of Kamailio (no probes: the registrar is not ours).
const LB_CONFIG: &str = r#"listen:
  udp: ["127.0.0.1:@PORT@"]
  tcp: ["127.0.0.1:@PORT@"]
script:
  path: "script.py"
gateway:
  groups:
    - name: "backends"
      algorithm: hash
      destinations:
        - uri: "sip:kamailio.example.com"
          address: "127.0.0.1:@KPORT@"
log: {level: info, format: pretty}
"#;

/// Where Debian puts Kamailio's modules.
const MODULE_DIRS: [&str; 2] = [
    "/usr/lib/x86_64-linux-gnu/kamailio/modules/",
    "/usr/lib/kamailio/modules/",
];

struct Kamailio {
    child: Child,
    log: std::path::PathBuf,
    port: u16,
}

impl Kamailio {
    fn start(dir: &Path) -> Kamailio {
        let port = free_port();
        let mpath = MODULE_DIRS
            .iter()
            .find(|dir| Path::new(dir).join("registrar.so").exists())
            .expect("Kamailio's modules (Debian package kamailio)");
        let cfg = dir.join("kamailio.cfg");
        fs::write(
            &cfg,
            KAMAILIO_CFG
                .replace("@KPORT@", &port.to_string())
                .replace("@MPATH@", mpath),
        )
        .unwrap();
        let log = dir.join("kamailio.log");
        let out = fs::File::create(&log).unwrap();
        // In a process group of its own: Kamailio forks its workers, and
        // the group is what is stopped.
        let child = Command::new("kamailio")
            .process_group(0)
            .args(["-DD", "-E", "-m", "64", "-M", "8", "-f"])
            .arg(&cfg)
            .arg("-Y")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn kamailio (Debian package kamailio)");
        let kamailio = Kamailio { child, log, port };
        assert!(
            wait_until_bound(port, Transport::Udp, Duration::from_secs(5)),
            "kamailio did not bind {port}:\n{}",
            kamailio.log_tail(30)
        );
        kamailio
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn log_tail(&self, lines: usize) -> String {
        tail(&self.log(), lines)
    }

    fn lines(&self, needle: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|line| line.contains(needle))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        // The whole group: the main process and every worker it forked.
        let group = format!("-{}", self.child.id());
        for signal in ["-TERM", "-KILL"] {
            let _ = Command::new("kill").args([signal, "--", &group]).status();
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("-- kamailio --\n{}", self.log_tail(60));
        }
    }
}

fn phones_register_at_kamailio_through_the_lb_and_call(transport: Transport) {
    let work = tempfile::tempdir().unwrap();
    let kamailio = Kamailio::start(work.path());
    let lb = Siphon::start(
        &LB_CONFIG.replace("@KPORT@", &kamailio.port.to_string()),
        &example_script("lb.py"),
    );
    let mut phones = [
        Phone::start(work.path(), "alice", lb.addr(), transport),
        Phone::start(work.path(), "bob", lb.addr(), transport),
    ];
    // Kamailio gets each REGISTER with our Path (a flow token for the
    // phone's address) and `Supported: path` said for the phone, and
    // keeps the binding (baresip logs the 200 and its binding).
    let lb_addr = lb.addr().to_string();
    let with_path = |line: &String| {
        line.contains(&format!("@{lb_addr};lr>] supported=[")) && line.contains("path]")
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for phone in &phones {
        let user = phone.user;
        while !kamailio
            .lines(&format!("REGISTER {user} path=[<sip:p"))
            .iter()
            .any(with_path)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{user}'s REGISTER at Kamailio: {:?}\n{}",
                kamailio.lines("REGISTER"),
                phone.report()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        while !phone.log_text().contains("200 OK (kamailio") {
            assert!(
                std::time::Instant::now() < deadline,
                "{user} not registered\n{}",
                phone.report()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    for (caller, hanger) in [(0, 1), (1, 0)] {
        call(&mut phones, caller, hanger);
    }
    // Each call left Kamailio for the callee through the LB's Path.
    for user in ["alice", "bob"] {
        let lookups = kamailio.lines(&format!("LOOKUP {user} via [sip:p"));
        assert!(
            lookups.iter().any(|l| l.contains(&lb_addr)),
            "{user}'s call did not go through the LB: {:?}\n{}",
            kamailio.lines("LOOKUP"),
            kamailio.log_tail(20)
        );
    }
}

#[test]
fn baresip_registers_at_kamailio_through_the_lb_and_calls_both_ways_over_udp() {
    phones_register_at_kamailio_through_the_lb_and_call(Transport::Udp);
}

#[test]
fn baresip_registers_at_kamailio_through_the_lb_and_calls_both_ways_over_tcp() {
    phones_register_at_kamailio_through_the_lb_and_call(Transport::Tcp);
}
