//! HTTP errors: every failure becomes a status and a JSON body that says what to change.
//!
//! Every 5xx is logged: the request layer in `routes` writes one line with the method, the path
//! and the status, and, for errors of this type, the message (carried to it as a response
//! extension), so a server failure is never only seen by the client.

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
    /// The body is larger than the route accepts.
    TooLarge(String),
    /// The server failed (a bug, a stored value it cannot read, a disk that refused a write).
    Internal(String),
    Unavailable(String),
}

/// The message of a 5xx answer, for the log line the request layer writes.
#[derive(Debug, Clone)]
pub struct ServerFailure(pub String);

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { .. } => Self::NotFound(e.to_string()),
            StoreError::Conflict { .. } | StoreError::Rejected { .. } => {
                Self::Conflict(e.to_string())
            }
            StoreError::RunnerTaken { .. } => Self::Forbidden(e.to_string()),
            StoreError::Backend(_) | StoreError::UnsupportedUrl(_) => {
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
            Self::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, m, vec![]),
            Self::Internal(m) => (StatusCode::INTERNAL_SERVER_ERROR, m, vec![]),
            Self::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m, vec![]),
        };
        let failure = status
            .is_server_error()
            .then(|| ServerFailure(error.clone()));
        let mut response = (status, axum::Json(ErrorBody { error, errors })).into_response();
        if let Some(failure) = failure {
            response.extensions_mut().insert(failure);
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
