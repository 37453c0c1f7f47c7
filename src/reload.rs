//! Changing a running siphon: SIGHUP and `POST /admin/reload` read the
//! YAML again (and the script, the TLS files and the credentials file).
//!
//! The new config is loaded and validated off the SIP threads (a
//! destination's name may need a DNS lookup), then compared with the
//! running one ([`crate::config::diff`]). A config or script that does not
//! load is refused as a whole with the message `--check` gives, and the
//! running config stays. Otherwise gateway groups added or changed are
//! installed (their destinations that remain keep their health, counters,
//! calls, drain and Retry-After holds), removed groups stop taking new
//! requests while their calls finish, `log.level` applies at once, and a
//! change that needs a restart (a listener, the registrar, `workers`, ...)
//! is logged as such while the rest applies.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::actors::gateway::{GatewayService, GroupConfigs, GroupOrigin};
use crate::config::diff::{diff, ConfigChanges, EDGE_SECTIONS, SHARD_SECTIONS};
use crate::config::Config;
use crate::logging::LogLevel;
use crate::script::auth::AuthService;
use crate::script::ScriptEngine;

/// What a reload needs: where the config is, what runs now, and the parts
/// that change in place.
pub struct Reloader {
    path: PathBuf,
    running: Mutex<Config>,
    script: Arc<ScriptEngine>,
    auth: Option<Arc<AuthService>>,
    tls: Arc<crate::actors::tls::Tls>,
    gateways: Arc<GatewayService>,
    log_level: LogLevel,
    /// Reaches the transaction shards (timers and limits).
    transports: crate::actors::transport::Transports,
    /// The edge guard, for its rates and scanner list.
    edge: Arc<crate::actors::edge::Edge>,
    /// The registrar, for its expiry bounds.
    registrar: Arc<std::sync::OnceLock<Arc<crate::registrar::Registrar>>>,
    /// One reload at a time: a second SIGHUP waits for the first.
    busy: tokio::sync::Mutex<()>,
}

/// The result of one reload, logged and answered by `POST /admin/reload`.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadOutcome {
    pub ok: bool,
    /// Why the new config was refused (as `--check` says it).
    pub error: Option<String>,
    pub changes: ConfigChanges,
    /// Groups the admin API had changed or added, back to the file's.
    pub runtime_undone: Vec<String>,
}

impl Reloader {
    pub fn new(
        path: PathBuf,
        running: Config,
        script: Arc<ScriptEngine>,
        (auth, tls): (Option<Arc<AuthService>>, Arc<crate::actors::tls::Tls>),
        (gateways, transports, edge): (
            Arc<GatewayService>,
            crate::actors::transport::Transports,
            Arc<crate::actors::edge::Edge>,
        ),
        (log_level, registrar): (
            LogLevel,
            Arc<std::sync::OnceLock<Arc<crate::registrar::Registrar>>>,
        ),
    ) -> Self {
        Reloader {
            path,
            running: Mutex::new(running),
            script,
            auth,
            tls,
            gateways,
            log_level,
            transports,
            edge,
            registrar,
            busy: tokio::sync::Mutex::new(()),
        }
    }

    /// Reads the config file and the script again and applies what
    /// changed. Runs on the actor system (new groups start actors there);
    /// the file is read on a blocking thread.
    pub async fn reload(self: Arc<Self>) -> ReloadOutcome {
        let _one_at_a_time = self.busy.lock().await;
        let path = self.path.clone();
        let loaded = tokio::task::spawn_blocking(move || crate::config::load(&path))
            .await
            .map_err(|e| format!("reload: {e}"))
            .and_then(|loaded| loaded.map_err(|e| e.to_string()));
        let new = match loaded {
            Ok(new) => new,
            Err(error) => return self.refused(error),
        };
        let changes = diff(&self.running_config(), &new);
        if let Err(error) = self.script.reload() {
            return self.refused(error);
        }
        tracing::info!(script = %self.script.path().display(), "script reloaded");
        let runtime_undone = self.apply(&new, &changes);
        for group in &runtime_undone {
            tracing::info!(group = %group, "config reloaded: the admin API's changes to the group undone");
        }
        match self.auth.as_ref().map(|auth| auth.reload()) {
            Some(Ok(users)) => tracing::info!(users, "credentials reloaded"),
            Some(Err(e)) => {
                tracing::error!("credentials reload failed; keeping the old users: {e}")
            }
            None => {}
        }
        self.tls.reload();
        log_changes(&changes);
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) = new;
        ReloadOutcome {
            ok: true,
            error: None,
            changes,
            runtime_undone,
        }
    }

    /// The config running now.
    pub fn running_config(&self) -> Config {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn refused(&self, error: String) -> ReloadOutcome {
        tracing::error!("reload refused; the running config stays: {error}");
        ReloadOutcome {
            ok: false,
            error: Some(error),
            changes: ConfigChanges::default(),
            runtime_undone: Vec::new(),
        }
    }

    /// Applies what changes in place; returns the groups whose runtime
    /// changes (the admin API's) the file undid.
    fn apply(&self, new: &Config, changes: &ConfigChanges) -> Vec<String> {
        // The script's groups are the script's (it wins at boot as well).
        let running = self.gateways.all_group_configs();
        let origin_of = |name: &str| running.iter().find(|(n, _)| n == name).map(|(_, c)| c);
        for name in &changes.groups_removed {
            if origin_of(name).is_none_or(|c| c.origin != GroupOrigin::Script) {
                self.gateways.remove_group(name);
            }
        }
        let mut undone = Vec::new();
        let in_file = |name: &str| new.gateway.groups.iter().any(|g| g.name == name);
        for (name, configs) in &running {
            if configs.origin == GroupOrigin::Admin && !in_file(name) {
                self.gateways.remove_group(name);
                undone.push(name.clone());
            }
        }
        for group in &new.gateway.groups {
            let changed = changes.groups_to_install(new).any(|g| g.name == group.name);
            let install = match origin_of(&group.name) {
                Some(c) if c.origin == GroupOrigin::Script => false,
                // Gone or changed at run time: the file's version again.
                None
                | Some(GroupConfigs {
                    origin: GroupOrigin::Admin,
                    ..
                }) => {
                    if !changes.groups_added.contains(&group.name) {
                        undone.push(group.name.clone());
                    }
                    true
                }
                Some(c) if c.source() == "runtime" => {
                    undone.push(group.name.clone());
                    true
                }
                Some(_) => changed,
            };
            if install {
                self.gateways.install(group, GroupOrigin::File);
            }
        }
        let for_shards = changes.applied.iter().any(|s| SHARD_SECTIONS.contains(s));
        if let (true, Some(router)) = (for_shards, self.transports.router()) {
            router.reconfigure(crate::proxy::engine::Reconfigure {
                timers: new.transaction.settings(),
                max_transactions: new.limits.max_transactions,
                udp_max_request_bytes: new.limits.udp_max_request_bytes,
                call_max: std::time::Duration::from_secs(new.gateway.call_max_secs),
            });
        }
        if changes.applied.iter().any(|s| EDGE_SECTIONS.contains(s)) {
            self.edge.set_policy(new.security.policy());
        }
        if let (true, Some(registrar)) = (
            changes.applied.contains(&"registrar.expires"),
            self.registrar.get(),
        ) {
            registrar.set_limits(crate::registrar::Limits::from(&new.registrar));
        }
        if changes.applied.contains(&"log.level") {
            match self.log_level.set(&new.log.level) {
                Ok(true) => tracing::info!(level = %new.log.level, "log level changed"),
                Ok(false) => tracing::info!("log.level changed, but RUST_LOG decides the level"),
                Err(e) => tracing::error!("log.level: {e}"),
            }
        }
        undone
    }
}

/// One line per change, and one per section that needs a restart.
fn log_changes(changes: &ConfigChanges) {
    if changes.is_empty() {
        tracing::info!("config reloaded: nothing changed");
        return;
    }
    for group in &changes.groups_added {
        tracing::info!(group = %group, "config reloaded: gateway group added");
    }
    for group in &changes.groups_removed {
        tracing::info!(group = %group, "config reloaded: gateway group removed; its calls in progress go on");
    }
    for group in &changes.groups_changed {
        for change in &group.changes {
            tracing::info!(group = %group.group, "config reloaded: {change}");
        }
    }
    for section in &changes.needs_restart {
        tracing::warn!(
            section,
            "config reloaded: {section} changed and needs a restart; the rest applies"
        );
    }
}
