//! The coordinator end to end: a real `berth server`, real `berth runner` processes and the real
//! Docker engine, on SQLite and on PostgreSQL. Every process a test starts is killed when its
//! `Cluster` is dropped, and every container its runners labelled is removed.
//!
//! Scenarios: submit/follow/logs/SSE resume/artifacts/audit; 50 runs on two runners, each once;
//! tag routing; cancel while queued and while running; `kill -9` of a runner (lost, then
//! reconciled); `kill -9` of the server (no event lost or repeated); the engine going away;
//! authentication; answers lost on the way back to the runner; workflows (the same workflow on
//! the CLI and through server + runner, copy workspaces, cancel, a runner or the server killed
//! mid-workflow). Leases are short (3 s).
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod support;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::workflow::{
    fake_credentials, make_repo, run_args, set_builder, write_files, BUILDER, REVIEWER,
    STUCK_BUILDER,
};
use support::{agents_image, berth_bin, containers_of_run, force_remove, git, image};

const LEASE: &str = "3s";
const HEARTBEAT: &str = "500ms";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Db {
    Sqlite,
    Postgres,
}

/// Generates one test per store from `fn NAME(db: Db)`.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test] fn $name() { super::$name(super::Db::Sqlite) })*
        }
        mod postgres {
            $(#[test] fn $name() { super::$name(super::Db::Postgres) })*
        }
    };
}

on_both_stores!(
    submit_logs_events_artifacts_and_audit,
    fifty_runs_on_two_runners_each_run_exactly_once,
    tags_route_runs,
    cancel_while_queued_and_while_running,
    runner_killed_mid_run_is_lost_and_reconciled,
    server_killed_mid_run_loses_no_event,
    engine_going_away_mid_run_is_an_error,
    auth_is_enforced_end_to_end,
    lost_answers_do_not_change_outcomes,
    workflow_on_the_cli_and_through_server_and_runner_agree,
    sigterm_with_the_server_down_keeps_the_output_for_the_next_start,
    second_sigterm_stops_the_runs_within_the_grace,
    server_outage_longer_than_the_lease_loses_no_run,
    written_off_runner_never_starts_what_another_runner_took,
    runner_restarted_within_the_lease_adopts_its_run,
    runner_never_restarted_its_run_goes_lost_and_gc_removes_it,
);

fn unique(base: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{base}-{}-{}-{:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        nanos & 0xffff
    )
}

/// Runs a command, killing it (and failing the test) if it takes longer than `limit`.
fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Polls `probe` every 50 ms until it returns Some, or panics with `what` after `limit`.
fn poll<T>(limit: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Container ids labelled with a runner id (all states).
fn containers_of_runner(name: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=berth.runner-id={name}"),
        ])
        .output()
        .unwrap();
    text(&out.stdout).lines().map(str::to_string).collect()
}

/// One event of a server-sent event stream.
#[derive(Debug, Clone)]
struct Sse {
    id: Option<i64>,
    kind: String,
    data: String,
}

impl Sse {
    /// The event's own `data` field (the EventView's payload), for `stdout` and the like.
    fn payload(&self) -> String {
        serde_json::from_str::<Value>(&self.data)
            .ok()
            .and_then(|v| v["data"].as_str().map(str::to_string))
            .unwrap_or_default()
    }
}

/// A whole (not followed) stream's events, through the client's parser; none may be oversized.
fn parse_sse(body: &str) -> Vec<Sse> {
    berth_client::sse::SseParser::default()
        .push(body.as_bytes())
        .into_iter()
        .map(|event| {
            let event = event.unwrap();
            Sse {
                id: event.id.and_then(|id| id.parse().ok()),
                kind: event.kind,
                data: event.data,
            }
        })
        .collect()
}

/// The throwaway PostgreSQL cluster shared with the store tests.
#[path = "../../berth-store/tests/support/pg_cluster.rs"]
mod pg_cluster;

/// A Unix-socket proxy to the Docker engine that can be shut down with every connection cut,
/// as if the engine went away.
struct DockerProxy {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<UnixStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl DockerProxy {
    fn start(path: &Path) -> Self {
        let listener = UnixListener::bind(path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(Vec::<UnixStream>::new()));
        let thread = {
            let stop = stop.clone();
            let connections = connections.clone();
            let path = path.to_path_buf();
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            client.set_nonblocking(false).unwrap();
                            let Ok(upstream) = UnixStream::connect("/var/run/docker.sock") else {
                                continue;
                            };
                            let mut all = connections.lock().unwrap();
                            all.push(client.try_clone().unwrap());
                            all.push(upstream.try_clone().unwrap());
                            drop(all);
                            for (mut from, mut to) in [
                                (client.try_clone().unwrap(), upstream.try_clone().unwrap()),
                                (upstream, client),
                            ] {
                                std::thread::spawn(move || {
                                    let _ = std::io::copy(&mut from, &mut to);
                                    let _ = to.shutdown(std::net::Shutdown::Write);
                                });
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
                drop(listener);
                let _ = std::fs::remove_file(&path);
            })
        };
        Self {
            path: path.to_path_buf(),
            stop,
            connections,
            thread: Some(thread),
        }
    }

    /// Stops accepting, removes the socket and cuts every open connection.
    fn shut_down(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for c in self.connections.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for DockerProxy {
    fn drop(&mut self) {
        self.shut_down();
    }
}

struct RunnerProcess {
    name: String,
    child: Child,
}

/// A test CA and the server certificate it issued last, in `dir`: `ca.pem`, `cert.pem`,
/// `key.pem`.
struct TestPki {
    dir: PathBuf,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    /// The CA of runners' client certificates (`clients-ca.pem`), for a server that verifies
    /// runners.
    clients: Option<rcgen::CertifiedIssuer<'static, rcgen::KeyPair>>,
}

impl TestPki {
    /// A CA, and a first server certificate (subject `CN=first`) for localhost and 127.0.0.1.
    fn new(dir: &Path, clients: bool) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let ca = test_ca("berth test CA");
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        let clients = clients.then(|| {
            let ca = test_ca("berth test runners' CA");
            std::fs::write(dir.join("clients-ca.pem"), ca.pem()).unwrap();
            ca
        });
        let pki = Self {
            dir: dir.to_path_buf(),
            ca,
            clients,
        };
        pki.issue("first");
        pki
    }

    /// Writes a new server certificate with the subject `CN=name`, and its key; returns both
    /// in PEM.
    fn issue(&self, name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let (cert, key) = (cert.pem(), key.serialize_pem());
        std::fs::write(self.cert(), &cert).unwrap();
        std::fs::write(self.key(), &key).unwrap();
        (cert, key)
    }

    fn ca_file(&self) -> String {
        self.dir.join("ca.pem").display().to_string()
    }

    /// A client certificate `CN=name` issued by `issuer`, and its key, written to
    /// `name.pem` and `name-key.pem`; returns both paths.
    fn issue_client(
        &self,
        name: &str,
        issuer: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    ) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.signed_by(&key, issuer).unwrap();
        let (cert_path, key_path) = (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}-key.pem")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (
            cert_path.display().to_string(),
            key_path.display().to_string(),
        )
    }

    fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }
}

fn test_ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
}

/// How a test server is reached.
#[derive(Clone, Copy, PartialEq)]
enum Transport {
    PlainHttp,
    Https,
    /// HTTPS, and runners need a client certificate (`--tls-client-ca`).
    HttpsVerifyingRunners,
}

/// A server, its runners and everything they need, in one temporary directory.
struct Cluster {
    db: Db,
    dir: tempfile::TempDir,
    /// With a CA and a certificate: the server serves HTTPS, clients and runners get `--ca`.
    tls: Option<TestPki>,
    db_url: Option<String>,
    url: String,
    listen: String,
    admin: String,
    client: String,
    runner_token: String,
    project: String,
    server: Option<Child>,
    /// `--lease` and `--heartbeat` of the servers.
    lease: &'static str,
    heartbeat: &'static str,
    /// More servers on the same PostgreSQL database (killed on drop).
    peers: Vec<Child>,
    runners: Vec<RunnerProcess>,
    /// Every runner name ever started, for cleaning up their containers.
    names: Vec<String>,
    logs: Vec<PathBuf>,
    /// Runners killed and not restarted yet: their containers are not for `berth gc`.
    killed: Vec<(String, RwLockReadGuard<'static, ()>)>,
}

/// `berth gc` removes every container on the engine whose owner died, other tests' too; it
/// runs only while no test has a runner killed and not yet restarted (whose containers are
/// waiting to be adopted).
static KILLED_RUNNERS: RwLock<()> = RwLock::new(());

impl Cluster {
    /// A server with a project, a client token and a runner token; no runners yet.
    fn start(db: Db) -> Self {
        Self::start_with(db, LEASE, HEARTBEAT)
    }

    /// The same with the servers' `--lease` and `--heartbeat`.
    fn start_with(db: Db, lease: &'static str, heartbeat: &'static str) -> Self {
        Self::start_full(db, lease, heartbeat, Transport::PlainHttp)
    }

    /// A server serving HTTPS with a certificate from a test CA.
    fn start_tls(db: Db) -> Self {
        Self::start_full(db, LEASE, HEARTBEAT, Transport::Https)
    }

    fn start_full(
        db: Db,
        lease: &'static str,
        heartbeat: &'static str,
        transport: Transport,
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("berth-e2e-")
            .tempdir()
            .unwrap();
        std::fs::create_dir_all(dir.path().join("logs")).unwrap();
        let workspace = dir.path().join("ws");
        std::fs::create_dir_all(&workspace).unwrap();
        // The sandbox user is 1000 when the runner runs as root.
        std::fs::set_permissions(&workspace, std::fs::Permissions::from_mode(0o777)).unwrap();
        let db_url = match db {
            Db::Sqlite => None,
            Db::Postgres => Some(pg_cluster::fresh_database("berth_e2e").0),
        };
        let tls = (transport != Transport::PlainHttp).then(|| {
            TestPki::new(
                &dir.path().join("pki"),
                transport == Transport::HttpsVerifyingRunners,
            )
        });
        let mut cluster = Self {
            db,
            dir,
            tls,
            db_url,
            // Set by start_server from the port the server reports.
            url: String::new(),
            listen: "127.0.0.1:0".to_string(),
            admin: String::new(),
            client: String::new(),
            runner_token: String::new(),
            project: unique("proj"),
            server: None,
            lease,
            heartbeat,
            peers: Vec::new(),
            runners: Vec::new(),
            names: Vec::new(),
            logs: Vec::new(),
            killed: Vec::new(),
        };
        cluster.start_server();
        cluster.admin = std::fs::read_to_string(cluster.state_dir().join("admin-token"))
            .unwrap()
            .trim()
            .to_string();
        let project = cluster.project.clone();
        let ws = workspace.display().to_string();
        let o = cluster.admin_cli(&["project", "create", &project, "--workspace-root", &ws]);
        assert!(o.status.success(), "project create: {}", text(&o.stderr));
        cluster.client = cluster.create_token("client").1;
        cluster.runner_token = cluster.create_token("runner").1;
        cluster
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn state_dir(&self) -> PathBuf {
        self.path().join("state")
    }

    fn log_file(&mut self, what: &str) -> File {
        let path = self.path().join("logs").join(format!("{what}.log"));
        if !self.logs.contains(&path) {
            self.logs.push(path.clone());
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap()
    }

    /// `berth ARGS` with a clean environment.
    fn berth(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(berth_bin());
        cmd.args(args)
            .current_dir(self.path())
            .env_remove("BERTH_STATE_DIR")
            .env_remove("BERTH_SERVER")
            .env_remove("BERTH_TOKEN")
            .env_remove("DOCKER_HOST")
            .env("NO_COLOR", "1")
            .env("XDG_CACHE_HOME", self.path().join("cache"))
            .env("XDG_CONFIG_HOME", self.path().join("config"));
        cmd
    }

    /// `berth SUBCOMMAND --server URL --token TOKEN [--ca CA] ARGS...`, within 60 s.
    fn cli_as(&self, token: &str, args: &[&str]) -> Output {
        let ca = self.tls.as_ref().map(TestPki::ca_file);
        let mut all = vec![args[0], "--server", &self.url, "--token", token];
        if let Some(ca) = &ca {
            all.extend(["--ca", ca.as_str()]);
        }
        all.extend_from_slice(&args[1..]);
        let mut cmd = self.berth(&all);
        output_within(&mut cmd, Duration::from_secs(60))
    }

    fn cli(&self, args: &[&str]) -> Output {
        self.cli_as(&self.client, args)
    }

    fn admin_cli(&self, args: &[&str]) -> Output {
        self.cli_as(&self.admin, args)
    }

    /// Creates a token; returns (id, secret).
    fn create_token(&self, role: &str) -> (String, String) {
        let o = self.admin_cli(&["token", "create", "--role", role, "--json"]);
        assert!(o.status.success(), "token create: {}", text(&o.stderr));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        (
            v["id"].as_str().unwrap().to_string(),
            v["token"].as_str().unwrap().to_string(),
        )
    }

    /// Starts the server and waits for its /healthz.
    ///
    /// The first start listens on port 0 and takes the port the server reports: a port picked
    /// here and handed over could be taken before the server binds it (a sibling test's child
    /// forked while the probe listener was open holds it until it execs). A restart keeps its
    /// port (the runners know the URL) and tries again if the port is briefly taken.
    fn start_server(&mut self) {
        const ATTEMPTS: u32 = 5;
        for attempt in 1..=ATTEMPTS {
            match self.try_start_server() {
                Ok(()) => return,
                Err(log) if attempt < ATTEMPTS && log.contains("cannot listen on") => {
                    println!("the server could not listen, trying again:\n{log}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(log) => panic!("berth server could not start:\n{log}"),
            }
        }
    }

    /// One start of the server; Err with its log if it exits first.
    fn try_start_server(&mut self) -> Result<(), String> {
        let log_path = self.path().join("logs").join("server.log");
        let log = self.log_file("server");
        let log_start = std::fs::metadata(&log_path).map_or(0, |m| m.len() as usize);
        let child = self
            .server_command(&self.state_dir(), &self.listen)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.server = Some(child);
        let this_start = || {
            let all = std::fs::read(&log_path).unwrap_or_default();
            String::from_utf8_lossy(all.get(log_start..).unwrap_or_default()).into_owned()
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.server.as_mut().unwrap().try_wait().unwrap() {
                self.server = None;
                return Err(format!("berth server exited ({status}):\n{}", this_start()));
            }
            if self.listen.ends_with(":0") {
                if let Some(address) = listening_address(&this_start()) {
                    let scheme = if self.tls.is_some() { "https" } else { "http" };
                    self.url = format!("{scheme}://{address}");
                    self.listen = address;
                }
            }
            if !self.url.is_empty() {
                let (status, _) = self.http("GET", "/healthz", None, None, &[]);
                if status == 200 {
                    return Ok(());
                }
            }
            assert!(
                Instant::now() < deadline,
                "berth server did not answer /healthz within 20s:\n{}",
                self.log_tail("server")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `berth server` on this cluster's database with its own state directory and log.
    fn server_command(&self, state: &Path, listen: &str) -> Command {
        let state = state.display().to_string();
        let mut cmd = self.berth(&[
            "server",
            "--listen",
            listen,
            "--state-dir",
            &state,
            "--lease",
            self.lease,
            "--heartbeat",
            self.heartbeat,
        ]);
        if let Some(db) = &self.db_url {
            cmd.args(["--db", db]);
        }
        if let Some(tls) = &self.tls {
            cmd.arg("--tls-cert").arg(tls.cert());
            cmd.arg("--tls-key").arg(tls.key());
            if tls.clients.is_some() {
                cmd.arg("--tls-client-ca")
                    .arg(tls.dir.join("clients-ca.pem"));
            }
        }
        cmd
    }

    /// Starts another server on the same PostgreSQL database (its own port, state directory and
    /// log `server-N`), waits for its /healthz; returns its URL.
    fn start_peer_server(&mut self) -> String {
        assert_eq!(
            self.db,
            Db::Postgres,
            "servers share only a PostgreSQL store"
        );
        let name = format!("server-{}", self.peers.len() + 2);
        let log = self.log_file(&name);
        let log_path = self.path().join("logs").join(format!("{name}.log"));
        let child = self
            .server_command(&self.path().join(&name), "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.peers.push(child);
        let url = poll(
            Duration::from_secs(20),
            &format!("{name} listening"),
            || {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                listening_address(&log).map(|a| format!("http://{a}"))
            },
        );
        poll(Duration::from_secs(20), &format!("{name} healthy"), || {
            let o = Command::new("curl")
                .args(["-sf", "--max-time", "5", &format!("{url}/healthz")])
                .output()
                .ok()?;
            o.status.success().then_some(())
        });
        url
    }

    fn kill_server(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts `berth runner NAME EXTRA` with extra environment; returns immediately.
    fn spawn_runner(&mut self, name: &str, extra: &[&str], env: &[(&str, String)]) {
        let url = self.url.clone();
        self.spawn_runner_to(&url, name, extra, env);
    }

    /// The same against the server at `url`.
    fn spawn_runner_to(&mut self, url: &str, name: &str, extra: &[&str], env: &[(&str, String)]) {
        self.killed.retain(|(killed, _)| killed != name);
        let log = self.log_file(&format!("runner-{name}"));
        let state = self.path().join("runners").join(name);
        let state = state.display().to_string();
        let mut cmd = self.berth(&[
            "runner",
            "--server",
            url,
            "--token",
            &self.runner_token,
            "--name",
            name,
            "--state-dir",
            &state,
        ]);
        if let Some(tls) = &self.tls {
            cmd.args(["--ca", &tls.ca_file()]);
        }
        cmd.args(extra);
        // Made-up model credentials, never the developer's: the fake agents use none, and agent
        // profiles refuse to start without one. A test sets one to "" to take it away (empty
        // counts as unset, for the runner as for `berth run`).
        cmd.env_remove("CLAUDE_CODE_OAUTH_TOKEN")
            .env("ANTHROPIC_API_KEY", "berth-test-not-a-key")
            .env("OPENAI_API_KEY", "berth-test-not-a-key");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        if !self.names.iter().any(|n| n == name) {
            self.names.push(name.to_string());
        }
        self.runners.push(RunnerProcess {
            name: name.to_string(),
            child,
        });
    }

    /// `berth runner` named `name` against this cluster's server with the runner token and a
    /// state directory of its own, and nothing else (no `--ca`): for a runner expected to stop.
    fn runner_command(&self, name: &str, extra: &[&str]) -> Command {
        let state = self.path().join("runners").join(name);
        let state = state.display().to_string();
        let mut cmd = self.berth(&[
            "runner",
            "--server",
            &self.url,
            "--token",
            &self.runner_token,
            "--name",
            name,
            "--state-dir",
            &state,
        ]);
        cmd.args(extra);
        cmd
    }

    /// Starts a runner with a unique name made from `base`, waits until it is online; returns the
    /// name.
    fn runner(&mut self, base: &str, extra: &[&str]) -> String {
        self.runner_with_env(base, extra, &[])
    }

    fn runner_with_env(&mut self, base: &str, extra: &[&str], env: &[(&str, String)]) -> String {
        let name = unique(base);
        self.spawn_runner(&name, extra, env);
        self.wait_runner_online(&name);
        name
    }

    fn wait_runner_online(&self, name: &str) {
        poll(
            Duration::from_secs(20),
            &format!("runner {name} online"),
            || {
                let (status, body) =
                    self.http("GET", "/api/v1/runners", Some(&self.client), None, &[]);
                let list: Value = serde_json::from_str(&body).ok()?;
                (status == 200
                    && list.as_array()?.iter().any(|r| {
                        r["id"].as_str() == Some(name) && r["online"].as_bool() == Some(true)
                    }))
                .then_some(())
            },
        );
    }

    /// SIGKILL of a runner process.
    fn kill_runner(&mut self, name: &str) {
        let guard = KILLED_RUNNERS.read().unwrap_or_else(|e| e.into_inner());
        self.killed.push((name.to_string(), guard));
        for r in self.runners.iter_mut().filter(|r| r.name == name) {
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
        self.runners.retain(|r| r.name != name);
    }

    /// Sends `signal` to a runner process.
    fn signal_runner(&self, name: &str, signal: &str) {
        for r in self.runners.iter().filter(|r| r.name == name) {
            let _ = Command::new("kill")
                .args([&format!("-{signal}"), &r.child.id().to_string()])
                .status();
        }
    }

    /// Waits up to `limit` for a runner process to exit; its exit status if it did.
    fn wait_runner_exit(
        &mut self,
        name: &str,
        limit: Duration,
    ) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            let r = self.runners.iter_mut().find(|r| r.name == name)?;
            if let Some(status) = r.child.try_wait().unwrap() {
                self.runners.retain(|r| r.name != name);
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A runner's own directory (run directories, journal).
    fn runner_dir(&self, name: &str) -> PathBuf {
        self.path().join("runners").join(name).join("runner")
    }

    /// The stdout lines of a run as the server has them.
    fn stdout_lines(&self, id: &str) -> Vec<String> {
        self.events(id, None)
            .iter()
            .filter(|e| e.kind == "stdout")
            .map(Sse::payload)
            .collect()
    }

    /// curl: (status, body). Never hangs: 30 s at most.
    fn http(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
        headers: &[&str],
    ) -> (u16, String) {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "--max-time",
            "30",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
        ]);
        if let Some(tls) = &self.tls {
            cmd.args(["--cacert", &tls.ca_file()]);
        }
        if let Some(t) = token {
            cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
        }
        for h in headers {
            cmd.args(["-H", h]);
        }
        cmd.arg(format!("{}{path}", self.url));
        let o = output_within(&mut cmd, Duration::from_secs(40));
        let out = text(&o.stdout);
        let (body, status) = out.rsplit_once('\n').unwrap_or(("", &out));
        (status.trim().parse().unwrap_or(0), body.to_string())
    }

    /// `berth submit --project P --image IMG EXTRA -- CMD` (without --follow): the run's id.
    fn submit(&self, extra: &[&str], command: &[&str]) -> String {
        let mut args = vec![
            "submit",
            "--project",
            &self.project,
            "--image",
            image(),
            "--json",
        ];
        args.extend_from_slice(extra);
        args.push("--");
        args.extend_from_slice(command);
        let o = self.cli(&args);
        assert!(o.status.success(), "submit: {}", text(&o.stderr));
        let run: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(run["state"], "queued");
        run["id"].as_str().unwrap().to_string()
    }

    /// The run as the API shows it.
    fn run(&self, id: &str) -> Value {
        let (status, body) = self.http(
            "GET",
            &format!("/api/v1/runs/{id}"),
            Some(&self.client),
            None,
            &[],
        );
        assert_eq!(status, 200, "GET run {id}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    fn wait_state(&self, id: &str, limit: Duration, pred: impl Fn(&str) -> bool) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let run = self.run(id);
            if pred(run["state"].as_str().unwrap_or_default()) {
                return run;
            }
            assert!(
                Instant::now() < deadline,
                "run {id} still {} after {limit:?}: {run}\n{}",
                run["state"],
                self.all_log_tails()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_final(&self, id: &str, limit: Duration) -> Value {
        self.wait_state(id, limit, |s| {
            [
                "succeeded",
                "failed",
                "timed_out",
                "cancelled",
                "lost",
                "error",
            ]
            .contains(&s)
        })
    }

    /// The run's events over SSE (not following), optionally resuming after `last_event_id`.
    fn events(&self, id: &str, last_event_id: Option<i64>) -> Vec<Sse> {
        let header = last_event_id.map(|n| format!("Last-Event-ID: {n}"));
        let headers: Vec<&str> = header.iter().map(String::as_str).collect();
        let (status, body) = self.http(
            "GET",
            &format!("/api/v1/runs/{id}/events"),
            Some(&self.client),
            None,
            &headers,
        );
        assert_eq!(status, 200, "events of {id}: {body}");
        parse_sse(&body)
    }

    /// `berth show RUN --json` with the server: {"run": ..., "audit": [...]}.
    fn show(&self, id: &str) -> Value {
        let o = self.cli(&["show", id, "--json"]);
        assert!(o.status.success(), "show: {}", text(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    fn audit_states(show: &Value) -> Vec<(Option<String>, String)> {
        show["audit"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["from_state"].as_str().map(str::to_string),
                    a["to_state"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    fn log_tail(&self, what: &str) -> String {
        let path = self.path().join("logs").join(format!("{what}.log"));
        let all = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = all.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn all_log_tails(&self) -> String {
        let mut out = String::new();
        for path in &self.logs {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            out.push_str(&format!(
                "--- {name} ({:?})\n{}\n",
                self.db,
                self.log_tail(&name)
            ));
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for r in &mut self.runners {
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
        self.kill_server();
        for peer in &mut self.peers {
            let _ = peer.kill();
            let _ = peer.wait();
        }
        for name in &self.names {
            for id in containers_of_runner(name) {
                force_remove(&id);
            }
        }
        if std::thread::panicking() {
            let _ = writeln!(std::io::stderr(), "{}", self.all_log_tails());
        }
    }
}

/// The address in a server's `listening on http://ADDRESS` (or `https://ADDRESS`) line (a whole
/// line only: the address must not be cut mid-write).
fn listening_address(log: &str) -> Option<String> {
    let (line, _) = log
        .split_once("listening on http")
        .and_then(|(_, rest)| rest.split_once("://"))
        .and_then(|(_, rest)| rest.split_once('\n'))?;
    Some(
        line.split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string(),
    )
}

// Issue 14.1: TLS. A server with a certificate from a private CA; the CLI and a runner trust it
// through --ca (or BERTH_CA); a client without it is told what is wrong with the certificate;
// SIGHUP swaps the certificate for new connections and refuses a pair that does not fit; plain
// HTTP to another host is refused before any connection unless --insecure-http says otherwise.

#[test]
fn sqlite_https_with_a_private_ca_end_to_end() {
    // The admin's project and tokens were made over HTTPS with --ca already.
    let mut c = Cluster::start_tls(Db::Sqlite);
    assert!(c.url.starts_with("https://"), "{}", c.url);
    c.runner("tls", &[]);
    let project = c.project.clone();
    let o = c.cli(&[
        "submit",
        "--project",
        &project,
        "--image",
        image(),
        "--follow",
        "--",
        "echo",
        "over-tls",
    ]);
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}\n{}",
        text(&o.stdout),
        text(&o.stderr),
        c.all_log_tails()
    );
    assert!(text(&o.stdout).contains("over-tls"), "{}", text(&o.stdout));

    let ca = c.tls.as_ref().unwrap().ca_file();
    let runners = |ca: Option<&str>| {
        let mut cmd = c.berth(&["runners", "--server", &c.url, "--token", &c.client]);
        if let Some(ca) = ca {
            cmd.env("BERTH_CA", ca);
        }
        output_within(&mut cmd, Duration::from_secs(60))
    };
    let o = runners(Some(&ca));
    assert!(o.status.success(), "BERTH_CA: {}", text(&o.stderr));
    // Without the CA: the certificate problem is named, with what to do about it.
    let o = runners(None);
    let err = text(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("certificate was not accepted") && err.contains("UnknownIssuer"),
        "{err}"
    );
    assert!(err.contains("hint:") && err.contains("--ca FILE"), "{err}");
    // A runner without it stops at once, saying the same: waiting would not help.
    let o = output_within(&mut c.runner_command("no-ca", &[]), Duration::from_secs(60));
    let err = text(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("UnknownIssuer") && err.contains("--ca FILE"),
        "{err}"
    );
}

// Issue 14.1, optional part: mutual TLS for runners. With --tls-client-ca, a runner token is
// taken only from a client whose certificate chains to that CA; clients (the admin's setup, a
// submission) need none.
#[test]
fn sqlite_mutual_tls_runners_need_a_client_certificate() {
    let mut c = Cluster::start_full(
        Db::Sqlite,
        LEASE,
        HEARTBEAT,
        Transport::HttpsVerifyingRunners,
    );
    let pki = c.tls.as_ref().unwrap();
    let (cert, key) = pki.issue_client("runner-1", pki.clients.as_ref().unwrap());
    // A certificate from a CA the server does not take for clients (its own server CA).
    let (wrong_cert, wrong_key) = pki.issue_client("intruder", &pki.ca);
    let ca = pki.ca_file();
    let lone_runner = |name: &str, identity: Option<(&str, &str)>| {
        let mut cmd = c.runner_command(name, &["--ca", &ca]);
        if let Some((cert, key)) = identity {
            cmd.args(["--tls-client-cert", cert, "--tls-client-key", key]);
        }
        output_within(&mut cmd, Duration::from_secs(60))
    };
    // The runner token alone (a stolen one, say) is refused, saying what is missing.
    let o = lone_runner("no-cert", None);
    let err = text(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("client certificate") && err.contains("--tls-client-cert"),
        "{err}"
    );
    // A certificate the server's client CA did not sign fails the handshake, named as such.
    let o = lone_runner("wrong-ca", Some((&wrong_cert, &wrong_key)));
    let err = text(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("did not accept this client's certificate") && err.contains("--tls-client-ca"),
        "{err}"
    );
    // Neither registered.
    let (status, body) = c.http("GET", "/api/v1/runners", Some(&c.client), None, &[]);
    assert_eq!(status, 200, "{body}");
    assert!(
        !body.contains("no-cert") && !body.contains("wrong-ca"),
        "{body}"
    );

    // With its certificate, the runner works; the client submitting has none.
    c.runner(
        "mtls",
        &["--tls-client-cert", &cert, "--tls-client-key", &key],
    );
    let project = c.project.clone();
    let o = c.cli(&[
        "submit",
        "--project",
        &project,
        "--image",
        image(),
        "--follow",
        "--",
        "echo",
        "mutual-tls",
    ]);
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}\n{}",
        text(&o.stdout),
        text(&o.stderr),
        c.all_log_tails()
    );
    assert!(
        text(&o.stdout).contains("mutual-tls"),
        "{}",
        text(&o.stdout)
    );
    // A client token works with a client certificate too (it is simply not needed).
    let o = c.cli(&[
        "runners",
        "--tls-client-cert",
        &cert,
        "--tls-client-key",
        &key,
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
}

/// The subject of the certificate a new TLS connection to `url` is shown.
fn served_subject(url: &str, ca: &str) -> String {
    let address = url.trim_start_matches("https://");
    let o = Command::new("sh")
        .args([
            "-c",
            &format!(
                "openssl s_client -connect {address} -servername localhost -CAfile {ca} \
                 </dev/null 2>/dev/null | openssl x509 -noout -subject"
            ),
        ])
        .output()
        .unwrap();
    text(&o.stdout).trim().to_string()
}

#[test]
fn sqlite_sighup_reloads_the_certificate_and_refuses_a_bad_pair() {
    let c = Cluster::start_tls(Db::Sqlite);
    let pki = c.tls.as_ref().unwrap();
    let ca = pki.ca_file();
    let pid = c.server.as_ref().unwrap().id().to_string();
    let hup = || {
        let status = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
        assert!(status.success());
    };
    assert!(
        served_subject(&c.url, &ca).contains("first"),
        "{}",
        c.log_tail("server")
    );

    // A new pair: new connections see it, and clients with the CA go on working.
    pki.issue("renewed");
    hup();
    poll(
        Duration::from_secs(20),
        "the renewed certificate served",
        || {
            served_subject(&c.url, &ca)
                .contains("renewed")
                .then_some(())
        },
    );
    let o = c.cli(&["runners"]);
    assert!(o.status.success(), "{}", text(&o.stderr));

    // A certificate with another certificate's key: refused with a log line, the renewed pair
    // keeps serving.
    let (_, other_key) = pki.issue("mismatched");
    pki.issue("never-served");
    std::fs::write(pki.key(), other_key).unwrap();
    hup();
    poll(Duration::from_secs(20), "the refusal logged", || {
        let log = c.log_tail("server");
        (log.contains("were refused") && log.contains("does not belong to the certificate"))
            .then_some(())
    });
    let subject = served_subject(&c.url, &ca);
    assert!(
        subject.contains("renewed"),
        "{subject}\n{}",
        c.log_tail("server")
    );
    let o = c.cli(&["runners"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
}

/// An address of this machine that is not loopback (the source address of its default route).
fn non_loopback_address() -> std::net::IpAddr {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    socket.connect("192.0.2.1:9").unwrap();
    let ip = socket.local_addr().unwrap().ip();
    assert!(!ip.is_loopback() && !ip.is_unspecified(), "{ip}");
    ip
}

#[test]
fn plain_http_to_another_host_needs_insecure_http() {
    // A stand-in server on a non-loopback address of this machine, counting connections and
    // answering every request with an empty list.
    let listener = TcpListener::bind((non_loopback_address(), 0)).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicU64::new(0));
    let counted = connections.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            counted.fetch_add(1, Ordering::SeqCst);
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let _ = conn.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n[]",
            );
        }
    });
    let runners = |server: &str, flag: bool, env: bool| {
        let mut cmd = Command::new(berth_bin());
        cmd.args(["runners", "--server", server, "--token", "berth_x_0"])
            .env_remove("BERTH_SERVER")
            .env_remove("BERTH_TOKEN")
            .env_remove("BERTH_INSECURE_HTTP")
            .env("NO_COLOR", "1");
        if flag {
            cmd.arg("--insecure-http");
        }
        if env {
            cmd.env("BERTH_INSECURE_HTTP", "1");
        }
        output_within(&mut cmd, Duration::from_secs(60))
    };
    // Refused before any connection is attempted, to the documentation address too.
    for server in ["http://192.0.2.1:1", url.as_str()] {
        let o = runners(server, false, false);
        let err = text(&o.stderr);
        assert!(!o.status.success(), "{err}");
        assert!(err.contains("error: refusing plain HTTP to "), "{err}");
        assert!(
            err.contains("hint:") && err.contains("--tls-cert") && err.contains("--insecure-http"),
            "{err}"
        );
    }
    assert_eq!(connections.load(Ordering::SeqCst), 0);
    // Allowed by the flag or the variable, with a warning every time.
    for (flag, env) in [(true, false), (false, true), (true, false)] {
        let o = runners(&url, flag, env);
        let err = text(&o.stderr);
        assert!(o.status.success(), "{err}");
        assert!(
            err.contains("warning: plain HTTP to ") && err.contains("in clear"),
            "{err}"
        );
    }
    assert_eq!(connections.load(Ordering::SeqCst), 3);
    // Loopback stays plain and silent.
    let o = runners("http://127.0.0.1:1", false, false);
    let err = text(&o.stderr);
    assert!(
        err.contains("cannot reach") && !err.contains("warning"),
        "{err}"
    );
}

// Issue 17.4: two servers on one PostgreSQL database. A runner long-polling one server is woken
// by a run submitted through the other at once (not when its 20 s poll ends), and a cancel
// through the other server reaches it at once (not when its held heartbeat ends).

/// `lease_expires_at` of a run, read from the database (the API does not show it).
fn lease_expiry(db_url: &str, id: &str) -> i64 {
    let o = Command::new("psql")
        .args([
            db_url,
            "-Atc",
            &format!("SELECT lease_expires_at FROM runs WHERE id = '{id}'"),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "psql: {}", text(&o.stderr));
    text(&o.stdout).trim().parse().unwrap_or(0)
}

fn millis(rfc3339: &Value) -> i64 {
    let t = time::OffsetDateTime::parse(
        rfc3339.as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

#[test]
fn postgres_wake_ups_cross_servers() {
    // A heartbeat of 20 s (as long as a claim's poll): without shared wake-ups, a cancel through
    // the other server waits for the held heartbeat to end.
    let mut c = Cluster::start_with(Db::Postgres, "60s", "20s");
    let s2 = c.start_peer_server();
    let name = unique("cross");
    c.spawn_runner_to(&s2, &name, &[], &[]);
    c.wait_runner_online(&name);

    // Submit through S1; the runner waits on S2. Each run is submitted a second after the
    // runner's poll began, so without the wake-up each would wait about 19 s.
    let mut waits = Vec::new();
    for i in 0..5 {
        std::thread::sleep(Duration::from_secs(1));
        let id = c.submit(&[], &["echo", &format!("cross-{i}")]);
        let run = c.wait_final(&id, Duration::from_secs(60));
        assert_eq!(run["state"], "succeeded", "{run}");
        assert_eq!(run["runner_id"], name.as_str());
        waits.push(millis(&run["claimed_at"]) - millis(&run["created_at"]));
    }
    waits.sort_unstable();
    println!("submitted through S1 -> claimed through S2 (ms): {waits:?}");
    assert!(
        waits.iter().all(|&w| w < 3000),
        "claims waited for the poll: {waits:?} ms\n{}",
        c.all_log_tails()
    );

    // Cancel through S1 just after the runner's heartbeat reached S2 (its lease was renewed):
    // S2 holds that heartbeat for up to 20 s unless woken.
    let id = c.submit(&[], &["sleep", "300"]);
    c.wait_state(&id, Duration::from_secs(60), |s| s == "running");
    let db_url = c.db_url.clone().unwrap();
    let started = lease_expiry(&db_url, &id);
    poll(
        Duration::from_secs(45),
        "a heartbeat renewing the lease",
        || (lease_expiry(&db_url, &id) != started).then_some(()),
    );
    assert_eq!(containers_of_run(&id).len(), 1);
    let sent = Instant::now();
    let (status, body) = c.http(
        "POST",
        &format!("/api/v1/runs/{id}/cancel"),
        Some(&c.client),
        None,
        &[],
    );
    assert_eq!(status, 200, "{body}");
    poll(
        Duration::from_secs(30),
        "the cancelled run's container gone",
        || containers_of_run(&id).is_empty().then_some(()),
    );
    let gone = sent.elapsed();
    println!("cancel through S1 -> container gone on S2's runner: {gone:?}");
    assert!(
        gone < Duration::from_secs(5),
        "{gone:?}\n{}",
        c.all_log_tails()
    );
    let run = c.wait_final(&id, Duration::from_secs(30));
    assert_eq!(run["state"], "cancelled", "{run}");
}

fn terminal(state: &str) -> bool {
    [
        "succeeded",
        "failed",
        "timed_out",
        "cancelled",
        "lost",
        "error",
    ]
    .contains(&state)
}

// 1. submit → run → logs over SSE → artifacts → audit.
fn submit_logs_events_artifacts_and_audit(db: Db) {
    let mut c = Cluster::start(db);
    let runner = c.runner("one", &[]);

    let project = c.project.clone();
    let o = c.cli(&[
        "submit",
        "--project",
        &project,
        "--image",
        image(),
        "--follow",
        "--",
        "sh",
        "-c",
        "echo hello; echo out > $BERTH_OUT/r.txt; exit 3",
    ]);
    assert_eq!(
        o.status.code(),
        Some(3),
        "stdout: {}\nstderr: {}\n{}",
        text(&o.stdout),
        text(&o.stderr),
        c.all_log_tails()
    );
    assert_eq!(text(&o.stdout), "hello\n");
    let stderr = text(&o.stderr);
    let id = stderr
        .split_whitespace()
        .skip_while(|w| *w != "run")
        .nth(1)
        .unwrap_or_else(|| panic!("no run id in: {stderr}"))
        .to_string();
    assert!(stderr.contains("failed"), "{stderr}");

    // `berth logs` prints it again.
    let o = c.cli(&["logs", &id]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "hello\n");
    let o = c.cli(&["logs", &id, "-f"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "hello\n");

    // SSE: ids are the sequence numbers; `end` closes the stream.
    let events = c.events(&id, None);
    let last = events.last().unwrap();
    assert_eq!(last.kind, "end", "{events:?}");
    let numbered: Vec<&Sse> = events.iter().filter(|e| e.kind != "end").collect();
    assert!(numbered.iter().all(|e| e.id.is_some()), "{events:?}");
    let ids: Vec<i64> = numbered.iter().map(|e| e.id.unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let hello = numbered
        .iter()
        .find(|e| e.kind == "stdout")
        .unwrap_or_else(|| panic!("no stdout event: {events:?}"));
    assert_eq!(hello.payload(), "hello\n");
    for kind in ["started", "exited", "state"] {
        assert!(
            numbered.iter().any(|e| e.kind == kind),
            "no {kind}: {events:?}"
        );
    }
    let hello_seq = hello.id.unwrap();
    let resumed = c.events(&id, Some(hello_seq));
    let resumed_ids: Vec<i64> = resumed.iter().filter_map(|e| e.id).collect();
    assert_eq!(
        resumed_ids,
        ids.iter()
            .copied()
            .filter(|i| *i > hello_seq)
            .collect::<Vec<_>>(),
        "resuming after {hello_seq}"
    );
    assert!(!resumed.iter().any(|e| e.kind == "stdout"), "{resumed:?}");
    assert_eq!(resumed.last().unwrap().kind, "end");

    // Artifacts.
    let (status, body) = c.http(
        "GET",
        &format!("/api/v1/runs/{id}/artifacts"),
        Some(&c.client),
        None,
        &[],
    );
    assert_eq!(status, 200, "{body}");
    let list: Value = serde_json::from_str(&body).unwrap();
    let paths: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["berth/out/r.txt"], "{body}");
    let (status, body) = c.http(
        "GET",
        &format!("/api/v1/runs/{id}/artifacts/berth/out/r.txt"),
        Some(&c.client),
        None,
        &[],
    );
    assert_eq!((status, body.as_str()), (200, "out\n"));

    // Audit.
    let show = c.show(&id);
    assert_eq!(show["run"]["state"], "failed");
    assert_eq!(show["run"]["exit_code"], 3);
    assert_eq!(show["run"]["runner_id"].as_str(), Some(runner.as_str()));
    let container = show["run"]["container_id"].as_str().unwrap().to_string();
    assert!(container.len() >= 12, "{show}");
    assert_eq!(
        Cluster::audit_states(&show),
        [
            (None, "queued".to_string()),
            (Some("queued".into()), "claimed".into()),
            (Some("claimed".into()), "running".into()),
            (Some("running".into()), "failed".into()),
        ],
        "{show}"
    );
    let audit = show["audit"].as_array().unwrap();
    assert!(
        audit[0]["actor"].as_str().unwrap().starts_with("token:"),
        "{show}"
    );
    let runner_actor = format!("runner:{runner}");
    for entry in &audit[1..] {
        assert_eq!(
            entry["actor"].as_str(),
            Some(runner_actor.as_str()),
            "{show}"
        );
    }
    let last = audit.last().unwrap();
    assert_eq!(last["exit_code"], 3, "{show}");
    assert_eq!(last["container_id"].as_str(), Some(container.as_str()));
    assert!(containers_of_run(&id).is_empty());
}

// 2. Two runners, 50 runs: each run executed exactly once.
fn fifty_runs_on_two_runners_each_run_exactly_once(db: Db) {
    let mut c = Cluster::start(db);
    let a = c.runner("a", &["--capacity", "2"]);
    let b = c.runner("b", &["--capacity", "2"]);
    let started = Instant::now();
    let ids: Vec<String> = (0..50)
        .map(|n| c.submit(&[], &["echo", &format!("run {n}")]))
        .collect();
    let mut by_runner: HashMap<String, usize> = HashMap::new();
    for (n, id) in ids.iter().enumerate() {
        let run = c.wait_final(id, Duration::from_secs(120));
        assert_eq!(run["state"], "succeeded", "{run}");
        *by_runner
            .entry(run["runner_id"].as_str().unwrap().to_string())
            .or_default() += 1;
        let events = c.events(id, None);
        let started_events = events.iter().filter(|e| e.kind == "started").count();
        assert_eq!(started_events, 1, "run {id}: {events:?}");
        let output: Vec<String> = events
            .iter()
            .filter(|e| e.kind == "stdout")
            .map(Sse::payload)
            .collect();
        assert_eq!(output, [format!("run {n}\n")], "run {id}");
        let show = c.show(id);
        let states = Cluster::audit_states(&show);
        for to in ["claimed", "running"] {
            assert_eq!(
                states.iter().filter(|(_, t)| t == to).count(),
                1,
                "run {id}: {states:?}"
            );
        }
        assert_eq!(states.last().unwrap().1, "succeeded");
    }
    let elapsed = started.elapsed();
    println!("{db:?}: 50 runs in {elapsed:?}, by runner {by_runner:?}");
    assert_eq!(by_runner.values().sum::<usize>(), 50);
    assert!(
        by_runner.get(&a).copied().unwrap_or(0) >= 1
            && by_runner.get(&b).copied().unwrap_or(0) >= 1,
        "both runners should have worked: {by_runner:?}"
    );
    // Both runners' containers are gone.
    assert!(containers_of_runner(&a).is_empty());
    assert!(containers_of_runner(&b).is_empty());
}

// 3. Tag routing.
fn tags_route_runs(db: Db) {
    let mut c = Cluster::start(db);
    let a = c.runner("gpu", &["--tags", "gpu,linux", "--capacity", "2"]);
    let b = c.runner("plain", &["--capacity", "2"]);
    let cc = c.runner(
        "strict",
        &[
            "--tags",
            "linux",
            "--require-matching-tags",
            "--capacity",
            "2",
        ],
    );

    let gpu: Vec<String> = (0..3)
        .map(|_| c.submit(&["--tags", "gpu"], &["true"]))
        .collect();
    let untagged: Vec<String> = (0..6).map(|_| c.submit(&[], &["true"])).collect();
    let linux: Vec<String> = (0..6)
        .map(|_| c.submit(&["--tags", "linux"], &["true"]))
        .collect();
    let runner_of = |id: &String| {
        let run = c.wait_final(id, Duration::from_secs(60));
        assert_eq!(run["state"], "succeeded", "{run}");
        run["runner_id"].as_str().unwrap().to_string()
    };
    for id in &gpu {
        assert_eq!(runner_of(id), a, "a gpu run goes to the gpu runner");
    }
    let mut seen = BTreeMap::new();
    for id in &untagged {
        let r = runner_of(id);
        assert_ne!(r, cc, "an untagged run went to the runner requiring tags");
        *seen.entry(r).or_insert(0) += 1;
    }
    for id in &linux {
        let r = runner_of(id);
        assert_ne!(r, b, "a linux run went to the runner without tags");
        assert!(r == a || r == cc, "{r}");
        *seen.entry(r).or_insert(0) += 1;
    }
    println!("{db:?}: routing {seen:?}");
}

// 4. Cancel while queued, and while running with a command that ignores SIGTERM.
fn cancel_while_queued_and_while_running(db: Db) {
    let mut c = Cluster::start(db);
    // No runner: the run stays queued, and a cancel ends it at once.
    let queued = c.submit(&[], &["sleep", "60"]);
    let o = c.cli(&["cancel", &queued, "--json"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let run: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(run["state"], "cancelled", "{run}");
    let show = c.show(&queued);
    assert_eq!(
        Cluster::audit_states(&show),
        [
            (None, "queued".to_string()),
            (Some("queued".into()), "cancelled".into())
        ],
        "{show}"
    );

    // Now a runner: it must not pick up the cancelled run.
    c.runner("canceller", &[]);
    let id = c.submit(
        &["--grace", "1s"],
        &["sh", "-c", "trap '' TERM; echo ready; sleep 60"],
    );
    c.wait_state(&id, Duration::from_secs(30), |s| s == "running");
    poll(Duration::from_secs(10), "the command printed ready", || {
        c.events(&id, None)
            .iter()
            .any(|e| e.kind == "stdout" && e.payload() == "ready\n")
            .then_some(())
    });
    assert_eq!(containers_of_run(&id).len(), 1);
    let asked = Instant::now();
    let (status, body) = c.http(
        "POST",
        &format!("/api/v1/runs/{id}/cancel"),
        Some(&c.client),
        Some("{}"),
        &[],
    );
    assert_eq!(status, 200, "{body}");
    let ended = poll(
        Duration::from_secs(10),
        "the cancelled run ends and its container goes",
        || {
            let run = c.run(&id);
            (terminal(run["state"].as_str().unwrap()) && containers_of_run(&id).is_empty())
                .then_some(run)
        },
    );
    let took = asked.elapsed();
    println!("{db:?}: cancel of a running run took {took:?}");
    assert_eq!(ended["state"], "cancelled", "{ended}");
    assert!(
        took < Duration::from_secs(2),
        "the cancel took {took:?} (grace 1s)"
    );
    assert!(
        took >= Duration::from_millis(900),
        "the grace was skipped: {took:?}"
    );
    let show = c.show(&id);
    let states = Cluster::audit_states(&show);
    assert_eq!(
        states.last().unwrap(),
        &(Some("running".into()), "cancelled".into())
    );
    let events = c.events(&id, None);
    let signals: Vec<String> = events
        .iter()
        .filter(|e| e.kind == "signal")
        .map(|e| e.payload())
        .collect();
    assert!(signals.len() >= 2, "SIGTERM then SIGKILL: {events:?}");

    // The cancelled queued run never ran anywhere.
    assert!(containers_of_run(&queued).is_empty());
    let events = c.events(&queued, None);
    assert!(
        !events
            .iter()
            .any(|e| ["started", "container_created"].contains(&e.kind.as_str())),
        "{events:?}"
    );
    assert_eq!(c.run(&queued)["state"], "cancelled");
    assert!(c.run(&queued)["runner_id"].is_null());
}

// 5. kill -9 of a runner mid-run: lost after the lease; a restart reconciles its container.
fn runner_killed_mid_run_is_lost_and_reconciled(db: Db) {
    let mut c = Cluster::start(db);
    let name = c.runner("doomed", &[]);
    let id = c.submit(&[], &["sleep", "60"]);
    c.wait_state(&id, Duration::from_secs(30), |s| s == "running");
    assert_eq!(containers_of_runner(&name).len(), 1);

    c.kill_runner(&name);
    let killed = Instant::now();
    let run = c.wait_state(&id, Duration::from_secs(15), terminal);
    let took = killed.elapsed();
    println!("{db:?}: lost {took:?} after kill -9");
    assert_eq!(run["state"], "lost", "{run}");
    let reason = run["reason"].as_str().unwrap();
    assert!(reason.contains(&name), "{reason}");
    assert!(
        took >= Duration::from_millis(2000) && took < Duration::from_secs(8),
        "lost after {took:?} with a lease of {LEASE}"
    );
    let show = c.show(&id);
    let last = show["audit"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["to_state"], "lost");
    assert_eq!(last["actor"], "server");
    // The container is still there: nobody could stop it.
    assert_eq!(containers_of_runner(&name).len(), 1);

    // Restarted with the same name, the runner removes what its predecessor left.
    c.spawn_runner(&name, &[], &[]);
    poll(
        Duration::from_secs(15),
        "the restarted runner removes the left container",
        || containers_of_runner(&name).is_empty().then_some(()),
    );
    c.wait_runner_online(&name);
    // The record stays as the server decided.
    let run = c.run(&id);
    assert_eq!(run["state"], "lost");
    // And the restarted runner works.
    let next = c.submit(&[], &["true"]);
    let run = c.wait_final(&next, Duration::from_secs(30));
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(run["runner_id"].as_str(), Some(name.as_str()));
}

// 6. kill -9 of the server mid-run: the run finishes and no output line is lost or repeated.
fn server_killed_mid_run_loses_no_event(db: Db) {
    let mut c = Cluster::start(db);
    c.runner("steady", &[]);
    let id = c.submit(
        &[],
        &[
            "sh",
            "-c",
            "for i in $(seq 1 30); do echo line $i; sleep 0.1; done",
        ],
    );
    c.wait_state(&id, Duration::from_secs(30), |s| s == "running");
    poll(Duration::from_secs(10), "some output", || {
        c.events(&id, None)
            .iter()
            .any(|e| e.kind == "stdout")
            .then_some(())
    });
    c.kill_server();
    std::thread::sleep(Duration::from_millis(1000));
    c.start_server();
    let run = c.wait_final(&id, Duration::from_secs(30));
    assert_eq!(run["state"], "succeeded", "{run}\n{}", c.all_log_tails());
    let events = c.events(&id, None);
    let lines: Vec<String> = events
        .iter()
        .filter(|e| e.kind == "stdout")
        .map(Sse::payload)
        .collect();
    let expected: Vec<String> = (1..=30).map(|i| format!("line {i}\n")).collect();
    assert_eq!(lines, expected, "{events:?}\n{}", c.all_log_tails());
    assert_eq!(events.iter().filter(|e| e.kind == "started").count(), 1);
    let ids: Vec<i64> = events.iter().filter_map(|e| e.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
}

// 7. The engine goes away mid-run: the run ends `error`, saying so.
fn engine_going_away_mid_run_is_an_error(db: Db) {
    let mut c = Cluster::start(db);
    let socket = c.path().join("proxy.sock");
    let mut proxy = DockerProxy::start(&socket);
    let name = c.runner_with_env(
        "proxied",
        &[],
        &[("DOCKER_HOST", format!("unix://{}", socket.display()))],
    );
    let id = c.submit(&[], &["sleep", "30"]);
    c.wait_state(&id, Duration::from_secs(30), |s| s == "running");
    std::thread::sleep(Duration::from_millis(300));
    let cut = Instant::now();
    proxy.shut_down();
    let run = c.wait_state(&id, Duration::from_secs(15), terminal);
    let took = cut.elapsed();
    println!(
        "{db:?}: ended {took:?} after the engine went away: {}",
        run["reason"]
    );
    assert_eq!(run["state"], "error", "{run}");
    let reason = run["reason"].as_str().unwrap().to_lowercase();
    assert!(
        ["engine", "connection"].iter().any(|w| reason.contains(w)),
        "{reason}"
    );
    let show = c.show(&id);
    let last = show["audit"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["to_state"], "error");
    assert_eq!(
        last["actor"].as_str(),
        Some(format!("runner:{name}").as_str())
    );
    // The container was out of berth's reach: it is still there, and removed here.
    for container in containers_of_run(&id) {
        force_remove(&container);
    }
}

// 8. Authentication and roles through the real server.
fn auth_is_enforced_end_to_end(db: Db) {
    let c = Cluster::start(db);
    let register = r#"{"name":"intruder","tags":[],"require_matching_tags":false,"capacity":1}"#;
    let (status, body) = c.http(
        "POST",
        "/api/v1/runners/register",
        Some(&c.client),
        Some(register),
        &[],
    );
    assert_eq!(status, 403, "client token registering a runner: {body}");
    let (status, _) = c.http(
        "POST",
        "/api/v1/runners/register",
        Some(&c.runner_token),
        Some(register),
        &[],
    );
    assert_eq!(status, 200, "a runner token may register");

    let submit = serde_json::json!({
        "project": c.project,
        "sandbox": { "image": image(), "command": ["true"] },
    })
    .to_string();
    let (status, body) = c.http(
        "POST",
        "/api/v1/runs",
        Some(&c.runner_token),
        Some(&submit),
        &[],
    );
    assert_eq!(status, 403, "runner token submitting: {body}");
    let (status, body) = c.http("POST", "/api/v1/runs", None, Some(&submit), &[]);
    assert_eq!(status, 401, "no token: {body}");
    let (status, body) = c.http("GET", "/api/v1/runs", None, None, &[]);
    assert_eq!(status, 401, "no token: {body}");
    let (status, body) = c.http("GET", "/api/v1/runs", Some("not-a-token"), None, &[]);
    assert_eq!(status, 401, "a made-up token: {body}");
    let (status, body) = c.http("GET", "/api/v1/tokens", Some(&c.client), None, &[]);
    assert_eq!(status, 403, "client listing tokens: {body}");

    let (id, secret) = c.create_token("client");
    let (status, body) = c.http("POST", "/api/v1/runs", Some(&secret), Some(&submit), &[]);
    assert_eq!(status, 201, "a fresh client token submits: {body}");
    let o = c.admin_cli(&["token", "revoke", &id]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let (status, body) = c.http("GET", "/api/v1/runs", Some(&secret), None, &[]);
    assert_eq!(status, 401, "a revoked token: {body}");
    let (status, body) = c.http("POST", "/api/v1/runs", Some(&secret), Some(&submit), &[]);
    assert_eq!(status, 401, "a revoked token: {body}");
    // Through the CLI too: a clear error, exit 125-style failure.
    let o = c.cli_as(&secret, &["ls", "--json"]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("401") || text(&o.stderr).to_lowercase().contains("token"),
        "{}",
        text(&o.stderr)
    );
    // Every other token still works.
    let (status, _) = c.http("GET", "/api/v1/runs", Some(&c.client), None, &[]);
    assert_eq!(status, 200);
}

/// A TCP proxy in front of the server that, once armed, forwards one matching request and then
/// drops its response (closing the connection): the request took effect, the sender cannot know.
struct LossyProxy {
    port: u16,
    armed: Arc<Mutex<Option<String>>>,
    stop: Arc<AtomicBool>,
}

impl LossyProxy {
    fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed = Arc::new(Mutex::new(None::<String>));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let armed = armed.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let Ok((client, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    client.set_nonblocking(false).unwrap();
                    let Ok(server) = std::net::TcpStream::connect(&upstream) else {
                        continue;
                    };
                    let drop_response = Arc::new(AtomicBool::new(false));
                    let (mut c_in, mut s_out) =
                        (client.try_clone().unwrap(), server.try_clone().unwrap());
                    let (armed, flag) = (armed.clone(), drop_response.clone());
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 65536];
                        loop {
                            let n = match c_in.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            let head = String::from_utf8_lossy(&buf[..n.min(512)]).into_owned();
                            let mut armed = armed.lock().unwrap();
                            if let Some(target) = armed.as_deref() {
                                if head.starts_with("POST ")
                                    && head.lines().next().is_some_and(|l| l.contains(target))
                                {
                                    flag.store(true, Ordering::SeqCst);
                                    *armed = None;
                                }
                            }
                            drop(armed);
                            if s_out.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = s_out.shutdown(std::net::Shutdown::Write);
                    });
                    let (mut s_in, mut c_out) = (server, client);
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 65536];
                        loop {
                            let n = match s_in.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if drop_response.load(Ordering::SeqCst) {
                                break;
                            }
                            if c_out.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = c_out.shutdown(std::net::Shutdown::Both);
                        let _ = s_in.shutdown(std::net::Shutdown::Both);
                    });
                }
            });
        }
        Self { port, armed, stop }
    }

    /// The next POST whose request line contains `target` takes effect, but its answer is lost.
    fn arm(&self, target: &str) {
        *self.armed.lock().unwrap() = Some(target.to_string());
    }

    fn fired(&self) -> bool {
        self.armed.lock().unwrap().is_none()
    }
}

impl Drop for LossyProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

// A request that took effect but whose answer was lost (a network blip, a server killed right
// after committing) is retried by the runner; the retry must not change the outcome.
fn lost_answers_do_not_change_outcomes(db: Db) {
    for target in ["/claim", "/start", "/finish"] {
        let mut c = Cluster::start(db);
        let proxy = LossyProxy::start(c.listen.clone());
        // The runner's first claim is sent as it starts: arm before.
        if target == "/claim" {
            proxy.arm(target);
        }
        let real = c.url.clone();
        c.url = format!("http://127.0.0.1:{}", proxy.port);
        let name = unique("lossy");
        c.spawn_runner(&name, &[], &[]);
        c.url = real;
        c.wait_runner_online(&name);
        proxy.arm(target);
        let id = c.submit(&[], &["sh", "-c", "echo one; sleep 0.2; echo two"]);
        let run = c.wait_final(&id, Duration::from_secs(30));
        assert!(proxy.fired(), "{target}: the proxy never saw the request");
        assert_eq!(
            run["state"],
            "succeeded",
            "answer to {target} lost: {run}\n{}",
            c.all_log_tails()
        );
        let events = c.events(&id, None);
        let lines: Vec<String> = events
            .iter()
            .filter(|e| e.kind == "stdout")
            .map(Sse::payload)
            .collect();
        assert_eq!(lines, ["one\n", "two\n"], "answer to {target} lost");
        let states = Cluster::audit_states(&c.show(&id));
        println!("{db:?}: answer to {target} lost: {states:?}");
        assert_eq!(
            states.iter().filter(|(_, t)| t == "running").count(),
            1,
            "{states:?}"
        );
        assert_eq!(states.last().unwrap().1, "succeeded");
    }
}

// A batch whose answer was lost is resent; its numbers let the server store it once.
fn lost_answer_to_events_stores_output_once(db: Db) {
    let mut c = Cluster::start(db);
    let proxy = LossyProxy::start(c.listen.clone());
    let real = c.url.clone();
    c.url = format!("http://127.0.0.1:{}", proxy.port);
    let name = unique("lossy");
    c.spawn_runner(&name, &[], &[]);
    c.url = real;
    c.wait_runner_online(&name);
    let id = c.submit(
        &[],
        &[
            "sh",
            "-c",
            "echo one; sleep 1; echo two; sleep 1; echo three",
        ],
    );
    c.wait_state(&id, Duration::from_secs(30), |s| s == "running");
    poll(Duration::from_secs(10), "the first line", || {
        c.events(&id, None)
            .iter()
            .any(|e| e.kind == "stdout")
            .then_some(())
    });
    proxy.arm("/events");
    let run = c.wait_final(&id, Duration::from_secs(30));
    assert!(proxy.fired());
    assert_eq!(run["state"], "succeeded", "{run}");
    let events = c.events(&id, None);
    let lines: Vec<String> = events
        .iter()
        .filter(|e| e.kind == "stdout")
        .map(Sse::payload)
        .collect();
    assert_eq!(lines, ["one\n", "two\n", "three\n"]);
}

#[test]
fn sqlite_lost_answer_to_events_stores_output_once() {
    lost_answer_to_events_stores_output_once(Db::Sqlite);
}

/// Pool and persistent containers of one runner, by kind.
fn held_of_runner(name: &str, kind: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label=berth.runner-id={name}"),
            "--filter",
            &format!("label=berth.held={kind}"),
            "--format",
            "{{.Names}}",
        ])
        .output()
        .unwrap();
    let mut names: Vec<String> = text(&out.stdout).lines().map(str::to_string).collect();
    names.sort();
    names
}

// An agent run whose runner has none of the profile's credentials ends in `error` naming them,
// before any container is made (the same rule as `berth run`: `profile::secrets_for`).
#[test]
fn sqlite_agent_run_without_credentials_fails_on_the_runner_before_any_container() {
    let mut c = Cluster::start(Db::Sqlite);
    // The runner's environment has none of claude-code's credentials.
    let runner = c.runner_with_env(
        "nocreds",
        &[],
        &[
            ("ANTHROPIC_API_KEY", String::new()),
            ("CLAUDE_CODE_OAUTH_TOKEN", String::new()),
        ],
    );
    let project = c.project.clone();
    let o = c.cli(&[
        "submit",
        "--project",
        &project,
        "--image",
        support::agents_image(),
        "--profile",
        "claude-code",
        "--network",
        "none",
        "--json",
        "--",
        "list the files",
    ]);
    assert!(o.status.success(), "submit: {}", text(&o.stderr));
    let id = serde_json::from_slice::<Value>(&o.stdout).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let run = c.wait_final(&id, Duration::from_secs(60));
    assert_eq!(run["state"], "error", "{run}\n{}", c.all_log_tails());
    assert_eq!(run["runner_id"].as_str(), Some(runner.as_str()), "{run}");
    let reason = run["reason"].as_str().unwrap();
    assert!(
        reason.contains("CLAUDE_CODE_OAUTH_TOKEN")
            && reason.contains("ANTHROPIC_API_KEY")
            && reason.contains("runner"),
        "{reason}"
    );
    // No container was made: none is recorded, no output, nothing of the runner's is left.
    assert!(run["container_id"].is_null(), "{run}");
    assert!(c.stdout_lines(&id).is_empty());
    assert!(containers_of_runner(&runner).is_empty());
}

// Attack: a client asks egress `none` or `open` for an agent profile whose key the runner
// brokers. Without the proxy the runner would hand its key to the client's command in clear.
// Defence: the run ends in `error` naming the brokered credential, before any container.
#[test]
fn sqlite_a_brokered_key_is_never_handed_to_a_run_without_the_proxy() {
    let mut c = Cluster::start(Db::Sqlite);
    let key = format!("runner-key-{}", unique("k"));
    let runner = c.runner_with_env("broker", &[], &[("ANTHROPIC_API_KEY", key.clone())]);
    let project = c.project.clone();
    for egress in ["none", "open"] {
        let o = c.cli(&[
            "submit",
            "--project",
            &project,
            "--image",
            support::agents_image(),
            "--profile",
            "claude-code",
            "--egress",
            egress,
            "--env",
            "FAKE_TRANSCRIPT=foksa__open-claude-agent-sdk__plan-mode-ls.jsonl",
            "--json",
            "--",
            "list the files",
        ]);
        assert!(o.status.success(), "submit: {}", text(&o.stderr));
        let id = serde_json::from_slice::<Value>(&o.stdout).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let run = c.wait_final(&id, Duration::from_secs(60));
        assert_eq!(
            run["state"],
            "error",
            "egress {egress}: {run}\n{}",
            c.all_log_tails()
        );
        let reason = run["reason"].as_str().unwrap();
        assert!(
            reason.contains("`ANTHROPIC_API_KEY` (profile `claude-code`) is brokered")
                && reason.contains("use egress policy"),
            "{reason}"
        );
        assert!(run["container_id"].is_null(), "{run}");
        let events = serde_json::to_string(
            &c.events(&id, None)
                .iter()
                .map(|e| e.payload())
                .collect::<Vec<_>>(),
        )
        .unwrap();
        assert!(!events.contains(&key), "{events}");
    }
    assert!(containers_of_runner(&runner).is_empty());
}

// Agent profiles, persistent containers and the warm pool work for submitted runs too: the
// runner resolves the profile, execs into its held containers, and drains its pool on shutdown.
#[test]
fn sqlite_profiles_persistent_containers_and_pool_through_a_runner() {
    let mut c = Cluster::start(Db::Sqlite);
    // The runner reads berth.toml in the directory it starts in.
    std::fs::write(
        c.path().join("berth.toml"),
        format!("[pool.\"{}\"]\nsize = 1\n", image()),
    )
    .unwrap();
    // A pool widens what runs get, so the file applies once trusted.
    let trusted = c.berth(&["trust"]).output().unwrap();
    assert!(trusted.status.success(), "{}", text(&trusted.stderr));
    let runner = c.runner("held", &[]);
    let project = c.project.clone();

    // An agent profile with a prompt: parsed agent events, the agent's verdict as the state.
    let o = c.cli(&[
        "submit",
        "--project",
        &project,
        "--image",
        support::agents_image(),
        "--profile",
        "claude-code",
        "--network",
        "none",
        "--env",
        "FAKE_TRANSCRIPT=foksa__open-claude-agent-sdk__plan-mode-ls.jsonl",
        "--json",
        "--",
        "list the files",
    ]);
    assert!(o.status.success(), "submit: {}", text(&o.stderr));
    let id = serde_json::from_slice::<Value>(&o.stdout).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let run = c.wait_final(&id, Duration::from_secs(60));
    assert_eq!(run["state"], "succeeded", "{run}\n{}", c.all_log_tails());
    let events = c.events(&id, None);
    assert!(
        events.iter().any(|e| e.kind == "agent"),
        "agent events reach the server: {:?}",
        events.iter().map(|e| e.kind.clone()).collect::<Vec<_>>()
    );

    // A persistent container: the second run finds what the first left.
    let first = c.submit(
        &["--name", "keeper"],
        &["sh", "-c", "echo kept > /tmp/mark"],
    );
    assert_eq!(
        c.wait_final(&first, Duration::from_secs(60))["state"],
        "succeeded"
    );
    let second = c.submit(&["--name", "keeper"], &["cat", "/tmp/mark"]);
    assert_eq!(
        c.wait_final(&second, Duration::from_secs(60))["state"],
        "succeeded"
    );
    let out: Vec<String> = c
        .events(&second, None)
        .iter()
        .filter(|e| e.kind == "stdout")
        .map(Sse::payload)
        .collect();
    assert_eq!(out, ["kept\n"]);
    assert_eq!(
        held_of_runner(&runner, "persistent"),
        ["berth-default--keeper"]
    );

    // The pool: filled by the first plain run, then a run takes the ready container.
    let cold = c.submit(&[], &["true"]);
    assert_eq!(
        c.wait_final(&cold, Duration::from_secs(60))["state"],
        "succeeded"
    );
    let ready = held_of_runner(&runner, "pool");
    assert_eq!(ready.len(), 1, "{}", c.all_log_tails());
    let ready_id = docker_id(&ready[0]);
    let warm = c.submit(&[], &["hostname"]);
    assert_eq!(
        c.wait_final(&warm, Duration::from_secs(60))["state"],
        "succeeded"
    );
    let host: String = c
        .events(&warm, None)
        .iter()
        .filter(|e| e.kind == "stdout")
        .map(Sse::payload)
        .collect();
    assert!(
        ready_id.starts_with(host.trim()),
        "the run went into the ready container {ready_id}: {host}"
    );
    let refilled = held_of_runner(&runner, "pool");
    assert_eq!(refilled.len(), 1);
    assert_ne!(
        refilled, ready,
        "the used container is gone, a new one is ready"
    );

    // Stopping the runner drains its pool.
    for r in c.runners.iter_mut().filter(|r| r.name == runner) {
        sigterm(r.child.id());
        let _ = r.child.wait();
    }
    assert!(held_of_runner(&runner, "pool").is_empty());
}

fn docker_id(name: &str) -> String {
    let out = Command::new("docker")
        .args(["inspect", "--format", "{{.Id}}", name])
        .output()
        .unwrap();
    text(&out.stdout).trim().to_string()
}

fn sigterm(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

// A submitted run in worktree mode works on a worktree of the project's checkout on the runner
// and hands its diff back to the server as an artifact; the checkout is untouched.
#[test]
fn sqlite_worktree_run_through_a_runner_returns_its_diff() {
    let mut c = Cluster::start(Db::Sqlite);
    let ws = c.path().join("ws");
    let git = |args: &[&str]| git(&ws, args);
    std::fs::write(ws.join("file.txt"), "one\n").unwrap();
    git(&["init", "-q"]);
    git(&["add", "file.txt"]);
    git(&["commit", "-qm", "start"]);
    let _runner = c.runner("worktree", &[]);

    let id = c.submit(
        &["--workspace-mode", "worktree"],
        &["sh", "-c", "echo two >> file.txt && echo new > added.txt"],
    );
    let run = c.wait_final(&id, Duration::from_secs(60));
    assert_eq!(run["state"], "succeeded", "{run}\n{}", c.all_log_tails());
    let (status, patch) = c.http(
        "GET",
        &format!("/api/v1/runs/{id}/artifacts/berth/diff.patch"),
        Some(&c.client),
        None,
        &[],
    );
    assert_eq!(status, 200, "{patch}");
    assert!(
        patch.contains("+two") && patch.contains("added.txt"),
        "{patch}"
    );
    assert_eq!(
        std::fs::read_to_string(ws.join("file.txt")).unwrap(),
        "one\n"
    );
    assert!(!ws.join("added.txt").exists());
    assert_eq!(
        git(&["status", "--porcelain"]).trim(),
        "",
        "the checkout is clean"
    );

    // `berth diff` and `berth apply` take the server's run when no local run matches.
    let o = c.cli(&["diff", &id[..10]]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), patch);
    assert!(
        text(&o.stderr).contains(&format!("the server {} answered", c.url)),
        "{}",
        text(&o.stderr)
    );
    let in_checkout = |args: &[&str]| {
        let mut all = vec![args[0], "--server", &c.url, "--token", &c.client];
        all.extend_from_slice(&args[1..]);
        let mut cmd = c.berth(&all);
        cmd.current_dir(&ws);
        output_within(&mut cmd, Duration::from_secs(60))
    };
    let o = in_checkout(&["apply", &id]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(
        std::fs::read_to_string(ws.join("file.txt")).unwrap(),
        "one\ntwo\n"
    );
    assert_eq!(
        std::fs::read_to_string(ws.join("added.txt")).unwrap(),
        "new\n"
    );
    let o = in_checkout(&["apply", &id]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("already applied"),
        "{}",
        text(&o.stderr)
    );
    // `berth show` takes a prefix of a server run's id too.
    let show = c.show(&id[..10]);
    assert_eq!(show["run"]["id"], id.as_str(), "{show}");
    assert!(!show["audit"].as_array().unwrap().is_empty(), "{show}");
    // A local run is not hidden by the server: `berth show` finds it, and says so.
    let here = c.path().join("local");
    std::fs::create_dir_all(&here).unwrap();
    let in_here = |args: &[&str]| {
        let mut cmd = c.berth(args);
        cmd.current_dir(&here);
        output_within(&mut cmd, Duration::from_secs(120))
    };
    let o = in_here(&["run", "--image", image(), "--", "true"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = in_here(&["ls", "--json"]);
    let local: Value = serde_json::from_slice(&o.stdout).unwrap();
    let local = local["runs"][0]["id"].as_str().unwrap().to_string();
    let o = in_here(&["show", &local, "--server", &c.url, "--token", &c.client]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains(&local), "{}", text(&o.stdout));
    assert!(
        text(&o.stderr).contains("the local run answered, not the server"),
        "{}",
        text(&o.stderr)
    );
    let o = c.cli(&["show", &id]);
    assert!(
        text(&o.stderr).contains(&format!("the server {} answered", c.url)),
        "{}",
        text(&o.stderr)
    );
    let o = c.cli(&["show", "nosuchrun"]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains(&format!("nor on the server {}", c.url)),
        "{}",
        text(&o.stderr)
    );
    // Neither here nor there: berth says where it looked.
    let o = c.cli(&["diff", "nosuchrun"]);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains("no run matches `nosuchrun`")
            && err.contains(&format!("nor on the server {}", c.url)),
        "{err}"
    );

    // A bad mode is refused by the server with its JSON path.
    let project = c.project.clone();
    // Refused by the CLI, naming the values it takes; and by the server, with the JSON path.
    let o = c.cli(&[
        "submit",
        "--project",
        &project.clone(),
        "--image",
        image(),
        "--workspace-mode",
        "sideways",
        "--",
        "true",
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("--workspace-mode") && text(&o.stderr).contains("possible values"),
        "{}",
        text(&o.stderr)
    );
    let submit = serde_json::json!({
        "project": project,
        "sandbox": { "image": image(), "command": ["true"], "workspace_mode": "sideways" },
    })
    .to_string();
    let (status, body) = c.http("POST", "/api/v1/runs", Some(&c.client), Some(&submit), &[]);
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("sandbox.workspace_mode"), "{body}");
}

// Workflows through the server.

impl Cluster {
    /// `berth submit --workflow FILE` for the project; the workflow's id.
    fn submit_workflow(&self, file: &Path, task: &str) -> String {
        let project = self.project.clone();
        let file = file.display().to_string();
        let o = self.cli(&[
            "submit",
            "--project",
            &project,
            "--workflow",
            &file,
            "--image",
            agents_image(),
            "--agent-image",
            agents_image(),
            "--network",
            "none",
            "--json",
            "--",
            task,
        ]);
        assert!(o.status.success(), "submit --workflow: {}", text(&o.stderr));
        let view: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(view["state"], "running", "{view}");
        view["id"].as_str().unwrap().to_string()
    }

    fn workflow(&self, id: &str) -> Value {
        let (status, body) = self.http(
            "GET",
            &format!("/api/v1/workflows/{id}"),
            Some(&self.client),
            None,
            &[],
        );
        assert_eq!(status, 200, "GET workflow {id}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Waits until the workflow's first run of `step` is running; its run id.
    fn wait_step_running(&self, id: &str, step: &str) -> String {
        poll(
            Duration::from_secs(60),
            &format!("step {step} runs"),
            || {
                let view = self.workflow(id);
                let run = view["steps"]
                    .as_array()?
                    .iter()
                    .find(|s| s["step"] == step)?["run_id"]
                    .as_str()?
                    .to_string();
                (self.run(&run)["state"] == "running").then_some(run)
            },
        )
    }

    fn wait_workflow(&self, id: &str, limit: Duration) -> Value {
        poll(limit, &format!("workflow {id} ends"), || {
            let view = self.workflow(id);
            (view["state"] != "running").then_some(view)
        })
    }

    /// The runner's directory of the workflow's worktree.
    fn runner_workflow_dir(&self, runner: &str, id: &str) -> PathBuf {
        self.path()
            .join("runners")
            .join(runner)
            .join("runner/workflows")
            .join(id)
    }
}

/// (iteration, step, state, approved) of every step, from the API's view.
fn server_steps(view: &Value) -> Vec<(u64, String, String, Option<bool>)> {
    view["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["iteration"].as_u64().unwrap(),
                s["step"].as_str().unwrap().to_string(),
                s["state"].as_str().unwrap().to_string(),
                s["verdict"]["approved"].as_bool(),
            )
        })
        .collect()
}

/// The same from `berth workflow run`'s `workflow.json`.
fn cli_steps(state: &Value) -> Vec<(u64, String, String, Option<bool>)> {
    let iterations = state["iterations"].as_array().unwrap();
    state["baseline"]
        .as_array()
        .unwrap()
        .iter()
        .chain(
            iterations
                .iter()
                .flat_map(|i| i["steps"].as_array().unwrap()),
        )
        .map(|s| {
            (
                s["position"]["iteration"].as_u64().unwrap(),
                s["position"]["step"].as_str().unwrap().to_string(),
                s["state"].as_str().unwrap().to_string(),
                s["verdict"]["approved"].as_bool(),
            )
        })
        .collect()
}

// The same workflow run by `berth workflow run` in the project's checkout and submitted to the
// server: the same end, iterations, verdicts and diff. Every step is a run on one runner; the
// workflow shows in `berth show`, the API and its audit trail; the runner removes its worktree
// when the workflow ends, and the checkout is untouched.
fn workflow_on_the_cli_and_through_server_and_runner_agree(db: Db) {
    let mut c = Cluster::start(db);
    let ws = c.path().join("ws");
    make_repo(&ws, REVIEWER, 3);

    // On the CLI.
    let cli_state = c.path().join("cli-state").display().to_string();
    let mut cmd = c.berth(&run_args(&["--state-dir", &cli_state]));
    fake_credentials(cmd.current_dir(&ws));
    let o = output_within(&mut cmd, Duration::from_secs(180));
    let out = text(&o.stdout);
    let start = out.rfind("\n{\n").map_or(0, |i| i + 1);
    let cli: Value = serde_json::from_str(&out[start..])
        .unwrap_or_else(|e| panic!("{e}: {out}\n{}", text(&o.stderr)));
    assert_eq!(cli["state"], "succeeded", "{cli}\n{}", text(&o.stderr));
    let cli_diff = std::fs::read_to_string(cli["diff"].as_str().unwrap()).unwrap();
    let cli_state: Value = serde_json::from_slice(
        &std::fs::read(Path::new(cli["dir"].as_str().unwrap()).join("workflow.json")).unwrap(),
    )
    .unwrap();

    // Through the server and a runner.
    let runner = c.runner("wf", &[]);
    let id = c.submit_workflow(&ws.join("workflow.toml"), "Fix calc.");
    assert!(id.starts_with("wf-"), "{id}");
    let view = c.wait_workflow(&id, Duration::from_secs(180));
    assert_eq!(view["state"], "succeeded", "{view}\n{}", c.all_log_tails());
    assert_eq!(view["iterations"], cli["iterations"], "{view}");
    assert_eq!(view["baseline_red"], cli["baseline_red"], "{view}");
    assert_eq!(view["reason"], cli["reason"], "{view}");
    assert_eq!(server_steps(&view), cli_steps(&cli_state), "{view}");
    assert_eq!(view["runner_id"], runner.as_str());
    let (status, diff) = c.http(
        "GET",
        &format!("/api/v1/workflows/{id}/diff"),
        Some(&c.client),
        None,
        &[],
    );
    assert_eq!(status, 200, "{diff}");
    assert!(diff.contains("+fixed"), "{diff}");
    assert_eq!(
        diff, cli_diff,
        "the same diff on the CLI and through the server"
    );

    // Each step is a run of this workflow on the one runner; the second build got the review.
    for step in view["steps"].as_array().unwrap() {
        let run = c.run(step["run_id"].as_str().unwrap());
        assert_eq!(run["labels"]["berth.workflow"], id.as_str(), "{run}");
        assert_eq!(run["runner_id"], runner.as_str(), "{run}");
    }
    let build2 = view["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["iteration"] == 2 && s["step"] == "build")
        .unwrap();
    let (status, prompt) = c.http(
        "GET",
        &format!(
            "/api/v1/runs/{}/artifacts/berth/out/prompt.txt",
            build2["run_id"].as_str().unwrap()
        ),
        Some(&c.client),
        None,
        &[],
    );
    assert_eq!(status, 200);
    assert!(
        prompt.contains("add the missing line")
            && prompt.contains("FAIL: calc.txt lacks the fixed line"),
        "the review and the test failure reach the builder: {prompt}"
    );

    // berth show: the steps, the verdicts and the audit trail.
    let o = c.cli(&["show", &id, "--json"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let shown: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(shown["diff"], diff.as_str());
    let events: Vec<&str> = shown["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["event"].as_str().unwrap())
        .collect();
    assert_eq!(events.first(), Some(&"submitted"));
    assert_eq!(events.last(), Some(&"finished"));
    assert_eq!(events.iter().filter(|e| **e == "step_queued").count(), 7);
    assert_eq!(events.iter().filter(|e| **e == "step_finished").count(), 7);
    // berth ls --workflows: the server's, and the CLI's in its state directory.
    let o = c.cli(&["ls", "--workflows", "--json"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let listed: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(listed["workflows"][0]["id"], id.as_str(), "{listed}");
    assert_eq!(listed["workflows"][0]["state"], "succeeded", "{listed}");
    let state_dir = c.path().join("cli-state").display().to_string();
    let o = c
        .berth(&["ls", "--workflows", "--json", "--state-dir", &state_dir])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let local: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(local[0]["id"], cli["id"], "{local}");
    assert_eq!(local[0]["state"], "succeeded", "{local}");
    assert_eq!(local[0]["iterations"], 2, "{local}");
    let o = c.cli(&["show", &id]);
    let human = text(&o.stdout);
    assert!(
        human.contains("iteration 2") && human.contains("approved: good"),
        "{human}"
    );

    // The runner removes the worktree once it hears the workflow ended; the checkout is as it
    // was, and no container is left.
    let dir = c.runner_workflow_dir(&runner, &id);
    poll(
        Duration::from_secs(20),
        "the runner removes the worktree",
        || (!dir.exists()).then_some(()),
    );
    assert_eq!(
        git(&ws, &["branch", "--list", "berth/*"]),
        "",
        "{}",
        c.all_log_tails()
    );
    assert_eq!(git(&ws, &["worktree", "list"]).lines().count(), 1);
    assert_eq!(git(&ws, &["status", "--porcelain"]), "");
    assert_eq!(
        std::fs::read_to_string(ws.join("calc.txt")).unwrap(),
        "one\n"
    );
    assert!(containers_of_runner(&runner).is_empty());
}

// Cancel of a submitted workflow stops its running step and records where it stopped; bad
// submissions are refused with the field to fix.
#[test]
fn sqlite_workflow_cancel_and_bad_submissions() {
    let mut c = Cluster::start(Db::Sqlite);
    let ws = c.path().join("ws");
    make_repo(&ws, REVIEWER, 3);
    set_builder(&ws, STUCK_BUILDER);

    let project = c.project.clone();
    for (body, field) in [
        (
            serde_json::json!({ "project": project, "workflow": "name = \"x\"\n[loop]\nmax_iterations = 99\n" }),
            "workflow",
        ),
        (
            serde_json::json!({ "project": project, "builtin": "nope" }),
            "builtin",
        ),
        (
            serde_json::json!({ "project": project, "workflow": std::fs::read_to_string(ws.join("workflow.toml")).unwrap(), "task": "x" }),
            "image",
        ),
    ] {
        let (status, reply) = c.http(
            "POST",
            "/api/v1/workflows",
            Some(&c.client),
            Some(&body.to_string()),
            &[],
        );
        assert_eq!(status, 422, "{reply}");
        let reply: Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(reply["errors"][0]["field"], field, "{reply}");
    }
    let (status, reply) = c.http(
        "POST",
        "/api/v1/runs",
        Some(&c.client),
        Some(
            &serde_json::json!({ "project": project, "sandbox": { "image": image(), "command": ["true"], "workflow": "wf-x" } })
                .to_string(),
        ),
        &[],
    );
    assert_eq!(status, 422, "{reply}");
    assert!(reply.contains("sandbox.workflow"), "{reply}");

    let runner = c.runner("wfcancel", &[]);
    let id = c.submit_workflow(&ws.join("workflow.toml"), "Fix calc.");
    let build = c.wait_step_running(&id, "build");
    // The builder works in the runner's worktree of the workflow.
    let dir = c.runner_workflow_dir(&runner, &id);
    poll(Duration::from_secs(20), "the builder starts", || {
        dir.join("worktree/started.txt").is_file().then_some(())
    });
    let o = c.cli(&["cancel", &id]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let view = c.wait_workflow(&id, Duration::from_secs(60));
    assert_eq!(view["state"], "cancelled", "{view}");
    assert!(
        view["reason"].as_str().unwrap().contains("build"),
        "says where: {view}"
    );
    assert_eq!(c.run(&build)["state"], "cancelled");
    let steps = server_steps(&view);
    assert_eq!(steps.last().unwrap().1, "build", "{view}");
    assert_eq!(steps.last().unwrap().2, "cancelled", "{view}");
    let shown: Value = serde_json::from_slice(&c.cli(&["show", &id, "--json"]).stdout).unwrap();
    let audit = shown["audit"].as_array().unwrap();
    assert!(
        audit.iter().any(|a| a["event"] == "cancel_requested"
            && a["actor"].as_str().unwrap().starts_with("token:")),
        "{shown}"
    );
    assert!(containers_of_runner(&runner).is_empty());
    poll(
        Duration::from_secs(20),
        "the runner removes the worktree",
        || (!dir.exists()).then_some(()),
    );
    assert_eq!(git(&ws, &["branch", "--list", "berth/*"]), "");
}

// A submitted workflow with `workspace = "copy"` works on the runner's copy of a project
// directory that is no git checkout, and returns the copy's diff.
#[test]
fn sqlite_copy_workflow_through_a_runner() {
    let mut c = Cluster::start(Db::Sqlite);
    let ws = c.path().join("ws");
    write_files(&ws, REVIEWER, 3, "copy");
    let runner = c.runner("wfcopy", &[]);
    // --follow shows each step as it starts and ends, and exits with the workflow's status.
    let project = c.project.clone();
    let file = ws.join("workflow.toml").display().to_string();
    let o = c.cli(&[
        "submit",
        "--project",
        &project,
        "--workflow",
        &file,
        "--image",
        agents_image(),
        "--agent-image",
        agents_image(),
        "--network",
        "none",
        "--follow",
        "--",
        "Fix calc.",
    ]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}\n{}", c.all_log_tails());
    assert!(
        err.contains("iteration 1 · review") && err.contains("changes requested: not yet"),
        "{err}"
    );
    assert!(
        err.contains("iteration 2 · review") && err.contains("approved: good"),
        "{err}"
    );
    let id = text(&o.stdout).trim().to_string();
    let view = c.wait_workflow(&id, Duration::from_secs(180));
    assert_eq!(view["state"], "succeeded", "{view}\n{}", c.all_log_tails());
    assert_eq!(view["iterations"], 2, "{view}");
    let (status, diff) = c.http(
        "GET",
        &format!("/api/v1/workflows/{id}/diff"),
        Some(&c.client),
        None,
        &[],
    );
    assert_eq!(status, 200);
    assert!(
        diff.contains("+fixed") && diff.contains("notes.txt"),
        "{diff}"
    );
    assert_eq!(
        std::fs::read_to_string(ws.join("calc.txt")).unwrap(),
        "one\n"
    );
    assert!(!ws.join("notes.txt").exists());
    let dir = c.runner_workflow_dir(&runner, &id);
    poll(
        Duration::from_secs(20),
        "the runner removes the copy",
        || (!dir.exists()).then_some(()),
    );
    assert!(containers_of_runner(&runner).is_empty());
}

// A runner killed in the middle of a workflow: the running step is lost after its lease, the
// workflow ends `error` naming it, and the restarted runner removes the worktree it kept.
#[test]
fn sqlite_runner_killed_mid_workflow() {
    let mut c = Cluster::start(Db::Sqlite);
    let ws = c.path().join("ws");
    make_repo(&ws, REVIEWER, 3);
    set_builder(&ws, STUCK_BUILDER);
    let runner = c.runner("wfdoomed", &[]);
    let id = c.submit_workflow(&ws.join("workflow.toml"), "Fix calc.");
    let dir = c.runner_workflow_dir(&runner, &id);
    c.wait_step_running(&id, "build");
    poll(Duration::from_secs(20), "the builder starts", || {
        dir.join("worktree/started.txt").is_file().then_some(())
    });
    c.kill_runner(&runner);
    let view = c.wait_workflow(&id, Duration::from_secs(30));
    assert_eq!(view["state"], "error", "{view}");
    let reason = view["reason"].as_str().unwrap();
    assert!(
        reason.contains("build") && reason.contains("lost"),
        "{reason}"
    );
    assert!(dir.exists(), "nobody could remove the worktree yet");

    c.spawn_runner(&runner, &[], &[]);
    poll(
        Duration::from_secs(20),
        "the restarted runner removes the worktree",
        || (!dir.exists()).then_some(()),
    );
    poll(
        Duration::from_secs(20),
        "the restarted runner removes the left container",
        || containers_of_runner(&runner).is_empty().then_some(()),
    );
    assert_eq!(git(&ws, &["branch", "--list", "berth/*"]), "");
}

// The server killed while a workflow's step runs: after its restart the step's end is
// recorded and the workflow goes on to the same result; nothing is lost or repeated.
#[test]
fn sqlite_server_killed_mid_workflow_goes_on() {
    let mut c = Cluster::start(Db::Sqlite);
    let ws = c.path().join("ws");
    make_repo(&ws, REVIEWER, 3);
    set_builder(&ws, &format!("sleep 2\n{BUILDER}"));
    c.runner("wfsteady", &[]);
    let id = c.submit_workflow(&ws.join("workflow.toml"), "Fix calc.");
    c.wait_step_running(&id, "build");
    c.kill_server();
    std::thread::sleep(Duration::from_millis(800));
    c.start_server();
    let view = c.wait_workflow(&id, Duration::from_secs(120));
    assert_eq!(view["state"], "succeeded", "{view}\n{}", c.all_log_tails());
    assert_eq!(view["iterations"], 2, "{view}");
    let steps = server_steps(&view);
    assert_eq!(steps.len(), 7, "each step once: {view}");
    let shown: Value = serde_json::from_slice(&c.cli(&["show", &id, "--json"]).stdout).unwrap();
    let queued = shown["audit"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["event"] == "step_queued")
        .count();
    assert_eq!(queued, 7, "no step queued twice: {shown}");
}

/// Lines `prefix1`..`prefixN`, each ending in a newline.
fn numbered(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix}{i}\n")).collect()
}

// Issue 20: SIGTERM while runs are in flight and the server is unreachable. The runner stops
// claiming, lets the runs go on for the drain timeout, stops them (SIGTERM, grace, SIGKILL),
// removes their containers and exits, keeping the unsent output and the ends in its journal.
// The next start sends them: the server gets every line the commands printed, exactly once.
fn sigterm_with_the_server_down_keeps_the_output_for_the_next_start(db: Db) {
    const DRAIN: Duration = Duration::from_secs(2);
    const GRACE: Duration = Duration::from_secs(3);
    let mut c = Cluster::start(db);
    let name = c.runner("draining", &["--capacity", "4", "--drain-timeout", "2s"]);
    let script = "for i in $(seq 1 40); do echo line-$i; sleep 0.5; done";
    let ids: Vec<String> = (0..3)
        .map(|_| c.submit(&[], &["sh", "-c", script]))
        .collect();
    for id in &ids {
        c.wait_state(id, Duration::from_secs(30), |s| s == "running");
        poll(Duration::from_secs(10), "some output", || {
            (!c.stdout_lines(id).is_empty()).then_some(())
        });
    }
    c.signal_runner(&name, "TERM");
    c.kill_server();
    let stopping = Instant::now();
    let status = c.wait_runner_exit(&name, DRAIN + GRACE + Duration::from_secs(30));
    let took = stopping.elapsed();
    assert!(
        status.is_some(),
        "the runner did not stop within 30s of the drain timeout and grace\n{}",
        c.all_log_tails()
    );
    println!("{db:?}: runner exited {took:?} after SIGTERM with the server down");
    assert!(
        took < DRAIN + GRACE + Duration::from_secs(2),
        "the runner took {took:?} to stop (drain {DRAIN:?}, grace {GRACE:?})\n{}",
        c.all_log_tails()
    );
    assert!(
        containers_of_runner(&name).is_empty(),
        "containers left: {:?}",
        containers_of_runner(&name)
    );
    let journal = c.runner_dir(&name).join("journal");
    for id in &ids {
        assert!(
            journal.join(id).join("end.json").is_file(),
            "no end kept for {id}\n{}",
            c.all_log_tails()
        );
    }

    // Both come back; the runner's next start sends what it kept.
    c.start_server();
    c.spawn_runner(&name, &["--capacity", "4"], &[]);
    for id in &ids {
        let run = c.wait_final(id, Duration::from_secs(30));
        let local =
            std::fs::read_to_string(c.runner_dir(&name).join("runs").join(id).join("stdout.log"))
                .unwrap();
        let printed = local.lines().count();
        assert!((2..40).contains(&printed), "{id}: {printed} lines printed");
        let lines = c.stdout_lines(id);
        assert_eq!(
            lines,
            numbered("line-", printed),
            "{id}: {run}\n{}",
            c.all_log_tails()
        );
        assert_eq!(run["state"], "lost", "{run}");
        let reason = run["reason"].as_str().unwrap();
        assert!(
            reason.contains("shut down before the run ended"),
            "{reason}"
        );
    }
    poll(Duration::from_secs(10), "the journal is emptied", || {
        std::fs::read_dir(&journal)
            .unwrap()
            .next()
            .is_none()
            .then_some(())
    });
}

// Issue 20: a second SIGTERM skips the drain: the runs are stopped at once (SIGTERM, the grace,
// SIGKILL for a command that ignores SIGTERM), their containers removed, and the runner exits.
fn second_sigterm_stops_the_runs_within_the_grace(db: Db) {
    const GRACE: Duration = Duration::from_secs(3);
    let mut c = Cluster::start(db);
    let name = c.runner("hurried", &["--capacity", "2", "--drain-timeout", "10m"]);
    let stubborn = c.submit(
        &[],
        &[
            "sh",
            "-c",
            "trap '' TERM; echo up; sleep 300 & wait; sleep 300",
        ],
    );
    let plain = c.submit(&[], &["sh", "-c", "echo up; sleep 300"]);
    for id in [&stubborn, &plain] {
        c.wait_state(id, Duration::from_secs(30), |s| s == "running");
    }
    c.signal_runner(&name, "TERM");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        c.wait_runner_exit(&name, Duration::ZERO).is_none(),
        "the runner stopped without draining"
    );
    assert_eq!(c.run(&plain)["state"], "running");
    c.signal_runner(&name, "TERM");
    let second = Instant::now();
    let status = c.wait_runner_exit(&name, GRACE + Duration::from_secs(30));
    let took = second.elapsed();
    assert!(
        status.is_some(),
        "the runner did not stop after a second SIGTERM\n{}",
        c.all_log_tails()
    );
    println!("{db:?}: runner exited {took:?} after the second SIGTERM");
    assert!(
        took < GRACE + Duration::from_secs(3),
        "took {took:?}\n{}",
        c.all_log_tails()
    );
    assert!(containers_of_runner(&name).is_empty());
    for id in [&stubborn, &plain] {
        let run = c.wait_final(id, Duration::from_secs(5));
        assert_eq!(run["state"], "lost", "{run}");
        assert!(
            run["reason"].as_str().unwrap().contains("shut down"),
            "{run}"
        );
        assert_eq!(c.stdout_lines(id), vec!["up\n".to_string()]);
    }
    assert!(std::fs::read_dir(c.runner_dir(&name).join("journal"))
        .unwrap()
        .next()
        .is_none());
}

// Issue 17.1: a server outage longer than the lease loses no run. Leases measure a runner's
// silence while the server is up; after a start, each gets one full period.
fn server_outage_longer_than_the_lease_loses_no_run(db: Db) {
    let mut c = Cluster::start(db);
    c.runner("patient", &["--capacity", "4"]);
    let script = "for i in $(seq 1 30); do echo $i; sleep 0.5; done";
    let ids: Vec<String> = (0..4)
        .map(|_| c.submit(&[], &["sh", "-c", script]))
        .collect();
    for id in &ids {
        c.wait_state(id, Duration::from_secs(30), |s| s == "running");
    }
    c.kill_server();
    // Three lease periods without a server.
    std::thread::sleep(Duration::from_secs(9));
    c.start_server();
    for id in &ids {
        let run = c.wait_final(id, Duration::from_secs(40));
        assert_eq!(run["state"], "succeeded", "{run}\n{}", c.all_log_tails());
        assert_eq!(c.stdout_lines(id), numbered("", 30), "{id}");
    }
}

// Issue 17.2: fencing. Runner A claims ten runs and is paused (SIGSTOP) before it starts them;
// the server writes it off, re-queues them and runner B (its own state dir) runs them. When A
// goes on, the server refuses to confirm its leases: A removes the containers it created and
// starts none of them. Every run's command ran exactly once (its marker has one line), and
// none ended `error` (a new claim's container never collides with an old one's leftovers).
fn written_off_runner_never_starts_what_another_runner_took(db: Db) {
    let mut c = Cluster::start(db);
    let script = "echo ran >> /workspace/marker-$BERTH_RUN_ID; sleep 1; echo done";
    let ids: Vec<String> = (0..10)
        .map(|_| c.submit(&[], &["sh", "-c", script]))
        .collect();
    let a = unique("paused");
    c.spawn_runner(&a, &["--capacity", "10"], &[]);
    let states = |c: &Cluster| -> BTreeMap<String, String> {
        let path = format!("/api/v1/runs?project={}&limit=100", c.project);
        let (status, body) = c.http("GET", &path, Some(&c.client), None, &[]);
        assert_eq!(status, 200, "{body}");
        let list: Value = serde_json::from_str(&body).unwrap();
        list["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["id"].as_str().unwrap().to_string(),
                    r["state"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    // The moment A holds every claim, it is paused.
    poll(
        Duration::from_secs(30),
        "runner A claims the ten runs",
        || states(&c).values().all(|s| s != "queued").then_some(()),
    );
    c.signal_runner(&a, "STOP");
    let at_pause = states(&c);
    println!("{db:?}: at the pause: {at_pause:?}");
    let b = c.runner("taker", &["--capacity", "10"]);
    for id in &ids {
        c.wait_final(id, Duration::from_secs(60));
    }
    c.signal_runner(&a, "CONT");
    poll(
        Duration::from_secs(30),
        "runner A removes what it created",
        || containers_of_runner(&a).is_empty().then_some(()),
    );
    // Anything A might still start would show by now.
    std::thread::sleep(Duration::from_secs(3));
    assert!(containers_of_runner(&a).is_empty());
    let mut on_b = 0;
    for id in &ids {
        let run = c.run(id);
        let marker = std::fs::read_to_string(c.path().join("ws").join(format!("marker-{id}")))
            .unwrap_or_default();
        assert_eq!(
            marker.lines().count(),
            1,
            "{id} ran {} times: {run}\nits events: {:?}\n{}",
            marker.lines().count(),
            c.events(id, None)
                .iter()
                .map(|e| format!("{}: {}", e.kind, e.payload()))
                .collect::<Vec<_>>(),
            c.all_log_tails()
        );
        let state = run["state"].as_str().unwrap();
        if run["runner_id"].as_str() == Some(b.as_str()) {
            on_b += 1;
            assert_eq!(state, "succeeded", "{run}");
        } else {
            // Started by A before the pause: A's, and lost when A went silent.
            assert!(["succeeded", "lost"].contains(&state), "{run}");
        }
    }
    println!("{db:?}: {on_b} of 10 runs went to runner B");
    assert!(
        on_b > 0,
        "A started every run before the pause; nothing was fenced"
    );
}

/// Whether a container is running, per the engine.
fn container_running(id: &str) -> bool {
    let out = Command::new("docker")
        .args(["inspect", "-f", "{{.State.Running}}", id])
        .output()
        .unwrap();
    text(&out.stdout).trim() == "true"
}

const SIXTY_LINES: &str = "for i in $(seq 1 60); do echo $i; sleep 0.2; done";

// Issue 17.5: kill -9 of a runner mid-run, restarted within the lease: the command went on
// while no runner read its output, the new runner adopts the container, and the run succeeds
// with every line exactly once.
fn runner_restarted_within_the_lease_adopts_its_run(db: Db) {
    let mut c = Cluster::start(db);
    let name = c.runner("phoenix", &[]);
    let id = c.submit(&[], &["sh", "-c", SIXTY_LINES]);
    c.wait_state(&id, Duration::from_secs(30), |s| s == "running");
    poll(Duration::from_secs(10), "ten lines on the server", || {
        (c.stdout_lines(&id).len() >= 10).then_some(())
    });
    c.kill_runner(&name);
    let killed = Instant::now();
    let containers = containers_of_runner(&name);
    assert_eq!(containers.len(), 1);
    let before = c.stdout_lines(&id).len();
    std::thread::sleep(Duration::from_millis(600));
    // No reader for a while, and the command still runs (it used to die of SIGPIPE).
    assert!(container_running(&containers[0]), "{}", c.all_log_tails());
    // Other tests' `berth gc` waits while this runner is down; it must also wait until the
    // restarted runner has recorded itself as the container's adopter, or it takes the container
    // for an orphan.
    let held = c
        .killed
        .iter()
        .position(|(killed, _)| *killed == name)
        .map(|i| c.killed.remove(i));
    c.spawn_runner(&name, &[], &[]);
    poll(Duration::from_secs(20), "the run adopted", || {
        c.log_tail(&format!("runner-{name}"))
            .contains("adopted a run")
            .then_some(())
    });
    drop(held);
    let run = c.wait_final(&id, Duration::from_secs(60));
    println!(
        "{db:?}: finished {:?} after kill -9; {before} lines were on the server then",
        killed.elapsed()
    );
    assert_eq!(run["state"], "succeeded", "{run}\n{}", c.all_log_tails());
    assert_eq!(run["exit_code"], 0, "{run}");
    let lines = c.stdout_lines(&id);
    let expected: Vec<String> = (1..=60).map(|i| format!("{i}\n")).collect();
    assert_eq!(lines, expected, "{}", c.all_log_tails());
    let events = c.events(&id, None);
    assert_eq!(events.iter().filter(|e| e.kind == "started").count(), 1);
    assert!(
        events
            .iter()
            .any(|e| e.kind == "warning" && e.payload().contains("reattached")),
        "{events:?}"
    );
    let ids: Vec<i64> = events.iter().filter_map(|e| e.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    poll(
        Duration::from_secs(10),
        "the adopted container removed",
        || containers_of_runner(&name).is_empty().then_some(()),
    );
    // The runner's own record of the run ended the same way.
    let record: Value = serde_json::from_slice(
        &std::fs::read(c.runner_dir(&name).join("runs").join(&id).join("run.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(record["state"], "succeeded", "{record}");
    let log = std::fs::read_to_string(
        c.runner_dir(&name)
            .join("runs")
            .join(&id)
            .join("stdout.log"),
    )
    .unwrap();
    assert_eq!(log, expected.concat());
}

// Issue 17.5: a runner that never comes back: its run goes `lost` on the server, its container
// keeps running, and `berth gc` on the host removes it and records the run's end.
fn runner_never_restarted_its_run_goes_lost_and_gc_removes_it(db: Db) {
    let mut c = Cluster::start(db);
    let name = c.runner("gone", &[]);
    let id = c.submit(&[], &["sh", "-c", SIXTY_LINES]);
    c.wait_state(&id, Duration::from_secs(30), |s| s == "running");
    poll(Duration::from_secs(10), "some output", || {
        (!c.stdout_lines(&id).is_empty()).then_some(())
    });
    c.kill_runner(&name);
    let run = c.wait_state(&id, Duration::from_secs(15), terminal);
    assert_eq!(run["state"], "lost", "{run}");
    let containers = containers_of_runner(&name);
    assert_eq!(containers.len(), 1);
    assert!(container_running(&containers[0]));

    c.killed.clear();
    let gc = KILLED_RUNNERS.write().unwrap_or_else(|e| e.into_inner());
    let o = output_within(&mut c.berth(&["gc"]), Duration::from_secs(60));
    drop(gc);
    let out = text(&o.stdout);
    assert!(o.status.success(), "{out}{}", text(&o.stderr));
    assert!(containers_of_runner(&name).is_empty(), "{out}");
    let line = out
        .lines()
        .find(|l| l.contains(&format!("berth-{id}")))
        .unwrap_or_else(|| panic!("gc says nothing of the run's container:\n{out}"));
    assert!(line.starts_with("removed"), "{line}");
    assert!(line.contains(&format!("run {id} marked error")), "{line}");
    let record: Value = serde_json::from_slice(
        &std::fs::read(c.runner_dir(&name).join("runs").join(&id).join("run.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(record["state"], "error", "{record}");
    assert!(
        record["reason"]
            .as_str()
            .unwrap()
            .contains("removed by berth gc"),
        "{record}"
    );
}

// Egress through a runner, and a project's egress ceiling.

/// A plain HTTP upstream on 127.0.0.2 that answers every request with `hello-from-upstream`;
/// its port and the number of requests it answered.
fn hello_upstream() -> (u16, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.2:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = Arc::new(AtomicU64::new(0));
    let count = served.clone();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            count.fetch_add(1, Ordering::SeqCst);
            let body = "hello-from-upstream\n";
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, served)
}

#[test]
fn sqlite_egress_policy_through_a_runner_within_the_projects_ceiling() {
    let mut c = Cluster::start(Db::Sqlite);
    let (port, served) = hello_upstream();
    let allowed = format!("127.0.0.2:{port}");
    let fenced = unique("fenced");
    let ws = c.path().join("ws").display().to_string();
    let o = c.admin_cli(&[
        "project",
        "create",
        &fenced,
        "--workspace-root",
        &ws,
        "--egress-ceiling",
        &allowed,
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let project: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(project["egress_ceiling"][0], allowed.as_str());
    let o = c.admin_cli(&[
        "project",
        "create",
        &unique("bad"),
        "--workspace-root",
        &ws,
        "--egress-ceiling",
        "*.com",
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("egress_ceiling"),
        "{}",
        text(&o.stderr)
    );
    c.runner("egress", &[]);

    // Beyond the ceiling: refused at submission, naming the host; open egress and a network
    // would bypass the ceiling and are refused too.
    for (extra, field, named) in [
        (
            &["--allow-host", "evil.example"][..],
            "sandbox.egress.allow",
            "evil.example",
        ),
        (
            &["--allow-preset", "github"][..],
            "sandbox.egress.presets",
            "github.com:443",
        ),
        (
            &["--allow-tcp", "127.0.0.2:22"][..],
            "sandbox.egress.tcp",
            "127.0.0.2:22",
        ),
        (&["--egress", "open"][..], "sandbox.egress.mode", "ceiling"),
        (&["--network", "bridge"][..], "sandbox.network", "ceiling"),
        (
            &["--profile", "claude-code"][..],
            "sandbox.egress.allow",
            "api.anthropic.com:443",
        ),
    ] {
        let mut args = vec!["submit", "--project", &fenced, "--image", image()];
        args.extend_from_slice(extra);
        args.extend(["--", "true"]);
        let o = c.cli(&args);
        let err = text(&o.stderr);
        assert!(!o.status.success(), "{extra:?} was accepted");
        assert!(
            err.contains(field) && err.contains(named),
            "{extra:?}: {err}"
        );
    }
    let workflow = c.path().join("wf.toml");
    std::fs::write(
        &workflow,
        "name = \"w\"\n[loop]\nmax_iterations = 1\nuntil = \"r.approved\"\n[[loop.steps]]\nname = \"t\"\ncommand = [\"true\"]\n[[loop.steps]]\nname = \"r\"\nagent = \"codex\"\nprompt = \"x\"\nverdict = { file = \"result.json\" }\n",
    )
    .unwrap();
    let o = c.cli(&[
        "submit",
        "--project",
        &fenced,
        "--workflow",
        &workflow.display().to_string(),
        "--image",
        image(),
        "--allow-host",
        "evil.example",
        "--",
        "task",
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("egress.allow") && text(&o.stderr).contains("evil.example"),
        "{}",
        text(&o.stderr)
    );

    // Within it: the run reaches the allowed upstream through the runner's proxy, nothing else,
    // and every decision is an event of the run on the server.
    // The refusal's own words, read with nc (wget drops an error's body): the fix it names is
    // the submission's, not a berth.toml the runner's user cannot see.
    let script = format!(
        "wget -q -O - http://{allowed}/x; echo allowed=$?; wget -q -O - http://127.0.0.2:{denied}/ ; echo denied=$?; \
         p=${{http_proxy#http://}}; p=${{p%/}}; (printf 'GET http://127.0.0.2:{denied}/ HTTP/1.0\\r\\n\\r\\n'; sleep 1) | nc ${{p%:*}} ${{p##*:}}",
        denied = port.wrapping_add(1).max(1)
    );
    let o = c.cli(&[
        "submit",
        "--project",
        &fenced,
        "--image",
        image(),
        "--allow-host",
        &allowed,
        "--json",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let id = serde_json::from_slice::<Value>(&o.stdout).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let run = c.wait_final(&id, Duration::from_secs(60));
    assert_eq!(run["state"], "succeeded", "{run}\n{}", c.all_log_tails());
    let out = c.stdout_lines(&id).concat();
    assert!(out.contains("hello-from-upstream\nallowed=0"), "{out}");
    assert!(!out.contains("denied=0"), "{out}");
    assert!(out.contains(" 403 Forbidden"), "{out}");
    assert!(
        out.contains("to allow it, submit the run with `--allow-host"),
        "{out}"
    );
    assert!(!out.contains("berth.toml"), "{out}");
    assert_eq!(served.load(Ordering::SeqCst), 1);
    assert_eq!(
        run["sandbox"]["egress"]["allow"][0],
        allowed.as_str(),
        "{run}"
    );
    let egress: Vec<Value> = c
        .events(&id, None)
        .iter()
        .filter(|e| e.kind == "egress")
        .map(|e| serde_json::from_str::<Value>(&e.payload()).unwrap())
        .collect();
    let decisions: Vec<(bool, String)> = egress
        .iter()
        .map(|e| {
            (
                e["allowed"] == true,
                e["rule"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert!(decisions.contains(&(true, allowed.clone())), "{egress:?}");
    assert!(decisions.iter().any(|(ok, _)| !ok), "{egress:?}");
}

#[test]
fn sqlite_gvisor_runs_go_to_runners_that_offer_it_and_run_under_gvisor() {
    let mut c = Cluster::start(Db::Sqlite);
    let runner = c.runner("gvisor", &[]);
    let (status, body) = c.http("GET", "/api/v1/runners", Some(&c.client), None, &[]);
    assert_eq!(status, 200, "{body}");
    let runners: Value = serde_json::from_str(&body).unwrap();
    let me = runners
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == runner.as_str())
        .unwrap();
    assert!(
        me["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "isolation:gvisor"),
        "the runner advertises gVisor (register runsc as .ci/run does): {me}"
    );
    let id = c.submit(
        &["--isolation", "gvisor"],
        &["sh", "-c", "dmesg 2>&1 | head -1"],
    );
    let run = c.wait_final(&id, Duration::from_secs(60));
    assert_eq!(run["state"], "succeeded", "{run}\n{}", c.all_log_tails());
    assert!(
        run["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "isolation:gvisor"),
        "{run}"
    );
    assert_eq!(run["sandbox"]["isolation"], "gvisor", "{run}");
    let out = c.stdout_lines(&id).concat();
    assert!(out.contains("Starting gVisor"), "{out}");
    // Refused by the CLI, naming the values it takes; and by the server, with the JSON path.
    let o = c.cli(&[
        "submit",
        "--project",
        &c.project.clone(),
        "--image",
        image(),
        "--isolation",
        "kata",
        "--",
        "true",
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("--isolation") && text(&o.stderr).contains("possible values"),
        "{}",
        text(&o.stderr)
    );
    let submit = serde_json::json!({
        "project": c.project,
        "sandbox": { "image": image(), "command": ["true"], "isolation": "kata" },
    })
    .to_string();
    let (status, body) = c.http("POST", "/api/v1/runs", Some(&c.client), Some(&submit), &[]);
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("sandbox.isolation"), "{body}");
}

/// Output holding a NUL byte: PostgreSQL's text columns refuse NUL, so such a line travels as
/// base64, and `berth logs` gives back the bytes.
fn output_with_nul_bytes_is_kept(db: Db) {
    let mut c = Cluster::start(db);
    c.runner("nul", &[]);
    let id = c.submit(&[], &["sh", "-c", "printf 'a\\000b\\n'; echo after"]);
    let run = c.wait_final(&id, Duration::from_secs(60));
    assert_eq!(run["state"], "succeeded", "{run}\n{}", c.all_log_tails());
    let kinds: Vec<String> = c.events(&id, None).iter().map(|e| e.kind.clone()).collect();
    assert!(kinds.contains(&"stdout_base64".to_string()), "{kinds:?}");
    let o = c.cli(&["logs", &id]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(o.stdout, b"a\0b\nafter\n");
}

#[test]
fn sqlite_output_with_nul_bytes_is_kept() {
    output_with_nul_bytes_is_kept(Db::Sqlite);
}

#[test]
fn postgres_output_with_nul_bytes_is_kept() {
    output_with_nul_bytes_is_kept(Db::Postgres);
}

/// Header injection through a runner: the runner host's `[egress.inject]` and the value in the
/// runner's environment; the sandbox, the server and its records never see the value.
#[test]
fn sqlite_header_injection_through_a_runner() {
    const VALUE: &str = "Bearer ghp_RUNNERSIDE0123456789abcdef";
    let (ca, ca_pem) = support::tls::upstream_ca();
    let (port, seen) = support::tls::https_upstream(&ca);
    let mut c = Cluster::start(Db::Sqlite);
    let ca_file = c.path().join("upstream-ca.pem");
    std::fs::write(&ca_file, &ca_pem).unwrap();
    let config = c.path().join("config/berth");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("config.toml"),
        format!(
            "[egress.inject.\"127.0.0.2:{port}\"]\nheader = \"Authorization\"\nenv = \"BERTH_TEST_RUNNER_TOKEN\"\nmethods = [\"GET\"]\npaths = [\"/team/\"]\n"
        ),
    )
    .unwrap();
    c.runner_with_env(
        "inject",
        &[],
        &[
            ("BERTH_TEST_RUNNER_TOKEN", VALUE.to_string()),
            ("BERTH_EGRESS_UPSTREAM_CA", ca_file.display().to_string()),
        ],
    );
    let script = format!(
        "curl -sS https://127.0.0.2:{port}/team/repo.git/info/refs; echo get=$?; \
         curl -sS -X POST https://127.0.0.2:{port}/team/x; echo post=$?; \
         echo env=$(env | grep -c RUNNERSID[E])"
    );
    let project = c.project.clone();
    let o = c.cli(&[
        "submit",
        "--project",
        &project,
        "--image",
        support::tls_image(),
        "--egress",
        "policy",
        "--json",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let id = serde_json::from_slice::<Value>(&o.stdout).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let run = c.wait_final(&id, Duration::from_secs(60));
    assert_eq!(run["state"], "succeeded", "{run}\n{}", c.all_log_tails());
    let out = c.stdout_lines(&id).concat();
    assert!(
        out.contains("ok GET /team/repo.git/info/refs\nget=0"),
        "{out}"
    );
    assert!(!out.contains("ok POST"), "the method limit holds: {out}");
    assert!(out.contains("env=0"), "{out}");
    let heads = seen.lock().unwrap().clone();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(
        heads[0]
            .to_ascii_lowercase()
            .contains(&format!("authorization: {}", VALUE.to_ascii_lowercase())),
        "{}",
        heads[0]
    );
    let events = c.events(&id, None);
    let inject: Vec<Value> = events
        .iter()
        .filter(|e| e.kind == "egress")
        .map(|e| serde_json::from_str::<Value>(&e.payload()).unwrap())
        .filter(|e| e["kind"] == "inject")
        .collect();
    assert!(
        inject
            .iter()
            .any(|e| e["allowed"] == true && e["status"] == 200),
        "{inject:?}"
    );
    assert!(inject.iter().any(|e| e["allowed"] == false), "{inject:?}");
    // Nothing the server holds carries the value.
    let all = format!(
        "{}{:?}",
        c.run(&id),
        events.iter().map(|e| &e.data).collect::<Vec<_>>()
    );
    assert!(!all.contains("RUNNERSIDE"), "{all}");
}

/// A CLI following a run in the background: its stdout lines arrive on a channel, its stderr is
/// collected until it exits.
struct Following {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    stderr: JoinHandle<String>,
}

impl Following {
    fn spawn(c: &Cluster, token: &str, args: &[&str]) -> Self {
        let mut all = vec![args[0], "--server", &c.url, "--token", token];
        all.extend_from_slice(&args[1..]);
        let mut child = c
            .berth(&all)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Self {
            child,
            lines,
            stderr,
        }
    }

    fn wait_line(&self, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line == want => return,
                Ok(_) => {}
                Err(e) => panic!("no line {want:?} from the CLI: {e}"),
            }
        }
    }

    fn interrupt(&self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
    }

    /// Its exit code and stderr, within 10 s.
    fn finish(mut self) -> (Option<i32>, String) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("the CLI did not exit after Ctrl-C");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        (status.code(), self.stderr.join().unwrap())
    }
}

// Ctrl-C on `berth submit --follow` detaches: the run goes on and berth says how to follow or
// cancel it. Two on `berth logs -f` within 2 s cancel the run, and the audit names the token
// that asked (its id, never its secret).
#[test]
fn sqlite_ctrl_c_detaches_and_a_second_one_cancels() {
    let mut c = Cluster::start(Db::Sqlite);
    c.runner("interrupted", &[]);
    let (token_id, secret) = c.create_token("client");
    let project = c.project.clone();
    let script = "echo ready; sleep 60";
    let submit = Following::spawn(
        &c,
        &secret,
        &[
            "submit",
            "--project",
            &project,
            "--image",
            image(),
            "--follow",
            "--",
            "sh",
            "-c",
            script,
        ],
    );
    submit.wait_line("ready");
    submit.interrupt();
    let (code, stderr) = submit.finish();
    assert_eq!(code, Some(130), "{stderr}");
    let id = stderr
        .lines()
        .find_map(|l| l.strip_prefix("berth: submitted run "))
        .unwrap_or_else(|| panic!("no run id in {stderr}"))
        .trim()
        .to_string();
    let server = format!("--server {}", c.url);
    for want in [
        format!("detached: run {id} goes on on the server"),
        format!("berth logs -f {id} {server}"),
        format!("berth cancel {id} {server}"),
        "press Ctrl-C again within 2s to cancel it now".to_string(),
    ] {
        assert!(stderr.contains(&want), "{want:?} not in:\n{stderr}");
    }
    // One Ctrl-C does not cancel: past the two seconds, the run still runs.
    std::thread::sleep(Duration::from_millis(2500));
    let run = c.run(&id);
    assert_eq!(run["state"], "running", "{run}");
    assert_eq!(run["cancel_requested"], false, "{run}");

    let logs = Following::spawn(&c, &secret, &["logs", "-f", &id]);
    logs.wait_line("ready");
    logs.interrupt();
    std::thread::sleep(Duration::from_millis(300));
    logs.interrupt();
    let (code, stderr) = logs.finish();
    assert_eq!(code, Some(130), "{stderr}");
    assert!(stderr.contains(&format!("berth cancel {id}")), "{stderr}");
    assert!(stderr.contains(&format!("run {id}: ")), "{stderr}");
    let run = c.wait_final(&id, Duration::from_secs(30));
    assert_eq!(run["state"], "cancelled", "{run}");
    let show = c.show(&id);
    let last = show["audit"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["to_state"], "cancelled", "{show}");
    let reason = last["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&format!("cancel asked by token:{token_id}")),
        "{show}"
    );
    assert!(!show.to_string().contains(&secret), "{show}");
}

// Honest queueing: a submission no online or recently seen runner could claim (its tags) is
// warned about by the server (`warnings`) and by `berth submit`, and `berth show` says why the
// queued run waits; one that a runner can take gets no warning.
#[test]
fn sqlite_a_run_no_runner_could_claim_is_warned_about() {
    let mut c = Cluster::start(Db::Sqlite);
    let project = c.project.clone();
    let submit = |c: &Cluster, tags: &[&str]| {
        let mut args = vec!["submit", "--project", &project, "--image", image()];
        args.extend_from_slice(tags);
        args.extend(["--", "true"]);
        let o = c.cli(&args);
        assert!(o.status.success(), "{}", text(&o.stderr));
        (text(&o.stdout).trim().to_string(), text(&o.stderr))
    };
    // No runner at all yet.
    let (id, stderr) = submit(&c, &[]);
    assert!(
        stderr.contains(&format!(
            "warning: run {id}: no runner is online or was seen"
        )),
        "{stderr}"
    );
    c.cli(&["cancel", &id]);

    let name = c.runner("cpu", &["--tags", "linux"]);
    let (gpu, stderr) = submit(&c, &["--tags", "gpu"]);
    let want = "no runner online or seen in the last hour has the tags gpu";
    assert!(
        stderr.contains(&format!("warning: run {gpu}: {want}")),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("{name} [linux")), "{stderr}");
    let run = c.run(&gpu);
    assert_eq!(run["state"], "queued", "{run}");
    assert!(
        run["warnings"][0]
            .as_str()
            .unwrap_or_default()
            .contains(want),
        "{run}"
    );
    let o = c.cli(&["show", &gpu]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains(&format!("   waiting: {want}")),
        "{}",
        text(&o.stdout)
    );

    // What the runner can take: no warning, and it runs.
    let (linux, stderr) = submit(&c, &["--tags", "linux"]);
    assert!(!stderr.contains("warning"), "{stderr}");
    let run = c.wait_final(&linux, Duration::from_secs(60));
    assert_eq!(run["state"], "succeeded", "{run}");
    assert!(run.get("warnings").is_none(), "{run}");
    c.cli(&["cancel", &gpu]);
}

/// `berth submit --ref`: the runner makes the workspace from that commit of the project's
/// checkout (worktree mode: a worktree of it; copy mode: its tree, not the checkout's files),
/// records the commit, fetches first with `--fetch`; an unknown ref ends the run naming it, a
/// malformed one is refused by the server. Host-side git runs none of the checkout's hooks nor
/// its fsmonitor. `berth branch` on the server run makes a branch of the recorded commit.
#[test]
fn sqlite_submit_ref_runs_on_that_commit() {
    let mut c = Cluster::start(Db::Sqlite);
    let ws = c.path().join("ws");
    // The test's own git in the checkout runs none of the hooks planted below either.
    let git = |args: &[&str]| {
        let mut all = vec![
            "-c",
            "core.fsmonitor=false",
            "-c",
            "core.hooksPath=/dev/null",
        ];
        all.extend_from_slice(args);
        git(&ws, &all)
    };
    git(&["init", "-q", "-b", "main"]);
    std::fs::write(ws.join("file.txt"), "one\n").unwrap();
    git(&["add", "file.txt"]);
    git(&["commit", "-qm", "first"]);
    git(&["tag", "v1"]);
    let first = git(&["rev-parse", "HEAD"]).trim().to_string();
    std::fs::write(ws.join("file.txt"), "two\n").unwrap();
    git(&["commit", "-qam", "second"]);
    let second = git(&["rev-parse", "HEAD"]).trim().to_string();
    // A remote with a commit the checkout has not fetched yet.
    let remote = c.path().join("remote.git");
    let remote_text = remote.display().to_string();
    git(&["clone", "-q", "--bare", ".", &remote_text]);
    git(&["remote", "add", "origin", &remote_text]);
    git(&["fetch", "-q", "origin"]);
    let other = c.path().join("other");
    support::git(
        c.path(),
        &["clone", "-q", &remote_text, &other.display().to_string()],
    );
    std::fs::write(other.join("file.txt"), "three\n").unwrap();
    support::git(&other, &["commit", "-qam", "third"]);
    support::git(&other, &["push", "-q", "origin", "main"]);
    let third = support::git(&other, &["rev-parse", "HEAD"])
        .trim()
        .to_string();
    // The attack: the checkout's own config and hooks name commands host-side git would run.
    let marker = c.path().join("ran");
    let hook = c.path().join("hook.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho \"$0 $*\" >> {}\nexit 0\n",
            marker.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    git(&["config", "core.fsmonitor", &hook.display().to_string()]);
    for name in [
        "post-checkout",
        "reference-transaction",
        "post-index-change",
    ] {
        let path = ws.join(".git/hooks").join(name);
        std::fs::copy(&hook, &path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let _runner = c.runner("refs", &[]);
    let lines = |id: &str| -> Vec<String> {
        c.stdout_lines(id)
            .iter()
            .map(|l| l.trim_end().to_string())
            .collect()
    };

    // Worktree mode on the older commit: its files, and the commit recorded.
    let id = c.submit(
        &["--workspace-mode", "worktree", "--ref", &first[..10]],
        &["sh", "-c", "cat file.txt && echo changed >> file.txt"],
    );
    let run = c.wait_final(&id, Duration::from_secs(60));
    assert_eq!(run["state"], "succeeded", "{run}\n{}", c.all_log_tails());
    assert_eq!(lines(&id), ["one"], "{}", c.all_log_tails());
    assert_eq!(run["commit"], first.as_str(), "{run}");
    assert_eq!(run["sandbox"]["git_ref"], &first[..10], "{run}");
    let o = c.cli(&["show", &id]);
    assert!(
        text(&o.stdout).contains(&format!("commit: {first}")),
        "{}",
        text(&o.stdout)
    );
    // `berth branch` on the server's run: a branch of that commit with the run's changes,
    // the checkout's files and HEAD untouched.
    let mut cmd = c.berth(&["branch", &id, "--server", &c.url, "--token", &c.client]);
    cmd.current_dir(&ws);
    let o = output_within(&mut cmd, Duration::from_secs(60));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let branch = format!("berth/{id}");
    assert_eq!(text(&o.stdout).trim(), branch);
    assert_eq!(
        git(&["show", &format!("{branch}:file.txt")]),
        "one\nchanged\n"
    );
    assert_eq!(git(&["rev-parse", &format!("{branch}^")]).trim(), first);
    assert_eq!(git(&["rev-parse", "HEAD"]).trim(), second);
    assert_eq!(git(&["status", "--porcelain"]).trim(), "");

    // Copy mode from a tag: that commit's tree, not the checkout's changed or untracked files.
    std::fs::write(ws.join("file.txt"), "dirty\n").unwrap();
    std::fs::write(ws.join("untracked.txt"), "x\n").unwrap();
    let id = c.submit(
        &["--workspace-mode", "copy", "--ref", "v1"],
        &["sh", "-c", "cat file.txt; ls; echo copied > new.txt"],
    );
    let run = c.wait_final(&id, Duration::from_secs(60));
    assert_eq!(run["state"], "succeeded", "{run}\n{}", c.all_log_tails());
    assert_eq!(lines(&id), ["one", "file.txt"], "{}", c.all_log_tails());
    assert_eq!(run["commit"], first.as_str(), "{run}");
    let (status, patch) = c.http(
        "GET",
        &format!("/api/v1/runs/{id}/artifacts/berth/diff.patch"),
        Some(&c.client),
        None,
        &[],
    );
    assert_eq!(status, 200, "{patch}");
    assert!(
        patch.contains("+copied") && !patch.contains("dirty"),
        "{patch}"
    );
    assert_eq!(
        std::fs::read_to_string(ws.join("file.txt")).unwrap(),
        "dirty\n"
    );
    git(&["checkout", "-q", "file.txt"]);
    std::fs::remove_file(ws.join("untracked.txt")).unwrap();

    // A remote-tracking ref is what the checkout has, unless the runner fetches first.
    let id = c.submit(
        &["--workspace-mode", "worktree", "--ref", "origin/main"],
        &["cat", "file.txt"],
    );
    let run = c.wait_final(&id, Duration::from_secs(60));
    assert_eq!(run["state"], "succeeded", "{run}\n{}", c.all_log_tails());
    assert_eq!(lines(&id), ["two"]);
    assert_eq!(run["commit"], second.as_str(), "{run}");
    let id = c.submit(
        &[
            "--workspace-mode",
            "worktree",
            "--ref",
            "origin/main",
            "--fetch",
        ],
        &["cat", "file.txt"],
    );
    let run = c.wait_final(&id, Duration::from_secs(60));
    assert_eq!(run["state"], "succeeded", "{run}\n{}", c.all_log_tails());
    assert_eq!(lines(&id), ["three"]);
    assert_eq!(run["commit"], third.as_str(), "{run}");
    assert_eq!(git(&["rev-parse", "HEAD"]).trim(), second, "HEAD stays");

    // An unknown ref ends the run in error, naming it.
    let id = c.submit(
        &["--workspace-mode", "worktree", "--ref", "no-such-branch"],
        &["true"],
    );
    let run = c.wait_final(&id, Duration::from_secs(60));
    assert_eq!(run["state"], "error", "{run}");
    let reason = run["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("`no-such-branch`") && reason.contains("names no commit"),
        "{run}"
    );
    assert!(run["commit"].is_null(), "{run}");

    // A ref that git could take for an option never reaches a runner.
    let project = c.project.clone();
    for bad in ["--upload-pack=touch /tmp/pwned", "main..evil", "a b"] {
        let o = c.cli(&[
            "submit",
            "--project",
            &project,
            "--image",
            image(),
            "--workspace-mode",
            "worktree",
            &format!("--ref={bad}"),
            "--",
            "true",
        ]);
        assert!(!o.status.success(), "{bad}");
        let err = text(&o.stderr);
        assert!(
            err.contains("422") || err.contains("sandbox.git_ref"),
            "{bad}: {err}"
        );
        assert!(err.contains("sandbox.git_ref"), "{bad}: {err}");
    }
    assert!(
        !marker.exists(),
        "host-side git ran the checkout's hooks or fsmonitor: {}",
        std::fs::read_to_string(&marker).unwrap_or_default()
    );
}

/// Runners declare their secrets at registration; a run naming one that no runner able to
/// claim it declared is flagged at submit; a declared secret that is not set stops the runner.
#[test]
fn sqlite_secrets_no_runner_declared_are_warned_about() {
    let mut c = Cluster::start(Db::Sqlite);
    let project = c.project.clone();
    // The runner's environment holds more than it declares: its own token (as
    // `BERTH_TOKEN=… berth runner` would have it) and a variable of the host's.
    let runner_token = c.runner_token.clone();
    let name = c.runner_with_env(
        "secrets",
        &["--secret", "DEPLOY_KEY"],
        &[
            ("DEPLOY_KEY", "s3cr3t-value".to_string()),
            ("BERTH_TOKEN", runner_token.clone()),
            ("HOST_ONLY", "h0st-only-value".to_string()),
        ],
    );
    let o = c.cli(&["runners", "--json"]);
    let runners: Value = serde_json::from_slice(&o.stdout).unwrap();
    let listed = runners
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == name.as_str())
        .unwrap();
    assert_eq!(listed["secrets"], serde_json::json!(["DEPLOY_KEY"]));
    let submit = |secret: &str| {
        let o = c.cli(&[
            "submit",
            "--project",
            &project,
            "--image",
            image(),
            "--secret",
            secret,
            "--",
            "sh",
            "-c",
            "test -s /run/secrets/DEPLOY_KEY",
        ]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        (text(&o.stdout).trim().to_string(), text(&o.stderr))
    };
    let (missing, stderr) = submit("OTHER_TOKEN");
    assert!(
        stderr.contains(&format!(
            "warning: run {missing}: no runner that could claim it declared the secrets OTHER_TOKEN"
        )) && stderr.contains(&format!("{name} [DEPLOY_KEY]")),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cr3t-value"));
    // The warning was right: the runner that claimed it had no such secret.
    let run = c.wait_final(&missing, Duration::from_secs(60));
    assert_eq!(run["state"], "error", "{run}");
    assert!(
        run["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("secret `OTHER_TOKEN` is not one this runner passes"),
        "{run}"
    );
    // A client cannot read what the runner did not declare: its token, a host variable. The
    // run ends in error before anything starts, and no output carries the value in any form.
    for undeclared in ["BERTH_TOKEN", "HOST_ONLY"] {
        let o = c.cli(&[
            "submit",
            "--project",
            &project,
            "--image",
            image(),
            "--secret",
            undeclared,
            "--",
            "sh",
            "-c",
            &format!("cat /run/secrets/{undeclared} | rev; rev /run/secrets/{undeclared}"),
        ]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let id = text(&o.stdout).trim().to_string();
        let run = c.wait_final(&id, Duration::from_secs(60));
        assert_eq!(run["state"], "error", "{run}");
        assert!(
            run["reason"]
                .as_str()
                .unwrap_or_default()
                .contains(&format!(
                    "secret `{undeclared}` is not one this runner passes"
                ))
                && run["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("DEPLOY_KEY"),
            "{run}"
        );
        assert!(c.stdout_lines(&id).is_empty(), "{:?}", c.stdout_lines(&id));
        let (_, events) = c.http(
            "GET",
            &format!("/api/v1/runs/{id}/events"),
            Some(&c.client),
            None,
            &[],
        );
        for value in [runner_token.as_str(), "h0st-only-value"] {
            let reversed: String = value.chars().rev().collect();
            assert!(
                !events.contains(value) && !events.contains(&reversed),
                "{events}"
            );
        }
    }
    let (declared, stderr) = submit("DEPLOY_KEY");
    assert!(!stderr.contains("warning"), "{stderr}");
    let run = c.wait_final(&declared, Duration::from_secs(60));
    assert_eq!(run["state"], "succeeded", "{run}\n{}", c.all_log_tails());

    // A runner that declares a secret it does not have refuses to start, naming it.
    let mut cmd = c.runner_command("nosecret", &["--secret", "NOT_SET_ANYWHERE"]);
    cmd.env_remove("NOT_SET_ANYWHERE");
    let o = output_within(&mut cmd, Duration::from_secs(30));
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains("--secret NOT_SET_ANYWHERE") && err.contains("hint:"),
        "{err}"
    );
    // Nor can a runner declare berth's own variables.
    let mut cmd = c.runner_command("owntoken", &["--secret", "BERTH_TOKEN"]);
    cmd.env("BERTH_TOKEN", &c.runner_token);
    let o = output_within(&mut cmd, Duration::from_secs(30));
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains("--secret BERTH_TOKEN: berth's own variables"),
        "{err}"
    );
    // Registered names are validated by the server too.
    let (status, body) = c.http(
        "POST",
        "/api/v1/runners/register",
        Some(&c.runner_token),
        Some(r#"{"name":"badsecret","secrets":["NOT-A-NAME"]}"#),
        &[],
    );
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("secrets[0]"), "{body}");
}

/// `berth ls --json` and `berth show --json` have one shape whether the run is local or the
/// server's: the same top-level fields, `detail` with the source's own record, and every
/// timestamp RFC 3339 in UTC with milliseconds. A local run that answers for an id prefix the
/// server also matches is shown, and berth names what it shadows.
#[test]
fn sqlite_ls_and_show_json_have_one_shape_locally_and_from_the_server() {
    let mut c = Cluster::start(Db::Sqlite);
    let _runner = c.runner("json", &[]);
    let server_id = c.submit(&[], &["sh", "-c", "exit 3"]);
    let run = c.wait_final(&server_id, Duration::from_secs(60));
    assert_eq!(run["state"], "failed", "{run}\n{}", c.all_log_tails());
    let here = c.path().join("local");
    std::fs::create_dir_all(&here).unwrap();
    let in_here = |args: &[&str]| {
        let mut cmd = c.berth(args);
        cmd.current_dir(&here);
        output_within(&mut cmd, Duration::from_secs(120))
    };
    let o = in_here(&["run", "--image", image(), "--", "sh", "-c", "exit 3"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));

    let json = |o: &Output| -> Value {
        assert!(o.status.success(), "{}", text(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let local_list = json(&in_here(&["ls", "--json"]));
    let server_list = json(&c.cli(&["ls", "--json"]));
    let keys = |v: &Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
    assert_eq!(keys(&local_list), ["next", "runs"]);
    assert_eq!(keys(&server_list), ["next", "runs"]);
    let local = &local_list["runs"][0];
    let server = server_list["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == server_id.as_str())
        .unwrap();
    assert_eq!(keys(local), keys(server), "{local}\n{server}");
    assert_eq!(
        (&local["source"], &server["source"]),
        (&Value::from("local"), &Value::from("server"))
    );
    for run in [local, server] {
        assert_eq!(run["state"], "failed", "{run}");
        assert_eq!(run["exit_code"], 3, "{run}");
        assert_eq!(
            run["command"],
            serde_json::json!(["sh", "-c", "exit 3"]),
            "{run}"
        );
        assert!(run["detail"].is_object(), "{run}");
    }
    let local_id = local["id"].as_str().unwrap().to_string();

    let local_shown = json(&in_here(&["show", &local_id, "--json"]));
    let server_shown = json(&c.cli(&["show", &server_id, "--json"]));
    assert_eq!(keys(&local_shown), ["audit", "run"]);
    assert_eq!(keys(&server_shown), ["audit", "run"]);
    assert_eq!(local_shown["run"], *local);
    assert_eq!(keys(&server_shown["run"]), keys(local));
    assert!(local_shown["audit"].is_null());
    assert!(!server_shown["audit"].as_array().unwrap().is_empty());

    // One timestamp format, everywhere in the output.
    fn times(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    match v {
                        Value::String(s)
                            if [
                                "created_at",
                                "claimed_at",
                                "started_at",
                                "finished_at",
                                "ts",
                            ]
                            .contains(&k.as_str()) =>
                        {
                            out.push(s.clone())
                        }
                        _ => times(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| times(i, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    for v in [&local_list, &server_list, &local_shown, &server_shown] {
        times(v, &mut all);
    }
    assert!(all.len() >= 12, "{all:?}");
    let rfc3339_ms = |s: &str| {
        let b = s.as_bytes();
        b.len() == 24
            && s.ends_with('Z')
            && b[10] == b'T'
            && b[19] == b'.'
            && time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .is_ok()
    };
    let odd: Vec<&String> = all.iter().filter(|s| !rfc3339_ms(s)).collect();
    assert!(
        odd.is_empty(),
        "not RFC 3339 UTC with milliseconds: {odd:?}"
    );

    // A prefix both ids share: the local run answers, and berth names the server's match.
    let shared: String = local_id
        .chars()
        .zip(server_id.chars())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a)
        .collect();
    assert!(shared.len() >= 4, "{local_id} {server_id}");
    let o = in_here(&["show", &shared, "--server", &c.url, "--token", &c.client]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(
        err.contains("the local run answered, not the server")
            && err.contains(&format!("`{shared}` also matches"))
            && err.contains(&c.url),
        "{err}"
    );
    assert!(text(&o.stdout).contains(&local_id));
    // The full local id matches nothing of the server's: no such warning.
    let o = in_here(&["show", &local_id, "--server", &c.url, "--token", &c.client]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        !text(&o.stderr).contains("also matches"),
        "{}",
        text(&o.stderr)
    );
}
