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
use std::time::Instant;

use crate::telemetry::LookupRecord;

/// What a first run left for the second run of the same request.
#[derive(Debug, Default, Clone)]
pub struct Replay {
    /// The users `auth.check` authenticated, in order.
    authenticated: VecDeque<String>,
    /// The AoR the shard read from Redis, and when the read began (for
    /// that lookup's span; boxed, as only traced calls have one).
    read: Option<Box<(String, Instant)>>,
}

impl Replay {
    /// The shard began reading `aor` from Redis (the call is traced): the
    /// second run's lookup of it spans from then.
    pub fn read_started(&mut self, aor: &str, start: Instant) {
        self.read = Some(Box::new((aor.to_string(), start)));
    }
}

#[derive(Default)]
struct RunState {
    /// A lookup may end this run to wait for a Redis read.
    may_fetch: bool,
    /// The AoR to read before deciding.
    wanted: Option<String>,
    /// Recorded in a first run, consumed in a second.
    replay: Replay,
    /// The call is traced: lookups are recorded for their spans.
    traced: bool,
    lookups: Vec<LookupRecord>,
}

/// How a run ended, for the run's caller.
pub(super) struct Finished {
    /// The AoR to read and what to replay, when the run asked for one.
    pub fetch: Option<(String, Replay)>,
    /// The lookups it made, when the call is traced.
    pub lookups: Vec<LookupRecord>,
}

thread_local! {
    static RUN: RefCell<RunState> = RefCell::default();
}

/// Starts a handler run: a first one (`replay` None) whose lookups may ask
/// for a read when `may_fetch`, or the second run of a request.
pub(super) fn begin(may_fetch: bool, replay: Option<Replay>, traced: bool) {
    RUN.with(|run| {
        *run.borrow_mut() = RunState {
            may_fetch: may_fetch && replay.is_none(),
            wanted: None,
            replay: replay.unwrap_or_default(),
            traced,
            lookups: Vec::new(),
        }
    });
}

/// Ends the run.
pub(super) fn finish() -> Finished {
    RUN.with(|run| {
        let state = std::mem::take(&mut *run.borrow_mut());
        Finished {
            fetch: state.wanted.map(|aor| (aor, state.replay)),
            lookups: state.lookups,
        }
    })
}

/// Whether this run's lookups are recorded (the call is traced).
pub(super) fn traced() -> bool {
    RUN.with(|run| run.borrow().traced)
}

/// A lookup of `uri` (the AoR `aor`) found `contacts`, from `start` to
/// now. In a second run, the lookup of the AoR the shard read from Redis
/// spans from that read.
pub(super) fn record_lookup(uri: &str, aor: Option<&str>, contacts: usize, start: Instant) {
    RUN.with(|run| {
        let mut run = run.borrow_mut();
        let read = run.replay.read.take_if(|read| aor == Some(read.0.as_str()));
        let (start, source) = match read.map(|read| read.1) {
            Some(read_start) => (read_start, "redis"),
            None => (start, "memory"),
        };
        run.lookups.push(LookupRecord {
            aor: aor.unwrap_or(uri).to_string(),
            contacts,
            source,
            start,
            end: Instant::now(),
        });
    });
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
        begin(true, None, false);
        record_authentication("alice");
        assert!(want_fetch("sip:bob@example.com"));
        let (aor, replay) = finish().fetch.expect("the run asked for a read");
        assert_eq!(aor, "sip:bob@example.com");
        begin(true, Some(replay), false);
        assert!(
            !want_fetch("sip:bob@example.com"),
            "a second run never waits"
        );
        assert_eq!(replayed_authentication().as_deref(), Some("alice"));
        assert_eq!(replayed_authentication(), None, "then checks for real");
        assert!(finish().fetch.is_none());
        // Nothing outlives a run.
        assert!(!want_fetch("sip:carol@example.com"));
        assert!(finish().fetch.is_none());
    }

    #[test]
    fn a_traced_run_records_its_lookups_and_the_redis_read_before_them() {
        let read = Instant::now();
        begin(false, None, true);
        record_lookup(
            "sip:bob@example.com",
            Some("sip:bob@example.com"),
            2,
            Instant::now(),
        );
        let lookups = finish().lookups;
        assert_eq!(lookups.len(), 1);
        assert_eq!((lookups[0].contacts, lookups[0].source), (2, "memory"));
        let mut replay = Replay::default();
        replay.read_started("sip:bob@example.com", read);
        begin(false, Some(replay), true);
        record_lookup(
            "sip:carol@example.com",
            Some("sip:carol@example.com"),
            0,
            Instant::now(),
        );
        record_lookup(
            "Bob <sip:bob@example.com>",
            Some("sip:bob@example.com"),
            1,
            Instant::now(),
        );
        let lookups = finish().lookups;
        assert_eq!(lookups[0].source, "memory", "carol's were in memory");
        assert_eq!(lookups[1].source, "redis", "bob's were read");
        assert_eq!(lookups[1].start, read, "its span begins with the read");
        assert_eq!(lookups[1].aor, "sip:bob@example.com");
    }
}
