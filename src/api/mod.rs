//! HTTP surface: `app(state) -> Router`: health, metrics, the demo pages (LiveKit room app
//! at `/`, WHIP/WHEP at `/whip`), WHIP/WHEP and LiveKit signaling, and the control API
//! under `/v1` (JSON, authenticated, idempotent POSTs, audited mutations).

pub mod audit;
pub mod auth;
mod body;
pub mod history;
mod idempotency;
mod metrics;
pub mod ratelimit;
mod state;
pub mod twirp;
pub mod v1;
pub mod webhook;

pub use self::body::Body;
pub use self::state::{AppState, MAX_BODY};

use std::sync::atomic::Ordering;

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use crate::error::ApiError;
use crate::ids::{Identity, RoomName};
use crate::signal::token;
use crate::signal::{livekit, whip};

/// The whole HTTP application.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/", get(demo_page))
        .route("/whip", get(whip_page))
        .route("/demo.js", get(demo_script))
        .route("/demo.css", get(demo_style))
        .route("/vendor/livekit-client.umd.js", get(livekit_bundle))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::metrics))
        .route("/dev/token", get(dev_token))
        .with_state(state.clone())
        .merge(v1::router(state.clone()))
        .merge(twirp::router(state.clone()))
        .merge(whip::router(state.whip))
        .merge(livekit::router(state.livekit))
}

async fn demo_page() -> Html<&'static str> {
    Html(include_str!("../../web/index.html"))
}

async fn demo_script() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], include_str!("../../web/demo.js"))
}

async fn demo_style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], include_str!("../../web/demo.css"))
}

async fn whip_page() -> Html<&'static str> {
    Html(include_str!("../../web/whip.html"))
}

/// The livekit-client UMD bundle the room page at `/` loads. It is not compiled in: it is
/// npm's file, installed by `scripts/web-vendor.sh`, and keeping ~0.5 MB of third-party
/// JavaScript out of the binary keeps it out of the repository too. Read per request rather
/// than once at start so re-running the script (new version, first install after the server
/// started) takes effect without a restart; one page load fetches it once and the OS caches
/// the file, so the read costs nothing that matters.
async fn livekit_bundle(State(s): State<AppState>) -> Result<Response, ApiError> {
    let path = s.web_dir.join("vendor/livekit-client.umd.js");
    // tokio is built without its `fs` feature; the blocking pool does the same job.
    let read = tokio::task::spawn_blocking({
        let path = path.clone();
        move || std::fs::read(path)
    })
    .await;
    match read {
        Ok(Ok(body)) => Ok(([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], body).into_response()),
        Ok(Err(e)) => {
            tracing::warn!(path = %path.display(), error = %e, "livekit-client bundle unavailable");
            Err(ApiError::not_found(
                "bundle_missing",
                "livekit-client.umd.js is not installed in web_dir/vendor: run ./run.sh (or scripts/web-vendor.sh)",
            ))
        }
        // Only a panic in the read gets here.
        Err(_) => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "reading the bundle failed")),
    }
}

async fn readyz(State(s): State<AppState>) -> Response {
    if s.draining.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "status": "draining" }))).into_response();
    }
    if s.sfu.call(|_, _| ()).await.is_err() {
        return ApiError::unavailable().into_response();
    }
    let database = s.db.check().await.map(|()| s.db.backend().to_string()).map_err(|e| e.to_string());
    let redis = match &s.redis {
        None => Ok("not configured".to_string()),
        Some(r) => r.ping().await.map(|()| "ok".to_string()).map_err(|e| e.to_string()),
    };
    let ready = database.is_ok() && redis.is_ok();
    let show = |r: Result<String, String>| r.unwrap_or_else(|e| format!("unavailable: {e}"));
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "unavailable" },
        "database": show(database),
        "redis": show(redis),
    });
    if ready {
        Json(body).into_response()
    } else {
        tracing::warn!(%body, "not ready");
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

#[derive(Deserialize)]
struct DevTokenQuery {
    room: String,
    identity: String,
}

/// Mints a join token for the demo page. Exists only in dev mode, where the secret is local.
async fn dev_token(
    State(s): State<AppState>,
    Query(q): Query<DevTokenQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Some((key, secret)) = &s.dev_keys else {
        return Err(ApiError::not_found("not_dev_mode", "tokens are minted here only in dev mode"));
    };
    let room = RoomName::new(q.room).map_err(|e| ApiError::bad_request("invalid_room", format!("room name {e}")))?;
    let identity =
        Identity::new(q.identity).map_err(|e| ApiError::bad_request("invalid_identity", format!("identity {e}")))?;
    let now = (s.clock.now_ms() / 1000) as u64;
    let claims = token::join_claims(key, room.as_str(), identity.as_str(), now, 6 * 3600);
    Ok(Json(serde_json::json!({ "token": token::mint(&claims, secret) })))
}
