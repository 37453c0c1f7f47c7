//! Script executors: the actors that run the routing script.
//!
//! A transaction shard hands each request to the executor its Call-ID
//! hashes to ([`RunScript`], with `do_send`) and goes on with its other
//! work; the executor runs the handler and answers [`ScriptDone`], also with
//! `do_send`. Each executor is an actor on its own arbiter thread, which
//! keeps a Python thread state for life, so a handler that never returns
//! stops its executor, not the shard: retransmissions, responses, timers
//! and probes go on, and the shard answers the request 500 at
//! `script.timeout_ms` (see `transaction::Executors`).
//!
//! An executor stuck in one handler past `script.abandon_ms` is abandoned:
//! the [`ExecutorPool`] starts a new one in its slot, the shards send it the
//! runs they had queued on the old one, and the stuck thread is left to
//! finish or not (whatever it does later is dropped, and its thread ends
//! when the handler returns). At most
//! [`MAX_ABANDONED`] threads are left so; past that the daemon says it
//! needs a restart.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use arc_swap::ArcSwap;

use crate::metrics::ExecutorStats;
use crate::proxy::engine::{FailureRun, ScriptRun};
use crate::script::{LocalIdentity, Replay, RequestInput, Run, ScriptCache, ScriptEngine};

/// The most executor threads left stuck in a handler before the daemon
/// stops replacing them and asks for a restart.
pub const MAX_ABANDONED: usize = 4;

/// What a shard asks an executor to run.
#[derive(Debug, Clone)]
pub enum Job {
    /// `@proxy.on_request`: a first run (`replay` None) whose lookup may
    /// ask for a Redis read when `may_fetch`, or the run after that read.
    Request {
        run: ScriptRun,
        replay: Option<Replay>,
        may_fetch: bool,
    },
    /// `@proxy.on_failure`, once every branch failed.
    Failure(FailureRun),
}

/// Run the script for the request of `ticket`; answer [`ScriptDone`] to
/// `reply_to`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RunScript {
    pub ticket: u64,
    pub job: Job,
    /// Who we are, as the shard knows it now (a reload may change it).
    pub local: Arc<LocalIdentity>,
    /// Shared by all of a shard's runs: an `Arc` clone per run, not a
    /// boxed sender.
    pub reply_to: Arc<Recipient<ScriptDone>>,
}

/// How the run of `ticket` ended, from the executor in `slot`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ScriptDone {
    pub ticket: u64,
    pub slot: usize,
    pub outcome: Run,
}

/// One executor as the pool and the shards see it.
pub struct Executor {
    pub addr: Addr<ScriptExecutor>,
    /// Counts replacements in this slot: a shard that holds an older one
    /// sends what it had queued there again.
    pub generation: u64,
    state: Arc<ExecutorState>,
}

impl Executor {
    pub fn stats(&self) -> &ExecutorStats {
        &self.state.stats
    }

    /// How long the handler running now has run (None when idle).
    pub fn busy_for(&self, now: Instant, epoch: Instant) -> Option<Duration> {
        let since = self.state.busy_since.load(Ordering::Acquire);
        (since != 0).then(|| {
            now.saturating_duration_since(epoch)
                .saturating_sub(Duration::from_micros(since))
        })
    }
}

/// What an executor shares with the pool that watches it.
struct ExecutorState {
    /// Microseconds since the pool's epoch when the current run began
    /// (at least 1); 0 while idle.
    busy_since: AtomicU64,
    /// Given up: drop everything, send nothing, stop.
    abandoned: AtomicBool,
    stats: Arc<ExecutorStats>,
}

/// Every executor of the process, by slot.
pub struct ExecutorPool {
    slots: Vec<ArcSwap<Executor>>,
    script: Arc<ScriptEngine>,
    /// When the slots were filled: `busy_since` counts from it.
    epoch: Instant,
    abandon_after: Duration,
    /// Bumped by every replacement, so a shard notices one with one load.
    replacements: AtomicU64,
    abandoned: AtomicUsize,
    /// One replacement at a time (shards may notice a stuck one together).
    replacing: Mutex<()>,
    restart_asked: AtomicBool,
}

impl ExecutorPool {
    /// Starts `workers` executors, each on a new thread (none: the shards
    /// run the script themselves). Call from inside the actor system.
    pub fn start(
        script: Arc<ScriptEngine>,
        workers: usize,
        abandon_after: Duration,
    ) -> Result<Arc<Self>, String> {
        let epoch = Instant::now();
        let slots = (0..workers)
            .map(|slot| {
                let stats = crate::metrics::get().executor(slot);
                spawn(slot, 0, &script, epoch, stats).map(ArcSwap::from_pointee)
            })
            .collect::<Result<_, _>>()?;
        Ok(Arc::new(ExecutorPool {
            slots,
            script,
            epoch,
            abandon_after,
            replacements: AtomicU64::new(0),
            abandoned: AtomicUsize::new(0),
            replacing: Mutex::new(()),
            restart_asked: AtomicBool::new(false),
        }))
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// The script the executors run (and the shards, with none).
    pub fn script(&self) -> &Arc<ScriptEngine> {
        &self.script
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    pub fn abandon_after(&self) -> Duration {
        self.abandon_after
    }

    /// How many replacements so far: a shard compares it with the count it
    /// last saw.
    pub fn replacements(&self) -> u64 {
        self.replacements.load(Ordering::Acquire)
    }

    /// The executor in `slot` now.
    pub fn executor(&self, slot: usize) -> Arc<Executor> {
        self.slots[slot].load_full()
    }

    /// Gives up the executor of `generation` in `slot`, stuck in a handler
    /// for `stuck`, and starts another there. True when the slot has a
    /// fresh executor (this call's, or another shard's); false once
    /// [`MAX_ABANDONED`] threads are stuck, when nothing replaces it.
    pub fn abandon(&self, slot: usize, generation: u64, stuck: Duration) -> bool {
        let _one_at_a_time = self.replacing.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.slots[slot].load_full();
        if current.generation != generation {
            return true;
        }
        if self.abandoned.load(Ordering::Relaxed) >= MAX_ABANDONED {
            if !self.restart_asked.swap(true, Ordering::Relaxed) {
                tracing::error!(
                    executor = slot,
                    stuck_ms = stuck.as_millis() as u64,
                    abandoned = MAX_ABANDONED,
                    "script executor stuck in a handler, and {MAX_ABANDONED} stuck threads are already left running: not replacing it; its requests are answered 500. siphon needs a restart"
                );
            }
            return false;
        }
        let stats = current.state.stats.clone();
        let fresh = match spawn(
            slot,
            generation + 1,
            &self.script,
            self.epoch,
            stats.clone(),
        ) {
            Ok(fresh) => fresh,
            Err(e) => {
                tracing::error!("{e}; the stuck one stays");
                return false;
            }
        };
        let left = self.abandoned.fetch_add(1, Ordering::Relaxed) + 1;
        current.state.abandoned.store(true, Ordering::Release);
        stats.abandoned.inc();
        stats.forget_queue();
        self.slots[slot].store(Arc::new(fresh));
        self.replacements.fetch_add(1, Ordering::Release);
        tracing::error!(
            executor = slot,
            stuck_ms = stuck.as_millis() as u64,
            abandon_ms = self.abandon_after.as_millis() as u64,
            abandoned = left,
            max_abandoned = MAX_ABANDONED,
            "script executor stuck in one handler past script.abandon_ms: abandoned its thread (left to finish or not) and started a new executor, which takes its queue"
        );
        true
    }
}

/// Starts the executor of `slot` on a new thread.
fn spawn(
    slot: usize,
    generation: u64,
    script: &Arc<ScriptEngine>,
    epoch: Instant,
    stats: Arc<ExecutorStats>,
) -> Result<Executor, String> {
    let state = Arc::new(ExecutorState {
        busy_since: AtomicU64::new(0),
        abandoned: AtomicBool::new(false),
        stats,
    });
    let actor = ScriptExecutor {
        slot,
        script: script.clone(),
        cache: script.cache(),
        epoch,
        state: state.clone(),
    };
    // A runtime with no I/O or timer driver: the thread only waits for
    // messages, and such a runtime parks on a futex rather than in epoll,
    // which makes each wake-up cheaper.
    let arbiter =
        Arbiter::try_with_tokio_rt(|| tokio::runtime::Builder::new_current_thread().build())
            .map_err(|e| format!("cannot start script executor {slot}: {e}"))?;
    let addr = ScriptExecutor::start_in_arbiter(&arbiter.handle(), move |_| actor);
    Ok(Executor {
        addr,
        generation,
        state,
    })
}

/// The actor: runs one handler at a time, in the order asked.
pub struct ScriptExecutor {
    slot: usize,
    script: Arc<ScriptEngine>,
    cache: ScriptCache,
    epoch: Instant,
    state: Arc<ExecutorState>,
}

/// Runs the handler `job` asks for on this thread: what an executor does
/// with a [`RunScript`], and what a shard does itself with
/// `script.workers: 0`.
pub fn run_job(
    script: &ScriptEngine,
    cache: &mut ScriptCache,
    job: &Job,
    local: Arc<LocalIdentity>,
) -> Run {
    match job {
        Job::Request {
            run,
            replay,
            may_fetch,
        } => {
            let input = RequestInput {
                preroute: run.preroute.clone(),
                msg: run.request.clone(),
                source: run.source,
                protocol: run.protocol,
                local,
            };
            script.run(cache, input, *may_fetch, replay.clone())
        }
        Job::Failure(run) => {
            let input = RequestInput {
                preroute: run.preroute.clone(),
                msg: run.request.clone(),
                source: run.source,
                protocol: run.protocol,
                local,
            };
            Run::Decided(script.run_failure(cache, input, run.response.clone()))
        }
    }
}

impl ScriptExecutor {
    fn abandoned(&self) -> bool {
        self.state.abandoned.load(Ordering::Acquire)
    }
}

impl Actor for ScriptExecutor {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Self::Context) {
        crate::script::keep_thread_state();
        tracing::debug!(executor = self.slot, "script executor started");
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        // Its thread ends with it.
        Arbiter::current().stop();
    }
}

impl Handler<RunScript> for ScriptExecutor {
    type Result = ();

    fn handle(&mut self, job: RunScript, ctx: &mut Self::Context) {
        if self.abandoned() {
            // Its queue went to the executor that replaced it.
            ctx.stop();
            return;
        }
        let started = Instant::now();
        let since = started.saturating_duration_since(self.epoch).as_micros() as u64;
        self.state.busy_since.store(since.max(1), Ordering::Release);
        let outcome = run_job(&self.script, &mut self.cache, &job.job, job.local);
        self.state.busy_since.store(0, Ordering::Release);
        if self.abandoned() {
            tracing::warn!(
                executor = self.slot,
                ran_ms = started.elapsed().as_millis() as u64,
                "an abandoned script executor's handler returned at last; its decision is dropped and its thread ends"
            );
            ctx.stop();
            return;
        }
        self.state.stats.ran(started.elapsed());
        job.reply_to.do_send(ScriptDone {
            ticket: job.ticket,
            slot: self.slot,
            outcome,
        });
    }
}

/// A shard's side of the executors: the runs it sent to each and has not
/// heard back about, in the order sent, so that it can answer one that
/// takes too long and send the rest again to an executor's replacement.
pub struct Dispatcher {
    pool: Arc<ExecutorPool>,
    executors: Vec<Arc<Executor>>,
    queues: Vec<Queue>,
    /// The pool's replacement count when `executors` was read.
    replacements_seen: u64,
    timeout: Duration,
    reply_to: Option<Arc<Recipient<ScriptDone>>>,
}

/// The runs sent to one executor and not answered yet, oldest first.
#[derive(Default)]
struct Queue {
    sent: std::collections::VecDeque<Sent>,
    /// Since when the oldest one has been the oldest: it may be running.
    head_since: Option<Instant>,
    /// The oldest one was answered 500 at the timeout and its handler
    /// has not returned: the others wait (they have not started), until
    /// it returns or its executor is abandoned.
    overdue: bool,
}

/// One run sent.
pub struct Sent {
    pub ticket: u64,
    pub job: Job,
    pub at: Instant,
}

impl Dispatcher {
    pub fn new(pool: Arc<ExecutorPool>, timeout: Duration) -> Self {
        let executors: Vec<_> = (0..pool.len()).map(|slot| pool.executor(slot)).collect();
        Dispatcher {
            queues: (0..executors.len()).map(|_| Queue::default()).collect(),
            replacements_seen: pool.replacements(),
            executors,
            pool,
            timeout,
            reply_to: None,
        }
    }

    /// Where decisions come back to (the shard, once started).
    pub fn reply_to(&mut self, reply_to: Recipient<ScriptDone>) {
        self.reply_to = Some(Arc::new(reply_to));
    }

    /// The executor of `call_id`: every request of a call goes to the same
    /// one, in order.
    fn slot_of(&self, call_id: &str) -> usize {
        match self.executors.len() {
            1 => 0,
            n => (xxhash_rust::xxh3::xxh3_64(call_id.as_bytes()) % n as u64) as usize,
        }
    }

    /// Sends the run of `ticket` to its call's executor.
    pub fn send(&mut self, now: Instant, ticket: u64, job: Job, local: &Arc<LocalIdentity>) {
        let call_id = match &job {
            Job::Request { run, .. } => run.request.call_id(),
            Job::Failure(run) => run.request.call_id(),
        };
        let slot = self.slot_of(call_id.unwrap_or(""));
        self.post(slot, ticket, &job, local);
        let queue = &mut self.queues[slot];
        queue.head_since.get_or_insert(now);
        queue.sent.push_back(Sent {
            ticket,
            job,
            at: now,
        });
    }

    fn post(&self, slot: usize, ticket: u64, job: &Job, local: &Arc<LocalIdentity>) {
        let Some(reply_to) = &self.reply_to else {
            return;
        };
        let executor = &self.executors[slot];
        executor.stats().enqueued();
        executor.addr.do_send(RunScript {
            ticket,
            job: job.clone(),
            local: local.clone(),
            reply_to: reply_to.clone(),
        });
    }

    /// The executor in `slot` answered `ticket`: the run it answers, or
    /// None when this shard no longer waits for it.
    pub fn done(&mut self, now: Instant, ticket: u64, slot: usize) -> Option<Sent> {
        let queue = self.queues.get_mut(slot)?;
        let position = queue.sent.iter().position(|sent| sent.ticket == ticket)?;
        let sent = queue.sent.remove(position)?;
        if position == 0 {
            queue.overdue = false;
            queue.head_since = (!queue.sent.is_empty()).then_some(now);
        }
        Some(sent)
    }

    /// Called every tick: adopts executors that replaced abandoned ones
    /// (sending them what was queued on those), and gives up stuck ones.
    /// Puts in `timed_out` the tickets to answer 500 now: the oldest run
    /// of an executor once it has taken `script.timeout_ms`, and every run
    /// queued on an executor that is stuck and cannot be replaced.
    pub fn check(&mut self, now: Instant, local: &Arc<LocalIdentity>, timed_out: &mut Vec<u64>) {
        let replacements = self.pool.replacements();
        if replacements != self.replacements_seen {
            self.replacements_seen = replacements;
            self.adopt_replacements(now, local);
        }
        for slot in 0..self.queues.len() {
            let queue = &mut self.queues[slot];
            let (Some(head), Some(since)) = (queue.sent.front(), queue.head_since) else {
                continue;
            };
            if !queue.overdue && now.saturating_duration_since(since) >= self.timeout {
                timed_out.push(head.ticket);
                self.executors[slot].stats().timeouts.inc();
                queue.overdue = true;
            }
            if !queue.overdue {
                continue;
            }
            let executor = &self.executors[slot];
            let stuck = executor.busy_for(now, self.pool.epoch());
            let Some(stuck) = stuck.filter(|stuck| *stuck >= self.pool.abandon_after()) else {
                continue;
            };
            if !self.pool.abandon(slot, executor.generation, stuck) {
                // Nothing will run them: answer all but the stuck one now.
                timed_out.extend(queue.sent.drain(1..).map(|sent| sent.ticket));
            }
        }
        if self.pool.replacements() != self.replacements_seen {
            self.replacements_seen = self.pool.replacements();
            self.adopt_replacements(now, local);
        }
    }

    /// Sends what was queued on a replaced executor to its replacement;
    /// the overdue run that got it replaced has had its answer.
    fn adopt_replacements(&mut self, now: Instant, local: &Arc<LocalIdentity>) {
        for slot in 0..self.executors.len() {
            let fresh = self.pool.executor(slot);
            if fresh.generation == self.executors[slot].generation {
                continue;
            }
            self.executors[slot] = fresh;
            let queue = &mut self.queues[slot];
            if std::mem::take(&mut queue.overdue) {
                queue.sent.pop_front();
            }
            queue.head_since = (!queue.sent.is_empty()).then_some(now);
            for sent in &self.queues[slot].sent {
                self.post(slot, sent.ticket, &sent.job, local);
            }
        }
    }
}
