//! `siphon route`: what the routing script decides for one message, with the
//! daemon's own code and no socket: the config's gateway groups (the same
//! selection, marks set by the caller), a memory registrar that can be
//! seeded, and the script run as the shards run it. `--serve` answers one
//! JSON request per line, which is how `siphon.testing.Harness` drives it.
//!
//! The decision is reported as the core would carry it out: the next hop of
//! a relay (the uri and the address packets would go to), a reply's code and
//! reason, a fork's targets, Record-Route, and the header edits; what the
//! core answers itself (a CANCEL with no transaction, Max-Forwards 0, a
//! Proxy-Require, an INVITE the script took no action on, a next hop it
//! cannot use) is a reply with `"by": "core"`. Names that are not IP
//! literals nor gateway destinations are not looked up (the dry run does no
//! DNS): their `address` is null and `host` names them. There are no
//! connections either: flow tokens and loop detection are not modelled.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};

use crate::config::Config;
use crate::proxy::decision::{Action, Decision};
use crate::proxy::dns::HostCache;
use crate::proxy::forward::{next_hop, HopError};
use crate::proxy::local::Listener;
use crate::registrar::{Limits, Registrar};
use crate::script::{LocalIdentity, RequestInput, Run, ScriptCache, ScriptEngine, ScriptServices};
use crate::sip::{Message, Method, Protocol};

/// Where a message comes from unless the caller says otherwise.
pub const DEFAULT_SOURCE: &str = "192.0.2.10:5060";

/// The script, the groups and the registrar of one config, ready to decide.
pub struct DryRun {
    engine: Arc<ScriptEngine>,
    cache: ScriptCache,
    services: ScriptServices,
    registrar: Arc<Registrar>,
    local: Arc<LocalIdentity>,
    /// Empty: the dry run resolves no names.
    hosts: HostCache,
}

impl DryRun {
    /// Loads `config`'s script with its gateway groups and a memory
    /// registrar (whatever `registrar.backend` says: nothing is read from
    /// or written to Redis).
    pub fn new(config: &Config) -> Result<DryRun, String> {
        let gateways = Arc::new(crate::actors::gateway::GatewayService::new(
            crate::metrics::get(),
        ));
        let services = ScriptServices::for_config(gateways.clone(), config)?;
        let listeners = listeners(config);
        let listen: Vec<SocketAddr> = listeners.iter().map(|l| l.local).collect();
        let registrar = Arc::new(Registrar::new(
            Limits::from(&config.registrar),
            crate::registrar::node_domains(
                &config.domain.local,
                config.advertise.as_deref(),
                &listen,
            ),
        ));
        let _ = services.registrar.set(registrar.clone());
        let engine = ScriptEngine::load(&config.script.path, &services)?;
        // Standard output carries the answers: a script's print() goes to
        // standard error, with the log.
        pyo3::Python::attach(|py| {
            use pyo3::types::PyAnyMethods;
            let sys = py.import("sys")?;
            sys.setattr("stdout", sys.getattr("stderr")?)
        })
        .map_err(|e| format!("cannot point the script's stdout at stderr: {e}"))?;
        for group in &config.gateway.groups {
            gateways.add_configured_group(group);
        }
        Ok(DryRun {
            cache: engine.cache(),
            engine,
            services,
            registrar,
            local: Arc::new(
                LocalIdentity::new(&config.domain.local, &listeners)
                    .with_trusted(config.security.policy().trusted),
            ),
            hosts: HostCache::new(1, 1, Duration::from_secs(1)),
        })
    }

    /// Marks `uri` of `group` down (or up again), as the admin API does.
    pub fn mark(&self, group: &str, uri: &str, down: bool) -> Result<(), String> {
        match self.services.gateways.mark(group, uri, down, "admin") {
            Some(true) => Ok(()),
            Some(false) => Err(format!("group {group} has no destination {uri}")),
            None => Err(format!("no gateway group {group}")),
        }
    }

    /// Seeds the registrar: a REGISTER of `contact` for `aor`, kept for
    /// `expires` seconds, reached through `path`; the status it got.
    pub fn register(
        &self,
        aor: &str,
        contact: &str,
        expires: u32,
        path: &[String],
    ) -> Result<u16, String> {
        // A bare URI gets brackets; a name-addr is taken as written.
        let contact = if contact.contains('<') {
            contact.to_string()
        } else {
            format!("<{contact}>")
        };
        let mut text = format!(
            "REGISTER {registrar} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {DEFAULT_SOURCE};branch=z9hG4bKseed{nonce:x}\r\n\
             From: <{aor}>;tag=seed\r\nTo: <{aor}>\r\nCall-ID: seed-{nonce:x}\r\n\
             CSeq: 1 REGISTER\r\nContact: {contact};expires={expires}\r\n",
            registrar = registrar_uri(aor),
            nonce = rand::random::<u64>(),
        );
        if !path.is_empty() {
            text.push_str("Supported: path\r\n");
        }
        for hop in path {
            text.push_str(&format!("Path: {hop}\r\n"));
        }
        text.push_str("Content-Length: 0\r\n\r\n");
        let msg =
            crate::sip::parse(Bytes::from(text)).map_err(|e| format!("bad aor or contact: {e}"))?;
        let reply = self.registrar.save(&msg, crate::registrar::unix_now());
        Ok(reply.code)
    }

    /// The destinations `key` gets in `group`, best first, as the admin
    /// API's select (the ranking `gateway.select` uses).
    pub fn select(&self, group: &str, key: Option<&str>) -> Result<Vec<(String, String)>, String> {
        let shared = self
            .services
            .gateways
            .gateways()
            .get(group)
            .ok_or_else(|| format!("no gateway group {group}"))?;
        let mut copy = shared.lock().clone();
        let ranked = copy
            .ranked(key.map(str::as_bytes), None, Instant::now())
            .to_vec();
        Ok(ranked
            .into_iter()
            .filter_map(|index| copy.destination(index))
            .map(|d| (d.uri.clone(), d.address.to_string()))
            .collect())
    }

    /// What the script decides for `raw` (SIP text; bare LF line ends are
    /// taken as CRLF) arriving from `source` over `protocol`.
    pub fn route(
        &mut self,
        raw: &str,
        source: SocketAddr,
        protocol: Protocol,
    ) -> Result<Value, String> {
        let (msg, input) = self.input(raw, source, protocol)?;
        let is_ack = msg.method() == Some(Method::Ack);
        // What the core answers before any script runs.
        if msg.method() == Some(Method::Cancel) {
            // A dry run has no transaction for it to cancel.
            return Ok(core_reply(481, "Call/Transaction Does Not Exist"));
        }
        if is_ack && msg.max_forwards() == Some(0) {
            return Ok(json!({"action": "none", "by": "core"}));
        }
        let refusal = (!is_ack)
            .then(|| crate::proxy::engine::route::refusal(&msg, || false))
            .flatten();
        if let Some(refusal) = refusal {
            let mut reply = core_reply(refusal.code, refusal.reason);
            if let Some(list) = refusal.unsupported {
                reply["headers"] = json!([["Unsupported", list]]);
            }
            return Ok(reply);
        }
        let strict_dropped = usize::from(input.preroute.strict_ruri.is_some());
        let decision = match self.engine.run(&mut self.cache, input, false, None) {
            Run::Decided(decision) => decision,
            Run::Fetch(aor, _) => return Err(format!("a lookup of {aor} wants Redis")),
        };
        Ok(self.describe(&msg, &decision, strict_dropped))
    }

    /// What `@proxy.on_failure` decides for `raw` once every branch ended
    /// with `status` (None: they timed out). Without such a handler the
    /// best response goes upstream: `"action": "none"`.
    pub fn route_failure(
        &mut self,
        raw: &str,
        status: Option<u16>,
        source: SocketAddr,
        protocol: Protocol,
    ) -> Result<Value, String> {
        let (msg, input) = self.input(raw, source, protocol)?;
        let response = match status {
            None => None,
            Some(code) if (300..=699).contains(&code) => {
                let reason = crate::sip::build::default_reason(code);
                let text = crate::sip::build::response(&msg, code, reason, Some("backend"), &[]);
                let parsed = crate::sip::parse(Bytes::from(text));
                Some(parsed.map_err(|e| format!("the failure response: {e}"))?)
            }
            Some(code) => return Err(format!("status {code}: a failure is 300 to 699")),
        };
        let strict_dropped = usize::from(input.preroute.strict_ruri.is_some());
        let decision = self.engine.run_failure(&mut self.cache, input, response);
        if decision.action.is_none() && !decision.failed {
            // The best response goes upstream.
            return Ok(with_edits(json!({"action": "none"}), &decision));
        }
        Ok(self.describe(&msg, &decision, strict_dropped))
    }

    /// The message parsed, and the script's input for it.
    fn input(
        &self,
        raw: &str,
        source: SocketAddr,
        protocol: Protocol,
    ) -> Result<(Arc<Message>, RequestInput), String> {
        let msg = crate::sip::parse(Bytes::from(with_crlf(raw)))
            .map_err(|e| format!("not a SIP message: {e}"))?;
        if !msg.is_request() {
            return Err("a response: the script decides requests only".into());
        }
        let msg = Arc::new(msg);
        let input = RequestInput {
            preroute: crate::proxy::engine::route::preroute(&msg, &self.local),
            msg: msg.clone(),
            source,
            protocol,
            local: self.local.clone(),
            trace_id: None,
        };
        Ok((msg, input))
    }

    /// The decision as JSON.
    fn describe(&self, msg: &Message, decision: &Decision, strict_dropped: usize) -> Value {
        let method = msg.method();
        let out = match &decision.action {
            _ if decision.failed => json!({
                "action": "reply", "code": 500, "reason": "Server Internal Error",
                "headers": [], "script_error": true,
            }),
            // An INVITE has had its 100 Trying: the core answers 500.
            None if method == Some(Method::Invite) => core_reply(500, "Server Internal Error"),
            None => json!({"action": "none"}),
            // Nothing answers an ACK.
            Some(Action::Reply { .. }) if method == Some(Method::Ack) => {
                json!({"action": "none", "by": "core"})
            }
            Some(Action::Reply {
                code,
                reason,
                headers,
            }) => json!({
                "action": "reply",
                "code": code,
                "reason": reason.as_deref().unwrap_or(crate::sip::build::default_reason(*code)),
                "headers": headers,
            }),
            Some(Action::Relay { uri }) => {
                match self.relay(msg, decision, uri.as_deref(), strict_dropped) {
                    Ok(relay) | Err(relay) => relay,
                }
            }
            Some(Action::Fork { targets }) => {
                let targets: Vec<Value> = targets
                    .iter()
                    .map(|target| {
                        let mut entry = json!({"uri": target.uri, "path": target.path});
                        let first = target.path.first().map_or(target.uri.as_str(), |p| {
                            p.trim_start_matches('<').split('>').next().unwrap_or(p)
                        });
                        if let Err(unusable) = self.add_hop(&mut entry, first) {
                            entry["address"] = Value::Null;
                            entry["next_hop_error"] = unusable["next_hop_error"].clone();
                        }
                        entry
                    })
                    .collect();
                json!({"action": "fork", "targets": targets})
            }
        };
        with_edits(out, decision)
    }

    /// A relay's next hop as the core picks it: `uri`, else the first Route
    /// left (a strict router gets its URI as the Request-URI, §16.6 step 7),
    /// else the Request-URI. Err: the core's 478.
    fn relay(
        &self,
        msg: &Message,
        decision: &Decision,
        uri: Option<&str>,
        strict_dropped: usize,
    ) -> Result<Value, Value> {
        let crate::proxy::engine::route::RelayTarget {
            target, new_ruri, ..
        } = crate::proxy::engine::route::relay_target(msg, decision, uri, strict_dropped);
        let mut relay = json!({"action": "relay", "uri": target, "new_ruri": new_ruri});
        self.add_hop(&mut relay, &target)?;
        if let Some(gateway) = &decision.gateway {
            relay["group"] = json!(&*gateway.group);
            relay["candidates"] = gateway
                .candidates
                .iter()
                .map(|c| json!({"uri": &*c.uri, "address": c.hop.addr.to_string()}))
                .collect();
        }
        Ok(relay)
    }

    /// The address and transport packets for `uri` would take (a name is
    /// left unresolved). Err: the core's 478 for a next hop it cannot use.
    fn add_hop(&self, entry: &mut Value, uri: &str) -> Result<(), Value> {
        let gateways = self.services.gateways.gateways();
        match next_hop(uri, Instant::now(), &self.hosts, |u| gateways.address_of(u)) {
            Ok(hop) => {
                entry["address"] = json!(hop.addr.to_string());
                entry["transport"] = json!(hop.protocol.as_str().to_ascii_lowercase());
                Ok(())
            }
            Err(HopError::Lookup(key)) => {
                // The name, whether its address or its RFC 3263 records
                // are what a live node would look up.
                let host = crate::proxy::dns::sip_lookup_name(&key).unwrap_or(&key);
                entry["address"] = Value::Null;
                entry["host"] = json!(host);
                Ok(())
            }
            Err(e) => {
                let mut reply = core_reply(478, "Unresolvable Destination");
                reply["next_hop_error"] = json!(e.to_string());
                Err(reply)
            }
        }
    }

    /// Answers one JSON request per line of `input` on `output` until
    /// `input` ends. The first line out is `{"ready": true}`.
    pub fn serve(&mut self, input: impl BufRead, mut output: impl Write) -> std::io::Result<()> {
        writeln!(output, "{}", json!({"ready": true}))?;
        output.flush()?;
        for line in input.lines() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let answer = match serde_json::from_str::<Value>(&line) {
                Ok(request) => self.answer(&request),
                Err(e) => Err(format!("not JSON: {e}")),
            };
            let answer = answer.unwrap_or_else(|error| json!({"error": error}));
            writeln!(output, "{answer}")?;
            output.flush()?;
        }
        Ok(())
    }

    fn answer(&mut self, request: &Value) -> Result<Value, String> {
        let text = |key: &str| -> Result<&str, String> {
            request[key]
                .as_str()
                .ok_or_else(|| format!("`{key}` (a string) is missing"))
        };
        match text("op")? {
            "route" => {
                let source = match request["source"].as_str() {
                    Some(source) => parse_source(source)?,
                    None => parse_source(DEFAULT_SOURCE)?,
                };
                let protocol = parse_transport(request["transport"].as_str().unwrap_or("udp"))?;
                self.route(text("sip")?, source, protocol)
            }
            "failure" => {
                let source = match request["source"].as_str() {
                    Some(source) => parse_source(source)?,
                    None => parse_source(DEFAULT_SOURCE)?,
                };
                let protocol = parse_transport(request["transport"].as_str().unwrap_or("udp"))?;
                let status = request["status"].as_u64().map(|s| s.min(999) as u16);
                self.route_failure(text("sip")?, status, source, protocol)
            }
            "mark" => {
                let down = request["down"].as_bool().unwrap_or(true);
                self.mark(text("group")?, text("uri")?, down)
                    .map(|()| json!({"ok": true}))
            }
            "register" => {
                let expires = request["expires"]
                    .as_u64()
                    .unwrap_or(3600)
                    .min(u32::MAX as u64) as u32;
                let path: Vec<String> = request["path"]
                    .as_array()
                    .map(|hops| {
                        hops.iter()
                            .filter_map(|h| h.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                let code = self.register(text("aor")?, text("contact")?, expires, &path)?;
                Ok(json!({"code": code}))
            }
            "select" => {
                let ranking = self.select(text("group")?, request["key"].as_str())?;
                let ranking: Vec<Value> = ranking
                    .into_iter()
                    .map(|(uri, address)| json!({"uri": uri, "address": address}))
                    .collect();
                Ok(json!({"ranking": ranking}))
            }
            other => Err(format!(
                "unknown op `{other}` (route, failure, mark, register, select)"
            )),
        }
    }
}

/// The fields every decision carries besides its action: Record-Route, the
/// new Request-URI and the header edits.
fn with_edits(mut out: Value, decision: &Decision) -> Value {
    out["record_route"] = json!(decision.record_route);
    if let Some(on) = decision.capture {
        out["capture"] = json!(on);
    }
    if out.get("new_ruri").is_none() {
        out["new_ruri"] = json!(decision.new_ruri);
    }
    let set: Vec<(&str, &str)> = decision
        .header_edits
        .iter()
        .filter_map(|(name, value)| Some((name.as_str(), value.as_deref()?)))
        .collect();
    let removed: Vec<&str> = decision
        .header_edits
        .iter()
        .filter(|(_, value)| value.is_none())
        .map(|(name, _)| name.as_str())
        .collect();
    out["headers_set"] = json!(set);
    out["headers_removed"] = json!(removed);
    out
}

/// A reply the core sends by itself, whatever the script says.
fn core_reply(code: u16, reason: &str) -> Value {
    json!({"action": "reply", "code": code, "reason": reason, "headers": [], "by": "core"})
}

/// `raw` with CRLF line ends in its header part (bare LF is what editors
/// write); the body is left as it is, so its Content-Length still holds.
fn with_crlf(raw: &str) -> String {
    if let Some(end) = raw.find("\r\n\r\n") {
        if !raw[..end].replace("\r\n", "").contains('\n') {
            return raw.to_string();
        }
    }
    let (head, body) = match raw.find("\n\n") {
        Some(at) => (&raw[..at], &raw[at + 2..]),
        None => (raw.trim_end_matches('\n'), ""),
    };
    let head = head.replace("\r\n", "\n").replace('\n', "\r\n");
    format!("{head}\r\n\r\n{body}")
}

/// The Request-URI of a REGISTER for `aor`: its domain.
fn registrar_uri(aor: &str) -> String {
    match crate::sip::Uri::parse(aor) {
        Ok(uri) => format!("{}:{}", uri.scheme, uri.host),
        Err(_) => aor.to_string(),
    }
}

/// The config's UDP and TCP listeners (others are reached the same way).
fn listeners(config: &Config) -> Vec<Listener> {
    let udp = config.listen.udp.iter().map(|l| (Protocol::Udp, l));
    let tcp = config.listen.tcp.iter().map(|l| (Protocol::Tcp, l));
    udp.chain(tcp)
        .map(|(protocol, l)| Listener::new(protocol, l.address, l.advertise.as_deref()))
        .collect()
}

/// `ip:port`, as `--source` and the `source` field take it.
pub fn parse_source(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("source `{text}` is not ip:port"))
}

/// `udp`, `tcp`, `tls`, `ws` or `wss`.
pub fn parse_transport(text: &str) -> Result<Protocol, String> {
    match text.to_ascii_lowercase().as_str() {
        "udp" => Ok(Protocol::Udp),
        "tcp" => Ok(Protocol::Tcp),
        "tls" => Ok(Protocol::Tls),
        "ws" => Ok(Protocol::Ws),
        "wss" => Ok(Protocol::Wss),
        _ => Err(format!(
            "transport `{text}` is not udp, tcp, tls, ws or wss"
        )),
    }
}
