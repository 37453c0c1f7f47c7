//! A change of a destination's state, as scripts (`@gateway.on_change`)
//! and the webhook (`gateway.webhook`) hear of it. Plain data.

use serde::Serialize;

/// One destination changed state: `up`, `down`, `draining` or `full`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GatewayEvent {
    pub group: String,
    pub uri: String,
    pub old_state: &'static str,
    pub new_state: &'static str,
    /// Why, as the log line says it.
    pub reason: String,
    /// `server.instance_id` of the node that saw it.
    pub node: String,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}
