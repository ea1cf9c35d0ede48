//! Keeps a sandbox out of the git repositories it could otherwise write.
//!
//! Host-side git (the user's, a runner's making the next run's worktree or fetching) obeys a
//! repository's config, hooks and info files, so a sandbox that wrote them could run commands on
//! the host (`core.fsmonitor`, `core.sshCommand`, filter drivers, hooks). Before an rw run, and
//! for every writable `--mount`, berth walks the tree that becomes writable and mounts every git
//! directory in it read-only over itself:
//!
//! - each `.git` entry (a directory, or a gitfile of a worktree or submodule), at any depth;
//! - each directory that is a git directory by its contents (`HEAD`, `objects/`, `refs/`: a bare
//!   repository, or a `gitdir:` target kept under another name);
//! - the directory a gitfile names, when it lies inside the tree.
//!
//! A writable mount whose source is, or lies inside, a git directory is refused, as is a `.git`
//! that is a symlink (the engine would follow it). At the top of the rw workspace, where there
//! is no `.git`, an empty one is made and mounted read-only, so that the sandbox cannot plant a
//! repository where host git looks first.
//!
//! The tree is read through directory handles that never follow a link
//! ([`berth_archive::beneath`]), and each guard's identity is checked by the shim like every
//! other mount. The walk is bounded; a tree too large to check is refused with a hint.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use berth_archive::beneath::{file_type, DirHandle};
use berth_core::plan::{BindMount, MountIdentity};
use rustix::fs::FileType;

use crate::prepare::Identity;
use crate::SandboxError;

/// The most directories one walk reads before it refuses the tree as too large to check.
pub const MAX_WALK_DIRS: usize = 100_000;
/// The most git directories one tree may hold (each is a mount of its own).
pub const MAX_GUARDS: usize = 256;
/// The deepest directory one walk enters.
const MAX_DEPTH: usize = 128;
/// A gitfile is one line; anything longer is not one.
const MAX_GITFILE: u64 = 4096;

/// The read-only mounts that guard one writable tree.
#[derive(Debug, Default)]
pub struct Guards {
    pub mounts: Vec<(BindMount, MountIdentity)>,
    /// What to look at after the run ([`quarantine_planted`]).
    pub tree: Option<GuardedTree>,
    /// The identity of the tree's top after the walk (making an empty `.git` changes its change
    /// time, which the shim checks under gVisor).
    pub top_after: Option<Identity>,
}

/// Whether to make an empty `.git` at the top when there is none (the rw workspace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Top {
    MakeEmptyGit,
    AsItIs,
}

/// Guards the writable tree `source` (canonical) mounted at `target`.
pub fn guard(source: &Path, target: &str, top: Top) -> Result<Guards, SandboxError> {
    let what = if top == Top::MakeEmptyGit {
        "the rw workspace"
    } else {
        "a writable mount"
    };
    let refused = |path: &Path, problem: String| {
        SandboxError::WithHint {
        message: format!("{}: {problem}", path.display()),
        hint: format!(
            "{what}'s git directories are mounted read-only, so that the sandbox cannot plant git config or hooks that host git would obey; {}",
            if top == Top::MakeEmptyGit {
                "make .git a plain directory or gitfile, or use --workspace-mode worktree or copy (the sandbox gets a repository of its own)"
            } else {
                "mount a git repository's own files read-only (`:ro`), or mount a narrower directory"
            }
        ),
    }
    };
    if source
        .components()
        .any(|c| c.as_os_str() == OsStr::new(".git"))
    {
        return Err(refused(
            source,
            "lies inside a .git directory, which a sandbox must not write".into(),
        ));
    }
    for dir in source.ancestors() {
        if let Ok(handle) = DirHandle::open(dir) {
            if is_git_dir(&handle) {
                return Err(refused(
                    source,
                    format!(
                        "{} is a git directory, which a sandbox must not write",
                        dir.display()
                    ),
                ));
            }
        }
    }
    let root = match DirHandle::open(source) {
        Ok(root) => root,
        // A single file: nothing below it to guard.
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => return Ok(Guards::default()),
        Err(e) => return Err(refused(source, format!("cannot open it: {e}"))),
    };

    let mut walk = Walk {
        source,
        guarded: Vec::new(),
        pinned: Vec::new(),
        gitfiles: Vec::new(),
        dirs: 0,
    };
    let top_names = root
        .names()
        .map_err(|e| refused(source, format!("cannot list it: {e}")))?;
    if top == Top::MakeEmptyGit && !top_names.iter().any(|n| n == ".git") {
        match root.create_dir(OsStr::new(".git"), 0o755) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => {
                return Err(refused(
                    &source.join(".git"),
                    format!("cannot make an empty one to mount read-only: {e}"),
                ))
            }
        }
    }
    walk.tree(&root)
        .map_err(|(path, problem)| refused(&path, problem))?;
    walk.gitfile_targets(&root)
        .map_err(|(path, problem)| refused(&path, problem))?;
    // The repositories in the tree (and the one around it): what their config points at.
    let mut repositories: Vec<PathBuf> = vec![PathBuf::new()];
    repositories.extend(
        walk.guarded
            .iter()
            .filter(|(rel, _)| rel.file_name() == Some(OsStr::new(".git")))
            .filter_map(|(rel, _)| rel.parent().map(Path::to_path_buf))
            .filter(|parent| !parent.as_os_str().is_empty()),
    );
    let mut tops = Vec::new();
    for repository in repositories {
        walk.config_targets(&root, &repository, &mut tops)
            .map_err(|(path, problem)| refused(&path, problem))?;
    }
    if walk.guarded.len() > MAX_GUARDS {
        return Err(refused(
            source,
            format!(
                "holds {} git directories, more than the {MAX_GUARDS} berth mounts read-only",
                walk.guarded.len()
            ),
        ));
    }
    let top_after = root
        .stat()
        .map(|s| Identity::of(&s))
        .map_err(|e| refused(source, format!("cannot stat it: {e}")))?;
    let known = walk.guarded.iter().map(|(_, i)| (i.dev, i.ino)).collect();
    let pinned = walk
        .pinned
        .iter()
        .map(|(rel, i)| (rel.clone(), (i.dev, i.ino)))
        .collect();
    let mounts = walk
        .guarded
        .into_iter()
        .map(|(rel, identity)| {
            let target = format!("{target}/{}", rel.display());
            let mount = BindMount {
                source: source.join(&rel),
                target: target.clone(),
                read_only: true,
            };
            (mount, identity.at(target))
        })
        .collect();
    Ok(Guards {
        mounts,
        tree: Some(GuardedTree {
            source: source.to_path_buf(),
            top: (top_after.dev, top_after.ino),
            known,
            pinned,
        }),
        top_after: Some(top_after),
    })
}

type Refusal = (PathBuf, String);

struct Walk<'a> {
    source: &'a Path,
    /// Paths (relative to the source) to mount read-only, with what they were when seen.
    guarded: Vec<(PathBuf, Identity)>,
    /// Of those, the places git config names (checked again by path after the run).
    pinned: Vec<(PathBuf, Identity)>,
    /// Gitfiles seen: (where, the directory they name).
    gitfiles: Vec<(PathBuf, PathBuf)>,
    dirs: usize,
}

impl Walk<'_> {
    /// Depth first, one open handle per level.
    fn tree(&mut self, root: &DirHandle) -> Result<(), Refusal> {
        let top = root
            .open_dir(Path::new("."))
            .map_err(|e| self.io(Path::new(""), e))?;
        let names = top.names().map_err(|e| self.io(Path::new(""), e))?;
        let mut stack: Vec<(DirHandle, PathBuf, std::vec::IntoIter<OsString>)> =
            vec![(top, PathBuf::new(), names.into_iter())];
        while let Some((dir, rel, names)) = stack.last_mut() {
            let Some(name) = names.next() else {
                stack.pop();
                continue;
            };
            let path = rel.join(&name);
            let base = rel.clone();
            let Some(child) = self.entry(dir, &base, &name, &path)? else {
                continue;
            };
            if stack.len() >= MAX_DEPTH {
                return Err((
                    self.source.join(&path),
                    format!("lies more than {MAX_DEPTH} directories deep, too deep to check"),
                ));
            }
            let names = child.names().map_err(|e| self.io(&path, e))?;
            stack.push((child, path, names.into_iter()));
        }
        Ok(())
    }

    /// Looks at the entry `name` of `dir` (at `base`): guards it if it is a git directory, and
    /// returns it opened if it is a directory to walk into.
    fn entry(
        &mut self,
        dir: &DirHandle,
        base: &Path,
        name: &OsStr,
        path: &Path,
    ) -> Result<Option<DirHandle>, Refusal> {
        let stat = match dir.stat_entry(name) {
            Ok(stat) => stat,
            // Gone since it was listed: nothing there to guard.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(path, e)),
        };
        let kind = file_type(&stat);
        if name == ".git" {
            match kind {
                FileType::Directory => self.guard(path, Identity::of(&stat))?,
                FileType::RegularFile => {
                    self.guard(path, Identity::of(&stat))?;
                    if let Some(named) = read_gitfile(dir, name).map_err(|e| self.io(path, e))? {
                        let named = self.source.join(base).join(named);
                        self.gitfiles.push((path.to_path_buf(), named));
                    }
                }
                FileType::Symlink => {
                    return Err((
                        self.source.join(path),
                        "a symbolic link (the engine would follow it)".into(),
                    ))
                }
                other => {
                    return Err((
                        self.source.join(path),
                        format!("neither a directory nor a file ({other:?})"),
                    ))
                }
            }
            return Ok(None);
        }
        if kind != FileType::Directory {
            return Ok(None);
        }
        self.dirs += 1;
        if self.dirs > MAX_WALK_DIRS {
            return Err((
                self.source.to_path_buf(),
                format!(
                    "has more than {MAX_WALK_DIRS} directories, too many to check for git repositories"
                ),
            ));
        }
        let child = match dir.open_dir_entry(name) {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(path, e)),
        };
        if is_git_dir(&child) {
            self.guard(path, Identity::of(&stat))?;
            return Ok(None);
        }
        Ok(Some(child))
    }

    /// Gitfiles that name a directory inside the tree: that directory is guarded too.
    fn gitfile_targets(&mut self, root: &DirHandle) -> Result<(), Refusal> {
        let Ok(source) = std::fs::canonicalize(self.source) else {
            return Ok(());
        };
        for (gitfile, named) in std::mem::take(&mut self.gitfiles) {
            let resolved = std::fs::canonicalize(&named).unwrap_or_else(|_| named.clone());
            let Ok(rel) = resolved.strip_prefix(&source) else {
                continue; // outside the writable tree: the sandbox cannot write it here
            };
            if self.guarded.iter().any(|(g, _)| rel.starts_with(g)) {
                continue;
            }
            let dir = root.open_dir(rel).map_err(|e| {
                (
                    self.source.join(&gitfile),
                    format!(
                        "names {} as its git directory, inside the writable tree, and that is not a plain directory ({e})",
                        named.display()
                    ),
                )
            })?;
            let stat = dir.stat().map_err(|e| self.io(rel, e))?;
            self.guard(rel, Identity::of(&stat))?;
        }
        Ok(())
    }

    /// What the workspace's git configuration names inside the tree: a `core.hooksPath`
    /// (husky's `.husky/_`, `.githooks`; from any scope, relative to the repository's top) and
    /// the files an `include.path` or `includeIf.*.path` reads. Host git runs hooks from there
    /// and reads config from there, so each is guarded like a git directory; one that does not
    /// exist yet is refused, as the sandbox could make it.
    fn config_targets(
        &mut self,
        root: &DirHandle,
        repository: &Path,
        tops: &mut Vec<PathBuf>,
    ) -> Result<(), Refusal> {
        let Ok(source) = std::fs::canonicalize(self.source) else {
            return Ok(());
        };
        let dir = source.join(repository);
        let git = |args: &[&str]| {
            let out = crate::workspace::hardened_git(&dir)
                .args(args)
                .output()
                .ok()?;
            out.status.success().then_some(out.stdout)
        };
        // Not a repository, or git missing: nothing configured.
        let Some(top) = git(&["rev-parse", "--show-toplevel"]) else {
            return Ok(());
        };
        let top = PathBuf::from(OsStr::from_bytes(top.trim_ascii_end()));
        if tops.contains(&top) {
            return Ok(());
        }
        tops.push(top.clone());
        let listed = git(&[
            "config",
            "--null",
            "--show-scope",
            "--show-origin",
            "--get-regexp",
            r"^(core\.hookspath|include\.path|includeif\..*\.path)$",
        ])
        .unwrap_or_default();
        let home = std::env::var_os("HOME").map(PathBuf::from);
        // `scope NUL origin NUL key LF value NUL`, repeated.
        let mut fields = listed.split(|b| *b == 0);
        while let (Some(scope), Some(origin), Some(entry)) =
            (fields.next(), fields.next(), fields.next())
        {
            // berth's own `-c` settings (core.hooksPath=/dev/null).
            if scope == b"command" {
                continue;
            }
            let Some(split) = entry.iter().position(|b| *b == b'\n') else {
                continue;
            };
            let (key, value) = (&entry[..split], &entry[split + 1..]);
            let value = Path::new(OsStr::from_bytes(value));
            let named = if let (Ok(rest), Some(home)) = (value.strip_prefix("~"), &home) {
                home.join(rest)
            } else if value.is_absolute() {
                value.to_path_buf()
            } else if key.eq_ignore_ascii_case(b"core.hookspath") {
                top.join(value)
            } else {
                // An include is read relative to the file that names it.
                let origin = origin.strip_prefix(b"file:").unwrap_or(origin);
                let origin = dir.join(OsStr::from_bytes(origin));
                origin.parent().unwrap_or(&dir).join(value)
            };
            // Inside the tree as written: looked at without following links (a link there is
            // refused below, as the sandbox could replace it). Only a path that is outside as
            // written is resolved, for an absolute path through a link into the tree.
            let lexical = lexically_normal(&named);
            let named = if lexical.starts_with(&source) {
                lexical
            } else {
                resolved_prefix(&lexical)
            };
            let Ok(rel) = named.strip_prefix(&source) else {
                continue; // outside the writable tree
            };
            if rel.as_os_str().is_empty() || self.guarded.iter().any(|(g, _)| rel.starts_with(g)) {
                continue;
            }
            let stat = root
                .open_dir(rel)
                .and_then(|d| d.stat())
                .or_else(|_| root.open_file(rel).and_then(|f| Ok(rustix::fs::fstat(&f)?)));
            match stat {
                Ok(stat) => {
                    self.guard(rel, Identity::of(&stat))?;
                    self.pinned.push((rel.to_path_buf(), Identity::of(&stat)));
                }
                Err(e) => {
                    return Err((
                        named.clone(),
                        format!(
                            "your git configuration ({}) names it, inside the writable workspace, and it is {}: the sandbox could put there what your git would then run or read",
                            String::from_utf8_lossy(key),
                            if e.kind() == std::io::ErrorKind::NotFound {
                                "missing".to_string()
                            } else {
                                format!("not a plain file or directory ({e})")
                            }
                        ),
                    ))
                }
            }
        }
        Ok(())
    }

    fn guard(&mut self, rel: &Path, identity: Identity) -> Result<(), Refusal> {
        if rel.to_str().is_none() {
            return Err((
                self.source.join(rel),
                "a git directory whose name is not UTF-8, which the engine cannot mount".into(),
            ));
        }
        self.guarded.push((rel.to_path_buf(), identity));
        Ok(())
    }

    fn io(&self, rel: &Path, e: std::io::Error) -> Refusal {
        (self.source.join(rel), format!("cannot read it: {e}"))
    }
}

/// `path` with its longest existing prefix canonicalised (links in it resolved), the rest as
/// written: a configured path through a link into the tree is seen inside it.
fn resolved_prefix(path: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut prefix = path;
    loop {
        if let Ok(real) = std::fs::canonicalize(prefix) {
            return rest.iter().rev().fold(real, |p, c| p.join(c));
        }
        match (prefix.parent(), prefix.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                prefix = parent;
            }
            _ => return path.to_path_buf(),
        }
    }
}

/// `path` with `.` and `..` taken out as written (no link looked at).
fn lexically_normal(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Whether `dir` holds what makes a git directory: `HEAD`, `objects/` and `refs/`.
fn is_git_dir(dir: &DirHandle) -> bool {
    // Wider than git's own test on purpose: git follows links here and asks only whether
    // `objects` and `refs` can be searched, so any entry of these names counts, whatever it is.
    let has = |name: &str| match dir.stat_entry(OsStr::new(name)) {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    };
    has("HEAD") && ((has("objects") && has("refs")) || has("commondir"))
}

/// The directory a gitfile (`gitdir: PATH`) names, if it is one.
fn read_gitfile(dir: &DirHandle, name: &OsStr) -> std::io::Result<Option<PathBuf>> {
    let mut text = Vec::new();
    dir.open_file_entry(name)?
        .take(MAX_GITFILE)
        .read_to_end(&mut text)?;
    let line = text.split(|b| *b == b'\n').next().unwrap_or_default();
    Ok(line
        .strip_prefix(b"gitdir: ")
        .map(|p| PathBuf::from(OsStr::from_bytes(p.trim_ascii_end()))))
}

/// A writable tree as it was guarded before a run: what its git directories were.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct GuardedTree {
    pub source: PathBuf,
    /// Device and inode of the tree's top when it was guarded: the check after the run looks
    /// at that directory or at nothing (a link swapped in above it leads elsewhere).
    top: (u64, u64),
    /// Device and inode of each git directory guarded.
    known: Vec<(u64, u64)>,
    /// The places git config names (hooks, included files), relative to the top, with what was
    /// there: the run may move a parent away and put something else at the same path.
    #[serde(default)]
    pinned: Vec<(PathBuf, (u64, u64))>,
}

/// The run directory's record of the trees to check after the run, kept until the check is
/// done: a run whose berth was killed, or whose runner restarted, is checked by whoever
/// concludes it (`berth gc`, the runner that adopts it).
pub const PENDING_CHECK_FILE: &str = "git-check.json";

/// Writes the pending check into `run_dir` (berth's, never the sandbox's).
pub fn save_pending(run_dir: &Path, trees: &[GuardedTree]) -> std::io::Result<()> {
    let path = run_dir.join(PENDING_CHECK_FILE);
    let tmp = run_dir.join(format!("{PENDING_CHECK_FILE}.tmp"));
    std::fs::write(
        &tmp,
        serde_json::to_vec(trees).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(tmp, path)
}

/// The check a run left pending in `run_dir`, if any.
pub fn load_pending(run_dir: &Path) -> Option<Vec<GuardedTree>> {
    let bytes = std::fs::read(run_dir.join(PENDING_CHECK_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The check is done.
pub fn clear_pending(run_dir: &Path) {
    let _ = std::fs::remove_file(run_dir.join(PENDING_CHECK_FILE));
}

/// What to tell the user when a pending check exists but cannot be read (it is left in place).
pub fn unreadable_pending(run_dir: &Path) -> Option<String> {
    let path = run_dir.join(PENDING_CHECK_FILE);
    (path.exists() && load_pending(run_dir).is_none()).then(|| {
        format!(
            "the check for git repositories the run made, kept in {}, cannot be read: look at the run's workspace and writable mounts for a .git you did not make before you run git there",
            path.display()
        )
    })
}

/// Runs a check `run_dir` left pending and clears it; what it did, as warnings.
pub fn check_pending(run_dir: &Path, run_id: &str) -> Vec<String> {
    let Some(trees) = load_pending(run_dir) else {
        return unreadable_pending(run_dir).into_iter().collect();
    };
    let mut said = Vec::new();
    for tree in &trees {
        let (renamed, problems) = quarantine_planted(tree, run_id);
        said.extend(renamed.iter().map(|path| renamed_message(path, run_id)));
        said.extend(problems);
    }
    clear_pending(run_dir);
    said
}

/// What a user is told of a repository the run made.
pub fn renamed_message(path: &Path, run_id: &str) -> String {
    format!(
        "the run made a git repository at {}; host git would obey its config and hooks, so berth renamed it (to .git.berth-quarantine-{run_id}, or its HEAD to HEAD.berth-quarantine-{run_id}): look at it before you rename it back",
        path.display()
    )
}

/// The most directories the check after a run reads: the sandbox may have made the tree larger
/// than the walk before it allowed, and is not to escape the check that way cheaply.
const MAX_CHECK_DIRS: usize = 1_000_000;

/// After a run, once none of its processes is left, neutralises every repository the run made
/// in the tree, so that host git never finds and obeys it:
///
/// - a `.git` entry that was not there before (a `git init`, a `.git` in a submodule's empty
///   path, a link) is renamed in place to `.git.berth-quarantine-RUN`;
/// - a directory that git would take for a repository by its contents (`HEAD` and `objects/` +
///   `refs/`, or `commondir`), the tree's top included, that was not there before has its
///   `HEAD` renamed, which makes it no repository; a renamed `.git` directory gets the same.
///
/// A directory the run made unreadable is given back its owner's permissions first. Returns
/// what was neutralised, and the problems that kept parts of the tree unchecked.
pub fn quarantine_planted(tree: &GuardedTree, run_id: &str) -> (Vec<PathBuf>, Vec<String>) {
    let mut check = Check {
        tree,
        suffix: format!("berth-quarantine-{run_id}"),
        renamed: Vec::new(),
        problems: Vec::new(),
    };
    let root = match DirHandle::open(&tree.source) {
        Ok(root) => root,
        Err(e) => {
            check
                .problems
                .push(format!("{}: {e}", tree.source.display()));
            return (check.renamed, check.problems);
        }
    };
    if root.stat().map(|s| (s.st_dev, s.st_ino)).ok() != Some(tree.top) {
        check.problems.push(format!(
            "{}: another directory is at this path than before the run (a link swapped in above it?); it was not checked for git repositories the run made: do not run git in the tree before you have looked at it",
            tree.source.display()
        ));
        return (check.renamed, check.problems);
    }
    check.pinned_places(&root);
    let mut dirs = 0usize;
    // Paths, not handles: a tree made wide must not run berth out of descriptors. Each is
    // opened beneath the root with no link on the way.
    let mut stack: Vec<PathBuf> = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Some(dir) = check.open(&root, &rel) else {
            continue;
        };
        let identity = dir.stat().map(|s| (s.st_dev, s.st_ino)).ok();
        if is_git_dir(&dir) && !identity.is_some_and(|i| tree.known.contains(&i)) {
            check.neutralise_head(&dir, &rel);
        }
        let names = match dir.names() {
            Ok(names) => names,
            Err(e) => {
                check.problem(&rel, &e);
                continue;
            }
        };
        for name in names {
            let stat = match dir.stat_entry(&name) {
                Ok(stat) => stat,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    check.problem(&rel.join(&name), &e);
                    continue;
                }
            };
            let path = rel.join(&name);
            if name == ".git" {
                if !tree.known.contains(&(stat.st_dev, stat.st_ino)) {
                    check.quarantine_git(&dir, &rel, file_type(&stat));
                }
                continue;
            }
            if file_type(&stat) != FileType::Directory {
                continue;
            }
            dirs += 1;
            if dirs > MAX_CHECK_DIRS {
                check.problems.push(format!(
                    "{}: more than {MAX_CHECK_DIRS} directories after the run; the rest was not checked for git repositories the run made: do not run git there before you have looked",
                    tree.source.display()
                ));
                return (check.renamed, check.problems);
            }
            stack.push(path);
        }
    }
    (check.renamed, check.problems)
}

struct Check<'a> {
    tree: &'a GuardedTree,
    suffix: String,
    renamed: Vec<PathBuf>,
    problems: Vec<String>,
}

impl Check<'_> {
    /// Opens the directory at `rel` beneath the root; one the run made unreadable (or
    /// unsearchable) gets its owner's permissions back first.
    fn open(&mut self, root: &DirHandle, rel: &Path) -> Option<DirHandle> {
        let at = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        match root.open_dir(at) {
            // Readable but not searchable (or the reverse) would hide what is inside: berth
            // (not root, so bound by the modes) gives the owner both back first.
            Ok(dir)
                if !rustix::process::geteuid().is_root()
                    && dir.stat().is_ok_and(|s| s.st_mode & 0o500 != 0o500) =>
            {
                if let Err(e) = give_owner_access(root, at) {
                    self.problem(rel, &e);
                    return None;
                }
            }
            Ok(dir) => return Some(dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) if e.raw_os_error() == Some(libc::EACCES) => {
                if let Err(e) = give_owner_access(root, at) {
                    self.problem(rel, &e);
                    return None;
                }
            }
            Err(e) => {
                self.problem(rel, &e);
                return None;
            }
        }
        root.open_dir(at).map_err(|e| self.problem(rel, &e)).ok()
    }

    /// The places git config names (a hooks directory, an included file) must still be what
    /// was there before the run: the run can move a parent directory away (the read-only mount
    /// moves with it) and make another at the same path. Whatever is there instead is renamed.
    fn pinned_places(&mut self, root: &DirHandle) {
        for (rel, identity) in &self.tree.pinned {
            let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
                continue;
            };
            let at = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            let Ok(dir) = root.open_dir(at) else {
                continue; // the path is gone: git finds nothing there
            };
            match dir.stat_entry(name) {
                Ok(stat) if (stat.st_dev, stat.st_ino) != *identity => {
                    let stem = name.to_string_lossy().into_owned();
                    if let Some(new_name) = self.rename_unique(&dir, name, &stem, rel) {
                        self.problems.push(format!(
                            "your git configuration names {} (hooks or an included file), and the run put something else there (moving what was there away): berth renamed it to {}; look at it before you use it",
                            self.tree.source.join(rel).display(),
                            new_name.to_string_lossy()
                        ));
                    }
                }
                _ => {}
            }
        }
    }

    /// Renames the `.git` entry of `dir` (at `rel`) out of git's way; a directory also loses
    /// its `HEAD`, so that git does not take it for a repository under its new name either.
    fn quarantine_git(&mut self, dir: &DirHandle, rel: &Path, kind: FileType) {
        let path = rel.join(".git");
        let Some(new_name) = self.rename_unique(dir, OsStr::new(".git"), ".git", &path) else {
            return;
        };
        self.renamed.push(self.tree.source.join(&path));
        if kind == FileType::Directory {
            match dir.open_dir_entry(&new_name) {
                Ok(moved) => {
                    if moved.stat_entry(OsStr::new("HEAD")).is_ok() {
                        let _ = self.rename_unique(
                            &moved,
                            OsStr::new("HEAD"),
                            "HEAD",
                            &rel.join(&new_name).join("HEAD"),
                        );
                    }
                }
                Err(e) => self.problem(&rel.join(&new_name), &e),
            }
        }
    }

    /// Renames `HEAD` in `dir`, a repository the run made: git then takes it for none.
    fn neutralise_head(&mut self, dir: &DirHandle, rel: &Path) {
        let path = rel.join("HEAD");
        if self
            .rename_unique(dir, OsStr::new("HEAD"), "HEAD", &path)
            .is_some()
        {
            self.renamed.push(self.tree.source.join(rel));
        }
    }

    /// Renames `from` in `dir` to `STEM.berth-quarantine-RUN` (a number added while that name
    /// is taken), never replacing anything; the new name, or `None` after saying why not.
    fn rename_unique(
        &mut self,
        dir: &DirHandle,
        from: &OsStr,
        stem: &str,
        path: &Path,
    ) -> Option<OsString> {
        for n in 0..100 {
            let name = match n {
                0 => OsString::from(format!("{stem}.{}", self.suffix)),
                1..=3 => OsString::from(format!("{stem}.{}-{n}", self.suffix)),
                // The run knows its id and could take every numbered name first: then one it
                // cannot guess.
                _ => OsString::from(format!("{stem}.{}-{:016x}", self.suffix, unguessable())),
            };
            match rustix::fs::renameat_with(
                dir,
                from,
                dir,
                name.as_os_str(),
                rustix::fs::RenameFlags::NOREPLACE,
            ) {
                Ok(()) => return Some(name),
                Err(rustix::io::Errno::EXIST) => continue,
                Err(e) => {
                    self.problems.push(format!(
                        "{}: part of a git repository the run made, which berth could not rename ({e}); do not run git there before you have looked at it",
                        self.tree.source.join(path).display()
                    ));
                    return None;
                }
            }
        }
        self.problems.push(format!(
            "{}: part of a git repository the run made, which berth could not rename (every name tried was taken); do not run git there before you have looked at it",
            self.tree.source.join(path).display()
        ));
        None
    }

    fn problem(&mut self, rel: &Path, e: &std::io::Error) {
        self.problems.push(format!(
            "{}: not checked for git repositories the run made ({e}); do not run git there before you have looked at it",
            self.tree.source.join(rel).display()
        ));
    }
}

/// A number no process of the sandbox can predict: from the standard library's randomly
/// seeded hasher, and the time.
fn unguessable() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}

/// Adds the owner's read, write and search permission to the directory at `rel` (beneath
/// `root`, no link followed): through an `O_PATH` descriptor and its `/proc/self/fd` name, so
/// that the change lands on the very directory opened, whatever is swapped in meanwhile.
fn give_owner_access(root: &DirHandle, rel: &Path) -> std::io::Result<()> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    use std::os::fd::AsRawFd;
    let fd = rustix::fs::openat2(
        root,
        rel,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )?;
    let stat = rustix::fs::fstat(&fd)?;
    let mode = Mode::from_raw_mode((stat.st_mode & 0o7777) | 0o700);
    rustix::fs::chmod(format!("/proc/self/fd/{}", fd.as_raw_fd()), mode)?;
    Ok(())
}

/// Drops the guards that another mount hides: those at or below the target of a mount nested
/// inside the guarded tree (the host directory there is not what the sandbox sees).
pub fn unshadowed(
    guards: Vec<(BindMount, MountIdentity)>,
    tree_target: &str,
    all_targets: &[String],
) -> Vec<(BindMount, MountIdentity)> {
    let nested: Vec<&String> = all_targets
        .iter()
        .filter(|t| Path::new(t.as_str()).starts_with(tree_target) && t.as_str() != tree_target)
        .collect();
    guards
        .into_iter()
        .filter(|(m, _)| {
            !nested
                .iter()
                .any(|t| Path::new(&m.target).starts_with(t.as_str()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_pending_check_is_said_and_left() {
        let run_dir = tempfile::tempdir().unwrap();
        assert!(
            check_pending(run_dir.path(), "r1").is_empty(),
            "nothing pending"
        );
        let file = run_dir.path().join(PENDING_CHECK_FILE);
        std::fs::write(&file, b"{not json").unwrap();
        let said = check_pending(run_dir.path(), "r1");
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(said[0].contains("cannot be read"), "{said:?}");
        assert!(file.exists(), "left for the user to see");
    }

    fn git(dir: &Path, args: &[&str]) {
        let ok = std::process::Command::new("git")
            .current_dir(dir)
            .args(args)
            .output()
            .unwrap();
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
    }

    fn targets(g: &Guards) -> Vec<String> {
        let mut t: Vec<String> = g.mounts.iter().map(|(m, _)| m.target.clone()).collect();
        t.sort();
        t
    }

    #[test]
    fn every_git_directory_in_the_tree_is_found() {
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        git(&root, &["init", "-q"]);
        std::fs::create_dir_all(root.join("a/nested")).unwrap();
        git(&root.join("a/nested"), &["init", "-q"]);
        git(&root, &["init", "-q", "--bare", "vendor/lib.git"]);
        // A gitfile naming a directory inside the tree under another name.
        std::fs::create_dir(root.join("wt")).unwrap();
        std::fs::create_dir(root.join("hidden")).unwrap();
        let store = root.join("hidden/store").display().to_string();
        git(&root, &["init", "-q", "--separate-git-dir", &store, "wt2"]);
        std::fs::write(root.join("wt/.git"), "gitdir: ../other\n").unwrap();
        std::fs::create_dir_all(root.join("other/plain")).unwrap();
        let g = guard(&root, "/workspace", Top::AsItIs).unwrap();
        assert_eq!(
            targets(&g),
            [
                "/workspace/.git",
                "/workspace/a/nested/.git",
                "/workspace/hidden/store",
                "/workspace/other",
                "/workspace/vendor/lib.git",
                "/workspace/wt/.git",
                "/workspace/wt2/.git",
            ]
        );
        assert!(g.mounts.iter().all(|(m, _)| m.read_only));
    }

    #[test]
    fn the_workspace_gets_an_empty_git_where_it_has_none() {
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        let g = guard(&root, "/workspace", Top::MakeEmptyGit).unwrap();
        assert_eq!(targets(&g), ["/workspace/.git"]);
        assert!(root.join(".git").is_dir());
        let g = guard(&root.join(".git"), "/data", Top::AsItIs).unwrap_err();
        assert!(g.to_string().contains("inside a .git directory"), "{g}");
    }

    #[test]
    fn symlinks_and_git_directories_as_sources_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("sub/.git")).unwrap();
        let e = guard(&root, "/data", Top::AsItIs).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        std::fs::remove_file(root.join("sub/.git")).unwrap();
        git(&root, &["init", "-q", "--bare", "bare"]);
        std::fs::create_dir(root.join("bare/hooks/x")).unwrap();
        for inside in ["bare", "bare/hooks", "bare/hooks/x"] {
            let e = guard(&root.join(inside), "/data", Top::AsItIs).unwrap_err();
            assert!(
                e.to_string().contains("is a git directory"),
                "{inside}: {e}"
            );
        }
    }

    #[test]
    fn repositories_made_after_the_guard_are_neutralised_and_known_ones_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        std::fs::create_dir_all(root.join("sub")).unwrap();
        git(&root.join("sub"), &["init", "-q"]);
        let g = guard(&root, "/workspace", Top::MakeEmptyGit).unwrap();
        let tree = g.tree.unwrap();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        git(&root.join("a/b"), &["init", "-q"]);
        std::os::unix::fs::symlink("/etc", root.join("a/.git")).unwrap();
        // A repository by its contents at the top, under the empty read-only `.git`.
        git(&root, &["init", "-q", "--bare", "."]);
        // The name berth renames to, taken first; and a directory made unreadable.
        std::fs::create_dir_all(root.join("c/.git.berth-quarantine-r1")).unwrap();
        git(&root.join("c"), &["init", "-q"]);
        std::fs::set_permissions(
            root.join("c"),
            std::os::unix::fs::PermissionsExt::from_mode(0o111),
        )
        .unwrap();
        let (renamed, problems) = quarantine_planted(&tree, "r1");
        assert!(problems.is_empty(), "{problems:?}");
        let mut renamed: Vec<_> = renamed
            .iter()
            .map(|p| p.strip_prefix(&root).unwrap().display().to_string())
            .collect();
        renamed.sort();
        assert_eq!(renamed, ["", "a/.git", "a/b/.git", "c/.git"]);
        assert!(root.join("HEAD.berth-quarantine-r1").is_file() && !root.join("HEAD").exists());
        assert!(root
            .join("a/b/.git.berth-quarantine-r1/HEAD.berth-quarantine-r1")
            .is_file());
        assert!(root.join("c/.git.berth-quarantine-r1-1").is_dir());
        assert!(!root.join("c/.git").exists());
        // Known repositories are left alone; host git finds nothing at the top any more.
        assert!(root.join("sub/.git/HEAD").is_file() && root.join(".git").is_dir());
        let status = std::process::Command::new("git")
            .current_dir(&root)
            .env("GIT_CEILING_DIRECTORIES", root.parent().unwrap())
            .args(["status"])
            .output()
            .unwrap();
        assert!(!status.status.success(), "git still finds a repository");
    }

    /// git takes a directory for a repository when `objects` and `refs` are links, or even
    /// executable files; so does the check.
    #[test]
    fn repositories_of_any_shape_are_neutralised() {
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        let tree = guard(&root, "/workspace", Top::MakeEmptyGit)
            .unwrap()
            .tree
            .unwrap();
        for (dir, objects_is_link) in [("links", true), ("files", false)] {
            let d = root.join(dir);
            std::fs::create_dir_all(d.join(".o")).unwrap();
            std::fs::write(d.join("HEAD"), "ref: refs/heads/main\n").unwrap();
            if objects_is_link {
                std::os::unix::fs::symlink(".o", d.join("objects")).unwrap();
                std::os::unix::fs::symlink(".o", d.join("refs")).unwrap();
            } else {
                for name in ["objects", "refs"] {
                    std::fs::write(d.join(name), "").unwrap();
                    std::fs::set_permissions(
                        d.join(name),
                        std::os::unix::fs::PermissionsExt::from_mode(0o755),
                    )
                    .unwrap();
                }
            }
        }
        let (renamed, problems) = quarantine_planted(&tree, "r2");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(renamed.len(), 2, "{renamed:?}");
        for dir in ["links", "files"] {
            assert!(!root.join(dir).join("HEAD").exists(), "{dir}");
        }
    }

    /// A link swapped in above the tree's top after the guard leads the check elsewhere: it
    /// looks at nothing there, and says so.
    #[test]
    fn the_check_touches_nothing_when_the_top_is_another_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(tmp.path()).unwrap();
        std::fs::create_dir_all(base.join("m/sub")).unwrap();
        let tree = guard(&base.join("m/sub"), "/data", Top::AsItIs)
            .unwrap()
            .tree
            .unwrap();
        std::fs::rename(base.join("m"), base.join("m.old")).unwrap();
        std::fs::create_dir_all(base.join("victim/sub/proj")).unwrap();
        git(&base.join("victim/sub/proj"), &["init", "-q"]);
        std::os::unix::fs::symlink(base.join("victim"), base.join("m")).unwrap();
        let (renamed, problems) = quarantine_planted(&tree, "r3");
        assert!(renamed.is_empty(), "{renamed:?}");
        assert!(problems[0].contains("another directory"), "{problems:?}");
        assert!(base.join("victim/sub/proj/.git/HEAD").is_file());
    }

    /// Your own config can point host git into the workspace (husky's hooks, an included
    /// file): those places are guarded too, and one that is missing is refused.
    #[test]
    fn hooks_and_includes_your_config_names_in_the_workspace_are_guarded() {
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        git(&root, &["init", "-q"]);
        git(&root, &["config", "core.hooksPath", ".husky/_"]);
        git(&root, &["config", "include.path", "../.gitconfig"]);
        git(
            &root,
            &["config", "includeIf.onbranch:main.path", "/etc/elsewhere"],
        );
        std::fs::create_dir_all(root.join(".husky/_")).unwrap();
        std::fs::write(root.join(".gitconfig"), "[user]\n\tname = x\n").unwrap();
        let g = guard(&root, "/workspace", Top::MakeEmptyGit).unwrap();
        assert_eq!(
            targets(&g),
            [
                "/workspace/.git",
                "/workspace/.gitconfig",
                "/workspace/.husky/_"
            ]
        );
        std::fs::remove_dir_all(root.join(".husky")).unwrap();
        let e = guard(&root, "/workspace", Top::MakeEmptyGit).unwrap_err();
        assert!(
            e.to_string().contains(".husky/_") && e.to_string().contains("core.hookspath"),
            "{e}"
        );
        // The same in a writable mount, and for a repository nested in the tree.
        assert!(guard(&root, "/data", Top::AsItIs).is_err());
        std::fs::create_dir_all(root.join(".husky/_")).unwrap();
        let nested = root.join("vendor/lib");
        std::fs::create_dir_all(&nested).unwrap();
        git(&nested, &["init", "-q"]);
        git(&nested, &["config", "core.hooksPath", "hooks"]);
        let e = guard(&root, "/workspace", Top::MakeEmptyGit).unwrap_err();
        assert!(e.to_string().contains("vendor/lib/hooks"), "{e}");
        std::fs::create_dir(nested.join("hooks")).unwrap();
        let g = guard(&root, "/data", Top::AsItIs).unwrap();
        assert!(
            targets(&g).contains(&"/data/vendor/lib/hooks".to_string()),
            "{:?}",
            targets(&g)
        );
    }

    /// A configured place inside the tree that is a link (to outside) is refused: the run could
    /// replace the link with a directory of hooks.
    #[test]
    fn a_configured_place_that_is_a_link_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        let outside = tempfile::tempdir().unwrap();
        git(&root, &["init", "-q"]);
        git(&root, &["config", "core.hooksPath", "tools/hooks"]);
        std::os::unix::fs::symlink(outside.path(), root.join("tools")).unwrap();
        std::fs::create_dir(outside.path().join("hooks")).unwrap();
        let e = guard(&root, "/workspace", Top::MakeEmptyGit).unwrap_err();
        assert!(e.to_string().contains("tools/hooks"), "{e}");
    }

    /// The run moves a parent of a guarded hooks directory away (the read-only mount moves with
    /// it) and makes another hooks directory at the same path: it is renamed after the run.
    #[test]
    fn a_hooks_directory_put_where_the_guarded_one_was_is_renamed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        git(&root, &["init", "-q"]);
        git(&root, &["config", "core.hooksPath", "tools/hooks"]);
        std::fs::create_dir_all(root.join("tools/hooks")).unwrap();
        let tree = guard(&root, "/workspace", Top::MakeEmptyGit)
            .unwrap()
            .tree
            .unwrap();
        std::fs::rename(root.join("tools"), root.join("tools.x")).unwrap();
        std::fs::create_dir_all(root.join("tools/hooks")).unwrap();
        std::fs::write(root.join("tools/hooks/pre-commit"), "touch PWNED").unwrap();
        let (_, problems) = quarantine_planted(&tree, "r4");
        assert!(!root.join("tools/hooks").exists());
        assert!(root
            .join("tools/hooks.berth-quarantine-r4/pre-commit")
            .is_file());
        assert!(problems[0].contains("tools/hooks"), "{problems:?}");
        // What was guarded, moved, is left alone.
        assert!(root.join("tools.x/hooks").is_dir());
    }

    #[test]
    fn guards_under_a_nested_mount_are_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        git(&root.join("a/b"), &["init", "-q"]);
        git(&root, &["init", "-q"]);
        let g = guard(&root, "/workspace", Top::AsItIs).unwrap();
        let kept = unshadowed(
            g.mounts,
            "/workspace",
            &["/workspace".into(), "/workspace/a".into()],
        );
        let kept: Vec<&str> = kept.iter().map(|(m, _)| m.target.as_str()).collect();
        assert_eq!(kept, ["/workspace/.git"]);
    }
}
