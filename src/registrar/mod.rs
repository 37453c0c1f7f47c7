//! The registrar: bindings of addresses of record to contacts, shared by the
//! script workers (`registrar.save` / `registrar.lookup`).
//!
//! The bindings live in memory behind one mutex, held only for a map lookup
//! and a small vector copy, because lookups sit on the INVITE path. The RFC
//! 3261 rules are in [`rules`]; with `backend: redis` every change is also
//! queued to the write-through task in [`redis_store`], which never makes a
//! REGISTER wait. A background thread sweeps expired bindings every second.

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
    limits: Limits,
    domains: LocalDomains,
    bindings: Mutex<HashMap<String, Vec<Binding>>>,
    /// AoRs whose bindings changed, for the Redis writer (None: memory only).
    changes: Option<UnboundedSender<String>>,
}

impl Registrar {
    /// A memory-only registrar (no sweeper thread: call [`Registrar::sweep`]).
    pub fn new(limits: Limits, domains: LocalDomains) -> Registrar {
        Registrar {
            limits,
            domains,
            bindings: Mutex::new(HashMap::new()),
            changes: None,
        }
    }

    /// Builds the registrar the config asks for and starts its background
    /// thread (sweeper, and for Redis the write-through task). With Redis,
    /// restores every stored binding first, waiting at most a few seconds; if
    /// Redis is down it starts empty and the restore is retried in the
    /// background.
    /// `writer_stats` counts the Redis writer's flushes.
    pub fn start(
        config: &RegistrarConfig,
        domains: LocalDomains,
        writer_stats: &'static crate::metrics::ActorStats,
    ) -> Result<Arc<Registrar>, String> {
        let limits = Limits {
            default_expires: config.default_expires,
            min_expires: config.min_expires,
            max_expires: config.max_expires,
            max_contacts: config.max_contacts,
        };
        let mut registrar = Registrar::new(limits, domains);
        let store = match config.backend {
            RegistrarBackend::Memory => None,
            RegistrarBackend::Redis => {
                let store = redis_store::RedisStore::new(
                    &config.redis.url,
                    &config.redis.key_prefix,
                    writer_stats,
                )?;
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                registrar.changes = Some(tx);
                Some((store, rx))
            }
        };
        let registrar = Arc::new(registrar);
        let (restored_tx, restored_rx) = std::sync::mpsc::channel();
        let background = registrar.clone();
        std::thread::Builder::new()
            .name("registrar".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        tracing::error!("registrar: cannot start its runtime: {e}");
                        return;
                    }
                };
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
            })
            .map_err(|e| format!("cannot start the registrar thread: {e}"))?;
        if config.backend == RegistrarBackend::Redis {
            // The writer reports once the boot restore is done or has failed.
            let _ = restored_rx.recv_timeout(redis_store::RESTORE_WAIT);
        }
        Ok(registrar)
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
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
        let request = match rules::parse_register(msg, &self.limits) {
            Ok(request) => request,
            Err(reply) => return reply,
        };
        let (result, changed) = {
            let mut map = self.map();
            let current = map.get(&aor).map_or(&[][..], Vec::as_slice);
            match rules::apply(&request, current, &self.limits, now) {
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
}
