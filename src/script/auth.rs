//! The Python `auth` namespace: `auth.check(request) -> bool` over the
//! process's [`DigestAuth`] (the `auth:` section of the config).

use std::sync::{Arc, Mutex};

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

use super::request::Request;
use crate::security::digest::{DigestAuth, Outcome, Secret};
use crate::security::guesses::AuthFailures;
use crate::security::{BanReason, Banning, Channel};

/// Digest authentication shared by every script executor. Checks are rare (one per
/// challenge answered) and short, so one lock is enough.
pub struct AuthService {
    digest: Mutex<DigestAuth>,
    /// The users' sources and the ban, as configured (a reload changes them).
    settings: Mutex<AuthSettings>,
    /// Failed checks by source and by user.
    failures: Mutex<AuthFailures>,
    /// Where a guesser's source is banned (set at boot; `siphon --check`
    /// and the dry run have none).
    edge: std::sync::OnceLock<Arc<dyn Banning>>,
    /// Bans and locks are logged at most once a second.
    warnings: crate::logging::Throttle,
}

/// Where the users come from, and how long a guesser is banned.
struct AuthSettings {
    credentials_file: Option<std::path::PathBuf>,
    configured: std::collections::HashMap<String, Secret>,
    ban: std::time::Duration,
    failure_limits: (u32, u64),
    /// Whether `nonce_secret` keys the nonces (else a random key).
    shared_key: bool,
}

impl AuthSettings {
    fn of(config: &crate::config::AuthConfig) -> Self {
        let configured = config
            .credentials
            .iter()
            .filter_map(|(user, value)| Some((user.clone(), Secret::parse(value).ok()?)))
            .collect();
        AuthSettings {
            credentials_file: config.credentials_file.clone(),
            configured,
            ban: std::time::Duration::from_secs(config.ban_secs),
            failure_limits: (config.max_failures, config.failure_window_secs),
            shared_key: config.nonce_secret.is_some(),
        }
    }
}

/// The nonce key of `auth.nonce_secret`: a shared secret lets every node
/// verify the others' nonces. None when it is not set.
fn nonce_key(config: &crate::config::AuthConfig) -> Option<[u8; 32]> {
    use sha2::Digest;
    let secret = config.nonce_secret.as_deref()?;
    Some(sha2::Sha256::digest(secret.trim().as_bytes()).into())
}

fn algorithms(config: &crate::config::AuthConfig) -> Vec<crate::security::digest::Algorithm> {
    config
        .algorithms
        .iter()
        .filter_map(|name| crate::security::digest::Algorithm::from_name(name))
        .collect()
}

fn users_of(
    config: &crate::config::AuthConfig,
) -> Result<std::collections::HashMap<String, Secret>, String> {
    config
        .users()
        .map_err(|e| format!("auth.{}: {}", e.key, e.message))
}

impl AuthService {
    /// The service for `config`'s `auth:` section, with a fresh nonce key
    /// unless `nonce_secret` sets one.
    pub fn from_config(config: &crate::config::AuthConfig) -> Result<Arc<Self>, String> {
        let key = nonce_key(config).unwrap_or_else(rand::random);
        let settings = AuthSettings::of(config);
        Ok(Arc::new(AuthService {
            digest: Mutex::new(
                DigestAuth::new(
                    config.realm.clone(),
                    users_of(config)?,
                    config.nonce_ttl_secs,
                    key,
                )
                .with_algorithms(algorithms(config)),
            ),
            failures: Mutex::new(AuthFailures::new(
                settings.failure_limits.0,
                settings.failure_limits.1,
            )),
            settings: Mutex::new(settings),
            edge: std::sync::OnceLock::new(),
            warnings: crate::logging::Throttle::new(std::time::Duration::from_secs(1)),
        }))
    }

    /// A reload's `auth:` section: realm, users, nonce lifetime and key,
    /// algorithms and the failure limits. Nonces issued stay good unless
    /// the realm or the key changed, and the failures counted so far stay.
    /// Returns the number of users.
    pub fn configure(&self, config: &crate::config::AuthConfig) -> Result<usize, String> {
        let users = users_of(config)?;
        let count = users.len();
        let settings = AuthSettings::of(config);
        let (max_failures, window) = settings.failure_limits;
        let was_shared = std::mem::replace(&mut *self.settings(), settings).shared_key;
        self.failures().set_limits(max_failures, window);
        // A shared secret taken out (leaked, say): a key of our own again.
        let key = match nonce_key(config) {
            None if was_shared => Some(rand::random()),
            key => key,
        };
        self.digest().reconfigure(
            crate::registrar::unix_now(),
            (config.realm.clone(), config.nonce_ttl_secs),
            key,
            algorithms(config),
            users,
        );
        Ok(count)
    }

    fn settings(&self) -> std::sync::MutexGuard<'_, AuthSettings> {
        self.settings.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where sources that fail too often are banned.
    pub fn ban_at(&self, edge: Arc<dyn Banning>) {
        let _ = self.edge.set(edge);
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, AuthFailures> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a failed check of `user` from `source` over `channel`: the
    /// source is banned and the user locked once they reach the limit.
    /// The warning lines are throttled: a botnet may cause one per source.
    fn failed(
        &self,
        now: u64,
        (source, channel): (std::net::IpAddr, Channel),
        user: &str,
        issued: bool,
    ) {
        let verdict = self.failures().record(now, source, user, issued);
        let metrics = crate::metrics::get();
        if verdict.ban_source {
            metrics.auth_check("source_banned");
            if let Some(held_back) = self.warnings.allow() {
                tracing::warn!(%source, failures = verdict.source_failures, held_back, "auth: too many failed checks; source banned");
            }
            if let Some(edge) = self.edge.get() {
                let ban = self.settings().ban;
                edge.ban(source, channel, ban, BanReason::AuthFailures);
            }
        }
        if verdict.user_locked {
            metrics.auth_check("user_locked");
            if let Some(held_back) = self.warnings.allow() {
                tracing::warn!(%user, held_back, "auth: too many failed checks; user locked (403) for a while");
            }
        }
    }

    fn is_locked(&self, now: u64, user: &str) -> bool {
        self.failures().is_locked(now, user)
    }

    fn digest(&self) -> std::sync::MutexGuard<'_, DigestAuth> {
        self.digest.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads `credentials_file` again (SIGHUP); on error the old users stay.
    pub fn reload(&self) -> Result<usize, String> {
        let (path, mut users) = {
            let settings = self.settings();
            (
                settings.credentials_file.clone(),
                settings.configured.clone(),
            )
        };
        let Some(path) = path else {
            return Ok(self.digest().user_count());
        };
        let from_file = crate::config::read_credentials_file(&path).map_err(|e| e.message)?;
        users.extend(from_file);
        let count = users.len();
        self.digest().set_users(users);
        Ok(count)
    }

    /// Forgets the nonce counts of expired nonces and the failures of
    /// past windows (the bound on those tables).
    pub fn sweep(&self, now: u64) {
        self.digest().forget_expired(now);
        self.failures().sweep(now);
    }

    fn check(&self, method: &str, ruri: &str, credentials: Vec<&str>) -> (Outcome, Vec<String>) {
        let now = crate::registrar::unix_now();
        let mut digest = self.digest();
        let outcome = digest.check(now, method, ruri, credentials);
        let challenges = match &outcome {
            Outcome::Authenticated(_) => Vec::new(),
            Outcome::Challenge { stale } => digest.challenges(now, *stale),
            Outcome::Failed { .. } => digest.challenges(now, false),
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
        let (outcome, proxy_auth, source, channel) = {
            let request = request.borrow();
            let msg = request.message()?;
            let ruri = msg.request_uri().unwrap_or("");
            // A registrar challenges with 401; anything else is relayed,
            // and a proxy challenges with 407 (RFC 3261 §22.3).
            let to_registrar = msg.method() == Some(crate::sip::Method::Register);
            let (source, protocol) = request.source()?;
            let channel = if protocol == crate::sip::Protocol::Udp {
                Channel::Datagram
            } else {
                Channel::Stream
            };
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
                source.ip(),
                channel,
            )
        };
        let (outcome, challenges) = outcome;
        let metrics = crate::metrics::get();
        let now = crate::registrar::unix_now();
        let named = match &outcome {
            Outcome::Authenticated(user) | Outcome::Failed { user, .. } => Some(user.as_str()),
            Outcome::Challenge { .. } => None,
        };
        if let Some(user) = named.filter(|user| service.is_locked(now, user)) {
            metrics.auth_check("locked");
            tracing::debug!(%user, %source, "auth: user locked after failed checks; 403");
            request
                .borrow_mut()
                .reply_with(403, Some("Forbidden".to_string()), Vec::new())?;
            return Ok(false);
        }
        if let Outcome::Failed { user, issued } = &outcome {
            service.failed(now, (source, channel), user, *issued);
        }
        match outcome {
            Outcome::Authenticated(user) => {
                metrics.auth_check("ok");
                super::rerun::record_authentication(&user);
                request.borrow_mut().set_auth_user(user)?;
                Ok(true)
            }
            Outcome::Challenge { .. } | Outcome::Failed { .. } => {
                let label = match outcome {
                    Outcome::Challenge { stale: true } => "stale",
                    Outcome::Failed { .. } => "failed",
                    _ => "challenge",
                };
                metrics.auth_check(label);
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
