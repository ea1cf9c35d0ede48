//! Schema migrations: `migrations/sqlite` and `migrations/postgres`, embedded at compile time by
//! `sqlx::migrate!` and recorded by sqlx in `_sqlx_migrations` (version and SHA-384 checksum of
//! each file; a changed file is refused).
//!
//! Before sqlx ran them, berth's own runner did, recording the applied versions in
//! `berth_schema`. A database it migrated is adopted once: its versions are written to
//! `_sqlx_migrations` with the checksums of the same files, so nothing runs twice. `berth_schema`
//! is kept at the newest version after every migration, because a berth from before the switch
//! reads it to refuse a schema newer than it knows.
//!
//! Everything happens in one write transaction (`BEGIN IMMEDIATE` on SQLite; on PostgreSQL under
//! the advisory lock the old runner took too), so servers starting together take turns and a
//! failed migration leaves the database as it was.

use std::collections::BTreeMap;

use sqlx::migrate::{MigrateError, Migration, Migrator};

use super::SqlStore;
use crate::db::{args, Db};
use crate::{StoreError, StoreResult};

/// The table berth's own migration runner recorded applied versions in (one row per version).
const LEGACY_TABLE: &str = "berth_schema";

/// The PostgreSQL advisory lock the old runner took for its migration transaction.
const MIGRATION_LOCK: i64 = 4_242_424_242;

/// The migrations of the backend behind `db`. Locking is off: the caller's transaction holds
/// the database (sqlx's own lock would be a second one, held past a failure on PostgreSQL).
fn migrator(db: &Db) -> Migrator {
    let mut migrator = if db.is_pg() {
        sqlx::migrate!("./migrations/postgres")
    } else {
        sqlx::migrate!("./migrations/sqlite")
    };
    migrator.set_locking(false);
    migrator
}

impl SqlStore {
    /// Brings the schema up to date.
    pub(super) async fn migrate(&self) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        if tx.is_pg() {
            tx.execute("SELECT pg_advisory_xact_lock($1)", args![MIGRATION_LOCK])
                .await?;
        }
        let migrator = migrator(&tx);
        adopt_legacy_schema(&mut tx, &migrator).await?;
        tx.run_migrator(&migrator)
            .await
            .map_err(|e| migrate_error(e, &migrator))?;
        record_legacy_version(&mut tx).await?;
        tx.commit().await
    }
}

/// Whether `table` exists (in the schema unqualified names resolve to, on PostgreSQL).
async fn table_exists(tx: &mut Db, table: &str) -> StoreResult<bool> {
    let sql = if tx.is_pg() {
        "SELECT 1 AS one WHERE to_regclass($1) IS NOT NULL"
    } else {
        "SELECT 1 AS one FROM sqlite_master WHERE type = 'table' AND name = $1"
    };
    Ok(tx.fetch_optional(sql, args![table]).await?.is_some())
}

/// A database migrated by berth's own runner (it has `berth_schema` but no `_sqlx_migrations`):
/// records the versions `berth_schema` lists as applied by sqlx, with sqlx's checksums of this
/// build's files, which are the files that runner applied. Refuses a version this build does
/// not have. Does nothing to any other database.
async fn adopt_legacy_schema(tx: &mut Db, migrator: &Migrator) -> StoreResult<()> {
    if !table_exists(tx, LEGACY_TABLE).await? || table_exists(tx, "_sqlx_migrations").await? {
        return Ok(());
    }
    let known: BTreeMap<i64, &Migration> = migrator.iter().map(|m| (m.version, m)).collect();
    let rows = tx
        .fetch_all(
            &format!("SELECT DISTINCT version FROM {LEGACY_TABLE} ORDER BY version"),
            vec![],
        )
        .await?;
    let mut applied = Vec::with_capacity(rows.len());
    for row in &rows {
        let version = row.int("version")?;
        let migration = known
            .get(&version)
            .ok_or_else(|| unknown_version(version, migrator))?;
        applied.push(*migration);
    }
    tx.ensure_sqlx_migrations_table()
        .await
        .map_err(|e| migrate_error(e, migrator))?;
    for migration in applied {
        // The columns sqlx writes when it applies a migration; -1: the time it took is unknown
        // (sqlx's own placeholder until it measured).
        tx.execute(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES ($1, $2, TRUE, $3, -1)",
            args![
                migration.version,
                &*migration.description,
                &*migration.checksum
            ],
        )
        .await?;
    }
    Ok(())
}

/// Keeps `berth_schema` at the newest applied version, for the berths from before the switch to
/// sqlx: they compare it with the migrations they know and refuse a newer schema.
async fn record_legacy_version(tx: &mut Db) -> StoreResult<()> {
    tx.execute(
        &format!("CREATE TABLE IF NOT EXISTS {LEGACY_TABLE} (version BIGINT NOT NULL)"),
        vec![],
    )
    .await?;
    tx.execute(
        &format!(
            "INSERT INTO {LEGACY_TABLE} (version) \
             SELECT newest FROM (SELECT MAX(version) AS newest FROM _sqlx_migrations) AS m \
             WHERE newest > (SELECT COALESCE(MAX(version), 0) FROM {LEGACY_TABLE})"
        ),
        vec![],
    )
    .await?;
    Ok(())
}

fn newest(migrator: &Migrator) -> i64 {
    migrator.iter().map(|m| m.version).max().unwrap_or(0)
}

fn unknown_version(version: i64, migrator: &Migrator) -> StoreError {
    StoreError::Backend(format!(
        "the database has schema version {version}, which this build does not know (it knows 1 to {}); upgrade berth",
        newest(migrator)
    ))
}

fn migrate_error(e: MigrateError, migrator: &Migrator) -> StoreError {
    match e {
        MigrateError::VersionMissing(version) => unknown_version(version, migrator),
        MigrateError::VersionMismatch(version) => StoreError::Backend(format!(
            "schema migration {version} was applied from a different file than this build has; \
             the database was migrated by another build of berth"
        )),
        e => StoreError::Backend(format!("migrating the database failed: {e}")),
    }
}
