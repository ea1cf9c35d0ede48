//! A throwaway PostgreSQL cluster for one test binary: `initdb` and `pg_ctl` from
//! /usr/lib/postgresql/*/bin (as the `postgres` user when we are root: the server refuses root),
//! a free port on loopback, stopped and removed at exit. `BERTH_TEST_PG_URL` (the URL of a
//! `postgres` database on a server where this user may create databases) replaces it.
//!
//! Shared by the store tests and the coordinator end-to-end tests (`crates/berth/tests`), which
//! include this file by path.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

/// A new, empty database named `<prefix>_<pid>_<n>`: its URL and its name.
pub fn fresh_database(prefix: &str) -> (String, String) {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let admin = admin_url();
    let name = format!(
        "{prefix}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let createdb = find_pg_bin()
        .map(|b| b.join("createdb"))
        .unwrap_or_else(|| "createdb".into());
    run(
        Command::new(createdb)
            .arg(format!("--maintenance-db={admin}"))
            .arg(&name),
        "createdb",
    );
    (database_url(admin, &name), name)
}

/// The URL of the cluster's `postgres` database.
pub fn admin_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| match std::env::var("BERTH_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => start_cluster(),
    })
}

/// `admin` with its database replaced by `name`, query kept.
fn database_url(admin: &str, name: &str) -> String {
    let (path, query) = admin
        .split_once('?')
        .map_or((admin, None), |(p, q)| (p, Some(q)));
    let base = path.rsplit_once('/').map_or(path, |(base, _)| base);
    let query = query.map(|q| format!("?{q}")).unwrap_or_default();
    format!("{base}/{name}{query}")
}

fn find_pg_bin() -> Option<PathBuf> {
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
    found.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    #[allow(unsafe_code)]
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe {
        libc::geteuid() == 0
    }
}

/// Runs a PostgreSQL tool, as the `postgres` user when we are root.
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

#[allow(clippy::print_stdout)] // the note on a retried port
fn start_cluster() -> String {
    let bin = find_pg_bin().unwrap_or_else(|| {
        panic!(
            "PostgreSQL server binaries (initdb, pg_ctl) are not installed under /usr/lib/postgresql/*/bin: \
             install them (Debian: `apt-get install postgresql`) or set BERTH_TEST_PG_URL to the URL of the \
             `postgres` database of a server where this user may create databases"
        )
    });
    let dir = tempfile::Builder::new()
        .prefix("berth-test-pg-")
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
    // The port is picked here and handed to the server, so it may be taken before the server
    // binds it (e.g. by a sibling test's child, forked while the probe listener was open, which
    // holds it until it execs): then the start fails and is tried again on another port.
    let log = dir.join("server.log");
    const ATTEMPTS: u32 = 5;
    let mut attempt = 1;
    let port = loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log_start = std::fs::metadata(&log).map_or(0, |m| m.len() as usize);
        // fsync off: a test cluster that dies with the test binary needs no durability.
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            dir.display()
        );
        let mut start = pg_command(&bin, "pg_ctl");
        start
            .args(["-w", "-t", "60", "-D"])
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .args(["-o", &options, "start"]);
        let out = start
            .output()
            .unwrap_or_else(|e| panic!("pg_ctl start: cannot run {start:?}: {e}"));
        if out.status.success() {
            break port;
        }
        let all = std::fs::read(&log).unwrap_or_default();
        let server_log = String::from_utf8_lossy(all.get(log_start..).unwrap_or_default());
        assert!(
            attempt < ATTEMPTS && server_log.contains("Address already in use"),
            "pg_ctl start failed ({}) on port {port}:\n{}\n{}\nserver log:\n{server_log}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("PostgreSQL could not bind port {port}, trying another port:\n{server_log}");
        attempt += 1;
    };
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
