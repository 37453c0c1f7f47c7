//! `tracing.otlp`: the spans of traced calls go to an OpenTelemetry
//! collector over OTLP/HTTP (protobuf). The shards only move each finished
//! transaction's spans into a bounded queue; a thread of its own turns
//! them into OTLP, batches them and posts them. A full queue, or a
//! collector that is slow or gone, drops spans and counts them
//! (`siphon_otlp_dropped_spans_total{reason}`): a call never waits for
//! its trace.

use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prost::Message as _;

use crate::config::OtlpConfig;
use crate::http1::Endpoint;
use crate::telemetry::{Attribute, CallTrace, Sampler, SpanKind, SpanRecord, TraceSettings};

/// Spans sent in one request at most.
const BATCH_SPANS: usize = 512;
/// How long spans wait for more to join their batch.
const BATCH_WAIT: Duration = Duration::from_millis(500);
/// How long one post may take, connect included.
const POST_TIMEOUT: Duration = Duration::from_secs(2);

/// The shards' side: the sampler, and a bounded queue to the export thread.
pub struct TraceExport {
    settings: TraceSettings,
    queue: SyncSender<Box<CallTrace>>,
}

impl TraceExport {
    /// Starts the export thread for `config`. The collector's name is
    /// looked up for each post, so one that is not up yet at boot, or
    /// moves, is found.
    pub fn start(config: &OtlpConfig, instance: &str) -> Result<Arc<TraceExport>, String> {
        let (queue, taken) = sync_channel(config.queue);
        let exporter = Exporter {
            url: config.endpoint.trim().to_string(),
            resource: Resource {
                attributes: vec![
                    text("service.name", &config.service_name),
                    text("service.instance.id", instance),
                    text("service.version", env!("CARGO_PKG_VERSION")),
                ],
                ..Default::default()
            },
            clock: Clock::now(),
            warnings: crate::logging::Throttle::new(Duration::from_secs(10)),
        };
        std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || exporter.run(taken))
            .map_err(|e| format!("tracing.otlp: cannot start the export thread: {e}"))?;
        tracing::info!(endpoint = %config.endpoint, sample = config.sample, "tracing calls to OpenTelemetry over OTLP/HTTP");
        Ok(Arc::new(TraceExport {
            settings: TraceSettings {
                sampler: Sampler::new(config.sample),
                follow: config.follow_traceparent,
            },
            queue,
        }))
    }

    pub fn settings(&self) -> TraceSettings {
        self.settings
    }

    /// A traced transaction's spans, to export.
    pub fn record(&self, trace: Box<CallTrace>) {
        let spans = trace.spans.len() as u64;
        match self.queue.try_send(trace) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => crate::metrics::get().otlp_dropped("queue_full", spans),
            Err(TrySendError::Disconnected(_)) => {
                crate::metrics::get().otlp_dropped("stopped", spans)
            }
        }
    }
}

/// OTLP/HTTP posts traces to `/v1/traces` under the endpoint, unless its
/// URL names that path itself.
fn traces_path(path: &str) -> String {
    let path = path.trim_end_matches('/');
    if path.ends_with("/v1/traces") {
        path.to_string()
    } else {
        format!("{path}/v1/traces")
    }
}

/// Turns the engine's `Instant`s into the wall clock once, at start: a
/// span's times then keep their order and gaps even if the clock steps.
struct Clock {
    instant: Instant,
    unix_nanos: u64,
}

impl Clock {
    fn now() -> Clock {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Clock {
            instant: Instant::now(),
            unix_nanos: unix.as_nanos() as u64,
        }
    }

    fn unix_nanos(&self, at: Instant) -> u64 {
        match at.checked_duration_since(self.instant) {
            Some(after) => self.unix_nanos.saturating_add(after.as_nanos() as u64),
            None => self
                .unix_nanos
                .saturating_sub(self.instant.duration_since(at).as_nanos() as u64),
        }
    }
}

struct Exporter {
    url: String,
    resource: Resource,
    clock: Clock,
    warnings: crate::logging::Throttle,
}

impl Exporter {
    /// Gathers spans for up to [`BATCH_WAIT`] (or [`BATCH_SPANS`]), posts
    /// them, and goes on: a post that fails drops its batch.
    fn run(mut self, taken: Receiver<Box<CallTrace>>) {
        let mut batch: Vec<Span> = Vec::new();
        let mut deadline: Option<Instant> = None;
        loop {
            let received = match deadline {
                None => taken.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(at) => taken.recv_timeout(at.saturating_duration_since(Instant::now())),
            };
            match received {
                Ok(trace) => {
                    if deadline.is_none() {
                        // Each batch reads the wall clock afresh: a clock
                        // stepped since boot (NTP) is followed.
                        self.clock = Clock::now();
                        deadline = Some(Instant::now() + BATCH_WAIT);
                    }
                    let trace_id = trace.trace_id.to_be_bytes().to_vec();
                    batch.extend(trace.spans.iter().map(|s| self.span(&trace_id, s)));
                    if batch.len() < BATCH_SPANS {
                        continue;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.post(std::mem::take(&mut batch));
                    return;
                }
            }
            deadline = None;
            self.post(std::mem::take(&mut batch));
        }
    }

    fn span(&self, trace_id: &[u8], record: &SpanRecord) -> Span {
        let kind = match record.kind {
            SpanKind::Server => span::SpanKind::Server,
            SpanKind::Client => span::SpanKind::Client,
            SpanKind::Internal => span::SpanKind::Internal,
        };
        let status = match &record.error {
            Some(message) => Status {
                message: message.clone(),
                code: status::StatusCode::Error as i32,
            },
            None => Status::default(),
        };
        Span {
            trace_id: trace_id.to_vec(),
            span_id: record.span_id.to_be_bytes().to_vec(),
            parent_span_id: match record.parent_span_id {
                0 => Vec::new(),
                parent => parent.to_be_bytes().to_vec(),
            },
            name: record.name.to_string(),
            kind: kind as i32,
            start_time_unix_nano: self.clock.unix_nanos(record.start),
            end_time_unix_nano: self.clock.unix_nanos(record.end),
            attributes: record
                .attributes
                .iter()
                .map(|(key, value)| KeyValue {
                    key: key.to_string(),
                    value: Some(AnyValue {
                        value: Some(match value {
                            Attribute::Text(text) => any_value::Value::StringValue(text.clone()),
                            Attribute::Number(n) => any_value::Value::IntValue(*n),
                        }),
                    }),
                    ..Default::default()
                })
                .collect(),
            status: Some(status),
            // Sampled (W3C trace flags).
            flags: 1,
            ..Default::default()
        }
    }

    fn post(&self, spans: Vec<Span>) {
        if spans.is_empty() {
            return;
        }
        let count = spans.len() as u64;
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "siphon".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let body = request.encode_to_vec();
        let headers = [("Content-Type", "application/x-protobuf")];
        let sent = Endpoint::parse(&self.url).and_then(|endpoint| {
            let path = traces_path(&endpoint.path);
            crate::http1::request(&endpoint, ("POST", &path), &headers, &body, POST_TIMEOUT)
        });
        let metrics = crate::metrics::get();
        match sent {
            Ok(answer) if (200..300).contains(&answer.status) => metrics.otlp_exported(count),
            outcome => {
                metrics.otlp_dropped("export_failed", count);
                let why = match outcome {
                    Ok(answer) => format!("answered {}", answer.status),
                    Err(e) => e,
                };
                if let Some(held_back) = self.warnings.allow() {
                    tracing::warn!(endpoint = %self.url, held_back, spans = count, "tracing.otlp: export failed, spans dropped: {why}");
                }
            }
        }
    }
}

fn text(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_go_to_v1_traces_under_the_endpoint() {
        assert_eq!(traces_path(""), "/v1/traces");
        assert_eq!(traces_path("/"), "/v1/traces");
        assert_eq!(traces_path("/otel"), "/otel/v1/traces");
        assert_eq!(traces_path("/v1/traces"), "/v1/traces");
    }

    #[test]
    fn instants_map_to_the_wall_clock_in_order() {
        let clock = Clock::now();
        let later = clock.instant + Duration::from_millis(1500);
        assert_eq!(
            clock.unix_nanos(later) - clock.unix_nanos(clock.instant),
            1_500_000_000
        );
        let earlier = clock.instant - Duration::from_millis(2);
        assert_eq!(
            clock.unix_nanos(clock.instant) - clock.unix_nanos(earlier),
            2_000_000
        );
    }
}
