//! OpenTelemetry traces of calls, as plain data: W3C Trace Context
//! (`traceparent`) read from a request and written into its relayed copy,
//! the head-sampling decision, and the spans a server transaction leaves.
//!
//! Nothing here reads the clock or sends anything: the engine records
//! spans on its own `now`, and `actors::otlp` turns them into OTLP.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::Instant;

/// Whose `traceparent` a request may continue (`tracing.otlp.follow_traceparent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FollowTraceparent {
    /// Any sender's: it decides whether the call is traced, and its trace id.
    Any,
    /// Only from `security.trusted` peers (an SBC or a proxy in front);
    /// anyone else's starts a trace of our own when sampled.
    #[default]
    Trusted,
    /// Never: every trace starts here.
    Never,
}

/// What the engine traces (`tracing.otlp`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceSettings {
    pub sampler: Sampler,
    pub follow: FollowTraceparent,
}

/// Whether a call is traced, decided once per call from its Call-ID: every
/// transaction of the call, on every node, decides the same.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampler {
    /// Calls whose Call-ID hashes below this are traced.
    threshold: u64,
    always: bool,
}

/// Seeds of the hashes below: fixed, so that nodes agree.
const SAMPLE_SEED: u64 = 0x7369_7068_6f6e_0001;
const TRACE_ID_SEED: u64 = 0x7369_7068_6f6e_0002;

impl Sampler {
    /// Traces `ratio` of the calls (0 to 1).
    pub fn new(ratio: f64) -> Sampler {
        let ratio = ratio.clamp(0.0, 1.0);
        Sampler {
            threshold: (ratio * u64::MAX as f64) as u64,
            always: ratio >= 1.0,
        }
    }

    /// The trace of a request with `call_id`, continuing `incoming` (its
    /// `traceparent`) when it has one: the caller's sampled flag then
    /// decides, as W3C's parent-based sampling does. Otherwise the Call-ID
    /// decides, and the trace id comes from `key` (see [`TraceKey`]). None
    /// when not traced.
    pub fn trace_of(&self, key: TraceKey<'_>, incoming: Option<&str>) -> Option<TraceParent> {
        if let Some(parent) = incoming.and_then(TraceParent::parse) {
            return parent.sampled.then_some(parent);
        }
        let sampled = self.always
            || xxhash_rust::xxh3::xxh3_64_with_seed(key.call_id.as_bytes(), SAMPLE_SEED)
                < self.threshold;
        sampled.then(|| TraceParent {
            trace_id: key.trace_id(),
            parent_span_id: 0,
            sampled: true,
        })
    }
}

/// What a trace started here is named by: a call's requests (INVITE, ACK,
/// CANCEL, BYE and the other requests of its dialog) share one trace by
/// Call-ID, so the INVITE and the BYE land in one trace on every node.
/// Any other request is a trace of its own (`cseq` set): a UA keeps one
/// Call-ID for all its REGISTER refreshes (RFC 3261 §10.2), which would
/// otherwise grow one trace for days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceKey<'a> {
    pub call_id: &'a str,
    pub cseq: Option<u32>,
}

impl TraceKey<'_> {
    /// The key of a request with `method` (upper case).
    pub fn of<'a>(call_id: &'a str, method: &str, cseq: u32) -> TraceKey<'a> {
        let of_call = matches!(
            method,
            "INVITE" | "ACK" | "CANCEL" | "BYE" | "PRACK" | "UPDATE" | "INFO" | "REFER"
        );
        TraceKey {
            call_id,
            cseq: (!of_call).then_some(cseq),
        }
    }

    pub fn trace_id(&self) -> u128 {
        let mut hasher = xxhash_rust::xxh3::Xxh3::with_seed(TRACE_ID_SEED);
        hasher.update(self.call_id.as_bytes());
        if let Some(cseq) = self.cseq {
            hasher.update(&[0]);
            hasher.update(&cseq.to_le_bytes());
        }
        hasher.digest128().max(1)
    }
}

/// The trace id of a call's requests that came with no `traceparent`.
pub fn trace_id_of_call(call_id: &str) -> u128 {
    TraceKey {
        call_id,
        cseq: None,
    }
    .trace_id()
}

/// A W3C `traceparent`: the trace, the span it continues (0 for none) and
/// whether the caller records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    pub parent_span_id: u64,
    pub sampled: bool,
}

impl TraceParent {
    /// Reads `version-traceid-parentid-flags` (W3C Trace Context §3.2).
    /// Version 00 has exactly these four fields; a later version may add
    /// more after them. An all-zero id, version ff or bad hex is invalid.
    pub fn parse(value: &str) -> Option<TraceParent> {
        let value = value.trim();
        let mut fields = value.split('-');
        let version = fields.next()?;
        let trace_id = fields.next()?;
        let parent = fields.next()?;
        let flags = fields.next()?;
        let lower_hex = |field: &str, len: usize| {
            field.len() == len
                && field
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        if !lower_hex(version, 2) || version == "ff" || (version == "00" && fields.next().is_some())
        {
            return None;
        }
        if !lower_hex(trace_id, 32) || !lower_hex(parent, 16) || !lower_hex(flags, 2) {
            return None;
        }
        let trace_id = u128::from_str_radix(trace_id, 16).ok()?;
        let parent_span_id = u64::from_str_radix(parent, 16).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        (trace_id != 0 && parent_span_id != 0).then_some(TraceParent {
            trace_id,
            parent_span_id,
            sampled: flags & 1 == 1,
        })
    }
}

/// The `traceparent` value naming `span_id` of a sampled `trace_id`.
pub fn traceparent(trace_id: u128, span_id: u64) -> String {
    let mut value = String::with_capacity(55);
    let _ = write!(value, "00-{trace_id:032x}-{span_id:016x}-01");
    value
}

/// A traced call's trace id, carried with its requests (script runs,
/// failover events) for their log lines: boxed, so that the untraced
/// majority carries one word and the messages that move every request
/// stay small.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceId(Box<u128>);

impl TraceId {
    pub fn new(id: u128) -> Self {
        TraceId(Box::new(id))
    }

    pub fn get(&self) -> u128 {
        *self.0
    }

    pub fn hex(&self) -> String {
        trace_id_hex(self.get())
    }
}

/// A trace id as OTLP and the logs write it: 32 lowercase hex digits.
pub fn trace_id_hex(trace_id: u128) -> String {
    format!("{trace_id:032x}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// Our side of a request we received.
    Server,
    /// A request we sent (a branch).
    Client,
    /// Work inside this node (the script, a registrar lookup).
    Internal,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Attribute {
    Text(String),
    Number(i64),
}

impl From<&str> for Attribute {
    fn from(text: &str) -> Self {
        Attribute::Text(text.to_string())
    }
}

impl From<String> for Attribute {
    fn from(text: String) -> Self {
        Attribute::Text(text)
    }
}

impl From<i64> for Attribute {
    fn from(number: i64) -> Self {
        Attribute::Number(number)
    }
}

/// One finished span, on the engine's clock.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRecord {
    pub span_id: u64,
    /// 0 for a root span.
    pub parent_span_id: u64,
    pub name: Cow<'static, str>,
    pub kind: SpanKind,
    pub start: Instant,
    pub end: Instant,
    pub attributes: Vec<(&'static str, Attribute)>,
    /// Set when the span failed, with why.
    pub error: Option<String>,
}

impl SpanRecord {
    pub fn new(
        span_id: u64,
        parent_span_id: u64,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        start: Instant,
    ) -> Self {
        SpanRecord {
            span_id,
            parent_span_id,
            name: name.into(),
            kind,
            start,
            end: start,
            attributes: Vec::new(),
            error: None,
        }
    }

    pub fn set(&mut self, key: &'static str, value: impl Into<Attribute>) {
        let value = value.into();
        match self.attributes.iter_mut().find(|(k, _)| *k == key) {
            Some((_, old)) => *old = value,
            None => self.attributes.push((key, value)),
        }
    }

    pub fn attribute(&self, key: &str) -> Option<&Attribute> {
        self.attributes
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }
}

/// What one server transaction leaves: its spans, in one trace.
#[derive(Debug, Clone, PartialEq)]
pub struct CallTrace {
    pub trace_id: u128,
    pub spans: Vec<SpanRecord>,
}

/// A registrar lookup a script run made, for its span.
#[derive(Debug, Clone, PartialEq)]
pub struct LookupRecord {
    pub aor: String,
    pub contacts: usize,
    /// "memory", or "redis" when the bindings were read from Redis first.
    pub source: &'static str,
    pub start: Instant,
    pub end: Instant,
}

/// A new span id: random (W3C Trace Context §3.2.2.4 asks for ids no one
/// can guess from the ones they saw), never 0.
pub fn fresh_span_id() -> u64 {
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_is_read() {
        let parent =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(parent.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(parent.parent_span_id, 0x00f067aa0ba902b7);
        assert!(parent.sampled);
        let unsampled =
            TraceParent::parse(" 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00 ")
                .unwrap();
        assert!(!unsampled.sampled);
        // A later version may carry more fields after the four it shares.
        assert!(
            TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what")
                .is_some()
        );
    }

    #[test]
    fn an_invalid_traceparent_is_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_written_traceparent_reads_back() {
        let value = traceparent(0xabc, 0x12);
        assert_eq!(
            value,
            "00-00000000000000000000000000000abc-0000000000000012-01"
        );
        let parent = TraceParent::parse(&value).unwrap();
        assert_eq!(
            (parent.trace_id, parent.parent_span_id, parent.sampled),
            (0xabc, 0x12, true)
        );
    }

    #[test]
    fn sampling_is_decided_once_per_call_id() {
        let sampler = Sampler::new(0.3);
        let traced = (0..10_000)
            .filter(|n| {
                sampler
                    .trace_of(TraceKey::of(&format!("call-{n}@host"), "INVITE", 1), None)
                    .is_some()
            })
            .count();
        assert!((2_700..3_300).contains(&traced), "{traced} of 10000 at 0.3");
        for n in 0..100 {
            let call_id = format!("call-{n}@host");
            let first = sampler.trace_of(TraceKey::of(&call_id, "INVITE", 1), None);
            assert_eq!(
                first,
                sampler.trace_of(TraceKey::of(&call_id, "BYE", 2), None),
                "the same call decides the same"
            );
            if let Some(trace) = first {
                assert_eq!(trace.trace_id, trace_id_of_call(&call_id));
                assert_eq!(trace.parent_span_id, 0);
            }
        }
        assert!(Sampler::new(0.0)
            .trace_of(TraceKey::of("a", "INVITE", 1), None)
            .is_none());
        assert!(Sampler::new(1.0)
            .trace_of(TraceKey::of("a", "INVITE", 1), None)
            .is_some());
    }

    #[test]
    fn a_callers_traceparent_decides_whatever_the_ratio() {
        let sampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let trace = Sampler::new(0.0)
            .trace_of(TraceKey::of("a", "INVITE", 1), Some(sampled))
            .unwrap();
        assert_eq!(trace.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(trace.parent_span_id, 0x00f067aa0ba902b7);
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(Sampler::new(1.0)
            .trace_of(TraceKey::of("a", "INVITE", 1), Some(unsampled))
            .is_none());
        // An invalid one is as if there were none: the ratio decides.
        let trace = Sampler::new(1.0)
            .trace_of(TraceKey::of("a", "INVITE", 1), Some("junk"))
            .unwrap();
        assert_eq!(trace.trace_id, trace_id_of_call("a"));
    }

    #[test]
    fn span_ids_are_unique_and_never_zero() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let id = fresh_span_id();
            assert_ne!(id, 0);
            assert!(seen.insert(id));
        }
    }

    #[test]
    fn a_calls_requests_share_a_trace_and_other_requests_have_their_own() {
        let invite = TraceKey::of("c1@h", "INVITE", 1);
        let bye = TraceKey::of("c1@h", "BYE", 2);
        assert_eq!(invite.trace_id(), bye.trace_id());
        assert_eq!(invite.trace_id(), trace_id_of_call("c1@h"));
        let register = TraceKey::of("r1@h", "REGISTER", 1);
        let refresh = TraceKey::of("r1@h", "REGISTER", 2);
        assert_ne!(register.trace_id(), refresh.trace_id());
        // Sampling is still the Call-ID's: every refresh decides the same.
        let sampler = Sampler::new(0.5);
        for n in 0..50 {
            let call_id = format!("r{n}@h");
            let first = sampler
                .trace_of(TraceKey::of(&call_id, "REGISTER", 1), None)
                .is_some();
            let second = sampler
                .trace_of(TraceKey::of(&call_id, "REGISTER", 2), None)
                .is_some();
            assert_eq!(first, second);
        }
    }
}
