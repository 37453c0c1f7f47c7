//! The actors: thin owners of state that call into the pure logic in `sip`,
//! `proxy` and `script`.

pub mod capture;
pub mod dispatcher;
pub mod dns;
pub mod edge;
pub mod events;
pub mod executor;
pub mod gateway;
pub mod health_share;
pub mod otlp;
pub mod tls;
pub mod transaction;
pub mod transport;
pub mod websocket;
