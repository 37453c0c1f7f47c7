//! Write-through of the bindings to Redis, so a restarted node comes back
//! with every registration.
//!
//! One key per AoR (`key_prefix + aor`) holds the AoR's bindings as a JSON
//! list of [`Binding`] (`uri`, `q` in thousandths, `expires_at` in Unix
//! seconds, `call_id`, `cseq`, `path`); the key's TTL follows the longest-lived binding, and an
//! AoR with no binding left is deleted. The registrar only queues the names of
//! changed AoRs; this task coalesces them and writes each AoR's *current*
//! state, so after an outage it writes what is true now, not a replay.
//!
//! Redis being down never blocks or fails a REGISTER: the task logs the
//! error, retries with a capped exponential backoff and keeps the set of AoRs
//! still to write.

use crate::metrics::ActorStats;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::RedisResult;
use tokio::sync::mpsc::UnboundedReceiver;

use super::rules::Binding;
use super::{unix_now, Registrar};

/// How long boot waits for the first restore before going ready anyway.
pub const RESTORE_WAIT: Duration = Duration::from_secs(5);
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// AoRs written per pipeline, and keys read per MGET on restore.
const BATCH: usize = 256;

/// Where and under which prefix the bindings are stored.
pub struct RedisStore {
    client: redis::Client,
    url: String,
    prefix: String,
    /// Where the writer's flushes are counted (the registrar line of the
    /// actor metrics).
    stats: &'static ActorStats,
}

/// The stored form of an AoR's bindings.
pub fn encode(bindings: &[Binding]) -> String {
    serde_json::to_string(bindings).unwrap_or_else(|_| "[]".to_string())
}

pub fn decode(text: &str) -> Result<Vec<Binding>, serde_json::Error> {
    serde_json::from_str(text)
}

/// Seconds the key should live: until the longest binding expires. `None`
/// when nothing is live (the key is deleted instead).
pub fn ttl(bindings: &[Binding], now: u64) -> Option<u64> {
    bindings
        .iter()
        .map(|b| b.remaining(now))
        .max()
        .filter(|&secs| secs > 0)
}

/// The URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}***{}", &url[..scheme_end + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// Escapes the glob characters of a SCAN MATCH pattern.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

impl RedisStore {
    pub fn new(url: &str, prefix: &str, stats: &'static ActorStats) -> Result<RedisStore, String> {
        let client = redis::Client::open(url)
            .map_err(|e| format!("registrar.redis.url {:?} is not usable: {e}", redact(url)))?;
        Ok(RedisStore {
            client,
            url: redact(url),
            prefix: prefix.to_string(),
            stats,
        })
    }

    pub fn key(&self, aor: &str) -> String {
        format!("{}{aor}", self.prefix)
    }

    async fn connect(&self) -> RedisResult<ConnectionManager> {
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(0)
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        ConnectionManager::new_with_config(self.client.clone(), config).await
    }

    /// Reads every AoR under the prefix into the registrar; returns how many
    /// live contacts were added.
    async fn restore(
        &self,
        conn: &mut ConnectionManager,
        registrar: &Registrar,
    ) -> RedisResult<usize> {
        let pattern = format!("{}*", glob_escape(&self.prefix));
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(conn)
                .await?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        let now = unix_now();
        let mut restored = 0;
        for chunk in keys.chunks(BATCH) {
            let values: Vec<Option<String>> =
                redis::cmd("MGET").arg(chunk).query_async(conn).await?;
            for (key, value) in chunk.iter().zip(values) {
                let (Some(aor), Some(value)) = (key.strip_prefix(&self.prefix), value) else {
                    continue;
                };
                match decode(&value) {
                    Ok(bindings) => restored += registrar.restore(aor, bindings, now),
                    Err(e) => {
                        tracing::warn!(key = %key, "registrar: skipping unreadable Redis value: {e}")
                    }
                }
            }
        }
        Ok(restored)
    }

    /// Writes the current bindings of these AoRs (SET with TTL, or DEL).
    async fn write(
        &self,
        conn: &mut ConnectionManager,
        registrar: &Registrar,
        aors: &[String],
    ) -> RedisResult<()> {
        let now = unix_now();
        let mut pipe = redis::pipe();
        for aor in aors {
            let bindings = registrar.snapshot(aor, now);
            let key = self.key(aor);
            match ttl(&bindings, now) {
                Some(secs) => pipe
                    .cmd("SET")
                    .arg(&key)
                    .arg(encode(&bindings))
                    .arg("EX")
                    .arg(secs)
                    .ignore(),
                None => pipe.cmd("DEL").arg(&key).ignore(),
            };
        }
        pipe.query_async::<()>(conn).await
    }

    /// One pass: connect if needed, restore once, then write every pending AoR.
    async fn flush(
        &self,
        conn: &mut Option<ConnectionManager>,
        restored: &mut bool,
        registrar: &Registrar,
        pending: &mut HashSet<String>,
    ) -> RedisResult<usize> {
        let mut manager = match conn.take() {
            Some(manager) => manager,
            None => self.connect().await?,
        };
        if !*restored {
            let count = self.restore(&mut manager, registrar).await?;
            tracing::info!("restored {count} contacts from Redis");
            *restored = true;
        }
        let mut written = 0;
        while !pending.is_empty() {
            let batch: Vec<String> = pending.iter().take(BATCH).cloned().collect();
            self.write(&mut manager, registrar, &batch).await?;
            for aor in &batch {
                pending.remove(aor);
            }
            written += batch.len();
        }
        // Kept only after a clean pass: an error drops it, and the next
        // attempt starts from a fresh connection.
        *conn = Some(manager);
        Ok(written)
    }

    /// The write-through task. `booted` is signalled after the first restore
    /// attempt, successful or not, so boot can go on.
    pub async fn run(
        self,
        registrar: Arc<Registrar>,
        mut changes: UnboundedReceiver<String>,
        booted: std::sync::mpsc::Sender<()>,
    ) {
        let mut conn = None;
        let mut restored = false;
        let mut pending: HashSet<String> = HashSet::new();
        let mut backoff = BACKOFF_START;
        let mut failing = false;
        let mut booted = Some(booted);
        loop {
            if restored && pending.is_empty() {
                match changes.recv().await {
                    Some(aor) => {
                        pending.insert(aor);
                    }
                    None => return,
                }
            }
            while let Ok(aor) = changes.try_recv() {
                pending.insert(aor);
            }
            let started = std::time::Instant::now();
            let result = self
                .flush(&mut conn, &mut restored, &registrar, &mut pending)
                .await;
            self.stats.record_unqueued(started.elapsed());
            if let Some(booted) = booted.take() {
                let _ = booted.send(());
            }
            match result {
                Ok(written) => {
                    if failing {
                        tracing::info!(
                            url = %self.url,
                            "Redis is reachable again; wrote the current bindings of {written} AoRs"
                        );
                    }
                    failing = false;
                    backoff = BACKOFF_START;
                }
                Err(e) => {
                    tracing::error!(
                        url = %self.url,
                        pending = pending.len(),
                        "registrar: Redis unavailable ({e}); serving from memory, retrying in {} ms",
                        backoff.as_millis()
                    );
                    failing = true;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_CAP);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(uri: &str, expires_at: u64) -> Binding {
        Binding {
            uri: uri.into(),
            q: 500,
            expires_at,
            call_id: "c1".into(),
            cseq: 7,
            path: vec!["<sip:edge;lr>".into()],
        }
    }

    #[test]
    fn encoding_round_trips() {
        let list = vec![
            binding("sip:a@10.0.0.1", 2000),
            binding("sip:b@10.0.0.2", 3000),
        ];
        assert_eq!(decode(&encode(&list)).unwrap(), list);
        assert!(decode("not json").is_err());
    }

    #[test]
    fn ttl_follows_the_longest_binding() {
        let list = vec![binding("sip:a@h", 1100), binding("sip:b@h", 1500)];
        assert_eq!(ttl(&list, 1000), Some(500));
        assert_eq!(ttl(&list, 1500), None);
        assert_eq!(ttl(&[], 1000), None);
    }

    #[test]
    fn logged_url_hides_the_password() {
        assert_eq!(
            redact("redis://:secret@10.0.0.1:6379/0"),
            "redis://***@10.0.0.1:6379/0"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn scan_pattern_is_escaped() {
        assert_eq!(glob_escape("siphon:reg:"), "siphon:reg:");
        assert_eq!(glob_escape("a*b?[c]"), "a\\*b\\?\\[c\\]");
    }
}
