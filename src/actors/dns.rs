//! DNS off the SIP threads. One resolver (hickory) runs on an arbiter of
//! its own; a shard whose decision needs a name its cache does not hold
//! asks here and goes on with other calls, and the answer comes back to it
//! as a message ([`crate::actors::transaction::Resolved`]).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Arbiter, ArbiterHandle};
use arc_swap::ArcSwap;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;

use crate::config::DnsConfig;
use crate::proxy::dns::{
    naptr_protocol, sip_lookup_name, srv_name, srv_order, Answer, HostCache, SipTarget, MAX_TTL,
};
use crate::sip::Protocol;
use hickory_resolver::proto::rr::{RData, RecordType};

/// Names one shard may be looking up at once; past it a relay to yet
/// another unknown name fails at once (478) rather than queue.
const MAX_IN_FLIGHT: usize = 1024;

pub struct Dns {
    thread: ArbiterHandle,
    /// The resolver and its timeout; a reload's `dns` swaps them.
    resolution: ArcSwap<Resolution>,
    cache_size: usize,
    negative_ttl: Duration,
}

struct Resolution {
    resolver: TokioResolver,
    timeout: Duration,
}

impl Resolution {
    /// The resolver of `config`: its servers, else those of
    /// /etc/resolv.conf; /etc/hosts either way.
    fn of(config: &DnsConfig) -> Result<Resolution, String> {
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
        Ok(Resolution {
            resolver,
            timeout: config.timeout(),
        })
    }
}

impl Dns {
    /// The resolver of `config` on a thread of its own.
    pub fn start(config: &DnsConfig) -> Result<Arc<Dns>, String> {
        Ok(Arc::new(Dns {
            thread: Arbiter::new().handle(),
            resolution: ArcSwap::from_pointee(Resolution::of(config)?),
            cache_size: config.cache_size,
            negative_ttl: config.negative_ttl(),
        }))
    }

    /// A reload's `dns`: lookups from now on ask the new servers with the
    /// new timeout (the shards' caches are reset by their `Reconfigure`).
    pub fn reconfigure(&self, config: &DnsConfig) -> Result<(), String> {
        self.resolution.store(Arc::new(Resolution::of(config)?));
        Ok(())
    }

    /// An empty cache for one shard.
    pub fn host_cache(&self) -> HostCache {
        HostCache::new(self.cache_size, MAX_IN_FLIGHT, self.negative_ttl)
    }

    /// Looks up a key of the shard's cache: a host's address, or (for a
    /// [`crate::proxy::dns::sip_lookup_key`]) a SIP domain by RFC 3263.
    pub fn lookup_key(&self, key: String) -> std::pin::Pin<Box<dyn Future<Output = Answer>>> {
        match sip_lookup_name(&key) {
            Some(name) => Box::pin(self.lookup_sip(name.to_string())),
            None => Box::pin(self.lookup(key)),
        }
    }

    /// RFC 3263 §4 for a domain: NAPTR records for the SIP services we can
    /// reach (else the SRV names of each transport), SRV records in RFC 2782
    /// order, then each target's addresses. No SRV at all is an empty list:
    /// the caller then looks the host's own address up, as §4.2 says.
    pub fn lookup_sip(&self, host: String) -> impl Future<Output = Answer> + 'static {
        let (answer_to, answer) = tokio::sync::oneshot::channel();
        let resolution = self.resolution.load();
        let (resolver, timeout) = (resolution.resolver.clone(), resolution.timeout);
        self.thread.spawn(async move {
            let lookup = sip_targets(&resolver, &host);
            let found = match tokio::time::timeout(timeout * 4, lookup).await {
                Ok(answer) => answer,
                Err(_) => Answer::Unreachable,
            };
            let result = match &found {
                Answer::FoundTargets(targets, _) if !targets.is_empty() => "found",
                Answer::FoundTargets(..) => "not_found",
                _ => "timeout",
            };
            crate::metrics::get().dns_lookup(result);
            let _ = answer_to.send(found);
        });
        async move { answer.await.unwrap_or(Answer::Unreachable) }
    }

    /// Looks `host` up on the DNS thread. A timeout or a server error is
    /// [`Answer::Unreachable`].
    pub fn lookup(&self, host: String) -> impl Future<Output = Answer> + 'static {
        let (answer_to, answer) = tokio::sync::oneshot::channel();
        let resolution = self.resolution.load();
        let (resolver, timeout) = (resolution.resolver.clone(), resolution.timeout);
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

/// The records of `rtype` at `name` (an FQDN), and how long they may be
/// kept; nothing on any error.
async fn records(
    resolver: &TokioResolver,
    name: &str,
    rtype: RecordType,
) -> (Vec<RData>, Duration) {
    match resolver.lookup(name, rtype).await {
        Ok(lookup) => {
            let ttl = lookup
                .valid_until()
                .saturating_duration_since(Instant::now());
            let found = lookup.answers().iter().map(|r| r.data.clone()).collect();
            (found, ttl)
        }
        Err(_) => (Vec::new(), MAX_TTL),
    }
}

/// RFC 3263 §4.1–4.2 for `host`: see [`Dns::lookup_sip`].
async fn sip_targets(resolver: &TokioResolver, host: &str) -> Answer {
    let fqdn = |name: &str| format!("{}.", name.trim_end_matches('.'));
    let (naptrs, mut ttl) = records(resolver, &fqdn(host), RecordType::NAPTR).await;
    let mut services: Vec<(u16, u16, String, Protocol)> = naptrs
        .iter()
        .filter_map(|data| match data {
            RData::NAPTR(naptr) if naptr.flags.eq_ignore_ascii_case(b"s") => {
                let service = std::str::from_utf8(&naptr.services).ok()?;
                let protocol = naptr_protocol(service)?;
                let replacement = naptr.replacement.to_utf8();
                Some((naptr.order, naptr.preference, replacement, protocol))
            }
            _ => None,
        })
        .collect();
    services.sort_by_key(|(order, preference, ..)| (*order, *preference));
    let srv_names: Vec<(String, Protocol)> = if services.is_empty() {
        [Protocol::Udp, Protocol::Tcp, Protocol::Tls]
            .into_iter()
            .filter_map(|p| Some((srv_name(p, host)?, p)))
            .collect()
    } else {
        services
            .into_iter()
            .map(|(.., name, p)| (name, p))
            .collect()
    };
    let mut targets = Vec::new();
    for (name, protocol) in srv_names {
        let (srvs, srv_ttl) = records(resolver, &fqdn(&name), RecordType::SRV).await;
        ttl = ttl.min(srv_ttl);
        let found: Vec<(u16, u16, (String, u16))> = srvs
            .iter()
            .filter_map(|data| match data {
                RData::SRV(srv) => {
                    Some((srv.priority, srv.weight, (srv.target.to_utf8(), srv.port)))
                }
                _ => None,
            })
            .collect();
        for (target, port) in srv_order(found, |total| rand::random_range(0..=total)) {
            if let Ok(ips) = resolver.lookup_ip(fqdn(&target).as_str()).await {
                ttl = ttl.min(ips.valid_until().saturating_duration_since(Instant::now()));
                targets.extend(ips.iter().map(|ip| SipTarget {
                    addr: std::net::SocketAddr::new(ip, port),
                    protocol,
                }));
            }
        }
    }
    Answer::FoundTargets(targets, ttl)
}
