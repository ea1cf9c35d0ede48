//! An sshd on loopback as a remote engine's host (Debian's openssh-server, started unprivileged
//! by the test with its own host key and authorized_keys), and the `[engines.NAME]` table that
//! reaches this machine's Docker through it.

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A loopback port that was free a moment ago, for a daemon to listen on. Nothing keeps it free:
/// start daemons with [`start_on_free_port`], which tries another port if the daemon cannot bind.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A loopback port where every connection is refused, for as long as this value lives.
///
/// The port is held by a TCP socket that is bound but never listens: connecting to it is refused
/// (RST), and since the socket is bound without SO_REUSEADDR no other process can listen there
/// meanwhile. This is deterministic where "bind a listener, drop it, use its port" is not: a
/// sibling test's child forked while that listener is open inherits it until it execs, and the
/// port accepts connections (or cannot be bound) until then. An inherited copy of this socket
/// does not listen either.
pub struct ClosedPort {
    _socket: tokio::net::TcpSocket,
    pub port: u16,
}

impl ClosedPort {
    pub fn bind() -> Self {
        // Creating and binding a tokio socket needs no runtime (it is a plain socket until it
        // listens or connects, which this one never does).
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((Ipv4Addr::LOCALHOST, 0).into()).unwrap();
        let port = socket.local_addr().unwrap().port();
        Self {
            _socket: socket,
            port,
        }
    }
}

/// Starts a daemon on a free loopback port: `spawn(port)` starts it with its output going to
/// `log`, and it is up once `log` contains `ready(port)` (the daemon's own word that it listens:
/// a successful connect alone could reach whoever else holds the port). If the daemon exits
/// first, most likely because the port was taken between [`free_port`] and its bind (e.g. by a
/// sibling test's child that inherited `free_port`'s probe listener), it is started again on
/// another port, up to 5 times.
pub fn start_on_free_port(
    what: &str,
    log: &Path,
    ready: impl Fn(u16) -> String,
    mut spawn: impl FnMut(u16) -> Child,
) -> (Daemon, u16) {
    const ATTEMPTS: u32 = 5;
    for attempt in 1..=ATTEMPTS {
        let port = free_port();
        let mut daemon = Daemon(spawn(port));
        let needle = ready(port);
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if text.contains(&needle) {
                wait_for_port(port);
                return (daemon, port);
            }
            if let Some(status) = daemon.0.try_wait().unwrap() {
                assert!(
                    attempt < ATTEMPTS,
                    "{what} exited ({status}) on {ATTEMPTS} ports in a row, last on {port}:\n{text}"
                );
                println!("{what} could not start on port {port} ({status}), trying another port:\n{text}");
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{what} did not report `{needle}` within 10s:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    unreachable!("the last attempt returns or panics")
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
    start_sshd_with(dir, client_key, "")
}

/// [`start_sshd`] with `extra` lines appended to its sshd_config.
pub fn start_sshd_with(dir: &Path, client_key: &Path, extra: &str) -> Sshd {
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
    let config = dir.join("sshd_config");
    // sshd started by root wants its privilege-separation directory, as the service creates it.
    if unsafe_is_root() {
        std::fs::create_dir_all("/run/sshd").unwrap();
    }
    let log = dir.join("sshd.log");
    let (daemon, port) = start_on_free_port(
        "sshd",
        &log,
        |port| format!("Server listening on 127.0.0.1 port {port}."),
        |port| {
            std::fs::write(
                &config,
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\nAllowStreamLocalForwarding yes\nPidFile none\n{extra}",
                    host_key.display(),
                    authorized.display()
                ),
            )
            .unwrap();
            Command::new("/usr/sbin/sshd")
                .args(["-D", "-e", "-f", config.to_str().unwrap()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("/usr/sbin/sshd (Debian's openssh-server) is needed for these tests")
        },
    );
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
