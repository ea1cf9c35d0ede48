//! Codex CLI `codex exec --json`.
//!
//! Top-level types: `thread.started`, `turn.started`, `item.started` / `item.updated` /
//! `item.completed` (with an `item` of type `agent_message`, `reasoning`, `command_execution`,
//! `file_change`, `mcp_tool_call`, `web_search`, `todo_list`, `error`), `turn.completed`
//! (with usage), `turn.failed`, `error`.
//!
//! `error` *items* are advisories (they even come before `turn.started`) and become
//! [`AgentEvent::Warning`]; a top-level `error` (retries: `Reconnecting... 2/5`) becomes
//! [`AgentEvent::Error`]; the verdict is `turn.completed` or `turn.failed`. Codex has no final
//! text of its own: the turn's last `agent_message` is taken as the final result's text.

use std::collections::HashSet;

use serde_json::{json, Map, Value};

use crate::event::AgentEvent;
use crate::parser::{get_obj, get_str, get_text, get_u64, value_text};

#[derive(Debug, Default)]
pub(crate) struct State {
    /// The current turn's last `agent_message`.
    last_message: Option<String>,
    /// Ids of `mcp_tool_call` items whose call has been reported by `item.started`.
    started_calls: HashSet<String>,
}

#[derive(Clone, Copy, PartialEq)]
enum Phase {
    Started,
    Updated,
    Completed,
}

/// `type`, qualified by the item's type for `item.*` lines.
pub(crate) fn source_type(obj: &Map<String, Value>) -> Option<String> {
    let kind = obj.get("type")?.as_str()?;
    let item_type = kind
        .starts_with("item.")
        .then(|| get_obj(obj, "item").and_then(|item| get_str(item, "type")))
        .flatten();
    Some(match item_type {
        Some(item_type) => format!("{kind}/{item_type}"),
        None => kind.to_owned(),
    })
}

impl State {
    pub(crate) fn events(&mut self, obj: &Map<String, Value>, out: &mut Vec<AgentEvent>) {
        let phase = match obj.get("type").and_then(Value::as_str) {
            Some("thread.started") => {
                out.push(AgentEvent::SessionStarted {
                    session_id: get_text(obj, "thread_id"),
                    model: None,
                    cwd: None,
                    version: None,
                    tools: Vec::new(),
                });
                return;
            }
            Some("turn.started") => {
                // Kept raw; it only starts a new final text.
                self.last_message = None;
                return;
            }
            Some("turn.completed") => {
                if let Some(usage) = get_obj(obj, "usage") {
                    out.push(AgentEvent::Usage {
                        input_tokens: get_u64(usage, "input_tokens"),
                        output_tokens: get_u64(usage, "output_tokens"),
                        cache_read_tokens: get_u64(usage, "cached_input_tokens"),
                        cache_write_tokens: get_u64(usage, "cache_write_input_tokens"),
                        reasoning_tokens: get_u64(usage, "reasoning_output_tokens"),
                        cost_usd: None,
                    });
                }
                out.push(final_result(false, self.last_message.take(), None));
                return;
            }
            Some("turn.failed") => {
                let error = match obj.get("error") {
                    Some(Value::Object(e)) => get_text(e, "message")
                        .unwrap_or_else(|| value_text(&Value::Object(e.clone()))),
                    Some(Value::String(e)) if !e.is_empty() => e.clone(),
                    _ => "the turn failed".to_owned(),
                };
                out.push(final_result(true, self.last_message.take(), Some(error)));
                return;
            }
            Some("error") => {
                if let Some(message) = get_text(obj, "message") {
                    out.push(AgentEvent::Error { message });
                }
                return;
            }
            Some("item.started") => Phase::Started,
            Some("item.updated") => Phase::Updated,
            Some("item.completed") => Phase::Completed,
            _ => return,
        };
        if let Some(item) = get_obj(obj, "item") {
            self.item(phase, item, out);
        }
    }

    fn item(&mut self, phase: Phase, item: &Map<String, Value>, out: &mut Vec<AgentEvent>) {
        let id = get_text(item, "id");
        let kind = item.get("type").and_then(Value::as_str).unwrap_or("");
        match (kind, phase) {
            ("agent_message", Phase::Completed) => {
                if let Some(text) = get_text(item, "text") {
                    self.last_message = Some(text.clone());
                    out.push(AgentEvent::AssistantText { text });
                }
            }
            ("reasoning", Phase::Completed) => {
                if let Some(text) = get_text(item, "text") {
                    out.push(AgentEvent::Reasoning { text });
                }
            }
            ("command_execution", Phase::Started | Phase::Completed) => {
                out.push(AgentEvent::CommandExecution {
                    id,
                    command: get_str(item, "command").unwrap_or_default(),
                    status: get_text(item, "status"),
                    exit_code: item.get("exit_code").and_then(Value::as_i64),
                    output: get_text(item, "aggregated_output"),
                });
            }
            ("file_change", Phase::Completed) => {
                let status = get_text(item, "status");
                for change in item
                    .get("changes")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_object)
                {
                    if let Some(path) = get_text(change, "path") {
                        out.push(AgentEvent::FileChange {
                            path,
                            kind: get_text(change, "kind"),
                            status: status.clone(),
                        });
                    }
                }
            }
            ("mcp_tool_call", Phase::Started) => {
                if let Some(id) = &id {
                    self.started_calls.insert(id.clone());
                }
                out.push(mcp_call(id, item));
            }
            ("mcp_tool_call", Phase::Completed) => {
                let announced = id.as_ref().is_some_and(|id| self.started_calls.remove(id));
                if !announced {
                    out.push(mcp_call(id.clone(), item));
                }
                out.push(mcp_result(id, item));
            }
            ("web_search", Phase::Completed) => out.push(AgentEvent::ToolCall {
                id,
                name: "web_search".to_owned(),
                input: match item.get("query") {
                    Some(query) => json!({ "query": query }),
                    None => Value::Object(item.clone()),
                },
            }),
            ("error", Phase::Completed) => {
                if let Some(message) = get_text(item, "message") {
                    out.push(AgentEvent::Warning { message });
                }
            }
            // Everything else (todo_list, items announced before they complete, new item
            // types) is kept raw by the caller.
            _ => {}
        }
    }
}

fn final_result(is_error: bool, text: Option<String>, error: Option<String>) -> AgentEvent {
    AgentEvent::FinalResult {
        is_error,
        text,
        error,
        reason: None,
        cost_usd: None,
        duration_ms: None,
        turns: None,
    }
}

fn mcp_call(id: Option<String>, item: &Map<String, Value>) -> AgentEvent {
    let tool = get_str(item, "tool").unwrap_or_else(|| "?".to_owned());
    AgentEvent::ToolCall {
        id,
        name: match get_text(item, "server") {
            Some(server) => format!("{server}.{tool}"),
            None => tool,
        },
        input: item.get("arguments").cloned().unwrap_or(Value::Null),
    }
}

fn mcp_result(id: Option<String>, item: &Map<String, Value>) -> AgentEvent {
    let error = match item.get("error") {
        None | Some(Value::Null) => None,
        Some(Value::Object(e)) => {
            Some(get_text(e, "message").unwrap_or_else(|| value_text(&Value::Object(e.clone()))))
        }
        Some(other) => Some(value_text(other)),
    };
    let is_error = error.is_some() || get_str(item, "status").as_deref() == Some("failed");
    let content = match error {
        Some(error) => error,
        None => {
            let result = get_obj(item, "result");
            let texts: Vec<String> = result
                .and_then(|r| r.get("content"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|block| match block.get("text").and_then(Value::as_str) {
                    Some(text) => text.to_owned(),
                    None => format!(
                        "[{}]",
                        block.get("type").and_then(Value::as_str).unwrap_or("?")
                    ),
                })
                .collect();
            match result.and_then(|r| r.get("structured_content")) {
                _ if !texts.is_empty() => texts.join("\n"),
                Some(structured) if !structured.is_null() => structured.to_string(),
                _ => String::new(),
            }
        }
    };
    AgentEvent::ToolResult {
        id,
        is_error,
        content,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{parse_all, AgentOutcome, OutputFormat};

    fn parse(input: &str) -> (Vec<AgentEvent>, Option<AgentOutcome>) {
        parse_all(OutputFormat::CodexJsonl, input.as_bytes())
    }

    #[test]
    fn final_text_is_the_turns_last_agent_message() {
        let (events, outcome) = parse(concat!(
            r#"{"type":"turn.started"}"#,
            "\n",
            r#"{"type":"item.completed","item":{"id":"item_0","type":"agent_message","text":"first"}}"#,
            "\n",
            r#"{"type":"item.completed","item":{"id":"item_1","type":"agent_message","text":"last"}}"#,
            "\n",
            r#"{"type":"turn.completed","usage":{"input_tokens":1,"cached_input_tokens":2,"output_tokens":3}}"#,
            "\n",
        ));
        assert_eq!(
            events[3],
            AgentEvent::Usage {
                input_tokens: Some(1),
                output_tokens: Some(3),
                cache_read_tokens: Some(2),
                cache_write_tokens: None,
                reasoning_tokens: None,
                cost_usd: None
            }
        );
        assert_eq!(
            outcome,
            Some(AgentOutcome {
                is_error: false,
                message: Some("last".into()),
                reason: None,
                cost_usd: None
            })
        );
    }

    #[test]
    fn errors_retries_and_failed_turns() {
        // A retry that recovers: the later result wins.
        let (_, outcome) = parse(concat!(
            r#"{"type":"error","message":"Reconnecting... 1/5"}"#,
            "\n",
            r#"{"type":"turn.completed","usage":{}}"#,
            "\n",
        ));
        assert!(!outcome.unwrap().is_error);
        // An error and nothing after it: failed.
        let (_, outcome) = parse("{\"type\":\"error\",\"message\":\"boom\"}\n");
        let outcome = outcome.unwrap();
        assert!(outcome.is_error);
        assert_eq!(outcome.message.as_deref(), Some("boom"));
        // turn.failed, with the error as an object or a string.
        let (events, outcome) =
            parse("{\"type\":\"turn.failed\",\"error\":{\"message\":\"limit\"}}\n");
        assert!(matches!(
            &events[..],
            [AgentEvent::FinalResult { is_error: true, .. }]
        ));
        assert_eq!(outcome.unwrap().message.as_deref(), Some("limit"));
        let (_, outcome) = parse("{\"type\":\"turn.failed\",\"error\":\"plain\"}\n");
        assert_eq!(outcome.unwrap().message.as_deref(), Some("plain"));
        // Error items are warnings and decide nothing.
        let (events, outcome) = parse(
            r#"{"type":"item.completed","item":{"id":"item_0","type":"error","message":"careful"}}"#,
        );
        assert_eq!(
            events,
            vec![AgentEvent::Warning {
                message: "careful".into()
            }]
        );
        assert_eq!(outcome, None);
    }

    #[test]
    fn mcp_calls_pair_with_their_results() {
        let started = r#"{"type":"item.started","item":{"id":"item_7","type":"mcp_tool_call","server":"fg","tool":"state","arguments":{"what":"x"},"result":null,"error":null,"status":"in_progress"}}"#;
        let completed = r#"{"type":"item.completed","item":{"id":"item_7","type":"mcp_tool_call","server":"fg","tool":"state","arguments":{"what":"x"},"result":{"content":[{"type":"text","text":"ok"}],"structured_content":null},"error":null,"status":"completed"}}"#;
        let call = AgentEvent::ToolCall {
            id: Some("item_7".into()),
            name: "fg.state".into(),
            input: json!({"what": "x"}),
        };
        let result = AgentEvent::ToolResult {
            id: Some("item_7".into()),
            is_error: false,
            content: "ok".into(),
        };
        let (events, _) = parse(&format!("{started}\n{completed}\n"));
        assert_eq!(events, vec![call.clone(), result.clone()]);
        // Completed without a start: the call is reported too.
        let (events, _) = parse(completed);
        assert_eq!(events, vec![call, result]);

        let failed = r#"{"type":"item.completed","item":{"id":"item_8","type":"mcp_tool_call","server":"fg","tool":"state","arguments":{},"result":null,"error":{"message":"no such tool"},"status":"failed"}}"#;
        let (events, _) = parse(failed);
        assert_eq!(
            events[1],
            AgentEvent::ToolResult {
                id: Some("item_8".into()),
                is_error: true,
                content: "no such tool".into()
            }
        );
    }

    #[test]
    fn web_search_with_a_duplicate_id_key() {
        // Codex writes `id` twice on web_search items; the last one wins.
        let (events, _) = parse(
            r#"{"type":"item.completed","item":{"id":"item_1","type":"web_search","id":"ws_9","query":"rust serde"}}"#,
        );
        assert_eq!(
            events,
            vec![AgentEvent::ToolCall {
                id: Some("ws_9".into()),
                name: "web_search".into(),
                input: json!({"query": "rust serde"}),
            }]
        );
    }

    #[test]
    fn file_changes_one_event_per_path_when_complete() {
        let (events, _) = parse(concat!(
            r#"{"type":"item.started","item":{"id":"item_4","type":"file_change","changes":[{"path":"/a","kind":"update"},{"path":"/b","kind":"add"}],"status":"in_progress"}}"#,
            "\n",
            r#"{"type":"item.completed","item":{"id":"item_4","type":"file_change","changes":[{"path":"/a","kind":"update"},{"path":"/b","kind":"add"}],"status":"completed"}}"#,
            "\n",
        ));
        assert!(
            matches!(&events[0], AgentEvent::Raw { source_type: Some(t), .. } if t == "item.started/file_change")
        );
        assert_eq!(
            &events[1..],
            [
                AgentEvent::FileChange {
                    path: "/a".into(),
                    kind: Some("update".into()),
                    status: Some("completed".into())
                },
                AgentEvent::FileChange {
                    path: "/b".into(),
                    kind: Some("add".into()),
                    status: Some("completed".into())
                },
            ]
        );
    }
}
