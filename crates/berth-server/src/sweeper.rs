//! Background work: leases that ran out and runners that went silent.

use std::sync::Arc;
use std::time::Duration;

use berth_store::{NewEvent, RunState, Store, Wake};

use crate::clock::now_ms;
use crate::App;

pub async fn run<S: Store>(app: Arc<App<S>>) {
    // Leases measure a runner's silence while the server is up. After a start, every lease gets
    // one full period in which its runner can reach this server again; before this, a restart
    // after an outage longer than the lease wrote off every run in flight at its first tick.
    let lease_ms = i64::try_from(app.config.lease.as_millis()).unwrap_or(i64::MAX);
    match app
        .store
        .extend_leases(now_ms().saturating_add(lease_ms))
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            leases = n,
            "extended the leases of runs in flight by one lease period from this start"
        ),
        Err(e) => tracing::error!(error = %e, "extending the leases at start failed"),
    }
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Workflows advance when their step runs end; this pass only catches up on what a crash or
    // a lost race left, so every tenth tick is enough.
    let mut ticks: u64 = 0;
    loop {
        tick.tick().await;
        ticks += 1;
        let now = now_ms();
        match app.store.expire_leases(now).await {
            Ok(changed) => {
                for row in &changed {
                    let data =
                        serde_json::json!({ "state": row.state.as_str(), "reason": row.reason })
                            .to_string();
                    let event = NewEvent {
                        ts: now,
                        kind: "state".into(),
                        data,
                    };
                    if let Err(e) = app.store.append_server_event(&row.id, &event).await {
                        tracing::error!(run = %row.id, error = %e, "recording a lease expiry in the run's events failed");
                    }
                    tracing::warn!(run = %row.id, state = row.state.as_str(), reason = ?row.reason, "lease expired");
                }
                for row in changed.iter().filter(|r| r.state.is_final()) {
                    if let Some(id) = crate::workflows::workflow_of(row) {
                        if let Err(e) = crate::workflows::advance(&app, id).await {
                            tracing::error!(workflow = %id, error = %e, "advancing a workflow failed");
                        }
                    }
                }
                if changed.iter().any(|r| r.state == RunState::Queued) {
                    app.wake(Wake::QUEUED);
                }
                if !changed.is_empty() {
                    app.wake(Wake::EVENTS);
                }
            }
            Err(e) => tracing::error!(error = %e, "expiring leases failed"),
        }
        // Catches up on anything a crash or a lost race left: a step run that ended unrecorded,
        // a workflow with no step queued, a step stranded on an offline runner.
        // Fresh statistics for the queries that use them (claims do not): at start, then every
        // ten minutes.
        if ticks % 1200 == 1 {
            if let Err(e) = app.store.maintain().await {
                tracing::warn!(error = %e, "refreshing the store's statistics failed");
            }
        }
        if ticks % 10 == 1 {
            crate::workflows::advance_all(&app).await;
        }
        let silent_since = now - 3 * app.config.heartbeat.as_millis() as i64;
        match app.store.mark_stale_runners_offline(silent_since).await {
            Ok(ids) => {
                for id in ids {
                    tracing::warn!(runner = %id, "runner stopped heartbeating: offline");
                }
            }
            Err(e) => tracing::error!(error = %e, "marking runners offline failed"),
        }
    }
}
