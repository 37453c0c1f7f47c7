//! What changed between two configs, for a reload (SIGHUP, `POST
//! /admin/reload`) and `--check`: the gateway groups and destinations
//! added, removed or changed (with their fields), the sections that apply
//! in place, and those that need a restart (a socket to rebind, a backend
//! to reconnect, threads to respawn).

use serde::Serialize;

use super::{Config, DestinationConfig, GroupConfig};

/// The difference between a running config and a new one.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ConfigChanges {
    pub groups_added: Vec<String>,
    pub groups_removed: Vec<String>,
    pub groups_changed: Vec<GroupChange>,
    /// Sections that changed and apply without a restart.
    pub applied: Vec<&'static str>,
    /// Sections that changed and take effect only after a restart.
    pub needs_restart: Vec<&'static str>,
}

/// One group that is in both configs and differs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupChange {
    pub group: String,
    /// One line per difference: `destination sip:b added`, `weight of
    /// sip:a: 1 -> 2`, `algorithm: hash -> weighted`.
    pub changes: Vec<String>,
}

impl ConfigChanges {
    pub fn is_empty(&self) -> bool {
        self.groups_added.is_empty()
            && self.groups_removed.is_empty()
            && self.groups_changed.is_empty()
            && self.applied.is_empty()
            && self.needs_restart.is_empty()
    }

    /// The gateway groups to (re)install: added or changed.
    pub fn groups_to_install<'a>(
        &'a self,
        new: &'a Config,
    ) -> impl Iterator<Item = &'a GroupConfig> + 'a {
        new.gateway.groups.iter().filter(|group| {
            self.groups_added.contains(&group.name)
                || self.groups_changed.iter().any(|c| c.group == group.name)
        })
    }
}

/// The sections that apply in place when they change (`auth` only while
/// there is one before and after: the script's `auth` needs it at boot).
const IN_PLACE: [&str; 17] = [
    "log.level",
    "auth",
    "security.rate_limit",
    "security.scanner_user_agents",
    "security.on_limit",
    "security.trusted",
    "security.route_secret",
    "security.relay_to",
    "registrar.expires",
    "transaction",
    "limits.max_transactions",
    "limits.ended_transactions_mb",
    "limits.udp_max_request_bytes",
    "limits.tcp",
    "dns",
    "gateway.call_max_secs",
    "gateway.webhook",
];

/// The sections the edge guard applies.
pub const EDGE_SECTIONS: [&str; 4] = [
    "security.rate_limit",
    "security.scanner_user_agents",
    "security.on_limit",
    "security.trusted",
];

/// Whether a change of these sections reaches the transaction shards.
pub const SHARD_SECTIONS: [&str; 9] = [
    "transaction",
    "limits.max_transactions",
    "limits.ended_transactions_mb",
    "limits.udp_max_request_bytes",
    "gateway.call_max_secs",
    "security.trusted",
    "security.route_secret",
    "security.relay_to",
    "dns",
];

/// What differs between `old` and `new`.
pub fn diff(old: &Config, new: &Config) -> ConfigChanges {
    let mut changes = ConfigChanges::default();
    for group in &new.gateway.groups {
        match old.gateway.groups.iter().find(|g| g.name == group.name) {
            None => changes.groups_added.push(group.name.clone()),
            Some(before) => {
                let lines = group_changes(before, group);
                if !lines.is_empty() {
                    changes.groups_changed.push(GroupChange {
                        group: group.name.clone(),
                        changes: lines,
                    });
                }
            }
        }
    }
    changes.groups_removed = old
        .gateway
        .groups
        .iter()
        .filter(|g| !new.gateway.groups.iter().any(|n| n.name == g.name))
        .map(|g| g.name.clone())
        .collect();

    // Whether a field (a path under the config) differs.
    macro_rules! differs {
        ($($path:tt)+) => { old.$($path)+ != new.$($path)+ };
    }
    let route_secret = |c: &Config| {
        let s = &c.security;
        (
            s.route_secret.clone(),
            s.route_secret_file.clone(),
            s.route_secret_previous.clone(),
            s.accept_unsealed_routes,
        )
    };
    let sections: Vec<(&'static str, bool)> = vec![
        ("log.level", differs!(log.level)),
        ("capture", differs!(capture)),
        ("tracing", differs!(tracing)),
        ("auth", differs!(auth)),
        ("listen", differs!(listen)),
        ("advertise", differs!(advertise)),
        ("domain", differs!(domain)),
        ("script.path", differs!(script.path)),
        ("script.timeout_ms", differs!(script.timeout_ms)),
        ("script.workers", differs!(script.workers)),
        ("script.abandon_ms", differs!(script.abandon_ms)),
        (
            "registrar.backend",
            differs!(registrar.backend) || differs!(registrar.redis),
        ),
        (
            "registrar.expires",
            expiry(&old.registrar) != expiry(&new.registrar),
        ),
        ("server", server_changed(&old.server, &new.server)),
        ("metrics", differs!(metrics)),
        ("admin", differs!(admin)),
        ("log.format", differs!(log.format)),
        ("transaction", differs!(transaction)),
        ("security.rate_limit", differs!(security.rate_limit)),
        (
            "security.scanner_user_agents",
            differs!(security.scanner_user_agents),
        ),
        ("security.on_limit", differs!(security.on_limit)),
        ("security.trusted", differs!(security.trusted)),
        (
            "security.route_secret",
            route_secret(old) != route_secret(new),
        ),
        ("security.relay_to", differs!(security.relay_to)),
        ("limits.max_transactions", differs!(limits.max_transactions)),
        (
            "limits.ended_transactions_mb",
            differs!(limits.ended_transactions_mb),
        ),
        (
            "limits.udp_max_request_bytes",
            differs!(limits.udp_max_request_bytes),
        ),
        ("limits.tcp", differs!(limits.tcp)),
        ("dns", differs!(dns)),
        ("tls", differs!(tls)),
        ("gateway.share_health", differs!(gateway.share_health)),
        ("gateway.call_max_secs", differs!(gateway.call_max_secs)),
        ("gateway.webhook", differs!(gateway.webhook)),
    ];
    for (section, changed) in sections {
        if !changed {
            continue;
        }
        let auth_comes_or_goes = section == "auth" && old.auth.is_some() != new.auth.is_some();
        if IN_PLACE.contains(&section) && !auth_comes_or_goes {
            changes.applied.push(section);
        } else {
            changes.needs_restart.push(section);
        }
    }
    changes
}

/// `server` changed, beyond a derived `instance_id` that followed the port
/// (the running node keeps its name until a restart).
fn server_changed(old: &super::ServerConfig, new: &super::ServerConfig) -> bool {
    let same_name =
        old.instance_id == new.instance_id || (old.instance_id_derived && new.instance_id_derived);
    !same_name || old.drain_secs != new.drain_secs || old.workers != new.workers
}

/// A registrar's expiry bounds and contact limit.
fn expiry(registrar: &super::RegistrarConfig) -> [u32; 4] {
    [
        registrar.default_expires,
        registrar.min_expires,
        registrar.max_expires,
        registrar.max_contacts,
    ]
}

/// What differs in one group, line by line.
fn group_changes(old: &GroupConfig, new: &GroupConfig) -> Vec<String> {
    let mut lines = Vec::new();
    let mut field = |name: &str, before: String, after: String| {
        if before != after {
            lines.push(format!("{name}: {before} -> {after}"));
        }
    };
    field(
        "algorithm",
        old.algorithm.to_string(),
        new.algorithm.to_string(),
    );
    field(
        "probe",
        format!("{:?}", old.probe),
        format!("{:?}", new.probe),
    );
    field(
        "failover",
        format!("{:?}", old.failover),
        format!("{:?}", new.failover),
    );
    field(
        "passive",
        format!("{:?}", old.passive),
        format!("{:?}", new.passive),
    );
    field(
        "max_retry_after_secs",
        old.max_retry_after_secs.to_string(),
        new.max_retry_after_secs.to_string(),
    );
    field(
        "strict_source",
        old.strict_source.to_string(),
        new.strict_source.to_string(),
    );
    field(
        "spill_threshold",
        old.spill_threshold.to_string(),
        new.spill_threshold.to_string(),
    );
    field(
        "hash_bound",
        format!("{:?}", old.hash_bound),
        format!("{:?}", new.hash_bound),
    );
    for destination in &new.destinations {
        match old.destinations.iter().find(|d| d.uri == destination.uri) {
            None => lines.push(format!("destination {} added", destination.uri)),
            Some(before) => lines.extend(destination_changes(before, destination)),
        }
    }
    for destination in &old.destinations {
        if !new.destinations.iter().any(|d| d.uri == destination.uri) {
            lines.push(format!("destination {} removed", destination.uri));
        }
    }
    lines
}

/// What differs in one destination: `weight of sip:a: 1 -> 2`.
pub fn destination_changes(old: &DestinationConfig, new: &DestinationConfig) -> Vec<String> {
    let pairs = [
        ("address", old.address.to_string(), new.address.to_string()),
        ("weight", old.weight.to_string(), new.weight.to_string()),
        (
            "attrs",
            format!("{:?}", old.attrs),
            format!("{:?}", new.attrs),
        ),
        (
            "transport",
            format!("{:?}", old.transport),
            format!("{:?}", new.transport),
        ),
        (
            "priority",
            old.priority.to_string(),
            new.priority.to_string(),
        ),
        ("max_calls", shown(old.max_calls), shown(new.max_calls)),
        ("max_cps", shown(old.max_cps), shown(new.max_cps)),
    ];
    pairs
        .into_iter()
        .filter(|(_, before, after)| before != after)
        .map(|(name, before, after)| format!("{name} of {}: {before} -> {after}", new.uri))
        .collect()
}

fn shown<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "none".to_string(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(groups: &str, extra: &str) -> Config {
        let text = format!("script: {{path: /srv/lb.py}}\n{extra}gateway:\n  groups:\n{groups}");
        super::super::from_text(&text, Path::new("test.yaml")).expect("loads")
    }

    const TWO: &str = "    - name: a\n      destinations:\n        - {uri: \"sip:127.0.0.1:5071\"}\n        - {uri: \"sip:127.0.0.1:5072\", weight: 2}\n";

    #[test]
    fn the_same_config_changes_nothing() {
        assert!(diff(&config(TWO, ""), &config(TWO, "")).is_empty());
    }

    #[test]
    fn destinations_added_removed_and_changed_are_named_with_their_fields() {
        let new = "    - name: a\n      algorithm: hash\n      destinations:\n        - {uri: \"sip:127.0.0.1:5072\", weight: 3, max_calls: 10}\n        - {uri: \"sip:127.0.0.1:5073\"}\n    - name: b\n      destinations: [{uri: \"sip:127.0.0.1:5074\"}]\n";
        let (old, new) = (config(TWO, ""), config(new, ""));
        let changes = diff(&old, &new);
        assert_eq!(changes.groups_added, ["b"]);
        assert!(changes.groups_removed.is_empty());
        assert_eq!(changes.groups_changed.len(), 1);
        assert_eq!(
            changes.groups_changed[0].changes,
            [
                "algorithm: weighted -> hash",
                "weight of sip:127.0.0.1:5072: 2 -> 3",
                "max_calls of sip:127.0.0.1:5072: none -> 10",
                "destination sip:127.0.0.1:5073 added",
                "destination sip:127.0.0.1:5071 removed",
            ]
        );
        let installed: Vec<&str> = changes
            .groups_to_install(&new)
            .map(|g| g.name.as_str())
            .collect();
        assert_eq!(installed, ["a", "b"]);
        let back = diff(&new, &old);
        assert_eq!(back.groups_removed, ["b"]);
    }

    #[test]
    fn sections_apply_in_place_or_need_a_restart() {
        let old = config(TWO, "log: {level: info}\n");
        let new = config(
            TWO,
            "log: {level: debug}\nlisten: {udp: [\"127.0.0.1:5099\"]}\nserver: {workers: 2}\ntransaction: {t1_ms: 250}\nlimits: {max_transactions: 5000, tcp: {max_per_ip: 8}}\n",
        );
        let changes = diff(&old, &new);
        assert_eq!(
            changes.applied,
            [
                "log.level",
                "transaction",
                "limits.max_transactions",
                "limits.tcp"
            ]
        );
        assert_eq!(changes.needs_restart, ["listen", "server"]);
        // A default name follows the port, but is no change of `server`.
        let moved = config(TWO, "listen: {udp: [\"127.0.0.1:5099\"]}\n");
        assert_eq!(diff(&old, &moved).needs_restart, ["listen"]);
        let expiry = config(TWO, "registrar: {min_expires: 120}\n");
        assert_eq!(diff(&old, &expiry).applied, ["registrar.expires"]);
        let redis = config(TWO, "registrar: {backend: redis}\n");
        assert_eq!(diff(&old, &redis).needs_restart, ["registrar.backend"]);
    }

    #[test]
    fn security_dns_and_auth_apply_in_place_unless_auth_comes_or_goes() {
        let auth = "auth: {realm: example.com, credentials: {alice: s3cret}}\n";
        let old = config(TWO, auth);
        let new = config(
            TWO,
            "auth: {realm: example.org, credentials: {alice: s3cret}}\n\
             security: {trusted: [\"10.0.0.0/8\"], relay_to: {deny: [\"10.1.0.0/16\"]}, route_secret: 0123456789abcdef0123}\n\
             dns: {timeout_ms: 500}\n",
        );
        let changes = diff(&old, &new);
        assert_eq!(
            changes.applied,
            [
                "auth",
                "security.trusted",
                "security.route_secret",
                "security.relay_to",
                "dns"
            ]
        );
        assert!(changes.needs_restart.is_empty(), "{changes:?}");
        let text = format!("script: {{path: /srv/lb.py}}\ngateway:\n  webhook: {{url: \"http://127.0.0.1:9/events\"}}\n  groups:\n{TWO}");
        let hooked = super::super::from_text(&text, Path::new("test.yaml")).expect("loads");
        let without_auth = config(TWO, "");
        assert_eq!(diff(&without_auth, &hooked).applied, ["gateway.webhook"]);
        assert_eq!(diff(&old, &without_auth).needs_restart, ["auth"]);
        assert_eq!(diff(&without_auth, &old).needs_restart, ["auth"]);
    }
}
