//! Step 3 of loading: semantic checks (ranges, duplicates, URIs) and the
//! one-time resolution of destination addresses.

use super::*;

pub(super) fn invalid(
    origin: &Path,
    key: impl Into<String>,
    message: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        file: origin.to_path_buf(),
        key: key.into(),
        message: message.into(),
    }
}

impl RawConfig {
    pub(super) fn into_config(mut self, origin: &Path) -> Result<Config, ConfigError> {
        check_listen(&self.listen, origin)?;
        check_tls(&mut self.listen, &mut self.tls, origin)?;
        check_websocket(&mut self.listen, origin)?;
        let advertise = check_advertise(self.advertise, origin)?;
        let domain = check_domain(self.domain, origin)?;
        let script = resolve_script(self.script, origin)?;
        let gateway = build_gateway(self.gateway, origin)?;
        check_gateway_transports(&gateway, &self.listen, origin)?;
        check_registrar(&mut self.registrar, origin)?;
        if self.server.instance_id.trim().is_empty() {
            self.server.instance_id = node_name(&self.listen);
            self.server.instance_id_derived = true;
        }
        check_server(&self.server, origin)?;
        check_log(&self.log, origin)?;
        check_transaction(&self.transaction, origin)?;
        check_security(&mut self.security, origin)?;
        check_limits(&self.limits, origin)?;
        check_dns(&self.dns, origin)?;
        check_capture(&mut self.capture, origin)?;
        check_tracing(&self.tracing, origin)?;
        let auth = check_auth(self.auth, origin)?;
        check_metrics(&self.metrics, origin)?;
        check_admin(&mut self.admin, origin)?;
        check_http_ports(&self.admin, &self.metrics, origin)?;
        Ok(Config {
            listen: self.listen,
            advertise,
            domain,
            script,
            gateway,
            registrar: self.registrar,
            server: self.server,
            metrics: self.metrics,
            admin: self.admin,
            log: self.log,
            transaction: self.transaction,
            security: self.security,
            limits: self.limits,
            auth,
            dns: self.dns,
            tls: self.tls,
            capture: self.capture,
            tracing: self.tracing,
        })
    }
}

/// Our Via and Record-Route must name a listener of the protocol a request
/// leaves by (RFC 3261 §18.1.1): a destination reached over a protocol we
/// do not listen on cannot be relayed to.
fn check_gateway_transports(
    gateway: &GatewayConfig,
    listen: &Listen,
    origin: &Path,
) -> Result<(), ConfigError> {
    use crate::sip::Protocol;
    for (g, group) in gateway.groups.iter().enumerate() {
        for (d, destination) in group.destinations.iter().enumerate() {
            let from_uri = crate::sip::Uri::parse(&destination.uri)
                .ok()
                .and_then(|uri| crate::proxy::forward::uri_protocol(&uri).ok());
            let protocol = destination.transport.or(from_uri).unwrap_or(Protocol::Udp);
            let listening = match protocol {
                Protocol::Udp => !listen.udp.is_empty(),
                Protocol::Tcp => !listen.tcp.is_empty(),
                Protocol::Tls => !listen.tls.is_empty(),
                Protocol::Ws | Protocol::Wss => true,
            };
            if !listening {
                let field = if destination.transport.is_some() {
                    "transport"
                } else {
                    "uri"
                };
                let name = protocol.as_str().to_ascii_lowercase();
                return Err(invalid(
                    origin,
                    format!("gateway.groups[{g}].destinations[{d}].{field}"),
                    format!("{name} needs a listener of its own for our Via: add an ip:port to listen.{name}"),
                ));
            }
        }
    }
    Ok(())
}

pub(super) fn check_listen(listen: &Listen, origin: &Path) -> Result<(), ConfigError> {
    let none = |l: &Listen| {
        l.udp.is_empty()
            && l.tcp.is_empty()
            && l.tls.is_empty()
            && l.ws.is_empty()
            && l.wss.is_empty()
    };
    if none(listen) {
        return Err(invalid(
            origin,
            "listen",
            "no listener; add an ip:port to listen.udp, listen.tcp or listen.tls",
        ));
    }
    let tls: Vec<ListenAddr> = listen.tls.iter().map(TlsListen::listen_addr).collect();
    let ws: Vec<ListenAddr> = listen.ws.iter().map(WsListen::listen_addr).collect();
    let wss: Vec<ListenAddr> = listen.wss.iter().map(WsListen::listen_addr).collect();
    for (transport, addresses) in [
        ("udp", &listen.udp),
        ("tcp", &listen.tcp),
        ("tls", &tls),
        ("ws", &ws),
        ("wss", &wss),
    ] {
        let mut seen = HashSet::new();
        for (index, listen) in addresses.iter().enumerate() {
            let address = listen.address;
            if !seen.insert(address) {
                return Err(invalid(
                    origin,
                    format!("listen.{transport}[{index}]"),
                    format!("{address} is listed twice"),
                ));
            }
            if let Some(advertise) = &listen.advertise {
                check_advertised_name(advertise).map_err(|message| {
                    invalid(
                        origin,
                        format!("listen.{transport}[{index}].advertise"),
                        message,
                    )
                })?;
            }
        }
    }
    Ok(())
}

pub(super) fn check_advertise(
    advertise: Option<String>,
    origin: &Path,
) -> Result<Option<String>, ConfigError> {
    let Some(text) = advertise else {
        return Ok(None);
    };
    check_advertised_name(&text).map_err(|message| invalid(origin, "advertise", message))?;
    Ok(Some(text.trim().to_string()))
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`, as `advertise` takes.
fn check_advertised_name(text: &str) -> Result<(), String> {
    let trimmed = text.trim();
    let bad = || {
        format!("`{text}` is not a host; write a host or ip such as \"192.0.2.10\" (optionally with :port)")
    };
    if trimmed.is_empty() || trimmed.contains(char::is_whitespace) || trimmed.contains("://") {
        return Err(bad());
    }
    let (host, port) = crate::proxy::local::split_host_port(trimmed);
    let has_port_text = trimmed.len() > host.len();
    if host.is_empty() || (has_port_text && port.is_none_or(|p| p == 0)) {
        return Err(bad());
    }
    Ok(())
}

pub(super) fn check_domain(domain: Domain, origin: &Path) -> Result<Domain, ConfigError> {
    let mut local = Vec::with_capacity(domain.local.len());
    for (index, name) in domain.local.iter().enumerate() {
        let name = name.trim().to_ascii_lowercase();
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(invalid(
                origin,
                format!("domain.local[{index}]"),
                "must be a host name or ip address",
            ));
        }
        local.push(name);
    }
    Ok(Domain { local })
}

pub(super) fn resolve_script(
    script: ScriptConfig,
    origin: &Path,
) -> Result<ScriptConfig, ConfigError> {
    if script.path.as_os_str().is_empty() {
        return Err(invalid(
            origin,
            "script.path",
            "must name the routing script, e.g. \"/etc/siphon/lb.py\"",
        ));
    }
    let path = if script.path.is_relative() {
        match origin.parent() {
            Some(dir) => dir.join(&script.path),
            None => script.path,
        }
    } else {
        script.path
    };
    check_range(
        origin,
        "script.timeout_ms",
        script.timeout_ms,
        10,
        60_000,
        "ms",
    )?;
    check_range(
        origin,
        "script.workers",
        script.workers as u64,
        0,
        64,
        "executors",
    )?;
    if let Some(abandon_ms) = script.abandon_ms {
        if abandon_ms <= script.timeout_ms {
            return Err(invalid(
                origin,
                "script.abandon_ms",
                format!(
                    "must be longer than script.timeout_ms ({} ms): a handler is interrupted before its executor is given up",
                    script.timeout_ms
                ),
            ));
        }
        check_range(origin, "script.abandon_ms", abandon_ms, 20, 600_000, "ms")?;
    }
    Ok(ScriptConfig { path, ..script })
}

/// `admin`: a token file relative to the config; an admin API reachable
/// from other hosts must ask for a token.
pub(super) fn check_admin(admin: &mut AdminConfig, origin: &Path) -> Result<(), ConfigError> {
    if let Some(file) = &admin.token_file {
        if file.is_relative() {
            let dir = origin.parent().unwrap_or(Path::new("."));
            admin.token_file = Some(dir.join(file));
        }
    }
    let token = admin
        .bearer_token()
        .map_err(|e| invalid(origin, format!("admin.{}", e.key), e.message))?;
    match admin.listen {
        Some(addr) if !addr.ip().is_loopback() && token.is_none() => Err(invalid(
            origin,
            "admin.token",
            format!(
                "admin.listen {addr} is reachable from other hosts: set admin.token (or admin.token_file), or listen on 127.0.0.1"
            ),
        )),
        _ => Ok(()),
    }
}

/// The admin API and the Prometheus endpoint are two servers: one address
/// cannot take both (the second bind would fail at start).
fn check_http_ports(
    admin: &AdminConfig,
    metrics: &MetricsConfig,
    origin: &Path,
) -> Result<(), ConfigError> {
    let prometheus = metrics.prometheus.as_ref().map(|p| p.listen);
    match (admin.listen, prometheus) {
        (Some(admin), Some(prometheus)) if admin == prometheus => Err(invalid(
            origin,
            "metrics.prometheus.listen",
            format!("{prometheus} is admin.listen's address too: give each its own port (the admin API serves /metrics as well)"),
        )),
        _ => Ok(()),
    }
}

pub(super) fn check_metrics(m: &MetricsConfig, origin: &Path) -> Result<(), ConfigError> {
    check_range(
        origin,
        "metrics.log_interval_secs",
        m.log_interval_secs,
        0,
        86_400,
        "seconds (0 turns the line off)",
    )
}

pub(super) fn build_gateway(raw: RawGateway, origin: &Path) -> Result<GatewayConfig, ConfigError> {
    let mut groups: Vec<GroupConfig> = Vec::with_capacity(raw.groups.len());
    for (group_index, raw_group) in raw.groups.into_iter().enumerate() {
        let group_key = format!("gateway.groups[{group_index}]");
        let at = |e: FieldError| invalid(origin, format!("{group_key}.{}", e.key), e.message);
        let name = raw_group.name.trim().to_string();
        if let Some(first) = groups.iter().position(|g| g.name == name) {
            return Err(invalid(
                origin,
                format!("{group_key}.name"),
                format!("duplicate group name `{name}` (also gateway.groups[{first}]); group names must be unique"),
            ));
        }
        let mut destinations = Vec::with_capacity(raw_group.destinations.len());
        for (index, raw_dest) in raw_group.destinations.into_iter().enumerate() {
            let destination = build_destination(raw_dest)
                .map_err(|e| at(e.under(&format!("destinations[{index}]"))))?;
            destinations.push(destination);
        }
        let group = GroupConfig {
            name,
            algorithm: raw_group.algorithm,
            probe: raw_group.probe,
            destinations,
            failover: raw_group.failover,
            passive: raw_group.passive,
            max_retry_after_secs: raw_group.max_retry_after_secs,
            strict_source: raw_group.strict_source,
            spill_threshold: raw_group.spill_threshold,
            hash_bound: raw_group.hash_bound,
        };
        group.check().map_err(at)?;
        groups.push(group);
    }
    let call_max_secs = raw.call_max_secs.unwrap_or(DEFAULT_CALL_MAX_SECS);
    check_range(
        origin,
        "gateway.call_max_secs",
        call_max_secs,
        1,
        7 * 86_400,
        "seconds a call may last before it stops counting (default 14400, four hours)",
    )?;
    if let Some(webhook) = &raw.webhook {
        if !webhook.url.trim().starts_with("http://") {
            return Err(invalid(
                origin,
                "gateway.webhook.url",
                format!(
                    "`{}`: write it http://host:port/path (plain HTTP)",
                    webhook.url
                ),
            ));
        }
        check_range(
            origin,
            "gateway.webhook.timeout_ms",
            webhook.timeout_ms,
            1,
            60_000,
            "milliseconds",
        )?;
        check_range(
            origin,
            "gateway.webhook.retries",
            webhook.retries,
            0,
            10,
            "retries",
        )?;
        check_range(
            origin,
            "gateway.webhook.queue",
            webhook.queue,
            1,
            1_000_000,
            "events",
        )?;
    }
    Ok(GatewayConfig {
        groups,
        share_health: raw.share_health,
        call_max_secs,
        webhook: raw.webhook,
    })
}

/// One destination as written, its address resolved and its keys checked.
pub(super) fn build_destination(raw: RawDestination) -> Result<DestinationConfig, FieldError> {
    DestinationConfig::resolve(&raw.uri, raw.address.as_deref(), raw.weight, raw.attrs)
        .and_then(|d| d.with_transport(raw.transport.as_deref()))
        .and_then(|d| d.with_capacity(raw.priority, raw.max_calls, raw.max_cps))
}

pub(super) fn check_registrar(
    registrar: &mut RegistrarConfig,
    origin: &Path,
) -> Result<(), ConfigError> {
    let (min, default, max) = (
        registrar.min_expires,
        registrar.default_expires,
        registrar.max_expires,
    );
    if min > max {
        return Err(invalid(
            origin,
            "registrar.min_expires",
            format!("{min} is above max_expires ({max})"),
        ));
    }
    if default < min || default > max {
        return Err(invalid(
            origin,
            "registrar.default_expires",
            format!("{default} must be between min_expires ({min}) and max_expires ({max})"),
        ));
    }
    check_range(
        origin,
        "registrar.max_expires",
        max,
        1,
        604_800,
        "seconds (a week)",
    )?;
    check_range(
        origin,
        "registrar.max_contacts",
        registrar.max_contacts,
        1,
        1000,
        "contacts per AoR",
    )?;
    check_redis(&mut registrar.redis, origin)
}

fn check_redis(redis: &mut RedisConfig, origin: &Path) -> Result<(), ConfigError> {
    if let Some(file) = &redis.tls_ca_file {
        let file = if file.is_relative() {
            origin.parent().unwrap_or(Path::new(".")).join(file)
        } else {
            file.clone()
        };
        if let Err(e) = std::fs::metadata(&file) {
            return Err(invalid(
                origin,
                "registrar.redis.tls_ca_file",
                format!("cannot read {}: {}", file.display(), io_reason(&e)),
            ));
        }
        redis.tls_ca_file = Some(file);
    }
    let given = [
        ("url", redis.url.is_some()),
        ("sentinels", !redis.sentinels.is_empty()),
        ("cluster", !redis.cluster.is_empty()),
    ];
    let named: Vec<&str> = given
        .iter()
        .filter(|(_, set)| *set)
        .map(|(k, _)| *k)
        .collect();
    if named.len() > 1 {
        return Err(invalid(
            origin,
            "registrar.redis",
            format!(
                "give one of url, sentinels or cluster, not {}",
                named.join(" and ")
            ),
        ));
    }
    if let Some(url) = &redis.url {
        let url = url.trim();
        let known_scheme = ["redis://", "rediss://", "redis+unix://", "unix://"]
            .iter()
            .any(|scheme| url.starts_with(scheme));
        if !known_scheme {
            return Err(invalid(
                origin,
                "registrar.redis.url",
                format!("`{url}` is not a Redis URL; write it like \"redis://127.0.0.1:6379\""),
            ));
        }
    }
    for (key, nodes) in [("sentinels", &redis.sentinels), ("cluster", &redis.cluster)] {
        for (i, node) in nodes.iter().enumerate() {
            if RedisConfig::node_url(node).is_none() {
                return Err(invalid(
                    origin,
                    format!("registrar.redis.{key}[{i}]"),
                    format!("`{node}` is not a Redis node; write it like \"127.0.0.1:26379\""),
                ));
            }
        }
    }
    if redis.key_prefix.contains(['{', '}']) {
        return Err(invalid(
            origin,
            "registrar.redis.key_prefix",
            format!(
                "`{}` has a brace: siphon puts each AoR in braces (a Cluster hash tag), and a brace here would put every AoR in one slot",
                redis.key_prefix
            ),
        ));
    }
    if !redis.sentinels.is_empty() && redis.master_name.trim().is_empty() {
        return Err(invalid(
            origin,
            "registrar.redis.master_name",
            "name the Sentinel service of the primary".to_string(),
        ));
    }
    check_range(
        origin,
        "registrar.redis.lookup_timeout_ms",
        redis.lookup_timeout_ms,
        10,
        5000,
        "milliseconds",
    )
}

/// The default `server.instance_id`: the host's name and the first SIP
/// port (`sip1.example.net-5060`), unique to a node unless two share both.
fn node_name(listen: &super::Listen) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "siphon".to_string());
    let port = listen
        .udp
        .iter()
        .chain(&listen.tcp)
        .map(|l| l.address.port())
        .chain(listen.tls.iter().map(|t| t.address.port()))
        .next();
    match port {
        Some(port) => format!("{host}-{port}"),
        None => host,
    }
}

pub(super) fn check_server(server: &ServerConfig, origin: &Path) -> Result<(), ConfigError> {
    check_range(
        origin,
        "server.drain_secs",
        server.drain_secs,
        0,
        3600,
        "seconds",
    )?;
    check_range(
        origin,
        "server.workers",
        server.workers,
        0,
        64,
        "shards (0: one per core)",
    )?;
    let id = &server.instance_id;
    if id.is_empty() || id.contains(char::is_whitespace) {
        return Err(invalid(
            origin,
            "server.instance_id",
            "must be a non-empty name without spaces, e.g. \"lb1\"",
        ));
    }
    Ok(())
}

/// Plain level names; anything else must look like a filter directive, so a
/// typo such as `inof` is rejected instead of silently logging nothing.
pub(super) const LOG_LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];

/// Checks a `log.level` value: a plain level, or an EnvFilter directive list
/// (which must contain `=` or `,`). Shared with `logging::init`.
pub fn check_log_level(level: &str) -> Result<(), String> {
    let level = level.trim();
    if LOG_LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
        return Ok(());
    }
    let expected = "expected one of error, warn, info, debug, trace, or a filter such as \"info,siphon::sip=debug\"";
    if !level.contains('=') && !level.contains(',') {
        return Err(format!("unknown log level `{level}`; {expected}"));
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(level)
        .map(|_| ())
        .map_err(|e| format!("invalid log filter `{level}`: {e}"))
}

pub(super) fn check_log(log: &LogConfig, origin: &Path) -> Result<(), ConfigError> {
    check_log_level(&log.level).map_err(|message| invalid(origin, "log.level", message))
}

pub(super) fn check_transaction(t: &TransactionConfig, origin: &Path) -> Result<(), ConfigError> {
    check_range(
        origin,
        "transaction.t1_ms",
        t.t1_ms,
        1,
        10_000,
        "ms (RFC 3261 default 500)",
    )?;
    check_range(
        origin,
        "transaction.t2_ms",
        t.t2_ms,
        t.t1_ms,
        60_000,
        "ms (at least t1_ms; RFC 3261 default 4000)",
    )?;
    check_range(
        origin,
        "transaction.t4_ms",
        t.t4_ms,
        1,
        60_000,
        "ms (RFC 3261 default 5000)",
    )?;
    check_range(
        origin,
        "transaction.timer_c_secs",
        t.timer_c_secs,
        1,
        7200,
        "seconds (RFC 3261 asks for more than 180)",
    )?;
    check_range(
        origin,
        "transaction.max_invite_lifetime_secs",
        t.max_invite_lifetime_secs,
        1,
        86_400,
        "seconds (Kamailio's max_inv_lifetime is 180)",
    )
}
