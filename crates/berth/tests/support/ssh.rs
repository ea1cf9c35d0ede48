//! An sshd on loopback as a remote engine's host (Debian's openssh-server, started unprivileged
//! by the test with its own host key and authorized_keys), and the `[engines.NAME]` table that
//! reaches this machine's Docker through it.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn sh(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn wait_for_port(port: u16) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "port {port} never opened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed (and reaped) when the test ends, however it ends.
pub struct Daemon(pub Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// An sshd on 127.0.0.1 that accepts `key` for the current user.
pub struct Sshd {
    _daemon: Daemon,
    pub port: u16,
}

pub fn start_sshd(dir: &Path, client_key: &Path) -> Sshd {
    let host_key = dir.join("host_key");
    sh(
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-f",
            host_key.to_str().unwrap(),
        ],
    );
    let authorized = dir.join("authorized_keys");
    std::fs::copy(client_key.with_extension("pub"), &authorized).unwrap();
    let port = free_port();
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\nAllowStreamLocalForwarding yes\nPidFile none\n",
            host_key.display(),
            authorized.display()
        ),
    )
    .unwrap();
    // sshd started by root wants its privilege-separation directory, as the service creates it.
    if unsafe_is_root() {
        std::fs::create_dir_all("/run/sshd").unwrap();
    }
    let child = Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f", config.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("sshd.log")).unwrap())
        .spawn()
        .expect("/usr/sbin/sshd (Debian's openssh-server) is needed for these tests");
    let daemon = Daemon(child);
    wait_for_port(port);
    Sshd {
        _daemon: daemon,
        port,
    }
}

pub fn unsafe_is_root() -> bool {
    current_user() == "root"
}

pub fn keygen(path: &Path) {
    sh(
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-f",
            path.to_str().unwrap(),
        ],
    );
}

pub fn ssh_engine(name: &str, port: u16, key: &Path, known_hosts: &Path, extra: &str) -> String {
    format!(
        "[engines.{name}]\nhost = \"ssh://{}@127.0.0.1:{port}\"\nidentity = \"{}\"\nssh_options = [\"UserKnownHostsFile={}\", \"StrictHostKeyChecking=accept-new\"]\n{extra}\n",
        current_user(),
        key.display(),
        known_hosts.display()
    )
}
