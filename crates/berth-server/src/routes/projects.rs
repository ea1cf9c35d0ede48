//! `/api/v1/projects`: made by the admin, listed by clients (their own only).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use berth_api::*;
use berth_store::{Project, Store};

use super::{parse, AppState};
use crate::auth::Caller;
use crate::clock::now_ms;
use crate::error::{ApiError, ApiResult};
use crate::extract::Body;
use crate::views;

pub(crate) async fn create_project<S: Store>(
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
