//! A named gateway group: its destinations, their health, and the selector.
//!
//! This is everything the gateway-group actor needs to answer `Select`, as
//! plain synchronous code, and the [`GroupView`] it publishes for the hot
//! path. Selection filters the destinations that are up and match the
//! requested attrs into a reused buffer, then asks the selector.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::algorithm::{Algorithm, AnySelector, Selector};
use super::destination::{
    Availability, Destination, FailureReason, Health, PassivePolicy, Transition, PEER_HOLD,
};
use super::tiers::{RankFor, RankScratch, Tiers};

/// What a group's actor publishes for the hot path: the destinations, and
/// which of them may be chosen, as of the last change. Selection reads it
/// without a lock and ranks with a selector of its own thread, so the actor
/// stays the only writer of health and counters.
#[derive(Debug, Clone)]
pub struct GroupView {
    pub algorithm: Algorithm,
    /// `hash_bound`, for the selectors shards make.
    pub hash_bound: Option<f64>,
    /// The tiers and spill rule every ranking applies.
    pub tiers: std::sync::Arc<Tiers>,
    pub destinations: std::sync::Arc<[Destination]>,
    /// From when each destination may be chosen (see [`Health::up_from`]),
    /// so a hold that runs out needs no new view.
    up_from: Vec<Option<Instant>>,
    /// The same by this node's own verdict, when peers' reports keep some
    /// destination out: what is chosen from when they would leave nothing.
    own_up_from: Option<Vec<Option<Instant>>>,
    passive_failures: Vec<bool>,
}

impl GroupView {
    pub fn is_up(&self, index: usize, now: Instant) -> bool {
        self.up_from
            .get(index)
            .copied()
            .flatten()
            .is_some_and(|from| now >= from)
    }

    /// The destination had passive failures on record when published.
    pub fn has_passive_failures(&self, index: usize) -> bool {
        self.passive_failures.get(index).copied().unwrap_or(false)
    }

    /// The indexes that are up at `now` and match `attrs`, into `out`.
    /// When peers' reports (`gateway.share_health`) would leave none, those
    /// this node's own verdict finds up: a partial partition, where each LB
    /// reaches a different backend, must not turn every call away.
    pub fn fill_eligible(
        &self,
        attrs: Option<&BTreeMap<String, String>>,
        now: Instant,
        out: &mut Vec<usize>,
    ) {
        out.clear();
        let up = |from: &[Option<Instant>], index: usize| {
            from.get(index)
                .copied()
                .flatten()
                .is_some_and(|from| now >= from)
        };
        push_matching(&self.destinations, attrs, |i| up(&self.up_from, i), out);
        if let (true, Some(own)) = (out.is_empty(), &self.own_up_from) {
            push_matching(&self.destinations, attrs, |i| up(own, i), out);
        }
    }

    /// Index of the destination with this uri.
    pub fn find(&self, uri: &str) -> Option<usize> {
        self.destinations.iter().position(|d| d.uri == uri)
    }

    /// A selector for this group, in its initial state.
    pub fn new_selector(&self) -> AnySelector {
        let mut selector = AnySelector::for_group(self.algorithm, self.hash_bound);
        selector.prepare(&self.destinations);
        selector
    }

    /// The destinations up and matching the request's attrs, best first,
    /// by tier and capacity (see [`Tiers`]), into `out`.
    pub fn rank(
        &self,
        selector: &mut AnySelector,
        request: RankFor<'_>,
        (eligible, scratch): (&mut Vec<usize>, &mut RankScratch),
        out: &mut Vec<usize>,
    ) {
        self.fill_eligible(request.attrs, request.now, eligible);
        let destinations = &self.destinations[..];
        self.tiers
            .rank(selector, (destinations, eligible), request, scratch, out);
    }
}

/// The longest Retry-After hold honoured by default (`max_retry_after_secs`).
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// One gateway group.
/// The selectors of the attrs filters a group has been asked for.
type FilteredSelectors = Vec<(BTreeMap<String, String>, AnySelector)>;

#[derive(Debug, Clone)]
pub struct Group {
    name: String,
    algorithm: Algorithm,
    destinations: std::sync::Arc<[Destination]>,
    health: Vec<Health>,
    selector: AnySelector,
    /// A selector per attrs filter: rotating state shared between filters
    /// would skew each filter's shares (a request for `a` advancing the
    /// turn of one for `b`). Bounded; further filters share `selector`.
    filtered: FilteredSelectors,
    /// Scratch: indexes that are up and match the current request's attrs.
    eligible: Vec<usize>,
    /// Scratch: the last ranking, handed out by reference from [`Group::ranked`].
    ranking: Vec<usize>,
    scratch: RankScratch,
    tiers: std::sync::Arc<Tiers>,
    hash_bound: Option<f64>,
    passive: PassivePolicy,
    /// Retry-After holds longer than this are cut to it, so that one forged
    /// or mistaken header cannot hold a backend down for years.
    max_retry_after: Duration,
}

impl Group {
    /// A group whose destinations all start healthy, each with `failure_threshold`.
    pub fn new(
        name: impl Into<String>,
        algorithm: Algorithm,
        destinations: Vec<Destination>,
        failure_threshold: u32,
    ) -> Self {
        let health = destinations
            .iter()
            .map(|_| Health::new(failure_threshold))
            .collect();
        let mut selector = AnySelector::new(algorithm);
        selector.prepare(&destinations);
        let capacity = destinations.len();
        let destinations_for_tiers = destinations.clone();
        Group {
            name: name.into(),
            algorithm,
            destinations: destinations.into(),
            health,
            selector,
            filtered: Vec::new(),
            eligible: Vec::with_capacity(capacity),
            ranking: Vec::with_capacity(capacity),
            scratch: RankScratch::default(),
            tiers: std::sync::Arc::new(Tiers::new(&destinations_for_tiers, 1)),
            hash_bound: None,
            passive: PassivePolicy::default(),
            max_retry_after: DEFAULT_MAX_RETRY_AFTER,
        }
    }

    /// Sets how relay outcomes feed health, and the Retry-After cap.
    pub fn with_health_policy(mut self, passive: PassivePolicy, max_retry_after: Duration) -> Self {
        self.passive = passive;
        self.max_retry_after = max_retry_after;
        self
    }

    /// Sets the spill rule of its tiers and its `hash_bound`.
    pub fn with_capacity_policy(mut self, spill_threshold: u32, hash_bound: Option<f64>) -> Self {
        self.tiers = std::sync::Arc::new(Tiers::new(&self.destinations, spill_threshold));
        self.hash_bound = hash_bound;
        self.selector = AnySelector::for_group(self.algorithm, hash_bound);
        self.selector.prepare(&self.destinations);
        self.filtered.clear();
        self
    }

    /// Sets how many probe successes in a row bring a destination back.
    pub fn with_probe_policy(mut self, success_threshold: u32) -> Self {
        for health in &mut self.health {
            health.set_success_threshold(success_threshold);
        }
        self
    }

    pub fn passive_policy(&self) -> &PassivePolicy {
        &self.passive
    }

    /// The view of the group at `now`, for the hot path.
    pub fn view(&self, now: Instant) -> GroupView {
        GroupView {
            algorithm: self.algorithm,
            hash_bound: self.hash_bound,
            tiers: self.tiers.clone(),
            destinations: self.destinations.clone(),
            up_from: self.health.iter().map(|h| h.up_from(now)).collect(),
            own_up_from: self
                .health
                .iter()
                .any(|h| h.peers_reporting_down(now).next().is_some())
                .then(|| self.health.iter().map(|h| h.own_up_from(now)).collect()),
            passive_failures: self
                .health
                .iter()
                .map(|h| h.passive_failures() > 0)
                .collect(),
        }
    }

    /// Takes over the health and counters of every destination of
    /// `previous` whose uri is also here (a reload or a replaced group
    /// keeps what it learnt about the backends that remain).
    pub fn adopt_health(&mut self, previous: &Group) {
        for (destination, health) in self.destinations.iter().zip(self.health.iter_mut()) {
            let Some(index) = previous.find(&destination.uri) else {
                continue;
            };
            if let Some(old) = previous.health.get(index) {
                let (failures, successes) =
                    (health.failure_threshold(), health.success_threshold());
                *health = old.clone();
                health.set_failure_threshold(failures);
                health.set_success_threshold(successes);
            }
        }
        // Calls in progress, the pace and a drain go on with the uri.
        let mut destinations = self.destinations.to_vec();
        for destination in &mut destinations {
            if let Some(old) = previous.find(&destination.uri) {
                destination.adopt_capacity(&previous.destinations[old]);
            }
        }
        self.destinations = destinations.into();
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn destinations(&self) -> &[Destination] {
        &self.destinations
    }

    pub fn destination(&self, index: usize) -> Option<&Destination> {
        self.destinations.get(index)
    }

    pub fn health(&self, index: usize) -> Option<&Health> {
        self.health.get(index)
    }

    pub fn len(&self) -> usize {
        self.destinations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.destinations.is_empty()
    }

    /// Every destination with its health, in config order (for `gateway.list`).
    pub fn iter(&self) -> impl Iterator<Item = (&Destination, &Health)> {
        self.destinations.iter().zip(&self.health)
    }

    /// Whether the destination at `index` may be selected at `now`.
    pub fn is_up(&self, index: usize, now: Instant) -> bool {
        self.health
            .get(index)
            .is_some_and(|health| health.is_up(now))
    }

    /// Index of the destination with this uri.
    pub fn find(&self, uri: &str) -> Option<usize> {
        self.destinations
            .iter()
            .position(|destination| destination.uri == uri)
    }

    /// The first choice for this request, or `None` when no destination is up
    /// and matches `attrs`. Counts a selection for the chosen destination.
    pub fn select(
        &mut self,
        key: Option<&[u8]>,
        attrs: Option<&BTreeMap<String, String>>,
        now: Instant,
    ) -> Option<usize> {
        self.ranked(key, attrs, now).first().copied()
    }

    /// Every destination that is up and matches `attrs`: the first choice,
    /// then the order to fail over in, by tier and capacity (see
    /// [`Tiers`]), for a new call. Counts one selection for the first (this
    /// is a selection, so rotating algorithms advance). Empty when none.
    pub fn ranked(
        &mut self,
        key: Option<&[u8]>,
        attrs: Option<&BTreeMap<String, String>>,
        now: Instant,
    ) -> &[usize] {
        self.fill_eligible(attrs, now);
        let selector = Self::selector_in(
            (&mut self.selector, &mut self.filtered),
            (self.algorithm, self.hash_bound, &self.destinations),
            attrs,
        );
        let request = RankFor {
            key,
            attrs,
            for_call: true,
            now,
        };
        self.tiers.rank(
            selector,
            (&self.destinations, &self.eligible),
            request,
            &mut self.scratch,
            &mut self.ranking,
        );
        if let Some(health) = self
            .ranking
            .first()
            .and_then(|&chosen| self.health.get_mut(chosen))
        {
            health.record_selection();
        }
        &self.ranking
    }

    /// The ranking [`Group::ranked`] last made.
    pub fn last_ranking(&self) -> &[usize] {
        &self.ranking
    }

    /// Script/admin hold on `uri`. False when the uri is not in this group.
    pub fn mark_down(&mut self, uri: &str) -> bool {
        match self.health_of(uri) {
            Some(health) => {
                health.mark_down();
                true
            }
            None => false,
        }
    }

    /// Lift a hold on `uri` and force it up. False when the uri is not in
    /// this group.
    pub fn mark_up(&mut self, uri: &str, now: Instant) -> bool {
        match self.health_of(uri) {
            Some(health) => {
                health.mark_up(now);
                true
            }
            None => false,
        }
    }

    /// Feed a successful probe of `index`; returns the transition to log.
    pub fn record_success(
        &mut self,
        index: usize,
        latency: Duration,
        now: Instant,
    ) -> Option<Transition> {
        self.health.get_mut(index)?.record_success(latency, now)
    }

    /// The final response `index`'s last probe got (None: none came).
    pub fn note_probe_reply(&mut self, index: usize, status: Option<u16>) {
        if let Some(health) = self.health.get_mut(index) {
            health.note_probe_reply(status);
        }
    }

    /// Feed a failed probe of `index`; returns the transition to log.
    pub fn record_failure(
        &mut self,
        index: usize,
        reason: FailureReason,
        retry_after: Option<Duration>,
        now: Instant,
    ) -> Option<Transition> {
        let retry_after = self.capped(retry_after);
        self.health
            .get_mut(index)?
            .record_failure(reason, retry_after, now)
    }

    /// Feed a failed relay to `index` (passive health). The last
    /// destination up is never ejected: a group with none left would turn
    /// every call away, where a struggling backend still serves some.
    pub fn record_passive_failure(
        &mut self,
        index: usize,
        reason: FailureReason,
        retry_after: Option<Duration>,
        now: Instant,
    ) -> Option<Transition> {
        if let (true, Some(hold)) = (
            self.is_pacing_hold(index, &reason, retry_after),
            retry_after,
        ) {
            return self
                .health
                .get_mut(index)?
                .record_pacing_hold(reason, hold, now);
        }
        let retry_after = self.capped(retry_after);
        // By this node's own verdict: a destination peers hold out is still
        // what selection falls back to.
        let others_up = (0..self.health.len()).any(|other| {
            other != index && self.health[other].own_availability(now) == Availability::Up
        });
        let policy = self.passive;
        self.health.get_mut(index)?.record_passive_failure(
            &policy,
            reason,
            retry_after,
            others_up,
            now,
        )
    }

    /// A paced trunk's 503 (a destination with `max_cps`) with a
    /// Retry-After within `max_retry_after_secs`: "not now", which holds
    /// it out for that long without counting as a failure.
    pub fn is_pacing_hold(
        &self,
        index: usize,
        reason: &FailureReason,
        retry_after: Option<Duration>,
    ) -> bool {
        let paced = self
            .destinations
            .get(index)
            .is_some_and(|d| d.capacity().max_cps().is_some());
        paced
            && matches!(reason, FailureReason::Status(503))
            && retry_after.is_some_and(|hold| hold <= self.max_retry_after)
    }

    /// A Retry-After hold cut to `max_retry_after_secs`.
    fn capped(&self, retry_after: Option<Duration>) -> Option<Duration> {
        retry_after.map(|hold| hold.min(self.max_retry_after))
    }

    /// Feed a relay to `index` that got a response below 500.
    pub fn record_passive_success(&mut self, index: usize) {
        if let Some(health) = self.health.get_mut(index) {
            health.record_passive_success();
        }
    }

    /// Report expired Retry-After holds: `(index, transition)` for each
    /// destination that came back since the last call.
    pub fn refresh(&mut self, now: Instant) -> impl Iterator<Item = (usize, Transition)> + '_ {
        self.health
            .iter_mut()
            .enumerate()
            .filter_map(move |(index, health)| Some((index, health.refresh(now)?)))
    }

    /// Peer `node`'s verdict on `uri` (`gateway.share_health`): down holds
    /// it out for [`PEER_HOLD`] unless renewed, up lifts that peer's hold.
    /// Returns the transition to log; None also when the uri is not here.
    pub fn record_peer(
        &mut self,
        uri: &str,
        node: &str,
        down: bool,
        reason: &str,
        now: Instant,
    ) -> Option<Transition> {
        let health = self.health_of(uri)?;
        if down {
            health.record_peer_down(node, reason, now + PEER_HOLD, now)
        } else {
            health.record_peer_up(node, now)
        }
    }

    /// Changes of this node's own verdicts since the last call, to share.
    pub fn take_news(&mut self) -> Vec<(usize, Transition)> {
        self.health
            .iter_mut()
            .enumerate()
            .filter_map(|(index, health)| Some((index, health.take_news()?)))
            .collect()
    }

    /// The destinations this node's own verdict keeps out at `now`.
    pub fn own_down(&self, now: Instant) -> Vec<usize> {
        (0..self.health.len())
            .filter(|&index| self.health[index].own_availability(now) == Availability::Down)
            .collect()
    }

    fn health_of(&mut self, uri: &str) -> Option<&mut Health> {
        let index = self.find(uri)?;
        self.health.get_mut(index)
    }

    /// The selector of `attrs`' filter (the group's own without one), made
    /// on first use while there is room.
    fn selector_in<'a>(
        (shared, filtered): (&'a mut AnySelector, &'a mut FilteredSelectors),
        (algorithm, hash_bound, destinations): (Algorithm, Option<f64>, &[Destination]),
        attrs: Option<&BTreeMap<String, String>>,
    ) -> &'a mut AnySelector {
        const MAX_FILTERS: usize = 32;
        let Some(filter) = attrs.filter(|f| !f.is_empty()) else {
            return shared;
        };
        let found = filtered.iter().position(|(known, _)| known == filter);
        let index = match found {
            Some(index) => index,
            None if filtered.len() < MAX_FILTERS => {
                let mut selector = AnySelector::for_group(algorithm, hash_bound);
                selector.prepare(destinations);
                filtered.push((filter.clone(), selector));
                filtered.len() - 1
            }
            None => return shared,
        };
        &mut filtered[index].1
    }

    fn fill_eligible(&mut self, attrs: Option<&BTreeMap<String, String>>, now: Instant) {
        self.eligible.clear();
        let health = &self.health;
        push_matching(
            &self.destinations,
            attrs,
            |i| health[i].is_up(now),
            &mut self.eligible,
        );
        // As [`GroupView::fill_eligible`]: peers never leave a group empty.
        if self.eligible.is_empty() {
            let own_up = |i: usize| health[i].own_availability(now) == Availability::Up;
            push_matching(&self.destinations, attrs, own_up, &mut self.eligible);
        }
    }
}

/// Pushes the indexes of the destinations that match `attrs` and are `up`.
fn push_matching(
    destinations: &[Destination],
    attrs: Option<&BTreeMap<String, String>>,
    up: impl Fn(usize) -> bool,
    out: &mut Vec<usize>,
) {
    for (index, destination) in destinations.iter().enumerate() {
        if attrs.is_none_or(|filter| destination.matches_attrs(filter)) && up(index) {
            out.push(index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::TransitionReason;
    use super::*;
    use std::net::SocketAddr;

    fn destination(n: u8, weight: u32, region: &str) -> Destination {
        let address = SocketAddr::from(([10, 0, 0, n], 5060));
        Destination::new(format!("sip:backend{n}.example.com:5060"), address)
            .with_weight(weight)
            .with_attr("region", region)
    }

    fn three(algorithm: Algorithm) -> Group {
        Group::new(
            "backends",
            algorithm,
            vec![
                destination(1, 2, "us-east"),
                destination(2, 1, "us-west"),
                destination(3, 1, "us-east"),
            ],
            3,
        )
    }

    fn region(value: &str) -> BTreeMap<String, String> {
        BTreeMap::from([("region".to_string(), value.to_string())])
    }

    #[test]
    fn select_counts_selections_and_follows_the_algorithm() {
        let now = Instant::now();
        let mut group = three(Algorithm::RoundRobin);
        let picks: Vec<Option<usize>> = (0..6).map(|_| group.select(None, None, now)).collect();
        let expected: Vec<Option<usize>> = [0, 1, 2, 0, 1, 2].into_iter().map(Some).collect();
        assert_eq!(picks, expected);
        for index in 0..3 {
            assert_eq!(group.health(index).map(Health::selections), Some(2));
        }
    }

    #[test]
    fn attrs_filter_restricts_candidates() {
        let now = Instant::now();
        let mut group = three(Algorithm::Weighted);
        let east = region("us-east");
        for _ in 0..20 {
            let chosen = group.select(None, Some(&east), now).expect("east exists");
            assert!(chosen == 0 || chosen == 2);
        }
        assert_eq!(group.select(None, Some(&region("eu")), now), None);
        // An empty filter matches everything.
        assert!(group.select(None, Some(&BTreeMap::new()), now).is_some());
    }

    #[test]
    fn each_attrs_filter_keeps_its_own_weighted_turn() {
        // A (3, east, x), B (1, east), C (2, x): requests for `east` and for
        // `x` interleave; each filter's picks are what they would be alone.
        let now = Instant::now();
        let at = |n: u8| SocketAddr::from(([10, 0, 0, n], 5060));
        let members = || {
            vec![
                Destination::new("sip:a.example.com", at(1))
                    .with_weight(3)
                    .with_attr("region", "east")
                    .with_attr("kind", "x"),
                Destination::new("sip:b.example.com", at(2))
                    .with_weight(1)
                    .with_attr("region", "east"),
                Destination::new("sip:c.example.com", at(3))
                    .with_weight(2)
                    .with_attr("kind", "x"),
            ]
        };
        let east = region("east");
        let x = BTreeMap::from([("kind".to_string(), "x".to_string())]);
        let mut alone = Group::new("g", Algorithm::Weighted, members(), 3);
        let expected: Vec<usize> = (0..12)
            .map(|_| alone.select(None, Some(&east), now).unwrap())
            .collect();
        let mut mixed = Group::new("g", Algorithm::Weighted, members(), 3);
        let picked: Vec<usize> = (0..12)
            .map(|_| {
                let chosen = mixed.select(None, Some(&east), now).unwrap();
                mixed.select(None, Some(&x), now).unwrap();
                chosen
            })
            .collect();
        assert_eq!(picked, expected);
        assert_eq!(picked.iter().filter(|&&i| i == 0).count(), 9, "3:1");
    }

    #[test]
    fn marked_down_is_skipped_until_marked_up() {
        let now = Instant::now();
        let mut group = three(Algorithm::Hash);
        let key: &[u8] = b"sip:alice@example.com";
        let first = group.select(Some(key), None, now).expect("all up");
        let uri = group.destinations()[first].uri.clone();
        assert!(group.mark_down(&uri));
        let failover = group.select(Some(key), None, now).expect("two left");
        assert_ne!(failover, first);
        // Probe successes do not lift a script hold.
        assert_eq!(
            group.record_success(first, Duration::from_millis(3), now),
            None
        );
        assert_eq!(group.select(Some(key), None, now), Some(failover));
        assert!(group.mark_up(&uri, Instant::now()));
        assert_eq!(group.select(Some(key), None, now), Some(first));
    }

    #[test]
    fn unknown_uri_is_reported() {
        let mut group = three(Algorithm::Weighted);
        assert!(!group.mark_down("sip:nobody.example.com"));
        assert!(!group.mark_up("sip:nobody.example.com", Instant::now()));
        assert_eq!(group.find("sip:backend2.example.com:5060"), Some(1));
        assert_eq!(group.find("sip:nobody.example.com"), None);
    }

    #[test]
    fn ranked_matches_select_and_excludes_down_destinations() {
        let now = Instant::now();
        let mut group = three(Algorithm::Hash);
        let key: &[u8] = b"sip:bob@example.com";
        let ranked = group.ranked(Some(key), None, now).to_vec();
        assert_eq!(ranked.len(), 3);
        assert_eq!(group.select(Some(key), None, now), Some(ranked[0]));
        // Probe failures take the winner out; the runner-up leads.
        for _ in 0..2 {
            assert_eq!(
                group.record_failure(ranked[0], FailureReason::Timeout, None, now),
                None
            );
        }
        let transition = group
            .record_failure(ranked[0], FailureReason::Timeout, None, now)
            .expect("threshold reached");
        assert_eq!(transition.to, super::super::Availability::Down);
        assert_eq!(group.ranked(Some(key), None, now), &ranked[1..]);
    }

    #[test]
    fn all_down_gives_none_and_an_empty_ranking() {
        let now = Instant::now();
        let mut group = three(Algorithm::Weighted);
        for uri in ["1", "2", "3"].map(|n| format!("sip:backend{n}.example.com:5060")) {
            assert!(group.mark_down(&uri));
        }
        assert_eq!(group.select(None, None, now), None);
        assert!(group.ranked(None, None, now).is_empty());
        assert!(Group::new("empty", Algorithm::Hash, Vec::new(), 3)
            .select(Some(b"k"), None, now)
            .is_none());
    }

    #[test]
    fn retry_after_expiry_is_reported_by_refresh() {
        let start = Instant::now();
        let mut group = three(Algorithm::RoundRobin);
        assert!(group
            .record_failure(
                1,
                FailureReason::Status(503),
                Some(Duration::from_secs(10)),
                start
            )
            .is_some());
        assert!(!group.is_up(1, start + Duration::from_secs(5)));
        assert_eq!(group.refresh(start + Duration::from_secs(5)).count(), 0);
        let later = start + Duration::from_secs(11);
        let came_back: Vec<usize> = group.refresh(later).map(|(index, _)| index).collect();
        assert_eq!(came_back, vec![1]);
        assert_eq!(group.refresh(later).count(), 0);
        assert!(group.is_up(1, later));
    }

    fn passive(threshold: u32, eject_secs: u64, await_probe: bool) -> PassivePolicy {
        PassivePolicy {
            failure_threshold: threshold,
            eject: Duration::from_secs(eject_secs),
            await_probe,
        }
    }

    fn fail_passively(
        group: &mut Group,
        index: usize,
        times: usize,
        now: Instant,
    ) -> Vec<Transition> {
        (0..times)
            .filter_map(|_| group.record_passive_failure(index, FailureReason::Timeout, None, now))
            .collect()
    }

    #[test]
    fn passive_failures_eject_at_the_threshold_and_a_success_resets_the_count() {
        let start = Instant::now();
        let mut group = three(Algorithm::Hash)
            .with_health_policy(passive(3, 30, false), DEFAULT_MAX_RETRY_AFTER);
        assert!(fail_passively(&mut group, 0, 2, start).is_empty());
        group.record_passive_success(0);
        assert!(
            fail_passively(&mut group, 0, 2, start).is_empty(),
            "the run was broken"
        );
        let transitions = fail_passively(&mut group, 0, 1, start);
        assert_eq!(transitions.len(), 1);
        assert_eq!(transitions[0].reason.source(), "passive");
        assert!(!group.is_up(0, start));
        // Without probing, the ejection ends by itself.
        assert!(!group.is_up(0, start + Duration::from_secs(29)));
        let back: Vec<usize> = group
            .refresh(start + Duration::from_secs(30))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(back, vec![0]);
    }

    #[test]
    fn repeated_ejections_double_up_to_five_minutes() {
        let mut now = Instant::now();
        let mut group = three(Algorithm::Hash)
            .with_health_policy(passive(1, 30, false), DEFAULT_MAX_RETRY_AFTER);
        let mut lengths = Vec::new();
        for _ in 0..6 {
            let transition = fail_passively(&mut group, 0, 1, now)
                .pop()
                .expect("ejected");
            let TransitionReason::Ejected { eject, .. } = transition.reason else {
                panic!("not an ejection: {transition:?}");
            };
            lengths.push(eject.as_secs());
            now += eject;
            assert_eq!(group.refresh(now).count(), 1);
        }
        assert_eq!(lengths, [30, 60, 120, 240, 300, 300]);
    }

    #[test]
    fn an_ejection_outlasts_probe_successes_then_a_probe_brings_it_back() {
        let start = Instant::now();
        let mut group = three(Algorithm::Hash)
            .with_health_policy(passive(1, 30, true), DEFAULT_MAX_RETRY_AFTER);
        assert_eq!(fail_passively(&mut group, 1, 1, start).len(), 1);
        let latency = Duration::from_millis(2);
        assert_eq!(
            group.record_success(1, latency, start + Duration::from_secs(5)),
            None
        );
        assert!(
            !group.is_up(1, start + Duration::from_secs(5)),
            "OPTIONS 200 is not enough"
        );
        let later = start + Duration::from_secs(31);
        assert_eq!(group.refresh(later).count(), 0, "waits for a probe");
        assert!(!group.is_up(1, later));
        let back = group.record_success(1, latency, later).expect("back up");
        assert_eq!(back.to, super::super::Availability::Up);
        assert!(group.is_up(1, later));
    }

    #[test]
    fn the_last_destination_up_is_never_ejected() {
        let now = Instant::now();
        let mut group = three(Algorithm::Weighted)
            .with_health_policy(passive(1, 30, false), DEFAULT_MAX_RETRY_AFTER);
        assert_eq!(fail_passively(&mut group, 0, 1, now).len(), 1);
        assert_eq!(fail_passively(&mut group, 1, 1, now).len(), 1);
        assert!(fail_passively(&mut group, 2, 5, now).is_empty());
        assert!(group.is_up(2, now));
        // mark_up lifts an ejection at once.
        assert!(group.mark_up("sip:backend1.example.com:5060", Instant::now()));
        assert!(group.is_up(0, now));
    }

    #[test]
    fn retry_after_holds_are_capped() {
        let start = Instant::now();
        let mut group = three(Algorithm::RoundRobin)
            .with_health_policy(passive(3, 30, false), Duration::from_secs(300));
        let forged = Some(Duration::from_secs(999_999_999));
        assert!(group
            .record_passive_failure(2, FailureReason::Status(503), forged, start)
            .is_some());
        assert!(!group.is_up(2, start + Duration::from_secs(299)));
        assert!(group.is_up(2, start + Duration::from_secs(300)));
        assert!(group
            .record_failure(1, FailureReason::Status(503), forged, start)
            .is_some());
        assert!(group.is_up(1, start + Duration::from_secs(300)));
    }

    #[test]
    fn a_replaced_group_keeps_the_health_of_destinations_that_remain() {
        let now = Instant::now();
        let mut old = three(Algorithm::Hash);
        assert!(old.mark_down("sip:backend2.example.com:5060"));
        old.select(Some(b"k"), None, now);
        let mut new = Group::new(
            "backends",
            Algorithm::Hash,
            vec![destination(2, 1, "us-west"), destination(4, 1, "eu")],
            5,
        );
        new.adopt_health(&old);
        assert!(!new.is_up(0, now), "backend2's hold is kept");
        assert!(new.is_up(1, now), "a new destination starts healthy");
        assert_eq!(new.health(0).map(Health::failure_threshold), Some(5));
    }

    #[test]
    fn the_published_view_lets_holds_run_out_by_themselves() {
        let start = Instant::now();
        let mut group = three(Algorithm::Hash)
            .with_health_policy(passive(1, 30, true), DEFAULT_MAX_RETRY_AFTER);
        let hold = Some(Duration::from_secs(10));
        assert!(group
            .record_failure(0, FailureReason::Status(503), hold, start)
            .is_some());
        assert_eq!(fail_passively(&mut group, 1, 1, start).len(), 1);
        assert!(group.mark_down("sip:backend3.example.com:5060"));
        let view = group.view(start);
        let mut eligible = Vec::new();
        view.fill_eligible(None, start, &mut eligible);
        assert!(eligible.is_empty());
        // The hold ends on time with the same view; an ejection that waits
        // for a probe, and a mark, do not.
        let later = start + Duration::from_secs(40);
        view.fill_eligible(None, later, &mut eligible);
        assert_eq!(eligible, [0]);
        assert_eq!(view.find("sip:backend2.example.com:5060"), Some(1));
        assert!(!view.is_up(1, later), "ejected until a probe succeeds");
        assert!(!view.is_up(2, later), "held by the mark");
    }

    #[test]
    fn failures_of_calls_in_flight_during_an_ejection_do_not_count() {
        let start = Instant::now();
        let mut group = three(Algorithm::Hash)
            .with_health_policy(passive(3, 30, false), DEFAULT_MAX_RETRY_AFTER);
        assert_eq!(fail_passively(&mut group, 0, 3, start).len(), 1);
        assert!(fail_passively(&mut group, 0, 10, start).is_empty());
        let back = start + Duration::from_secs(30);
        assert_eq!(group.refresh(back).count(), 1);
        // Back with a clean slate: one failure does not eject it again.
        assert!(fail_passively(&mut group, 0, 1, back).is_empty());
        assert!(group.is_up(0, back));
    }

    #[test]
    fn a_paced_destinations_503_holds_it_without_counting_toward_ejection() {
        let now = Instant::now();
        let paced = vec![
            destination(1, 1, "a").with_limits(None, Some(1.0)),
            destination(2, 1, "a"),
        ];
        let mut group = Group::new("trunks", Algorithm::Weighted, paced, 3).with_health_policy(
            PassivePolicy {
                failure_threshold: 1,
                ..PassivePolicy::default()
            },
            Duration::from_secs(60),
        );
        let hold = Some(Duration::from_secs(2));
        let status = FailureReason::Status(503);
        assert!(group
            .record_passive_failure(0, status.clone(), hold, now)
            .is_some());
        assert!(
            !group.is_up(0, now + Duration::from_secs(1)),
            "held for 2 s"
        );
        assert!(group.is_up(0, now + Duration::from_secs(2)));
        assert_eq!(group.health(0).unwrap().passive_failures(), 0, "no failure");
        assert!(!group
            .health(0)
            .unwrap()
            .ejected(now + Duration::from_secs(2)));
        // A Retry-After longer than max_retry_after_secs is a failure as ever.
        let long = Some(Duration::from_secs(600));
        group.record_passive_failure(0, status.clone(), long, now);
        assert_eq!(group.health(0).unwrap().passive_failures(), 1);
        // Without max_cps a 503 with Retry-After counts.
        group.record_passive_failure(1, status, hold, now);
        assert_eq!(group.health(1).unwrap().passive_failures(), 1);
    }

    #[test]
    fn success_threshold_probes_in_a_row_bring_a_destination_back() {
        let now = Instant::now();
        let mut group = three(Algorithm::Weighted).with_probe_policy(3);
        let timeout = FailureReason::Timeout;
        for _ in 0..3 {
            group.record_failure(0, timeout.clone(), None, now);
        }
        assert!(!group.is_up(0, now));
        let ms = Duration::from_millis(5);
        assert!(group.record_success(0, ms, now).is_none());
        assert!(group.record_success(0, ms, now).is_none());
        group.record_failure(0, timeout.clone(), None, now);
        assert!(
            group.record_success(0, ms, now).is_none(),
            "a failure starts over"
        );
        assert!(group.record_success(0, ms, now).is_none());
        assert!(group.record_success(0, ms, now).is_some());
        assert!(group.is_up(0, now));
    }

    #[test]
    fn a_replaced_group_keeps_the_calls_and_drain_of_the_uris_that_remain() {
        let old = three(Algorithm::LeastCalls);
        let _call = old.destinations()[1]
            .capacity()
            .reserve(Instant::now())
            .unwrap();
        old.destinations()[2].capacity().set_draining(true);
        let mut new = Group::new(
            "backends",
            Algorithm::LeastCalls,
            vec![
                destination(2, 1, "us-west").with_limits(Some(5), None),
                destination(3, 1, "us-east"),
                destination(4, 1, "us-east"),
            ],
            3,
        );
        new.adopt_health(&old);
        let capacity = new.destinations()[0].capacity();
        assert_eq!(capacity.calls_in_use(), 1);
        assert_eq!(capacity.max_calls(), Some(5), "the new limit applies");
        assert!(new.destinations()[1].capacity().is_draining());
        assert_eq!(new.destinations()[2].capacity().calls_in_use(), 0);
        // One set of counters: a call ending in the old group counts here.
        drop(_call);
        assert_eq!(capacity.calls_in_use(), 0);
    }
}
