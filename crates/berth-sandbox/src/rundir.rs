//! The state directory and the run directories in it.
//!
//! ```text
//! <state dir>/runs/<run-id>/
//!     run.json        the run record, rewritten atomically at every change
//!     events.jsonl    lifecycle events
//!     stdout.log      the command's stdout, masked
//!     stderr.log      the command's stderr, masked
//!     out/            bind-mounted at /berth/out during the run, emptied afterwards
//!     artifacts/      what was collected, mirroring container paths (artifacts/berth/out/...)
//! ```

use std::ffi::OsStr;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use berth_archive::beneath::DirHandle;

use berth_core::event::{Event, EventLine};
use berth_core::record::RunRecord;

use crate::clock::now_rfc3339;
use crate::SandboxError;

/// Where runs are kept.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
    /// `<workspace>/.berth` of an older berth, still read by `ls`, `show` and `gc`.
    legacy: Option<PathBuf>,
}

impl StateDir {
    pub fn new(root: PathBuf) -> Self {
        Self { root, legacy: None }
    }

    /// `--state-dir`, else `BERTH_STATE_DIR`, else the config's `state_dir`, else the
    /// workspace's own directory under `data_dir` (the user's `$XDG_DATA_HOME/berth`), outside
    /// the workspace: a sandbox can write its workspace, and must never reach the records.
    pub fn resolve(
        flag: Option<PathBuf>,
        env: Option<PathBuf>,
        config: Option<PathBuf>,
        workspace: &Path,
        data_dir: &Path,
    ) -> Self {
        let legacy = workspace.join(".berth");
        let root = flag
            .or(env)
            .or(config)
            .unwrap_or_else(|| default_root(workspace, data_dir));
        let legacy = (legacy.join("runs").is_dir() && legacy != root).then_some(legacy);
        Self { root, legacy }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn runs(&self) -> PathBuf {
        self.root.join("runs")
    }

    /// Creates the directory of a new run.
    pub fn create_run(&self, id: &str) -> Result<RunDir, SandboxError> {
        let runs = self.runs();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&runs)
            .map_err(|e| SandboxError::io(&runs, e))?;
        let path = runs.join(id);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| SandboxError::io(&path, e))?;
        Ok(RunDir { path })
    }

    /// Every directory runs are kept in: this one, then an older berth's `.berth`.
    fn run_roots(&self) -> Vec<PathBuf> {
        std::iter::once(self.runs())
            .chain(self.legacy.iter().map(|l| l.join("runs")))
            .collect()
    }

    /// Every run record, oldest first. Unreadable records are skipped.
    pub fn list(&self) -> Vec<RunRecord> {
        let mut records: Vec<RunRecord> = self
            .run_dirs()
            .into_iter()
            .filter_map(|dir| dir.read_record().ok())
            .collect();
        records.sort_by(|a, b| a.id.cmp(&b.id));
        records
    }

    fn run_dirs(&self) -> Vec<RunDir> {
        self.run_roots()
            .iter()
            .filter_map(|root| std::fs::read_dir(root).ok())
            .flat_map(|entries| entries.flatten().map(|e| RunDir { path: e.path() }))
            .collect()
    }

    /// Where `berth workflow run` keeps its steps' runs: `workflows/<id>/<round>/<step>/runs`.
    fn step_run_roots(&self) -> Vec<PathBuf> {
        let subdirs = |dir: &Path| -> Vec<PathBuf> {
            std::fs::read_dir(dir)
                .map(|entries| {
                    entries
                        .flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path())
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut roots = Vec::new();
        for workflow in subdirs(&self.root.join("workflows")) {
            for round in subdirs(&workflow) {
                for step in subdirs(&round) {
                    roots.push(step.join("runs"));
                }
            }
        }
        roots
    }

    /// The run whose id is `prefix` or starts with it: a run of its own, or a step of a
    /// workflow run here.
    pub fn find(&self, prefix: &str) -> Result<RunDir, SandboxError> {
        match self.find_in(self.run_roots(), prefix) {
            Err(SandboxError::NoSuchRun(_)) => self.find_in(self.step_run_roots(), prefix),
            found => found,
        }
    }

    fn find_in(&self, roots: Vec<PathBuf>, prefix: &str) -> Result<RunDir, SandboxError> {
        if !prefix.is_empty() && !prefix.contains('/') {
            for root in &roots {
                let exact = root.join(prefix);
                if exact.join("run.json").is_file() {
                    return Ok(RunDir { path: exact });
                }
            }
        }
        let matches: Vec<(RunDir, RunRecord)> = roots
            .iter()
            .filter_map(|root| std::fs::read_dir(root).ok())
            .flat_map(|entries| entries.flatten().map(|e| RunDir { path: e.path() }))
            .filter_map(|dir| dir.read_record().ok().map(|r| (dir, r)))
            .filter(|(_, r)| r.id.starts_with(prefix))
            .collect();
        match matches.as_slice() {
            [(one, _)] => Ok(one.clone()),
            [] => Err(SandboxError::NoSuchRun(prefix.to_string())),
            many => Err(SandboxError::AmbiguousRun {
                prefix: prefix.to_string(),
                candidates: many
                    .iter()
                    .map(|(_, r)| r.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }
}

/// `<data dir>/workspaces/<name>-<hash>`: one state directory per workspace, named so that a
/// person can tell which is which, keyed by the workspace's canonical path.
pub fn default_root(workspace: &Path, data_dir: &Path) -> PathBuf {
    use sha2::Digest;
    let canonical = std::fs::canonicalize(workspace).unwrap_or_else(|_| workspace.to_path_buf());
    let digest = sha2::Sha256::digest(canonical.as_os_str().as_encoded_bytes());
    let name: String = canonical
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "root".into())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    data_dir
        .join("workspaces")
        .join(format!("{name}-{}", &hex::encode(digest)[..16]))
}

/// One run's directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    pub fn open(path: PathBuf) -> Self {
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn record_path(&self) -> PathBuf {
        self.path.join("run.json")
    }

    pub fn stdout_log(&self) -> PathBuf {
        self.path.join("stdout.log")
    }

    pub fn stderr_log(&self) -> PathBuf {
        self.path.join("stderr.log")
    }

    pub fn events_path(&self) -> PathBuf {
        self.path.join("events.jsonl")
    }

    pub fn artifacts_dir(&self) -> PathBuf {
        self.path.join("artifacts")
    }

    /// Copy mode's downloaded tree, or worktree mode's worktree.
    pub fn workspace_dir(&self) -> PathBuf {
        self.path.join("workspace")
    }

    /// The run's changes to its isolated workspace.
    pub fn diff_path(&self) -> PathBuf {
        self.path.join("diff.patch")
    }

    /// The host side of `/berth/out`.
    pub fn out_dir(&self) -> PathBuf {
        self.path.join("out")
    }

    /// Creates `out/`, writable by the sandbox user `uid:gid`.
    pub fn create_out_dir(&self, uid: u32, gid: u32) -> Result<PathBuf, SandboxError> {
        let out = self.out_dir();
        let run = self.handle()?;
        let handle = run
            .open_or_create_dir(OsStr::new("out"), 0o700)
            .map_err(|e| SandboxError::io(&out, e))?;
        hand_over(&handle, uid, gid, 0o700, 0o777)?;
        Ok(out)
    }

    /// The host side of `/berth/io`: the files the command's stdout and stderr go to.
    pub fn io_dir(&self) -> PathBuf {
        self.path.join("io")
    }

    /// Creates `io/stdout` and `io/stderr` as empty regular files the sandbox user `uid:gid`
    /// can write. Files, not pipes: the command never waits for a reader and never gets SIGPIPE
    /// when berth (or a runner) dies, and whoever reads them next can start from any offset.
    /// `io/` itself stays berth's: the sandbox writes the files but cannot add, rename or swap
    /// entries.
    pub fn create_io_files(&self, uid: u32, gid: u32) -> Result<PathBuf, SandboxError> {
        let io = self.io_dir();
        let run = self.handle()?;
        let handle = run
            .create_dir(OsStr::new("io"), 0o755)
            .map_err(|e| SandboxError::io(&io, e))?;
        for name in ["stdout", "stderr"] {
            let path = io.join(name);
            let file = handle
                .create_file(OsStr::new(name), 0o600)
                .map_err(|e| SandboxError::io(&path, e))?;
            hand_over_fd(file.as_fd(), &path, uid, gid, 0o600, 0o622)?;
        }
        Ok(io)
    }

    /// Opens `io/stdout` and `io/stderr` for reading, through the run directory's handle and
    /// without following a link: the sandbox writes them, so whatever is there is checked to be
    /// a regular file (a FIFO or device swapped in is refused, never read).
    pub fn open_io_files(&self) -> Result<(std::fs::File, std::fs::File), SandboxError> {
        let io = self.io_dir();
        let handle = self
            .handle()?
            .open_dir_entry(OsStr::new("io"))
            .map_err(|e| SandboxError::io(&io, e))?;
        let open = |name: &str| {
            handle
                .open_file_entry(OsStr::new(name))
                .map_err(|e| SandboxError::io(io.join(name), e))
        };
        Ok((open("stdout")?, open("stderr")?))
    }

    /// Empties `io/stdout` and `io/stderr` (unlinked and made again, empty and berth's): they
    /// hold the command's raw output, secrets unmasked, which a kept container must not keep on
    /// this host. Called once the container has stopped.
    pub fn discard_io_files(&self) -> Result<(), SandboxError> {
        let io = self.io_dir();
        let handle = match self.handle()?.open_dir_entry(OsStr::new("io")) {
            Ok(h) => h,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(SandboxError::io(&io, e)),
        };
        for name in ["stdout", "stderr"] {
            let path = io.join(name);
            handle
                .remove_entry_all(OsStr::new(name))
                .map_err(|e| SandboxError::io(&path, e))?;
            handle
                .create_file(OsStr::new(name), 0o600)
                .map_err(|e| SandboxError::io(&path, e))?;
        }
        Ok(())
    }

    /// Creates `egress/`, where the run's egress proxy binds its sockets. It stays berth's
    /// (0755) and is mounted read-only: the sandbox can connect to the sockets, nothing more.
    pub fn create_egress_dir(&self) -> Result<PathBuf, SandboxError> {
        let dir = self.path.join("egress");
        let handle = self
            .handle()?
            .create_dir(OsStr::new("egress"), 0o755)
            .map_err(|e| SandboxError::io(&dir, e))?;
        handle.chmod(0o755).map_err(|e| SandboxError::io(&dir, e))?;
        Ok(dir)
    }

    /// The run directory as a handle.
    fn handle(&self) -> Result<DirHandle, SandboxError> {
        DirHandle::open(&self.path).map_err(|e| SandboxError::io(&self.path, e))
    }

    pub fn read_record(&self) -> Result<RunRecord, SandboxError> {
        let path = self.record_path();
        let text = fs_err::read_to_string(&path).map_err(|e| SandboxError::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| {
            SandboxError::io(
                &path,
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })
    }

    /// Writes the record atomically: a reader sees the old or the new record, never half of one.
    /// A final record is also flushed to disk; intermediate ones are not worth an fsync each.
    ///
    /// Written relative to the run directory's handle, the temporary file created exclusively
    /// and without following links: a link planted at `.run.json.tmp` makes the write fail, it
    /// never redirects it.
    pub fn write_record(&self, record: &RunRecord) -> Result<(), SandboxError> {
        let path = self.record_path();
        let json = serde_json::to_vec_pretty(record)
            .map_err(|e| SandboxError::io(&path, std::io::Error::other(e)))?;
        let write = || -> std::io::Result<()> {
            let dir = DirHandle::open(&self.path)?;
            let tmp = OsStr::new(".run.json.tmp");
            // A temporary file left by a berth that died mid-write (never followed).
            let _ = dir.remove_entry_all(tmp);
            let mut file = dir.create_file(tmp, 0o600)?;
            file.write_all(&json)?;
            file.write_all(b"\n")?;
            if record.state.is_final() {
                file.sync_data()?;
            }
            dir.rename_entry(tmp, OsStr::new("run.json"))
        };
        write().map_err(|e| SandboxError::io(&path, e))
    }
}

/// Appends events to `events.jsonl`.
#[derive(Debug)]
pub struct EventLog {
    file: std::fs::File,
    path: PathBuf,
    run_id: String,
}

impl EventLog {
    pub fn create(run_dir: &RunDir, run_id: &str) -> Result<Self, SandboxError> {
        let path = run_dir.events_path();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| SandboxError::io(&path, e))?;
        Ok(Self {
            file,
            path,
            run_id: run_id.to_string(),
        })
    }

    /// Stamps `event` and appends it; returns the stamped line for the reporter.
    pub fn append(&mut self, event: Event) -> Result<EventLine, SandboxError> {
        let line = EventLine {
            ts: now_rfc3339(),
            run_id: self.run_id.clone(),
            event,
        };
        let mut json = serde_json::to_vec(&line)
            .map_err(|e| SandboxError::io(&self.path, std::io::Error::other(e)))?;
        json.push(b'\n');
        self.file
            .write_all(&json)
            .map_err(|e| SandboxError::io(&self.path, e))?;
        Ok(line)
    }
}

/// Makes the directory `dir` usable by the sandbox user `uid:gid`, through its handle: handed
/// over with `owned_mode` when berth runs as root, opened up with `open_mode` when the sandbox
/// user is someone else.
pub(crate) fn hand_over(
    dir: &DirHandle,
    uid: u32,
    gid: u32,
    owned_mode: u32,
    open_mode: u32,
) -> Result<(), SandboxError> {
    hand_over_fd(dir.as_fd(), dir.path(), uid, gid, owned_mode, open_mode)
}

fn hand_over_fd(
    fd: std::os::fd::BorrowedFd<'_>,
    path: &Path,
    uid: u32,
    gid: u32,
    owned_mode: u32,
    open_mode: u32,
) -> Result<(), SandboxError> {
    let euid = rustix::process::geteuid().as_raw();
    let mode = |m: u32| rustix::fs::fchmod(fd, rustix::fs::Mode::from_raw_mode(m));
    let result = if euid == 0 {
        berth_archive::beneath::chown_fd(fd, uid, gid).and_then(|()| Ok(mode(owned_mode)?))
    } else if euid != uid {
        mode(open_mode).map_err(std::io::Error::from)
    } else {
        Ok(())
    };
    result.map_err(|e| SandboxError::io(path, e))
}

/// Creates FIFOs named `names` in `dir` (a directory the sandbox cannot write) that the sandbox
/// user `uid:gid` can write; owner and mode are set through each FIFO's own descriptor.
pub(crate) fn create_fifos(
    dir: &DirHandle,
    names: &[&str],
    uid: u32,
    gid: u32,
) -> Result<(), SandboxError> {
    for name in names {
        let path = dir.path().join(name);
        let fifo = dir
            .create_fifo(OsStr::new(name), 0o600)
            .map_err(|e| SandboxError::io(&path, e))?;
        hand_over_fd(fifo.as_fd(), &path, uid, gid, 0o600, 0o622)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attack 3's last step: a link planted at `.run.json.tmp` (or at the record itself) must
    /// never carry berth's write to another file.
    #[test]
    fn a_record_is_never_written_through_a_planted_link() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let state = StateDir::new(dir.path().join("state"));
        let run = state.create_run("r1").unwrap();
        let spec = crate::run::tests::spec();
        let record = RunRecord::new(
            "r1".into(),
            spec,
            berth_core::record::Execution::Docker,
            "now".into(),
        );
        std::os::unix::fs::symlink(&victim, run.path().join(".run.json.tmp")).unwrap();
        run.write_record(&record).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert!(run.read_record().is_ok());
        // A link planted at run.json itself is replaced, not written through.
        std::fs::remove_file(run.record_path()).unwrap();
        std::os::unix::fs::symlink(&victim, run.record_path()).unwrap();
        run.write_record(&record).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert!(!run.record_path().is_symlink());
    }
}
