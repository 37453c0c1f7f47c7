//! The admin HTTP API (`admin.listen`) and the Prometheus endpoint
//! (`metrics.prometheus.listen`). Both run on the main arbiter and only read
//! shared state, so they never block the SIP path. Every answer is JSON, errors
//! included.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::lifecycle::Lifecycle;

/// What the admin API reads and acts on.
pub struct AdminContext {
    pub lifecycle: Arc<Lifecycle>,
    pub instance_id: String,
    /// Gateway groups: read for the listing, and mark_down/mark_up.
    pub gateways: Arc<dyn GatewayAdmin>,
    /// Registrar bindings, when this node runs a registrar.
    pub registrations: Option<Arc<dyn RegistrationAdmin>>,
    /// What `/metrics` encodes.
    pub metrics: &'static crate::metrics::Metrics,
    /// Bans at the edge: listed and lifted.
    pub edge: Arc<crate::actors::edge::Edge>,
    /// Reads the config again (`POST /admin/reload`, as SIGHUP does).
    pub reloader: Option<Arc<crate::reload::Reloader>>,
    /// `admin.token`: every admin route needs it as a bearer token.
    pub token: Option<String>,
    /// `metrics.prometheus.token`: the Prometheus listener's own.
    pub metrics_token: Option<String>,
}

/// The gateway operations the admin API needs.
pub trait GatewayAdmin: Send + Sync {
    /// Every group with its destinations, as JSON.
    fn snapshot(&self) -> Value;
    /// `Some(changed)` when the group and destination exist, else `None`.
    fn set_down(&self, group: &str, uri: &str, down: bool) -> Option<bool>;
    /// Starts or ends a drain; `Some(changed)`, or None when unknown.
    fn set_draining(&self, group: &str, uri: &str, draining: bool) -> Option<bool>;
    /// Adds, removes or changes groups and destinations (`edit`); answers
    /// the group as `/admin/gateways` shows it, or the status and why not.
    /// Runs on the actor system (a new group starts its actor).
    fn edit(&self, edit: GatewayEdit) -> Result<Value, (StatusCode, String)>;
    /// How many destinations of `group` other than `uri` are healthy now;
    /// None when the group has no such destination.
    fn healthy_besides(&self, group: &str, uri: &str) -> Option<usize>;
    /// Brings the destinations' `up` gauges up to date (before a scrape).
    fn refresh_gauges(&self);
    /// Asks the group's actor for the ranking of `key`: `(uri, address)`,
    /// first choice first. None when the group or its actor is not there.
    fn select(
        &self,
        group: &str,
        key: Option<String>,
    ) -> Option<tokio::sync::oneshot::Receiver<Vec<(String, String)>>>;
}

/// A change to the gateway groups over the admin API.
/// Bodies are parsed (their names resolved) before, off the arbiter.
pub enum GatewayEdit {
    AddGroup(crate::config::GroupConfig),
    RemoveGroup(String),
    AddDestination {
        group: String,
        destination: crate::config::DestinationConfig,
    },
    RemoveDestination {
        group: String,
        uri: String,
    },
    PatchDestination {
        group: String,
        uri: String,
        body: Value,
    },
}

/// The keys `PATCH .../destinations` may change.
const PATCHABLE: [&str; 5] = ["weight", "priority", "attrs", "max_calls", "max_cps"];

/// The registrar operations the admin API needs.
pub trait RegistrationAdmin: Send + Sync {
    /// The AoR's live bindings as JSON (an empty list when none).
    fn bindings(&self, aor: &str) -> Value;
    /// Removes the AoR's bindings; how many were removed.
    fn remove(&self, aor: &str) -> usize;
    /// How many bindings are held.
    fn count(&self) -> usize;
    /// The first `limit` AoRs held, in order, with their binding counts.
    fn list(&self, limit: usize) -> Value;
}

/// `GET/DELETE /admin/registrations/{aor}`.
impl RegistrationAdmin for crate::registrar::Registrar {
    fn bindings(&self, aor: &str) -> Value {
        serde_json::to_value(self.bindings(aor, crate::registrar::unix_now()))
            .unwrap_or_else(|_| Value::Array(Vec::new()))
    }

    fn remove(&self, aor: &str) -> usize {
        crate::registrar::Registrar::remove(self, aor)
    }

    fn count(&self) -> usize {
        crate::registrar::Registrar::count(self)
    }

    fn list(&self, limit: usize) -> Value {
        let (total, shown) = self.summary(limit);
        let aors: Vec<Value> = shown
            .into_iter()
            .map(|(aor, bindings)| json!({ "aor": aor, "bindings": bindings }))
            .collect();
        json!({ "total": total, "truncated": total > aors.len(), "aors": aors })
    }
}

type Shared = Arc<AdminContext>;

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// Which token a listener asks for.
#[derive(Clone, Copy)]
enum Guarded {
    Admin,
    Metrics,
}

/// Every request to a listener with a token must carry it (`Authorization:
/// Bearer <token>`, compared in constant time), and every request that
/// changes something must say `Content-Type: application/json`: a web page
/// can make a browser send a form POST anywhere, but not that.
async fn guard(
    State((ctx, which)): State<(Shared, Guarded)>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let token = match which {
        Guarded::Admin => ctx.token.as_deref(),
        Guarded::Metrics => ctx.metrics_token.as_deref(),
    };
    if let Some(token) = token {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !crate::security::digest::constant_time_eq(presented.trim().as_bytes(), token.as_bytes())
        {
            let mut response = error(StatusCode::UNAUTHORIZED, "a bearer token is required");
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return response;
        }
    }
    let changes = !matches!(
        *request.method(),
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    );
    let json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    if changes && !json {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "a request that changes something needs Content-Type: application/json",
        );
    }
    next.run(request).await
}

pub fn router(ctx: Shared) -> Router {
    let guarded = (ctx.clone(), Guarded::Admin);
    Router::new()
        .route("/admin/health", get(health))
        .route("/admin/ready", get(ready))
        .route("/admin/gateways", get(gateways).post(add_group))
        .route(
            "/admin/gateways/{group}",
            axum::routing::delete(remove_group),
        )
        .route(
            "/admin/gateways/{group}/destinations",
            post(add_destination)
                .delete(remove_destination)
                .patch(patch_destination),
        )
        .route("/admin/gateways/{group}/select", get(select))
        .route("/admin/gateways/{group}/down", post(mark_down))
        .route("/admin/gateways/{group}/up", post(mark_up))
        .route("/admin/gateways/{group}/drain", post(drain))
        .route("/admin/gateways/{group}/undrain", post(undrain))
        .route("/admin/registrations", get(list_registrations))
        .route(
            "/admin/registrations/{*aor}",
            get(registrations).delete(delete_registrations),
        )
        .route("/admin/reload", post(reload))
        .route("/admin/bans", get(bans))
        .route("/admin/bans/{ip}", axum::routing::delete(lift_ban))
        .route("/metrics", get(metrics))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(axum::middleware::from_fn_with_state(guarded, guard))
        .with_state(ctx)
}

async fn health(State(ctx): State<Shared>) -> Response {
    Json(json!({ "status": "alive", "instance": ctx.instance_id })).into_response()
}

async fn ready(State(ctx): State<Shared>) -> Response {
    let (status, state) = if ctx.lifecycle.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if ctx.lifecycle.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    };
    (
        status,
        Json(json!({ "status": state, "instance": ctx.instance_id })),
    )
        .into_response()
}

async fn gateways(State(ctx): State<Shared>) -> Response {
    Json(ctx.gateways.snapshot()).into_response()
}

/// `GET /admin/gateways/{group}/select?key=...`: which destination a key
/// gets, and the failover order after it (without counting a selection).
async fn select(
    State(ctx): State<Shared>,
    Path(group): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let key = query.as_deref().and_then(|q| query_value(q, "key"));
    let Some(answer) = ctx.gateways.select(&group, key.clone()) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no running gateway group {group:?}"),
        );
    };
    let ranking = match tokio::time::timeout(std::time::Duration::from_secs(2), answer).await {
        Ok(Ok(ranking)) => ranking,
        _ => return error(StatusCode::SERVICE_UNAVAILABLE, "the group did not answer"),
    };
    let ranking: Vec<Value> = ranking
        .into_iter()
        .map(|(uri, address)| json!({ "uri": uri, "address": address }))
        .collect();
    let hashed = key.as_deref().map(|k| {
        crate::sip::uri::address_of_record(k).map_or_else(|| k.to_string(), |a| a.into_owned())
    });
    Json(json!({
        "group": group,
        "key": key,
        "hashed_key": hashed,
        "destination": ranking.first().cloned(),
        "ranking": ranking,
    }))
    .into_response()
}

/// The percent-decoded value of `name` in a query string (`+` is a space).
fn query_value(query: &str, name: &str) -> Option<String> {
    let raw = query
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))?
        .as_bytes();
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let escaped = (raw[i] == b'%')
            .then(|| Some(hex(*raw.get(i + 1)?)? * 16 + hex(*raw.get(i + 2)?)?))
            .flatten();
        match (raw[i], escaped) {
            (_, Some(byte)) => {
                out.push(byte as u8);
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (byte, None) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

async fn mark_down(
    state: State<Shared>,
    group: Path<String>,
    query: RawQuery,
    body: Bytes,
) -> Response {
    set_health(state, group, query, body, true)
}

async fn mark_up(
    state: State<Shared>,
    group: Path<String>,
    query: RawQuery,
    body: Bytes,
) -> Response {
    set_health(state, group, query, body, false)
}

/// Carries out `edit` on the actor system's arbiter and answers it.
async fn edit_gateways(ctx: Shared, edit: GatewayEdit) -> Response {
    let (answer, outcome) = tokio::sync::oneshot::channel();
    actix::System::current().arbiter().spawn(async move {
        let _ = answer.send(ctx.gateways.edit(edit));
    });
    match outcome.await {
        Ok(Ok(group)) => Json(group).into_response(),
        Ok(Err((status, message))) => error(status, message),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the change did not finish",
        ),
    }
}

/// The JSON body, or why it is none (a 400).
fn json_body(body: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))
}

/// `?uri=`, or why it is missing (a 400).
fn uri_query(query: Option<&str>) -> Result<String, String> {
    query
        .and_then(|q| query_value(q, "uri"))
        .ok_or_else(|| "name the destination with ?uri=".to_string())
}

/// Parses a body with `parse` on a blocking thread (a destination's name
/// may need a DNS lookup): the 400 to send when it does not parse.
async fn parsed<T: Send + 'static>(
    body: &[u8],
    parse: fn(Value) -> Result<T, String>,
) -> Result<T, Response> {
    let body = json_body(body).map_err(|m| error(StatusCode::BAD_REQUEST, m))?;
    match tokio::task::spawn_blocking(move || parse(body)).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(message)) => Err(error(StatusCode::BAD_REQUEST, message)),
        Err(_) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the body could not be read",
        )),
    }
}

async fn add_group(State(ctx): State<Shared>, body: Bytes) -> Response {
    match parsed(&body, crate::config::group_from_json).await {
        Ok(config) => edit_gateways(ctx, GatewayEdit::AddGroup(config)).await,
        Err(response) => response,
    }
}

async fn remove_group(State(ctx): State<Shared>, Path(group): Path<String>) -> Response {
    edit_gateways(ctx, GatewayEdit::RemoveGroup(group)).await
}

async fn add_destination(
    State(ctx): State<Shared>,
    Path(group): Path<String>,
    body: Bytes,
) -> Response {
    match parsed(&body, crate::config::destination_from_json).await {
        Ok(destination) => {
            edit_gateways(ctx, GatewayEdit::AddDestination { group, destination }).await
        }
        Err(response) => response,
    }
}

async fn remove_destination(
    State(ctx): State<Shared>,
    Path(group): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    match uri_query(query.as_deref()) {
        Ok(uri) => edit_gateways(ctx, GatewayEdit::RemoveDestination { group, uri }).await,
        Err(message) => error(StatusCode::BAD_REQUEST, message),
    }
}

async fn patch_destination(
    State(ctx): State<Shared>,
    Path(group): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let (uri, body) = match (uri_query(query.as_deref()), json_body(&body)) {
        (Ok(uri), Ok(body)) => (uri, body),
        (Err(message), _) | (_, Err(message)) => return error(StatusCode::BAD_REQUEST, message),
    };
    edit_gateways(ctx, GatewayEdit::PatchDestination { group, uri, body }).await
}

async fn drain(
    state: State<Shared>,
    group: Path<String>,
    query: RawQuery,
    body: Bytes,
) -> Response {
    set_drain(state, group, query, body, true)
}

async fn undrain(
    state: State<Shared>,
    group: Path<String>,
    query: RawQuery,
    body: Bytes,
) -> Response {
    set_drain(state, group, query, body, false)
}

/// The destination is named by `{"uri": "sip:..."}` or `?uri=`. Answers the
/// destination as `/admin/gateways` shows it.
fn set_drain(
    State(ctx): State<Shared>,
    Path(group): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
    draining: bool,
) -> Response {
    let in_query = query.as_deref().and_then(|q| query_value(q, "uri"));
    let uri = match in_query {
        Some(uri) => uri,
        None => match body_uri(&body) {
            Ok(uri) => uri,
            Err(message) => return error(StatusCode::BAD_REQUEST, message),
        },
    };
    match ctx.gateways.set_draining(&group, &uri, draining) {
        Some(changed) => {
            let snapshot = ctx.gateways.snapshot();
            let shown = snapshot["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|g| g["name"] == group.as_str())
                .flat_map(|g| g["destinations"].as_array().cloned().unwrap_or_default())
                .find(|d| d["uri"] == uri.as_str())
                .unwrap_or(Value::Null);
            Json(json!({
                "group": group,
                "uri": uri,
                "changed": changed,
                "destination": shown,
            }))
            .into_response()
        }
        None => error(
            StatusCode::NOT_FOUND,
            format!("no destination {uri} in group {group}"),
        ),
    }
}

/// The `uri` of a JSON body like `{"uri": "sip:..."}`, or what is wrong.
fn body_uri(body: &[u8]) -> Result<String, String> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => match map.get("uri").and_then(Value::as_str) {
            Some(uri) => Ok(uri.to_string()),
            None => Err("body needs a string field \"uri\" (or give ?uri=)".to_string()),
        },
        Ok(_) => Err("body must be a JSON object like {\"uri\": \"sip:...\"}".to_string()),
        Err(e) => Err(format!("body is not JSON: {e}")),
    }
}

/// The body names the destination: `{"uri": "sip:..."}`. Marking down the
/// last healthy destination of a group takes `"force": true` (or
/// `?force=true`): one typo must not take the whole service down.
fn set_health(
    State(ctx): State<Shared>,
    Path(group): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
    down: bool,
) -> Response {
    let uri = match body_uri(&body) {
        Ok(uri) => uri,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let in_body = serde_json::from_slice::<Value>(&body)
        .is_ok_and(|v| v.get("force").and_then(Value::as_bool) == Some(true));
    let in_query = query
        .as_deref()
        .and_then(|q| query_value(q, "force"))
        .is_some_and(|v| v == "true" || v == "1");
    let forced = in_body || in_query;
    if down && !forced && ctx.gateways.healthy_besides(&group, &uri) == Some(0) {
        return error(
            StatusCode::CONFLICT,
            format!("{uri} is the last healthy destination of {group}: add \"force\": true to mark it down"),
        );
    }
    match ctx.gateways.set_down(&group, &uri, down) {
        Some(changed) => Json(json!({
            "group": group,
            "uri": uri,
            "healthy": !down,
            "changed": changed,
        }))
        .into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no destination {uri} in group {group}"),
        ),
    }
}

/// Reloads the config and the script as SIGHUP does; answers what changed,
/// or (422) why the new config was refused.
async fn reload(State(ctx): State<Shared>) -> Response {
    let Some(reloader) = ctx.reloader.clone() else {
        return error(StatusCode::NOT_FOUND, "this process cannot reload");
    };
    // On the system's arbiter: a group the reload adds starts its actor
    // there (axum's connection tasks are no actix context).
    let (answer, outcome) = tokio::sync::oneshot::channel();
    actix::System::current().arbiter().spawn(async move {
        let _ = answer.send(reloader.reload().await);
    });
    let Ok(outcome) = outcome.await else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the reload did not finish",
        );
    };
    let status = if outcome.ok {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    (status, Json(json!(outcome))).into_response()
}

async fn registrations(State(ctx): State<Shared>, Path(aor): Path<String>) -> Response {
    match &ctx.registrations {
        Some(registrar) => {
            Json(json!({ "aor": aor, "bindings": registrar.bindings(&aor) })).into_response()
        }
        None => error(StatusCode::NOT_FOUND, "this node runs no registrar"),
    }
}

/// `GET /admin/registrations?limit=N`: the AoRs this node holds (with
/// Redis, those it restored or learned), the first N (1000) in order.
async fn list_registrations(State(ctx): State<Shared>, RawQuery(query): RawQuery) -> Response {
    let limit = match query.as_deref().and_then(|q| query_value(q, "limit")) {
        None => 1000,
        Some(text) => match text.parse::<usize>() {
            Ok(limit) => limit,
            Err(_) => return error(StatusCode::BAD_REQUEST, "limit: not a number"),
        },
    };
    match &ctx.registrations {
        Some(registrar) => Json(registrar.list(limit)).into_response(),
        None => error(StatusCode::NOT_FOUND, "this node runs no registrar"),
    }
}

async fn delete_registrations(State(ctx): State<Shared>, Path(aor): Path<String>) -> Response {
    match &ctx.registrations {
        Some(registrar) => {
            Json(json!({ "aor": aor, "removed": registrar.remove(&aor) })).into_response()
        }
        None => error(StatusCode::NOT_FOUND, "this node runs no registrar"),
    }
}

/// `GET /admin/bans`: the sources banned at the edge, longest first.
async fn bans(State(ctx): State<Shared>) -> Response {
    let bans: Vec<Value> = ctx
        .edge
        .bans()
        .into_iter()
        .map(|ban| {
            json!({
                "ip": ban.network.to_string(),
                "udp_only": ban.udp_only,
                "remaining_secs": ban.remaining_secs,
                "reason": ban.reason.as_str(),
                "dropped": ban.dropped,
            })
        })
        .collect();
    Json(json!({ "bans": bans })).into_response()
}

/// `DELETE /admin/bans/{ip}`: lifts one ban.
async fn lift_ban(State(ctx): State<Shared>, Path(ip): Path<String>) -> Response {
    let Ok(addr) = ip.parse::<std::net::IpAddr>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{ip:?} is not an IP address"),
        );
    };
    if ctx.edge.lift(addr) {
        Json(json!({ "lifted": addr.to_string() })).into_response()
    } else {
        error(StatusCode::NOT_FOUND, format!("{addr} is not banned"))
    }
}

async fn metrics(State(ctx): State<Shared>) -> Response {
    ctx.gateways.refresh_gauges();
    if let Some(registrar) = &ctx.registrations {
        ctx.metrics
            .registrations_active
            .set(registrar.count() as i64);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        ctx.metrics.encode(),
    )
        .into_response()
}

/// Serves the admin API until the process stops.
pub fn spawn_admin(listener: TcpListener, ctx: Shared) {
    actix::spawn(async move {
        if let Err(e) = axum::serve(listener, router(ctx)).await {
            tracing::error!(error = %e, "admin API stopped");
        }
    });
}

/// Serves `/metrics` alone on the Prometheus listen address.
pub fn spawn_metrics(listener: TcpListener, ctx: Shared) {
    let guarded = (ctx.clone(), Guarded::Metrics);
    let app = Router::new()
        .route("/metrics", get(metrics))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "only /metrics is served here") })
        .layer(axum::middleware::from_fn_with_state(guarded, guard))
        .with_state(ctx);
    actix::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
}

/// Applies a `PATCH .../destinations` body (`weight`, `priority`, `attrs`,
/// `max_calls`, `max_cps`; null lifts a limit) with the config's checks.
fn patch_destination_config(
    destination: &mut crate::config::DestinationConfig,
    body: Value,
) -> Result<(), String> {
    let Value::Object(fields) = body else {
        return Err(format!(
            "body must be a JSON object with {}",
            PATCHABLE.join(", ")
        ));
    };
    if let Some(key) = fields.keys().find(|k| !PATCHABLE.contains(&k.as_str())) {
        return Err(format!(
            "{key}: cannot be changed here; PATCH takes {} (remove the destination and add it again for the rest)",
            PATCHABLE.join(", ")
        ));
    }
    fn field<T: serde::de::DeserializeOwned>(key: &str, value: &Value) -> Result<T, String> {
        serde_json::from_value(value.clone()).map_err(|e| format!("{key}: {e}"))
    }
    let mut changed = destination.clone();
    for (key, value) in &fields {
        match key.as_str() {
            "weight" => changed.weight = field(key, value)?,
            "priority" => changed.priority = field(key, value)?,
            "max_calls" => changed.max_calls = field(key, value)?,
            "max_cps" => changed.max_cps = field(key, value)?,
            _ => {
                let map: serde_json::Map<String, Value> = field(key, value)?;
                changed.attrs = map
                    .into_iter()
                    .map(|(name, value)| match value {
                        Value::String(text) => Ok((name, text)),
                        Value::Number(_) | Value::Bool(_) => Ok((name, value.to_string())),
                        _ => Err(format!("attrs.{name}: must be a string, number or boolean")),
                    })
                    .collect::<Result<_, String>>()?;
            }
        }
    }
    let (priority, max_calls, max_cps) = (changed.priority, changed.max_calls, changed.max_cps);
    *destination = changed
        .with_capacity(priority, max_calls, max_cps)
        .map_err(|e| e.to_string())?;
    Ok(())
}

impl GatewayAdmin for crate::actors::gateway::GatewayService {
    fn snapshot(&self) -> Value {
        let now = std::time::Instant::now();
        let gateways = self.gateways();
        let groups: Vec<Value> = gateways
            .names()
            .into_iter()
            .filter_map(|name| gateways.get(&name))
            .map(|shared| {
                // Healthy as selection sees it: what the group's actor published.
                let view = shared.view();
                let configs = self.group_configs(shared.name());
                let group = shared.lock();
                let destinations: Vec<Value> = group
                    .iter()
                    .enumerate()
                    .map(|(index, (dest, health))| {
                        let capacity = dest.capacity();
                        let in_use = capacity.calls_in_use();
                        let draining = capacity.is_draining();
                        json!({
                            "uri": dest.uri,
                            "address": dest.address.to_string(),
                            "weight": dest.weight,
                            "attrs": dest.attrs,
                            "healthy": view.is_up(index, now),
                            "held_down": health.is_held_down(),
                            "consecutive_failures": health.consecutive_failures(),
                            "last_probe_failure": health
                                .last_probe_failure()
                                .map(ToString::to_string),
                            "last_probe_reply": health.last_probe_reply(),
                            "passive_failures": health.passive_failures(),
                            "ejected": health.ejected(now),
                            "peers_reporting_down": health
                                .peers_reporting_down(now)
                                .collect::<Vec<_>>(),
                            "last_probe_latency_ms": health
                                .last_latency()
                                .map(|l| l.as_secs_f64() * 1000.0),
                            "selections": shared.selections(index),
                            "priority": dest.priority,
                            "max_calls": capacity.max_calls(),
                            "max_cps": capacity.max_cps(),
                            "active_calls": capacity.active_calls(),
                            "calls_in_setup": in_use.saturating_sub(capacity.active_calls()),
                            "full": capacity.max_calls().is_some_and(|max| in_use >= max),
                            "draining": draining,
                            "drained": draining && in_use == 0,
                            "source": match &configs {
                                Some(c) if c.source() == "script" => "script",
                                Some(c) if c.destination_from_file(&dest.uri) => "file",
                                _ => "runtime",
                            },
                        })
                    })
                    .collect();
                json!({
                    "name": group.name(),
                    "algorithm": group.algorithm().as_str(),
                    "source": configs.as_ref().map_or("script", |c| c.source()),
                    "destinations": destinations,
                })
            })
            .collect();
        json!({ "groups": groups })
    }

    fn refresh_gauges(&self) {
        self.gateways().refresh_up_gauges();
    }

    fn select(
        &self,
        group: &str,
        key: Option<String>,
    ) -> Option<tokio::sync::oneshot::Receiver<Vec<(String, String)>>> {
        self.ask_select(group, key)
    }

    fn set_down(&self, group: &str, uri: &str, down: bool) -> Option<bool> {
        let known = self
            .gateways()
            .get(group)
            .is_some_and(|shared| shared.lock().find(uri).is_some());
        if !known {
            return None;
        }
        self.mark(group, uri, down, "admin")
    }

    fn set_draining(&self, group: &str, uri: &str, draining: bool) -> Option<bool> {
        self.drain(group, uri, draining, "admin")
    }

    fn edit(&self, edit: GatewayEdit) -> Result<Value, (StatusCode, String)> {
        use crate::actors::gateway::{EditError, GroupOrigin};
        let no_destination = |group: &str, uri: &str| {
            let missing = format!("no destination {uri} in group {group}");
            move |e: EditError| match e {
                EditError::NotFound => (StatusCode::NOT_FOUND, missing),
                EditError::Invalid(message) => (StatusCode::BAD_REQUEST, message),
            }
        };
        let refused = |group: &str| {
            let group = group.to_string();
            move |e: EditError| match e {
                EditError::NotFound => (StatusCode::NOT_FOUND, format!("no group {group}")),
                EditError::Invalid(message) => (StatusCode::BAD_REQUEST, message),
            }
        };
        let name = match edit {
            GatewayEdit::AddGroup(config) => {
                if self.gateways().get(&config.name).is_some() {
                    let message = format!(
                        "name: group {} exists; add destinations to it, or DELETE it first",
                        config.name
                    );
                    return Err((StatusCode::CONFLICT, message));
                }
                self.install(&config, GroupOrigin::Admin);
                config.name
            }
            GatewayEdit::RemoveGroup(group) => {
                if !self.remove_group(&group) {
                    return Err((StatusCode::NOT_FOUND, format!("no group {group}")));
                }
                return Ok(json!({ "group": group, "removed": true }));
            }
            GatewayEdit::AddDestination { group, destination } => {
                self.edit_group(&group, |config| {
                    if config.destinations.iter().any(|d| d.uri == destination.uri) {
                        return Err(EditError::Invalid(format!(
                            "uri: {} is in the group already; PATCH it instead",
                            destination.uri
                        )));
                    }
                    config.destinations.push(destination);
                    Ok(())
                })
                .map_err(refused(&group))?;
                group
            }
            GatewayEdit::RemoveDestination { group, uri } => {
                self.edit_group(&group, |config| {
                    let before = config.destinations.len();
                    config.destinations.retain(|d| d.uri != uri);
                    match config.destinations.len() == before {
                        true => Err(EditError::NotFound),
                        false => Ok(()),
                    }
                })
                .map_err(no_destination(&group, &uri))?;
                group
            }
            GatewayEdit::PatchDestination { group, uri, body } => {
                self.edit_group(&group, |config| {
                    let destination = config
                        .destinations
                        .iter_mut()
                        .find(|d| d.uri == uri)
                        .ok_or(EditError::NotFound)?;
                    patch_destination_config(destination, body).map_err(EditError::Invalid)
                })
                .map_err(no_destination(&group, &uri))?;
                group
            }
        };
        let snapshot = self.snapshot();
        let shown = snapshot["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|g| g["name"] == name.as_str())
            .cloned()
            .unwrap_or(Value::Null);
        Ok(shown)
    }

    fn healthy_besides(&self, group: &str, uri: &str) -> Option<usize> {
        let shared = self.gateways().get(group)?;
        let now = std::time::Instant::now();
        let view = shared.view();
        let group = shared.lock();
        group.find(uri)?;
        let healthy = group
            .iter()
            .enumerate()
            .filter(|(index, (dest, _))| dest.uri != uri && view.is_up(*index, now))
            .count();
        Some(healthy)
    }
}

#[cfg(test)]
mod tests {
    use super::query_value;

    #[test]
    fn query_values_are_percent_decoded() {
        let q = "x=1&key=%3Csip%3Aalice%40EXAMPLE.com%3Btransport%3Dudp%3E&y=2";
        assert_eq!(
            query_value(q, "key").as_deref(),
            Some("<sip:alice@EXAMPLE.com;transport=udp>")
        );
        assert_eq!(query_value("key=a+b%2", "key").as_deref(), Some("a b%2"));
        assert_eq!(query_value("keys=1", "key"), None);
        assert_eq!(
            query_value("key=sip:bob@example.com", "key").as_deref(),
            Some("sip:bob@example.com")
        );
    }
}
