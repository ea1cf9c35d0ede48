//! git on the host, always with berth's fixed settings.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{GitError, RepoInfo};

/// Runs `git ARGS` in `dir` with berth's fixed settings (no hooks, no signing, an identity)
/// and returns its stdout; an error quotes git's stderr.
pub(super) fn run_git(
    dir: &Path,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> Result<Vec<u8>, GitError> {
    git_command(dir, &[], args, stdin)
}

pub(super) fn git_command(
    dir: &Path,
    before: &[String],
    args: &[&str],
    stdin: Option<&[u8]>,
) -> Result<Vec<u8>, GitError> {
    let mut command = hardened_git(dir);
    command.args(before);
    run_command(command, args, stdin)
}

/// `git` in `dir` with berth's fixed settings: no hooks, no fsmonitor, no signing, an identity,
/// no prompt, and none of the caller's `GIT_DIR`-like variables (berth names the repository
/// itself). Configuration that a sandbox could have written is never read: berth's git
/// commands on a tree the sandbox wrote name their git directory explicitly.
pub(crate) fn hardened_git(dir: &Path) -> Command {
    let mut command = Command::new("git");
    command
        .current_dir(dir)
        .args([
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "core.fsmonitor=false",
            "-c",
            "commit.gpgSign=false",
            "-c",
            "user.name=berth",
            "-c",
            "user.email=berth@localhost",
            "-c",
            "safe.directory=*",
            // A repository inside the tree (a submodule, or one the sandbox made) is never
            // entered: git would read its config (filters, `core.sshCommand`) and obey it.
            "-c",
            "submodule.recurse=false",
            "-c",
            "fetch.recurseSubmodules=false",
            "-c",
            "diff.ignoreSubmodules=all",
            "-c",
            "status.submoduleSummary=false",
            // Config that could have been planted cannot turn on a transport that runs commands.
            "-c",
            "protocol.ext.allow=never",
            // A directory that merely looks like a repository (one a sandbox made of the
            // checkout itself, say) is never taken for one: berth names its bare ones.
            "-c",
            "safe.bareRepository=explicit",
        ])
        .env("GIT_TERMINAL_PROMPT", "0")
        // `conflicting_files` reads git's messages, which are translated in other locales.
        .env("LC_ALL", "C");
    for name in [
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_OBJECT_DIRECTORY",
        "GIT_ALTERNATE_OBJECT_DIRECTORIES",
        "GIT_COMMON_DIR",
        "GIT_NAMESPACE",
        "GIT_ATTR_SOURCE",
    ] {
        command.env_remove(name);
    }
    command
}

/// The oldest git that honours `GIT_ATTR_SOURCE` (2.41): berth's diff and `git add` of a tree
/// the sandbox wrote take attributes from there, so that a `.gitattributes` the sandbox planted
/// cannot pick the user's filters or diff drivers. An older git ignores the variable silently.
const ATTR_SOURCE_SINCE: (u32, u32) = (2, 41);

/// `(major, minor)` of `git version 2.47.3` (and of vendor suffixes like `2.39.2.windows.1` or
/// `2.34.1 (Apple Git-…)`).
pub(crate) fn parse_git_version(output: &str) -> Option<(u32, u32)> {
    let version = output.trim().strip_prefix("git version ")?;
    let mut parts = version.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Refuses copy and worktree runs on a host whose git is older than 2.41, or that reports a
/// version berth cannot read, with what to do. Asked once per process. A git that cannot be
/// started is left for the git commands themselves to report.
pub(crate) fn check_attr_source_support() -> Result<(), crate::SandboxError> {
    static VERSION: std::sync::OnceLock<Option<Result<(u32, u32), String>>> =
        std::sync::OnceLock::new();
    let version = VERSION.get_or_init(|| {
        let out = hardened_git(Path::new("/"))
            .arg("--version")
            .output()
            .ok()?;
        let said = String::from_utf8_lossy(&out.stdout);
        Some(parse_git_version(&said).ok_or_else(|| said.trim().to_string()))
    });
    match version {
        Some(Err(said)) => Err(crate::SandboxError::WithHint {
            message: format!(
                "`git --version` on this host said {said:?}, which berth cannot read: copy and worktree mode need git 2.41 or newer (an older git ignores GIT_ATTR_SOURCE, so a .gitattributes the sandbox wrote could choose your filters and diff drivers)"
            ),
            hint: "make `git` on PATH a git 2.41 or newer, or use --workspace-mode rw or none".into(),
        }),
        Some(Ok(v)) if *v < ATTR_SOURCE_SINCE => Err(crate::SandboxError::WithHint {
            message: format!(
                "git {}.{} on this host is older than {}.{}, which copy and worktree mode need: an older git ignores GIT_ATTR_SOURCE, so a .gitattributes the sandbox wrote could choose your filters and diff drivers when berth takes the diff",
                v.0, v.1, ATTR_SOURCE_SINCE.0, ATTR_SOURCE_SINCE.1
            ),
            hint: "install git 2.41 or newer (e.g. from your distribution's backports), or use --workspace-mode rw (the sandbox writes the checkout itself, its .git read-only) or none".into(),
        }),
        _ => Ok(()),
    }
}

/// Runs a `git` command made by [`hardened_git`] with `args`; its stdout, or an error quoting
/// its stderr.
pub(crate) fn run_command(
    mut command: Command,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> Result<Vec<u8>, GitError> {
    command
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => GitError::NotInstalled,
        _ => GitError::Run(e),
    })?;
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(data).map_err(GitError::Stdin)?;
    }
    let output = child.wait_with_output().map_err(GitError::Run)?;
    if output.status.success() {
        Ok(output.stdout)
    } else {
        Err(GitError::Failed {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

pub(crate) fn text(bytes: Vec<u8>) -> String {
    String::from_utf8_lossy(&bytes)
        .trim_end_matches('\n')
        .to_string()
}

/// The git checkout `dir` lies in, if any.
pub(super) fn repo_info(dir: &Path) -> Option<RepoInfo> {
    let top = text(run_git(dir, &["rev-parse", "--show-toplevel"], None).ok()?);
    let prefix = text(run_git(dir, &["rev-parse", "--show-prefix"], None).ok()?);
    let head = run_git(
        dir,
        &["rev-parse", "--verify", "--quiet", "HEAD^{commit}"],
        None,
    )
    .ok()
    .map(text);
    Some(RepoInfo {
        top: PathBuf::from(top),
        prefix,
        head,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_speaks_the_c_locale_whatever_the_user_set() {
        // An alias starting with `!` runs in git's own environment, so it shows what git got.
        let dir = tempfile::tempdir().unwrap();
        let out = run_git(
            dir.path(),
            &["-c", "alias.locale=!printenv LC_ALL", "locale"],
            None,
        )
        .unwrap();
        assert_eq!(String::from_utf8_lossy(&out).trim(), "C");
    }
}

#[cfg(test)]
mod version_tests {
    use super::parse_git_version;

    #[test]
    fn git_versions_are_read_with_their_vendor_suffixes() {
        for (output, expected) in [
            ("git version 2.47.3\n", Some((2, 47))),
            ("git version 2.39.2.windows.1", Some((2, 39))),
            ("git version 2.34.1 (Apple Git-137)", Some((2, 34))),
            ("git version 2.41", Some((2, 41))),
            ("not git", None),
            ("git version x", None),
        ] {
            assert_eq!(parse_git_version(output), expected, "{output}");
        }
        assert!(Some((2, 40)) < Some((2, 41)) && (2, 40) < super::ATTR_SOURCE_SINCE);
        assert!((3, 0) >= super::ATTR_SOURCE_SINCE);
    }
}
