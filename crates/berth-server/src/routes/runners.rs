//! `/api/v1/runners`: registration, long-polled claims and heartbeats (runner tokens), and the
//! list of runners (clients).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use berth_api::*;
use berth_store::{ClaimRequest, Finish, RunRow, RunState, RunnerRecord, Store, StoreError, Wake};
use rand::Rng;

use super::workflows::spawn_advance;
use super::{parse, refuse, AppState};
use crate::auth::Caller;
use crate::clock::now_ms;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, UrlPath};
use crate::{views, App};

/// Longest a claim or heartbeat request is held open.
const MAX_WAIT: Duration = Duration::from_secs(30);

pub(super) async fn register_runner<S: Store>(
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
    let bad_secrets: Vec<FieldError> = request
        .secrets
        .iter()
        .enumerate()
        .filter_map(|(i, name)| {
            berth_core::spec::check_env_name(name)
                .err()
                .map(|e| FieldError {
                    field: format!("secrets[{i}]"),
                    message: e.to_string(),
                })
        })
        .collect();
    refuse(bad_secrets)?;
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
        secrets: request.secrets,
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

pub(super) async fn claim<S: Store>(
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
        commit: None,
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

pub(super) async fn heartbeat<S: Store>(
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
