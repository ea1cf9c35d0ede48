//! The command line as a new user meets it (issue 15, section 2.6): completions, the man page,
//! `berth init`, `berth version`, help text, `berth ls`, `berth logs` and `berth apply` of local
//! runs, what a run says as it ends, and Ctrl-C; `berth logs` of a server run against a hostile
//! event stream. The real binary; the real engine for runs, a fake server on loopback.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{git, image, stderr, stdout, Workspace};

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn berth(ws: &Workspace, args: &[&str]) -> Output {
    ws.berth(args).output().unwrap()
}

#[test]
fn completions_for_each_shell_and_a_man_page() {
    let ws = Workspace::new();
    for (shell, marker) in [
        ("bash", "_berth()"),
        ("zsh", "#compdef berth"),
        ("fish", "complete -c berth"),
    ] {
        let o = berth(&ws, &["completions", shell]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let out = stdout(&o);
        assert!(out.contains(marker), "{shell}: {out}");
        // Subcommands and their options are completed.
        assert!(
            out.contains("workflow") && out.contains("workspace-mode"),
            "{shell}"
        );
    }
    let o = berth(&ws, &["completions", "tcsh"]);
    assert_eq!(code(&o), 2, "an unknown shell is a usage error");

    let o = berth(&ws, &["man"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let page = stdout(&o);
    assert!(
        page.starts_with(".ie") || page.contains(".TH berth"),
        "{page}"
    );
    assert!(page.contains("hardened"), "the about text is in it");
}

#[test]
fn version_is_a_command_too() {
    let ws = Workspace::new();
    let command = berth(&ws, &["version"]);
    let flag = berth(&ws, &["--version"]);
    assert_eq!(code(&command), 0);
    assert_eq!(stdout(&command), stdout(&flag));
    assert_eq!(
        stdout(&command),
        format!("berth {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn help_names_each_environment_variable_once() {
    let ws = Workspace::new();
    for command in ["submit", "logs", "runner", "ls", "server"] {
        let o = berth(&ws, &[command, "--help"]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let help = stdout(&o);
        for name in [
            "BERTH_SERVER",
            "BERTH_TOKEN",
            "BERTH_CA",
            "BERTH_TLS_CLIENT_CERT",
            "BERTH_TLS_CLIENT_KEY",
            "BERTH_METRICS_TOKEN_FILE",
            "BERTH_TOKEN_FILE",
            "BERTH_DB_PASSWORD_FILE",
        ] {
            // `[env: NAME=value]`, or `[env: NAME]` when the value is hidden.
            let times = help.matches(&format!("[env: {name}=")).count()
                + help.matches(&format!("[env: {name}]")).count();
            assert!(
                times <= 1,
                "berth {command} --help names {name} {times} times:\n{help}"
            );
        }
    }
    // Options that had no description have one (args.rs's unit test checks every option).
    let help = stdout(&berth(&ws, &["submit", "-h"]));
    for (option, text) in [
        ("--memory", "Memory limit"),
        ("--timeout", "Stop the command after"),
        ("--json", "JSON"),
    ] {
        // The description is on the option's line, or on the next one when it is long.
        let lines: Vec<&str> = help.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.trim_start().starts_with(option))
            .unwrap_or_else(|| panic!("{option} missing:\n{help}"));
        let line = format!("{} {}", lines[at], lines.get(at + 1).unwrap_or(&""));
        assert!(line.contains(text), "{option} has no description:\n{help}");
    }
}

#[test]
fn init_writes_a_commented_berth_toml_once() {
    let ws = Workspace::new();
    let o = berth(&ws, &["init"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let path = ws.path().join("berth.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.lines().all(|l| l.is_empty() || l.starts_with('#')),
        "{text}"
    );
    assert!(text.contains("# memory = \"2g\""), "{text}");
    // berth reads it (every key it names is one berth knows).
    let o = berth(&ws, &["profiles"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));

    std::fs::write(&path, "memory = \"1g\"\n").unwrap();
    let o = berth(&ws, &["init"]);
    assert_eq!(code(&o), 125);
    assert!(stderr(&o).contains("never overwrites"), "{}", stderr(&o));
    assert!(stderr(&o).contains("\nhint: "), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "memory = \"1g\"\n");
}

#[test]
fn a_run_says_its_id_and_ls_and_logs_show_it() {
    let ws = Workspace::new();
    let o = ws.run(&[], &["sh", "-c", "echo out-line; echo err-line >&2"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let id = ws.last_record()["id"].as_str().unwrap().to_string();
    assert!(
        stderr(&o).contains(&format!("run {id} succeeded")),
        "{}",
        stderr(&o)
    );

    let ls = berth(&ws, &["ls"]);
    assert_eq!(code(&ls), 0, "{}", stderr(&ls));
    let out = stdout(&ls);
    let header = out.lines().next().unwrap();
    assert!(
        header.contains("DURATION") && header.contains("IMAGE"),
        "{out}"
    );
    let row = out.lines().find(|l| l.starts_with(&id)).unwrap();
    assert!(row.contains(image()), "{out}");
    let took = row.split_whitespace().nth(4).unwrap();
    assert!(
        took.ends_with("ms") || took.ends_with('s'),
        "a duration: {took} in {out}"
    );

    // berth logs of a local run: its output, each stream where it came from.
    let logs = berth(&ws, &["logs", &id[..8]]);
    assert_eq!(code(&logs), 0, "{}", stderr(&logs));
    assert_eq!(stdout(&logs), "out-line\n");
    assert_eq!(stderr(&logs), "err-line\n");
    // A local run answers even with a server configured.
    let here = ws
        .berth(&["logs", &id])
        .env("BERTH_SERVER", "http://127.0.0.1:9")
        .output()
        .unwrap();
    assert_eq!(code(&here), 0, "{}", stderr(&here));
    assert_eq!(stdout(&here), "out-line\n");
    let events = berth(&ws, &["logs", &id, "--json"]);
    assert_eq!(code(&events), 0, "{}", stderr(&events));
    assert!(
        stdout(&events)
            .lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
        "{}",
        stdout(&events)
    );
    assert!(
        stdout(&events).contains("\"finished\""),
        "{}",
        stdout(&events)
    );
    let none = berth(&ws, &["logs", "zzzz"]);
    assert_eq!(code(&none), 125);
    assert!(
        stderr(&none).contains("\nhint: ") && stderr(&none).contains("--server"),
        "{}",
        stderr(&none)
    );
}

#[test]
fn apply_twice_says_already_applied_and_no_change_keeps_nothing() {
    let ws = Workspace::new();
    let dir = ws.path();
    git(dir, &["init", "--quiet"]);
    std::fs::write(dir.join(".git/info/exclude"), ".cache/\n").unwrap();
    std::fs::write(dir.join("a.txt"), "one\n").unwrap();
    git(dir, &["add", "--all"]);
    git(dir, &["commit", "--quiet", "-m", "start"]);

    // No change: nothing to point at.
    let o = ws.run(&["--workspace-mode", "worktree"], &["true"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(!stderr(&o).contains("changes kept in"), "{}", stderr(&o));

    let o = ws.run(
        &["--workspace-mode", "worktree"],
        &["sh", "-c", "echo two >> a.txt"],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stderr(&o).contains("changes kept in"), "{}", stderr(&o));
    let id = ws.last_record()["id"].as_str().unwrap().to_string();

    let first = berth(&ws, &["apply", &id]);
    assert_eq!(code(&first), 0, "{}", stderr(&first));
    assert!(
        stderr(&first).contains("applied the changes"),
        "{}",
        stderr(&first)
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("a.txt")).unwrap(),
        "one\ntwo\n"
    );
    let second = berth(&ws, &["apply", &id]);
    assert_eq!(code(&second), 0, "{}", stderr(&second));
    assert!(
        stderr(&second).contains("already applied"),
        "{}",
        stderr(&second)
    );
    assert!(!stderr(&second).contains("conflict"), "{}", stderr(&second));
    assert_eq!(
        std::fs::read_to_string(dir.join("a.txt")).unwrap(),
        "one\ntwo\n"
    );
}

#[test]
fn the_first_ctrl_c_says_a_second_one_kills() {
    let ws = Workspace::new();
    // The command ignores SIGTERM: only the second Ctrl-C (SIGKILL) ends it before the grace.
    let mut child = ws
        .berth(&[
            "run",
            "--image",
            image(),
            "--grace",
            "60s",
            "--",
            "sh",
            "-c",
            "trap '' TERM; echo ready; while :; do sleep 1; done",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout_pipe = child.stdout.take().unwrap();
    let mut ready = [0u8; 6];
    stdout_pipe.read_exact(&mut ready).unwrap();
    assert_eq!(&ready, b"ready\n");
    let interrupt = || {
        Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap()
    };
    let started = Instant::now();
    interrupt();
    std::thread::sleep(Duration::from_secs(1));
    interrupt();
    let status = child.wait().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the grace was waited out"
    );
    assert_eq!(status.code(), Some(130));
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        err.contains("cancelled by SIGINT; press Ctrl-C again to kill it at once"),
        "{err}"
    );
    assert!(err.contains("second interrupt"), "{err}");
}

/// `berth logs` of a server run holds a bounded part of the event stream: a hostile (or broken)
/// server's 128 MiB line is left out with a warning naming the limit, the peak memory of the
/// client stays far below what that line would take, and the events around it are shown.
#[test]
fn logs_from_a_server_leave_out_an_oversized_event_with_memory_bounded() {
    use std::io::Write;
    const HUGE_MIB: usize = 128;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let ws = Workspace::new();
    let child = ws
        .berth(&["logs", "r1", "--server", &server, "--token", "t"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let fake = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            conn.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let event = |seq: u32, kind: &str, data: &str| {
            let view = serde_json::json!({"seq": seq, "ts": "2026-01-01T00:00:00Z", "kind": kind, "data": data});
            format!("id: {seq}\nevent: {kind}\ndata: {view}\n\n")
        };
        // A body that lasts until the connection closes.
        conn.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n",
        )
        .unwrap();
        conn.write_all(event(1, "stdout", "before\n").as_bytes())
            .unwrap();
        conn.write_all(b"id: 2\nevent: stdout\ndata: ").unwrap();
        let mebibyte = vec![b'x'; 1 << 20];
        for _ in 0..HUGE_MIB {
            conn.write_all(&mebibyte).unwrap();
        }
        // The client has read all but what the socket buffers hold, and is still running.
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let peak_kib: usize = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        conn.write_all(b"\n\n").unwrap();
        conn.write_all(event(3, "stdout", "after\n").as_bytes())
            .unwrap();
        conn.write_all(b"event: end\ndata: {}\n\n").unwrap();
        (head, peak_kib)
    });
    let o = child.wait_with_output().unwrap();
    let (head, peak_kib) = fake.join().unwrap();
    assert!(
        head.starts_with("GET /api/v1/runs/r1/events?follow=false "),
        "{head}"
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), "before\nafter\n");
    assert!(
        stderr(&o).contains("longer than the limit of 1048576 bytes"),
        "{}",
        stderr(&o)
    );
    assert!(
        peak_kib < HUGE_MIB * 1024 / 2,
        "berth logs peaked at {peak_kib} KiB reading a {HUGE_MIB} MiB line"
    );
}
