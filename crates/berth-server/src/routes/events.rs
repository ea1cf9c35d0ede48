//! `/api/v1/runs/{id}/events`: a run's events as a server-sent event stream for clients, and
//! the batches its runner appends.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::Json;
use berth_api::*;
use berth_store::{NewEvent, Store, Wake};
use futures_util::{Stream, StreamExt};

use super::{parse, query_params, refuse, visible_run, AppState};
use crate::auth::Caller;
use crate::clock::now_ms;
use crate::error::ApiResult;
use crate::extract::{Body, UrlPath};
use crate::{views, App};

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventsQuery {
    follow: Option<bool>,
    after: Option<i64>,
}

pub(crate) async fn run_events<S: Store>(
    State(app): AppState<S>,
    caller: Caller,
    UrlPath(id): UrlPath<String>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    visible_run(&app, &caller, &id).await?;
    let query = query_params(query)?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok());
    let start = resume.or(query.after).unwrap_or(0);
    let follow = query.follow.unwrap_or(false);
    let batches = futures_util::stream::unfold(
        (app, id, start, false),
        move |(app, id, after, done)| async move {
            if done {
                return None;
            }
            let (batch, after, done) = next_sse_batch(&app, &id, after, follow).await;
            Some((batch, (app, id, after, done)))
        },
    );
    let stream = batches
        .flat_map(|batch| futures_util::stream::iter(batch.into_iter().map(Ok::<_, Infallible>)));
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// The next SSE events after `after`: waits for new ones while following; ends with an `end`
/// event once the run is over and every event was sent. Returns (events, new cursor, done).
async fn next_sse_batch<S: Store>(
    app: &App<S>,
    id: &str,
    after: i64,
    follow: bool,
) -> (Vec<SseEvent>, i64, bool) {
    loop {
        // Register for wake-ups before reading, so an event appended in between is not missed.
        let notified = app.events.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let batch = match app.store.events_after(id, after, 500).await {
            Ok(batch) => batch,
            Err(e) => {
                tracing::error!(run = %id, error = %e, "reading events for a stream failed");
                return (
                    vec![SseEvent::default().event("error").data(e.to_string())],
                    after,
                    true,
                );
            }
        };
        if let Some(last) = batch.last().map(|e| e.seq) {
            let events = batch
                .into_iter()
                .map(|e| {
                    let view = views::event(e);
                    let data = serde_json::to_string(&view).unwrap_or_default();
                    SseEvent::default()
                        .id(view.seq.to_string())
                        .event(view.kind)
                        .data(data)
                })
                .collect();
            return (events, last, false);
        }
        let finished = match app.store.run(id).await {
            Ok(Some(row)) => row.state.is_final(),
            _ => true,
        };
        if !follow || finished {
            // Events written just before the final state was seen are read on the next pass.
            match app.store.events_after(id, after, 1).await {
                Ok(more) if !more.is_empty() => continue,
                _ => {
                    return (
                        vec![SseEvent::default().event("end").data("{}")],
                        after,
                        true,
                    )
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
    }
}

pub(super) async fn append_events<S: Store>(
    State(app): AppState<S>,
    caller: Caller,
    UrlPath(id): UrlPath<String>,
    Body(body): Body,
) -> ApiResult<Json<HashMap<&'static str, i64>>> {
    caller.require_runner()?;
    let request: EventsBody = parse(&body)?;
    refuse(events_errors(&request))?;
    let events: Vec<NewEvent> = request
        .events
        .into_iter()
        .map(|e| NewEvent {
            ts: e.ts,
            kind: e.kind,
            data: e.data,
        })
        .collect();
    let last = app
        .store
        .append_events(
            &id,
            &request.lease_token,
            now_ms(),
            request.first_seq,
            &events,
        )
        .await?;
    app.wake(Wake::EVENTS);
    Ok(Json(HashMap::from([("last_seq", last)])))
}
