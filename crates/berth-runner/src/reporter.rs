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

use crate::Shared;

const BATCH_EVENTS: usize = 500;
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

/// The run's reporter: forwards events to the batcher task.
pub struct ServerReporter {
    tx: Sender<Message>,
}

pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

impl ServerReporter {
    pub fn new(tx: Sender<Message>) -> Self {
        Self { tx }
    }
}

impl Reporter for ServerReporter {
    fn event(&self, line: &EventLine) {
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
/// `started` event goes by. On a refused lease, interrupts the run.
pub async fn batcher(
    shared: Arc<Shared>,
    run_id: String,
    lease_token: String,
    mut rx: Receiver<Message>,
) {
    let mut batch = Batcher {
        shared,
        run_id,
        lease_token,
        buffer: Vec::new(),
        next_seq: 1,
        lease_lost: false,
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
                return;
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
                batch.buffer.push(event);
                if started {
                    batch.send().await;
                    batch.acknowledge_start().await;
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

/// One run's event stream to the server.
struct Batcher {
    shared: Arc<Shared>,
    run_id: String,
    lease_token: String,
    buffer: Vec<EventIn>,
    /// The number the next batch's first event gets (events are numbered from 1 per run).
    next_seq: i64,
    lease_lost: bool,
    container_id: Option<String>,
    last_send: tokio::time::Instant,
}

impl Batcher {
    fn buffered_bytes(&self) -> usize {
        self.buffer.iter().map(|e| e.data.len()).sum()
    }

    /// Sends the buffer, retrying while the server is unreachable (events are kept, not
    /// dropped; a resend after a lost reply is recognised by its numbers and stored once).
    async fn send(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        if self.lease_lost {
            self.buffer.clear();
            return;
        }
        self.last_send = tokio::time::Instant::now();
        let path = format!("/api/v1/runs/{}/events", self.run_id);
        let events = std::mem::take(&mut self.buffer);
        let count = events.len() as i64;
        let body = EventsBody {
            lease_token: self.lease_token.clone(),
            first_seq: self.next_seq,
            events,
        };
        self.next_seq += count;
        let mut delay = Duration::from_millis(100);
        loop {
            match self
                .shared
                .client
                .post::<_, serde_json::Value>(&path, &body)
                .await
            {
                Ok(_) => return,
                Err(e) if e.status().is_some() => {
                    tracing::warn!(run = %self.run_id, error = %e, "the server refused events");
                    if e.is_conflict() {
                        self.lose_lease();
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(run = %self.run_id, error = %e, "sending events failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn acknowledge_start(&mut self) {
        if self.lease_lost {
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
                .client
                .post::<_, serde_json::Value>(&path, &body)
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
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// The server no longer accepts this runner's writes for the run: stop it.
    fn lose_lease(&mut self) {
        self.lease_lost = true;
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
