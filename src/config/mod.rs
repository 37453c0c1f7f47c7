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

mod address;
mod capture;
pub mod diff;
mod dns;
mod edge;
mod error;
mod expand;
mod otel;
mod schema;
#[cfg(test)]
mod tests;
mod tls;
mod validate;
mod websocket;
mod yaml;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use self::address::*;
use self::capture::*;
pub use self::capture::{CaptureConfig, HepConfig, HepTransport};
pub use self::dns::DnsConfig;
use self::dns::*;
use self::edge::*;
pub use self::edge::{
    read_credentials_file, AuthConfig, LimitsConfig, OnLimit, RateLimitConfig, RelayToConfig,
    SecurityConfig, TcpLimits,
};
pub use self::error::*;
use self::expand::*;
use self::otel::*;
pub use self::otel::{OtlpConfig, TracingConfig};
pub use self::schema::*;
use self::tls::*;
pub use self::tls::{TlsConfig, TlsListen};
pub use self::validate::check_log_level;
use self::validate::*;
pub use self::websocket::WsListen;
use self::websocket::*;
use self::yaml::*;

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

/// A gateway group as JSON with the YAML's keys (the admin API's `POST
/// /admin/gateways`), checked as the YAML is. The error names the key
/// within the group: `destinations[1].weight: ...`.
pub fn group_from_json(value: serde_json::Value) -> Result<GroupConfig, String> {
    let raw: RawGroup = serde_path_to_error::deserialize(value).map_err(json_error)?;
    let gateway = RawGateway {
        groups: vec![raw],
        ..RawGateway::default()
    };
    let built = build_gateway(gateway, Path::new("admin")).map_err(|e| match e {
        ConfigError::Invalid { key, message, .. } => {
            let key = key.strip_prefix("gateway.groups[0].").unwrap_or(&key);
            format!("{key}: {message}")
        }
        other => other.to_string(),
    })?;
    built
        .groups
        .into_iter()
        .next()
        .ok_or_else(|| "no group".to_string())
}

/// A destination as JSON with the YAML's keys, checked as the YAML is.
pub fn destination_from_json(value: serde_json::Value) -> Result<DestinationConfig, String> {
    let raw: RawDestination = serde_path_to_error::deserialize(value).map_err(json_error)?;
    build_destination(raw).map_err(|e| e.to_string())
}

/// A JSON value of the wrong shape, named by its key path.
fn json_error(error: serde_path_to_error::Error<serde_json::Error>) -> String {
    let path = error.path().to_string();
    match path.as_str() {
        "." => error.into_inner().to_string(),
        _ => format!("{path}: {}", error.into_inner()),
    }
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
