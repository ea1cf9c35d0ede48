//! The REAL Claude Code CLI in a berth sandbox, through berth's egress proxy and credential
//! broker, against a fake Anthropic Messages API on this machine's loopback.
//!
//! The image (scripts/claude-image.sh) holds the native `claude` binary that the PyPI package
//! claude-agent-sdk bundles (pinned version and hash), its glibc libraries, bash and busybox.
//! `berth run --profile claude-code` starts it as the profile says (egress policy, the API key
//! brokered); the broker's upstream is pointed at the fake with `BERTH_ANTHROPIC_UPSTREAM`.
//! The fake answers the first request with a Bash tool call and the request that carries its
//! result with a final answer, streaming both as server-sent events.
//!
//! What it shows: the tool call really ran in the sandbox; berth parsed the CLI's stream-json
//! into events; every request the fake saw carried the real key, set by the broker; the sandbox
//! held only the placeholder (its environment, `/proc/*/environ`, its files, `docker inspect`,
//! `docker export`, and berth's records hold the key in no form: plain, hex or base64); each API
//! request is an egress decision in events.jsonl; the token usage berth recorded is what the
//! fake reported; and a `--continue` run resumes the session from the sessions directory.
//!
//! A failed wheel download or image build fails the test: nothing is skipped.
#![allow(clippy::unwrap_used)]
#![cfg(target_arch = "x86_64")]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

use base64::Engine as _;
use serde_json::{json, Value};
use support::{stderr, stdout, Workspace};

/// The test image with the real CLI, built once (scripts/claude-image.sh).
fn claude_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/claude-image.sh");
        let out = Command::new("flock")
            .arg("/tmp/berth-claude-image.lock")
            .arg(&script)
            .arg("build")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "scripts/claude-image.sh build failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    })
}

/// The id of the tool call the fake asks for.
const TOOL_ID: &str = "toolu_berth_e2e_01";
const FINAL_ANSWER: &str = "FINAL-ANSWER: the proof is written.";
const PROMPT: &str = "Write the proof file into the workspace.";

/// What the Bash tool runs in the sandbox: the proof, then dumps of what the sandbox can see,
/// into the run's output directory (collected as artifacts) for the test to search.
const TOOL_COMMAND: &str = r#"echo hello-from-claude > /workspace/proof.txt
echo "key=$ANTHROPIC_API_KEY base=$ANTHROPIC_BASE_URL"
env > "$BERTH_OUT/env.txt"
echo "environ-files=$(ls /proc/[0-9]*/environ | wc -l)"
cat /proc/[0-9]*/environ > "$BERTH_OUT/proc-environ.bin" 2>/dev/null
cat /proc/[0-9]*/cmdline > "$BERTH_OUT/proc-cmdline.bin" 2>/dev/null
tar -cf "$BERTH_OUT/files.tar" /home /tmp /etc /workspace 2>/dev/null
echo dumped"#;

/// One request the fake API received.
#[derive(Clone)]
struct Seen {
    method: String,
    /// With its query.
    target: String,
    /// Names in lower case.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl std::fmt::Debug for Seen {
    /// Bodies run to tens of kilobytes (the CLI's system prompt and tools): their start only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body = String::from_utf8_lossy(&self.body);
        let start: String = body.chars().take(300).collect();
        f.debug_struct("Seen")
            .field("method", &self.method)
            .field("target", &self.target)
            .field("headers", &self.headers)
            .field("body_bytes", &self.body.len())
            .field("body_start", &start)
            .finish()
    }
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// What the fake saw and what usage it reported in `/v1/messages` answers.
#[derive(Debug, Default)]
struct FakeState {
    seen: Vec<Seen>,
    messages_answered: u64,
    input_tokens: u64,
    output_tokens: u64,
}

/// A fake Anthropic Messages API on 127.0.0.2 (the broker's upstream). Answers only requests
/// that carry `key` in `x-api-key`, as the real API would.
struct FakeApi {
    port: u16,
    state: Arc<Mutex<FakeState>>,
}

impl FakeApi {
    fn start(key: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.2:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state: Arc<Mutex<FakeState>> = Arc::default();
        let (s, key) = (state.clone(), key.to_string());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (s, key) = (s.clone(), key.clone());
                std::thread::spawn(move || serve(conn, &key, &s));
            }
        });
        Self { port, state }
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }
}

fn serve(conn: TcpStream, key: &str, state: &Mutex<FakeState>) {
    conn.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let Some(req) = read_request(&mut reader) else {
        return;
    };
    state.lock().unwrap().seen.push(req.clone());
    let mut conn = conn;
    if req.header("x-api-key") != Some(key) || req.header("authorization").is_some() {
        return reply_json(
            &mut conn,
            "401 Unauthorized",
            &json!({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}),
        );
    }
    match (req.method.as_str(), req.path()) {
        ("POST", "/v1/messages") => messages(&mut conn, &req.json(), state),
        ("POST", "/v1/messages/count_tokens") => {
            reply_json(&mut conn, "200 OK", &json!({"input_tokens": 42}))
        }
        _ => reply_json(
            &mut conn,
            "404 Not Found",
            &json!({"type": "error", "error": {"type": "not_found_error", "message": "the fake API has no such endpoint"}}),
        ),
    }
}

/// Reads one request: head, then a body by content-length or chunked.
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Seen> {
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.to_ascii_lowercase())
    };
    let mut body = Vec::new();
    if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).ok()?;
            let size = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).ok()?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(n) = get("content-length") {
        body = vec![0; n.parse().ok()?];
        reader.read_exact(&mut body).ok()?;
    }
    Some(Seen {
        method,
        target,
        headers,
        body,
    })
}

fn reply_json(conn: &mut TcpStream, status: &str, body: &Value) {
    let body = body.to_string();
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// Does any message of the request carry the result of our tool call?
fn has_tool_result(req: &Value) -> bool {
    req["messages"].as_array().is_some_and(|messages| {
        messages.iter().any(|m| {
            m["content"].as_array().is_some_and(|blocks| {
                blocks
                    .iter()
                    .any(|b| b["type"] == "tool_result" && b["tool_use_id"] == TOOL_ID)
            })
        })
    })
}

/// `POST /v1/messages`: a tool call first, the final answer once the tool's result is in the
/// conversation; streamed when asked, one JSON message otherwise.
fn messages(conn: &mut TcpStream, req: &Value, state: &Mutex<FakeState>) {
    let model = req["model"].as_str().unwrap_or("claude-fake").to_string();
    let turn = state.lock().unwrap().messages_answered;
    let (block, stop_reason) = if has_tool_result(req) {
        (json!({"type": "text", "text": FINAL_ANSWER}), "end_turn")
    } else {
        (
            json!({"type": "tool_use", "id": TOOL_ID, "name": "Bash",
                   "input": {"command": TOOL_COMMAND, "description": "Write the proof"}}),
            "tool_use",
        )
    };
    // Distinct numbers per answer, so a sum that counts one twice or misses one shows.
    let (input_tokens, output_tokens) = (1000 + 10 * turn, 50 + turn);
    {
        let mut s = state.lock().unwrap();
        s.messages_answered += 1;
        s.input_tokens += input_tokens;
        s.output_tokens += output_tokens;
    }
    let id = format!("msg_berth_e2e_{turn}");
    if req["stream"] != true {
        return reply_json(
            conn,
            "200 OK",
            &json!({"id": id, "type": "message", "role": "assistant", "model": model,
                    "content": [block], "stop_reason": stop_reason, "stop_sequence": null,
                    "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens}}),
        );
    }
    let start_block = match block["type"].as_str() {
        Some("tool_use") => json!({"type": "tool_use", "id": TOOL_ID, "name": "Bash", "input": {}}),
        _ => json!({"type": "text", "text": ""}),
    };
    let delta = match block["type"].as_str() {
        Some("tool_use") => {
            json!({"type": "input_json_delta", "partial_json": block["input"].to_string()})
        }
        _ => json!({"type": "text_delta", "text": FINAL_ANSWER}),
    };
    let events = [
        json!({"type": "message_start", "message": {"id": id, "type": "message", "role": "assistant",
               "model": model, "content": [], "stop_reason": null, "stop_sequence": null,
               "usage": {"input_tokens": input_tokens, "output_tokens": 1}}}),
        json!({"type": "content_block_start", "index": 0, "content_block": start_block}),
        json!({"type": "ping"}),
        json!({"type": "content_block_delta", "index": 0, "delta": delta}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null},
               "usage": {"output_tokens": output_tokens}}),
        json!({"type": "message_stop"}),
    ];
    if write!(
        conn,
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )
    .is_err()
    {
        return;
    }
    // One chunk per event, each flushed: the stream reaches the CLI as it is written.
    for event in events {
        let data = format!(
            "event: {}\ndata: {event}\n\n",
            event["type"].as_str().unwrap()
        );
        if write!(conn, "{:x}\r\n{data}\r\n", data.len()).is_err() || conn.flush().is_err() {
            return;
        }
    }
    let _ = conn.write_all(b"0\r\n\r\n");
}

/// The forms a key could be found in: as is, hex, and base64 (standard and URL-safe) at each of
/// the three alignments it could have in a longer encoded text.
fn encodings(key: &str) -> Vec<String> {
    let mut out = vec![key.to_string(), hex::encode(key), hex::encode_upper(key)];
    for engine in [
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ] {
        for shift in 0..3usize {
            let mut bytes = vec![0u8; shift];
            bytes.extend_from_slice(key.as_bytes());
            let text = engine.encode(&bytes);
            // Characters that the bytes before or after the key also decide are left out.
            let start = if shift == 0 { 0 } else { shift + 1 };
            let end = bytes.len() * 8 / 6;
            out.push(text[start..end].to_string());
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// The forms of the key that `haystack` holds.
fn leaks(haystack: &[u8], forms: &[String]) -> Vec<String> {
    forms
        .iter()
        .filter(|f| contains(haystack, f))
        .cloned()
        .collect()
}

/// The files under `paths` (directories searched recursively) that hold any of `forms`:
/// GNU grep, which reads hundreds of megabytes (a container's export) in a moment.
fn files_with(forms: &[String], paths: &[&Path]) -> Vec<String> {
    let list = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(list.path(), forms.join("\n") + "\n").unwrap();
    let out = Command::new("grep")
        .args(["-r", "-l", "-a", "-F", "-f"])
        .arg(list.path())
        .args(paths)
        .output()
        .unwrap();
    // 0: found, 1: nothing found, anything else: grep failed.
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "grep: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn events(run_dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(run_dir.join("events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `docker ARGS`: what it printed, or why it failed.
fn docker(args: &[&str]) -> Result<Vec<u8>, String> {
    let out = Command::new("docker").args(args).output().unwrap();
    if !out.status.success() {
        return Err(format!(
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(out.stdout)
}

/// A key no one else uses: `sk-ant-test-` and 32 hex digits.
fn random_key() -> String {
    use sha2::Digest as _;
    let seed = format!(
        "{:?} {} {:?}",
        std::time::SystemTime::now(),
        std::process::id(),
        std::thread::current().id()
    );
    let digest = sha2::Sha256::digest(seed.as_bytes());
    format!("sk-ant-test-{}", &hex::encode(digest)[..32])
}

#[test]
fn the_real_claude_cli_runs_a_tool_through_the_broker_and_never_holds_the_key() {
    let image = claude_image();
    let key = random_key();
    let forms = encodings(&key);
    let fake = FakeApi::start(&key);
    let ws = Workspace::new();
    // berth runs as root here, so the sandbox user is 1000: give it the workspace.
    std::fs::set_permissions(
        ws.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let upstream = format!("http://127.0.0.2:{}", fake.port);
    let berth = |args: &[&str]| {
        let mut cmd = ws.berth(args);
        cmd.env("ANTHROPIC_API_KEY", &key)
            .env_remove("CLAUDE_CODE_OAUTH_TOKEN")
            .env("BERTH_ANTHROPIC_UPSTREAM", &upstream);
        cmd.output().unwrap()
    };

    let out = berth(&[
        "run",
        "--profile",
        "claude-code",
        "--image",
        image,
        "--keep",
        "--timeout",
        "180s",
        PROMPT,
    ]);
    let (so, se) = (stdout(&out), stderr(&out));
    let run_dir = ws.last_run();
    let record = ws.last_record();
    let container = record["container_name"].as_str().unwrap_or("").to_string();
    // The kept container, read before it goes: its configuration and its files (berth keeps
    // no engine logs: the shim writes the output to files of the run).
    let views = tempfile::tempdir().unwrap();
    let inspect = docker(&["inspect", &container]);
    let export_tar = views.path().join("container-export.tar");
    let export = docker(&["export", "-o", export_tar.to_str().unwrap(), &container]);
    support::force_remove(&container);
    assert!(out.status.success(), "stdout: {so}\nstderr: {se}");
    std::fs::write(views.path().join("docker-inspect.json"), inspect.unwrap()).unwrap();
    export.unwrap();
    assert!(
        std::fs::metadata(&export_tar).unwrap().len() > 100 << 20,
        "the export holds the image's files"
    );

    // The tool call ran in the sandbox.
    assert_eq!(
        std::fs::read_to_string(ws.path().join("proof.txt")).unwrap(),
        "hello-from-claude\n"
    );

    // The fake API: every request carried the real key in x-api-key (put there by the broker)
    // and nothing in Authorization; the first carried the prompt, a later one the tool's result,
    // which shows what the sandbox held instead of the key.
    let seen = fake.seen();
    let messages: Vec<&Seen> = seen
        .iter()
        .filter(|r| r.method == "POST" && r.path() == "/v1/messages")
        .collect();
    assert!(messages.len() >= 2, "{seen:#?}");
    for r in &seen {
        assert_eq!(r.header("x-api-key"), Some(key.as_str()), "{r:?}");
        assert_eq!(r.header("authorization"), None, "{r:?}");
        let leaked = leaks(&r.body, &forms);
        assert!(leaked.is_empty(), "a request body holds the key: {r:?}");
    }
    assert!(String::from_utf8_lossy(&messages[0].body).contains(PROMPT));
    let tool_result = messages
        .iter()
        .filter_map(|r| {
            r.json()["messages"].as_array()?.iter().find_map(|m| {
                m["content"].as_array()?.iter().find_map(|b| {
                    (b["type"] == "tool_result" && b["tool_use_id"] == TOOL_ID)
                        .then(|| b["content"].to_string())
                })
            })
        })
        .next()
        .expect("a request carries the tool's result");
    assert!(
        tool_result.contains(&format!(
            "key={} base=http://127.0.0.1:41081",
            berth_core::egress::PLACEHOLDER
        )),
        "{tool_result}"
    );
    assert!(tool_result.contains("dumped"), "{tool_result}");

    // berth's parsed agent events: the tool call, its result, the final answer.
    let events = events(&run_dir);
    let agent: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "agent")
        .map(|e| &e["agent"])
        .collect();
    let call = agent
        .iter()
        .find(|a| a["type"] == "tool_call")
        .expect("a tool_call event");
    assert_eq!(call["id"], TOOL_ID);
    assert_eq!(call["name"], "Bash");
    assert_eq!(call["input"]["command"], TOOL_COMMAND);
    let result = agent
        .iter()
        .find(|a| a["type"] == "tool_result")
        .expect("a tool_result event");
    assert_eq!(result["id"], TOOL_ID);
    assert_eq!(result["is_error"], false, "{result}");
    let last = agent.last().unwrap();
    assert_eq!(last["type"], "final_result", "{agent:#?}");
    assert_eq!(last["is_error"], false);
    assert_eq!(last["text"], FINAL_ANSWER);
    assert!(so.contains(FINAL_ANSWER), "{so}");

    // Every API request is an egress decision in events.jsonl, and the usage berth recorded is
    // what the fake reported.
    let (answered, input_tokens, output_tokens) = {
        let s = fake.state.lock().unwrap();
        (s.messages_answered, s.input_tokens, s.output_tokens)
    };
    let egress: Vec<&Value> = events.iter().filter(|e| e["event"] == "egress").collect();
    assert_eq!(egress.len(), seen.len(), "{egress:#?}\n{seen:#?}");
    for e in &egress {
        assert_eq!(e["kind"], "api", "{e}");
        assert_eq!(e["allowed"], true, "{e}");
        assert_eq!(e["rule"], "broker anthropic (ANTHROPIC_API_KEY)", "{e}");
        assert_eq!(e["host"], "127.0.0.2", "{e}");
        assert_eq!(e["port"], fake.port, "{e}");
    }
    let api: Vec<&&Value> = egress
        .iter()
        .filter(|e| e["path"] == "/v1/messages")
        .collect();
    assert_eq!(api.len() as u64, answered);
    assert!(api
        .iter()
        .all(|e| e["status"] == 200 && e["method"] == "POST"));
    let sum = |field: &str| -> u64 { api.iter().map(|e| e[field].as_u64().unwrap()).sum() };
    assert_eq!(sum("input_tokens"), input_tokens);
    assert_eq!(sum("output_tokens"), output_tokens);
    assert_eq!(record["egress"]["mode"], "policy");
    assert_eq!(record["egress"]["api_requests"], seen.len() as u64);
    assert_eq!(record["egress"]["input_tokens"], input_tokens);
    assert_eq!(record["egress"]["output_tokens"], output_tokens);
    // The profile's environment keeps the CLI from calling anywhere else.
    assert_eq!(record["egress"]["denied"], 0, "{}", record["egress"]);
    // The CLI's own account agrees.
    let usage = agent
        .iter()
        .rfind(|a| a["type"] == "usage")
        .expect("a usage event");
    assert_eq!(usage["input_tokens"], input_tokens, "{usage}");
    assert_eq!(usage["output_tokens"], output_tokens, "{usage}");
    let id = record["id"].as_str().unwrap().to_string();
    let show = stdout(&ws.berth(&["show", &id]).output().unwrap());
    assert!(
        show.contains(&format!(
            "api usage: {} requests, {input_tokens} input tokens, {output_tokens} output tokens",
            seen.len()
        )),
        "{show}"
    );
    assert!(show.contains("(brokered: ANTHROPIC_API_KEY)"), "{show}");

    // What the sandbox saw: the dumps its tool made read the CLI's own environment (the
    // placeholder is there), and hold no form of the key.
    let out_dir = run_dir.join("artifacts/berth/out");
    let environ = std::fs::read(out_dir.join("proc-environ.bin")).unwrap();
    let placeholder = format!("ANTHROPIC_API_KEY={}", berth_core::egress::PLACEHOLDER);
    assert!(
        contains(&environ, &placeholder),
        "the dump did not read the CLI's environment"
    );
    let env_txt = std::fs::read_to_string(out_dir.join("env.txt")).unwrap();
    assert!(env_txt.contains(&placeholder), "{env_txt}");
    // The shim, the CLI and the tool's shell at least.
    let environ_files: usize = tool_result
        .split("environ-files=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(environ_files >= 3, "{tool_result}");
    let files_tar = std::fs::read(out_dir.join("files.tar")).unwrap();
    assert!(
        contains(&files_tar, "hello-from-claude"),
        "the file dump is empty"
    );

    // No form of the key anywhere: berth's outputs, the container as the engine holds it, and
    // every file under the workspace and berth's data directory (run records, events, logs,
    // artifacts with the sandbox's dumps, the agent's sessions directory).
    let mut hits = Vec::new();
    for (what, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        if !leaks(bytes, &forms).is_empty() {
            hits.push(what.to_string());
        }
    }
    if !leaks(show.as_bytes(), &forms).is_empty() {
        hits.push("berth show".into());
    }
    let files = files_with(&forms, &[views.path(), ws.path(), ws.data_path()]);
    hits.extend(files);
    // The search did look at the sandbox's dumps (a file of them holds the placeholder).
    let dumps = files_with(
        &[berth_core::egress::PLACEHOLDER.to_string()],
        &[ws.data_path()],
    );
    assert!(
        dumps.iter().any(|f| f.ends_with("proc-environ.bin")),
        "{dumps:#?}"
    );
    assert!(hits.is_empty(), "the key was found in: {hits:#?}");

    // A second run continues the session from the sessions directory: the CLI finds its
    // conversation and its config (CLAUDE_CONFIG_DIR), and says nothing about a lost config.
    let before = fake.seen().len();
    let out = berth(&[
        "run",
        "--profile",
        "claude-code",
        "--image",
        image,
        "--timeout",
        "180s",
        "--continue",
        "And now?",
    ]);
    let (so, se) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "stdout: {so}\nstderr: {se}");
    assert!(
        !se.contains("configuration file not found"),
        "the CLI lost its config between runs: {se}"
    );
    let seen = fake.seen();
    let resumed = seen[before..]
        .iter()
        .find(|r| r.path() == "/v1/messages")
        .expect("the continued run called the API");
    let body = String::from_utf8_lossy(&resumed.body);
    assert!(
        body.contains(PROMPT) && body.contains("And now?"),
        "the continued run does not carry the first run's conversation"
    );
    assert!(so.contains(FINAL_ANSWER), "{so}");
    let sessions = ws.data_path().join("berth/sessions/claude");
    assert!(sessions.join(".claude.json").is_file());
    for r in &seen[before..] {
        assert_eq!(r.header("x-api-key"), Some(key.as_str()), "{r:?}");
    }
}

#[test]
fn every_form_of_the_key_is_found_wherever_it_sits_in_an_encoded_text() {
    let key = random_key();
    let forms = encodings(&key);
    for engine in [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::URL_SAFE,
    ] {
        for before in ["", "a", "ab", "abc", "Authorization: Basic "] {
            for after in ["", "x", "xy", "\n"] {
                let text = engine.encode(format!("{before}{key}{after}"));
                assert!(
                    !leaks(text.as_bytes(), &forms).is_empty(),
                    "{before:?} {after:?}: {text}"
                );
            }
        }
    }
    for text in [
        format!("..{key}.."),
        format!("=={}==", hex::encode(&key)),
        hex::encode_upper(&key),
    ] {
        assert!(!leaks(text.as_bytes(), &forms).is_empty(), "{text}");
    }
    assert!(leaks(b"sk-ant-test-", &forms).is_empty());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("clean"), "nothing here").unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(
        dir.path().join("sub/dirty"),
        base64::engine::general_purpose::STANDARD.encode(format!("ab{key}")),
    )
    .unwrap();
    let found = files_with(&forms, &[dir.path()]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].ends_with("sub/dirty"), "{found:?}");
}
