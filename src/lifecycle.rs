//! Where the process is in its life: starting, ready, or draining before exit.
//! Shared by the shards (which refuse new calls while draining) and the admin
//! API (which reports readiness).

use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Default, Debug)]
pub struct Lifecycle {
    ready: AtomicBool,
    draining: AtomicBool,
}

impl Lifecycle {
    /// The script is loaded and every listener is bound.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// SIGTERM/SIGINT: stop taking new calls, finish what is in flight.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Ready for new traffic: started and not draining.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.is_draining()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_between_start_and_drain() {
        let life = Lifecycle::default();
        assert!(!life.is_ready());
        life.set_ready();
        assert!(life.is_ready());
        life.start_draining();
        assert!(!life.is_ready());
        assert!(life.is_draining());
    }
}
