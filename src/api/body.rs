//! JSON request bodies with the API's error shape: a malformed body is 400 `invalid_json`,
//! a well-formed one with wrong or unknown fields (or a NUL character, which PostgreSQL
//! cannot store and SQLite would, so both refuse it here) 422 `invalid_field`, an oversized
//! one 413, another content type 415.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON body of type `T`.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json =
            req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| {
                ct.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
            });
        if !json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|_| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "request body too large"))?;
        // JSON can carry NUL only escaped.
        if bytes.windows(6).any(|w| w == b"\\u0000") {
            return Err(ApiError::unprocessable("invalid_field", "text may not contain NUL characters"));
        }
        serde_json::from_slice(&bytes).map(Body).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => ApiError::unprocessable("invalid_field", e.to_string()),
            _ => ApiError::bad_request("invalid_json", e.to_string()),
        })
    }
}
