//! HTTP errors: every failure becomes a status and a JSON body that says what to change.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use berth_api::{ErrorBody, FieldError};
use berth_store::StoreError;

#[derive(Debug)]
pub enum ApiError {
    Unauthorized(String),
    Forbidden(String),
    NotFound(String),
    BadRequest(String),
    Invalid(Vec<FieldError>),
    Conflict(String),
    Unavailable(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { .. } => Self::NotFound(e.to_string()),
            StoreError::Conflict { .. } | StoreError::Rejected { .. } => {
                Self::Conflict(e.to_string())
            }
            StoreError::Backend(_) | StoreError::UnsupportedUrl(_) => {
                tracing::error!(error = %e, "store failure");
                Self::Unavailable(e.to_string())
            }
        }
    }
}

impl From<berth_api::ParseFailure> for ApiError {
    fn from(f: berth_api::ParseFailure) -> Self {
        match f {
            berth_api::ParseFailure::Malformed(m) => {
                Self::BadRequest(format!("the body is not valid JSON: {m}"))
            }
            berth_api::ParseFailure::Invalid(errors) => Self::Invalid(errors),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error, errors) = match self {
            Self::Unauthorized(m) => (StatusCode::UNAUTHORIZED, m, vec![]),
            Self::Forbidden(m) => (StatusCode::FORBIDDEN, m, vec![]),
            Self::NotFound(m) => (StatusCode::NOT_FOUND, m, vec![]),
            Self::BadRequest(m) => (StatusCode::BAD_REQUEST, m, vec![]),
            Self::Invalid(errors) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "the request is invalid".to_string(),
                errors,
            ),
            Self::Conflict(m) => (StatusCode::CONFLICT, m, vec![]),
            Self::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m, vec![]),
        };
        (status, axum::Json(ErrorBody { error, errors })).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
