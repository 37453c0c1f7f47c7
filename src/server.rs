//! Boot: binds the listeners, starts the transaction shards and transport
//! actors, and handles signals (SIGHUP reloads the script; SIGTERM/SIGINT stop).

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::actors::transaction::{ShardConfig, TransactionShard};
use crate::actors::transport::{Datagrams, Router, TcpAcceptor, Transports, UdpTransport};
use crate::config::Config;
use crate::lifecycle::Lifecycle;
use crate::script::{LocalIdentity, ScriptEngine, ScriptServices};

/// How many transaction shards to run:
/// `server.workers`, or one per core (at most 8) when it is 0.
fn shard_count(configured: usize) -> usize {
    match configured {
        0 => std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 8),
        n => n,
    }
}

/// What boot knows besides the config: where the config came from (a
/// reload reads it again), the handle that changes the log level, and the
/// gateway groups (the script's `gateway` namespace holds them too).
pub struct Boot {
    pub config_path: std::path::PathBuf,
    pub log_level: crate::logging::LogLevel,
    pub gateways: Arc<crate::actors::gateway::GatewayService>,
}

/// Runs the daemon until a stop signal. Errors are start-up failures.
pub fn run(
    config: Config,
    script: Arc<ScriptEngine>,
    services: ScriptServices,
    boot: Boot,
) -> Result<(), String> {
    let system = System::new();
    let started = system.block_on(async move { start(config, script, services, boot).await });
    started?;
    system
        .run()
        .map_err(|e| format!("actor system failed: {e}"))
}

async fn start(
    config: Config,
    script: Arc<ScriptEngine>,
    services: ScriptServices,
    boot: Boot,
) -> Result<(), String> {
    // listen.tls, then listen.wss: the order Transports::bind numbers them.
    let tls_listens: Vec<_> = config
        .listen
        .tls
        .iter()
        .cloned()
        .chain(config.listen.wss.iter().filter_map(|wss| wss.tls_listen()))
        .collect();
    let tls = crate::actors::tls::Tls::load(&tls_listens, &config.tls)?;
    let (transports, udp_sockets, stream_sockets) =
        Transports::bind(&config.listen, config.advertise.as_deref()).map_err(|e| e.to_string())?;
    let http = HttpListeners::bind(&config)?;
    let edge = crate::actors::edge::Edge::new(config.security.policy());
    edge.exempt_destinations(boot.gateways.gateways());
    let transports = transports
        .with_limits(edge.clone(), config.limits.tcp.clone())
        .with_tls(tls.clone());
    let transports = match &config.capture.hep {
        Some(hep) => transports.with_capture(crate::actors::capture::Capture::start(hep)?),
        None => transports,
    };
    let mut stream_listeners = Vec::new();
    for stream in stream_sockets {
        let listener = tokio::net::TcpListener::from_std(stream.socket)
            .map_err(|e| format!("cannot listen on TCP: {e}"))?;
        let acceptor = stream.tls.and_then(|index| tls.acceptor(index));
        stream_listeners.push((listener, stream.listener, acceptor, stream.websocket));
    }
    for listener in transports.listeners() {
        tracing::debug!(transport = listener.protocol.as_str(), local = %listener.local, sent_by = %listener.sent_by, "listener");
    }

    let listen = transports.listen_addrs();
    let local = Arc::new(
        LocalIdentity::new(&config.domain.local, transports.listeners())
            .with_trusted(config.security.policy().trusted),
    );
    // Process-wide, so the script's `gateway` namespace sees the same groups.
    let gateway_service = boot.gateways.clone();
    for group in &config.gateway.groups {
        gateway_service.add_configured_group(group);
    }
    let gateways = gateway_service.gateways();
    if config.gateway.share_health == crate::config::ShareHealth::Redis {
        let share = crate::actors::health_share::HealthShare::start(
            &config.registrar.redis,
            &config.server.instance_id,
            gateway_service.clone(),
        )?;
        gateway_service.share_health(share);
    }
    // Registrar before the listeners: with Redis it restores every binding
    // before "siphon ready".
    let registrar = crate::registrar::Registrar::start(
        &config.registrar,
        crate::registrar::node_domains(&config.domain.local, config.advertise.as_deref(), &listen),
        (&config.server.instance_id, &node_identity(&listen)),
        &crate::metrics::actors().registrar,
    )?;
    let _ = services.registrar.set(registrar.clone());
    let lifecycle = Arc::new(crate::lifecycle::Lifecycle::default());
    let shards_wanted = shard_count(config.server.workers);
    let ingress = Arc::new(crate::actors::transport::IngressGate::new(shards_wanted));
    let dns = crate::actors::dns::Dns::start(&config.dns)?;
    let seals = match config.security.dialog_seals() {
        Ok(Some(seals)) => seals,
        Ok(None) => {
            tracing::info!("security.route_secret is not set: a random one seals this run's Record-Routes, so dialogs do not outlive it nor pass to another node");
            crate::proxy::seal::DialogSeals::new(&rand::random::<[u8; 32]>(), None)
        }
        Err(e) => return Err(format!("security.{}: {}", e.key, e.message)),
    };
    let executors = crate::actors::executor::ExecutorPool::start(
        script.clone(),
        config.script.workers,
        config.script.abandon_after(),
    )?;
    let shard_config = Arc::new(ShardConfig {
        dns: dns.clone(),
        seals,
        accept_unsealed: config.security.accept_unsealed_routes,
        relay_policy: Arc::new(config.security.relay_policy(transports.own_addresses())),
        flow_tokens: crate::proxy::flow::FlowTokens::new(rand::random()),
        registrar: registrar.clone(),
        ingress: ingress.clone(),
        lifecycle: lifecycle.clone(),
        transports: transports.clone(),
        executors,
        script_timeout: Duration::from_millis(config.script.timeout_ms),
        timers: config.transaction.settings(),
        local,
        gateways,
        gateway_service: gateway_service.clone(),
        drain_secs: config.server.drain_secs,
        max_transactions: (config.limits.max_transactions / shards_wanted).max(1),
        ended_bytes: (config.limits.ended_transactions_mb << 20) / shards_wanted,
        udp_max_request_bytes: config.limits.udp_max_request_bytes,
        call_max: Duration::from_secs(config.gateway.call_max_secs),
        max_tracked_calls: (crate::proxy::capacity::MAX_TRACKED_CALLS / shards_wanted).max(1),
        traces: match &config.tracing.otlp {
            Some(otlp) => Some(crate::actors::otlp::TraceExport::start(
                otlp,
                &config.server.instance_id,
            )?),
            None => None,
        },
    });

    let mut shards = Vec::new();
    let mut udp_sockets = Some(udp_sockets);
    if shards_wanted == 1 {
        // A lone shard runs on the main arbiter and reads the UDP sockets
        // itself: a datagram is handled where it is received, with no
        // mailbox hop and no other thread to wake.
        let sockets = udp_sockets.take().unwrap_or_default();
        let shard_config = shard_config.clone();
        shards.push(TransactionShard::create(move |ctx| {
            for (index, socket) in sockets.into_iter().enumerate() {
                tracing::info!(addr = %shown(socket.local_addr().ok()), "listening on UDP");
                ctx.add_stream(Datagrams::new(index, socket));
            }
            TransactionShard::new(0, shard_config)
        }));
    } else {
        for id in 0..shards_wanted {
            let arbiter = Arbiter::new();
            let shard_config = shard_config.clone();
            shards.push(TransactionShard::start_in_arbiter(
                &arbiter.handle(),
                move |_| TransactionShard::new(id, shard_config),
            ));
        }
    }
    transports.set_router(Router::new(shards, ingress));
    let event_script = script.clone();
    let events = crate::actors::events::EventBus::start(
        &config.server.instance_id,
        Some(Box::new(move |event| {
            event_script.run_gateway_change(event)
        })),
        config.gateway.webhook.as_ref(),
    )?;
    gateway_service.publish_events(events);
    gateway_service.start(transports.clone());

    for (index, socket) in udp_sockets.into_iter().flatten().enumerate() {
        let local = socket.local_addr().ok();
        UdpTransport::new(index, socket, transports.clone()).start();
        tracing::info!(addr = %shown(local), "listening on UDP");
    }
    for (listener, index, acceptor, websocket) in stream_listeners {
        let local = listener.local_addr().ok();
        let transport = transports.listeners()[index].protocol.as_str();
        TcpAcceptor::new(listener, index, acceptor, websocket, transports.clone()).start();
        tracing::info!(addr = %shown(local), "listening on {transport}");
    }

    let notifier = Arc::new(crate::notify::Notifier::from_env());
    let reloader = Arc::new(
        crate::reload::Reloader::new(
            boot.config_path,
            config.clone(),
            script.clone(),
            (services.auth.clone(), tls),
            (gateway_service.clone(), transports.clone(), edge.clone()),
            (boot.log_level, services.registrar.clone(), dns),
        )
        .notifying(notifier.clone()),
    );
    start_http(
        &config,
        http,
        lifecycle.clone(),
        (&services, gateway_service.clone()),
        (edge.clone(), reloader.clone()),
    )
    .await?;
    // The edge's summary line, and the sweep of its tables, once a minute
    // (or at the metrics log interval when that is shorter).
    let summary_every = match config.metrics.log_interval_secs {
        0 => 60,
        secs => secs.min(60),
    };
    edge.spawn_summary(Duration::from_secs(summary_every));
    log_actor_metrics(Duration::from_secs(config.metrics.log_interval_secs));
    if let Some(auth) = services.auth.clone() {
        auth.ban_at(edge.clone() as Arc<dyn crate::security::Banning>);
        sweep_nonce_counts(auth);
    }
    watch_signals(
        reloader,
        (lifecycle.clone(), notifier.clone()),
        Duration::from_secs(config.server.drain_secs),
    );
    lifecycle.set_ready();
    notifier.ready("ready");
    tracing::info!(
        instance = %config.server.instance_id,
        shards = shards_wanted,
        script = %config.script.path.display(),
        "siphon ready"
    );
    Ok(())
}

/// SIGHUP reloads the config and the script; SIGTERM/SIGINT drain, then
/// stop.
fn watch_signals(
    reloader: Arc<crate::reload::Reloader>,
    (lifecycle, notifier): (Arc<Lifecycle>, Arc<crate::notify::Notifier>),
    drain: Duration,
) {
    use tokio::signal::unix::{signal, SignalKind};
    actix::spawn(async move {
        let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::hangup()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading the config and the script");
                    reloader.clone().reload().await;
                }
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        notifier.stopping();
        drain_then_stop(lifecycle, drain, async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        })
        .await;
    });
}

/// Refuses new dialogs, waits for the transactions in flight (at most
/// `drain`), then stops the actor system. A second signal stops at once.
async fn drain_then_stop(
    lifecycle: Arc<Lifecycle>,
    drain: Duration,
    second_signal: impl std::future::Future<Output = ()>,
) {
    lifecycle.start_draining();
    tracing::info!(
        drain_secs = drain.as_secs_f64(),
        "draining: new calls get 503"
    );
    let deadline = tokio::time::Instant::now() + drain;
    let idle = async {
        // Let in-flight dialogs send their BYE through us, however quiet the
        // transaction count looks at this instant.
        tokio::time::sleep(Duration::from_millis(200)).await;
        while crate::metrics::get().transactions_active.get() > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::select! {
        _ = idle => tracing::info!("drained: no transactions left"),
        _ = tokio::time::sleep_until(deadline) => tracing::info!("drain time is up"),
        _ = second_signal => tracing::info!("second stop signal"),
    }
    tracing::info!("stopping");
    System::current().stop();
}

/// Forgets the nonce counts of expired nonces once a minute.
fn sweep_nonce_counts(auth: Arc<crate::script::auth::AuthService>) {
    actix::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(60));
        loop {
            ticker.tick().await;
            auth.sweep(crate::registrar::unix_now());
        }
    });
}

/// Logs each actor kind's figures every `interval` (0 turns it off).
fn log_actor_metrics(interval: Duration) {
    if interval.is_zero() {
        return;
    }
    actix::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            crate::metrics::log_actor_stats(interval);
        }
    });
}

/// Starts the admin API and the Prometheus endpoint when configured.
async fn start_http(
    config: &Config,
    http: HttpListeners,
    lifecycle: Arc<Lifecycle>,
    (services, gateways): (&ScriptServices, Arc<crate::actors::gateway::GatewayService>),
    (edge, reloader): (Arc<crate::actors::edge::Edge>, Arc<crate::reload::Reloader>),
) -> Result<(), String> {
    let ctx = Arc::new(crate::admin::AdminContext {
        lifecycle,
        instance_id: config.server.instance_id.clone(),
        gateways,
        registrations: services
            .registrar
            .get()
            .map(|r| r.clone() as Arc<dyn crate::admin::RegistrationAdmin>),
        metrics: crate::metrics::get(),
        edge,
        reloader: Some(reloader),
        token: config
            .admin
            .bearer_token()
            .map_err(|e| format!("admin.{}: {}", e.key, e.message))?,
        metrics_token: config
            .metrics
            .prometheus
            .as_ref()
            .and_then(|p| p.token.clone())
            .filter(|t| !t.trim().is_empty()),
    });
    let tokio_listener = |listener: std::net::TcpListener| {
        tokio::net::TcpListener::from_std(listener).map_err(|e| format!("admin/metrics: {e}"))
    };
    if let Some(listener) = http.admin {
        let addr = listener.local_addr().ok();
        crate::admin::spawn_admin(tokio_listener(listener)?, ctx.clone());
        tracing::info!(addr = %shown(addr), "admin API listening");
    }
    if let Some(listener) = http.metrics {
        let addr = listener.local_addr().ok();
        crate::admin::spawn_metrics(tokio_listener(listener)?, ctx);
        tracing::info!(addr = %shown(addr), "Prometheus metrics listening");
    }
    Ok(())
}

/// The admin API's and Prometheus' sockets, bound before any actor starts:
/// a port in use is then a plain error, with nothing to tear down.
struct HttpListeners {
    admin: Option<std::net::TcpListener>,
    metrics: Option<std::net::TcpListener>,
}

impl HttpListeners {
    fn bind(config: &Config) -> Result<HttpListeners, String> {
        let bind = |what: &str, addr: std::net::SocketAddr| {
            let listener = std::net::TcpListener::bind(addr)
                .map_err(|e| crate::actors::transport::bind_failure(what, addr, &e))?;
            listener
                .set_nonblocking(true)
                .map_err(|e| format!("{what} {addr}: {e}"))?;
            Ok::<_, String>(listener)
        };
        Ok(HttpListeners {
            admin: config
                .admin
                .listen
                .map(|addr| bind("admin.listen", addr))
                .transpose()?,
            metrics: config
                .metrics
                .prometheus
                .as_ref()
                .map(|p| bind("metrics.prometheus.listen", p.listen))
                .transpose()?,
        })
    }
}

/// What tells this node from another with the same `instance_id`: the
/// host's name and the SIP addresses it listens on.
fn node_identity(listen: &[std::net::SocketAddr]) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let addresses: Vec<String> = listen.iter().map(ToString::to_string).collect();
    format!("{} {}", host.trim(), addresses.join(","))
}

/// An address for a log line: `127.0.0.1:5060`, or `-`.
fn shown(addr: Option<std::net::SocketAddr>) -> String {
    addr.map_or_else(|| "-".to_string(), |a| a.to_string())
}
