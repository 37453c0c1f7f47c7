//! The edge guard: which sources may talk to us at all. Trusted networks
//! pass untouched; every other source IP has a token bucket, and one that
//! empties it is banned for a while (Kamailio's `pike` plus a ban list).
//! Scanner User-Agents are recognised here too.
//!
//! Pure: the caller passes `now` and the source; nothing here logs, so a
//! flood never floods the log. Drops and bans are counted for the summary
//! line the caller writes once per interval.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::{canonical, Cidr};

/// Sources tracked at most; past it, idle buckets are swept and, failing
/// that, every bucket starts afresh (bans are kept).
const MAX_SOURCES: usize = 65_536;
/// Bans held at most; past it, a new offender's whole prefix is banned
/// ([`wider`]), and failing room for that, the ban nearest its end gives
/// way: banning never stops.
const MAX_BANS: usize = 65_536;
/// How long an overflowing source's strikes are remembered.
const STRIKE_WINDOW: Duration = Duration::from_secs(10);

/// `security.rate_limit`: a token bucket per source (an IPv4 address, an
/// IPv6 /64).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_sec: f64,
    pub burst: f64,
    /// How long an offender is banned; zero only drops the excess.
    pub ban: Duration,
    /// Messages over the limit within [`STRIKE_WINDOW`] that make a ban:
    /// evidence of a flood, not one stray burst.
    pub ban_after: u32,
}

/// What the guard is told to enforce.
#[derive(Debug, Clone, Default)]
pub struct EdgePolicy {
    pub trusted: Vec<Cidr>,
    pub rate_limit: Option<RateLimit>,
    /// Lowercase substrings of User-Agents that get no answer.
    pub scanner_user_agents: Vec<String>,
    /// Answer a limited request 503 + Retry-After instead of dropping it.
    pub reply_on_limit: bool,
}

impl EdgePolicy {
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.trusted.iter().any(|net| net.contains(ip))
    }

    /// True when a User-Agent names a scanner (case-insensitive substring).
    pub fn is_scanner(&self, user_agent: &str) -> bool {
        if self.scanner_user_agents.is_empty() {
            return false;
        }
        let lower = user_agent.to_ascii_lowercase();
        self.scanner_user_agents
            .iter()
            .any(|needle| lower.contains(needle.as_str()))
    }
}

/// How a message reached us. A datagram's source address is whatever the
/// sender wrote, so datagrams alone can only ban datagrams; a stream's was
/// proven by its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    Datagram,
    Stream,
}

/// What to do with a message from a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Drop it without a word.
    Drop,
    /// Over the limit with `on_limit: reply`: answer 503 with this
    /// Retry-After (when the message is a request we can answer).
    Refuse {
        retry_after_secs: u64,
    },
}

/// Where a source is banned: the edge, which drops what it sends. The
/// script's `auth` bans guessers through it.
pub trait Banning: Send + Sync {
    fn ban(
        &self,
        ip: std::net::IpAddr,
        channel: Channel,
        length: std::time::Duration,
        reason: BanReason,
    );
}

/// Why a source is banned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BanReason {
    RateLimit,
    /// Failed digest authentications past `auth.max_failures`.
    AuthFailures,
}

impl BanReason {
    pub fn as_str(self) -> &'static str {
        match self {
            BanReason::RateLimit => "rate_limit",
            BanReason::AuthFailures => "auth_failures",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Ban {
    until: Instant,
    reason: BanReason,
    /// The evidence came by datagrams only: streams stay open.
    datagrams_only: bool,
    /// Messages dropped while it lasts.
    dropped: u64,
}

/// One ban, as `GET /admin/bans` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanEntry {
    /// The banned network: one address, an IPv6 /64, or a wider prefix
    /// once the table is full.
    pub network: Cidr,
    pub remaining_secs: u64,
    pub reason: BanReason,
    /// Only UDP is refused (the evidence came by datagrams).
    pub udp_only: bool,
    pub dropped: u64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
    /// Messages over the limit since `strikes_since`.
    strikes: u32,
    strikes_since: Instant,
}

/// Counts since the last summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EdgeSummary {
    pub rate_limited: u64,
    pub banned_dropped: u64,
    pub scanners: u64,
    /// Networks banned in the interval (the first few, and how many in all).
    pub new_bans: Vec<Cidr>,
    pub new_ban_count: u64,
    pub active_bans: usize,
}

impl EdgeSummary {
    pub fn is_quiet(&self) -> bool {
        self.rate_limited == 0
            && self.banned_dropped == 0
            && self.scanners == 0
            && self.new_ban_count == 0
    }
}

/// New bans named in one summary line at most.
const NAMED_BANS: usize = 8;

/// The mutable state: buckets, bans and the counts for the summary.
#[derive(Debug)]
pub struct EdgeGuard {
    policy: EdgePolicy,
    buckets: HashMap<(IpAddr, Channel), Bucket>,
    bans: HashMap<Cidr, Ban>,
    summary: EdgeSummary,
}

impl EdgeGuard {
    pub fn new(policy: EdgePolicy) -> Self {
        EdgeGuard {
            policy,
            buckets: HashMap::new(),
            bans: HashMap::new(),
            summary: EdgeSummary::default(),
        }
    }

    pub fn policy(&self) -> &EdgePolicy {
        &self.policy
    }

    /// A new policy; sources' buckets start afresh, bans stay.
    pub fn set_policy(&mut self, policy: EdgePolicy) {
        // The buckets' levels are in the old rate's terms; a change of the
        // scanner list or the trusted networks keeps them.
        if policy.rate_limit != self.policy.rate_limit {
            self.buckets.clear();
        }
        self.policy = policy;
    }

    /// Whether anything here can stop a message: when not, callers skip
    /// the guard (and its lock) entirely.
    pub fn limits_sources(&self) -> bool {
        self.policy.rate_limit.is_some() || !self.bans.is_empty()
    }

    /// The ban in force on `ip` for `channel`, if any.
    fn ban_on(&mut self, now: Instant, ip: IpAddr, channel: Channel) -> Option<&mut Ban> {
        let key = [source_network(ip), wider(ip)].into_iter().find(|key| {
            self.bans.get(key).is_some_and(|ban| {
                ban.until > now && !(ban.datagrams_only && channel == Channel::Stream)
            })
        })?;
        self.bans.get_mut(&key)
    }

    /// Checks one message (any kind, parsed or not) from `ip`.
    pub fn check(&mut self, now: Instant, ip: IpAddr, channel: Channel) -> Verdict {
        let ip = canonical(ip);
        if self.policy.is_trusted(ip) {
            return Verdict::Pass;
        }
        if let Some(ban) = self.ban_on(now, ip, channel) {
            ban.dropped += 1;
            let remaining = ban.until.saturating_duration_since(now);
            self.summary.banned_dropped += 1;
            return self.limited(remaining);
        }
        let Some(limit) = self.policy.rate_limit else {
            return Verdict::Pass;
        };
        let key = (source_network(ip).network, channel);
        if self.buckets.len() >= MAX_SOURCES && !self.buckets.contains_key(&key) {
            self.sweep_buckets(now, limit);
            if self.buckets.len() >= MAX_SOURCES {
                self.buckets.clear();
            }
        }
        let bucket = self.buckets.entry(key).or_insert(Bucket {
            tokens: limit.burst,
            last: now,
            strikes: 0,
            strikes_since: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * limit.per_sec).min(limit.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Verdict::Pass;
        }
        self.summary.rate_limited += 1;
        if now.saturating_duration_since(bucket.strikes_since) > STRIKE_WINDOW {
            bucket.strikes = 0;
            bucket.strikes_since = now;
        }
        bucket.strikes += 1;
        if limit.ban.is_zero() || bucket.strikes < limit.ban_after {
            return self.limited(Duration::from_secs(1));
        }
        self.buckets.remove(&key);
        self.ban(now, ip, channel, limit.ban, BanReason::RateLimit);
        self.limited(limit.ban)
    }

    /// A scanner's request: counted (and dropped by the caller). A
    /// User-Agent is one unverifiable line, so it never bans by itself.
    pub fn scanner_seen(&mut self) {
        self.summary.scanners += 1;
    }

    /// Bans `ip` for `length` on evidence that came by `channel` (trusted
    /// sources never). Returns false when nothing was banned.
    pub fn ban(
        &mut self,
        now: Instant,
        ip: IpAddr,
        channel: Channel,
        length: Duration,
        reason: BanReason,
    ) -> bool {
        let ip = canonical(ip);
        if self.policy.is_trusted(ip) || length.is_zero() {
            return false;
        }
        let mut network = source_network(ip);
        if self.bans.len() >= MAX_BANS && !self.bans.contains_key(&network) {
            self.bans.retain(|_, ban| ban.until > now);
            if self.bans.len() >= MAX_BANS {
                // A full table: ban the prefix, and make room if even that
                // is new (the ban nearest its end gives way).
                network = wider(ip);
                if !self.bans.contains_key(&network) {
                    if let Some(soonest) = self
                        .bans
                        .iter()
                        .min_by_key(|(_, ban)| ban.until)
                        .map(|(key, _)| *key)
                    {
                        self.bans.remove(&soonest);
                    }
                }
            }
        }
        let datagrams_only = channel == Channel::Datagram
            && self
                .bans
                .get(&network)
                .is_none_or(|old| old.until <= now || old.datagrams_only);
        self.bans.insert(
            network,
            Ban {
                until: now + length,
                reason,
                datagrams_only,
                dropped: 0,
            },
        );
        self.summary.new_ban_count += 1;
        if self.summary.new_bans.len() < NAMED_BANS {
            self.summary.new_bans.push(network);
        }
        true
    }

    fn limited(&self, remaining: Duration) -> Verdict {
        if self.policy.reply_on_limit {
            Verdict::Refuse {
                retry_after_secs: remaining.as_secs().max(1),
            }
        } else {
            Verdict::Drop
        }
    }

    /// Bans in force, longest remaining first.
    pub fn bans(&self, now: Instant) -> Vec<BanEntry> {
        let mut entries: Vec<BanEntry> = self
            .bans
            .iter()
            .filter(|(_, ban)| ban.until > now)
            .map(|(network, ban)| BanEntry {
                network: *network,
                remaining_secs: ban.until.saturating_duration_since(now).as_secs().max(1),
                reason: ban.reason,
                udp_only: ban.datagrams_only,
                dropped: ban.dropped,
            })
            .collect();
        entries.sort_by(|a, b| {
            b.remaining_secs
                .cmp(&a.remaining_secs)
                .then(a.network.to_string().cmp(&b.network.to_string()))
        });
        entries
    }

    /// Lifts the bans on `ip` (its address or /64, and its wider prefix)
    /// and forgets its buckets; false when there was none.
    pub fn lift(&mut self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        let network = source_network(ip).network;
        self.buckets.retain(|(key, _), _| *key != network);
        let own = self.bans.remove(&source_network(ip)).is_some();
        let wide = self.bans.remove(&wider(ip)).is_some();
        own || wide
    }

    /// Forgets expired bans and idle buckets, and returns the counts since
    /// the last call.
    pub fn take_summary(&mut self, now: Instant) -> EdgeSummary {
        self.bans.retain(|_, ban| ban.until > now);
        if let Some(limit) = self.policy.rate_limit {
            self.sweep_buckets(now, limit);
        }
        let mut summary = std::mem::take(&mut self.summary);
        summary.active_bans = self.bans.len();
        summary
    }

    /// Drops buckets that have refilled and hold no recent strikes: they
    /// hold nothing a fresh one would not.
    fn sweep_buckets(&mut self, now: Instant, limit: RateLimit) {
        let refill = Duration::from_secs_f64(limit.burst / limit.per_sec);
        self.buckets.retain(|_, bucket| {
            now.saturating_duration_since(bucket.last) < refill
                || (bucket.strikes > 0
                    && now.saturating_duration_since(bucket.strikes_since) <= STRIKE_WINDOW)
        });
    }

    /// Sources tracked (for tests and the bound).
    pub fn tracked_sources(&self) -> usize {
        self.buckets.len()
    }
}

/// The unit a source is counted and banned as: its IPv4 address, or its
/// IPv6 /64 (one subscriber's whole allocation).
pub fn source_network(ip: IpAddr) -> Cidr {
    match canonical(ip) {
        IpAddr::V4(v4) => Cidr::new(IpAddr::V4(v4), 32),
        IpAddr::V6(v6) => Cidr::new(IpAddr::V6(v6), 64),
    }
}

/// The prefix banned once the table is full: a /24, or an IPv6 /48.
fn wider(ip: IpAddr) -> Cidr {
    match canonical(ip) {
        IpAddr::V4(v4) => Cidr::new(IpAddr::V4(v4), 24),
        IpAddr::V6(v6) => Cidr::new(IpAddr::V6(v6), 48),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UDP: Channel = Channel::Datagram;
    const TCP: Channel = Channel::Stream;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn guard(per_sec: f64, burst: f64, ban_secs: u64) -> EdgeGuard {
        EdgeGuard::new(EdgePolicy {
            trusted: vec!["10.0.0.0/8".parse().unwrap()],
            rate_limit: Some(RateLimit {
                per_sec,
                burst,
                ban: Duration::from_secs(ban_secs),
                ban_after: burst as u32,
            }),
            scanner_user_agents: vec!["friendly-scanner".into(), "sipvicious".into()],
            reply_on_limit: false,
        })
    }

    #[test]
    fn a_burst_passes_and_only_a_flood_past_it_bans_for_ban_secs() {
        let mut g = guard(10.0, 20.0, 300);
        let t0 = Instant::now();
        let attacker = ip("127.0.0.9");
        let passed = (0..100)
            .filter(|_| g.check(t0, attacker, UDP) == Verdict::Pass)
            .count();
        assert_eq!(passed, 20, "exactly the burst passes at one instant");
        let bans = g.bans(t0);
        assert_eq!(bans.len(), 1, "20 over the limit is evidence");
        assert_eq!(bans[0].network, source_network(attacker));
        assert_eq!(bans[0].remaining_secs, 300);
        assert_eq!(bans[0].reason, BanReason::RateLimit);
        assert!(bans[0].udp_only);
        // Still banned late in the ban, although the bucket would have refilled.
        let late = t0 + Duration::from_secs(299);
        assert_eq!(g.check(late, attacker, UDP), Verdict::Drop);
        // Free again after it.
        let after = t0 + Duration::from_secs(301);
        assert_eq!(g.check(after, attacker, UDP), Verdict::Pass);
        let summary = g.take_summary(after);
        assert_eq!(summary.rate_limited, 20);
        assert_eq!(summary.banned_dropped, 61);
        assert_eq!(summary.new_bans, vec![source_network(attacker)]);
        assert_eq!(summary.active_bans, 0);
        assert!(g.take_summary(t0).is_quiet(), "counts start afresh");
    }

    #[test]
    fn one_overflow_short_of_the_evidence_is_dropped_not_banned() {
        let mut g = guard(10.0, 20.0, 300);
        let t0 = Instant::now();
        let src = ip("127.0.0.10");
        let passed = (0..39)
            .filter(|_| g.check(t0, src, UDP) == Verdict::Pass)
            .count();
        assert_eq!(passed, 20);
        assert!(g.bans(t0).is_empty());
        // Strikes are forgotten after the window.
        let later = t0 + STRIKE_WINDOW + Duration::from_secs(1);
        let passed = (0..39)
            .filter(|_| g.check(later, src, UDP) == Verdict::Pass)
            .count();
        assert_eq!(passed, 20);
        assert!(g.bans(later).is_empty());
    }

    #[test]
    fn a_ban_on_datagram_evidence_leaves_the_address_s_streams_alone() {
        let mut g = guard(10.0, 5.0, 300);
        let t0 = Instant::now();
        let victim = ip("198.51.100.7");
        for _ in 0..50 {
            g.check(t0, victim, UDP);
        }
        assert_eq!(g.check(t0, victim, UDP), Verdict::Drop);
        assert_eq!(
            g.check(t0, victim, TCP),
            Verdict::Pass,
            "its TCP/TLS/WS go on"
        );
        // Evidence from its own stream bans it everywhere.
        for _ in 0..50 {
            g.check(t0, victim, TCP);
        }
        assert_eq!(g.check(t0, victim, TCP), Verdict::Drop);
        assert!(!g.bans(t0)[0].udp_only);
    }

    #[test]
    fn ipv6_sources_count_and_ban_per_64() {
        let mut g = guard(10.0, 5.0, 300);
        let t0 = Instant::now();
        // One flooder spread over its /64: every address shares one bucket.
        for n in 0..40u16 {
            g.check(t0, ip(&format!("2001:db8:1:2::{n:x}")), UDP);
        }
        assert_eq!(g.check(t0, ip("2001:db8:1:2:ffff::1"), UDP), Verdict::Drop);
        assert_eq!(g.bans(t0)[0].network.to_string(), "2001:db8:1:2::/64");
        assert_eq!(
            g.check(t0, ip("2001:db8:1:3::1"), UDP),
            Verdict::Pass,
            "the next /64"
        );
    }

    #[test]
    fn a_full_ban_table_bans_prefixes_instead_of_giving_up() {
        let mut g = guard(10.0, 1.0, 300);
        let t0 = Instant::now();
        for n in 0..MAX_BANS as u32 {
            let src = IpAddr::from((0xC633_0000u32 + n).to_be_bytes());
            assert!(g.ban(t0, src, UDP, Duration::from_secs(300), BanReason::RateLimit));
        }
        assert_eq!(g.bans.len(), MAX_BANS);
        let late = ip("203.0.113.77");
        assert!(g.ban(
            t0,
            late,
            UDP,
            Duration::from_secs(300),
            BanReason::RateLimit
        ));
        assert!(g.bans.len() <= MAX_BANS);
        assert_eq!(g.check(t0, late, UDP), Verdict::Drop);
        assert_eq!(
            g.check(t0, ip("203.0.113.5"), UDP),
            Verdict::Drop,
            "its /24"
        );
    }

    #[test]
    fn a_steady_source_under_the_rate_is_never_limited() {
        let mut g = guard(30.0, 60.0, 300);
        let t0 = Instant::now();
        let phone = ip("192.0.2.7");
        for i in 0..3000u64 {
            // 25 messages a second for two minutes.
            let now = t0 + Duration::from_millis(i * 40);
            assert_eq!(g.check(now, phone, UDP), Verdict::Pass, "message {i}");
        }
    }

    #[test]
    fn trusted_sources_are_never_limited_or_banned() {
        let mut g = guard(1.0, 1.0, 300);
        let t0 = Instant::now();
        for _ in 0..1000 {
            assert_eq!(g.check(t0, ip("10.1.2.3"), UDP), Verdict::Pass);
        }
        assert!(!g.ban(
            t0,
            ip("10.1.2.3"),
            TCP,
            Duration::from_secs(9),
            BanReason::AuthFailures
        ));
        assert!(g.bans(t0).is_empty());
        // An IPv4-mapped IPv6 source is the IPv4 address.
        assert_eq!(g.check(t0, ip("::ffff:10.9.9.9"), UDP), Verdict::Pass);
        assert_eq!(g.check(t0, ip("::ffff:10.9.9.9"), UDP), Verdict::Pass);
    }

    #[test]
    fn one_source_being_banned_leaves_the_others_alone() {
        let mut g = guard(5.0, 5.0, 60);
        let t0 = Instant::now();
        for _ in 0..50 {
            g.check(t0, ip("127.0.0.66"), UDP);
        }
        assert_eq!(g.check(t0, ip("127.0.0.67"), UDP), Verdict::Pass);
        assert_eq!(g.check(t0, ip("2001:db8::1"), UDP), Verdict::Pass);
    }

    #[test]
    fn on_limit_reply_refuses_with_the_ban_time_as_retry_after() {
        let mut g = guard(1.0, 2.0, 120);
        g.policy.reply_on_limit = true;
        let t0 = Instant::now();
        let src = ip("127.0.0.5");
        assert_eq!(g.check(t0, src, UDP), Verdict::Pass);
        assert_eq!(g.check(t0, src, UDP), Verdict::Pass);
        let refused = Verdict::Refuse {
            retry_after_secs: 1,
        };
        assert_eq!(
            g.check(t0, src, UDP),
            refused,
            "over the limit, not yet banned"
        );
        assert_eq!(
            g.check(t0, src, UDP),
            Verdict::Refuse {
                retry_after_secs: 120
            }
        );
        assert_eq!(
            g.check(t0 + Duration::from_secs(20), src, UDP),
            Verdict::Refuse {
                retry_after_secs: 100
            }
        );
    }

    #[test]
    fn without_ban_secs_only_the_excess_is_dropped() {
        let mut g = guard(10.0, 10.0, 0);
        let t0 = Instant::now();
        let src = ip("127.0.0.8");
        let passed = (0..30)
            .filter(|_| g.check(t0, src, UDP) == Verdict::Pass)
            .count();
        assert_eq!(passed, 10);
        assert!(g.bans(t0).is_empty());
        // A second later the bucket has refilled.
        let later = t0 + Duration::from_secs(1);
        let passed = (0..30)
            .filter(|_| g.check(later, src, UDP) == Verdict::Pass)
            .count();
        assert_eq!(passed, 10);
    }

    #[test]
    fn lifting_a_ban_lets_the_source_in_at_once() {
        let mut g = guard(1.0, 1.0, 300);
        let t0 = Instant::now();
        let src = ip("127.0.0.20");
        for _ in 0..3 {
            g.check(t0, src, UDP);
        }
        assert_eq!(g.check(t0, src, UDP), Verdict::Drop);
        assert!(g.lift(src));
        assert!(!g.lift(src), "nothing left to lift");
        assert_eq!(g.check(t0, src, UDP), Verdict::Pass);
    }

    #[test]
    fn scanners_are_recognised_case_insensitively_and_never_banned() {
        let mut g = guard(30.0, 60.0, 300);
        assert!(g.policy().is_scanner("friendly-scanner"));
        assert!(g.policy().is_scanner("SIPVicious 0.3.8"));
        assert!(!g.policy().is_scanner("baresip v3.0.0 (x86_64/linux)"));
        let t0 = Instant::now();
        g.scanner_seen();
        assert_eq!(g.check(t0, ip("127.0.0.30"), UDP), Verdict::Pass);
        assert!(g.bans(t0).is_empty());
        assert_eq!(g.take_summary(t0).scanners, 1);
    }

    #[test]
    fn the_source_table_stays_bounded_under_spoofed_sources() {
        let mut g = guard(10.0, 20.0, 300);
        let t0 = Instant::now();
        for n in 0..(MAX_SOURCES as u32 * 3) {
            let src = IpAddr::from((0xC612_0000u32 + n).to_be_bytes());
            g.check(t0, src, UDP);
        }
        assert!(g.tracked_sources() <= MAX_SOURCES);
        // Idle sources are forgotten once their bucket would be full again.
        g.take_summary(t0 + Duration::from_secs(3));
        assert_eq!(g.tracked_sources(), 0);
    }
}
