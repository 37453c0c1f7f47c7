//! Delivers gateway events off the SIP path: to the script's
//! `@gateway.on_change` handlers on a thread of their own, and to the
//! `gateway.webhook` URL as a JSON POST with retries, each through a
//! bounded queue (an event that finds its queue full is dropped, counted
//! and logged: a stuck receiver never holds up a call).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::WebhookConfig;
use crate::gateway::events::GatewayEvent;

/// What the script side does with an event.
pub type EventHandler = Box<dyn Fn(&GatewayEvent) + Send>;

/// The queues events go out through.
pub struct EventBus {
    node: String,
    script: Option<SyncSender<GatewayEvent>>,
    /// A reload's `gateway.webhook` replaces it (the old thread ends once
    /// it has sent what it holds).
    webhook: Mutex<Option<SyncSender<GatewayEvent>>>,
    dropped: AtomicU64,
}

/// A thread that POSTs the events it is sent to `config`'s URL.
fn start_webhook(
    config: Option<&WebhookConfig>,
) -> Result<Option<SyncSender<GatewayEvent>>, String> {
    let Some(config) = config else {
        return Ok(None);
    };
    let (tx, rx) = sync_channel::<GatewayEvent>(config.queue);
    let config = config.clone();
    std::thread::Builder::new()
        .name("gateway-webhook".into())
        .spawn(move || post_events(rx, config))
        .map_err(|e| format!("cannot start the webhook thread: {e}"))?;
    Ok(Some(tx))
}

impl EventBus {
    /// Starts the delivery threads: `handler` for the script's handlers,
    /// and the webhook's when configured.
    pub fn start(
        node: &str,
        handler: Option<EventHandler>,
        webhook: Option<&WebhookConfig>,
    ) -> Result<Arc<EventBus>, String> {
        let script = match handler {
            Some(handler) => {
                let (tx, rx) = sync_channel::<GatewayEvent>(1024);
                std::thread::Builder::new()
                    .name("gateway-events".into())
                    .spawn(move || {
                        for event in rx {
                            handler(&event);
                        }
                    })
                    .map_err(|e| format!("cannot start the gateway event thread: {e}"))?;
                Some(tx)
            }
            None => None,
        };
        Ok(Arc::new(EventBus {
            node: node.to_string(),
            script,
            webhook: Mutex::new(start_webhook(webhook)?),
            dropped: AtomicU64::new(0),
        }))
    }

    /// A reload's `gateway.webhook` (None: no webhook any more).
    pub fn set_webhook(&self, config: Option<&WebhookConfig>) -> Result<(), String> {
        let webhook = start_webhook(config)?;
        *self.webhook.lock().unwrap_or_else(|p| p.into_inner()) = webhook;
        Ok(())
    }

    /// Sends an event; never blocks.
    pub fn publish(
        &self,
        group: &str,
        uri: &str,
        (old_state, new_state): (&'static str, &'static str),
        reason: &str,
    ) {
        if old_state == new_state {
            return;
        }
        let event = GatewayEvent {
            group: group.to_string(),
            uri: uri.to_string(),
            old_state,
            new_state,
            reason: reason.to_string(),
            node: self.node.clone(),
            at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        };
        let webhook = self.webhook.lock().unwrap_or_else(|p| p.into_inner());
        for queue in [&self.script, &*webhook].into_iter().flatten() {
            if let Err(e) = queue.try_send(event.clone()) {
                let why = match e {
                    TrySendError::Full(_) => "queue full",
                    TrySendError::Disconnected(_) => "delivery thread gone",
                };
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped.is_power_of_two() {
                    tracing::warn!(dropped, "gateway events dropped: {why}");
                }
            }
        }
    }
}

/// POSTs each event as JSON, retrying a failure `retries` times with a
/// doubling pause. The URL's name is looked up for each event, so a
/// receiver that moves (or is not up at boot) is found.
fn post_events(events: Receiver<GatewayEvent>, config: WebhookConfig) {
    let timeout = Duration::from_millis(config.timeout_ms);
    for event in events {
        let body = serde_json::to_vec(&event).unwrap_or_default();
        let headers = [("Content-Type", "application/json")];
        let mut pause = Duration::from_millis(200);
        for attempt in 0..=config.retries {
            let sent = crate::http1::Endpoint::parse(&config.url).and_then(|endpoint| {
                let path = match endpoint.path.as_str() {
                    "" => "/".to_string(),
                    path => path.to_string(),
                };
                crate::http1::request(&endpoint, ("POST", &path), &headers, &body, timeout)
            });
            match sent {
                Ok(answer) if (200..300).contains(&answer.status) => break,
                outcome => {
                    let why = match outcome {
                        Ok(answer) => format!("answered {}", answer.status),
                        Err(e) => e,
                    };
                    if attempt == config.retries {
                        tracing::warn!(url = %config.url, group = %event.group, uri = %event.uri, "gateway webhook failed, event dropped: {why}");
                    } else {
                        tracing::debug!(url = %config.url, attempt, "gateway webhook failed, retrying: {why}");
                        std::thread::sleep(pause);
                        pause *= 2;
                    }
                }
            }
        }
    }
}
