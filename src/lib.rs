//! siphon: a SIP proxy and load balancer on actix, routed by embedded Python.
//!
//! Pure logic (parsing, algorithms, binding rules) lives in `sip`, `gateway`,
//! `config`; the actors in `actors` are thin wrappers that own state and call it.
pub mod actors;
pub mod admin;
pub mod capture;
pub mod config;
pub mod ctl;
pub mod dry_run;
pub mod gateway;
pub mod http1;
pub mod lifecycle;
pub mod logging;
pub mod manpage;
pub mod metrics;
pub mod notify;
pub mod process_metrics;
pub mod proxy;
pub mod registrar;
pub mod reload;
pub mod script;
pub mod security;
pub mod server;
pub mod sip;
pub mod telemetry;
