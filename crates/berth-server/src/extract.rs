//! axum's extractors with their rejections as API errors: every refusal is the JSON `ErrorBody`
//! the document promises, never axum's plain-text answer.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A rejection's text as the API error of the same status.
fn api_error(rejection: impl IntoResponse + std::fmt::Display) -> ApiError {
    let message = rejection.to_string();
    match rejection.into_response().status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(message),
        status if status.is_server_error() => ApiError::Internal(message),
        _ => ApiError::BadRequest(message),
    }
}

/// The URL's path parameters (`axum::extract::Path`); one that does not decode is a 400.
pub struct UrlPath<T>(pub T);

impl<T, S> FromRequestParts<S> for UrlPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // Nothing is named with a NUL character, and PostgreSQL cannot even be asked about one.
        // An artifact's path is judged by the artifact routes themselves (a 422 naming the
        // problem); the names before it are ids.
        let path = parts.uri.path();
        let names = path.split_once("/artifacts/").map_or(path, |(ids, _)| ids);
        if names.to_ascii_lowercase().contains("%00") {
            return Err(ApiError::NotFound(
                "no such object: its name holds a NUL character (%00)".into(),
            ));
        }
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| Self(value))
            .map_err(api_error)
    }
}

/// The request body, up to the route's limit; a longer one is a 413.
pub struct Body(pub Bytes);

impl<S> FromRequest<S> for Body
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(request, state)
            .await
            .map(Self)
            .map_err(api_error)
    }
}
