//! berth's entry shim: the first program berth runs inside every sandbox (`/berth/shim CMD ARGS...`).
//!
//! It reads a small setup frame from stdin (secrets and environment variables delivered out of
//! band, so they never appear in the container's config), writes each secret to
//! `/run/secrets/NAME`, then replaces itself with the command. Everything on stdin after the
//! frame belongs to the command, so the frame is read without any buffering.
//!
//! With `--serve` it is the supervisor of a held container (persistent, or from the warm pool):
//! instead of one command it runs one command per *run frame* berth writes on its stdin (the
//! setup frame plus the command's argv, working directory, output FIFOs and input), answers on
//! its stdout (`berth-shim exit CODE`), and passes `signal NAME` lines on to the running command's
//! process group. A run in a held container then costs one write, not an engine exec.
//!
//! Standard library only: berth compiles this file with plain `rustc` into a static executable.

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{exit, Command, Stdio};

const MAGIC: &str = "berth-shim-v1";
const MAX_LINE: usize = 4096;
const MAX_VALUE: usize = 1 << 20;
const SECRETS_DIR: &str = "/run/secrets";
/// Lets tests on the host put secret files elsewhere; never passed on to the command.
const SECRETS_DIR_VAR: &str = "BERTH_SHIM_SECRETS_DIR";
/// What `docker run` uses when the image sets no PATH.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// `O_NOFOLLOW` from Linux's <fcntl.h>: std has no constant and we take no libc crate. It is
/// 0o400000 on x86_64 (and most architectures), 0o100000 on arm/aarch64.
#[cfg(not(any(target_arch = "aarch64", target_arch = "arm")))]
const O_NOFOLLOW: i32 = 0o400000;
#[cfg(any(target_arch = "aarch64", target_arch = "arm"))]
const O_NOFOLLOW: i32 = 0o100000;

/// Exit code for the shim's own failures, as `docker run` uses for its own.
const EXIT_SHIM: i32 = 125;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Set as an environment variable and written to the secrets directory.
    Secret,
    /// Set as an environment variable only.
    Env,
}

#[derive(Debug, PartialEq, Eq)]
struct Var {
    kind: Kind,
    name: String,
    value: Vec<u8>,
}

/// A parsed frame: the setup (secrets, environment) and, in a run frame for `--serve`, the
/// command and where its input and output go.
#[derive(Debug, Default, PartialEq, Eq)]
struct Frame {
    vars: Vec<Var>,
    args: Vec<Vec<u8>>,
    cwd: Option<Vec<u8>>,
    stdout: Option<Vec<u8>>,
    stderr: Option<Vec<u8>>,
    input: Option<Vec<u8>>,
}

/// The largest input (an agent's prompt) a run frame carries.
const MAX_INPUT: usize = 64 << 20;

/// Parses a whole setup frame from `r`, reading not one byte past its `end` line (provided `r`
/// itself does not buffer). Error messages never contain a value.
fn parse_frame(r: &mut impl Read) -> Result<Vec<Var>, String> {
    if read_line(r)? != MAGIC {
        return Err(format!("first line is not `{MAGIC}`"));
    }
    let frame = parse_frame_body(r)?;
    if !frame.args.is_empty() || frame.cwd.is_some() || frame.input.is_some() {
        return Err("a run frame is only for --serve".into());
    }
    Ok(frame.vars)
}

/// Parses the lines after the magic line up to `end`.
fn parse_frame_body(r: &mut impl Read) -> Result<Frame, String> {
    let mut frame = Frame::default();
    loop {
        let line = read_line(r)?;
        let fields: Vec<&str> = line.split(' ').collect();
        let (kind, name, len) = match fields[..] {
            ["end"] => return Ok(frame),
            ["secret", name, len] => (Some(Kind::Secret), name, len),
            ["env", name, len] => (Some(Kind::Env), name, len),
            [part @ ("arg" | "cwd" | "stdout" | "stderr" | "input"), len] => (None, part, len),
            // Not echoed: after a framing mistake this "line" may be part of a secret.
            _ => {
                return Err(
                    "malformed line (expected `secret NAME LEN`, `env NAME LEN` or `end`)".into(),
                )
            }
        };
        if kind.is_some() {
            if !valid_name(name) {
                return Err("invalid variable name".into());
            }
            if frame.vars.iter().any(|v| v.name == name) {
                return Err(format!("{name} given twice"));
            }
        }
        let len: usize = match len.parse() {
            Ok(n) if len.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(format!("invalid length for {name}")),
        };
        let max = if name == "input" {
            MAX_INPUT
        } else {
            MAX_VALUE
        };
        if len > max {
            return Err(format!("value of {name} is longer than {max} bytes"));
        }
        let mut value = vec![0; len];
        r.read_exact(&mut value)
            .map_err(|e| read_error(e, &format!("value of {name}")))?;
        let mut newline = [0];
        r.read_exact(&mut newline)
            .map_err(|e| read_error(e, &format!("value of {name}")))?;
        if newline != *b"\n" {
            return Err(format!(
                "value of {name} is not followed by a newline (wrong length?)"
            ));
        }
        // An environment variable, an argument or a path cannot hold a NUL byte.
        if name != "input" && value.contains(&0) {
            return Err(format!("value of {name} contains a NUL byte"));
        }
        match (kind, name) {
            (Some(kind), _) => frame.vars.push(Var {
                kind,
                name: name.to_string(),
                value,
            }),
            (None, "arg") => frame.args.push(value),
            (None, "cwd") => frame.cwd = Some(value),
            (None, "stdout") => frame.stdout = Some(value),
            (None, "stderr") => frame.stderr = Some(value),
            (None, _) => frame.input = Some(value),
        }
    }
}

/// Reads one header line, a byte at a time so nothing after it is consumed.
fn read_line(r: &mut impl Read) -> Result<String, String> {
    let mut line = Vec::new();
    let mut byte = [0];
    loop {
        match r.read(&mut byte) {
            Ok(0) => return Err("unexpected end of input before `end`".into()),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if line.len() == MAX_LINE => {
                return Err(format!("line longer than {MAX_LINE} bytes"))
            }
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read error: {e}")),
        }
    }
    String::from_utf8(line).map_err(|_| "line is not ASCII".to_string())
}

fn read_error(e: io::Error, what: &str) -> String {
    if e.kind() == ErrorKind::UnexpectedEof {
        format!("unexpected end of input in {what}")
    } else {
        format!("read error in {what}: {e}")
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`
fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Writes a secret file readable only by its owner; refuses to replace or follow anything there.
fn write_secret(dir: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .custom_flags(O_NOFOLLOW)
        .open(dir.join(name))?;
    // The umask could have removed bits from the mode; set it exactly.
    file.set_permissions(std::fs::Permissions::from_mode(0o400))?;
    file.write_all(value)
}

fn fail(code: i32, msg: &str) -> ! {
    eprintln!("{msg}");
    exit(code)
}

/// The shim's options, which come before `--` and the command.
#[derive(Debug, PartialEq, Eq)]
struct Options {
    /// `--stdout=PATH` / `--stderr=PATH`: FIFOs on a bind mount that berth reads on the host, so
    /// bulk output bypasses the engine's attach stream.
    stdout: Option<OsString>,
    stderr: Option<OsString>,
    /// Read a setup frame from stdin first; `--no-setup` says there is nothing to receive.
    setup: bool,
    /// `--serve`: supervise runs sent as frames on stdin (a held container).
    serve: bool,
    /// `--expect-mount=DEV:INO:TARGET` (runc) or `--expect-mount-ctime=SEC:NSEC:TARGET`
    /// (gVisor): what berth checked for the bind mount at TARGET.
    expected_mounts: Vec<(Expected, OsString)>,
    /// `--sweep` (with `--serve`): after each run, kill every other process of the container
    /// but init, and confirm none is left, before reporting the exit. berth sets it for held
    /// containers only; it is never meant for a shim outside a container.
    sweep: bool,
    /// `--egress=PORT:NAME`: listen on 127.0.0.1:PORT and forward each connection to the unix
    /// socket `NAME.sock` of berth's egress proxy (in `--egress-dir`, by default /berth/egress).
    egress: Vec<(u16, String)>,
    egress_dir: Option<OsString>,
    /// `--forward`: be the forwarder (started by the shim itself before the command).
    forward: bool,
    /// `--run-as=UID:GID` (with `--serve`, started as root): the supervisor keeps root as its
    /// real and saved user and works as `UID:GID`; every command and forwarder it starts drops
    /// to `UID:GID` entirely. A run's processes then differ from the supervisor by user, so no
    /// runtime lets them signal it or open its `/proc/1/fd` (gVisor ignores PID 1's and
    /// non-dumpable's protections between processes of one user). `None` when malformed.
    run_as: Option<Option<(u32, u32)>>,
}

/// What a mount must show to be the one berth checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expected {
    /// Its device and inode: what runc shows of the host's file.
    Inode { dev: u64, ino: u64 },
    /// Its status change time: gVisor numbers devices and inodes itself but passes the host's
    /// times through, and no unprivileged process can set a change time to a past moment.
    ChangeTime { sec: i64, nsec: u64 },
}

/// `A:B:TARGET` as two numbers (`None` when malformed) and the target.
fn expectation(spec: &[u8]) -> (Option<u64>, Option<u64>, OsString) {
    let mut parts = spec.splitn(3, |b| *b == b':');
    let number = |p: Option<&[u8]>| -> Option<u64> {
        p.and_then(|p| std::str::from_utf8(p).ok())
            .and_then(|p| p.parse().ok())
    };
    let (a, b) = (number(parts.next()), number(parts.next()));
    let target = OsStr::from_bytes(parts.next().unwrap_or_default()).to_os_string();
    (a, b, target)
}

fn split_options(args: Vec<OsString>) -> (Options, Vec<OsString>) {
    let mut options = Options {
        stdout: None,
        stderr: None,
        setup: true,
        serve: false,
        sweep: false,
        expected_mounts: Vec::new(),
        egress: Vec::new(),
        egress_dir: None,
        forward: false,
        run_as: None,
    };
    let mut rest = args.into_iter().peekable();
    while let Some(arg) = rest.peek() {
        let bytes = arg.as_bytes();
        if let Some(path) = bytes.strip_prefix(b"--stdout=") {
            options.stdout = Some(OsStr::from_bytes(path).to_os_string());
        } else if let Some(path) = bytes.strip_prefix(b"--stderr=") {
            options.stderr = Some(OsStr::from_bytes(path).to_os_string());
        } else if bytes == b"--no-setup" {
            options.setup = false;
        } else if bytes == b"--serve" {
            options.serve = true;
        } else if bytes == b"--sweep" {
            options.sweep = true;
        } else if bytes == b"--forward" {
            options.forward = true;
        } else if let Some(spec) = bytes.strip_prefix(b"--run-as=") {
            let (uid, gid, rest) = expectation(spec);
            // Root would share the supervisor's user, and u32::MAX is setres*id's "unchanged".
            let id = |n: u64| u32::try_from(n).ok().filter(|n| *n != u32::MAX);
            options.run_as = Some(match (uid, gid) {
                (Some(uid), Some(gid)) if rest.is_empty() && uid != 0 => id(uid).zip(id(gid)),
                _ => None,
            });
        } else if let Some(dir) = bytes.strip_prefix(b"--egress-dir=") {
            options.egress_dir = Some(OsStr::from_bytes(dir).to_os_string());
        } else if let Some(spec) = bytes.strip_prefix(b"--egress=") {
            // A malformed listener is kept as port 0, which the forwarder refuses by name.
            let text = String::from_utf8_lossy(spec).into_owned();
            let (port, name) = text.split_once(':').unwrap_or(("0", &text));
            options
                .egress
                .push((port.parse().unwrap_or(0), name.to_string()));
        } else if let Some(spec) = bytes.strip_prefix(b"--expect-mount=") {
            let (a, b, target) = expectation(spec);
            // A malformed number can match nothing real: the check fails, naming the mount.
            let expected = Expected::Inode {
                dev: a.unwrap_or(u64::MAX),
                ino: b.unwrap_or(u64::MAX),
            };
            options.expected_mounts.push((expected, target));
        } else if let Some(spec) = bytes.strip_prefix(b"--expect-mount-ctime=") {
            let (a, b, target) = expectation(spec);
            let expected = Expected::ChangeTime {
                sec: a.and_then(|a| i64::try_from(a).ok()).unwrap_or(i64::MIN),
                nsec: b.unwrap_or(u64::MAX),
            };
            options.expected_mounts.push((expected, target));
        } else if bytes == b"--" {
            rest.next();
            break;
        } else {
            break;
        }
        rest.next();
    }
    (options, rest.collect())
}

/// What the supervisor's threads hand to its main loop.
enum Message {
    Run(Box<Frame>),
    Signal(i32),
    /// A malformed frame or line: reported, and the supervisor stops.
    Bad(String),
    /// The command started by the last run frame ended with this status.
    Exited(i32),
    Eof,
}

fn signal_number(name: &str) -> Option<i32> {
    Some(match name.trim_start_matches("SIG") {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "KILL" => 9,
        "TERM" => 15,
        _ => return None,
    })
}

/// Reads frames and `signal NAME` lines from stdin until it ends.
fn read_messages(tx: std::sync::mpsc::Sender<Message>) {
    let mut stdin = match io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => File::from(fd),
        Err(e) => {
            let _ = tx.send(Message::Bad(format!("cannot read stdin: {e}")));
            return;
        }
    };
    loop {
        let line = match read_line(&mut stdin) {
            Ok(line) => line,
            Err(_) => {
                let _ = tx.send(Message::Eof);
                return;
            }
        };
        let message = if line == MAGIC {
            match parse_frame_body(&mut stdin) {
                Ok(frame) => Message::Run(Box::new(frame)),
                Err(e) => Message::Bad(format!("bad run frame: {e}")),
            }
        } else if let Some(number) = line.strip_prefix("signal ").and_then(signal_number) {
            Message::Signal(number)
        } else {
            Message::Bad("expected a run frame or `signal NAME`".into())
        };
        let stop = matches!(message, Message::Bad(_));
        if tx.send(message).is_err() || stop {
            return;
        }
    }
}

/// Tells berth what happened (`berth-shim started`, `berth-shim exit CODE`), on the attach stream.
fn report(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "berth-shim {line}");
    let _ = out.flush();
}

/// The supervisor of a held container: one command per run frame, one at a time.
///
/// With `sweep`, no process of a run outlives it: when the command exits, every other process
/// in the container but init is killed (`kill(-1, SIGKILL)`, which spares the caller), the
/// kill is repeated until `/proc` shows none left, the run's secret files are removed, and only
/// then is the exit reported — so berth collects `$BERTH_OUT` from a tree no process can still
/// change, and the next run's secrets meet no leftover of this one. Processes that survive
/// are reported (`exit CODE unclean N`); berth then stops the whole container.
///
/// `bad_mounts`: why the container's mounts are not what berth checked; every run is refused.
/// `run_as`: the user every command and forwarder is started as (see `Options::run_as`).
fn serve(
    sweep: bool,
    bad_mounts: Option<String>,
    egress: Option<(Vec<(u16, String)>, OsString)>,
    run_as: Option<(u32, u32)>,
) -> ! {
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = tx.clone();
    std::thread::spawn(move || read_messages(reader));
    let secrets_dir = std::env::var_os(SECRETS_DIR_VAR).unwrap_or_else(|| SECRETS_DIR.into());
    let secrets_dir = Path::new(&secrets_dir).to_path_buf();
    // The process group of the running command, if any.
    let mut running: Option<i32> = None;
    loop {
        let Ok(message) = rx.recv() else { exit(0) };
        if running.is_none() {
            sys::reap_ended_children();
        }
        match message {
            Message::Run(_) if bad_mounts.is_some() => {
                report(&format!(
                    "refused: {}",
                    bad_mounts.as_deref().unwrap_or_default()
                ));
            }
            Message::Run(frame) if running.is_none() && sweep && sweep_others() > 0 => {
                write_to_stderr_of(
                    &frame,
                    "berth-shim: processes of an earlier run are still alive",
                );
                report(&format!("exit {EXIT_SHIM} unclean"));
            }
            // The forwarder is started for each run (the sweep after the last one ended it).
            Message::Run(frame)
                if running.is_none()
                    && egress
                        .as_ref()
                        .is_some_and(|(l, dir)| forwarder_fails(l, dir, run_as, &frame)) =>
            {
                report(&format!("exit {EXIT_SHIM}"));
            }
            Message::Run(frame) if running.is_none() => {
                match start(&frame, &secrets_dir, run_as, &tx) {
                    Ok(pid) => {
                        running = Some(pid);
                        report("started");
                    }
                    Err((code, why)) => {
                        write_to_stderr_of(&frame, &why);
                        report(&format!("exit {code}"));
                    }
                }
            }
            Message::Run(_) => report("refused: a command is already running"),
            Message::Signal(number) => {
                if let Some(pid) = running {
                    sys::kill(-pid, number);
                }
            }
            Message::Exited(code) => {
                running = None;
                let survivors = if sweep { sweep_others() } else { 0 };
                sys::reap_ended_children();
                // What the run left in the secrets directory that cannot go (a directory it
                // made unwritable) would fail every later run's secrets: berth replaces the
                // container for an unclean end.
                let cleared = clear_secrets(&secrets_dir);
                if survivors > 0 {
                    report(&format!("exit {code} unclean {survivors}"));
                } else if !cleared {
                    report(&format!("exit {code} unclean"));
                } else {
                    report(&format!("exit {code}"));
                }
            }
            Message::Bad(why) => {
                eprintln!("berth-shim: {why}");
                exit(EXIT_SHIM);
            }
            // berth keeps the container's stdin open; its end means the container is going away.
            Message::Eof => {
                if let Some(pid) = running {
                    sys::kill(-pid, 9);
                }
                exit(0);
            }
        }
    }
}

/// Starts the forwarder for a run in a held container; on failure tells the run why.
fn forwarder_fails(
    listeners: &[(u16, String)],
    dir: &OsStr,
    run_as: Option<(u32, u32)>,
    frame: &Frame,
) -> bool {
    // Without a sweep, the last run's forwarder may still hold the ports: kill it by port owner
    // is not possible without libc, so a held container without --sweep keeps its first one.
    match start_forwarder(listeners, dir, run_as) {
        Ok(()) => false,
        Err(why) if why.contains("Address in use") || why.contains("address already in use") => {
            false
        }
        Err(why) => {
            write_to_stderr_of(frame, &format!("berth-shim: {why}"));
            true
        }
    }
}

/// Starts the command of `frame` in a process group of its own; a thread reports its exit.
/// Fails with the exit status and message `docker run` would give.
fn start(
    frame: &Frame,
    secrets_dir: &Path,
    run_as: Option<(u32, u32)>,
    tx: &std::sync::mpsc::Sender<Message>,
) -> Result<i32, (i32, String)> {
    let Some((program, args)) = frame.args.split_first() else {
        return Err((EXIT_SHIM, "berth-shim: no command given".into()));
    };
    let program = OsStr::from_bytes(program);
    let mut cmd = Command::new(program);
    cmd.args(args.iter().map(|a| OsStr::from_bytes(a)))
        .env_remove(SECRETS_DIR_VAR)
        .process_group(0);
    if let Some((uid, gid)) = run_as {
        sys::drop_to_user_at_exec(&mut cmd, uid, gid);
    }
    if !clear_secrets(secrets_dir) && frame.vars.iter().any(|v| v.kind == Kind::Secret) {
        return Err((
            EXIT_SHIM,
            format!(
                "berth-shim: the secrets directory {} holds what an earlier run left and cannot be emptied",
                secrets_dir.display()
            ),
        ));
    }
    for var in &frame.vars {
        if var.kind == Kind::Secret {
            write_secret(secrets_dir, &var.name, &var.value).map_err(|e| {
                (
                    EXIT_SHIM,
                    format!("berth-shim: cannot write secret {}: {e}", var.name),
                )
            })?;
        }
        cmd.env(&var.name, OsStr::from_bytes(&var.value));
    }
    if std::env::var_os("PATH").is_none() && !frame.vars.iter().any(|v| v.name == "PATH") {
        cmd.env("PATH", DEFAULT_PATH);
    }
    if let Some(dir) = &frame.cwd {
        cmd.current_dir(OsStr::from_bytes(dir));
    }
    let output = |path: &Option<Vec<u8>>| -> Result<Stdio, (i32, String)> {
        match path {
            None => Ok(Stdio::null()),
            Some(path) => std::fs::OpenOptions::new()
                .write(true)
                .open(OsStr::from_bytes(path))
                .map(Stdio::from)
                .map_err(|e| (EXIT_SHIM, format!("berth-shim: cannot open output: {e}"))),
        }
    };
    cmd.stdout(output(&frame.stdout)?);
    cmd.stderr(output(&frame.stderr)?);
    cmd.stdin(if frame.input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let argv0 = program.to_string_lossy().into_owned();
    let mut child = cmd.spawn().map_err(|e| match e.kind() {
        ErrorKind::NotFound => (127, format!("berth: command not found: {argv0}")),
        _ => (126, format!("berth: cannot run {argv0}: {e}")),
    })?;
    if let (Some(mut stdin), Some(input)) = (child.stdin.take(), frame.input.clone()) {
        // A command that exits without reading its input closes the pipe; that is not an error.
        std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
    }
    let pid = child.id() as i32;
    let tx = tx.clone();
    std::thread::spawn(move || {
        use std::os::unix::process::ExitStatusExt;
        let code = match child.wait() {
            Ok(status) => status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
            Err(_) => EXIT_SHIM,
        };
        let _ = tx.send(Message::Exited(code));
    });
    Ok(pid)
}

/// Writes a start failure where the run's stderr goes, so it shows like the command's own.
fn write_to_stderr_of(frame: &Frame, why: &str) {
    let written = frame.stderr.as_ref().is_some_and(|path| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(OsStr::from_bytes(path))
            .and_then(|mut f| writeln!(f, "{why}"))
            .is_ok()
    });
    if !written {
        eprintln!("{why}");
    }
}

/// The shim's system calls that std does not wrap, and its only `unsafe`. Raw declarations
/// rather than rustix: the shim is compiled alone with plain rustc (`berth-sandbox/build.rs`,
/// a static binary for any image), so it takes no crates.
mod sys {
    use std::fs::File;
    use std::io;
    use std::os::fd::{AsFd, AsRawFd, FromRawFd};

    extern "C" {
        #[link_name = "kill"]
        fn libc_kill(pid: i32, signal: i32) -> i32;
        #[link_name = "splice"]
        fn libc_splice(
            fd_in: i32,
            off_in: *mut i64,
            fd_out: i32,
            off_out: *mut i64,
            len: usize,
            flags: u32,
        ) -> isize;
        fn pipe2(fds: *mut i32, flags: i32) -> i32;
        fn fcntl(fd: i32, cmd: i32, ...) -> i32;
        fn sendmsg(fd: i32, msg: *const MsgHdr, flags: i32) -> isize;
        fn prctl(option: i32, arg2: u64, arg3: u64, arg4: u64, arg5: u64) -> i32;
    }

    extern "C" {
        fn setresuid(real: u32, effective: u32, saved: u32) -> i32;
        fn setresgid(real: u32, effective: u32, saved: u32) -> i32;
        fn setgroups(size: usize, list: *const u32) -> i32;
    }

    /// `-1` for an id setres[ug]id leaves as it is.
    const UNCHANGED: u32 = u32::MAX;

    /// The held container's supervisor, started as root: root stays its real and saved user
    /// (and group), while it works, reads and writes files as `uid:gid` (its effective ids,
    /// which clear its effective capabilities). A process of `uid` can neither signal a process
    /// whose real and saved user is root nor trace it or open its `/proc/PID/fd`, under runc
    /// and gVisor alike; the supervisor's permitted CAP_SETUID and CAP_SETGID stay, for
    /// [`drop_to_user_at_exec`].
    #[allow(unsafe_code)] // setgroups(2), setresgid(2), setresuid(2): integers and a local array.
    pub fn become_supervisor(uid: u32, gid: u32) -> io::Result<()> {
        let groups = [gid];
        // SAFETY: the pointer is to a live local array of `groups.len()` ids.
        check(unsafe { setgroups(groups.len(), groups.as_ptr()) })?;
        // SAFETY: integer arguments only.
        check(unsafe { setresgid(UNCHANGED, gid, UNCHANGED) })?;
        // SAFETY: integer arguments only.
        check(unsafe { setresuid(UNCHANGED, uid, UNCHANGED) })
    }

    /// Makes `cmd`'s child drop to `uid:gid` entirely (real, effective, saved; the one group)
    /// before it executes: it takes root back as its effective user (the supervisor's real one),
    /// which restores the permitted CAP_SETUID and CAP_SETGID, and gives it up for good. Once
    /// no id is root, the kernel clears every capability; `no-new-privileges` keeps them away.
    #[allow(unsafe_code)] // pre_exec: in the forked child, system calls only (no allocation).
    pub fn drop_to_user_at_exec(cmd: &mut super::Command, uid: u32, gid: u32) {
        use std::os::unix::process::CommandExt;
        let drop_all = move || -> io::Result<()> {
            let groups = [gid];
            // SAFETY: integer arguments, and a pointer to a live local array of one id; these
            // calls are async-signal-safe, as a forked child of a threaded process needs.
            unsafe {
                check(setresuid(UNCHANGED, 0, UNCHANGED))?;
                check(setgroups(groups.len(), groups.as_ptr()))?;
                check(setresgid(gid, gid, gid))?;
                check(setresuid(uid, uid, uid))
            }
        };
        // SAFETY: the closure only makes system calls, which is what pre_exec allows.
        unsafe {
            cmd.pre_exec(drop_all);
        }
    }

    fn check(result: i32) -> io::Result<()> {
        if result == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    const PR_SET_DUMPABLE: i32 = 4;
    const WNOHANG: i32 = 1;

    extern "C" {
        fn waitpid(pid: i32, status: *mut i32, options: i32) -> i32;
    }

    /// Reaps every child that has ended, without waiting: as a held container's PID 1 the
    /// supervisor inherits the run's orphans. Only while no command runs (whose status
    /// `Child::wait` must get).
    #[allow(unsafe_code)] // waitpid(2) with a pointer to a local integer.
    pub fn reap_ended_children() {
        let mut status = 0i32;
        // SAFETY: `status` is a valid, writable i32 for the whole call.
        while unsafe { waitpid(-1, &mut status, WNOHANG) } > 0 {}
    }

    /// Makes this process non-dumpable: a process of the sandbox user can then neither trace
    /// it nor open its `/proc/PID/mem` (a held container's supervisor outlives the commands it
    /// runs, which are its children and run as the same user). A command the shim `exec`s is
    /// dumpable again, as the kernel resets the flag at `execve`.
    #[allow(unsafe_code)] // prctl(2) with integer arguments; std has no wrapper.
    pub fn set_not_dumpable() -> io::Result<()> {
        // SAFETY: PR_SET_DUMPABLE takes integers only and touches no memory of ours.
        if unsafe { prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// `struct iovec`, `struct msghdr` and `struct cmsghdr` as the kernel and glibc define them
    /// (lengths are `size_t`).
    #[repr(C)]
    struct IoVec {
        base: *const u8,
        len: usize,
    }
    #[repr(C)]
    struct MsgHdr {
        name: *const u8,
        name_len: u32,
        iov: *const IoVec,
        iov_len: usize,
        control: *const u8,
        control_len: usize,
        flags: i32,
    }
    #[repr(C)]
    struct CmsgHdr {
        len: usize,
        level: i32,
        kind: i32,
    }
    const SOL_SOCKET: i32 = 1;
    const SCM_RIGHTS: i32 = 1;
    const MSG_NOSIGNAL: i32 = 0x4000;

    /// From Linux's headers (the same on every architecture).
    pub const EINVAL: i32 = 22;
    const SPLICE_F_MOVE: u32 = 1;
    const O_CLOEXEC: i32 = 0o2000000;
    const F_SETPIPE_SZ: i32 = 1031;

    /// kill(2); std has no wrapper for arbitrary processes and the shim takes no libc crate.
    #[allow(unsafe_code)] // a plain syscall with integer arguments.
    pub fn kill(pid: i32, signal: i32) {
        // SAFETY: kill takes two integers and touches no memory of ours.
        unsafe {
            libc_kill(pid, signal);
        }
    }

    /// A pipe: blocking, close-on-exec.
    pub struct Pipe {
        pub read: File,
        pub write: File,
    }

    impl Pipe {
        /// A new pipe holding up to `bytes` where the system allows (less over the user's pipe
        /// quota, which only means smaller steps).
        #[allow(unsafe_code)] // pipe2(2) and fcntl(2) have no std wrappers.
        pub fn new(bytes: usize) -> io::Result<Self> {
            let mut fds = [-1i32; 2];
            // SAFETY: pipe2 writes two descriptors into the array, which has room for two.
            if unsafe { pipe2(fds.as_mut_ptr(), O_CLOEXEC) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: pipe2 succeeded: both are new descriptors that nothing else owns.
            let (read, write) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
            let size = i32::try_from(bytes).unwrap_or(i32::MAX);
            // SAFETY: F_SETPIPE_SZ takes an integer; the descriptor is ours and open.
            unsafe { fcntl(write.as_raw_fd(), F_SETPIPE_SZ, size) };
            Ok(Self { read, write })
        }
    }

    /// Sends the one byte `byte` over `socket` with `descriptor` attached (`SCM_RIGHTS`).
    #[allow(unsafe_code)] // sendmsg(2) with ancillary data has no stable std wrapper.
    pub fn send_descriptor(socket: &impl AsFd, byte: u8, descriptor: &impl AsFd) -> io::Result<()> {
        // The control message: a header, then one descriptor, padded to the header's alignment
        // (CMSG_LEN(4) and CMSG_SPACE(4)). `usize` words keep the header aligned.
        const HEADER: usize = std::mem::size_of::<CmsgHdr>();
        const WORD: usize = std::mem::size_of::<usize>();
        let mut control = [0usize; (HEADER + WORD) / WORD];
        let header = CmsgHdr {
            len: HEADER + std::mem::size_of::<i32>(),
            level: SOL_SOCKET,
            kind: SCM_RIGHTS,
        };
        let fd = descriptor.as_fd().as_raw_fd();
        // SAFETY: `control` has room for the header and one descriptor after it (HEADER is a
        // multiple of the word size), and both writes are unaligned-safe copies into it.
        unsafe {
            let base = control.as_mut_ptr().cast::<u8>();
            std::ptr::write_unaligned(base.cast::<CmsgHdr>(), header);
            std::ptr::write_unaligned(base.add(HEADER).cast::<i32>(), fd);
        }
        let data = [byte];
        let iov = IoVec {
            base: data.as_ptr(),
            len: 1,
        };
        let msg = MsgHdr {
            name: std::ptr::null(),
            name_len: 0,
            iov: &iov,
            iov_len: 1,
            control: control.as_ptr().cast(),
            control_len: std::mem::size_of_val(&control),
            flags: 0,
        };
        // SAFETY: every pointer in `msg` points at memory that lives across the call, with the
        // lengths given; the kernel only reads it. Both descriptors are borrowed, so open.
        let n = unsafe { sendmsg(socket.as_fd().as_raw_fd(), &msg, MSG_NOSIGNAL) };
        match n {
            1 => Ok(()),
            n if n < 0 => Err(io::Error::last_os_error()),
            _ => Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "sendmsg sent nothing",
            )),
        }
    }

    /// splice(2): moves up to `len` bytes from `from` to `to` (one of them a pipe) in the
    /// kernel, waiting as a read or write on them would. Returns how many moved, 0 at the end.
    #[allow(unsafe_code)] // splice(2) has no std wrapper.
    pub fn splice(from: &impl AsFd, to: &impl AsFd, len: usize) -> io::Result<usize> {
        // SAFETY: both descriptors are borrowed, so open for the call; the offsets are null
        // (sockets and pipes have none), and no memory of ours is read or written.
        let n = unsafe {
            libc_splice(
                from.as_fd().as_raw_fd(),
                std::ptr::null_mut(),
                to.as_fd().as_raw_fd(),
                std::ptr::null_mut(),
                len,
                SPLICE_F_MOVE,
            )
        };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }
}

/// `pid:[4026531836]`: the inode of the initial pid namespace (the kernel's PROC_PID_INIT_INO).
/// A sweep there would be a host's, never a container's: refused.
const INITIAL_PID_NAMESPACE: &str = "pid:[4026531836]";

/// Kills every process but init and this one, until none is left or about a second has passed.
/// Returns how many are still alive (0: clean). Zombies are gone already and do not count.
fn sweep_others() -> usize {
    let namespace = std::fs::read_link("/proc/self/ns/pid")
        .map(|l| l.to_string_lossy().into_owned())
        .unwrap_or_default();
    if namespace.is_empty() || namespace == INITIAL_PID_NAMESPACE {
        eprintln!("berth-shim: refusing to sweep processes outside a container");
        return usize::MAX;
    }
    let mut left = usize::MAX;
    for _ in 0..50 {
        sys::kill(-1, 9);
        left = other_processes();
        if left == 0 {
            return 0;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    left
}

/// Live processes in `/proc` other than init (pid 1) and this one.
fn other_processes() -> usize {
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return usize::MAX;
    };
    entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.bytes().all(|b| b.is_ascii_digit()) && name != "1" && name != me
        })
        .filter(|e| {
            // `pid (comm) S ...`: the state follows the last `)`. A vanished entry is gone.
            let stat = std::fs::read(e.path().join("stat")).unwrap_or_default();
            let state = stat
                .iter()
                .rposition(|b| *b == b')')
                .and_then(|i| stat.get(i + 2).copied());
            matches!(state, Some(s) if s != b'Z' && s != b'X')
        })
        .count()
}

/// Removes the secret files an earlier run left in a reused container, and whatever else a run
/// put there (directories too, never following a link); whether the directory is empty now.
fn clear_secrets(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return !dir.exists();
    };
    for entry in entries.flatten() {
        // The entry's own type: a link is removed, never followed.
        let _ = match entry.file_type() {
            Ok(kind) if kind.is_dir() => std::fs::remove_dir_all(entry.path()),
            _ => std::fs::remove_file(entry.path()),
        };
    }
    std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none())
}

/// Opens an output FIFO (or file) for the command's stdout or stderr.
fn open_output(path: &OsStr) -> Stdio {
    match std::fs::OpenOptions::new().write(true).open(path) {
        Ok(file) => Stdio::from(file),
        Err(e) => fail(
            EXIT_SHIM,
            &format!(
                "berth-shim: cannot open output {}: {e}",
                Path::new(path).display()
            ),
        ),
    }
}

/// Reads the setup frame from fd 0, or fails the way berth reports shim failures.
fn read_setup() -> Vec<Var> {
    let mut stdin = match io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => File::from(fd),
        Err(e) => fail(EXIT_SHIM, &format!("berth-shim: cannot read stdin: {e}")),
    };
    let vars = match parse_frame(&mut stdin) {
        Ok(vars) => vars,
        Err(what) => fail(
            EXIT_SHIM,
            &format!("berth-shim: bad setup frame on stdin: {what}"),
        ),
    };
    drop(stdin);
    vars
}

/// Checks that each bind mount is the file or directory berth checked: a source swapped
/// between berth's policy check and the engine's mount shows another device or inode here.
/// Returns the first mismatch, described.
fn check_mounts(expected: &[(Expected, OsString)]) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    for (expected, target) in expected {
        let shown = Path::new(target).display();
        match std::fs::metadata(target) {
            Ok(meta) => {
                let (checked, mounted, ok) = match *expected {
                    Expected::Inode { dev, ino } => (
                        format!("device {dev}, inode {ino}"),
                        format!("device {}, inode {}", meta.dev(), meta.ino()),
                        meta.dev() == dev && meta.ino() == ino,
                    ),
                    Expected::ChangeTime { sec, nsec } => (
                        format!("changed at {sec}.{nsec:09}"),
                        format!("changed at {}.{:09}", meta.ctime(), meta.ctime_nsec()),
                        meta.ctime() == sec && u64::try_from(meta.ctime_nsec()) == Ok(nsec),
                    ),
                };
                if !ok {
                    let also = match expected {
                        Expected::Inode { .. } => "",
                        Expected::ChangeTime { .. } => {
                            " (or something changed the directory itself in that moment: run again)"
                        }
                    };
                    return Err(format!(
                        "berth-shim: the mount at {shown} is not what berth checked ({checked}; mounted: {mounted}): its source changed between berth's check and the container's start{also}; the run is stopped"
                    ));
                }
            }
            Err(e) => {
                return Err(format!(
                    "berth-shim: the mount at {shown} cannot be checked: {e}; the run is stopped"
                ))
            }
        }
    }
    Ok(())
}

/// Where berth's egress proxy sockets are mounted.
const EGRESS_DIR: &str = "/berth/egress";

/// The egress listener names berth uses: `proxy`, `anthropic`, `openai`, `tcp-N`.
fn valid_listener(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Starts the forwarder (this executable with `--forward`) and waits until it listens on every
/// port, so the command never starts before its proxy is reachable. The forwarder is not
/// waited for: it lives as long as the container (or, in a held container, until the sweep).
fn start_forwarder(
    listeners: &[(u16, String)],
    dir: &OsStr,
    run_as: Option<(u32, u32)>,
) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the shim itself: {e}"))?;
    let mut cmd = Command::new(exe);
    if let Some((uid, gid)) = run_as {
        // It reads what the sandbox sends: it runs as the sandbox's user, with no way back.
        sys::drop_to_user_at_exec(&mut cmd, uid, gid);
    }
    cmd.arg("--forward").arg({
        let mut a = OsString::from("--egress-dir=");
        a.push(dir);
        a
    });
    for (port, name) in listeners {
        cmd.arg(format!("--egress={port}:{name}"));
    }
    cmd.arg("--")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .env_clear();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start the egress forwarder: {e}"))?;
    let mut out = child
        .stdout
        .take()
        .ok_or("the egress forwarder has no stdout")?;
    let line = read_line(&mut out).unwrap_or_else(|e| format!("no answer ({e})"));
    if line == "ready" {
        Ok(())
    } else {
        let _ = child.kill();
        let _ = child.wait();
        Err(format!("egress forwarder: {line}"))
    }
}

/// One line to the shim that started the forwarder.
fn tell(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The forwarder: accepts on loopback and hands each connection to the proxy's socket.
fn forward(listeners: &[(u16, String)], dir: &OsStr) -> ! {
    let mut bound = Vec::new();
    for (port, name) in listeners {
        if *port == 0 || !valid_listener(name) {
            tell(&format!(
                "bad listener `{port}:{name}`: expected --egress=PORT:NAME"
            ));
            exit(EXIT_SHIM);
        }
        match std::net::TcpListener::bind(("127.0.0.1", *port)) {
            Ok(l) => bound.push((l, ProxySockets::new(Path::new(dir), name))),
            Err(e) => {
                tell(&format!("cannot listen on 127.0.0.1:{port}: {e}"));
                exit(EXIT_SHIM);
            }
        }
    }
    tell("ready");
    // Ends with the process that started it (the command, or the supervisor): never left
    // behind listening, in a container or on a test host.
    let parent = std::os::unix::process::parent_id();
    std::thread::spawn(move || loop {
        std::thread::sleep(std::time::Duration::from_millis(200));
        if std::os::unix::process::parent_id() != parent {
            exit(0);
        }
    });
    // Nothing more is written: stdout is berth's pipe to the shim that started us.
    let threads: Vec<_> = bound
        .into_iter()
        .map(|(listener, sockets)| std::thread::spawn(move || accept_loop(listener, sockets)))
        .collect();
    for t in threads {
        let _ = t.join();
    }
    exit(0)
}

/// One listener's way to the proxy: `NAME.handoff.sock` to hand connections over, `NAME.sock`
/// to copy them through.
struct ProxySockets {
    handoff: PathBuf,
    copy: PathBuf,
    /// Cleared once handing over has shown it cannot work here (descriptors do not cross to
    /// the proxy: gVisor's host sockets, a socket forwarded over ssh).
    offering: std::sync::atomic::AtomicBool,
}

/// What became of an offer.
enum Handoff {
    /// The proxy owns the connection.
    Taken,
    /// The proxy cannot take descriptors here: copy, and stop offering.
    Refused,
    /// No handing over this time (no such socket, the proxy went away): copy.
    Unavailable,
}

/// The forwarder's offer and the proxy's answers (berth-egress's `handoff` module).
const OFFER: u8 = b'F';
const TAKEN: u8 = b'+';

impl ProxySockets {
    fn new(dir: &Path, name: &str) -> Self {
        Self {
            handoff: dir.join(format!("{name}.handoff.sock")),
            copy: dir.join(format!("{name}.sock")),
            offering: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// Gives `client` to the proxy: handed over where it can be, its bytes copied otherwise.
    /// Handing over takes this process off the connection's path, so its bytes move once
    /// between the sandbox and the proxy instead of three times.
    fn serve(&self, client: std::net::TcpStream) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.offering.load(Relaxed) {
            match self.hand_off(&client) {
                Handoff::Taken => return,
                Handoff::Refused => self.offering.store(false, Relaxed),
                Handoff::Unavailable => {}
            }
        }
        // No proxy (a held container between runs): the client sees the connection close.
        if let Ok(upstream) = std::os::unix::net::UnixStream::connect(&self.copy) {
            relay(client, upstream);
        }
    }

    fn hand_off(&self, client: &std::net::TcpStream) -> Handoff {
        let socket = match std::os::unix::net::UnixStream::connect(&self.handoff) {
            Ok(s) => s,
            // A proxy without handoff sockets (forwarded over ssh): never offer again.
            Err(e) if e.kind() == ErrorKind::NotFound && self.copy.exists() => {
                return Handoff::Refused
            }
            Err(_) => return Handoff::Unavailable,
        };
        if sys::send_descriptor(&socket, OFFER, client).is_err() {
            return Handoff::Refused;
        }
        let mut answer = [0u8];
        match (&socket).read_exact(&mut answer) {
            Ok(()) if answer[0] == TAKEN => Handoff::Taken,
            Ok(()) => Handoff::Refused,
            Err(_) => Handoff::Unavailable,
        }
    }
}

fn accept_loop(listener: std::net::TcpListener, sockets: ProxySockets) {
    let sockets = std::sync::Arc::new(sockets);
    for stream in listener.incoming() {
        let Ok(client) = stream else {
            // Out of descriptors or threads: let the others finish first.
            std::thread::sleep(std::time::Duration::from_millis(20));
            continue;
        };
        let sockets = sockets.clone();
        let _ = std::thread::Builder::new()
            .stack_size(64 << 10)
            .spawn(move || sockets.serve(client));
    }
}

/// Copies both ways; each direction's end is passed on as a half-close.
fn relay(client: std::net::TcpStream, upstream: std::os::unix::net::UnixStream) {
    let _ = client.set_nodelay(true);
    let (Ok(mut client_r), Ok(mut upstream_w)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    let out = std::thread::Builder::new()
        .stack_size(64 << 10)
        .spawn(move || {
            let _ = pass_on(&mut client_r, &mut upstream_w);
            let _ = upstream_w.shutdown(std::net::Shutdown::Write);
        });
    let (mut upstream_r, mut client_w) = (upstream, client);
    let _ = pass_on(&mut upstream_r, &mut client_w);
    let _ = client_w.shutdown(std::net::Shutdown::Write);
    if let Ok(out) = out {
        let _ = out.join();
    }
}

/// The most one direction holds in its pipe (or buffer), and moves in one step.
const RELAY_BYTES: usize = 256 << 10;

/// Passes one direction on until `from` ends. splice(2) moves the bytes through a pipe, so they
/// are never copied into the forwarder; where the system cannot splice these descriptors
/// (`EINVAL`), what the pipe holds and the rest are copied with read and write.
fn pass_on(from: &mut (impl Read + AsFd), to: &mut (impl Write + AsFd)) -> io::Result<()> {
    let Ok(pipe) = sys::Pipe::new(RELAY_BYTES) else {
        return copy_all(from, to);
    };
    loop {
        let mut held = match sys::splice(from, &pipe.write, RELAY_BYTES) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(sys::EINVAL) => return copy_all(from, to),
            Err(e) => return Err(e),
        };
        while held > 0 {
            match sys::splice(&pipe.read, to, held) {
                Ok(n) => held -= n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(sys::EINVAL) => {
                    io::copy(&mut (&pipe.read).take(held as u64), to)?;
                    return copy_all(from, to);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// `io::copy` with a [`RELAY_BYTES`] buffer.
fn copy_all(from: &mut impl Read, to: &mut impl Write) -> io::Result<()> {
    let mut buf = vec![0u8; RELAY_BYTES];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
    }
}

fn main() {
    // Before anything else: no process of the sandbox may reach into the shim's memory.
    if let Err(e) = sys::set_not_dumpable() {
        fail(
            EXIT_SHIM,
            &format!("berth-shim: cannot make itself non-dumpable: {e}"),
        );
    }
    let (options, command) = split_options(std::env::args_os().skip(1).collect());
    let egress_dir = options
        .egress_dir
        .clone()
        .unwrap_or_else(|| EGRESS_DIR.into());
    if options.forward {
        forward(&options.egress, &egress_dir);
    }
    let run_as = match options.run_as {
        None => None,
        Some(_) if !options.serve => fail(EXIT_SHIM, "berth-shim: --run-as is for --serve only"),
        Some(None) => fail(
            EXIT_SHIM,
            "berth-shim: --run-as takes UID:GID, two numbers, the UID not 0 and neither 4294967295 (for example --run-as=1000:1000)",
        ),
        Some(Some((uid, gid))) => {
            if let Err(e) = sys::become_supervisor(uid, gid) {
                fail(
                    EXIT_SHIM,
                    &format!("berth-shim: --run-as={uid}:{gid} needs the shim started as root with CAP_SETUID and CAP_SETGID: {e}"),
                );
            }
            // A change of the effective user resets the flag to the system's suid_dumpable.
            if let Err(e) = sys::set_not_dumpable() {
                fail(
                    EXIT_SHIM,
                    &format!("berth-shim: cannot make itself non-dumpable: {e}"),
                );
            }
            Some((uid, gid))
        }
    };
    let mounts = check_mounts(&options.expected_mounts);
    if options.serve {
        let egress = (!options.egress.is_empty()).then(|| (options.egress.clone(), egress_dir));
        serve(options.sweep, mounts.err(), egress, run_as);
    }
    if let Err(why) = mounts {
        fail(EXIT_SHIM, &why);
    }
    if !options.egress.is_empty() {
        if let Err(why) = start_forwarder(&options.egress, &egress_dir, None) {
            fail(EXIT_SHIM, &format!("berth-shim: {why}"));
        }
    }
    let Options {
        stdout,
        stderr,
        setup,
        ..
    } = options;
    let mut args = command.into_iter();
    let Some(program) = args.next() else {
        fail(EXIT_SHIM, "berth-shim: no command given")
    };

    // A duplicate of fd 0 read as a plain File: unlike `io::stdin()` it has no buffer that could
    // swallow the command's input. It is close-on-exec, and the command inherits fd 0 itself.
    let vars = if setup { read_setup() } else { Vec::new() };

    let secrets_dir = std::env::var_os(SECRETS_DIR_VAR).unwrap_or_else(|| SECRETS_DIR.into());
    let secrets_dir = Path::new(&secrets_dir);
    let mut cmd = Command::new(&program);
    cmd.args(args).env_remove(SECRETS_DIR_VAR);
    // A cold container's secrets directory is new; what is there is not the command's.
    let _ = clear_secrets(secrets_dir);
    if vars.iter().any(|v| v.kind == Kind::Secret) && !secrets_dir.is_dir() {
        fail(
            EXIT_SHIM,
            &format!(
                "berth-shim: secrets directory {} does not exist",
                secrets_dir.display()
            ),
        );
    }
    for var in &vars {
        if var.kind == Kind::Secret {
            if let Err(e) = write_secret(secrets_dir, &var.name, &var.value) {
                fail(
                    EXIT_SHIM,
                    &format!("berth-shim: cannot write secret {}: {e}", var.name),
                );
            }
        }
        cmd.env(&var.name, OsStr::from_bytes(&var.value));
    }
    if let Some(path) = &stdout {
        cmd.stdout(open_output(path));
    }
    if let Some(path) = &stderr {
        cmd.stderr(open_output(path));
    }
    let path_set = std::env::var_os("PATH").is_some() || vars.iter().any(|v| v.name == "PATH");
    if !path_set {
        cmd.env("PATH", DEFAULT_PATH);
    }

    // `exec` searches PATH (execvp) and only returns on failure.
    let err = cmd.exec();
    let argv0 = program.to_string_lossy();
    match err.kind() {
        ErrorKind::NotFound => fail(127, &format!("berth: command not found: {argv0}")),
        _ => fail(126, &format!("berth: cannot run {argv0}: {err}")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(input: &[u8]) -> Result<Vec<Var>, String> {
        parse_frame(&mut &input[..])
    }

    fn var(kind: Kind, name: &str, value: &[u8]) -> Var {
        Var {
            kind,
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn empty_frame() {
        assert_eq!(parse(b"berth-shim-v1\nend\n").unwrap(), []);
    }

    #[test]
    fn secrets_and_env() {
        let frame = b"berth-shim-v1\nsecret TOKEN 3\nabc\nsecret _K2 0\n\nenv MODE 4\nfast\nend\n";
        assert_eq!(
            parse(frame).unwrap(),
            [
                var(Kind::Secret, "TOKEN", b"abc"),
                var(Kind::Secret, "_K2", b""),
                var(Kind::Env, "MODE", b"fast")
            ]
        );
    }

    #[test]
    fn value_with_newlines_and_dollar() {
        let frame = b"berth-shim-v1\nsecret KEY 12\n$HOME\nend\n$x\nend\n";
        assert_eq!(
            parse(frame).unwrap(),
            [var(Kind::Secret, "KEY", b"$HOME\nend\n$x")]
        );
    }

    #[test]
    fn stops_right_after_end() {
        let input = b"berth-shim-v1\nenv A 1\nx\nend\nrest of stdin";
        let mut reader = &input[..];
        parse_frame(&mut reader).unwrap();
        assert_eq!(reader, b"rest of stdin");
    }

    fn error(input: &[u8]) -> String {
        parse(input).unwrap_err()
    }

    #[test]
    fn bad_magic() {
        assert!(error(b"berth-shim-v2\nend\n").contains("first line"));
        assert!(error(b"").contains("end of input"));
    }

    #[test]
    fn eof_midway() {
        assert!(error(b"berth-shim-v1\nsecret A 5\nab").contains("end of input in value of A"));
        assert!(error(b"berth-shim-v1\nsecret A 2\nab").contains("end of input in value of A"));
        assert!(error(b"berth-shim-v1\nenv A 1\nx\n").contains("end of input before `end`"));
        assert!(error(b"berth-shim-v1\nen").contains("end of input before `end`"));
    }

    #[test]
    fn bad_lengths() {
        assert!(error(b"berth-shim-v1\nsecret A 1048577\n").contains("longer than"));
        assert!(
            error(b"berth-shim-v1\nsecret A 99999999999999999999999\n").contains("invalid length")
        );
        assert!(error(b"berth-shim-v1\nsecret A +1\nx\nend\n").contains("invalid length"));
        assert!(error(b"berth-shim-v1\nsecret A -1\n").contains("invalid length"));
        // A wrong length shows up as a missing newline; the value itself is never echoed.
        let e = error(b"berth-shim-v1\nsecret A 2\nhunter2\nend\n");
        assert!(
            e.contains("not followed by a newline") && !e.contains("hunter"),
            "{e}"
        );
    }

    #[test]
    fn bad_names_and_lines() {
        for name in ["1A", "A-B", "", "A B", "Ä"] {
            let frame = format!("berth-shim-v1\nsecret {name} 1\nx\nend\n");
            assert!(parse(frame.as_bytes()).is_err(), "{name:?}");
        }
        assert!(error(b"berth-shim-v1\nsecret hunter2\nend\n").contains("malformed line"));
        assert!(!error(b"berth-shim-v1\nhunter2\nend\n").contains("hunter2"));
        assert!(error(b"berth-shim-v1\nenv A 1\nx\nenv A 1\ny\nend\n").contains("A given twice"));
        assert!(error(b"berth-shim-v1\nenv A 1\n\0\nend\n").contains("NUL"));
        let long = format!("berth-shim-v1\n{}\n", "x".repeat(MAX_LINE + 1));
        assert!(parse(long.as_bytes())
            .unwrap_err()
            .contains("longer than 4096"));
        let max = format!("berth-shim-v1\n{}\n", "x".repeat(MAX_LINE));
        assert!(parse(max.as_bytes())
            .unwrap_err()
            .contains("malformed line"));
    }

    #[test]
    fn names() {
        assert!(valid_name("_") && valid_name("a1_B") && valid_name("PATH"));
        assert!(!valid_name("") && !valid_name("9") && !valid_name("a.b") && !valid_name("a="));
    }
}

#[cfg(test)]
mod option_tests {
    use super::*;

    fn split(args: &[&str]) -> (Option<String>, Option<String>, Vec<String>) {
        let (o, rest) = split_options(args.iter().map(OsString::from).collect());
        let s = |v: Option<OsString>| v.map(|v| v.to_string_lossy().into_owned());
        (
            s(o.stdout),
            s(o.stderr),
            rest.into_iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect(),
        )
    }

    #[test]
    fn output_options_come_before_the_command() {
        assert_eq!(
            split(&["echo", "hi"]),
            (None, None, vec!["echo".into(), "hi".into()])
        );
        assert_eq!(
            split(&["--stdout=/o", "--stderr=/e", "--", "--stdout=x"]),
            (
                Some("/o".into()),
                Some("/e".into()),
                vec!["--stdout=x".into()]
            )
        );
        assert_eq!(split(&["--", "ls"]), (None, None, vec!["ls".into()]));
    }
}

#[cfg(test)]
mod setup_option_tests {
    use super::*;

    #[test]
    fn no_setup_is_an_option_before_the_command() {
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        let (o, rest) = split_options(args(&["--no-setup", "--", "true"]));
        assert!(!o.setup);
        assert_eq!(rest, args(&["true"]));
        let (o, rest) = split_options(args(&["--", "--no-setup"]));
        assert!(o.setup, "after `--` it is the command");
        assert_eq!(rest, args(&["--no-setup"]));
    }

    #[test]
    fn serve_is_an_option() {
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        let (o, rest) = split_options(args(&["--serve"]));
        assert!(o.serve && rest.is_empty());
        let (o, rest) = split_options(args(&["--no-setup", "--", "--serve"]));
        assert!(!o.serve && !o.setup);
        assert_eq!(rest, args(&["--serve"]));
    }
}

#[cfg(test)]
mod mount_check_tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn mounts_are_checked_by_inode_or_by_change_time() {
        let dir = std::env::temp_dir().join(format!("berth-shim-mounts-{}", std::process::id()));
        let other = dir.join("other");
        std::fs::create_dir_all(&other).unwrap();
        let meta = std::fs::metadata(&dir).unwrap();
        let target = dir.as_os_str().to_os_string();
        let options = |args: &[String]| {
            split_options(args.iter().map(OsString::from).collect())
                .0
                .expected_mounts
        };
        let inode = |dev: u64, ino: u64, path: &str| format!("--expect-mount={dev}:{ino}:{path}");
        let ctime =
            |sec: i64, nsec: i64, path: &str| format!("--expect-mount-ctime={sec}:{nsec}:{path}");
        let path = dir.to_str().unwrap();
        let good = options(&[
            inode(meta.dev(), meta.ino(), path),
            ctime(meta.ctime(), meta.ctime_nsec(), path),
        ]);
        assert_eq!(good.len(), 2);
        assert_eq!(good[1].1, target);
        assert_eq!(check_mounts(&good), Ok(()));
        // Another directory in its place: both checks see it.
        let other_meta = std::fs::metadata(&other).unwrap();
        let e = check_mounts(&options(&[inode(meta.dev(), other_meta.ino(), path)])).unwrap_err();
        assert!(e.contains("is not what berth checked (device"), "{e}");
        let e = check_mounts(&options(&[ctime(
            meta.ctime() - 1,
            meta.ctime_nsec(),
            path,
        )]))
        .unwrap_err();
        assert!(e.contains("changed at") && e.contains("run again"), "{e}");
        // Malformed numbers match nothing.
        let e = check_mounts(&options(&[format!("--expect-mount-ctime=x:y:{path}")])).unwrap_err();
        assert!(e.contains("not what berth checked"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod relay_tests {
    use super::*;
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::os::unix::net::UnixStream;
    use std::sync::mpsc;
    use std::time::Duration;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ (i >> 12) as u8 ^ seed)
            .collect()
    }

    /// One end: sends `data` and shuts for writing, then reads to the end; or, with
    /// `read_first`, reads to the end before it sends.
    fn side<S: Read + Write + Send + 'static>(
        mut s: S,
        data: Vec<u8>,
        read_first: bool,
        shut: fn(&S),
    ) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut got = Vec::new();
            if read_first {
                s.read_to_end(&mut got).unwrap();
            }
            s.write_all(&data).unwrap();
            shut(&s);
            if !read_first {
                s.read_to_end(&mut got).unwrap();
            }
            got
        })
    }

    /// Relays `out` bytes from the sandbox's client and `into` bytes from the proxy; with
    /// `first`, that side sends and half-closes before the other reads to the end and sends.
    fn check(out: usize, into: usize, first: Option<&str>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let (upstream, proxy) = UnixStream::pair().unwrap();
        let relay = std::thread::spawn(move || relay(accepted, upstream));
        let (sent_out, sent_in) = (pattern(out, 1), pattern(into, 2));
        let c = side(client, sent_out.clone(), first == Some("proxy"), |s| {
            s.shutdown(Shutdown::Write).unwrap()
        });
        let p = side(proxy, sent_in.clone(), first == Some("client"), |s| {
            s.shutdown(Shutdown::Write).unwrap()
        });
        // A half-close not passed on leaves a side waiting: a failure, not a hang.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send((c.join().unwrap(), p.join().unwrap(), relay.join()));
        });
        let (got_in, got_out, relayed) = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        assert!(relayed.is_ok());
        assert!(
            got_out == sent_out,
            "the proxy got other bytes ({out}, {into}, {first:?})"
        );
        assert!(
            got_in == sent_in,
            "the client got other bytes ({out}, {into}, {first:?})"
        );
    }

    #[test]
    fn relay_passes_bytes_exactly_both_ways_with_half_closes() {
        check(8 * RELAY_BYTES + 3, 5 * RELAY_BYTES + 1, None);
        check(7, 3 * RELAY_BYTES + 5, Some("client"));
        check(3 * RELAY_BYTES + 5, 11, Some("proxy"));
        check(0, RELAY_BYTES, Some("client"));
        check(0, 0, None);
    }

    /// Where splice cannot write (a file opened for appending: `EINVAL`), what the pipe holds
    /// and the rest are copied.
    #[test]
    fn what_cannot_be_spliced_is_copied() {
        let path = std::env::temp_dir().join(format!("berth-shim-append-{}", std::process::id()));
        let mut to = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .unwrap();
        to.write_all(b"<").unwrap();
        let mut to = OpenOptions::new().append(true).open(&path).unwrap();
        let (mut from, writer) = UnixStream::pair().unwrap();
        let data = pattern(3 * RELAY_BYTES + 7, 3);
        let sent = data.clone();
        let w = side(writer, data, false, |s| {
            s.shutdown(Shutdown::Write).unwrap()
        });
        pass_on(&mut from, &mut to).unwrap();
        drop(from);
        w.join().unwrap();
        let got = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(
            got[0] == b'<' && got[1..] == sent[..],
            "other bytes arrived"
        );
    }
}
