//! The sections that bound what the internet can make us do: `security`
//! (trusted networks, rate limits, scanners), `limits` (tables and TCP),
//! `auth` (digest credentials); and [`check_range`], the upper
//! and lower bound every numeric setting is held to at load.

use super::*;

/// `security`: who is never limited, the per-source token bucket, and the
/// User-Agents that get no answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// CIDRs (or addresses) exempt from rate limits and bans.
    pub trusted: Vec<String>,
    /// Off unless set: one SBC or load generator may send everything from
    /// one address.
    pub rate_limit: Option<RateLimitConfig>,
    pub scanner_user_agents: Vec<String>,
    pub on_limit: OnLimit,
    /// The key of the seals on our Record-Routes (`proxy::seal`): the same
    /// on every node, so that each accepts the others' dialogs. Unset, a
    /// random key per run (dialogs then end with a restart).
    pub route_secret: Option<String>,
    /// The secret in a file of its own (read at start).
    pub route_secret_file: Option<PathBuf>,
    /// The key before a rotation: its seals are still accepted.
    pub route_secret_previous: Option<String>,
    /// Relay an in-dialog request through our Route that has no seal (for
    /// a rolling upgrade from a build that wrote none).
    pub accept_unsealed_routes: bool,
    pub relay_to: RelayToConfig,
}

/// `security.relay_to`: networks (or, in `allow`, `ip:port` addresses) a
/// relay may always reach, and networks it may never reach, beyond the
/// built-in rules of `security::relay`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayToConfig {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

/// The shortest route secret accepted.
const MIN_ROUTE_SECRET: usize = 16;

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            trusted: Vec::new(),
            rate_limit: None,
            scanner_user_agents: [
                "friendly-scanner",
                "sipvicious",
                "sipcli",
                "VaxSIPUserAgent",
            ]
            .map(String::from)
            .to_vec(),
            on_limit: OnLimit::Drop,
            route_secret: None,
            route_secret_file: None,
            route_secret_previous: None,
            accept_unsealed_routes: false,
            relay_to: RelayToConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub requests_per_sec: u32,
    pub burst: u32,
    #[serde(default = "default_ban_secs")]
    pub ban_secs: u64,
    /// Messages over the limit within 10 s that ban the source (default:
    /// the burst): a ban needs a flood, not one stray burst.
    #[serde(default)]
    pub ban_after: Option<u32>,
}

fn default_ban_secs() -> u64 {
    300
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnLimit {
    #[default]
    Drop,
    /// 503 + Retry-After (a flood then costs us a reply per packet).
    Reply,
}

impl SecurityConfig {
    /// The seals keyed by the route secret (from `route_secret` or its
    /// file) and the previous one; None when neither is set.
    pub fn dialog_seals(&self) -> Result<Option<crate::proxy::seal::DialogSeals>, FieldError> {
        // An empty value (`${SIPHON_ROUTE_SECRET:-}` unset) is no secret.
        let secret = self
            .route_secret
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty());
        let current = match (secret, &self.route_secret_file) {
            (Some(secret), _) => secret.as_bytes().to_vec(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| {
                    FieldError::new(
                        "route_secret_file",
                        format!("cannot read {}: {}", path.display(), io_reason(&e)),
                    )
                })?
                .trim()
                .as_bytes()
                .to_vec(),
            (None, None) => return Ok(None),
        };
        if current.len() < MIN_ROUTE_SECRET {
            return Err(FieldError::new(
                if secret.is_some() { "route_secret" } else { "route_secret_file" },
                format!("is shorter than {MIN_ROUTE_SECRET} characters; use a long random string (e.g. `openssl rand -hex 32`)"),
            ));
        }
        let previous = self
            .route_secret_previous
            .as_deref()
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::as_bytes);
        Ok(Some(crate::proxy::seal::DialogSeals::new(
            &current, previous,
        )))
    }

    /// The relay target policy, for the listeners in `listeners` (the
    /// CIDRs were checked at load).
    pub fn relay_policy(
        &self,
        (listeners, local_ips): (Vec<std::net::SocketAddr>, Vec<std::net::IpAddr>),
    ) -> crate::security::RelayPolicy {
        let cidrs = |list: &[String]| -> Vec<crate::security::Cidr> {
            list.iter().filter_map(|t| t.parse().ok()).collect()
        };
        crate::security::RelayPolicy {
            allow: cidrs(&self.relay_to.allow),
            allow_addresses: self
                .relay_to
                .allow
                .iter()
                .filter_map(|t| t.trim().parse().ok())
                .collect(),
            trusted: cidrs(&self.trusted),
            deny: cidrs(&self.relay_to.deny),
            listeners,
            local_ips,
        }
    }

    /// The guard's policy; the CIDRs were checked at load.
    pub fn policy(&self) -> crate::security::EdgePolicy {
        crate::security::EdgePolicy {
            trusted: self.trusted.iter().filter_map(|t| t.parse().ok()).collect(),
            rate_limit: self
                .rate_limit
                .as_ref()
                .map(|limit| crate::security::RateLimit {
                    per_sec: f64::from(limit.requests_per_sec),
                    burst: f64::from(limit.burst),
                    ban: Duration::from_secs(limit.ban_secs),
                    ban_after: limit.ban_after.unwrap_or(limit.burst).max(1),
                }),
            scanner_user_agents: self
                .scanner_user_agents
                .iter()
                .map(|ua| ua.to_ascii_lowercase())
                .collect(),
            reply_on_limit: self.on_limit == OnLimit::Reply,
        }
    }
}

/// `limits`: the bound on every table a stranger can grow.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Live transactions above which new INVITEs get 503 + Retry-After
    /// and other new requests are dropped (ended ones lingering for their
    /// timers do not count).
    pub max_transactions: usize,
    /// What ended transactions lingering for their timers may take, in
    /// MiB; past it, those whose timers end soonest go first.
    pub ended_transactions_mb: usize,
    /// RFC 3261 §18.1.1: a request larger than this (the path MTU minus
    /// 200) whose next hop does not pin `transport=udp` goes over TCP; 0
    /// never switches.
    pub udp_max_request_bytes: usize,
    pub tcp: TcpLimits,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_transactions: 100_000,
            ended_transactions_mb: 256,
            udp_max_request_bytes: 1300,
            tcp: TcpLimits::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TcpLimits {
    pub max_connections: usize,
    pub max_per_ip: usize,
    /// A connection with no traffic either way this long is closed.
    pub idle_secs: u64,
    /// Bytes queued for a peer that does not read; past it the connection closes.
    pub max_pending_bytes: usize,
    /// An inbound connection must deliver its first message this soon.
    pub first_message_secs: u64,
}

impl Default for TcpLimits {
    fn default() -> Self {
        TcpLimits {
            max_connections: 10_000,
            max_per_ip: 64,
            idle_secs: 600,
            max_pending_bytes: 1 << 20,
            first_message_secs: 10,
        }
    }
}

/// `auth`: digest credentials for `auth.check(request)`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub realm: String,
    #[serde(default)]
    pub credentials: BTreeMap<String, String>,
    /// The same map in a YAML file of its own, read again on SIGHUP; a
    /// relative path is taken from the config file's directory.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    #[serde(default = "default_nonce_ttl")]
    pub nonce_ttl_secs: u64,
    /// Offered in this order, and the only ones accepted. Some UAs (sipp
    /// 3.6 among them) answer only the first challenge and know only MD5.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Nonces are keyed by it when set, so that every node verifies the
    /// others' (else a random key per run).
    #[serde(default)]
    pub nonce_secret: Option<String>,
    /// Failed checks within `failure_window_secs` that ban the source (for
    /// `ban_secs`) and lock the user (403 for one window).
    #[serde(default = "default_max_failures")]
    pub max_failures: u32,
    #[serde(default = "default_failure_window")]
    pub failure_window_secs: u64,
    #[serde(default = "default_auth_ban")]
    pub ban_secs: u64,
}

fn default_max_failures() -> u32 {
    10
}

fn default_failure_window() -> u64 {
    60
}

fn default_auth_ban() -> u64 {
    600
}

fn default_algorithms() -> Vec<String> {
    vec!["SHA-256".to_string(), "MD5".to_string()]
}

fn default_nonce_ttl() -> u64 {
    300
}

impl AuthConfig {
    /// The users of `credentials` and of `credentials_file` (which wins).
    pub fn users(&self) -> Result<HashMap<String, crate::security::digest::Secret>, FieldError> {
        let mut users = HashMap::new();
        for (user, value) in &self.credentials {
            let secret = crate::security::digest::Secret::parse(value)
                .map_err(|message| FieldError::new(format!("credentials.{user}"), message))?;
            users.insert(user.clone(), secret);
        }
        if let Some(path) = &self.credentials_file {
            users.extend(read_credentials_file(path)?);
        }
        Ok(users)
    }
}

/// Reads a credentials file: a YAML map of user to password or HA1.
pub fn read_credentials_file(
    path: &Path,
) -> Result<HashMap<String, crate::security::digest::Secret>, FieldError> {
    let key = "credentials_file";
    let text = std::fs::read_to_string(path).map_err(|e| {
        FieldError::new(
            key,
            format!("cannot read {}: {}", path.display(), io_reason(&e)),
        )
    })?;
    let map: BTreeMap<String, String> = serde_yaml::from_str(&text).map_err(|e| {
        FieldError::new(
            key,
            format!(
                "{}: expected a map of user: password ({})",
                path.display(),
                remove_positions(&e.to_string())
            ),
        )
    })?;
    map.into_iter()
        .map(|(user, value)| {
            crate::security::digest::Secret::parse(&value)
                .map(|secret| (user.clone(), secret))
                .map_err(|message| {
                    FieldError::new(key, format!("{}: user {user}: {message}", path.display()))
                })
        })
        .collect()
}

/// Holds a number to `min..=max`, with an error that names the key.
pub(super) fn check_range<T: PartialOrd + fmt::Display>(
    origin: &Path,
    key: &str,
    value: T,
    min: T,
    max: T,
    unit: &str,
) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(invalid(
            origin,
            key,
            format!("{value} is out of range; use {min} to {max} {unit}"),
        ));
    }
    Ok(())
}

pub(super) fn check_security(s: &mut SecurityConfig, origin: &Path) -> Result<(), ConfigError> {
    for (key, list) in [
        ("security.trusted", &s.trusted),
        ("security.relay_to.allow", &s.relay_to.allow),
        ("security.relay_to.deny", &s.relay_to.deny),
    ] {
        for (index, text) in list.iter().enumerate() {
            // relay_to.allow also takes one address with its port.
            let exact = key == "security.relay_to.allow"
                && text.trim().parse::<std::net::SocketAddr>().is_ok();
            if !exact {
                text.parse::<crate::security::Cidr>()
                    .map_err(|message| invalid(origin, format!("{key}[{index}]"), message))?;
            }
        }
    }
    if let Some(file) = &s.route_secret_file {
        if file.is_relative() {
            let dir = origin.parent().unwrap_or(Path::new("."));
            s.route_secret_file = Some(dir.join(file));
        }
    }
    s.dialog_seals()
        .map_err(|e| invalid(origin, format!("security.{}", e.key), e.message))?;
    if let Some(limit) = &s.rate_limit {
        check_range(
            origin,
            "security.rate_limit.requests_per_sec",
            limit.requests_per_sec,
            1,
            1_000_000,
            "requests a second",
        )?;
        check_range(
            origin,
            "security.rate_limit.burst",
            limit.burst,
            1,
            10_000_000,
            "requests",
        )?;
        check_range(
            origin,
            "security.rate_limit.ban_secs",
            limit.ban_secs,
            0,
            86_400 * 30,
            "seconds (0: no ban, only the excess is dropped)",
        )?;
        if let Some(ban_after) = limit.ban_after {
            check_range(
                origin,
                "security.rate_limit.ban_after",
                ban_after,
                1,
                10_000_000,
                "messages over the limit within 10 s",
            )?;
        }
    }
    if let Some(index) = s
        .scanner_user_agents
        .iter()
        .position(|ua| ua.trim().is_empty())
    {
        return Err(invalid(
            origin,
            format!("security.scanner_user_agents[{index}]"),
            "is empty, and would match every User-Agent",
        ));
    }
    Ok(())
}

pub(super) fn check_limits(l: &LimitsConfig, origin: &Path) -> Result<(), ConfigError> {
    check_range(
        origin,
        "limits.max_transactions",
        l.max_transactions,
        1,
        10_000_000,
        "transactions",
    )?;
    check_range(
        origin,
        "limits.ended_transactions_mb",
        l.ended_transactions_mb,
        1,
        1_048_576,
        "MiB",
    )?;
    check_range(
        origin,
        "limits.udp_max_request_bytes",
        l.udp_max_request_bytes,
        0,
        65_000,
        "bytes (0: never switch to TCP)",
    )?;
    let tcp = &l.tcp;
    check_range(
        origin,
        "limits.tcp.max_connections",
        tcp.max_connections,
        1,
        1_000_000,
        "connections",
    )?;
    check_range(
        origin,
        "limits.tcp.max_per_ip",
        tcp.max_per_ip,
        1,
        tcp.max_connections.max(1),
        "connections (at most max_connections)",
    )?;
    check_range(
        origin,
        "limits.tcp.idle_secs",
        tcp.idle_secs,
        1,
        86_400,
        "seconds",
    )?;
    check_range(
        origin,
        "limits.tcp.max_pending_bytes",
        tcp.max_pending_bytes,
        65_536,
        1 << 30,
        "bytes",
    )?;
    check_range(
        origin,
        "limits.tcp.first_message_secs",
        tcp.first_message_secs,
        1,
        3600,
        "seconds",
    )
}

pub(super) fn check_auth(
    auth: Option<AuthConfig>,
    origin: &Path,
) -> Result<Option<AuthConfig>, ConfigError> {
    let Some(mut auth) = auth else {
        return Ok(None);
    };
    if auth.realm.trim().is_empty() || auth.realm.contains(['"', '\\']) {
        return Err(invalid(
            origin,
            "auth.realm",
            "must be a non-empty name without quotes, e.g. \"example.com\"",
        ));
    }
    check_range(
        origin,
        "auth.nonce_ttl_secs",
        auth.nonce_ttl_secs,
        10,
        86_400,
        "seconds",
    )?;
    check_range(
        origin,
        "auth.max_failures",
        auth.max_failures,
        1,
        1_000_000,
        "failed checks",
    )?;
    check_range(
        origin,
        "auth.failure_window_secs",
        auth.failure_window_secs,
        1,
        86_400,
        "seconds",
    )?;
    check_range(
        origin,
        "auth.ban_secs",
        auth.ban_secs,
        0,
        86_400 * 30,
        "seconds (0: no ban)",
    )?;
    // An empty value (`${SIPHON_NONCE_SECRET:-}` unset) is no secret.
    auth.nonce_secret = auth.nonce_secret.take().filter(|s| !s.trim().is_empty());
    if auth
        .nonce_secret
        .as_deref()
        .is_some_and(|s| s.trim().len() < 16)
    {
        return Err(invalid(
            origin,
            "auth.nonce_secret",
            "is shorter than 16 characters; use a long random string (e.g. `openssl rand -hex 32`)",
        ));
    }
    if auth.algorithms.is_empty() {
        return Err(invalid(
            origin,
            "auth.algorithms",
            "offer at least one of SHA-256, MD5",
        ));
    }
    for (index, name) in auth.algorithms.iter().enumerate() {
        if crate::security::digest::Algorithm::from_name(name).is_none() {
            return Err(invalid(
                origin,
                format!("auth.algorithms[{index}]"),
                format!("{name:?} is not SHA-256 or MD5"),
            ));
        }
    }
    if let Some(file) = &auth.credentials_file {
        if file.is_relative() {
            let dir = origin.parent().unwrap_or(Path::new("."));
            auth.credentials_file = Some(dir.join(file));
        }
    }
    // Checked now, so a typo in a password entry stops the start, not a call.
    auth.users()
        .map_err(|e| invalid(origin, format!("auth.{}", e.key), e.message))?;
    Ok(Some(auth))
}
