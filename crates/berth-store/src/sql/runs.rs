//! Runs: the queue, claims, leases, events, cancels and the audit trail.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    actor_name, fmt_ms, from_json, not_found, parse_execution_mode, parse_state, placeholders,
    to_json, SqlStore, INSERT_CHUNK, MAX_EVENTS_LIMIT, MAX_LIST_LIMIT,
};
use crate::db::{args, Arg, Db, Row};
use crate::{
    AuditEntry, ClaimRequest, Finish, NewEvent, NewRun, RunEvent, RunFilter, RunRow, RunState,
    RunStore, StoreError, StoreResult,
};

/// The columns of [`RunRow`], in `SELECT` and `RETURNING` lists.
pub(super) const RUN_COLS: &str = "id, project, state, execution_mode, spec, tags, labels, created_at, claimed_at, \
     started_at, finished_at, runner_id, container_id, exit_code, reason, cancel_requested, lease_expires_at, \
     pinned_runner, resolved_commit";

/// Who asked to cancel a run: the actor of its first `cancel_requested` event.
async fn cancel_asker(tx: &mut Db, run_id: &str) -> StoreResult<Option<String>> {
    let row = tx
        .fetch_optional(
            "SELECT data FROM run_events WHERE run_id = $1 AND kind = 'cancel_requested' ORDER BY seq LIMIT 1",
            args![run_id],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let data: serde_json::Value = serde_json::from_str(&row.text("data")?).unwrap_or_default();
    Ok(data["actor"].as_str().map(str::to_owned))
}

fn run_from_row(row: &Row) -> StoreResult<RunRow> {
    Ok(RunRow {
        id: row.text("id")?,
        project: row.text("project")?,
        state: parse_state(&row.text("state")?)?,
        execution_mode: parse_execution_mode(&row.text("execution_mode")?)?,
        spec: from_json(&row.text("spec")?, "run spec")?,
        tags: from_json(&row.text("tags")?, "run tag list")?,
        labels: from_json::<BTreeMap<String, String>>(&row.text("labels")?, "run label map")?,
        created_at: row.int("created_at")?,
        claimed_at: row.opt_int("claimed_at")?,
        started_at: row.opt_int("started_at")?,
        finished_at: row.opt_int("finished_at")?,
        runner_id: row.opt_text("runner_id")?,
        container_id: row.opt_text("container_id")?,
        exit_code: row.opt_int("exit_code")?,
        reason: row.opt_text("reason")?,
        cancel_requested: row.flag("cancel_requested")?,
        lease_expires_at: row.opt_int("lease_expires_at")?,
        pinned_runner: row.opt_text("pinned_runner")?,
        resolved_commit: row.opt_text("resolved_commit")?,
    })
}

pub(super) fn runs_from_rows(rows: &[Row]) -> StoreResult<Vec<RunRow>> {
    rows.iter().map(run_from_row).collect()
}

fn audit_from_row(row: &Row) -> StoreResult<AuditEntry> {
    Ok(AuditEntry {
        run_id: row.text("run_id")?,
        seq: row.int("seq")?,
        ts: row.int("ts")?,
        from_state: row
            .opt_text("from_state")?
            .as_deref()
            .map(parse_state)
            .transpose()?,
        to_state: parse_state(&row.text("to_state")?)?,
        actor: row.text("actor")?,
        container_id: row.opt_text("container_id")?,
        exit_code: row.opt_int("exit_code")?,
        reason: row.opt_text("reason")?,
    })
}

fn event_from_row(row: &Row) -> StoreResult<RunEvent> {
    Ok(RunEvent {
        run_id: row.text("run_id")?,
        seq: row.int("seq")?,
        ts: row.int("ts")?,
        kind: row.text("kind")?,
        data: row.text("data")?,
    })
}

fn rejected(run_id: &str, why: impl Into<String>) -> StoreError {
    StoreError::Rejected {
        run_id: run_id.to_owned(),
        why: why.into(),
    }
}

/// A run as the transaction sees it, locked against other writers until it ends.
struct Locked {
    run: RunRow,
    lease_token: Option<String>,
}

async fn lock_run(tx: &mut Db, run_id: &str) -> StoreResult<Locked> {
    let sql = format!(
        "SELECT {RUN_COLS}, lease_token FROM runs WHERE id = $1{}",
        if tx.is_pg() { " FOR UPDATE" } else { "" }
    );
    let row = tx
        .fetch_optional(&sql, args![run_id])
        .await?
        .ok_or_else(|| not_found("run", run_id))?;
    Ok(Locked {
        run: run_from_row(&row)?,
        lease_token: row.opt_text("lease_token")?,
    })
}

/// The guard of every runner write: a live run, the caller's lease, not expired at `now`.
fn check_lease(locked: &Locked, lease_token: &str, now: i64) -> StoreResult<()> {
    let run = &locked.run;
    if run.state.is_final() {
        return Err(rejected(
            &run.id,
            format!("the run has already ended ({})", run.state.as_str()),
        ));
    }
    if run.state == RunState::Queued || locked.lease_token.as_deref() != Some(lease_token) {
        return Err(rejected(
            &run.id,
            "the lease is not this runner's (it expired and the run was handed on)",
        ));
    }
    match run.lease_expires_at {
        Some(expires) if expires >= now => Ok(()),
        Some(expires) => Err(rejected(
            &run.id,
            format!("the lease expired at {}", fmt_ms(expires)),
        )),
        None => Err(rejected(&run.id, "the run holds no lease")),
    }
}

/// One audit entry, numbered after the run's last one. The caller holds the run's row lock.
struct Audit<'a> {
    run_id: &'a str,
    ts: i64,
    from: Option<RunState>,
    to: RunState,
    actor: &'a str,
    container_id: Option<&'a str>,
    exit_code: Option<i64>,
    reason: Option<&'a str>,
}

async fn write_audit(tx: &mut Db, entry: Audit<'_>) -> StoreResult<()> {
    tx.execute(
        "INSERT INTO run_audit (run_id, seq, ts, from_state, to_state, actor, container_id, exit_code, reason) \
         SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3, $4, $5, $6, $7, $8 FROM run_audit WHERE run_id = $1",
        args![
            entry.run_id,
            entry.ts,
            entry.from.map(RunState::as_str),
            entry.to.as_str(),
            entry.actor,
            entry.container_id,
            entry.exit_code,
            entry.reason
        ],
    )
    .await?;
    Ok(())
}

/// Appends events after the run's last one; returns the last seq. The caller holds the run's
/// row lock.
async fn write_events(tx: &mut Db, run_id: &str, events: &[NewEvent]) -> StoreResult<i64> {
    let mut last = tx
        .fetch_one(
            "SELECT COALESCE(MAX(seq), 0) AS last FROM run_events WHERE run_id = $1",
            args![run_id],
        )
        .await?
        .int("last")?;
    for chunk in events.chunks(INSERT_CHUNK) {
        let mut args = args![run_id];
        let mut rows = Vec::with_capacity(chunk.len());
        for event in chunk {
            last += 1;
            let values = placeholders(&mut args, args![last, event.ts, &event.kind, &event.data]);
            rows.push(format!("($1, {values})"));
        }
        let sql = format!(
            "INSERT INTO run_events (run_id, seq, ts, kind, data) VALUES {}",
            rows.join(", ")
        );
        tx.execute(&sql, args).await?;
    }
    Ok(last)
}

/// Inserts a queued run with its tags and first audit entry, in the caller's transaction.
pub(super) async fn insert_run_tx(tx: &mut Db, run: &NewRun) -> StoreResult<RunRow> {
    let sql = format!(
        "INSERT INTO runs (id, project, state, execution_mode, spec, tags, labels, created_at, cancel_requested, pinned_runner) \
         VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7, 0, $8) ON CONFLICT (id) DO NOTHING RETURNING {RUN_COLS}"
    );
    let row = tx
        .fetch_optional(
            &sql,
            args![
                &run.id,
                &run.project,
                run.execution_mode.as_str(),
                to_json(&run.spec)?,
                to_json(&run.tags)?,
                to_json(&run.labels)?,
                run.created_at,
                &run.pinned_runner
            ],
        )
        .await?
        .ok_or_else(|| StoreError::Conflict {
            what: "run",
            id: run.id.clone(),
        })?;
    let inserted = run_from_row(&row)?;
    let tags: BTreeSet<&String> = run.tags.iter().collect();
    for chunk in tags.into_iter().collect::<Vec<_>>().chunks(INSERT_CHUNK) {
        let mut args = args![&run.id];
        let rows: Vec<String> = chunk
            .iter()
            .map(|tag| format!("($1, {})", placeholders(&mut args, args![*tag])))
            .collect();
        tx.execute(
            &format!(
                "INSERT INTO run_tags (run_id, tag) VALUES {}",
                rows.join(", ")
            ),
            args,
        )
        .await?;
    }
    let actor = actor_name(&run.actor);
    write_audit(
        tx,
        Audit {
            run_id: &run.id,
            ts: run.created_at,
            from: None,
            to: RunState::Queued,
            actor: &actor,
            container_id: None,
            exit_code: None,
            reason: None,
        },
    )
    .await?;
    Ok(inserted)
}

/// `UPDATE runs SET <assignments> WHERE id = $1 RETURNING …` on a locked run.
async fn update_run(
    tx: &mut Db,
    run_id: &str,
    assignments: &str,
    mut values: Vec<Arg>,
) -> StoreResult<RunRow> {
    let mut args = args![run_id];
    args.append(&mut values);
    let sql = format!("UPDATE runs SET {assignments} WHERE id = $1 RETURNING {RUN_COLS}");
    run_from_row(&tx.fetch_one(&sql, args).await?)
}

impl RunStore for SqlStore {
    async fn insert_run(&self, run: &NewRun) -> StoreResult<RunRow> {
        let mut tx = self.begin().await?;
        let inserted = insert_run_tx(&mut tx, run).await?;
        tx.commit().await?;
        Ok(inserted)
    }

    async fn run(&self, id: &str) -> StoreResult<Option<RunRow>> {
        self.reader()
            .fetch_optional(
                &format!("SELECT {RUN_COLS} FROM runs WHERE id = $1"),
                args![id],
            )
            .await?
            .as_ref()
            .map(run_from_row)
            .transpose()
    }

    async fn runs_with_prefix(&self, prefix: &str, limit: i64) -> StoreResult<Vec<RunRow>> {
        // Only id characters: nothing in the prefix means anything to LIKE.
        if prefix.is_empty()
            || !prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Ok(Vec::new());
        }
        let rows = self
            .reader()
            .fetch_all(
                &format!("SELECT {RUN_COLS} FROM runs WHERE id LIKE $1 ORDER BY id LIMIT $2"),
                args![format!("{prefix}%"), limit],
            )
            .await?;
        runs_from_rows(&rows)
    }

    async fn list_runs(&self, filter: &RunFilter) -> StoreResult<Vec<RunRow>> {
        let mut args = Vec::new();
        let mut sql = format!("SELECT {RUN_COLS} FROM runs r WHERE 1 = 1");
        if let Some(state) = filter.state {
            sql += &format!(
                " AND r.state = {}",
                placeholders(&mut args, args![state.as_str()])
            );
        }
        if let Some(project) = &filter.project {
            sql += &format!(
                " AND r.project = {}",
                placeholders(&mut args, args![project])
            );
        }
        if let Some(projects) = &filter.projects_in {
            if projects.is_empty() {
                return Ok(Vec::new());
            }
            let list = placeholders(&mut args, projects.iter().map(Arg::from));
            sql += &format!(" AND r.project IN ({list})");
        }
        if let Some(tag) = &filter.tag {
            let tag = placeholders(&mut args, args![tag]);
            sql += &format!(
                " AND EXISTS (SELECT 1 FROM run_tags t WHERE t.run_id = r.id AND t.tag = {tag})"
            );
        }
        if let Some(after) = &filter.after {
            sql += &format!(" AND r.id > {}", placeholders(&mut args, args![after]));
        }
        let limit = if filter.limit <= 0 {
            MAX_LIST_LIMIT
        } else {
            filter.limit.min(MAX_LIST_LIMIT)
        };
        sql += &format!(
            " ORDER BY r.id LIMIT {}",
            placeholders(&mut args, args![limit])
        );
        runs_from_rows(&self.reader().fetch_all(&sql, args).await?)
    }

    async fn claim(&self, request: &ClaimRequest) -> StoreResult<Option<RunRow>> {
        let mut tx = self.begin().await?;
        let mut args = args![
            &request.runner_id,
            &request.lease_token,
            request.now.saturating_add(request.lease_ms),
            request.now
        ];
        let runner_tags: BTreeSet<&String> = request.runner_tags.iter().collect();
        let mut tags_ok = if runner_tags.is_empty() {
            "NOT EXISTS (SELECT 1 FROM run_tags t WHERE t.run_id = r.id)".to_owned()
        } else {
            let list = placeholders(&mut args, runner_tags.into_iter().map(Arg::from));
            format!("NOT EXISTS (SELECT 1 FROM run_tags t WHERE t.run_id = r.id AND t.tag NOT IN ({list}))")
        };
        if request.require_matching_tags {
            tags_ok += " AND EXISTS (SELECT 1 FROM run_tags t WHERE t.run_id = r.id)";
        }
        let skip_locked = if tx.is_pg() {
            " FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        // The queue is walked in order through the partial index of queued runs, and the first
        // that fits is taken: a claim's cost does not grow with the queue's depth. Named, not left
        // to a planner whose statistics may describe a much shorter queue.
        // On PostgreSQL the row locked by the subquery was checked queued under its lock; a
        // repeated check here would lead the planner to look the row up among all queued runs
        // instead of by its id.
        let still_queued = if tx.is_pg() {
            ""
        } else {
            " AND state = 'queued'"
        };
        let queued_index = if tx.is_pg() {
            // PostgreSQL has no index hints: for this transaction only, the plans that read
            // every queued run (a sequential or bitmap scan and a sort) are priced out.
            // The claim's commit does not wait for the disk: a claim lost in a database crash
            // is harmless, because a runner starts nothing before the server confirms its lease
            // in a synchronous write (the start); the run is simply claimed again.
            tx.execute(
                "SELECT set_config('enable_sort', 'off', true), \
                        set_config('enable_bitmapscan', 'off', true), \
                        set_config('enable_seqscan', 'off', true), \
                        set_config('synchronous_commit', 'off', true)",
                Vec::new(),
            )
            .await?;
            ""
        } else {
            " INDEXED BY runs_queued"
        };
        let sql = format!(
            "UPDATE runs SET state = 'claimed', runner_id = $1, lease_token = $2, lease_expires_at = $3, \
             claimed_at = $4, cancel_requested = 0 \
             WHERE id = (SELECT r.id FROM runs r{queued_index} WHERE r.state = 'queued' AND {tags_ok} \
                         AND (r.pinned_runner IS NULL OR r.pinned_runner = $1) \
                         ORDER BY r.seq LIMIT 1{skip_locked}){still_queued} \
             RETURNING {RUN_COLS}"
        );
        let Some(row) = tx.fetch_optional(&sql, args).await? else {
            return Ok(None);
        };
        let run = run_from_row(&row)?;
        let actor = format!("runner:{}", request.runner_id);
        write_audit(
            &mut tx,
            Audit {
                run_id: &run.id,
                ts: request.now,
                from: Some(RunState::Queued),
                to: RunState::Claimed,
                actor: &actor,
                container_id: None,
                exit_code: None,
                reason: None,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(Some(run))
    }

    async fn mark_started(
        &self,
        run_id: &str,
        lease_token: &str,
        container_id: Option<&str>,
        now: i64,
        lease_ms: i64,
    ) -> StoreResult<RunRow> {
        let mut tx = self.begin().await?;
        let locked = lock_run(&mut tx, run_id).await?;
        check_lease(&locked, lease_token, now)?;
        // A start resent after its answer was lost: the same container under the same lease is
        // already recorded; the lease is renewed, nothing else changes.
        if locked.run.state == RunState::Running
            && container_id.is_some()
            && locked.run.container_id.as_deref() == container_id
        {
            let run = update_run(
                &mut tx,
                run_id,
                "lease_expires_at = $2",
                args![now.saturating_add(lease_ms)],
            )
            .await?;
            tx.commit().await?;
            return Ok(run);
        }
        if locked.run.state != RunState::Claimed {
            return Err(rejected(
                run_id,
                format!("the run is {}, not claimed", locked.run.state.as_str()),
            ));
        }
        let run = update_run(
            &mut tx,
            run_id,
            "state = 'running', started_at = $2, container_id = $3, lease_expires_at = $4",
            args![now, container_id, now.saturating_add(lease_ms)],
        )
        .await?;
        let actor = format!("runner:{}", run.runner_id.as_deref().unwrap_or("?"));
        write_audit(
            &mut tx,
            Audit {
                run_id,
                ts: now,
                from: Some(RunState::Claimed),
                to: RunState::Running,
                actor: &actor,
                container_id,
                exit_code: None,
                reason: None,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(run)
    }

    async fn renew_lease(
        &self,
        run_id: &str,
        lease_token: &str,
        now: i64,
        lease_ms: i64,
    ) -> StoreResult<RunRow> {
        let mut tx = self.begin().await?;
        let locked = lock_run(&mut tx, run_id).await?;
        check_lease(&locked, lease_token, now)?;
        let run = update_run(
            &mut tx,
            run_id,
            "lease_expires_at = $2",
            args![now.saturating_add(lease_ms)],
        )
        .await?;
        tx.commit().await?;
        Ok(run)
    }

    async fn append_events(
        &self,
        run_id: &str,
        lease_token: &str,
        now: i64,
        first_runner_seq: i64,
        events: &[NewEvent],
    ) -> StoreResult<i64> {
        let mut tx = self.begin().await?;
        let locked = lock_run(&mut tx, run_id).await?;
        check_lease(&locked, lease_token, now)?;
        let acked = tx
            .fetch_one(
                "SELECT runner_events_acked FROM runs WHERE id = $1",
                args![run_id],
            )
            .await?
            .int("runner_events_acked")?;
        // A resent batch: skip what an earlier attempt already stored.
        let skip = usize::try_from((acked - first_runner_seq + 1).max(0)).unwrap_or(usize::MAX);
        let fresh = events.get(skip..).unwrap_or(&[]);
        let last = if fresh.is_empty() {
            tx.fetch_one(
                "SELECT COALESCE(MAX(seq), 0) AS last FROM run_events WHERE run_id = $1",
                args![run_id],
            )
            .await?
            .int("last")?
        } else {
            write_events(&mut tx, run_id, fresh).await?
        };
        let newest = first_runner_seq + events.len() as i64 - 1;
        if newest > acked {
            tx.execute(
                "UPDATE runs SET runner_events_acked = $1 WHERE id = $2",
                args![newest, run_id],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(last)
    }

    async fn append_server_event(&self, run_id: &str, event: &NewEvent) -> StoreResult<i64> {
        let mut tx = self.begin().await?;
        lock_run(&mut tx, run_id).await?;
        let last = write_events(&mut tx, run_id, std::slice::from_ref(event)).await?;
        tx.commit().await?;
        Ok(last)
    }

    async fn events_after(
        &self,
        run_id: &str,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<RunEvent>> {
        let limit = if limit <= 0 {
            MAX_EVENTS_LIMIT
        } else {
            limit.min(MAX_EVENTS_LIMIT)
        };
        let rows = self
            .reader()
            .fetch_all(
                "SELECT run_id, seq, ts, kind, data FROM run_events WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                args![run_id, after, limit],
            )
            .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn finish_run(
        &self,
        run_id: &str,
        lease_token: &str,
        finish: &Finish,
        actor: &str,
    ) -> StoreResult<RunRow> {
        if !finish.state.is_final() {
            return Err(rejected(
                run_id,
                format!("{} is not a final state", finish.state.as_str()),
            ));
        }
        let mut tx = self.begin().await?;
        let locked = lock_run(&mut tx, run_id).await?;
        check_lease(&locked, lease_token, finish.now)?;
        let run = update_run(
            &mut tx,
            run_id,
            "state = $2, exit_code = $3, reason = $4, finished_at = $5, lease_token = NULL, lease_expires_at = NULL, \
             resolved_commit = COALESCE($6, resolved_commit)",
            args![finish.state.as_str(), finish.exit_code, &finish.reason, finish.now, &finish.commit],
        )
        .await?;
        let actor = actor_name(actor);
        // A runner ends a run it was asked to cancel: its audit entry also names who asked
        // (`token:<id>`, from the `cancel_requested` event), as the runner only obeyed.
        let mut reason = finish.reason.clone();
        if locked.run.cancel_requested && finish.state == RunState::Cancelled {
            if let Some(asker) = cancel_asker(&mut tx, run_id).await? {
                let asked = format!("cancel asked by {asker}");
                reason = Some(match reason {
                    Some(r) if !r.is_empty() => format!("{r}; {asked}"),
                    _ => asked,
                });
            }
        }
        write_audit(
            &mut tx,
            Audit {
                run_id,
                ts: finish.now,
                from: Some(locked.run.state),
                to: finish.state,
                actor: &actor,
                container_id: run.container_id.as_deref(),
                exit_code: finish.exit_code,
                reason: reason.as_deref(),
            },
        )
        .await?;
        // The final state joins the run's event stream in the same transaction, so followers
        // see it right after the last output and no extra write is needed.
        let data = serde_json::json!({ "state": finish.state.as_str(), "exit_code": finish.exit_code, "reason": finish.reason });
        write_events(
            &mut tx,
            run_id,
            &[NewEvent {
                ts: finish.now,
                kind: "state".into(),
                data: data.to_string(),
            }],
        )
        .await?;
        tx.commit().await?;
        Ok(run)
    }

    async fn request_cancel(&self, run_id: &str, actor: &str, now: i64) -> StoreResult<RunRow> {
        let mut tx = self.begin().await?;
        let locked = lock_run(&mut tx, run_id).await?;
        let actor = actor_name(actor);
        let run = match locked.run.state {
            RunState::Queued => {
                let reason = "cancelled before it started";
                let run = update_run(
                    &mut tx,
                    run_id,
                    "state = 'cancelled', finished_at = $2, reason = $3",
                    args![now, reason],
                )
                .await?;
                write_audit(
                    &mut tx,
                    Audit {
                        run_id,
                        ts: now,
                        from: Some(RunState::Queued),
                        to: RunState::Cancelled,
                        actor: &actor,
                        container_id: None,
                        exit_code: None,
                        reason: Some(reason),
                    },
                )
                .await?;
                run
            }
            RunState::Claimed | RunState::Running if !locked.run.cancel_requested => {
                let run = update_run(&mut tx, run_id, "cancel_requested = 1", vec![]).await?;
                let data = to_json(&serde_json::json!({ "actor": actor }))?;
                write_events(
                    &mut tx,
                    run_id,
                    &[NewEvent {
                        ts: now,
                        kind: "cancel_requested".to_owned(),
                        data,
                    }],
                )
                .await?;
                run
            }
            // Already requested, or already ended: nothing to do.
            _ => return Ok(locked.run),
        };
        tx.commit().await?;
        Ok(run)
    }

    async fn expire_leases(&self, now: i64) -> StoreResult<Vec<RunRow>> {
        let mut tx = self.begin().await?;
        let sql = format!(
            "SELECT {RUN_COLS} FROM runs WHERE state IN ('claimed', 'running') AND lease_expires_at < $1 \
             ORDER BY seq{}",
            if tx.is_pg() { " FOR UPDATE" } else { "" }
        );
        let expired = runs_from_rows(&tx.fetch_all(&sql, args![now]).await?)?;
        let mut changed = Vec::with_capacity(expired.len());
        for run in expired {
            let runner = run.runner_id.as_deref().unwrap_or("?");
            let expired_at = fmt_ms(run.lease_expires_at.unwrap_or(now));
            let (to, reason, assignments) = match (run.state, run.cancel_requested) {
                (RunState::Running, _) => (
                    RunState::Lost,
                    format!("runner {runner} stopped renewing its lease (expired at {expired_at})"),
                    "state = 'lost', finished_at = $2, reason = $3, lease_token = NULL, lease_expires_at = NULL",
                ),
                // A cancel was asked for: do not hand the run to another runner.
                (_, true) => (
                    RunState::Cancelled,
                    format!(
                        "cancelled; runner {runner} stopped renewing its lease before starting it \
                         (expired at {expired_at})"
                    ),
                    "state = 'cancelled', finished_at = $2, reason = $3, lease_token = NULL, lease_expires_at = NULL",
                ),
                (_, false) => (
                    RunState::Queued,
                    format!(
                        "runner {runner} did not start the run before its lease expired (at {expired_at}); \
                         queued again"
                    ),
                    "state = 'queued', claimed_at = NULL, runner_id = NULL, lease_token = NULL, \
                     lease_expires_at = NULL, cancel_requested = 0, reason = NULL",
                ),
            };
            // A re-queued run keeps no `reason` (the audit entry has it), so its update binds none.
            let values = if to == RunState::Queued {
                vec![]
            } else {
                args![now, reason.as_str()]
            };
            let updated = update_run(&mut tx, &run.id, assignments, values).await?;
            write_audit(
                &mut tx,
                Audit {
                    run_id: &run.id,
                    ts: now,
                    from: Some(run.state),
                    to,
                    actor: "server",
                    container_id: run.container_id.as_deref(),
                    exit_code: None,
                    reason: Some(&reason),
                },
            )
            .await?;
            changed.push(updated);
        }
        tx.commit().await?;
        Ok(changed)
    }
    async fn extend_leases(&self, until: i64) -> StoreResult<u64> {
        let mut tx = self.begin().await?;
        let changed = tx
            .execute(
                "UPDATE runs SET lease_expires_at = $1 \
                 WHERE state IN ('claimed', 'running') AND lease_expires_at < $1",
                args![until],
            )
            .await?;
        tx.commit().await?;
        Ok(changed)
    }

    async fn audit(&self, run_id: &str) -> StoreResult<Vec<AuditEntry>> {
        let rows = self
            .reader()
            .fetch_all(
                "SELECT run_id, seq, ts, from_state, to_state, actor, container_id, exit_code, reason \
                 FROM run_audit WHERE run_id = $1 ORDER BY seq",
                args![run_id],
            )
            .await?;
        rows.iter().map(audit_from_row).collect()
    }

    async fn count_by_state(&self) -> StoreResult<Vec<(RunState, i64)>> {
        let rows = self
            .reader()
            .fetch_all(
                "SELECT state, COUNT(*) AS n FROM runs GROUP BY state",
                vec![],
            )
            .await?;
        let mut counts: BTreeMap<&'static str, i64> = BTreeMap::new();
        for row in &rows {
            counts.insert(parse_state(&row.text("state")?)?.as_str(), row.int("n")?);
        }
        Ok(RunState::ON_COORDINATOR
            .into_iter()
            .map(|s| (s, counts.get(s.as_str()).copied().unwrap_or(0)))
            .collect())
    }
}
