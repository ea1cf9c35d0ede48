//! The runner's journal: what a run owes the server, kept on disk until the server has it.
//!
//! Each run in progress has a directory `<state>/journal/<run-id>/` with
//! - `lease.json`: the run and its lease token (the key to every later write);
//! - `events.jsonl`: the run's events not yet acknowledged by the server, one JSON line each
//!   with the runner's number for it (`seq`). Written before each send and emptied when the
//!   server has acknowledged everything in it, so it stays small while the server is up. While
//!   the server is away it grows up to [`RUN_BYTES`]; what comes after that is counted and
//!   replaced by one note;
//! - `acked.json`: how far the server has the run's events: the next number, and how many of
//!   them were the command's stdout and stderr (output lines, and an agent's events, which come
//!   from its stdout). Written before each emptying of `events.jsonl`, so that a runner restarted
//!   while the command still runs knows where to resume its output (see `adopt`);
//! - `end.json`: the run's end (state, exit code, reason, and the directory of artifacts still to
//!   upload), once the run ended without the server hearing of it.
//!
//! The next start of the runner sends every journal before it claims: the events with their
//! numbers (the server stores a number once, so a resend never duplicates a line), then the
//! artifacts and the end. A run with no end was in progress when its runner died: its container
//! is adopted when it is still there and the server confirms the lease (see `adopt`), else the
//! run is reported `lost`. The server refuses writes under a lease it has written off; then the
//! run is already `lost` (or handed on) there and the journal is dropped.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_api::{EventIn, EventsBody, FinishBody};

use crate::Shared;

/// Bytes of event data one run's journal holds at most.
pub const RUN_BYTES: u64 = 16 << 20;

#[derive(serde::Serialize, serde::Deserialize)]
struct LeaseFile {
    run_id: String,
    lease_token: String,
}

/// How far the server has a run's events (see the module's docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Acked {
    /// The number of the first event the server may not have.
    pub next_seq: i64,
    /// Events from the command's stdout and from its stderr, up to there.
    pub stdout: u64,
    pub stderr: u64,
}

impl Acked {
    /// Counts `kind` (an event's) as the stream it came from, if it came from one.
    fn count(&mut self, kind: &str) {
        match kind {
            "stdout" | "stdout_base64" | "agent" => self.stdout += 1,
            "stderr" | "stderr_base64" => self.stderr += 1,
            _ => {}
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Line {
    seq: i64,
    #[serde(flatten)]
    event: EventIn,
}

/// How a run ended, as the server is still to be told.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct End {
    pub finish: FinishBody,
    /// Artifacts still to upload before the end is reported.
    pub artifacts: Option<PathBuf>,
}

/// Where the journals are.
pub fn root(state_dir: &Path) -> PathBuf {
    state_dir.join("journal")
}

/// One run's journal, written by its batcher.
pub struct RunJournal {
    dir: PathBuf,
    events: Option<BufWriter<File>>,
    /// Bytes of event data written since the file was last emptied.
    bytes: u64,
    /// Events left out because the journal was full: (count, bytes).
    dropped: (u64, u64),
    /// The number of the first event left out.
    first_dropped: Option<i64>,
    /// Everything appended so far: the next number and the events per stream.
    appended: Acked,
}

impl RunJournal {
    /// Starts the journal of a run just claimed (an earlier one for the same run is replaced).
    pub fn create(state_dir: &Path, run_id: &str, lease_token: &str) -> std::io::Result<Self> {
        let dir = root(state_dir).join(run_id);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        write_json(
            &dir.join("lease.json"),
            &LeaseFile {
                run_id: run_id.to_string(),
                lease_token: lease_token.to_string(),
            },
        )?;
        // Appending, so that writes after an emptying start at the file's new end.
        let events = std::fs::OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(dir.join("events.jsonl"))?;
        Ok(Self::writing(
            dir,
            events,
            Acked {
                next_seq: 1,
                ..Acked::default()
            },
        ))
    }

    fn writing(dir: PathBuf, events: File, appended: Acked) -> Self {
        Self {
            dir,
            events: Some(BufWriter::new(events)),
            bytes: 0,
            dropped: (0, 0),
            first_dropped: None,
            appended,
        }
    }

    /// Continues the journal of a run adopted by a restarted runner: what it held was sent, and
    /// the server has the events up to `acked`.
    pub fn resume(state_dir: &Path, run_id: &str, acked: Acked) -> std::io::Result<Self> {
        let dir = root(state_dir).join(run_id);
        write_json(&dir.join("acked.json"), &acked)?;
        let events = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(dir.join("events.jsonl"))?;
        events.set_len(0)?;
        Ok(Self::writing(dir, events, acked))
    }

    /// Appends events numbered from `first_seq`; those that no longer fit are counted.
    pub fn append(&mut self, first_seq: i64, events: &[EventIn]) {
        let Some(file) = self.events.as_mut() else {
            return;
        };
        for (seq, event) in (first_seq..).zip(events) {
            self.appended.count(&event.kind);
            self.appended.next_seq = seq + 1;
            let size = event.data.len() as u64;
            if self.bytes + size > RUN_BYTES || self.dropped.0 > 0 {
                self.first_dropped.get_or_insert(seq);
                self.dropped.0 += 1;
                self.dropped.1 += size;
                continue;
            }
            let line = Line {
                seq,
                event: event.clone(),
            };
            let written = serde_json::to_writer(&mut *file, &line)
                .map_err(std::io::Error::other)
                .and_then(|()| file.write_all(b"\n"));
            if let Err(e) = written {
                tracing::warn!(journal = %self.dir.display(), error = %e, "writing the journal failed");
            }
            self.bytes += size;
        }
    }

    /// Hands what was written to the operating system.
    pub fn flush(&mut self) {
        if let Some(file) = self.events.as_mut() {
            let _ = file.flush();
        }
    }

    /// No more events come: a note takes the place of those that did not fit (with the first
    /// one's number; the later numbers are never sent), and the file is flushed.
    pub fn close(&mut self) {
        if let (Some(file), Some(seq)) = (self.events.as_mut(), self.first_dropped) {
            let note = EventIn {
                ts: crate::reporter::now_ms(),
                kind: "stderr".into(),
                data: format!(
                    "[berth: {} event(s) ({} bytes) of output were dropped: the server was unreachable and the runner's journal for this run was full ({} MiB)]",
                    self.dropped.0,
                    self.dropped.1,
                    RUN_BYTES >> 20
                ),
            };
            let line = Line { seq, event: note };
            let _ = serde_json::to_writer(&mut *file, &line);
            let _ = file.write_all(b"\n");
        }
        self.flush();
        self.events = None;
    }

    /// The server has everything written so far: start the file afresh.
    pub fn acknowledged(&mut self) {
        if self.dropped.0 > 0 {
            return;
        }
        if let Some(file) = self.events.as_mut() {
            let _ = file.flush();
            // First how far the server is, then the emptying: a runner killed in between finds
            // events it knows the server has, and leaves them out of its count.
            if let Err(e) = write_json(&self.dir.join("acked.json"), &self.appended) {
                tracing::warn!(journal = %self.dir.display(), error = %e, "writing how far the server has the run's events failed");
            }
            if let Err(e) = file.get_ref().set_len(0) {
                tracing::warn!(journal = %self.dir.display(), error = %e, "emptying the journal failed");
            }
            self.bytes = 0;
        }
    }

    /// Records the run's end: from here on the journal alone can tell the server.
    pub fn write_end(&self, end: &End) {
        if let Err(e) = write_json(&self.dir.join("end.json"), end) {
            tracing::error!(journal = %self.dir.display(), error = %e, "writing the run's end to the journal failed");
        }
    }

    /// The server has the run's end (or refused it for good): the journal is done.
    pub fn remove(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut file = File::create(&tmp)?;
        serde_json::to_writer(&mut file, value).map_err(std::io::Error::other)?;
        file.sync_all()?;
    }
    std::fs::rename(tmp, path)
}

/// A journal found at start.
pub struct Found {
    pub dir: PathBuf,
    pub run_id: String,
    pub lease_token: String,
    /// Events with their numbers, in order.
    pub events: Vec<(i64, EventIn)>,
    pub end: Option<End>,
    /// How far the server had the events when the journal was last emptied.
    pub acked: Option<Acked>,
}

impl Found {
    /// How far the server has the events once this journal's were sent: where a run adopted by
    /// a restarted runner goes on.
    pub fn resume_point(&self) -> Acked {
        let mut at = self.acked.unwrap_or(Acked {
            next_seq: 1,
            ..Acked::default()
        });
        for (seq, event) in &self.events {
            if *seq >= at.next_seq {
                at.count(&event.kind);
                at.next_seq = seq + 1;
            }
        }
        at
    }
}

/// Every journal left by an earlier incarnation, oldest run first.
pub fn found(state_dir: &Path) -> Vec<Found> {
    let Ok(entries) = std::fs::read_dir(root(state_dir)) else {
        return Vec::new();
    };
    let mut all: Vec<Found> = entries
        .flatten()
        .filter_map(|entry| {
            let dir = entry.path();
            let lease: Option<LeaseFile> = std::fs::read(dir.join("lease.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let Some(lease) = lease else {
                // Claimed and died before the lease was written: nothing is owed.
                let _ = std::fs::remove_dir_all(&dir);
                return None;
            };
            let events = read_events(&dir.join("events.jsonl"));
            let end = std::fs::read(dir.join("end.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let acked = std::fs::read(dir.join("acked.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            Some(Found {
                dir,
                run_id: lease.run_id,
                lease_token: lease.lease_token,
                events,
                end,
                acked,
            })
        })
        .collect();
    all.sort_by(|a, b| a.run_id.cmp(&b.run_id));
    all
}

/// The journal's events; a line cut short by a crash ends the list.
fn read_events(path: &Path) -> Vec<(i64, EventIn)> {
    let Ok(file) = File::open(path) else {
        return Vec::new();
    };
    let mut events: Vec<(i64, EventIn)> = Vec::new();
    for line in BufReader::new(file).lines() {
        let Ok(line) = line else { break };
        let Ok(parsed) = serde_json::from_str::<Line>(&line) else {
            break;
        };
        // Numbers only go up; a stale line from before an emptying is no longer wanted.
        if events.last().is_some_and(|(seq, _)| *seq >= parsed.seq) {
            events.clear();
        }
        events.push((parsed.seq, parsed.event));
    }
    events
}

/// What became of a write the runner owed the server.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    /// The server answered no (the lease is gone, or the run ended): nothing more to send.
    Refused,
    /// The server was unreachable and the runner is stopping: kept for the next start.
    Kept,
}

/// Sends the events of every journal; adopts the runs that were in progress whose containers
/// are still there (returned, to be followed to their end); removes the other containers a dead
/// predecessor left (reporting their runs); then reports each remaining run's end. A journal
/// whose delivery was refused or completed is removed; one the server could not be reached for
/// stays.
pub async fn resend(
    shared: &Arc<Shared>,
    engine: &berth_engine::DockerEngine,
) -> Vec<crate::adopt::Adoption> {
    let journals = found(&shared.config.state_dir);
    let mut pending = Vec::new();
    for journal in journals {
        if shared.stopping() {
            break;
        }
        let count = journal.events.len();
        match resend_events(shared, &journal).await {
            Delivery::Delivered => {
                tracing::info!(run = %journal.run_id, events = count, "sent the events a stopped runner kept");
                pending.push(journal);
            }
            Delivery::Refused => {
                tracing::warn!(run = %journal.run_id, events = count, "the server no longer takes this run's events (its lease is gone); journal dropped");
                let _ = std::fs::remove_dir_all(&journal.dir);
            }
            Delivery::Kept => {}
        }
    }
    let mut adopted = Vec::new();
    let mut rest = Vec::new();
    for journal in pending {
        match crate::adopt::adoptable(engine, shared, &journal).await {
            Some(adoption) => adopted.push(adoption),
            None => rest.push(journal),
        }
    }
    let ids: Vec<String> = adopted.iter().map(|a| a.run_id().to_string()).collect();
    crate::execute::reconcile(engine, shared, &ids).await;
    for journal in rest {
        if shared.stopping() {
            break;
        }
        let end = journal.end.clone().unwrap_or_else(|| End {
            finish: FinishBody {
                lease_token: journal.lease_token.clone(),
                state: "lost".into(),
                exit_code: None,
                reason: Some(format!(
                    "runner `{}` restarted while the run was in progress",
                    shared.runner_id
                )),
                commit: None,
            },
            artifacts: None,
        });
        match deliver_end(shared, &journal.run_id, end.clone()).await {
            Delivery::Kept => {
                // Only the end is still owed; the events are on the server.
                let _ = std::fs::write(journal.dir.join("events.jsonl"), b"");
                if journal.end.is_none() {
                    let _ = write_json(&journal.dir.join("end.json"), &end);
                }
            }
            _ => {
                let _ = std::fs::remove_dir_all(&journal.dir);
            }
        }
    }
    adopted
}

async fn resend_events(shared: &Arc<Shared>, journal: &Found) -> Delivery {
    let path = format!("/api/v1/runs/{}/events", journal.run_id);
    // Contiguous runs of numbers, in batches of the batcher's size.
    let mut groups: Vec<EventsBody> = Vec::new();
    for (seq, event) in &journal.events {
        match groups.last_mut() {
            Some(body)
                if body.first_seq + body.events.len() as i64 == *seq
                    && body.events.len() < crate::reporter::BATCH_EVENTS =>
            {
                body.events.push(event.clone())
            }
            _ => groups.push(EventsBody {
                lease_token: journal.lease_token.clone(),
                first_seq: *seq,
                events: vec![event.clone()],
            }),
        }
    }
    for body in groups {
        let mut outbox = crate::reporter::Outbox::new(body);
        while let Some(batch) = outbox.next() {
            match shared.post_retrying(&path, &batch.body).await {
                Ok(()) => {}
                Err(e) if e.is_too_large() => outbox.too_large(batch),
                Err(e) if e.status().is_some() => {
                    tracing::warn!(run = %journal.run_id, error = %e, "the server refused kept events");
                    return Delivery::Refused;
                }
                Err(_) => return Delivery::Kept,
            }
        }
    }
    Delivery::Delivered
}

/// Uploads the run's artifacts and reports its end.
pub async fn deliver_end(shared: &Arc<Shared>, run_id: &str, end: End) -> Delivery {
    let mut body = end.finish;
    if let Some(dir) = &end.artifacts {
        match crate::execute::upload_artifacts(shared, run_id, &body.lease_token, dir).await {
            Ok(failed) => {
                (body.state, body.reason) =
                    crate::reporter::with_upload_failures(body.state, body.reason, &failed);
            }
            Err(()) => return Delivery::Kept,
        }
    }
    let path = format!("/api/v1/runs/{run_id}/finish");
    match shared.post_retrying(&path, &body).await {
        Ok(()) => Delivery::Delivered,
        Err(e) if e.status().is_some() => {
            tracing::warn!(run = %run_id, error = %e, "the server refused the result");
            Delivery::Refused
        }
        Err(e) => {
            tracing::warn!(run = %run_id, error = %e, "the server is unreachable and the runner is stopping: the run's end is kept in the journal");
            Delivery::Kept
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(i: i64) -> EventIn {
        EventIn {
            ts: i,
            kind: "stdout".into(),
            data: format!("line {i}\n"),
        }
    }

    #[test]
    fn events_written_come_back_in_order_and_an_acknowledged_file_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = RunJournal::create(dir.path(), "r1", "tok").unwrap();
        j.append(1, &[event(1), event(2)]);
        j.flush();
        j.acknowledged();
        j.append(3, &[event(3), event(4)]);
        j.append(5, &[event(5)]);
        j.flush();
        j.write_end(&End {
            finish: FinishBody {
                lease_token: "tok".into(),
                state: "succeeded".into(),
                exit_code: Some(0),
                reason: None,
                commit: None,
            },
            artifacts: None,
        });
        let found = found(dir.path());
        assert_eq!(found.len(), 1);
        let f = &found[0];
        assert_eq!((f.run_id.as_str(), f.lease_token.as_str()), ("r1", "tok"));
        let seqs: Vec<i64> = f.events.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, vec![3, 4, 5]);
        assert_eq!(f.events[2].1.data, "line 5\n");
        assert_eq!(f.end.as_ref().unwrap().finish.state, "succeeded");
    }

    #[test]
    fn a_full_journal_keeps_a_note_in_place_of_what_did_not_fit() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = RunJournal::create(dir.path(), "r2", "tok").unwrap();
        let big = |i: i64| EventIn {
            ts: i,
            kind: "stdout".into(),
            data: "x".repeat(6 << 20),
        };
        j.append(1, &[big(1), big(2), big(3), big(4)]);
        j.close();
        let f = &found(dir.path())[0];
        let seqs: Vec<i64> = f.events.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        assert!(
            f.events[2].1.data.contains("2 event(s)"),
            "{}",
            f.events[2].1.data
        );
    }

    #[test]
    fn a_line_cut_short_ends_the_list_and_a_journal_without_lease_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = RunJournal::create(dir.path(), "r3", "tok").unwrap();
        j.append(1, &[event(1)]);
        j.flush();
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(j.dir().join("events.jsonl"))
            .unwrap();
        file.write_all(b"{\"seq\":2,\"ts\":2,\"ki").unwrap();
        std::fs::create_dir_all(root(dir.path()).join("r4")).unwrap();
        let found = found(dir.path());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].events.len(), 1);
        assert!(!root(dir.path()).join("r4").exists());
    }
}
