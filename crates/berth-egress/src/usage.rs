//! Token usage as the model APIs report it, read from a response while it streams past: SSE
//! `data:` lines (Anthropic `message_start` / `message_delta`, OpenAI `response.completed`,
//! chat-completion chunks with `usage`) or one JSON body. Memory is bounded: an SSE line longer
//! than [`MAX_LINE`] and a JSON body longer than [`MAX_JSON`] are skipped, never buffered whole.

/// The longest SSE line looked at.
pub const MAX_LINE: usize = 1 << 20;
/// The longest JSON body looked at.
pub const MAX_JSON: usize = 8 << 20;

/// Reads usage from a response body fed in chunks.
#[derive(Debug, Default)]
pub struct UsageSniffer {
    sse: bool,
    buf: Vec<u8>,
    /// The current line (or body) went over its limit and is skipped.
    skipping: bool,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
}

impl UsageSniffer {
    /// `content_type` decides SSE (`text/event-stream`) or JSON; anything else is ignored.
    pub fn new(content_type: &str) -> Option<Self> {
        let ct = content_type.to_ascii_lowercase();
        if ct.starts_with("text/event-stream") {
            Some(Self {
                sse: true,
                ..Self::default()
            })
        } else if ct.starts_with("application/json") {
            Some(Self::default())
        } else {
            None
        }
    }

    pub fn feed(&mut self, mut data: &[u8]) {
        if !self.sse {
            if !self.skipping {
                if self.buf.len() + data.len() > MAX_JSON {
                    self.skipping = true;
                    self.buf = Vec::new();
                } else {
                    self.buf.extend_from_slice(data);
                }
            }
            return;
        }
        while let Some(i) = data.iter().position(|b| *b == b'\n') {
            let (line, rest) = data.split_at(i);
            data = &rest[1..];
            if !self.skipping && self.buf.len() + line.len() <= MAX_LINE {
                self.buf.extend_from_slice(line);
                let line = std::mem::take(&mut self.buf);
                self.sse_line(&line);
            }
            self.buf.clear();
            self.skipping = false;
        }
        if !self.skipping {
            if self.buf.len() + data.len() > MAX_LINE {
                self.skipping = true;
                self.buf = Vec::new();
            } else {
                self.buf.extend_from_slice(data);
            }
        }
    }

    /// The end of the body: a JSON body is read now.
    pub fn finish(&mut self) {
        if self.sse {
            let line = std::mem::take(&mut self.buf);
            if !self.skipping {
                self.sse_line(&line);
            }
        } else if !self.skipping {
            let body = std::mem::take(&mut self.buf);
            if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&body) {
                self.value(&value);
            }
        }
    }

    fn sse_line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
            self.value(&value);
        }
    }

    fn value(&mut self, v: &serde_json::Value) {
        for usage in [
            v.get("usage"),
            v.get("message").and_then(|m| m.get("usage")),
            v.get("response").and_then(|r| r.get("usage")),
        ]
        .into_iter()
        .flatten()
        {
            let number = |keys: &[&str]| {
                keys.iter()
                    .find_map(|k| usage.get(*k).and_then(serde_json::Value::as_u64))
            };
            // Counts are cumulative in a stream (`message_delta` repeats the total so far).
            if let Some(n) = number(&["input_tokens", "prompt_tokens"]) {
                self.input_tokens = Some(self.input_tokens.unwrap_or(0).max(n));
            }
            if let Some(n) = number(&["output_tokens", "completion_tokens"]) {
                self.output_tokens = Some(self.output_tokens.unwrap_or(0).max(n));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn anthropic_sse_split_anywhere() {
        let body = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\"}\n\nevent: message_delta\r\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\r\n\r\n";
        for split in 0..body.len() {
            let mut s = UsageSniffer::new("text/event-stream; charset=utf-8").unwrap();
            s.feed(&body[..split]);
            s.feed(&body[split..]);
            s.finish();
            assert_eq!(
                (s.input_tokens, s.output_tokens),
                (Some(25), Some(15)),
                "{split}"
            );
        }
    }

    #[test]
    fn json_bodies_openai_and_anthropic() {
        for (body, want) in [
            (
                &b"{\"usage\":{\"input_tokens\":3,\"output_tokens\":4}}"[..],
                (Some(3), Some(4)),
            ),
            (
                b"{\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":6}}",
                (Some(5), Some(6)),
            ),
            (
                b"{\"response\":{\"usage\":{\"input_tokens\":7,\"output_tokens\":8}}}",
                (Some(7), Some(8)),
            ),
            (b"not json", (None, None)),
        ] {
            let mut s = UsageSniffer::new("application/json").unwrap();
            s.feed(body);
            s.finish();
            assert_eq!((s.input_tokens, s.output_tokens), want);
        }
        assert!(UsageSniffer::new("text/html").is_none());
    }

    #[test]
    fn oversized_lines_are_skipped_not_buffered() {
        let mut s = UsageSniffer::new("text/event-stream").unwrap();
        let big = vec![b'x'; MAX_LINE + 10];
        s.feed(b"data: ");
        s.feed(&big);
        assert!(s.buf.capacity() <= MAX_LINE * 2);
        s.feed(b"\ndata: {\"usage\":{\"output_tokens\":2}}\n");
        s.finish();
        assert_eq!(s.output_tokens, Some(2));
    }
}
