//! The dashboard's pages. Each calls the API's handler for what it shows, with the session's
//! caller, so scoping and refusals are the API's own.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use berth_api::{RunView, WorkflowView};
use berth_store::{Role, RunState, Store};
use rand::Rng;

use super::html::{self, badge, esc, opt, time, url_part, url_path};
use super::{
    api_error_page, cookie, cookie_safe, csrf_of, error_page, same, set_cookie, OverHttps,
    PageResult, Session, SESSION_COOKIE, SIGNIN_COOKIE,
};
use crate::error::ApiError;
use crate::extract::UrlPath;
use crate::routes::{self, ListQuery, WorkflowListQuery};
use crate::{views, workflows, App};

type AppState<S> = State<Arc<App<S>>>;
type Tls = OverHttps;

/// The largest diff a page renders (the rest is left to the download).
const MAX_DIFF_BYTES: u64 = 2 << 20;

/// How often live parts of a page are fetched again, in milliseconds.
const REFRESH_MS: u32 = 2000;

/// The most log text a run page carries when it is rendered (the rest follows live, with
/// JavaScript): enough for the page to be useful without it.
const RENDERED_LOG_BYTES: usize = 1 << 20;
/// The most events read for that.
const RENDERED_EVENTS: usize = 20_000;

fn ok_page(title: &str, session: &Session, body: &str) -> PageResult {
    Ok(Html(html::page(title, Some(&session.frame()), body)).into_response())
}

fn bad_request(e: impl std::fmt::Display) -> Response {
    error_page(StatusCode::BAD_REQUEST, &e.to_string())
}

// Sign-in and sign-out.

#[derive(Debug, serde::Deserialize)]
pub struct SigninQuery {
    next: Option<String>,
}

/// Where to go after signing in: a dashboard page of this server only.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with("/ui/")
                && !n.contains("//")
                && !n.contains('\\')
                && !n.chars().any(char::is_control) =>
        {
            n.to_string()
        }
        _ => "/ui/runs".to_string(),
    }
}

fn signin_page(tls: bool, next: &str, status: StatusCode, problem: Option<&str>) -> Response {
    let nonce = hex::encode(rand::rng().random::<[u8; 16]>());
    let problem = problem.map_or(String::new(), |p| {
        format!(r#"<p class="error" id="signin-error">{}</p>"#, esc(p))
    });
    let body = format!(
        r#"<h1>Sign in</h1>
{problem}
<form method="post" action="/ui/signin" class="signin">
<input type="hidden" name="csrf" value="{nonce}">
<input type="hidden" name="next" value="{}">
<label for="token">Token</label>
<input type="password" id="token" name="token" autocomplete="current-password" required>
<button type="submit" id="signin">Sign in</button>
<p class="hint">A client or admin token (<code>berth token create --role client --project P</code>). It is kept in an HttpOnly cookie for this site.</p>
</form>"#,
        esc(next)
    );
    let mut response = (status, Html(html::page("Sign in", None, &body))).into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SIGNIN_COOKIE, &nonce, tls, Some(3600)),
    );
    response
}

pub async fn signin_form(tls: Tls, query: Result<Query<SigninQuery>, QueryRejection>) -> Response {
    let next = query.ok().and_then(|Query(q)| q.next);
    signin_page(tls.0, &safe_next(next.as_deref()), StatusCode::OK, None)
}

#[derive(Debug, serde::Deserialize)]
pub struct SigninForm {
    token: String,
    csrf: String,
    next: Option<String>,
}

pub async fn signin<S: Store>(
    State(app): AppState<S>,
    tls: Tls,
    headers: HeaderMap,
    form: Result<Form<SigninForm>, FormRejection>,
) -> Response {
    let tls = tls.0;
    let Form(form) = match form {
        Ok(form) => form,
        Err(e) => return bad_request(e),
    };
    let next = safe_next(form.next.as_deref());
    let expected = cookie(&headers, SIGNIN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !same(&form.csrf, expected) {
        return signin_page(
            tls,
            &next,
            StatusCode::FORBIDDEN,
            Some("The sign-in form expired (or cookies are off); try again."),
        );
    }
    let secret = form.token.trim();
    let token = if cookie_safe(secret) {
        match app
            .store
            .token_by_hash(&crate::auth::hash_secret(secret))
            .await
        {
            Ok(token) => token,
            Err(e) => return api_error_page(ApiError::from(e)),
        }
    } else {
        None
    };
    match token {
        None => signin_page(
            tls,
            &next,
            StatusCode::UNAUTHORIZED,
            Some("Unknown or revoked token."),
        ),
        Some(t) if t.role == Role::Runner => signin_page(
            tls,
            &next,
            StatusCode::FORBIDDEN,
            Some("Runner tokens cannot sign in; use a client or admin token."),
        ),
        Some(t) => {
            tracing::info!(token = %t.id, "signed in to the dashboard");
            let mut response = Redirect::to(&next).into_response();
            let cookies = response.headers_mut();
            cookies.append(
                header::SET_COOKIE,
                set_cookie(SESSION_COOKIE, secret, tls, None),
            );
            cookies.append(
                header::SET_COOKIE,
                set_cookie(SIGNIN_COOKIE, "", tls, Some(0)),
            );
            response
        }
    }
}

#[derive(Debug, serde::Deserialize)]
pub struct CsrfForm {
    csrf: String,
}

pub async fn signout(
    tls: Tls,
    headers: HeaderMap,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return error_page(
            StatusCode::FORBIDDEN,
            "The sign-out form has no CSRF token.",
        );
    };
    match cookie(&headers, SESSION_COOKIE) {
        Some(secret) if same(&form.csrf, &csrf_of(secret)) => {}
        Some(_) => return error_page(StatusCode::FORBIDDEN, "Wrong CSRF token."),
        None => {}
    }
    let mut response = Redirect::to("/ui/signin").into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, "", tls.0, Some(0)),
    );
    response
}

// Runs.

#[derive(Debug, Default, serde::Deserialize)]
pub struct RunsFilter {
    state: Option<String>,
    project: Option<String>,
    label: Option<String>,
    tag: Option<String>,
}

fn nonempty(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

const STATES: [&str; 9] = [
    "queued",
    "claimed",
    "running",
    "succeeded",
    "failed",
    "timed_out",
    "cancelled",
    "lost",
    "error",
];

/// A run's labels matching `key` or `key=value`.
fn has_label(run: &RunView, wanted: &str) -> bool {
    match wanted.split_once('=') {
        Some((k, v)) => run.labels.get(k).is_some_and(|have| have == v),
        None => run.labels.contains_key(wanted),
    }
}

fn chips(items: impl IntoIterator<Item = String>) -> String {
    items
        .into_iter()
        .map(|i| format!(r#"<span class="chip">{}</span>"#, esc(&i)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn run_link(id: &str) -> String {
    format!(
        r#"<a class="mono" href="/ui/runs/{}">{}</a>"#,
        url_part(id),
        esc(id)
    )
}

pub async fn runs<S: Store>(
    State(app): AppState<S>,
    session: Session,
    query: Result<Query<RunsFilter>, QueryRejection>,
) -> PageResult {
    let filter = match query {
        Ok(Query(f)) => f,
        Err(e) => return Ok(bad_request(e)),
    };
    let label = nonempty(&filter.label);
    let list = routes::list_runs(
        State(app.clone()),
        session.caller.clone(),
        Ok(Query(ListQuery {
            state: nonempty(&filter.state),
            project: nonempty(&filter.project),
            tag: nonempty(&filter.tag),
            after: None,
            limit: Some(if label.is_some() { 500 } else { 100 }),
        })),
    )
    .await;
    let runs = list?.0.runs;
    let projects = routes::list_projects(State(app), session.caller.clone())
        .await?
        .0;
    let selected = nonempty(&filter.state).unwrap_or_default();
    let mut states = String::from(r#"<option value="">any state</option>"#);
    for s in STATES {
        let sel = if s == selected { " selected" } else { "" };
        let _ = write!(states, r#"<option value="{s}"{sel}>{s}</option>"#);
    }
    let chosen = nonempty(&filter.project).unwrap_or_default();
    let mut project_options = String::from(r#"<option value="">any project</option>"#);
    for p in &projects {
        let sel = if p.name == chosen { " selected" } else { "" };
        let _ = write!(
            project_options,
            r#"<option value="{}"{sel}>{}</option>"#,
            esc(&p.name),
            esc(&p.name)
        );
    }
    let mut rows = String::new();
    for run in runs
        .iter()
        .filter(|r| label.as_deref().is_none_or(|l| has_label(r, l)))
    {
        let command = run.sandbox.command.join(" ");
        let _ = write!(
            rows,
            r#"<tr data-run="{}"><td>{}</td><td>{}</td><td>{}</td><td class="cmd">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            esc(&run.id),
            run_link(&run.id),
            badge(&run.state),
            esc(&run.project),
            esc(&command),
            chips(run.labels.iter().map(|(k, v)| format!("{k}={v}"))),
            chips(run.tags.iter().cloned()),
            time(&run.created_at),
        );
    }
    if rows.is_empty() {
        rows = r#"<tr><td colspan="7" class="empty">No runs match.</td></tr>"#.into();
    }
    let body = format!(
        r#"<h1>Runs</h1>
<form method="get" action="/ui/runs" class="filters">
<select name="state" aria-label="state">{states}</select>
<select name="project" aria-label="project">{project_options}</select>
<input name="label" placeholder="label key or key=value" value="{}" aria-label="label">
<input name="tag" placeholder="tag" value="{}" aria-label="tag">
<button type="submit">Filter</button>
</form>
<div class="scroll" id="runs-table" data-refresh="{REFRESH_MS}">
<table><thead><tr><th>Run</th><th>State</th><th>Project</th><th>Command</th><th>Labels</th><th>Tags</th><th>Created</th></tr></thead>
<tbody>{rows}</tbody></table>
</div>"#,
        esc(&label.unwrap_or_default()),
        esc(&nonempty(&filter.tag).unwrap_or_default()),
    );
    ok_page("Runs", &session, &body)
}

fn final_state(state: &str) -> bool {
    RunState::parse_stored(state).is_some_and(RunState::is_final)
}

/// The run's diff artifact, if it has one, rendered.
fn run_diff<S: Store>(app: &App<S>, id: &str) -> Option<String> {
    let path = workflows::artifacts_dir(&app.config.state_dir, id).join("berth/diff.patch");
    read_diff(&path)
}

fn read_diff(path: &std::path::Path) -> Option<String> {
    use std::io::Read;
    let file = std::fs::File::open(path).ok()?;
    let mut bytes = Vec::new();
    file.take(MAX_DIFF_BYTES).read_to_end(&mut bytes).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    Some(if text.trim().is_empty() {
        r#"<p class="empty">The diff is empty: no changes.</p>"#.to_string()
    } else {
        html::diff(&text)
    })
}

/// The run's events so far, rendered into the page, so that the log and the events table are
/// there without JavaScript: (the log's spans, the events table's rows, a note when the page
/// holds only the start, the last event's number for the live stream to go on from).
async fn rendered_events<S: Store>(app: &App<S>, id: &str) -> (String, String, String, i64) {
    let (mut log, mut rows, mut after, mut read) = (String::new(), String::new(), 0, 0);
    let mut cut = false;
    'read: loop {
        let batch = match app.store.events_after(id, after, 500).await {
            Ok(batch) if !batch.is_empty() => batch,
            // A store that fails here fails the live stream too, which says so.
            _ => break,
        };
        for e in batch {
            if log.len() >= RENDERED_LOG_BYTES || read >= RENDERED_EVENTS {
                cut = true;
                break 'read;
            }
            after = e.seq;
            read += 1;
            let view = views::event(e);
            match view.kind.as_str() {
                "stdout" | "stderr" => {
                    let line = if view.data.ends_with('\n') {
                        view.data.clone()
                    } else {
                        format!("{}\n", view.data)
                    };
                    let _ = write!(log, r#"<span class="{}">{}</span>"#, view.kind, esc(&line));
                }
                _ => {
                    let _ = write!(
                        rows,
                        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                        view.seq,
                        esc(view.ts.get(11..19).unwrap_or(&view.ts)),
                        esc(&view.kind),
                        esc(&view.data),
                    );
                }
            }
        }
    }
    let note = if cut {
        format!(
            r#"<p class="hint">This page holds the first {read} events; the rest follows live with JavaScript, or through <span class="mono">berth logs</span>.</p>"#
        )
    } else {
        String::new()
    };
    (log, rows, note, after)
}

pub async fn run<S: Store>(
    State(app): AppState<S>,
    session: Session,
    id: Result<UrlPath<String>, ApiError>,
) -> PageResult {
    let UrlPath(id) = id?;
    let row = routes::visible_run(&app, &session.caller, &id).await?;
    let run = views::run(row);
    let audit = routes::run_audit(
        State(app.clone()),
        session.caller.clone(),
        UrlPath(id.clone()),
    )
    .await?
    .0;
    let artifacts = routes::list_artifacts(
        State(app.clone()),
        session.caller.clone(),
        UrlPath(id.clone()),
    )
    .await?
    .0;
    let is_final = final_state(&run.state);
    let refresh = if is_final {
        String::new()
    } else {
        format!(r#" data-refresh="{REFRESH_MS}""#)
    };
    let cancel = if is_final || run.cancel_requested {
        String::new()
    } else {
        format!(
            r#"<form method="post" action="/ui/runs/{}/cancel" class="inline"><input type="hidden" name="csrf" value="{}"><button type="submit" id="cancel" class="danger">Cancel run</button></form>"#,
            url_part(&run.id),
            esc(&session.csrf)
        )
    };
    let mut audit_rows = String::new();
    for a in &audit {
        let _ = write!(
            audit_rows,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            time(&a.ts),
            opt(a.from_state.as_deref()),
            badge(&a.to_state),
            esc(&a.actor),
            opt(a.reason.as_deref()),
        );
    }
    let mut artifact_rows = String::new();
    for a in &artifacts {
        let _ = write!(
            artifact_rows,
            r#"<tr><td><a href="/ui/runs/{}/artifacts/{}" download>{}</a></td><td>{}</td></tr>"#,
            url_part(&run.id),
            url_path(&a.path),
            esc(&a.path),
            a.size,
        );
    }
    if artifact_rows.is_empty() {
        artifact_rows = r#"<tr><td colspan="2" class="empty">None yet.</td></tr>"#.into();
    }
    let (log, event_rows, log_note, after) = rendered_events(&app, &id).await;
    let log_status = if is_final {
        "The run has ended; this is its whole log."
    } else {
        "The log as of loading this page: JavaScript follows it live (without it, reload)."
    };
    let diff = run_diff(&app, &id).unwrap_or_else(|| {
        r#"<p class="empty">This run has no diff artifact (berth/diff.patch).</p>"#.into()
    });
    let body = format!(
        r#"<h1>Run <span class="mono">{id}</span></h1>
<section id="summary" class="card"{refresh}>
<dl class="facts">
<dt>State</dt><dd id="run-state">{state}</dd>
<dt>Project</dt><dd>{project}</dd>
<dt>Image</dt><dd class="mono">{image}</dd>
<dt>Command</dt><dd class="mono cmd">{command}</dd>
<dt>Labels</dt><dd>{labels}</dd>
<dt>Tags</dt><dd>{tags}</dd>
<dt>Runner</dt><dd>{runner}</dd>
<dt>Created</dt><dd>{created}</dd>
<dt>Started</dt><dd>{started}</dd>
<dt>Finished</dt><dd>{finished}</dd>
<dt>Exit code</dt><dd>{exit}</dd>
<dt>Reason</dt><dd>{reason}</dd>
</dl>
{cancel}{cancelling}
</section>
<h2>Log</h2>
<pre id="log" class="log" data-events="/ui/runs/{id_url}/events?follow=true&amp;after={after}" aria-live="polite">{log}</pre>
{log_note}<p id="log-status" class="hint">{log_status}</p>
<h2>Events</h2>
<div class="scroll"><table><thead><tr><th>#</th><th>Time</th><th>Kind</th><th>Data</th></tr></thead><tbody id="events">{event_rows}</tbody></table></div>
<h2>Audit trail</h2>
<div class="scroll" id="audit"{refresh}><table><thead><tr><th>Time</th><th>From</th><th>To</th><th>By</th><th>Reason</th></tr></thead><tbody>{audit_rows}</tbody></table></div>
<h2>Artifacts</h2>
<div class="scroll" id="artifacts"{refresh}><table><thead><tr><th>Path</th><th>Bytes</th></tr></thead><tbody>{artifact_rows}</tbody></table></div>
<h2>Diff</h2>
<div id="diff"{refresh}>{diff}</div>"#,
        id = esc(&run.id),
        id_url = url_part(&run.id),
        state = badge(&run.state),
        project = esc(&run.project),
        image = opt(run.sandbox.image.as_deref()),
        command = esc(&run.sandbox.command.join(" ")),
        labels = chips(run.labels.iter().map(|(k, v)| format!("{k}={v}"))),
        tags = chips(run.tags.iter().cloned()),
        runner = opt(run.runner_id.as_deref()),
        created = time(&run.created_at),
        started = run.started_at.as_deref().map_or("—".into(), time),
        finished = run.finished_at.as_deref().map_or("—".into(), time),
        exit = run.exit_code.map_or("—".into(), |c| c.to_string()),
        reason = opt(run.reason.as_deref()),
        cancelling = if run.cancel_requested && !is_final {
            r#"<p class="hint">Cancel requested…</p>"#
        } else {
            ""
        },
    );
    ok_page(&format!("Run {}", run.id), &session, &body)
}

/// The run's events as server-sent events, for the page's log (the API's stream, with the
/// session's caller).
pub async fn run_events<S: Store>(
    State(app): AppState<S>,
    session: Session,
    id: Result<UrlPath<String>, ApiError>,
    query: Result<Query<routes::EventsQuery>, QueryRejection>,
    headers: HeaderMap,
) -> PageResult {
    let id = id?;
    let stream = routes::run_events(State(app), session.caller, id, query, headers).await?;
    Ok(stream.into_response())
}

pub async fn cancel<S: Store>(
    State(app): AppState<S>,
    session: Session,
    id: Result<UrlPath<String>, ApiError>,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> PageResult {
    let UrlPath(id) = id?;
    let posted = form.map(|Form(f)| f.csrf).unwrap_or_default();
    if let Some(refused) = session.csrf_refusal(&posted) {
        return Ok(refused);
    }
    let _cancelled =
        routes::cancel_run(State(app), session.caller.clone(), UrlPath(id.clone())).await?;
    Ok(Redirect::to(&format!("/ui/runs/{}", url_part(&id))).into_response())
}

pub async fn artifact<S: Store>(
    State(app): AppState<S>,
    session: Session,
    path: Result<UrlPath<(String, String)>, ApiError>,
) -> PageResult {
    let UrlPath((id, path)) = path?;
    let name: String = path
        .rsplit('/')
        .next()
        .unwrap_or("artifact")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "._-".contains(*c))
        .collect();
    let mut response =
        routes::download_artifact(State(app), session.caller, UrlPath((id, path))).await?;
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        response
            .headers_mut()
            .insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

// Workflows.

fn workflow_link(id: &str) -> String {
    format!(
        r#"<a class="mono" href="/ui/workflows/{}">{}</a>"#,
        url_part(id),
        esc(id)
    )
}

pub async fn workflows<S: Store>(State(app): AppState<S>, session: Session) -> PageResult {
    let list = routes::list_workflows(
        State(app),
        session.caller.clone(),
        Ok(Query(WorkflowListQuery {
            project: None,
            limit: Some(100),
        })),
    )
    .await;
    let list = list?.0.workflows;
    let mut rows = String::new();
    for w in &list {
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            workflow_link(&w.id),
            esc(&w.name),
            badge(&w.state),
            esc(&w.project),
            w.iterations,
            time(&w.created_at),
        );
    }
    if rows.is_empty() {
        rows = r#"<tr><td colspan="6" class="empty">No workflows.</td></tr>"#.into();
    }
    let body = format!(
        r#"<h1>Workflows</h1>
<div class="scroll" id="workflows-table" data-refresh="{REFRESH_MS}"><table><thead><tr><th>Workflow</th><th>Name</th><th>State</th><th>Project</th><th>Iterations</th><th>Created</th></tr></thead>
<tbody>{rows}</tbody></table></div>"#
    );
    ok_page("Workflows", &session, &body)
}

fn verdict(v: Option<&serde_json::Value>, error: Option<&str>) -> String {
    if let Some(e) = error {
        return format!(r#"<span class="bad-text">{}</span>"#, esc(e));
    }
    let Some(v) = v else {
        return "—".into();
    };
    let approved = match v.get("approved").and_then(serde_json::Value::as_bool) {
        Some(true) => r#"<span class="badge ok">approved</span> "#,
        Some(false) => r#"<span class="badge bad">changes requested</span> "#,
        None => "",
    };
    let summary = v
        .get("summary")
        .and_then(serde_json::Value::as_str)
        .map_or_else(|| v.to_string(), str::to_string);
    format!("{approved}{}", esc(&summary))
}

pub async fn workflow<S: Store>(
    State(app): AppState<S>,
    session: Session,
    id: Result<UrlPath<String>, ApiError>,
) -> PageResult {
    let UrlPath(id) = id?;
    let row = routes::visible_workflow(&app, &session.caller, &id).await?;
    let diff = workflows::progress_of(&row)
        .ok()
        .and_then(|p| workflows::diff_path(&app.config.state_dir, &p))
        .and_then(|p| read_diff(&p))
        .unwrap_or_else(|| r#"<p class="empty">No diff yet.</p>"#.into());
    let w: WorkflowView = workflows::view(row);
    let refresh = if final_state(&w.state) || w.state != "running" {
        String::new()
    } else {
        format!(r#" data-refresh="{REFRESH_MS}""#)
    };
    let mut steps = String::new();
    for s in &w.steps {
        let _ = write!(
            steps,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if s.iteration == 0 {
                "baseline".to_string()
            } else {
                s.iteration.to_string()
            },
            esc(&s.step),
            s.run_id.as_deref().map_or("—".into(), run_link),
            badge(&s.state),
            s.exit_code.map_or("—".into(), |c| c.to_string()),
            verdict(s.verdict.as_ref(), s.verdict_error.as_deref()),
        );
    }
    if steps.is_empty() {
        steps = r#"<tr><td colspan="6" class="empty">No steps yet.</td></tr>"#.into();
    }
    let body = format!(
        r#"<h1>Workflow <span class="mono">{}</span></h1>
<section class="card" id="wf-summary"{refresh}>
<dl class="facts">
<dt>Name</dt><dd>{}</dd><dt>State</dt><dd id="wf-state">{}</dd><dt>Project</dt><dd>{}</dd>
<dt>Task</dt><dd class="cmd">{}</dd><dt>Iterations</dt><dd>{}</dd><dt>Reason</dt><dd>{}</dd>
<dt>Runner</dt><dd>{}</dd><dt>Diff of run</dt><dd>{}</dd>
</dl></section>
<h2>Steps</h2>
<div class="scroll" id="steps"{refresh}><table><thead><tr><th>Iteration</th><th>Step</th><th>Run</th><th>State</th><th>Exit</th><th>Verdict</th></tr></thead><tbody>{steps}</tbody></table></div>
<h2>Diff</h2>
<div id="diff"{refresh}>{diff}</div>"#,
        esc(&w.id),
        esc(&w.name),
        badge(&w.state),
        esc(&w.project),
        esc(&w.task),
        w.iterations,
        opt(w.reason.as_deref()),
        opt(w.runner_id.as_deref()),
        w.diff_run.as_deref().map_or("—".into(), run_link),
    );
    ok_page(&format!("Workflow {}", w.id), &session, &body)
}

// Runners and administration.

pub async fn runners<S: Store>(State(app): AppState<S>, session: Session) -> PageResult {
    let list = routes::list_runners(State(app), session.caller.clone())
        .await?
        .0;
    let mut rows = String::new();
    for r in &list {
        let running = r
            .running
            .iter()
            .map(|id| run_link(id))
            .collect::<Vec<_>>()
            .join(" ");
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}{}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.name),
            if r.online {
                r#"<span class="badge ok">online</span>"#
            } else {
                r#"<span class="badge muted">offline</span>"#
            },
            chips(r.tags.iter().cloned()),
            r.capacity,
            if r.require_matching_tags {
                " · tagged runs only"
            } else {
                ""
            },
            if running.is_empty() {
                "—".into()
            } else {
                running
            },
            time(&r.last_heartbeat),
        );
    }
    if rows.is_empty() {
        rows = r#"<tr><td colspan="6" class="empty">No runner has registered.</td></tr>"#.into();
    }
    let body = format!(
        r#"<h1>Runners</h1>
<div class="scroll" id="runners-table" data-refresh="{REFRESH_MS}"><table><thead><tr><th>Name</th><th>Status</th><th>Tags</th><th>Capacity</th><th>Running</th><th>Last heartbeat</th></tr></thead>
<tbody>{rows}</tbody></table></div>"#
    );
    ok_page("Runners", &session, &body)
}

pub async fn admin<S: Store>(State(app): AppState<S>, session: Session) -> PageResult {
    let tokens = routes::list_tokens(State(app.clone()), session.caller.clone())
        .await?
        .0;
    let projects = routes::list_projects(State(app), session.caller.clone())
        .await?
        .0;
    let mut project_rows = String::new();
    for p in &projects {
        let _ = write!(
            project_rows,
            "<tr><td>{}</td><td class=\"mono\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&p.name),
            esc(&p.workspace_root),
            chips(p.allowed_paths.iter().cloned()),
            p.egress_ceiling
                .as_ref()
                .map_or("—".into(), |c| chips(c.iter().cloned())),
            time(&p.created_at),
        );
    }
    let mut token_rows = String::new();
    for t in &tokens {
        let _ = write!(
            token_rows,
            "<tr><td class=\"mono\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&t.id),
            esc(&t.role),
            opt(t.project.as_deref()),
            time(&t.created_at),
            t.revoked_at.as_deref().map_or("—".into(), time),
        );
    }
    let mut project_options = String::new();
    for p in &projects {
        let _ = write!(
            project_options,
            "<option value=\"{0}\">{0}</option>",
            esc(&p.name)
        );
    }
    let csrf = esc(&session.csrf);
    let body = format!(
        r#"<h1>Administration</h1>
<h2>Projects</h2>
<div class="scroll"><table id="projects"><thead><tr><th>Name</th><th>Workspace root</th><th>Allowed paths</th><th>Egress ceiling</th><th>Created</th></tr></thead><tbody>{project_rows}</tbody></table></div>
<form method="post" action="/ui/admin/projects" id="create-project" class="filters">
<input type="hidden" name="csrf" value="{csrf}">
<label>Name <input name="name" required placeholder="web"></label>
<label>Workspace root <input name="workspace_root" required placeholder="/srv/checkouts/web"></label>
<label>Allowed paths <input name="allowed_paths" placeholder="/srv/datasets, /srv/models"></label>
<button type="submit">Create project</button>
</form>
<p class="hint">An egress ceiling is set with <code>berth project create --egress-ceiling</code>.</p>
<h2>Tokens</h2>
<div class="scroll"><table id="tokens"><thead><tr><th>Id</th><th>Role</th><th>Project</th><th>Created</th><th>Revoked</th></tr></thead><tbody>{token_rows}</tbody></table></div>
<form method="post" action="/ui/admin/tokens" id="create-token" class="filters">
<input type="hidden" name="csrf" value="{csrf}">
<label>Role <select name="role"><option value="client">client</option><option value="runner">runner</option></select></label>
<label>Project <select name="project"><option value="">every project</option>{project_options}</select></label>
<button type="submit">Create token</button>
</form>
<p class="hint">A new token's secret is shown once. Revoke tokens with <code>berth token revoke</code>.</p>"#
    );
    ok_page("Administration", &session, &body)
}

/// Every field may be missing, so that the CSRF check comes first, whatever was posted.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct ProjectForm {
    csrf: String,
    name: String,
    workspace_root: String,
    /// Separated by commas or white space.
    allowed_paths: String,
}

/// The admin page's project form: the API's project creation, with its checks and refusals.
pub async fn create_project<S: Store>(
    State(app): AppState<S>,
    session: Session,
    form: Result<Form<ProjectForm>, FormRejection>,
) -> PageResult {
    let form = match form {
        Ok(Form(form)) => form,
        Err(e) => return Ok(bad_request(e)),
    };
    if let Some(refused) = session.csrf_refusal(&form.csrf) {
        return Ok(refused);
    }
    let request = berth_api::CreateProject {
        name: form.name.trim().to_string(),
        workspace_root: form.workspace_root.trim().to_string(),
        allowed_paths: form
            .allowed_paths
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect(),
        egress_ceiling: None,
    };
    let body = serde_json::to_vec(&request).map_err(|e| ApiError::Internal(e.to_string()))?;
    let _created = routes::create_project(
        State(app),
        session.caller.clone(),
        crate::extract::Body(body.into()),
    )
    .await?;
    Ok(Redirect::to("/ui/admin").into_response())
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct TokenForm {
    csrf: String,
    role: String,
    /// Empty: every project.
    project: String,
}

/// The admin page's token form: the API's token creation; the page that answers shows the
/// secret, once (never stored, never cached).
pub async fn create_token<S: Store>(
    State(app): AppState<S>,
    session: Session,
    form: Result<Form<TokenForm>, FormRejection>,
) -> PageResult {
    let form = match form {
        Ok(Form(form)) => form,
        Err(e) => return Ok(bad_request(e)),
    };
    if let Some(refused) = session.csrf_refusal(&form.csrf) {
        return Ok(refused);
    }
    let request = berth_api::CreateToken {
        role: form.role,
        project: Some(form.project).filter(|p| !p.is_empty()),
    };
    let body = serde_json::to_vec(&request).map_err(|e| ApiError::Internal(e.to_string()))?;
    let (_, axum::Json(created)) = routes::create_token(
        State(app),
        session.caller.clone(),
        crate::extract::Body(body.into()),
    )
    .await?;
    let scope = created
        .project
        .as_deref()
        .map_or(String::new(), |p| format!(" for project {}", esc(p)));
    let body = format!(
        r#"<h1>Token created</h1>
<p>The {role} token <span class="mono" id="new-token-id">{id}</span>{scope}. Its secret is shown once, here: copy it now. berth keeps only its hash.</p>
<pre id="new-token" class="mono">{secret}</pre>
<p><a href="/ui/admin">Back to the administration</a></p>"#,
        role = esc(&created.role),
        id = esc(&created.id),
        secret = esc(&created.token),
    );
    let mut response = ok_page("Token created", &session, &body)?;
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
