//! JSON request bodies with the API's error shape: a malformed body is 400 `invalid_json`,
//! a well-formed one with wrong or unknown fields 422 `invalid_field`, an oversized one 413.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON body of type `T`.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Body(v)),
            Err(JsonRejection::JsonDataError(e)) => Err(ApiError::unprocessable("invalid_field", e.body_text())),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send Content-Type: application/json",
            )),
            Err(JsonRejection::BytesRejection(_)) => {
                Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "request body too large"))
            }
            Err(e) => Err(ApiError::bad_request("invalid_json", e.body_text())),
        }
    }
}
