//! `/api/v1/runs/{id}/artifacts`: listed and downloaded by clients, uploaded by the runner
//! holding the run's lease. Files on disk under the state directory.

use std::path::{Component, Path, PathBuf};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use berth_api::*;
use berth_store::Store;

use super::{visible_run, AppState};
use crate::auth::Caller;
use crate::clock::now_ms;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, UrlPath};
use crate::{workflows, App};

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

pub(super) async fn upload_artifact<S: Store>(
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
