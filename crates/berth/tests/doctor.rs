//! `berth doctor` and the local fallback, against the real binary: every diagnosis is provoked
//! for real (missing, refused and forbidden sockets, bad DOCKER_HOST values, a fake engine that
//! speaks the wrong API or reports missing limits or a rootless daemon, a missing image, a data
//! root on a tiny tmpfs, and Docker hidden in a private mount namespace).
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod support;

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;
use support::ssh::ClosedPort;
use support::{berth_bin, stderr, stdout, Workspace};

/// The uid and gid of `nobody`.
const NOBODY: u32 = 65534;

/// One diagnosis, asked twice: `doctor --json` and the human form.
struct Doctor {
    report: Value,
    exit: i32,
    human: Output,
}

/// Runs `doctor EXTRA --json` and `doctor EXTRA` with commands made by `make`.
fn doctor_with(make: impl Fn(&[&str]) -> Command, extra: &[&str]) -> Doctor {
    let mut args = vec!["doctor"];
    args.extend_from_slice(extra);
    let human = make(&args).output().expect("starting berth doctor");
    args.push("--json");
    let out = make(&args).output().expect("starting berth doctor --json");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "`berth {}` printed no JSON report ({e})\nstdout: {}\nstderr: {}",
            args.join(" "),
            stdout(&out),
            stderr(&out)
        )
    });
    Doctor {
        report,
        exit: out.status.code().unwrap_or(-1),
        human,
    }
}

/// `berth doctor` in a fresh workspace with `env` added to berth's clean environment.
fn diagnose(env: &[(&str, &str)]) -> Doctor {
    let ws = Workspace::new();
    doctor_with(
        |args| {
            let mut cmd = ws.berth(args);
            cmd.envs(env.iter().copied());
            cmd
        },
        &[],
    )
}

/// The report is exactly the diagnosis `code`, its message names every needle, it has a hint,
/// and both forms agree and exit 1.
fn assert_problem(d: &Doctor, code: &str, needles: &[&str]) {
    let r = &d.report;
    assert_eq!(r["diagnosis"], code, "wrong diagnosis: {r:#}");
    assert_eq!(r["ok"], false, "{r:#}");
    assert_eq!(d.exit, 1, "doctor --json must exit 1 on a problem: {r:#}");
    let message = r["message"].as_str().expect("a message");
    for needle in needles {
        assert!(
            message.contains(needle),
            "the message does not name `{needle}`: {message}"
        );
    }
    let hint = r["hint"].as_str().expect("a hint");
    assert!(!hint.trim().is_empty(), "{r:#}");
    assert!(
        !r.to_string().to_lowercase().contains("unknown error"),
        "{r:#}"
    );

    // Without --json: `error:` and `hint:` on stderr, nothing on stdout, exit 1.
    let (out, err) = (stdout(&d.human), stderr(&d.human));
    assert_eq!(d.human.status.code(), Some(1), "human doctor: {err}");
    assert!(
        out.is_empty(),
        "human doctor printed data on a problem: {out}"
    );
    assert_eq!(err, format!("error: {message}\nhint: {hint}\n"));
}

/// A temp dir anybody may enter (tempfile makes them 0700).
fn open_tempdir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A socket file nobody answers on: connect is refused.
///
/// The socket is bound but never listens, then closed. Binding a `UnixListener` and dropping it
/// is racy: a child forked by a sibling test while the listener is open inherits it until it
/// execs, and meanwhile `connect` succeeds. A socket that never listened refuses connections
/// whoever holds a copy of it, so this cannot be revived. (Creating and binding a tokio socket
/// needs no runtime: it is a plain socket until it listens or connects.)
fn refused_socket(dir: &Path) -> PathBuf {
    let path = dir.join("dead.sock");
    let socket = tokio::net::UnixSocket::new_stream().unwrap();
    socket.bind(&path).unwrap();
    drop(socket);
    assert!(path.exists(), "the socket file must outlive its socket");
    let refused = UnixStream::connect(&path).unwrap_err();
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{refused}"
    );
    path
}

fn assert_root(what: &str) {
    let euid = std::fs::metadata("/proc/self").unwrap().uid();
    assert_eq!(euid, 0, "{what} needs the tests to run as root (they run as uid {euid}); this test cannot pass otherwise");
}

#[test]
fn ok_with_an_image_measures_the_sandbox_start() {
    let ws = Workspace::new();
    let image = support::image();
    let d = doctor_with(|args| ws.berth(args), &["--image", image]);
    let r = &d.report;
    assert_eq!(d.exit, 0, "{r:#}\nhuman stderr: {}", stderr(&d.human));
    assert_eq!(r["ok"], true, "{r:#}");
    assert_eq!(r["diagnosis"], "ok", "{r:#}");
    assert!(r["hint"].is_null(), "{r:#}");
    let api = r["engine"]["api_version"].as_str().unwrap_or_default();
    assert!(api.starts_with("1."), "engine.api_version: {r:#}");
    let negotiated = r["engine"]["negotiated_api_version"]
        .as_str()
        .unwrap_or_default();
    assert!(negotiated.starts_with("1."), "{r:#}");
    let start_ms = r["start_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("start_ms is not a number: {r:#}"));
    assert!(start_ms > 0, "{r:#}");
    assert!(
        !r.to_string().to_lowercase().contains("unknown error"),
        "{r:#}"
    );

    assert_eq!(d.human.status.code(), Some(0), "{}", stderr(&d.human));
    let out = stdout(&d.human);
    assert!(out.starts_with("ok: Docker Engine "), "{out}");
    assert!(
        out.contains("sandbox start:") && out.contains(&format!("API {api}")),
        "{out}"
    );

    // Without --image, the start time is not measured and a note says why.
    let d = doctor_with(|args| ws.berth(args), &[]);
    assert_eq!(
        (d.exit, &d.report["diagnosis"]),
        (0, &Value::from("ok")),
        "{:#}",
        d.report
    );
    assert!(d.report["start_ms"].is_null(), "{:#}", d.report);
    assert!(
        d.report["notes"][0]
            .as_str()
            .unwrap_or_default()
            .contains("--image"),
        "{:#}",
        d.report
    );
}

#[test]
fn docker_host_problems_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.sock");
    let missing_host = format!("unix://{}", missing.display());
    let refused = refused_socket(dir.path());
    let refused_host = format!("unix://{}", refused.display());
    // Refuses connections until the test ends (a port merely free a moment ago may not).
    let closed = ClosedPort::bind();
    let port = closed.port;
    let tcp_host = format!("tcp://127.0.0.1:{port}");
    let missing_text = missing.display().to_string();
    let refused_text = refused.display().to_string();

    let cases: &[(&str, &str, &[&str])] = &[
        (
            &missing_host,
            "docker_host_unreachable",
            &[&missing_text, "does not exist"],
        ),
        (
            &refused_host,
            "daemon_not_running",
            &[&refused_text, "connection refused"],
        ),
        (
            "nonsense",
            "docker_host_malformed",
            &["`nonsense`", "scheme"],
        ),
        (
            "tcp://127.0.0.1:notaport",
            "docker_host_malformed",
            &[
                "`tcp://127.0.0.1:notaport`",
                "`notaport` is not a port number",
            ],
        ),
        (&tcp_host, "docker_host_unreachable", &[&tcp_host]),
    ];
    for (value, code, needles) in cases {
        println!("DOCKER_HOST={value} -> {code}");
        let d = diagnose(&[("DOCKER_HOST", value)]);
        assert_problem(&d, code, needles);
    }
}

#[test]
fn permission_denied_names_the_socket_and_its_group() {
    assert_root("running berth as nobody");
    let dir = open_tempdir("berth-perm-");
    let socket = dir.path().join("docker.sock");
    let _listener = UnixListener::bind(&socket).unwrap();
    assert_eq!(std::fs::metadata(&socket).unwrap().uid(), 0);

    // nobody must be able to reach the binary; if any directory on the way is closed, run a copy.
    let reachable = berth_bin()
        .ancestors()
        .skip(1)
        .all(|d| std::fs::metadata(d).is_ok_and(|m| m.mode() & 0o001 != 0))
        && std::fs::metadata(berth_bin()).is_ok_and(|m| m.mode() & 0o005 == 0o005);
    let program = if reachable {
        berth_bin()
    } else {
        let copy = dir.path().join("berth");
        std::fs::copy(berth_bin(), &copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
        copy
    };
    let host = format!("unix://{}", socket.display());
    let as_nobody = |args: &[&str]| {
        let mut cmd = Command::new(&program);
        cmd.args(args)
            .current_dir(dir.path())
            .env_remove("BERTH_STATE_DIR")
            .env("DOCKER_HOST", &host)
            .env("NO_COLOR", "1")
            .env("HOME", dir.path())
            .env("XDG_CACHE_HOME", dir.path().join(".cache"))
            .env("XDG_CONFIG_HOME", dir.path().join(".config"))
            .uid(NOBODY)
            .gid(NOBODY);
        cmd
    };

    // Group read-write (like Docker's own root:docker 0660): joining the group is the fix.
    // Owner only: the group would not help, so the hint must not send anyone there.
    for mode in [0o660, 0o600] {
        println!("socket mode {mode:o}");
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(mode)).unwrap();
        let d = doctor_with(as_nobody, &[]);
        assert_problem(&d, "permission_denied", &[&socket.display().to_string()]);
        let hint = d.report["hint"].as_str().unwrap();
        let group =
            group_name(std::fs::metadata(&socket).unwrap().gid()).filter(|_| mode & 0o060 == 0o060);
        match group {
            Some(group) => assert!(
                hint.contains(&format!(
                    "`{group}` group (`sudo usermod -aG {group} $USER`)"
                )),
                "hint should name group `{group}`: {hint}"
            ),
            None => assert!(
                hint.contains("administrator") && !hint.contains("usermod"),
                "{hint}"
            ),
        }
    }
}

/// The name of group `gid`, from /etc/group (as the diagnosis reads it).
fn group_name(gid: u32) -> Option<String> {
    std::fs::read_to_string("/etc/group")
        .ok()?
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.len() > 2 && fields[2].parse() == Ok(gid)).then(|| fields[0].to_string())
        })
}

/// A fake engine on a Unix socket that answers `/version` and `/info` with fixed JSON bodies and
/// everything else with `{}`. It stops and its thread ends when dropped.
struct FakeEngine {
    socket: PathBuf,
    paths: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl FakeEngine {
    fn start(version: &str, info: &str) -> Self {
        let bodies = Arc::new((version.to_string(), info.to_string()));
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("fake-engine.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        listener.set_nonblocking(true).unwrap();
        let paths = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (paths, stop) = (paths.clone(), stop.clone());
            let bodies = bodies.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            if let Some(path) = answer(conn, &bodies.0, &bodies.1) {
                                paths.lock().unwrap().push(path);
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(10))
                        }
                        Err(e) => panic!("fake engine: accept failed: {e}"),
                    }
                }
            })
        };
        Self {
            socket,
            paths,
            stop,
            thread: Some(thread),
            _dir: dir,
        }
    }

    fn docker_host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Asserts that the engine was asked for `endpoint` (e.g. `/info`), with or without an API
    /// version prefix.
    fn assert_asked(&self, endpoint: &str) {
        let paths = self.paths.lock().unwrap().clone();
        assert!(
            paths
                .iter()
                .any(|p| p.split('?').next().unwrap_or_default().ends_with(endpoint)),
            "the fake engine was never asked for {endpoint}: {paths:?}"
        );
    }
}

impl Drop for FakeEngine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let result = thread.join();
            if !std::thread::panicking() {
                result.unwrap();
            }
        }
    }
}

/// Reads one request's head and answers it; returns the request path.
fn answer(mut conn: UnixStream, version: &str, info: &str) -> Option<String> {
    conn.set_nonblocking(false).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        let n = conn.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.lines().next()?.split_whitespace().nth(1)?.to_string();
    let bare = path.split('?').next().unwrap_or_default();
    let body = if bare.ends_with("/version") {
        version
    } else if bare.ends_with("/info") {
        info
    } else {
        "{}"
    };
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(response.as_bytes()).ok()?;
    let _ = conn.flush();
    let _ = conn.shutdown(std::net::Shutdown::Both);
    Some(path)
}

#[test]
fn engine_api_out_of_range() {
    let cases: &[(&'static str, &str, &[&str])] = &[
        (
            r#"{"Version":"1.2.3-fake","ApiVersion":"1.24","MinAPIVersion":"1.12"}"#,
            "api_too_old",
            &["1.2.3-fake", "API 1.24", "1.41"],
        ),
        (
            r#"{"Version":"99.0","ApiVersion":"1.99","MinAPIVersion":"1.90"}"#,
            "api_too_new",
            &["99.0", "API 1.90"],
        ),
    ];
    for (version, code, needles) in cases {
        println!("fake engine {version} -> {code}");
        let engine = FakeEngine::start(version, "{}");
        let d = diagnose(&[("DOCKER_HOST", &engine.docker_host())]);
        assert_problem(&d, code, needles);
        engine.assert_asked("/version");
    }
}

/// A `/version` answer in berth's supported API range.
const GOOD_VERSION: &str =
    r#"{"Version":"20.10.99-fake","ApiVersion":"1.41","MinAPIVersion":"1.12","Os":"linux"}"#;

/// An `/info` answer: limits as given, security options as given, the data root `root_dir`.
fn info_json(memory: bool, swap: bool, pids: bool, security: &[&str], root_dir: &str) -> String {
    serde_json::json!({
        "MemoryLimit": memory,
        "SwapLimit": swap,
        "PidsLimit": pids,
        "SecurityOptions": security,
        "DockerRootDir": root_dir,
        "Driver": "overlay2",
        "CgroupVersion": "2",
        "OperatingSystem": "Fake Linux",
        "Runtimes": {"runc": {"path": "runc"}},
    })
    .to_string()
}

/// The engine's facts came with the problem: it was reached and its `/info` read.
fn assert_engine_facts(d: &Doctor, engine: &FakeEngine, root_dir: &str) {
    let facts = &d.report["engine"];
    assert_eq!(facts["engine_version"], "20.10.99-fake", "{:#}", d.report);
    assert_eq!(facts["api_version"], "1.41", "{:#}", d.report);
    assert_eq!(facts["data_root"], root_dir, "{:#}", d.report);
    engine.assert_asked("/version");
    engine.assert_asked("/info");
}

#[test]
fn limits_unsupported_names_the_missing_limits() {
    let info = info_json(
        false,
        true,
        false,
        &["name=seccomp,profile=default"],
        "/var/lib/docker",
    );
    let engine = FakeEngine::start(GOOD_VERSION, &info);
    let d = diagnose(&[("DOCKER_HOST", &engine.docker_host())]);
    assert_problem(&d, "limits_unsupported", &["memory and pids"]);
    let message = d.report["message"].as_str().unwrap();
    assert!(
        !message.contains("swap"),
        "swap limits are supported: {message}"
    );
    let hint = d.report["hint"].as_str().unwrap();
    assert!(hint.contains("cgroup"), "{hint}");
    assert_engine_facts(&d, &engine, "/var/lib/docker");
}

#[test]
fn rootless_engine_is_named() {
    let root = tempfile::tempdir().unwrap();
    let root_dir = root.path().display().to_string();
    let info = info_json(
        true,
        true,
        true,
        &["name=seccomp,profile=default", "name=rootless"],
        &root_dir,
    );
    let engine = FakeEngine::start(GOOD_VERSION, &info);
    let d = diagnose(&[("DOCKER_HOST", &engine.docker_host())]);
    assert_problem(&d, "rootless", &["rootless"]);
    assert!(
        d.report["hint"].as_str().unwrap().contains("rootful"),
        "{:#}",
        d.report
    );
    assert_engine_facts(&d, &engine, &root_dir);
}

#[test]
fn low_disk_names_the_data_root_and_its_free_space() {
    let ws = Workspace::new();
    // The data root: a directory that, inside berth's mount namespace, is a 1 MiB tmpfs.
    let root = open_tempdir("berth-tiny-root-");
    let root_dir = root.path().display().to_string();
    let info = info_json(
        true,
        true,
        true,
        &["name=seccomp,profile=default"],
        &root_dir,
    );
    let engine = FakeEngine::start(GOOD_VERSION, &info);
    let host = engine.docker_host();
    let script = r#"
mount -t tmpfs -o size=1m berth-test "$BERTH_TEST_TINY_ROOT" || { echo "berth-test: cannot mount a tmpfs over $BERTH_TEST_TINY_ROOT" >&2; exit 97; }
exec "$0" "$@"
"#;
    let env = [
        ("DOCKER_HOST", host.as_str()),
        ("BERTH_TEST_TINY_ROOT", root_dir.as_str()),
    ];
    let doctor = |args: &[&str]| in_private_mounts(&ws, script, args, &env);
    let out = doctor(&["doctor", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e})\nstdout: {}\nstderr: {}",
            stdout(&out),
            stderr(&out)
        )
    });
    let d = Doctor {
        report,
        exit: out.status.code().unwrap_or(-1),
        human: doctor(&["doctor"]),
    };
    assert_problem(
        &d,
        "low_disk",
        &[&format!("data root {root_dir} has only 1 MiB free")],
    );
    assert!(
        d.report["hint"]
            .as_str()
            .unwrap()
            .contains("docker system prune"),
        "{:#}",
        d.report
    );
    assert_engine_facts(&d, &engine, &root_dir);
}

#[test]
fn image_missing_names_the_image() {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let image = format!("berth-test-no-such-image:{}-{nanos}", std::process::id());
    let ws = Workspace::new();
    let d = doctor_with(|args| ws.berth(args), &["--image", &image]);
    assert_problem(&d, "image_missing", &[&image]);
    assert!(
        d.report["hint"].as_str().unwrap().contains(&image),
        "{:#}",
        d.report
    );
    // The engine was reached, so its facts come with the problem.
    assert!(
        d.report["engine"]["api_version"].is_string(),
        "{:#}",
        d.report
    );
}

/// Exit codes of the namespace setup script, to tell its failures from berth's.
const SETUP_FAILED: i32 = 97;
const SOCKET_STILL_VISIBLE: i32 = 98;

/// `berth ARGS` in a private mount namespace where /run (and /var/run) are empty tmpfs mounts, so
/// there is no Docker socket, with DOCKER_HOST unset and a PATH without the docker program: to
/// berth, Docker is not installed.
fn without_docker(ws: &Workspace, args: &[&str]) -> Output {
    let script = r#"
mount -t tmpfs berth-test /run || { echo "berth-test: cannot mount a tmpfs over /run" >&2; exit 97; }
if [ ! -L /var/run ]; then
  mount -t tmpfs berth-test /var/run || { echo "berth-test: cannot mount a tmpfs over /var/run" >&2; exit 97; }
fi
if [ -e /var/run/docker.sock ] || [ -e /run/docker.sock ]; then
  echo "berth-test: the Docker socket is still visible" >&2; exit 98
fi
PATH=/nonexistent-bin exec "$0" "$@"
"#;
    in_private_mounts(ws, script, args, &[])
}

/// `berth ARGS` in a private mount namespace, started by the sh `script` (with berth as `$0`
/// and ARGS as `$@`), which changes the mounts and then execs berth. Berth gets its clean test
/// environment (DOCKER_HOST unset) plus `env`. The script exits 97 when its setup fails.
fn in_private_mounts(ws: &Workspace, script: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    assert_root("changing mounts in a private mount namespace");
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--fork",
            "/bin/sh",
            "-c",
            script,
        ])
        .arg(berth_bin())
        .args(args)
        .current_dir(ws.path())
        .env_remove("BERTH_STATE_DIR")
        .env_remove("DOCKER_HOST")
        .env("NO_COLOR", "1")
        .env("XDG_CACHE_HOME", ws.data_path().join("cache"))
        .env("XDG_CONFIG_HOME", ws.data_path().join("config"))
        .env("XDG_DATA_HOME", ws.data_path())
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("cannot start `unshare` (util-linux): {e}"));
    let err = stderr(&out);
    let code = out.status.code();
    assert!(
        code != Some(SETUP_FAILED) && code != Some(SOCKET_STILL_VISIBLE) && !err.starts_with("unshare:"),
        "the private mount namespace could not be set up (exit {code:?}); this test needs root and unshare:\n{err}"
    );
    out
}

#[test]
fn not_installed_when_docker_is_hidden() {
    let ws = Workspace::new();
    let out = without_docker(&ws, &["doctor", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e})\nstdout: {}\nstderr: {}",
            stdout(&out),
            stderr(&out)
        )
    });
    let human = without_docker(&ws, &["doctor"]);
    let d = Doctor {
        report,
        exit: out.status.code().unwrap_or(-1),
        human,
    };
    assert_problem(
        &d,
        "not_installed",
        &[
            "/var/run/docker.sock",
            "DOCKER_HOST is not set",
            "no docker program on PATH",
        ],
    );
    assert!(
        d.report["hint"]
            .as_str()
            .unwrap()
            .contains("--fallback local"),
        "{:#}",
        d.report
    );
}

/// The directory of the only run in `state`.
fn only_run(state: &Path) -> PathBuf {
    let runs: Vec<PathBuf> = std::fs::read_dir(state.join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    runs.into_iter().next().unwrap()
}

fn record(run: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(run.join("run.json")).unwrap()).unwrap()
}

#[test]
fn fallback_local_runs_on_the_host_when_docker_is_not_installed() {
    let ws = Workspace::new();
    let state = tempfile::tempdir().unwrap();
    let state_arg = state.path().display().to_string();
    let out = without_docker(
        &ws,
        &[
            "run",
            "--image",
            "berth-test-unused",
            "--fallback",
            "local",
            "--state-dir",
            &state_arg,
            "--",
            "/bin/sh",
            "-c",
            r#"echo hello-local; echo out > "$BERTH_OUT/f.txt""#,
        ],
    );
    let (o, e) = (stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(0), "stdout: {o}\nstderr: {e}");
    assert!(o.contains("hello-local"), "{o}");
    assert!(
        e.contains("warning: running on the host WITHOUT a sandbox (execution: local)"),
        "{e}"
    );
    assert!(e.contains("Docker is not installed"), "{e}");
    assert!(!format!("{o}{e}").to_lowercase().contains("unknown error"));

    let run = only_run(state.path());
    let rec = record(&run);
    assert_eq!(rec["execution"], "local", "{rec:#}");
    assert_eq!(rec["state"], "succeeded", "{rec:#}");
    assert_eq!(rec["exit_code"], 0, "{rec:#}");
    assert!(
        rec["fallback_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("not installed"),
        "{rec:#}"
    );
    assert_eq!(
        std::fs::read_to_string(run.join("artifacts/berth/out/f.txt")).unwrap(),
        "out\n"
    );
    assert!(std::fs::read_to_string(run.join("stdout.log"))
        .unwrap()
        .contains("hello-local"));
}

/// The local fallback's timeout signals the command's whole process group, so a child it left
/// in the background goes too.
#[test]
fn fallback_local_timeout_ends_the_command_s_whole_process_group() {
    let ws = Workspace::new();
    let state = tempfile::tempdir().unwrap();
    let state_arg = state.path().display().to_string();
    let started = std::time::Instant::now();
    let out = without_docker(
        &ws,
        &[
            "run",
            "--image",
            "berth-test-unused",
            "--fallback",
            "local",
            "--timeout",
            "1s",
            "--state-dir",
            &state_arg,
            "--",
            "/bin/sh",
            "-c",
            r#"/bin/sleep 60 & echo $! > "$BERTH_OUT/background.pid"; /bin/sleep 60"#,
        ],
    );
    assert_eq!(out.status.code(), Some(124), "{}", stderr(&out));
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    let run = only_run(state.path());
    assert_eq!(record(&run)["state"], "timed_out");
    let pid = std::fs::read_to_string(run.join("artifacts/berth/out/background.pid")).unwrap();
    let proc_dir = format!("/proc/{}", pid.trim());
    // Gone, or a zombie its new parent has yet to reap.
    let alive = || {
        std::fs::read_to_string(format!("{proc_dir}/stat")).is_ok_and(|stat| {
            !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    };
    for _ in 0..100 {
        if !alive() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("the background sleep ({proc_dir}) outlived the timed-out run");
}

#[test]
fn no_fallback_unless_asked_even_when_not_installed() {
    let ws = Workspace::new();
    let state = tempfile::tempdir().unwrap();
    let state_arg = state.path().display().to_string();
    let out = without_docker(
        &ws,
        &[
            "run",
            "--image",
            "berth-test-unused",
            "--state-dir",
            &state_arg,
            "--",
            "/bin/sh",
            "-c",
            "echo ran > marker",
        ],
    );
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(125), "{e}");
    assert!(
        e.contains("error: run ")
            && e.contains("failed: Docker cannot be used: Docker is not installed")
            && e.contains("hint: ")
            && e.contains("--fallback local"),
        "{e}"
    );
    assert!(
        !ws.path().join("marker").exists(),
        "the command ran without a sandbox although no fallback was asked for"
    );
    let rec = record(&only_run(state.path()));
    assert_eq!(
        (&rec["state"], &rec["execution"]),
        (&Value::from("error"), &Value::from("docker")),
        "{rec:#}"
    );
}

#[test]
fn fallback_local_does_not_apply_when_docker_is_installed_but_unusable() {
    let ws = Workspace::new();
    let sockets = tempfile::tempdir().unwrap();
    let socket = refused_socket(sockets.path());
    let state = tempfile::tempdir().unwrap();
    let state_arg = state.path().display().to_string();
    let out = ws
        .berth(&[
            "run",
            "--image",
            "berth-test-unused",
            "--fallback",
            "local",
            "--state-dir",
            &state_arg,
            "--",
            "/bin/sh",
            "-c",
            "echo ran > marker",
        ])
        .env("DOCKER_HOST", format!("unix://{}", socket.display()))
        .output()
        .unwrap();
    let (o, e) = (stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(125), "stdout: {o}\nstderr: {e}");
    assert!(
        e.contains(&format!(
            "failed: Docker cannot be used: the Docker daemon is not running: {}",
            socket.display()
        )),
        "{e}"
    );
    assert!(e.contains("hint: start the daemon"), "{e}");
    assert!(
        e.contains("--fallback local applies only when Docker is not installed"),
        "{e}"
    );
    assert!(!e.contains("WITHOUT a sandbox"), "{e}");
    assert!(!format!("{o}{e}").to_lowercase().contains("unknown error"));
    assert!(
        !ws.path().join("marker").exists(),
        "the command ran on the host although Docker is installed"
    );

    let rec = record(&only_run(state.path()));
    assert_eq!(rec["state"], "error", "{rec:#}");
    assert_eq!(rec["execution"], "docker", "{rec:#}");
    assert!(rec["fallback_reason"].is_null(), "{rec:#}");
    assert!(
        rec["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("daemon is not running"),
        "{rec:#}"
    );
}
