//! What a gateway destination can take: its calls counted in the core, its
//! call limit, its calls-per-second pace and its drain (DESIGN.md §4.3,
//! "capacity"). Plain atomics shared by every shard, so the count is exact
//! whichever shard a call's messages land on, and the engine takes and
//! gives back its share with no lock and no message.
//!
//! A call holds a [`Reservation`] from the moment its INVITE is sent to the
//! destination. The reservation is what counts against `max_calls`, so a
//! burst of INVITEs cannot overshoot the limit before any of them is
//! answered. A 2xx makes it an established call (what `active_calls`
//! shows); dropping the reservation gives the slot back, so no path that
//! ends a branch or a dialog can forget a decrement.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One destination's counters and limits.
#[derive(Debug)]
pub struct Capacity {
    /// Calls set up or established: what `max_calls` bounds.
    in_use: AtomicU32,
    /// Calls established (a 2xx seen, no BYE yet).
    active: AtomicU32,
    /// `max_calls`; 0 for no limit.
    max_calls: AtomicU32,
    /// `max_cps` as f64 bits; 0 for no pace.
    max_cps: AtomicU64,
    /// The pace's theoretical arrival time (GCRA), in nanoseconds after
    /// `epoch`: the next INVITE is due then, less one second's burst.
    pace_due: AtomicU64,
    draining: AtomicBool,
    epoch: Instant,
}

/// Two handles are equal when they count the same destination.
impl PartialEq for Capacity {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

/// Why a destination takes no new call now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_calls` calls are set up or established.
    Full,
    /// Over `max_cps`: a call may go there again after this long.
    Paced(Duration),
    /// Drained by an operator.
    Draining,
}

impl Refusal {
    /// The Retry-After, in seconds, of a 503 when every candidate refused.
    pub fn retry_after_secs(self) -> u64 {
        match self {
            Refusal::Paced(wait) => wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
            Refusal::Full | Refusal::Draining => FULL_RETRY_AFTER_SECS,
        }
    }
}

/// The Retry-After of a 503 when every candidate is full.
pub const FULL_RETRY_AFTER_SECS: u64 = 5;

/// The most calls one process counts at once (shared among its shards):
/// past it a call is relayed but not counted, and a warning says so.
pub const MAX_TRACKED_CALLS: usize = 1_000_000;

impl Default for Capacity {
    fn default() -> Self {
        Capacity::new(None, None)
    }
}

impl Capacity {
    pub fn new(max_calls: Option<u32>, max_cps: Option<f64>) -> Self {
        let capacity = Capacity {
            in_use: AtomicU32::new(0),
            active: AtomicU32::new(0),
            max_calls: AtomicU32::new(0),
            max_cps: AtomicU64::new(0),
            pace_due: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            epoch: Instant::now(),
        };
        capacity.set_limits(max_calls, max_cps);
        capacity
    }

    /// Sets `max_calls` and `max_cps` (a reload or an admin change keeps
    /// the counts).
    pub fn set_limits(&self, max_calls: Option<u32>, max_cps: Option<f64>) {
        self.max_calls
            .store(max_calls.unwrap_or(0), Ordering::Relaxed);
        let cps = max_cps.filter(|cps| cps.is_finite() && *cps > 0.0);
        self.max_cps
            .store(cps.unwrap_or(0.0).to_bits(), Ordering::Relaxed);
    }

    pub fn max_calls(&self) -> Option<u32> {
        Some(self.max_calls.load(Ordering::Relaxed)).filter(|&max| max > 0)
    }

    pub fn max_cps(&self) -> Option<f64> {
        Some(f64::from_bits(self.max_cps.load(Ordering::Relaxed))).filter(|&cps| cps > 0.0)
    }

    /// Calls established: from their 2xx to their BYE.
    pub fn active_calls(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    /// Calls set up or established: the load selection weighs.
    pub fn calls_in_use(&self) -> u32 {
        self.in_use.load(Ordering::Relaxed)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Starts or ends a drain; true when that changed anything.
    pub fn set_draining(&self, draining: bool) -> bool {
        self.draining.swap(draining, Ordering::Relaxed) != draining
    }

    /// Whether a new request may go here at `now` (`invite`: a new call,
    /// which the limit and the pace also bound). Takes nothing.
    pub fn refusal(&self, now: Instant, invite: bool) -> Option<Refusal> {
        if self.is_draining() {
            return Some(Refusal::Draining);
        }
        if !invite {
            return None;
        }
        if self
            .max_calls()
            .is_some_and(|max| self.calls_in_use() >= max)
        {
            return Some(Refusal::Full);
        }
        let (cps, offset) = (self.max_cps()?, self.offset(now));
        let wait = self.pace_wait(cps, self.pace_due.load(Ordering::Relaxed), offset);
        wait.map(Refusal::Paced)
    }

    /// Takes a slot for a new call (and a token of the pace), or says why
    /// not. The slot is given back when the reservation is dropped.
    pub fn reserve(self: &Arc<Self>, now: Instant) -> Result<Reservation, Refusal> {
        if self.is_draining() {
            return Err(Refusal::Draining);
        }
        let max = self.max_calls.load(Ordering::Relaxed);
        let taken = self
            .in_use
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |used| {
                (max == 0 || used < max).then(|| used.saturating_add(1))
            });
        if taken.is_err() {
            return Err(Refusal::Full);
        }
        let reservation = Reservation {
            capacity: self.clone(),
            established: false,
        };
        if let Some(cps) = self.max_cps() {
            // Dropping the reservation gives the slot back.
            self.take_pace_token(cps, now)?;
        }
        Ok(reservation)
    }

    fn offset(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// GCRA: INVITEs `1/cps` apart, with a burst of one second's worth
    /// (at least one). None when one may go at `offset`, else the wait.
    fn pace_wait(&self, cps: f64, due: u64, offset: u64) -> Option<Duration> {
        let interval = interval_nanos(cps);
        let burst = (cps.max(1.0).floor() as u64 - 1).saturating_mul(interval);
        let earliest = due.saturating_sub(burst);
        (offset < earliest).then(|| Duration::from_nanos(earliest - offset))
    }

    fn take_pace_token(&self, cps: f64, now: Instant) -> Result<(), Refusal> {
        let offset = self.offset(now);
        let interval = interval_nanos(cps);
        let mut wait = None;
        let taken = self
            .pace_due
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |due| {
                wait = self.pace_wait(cps, due, offset);
                wait.is_none()
                    .then(|| due.max(offset).saturating_add(interval))
            });
        match (taken, wait) {
            (Ok(_), _) => Ok(()),
            (Err(_), Some(wait)) => Err(Refusal::Paced(wait)),
            (Err(_), None) => Err(Refusal::Paced(Duration::ZERO)),
        }
    }
}

/// Nanoseconds between two INVITEs at `cps`.
fn interval_nanos(cps: f64) -> u64 {
    (1e9 / cps).round().clamp(1.0, u64::MAX as f64) as u64
}

/// A call's slot at a destination: counted while held, given back when
/// dropped, whatever ends the call.
#[derive(Debug)]
pub struct Reservation {
    capacity: Arc<Capacity>,
    established: bool,
}

impl Reservation {
    /// The call was answered 2xx: it counts as established from now.
    pub fn establish(&mut self) {
        if !std::mem::replace(&mut self.established, true) {
            self.capacity.active.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn capacity(&self) -> &Arc<Capacity> {
        &self.capacity
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.capacity.in_use.fetch_sub(1, Ordering::AcqRel);
        if self.established {
            self.capacity.active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The calls established through one shard, so that a BYE (or a dialog
/// that no BYE closes, after `call_max`) gives its slot back. Keyed by a
/// keyed hash of the Call-ID and the callee's tag: a BYE names that tag
/// in To from the caller, in From from the callee.
pub struct ActiveCalls {
    calls: super::fast_hash::FastMap<u64, Call>,
    seed: u64,
    /// How long a call may last before it is collected.
    call_max: Duration,
    /// The most calls this shard tracks; over it a call is not counted.
    limit: usize,
    next_sweep: Option<Instant>,
}

/// A call's slot at a gateway destination, held by its INVITE's branch.
#[derive(Debug)]
pub struct CallSlot {
    pub reservation: Reservation,
    pub group: Arc<str>,
    pub uri: Arc<str>,
    /// The script record-routed the INVITE: the dialog's BYE comes through
    /// us, so the call can be counted until then. Otherwise the slot
    /// bounds the call's setup only.
    pub record_routed: bool,
}

/// Why a 2xx did not start a counted call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotCounted {
    /// The call is counted already (a repeated 2xx).
    Known,
    /// The table holds its limit of calls.
    TableFull,
}

/// One established call.
struct Call {
    slot: CallSlot,
    started: Instant,
    /// The Call-ID, for the line logged when it is collected.
    call_id: Box<str>,
}

/// A call collected after `call_max` with no BYE seen.
#[derive(Debug)]
pub struct Collected {
    pub group: Arc<str>,
    pub uri: Arc<str>,
    pub call_id: Box<str>,
    pub lasted: Duration,
}

impl ActiveCalls {
    pub fn new(seed: u64, call_max: Duration, limit: usize) -> Self {
        ActiveCalls {
            calls: Default::default(),
            seed,
            call_max,
            limit,
            next_sweep: None,
        }
    }

    fn key(&self, call_id: &str, callee_tag: &str) -> u64 {
        let id = xxhash_rust::xxh3::xxh3_64_with_seed(call_id.as_bytes(), self.seed);
        xxhash_rust::xxh3::xxh3_64_with_seed(callee_tag.as_bytes(), id)
    }

    pub fn len(&self) -> usize {
        self.calls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// A 2xx to an INVITE established the call `call_id` with the
    /// callee's `tag`. When it is not counted, its slot is given back.
    pub fn start(
        &mut self,
        mut slot: CallSlot,
        call_id: &str,
        callee_tag: &str,
        now: Instant,
    ) -> Result<(), NotCounted> {
        let key = self.key(call_id, callee_tag);
        if self.calls.contains_key(&key) {
            return Err(NotCounted::Known);
        }
        if self.calls.len() >= self.limit {
            return Err(NotCounted::TableFull);
        }
        slot.reservation.establish();
        let call = Call {
            slot,
            started: now,
            call_id: call_id.into(),
        };
        self.calls.insert(key, call);
        if self.next_sweep.is_none() {
            self.next_sweep = Some(now + self.sweep_every());
        }
        Ok(())
    }

    /// The dialog of `call_id` between `from_tag` and `to_tag` ended (a
    /// BYE, from either side). The call it ends, if counted here.
    pub fn end(&mut self, call_id: &str, from_tag: &str, to_tag: &str) -> Option<CallSlot> {
        if self.calls.is_empty() {
            return None;
        }
        let by_caller = self.key(call_id, to_tag);
        if let Some(call) = self.calls.remove(&by_caller) {
            return Some(call.slot);
        }
        let by_callee = self.key(call_id, from_tag);
        self.calls.remove(&by_callee).map(|call| call.slot)
    }

    /// A new `call_max` (a reload): it applies at the next sweep.
    pub fn set_call_max(&mut self, call_max: Duration) {
        let before = self.sweep_every();
        self.call_max = call_max;
        let after = self.sweep_every();
        // A shorter limit sweeps sooner.
        if let (Some(due), true) = (self.next_sweep, after < before) {
            self.next_sweep = Some(due - (before - after));
        }
    }

    /// When [`ActiveCalls::collect`] has work next.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.next_sweep
    }

    /// Collects the calls older than `call_max` (checked every sixteenth
    /// of it, so a call lasts at most 1/16 longer than its limit).
    pub fn collect(&mut self, now: Instant) -> Vec<Collected> {
        let Some(due) = self.next_sweep else {
            return Vec::new();
        };
        if now < due {
            return Vec::new();
        }
        let call_max = self.call_max;
        let mut collected = Vec::new();
        self.calls.retain(|_, call| {
            let lasted = now.saturating_duration_since(call.started);
            if lasted < call_max {
                return true;
            }
            collected.push(Collected {
                group: call.slot.group.clone(),
                uri: call.slot.uri.clone(),
                call_id: std::mem::take(&mut call.call_id),
                lasted,
            });
            false
        });
        self.next_sweep = (!self.calls.is_empty()).then(|| now + self.sweep_every());
        collected
    }

    fn sweep_every(&self) -> Duration {
        (self.call_max / 16).max(Duration::from_millis(100))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(capacity: &Arc<Capacity>, now: Instant) -> CallSlot {
        CallSlot {
            reservation: capacity.reserve(now).expect("a slot"),
            group: Arc::from("g"),
            uri: Arc::from("sip:d"),
            record_routed: true,
        }
    }

    #[test]
    fn a_reservation_counts_until_dropped_and_a_2xx_makes_it_active() {
        let capacity = Arc::new(Capacity::new(Some(2), None));
        let now = Instant::now();
        let first = capacity.reserve(now).unwrap();
        let mut second = capacity.reserve(now).unwrap();
        assert_eq!(capacity.reserve(now).unwrap_err(), Refusal::Full);
        assert_eq!(capacity.refusal(now, true), Some(Refusal::Full));
        assert_eq!(capacity.refusal(now, false), None, "only calls are bounded");
        second.establish();
        second.establish();
        assert_eq!((capacity.calls_in_use(), capacity.active_calls()), (2, 1));
        drop(first);
        assert_eq!(capacity.refusal(now, true), None);
        drop(second);
        assert_eq!((capacity.calls_in_use(), capacity.active_calls()), (0, 0));
    }

    #[test]
    fn the_pace_lets_one_call_a_second_at_one_cps() {
        let capacity = Arc::new(Capacity::new(None, Some(1.0)));
        let t0 = Instant::now() + Duration::from_secs(1);
        let kept = capacity.reserve(t0).expect("the first goes");
        let refused = capacity.reserve(t0 + Duration::from_millis(200));
        assert_eq!(
            refused.unwrap_err(),
            Refusal::Paced(Duration::from_millis(800))
        );
        assert_eq!(
            capacity.calls_in_use(),
            1,
            "a paced call gives its slot back"
        );
        assert_eq!(
            Refusal::Paced(Duration::from_millis(800)).retry_after_secs(),
            1
        );
        assert!(capacity.reserve(t0 + Duration::from_secs(1)).is_ok());
        drop(kept);
        // Five calls a second for three seconds: three go.
        let capacity = Arc::new(Capacity::new(None, Some(1.0)));
        let taken = (0..15)
            .filter(|i| {
                capacity
                    .reserve(t0 + Duration::from_millis(200 * i))
                    .is_ok()
            })
            .count();
        assert_eq!(taken, 3);
    }

    #[test]
    fn a_pace_above_one_allows_a_second_of_burst_then_the_rate() {
        let capacity = Arc::new(Capacity::new(None, Some(5.0)));
        let t0 = Instant::now() + Duration::from_secs(1);
        let burst = (0..10).filter(|_| capacity.reserve(t0).is_ok()).count();
        assert_eq!(burst, 5);
        assert!(capacity.reserve(t0 + Duration::from_millis(199)).is_err());
        assert!(capacity.reserve(t0 + Duration::from_millis(200)).is_ok());
        // Half a call a second.
        let slow = Arc::new(Capacity::new(None, Some(0.5)));
        assert!(slow.reserve(t0).is_ok());
        assert_eq!(
            slow.refusal(t0 + Duration::from_secs(1), true),
            Some(Refusal::Paced(Duration::from_secs(1)))
        );
        assert!(slow.reserve(t0 + Duration::from_secs(2)).is_ok());
    }

    #[test]
    fn a_draining_destination_takes_nothing_new() {
        let capacity = Arc::new(Capacity::default());
        let now = Instant::now();
        let call = capacity.reserve(now).unwrap();
        assert!(capacity.set_draining(true));
        assert!(!capacity.set_draining(true));
        assert_eq!(capacity.refusal(now, false), Some(Refusal::Draining));
        assert_eq!(capacity.reserve(now).unwrap_err(), Refusal::Draining);
        assert_eq!(capacity.calls_in_use(), 1, "its calls go on");
        drop(call);
        assert_eq!(capacity.calls_in_use(), 0);
    }

    #[test]
    fn a_bye_from_either_side_ends_the_call_once() {
        let capacity = Arc::new(Capacity::default());
        let now = Instant::now();
        let mut calls = ActiveCalls::new(7, Duration::from_secs(3600), 10);
        assert!(calls
            .start(slot(&capacity, now), "c1", "callee", now)
            .is_ok());
        assert_eq!(
            calls.start(slot(&capacity, now), "c1", "callee", now),
            Err(NotCounted::Known),
            "a repeated 2xx"
        );
        assert!(calls
            .start(slot(&capacity, now), "c2", "callee2", now)
            .is_ok());
        assert_eq!((capacity.calls_in_use(), capacity.active_calls()), (2, 2));
        // The caller's BYE names the callee's tag in To.
        assert!(calls.end("c1", "caller", "callee").is_some());
        assert!(calls.end("c1", "caller", "callee").is_none());
        // The callee's, in From.
        assert!(calls.end("c2", "callee2", "caller").is_some());
        assert_eq!((capacity.calls_in_use(), capacity.active_calls()), (0, 0));
        assert!(calls.end("c3", "a", "b").is_none());
    }

    #[test]
    fn calls_no_bye_ends_are_collected_after_call_max() {
        let capacity = Arc::new(Capacity::default());
        let t0 = Instant::now();
        let call_max = Duration::from_secs(160);
        let mut calls = ActiveCalls::new(7, call_max, 10);
        assert!(calls.start(slot(&capacity, t0), "old", "a", t0).is_ok());
        let later = t0 + Duration::from_secs(100);
        assert!(calls
            .start(slot(&capacity, later), "new", "b", later)
            .is_ok());
        assert_eq!(calls.next_deadline(), Some(t0 + Duration::from_secs(10)));
        assert!(calls.collect(t0 + Duration::from_secs(150)).is_empty());
        let collected = calls.collect(t0 + call_max);
        assert_eq!(collected.len(), 1);
        assert_eq!(&*collected[0].call_id, "old");
        assert_eq!(capacity.active_calls(), 1);
        assert_eq!(
            calls.next_deadline(),
            Some(t0 + call_max + Duration::from_secs(10))
        );
        assert_eq!(calls.collect(later + call_max).len(), 1);
        assert_eq!(calls.next_deadline(), None);
        assert_eq!((capacity.calls_in_use(), capacity.active_calls()), (0, 0));
    }

    #[test]
    fn a_full_table_counts_no_more_calls() {
        let capacity = Arc::new(Capacity::default());
        let now = Instant::now();
        let mut calls = ActiveCalls::new(7, Duration::from_secs(60), 1);
        assert!(calls.start(slot(&capacity, now), "a", "t", now).is_ok());
        assert_eq!(
            calls.start(slot(&capacity, now), "b", "t", now),
            Err(NotCounted::TableFull)
        );
        assert_eq!(
            capacity.calls_in_use(),
            1,
            "the uncounted call's slot is back"
        );
    }
}
