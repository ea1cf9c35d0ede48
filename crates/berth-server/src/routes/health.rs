//! The server's own endpoints: the readiness probe, metrics and the API document (`/healthz`
//! is a closure in the route table).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use berth_store::{RunState, Store};

use super::AppState;
use crate::auth::{Caller, MetricsReader};
use crate::error::{ApiError, ApiResult};

/// For probes: no token, and nothing but whether the store answers (why not is logged only).
pub(super) async fn readyz<S: Store>(State(app): AppState<S>) -> ApiResult<&'static str> {
    if let Err(e) = app.store.ping().await {
        tracing::warn!(error = %e, "not ready: the store does not answer");
        return Err(ApiError::Unavailable(
            "not ready: the store does not answer".into(),
        ));
    }
    Ok("ready\n")
}

pub(super) async fn metrics<S: Store>(
    State(app): AppState<S>,
    _reader: MetricsReader,
) -> ApiResult<Response> {
    let counts = app.store.count_by_state().await?;
    let mut by_state: Vec<(String, i64)> = RunState::ON_COORDINATOR
        .iter()
        .map(|s| {
            (
                s.as_str().to_string(),
                counts.iter().find(|(c, _)| c == s).map_or(0, |(_, n)| *n),
            )
        })
        .collect();
    by_state.sort();
    let online = app
        .store
        .list_runners()
        .await?
        .iter()
        .filter(|r| r.online)
        .count() as i64;
    let text = app.metrics.render(&by_state, online);
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            crate::metrics::CONTENT_TYPE,
        )],
        text,
    )
        .into_response())
}

pub(super) async fn openapi<S: Store>(State(_app): AppState<S>, _caller: Caller) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        crate::openapi::DOCUMENT,
    )
        .into_response()
}
