//! The Python `auth` namespace: `auth.check(request) -> bool` over the
//! process's [`DigestAuth`] (the `auth:` section of the config).

use std::sync::{Arc, Mutex};

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

use super::request::Request;
use crate::security::digest::{DigestAuth, Outcome, Secret};

/// Digest authentication shared by every shard. Checks are rare (one per
/// challenge answered) and short, so one lock is enough.
pub struct AuthService {
    digest: Mutex<DigestAuth>,
    credentials_file: Option<std::path::PathBuf>,
    configured: std::collections::HashMap<String, Secret>,
}

impl AuthService {
    /// The service for `config`'s `auth:` section, with a fresh nonce key.
    pub fn from_config(config: &crate::config::AuthConfig) -> Result<Arc<Self>, String> {
        let users = config
            .users()
            .map_err(|e| format!("auth.{}: {}", e.key, e.message))?;
        let mut configured = std::collections::HashMap::new();
        for (user, value) in &config.credentials {
            if let Ok(secret) = Secret::parse(value) {
                configured.insert(user.clone(), secret);
            }
        }
        let key: [u8; 32] = rand::random();
        let algorithms = config
            .algorithms
            .iter()
            .filter_map(|name| crate::security::digest::Algorithm::from_name(name))
            .collect();
        Ok(Arc::new(AuthService {
            digest: Mutex::new(
                DigestAuth::new(config.realm.clone(), users, config.nonce_ttl_secs, key)
                    .with_algorithms(algorithms),
            ),
            credentials_file: config.credentials_file.clone(),
            configured,
        }))
    }

    fn digest(&self) -> std::sync::MutexGuard<'_, DigestAuth> {
        self.digest.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads `credentials_file` again (SIGHUP); on error the old users stay.
    pub fn reload(&self) -> Result<usize, String> {
        let Some(path) = &self.credentials_file else {
            return Ok(self.digest().user_count());
        };
        let from_file = crate::config::read_credentials_file(path).map_err(|e| e.message)?;
        let mut users = self.configured.clone();
        users.extend(from_file);
        let count = users.len();
        self.digest().set_users(users);
        Ok(count)
    }

    /// Forgets the nonce counts of expired nonces (the bound on that table).
    pub fn sweep(&self, now: u64) {
        self.digest().forget_expired(now);
    }

    fn check(&self, method: &str, ruri: &str, credentials: Vec<&str>) -> (Outcome, Vec<String>) {
        let now = crate::registrar::unix_now();
        let mut digest = self.digest();
        let outcome = digest.check(now, method, ruri, credentials);
        let challenges = match &outcome {
            Outcome::Authenticated(_) => Vec::new(),
            Outcome::Challenge { stale } => digest.challenges(now, *stale),
        };
        (outcome, challenges)
    }
}

/// `auth`: digest authentication of requests.
#[pyclass(name = "Auth", module = "siphon", frozen)]
pub(super) struct AuthApi {
    service: Option<Arc<AuthService>>,
}

impl AuthApi {
    pub(super) fn new(service: Option<Arc<AuthService>>) -> Self {
        AuthApi { service }
    }
}

#[pymethods]
impl AuthApi {
    /// True when the config has an `auth:` section.
    #[getter]
    fn enabled(&self) -> bool {
        self.service.is_some()
    }

    /// The realm challenges name, or None without `auth:`.
    #[getter]
    fn realm(&self) -> Option<String> {
        self.service
            .as_ref()
            .map(|s| s.digest().realm().to_string())
    }

    /// True when the request carries valid credentials (and sets
    /// `request.auth_user`); otherwise records the challenge as the reply
    /// (401 + WWW-Authenticate for REGISTER and requests to a local domain,
    /// else 407 + Proxy-Authenticate) and returns False.
    fn check(&self, request: &Bound<'_, Request>) -> PyResult<bool> {
        let Some(service) = &self.service else {
            return Err(PyRuntimeError::new_err(
                "auth.check needs an `auth:` section (realm and credentials) in the config",
            ));
        };
        // The second run of a request that waited for a Redis read: the
        // first run's check passed, and its nonce-count is spent.
        if let Some(user) = super::rerun::replayed_authentication() {
            request.borrow_mut().set_auth_user(user)?;
            return Ok(true);
        }
        let (outcome, proxy_auth) = {
            let request = request.borrow();
            let msg = request.message()?;
            let ruri = msg.request_uri().unwrap_or("");
            let to_registrar =
                msg.method() == Some(crate::sip::Method::Register) || request.ruri_is_local()?;
            let header = if to_registrar {
                "Authorization"
            } else {
                "Proxy-Authorization"
            };
            let credentials: Vec<&str> = msg
                .headers()
                .iter()
                .filter(|h| h.name_str(msg).eq_ignore_ascii_case(header))
                .map(|h| h.value(msg))
                .collect();
            (
                service.check(msg.method_str(), ruri, credentials),
                !to_registrar,
            )
        };
        let (outcome, challenges) = outcome;
        let metrics = crate::metrics::get();
        match outcome {
            Outcome::Authenticated(user) => {
                metrics.auth_check("ok");
                super::rerun::record_authentication(&user);
                request.borrow_mut().set_auth_user(user)?;
                Ok(true)
            }
            Outcome::Challenge { stale } => {
                metrics.auth_check(if stale { "stale" } else { "challenge" });
                let (code, reason, name) = if proxy_auth {
                    (407, "Proxy Authentication Required", "Proxy-Authenticate")
                } else {
                    (401, "Unauthorized", "WWW-Authenticate")
                };
                let headers = challenges
                    .into_iter()
                    .map(|value| (name.to_string(), value))
                    .collect();
                request
                    .borrow_mut()
                    .reply_with(code, Some(reason.to_string()), headers)?;
                Ok(false)
            }
        }
    }
}
