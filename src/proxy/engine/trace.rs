//! The spans of a traced server transaction (see [`crate::telemetry`]):
//! the transaction itself, each script run, the registrar lookups a run
//! made, and each branch, with its outcome and why it failed over. Each
//! branch's copy of the request carries a `traceparent` naming its span.
//!
//! With tracing off (`EngineConfig::tracing` None) every hook returns at
//! its first line; a call not sampled has no [`TxTrace`].

use std::borrow::Cow;

use super::*;
use crate::telemetry::{
    fresh_span_id, traceparent, CallTrace, FollowTraceparent, SpanKind, SpanRecord, TraceKey,
};

/// A traced server transaction's spans so far.
pub struct TxTrace {
    pub trace_id: u128,
    server: SpanRecord,
    /// The script run under way: when it was handed out, its handler, and
    /// its span's id.
    script: Option<(Instant, &'static str, u64)>,
    branches: Vec<BranchSpan>,
    /// Ended spans other than the server's and the branches'.
    done: Vec<SpanRecord>,
    final_sent: bool,
}

struct BranchSpan {
    token: u64,
    span: SpanRecord,
    open: bool,
}

impl TxTrace {
    fn open_branches(&self) -> usize {
        self.branches.iter().filter(|b| b.open).count()
    }

    fn branch(&mut self, token: u64) -> Option<&mut BranchSpan> {
        self.branches.iter_mut().find(|b| b.token == token)
    }

    /// Every span, those still open ended at `now`.
    fn finish(mut self, now: Instant) -> CallTrace {
        if let Some((start, handler, span_id)) = self.script.take() {
            // A timed-out run has its span (a failed decision): this one's
            // request was answered first, as a CANCEL's 487 is.
            let mut span = script_span(self.server.span_id, start, handler, span_id);
            span.end = now;
            span.set("script.decision", "none (the request was answered first)");
            self.done.push(span);
        }
        if !self.final_sent {
            self.server.end = now;
            self.server.error = Some("no final response sent".into());
        }
        let mut spans = Vec::with_capacity(2 + self.done.len() + self.branches.len());
        spans.push(self.server);
        spans.append(&mut self.done);
        for mut branch in self.branches {
            if branch.open {
                branch.span.end = now;
                branch.span.set("sip.outcome", "no final response");
            }
            spans.push(branch.span);
        }
        CallTrace {
            trace_id: self.trace_id,
            spans,
        }
    }
}

fn script_span(parent: u64, start: Instant, handler: &'static str, span_id: u64) -> SpanRecord {
    let mut span = SpanRecord::new(span_id, parent, "script", SpanKind::Internal, start);
    span.set("script.handler", handler);
    span
}

/// What a decision amounts to, for its span.
fn decision_summary(decision: &Decision) -> String {
    if decision.failed {
        return "error".into();
    }
    match &decision.action {
        None => "none".into(),
        Some(Action::Relay { uri: Some(uri) }) => format!("relay {uri}"),
        Some(Action::Relay { uri: None }) => "relay".into(),
        Some(Action::Reply { code, .. }) => format!("reply {code}"),
        Some(Action::Fork { targets }) => format!("fork {}", targets.len()),
    }
}

impl<F: Clone> Engine<F> {
    /// The trace of a new server transaction, when tracing is on and the
    /// call is sampled (its `traceparent`, else its Call-ID, decides).
    pub(super) fn begin_trace(
        &mut self,
        now: Instant,
        msg: &Message,
        source: SocketAddr,
        protocol: Protocol,
    ) -> Option<Box<TxTrace>> {
        let settings = self.config.tracing.as_ref()?;
        let call_id = msg.call_id().unwrap_or("");
        let follow = match settings.follow {
            FollowTraceparent::Any => true,
            FollowTraceparent::Trusted => self.config.local.is_trusted(source.ip()),
            FollowTraceparent::Never => false,
        };
        let incoming = if follow { only_traceparent(msg) } else { None };
        let cseq = msg.cseq().map_or(0, |(number, _)| number);
        let key = TraceKey::of(call_id, msg.method_str(), cseq);
        let parent = settings.sampler.trace_of(key, incoming)?;
        let name = match msg.method().and_then(|m| m.as_str()) {
            Some(method) => Cow::Borrowed(method),
            None => Cow::Owned(msg.method_str().to_string()),
        };
        let span_id = fresh_span_id();
        let mut server =
            SpanRecord::new(span_id, parent.parent_span_id, name, SpanKind::Server, now);
        server.set("sip.method", msg.method_str());
        server.set("sip.call_id", call_id);
        server.set("client.address", source.ip().to_string());
        server.set("client.port", i64::from(source.port()));
        server.set("network.transport", protocol.as_str());
        Some(Box::new(TxTrace {
            trace_id: parent.trace_id,
            server,
            script: None,
            branches: Vec::new(),
            done: Vec::new(),
            final_sent: false,
        }))
    }

    /// Where the server transaction of `slot` keeps its trace, live or
    /// ended.
    fn trace_slot(&mut self, slot: u64) -> Option<&mut Option<Box<TxTrace>>> {
        match self.servers.get_mut(&slot) {
            Some(tx) => Some(&mut tx.trace),
            None => Some(&mut self.ended_servers.get_mut(&slot)?.trace),
        }
    }

    fn trace_mut(&mut self, slot: u64) -> Option<&mut TxTrace> {
        self.config.tracing.as_ref()?;
        self.trace_slot(slot)?.as_deref_mut()
    }

    /// The trace id of a server transaction, for the log lines about it.
    pub(super) fn trace_id_of(&self, slot: Option<u64>) -> Option<crate::telemetry::TraceId> {
        self.config.tracing.as_ref()?;
        let slot = slot?;
        let trace = match self.servers.get(&slot) {
            Some(tx) => tx.trace.as_ref(),
            None => self.ended_servers.get(&slot)?.trace.as_ref(),
        };
        Some(crate::telemetry::TraceId::new(trace?.trace_id))
    }

    /// The script's `handler` was handed the request of `slot`.
    pub(super) fn trace_script_started(
        &mut self,
        slot: Option<u64>,
        now: Instant,
        handler: &'static str,
    ) {
        if self.config.tracing.is_none() {
            return;
        }
        let span_id = fresh_span_id();
        if let Some(trace) = slot.and_then(|slot| self.trace_mut(slot)) {
            trace.script = Some((now, handler, span_id));
        }
    }

    /// The script decided for `slot`: its span ends, with a child span for
    /// each registrar lookup it made.
    pub(super) fn trace_decision(&mut self, slot: Option<u64>, now: Instant, decision: &Decision) {
        if self.config.tracing.is_none() {
            return;
        }
        let Some(slot) = slot else { return };
        let lookup_ids: Vec<u64> = decision
            .registrar_lookups
            .iter()
            .map(|_| fresh_span_id())
            .collect();
        let Some(trace) = self.trace_mut(slot) else {
            return;
        };
        // A decision given back after a DNS lookup is the same run.
        let Some((start, handler, span_id)) = trace.script.take() else {
            return;
        };
        let mut span = script_span(trace.server.span_id, start, handler, span_id);
        span.end = now;
        span.set("script.decision", decision_summary(decision));
        if decision.failed {
            span.error = Some("the handler raised or ran past script.timeout_ms".into());
        }
        trace.done.push(span);
        for (lookup, id) in decision.registrar_lookups.iter().zip(lookup_ids) {
            let mut span = SpanRecord::new(
                id,
                span_id,
                "registrar.lookup",
                SpanKind::Internal,
                lookup.start,
            );
            span.end = lookup.end;
            span.set("registrar.aor", lookup.aor.as_str());
            span.set("registrar.contacts", lookup.contacts as i64);
            span.set("registrar.source", lookup.source);
            trace.done.push(span);
        }
    }

    /// A branch of `slot` opens with `token` toward `hop`: its span, and
    /// the `traceparent` its request carries.
    pub(super) fn trace_branch_opened(
        &mut self,
        slot: u64,
        token: u64,
        now: Instant,
        hop: &Hop,
        target: Option<&str>,
    ) -> Option<String> {
        self.config.tracing.as_ref()?;
        let span_id = fresh_span_id();
        let trace = self.trace_mut(slot)?;
        let attempt = trace.branches.len() as i64 + 1;
        let mut span = SpanRecord::new(
            span_id,
            trace.server.span_id,
            "sip.branch",
            SpanKind::Client,
            now,
        );
        if let Some(target) = target {
            span.set("sip.destination", target);
        }
        span.set("server.address", hop.addr.ip().to_string());
        span.set("server.port", i64::from(hop.addr.port()));
        span.set("network.transport", hop.protocol.as_str());
        span.set("sip.attempt", attempt);
        trace.branches.push(BranchSpan {
            token,
            span,
            open: true,
        });
        Some(traceparent(trace.trace_id, span_id))
    }

    /// The branch of `token` left over `protocol` after all (a request too
    /// large for UDP goes over TCP).
    pub(super) fn trace_branch_transport(&mut self, slot: u64, token: u64, protocol: Protocol) {
        if let Some(branch) = self.trace_mut(slot).and_then(|t| t.branch(token)) {
            branch.span.set("network.transport", protocol.as_str());
        }
    }

    /// The branch of `token` goes to a gateway group's destination.
    pub(super) fn trace_branch_gateway(&mut self, slot: u64, token: u64, group: &str, uri: &str) {
        if let Some(branch) = self.trace_mut(slot).and_then(|t| t.branch(token)) {
            branch.span.set("sip.destination", uri);
            branch.span.set("gateway.group", group);
        }
    }

    /// The branch of `token` ended: with a final response (`code`), or
    /// without one (`why`).
    pub(super) fn trace_branch_ended(
        &mut self,
        slot: u64,
        token: u64,
        now: Instant,
        code: Option<u16>,
        why: &str,
    ) {
        let Some(trace) = self.trace_mut(slot) else {
            return;
        };
        let Some(branch) = trace.branch(token).filter(|b| b.open) else {
            return;
        };
        branch.open = false;
        branch.span.end = now;
        match code {
            Some(code) => {
                branch.span.set("sip.status_code", i64::from(code));
                branch.span.set("sip.outcome", format!("answered {code}"));
                if code >= 500 {
                    branch.span.error = Some(format!("answered {code}"));
                }
            }
            None => {
                branch.span.set("sip.outcome", why);
                branch.span.error = Some(why.to_string());
            }
        }
        self.flush_trace_if_done(slot);
    }

    /// The branch of `token` to a gateway destination failed; `next` is
    /// where the request failed over to, if it did (the branch then ends).
    pub(super) fn trace_branch_failed(
        &mut self,
        slot: u64,
        token: u64,
        now: Instant,
        failure: RelayFailure,
        next: Option<&str>,
    ) {
        let Some(branch) = self.trace_mut(slot).and_then(|t| t.branch(token)) else {
            return;
        };
        let why = failure.to_string();
        branch.span.set("sip.failure", why.as_str());
        if let Some(next) = next {
            // Given up for `next`: whatever it answers later is not the caller's.
            branch.span.set("sip.failover_reason", why.as_str());
            branch.span.set("sip.failover_to", next);
            self.trace_branch_ended(slot, token, now, None, &why);
        }
    }

    /// The final response `code` went upstream.
    pub(super) fn trace_final(&mut self, slot: u64, now: Instant, code: u16) {
        let Some(trace) = self.trace_mut(slot) else {
            return;
        };
        trace.final_sent = true;
        trace.server.end = now;
        trace.server.set("sip.status_code", i64::from(code));
        if code >= 500 {
            trace.server.error = Some(format!("answered {code}"));
        }
        self.flush_trace_if_done(slot);
    }

    /// The script dropped the request (no action on a non-INVITE): its
    /// transaction only absorbs retransmissions now, so its trace goes.
    pub(super) fn trace_dropped(&mut self, slot: u64, now: Instant) {
        let Some(trace) = self.trace_mut(slot) else {
            return;
        };
        trace.final_sent = true;
        trace.server.end = now;
        trace.server.set("sip.outcome", "dropped by the script");
        self.flush_trace_if_done(slot);
    }

    /// Once the final response is sent and no branch is open, the trace
    /// goes out.
    fn flush_trace_if_done(&mut self, slot: u64) {
        let Some(trace) = self.trace_slot(slot) else {
            return;
        };
        let done = trace
            .as_ref()
            .is_some_and(|t| t.final_sent && t.open_branches() == 0);
        if done {
            let trace = trace.take().expect("checked above");
            let end = trace.server.end;
            self.out
                .push_back(Output::Trace(Box::new(trace.finish(end))));
        }
    }

    /// The server transaction ends: what its trace has not sent yet goes,
    /// open spans ended now.
    pub(super) fn end_trace(&mut self, trace: Option<Box<TxTrace>>, now: Instant) {
        if let Some(trace) = trace {
            self.out
                .push_back(Output::Trace(Box::new(trace.finish(now))));
        }
    }
}

/// The request's `traceparent` when it has exactly one: W3C Trace Context
/// §3.2 treats two (which a sender could put on separate lines) as
/// invalid, and the trace starts afresh.
fn only_traceparent(msg: &Message) -> Option<&str> {
    let mut values = msg
        .headers()
        .iter()
        .filter(|h| h.name_str(msg).eq_ignore_ascii_case("traceparent"))
        .map(|h| h.value(msg));
    match (values.next(), values.next()) {
        (Some(value), None) => Some(value),
        _ => None,
    }
}
