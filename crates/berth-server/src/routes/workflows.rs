//! `/api/v1/workflows` (clients): the HTTP side of `crate::workflows`, which checks and drives
//! them.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use berth_api::*;
use berth_store::{RunRow, Store};
use rand::Rng;

use super::{list_limit, parse, query_params, refuse_nul, visible, AppState};
use crate::auth::Caller;
use crate::clock::now_ms;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, UrlPath};
use crate::{workflows, App};

/// Moves the workflow of a step run that may have ended, off the request's path.
pub(super) fn spawn_advance<S: Store>(app: &Arc<App<S>>, row: &RunRow) {
    if let (Some(id), true) = (workflows::workflow_of(row), row.state.is_final()) {
        let (app, id) = (app.clone(), id.to_string());
        tokio::spawn(async move {
            if let Err(e) = workflows::advance(&app, &id).await {
                tracing::error!(workflow = %id, error = %e, "advancing a workflow failed");
            }
        });
    }
}

pub(super) async fn submit_workflow<S: Store>(
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
    refuse_nul(&[("project", query.project.as_deref())])?;
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
    visible(caller, "workflow", id, app.store.workflow(id), |row| {
        &row.project
    })
    .await
}

pub(super) async fn get_workflow<S: Store>(
    State(app): AppState<S>,
    caller: Caller,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<Json<WorkflowView>> {
    Ok(Json(workflows::view(
        visible_workflow(&app, &caller, &id).await?,
    )))
}

pub(super) async fn workflow_audit<S: Store>(
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

pub(super) async fn cancel_workflow<S: Store>(
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
pub(super) async fn workflow_diff<S: Store>(
    State(app): AppState<S>,
    caller: Caller,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<Response> {
    let row = visible_workflow(&app, &caller, &id).await?;
    let progress = workflows::progress_of(&row).map_err(|e| ApiError::Internal(e.to_string()))?;
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
