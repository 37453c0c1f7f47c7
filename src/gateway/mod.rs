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
