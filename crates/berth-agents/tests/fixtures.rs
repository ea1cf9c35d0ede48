//! Every transcript recorded from the real CLIs (`tests/data/`, copied from
//! `shared/fixtures/transcripts/`, see `tests/data/SOURCES.md`) parses without losing a line,
//! in any chunking, and its final result is recognised.
//!
//! "No line lost" means: every non-empty input line yields at least one event; a line whose
//! type berth does not map yields exactly one `Raw` holding the whole line; and the parser
//! counts as many lines as the file has.
//!
//! `cargo test -p berth-agents --test fixtures -- --nocapture` prints a table of the results.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::fs;
use std::path::{Path, PathBuf};

use berth_agents::{parse_all, render, AgentEvent, AgentOutcome, AgentParser, OutputFormat};
use serde_json::Value;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// The originals, when this checkout sits next to them.
fn shared_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/transcripts")
}

const FORMATS: [(&str, OutputFormat); 2] = [
    ("claude", OutputFormat::ClaudeStreamJson),
    ("codex", OutputFormat::CodexJsonl),
];

/// What SOURCES.md says about each file: its line count and how the run ended.
struct Expected {
    file: &'static str,
    lines: u64,
    is_error: bool,
    /// The start of the outcome's message (the agent's error text, or its final answer);
    /// `None`: there is no message.
    message: Option<&'static str>,
    /// How many final results the stream holds.
    final_results: usize,
    /// Checks of what SOURCES.md says the file contains.
    check: fn(&[AgentEvent], &AgentOutcome),
}

const EXPECTED: &[Expected] = &[
    // Claude Code stream-json.
    Expected {
        file: "claude/nightgauge__nightgauge__claude_stream_subagent_multi_result.jsonl",
        lines: 56,
        is_error: false,
        message: Some("The subagent completed successfully."),
        final_results: 2,
        check: |events, outcome| {
            assert_eq!(count(events, "session_started"), 2);
            assert_eq!(tool_names(events), ["ToolSearch", "Agent", "Bash"]);
            assert_eq!(raws(events, "system/thinking_tokens"), 30);
            assert_eq!(count(events, "reasoning"), 6);
            assert!(events.iter().any(
                |e| matches!(e, AgentEvent::ToolResult { content, .. } if content == "[tool_reference]")
            ));
            // total_cost_usd is cumulative: the last one is the session's.
            assert_eq!(outcome.cost_usd, Some(0.0335836));
            assert_eq!(outcome.reason.as_deref(), Some("completed"));
        },
    },
    Expected {
        file: "claude/foksa__open-claude-agent-sdk__plan-mode-ls.jsonl",
        lines: 6,
        is_error: false,
        message: Some("The current directory contains a TypeScript/Bun project"),
        final_results: 1,
        check: |events, _| {
            assert!(
                matches!(&events[0], AgentEvent::SessionStarted { tools, .. } if tools.len() == 40)
            );
            assert!(events.contains(&AgentEvent::ToolCall {
                id: Some("toolu_01Xftyq76CdLVCq3jXsq7b2n".into()),
                name: "Bash".into(),
                input: serde_json::json!({"command": "ls -la", "description": "List files in current directory"}),
            }));
            assert_eq!(count(events, "tool_result"), 1);
            assert_eq!(count(events, "assistant_text"), 2);
        },
    },
    Expected {
        file: "claude/foksa__open-claude-agent-sdk__streaming-haiku.jsonl",
        lines: 26,
        is_error: false,
        message: Some("Here's a haiku about coding:"),
        final_results: 1,
        check: |events, _| {
            // The deltas are kept raw; the text is reported once, from the assistant line.
            assert_eq!(raws(events, "stream_event/"), 23);
            assert_eq!(raws(events, "stream_event/content_block_delta"), 18);
            assert_eq!(count(events, "assistant_text"), 1);
        },
    },
    Expected {
        file: "claude/flieber-inc__devcake__claude_max_turns.jsonl",
        lines: 38,
        is_error: true,
        message: Some("Reached maximum number of turns (15)"),
        final_results: 1,
        check: |events, outcome| {
            assert_eq!(raws(events, "system/hook_"), 6);
            assert_eq!(tool_names(events), vec!["Bash"; 15]);
            assert_eq!(count(events, "tool_result"), 15);
            assert_eq!(outcome.reason.as_deref(), Some("max_turns"));
        },
    },
    Expected {
        file: "claude/flieber-inc__devcake__claude_aborted_streaming.jsonl",
        lines: 18,
        is_error: true,
        message: Some("[ede_diagnostic] result_type=user"),
        final_results: 1,
        check: |events, outcome| {
            assert_eq!(raws(events, "system/api_retry"), 9);
            assert!(events.contains(&AgentEvent::UserText {
                text: "[Request interrupted by user]".into()
            }));
            assert_eq!(outcome.reason.as_deref(), Some("aborted_streaming"));
        },
    },
    Expected {
        file: "claude/flieber-inc__devcake__claude_api_error_400.jsonl",
        lines: 9,
        is_error: true,
        message: Some("API Error: 400 context length exceeded"),
        final_results: 1,
        check: |events, outcome| {
            // subtype "success" but is_error: failed.
            assert!(events.contains(&AgentEvent::Error {
                message: "API Error: 400 context length exceeded".into()
            }));
            assert_eq!(outcome.reason.as_deref(), Some("api_error"));
        },
    },
    Expected {
        file: "claude/flieber-inc__devcake__live_claude_raw_mission.jsonl",
        lines: 49,
        is_error: false,
        message: Some("Done. I added the `farewell(name)` function"),
        final_results: 1,
        check: |events, _| {
            assert_eq!(tool_names(events), ["Read", "Edit", "Bash", "Write"]);
            assert_eq!(count(events, "tool_result"), 4);
            assert_eq!(count(events, "reasoning"), 5);
            assert_eq!(raws(events, "system/thinking_tokens"), 33);
        },
    },
    Expected {
        file: "claude/sanghyeonhd__devorch__live-simple.jsonl",
        lines: 5,
        is_error: false,
        message: Some("ok"),
        final_results: 1,
        check: |events, _| {
            assert!(
                matches!(&events[0], AgentEvent::Raw { source_type: Some(t), .. } if t == "rate_limit_event")
            );
            assert!(
                matches!(&events[1], AgentEvent::SessionStarted { tools, .. } if tools.len() == 3)
            );
            assert_eq!(raws(events, "system/post_turn_summary"), 1);
        },
    },
    Expected {
        file: "claude/namastexlabs__automagik__manual_test_output.jsonl",
        lines: 6,
        is_error: false,
        message: Some("The `cli_executor.py` file manages"),
        final_results: 1,
        check: |events, outcome| {
            assert!(
                matches!(&events[0], AgentEvent::SessionStarted { tools, .. } if tools.len() == 88)
            );
            assert!(events.iter().any(
                |e| matches!(e, AgentEvent::ToolResult { content, .. } if content.len() > 80_000 && content.contains('→'))
            ));
            assert_eq!(outcome.cost_usd, Some(1.4090853499999998));
        },
    },
    Expected {
        file: "claude/HelgeSverre__claude-code-sdk-php__error_recovery.jsonl",
        lines: 18,
        is_error: false,
        message: Some("✓ Successfully demonstrated the process"),
        final_results: 1,
        check: |events, _| {
            assert_eq!(
                tool_names(events),
                ["Read", "Bash", "Read", "Write", "Read"]
            );
            let errors: Vec<&str> = events
                .iter()
                .filter_map(|e| match e {
                    AgentEvent::ToolResult {
                        is_error: true,
                        content,
                        ..
                    } => Some(content.as_str()),
                    _ => None,
                })
                .collect();
            assert_eq!(
                errors,
                [
                    "Claude requested permissions to use Bash, but you haven't granted it yet.",
                    "File does not exist."
                ]
            );
            assert!(events.iter().any(|e| matches!(
                e,
                AgentEvent::FinalResult {
                    turns: Some(16),
                    duration_ms: Some(31816),
                    ..
                }
            )));
        },
    },
    // Codex exec --json.
    Expected {
        file: "codex/jaitd__fieldguide.nvim__codex-exec.jsonl",
        lines: 16,
        is_error: false,
        message: Some("1. Ran `cat init.lua`"),
        final_results: 1,
        check: |events, _| {
            assert_eq!(count(events, "warning"), 2);
            assert_eq!(count(events, "assistant_text"), 3);
            assert_eq!(
                commands(events),
                [
                    ("in_progress", None),
                    ("completed", Some(0)),
                    ("in_progress", None),
                    ("completed", Some(0))
                ]
            );
            assert!(events.contains(&AgentEvent::FileChange {
                path: "/lab/cfg/init.lua".into(),
                kind: Some("update".into()),
                status: Some("completed".into())
            }));
            assert_eq!(tool_names(events), ["fieldguide.nvim_state"]);
            assert!(events.iter().any(|e| matches!(e, AgentEvent::ToolResult { id: Some(id), is_error: false, content } if id == "item_7" && content.contains("\"version\": \"0.12.4\""))));
            assert!(events.iter().any(|e| matches!(
                e,
                AgentEvent::Usage {
                    reasoning_tokens: Some(191),
                    cache_write_tokens: Some(0),
                    ..
                }
            )));
        },
    },
    Expected {
        file: "codex/jnarowski__agentcmd__stream-output-2.jsonl",
        lines: 7,
        is_error: false,
        message: Some("Files here: `stream-output-1.jsonl`"),
        final_results: 1,
        check: |events, _| {
            assert!(events.contains(&AgentEvent::Reasoning {
                text: "**Preparing to list files with bash shell**".into()
            }));
            assert_eq!(
                commands(events),
                [("in_progress", None), ("completed", Some(0))]
            );
            assert!(events.iter().any(|e| matches!(
                e,
                AgentEvent::Usage {
                    input_tokens: Some(6040),
                    cache_read_tokens: Some(4992),
                    output_tokens: Some(129),
                    cache_write_tokens: None,
                    reasoning_tokens: None,
                    ..
                }
            )));
        },
    },
    Expected {
        file: "codex/jnarowski__agentcmd__stream-output-3.jsonl",
        lines: 6,
        is_error: false,
        message: Some("Created `hello.txt`"),
        final_results: 1,
        check: |events, _| {
            assert!(events.contains(&AgentEvent::FileChange {
                path: "/private/tmp/codex-research-test/hello.txt".into(),
                kind: Some("add".into()),
                status: Some("completed".into())
            }));
        },
    },
    Expected {
        file: "codex/GuhyupLee__waifu-agent__codex-exec.jsonl",
        lines: 8,
        is_error: false,
        message: Some("done"),
        final_results: 1,
        check: |events, _| {
            assert_eq!(count(events, "warning"), 1);
            assert!(events.iter().any(|e| matches!(e, AgentEvent::CommandExecution { exit_code: Some(0), output: Some(out), command, .. } if out == "hello\r\n" && command.contains("powershell.exe"))));
        },
    },
    Expected {
        file: "codex/f42gh__orch__codex_exec.jsonl",
        lines: 7,
        is_error: false,
        message: Some("README.md, calc.py"),
        final_results: 1,
        check: |events, _| {
            assert!(events.iter().any(|e| matches!(e, AgentEvent::CommandExecution { exit_code: Some(0), output: Some(out), command, .. } if out.len() > 800 && command.starts_with("/bin/zsh -lc \"rg --files -g '\"'!*'\"'"))));
            assert!(events.iter().any(|e| matches!(
                e,
                AgentEvent::Usage {
                    reasoning_tokens: Some(43),
                    ..
                }
            )));
        },
    },
    Expected {
        file: "codex/nightgauge__nightgauge__codex_stream_real_capture.jsonl",
        lines: 9,
        is_error: false,
        message: Some("Done."),
        final_results: 1,
        check: |events, _| {
            assert_eq!(commands(events).len(), 4);
        },
    },
    Expected {
        file: "codex/sanghyeonhd__devorch__live-usage-limit.jsonl",
        lines: 5,
        is_error: true,
        message: Some("You've hit your usage limit."),
        final_results: 1,
        check: |events, _| {
            assert_eq!(count(events, "warning"), 1);
            assert_eq!(count(events, "error"), 1);
            assert_eq!(count(events, "usage"), 0);
        },
    },
    Expected {
        file: "codex/flieber-inc__devcake__codex_http_401_retrying.jsonl",
        lines: 10,
        is_error: true,
        message: Some("unexpected status 401 Unauthorized: stub injected HTTP 401"),
        final_results: 1,
        check: |events, _| {
            assert_eq!(count(events, "warning"), 1);
            let errors: Vec<&str> = events
                .iter()
                .filter_map(|e| match e {
                    AgentEvent::Error { message } => Some(message.as_str()),
                    _ => None,
                })
                .collect();
            assert_eq!(errors.len(), 6);
            assert!(errors[..5]
                .iter()
                .all(|m| m.starts_with("Reconnecting... ")));
        },
    },
    Expected {
        file: "codex/flieber-inc__devcake__codex_tool_only.jsonl",
        lines: 6,
        is_error: false,
        message: None, // no agent_message at all
        final_results: 1,
        check: |events, _| {
            assert_eq!(count(events, "assistant_text"), 0);
            assert!(events.iter().any(|e| matches!(e, AgentEvent::CommandExecution { exit_code: Some(127), status: Some(s), .. } if s == "failed")));
        },
    },
    Expected {
        file: "codex/flieber-inc__devcake__live_codex_proxy_conc16.8.jsonl",
        lines: 5,
        is_error: false,
        message: Some("\n\n<details>"),
        final_results: 1,
        check: |events, _| {
            assert!(events
                .iter()
                .any(|e| matches!(e, AgentEvent::AssistantText { text } if text.len() == 38_585)));
        },
    },
];

fn count(events: &[AgentEvent], kind: &str) -> usize {
    events.iter().filter(|e| e.kind() == kind).count()
}

/// Raw events whose source type starts with `prefix`.
fn raws(events: &[AgentEvent], prefix: &str) -> usize {
    events
        .iter()
        .filter(
            |e| matches!(e, AgentEvent::Raw { source_type: Some(t), .. } if t.starts_with(prefix)),
        )
        .count()
}

fn tool_names(events: &[AgentEvent]) -> Vec<&str> {
    events
        .iter()
        .filter_map(|e| match e {
            AgentEvent::ToolCall { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect()
}

fn commands(events: &[AgentEvent]) -> Vec<(&str, Option<i64>)> {
    events
        .iter()
        .filter_map(|e| match e {
            AgentEvent::CommandExecution {
                status, exit_code, ..
            } => Some((status.as_deref().unwrap_or(""), *exit_code)),
            _ => None,
        })
        .collect()
}

/// A small deterministic generator (no rand crate): Knuth's MMIX LCG.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % bound as u64) as usize
    }
}

fn parse_chunked(
    format: OutputFormat,
    bytes: &[u8],
    seed: u64,
    max_chunk: usize,
) -> (Vec<AgentEvent>, Option<AgentOutcome>, u64) {
    let mut rng = Lcg(seed);
    let mut parser = AgentParser::new(format);
    let mut events = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = (1 + rng.next(max_chunk)).min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        events.extend(parser.push(chunk));
        rest = tail;
    }
    events.extend(parser.finish());
    (events, parser.outcome(), parser.lines())
}

/// The types the parsers map; lines of any other type must come out as one whole `Raw`.
fn is_mapped(format: OutputFormat, line: &Value) -> bool {
    let kind = line.get("type").and_then(Value::as_str).unwrap_or("");
    let sub = line.get("subtype").and_then(Value::as_str);
    match format {
        OutputFormat::ClaudeStreamJson => {
            matches!(kind, "assistant" | "user" | "result")
                || (kind == "system" && sub == Some("init"))
        }
        _ => matches!(
            kind,
            "thread.started"
                | "turn.completed"
                | "turn.failed"
                | "error"
                | "item.started"
                | "item.completed"
        ),
    }
}

struct Row {
    file: String,
    lines: u64,
    events: usize,
    raw: usize,
    outcome: String,
}

/// Every check on one file; returns its row of the table.
fn check_file(dir: &str, format: OutputFormat, path: &Path) -> Row {
    let name = format!("{dir}/{}", path.file_name().unwrap().to_string_lossy());
    let bytes = fs::read(path).unwrap();

    // Line by line: every non-empty line yields events; unmapped ones a whole Raw.
    let mut parser = AgentParser::new(format);
    let mut lines = 0;
    let mut by_line = Vec::new();
    for line in bytes.split(|b| *b == b'\n') {
        let events = parser.parse_line(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            assert!(events.is_empty(), "{name}: events for an empty line");
            continue;
        }
        lines += 1;
        assert!(!events.is_empty(), "{name}: line {lines} lost");
        let json: Value = serde_json::from_slice(line)
            .unwrap_or_else(|e| panic!("{name}: line {lines} is not JSON: {e}"));
        assert!(
            !events.iter().any(|e| matches!(e, AgentEvent::Text { .. })),
            "{name}: line {lines} is JSON but came out as text"
        );
        if !is_mapped(format, &json) {
            assert!(
                matches!(&events[..], [AgentEvent::Raw { json: raw, .. }] if *raw == json),
                "{name}: line {lines} of an unmapped type is not kept whole: {events:?}"
            );
        }
        by_line.extend(events);
    }
    assert_eq!(parser.lines(), lines);

    // One shot, and in chunks of random sizes: the same events and outcome.
    let (events, outcome) = parse_all(format, &bytes);
    assert_eq!(
        events, by_line,
        "{name}: whole-input parse differs from line by line"
    );
    for (seed, max_chunk) in [(1, 4096), (2, 4096), (3, 64), (4, 7), (5, 1)] {
        let (chunked, chunked_outcome, chunked_lines) =
            parse_chunked(format, &bytes, seed, max_chunk);
        assert_eq!(
            chunked_lines, lines,
            "{name}: lines counted in chunks (seed {seed})"
        );
        assert!(
            chunked == events,
            "{name}: chunks of 1..={max_chunk} bytes (seed {seed}) change the events"
        );
        assert_eq!(
            chunked_outcome, outcome,
            "{name}: chunks change the outcome (seed {seed})"
        );
    }

    // The final result is recognised.
    let outcome = outcome.unwrap_or_else(|| panic!("{name}: no outcome"));
    let final_results = count(&events, "final_result");
    assert!(final_results >= 1, "{name}: no final result");
    let last_final = events
        .iter()
        .rev()
        .find(|e| e.kind() == "final_result")
        .unwrap();
    assert!(
        matches!(last_final, AgentEvent::FinalResult { is_error, .. } if *is_error == outcome.is_error)
    );
    if outcome.is_error {
        assert!(
            outcome.message.as_deref().is_some_and(|m| !m.is_empty()),
            "{name}: a failure without its error text"
        );
    }

    match EXPECTED.iter().find(|e| e.file == name) {
        Some(expected) => {
            assert_eq!(lines, expected.lines, "{name}: line count");
            assert_eq!(outcome.is_error, expected.is_error, "{name}: {outcome:?}");
            match expected.message {
                Some(start) => assert!(
                    outcome
                        .message
                        .as_deref()
                        .is_some_and(|m| m.starts_with(start)),
                    "{name}: message {:?} does not start with {start:?}",
                    outcome.message
                ),
                None => assert_eq!(outcome.message, None, "{name}"),
            }
            assert_eq!(
                final_results, expected.final_results,
                "{name}: final results"
            );
            (expected.check)(&events, &outcome);
        }
        None => println!("note: {name} has no entry in EXPECTED; checked generically"),
    }

    // Every event survives events.jsonl and renders.
    for event in &events {
        let json = serde_json::to_string(event).unwrap();
        assert!(!json.contains('\n'));
        assert_eq!(
            &serde_json::from_str::<AgentEvent>(&json).unwrap(),
            event,
            "{name}: {json}"
        );
        for color in [false, true] {
            if let Some(shown) = render(event, color) {
                let plain_escapes = shown.matches('\x1b').count();
                if !color {
                    assert_eq!(plain_escapes, 0, "{name}: escape in {shown:?}");
                }
                if !matches!(event, AgentEvent::AssistantText { .. }) {
                    assert!(!shown.contains('\n'), "{name}: {shown:?} is not one line");
                }
            }
        }
    }

    let outcome_text = format!(
        "{}{}",
        if outcome.is_error {
            "failed"
        } else {
            "succeeded"
        },
        match (&outcome.reason, outcome.is_error) {
            (Some(r), true) => format!(" ({r})"),
            _ => String::new(),
        }
    ) + &match (&outcome.message, outcome.is_error) {
        (Some(m), true) => format!(": {}", m.chars().take(60).collect::<String>()),
        _ => String::new(),
    } + &outcome
        .cost_usd
        .map(|c| format!(", ${c:.4}"))
        .unwrap_or_default();
    Row {
        file: name,
        lines,
        events: events.len(),
        raw: count(&events, "raw"),
        outcome: outcome_text,
    }
}

fn check_dir(root: &Path) -> Vec<Row> {
    let mut rows = Vec::new();
    for (dir, format) in FORMATS {
        let mut paths: Vec<PathBuf> = fs::read_dir(root.join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        paths.sort();
        assert!(
            !paths.is_empty(),
            "no transcripts in {}",
            root.join(dir).display()
        );
        for path in paths {
            rows.push(check_file(dir, format, &path));
        }
    }
    rows
}

#[test]
fn every_recorded_transcript_parses_without_losing_a_line() {
    let rows = check_dir(&data_dir());
    for expected in EXPECTED {
        assert!(
            rows.iter().any(|r| r.file == expected.file),
            "{} is expected but missing from tests/data",
            expected.file
        );
    }
    println!("| file | lines | events | raw | outcome |\n|---|---:|---:|---:|---|");
    for row in &rows {
        println!(
            "| {} | {} | {} | {} | {} |",
            row.file, row.lines, row.events, row.raw, row.outcome
        );
    }
}

#[test]
fn the_shared_originals_parse_too_and_match_the_copies() {
    let shared = shared_dir();
    if !shared.is_dir() {
        println!(
            "note: {} is not there; only the copies were checked",
            shared.display()
        );
        return;
    }
    check_dir(&shared);
    for (dir, _) in FORMATS {
        let names = |root: &Path| -> Vec<String> {
            let mut names: Vec<String> = fs::read_dir(root.join(dir))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        assert_eq!(
            names(&shared),
            names(&data_dir()),
            "tests/data/{dir} is not a copy of the shared fixtures"
        );
        for name in names(&shared) {
            assert_eq!(
                fs::read(shared.join(dir).join(&name)).unwrap(),
                fs::read(data_dir().join(dir).join(&name)).unwrap(),
                "tests/data/{dir}/{name} differs from the shared fixture"
            );
        }
    }
}

#[test]
fn transcripts_with_stderr_mixed_in_lose_nothing() {
    // A real transcript with stderr lines, a cut-off line, CRLF and blank lines woven in.
    for (dir, format) in FORMATS {
        let path = data_dir().join(dir);
        let first = fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .min()
            .unwrap();
        let clean = fs::read_to_string(&first).unwrap();
        let (clean_events, clean_outcome) = parse_all(format, clean.as_bytes());
        let mut noisy = String::new();
        let mut extra = 0;
        for (i, line) in clean.lines().enumerate() {
            if i % 3 == 0 {
                noisy.push_str("npm WARN deprecated something@1.0.0\r\n\n");
                extra += 1;
            }
            noisy.push_str(line);
            noisy.push_str(if i % 2 == 0 { "\r\n" } else { "\n" });
        }
        noisy.push_str("{\"type\":\"assistant\",\"message\":{\"content\":[{\"ty");
        extra += 1;
        let (events, outcome) = parse_all(format, noisy.as_bytes());
        let texts = count(&events, "text");
        assert_eq!(texts, extra);
        let without_text: Vec<AgentEvent> =
            events.into_iter().filter(|e| e.kind() != "text").collect();
        assert_eq!(without_text, clean_events);
        assert_eq!(outcome, clean_outcome);
    }
}
