//! Transactions that have ended and only linger for their RFC 3261 timers:
//! a server transaction that sent its final response (absorbing
//! retransmissions, replaying its response, waiting for an ACK), a branch
//! that got its final (ACKing a retransmitted one, passing on a late 2xx).
//!
//! An ended server transaction moves out of the live table into a compact
//! one ([`EndedServer`]): what absorbing retransmissions, ACKs and CANCELs
//! takes, and no more (the request, its branches and their context go).
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

/// A server transaction that sent its final response, as it lingers.
pub struct EndedServer<F> {
    pub key: ServerKey,
    pub flow: F,
    /// Where its responses go (see [`ServerTx::reply_to`]).
    pub reply_to: SocketAddr,
    /// A CANCEL must come from the INVITE's host.
    pub source_ip: IpAddr,
    /// What it answers with again; none after a relayed 2xx (most INVITEs),
    /// which the UAs retransmit themselves, so it is boxed.
    pub replay: Option<Box<Replay>>,
    pub state: ServerState,
    pub reliable: bool,
    /// Spans of branches still open when the final went (a fork's).
    pub trace: Option<Box<super::trace::TxTrace>>,
    pub mark: EndedMark,
}

/// A branch that got its final response, as it lingers: what matching a
/// retransmitted final takes (re-sending an INVITE's ACK), and passing on
/// a 2xx that comes later (RFC 6026 §7.2), and no more.
pub struct EndedClient {
    /// The server transaction it forked from.
    pub server: u64,
    pub loop_hash: u64,
    pub method: SentMethod,
    pub hop: Hop,
    pub strict_source: bool,
    pub state: ClientState,
    pub invite: bool,
    /// The ACK of an INVITE's non-2xx final, for a retransmission of it.
    pub ack: Bytes,
    pub candidate: Option<usize>,
    pub abandoned: bool,
    /// See [`ClientTx::caller_flow`]; boxed, as most callers have none.
    pub caller_flow: Option<Box<Hop>>,
    pub mark: EndedMark,
}

impl EndedClient {
    fn of(client: ClientTx, server: u64, mark: EndedMark) -> Self {
        let ack = match (client.invite, client.state) {
            (true, ClientState::Completed) => client.request,
            _ => Bytes::new(),
        };
        EndedClient {
            server,
            loop_hash: client.loop_hash,
            method: client.method,
            hop: client.hop,
            strict_source: client.strict_source,
            state: client.state,
            invite: client.invite,
            ack,
            candidate: client.candidate,
            abandoned: client.abandoned,
            caller_flow: client.caller_flow.map(Box::new),
            mark,
        }
    }
}

/// What an ended server transaction answers with again.
#[derive(Default)]
pub struct Replay {
    /// Replayed to a retransmitted request, and resent by Timer G while an
    /// INVITE's non-2xx, or our own 2xx, waits for its ACK.
    pub last_response: Option<Bytes>,
    /// The To tag of our own answer, for the 200 to a late CANCEL.
    pub to_tag: Option<String>,
    pub retransmit: Duration,
    /// Our own 2xx's ACK is found by this key.
    pub ack_key: Option<u64>,
}

impl<F> EndedServer<F> {
    pub fn last_response(&self) -> Option<&Bytes> {
        self.replay.as_ref()?.last_response.as_ref()
    }

    pub fn ack_key(&self) -> Option<u64> {
        self.replay.as_ref()?.ack_key
    }
}

/// The ended transactions of one engine, by when their timers end them.
#[derive(Default)]
pub(super) struct EndedStore {
    /// Soonest first; an entry whose transaction is gone, or whose mark
    /// changed since (an ACK moves Timer H to Timer I), is skipped.
    by_deadline: BinaryHeap<Reverse<(Instant, EndedOwner)>>,
    /// Branches ended but still whole in the live table, until the tick
    /// moves them to the compact one.
    clients: usize,
    /// Their tokens.
    fresh_clients: Vec<u64>,
    bytes: usize,
}

/// What an ended transaction's map entries cost beyond its (boxed) struct:
/// the key, the hash, the slot and the pointer, with the map's spare room,
/// and the allocator's header.
const MAP_ENTRY_BYTES: usize = 64;

impl EndedStore {
    /// Branches ended and lingering.
    pub(super) fn clients(&self) -> usize {
        self.clients
    }
}

/// What an ended branch is charged.
fn client_charge(ended: &EndedClient) -> usize {
    std::mem::size_of::<EndedClient>()
        + MAP_ENTRY_BYTES
        + ended.ack.len()
        + ended
            .caller_flow
            .as_ref()
            .map_or(0, |_| std::mem::size_of::<Hop>())
}

/// What an ended server transaction is charged.
fn server_charge<F>(ended: &EndedServer<F>) -> usize {
    let replay = ended.replay.as_deref().map_or(0, |replay| {
        std::mem::size_of::<Replay>()
            + replay.last_response.as_ref().map_or(0, Bytes::len)
            + replay.to_tag.as_ref().map_or(0, String::capacity)
    });
    std::mem::size_of::<EndedServer<F>>() + 2 * MAP_ENTRY_BYTES + replay
}

impl<F: Clone> Engine<F> {
    /// The server transaction of `slot` sent its final response: it moves
    /// to the compact table, until its timers end it at `until`.
    pub(super) fn retire_server(&mut self, slot: u64, until: Instant) {
        let Some(tx) = self.servers.remove(&slot) else {
            return;
        };
        let mut ended = EndedServer {
            key: tx.key,
            flow: tx.flow,
            reply_to: tx.reply_to,
            source_ip: tx.source.ip(),
            replay: (tx.last_response.is_some() || tx.to_tag.is_some() || tx.ack_key.is_some())
                .then(|| {
                    Box::new(Replay {
                        last_response: tx.last_response,
                        to_tag: tx.to_tag,
                        retransmit: tx.retransmit,
                        ack_key: tx.ack_key,
                    })
                }),
            state: tx.state,
            reliable: tx.protocol.is_reliable(),
            trace: tx.trace,
            mark: EndedMark { bytes: 0, until },
        };
        ended.mark.bytes = server_charge(&ended);
        self.ended.bytes += ended.mark.bytes;
        self.ended_servers.insert(slot, Box::new(ended));
        let entry = Reverse((until, EndedOwner::Server(slot)));
        self.ended.by_deadline.push(entry);
    }

    /// An ended server transaction changed: what it holds (`charge`), or
    /// when its timers end it (an ACK brings Timer H to Timer I).
    pub(super) fn recharge_server(&mut self, slot: u64, until: Instant) {
        let Some(ended) = self.ended_servers.get_mut(&slot) else {
            return;
        };
        let bytes = server_charge(ended);
        self.ended.bytes = self.ended.bytes - ended.mark.bytes + bytes;
        let moved = ended.mark.until != until;
        ended.mark = EndedMark { bytes, until };
        if moved {
            let entry = Reverse((until, EndedOwner::Server(slot)));
            self.ended.by_deadline.push(entry);
        }
    }

    /// Removes the ended server transaction of `slot`, if there is one.
    pub(super) fn remove_ended_server(&mut self, slot: u64, now: Instant) -> bool {
        let Some(ended) = self.ended_servers.remove(&slot) else {
            return false;
        };
        self.server_index.remove(&ended.key);
        if let Some(key) = ended.ack_key() {
            self.awaiting_ack.remove(&key);
        }
        self.ended.bytes -= ended.mark.bytes;
        self.end_trace(ended.trace, now);
        true
    }

    /// The branch of `token` has ended: its timers end it at `until`.
    pub(super) fn client_ended(&mut self, token: u64, until: Instant) {
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        let bytes = std::mem::size_of::<ClientTx>()
            + MAP_ENTRY_BYTES
            + client.request.len()
            + client.udp_fallback.as_ref().map_or(0, Bytes::len);
        match client.ended.replace(EndedMark { bytes, until }) {
            Some(old) => self.ended.bytes -= old.bytes,
            None => {
                self.ended.clients += 1;
                self.ended.fresh_clients.push(token);
            }
        }
        self.ended.bytes += bytes;
        let entry = Reverse((until, EndedOwner::Client(token)));
        self.ended.by_deadline.push(entry);
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

    /// An ended branch changed: a 2xx after its non-2xx final made it
    /// Accepted, until Timer M.
    pub(super) fn recharge_client(&mut self, token: u64, until: Instant) {
        let Some(ended) = self.ended_clients.get_mut(&token) else {
            return;
        };
        let bytes = client_charge(ended);
        self.ended.bytes = self.ended.bytes - ended.mark.bytes + bytes;
        ended.mark = EndedMark { bytes, until };
        let entry = Reverse((until, EndedOwner::Client(token)));
        self.ended.by_deadline.push(entry);
    }

    /// Removes the compact ended branch of `token`, if there is one.
    pub(super) fn remove_ended_client(&mut self, token: u64) {
        if let Some(ended) = self.ended_clients.remove(&token) {
            self.ended.bytes -= ended.mark.bytes;
        }
    }

    /// The branches that ended since the last tick leave the live table
    /// for the compact one. Never from inside a branch's own handling,
    /// which goes on with the whole branch after marking it ended.
    fn compact_ended_clients(&mut self) {
        for token in std::mem::take(&mut self.ended.fresh_clients) {
            let Some(client) = self.clients.get(&token) else {
                continue;
            };
            let (Owner::Server(server), Some(mark)) = (client.owner, client.ended) else {
                continue;
            };
            if !matches!(client.state, ClientState::Completed | ClientState::Accepted) {
                continue;
            }
            let Some(client) = self.remove_client(token) else {
                continue;
            };
            let mut ended = EndedClient::of(client, server, mark);
            ended.mark.bytes = client_charge(&ended);
            self.ended.bytes += ended.mark.bytes;
            self.ended_clients.insert(token, Box::new(ended));
        }
    }

    /// Past the memory bound, the ended transactions whose timers end
    /// soonest go now; stale entries are swept once they outnumber the
    /// held ones. Run with the timers, never from inside a transaction's
    /// own handling (which may still use the one evicted): the bound may
    /// be passed by what arrives between two ticks.
    pub(super) fn evict_ended(&mut self, now: Instant) {
        self.compact_ended_clients();
        while self.ended.bytes > self.config.ended_bytes {
            let Some(Reverse((until, owner))) = self.ended.by_deadline.pop() else {
                break;
            };
            if self.ended_mark(owner).map(|mark| mark.until) != Some(until) {
                continue;
            }
            crate::metrics::get().transactions_evicted.inc();
            match owner {
                EndedOwner::Server(slot) => {
                    self.remove_ended_server(slot, now);
                }
                EndedOwner::Client(token) => {
                    self.remove_client(token);
                    self.remove_ended_client(token);
                }
            }
        }
        // Entries whose time has come, once the bound is kept (they count
        // until then): their transactions' own timers end them in this
        // tick, or they are stale; so the heap holds about one entry per
        // ended transaction.
        while let Some(Reverse((until, _))) = self.ended.by_deadline.peek() {
            if *until > now {
                break;
            }
            self.ended.by_deadline.pop();
        }
        if self.ended.by_deadline.len() > 2 * self.ended() + 1024 {
            let tables = (&self.ended_servers, &self.clients, &self.ended_clients);
            self.ended.by_deadline.retain(|Reverse((until, owner))| {
                mark_of(tables, *owner).is_some_and(|mark| mark.until == *until)
            });
        }
    }

    fn ended_mark(&self, owner: EndedOwner) -> Option<EndedMark> {
        mark_of(
            (&self.ended_servers, &self.clients, &self.ended_clients),
            owner,
        )
    }

    /// Transactions that have ended and linger for their timers.
    pub fn ended(&self) -> usize {
        self.ended_servers.len() + self.ended.clients() + self.ended_clients.len()
    }

    /// Branches in the compact table (for tests).
    #[cfg(test)]
    pub fn ended_branches(&self) -> usize {
        self.ended_clients.len()
    }

    /// What those are charged, in bytes.
    pub fn ended_bytes(&self) -> usize {
        self.ended.bytes
    }
}

/// Where ended transactions linger: the compact servers, the live
/// branches (until the tick after they ended), the compact branches.
type EndedTables<'a, F> = (
    &'a FastMap<u64, Box<EndedServer<F>>>,
    &'a FastMap<u64, ClientTx>,
    &'a FastMap<u64, Box<EndedClient>>,
);

/// The mark of an ended transaction, wherever it lingers.
fn mark_of<F>(
    (servers, clients, ended_clients): EndedTables<'_, F>,
    owner: EndedOwner,
) -> Option<EndedMark> {
    match owner {
        EndedOwner::Server(slot) => Some(servers.get(&slot)?.mark),
        EndedOwner::Client(token) => match ended_clients.get(&token) {
            Some(ended) => Some(ended.mark),
            None => clients.get(&token)?.ended,
        },
    }
}
