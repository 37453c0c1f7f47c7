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

use super::Cidr;

/// Sources tracked at most; past it, idle buckets are swept and, failing
/// that, every bucket starts afresh (bans are kept).
const MAX_SOURCES: usize = 65_536;
/// Bans held at most; past it, new offenders are dropped but not listed.
const MAX_BANS: usize = 65_536;

/// `security.rate_limit`: a token bucket per source IP.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_sec: f64,
    pub burst: f64,
    /// How long an offender is banned; zero only drops the excess.
    pub ban: Duration,
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

/// Why a source is banned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BanReason {
    RateLimit,
    Scanner,
}

impl BanReason {
    pub fn as_str(self) -> &'static str {
        match self {
            BanReason::RateLimit => "rate_limit",
            BanReason::Scanner => "scanner",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Ban {
    until: Instant,
    reason: BanReason,
    /// Messages dropped while it lasts.
    dropped: u64,
}

/// One ban, as `GET /admin/bans` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanEntry {
    pub ip: IpAddr,
    pub remaining_secs: u64,
    pub reason: BanReason,
    pub dropped: u64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Counts since the last summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EdgeSummary {
    pub rate_limited: u64,
    pub banned_dropped: u64,
    pub scanners: u64,
    /// Sources banned in the interval (the first few, and how many in all).
    pub new_bans: Vec<IpAddr>,
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
    buckets: HashMap<IpAddr, Bucket>,
    bans: HashMap<IpAddr, Ban>,
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

    /// Whether anything here can stop a message: when not, callers skip
    /// the guard (and its lock) entirely.
    pub fn limits_sources(&self) -> bool {
        self.policy.rate_limit.is_some() || !self.bans.is_empty()
    }

    /// Checks one message (any kind, parsed or not) from `ip`.
    pub fn check(&mut self, now: Instant, ip: IpAddr) -> Verdict {
        let ip = canonical(ip);
        if self.policy.is_trusted(ip) {
            return Verdict::Pass;
        }
        if let Some(ban) = self.bans.get_mut(&ip) {
            if ban.until > now {
                ban.dropped += 1;
                self.summary.banned_dropped += 1;
                let remaining = ban.until.saturating_duration_since(now);
                return self.limited(remaining);
            }
            self.bans.remove(&ip);
        }
        let Some(limit) = self.policy.rate_limit else {
            return Verdict::Pass;
        };
        if self.buckets.len() >= MAX_SOURCES && !self.buckets.contains_key(&ip) {
            self.sweep_buckets(now, limit);
            if self.buckets.len() >= MAX_SOURCES {
                self.buckets.clear();
            }
        }
        let bucket = self.buckets.entry(ip).or_insert(Bucket {
            tokens: limit.burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * limit.per_sec).min(limit.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Verdict::Pass;
        }
        self.summary.rate_limited += 1;
        if limit.ban.is_zero() {
            return self.limited(Duration::from_secs(1));
        }
        self.buckets.remove(&ip);
        self.ban(now, ip, limit.ban, BanReason::RateLimit);
        self.limited(limit.ban)
    }

    /// A scanner's request: dropped, and its source banned as a rate-limit
    /// offender would be (when bans are on). Trusted sources are not banned.
    pub fn scanner_seen(&mut self, now: Instant, ip: IpAddr) {
        let ip = canonical(ip);
        self.summary.scanners += 1;
        if self.policy.is_trusted(ip) {
            return;
        }
        if let Some(limit) = self.policy.rate_limit.filter(|l| !l.ban.is_zero()) {
            self.ban(now, ip, limit.ban, BanReason::Scanner);
        }
    }

    fn ban(&mut self, now: Instant, ip: IpAddr, length: Duration, reason: BanReason) {
        if self.bans.len() >= MAX_BANS {
            self.bans.retain(|_, ban| ban.until > now);
            if self.bans.len() >= MAX_BANS {
                return;
            }
        }
        self.bans.insert(
            ip,
            Ban {
                until: now + length,
                reason,
                dropped: 0,
            },
        );
        self.summary.new_ban_count += 1;
        if self.summary.new_bans.len() < NAMED_BANS {
            self.summary.new_bans.push(ip);
        }
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
            .map(|(ip, ban)| BanEntry {
                ip: *ip,
                remaining_secs: ban.until.saturating_duration_since(now).as_secs().max(1),
                reason: ban.reason,
                dropped: ban.dropped,
            })
            .collect();
        entries.sort_by(|a, b| {
            b.remaining_secs
                .cmp(&a.remaining_secs)
                .then(a.ip.cmp(&b.ip))
        });
        entries
    }

    /// Lifts the ban on `ip` (and forgets its bucket); false when there was none.
    pub fn lift(&mut self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.buckets.remove(&ip);
        self.bans.remove(&ip).is_some()
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

    /// Drops buckets that have refilled: they hold nothing a fresh one would not.
    fn sweep_buckets(&mut self, now: Instant, limit: RateLimit) {
        let refill = Duration::from_secs_f64(limit.burst / limit.per_sec);
        self.buckets
            .retain(|_, bucket| now.saturating_duration_since(bucket.last) < refill);
    }

    /// Sources tracked (for tests and the bound).
    pub fn tracked_sources(&self) -> usize {
        self.buckets.len()
    }
}

/// An IPv4-mapped IPv6 address counts as the IPv4 address it carries.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            }),
            scanner_user_agents: vec!["friendly-scanner".into(), "sipvicious".into()],
            reply_on_limit: false,
        })
    }

    #[test]
    fn a_burst_passes_then_the_source_is_banned_for_ban_secs() {
        let mut g = guard(10.0, 20.0, 300);
        let t0 = Instant::now();
        let attacker = ip("127.0.0.9");
        let passed = (0..100)
            .filter(|_| g.check(t0, attacker) == Verdict::Pass)
            .count();
        assert_eq!(passed, 20, "exactly the burst passes at one instant");
        let bans = g.bans(t0);
        assert_eq!(bans.len(), 1);
        assert_eq!(bans[0].ip, attacker);
        assert_eq!(bans[0].remaining_secs, 300);
        assert_eq!(bans[0].reason, BanReason::RateLimit);
        // Still banned late in the ban, although the bucket would have refilled.
        assert_eq!(
            g.check(t0 + Duration::from_secs(299), attacker),
            Verdict::Drop
        );
        // Free again after it.
        assert_eq!(
            g.check(t0 + Duration::from_secs(301), attacker),
            Verdict::Pass
        );
        let summary = g.take_summary(t0 + Duration::from_secs(301));
        assert_eq!(summary.rate_limited, 1);
        assert_eq!(summary.banned_dropped, 80);
        assert_eq!(summary.new_bans, vec![attacker]);
        assert_eq!(summary.active_bans, 0);
        assert!(g.take_summary(t0).is_quiet(), "counts start afresh");
    }

    #[test]
    fn a_steady_source_under_the_rate_is_never_limited() {
        let mut g = guard(30.0, 60.0, 300);
        let t0 = Instant::now();
        let phone = ip("192.0.2.7");
        for i in 0..3000u64 {
            // 25 messages a second for two minutes.
            let now = t0 + Duration::from_millis(i * 40);
            assert_eq!(g.check(now, phone), Verdict::Pass, "message {i}");
        }
    }

    #[test]
    fn trusted_sources_are_never_limited_or_banned() {
        let mut g = guard(1.0, 1.0, 300);
        let t0 = Instant::now();
        for _ in 0..1000 {
            assert_eq!(g.check(t0, ip("10.1.2.3")), Verdict::Pass);
        }
        g.scanner_seen(t0, ip("10.1.2.3"));
        assert!(g.bans(t0).is_empty());
        // An IPv4-mapped IPv6 source is the IPv4 address.
        assert_eq!(g.check(t0, ip("::ffff:10.9.9.9")), Verdict::Pass);
        assert_eq!(g.check(t0, ip("::ffff:10.9.9.9")), Verdict::Pass);
    }

    #[test]
    fn one_source_being_banned_leaves_the_others_alone() {
        let mut g = guard(5.0, 5.0, 60);
        let t0 = Instant::now();
        for _ in 0..50 {
            g.check(t0, ip("127.0.0.66"));
        }
        assert_eq!(g.check(t0, ip("127.0.0.67")), Verdict::Pass);
        assert_eq!(g.check(t0, ip("2001:db8::1")), Verdict::Pass);
    }

    #[test]
    fn on_limit_reply_refuses_with_the_ban_time_as_retry_after() {
        let mut g = guard(1.0, 2.0, 120);
        g.policy.reply_on_limit = true;
        let t0 = Instant::now();
        assert_eq!(g.check(t0, ip("127.0.0.5")), Verdict::Pass);
        assert_eq!(g.check(t0, ip("127.0.0.5")), Verdict::Pass);
        assert_eq!(
            g.check(t0, ip("127.0.0.5")),
            Verdict::Refuse {
                retry_after_secs: 120
            }
        );
        assert_eq!(
            g.check(t0 + Duration::from_secs(20), ip("127.0.0.5")),
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
            .filter(|_| g.check(t0, src) == Verdict::Pass)
            .count();
        assert_eq!(passed, 10);
        assert!(g.bans(t0).is_empty());
        // A second later the bucket has refilled.
        let later = t0 + Duration::from_secs(1);
        let passed = (0..30)
            .filter(|_| g.check(later, src) == Verdict::Pass)
            .count();
        assert_eq!(passed, 10);
    }

    #[test]
    fn lifting_a_ban_lets_the_source_in_at_once() {
        let mut g = guard(1.0, 1.0, 300);
        let t0 = Instant::now();
        let src = ip("127.0.0.20");
        g.check(t0, src);
        g.check(t0, src);
        assert_eq!(g.check(t0, src), Verdict::Drop);
        assert!(g.lift(src));
        assert!(!g.lift(src), "nothing left to lift");
        assert_eq!(g.check(t0, src), Verdict::Pass);
    }

    #[test]
    fn scanners_are_recognised_case_insensitively_and_banned() {
        let mut g = guard(30.0, 60.0, 300);
        assert!(g.policy().is_scanner("friendly-scanner"));
        assert!(g.policy().is_scanner("SIPVicious 0.3.8"));
        assert!(!g.policy().is_scanner("baresip v3.0.0 (x86_64/linux)"));
        let t0 = Instant::now();
        g.scanner_seen(t0, ip("127.0.0.30"));
        assert_eq!(g.check(t0, ip("127.0.0.30")), Verdict::Drop);
        assert_eq!(g.bans(t0)[0].reason, BanReason::Scanner);
    }

    #[test]
    fn the_source_table_stays_bounded_under_spoofed_sources() {
        let mut g = guard(10.0, 20.0, 300);
        let t0 = Instant::now();
        for n in 0..(MAX_SOURCES as u32 * 3) {
            let src = IpAddr::from((0xC612_0000u32 + n).to_be_bytes());
            g.check(t0, src);
        }
        assert!(g.tracked_sources() <= MAX_SOURCES);
        // Idle sources are forgotten once their bucket would be full again.
        g.take_summary(t0 + Duration::from_secs(3));
        assert_eq!(g.tracked_sources(), 0);
    }
}
