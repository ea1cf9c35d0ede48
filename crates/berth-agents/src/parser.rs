//! Line framing and dispatch: bytes in, events out.

use serde_json::{Map, Value};

use crate::event::{AgentEvent, AgentOutcome};
use crate::{claude, codex, OutputFormat};

/// A streaming parser for one agent's stdout.
///
/// Feed it the output in chunks of any size with [`push`](Self::push) and call
/// [`finish`](Self::finish) at the end of the stream (a last line without a newline is only
/// parsed then). The events do not depend on how the output was chunked.
///
/// Lines end with `\n`; a `\r` before it is dropped; lines that are empty or only whitespace
/// are skipped. A line longer than the limit ([`DEFAULT_MAX_LINE_BYTES`](Self::DEFAULT_MAX_LINE_BYTES),
/// see [`with_max_line_bytes`](Self::with_max_line_bytes)) is not held in memory whole: it is
/// passed on as [`AgentEvent::Text`] pieces of at most the limit each, cut at UTF-8
/// character boundaries, so nothing is lost and memory stays bounded.
#[derive(Debug)]
pub struct AgentParser {
    format: OutputFormat,
    max_line_bytes: usize,
    /// The unfinished line so far.
    buf: Vec<u8>,
    /// The unfinished line was too long and parts of it have been passed on already.
    overflowed: bool,
    lines: u64,
    outcome: Option<AgentOutcome>,
    codex: codex::State,
}

impl AgentParser {
    /// The default longest line parsed as JSON: 64 MiB.
    pub const DEFAULT_MAX_LINE_BYTES: usize = 64 << 20;

    pub fn new(format: OutputFormat) -> Self {
        AgentParser {
            format,
            max_line_bytes: Self::DEFAULT_MAX_LINE_BYTES,
            buf: Vec::new(),
            overflowed: false,
            lines: 0,
            outcome: None,
            codex: codex::State::default(),
        }
    }

    /// Sets the longest line kept whole (at least 4 bytes, so a piece always holds a whole
    /// UTF-8 character).
    pub fn with_max_line_bytes(mut self, max: usize) -> Self {
        self.max_line_bytes = max.max(4);
        self
    }

    pub fn format(&self) -> OutputFormat {
        self.format
    }

    /// Non-empty lines seen so far (a line passed on in pieces counts once).
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// The agent's own verdict, from the last [`AgentEvent::FinalResult`] or, when an
    /// [`AgentEvent::Error`] came after it (or there was no final result), failure with that
    /// error. `None` when the agent has said neither (it was killed, or the format is text):
    /// the caller then goes by the exit code.
    pub fn outcome(&self) -> Option<AgentOutcome> {
        self.outcome.clone()
    }

    /// Takes the next chunk of output and returns the events of the lines it completed.
    pub fn push(&mut self, mut bytes: &[u8]) -> Vec<AgentEvent> {
        let mut out = Vec::new();
        while let Some(pos) = bytes.iter().position(|&b| b == b'\n') {
            let (head, tail) = bytes.split_at(pos);
            if self.buf.is_empty() && !self.overflowed {
                self.complete_line(head, &mut out);
            } else {
                self.buf.extend_from_slice(head);
                let line = std::mem::take(&mut self.buf);
                self.complete_line(&line, &mut out);
                // Keep the allocation for the next long line.
                self.buf = line;
                self.buf.clear();
            }
            bytes = &tail[1..];
        }
        self.buf.extend_from_slice(bytes);
        while self.buf.len() > self.max_line_bytes {
            let cut = char_boundary(&self.buf, self.max_line_bytes);
            let piece: Vec<u8> = self.buf.drain(..cut).collect();
            self.overflow_piece(&piece, &mut out);
        }
        out
    }

    /// Ends the stream: parses a last line that had no newline.
    pub fn finish(&mut self) -> Vec<AgentEvent> {
        let mut out = Vec::new();
        if !self.buf.is_empty() || self.overflowed {
            let line = std::mem::take(&mut self.buf);
            self.complete_line(&line, &mut out);
        }
        out
    }

    /// Parses one whole line (without its `\n`). Empty lines give no events; any other line
    /// gives at least one. Use either this or [`push`](Self::push) on one parser, not both.
    pub fn parse_line(&mut self, line: &[u8]) -> Vec<AgentEvent> {
        let mut out = Vec::new();
        self.complete_line(line, &mut out);
        out
    }

    /// A whole line has arrived: either all of it (`!overflowed`) or its last part.
    fn complete_line(&mut self, mut line: &[u8], out: &mut Vec<AgentEvent>) {
        if std::mem::take(&mut self.overflowed) {
            // The tail of an over-long line: no JSON to find in it any more.
            while line.len() > self.max_line_bytes {
                let cut = char_boundary(line, self.max_line_bytes);
                out.push(text_event(&line[..cut]));
                line = &line[cut..];
            }
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if !line.is_empty() {
                out.push(text_event(line));
            }
            return;
        }
        if line.len() > self.max_line_bytes {
            // The same pieces as when the line arrives in chunks.
            let cut = char_boundary(line, self.max_line_bytes);
            self.overflow_piece(&line[..cut], out);
            self.complete_line(&line[cut..], out);
            return;
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        self.lines += 1;
        let start = out.len();
        self.line_events(line, out);
        for event in &out[start..] {
            self.note_outcome(event);
        }
    }

    /// The first or a middle part of a line longer than the limit.
    fn overflow_piece(&mut self, piece: &[u8], out: &mut Vec<AgentEvent>) {
        if !self.overflowed {
            self.overflowed = true;
            self.lines += 1;
        }
        out.push(text_event(piece));
    }

    fn line_events(&mut self, line: &[u8], out: &mut Vec<AgentEvent>) {
        if self.format == OutputFormat::Text {
            out.push(text_event(line));
            return;
        }
        let value = match serde_json::from_slice::<Value>(line) {
            Ok(value) => value,
            Err(_) => {
                out.push(text_event(line));
                return;
            }
        };
        let Value::Object(obj) = value else {
            out.push(AgentEvent::Raw {
                source_type: None,
                json: value,
            });
            return;
        };
        let start = out.len();
        match self.format {
            OutputFormat::ClaudeStreamJson => claude::events(&obj, out),
            OutputFormat::CodexJsonl => self.codex.events(&obj, out),
            OutputFormat::Text => {}
        }
        if out.len() == start {
            let source_type = match self.format {
                OutputFormat::CodexJsonl => codex::source_type(&obj),
                _ => claude::source_type(&obj),
            };
            out.push(AgentEvent::Raw {
                source_type,
                json: Value::Object(obj),
            });
        }
    }

    fn note_outcome(&mut self, event: &AgentEvent) {
        match event {
            AgentEvent::FinalResult {
                is_error,
                text,
                error,
                reason,
                cost_usd,
                ..
            } => {
                self.outcome = Some(AgentOutcome {
                    is_error: *is_error,
                    message: if *is_error {
                        error.clone().or_else(|| text.clone())
                    } else {
                        text.clone()
                    },
                    reason: reason.clone(),
                    cost_usd: cost_usd.or(self.outcome.as_ref().and_then(|o| o.cost_usd)),
                });
            }
            AgentEvent::Error { message } => {
                self.outcome = Some(AgentOutcome {
                    is_error: true,
                    message: Some(message.clone()),
                    reason: None,
                    cost_usd: self.outcome.as_ref().and_then(|o| o.cost_usd),
                });
            }
            _ => {}
        }
    }
}

/// Parses a whole output at once: its events and the agent's outcome.
pub fn parse_all(format: OutputFormat, bytes: &[u8]) -> (Vec<AgentEvent>, Option<AgentOutcome>) {
    let mut parser = AgentParser::new(format);
    let mut events = parser.push(bytes);
    events.extend(parser.finish());
    (events, parser.outcome())
}

/// The largest index `<= max` (and > 0) that starts a UTF-8 character in `bytes`, which is
/// longer than `max`.
fn char_boundary(bytes: &[u8], max: usize) -> usize {
    let mut cut = max;
    while cut > max.saturating_sub(3) && cut > 1 && (bytes[cut] & 0xC0) == 0x80 {
        cut -= 1;
    }
    if (bytes[cut] & 0xC0) == 0x80 {
        max // not UTF-8 around here anyway
    } else {
        cut
    }
}

fn text_event(bytes: &[u8]) -> AgentEvent {
    AgentEvent::Text {
        text: String::from_utf8_lossy(bytes).into_owned(),
    }
}

// Helpers for reading the agents' JSON, shared by the format modules.

pub(crate) fn get_str(obj: &Map<String, Value>, key: &str) -> Option<String> {
    obj.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// A string field that is present and not empty.
pub(crate) fn get_text(obj: &Map<String, Value>, key: &str) -> Option<String> {
    get_str(obj, key).filter(|s| !s.is_empty())
}

pub(crate) fn get_u64(obj: &Map<String, Value>, key: &str) -> Option<u64> {
    let v = obj.get(key)?;
    v.as_u64()
        .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
}

pub(crate) fn get_obj<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
) -> Option<&'a Map<String, Value>> {
    obj.get(key).and_then(Value::as_object)
}

/// A value as text: a string as is, anything else as compact JSON.
pub(crate) fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(format: OutputFormat, input: &str) -> Vec<AgentEvent> {
        parse_all(format, input.as_bytes()).0
    }

    #[test]
    fn unknown_type_is_kept_raw() {
        let line = r#"{"type":"brand_new","x":[1,2]}"#;
        for format in [OutputFormat::ClaudeStreamJson, OutputFormat::CodexJsonl] {
            let events = parse(format, line);
            assert_eq!(
                events,
                vec![AgentEvent::Raw {
                    source_type: Some("brand_new".into()),
                    json: serde_json::from_str(line).unwrap(),
                }]
            );
        }
        // Unknown subtypes and item types too, with a qualified source type.
        let events = parse(
            OutputFormat::ClaudeStreamJson,
            r#"{"type":"system","subtype":"session_state_changed","state":"idle"}"#,
        );
        assert!(
            matches!(&events[..], [AgentEvent::Raw { source_type: Some(t), .. }] if t == "system/session_state_changed")
        );
        let events = parse(
            OutputFormat::CodexJsonl,
            r#"{"type":"item.completed","item":{"id":"i","type":"hologram"}}"#,
        );
        assert!(
            matches!(&events[..], [AgentEvent::Raw { source_type: Some(t), .. }] if t == "item.completed/hologram")
        );
        // JSON without a type, and JSON that is not an object.
        let events = parse(OutputFormat::CodexJsonl, "{\"a\":1}\n[1,2]\n42\n\"s\"\n");
        assert_eq!(events.len(), 4);
        assert!(events.iter().all(|e| matches!(
            e,
            AgentEvent::Raw {
                source_type: None,
                ..
            }
        )));
    }

    #[test]
    fn malformed_and_partial_lines_are_text() {
        let input = "Loading config...\n{\"type\":\"assistant\",\"mess\n{not json}\n\u{1b}[31mred\u{1b}[0m\n{\"type\":\"turn.started\"}";
        let mut p = AgentParser::new(OutputFormat::CodexJsonl);
        let mut events = p.push(input.as_bytes());
        assert_eq!(events.len(), 4, "the last line waits for finish()");
        events.extend(p.finish());
        assert_eq!(p.lines(), 5);
        let texts: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                AgentEvent::Text { text } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            texts,
            [
                "Loading config...",
                "{\"type\":\"assistant\",\"mess",
                "{not json}",
                "\u{1b}[31mred\u{1b}[0m"
            ]
        );
        assert!(
            matches!(&events[4], AgentEvent::Raw { source_type: Some(t), .. } if t == "turn.started")
        );

        // A stream cut off in the middle of its last line.
        let (events, outcome) = parse_all(
            OutputFormat::ClaudeStreamJson,
            b"{\"type\":\"result\",\"is_error\":false,\"res",
        );
        assert!(matches!(&events[..], [AgentEvent::Text { .. }]));
        assert_eq!(outcome, None);

        // Bytes that are not UTF-8.
        let events = parse_all(OutputFormat::ClaudeStreamJson, b"\xff\xfe oops\n").0;
        assert_eq!(
            events,
            vec![AgentEvent::Text {
                text: "\u{fffd}\u{fffd} oops".into()
            }]
        );
    }

    #[test]
    fn empty_lines_are_skipped_and_crlf_is_stripped() {
        let input = "\n\r\n   \n{\"type\":\"turn.started\"}\r\n\t\r\nplain\r\n\n";
        let mut p = AgentParser::new(OutputFormat::CodexJsonl);
        let mut events = p.push(input.as_bytes());
        events.extend(p.finish());
        assert_eq!(p.lines(), 2);
        assert_eq!(events.len(), 2);
        assert!(matches!(&events[0], AgentEvent::Raw { .. }));
        assert_eq!(
            events[1],
            AgentEvent::Text {
                text: "plain".into()
            }
        );
        // CRLF JSON lines parse as JSON, in every format.
        let (events, outcome) = parse_all(
            OutputFormat::ClaudeStreamJson,
            b"{\"type\":\"assistant\",\"message\":{\"content\":[{\"type\":\"text\",\"text\":\"hi\"}]}}\r\n{\"type\":\"result\",\"is_error\":false,\"result\":\"hi\"}\r\n",
        );
        assert_eq!(events[0], AgentEvent::AssistantText { text: "hi".into() });
        assert!(!outcome.unwrap().is_error);
        let events = parse(OutputFormat::Text, "a\r\nb\r\n\r\n");
        assert_eq!(
            events,
            vec![
                AgentEvent::Text { text: "a".into() },
                AgentEvent::Text { text: "b".into() }
            ]
        );
    }

    #[test]
    fn a_five_megabyte_line_passes() {
        let big = "x→".repeat((5 << 20) / 4); // 5 MiB, with multi-byte characters
        let json_line = serde_json::json!({
            "type": "item.completed",
            "item": {"id": "item_1", "type": "agent_message", "text": big},
        })
        .to_string();
        assert!(json_line.len() > 5 << 20);
        for chunk in [1 << 20, 4096, 7] {
            let mut p = AgentParser::new(OutputFormat::CodexJsonl);
            let mut events = Vec::new();
            for c in json_line.as_bytes().chunks(chunk) {
                events.extend(p.push(c));
            }
            assert!(events.is_empty());
            events.extend(p.push(b"\nnot json "));
            events.extend(p.push(big.as_bytes()));
            events.extend(p.finish());
            assert_eq!(events.len(), 2);
            assert_eq!(events[0], AgentEvent::AssistantText { text: big.clone() });
            assert_eq!(
                events[1],
                AgentEvent::Text {
                    text: format!("not json {big}")
                }
            );
        }
    }

    #[test]
    fn lines_over_the_limit_are_passed_on_in_pieces() {
        // A 16-byte limit; "é" is 2 bytes and must not be cut in half.
        let line = "{\"type\":\"éééééééééééé\"}";
        let whole = parse_all_limited(line.as_bytes(), usize::MAX);
        let chunked = parse_all_limited(line.as_bytes(), 1);
        assert_eq!(whole, chunked);
        let joined: String = whole
            .iter()
            .map(|e| match e {
                AgentEvent::Text { text } => text.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(joined, line.trim_end());
        assert!(whole.len() > 2);

        fn parse_all_limited(input: &[u8], chunk: usize) -> Vec<AgentEvent> {
            let mut p = AgentParser::new(OutputFormat::CodexJsonl).with_max_line_bytes(16);
            let mut events = Vec::new();
            for c in input.chunks(chunk.min(input.len())) {
                events.extend(p.push(c));
            }
            events.extend(p.push(b"\n{\"type\":\"x\"}\n"));
            events.extend(p.finish());
            assert_eq!(p.lines(), 2);
            assert!(matches!(events.last(), Some(AgentEvent::Raw { .. })));
            events.pop();
            events
        }
    }

    #[test]
    fn events_round_trip_through_json() {
        let e = AgentEvent::ToolCall {
            id: Some("toolu_1".into()),
            name: "Bash".into(),
            input: serde_json::json!({"command": "ls"}),
        };
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(
            json,
            r#"{"type":"tool_call","id":"toolu_1","name":"Bash","input":{"command":"ls"}}"#
        );
        assert_eq!(serde_json::from_str::<AgentEvent>(&json).unwrap(), e);
        assert_eq!(e.kind(), "tool_call");
    }
}
