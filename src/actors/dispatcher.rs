//! A shard's side of the script executors ([`super::executor`]): the runs
//! it sent to each and has not heard back about, in the order sent.
//!
//! - A run that has started and is past `script.timeout_ms` is answered
//!   500 at once; its decision, should it come, is dropped.
//! - A run that has not started waits (its handler has not been called),
//!   at most `script.abandon_ms`; then it is taken back and answered 500.
//! - An executor stuck past `script.abandon_ms` is replaced through the
//!   pool; what had not started there is taken back and sent to the new
//!   one, and what had started there (it will never answer) is answered.
//! - When the pool refuses to replace a stuck executor, what waits for it
//!   is answered at once, until it is unstuck.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Recipient;

use super::executor::{
    Abandoned, Executor, ExecutorPool, Job, RunPhase, RunScript, RunState, ScriptDone,
};
use crate::script::LocalIdentity;

/// The most runs a shard keeps queued on one executor; past it a request
/// is answered 500 at once rather than wait behind them all.
pub const MAX_QUEUED_RUNS: usize = 10_000;

/// Spreads Call-IDs over executors independently of how they are spread
/// over shards, so that several shards share each executor.
const EXECUTOR_SEED: u64 = 0x5eed_5c21_97e3_c0de;

pub struct Dispatcher {
    pool: Arc<ExecutorPool>,
    executors: Vec<Arc<Executor>>,
    queues: Vec<Queue>,
    /// The pool's replacement count when `executors` was read.
    replacements_seen: u64,
    timeout: Duration,
    /// How long a run may wait to start (`script.abandon_ms`).
    wait_at_most: Duration,
    reply_to: Option<Arc<Recipient<ScriptDone>>>,
    /// The runs sent and not answered that may come back asking for a
    /// Redis read.
    fetching: usize,
}

/// The runs sent to one executor and not answered yet, oldest first.
#[derive(Default)]
struct Queue {
    sent: VecDeque<Sent>,
    /// Its executor is stuck and the pool would not replace it.
    refused: bool,
}

/// One run sent.
pub struct Sent {
    pub ticket: u64,
    pub job: Job,
    /// When it was sent (again, after a replacement).
    pub at: Instant,
    state: Arc<RunState>,
    /// Answered 500 already: its decision is no longer wanted.
    answered: bool,
}

impl Dispatcher {
    pub fn new(pool: Arc<ExecutorPool>, timeout: Duration) -> Self {
        let executors: Vec<_> = (0..pool.len()).map(|slot| pool.executor(slot)).collect();
        Dispatcher {
            queues: (0..executors.len()).map(|_| Queue::default()).collect(),
            replacements_seen: pool.replacements(),
            wait_at_most: pool.abandon_after(),
            executors,
            pool,
            timeout,
            reply_to: None,
            fetching: 0,
        }
    }

    /// Where decisions come back to (the shard, once started).
    pub fn reply_to(&mut self, reply_to: Recipient<ScriptDone>) {
        self.reply_to = Some(Arc::new(reply_to));
    }

    /// Runs sent and not answered that may come back asking for a Redis
    /// read (for the bound on runs that wait for one).
    pub fn may_fetch(&self) -> usize {
        self.fetching
    }

    /// The executor of `call_id`: every request of a call goes to the same
    /// one, in order.
    fn slot_of(&self, call_id: &str) -> usize {
        match self.executors.len() {
            0 | 1 => 0,
            n => {
                let hash = xxhash_rust::xxh3::xxh3_64_with_seed(call_id.as_bytes(), EXECUTOR_SEED);
                (hash % n as u64) as usize
            }
        }
    }

    /// Sends the run of `ticket` to its call's executor. False when it
    /// cannot wait there (that executor is stuck for good, or too many
    /// runs wait for it): answer it now.
    pub fn send(
        &mut self,
        now: Instant,
        ticket: u64,
        job: Job,
        local: &Arc<LocalIdentity>,
    ) -> bool {
        if self.executors.is_empty() || self.reply_to.is_none() {
            return false;
        }
        let slot = self.slot_of(job.call_id());
        let queue = &mut self.queues[slot];
        if queue.refused && self.pool.stuck_for(&self.executors[slot], now).is_none() {
            queue.refused = false;
        }
        if queue.refused || queue.sent.len() >= MAX_QUEUED_RUNS {
            self.executors[slot].stats().timeouts.inc();
            return false;
        }
        if job.may_fetch() {
            self.fetching += 1;
        }
        let state = self.post(slot, ticket, &job, local);
        self.queues[slot].sent.push_back(Sent {
            ticket,
            job,
            at: now,
            state,
            answered: false,
        });
        true
    }

    fn post(
        &self,
        slot: usize,
        ticket: u64,
        job: &Job,
        local: &Arc<LocalIdentity>,
    ) -> Arc<RunState> {
        let state = Arc::new(RunState::default());
        let executor = &self.executors[slot];
        executor.stats().enqueued();
        if let Some(reply_to) = &self.reply_to {
            executor.addr.do_send(RunScript {
                ticket,
                job: job.clone(),
                state: state.clone(),
                local: local.clone(),
                reply_to: reply_to.clone(),
            });
        }
        state
    }

    /// The executor in `slot` answered `ticket`: the run it answers, or
    /// None when that run was answered already (a late decision).
    pub fn done(&mut self, ticket: u64, slot: usize) -> Option<Sent> {
        let queue = self.queues.get_mut(slot)?;
        let position = queue.sent.iter().position(|sent| sent.ticket == ticket)?;
        let sent = queue.sent.remove(position)?;
        self.fetching -= usize::from(sent.job.may_fetch());
        self.executors[slot].stats().dequeued();
        (!sent.answered).then_some(sent)
    }

    /// Called every tick. Puts in `timed_out` the tickets to answer 500
    /// now (see the module's doc).
    pub fn check(&mut self, now: Instant, local: &Arc<LocalIdentity>, timed_out: &mut Vec<u64>) {
        // Stuck executors first: what waits for one goes to its
        // replacement rather than time out.
        for slot in 0..self.queues.len() {
            let queue = &mut self.queues[slot];
            if queue.sent.is_empty() && !queue.refused {
                continue;
            }
            let executor = &self.executors[slot];
            queue.refused = match self.pool.stuck_for(executor, now) {
                None => false,
                Some(stuck) => {
                    self.pool.abandon(slot, executor.generation, stuck) == Abandoned::Refused
                }
            };
        }
        if self.pool.replacements() != self.replacements_seen {
            self.adopt_replacements(now, local, timed_out);
        }
        let since_epoch = now.saturating_duration_since(self.pool.epoch());
        for slot in 0..self.queues.len() {
            let executor = &self.executors[slot];
            let queue = &mut self.queues[slot];
            let mut waiting = false;
            for sent in queue.sent.iter_mut() {
                match sent.state.phase() {
                    RunPhase::Started(began) => {
                        if !sent.answered && since_epoch.saturating_sub(began) >= self.timeout {
                            sent.answered = true;
                            timed_out.push(sent.ticket);
                            executor.stats().timeouts.inc();
                        }
                    }
                    RunPhase::Queued => waiting = true,
                    RunPhase::TakenBack | RunPhase::Done => {}
                }
            }
            if !waiting {
                continue;
            }
            // Runs that have not started wait at most `wait_at_most`, and
            // not at all for an executor the pool will not replace.
            let refused = queue.refused;
            let expired = |sent: &Sent| {
                sent.state.phase() == RunPhase::Queued
                    && (refused || now.saturating_duration_since(sent.at) >= self.wait_at_most)
            };
            let mut fetching = 0;
            queue.sent.retain(|sent| {
                let gone = expired(sent) && sent.state.take_back();
                if gone {
                    timed_out.push(sent.ticket);
                    executor.stats().dequeued();
                    executor.stats().timeouts.inc();
                    fetching += usize::from(sent.job.may_fetch());
                }
                !gone
            });
            self.fetching -= fetching;
        }
    }

    /// Moves what was queued on replaced executors to their replacements.
    /// A run that had started on the old one will never be answered there:
    /// it is answered now (unless it was already).
    fn adopt_replacements(
        &mut self,
        now: Instant,
        local: &Arc<LocalIdentity>,
        timed_out: &mut Vec<u64>,
    ) {
        self.replacements_seen = self.pool.replacements();
        for slot in 0..self.executors.len() {
            let fresh = self.pool.executor(slot);
            if fresh.generation == self.executors[slot].generation {
                continue;
            }
            self.executors[slot] = fresh;
            let mut queue = std::mem::take(&mut self.queues[slot].sent);
            let mut fetching = 0;
            queue.retain_mut(|sent| {
                if sent.state.take_back() {
                    // Counted once more by post().
                    self.executors[slot].stats().dequeued();
                    sent.state = self.post(slot, sent.ticket, &sent.job, local);
                    sent.at = now;
                    return true;
                }
                match sent.state.phase() {
                    // Its decision is on its way.
                    RunPhase::Done => true,
                    _ => {
                        if !sent.answered {
                            timed_out.push(sent.ticket);
                            self.executors[slot].stats().timeouts.inc();
                        }
                        self.executors[slot].stats().dequeued();
                        fetching += usize::from(sent.job.may_fetch());
                        false
                    }
                }
            });
            self.fetching -= fetching;
            self.queues[slot] = Queue {
                sent: queue,
                refused: false,
            };
        }
    }
}
