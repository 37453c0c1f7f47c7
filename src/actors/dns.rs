//! DNS off the SIP threads. One resolver (hickory) runs on an arbiter of
//! its own; a shard whose decision needs a name its cache does not hold
//! asks here and goes on with other calls, and the answer comes back to it
//! as a message ([`crate::actors::transaction::Resolved`]).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Arbiter, ArbiterHandle};
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;

use crate::config::DnsConfig;
use crate::proxy::dns::{Answer, HostCache, MAX_TTL};

/// Names one shard may be looking up at once; past it a relay to yet
/// another unknown name fails at once (478) rather than queue.
const MAX_IN_FLIGHT: usize = 1024;

pub struct Dns {
    thread: ArbiterHandle,
    resolver: TokioResolver,
    timeout: Duration,
    cache_size: usize,
    negative_ttl: Duration,
}

impl Dns {
    /// The resolver of `config`: its servers, else those of
    /// /etc/resolv.conf; /etc/hosts either way.
    pub fn start(config: &DnsConfig) -> Result<Arc<Dns>, String> {
        let servers = config.server_addresses();
        let mut builder = if servers.is_empty() {
            TokioResolver::builder_tokio().unwrap_or_else(|error| {
                tracing::warn!(%error, "cannot read the system's DNS configuration; only /etc/hosts names resolve (set dns.servers)");
                TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(Vec::new()),
                    TokioRuntimeProvider::default(),
                )
            })
        } else {
            let name_servers = servers
                .iter()
                .map(|server| {
                    let connections = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
                        .into_iter()
                        .map(|mut connection| {
                            connection.port = server.port();
                            connection
                        })
                        .collect();
                    NameServerConfig::new(server.ip(), true, connections)
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(name_servers),
                TokioRuntimeProvider::default(),
            )
        };
        let options: &mut ResolverOpts = builder.options_mut();
        options.timeout = config.timeout();
        options.attempts = 1;
        options.cache_size = config.cache_size as u64;
        options.positive_max_ttl = Some(MAX_TTL);
        options.negative_max_ttl = Some(config.negative_ttl());
        let resolver = builder
            .build()
            .map_err(|error| format!("dns: cannot build the resolver: {error}"))?;
        Ok(Arc::new(Dns {
            thread: Arbiter::new().handle(),
            resolver,
            timeout: config.timeout(),
            cache_size: config.cache_size,
            negative_ttl: config.negative_ttl(),
        }))
    }

    /// An empty cache for one shard.
    pub fn host_cache(&self) -> HostCache {
        HostCache::new(self.cache_size, MAX_IN_FLIGHT, self.negative_ttl)
    }

    /// Looks `host` up on the DNS thread. A timeout or a server error is
    /// [`Answer::Unreachable`].
    pub fn lookup(&self, host: String) -> impl Future<Output = Answer> + 'static {
        let (answer_to, answer) = tokio::sync::oneshot::channel();
        let resolver = self.resolver.clone();
        let timeout = self.timeout;
        self.thread.spawn(async move {
            let outcome = tokio::time::timeout(timeout, resolver.lookup_ip(host.as_str())).await;
            let (found, result) = match outcome {
                Ok(Ok(lookup)) => match lookup.iter().next() {
                    Some(ip) => {
                        let ttl = lookup.valid_until().saturating_duration_since(Instant::now());
                        (Answer::Found(ip, ttl), "found")
                    }
                    None => (Answer::NotFound, "not_found"),
                },
                Ok(Err(error)) if error.is_no_records_found() => {
                    (Answer::NotFound, "not_found")
                }
                Ok(Err(error)) => {
                    tracing::debug!(%host, %error, "DNS lookup failed");
                    (Answer::Unreachable, "error")
                }
                Err(_) => {
                    tracing::debug!(%host, timeout_ms = timeout.as_millis() as u64, "DNS lookup timed out");
                    (Answer::Unreachable, "timeout")
                }
            };
            crate::metrics::get().dns_lookup(result);
            let _ = answer_to.send(found);
        });
        async move { answer.await.unwrap_or(Answer::Unreachable) }
    }
}
