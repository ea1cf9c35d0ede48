//! The output of a run: masked, kept in the run directory, and shown live.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use berth_core::event::{Event, EventLine, Stream};
use berth_core::mask::Masker;

use crate::SandboxError;

/// Lines longer than this are passed on in pieces, so memory stays bounded.
pub const MAX_LINE: usize = 64 * 1024;

/// Where a run's progress and output are shown: the terminal, JSON lines, or nowhere.
pub trait Reporter: Send + Sync {
    /// A lifecycle event (already written to `events.jsonl`).
    fn event(&self, event: &EventLine);
    /// A chunk of the command's output, masked, in the order it was produced on its stream.
    /// Only called when [`Reporter::wants_lines`] is false.
    fn output(&self, stream: Stream, data: &[u8]);
    /// Whether output should arrive as `Output` events, one per line, instead.
    fn wants_lines(&self) -> bool {
        false
    }
    /// Progress of an image pull; shown as a progress bar on a terminal, else ignored.
    fn pull_progress(&self, _progress: &berth_engine::PullProgress) {}
    /// Progress of a workspace transfer (`what`: "uploading the workspace"); `done == total`
    /// ends it. Shown as a progress bar on a terminal, else ignored.
    fn transfer_progress(&self, _what: &str, _done: u64, _total: u64) {}
}

/// One output stream's path: masker, log file, live view.
pub struct OutputPipe {
    stream: Stream,
    masker: Masker,
    log: std::io::BufWriter<std::fs::File>,
    log_path: std::path::PathBuf,
    reporter: Arc<dyn Reporter>,
    run_id: String,
    line: Vec<u8>,
    masked: Vec<u8>,
    bytes: u64,
    agent: Option<AgentStream>,
}

/// An agent's output being parsed into agent events, appended to `events.jsonl`.
struct AgentStream {
    parser: berth_agents::AgentParser,
    events: std::fs::File,
    events_path: std::path::PathBuf,
    session: Option<String>,
}

impl OutputPipe {
    pub fn create(
        stream: Stream,
        masker: Masker,
        log_path: &Path,
        reporter: Arc<dyn Reporter>,
        run_id: &str,
    ) -> Result<Self, SandboxError> {
        // Never through a link planted where the log goes.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(log_path)
            .map_err(|e| SandboxError::io(log_path, e))?;
        Ok(Self {
            stream,
            masker,
            log: std::io::BufWriter::with_capacity(256 * 1024, file),
            log_path: log_path.to_path_buf(),
            reporter,
            run_id: run_id.to_string(),
            line: Vec::new(),
            masked: Vec::with_capacity(64 * 1024),
            bytes: 0,
            agent: None,
        })
    }

    /// Reads this stream as an agent's output in `format`: agent events go to the reporter and
    /// to `events_path` instead of raw output (which stays in the log file).
    pub fn parse_agent(
        mut self,
        format: berth_agents::OutputFormat,
        events_path: &Path,
    ) -> Result<Self, SandboxError> {
        let events = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(events_path)
            .map_err(|e| SandboxError::io(events_path, e))?;
        self.agent = Some(AgentStream {
            parser: berth_agents::AgentParser::new(format),
            events,
            events_path: events_path.to_path_buf(),
            session: None,
        });
        Ok(self)
    }

    /// The agent's own verdict on the run, when this stream was an agent's and it gave one.
    pub fn agent_outcome(&self) -> Option<berth_agents::AgentOutcome> {
        self.agent.as_ref().and_then(|a| a.parser.outcome())
    }

    /// The agent's session id, when it reported one.
    pub fn agent_session(&self) -> Option<String> {
        self.agent.as_ref().and_then(|a| a.session.clone())
    }

    fn emit_agent_events(
        &mut self,
        events: Vec<berth_agents::AgentEvent>,
    ) -> Result<(), SandboxError> {
        let Some(agent) = self.agent.as_mut() else {
            return Ok(());
        };
        for event in events {
            if let berth_agents::AgentEvent::SessionStarted {
                session_id: Some(id),
                ..
            } = &event
            {
                agent.session.get_or_insert_with(|| id.clone());
            }
            let line = EventLine {
                ts: crate::clock::now_rfc3339(),
                run_id: self.run_id.clone(),
                event: Event::Agent {
                    agent: serde_json::to_value(&event).unwrap_or_default(),
                },
            };
            let mut json = serde_json::to_vec(&line)
                .map_err(|e| SandboxError::io(&agent.events_path, std::io::Error::other(e)))?;
            json.push(b'\n');
            // One write per line on an O_APPEND file: lines never interleave with the run's
            // lifecycle events written by the other handle.
            agent
                .events
                .write_all(&json)
                .map_err(|e| SandboxError::io(&agent.events_path, e))?;
            self.reporter.event(&line);
        }
        Ok(())
    }

    /// Bytes received so far (before masking).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn push(&mut self, data: &[u8]) -> Result<(), SandboxError> {
        self.bytes += data.len() as u64;
        let mut masked = std::mem::take(&mut self.masked);
        masked.clear();
        self.masker.push(data, &mut masked);
        let result = self.pass_on(&masked);
        self.masked = masked;
        result
    }

    /// Flushes everything held back; the stream has ended.
    pub fn finish(&mut self) -> Result<(), SandboxError> {
        let mut rest = Vec::new();
        self.masker.finish(&mut rest);
        self.pass_on(&rest)?;
        if let Some(agent) = self.agent.as_mut() {
            let events = agent.parser.finish();
            self.emit_agent_events(events)?;
        }
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.emit_line(&line);
        }
        self.log
            .flush()
            .map_err(|e| SandboxError::io(&self.log_path, e))
    }

    fn pass_on(&mut self, masked: &[u8]) -> Result<(), SandboxError> {
        if masked.is_empty() {
            return Ok(());
        }
        self.log
            .write_all(masked)
            .map_err(|e| SandboxError::io(&self.log_path, e))?;
        if let Some(agent) = self.agent.as_mut() {
            let events = agent.parser.push(masked);
            return self.emit_agent_events(events);
        }
        if !self.reporter.wants_lines() {
            self.reporter.output(self.stream, masked);
            return Ok(());
        }
        // A line ends at its newline or at MAX_LINE bytes, whichever comes first, however the
        // output was cut into chunks: the same bytes always make the same events, which is what
        // lets a restarted runner replay a run's output and skip what the server already has.
        let mut rest = masked;
        while !rest.is_empty() {
            let room = (MAX_LINE - self.line.len()).min(rest.len());
            let take = rest[..room]
                .iter()
                .position(|b| *b == b'\n')
                .map_or(room, |pos| pos + 1);
            let (head, tail) = rest.split_at(take);
            rest = tail;
            let complete = head.ends_with(b"\n") || self.line.len() + head.len() == MAX_LINE;
            if !complete {
                self.line.extend_from_slice(head);
            } else if self.line.is_empty() {
                self.emit_line(head);
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(head);
                self.emit_line(&line);
            }
        }
        Ok(())
    }

    fn emit_line(&self, line: &[u8]) {
        // Text unless it is not UTF-8 or holds a NUL (which no store's text column keeps).
        let event = match std::str::from_utf8(line).ok().filter(|t| !t.contains('\0')) {
            Some(text) => Event::Output {
                stream: self.stream,
                text: Some(text.to_string()),
                data_base64: None,
            },
            None => Event::Output {
                stream: self.stream,
                text: None,
                data_base64: Some(base64::engine::general_purpose::STANDARD.encode(line)),
            },
        };
        self.reporter.event(&EventLine {
            ts: crate::clock::now_rfc3339(),
            run_id: self.run_id.clone(),
            event,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recording {
        lines: bool,
        events: Mutex<Vec<Event>>,
        raw: Mutex<Vec<u8>>,
    }

    impl Reporter for Recording {
        fn event(&self, event: &EventLine) {
            self.events.lock().unwrap().push(event.event.clone());
        }
        fn output(&self, _stream: Stream, data: &[u8]) {
            self.raw.lock().unwrap().extend_from_slice(data);
        }
        fn wants_lines(&self) -> bool {
            self.lines
        }
    }

    fn pipe(reporter: Arc<Recording>, secrets: &[&str], dir: &Path) -> OutputPipe {
        OutputPipe::create(
            Stream::Stdout,
            Masker::new(secrets),
            &dir.join("out.log"),
            reporter,
            "r",
        )
        .unwrap()
    }

    #[test]
    fn raw_output_is_masked_in_log_and_live() {
        let dir = tempfile::tempdir().unwrap();
        let rec = Arc::new(Recording::default());
        let mut p = pipe(rec.clone(), &["s3cret"], dir.path());
        p.push(b"token s3c").unwrap();
        p.push(b"ret end\n").unwrap();
        p.finish().unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("out.log")).unwrap(),
            b"token *** end\n"
        );
        assert_eq!(*rec.raw.lock().unwrap(), b"token *** end\n");
    }

    #[test]
    fn lines_become_events_and_long_lines_are_split() {
        let dir = tempfile::tempdir().unwrap();
        let rec = Arc::new(Recording {
            lines: true,
            ..Default::default()
        });
        let mut p = pipe(rec.clone(), &[], dir.path());
        p.push(b"one\ntw").unwrap();
        p.push(b"o\n\xff\xfe\n").unwrap();
        p.push(&vec![b'x'; MAX_LINE + 10]).unwrap();
        p.finish().unwrap();
        let events = rec.events.lock().unwrap();
        let texts: Vec<Option<&str>> = events
            .iter()
            .map(|e| match e {
                Event::Output { text, .. } => text.as_deref(),
                _ => None,
            })
            .collect();
        assert_eq!(texts[0], Some("one\n"));
        assert_eq!(texts[1], Some("two\n"));
        assert!(matches!(&events[2], Event::Output { data_base64: Some(b), .. } if b == "//4K"));
        assert_eq!(texts[3].map(str::len), Some(MAX_LINE));
        assert_eq!(texts[4].map(str::len), Some(10));
        assert_eq!(events.len(), 5);
    }

    /// The events of a stream depend on its bytes only, not on how they were cut into chunks.
    #[test]
    fn the_same_bytes_make_the_same_lines_whatever_the_chunks() {
        let mut data = b"short\n".to_vec();
        data.extend(vec![b'a'; MAX_LINE - 3]);
        data.extend(b"bc\ndef\n");
        data.extend(vec![b'y'; 2 * MAX_LINE + 5]);
        data.extend(b"\ntail");
        let lines = |chunk: usize| {
            let dir = tempfile::tempdir().unwrap();
            let rec = Arc::new(Recording {
                lines: true,
                ..Default::default()
            });
            let mut p = pipe(rec.clone(), &[], dir.path());
            for piece in data.chunks(chunk) {
                p.push(piece).unwrap();
            }
            p.finish().unwrap();
            let events = rec.events.lock().unwrap().clone();
            events
        };
        let whole = lines(data.len());
        assert_eq!(whole.len(), 7, "{whole:?}");
        for chunk in [1, 7, 4096, MAX_LINE - 1, MAX_LINE + 1] {
            assert_eq!(lines(chunk), whole, "chunks of {chunk}");
        }
    }
}
