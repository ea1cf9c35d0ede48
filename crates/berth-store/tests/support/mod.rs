//! Test stores: a fresh SQLite file, and a fresh database on a throwaway PostgreSQL cluster
//! (started once per test binary, stopped at exit), or on `BERTH_TEST_PG_URL` when set.
#![allow(dead_code)] // each test binary uses a part
#![allow(clippy::unwrap_used)] // test support: a panic is the failure report

use std::future::Future;

use berth_store::SqlStore;
use sqlx::Connection;

mod pg_cluster;

/// One store under test, with the URL to open more connections to the same database.
pub struct TestDb {
    pub store: SqlStore,
    pub url: String,
    pub kind: &'static str,
}

impl TestDb {
    /// A second, independent store (its own pools) on the same database, like another process.
    pub async fn another(&self) -> SqlStore {
        SqlStore::connect(&self.url).await.unwrap()
    }
}

/// Runs `body` against a fresh SQLite store, then a fresh PostgreSQL store.
pub async fn with_stores<F, Fut>(body: F)
where
    F: Fn(TestDb) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    let store = SqlStore::connect(&url).await.unwrap();
    body(TestDb {
        store: store.clone(),
        url,
        kind: "sqlite",
    })
    .await;
    store.close().await;

    let (admin_url, db_url, name) = fresh_pg_database().await;
    let store = SqlStore::connect(&db_url).await.unwrap();
    body(TestDb {
        store: store.clone(),
        url: db_url,
        kind: "postgres",
    })
    .await;
    store.close().await;
    let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
}

/// Runs `body` with the URL of an empty SQLite database, then with that of an empty PostgreSQL
/// database (dropped afterwards); its first argument is `"sqlite"` or `"postgres"`. The body
/// closes the stores it opens.
pub async fn with_empty_databases<F, Fut>(body: F)
where
    F: Fn(&'static str, String) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    body("sqlite", url).await;

    let (admin_url, db_url, name) = fresh_pg_database().await;
    body("postgres", db_url).await;
    let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
}

/// Creates a database; returns (admin URL, database URL, database name).
async fn fresh_pg_database() -> (String, String, String) {
    let (url, name) = pg_cluster::fresh_database("berth_t");
    (pg_cluster::admin_url().to_owned(), url, name)
}
