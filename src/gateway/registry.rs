//! The live set of gateway groups, shared by the script workers (which select)
//! and the gateway actors (which feed health in). Selection takes one
//! uncontended group mutex for a few tens of nanoseconds: far cheaper than an
//! actor round trip across threads (DESIGN.md §6).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use super::Group;
use crate::metrics::{DestinationMetrics, Metrics};

/// One group behind its lock, with each destination's metric handles (made
/// once here, so counting a selection costs one atomic add).
pub struct SharedGroup {
    group: Mutex<Group>,
    metrics: Vec<DestinationMetrics>,
}

impl SharedGroup {
    pub fn new(group: Group, registry: &Metrics) -> Self {
        let metrics = group
            .destinations()
            .iter()
            .map(|d| registry.destination(group.name(), &d.uri))
            .collect();
        SharedGroup {
            group: Mutex::new(group),
            metrics,
        }
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
    addresses: RwLock<HashMap<String, SocketAddr>>,
    /// Where each destination's selections, health and probe figures go.
    metrics: &'static Metrics,
}

impl Gateways {
    pub fn new(metrics: &'static Metrics) -> Self {
        Gateways {
            groups: RwLock::default(),
            addresses: RwLock::default(),
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

    /// Adds or replaces a group; returns the group it replaced.
    pub fn insert(&self, group: Group) -> (Arc<SharedGroup>, Option<Arc<SharedGroup>>) {
        let name = group.name().to_string();
        {
            let mut addresses = self.addresses.write().unwrap_or_else(|p| p.into_inner());
            for dest in group.destinations() {
                addresses.insert(dest.uri.clone(), dest.address);
            }
        }
        let shared = Arc::new(SharedGroup::new(group, self.metrics));
        let previous = self
            .groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, shared.clone());
        (shared, previous)
    }

    pub fn remove(&self, name: &str) -> Option<Arc<SharedGroup>> {
        let removed = self
            .groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        if let Some(shared) = &removed {
            let group = shared.lock();
            for dest in group.destinations() {
                self.metrics.remove_destination(name, &dest.uri);
            }
        }
        removed
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
            .copied()
    }
}
