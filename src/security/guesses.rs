//! Failed digest authentications counted per source and per user, so a
//! password guesser is stopped whatever it varies: past `max_failures`
//! within `window` a source is to be banned (at the edge) and a user is
//! locked (answered 403) for one window. Pure: the caller passes `now`
//! (unix seconds) and acts on the verdict.

use std::collections::HashMap;
use std::net::IpAddr;

use super::edge::source_network;
use super::Cidr;

/// Entries each table holds at most (sources, users, locks): usernames
/// come from strangers, so the tables are bounded like every other.
const MAX_ENTRIES: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Window {
    count: u32,
    since: u64,
}

/// What one failure led to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FailureVerdict {
    /// The source reached the limit now: ban it.
    pub ban_source: bool,
    /// The user reached the limit now: it is locked from here.
    pub user_locked: bool,
    /// Failures the source has in the window.
    pub source_failures: u32,
}

#[derive(Debug)]
pub struct AuthFailures {
    max_failures: u32,
    window: u64,
    by_source: HashMap<Cidr, Window>,
    by_user: HashMap<String, Window>,
    /// Locked users, until when.
    locked: HashMap<String, u64>,
}

impl AuthFailures {
    pub fn new(max_failures: u32, window_secs: u64) -> Self {
        AuthFailures {
            max_failures: max_failures.max(1),
            window: window_secs.max(1),
            by_source: HashMap::new(),
            by_user: HashMap::new(),
            locked: HashMap::new(),
        }
    }

    /// A reload's limits; the failures counted and the locks stay (a
    /// guesser gets no fresh budget from it).
    pub fn set_limits(&mut self, max_failures: u32, window_secs: u64) {
        self.max_failures = max_failures.max(1);
        self.window = window_secs.max(1);
    }

    /// Counts one failed check of `user` from `source`. Only a failure on
    /// a nonce we issued counts against the user (`against_user`): its
    /// sender received our challenge, so it cannot be a forged datagram
    /// sent to lock somebody out.
    pub fn record(
        &mut self,
        now: u64,
        source: IpAddr,
        user: &str,
        against_user: bool,
    ) -> FailureVerdict {
        if self.by_source.len() >= MAX_ENTRIES
            || self.by_user.len() >= MAX_ENTRIES
            || self.locked.len() >= MAX_ENTRIES
        {
            self.sweep(now);
        }
        let (max, window) = (self.max_failures, self.window);
        let network = source_network(source);
        // A table still full of live entries counts only those it holds.
        let source_failures =
            match self.by_source.len() < MAX_ENTRIES || self.by_source.contains_key(&network) {
                true => bump(&mut self.by_source, network, now, window),
                false => 0,
            };
        let countable = self.by_user.len() < MAX_ENTRIES || self.by_user.contains_key(user);
        let user_failures = match against_user && countable {
            true => bump(&mut self.by_user, user.to_string(), now, window),
            false => 0,
        };
        let user_locked = user_failures == max && self.locked.len() < MAX_ENTRIES;
        if user_locked {
            self.locked.insert(user.to_string(), now + window);
        }
        FailureVerdict {
            ban_source: source_failures == max,
            user_locked,
            source_failures,
        }
    }

    /// True while `user` is locked.
    pub fn is_locked(&self, now: u64, user: &str) -> bool {
        self.locked.get(user).is_some_and(|until| *until > now)
    }

    /// Forgets windows and locks that are over.
    pub fn sweep(&mut self, now: u64) {
        let window = self.window;
        self.by_source
            .retain(|_, w| now.saturating_sub(w.since) < window);
        self.by_user
            .retain(|_, w| now.saturating_sub(w.since) < window);
        self.locked.retain(|_, until| *until > now);
    }
}

/// Adds one to `key`'s window (a fresh one when the last is over); the
/// count after it.
fn bump<K: std::hash::Hash + Eq>(
    table: &mut HashMap<K, Window>,
    key: K,
    now: u64,
    window: u64,
) -> u32 {
    let entry = table.entry(key).or_insert(Window {
        count: 0,
        since: now,
    });
    if now.saturating_sub(entry.since) >= window {
        *entry = Window {
            count: 0,
            since: now,
        };
    }
    entry.count += 1;
    entry.count
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn one_source_guessing_one_password_is_banned_at_the_limit_and_the_user_locked() {
        let mut failures = AuthFailures::new(10, 60);
        let guesser = ip("198.51.100.9");
        let verdicts: Vec<_> = (0..12)
            .map(|_| failures.record(100, guesser, "alice", true))
            .collect();
        assert!(verdicts[..9]
            .iter()
            .all(|v| !v.ban_source && !v.user_locked));
        assert!(
            verdicts[9].ban_source && verdicts[9].user_locked,
            "the 10th"
        );
        assert!(!verdicts[10].ban_source, "banned once, not again and again");
        assert!(failures.is_locked(100, "alice"));
        assert!(failures.is_locked(159, "alice"));
        assert!(!failures.is_locked(160, "alice"), "for one window");
        assert!(!failures.is_locked(100, "bob"));
    }

    #[test]
    fn one_source_guessing_many_users_is_banned_and_no_user_is_locked() {
        let mut failures = AuthFailures::new(10, 60);
        let mut banned_at = None;
        for n in 0..20u32 {
            // Another address of its /64 each time.
            let source = ip(&format!("2001:db8:5:6::{:x}", n + 1));
            let verdict = failures.record(200, source, &format!("user{n}"), true);
            assert!(!verdict.user_locked);
            if verdict.ban_source {
                banned_at.get_or_insert(n + 1);
            }
        }
        assert_eq!(banned_at, Some(10));
    }

    #[test]
    fn failures_on_nonces_we_did_not_issue_never_lock_the_user() {
        let mut failures = AuthFailures::new(3, 60);
        for n in 0..10u8 {
            let forged = IpAddr::from([203, 0, 113, n]);
            assert!(!failures.record(5, forged, "alice", false).user_locked);
        }
        assert!(!failures.is_locked(5, "alice"));
    }

    #[test]
    fn failures_spread_over_more_than_a_window_never_add_up() {
        let mut failures = AuthFailures::new(3, 60);
        let phone = ip("192.0.2.5");
        for minute in 0..10u64 {
            let v = failures.record(minute * 60, phone, "carol", true);
            assert!(!v.ban_source && !v.user_locked, "minute {minute}");
        }
    }

    #[test]
    fn the_tables_stay_bounded_under_made_up_users() {
        let mut failures = AuthFailures::new(5, 60);
        for n in 0..(MAX_ENTRIES as u32 + 1000) {
            let source = IpAddr::from((0xC633_0000u32 + n).to_be_bytes());
            failures.record(10, source, &format!("u{n}"), true);
        }
        assert!(failures.by_source.len() <= MAX_ENTRIES);
        assert!(failures.by_user.len() <= MAX_ENTRIES);
        failures.sweep(100);
        assert!(failures.by_source.is_empty() && failures.by_user.is_empty());
    }
}
