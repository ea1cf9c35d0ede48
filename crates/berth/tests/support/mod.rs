//! Shared helpers for berth's integration tests: the real binary, the real engine, a locally
//! built image, and unique names so tests never collide.
#![allow(dead_code, clippy::unwrap_used, clippy::print_stdout)]

pub mod ssh;
pub mod tls;
pub mod workflow;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The test image, built once from Debian's static busybox (scripts/test-image.sh).
pub fn image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| build_test_image("build"))
}

/// The test image plus fake `claude` and `codex` that replay recorded transcripts.
pub fn agents_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| build_test_image("build-agents"))
}

/// The test image plus this host's curl and its libraries: a TLS client that reads
/// CURL_CA_BUNDLE.
pub fn tls_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| build_test_image("build-tls"))
}

/// The test image plus this host's git (Debian's package) and its libraries.
pub fn git_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| build_test_image("build-git"))
}

/// Runs `scripts/test-image.sh MODE` and returns the tag it prints.
fn build_test_image(mode: &str) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/test-image.sh");
    // flock serialises builds of test binaries that start at the same time.
    let out = Command::new("flock")
        .arg("/tmp/berth-test-image.lock")
        .arg(&script)
        .arg(mode)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/test-image.sh {mode} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

pub fn berth_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_berth"))
}

/// A workspace with its own state dir (under its own data directory, outside the workspace, as
/// berth keeps it by default) and cache, removed on drop.
pub struct Workspace {
    pub dir: tempfile::TempDir,
    pub data: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("berth-test-")
            .tempdir()
            .unwrap();
        let data = tempfile::Builder::new()
            .prefix("berth-test-data-")
            .tempdir()
            .unwrap();
        Self { dir, data }
    }

    /// `$XDG_DATA_HOME` of the workspace's berth commands.
    pub fn data_path(&self) -> &Path {
        self.data.path()
    }

    /// The workspace's state directory (`<data>/berth/workspaces/<name>-<hash>`), once a run
    /// made it; its would-be parent before.
    pub fn state_dir(&self) -> PathBuf {
        let parent = self.data_path().join("berth/workspaces");
        std::fs::read_dir(&parent)
            .ok()
            .and_then(|mut entries| entries.next())
            .and_then(|e| e.ok())
            .map_or(parent.join("none-yet"), |e| e.path())
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `berth ARGS` run in the workspace, with a clean, predictable environment.
    pub fn berth(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(berth_bin());
        cmd.args(args)
            .current_dir(self.path())
            .env_remove("BERTH_STATE_DIR")
            .env_remove("DOCKER_HOST")
            .env("NO_COLOR", "1")
            // berth's own files live outside the workspace, as they do for a user: a sandbox
            // can write its workspace, and berth refuses to keep anything of its own there.
            .env("XDG_CACHE_HOME", self.data_path().join("cache"))
            .env("XDG_CONFIG_HOME", self.data_path().join("config"))
            .env("XDG_DATA_HOME", self.data_path());
        cmd
    }

    /// `berth run --image <test image> EXTRA -- CMD...`
    pub fn run(&self, extra: &[&str], command: &[&str]) -> Output {
        self.run_in(image(), extra, command)
    }

    /// `berth run --image IMAGE EXTRA -- CMD...`
    pub fn run_in(&self, image: &str, extra: &[&str], command: &[&str]) -> Output {
        let mut args = vec!["run", "--image", image];
        args.extend_from_slice(extra);
        args.push("--");
        args.extend_from_slice(command);
        self.berth(&args).output().unwrap()
    }

    pub fn runs_dir(&self) -> PathBuf {
        self.state_dir().join("runs")
    }

    /// The directory of the only (or newest) run.
    pub fn last_run(&self) -> PathBuf {
        let mut runs: Vec<PathBuf> = std::fs::read_dir(self.runs_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        runs.sort();
        runs.pop().expect("a run directory")
    }

    pub fn last_record(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.last_run().join("run.json")).unwrap()).unwrap()
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Containers of one run, by its run-id label (all states).
pub fn containers_of_run(run_id: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=berth.run-id={run_id}"),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// After a `--keep` run of `ws`: its record, its id and `docker inspect` of its container,
/// which is then removed.
pub fn inspect_kept_run(ws: &Workspace) -> (serde_json::Value, String, Output) {
    let record = ws.last_record();
    let id = record["id"].as_str().unwrap().to_string();
    let container = record["container_name"].as_str().unwrap_or("").to_string();
    let inspect = Command::new("docker")
        .args(["inspect", &container])
        .output()
        .unwrap();
    force_remove(&container);
    (record, id, inspect)
}

/// Removes a container left by a test that failed midway.
pub fn force_remove(name: &str) {
    let _ = Command::new("docker")
        .args(["rm", "-f", "-v", name])
        .output();
}

pub fn docker_inspect(name: &str) -> serde_json::Value {
    let out = Command::new("docker")
        .args(["inspect", name])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker inspect {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()[0].clone()
}

/// `git ARGS` in `dir` with a fixed identity, no signing, `main` as the first branch and any
/// owner accepted (tests make repositories as root that sandboxes then own); panics with git's
/// stderr on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=berth-test",
            "-c",
            "user.email=test@localhost",
            "-c",
            "commit.gpgSign=false",
            "-c",
            "init.defaultBranch=main",
            "-c",
            "safe.directory=*",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A thread that keeps swapping `root/data` for the link `root/data.lnk` and back (the mount
/// swap race), until the returned flag is set; join the handle afterwards.
pub fn swap_racer(
    root: &Path,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<()>,
) {
    use std::sync::atomic::Ordering;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let (data, parked, link) = (
        root.join("data"),
        root.join("data.real"),
        root.join("data.lnk"),
    );
    let handle = std::thread::spawn(move || {
        while !flag.load(Ordering::Relaxed) {
            if std::fs::rename(&data, &parked).is_ok() {
                let _ = std::fs::rename(&link, &data);
                std::thread::sleep(std::time::Duration::from_micros(200));
                let _ = std::fs::rename(&data, &link);
                let _ = std::fs::rename(&parked, &data);
            }
            std::thread::sleep(std::time::Duration::from_micros(300));
        }
    });
    (stop, handle)
}
