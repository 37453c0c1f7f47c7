//! Transactions that have ended and only linger for their RFC 3261 timers:
//! a server transaction that sent its final response (absorbing
//! retransmissions, replaying its response, waiting for an ACK), a branch
//! that got its final (ACKing a retransmitted one, passing on a late 2xx).
//!
//! They are counted apart from the live ones, so that
//! `limits.max_transactions` bounds live work only: at 3,000 calls/s the
//! lingering ones alone (Timer J keeps a BYE's 32 s) are several hundred
//! thousand, and counting them refused calls on a machine with CPU to
//! spare. They are bounded by memory instead
//! (`limits.ended_transactions_mb`): past it, those whose timers would end
//! them soonest go first. The timers keep their RFC values.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::*;

/// What an ended transaction is charged, and when its timers end it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndedMark {
    pub bytes: usize,
    pub until: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum EndedOwner {
    Server(u64),
    Client(u64),
}

/// The ended transactions of one engine, by when their timers end them.
#[derive(Default)]
pub(super) struct EndedStore {
    /// Soonest first; an entry whose transaction is gone, or whose mark
    /// changed since (an ACK moves Timer H to Timer I), is skipped.
    by_deadline: BinaryHeap<Reverse<(Instant, EndedOwner)>>,
    servers: usize,
    clients: usize,
    bytes: usize,
}

/// What an ended transaction's map entries cost beyond its struct: the
/// key, the hash and the slot, with the map's spare room.
const MAP_ENTRY_BYTES: usize = 64;

impl EndedStore {
    pub(super) fn count(&self) -> usize {
        self.servers + self.clients
    }

    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }
}

impl<F: Clone> Engine<F> {
    /// The server transaction of `slot` has ended (or moved to another
    /// lingering state): its timers end it at `until`.
    pub(super) fn server_ended(&mut self, slot: u64, until: Instant, now: Instant) {
        let Some(tx) = self.servers.get_mut(&slot) else {
            return;
        };
        let bytes = std::mem::size_of::<ServerTx<F>>()
            + 2 * MAP_ENTRY_BYTES
            + tx.last_response.as_ref().map_or(0, Bytes::len)
            + tx.to_tag.as_ref().map_or(0, String::len);
        match tx.ended.replace(EndedMark { bytes, until }) {
            Some(old) => self.ended.bytes -= old.bytes,
            None => self.ended.servers += 1,
        }
        self.ended.bytes += bytes;
        let entry = Reverse((until, EndedOwner::Server(slot)));
        self.ended.by_deadline.push(entry);
        self.evict_ended(now);
    }

    /// The branch of `token` has ended: its timers end it at `until`.
    pub(super) fn client_ended(&mut self, token: u64, until: Instant, now: Instant) {
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        let bytes = std::mem::size_of::<ClientTx>()
            + MAP_ENTRY_BYTES
            + client.request.len()
            + client.udp_fallback.as_ref().map_or(0, Bytes::len);
        match client.ended.replace(EndedMark { bytes, until }) {
            Some(old) => self.ended.bytes -= old.bytes,
            None => self.ended.clients += 1,
        }
        self.ended.bytes += bytes;
        let entry = Reverse((until, EndedOwner::Client(token)));
        self.ended.by_deadline.push(entry);
        self.evict_ended(now);
    }

    /// A server transaction is gone: what it was charged as ended, if it was.
    pub(super) fn release_server(&mut self, mark: Option<EndedMark>) {
        if let Some(mark) = mark {
            self.ended.servers -= 1;
            self.ended.bytes -= mark.bytes;
        }
    }

    /// Removes the branch of `token`, and what it was charged as ended.
    pub(super) fn remove_client(&mut self, token: u64) -> Option<ClientTx> {
        let client = self.clients.remove(&token)?;
        if let Some(mark) = client.ended {
            self.ended.clients -= 1;
            self.ended.bytes -= mark.bytes;
        }
        Some(client)
    }

    /// Past the memory bound, the ended transactions whose timers end
    /// soonest go now; stale entries are swept once they outnumber the
    /// held ones.
    fn evict_ended(&mut self, now: Instant) {
        while self.ended.bytes > self.config.ended_bytes {
            let Some(Reverse((until, owner))) = self.ended.by_deadline.pop() else {
                break;
            };
            if self.ended_mark(owner).map(|mark| mark.until) != Some(until) {
                continue;
            }
            crate::metrics::get().transactions_evicted.inc();
            match owner {
                EndedOwner::Server(slot) => self.remove_server(slot, now),
                EndedOwner::Client(token) => {
                    self.remove_client(token);
                }
            }
        }
        if self.ended.by_deadline.len() > 2 * self.ended.count() + 1024 {
            let (servers, clients) = (&self.servers, &self.clients);
            self.ended.by_deadline.retain(|Reverse((until, owner))| {
                let mark = match owner {
                    EndedOwner::Server(slot) => servers.get(slot).and_then(|tx| tx.ended),
                    EndedOwner::Client(token) => clients.get(token).and_then(|c| c.ended),
                };
                mark.is_some_and(|mark| mark.until == *until)
            });
        }
    }

    fn ended_mark(&self, owner: EndedOwner) -> Option<EndedMark> {
        match owner {
            EndedOwner::Server(slot) => self.servers.get(&slot)?.ended,
            EndedOwner::Client(token) => self.clients.get(&token)?.ended,
        }
    }

    /// Transactions that have ended and linger for their timers.
    pub fn ended(&self) -> usize {
        self.ended.count()
    }

    /// What those are charged, in bytes.
    pub fn ended_bytes(&self) -> usize {
        self.ended.bytes()
    }
}
