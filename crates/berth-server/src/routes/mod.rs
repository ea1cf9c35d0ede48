//! The HTTP API. Handlers parse, authenticate, authorise and call the store; nothing else.
//!
//! One module per resource: `tokens`, `projects`, `runs` (with their audit, and the runner's
//! start and finish), `events` (a run's event stream, and the runner's batches), `artifacts`,
//! `runners` (registration, claims, heartbeats), `workflows`; `health` holds the probes, the
//! metrics and the API document. This module holds the route table and the helpers they share.

mod artifacts;
mod events;
mod health;
mod projects;
mod runners;
mod runs;
mod tokens;
mod workflows;

use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::handler::Handler;
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::Router;
use berth_api::*;
use berth_store::{Store, StoreError};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ServerFailure};
use crate::App;

pub(crate) use artifacts::{download_artifact, list_artifacts};
pub(crate) use events::{run_events, EventsQuery};
pub(crate) use projects::{create_project, list_projects};
pub(crate) use runners::list_runners;
pub(crate) use runs::{cancel_run, list_runs, run_audit, visible_run, ListQuery};
pub(crate) use tokens::{create_token, list_tokens};
pub(crate) use workflows::{list_workflows, visible_workflow, WorkflowListQuery};

use artifacts::upload_artifact;
use events::append_events;
use health::{metrics, openapi, readyz};

use runners::{claim, heartbeat, register_runner};
use runs::{finish_run, get_run, start_run, submit_run};
use tokens::revoke_token;
use workflows::{cancel_workflow, get_workflow, submit_workflow, workflow_audit, workflow_diff};

pub(crate) type AppState<S> = State<Arc<App<S>>>;

pub fn router<S: Store>(app: Arc<App<S>>) -> Router {
    let body_limit = app.config.max_body_bytes;
    let artifact_limit = app.config.max_artifact_bytes;
    // Event batches from runners carry output lines; they get more room than other bodies. The
    // handler's own limit is the inner layer, so it wins over the router's default below.
    let event_limit = DefaultBodyLimit::max(app.config.max_event_body_bytes);
    let artifacts = Router::new()
        .route(
            "/api/v1/runs/{id}/artifacts/{*path}",
            put(upload_artifact::<S>).get(download_artifact::<S>),
        )
        .layer(DefaultBodyLimit::max(artifact_limit));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz::<S>))
        .route("/metrics", get(metrics::<S>))
        .route("/api/v1/openapi.json", get(openapi::<S>))
        .route(
            "/api/v1/tokens",
            post(create_token::<S>).get(list_tokens::<S>),
        )
        .route(
            "/api/v1/tokens/{id}",
            axum::routing::delete(revoke_token::<S>),
        )
        .route(
            "/api/v1/projects",
            post(create_project::<S>).get(list_projects::<S>),
        )
        .route("/api/v1/runs", post(submit_run::<S>).get(list_runs::<S>))
        .route("/api/v1/runs/{id}", get(get_run::<S>))
        .route("/api/v1/runs/{id}/cancel", post(cancel_run::<S>))
        .route(
            "/api/v1/runs/{id}/events",
            get(run_events::<S>).post(append_events::<S>.layer(event_limit)),
        )
        .route("/api/v1/runs/{id}/audit", get(run_audit::<S>))
        .route("/api/v1/runs/{id}/artifacts", get(list_artifacts::<S>))
        .route("/api/v1/runs/{id}/start", post(start_run::<S>))
        .route("/api/v1/runs/{id}/finish", post(finish_run::<S>))
        .route(
            "/api/v1/workflows",
            post(submit_workflow::<S>).get(list_workflows::<S>),
        )
        .route("/api/v1/workflows/{id}", get(get_workflow::<S>))
        .route("/api/v1/workflows/{id}/audit", get(workflow_audit::<S>))
        .route("/api/v1/workflows/{id}/cancel", post(cancel_workflow::<S>))
        .route("/api/v1/workflows/{id}/diff", get(workflow_diff::<S>))
        .route("/api/v1/runners", get(list_runners::<S>))
        .route("/api/v1/runners/register", post(register_runner::<S>))
        .route("/api/v1/runners/{id}/claim", post(claim::<S>))
        .route("/api/v1/runners/{id}/heartbeat", post(heartbeat::<S>))
        .layer(DefaultBodyLimit::max(body_limit))
        .merge(artifacts)
        // The web dashboard: `/` and HTML pages under `/ui` (not part of the API document).
        .merge(crate::dashboard::router::<S>())
        .fallback(|| async {
            ApiError::NotFound("no such endpoint; GET /api/v1/openapi.json lists them".into())
        })
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            count_requests::<S>,
        ))
        .with_state(app)
}

/// Counts every answer by status, and logs every 5xx (with the error's message when the
/// handler gave one), so no server failure is seen only by the client.
async fn count_requests<S: Store>(
    State(app): AppState<S>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let status = response.status();
    app.metrics.request(status.as_u16());
    if status.is_server_error() {
        let error = response
            .extensions()
            .get::<ServerFailure>()
            .map_or("(no message)", |f| f.0.as_str());
        tracing::error!(%method, %path, status = status.as_u16(), %error, "request failed");
    }
    response
}

/// A query string's parameters, or a 422 saying what is wrong with them.
fn query_params<T>(
    query: Result<Query<T>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<T> {
    query.map(|Query(q)| q).map_err(|e| {
        ApiError::Invalid(vec![FieldError {
            field: "query".into(),
            message: e.body_text(),
        }])
    })
}

/// A 422 naming each query parameter whose text holds a NUL character: nothing is named with
/// one, and PostgreSQL cannot even be asked about one (the store would fail with a 503).
fn refuse_nul(params: &[(&str, Option<&str>)]) -> ApiResult<()> {
    refuse(
        params
            .iter()
            .filter(|(_, value)| value.is_some_and(|v| v.contains('\0')))
            .map(|(field, _)| FieldError {
                field: (*field).into(),
                message: "contains a NUL character (%00), which no name or id holds".into(),
            })
            .collect(),
    )
}

/// The most entries one page of a list holds.
const MAX_PAGE: i64 = 500;

/// A list's `limit` (default 100), or a 422 if it is not from 1 to 500.
fn list_limit(limit: Option<i64>) -> ApiResult<i64> {
    match limit {
        None => Ok(100),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::Invalid(vec![FieldError {
            field: "limit".into(),
            message: format!("{n} is out of range: a page holds 1 to {MAX_PAGE} entries"),
        }])),
    }
}

/// `errors` as a 422, if there are any.
fn refuse(errors: Vec<FieldError>) -> ApiResult<()> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Invalid(errors))
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    parse_strict(body).map_err(ApiError::from)
}

/// The row `lookup` finds for `id` (a `what`: run, workflow), if the caller may see it: a client
/// or admin token, and a row of its own project for a client token.
async fn visible<T>(
    caller: &Caller,
    what: &str,
    id: &str,
    lookup: impl Future<Output = Result<Option<T>, StoreError>>,
    project_of: fn(&T) -> &str,
) -> ApiResult<T> {
    caller.require_client()?;
    let row = lookup
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("{what} `{id}` does not exist")))?;
    caller.require_project(project_of(&row))?;
    Ok(row)
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use berth_store::{Role, TokenRecord};
    use futures_util::FutureExt;

    use super::*;

    fn caller(role: Role, project: Option<&str>) -> Caller {
        Caller {
            token: TokenRecord {
                id: "t1".into(),
                role,
                project: project.map(str::to_owned),
                created_at: 0,
                revoked_at: None,
            },
        }
    }

    /// `visible` for the workflow `wf-1`, whose lookup finds a row of `project` (`None`: no
    /// row); with whether the lookup ran. Every lookup here is ready at once.
    fn check(caller: &Caller, project: Option<&str>) -> (ApiResult<String>, bool) {
        let looked_up = Cell::new(false);
        let lookup = async {
            looked_up.set(true);
            Ok(project.map(str::to_owned))
        };
        let result = visible(caller, "workflow", "wf-1", lookup, |row: &String| row)
            .now_or_never()
            .expect("a ready lookup makes `visible` ready");
        (result, looked_up.get())
    }

    #[test]
    fn a_row_is_visible_to_its_projects_client_and_to_the_admin() {
        let client = caller(Role::Client, Some("demo"));
        assert_eq!(check(&client, Some("demo")).0.unwrap(), "demo");
        let admin = caller(Role::Admin, None);
        assert_eq!(check(&admin, Some("other")).0.unwrap(), "other");
    }

    #[test]
    fn another_projects_row_is_refused_and_a_missing_one_is_named() {
        let client = caller(Role::Client, Some("demo"));
        let (refused, _) = check(&client, Some("other"));
        assert!(
            matches!(&refused, Err(ApiError::Forbidden(m)) if m.contains("`other`")),
            "{refused:?}"
        );
        let (missing, _) = check(&client, None);
        assert!(
            matches!(&missing, Err(ApiError::NotFound(m)) if m == "workflow `wf-1` does not exist"),
            "{missing:?}"
        );
    }

    #[test]
    fn a_runner_token_is_refused_before_any_lookup() {
        let (result, looked_up) = check(&caller(Role::Runner, None), Some("demo"));
        assert!(matches!(result, Err(ApiError::Forbidden(_))), "{result:?}");
        assert!(
            !looked_up,
            "the store was asked for a row a runner token may not see"
        );
    }
}
