//! Showing agent events on a terminal.

use serde_json::Value;

use crate::event::AgentEvent;

const BOLD: &str = "1";
const DIM: &str = "2";
const DIM_ITALIC: &str = "2;3";
const RED: &str = "31";
const BOLD_RED: &str = "1;31";
const BOLD_GREEN: &str = "1;32";
const GREEN: &str = "32";
const YELLOW: &str = "33";
const BOLD_CYAN: &str = "1;36";

/// Longest assistant text shown, in lines and characters.
const TEXT_LINES: usize = 40;
const TEXT_CHARS: usize = 4000;
/// Longest one-line summary (of a tool call's input, a result, a message).
const SUMMARY_CHARS: usize = 160;
/// Longest line of plain text.
const LINE_CHARS: usize = 2000;

/// How an event reads on a terminal, or `None` for bookkeeping not worth showing (hook runs,
/// token counters, partial-message deltas, ...).
///
/// Everything but assistant text is one line: a tool call is `● Name(summary of its input)`,
/// its result `  ⎿ first line (+N lines)`, a command `✓ $ cmd · exit 0 · 3 lines`, the final
/// result `✓ done · 4 turns · 14.5s · $1.4091` (or `✗ failed (max_turns): ...`). Assistant
/// text keeps its lines, up to 40. Control characters in the agent's text (escape sequences
/// included) are replaced, so the agent cannot drive the terminal. `color` adds ANSI colours.
/// The result has no trailing newline.
pub fn render(event: &AgentEvent, color: bool) -> Option<String> {
    let paint = |code: &str, s: &str| -> String {
        if color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_owned()
        }
    };
    Some(match event {
        AgentEvent::SessionStarted {
            session_id,
            model,
            cwd,
            version,
            tools,
        } => {
            let mut parts = vec!["● session started".to_owned()];
            parts.extend(model.as_deref().map(|m| one_line(m, 80)));
            parts.extend(version.as_deref().map(|v| format!("v{}", one_line(v, 40))));
            if !tools.is_empty() {
                parts.push(format!("{} tools", tools.len()));
            }
            parts.extend(cwd.as_deref().map(|c| one_line(c, 120)));
            parts.extend(
                session_id
                    .as_deref()
                    .map(|s| format!("id {}", one_line(s, 80))),
            );
            paint(DIM, &parts.join(" · "))
        }
        AgentEvent::AssistantText { text } => long_text(text),
        AgentEvent::UserText { text } => {
            paint(DIM, &format!("› {}", one_line(text, SUMMARY_CHARS)))
        }
        AgentEvent::Reasoning { text } => {
            paint(DIM_ITALIC, &format!("∴ {}", one_line(text, SUMMARY_CHARS)))
        }
        AgentEvent::ToolCall { name, input, .. } => format!(
            "● {}({})",
            paint(BOLD_CYAN, &one_line(name, 80)),
            input_summary(input)
        ),
        AgentEvent::ToolResult {
            is_error, content, ..
        } => {
            if *is_error {
                paint(RED, &format!("  ⎿ error: {}", lines_summary(content)))
            } else {
                paint(DIM, &format!("  ⎿ {}", lines_summary(content)))
            }
        }
        AgentEvent::CommandExecution {
            command,
            status,
            exit_code,
            output,
            ..
        } => {
            let command = format!("$ {}", one_line(&unwrap_shell(command), SUMMARY_CHARS));
            let done = exit_code.is_some()
                || matches!(status.as_deref(), Some("completed" | "failed" | "declined"));
            if !done {
                return Some(paint(DIM, &format!("▸ {command}")));
            }
            let ok = *exit_code == Some(0) && status.as_deref() != Some("failed");
            let mut line = format!(
                "{} {command}",
                if ok {
                    paint(GREEN, "✓")
                } else {
                    paint(RED, "✗")
                }
            );
            match exit_code {
                Some(code) => line.push_str(&format!(" · exit {code}")),
                None => line.push_str(&format!(
                    " · {}",
                    one_line(status.as_deref().unwrap_or("?"), 40)
                )),
            }
            let output = output.as_deref().unwrap_or("");
            let lines = output.lines().filter(|l| !l.trim().is_empty()).count();
            if ok {
                if lines > 0 {
                    line.push_str(&paint(DIM, &format!(" · {}", plural(lines, "line"))));
                }
            } else if let Some(last) = output.lines().rev().find(|l| !l.trim().is_empty()) {
                // The end of a failing command's output usually says why.
                line.push_str(&paint(
                    RED,
                    &format!(" · {}", one_line(last, SUMMARY_CHARS)),
                ));
            }
            line
        }
        AgentEvent::FileChange { path, kind, status } => {
            let failed = status.as_deref() == Some("failed");
            format!(
                "{} {} {}",
                if failed {
                    paint(RED, "✗")
                } else {
                    paint(YELLOW, "✎")
                },
                one_line(kind.as_deref().unwrap_or("change"), 20),
                paint(BOLD, &one_line(path, SUMMARY_CHARS))
            )
        }
        AgentEvent::Usage {
            input_tokens,
            output_tokens,
            cache_read_tokens,
            reasoning_tokens,
            ..
        } => {
            let parts: Vec<String> = [
                (input_tokens, "in"),
                (output_tokens, "out"),
                (cache_read_tokens, "cached"),
                (reasoning_tokens, "reasoning"),
            ]
            .into_iter()
            .filter_map(|(n, what)| {
                n.filter(|n| *n > 0)
                    .map(|n| format!("{} {what}", thousands(n)))
            })
            .collect();
            if parts.is_empty() {
                return None;
            }
            paint(DIM, &format!("tokens: {}", parts.join(" · ")))
        }
        AgentEvent::FinalResult {
            is_error,
            error,
            text,
            reason,
            cost_usd,
            duration_ms,
            turns,
        } => {
            let mut details = String::new();
            if let Some(turns) = turns {
                details.push_str(&format!(" · {}", plural(*turns as usize, "turn")));
            }
            if let Some(ms) = duration_ms {
                details.push_str(&format!(" · {}", duration(*ms)));
            }
            if let Some(cost) = cost_usd {
                details.push_str(&format!(" · ${cost:.4}"));
            }
            if *is_error {
                let reason = reason
                    .as_deref()
                    .filter(|r| !matches!(*r, "success" | "completed"))
                    .map(|r| format!(" ({})", one_line(r, 40)))
                    .unwrap_or_default();
                let message = error.as_deref().or(text.as_deref()).unwrap_or("");
                let message = if message.is_empty() {
                    String::new()
                } else {
                    format!(": {}", one_line(message, 300))
                };
                format!(
                    "{}{}",
                    paint(BOLD_RED, &format!("✗ failed{reason}{message}")),
                    paint(DIM, &details)
                )
            } else {
                format!("{}{}", paint(BOLD_GREEN, "✓ done"), paint(DIM, &details))
            }
        }
        AgentEvent::Error { message } => {
            if message.starts_with("Reconnecting") {
                paint(YELLOW, &format!("! {}", one_line(message, 300)))
            } else {
                paint(RED, &format!("✗ error: {}", one_line(message, 300)))
            }
        }
        AgentEvent::Warning { message } => paint(YELLOW, &format!("! {}", one_line(message, 300))),
        AgentEvent::Raw { source_type, json } => return raw(source_type.as_deref(), json, &paint),
        AgentEvent::Text { text } => truncate(&clean(text).replace('\n', " "), LINE_CHARS),
    })
}

/// Raw events berth knows and shows; the quiet ones; and the unknown ones, as their type.
fn raw(
    source_type: Option<&str>,
    json: &Value,
    paint: &dyn Fn(&str, &str) -> String,
) -> Option<String> {
    let field = |v: &Value, key: &str| -> Option<String> {
        match v.get(key)? {
            Value::String(s) if !s.is_empty() => Some(one_line(s, SUMMARY_CHARS)),
            Value::Null | Value::String(_) => None,
            other => Some(one_line(&other.to_string(), SUMMARY_CHARS)),
        }
    };
    let Some(kind) = source_type else {
        return Some(paint(
            DIM,
            &format!("· {}", one_line(&json.to_string(), SUMMARY_CHARS)),
        ));
    };
    Some(match kind {
        "system/api_retry" => {
            let mut line = "! API request failed, retrying".to_owned();
            if let (Some(attempt), Some(max)) = (field(json, "attempt"), field(json, "max_retries"))
            {
                line.push_str(&format!(" ({attempt}/{max})"));
            }
            for key in ["error_status", "error"] {
                if let Some(v) = field(json, key) {
                    line.push_str(&format!(" · {v}"));
                }
            }
            paint(YELLOW, &line)
        }
        "rate_limit_event" => {
            let info = json.get("rate_limit_info").unwrap_or(&Value::Null);
            let status = field(info, "status")?;
            if status == "allowed" {
                return None;
            }
            let mut line = format!("! rate limit: {status}");
            if let Some(kind) = field(info, "rateLimitType") {
                line.push_str(&format!(" ({kind})"));
            }
            if let Some(resets) = field(info, "resetsAt") {
                line.push_str(&format!(", resets at {resets}"));
            }
            paint(YELLOW, &line)
        }
        "system/task_started" => paint(
            DIM,
            &format!(
                "● subagent started: {}",
                field(json, "description").unwrap_or_default()
            ),
        ),
        "system/task_notification" => paint(
            DIM,
            &format!(
                "  ⎿ subagent {}: {}",
                field(json, "status").unwrap_or_else(|| "done".to_owned()),
                field(json, "summary").unwrap_or_default()
            ),
        ),
        k if k.ends_with("/todo_list") && k.starts_with("item.completed") => {
            let items = json
                .get("item")
                .and_then(|i| i.get("items"))
                .and_then(Value::as_array);
            let total = items.map_or(0, Vec::len);
            let done = items.map_or(0, |items| {
                items
                    .iter()
                    .filter(|i| i.get("completed").and_then(Value::as_bool) == Some(true))
                    .count()
            });
            paint(DIM, &format!("☐ plan: {done}/{total} done"))
        }
        k if is_quiet(k) => return None,
        k => paint(DIM, &format!("· {}", one_line(k, 80))),
    })
}

/// Known bookkeeping that is not shown.
fn is_quiet(kind: &str) -> bool {
    const PREFIXES: [&str; 5] = [
        "stream_event",
        "system/hook_",
        "item.started/",
        "item.updated/",
        "control_",
    ];
    const EXACT: [&str; 9] = [
        "system/thinking_tokens",
        "system/background_tasks_changed",
        "system/task_progress",
        "system/task_updated",
        "system/post_turn_summary",
        "system/session_state_changed",
        "system/status",
        "turn.started",
        "keep_alive",
    ];
    PREFIXES.iter().any(|p| kind.starts_with(p)) || EXACT.contains(&kind)
}

/// A tool's input as the one argument shown in `Name(...)`: its main field when it has one
/// (the command, the file, the pattern, ...), else compact JSON.
fn input_summary(input: &Value) -> String {
    const MAIN_FIELDS: [&str; 11] = [
        "command",
        "file_path",
        "notebook_path",
        "path",
        "pattern",
        "url",
        "query",
        "description",
        "prompt",
        "skill",
        "subject",
    ];
    match input {
        Value::Null => String::new(),
        Value::String(s) => one_line(s, SUMMARY_CHARS),
        Value::Object(obj) if obj.is_empty() => String::new(),
        Value::Object(obj) => MAIN_FIELDS
            .iter()
            .find_map(|key| {
                obj.get(*key)
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
            })
            .map(|s| one_line(s, SUMMARY_CHARS))
            .unwrap_or_else(|| one_line(&input.to_string(), SUMMARY_CHARS)),
        other => one_line(&other.to_string(), SUMMARY_CHARS),
    }
}

/// `bash -lc 'ls -la'` → `ls -la`: Codex wraps every command in a login shell.
fn unwrap_shell(command: &str) -> String {
    let rest = ["-lc ", "-c "].iter().find_map(|flag| {
        let (shell, rest) = command.split_once(flag)?;
        let shell = shell.trim_end().rsplit('/').next().unwrap_or(shell);
        matches!(shell, "bash" | "zsh" | "sh").then_some(rest)
    });
    let Some(rest) = rest else {
        return command.to_owned();
    };
    let quoted = |q: char| {
        rest.len() >= 2
            && rest.starts_with(q)
            && rest.ends_with(q)
            && !rest[1..rest.len() - 1].contains(q)
            && (q == '\'' || !rest.contains(['\\', '$', '`']))
    };
    if quoted('\'') || quoted('"') {
        rest[1..rest.len() - 1].to_owned()
    } else {
        rest.to_owned()
    }
}

/// The first non-empty line, and how many more there are.
fn lines_summary(text: &str) -> String {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    match lines.next() {
        None => "(no output)".to_owned(),
        Some(first) => {
            let more = lines.count();
            let first = one_line(first, SUMMARY_CHARS);
            if more == 0 {
                first
            } else {
                format!("{first} (+{})", plural(more, "line"))
            }
        }
    }
}

/// Assistant text: its lines, cut after `TEXT_LINES` lines or `TEXT_CHARS` characters.
fn long_text(text: &str) -> String {
    let text = clean(text);
    let text = text.trim_matches('\n');
    let total = text.lines().count();
    let mut shown = String::new();
    let mut lines = 0;
    for line in text.lines() {
        if lines == TEXT_LINES || shown.chars().count() + line.chars().count() > TEXT_CHARS {
            break;
        }
        if lines > 0 {
            shown.push('\n');
        }
        shown.push_str(line);
        lines += 1;
    }
    if lines == 0 && total > 0 {
        // One huge line.
        shown = truncate(text.lines().next().unwrap_or(""), TEXT_CHARS);
        lines = 1;
    }
    if lines < total {
        shown.push_str(&format!("\n… (+{})", plural(total - lines, "more line")));
    }
    shown
}

/// Text on one line: whitespace runs (newlines too) become one space, control characters are
/// replaced, and the result is cut to `max` characters.
fn one_line(text: &str, max: usize) -> String {
    let joined = clean(text).split_whitespace().collect::<Vec<_>>().join(" ");
    truncate(&joined, max)
}

/// Replaces control characters but newline and tab (escape sequences, carriage returns,
/// backspaces: whatever could move the cursor or restyle the terminal). `\r` goes away.
fn clean(text: &str) -> String {
    text.chars()
        .filter(|c| *c != '\r')
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                '\u{fffd}'
            } else {
                c
            }
        })
        .collect()
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((cut, _)) => format!("{}…", &text[..cut]),
    }
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn duration(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{}m {}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plain(e: &AgentEvent) -> String {
        render(e, false).unwrap()
    }

    #[test]
    fn a_tool_call_folds_to_one_line() {
        let call = AgentEvent::ToolCall {
            id: Some("toolu_1".into()),
            name: "Bash".into(),
            input: json!({"command": "cd /repo &&\n  cargo test --workspace\n", "description": "Run tests"}),
        };
        assert_eq!(plain(&call), "● Bash(cd /repo && cargo test --workspace)");
        let coloured = render(&call, true).unwrap();
        assert!(coloured.contains("\x1b[1;36mBash\x1b[0m"));
        assert!(!coloured.contains('\n'));

        let write = AgentEvent::ToolCall {
            id: None,
            name: "Write".into(),
            input: json!({"file_path": "/a/b.rs", "content": "x\n".repeat(10_000)}),
        };
        assert_eq!(plain(&write), "● Write(/a/b.rs)");
        // No main field: compact JSON, cut.
        let other = AgentEvent::ToolCall {
            id: None,
            name: "fg.state".into(),
            input: json!({"what": "a".repeat(500)}),
        };
        let line = plain(&other);
        assert!(line.starts_with("● fg.state({\"what\":\"aaa"));
        assert!(line.ends_with("…)"));
        assert!(line.chars().count() < 200);
    }

    #[test]
    fn results_and_commands_are_one_line() {
        let result = AgentEvent::ToolResult {
            id: None,
            is_error: false,
            content: "     1→fn main() {}\n     2→\n     3→// end\n".into(),
        };
        assert_eq!(plain(&result), "  ⎿ 1→fn main() {} (+2 lines)");
        let started = AgentEvent::CommandExecution {
            id: None,
            command: "/bin/zsh -lc 'echo one'".into(),
            status: Some("in_progress".into()),
            exit_code: None,
            output: None,
        };
        assert_eq!(plain(&started), "▸ $ echo one");
        let failed = AgentEvent::CommandExecution {
            id: None,
            command: "/bin/bash -lc stub".into(),
            status: Some("failed".into()),
            exit_code: Some(127),
            output: Some("/bin/bash: line 1: stub: command not found\n".into()),
        };
        assert_eq!(
            plain(&failed),
            "✗ $ stub · exit 127 · /bin/bash: line 1: stub: command not found"
        );
        assert_eq!(
            unwrap_shell(r#"/bin/zsh -lc "rg --files -g '"'!*'"' | sort""#),
            r#""rg --files -g '"'!*'"' | sort""#
        );
        assert_eq!(unwrap_shell("bash -lc ls"), "ls");
        assert_eq!(unwrap_shell("python -c 'x'"), "python -c 'x'");
    }

    #[test]
    fn final_result_shows_the_cost_and_the_error() {
        let ok = AgentEvent::FinalResult {
            is_error: false,
            text: Some("all good".into()),
            error: None,
            reason: Some("completed".into()),
            cost_usd: Some(1.409_085_35),
            duration_ms: Some(14_508),
            turns: Some(4),
        };
        assert_eq!(plain(&ok), "✓ done · 4 turns · 14.5s · $1.4091");
        let failed = AgentEvent::FinalResult {
            is_error: true,
            text: None,
            error: Some("Reached maximum number of turns (15)".into()),
            reason: Some("max_turns".into()),
            cost_usd: Some(0.0026),
            duration_ms: Some(542),
            turns: Some(16),
        };
        assert_eq!(
            plain(&failed),
            "✗ failed (max_turns): Reached maximum number of turns (15) · 16 turns · 542ms · $0.0026"
        );
        let usage = AgentEvent::Usage {
            input_tokens: Some(35),
            output_tokens: Some(664),
            cache_read_tokens: Some(88_501),
            cache_write_tokens: Some(2729),
            reasoning_tokens: None,
            cost_usd: Some(0.2),
        };
        assert_eq!(plain(&usage), "tokens: 35 in · 664 out · 88,501 cached");
    }

    #[test]
    fn control_characters_cannot_reach_the_terminal() {
        let text = AgentEvent::AssistantText {
            text: "hi \x1b]0;pwned\x07 \x1b[2J there\r\n".into(),
        };
        let shown = plain(&text);
        assert!(!shown.contains('\x1b') && !shown.contains('\x07') && !shown.contains('\r'));
        assert_eq!(shown, "hi \u{fffd}]0;pwned\u{fffd} \u{fffd}[2J there");
        let line = AgentEvent::Text {
            text: "\x1b[31mred".into(),
        };
        assert_eq!(plain(&line), "\u{fffd}[31mred");
    }

    #[test]
    fn long_text_is_trimmed() {
        let text = AgentEvent::AssistantText {
            text: (1..=100).map(|i| format!("line {i}\n")).collect(),
        };
        let shown = plain(&text);
        assert_eq!(shown.lines().count(), TEXT_LINES + 1);
        assert!(shown.ends_with("… (+60 more lines)"));
        let huge = AgentEvent::AssistantText {
            text: "y".repeat(100_000),
        };
        assert_eq!(plain(&huge).chars().count(), TEXT_CHARS + 1);
    }

    #[test]
    fn bookkeeping_is_quiet_and_unknown_types_show_their_type() {
        let quiet = AgentEvent::Raw {
            source_type: Some("system/thinking_tokens".into()),
            json: json!({}),
        };
        assert_eq!(render(&quiet, true), None);
        let unknown = AgentEvent::Raw {
            source_type: Some("brand_new".into()),
            json: json!({}),
        };
        assert_eq!(plain(&unknown), "· brand_new");
        let retry = AgentEvent::Raw {
            source_type: Some("system/api_retry".into()),
            json: json!({"attempt": 3, "max_retries": 10, "error_status": null, "error": "unknown"}),
        };
        assert_eq!(
            plain(&retry),
            "! API request failed, retrying (3/10) · unknown"
        );
    }
}
