//! The edge guard shared by every receiver (UDP sockets, TCP connections)
//! and the admin API, and the summary line it writes once per interval.
//!
//! Without `security.rate_limit` no source can be limited or banned, so
//! receivers skip the lock entirely; the scanner check reads only the
//! immutable policy.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::security::{BanEntry, BanReason, Channel, EdgeGuard, EdgePolicy, Verdict};

pub struct Edge {
    /// Swapped whole by a reload (`security.rate_limit`, the scanner list,
    /// `on_limit`); read without a lock.
    policy: arc_swap::ArcSwap<EdgePolicy>,
    guard: Mutex<EdgeGuard>,
    /// A rate limit is set: sources must be checked.
    limiting: AtomicBool,
    /// A ban was made without a rate limit (failed authentications): from
    /// then on sources are checked too.
    banning: AtomicBool,
    /// Gateway destinations: exempt like trusted sources.
    destinations: std::sync::OnceLock<Arc<crate::gateway::Gateways>>,
}

impl Edge {
    pub fn new(policy: EdgePolicy) -> Arc<Self> {
        Arc::new(Edge {
            limiting: AtomicBool::new(policy.rate_limit.is_some()),
            banning: AtomicBool::new(false),
            destinations: std::sync::OnceLock::new(),
            guard: Mutex::new(EdgeGuard::new(policy.clone())),
            policy: arc_swap::ArcSwap::from_pointee(policy),
        })
    }

    /// A reload's policy: new rates (the buckets start afresh), scanner
    /// list and `on_limit`; the bans in force stay.
    pub fn set_policy(&self, policy: EdgePolicy) {
        self.limiting
            .store(policy.rate_limit.is_some(), Ordering::Relaxed);
        self.guard().set_policy(policy.clone());
        self.policy.store(Arc::new(policy));
    }

    /// No limits and the default scanner list: what tests and tools use.
    pub fn open() -> Arc<Self> {
        Edge::new(crate::config::SecurityConfig::default().policy())
    }

    fn guard(&self) -> MutexGuard<'_, EdgeGuard> {
        self.guard.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks a message from `ip`, come by `channel`, before it is parsed.
    pub fn admit(&self, ip: IpAddr, channel: Channel) -> Verdict {
        if !self.limiting.load(Ordering::Relaxed) && !self.banning.load(Ordering::Relaxed) {
            return Verdict::Pass;
        }
        if self.is_exempt(ip) {
            return Verdict::Pass;
        }
        let verdict = self.guard().check(Instant::now(), ip, channel);
        if verdict != Verdict::Pass {
            crate::metrics::get().edge_dropped("rate_limit");
        }
        verdict
    }

    /// True when `user_agent` is a scanner's: the request is dropped and
    /// counted, and nothing more (a User-Agent proves nothing).
    pub fn is_scanner(&self, user_agent: &str) -> bool {
        if !self.policy.load().is_scanner(user_agent) {
            return false;
        }
        crate::metrics::get().edge_dropped("scanner");
        self.guard().scanner_seen();
        true
    }

    /// True for a source that may not open a TCP connection (banned on
    /// evidence from a stream; a datagram-only ban leaves streams alone).
    pub fn refuses_connection(&self, ip: IpAddr) -> bool {
        self.admit(ip, Channel::Stream) != Verdict::Pass
    }

    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.policy.load().is_trusted(ip)
    }

    /// Never counted nor banned, and first in a full queue: a trusted peer
    /// or a gateway destination's host.
    pub fn is_exempt(&self, ip: IpAddr) -> bool {
        self.policy.load().is_trusted(ip)
            || self
                .destinations
                .get()
                .is_some_and(|gateways| gateways.is_destination_host(ip))
    }

    /// The gateway groups whose destinations are exempt.
    pub fn exempt_destinations(&self, gateways: Arc<crate::gateway::Gateways>) {
        let _ = self.destinations.set(gateways);
    }

    pub fn bans(&self) -> Vec<BanEntry> {
        self.guard().bans(Instant::now())
    }

    pub fn lift(&self, ip: IpAddr) -> bool {
        let lifted = self.guard().lift(ip);
        if lifted {
            tracing::info!(%ip, "ban lifted");
        }
        lifted
    }

    /// Writes one line for what was dropped and banned since the last
    /// call (nothing when all was quiet), and sweeps the tables.
    pub fn log_summary(&self) {
        let summary = self.guard().take_summary(Instant::now());
        crate::metrics::get()
            .edge_bans
            .set(summary.active_bans as i64);
        if summary.is_quiet() {
            return;
        }
        let named: Vec<String> = summary.new_bans.iter().map(|net| net.to_string()).collect();
        tracing::warn!(
            rate_limited = summary.rate_limited,
            banned_dropped = summary.banned_dropped,
            scanners = summary.scanners,
            new_bans = summary.new_ban_count,
            banned = %named.join(","),
            active_bans = summary.active_bans,
            "edge: dropped traffic from untrusted sources"
        );
    }

    /// Runs [`Edge::log_summary`] every `interval` on the current arbiter.
    pub fn spawn_summary(self: &Arc<Self>, interval: Duration) {
        let edge = self.clone();
        actix::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                edge.log_summary();
            }
        });
    }
}

impl crate::security::Banning for Edge {
    /// Bans `ip` on evidence other than its rate (failed authentications).
    fn ban(&self, ip: IpAddr, channel: Channel, length: Duration, reason: BanReason) {
        if self
            .guard()
            .ban(Instant::now(), ip, channel, length, reason)
        {
            self.banning.store(true, Ordering::Relaxed);
        }
    }
}
