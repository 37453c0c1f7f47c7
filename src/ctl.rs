//! `siphon ctl`: drives a running siphon over its admin API, as `kamcmd`
//! drives Kamailio. Each verb is one HTTP request; the answer is printed as
//! a table (or as the JSON the API gave, with `--json`).
//!
//! Exit codes: 0 success, 1 an error from the daemon (or none reachable),
//! 2 a usage error (clap's own).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::http1::Endpoint;

/// How long a request may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Where the admin API is and the token it wants.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
    pub token: Option<String>,
}

impl Target {
    /// From `--url` (`http://host:port`) and `--token`.
    pub fn from_url(url: &str, token: Option<String>) -> Result<Target, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!("--url {url}: write it http://host:port (the admin API speaks plain HTTP)")
        })?;
        let host = rest.trim_end_matches('/').to_string();
        let addr = host
            .to_socket_addrs()
            .map_err(|e| format!("--url {url}: {e}"))?
            .next()
            .ok_or_else(|| format!("--url {url}: no address"))?;
        Ok(Target { addr, host, token })
    }

    /// From the daemon's own config file: `admin.listen` and its token.
    pub fn from_config(path: &Path, token: Option<String>) -> Result<Target, String> {
        let config = crate::config::load(path).map_err(|e| e.to_string())?;
        let addr = config.admin.listen.ok_or_else(|| {
            format!(
                "admin API not enabled: set admin.listen in {} (e.g. \"127.0.0.1:8080\"), or give --url",
                path.display()
            )
        })?;
        let token = match token {
            Some(token) => Some(token),
            None => config
                .admin
                .bearer_token()
                .map_err(|e| format!("admin.{}: {}", e.key, e.message))?,
        };
        // A wildcard listener is reached on loopback.
        let addr = match addr.ip().is_unspecified() {
            true if addr.is_ipv4() => SocketAddr::from(([127, 0, 0, 1], addr.port())),
            true => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port())),
            false => addr,
        };
        Ok(Target {
            addr,
            host: addr.to_string(),
            token,
        })
    }
}

/// One answer of the admin API.
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::String(self.body.clone()))
    }

    /// The error the daemon gave, as one line.
    fn error(&self) -> String {
        let json = self.json();
        let message = json["error"].as_str().map(str::to_string);
        let detail = message.unwrap_or_else(|| self.body.trim().to_string());
        format!("the daemon answered {}: {detail}", self.status)
    }
}

/// Sends one request and reads the whole answer.
pub fn request(
    target: &Target,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Answer, String> {
    let endpoint = Endpoint {
        addr: target.addr,
        host: target.host.clone(),
        path: String::new(),
    };
    let body = body.map(Value::to_string).unwrap_or_default();
    let bearer = target.token.as_ref().map(|token| format!("Bearer {token}"));
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if method != "GET" {
        // The API takes changes only as JSON (a browser's form cannot forge one).
        headers.push(("Content-Type", "application/json"));
    }
    if let Some(bearer) = &bearer {
        headers.push(("Authorization", bearer));
    }
    let answer = crate::http1::request(
        &endpoint,
        (method, path),
        &headers,
        body.as_bytes(),
        TIMEOUT,
    )
    .map_err(|e| {
        format!(
            "the admin API at {}: {e} (is siphon running, with admin.listen set?)",
            target.addr
        )
    })?;
    Ok(Answer {
        status: answer.status,
        body: answer.body,
    })
}

/// What a reload of `config` would change in the daemon it names (its
/// admin API), line by line: groups added or removed, and the admin API's
/// changes it would undo. None when no daemon answers.
pub fn reload_preview(config: &crate::config::Config, path: &Path) -> Option<Vec<String>> {
    let target = Target::from_config(path, None).ok()?;
    let answer = request(&target, "GET", "/admin/gateways", None).ok()?;
    if answer.status != 200 {
        return None;
    }
    let running = answer.json();
    let groups = running["groups"].as_array()?;
    let mut lines = Vec::new();
    for group in &config.gateway.groups {
        let Some(live) = groups.iter().find(|g| g["name"] == group.name.as_str()) else {
            lines.push(format!("group {} would be added", group.name));
            continue;
        };
        for destination in live["destinations"].as_array().into_iter().flatten() {
            let uri = destination["uri"].as_str().unwrap_or("");
            let in_file = group.destinations.iter().find(|d| d.uri == uri);
            match (in_file, destination["source"].as_str()) {
                (None, _) => lines.push(format!(
                    "{}: destination {uri} would be removed",
                    group.name
                )),
                (Some(_), Some("runtime")) => lines.push(format!(
                    "{}: the admin API's change to {uri} would be undone",
                    group.name
                )),
                _ => {}
            }
        }
        for destination in &group.destinations {
            let live_uris = live["destinations"].as_array().into_iter().flatten();
            if !live_uris
                .clone()
                .any(|d| d["uri"] == destination.uri.as_str())
            {
                lines.push(format!(
                    "{}: destination {} would be added",
                    group.name, destination.uri
                ));
            }
        }
    }
    for live in groups {
        let name = live["name"].as_str().unwrap_or("");
        let in_file = config.gateway.groups.iter().any(|g| g.name == name);
        if !in_file && live["source"] != "script" {
            lines.push(format!("group {name} would be removed"));
        }
    }
    Some(lines)
}

/// What a verb asks of the daemon.
#[derive(Debug, Clone, PartialEq)]
pub enum Verb {
    Gateways(Option<String>),
    Mark {
        action: &'static str,
        group: String,
        uri: String,
        force: bool,
    },
    Add {
        group: String,
        uri: String,
        fields: Vec<(String, String)>,
    },
    Remove {
        group: String,
        uri: String,
    },
    Set {
        group: String,
        uri: String,
        fields: Vec<(String, String)>,
    },
    Select {
        group: String,
        key: String,
    },
    Reload,
    Registrations(Option<String>),
    Bans,
    Unban(String),
    Metrics,
}

/// `name=value` words as a JSON object: numbers as numbers, `none` and
/// `null` as null, `attrs.K=V` into `attrs`, anything else as text.
pub fn fields_json(fields: &[(String, String)]) -> Value {
    let mut object = serde_json::Map::new();
    let mut attrs = serde_json::Map::new();
    for (name, value) in fields {
        let parsed = match value.as_str() {
            "none" | "null" => Value::Null,
            text => serde_json::from_str::<serde_json::Number>(text)
                .map(Value::Number)
                .unwrap_or_else(|_| Value::String(text.to_string())),
        };
        match name.strip_prefix("attrs.") {
            Some(attr) => {
                attrs.insert(attr.to_string(), Value::String(value.clone()));
            }
            None => {
                object.insert(name.clone(), parsed);
            }
        }
    }
    if !attrs.is_empty() {
        object.insert("attrs".to_string(), Value::Object(attrs));
    }
    Value::Object(object)
}

/// Splits `name=value` words; the error says which word is wrong.
pub fn parse_fields(words: &[String]) -> Result<Vec<(String, String)>, String> {
    words
        .iter()
        .map(|word| {
            word.split_once('=')
                .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
                .filter(|(n, _)| !n.is_empty())
                .ok_or_else(|| format!("`{word}`: write fields as name=value, e.g. weight=2"))
        })
        .collect()
}

/// Percent-encodes a query value.
fn encoded(value: &str) -> String {
    let mut out = String::new();
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(byte))
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// The method, path and body of a verb.
pub fn http_request(verb: &Verb) -> (&'static str, String, Option<Value>) {
    match verb {
        Verb::Gateways(_) => ("GET", "/admin/gateways".into(), None),
        Verb::Mark {
            action,
            group,
            uri,
            force,
        } => (
            "POST",
            format!("/admin/gateways/{}/{action}", encoded(group)),
            Some(json!({ "uri": uri, "force": force })),
        ),
        Verb::Add { group, uri, fields } => {
            let mut body = fields_json(fields);
            body["uri"] = Value::String(uri.clone());
            (
                "POST",
                format!("/admin/gateways/{}/destinations", encoded(group)),
                Some(body),
            )
        }
        Verb::Remove { group, uri } => (
            "DELETE",
            format!(
                "/admin/gateways/{}/destinations?uri={}",
                encoded(group),
                encoded(uri)
            ),
            None,
        ),
        Verb::Set { group, uri, fields } => (
            "PATCH",
            format!(
                "/admin/gateways/{}/destinations?uri={}",
                encoded(group),
                encoded(uri)
            ),
            Some(fields_json(fields)),
        ),
        Verb::Select { group, key } => (
            "GET",
            format!(
                "/admin/gateways/{}/select?key={}",
                encoded(group),
                encoded(key)
            ),
            None,
        ),
        Verb::Reload => ("POST", "/admin/reload".into(), None),
        Verb::Registrations(Some(aor)) => (
            "GET",
            format!("/admin/registrations/{}", encoded(aor)),
            None,
        ),
        Verb::Registrations(None) => ("GET", "/admin/registrations".into(), None),
        Verb::Bans => ("GET", "/admin/bans".into(), None),
        Verb::Unban(ip) => ("DELETE", format!("/admin/bans/{}", encoded(ip)), None),
        Verb::Metrics => ("GET", "/metrics".into(), None),
    }
}

/// Runs `verb` against `target`; prints the answer. Returns the exit code.
pub fn run(target: &Target, verb: &Verb, as_json: bool) -> u8 {
    let (method, path, body) = http_request(verb);
    let answer = match request(target, method, &path, body.as_ref()) {
        Ok(answer) => answer,
        Err(e) => {
            eprintln!("siphon ctl: {e}");
            return 1;
        }
    };
    if !(200..300).contains(&answer.status) {
        eprintln!("siphon ctl: {}", answer.error());
        return 1;
    }
    if matches!(verb, Verb::Metrics) {
        print!("{}", answer.body);
        return 0;
    }
    let json = answer.json();
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json).unwrap_or_default()
        );
        return 0;
    }
    print!("{}", render(verb, &json));
    0
}

/// A verb's answer for people.
pub fn render(verb: &Verb, json: &Value) -> String {
    match verb {
        Verb::Gateways(only) => gateway_table(json, only.as_deref()),
        Verb::Add { .. } | Verb::Set { .. } | Verb::Remove { .. } => {
            let group = json.get("name").map(|_| json.clone());
            match group {
                Some(group) => gateway_table(&json!({ "groups": [group] }), None),
                None => format!("{json}\n"),
            }
        }
        Verb::Select { .. } => {
            let mut out = String::new();
            for (rank, entry) in json["ranking"].as_array().into_iter().flatten().enumerate() {
                let uri = entry["uri"].as_str().unwrap_or("");
                let address = entry["address"].as_str().unwrap_or("");
                out.push_str(&format!("{}. {uri} ({address})\n", rank + 1));
            }
            if out.is_empty() {
                out.push_str("no destination is up\n");
            }
            out
        }
        Verb::Reload => {
            let mut out = String::from("reloaded\n");
            let changes = &json["changes"];
            for (label, key) in [
                ("group added", "groups_added"),
                ("group removed", "groups_removed"),
            ] {
                for name in changes[key].as_array().into_iter().flatten() {
                    out.push_str(&format!("{label}: {}\n", name.as_str().unwrap_or("")));
                }
            }
            for group in changes["groups_changed"].as_array().into_iter().flatten() {
                for change in group["changes"].as_array().into_iter().flatten() {
                    let name = group["group"].as_str().unwrap_or("");
                    out.push_str(&format!("{name}: {}\n", change.as_str().unwrap_or("")));
                }
            }
            let lists = [
                ("applied", &changes["applied"]),
                ("needs a restart", &changes["needs_restart"]),
                ("runtime changes undone", &json["runtime_undone"]),
                ("not applied", &json["not_applied"]),
            ];
            for (label, list) in lists {
                for item in list.as_array().into_iter().flatten() {
                    out.push_str(&format!("{label}: {}\n", item.as_str().unwrap_or("")));
                }
            }
            out
        }
        Verb::Registrations(None) => {
            let mut rows = vec![vec!["AOR".to_string(), "BINDINGS".into()]];
            for aor in json["aors"].as_array().into_iter().flatten() {
                rows.push(vec![text(&aor["aor"]), text(&aor["bindings"])]);
            }
            let mut out = table(&rows);
            if json["truncated"].as_bool() == Some(true) {
                out.push_str(&format!("... {} AoRs in all\n", text(&json["total"])));
            }
            out
        }
        Verb::Registrations(Some(_)) => {
            let mut out = String::new();
            for binding in json["bindings"].as_array().into_iter().flatten() {
                let contact = binding["contact"]
                    .as_str()
                    .or(binding["uri"].as_str())
                    .unwrap_or("");
                let expires = binding["expires"]
                    .as_u64()
                    .map_or(String::new(), |e| format!(" expires in {e} s"));
                out.push_str(&format!("{contact}{expires}\n"));
            }
            if out.is_empty() {
                out.push_str("no bindings\n");
            }
            out
        }
        Verb::Bans => {
            let mut rows = vec![vec![
                "IP".to_string(),
                "UDP ONLY".into(),
                "LEFT S".into(),
                "REASON".into(),
                "DROPPED".into(),
            ]];
            for ban in json["bans"].as_array().into_iter().flatten() {
                rows.push(vec![
                    text(&ban["ip"]),
                    text(&ban["udp_only"]),
                    text(&ban["remaining_secs"]),
                    text(&ban["reason"]),
                    text(&ban["dropped"]),
                ]);
            }
            table(&rows)
        }
        Verb::Mark { .. } | Verb::Unban(_) | Verb::Metrics => format!("{json}\n"),
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One row per destination: group, destination, state, reason, latency,
/// active calls, weight and priority.
fn gateway_table(json: &Value, only: Option<&str>) -> String {
    let mut rows = vec![[
        "GROUP",
        "DESTINATION",
        "STATE",
        "REASON",
        "LATENCY MS",
        "CALLS",
        "WEIGHT",
        "PRIORITY",
        "SOURCE",
    ]
    .map(String::from)
    .to_vec()];
    for group in json["groups"].as_array().into_iter().flatten() {
        let name = group["name"].as_str().unwrap_or("");
        if only.is_some_and(|only| only != name) {
            continue;
        }
        for d in group["destinations"].as_array().into_iter().flatten() {
            let (state, reason) = destination_state(d);
            let latency = d["last_probe_latency_ms"]
                .as_f64()
                .map_or("-".to_string(), |ms| format!("{ms:.1}"));
            rows.push(vec![
                name.to_string(),
                text(&d["uri"]),
                state.to_string(),
                reason,
                latency,
                text(&d["active_calls"]),
                text(&d["weight"]),
                text(&d["priority"]),
                text(&d["source"]),
            ]);
        }
    }
    table(&rows)
}

/// A destination's state and why, from its `/admin/gateways` entry.
fn destination_state(d: &Value) -> (&'static str, String) {
    let is = |key: &str| d[key] == true;
    if is("drained") {
        return ("drained", "drain".into());
    }
    if is("draining") {
        return ("draining", "drain".into());
    }
    if !is("healthy") {
        let reason = if is("held_down") {
            "marked down".to_string()
        } else if is("ejected") {
            format!(
                "ejected after {} failed relays",
                text(&d["passive_failures"])
            )
        } else if d["peers_reporting_down"]
            .as_array()
            .is_some_and(|p| !p.is_empty())
        {
            format!("peers: {}", d["peers_reporting_down"])
        } else {
            match d["last_probe_failure"].as_str() {
                Some(last) => format!(
                    "{} probe failures (last: {last})",
                    text(&d["consecutive_failures"])
                ),
                None => format!("{} probe failures", text(&d["consecutive_failures"])),
            }
        };
        return ("down", reason);
    }
    if is("full") {
        return ("full", format!("max_calls {}", text(&d["max_calls"])));
    }
    match d["last_probe_reply"].as_u64() {
        // Alive, but not well: a 404 or 478 says the URI is not its own.
        Some(code) if !(200..300).contains(&code) => ("up", format!("probe answered {code}")),
        _ => ("up", "-".into()),
    }
}

/// Columns padded to their widest cell.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| format!("{cell:<width$}", width = widths[c]))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_become_json_with_numbers_nulls_and_attrs() {
        let fields = parse_fields(&[
            "weight=2".to_string(),
            "max_cps=0.5".to_string(),
            "max_calls=none".to_string(),
            "attrs.zone=east".to_string(),
            "address=127.0.0.1:5071".to_string(),
        ])
        .unwrap();
        assert_eq!(
            fields_json(&fields),
            json!({"weight": 2, "max_cps": 0.5, "max_calls": null, "attrs": {"zone": "east"}, "address": "127.0.0.1:5071"})
        );
        assert!(parse_fields(&["weight".to_string()])
            .unwrap_err()
            .contains("name=value"));
    }

    #[test]
    fn verbs_map_to_the_admin_api() {
        let set = Verb::Set {
            group: "backends".into(),
            uri: "sip:b1.example.com:5060".into(),
            fields: vec![("weight".into(), "3".into())],
        };
        let (method, path, body) = http_request(&set);
        assert_eq!(method, "PATCH");
        assert_eq!(
            path,
            "/admin/gateways/backends/destinations?uri=sip%3Ab1.example.com%3A5060"
        );
        assert_eq!(body, Some(json!({"weight": 3})));
        assert_eq!(http_request(&Verb::Reload).1, "/admin/reload");
    }

    #[test]
    fn the_gateway_table_names_state_reason_and_calls() {
        let json = json!({"groups": [{"name": "backends", "destinations": [
            {"uri": "sip:a", "healthy": true, "active_calls": 3, "weight": 1, "priority": 0, "source": "file", "last_probe_latency_ms": 1.25},
            {"uri": "sip:b", "healthy": false, "held_down": true, "active_calls": 0, "weight": 2, "priority": 1, "source": "runtime"},
            {"uri": "sip:c", "healthy": true, "draining": true, "drained": true, "active_calls": 0, "weight": 1, "priority": 0, "source": "file"}
        ]}]});
        let table = gateway_table(&json, None);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("GROUP"));
        assert!(lines[1].contains("sip:a") && lines[1].contains("up") && lines[1].contains("1.2"));
        assert!(
            lines[2].contains("down")
                && lines[2].contains("marked down")
                && lines[2].contains("runtime")
        );
        assert!(lines[3].contains("drained"));
        assert_eq!(gateway_table(&json, Some("other")).lines().count(), 1);
    }
}
