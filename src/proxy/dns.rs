//! What a shard knows of DNS: a bounded cache of names already looked up
//! (answers and failures, each kept until it expires) and the names being
//! looked up now, with the requests waiting on each. The lookups themselves
//! run elsewhere (`actors::dns`) and report back through
//! [`HostCache::complete`]; nothing here blocks or reads the clock.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::proxy::fast_hash::FastMap;
use crate::sip::Protocol;

/// An answer is kept at least this long, so a zero TTL does not send every
/// call to the resolver, and at most this long, so a moved backend is seen
/// within minutes. A lookup that timed out is also kept this long only: one
/// slow answer must not shut a name out for the negative TTL.
pub const MIN_TTL: Duration = Duration::from_secs(1);
pub const MAX_TTL: Duration = Duration::from_secs(300);

/// One place RFC 3263 found for a name's SIP server, in the order to try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SipTarget {
    pub addr: SocketAddr,
    pub protocol: Protocol,
}

/// The cache key of a name's RFC 3263 lookup (NAPTR, SRV, then A): it
/// cannot clash with a host name, which has no `:`.
pub fn sip_lookup_key(host: &str) -> String {
    format!("sip:{host}")
}

/// The name a key from [`sip_lookup_key`] looks up, or None for a plain
/// address lookup.
pub fn sip_lookup_name(key: &str) -> Option<&str> {
    key.strip_prefix("sip:")
}

/// The transport of a NAPTR service field (RFC 3263 §4.1), for those we
/// can reach.
pub fn naptr_protocol(service: &str) -> Option<Protocol> {
    match service.to_ascii_uppercase().as_str() {
        "SIP+D2U" => Some(Protocol::Udp),
        "SIP+D2T" => Some(Protocol::Tcp),
        "SIPS+D2T" => Some(Protocol::Tls),
        _ => None,
    }
}

/// The SRV owner name for a transport without NAPTR (RFC 3263 §4.1).
pub fn srv_name(protocol: Protocol, host: &str) -> Option<String> {
    match protocol {
        Protocol::Udp => Some(format!("_sip._udp.{host}")),
        Protocol::Tcp => Some(format!("_sip._tcp.{host}")),
        Protocol::Tls => Some(format!("_sips._tcp.{host}")),
        Protocol::Ws | Protocol::Wss => None,
    }
}

/// SRV records `(priority, weight, item)` in the order RFC 2782 says to
/// try them: by priority, and within one, each next pick drawn at random
/// in proportion to weight (`draw(total)` gives a number below `total + 1`).
pub fn srv_order<T>(mut records: Vec<(u16, u16, T)>, mut draw: impl FnMut(u32) -> u32) -> Vec<T> {
    records.sort_by_key(|(priority, weight, _)| (*priority, *weight));
    let mut ordered = Vec::with_capacity(records.len());
    while !records.is_empty() {
        let priority = records[0].0;
        let same = records.iter().take_while(|r| r.0 == priority).count();
        let total: u32 = records[..same].iter().map(|r| u32::from(r.1)).sum();
        let mut pick = draw(total).min(total);
        let mut chosen = same - 1;
        for (index, record) in records[..same].iter().enumerate() {
            let weight = u32::from(record.1);
            // Weight 0 is only picked when nothing heavier is left.
            if pick <= weight && (weight > 0 || total == 0) {
                chosen = index;
                break;
            }
            pick = pick.saturating_sub(weight);
        }
        ordered.push(records.remove(chosen).2);
    }
    ordered
}

/// What the cache says of a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cached {
    Addr(IpAddr),
    /// An RFC 3263 lookup: where to try, in order.
    Targets(Arc<[SipTarget]>),
    /// Looked up lately and not found (or the lookup timed out).
    Failed,
    /// Not known: it needs a lookup.
    Missing,
}

/// The outcome of a lookup, as the resolver reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The first address, and how long the answer may be kept.
    Found(IpAddr, Duration),
    /// An RFC 3263 lookup's targets, in order, and how long to keep them.
    FoundTargets(Vec<SipTarget>, Duration),
    /// The name does not exist, or has no address.
    NotFound,
    /// No answer in time, or a server error: tried again soon.
    Unreachable,
}

/// What [`HostCache::wait`] tells the caller to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Wait {
    /// Nobody is looking this name up: start a lookup.
    Start,
    /// A lookup is already running; the ticket waits for it too.
    Joined,
    /// Too many names are being looked up: fail the request now.
    Full,
}

#[derive(Clone)]
struct Entry {
    answer: Option<Known>,
    expires: Instant,
}

#[derive(Clone)]
enum Known {
    Addr(IpAddr),
    Targets(Arc<[SipTarget]>),
}

pub struct HostCache {
    entries: FastMap<Box<str>, Entry>,
    /// Names being looked up, with the tickets of the decisions waiting.
    in_flight: FastMap<Box<str>, Vec<u64>>,
    capacity: usize,
    max_in_flight: usize,
    negative_ttl: Duration,
}

/// Host names are case-insensitive (RFC 3261 §19.1.4); most arrive in
/// lower case already, so this borrows.
fn key(host: &str) -> Cow<'_, str> {
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

impl HostCache {
    pub fn new(capacity: usize, max_in_flight: usize, negative_ttl: Duration) -> Self {
        HostCache {
            entries: FastMap::default(),
            in_flight: FastMap::default(),
            capacity: capacity.max(1),
            max_in_flight: max_in_flight.max(1),
            negative_ttl,
        }
    }

    pub fn get(&self, now: Instant, host: &str) -> Cached {
        match self.entries.get(key(host).as_ref()) {
            Some(entry) if entry.expires > now => match &entry.answer {
                Some(Known::Addr(ip)) => Cached::Addr(*ip),
                Some(Known::Targets(targets)) => Cached::Targets(targets.clone()),
                None => Cached::Failed,
            },
            _ => Cached::Missing,
        }
    }

    /// Puts `ticket` in line for `host`'s answer.
    pub fn wait(&mut self, host: &str, ticket: u64) -> Wait {
        let host = key(host);
        if let Some(waiting) = self.in_flight.get_mut(host.as_ref()) {
            waiting.push(ticket);
            return Wait::Joined;
        }
        if self.in_flight.len() >= self.max_in_flight {
            return Wait::Full;
        }
        self.in_flight.insert(host.into(), vec![ticket]);
        Wait::Start
    }

    /// Records `host`'s answer and returns the tickets that waited for it.
    /// A failure is kept for the negative TTL, an answer for its own TTL
    /// held to [`MIN_TTL`]..=[`MAX_TTL`].
    pub fn complete(&mut self, now: Instant, host: &str, answer: Answer) -> Vec<u64> {
        let host = key(host);
        let entry = match answer {
            Answer::Found(ip, ttl) => Entry {
                answer: Some(Known::Addr(ip)),
                expires: now + ttl.clamp(MIN_TTL, MAX_TTL),
            },
            Answer::FoundTargets(targets, _) if targets.is_empty() => Entry {
                answer: None,
                expires: now + self.negative_ttl,
            },
            Answer::FoundTargets(targets, ttl) => Entry {
                answer: Some(Known::Targets(targets.into())),
                expires: now + ttl.clamp(MIN_TTL, MAX_TTL),
            },
            Answer::NotFound => Entry {
                answer: None,
                expires: now + self.negative_ttl,
            },
            Answer::Unreachable => Entry {
                answer: None,
                expires: now + MIN_TTL,
            },
        };
        if !self.entries.contains_key(host.as_ref()) {
            self.make_room(now);
        }
        self.entries.insert(host.as_ref().into(), entry);
        self.in_flight.remove(host.as_ref()).unwrap_or_default()
    }

    /// Below capacity, by dropping expired entries, else the one that would
    /// expire first.
    fn make_room(&mut self, now: Instant) {
        if self.entries.len() < self.capacity {
            return;
        }
        self.entries.retain(|_, entry| entry.expires > now);
        while self.entries.len() >= self.capacity {
            let Some(first) = self
                .entries
                .iter()
                .min_by_key(|(_, entry)| entry.expires)
                .map(|(name, _)| name.clone())
            else {
                return;
            };
            self.entries.remove(&first);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// A reload's `dns` settings: the names kept are forgotten (the name
    /// servers may have changed), and those being looked up stay in line.
    pub fn reconfigure(&mut self, capacity: usize, negative_ttl: Duration) {
        self.capacity = capacity.max(1);
        self.negative_ttl = negative_ttl;
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn srv_records_go_by_priority_then_by_weight_drawn() {
        let records = vec![
            (20, 0, "backup"),
            (10, 60, "big"),
            (10, 20, "small"),
            (10, 0, "zero"),
        ];
        // Drawing 0 each time: the lightest non-zero first within a priority.
        assert_eq!(
            srv_order(records.clone(), |_| 0),
            ["small", "big", "zero", "backup"]
        );
        // Drawing the top each time: the heaviest first.
        assert_eq!(
            srv_order(records.clone(), |total| total),
            ["big", "small", "zero", "backup"]
        );
        // Over many draws the shares follow the weights (60:20).
        let mut seed = 7u32;
        let mut first_big = 0;
        for _ in 0..8000 {
            let order = srv_order(records.clone(), |total| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (seed >> 8) % (total + 1)
            });
            first_big += usize::from(order[0] == "big");
        }
        assert!((5600..6400).contains(&first_big), "{first_big}");
    }

    #[test]
    fn naptr_services_and_srv_names_follow_rfc_3263() {
        assert_eq!(naptr_protocol("SIP+D2U"), Some(Protocol::Udp));
        assert_eq!(naptr_protocol("sip+d2t"), Some(Protocol::Tcp));
        assert_eq!(naptr_protocol("SIPS+D2T"), Some(Protocol::Tls));
        assert_eq!(naptr_protocol("SIP+D2S"), None, "SCTP: not ours");
        assert_eq!(
            srv_name(Protocol::Tls, "example.com").as_deref(),
            Some("_sips._tcp.example.com")
        );
        assert_eq!(
            sip_lookup_name(&sip_lookup_key("example.com")),
            Some("example.com")
        );
        assert_eq!(sip_lookup_name("example.com"), None);
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

    fn cache() -> HostCache {
        HostCache::new(3, 2, Duration::from_secs(30))
    }

    #[test]
    fn a_reload_forgets_the_names_kept_but_not_the_lookups_in_flight() {
        let mut c = cache();
        let t0 = Instant::now();
        c.wait("kept.example", 1);
        c.complete(
            t0,
            "kept.example",
            Answer::Found(IP, Duration::from_secs(300)),
        );
        assert_eq!(c.wait("pending.example", 2), Wait::Start);
        c.reconfigure(5, Duration::from_secs(2));
        assert_eq!(c.get(t0, "kept.example"), Cached::Missing);
        assert_eq!(c.wait("pending.example", 3), Wait::Joined);
        assert_eq!(c.complete(t0, "pending.example", Answer::NotFound), [2, 3]);
        // The new negative TTL applies to answers from now on.
        assert_eq!(c.get(t0, "pending.example"), Cached::Failed);
        let later = t0 + Duration::from_secs(3);
        assert_eq!(c.get(later, "pending.example"), Cached::Missing);
    }

    #[test]
    fn an_answer_is_kept_for_its_ttl_and_names_ignore_case() {
        let mut c = cache();
        let t0 = Instant::now();
        assert_eq!(c.get(t0, "backend.example"), Cached::Missing);
        assert_eq!(c.wait("backend.example", 1), Wait::Start);
        assert_eq!(
            c.complete(
                t0,
                "Backend.Example",
                Answer::Found(IP, Duration::from_secs(60))
            ),
            vec![1]
        );
        assert_eq!(
            c.get(t0 + Duration::from_secs(59), "BACKEND.example"),
            Cached::Addr(IP)
        );
        assert_eq!(
            c.get(t0 + Duration::from_secs(60), "backend.example"),
            Cached::Missing
        );
    }

    #[test]
    fn ttls_are_held_between_one_second_and_five_minutes() {
        let mut c = cache();
        let t0 = Instant::now();
        c.complete(t0, "zero.example", Answer::Found(IP, Duration::ZERO));
        c.complete(
            t0,
            "day.example",
            Answer::Found(IP, Duration::from_secs(86_400)),
        );
        assert_eq!(
            c.get(t0 + Duration::from_millis(999), "zero.example"),
            Cached::Addr(IP)
        );
        assert_eq!(c.get(t0 + MIN_TTL, "zero.example"), Cached::Missing);
        assert_eq!(
            c.get(t0 + MAX_TTL - Duration::from_secs(1), "day.example"),
            Cached::Addr(IP)
        );
        assert_eq!(c.get(t0 + MAX_TTL, "day.example"), Cached::Missing);
    }

    #[test]
    fn a_failure_is_kept_for_the_negative_ttl() {
        let mut c = cache();
        let t0 = Instant::now();
        c.complete(t0, "nowhere.example", Answer::NotFound);
        assert_eq!(
            c.get(t0 + Duration::from_secs(29), "nowhere.example"),
            Cached::Failed
        );
        assert_eq!(
            c.get(t0 + Duration::from_secs(30), "nowhere.example"),
            Cached::Missing
        );
    }

    #[test]
    fn a_lookup_that_timed_out_is_tried_again_a_second_later() {
        let mut c = cache();
        let t0 = Instant::now();
        c.complete(t0, "flaky.example", Answer::Unreachable);
        assert_eq!(
            c.get(t0 + Duration::from_millis(500), "flaky.example"),
            Cached::Failed
        );
        assert_eq!(c.get(t0 + MIN_TTL, "flaky.example"), Cached::Missing);
    }

    #[test]
    fn requests_for_a_name_being_looked_up_wait_for_the_same_lookup() {
        let mut c = cache();
        assert_eq!(c.wait("slow.example", 1), Wait::Start);
        assert_eq!(c.wait("SLOW.example", 2), Wait::Joined);
        assert_eq!(c.wait("other.example", 3), Wait::Start);
        // Two names in flight is this cache's limit: a third fails at once.
        assert_eq!(c.wait("third.example", 4), Wait::Full);
        assert_eq!(c.in_flight(), 2);
        let waiting = c.complete(Instant::now(), "slow.example", Answer::NotFound);
        assert_eq!(waiting, vec![1, 2]);
        assert_eq!(c.in_flight(), 1);
        assert_eq!(c.wait("third.example", 4), Wait::Start);
    }

    #[test]
    fn the_cache_never_holds_more_than_its_capacity() {
        let mut c = cache();
        let t0 = Instant::now();
        for (i, ttl) in [(0u64, 100u64), (1, 10), (2, 200), (3, 50), (4, 300)] {
            c.complete(
                t0,
                &format!("n{i}.example"),
                Answer::Found(IP, Duration::from_secs(ttl)),
            );
            assert!(c.len() <= 3);
        }
        // The entries that would have expired first made room.
        assert_eq!(c.get(t0, "n1.example"), Cached::Missing);
        assert_eq!(c.get(t0, "n3.example"), Cached::Missing);
        for kept in ["n0.example", "n2.example", "n4.example"] {
            assert_eq!(c.get(t0, kept), Cached::Addr(IP), "{kept}");
        }
    }

    #[test]
    fn expired_entries_go_first_when_the_cache_is_full() {
        let mut c = cache();
        let t0 = Instant::now();
        c.complete(t0, "a.example", Answer::Found(IP, Duration::from_secs(5)));
        c.complete(t0, "b.example", Answer::Found(IP, Duration::from_secs(5)));
        c.complete(t0, "c.example", Answer::Found(IP, Duration::from_secs(100)));
        let later = t0 + Duration::from_secs(10);
        c.complete(later, "d.example", Answer::NotFound);
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(later, "c.example"), Cached::Addr(IP));
        assert_eq!(c.get(later, "d.example"), Cached::Failed);
    }
}
