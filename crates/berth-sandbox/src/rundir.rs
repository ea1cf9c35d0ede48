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

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use berth_core::event::{Event, EventLine};
use berth_core::record::RunRecord;

use crate::clock::now_rfc3339;
use crate::SandboxError;

/// Where runs are kept.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// `--state-dir`, else `BERTH_STATE_DIR`, else the config's `state_dir`, else
    /// `<workspace>/.berth`.
    pub fn resolve(
        flag: Option<PathBuf>,
        env: Option<PathBuf>,
        config: Option<PathBuf>,
        workspace: &Path,
    ) -> Self {
        let root = flag
            .or(env)
            .or(config)
            .unwrap_or_else(|| workspace.join(".berth"));
        Self::new(root)
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
        // The state directory usually lies in the user's checkout: keep it out of `git status`
        // and of every git operation (worktree mode's --include-dirty, copy mode's uploads).
        let ignore = self.root.join(".gitignore");
        if !ignore.exists() {
            std::fs::write(&ignore, "# berth's run records\n*\n")
                .map_err(|e| SandboxError::io(&ignore, e))?;
        }
        let path = runs.join(id);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| SandboxError::io(&path, e))?;
        Ok(RunDir { path })
    }

    /// Every run record, oldest first. Unreadable records are skipped.
    pub fn list(&self) -> Vec<RunRecord> {
        let Ok(entries) = std::fs::read_dir(self.runs()) else {
            return Vec::new();
        };
        let mut records: Vec<RunRecord> = entries
            .flatten()
            .filter_map(|e| RunDir { path: e.path() }.read_record().ok())
            .collect();
        records.sort_by(|a, b| a.id.cmp(&b.id));
        records
    }

    /// The run whose id is `prefix` or starts with it.
    pub fn find(&self, prefix: &str) -> Result<RunDir, SandboxError> {
        let exact = self.runs().join(prefix);
        if !prefix.is_empty() && !prefix.contains('/') && exact.join("run.json").is_file() {
            return Ok(RunDir { path: exact });
        }
        let matches: Vec<RunRecord> = self
            .list()
            .into_iter()
            .filter(|r| r.id.starts_with(prefix))
            .collect();
        match matches.as_slice() {
            [one] => Ok(RunDir {
                path: self.runs().join(&one.id),
            }),
            [] => Err(SandboxError::NoSuchRun(prefix.to_string())),
            many => Err(SandboxError::AmbiguousRun {
                prefix: prefix.to_string(),
                candidates: many
                    .iter()
                    .map(|r| r.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }
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
        fs_err::create_dir_all(&out).map_err(|e| SandboxError::io(&out, e))?;
        hand_over(&out, uid, gid, 0o700, 0o777)?;
        Ok(out)
    }

    /// The host side of `/berth/io`: the command's stdout and stderr FIFOs.
    pub fn io_dir(&self) -> PathBuf {
        self.path.join("io")
    }

    /// Creates `io/stdout` and `io/stderr` as FIFOs the sandbox user `uid:gid` can write.
    pub fn create_io_fifos(&self, uid: u32, gid: u32) -> Result<PathBuf, SandboxError> {
        let io = self.io_dir();
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&io)
            .map_err(|e| SandboxError::io(&io, e))?;
        create_fifos(&[io.join("stdout"), io.join("stderr")], uid, gid)?;
        Ok(io)
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
    pub fn write_record(&self, record: &RunRecord) -> Result<(), SandboxError> {
        let path = self.record_path();
        let tmp = self.path.join(".run.json.tmp");
        let json = serde_json::to_vec_pretty(record)
            .map_err(|e| SandboxError::io(&path, std::io::Error::other(e)))?;
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&json)?;
            file.write_all(b"\n")?;
            if record.state.is_final() {
                file.sync_data()?;
            }
            std::fs::rename(&tmp, &path)
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

/// Makes `path` usable by the sandbox user `uid:gid`: handed over with `owned_mode` when berth
/// runs as root, opened with `open_mode` when the sandbox user is someone else.
pub(crate) fn hand_over(
    path: &Path,
    uid: u32,
    gid: u32,
    owned_mode: u32,
    open_mode: u32,
) -> Result<(), SandboxError> {
    #[allow(unsafe_code)] // geteuid cannot fail and touches no memory.
    // SAFETY: a plain syscall without arguments.
    let euid = unsafe { libc::geteuid() };
    let result = if euid == 0 {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).and_then(|()| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(owned_mode))
        })
    } else if euid != uid {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(open_mode))
    } else {
        Ok(())
    };
    result.map_err(|e| SandboxError::io(path, e))
}

/// Creates FIFOs at `paths` that the sandbox user `uid:gid` can write.
pub(crate) fn create_fifos(paths: &[PathBuf], uid: u32, gid: u32) -> Result<(), SandboxError> {
    for path in paths {
        make_fifo(path).map_err(|e| SandboxError::io(path, e))?;
        hand_over(path, uid, gid, 0o600, 0o622)?;
    }
    Ok(())
}

/// mkfifo(3) with mode 0600; std has no wrapper.
#[allow(unsafe_code)] // a plain syscall on a NUL-terminated path we own.
fn make_fifo(path: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c_path =
        std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: c_path is a valid NUL-terminated string for the duration of the call.
    if unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
