//! Gateway groups: the pure logic that picks a backend for a request.
//!
//! Nothing here is async or an actor. The gateway-group actor owns a [`Group`]
//! and calls into it; everything below is plain data and functions so it can be
//! unit-tested and read in isolation.
//!
//! - [`destination`]: a backend ([`Destination`]) and its health state machine
//!   ([`Health`]), fed by probes, Retry-After and script/admin holds.
//! - [`algorithm`]: the [`Selector`] trait and one file per algorithm
//!   (smooth weighted, round-robin, weighted rendezvous hash). Selecting yields
//!   an ordered candidate list: the first choice, then the failover order.
//! - [`share`]: the messages of `gateway.share_health` between nodes.
//! - [`group`]: a named group tying destinations, health and a selector together,
//!   with the attrs filter.
//! - [`GatewayControl`]: what the script layer holds of the groups (the
//!   published view, and a way to ask for changes), so that it does not
//!   depend on the actors that carry them out.

pub mod algorithm;
pub mod destination;
pub mod events;
pub mod group;
pub mod registry;
pub mod share;
pub mod tiers;

pub use algorithm::{new_selector, Algorithm, AnySelector, Selector, UnknownAlgorithm};
pub use destination::{
    Availability, Destination, FailureReason, Health, PassivePolicy, Transition, TransitionReason,
    MAX_EJECTION,
};
pub use group::Group;
pub use registry::{Gateways, SharedGroup};

/// The gateway groups as the script sees them: the view the group actors
/// publish, read without a lock, and the changes a script may ask for,
/// which the actors carry out (`actors::gateway::GatewayService` is the
/// daemon's).
pub trait GatewayControl: Send + Sync {
    /// The published registry that `gateway.select` and relays read.
    fn gateways(&self) -> std::sync::Arc<Gateways>;
    /// Holds (`down`) or releases one destination; `source` goes in the
    /// log line. None for an unknown group, Some(false) for an unknown uri.
    fn mark(&self, group: &str, uri: &str, down: bool, source: &'static str) -> Option<bool>;
    /// Starts or ends a destination's drain: Some(changed), or None when
    /// the group or uri is unknown.
    fn drain(&self, group: &str, uri: &str, draining: bool, source: &str) -> Option<bool>;
    /// Adds a group, or replaces the group of that name.
    fn add_group(&self, config: &crate::config::GroupConfig);
    /// Removes a group; false when unknown.
    fn remove_group(&self, name: &str) -> bool;
}

/// Groups with no actors, for the script layer's unit tests: changes are
/// made on the registry at once, as the daemon's service does before its
/// actors start.
#[cfg(test)]
pub struct Unmanaged(pub std::sync::Arc<Gateways>);

#[cfg(test)]
impl Unmanaged {
    pub fn new() -> std::sync::Arc<Self> {
        std::sync::Arc::new(Unmanaged(std::sync::Arc::new(Gateways::new(
            crate::metrics::get(),
        ))))
    }
}

#[cfg(test)]
impl GatewayControl for Unmanaged {
    fn gateways(&self) -> std::sync::Arc<Gateways> {
        self.0.clone()
    }

    fn mark(&self, group: &str, uri: &str, down: bool, _source: &'static str) -> Option<bool> {
        let shared = self.0.get(group)?;
        let now = std::time::Instant::now();
        Some(shared.update(|group| {
            let found = group.find(uri).is_some();
            let _changed = match down {
                true => group.mark_down(uri),
                false => group.mark_up(uri, now),
            };
            found
        }))
    }

    fn drain(&self, group: &str, uri: &str, draining: bool, _source: &str) -> Option<bool> {
        let view = self.0.get(group)?.view();
        let index = view.find(uri)?;
        Some(view.destinations[index].capacity().set_draining(draining))
    }

    fn add_group(&self, config: &crate::config::GroupConfig) {
        self.0.insert(config.to_group(), config.failover.policy());
    }

    fn remove_group(&self, name: &str) -> bool {
        self.0.remove(name).is_some()
    }
}
