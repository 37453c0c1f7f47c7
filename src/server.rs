//! Boot: binds the listeners, starts the transaction shards and transport
//! actors, and handles signals (SIGHUP reloads the script; SIGTERM/SIGINT stop).

use std::sync::Arc;

use actix::prelude::*;

use crate::actors::transaction::{ShardConfig, TransactionShard};
use crate::actors::transport::{Router, TcpAcceptor, Transports, UdpTransport};
use crate::config::Config;
use crate::proxy::TimerSettings;
use crate::script::{host_text, LocalIdentity, ScriptEngine};

/// How many transaction shards (and Python worker threads) to run.
fn shard_count() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8)
}

/// Runs the daemon until a stop signal. Errors are start-up failures.
pub fn run(config: Config, script: Arc<ScriptEngine>) -> Result<(), String> {
    let system = System::new();
    let started = system.block_on(async move { start(config, script).await });
    started?;
    system
        .run()
        .map_err(|e| format!("actor system failed: {e}"))
}

async fn start(config: Config, script: Arc<ScriptEngine>) -> Result<(), String> {
    let (transports, udp_sockets) = Transports::bind(&config.listen.udp, &config.listen.tcp)
        .map_err(|e| format!("cannot bind UDP listeners {:?}: {e}", config.listen.udp))?;
    let mut tcp_listeners = Vec::new();
    for addr in &config.listen.tcp {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot bind TCP listener {addr}: {e}"))?;
        tcp_listeners.push(listener);
    }

    let listen = transports.listen_addrs();
    let local = Arc::new(LocalIdentity::new(
        &config.domain.local,
        config.advertise.as_deref(),
        &listen,
    ));
    let via_host = config.advertise.clone().unwrap_or_else(|| {
        listen
            .iter()
            .find(|a| !a.ip().is_unspecified())
            .map_or_else(|| "127.0.0.1".to_string(), host_text)
    });
    let gateways = Arc::new(crate::gateway::Gateways::default());
    for group in &config.gateway.groups {
        gateways.insert(group_from_config(group));
    }
    let shard_config = Arc::new(ShardConfig {
        transports: transports.clone(),
        script: script.clone(),
        timers: TimerSettings {
            t1: config.transaction.t1(),
            t2: config.transaction.t2(),
            t4: config.transaction.t4(),
            timer_c: config.transaction.timer_c(),
        },
        local,
        gateways,
        via_host,
    });

    let mut shards = Vec::new();
    for id in 0..shard_count() {
        let arbiter = Arbiter::new();
        let shard_config = shard_config.clone();
        shards.push(TransactionShard::start_in_arbiter(
            &arbiter.handle(),
            move |_| TransactionShard::new(id, shard_config),
        ));
    }
    transports.set_router(Router::new(shards));

    for (index, socket) in udp_sockets.into_iter().enumerate() {
        let local = socket.local_addr().ok();
        UdpTransport::new(index, socket, transports.clone()).start();
        tracing::info!(addr = ?local, "listening on UDP");
    }
    for listener in tcp_listeners {
        let local = listener.local_addr().ok();
        TcpAcceptor::new(listener, transports.clone()).start();
        tracing::info!(addr = ?local, "listening on TCP");
    }

    watch_signals(script);
    tracing::info!(
        instance = %config.server.instance_id,
        shards = shard_count(),
        script = %config.script.path.display(),
        "siphon ready"
    );
    Ok(())
}

/// A gateway group as the config describes it.
pub fn group_from_config(config: &crate::config::GroupConfig) -> crate::gateway::Group {
    use crate::gateway::{Algorithm, Destination, Group};
    let algorithm = match config.algorithm {
        crate::config::Algorithm::Weighted => Algorithm::Weighted,
        crate::config::Algorithm::RoundRobin => Algorithm::RoundRobin,
        crate::config::Algorithm::Hash => Algorithm::Hash,
    };
    let destinations = config
        .destinations
        .iter()
        .map(|d| Destination {
            uri: d.uri.clone(),
            address: d.address,
            weight: d.weight,
            attrs: d.attrs.clone(),
        })
        .collect();
    Group::new(
        config.name.clone(),
        algorithm,
        destinations,
        config.probe.failure_threshold,
    )
}

fn watch_signals(script: Arc<ScriptEngine>) {
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
                _ = hup.recv() => match script.reload() {
                    Ok(()) => tracing::info!(script = %script.path().display(), "script reloaded"),
                    Err(e) => tracing::error!("script reload failed; keeping the running version: {e}"),
                },
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        tracing::info!("stopping");
        System::current().stop();
    });
}
