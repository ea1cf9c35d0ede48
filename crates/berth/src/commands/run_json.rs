//! The one JSON shape of a run, for `berth ls --json` and `berth show --json`, whether the run
//! is local (its `run.json`) or the server's (the API's run view). README, "Runs as JSON",
//! documents it; keep the two in step.
//!
//! The top-level fields are the same for both sources; `detail` is the source's own full
//! record. Every timestamp, in `detail` and the audit trail too, is RFC 3339 in UTC with
//! milliseconds: `2026-12-06T06:08:39.123Z`.

use std::path::Path;

use berth_api::{AuditView, RunView};
use berth_core::record::RunRecord;
use serde_json::{json, Value};

/// The keys whose values are timestamps, wherever they appear.
const TIME_KEYS: &[&str] = &[
    "created_at",
    "claimed_at",
    "started_at",
    "finished_at",
    "ts",
];

/// An RFC 3339 time as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC, milliseconds); text that is not one is
/// kept as it is.
pub fn timestamp(text: &str) -> String {
    use time::format_description::well_known::Rfc3339;
    const FORMAT: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::parse(text, &Rfc3339)
        .ok()
        .and_then(|t| t.to_offset(time::UtcOffset::UTC).format(FORMAT).ok())
        .unwrap_or_else(|| text.to_string())
}

/// Rewrites every timestamp under the known keys of `value`, at any depth.
fn normalise_times(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                match v {
                    Value::String(s) if TIME_KEYS.contains(&key.as_str()) => *s = timestamp(s),
                    _ => normalise_times(v),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalise_times),
        _ => {}
    }
}

/// A local run: its record, from the run directory `dir`.
pub fn local(record: &RunRecord, dir: Option<&Path>) -> Value {
    let mut detail = serde_json::to_value(record).unwrap_or(Value::Null);
    if let (Some(dir), Value::Object(map)) = (dir, &mut detail) {
        map.insert("directory".into(), json!(dir));
    }
    let mut run = json!({
        "id": record.id,
        "source": "local",
        "state": record.state.as_str(),
        "reason": record.reason,
        "exit_code": record.exit_code,
        "created_at": record.created_at,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "image": record.spec.image,
        "command": record.spec.command,
        "workspace_mode": record.spec.workspace_mode,
        "commit": record.start_commit(),
        "container_id": record.container_id,
        "project": Value::Null,
        "runner_id": Value::Null,
        "detail": detail,
    });
    normalise_times(&mut run);
    run
}

/// A server's run: the API's view of it.
pub fn server(view: &RunView) -> Value {
    let mut run = json!({
        "id": view.id,
        "source": "server",
        "state": view.state,
        "reason": view.reason,
        "exit_code": view.exit_code,
        "created_at": view.created_at,
        "started_at": view.started_at,
        "finished_at": view.finished_at,
        "image": view.sandbox.image,
        "command": view.sandbox.command,
        "workspace_mode": view.sandbox.workspace_mode,
        "commit": view.commit,
        "container_id": view.container_id,
        "project": view.project,
        "runner_id": view.runner_id,
        "detail": view,
    });
    normalise_times(&mut run);
    run
}

/// `berth ls --json`: the runs, and where the next page starts (a server's list is paged).
pub fn list(runs: Vec<Value>, next: Option<String>) -> Value {
    json!({ "runs": runs, "next": next })
}

/// `berth show --json`: the run, and the server's audit trail (`null` for a local run, whose
/// events are in its `events.jsonl`).
pub fn shown(run: Value, audit: Option<&[AuditView]>) -> Value {
    let mut audit = json!(audit);
    normalise_times(&mut audit);
    json!({ "run": run, "audit": audit })
}

#[cfg(test)]
mod tests {
    use super::timestamp;

    #[test]
    fn timestamps_are_utc_with_milliseconds() {
        for (given, expected) in [
            ("2026-12-06T06:08:39.123456789Z", "2026-12-06T06:08:39.123Z"),
            ("2026-12-06T06:08:39Z", "2026-12-06T06:08:39.000Z"),
            ("2026-12-06T06:08:39.5Z", "2026-12-06T06:08:39.500Z"),
            ("2026-12-06T08:08:39.25+02:00", "2026-12-06T06:08:39.250Z"),
            ("not a time", "not a time"),
        ] {
            assert_eq!(timestamp(given), expected, "{given}");
        }
    }
}
