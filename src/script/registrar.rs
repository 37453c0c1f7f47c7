//! The Python `registrar` namespace: `registrar.save(request)` and
//! `registrar.lookup(uri) -> list[Contact]`, over the process-wide
//! [`crate::registrar::Registrar`] that boot installs.

use std::sync::{Arc, OnceLock};

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use super::request::Request;
use crate::registrar::{self, Registrar};

pyo3::create_exception!(
    siphon,
    LookupPending,
    pyo3::exceptions::PyBaseException,
    "Ends a handler whose registrar.lookup must first read Redis; the proxy runs it again once read. A BaseException, so `except Exception` does not swallow it."
);

/// `registrar`: the bindings of this node.
#[pyclass(name = "Registrar", module = "siphon", frozen)]
pub(super) struct RegistrarApi {
    registrar: Arc<OnceLock<Arc<Registrar>>>,
}

impl RegistrarApi {
    fn installed(&self) -> PyResult<&Registrar> {
        self.registrar
            .get()
            .map(|r| r.as_ref())
            .ok_or_else(|| PyRuntimeError::new_err("the registrar is not running in this process"))
    }
}

#[pymethods]
impl RegistrarApi {
    /// Processes a REGISTER (RFC 3261 §10.3) and records the reply (200 with
    /// the bindings, or the error); the proxy sends it when the handler
    /// returns. Returns the status code.
    fn save(&self, request: &Bound<'_, Request>) -> PyResult<u16> {
        let registrar = self.installed()?;
        let reply = {
            let request = request.borrow();
            let msg = request.message()?;
            if msg.method() != Some(crate::sip::Method::Register) {
                return Err(PyValueError::new_err(format!(
                    "registrar.save takes a REGISTER, not {}",
                    msg.method_str()
                )));
            }
            registrar.save(msg, registrar::unix_now())
        };
        request
            .borrow_mut()
            .reply_with(reply.code, Some(reply.reason), reply.headers)?;
        Ok(reply.code)
    }

    /// The live contacts registered for `uri` (a string, or `request.ruri` /
    /// `request.to_uri`), highest q first. With Redis, a miss here reads the
    /// bindings other nodes wrote: the handler stops, and runs again once
    /// they are read.
    fn lookup(&self, uri: &Bound<'_, PyAny>) -> PyResult<Vec<Contact>> {
        let registrar = self.installed()?;
        let text = uri.str()?.to_string();
        let started = super::rerun::traced().then(std::time::Instant::now);
        match registrar.lookup_shared(&text, registrar::unix_now()) {
            registrar::Lookup::Contacts(contacts) => {
                if let Some(started) = started {
                    let aor = registrar.aor_of_uri(&text);
                    super::rerun::record_lookup(&text, aor.as_deref(), contacts.len(), started);
                }
                Ok(contacts.into_iter().map(Contact::from).collect())
            }
            registrar::Lookup::Fetch(aor) => {
                if super::rerun::want_fetch(&aor) {
                    Err(LookupPending::new_err(aor))
                } else {
                    Ok(Vec::new())
                }
            }
        }
    }

    /// Number of bindings this node holds.
    fn count(&self) -> PyResult<usize> {
        Ok(self.installed()?.count())
    }
}

/// One registered contact: `.uri`, `.q`, `.expires` (seconds left) and
/// `.path` (Route-ready strings); `str(contact)` is its URI, so it can be
/// handed to `request.fork` or `request.relay`.
#[pyclass(module = "siphon", frozen, str)]
pub struct Contact {
    #[pyo3(get)]
    uri: String,
    #[pyo3(get)]
    q: f32,
    #[pyo3(get)]
    expires: u64,
    #[pyo3(get)]
    path: Vec<String>,
}

impl From<registrar::Contact> for Contact {
    fn from(contact: registrar::Contact) -> Self {
        Contact {
            uri: contact.uri,
            q: contact.q,
            expires: contact.expires,
            path: contact.path,
        }
    }
}

impl std::fmt::Display for Contact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.uri)
    }
}

#[pymethods]
impl Contact {
    fn __repr__(&self) -> String {
        format!(
            "<Contact {} q={} expires={}>",
            self.uri, self.q, self.expires
        )
    }
}

/// Adds `registrar` and the `Contact` type to the `siphon` module.
pub(super) fn register(
    module: &Bound<'_, PyModule>,
    registrar: Arc<OnceLock<Arc<Registrar>>>,
) -> PyResult<()> {
    module.add(
        "registrar",
        Py::new(module.py(), RegistrarApi { registrar })?,
    )?;
    module.add_class::<Contact>()?;
    Ok(())
}
