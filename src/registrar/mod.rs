//! The registrar: bindings of addresses of record to contacts, shared by the
//! script workers (`registrar.save` / `registrar.lookup`).
//!
//! The bindings live in memory behind one mutex, held only for a map lookup
//! and a small vector copy, because lookups sit on the INVITE path. The RFC
//! 3261 rules are in [`rules`]; with `backend: redis` every change is also
//! queued to the write-through task in [`redis_store`], which never makes a
//! REGISTER wait. A background thread sweeps expired bindings every second.
//!
//! With Redis, a lookup that misses in memory may be for a subscriber that
//! registered on another node (a dead backend's users that the hash moved
//! here): [`Registrar::lookup_shared`] then says to read the AoR from Redis
//! ([`Registrar::fetch`], on the registrar's thread, within
//! `redis.lookup_timeout_ms`), and the answer, found or not, is kept for a
//! second or two so that the retry and the next calls do not read again.

pub mod redis_store;
pub mod rules;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::mpsc::UnboundedSender;

use crate::config::{RegistrarBackend, RegistrarConfig};
use crate::sip::Message;

pub use rules::{Binding, Limits, LocalDomains, Reply};

/// How often expired bindings are dropped from memory.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// A Redis read of a local miss is used for this many more whole seconds
/// (so for 1 to 2 s).
const SHARED_CACHE_SECS: u64 = 1;
/// The most AoRs read from Redis kept at once.
const SHARED_CACHE_MAX: usize = 100_000;

/// The hosts that name this node, for AoR folding: `domain.local` first (its
/// first entry is the canonical domain), then the advertised host and the
/// listen addresses (`0.0.0.0` counts as 127.0.0.1).
pub fn node_domains(
    local: &[String],
    advertise: Option<&str>,
    listen: &[std::net::SocketAddr],
) -> LocalDomains {
    let mut hosts: Vec<String> = local.to_vec();
    hosts.extend(advertise.map(str::to_string));
    for addr in listen {
        if addr.ip().is_unspecified() {
            hosts.push("127.0.0.1".to_string());
        } else {
            hosts.push(crate::sip::uri::host_text(addr));
        }
    }
    LocalDomains::new(hosts)
}

/// Starts thread `name` with a tokio runtime of its own (current-thread)
/// and runs `body` there: the registrar's Redis work, and shared health, so
/// that Redis never holds up a SIP thread. A runtime that cannot start is
/// logged, and the thread ends.
pub fn spawn_runtime_thread(
    name: &str,
    body: impl FnOnce(&tokio::runtime::Runtime) + Send + 'static,
) -> Result<(), String> {
    let label = name.to_string();
    std::thread::Builder::new()
        .name(label.clone())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => body(&runtime),
                Err(e) => tracing::error!("{label}: cannot start its runtime: {e}"),
            }
        })
        .map(drop)
        .map_err(|e| format!("cannot start the {name} thread: {e}"))
}

/// Wall-clock Unix seconds: binding expiries are absolute so they survive a
/// restart through Redis.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A live binding as a lookup returns it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Contact {
    pub uri: String,
    /// 0.0..=1.0
    pub q: f32,
    /// Seconds left.
    pub expires: u64,
    /// Route set to reach the contact through (RFC 3327 Path).
    pub path: Vec<String>,
}

/// A binding as the admin API shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BindingView {
    pub uri: String,
    pub q: f32,
    pub expires: u64,
    pub path: Vec<String>,
    pub call_id: String,
    pub cseq: u32,
}

impl Contact {
    fn from_binding(binding: &Binding, now: u64) -> Contact {
        Contact {
            uri: binding.uri.clone(),
            q: f32::from(binding.q) / 1000.0,
            expires: binding.remaining(now),
            path: binding.path.clone(),
        }
    }
}

/// The bindings of every AoR, and where to report changes for Redis.
pub struct Registrar {
    /// Expiry bounds and the contact limit; a reload changes them.
    limits: std::sync::RwLock<Limits>,
    domains: LocalDomains,
    bindings: Mutex<HashMap<String, Vec<Binding>>>,
    /// AoRs whose bindings changed, for the Redis writer (None: memory only).
    changes: Option<UnboundedSender<String>>,
    /// The bindings other nodes wrote (None: memory only).
    shared: Option<Shared>,
}

/// What a lookup found, when other nodes' bindings count too.
#[derive(Debug, PartialEq)]
pub enum Lookup {
    Contacts(Vec<Contact>),
    /// Not in memory, and Redis not read lately: read this AoR
    /// ([`Registrar::fetch`]), then look up again.
    Fetch(String),
}

/// Reads of other nodes' bindings from Redis, and the answers kept briefly.
struct Shared {
    link: Arc<redis_store::Link>,
    keys: redis_store::Keys,
    timeout: Duration,
    /// The registrar thread's runtime, where reads run.
    runtime: std::sync::OnceLock<tokio::runtime::Handle>,
    /// AoR -> (Unix second it was read, the bindings read).
    cache: Mutex<HashMap<String, (u64, Vec<Binding>)>>,
    failures: crate::logging::Throttle,
}

impl Shared {
    fn new(config: &crate::config::RedisConfig, instance: &str) -> Result<Shared, String> {
        Ok(Shared {
            link: Arc::new(redis_store::Link::new(config)?),
            keys: redis_store::Keys::new(&config.key_prefix, instance),
            timeout: Duration::from_millis(config.lookup_timeout_ms),
            runtime: std::sync::OnceLock::new(),
            cache: Mutex::new(HashMap::new()),
            failures: crate::logging::Throttle::new(Duration::from_secs(5)),
        })
    }

    fn cached(&self, aor: &str, now: u64) -> Option<Vec<Binding>> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let (read_at, bindings) = cache.get(aor)?;
        (now <= read_at + SHARED_CACHE_SECS).then(|| {
            bindings
                .iter()
                .filter(|b| b.is_live(now))
                .cloned()
                .collect()
        })
    }

    fn remember(&self, aor: String, bindings: Vec<Binding>, now: u64) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= SHARED_CACHE_MAX {
            cache.retain(|_, (read_at, _)| now <= *read_at + SHARED_CACHE_SECS);
            if cache.len() >= SHARED_CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(aor, (now, bindings));
    }
}

impl From<&RegistrarConfig> for Limits {
    fn from(config: &RegistrarConfig) -> Limits {
        Limits {
            default_expires: config.default_expires,
            min_expires: config.min_expires,
            max_expires: config.max_expires,
            max_contacts: config.max_contacts,
        }
    }
}

impl Registrar {
    /// A memory-only registrar (no sweeper thread: call [`Registrar::sweep`]).
    pub fn new(limits: Limits, domains: LocalDomains) -> Registrar {
        Registrar {
            limits: std::sync::RwLock::new(limits),
            domains,
            bindings: Mutex::new(HashMap::new()),
            changes: None,
            shared: None,
        }
    }

    /// Builds the registrar the config asks for and starts its background
    /// thread (sweeper, and for Redis the write-through task). With Redis,
    /// restores every stored binding first, waiting at most a few seconds; if
    /// Redis is down it starts empty and the restore is retried in the
    /// background.
    /// `instance` names this node's share of the Redis keys, and `node`
    /// tells this node from another that would use the same name (its host
    /// and SIP addresses); `writer_stats` counts the Redis writer's flushes.
    pub fn start(
        config: &RegistrarConfig,
        domains: LocalDomains,
        (instance, node): (&str, &str),
        writer_stats: &'static crate::metrics::ActorStats,
    ) -> Result<Arc<Registrar>, String> {
        let limits = Limits::from(config);
        let mut registrar = Registrar::new(limits, domains);
        let store = match config.backend {
            RegistrarBackend::Memory => None,
            RegistrarBackend::Redis => {
                let shared = Shared::new(&config.redis, instance)?;
                let store = redis_store::RedisStore::new(
                    shared.link.clone(),
                    shared.keys.clone(),
                    (node, writer_stats),
                );
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                registrar.changes = Some(tx);
                registrar.shared = Some(shared);
                Some((store, rx))
            }
        };
        let registrar = Arc::new(registrar);
        let (restored_tx, restored_rx) = std::sync::mpsc::channel();
        let background = registrar.clone();
        spawn_runtime_thread("registrar", move |runtime| {
            if let Some(shared) = &background.shared {
                let _ = shared.runtime.set(runtime.handle().clone());
            }
            runtime.block_on(async move {
                let sweeper = background.clone();
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
                    loop {
                        tick.tick().await;
                        sweeper.sweep(unix_now());
                    }
                });
                match store {
                    Some((store, rx)) => store.run(background, rx, restored_tx).await,
                    None => std::future::pending::<()>().await,
                }
            });
        })?;
        if config.backend == RegistrarBackend::Redis {
            // The writer reports once the boot restore is done or has failed.
            let _ = restored_rx.recv_timeout(redis_store::RESTORE_WAIT);
        }
        Ok(registrar)
    }

    pub fn limits(&self) -> Limits {
        *self.limits.read().unwrap_or_else(|p| p.into_inner())
    }

    /// New expiry bounds and contact limit (a reload's `registrar`).
    pub fn set_limits(&self, limits: Limits) {
        *self.limits.write().unwrap_or_else(|p| p.into_inner()) = limits;
    }

    pub fn domains(&self) -> &LocalDomains {
        &self.domains
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Vec<Binding>>> {
        self.bindings.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn changed(&self, aor: &str) {
        if let Some(changes) = &self.changes {
            let _ = changes.send(aor.to_string());
        }
    }

    /// Processes a REGISTER (RFC 3261 §10.3) and returns the reply to send.
    /// The change is applied in memory before this returns and queued for
    /// Redis; Redis being slow or down never fails or delays it.
    pub fn save(&self, msg: &Message, now: u64) -> Reply {
        let aor = match self.domains.aor_of(msg) {
            Ok(aor) => aor,
            Err(reply) => return reply,
        };
        let request = match rules::parse_register(msg, &self.limits()) {
            Ok(request) => request,
            Err(reply) => return reply,
        };
        let (result, changed) = {
            let mut map = self.map();
            let current = map.get(&aor).map_or(&[][..], Vec::as_slice);
            match rules::apply(&request, current, &self.limits(), now) {
                Err(reply) => (Err(reply), false),
                Ok(bindings) => {
                    let changed = bindings.as_slice() != current;
                    if changed {
                        if bindings.is_empty() {
                            map.remove(&aor);
                        } else {
                            map.insert(aor.clone(), bindings.clone());
                        }
                    }
                    (Ok(bindings), changed)
                }
            }
        };
        match result {
            Err(reply) => reply,
            Ok(bindings) => {
                if changed {
                    self.changed(&aor);
                }
                rules::ok_reply(&request, &bindings, now)
            }
        }
    }

    /// The live contacts of the AoR named by `uri`, highest q first.
    /// Expired bindings found on the way are dropped.
    pub fn lookup(&self, uri: &str, now: u64) -> Vec<Contact> {
        let Some(aor) = self.domains.normalise(uri) else {
            return Vec::new();
        };
        let mut live = {
            let mut map = self.map();
            let Some(bindings) = map.get_mut(&aor) else {
                return Vec::new();
            };
            let before = bindings.len();
            bindings.retain(|b| b.is_live(now));
            let swept = bindings.len() != before;
            let live = bindings.clone();
            if live.is_empty() {
                map.remove(&aor);
            }
            drop(map);
            if swept {
                self.changed(&aor);
            }
            live
        };
        rules::rank(&mut live);
        live.iter().map(|b| Contact::from_binding(b, now)).collect()
    }

    /// The AoR `uri` names, as [`Lookup::Fetch`] writes it.
    pub fn aor_of_uri(&self, uri: &str) -> Option<String> {
        self.domains.normalise(uri)
    }

    /// [`Self::lookup`], and with Redis, on a miss, the bindings other
    /// nodes wrote when read lately, or else [`Lookup::Fetch`].
    pub fn lookup_shared(&self, uri: &str, now: u64) -> Lookup {
        let local = self.lookup(uri, now);
        let Some(shared) = &self.shared else {
            return Lookup::Contacts(local);
        };
        if !local.is_empty() {
            return Lookup::Contacts(local);
        }
        let Some(aor) = self.domains.normalise(uri) else {
            return Lookup::Contacts(local);
        };
        match shared.cached(&aor, now) {
            Some(mut bindings) => {
                rules::rank(&mut bindings);
                Lookup::Contacts(
                    bindings
                        .iter()
                        .map(|b| Contact::from_binding(b, now))
                        .collect(),
                )
            }
            None => Lookup::Fetch(aor),
        }
    }

    /// Reads `aor` (normalised, as [`Lookup::Fetch`] names it) from Redis
    /// on the registrar's thread and keeps the answer for
    /// [`Self::lookup_shared`]; an error or a timeout counts as no binding.
    /// None without Redis.
    pub fn fetch(self: &Arc<Self>, aor: String) -> Option<tokio::task::JoinHandle<()>> {
        let runtime = self.shared.as_ref()?.runtime.get()?.clone();
        let registrar = self.clone();
        Some(runtime.spawn(async move {
            let Some(shared) = &registrar.shared else {
                return;
            };
            let bindings = match shared.link.fetch(&shared.keys, &aor, shared.timeout).await {
                Ok(bindings) => {
                    let outcome = if bindings.is_empty() {
                        "absent"
                    } else {
                        "found"
                    };
                    crate::metrics::get().shared_lookup(outcome);
                    bindings
                }
                Err(e) => {
                    crate::metrics::get().shared_lookup("error");
                    if let Some(held_back) = shared.failures.allow() {
                        tracing::warn!(
                            store = %shared.link.name,
                            %aor,
                            held_back,
                            "registrar: cannot read another node's bindings from Redis ({e}); \
                             answering as if none"
                        );
                    }
                    Vec::new()
                }
            };
            shared.remember(aor, bindings, unix_now());
        }))
    }

    /// The AoR's live bindings for the admin API (`uri` is normalised like a
    /// lookup), highest q first.
    pub fn bindings(&self, uri: &str, now: u64) -> Vec<BindingView> {
        let mut live = self.snapshot_uri(uri, now);
        rules::rank(&mut live);
        live.iter()
            .map(|b| BindingView {
                uri: b.uri.clone(),
                q: f32::from(b.q) / 1000.0,
                expires: b.remaining(now),
                path: b.path.clone(),
                call_id: b.call_id.clone(),
                cseq: b.cseq,
            })
            .collect()
    }

    fn snapshot_uri(&self, uri: &str, now: u64) -> Vec<Binding> {
        match self.domains.normalise(uri) {
            Some(aor) => self.snapshot(&aor, now),
            None => Vec::new(),
        }
    }

    /// Live bindings of an already normalised AoR (what Redis should hold).
    pub fn snapshot(&self, aor: &str, now: u64) -> Vec<Binding> {
        self.map()
            .get(aor)
            .map(|list| list.iter().filter(|b| b.is_live(now)).cloned().collect())
            .unwrap_or_default()
    }

    /// Removes every binding of the AoR named by `uri`; returns how many.
    pub fn remove(&self, uri: &str) -> usize {
        let Some(aor) = self.domains.normalise(uri) else {
            return 0;
        };
        let removed = self.map().remove(&aor).map_or(0, |list| list.len());
        if removed > 0 {
            self.changed(&aor);
        }
        removed
    }

    /// Number of bindings held (live or not yet swept).
    pub fn count(&self) -> usize {
        self.map().values().map(Vec::len).sum()
    }

    /// True when a live binding's Contact is exactly `address` (port 5060
    /// when it names none): a relay there goes to a registered phone
    /// (`security::relay`). A walk over the bindings, asked only for a
    /// private target that nothing else vouched for.
    pub fn has_contact_at(&self, address: std::net::SocketAddr, now: u64) -> bool {
        self.map().values().flatten().any(|binding| {
            binding.is_live(now)
                && crate::sip::Uri::parse(&binding.uri).is_ok_and(|uri| {
                    let port = uri.port.unwrap_or(5060);
                    uri.host
                        .trim_matches(['[', ']'])
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|host| std::net::SocketAddr::new(host, port) == address)
                })
        })
    }

    /// The first `limit` AoRs in order with how many bindings each has,
    /// and how many AoRs there are in all.
    pub fn summary(&self, limit: usize) -> (usize, Vec<(String, usize)>) {
        let map = self.map();
        let mut aors: Vec<(String, usize)> = map
            .iter()
            .map(|(aor, bindings)| (aor.clone(), bindings.len()))
            .collect();
        drop(map);
        let total = aors.len();
        aors.sort_unstable();
        aors.truncate(limit);
        (total, aors)
    }

    /// Every AoR that has bindings.
    pub fn aors(&self) -> Vec<String> {
        self.map().keys().cloned().collect()
    }

    /// Drops expired bindings; returns how many went.
    pub fn sweep(&self, now: u64) -> usize {
        let mut emptied_or_changed = Vec::new();
        let mut dropped = 0;
        {
            let mut map = self.map();
            map.retain(|aor, list| {
                let before = list.len();
                list.retain(|b| b.is_live(now));
                if list.len() != before {
                    dropped += before - list.len();
                    emptied_or_changed.push(aor.clone());
                }
                !list.is_empty()
            });
        }
        for aor in &emptied_or_changed {
            self.changed(aor);
        }
        dropped
    }

    /// Merges bindings read back from storage: a contact already bound in
    /// memory keeps its in-memory state. Returns how many were added.
    pub fn restore(&self, aor: &str, stored: Vec<Binding>, now: u64) -> usize {
        let mut map = self.map();
        let list = map.entry(aor.to_string()).or_default();
        let mut added = 0;
        for binding in stored.into_iter().filter(|b| b.is_live(now)) {
            if !list
                .iter()
                .any(|b| rules::same_contact(&b.uri, &binding.uri))
            {
                list.push(binding);
                added += 1;
            }
        }
        if list.is_empty() {
            map.remove(aor);
        }
        added
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn registrar() -> Registrar {
        Registrar::new(
            Limits::default(),
            LocalDomains::new(["example.com", "127.0.0.1"]),
        )
    }

    fn register(user: &str, cseq: u32, contacts: &str) -> Message {
        let text = format!(
            "REGISTER sip:example.com SIP/2.0\r\n\
             Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK{cseq}\r\n\
             From: <sip:{user}@example.com>;tag=1\r\n\
             To: <sip:{user}@example.com>\r\n\
             Call-ID: {user}-call\r\n\
             CSeq: {cseq} REGISTER\r\n\
             Contact: {contacts}\r\n\
             Content-Length: 0\r\n\r\n"
        );
        crate::sip::parse(Bytes::from(text)).expect("test REGISTER parses")
    }

    #[test]
    fn save_then_lookup_by_any_local_alias() {
        let registrar = registrar();
        let reply = registrar.save(
            &register(
                "alice",
                1,
                "<sip:alice@10.0.0.1>;q=0.2, <sip:alice@10.0.0.2>;expires=120",
            ),
            1000,
        );
        assert_eq!(reply.code, 200);
        assert_eq!(reply.headers.len(), 2);
        let contacts = registrar.lookup("sip:alice@127.0.0.1:5080;transport=udp", 1010);
        let uris: Vec<&str> = contacts.iter().map(|c| c.uri.as_str()).collect();
        assert_eq!(uris, ["sip:alice@10.0.0.2", "sip:alice@10.0.0.1"]);
        assert_eq!(contacts[0].expires, 110);
        assert!((contacts[1].q - 0.2).abs() < 1e-6);
        assert!(registrar.lookup("sip:alice@elsewhere.net", 1010).is_empty());
        assert!(registrar.lookup("sip:bob@example.com", 1010).is_empty());
        assert_eq!(registrar.count(), 2);
    }

    #[test]
    fn lookup_and_sweep_drop_expired() {
        let registrar = registrar();
        registrar.save(&register("alice", 1, "<sip:a@10.0.0.1>;expires=100"), 1000);
        registrar.save(
            &register(
                "bob",
                1,
                "<sip:b@10.0.0.1>;expires=100, <sip:b@10.0.0.2>;expires=300",
            ),
            1000,
        );
        assert!(registrar.lookup("sip:alice@example.com", 1100).is_empty());
        assert_eq!(
            registrar.count(),
            2,
            "alice's binding was swept by the lookup"
        );
        assert_eq!(registrar.sweep(1100), 1);
        assert_eq!(registrar.lookup("sip:bob@example.com", 1100).len(), 1);
        assert_eq!(registrar.aors(), ["sip:bob@example.com"]);
    }

    #[test]
    fn failed_register_changes_nothing() {
        let registrar = registrar();
        registrar.save(&register("alice", 5, "<sip:a@10.0.0.1>"), 1000);
        let reply = registrar.save(&register("alice", 5, "<sip:a@10.0.0.9>;q=2"), 1000);
        assert_eq!(reply.code, 400);
        let reply = registrar.save(&register("alice", 4, "<sip:a@10.0.0.1>;expires=0"), 1000);
        assert_eq!(reply.code, 500);
        assert_eq!(registrar.lookup("sip:alice@example.com", 1000).len(), 1);
    }

    #[test]
    fn remove_and_restore() {
        let registrar = registrar();
        registrar.save(&register("alice", 1, "<sip:a@10.0.0.1>"), 1000);
        let stored = registrar.snapshot("sip:alice@example.com", 1000);
        assert_eq!(registrar.remove("sip:alice@EXAMPLE.com"), 1);
        assert_eq!(registrar.count(), 0);
        let mut expired = stored[0].clone();
        expired.uri = "sip:old@10.0.0.5".into();
        expired.expires_at = 900;
        assert_eq!(
            registrar.restore(
                "sip:alice@example.com",
                vec![stored[0].clone(), expired],
                1000
            ),
            1
        );
        assert_eq!(
            registrar.restore("sip:alice@example.com", stored, 1000),
            0,
            "no duplicates"
        );
        let view = registrar.bindings("sip:alice@example.com", 1000);
        assert_eq!(view.len(), 1);
        assert_eq!(view[0].cseq, 1);
        assert_eq!(view[0].expires, 3600);
    }

    #[test]
    fn a_local_miss_reads_redis_once_then_uses_the_answer_briefly() {
        let mut registrar = registrar();
        registrar.shared = Some(
            Shared::new(&crate::config::RedisConfig::default(), "b2").expect("default config"),
        );
        let aor = "sip:alice@example.com".to_string();
        assert_eq!(
            registrar.lookup_shared("sip:alice@127.0.0.1", 1000),
            Lookup::Fetch(aor.clone())
        );
        let shared = registrar.shared.as_ref().expect("shared");
        let mut elsewhere = registrar.snapshot(&aor, 1000);
        assert!(elsewhere.is_empty());
        elsewhere.push(Binding {
            uri: "sip:alice@192.0.2.1".into(),
            q: 1000,
            expires_at: 1500,
            call_id: "c".into(),
            cseq: 1,
            path: vec!["<sip:lb;lr>".into()],
        });
        shared.remember(aor.clone(), elsewhere, 1000);
        let Lookup::Contacts(found) = registrar.lookup_shared("sip:alice@example.com", 1001) else {
            panic!("the read is used");
        };
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].expires, found[0].path.len()), (499, 1));
        // Kept for 1 to 2 s, then read again.
        assert_eq!(
            registrar.lookup_shared("sip:alice@example.com", 1002),
            Lookup::Fetch(aor.clone())
        );
        // "None found" is kept too, and a local binding always wins.
        shared.remember(aor.clone(), Vec::new(), 1002);
        assert_eq!(
            registrar.lookup_shared("sip:alice@example.com", 1002),
            Lookup::Contacts(Vec::new())
        );
        registrar.save(&register("alice", 1, "<sip:alice@10.0.0.1>"), 1002);
        let Lookup::Contacts(local) = registrar.lookup_shared("sip:alice@example.com", 1003) else {
            panic!("local hit");
        };
        assert_eq!(local[0].uri, "sip:alice@10.0.0.1");
        // A memory-only registrar never asks for a read.
        assert_eq!(
            super::tests::registrar().lookup_shared("sip:bob@example.com", 1000),
            Lookup::Contacts(Vec::new())
        );
    }
}
