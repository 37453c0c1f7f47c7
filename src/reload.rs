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
//! requests while their calls finish; `log.level`, the transaction limits
//! and timers, `security`, `auth`, `dns`, `limits.tcp` and the webhook
//! apply at once; and a change that needs a restart (a listener, the
//! registrar, `workers`, ...) is logged as such while the rest applies.

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
    /// `domain.local` at boot (a change of it needs a restart), for our
    /// identity with a reload's `security.trusted`.
    boot_domains: Vec<String>,
    dns: Arc<crate::actors::dns::Dns>,
    /// The seals of the running config's route secrets (None: none set),
    /// to see a secret file's new contents.
    config_seals: Mutex<Option<crate::proxy::seal::DialogSeals>>,
    /// One reload at a time: a second SIGHUP waits for the first.
    busy: tokio::sync::Mutex<()>,
    /// Tells systemd a reload is under way, and when it is done.
    notifier: Arc<crate::notify::Notifier>,
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
    /// Sections that changed but could not apply (why), and stay as they
    /// ran: the next reload tries them again.
    pub not_applied: Vec<String>,
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
        (log_level, registrar, dns): (
            LogLevel,
            Arc<std::sync::OnceLock<Arc<crate::registrar::Registrar>>>,
            Arc<crate::actors::dns::Dns>,
        ),
    ) -> Self {
        Reloader {
            config_seals: Mutex::new(running.security.dialog_seals().ok().flatten()),
            boot_domains: running.domain.local.clone(),
            dns,
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
            notifier: Arc::new(crate::notify::Notifier::none()),
        }
    }

    /// Reloads are reported to the service manager through `notifier`.
    pub fn notifying(mut self, notifier: Arc<crate::notify::Notifier>) -> Self {
        self.notifier = notifier;
        self
    }

    /// Reads the config file and the script again and applies what
    /// changed. Runs on the actor system (new groups start actors there);
    /// the file is read on a blocking thread.
    pub async fn reload(self: Arc<Self>) -> ReloadOutcome {
        let _one_at_a_time = self.busy.lock().await;
        self.notifier.reloading();
        let outcome = self.clone().reload_now().await;
        self.notifier.ready(if outcome.ok {
            "ready"
        } else {
            "ready; the last reload was refused"
        });
        outcome
    }

    async fn reload_now(self: Arc<Self>) -> ReloadOutcome {
        let path = self.path.clone();
        // The route secret's file is read here too, off the SIP threads.
        let loaded = tokio::task::spawn_blocking(move || {
            let new = crate::config::load(&path).map_err(|e| e.to_string())?;
            let seals = new
                .security
                .dialog_seals()
                .map_err(|e| format!("security.{}: {}", e.key, e.message))?;
            Ok::<_, String>((new, seals))
        })
        .await
        .map_err(|e| format!("reload: {e}"))
        .and_then(|loaded| loaded);
        let (new, seals) = match loaded {
            Ok(loaded) => loaded,
            Err(error) => return self.refused(error),
        };
        let old = self.running_config();
        let mut changes = diff(&old, &new);
        let seals_changed = *self.config_seals.lock().unwrap_or_else(|p| p.into_inner()) != seals;
        if seals_changed && !changes.applied.contains(&"security.route_secret") {
            // The same file, new contents.
            changes.applied.push("security.route_secret");
        }
        if let Err(error) = self.script.reload() {
            return self.refused(error);
        }
        if seals_changed {
            if seals.is_none() {
                tracing::warn!("security.route_secret removed: the running secret keeps sealing dialogs until a restart");
            }
            *self.config_seals.lock().unwrap_or_else(|p| p.into_inner()) = seals.clone();
        }
        tracing::info!(script = %self.script.path().display(), "script reloaded");
        let mut new = new;
        let (runtime_undone, mut failed) =
            self.apply(&new, &changes, seals.filter(|_| seals_changed));
        for group in &runtime_undone {
            tracing::info!(group = %group, "config reloaded: the admin API's changes to the group undone");
        }
        let reread = |auth: &Arc<AuthService>| match &new.auth {
            Some(config) if changes.applied.contains(&"auth") => {
                auth.configure(config).map_err(|e| ("auth", e))
            }
            _ => auth.reload().map_err(|e| ("auth.credentials_file", e)),
        };
        match self.auth.as_ref().map(reread) {
            Some(Ok(users)) => tracing::info!(users, "credentials reloaded"),
            Some(Err(failure)) => failed.push(failure),
            None => {}
        }
        let mut not_applied = Vec::new();
        for (section, error) in failed {
            tracing::error!(
                section,
                "{section} not applied, the running one stays: {error}"
            );
            not_applied.push(format!("{section}: {error}"));
            // Kept as it ran, so that the next reload sees the change again.
            match section {
                "dns" => new.dns = old.dns.clone(),
                "gateway.webhook" => new.gateway.webhook = old.gateway.webhook.clone(),
                "auth" => new.auth = old.auth.clone(),
                _ => {}
            }
        }
        self.tls.reload();
        log_changes(&changes);
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) = new;
        ReloadOutcome {
            ok: true,
            error: None,
            changes,
            runtime_undone,
            not_applied,
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
            not_applied: Vec::new(),
        }
    }

    /// Applies what changes in place; returns the groups whose runtime
    /// changes (the admin API's) the file undid, and the sections that
    /// failed to apply with why. `seals` are new route secrets, if any.
    fn apply(
        &self,
        new: &Config,
        changes: &ConfigChanges,
        seals: Option<crate::proxy::seal::DialogSeals>,
    ) -> (Vec<String>, Vec<(&'static str, String)>) {
        let mut failed = Vec::new();
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
        let applied = |section: &str| changes.applied.contains(&section);
        if applied("dns") {
            if let Err(e) = self.dns.reconfigure(&new.dns) {
                failed.push(("dns", e));
            }
        }
        let for_shards = changes.applied.iter().any(|s| SHARD_SECTIONS.contains(s));
        if let (true, Some(router)) = (for_shards, self.transports.router()) {
            router.reconfigure(self.shard_settings(new, changes, seals));
        }
        if applied("limits.tcp") {
            self.transports.set_tcp_limits(new.limits.tcp.clone());
        }
        if applied("gateway.webhook") {
            let events = self.gateways.events();
            if let Some(Err(e)) = events.map(|bus| bus.set_webhook(new.gateway.webhook.as_ref())) {
                failed.push(("gateway.webhook", e));
            }
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
        (undone, failed)
    }
}

impl Reloader {
    /// What the transaction shards take from `new`.
    fn shard_settings(
        &self,
        new: &Config,
        changes: &ConfigChanges,
        seals: Option<crate::proxy::seal::DialogSeals>,
    ) -> crate::actors::transaction::Reconfigure {
        let local =
            crate::proxy::LocalIdentity::new(&self.boot_domains, self.transports.listeners())
                .with_trusted(new.security.policy().trusted);
        crate::actors::transaction::Reconfigure {
            engine: crate::proxy::engine::Reconfigure {
                timers: new.transaction.settings(),
                max_transactions: new.limits.max_transactions,
                ended_bytes: new.limits.ended_transactions_mb << 20,
                udp_max_request_bytes: new.limits.udp_max_request_bytes,
                call_max: std::time::Duration::from_secs(new.gateway.call_max_secs),
                local: Arc::new(local),
                seals,
                accept_unsealed: new.security.accept_unsealed_routes,
            },
            relay_policy: Arc::new(new.security.relay_policy(self.transports.own_addresses())),
            dns_cache: changes
                .applied
                .contains(&"dns")
                .then(|| (new.dns.cache_size, new.dns.negative_ttl())),
        }
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
    for section in &changes.applied {
        tracing::info!(
            section,
            "config reloaded: {section} changed and applies now"
        );
    }
    for section in &changes.needs_restart {
        tracing::warn!(
            section,
            "config reloaded: {section} changed and needs a restart; the rest applies"
        );
    }
}
