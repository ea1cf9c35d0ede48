//! Schema migrations on both backends: sqlx's migrator, and the adoption of databases that
//! berth's own runner migrated before it (`berth_schema`), made here the way that runner did.
#![allow(clippy::unwrap_used)] // helpers too: a panic is the failure report

mod support;

use std::str::FromStr;

use berth_store::{AuthStore, RunnerRecord, RunnerStore, SqlStore};
use sqlx::migrate::Migrator;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use support::with_empty_databases;

const T0: i64 = 1_700_000_000_000;

fn migrator(kind: &str) -> Migrator {
    if kind == "postgres" {
        sqlx::migrate!("./migrations/postgres")
    } else {
        sqlx::migrate!("./migrations/sqlite")
    }
}

/// Runs `sql` (several statements) in one transaction on the database at `url`.
async fn execute(kind: &str, url: &str, sql: &str) {
    if kind == "postgres" {
        let mut conn = PgConnection::connect(url).await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        sqlx::raw_sql(sql).execute(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
        conn.close().await.unwrap();
    } else {
        let mut conn = SqliteConnectOptions::from_str(url)
            .unwrap()
            .create_if_missing(true)
            .connect()
            .await
            .unwrap();
        let mut tx = conn.begin().await.unwrap();
        sqlx::raw_sql(sql).execute(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
        conn.close().await.unwrap();
    }
}

/// One query's rows as tuples, on either backend.
async fn fetch<T>(kind: &str, url: &str, sql: &str) -> Vec<T>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
        + for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
        + Send
        + Unpin,
{
    if kind == "postgres" {
        let mut conn = PgConnection::connect(url).await.unwrap();
        let rows = sqlx::query_as(sql).fetch_all(&mut conn).await.unwrap();
        conn.close().await.unwrap();
        rows
    } else {
        let mut conn = SqliteConnectOptions::from_str(url)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let rows = sqlx::query_as(sql).fetch_all(&mut conn).await.unwrap();
        conn.close().await.unwrap();
        rows
    }
}

/// What berth's migration runner before sqlx did to a new database, up to `version`: in one
/// transaction, `berth_schema`, then each file followed by a row with its version.
async fn migrate_like_the_old_runner(kind: &str, url: &str, version: usize) {
    let dir = format!("{}/migrations/{kind}", env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= version, "{dir} has {} files", files.len());
    let mut script =
        "CREATE TABLE IF NOT EXISTS berth_schema (version BIGINT NOT NULL);\n".to_owned();
    for (n, file) in (1..).zip(&files[..version]) {
        script += &std::fs::read_to_string(file).unwrap();
        script += &format!("\n;INSERT INTO berth_schema (version) VALUES ({n});\n");
    }
    execute(kind, url, &script).await;
}

/// `_sqlx_migrations`: (version, checksum, success, execution_time) in version order.
async fn sqlx_records(kind: &str, url: &str) -> Vec<(i64, Vec<u8>, bool, i64)> {
    fetch(
        kind,
        url,
        "SELECT version, checksum, success, execution_time FROM _sqlx_migrations ORDER BY version",
    )
    .await
}

async fn legacy_version(kind: &str, url: &str) -> i64 {
    let rows: Vec<(i64,)> = fetch(
        kind,
        url,
        "SELECT COALESCE(MAX(version), 0) FROM berth_schema",
    )
    .await;
    rows[0].0
}

async fn has_table(kind: &str, url: &str, table: &str) -> bool {
    let sql = if kind == "postgres" {
        format!("SELECT COUNT(*) FROM pg_tables WHERE tablename = '{table}'")
    } else {
        format!("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '{table}'")
    };
    let rows: Vec<(i64,)> = fetch(kind, url, &sql).await;
    rows[0].0 == 1
}

fn runner(id: &str) -> RunnerRecord {
    RunnerRecord {
        id: id.to_owned(),
        name: id.to_owned(),
        tags: vec!["linux".to_owned()],
        require_matching_tags: false,
        capacity: 2,
        registered_at: T0,
        last_heartbeat: T0,
        online: true,
        token_id: None,
        secrets: vec!["API_KEY".to_owned()],
    }
}

#[tokio::test]
async fn a_database_the_old_runner_migrated_is_adopted_and_nothing_runs_twice() {
    with_empty_databases(|kind, url| async move {
        let known = migrator(kind).iter().count();
        migrate_like_the_old_runner(kind, &url, known).await;
        execute(
            kind,
            &url,
            &format!(
                "INSERT INTO tokens (id, secret_hash, role, project, created_at, revoked_at) \
                 VALUES ('old', 'hash-of-old', 'admin', NULL, {T0}, NULL)"
            ),
        )
        .await;

        // Running 0001 again would fail on its CREATE TABLE: the connect would fail.
        let store = SqlStore::connect(&url).await.unwrap();
        let token = store.token_by_hash("hash-of-old").await.unwrap();
        assert_eq!(token.map(|t| t.id).as_deref(), Some("old"), "{kind}");
        store.close().await;

        let records = sqlx_records(kind, &url).await;
        let expected: Vec<_> = migrator(kind)
            .iter()
            .map(|m| (m.version, m.checksum.to_vec(), true, -1))
            .collect();
        assert_eq!(records, expected, "{kind}: every version adopted, none run");
        assert_eq!(legacy_version(kind, &url).await, known as i64, "{kind}");

        // sqlx checks the recorded checksums against the files on every start.
        let again = SqlStore::connect(&url).await.unwrap();
        again.close().await;
        assert_eq!(sqlx_records(kind, &url).await, expected, "{kind}");
    })
    .await;
}

#[tokio::test]
async fn an_old_database_some_migrations_behind_gets_the_rest_from_sqlx() {
    with_empty_databases(|kind, url| async move {
        let known = migrator(kind).iter().count();
        migrate_like_the_old_runner(kind, &url, 5).await;

        let store = SqlStore::connect(&url).await.unwrap();
        // 0007's column is there: a runner's declared secrets are kept.
        store.register_runner(&runner("r1")).await.unwrap();
        let stored = store.runner("r1").await.unwrap().unwrap();
        assert_eq!(stored.secrets, ["API_KEY"], "{kind}");
        store.close().await;

        let records = sqlx_records(kind, &url).await;
        let versions: Vec<i64> = records.iter().map(|r| r.0).collect();
        assert_eq!(versions, (1..=known as i64).collect::<Vec<_>>(), "{kind}");
        for (version, checksum, success, execution_time) in &records {
            let file = migrator(kind)
                .iter()
                .find(|m| m.version == *version)
                .unwrap()
                .checksum
                .to_vec();
            assert_eq!(checksum, &file, "{kind}: version {version}");
            assert!(success, "{kind}: version {version}");
            // Adopted versions have no measured time; the ones sqlx ran have one.
            assert_eq!(
                *execution_time == -1,
                *version <= 5,
                "{kind}: version {version}"
            );
        }
        assert_eq!(legacy_version(kind, &url).await, known as i64, "{kind}");
    })
    .await;
}

#[tokio::test]
async fn a_schema_newer_than_this_build_is_refused_and_left_alone() {
    with_empty_databases(|kind, url| async move {
        let known = migrator(kind).iter().count();
        let newer = known + 1;
        // Made by an old-runner berth that knew one more migration.
        migrate_like_the_old_runner(kind, &url, known).await;
        execute(
            kind,
            &url,
            &format!("INSERT INTO berth_schema (version) VALUES ({newer})"),
        )
        .await;
        let err = SqlStore::connect(&url).await.err().unwrap().to_string();
        assert!(
            err.contains(&format!("schema version {newer}")) && err.contains("upgrade berth"),
            "{kind}: {err}"
        );
        assert!(
            !has_table(kind, &url, "_sqlx_migrations").await,
            "{kind}: nothing written"
        );
    })
    .await;
}

#[tokio::test]
async fn a_new_database_is_migrated_by_sqlx_and_tells_older_berths_its_version() {
    with_empty_databases(|kind, url| async move {
        let known = migrator(kind).iter().count();
        let store = SqlStore::connect(&url).await.unwrap();
        store.close().await;
        let records = sqlx_records(kind, &url).await;
        assert_eq!(records.len(), known, "{kind}");
        assert!(records.iter().all(|r| r.2 && r.3 >= 0), "{kind}: {records:?}");
        // A berth from before sqlx reads `berth_schema`: it must see the real version, to refuse
        // a schema it does not know.
        assert_eq!(legacy_version(kind, &url).await, known as i64, "{kind}");

        // Migrated by a newer sqlx-era berth: refused, naming the version.
        let newer = known + 1;
        let checksum = if kind == "postgres" { "'\\x00'::bytea" } else { "x'00'" };
        execute(
            kind,
            &url,
            &format!(
                "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
                 VALUES ({newer}, 'from the future', TRUE, {checksum}, 0)"
            ),
        )
        .await;
        let err = SqlStore::connect(&url).await.err().unwrap().to_string();
        assert!(
            err.contains(&format!("schema version {newer}")) && err.contains("upgrade berth"),
            "{kind}: {err}"
        );
    })
    .await;
}

#[tokio::test]
async fn servers_starting_together_on_a_new_database_take_turns() {
    with_empty_databases(|kind, url| async move {
        let known = migrator(kind).iter().count();
        let (a, b, c) = tokio::join!(
            SqlStore::connect(&url),
            SqlStore::connect(&url),
            SqlStore::connect(&url)
        );
        for store in [a, b, c] {
            store.unwrap().close().await;
        }
        assert_eq!(sqlx_records(kind, &url).await.len(), known, "{kind}");
        assert_eq!(legacy_version(kind, &url).await, known as i64, "{kind}");
    })
    .await;
}
