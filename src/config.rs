//! The `siphon.yaml` schema, loading and validation.
//!
//! Loading runs in three steps, each with errors that name the file and the
//! key or line so an operator can fix the config without reading code:
//!
//! 1. `${VAR}` / `${VAR:-default}` are expanded in the raw text (comments are
//!    left alone, `$$` is a literal `$`).
//! 2. The text is parsed with serde into typed structs that reject unknown keys;
//!    `serde_path_to_error` gives the key path of a bad value.
//! 3. Semantic checks (ranges, duplicates, URIs) run, and each destination's
//!    `address` is resolved once, so no DNS lookup happens per call.
//!
//! [`from_text`] does steps 1–3 and touches no file; [`load`] reads the file,
//! runs [`from_text`] and then [`Config::validate_files`], which checks that the
//! files the config points to (the script) exist.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

// ---------------------------------------------------------------------------
// Public schema
// ---------------------------------------------------------------------------

/// The whole validated configuration of one siphon process.
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

/// Sockets to bind. `udp: []` disables UDP; at least one listener is required.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    #[serde(deserialize_with = "socket_addr_list")]
    pub udp: Vec<SocketAddr>,
    #[serde(deserialize_with = "socket_addr_list")]
    pub tcp: Vec<SocketAddr>,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            udp: vec![SocketAddr::from(([0, 0, 0, 0], 5060))],
            tcp: Vec::new(),
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
}

/// Statically configured gateway groups; scripts may add more at run time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewayConfig {
    pub groups: Vec<GroupConfig>,
}

/// One named pool of destinations with its balancing algorithm and probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    pub name: String,
    pub algorithm: Algorithm,
    pub probe: ProbeConfig,
    pub destinations: Vec<DestinationConfig>,
}

impl GroupConfig {
    /// The selection state this config describes, every destination healthy.
    pub fn to_group(&self) -> crate::gateway::Group {
        use crate::gateway::{Destination, Group};
        let destinations = self
            .destinations
            .iter()
            .map(|d| Destination {
                uri: d.uri.clone(),
                address: d.address,
                weight: d.weight,
                attrs: d.attrs.clone(),
            })
            .collect();
        Group::new(
            self.name.clone(),
            self.algorithm,
            destinations,
            self.probe.failure_threshold,
        )
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
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            enabled: false,
            interval_secs: 5,
            failure_threshold: 3,
            timeout_ms: None,
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
        if self.interval_secs == 0 {
            return Err(FieldError::new(
                "interval_secs",
                "must be at least 1 (seconds between probes)",
            ));
        }
        if self.failure_threshold == 0 {
            return Err(FieldError::new(
                "failure_threshold",
                "must be at least 1 (consecutive failures before marking a destination down)",
            ));
        }
        if self.timeout_ms == Some(0) {
            return Err(FieldError::new(
                "timeout_ms",
                "must be at least 1, or left out for the default",
            ));
        }
        Ok(())
    }
}

/// One backend of a group: its stable identity (`uri`) and where packets go
/// (`address`, resolved once when the config is loaded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationConfig {
    pub uri: String,
    pub address: SocketAddr,
    pub weight: u32,
    pub attrs: BTreeMap<String, String>,
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
        })
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

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    pub url: String,
    pub key_prefix: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".to_string(),
            key_prefix: "siphon:reg:".to_string(),
        }
    }
}

/// Process identity and shutdown behaviour.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Names this node in logs, metrics and shared state.
    pub instance_id: String,
    /// How long to let transactions finish on shutdown.
    pub drain_secs: u64,
    /// Transaction shards (each also a Python worker thread). One shard
    /// shares the receiving thread and costs a third of the CPU per call of
    /// two (no cross-thread wake-ups); more spread a heavier script over
    /// cores. 0 picks one per core, capped at 8.
    pub workers: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            instance_id: "siphon".to_string(),
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
}

/// The admin HTTP API; off unless `listen` is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    #[serde(deserialize_with = "optional_socket_addr")]
    pub listen: Option<SocketAddr>,
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
}

impl Default for TransactionConfig {
    fn default() -> Self {
        TransactionConfig {
            t1_ms: 500,
            t2_ms: 4000,
            t4_ms: 5000,
            timer_c_secs: 180,
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
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why a config could not be used. Display is one line naming the file and
/// the key or line, meant to be shown to the operator as is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {}", path.display(), io_reason(source))]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A `${...}` reference could not be expanded.
    #[error("{}: line {line}: {message}", file.display())]
    Expand {
        file: PathBuf,
        line: usize,
        message: String,
    },
    /// The YAML is malformed or a value has the wrong shape or type.
    #[error("{}: {}{message}{}", file.display(), key_prefix(key), line_suffix(*line))]
    Parse {
        file: PathBuf,
        /// Key path such as `gateway.groups[0].algorithm`; empty at the root.
        key: String,
        line: Option<usize>,
        message: String,
    },
    /// The YAML is well-formed but a value is not acceptable.
    #[error("{}: {key}: {message}", file.display())]
    Invalid {
        file: PathBuf,
        key: String,
        message: String,
    },
}

impl ConfigError {
    /// The offending key path, when the error is about one key.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Parse { key, .. } | ConfigError::Invalid { key, .. }
                if !key.is_empty() =>
            {
                Some(key)
            }
            _ => None,
        }
    }
}

fn key_prefix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("{key}: ")
    }
}

fn line_suffix(line: Option<usize>) -> String {
    line.map(|l| format!(" (line {l})")).unwrap_or_default()
}

/// `No such file or directory` rather than `... (os error 2)`.
fn io_reason(error: &io::Error) -> String {
    let text = error.to_string();
    match text.find(" (os error ") {
        Some(cut) => text[..cut].to_string(),
        None => text,
    }
}

/// A problem with one field of a group, destination or probe; `key` is
/// relative to the thing checked (e.g. `destinations[1].uri`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub key: String,
    pub message: String,
}

impl FieldError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            key: key.into(),
            message: message.into(),
        }
    }

    /// Prefixes the key with its parent, e.g. `probe` + `interval_secs`.
    fn under(self, parent: &str) -> Self {
        FieldError {
            key: format!("{parent}.{}", self.key),
            message: self.message,
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl std::error::Error for FieldError {}

// ---------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------

/// Reads, expands, parses and validates the config file at `path`, then checks
/// that the files it refers to exist ([`Config::validate_files`]).
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let config = from_text(&text, path)?;
    config.validate_files(path)?;
    Ok(config)
}

/// Expands, parses and validates config text. `origin` is the file it came
/// from: it names the file in errors and anchors a relative script path.
/// Referenced files are not checked here (see [`Config::validate_files`]);
/// destination addresses are resolved.
pub fn from_text(text: &str, origin: &Path) -> Result<Config, ConfigError> {
    from_text_with_vars(text, origin, &|name| std::env::var(name).ok())
}

/// [`from_text`] with an explicit variable lookup, so tests need not touch
/// the process environment.
fn from_text_with_vars(
    text: &str,
    origin: &Path,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let expanded = expand_vars(text, lookup).map_err(|e| ConfigError::Expand {
        file: origin.to_path_buf(),
        line: e.line,
        message: e.message,
    })?;
    let raw = parse_yaml(&expanded, origin)?;
    raw.into_config(origin)
}

impl Config {
    /// Checks the files the config points to; [`load`] calls it. Kept apart
    /// from [`from_text`] so configs can be checked before their scripts exist.
    pub fn validate_files(&self, origin: &Path) -> Result<(), ConfigError> {
        let script = &self.script.path;
        match std::fs::metadata(script) {
            Ok(meta) if meta.is_file() => Ok(()),
            Ok(_) => Err(invalid(
                origin,
                "script.path",
                format!("{} is not a file", script.display()),
            )),
            Err(error) => Err(invalid(
                origin,
                "script.path",
                format!(
                    "cannot read script {}: {} (a relative path is taken from the config file's directory)",
                    script.display(),
                    io_reason(&error)
                ),
            )),
        }
    }
}

// ---------------------------------------------------------------------------
// Step 1: ${VAR} expansion
// ---------------------------------------------------------------------------

struct ExpandError {
    line: usize,
    message: String,
}

/// Expands `${VAR}` and `${VAR:-default}` (default used when VAR is unset or
/// empty, as in the shell) and turns `$$` into `$`. Text after a YAML comment
/// marker is copied untouched, so comments may mention `${VAR}` freely.
fn expand_vars(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, ExpandError> {
    let mut out = String::with_capacity(text.len());
    for (index, line) in text.split_inclusive('\n').enumerate() {
        expand_line(line, index + 1, lookup, &mut out)?;
    }
    Ok(out)
}

fn expand_line(
    line: &str,
    line_number: usize,
    lookup: &dyn Fn(&str) -> Option<String>,
    out: &mut String,
) -> Result<(), ExpandError> {
    let mut quote: Option<char> = None;
    let mut previous: Option<char> = None;
    let mut rest = line;
    while let Some(c) = rest.chars().next() {
        let after = &rest[c.len_utf8()..];
        match c {
            '$' if after.starts_with('$') => {
                out.push('$');
                rest = &after[1..];
                previous = Some('$');
                continue;
            }
            '$' if after.starts_with('{') => {
                let body = &after[1..];
                let Some(close) = body.find('}') else {
                    return Err(ExpandError {
                        line: line_number,
                        message: "`${` is not closed; write ${NAME} or ${NAME:-default} (or $$ for a literal $)".to_string(),
                    });
                };
                let value =
                    expand_reference(&body[..close], lookup).map_err(|message| ExpandError {
                        line: line_number,
                        message,
                    })?;
                out.push_str(&value);
                rest = &body[close + 1..];
                previous = Some('}');
                continue;
            }
            '#' if quote.is_none() && previous.is_none_or(char::is_whitespace) => {
                out.push_str(rest);
                return Ok(());
            }
            '"' | '\'' => match quote {
                Some(open) if open == c => quote = None,
                None if previous.is_none_or(|p| p.is_whitespace() || "[{,:-".contains(p)) => {
                    quote = Some(c)
                }
                _ => {}
            },
            '\\' if quote == Some('"') => {
                // An escaped character inside double quotes never closes them.
                out.push(c);
                let escaped_len = after.chars().next().map_or(0, char::len_utf8);
                out.push_str(&after[..escaped_len]);
                rest = &after[escaped_len..];
                previous = after[..escaped_len].chars().next().or(Some(c));
                continue;
            }
            _ => {}
        }
        out.push(c);
        previous = Some(c);
        rest = after;
    }
    Ok(())
}

/// Resolves the inside of one `${...}`.
fn expand_reference(
    inner: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let (name, default) = match inner.split_once(":-") {
        Some((name, default)) => (name, Some(default)),
        None => (inner, None),
    };
    let valid_name = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid_name {
        return Err(format!(
            "`${{{inner}}}` is not a variable reference; write ${{NAME}} or ${{NAME:-default}} (or $$ for a literal $)"
        ));
    }
    match (lookup(name), default) {
        (Some(value), Some(default)) if value.is_empty() => Ok(default.to_string()),
        (Some(value), _) => Ok(value),
        (None, Some(default)) => Ok(default.to_string()),
        (None, None) => Err(format!(
            "environment variable `{name}` is not set; set it or give a default with ${{{name}:-default}}"
        )),
    }
}

// ---------------------------------------------------------------------------
// Step 2: YAML into raw structs
// ---------------------------------------------------------------------------

/// The YAML as written; the gateway section differs from [`Config`] because
/// destination addresses are still text to resolve.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    listen: Listen,
    #[serde(default)]
    advertise: Option<String>,
    #[serde(default)]
    domain: Domain,
    script: ScriptConfig,
    #[serde(default)]
    gateway: RawGateway,
    #[serde(default)]
    registrar: RegistrarConfig,
    #[serde(default)]
    server: ServerConfig,
    #[serde(default)]
    metrics: MetricsConfig,
    #[serde(default)]
    admin: AdminConfig,
    #[serde(default)]
    log: LogConfig,
    #[serde(default)]
    transaction: TransactionConfig,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawGateway {
    groups: Vec<RawGroup>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    name: String,
    #[serde(default)]
    algorithm: Algorithm,
    #[serde(default)]
    probe: ProbeConfig,
    #[serde(default)]
    destinations: Vec<RawDestination>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDestination {
    uri: String,
    #[serde(default)]
    address: Option<String>,
    #[serde(default = "default_weight")]
    weight: u32,
    #[serde(default, deserialize_with = "attr_map")]
    attrs: BTreeMap<String, String>,
}

fn default_weight() -> u32 {
    1
}

fn parse_yaml(text: &str, origin: &Path) -> Result<RawConfig, ConfigError> {
    let deserializer = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let path = error.path().to_string();
        // "?" means the YAML broke before any key could be read.
        let syntax_error = path == "?";
        let key = if path == "." || syntax_error {
            String::new()
        } else {
            path
        };
        let inner = error.into_inner();
        let line = inner.location().map(|l| l.line());
        let mut message = clean_yaml_message(&inner.to_string(), &key);
        if syntax_error {
            message = format!("invalid YAML: {message}");
        }
        if key.is_empty() && message.contains("missing field `script`") {
            message.push_str("; add `script: {path: \"/path/to/script.py\"}`");
        }
        ConfigError::Parse {
            file: origin.to_path_buf(),
            key,
            line,
            message,
        }
    })
}

/// Drops what serde_yaml adds to a message that we already show in our own
/// form: its key path prefix and its `at line L column C` position.
fn clean_yaml_message(text: &str, key: &str) -> String {
    let mut message = text;
    // serde_yaml's own path is the key or one of its parents.
    if let Some((yaml_path, rest)) = message.split_once(": ") {
        if !yaml_path.is_empty() && key.starts_with(yaml_path) {
            message = rest;
        }
    }
    remove_positions(message)
}

/// Removes every ` at line L column C` from a message.
fn remove_positions(message: &str) -> String {
    const MARKER: &str = " at line ";
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find(MARKER) {
        let tail = &rest[start + MARKER.len()..];
        let line_digits = tail.chars().take_while(char::is_ascii_digit).count();
        let column_part = tail[line_digits..].strip_prefix(" column ");
        match column_part {
            Some(column) if line_digits > 0 => {
                let column_digits = column.chars().take_while(char::is_ascii_digit).count();
                out.push_str(&rest[..start]);
                rest = &column[column_digits..];
            }
            _ => {
                out.push_str(&rest[..start + MARKER.len()]);
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Parses `ip:port` with a message that shows the expected form.
fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.trim().parse().map_err(|_| {
        format!(
            "`{text}` is not an ip:port address; write it like \"0.0.0.0:5060\" or \"[::1]:5060\""
        )
    })
}

/// An `ip:port` string, parsed with a helpful error.
struct IpPort(SocketAddr);

impl<'de> Deserialize<'de> for IpPort {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_socket_addr(&text)
            .map(IpPort)
            .map_err(de::Error::custom)
    }
}

fn socket_addr<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    IpPort::deserialize(deserializer).map(|a| a.0)
}

fn optional_socket_addr<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SocketAddr>, D::Error> {
    Ok(Option::<IpPort>::deserialize(deserializer)?.map(|a| a.0))
}

fn socket_addr_list<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<SocketAddr>, D::Error> {
    Ok(Vec::<IpPort>::deserialize(deserializer)?
        .into_iter()
        .map(|a| a.0)
        .collect())
}

/// An attribute value: any YAML scalar, kept as text (`{zone: 1}` works).
struct AttrValue(String);

impl<'de> Deserialize<'de> for AttrValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarText;
        impl Visitor<'_> for ScalarText {
            type Value = AttrValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<AttrValue, E> {
                Ok(AttrValue(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<AttrValue, E> {
                Ok(AttrValue(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<AttrValue, E> {
                Ok(AttrValue(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<AttrValue, E> {
                Ok(AttrValue(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<AttrValue, E> {
                Ok(AttrValue(v.to_string()))
            }
        }
        deserializer.deserialize_any(ScalarText)
    }
}

fn attr_map<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    Ok(BTreeMap::<String, AttrValue>::deserialize(deserializer)?
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect())
}

// ---------------------------------------------------------------------------
// Step 3: semantic validation
// ---------------------------------------------------------------------------

fn invalid(origin: &Path, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        file: origin.to_path_buf(),
        key: key.into(),
        message: message.into(),
    }
}

impl RawConfig {
    fn into_config(self, origin: &Path) -> Result<Config, ConfigError> {
        check_listen(&self.listen, origin)?;
        let advertise = check_advertise(self.advertise, origin)?;
        let domain = check_domain(self.domain, origin)?;
        let script = resolve_script(self.script, origin)?;
        let gateway = build_gateway(self.gateway, origin)?;
        check_registrar(&self.registrar, origin)?;
        check_server(&self.server, origin)?;
        check_log(&self.log, origin)?;
        check_transaction(&self.transaction, origin)?;
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
        })
    }
}

fn check_listen(listen: &Listen, origin: &Path) -> Result<(), ConfigError> {
    if listen.udp.is_empty() && listen.tcp.is_empty() {
        return Err(invalid(
            origin,
            "listen",
            "no listener; add an ip:port to listen.udp or listen.tcp",
        ));
    }
    for (transport, addresses) in [("udp", &listen.udp), ("tcp", &listen.tcp)] {
        let mut seen = HashSet::new();
        for (index, address) in addresses.iter().enumerate() {
            if !seen.insert(address) {
                return Err(invalid(
                    origin,
                    format!("listen.{transport}[{index}]"),
                    format!("{address} is listed twice"),
                ));
            }
        }
    }
    Ok(())
}

fn check_advertise(
    advertise: Option<String>,
    origin: &Path,
) -> Result<Option<String>, ConfigError> {
    let Some(text) = advertise else {
        return Ok(None);
    };
    let host = text.trim();
    if host.is_empty() || host.contains(char::is_whitespace) || host.contains("://") {
        return Err(invalid(
            origin,
            "advertise",
            format!("`{text}` is not a host; write a host or ip such as \"192.0.2.10\" (optionally with :port)"),
        ));
    }
    Ok(Some(host.to_string()))
}

fn check_domain(domain: Domain, origin: &Path) -> Result<Domain, ConfigError> {
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

fn resolve_script(script: ScriptConfig, origin: &Path) -> Result<ScriptConfig, ConfigError> {
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
    Ok(ScriptConfig { path })
}

fn build_gateway(raw: RawGateway, origin: &Path) -> Result<GatewayConfig, ConfigError> {
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
            let destination = DestinationConfig::resolve(
                &raw_dest.uri,
                raw_dest.address.as_deref(),
                raw_dest.weight,
                raw_dest.attrs,
            )
            .map_err(|e| at(e.under(&format!("destinations[{index}]"))))?;
            destinations.push(destination);
        }
        let group = GroupConfig {
            name,
            algorithm: raw_group.algorithm,
            probe: raw_group.probe,
            destinations,
        };
        group.check().map_err(at)?;
        groups.push(group);
    }
    Ok(GatewayConfig { groups })
}

fn check_registrar(registrar: &RegistrarConfig, origin: &Path) -> Result<(), ConfigError> {
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
    if registrar.max_contacts == 0 {
        return Err(invalid(
            origin,
            "registrar.max_contacts",
            "must be at least 1",
        ));
    }
    let url = registrar.redis.url.trim();
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
    Ok(())
}

fn check_server(server: &ServerConfig, origin: &Path) -> Result<(), ConfigError> {
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
const LOG_LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];

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

fn check_log(log: &LogConfig, origin: &Path) -> Result<(), ConfigError> {
    check_log_level(&log.level).map_err(|message| invalid(origin, "log.level", message))
}

fn check_transaction(t: &TransactionConfig, origin: &Path) -> Result<(), ConfigError> {
    if t.t1_ms == 0 {
        return Err(invalid(
            origin,
            "transaction.t1_ms",
            "must be at least 1 (RFC 3261 default 500)",
        ));
    }
    if t.t2_ms < t.t1_ms {
        return Err(invalid(
            origin,
            "transaction.t2_ms",
            format!("{} must not be below t1_ms ({})", t.t2_ms, t.t1_ms),
        ));
    }
    if t.t4_ms == 0 {
        return Err(invalid(
            origin,
            "transaction.t4_ms",
            "must be at least 1 (RFC 3261 default 5000)",
        ));
    }
    if t.timer_c_secs == 0 {
        return Err(invalid(
            origin,
            "transaction.timer_c_secs",
            "must be at least 1 (RFC 3261 asks for more than 180)",
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Minimal SIP URI and address handling
// ---------------------------------------------------------------------------

/// Host and port of a `sip:`/`sips:` URI, checked just enough to route to it:
/// scheme, optional `user@`, non-empty host (name, IPv4 or `[IPv6]`) and
/// optional numeric port. The default port is 5060 (5061 for `sips:`).
pub fn sip_uri_host_port(uri: &str) -> Result<(String, u16), String> {
    let not_sip =
        || format!("`{uri}` is not a sip: URI; write it like \"sip:backend1.example.com:5060\"");
    let (scheme, rest) = uri.split_once(':').ok_or_else(not_sip)?;
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "sip" => 5060,
        "sips" => 5061,
        _ => return Err(not_sip()),
    };
    // Parameters and headers never contain '@' unescaped, so the last '@'
    // before them ends the user part (which may itself contain ';').
    let before_headers = rest.split('?').next().unwrap_or(rest);
    let host_part = match before_headers.rfind('@') {
        Some(at) => &before_headers[at + 1..],
        None => before_headers,
    };
    let hostport = host_part.split(';').next().unwrap_or(host_part);
    let (host, port) =
        split_host_port(hostport, default_port).map_err(|reason| format!("`{uri}`: {reason}"))?;
    let host_ok = host.parse::<IpAddr>().is_ok()
        || host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_');
    if !host_ok {
        return Err(format!("`{uri}`: `{host}` is not a valid host"));
    }
    Ok((host, port))
}

/// Splits `host`, `host:port`, `[v6]` or `[v6]:port`; the host comes back
/// without brackets.
fn split_host_port(text: &str, default_port: u16) -> Result<(String, u16), String> {
    let (host, port_text) = if let Some(bracketed) = text.strip_prefix('[') {
        let close = bracketed
            .find(']')
            .ok_or_else(|| "an IPv6 address lacks its closing `]`".to_string())?;
        let after = &bracketed[close + 1..];
        let port = match after.strip_prefix(':') {
            Some(port) => Some(port),
            None if after.is_empty() => None,
            None => return Err(format!("unexpected `{after}` after the IPv6 address")),
        };
        (&bracketed[..close], port)
    } else {
        match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.is_empty() {
        return Err("the host is missing".to_string());
    }
    let port = match port_text {
        None => default_port,
        Some(digits) => match digits.parse::<u16>() {
            Ok(port) if port > 0 && digits.chars().all(|c| c.is_ascii_digit()) => port,
            _ => return Err(format!("`{digits}` is not a port number (1-65535)")),
        },
    };
    Ok((host.to_string(), port))
}

/// Resolves a destination `address`: `ip:port`, `host:port`, or a bare
/// host/ip that takes the uri's port.
fn resolve_address(text: &str, default_port: u16) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Ok(address);
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    let (host, port) = split_host_port(text, default_port)
        .map_err(|reason| format!("`{text}`: {reason}; write it like \"10.0.0.1:5060\""))?;
    resolve_host(&host, port)
}

/// One DNS/hosts lookup, done at load time only.
fn resolve_host(host: &str, port: u16) -> Result<SocketAddr, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    match (host, port).to_socket_addrs() {
        Ok(mut addresses) => addresses
            .next()
            .ok_or_else(|| format!("`{host}` resolves to no address")),
        Err(error) => Err(format!("cannot resolve `{host}`: {error}")),
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!(config.listen.udp, vec!["0.0.0.0:5060".parse().unwrap()]);
        assert!(config.listen.tcp.is_empty());
        assert_eq!(config.advertise, None);
        assert!(config.domain.local.is_empty());
        assert_eq!(config.script.path, PathBuf::from("/srv/lb.py"));
        assert!(config.gateway.groups.is_empty());
        assert_eq!(config.registrar.backend, RegistrarBackend::Memory);
        assert_eq!(config.registrar.redis.url, "redis://127.0.0.1:6379");
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
        assert_eq!(config.server.instance_id, "siphon");
        assert_eq!(config.server.drain_secs, 5);
        assert_eq!(config.metrics.prometheus, None);
        assert_eq!(config.metrics.log_interval_secs, 60);
        assert_eq!(config.admin.listen, None);
        assert_eq!(config.log.level, "info");
        assert_eq!(config.log.format, LogFormat::Pretty);
        assert_eq!(config.transaction.t1(), Duration::from_millis(500));
        assert_eq!(config.transaction.t2(), Duration::from_millis(4000));
        assert_eq!(config.transaction.t4(), Duration::from_millis(5000));
        assert_eq!(config.transaction.timer_c(), Duration::from_secs(180));
    }

    #[test]
    fn partial_sections_keep_defaults_for_missing_keys() {
        let config = parse(
            "script: {path: /srv/lb.py}\nlisten: {tcp: [\"127.0.0.1:5070\"]}\nregistrar: {max_contacts: 3}\ntransaction: {t1_ms: 100}\n",
        )
        .expect("partial sections");
        assert_eq!(config.listen.udp, vec!["0.0.0.0:5060".parse().unwrap()]);
        assert_eq!(config.listen.tcp, vec!["127.0.0.1:5070".parse().unwrap()]);
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
        assert_eq!(config.listen.tcp, vec!["0.0.0.0:5060".parse().unwrap()]);
        assert_eq!(config.advertise.as_deref(), Some("192.0.2.10"));
        assert_eq!(config.domain.local, vec!["example.com", "127.0.0.1"]);
        assert_eq!(config.server.instance_id, "lb1");
        assert_eq!(
            config.metrics.prometheus,
            Some(PrometheusConfig {
                listen: "127.0.0.1:9090".parse().unwrap()
            })
        );
        assert_eq!(config.admin.listen, Some("127.0.0.1:9091".parse().unwrap()));
    }

    #[test]
    fn example_configs_in_the_repo_parse() {
        let lb = from_text_with_vars(
            include_str!("../config/lb.yaml"),
            Path::new("config/lb.yaml"),
            &|_| None,
        )
        .expect("config/lb.yaml");
        assert_eq!(lb.listen.udp, vec!["127.0.0.1:5060".parse().unwrap()]);
        assert_eq!(lb.listen.tcp, vec!["127.0.0.1:5060".parse().unwrap()]);
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
            include_str!("../config/lb.yaml"),
            Path::new("config/lb.yaml"),
            &|name| (name == "SIPHON_LISTEN").then(|| "0.0.0.0:5070".to_string()),
        )
        .expect("config/lb.yaml with SIPHON_LISTEN");
        assert_eq!(
            lb_everywhere.listen.udp,
            vec!["0.0.0.0:5070".parse().unwrap()]
        );

        let proxy = from_text_with_vars(
            include_str!("../config/proxy.yaml"),
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
        let text =
            "listen:\n  udp: [\"${ADDR:-127.0.0.1:5080}\"]\nscript: {path: \"${DIR}/lb.py\"}\n";
        let config = from_text_with_vars(text, origin(), &|name| {
            (name == "DIR").then(|| "/opt/siphon".to_string())
        })
        .expect("expanded config");
        assert_eq!(config.listen.udp, vec!["127.0.0.1:5080".parse().unwrap()]);
        assert_eq!(config.script.path, PathBuf::from("/opt/siphon/lb.py"));

        let from_process = from_text(
            "listen: {udp: [\"${SIPHON_TEST_SURELY_UNSET_VAR:-127.0.0.1:5090}\"]}\nscript: {path: /x.py}\n",
            origin(),
        )
        .expect("default from the real environment lookup");
        assert_eq!(
            from_process.listen.udp,
            vec!["127.0.0.1:5090".parse().unwrap()]
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
        assert!(
            error_of("script: {path: /x.py}\na: ${OPEN\n").contains("line 2: `${` is not closed")
        );
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
            "config/test.yaml: gateway.groups[0].algorithm: unknown variant `hashh`, expected one of `weighted`, `round_robin`, `hash` (line 5)"
        );
    }

    #[test]
    fn unknown_keys_are_named_with_their_path() {
        let top = error_of("script: {path: /x.py}\nlisten_udp: [\"0.0.0.0:5060\"]\n");
        assert!(
            top.starts_with("config/test.yaml: listen_udp: unknown field `listen_udp`, expected one of `listen`"),
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
            in_destination.starts_with("config/test.yaml: gateway.groups[0].destinations[0].wieght: unknown field `wieght`"),
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
        let message = error_of(
            "script: {path: /x.py}\nlisten:\n  udp: [\"127.0.0.1:5060\", \"127.0.0.1\"]\n",
        );
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
            duplicate.contains(
                "gateway.groups[1].name: duplicate group name `a` (also gateway.groups[0])"
            ),
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
            .contains("gateway.groups[0].probe.interval_secs: must be at least 1"));
        assert!(error_of(&group("{failure_threshold: 0}"))
            .contains("gateway.groups[0].probe.failure_threshold: must be at least 1"));
        assert!(error_of(&group("{timeout_ms: 0}"))
            .contains("gateway.groups[0].probe.timeout_ms: must be at least 1"));
    }

    #[test]
    fn probe_timeout_defaults_to_interval_capped_at_five_seconds() {
        let probe = |interval_secs, timeout_ms| ProbeConfig {
            enabled: true,
            interval_secs,
            failure_threshold: 3,
            timeout_ms,
        };
        assert_eq!(probe(2, None).timeout(), Duration::from_secs(2));
        assert_eq!(probe(30, None).timeout(), Duration::from_secs(5));
        assert_eq!(probe(30, Some(700)).timeout(), Duration::from_millis(700));
    }

    #[test]
    fn destination_address_defaults_to_the_uri_host_and_port() {
        let config = parse(&with_group(
            "    - name: a\n      destinations:\n        - uri: \"sip:127.0.0.1:5080\"\n        - uri: \"sip:alice@127.0.0.2;transport=tcp\"\n        - uri: \"sips:127.0.0.3\"\n        - uri: \"sip:[::1]:5099\"\n        - {uri: \"sip:backend.example.com:5077\", address: \"127.0.0.4\"}\n        - {uri: \"sip:localhost\"}\n",
        ))
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
            bad_port
                .contains("destinations[0].uri: `sip:127.0.0.1:50x`: `50x` is not a port number"),
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
            default_outside.contains("registrar.default_expires: 30 must be between min_expires (60) and max_expires (7200)"),
            "{default_outside}"
        );
        let min_above_max = error_of("script: {path: /x.py}\nregistrar: {min_expires: 9000}\n");
        assert!(
            min_above_max.contains("registrar.min_expires: 9000 is above max_expires (7200)"),
            "{min_above_max}"
        );
        let no_contacts = error_of("script: {path: /x.py}\nregistrar: {max_contacts: 0}\n");
        assert!(
            no_contacts.contains("registrar.max_contacts: must be at least 1"),
            "{no_contacts}"
        );
        let url = error_of("script: {path: /x.py}\nregistrar: {backend: redis, redis: {url: \"127.0.0.1:6379\"}}\n");
        assert!(
            url.contains("registrar.redis.url: `127.0.0.1:6379` is not a Redis URL"),
            "{url}"
        );
        let redis =
            parse("script: {path: /x.py}\nregistrar: {backend: redis}\n").expect("redis backend");
        assert_eq!(redis.registrar.backend, RegistrarBackend::Redis);
    }

    #[test]
    fn log_level_must_be_a_level_or_filter() {
        let config = parse(
            "script: {path: /x.py}\nlog: {level: \"warn,siphon::sip=trace\", format: json}\n",
        )
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
            zero.contains("transaction.t1_ms: must be at least 1"),
            "{zero}"
        );
        let t2_low = error_of("script: {path: /x.py}\ntransaction: {t1_ms: 500, t2_ms: 400}\n");
        assert!(
            t2_low.contains("transaction.t2_ms: 400 must not be below t1_ms (500)"),
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

        let bare =
            from_text("script: {path: lb.py}\n", Path::new("siphon.yaml")).expect("bare origin");
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
        for algorithm in [Algorithm::Weighted, Algorithm::RoundRobin, Algorithm::Hash] {
            assert_eq!(algorithm.as_str().parse::<Algorithm>(), Ok(algorithm));
        }
        assert!("roundrobin"
            .parse::<Algorithm>()
            .unwrap_err()
            .to_string()
            .contains("expected weighted, round_robin or hash"));
    }
}
