//! Workflows: versioned progress, the step runs they queue, and their audit trail.

use std::collections::BTreeSet;

use super::runs::insert_run_tx;
use super::{
    actor_name, from_json, not_found, parse_state, placeholders, to_json, SqlStore, MAX_LIST_LIMIT,
};
use crate::db::{args, Arg, Db, Row};
use crate::{
    NewWorkflow, StoreError, StoreResult, WorkflowAuditEntry, WorkflowChange, WorkflowNote,
    WorkflowRow, WorkflowStore,
};

/// The columns of [`WorkflowRow`].
const WORKFLOW_COLS: &str = "id, project, name, state, spec, progress, version, runner_id, \
     cancel_requested, reason, created_at, finished_at";

fn workflow_from_row(row: &Row) -> StoreResult<WorkflowRow> {
    Ok(WorkflowRow {
        id: row.text("id")?,
        project: row.text("project")?,
        name: row.text("name")?,
        state: parse_state(&row.text("state")?)?,
        spec: from_json(&row.text("spec")?, "workflow submission")?,
        progress: from_json(&row.text("progress")?, "workflow progress")?,
        version: row.int("version")?,
        runner_id: row.opt_text("runner_id")?,
        cancel_requested: row.flag("cancel_requested")?,
        reason: row.opt_text("reason")?,
        created_at: row.int("created_at")?,
        finished_at: row.opt_int("finished_at")?,
    })
}

/// Appends notes to a workflow's audit trail, numbered after its last entry.
async fn write_workflow_notes(
    tx: &mut Db,
    workflow_id: &str,
    ts: i64,
    actor: &str,
    notes: &[WorkflowNote],
) -> StoreResult<()> {
    for note in notes {
        tx.execute(
            "INSERT INTO workflow_audit (workflow_id, seq, ts, actor, event, detail) \
             SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3, $4, $5 FROM workflow_audit WHERE workflow_id = $1",
            args![workflow_id, ts, actor, &note.event, &note.detail],
        )
        .await?;
    }
    Ok(())
}

impl WorkflowStore for SqlStore {
    async fn insert_workflow(&self, workflow: &NewWorkflow) -> StoreResult<WorkflowRow> {
        let mut tx = self.begin().await?;
        let sql = format!(
            "INSERT INTO workflows (id, project, name, state, spec, progress, version, cancel_requested, created_at) \
             VALUES ($1, $2, $3, 'running', $4, $5, 1, 0, $6) ON CONFLICT (id) DO NOTHING RETURNING {WORKFLOW_COLS}"
        );
        let row = tx
            .fetch_optional(
                &sql,
                args![
                    &workflow.id,
                    &workflow.project,
                    &workflow.name,
                    to_json(&workflow.spec)?,
                    to_json(&workflow.progress)?,
                    workflow.created_at
                ],
            )
            .await?
            .ok_or_else(|| StoreError::Conflict {
                what: "workflow",
                id: workflow.id.clone(),
            })?;
        let inserted = workflow_from_row(&row)?;
        let note = WorkflowNote {
            event: "submitted".into(),
            detail: format!("workflow `{}` submitted", workflow.name),
        };
        write_workflow_notes(
            &mut tx,
            &workflow.id,
            workflow.created_at,
            &actor_name(&workflow.actor),
            &[note],
        )
        .await?;
        tx.commit().await?;
        Ok(inserted)
    }

    async fn workflow(&self, id: &str) -> StoreResult<Option<WorkflowRow>> {
        self.reader()
            .fetch_optional(
                &format!("SELECT {WORKFLOW_COLS} FROM workflows WHERE id = $1"),
                args![id],
            )
            .await?
            .as_ref()
            .map(workflow_from_row)
            .transpose()
    }

    async fn list_workflows(
        &self,
        project: Option<&str>,
        projects_in: Option<&[String]>,
        limit: i64,
    ) -> StoreResult<Vec<WorkflowRow>> {
        let mut args = Vec::new();
        let mut sql = format!("SELECT {WORKFLOW_COLS} FROM workflows WHERE 1 = 1");
        if let Some(project) = project {
            sql += &format!(" AND project = {}", placeholders(&mut args, args![project]));
        }
        if let Some(projects) = projects_in {
            if projects.is_empty() {
                return Ok(Vec::new());
            }
            let list = placeholders(&mut args, projects.iter().map(Arg::from));
            sql += &format!(" AND project IN ({list})");
        }
        let limit = limit.clamp(1, MAX_LIST_LIMIT);
        sql += &format!(
            " ORDER BY id DESC LIMIT {}",
            placeholders(&mut args, args![limit])
        );
        self.reader()
            .fetch_all(&sql, args)
            .await?
            .iter()
            .map(workflow_from_row)
            .collect()
    }

    async fn active_workflows(&self) -> StoreResult<Vec<String>> {
        let rows = self
            .reader()
            .fetch_all(
                "SELECT id FROM workflows WHERE state = 'running' ORDER BY id",
                vec![],
            )
            .await?;
        rows.iter().map(|r| r.text("id")).collect()
    }

    async fn update_workflow(&self, change: &WorkflowChange) -> StoreResult<Option<WorkflowRow>> {
        let mut tx = self.begin().await?;
        let sql = format!(
            "UPDATE workflows SET state = $3, progress = $4, runner_id = $5, reason = $6, \
             finished_at = $7, version = version + 1 \
             WHERE id = $1 AND version = $2 AND state = 'running' RETURNING {WORKFLOW_COLS}"
        );
        let Some(row) = tx
            .fetch_optional(
                &sql,
                args![
                    &change.id,
                    change.expected_version,
                    change.state.as_str(),
                    to_json(&change.progress)?,
                    &change.runner_id,
                    &change.reason,
                    change.finished_at
                ],
            )
            .await?
        else {
            return Ok(None);
        };
        let updated = workflow_from_row(&row)?;
        if let Some(run) = &change.new_run {
            insert_run_tx(&mut tx, run).await?;
        }
        write_workflow_notes(
            &mut tx,
            &change.id,
            change.now,
            &actor_name(&change.actor),
            &change.notes,
        )
        .await?;
        tx.commit().await?;
        Ok(Some(updated))
    }

    async fn request_workflow_cancel(
        &self,
        id: &str,
        actor: &str,
        now: i64,
    ) -> StoreResult<WorkflowRow> {
        let mut tx = self.begin().await?;
        let sql = format!(
            "UPDATE workflows SET cancel_requested = 1, version = version + 1 \
             WHERE id = $1 AND state = 'running' AND cancel_requested = 0 RETURNING {WORKFLOW_COLS}"
        );
        let Some(row) = tx.fetch_optional(&sql, args![id]).await? else {
            drop(tx);
            return self
                .workflow(id)
                .await?
                .ok_or_else(|| not_found("workflow", id));
        };
        let updated = workflow_from_row(&row)?;
        let note = WorkflowNote {
            event: "cancel_requested".into(),
            detail: "cancel requested".into(),
        };
        write_workflow_notes(&mut tx, id, now, &actor_name(actor), &[note]).await?;
        tx.commit().await?;
        Ok(updated)
    }

    async fn workflow_audit(&self, id: &str) -> StoreResult<Vec<WorkflowAuditEntry>> {
        let rows = self
            .reader()
            .fetch_all(
                "SELECT workflow_id, seq, ts, actor, event, detail FROM workflow_audit \
                 WHERE workflow_id = $1 ORDER BY seq",
                args![id],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(WorkflowAuditEntry {
                    workflow_id: row.text("workflow_id")?,
                    seq: row.int("seq")?,
                    ts: row.int("ts")?,
                    actor: row.text("actor")?,
                    event: row.text("event")?,
                    detail: row.text("detail")?,
                })
            })
            .collect()
    }

    async fn ended_workflows(&self, ids: &[String]) -> StoreResult<Vec<String>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut args = Vec::new();
        let list = placeholders(&mut args, ids.iter().map(Arg::from));
        let running: BTreeSet<String> = self
            .reader()
            .fetch_all(
                &format!("SELECT id FROM workflows WHERE state = 'running' AND id IN ({list})"),
                args,
            )
            .await?
            .iter()
            .map(|r| r.text("id"))
            .collect::<StoreResult<_>>()?;
        Ok(ids
            .iter()
            .filter(|id| !running.contains(*id))
            .cloned()
            .collect())
    }
}
