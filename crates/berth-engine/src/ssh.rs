//! A remote engine's socket, forwarded to a private local socket by the system's `ssh`.
//!
//! berth never runs the docker CLI, here or on the remote host: `ssh -L` forwards the remote
//! engine's Unix socket to a socket in a fresh 0700 directory, and bollard talks to that. The
//! ssh process lives exactly as long as the [`SshTunnel`]: dropping it kills the process and
//! removes the directory, on every path, errors included. Should berth itself be killed, the
//! kernel ends ssh too (`PR_SET_PDEATHSIG`).
//!
//! Only the key file's path is ever passed to ssh; ssh's own configuration (`~/.ssh/config`,
//! agents, known hosts) applies as for any ssh the user runs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::endpoint::SshTarget;

/// How long ssh gets to connect, authenticate and set up the forward.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// ssh's own TCP connect timeout, unless the engine's options set one.
const CONNECT_TIMEOUT_SECS: u32 = 10;

/// Why the tunnel could not be opened, classified from ssh's own messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TunnelError {
    #[error("the ssh program could not be started: {0}")]
    NoSsh(String),
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    AuthRefused(String),
    #[error("{0}")]
    HostKeyRejected(String),
    #[error("{0}")]
    Failed(String),
}

/// A running `ssh -L` whose local end is [`SshTunnel::socket`].
pub struct SshTunnel {
    child: Mutex<Option<Child>>,
    dir: Option<tempfile::TempDir>,
    socket: PathBuf,
    log: PathBuf,
}

impl std::fmt::Debug for SshTunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshTunnel")
            .field("socket", &self.socket)
            .finish()
    }
}

/// ssh's arguments for `target`, forwarding `remote_socket` to `local_socket`.
pub fn ssh_args(target: &SshTarget, local_socket: &Path) -> Vec<String> {
    let mut args = vec!["-nNT".to_string()];
    args.extend(ssh_options(target));
    args.push("-L".into());
    args.push(format!(
        "{}:{}",
        local_socket.display(),
        target.remote_socket
    ));
    args.push("--".into());
    args.push(destination(target));
    args
}

/// The options every ssh berth starts for `target` gets: never prompt, no shared connection,
/// forwards that fail end ssh, the user's options before berth's defaults, port and user.
pub(crate) fn ssh_options(target: &SshTarget) -> Vec<String> {
    let mut args: Vec<String> = [
        // Never prompt: berth has no terminal to offer ssh, and a prompt would hang the run.
        "-o",
        "BatchMode=yes",
        "-o",
        "ExitOnForwardFailure=yes",
        // A shared master connection would outlive this process and escape its cleanup.
        "-o",
        "ControlMaster=no",
        "-o",
        "ControlPath=none",
        "-o",
        "StreamLocalBindUnlink=yes",
    ]
    .map(str::to_string)
    .to_vec();
    if let Some(identity) = &target.identity {
        args.extend(["-o".into(), "IdentitiesOnly=yes".into(), "-i".into()]);
        args.push(identity.display().to_string());
    }
    // ssh keeps the first value it sees for an option: the user's go before berth's defaults.
    for option in &target.options {
        args.extend(["-o".into(), option.clone()]);
    }
    args.extend([
        "-o".into(),
        format!("ConnectTimeout={CONNECT_TIMEOUT_SECS}"),
    ]);
    if let Some(port) = target.port {
        args.extend(["-p".into(), port.to_string()]);
    }
    if let Some(user) = &target.user {
        args.extend(["-l".into(), user.clone()]);
    }
    args
}

/// The host argument, after `--` (an IPv6 address without its brackets).
pub(crate) fn destination(target: &SshTarget) -> String {
    target
        .host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string()
}

impl SshTunnel {
    /// Starts ssh and waits until the forwarded socket exists (ssh sets it up after
    /// authenticating) or ssh gives up.
    pub async fn open(target: &SshTarget) -> Result<Self, TunnelError> {
        if let Some(identity) = &target.identity {
            if let Err(e) = std::fs::metadata(identity) {
                return Err(TunnelError::AuthRefused(format!(
                    "the identity file {} cannot be read: {e}",
                    identity.display()
                )));
            }
        }
        let base = short_temp_base();
        let dir = tempfile::Builder::new()
            .prefix("berth-ssh-")
            .tempdir_in(&base)
            .map_err(|e| TunnelError::Failed(format!("{}: {e}", base.display())))?;
        let socket = dir.path().join("docker.sock");
        let log = dir.path().join("ssh.log");
        let log_file = std::fs::File::create(&log)
            .map_err(|e| TunnelError::Failed(format!("{}: {e}", log.display())))?;
        let mut command = Command::new("ssh");
        command
            .args(ssh_args(target, &socket))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        tracing::debug!(args = ?command.get_args().collect::<Vec<_>>(), "starting ssh");
        // Ended with berth, however berth ends.
        let child =
            crate::sys::spawn_tied(command).map_err(|e| TunnelError::NoSsh(e.to_string()))?;
        let tunnel = Self {
            child: Mutex::new(Some(child)),
            dir: Some(dir),
            socket,
            log,
        };
        tunnel.wait_ready().await?;
        Ok(tunnel)
    }

    async fn wait_ready(&self) -> Result<(), TunnelError> {
        let started = Instant::now();
        loop {
            if self.socket.exists() {
                return Ok(());
            }
            let exited = {
                let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
                match guard.as_mut().map(Child::try_wait) {
                    Some(Ok(Some(status))) => Some(status.to_string()),
                    Some(Ok(None)) => None,
                    Some(Err(e)) => Some(e.to_string()),
                    None => Some("not running".into()),
                }
            };
            if let Some(status) = exited {
                return Err(classify_ssh_log(&self.log_text(), &status));
            }
            if started.elapsed() > READY_TIMEOUT {
                return Err(TunnelError::Unreachable(format!(
                    "ssh did not connect within {} seconds{}",
                    READY_TIMEOUT.as_secs(),
                    last_line(&self.log_text())
                        .map(|l| format!(" ({l})"))
                        .unwrap_or_default()
                )));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The local end of the forward.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// What ssh has printed so far (errors only; it runs without `-v`).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether ssh reported that it could not open the remote socket.
    pub fn remote_socket_failed(&self) -> Option<String> {
        self.log_text()
            .lines()
            .find(|l| l.contains("open failed") || l.contains("connect failed"))
            .map(|l| l.trim().to_string())
    }
}

impl Drop for SshTunnel {
    fn drop(&mut self) {
        let child = self
            .child
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

pub(crate) fn last_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).rfind(|l| !l.is_empty())
}

/// ssh exited before the forward was up: say why from what it printed.
pub fn classify_ssh_log(log: &str, status: &str) -> TunnelError {
    let detail = last_line(log)
        .map(str::to_string)
        .unwrap_or_else(|| format!("ssh exited ({status}) without a message"));
    let has = |needles: &[&str]| needles.iter().any(|n| log.contains(n));
    if has(&[
        "Host key verification failed",
        "REMOTE HOST IDENTIFICATION HAS CHANGED",
    ]) {
        TunnelError::HostKeyRejected(detail)
    } else if has(&[
        "Permission denied",
        "Too many authentication failures",
        "no mutual signature",
        "Authentication failed",
    ]) {
        TunnelError::AuthRefused(detail)
    } else if has(&[
        "Connection refused",
        "No route to host",
        "Could not resolve hostname",
        "Name or service not known",
        "Temporary failure in name resolution",
        "Connection timed out",
        "Network is unreachable",
        "Connection closed by",
        "Connection reset by",
    ]) {
        TunnelError::Unreachable(detail)
    } else {
        TunnelError::Failed(detail)
    }
}

/// Where berth makes its temporary sockets and links: the temporary directory (`TMPDIR`) when
/// its path is short, else `/tmp`, as a unix socket's path must fit in 108 bytes.
pub(crate) fn short_temp_base() -> PathBuf {
    let base = std::env::temp_dir();
    if base.as_os_str().len() > 60 {
        PathBuf::from("/tmp")
    } else {
        base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_messages_are_classified() {
        let cases = [
            (
                "ssh: connect to host 127.0.0.1 port 1: Connection refused\r\n",
                "unreachable",
            ),
            (
                "ssh: Could not resolve hostname nowhere.invalid: Name or service not known",
                "unreachable",
            ),
            (
                "ssh: connect to host 10.255.255.1 port 22: No route to host",
                "unreachable",
            ),
            ("ann@127.0.0.1: Permission denied (publickey).", "auth"),
            ("Host key verification failed.", "hostkey"),
            ("bad things", "failed"),
        ];
        for (log, expected) in cases {
            let got = match classify_ssh_log(log, "exit status: 255") {
                TunnelError::Unreachable(_) => "unreachable",
                TunnelError::AuthRefused(_) => "auth",
                TunnelError::HostKeyRejected(_) => "hostkey",
                TunnelError::Failed(_) => "failed",
                TunnelError::NoSsh(_) => "nossh",
            };
            assert_eq!(got, expected, "{log}");
        }
        assert_eq!(
            classify_ssh_log("", "exit status: 255").to_string(),
            "ssh exited (exit status: 255) without a message"
        );
    }

    #[test]
    fn arguments_carry_paths_never_key_material_and_end_options_before_the_host() {
        let target = SshTarget {
            user: Some("ann".into()),
            host: "box".into(),
            port: Some(2222),
            identity: Some("/home/ann/.ssh/id".into()),
            remote_socket: "/var/run/docker.sock".into(),
            options: vec!["ConnectTimeout=3".into()],
        };
        let args = ssh_args(&target, Path::new("/tmp/berth-ssh-x/docker.sock"));
        let joined = args.join(" ");
        assert!(joined.contains("-i /home/ann/.ssh/id"), "{joined}");
        assert!(joined.contains("-p 2222 -l ann"), "{joined}");
        assert!(
            joined.ends_with("-L /tmp/berth-ssh-x/docker.sock:/var/run/docker.sock -- box"),
            "{joined}"
        );
        // The user's ConnectTimeout comes first, so ssh keeps it over berth's default.
        let user = joined.find("ConnectTimeout=3").unwrap();
        let default = joined.find("ConnectTimeout=10").unwrap();
        assert!(user < default);
        assert!(joined.starts_with("-nNT -o BatchMode=yes -o ExitOnForwardFailure=yes"));
    }
}
