//! Transaction timers (RFC 3261 §17, table 4) and the per-shard queue that
//! fires them. Timers are not cancelled one by one: when one fires, the
//! shard checks whether the transaction still wants it, which keeps arming
//! them cheap; the engine sweeps out those of ended transactions whenever
//! the queue has doubled (see [`TimerQueue::retain`]).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// T1, T2, T4 and Timer C, from the `transaction` config section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerSettings {
    pub t1: Duration,
    pub t2: Duration,
    pub t4: Duration,
    pub timer_c: Duration,
    /// The longest an INVITE transaction may wait for its final response.
    pub max_invite_lifetime: Duration,
}

impl Default for TimerSettings {
    fn default() -> Self {
        TimerSettings {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
            timer_c: Duration::from_secs(185),
            max_invite_lifetime: Duration::from_secs(300),
        }
    }
}

impl TimerSettings {
    /// 64·T1: the lifetime bound of Timers B, F, H, J, L and M.
    pub fn timeout(&self) -> Duration {
        self.t1 * 64
    }

    /// The next retransmission interval after `current` (A, E, G double,
    /// E and G are capped at T2).
    pub fn backoff(&self, current: Duration, capped: bool) -> Duration {
        let next = current * 2;
        if capped {
            next.min(self.t2)
        } else {
            next
        }
    }
}

/// Which timer of a transaction fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TimerKind {
    /// Client INVITE retransmit (A) / timeout (B).
    A,
    B,
    /// Proxy INVITE branch: no final response in time (§16.8).
    C,
    /// Client INVITE: absorb final-response retransmissions (D).
    D,
    /// Client non-INVITE retransmit (E) / timeout (F) / linger (K).
    E,
    F,
    K,
    /// Server INVITE: retransmit final (G), wait for ACK (H), linger after ACK (I).
    G,
    H,
    I,
    /// Server non-INVITE linger (J).
    J,
    /// Server INVITE after a 2xx (L), client INVITE after a 2xx (M): RFC 6026.
    L,
    M,
    /// Server: the script answered only provisionally, so nothing else
    /// will; bounds the transaction's life at 64·T1.
    Guard,
    /// Client branch to a gateway destination: no response at all by the
    /// failover policy's `no_response`.
    NoResponse,
}

impl TimerKind {
    /// Whether it may still act on a server transaction that sent its
    /// final response (the rest wait on a live one).
    pub fn ends_a_server(self) -> bool {
        matches!(
            self,
            TimerKind::G | TimerKind::H | TimerKind::I | TimerKind::J | TimerKind::L
        )
    }

    /// Whether it may still act on a branch that got its final response.
    pub fn ends_a_client(self) -> bool {
        matches!(self, TimerKind::D | TimerKind::K | TimerKind::M)
    }
}

/// Which transaction a timer belongs to: a server transaction by its slot, a
/// client transaction by its id. Both are plain numbers, so a timer is cheap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TimerOwner {
    Server(u64),
    Client(u64),
    Cancel(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    due: Instant,
    seq: u64,
    owner: TimerOwner,
    kind: TimerKind,
}

/// A min-heap of pending timers, drained by a periodic tick.
#[derive(Default)]
pub struct TimerQueue {
    heap: BinaryHeap<Reverse<Entry>>,
    seq: u64,
}

impl TimerQueue {
    pub fn arm(&mut self, now: Instant, after: Duration, owner: TimerOwner, kind: TimerKind) {
        self.seq += 1;
        self.heap.push(Reverse(Entry {
            due: now + after,
            seq: self.seq,
            owner,
            kind,
        }));
    }

    /// The next timer due at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(TimerOwner, TimerKind)> {
        match self.heap.peek() {
            Some(Reverse(entry)) if entry.due <= now => {
                let entry = self.heap.pop()?.0;
                Some((entry.owner, entry.kind))
            }
            _ => None,
        }
    }

    /// When the earliest timer is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(entry)| entry.due)
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Drops every timer whose owner `keep` says is gone, so that ended
    /// transactions leave nothing behind (Timer C alone would otherwise
    /// hold an entry for 180 s per INVITE branch).
    pub fn retain(&mut self, mut keep: impl FnMut(TimerOwner, TimerKind) -> bool) {
        self.heap
            .retain(|Reverse(entry)| keep(entry.owner, entry.kind));
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// The kinds of the entries held (for tests).
    #[cfg(test)]
    pub fn kinds(&self) -> Vec<TimerKind> {
        self.heap.iter().map(|Reverse(entry)| entry.kind).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_fire_in_due_order_and_only_when_due() {
        let mut queue = TimerQueue::default();
        let start = Instant::now();
        queue.arm(
            start,
            Duration::from_millis(30),
            TimerOwner::Client(1),
            TimerKind::B,
        );
        queue.arm(
            start,
            Duration::from_millis(10),
            TimerOwner::Client(1),
            TimerKind::A,
        );
        queue.arm(
            start,
            Duration::from_millis(20),
            TimerOwner::Server(2),
            TimerKind::G,
        );
        assert_eq!(queue.pop_due(start), None);
        let later = start + Duration::from_millis(25);
        assert_eq!(
            queue.pop_due(later),
            Some((TimerOwner::Client(1), TimerKind::A))
        );
        assert_eq!(
            queue.pop_due(later),
            Some((TimerOwner::Server(2), TimerKind::G))
        );
        assert_eq!(queue.pop_due(later), None);
        assert_eq!(queue.len(), 1);
    }

    #[test]
    fn backoff_doubles_and_caps_at_t2() {
        let s = TimerSettings::default();
        assert_eq!(s.backoff(s.t1, true), Duration::from_secs(1));
        assert_eq!(
            s.backoff(Duration::from_secs(4), true),
            Duration::from_secs(4)
        );
        assert_eq!(
            s.backoff(Duration::from_secs(4), false),
            Duration::from_secs(8)
        );
        assert_eq!(s.timeout(), Duration::from_secs(32));
    }
}
