//! `/v1`: the control API. Every route is authenticated ([`super::auth`]), POSTs honour
//! `Idempotency-Key` ([`super::idempotency`]), and every mutation writes its audit entry in
//! its own transaction ([`super::audit`]).

pub mod aic;
mod calls;
mod keys;
pub mod livekit_keys;
mod orgs;
mod rooms;
mod tokens;
pub mod transcripts;

pub(crate) use self::rooms::check_room_fields;
pub use self::tokens::follow_revocations;
pub(crate) use self::tokens::{revoke_room, room_created};
mod users;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::header;
use axum::middleware::from_fn_with_state;
use axum::response::IntoResponse;
use axum::routing::get;

use super::auth::{Caller, Perm};
use super::{audit, auth, idempotency};
use crate::api::state::AppState;
use crate::api::state::MAX_BODY;
use crate::db::Tx;
use crate::error::ApiError;

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(orgs::router())
        .merge(users::router())
        .merge(keys::router())
        .merge(rooms::router())
        .merge(calls::router())
        .merge(aic::router())
        .merge(transcripts::router())
        .merge(tokens::router())
        .merge(livekit_keys::router())
        .merge(audit::router())
        .layer(from_fn_with_state(state.clone(), idempotency::idempotent))
        .layer(from_fn_with_state(state.clone(), auth::limit))
        .layer(from_fn_with_state(state.clone(), auth::authenticate))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .route("/v1/openapi.json", get(openapi))
        .with_state(state)
}

/// The API's OpenAPI document; public, as API documents are.
async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], include_str!("../openapi.json"))
}

/// How a mutation opens: the caller's org (when its key has `perm`), the time, and a
/// transaction on the org.
async fn open<'c>(s: &AppState, caller: &'c Caller, perm: Perm) -> Result<(&'c str, i64, Tx), ApiError> {
    let org = caller.require(perm)?;
    Ok((org, s.clock.now_ms(), s.db.begin(org).await?))
}

/// A list's page size: what was asked, 1 to 1000, else 100.
fn page_limit(asked: Option<i64>) -> i64 {
    asked.unwrap_or(100).clamp(1, 1000)
}

/// A name or text field: trimmed length within bounds.
fn check_len(field: &'static str, v: &str, max: usize) -> Result<(), ApiError> {
    if v.trim().is_empty() || v.len() > max {
        return Err(ApiError::unprocessable("invalid_field", format!("{field} must be 1 to {max} characters")));
    }
    Ok(())
}

/// 404 with the resource named, the same whether the id does not exist or belongs to
/// another org: a caller learns nothing about other tenants.
fn not_found(what: &'static str) -> ApiError {
    ApiError::not_found("not_found", format!("{what} not found"))
}

/// A column holding JSON as text (or nothing).
pub(crate) trait JsonText {
    fn json_text(&self) -> Option<&str>;
}

impl JsonText for String {
    fn json_text(&self) -> Option<&str> {
        Some(self)
    }
}

impl JsonText for Option<String> {
    fn json_text(&self) -> Option<&str> {
        self.as_deref()
    }
}

/// Serializes JSON stored as text as the JSON it holds.
pub(crate) fn raw_json<S: serde::Serializer, T: JsonText>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    use serde::Serialize;
    let v = v.json_text().and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok());
    v.unwrap_or(serde_json::Value::Null).serialize(s)
}

/// Metadata documents are JSON objects of bounded size, stored as text.
fn metadata_text(v: Option<&serde_json::Value>) -> Result<Option<String>, ApiError> {
    let Some(v) = v else { return Ok(None) };
    if !v.is_object() {
        return Err(ApiError::unprocessable("invalid_field", "metadata must be a JSON object"));
    }
    let text = v.to_string();
    if text.len() > 16 * 1024 {
        return Err(ApiError::unprocessable("invalid_field", "metadata must be at most 16 KiB"));
    }
    Ok(Some(text))
}

fn check_email(v: &str) -> Result<(), ApiError> {
    let v = v.trim();
    let ok = v.len() <= 254 && v.split_once('@').is_some_and(|(a, b)| !a.is_empty() && b.contains('.'));
    if !ok || v.chars().any(char::is_whitespace) {
        return Err(ApiError::unprocessable("invalid_field", "email is not a valid address"));
    }
    Ok(())
}
