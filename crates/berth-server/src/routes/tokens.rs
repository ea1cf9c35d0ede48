//! `/api/v1/tokens` (admin).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use berth_api::*;
use berth_store::{Role, Store, TokenRecord};

use super::{parse, AppState};
use crate::auth::{hash_secret, new_secret, Caller};
use crate::clock::now_ms;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, UrlPath};
use crate::views;

pub(crate) async fn create_token<S: Store>(
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

pub(super) async fn revoke_token<S: Store>(
    State(app): AppState<S>,
    caller: Caller,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    app.store.revoke_token(&id, now_ms()).await?;
    Ok(StatusCode::NO_CONTENT)
}
