//! `tracing`: OpenTelemetry traces of calls (`tracing.otlp`).

use super::*;

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    pub otlp: Option<OtlpConfig>,
}

/// `tracing.otlp`: where spans go and for which calls.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// The collector's OTLP/HTTP base URL; spans go to `/v1/traces` under it.
    pub endpoint: String,
    /// The share of calls traced, 0 to 1, decided once per Call-ID. A
    /// request whose `traceparent` says sampled is traced whatever this is.
    #[serde(default = "default_trace_sample")]
    pub sample: f64,
    /// `service.name` of the spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Transactions' spans waiting for export at most; more are dropped
    /// and counted.
    #[serde(default = "default_trace_queue")]
    pub queue: usize,
    /// Whose `traceparent` a request continues: `any` sender's, only
    /// `trusted` ones' (`security.trusted`), or `never`.
    #[serde(default)]
    pub follow_traceparent: crate::telemetry::FollowTraceparent,
}

fn default_trace_sample() -> f64 {
    0.01
}

fn default_service_name() -> String {
    "siphon".into()
}

fn default_trace_queue() -> usize {
    4096
}

pub(super) fn check_tracing(tracing: &TracingConfig, origin: &Path) -> Result<(), ConfigError> {
    let Some(otlp) = &tracing.otlp else {
        return Ok(());
    };
    if !(0.0..=1.0).contains(&otlp.sample) {
        return Err(invalid(
            origin,
            "tracing.otlp.sample",
            format!(
                "{} is out of range; use 0 to 1 (the share of calls)",
                otlp.sample
            ),
        ));
    }
    check_range(
        origin,
        "tracing.otlp.queue",
        otlp.queue,
        1,
        1_000_000,
        "transactions",
    )?;
    if otlp.service_name.trim().is_empty() {
        return Err(invalid(origin, "tracing.otlp.service_name", "is empty"));
    }
    // The name is looked up again when the exporter starts: here only
    // the shape is checked, so a collector not up yet does not stop a boot.
    let endpoint = otlp.endpoint.trim();
    let Some(rest) = endpoint.strip_prefix("http://") else {
        return Err(invalid(
            origin,
            "tracing.otlp.endpoint",
            format!(
                "`{endpoint}`: write it http://host:port, e.g. \"http://127.0.0.1:4318\" (OTLP over plain HTTP; run a local collector for TLS)"
            ),
        ));
    };
    if rest.is_empty() || rest.starts_with('/') {
        return Err(invalid(
            origin,
            "tracing.otlp.endpoint",
            format!("`{endpoint}` names no host"),
        ));
    }
    Ok(())
}
