//! RFC 3261 §16 proxy rules as plain functions: where a request goes next, how
//! the forwarded copy is built, loop detection, and which response wins. The
//! transaction shard (`actors::transaction`) calls these; nothing here does I/O.

pub mod fast_hash;
pub mod forward;
pub mod response;
pub mod timers;

pub use forward::{loop_hash, next_hop, Hop, HopError};
pub use response::better_response;
pub use timers::{TimerKind, TimerQueue, TimerSettings};
