//! Runs the real shim binary: frame on stdin, secrets on disk, exec of the command.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("berth-shim-test-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the shim with `args`, feeding `stdin`, with secrets going to `secrets_dir`.
fn shim(args: &[&str], stdin: &[u8], secrets_dir: &TempDir) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth-shim"))
        .args(args)
        .env("BERTH_SHIM_SECRETS_DIR", &secrets_dir.0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The shim may exit before reading everything (on errors), so a broken pipe is fine.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    child.wait_with_output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn delivers_secrets_env_and_the_rest_of_stdin() {
    let dir = TempDir::new("ok");
    let script = format!(
        "cat '{}/TOKEN'; echo; printenv TOKEN; printenv MODE; \
         printenv BERTH_SHIM_SECRETS_DIR || echo unset; cat",
        dir.0.display()
    );
    let mut input = b"berth-shim-v1\nsecret TOKEN 8\nab$c\nd e\nenv MODE 4\nfast\nend\n".to_vec();
    // Enough trailing bytes that any buffered read of the frame would have swallowed some.
    let rest: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    input.extend_from_slice(&rest);

    let out = shim(&["sh", "-c", &script], &input, &dir);
    assert!(out.status.success(), "{:?}: {}", out.status, stderr(&out));
    let mut expected = b"ab$c\nd e\nab$c\nd e\nfast\nunset\n".to_vec();
    expected.extend_from_slice(&rest);
    assert!(
        out.stdout == expected,
        "stdout differs: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    let meta = std::fs::metadata(dir.0.join("TOKEN")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o400);
}

#[test]
fn missing_command_exits_127() {
    let dir = TempDir::new("missing");
    let out = shim(&["berth-no-such-command"], b"berth-shim-v1\nend\n", &dir);
    assert_eq!(out.status.code(), Some(127));
    assert!(
        stderr(&out).contains("berth: command not found: berth-no-such-command"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn non_executable_file_exits_126() {
    let dir = TempDir::new("noexec");
    // Not in the secrets directory: the shim empties that of what earlier runs left.
    let bin = TempDir::new("noexec-bin");
    let file = bin.0.join("script");
    std::fs::write(&file, "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let file = file.to_str().unwrap();
    let out = shim(&[file], b"berth-shim-v1\nend\n", &dir);
    assert_eq!(out.status.code(), Some(126));
    assert!(
        stderr(&out).contains(&format!("berth: cannot run {file}: ")),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_frame_and_no_command_exit_125() {
    let dir = TempDir::new("bad");
    let out = shim(&["true"], b"hello\n", &dir);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("berth-shim: bad setup frame on stdin: "),
        "{}",
        stderr(&out)
    );

    let out = shim(&[], b"berth-shim-v1\nend\n", &dir);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("berth-shim: no command given"));
}

#[test]
fn malformed_or_misplaced_run_as_exits_125_naming_the_option() {
    let dir = TempDir::new("runas");
    for args in [
        &["--serve", "--run-as=1000"][..],
        &["--serve", "--run-as=1000:x"],
        &["--serve", "--run-as=1000:1000:7"],
        &["--serve", "--run-as=0:0"],
        &["--serve", "--run-as=0:1000"],
        &["--serve", "--run-as=4294967295:1000"],
        &["--serve", "--run-as=1000:4294967295"],
    ] {
        let out = shim(args, b"", &dir);
        assert_eq!(out.status.code(), Some(125), "{args:?}");
        assert!(
            stderr(&out).contains("--run-as takes UID:GID, two numbers"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    let out = shim(&["--run-as=1000:1000", "true"], b"", &dir);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("--run-as is for --serve only"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn earlier_runs_secret_files_are_replaced_or_removed() {
    // A reused (persistent) container still has the files of the run before: a refreshed token
    // replaces its old value, and a secret this run does not get is gone.
    let dir = TempDir::new("exists");
    std::fs::write(dir.0.join("TOKEN"), "old").unwrap();
    std::fs::write(dir.0.join("STALE"), "old").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir.0.join("LINK")).unwrap();
    let out = shim(
        &["true"],
        b"berth-shim-v1\nsecret TOKEN 6\nhunter\nsecret LINK 3\nabc\nend\n",
        &dir,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(dir.0.join("TOKEN")).unwrap(),
        "hunter"
    );
    assert!(!dir.0.join("STALE").exists());
    let link = std::fs::symlink_metadata(dir.0.join("LINK")).unwrap();
    assert!(link.is_file(), "the link was replaced, not followed");
    assert_eq!(std::fs::read_to_string(dir.0.join("LINK")).unwrap(), "abc");
}

#[test]
fn missing_secrets_dir_exits_125() {
    let dir = TempDir::new("gone");
    std::fs::remove_dir(&dir.0).unwrap();
    let out = shim(&["true"], b"berth-shim-v1\nsecret TOKEN 1\nx\nend\n", &dir);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("secrets directory"),
        "{}",
        stderr(&out)
    );
    // Without secrets the directory is not needed.
    let out = shim(&["true"], b"berth-shim-v1\nenv A 1\nx\nend\n", &dir);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// One run frame for `--serve`: argv, environment, secrets, working directory, output files.
fn run_frame(
    args: &[&str],
    env: &[(&str, &str)],
    secrets: &[(&str, &str)],
    dir: &TempDir,
    input: Option<&[u8]>,
) -> Vec<u8> {
    let mut f = b"berth-shim-v1\n".to_vec();
    let mut part = |header: String, value: &[u8]| {
        f.extend_from_slice(header.as_bytes());
        f.extend_from_slice(value);
        f.push(b'\n');
    };
    for (k, v) in secrets {
        part(format!("secret {k} {}\n", v.len()), v.as_bytes());
    }
    for (k, v) in env {
        part(format!("env {k} {}\n", v.len()), v.as_bytes());
    }
    for a in args {
        part(format!("arg {}\n", a.len()), a.as_bytes());
    }
    let cwd = dir.0.display().to_string();
    part(format!("cwd {}\n", cwd.len()), cwd.as_bytes());
    for stream in ["stdout", "stderr"] {
        let path = dir.0.join(format!("{stream}.log")).display().to_string();
        part(format!("{stream} {}\n", path.len()), path.as_bytes());
    }
    if let Some(input) = input {
        part(format!("input {}\n", input.len()), input);
    }
    f.extend_from_slice(b"end\n");
    f
}

/// The supervisor runs one command per frame, reports each exit, forwards signals to the running
/// command's process group, and replaces an earlier run's secrets.
#[test]
fn serve_runs_frames_one_after_another() {
    use std::io::BufRead;
    let dir = TempDir::new("serve");
    let secrets = dir.0.join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    for stream in ["stdout", "stderr"] {
        std::fs::write(dir.0.join(format!("{stream}.log")), "").unwrap();
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth-shim"))
        .arg("--serve")
        .env("BERTH_SHIM_SECRETS_DIR", &secrets)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut status = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut next = || {
        let mut line = String::new();
        status.read_line(&mut line).unwrap();
        line
    };

    // 1: environment, secret file, working directory, input, exit status.
    let script = "printf '%s %s ' \"$MODE\" \"$(cat $BERTH_SHIM_SECRETS_DIR/TOKEN 2>/dev/null || cat secrets/TOKEN)\"; pwd; cat; exit 3";
    stdin
        .write_all(&run_frame(
            &["sh", "-c", script],
            &[("MODE", "fast")],
            &[("TOKEN", "one")],
            &dir,
            Some(b"the $prompt"),
        ))
        .unwrap();
    assert_eq!(next(), "berth-shim started\n");
    assert_eq!(next(), "berth-shim exit 3\n");
    let out = std::fs::read_to_string(dir.0.join("stdout.log")).unwrap();
    assert_eq!(out, format!("fast one {}\nthe $prompt", dir.0.display()));

    // 2: the next run's secret replaces the first one's; a signal reaches the whole group.
    std::fs::write(dir.0.join("stdout.log"), "").unwrap();
    stdin
        .write_all(&run_frame(
            &["sh", "-c", "cat secrets/TOKEN; echo; sleep 30 & wait"],
            &[],
            &[("TOKEN", "two")],
            &dir,
            None,
        ))
        .unwrap();
    assert_eq!(next(), "berth-shim started\n");
    std::thread::sleep(std::time::Duration::from_millis(200));
    stdin.write_all(b"signal SIGTERM\n").unwrap();
    assert_eq!(next(), "berth-shim exit 143\n");
    assert_eq!(
        std::fs::read_to_string(dir.0.join("stdout.log")).unwrap(),
        "two\n"
    );

    // 3: a missing command is 127, with the message where the run's stderr goes.
    stdin
        .write_all(&run_frame(&["berth-no-such-command"], &[], &[], &dir, None))
        .unwrap();
    assert_eq!(next(), "berth-shim exit 127\n");
    assert!(std::fs::read_to_string(dir.0.join("stderr.log"))
        .unwrap()
        .contains("berth: command not found: berth-no-such-command"));

    // The end of stdin ends the supervisor.
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

/// A free loopback port (closed again at once; the forwarder takes it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn egress_forwarder_is_up_before_the_command_and_ends_with_it() {
    use std::io::Read;
    let dir = TempDir::new("egress2");
    let listener = std::os::unix::net::UnixListener::bind(dir.0.join("proxy.sock")).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let mut conn = conn.unwrap();
            let mut got = Vec::new();
            conn.read_to_end(&mut got).unwrap();
            conn.write_all(&got.to_ascii_uppercase()).unwrap();
        }
    });
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth-shim"))
        .args([
            "--no-setup",
            &format!("--egress-dir={}", dir.0.display()),
            &format!("--egress={port}:proxy"),
            "--",
            "sleep",
            "2",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The shim execs the command only after the forwarder answered `ready`.
    let mut conn = None;
    for _ in 0..100 {
        if let Ok(c) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            conn = Some(c);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut conn = conn.expect("the forwarder listens");
    conn.write_all(b"hello through the forwarder").unwrap();
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "HELLO THROUGH THE FORWARDER");
    assert!(child.wait().unwrap().success());
    // Its parent gone, the forwarder stops listening.
    let mut closed = false;
    for _ in 0..50 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(closed, "the forwarder outlived its command");
}

#[test]
fn egress_forwarder_failures_stop_the_shim() {
    let dir = TempDir::new("egress3");
    let out = shim(
        &["--no-setup", "--egress=0:bad name", "--", "true"],
        b"",
        &dir,
    );
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("egress forwarder: bad listener"),
        "{}",
        stderr(&out)
    );
}

/// The forwarder (`sleep 5` as its command) on `port`, for the proxy sockets in `dir`.
fn forwarder(dir: &TempDir, port: u16) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_berth-shim"))
        .args([
            "--no-setup",
            &format!("--egress-dir={}", dir.0.display()),
            &format!("--egress={port}:proxy"),
            "--",
            "sleep",
            "5",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Sends `message` through the forwarder on `port`, half-closes, and returns the answer.
fn exchange(port: u16, message: &str) -> String {
    use std::io::Read;
    let mut conn = None;
    for _ in 0..100 {
        if let Ok(c) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            conn = Some(c);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut conn = conn.expect("the forwarder listens");
    conn.write_all(message.as_bytes()).unwrap();
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    answer
}

/// A fake proxy's handoff socket: receives each offer's descriptor and answers `answer`.
/// When it takes the connection (`+`), it answers the client itself, on that descriptor.
/// Returns how many offers came.
fn handoff_proxy(dir: &TempDir, answer: u8) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    use std::io::Read;
    use std::mem::MaybeUninit;
    use std::sync::atomic::Ordering;
    let offers = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = offers.clone();
    let listener =
        std::os::unix::net::UnixListener::bind(dir.0.join("proxy.handoff.sock")).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let mut conn = conn.unwrap();
            let mut byte = [0u8];
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = rustix::net::RecvAncillaryBuffer::new(&mut space);
            rustix::net::recvmsg(
                &conn,
                &mut [std::io::IoSliceMut::new(&mut byte)],
                &mut control,
                rustix::net::RecvFlags::CMSG_CLOEXEC,
            )
            .unwrap();
            let mut fds = Vec::new();
            for m in control.drain() {
                if let rustix::net::RecvAncillaryMessage::ScmRights(r) = m {
                    fds.extend(r);
                }
            }
            assert_eq!((byte[0], fds.len()), (b'F', 1), "one offer, one descriptor");
            counted.fetch_add(1, Ordering::SeqCst);
            conn.write_all(&[answer]).unwrap();
            if answer == b'+' {
                let mut client = std::net::TcpStream::from(fds.pop().unwrap());
                let mut got = Vec::new();
                client.read_to_end(&mut got).unwrap();
                client.write_all(b"handed over: ").unwrap();
                client.write_all(&got).unwrap();
            }
        }
    });
    offers
}

/// The copy socket of a fake proxy: answers each connection with what it got, uppercased.
fn copy_proxy(dir: &TempDir) {
    use std::io::Read;
    let listener = std::os::unix::net::UnixListener::bind(dir.0.join("proxy.sock")).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let mut conn = conn.unwrap();
            let mut got = Vec::new();
            conn.read_to_end(&mut got).unwrap();
            conn.write_all(&got.to_ascii_uppercase()).unwrap();
        }
    });
}

#[test]
fn egress_forwarder_hands_connections_over_where_the_proxy_takes_them() {
    use std::sync::atomic::Ordering;
    // Taken: the proxy answers on the sandbox's own connection; nothing is copied.
    let dir = TempDir::new("handoff-taken");
    let offers = handoff_proxy(&dir, b'+');
    copy_proxy(&dir);
    let port = free_port();
    let mut child = forwarder(&dir, port);
    assert_eq!(exchange(port, "one"), "handed over: one");
    assert_eq!(exchange(port, "two"), "handed over: two");
    assert_eq!(offers.load(Ordering::SeqCst), 2);
    child.kill().unwrap();
    child.wait().unwrap();

    // Refused (descriptors do not cross, as under gVisor): copied, and offered no more.
    let dir = TempDir::new("handoff-refused");
    let offers = handoff_proxy(&dir, b'-');
    copy_proxy(&dir);
    let port = free_port();
    let mut child = forwarder(&dir, port);
    assert_eq!(exchange(port, "one"), "ONE");
    assert_eq!(exchange(port, "two"), "TWO");
    assert_eq!(
        offers.load(Ordering::SeqCst),
        1,
        "offered again after a refusal"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
