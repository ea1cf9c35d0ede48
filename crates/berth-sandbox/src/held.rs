//! The host side of held containers (persistent and pool, see `berth_core::held`): their
//! directories, their locks, and finding, judging and removing them.
//!
//! Each held container has a directory `<state>/held/<container name>/` with
//! - `io/`: the runs' output FIFOs (`<run id>.stdout`, `<run id>.stderr`), mounted at `/berth/io`;
//! - `out/`: one `$BERTH_OUT` per run (`<run id>/`), mounted at `/berth/out`;
//! - `lock`: held (flock) by the process whose run is inside the container. The kernel releases
//!   it when that process dies, so a free lock with a run still recorded means its berth died;
//! - `info.json`: kind, agent, key, creation, last use, uses and the current run.
//!
//! Architecture Invariant: a run execs into a held container only while holding its lock, so two
//! runs never share one at the same time (a second run for a persistent container queues), and a
//! pool container, once taken (`uses` > 0), is never taken again.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};

use berth_archive::beneath::DirHandle;
use std::path::{Path, PathBuf};

use berth_core::held::{HeldKind, HeldState};
use berth_core::plan::labels;
use berth_engine::{ContainerSummary, Engine};
use serde::{Deserialize, Serialize};

use crate::SandboxError;

/// What berth keeps about a held container besides the engine's labels.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldInfo {
    pub kind: Option<HeldKind>,
    pub agent: Option<String>,
    pub key: String,
    /// Seconds since the Unix epoch.
    pub created: i64,
    pub last_used: i64,
    /// Removed after this many seconds without a run (0: never by age).
    #[serde(default)]
    pub idle_ttl: u64,
    pub uses: u64,
    /// The run inside it right now: its id and run directory.
    pub current_run: Option<(String, String)>,
}

/// A held container's directory on the host.
#[derive(Debug, Clone)]
pub struct HeldDir {
    path: PathBuf,
}

impl HeldDir {
    pub fn open(path: PathBuf) -> Self {
        Self { path }
    }

    /// Creates the directory with `io/` and `out/`. Both stay berth's (0755): the sandbox only
    /// opens its run's FIFOs in `io/` and writes in its run's own entry of `out/`, so it can
    /// never add, rename or swap an entry berth later creates or reads. A directory left by an
    /// older berth, which handed both to the sandbox user, is taken back.
    pub fn create(path: PathBuf) -> Result<Self, SandboxError> {
        let dir = Self { path };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir.path)
            .map_err(|e| SandboxError::io(&dir.path, e))?;
        let root = DirHandle::open(&dir.path).map_err(|e| SandboxError::io(&dir.path, e))?;
        let euid = rustix::process::geteuid().as_raw();
        let egid = rustix::process::getegid().as_raw();
        for name in ["io", "out", "egress"] {
            let sub = root
                .open_or_create_dir(OsStr::new(name), 0o755)
                .map_err(|e| SandboxError::io(dir.path.join(name), e))?;
            let owner = sub.stat().map(|s| s.st_uid).unwrap_or(euid);
            let taken_back = if owner == euid {
                Ok(())
            } else {
                sub.chown(euid, egid)
            };
            taken_back
                .and_then(|()| sub.chmod(0o755))
                .map_err(|e| SandboxError::io(dir.path.join(name), e))?;
        }
        Ok(dir)
    }

    /// `io/` and `out/` as handles, for making one run's entries in them.
    pub fn open_run_dirs(&self) -> Result<(DirHandle, DirHandle), SandboxError> {
        let open = |p: PathBuf| DirHandle::open(&p).map_err(|e| SandboxError::io(&p, e));
        Ok((open(self.io_dir())?, open(self.out_dir())?))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn io_dir(&self) -> PathBuf {
        self.path.join("io")
    }

    /// Where the egress proxy of the run using the container binds its sockets.
    pub fn egress_dir(&self) -> PathBuf {
        self.path.join("egress")
    }

    pub fn out_dir(&self) -> PathBuf {
        self.path.join("out")
    }

    /// The host side of one run's `$BERTH_OUT`.
    pub fn run_out_dir(&self, run_id: &str) -> PathBuf {
        self.out_dir().join(run_id)
    }

    fn info_path(&self) -> PathBuf {
        self.path.join("info.json")
    }

    pub fn read_info(&self) -> HeldInfo {
        std::fs::read(self.info_path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Writes `info.json` atomically; call only while holding the lock.
    pub fn write_info(&self, info: &HeldInfo) -> Result<(), SandboxError> {
        let path = self.info_path();
        let tmp = self.path.join(".info.json.tmp");
        let json = serde_json::to_vec_pretty(info)
            .map_err(|e| SandboxError::io(&path, std::io::Error::other(e)))?;
        // Created exclusively, never through a link, then renamed over the old one.
        let _ = std::fs::remove_file(&tmp);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .and_then(|mut f| std::io::Write::write_all(&mut f, &json))
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| SandboxError::io(&path, e))
    }

    /// Takes the lock if nobody holds it. The directory is made again if it went away (a
    /// `berth gc` removing the container it belonged to, a moment before).
    pub fn try_lock(&self) -> Result<Option<HeldLock>, SandboxError> {
        let lock = self.path.join("lock");
        match HeldLock::try_acquire(&lock) {
            Err(_) if !self.path.exists() => {
                fs_err::create_dir_all(&self.path).map_err(|e| SandboxError::io(&self.path, e))?;
                HeldLock::try_acquire(&lock)
            }
            result => result,
        }
    }

    /// Removes the directory (after its container is gone).
    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// An exclusive flock on a held container's lock file; released when dropped (or when the
/// process dies).
#[derive(Debug)]
pub struct HeldLock {
    _file: File,
}

impl HeldLock {
    fn try_acquire(path: &Path) -> Result<Option<Self>, SandboxError> {
        use rustix::fs::{flock, FlockOperation};
        use rustix::io::Errno;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| SandboxError::io(path, e))?;
        let _ = file.set_permissions(std::fs::Permissions::from_mode(0o600));
        loop {
            match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Ok(Some(Self { _file: file })),
                Err(Errno::WOULDBLOCK) => return Ok(None),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(SandboxError::io(path, e.into())),
            }
        }
    }
}

/// Seconds since the Unix epoch, now.
pub fn now_epoch() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A held container the engine listed, with its kind and directory.
#[derive(Debug, Clone)]
pub struct Listed {
    pub container: ContainerSummary,
    pub kind: HeldKind,
    pub dir: HeldDir,
}

impl Listed {
    pub fn key(&self) -> &str {
        self.container
            .labels
            .get(labels::HELD_KEY)
            .map(String::as_str)
            .unwrap_or("")
    }

    pub fn agent(&self) -> Option<&str> {
        self.container
            .labels
            .get(labels::HELD_AGENT)
            .map(String::as_str)
    }

    /// Owned by a berth on this host (held containers of other hosts are not ours to manage).
    pub fn on_this_host(&self) -> bool {
        self.container
            .labels
            .get(labels::OWNER_HOST)
            .is_none_or(|h| h.is_empty() || *h == crate::owner::host_name())
    }

    /// The state the eviction rules look at; `busy` tries the lock.
    pub fn state(&self) -> HeldState {
        let info = self.dir.read_info();
        let busy = !matches!(self.dir.try_lock(), Ok(Some(_)));
        HeldState {
            name: self.container.name.clone(),
            last_used: info.last_used.max(self.container.created),
            busy,
        }
    }
}

/// Every held container on the engine.
pub async fn list<E: Engine>(engine: &E) -> Result<Vec<Listed>, SandboxError> {
    Ok(engine
        .list_managed()
        .await?
        .into_iter()
        .filter_map(|container| {
            let kind = HeldKind::parse(container.labels.get(labels::HELD)?)?;
            let dir = HeldDir::open(PathBuf::from(container.labels.get(labels::HELD_DIR)?));
            Some(Listed {
                container,
                kind,
                dir,
            })
        })
        .collect())
}

/// Removes a held container and its directory. Its lock must be held by the caller (or its
/// owner be gone), so no run is inside.
pub async fn remove<E: Engine>(engine: &E, listed: &Listed) -> Result<(), SandboxError> {
    engine.remove(&listed.container.id).await?;
    listed.dir.remove();
    Ok(())
}

/// What `berth gc` decides for a held container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeldVerdict {
    /// A run is inside (its berth holds the lock), or it waits for runs and is not expired.
    Keep(String),
    /// Remove it; if a run was inside when its berth died, that run's id and directory.
    Remove {
        why: String,
        lost_run: Option<(String, String)>,
    },
}

/// Judges a held container for `berth gc`. `locked`: some process holds its lock.
pub fn judge(listed: &Listed, info: &HeldInfo, locked: bool, now: i64) -> HeldVerdict {
    if locked {
        return HeldVerdict::Keep("a run is inside it".into());
    }
    if let Some(run) = &info.current_run {
        return HeldVerdict::Remove {
            why: format!(
                "the berth running {} in it exited without cleaning up",
                run.0
            ),
            lost_run: Some(run.clone()),
        };
    }
    if listed.kind == HeldKind::Pool && info.uses > 0 {
        return HeldVerdict::Remove {
            why: "a used pool container is never handed out again".into(),
            lost_run: None,
        };
    }
    if listed.container.state != "running" {
        return HeldVerdict::Remove {
            why: format!("it is no longer running ({})", listed.container.state),
            lost_run: None,
        };
    }
    let idle = now.saturating_sub(info.last_used.max(listed.container.created));
    if info.idle_ttl > 0 && idle > info.idle_ttl as i64 {
        return HeldVerdict::Remove {
            why: format!(
                "idle for {idle}s, longer than its idle_ttl of {}s",
                info.idle_ttl
            ),
            lost_run: None,
        };
    }
    HeldVerdict::Keep(format!(
        "{} container, idle for {idle}s",
        listed.kind.as_str()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(kind: HeldKind, state: &str, created: i64) -> Listed {
        Listed {
            container: ContainerSummary {
                id: "c1".into(),
                name: "berth-x".into(),
                labels: Default::default(),
                state: state.into(),
                created,
            },
            kind,
            dir: HeldDir::open("/nonexistent".into()),
        }
    }

    fn info(uses: u64, last_used: i64, ttl: u64, run: Option<&str>) -> HeldInfo {
        HeldInfo {
            last_used,
            idle_ttl: ttl,
            uses,
            current_run: run.map(|r| (r.to_string(), format!("/runs/{r}"))),
            ..HeldInfo::default()
        }
    }

    fn removed(v: &HeldVerdict) -> bool {
        matches!(v, HeldVerdict::Remove { .. })
    }

    #[test]
    fn the_lock_is_held_by_one_at_a_time_and_released_on_drop() {
        let tmp = tempfile::tempdir().unwrap();
        // Made again when it went away.
        let dir = HeldDir::open(tmp.path().join("held/x"));
        let first = dir.try_lock().unwrap().expect("free at first");
        assert!(dir.try_lock().unwrap().is_none(), "held by the first");
        drop(first);
        assert!(dir.try_lock().unwrap().is_some(), "free again once dropped");
        // A link planted where the lock goes is refused, never followed.
        let planted = HeldDir::open(tmp.path().join("planted"));
        std::fs::create_dir(tmp.path().join("planted")).unwrap();
        std::os::unix::fs::symlink(
            tmp.path().join("elsewhere"),
            tmp.path().join("planted/lock"),
        )
        .unwrap();
        assert!(planted.try_lock().is_err());
        assert!(!tmp.path().join("elsewhere").exists());
    }

    #[test]
    fn gc_judges_held_containers_by_lock_record_and_age() {
        let persistent = listed(HeldKind::Persistent, "running", 100);
        let pool = listed(HeldKind::Pool, "running", 100);
        // A run inside: kept whatever else is true.
        assert!(!removed(&judge(
            &persistent,
            &info(1, 0, 1, Some("r1")),
            true,
            9999
        )));
        // A run recorded but nobody holds the lock: its berth died; the run is lost.
        assert_eq!(
            judge(&persistent, &info(1, 200, 3600, Some("r1")), false, 300),
            HeldVerdict::Remove {
                why: "the berth running r1 in it exited without cleaning up".into(),
                lost_run: Some(("r1".into(), "/runs/r1".into())),
            }
        );
        // Idle within the TTL: kept; beyond it: removed.
        assert!(!removed(&judge(
            &persistent,
            &info(3, 200, 3600, None),
            false,
            300
        )));
        assert!(removed(&judge(
            &persistent,
            &info(3, 200, 60, None),
            false,
            300
        )));
        // A pool container that served a run is never kept for another.
        assert!(removed(&judge(
            &pool,
            &info(1, 200, 3600, None),
            false,
            300
        )));
        assert!(!removed(&judge(
            &pool,
            &info(0, 100, 3600, None),
            false,
            300
        )));
        // Stopped: removed.
        let stopped = listed(HeldKind::Persistent, "exited", 100);
        assert!(removed(&judge(
            &stopped,
            &info(0, 100, 3600, None),
            false,
            300
        )));
    }
}
