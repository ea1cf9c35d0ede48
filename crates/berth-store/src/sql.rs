//! [`SqlStore`]: the [`Store`] on SQLite or PostgreSQL, with the same SQL on both.
//!
//! Concurrency: on PostgreSQL every write transaction first locks the run's row
//! (`SELECT … FOR UPDATE`, or the row an `UPDATE` touches) and the claim skips rows that other
//! claimers hold (`FOR UPDATE SKIP LOCKED`). On SQLite every write transaction starts with
//! `BEGIN IMMEDIATE` on a one-connection write pool, so writers of one process queue without
//! spinning and writers of other processes wait on the busy timeout; readers use their own pool
//! and never block writers (WAL).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{PgPool, SqlitePool};

use crate::db::{args, backend_err, Arg, Db, Row};
use crate::wake::Wakes;
use crate::{
    AuditEntry, ClaimRequest, Finish, NewEvent, NewRun, NewWorkflow, Project, Role, RunEvent,
    RunFilter, RunRow, RunState, RunnerRecord, Store, StoreError, StoreResult, TokenRecord, Wake,
    WakeFeed, WorkflowAuditEntry, WorkflowChange, WorkflowNote, WorkflowRow,
};

/// The largest page [`Store::list_runs`] returns.
pub const MAX_LIST_LIMIT: i64 = 500;
/// The largest page [`Store::events_after`] returns.
pub const MAX_EVENTS_LIMIT: i64 = 10_000;

const SQLITE_MIGRATIONS: &[&str] = &[
    include_str!("../migrations/sqlite/0001_init.sql"),
    include_str!("../migrations/sqlite/0002_runner_event_seq.sql"),
    include_str!("../migrations/sqlite/0003_workflows.sql"),
    include_str!("../migrations/sqlite/0004_runner_token.sql"),
    include_str!("../migrations/sqlite/0005_project_egress_ceiling.sql"),
];
const PG_MIGRATIONS: &[&str] = &[
    include_str!("../migrations/postgres/0001_init.sql"),
    include_str!("../migrations/postgres/0002_runner_event_seq.sql"),
    include_str!("../migrations/postgres/0003_workflows.sql"),
    include_str!("../migrations/postgres/0004_runner_token.sql"),
    include_str!("../migrations/postgres/0005_project_egress_ceiling.sql"),
];

/// The columns of [`RunRow`], in `SELECT` and `RETURNING` lists.
const RUN_COLS: &str = "id, project, state, execution_mode, spec, tags, labels, created_at, claimed_at, \
     started_at, finished_at, runner_id, container_id, exit_code, reason, cancel_requested, lease_expires_at, \
     pinned_runner";

/// The condition under which a row of `runners` may be taken by the token in placeholder
/// `token`: it has no token yet, has that one, or its token is revoked (or gone).
fn runner_free_for(token: &str) -> String {
    format!(
        "(runners.token_id IS NULL OR runners.token_id = {token} \
         OR NOT EXISTS (SELECT 1 FROM tokens t WHERE t.id = runners.token_id AND t.revoked_at IS NULL))"
    )
}

/// Rows of one multi-row `INSERT` (a handful of placeholders each, far below both limits).
const INSERT_CHUNK: usize = 1000;

#[derive(Clone)]
enum Backend {
    Sqlite {
        write: SqlitePool,
        read: SqlitePool,
        /// The database file (`None` in memory).
        file: Option<PathBuf>,
    },
    Postgres(PgPool),
}

/// The store on SQLite (`sqlite://PATH`) or PostgreSQL (`postgres://…`). Cloning is cheap and
/// shares the connection pools.
#[derive(Clone)]
pub struct SqlStore {
    backend: Backend,
    /// PostgreSQL: the wake-ups shared with the other servers on the database.
    wakes: Option<Arc<Wakes>>,
}

impl SqlStore {
    /// Connects and brings the schema up to date.
    ///
    /// `sqlite://PATH` (or `sqlite:PATH`): the file is created if missing; WAL journal, 5 s busy
    /// timeout, foreign keys on. `postgres://…` or `postgresql://…`: a pool of up to 10
    /// connections. Anything else is [`StoreError::UnsupportedUrl`].
    pub async fn connect(url: &str) -> StoreResult<SqlStore> {
        let store = if url.starts_with("sqlite:") {
            Self::connect_sqlite(url).await?
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Self::connect_postgres(url).await?
        } else {
            return Err(StoreError::UnsupportedUrl(redact_url(url)));
        };
        store.migrate().await?;
        if let Backend::Sqlite {
            file: Some(file), ..
        } = &store.backend
        {
            // After the migration wrote, so the WAL and shared-memory files exist.
            restrict_companions(file)?;
        }
        Ok(store)
    }

    async fn connect_sqlite(url: &str) -> StoreResult<SqlStore> {
        let base = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Backend(format!("invalid SQLite URL: {e}")))?
            .create_if_missing(true)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true)
            // With WAL, NORMAL survives any crash of the server process (kill -9 included); only
            // an operating-system crash or power loss can lose the last commits. FULL would
            // fsync every commit and halve the claim rate.
            .synchronous(sqlx::sqlite::SqliteSynchronous::Normal);
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let file = (!in_memory).then(|| base.get_filename().to_path_buf());
        if let Some(file) = &file {
            create_private(file)?;
        }
        // One writer: transactions of this process queue on the pool instead of spinning on
        // SQLITE_BUSY; the busy timeout covers other processes.
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(base.clone().journal_mode(SqliteJournalMode::Wal))
            .await
            .map_err(backend_err)?;
        let read = if in_memory {
            write.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(base)
                .await
                .map_err(backend_err)?
        };
        Ok(SqlStore {
            backend: Backend::Sqlite { write, read, file },
            wakes: None,
        })
    }

    async fn connect_postgres(url: &str) -> StoreResult<SqlStore> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Backend(format!("invalid PostgreSQL URL: {e}")))?;
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await
            .map_err(backend_err)?;
        Ok(SqlStore {
            backend: Backend::Postgres(pool),
            wakes: Some(Wakes::new(&options)),
        })
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite { .. } => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Closes the pools (waits for connections in use to come back).
    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite { write, read, .. } => {
                read.close().await;
                write.close().await;
            }
            Backend::Postgres(pool) => pool.close().await,
        }
        if let Some(wakes) = &self.wakes {
            wakes.close().await;
        }
    }

    /// For statements outside a transaction.
    fn reader(&self) -> Db {
        match &self.backend {
            Backend::Sqlite { read, .. } => Db::SqlitePool(read.clone()),
            Backend::Postgres(pool) => Db::PgPool(pool.clone()),
        }
    }

    /// For single writes that need no transaction.
    fn writer(&self) -> Db {
        match &self.backend {
            Backend::Sqlite { write, .. } => Db::SqlitePool(write.clone()),
            Backend::Postgres(pool) => Db::PgPool(pool.clone()),
        }
    }

    /// A write transaction (rolled back when dropped uncommitted).
    async fn begin(&self) -> StoreResult<Db> {
        Ok(match &self.backend {
            Backend::Sqlite { write, .. } => Db::SqliteTx(
                write
                    .begin_with("BEGIN IMMEDIATE")
                    .await
                    .map_err(backend_err)?,
            ),
            Backend::Postgres(pool) => Db::PgTx(pool.begin().await.map_err(backend_err)?),
        })
    }

    async fn migrate(&self) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        let migrations = if tx.is_pg() {
            // Nodes starting together take turns.
            tx.execute("SELECT pg_advisory_xact_lock(4242424242)", vec![])
                .await?;
            PG_MIGRATIONS
        } else {
            SQLITE_MIGRATIONS
        };
        tx.execute(
            "CREATE TABLE IF NOT EXISTS berth_schema (version BIGINT NOT NULL)",
            vec![],
        )
        .await?;
        let current = tx
            .fetch_one(
                "SELECT COALESCE(MAX(version), 0) AS v FROM berth_schema",
                vec![],
            )
            .await?
            .int("v")?;
        let known = i64::try_from(migrations.len()).unwrap_or(i64::MAX);
        if current > known {
            return Err(StoreError::Backend(format!(
                "the database has schema version {current}, newer than this build knows ({known}); upgrade berth"
            )));
        }
        for (version, script) in (1..).zip(migrations.iter()) {
            if version > current {
                tx.execute_script(script).await?;
                tx.execute(
                    "INSERT INTO berth_schema (version) VALUES ($1)",
                    args![version],
                )
                .await?;
            }
        }
        tx.commit().await
    }
}

/// Creates the SQLite file with mode 0600 if it is missing, and sets 0600 on it either way
/// (explicitly, so the umask does not matter): it holds token hashes and every run's output.
fn create_private(file: &Path) -> StoreResult<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let failed = |e: std::io::Error| {
        StoreError::Backend(format!(
            "cannot create the database {}: {e}",
            file.display()
        ))
    };
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(failed(e)),
    }
    set_private(file).map_err(failed)
}

/// Sets 0600 on the SQLite file's companions (`-wal`, `-shm`, `-journal`) that exist.
/// SQLite creates them with the database file's mode; this covers files left by an older berth.
fn restrict_companions(file: &Path) -> StoreResult<()> {
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut name = file.as_os_str().to_owned();
        name.push(suffix);
        let companion = PathBuf::from(name);
        match set_private(&companion) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(StoreError::Backend(format!(
                    "cannot restrict {} to its owner: {e}",
                    companion.display()
                )))
            }
        }
    }
    Ok(())
}

fn set_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

// ---------------------------------------------------------------------------------------------
// Helpers shared by the methods.

/// Hides the user info of a URL (it may hold a password).
fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let authority_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            return format!("{scheme}://***@{}", &rest[at + 1..]);
        }
    }
    url.to_owned()
}

/// Milliseconds since the epoch as RFC 3339 (for reasons people read).
fn fmt_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{ms} ms"))
}

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

/// Audit actors are `token:<id>`, `runner:<id>` or `server`; a bare token id gets its prefix.
fn actor_name(actor: &str) -> String {
    if actor == "server" || actor.contains(':') {
        actor.to_owned()
    } else {
        format!("token:{actor}")
    }
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("a stored {what} is unreadable: {e}"))
}

fn to_json<T: serde::Serialize>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::Backend(format!("cannot encode JSON: {e}")))
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> StoreResult<T> {
    serde_json::from_str(text).map_err(|e| corrupt(what, e))
}

fn parse_state(text: &str) -> StoreResult<RunState> {
    RunState::parse(text).ok_or_else(|| corrupt("run state", text))
}

fn run_from_row(row: &Row) -> StoreResult<RunRow> {
    Ok(RunRow {
        id: row.text("id")?,
        project: row.text("project")?,
        state: parse_state(&row.text("state")?)?,
        execution_mode: row.text("execution_mode")?,
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
    })
}

fn runs_from_rows(rows: &[Row]) -> StoreResult<Vec<RunRow>> {
    rows.iter().map(run_from_row).collect()
}

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
    })
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

fn not_found(what: &'static str, id: &str) -> StoreError {
    StoreError::NotFound {
        what,
        id: id.to_owned(),
    }
}

fn rejected(run_id: &str, why: impl Into<String>) -> StoreError {
    StoreError::Rejected {
        run_id: run_id.to_owned(),
        why: why.into(),
    }
}

/// `$n` placeholders for `values`, appended to `args`, comma-separated.
fn placeholders(args: &mut Vec<Arg>, values: impl IntoIterator<Item = Arg>) -> String {
    let mut out = Vec::new();
    for value in values {
        args.push(value);
        out.push(format!("${}", args.len()));
    }
    out.join(", ")
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
async fn insert_run_tx(tx: &mut Db, run: &NewRun) -> StoreResult<RunRow> {
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
                &run.execution_mode,
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

// ---------------------------------------------------------------------------------------------

impl Store for SqlStore {
    async fn ping(&self) -> StoreResult<()> {
        self.reader()
            .fetch_one("SELECT 1 AS one", vec![])
            .await
            .map(drop)
    }

    // Tokens.

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

    // Runs.

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
            "state = $2, exit_code = $3, reason = $4, finished_at = $5, lease_token = NULL, lease_expires_at = NULL",
            args![finish.state.as_str(), finish.exit_code, &finish.reason, finish.now],
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

    fn announce(&self, wake: Wake) {
        if let Some(wakes) = &self.wakes {
            wakes.announce(wake);
        }
    }

    fn wake_feed(&self) -> Option<WakeFeed> {
        self.wakes.as_ref().map(Wakes::feed)
    }

    async fn maintain(&self) -> StoreResult<()> {
        let mut db = self.begin().await?;
        let sql = if db.is_pg() {
            "ANALYZE runs, run_tags, run_events"
        } else {
            "PRAGMA optimize=0x10002"
        };
        db.execute(sql, Vec::new()).await?;
        db.commit().await
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
        Ok(RunState::ALL
            .into_iter()
            .map(|s| (s, counts.get(s.as_str()).copied().unwrap_or(0)))
            .collect())
    }

    // Runners.

    async fn register_runner(&self, runner: &RunnerRecord) -> StoreResult<()> {
        // The name is taken over only from nobody: no token yet (registered before names were
        // bound), the same token (a restart), or a token that no longer counts (revoked).
        let changed = self
            .writer()
            .execute(
                &format!(
                    "INSERT INTO runners (id, name, tags, require_matching_tags, capacity, registered_at, last_heartbeat, online, token_id) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                     ON CONFLICT (id) DO UPDATE SET name = excluded.name, tags = excluded.tags, \
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
                    &runner.token_id
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
                "SELECT id, name, tags, require_matching_tags, capacity, registered_at, last_heartbeat, online, token_id \
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
                "SELECT id, name, tags, require_matching_tags, capacity, registered_at, last_heartbeat, online, token_id \
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

    // Workflows.

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
