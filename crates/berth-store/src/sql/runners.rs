//! Runners: registration bound to a token, heartbeats, and the runs each one holds.

use super::runs::{runs_from_rows, RUN_COLS};
use super::{from_json, not_found, to_json, SqlStore};
use crate::db::{args, Row};
use crate::{RunRow, RunnerRecord, RunnerStore, StoreError, StoreResult};

/// The condition under which a row of `runners` may be taken by the token in placeholder
/// `token`: it has no token yet, has that one, or its token is revoked (or gone).
fn runner_free_for(token: &str) -> String {
    format!(
        "(runners.token_id IS NULL OR runners.token_id = {token} \
         OR NOT EXISTS (SELECT 1 FROM tokens t WHERE t.id = runners.token_id AND t.revoked_at IS NULL))"
    )
}

fn runner_from_row(row: &Row) -> StoreResult<RunnerRecord> {
    Ok(RunnerRecord {
        id: row.text("id")?,
        name: row.text("name")?,
        tags: from_json(&row.text("tags")?, "runner tag list")?,
        require_matching_tags: row.flag("require_matching_tags")?,
        capacity: row.int("capacity")?,
        registered_at: row.int("registered_at")?,
        last_heartbeat: row.int("last_heartbeat")?,
        online: row.flag("online")?,
        token_id: row.opt_text("token_id")?,
        secrets: from_json(&row.text("secrets")?, "runner secret list")?,
    })
}

impl RunnerStore for SqlStore {
    async fn register_runner(&self, runner: &RunnerRecord) -> StoreResult<()> {
        // The name is taken over only from nobody: no token yet (registered before names were
        // bound), the same token (a restart), or a token that no longer counts (revoked).
        let changed = self
            .writer()
            .execute(
                &format!(
                    "INSERT INTO runners (id, name, tags, require_matching_tags, capacity, registered_at, last_heartbeat, online, token_id, secrets) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                     ON CONFLICT (id) DO UPDATE SET name = excluded.name, tags = excluded.tags, secrets = excluded.secrets, \
                       require_matching_tags = excluded.require_matching_tags, capacity = excluded.capacity, \
                       last_heartbeat = excluded.last_heartbeat, online = excluded.online, token_id = excluded.token_id \
                     WHERE {}",
                    runner_free_for("$9")
                ),
                args![
                    &runner.id,
                    &runner.name,
                    to_json(&runner.tags)?,
                    runner.require_matching_tags,
                    runner.capacity,
                    runner.registered_at,
                    runner.last_heartbeat,
                    runner.online,
                    &runner.token_id,
                    to_json(&runner.secrets)?
                ],
            )
            .await?;
        if changed == 0 {
            return Err(StoreError::RunnerTaken {
                runner: runner.id.clone(),
            });
        }
        Ok(())
    }

    async fn bind_runner(&self, id: &str, token_id: &str) -> StoreResult<()> {
        let changed = self
            .writer()
            .execute(
                &format!(
                    "UPDATE runners SET token_id = $2 WHERE id = $1 AND {}",
                    runner_free_for("$2")
                ),
                args![id, token_id],
            )
            .await?;
        if changed == 0 {
            return Err(match self.runner(id).await? {
                Some(_) => StoreError::RunnerTaken { runner: id.into() },
                None => not_found("runner", id),
            });
        }
        Ok(())
    }

    async fn runner(&self, id: &str) -> StoreResult<Option<RunnerRecord>> {
        self.reader()
            .fetch_optional(
                "SELECT id, name, tags, require_matching_tags, capacity, registered_at, last_heartbeat, online, token_id, secrets \
                 FROM runners WHERE id = $1",
                args![id],
            )
            .await?
            .as_ref()
            .map(runner_from_row)
            .transpose()
    }

    async fn runner_heartbeat(&self, id: &str, now: i64) -> StoreResult<()> {
        let changed = self
            .writer()
            .execute(
                "UPDATE runners SET last_heartbeat = $2, online = 1 WHERE id = $1",
                args![id, now],
            )
            .await?;
        if changed == 0 {
            return Err(not_found("runner", id));
        }
        Ok(())
    }

    async fn mark_stale_runners_offline(&self, before: i64) -> StoreResult<Vec<String>> {
        let rows = self
            .writer()
            .fetch_all(
                "UPDATE runners SET online = 0 WHERE online = 1 AND last_heartbeat < $1 RETURNING id",
                args![before],
            )
            .await?;
        let mut ids = rows
            .iter()
            .map(|row| row.text("id"))
            .collect::<StoreResult<Vec<_>>>()?;
        ids.sort();
        Ok(ids)
    }

    async fn list_runners(&self) -> StoreResult<Vec<RunnerRecord>> {
        let rows = self
            .reader()
            .fetch_all(
                "SELECT id, name, tags, require_matching_tags, capacity, registered_at, last_heartbeat, online, token_id, secrets \
                 FROM runners ORDER BY id",
                vec![],
            )
            .await?;
        rows.iter().map(runner_from_row).collect()
    }

    async fn runs_of_runner(&self, runner_id: &str) -> StoreResult<Vec<RunRow>> {
        let sql = format!(
            "SELECT {RUN_COLS} FROM runs WHERE runner_id = $1 AND state IN ('claimed', 'running') ORDER BY seq"
        );
        runs_from_rows(&self.reader().fetch_all(&sql, args![runner_id]).await?)
    }
}
