//! The live set of gateway groups, shared by the script workers (which
//! select) and the gateway actors (which own health). Each group's actor is
//! the one writer of its state and publishes a [`GroupView`] after every
//! change; selection reads the view with no lock and no actor round trip
//! (35–70 µs across threads, DESIGN.md §6).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use arc_swap::ArcSwap;

use super::group::GroupView;
use super::Group;
use crate::metrics::{DestinationMetrics, Metrics};
use crate::proxy::decision::FailoverPolicy;

/// One group behind its lock, with each destination's metric handles (made
/// once here, so counting a selection costs one atomic add) and the group's
/// failover policy, which every relay to it carries.
pub struct SharedGroup {
    /// The group's state; its actor is the one writer (through
    /// [`SharedGroup::update`]), before the actor runs boot is.
    group: Mutex<Group>,
    /// What the hot path reads, published by every update.
    view: ArcSwap<GroupView>,
    metrics: Vec<DestinationMetrics>,
    /// Selections per destination, counted by the shards that select.
    selections: Box<[AtomicU64]>,
    name: Arc<str>,
    policy: Arc<FailoverPolicy>,
    /// Unique for the life of the process: the key of each shard's selector.
    id: u64,
}

/// Source of [`SharedGroup`] ids.
static NEXT_GROUP_ID: AtomicU64 = AtomicU64::new(1);

impl SharedGroup {
    pub fn new(group: Group, policy: FailoverPolicy, registry: &Metrics) -> Self {
        let metrics = group
            .destinations()
            .iter()
            .map(|d| registry.destination(group.name(), &d.uri))
            .collect();
        SharedGroup {
            name: Arc::from(group.name()),
            view: ArcSwap::from_pointee(group.view(std::time::Instant::now())),
            selections: (0..group.len()).map(|_| AtomicU64::new(0)).collect(),
            group: Mutex::new(group),
            metrics,
            policy: Arc::new(policy),
            id: NEXT_GROUP_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// What selection reads: the destinations and which are up.
    pub fn view(&self) -> Arc<GroupView> {
        self.view.load_full()
    }

    /// Changes the group and publishes the result for the hot path. Only
    /// the group's actor calls this once it runs.
    pub fn update<R>(&self, change: impl FnOnce(&mut Group) -> R) -> R {
        let mut group = self.lock();
        let result = change(&mut group);
        self.view
            .store(Arc::new(group.view(std::time::Instant::now())));
        result
    }

    /// Counts a selection of destination `index` (the first choice).
    pub fn count_selection(&self, index: usize) {
        if let Some(count) = self.selections.get(index) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(metrics) = self.metrics.get(index) {
            metrics.selections.inc();
        }
    }

    /// How many selections chose destination `index` first.
    pub fn selections(&self, index: usize) -> u64 {
        self.selections
            .get(index)
            .map_or(0, |count| count.load(Ordering::Relaxed))
    }

    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub fn policy(&self) -> &Arc<FailoverPolicy> {
        &self.policy
    }

    /// The metric handles of destination `index`.
    pub fn metrics(&self, index: usize) -> Option<&DestinationMetrics> {
        self.metrics.get(index)
    }

    /// Sets each destination's `up` gauge from its current health.
    pub fn refresh_up_gauges(&self, now: std::time::Instant) {
        let group = self.lock();
        for (index, metrics) in self.metrics.iter().enumerate() {
            metrics.up.set(i64::from(group.is_up(index, now)));
            if let Some(destination) = group.destination(index) {
                let calls = destination.capacity().active_calls();
                metrics.active_calls.set(i64::from(calls));
            }
        }
    }

    /// The group, locked. A panic elsewhere while holding it cannot poison
    /// selection for good: the state is plain data and stays usable.
    pub fn lock(&self) -> MutexGuard<'_, Group> {
        self.group.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Every group by name, and every destination's address by uri (so relaying
/// to a destination's uri sends to its configured address, with no DNS).
pub struct Gateways {
    groups: RwLock<HashMap<String, Arc<SharedGroup>>>,
    /// Every destination uri: where it is, and the group it belongs to.
    addresses: RwLock<HashMap<String, (SocketAddr, Arc<SharedGroup>)>>,
    /// Every destination's address: a relay there (a backend's Contact in
    /// a dialog) goes where the operator pointed (`security::relay`).
    hosts: RwLock<std::collections::HashSet<SocketAddr>>,
    /// Their IPs: never limited at the edge.
    host_ips: RwLock<std::collections::HashSet<std::net::IpAddr>>,
    /// Where each destination's selections, health and probe figures go.
    metrics: &'static Metrics,
}

impl Gateways {
    pub fn new(metrics: &'static Metrics) -> Self {
        Gateways {
            groups: RwLock::default(),
            addresses: RwLock::default(),
            hosts: RwLock::default(),
            host_ips: RwLock::default(),
            metrics,
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<SharedGroup>> {
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Adds or replaces a group; returns the group it replaced. A
    /// replaced group's destinations that remain (same uri) keep their
    /// health and counters.
    pub fn insert(
        &self,
        mut group: Group,
        policy: FailoverPolicy,
    ) -> (Arc<SharedGroup>, Option<Arc<SharedGroup>>) {
        let name = group.name().to_string();
        let mut groups = self.groups.write().unwrap_or_else(|p| p.into_inner());
        let previous_group = groups.get(&name).cloned();
        if let Some(previous) = &previous_group {
            group.adopt_health(&previous.lock());
        }
        let shared = Arc::new(SharedGroup::new(group, policy, self.metrics));
        if let Some(previous) = &previous_group {
            // The counters of destinations that remain go on, too.
            let old = previous.lock();
            for (index, destination) in shared.lock().destinations().iter().enumerate() {
                if let Some(before) = old.find(&destination.uri) {
                    shared.selections[index].store(previous.selections(before), Ordering::Relaxed);
                }
            }
        }
        let previous = groups.insert(name, shared.clone());
        self.rebuild_addresses(&groups);
        (shared, previous)
    }

    pub fn remove(&self, name: &str) -> Option<Arc<SharedGroup>> {
        let mut groups = self.groups.write().unwrap_or_else(|p| p.into_inner());
        let removed = groups.remove(name);
        self.rebuild_addresses(&groups);
        drop(groups);
        if let Some(shared) = &removed {
            let group = shared.lock();
            for dest in group.destinations() {
                self.metrics.remove_destination(name, &dest.uri);
            }
        }
        removed
    }

    /// The uri → address map from the groups there are now, so that a
    /// removed group's destinations leave it (groups in name order: when
    /// two name one uri, the first name's address wins, whatever the
    /// order they came in).
    fn rebuild_addresses(&self, groups: &HashMap<String, Arc<SharedGroup>>) {
        let mut names: Vec<&String> = groups.keys().collect();
        names.sort();
        let mut addresses = HashMap::new();
        for name in names {
            let shared = &groups[name];
            for dest in shared.lock().destinations() {
                addresses
                    .entry(dest.uri.clone())
                    .or_insert_with(|| (dest.address, shared.clone()));
            }
        }
        *self.host_ips.write().unwrap_or_else(|p| p.into_inner()) = addresses
            .values()
            .map(|(address, _)| crate::security::canonical(address.ip()))
            .collect();
        *self.hosts.write().unwrap_or_else(|p| p.into_inner()) =
            addresses.values().map(|(address, _)| *address).collect();
        *self.addresses.write().unwrap_or_else(|p| p.into_inner()) = addresses;
    }

    /// True when `ip` is some gateway destination's host.
    pub fn is_destination_host(&self, ip: std::net::IpAddr) -> bool {
        self.host_ips
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&crate::security::canonical(ip))
    }

    /// True when `address` is exactly some gateway destination's.
    pub fn is_destination_address(&self, address: SocketAddr) -> bool {
        self.hosts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&address)
    }

    /// The first group (by name) with a destination at `source` (its IP,
    /// and its port unless `any_port`), as `ds_is_from_list` tells. Reads
    /// the groups' views: no lock is held while matching.
    pub fn group_of_source(&self, source: SocketAddr, any_port: bool) -> Option<Arc<str>> {
        let mut groups: Vec<Arc<SharedGroup>> = self
            .groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        groups.sort_by(|a, b| a.name().cmp(b.name()));
        groups
            .into_iter()
            .find(|group| is_in(group, source, any_port))
            .map(|group| group.name().clone())
    }

    /// Whether `source` is one of group `name`'s destinations (its IP, and
    /// its port unless `any_port`). False for an unknown group.
    pub fn is_from(&self, name: &str, source: SocketAddr, any_port: bool) -> bool {
        self.get(name)
            .is_some_and(|group| is_in(&group, source, any_port))
    }

    /// Brings every destination's `up` gauge up to date (before a scrape).
    pub fn refresh_up_gauges(&self) {
        let now = std::time::Instant::now();
        let groups: Vec<Arc<SharedGroup>> = self
            .groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for group in groups {
            group.refresh_up_gauges(now);
        }
    }

    /// Group names in alphabetical order.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }

    /// Where packets for a destination uri go, if it belongs to a group.
    pub fn address_of(&self, uri: &str) -> Option<SocketAddr> {
        self.addresses
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(uri)
            .map(|(address, _)| *address)
    }

    /// The group a destination uri belongs to.
    pub fn group_of(&self, uri: &str) -> Option<Arc<SharedGroup>> {
        self.addresses
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(uri)
            .map(|(_, group)| group.clone())
    }
}

/// Whether `source` is a destination of `group`.
fn is_in(group: &SharedGroup, source: SocketAddr, any_port: bool) -> bool {
    let ip = crate::security::canonical(source.ip());
    group.view().destinations.iter().any(|d| {
        crate::security::canonical(d.address.ip()) == ip
            && (any_port || d.address.port() == source.port())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::{Algorithm, Destination};

    fn group(name: &str, uris: &[(&str, u16)]) -> Group {
        let destinations = uris
            .iter()
            .map(|(uri, port)| Destination::new(*uri, SocketAddr::from(([192, 0, 2, 1], *port))))
            .collect();
        Group::new(name, Algorithm::Hash, destinations, 3)
    }

    /// A registry holding these groups, in this order.
    fn registry(groups: &[(&str, &[(&str, u16)])]) -> Gateways {
        let gateways = Gateways::new(crate::metrics::get());
        for (name, uris) in groups {
            gateways.insert(group(name, uris), FailoverPolicy::default());
        }
        gateways
    }

    #[test]
    fn a_removed_group_takes_its_addresses_with_it() {
        let gateways = registry(&[
            ("a", &[("sip:one.example", 5061)]),
            ("b", &[("sip:two.example", 5062)]),
        ]);
        assert!(gateways.address_of("sip:one.example").is_some());
        assert!(gateways.remove("a").is_some());
        assert_eq!(gateways.address_of("sip:one.example"), None);
        assert!(gateways.group_of("sip:one.example").is_none());
        assert_eq!(
            gateways
                .group_of("sip:two.example")
                .map(|g| g.name().to_string()),
            Some("b".to_string())
        );
    }

    #[test]
    fn a_source_is_from_the_first_group_that_has_it_by_ip_and_port() {
        let gateways = registry(&[
            ("zeta", &[("sip:z.example", 5070)]),
            ("alpha", &[("sip:a.example", 5070)]),
            ("beta", &[("sip:b.example", 5080)]),
        ]);
        let at = |port| SocketAddr::from(([192, 0, 2, 1], port));
        assert_eq!(
            gateways.group_of_source(at(5070), false).as_deref(),
            Some("alpha")
        );
        assert_eq!(gateways.group_of_source(at(5099), false), None);
        assert_eq!(
            gateways.group_of_source(at(5099), true).as_deref(),
            Some("alpha")
        );
        assert!(gateways.is_from("beta", at(5080), false));
        assert!(!gateways.is_from("beta", at(5070), false));
        assert!(gateways.is_from("beta", at(5070), true));
        assert!(!gateways.is_from("nope", at(5080), true));
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:5080".parse().unwrap();
        assert!(
            gateways.is_from("beta", mapped, false),
            "an IPv4-mapped source"
        );
        let other = SocketAddr::from(([198, 51, 100, 1], 5080));
        assert_eq!(gateways.group_of_source(other, true), None);
    }

    #[test]
    fn replacing_a_group_keeps_the_health_of_the_destinations_that_remain() {
        let gateways = Gateways::new(crate::metrics::get());
        let (first, _) = gateways.insert(
            group(
                "keep",
                &[("sip:one.example", 5061), ("sip:two.example", 5062)],
            ),
            FailoverPolicy::default(),
        );
        assert!(first.lock().mark_down("sip:two.example"));
        let (second, previous) = gateways.insert(
            group(
                "keep",
                &[("sip:two.example", 5062), ("sip:three.example", 5063)],
            ),
            FailoverPolicy::default(),
        );
        assert!(previous.is_some());
        let now = std::time::Instant::now();
        let group = second.lock();
        assert!(!group.is_up(0, now), "sip:two.example stays held down");
        assert!(group.is_up(1, now));
        assert_eq!(gateways.address_of("sip:one.example"), None);
    }
}
