//! Script executors: the actors that run the routing script.
//!
//! A transaction shard hands each request to the executor its Call-ID
//! hashes to ([`RunScript`], with `do_send`) and goes on with its other
//! work; the executor runs the handler and answers [`ScriptDone`], also with
//! `do_send`. Each executor is an actor on its own thread, which keeps a
//! Python thread state for life, so a handler that never returns stops its
//! executor, not the shard: retransmissions, responses, timers and probes go
//! on, and the shard answers the request 500 at `script.timeout_ms` (see
//! [`super::dispatcher`]).
//!
//! An executor stuck in one handler past `script.abandon_ms` is abandoned:
//! the [`ExecutorPool`] starts a new one in its slot, the shards send it the
//! runs they had queued on the old one that had not started, and the stuck
//! thread is left to finish or not: whatever it does later is dropped, and
//! its thread ends when the handler returns. At most [`MAX_ABANDONED`]
//! threads are left stuck at once; past that the daemon says it needs a
//! restart.
//!
//! Each run carries a [`RunState`] that the shard and the executor share:
//! an executor runs only a run it could claim, and the shard sends again
//! only a run it could take back, so no run is lost or run twice.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use arc_swap::ArcSwap;
use pyo3::Python;

use crate::metrics::ExecutorStats;
use crate::proxy::engine::{FailureRun, ScriptRun};
use crate::script::{LocalIdentity, Replay, RequestInput, Run, ScriptCache, ScriptEngine};

/// The most executor threads left stuck in a handler at once before the
/// daemon stops replacing them and asks for a restart.
pub const MAX_ABANDONED: usize = 4;

/// `ExecutorState::busy` of an abandoned executor.
const ABANDONED: u64 = u64::MAX;

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
    /// `@proxy.on_failure`, once every branch failed (boxed: it is rare,
    /// and large).
    Failure(Box<FailureRun>),
}

impl Job {
    /// A run that may end asking for a Redis read.
    pub fn may_fetch(&self) -> bool {
        matches!(
            self,
            Job::Request {
                may_fetch: true,
                ..
            }
        )
    }

    pub fn call_id(&self) -> &str {
        self.request().call_id().unwrap_or("")
    }

    fn request(&self) -> &crate::sip::Message {
        match self {
            Job::Request { run, .. } => &run.request,
            Job::Failure(run) => &run.request,
        }
    }
}

/// Where one run is, as the shard and the executor both see it: queued,
/// started (when, in microseconds since the pool's epoch), taken back by
/// the shard, or done (its decision is on its way).
#[derive(Default)]
pub struct RunState(AtomicU64);

const QUEUED: u64 = 0;
const TAKEN_BACK: u64 = u64::MAX - 1;
const DONE: u64 = u64::MAX;

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunPhase {
    Queued,
    /// Its handler began this long after the pool's epoch.
    Started(Duration),
    TakenBack,
    Done,
}

impl RunState {
    /// The executor's: true when the run was still queued, and is now its,
    /// begun at `since` (micros since the epoch, at least 1).
    fn claim(&self, since: u64) -> bool {
        self.0
            .compare_exchange(QUEUED, since, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn finish(&self) {
        self.0.store(DONE, Ordering::Release);
    }

    /// The shard's: true when the run had not started, and never will
    /// where it was sent.
    pub fn take_back(&self) -> bool {
        self.0
            .compare_exchange(QUEUED, TAKEN_BACK, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    pub fn phase(&self) -> RunPhase {
        match self.0.load(Ordering::Acquire) {
            QUEUED => RunPhase::Queued,
            TAKEN_BACK => RunPhase::TakenBack,
            DONE => RunPhase::Done,
            since => RunPhase::Started(Duration::from_micros(since)),
        }
    }
}

/// Run the script for the request of `ticket`; answer [`ScriptDone`] to
/// `reply_to`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RunScript {
    pub ticket: u64,
    pub job: Job,
    pub state: Arc<RunState>,
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

    /// Since when (as micros since the pool's epoch) its handler runs; None
    /// when idle or abandoned.
    fn busy_since(&self) -> Option<u64> {
        let since = self.state.busy.load(Ordering::Acquire);
        (since != 0 && since != ABANDONED).then_some(since)
    }
}

/// What an executor shares with the pool that watches it.
struct ExecutorState {
    /// Microseconds since the pool's epoch when the current run began (at
    /// least 1, counted once the run holds the GIL); 0 while idle;
    /// [`ABANDONED`] once given up. The executor and the pool change it
    /// only by compare-and-swap, so a run that ends just as the pool gives
    /// its executor up is either delivered or abandoned, never both.
    busy: AtomicU64,
    stats: Arc<ExecutorStats>,
    /// The pool's count of threads left stuck, to give back when this
    /// one's handler returns after all.
    stuck: Arc<AtomicUsize>,
}

/// What [`ExecutorPool::abandon`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abandoned {
    /// A new executor is in the slot (this call's, or an earlier one's).
    Replaced,
    /// The run it was stuck in has ended: nothing to do.
    NotStuck,
    /// [`MAX_ABANDONED`] threads are stuck already (or no thread could be
    /// started): the stuck one stays.
    Refused,
}

/// Every executor of the process, by slot.
pub struct ExecutorPool {
    slots: Vec<ArcSwap<Executor>>,
    script: Arc<ScriptEngine>,
    /// When the slots were filled: `busy` counts from it.
    epoch: Instant,
    abandon_after: Duration,
    /// Bumped by every replacement, so a shard notices one with one load.
    replacements: AtomicU64,
    /// Threads abandoned whose handler has not returned.
    stuck: Arc<AtomicUsize>,
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
        let stuck = Arc::new(AtomicUsize::new(0));
        let slots = (0..workers)
            .map(|slot| {
                let stats = crate::metrics::get().executor(slot);
                spawn(slot, 0, &script, epoch, (stats, stuck.clone())).map(ArcSwap::from_pointee)
            })
            .collect::<Result<_, _>>()?;
        Ok(Arc::new(ExecutorPool {
            slots,
            script,
            epoch,
            abandon_after,
            replacements: AtomicU64::new(0),
            stuck,
            replacing: Mutex::new(()),
            restart_asked: AtomicBool::new(false),
        }))
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// `script.abandon_ms`.
    pub fn abandon_after(&self) -> Duration {
        self.abandon_after
    }

    /// What a run's [`RunPhase::Started`] counts from.
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// The script the executors run (and the shards, with none).
    pub fn script(&self) -> &Arc<ScriptEngine> {
        &self.script
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

    /// How long `executor` has been in its current handler, when past
    /// `script.abandon_ms`.
    pub fn stuck_for(&self, executor: &Executor, now: Instant) -> Option<(u64, Duration)> {
        let since = executor.busy_since()?;
        let busy = now
            .saturating_duration_since(self.epoch)
            .saturating_sub(Duration::from_micros(since));
        (busy >= self.abandon_after).then_some((since, busy))
    }

    /// Gives up the executor of `generation` in `slot`, in the handler it
    /// began at `since` for `stuck` now, and starts another there.
    pub fn abandon(
        &self,
        slot: usize,
        generation: u64,
        (since, stuck): (u64, Duration),
    ) -> Abandoned {
        let _one_at_a_time = self.replacing.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.slots[slot].load_full();
        if current.generation != generation {
            return Abandoned::Replaced;
        }
        if self.stuck.load(Ordering::Acquire) >= MAX_ABANDONED {
            if !self.restart_asked.swap(true, Ordering::Relaxed) {
                tracing::error!(
                    executor = slot,
                    stuck_ms = stuck.as_millis() as u64,
                    "script executor stuck in a handler, and {MAX_ABANDONED} stuck threads are already left running: not replacing it; its requests are answered 500 until a handler returns. siphon needs a restart"
                );
            }
            return Abandoned::Refused;
        }
        if current.state.busy.load(Ordering::Acquire) != since {
            return Abandoned::NotStuck;
        }
        let stats = current.state.stats.clone();
        let fresh = match spawn(
            slot,
            generation + 1,
            &self.script,
            self.epoch,
            (stats.clone(), self.stuck.clone()),
        ) {
            Ok(fresh) => fresh,
            Err(e) => {
                tracing::error!("{e}; the stuck one stays");
                return Abandoned::Refused;
            }
        };
        // Counted before the swap: once it is made, the handler may return
        // and give its count back at once.
        let left = self.stuck.fetch_add(1, Ordering::AcqRel) + 1;
        // Only if still in the same run: otherwise the fresh executor is
        // dropped (it stops once its address is gone).
        let gave_up = current.state.busy.compare_exchange(
            since,
            ABANDONED,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        if gave_up.is_err() {
            ExecutorPool::unstuck(&self.stuck);
            return Abandoned::NotStuck;
        }
        stats.abandoned.inc();
        self.slots[slot].store(Arc::new(fresh));
        self.replacements.fetch_add(1, Ordering::Release);
        tracing::error!(
            executor = slot,
            stuck_ms = stuck.as_millis() as u64,
            abandon_ms = self.abandon_after.as_millis() as u64,
            stuck_threads = left,
            max_stuck_threads = MAX_ABANDONED,
            "script executor stuck in one handler past script.abandon_ms: abandoned its thread (left to finish or not) and started a new executor, which takes its queue"
        );
        Abandoned::Replaced
    }

    /// A stuck thread's handler returned: one more may be abandoned.
    fn unstuck(stuck: &AtomicUsize) {
        stuck.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Starts the executor of `slot` on a new thread.
fn spawn(
    slot: usize,
    generation: u64,
    script: &Arc<ScriptEngine>,
    epoch: Instant,
    (stats, stuck): (Arc<ExecutorStats>, Arc<AtomicUsize>),
) -> Result<Executor, String> {
    let state = Arc::new(ExecutorState {
        busy: AtomicU64::new(0),
        stats,
        stuck,
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

/// Runs the handler `job` asks for on this thread: what an executor does
/// with a [`RunScript`], and what a shard does itself with
/// `script.workers: 0`.
pub fn run_job(
    script: &ScriptEngine,
    cache: &mut ScriptCache,
    job: &Job,
    local: Arc<LocalIdentity>,
) -> Run {
    let (request, source, protocol, preroute, trace_id) = match job {
        Job::Request { run, .. } => (
            &run.request,
            run.source,
            run.protocol,
            &run.preroute,
            &run.trace_id,
        ),
        Job::Failure(run) => (
            &run.request,
            run.source,
            run.protocol,
            &run.preroute,
            &run.trace_id,
        ),
    };
    let input = RequestInput {
        preroute: preroute.clone(),
        msg: request.clone(),
        source,
        protocol,
        local,
        trace_id: trace_id.as_ref().map(crate::telemetry::TraceId::get),
    };
    match job {
        Job::Request {
            replay, may_fetch, ..
        } => script.run(cache, input, *may_fetch, replay.clone()),
        Job::Failure(run) => Run::Decided(script.run_failure(cache, input, run.response.clone())),
    }
}

/// How one run ended on an executor.
enum Ended {
    Delivered(Run),
    /// Given up before it began: it never ran.
    AbandonedBefore,
    /// The shard took it back before it began.
    NotWanted,
    /// Given up while it ran: its decision is not wanted.
    AbandonedDuring,
}

/// The actor: runs one handler at a time, in the order asked.
pub struct ScriptExecutor {
    slot: usize,
    script: Arc<ScriptEngine>,
    cache: ScriptCache,
    epoch: Instant,
    state: Arc<ExecutorState>,
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
        if self.state.busy.load(Ordering::Acquire) == ABANDONED {
            // What was queued here went to the executor that replaced it.
            ctx.stop();
            return;
        }
        // The GIL first: waiting for it (while a handler elsewhere holds
        // it in C) is neither running nor being stuck in a handler.
        let mut started = Instant::now();
        let ended = Python::attach(|_py| {
            // From here: the GIL is held.
            started = Instant::now();
            let since = started.saturating_duration_since(self.epoch).as_micros() as u64;
            let since = since.clamp(1, ABANDONED - 2);
            let busy = &self.state.busy;
            if busy
                .compare_exchange(0, since, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                return Ended::AbandonedBefore;
            }
            if !job.state.claim(since) {
                // Answered already, or sent to another executor.
                return match busy.compare_exchange(since, 0, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => Ended::NotWanted,
                    Err(_) => Ended::AbandonedDuring,
                };
            }
            let outcome = run_job(&self.script, &mut self.cache, &job.job, job.local.clone());
            match busy.compare_exchange(since, 0, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => Ended::Delivered(outcome),
                Err(_) => Ended::AbandonedDuring,
            }
        });
        let outcome = match ended {
            Ended::Delivered(outcome) => outcome,
            Ended::AbandonedBefore => {
                ctx.stop();
                return;
            }
            Ended::NotWanted => return,
            Ended::AbandonedDuring => {
                tracing::warn!(
                    executor = self.slot,
                    ran_ms = started.elapsed().as_millis() as u64,
                    "an abandoned script executor's handler returned at last; its decision is dropped and its thread ends"
                );
                ExecutorPool::unstuck(&self.state.stuck);
                ctx.stop();
                return;
            }
        };
        self.state.stats.ran(started.elapsed());
        job.state.finish();
        job.reply_to.do_send(ScriptDone {
            ticket: job.ticket,
            slot: self.slot,
            outcome,
        });
    }
}
