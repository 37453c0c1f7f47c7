//! SIP digest authentication (RFC 3261 §22, RFC 7616 qop=auth, RFC 8760
//! SHA-256 beside MD5), with stateless nonces.
//!
//! A nonce is `<issued unix secs, hex>.<HMAC-SHA-256 of it under a
//! per-process key>`, so any nonce we issued can be checked without a
//! table, and one past `nonce_ttl` is answered with `stale=true`. The one
//! table kept is the highest nonce-count seen per live nonce, so a captured
//! request cannot be replayed; it is bounded and forgets expired nonces. A
//! nonce answered without qop (RFC 2069 style) is good once.
//!
//! An unknown user and a wrong password get the same fresh challenge, after
//! the same work, so users cannot be told apart from outside.

use std::collections::HashMap;
use std::fmt::Write as _;

use hmac::{KeyInit, Mac};
use md5::Md5;
use sha2::{Digest, Sha256};

/// Live nonces whose counts are remembered at most.
const MAX_TRACKED_NONCES: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Md5,
    Sha256,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        if name.eq_ignore_ascii_case("MD5") {
            Some(Algorithm::Md5)
        } else if name.eq_ignore_ascii_case("SHA-256") {
            Some(Algorithm::Sha256)
        } else {
            None
        }
    }

    fn hash(self, text: &str) -> String {
        match self {
            Algorithm::Md5 => hex(&Md5::digest(text.as_bytes())),
            Algorithm::Sha256 => hex(&Sha256::digest(text.as_bytes())),
        }
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// What we know of one user: the password, or only its HA1 for one
/// algorithm (`ha1-md5:<hex>` / `ha1-sha256:<hex>` in the config).
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    Password(String),
    Ha1 { algorithm: Algorithm, hex: String },
}

// Passwords never reach a log line, not even through `{:?}`.
impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::Password(_) => f.write_str("Password(<hidden>)"),
            Secret::Ha1 { algorithm, .. } => write!(f, "Ha1({}, <hidden>)", algorithm.name()),
        }
    }
}

impl Secret {
    /// Reads a config value: a password, or `ha1-md5:` / `ha1-sha256:` and
    /// the HA1 in hex.
    pub fn parse(value: &str) -> Result<Secret, String> {
        for (prefix, algorithm, len) in [
            ("ha1-md5:", Algorithm::Md5, 32),
            ("ha1-sha256:", Algorithm::Sha256, 64),
        ] {
            if let Some(hex) = value.strip_prefix(prefix) {
                if hex.len() != len || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(format!(
                        "{prefix} must be followed by {len} hex digits (the HA1)"
                    ));
                }
                return Ok(Secret::Ha1 {
                    algorithm,
                    hex: hex.to_ascii_lowercase(),
                });
            }
        }
        if value.is_empty() {
            return Err("the password is empty".into());
        }
        Ok(Secret::Password(value.to_string()))
    }

    /// H(user:realm:password) for `algorithm`, when this secret allows it.
    fn ha1(&self, algorithm: Algorithm, user: &str, realm: &str) -> Option<String> {
        match self {
            Secret::Password(password) => {
                Some(algorithm.hash(&format!("{user}:{realm}:{password}")))
            }
            Secret::Ha1 { algorithm: a, hex } if *a == algorithm => Some(hex.clone()),
            Secret::Ha1 { .. } => None,
        }
    }
}

/// The Authorization / Proxy-Authorization parameters we use.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    pub algorithm: Option<String>,
    pub cnonce: Option<String>,
    pub qop: Option<String>,
    pub nc: Option<String>,
}

impl Credentials {
    /// Parses `Digest k=v, k="v", ...`; None when it is not a digest
    /// header or lacks a required parameter.
    pub fn parse(value: &str) -> Option<Credentials> {
        let value = value.trim_start();
        let scheme_end = value.find(|c: char| c.is_ascii_whitespace())?;
        if !value[..scheme_end].eq_ignore_ascii_case("Digest") {
            return None;
        }
        let mut creds = Credentials::default();
        for (name, value) in params(&value[scheme_end..]) {
            let slot = match name.to_ascii_lowercase().as_str() {
                "username" => &mut creds.username,
                "realm" => &mut creds.realm,
                "nonce" => &mut creds.nonce,
                "uri" => &mut creds.uri,
                "response" => &mut creds.response,
                "algorithm" => creds.algorithm.insert(String::new()),
                "cnonce" => creds.cnonce.insert(String::new()),
                "qop" => creds.qop.insert(String::new()),
                "nc" => creds.nc.insert(String::new()),
                _ => continue,
            };
            *slot = value;
        }
        let complete = !creds.username.is_empty()
            && !creds.nonce.is_empty()
            && !creds.uri.is_empty()
            && !creds.response.is_empty();
        complete.then_some(creds)
    }
}

/// `name=value` pairs of a comma-separated list, quoted values unescaped.
fn params(mut text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    loop {
        text = text.trim_start_matches(|c: char| c == ',' || c.is_ascii_whitespace());
        let Some(eq) = text.find('=') else {
            return out;
        };
        let name = text[..eq].trim().to_string();
        text = text[eq + 1..].trim_start();
        let value;
        if let Some(quoted) = text.strip_prefix('"') {
            let mut unescaped = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, next)) = chars.next() {
                            unescaped.push(next);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => unescaped.push(c),
                }
            }
            value = unescaped;
            text = &quoted[end.min(quoted.len())..];
        } else {
            let end = text.find(',').unwrap_or(text.len());
            value = text[..end].trim().to_string();
            text = &text[end..];
        }
        out.push((name, value));
    }
}

/// How a check came out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Valid credentials for this user.
    Authenticated(String),
    /// Challenge (again): no credentials for our realm, credentials that
    /// cannot be checked, or, with `stale`, a right answer to a nonce that
    /// is too old or not ours (RFC 7616 §3.3: retry at once).
    Challenge { stale: bool },
    /// A wrong answer (or an unknown user): challenged like any other, and
    /// counted by the caller against the source and, when the nonce was
    /// ours (`issued`: whoever answered it received our challenge, so its
    /// source is not forged), against the user.
    Failed { user: String, issued: bool },
}

/// Wrong answers after which a nonce is retired: a guesser must come back
/// for a fresh one each few guesses.
const NONCE_FAILURES: u8 = 3;

/// The digest checker: realm, users, the nonce key and the nonce counts.
pub struct DigestAuth {
    realm: String,
    users: HashMap<String, Secret>,
    nonce_ttl_secs: u64,
    key: [u8; 32],
    /// Highest nonce-count accepted per live nonce (u32::MAX: used up).
    counts: HashMap<String, u32>,
    /// Offered in this order (RFC 8760 §2.4: most preferred first), and
    /// the only ones accepted.
    algorithms: Vec<Algorithm>,
    /// Makes every nonce unique, also within one second.
    issued: u64,
    /// Wrong answers per live nonce (bounded like `counts`).
    failures: HashMap<String, u8>,
    /// After a reload raised the nonce lifetime: the lowest lifetime before
    /// it, and when it was raised. Nonces issued before then keep it, for
    /// the counts of those past it may be forgotten already (a replay).
    raised_ttl: Option<(u64, u64)>,
}

impl DigestAuth {
    pub fn new(
        realm: String,
        users: HashMap<String, Secret>,
        nonce_ttl_secs: u64,
        key: [u8; 32],
    ) -> Self {
        DigestAuth {
            realm,
            users,
            nonce_ttl_secs,
            key,
            counts: HashMap::new(),
            algorithms: vec![Algorithm::Sha256, Algorithm::Md5],
            issued: 0,
            failures: HashMap::new(),
            raised_ttl: None,
        }
    }

    /// Offers (and accepts) only ALGORITHMS, in this order.
    pub fn with_algorithms(mut self, algorithms: Vec<Algorithm>) -> Self {
        if !algorithms.is_empty() {
            self.algorithms = algorithms;
        }
        self
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// A reload at `now`: realm, nonce lifetime, nonce key (None keeps the
    /// running one), algorithms and users. A nonce of another realm or key
    /// no longer checks (its client is challenged again, stale); the counts
    /// of live nonces are kept, so that a change undone cannot replay them.
    pub fn reconfigure(
        &mut self,
        now: u64,
        (realm, nonce_ttl_secs): (String, u64),
        key: Option<[u8; 32]>,
        algorithms: Vec<Algorithm>,
        users: HashMap<String, Secret>,
    ) {
        if nonce_ttl_secs > self.nonce_ttl_secs {
            let lowest = self
                .raised_ttl
                .map_or(self.nonce_ttl_secs, |(old, _)| old.min(self.nonce_ttl_secs));
            self.raised_ttl = Some((lowest, now));
        }
        self.realm = realm;
        self.nonce_ttl_secs = nonce_ttl_secs;
        if let Some(key) = key {
            self.key = key;
        }
        if !algorithms.is_empty() {
            self.algorithms = algorithms;
        }
        self.users = users;
    }

    /// How long a nonce issued at `issued` lives.
    fn ttl_for(&self, issued: u64) -> u64 {
        match self.raised_ttl {
            Some((before, raised)) if issued < raised => before.min(self.nonce_ttl_secs),
            _ => self.nonce_ttl_secs,
        }
    }

    /// Replaces the users (a credentials file reloaded); nonces stay good.
    pub fn set_users(&mut self, users: HashMap<String, Secret>) {
        self.users = users;
    }

    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// A nonce issued at `now` (unix seconds): the time, a serial number
    /// (two clients never share a nonce, nor its counts), and their MAC.
    pub fn nonce(&mut self, now: u64) -> String {
        self.issued += 1;
        let issued = format!("{now:x}-{:x}", self.issued);
        let tag = self.tag(&issued);
        format!("{issued}.{tag}")
    }

    fn tag(&self, issued: &str) -> String {
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&self.key)
            .expect("HMAC takes a key of any length");
        mac.update(issued.as_bytes());
        mac.update(self.realm.as_bytes());
        hex(&mac.finalize().into_bytes()[..16])
    }

    /// When a nonce we issued was issued; None for one we did not.
    fn issued_at(&self, nonce: &str) -> Option<u64> {
        let (issued, tag) = nonce.split_once('.')?;
        if !constant_time_eq(tag.as_bytes(), self.tag(issued).as_bytes()) {
            return None;
        }
        let time = issued.split('-').next()?;
        u64::from_str_radix(time, 16).ok()
    }

    /// The challenge header values (one per algorithm, in the offered
    /// order) for a fresh nonce issued at `now`.
    pub fn challenges(&mut self, now: u64, stale: bool) -> Vec<String> {
        let nonce = self.nonce(now);
        let stale = if stale { ", stale=true" } else { "" };
        self.algorithms
            .iter()
            .map(|algorithm| {
                format!(
                    "Digest realm=\"{}\", nonce=\"{nonce}\", algorithm={}, qop=\"auth\"{stale}",
                    self.realm,
                    algorithm.name()
                )
            })
            .collect()
    }

    /// Checks one request's credentials: `method` and the headers'
    /// values (Authorization or Proxy-Authorization, all of them). Only
    /// values for our realm count.
    pub fn check<'a>(
        &mut self,
        now: u64,
        method: &str,
        request_uri: &str,
        headers: impl IntoIterator<Item = &'a str>,
    ) -> Outcome {
        let Some(creds) = headers
            .into_iter()
            .filter_map(Credentials::parse)
            .find(|c| c.realm == self.realm)
        else {
            return Outcome::Challenge { stale: false };
        };
        // A nonce not ours (another node's without a shared
        // `nonce_secret`, or made up) is still checked: a right answer to
        // it is only stale.
        let issued = self.issued_at(&creds.nonce);
        if self
            .failures
            .get(&creds.nonce)
            .is_some_and(|n| *n >= NONCE_FAILURES)
        {
            return Outcome::Challenge { stale: false };
        }
        let algorithm = match creds.algorithm.as_deref() {
            None => Algorithm::Md5,
            Some(name) => match Algorithm::from_name(name) {
                Some(algorithm) => algorithm,
                None => return Outcome::Challenge { stale: false },
            },
        };
        if !self.algorithms.contains(&algorithm) {
            return Outcome::Challenge { stale: false };
        }
        // The digest is bound to its request: its uri must be this one's.
        if !creds.uri.eq_ignore_ascii_case(request_uri) {
            return Outcome::Challenge { stale: false };
        }
        // Unknown users are checked against a secret nobody has, so both
        // failures cost the same and look the same.
        let ha1 = self
            .users
            .get(&creds.username)
            .and_then(|secret| secret.ha1(algorithm, &creds.username, &self.realm));
        let valid_user = ha1.is_some();
        let ha1 =
            ha1.unwrap_or_else(|| algorithm.hash(&format!("{}:{}:", creds.username, self.key[0])));
        let ha2 = algorithm.hash(&format!("{method}:{}", creds.uri));
        let count = match creds.qop.as_deref() {
            Some(qop) if qop.eq_ignore_ascii_case("auth") => {
                let (Some(nc), Some(cnonce)) = (&creds.nc, &creds.cnonce) else {
                    return Outcome::Challenge { stale: false };
                };
                let Ok(count) = u32::from_str_radix(nc, 16) else {
                    return Outcome::Challenge { stale: false };
                };
                let expected =
                    algorithm.hash(&format!("{ha1}:{}:{nc}:{cnonce}:auth:{ha2}", creds.nonce));
                if !constant_time_eq(
                    expected.as_bytes(),
                    creds.response.to_ascii_lowercase().as_bytes(),
                ) {
                    return self.failed(now, creds);
                }
                count
            }
            Some(_) => return Outcome::Challenge { stale: false },
            None => {
                let expected = algorithm.hash(&format!("{ha1}:{}:{ha2}", creds.nonce));
                if !constant_time_eq(
                    expected.as_bytes(),
                    creds.response.to_ascii_lowercase().as_bytes(),
                ) {
                    return self.failed(now, creds);
                }
                u32::MAX
            }
        };
        if !valid_user {
            return self.failed(now, creds);
        }
        // Right password, old or foreign nonce: the client may retry at
        // once with a fresh one (§22.1, RFC 7616 §3.3).
        let Some(issued) = issued else {
            return Outcome::Challenge { stale: true };
        };
        if now.saturating_sub(issued) > self.ttl_for(issued) || issued > now + 60 {
            return Outcome::Challenge { stale: true };
        }
        if !self.count_once(now, &creds.nonce, count) {
            return Outcome::Challenge { stale: false };
        }
        Outcome::Authenticated(creds.username)
    }

    /// A wrong answer: counted against its nonce (one of ours), which is
    /// retired after [`NONCE_FAILURES`].
    fn failed(&mut self, now: u64, creds: Credentials) -> Outcome {
        let issued = self.issued_at(&creds.nonce).is_some();
        if issued {
            if self.failures.len() >= MAX_TRACKED_NONCES
                && !self.failures.contains_key(&creds.nonce)
            {
                self.forget_expired(now);
            }
            if self.failures.len() < MAX_TRACKED_NONCES || self.failures.contains_key(&creds.nonce)
            {
                *self.failures.entry(creds.nonce).or_insert(0) += 1;
            }
        }
        Outcome::Failed {
            user: creds.username,
            issued,
        }
    }

    /// Records `count` for `nonce`; false when it is not above the last one.
    fn count_once(&mut self, now: u64, nonce: &str, count: u32) -> bool {
        if let Some(last) = self.counts.get_mut(nonce) {
            if count <= *last || *last == u32::MAX {
                return false;
            }
            *last = count;
            return true;
        }
        if self.counts.len() >= MAX_TRACKED_NONCES {
            self.forget_expired(now);
            if self.counts.len() >= MAX_TRACKED_NONCES {
                // Full of live nonces: refuse rather than forget a count.
                return false;
            }
        }
        self.counts.insert(nonce.to_string(), count);
        true
    }

    /// Drops the counts of nonces that have expired anyway.
    pub fn forget_expired(&mut self, now: u64) {
        let live = |auth: &Self, nonce: &str| {
            auth.issued_at(nonce)
                .is_some_and(|issued| now.saturating_sub(issued) <= auth.ttl_for(issued))
        };
        let counts = std::mem::take(&mut self.counts);
        self.counts = counts
            .into_iter()
            .filter(|(nonce, _)| live(self, nonce))
            .collect();
        let failures = std::mem::take(&mut self.failures);
        self.failures = failures
            .into_iter()
            .filter(|(nonce, _)| live(self, nonce))
            .collect();
    }

    pub fn tracked_nonces(&self) -> usize {
        self.counts.len()
    }
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;
    const URI: &str = "sip:example.com";

    fn auth() -> DigestAuth {
        let mut users = HashMap::new();
        users.insert("alice".to_string(), Secret::parse("s3cret").unwrap());
        users.insert(
            "bob".to_string(),
            // MD5("bob:example.com:hunter2")
            Secret::parse(&format!(
                "ha1-md5:{}",
                Algorithm::Md5.hash("bob:example.com:hunter2")
            ))
            .unwrap(),
        );
        DigestAuth::new("example.com".into(), users, 300, [7; 32])
    }

    /// What a UA computes for a challenge (RFC 7616 §3.4.1, qop=auth).
    fn answer(
        algorithm: Algorithm,
        user: &str,
        password: &str,
        nonce: &str,
        nc: u32,
        method: &str,
    ) -> String {
        let ha1 = algorithm.hash(&format!("{user}:example.com:{password}"));
        let ha2 = algorithm.hash(&format!("{method}:{URI}"));
        let nc = format!("{nc:08x}");
        let response = algorithm.hash(&format!("{ha1}:{nonce}:{nc}:abcdef:auth:{ha2}"));
        format!(
            "Digest username=\"{user}\", realm=\"example.com\", nonce=\"{nonce}\", uri=\"{URI}\", response=\"{response}\", algorithm={}, cnonce=\"abcdef\", qop=auth, nc={nc}",
            algorithm.name()
        )
    }

    fn nonce_of(challenge: &str) -> String {
        let start = challenge.find("nonce=\"").unwrap() + 7;
        let end = challenge[start..].find('"').unwrap();
        challenge[start..start + end].to_string()
    }

    fn check(a: &mut DigestAuth, header: &str) -> Outcome {
        a.check(NOW + 1, "REGISTER", URI, [header])
    }

    #[test]
    fn the_challenge_offers_sha256_then_md5_with_qop_auth() {
        let mut a = auth();
        let challenges = a.challenges(NOW, false);
        assert_eq!(challenges.len(), 2);
        assert!(
            challenges[0].contains("algorithm=SHA-256"),
            "{challenges:?}"
        );
        assert!(challenges[1].contains("algorithm=MD5"));
        assert!(challenges.iter().all(|c| c.contains("qop=\"auth\"")
            && c.contains("realm=\"example.com\"")
            && !c.contains("stale")));
        assert!(a.challenges(NOW, true)[0].ends_with(", stale=true"));
    }

    #[test]
    fn a_reload_keeps_nonces_of_the_same_key_and_realm_and_retires_a_new_keys() {
        let mut a = auth();
        let users = a.users.clone();
        let realm = || ("example.com".to_string(), 300);
        let nonce = a.nonce(NOW);
        a.reconfigure(NOW, realm(), None, vec![Algorithm::Md5], users.clone());
        assert!(a.challenges(NOW, false).iter().all(|c| c.contains("MD5")));
        let header = answer(Algorithm::Md5, "alice", "s3cret", &nonce, 1, "REGISTER");
        assert_eq!(
            check(&mut a, &header),
            Outcome::Authenticated("alice".into())
        );
        // Another nonce key: the old nonce is not ours any more ...
        a.reconfigure(NOW, realm(), Some([8; 32]), Vec::new(), users.clone());
        let header = answer(Algorithm::Md5, "alice", "s3cret", &nonce, 2, "REGISTER");
        assert_eq!(check(&mut a, &header), Outcome::Challenge { stale: true });
        let fresh = a.nonce(NOW);
        let header = answer(Algorithm::Md5, "alice", "s3cret", &fresh, 1, "REGISTER");
        assert_eq!(
            check(&mut a, &header),
            Outcome::Authenticated("alice".into())
        );
        // ... and back to the first key, its count is still known: no replay.
        a.reconfigure(NOW, realm(), Some([7; 32]), Vec::new(), users);
        let replay = answer(Algorithm::Md5, "alice", "s3cret", &nonce, 1, "REGISTER");
        assert_eq!(check(&mut a, &replay), Outcome::Challenge { stale: false });
    }

    #[test]
    fn a_longer_nonce_lifetime_does_not_bring_back_nonces_already_expired() {
        let mut a = auth();
        let users = a.users.clone();
        let old = a.nonce(NOW - 400);
        a.forget_expired(NOW);
        a.reconfigure(NOW, ("example.com".into(), 3600), None, Vec::new(), users);
        let header = answer(Algorithm::Md5, "alice", "s3cret", &old, 1, "REGISTER");
        assert_eq!(check(&mut a, &header), Outcome::Challenge { stale: true });
        // A nonce issued since lives the new lifetime.
        let new = a.nonce(NOW + 1);
        let later = NOW + 1000;
        let header = answer(Algorithm::Md5, "alice", "s3cret", &new, 1, "REGISTER");
        assert_eq!(
            a.check(later, "REGISTER", URI, [header.as_str()]),
            Outcome::Authenticated("alice".into())
        );
    }

    #[test]
    fn md5_and_sha256_answers_authenticate() {
        for algorithm in [Algorithm::Md5, Algorithm::Sha256] {
            let mut a = auth();
            let nonce = nonce_of(&a.challenges(NOW, false)[0]);
            let header = answer(algorithm, "alice", "s3cret", &nonce, 1, "REGISTER");
            assert_eq!(
                check(&mut a, &header),
                Outcome::Authenticated("alice".into()),
                "{algorithm:?}"
            );
        }
    }

    #[test]
    fn an_ha1_secret_works_for_its_algorithm_only() {
        let mut a = auth();
        let nonce = a.nonce(NOW);
        let md5 = answer(Algorithm::Md5, "bob", "hunter2", &nonce, 1, "REGISTER");
        assert_eq!(check(&mut a, &md5), Outcome::Authenticated("bob".into()));
        let sha = answer(Algorithm::Sha256, "bob", "hunter2", &nonce, 2, "REGISTER");
        assert_eq!(
            check(&mut a, &sha),
            Outcome::Failed {
                user: "bob".into(),
                issued: true
            }
        );
    }

    #[test]
    fn a_wrong_password_and_an_unknown_user_get_the_same_answer() {
        let mut a = auth();
        let nonce = a.nonce(NOW);
        let wrong = answer(Algorithm::Md5, "alice", "guess", &nonce, 1, "REGISTER");
        let unknown = answer(Algorithm::Md5, "mallory", "guess", &nonce, 1, "REGISTER");
        // Both are failures to count, and both get a fresh challenge.
        assert_eq!(
            check(&mut a, &wrong),
            Outcome::Failed {
                user: "alice".into(),
                issued: true,
            }
        );
        assert_eq!(
            check(&mut a, &unknown),
            Outcome::Failed {
                user: "mallory".into(),
                issued: true,
            }
        );
    }

    #[test]
    fn a_nonce_that_failed_a_few_times_is_retired() {
        let mut a = auth();
        let nonce = a.nonce(NOW);
        for n in 1..=u32::from(NONCE_FAILURES) {
            let wrong = answer(
                Algorithm::Md5,
                "alice",
                &format!("guess{n}"),
                &nonce,
                n,
                "REGISTER",
            );
            assert_eq!(
                check(&mut a, &wrong),
                Outcome::Failed {
                    user: "alice".into(),
                    issued: true,
                }
            );
        }
        // Even the right password is no good on it now: a fresh nonce.
        let right = answer(Algorithm::Md5, "alice", "s3cret", &nonce, 9, "REGISTER");
        assert_eq!(check(&mut a, &right), Outcome::Challenge { stale: false });
        let fresh = a.nonce(NOW);
        let right = answer(Algorithm::Md5, "alice", "s3cret", &fresh, 1, "REGISTER");
        assert!(matches!(check(&mut a, &right), Outcome::Authenticated(_)));
    }

    #[test]
    fn a_replayed_nonce_count_is_refused_and_a_higher_one_accepted() {
        let mut a = auth();
        let nonce = a.nonce(NOW);
        let first = answer(Algorithm::Sha256, "alice", "s3cret", &nonce, 1, "REGISTER");
        assert!(matches!(check(&mut a, &first), Outcome::Authenticated(_)));
        assert_eq!(check(&mut a, &first), Outcome::Challenge { stale: false });
        let second = answer(Algorithm::Sha256, "alice", "s3cret", &nonce, 2, "REGISTER");
        assert!(matches!(check(&mut a, &second), Outcome::Authenticated(_)));
        assert_eq!(check(&mut a, &first), Outcome::Challenge { stale: false });
    }

    #[test]
    fn an_expired_nonce_with_the_right_password_is_stale() {
        let mut a = auth();
        let nonce = a.nonce(NOW - 301);
        let header = answer(Algorithm::Md5, "alice", "s3cret", &nonce, 1, "REGISTER");
        assert_eq!(check(&mut a, &header), Outcome::Challenge { stale: true });
        // With a wrong password it is not stale: stale=true means "only the nonce".
        let wrong = answer(Algorithm::Md5, "alice", "nope", &nonce, 1, "REGISTER");
        assert_eq!(
            check(&mut a, &wrong),
            Outcome::Failed {
                user: "alice".into(),
                issued: true,
            }
        );
    }

    #[test]
    fn a_forged_nonce_a_foreign_realm_or_another_method_fails() {
        let mut a = auth();
        // The right password on a nonce that is not ours is only stale
        // (RFC 7616 §3.3); a wrong one on it is a failure.
        let forged = format!("{NOW:x}.00000000000000000000000000000000");
        let header = answer(Algorithm::Md5, "alice", "s3cret", &forged, 1, "REGISTER");
        assert_eq!(check(&mut a, &header), Outcome::Challenge { stale: true });
        let header = answer(Algorithm::Md5, "alice", "guess", &forged, 1, "REGISTER");
        assert_eq!(
            check(&mut a, &header),
            Outcome::Failed {
                user: "alice".into(),
                issued: false,
            }
        );
        // A nonce from another process (another key) is not ours either,
        // unless both share a nonce_secret.
        let mut other = DigestAuth::new("example.com".into(), HashMap::new(), 300, [9; 32]);
        let header = answer(
            Algorithm::Md5,
            "alice",
            "s3cret",
            &other.nonce(NOW),
            1,
            "REGISTER",
        );
        assert_eq!(check(&mut a, &header), Outcome::Challenge { stale: true });
        let mut twin = DigestAuth::new("example.com".into(), HashMap::new(), 300, a.key);
        let header = answer(
            Algorithm::Md5,
            "alice",
            "s3cret",
            &twin.nonce(NOW),
            1,
            "REGISTER",
        );
        assert!(matches!(check(&mut a, &header), Outcome::Authenticated(_)));
        // Computed for INVITE, sent with REGISTER.
        let nonce = a.nonce(NOW);
        let header = answer(Algorithm::Md5, "alice", "s3cret", &nonce, 1, "INVITE");
        assert_eq!(
            check(&mut a, &header),
            Outcome::Failed {
                user: "alice".into(),
                issued: true,
            }
        );
        let foreign = answer(Algorithm::Md5, "alice", "s3cret", &nonce, 1, "REGISTER")
            .replace("realm=\"example.com\"", "realm=\"evil.example\"");
        assert_eq!(check(&mut a, &foreign), Outcome::Challenge { stale: false });
    }

    #[test]
    fn without_qop_a_nonce_is_good_once() {
        let mut a = auth();
        let nonce = a.nonce(NOW);
        let ha1 = Algorithm::Md5.hash("alice:example.com:s3cret");
        let ha2 = Algorithm::Md5.hash(&format!("REGISTER:{URI}"));
        let response = Algorithm::Md5.hash(&format!("{ha1}:{nonce}:{ha2}"));
        let header = format!(
            "Digest username=\"alice\",realm=\"example.com\",nonce=\"{nonce}\",uri=\"{URI}\",response=\"{response}\""
        );
        assert!(matches!(check(&mut a, &header), Outcome::Authenticated(_)));
        assert_eq!(check(&mut a, &header), Outcome::Challenge { stale: false });
    }

    #[test]
    fn nonce_counts_are_forgotten_with_their_nonces() {
        let mut a = auth();
        for n in 0..50 {
            let nonce = a.nonce(NOW - n);
            let header = answer(Algorithm::Md5, "alice", "s3cret", &nonce, 1, "REGISTER");
            assert!(matches!(check(&mut a, &header), Outcome::Authenticated(_)));
        }
        assert_eq!(a.tracked_nonces(), 50);
        a.forget_expired(NOW + 400);
        assert_eq!(a.tracked_nonces(), 0);
    }

    #[test]
    fn nonces_are_unique_within_a_second_and_the_offer_follows_the_config() {
        let mut a = auth();
        assert_ne!(a.nonce(NOW), a.nonce(NOW));
        let mut md5_only = auth().with_algorithms(vec![Algorithm::Md5]);
        let offers = md5_only.challenges(NOW, false);
        assert_eq!(offers.len(), 1);
        assert!(offers[0].contains("algorithm=MD5"));
        let nonce = md5_only.nonce(NOW);
        let sha = answer(Algorithm::Sha256, "alice", "s3cret", &nonce, 1, "REGISTER");
        assert_eq!(
            check(&mut md5_only, &sha),
            Outcome::Challenge { stale: false }
        );
    }

    #[test]
    fn secrets_never_print() {
        let secret = Secret::parse("s3cret").unwrap();
        assert!(!format!("{secret:?}").contains("s3cret"));
        assert!(Secret::parse("ha1-md5:xyz").is_err());
        assert!(Secret::parse("").is_err());
    }

    #[test]
    fn header_parameters_parse_with_quotes_and_escapes() {
        let creds = Credentials::parse(
            "Digest username=\"al\\\"ice\", realm=\"example.com\",nonce=\"n\", uri=\"sip:a@b\", response=\"r\", qop=auth, nc=00000001, cnonce=\"c,d\"",
        )
        .unwrap();
        assert_eq!(creds.username, "al\"ice");
        assert_eq!(creds.cnonce.as_deref(), Some("c,d"));
        assert_eq!(creds.nc.as_deref(), Some("00000001"));
        assert!(Credentials::parse("Basic YWxpY2U6czNjcmV0").is_none());
        assert!(Credentials::parse("Digest username=\"alice\"").is_none());
    }
}
