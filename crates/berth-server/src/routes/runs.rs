//! `/api/v1/runs`: submitted, listed, shown, cancelled and audited by clients; started and
//! finished by the runner holding the lease.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use berth_api::*;
use berth_store::{Finish, NewRun, RunFilter, RunRow, RunState, RunnerRecord, Store, Wake};
use rand::Rng;

use super::workflows::spawn_advance;
use super::{list_limit, parse, query_params, refuse_nul, visible, AppState};
use crate::auth::Caller;
use crate::clock::now_ms;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, UrlPath};
use crate::{views, App};

pub(super) async fn submit_run<S: Store>(
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
            ExecutionMode::DockerSandbox => berth_store::ExecutionMode::DockerSandbox,
            ExecutionMode::Local => berth_store::ExecutionMode::Local,
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
    let secrets: Vec<String> = row.spec["secrets"]
        .as_array()
        .map(|names| {
            names
                .iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
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
    } else if let Some(warning) = secrets_warning(&secrets, seen.iter().filter(could_claim)) {
        view.warnings.push(warning);
    }
    Ok(view)
}

/// Why a run naming `secrets` would end in error once claimed: none of the runners that could
/// claim it declared all of them at registration. `None` when one did (or none are named).
fn secrets_warning<'a>(
    secrets: &[String],
    claimers: impl Iterator<Item = &'a RunnerRecord>,
) -> Option<String> {
    if secrets.is_empty() {
        return None;
    }
    let mut declared = Vec::new();
    for runner in claimers {
        if secrets.iter().all(|s| runner.secrets.contains(s)) {
            return None;
        }
        declared.push(format!(
            "{} [{}]",
            runner.name,
            if runner.secrets.is_empty() {
                "none".to_string()
            } else {
                runner.secrets.join(",")
            }
        ));
    }
    Some(format!(
        "no runner that could claim it declared the secrets {} (runners and the secrets they declared: {}): a runner without one ends the run in error; runners declare theirs with `berth runner --secret NAME`",
        secrets.join(","),
        declared.join(", ")
    ))
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
    refuse_nul(&[
        ("state", query.state.as_deref()),
        ("project", query.project.as_deref()),
        ("tag", query.tag.as_deref()),
        ("after", query.after.as_deref()),
    ])?;
    let state = match &query.state {
        Some(s) => Some(RunState::parse_stored(s).ok_or_else(|| {
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
    visible(caller, "run", id, app.store.run(id), |row| &row.project).await
}

pub(super) async fn get_run<S: Store>(
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

pub(super) async fn start_run<S: Store>(
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

pub(super) async fn finish_run<S: Store>(
    State(app): AppState<S>,
    caller: Caller,
    UrlPath(id): UrlPath<String>,
    Body(body): Body,
) -> ApiResult<Json<RunView>> {
    caller.require_runner()?;
    let request: FinishBody = parse(&body)?;
    let state = RunState::parse_stored(&request.state).filter(|s| s.is_final()).ok_or_else(|| {
        ApiError::Invalid(vec![FieldError { field: "state".into(), message: format!("`{}` is not a final state: expected succeeded, failed, timed_out, cancelled, error or lost", request.state) }])
    })?;
    if let Some(commit) = request
        .commit
        .as_deref()
        .filter(|c| !berth_api::is_commit_id(c))
    {
        return Err(ApiError::Invalid(vec![FieldError {
            field: "commit".into(),
            message: format!(
                "`{}` is not a full commit id: expected 40 or 64 lower-case hex digits",
                berth_core::text::escape_untrusted(commit)
            ),
        }]));
    }
    let now = now_ms();
    let finish = Finish {
        state,
        exit_code: request.exit_code,
        reason: request.reason.clone(),
        now,
        commit: request.commit.clone(),
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
