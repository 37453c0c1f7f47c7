//! `gateway.share_health: redis`: each node publishes the changes of its own
//! verdict on its destinations (probe, passive, Retry-After, script and admin
//! marks), and every few seconds the ones it still finds down, on the channel
//! `<registrar.redis.key_prefix>health`; it hears the other nodes' on the
//! same channel and hands them to the group actors, which keep a destination
//! a peer finds down out of selection (`gateway::share`).
//!
//! Redis work runs on a thread of its own, so the SIP threads never wait on
//! it: a group actor only queues its news ([`HealthShare::publish`]). Losing
//! Redis loses news, never a call: a peer's report runs out by itself, and
//! the renewals say again what is still down once Redis is back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use crate::actors::gateway::GatewayService;
use crate::config::RedisConfig;
use crate::gateway::share::HealthNews;
use crate::registrar::redis_store::Link;

/// News waiting to be published; more are dropped (renewals repeat them).
const OUTBOX: usize = 1024;
/// How long after a lost or failed subscription it is tried again.
const RETRY: Duration = Duration::from_millis(500);
/// A subscription is checked this often, so a server that stopped answering
/// (not just one that closed the connection) is left for the current one.
const PING_EVERY: Duration = Duration::from_secs(1);
/// Generous: a Redis busy for a moment (a fork, a slow command) is not gone.
const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// The most a connect and SUBSCRIBE may take.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);

/// This node's side of the shared channel; cheap to clone.
#[derive(Clone)]
pub struct HealthShare {
    node: Arc<str>,
    /// Stamped on this process's news (see [`HealthNews::session`]).
    session: u64,
    outbox: tokio::sync::mpsc::Sender<HealthNews>,
}

impl HealthShare {
    /// Connects to the Redis `redis` names (in the background: a Redis that
    /// is down is retried) and starts the thread that publishes this
    /// node's news and delivers the others' to `gateways`.
    pub fn start(
        redis: &RedisConfig,
        node: &str,
        gateways: Arc<GatewayService>,
    ) -> Result<HealthShare, String> {
        let link = Arc::new(Link::new(redis)?);
        let channel = format!("{}health", redis.key_prefix);
        let (outbox, inbox) = tokio::sync::mpsc::channel(OUTBOX);
        let share = HealthShare {
            node: Arc::from(node),
            session: rand::random(),
            outbox,
        };
        let me = Me {
            node: share.node.clone(),
            session: share.session,
            warned_twin: AtomicBool::new(false),
        };
        crate::registrar::spawn_runtime_thread("health-share", move |runtime| {
            runtime.block_on(async {
                futures_util::future::join(
                    publish_all(&link, &channel, inbox),
                    listen(&link, &channel, &me, &gateways),
                )
                .await;
            });
        })?;
        Ok(share)
    }

    /// This node's name on the channel (`server.instance_id`).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Queues news for the channel; never waits.
    pub fn publish(&self, mut news: HealthNews) {
        news.session = self.session;
        if let Err(e) = self.outbox.try_send(news) {
            tracing::debug!("gateway.share_health: news not queued ({e})");
        }
    }
}

/// Publishes the queued news in order. A failure is logged once until a
/// publish works again.
async fn publish_all(
    link: &Link,
    channel: &str,
    mut inbox: tokio::sync::mpsc::Receiver<HealthNews>,
) {
    let mut failing = false;
    while let Some(news) = inbox.recv().await {
        let payload = news.encode();
        // A connection that broke since the last news (the primary died)
        // fails once and is made again: that news is sent on the new one.
        let sent = match link.publish(channel, &payload).await {
            Err(_) => link.publish(channel, &payload).await,
            sent => sent,
        };
        match sent {
            Ok(()) if failing => {
                failing = false;
                tracing::info!(store = %link.name, "gateway.share_health: publishing again");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(
                    store = %link.name,
                    "gateway.share_health: cannot publish ({e}); news is dropped until Redis answers"
                );
            }
            Err(e) => tracing::debug!("gateway.share_health: cannot publish ({e})"),
        }
    }
}

/// Who this process is on the channel.
struct Me {
    node: Arc<str>,
    session: u64,
    /// Another process with this `instance_id` was reported once.
    warned_twin: AtomicBool,
}

/// Subscribes, and hands every other node's news to the group actors;
/// subscribes again (through Sentinel: to the primary of the moment) when
/// the connection ends or stops answering.
async fn listen(link: &Link, channel: &str, me: &Me, gateways: &GatewayService) {
    let mut failing = false;
    let mut subscribed_once = false;
    loop {
        let subscribed = tokio::time::timeout(SUBSCRIBE_TIMEOUT, link.subscribe(channel))
            .await
            .unwrap_or_else(|_| {
                Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "no answer to SUBSCRIBE",
                )))
            });
        match subscribed {
            Ok(pubsub) => {
                if !subscribed_once {
                    subscribed_once = true;
                    tracing::info!(store = %link.name, %channel, "sharing gateway health");
                } else if failing {
                    tracing::info!(store = %link.name, "gateway.share_health: subscribed again");
                }
                let (mut sink, mut stream) = pubsub.split();
                let mut ping = tokio::time::interval(PING_EVERY);
                loop {
                    tokio::select! {
                        message = stream.next() => match message {
                            Some(message) => deliver(message.get_payload_bytes(), me, gateways),
                            None => break,
                        },
                        _ = ping.tick() => {
                            let answer = tokio::time::timeout(PING_TIMEOUT, sink.ping::<redis::Value>()).await;
                            if !matches!(answer, Ok(Ok(_))) {
                                break;
                            }
                        }
                    }
                }
                failing = true;
                tracing::warn!(
                    store = %link.name,
                    "gateway.share_health: the subscription ended; subscribing again"
                );
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(
                    store = %link.name,
                    "gateway.share_health: cannot subscribe ({e}); other nodes' news is not heard until Redis answers"
                );
            }
            Err(e) => tracing::debug!("gateway.share_health: cannot subscribe ({e})"),
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// One message off the channel: another node's news goes to its group.
fn deliver(payload: &[u8], me: &Me, gateways: &GatewayService) {
    match HealthNews::decode(payload) {
        Ok(news) if *news.node == *me.node => {
            if news.session != me.session && !me.warned_twin.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    node = %news.node,
                    "gateway.share_health: another process shares health as this node's \
                     instance_id; its news is ignored (give every node its own server.instance_id)"
                );
            }
        }
        Ok(news) => gateways.peer_news(news),
        Err(e) => tracing::debug!("gateway.share_health: a message that is not news ({e})"),
    }
}
