//! `Idempotency-Key` on POSTs: the first response to a key is stored and replayed for 24 h;
//! the same key with a different request is a 409. Keys belong to the caller (org and
//! principal), so two callers cannot collide or read each other's responses.

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::auth::{Caller, Principal};
use crate::api::state::AppState;
use crate::args;
use crate::error::ApiError;
use crate::secrets::SecretBox;

const HEADER: &str = "idempotency-key";
const TTL_MS: i64 = 24 * 3600 * 1000;
/// Responses larger than this are not stored (and the key is released).
const MAX_STORED_BODY: usize = 1024 * 1024;

#[derive(sqlx::FromRow)]
struct Stored {
    request_hash: Vec<u8>,
    state: String,
    status: Option<i64>,
    response_body: Option<Vec<u8>>,
    content_type: Option<String>,
    expires_at: i64,
}

fn scope(caller: &Caller) -> (&str, &str) {
    match &caller.principal {
        Principal::Admin => ("platform", "admin"),
        Principal::Key { org, key_id, .. } => (org, key_id),
    }
}

pub async fn idempotent(State(s): State<AppState>, req: Request, next: Next) -> Result<Response, ApiError> {
    let Some(key) = req.headers().get(HEADER) else { return Ok(next.run(req).await) };
    if req.method() != Method::POST {
        return Ok(next.run(req).await);
    }
    let key = key
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255)
        .ok_or_else(|| ApiError::bad_request("invalid_idempotency_key", "Idempotency-Key must be 1 to 255 characters"))?
        .to_string();
    let caller = req.extensions().get::<Caller>().cloned().expect("authenticated before idempotency");
    let (org, principal) = scope(&caller);
    let (parts, body) = req.into_parts();
    let bytes = to_bytes(body, crate::api::state::MAX_BODY)
        .await
        .map_err(|_| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "request body too large"))?;
    let mut h = Sha256::new();
    h.update(parts.method.as_str());
    h.update([0]);
    h.update(parts.uri.path());
    h.update([0]);
    h.update(&bytes);
    let hash = h.finalize().to_vec();
    let now = s.clock.now_ms();

    let mut tx = s.db.begin(org).await?;
    let sql = "SELECT request_hash, state, status, response_body, content_type, expires_at FROM idempotency_keys \
               WHERE org_id = $1 AND principal_id = $2 AND key = $3";
    let existing: Option<Stored> = tx.fetch_optional(sql, args![org, principal, &key]).await?;
    match existing {
        Some(row) if row.expires_at > now => {
            tx.commit().await?;
            if row.request_hash != hash {
                return Err(ApiError::conflict(
                    "idempotency_key_reused",
                    "this Idempotency-Key was used with a different request",
                ));
            }
            if row.state != "done" {
                return Err(ApiError::conflict("idempotency_in_progress", "a request with this key is in progress"));
            }
            return replay(row, &s.secrets, &key_context(org, principal, &key));
        }
        Some(_) => {
            let sql = "DELETE FROM idempotency_keys WHERE org_id = $1 AND principal_id = $2 AND key = $3";
            tx.execute(sql, args![org, principal, &key]).await?;
        }
        None => {}
    }
    let sql = "INSERT INTO idempotency_keys (org_id, principal_id, key, method, path, request_hash, state, \
               created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, 'in_progress', $7, $8)";
    let inserted = tx
        .execute(sql, args![org, principal, &key, parts.method.as_str(), parts.uri.path(), hash, now, now + TTL_MS])
        .await;
    match inserted {
        Ok(_) => tx.commit().await?,
        // Another request with the key got in first.
        Err(crate::db::DbError::Conflict) => {
            return Err(ApiError::conflict("idempotency_in_progress", "a request with this key is in progress"));
        }
        Err(e) => return Err(e.into()),
    }

    let response = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    let (parts, body) = response.into_parts();
    let Ok(bytes) = to_bytes(body, MAX_STORED_BODY).await else {
        release(&s, org, principal, &key).await;
        return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "response too large"));
    };
    // Server errors are not answers: the key is released so a retry can succeed.
    if parts.status.is_server_error() {
        release(&s, org, principal, &key).await;
    } else {
        let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
        let sql = "UPDATE idempotency_keys SET state = 'done', status = $1, response_body = $2, content_type = $3 \
                   WHERE org_id = $4 AND principal_id = $5 AND key = $6";
        // Responses may carry secrets shown once (new API keys, join tokens): stored sealed.
        let sealed = s.secrets.seal(&bytes, &key_context(org, principal, &key));
        let args = args![parts.status.as_u16() as i64, sealed, content_type, org, principal, &key];
        // The request itself is done and committed: its answer goes out even if it cannot be
        // stored; a retry with the key then reads "in progress" until the key expires.
        if let Err(e) = run_one(&s, org, sql, args).await {
            tracing::warn!(error = %e, "idempotent response not stored");
        }
    }
    Ok(Response::from_parts(parts, Body::from(bytes)))
}

async fn run_one(
    s: &AppState,
    org: &str,
    sql: &'static str,
    args: Vec<crate::db::Arg>,
) -> Result<(), crate::db::DbError> {
    let mut tx = s.db.begin(org).await?;
    tx.execute(sql, args).await?;
    tx.commit().await
}

async fn release(s: &AppState, org: &str, principal: &str, key: &str) {
    let sql = "DELETE FROM idempotency_keys WHERE org_id = $1 AND principal_id = $2 AND key = $3";
    if let Err(e) = run_one(s, org, sql, args![org, principal, key]).await {
        tracing::warn!(error = %e, "idempotency key not released");
    }
}

/// What a stored response is sealed to: this caller's key, nobody else's.
fn key_context(org: &str, principal: &str, key: &str) -> String {
    format!("idempotency/{org}/{principal}/{key}")
}

fn replay(row: Stored, secrets: &SecretBox, context: &str) -> Result<Response, ApiError> {
    let body = secrets.open(row.response_body.as_deref().unwrap_or_default(), context).map_err(|e| {
        tracing::error!(error = %e, "stored idempotent response does not open; was secret_key changed?");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the stored response cannot be replayed")
    })?;
    let status = row.status.and_then(|s| StatusCode::from_u16(s as u16).ok()).unwrap_or(StatusCode::OK);
    let mut r = (status, body).into_response();
    if let Some(ct) = row.content_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
        r.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    r.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    Ok(r)
}
