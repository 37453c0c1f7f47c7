//! Traces of calls (`tracing.otlp`), on virtual time: which spans a server
//! transaction leaves, what they say, and the `traceparent` each branch
//! carries to its next hop.

use super::failover::gateway;
use super::*;
use crate::proxy::decision::FailoverPolicy;
use crate::telemetry::{
    trace_id_of_call, Attribute, CallTrace, FollowTraceparent, Sampler, SpanKind, TraceId,
    TraceKey, TraceParent, TraceSettings,
};

const CALLER_TRACE: u128 = 0x4bf92f3577b34da6a3ce929d0e0e4736;
const CALLER_SPAN: u64 = 0x00f067aa0ba902b7;

fn caller_traceparent(flags: &str) -> String {
    format!("traceparent: 00-{CALLER_TRACE:032x}-{CALLER_SPAN:016x}-{flags}\n")
}

fn traced_invite(call_id: &str, flags: &str) -> Message {
    request(
        "INVITE",
        "sip:bob@example.com",
        &format!("z9hG4bK-{call_id}"),
        call_id,
        &caller_traceparent(flags),
    )
}

impl Harness {
    /// Every call traced (`tracing.otlp.sample: 1`), any caller's
    /// traceparent followed.
    fn traced() -> Harness {
        Harness::traced_following(FollowTraceparent::Any)
    }

    fn traced_following(follow: FollowTraceparent) -> Harness {
        let mut h = Harness::new();
        h.engine.config.tracing = Some(TraceSettings {
            sampler: Sampler::new(1.0),
            follow,
        });
        h
    }

    fn traces(&mut self) -> Vec<CallTrace> {
        let (mine, rest): (Vec<_>, Vec<_>) = self
            .take()
            .into_iter()
            .partition(|o| matches!(o, Output::Trace(_)));
        self.out = rest;
        mine.into_iter()
            .filter_map(|o| match o {
                Output::Trace(trace) => Some(*trace),
                _ => None,
            })
            .collect()
    }
}

fn text<'a>(span: &'a crate::telemetry::SpanRecord, key: &str) -> &'a str {
    match span.attribute(key) {
        Some(Attribute::Text(text)) => text,
        other => panic!("{key} is {other:?} in {span:?}"),
    }
}

fn number(span: &crate::telemetry::SpanRecord, key: &str) -> i64 {
    match span.attribute(key) {
        Some(Attribute::Number(n)) => *n,
        other => panic!("{key} is {other:?} in {span:?}"),
    }
}

/// The `traceparent` a relayed request carries (there must be one only).
fn traceparent_of(msg: &Message) -> TraceParent {
    let values: Vec<&str> = msg
        .headers()
        .iter()
        .filter(|h| h.name_str(msg).eq_ignore_ascii_case("traceparent"))
        .map(|h| h.value(msg))
        .collect();
    assert_eq!(values.len(), 1, "one traceparent: {values:?}");
    TraceParent::parse(values[0]).expect("a valid traceparent")
}

#[test]
fn a_call_that_fails_over_leaves_one_trace_under_the_callers_span() {
    let mut h = Harness::traced();
    h.relay_to_gateway(
        traced_invite("fo-trace", "01"),
        gateway(&[0, 1], FailoverPolicy::default()),
    );
    let first = h.one_sent_to(BACKEND1);
    h.respond(answer(&first, 503, &[]), BACKEND1);
    let second = h.one_sent_to(BACKEND2);
    assert!(
        h.traces().is_empty(),
        "nothing goes before the final response"
    );
    h.respond(answer(&second, 200, &[]), BACKEND2);

    let traces = h.traces();
    assert_eq!(traces.len(), 1, "{traces:?}");
    let trace = &traces[0];
    assert_eq!(trace.trace_id, CALLER_TRACE);
    let server = &trace.spans[0];
    assert_eq!(
        (server.kind, server.name.as_ref()),
        (SpanKind::Server, "INVITE")
    );
    assert_eq!(
        server.parent_span_id, CALLER_SPAN,
        "continues the caller's span"
    );
    assert_eq!(text(server, "sip.call_id"), "fo-trace");
    assert_eq!(number(server, "sip.status_code"), 200);
    assert_eq!(text(server, "client.address"), "198.51.100.10");

    let script: Vec<_> = trace.spans.iter().filter(|s| s.name == "script").collect();
    assert_eq!(script.len(), 1);
    assert_eq!(script[0].parent_span_id, server.span_id);
    assert_eq!(text(script[0], "script.handler"), "proxy.on_request");
    assert_eq!(
        text(script[0], "script.decision"),
        "relay sip:backend1.example"
    );

    let branches: Vec<_> = trace
        .spans
        .iter()
        .filter(|s| s.name == "sip.branch")
        .collect();
    assert_eq!(branches.len(), 2);
    for (attempt, branch) in branches.iter().enumerate() {
        assert_eq!(branch.kind, SpanKind::Client);
        assert_eq!(branch.parent_span_id, server.span_id);
        assert_eq!(number(branch, "sip.attempt"), attempt as i64 + 1);
        assert_eq!(text(branch, "gateway.group"), "pool");
    }
    assert_eq!(text(branches[0], "sip.destination"), "sip:backend1.example");
    assert_eq!(number(branches[0], "sip.status_code"), 503);
    assert_eq!(text(branches[0], "sip.failover_reason"), "status 503");
    assert_eq!(text(branches[0], "sip.failover_to"), "sip:backend2.example");
    assert_eq!(text(branches[1], "sip.destination"), "sip:backend2.example");
    assert_eq!(number(branches[1], "sip.status_code"), 200);
    assert_eq!(branches[1].attribute("sip.failover_reason"), None);

    // Each branch's INVITE names its own span in the caller's trace.
    for (sent, branch) in [(&first, branches[0]), (&second, branches[1])] {
        let parent = traceparent_of(sent);
        assert_eq!(
            (parent.trace_id, parent.parent_span_id, parent.sampled),
            (CALLER_TRACE, branch.span_id, true)
        );
    }
}

#[test]
fn a_silent_branch_ends_with_its_failover_reason() {
    let mut h = Harness::traced();
    let policy = FailoverPolicy {
        no_response: Duration::from_millis(300),
        ..FailoverPolicy::default()
    };
    h.relay_to_gateway(traced_invite("fo-silent", "01"), gateway(&[0, 1], policy));
    h.one_sent_to(BACKEND1);
    h.advance(Duration::from_millis(350));
    let second = h.one_sent_to(BACKEND2);
    h.respond(answer(&second, 200, &[]), BACKEND2);
    let traces = h.traces();
    assert_eq!(traces.len(), 1, "{traces:?}");
    let branches: Vec<_> = traces[0]
        .spans
        .iter()
        .filter(|s| s.name == "sip.branch")
        .collect();
    assert_eq!(text(branches[0], "sip.failover_reason"), "no response");
    assert_eq!(text(branches[0], "sip.outcome"), "no response");
    assert!(branches[0].error.is_some());
    assert_eq!(
        branches[0].end - branches[0].start,
        Duration::from_millis(350),
        "ended when given up"
    );
    assert_eq!(number(branches[1], "sip.status_code"), 200);
    assert_eq!(number(&traces[0].spans[0], "sip.status_code"), 200);
}

#[test]
fn with_tracing_off_nothing_is_recorded_and_the_callers_traceparent_goes_on() {
    let mut h = Harness::new();
    let run = h.relay(traced_invite("off", "01"), Some("sip:backend1.example"));
    assert_eq!(run.trace_id.as_ref().map(TraceId::get), None);
    let sent = h.sent_to_after_relay();
    assert_eq!(
        traceparent_of(&sent).parent_span_id,
        CALLER_SPAN,
        "untouched"
    );
    h.respond(answer(&sent, 200, &[]), BACKEND1);
    h.advance(Duration::from_secs(40));
    assert!(h.traces().is_empty());
}

#[test]
fn a_caller_that_does_not_sample_is_not_traced() {
    let mut h = Harness::traced();
    h.relay(
        traced_invite("unsampled", "00"),
        Some("sip:backend1.example"),
    );
    let sent = h.sent_to_after_relay();
    let parent = traceparent_of(&sent);
    assert_eq!(
        (parent.parent_span_id, parent.sampled),
        (CALLER_SPAN, false),
        "passed on as it came"
    );
    h.respond(answer(&sent, 200, &[]), BACKEND1);
    h.advance(Duration::from_secs(40));
    assert!(h.traces().is_empty());
}

#[test]
fn a_call_without_traceparent_is_one_trace_by_its_call_id() {
    let mut h = Harness::traced();
    let run = h.relay(invite("by-call-id"), Some("sip:backend1.example"));
    assert_eq!(
        run.trace_id.as_ref().map(TraceId::get),
        Some(trace_id_of_call("by-call-id"))
    );
    let sent = h.sent_to_after_relay();
    assert_eq!(
        traceparent_of(&sent).trace_id,
        trace_id_of_call("by-call-id")
    );
    h.respond(answer(&sent, 200, &[]), BACKEND1);
    let bye = request(
        "BYE",
        "sip:bob@example.com",
        "z9hG4bK-bye",
        "by-call-id",
        "",
    );
    h.relay(bye, Some("sip:backend1.example"));
    let sent = h.sent_to_after_relay();
    h.respond(answer(&sent, 200, &[]), BACKEND1);
    let traces = h.traces();
    assert_eq!(traces.len(), 2, "INVITE and BYE");
    assert!(traces
        .iter()
        .all(|t| t.trace_id == trace_id_of_call("by-call-id")));
    assert_eq!(traces[1].spans[0].name, "BYE");
    assert_eq!(traces[1].spans[0].parent_span_id, 0, "a root span");
}

#[test]
fn a_reply_from_the_script_and_its_lookups_are_spans() {
    let mut h = Harness::traced();
    let run = h
        .receive(traced_invite("reply", "01"), UAC, Protocol::Udp)
        .expect("script runs");
    h.advance(Duration::from_millis(3));
    let lookup = crate::telemetry::LookupRecord {
        aor: "sip:bob@example.com".into(),
        contacts: 0,
        source: "memory",
        start: h.now - Duration::from_millis(2),
        end: h.now - Duration::from_millis(1),
    };
    let decision = Decision {
        registrar_lookups: vec![lookup],
        ..script_decision(
            &run,
            Action::Reply {
                code: 404,
                reason: None,
                headers: Vec::new(),
            },
        )
    };
    h.decide(&run, decision);
    let traces = h.traces();
    assert_eq!(traces.len(), 1);
    let spans = &traces[0].spans;
    assert_eq!(number(&spans[0], "sip.status_code"), 404);
    let script = spans
        .iter()
        .find(|s| s.name == "script")
        .expect("script span");
    assert_eq!(text(script, "script.decision"), "reply 404");
    assert_eq!(script.end - script.start, Duration::from_millis(3));
    let lookup = spans
        .iter()
        .find(|s| s.name == "registrar.lookup")
        .expect("lookup span");
    assert_eq!(lookup.parent_span_id, script.span_id);
    assert_eq!(text(lookup, "registrar.aor"), "sip:bob@example.com");
    assert_eq!(number(lookup, "registrar.contacts"), 0);
}

#[test]
fn a_script_that_times_out_leaves_an_error_span_and_a_500() {
    let mut h = Harness::traced();
    let run = h
        .receive(traced_invite("slow", "01"), UAC, Protocol::Udp)
        .expect("script runs");
    h.advance(Duration::from_millis(200));
    h.engine
        .script_timed_out(h.now, run.ticket, Duration::from_millis(200));
    h.collect();
    let traces = h.traces();
    assert_eq!(traces.len(), 1);
    let spans = &traces[0].spans;
    assert_eq!(number(&spans[0], "sip.status_code"), 500);
    assert!(spans[0].error.is_some());
    let script = spans
        .iter()
        .find(|s| s.name == "script")
        .expect("script span");
    assert_eq!(text(script, "script.decision"), "error");
    assert!(script.error.is_some());
}

#[test]
fn a_fork_waits_for_its_last_branch_before_the_trace_goes() {
    let mut h = Harness::traced();
    let (first, second) = h.fork_to_both(traced_invite("fork-trace", "01"), Protocol::Udp);
    h.respond(answer(&second[0], 180, &[]), BACKEND2);
    h.respond(answer(&first[0], 200, &[]), BACKEND1);
    assert!(h.traces().is_empty(), "the other branch is still open");
    // The 2xx CANCELs the other branch; its 487 ends it.
    let cancels = h.sent_to(BACKEND2);
    assert!(
        cancels.iter().any(|m| m.method() == Some(Method::Cancel)),
        "{cancels:?}"
    );
    h.respond(answer(&second[0], 487, &[]), BACKEND2);
    let traces = h.traces();
    assert_eq!(traces.len(), 1);
    let branches: Vec<_> = traces[0]
        .spans
        .iter()
        .filter(|s| s.name == "sip.branch")
        .collect();
    assert_eq!(branches.len(), 2);
    assert_eq!(number(branches[0], "sip.status_code"), 200);
    assert_eq!(number(branches[1], "sip.status_code"), 487);
    assert_ne!(
        traceparent_of(&first[0]).parent_span_id,
        traceparent_of(&second[0]).parent_span_id
    );
}

#[test]
fn an_untrusted_callers_traceparent_is_not_followed_by_default() {
    let mut h = Harness::traced_following(FollowTraceparent::Trusted);
    let run = h.relay(
        traced_invite("untrusted", "01"),
        Some("sip:backend1.example"),
    );
    assert_eq!(
        run.trace_id.as_ref().map(TraceId::get),
        Some(trace_id_of_call("untrusted")),
        "a trace of our own"
    );
    let sent = h.sent_to_after_relay();
    let parent = traceparent_of(&sent);
    assert_eq!(parent.trace_id, trace_id_of_call("untrusted"));
    assert_ne!(
        parent.parent_span_id, CALLER_SPAN,
        "the caller's replaced, not added to"
    );

    // From a trusted peer it is followed.
    let mut h = Harness::traced_following(FollowTraceparent::Trusted);
    let local = LocalIdentity::new(&["proxy.example".to_string()], &one_address());
    h.engine.config.local = Arc::new(local.with_trusted(vec!["198.51.100.0/24".parse().unwrap()]));
    let run = h.relay(traced_invite("trusted", "01"), Some("sip:backend1.example"));
    assert_eq!(run.trace_id.as_ref().map(TraceId::get), Some(CALLER_TRACE));
    // With `never`, not even then.
    let mut h = Harness::traced_following(FollowTraceparent::Never);
    let run = h.relay(traced_invite("never", "01"), Some("sip:backend1.example"));
    assert_eq!(
        run.trace_id.as_ref().map(TraceId::get),
        Some(trace_id_of_call("never"))
    );
}

#[test]
fn two_traceparent_lines_start_a_new_trace_and_one_leaves() {
    let mut h = Harness::traced();
    let second = "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\n";
    let msg = request(
        "INVITE",
        "sip:bob@example.com",
        "z9hG4bK-dup",
        "dup",
        &format!("{}{second}", caller_traceparent("01")),
    );
    let run = h.relay(msg, Some("sip:backend1.example"));
    assert_eq!(
        run.trace_id.as_ref().map(TraceId::get),
        Some(trace_id_of_call("dup"))
    );
    let sent = h.sent_to_after_relay();
    assert_eq!(traceparent_of(&sent).trace_id, trace_id_of_call("dup"));
}

/// The request sent to backend 1 when the script relays `call_id`'s
/// INVITE there having set a traceparent of the caller's trace (header
/// name as `name` writes it).
fn relayed_with_script_traceparent(h: &mut Harness, call_id: &str, name: &str) -> Message {
    let run = h
        .receive(invite(call_id), UAC, Protocol::Udp)
        .expect("script runs");
    let relay = Action::Relay {
        uri: Some("sip:backend1.example".into()),
    };
    let decision = Decision {
        header_edits: vec![(
            name.to_string(),
            Some(format!("00-{CALLER_TRACE:032x}-{CALLER_SPAN:016x}-01")),
        )],
        ..script_decision(&run, relay)
    };
    h.decide(&run, decision);
    h.sent_to_after_relay()
}

#[test]
fn a_traceparent_the_script_set_gives_way_to_the_branchs() {
    let mut h = Harness::traced();
    let sent = relayed_with_script_traceparent(&mut h, "script-tp", "TraceParent");
    assert_eq!(
        traceparent_of(&sent).trace_id,
        trace_id_of_call("script-tp")
    );
    // Untraced, the script's goes as it set it.
    let mut h = Harness::new();
    let sent = relayed_with_script_traceparent(&mut h, "script-tp2", "traceparent");
    assert_eq!(traceparent_of(&sent).parent_span_id, CALLER_SPAN);
}

#[test]
fn register_refreshes_are_traces_of_their_own() {
    let mut h = Harness::traced();
    let mut trace_ids = Vec::new();
    for cseq in 1..=2 {
        let text = format!(
            "REGISTER sip:example.com SIP/2.0\n\
             Via: SIP/2.0/UDP 198.51.100.10:5060;branch=z9hG4bK-reg{cseq}\n\
             Max-Forwards: 70\n\
             From: <sip:alice@example.com>;tag=a1\n\
             To: <sip:alice@example.com>\n\
             Call-ID: reg-1\n\
             CSeq: {cseq} REGISTER\n\
             Contact: <sip:alice@198.51.100.10>\n\
             Content-Length: 0\n\n"
        );
        let run = h.relay(parse(&text), Some("sip:backend1.example"));
        trace_ids.push(run.trace_id.expect("traced").get());
    }
    assert_ne!(trace_ids[0], trace_ids[1]);
    assert_eq!(
        trace_ids[0],
        TraceKey::of("reg-1", "REGISTER", 1).trace_id()
    );
}

#[test]
fn a_request_the_script_drops_leaves_its_trace_at_once() {
    let mut h = Harness::traced();
    let msg = request(
        "MESSAGE",
        "sip:bob@example.com",
        "z9hG4bK-msg",
        "dropped",
        "",
    );
    let run = h.receive(msg, UAC, Protocol::Udp).expect("script runs");
    h.decide(&run, Decision::default());
    let traces = h.traces();
    assert_eq!(traces.len(), 1, "not 32 s later at Timer J");
    assert_eq!(
        text(&traces[0].spans[0], "sip.outcome"),
        "dropped by the script"
    );
    assert_eq!(traces[0].spans[0].attribute("sip.status_code"), None);
    let script = traces[0]
        .spans
        .iter()
        .find(|s| s.name == "script")
        .expect("script span");
    assert_eq!(text(script, "script.decision"), "none");
}
