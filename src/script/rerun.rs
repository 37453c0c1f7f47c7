//! A handler run that must wait for a Redis read, and its second run.
//!
//! A `registrar.lookup` that misses in memory ends the first run (see
//! [`super::registrar`]); the shard has the handler run again once the AoR is
//! read. What the first run did that must not happen twice travels with
//! the parked request as a [`Replay`]: a digest check that passed is not
//! checked again (its nonce-count is spent, so a second check would
//! challenge a caller whose credentials were good).

use std::cell::RefCell;
use std::collections::VecDeque;

/// What a first run left for the second run of the same request.
#[derive(Debug, Default, Clone)]
pub struct Replay {
    /// The users `auth.check` authenticated, in order.
    authenticated: VecDeque<String>,
}

#[derive(Default)]
struct RunState {
    /// A lookup may end this run to wait for a Redis read.
    may_fetch: bool,
    /// The AoR to read before deciding.
    wanted: Option<String>,
    /// Recorded in a first run, consumed in a second.
    replay: Replay,
}

thread_local! {
    static RUN: RefCell<RunState> = RefCell::default();
}

/// Starts a handler run: a first one (`replay` None) whose lookups may ask
/// for a read when `may_fetch`, or the second run of a request.
pub(super) fn begin(may_fetch: bool, replay: Option<Replay>) {
    RUN.with(|run| {
        *run.borrow_mut() = RunState {
            may_fetch: may_fetch && replay.is_none(),
            wanted: None,
            replay: replay.unwrap_or_default(),
        }
    });
}

/// Ends the run: the AoR to read and what to replay, when it asked for one.
pub(super) fn finish() -> Option<(String, Replay)> {
    RUN.with(|run| {
        let state = std::mem::take(&mut *run.borrow_mut());
        Some((state.wanted?, state.replay))
    })
}

/// A lookup missed `aor` in memory: true when the run stops to read it.
pub(super) fn want_fetch(aor: &str) -> bool {
    RUN.with(|run| {
        let mut run = run.borrow_mut();
        if run.may_fetch {
            run.wanted = Some(aor.to_string());
        }
        run.may_fetch
    })
}

/// In a second run, the user the first run's next `auth.check` authenticated.
pub(super) fn replayed_authentication() -> Option<String> {
    RUN.with(|run| run.borrow_mut().replay.authenticated.pop_front())
}

/// In a first run, `auth.check` authenticated `user`.
pub(super) fn record_authentication(user: &str) {
    RUN.with(|run| {
        let mut run = run.borrow_mut();
        if run.may_fetch {
            run.replay.authenticated.push_back(user.to_string());
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_run_replays_what_the_first_authenticated() {
        begin(true, None);
        record_authentication("alice");
        assert!(want_fetch("sip:bob@example.com"));
        let (aor, replay) = finish().expect("the run asked for a read");
        assert_eq!(aor, "sip:bob@example.com");
        begin(true, Some(replay));
        assert!(
            !want_fetch("sip:bob@example.com"),
            "a second run never waits"
        );
        assert_eq!(replayed_authentication().as_deref(), Some("alice"));
        assert_eq!(replayed_authentication(), None, "then checks for real");
        assert!(finish().is_none());
        // Nothing outlives a run.
        assert!(!want_fetch("sip:carol@example.com"));
        assert!(finish().is_none());
    }
}
