//! The `Request` object a handler receives, and the `Decision` it leaves behind.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use crate::sip::Protocol;
use crate::sip::{self, HeaderName, Message, NameAddr};

pub use crate::proxy::local::LocalIdentity;
pub use crate::sip::uri::host_text;

/// What the shard hands to the script for one request.
pub struct RequestInput {
    /// What the core did to the Route set before the script runs.
    pub preroute: crate::proxy::decision::Preroute,
    /// Shared with the server transaction, which keeps it for its responses.
    pub msg: Arc<Message>,
    pub source: SocketAddr,
    pub protocol: Protocol,
    pub local: Arc<LocalIdentity>,
    /// The call's trace, when it is traced: in the log lines about it, and
    /// its registrar lookups are recorded for their spans.
    pub trace_id: Option<u128>,
}

pub use crate::proxy::decision::{Action, Decision, ForkTarget};

/// The decision a handler's state amounts to.
pub(super) fn decision_of(state: State) -> Decision {
    Decision {
        action: state.action,
        failed: false,
        record_route: state.record_route,
        header_edits: state.header_edits,
        routes_popped: state.routes_popped,
        new_ruri: state.new_ruri,
        gateway: None,
        registrar_lookups: Vec::new(),
        capture: state.capture,
    }
}

/// The decision for a request no handler accepts: no action.
pub(super) fn unhandled(input: RequestInput) -> Decision {
    decision_of(State::new(input))
}

pub(super) struct State {
    input: RequestInput,
    action: Option<Action>,
    record_route: bool,
    header_edits: Vec<(String, Option<String>)>,
    routes_popped: usize,
    new_ruri: Option<String>,
    /// The user `auth.check` authenticated.
    auth_user: Option<String>,
    /// `request.capture(on)`.
    capture: Option<bool>,
}

impl State {
    fn new(input: RequestInput) -> Self {
        State {
            routes_popped: input.preroute.routes_popped,
            new_ruri: input.preroute.strict_ruri.clone(),
            input,
            action: None,
            record_route: false,
            header_edits: Vec::new(),
            auth_user: None,
            capture: None,
        }
    }

    fn ruri(&self) -> &str {
        self.new_ruri
            .as_deref()
            .or_else(|| self.input.msg.request_uri())
            .unwrap_or("")
    }

    /// The header as the script has left it: its own edits win.
    fn header(&self, name: &str) -> Option<String> {
        let wanted = HeaderName::from_name(name);
        for (edited, value) in self.header_edits.iter().rev() {
            if same_header(edited, wanted, name) {
                return value.clone();
            }
        }
        self.input.msg.header_named(name).map(str::to_string)
    }

    fn set_action(&mut self, action: Action) -> PyResult<()> {
        if let Some(previous) = &self.action {
            return Err(PyRuntimeError::new_err(format!(
                "the request already has an action ({previous:?}); call relay() or reply() once"
            )));
        }
        self.action = Some(action);
        Ok(())
    }
}

pub use crate::sip::message::same_header;

/// The Python `Request`. Its state moves back to the shard when the handler
/// returns; a handler that keeps the object and uses it later gets an error.
#[pyclass(module = "siphon")]
pub struct Request {
    state: Option<State>,
}

impl Request {
    pub(super) fn new(input: RequestInput) -> Self {
        Request {
            state: Some(State::new(input)),
        }
    }

    pub(super) fn take(&mut self) -> Option<State> {
        self.state.take()
    }

    fn state(&self) -> PyResult<&State> {
        self.state
            .as_ref()
            .ok_or_else(|| PyRuntimeError::new_err("request already handled"))
    }

    fn state_mut(&mut self) -> PyResult<&mut State> {
        self.state
            .as_mut()
            .ok_or_else(|| PyRuntimeError::new_err("request already handled"))
    }
}

#[pymethods]
impl Request {
    #[getter]
    fn method(&self) -> PyResult<String> {
        Ok(self.state()?.input.msg.method_str().to_string())
    }

    #[getter]
    fn ruri(&self) -> PyResult<Uri> {
        let state = self.state()?;
        Ok(Uri::new(state.ruri(), &state.input.local))
    }

    #[getter]
    fn to_uri(&self) -> PyResult<Option<Uri>> {
        self.addr_uri(HeaderName::To)
    }

    #[getter]
    #[allow(clippy::wrong_self_convention)] // the Python attribute is `from_uri`
    fn from_uri(&self) -> PyResult<Option<Uri>> {
        self.addr_uri(HeaderName::From)
    }

    #[getter]
    fn call_id(&self) -> PyResult<String> {
        Ok(self.state()?.input.msg.call_id().unwrap_or("").to_string())
    }

    #[getter]
    fn cseq(&self) -> PyResult<u32> {
        Ok(self.state()?.input.msg.cseq().map_or(0, |(n, _)| n))
    }

    /// True when the To header carries a tag: the request belongs to a dialog.
    #[getter]
    fn in_dialog(&self) -> PyResult<bool> {
        Ok(self.state()?.input.msg.to_tag().is_some())
    }

    #[getter]
    fn source_ip(&self) -> PyResult<String> {
        Ok(self.state()?.input.source.ip().to_string())
    }

    #[getter]
    fn source_port(&self) -> PyResult<u16> {
        Ok(self.state()?.input.source.port())
    }

    /// The first gateway group (by name) one of whose destinations sent
    /// this request (its IP and port), or None: tells a backend's or a
    /// carrier's traffic from a caller's.
    #[getter]
    fn source_group(&self) -> PyResult<Option<String>> {
        Ok(super::gateway::source_group(self.state()?.input.source))
    }

    /// The source is in `security.trusted` (a peer as good as us).
    #[getter]
    fn source_trusted(&self) -> PyResult<bool> {
        let input = &self.state()?.input;
        Ok(input.local.is_trusted(input.source.ip()))
    }

    #[getter]
    fn transport(&self) -> PyResult<&'static str> {
        Ok(self.state()?.input.protocol.name())
    }

    fn header(&self, name: &str) -> PyResult<Option<String>> {
        Ok(self.state()?.header(name))
    }

    fn set_header(&mut self, name: &str, value: &str) -> PyResult<()> {
        check_header(name, Some(value))?;
        self.state_mut()?
            .header_edits
            .push((name.to_string(), Some(value.to_string())));
        Ok(())
    }

    fn remove_header(&mut self, name: &str) -> PyResult<()> {
        check_header(name, None)?;
        self.state_mut()?
            .header_edits
            .push((name.to_string(), None));
        Ok(())
    }

    /// Loose routing (RFC 3261 §16.4). The core has already removed the
    /// Route values naming this proxy (an in-dialog one only with its
    /// valid seal) and undone a strict router's rewrite; this removes any
    /// further value naming us and says whether the topmost Route named
    /// us: the request follows a route we established. A request whose
    /// first Route is someone else's is not ours to relay (False).
    fn loose_route(&mut self) -> PyResult<bool> {
        let state = self.state_mut()?;
        let preroute = &state.input.preroute;
        if preroute.routes_popped == 0 && preroute.strict_ruri.is_none() {
            return Ok(false);
        }
        let local = state.input.local.clone();
        state.routes_popped += state
            .input
            .msg
            .header_values(HeaderName::Route)
            .skip(state.routes_popped)
            .take_while(|value| {
                NameAddr::parse(value).is_ok_and(|addr| local.is_local_uri(addr.uri))
            })
            .count();
        Ok(true)
    }

    /// Forwards the request: to `uri` as the next hop when given (the
    /// Request-URI stays), else along the Route set, else to the Request-URI.
    #[pyo3(signature = (uri=None))]
    fn relay(&mut self, uri: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let uri = match uri {
            None => None,
            Some(value) => {
                let text = value.str()?.to_string();
                sip::Uri::parse(&text)
                    .map_err(|e| PyValueError::new_err(format!("relay: bad uri {text:?}: {e}")))?;
                Some(text)
            }
        };
        self.state_mut()?.set_action(Action::Relay { uri })
    }

    #[pyo3(signature = (code, reason=None))]
    fn reply(&mut self, code: u16, reason: Option<String>) -> PyResult<()> {
        if !(100..=699).contains(&code) {
            return Err(PyValueError::new_err(format!(
                "reply: status code {code} is outside 100..699"
            )));
        }
        if reason.as_deref().is_some_and(|r| r.contains(['\r', '\n'])) {
            return Err(PyValueError::new_err("reply: reason contains a line break"));
        }
        self.state_mut()?.set_action(Action::Reply {
            code,
            reason,
            headers: Vec::new(),
        })
    }

    /// Forks to several targets at once: strings, or objects with a `.uri`
    /// (and optionally a `.path` list), such as registrar Contacts.
    fn fork(&mut self, targets: Bound<'_, PyAny>) -> PyResult<()> {
        let mut parsed = Vec::new();
        for target in targets.try_iter()? {
            let target = target?;
            let vouched = target.is_instance_of::<super::registrar::Contact>();
            let (uri, path) = match target.getattr("uri") {
                Ok(uri) => {
                    let path = match target.getattr("path") {
                        Ok(path) if !path.is_none() => path.extract::<Vec<String>>()?,
                        _ => Vec::new(),
                    };
                    (uri.str()?.to_string(), path)
                }
                Err(_) => (target.str()?.to_string(), Vec::new()),
            };
            sip::Uri::parse(&uri)
                .map_err(|e| PyValueError::new_err(format!("fork: bad uri {uri:?}: {e}")))?;
            parsed.push(ForkTarget { uri, path, vouched });
        }
        if parsed.is_empty() {
            return Err(PyValueError::new_err("fork: no targets"));
        }
        self.state_mut()?
            .set_action(Action::Fork { targets: parsed })
    }

    /// The user `auth.check(request)` authenticated, else None.
    #[getter]
    fn auth_user(&self) -> PyResult<Option<String>> {
        Ok(self.state()?.auth_user.clone())
    }

    fn record_route(&mut self) -> PyResult<()> {
        self.state_mut()?.record_route = true;
        Ok(())
    }

    /// `capture(False)` takes the call out of `capture.hep` (this request
    /// and what follows of its call); `capture(True)` puts it back.
    fn capture(&mut self, on: bool) -> PyResult<()> {
        self.state_mut()?.capture = Some(on);
        Ok(())
    }

    fn __repr__(&self) -> String {
        match &self.state {
            Some(state) => format!(
                "<Request {} {}>",
                state.input.msg.method_str(),
                state.ruri()
            ),
            None => "<Request (handled)>".to_string(),
        }
    }
}

impl Request {
    /// The request as received, for namespaces implemented in Rust
    /// (the registrar reads REGISTER from it).
    pub(crate) fn message(&self) -> PyResult<&Message> {
        Ok(&*self.state()?.input.msg)
    }

    /// Where the request came from, and over what.
    pub(crate) fn source(&self) -> PyResult<(SocketAddr, Protocol)> {
        let input = &self.state()?.input;
        Ok((input.source, input.protocol))
    }

    /// Records a reply with extra headers (used by `registrar.save`).
    pub(crate) fn reply_with(
        &mut self,
        code: u16,
        reason: Option<String>,
        headers: Vec<(String, String)>,
    ) -> PyResult<()> {
        self.state_mut()?.set_action(Action::Reply {
            code,
            reason,
            headers,
        })
    }

    /// Records the user `auth.check` authenticated.
    pub(crate) fn set_auth_user(&mut self, user: String) -> PyResult<()> {
        self.state_mut()?.auth_user = Some(user);
        Ok(())
    }

    fn addr_uri(&self, name: HeaderName) -> PyResult<Option<Uri>> {
        let state = self.state()?;
        Ok(state
            .input
            .msg
            .header(name)
            .and_then(|value| NameAddr::parse(value).ok())
            .map(|addr| Uri::new(addr.uri, &state.input.local)))
    }
}

fn check_header(name: &str, value: Option<&str>) -> PyResult<()> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b);
    if name.is_empty() || !name.bytes().all(token) {
        return Err(PyValueError::new_err(format!("bad header name {name:?}")));
    }
    if matches!(
        HeaderName::from_name(name),
        HeaderName::Via | HeaderName::CallId | HeaderName::CSeq | HeaderName::ContentLength
    ) {
        return Err(PyValueError::new_err(format!(
            "header {name} is managed by the proxy and cannot be changed by a script"
        )));
    }
    if value.is_some_and(|v| v.contains(['\r', '\n'])) {
        return Err(PyValueError::new_err("header value contains a line break"));
    }
    Ok(())
}

/// A SIP URI as scripts see it: `.scheme .user .host .port .is_local`, and
/// `str()` gives the URI text.
#[pyclass(module = "siphon", frozen, str)]
pub struct Uri {
    text: String,
    #[pyo3(get)]
    scheme: String,
    #[pyo3(get)]
    user: Option<String>,
    #[pyo3(get)]
    host: String,
    #[pyo3(get)]
    port: Option<u16>,
    #[pyo3(get)]
    is_local: bool,
}

impl Uri {
    fn new(text: &str, local: &LocalIdentity) -> Self {
        match sip::Uri::parse(text) {
            Ok(uri) => Uri {
                text: text.to_string(),
                scheme: uri.scheme.to_ascii_lowercase(),
                user: uri.user.map(str::to_string),
                host: uri.host.to_string(),
                port: uri.port,
                is_local: local.is_local(uri.host, uri.port),
            },
            Err(_) => Uri {
                text: text.to_string(),
                scheme: String::new(),
                user: None,
                host: String::new(),
                port: None,
                is_local: false,
            },
        }
    }
}

impl std::fmt::Display for Uri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

#[pymethods]
impl Uri {
    fn __repr__(&self) -> String {
        format!("<Uri {}>", self.text)
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other.str().is_ok_and(|s| s.to_string() == self.text)
    }

    fn __hash__(&self) -> u64 {
        xxhash_rust::xxh3::xxh3_64(self.text.as_bytes())
    }

    /// The address of record (RFC 3261 §10.3): `scheme:user@host[:port]`
    /// with the host lower-cased, a default port and every parameter
    /// dropped. It is what `gateway.select` hashes and what the registrar
    /// keys bindings by; None when the text is not a SIP, SIPS or tel URI.
    #[getter]
    fn aor(&self) -> Option<String> {
        sip::uri::address_of_record(&self.text).map(Cow::into_owned)
    }
}
