//! The public schema of `siphon.yaml`: what the rest of siphon reads.

use super::*;

/// The whole validated configuration of one siphon process.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: Listen,
    /// Host (optionally `host:port`) to put in Via / Record-Route instead of
    /// the listen address, for a proxy behind NAT or bound to 0.0.0.0.
    pub advertise: Option<String>,
    pub domain: Domain,
    pub script: ScriptConfig,
    pub gateway: GatewayConfig,
    pub registrar: RegistrarConfig,
    pub server: ServerConfig,
    pub metrics: MetricsConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub transaction: TransactionConfig,
    pub security: SecurityConfig,
    pub limits: LimitsConfig,
    /// Digest credentials; `auth.check` challenges everything without them.
    pub auth: Option<AuthConfig>,
    pub dns: DnsConfig,
    pub tls: TlsConfig,
    /// A copy of every message to Homer or sngrep.
    pub capture: CaptureConfig,
    /// OpenTelemetry traces of calls.
    pub tracing: TracingConfig,
}

/// Sockets to bind. `udp: []` disables UDP; at least one listener is required.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    pub udp: Vec<ListenAddr>,
    pub tcp: Vec<ListenAddr>,
    pub tls: Vec<TlsListen>,
    pub ws: Vec<WsListen>,
    pub wss: Vec<WsListen>,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            udp: vec![ListenAddr::from(SocketAddr::from(([0, 0, 0, 0], 5060)))],
            tcp: Vec::new(),
            tls: Vec::new(),
            ws: Vec::new(),
            wss: Vec::new(),
        }
    }
}

/// One listen address: `"ip:port"`, or `{address: "ip:port", advertise:
/// "host[:port]"}` to name it otherwise in Via and Record-Route (a public
/// name or address in front of NAT). `0.0.0.0` and `[::]` are bound once
/// per local address of that family.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListenAddr {
    pub address: SocketAddr,
    pub advertise: Option<String>,
}

impl From<SocketAddr> for ListenAddr {
    fn from(address: SocketAddr) -> Self {
        ListenAddr {
            address,
            advertise: None,
        }
    }
}

/// Domains this proxy is responsible for (`request.ruri.is_local`).
/// Stored lowercase, since SIP host comparison is case-insensitive.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Domain {
    pub local: Vec<String>,
}

/// The routing script. A relative `path` is resolved against the directory of
/// the config file, so a config and its script can move together.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptConfig {
    pub path: PathBuf,
    /// A handler running longer gets an exception raised inside it, and
    /// its request a 500 from the shard.
    #[serde(default = "default_script_timeout")]
    pub timeout_ms: u64,
    /// Script-executor actors, each on its own thread; a Call-ID's
    /// requests all go to one of them, in order. 0: each shard runs the
    /// script on its own thread (cheaper, but a handler that never returns
    /// stops the shard).
    #[serde(default = "default_script_workers")]
    pub workers: usize,
    /// An executor stuck in one handler this long is abandoned and
    /// replaced (default 10 × `timeout_ms`).
    #[serde(default)]
    pub abandon_ms: Option<u64>,
}

impl ScriptConfig {
    /// `abandon_ms`, or its default of ten times the timeout.
    pub fn abandon_after(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.abandon_ms.unwrap_or(self.timeout_ms * 10))
    }
}

fn default_script_workers() -> usize {
    1
}

fn default_script_timeout() -> u64 {
    1000
}

/// Statically configured gateway groups; scripts may add more at run time.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    pub groups: Vec<GroupConfig>,
    /// Whether destination health is shared with other nodes.
    pub share_health: ShareHealth,
    /// A call no BYE ends stops counting against its destination after
    /// this long (`gateway.call_max_secs`).
    pub call_max_secs: u64,
    /// Where changes of a destination's state are POSTed as JSON.
    pub webhook: Option<WebhookConfig>,
}

/// `gateway.webhook`: a URL that hears of every change of a destination's
/// state (alerting), with retries and a bounded queue.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://host:port/path` (plain HTTP).
    pub url: String,
    #[serde(default = "default_webhook_timeout")]
    pub timeout_ms: u64,
    /// Retries of a failed POST, the pause doubling from 200 ms.
    #[serde(default = "default_webhook_retries")]
    pub retries: u32,
    /// Events waiting at most; more are dropped (and counted in the log).
    #[serde(default = "default_webhook_queue")]
    pub queue: usize,
}

fn default_webhook_timeout() -> u64 {
    2000
}

fn default_webhook_retries() -> u32 {
    3
}

fn default_webhook_queue() -> usize {
    1000
}

/// The default of `gateway.call_max_secs`: four hours.
pub const DEFAULT_CALL_MAX_SECS: u64 = 4 * 3600;

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            groups: Vec::new(),
            share_health: ShareHealth::default(),
            call_max_secs: DEFAULT_CALL_MAX_SECS,
            webhook: None,
        }
    }
}

/// `gateway.share_health`: `off`, or `redis` (a channel on the Redis that
/// `registrar.redis` names), so a backend one LB finds dead is avoided by
/// the others at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShareHealth {
    #[default]
    Off,
    Redis,
}

/// One named pool of destinations with its balancing algorithm and probe.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupConfig {
    pub name: String,
    pub algorithm: Algorithm,
    pub probe: ProbeConfig,
    pub destinations: Vec<DestinationConfig>,
    pub failover: FailoverConfig,
    pub passive: PassiveConfig,
    /// Retry-After holds (from probes or relays) are cut to this.
    pub max_retry_after_secs: u64,
    /// UDP answers count only from the address they were sent to.
    pub strict_source: bool,
    /// A priority tier is chosen from while at least this many of its
    /// destinations are up and not full (or all of them, if fewer).
    pub spill_threshold: u32,
    /// `hash` only: a key skips a first choice loaded past this many times
    /// the group's mean calls per weight.
    pub hash_bound: Option<f64>,
}

/// The default of `max_retry_after_secs`.
pub const DEFAULT_MAX_RETRY_AFTER_SECS: u64 = 300;

/// Failover of a relay to this group's destinations (DESIGN.md §4.3).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverConfig {
    pub enabled: bool,
    /// A branch with no response at all by then fails over.
    pub no_response_ms: u64,
    /// Final responses that fail over.
    pub on_codes: Vec<u16>,
    /// Branches per request at most (the first included); absent: all.
    pub max_attempts: Option<usize>,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig {
            enabled: true,
            no_response_ms: 1000,
            on_codes: vec![503],
            max_attempts: None,
        }
    }
}

impl FailoverConfig {
    pub fn check(&self) -> Result<(), FieldError> {
        if !(1..=60_000).contains(&self.no_response_ms) {
            return Err(FieldError::new(
                "no_response_ms",
                "must be from 1 to 60000 (milliseconds a destination may stay silent)",
            ));
        }
        if let Some(code) = self.on_codes.iter().find(|c| !(300..600).contains(*c)) {
            return Err(FieldError::new(
                "on_codes",
                format!("{code} is not a final response code from 300 to 599 (a 2xx is never failed over, and a 6xx ends every branch, RFC 3261 §16.7)"),
            ));
        }
        if self.max_attempts == Some(0) {
            return Err(FieldError::new(
                "max_attempts",
                "must be at least 1 (the first branch counts), or left out for all",
            ));
        }
        Ok(())
    }

    /// The engine's form of it.
    pub fn policy(&self) -> crate::proxy::decision::FailoverPolicy {
        crate::proxy::decision::FailoverPolicy {
            enabled: self.enabled,
            no_response: Duration::from_millis(self.no_response_ms),
            on_codes: self.on_codes.clone(),
            max_attempts: self.max_attempts.unwrap_or(usize::MAX),
            strict_source: false,
            passive_health: true,
        }
    }
}

/// Passive health: relay outcomes count like probes (DESIGN.md §4.3).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveConfig {
    pub failure_threshold: u32,
    pub eject_secs: u64,
}

impl Default for PassiveConfig {
    fn default() -> Self {
        PassiveConfig {
            failure_threshold: 3,
            eject_secs: 30,
        }
    }
}

impl PassiveConfig {
    pub fn check(&self) -> Result<(), FieldError> {
        if !(1..=1000).contains(&self.failure_threshold) {
            return Err(FieldError::new(
                "failure_threshold",
                "must be from 1 to 1000 (consecutive failed relays before ejecting)",
            ));
        }
        if !(1..=3600).contains(&self.eject_secs) {
            return Err(FieldError::new(
                "eject_secs",
                "must be from 1 to 3600 (ejections double up to 300 s anyway)",
            ));
        }
        Ok(())
    }
}

impl GroupConfig {
    /// The selection state this config describes, every destination healthy.
    pub fn to_group(&self) -> crate::gateway::Group {
        use crate::gateway::{Destination, Group};
        let destinations = self
            .destinations
            .iter()
            .map(|d| {
                let destination = Destination::new(d.uri.clone(), d.address)
                    .with_weight(d.weight)
                    .with_attrs(d.attrs.clone())
                    .with_priority(d.priority)
                    .with_limits(d.max_calls, d.max_cps);
                match d.transport {
                    Some(protocol) => destination.with_protocol(protocol),
                    None => destination,
                }
            })
            .collect();
        let passive = crate::gateway::PassivePolicy {
            failure_threshold: self.passive.failure_threshold,
            eject: Duration::from_secs(self.passive.eject_secs),
            await_probe: self.probe.enabled,
        };
        Group::new(
            self.name.clone(),
            self.algorithm,
            destinations,
            self.probe.failure_threshold,
        )
        .with_health_policy(passive, Duration::from_secs(self.max_retry_after_secs))
        .with_capacity_policy(self.spill_threshold, self.hash_bound)
        .with_probe_policy(self.probe.success_threshold)
    }
}

/// How a group picks a destination (see DESIGN.md §4.3); one enum shared
/// with the selection code, deserialized from its snake_case name.
pub use crate::gateway::Algorithm;

/// OPTIONS health probing of a group's destinations.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeConfig {
    pub enabled: bool,
    pub interval_secs: u64,
    pub failure_threshold: u32,
    /// Per-probe timeout; when absent see [`ProbeConfig::timeout`].
    pub timeout_ms: Option<u64>,
    /// The final responses that prove a destination alive; absent: any
    /// below 500.
    pub reply_codes: Option<Vec<u16>>,
    /// Successes in a row that bring a destination back.
    pub success_threshold: u32,
    /// The probe's From URI (default `sip:siphon@` our address).
    pub from: Option<String>,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            enabled: false,
            interval_secs: 5,
            failure_threshold: 3,
            timeout_ms: None,
            reply_codes: None,
            success_threshold: 1,
            from: None,
        }
    }
}

/// Longest default probe timeout: a probe slower than this is as good as dead.
const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

impl ProbeConfig {
    /// Time between two probes of one destination (before jitter).
    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.interval_secs)
    }

    /// Effective per-probe timeout: `timeout_ms`, else the interval capped at
    /// 5 s, so a probe never outlives the next one by default.
    pub fn timeout(&self) -> Duration {
        match self.timeout_ms {
            Some(ms) => Duration::from_millis(ms),
            None => self.interval().min(DEFAULT_PROBE_TIMEOUT),
        }
    }

    /// Range checks, shared by the config loader and `gateway.add_group`.
    pub fn check(&self) -> Result<(), FieldError> {
        if !(1..=3600).contains(&self.interval_secs) {
            return Err(FieldError::new(
                "interval_secs",
                "must be from 1 to 3600 (seconds between probes)",
            ));
        }
        if !(1..=1000).contains(&self.failure_threshold) {
            return Err(FieldError::new(
                "failure_threshold",
                "must be from 1 to 1000 (consecutive failures before marking a destination down)",
            ));
        }
        if self
            .timeout_ms
            .is_some_and(|ms| !(1..=60_000).contains(&ms))
        {
            return Err(FieldError::new(
                "timeout_ms",
                "must be from 1 to 60000, or left out for the default",
            ));
        }
        if !(1..=1000).contains(&self.success_threshold) {
            return Err(FieldError::new(
                "success_threshold",
                "must be from 1 to 1000 (successful probes in a row that bring a destination back)",
            ));
        }
        if let Some(code) = self
            .reply_codes
            .iter()
            .flatten()
            .find(|c| !(100..700).contains(*c))
        {
            return Err(FieldError::new(
                "reply_codes",
                format!("{code} is not a SIP status code (100 to 699)"),
            ));
        }
        if self.reply_codes.as_ref().is_some_and(Vec::is_empty) {
            return Err(FieldError::new(
                "reply_codes",
                "lists no code, so no probe could succeed; leave it out for any final response below 500",
            ));
        }
        if let Some(from) = &self.from {
            let parsed = crate::sip::Uri::parse(from.trim());
            if !parsed.is_ok_and(|uri| matches!(uri.scheme, "sip" | "sips")) {
                return Err(FieldError::new(
                    "from",
                    format!(
                        "`{from}` is not a sip: URI; write it like \"sip:ping@lb.example.com\""
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// One backend of a group: its stable identity (`uri`) and where packets go
/// (`address`, resolved once when the config is loaded).
#[derive(Debug, Clone, PartialEq)]
pub struct DestinationConfig {
    pub uri: String,
    pub address: SocketAddr,
    pub weight: u32,
    pub attrs: BTreeMap<String, String>,
    /// `transport:`, over what the uri says (`udp`, `tcp`, `tls`).
    pub transport: Option<crate::sip::Protocol>,
    /// Its tier, lower first.
    pub priority: i32,
    /// Calls set up or established at most.
    pub max_calls: Option<u32>,
    /// New INVITEs per second at most.
    pub max_cps: Option<f64>,
}

impl DestinationConfig {
    /// Checks `uri` and resolves `address` (default: the uri's host and port).
    /// Shared by the config loader and `gateway.add_group`; the error's key is
    /// `uri` or `address`.
    pub fn resolve(
        uri: &str,
        address: Option<&str>,
        weight: u32,
        attrs: BTreeMap<String, String>,
    ) -> Result<Self, FieldError> {
        let uri = uri.trim();
        let (host, port) = sip_uri_host_port(uri).map_err(|msg| FieldError::new("uri", msg))?;
        let address = match address {
            Some(text) => {
                resolve_address(text, port).map_err(|msg| FieldError::new("address", msg))?
            }
            None => resolve_host(&host, port).map_err(|msg| {
                FieldError::new(
                    "uri",
                    format!("{msg}; set `address` to the ip:port to send to"),
                )
            })?,
        };
        Ok(DestinationConfig {
            uri: uri.to_string(),
            address,
            weight,
            attrs,
            transport: None,
            priority: 0,
            max_calls: None,
            max_cps: None,
        })
    }

    /// Its capacity keys (`priority`, `max_calls`, `max_cps`), checked.
    pub fn with_capacity(
        mut self,
        priority: i32,
        max_calls: Option<u32>,
        max_cps: Option<f64>,
    ) -> Result<Self, FieldError> {
        if max_calls.is_some_and(|max| !(1..=10_000_000).contains(&max)) {
            return Err(FieldError::new(
                "max_calls",
                "must be from 1 to 10000000 (calls at once), or left out for no limit",
            ));
        }
        if max_cps.is_some_and(|cps| !(cps.is_finite() && cps > 0.0 && cps <= 100_000.0)) {
            return Err(FieldError::new(
                "max_cps",
                "must be above 0 and at most 100000 (new calls per second, e.g. 1 or 0.5), or left out for no limit",
            ));
        }
        self.priority = priority;
        self.max_calls = max_calls;
        self.max_cps = max_cps;
        Ok(self)
    }

    /// The `transport:` key, when set.
    pub fn with_transport(mut self, transport: Option<&str>) -> Result<Self, FieldError> {
        if let Some(text) = transport {
            let protocol = crate::sip::Protocol::from_token(text.trim())
                .filter(|p| !p.is_websocket())
                .ok_or_else(|| {
                    FieldError::new("transport", format!("`{text}`: use udp, tcp or tls"))
                })?;
            self.transport = Some(protocol);
        }
        Ok(self)
    }
}

impl GroupConfig {
    /// Checks a group on its own (name, probe, destinations); the error's key
    /// is relative to the group, e.g. `destinations[1].uri`.
    pub fn check(&self) -> Result<(), FieldError> {
        if self.name.trim().is_empty() {
            return Err(FieldError::new("name", "must not be empty"));
        }
        self.probe.check().map_err(|e| e.under("probe"))?;
        self.failover.check().map_err(|e| e.under("failover"))?;
        self.passive.check().map_err(|e| e.under("passive"))?;
        if !(1..=86_400).contains(&self.max_retry_after_secs) {
            return Err(FieldError::new(
                "max_retry_after_secs",
                "must be at least 1 (seconds) and at most 86400",
            ));
        }
        if self.destinations.is_empty() {
            return Err(FieldError::new(
                "destinations",
                "a group needs at least one destination",
            ));
        }
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (index, destination) in self.destinations.iter().enumerate() {
            if let Some(first) = seen.insert(destination.uri.as_str(), index) {
                return Err(FieldError::new(
                    format!("destinations[{index}].uri"),
                    format!(
                        "`{}` is already used by destinations[{first}]; a uri identifies one destination",
                        destination.uri
                    ),
                ));
            }
        }
        if self.spill_threshold == 0 {
            return Err(FieldError::new(
                "spill_threshold",
                "must be at least 1 (destinations of a tier up and not full for it to be chosen)",
            ));
        }
        if let Some(bound) = self.hash_bound {
            if self.algorithm != Algorithm::Hash {
                return Err(FieldError::new(
                    "hash_bound",
                    format!(
                        "bounds the load of a `hash` group; this group's algorithm is {}",
                        self.algorithm
                    ),
                ));
            }
            if !(bound.is_finite() && bound > 1.0 && bound <= 100.0) {
                return Err(FieldError::new(
                    "hash_bound",
                    "must be above 1 and at most 100 (e.g. 1.25: a key moves only past 1.25 times the mean load)",
                ));
            }
        }
        if self.destinations.iter().all(|d| d.weight == 0) {
            return Err(FieldError::new(
                "destinations",
                "every destination has weight 0, so none could be chosen; give at least one a weight of 1 or more",
            ));
        }
        Ok(())
    }
}

/// Where registrations are kept.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrarConfig {
    pub backend: RegistrarBackend,
    pub redis: RedisConfig,
    pub default_expires: u32,
    pub min_expires: u32,
    pub max_expires: u32,
    pub max_contacts: u32,
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        RegistrarConfig {
            backend: RegistrarBackend::Memory,
            redis: RedisConfig::default(),
            default_expires: 3600,
            min_expires: 60,
            max_expires: 7200,
            max_contacts: 10,
        }
    }
}

/// Registrar storage: memory only, or memory written through to Redis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegistrarBackend {
    #[default]
    Memory,
    Redis,
}

/// Where the registrar's Redis is: one server (`url`), a primary found
/// through Sentinel (`sentinels` + `master_name`), or a Cluster (`cluster`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// Unset: `redis://127.0.0.1:6379`, unless `sentinels` or `cluster` is given.
    pub url: Option<String>,
    /// Sentinel addresses (`host:port` or `redis://host:port`).
    pub sentinels: Vec<String>,
    /// The Sentinel service name of the primary.
    pub master_name: String,
    /// Cluster seed nodes (`host:port` or `redis://host:port`).
    pub cluster: Vec<String>,
    pub key_prefix: String,
    /// How long a lookup that missed locally waits for Redis.
    pub lookup_timeout_ms: u64,
    /// PEM roots the servers' certificates (`rediss://`) must chain to;
    /// unset, the system's.
    pub tls_ca_file: Option<PathBuf>,
    /// Credentials for the primary Sentinel names, or the Cluster nodes
    /// (a single `url` carries its own: `redis://user:password@host`).
    pub username: Option<String>,
    pub password: Option<String>,
    /// The primary Sentinel names is reached over TLS.
    pub tls: bool,
    /// Credentials for the Sentinels themselves.
    pub sentinel_username: Option<String>,
    pub sentinel_password: Option<String>,
}

impl RedisConfig {
    pub const DEFAULT_URL: &'static str = "redis://127.0.0.1:6379";

    /// The URL of a Sentinel or Cluster node written `host:port` (or
    /// already as a `redis://` URL); None when it is neither.
    pub fn node_url(node: &str) -> Option<String> {
        let node = node.trim();
        if node.starts_with("redis://") || node.starts_with("rediss://") {
            return Some(node.to_string());
        }
        let (host, port) = node.rsplit_once(':')?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || port.parse::<u16>().ok()? == 0 {
            return None;
        }
        Some(if host.contains(':') {
            format!("redis://[{host}]:{port}")
        } else {
            format!("redis://{host}:{port}")
        })
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: None,
            sentinels: Vec::new(),
            master_name: "siphon".to_string(),
            cluster: Vec::new(),
            key_prefix: "siphon:reg:".to_string(),
            lookup_timeout_ms: 200,
            tls_ca_file: None,
            username: None,
            password: None,
            tls: false,
            sentinel_username: None,
            sentinel_password: None,
        }
    }
}

/// Process identity and shutdown behaviour.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Names this node in logs, metrics and shared state (a node's field
    /// in Redis). Unset: this host's name and first SIP port, so that two
    /// nodes never share one by default.
    pub instance_id: String,
    /// Whether `instance_id` was made from the host and port (unset in the
    /// file): a reload that moves the port then changes no name.
    #[serde(skip)]
    pub instance_id_derived: bool,
    /// How long to let transactions finish on shutdown.
    pub drain_secs: u64,
    /// Transaction shards. One shard shares the receiving thread and costs
    /// a third of the CPU per call of two (no cross-thread wake-ups); more
    /// spread the SIP work over cores (`script.workers` spreads the
    /// script's). 0 picks one per core, capped at 8.
    pub workers: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            instance_id: String::new(),
            instance_id_derived: false,
            drain_secs: 5,
            workers: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub prometheus: Option<PrometheusConfig>,
    /// Period of the actor metrics log line; 0 turns it off.
    pub log_interval_secs: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            prometheus: None,
            log_interval_secs: 60,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusConfig {
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// When set, a scrape must carry `Authorization: Bearer <token>`.
    #[serde(default)]
    pub token: Option<String>,
}

/// The admin HTTP API; off unless `listen` is set. With `token` (or
/// `token_file`), every route needs `Authorization: Bearer <token>`; a
/// listen address that is not loopback needs one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    #[serde(deserialize_with = "optional_socket_addr")]
    pub listen: Option<SocketAddr>,
    pub token: Option<String>,
    /// The token in a file of its own (a relative path is taken from the
    /// config file's directory).
    pub token_file: Option<PathBuf>,
}

impl AdminConfig {
    /// The bearer token, from `token` or its file (checked at load).
    pub fn bearer_token(&self) -> Result<Option<String>, FieldError> {
        let from_file = match &self.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| {
                        FieldError::new(
                            "token_file",
                            format!("cannot read {}: {}", path.display(), io_reason(&e)),
                        )
                    })?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        let token = self
            .token
            .as_deref()
            .map(str::trim)
            .map(str::to_string)
            .or(from_file)
            .filter(|t| !t.is_empty());
        match &token {
            Some(t) if t.len() < 16 => Err(FieldError::new(
                if self.token.is_some() { "token" } else { "token_file" },
                "is shorter than 16 characters; use a long random string (e.g. `openssl rand -hex 32`)",
            )),
            _ => Ok(token),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A level (`info`) or an EnvFilter directive (`info,siphon::sip=debug`).
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_string(),
            format: LogFormat::Pretty,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Compact human-readable lines.
    #[default]
    Pretty,
    /// One JSON object per line, for log shippers.
    Json,
}

/// RFC 3261 timer bases.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransactionConfig {
    pub t1_ms: u64,
    pub t2_ms: u64,
    pub t4_ms: u64,
    pub timer_c_secs: u64,
    /// An INVITE's whole life, whatever its provisionals: past it the
    /// caller gets 408 and the branches are CANCELed (Kamailio's
    /// `max_inv_lifetime`).
    pub max_invite_lifetime_secs: u64,
}

impl Default for TransactionConfig {
    fn default() -> Self {
        TransactionConfig {
            t1_ms: 500,
            t2_ms: 4000,
            t4_ms: 5000,
            timer_c_secs: 185,
            max_invite_lifetime_secs: 300,
        }
    }
}

impl TransactionConfig {
    pub fn t1(&self) -> Duration {
        Duration::from_millis(self.t1_ms)
    }
    pub fn t2(&self) -> Duration {
        Duration::from_millis(self.t2_ms)
    }
    pub fn t4(&self) -> Duration {
        Duration::from_millis(self.t4_ms)
    }
    pub fn timer_c(&self) -> Duration {
        Duration::from_secs(self.timer_c_secs)
    }
    pub fn max_invite_lifetime(&self) -> Duration {
        Duration::from_secs(self.max_invite_lifetime_secs)
    }

    /// The engine's timers.
    pub fn settings(&self) -> crate::proxy::TimerSettings {
        crate::proxy::TimerSettings {
            t1: self.t1(),
            t2: self.t2(),
            t4: self.t4(),
            timer_c: self.timer_c(),
            max_invite_lifetime: self.max_invite_lifetime(),
        }
    }
}
