//! Real Redis processes for the registrar tests: a `redis-server` (alone, or
//! as a replica, or as a Cluster node), `redis-sentinel`, and readers of what
//! siphon stored (see `src/registrar/redis_store.rs` for the layout).

use std::fs;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::{free_port, LOCALHOST};

pub const KEY_PREFIX: &str = "siphon:reg:";

/// The key of an AoR's hash (one field per node).
pub fn aor_key(aor: &str) -> String {
    format!("{KEY_PREFIX}{{{aor}}}")
}

/// A `redis-server` (or `redis-sentinel`) on a private port in a temp dir,
/// with no persistence, so a restart starts empty. Killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub port: u16,
    /// Extra arguments (replica-of, cluster mode) kept for restarts.
    extra: Vec<String>,
    sentinel: bool,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// A server with extra `redis-server` arguments, e.g. `--replicaof`.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let mut server = RedisServer::unstarted(extra, false);
        server.spawn();
        server
    }

    /// A Cluster node: its bus listens on port + 10000, so the port must be
    /// below 55536 and both must be free.
    fn start_cluster_node(extra: &[&str]) -> RedisServer {
        let mut server = RedisServer::unstarted(extra, false);
        while server.port > 55_000
            || std::net::TcpListener::bind((LOCALHOST, server.port + 10_000)).is_err()
        {
            server.port = free_port();
        }
        server.spawn();
        server
    }

    /// A Sentinel watching the primary at `primary_port` as `master_name`,
    /// deciding with `quorum` votes, and calling it down after 1 s of silence.
    pub fn start_sentinel(master_name: &str, primary_port: u16, quorum: u32) -> RedisServer {
        let mut sentinel = RedisServer::unstarted(&[], true);
        let config = format!(
            "port {port}\nbind {LOCALHOST}\ndir {dir}\n\
             sentinel monitor {master_name} {LOCALHOST} {primary_port} {quorum}\n\
             sentinel down-after-milliseconds {master_name} 1000\n\
             sentinel failover-timeout {master_name} 5000\n\
             sentinel parallel-syncs {master_name} 1\n",
            port = sentinel.port,
            dir = sentinel.dir.path().display(),
        );
        fs::write(sentinel.dir.path().join("sentinel.conf"), config).expect("sentinel.conf");
        sentinel.spawn();
        sentinel
    }

    fn unstarted(extra: &[&str], sentinel: bool) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("siphon-redis-")
            .tempdir()
            .expect("tempdir");
        RedisServer {
            child: None,
            dir,
            port: free_port(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            sentinel,
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn spawn(&mut self) {
        let log = fs::File::create(self.dir.path().join("redis.log")).expect("redis log");
        let mut command = if self.sentinel {
            let mut command = Command::new("redis-sentinel");
            command.arg(self.dir.path().join("sentinel.conf"));
            command
        } else {
            let mut command = Command::new("redis-server");
            command
                .args(["--port", &self.port.to_string()])
                .args(["--bind", LOCALHOST])
                .args(["--save", ""])
                .args(["--appendonly", "no"])
                .arg("--dir")
                .arg(self.dir.path())
                .args(&self.extra);
            command
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server (are redis-server and redis-sentinel installed?)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(mut conn) = self.try_connection() {
                if redis::cmd("PING").query::<String>(&mut conn).is_ok() {
                    return;
                }
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("redis on port {} did not come up", self.port);
    }

    /// Kills the server (its data is gone: no persistence).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Until the port is closed, a client could still reach it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect((LOCALHOST, self.port)).is_ok() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://{LOCALHOST}:{}", self.port)
    }

    pub fn addr(&self) -> String {
        format!("{LOCALHOST}:{}", self.port)
    }

    fn try_connection(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(self.url())?.get_connection_with_timeout(Duration::from_secs(1))
    }

    /// A connection, tried again for up to 2 s: a server changing role
    /// (a replica promoted by Sentinel) resets the connections it had.
    pub fn connection(&self) -> redis::Connection {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        loop {
            match self.try_connection() {
                Ok(connection) => return connection,
                Err(e) if std::time::Instant::now() >= deadline => {
                    panic!("connect to test redis: {e}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Runs one command and returns its reply. A connection dropped under
    /// the command is tried again for up to 2 s: Sentinel kills the clients
    /// of the replica it promotes (`CLIENT KILL TYPE normal`).
    pub fn query<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        loop {
            match cmd.query(&mut self.connection()) {
                Ok(reply) => return reply,
                Err(e)
                    if (e.is_io_error() || e.is_connection_dropped())
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => panic!("{args:?}: {e}"),
            }
        }
    }

    /// Every AoR key, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.query(&["KEYS", &format!("{KEY_PREFIX}{{*")]);
        keys.sort();
        keys
    }

    /// The stored bindings of one AoR, every node's: `(contact uri,
    /// expires_at)` pairs.
    pub fn bindings(&self, aor: &str) -> Vec<(String, u64)> {
        let fields: std::collections::HashMap<String, String> =
            self.query(&["HGETALL", &aor_key(aor)]);
        stored_bindings(fields.values())
    }

    pub fn ttl(&self, aor: &str) -> i64 {
        self.query(&["TTL", &aor_key(aor)])
    }

    /// Polls until `keys()` has N entries, up to TIMEOUT.
    pub fn wait_for_keys(&self, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let keys = self.keys();
            if keys.len() == n || Instant::now() >= deadline {
                return keys;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The `(uri, expires_at)` pairs of stored JSON binding lists.
pub fn stored_bindings<'a>(lists: impl Iterator<Item = &'a String>) -> Vec<(String, u64)> {
    let mut pairs = Vec::new();
    for list in lists {
        let parsed: serde_json::Value = serde_json::from_str(list).expect("stored JSON");
        for b in parsed.as_array().expect("stored bindings are a list") {
            pairs.push((
                b["uri"].as_str().expect("uri").to_string(),
                b["expires_at"].as_u64().expect("expires_at"),
            ));
        }
    }
    pairs.sort();
    pairs
}

/// A Redis Cluster of `n` primaries (no replicas) on private ports, made
/// with `redis-cli --cluster create`. Killed on drop.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start(n: usize) -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..n)
            .map(|_| {
                RedisServer::start_cluster_node(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes.iter().map(RedisServer::addr).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed:\n{}",
            String::from_utf8_lossy(&created.stdout)
        );
        let cluster = RedisCluster { nodes };
        let deadline = Instant::now() + Duration::from_secs(15);
        while !cluster.nodes.iter().all(|node| {
            node.query::<String>(&["CLUSTER", "INFO"])
                .contains("cluster_state:ok")
        }) {
            assert!(Instant::now() < deadline, "the cluster never became ok");
            thread::sleep(Duration::from_millis(100));
        }
        cluster
    }

    /// The `host:port` seeds for `registrar.redis.cluster`.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::addr).collect()
    }

    /// Every node's AoR keys, node by node.
    pub fn keys_per_node(&self) -> Vec<Vec<String>> {
        self.nodes.iter().map(RedisServer::keys).collect()
    }

    /// The bindings of `aor`, read from whichever node holds its key.
    pub fn bindings(&self, aor: &str) -> Vec<(String, u64)> {
        self.nodes
            .iter()
            .find(|node| node.keys().contains(&aor_key(aor)))
            .map(|node| node.bindings(aor))
            .unwrap_or_default()
    }
}
