//! The HTTP API. Handlers parse, authenticate, authorise and call the store; nothing else.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::handler::Handler;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use berth_api::*;
use berth_store::{
    ClaimRequest, Finish, NewEvent, NewRun, Project, Role, RunFilter, RunRow, RunState,
    RunnerRecord, Store, StoreError, TokenRecord, Wake,
};
use futures_util::{Stream, StreamExt};
use rand::Rng;

use crate::auth::{hash_secret, new_secret, Caller, MetricsReader};
use crate::clock::now_ms;
use crate::error::{ApiError, ApiResult, ServerFailure};
use crate::extract::{Body, UrlPath};
use crate::{views, workflows, App};

pub(crate) type AppState<S> = State<Arc<App<S>>>;

/// Longest a claim or heartbeat request is held open.
const MAX_WAIT: Duration = Duration::from_secs(30);

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

/// For probes: no token, and nothing but whether the store answers (why not is logged only).
async fn readyz<S: Store>(State(app): AppState<S>) -> ApiResult<&'static str> {
    if let Err(e) = app.store.ping().await {
        tracing::warn!(error = %e, "not ready: the store does not answer");
        return Err(ApiError::Unavailable(
            "not ready: the store does not answer".into(),
        ));
    }
    Ok("ready\n")
}

async fn metrics<S: Store>(State(app): AppState<S>, _reader: MetricsReader) -> ApiResult<Response> {
    let counts = app.store.count_by_state().await?;
    let mut by_state: Vec<(String, i64)> = RunState::ALL
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
            "text/plain; version=0.0.4",
        )],
        text,
    )
        .into_response())
}

async fn openapi<S: Store>(State(_app): AppState<S>, _caller: Caller) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        crate::openapi::DOCUMENT,
    )
        .into_response()
}

// Tokens and projects (admin).

async fn create_token<S: Store>(
    State(app): AppState<S>,
    caller: Caller,
    Body(body): Body,
) -> ApiResult<(StatusCode, Json<TokenCreated>)> {
    caller.require_admin()?;
    let request: CreateToken = parse(&body)?;
    let role = match request.role.as_str() {
        "client" => Role::Client,
        "runner" => Role::Runner,
        other => {
            return Err(ApiError::Invalid(vec![FieldError {
                field: "role".into(),
                message: format!("`{other}` is not a role: expected client or runner"),
            }]))
        }
    };
    if let Some(project) = &request.project {
        if role == Role::Runner {
            return Err(ApiError::Invalid(vec![FieldError {
                field: "project".into(),
                message: "runner tokens are not limited to a project".into(),
            }]));
        }
        if app.store.project(project).await?.is_none() {
            return Err(ApiError::Invalid(vec![FieldError {
                field: "project".into(),
                message: format!("no project named `{project}`"),
            }]));
        }
    }
    let (id, secret) = new_secret();
    let record = TokenRecord {
        id: id.clone(),
        role,
        project: request.project.clone(),
        created_at: now_ms(),
        revoked_at: None,
    };
    app.store
        .create_token(&record, &hash_secret(&secret))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(TokenCreated {
            id,
            token: secret,
            role: request.role,
            project: request.project,
        }),
    ))
}

pub(crate) async fn list_tokens<S: Store>(
    State(app): AppState<S>,
    caller: Caller,
) -> ApiResult<Json<Vec<TokenView>>> {
    caller.require_admin()?;
    Ok(Json(
        app.store
            .list_tokens()
            .await?
            .into_iter()
            .map(views::token)
            .collect(),
    ))
}

async fn revoke_token<S: Store>(
    State(app): AppState<S>,
    caller: Caller,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    app.store.revoke_token(&id, now_ms()).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn create_project<S: Store>(
    State(app): AppState<S>,
    caller: Caller,
    Body(body): Body,
) -> ApiResult<(StatusCode, Json<ProjectView>)> {
    caller.require_admin()?;
    let request: CreateProject = parse(&body)?;
    let mut errors = Vec::new();
    if request.name.is_empty()
        || !request
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        errors.push(FieldError {
            field: "name".into(),
            message: format!(
                "`{}` is not a project name: expected letters, digits, `-`, `_` or `.`",
                request.name
            ),
        });
    }
    for (field, path) in std::iter::once(("workspace_root".to_string(), &request.workspace_root))
        .chain(
            request
                .allowed_paths
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("allowed_paths[{i}]"), p)),
        )
    {
        if !path.starts_with('/') || path.split('/').any(|p| p == "..") {
            errors.push(FieldError {
                field,
                message: format!("`{path}` must be an absolute path without `..`"),
            });
        }
    }
    if let Some(ceiling) = &request.egress_ceiling {
        if let Err(e) = berth_core::egress::check_ceiling_rules(ceiling) {
            errors.push(FieldError {
                field: "egress_ceiling".into(),
                message: e.message,
            });
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    let project = Project {
        name: request.name,
        workspace_root: request.workspace_root,
        allowed_paths: request.allowed_paths,
        egress_ceiling: request.egress_ceiling,
        created_at: now_ms(),
    };
    app.store.create_project(&project).await?;
    Ok((StatusCode::CREATED, Json(views::project(project))))
}

pub(crate) async fn list_projects<S: Store>(
    State(app): AppState<S>,
    caller: Caller,
) -> ApiResult<Json<Vec<ProjectView>>> {
    caller.require_client()?;
    let own = caller.token.project.clone();
    Ok(Json(
        app.store
            .list_projects()
            .await?
            .into_iter()
            .filter(|p| own.as_ref().is_none_or(|o| *o == p.name))
            .map(views::project)
            .collect(),
    ))
}

// Runs (clients).

async fn submit_run<S: Store>(
    State(app): AppState<S>,
    caller: Caller,
    Body(body): Body,
) -> ApiResult<(StatusCode, Json<RunView>)> {
    caller.require_client()?;
    let request: SubmitRun = parse(&body)?;
    caller.require_project(&request.project)?;
    let Some(project) = app.store.project(&request.project).await? else {
        return Err(ApiError::Invalid(vec![FieldError {
            field: "project".into(),
            message: format!("no project named `{}`", request.project),
        }]));
    };
    let scope = ProjectScope {
        workspace_root: project.workspace_root.clone(),
        allowed_paths: project.allowed_paths.clone(),
        egress_ceiling: project.egress_ceiling.clone(),
    };
    let errors = validate_submission(&request, &scope);
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    let now = now_ms();
    let run = NewRun {
        id: berth_core::ids::run_id(now as u64, rand::rng().random()),
        project: request.project.clone(),
        execution_mode: match request.execution_mode {
            ExecutionMode::DockerSandbox => "docker-sandbox".into(),
            ExecutionMode::Local => "local".into(),
        },
        spec: serde_json::to_value(&request.sandbox)
            .map_err(|e| ApiError::BadRequest(e.to_string()))?,
        tags: berth_api::routing_tags(&request.tags, request.sandbox.isolation.as_deref()),
        labels: request.labels.clone(),
        created_at: now,
        actor: caller.actor(),
        pinned_runner: None,
    };
    let row = app.store.insert_run(&run).await?;
    app.wake(Wake::QUEUED.with(Wake::EVENTS));
    Ok((StatusCode::CREATED, Json(with_warnings(&app, row).await?)))
}

/// How long after its last heartbeat a runner that went away still counts as one that may come
/// back and claim a queued run.
const RECENTLY_SEEN_MS: i64 = 60 * 60 * 1000;

/// The run's view, with why it may wait forever when it is queued: no runner online or seen in
/// the last hour has all its tags (or takes runs without tags).
async fn with_warnings<S: Store>(app: &App<S>, row: RunRow) -> ApiResult<RunView> {
    let queued = row.state == RunState::Queued && row.pinned_runner.is_none();
    let tags = row.tags.clone();
    let mut view = views::run(row);
    if !queued {
        return Ok(view);
    }
    let now = now_ms();
    let seen: Vec<_> = app
        .store
        .list_runners()
        .await?
        .into_iter()
        .filter(|r| r.online || now - r.last_heartbeat < RECENTLY_SEEN_MS)
        .collect();
    let could_claim = |r: &&RunnerRecord| {
        tags.iter().all(|t| r.tags.contains(t)) && !(r.require_matching_tags && tags.is_empty())
    };
    if seen.is_empty() {
        view.warnings.push(
            "no runner is online or was seen in the last hour: the run waits until one registers"
                .into(),
        );
    } else if !seen.iter().any(|r| could_claim(&r)) {
        let wanted = if tags.is_empty() {
            "takes runs without tags (all use --require-matching-tags)".to_string()
        } else {
            format!("has the tags {}", tags.join(","))
        };
        let runners: Vec<String> = seen
            .iter()
            .map(|r| format!("{} [{}]", r.name, r.tags.join(",")))
            .collect();
        view.warnings.push(format!(
            "no runner online or seen in the last hour {wanted} (runners: {}): the run waits until one that does registers",
            runners.join(", ")
        ));
    }
    Ok(view)
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    pub(crate) state: Option<String>,
    pub(crate) project: Option<String>,
    pub(crate) tag: Option<String>,
    pub(crate) after: Option<String>,
    pub(crate) limit: Option<i64>,
}

pub(crate) async fn list_runs<S: Store>(
    State(app): AppState<S>,
    caller: Caller,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<RunList>> {
    caller.require_client()?;
    let query = query_params(query)?;
    let state = match &query.state {
        Some(s) => Some(RunState::parse(s).ok_or_else(|| {
            ApiError::Invalid(vec![FieldError { field: "state".into(), message: format!("`{s}` is not a run state: expected one of queued, claimed, running, succeeded, failed, timed_out, cancelled, lost, error") }])
        })?),
        None => None,
    };
    if let Some(project) = &query.project {
        caller.require_project(project)?;
    }
    let limit = list_limit(query.limit)?;
    let filter = RunFilter {
        state,
        project: query.project,
        projects_in: caller.token.project.clone().map(|p| vec![p]),
        tag: query.tag,
        after: query.after,
        limit,
    };
    let rows = app.store.list_runs(&filter).await?;
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.id.clone()))
        .flatten();
    Ok(Json(RunList {
        runs: rows.into_iter().map(views::run).collect(),
        next,
    }))
}

/// The run, if the caller may see it.
pub(crate) async fn visible_run<S: Store>(
    app: &App<S>,
    caller: &Caller,
    id: &str,
) -> ApiResult<RunRow> {
    caller.require_client()?;
    let row = app
        .store
        .run(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("run `{id}` does not exist")))?;
    caller.require_project(&row.project)?;
    Ok(row)
}

async fn get_run<S: Store>(
    State(app): AppState<S>,
    caller: Caller,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<Json<RunView>> {
    match visible_run(&app, &caller, &id).await {
        Err(ApiError::NotFound(message)) => Ok(Json(
            with_warnings(&app, run_by_prefix(&app, &caller, &id, message).await?).await?,
        )),
        found => Ok(Json(with_warnings(&app, found?).await?)),
    }
}

/// The one run this caller can see whose id starts with `prefix`, as `berth show` finds local
/// runs; `not_found` when there is none, a 409 naming them when several match.
async fn run_by_prefix<S: Store>(
    app: &App<S>,
    caller: &Caller,
    prefix: &str,
    not_found: String,
) -> ApiResult<RunRow> {
    let mut visible: Vec<RunRow> = app
        .store
        .runs_with_prefix(prefix, 100)
        .await?
        .into_iter()
        .filter(|run| caller.require_project(&run.project).is_ok())
        .collect();
    match visible.len() {
        0 => Err(ApiError::NotFound(not_found)),
        1 => Ok(visible.remove(0)),
        _ => Err(ApiError::Conflict(format!(
            "`{prefix}` is the start of several run ids: {}",
            visible
                .iter()
                .take(5)
                .map(|r| r.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

pub(crate) async fn cancel_run<S: Store>(
    State(app): AppState<S>,
    caller: Caller,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<Json<RunView>> {
    visible_run(&app, &caller, &id).await?;
    let row = app
        .store
        .request_cancel(&id, &caller.actor(), now_ms())
        .await?;
    app.wake(Wake::CANCEL.with(Wake::EVENTS));
    spawn_advance(&app, &row);
    Ok(Json(views::run(row)))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventsQuery {
    follow: Option<bool>,
    after: Option<i64>,
}

pub(crate) async fn run_events<S: Store>(
    State(app): AppState<S>,
    caller: Caller,
    UrlPath(id): UrlPath<String>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    visible_run(&app, &caller, &id).await?;
    let query = query_params(query)?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok());
    let start = resume.or(query.after).unwrap_or(0);
    let follow = query.follow.unwrap_or(false);
    let batches = futures_util::stream::unfold(
        (app, id, start, false),
        move |(app, id, after, done)| async move {
            if done {
                return None;
            }
            let (batch, after, done) = next_sse_batch(&app, &id, after, follow).await;
            Some((batch, (app, id, after, done)))
        },
    );
    let stream = batches
        .flat_map(|batch| futures_util::stream::iter(batch.into_iter().map(Ok::<_, Infallible>)));
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// The next SSE events after `after`: waits for new ones while following; ends with an `end`
/// event once the run is over and every event was sent. Returns (events, new cursor, done).
async fn next_sse_batch<S: Store>(
    app: &App<S>,
    id: &str,
    after: i64,
    follow: bool,
) -> (Vec<SseEvent>, i64, bool) {
    loop {
        // Register for wake-ups before reading, so an event appended in between is not missed.
        let notified = app.events.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let batch = match app.store.events_after(id, after, 500).await {
            Ok(batch) => batch,
            Err(e) => {
                tracing::error!(run = %id, error = %e, "reading events for a stream failed");
                return (
                    vec![SseEvent::default().event("error").data(e.to_string())],
                    after,
                    true,
                );
            }
        };
        if let Some(last) = batch.last().map(|e| e.seq) {
            let events = batch
                .into_iter()
                .map(|e| {
                    let view = views::event(e);
                    let data = serde_json::to_string(&view).unwrap_or_default();
                    SseEvent::default()
                        .id(view.seq.to_string())
                        .event(view.kind)
                        .data(data)
                })
                .collect();
            return (events, last, false);
        }
        let finished = match app.store.run(id).await {
            Ok(Some(row)) => row.state.is_final(),
            _ => true,
        };
        if !follow || finished {
            // Events written just before the final state was seen are read on the next pass.
            match app.store.events_after(id, after, 1).await {
                Ok(more) if !more.is_empty() => continue,
                _ => {
                    return (
                        vec![SseEvent::default().event("end").data("{}")],
                        after,
                        true,
                    )
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
    }
}

pub(crate) async fn run_audit<S: Store>(
    State(app): AppState<S>,
    caller: Caller,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<Json<Vec<AuditView>>> {
    visible_run(&app, &caller, &id).await?;
    Ok(Json(
        app.store
            .audit(&id)
            .await?
            .into_iter()
            .map(views::audit)
            .collect(),
    ))
}

fn artifacts_dir<S: Store>(app: &App<S>, run_id: &str) -> PathBuf {
    workflows::artifacts_dir(&app.config.state_dir, run_id)
}

/// Longest artifact path, and longest name in it (the file systems' usual limit).
const MAX_ARTIFACT_PATH: usize = 1024;
const MAX_ARTIFACT_NAME: usize = 255;

/// A relative artifact path that stays inside its directory and that a file system can hold,
/// or a 422 naming the problem.
fn artifact_path(path: &str) -> ApiResult<PathBuf> {
    let candidate = Path::new(path);
    let problem = if path.is_empty() {
        Some("is empty".to_string())
    } else if path.contains('\0') {
        Some("contains a NUL byte".to_string())
    } else if path.starts_with('/') {
        Some("is absolute; artifact paths are relative".to_string())
    } else if path.split('/').any(|name| name == "..") {
        Some("contains `..`".to_string())
    } else if path.len() > MAX_ARTIFACT_PATH {
        Some(format!(
            "is {} bytes long; the limit is {MAX_ARTIFACT_PATH}",
            path.len()
        ))
    } else if let Some(name) = path.split('/').find(|n| n.len() > MAX_ARTIFACT_NAME) {
        Some(format!(
            "has a name of {} bytes; the limit is {MAX_ARTIFACT_NAME}",
            name.len()
        ))
    } else if !candidate
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        Some("must be a plain relative path (no `.`)".to_string())
    } else {
        None
    };
    match problem {
        None => Ok(candidate.to_path_buf()),
        Some(problem) => {
            // The path itself may be long or hold control characters: quote a short prefix.
            let shown: String = path.chars().take(80).collect();
            let more = if shown.len() < path.len() { "…" } else { "" };
            Err(ApiError::Invalid(vec![FieldError {
                field: "path".into(),
                message: format!("the artifact path {shown:?}{more} {problem}"),
            }]))
        }
    }
}

pub(crate) async fn list_artifacts<S: Store>(
    State(app): AppState<S>,
    caller: Caller,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<Json<Vec<ArtifactView>>> {
    visible_run(&app, &caller, &id).await?;
    let root = artifacts_dir(&app, &id);
    let mut found = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                let rel = entry
                    .path()
                    .strip_prefix(&root)
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                found.push(ArtifactView {
                    path: rel,
                    size: meta.len(),
                });
            }
        }
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Json(found))
}

pub(crate) async fn download_artifact<S: Store>(
    State(app): AppState<S>,
    caller: Caller,
    UrlPath((id, path)): UrlPath<(String, String)>,
) -> ApiResult<Response> {
    visible_run(&app, &caller, &id).await?;
    let file = artifacts_dir(&app, &id).join(artifact_path(&path)?);
    match std::fs::symlink_metadata(&file) {
        Ok(meta) if meta.is_file() => {}
        _ => {
            return Err(ApiError::NotFound(format!(
                "run `{id}` has no artifact `{path}`"
            )))
        }
    }
    let bytes = tokio::fs::read(&file)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        bytes,
    )
        .into_response())
}

// Runner endpoints.

async fn register_runner<S: Store>(
    State(app): AppState<S>,
    caller: Caller,
    Body(body): Body,
) -> ApiResult<Json<Registered>> {
    caller.require_runner()?;
    let request: RegisterRunner = parse(&body)?;
    if request.name.is_empty()
        || !request
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(ApiError::Invalid(vec![FieldError {
            field: "name".into(),
            message: format!(
                "`{}` is not a runner name: expected letters, digits, `-`, `_` or `.`",
                request.name
            ),
        }]));
    }
    if request.capacity < 1 {
        return Err(ApiError::Invalid(vec![FieldError {
            field: "capacity".into(),
            message: "must be at least 1".into(),
        }]));
    }
    let now = now_ms();
    let record = RunnerRecord {
        id: request.name.clone(),
        name: request.name,
        tags: request.tags,
        require_matching_tags: request.require_matching_tags,
        capacity: request.capacity,
        registered_at: now,
        last_heartbeat: now,
        online: true,
        token_id: Some(caller.token.id.clone()),
    };
    app.store.register_runner(&record).await?;
    Ok(Json(Registered {
        runner_id: record.id,
        lease_ms: app.config.lease.as_millis() as i64,
        heartbeat_ms: app.config.heartbeat.as_millis() as i64,
    }))
}

/// The runner `id`, if the caller's token is the one it is registered with (403 otherwise).
async fn known_runner<S: Store>(
    app: &App<S>,
    caller: &Caller,
    id: &str,
) -> ApiResult<RunnerRecord> {
    caller.require_runner()?;
    let mut runner = app
        .store
        .runner(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("runner `{id}` is not registered")))?;
    if runner.token_id.as_deref() != Some(caller.token.id.as_str()) {
        // Taken only if free: registered before names were bound, or its token was revoked.
        app.store.bind_runner(id, &caller.token.id).await?;
        runner.token_id = Some(caller.token.id.clone());
    }
    Ok(runner)
}

async fn claim<S: Store>(
    State(app): AppState<S>,
    caller: Caller,
    UrlPath(runner_id): UrlPath<String>,
    Body(body): Body,
) -> ApiResult<Response> {
    let runner = known_runner(&app, &caller, &runner_id).await?;
    let request: ClaimBody = if body.is_empty() {
        ClaimBody { wait_ms: 0 }
    } else {
        parse(&body)?
    };
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(request.wait_ms).min(MAX_WAIT);
    // A claim is a sign of life too; writing it once per half heartbeat is plenty.
    let now = now_ms();
    if now - runner.last_heartbeat > app.config.heartbeat.as_millis() as i64 / 2 {
        app.store.runner_heartbeat(&runner_id, now).await?;
    }
    loop {
        let notified = app.queued.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let lease_token = hex::encode(rand::rng().random::<[u8; 16]>());
        let now = now_ms();
        let claim = ClaimRequest {
            runner_id: runner.id.clone(),
            runner_tags: runner.tags.clone(),
            require_matching_tags: runner.require_matching_tags,
            lease_token: lease_token.clone(),
            now,
            lease_ms: app.config.lease.as_millis() as i64,
        };
        if let Some(row) = app.store.claim(&claim).await? {
            app.wake(Wake::EVENTS);
            let sandbox = match views::sandbox(&row) {
                Ok(sandbox) => sandbox,
                Err(e) => return Err(unreadable_spec(&app, row, &lease_token, &e).await),
            };
            app.metrics.claimed(now - row.created_at);
            let project = app.store.project(&row.project).await?;
            let (workspace_root, allowed_paths, egress_ceiling) = project
                .map(|p| (p.workspace_root, p.allowed_paths, p.egress_ceiling))
                .unwrap_or_default();
            let claimed = Claimed {
                run: views::run_with(row, sandbox),
                lease_token,
                lease_ms: claim.lease_ms,
                workspace_root,
                allowed_paths,
                egress_ceiling,
            };
            return Ok(Json(claimed).into_response());
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
    }
}

/// A claimed run whose stored spec does not parse is never handed out (a default spec would run
/// something nobody submitted): it ends `error` with the reason, and the claim answers 500.
async fn unreadable_spec<S: Store>(
    app: &Arc<App<S>>,
    row: RunRow,
    lease_token: &str,
    e: &serde_json::Error,
) -> ApiError {
    tracing::error!(run = %row.id, error = %e, "the stored spec of a claimed run does not parse; the run ends as error");
    let finish = Finish {
        state: RunState::Error,
        exit_code: None,
        reason: Some(format!(
            "the server cannot read the run's stored spec ({e}); it was not handed to a runner"
        )),
        now: now_ms(),
    };
    match app
        .store
        .finish_run(&row.id, lease_token, &finish, "server")
        .await
    {
        Ok(ended) => {
            app.wake(Wake::EVENTS);
            spawn_advance(app, &ended);
        }
        Err(e) => {
            tracing::error!(run = %row.id, error = %e, "ending a run with an unreadable spec failed; its lease will expire");
        }
    }
    ApiError::Internal(format!(
        "run `{}` has a stored spec the server cannot read ({e}); it was ended as error instead of being handed out",
        row.id
    ))
}

async fn heartbeat<S: Store>(
    State(app): AppState<S>,
    caller: Caller,
    UrlPath(runner_id): UrlPath<String>,
    Body(body): Body,
) -> ApiResult<Json<HeartbeatReply>> {
    known_runner(&app, &caller, &runner_id).await?;
    let request: HeartbeatBody = parse(&body)?;
    refuse(heartbeat_errors(&request))?;
    let lease_ms = app.config.lease.as_millis() as i64;
    let now = now_ms();
    app.store.runner_heartbeat(&runner_id, now).await?;
    let mut reply = HeartbeatReply {
        cancel: Vec::new(),
        revoked: Vec::new(),
        ended_workflows: app.store.ended_workflows(&request.workflows).await?,
    };
    for lease in &request.leases {
        match app
            .store
            .renew_lease(&lease.run_id, &lease.lease_token, now, lease_ms)
            .await
        {
            Ok(row) if row.cancel_requested => reply.cancel.push(row.id),
            Ok(_) => {}
            Err(StoreError::Rejected { .. } | StoreError::NotFound { .. }) => {
                reply.revoked.push(lease.run_id.clone())
            }
            Err(e) => return Err(e.into()),
        }
    }
    if !reply.cancel.is_empty()
        || !reply.revoked.is_empty()
        || !reply.ended_workflows.is_empty()
        || request.leases.is_empty()
    {
        return Ok(Json(reply));
    }
    // Hold the heartbeat open until a cancel is requested (then answer at once) or the interval
    // passes: cancels reach runners immediately without fast polling.
    let notified = app.cancels.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    let wait = app.config.heartbeat.min(MAX_WAIT);
    let _ = tokio::time::timeout(wait, notified).await;
    for lease in &request.leases {
        if let Ok(Some(row)) = app.store.run(&lease.run_id).await {
            if row.cancel_requested && !row.state.is_final() {
                reply.cancel.push(row.id);
            }
        }
    }
    Ok(Json(reply))
}

async fn start_run<S: Store>(
    State(app): AppState<S>,
    caller: Caller,
    UrlPath(id): UrlPath<String>,
    Body(body): Body,
) -> ApiResult<Json<RunView>> {
    caller.require_runner()?;
    let request: StartBody = parse(&body)?;
    let row = app
        .store
        .mark_started(
            &id,
            &request.lease_token,
            request.container_id.as_deref(),
            now_ms(),
            app.config.lease.as_millis() as i64,
        )
        .await?;
    app.wake(Wake::EVENTS);
    Ok(Json(views::run(row)))
}

async fn append_events<S: Store>(
    State(app): AppState<S>,
    caller: Caller,
    UrlPath(id): UrlPath<String>,
    Body(body): Body,
) -> ApiResult<Json<HashMap<&'static str, i64>>> {
    caller.require_runner()?;
    let request: EventsBody = parse(&body)?;
    refuse(events_errors(&request))?;
    let events: Vec<NewEvent> = request
        .events
        .into_iter()
        .map(|e| NewEvent {
            ts: e.ts,
            kind: e.kind,
            data: e.data,
        })
        .collect();
    let last = app
        .store
        .append_events(
            &id,
            &request.lease_token,
            now_ms(),
            request.first_seq,
            &events,
        )
        .await?;
    app.wake(Wake::EVENTS);
    Ok(Json(HashMap::from([("last_seq", last)])))
}

async fn finish_run<S: Store>(
    State(app): AppState<S>,
    caller: Caller,
    UrlPath(id): UrlPath<String>,
    Body(body): Body,
) -> ApiResult<Json<RunView>> {
    caller.require_runner()?;
    let request: FinishBody = parse(&body)?;
    let state = RunState::parse(&request.state).filter(|s| s.is_final()).ok_or_else(|| {
        ApiError::Invalid(vec![FieldError { field: "state".into(), message: format!("`{}` is not a final state: expected succeeded, failed, timed_out, cancelled, error or lost", request.state) }])
    })?;
    let now = now_ms();
    let finish = Finish {
        state,
        exit_code: request.exit_code,
        reason: request.reason.clone(),
        now,
    };
    let runner = app
        .store
        .run(&id)
        .await?
        .and_then(|r| r.runner_id)
        .unwrap_or_else(|| caller.token.id.clone());
    let row = app
        .store
        .finish_run(
            &id,
            &request.lease_token,
            &finish,
            &format!("runner:{runner}"),
        )
        .await?;
    app.wake(Wake::EVENTS);
    spawn_advance(&app, &row);
    Ok(Json(views::run(row)))
}

async fn upload_artifact<S: Store>(
    State(app): AppState<S>,
    caller: Caller,
    UrlPath((id, path)): UrlPath<(String, String)>,
    headers: HeaderMap,
    Body(body): Body,
) -> ApiResult<StatusCode> {
    caller.require_runner()?;
    let relative = artifact_path(&path)?;
    let lease = headers
        .get("x-berth-lease")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::BadRequest("missing X-Berth-Lease header".into()))?;
    // Renewing checks the lease: an expired or foreign lease cannot write artifacts.
    app.store
        .renew_lease(&id, lease, now_ms(), app.config.lease.as_millis() as i64)
        .await?;
    let file = artifacts_dir(&app, &id).join(relative);
    let write = async {
        if let Some(parent) = file.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        tokio::fs::write(&file, &body).await
    };
    write.await.map_err(|e| {
        ApiError::Internal(format!(
            "storing the artifact {path:?} of run `{id}` failed: {e}"
        ))
    })?;
    Ok(StatusCode::CREATED)
}

pub(crate) async fn list_runners<S: Store>(
    State(app): AppState<S>,
    caller: Caller,
) -> ApiResult<Json<Vec<RunnerView>>> {
    caller.require_client()?;
    // A client token sees the runs of its own project only; the admin sees all.
    let own = caller.token.project.as_deref();
    let mut views = Vec::new();
    for runner in app.store.list_runners().await? {
        let running = app
            .store
            .runs_of_runner(&runner.id)
            .await?
            .into_iter()
            .filter(|r| own.is_none_or(|p| p == r.project))
            .map(|r| r.id)
            .collect();
        views.push(views::runner(runner, running));
    }
    Ok(Json(views))
}

// Workflows (clients).

/// Moves the workflow of a step run that may have ended, off the request's path.
fn spawn_advance<S: Store>(app: &Arc<App<S>>, row: &RunRow) {
    if let (Some(id), true) = (workflows::workflow_of(row), row.state.is_final()) {
        let (app, id) = (app.clone(), id.to_string());
        tokio::spawn(async move {
            if let Err(e) = workflows::advance(&app, &id).await {
                tracing::error!(workflow = %id, error = %e, "advancing a workflow failed");
            }
        });
    }
}

async fn submit_workflow<S: Store>(
    State(app): AppState<S>,
    caller: Caller,
    Body(body): Body,
) -> ApiResult<(StatusCode, Json<WorkflowView>)> {
    caller.require_client()?;
    let request: SubmitWorkflow = parse(&body)?;
    caller.require_project(&request.project)?;
    let Some(project) = app.store.project(&request.project).await? else {
        return Err(ApiError::Invalid(vec![FieldError {
            field: "project".into(),
            message: format!("no project named `{}`", request.project),
        }]));
    };
    let accepted = workflows::check(
        &request,
        project.egress_ceiling.as_deref(),
        &caller.actor(),
        now_ms(),
        rand::rng().random(),
    )
    .map_err(ApiError::Invalid)?;
    let row = app.store.insert_workflow(&accepted.workflow).await?;
    // The first step is queued now; the sweeper would do it otherwise.
    workflows::advance(&app, &row.id).await?;
    let row = app.store.workflow(&row.id).await?.unwrap_or(row);
    tracing::info!(workflow = %row.id, name = %row.name, "workflow submitted");
    Ok((StatusCode::CREATED, Json(workflows::view(row))))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WorkflowListQuery {
    pub(crate) project: Option<String>,
    pub(crate) limit: Option<i64>,
}

pub(crate) async fn list_workflows<S: Store>(
    State(app): AppState<S>,
    caller: Caller,
    query: Result<Query<WorkflowListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<WorkflowList>> {
    caller.require_client()?;
    let query = query_params(query)?;
    if let Some(project) = &query.project {
        caller.require_project(project)?;
    }
    let scope = caller.token.project.clone().map(|p| vec![p]);
    let rows = app
        .store
        .list_workflows(
            query.project.as_deref(),
            scope.as_deref(),
            list_limit(query.limit)?,
        )
        .await?;
    Ok(Json(WorkflowList {
        workflows: rows.into_iter().map(workflows::view).collect(),
    }))
}

/// The workflow, if the caller may see it.
pub(crate) async fn visible_workflow<S: Store>(
    app: &App<S>,
    caller: &Caller,
    id: &str,
) -> ApiResult<berth_store::WorkflowRow> {
    caller.require_client()?;
    let row = app
        .store
        .workflow(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("workflow `{id}` does not exist")))?;
    caller.require_project(&row.project)?;
    Ok(row)
}

async fn get_workflow<S: Store>(
    State(app): AppState<S>,
    caller: Caller,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<Json<WorkflowView>> {
    Ok(Json(workflows::view(
        visible_workflow(&app, &caller, &id).await?,
    )))
}

async fn workflow_audit<S: Store>(
    State(app): AppState<S>,
    caller: Caller,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<Json<Vec<WorkflowAuditView>>> {
    visible_workflow(&app, &caller, &id).await?;
    Ok(Json(
        app.store
            .workflow_audit(&id)
            .await?
            .into_iter()
            .map(workflows::audit_view)
            .collect(),
    ))
}

async fn cancel_workflow<S: Store>(
    State(app): AppState<S>,
    caller: Caller,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<Json<WorkflowView>> {
    visible_workflow(&app, &caller, &id).await?;
    app.store
        .request_workflow_cancel(&id, &caller.actor(), now_ms())
        .await?;
    workflows::advance(&app, &id).await?;
    let row = visible_workflow(&app, &caller, &id).await?;
    Ok(Json(workflows::view(row)))
}

/// The workflow's diff so far (the final diff once it ended), as a patch.
async fn workflow_diff<S: Store>(
    State(app): AppState<S>,
    caller: Caller,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<Response> {
    let row = visible_workflow(&app, &caller, &id).await?;
    let progress = workflows::progress_of(&row).map_err(ApiError::Internal)?;
    let Some(path) = workflows::diff_path(&app.config.state_dir, &progress) else {
        return Ok((
            [(axum::http::header::CONTENT_TYPE, "text/x-diff")],
            String::new(),
        )
            .into_response());
    };
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|e| ApiError::Unavailable(format!("reading the diff {}: {e}", path.display())))?;
    Ok(([(axum::http::header::CONTENT_TYPE, "text/x-diff")], bytes).into_response())
}
