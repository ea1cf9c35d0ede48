//! Server-sent events as the WHATWG HTML standard parses them ("Server-sent events", parsing an
//! event stream): bytes in, events out, the bytes arriving in chunks split anywhere.
//!
//! Work is linear: each chunk is scanned for line ends once, a line is read once when it ends,
//! and only the unfinished line at a chunk's end is kept, never scanned again when more bytes
//! arrive. Memory is bounded: a line longer than the limit, or an event whose data
//! grows past it, is an error naming the limit. That event is left out, and parsing goes on with
//! the next one, so a hostile or broken server cannot make the client hold more than that.

use std::time::Duration;

/// The default limit for one line and for one event's data. An output event carries at most
/// 64 KiB of output, a few times that as escaped JSON; only an unusual lifecycle event (say, a
/// thousand artifact paths near the file system's length limit) could be left out.
pub const DEFAULT_LIMIT: usize = 1 << 20;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event` field; `message` when the event named none.
    pub kind: String,
    /// The `data` fields, joined with newlines. Invalid UTF-8 becomes U+FFFD.
    pub data: String,
    /// The event's own `id` field (the last, if there were several).
    pub id: Option<String>,
}

/// An event left out because it is over the limit; the stream goes on after it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("a line of the server's event stream is longer than the limit of {limit} bytes: the event it belongs to is left out")]
    LineTooLong { limit: usize },
    #[error("an event of the server's event stream has more than the limit of {limit} bytes of data: it is left out")]
    EventTooLarge { limit: usize },
}

/// An incremental parser of one event stream. Feed it with [`SseParser::push`]; whatever is
/// unfinished when the stream ends is discarded, as the standard says.
#[derive(Debug)]
pub struct SseParser {
    limit: usize,
    /// The start of a line whose end has not arrived yet (at most `limit` bytes).
    line: Vec<u8>,
    /// The last chunk ended with `\r`: a `\n` at the start of the next belongs to that line end.
    after_cr: bool,
    /// The current line is over the limit: its bytes are dropped until it ends.
    skipping_line: bool,
    /// The current event is left out: its lines are dropped until the blank line that ends it.
    skipping_event: bool,
    /// No line has ended yet: the first may start with a byte order mark, which is dropped.
    first_line: bool,
    /// The event being read: its type, data (each value followed by `\n`) and id.
    kind: String,
    data: Vec<u8>,
    id: Option<String>,
    /// The id of the last event dispatched that had one (ids carry over to later events).
    last_event_id: String,
    /// The reconnection time the server asked for with `retry`.
    retry: Option<Duration>,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::with_limit(DEFAULT_LIMIT)
    }
}

impl SseParser {
    /// A parser that holds at most `limit` bytes of a line and of an event's data.
    pub fn with_limit(limit: usize) -> Self {
        Self {
            limit,
            line: Vec::new(),
            after_cr: false,
            skipping_line: false,
            skipping_event: false,
            first_line: true,
            kind: String::new(),
            data: Vec::new(),
            id: None,
            last_event_id: String::new(),
            retry: None,
        }
    }

    /// The id a reconnection should send as `Last-Event-ID` (empty: none).
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    /// The reconnection time the server asked for with a `retry` field, if it did.
    pub fn retry(&self) -> Option<Duration> {
        self.retry
    }

    /// Feeds the next bytes of the stream; returns the events they complete, in order, with an
    /// error in the place of each event left out.
    pub fn push(&mut self, mut bytes: &[u8]) -> Vec<Result<SseEvent, SseError>> {
        let mut out = Vec::new();
        if bytes.is_empty() {
            return out;
        }
        if std::mem::take(&mut self.after_cr) {
            bytes = bytes.strip_prefix(b"\n").unwrap_or(bytes);
        }
        while let Some(end) = bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
            let piece = &bytes[..end];
            let cr = bytes[end] == b'\r';
            bytes = &bytes[end + 1..];
            if cr {
                match bytes.first() {
                    Some(b'\n') => bytes = &bytes[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            self.end_line(piece, &mut out);
        }
        self.continue_line(bytes, &mut out);
        out
    }

    /// Keeps the start of a line whose end is in a later chunk.
    fn continue_line(&mut self, bytes: &[u8], out: &mut Vec<Result<SseEvent, SseError>>) {
        if bytes.is_empty() || self.skipping_line {
            return;
        }
        if self.line.len() + bytes.len() > self.limit {
            self.line_too_long(out);
            self.skipping_line = true;
            return;
        }
        reserve_within(&mut self.line, bytes.len(), self.limit);
        self.line.extend_from_slice(bytes);
    }

    /// A line ended; `piece` is its part in the current chunk.
    fn end_line(&mut self, piece: &[u8], out: &mut Vec<Result<SseEvent, SseError>>) {
        let first = std::mem::take(&mut self.first_line);
        if std::mem::take(&mut self.skipping_line) {
            return;
        }
        if self.line.len() + piece.len() > self.limit {
            self.line_too_long(out);
            return;
        }
        // The line is in the chunk alone, or starts in `self.line` (taken, to lend it out).
        let mut held = std::mem::take(&mut self.line);
        let line = if held.is_empty() {
            piece
        } else {
            reserve_within(&mut held, piece.len(), self.limit);
            held.extend_from_slice(piece);
            &held[..]
        };
        let line = match first {
            true => line.strip_prefix("\u{feff}".as_bytes()).unwrap_or(line),
            false => line,
        };
        self.process_line(line, out);
        held.clear();
        self.line = held;
    }

    fn line_too_long(&mut self, out: &mut Vec<Result<SseEvent, SseError>>) {
        self.line.clear();
        self.drop_event();
        out.push(Err(SseError::LineTooLong { limit: self.limit }));
    }

    /// Forgets the event being read and skips the rest of it.
    fn drop_event(&mut self) {
        self.skipping_event = true;
        self.kind.clear();
        self.data.clear();
        self.id = None;
    }

    fn process_line(&mut self, line: &[u8], out: &mut Vec<Result<SseEvent, SseError>>) {
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if self.skipping_event || line[0] == b':' {
            return;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        match name {
            b"event" => self.kind = String::from_utf8_lossy(value).into_owned(),
            b"data" => {
                if self.data.len() + value.len() + 1 > self.limit {
                    self.drop_event();
                    out.push(Err(SseError::EventTooLarge { limit: self.limit }));
                    return;
                }
                reserve_within(&mut self.data, value.len() + 1, self.limit);
                self.data.extend_from_slice(value);
                self.data.push(b'\n');
            }
            b"id" if !value.contains(&0) => {
                self.id = Some(String::from_utf8_lossy(value).into_owned());
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                // Digits only, so UTF-8; a number too large for u64 is ignored like any other.
                if let Some(ms) = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()) {
                    self.retry = Some(Duration::from_millis(ms));
                }
            }
            _ => {}
        }
    }

    /// A blank line: the event read so far is dispatched, if it has data.
    fn dispatch(&mut self, out: &mut Vec<Result<SseEvent, SseError>>) {
        if std::mem::take(&mut self.skipping_event) {
            return;
        }
        let kind = std::mem::take(&mut self.kind);
        let id = self.id.take();
        if let Some(id) = &id {
            self.last_event_id.clone_from(id);
        }
        if self.data.is_empty() {
            return;
        }
        self.data.pop(); // the `\n` after the last value
        let data = String::from_utf8_lossy(&self.data).into_owned();
        self.data.clear();
        out.push(Ok(SseEvent {
            kind: if kind.is_empty() {
                "message".into()
            } else {
                kind
            },
            data,
            id,
        }));
    }
}

/// Makes room for `additional` more bytes without the capacity passing `limit`, which growth by
/// doubling alone would; the caller has checked that the length stays within it.
fn reserve_within(buffer: &mut Vec<u8>, additional: usize, limit: usize) {
    let needed = buffer.len() + additional;
    if needed > buffer.capacity() {
        let target = needed.max(buffer.capacity().saturating_mul(2)).min(limit);
        buffer.reserve_exact(target.max(needed) - buffer.len());
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn event(kind: &str, data: &str, id: Option<&str>) -> Result<SseEvent, SseError> {
        Ok(SseEvent {
            kind: kind.into(),
            data: data.into(),
            id: id.map(str::to_string),
        })
    }

    /// The stream fed in one chunk, and byte by byte: both must give `expected`.
    fn check(stream: &str, expected: &[Result<SseEvent, SseError>]) {
        check_with_limit(stream.as_bytes(), DEFAULT_LIMIT, expected);
    }

    fn check_with_limit(stream: &[u8], limit: usize, expected: &[Result<SseEvent, SseError>]) {
        let whole = SseParser::with_limit(limit).push(stream);
        assert_eq!(whole, expected, "in one chunk: {stream:?}");
        let mut parser = SseParser::with_limit(limit);
        let bytewise: Vec<_> = stream.iter().flat_map(|b| parser.push(&[*b])).collect();
        assert_eq!(bytewise, expected, "byte by byte: {stream:?}");
    }

    #[test]
    fn every_line_end_ends_a_line() {
        for end in ["\n", "\r\n", "\r"] {
            let stream = format!("event: a{end}data: one{end}data: two{end}{end}");
            check(&stream, &[event("a", "one\ntwo", None)]);
        }
        // Mixed in one stream.
        check(
            "data: a\r\ndata: b\rdata: c\n\r\n",
            &[event("message", "a\nb\nc", None)],
        );
    }

    #[test]
    fn a_crlf_split_between_chunks_is_one_line_end() {
        let mut parser = SseParser::default();
        assert_eq!(parser.push(b"data: a\r"), []);
        // Had the `\n` counted as a second line end, this would be a blank line: an event.
        assert_eq!(parser.push(b"\ndata: b\r"), []);
        assert_eq!(parser.push(b""), []);
        assert_eq!(parser.push(b"\n\r\n"), [event("message", "a\nb", None)]);
        // A lone `\r` at a chunk's end followed by another line is a line end all the same.
        let mut parser = SseParser::default();
        assert_eq!(parser.push(b"data: x\r"), []);
        assert_eq!(parser.push(b"\r"), [event("message", "x", None)]);
    }

    #[test]
    fn comments_are_ignored() {
        check(": keep-alive\n\n", &[]);
        check(
            ":first\ndata: a\n: between\ndata: b\n:\n\n",
            &[event("message", "a\nb", None)],
        );
        // A comment is not a blank line: it does not dispatch.
        check("data: a\n: c\n", &[]);
    }

    #[test]
    fn fields_event_data_id_and_retry() {
        let mut parser = SseParser::default();
        let events = parser.push(b"retry: 2500\nid: 7\nevent: stdout\ndata: {\"x\":1}\n\n");
        assert_eq!(events, [event("stdout", "{\"x\":1}", Some("7"))]);
        assert_eq!(parser.retry(), Some(Duration::from_millis(2500)));
        assert_eq!(parser.last_event_id(), "7");
        // Unknown fields are ignored; so is a `retry` that is not digits only.
        let events = parser.push(b"retry: 1s\nretry:\nfoo: bar\ndata: x\n\n");
        assert_eq!(events, [event("message", "x", None)]);
        assert_eq!(parser.retry(), Some(Duration::from_millis(2500)));
        // The last id carries over to later events; an id with a NUL is ignored.
        assert_eq!(parser.last_event_id(), "7");
        assert_eq!(
            parser.push(b"id: 8\0\ndata: y\n\nid: 9\nid: 10\ndata: z\n\n"),
            [
                event("message", "y", None),
                event("message", "z", Some("10"))
            ]
        );
        assert_eq!(parser.last_event_id(), "10");
        // An empty id resets it.
        assert_eq!(
            parser.push(b"id\ndata: w\n\n"),
            [event("message", "w", Some(""))]
        );
        assert_eq!(parser.last_event_id(), "");
    }

    #[test]
    fn data_lines_are_joined_with_newlines() {
        check(
            "data: one\ndata:\ndata: three\n\n",
            &[event("message", "one\n\nthree", None)],
        );
        // Trailing empty data lines are kept, but for the last newline.
        check("data: a\ndata\n\n", &[event("message", "a\n", None)]);
    }

    #[test]
    fn a_field_without_a_colon_has_an_empty_value() {
        check("data\n\n", &[event("message", "", None)]);
        check(
            "event: x\nevent\ndata: d\n\n",
            &[event("message", "d", None)],
        );
        // A field name is compared whole.
        check("data \n\n", &[]);
    }

    #[test]
    fn one_leading_space_after_the_colon_is_stripped() {
        check(
            "event:  two\ndata:no-space\ndata:  two spaces\ndata: trailing \n\n",
            &[event(" two", "no-space\n two spaces\ntrailing ", None)],
        );
        check("data:\t tab\n\n", &[event("message", "\t tab", None)]);
        check("data: a: b\n\n", &[event("message", "a: b", None)]);
    }

    #[test]
    fn a_blank_line_dispatches_and_resets_the_event() {
        check(
            "event: a\ndata: 1\n\ndata: 2\n\n",
            &[event("a", "1", None), event("message", "2", None)],
        );
        // Without data there is no event, and its type does not carry over.
        check(
            "event: lonely\n\n\n\ndata: x\n\n",
            &[event("message", "x", None)],
        );
        // An id without data still becomes the last event id.
        let mut parser = SseParser::default();
        assert_eq!(parser.push(b"id: 4\n\n"), []);
        assert_eq!(parser.last_event_id(), "4");
    }

    #[test]
    fn an_unterminated_event_at_the_end_is_discarded() {
        check("data: a\n\ndata: b\n", &[event("message", "a", None)]);
        check("data: a\n\ndata: b", &[event("message", "a", None)]);
        // Its id is not taken either.
        let mut parser = SseParser::default();
        parser.push(b"id: 1\ndata: a\n\nid: 2\ndata: b\n");
        assert_eq!(parser.last_event_id(), "1");
    }

    #[test]
    fn a_byte_order_mark_at_the_start_is_dropped() {
        check("\u{feff}data: a\n\n", &[event("message", "a", None)]);
        // Anywhere else it belongs to the line.
        check(
            "data: a\n\n\u{feff}data: b\n\n",
            &[event("message", "a", None)],
        );
    }

    #[test]
    fn invalid_utf8_becomes_replacement_characters() {
        check_with_limit(
            b"event: \xff\ndata: a\xfeb\n\n",
            DEFAULT_LIMIT,
            &[event("\u{fffd}", "a\u{fffd}b", None)],
        );
    }

    #[test]
    fn a_line_over_the_limit_leaves_its_event_out() {
        let limit = 16;
        let at_limit = format!("data:{}", "x".repeat(11)); // 16 bytes
        let over = format!("data:{}", "x".repeat(12)); // 17 bytes
        check_with_limit(
            format!("{at_limit}\n\n").as_bytes(),
            limit,
            &[event("message", &"x".repeat(11), None)],
        );
        check_with_limit(
            format!("id: 1\nevent: a\n{over}\ndata: rest\nid: 2\n\ndata: next\n\n").as_bytes(),
            limit,
            &[
                Err(SseError::LineTooLong { limit }),
                event("message", "next", None),
            ],
        );
        // A long comment counts as well, and the lines before it in the event are forgotten.
        check_with_limit(
            format!("data: a\n:{}\n\ndata: b\n\n", "c".repeat(20)).as_bytes(),
            limit,
            &[
                Err(SseError::LineTooLong { limit }),
                event("message", "b", None),
            ],
        );
        let message = SseError::LineTooLong { limit: 1 << 20 }.to_string();
        assert!(message.contains("limit of 1048576 bytes"), "{message}");
    }

    #[test]
    fn an_event_over_the_limit_is_left_out() {
        let limit = 16;
        // The data buffer (values plus a newline each) may hold `limit` bytes.
        check_with_limit(
            b"data: 1234567\ndata: 1234567\n\n",
            limit,
            &[event("message", "1234567\n1234567", None)],
        );
        // Each line fits; the data together (values plus a newline each) does not.
        check_with_limit(
            b"data: 12345678\ndata: 12345678\nevent: big\n\ndata: 123456789\n\n",
            limit,
            &[
                Err(SseError::EventTooLarge { limit }),
                event("message", "123456789", None),
            ],
        );
        let message = SseError::EventTooLarge { limit }.to_string();
        assert!(message.contains("limit of 16 bytes"), "{message}");
    }

    #[test]
    fn an_endless_line_fails_without_growing_past_the_limit() {
        let mut parser = SseParser::default();
        let chunk = vec![b'x'; 64 * 1024 + 1];
        let mut errors = Vec::new();
        // 64 MiB without a line end: reported once, never buffered beyond the limit.
        for _ in 0..1024 {
            errors.extend(parser.push(&chunk));
            assert!(
                parser.line.capacity() <= DEFAULT_LIMIT,
                "{}",
                parser.line.capacity()
            );
        }
        assert_eq!(
            errors,
            [Err(SseError::LineTooLong {
                limit: DEFAULT_LIMIT
            })]
        );
        // The stream goes on after that line and its event end.
        assert_eq!(
            parser.push(b"\n\ndata: after\n\n"),
            [event("message", "after", None)]
        );
        assert!(parser.line.capacity() <= DEFAULT_LIMIT);
    }

    #[test]
    fn data_just_under_the_limit_never_grows_past_it() {
        // Lines of odd sizes, so doubling alone would overshoot a limit that is no power of two.
        let limit = 1_000_003;
        let mut parser = SseParser::with_limit(limit);
        let line = format!("data:{}\n", "y".repeat(70_000));
        for _ in 0..14 {
            assert_eq!(parser.push(line.as_bytes()), []);
            assert!(
                parser.data.capacity() <= limit,
                "{}",
                parser.data.capacity()
            );
            assert!(
                parser.line.capacity() <= limit,
                "{}",
                parser.line.capacity()
            );
        }
        assert_eq!(
            parser.push(line.as_bytes()),
            [Err(SseError::EventTooLarge { limit })]
        );
        assert!(parser.data.capacity() <= limit);
    }

    /// The stream parsed as a whole by the standard's steps, written plainly (no chunks, no
    /// limit): what the incremental parser must agree with.
    fn reference(stream: &[u8]) -> Vec<Result<SseEvent, SseError>> {
        let stream = stream.strip_prefix("\u{feff}".as_bytes()).unwrap_or(stream);
        let mut lines = Vec::new();
        let mut start = 0;
        let mut i = 0;
        while i < stream.len() {
            match stream[i] {
                b'\r' if stream.get(i + 1) == Some(&b'\n') => {
                    lines.push(&stream[start..i]);
                    i += 2;
                    start = i;
                }
                b'\r' | b'\n' => {
                    lines.push(&stream[start..i]);
                    i += 1;
                    start = i;
                }
                _ => i += 1,
            }
        }
        let (mut kind, mut data, mut id) = (String::new(), None::<String>, None);
        let mut events = Vec::new();
        for line in lines {
            let line = String::from_utf8_lossy(line);
            if line.is_empty() {
                let kind = std::mem::take(&mut kind);
                if let Some(data) = data.take() {
                    let kind = if kind.is_empty() {
                        "message".into()
                    } else {
                        kind
                    };
                    events.push(Ok(SseEvent {
                        kind,
                        data,
                        id: id.take(),
                    }));
                }
                id = None;
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (name, value) = line.split_once(':').unwrap_or((&line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match name {
                "event" => kind = value.to_string(),
                "data" => match &mut data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => data = Some(value.to_string()),
                },
                "id" if !value.contains('\0') => id = Some(value.to_string()),
                _ => {}
            }
        }
        events
    }

    /// Streams built from the pieces that matter to the parser, so that field names, colons,
    /// spaces and every kind of line end meet in all orders.
    fn stream() -> impl Strategy<Value = Vec<u8>> {
        let token = prop_oneof![
            Just(&b"data"[..]),
            Just(&b"event"[..]),
            Just(&b"id"[..]),
            Just(&b"retry"[..]),
            Just(&b":"[..]),
            Just(&b" "[..]),
            Just(&b"\n"[..]),
            Just(&b"\r"[..]),
            Just(&b"\r\n"[..]),
            Just(&b"\n\n"[..]),
            Just(&b"x"[..]),
            Just(&b"42"[..]),
            Just(&b"\0"[..]),
            Just("é".as_bytes()),
            Just(&b"\xff"[..]),
            Just("\u{feff}".as_bytes()),
        ];
        proptest::collection::vec(token, 0..80).prop_map(|tokens| tokens.concat())
    }

    /// Cut points in a stream, as fractions of its length.
    fn cuts() -> impl Strategy<Value = Vec<f64>> {
        proptest::collection::vec(0.0..1.0f64, 0..12)
    }

    fn in_chunks(stream: &[u8], cuts: &[f64], limit: usize) -> Vec<Result<SseEvent, SseError>> {
        let mut points: Vec<usize> = cuts
            .iter()
            .map(|f| (f * stream.len() as f64) as usize)
            .collect();
        points.push(stream.len());
        points.sort_unstable();
        let mut parser = SseParser::with_limit(limit);
        let mut start = 0;
        let mut events = Vec::new();
        for end in points {
            events.extend(parser.push(&stream[start..end]));
            start = end;
        }
        events
    }

    proptest! {
        #[test]
        fn chunks_split_anywhere_give_the_same_events(stream in stream(), cuts in cuts()) {
            let whole = SseParser::default().push(&stream);
            prop_assert_eq!(&whole, &reference(&stream));
            prop_assert_eq!(&in_chunks(&stream, &cuts, DEFAULT_LIMIT), &whole);
        }

        #[test]
        fn chunks_split_anywhere_give_the_same_errors(stream in stream(), cuts in cuts()) {
            // A small limit, so lines and events over it are common.
            let whole = SseParser::with_limit(12).push(&stream);
            prop_assert_eq!(&in_chunks(&stream, &cuts, 12), &whole);
        }
    }
}
