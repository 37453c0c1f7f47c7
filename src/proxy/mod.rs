//! RFC 3261 §16 and §17 as plain code: the transaction engine, where a
//! request goes next, how the forwarded copy is built, loop detection, and
//! the timers. The transaction shard (`actors::transaction`) feeds the
//! engine and carries out what it returns; nothing here does I/O.

pub mod capacity;
pub mod decision;
pub mod dns;
pub mod engine;
pub mod fast_hash;
pub mod flow;
pub mod forward;
pub mod local;
pub mod response;
pub mod seal;
pub mod timers;

pub use decision::{Action, Decision, ForkTarget, Preroute};
pub use forward::{loop_hash, next_hop, Hop, HopError};
pub use local::LocalIdentity;
pub use response::better_response;
pub use timers::{TimerKind, TimerQueue, TimerSettings};
