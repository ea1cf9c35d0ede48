//! Claude Code `--output-format stream-json --verbose`.
//!
//! Top-level types: `system` (subtype `init` and many bookkeeping subtypes), `assistant` and
//! `user` (one content block per line as a rule, but any number is handled), `result`,
//! `stream_event` (with `--include-partial-messages`), `rate_limit_event`, SDK-mode
//! `control_*`. Keys come in any order (`result` lines start with `is_error`), so every line
//! is parsed as JSON and looked up by key.
//!
//! Partial messages (`stream_event`) are kept as [`AgentEvent::Raw`]: the complete `assistant`
//! line always follows with the same content, and mapping both would show the text twice.
//! Usage is taken from `result` lines only; `assistant` lines repeat their message's usage on
//! every content block.

use serde_json::{Map, Value};

use crate::event::AgentEvent;
use crate::parser::{get_obj, get_str, get_text, get_u64, value_text};

pub(crate) fn events(obj: &Map<String, Value>, out: &mut Vec<AgentEvent>) {
    match obj.get("type").and_then(Value::as_str) {
        Some("system") if obj.get("subtype").and_then(Value::as_str) == Some("init") => {
            out.push(session_started(obj));
        }
        Some("assistant") => message(obj, Role::Assistant, out),
        Some("user") => message(obj, Role::User, out),
        Some("result") => result(obj, out),
        _ => {}
    }
}

/// `type`, qualified by `subtype` or by the stream event's type.
pub(crate) fn source_type(obj: &Map<String, Value>) -> Option<String> {
    let kind = obj.get("type")?.as_str()?;
    let sub = if kind == "stream_event" {
        obj.get("event")
            .and_then(|e| e.get("type"))
            .and_then(Value::as_str)
    } else {
        obj.get("subtype").and_then(Value::as_str)
    };
    Some(match sub {
        Some(sub) => format!("{kind}/{sub}"),
        None => kind.to_owned(),
    })
}

fn session_started(obj: &Map<String, Value>) -> AgentEvent {
    let tools = obj
        .get("tools")
        .and_then(Value::as_array)
        .map(|tools| {
            tools
                .iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    AgentEvent::SessionStarted {
        session_id: get_text(obj, "session_id"),
        model: get_text(obj, "model"),
        cwd: get_text(obj, "cwd"),
        version: get_text(obj, "claude_code_version"),
        tools,
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Role {
    Assistant,
    User,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Assistant => "assistant",
            Role::User => "user",
        }
    }
}

fn message(obj: &Map<String, Value>, role: Role, out: &mut Vec<AgentEvent>) {
    let Some(msg) = get_obj(obj, "message") else {
        return;
    };
    // The CLI writes API failures as an assistant message of its own ("API Error: 400 ...").
    let api_error = role == Role::Assistant
        && obj.get("is_api_error_message").and_then(Value::as_bool) == Some(true);
    match msg.get("content") {
        Some(Value::String(text)) => push_text(role, api_error, text, out),
        Some(Value::Array(blocks)) => {
            for block in blocks {
                content_block(block, role, api_error, out);
            }
        }
        _ => {}
    }
}

fn push_text(role: Role, api_error: bool, text: &str, out: &mut Vec<AgentEvent>) {
    if text.is_empty() {
        return;
    }
    let text = text.to_owned();
    out.push(match role {
        Role::Assistant if api_error => AgentEvent::Error { message: text },
        Role::Assistant => AgentEvent::AssistantText { text },
        Role::User => AgentEvent::UserText { text },
    });
}

fn content_block(block: &Value, role: Role, api_error: bool, out: &mut Vec<AgentEvent>) {
    let raw = |kind: Option<&str>| AgentEvent::Raw {
        source_type: Some(format!("{}/{}", role.name(), kind.unwrap_or("?"))),
        json: block.clone(),
    };
    let Some(b) = block.as_object() else {
        out.push(raw(None));
        return;
    };
    let kind = b.get("type").and_then(Value::as_str);
    match kind {
        Some("text") => {
            if let Some(text) = b.get("text").and_then(Value::as_str) {
                push_text(role, api_error, text, out);
            }
        }
        Some("thinking") => {
            if let Some(text) = get_text(b, "thinking") {
                out.push(AgentEvent::Reasoning { text });
            }
        }
        Some("tool_use" | "server_tool_use" | "mcp_tool_use") => out.push(AgentEvent::ToolCall {
            id: get_text(b, "id"),
            name: get_str(b, "name").unwrap_or_else(|| "?".to_owned()),
            input: b.get("input").cloned().unwrap_or(Value::Null),
        }),
        Some(k) if k == "tool_result" || k.ends_with("_tool_result") => {
            out.push(AgentEvent::ToolResult {
                id: get_text(b, "tool_use_id"),
                is_error: b.get("is_error").and_then(Value::as_bool) == Some(true),
                content: content_text(b.get("content")),
            });
        }
        other => out.push(raw(other)),
    }
}

/// A tool result's `content`: a string, or an array of blocks whose text is joined with
/// newlines (blocks without text become `[type]`).
fn content_text(content: Option<&Value>) -> String {
    match content {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .map(|block| match block {
                Value::String(s) => s.clone(),
                Value::Object(b) => match b.get("text").and_then(Value::as_str) {
                    Some(text) => text.to_owned(),
                    None => format!("[{}]", b.get("type").and_then(Value::as_str).unwrap_or("?")),
                },
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Some(other) => value_text(other),
    }
}

fn result(obj: &Map<String, Value>, out: &mut Vec<AgentEvent>) {
    let subtype = get_text(obj, "subtype");
    // `is_error` decides, not `subtype`: an API error comes as `subtype:"success"`.
    let is_error = match obj.get("is_error").and_then(Value::as_bool) {
        Some(is_error) => is_error,
        None => subtype.as_deref().is_some_and(|s| s != "success"),
    };
    let text = get_text(obj, "result");
    let reason = get_text(obj, "terminal_reason").or(subtype);
    let cost_usd = obj.get("total_cost_usd").and_then(Value::as_f64);
    let error = is_error.then(|| {
        let errors: Vec<String> = obj
            .get("errors")
            .and_then(Value::as_array)
            .map(|errors| {
                errors
                    .iter()
                    .map(value_text)
                    .filter(|e| !e.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        if !errors.is_empty() {
            errors.join("; ")
        } else if let Some(text) = &text {
            text.clone()
        } else if let Some(status) = get_u64(obj, "api_error_status") {
            format!("API error {status}")
        } else if let Some(reason) = &reason {
            format!("the agent stopped: {reason}")
        } else {
            "the agent reported an error".to_owned()
        }
    });

    if let Some(usage) = get_obj(obj, "usage") {
        out.push(AgentEvent::Usage {
            input_tokens: get_u64(usage, "input_tokens"),
            output_tokens: get_u64(usage, "output_tokens"),
            cache_read_tokens: get_u64(usage, "cache_read_input_tokens"),
            cache_write_tokens: get_u64(usage, "cache_creation_input_tokens"),
            reasoning_tokens: get_obj(usage, "output_tokens_details")
                .and_then(|d| get_u64(d, "thinking_tokens")),
            cost_usd,
        });
    } else if cost_usd.is_some() {
        out.push(AgentEvent::Usage {
            input_tokens: None,
            output_tokens: None,
            cache_read_tokens: None,
            cache_write_tokens: None,
            reasoning_tokens: None,
            cost_usd,
        });
    }
    out.push(AgentEvent::FinalResult {
        is_error,
        text,
        error,
        reason,
        cost_usd,
        duration_ms: get_u64(obj, "duration_ms"),
        turns: get_u64(obj, "num_turns"),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{parse_all, OutputFormat};
    use serde_json::json;

    fn parse(lines: &[Value]) -> (Vec<AgentEvent>, Option<crate::AgentOutcome>) {
        let input: String = lines.iter().map(|l| format!("{l}\n")).collect();
        parse_all(OutputFormat::ClaudeStreamJson, input.as_bytes())
    }

    #[test]
    fn one_line_can_hold_several_blocks() {
        let (events, _) = parse(&[json!({
            "type": "assistant",
            "message": {"content": [
                {"type": "thinking", "thinking": "hmm", "signature": "x"},
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "ls"}},
                {"type": "tool_use", "id": "toolu_2", "name": "Read", "input": {"file_path": "/a"}},
                {"type": "image", "source": {}},
            ]},
        })]);
        let kinds: Vec<_> = events.iter().map(AgentEvent::kind).collect();
        assert_eq!(
            kinds,
            [
                "reasoning",
                "assistant_text",
                "tool_call",
                "tool_call",
                "raw"
            ]
        );
        assert!(
            matches!(&events[4], AgentEvent::Raw { source_type: Some(t), .. } if t == "assistant/image")
        );
    }

    #[test]
    fn tool_results_with_string_or_block_content() {
        let (events, _) = parse(&[json!({
            "type": "user",
            "message": {"role": "user", "content": [
                {"type": "tool_result", "content": "File does not exist.", "is_error": true, "tool_use_id": "toolu_1"},
                {"tool_use_id": "toolu_2", "type": "tool_result", "content": [
                    {"type": "text", "text": "line one"},
                    {"type": "tool_reference", "tool_name": "TaskCreate"},
                ]},
            ]},
            "tool_use_result": "Error: File does not exist.",
        })]);
        assert_eq!(
            events,
            vec![
                AgentEvent::ToolResult {
                    id: Some("toolu_1".into()),
                    is_error: true,
                    content: "File does not exist.".into()
                },
                AgentEvent::ToolResult {
                    id: Some("toolu_2".into()),
                    is_error: false,
                    content: "line one\n[tool_reference]".into()
                },
            ]
        );
    }

    #[test]
    fn result_error_follows_is_error_not_subtype() {
        let (events, outcome) = parse(&[
            json!({"type": "assistant", "is_api_error_message": true, "message": {"content": [{"type": "text", "text": "API Error: 400 context length exceeded"}]}}),
            json!({"is_error": true, "subtype": "success", "terminal_reason": "api_error", "api_error_status": 400, "result": "API Error: 400 context length exceeded", "type": "result", "total_cost_usd": 0}),
        ]);
        assert_eq!(
            events[0],
            AgentEvent::Error {
                message: "API Error: 400 context length exceeded".into()
            }
        );
        let outcome = outcome.unwrap();
        assert!(outcome.is_error);
        assert_eq!(
            outcome.message.as_deref(),
            Some("API Error: 400 context length exceeded")
        );
        assert_eq!(outcome.reason.as_deref(), Some("api_error"));

        let (_, outcome) = parse(&[
            json!({"is_error": true, "subtype": "error_max_turns", "errors": ["Reached maximum number of turns (15)"], "type": "result"}),
        ]);
        let outcome = outcome.unwrap();
        assert!(outcome.is_error);
        assert_eq!(
            outcome.message.as_deref(),
            Some("Reached maximum number of turns (15)")
        );

        // No `is_error` at all: fall back to the subtype.
        let (_, outcome) = parse(&[json!({"type": "result", "subtype": "error_during_execution"})]);
        assert!(outcome.unwrap().is_error);
        let (_, outcome) =
            parse(&[json!({"type": "result", "subtype": "success", "result": "ok"})]);
        assert_eq!(outcome.unwrap().message.as_deref(), Some("ok"));
    }

    #[test]
    fn the_last_result_wins() {
        let (events, outcome) = parse(&[
            json!({"type": "result", "is_error": true, "errors": ["first"], "total_cost_usd": 0.5}),
            json!({"type": "result", "is_error": false, "result": "second", "total_cost_usd": 0.75, "usage": {"input_tokens": 3, "output_tokens": 4, "cache_read_input_tokens": 5, "cache_creation_input_tokens": 6}}),
        ]);
        assert_eq!(
            outcome,
            Some(crate::AgentOutcome {
                is_error: false,
                message: Some("second".into()),
                reason: None,
                cost_usd: Some(0.75)
            })
        );
        assert!(events.contains(&AgentEvent::Usage {
            input_tokens: Some(3),
            output_tokens: Some(4),
            cache_read_tokens: Some(5),
            cache_write_tokens: Some(6),
            reasoning_tokens: None,
            cost_usd: Some(0.75)
        }));
    }

    #[test]
    fn partial_messages_are_kept_raw() {
        let (events, _) = parse(&[
            json!({"type": "stream_event", "event": {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}}),
            json!({"type": "assistant", "message": {"content": [{"type": "text", "text": "Hi"}]}}),
            json!({"type": "stream_event", "event": {"type": "message_stop"}}),
        ]);
        assert!(
            matches!(&events[0], AgentEvent::Raw { source_type: Some(t), .. } if t == "stream_event/content_block_delta")
        );
        assert_eq!(events[1], AgentEvent::AssistantText { text: "Hi".into() });
        assert!(
            matches!(&events[2], AgentEvent::Raw { source_type: Some(t), .. } if t == "stream_event/message_stop")
        );
    }
}
