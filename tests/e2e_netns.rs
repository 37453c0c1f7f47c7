//! End to end across real separate hosts (network namespaces, see
//! `common/netns.rs`): a caller, siphon in the middle on `0.0.0.0:5060` (or
//! `[::]:5060`) with one interface toward each side and `scripts/lb.py`
//! unchanged, and a backend. No route joins the caller and the backend, so
//! each call completes only when the Via and Record-Route siphon writes
//! name an address the side that reads them can reach: RFC 5658 double
//! Record-Route, the BYE of either party back through the proxy.

mod common;

use common::gateway::seed_lb_script;
use common::netns::{
    Topology, BACKEND_V4, BACKEND_V6, CALLER_V4, CALLER_V6, LB_BACKEND_SIDE_V4, LB_BACKEND_SIDE_V6,
    LB_CALLER_SIDE_V4, LB_CALLER_SIDE_V6,
};
use common::{header_values, method, Siphon, SippSpec, Transport};

/// siphon on every address of the proxy's host, one backend.
const LB_CONFIG: &str = r#"listen:
  udp: ["@ANY@:5060"]
  tcp: ["@ANY@:5060"]
script:
  path: "script.py"
gateway:
  groups:
    - name: "backends"
      algorithm: hash
      destinations:
        - uri: "sip:@BACKEND@:5070@TRANSPORT@"
log: {level: info, format: pretty}
"#;

/// One network, one transport per side.
struct Case {
    v6: bool,
    caller: Transport,
    backend: Transport,
}

fn bracketed(ip: &str, v6: bool) -> String {
    if v6 {
        format!("[{ip}]")
    } else {
        ip.to_string()
    }
}

/// Runs a call where the caller hangs up and one where the callee does,
/// through siphon in the middle, and checks what the backend was given.
fn calls_complete_across_the_proxy(case: Case) {
    let Some(net) = Topology::create() else {
        return;
    };
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    let (caller_ip, lb_front, lb_back, backend_ip) = if case.v6 {
        (CALLER_V6, LB_CALLER_SIDE_V6, LB_BACKEND_SIDE_V6, BACKEND_V6)
    } else {
        (CALLER_V4, LB_CALLER_SIDE_V4, LB_BACKEND_SIDE_V4, BACKEND_V4)
    };
    let config = LB_CONFIG
        .replace("@ANY@", if case.v6 { "[::]" } else { "0.0.0.0" })
        .replace("@BACKEND@", &bracketed(backend_ip, case.v6))
        .replace(
            "@TRANSPORT@",
            if case.backend == Transport::Tcp {
                ";transport=tcp"
            } else {
                ""
            },
        );
    let siphon = Siphon::start_in_netns(&net.lb, &config, &seed_lb_script());
    let lb = format!("{}:5060", bracketed(lb_front, case.v6));

    for (uac, uas) in [
        ("uac_call.xml", "uas_call.xml"),
        ("uac_bye.xml", "uas_bye.xml"),
    ] {
        let callee = SippSpec::new(&format!("uas_{uas}"), uas, case.backend)
            .in_netns(&net.backend, backend_ip)
            .port(5070)
            .trace_messages()
            .spawn(dir);
        let caller = SippSpec::new(&format!("uac_{uac}"), uac, case.caller)
            .in_netns(&net.caller, caller_ip)
            .target(lb.parse().expect("lb address"))
            .key("uas", &lb)
            .key("service", "bob")
            .spawn(dir);
        let (caller, callee) = (caller.wait(), callee.wait());
        common::assert_all_succeeded(&[&caller, &callee]);
        check_what_the_backend_saw(&callee, lb_front, lb_back, &case);
    }
    // siphon stops before its namespace goes.
    drop(siphon);
    drop(net);
}

/// The INVITE the backend got names the proxy by its backend-side address
/// in Via, and in two Record-Route entries when the sides differ.
fn check_what_the_backend_saw(
    callee: &common::SippOutcome,
    lb_front: &str,
    lb_back: &str,
    case: &Case,
) {
    let received = callee.received_messages();
    let invite = received
        .iter()
        .find(|m| method(m) == Some("INVITE"))
        .unwrap_or_else(|| panic!("no INVITE at the backend\n{}", callee.report()));
    let back = bracketed(lb_back, case.v6);
    let front = bracketed(lb_front, case.v6);
    let vias = header_values(invite, "Via");
    assert!(
        vias.first()
            .is_some_and(|v| v.contains(&format!("{back}:5060"))),
        "the backend must be told the proxy's address on its side: {vias:?}"
    );
    let routes: Vec<String> = header_values(invite, "Record-Route")
        .iter()
        .flat_map(|v| v.split(','))
        .map(|v| siphon::proxy::seal::unsealed(v.trim()))
        .collect();
    let tcp_param = |t: Transport| {
        if t == Transport::Tcp {
            ";transport=tcp"
        } else {
            ""
        }
    };
    // A TCP caller's entry also carries a flow token naming its connection
    // as the user part (`f` and hex), so the backend's BYE goes back over it.
    let caller_side = routes.get(1).map(|r| match r.strip_prefix("<sip:f") {
        Some(rest) if case.caller == Transport::Tcp => {
            let (token, host) = rest.split_once('@').unwrap_or(("", rest));
            assert!(token.chars().all(|c| c.is_ascii_hexdigit()), "{r}");
            format!("<sip:{host}")
        }
        _ => r.clone(),
    });
    let expected = [
        format!("<sip:{back}:5060{};lr>", tcp_param(case.backend)),
        format!("<sip:{front}:5060{};lr>", tcp_param(case.caller)),
    ];
    assert_eq!(
        [
            routes.first().cloned().unwrap_or_default(),
            caller_side.unwrap_or_default()
        ],
        expected,
        "RFC 5658 double Record-Route, the backend's side on top: {routes:?}"
    );
    if case.caller == Transport::Tcp {
        assert!(routes[1].starts_with("<sip:f"), "no flow token: {routes:?}");
    }
}

#[test]
fn udp_ipv4_calls_hung_up_by_either_side_cross_the_proxy() {
    calls_complete_across_the_proxy(Case {
        v6: false,
        caller: Transport::Udp,
        backend: Transport::Udp,
    });
}

#[test]
fn tcp_ipv4_calls_hung_up_by_either_side_cross_the_proxy() {
    calls_complete_across_the_proxy(Case {
        v6: false,
        caller: Transport::Tcp,
        backend: Transport::Tcp,
    });
}

#[test]
fn a_udp_caller_reaches_a_tcp_backend() {
    calls_complete_across_the_proxy(Case {
        v6: false,
        caller: Transport::Udp,
        backend: Transport::Tcp,
    });
}

#[test]
fn udp_ipv6_calls_hung_up_by_either_side_cross_the_proxy() {
    calls_complete_across_the_proxy(Case {
        v6: true,
        caller: Transport::Udp,
        backend: Transport::Udp,
    });
}

#[test]
fn tcp_ipv6_calls_hung_up_by_either_side_cross_the_proxy() {
    calls_complete_across_the_proxy(Case {
        v6: true,
        caller: Transport::Tcp,
        backend: Transport::Tcp,
    });
}

/// Without namespaces (no root needed): siphon on the IPv6 loopback only,
/// an IPv6 destination, and the admin API on `[::1]`.
#[test]
fn ipv6_loopback_calls_and_admin_api() {
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    let admin_port = common::free_port();
    let callee = SippSpec::new("uas_v6", "uas_call.xml", Transport::Udp)
        .local_ip("::1")
        .spawn(dir);
    let callee_port = callee.port;
    let config = format!(
        "listen: {{udp: [\"[::1]:@PORT@\"], tcp: []}}\n\
         script: {{path: \"script.py\"}}\n\
         gateway:\n  groups:\n    - name: \"backends\"\n      algorithm: hash\n      destinations:\n        - uri: \"sip:[::1]:{}\"\n\
         admin: {{listen: \"[::1]:{admin_port}\"}}\n",
        callee_port
    );
    let siphon = Siphon::start(&config, &seed_lb_script());
    let lb = format!("[::1]:{}", siphon.port);
    let caller = SippSpec::new("uac_v6", "uac_call.xml", Transport::Udp)
        .local_ip("::1")
        .target(lb.parse().expect("lb"))
        .key("uas", &lb)
        .key("service", "bob")
        .spawn(dir);
    let (caller, callee) = (caller.wait(), callee.wait());
    common::assert_all_succeeded(&[&caller, &callee]);
    let admin: std::net::SocketAddr = format!("[::1]:{admin_port}").parse().expect("admin");
    let listing = common::get_json(admin, "/admin/gateways");
    let address = &listing["groups"][0]["destinations"][0]["address"];
    assert_eq!(
        address.as_str(),
        Some(format!("[::1]:{callee_port}").as_str())
    );
}
