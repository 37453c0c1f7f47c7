//! End-to-end tests of siphon as the backend (scripts/proxy.py): the
//! registrar with Redis write-through against a real `redis-server` started
//! here on a private port, sipp subscribers and callees, and crafted REGISTERs
//! from a raw client for the exact RFC 3261 §10.3 answers.

mod common;

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use common::redis::*;
use common::*;

// ---------------------------------------------------------------------------
// The backend node
// ---------------------------------------------------------------------------

/// The test proxy config plus a Redis-backed registrar (`min_expires: 60`)
/// at `redis` (the inside of `registrar.redis`), as node `instance`.
fn node_config(redis: &str, instance: &str) -> String {
    format!(
        "{}registrar:\n  backend: redis\n  redis: {{{redis}, key_prefix: \"{KEY_PREFIX}\"}}\n  min_expires: 60\n  default_expires: 3600\nserver:\n  instance_id: {instance}\n",
        proxy_config("info"),
    )
}

fn backend_config(redis: &RedisServer) -> String {
    node_config(&format!("url: \"{}\"", redis.url()), "siphon")
}

fn start_backend(redis: &RedisServer) -> Siphon {
    Siphon::start(&backend_config(redis), &example_script("proxy.py"))
}

/// A backend named `instance` (its share of the Redis keys).
fn start_node(redis: &RedisServer, instance: &str) -> Siphon {
    let config = node_config(&format!("url: \"{}\"", redis.url()), instance);
    Siphon::start(&config, &example_script("proxy.py"))
}

/// The final response `caller` gets within 5 s.
fn final_answer(caller: &UdpPeer) -> String {
    let mut seen = Vec::new();
    caller
        .recv_final(Duration::from_secs(5), &mut seen)
        .unwrap_or_else(|| panic!("no final answer; saw {seen:?}"))
}

/// The INVITE `via` relayed reaches the Path hop `edge` with the Path
/// (`path`) as its Route and the contact (`contact`) as its Request-URI.
fn assert_reached_through_path(edge: &UdpPeer, path: &str, contact: &str, via: &Siphon) {
    let mut seen = Vec::new();
    let forwarded = edge
        .recv_until(Duration::from_secs(5), &mut seen, |m| {
            method(m) == Some("INVITE")
        })
        .unwrap_or_else(|| panic!("INVITE never reached the Path hop\n{}", via.log_tail(20)));
    assert!(
        forwarded.starts_with(&format!("INVITE {contact} SIP/2.0")),
        "{forwarded}"
    );
    assert_eq!(
        header_values(&forwarded, "Route").first().copied(),
        Some(path),
        "{forwarded}"
    );
}

/// Sends an INVITE for `user` to `siphon` from a fresh client; returns the
/// client, to read the answer from.
fn invite_user(siphon: &Siphon, user: &str) -> UdpPeer {
    let caller = UdpPeer::bind();
    let invite = RawRequest::new(
        "INVITE",
        &format!("sip:{user}@127.0.0.1:{}", siphon.port),
        Transport::Udp,
        caller.local_addr(),
    );
    caller.send_to(invite.render().as_bytes(), siphon.addr());
    caller
}

/// The AoR a sipp user registered at 127.0.0.1 is stored under: the local
/// host and port fold into the first `domain.local` entry.
fn aor(user: &str) -> String {
    format!("sip:{user}@127.0.0.1")
}

fn work_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("siphon-reg-")
        .tempdir()
        .expect("tempdir")
}

/// Registers `{user}1..={user}N` with sipp, each bound to CONTACT.
fn register_users(
    siphon: &Siphon,
    dir: &std::path::Path,
    name: &str,
    user: &str,
    n: u32,
    contact: SocketAddr,
) {
    let outcome = SippSpec::new(name, "reg_uac_register.xml", Transport::Udp)
        .target(siphon.addr())
        .key("user", user)
        .key("contact", &contact.to_string())
        .key("expires", "300")
        .calls(n)
        .rate(100)
        .timeout_secs(30)
        .run(dir);
    outcome.assert_all_succeeded();
}

/// N full calls to `{user}1..={user}N` through SIPHON; returns the UAC outcome.
fn call_users(
    siphon: &Siphon,
    dir: &std::path::Path,
    name: &str,
    user: &str,
    n: u32,
) -> SippOutcome {
    SippSpec::new(name, "reg_uac_call.xml", Transport::Udp)
        .target(siphon.addr())
        .key("user", user)
        .calls(n)
        .rate(50)
        .timeout_secs(40)
        .run(dir)
}

/// A REGISTER for `sip:{user}@127.0.0.1` from a raw client.
struct Register {
    user: String,
    /// The To value; `<sip:{user}@127.0.0.1:{port}>` when None.
    to: Option<String>,
    call_id: String,
    cseq: u32,
    headers: Vec<String>,
}

impl Register {
    fn new(user: &str) -> Register {
        Register {
            user: user.to_string(),
            to: None,
            call_id: unique("reg"),
            cseq: 0,
            headers: Vec::new(),
        }
    }

    /// Sends the next CSeq with these extra header lines; returns the final response.
    fn send(&mut self, siphon: &Siphon, headers: &[&str]) -> String {
        self.cseq += 1;
        self.headers = headers.iter().map(|h| h.to_string()).collect();
        let peer = UdpPeer::bind();
        let via = peer.local_addr();
        let mut text = format!(
            "REGISTER sip:127.0.0.1:{port} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {via};branch=z9hG4bK{branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{user}@127.0.0.1:{port}>;tag={tag}\r\n\
             To: {to}\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} REGISTER\r\n",
            port = siphon.port,
            branch = unique("b"),
            user = self.user,
            to = self
                .to
                .clone()
                .unwrap_or_else(|| format!("<sip:{}@127.0.0.1:{}>", self.user, siphon.port)),
            tag = unique("t"),
            call_id = self.call_id,
            cseq = self.cseq,
        );
        for header in &self.headers {
            text.push_str(header);
            text.push_str("\r\n");
        }
        text.push_str("Content-Length: 0\r\n\r\n");
        peer.send_to(text.as_bytes(), siphon.addr());
        let mut seen = Vec::new();
        peer.recv_final(Duration::from_secs(5), &mut seen)
            .unwrap_or_else(|| {
                panic!(
                    "no answer to REGISTER; saw {seen:?}\n{}",
                    siphon.log_tail(30)
                )
            })
    }
}

/// `(uri, expires)` of each Contact in a 200 to REGISTER.
fn listed_bindings(response: &str) -> Vec<(String, u64)> {
    header_values(response, "Contact")
        .into_iter()
        .flat_map(|line| line.split(','))
        .map(|value| {
            let value = value.trim();
            let uri = value
                .trim_start_matches('<')
                .split('>')
                .next()
                .unwrap_or("")
                .to_string();
            let expires = value
                .split(";expires=")
                .nth(1)
                .and_then(|rest| rest.split(';').next())
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or_else(|| panic!("Contact without expires: {value}"));
            (uri, expires)
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// REGISTER → 200 listing the binding with its expires; a re-REGISTER
/// refreshes it; `expires=0` removes it; `Expires: 30` under `min_expires: 60`
/// is 423 with `Min-Expires: 60`; stale CSeq → 500, malformed → 400. Redis
/// follows every step: the key appears with a TTL, and is deleted when empty.
#[test]
fn register_refresh_remove_and_interval_too_brief() {
    let redis = RedisServer::start();
    let siphon = start_backend(&redis);
    assert!(siphon.wait_for_log("restored 0 contacts from Redis", Duration::from_secs(5)));
    let contact = "<sip:alice@127.0.0.1:5999>";
    let mut alice = Register::new("alice");

    let ok = alice.send(&siphon, &[&format!("Contact: {contact}"), "Expires: 300"]);
    assert_eq!(status_code(&ok), Some(200), "{ok}");
    let listed = listed_bindings(&ok);
    assert_eq!(listed.len(), 1, "{ok}");
    assert_eq!(listed[0].0, "sip:alice@127.0.0.1:5999");
    assert!((299..=300).contains(&listed[0].1), "{ok}");
    assert_eq!(
        redis.wait_for_keys(1, Duration::from_secs(5)),
        [aor_key(&aor("alice"))]
    );
    let ttl = redis.ttl(&aor("alice"));
    assert!((290..=300).contains(&ttl), "TTL follows the binding: {ttl}");

    // Refresh: same Call-ID, higher CSeq, longer expiry; still one binding.
    let refreshed = alice.send(&siphon, &[&format!("Contact: {contact};expires=900")]);
    assert_eq!(status_code(&refreshed), Some(200), "{refreshed}");
    let listed = listed_bindings(&refreshed);
    assert_eq!(listed.len(), 1, "{refreshed}");
    assert!((899..=900).contains(&listed[0].1), "{refreshed}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis.ttl(&aor("alice")) < 800 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert!(redis.ttl(&aor("alice")) >= 800, "Redis TTL was refreshed");

    // A query (no Contact) lists the binding without changing it.
    let query = alice.send(&siphon, &[]);
    assert_eq!(status_code(&query), Some(200));
    assert_eq!(listed_bindings(&query).len(), 1, "{query}");

    // Same Call-ID with a CSeq that is not higher: 500.
    alice.cseq -= 2;
    let stale = alice.send(&siphon, &[&format!("Contact: {contact}")]);
    assert_eq!(status_code(&stale), Some(500), "{stale}");
    alice.cseq += 2;

    // Below min_expires: 423 with Min-Expires, and nothing changes.
    let brief = alice.send(&siphon, &[&format!("Contact: {contact}"), "Expires: 30"]);
    assert_eq!(status_code(&brief), Some(423), "{brief}");
    assert_eq!(header(&brief, "Min-Expires"), Some("60"), "{brief}");

    // Malformed Expires or q: 400 with a reason.
    let malformed = alice.send(&siphon, &[&format!("Contact: {contact}"), "Expires: soon"]);
    assert_eq!(status_code(&malformed), Some(400), "{malformed}");
    assert!(
        malformed.starts_with("SIP/2.0 400 Malformed Expires"),
        "{malformed}"
    );
    let bad_q = alice.send(&siphon, &[&format!("Contact: {contact};q=7")]);
    assert_eq!(status_code(&bad_q), Some(400), "{bad_q}");

    // expires=0 removes it; the 200 lists nothing and the Redis key goes.
    let removed = alice.send(&siphon, &[&format!("Contact: {contact};expires=0")]);
    assert_eq!(status_code(&removed), Some(200), "{removed}");
    assert!(listed_bindings(&removed).is_empty(), "{removed}");
    assert!(redis.wait_for_keys(0, Duration::from_secs(5)).is_empty());
}

/// Bindings are keyed by the address of record, in memory and in Redis: a
/// To with a display name, an upper-case host, the default port and
/// `;transport=udp` is stored under `sip:dave@example.org`, and a REGISTER
/// with the bare To refreshes that same binding.
#[test]
fn bindings_are_stored_under_the_address_of_record() {
    let redis = RedisServer::start();
    let siphon = start_backend(&redis);
    let contact = "<sip:dave@127.0.0.1:5998>";
    let mut register = Register::new("dave");
    register.to = Some("\"Dave\" <sip:dave@Example.ORG:5060;transport=udp>".into());
    let ok = register.send(&siphon, &[&format!("Contact: {contact}"), "Expires: 300"]);
    assert_eq!(status_code(&ok), Some(200), "{ok}");
    assert_eq!(
        redis.wait_for_keys(1, Duration::from_secs(5)),
        vec![aor_key("sip:dave@example.org")]
    );
    register.to = Some("<sip:dave@example.org>".into());
    let refreshed = register.send(&siphon, &[&format!("Contact: {contact}"), "Expires: 300"]);
    assert_eq!(status_code(&refreshed), Some(200), "{refreshed}");
    assert_eq!(listed_bindings(&refreshed).len(), 1, "{refreshed}");
    assert_eq!(redis.bindings("sip:dave@example.org").len(), 1);
    assert_eq!(redis.keys().len(), 1, "{:?}", redis.keys());
}

/// Calls to a registered user reach that user's sipp UAS and complete; an
/// INVITE to a user with no binding gets 404.
#[test]
fn call_to_registered_user_completes_and_unknown_user_gets_404() {
    let redis = RedisServer::start();
    let siphon = start_backend(&redis);
    let dir = work_dir();
    let uas_spec = SippSpec::new("uas", "uas_call.xml", Transport::Udp)
        .calls(3)
        .timeout_secs(40);
    let uas_addr = uas_spec.addr();
    let uas = uas_spec.spawn(dir.path());
    register_users(&siphon, dir.path(), "register", "bob", 3, uas_addr);

    call_users(&siphon, dir.path(), "calls", "bob", 3).assert_all_succeeded();
    uas.wait().assert_all_succeeded();

    let answer = final_answer(&invite_user(&siphon, "nobody"));
    assert_eq!(status_code(&answer), Some(404), "{answer}");
}

/// Two contacts for one user: the INVITE is forked to both; the one that
/// answers wins and the other, still ringing, is CANCELed (its scenario fails
/// unless a CANCEL arrives).
#[test]
fn fork_to_two_contacts_cancels_the_loser() {
    let redis = RedisServer::start();
    let siphon = start_backend(&redis);
    let dir = work_dir();
    let winner_spec = SippSpec::new("winner", "uas_call.xml", Transport::Udp).timeout_secs(30);
    let loser_spec = SippSpec::new("loser", "uas_cancel.xml", Transport::Udp)
        .timeout_secs(30)
        .trace_messages();
    let (winner_addr, loser_addr) = (winner_spec.addr(), loser_spec.addr());
    let winner = winner_spec.spawn(dir.path());
    let loser = loser_spec.spawn(dir.path());
    // Two REGISTERs (two Call-IDs) for the same user `carol1`.
    register_users(&siphon, dir.path(), "reg_winner", "carol", 1, winner_addr);
    register_users(&siphon, dir.path(), "reg_loser", "carol", 1, loser_addr);
    let stored = redis.bindings(&aor("carol1"));
    assert_eq!(stored.len(), 2, "both contacts are bound: {stored:?}");

    call_users(&siphon, dir.path(), "caller", "carol", 1).assert_all_succeeded();
    winner.wait().assert_all_succeeded();
    let loser = loser.wait();
    loser.assert_all_succeeded();
    assert!(
        loser
            .received_messages()
            .iter()
            .any(|m| method(m) == Some("CANCEL")),
        "{}",
        loser.report()
    );
}

/// 100 users registered on a node using Redis; the node is SIGKILLed and
/// restarted; it restores the bindings, calls to all 100 succeed with no
/// re-REGISTER, and Redis holds exactly the live bindings.
#[test]
fn restart_restores_bindings_from_redis() {
    const USERS: u32 = 100;
    let redis = RedisServer::start();
    let dir = work_dir();
    let uas_spec = SippSpec::new("uas", "uas_call.xml", Transport::Udp)
        .calls(USERS)
        .timeout_secs(60);
    let uas_addr = uas_spec.addr();
    let uas = uas_spec.spawn(dir.path());

    let first = start_backend(&redis);
    register_users(&first, dir.path(), "register", "user", USERS, uas_addr);
    assert_eq!(
        redis
            .wait_for_keys(USERS as usize, Duration::from_secs(5))
            .len(),
        USERS as usize
    );
    assert!(first.signal("KILL"));
    drop(first);

    let second = start_backend(&redis);
    assert!(
        second.wait_for_log(
            &format!("restored {USERS} contacts from Redis"),
            Duration::from_secs(5)
        ),
        "{}",
        second.log_tail(20)
    );
    call_users(&second, dir.path(), "calls", "user", USERS).assert_all_succeeded();
    uas.wait().assert_all_succeeded();

    let keys = redis.keys();
    assert_eq!(keys.len(), USERS as usize);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    for n in 1..=USERS {
        let user = format!("user{n}");
        let stored = redis.bindings(&aor(&user));
        assert_eq!(stored.len(), 1, "{user}: {stored:?}");
        assert_eq!(stored[0].0, format!("sip:{user}@{uas_addr};transport=udp"));
        assert!(
            stored[0].1 > now && stored[0].1 <= now + 300,
            "{user}: {stored:?}"
        );
    }
}

/// Redis down: REGISTERs still get 200 and calls to those users succeed from
/// memory; when redis-server comes back (empty), the node writes the current
/// bindings into it.
#[test]
fn redis_outage_serves_from_memory_and_writes_back_later() {
    const USERS: u32 = 20;
    let mut redis = RedisServer::start();
    let siphon = start_backend(&redis);
    let dir = work_dir();
    let uas_spec = SippSpec::new("uas", "uas_call.xml", Transport::Udp)
        .calls(USERS)
        .timeout_secs(40);
    let uas_addr = uas_spec.addr();
    let uas = uas_spec.spawn(dir.path());

    redis.stop();
    register_users(&siphon, dir.path(), "register", "dave", USERS, uas_addr);
    call_users(&siphon, dir.path(), "calls", "dave", USERS).assert_all_succeeded();
    uas.wait().assert_all_succeeded();
    assert!(
        siphon.wait_for_log("Redis unavailable", Duration::from_secs(5)),
        "the outage is logged\n{}",
        siphon.log_tail(20)
    );

    redis.spawn();
    let keys = redis.wait_for_keys(USERS as usize, Duration::from_secs(15));
    assert_eq!(
        keys.len(),
        USERS as usize,
        "{keys:?}\n{}",
        siphon.log_tail(20)
    );
    for n in 1..=USERS {
        let stored = redis.bindings(&aor(&format!("dave{n}")));
        assert_eq!(stored.len(), 1, "dave{n}: {stored:?}");
    }
    assert!(siphon.wait_for_log("Redis is reachable again", Duration::from_secs(5)));
}

/// Redis down at boot: the node still becomes ready and answers REGISTER from
/// memory; once redis-server starts, the restore runs and the bindings made
/// meanwhile are written.
#[test]
fn redis_down_at_boot_does_not_block_the_node() {
    let mut redis = RedisServer::start();
    redis.stop();
    let started = Instant::now();
    let siphon = start_backend(&redis);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "boot waited {:?}",
        started.elapsed()
    );
    let ok = Register::new("frank").send(&siphon, &["Contact: <sip:frank@127.0.0.1:5998>"]);
    assert_eq!(status_code(&ok), Some(200), "{ok}");

    redis.spawn();
    assert_eq!(
        redis.wait_for_keys(1, Duration::from_secs(10)),
        [aor_key(&aor("frank"))],
        "{}",
        siphon.log_tail(20)
    );
    assert!(siphon.wait_for_log("restored 0 contacts from Redis", Duration::from_secs(5)));
    let ttl = redis.ttl(&aor("frank"));
    assert!(
        (3500..=3600).contains(&ttl),
        "default_expires applies: {ttl}"
    );
}

/// A binding registered with a Path (RFC 3327) is reached through it: the
/// INVITE goes to the Path hop with that Route, Request-URI the contact.
#[test]
fn contact_registered_with_path_is_reached_through_it() {
    let redis = RedisServer::start();
    let siphon = start_backend(&redis);
    let edge = UdpPeer::bind();
    let path = format!("<sip:{};lr>", edge.local_addr());
    let ok = Register::new("gina").send(
        &siphon,
        &[
            "Contact: <sip:gina@192.0.2.7:5060>",
            &format!("Path: {path}"),
            "Supported: path",
        ],
    );
    assert_eq!(status_code(&ok), Some(200), "{ok}");
    assert_eq!(
        header(&ok, "Path"),
        Some(path.as_str()),
        "Path echoed: {ok}"
    );

    let _caller = invite_user(&siphon, "gina");
    assert_reached_through_path(&edge, &path, "sip:gina@192.0.2.7:5060", &siphon);
}

/// Any-node delivery: a subscriber registered on node b1 (with a Path, as
/// through a front LB) is reached through node b2, which never saw the
/// REGISTER: b2's lookup misses in memory and reads Redis. The INVITE goes
/// to the Path hop with that Route. Once b1 removes the binding, b2 answers
/// 404 within its brief cache.
#[test]
fn a_subscriber_registered_on_one_node_is_reached_through_another() {
    let redis = RedisServer::start();
    let b1 = start_node(&redis, "b1");
    let b2 = start_node(&redis, "b2");
    let edge = UdpPeer::bind();
    let path = format!("<sip:{};lr>", edge.local_addr());
    let contact = "<sip:hana@192.0.2.8:5060>";
    let mut hana = Register::new("hana");
    let ok = hana.send(
        &b1,
        &[
            &format!("Contact: {contact}"),
            &format!("Path: {path}"),
            "Supported: path",
        ],
    );
    assert_eq!(status_code(&ok), Some(200), "{ok}");
    assert_eq!(
        redis.wait_for_keys(1, Duration::from_secs(5)),
        [aor_key(&aor("hana"))]
    );
    let fields: Vec<String> = redis.query(&["HKEYS", &aor_key(&aor("hana"))]);
    assert_eq!(fields, ["b1"], "b1 wrote its own field");

    let _caller = invite_user(&b2, "hana");
    assert_reached_through_path(&edge, &path, "sip:hana@192.0.2.8:5060", &b2);

    let removed = hana.send(&b1, &[&format!("Contact: {contact};expires=0")]);
    assert_eq!(status_code(&removed), Some(200), "{removed}");
    assert!(redis.wait_for_keys(0, Duration::from_secs(5)).is_empty());
    // b2 kept what it read for 1 to 2 s.
    thread::sleep(Duration::from_millis(2100));
    let answer = final_answer(&invite_user(&b2, "hana"));
    assert_eq!(status_code(&answer), Some(404), "{answer}");
}

/// Many subscribers registered on b1, with sipp, are all called through b2
/// (which reads each from Redis once) and every call completes.
#[test]
fn calls_through_another_node_reach_every_subscriber() {
    const USERS: u32 = 30;
    let redis = RedisServer::start();
    let b1 = start_node(&redis, "b1");
    let b2 = start_node(&redis, "b2");
    let dir = work_dir();
    let uas_spec = SippSpec::new("uas", "uas_call.xml", Transport::Udp)
        .calls(USERS)
        .timeout_secs(40);
    let uas_addr = uas_spec.addr();
    let uas = uas_spec.spawn(dir.path());
    register_users(&b1, dir.path(), "register", "ivy", USERS, uas_addr);
    assert_eq!(
        redis
            .wait_for_keys(USERS as usize, Duration::from_secs(5))
            .len(),
        USERS as usize
    );
    call_users(&b2, dir.path(), "calls", "ivy", USERS).assert_all_succeeded();
    uas.wait().assert_all_succeeded();
}

/// Redis Sentinel: the primary dies while its replica lags behind (frozen
/// with SIGSTOP, so it lacks the last 20 bindings the primary acknowledged).
/// Sentinel promotes the replica; siphon finds it through the Sentinels,
/// re-writes every binding it holds, and also writes those registered during
/// the failover. Afterwards the new primary holds every acknowledged binding
/// and every subscriber is still called.
#[test]
fn a_redis_primary_failover_loses_no_acknowledged_binding() {
    let mut primary = RedisServer::start();
    let replica = RedisServer::start_with(&["--replicaof", LOCALHOST, &primary.port.to_string()]);
    let sentinels: Vec<RedisServer> = (0..3)
        .map(|_| RedisServer::start_sentinel("siphon", primary.port, 2))
        .collect();
    let synced = |server: &RedisServer| {
        server
            .query::<String>(&["INFO", "replication"])
            .contains("master_link_status:up")
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(synced(&replica)
        && sentinels.iter().all(|s| {
            !s.query::<Vec<::redis::Value>>(&["SENTINEL", "REPLICAS", "siphon"])
                .is_empty()
        }))
    {
        assert!(Instant::now() < deadline, "replica or sentinels not ready");
        thread::sleep(Duration::from_millis(100));
    }
    let seeds: Vec<String> = sentinels
        .iter()
        .map(|s| format!("\"{}\"", s.addr()))
        .collect();
    let node = Siphon::start(
        &node_config(
            &format!("sentinels: [{}], master_name: siphon", seeds.join(", ")),
            "b1",
        ),
        &example_script("proxy.py"),
    );
    let dir = work_dir();
    let uas_spec = SippSpec::new("uas", "uas_call.xml", Transport::Udp)
        .calls(50)
        .timeout_secs(60);
    let uas_addr = uas_spec.addr();
    let uas = uas_spec.spawn(dir.path());

    register_users(&node, dir.path(), "replicated", "kim", 20, uas_addr);
    assert_eq!(replica.wait_for_keys(20, Duration::from_secs(5)).len(), 20);
    let replica_pid = replica.pid().expect("replica running");
    assert!(send_signal(replica_pid, "STOP"));
    register_users(&node, dir.path(), "unreplicated", "lee", 20, uas_addr);
    assert_eq!(primary.wait_for_keys(40, Duration::from_secs(5)).len(), 40);
    primary.stop();
    assert!(send_signal(replica_pid, "CONT"));
    // Registered while there is no primary: answered from memory.
    register_users(&node, dir.path(), "failover", "moe", 10, uas_addr);

    let deadline = Instant::now() + Duration::from_secs(20);
    while !replica
        .query::<String>(&["INFO", "replication"])
        .contains("role:master")
    {
        assert!(
            Instant::now() < deadline,
            "Sentinel never promoted the replica"
        );
        thread::sleep(Duration::from_millis(100));
    }
    let keys = replica.wait_for_keys(50, Duration::from_secs(15));
    assert_eq!(keys.len(), 50, "{keys:?}\n{}", node.log_tail(20));
    for user in ["kim7", "lee13", "moe4"] {
        assert_eq!(replica.bindings(&aor(user)).len(), 1, "{user}");
    }
    assert!(node.wait_for_log("re-writing the", Duration::from_secs(1)));
    for (name, user, n) in [
        ("call_kim", "kim", 20),
        ("call_lee", "lee", 20),
        ("call_moe", "moe", 10),
    ] {
        call_users(&node, dir.path(), name, user, n).assert_all_succeeded();
    }
    uas.wait().assert_all_succeeded();
}

/// A 3-primary Redis Cluster: the AoR keys spread over the nodes' slots,
/// subscribers registered on b1 are called through b2, and a restarted b1
/// restores its bindings from its index set.
#[test]
fn bindings_live_in_a_redis_cluster_and_any_node_reaches_them() {
    const USERS: u32 = 30;
    let cluster = RedisCluster::start(3);
    let seeds: Vec<String> = cluster.seeds().iter().map(|s| format!("\"{s}\"")).collect();
    let redis = format!("cluster: [{}]", seeds.join(", "));
    let b1 = Siphon::start(&node_config(&redis, "b1"), &example_script("proxy.py"));
    let b2 = Siphon::start(&node_config(&redis, "b2"), &example_script("proxy.py"));
    let dir = work_dir();
    let uas_spec = SippSpec::new("uas", "uas_call.xml", Transport::Udp)
        .calls(2 * USERS)
        .timeout_secs(60);
    let uas_addr = uas_spec.addr();
    let uas = uas_spec.spawn(dir.path());
    register_users(&b1, dir.path(), "register", "ned", USERS, uas_addr);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut per_node = cluster.keys_per_node();
    while per_node.iter().map(Vec::len).sum::<usize>() < USERS as usize {
        assert!(
            Instant::now() < deadline,
            "{per_node:?}\n{}",
            b1.log_tail(20)
        );
        thread::sleep(Duration::from_millis(100));
        per_node = cluster.keys_per_node();
    }
    assert!(
        per_node.iter().filter(|keys| !keys.is_empty()).count() >= 2,
        "the AoRs spread over the slots: {per_node:?}"
    );
    assert_eq!(cluster.bindings(&aor("ned5")).len(), 1);

    call_users(&b2, dir.path(), "through_b2", "ned", USERS).assert_all_succeeded();
    assert!(b1.signal("KILL"));
    drop(b1);
    let b1 = Siphon::start(&node_config(&redis, "b1"), &example_script("proxy.py"));
    assert!(
        b1.wait_for_log(
            &format!("restored {USERS} contacts from Redis"),
            Duration::from_secs(5)
        ),
        "{}",
        b1.log_tail(20)
    );
    call_users(&b1, dir.path(), "through_b1", "ned", USERS).assert_all_succeeded();
    uas.wait().assert_all_succeeded();
}

#[test]
fn two_nodes_with_one_instance_id_are_told_apart_with_a_warning() {
    let redis = RedisServer::start();
    let first = start_node(&redis, "twin");
    let second = start_node(&redis, "twin");
    let warning = "another node writes bindings to Redis with this server.instance_id";
    for (node, user) in [(&first, "ada"), (&second, "ben"), (&first, "cyd")] {
        let contact = format!("Contact: <sip:{user}@192.0.2.8:5060>");
        let ok = Register::new(user).send(node, &[&contact]);
        assert_eq!(status_code(&ok), Some(200), "{ok}");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !(first.log().contains(warning) || second.log().contains(warning)) {
        assert!(
            std::time::Instant::now() < deadline,
            "no warning:\n{}\n{}",
            first.log_tail(10),
            second.log_tail(10)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Only the one that came second says it: the first holds the name.
    assert!(!(first.log().contains(warning) && second.log().contains(warning)));
    // Nodes of their own names never warn.
    let other = start_node(&redis, "solo");
    let ok = Register::new("dee").send(&other, &["Contact: <sip:dee@192.0.2.8:5060>"]);
    assert_eq!(status_code(&ok), Some(200), "{ok}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(!other.log().contains(warning));
}
