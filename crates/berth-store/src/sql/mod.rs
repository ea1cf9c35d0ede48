//! [`SqlStore`]: the [`Store`] on SQLite or PostgreSQL, with the same SQL on both.
//!
//! Concurrency: on PostgreSQL every write transaction first locks the run's row
//! (`SELECT … FOR UPDATE`, or the row an `UPDATE` touches) and the claim skips rows that other
//! claimers hold (`FOR UPDATE SKIP LOCKED`). On SQLite every write transaction starts with
//! `BEGIN IMMEDIATE` on a one-connection write pool, so writers of one process queue without
//! spinning and writers of other processes wait on the busy timeout; readers use their own pool
//! and never block writers (WAL).
//!
//! Here: connecting, the pools and the helpers shared by the areas; each area's trait is
//! implemented in a file of its own (`auth`, `runs`, `runners`, `workflows`), the schema's
//! migrations in `migrate`.

mod auth;
mod migrate;
mod runners;
mod runs;
mod workflows;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{PgPool, SqlitePool};

use crate::db::{backend_err, Arg, Db};
use crate::wake::Wakes;
use crate::{ExecutionMode, RunState, Store, StoreError, StoreResult, Wake, WakeFeed};

/// The largest page [`RunStore::list_runs`](crate::RunStore::list_runs) returns.
pub const MAX_LIST_LIMIT: i64 = 500;
/// The largest page [`RunStore::events_after`](crate::RunStore::events_after) returns.
pub const MAX_EVENTS_LIMIT: i64 = 10_000;

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
        Self::connect_with_password(url, None).await
    }

    /// [`SqlStore::connect`] with the PostgreSQL password given apart from the URL (read from a
    /// file by the caller), so that it never has to be written into a URL that ends up in a
    /// process's arguments or a unit file. It replaces a password the URL holds; SQLite has none
    /// and ignores it.
    pub async fn connect_with_password(url: &str, password: Option<&str>) -> StoreResult<SqlStore> {
        let store = if url.starts_with("sqlite:") {
            Self::connect_sqlite(url).await?
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Self::connect_postgres(url, password).await?
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

    async fn connect_postgres(url: &str, password: Option<&str>) -> StoreResult<SqlStore> {
        let mut options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Backend(format!("invalid PostgreSQL URL: {e}")))?;
        if let Some(password) = password {
            options = options.password(password);
        }
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
    RunState::parse_stored(text).ok_or_else(|| corrupt("run state", text))
}

fn parse_execution_mode(text: &str) -> StoreResult<ExecutionMode> {
    ExecutionMode::parse(text).ok_or_else(|| {
        corrupt(
            "execution mode",
            format_args!("`{text}` is neither docker-sandbox nor local"),
        )
    })
}

fn not_found(what: &'static str, id: &str) -> StoreError {
    StoreError::NotFound {
        what,
        id: id.to_owned(),
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

// ---------------------------------------------------------------------------------------------

impl Store for SqlStore {
    async fn ping(&self) -> StoreResult<()> {
        self.reader()
            .fetch_one("SELECT 1 AS one", vec![])
            .await
            .map(drop)
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
}
