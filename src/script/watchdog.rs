//! The script watchdog: a handler that runs past `script.timeout_ms` gets
//! a `TimeoutError` raised inside it (`PyThreadState_SetAsyncExc`), and
//! again every `timeout_ms` until it returns (a handler that catches
//! `Exception` in a loop would shrug off one), so that its executor can
//! go on with the next request.
//!
//! Each executor thread has a slot: the handler's start time while one runs,
//! else zero. One watchdog thread looks at the slots without the GIL and
//! takes it only for a handler over time. Both sides change a slot's
//! `fired` flag only while holding the GIL, so an exception is never left
//! pending for the next run: the run that ends clears it.
//!
//! An asynchronous exception is raised only when Python runs bytecode, so
//! `time.sleep` is replaced by [`interruptible_sleep`], which sleeps in
//! short slices without the GIL and returns early once its run has fired.
//! A blocking call in C (a socket read, say) still runs to its end.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use pyo3::prelude::*;

/// One executor thread's run, as the watchdog sees it.
struct Slot {
    /// Python's id of the thread (for `PyThreadState_SetAsyncExc`).
    thread: std::os::raw::c_ulong,
    /// Microseconds since the watchdog's epoch when the run began; 0: idle.
    started: AtomicU64,
    /// Which run that is, so a late watchdog never hits the next one.
    run: AtomicU64,
    /// The exception was set for the current run.
    fired: AtomicBool,
    /// When it was last set (as `started`), to set it again a timeout later.
    last_fired: AtomicU64,
}

pub struct Watchdog {
    timeout: Duration,
    epoch: Instant,
    slots: Mutex<Vec<Arc<Slot>>>,
    thread: OnceLock<()>,
}

thread_local! {
    static SLOT: RefCell<Option<Registered>> = const { RefCell::new(None) };
}

impl Watchdog {
    pub fn new(timeout: Duration) -> Arc<Self> {
        Arc::new(Watchdog {
            timeout,
            epoch: Instant::now(),
            slots: Mutex::default(),
            thread: OnceLock::new(),
        })
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn now_micros(&self) -> u64 {
        (self.epoch.elapsed().as_micros() as u64).max(1)
    }

    /// Marks the start of a handler run on this thread (the GIL held);
    /// the returned guard marks its end.
    pub fn enter(self: &Arc<Self>, _py: Python<'_>) -> RunGuard {
        let slot = SLOT.with(|cell| {
            let mut cell = cell.borrow_mut();
            match &*cell {
                Some(Registered(dog, slot)) if Arc::ptr_eq(dog, self) => slot.clone(),
                _ => {
                    let slot = self.register();
                    *cell = Some(Registered(self.clone(), slot.clone()));
                    slot
                }
            }
        });
        slot.run.fetch_add(1, Ordering::Relaxed);
        slot.started.store(self.now_micros(), Ordering::Release);
        RunGuard { slot }
    }

    fn register(self: &Arc<Self>) -> Arc<Slot> {
        // SAFETY: called with the GIL held, on the thread being registered.
        let thread = unsafe { pyo3::ffi::PyThread_get_thread_ident() };
        let slot = Arc::new(Slot {
            thread,
            started: AtomicU64::new(0),
            run: AtomicU64::new(0),
            fired: AtomicBool::new(false),
            last_fired: AtomicU64::new(0),
        });
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(slot.clone());
        self.thread.get_or_init(|| {
            let dog = self.clone();
            let spawned = std::thread::Builder::new()
                .name("script-watchdog".into())
                .spawn(move || dog.watch());
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start the script watchdog; handlers run without a time limit");
            }
        });
        slot
    }

    fn watch(self: Arc<Self>) {
        let tick = (self.timeout / 4).clamp(Duration::from_millis(2), Duration::from_millis(50));
        let limit = self.timeout.as_micros() as u64;
        loop {
            std::thread::sleep(tick);
            let now = self.now_micros();
            let overdue: Vec<(Arc<Slot>, u64)> = self
                .slots
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .filter_map(|slot| {
                    let started = slot.started.load(Ordering::Acquire);
                    let since = match slot.fired.load(Ordering::Relaxed) {
                        true => slot.last_fired.load(Ordering::Relaxed),
                        false => started,
                    };
                    let over = started != 0 && now.saturating_sub(since) > limit;
                    over.then(|| (slot.clone(), slot.run.load(Ordering::Relaxed)))
                })
                .collect();
            for (slot, run) in overdue {
                Python::attach(|_py| {
                    // Still the same run, still running: interrupt it.
                    if slot.started.load(Ordering::Acquire) == 0
                        || slot.run.load(Ordering::Relaxed) != run
                    {
                        return;
                    }
                    // SAFETY: the GIL is held; the thread id came from
                    // PyThread_get_thread_ident on that thread.
                    unsafe {
                        pyo3::ffi::PyThreadState_SetAsyncExc(
                            slot.thread as std::os::raw::c_long,
                            pyo3::ffi::PyExc_TimeoutError,
                        );
                    }
                    slot.fired.store(true, Ordering::Relaxed);
                    slot.last_fired.store(self.now_micros(), Ordering::Relaxed);
                });
            }
        }
    }
}

/// A thread's slot with the watchdog that watches it; the slot goes when
/// the thread ends (an abandoned executor's, say), so the watchdog's list
/// does not grow with replaced threads.
struct Registered(Arc<Watchdog>, Arc<Slot>);

impl Drop for Registered {
    fn drop(&mut self) {
        let Registered(dog, slot) = self;
        dog.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|kept| !Arc::ptr_eq(kept, slot));
    }
}

/// The end of a handler run; drop it with the GIL held.
pub struct RunGuard {
    slot: Arc<Slot>,
}

impl RunGuard {
    /// True when the watchdog interrupted this run.
    pub fn fired(&self) -> bool {
        self.slot.fired.load(Ordering::Relaxed)
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        self.slot.started.store(0, Ordering::Release);
        if self.slot.fired.swap(false, Ordering::Relaxed) {
            crate::metrics::get().script_timeouts.inc();
            // The handler may have returned before the exception was
            // raised: clear it, so the next run does not get it.
            // SAFETY: the GIL is held (runs end inside Python::attach).
            unsafe {
                pyo3::ffi::PyThreadState_SetAsyncExc(
                    self.slot.thread as std::os::raw::c_long,
                    std::ptr::null_mut(),
                );
            }
        }
    }
}

/// True when this thread's current run has been interrupted.
fn interrupted() -> bool {
    SLOT.with(|cell| {
        cell.borrow()
            .as_ref()
            .is_some_and(|Registered(_, slot)| slot.fired.load(Ordering::Relaxed))
    })
}

/// `time.sleep` in the embedded interpreter: sleeps in slices of at most
/// 10 ms without the GIL, and returns early once the watchdog fired, so
/// the pending `TimeoutError` is raised at once.
#[pyfunction]
#[pyo3(name = "sleep")]
pub fn interruptible_sleep(py: Python<'_>, secs: f64) -> PyResult<()> {
    if !secs.is_finite() || secs < 0.0 {
        return Err(pyo3::exceptions::PyValueError::new_err(
            "sleep length must be a non-negative number",
        ));
    }
    let end = Instant::now() + Duration::from_secs_f64(secs.min(1e9));
    loop {
        let now = Instant::now();
        if now >= end || interrupted() {
            return Ok(());
        }
        let slice = (end - now).min(Duration::from_millis(10));
        py.detach(|| std::thread::sleep(slice));
        // Signals (Ctrl-C in a test) still interrupt, as in time.sleep.
        py.check_signals()?;
    }
}
