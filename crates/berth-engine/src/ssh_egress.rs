//! A run's egress sockets carried to an ssh engine's host by a remote stream forward (`ssh -R`).
//!
//! With egress policy the sandbox has no network; it reaches berth's proxy through Unix sockets
//! bind-mounted at `/berth/egress`. A local engine mounts the run's egress directory of this
//! host. An engine on another host cannot, so for an `ssh://` engine berth makes a private
//! directory on that host and has ssh forward a socket there to each of the proxy's sockets here:
//!
//! 1. `ssh HOST 'umask 077; mktemp -d …/berth-egress.XXXXXXXX'` makes the directory (0700, the
//!    login user's), in the remote `$TMPDIR` or `/tmp`.
//! 2. One ssh carries every listener (`-R DIR/NAME.sock:LOCAL/NAME.sock`, ExitOnForwardFailure)
//!    and runs [`guard_script`] there: it hands the sockets to the sandbox's user (see
//!    [`RemoteAccess`]), says `ready`, waits until its stdin closes, then removes the directory.
//!
//! That stdin closes when the run ends ([`EgressForward::close`]), when the forward is dropped
//! (ssh killed), when berth dies (the kernel ends ssh: `PR_SET_PDEATHSIG`) or when the connection
//! is lost: in each case sshd closes the script's stdin and the directory goes with it. Like the
//! engine's own tunnel ([`crate::ssh`]), berth never runs the docker CLI for this; the remote
//! login shell must be a POSIX shell.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

use crate::endpoint::SshTarget;
use crate::ssh::TunnelError;
use crate::ssh::{classify_ssh_log, destination, last_line, ssh_options};

/// How long each ssh gets to connect, authenticate and do its part.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the forward gets, once told the run is over, to remove the remote directory.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest socket path a Unix socket address holds (108 bytes with its NUL), with room.
const MAX_SOCKET_PATH: usize = 100;

/// Makes the remote directory and prints its path.
const MKTEMP_SCRIPT: &str = r#"umask 077 && mktemp -d "${TMPDIR:-/tmp}/berth-egress.XXXXXXXX""#;

/// Who can connect to the forwarded sockets on the engine's host, as the guard script found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteAccess {
    /// The login user is root: the sockets belong to the sandbox's uid and gid (0600) in a 0711
    /// directory of root's. Only the sandbox's uid (and root) can connect.
    Chowned,
    /// The login user is the sandbox's uid: the sockets stay 0600 in its 0700 directory.
    SameUser,
    /// The login user is neither: the sockets are 0666 in a 0711 directory, so any account on
    /// the engine's host that finds the directory can use the proxy while the run lasts.
    Shared,
}

/// A running `ssh -R` carrying a run's egress sockets to [`EgressForward::remote_dir`].
pub struct EgressForward {
    child: Child,
    /// Closing it tells the guard script to remove the directory and end.
    stdin: Option<ChildStdin>,
    remote_dir: String,
    access: RemoteAccess,
    log: tempfile::NamedTempFile,
    /// A short path to the proxy's directory for ssh (see [`short_link`]).
    _link: tempfile::TempDir,
}

/// The name of the link to the proxy's directory inside [`short_link`]'s directory.
const LINK_NAME: &str = "e";

/// A fresh 0700 directory under `TMPDIR` (or `/tmp`) holding a symbolic link to `local_dir`: ssh connects
/// to the proxy's sockets by path, and a socket path must fit in 108 bytes, which a run
/// directory deep in the state directory may not. Both the link and its target are berth's.
fn short_link(local_dir: &Path) -> Result<tempfile::TempDir, TunnelError> {
    let failed = |e: std::io::Error| TunnelError::Failed(format!("a link for ssh's -R: {e}"));
    let dir = tempfile::Builder::new()
        .prefix("berth-egress-")
        .tempdir_in(crate::ssh::short_temp_base())
        .map_err(failed)?;
    std::os::unix::fs::symlink(local_dir, dir.path().join(LINK_NAME)).map_err(failed)?;
    Ok(dir)
}

impl std::fmt::Debug for EgressForward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressForward")
            .field("remote_dir", &self.remote_dir)
            .field("access", &self.access)
            .finish()
    }
}

/// An ssh for `target` that runs `script` on the remote host; spawned with
/// `crate::sys::spawn_tied_async`, it ends with berth.
fn ssh_command(target: &SshTarget, forwards: &[String], script: &str) -> Command {
    let mut command = Command::new("ssh");
    command.arg("-T").args(ssh_options(target));
    for forward in forwards {
        command.args(["-R", forward]);
    }
    command.args(["--", &destination(target), script]);
    command.kill_on_drop(true);
    command
}

/// Runs `script` on the remote host and returns what it printed on stdout.
async fn run_remote(target: &SshTarget, script: &str) -> Result<String, TunnelError> {
    let mut command = ssh_command(target, &[], script);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child =
        crate::sys::spawn_tied_async(command).map_err(|e| TunnelError::NoSsh(e.to_string()))?;
    let output = match tokio::time::timeout(STEP_TIMEOUT, child.wait_with_output()).await {
        Ok(output) => output.map_err(|e| TunnelError::Failed(format!("ssh: {e}")))?,
        Err(_) => {
            return Err(TunnelError::Unreachable(format!(
                "ssh did not finish within {} seconds",
                STEP_TIMEOUT.as_secs()
            )))
        }
    };
    if !output.status.success() {
        let log = String::from_utf8_lossy(&output.stderr);
        return Err(classify_ssh_log(&log, &output.status.to_string()));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A directory `mktemp` printed on the engine's host that berth will not use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteDirError {
    #[error("mktemp on the engine's host printed `{0}`, not a directory berth can use")]
    Unusable(String),
    #[error("the directory {0} on the engine's host is too long for a Unix socket path inside it (set a shorter TMPDIR there)")]
    TooLong(String),
}

/// The ssh forward of the egress sockets did not end cleanly; says what may be left behind.
#[derive(Debug, thiserror::Error)]
#[error(
    "ssh carrying the egress sockets ended with {ended}{}; {remote_dir} may remain on the engine's host",
    last_log_line.as_ref().map(|l| format!(" ({l})")).unwrap_or_default()
)]
pub struct ForwardCloseError {
    /// Its exit status, or why it has none.
    pub ended: String,
    /// The last line ssh logged, if any.
    pub last_log_line: Option<String>,
    pub remote_dir: String,
}

/// The directory `mktemp` printed, if it is one berth will put into a remote command and a
/// bind mount: absolute, plain characters only, named `berth-egress.*`, short enough for the
/// socket paths inside it.
pub fn checked_remote_dir(printed: &str, longest_name: usize) -> Result<String, RemoteDirError> {
    let dir = printed.trim();
    let plain = dir
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c));
    let named = dir
        .rsplit('/')
        .next()
        .is_some_and(|n| n.starts_with("berth-egress."));
    let traverses = dir.split('/').any(|c| c == ".." || c == ".");
    if !dir.starts_with('/') || !plain || !named || traverses {
        return Err(RemoteDirError::Unusable(dir.to_string()));
    }
    if dir.len() + 1 + longest_name + ".sock".len() > MAX_SOCKET_PATH {
        return Err(RemoteDirError::TooLong(dir.to_string()));
    }
    Ok(dir.to_string())
}

/// The script the forward runs on the engine's host: wait for sshd's sockets, hand them to the
/// sandbox's `uid:gid`, say `ready ACCESS`, then hold until stdin closes and remove `dir`
/// (which the EXIT trap also does on any failure or signal).
pub fn guard_script(dir: &str, names: &[String], (uid, gid): (u32, u32)) -> String {
    let names = names.join(" ");
    format!(
        r#"d={dir}
trap 'rm -rf "$d"' EXIT
trap 'exit 1' HUP INT TERM PIPE
i=0
for s in {names}; do
  while [ ! -S "$d/$s.sock" ]; do
    i=$((i+1))
    if [ "$i" -gt 100 ]; then echo "berth: the forwarded socket $d/$s.sock did not appear" >&2; exit 1; fi
    sleep 0.1 2>/dev/null || sleep 1
  done
done
me=$(id -u)
if [ "$me" = 0 ]; then
  for s in {names}; do chown {uid}:{gid} "$d/$s.sock" && chmod 0600 "$d/$s.sock" || exit 1; done
  chmod 0711 "$d" || exit 1
  echo ready chowned
elif [ "$me" = {uid} ]; then
  echo ready same-user
else
  for s in {names}; do chmod 0666 "$d/$s.sock" || exit 1; done
  chmod 0711 "$d" || exit 1
  echo ready shared
fi
cat >/dev/null
"#
    )
}

impl EgressForward {
    /// Makes the remote directory and forwards `DIR/NAME.sock` there to `local_dir/NAME.sock`
    /// for each of `names` (the proxy's listeners), usable by the sandbox's `uid:gid`. The
    /// local sockets need not exist yet: ssh connects to them per connection.
    pub async fn open(
        target: &SshTarget,
        local_dir: &Path,
        names: &[String],
        sandbox_user: (u32, u32),
    ) -> Result<Self, TunnelError> {
        if let Some(bad) = names
            .iter()
            .find(|n| n.is_empty() || !n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        {
            return Err(TunnelError::Failed(format!(
                "`{bad}` is not an egress listener name"
            )));
        }
        let link = short_link(local_dir)?;
        let longest = names.iter().map(String::len).max().unwrap_or(0);
        let printed = run_remote(target, MKTEMP_SCRIPT).await?;
        let dir = checked_remote_dir(&printed, longest)
            .map_err(|e| TunnelError::Failed(e.to_string()))?;
        match Self::start(target, &dir, link, names, sandbox_user).await {
            Ok(forward) => Ok(forward),
            Err(e) => {
                // The guard removes the directory once it runs; ssh may have failed before.
                if let Err(cleanup) = run_remote(target, &format!("rm -rf {dir}")).await {
                    tracing::warn!(%dir, error = %cleanup, "removing the remote egress directory failed");
                }
                Err(e)
            }
        }
    }

    async fn start(
        target: &SshTarget,
        dir: &str,
        link: tempfile::TempDir,
        names: &[String],
        sandbox_user: (u32, u32),
    ) -> Result<Self, TunnelError> {
        let local = link.path().join(LINK_NAME);
        let forwards: Vec<String> = names
            .iter()
            .map(|n| format!("{dir}/{n}.sock:{}/{n}.sock", local.display()))
            .collect();
        let log = tempfile::Builder::new()
            .prefix("berth-ssh-egress-")
            .tempfile()
            .map_err(|e| TunnelError::Failed(format!("a log file for ssh: {e}")))?;
        let stderr = log
            .as_file()
            .try_clone()
            .map_err(|e| TunnelError::Failed(format!("a log file for ssh: {e}")))?;
        let script = guard_script(dir, names, sandbox_user);
        let mut command = ssh_command(target, &forwards, &script);
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr);
        tracing::debug!(?forwards, "starting ssh -R for the egress sockets");
        let mut child =
            crate::sys::spawn_tied_async(command).map_err(|e| TunnelError::NoSsh(e.to_string()))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let read_log = || std::fs::read_to_string(log.path()).unwrap_or_default();
        let ready = async {
            let mut lines = BufReader::new(stdout?).lines();
            lines.next_line().await.ok().flatten()
        };
        let line = match tokio::time::timeout(STEP_TIMEOUT, ready).await {
            Ok(line) => line,
            Err(_) => {
                return Err(TunnelError::Unreachable(format!(
                    "ssh did not set up the egress forward within {} seconds{}",
                    STEP_TIMEOUT.as_secs(),
                    last_line(&read_log())
                        .map(|l| format!(" ({l})"))
                        .unwrap_or_default()
                )))
            }
        };
        let access = match line.as_deref().map(str::trim) {
            Some("ready chowned") => RemoteAccess::Chowned,
            Some("ready same-user") => RemoteAccess::SameUser,
            Some("ready shared") => RemoteAccess::Shared,
            other => {
                let status = tokio::time::timeout(Duration::from_secs(2), child.wait())
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .map_or_else(|| "still running".to_string(), |s| s.to_string());
                let log = read_log();
                if let Some(line) = log.lines().find(|l| l.contains("forwarding failed")) {
                    return Err(TunnelError::Failed(format!(
                        "{} (the engine's sshd must allow stream-local forwarding: AllowStreamLocalForwarding)",
                        line.trim()
                    )));
                }
                tracing::debug!(?other, %status, "the egress forward's guard did not report ready");
                return Err(classify_ssh_log(&log, &status));
            }
        };
        Ok(Self {
            child,
            stdin,
            remote_dir: dir.to_string(),
            access,
            log,
            _link: link,
        })
    }

    /// The directory on the engine's host holding the forwarded sockets: the bind source of
    /// `/berth/egress`.
    pub fn remote_dir(&self) -> &str {
        &self.remote_dir
    }

    /// Who besides the sandbox can connect to the sockets there.
    pub fn access(&self) -> RemoteAccess {
        self.access
    }

    /// Ends the forward once the run is over: the guard removes the remote directory and ssh
    /// ends. The error says what may be left behind.
    pub async fn close(mut self) -> Result<(), ForwardCloseError> {
        drop(self.stdin.take());
        let ended = tokio::time::timeout(CLOSE_TIMEOUT, self.child.wait()).await;
        let detail = |status: &dyn std::fmt::Display, log: &str| ForwardCloseError {
            ended: status.to_string(),
            last_log_line: last_line(log).map(str::to_string),
            remote_dir: self.remote_dir.clone(),
        };
        let log = std::fs::read_to_string(self.log.path()).unwrap_or_default();
        match ended {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => Err(detail(&status, &log)),
            Ok(Err(e)) => Err(detail(&e, &log)),
            Err(_) => {
                let _ = self.child.start_kill();
                let _ = self.child.wait().await;
                Err(detail(
                    &format_args!("no end within {} seconds", CLOSE_TIMEOUT.as_secs()),
                    &log,
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_berth_directories_are_accepted() {
        let ok = |p: &str| checked_remote_dir(p, 9);
        assert_eq!(
            ok("/tmp/berth-egress.Ab3dE6gH\n"),
            Ok("/tmp/berth-egress.Ab3dE6gH".to_string())
        );
        for bad in [
            "",
            "tmp/berth-egress.x",
            "/tmp/other.x",
            "/tmp/berth-egress.x; rm -rf ~",
            "/tmp/berth-egress.x'",
            "/tmp/../berth-egress.x",
            "/tmp/ berth-egress.x",
            "/tmp/berth-egress.$(id)",
        ] {
            assert!(
                ok(bad).unwrap_err().to_string().contains("not a directory"),
                "{bad}"
            );
        }
        let long = format!("/{}/berth-egress.x", "d".repeat(90));
        assert!(ok(&long).unwrap_err().to_string().contains("too long"));
    }

    #[test]
    fn the_guard_hands_each_socket_to_the_sandbox_user_and_removes_the_directory() {
        let script = guard_script(
            "/tmp/berth-egress.x",
            &["proxy".into(), "tcp-0".into()],
            (1000, 1001),
        );
        assert!(script.starts_with("d=/tmp/berth-egress.x\ntrap 'rm -rf \"$d\"' EXIT\n"));
        assert!(script.contains("for s in proxy tcp-0; do chown 1000:1001"));
        assert!(script.contains("elif [ \"$me\" = 1000 ]; then"));
        assert!(script.trim_end().ends_with("cat >/dev/null"));
    }
}
