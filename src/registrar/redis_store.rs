//! The bindings in Redis: a write-through from this node's memory, the boot
//! restore, and the reads of an AoR another node registered.
//!
//! Layout (Redis 7 or later, for `EXPIRE ... NX` / `GT`):
//! - `{prefix}{<aor>}`: a hash with one field per node (`server.instance_id`)
//!   holding that node's bindings of the AoR as a JSON list of [`Binding`]
//!   (`uri`, `q` in thousandths, `expires_at` in Unix seconds, `call_id`,
//!   `cseq`, `path`). The braces are a Cluster hash tag: an AoR is one key in
//!   one slot. The key lives as long as its longest binding: each writer only
//!   ever extends its TTL. A node writes only its own field, so nodes never
//!   overwrite each other; readers drop expired bindings by `expires_at`.
//! - `{prefix}node:<instance>`: the set of AoRs this node has written, which
//!   its restore reads (a SCAN would not cover a Cluster).
//!
//! The registrar only queues the names of changed AoRs; the writer coalesces
//! them and writes each AoR's *current* state, so after an outage it writes
//! what is true now, not a replay. Redis being down never blocks or fails a
//! REGISTER: the writer logs, retries with a capped backoff and keeps the
//! AoRs still to write. Every new connection (after an outage, or to a primary
//! that Sentinel or the Cluster promoted) re-writes every AoR held in memory,
//! so a binding acknowledged before a failover is not lost with the old
//! primary.

use crate::metrics::ActorStats;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, RedisResult};
use tokio::sync::mpsc::UnboundedReceiver;

use super::rules::Binding;
use super::{unix_now, Registrar};
use crate::config::RedisConfig;

/// How long boot waits for the first restore before going ready anyway.
pub const RESTORE_WAIT: Duration = Duration::from_secs(5);
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often an idle writer looks for a new connection.
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// AoRs written, or read on restore, per round of commands.
const BATCH: usize = 256;

/// The stored form of an AoR's bindings.
pub fn encode(bindings: &[Binding]) -> String {
    serde_json::to_string(bindings).unwrap_or_else(|_| "[]".to_string())
}

pub fn decode(text: &str) -> Result<Vec<Binding>, serde_json::Error> {
    serde_json::from_str(text)
}

/// Seconds the key should live: until the longest binding expires. `None`
/// when nothing is live (the node's field is deleted instead).
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

/// The key names of one node under one prefix.
#[derive(Clone)]
pub struct Keys {
    prefix: String,
    instance: String,
}

impl Keys {
    pub fn new(prefix: &str, instance: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
            instance: instance.to_string(),
        }
    }

    /// The AoR's hash, hash-tagged so that it sits in one Cluster slot.
    pub fn aor(&self, aor: &str) -> String {
        format!("{}{{{aor}}}", self.prefix)
    }

    /// The set of AoRs this node has written.
    pub fn index(&self) -> String {
        format!("{}node:{}", self.prefix, self.instance)
    }

    /// Who holds this node's name now: a process's random token.
    pub fn owner(&self) -> String {
        format!("{}owner:{}", self.prefix, self.instance)
    }

    /// This node's field in an AoR's hash.
    pub fn field(&self) -> &str {
        &self.instance
    }
}

/// The live bindings in an AoR's hash of every node but `own` (this node's
/// memory is the truth about its own, and its field may lag behind), merged:
/// a contact bound by two nodes counts once, the later expiry winning.
pub fn merge_fields(fields: HashMap<String, String>, own: &str, now: u64) -> Vec<Binding> {
    let mut merged: Vec<Binding> = Vec::new();
    for (node, text) in fields.into_iter().filter(|(node, _)| node != own) {
        let Ok(bindings) = decode(&text) else {
            tracing::warn!(%node, "registrar: skipping an unreadable binding list in Redis");
            continue;
        };
        for binding in bindings.into_iter().filter(|b| b.is_live(now)) {
            match merged
                .iter_mut()
                .find(|b| super::rules::same_contact(&b.uri, &binding.uri))
            {
                Some(known) if known.expires_at >= binding.expires_at => {}
                Some(known) => *known = binding,
                None => merged.push(binding),
            }
        }
    }
    merged
}

/// A connection of either kind; both are multiplexed and cheap to clone.
#[derive(Clone)]
enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> RedisResult<T> {
        match self {
            Conn::Single(conn) => cmd.query_async(conn).await,
            Conn::Cluster(conn) => cmd.query_async(conn).await,
        }
    }

    /// Sends the commands at once (they travel pipelined on the multiplexed
    /// connection, or to their slots' nodes in a Cluster) and waits for all.
    async fn query_all<T: FromRedisValue>(&self, cmds: &[Cmd]) -> RedisResult<Vec<T>> {
        let replies = cmds.iter().map(|cmd| {
            let mut conn = self.clone();
            async move { conn.query::<T>(cmd).await }
        });
        futures_util::future::try_join_all(replies).await
    }

    /// Runs a MULTI/EXEC pipeline (its keys in one slot).
    async fn transaction(&mut self, pipe: &redis::Pipeline) -> RedisResult<()> {
        match self {
            Conn::Single(conn) => pipe.query_async(conn).await,
            Conn::Cluster(conn) => pipe.query_async(conn).await,
        }
    }
}

/// How to reach the store, as the config says.
enum Target {
    Single(redis::Client),
    /// Sentinel hands out the current primary at each connect.
    Sentinel(tokio::sync::Mutex<redis::sentinel::SentinelClient>),
    /// With the seed nodes, for a subscriber (any node hears every
    /// PUBLISH of a Cluster).
    Cluster(redis::cluster::ClusterClient, Vec<String>),
}

/// The connection the writer and the lookups share. A failed command drops
/// it ([`Link::reset`]); the next user connects again, through Sentinel when
/// configured, so a promoted primary is found.
pub struct Link {
    target: Target,
    /// `tls_ca_file`'s roots for `rediss://` nodes.
    roots: Option<redis::TlsCertificates>,
    /// `username` and `password`, for the Cluster nodes' own connections.
    username: Option<String>,
    password: Option<String>,
    /// Names the store in logs, without passwords.
    pub name: String,
    /// The connection, with its generation (connections made so far), so
    /// the writer notices a new one.
    current: Mutex<Option<(Conn, u64)>>,
    connecting: tokio::sync::Mutex<()>,
    generation: AtomicU64,
    /// A failed connect is not tried again before this.
    retry_at: Mutex<Option<std::time::Instant>>,
}

/// How long after a failed connect users get the error at once.
const CONNECT_HOLD: Duration = Duration::from_millis(500);

/// An error after which the connection is dropped and made again: the
/// server went away, or is a replica now (a failover happened).
fn needs_reconnect(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
        )
}

/// The roots of `registrar.redis.tls_ca_file` (checked at load), for
/// `rediss://` nodes; None: the system's.
fn tls_roots(config: &RedisConfig) -> Result<Option<redis::TlsCertificates>, String> {
    let Some(path) = &config.tls_ca_file else {
        return Ok(None);
    };
    let pem = std::fs::read(path).map_err(|e| {
        format!(
            "registrar.redis.tls_ca_file: cannot read {}: {e}",
            path.display()
        )
    })?;
    Ok(Some(redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    }))
}

/// A client for `url`, verifying a `rediss://` server against `roots`,
/// with the configured credentials when the URL carries none.
fn open_client(
    url: &str,
    roots: &Option<redis::TlsCertificates>,
    credentials: (Option<&str>, Option<&str>),
) -> RedisResult<redis::Client> {
    use redis::IntoConnectionInfo;
    let mut info = url.into_connection_info()?;
    let mut settings = info.redis_settings().clone();
    if let (None, Some(username)) = (settings.username(), credentials.0) {
        settings = settings.set_username(username);
    }
    if let (None, Some(password)) = (settings.password(), credentials.1) {
        settings = settings.set_password(password);
    }
    info = info.set_redis_settings(settings);
    match roots {
        Some(roots) if url.starts_with("rediss://") => {
            redis::Client::build_with_tls(info, roots.clone())
        }
        _ => redis::Client::open(info),
    }
}

/// A Sentinel client: the Sentinels at `sentinels` (each with its own TLS
/// when its URL says `rediss://`) with `sentinel_username`/`_password`, and
/// the primary they name with `username`/`password` (over TLS with `tls`).
fn sentinel_client(
    config: &RedisConfig,
    sentinels: &[String],
    roots: &Option<redis::TlsCertificates>,
) -> RedisResult<redis::sentinel::SentinelClient> {
    use redis::IntoConnectionInfo;
    let infos = sentinels
        .iter()
        .map(|url| url.as_str().into_connection_info())
        .collect::<RedisResult<Vec<_>>>()?;
    let addrs: Vec<_> = infos.iter().map(|info| info.addr().clone()).collect();
    // Credentials written in a Sentinel URL count as the Sentinels' own.
    let written = infos
        .iter()
        .map(|info| info.redis_settings())
        .find(|s| s.password().is_some());
    let sentinel_username = config
        .sentinel_username
        .as_deref()
        .or_else(|| written.and_then(|s| s.username()));
    let sentinel_password = config
        .sentinel_password
        .as_deref()
        .or_else(|| written.and_then(|s| s.password()));
    let mut builder = redis::sentinel::SentinelClientBuilder::new(
        addrs,
        &config.master_name,
        redis::sentinel::SentinelServerType::Master,
    )?;
    if let Some(username) = &config.username {
        builder = builder.set_client_to_redis_username(username);
    }
    if let Some(password) = &config.password {
        builder = builder.set_client_to_redis_password(password);
    }
    if config.tls {
        builder = builder.set_client_to_redis_tls_mode(redis::TlsMode::Secure);
    }
    if let Some(username) = sentinel_username {
        builder = builder.set_client_to_sentinel_username(username);
    }
    if let Some(password) = sentinel_password {
        builder = builder.set_client_to_sentinel_password(password);
    }
    if sentinels.iter().any(|url| url.starts_with("rediss://")) {
        builder = builder.set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
    }
    if let Some(roots) = roots {
        builder = builder
            .set_client_to_redis_certificates(roots.clone())
            .set_client_to_sentinel_certificates(roots.clone());
    }
    builder.build()
}

impl Link {
    pub fn new(config: &RedisConfig) -> Result<Link, String> {
        let nodes = |key: &str, list: &[String]| -> Result<Vec<String>, String> {
            list.iter()
                .map(|node| {
                    RedisConfig::node_url(node).ok_or_else(|| {
                        format!("registrar.redis.{key}: `{node}` is not a Redis node")
                    })
                })
                .collect()
        };
        let roots = tls_roots(config)?;
        let (target, name) = if !config.sentinels.is_empty() {
            let sentinels = nodes("sentinels", &config.sentinels)?;
            let name = format!(
                "sentinel {} at {}",
                config.master_name,
                sentinels
                    .iter()
                    .map(|u| redact(u))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            let client = sentinel_client(config, &sentinels, &roots)
                .map_err(|e| format!("registrar.redis.sentinels are not usable: {e}"))?;
            (Target::Sentinel(tokio::sync::Mutex::new(client)), name)
        } else if !config.cluster.is_empty() {
            let seeds = nodes("cluster", &config.cluster)?;
            let name = format!(
                "cluster {}",
                seeds
                    .iter()
                    .map(|u| redact(u))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            let mut builder = redis::cluster::ClusterClient::builder(seeds.clone())
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(RESPONSE_TIMEOUT)
                .retries(2);
            if let Some(username) = &config.username {
                builder = builder.username(username);
            }
            if let Some(password) = &config.password {
                builder = builder.password(password);
            }
            if let Some(roots) = &roots {
                builder = builder.certs(roots.clone());
            }
            let client = builder
                .build()
                .map_err(|e| format!("registrar.redis.cluster is not usable: {e}"))?;
            (Target::Cluster(client, seeds), name)
        } else {
            let url = config.url.as_deref().unwrap_or(RedisConfig::DEFAULT_URL);
            let client = open_client(url, &roots, (None, None))
                .map_err(|e| format!("registrar.redis.url {:?} is not usable: {e}", redact(url)))?;
            (Target::Single(client), redact(url))
        };
        Ok(Link {
            roots,
            username: config.username.clone(),
            password: config.password.clone(),
            target,
            name,
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
            retry_at: Mutex::new(None),
        })
    }

    fn credentials(&self) -> (Option<&str>, Option<&str>) {
        (self.username.as_deref(), self.password.as_deref())
    }

    fn held(&self) -> Option<(Conn, u64)> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The current connection, connecting first when there is none. Returns
    /// it with its generation.
    async fn get(&self) -> RedisResult<(Conn, u64)> {
        if let Some(held) = self.held() {
            return Ok(held);
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(held) = self.held() {
            return Ok(held);
        }
        let held_back = *self.retry_at.lock().unwrap_or_else(|p| p.into_inner());
        if held_back.is_some_and(|at| std::time::Instant::now() < at) {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "the last connect failed moments ago",
            )));
        }
        let made = self.connect().await;
        *self.retry_at.lock().unwrap_or_else(|p| p.into_inner()) = made
            .is_err()
            .then(|| std::time::Instant::now() + CONNECT_HOLD);
        let conn = made?;
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some((conn.clone(), generation));
        Ok((conn, generation))
    }

    async fn connect(&self) -> RedisResult<Conn> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let conn = match &self.target {
            Target::Single(client) => Conn::Single(
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?,
            ),
            Target::Sentinel(client) => Conn::Single(
                client
                    .lock()
                    .await
                    .get_async_connection_with_config(&config)
                    .await?,
            ),
            Target::Cluster(client, _) => Conn::Cluster(client.get_async_connection().await?),
        };
        Ok(conn)
    }

    /// Drops the connection after an error that calls for it, unless a
    /// newer one replaced it.
    fn reset(&self, generation: u64, error: &redis::RedisError) {
        if !needs_reconnect(error) {
            return;
        }
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current
            .as_ref()
            .is_some_and(|(_, held)| *held == generation)
        {
            *current = None;
        }
    }

    /// PUBLISH on the shared connection (`gateway.share_health`).
    pub async fn publish(&self, channel: &str, payload: &str) -> Result<(), String> {
        let (mut conn, generation) = self.get().await.map_err(|e| e.to_string())?;
        let sent = conn
            .query::<i64>(redis::cmd("PUBLISH").arg(channel).arg(payload))
            .await;
        if let Err(e) = &sent {
            self.reset(generation, e);
        }
        sent.map(drop).map_err(|e| e.to_string())
    }

    /// A connection of its own subscribed to `channel`: to the server, to
    /// the primary Sentinel names now, or to the first Cluster seed that
    /// answers.
    pub async fn subscribe(&self, channel: &str) -> RedisResult<redis::aio::PubSub> {
        let clients = match &self.target {
            Target::Single(client) => vec![client.clone()],
            Target::Sentinel(client) => vec![client.lock().await.async_get_client().await?],
            Target::Cluster(_, seeds) => seeds
                .iter()
                .filter_map(|seed| open_client(seed, &self.roots, self.credentials()).ok())
                .collect(),
        };
        let mut last = redis::RedisError::from((redis::ErrorKind::Io, "no node to subscribe on"));
        for client in clients {
            let attempt = async {
                let mut pubsub = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
                    .await
                    .map_err(|_| {
                        redis::RedisError::from((redis::ErrorKind::Io, "connect timed out"))
                    })??;
                pubsub.subscribe(channel).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            match attempt.await {
                Ok(pubsub) => return Ok(pubsub),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The other nodes' live bindings of `aor`, read within `limit`. The
    /// read runs as a task of its own, so a timeout never cancels a
    /// connect that the writer shares.
    pub async fn fetch(
        self: &Arc<Self>,
        keys: &Keys,
        aor: &str,
        limit: Duration,
    ) -> Result<Vec<Binding>, String> {
        let link = self.clone();
        let key = keys.aor(aor);
        let read = tokio::spawn(async move {
            let (mut conn, generation) = link.get().await?;
            let fields = conn
                .query::<HashMap<String, String>>(redis::cmd("HGETALL").arg(key))
                .await;
            if let Err(e) = &fields {
                link.reset(generation, e);
            }
            fields
        });
        match tokio::time::timeout(limit, read).await {
            Ok(Ok(Ok(fields))) => Ok(merge_fields(fields, keys.field(), unix_now())),
            Ok(Ok(Err(e))) => Err(e.to_string()),
            Ok(Err(e)) => Err(format!("the read failed: {e}")),
            Err(_) => Err(format!("no answer within {} ms", limit.as_millis())),
        }
    }
}

/// The write-through task's side: this node's keys and where its flushes
/// are counted (the registrar line of the actor metrics).
pub struct RedisStore {
    link: Arc<Link>,
    keys: Keys,
    stats: &'static ActorStats,
    /// This node's claim on its `instance_id` (see [`Keys::owner`]): its
    /// host and SIP addresses, so that a restart is no stranger; and when
    /// it was last checked.
    token: String,
    claim_checked: Mutex<Option<std::time::Instant>>,
}

/// How often a writing node checks that its `instance_id` is its own, and
/// how long a claim lasts without a check.
const CLAIM_EVERY: Duration = Duration::from_secs(20);
const CLAIM_TTL_SECS: u64 = 60;

impl RedisStore {
    pub fn new(
        link: Arc<Link>,
        keys: Keys,
        (node, stats): (&str, &'static ActorStats),
    ) -> RedisStore {
        RedisStore {
            link,
            keys,
            stats,
            token: node.to_string(),
            claim_checked: Mutex::new(None),
        }
    }

    /// Two nodes with one `server.instance_id` write one field of every
    /// AoR, each over the other's bindings: the first to claim the id holds
    /// it (renewed every CLAIM_EVERY, busy or idle), and the other says so.
    /// A failure here is logged and changes nothing else.
    async fn check_claim(&self, conn: &Conn) {
        if let Err(e) = self.claim(conn).await {
            tracing::debug!(store = %self.link.name, "instance_id claim: {e}");
        }
    }

    async fn claim(&self, conn: &Conn) -> RedisResult<()> {
        {
            let mut checked = self.claim_checked.lock().unwrap_or_else(|p| p.into_inner());
            if checked.is_some_and(|at| at.elapsed() < CLAIM_EVERY) {
                return Ok(());
            }
            *checked = Some(std::time::Instant::now());
        }
        let owner = self.keys.owner();
        let mut conn = conn.clone();
        let claimed: Option<String> = conn
            .query(
                redis::cmd("SET")
                    .arg(&owner)
                    .arg(&self.token)
                    .arg("NX")
                    .arg("EX")
                    .arg(CLAIM_TTL_SECS),
            )
            .await?;
        if claimed.is_some() {
            return Ok(());
        }
        let holder: Option<String> = conn.query(redis::cmd("GET").arg(&owner)).await?;
        if holder.as_deref() == Some(self.token.as_str()) {
            conn.query::<()>(redis::cmd("EXPIRE").arg(&owner).arg(CLAIM_TTL_SECS))
                .await?;
        } else {
            tracing::warn!(
                instance_id = %self.keys.field(),
                "another node writes bindings to Redis with this server.instance_id: each overwrites the other's, and lookups miss; give every node its own instance_id"
            );
        }
        Ok(())
    }

    /// Reads this node's bindings of every AoR it has written into the
    /// registrar; returns how many live contacts were added.
    async fn restore(&self, conn: &Conn, registrar: &Registrar) -> RedisResult<usize> {
        let aors: Vec<String> = conn
            .clone()
            .query(redis::cmd("SMEMBERS").arg(self.keys.index()))
            .await?;
        let now = unix_now();
        let mut restored = 0;
        let mut gone = Vec::new();
        for chunk in aors.chunks(BATCH) {
            let reads: Vec<Cmd> = chunk
                .iter()
                .map(|aor| {
                    let mut cmd = redis::cmd("HGET");
                    cmd.arg(self.keys.aor(aor)).arg(self.keys.field());
                    cmd
                })
                .collect();
            let values: Vec<Option<String>> = conn.query_all(&reads).await?;
            for (aor, value) in chunk.iter().zip(values) {
                let Some(value) = value else {
                    gone.push(aor.clone());
                    continue;
                };
                match decode(&value) {
                    Ok(bindings) => restored += registrar.restore(aor, bindings, now),
                    Err(e) => {
                        tracing::warn!(%aor, "registrar: skipping unreadable Redis value: {e}")
                    }
                }
            }
        }
        if !gone.is_empty() {
            // The AoR's key expired: forget it in the index too.
            conn.clone()
                .query::<()>(redis::cmd("SREM").arg(self.keys.index()).arg(&gone))
                .await?;
        }
        Ok(restored)
    }

    /// Writes this node's current bindings of these AoRs: per AoR, its field
    /// and TTL in one MULTI/EXEC (so the key never lacks a TTL), then the
    /// index set.
    async fn write(&self, conn: &Conn, registrar: &Registrar, aors: &[String]) -> RedisResult<()> {
        let now = unix_now();
        let writes = aors.iter().map(|aor| {
            let bindings = registrar.snapshot(aor, now);
            let key = self.keys.aor(aor);
            let mut pipe = redis::pipe();
            pipe.atomic();
            let mut index = match ttl(&bindings, now) {
                Some(secs) => {
                    pipe.cmd("HSET")
                        .arg(&key)
                        .arg(self.keys.field())
                        .arg(encode(&bindings))
                        .ignore();
                    // A new key gets the TTL; an existing one only longer.
                    pipe.cmd("EXPIRE").arg(&key).arg(secs).arg("NX").ignore();
                    pipe.cmd("EXPIRE").arg(&key).arg(secs).arg("GT").ignore();
                    redis::cmd("SADD")
                }
                None => {
                    pipe.cmd("HDEL").arg(&key).arg(self.keys.field()).ignore();
                    redis::cmd("SREM")
                }
            };
            index.arg(self.keys.index()).arg(aor);
            let mut conn = conn.clone();
            async move {
                conn.transaction(&pipe).await?;
                conn.query::<()>(&index).await
            }
        });
        futures_util::future::try_join_all(writes).await.map(|_| ())
    }

    /// One pass: connect if needed; on a new connection restore (the first
    /// time) or re-write everything held; then write every pending AoR.
    async fn flush(
        &self,
        seen: &mut u64,
        restored: &mut bool,
        registrar: &Registrar,
        pending: &mut HashSet<String>,
    ) -> RedisResult<usize> {
        let (conn, generation) = self.link.get().await?;
        let result = async {
            if generation != *seen {
                if *restored {
                    let held = registrar.aors();
                    tracing::info!(
                        store = %self.link.name,
                        "new Redis connection; re-writing the {} AoRs held in memory",
                        held.len()
                    );
                    pending.extend(held);
                } else {
                    let count = self.restore(&conn, registrar).await?;
                    tracing::info!("restored {count} contacts from Redis");
                    *restored = true;
                }
                *seen = generation;
            }
            if !pending.is_empty() {
                self.check_claim(&conn).await;
            }
            let mut written = 0;
            while !pending.is_empty() {
                let batch: Vec<String> = pending.iter().take(BATCH).cloned().collect();
                self.write(&conn, registrar, &batch).await?;
                for aor in &batch {
                    pending.remove(aor);
                }
                written += batch.len();
            }
            Ok(written)
        }
        .await;
        if let Err(e) = &result {
            // The next attempt starts from a fresh connection (and, with
            // Sentinel, from whichever primary it names then).
            self.link.reset(generation, e);
        }
        result
    }

    /// The write-through task. `booted` is signalled after the first restore
    /// attempt, successful or not, so boot can go on.
    pub async fn run(
        self,
        registrar: Arc<Registrar>,
        mut changes: UnboundedReceiver<String>,
        booted: std::sync::mpsc::Sender<()>,
    ) {
        let mut seen = 0;
        let mut restored = false;
        let mut pending: HashSet<String> = HashSet::new();
        let mut backoff = BACKOFF_START;
        let mut failing = false;
        let mut booted = Some(booted);
        loop {
            if restored && pending.is_empty() {
                // Waking each second also notices a connection that a
                // lookup made (a new primary, maybe) and re-writes then.
                match tokio::time::timeout(IDLE_CHECK, changes.recv()).await {
                    Ok(Some(aor)) => {
                        pending.insert(aor);
                    }
                    Ok(None) => return,
                    Err(_) if self.link.generation.load(Ordering::Acquire) == seen => {
                        // Idle: keep the claim on our name alive.
                        if let Some((conn, _)) = self.link.held() {
                            self.check_claim(&conn).await;
                        }
                        continue;
                    }
                    Err(_) => {}
                }
            }
            while let Ok(aor) = changes.try_recv() {
                pending.insert(aor);
            }
            let started = std::time::Instant::now();
            let result = self
                .flush(&mut seen, &mut restored, &registrar, &mut pending)
                .await;
            self.stats.record_unqueued(started.elapsed());
            if let Some(booted) = booted.take() {
                let _ = booted.send(());
            }
            match result {
                Ok(written) => {
                    if failing {
                        tracing::info!(
                            store = %self.link.name,
                            "Redis is reachable again; wrote the current bindings of {written} AoRs"
                        );
                    }
                    failing = false;
                    backoff = BACKOFF_START;
                }
                Err(e) => {
                    tracing::error!(
                        store = %self.link.name,
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
    fn keys_are_hash_tagged_per_aor() {
        let keys = Keys::new("siphon:reg:", "b1");
        assert_eq!(
            keys.aor("sip:alice@example.com"),
            "siphon:reg:{sip:alice@example.com}"
        );
        assert_eq!(keys.index(), "siphon:reg:node:b1");
        assert_eq!(keys.field(), "b1");
    }

    #[test]
    fn merged_fields_keep_live_bindings_once() {
        let mut a = binding("sip:a@10.0.0.1", 2000);
        let b = binding("sip:b@10.0.0.2", 900);
        let fields = HashMap::from([
            ("n1".to_string(), encode(&[a.clone(), b])),
            ("n2".to_string(), {
                a.expires_at = 2500;
                encode(std::slice::from_ref(&a))
            }),
            ("n3".to_string(), "junk".to_string()),
        ]);
        let merged = merge_fields(fields, "me", 1000);
        assert_eq!(merged.len(), 1, "b expired, a counted once");
        assert_eq!(merged[0].expires_at, 2500, "the later expiry wins");
        assert_eq!(merged[0].path, ["<sip:edge;lr>"], "Path is kept");
    }
}
