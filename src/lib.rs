//! siphon: a SIP proxy and load balancer on actix, routed by embedded Python.
//!
//! Pure logic (parsing, algorithms, binding rules) lives in `sip`, `gateway`,
//! `config`; the actors in `actors` are thin wrappers that own state and call it.
pub mod config;
pub mod logging;
pub mod sip;
pub mod gateway;
pub mod actors;
pub mod proxy;
pub mod script;
pub mod server;
pub mod metrics;
pub mod registrar;
pub mod lifecycle;
pub mod admin;
