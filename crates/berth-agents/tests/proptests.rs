//! Property tests of the stream-json parsers: any bytes in, events out, never a panic; the
//! events do not depend on how the output was chunked; no non-empty line is dropped.

#![allow(clippy::unwrap_used)]

use berth_agents::{parse_all, render, AgentEvent, AgentParser, OutputFormat};
use proptest::prelude::*;
use serde_json::{Map, Number, Value};

/// Keys and `type` values the parsers look at, so generated lines reach their branches.
const KEYS: &[&str] = &[
    "type",
    "subtype",
    "message",
    "content",
    "text",
    "id",
    "name",
    "input",
    "tool_use_id",
    "is_error",
    "result",
    "usage",
    "total_cost_usd",
    "item",
    "thread_id",
    "error",
    "errors",
    "duration_ms",
    "num_turns",
    "session_id",
    "delta",
    "event",
    "role",
    "model",
    "status",
    "command",
    "aggregated_output",
    "exit_code",
    "changes",
    "path",
    "kind",
    "tool",
    "server",
    "arguments",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "thinking",
    "index",
    "terminal_reason",
    "tool_use_result",
    "structured_content",
    "query",
];
const TYPES: &[&str] = &[
    "system",
    "assistant",
    "user",
    "result",
    "stream_event",
    "init",
    "success",
    "error_during_execution",
    "error_max_turns",
    "tool_use",
    "tool_result",
    "text",
    "thinking",
    "content_block_delta",
    "text_delta",
    "message_stop",
    "thread.started",
    "turn.started",
    "turn.completed",
    "turn.failed",
    "item.started",
    "item.updated",
    "item.completed",
    "error",
    "agent_message",
    "reasoning",
    "command_execution",
    "file_change",
    "mcp_tool_call",
    "web_search",
    "completed",
    "failed",
    "in_progress",
    "add",
    "update",
    "api_error",
];

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(TYPES).prop_map(Value::from),
        ".{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![prop::sample::select(KEYS).prop_map(String::from), ".{0,8}"],
                    inner
                ),
                0..6
            )
            .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// An event-like object: a known `type` (and often `subtype`/`item`) plus arbitrary fields.
fn event_line() -> impl Strategy<Value = String> {
    (
        prop::sample::select(TYPES),
        prop::option::of(prop::sample::select(TYPES)),
        json(),
        prop::collection::vec((prop::sample::select(KEYS), json()), 0..5),
    )
        .prop_map(|(kind, subtype, item, fields)| {
            let mut obj = Map::new();
            for (k, v) in fields {
                obj.insert(k.to_string(), v);
            }
            obj.insert("type".into(), kind.into());
            if let Some(s) = subtype {
                obj.insert("subtype".into(), s.into());
            }
            obj.insert("item".into(), item.clone());
            if obj.contains_key("message") {
                obj.insert("message".into(), serde_json::json!({"content": [item]}));
            }
            Value::Object(obj).to_string()
        })
}

/// Output as agents print it: event lines, other JSON, stray text, `\r\n`, blank lines, and
/// arbitrary bytes (invalid UTF-8 included), optionally without a final newline.
fn output() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        4 => event_line().prop_map(String::into_bytes),
        2 => json().prop_map(|v| v.to_string().into_bytes()),
        1 => ".{0,40}".prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 0..40),
        1 => Just(b"  \t".to_vec()),
        1 => event_line().prop_map(|l| { let cut = l.len() / 2; l.as_bytes()[..cut].to_vec() }),
    ];
    (
        prop::collection::vec((line, any::<bool>()), 0..12),
        any::<bool>(),
    )
        .prop_map(|(lines, newline_at_end)| {
            let mut out = Vec::new();
            for (line, crlf) in lines {
                out.extend_from_slice(&line);
                out.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
            }
            if !newline_at_end {
                out.pop();
            }
            out
        })
}

/// The lines a parser counts: not empty or whitespace after `\r` is dropped.
fn non_empty_lines(bytes: &[u8]) -> u64 {
    bytes
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .count() as u64
}

fn chunked(format: OutputFormat, bytes: &[u8], cuts: &[usize]) -> (Vec<AgentEvent>, u64) {
    let mut parser = AgentParser::new(format);
    let mut events = Vec::new();
    let mut start = 0;
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    for cut in cuts {
        events.extend(parser.push(&bytes[start..cut.max(start)]));
        start = cut.max(start);
    }
    events.extend(parser.push(&bytes[start..]));
    events.extend(parser.finish());
    (events, parser.lines())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn any_bytes_parse_without_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        for format in OutputFormat::ALL {
            let (events, _) = parse_all(format, &bytes);
            for event in &events {
                let _ = (render(event, true), render(event, false));
            }
        }
    }

    #[test]
    fn agent_output_parses_the_same_in_any_chunks(
        bytes in output(),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        for format in OutputFormat::ALL {
            let (whole, outcome) = parse_all(format, &bytes);
            let (pieces, lines) = chunked(format, &bytes, &cuts);
            prop_assert_eq!(&whole, &pieces);
            // Nothing is dropped: every non-empty line is counted and gives an event.
            prop_assert_eq!(lines, non_empty_lines(&bytes));
            prop_assert!(whole.len() as u64 >= lines);
            if format == OutputFormat::Text {
                prop_assert!(outcome.is_none());
            }
            for event in &whole {
                let _ = (render(event, true), render(event, false));
            }
        }
    }

    #[test]
    fn single_lines_never_panic(line in event_line()) {
        for format in OutputFormat::ALL {
            let mut parser = AgentParser::new(format);
            let events = parser.parse_line(line.as_bytes());
            prop_assert!(!events.is_empty());
            let _ = parser.outcome();
        }
    }

    #[test]
    fn long_lines_are_cut_without_loss(
        text in "[a-zA-Z0-9 {}\":é漢🦀]{0,200}",
        max in 4usize..64,
        cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        // Not JSON (it starts with `x`), so every byte must come back as text, in order, however
        // the lines were cut into pieces and whatever the chunks.
        let line = format!("x{text}");
        let bytes = format!("{line}\n{line}").into_bytes();
        let mut parser =
            AgentParser::new(OutputFormat::ClaudeStreamJson).with_max_line_bytes(max);
        let mut events = Vec::new();
        let mut start = 0;
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        for cut in cuts {
            events.extend(parser.push(&bytes[start..cut.max(start)]));
            start = cut.max(start);
        }
        events.extend(parser.push(&bytes[start..]));
        events.extend(parser.finish());
        let mut back = String::new();
        for event in &events {
            match event {
                AgentEvent::Text { text } => {
                    prop_assert!(text.len() <= max.max(4));
                    back.push_str(text);
                }
                other => prop_assert!(false, "{other:?}"),
            }
        }
        prop_assert_eq!(back, format!("{line}{line}"));
        prop_assert_eq!(parser.lines(), 2);
    }
}
