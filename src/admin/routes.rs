//! The admin routes: authorise, parse, call the services, answer JSON (or
//! Prometheus text). Changes that must cut a user off (disable, password
//! reset, device revoke) are made durable first and then kick the live
//! sessions with `KickReason::Revoked`, so a kicked client that logs in
//! again at once is already refused.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pigeon_protocol::KickReason;
use serde::{Deserialize, Serialize};

use super::http::{Request, Response};
use super::{stats, token, Context};
use crate::error::ServiceError;
use crate::metrics::platform_label;
use crate::service::accounts::{validate_device_id, validate_username};
use crate::session::Kick;
use crate::store::{DeviceRecord, Store, StoreError, UserId, UserRecord};

/// Largest page of a user listing.
const MAX_LIST: usize = 1000;
/// Default page of a user listing.
const DEFAULT_LIST: usize = 100;
/// How long the readiness probe waits for the store.
const READY_STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// A route's answer; the error side is a refusal, also an answer.
pub(super) type Answer = Result<Response, Response>;

/// Answer one request.
pub(super) async fn route(ctx: &Context, request: Request) -> Response {
    let path = request.path.trim_matches('/').to_owned();
    let segments: Vec<&str> = path.split('/').collect();
    let method = request.method.as_str();
    match (method, segments.as_slice()) {
        ("GET", ["healthz"]) => return Response::text(200, "ok\n"),
        ("GET", ["readyz"]) => return readyz(ctx).await,
        _ => {}
    }
    if !authorized(ctx, &request) {
        let mut refused = Response::error(401, "missing or wrong bearer token");
        refused.headers.push(("WWW-Authenticate", "Bearer"));
        return refused;
    }
    let answer = match (method, segments.as_slice()) {
        ("GET", ["metrics"]) => stats::metrics(ctx).await,
        ("GET", ["v1", "users"]) => list_users(ctx, &request).await,
        ("POST", ["v1", "users"]) => add_user(ctx, &request).await,
        ("GET", ["v1", "users", name]) => show_user(ctx, name).await,
        ("POST", ["v1", "users", name, "disable"]) => set_disabled(ctx, name, true).await,
        ("POST", ["v1", "users", name, "enable"]) => set_disabled(ctx, name, false).await,
        ("POST", ["v1", "users", name, "password"]) => reset_password(ctx, name, &request).await,
        ("GET", ["v1", "users", name, "devices"]) => list_devices(ctx, name).await,
        ("POST", ["v1", "users", name, "devices", device, "revoke"]) => {
            revoke_device(ctx, name, device).await
        }
        ("GET", ["v1", "stats"]) => stats::stats(ctx, &request).await,
        ("POST", ["v1", "backup"]) => backup(ctx, &request).await,
        ("POST", ["v1", "compact"]) => compact(ctx, &request).await,
        _ => Err(Response::error(404, format!("no route {method} /{path}"))),
    };
    answer.unwrap_or_else(|refusal| refusal)
}

fn authorized(ctx: &Context, request: &Request) -> bool {
    let presented = request
        .header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    presented.is_some_and(|t| token::matches(t, &ctx.token))
}

async fn readyz(ctx: &Context) -> Response {
    let mut problems = Vec::new();
    if !ctx.serving.load(Ordering::Acquire) {
        problems.push("the public listener is not accepting".to_owned());
    }
    if !ctx.messaging.committer().is_running() {
        problems.push("the writer has stopped".to_owned());
    }
    let store = ctx.store.clone();
    let probe = tokio::task::spawn_blocking(move || store.check_writable());
    match tokio::time::timeout(READY_STORE_TIMEOUT, probe).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => problems.push(format!("the store refuses writes: {e}")),
        Ok(Err(_)) => problems.push("the store probe failed".to_owned()),
        Err(_) => problems.push("the store did not take a write within 2 s".to_owned()),
    }
    if problems.is_empty() {
        Response::text(200, "ready\n")
    } else {
        Response::text(503, format!("not ready: {}\n", problems.join("; ")))
    }
}

/// A user as the admin API shows it (never the password hash).
#[derive(Serialize)]
struct UserView {
    id: UserId,
    username: String,
    created_at_ms: u64,
    disabled: bool,
}

impl From<UserRecord> for UserView {
    fn from(u: UserRecord) -> Self {
        UserView {
            id: u.id,
            username: u.username,
            created_at_ms: u.created_at_ms,
            disabled: u.disabled,
        }
    }
}

#[derive(Serialize)]
struct DeviceView {
    device_id: String,
    platform: &'static str,
    created_at_ms: u64,
    last_active_ms: u64,
    acked_seq: u64,
    online: bool,
}

async fn list_users(ctx: &Context, request: &Request) -> Answer {
    let after: UserId = number_param(request, "after")?.unwrap_or(0);
    let limit = number_param(request, "limit")?
        .unwrap_or(DEFAULT_LIST)
        .clamp(1, MAX_LIST);
    let users = blocking(ctx, move |s| s.list_users(after, limit)).await?;
    let next_after = (users.len() == limit).then(|| users.last().map(|u| u.id));
    let users: Vec<UserView> = users.into_iter().map(UserView::from).collect();
    Ok(Response::json(
        200,
        &serde_json::json!({ "users": users, "next_after": next_after.flatten() }),
    ))
}

#[derive(Deserialize)]
struct NewUser {
    username: String,
    password: String,
}

async fn add_user(ctx: &Context, request: &Request) -> Answer {
    let new: NewUser = json_body(request)?;
    let user = ctx
        .accounts
        .create(&new.username, &new.password)
        .await
        .map_err(service_refusal)?;
    tracing::info!(user_id = user.id, username = %user.username, "admin: user added");
    Ok(Response::json(201, &UserView::from(user)))
}

async fn show_user(ctx: &Context, name: &str) -> Answer {
    let user = find_user(ctx, name).await?;
    let id = user.id;
    let (devices, max_seq) = blocking(ctx, move |s| Ok((s.devices(id)?, s.max_seq(id)?))).await?;
    let depth = stats::queue_depth(max_seq, &devices);
    let devices = device_views(ctx, id, devices);
    Ok(Response::json(
        200,
        &serde_json::json!({
            "user": UserView::from(user),
            "devices": devices,
            "queue": { "max_seq": max_seq, "depth": depth },
        }),
    ))
}

async fn set_disabled(ctx: &Context, name: &str, disabled: bool) -> Answer {
    let user = find_user(ctx, name).await?;
    let found = ctx
        .accounts
        .set_disabled(user.id, disabled)
        .await
        .map_err(service_refusal)?;
    if !found {
        return Err(no_user(name));
    }
    if disabled {
        kick(
            ctx,
            user.id,
            None,
            "this account was disabled by an administrator",
        );
    }
    tracing::info!(user_id = user.id, disabled, "admin: user disabled flag set");
    Ok(Response::json(
        200,
        &serde_json::json!({ "username": user.username, "disabled": disabled }),
    ))
}

#[derive(Deserialize)]
struct NewPassword {
    password: String,
}

async fn reset_password(ctx: &Context, name: &str, request: &Request) -> Answer {
    let new: NewPassword = json_body(request)?;
    let user = find_user(ctx, name).await?;
    let revoked = ctx
        .accounts
        .reset_password(user.id, &new.password)
        .await
        .map_err(service_refusal)?
        .ok_or_else(|| no_user(name))?;
    kick(
        ctx,
        user.id,
        None,
        "the password was reset by an administrator",
    );
    tracing::info!(user_id = user.id, revoked, "admin: password reset");
    Ok(Response::json(
        200,
        &serde_json::json!({ "username": user.username, "tokens_revoked": revoked }),
    ))
}

async fn list_devices(ctx: &Context, name: &str) -> Answer {
    let user = find_user(ctx, name).await?;
    let id = user.id;
    let devices = blocking(ctx, move |s| s.devices(id)).await?;
    Ok(Response::json(
        200,
        &serde_json::json!({ "username": user.username, "devices": device_views(ctx, id, devices) }),
    ))
}

async fn revoke_device(ctx: &Context, name: &str, device: &str) -> Answer {
    validate_device_id(device).map_err(|e| Response::error(400, e))?;
    let user = find_user(ctx, name).await?;
    let revoked = ctx
        .accounts
        .revoke_tokens(user.id, Some(device.to_owned()))
        .await
        .map_err(service_refusal)?;
    let was_online = ctx
        .registry
        .online_devices(user.id)
        .iter()
        .any(|d| **d == *device);
    kick(
        ctx,
        user.id,
        Some(device),
        "this device was signed out by an administrator",
    );
    tracing::info!(user_id = user.id, device, revoked, "admin: device revoked");
    Ok(Response::json(
        200,
        &serde_json::json!({
            "username": user.username,
            "device_id": device,
            "tokens_revoked": revoked,
            "kicked": was_online,
        }),
    ))
}

#[derive(Deserialize)]
struct BackupRequest {
    to: PathBuf,
}

async fn backup(ctx: &Context, request: &Request) -> Answer {
    let BackupRequest { to } = json_body(request)?;
    if !to.is_absolute() {
        return Err(Response::error(
            400,
            "`to` must be an absolute path (it is resolved on the server)",
        ));
    }
    if to.exists() {
        return Err(Response::error(
            409,
            format!("{} already exists; choose a new directory", to.display()),
        ));
    }
    let started = Instant::now();
    let target = to.clone();
    tracing::info!(to = %to.display(), "admin: backup started; writes wait until it is done");
    let report = blocking(ctx, move |s| s.backup(&target)).await?;
    let millis = started.elapsed().as_millis() as u64;
    tracing::info!(to = %to.display(), records = report.records, millis, "admin: backup done");
    Ok(Response::json(
        200,
        &serde_json::json!({
            "path": to,
            "trees": report.trees,
            "records": report.records,
            "bytes": report.bytes,
            "millis": millis,
        }),
    ))
}

async fn compact(ctx: &Context, request: &Request) -> Answer {
    let force = match request.query_param("force") {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(Response::error(
                400,
                format!("query parameter force must be true or false, not {other:?}"),
            ))
        }
    };
    if !force {
        let limit = ctx.compact_max_live_bytes;
        let space = blocking(ctx, move |s| s.space(limit)).await?;
        if space.live_bytes.is_none() {
            return Err(Response::error(
                409,
                format!(
                    "the store holds more than store.compact_max_live_bytes ({limit} bytes) of \
                     live data; a compaction copies all of it (about 10 MB/s on a small \
                     machine, competing with traffic): compact with force=true when traffic is low"
                ),
            ));
        }
    }
    tracing::info!("admin: compaction started; writes go on while the live data is copied");
    let report = blocking(ctx, |s| s.compact()).await?;
    Ok(Response::json(
        200,
        &serde_json::json!({
            "disk_before": report.disk_before,
            "disk_after": report.disk_after,
            "records": report.records,
            "live_bytes": report.live_bytes,
            "writes_paused_ms": report.writes_paused_ms,
        }),
    ))
}

fn kick(ctx: &Context, user: UserId, device: Option<&str>, message: &str) {
    let kick = Kick {
        reason: KickReason::Revoked,
        message: message.to_owned(),
    };
    ctx.registry.kick_user(user, device, kick);
}

fn device_views(ctx: &Context, user: UserId, devices: Vec<DeviceRecord>) -> Vec<DeviceView> {
    let online = ctx.registry.online_devices(user);
    devices
        .into_iter()
        .map(|d| DeviceView {
            online: online.iter().any(|o| **o == *d.device_id),
            platform: platform_label(d.platform),
            device_id: d.device_id,
            created_at_ms: d.created_at_ms,
            last_active_ms: d.last_active_ms,
            acked_seq: d.acked_seq,
        })
        .collect()
}

async fn find_user(ctx: &Context, name: &str) -> Result<UserRecord, Response> {
    validate_username(name).map_err(|e| Response::error(400, e))?;
    let name_owned = name.to_owned();
    blocking(ctx, move |s| s.user_by_name(&name_owned))
        .await?
        .ok_or_else(|| no_user(name))
}

fn no_user(name: &str) -> Response {
    Response::error(404, format!("no such user: {name}"))
}

/// Run a store call on the blocking pool; a failure is a 500 that names
/// the store's problem (the caller is the operator).
pub(super) async fn blocking<T: Send + 'static>(
    ctx: &Context,
    call: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, Response> {
    let store: Arc<dyn Store> = ctx.store.clone();
    match tokio::task::spawn_blocking(move || call(store.as_ref())).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(Response::error(500, format!("store: {e}"))),
        Err(_) => Err(Response::error(503, "the server is shutting down")),
    }
}

fn service_refusal(error: ServiceError) -> Response {
    let status = match &error {
        ServiceError::InvalidArgument(_) => 400,
        ServiceError::UsernameTaken(_) => 409,
        ServiceError::UnknownUser(_) => 404,
        ServiceError::ShuttingDown => 503,
        _ => 500,
    };
    Response::error(status, error)
}

fn json_body<T: serde::de::DeserializeOwned>(request: &Request) -> Result<T, Response> {
    serde_json::from_slice(&request.body)
        .map_err(|e| Response::error(400, format!("request body: {e}")))
}

pub(super) fn number_param<T: std::str::FromStr>(
    request: &Request,
    name: &str,
) -> Result<Option<T>, Response> {
    match request.query_param(name) {
        None => Ok(None),
        Some(text) => text
            .parse()
            .map(Some)
            .map_err(|_| Response::error(400, format!("query parameter {name} must be a number"))),
    }
}
