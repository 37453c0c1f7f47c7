//! The `siphon` Python module: `proxy` (the handler decorator) and `log`.

use pyo3::prelude::*;
use pyo3::types::{PyModule, PyString};

use super::{register_handler, HandlerKind};

/// `proxy`: `@proxy.on_request` or `@proxy.on_request("INVITE|BYE")`.
#[pyclass(name = "Proxy", module = "siphon", frozen)]
struct ProxyApi;

#[pymethods]
impl ProxyApi {
    /// Used bare on a function, registers it for every method; called with a
    /// `"A|B"` string, returns a decorator that registers for those methods.
    fn on_request(&self, py: Python<'_>, target: Py<PyAny>) -> PyResult<Py<PyAny>> {
        let bound = target.bind(py);
        if let Ok(filter) = bound.cast::<PyString>() {
            let methods = filter
                .to_str()?
                .split('|')
                .map(|m| m.trim().to_ascii_uppercase())
                .filter(|m| !m.is_empty())
                .collect::<Vec<_>>();
            if methods.is_empty() {
                return Err(pyo3::exceptions::PyValueError::new_err(
                    "on_request: empty method filter",
                ));
            }
            return Ok(Py::new(py, MethodDecorator { methods })?.into_any());
        }
        if !bound.is_callable() {
            return Err(pyo3::exceptions::PyTypeError::new_err(
                "on_request takes a function or a method filter such as \"INVITE|BYE\"",
            ));
        }
        register_handler(HandlerKind::Request, None, target.clone_ref(py));
        Ok(target)
    }

    /// `@proxy.on_failure`: called with `(request, response)` when every
    /// branch of a relayed request failed and failover (if any) ran out;
    /// `response` is the best final response, or None on a timeout. The
    /// handler may `relay()` again or `reply()`; doing nothing sends the
    /// best response.
    fn on_failure(&self, py: Python<'_>, func: Py<PyAny>) -> PyResult<Py<PyAny>> {
        if !func.bind(py).is_callable() {
            return Err(pyo3::exceptions::PyTypeError::new_err(
                "on_failure decorates a function taking (request, response)",
            ));
        }
        register_handler(HandlerKind::Failure, None, func.clone_ref(py));
        Ok(func)
    }
}

/// The final response `@proxy.on_failure` receives.
#[pyclass(name = "Response", module = "siphon", frozen)]
pub(super) struct Response {
    msg: crate::sip::Message,
}

impl Response {
    pub(super) fn new(msg: crate::sip::Message) -> Self {
        Response { msg }
    }
}

#[pymethods]
impl Response {
    #[getter]
    fn status(&self) -> u16 {
        self.msg.status().unwrap_or(0)
    }

    #[getter]
    fn reason(&self) -> String {
        self.msg.reason().unwrap_or("").to_string()
    }

    /// The first value of header `name` (any case, compact forms too).
    fn header(&self, name: &str) -> Option<String> {
        self.msg.header_named(name).map(str::to_string)
    }

    fn __repr__(&self) -> String {
        format!("<Response {} {}>", self.status(), self.reason())
    }
}

/// What `@proxy.on_request("INVITE|BYE")` returns.
#[pyclass(module = "siphon", frozen)]
struct MethodDecorator {
    methods: Vec<String>,
}

#[pymethods]
impl MethodDecorator {
    fn __call__(&self, py: Python<'_>, func: Py<PyAny>) -> PyResult<Py<PyAny>> {
        if !func.bind(py).is_callable() {
            return Err(pyo3::exceptions::PyTypeError::new_err(
                "on_request(...) decorates a function",
            ));
        }
        register_handler(
            HandlerKind::Request,
            Some(self.methods.clone()),
            func.clone_ref(py),
        );
        Ok(func)
    }
}

/// `log`: script messages go to the daemon's log with target `siphon::script`.
#[pyclass(name = "Log", module = "siphon", frozen)]
struct LogApi;

/// A script's log line, with the call it is about (looked up only when
/// the line's level is on).
macro_rules! script_log {
    ($level:ident, $tracing_level:ident, $msg:expr) => {
        if tracing::enabled!(target: "siphon::script", tracing::Level::$tracing_level) {
            super::call_log::with_call(|call_id, trace_id| {
                tracing::$level!(target: "siphon::script", call_id, trace_id, "{}", $msg)
            })
        }
    };
}

#[pymethods]
impl LogApi {
    fn debug(&self, msg: &str) {
        script_log!(debug, DEBUG, msg);
    }
    fn info(&self, msg: &str) {
        script_log!(info, INFO, msg);
    }
    fn warning(&self, msg: &str) {
        script_log!(warn, WARN, msg);
    }
    fn warn(&self, msg: &str) {
        script_log!(warn, WARN, msg);
    }
    fn error(&self, msg: &str) {
        script_log!(error, ERROR, msg);
    }
}

/// Creates the `siphon` module and puts it in `sys.modules`, so that
/// `from siphon import proxy, log` works in the script.
pub(super) fn register_module(py: Python<'_>, services: &super::ScriptServices) -> PyResult<()> {
    let module = PyModule::new(py, "siphon")?;
    module.add("proxy", Py::new(py, ProxyApi)?)?;
    module.add("log", Py::new(py, LogApi)?)?;
    let gateway = super::gateway::GatewayApi::new(services.gateways.clone());
    module.add("gateway", Py::new(py, gateway)?)?;
    super::registrar::register(&module, services.registrar.clone())?;
    module.add(
        "auth",
        Py::new(py, super::auth::AuthApi::new(services.auth.clone()))?,
    )?;
    // Sleeping handlers must be interruptible by the watchdog.
    let sleep = pyo3::wrap_pyfunction!(super::watchdog::interruptible_sleep, &module)?;
    py.import("time")?.setattr("sleep", sleep)?;
    module.add_class::<super::request::Request>()?;
    module.add_class::<super::request::Uri>()?;
    module.add_class::<Response>()?;
    module.add_class::<super::gateway::PyDestination>()?;
    py.import("sys")?
        .getattr("modules")?
        .set_item("siphon", module)?;
    Ok(())
}
