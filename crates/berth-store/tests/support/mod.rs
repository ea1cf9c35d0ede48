//! Test stores: a fresh SQLite file, and a fresh database on a throwaway PostgreSQL cluster
//! (started once per test binary, stopped at exit), or on `BERTH_TEST_PG_URL` when set.
#![allow(dead_code)] // each test binary uses a part
#![allow(clippy::unwrap_used)] // test support: a panic is the failure report

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use berth_store::SqlStore;
use sqlx::Connection;

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

/// Creates a database; returns (admin URL, database URL, database name).
async fn fresh_pg_database() -> (String, String, String) {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let admin_url = pg_admin_url();
    let name = format!(
        "berth_t_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let mut admin = sqlx::PgConnection::connect(admin_url).await.unwrap();
    sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();
    let (path, query) = admin_url
        .split_once('?')
        .map_or((admin_url, None), |(p, q)| (p, Some(q)));
    let base = path.rsplit_once('/').map_or(path, |(base, _)| base);
    let query = query.map(|q| format!("?{q}")).unwrap_or_default();
    (admin_url.to_owned(), format!("{base}/{name}{query}"), name)
}

/// A URL of the `postgres` database of a server we may create databases on.
fn pg_admin_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| match std::env::var("BERTH_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => start_cluster(),
    })
}

struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

fn find_pg_bin() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL server binaries (initdb, pg_ctl) are not installed under /usr/lib/postgresql/*/bin: \
             install them (Debian: `apt-get install postgresql`) or set BERTH_TEST_PG_URL to the URL of the \
             `postgres` database of a server where this user may create databases"
        ),
    }
}

fn is_root() -> bool {
    #[allow(unsafe_code)]
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe {
        libc::geteuid() == 0
    }
}

/// Runs a PostgreSQL tool, as the `postgres` user when we are root (the server refuses root).
fn pg_command(bin: &Path, tool: &str) -> Command {
    let program = bin.join(tool);
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn start_cluster() -> String {
    let bin = find_pg_bin();
    let dir = tempfile::Builder::new()
        .prefix("berth-store-pg-")
        .tempdir()
        .unwrap()
        .keep();
    if is_root() {
        run(
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir),
            "chown of the cluster directory",
        );
    }
    let data = dir.join("data");
    run(
        pg_command(&bin, "initdb")
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data),
        "initdb",
    );
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let options = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1",
        dir.display()
    );
    run(
        pg_command(&bin, "pg_ctl")
            .args(["-w", "-t", "60", "-D"])
            .arg(&data)
            .arg("-l")
            .arg(dir.join("server.log"))
            .args(["-o", &options, "start"]),
        "pg_ctl start",
    );
    if CLUSTER.set(Cluster { bin, dir }).is_ok() {
        #[allow(unsafe_code)]
        // SAFETY: registers a plain `extern "C" fn` with no arguments, as atexit expects.
        unsafe {
            libc::atexit(stop_cluster);
        }
    }
    format!("postgres://postgres@127.0.0.1:{port}/postgres")
}

/// At process exit (the test harness ends with `process::exit`, which runs atexit handlers).
extern "C" fn stop_cluster() {
    if let Some(cluster) = CLUSTER.get() {
        let _ = pg_command(&cluster.bin, "pg_ctl")
            .args(["-m", "immediate", "-D"])
            .arg(cluster.dir.join("data"))
            .arg("stop")
            .output();
        let _ = std::fs::remove_dir_all(&cluster.dir);
    }
}
