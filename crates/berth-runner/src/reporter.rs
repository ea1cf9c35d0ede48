//! Sends a run's events to the coordinator in batches: output lines and lifecycle events,
//! flushed every 100 ms or 500 events, and the start acknowledgement with the container id.

use std::sync::Arc;
use std::time::Duration;

use berth_api::{EventIn, EventsBody, StartBody};
use berth_core::event::{Event, EventLine, Stream};
use berth_sandbox::Reporter;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::sync::oneshot;

use crate::Shared;

const BATCH_EVENTS: usize = 500;
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
    tx: UnboundedSender<Message>,
}

pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

impl ServerReporter {
    pub fn new(tx: UnboundedSender<Message>) -> Self {
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
        let _ = self.tx.send(Message::Event(event));
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
    mut rx: UnboundedReceiver<Message>,
) {
    let mut buffer: Vec<EventIn> = Vec::new();
    let mut container_id: Option<String> = None;
    let mut lease_lost = false;
    loop {
        let message = if buffer.is_empty() {
            rx.recv().await
        } else {
            match tokio::time::timeout(BATCH_DELAY, rx.recv()).await {
                Ok(m) => m,
                Err(_) => {
                    send(&shared, &run_id, &lease_token, &mut buffer, &mut lease_lost).await;
                    continue;
                }
            }
        };
        match message {
            None => {
                send(&shared, &run_id, &lease_token, &mut buffer, &mut lease_lost).await;
                return;
            }
            Some(Message::Flush(done)) => {
                send(&shared, &run_id, &lease_token, &mut buffer, &mut lease_lost).await;
                let _ = done.send(());
            }
            Some(Message::Event(event)) => {
                if event.kind == "container_created" {
                    container_id = serde_json::from_str::<serde_json::Value>(&event.data)
                        .ok()
                        .and_then(|v| {
                            v.get("container_id")
                                .and_then(|c| c.as_str())
                                .map(str::to_string)
                        });
                }
                let started = event.kind == "started";
                buffer.push(event);
                if started {
                    send(&shared, &run_id, &lease_token, &mut buffer, &mut lease_lost).await;
                    acknowledge_start(
                        &shared,
                        &run_id,
                        &lease_token,
                        container_id.clone(),
                        &mut lease_lost,
                    )
                    .await;
                } else if buffer.len() >= BATCH_EVENTS
                    || buffer.iter().map(|e| e.data.len()).sum::<usize>() >= BATCH_BYTES
                {
                    send(&shared, &run_id, &lease_token, &mut buffer, &mut lease_lost).await;
                }
            }
        }
    }
}

async fn acknowledge_start(
    shared: &Shared,
    run_id: &str,
    lease_token: &str,
    container_id: Option<String>,
    lease_lost: &mut bool,
) {
    if *lease_lost {
        return;
    }
    let body = StartBody {
        lease_token: lease_token.to_string(),
        container_id,
    };
    let path = format!("/api/v1/runs/{run_id}/start");
    let mut delay = Duration::from_millis(100);
    loop {
        match shared
            .client
            .post::<_, serde_json::Value>(&path, &body)
            .await
        {
            Ok(_) => return,
            Err(e) if e.status().is_some() => {
                tracing::warn!(run = %run_id, error = %e, "the server refused the start");
                if e.is_conflict() {
                    lose_lease(shared, run_id, lease_lost);
                }
                return;
            }
            Err(e) => {
                tracing::warn!(run = %run_id, error = %e, "acknowledging the start failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Sends the buffer, retrying while the server is unreachable (events are kept, not dropped).
async fn send(
    shared: &Shared,
    run_id: &str,
    lease_token: &str,
    buffer: &mut Vec<EventIn>,
    lease_lost: &mut bool,
) {
    if buffer.is_empty() {
        return;
    }
    if *lease_lost {
        buffer.clear();
        return;
    }
    let path = format!("/api/v1/runs/{run_id}/events");
    let body = EventsBody {
        lease_token: lease_token.to_string(),
        events: std::mem::take(buffer),
    };
    let mut delay = Duration::from_millis(100);
    loop {
        match shared
            .client
            .post::<_, serde_json::Value>(&path, &body)
            .await
        {
            Ok(_) => return,
            Err(e) if e.status().is_some() => {
                tracing::warn!(run = %run_id, error = %e, "the server refused events");
                if e.is_conflict() {
                    lose_lease(shared, run_id, lease_lost);
                }
                return;
            }
            Err(e) => {
                tracing::warn!(run = %run_id, error = %e, "sending events failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The server no longer accepts this runner's writes for the run: stop it.
fn lose_lease(shared: &Shared, run_id: &str, lease_lost: &mut bool) {
    *lease_lost = true;
    if let Ok(mut map) = shared.leases.lock() {
        if let Some(lease) = map.get_mut(run_id) {
            if !lease.interrupted {
                lease.interrupted = true;
                let _ = lease.interrupt.send("the server (lease revoked)");
            }
        }
    }
}
