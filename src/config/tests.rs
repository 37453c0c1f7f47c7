//! Tests of loading, expansion and validation.

use super::*;

fn origin() -> &'static Path {
    Path::new("config/test.yaml")
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    from_text_with_vars(text, origin(), &|_| None)
}

/// The error message for `text`, which must fail to load.
fn error_of(text: &str) -> String {
    match parse(text) {
        Ok(config) => panic!("expected an error, got {config:?}"),
        Err(error) => error.to_string(),
    }
}

fn with_group(group_yaml: &str) -> String {
    format!("script: {{path: /srv/lb.py}}\ngateway:\n  groups:\n{group_yaml}")
}

/// The configuration block of seed/load-balancer.md, verbatim.
const SEED_YAML: &str = r#"# siphon.yaml
script:
  path: "/etc/siphon/lb.py"

gateway:
  groups:
    - name: "backends"
      algorithm: hash         # weighted (default) | round_robin | hash
      probe:
        enabled: true
        interval_secs: 5
        failure_threshold: 3
      destinations:
        - uri: "sip:backend1.example.com:5060"
          address: "10.0.0.1:5060"
          weight: 2
          attrs: { region: "us-east" }
        - uri: "sip:backend2.example.com:5060"
          address: "10.0.0.2:5060"
"#;

/// The full example of DESIGN.md §4.1, verbatim.
const DESIGN_YAML: &str = r#"listen:
  udp: ["0.0.0.0:5060"]            # list of ip:port
  tcp: ["0.0.0.0:5060"]
advertise: "192.0.2.10"            # optional host for Via/Record-Route
domain:
  local: ["example.com", "127.0.0.1"]
script:
  path: "/etc/siphon/lb.py"
gateway:
  groups:
    - name: "backends"
      algorithm: hash              # weighted (default) | round_robin | hash
      probe: {enabled: true, interval_secs: 5, failure_threshold: 3}
      destinations:
        - uri: "sip:backend1.example.com:5060"
          address: "10.0.0.1:5060" # where packets go; resolved once at load
          weight: 2
          attrs: {region: "us-east"}
registrar:
  backend: memory                  # memory (default) | redis
  redis: {url: "redis://127.0.0.1:6379", key_prefix: "siphon:reg:"}
server: {instance_id: "lb1", drain_secs: 5}
metrics: {prometheus: {listen: "127.0.0.1:9090"}, log_interval_secs: 60}
admin: {listen: "127.0.0.1:9091"}
log: {level: info, format: pretty} # pretty | json
"#;

#[test]
fn defaults_fill_in_every_optional_section() {
    let config = parse("script: {path: /srv/lb.py}\n").expect("minimal config");
    assert_eq!(
        config.listen.udp,
        vec![ListenAddr::from(
            "0.0.0.0:5060".parse::<SocketAddr>().unwrap()
        )]
    );
    assert!(config.listen.tcp.is_empty());
    assert_eq!(config.advertise, None);
    assert!(config.domain.local.is_empty());
    assert_eq!(config.script.path, PathBuf::from("/srv/lb.py"));
    assert!(config.gateway.groups.is_empty());
    assert_eq!(config.registrar.backend, RegistrarBackend::Memory);
    assert_eq!(
        config.registrar.redis.url, None,
        "the default: redis://127.0.0.1:6379"
    );
    assert_eq!(config.registrar.redis.key_prefix, "siphon:reg:");
    assert_eq!(
        (
            config.registrar.min_expires,
            config.registrar.default_expires,
            config.registrar.max_expires,
            config.registrar.max_contacts
        ),
        (60, 3600, 7200, 10)
    );
    // This host's name and the first SIP port (the default 0.0.0.0:5060).
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(config.server.instance_id, format!("{}-5060", host.trim()));
    assert_eq!(config.server.drain_secs, 5);
    assert_eq!(config.metrics.prometheus, None);
    assert_eq!(config.metrics.log_interval_secs, 60);
    assert_eq!(config.admin.listen, None);
    assert_eq!(config.log.level, "info");
    assert_eq!(config.log.format, LogFormat::Pretty);
    assert_eq!(config.transaction.t1(), Duration::from_millis(500));
    assert_eq!(config.transaction.t2(), Duration::from_millis(4000));
    assert_eq!(config.transaction.t4(), Duration::from_millis(5000));
    assert_eq!(config.transaction.timer_c(), Duration::from_secs(185));
    assert!(config.dns.servers.is_empty(), "the system's name servers");
    assert_eq!(config.dns.timeout(), Duration::from_secs(2));
    assert_eq!(config.dns.cache_size, 4096);
    assert_eq!(config.dns.negative_ttl(), Duration::from_secs(30));
}

#[test]
fn tls_listeners_and_files_are_taken_from_the_config_directory() {
    let config = parse(
        "script: {path: /srv/lb.py}\nlisten: {tls: [{address: \"0.0.0.0:5061\", cert: cert.pem, key: /etc/k.pem, advertise: sip.example.com}]}\ntls: {ca_file: ca.pem}\n",
    )
    .expect("tls config");
    let dir = origin().parent().unwrap();
    let tls = &config.listen.tls[0];
    assert_eq!(tls.address, "0.0.0.0:5061".parse::<SocketAddr>().unwrap());
    assert_eq!(tls.cert, dir.join("cert.pem"));
    assert_eq!(tls.key, PathBuf::from("/etc/k.pem"));
    assert_eq!(tls.advertise.as_deref(), Some("sip.example.com"));
    assert_eq!(config.tls.ca_file, Some(dir.join("ca.pem")));
    assert_eq!(config.tls.handshake_timeout(), Duration::from_secs(5));
    // UDP keeps its default beside a TLS listener.
    assert_eq!(config.listen.udp.len(), 1);
}

#[test]
fn websocket_listeners_take_an_address_or_a_map_with_origins() {
    let config = parse(
        "script: {path: /srv/lb.py}\nlisten: {ws: [\"127.0.0.1:8080\"], wss: [{address: \"0.0.0.0:8443\", cert: c.pem, key: k.pem, allowed_origins: [\"https://app.example.com/\"]}]}\n",
    )
    .expect("ws config");
    let ws = &config.listen.ws[0];
    assert_eq!(ws.address, "127.0.0.1:8080".parse::<SocketAddr>().unwrap());
    assert!(
        ws.allows_origin(Some("https://anything.example")),
        "no list: any origin"
    );
    let wss = &config.listen.wss[0];
    assert_eq!(wss.cert, Some(origin().parent().unwrap().join("c.pem")));
    assert!(wss.allows_origin(Some("https://APP.example.com")));
    assert!(!wss.allows_origin(Some("https://evil.example")));
    assert!(!wss.allows_origin(None), "a list and no Origin: refused");
    assert!(wss.tls_listen().is_some());
}

#[test]
fn a_destination_may_name_its_transport() {
    let listening = "listen: {udp: [\"127.0.0.1:5060\"], tcp: [\"127.0.0.1:5060\"]}\n";
    let config = parse(&format!(
        "{listening}{}",
        with_group(
            "    - name: g\n      destinations: [{uri: \"sip:trunk.example.com\", address: \"192.0.2.5:5061\", transport: TCP}]\n",
        )
    ))
    .expect("transport key");
    let destination = &config.gateway.groups[0].destinations[0];
    assert_eq!(destination.transport, Some(crate::sip::Protocol::Tcp));
    let group = config.gateway.groups[0].to_group();
    assert_eq!(
        group.destinations()[0].protocol(),
        crate::sip::Protocol::Tcp
    );
    // Without a listener of that protocol no Via could name it.
    let refused = error_of(&with_group(
        "    - name: g\n      destinations: [{uri: \"sip:trunk.example.com\", address: \"192.0.2.5:5061\", transport: tls}]\n",
    ));
    assert!(
        refused.contains("gateway.groups[0].destinations[0].transport: tls needs a listener of its own for our Via: add an ip:port to listen.tls"),
        "{refused}"
    );
    let refused = error_of(&with_group(
        "    - name: g\n      destinations: [{uri: \"sip:trunk.example.com;transport=tcp\", address: \"192.0.2.5:5060\"}]\n",
    ));
    assert!(
        refused.contains("gateway.groups[0].destinations[0].uri: tcp needs a listener"),
        "{refused}"
    );
    assert!(error_of(&with_group(
        "    - name: g\n      destinations: [{uri: \"sip:a.example.com\", address: \"192.0.2.5\", transport: sctp}]\n"
    ))
    .contains("gateway.groups[0].destinations[0].transport: `sctp`: use udp, tcp or tls"));
}

#[test]
fn dns_servers_take_a_port_or_default_to_53() {
    let config = parse(
        "script: {path: /srv/lb.py}\ndns: {servers: [\"192.0.2.53\", \"127.0.0.1:5353\", \"[2001:db8::53]:53\", \"2001:db8::54\"]}\n",
    )
    .expect("dns servers");
    let servers: Vec<String> = config
        .dns
        .server_addresses()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        servers,
        [
            "192.0.2.53:53",
            "127.0.0.1:5353",
            "[2001:db8::53]:53",
            "[2001:db8::54]:53"
        ]
    );
}

#[test]
fn partial_sections_keep_defaults_for_missing_keys() {
    let config = parse(
            "script: {path: /srv/lb.py}\nlisten: {tcp: [\"127.0.0.1:5070\"]}\nregistrar: {max_contacts: 3}\ntransaction: {t1_ms: 100}\n",
        )
        .expect("partial sections");
    assert_eq!(
        config.listen.udp,
        vec![ListenAddr::from(
            "0.0.0.0:5060".parse::<SocketAddr>().unwrap()
        )]
    );
    assert_eq!(
        config.listen.tcp,
        vec![ListenAddr::from(
            "127.0.0.1:5070".parse::<SocketAddr>().unwrap()
        )]
    );
    assert_eq!(config.registrar.max_contacts, 3);
    assert_eq!(config.registrar.default_expires, 3600);
    assert_eq!(config.transaction.t1_ms, 100);
    assert_eq!(config.transaction.t2_ms, 4000);
}

#[test]
fn seed_page_config_loads_unchanged() {
    let config = parse(SEED_YAML).expect("the seed's siphon.yaml must load");
    let group = &config.gateway.groups[0];
    assert_eq!(group.name, "backends");
    assert_eq!(group.algorithm, Algorithm::Hash);
    assert!(group.probe.enabled);
    assert_eq!(group.probe.interval(), Duration::from_secs(5));
    assert_eq!(group.probe.failure_threshold, 3);
    assert_eq!(group.destinations.len(), 2);
    let first = &group.destinations[0];
    assert_eq!(first.uri, "sip:backend1.example.com:5060");
    assert_eq!(first.address, "10.0.0.1:5060".parse().unwrap());
    assert_eq!(first.weight, 2);
    assert_eq!(
        first.attrs.get("region").map(String::as_str),
        Some("us-east")
    );
    let second = &group.destinations[1];
    assert_eq!(second.address, "10.0.0.2:5060".parse().unwrap());
    assert_eq!(second.weight, 1);
    assert!(second.attrs.is_empty());
}

#[test]
fn design_example_loads_with_every_section() {
    let config = parse(DESIGN_YAML).expect("the DESIGN.md example must load");
    assert_eq!(
        config.listen.tcp,
        vec![ListenAddr::from(
            "0.0.0.0:5060".parse::<SocketAddr>().unwrap()
        )]
    );
    assert_eq!(config.advertise.as_deref(), Some("192.0.2.10"));
    assert_eq!(config.domain.local, vec!["example.com", "127.0.0.1"]);
    assert_eq!(config.server.instance_id, "lb1");
    assert_eq!(
        config.metrics.prometheus,
        Some(PrometheusConfig {
            listen: "127.0.0.1:9090".parse().unwrap(),
            token: None,
        })
    );
    assert_eq!(config.admin.listen, Some("127.0.0.1:9091".parse().unwrap()));
}

#[test]
fn example_configs_in_the_repo_parse() {
    let lb = from_text_with_vars(
        include_str!("../../config/lb.yaml"),
        Path::new("config/lb.yaml"),
        &|_| None,
    )
    .expect("config/lb.yaml");
    assert_eq!(
        lb.listen.udp,
        vec![ListenAddr::from(
            "127.0.0.1:5060".parse::<SocketAddr>().unwrap()
        )]
    );
    assert_eq!(
        lb.listen.tcp,
        vec![ListenAddr::from(
            "127.0.0.1:5060".parse::<SocketAddr>().unwrap()
        )]
    );
    assert_eq!(lb.script.path, PathBuf::from("config/../scripts/lb.py"));
    let group = &lb.gateway.groups[0];
    assert_eq!(
        (group.name.as_str(), group.algorithm),
        ("backends", Algorithm::Hash)
    );
    assert_eq!(
        group.destinations[0].address,
        "127.0.0.1:5071".parse().unwrap()
    );
    assert_eq!(group.destinations[0].weight, 2);
    assert_eq!(
        group.destinations[1].address,
        "127.0.0.1:5072".parse().unwrap()
    );

    let lb_everywhere = from_text_with_vars(
        include_str!("../../config/lb.yaml"),
        Path::new("config/lb.yaml"),
        &|name| (name == "SIPHON_LISTEN").then(|| "0.0.0.0:5070".to_string()),
    )
    .expect("config/lb.yaml with SIPHON_LISTEN");
    assert_eq!(
        lb_everywhere.listen.udp,
        vec![ListenAddr::from(
            "0.0.0.0:5070".parse::<SocketAddr>().unwrap()
        )]
    );

    let proxy = from_text_with_vars(
        include_str!("../../config/proxy.yaml"),
        Path::new("config/proxy.yaml"),
        &|_| None,
    )
    .expect("config/proxy.yaml");
    assert_eq!(proxy.domain.local, vec!["127.0.0.1", "localhost"]);
    assert_eq!(
        proxy.script.path,
        PathBuf::from("config/../scripts/proxy.py")
    );
}

#[test]
fn example_configs_load_with_their_scripts() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for name in ["config/lb.yaml", "config/proxy.yaml"] {
        let config = load(&root.join(name)).unwrap_or_else(|e| panic!("{e}"));
        assert!(config.script.path.is_file(), "{name}");
    }
}

#[test]
fn expansion_uses_value_then_default() {
    let lookup = |name: &str| match name {
        "PORT" => Some("5070".to_string()),
        "EMPTY" => Some(String::new()),
        _ => None,
    };
    let expanded = |text: &str| expand_vars(text, &lookup).ok();
    assert_eq!(expanded("a: ${PORT}").as_deref(), Some("a: 5070"));
    assert_eq!(expanded("a: ${PORT:-1}").as_deref(), Some("a: 5070"));
    assert_eq!(expanded("a: ${UNSET:-x y}").as_deref(), Some("a: x y"));
    assert_eq!(
        expanded("a: ${EMPTY:-fallback}").as_deref(),
        Some("a: fallback")
    );
    assert_eq!(expanded("a: ${EMPTY}.").as_deref(), Some("a: ."));
    assert_eq!(
        expanded("a: $$${PORT} $5 $$HOME").as_deref(),
        Some("a: $5070 $5 $HOME")
    );
    assert_eq!(
        expanded("a: 1 # see ${UNSET}\n# ${ALSO_UNSET}\n").as_deref(),
        Some("a: 1 # see ${UNSET}\n# ${ALSO_UNSET}\n")
    );
    assert_eq!(
        expanded("a: \"x#${PORT}\"").as_deref(),
        Some("a: \"x#5070\"")
    );
    // An escaped quote keeps the string open; a trailing backslash is kept.
    assert_eq!(
        expanded("a: \"q\\\" # ${PORT}\" # ${UNSET}\nb: \"\\").as_deref(),
        Some("a: \"q\\\" # 5070\" # ${UNSET}\nb: \"\\")
    );
}

#[test]
fn expansion_feeds_the_parser() {
    let text = "listen:\n  udp: [\"${ADDR:-127.0.0.1:5080}\"]\nscript: {path: \"${DIR}/lb.py\"}\n";
    let config = from_text_with_vars(text, origin(), &|name| {
        (name == "DIR").then(|| "/opt/siphon".to_string())
    })
    .expect("expanded config");
    assert_eq!(
        config.listen.udp,
        vec![ListenAddr::from(
            "127.0.0.1:5080".parse::<SocketAddr>().unwrap()
        )]
    );
    assert_eq!(config.script.path, PathBuf::from("/opt/siphon/lb.py"));

    let from_process = from_text(
            "listen: {udp: [\"${SIPHON_TEST_SURELY_UNSET_VAR:-127.0.0.1:5090}\"]}\nscript: {path: /x.py}\n",
            origin(),
        )
        .expect("default from the real environment lookup");
    assert_eq!(
        from_process.listen.udp,
        vec![ListenAddr::from(
            "127.0.0.1:5090".parse::<SocketAddr>().unwrap()
        )]
    );
}

#[test]
fn unset_variable_is_named_with_its_line() {
    let message = error_of("script: {path: /x.py}\nserver:\n  instance_id: ${NODE_NAME}\n");
    assert_eq!(
            message,
            "config/test.yaml: line 3: environment variable `NODE_NAME` is not set; set it or give a default with ${NODE_NAME:-default}"
        );
}

#[test]
fn malformed_references_are_errors() {
    assert!(error_of("script: {path: /x.py}\na: ${OPEN\n").contains("line 2: `${` is not closed"));
    assert!(error_of("a: ${1BAD}\n").contains("line 1: `${1BAD}` is not a variable reference"));
    assert!(error_of("a: ${}\n").contains("is not a variable reference"));
}

#[test]
fn unknown_variant_names_key_line_and_choices() {
    let text = with_group(
            "    - name: backends\n      algorithm: hashh\n      destinations: [{uri: \"sip:127.0.0.1\"}]\n",
        );
    assert_eq!(
            error_of(&text),
            "config/test.yaml: gateway.groups[0].algorithm: unknown variant `hashh`, expected one of `weighted`, `round_robin`, `hash`, `least_calls` (line 5)"
        );
}

#[test]
fn unknown_keys_are_named_with_their_path() {
    let top = error_of("script: {path: /x.py}\nlisten_udp: [\"0.0.0.0:5060\"]\n");
    assert!(
        top.starts_with(
            "config/test.yaml: listen_udp: unknown field `listen_udp`, expected one of `listen`"
        ),
        "{top}"
    );
    assert!(top.ends_with("(line 2)"), "{top}");

    let nested = error_of(&with_group(
            "    - name: b\n      probe: {enabled: true, interval: 3}\n      destinations: [{uri: \"sip:127.0.0.1\"}]\n",
        ));
    assert!(
            nested.starts_with("config/test.yaml: gateway.groups[0].probe.interval: unknown field `interval`, expected one of `enabled`, `interval_secs`"),
            "{nested}"
        );

    let in_destination = error_of(&with_group(
            "    - name: b\n      destinations:\n        - uri: \"sip:127.0.0.1\"\n          wieght: 2\n",
        ));
    assert!(
        in_destination.starts_with(
            "config/test.yaml: gateway.groups[0].destinations[0].wieght: unknown field `wieght`"
        ),
        "{in_destination}"
    );
    assert!(in_destination.ends_with("(line 7)"), "{in_destination}");
}

#[test]
fn missing_script_section_says_what_to_add() {
    let message = error_of("listen: {udp: [\"127.0.0.1:5060\"]}\n");
    assert!(message.contains("missing field `script`"), "{message}");
    assert!(message.contains("add `script: {path:"), "{message}");
}

#[test]
fn yaml_syntax_errors_give_a_line() {
    let message = error_of("script: {path: /x.py}\n  bad: indentation\n");
    assert!(
        message.starts_with("config/test.yaml: invalid YAML: "),
        "{message}"
    );
    assert!(message.ends_with("(line 2)"), "{message}");
    assert!(!message.contains("column"), "{message}");
}

#[test]
fn wrong_types_are_named() {
    let message = error_of("script: {path: /x.py}\nregistrar: {default_expires: -1}\n");
    assert_eq!(
            message,
            "config/test.yaml: registrar.default_expires: invalid type: integer `-1`, expected u32 (line 2)"
        );
}

#[test]
fn bad_listen_addresses_are_named_by_index() {
    let message =
        error_of("script: {path: /x.py}\nlisten:\n  udp: [\"127.0.0.1:5060\", \"127.0.0.1\"]\n");
    assert_eq!(
            message,
            "config/test.yaml: listen.udp[1]: `127.0.0.1` is not an ip:port address; write it like \"0.0.0.0:5060\" or \"[::1]:5060\" (line 3)"
        );
    let admin = error_of("script: {path: /x.py}\nadmin: {listen: localhost}\n");
    assert!(
        admin.starts_with("config/test.yaml: admin.listen: `localhost` is not an ip:port"),
        "{admin}"
    );
    let twice =
        error_of("script: {path: /x.py}\nlisten: {tcp: [\"127.0.0.1:1\", \"127.0.0.1:1\"]}\n");
    assert!(
        twice.contains("listen.tcp[1]: 127.0.0.1:1 is listed twice"),
        "{twice}"
    );
}

#[test]
fn at_least_one_listener_is_required() {
    let message = error_of("script: {path: /x.py}\nlisten: {udp: [], tcp: []}\n");
    assert!(
        message.starts_with("config/test.yaml: listen: no listener"),
        "{message}"
    );
}

#[test]
fn group_errors_name_their_key() {
    let duplicate = error_of(&with_group(
            "    - name: a\n      destinations: [{uri: \"sip:127.0.0.1\"}]\n    - name: a\n      destinations: [{uri: \"sip:127.0.0.2\"}]\n",
        ));
    assert!(
        duplicate
            .contains("gateway.groups[1].name: duplicate group name `a` (also gateway.groups[0])"),
        "{duplicate}"
    );

    let empty_name = error_of(&with_group(
        "    - name: \" \"\n      destinations: [{uri: \"sip:127.0.0.1\"}]\n",
    ));
    assert!(
        empty_name.contains("gateway.groups[0].name: must not be empty"),
        "{empty_name}"
    );

    let zero_weights = error_of(&with_group(
            "    - name: a\n      destinations:\n        - {uri: \"sip:127.0.0.1\", weight: 0}\n        - {uri: \"sip:127.0.0.2\", weight: 0}\n",
        ));
    assert!(
        zero_weights.contains("gateway.groups[0].destinations: every destination has weight 0"),
        "{zero_weights}"
    );

    let no_destinations = error_of(&with_group("    - name: a\n"));
    assert!(
        no_destinations
            .contains("gateway.groups[0].destinations: a group needs at least one destination"),
        "{no_destinations}"
    );

    let same_uri = error_of(&with_group(
            "    - name: a\n      destinations:\n        - {uri: \"sip:127.0.0.1\"}\n        - {uri: \"sip:127.0.0.1\", address: \"127.0.0.2:5060\"}\n",
        ));
    assert!(
            same_uri.contains("gateway.groups[0].destinations[1].uri: `sip:127.0.0.1` is already used by destinations[0]"),
            "{same_uri}"
        );
}

#[test]
fn some_zero_weights_are_allowed() {
    let config = parse(&with_group(
            "    - name: a\n      destinations:\n        - {uri: \"sip:127.0.0.1\", weight: 0}\n        - {uri: \"sip:127.0.0.2\"}\n",
        ))
        .expect("one destination with weight");
    assert_eq!(config.gateway.groups[0].destinations[0].weight, 0);
}

#[test]
fn probe_ranges_are_checked() {
    let group = |probe: &str| {
        with_group(&format!(
                "    - name: a\n      probe: {probe}\n      destinations: [{{uri: \"sip:127.0.0.1\"}}]\n"
            ))
    };
    assert!(error_of(&group("{interval_secs: 0}"))
        .contains("gateway.groups[0].probe.interval_secs: must be from 1 to 3600"));
    assert!(error_of(&group("{failure_threshold: 0}"))
        .contains("gateway.groups[0].probe.failure_threshold: must be from 1 to 1000"));
    assert!(error_of(&group("{timeout_ms: 0}"))
        .contains("gateway.groups[0].probe.timeout_ms: must be from 1 to 60000"));
}

#[test]
fn probe_timeout_defaults_to_interval_capped_at_five_seconds() {
    let probe = |interval_secs, timeout_ms| ProbeConfig {
        enabled: true,
        interval_secs,
        failure_threshold: 3,
        timeout_ms,
        ..ProbeConfig::default()
    };
    assert_eq!(probe(2, None).timeout(), Duration::from_secs(2));
    assert_eq!(probe(30, None).timeout(), Duration::from_secs(5));
    assert_eq!(probe(30, Some(700)).timeout(), Duration::from_millis(700));
}

#[test]
fn destination_address_defaults_to_the_uri_host_and_port() {
    let listening = "listen: {udp: [\"127.0.0.1:5060\"], tcp: [\"127.0.0.1:5060\"], tls: [{address: \"127.0.0.1:5061\", cert: c.pem, key: k.pem}]}\n";
    let config = parse(&format!("{listening}{}", with_group(
            "    - name: a\n      destinations:\n        - uri: \"sip:127.0.0.1:5080\"\n        - uri: \"sip:alice@127.0.0.2;transport=tcp\"\n        - uri: \"sips:127.0.0.3\"\n        - uri: \"sip:[::1]:5099\"\n        - {uri: \"sip:backend.example.com:5077\", address: \"127.0.0.4\"}\n        - {uri: \"sip:localhost\"}\n",
        )))
        .expect("destinations");
    let addresses: Vec<SocketAddr> = config.gateway.groups[0]
        .destinations
        .iter()
        .map(|d| d.address)
        .collect();
    assert_eq!(addresses[0], "127.0.0.1:5080".parse().unwrap());
    assert_eq!(addresses[1], "127.0.0.2:5060".parse().unwrap());
    assert_eq!(addresses[2], "127.0.0.3:5061".parse().unwrap());
    assert_eq!(addresses[3], "[::1]:5099".parse().unwrap());
    assert_eq!(addresses[4], "127.0.0.4:5077".parse().unwrap());
    assert!(addresses[5].ip().is_loopback(), "{}", addresses[5]);
    assert_eq!(addresses[5].port(), 5060);
}

#[test]
fn bad_destination_uris_and_addresses_are_named() {
    let destination = |fields: &str| {
        error_of(&with_group(&format!(
            "    - name: a\n      destinations:\n        - {{{fields}}}\n"
        )))
    };
    let scheme = destination("uri: \"http://127.0.0.1\"");
    assert!(
        scheme.contains(
            "gateway.groups[0].destinations[0].uri: `http://127.0.0.1` is not a sip: URI"
        ),
        "{scheme}"
    );
    let no_host = destination("uri: \"sip:alice@\"");
    assert!(
        no_host.contains("destinations[0].uri: `sip:alice@`: the host is missing"),
        "{no_host}"
    );
    let bad_port = destination("uri: \"sip:127.0.0.1:50x\"");
    assert!(
        bad_port.contains("destinations[0].uri: `sip:127.0.0.1:50x`: `50x` is not a port number"),
        "{bad_port}"
    );
    let unresolvable = destination("uri: \"sip:backend.invalid\"");
    assert!(
        unresolvable.contains("destinations[0].uri: cannot resolve `backend.invalid`"),
        "{unresolvable}"
    );
    let bad_address = destination("uri: \"sip:127.0.0.1\", address: \"nowhere.invalid:5060\"");
    assert!(
        bad_address.contains("destinations[0].address: cannot resolve `nowhere.invalid`"),
        "{bad_address}"
    );
}

#[test]
fn attribute_scalars_become_text() {
    let config = parse(&with_group(
            "    - name: a\n      destinations:\n        - {uri: \"sip:127.0.0.1\", attrs: {zone: 1, primary: true, region: eu}}\n",
        ))
        .expect("scalar attrs");
    let attrs = &config.gateway.groups[0].destinations[0].attrs;
    assert_eq!(attrs.get("zone").map(String::as_str), Some("1"));
    assert_eq!(attrs.get("primary").map(String::as_str), Some("true"));
    assert_eq!(attrs.get("region").map(String::as_str), Some("eu"));
    let nested = error_of(&with_group(
            "    - name: a\n      destinations:\n        - {uri: \"sip:127.0.0.1\", attrs: {zone: [1]}}\n",
        ));
    assert!(
        nested.contains("destinations[0].attrs.zone: invalid type: sequence"),
        "{nested}"
    );
}

#[test]
fn registrar_expires_must_be_ordered() {
    let default_outside = error_of("script: {path: /x.py}\nregistrar: {default_expires: 30}\n");
    assert!(
        default_outside.contains(
            "registrar.default_expires: 30 must be between min_expires (60) and max_expires (7200)"
        ),
        "{default_outside}"
    );
    let min_above_max = error_of("script: {path: /x.py}\nregistrar: {min_expires: 9000}\n");
    assert!(
        min_above_max.contains("registrar.min_expires: 9000 is above max_expires (7200)"),
        "{min_above_max}"
    );
    let no_contacts = error_of("script: {path: /x.py}\nregistrar: {max_contacts: 0}\n");
    assert!(
        no_contacts.contains("registrar.max_contacts: 0 is out of range; use 1 to 1000"),
        "{no_contacts}"
    );
    let url = error_of(
        "script: {path: /x.py}\nregistrar: {backend: redis, redis: {url: \"127.0.0.1:6379\"}}\n",
    );
    assert!(
        url.contains("registrar.redis.url: `127.0.0.1:6379` is not a Redis URL"),
        "{url}"
    );
    let redis =
        parse("script: {path: /x.py}\nregistrar: {backend: redis}\n").expect("redis backend");
    assert_eq!(redis.registrar.backend, RegistrarBackend::Redis);
    let both = error_of(
        "script: {path: /x.py}\nregistrar: {backend: redis, redis: {url: \"redis://h:1\", cluster: [\"h:7000\"]}}\n",
    );
    assert!(
        both.contains(
            "registrar.redis: give one of url, sentinels or cluster, not url and cluster"
        ),
        "{both}"
    );
    let bad_node = error_of(
        "script: {path: /x.py}\nregistrar: {redis: {sentinels: [\"10.0.0.1:26379\", \"nowhere\"]}}\n",
    );
    assert!(
        bad_node.contains("registrar.redis.sentinels[1]: `nowhere` is not a Redis node"),
        "{bad_node}"
    );
    let sentinel = parse(
        "script: {path: /x.py}\nregistrar: {backend: redis, redis: {sentinels: [\"127.0.0.1:26379\"], master_name: lb}}\n",
    )
    .expect("sentinel config");
    assert_eq!(sentinel.registrar.redis.master_name, "lb");
    assert_eq!(
        RedisConfig::node_url("[2001:db8::1]:7000").as_deref(),
        Some("redis://[2001:db8::1]:7000")
    );
    let braced = error_of("script: {path: /x.py}\nregistrar: {redis: {key_prefix: \"{reg}:\"}}\n");
    assert!(
        braced.contains("registrar.redis.key_prefix: `{reg}:` has a brace"),
        "{braced}"
    );
    let timeout = error_of("script: {path: /x.py}\nregistrar: {redis: {lookup_timeout_ms: 0}}\n");
    assert!(
        timeout.contains("registrar.redis.lookup_timeout_ms: 0 is out of range"),
        "{timeout}"
    );
}

#[test]
fn shared_health_needs_redis_spelled_right_and_gets_an_instance_id_of_its_own() {
    let shared = parse(
        "script: {path: /x.py}\ngateway: {share_health: redis}\nserver: {instance_id: lb1}\n",
    )
    .expect("shared health");
    assert_eq!(shared.gateway.share_health, ShareHealth::Redis);
    let off = parse("script: {path: /x.py}\n").expect("default");
    assert_eq!(off.gateway.share_health, ShareHealth::Off);
    // Without one, the host's name and SIP port: two nodes differ.
    let default_id = parse("script: {path: /x.py}\ngateway: {share_health: redis}\n")
        .expect("a default of the node's own");
    assert!(default_id.server.instance_id.ends_with("-5060"));
    let typo = error_of(
        "script: {path: /x.py}\ngateway: {share_health: gossip}\nserver: {instance_id: lb1}\n",
    );
    assert!(typo.contains("gateway.share_health"), "{typo}");
}

#[test]
fn log_level_must_be_a_level_or_filter() {
    let config =
        parse("script: {path: /x.py}\nlog: {level: \"warn,siphon::sip=trace\", format: json}\n")
            .expect("filter directive");
    assert_eq!(config.log.format, LogFormat::Json);
    let typo = error_of("script: {path: /x.py}\nlog: {level: verbose}\n");
    assert!(
        typo.contains("log.level: unknown log level `verbose`"),
        "{typo}"
    );
    let bad_directive = error_of("script: {path: /x.py}\nlog: {level: \"info,siphon=loud\"}\n");
    assert!(
        bad_directive.contains("log.level: invalid log filter"),
        "{bad_directive}"
    );
}

#[test]
fn transaction_timers_are_checked() {
    let zero = error_of("script: {path: /x.py}\ntransaction: {t1_ms: 0}\n");
    assert!(
        zero.contains("transaction.t1_ms: 0 is out of range; use 1 to 10000"),
        "{zero}"
    );
    let t2_low = error_of("script: {path: /x.py}\ntransaction: {t1_ms: 500, t2_ms: 400}\n");
    assert!(
        t2_low.contains("transaction.t2_ms: 400 is out of range; use 500 to 60000"),
        "{t2_low}"
    );
}

#[test]
fn other_scalar_checks_name_their_key() {
    let advertise = error_of("script: {path: /x.py}\nadvertise: \"sip://x\"\n");
    assert!(
        advertise.contains("advertise: `sip://x` is not a host"),
        "{advertise}"
    );
    let domain = error_of("script: {path: /x.py}\ndomain: {local: [\"ok\", \"\"]}\n");
    assert!(
        domain.contains("domain.local[1]: must be a host name"),
        "{domain}"
    );
    let instance = error_of("script: {path: /x.py}\nserver: {instance_id: \"lb 1\"}\n");
    assert!(
        instance.contains("server.instance_id: must be a non-empty name"),
        "{instance}"
    );
    let script = error_of("script: {path: \"\"}\n");
    assert!(
        script.contains("script.path: must name the routing script"),
        "{script}"
    );
}

#[test]
fn local_domains_are_lowercased() {
    let config =
        parse("script: {path: /x.py}\ndomain: {local: [\"Example.COM\", \" 127.0.0.1 \"]}\n")
            .expect("domains");
    assert_eq!(config.domain.local, vec!["example.com", "127.0.0.1"]);
}

#[test]
fn load_resolves_a_relative_script_next_to_the_config() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("scripts")).expect("scripts dir");
    std::fs::create_dir(dir.path().join("config")).expect("config dir");
    std::fs::write(dir.path().join("scripts/lb.py"), "# routing\n").expect("script");
    let config_path = dir.path().join("config/siphon.yaml");
    std::fs::write(&config_path, "script: {path: ../scripts/lb.py}\n").expect("config");

    let config = load(&config_path).expect("config with existing script");
    assert_eq!(
        config.script.path,
        dir.path().join("config/../scripts/lb.py")
    );

    std::fs::write(&config_path, "script: {path: ../scripts/missing.py}\n").expect("config");
    let message = load(&config_path).unwrap_err().to_string();
    assert!(
        message.contains("script.path: cannot read script"),
        "{message}"
    );
    assert!(
        message.contains("missing.py: No such file or directory"),
        "{message}"
    );
    assert!(
        message.starts_with(&config_path.display().to_string()),
        "{message}"
    );

    let bare = from_text("script: {path: lb.py}\n", Path::new("siphon.yaml")).expect("bare origin");
    assert_eq!(bare.script.path, PathBuf::from("lb.py"));
}

#[test]
fn missing_config_file_is_reported_plainly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("nope.yaml");
    let error = load(&path).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "cannot read config file {}: No such file or directory",
            path.display()
        )
    );
    assert_eq!(error.key(), None);
}

#[test]
fn errors_are_one_line_and_expose_their_key() {
    let error = parse("script: {path: /x.py}\nlog: {level: verbose}\n").unwrap_err();
    assert_eq!(error.key(), Some("log.level"));
    assert!(!error.to_string().contains('\n'));
}

#[test]
fn algorithm_names_round_trip() {
    for algorithm in Algorithm::ALL {
        assert_eq!(algorithm.as_str().parse::<Algorithm>(), Ok(algorithm));
    }
    assert!("roundrobin"
        .parse::<Algorithm>()
        .unwrap_err()
        .to_string()
        .contains("expected weighted, round_robin, hash or least_calls"));
}

#[test]
fn failover_and_passive_health_have_defaults_and_checked_keys() {
    let config = parse(&with_group(
        "    - name: a\n      destinations: [{uri: \"sip:127.0.0.1\"}]\n",
    ))
    .expect("defaults load");
    let group = &config.gateway.groups[0];
    assert_eq!(group.failover, FailoverConfig::default());
    assert!(group.failover.enabled);
    assert_eq!(group.failover.no_response_ms, 1000);
    assert_eq!(group.failover.on_codes, [503]);
    assert_eq!(group.passive.failure_threshold, 3);
    assert_eq!(group.passive.eject_secs, 30);
    assert_eq!(group.max_retry_after_secs, 300);

    let set = parse(&with_group(
        "    - name: a\n      failover: {no_response_ms: 400, on_codes: [503, 480], max_attempts: 2}\n      passive: {failure_threshold: 5, eject_secs: 10}\n      max_retry_after_secs: 60\n      destinations: [{uri: \"sip:127.0.0.1\"}]\n",
    ))
    .expect("settings load");
    let policy = set.gateway.groups[0].failover.policy();
    assert_eq!(policy.no_response, Duration::from_millis(400));
    assert_eq!(policy.on_codes, [503, 480]);
    assert_eq!(policy.max_attempts, 2);

    let cases = [
        (
            "failover: {no_response_ms: 0}",
            "gateway.groups[0].failover.no_response_ms: must be from 1 to 60000",
        ),
        (
            "failover: {on_codes: [200]}",
            "gateway.groups[0].failover.on_codes: 200 is not a final response code",
        ),
        (
            "failover: {max_attempts: 0}",
            "gateway.groups[0].failover.max_attempts: must be at least 1",
        ),
        (
            "failover: {retries: 2}",
            "gateway.groups[0].failover.retries",
        ),
        (
            "passive: {failure_threshold: 0}",
            "gateway.groups[0].passive.failure_threshold: must be from 1 to 1000",
        ),
        (
            "max_retry_after_secs: 0",
            "gateway.groups[0].max_retry_after_secs: must be at least 1",
        ),
    ];
    for (line, expected) in cases {
        let error = error_of(&with_group(&format!(
            "    - name: a\n      {line}\n      destinations: [{{uri: \"sip:127.0.0.1\"}}]\n"
        )));
        assert!(error.contains(expected), "{line}: {error}");
    }
}

#[test]
fn listeners_take_an_advertised_name_of_their_own() {
    let config = parse(
        "listen:\n  udp:\n    - \"127.0.0.1:5060\"\n    - {address: \"0.0.0.0:5070\", advertise: \"sip.example.com:5080\"}\n  tcp: [{address: \"[::]:5060\", advertise: \"[2001:db8::5]\"}]\nadvertise: \"lb.example.com\"\nscript: {path: /srv/lb.py}\n",
    )
    .expect("loads");
    assert_eq!(config.listen.udp[0].advertise, None);
    assert_eq!(
        config.listen.udp[1],
        ListenAddr {
            address: "0.0.0.0:5070".parse().unwrap(),
            advertise: Some("sip.example.com:5080".into()),
        }
    );
    assert_eq!(
        config.listen.tcp[0].advertise.as_deref(),
        Some("[2001:db8::5]")
    );
    assert_eq!(config.advertise.as_deref(), Some("lb.example.com"));

    for (listen, expected) in [
        (
            "{address: \"0.0.0.0:5070\", advertise: \"sip.example.com:0\"}",
            "listen.udp[0].advertise: `sip.example.com:0` is not a host",
        ),
        ("{advertise: \"x\"}", "missing field `address`"),
        (
            "{address: \"0.0.0.0:5070\", port: 1}",
            "unknown field `port`",
        ),
        ("\"0.0.0.0\"", "listen.udp[0]"),
    ] {
        let error = error_of(&format!(
            "listen: {{udp: [{listen}]}}\nscript: {{path: /srv/lb.py}}\n"
        ));
        assert!(error.contains(expected), "{listen}: {error}");
    }
    let bad_global = error_of("advertise: \"a.example.com:x\"\nscript: {path: /srv/lb.py}\n");
    assert!(
        bad_global.contains("advertise: `a.example.com:x` is not a host"),
        "{bad_global}"
    );
}

#[test]
fn absurd_numbers_are_refused_with_their_key() {
    // Each of these used to load and then panic or misbehave at run time.
    let cases = [
        (
            "transaction: {timer_c_secs: 99999999999}",
            "transaction.timer_c_secs: 99999999999 is out of range; use 1 to 7200",
        ),
        (
            "transaction: {t2_ms: 999999999}",
            "transaction.t2_ms: 999999999 is out of range",
        ),
        (
            "script: {path: /x.py, timeout_ms: 5}",
            "script.timeout_ms: 5 is out of range; use 10 to 60000 ms",
        ),
        (
            "capture: {hep: {address: \"0.0.0.0:9060\"}}",
            "capture.hep.address: 0.0.0.0:9060 names no collector",
        ),
        (
            "capture: {hep: {address: \"127.0.0.1:9060\", sample: 2}}",
            "capture.hep.sample: 2 is out of range",
        ),
        (
            "capture: {hep: {address: \"127.0.0.1:9060\", methods: [\"IN VITE\"]}}",
            "capture.hep.methods[0]: `IN VITE` is not a SIP method",
        ),
        (
            "capture: {hep: {address: \"127.0.0.1:9060\", methods: []}}",
            "capture.hep.methods: is empty",
        ),
        (
            "capture: {hep: {address: \"127.0.0.1:9060\", password: \"\"}}",
            "capture.hep.password: must be 1 to 99 bytes",
        ),
        (
            "tracing: {otlp: {endpoint: \"https://collector:4318\"}}",
            "tracing.otlp.endpoint: `https://collector:4318`: write it http://host:port",
        ),
        (
            "tracing: {otlp: {endpoint: \"http://\"}}",
            "tracing.otlp.endpoint: `http://` names no host",
        ),
        (
            "tracing: {otlp: {endpoint: \"http://127.0.0.1:4318\", sample: -1}}",
            "tracing.otlp.sample: -1 is out of range",
        ),
        (
            "tracing: {otlp: {endpoint: \"http://127.0.0.1:4318\", queue: 0}}",
            "tracing.otlp.queue: 0 is out of range",
        ),
        (
            "tracing: {otlp: {endpoint: \"http://127.0.0.1:4318\", service_name: \" \"}}",
            "tracing.otlp.service_name: is empty",
        ),
        (
            "tracing: {otlp: {endpoint: \"http://127.0.0.1:4318\", sampel: 1}}",
            "sampel",
        ),
        (
            "script: {path: /x.py, workers: 65}",
            "script.workers: 65 is out of range; use 0 to 64 executors",
        ),
        (
            "script: {path: /x.py, timeout_ms: 500, abandon_ms: 500}",
            "script.abandon_ms: must be longer than script.timeout_ms (500 ms)",
        ),
        (
            "server: {drain_secs: 99999999}",
            "server.drain_secs: 99999999 is out of range",
        ),
        (
            "server: {workers: 1000}",
            "server.workers: 1000 is out of range",
        ),
        (
            "metrics: {log_interval_secs: 99999999}",
            "metrics.log_interval_secs: 99999999 is out of range",
        ),
        (
            "registrar: {max_expires: 99999999}",
            "registrar.max_expires: 99999999 is out of range",
        ),
        (
            "limits: {max_transactions: 0}",
            "limits.max_transactions: 0 is out of range",
        ),
        (
            "limits: {tcp: {max_per_ip: 20000}}",
            "limits.tcp.max_per_ip: 20000 is out of range; use 1 to 10000",
        ),
        (
            "limits: {tcp: {max_pending_bytes: 10}}",
            "limits.tcp.max_pending_bytes: 10 is out of range",
        ),
        (
            "security: {rate_limit: {requests_per_sec: 0, burst: 5}}",
            "security.rate_limit.requests_per_sec: 0 is out of range",
        ),
        (
            "security: {trusted: [\"10.0.0.0/8\", \"10.0.0.0/40\"]}",
            "security.trusted[1]: \"10.0.0.0/40\": the prefix length must be 0 to 32",
        ),
        (
            "security: {scanner_user_agents: [\"\"]}",
            "security.scanner_user_agents[0]: is empty",
        ),
        ("security: {on_limit: shout}", "security.on_limit"),
        (
            "admin: {listen: \"127.0.0.1:9090\"}\nmetrics: {prometheus: {listen: \"127.0.0.1:9090\"}}",
            "metrics.prometheus.listen: 127.0.0.1:9090 is admin.listen's address too",
        ),
        (
            "dns: {servers: [\"192.0.2.53\", \"dns.example\"]}",
            "dns.servers[1]: `dns.example` is not an ip or ip:port",
        ),
        ("dns: {timeout_ms: 0}", "dns.timeout_ms: 0 is out of range"),
        (
            "tls: {client_cert: c.pem}",
            "tls.client_key: client_cert and client_key go together",
        ),
        (
            "listen: {wss: [\"127.0.0.1:8443\"]}",
            "listen.wss[0].cert: is missing",
        ),
        (
            "listen: {ws: [{address: \"127.0.0.1:8080\", cert: c.pem}]}",
            "listen.ws[0]: a plain WebSocket listener takes no cert",
        ),
        (
            "tls: {handshake_timeout_ms: 1}",
            "tls.handshake_timeout_ms: 1 is out of range",
        ),
        (
            "listen: {tls: [{address: \"127.0.0.1:5061\", cert: c.pem}]}",
            "listen.tls[0]: missing field `key`",
        ),
        ("dns: {cache_size: 1}", "dns.cache_size: 1 is out of range"),
        (
            "dns: {negative_ttl_secs: 0}",
            "dns.negative_ttl_secs: 0 is out of range",
        ),
        ("dns: {server: []}", "dns.server: unknown field `server`"),
        (
            "auth: {realm: \"\"}",
            "auth.realm: must be a non-empty name",
        ),
        (
            "auth: {realm: example.com, nonce_ttl_secs: 1}",
            "auth.nonce_ttl_secs: 1 is out of range",
        ),
        (
            "auth: {realm: example.com, credentials: {alice: \"ha1-md5:zz\"}}",
            "auth.credentials.alice: ha1-md5: must be followed by 32 hex digits",
        ),
        (
            "auth: {realm: example.com, credentials_file: /nonexistent/users.yaml}",
            "auth.credentials_file: cannot read /nonexistent/users.yaml",
        ),
    ];
    for (line, expected) in cases {
        let text = if line.starts_with("script:") {
            format!("{line}\n")
        } else {
            format!("script: {{path: /x.py}}\n{line}\n")
        };
        let error = error_of(&text);
        assert!(error.contains(expected), "{line}: {error}");
    }
}

#[test]
fn the_edge_sections_have_safe_defaults_and_read_the_contract_keys() {
    let defaults = parse("script: {path: /x.py}\n").expect("minimal config");
    assert!(
        defaults.security.rate_limit.is_none(),
        "one SBC may send everything"
    );
    assert!(defaults
        .security
        .scanner_user_agents
        .contains(&"friendly-scanner".to_string()));
    assert_eq!(defaults.limits.max_transactions, 100_000);
    assert_eq!(defaults.limits.tcp.max_per_ip, 64);
    assert_eq!(defaults.script.timeout_ms, 1000);
    assert_eq!(defaults.script.workers, 1);
    assert_eq!(
        defaults.script.abandon_after(),
        std::time::Duration::from_secs(10)
    );
    assert!(defaults.auth.is_none());
    let config = parse(
        "script: {path: /x.py, timeout_ms: 200}\n\
         security:\n  trusted: [\"10.0.0.0/8\", \"2001:db8::1\"]\n  rate_limit: {requests_per_sec: 30, burst: 60, ban_secs: 300}\n  on_limit: reply\n\
         limits:\n  max_transactions: 5000\n  tcp: {max_connections: 100, max_per_ip: 4, idle_secs: 60, max_pending_bytes: 1048576}\n\
         auth:\n  realm: example.com\n  credentials: {alice: s3cret, bob: \"ha1-sha256:0000000000000000000000000000000000000000000000000000000000000000\"}\n",
    )
    .expect("the issue's example");
    let policy = config.security.policy();
    assert!(policy.is_trusted("10.1.1.1".parse().unwrap()));
    assert!(policy.is_trusted("2001:db8::1".parse().unwrap()));
    assert!(!policy.is_trusted("127.0.0.2".parse().unwrap()));
    assert!(policy.reply_on_limit);
    assert_eq!(policy.rate_limit.unwrap().burst, 60.0);
    assert_eq!(config.limits.tcp.max_per_ip, 4);
    assert_eq!(config.script.timeout_ms, 200);
    let auth = config.auth.expect("auth section");
    assert_eq!(auth.users().unwrap().len(), 2);
}

#[test]
fn a_credentials_file_is_read_beside_the_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users.yaml"), "carol: pa55\n").unwrap();
    let origin = dir.path().join("siphon.yaml");
    let config = from_text(
        "script: {path: /x.py}\nauth: {realm: example.com, credentials_file: users.yaml}\n",
        &origin,
    )
    .expect("relative credentials file");
    let users = config.auth.unwrap().users().unwrap();
    assert!(users.contains_key("carol"));
}

#[test]
fn capacity_keys_load_with_defaults_and_errors_name_the_key() {
    let config = parse(&with_group(
        "    - name: a\n      destinations: [{uri: \"sip:127.0.0.1\"}]\n",
    ))
    .expect("defaults load");
    let group = &config.gateway.groups[0];
    assert_eq!((group.spill_threshold, group.hash_bound), (1, None));
    let destination = &group.destinations[0];
    assert_eq!(destination.priority, 0);
    assert_eq!((destination.max_calls, destination.max_cps), (None, None));
    assert_eq!(config.gateway.call_max_secs, 4 * 3600);
    assert_eq!(group.probe.success_threshold, 1);

    let set = parse(&format!(
        "{}  call_max_secs: 30\n",
        with_group(
            "    - name: a\n      algorithm: hash\n      hash_bound: 1.25\n      spill_threshold: 2\n      probe: {reply_codes: [200], success_threshold: 3, from: \"sip:ping@lb.example.com\"}\n      destinations:\n        - {uri: \"sip:127.0.0.1\", priority: 1, max_calls: 20, max_cps: 0.5}\n",
        )
    ))
    .expect("settings load");
    let group = &set.gateway.groups[0];
    assert_eq!((group.spill_threshold, group.hash_bound), (2, Some(1.25)));
    let destination = &group.destinations[0];
    assert_eq!(destination.priority, 1);
    assert_eq!(destination.max_calls, Some(20));
    assert_eq!(destination.max_cps, Some(0.5));
    assert_eq!(set.gateway.call_max_secs, 30);
    assert_eq!(group.probe.reply_codes, Some(vec![200]));
    let built = group.to_group();
    assert_eq!(built.destinations()[0].capacity().max_calls(), Some(20));

    let cases = [
        (
            "algorithm: weighted\n      hash_bound: 1.5",
            "gateway.groups[0].hash_bound: bounds the load of a `hash` group",
        ),
        (
            "algorithm: hash\n      hash_bound: 1.0",
            "gateway.groups[0].hash_bound: must be above 1",
        ),
        (
            "spill_threshold: 0",
            "gateway.groups[0].spill_threshold: must be at least 1",
        ),
        (
            "probe: {success_threshold: 0}",
            "gateway.groups[0].probe.success_threshold: must be from 1 to 1000",
        ),
        (
            "probe: {reply_codes: [99]}",
            "gateway.groups[0].probe.reply_codes: 99 is not a SIP status code",
        ),
        (
            "probe: {from: \"mailto:x@y\"}",
            "gateway.groups[0].probe.from: `mailto:x@y` is not a sip: URI",
        ),
    ];
    for (line, expected) in cases {
        let text = with_group(&format!(
            "    - name: a\n      {line}\n      destinations: [{{uri: \"sip:127.0.0.1\"}}]\n"
        ));
        let error = error_of(&text);
        assert!(error.contains(expected), "{line}: {error}");
    }
    let destination_cases = [
        (
            "max_calls: 0",
            "gateway.groups[0].destinations[0].max_calls: must be from 1",
        ),
        (
            "max_cps: 0",
            "gateway.groups[0].destinations[0].max_cps: must be above 0",
        ),
        (
            "max_cps: -1",
            "gateway.groups[0].destinations[0].max_cps: must be above 0",
        ),
        ("priority: x", "gateway.groups[0].destinations[0].priority"),
    ];
    for (key, expected) in destination_cases {
        let text = with_group(&format!(
            "    - name: a\n      destinations: [{{uri: \"sip:127.0.0.1\", {key}}}]\n"
        ));
        let error = error_of(&text);
        assert!(error.contains(expected), "{key}: {error}");
    }
    let error = error_of(&format!(
        "{}  call_max_secs: 0\n",
        with_group("    - name: a\n      destinations: [{uri: \"sip:127.0.0.1\"}]\n")
    ));
    assert!(
        error.contains("gateway.call_max_secs: 0 is out of range"),
        "{error}"
    );
}
