//! The embedded Python routing script: loading, reloading on SIGHUP, and
//! running the `@proxy.on_request` handler for one request.
//!
//! Scripts do no I/O themselves: the `Request` object records what the script
//! asked for (relay, reply, record-route, header edits) and the transaction
//! shard carries it out after the call returns.

mod api;
pub mod auth;
mod call_log;
mod gateway;
pub mod lint;
mod registrar;
pub mod request;
mod rerun;
mod stubs;
pub mod watchdog;

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use pyo3::prelude::*;

pub use rerun::Replay;

pub use request::{
    host_text, same_header, Action, Decision, ForkTarget, LocalIdentity, Request, RequestInput,
};

/// What the `siphon` module's namespaces act on. Boot builds it and hands it
/// to the script engine, the server and the admin API.
#[derive(Clone)]
pub struct ScriptServices {
    pub gateways: Arc<dyn crate::gateway::GatewayControl>,
    /// The registrar, once boot has started it (`siphon --check` starts none).
    pub registrar: Arc<std::sync::OnceLock<Arc<crate::registrar::Registrar>>>,
    /// Digest authentication, when the config has `auth:`.
    pub auth: Option<Arc<auth::AuthService>>,
    /// Interrupts handlers that run past `script.timeout_ms`.
    pub watchdog: Arc<watchdog::Watchdog>,
}

impl ScriptServices {
    pub fn new(gateways: Arc<dyn crate::gateway::GatewayControl>) -> Self {
        ScriptServices {
            gateways,
            registrar: Arc::default(),
            auth: None,
            watchdog: watchdog::Watchdog::new(std::time::Duration::from_millis(1000)),
        }
    }

    /// The services `config` asks for: its script time limit and digest
    /// users, over the gateway groups of `gateways`.
    pub fn for_config(
        gateways: Arc<dyn crate::gateway::GatewayControl>,
        config: &crate::config::Config,
    ) -> Result<Self, String> {
        let mut services = ScriptServices::new(gateways);
        services.watchdog =
            watchdog::Watchdog::new(std::time::Duration::from_millis(config.script.timeout_ms));
        if let Some(auth) = &config.auth {
            services.auth = Some(auth::AuthService::from_config(auth)?);
        }
        Ok(services)
    }
}

/// One registered handler: what it handles, an optional method filter and
/// the Python callable.
struct Handler {
    kind: HandlerKind,
    methods: Option<Vec<String>>,
    func: Py<PyAny>,
}

/// `@proxy.on_request`, `@proxy.on_failure` or `@gateway.on_change`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum HandlerKind {
    Request,
    Failure,
    GatewayChange,
}

impl Handler {
    fn accepts(&self, kind: HandlerKind, method: &str) -> bool {
        if self.kind != kind {
            return false;
        }
        match &self.methods {
            None => true,
            Some(list) => list.iter().any(|m| m.eq_ignore_ascii_case(method)),
        }
    }
}

/// The handlers of one successfully loaded version of the script.
pub struct Handlers {
    entries: Vec<Handler>,
}

impl Handlers {
    fn has(&self, kind: HandlerKind) -> bool {
        self.entries.iter().any(|h| h.kind == kind)
    }
}

/// How long a thread holding the GIL keeps it while another waits.
const GIL_SWITCH_INTERVAL_SECS: f64 = 0.001;

/// Handlers registered by the decorators while a script is being executed.
static PENDING: Mutex<Vec<Handler>> = Mutex::new(Vec::new());
/// Serialises loads, so two reloads never interleave their registrations.
static LOADING: Mutex<()> = Mutex::new(());

/// The script shared by every executor. Each caches the current handlers and
/// looks at `generation` (one atomic load) per request to notice a reload, so
/// the hot path takes no lock.
pub struct ScriptEngine {
    path: PathBuf,
    generation: AtomicU64,
    current: RwLock<Arc<Handlers>>,
    /// For a relay to a destination that `gateway.select` did not rank.
    gateways: Arc<crate::gateway::Gateways>,
    watchdog: Arc<watchdog::Watchdog>,
}

/// How a handler run for a request ended.
#[derive(Debug)]
pub enum Run {
    Decided(Decision),
    /// A lookup missed in memory: read this AoR from Redis
    /// ([`crate::registrar::Registrar::fetch`]), then run again with the
    /// [`Replay`].
    Fetch(String, Replay),
}

/// An executor's (or inline shard's) cached view of the engine.
pub struct ScriptCache {
    generation: u64,
    handlers: Arc<Handlers>,
}

impl ScriptEngine {
    /// Initialises Python once, registers the `siphon` module and loads the script.
    pub fn load(path: &Path, services: &ScriptServices) -> Result<Arc<ScriptEngine>, String> {
        Python::initialize();
        Python::attach(|py| api::register_module(py, services))
            .map_err(|e| format!("cannot set up the siphon module: {e}"))?;
        // A thread waiting for the GIL gets it within 1 ms rather than
        // Python's 5: an executor next to a handler that spins (abandoned,
        // or just slow) then still runs a thousand handlers a second.
        Python::attach(|py| {
            py.import("sys")?
                .call_method1("setswitchinterval", (GIL_SWITCH_INTERVAL_SECS,))
                .map(drop)
        })
        .map_err(|e| format!("cannot set Python's switch interval: {e}"))?;
        let handlers = load_handlers(path)?;
        Ok(Arc::new(ScriptEngine {
            path: path.to_path_buf(),
            generation: AtomicU64::new(1),
            current: RwLock::new(Arc::new(handlers)),
            gateways: services.gateways.gateways(),
            watchdog: services.watchdog.clone(),
        }))
    }

    /// Compiles the script again; on failure the running version stays.
    pub fn reload(&self) -> Result<(), String> {
        let handlers = load_handlers(&self.path)?;
        match self.current.write() {
            Ok(mut current) => *current = Arc::new(handlers),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(handlers),
        }
        self.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Calls every `@gateway.on_change` handler with `(group, uri,
    /// old_state, new_state, reason)`. Runs on the event thread, never on
    /// an executor; an exception is logged with its traceback.
    pub fn run_gateway_change(&self, event: &crate::gateway::events::GatewayEvent) {
        let handlers = self
            .current
            .read()
            .map(|current| current.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        if !handlers.has(HandlerKind::GatewayChange) {
            return;
        }
        Python::attach(|py| {
            for handler in handlers
                .entries
                .iter()
                .filter(|h| h.kind == HandlerKind::GatewayChange)
            {
                let arguments = (
                    event.group.as_str(),
                    event.uri.as_str(),
                    event.old_state,
                    event.new_state,
                    event.reason.as_str(),
                );
                if let Err(err) = handler.func.call1(py, arguments) {
                    tracing::error!(
                        target: "siphon::script",
                        group = %event.group,
                        uri = %event.uri,
                        "@gateway.on_change raised:\n{}",
                        format_exception(py, &err)
                    );
                }
            }
        });
    }

    pub fn cache(&self) -> ScriptCache {
        ScriptCache {
            generation: self.generation.load(Ordering::Acquire),
            handlers: self.handlers(),
        }
    }

    fn handlers(&self) -> Arc<Handlers> {
        match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Runs the handler for one request. A script exception yields a 500 reply
    /// and a logged traceback; it never propagates. With `may_fetch`, a
    /// `registrar.lookup` that must read Redis first ends the run with
    /// [`Run::Fetch`]: read the AoR, then run again with its [`Replay`].
    pub fn run(
        &self,
        cache: &mut ScriptCache,
        input: RequestInput,
        may_fetch: bool,
        replay: Option<Replay>,
    ) -> Run {
        rerun::begin(may_fetch, replay, input.trace_id.is_some());
        let mut decision = self.call(cache, HandlerKind::Request, input, None);
        let finished = rerun::finish();
        match finished.fetch {
            Some((aor, replay)) => Run::Fetch(aor, replay),
            None => {
                decision.registrar_lookups = finished.lookups;
                Run::Decided(decision)
            }
        }
    }

    /// Runs `@proxy.on_failure` for a request whose branches all failed;
    /// with no such handler, the decision is to do nothing (the best
    /// response goes upstream) and Python is not entered.
    pub fn run_failure(
        &self,
        cache: &mut ScriptCache,
        input: RequestInput,
        response: Option<crate::sip::Message>,
    ) -> Decision {
        self.refresh(cache);
        if !cache.handlers.has(HandlerKind::Failure) {
            return Decision::default();
        }
        rerun::begin(false, None, input.trace_id.is_some());
        let mut decision = self.call(cache, HandlerKind::Failure, input, Some(response));
        decision.registrar_lookups = rerun::finish().lookups;
        decision
    }

    fn refresh(&self, cache: &mut ScriptCache) {
        let generation = self.generation.load(Ordering::Acquire);
        if generation != cache.generation {
            cache.generation = generation;
            cache.handlers = self.handlers();
        }
    }

    /// Calls the first handler of `kind` that accepts the request's method;
    /// a failure handler also gets the response (`failure` is Some).
    fn call(
        &self,
        cache: &mut ScriptCache,
        kind: HandlerKind,
        input: RequestInput,
        failure: Option<Option<crate::sip::Message>>,
    ) -> Decision {
        self.refresh(cache);
        let handlers = &cache.handlers;
        Python::attach(|py| {
            // The request moves into Python; keep a handle (not a copy) for
            // the method name the error log needs.
            let msg = input.msg.clone();
            let method = msg.method_str();
            let Some(handler) = handlers.entries.iter().find(|h| h.accepts(kind, method)) else {
                return request::unhandled(input);
            };
            let trace_id = input.trace_id.map(crate::telemetry::trace_id_hex);
            let _about = call_log::about(&msg, trace_id.as_deref());
            let request = match Py::new(py, request::Request::new(input)) {
                Ok(request) => request,
                Err(e) => {
                    tracing::error!(error = %e, "cannot create the script's Request object");
                    return Decision::failed();
                }
            };
            gateway::begin_run(method == "INVITE", &self.gateways);
            let started = std::time::Instant::now();
            let run = self.watchdog.enter(py);
            let outcome = match failure {
                None => handler.func.call1(py, (request.clone_ref(py),)),
                Some(response) => {
                    let response = match response.map(|msg| Py::new(py, api::Response::new(msg))) {
                        Some(Ok(response)) => response.into_any(),
                        Some(Err(e)) => {
                            tracing::error!(error = %e, "cannot create the script's Response object");
                            return Decision::failed();
                        }
                        None => py.None(),
                    };
                    handler.func.call1(py, (request.clone_ref(py), response))
                }
            };
            let timed_out = run.fired();
            drop(run);
            let metrics = crate::metrics::get();
            metrics.script_executions.inc();
            metrics
                .script_duration
                .observe(started.elapsed().as_secs_f64());
            let state = request.borrow_mut(py).take();
            if timed_out {
                metrics.script_errors.inc();
                let traceback = match &outcome {
                    Err(err) => format_exception(py, err),
                    Ok(_) => "(the handler caught the TimeoutError and returned)".to_string(),
                };
                tracing::error!(
                    method = %method,
                    call_id = %call_id_of(&msg),
                    trace_id = trace_id.as_deref(),
                    timeout_ms = self.watchdog.timeout().as_millis() as u64,
                    "script handler ran past script.timeout_ms and was interrupted; answering 500\n{traceback}"
                );
                return Decision::failed();
            }
            match outcome {
                Ok(_) => state
                    .map(request::decision_of)
                    .map(|decision| gateway::with_relay_candidates(decision, &self.gateways))
                    .unwrap_or_else(Decision::failed),
                // Not an error: the run is discarded and made again.
                Err(err) if err.is_instance_of::<registrar::LookupPending>(py) => {
                    Decision::default()
                }
                Err(err) => {
                    metrics.script_errors.inc();
                    tracing::error!(
                        method = %method,
                        call_id = %call_id_of(&msg),
                        trace_id = trace_id.as_deref(),
                        "script raised; answering 500\n{}",
                        format_exception(py, &err)
                    );
                    Decision::failed()
                }
            }
        })
    }
}

/// Keeps a Python thread state for the calling thread's whole life, so each
/// later `Python::attach` on it costs about 0.5 µs instead of 7.8 µs.
pub fn keep_thread_state() {
    // SAFETY: Python is initialised before any executor starts. PyGILState_Ensure
    // creates this thread's state and takes the GIL; PyEval_SaveThread releases
    // the GIL but leaves the state registered (its counter stays at 1), which is
    // what pyo3's attach finds and reuses.
    unsafe {
        let _ = pyo3::ffi::PyGILState_Ensure();
        let _ = pyo3::ffi::PyEval_SaveThread();
    }
}

fn load_handlers(path: &Path) -> Result<Handlers, String> {
    let source = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read script {}: {e}", path.display()))?;
    let code = CString::new(source)
        .map_err(|_| format!("script {} contains a NUL byte", path.display()))?;
    let file_name = CString::new(path.display().to_string())
        .map_err(|_| format!("script path {} contains a NUL byte", path.display()))?;
    let _loading = LOADING.lock().unwrap_or_else(|p| p.into_inner());
    Python::attach(|py| {
        take_pending();
        if let Some(directory) = path.parent() {
            own_modules_afresh(py, directory)
                .map_err(|e| format!("script {}: cannot set up imports: {e}", path.display()))?;
        }
        let result = PyModule::from_code(py, &code, &file_name, c"siphon_script");
        let registered = take_pending();
        match result {
            Err(err) => Err(format!(
                "script {} failed to load:\n{}",
                path.display(),
                format_exception(py, &err)
            )),
            Ok(_) if !registered.iter().any(|h| h.kind == HandlerKind::Request) => Err(format!(
                "script {} registers no handler: decorate a function with @proxy.on_request",
                path.display()
            )),
            Ok(_) => Ok(Handlers {
                entries: registered,
            }),
        }
    })
}

/// Puts the script's directory first on `sys.path`, so that it can import
/// the helper modules beside it, and forgets the modules imported from
/// there before, so that a reload runs their new text as well.
fn own_modules_afresh(py: Python<'_>, directory: &Path) -> PyResult<()> {
    use pyo3::types::{PyDict, PyList};
    let directory = directory
        .canonicalize()
        .unwrap_or_else(|_| directory.to_path_buf());
    let directory = directory.to_string_lossy();
    let sys = py.import("sys")?;
    // No .pyc beside the config: an edit within the second of the last one
    // with the same size would load the stale bytecode (and /etc is
    // read-only under the systemd unit anyway).
    sys.setattr("dont_write_bytecode", true)?;
    let search = sys.getattr("path")?;
    let search = search.cast::<PyList>()?;
    if !search.contains(directory.as_ref())? {
        search.insert(0, directory.as_ref())?;
    }
    let modules = sys.getattr("modules")?;
    let modules = modules.cast::<PyDict>()?;
    let inside = format!("{}/", directory.trim_end_matches('/'));
    // A module is the script's own when the script's directory is the
    // sys.path entry it was found through: not a virtualenv or package
    // directory below it that is on sys.path too, and not an extension
    // (those cannot be loaded twice).
    let deeper: Vec<String> = search
        .iter()
        .filter_map(|entry| entry.extract::<String>().ok())
        .map(|entry| format!("{}/", entry.trim_end_matches('/')))
        .filter(|entry| entry.len() > inside.len() && entry.starts_with(&inside))
        .collect();
    let is_ours = |file: &str| {
        file.starts_with(&inside)
            && file.ends_with(".py")
            && !deeper.iter().any(|entry| file.starts_with(entry.as_str()))
            && !file[inside.len()..].contains("-packages/")
    };
    let mut ours = Vec::new();
    // A copy: reading a module's attributes may import (and so change the
    // dict being walked).
    for (name, module) in modules.copy()?.iter() {
        let file = module
            .getattr("__file__")
            .and_then(|file| file.extract::<String>());
        if file.is_ok_and(|file| is_ours(&file)) {
            ours.push(name);
        }
    }
    for name in ours {
        modules.del_item(name)?;
    }
    Ok(())
}

fn take_pending() -> Vec<Handler> {
    std::mem::take(&mut *PENDING.lock().unwrap_or_else(|p| p.into_inner()))
}

fn register_handler(kind: HandlerKind, methods: Option<Vec<String>>, func: Py<PyAny>) {
    PENDING
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Handler {
            kind,
            methods,
            func,
        });
}

/// The Call-ID an error line names, so that it can be found in a trace.
fn call_id_of(msg: &crate::sip::Message) -> &str {
    msg.call_id().unwrap_or("-")
}

/// The traceback of a Python exception as Python itself prints it.
fn format_exception(py: Python<'_>, err: &PyErr) -> String {
    let formatted = py.import("traceback").and_then(|tb| {
        let lines = tb.call_method1(
            "format_exception",
            (err.get_type(py), err.value(py), err.traceback(py)),
        )?;
        let joined = pyo3::types::PyString::new(py, "").call_method1("join", (lines,))?;
        joined.extract::<String>()
    });
    formatted.unwrap_or_else(|_| err.to_string())
}
