//! Egress policy end to end: the real binary, the real engine, the busybox test image, fake
//! upstreams on this machine's loopback. Inside the sandbox only `lo` exists; the shim's
//! forwarder is the way out, to berth's proxy.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use support::{containers_of_run, stderr, stdout, Workspace};

/// What a fake upstream received: request heads, one string each.
type Seen = Arc<Mutex<Vec<String>>>;

/// A fake HTTP upstream on 127.0.0.2 (outside the sandbox's NO_PROXY, so clients use the proxy).
/// `respond(head) -> (content type, body)`.
fn upstream(respond: fn(&str) -> (String, String)) -> (u16, Seen) {
    let listener = TcpListener::bind("127.0.0.2:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let s = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let s = s.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut head = String::new();
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    head.push_str(&line);
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let (ctype, text) = respond(&head);
                s.lock().unwrap().push(head);
                let mut conn = conn;
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                    text.len()
                );
            });
        }
    });
    (port, seen)
}

fn hello(_: &str) -> (String, String) {
    ("text/plain".into(), "hello-from-upstream\n".into())
}

fn events(ws: &Workspace) -> Vec<serde_json::Value> {
    std::fs::read_to_string(ws.last_run().join("events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn policy_allows_listed_hosts_denies_the_rest_and_records_every_decision() {
    let ws = Workspace::new();
    let (port, seen) = upstream(hello);
    let script = format!(
        r#"
wget -q -O - http://127.0.0.2:{port}/hello; echo "allowed=$?"
wget -q -O - http://denied.example/ ; echo "denied=$?"
{{ printf 'GET http://denied.example/x HTTP/1.0\r\n\r\n'; sleep 2; }} | nc 127.0.0.1 41080
nslookup example.org >/dev/null 2>&1; echo "dns=$?"
nc -w 2 1.1.1.1 80 </dev/null >/dev/null 2>&1; echo "raw=$?"
nc -w 2 127.0.0.2 {port} </dev/null >/dev/null 2>&1; echo "rawlocal=$?"
ls /sys/class/net
"#
    );
    let out = ws.run(
        &["--allow-host", &format!("127.0.0.2:{port}")],
        &["sh", "-c", &script],
    );
    let (so, se) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "stdout: {so}\nstderr: {se}");
    assert!(so.contains("hello-from-upstream\nallowed=0"), "{so}");
    assert!(!so.contains("denied=0"), "{so}");
    assert!(so.contains("HTTP/1.0 403 Forbidden"), "{so}");
    assert!(so.contains("--allow-host denied.example:80"), "{so}");
    assert!(!so.contains("dns=0"), "DNS must fail: {so}");
    assert!(!so.contains("raw=0"), "a raw connect must fail: {so}");
    assert!(
        !so.contains("rawlocal=0"),
        "the host's loopback is not the sandbox's: {so}"
    );
    assert_eq!(so.lines().last(), Some("lo"), "only loopback: {so}");
    assert_eq!(seen.lock().unwrap().len(), 1);

    let events = events(&ws);
    let egress: Vec<&serde_json::Value> =
        events.iter().filter(|e| e["event"] == "egress").collect();
    let allowed = egress
        .iter()
        .find(|e| e["allowed"] == true)
        .expect("the allowed request is an event");
    assert_eq!(allowed["host"], "127.0.0.2");
    assert_eq!(allowed["port"], port);
    assert_eq!(allowed["path"], "/hello");
    assert_eq!(allowed["rule"], format!("127.0.0.2:{port}"));
    assert!(allowed["bytes_in"].as_u64().unwrap() >= 20, "{allowed}");
    let denied: Vec<_> = egress.iter().filter(|e| e["allowed"] == false).collect();
    assert_eq!(denied.len(), 2, "{egress:?}");
    assert!(denied
        .iter()
        .all(|e| e["host"] == "denied.example" && e["rule"] == "no rule allows denied.example:80"));

    let record = ws.last_record();
    assert_eq!(record["spec"]["egress"]["mode"], "policy");
    assert_eq!(record["egress"]["allowed"], 1);
    assert_eq!(record["egress"]["denied"], 2);
    assert_eq!(record["egress"]["denied_hosts"][0], "denied.example:80");

    let id = record["id"].as_str().unwrap().to_string();
    let show = ws.berth(&["show", &id]).output().unwrap();
    let shown = stdout(&show);
    assert!(
        shown.contains("egress: policy: 1 allowed, 2 denied"),
        "{shown}"
    );
    assert!(shown.contains("denied hosts: denied.example:80"), "{shown}");
    assert!(containers_of_run(&id).is_empty());
}

#[test]
fn egress_flags_are_checked_and_explained() {
    let ws = Workspace::new();
    for (args, needle) in [
        (vec!["--allow-host", "*"], "egress rule `*`"),
        (
            vec!["--egress", "none", "--allow-host", "a.org"],
            "--allow-host: hosts are allowed through berth's egress proxy",
        ),
        (
            vec!["--egress", "sometimes"],
            "[possible values: none, policy, open]",
        ),
        (
            vec!["--allow-host", "a.org", "--network", "bridge"],
            "--network: `bridge` cannot be combined with egress policy",
        ),
        (
            vec!["--allow-preset", "nope"],
            "[possible values: package-registries, github, anthropic, openai]",
        ),
    ] {
        let out = ws.run(&args, &["true"]);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn open_egress_says_so_loudly() {
    let ws = Workspace::new();
    let out = ws.run(&["--egress", "open"], &["true"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("--egress open: the sandbox joins the engine's bridge network"));
    assert_eq!(ws.last_record()["spec"]["network"]["kind"], "bridge");
}

const REAL_KEY: &str = "sk-ant-api03-REAL-0123456789abcdef";

fn messages_api(head: &str) -> (String, String) {
    assert!(head.starts_with("POST /v1/messages "), "{head}");
    (
        "text/event-stream".into(),
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":21,\"output_tokens\":1}}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":7}}\n\n".into(),
    )
}

#[test]
fn brokered_credentials_never_enter_the_sandbox() {
    let ws = Workspace::new();
    let (port, seen) = messages_api_upstream();
    // An agent-like profile: the prompt is a script; the credential is brokered.
    let config = ws.data_path().join("config/berth");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("config.toml"),
        format!(
            "[profiles.fake-agent]\nimage = \"{}\"\ncommand = [\"sh\", \"-c\", \"{{prompt}}\"]\ncredentials = [\"ANTHROPIC_API_KEY\"]\negress = \"policy\"\nbroker = {{ ANTHROPIC_API_KEY = \"anthropic\" }}\n",
            support::image()
        ),
    )
    .unwrap();
    let script = r#"
echo "base=$ANTHROPIC_BASE_URL key=$ANTHROPIC_API_KEY"
(printf 'POST /v1/messages HTTP/1.0\r\nx-api-key: %s\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}' "$ANTHROPIC_API_KEY"; sleep 3) | nc 127.0.0.1 41081 > /tmp/answer; grep -c message_delta /tmp/answer || cat /tmp/answer
echo "env=$(env | grep -c 'sk-ant-api0[3]')"
echo "proc=$(cat /proc/[0-9]*/environ 2>/dev/null | grep -c 'sk-ant-api0[3]')"
echo "files=$(grep -rl 'sk-ant-api0[3]' /workspace /tmp /berth/out /run /etc /home 2>/dev/null | wc -l)"
echo "cmdline=$(cat /proc/[0-9]*/cmdline 2>/dev/null | grep -c 'sk-ant-api0[3]')"
"#;
    let out = ws
        .berth(&[
            "run",
            "--profile",
            "fake-agent",
            "--keep",
            "--timeout",
            "60s",
            script,
        ])
        .env("ANTHROPIC_API_KEY", REAL_KEY)
        .env(
            "BERTH_ANTHROPIC_UPSTREAM",
            format!("http://127.0.0.2:{port}"),
        )
        .output()
        .unwrap();
    let (so, se) = (stdout(&out), stderr(&out));
    let (record, id, inspect) = support::inspect_kept_run(&ws);
    assert!(out.status.success(), "stdout: {so}\nstderr: {se}");
    assert!(
        so.contains(&format!(
            "base=http://127.0.0.1:41081 key={}",
            berth_core_placeholder()
        )),
        "{so}"
    );
    // The fake API answered through the broker, and saw the real key.
    assert!(so.contains("\n2\n"), "{so}");
    let heads = seen.lock().unwrap().clone();
    assert_eq!(heads.len(), 1);
    assert!(
        heads[0].contains(&format!("x-api-key: {REAL_KEY}")),
        "{}",
        heads[0]
    );
    for probe in ["env=0", "proc=0", "files=0", "cmdline=0"] {
        assert!(so.contains(probe), "{probe}: {so}");
    }
    assert!(inspect.status.success());
    assert!(!String::from_utf8_lossy(&inspect.stdout).contains("sk-ant-api03"));
    // berth's own records: run.json, events, logs.
    for entry in std::fs::read_dir(ws.last_run()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
            assert!(!text.contains(REAL_KEY), "{} holds the key", path.display());
        }
    }
    assert_eq!(
        record["spec"]["egress"]["brokers"][0]["credential"],
        "ANTHROPIC_API_KEY"
    );
    assert!(record["spec"]["secrets"].as_array().unwrap().is_empty());
    assert_eq!(record["egress"]["api_requests"], 1);
    assert_eq!(record["egress"]["input_tokens"], 21);
    assert_eq!(record["egress"]["output_tokens"], 7);
    let show = stdout(&ws.berth(&["show", &id]).output().unwrap());
    assert!(
        show.contains("api usage: 1 requests, 21 input tokens, 7 output tokens"),
        "{show}"
    );
    assert!(show.contains("(brokered: ANTHROPIC_API_KEY)"), "{show}");
}

fn messages_api_upstream() -> (u16, Seen) {
    upstream(messages_api)
}

fn berth_core_placeholder() -> &'static str {
    "berth-brokered-credential-placeholder"
}

/// A persistent container keeps its processes' files between runs but not its egress: each run
/// gets the policy it asks for, through its own proxy, and its own decisions in its record.
#[test]
fn a_persistent_container_gets_each_runs_own_policy() {
    let ws = Workspace::new();
    let (port, seen) = upstream(hello);
    let name = format!("egress-held-{}", std::process::id());
    let allowed = format!("127.0.0.2:{port}");
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "--image", support::image(), "--name", &name];
        args.extend_from_slice(extra);
        args.extend([
            "--",
            "sh",
            "-c",
            "wget -q -O - http://127.0.0.2:PORT/held; echo got=$?; \
             echo root: $(grep -lE '^Uid:[[:space:]]+0[[:space:]]' /proc/[0-9]*/status)",
        ]);
        let args: Vec<String> = args
            .iter()
            .map(|a| a.replace("PORT", &port.to_string()))
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ws.berth(&args).output().unwrap()
    };
    let first = run(&["--allow-host", &allowed]);
    let second = run(&["--allow-host", "other.example"]);
    let third = run(&[]);
    let records: Vec<serde_json::Value> = {
        let mut dirs: Vec<_> = std::fs::read_dir(ws.runs_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        dirs.sort();
        dirs.iter()
            .map(|d| serde_json::from_slice(&std::fs::read(d.join("run.json")).unwrap()).unwrap())
            .collect()
    };
    let rm = ws.berth(&["rm", &name]).output().unwrap();
    assert!(rm.status.success(), "{}", stderr(&rm));

    assert!(first.status.success(), "{}", stderr(&first));
    assert!(
        stdout(&first).contains("hello-from-upstream\ngot=0"),
        "{}",
        stdout(&first)
    );
    // Only the supervisor keeps root (as its real user); the forwarder, which reads what the
    // sandbox sends, runs as the sandbox user like the command.
    assert!(
        stdout(&first).contains("\nroot: /proc/1/status\n"),
        "{}",
        stdout(&first)
    );
    assert!(
        stderr(&first).contains("created persistent container"),
        "{}",
        stderr(&first)
    );
    // The same container, a narrower policy: the host the first run reached is refused.
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(!stderr(&second).contains("created persistent container"));
    assert!(!stdout(&second).contains("got=0"), "{}", stdout(&second));
    // No egress asked: no proxy at all.
    assert!(third.status.success(), "{}", stderr(&third));
    assert!(!stdout(&third).contains("got=0"), "{}", stdout(&third));
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "only the first run got through"
    );

    assert_eq!(records.len(), 3);
    assert_eq!(records[0]["egress"]["allowed"], 1, "{}", records[0]);
    assert_eq!(records[1]["egress"]["allowed"], 0, "{}", records[1]);
    assert_eq!(records[1]["egress"]["denied"], 1, "{}", records[1]);
    assert_eq!(
        records[1]["egress"]["denied_hosts"][0],
        format!("127.0.0.2:{port}")
    );
    // Mode none is the default, left out of the spec; and no proxy means no egress summary.
    assert!(records[2]["spec"]["egress"].is_null(), "{}", records[2]);
    assert!(records[2]["egress"].is_null(), "{}", records[2]);
}
