//! Step 2 of loading: YAML into raw structs that reject unknown keys, with
//! key paths and line numbers in the errors.

use super::*;

/// The YAML as written; the gateway section differs from [`Config`] because
/// destination addresses are still text to resolve.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) listen: Listen,
    #[serde(default)]
    pub(super) advertise: Option<String>,
    #[serde(default)]
    pub(super) domain: Domain,
    pub(super) script: ScriptConfig,
    #[serde(default)]
    pub(super) gateway: RawGateway,
    #[serde(default)]
    pub(super) registrar: RegistrarConfig,
    #[serde(default)]
    pub(super) server: ServerConfig,
    #[serde(default)]
    pub(super) metrics: MetricsConfig,
    #[serde(default)]
    pub(super) admin: AdminConfig,
    #[serde(default)]
    pub(super) log: LogConfig,
    #[serde(default)]
    pub(super) transaction: TransactionConfig,
    #[serde(default)]
    pub(super) security: SecurityConfig,
    #[serde(default)]
    pub(super) limits: LimitsConfig,
    #[serde(default)]
    pub(super) auth: Option<AuthConfig>,
    #[serde(default)]
    pub(super) dns: DnsConfig,
    #[serde(default)]
    pub(super) tls: TlsConfig,
    #[serde(default)]
    pub(super) capture: CaptureConfig,
    #[serde(default)]
    pub(super) tracing: TracingConfig,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawGateway {
    pub(super) groups: Vec<RawGroup>,
    pub(super) share_health: ShareHealth,
    pub(super) call_max_secs: Option<u64>,
    pub(super) webhook: Option<WebhookConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGroup {
    pub(super) name: String,
    #[serde(default)]
    pub(super) algorithm: Algorithm,
    #[serde(default)]
    pub(super) probe: ProbeConfig,
    #[serde(default)]
    pub(super) destinations: Vec<RawDestination>,
    #[serde(default)]
    pub(super) failover: FailoverConfig,
    #[serde(default)]
    pub(super) passive: PassiveConfig,
    #[serde(default = "default_max_retry_after")]
    pub(super) max_retry_after_secs: u64,
    #[serde(default)]
    pub(super) strict_source: bool,
    #[serde(default = "default_spill_threshold")]
    pub(super) spill_threshold: u32,
    #[serde(default)]
    pub(super) hash_bound: Option<f64>,
}

pub(super) fn default_spill_threshold() -> u32 {
    1
}

pub(super) fn default_max_retry_after() -> u64 {
    DEFAULT_MAX_RETRY_AFTER_SECS
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDestination {
    pub(super) uri: String,
    #[serde(default)]
    pub(super) address: Option<String>,
    #[serde(default = "default_weight")]
    pub(super) weight: u32,
    #[serde(default, deserialize_with = "attr_map")]
    pub(super) attrs: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) transport: Option<String>,
    #[serde(default)]
    pub(super) priority: i32,
    #[serde(default)]
    pub(super) max_calls: Option<u32>,
    #[serde(default)]
    pub(super) max_cps: Option<f64>,
}

pub(super) fn default_weight() -> u32 {
    1
}

pub(super) fn parse_yaml(text: &str, origin: &Path) -> Result<RawConfig, ConfigError> {
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
pub(super) fn clean_yaml_message(text: &str, key: &str) -> String {
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
pub(super) fn remove_positions(message: &str) -> String {
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
pub(super) fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.trim().parse().map_err(|_| {
        format!(
            "`{text}` is not an ip:port address; write it like \"0.0.0.0:5060\" or \"[::1]:5060\""
        )
    })
}

/// An `ip:port` string, parsed with a helpful error.
pub(super) struct IpPort(SocketAddr);

impl<'de> Deserialize<'de> for IpPort {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_socket_addr(&text)
            .map(IpPort)
            .map_err(de::Error::custom)
    }
}

pub(super) fn socket_addr<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<SocketAddr, D::Error> {
    IpPort::deserialize(deserializer).map(|a| a.0)
}

pub(super) fn optional_socket_addr<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SocketAddr>, D::Error> {
    Ok(Option::<IpPort>::deserialize(deserializer)?.map(|a| a.0))
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListenVisitor;
        impl<'de> Visitor<'de> for ListenVisitor {
            type Value = ListenAddr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"ip:port\" or {address: \"ip:port\", advertise: \"host[:port]\"}")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<ListenAddr, E> {
                parse_socket_addr(text)
                    .map(ListenAddr::from)
                    .map_err(de::Error::custom)
            }
            fn visit_map<M: de::MapAccess<'de>>(self, mut map: M) -> Result<ListenAddr, M::Error> {
                let (mut address, mut advertise) = (None, None);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "address" => address = Some(map.next_value::<IpPort>()?.0),
                        "advertise" => advertise = Some(map.next_value::<String>()?),
                        other => {
                            return Err(de::Error::unknown_field(other, &["address", "advertise"]))
                        }
                    }
                }
                let address = address.ok_or_else(|| de::Error::missing_field("address"))?;
                Ok(ListenAddr { address, advertise })
            }
        }
        deserializer.deserialize_any(ListenVisitor)
    }
}

/// An attribute value: any YAML scalar, kept as text (`{zone: 1}` works).
pub(super) struct AttrValue(String);

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

pub(super) fn attr_map<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    Ok(BTreeMap::<String, AttrValue>::deserialize(deserializer)?
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect())
}
