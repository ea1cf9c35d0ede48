//! Tokens and projects.

use super::{corrupt, from_json, not_found, to_json, SqlStore};
use crate::db::{args, Row};
use crate::{AuthStore, Project, Role, StoreError, StoreResult, TokenRecord};

fn token_from_row(row: &Row) -> StoreResult<TokenRecord> {
    let role = row.text("role")?;
    Ok(TokenRecord {
        id: row.text("id")?,
        role: Role::parse(&role).ok_or_else(|| corrupt("token role", &role))?,
        project: row.opt_text("project")?,
        created_at: row.int("created_at")?,
        revoked_at: row.opt_int("revoked_at")?,
    })
}

fn project_from_row(row: &Row) -> StoreResult<Project> {
    Ok(Project {
        name: row.text("name")?,
        workspace_root: row.text("workspace_root")?,
        allowed_paths: from_json(&row.text("allowed_paths")?, "project path list")?,
        egress_ceiling: row
            .opt_text("egress_ceiling")?
            .map(|t| from_json(&t, "project egress ceiling"))
            .transpose()?,
        created_at: row.int("created_at")?,
    })
}

impl AuthStore for SqlStore {
    async fn create_token(&self, token: &TokenRecord, secret_hash: &str) -> StoreResult<()> {
        let changed = self
            .writer()
            .execute(
                "INSERT INTO tokens (id, secret_hash, role, project, created_at, revoked_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                args![
                    &token.id,
                    secret_hash,
                    token.role.as_str(),
                    &token.project,
                    token.created_at,
                    token.revoked_at
                ],
            )
            .await?;
        if changed == 0 {
            return Err(StoreError::Conflict {
                what: "token",
                id: token.id.clone(),
            });
        }
        Ok(())
    }

    async fn token_by_hash(&self, secret_hash: &str) -> StoreResult<Option<TokenRecord>> {
        self.reader()
            .fetch_optional(
                "SELECT id, role, project, created_at, revoked_at FROM tokens \
                 WHERE secret_hash = $1 AND revoked_at IS NULL",
                args![secret_hash],
            )
            .await?
            .as_ref()
            .map(token_from_row)
            .transpose()
    }

    async fn list_tokens(&self) -> StoreResult<Vec<TokenRecord>> {
        let rows = self
            .reader()
            .fetch_all("SELECT id, role, project, created_at, revoked_at FROM tokens ORDER BY created_at, id", vec![])
            .await?;
        rows.iter().map(token_from_row).collect()
    }

    async fn revoke_token(&self, id: &str, now: i64) -> StoreResult<()> {
        let changed = self
            .writer()
            .execute(
                "UPDATE tokens SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1",
                args![id, now],
            )
            .await?;
        if changed == 0 {
            return Err(not_found("token", id));
        }
        Ok(())
    }

    async fn has_admin_token(&self) -> StoreResult<bool> {
        let row = self
            .reader()
            .fetch_optional(
                "SELECT 1 AS one FROM tokens WHERE role = 'admin' LIMIT 1",
                vec![],
            )
            .await?;
        Ok(row.is_some())
    }

    // Projects.

    async fn create_project(&self, project: &Project) -> StoreResult<()> {
        let changed = self
            .writer()
            .execute(
                "INSERT INTO projects (name, workspace_root, allowed_paths, egress_ceiling, created_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT DO NOTHING",
                args![&project.name, &project.workspace_root, to_json(&project.allowed_paths)?, project.egress_ceiling.as_ref().map(to_json).transpose()?, project.created_at],
            )
            .await?;
        if changed == 0 {
            return Err(StoreError::Conflict {
                what: "project",
                id: project.name.clone(),
            });
        }
        Ok(())
    }

    async fn project(&self, name: &str) -> StoreResult<Option<Project>> {
        self.reader()
            .fetch_optional(
                "SELECT name, workspace_root, allowed_paths, egress_ceiling, created_at FROM projects WHERE name = $1",
                args![name],
            )
            .await?
            .as_ref()
            .map(project_from_row)
            .transpose()
    }

    async fn list_projects(&self) -> StoreResult<Vec<Project>> {
        let rows = self
            .reader()
            .fetch_all("SELECT name, workspace_root, allowed_paths, egress_ceiling, created_at FROM projects ORDER BY name", vec![])
            .await?;
        rows.iter().map(project_from_row).collect()
    }
}
