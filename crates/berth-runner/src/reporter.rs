//! Sends a run's events to the coordinator in batches: output lines and lifecycle events,
//! flushed every 100 ms or 500 events, and the start acknowledgement with the container id.

use std::sync::Arc;
use std::time::Duration;

use berth_api::{EventIn, EventsBody, StartBody};
use berth_core::event::{Event, EventLine, Stream};
use berth_sandbox::Reporter;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::mpsc::{Receiver, Sender};
use tokio::sync::oneshot;

use crate::journal::RunJournal;
use crate::Shared;

pub const BATCH_EVENTS: usize = 500;
/// Events waiting for the batcher. When the server is slow or away the queue fills and the
/// command's output waits (the pipes apply back-pressure), so the runner's memory stays bounded.
pub const QUEUE_EVENTS: usize = 4096;
/// Bytes of event data per batch: output lines are at most 64 KiB, so batches stay far below the
/// server's body limit for events even when JSON escaping inflates them.
const BATCH_BYTES: usize = 256 * 1024;
const BATCH_DELAY: Duration = Duration::from_millis(100);

pub enum Message {
    Event(EventIn),
    /// Send everything buffered, then answer.
    Flush(oneshot::Sender<()>),
}

/// The run's reporter: forwards events to the batcher task, and fences the start.
pub struct ServerReporter {
    tx: Sender<Message>,
    shared: Arc<Shared>,
    run_id: String,
    lease_token: String,
    /// Events of the command's stdout and stderr still to leave out: a run adopted after a
    /// restart reads its output again from the start, and the server has these already.
    skip: std::sync::Mutex<[u64; 2]>,
}

pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

impl ServerReporter {
    pub fn new(tx: Sender<Message>, shared: Arc<Shared>, run_id: &str, lease_token: &str) -> Self {
        Self {
            tx,
            shared,
            run_id: run_id.to_string(),
            lease_token: lease_token.to_string(),
            skip: std::sync::Mutex::new([0, 0]),
        }
    }

    /// The reporter of an adopted run, which leaves out the first `stdout` and `stderr` events
    /// of those streams (the server has them).
    pub fn resuming(self, stdout: u64, stderr: u64) -> Self {
        Self {
            skip: std::sync::Mutex::new([stdout, stderr]),
            ..self
        }
    }

    /// Whether `event` is one the server already has: counted off the events to skip.
    fn already_sent(&self, event: &Event) -> bool {
        let stream = match event {
            Event::Output {
                stream: Stream::Stdout,
                ..
            }
            | Event::Agent { .. } => 0,
            Event::Output {
                stream: Stream::Stderr,
                ..
            } => 1,
            _ => return false,
        };
        let Ok(mut skip) = self.skip.lock() else {
            return false;
        };
        if skip[stream] == 0 {
            return false;
        }
        skip[stream] -= 1;
        true
    }

    /// Fencing: the container exists and is not started. The server must confirm, now, that
    /// this runner still holds the lease (it records the start and renews the lease in the same
    /// step). Otherwise the run is interrupted before its command starts, and the sandbox removes
    /// the container: a runner the server wrote off (paused, partitioned) never runs a command
    /// that was handed to another runner.
    fn fence(&self, container_id: Option<String>) {
        let confirm = confirm_lease(&self.shared, &self.run_id, &self.lease_token, container_id);
        let refusal = match tokio::runtime::Handle::try_current() {
            // Called on the sandbox's task: block it until the server answers.
            Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| handle.block_on(confirm))
            }
            _ => Some("the runner cannot confirm its lease here"),
        };
        if let Some(why) = refusal {
            if let Ok(mut map) = self.shared.leases.lock() {
                if let Some(lease) = map.get_mut(&self.run_id) {
                    lease.interrupted = true;
                    let _ = lease.interrupt.send(why);
                }
            }
        }
    }
}

/// Records the start under the lease; `Some(reason)` when the run must not start.
async fn confirm_lease(
    shared: &Shared,
    run_id: &str,
    lease_token: &str,
    container_id: Option<String>,
) -> Option<&'static str> {
    let body = StartBody {
        lease_token: lease_token.to_string(),
        container_id,
    };
    let path = format!("/api/v1/runs/{run_id}/start");
    match shared.post_retrying(&path, &body).await {
        Ok(()) => {
            if let Ok(mut map) = shared.leases.lock() {
                if let Some(lease) = map.get_mut(run_id) {
                    lease.fenced = true;
                }
            }
            None
        }
        Err(e) if e.status().is_some() => {
            tracing::warn!(run = %run_id, error = %e, "the server did not confirm the lease; the container is removed unstarted");
            Some("the server (lease revoked)")
        }
        Err(e) => {
            tracing::warn!(run = %run_id, error = %e, "the lease could not be confirmed before the runner stopped; the container is removed unstarted");
            Some("the runner's shutdown")
        }
    }
}

impl Reporter for ServerReporter {
    fn event(&self, line: &EventLine) {
        if self.already_sent(&line.event) {
            return;
        }
        match &line.event {
            Event::ContainerCreated { container_id, .. }
            | Event::HeldContainer { container_id, .. } => self.fence(Some(container_id.clone())),
            _ => {}
        }
        let event = match &line.event {
            Event::Output {
                stream,
                text,
                data_base64,
            } => {
                let kind = match (stream, text.is_some()) {
                    (Stream::Stdout, true) => "stdout",
                    (Stream::Stderr, true) => "stderr",
                    (Stream::Stdout, false) => "stdout_base64",
                    (Stream::Stderr, false) => "stderr_base64",
                };
                EventIn {
                    ts: now_ms(),
                    kind: kind.into(),
                    data: text
                        .clone()
                        .or_else(|| data_base64.clone())
                        .unwrap_or_default(),
                }
            }
            other => {
                let json = serde_json::to_value(other).unwrap_or_default();
                let kind = json
                    .get("event")
                    .and_then(|k| k.as_str())
                    .unwrap_or("event")
                    .to_string();
                EventIn {
                    ts: now_ms(),
                    kind,
                    data: json.to_string(),
                }
            }
        };
        match self.tx.try_send(Message::Event(event)) {
            Ok(()) | Err(TrySendError::Closed(_)) => {}
            Err(TrySendError::Full(message)) => {
                // Called from the output pump, a task on the runner's multi-threaded runtime:
                // block this worker until the batcher makes room, letting other tasks move on.
                let send = || {
                    let _ = self.tx.blocking_send(message);
                };
                match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
                    Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
                        tokio::task::block_in_place(send)
                    }
                    // Outside a runtime, blocking is plain; a single-threaded runtime must not block.
                    Err(_) => send(),
                    Ok(_) => tracing::warn!(
                        "event queue full on a single-threaded runtime; event dropped"
                    ),
                }
            }
        }
    }

    fn output(&self, _stream: Stream, _data: &[u8]) {}

    fn wants_lines(&self) -> bool {
        true
    }
}

/// Batches events to the server until the channel closes. Acknowledges the start when the
/// `started` event goes by. On a refused lease, interrupts the run. Every event goes to the
/// run's journal before it is sent; once the server is unreachable while the runner stops, the
/// rest only goes there. Returns the journal, and whether it still holds events for the server.
pub async fn batcher(
    shared: Arc<Shared>,
    run_id: String,
    lease_token: String,
    journal: Option<RunJournal>,
    rx: Receiver<Message>,
) -> (Option<RunJournal>, bool) {
    batcher_from(shared, run_id, lease_token, journal, rx, 1).await
}

/// [`batcher`], numbering the events from `first_seq` (an adopted run goes on where the server's
/// events end).
pub async fn batcher_from(
    shared: Arc<Shared>,
    run_id: String,
    lease_token: String,
    journal: Option<RunJournal>,
    mut rx: Receiver<Message>,
    first_seq: i64,
) -> (Option<RunJournal>, bool) {
    let mut batch = Batcher {
        shared,
        run_id,
        lease_token,
        buffer: Vec::new(),
        next_seq: first_seq,
        lease_lost: false,
        offline: false,
        journal,
        container_id: None,
        last_send: tokio::time::Instant::now() - BATCH_DELAY,
    };
    loop {
        let message = if batch.buffer.is_empty() {
            rx.recv().await
        } else {
            match tokio::time::timeout(BATCH_DELAY, rx.recv()).await {
                Ok(m) => m,
                Err(_) => {
                    batch.send().await;
                    continue;
                }
            }
        };
        match message {
            None => {
                batch.send().await;
                if let Some(journal) = batch.journal.as_mut() {
                    journal.close();
                }
                return (batch.journal, batch.offline);
            }
            Some(Message::Flush(done)) => {
                batch.send().await;
                let _ = done.send(());
            }
            Some(Message::Event(event)) => {
                if event.kind == "container_created" {
                    batch.container_id = serde_json::from_str::<serde_json::Value>(&event.data)
                        .ok()
                        .and_then(|v| {
                            v.get("container_id")
                                .and_then(|c| c.as_str())
                                .map(str::to_string)
                        });
                }
                let started = event.kind == "started";
                if let Some(journal) = batch.journal.as_mut() {
                    journal.append(
                        batch.next_seq + batch.buffer.len() as i64,
                        std::slice::from_ref(&event),
                    );
                }
                batch.buffer.push(event);
                if started {
                    batch.send().await;
                    // A container's start was recorded when the lease was confirmed.
                    let fenced = batch
                        .shared
                        .leases
                        .lock()
                        .is_ok_and(|m| m.get(&batch.run_id).is_some_and(|l| l.fenced));
                    if !fenced {
                        batch.acknowledge_start().await;
                    }
                } else if batch.buffer.len() >= BATCH_EVENTS
                    || batch.buffered_bytes() >= BATCH_BYTES
                    // Sparse output goes out at once; only output that keeps coming is batched.
                    || batch.last_send.elapsed() >= BATCH_DELAY
                {
                    batch.send().await;
                }
            }
        }
    }
}

/// The batches of one send still to go, in order. A batch the server refuses as too large is
/// replaced by its two halves (each keeps its events' numbers); a single event that is still
/// too large by a short stand-in saying so, so the output shows that something was lost.
pub(crate) struct Outbox {
    /// Next batch last.
    pending: Vec<Batch>,
}

pub(crate) struct Batch {
    pub(crate) body: EventsBody,
    /// A stand-in for an event too large to store: if it is refused too, it is dropped.
    stand_in: bool,
}

impl Outbox {
    pub(crate) fn new(body: EventsBody) -> Self {
        Self {
            pending: vec![Batch {
                body,
                stand_in: false,
            }],
        }
    }

    pub(crate) fn next(&mut self) -> Option<Batch> {
        self.pending.pop()
    }

    /// `batch`, just taken with [`Outbox::next`], was refused as too large.
    pub(crate) fn too_large(&mut self, batch: Batch) {
        let Batch { mut body, stand_in } = batch;
        if stand_in {
            tracing::error!(
                first_seq = body.first_seq,
                "the server refused even the note on an event too large to store; dropped"
            );
            return;
        }
        if body.events.len() > 1 {
            let tail = body.events.split_off(body.events.len() / 2);
            let second = EventsBody {
                lease_token: body.lease_token.clone(),
                first_seq: body.first_seq + body.events.len() as i64,
                events: tail,
            };
            for body in [second, body] {
                self.pending.push(Batch {
                    body,
                    stand_in: false,
                });
            }
            return;
        }
        let Some(event) = body.events.pop() else {
            return;
        };
        let kind = if event.kind == "stdout" {
            "stdout"
        } else {
            "stderr"
        };
        body.events.push(EventIn {
            ts: event.ts,
            kind: kind.into(),
            data: format!(
                "[berth: a `{}` event of {} bytes was refused by the server as too large]",
                event.kind,
                event.data.len()
            ),
        });
        self.pending.push(Batch {
            body,
            stand_in: true,
        });
    }
}

/// One run's event stream to the server.
struct Batcher {
    shared: Arc<Shared>,
    run_id: String,
    lease_token: String,
    buffer: Vec<EventIn>,
    /// The number the next batch's first event gets (events are numbered from 1 per run).
    next_seq: i64,
    lease_lost: bool,
    /// The server was unreachable when the runner stopped retrying: events only go to the
    /// journal from here on.
    offline: bool,
    journal: Option<RunJournal>,
    container_id: Option<String>,
    last_send: tokio::time::Instant,
}

impl Batcher {
    fn buffered_bytes(&self) -> usize {
        self.buffer.iter().map(|e| e.data.len()).sum()
    }

    /// Sends the buffer, retrying while the server is unreachable (events are kept, not
    /// dropped; a resend after a lost reply is recognised by its numbers and stored once). A
    /// batch the server finds too large (413) is split and its parts sent in order. When the
    /// runner stops retrying, what was not sent stays in the journal.
    async fn send(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        if self.lease_lost {
            self.buffer.clear();
            return;
        }
        if let Some(journal) = self.journal.as_mut() {
            journal.flush();
        }
        self.last_send = tokio::time::Instant::now();
        let events = std::mem::take(&mut self.buffer);
        let count = events.len() as i64;
        let first_seq = self.next_seq;
        self.next_seq += count;
        if self.offline {
            return;
        }
        let mut outbox = Outbox::new(EventsBody {
            lease_token: self.lease_token.clone(),
            first_seq,
            events,
        });
        let path = format!("/api/v1/runs/{}/events", self.run_id);
        while let Some(batch) = outbox.next() {
            match self.shared.post_retrying(&path, &batch.body).await {
                Ok(()) => {}
                Err(e) if e.is_too_large() => {
                    tracing::warn!(run = %self.run_id, events = batch.body.events.len(), error = %e, "the server found an event batch too large; sending it in parts");
                    outbox.too_large(batch);
                }
                Err(e) if e.status().is_some() => {
                    tracing::warn!(run = %self.run_id, error = %e, "the server refused events");
                    if e.is_conflict() {
                        self.lose_lease();
                    } else if let Some(journal) = self.journal.as_mut() {
                        // Refused for good: not worth keeping.
                        journal.acknowledged();
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(run = %self.run_id, error = %e, "the server is unreachable and the runner is stopping: the run's events are kept in the journal");
                    self.offline = true;
                    return;
                }
            }
        }
        if let Some(journal) = self.journal.as_mut() {
            journal.acknowledged();
        }
    }

    async fn acknowledge_start(&mut self) {
        if self.lease_lost || self.offline {
            return;
        }
        let body = StartBody {
            lease_token: self.lease_token.clone(),
            container_id: self.container_id.clone(),
        };
        let path = format!("/api/v1/runs/{}/start", self.run_id);
        let mut delay = Duration::from_millis(100);
        // Set once an attempt failed without an answer: it may have reached the server, which then
        // refuses the retry (the run is already running). That refusal is not a lost lease; a lease
        // that really is gone shows in the heartbeat's reply and in the refusal of events.
        let mut maybe_applied = false;
        loop {
            match self
                .shared
                .attempt(
                    self.shared
                        .client
                        .post::<_, serde_json::Value>(&path, &body),
                )
                .await
            {
                Ok(_) => return,
                Err(e) if e.is_conflict() && maybe_applied => {
                    tracing::info!(run = %self.run_id, error = %e, "the start was recorded by an attempt whose answer was lost");
                    return;
                }
                Err(e) if e.status().is_some() => {
                    tracing::warn!(run = %self.run_id, error = %e, "the server refused the start");
                    if e.is_conflict() {
                        self.lose_lease();
                    }
                    return;
                }
                Err(e) => {
                    maybe_applied = true;
                    tracing::warn!(run = %self.run_id, error = %e, "acknowledging the start failed; retrying");
                    if !self.shared.retry_after(delay).await {
                        return;
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// The server no longer accepts this runner's writes for the run: stop it.
    fn lose_lease(&mut self) {
        self.lease_lost = true;
        if let Some(journal) = self.journal.take() {
            journal.remove();
        }
        if let Ok(mut map) = self.shared.leases.lock() {
            if let Some(lease) = map.get_mut(&self.run_id) {
                if !lease.interrupted {
                    lease.interrupted = true;
                    let _ = lease.interrupt.send("the server (lease revoked)");
                }
            }
        }
    }
}

/// How a run ends once its artifacts were uploaded: artifacts that did not reach the server are
/// named in the reason, and a run that succeeded becomes `error` (its result is incomplete).
pub fn with_upload_failures(
    state: String,
    reason: Option<String>,
    failures: &[String],
) -> (String, Option<String>) {
    if failures.is_empty() {
        return (state, reason);
    }
    const SHOWN: usize = 10;
    let mut note = format!(
        "{} artifact(s) could not be uploaded: {}",
        failures.len(),
        failures[..failures.len().min(SHOWN)].join("; ")
    );
    if failures.len() > SHOWN {
        note.push_str(&format!("; and {} more", failures.len() - SHOWN));
    }
    let reason = match reason {
        Some(r) if !r.is_empty() => format!("{r}; {note}"),
        _ => note,
    };
    let state = if state == "succeeded" {
        "error".to_string()
    } else {
        state
    };
    (state, Some(reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(i: usize, bytes: usize) -> EventIn {
        EventIn {
            ts: i as i64,
            kind: "stdout".into(),
            data: format!("{i:06}{}", "x".repeat(bytes.saturating_sub(6))),
        }
    }

    /// A server that takes batches of at most `limit` bytes of data: what it stored, in order,
    /// with the runner's numbers.
    fn deliver(first_seq: i64, events: Vec<EventIn>, limit: usize) -> Vec<(i64, EventIn)> {
        let mut outbox = Outbox::new(EventsBody {
            lease_token: "l".into(),
            first_seq,
            events,
        });
        let mut stored = Vec::new();
        while let Some(batch) = outbox.next() {
            let size: usize = batch.body.events.iter().map(|e| e.data.len()).sum();
            if size > limit {
                outbox.too_large(batch);
            } else {
                let first = batch.body.first_seq;
                stored.extend((first..).zip(batch.body.events));
            }
        }
        stored
    }

    #[test]
    fn a_batch_too_large_is_split_and_every_event_arrives_once_in_order() {
        let events: Vec<EventIn> = (0..37).map(|i| event(i, 1000 + i * 97)).collect();
        let stored = deliver(11, events.clone(), 5000);
        let expected: Vec<(i64, EventIn)> = (11..).zip(events).collect();
        assert_eq!(stored, expected);
        // Nothing to split when the batch fits.
        let small: Vec<EventIn> = (0..3).map(|i| event(i, 10)).collect();
        assert_eq!(
            deliver(1, small.clone(), 5000),
            (1..).zip(small).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_single_event_too_large_leaves_a_note_in_its_place() {
        let events = vec![event(0, 100), event(1, 10_000), event(2, 100)];
        let stored = deliver(1, events.clone(), 1000);
        assert_eq!(stored.len(), 3);
        assert_eq!(stored[0], (1, events[0].clone()));
        assert_eq!(stored[2], (3, events[2].clone()));
        let (seq, note) = &stored[1];
        assert_eq!((*seq, note.kind.as_str()), (2, "stdout"));
        assert!(note.data.contains("10000 bytes"), "{}", note.data);
        // A note that is refused too is dropped; the rest still arrives.
        let stored = deliver(1, events.clone(), 50);
        assert!(
            stored.is_empty(),
            "every event is over 50 bytes: {stored:?}"
        );
    }

    #[test]
    fn artifacts_that_failed_to_upload_are_named_and_a_success_becomes_an_error() {
        let failures = vec!["a.txt: the berth server answered 422: bad".to_string()];
        let (state, reason) = with_upload_failures("succeeded".into(), None, &failures);
        assert_eq!(state, "error");
        assert_eq!(
            reason.as_deref(),
            Some("1 artifact(s) could not be uploaded: a.txt: the berth server answered 422: bad")
        );
        let (state, reason) =
            with_upload_failures("failed".into(), Some("exit code 2".into()), &failures);
        assert_eq!(state, "failed");
        assert!(reason.unwrap().starts_with("exit code 2; 1 artifact(s)"));
        let many: Vec<String> = (0..12).map(|i| format!("f{i}")).collect();
        let (_, reason) = with_upload_failures("succeeded".into(), None, &many);
        assert!(reason.unwrap().ends_with("f9; and 2 more"));
        assert_eq!(
            with_upload_failures("succeeded".into(), None, &[]),
            ("succeeded".to_string(), None)
        );
    }
}
