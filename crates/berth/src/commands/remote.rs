//! The client side of the coordinator: tokens, projects, submit, logs, cancel, runners, and
//! `ls`/`show` against a server.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use berth_api::*;
use berth_client::sse::SseEvent;
use berth_client::{ApiError, Client};
use berth_core::ExitStatus;

use crate::args::*;
use crate::printer::{data_line, print_json, Printer};

/// A client for `--server`/`BERTH_SERVER` with `--token`/`BERTH_TOKEN`, falling back to the
/// admin token in `state_dir` for admin commands.
fn client(
    remote: &RemoteArgs,
    admin_state_dir: Option<&Option<PathBuf>>,
) -> Result<Client, (String, String)> {
    let server = remote.server.clone().ok_or_else(|| {
        (
            "no server given".to_string(),
            "pass --server URL (or set BERTH_SERVER), e.g. https://berth.example.com:8765"
                .to_string(),
        )
    })?;
    let given = remote.token.clone().filter(|t| !t.trim().is_empty());
    let token = match (&given, admin_state_dir) {
        (Some(t), _) => t.clone(),
        (None, Some(dir)) => {
            let path = super::server::server_state_dir(dir.clone()).join("admin-token");
            std::fs::read_to_string(&path).map_err(|e| {
                (
                    format!("no token given and {} cannot be read: {e}", path.display()),
                    "pass --token TOKEN (or set BERTH_TOKEN)".to_string(),
                )
            })?
        }
        (None, None) => {
            return Err((
                "no token given".into(),
                "pass --token TOKEN (or set BERTH_TOKEN)".into(),
            ))
        }
    };
    Client::new(&server, &token, &remote.transport.transport()).map_err(|e| {
        let hint = e.hint().unwrap_or("check the server URL").to_string();
        (e.to_string(), hint)
    })
}

fn fail(printer: Printer, e: &ApiError) -> ExitStatus {
    let hint = match e {
        ApiError::Setup { hint, .. } | ApiError::Tls { hint, .. } => Some(hint.clone()),
        // What hyper says when an http:// client gets a TLS answer.
        ApiError::Unreachable { url, message }
            if url.starts_with("http:") && message.contains("invalid HTTP version") =>
        {
            Some(
                "the server seems to speak HTTPS: use https:// in --server (BERTH_SERVER)"
                    .to_string(),
            )
        }
        ApiError::Unreachable { .. } => {
            Some("is `berth server` running there? check --server / BERTH_SERVER".to_string())
        }
        ApiError::Status { status: 401, .. } => Some("check --token / BERTH_TOKEN".to_string()),
        ApiError::Status { status: 403, .. } => {
            Some("this token's role or project does not allow it".to_string())
        }
        _ => None,
    };
    printer.error(&e.to_string(), hint.as_deref());
    if let ApiError::Status { fields, .. } = e {
        for f in fields {
            let _ = writeln!(
                std::io::stderr(),
                "  {}: {}",
                if f.field.is_empty() {
                    "(body)"
                } else {
                    &f.field
                },
                f.message
            );
        }
    }
    ExitStatus::Error
}

/// A run id that is neither local nor on the server: where berth looked.
fn in_neither(printer: Printer, run: &str, looked_here: &str, client: &Client) -> ExitStatus {
    printer.error(
        &format!(
            "no run matches `{run}`: not in {looked_here}, nor on the server {}",
            client.base()
        ),
        Some("`berth ls` lists local runs; `berth ls --server URL` the server's"),
    );
    ExitStatus::Error
}

/// A local run answered for `run` while a server is set: says so, and asks the server too, so
/// that a run of the server's that the local one shadows (a prefix of both ids) is named rather
/// than silently hidden. The server's silence (unreachable, no token) changes nothing.
pub async fn local_answered(
    remote: &RemoteArgs,
    run: &str,
    local_id: &str,
    looked_here: &str,
    printer: Printer,
) {
    printer.info(&format!(
        "run {local_id} is in {looked_here}: the local run answered, not the server"
    ));
    let Ok(client) = client(remote, None) else {
        return;
    };
    let shadowed = match client.get::<RunView>(&format!("/api/v1/runs/{run}")).await {
        Ok(server_run) if server_run.id != local_id => {
            format!("the server's run {} ({})", server_run.id, server_run.state)
        }
        Err(ApiError::Status { status: 409, .. }) => "several of the server's runs".to_string(),
        _ => return,
    };
    printer.warning(&format!(
        "`{run}` also matches {shadowed} on the server {}: pass more of its id to see it",
        client.base()
    ));
}

/// Says that the server answered for a run that is not local.
fn server_answered(printer: Printer, id: &str, looked_here: &str, client: &Client) {
    printer.info(&format!(
        "run {id} is not in {looked_here}: the server {} answered",
        client.base()
    ));
}

macro_rules! client_or_fail {
    ($printer:expr, $remote:expr, $admin:expr) => {
        match client($remote, $admin) {
            Ok(c) => {
                if let Some(warning) = c.warning() {
                    $printer.warning(warning);
                }
                c
            }
            Err((message, hint)) => {
                $printer.error(&message, Some(&hint));
                return ExitStatus::Error;
            }
        }
    };
}

pub mod patch;
mod workflow;

pub async fn token(args: TokenArgs, printer: Printer) -> ExitStatus {
    let client = client_or_fail!(printer, &args.remote, Some(&args.state_dir));
    match args.command {
        TokenCommand::Create { role, project } => match client
            .post::<_, TokenCreated>(
                "/api/v1/tokens",
                &CreateToken {
                    role: role.as_str().to_string(),
                    project,
                },
            )
            .await
        {
            Ok(created) if args.json => print_json(&created),
            Ok(created) => {
                printer.info(&format!(
                    "created {} token {} (shown once; keep it secret)",
                    created.role, created.id
                ));
                data_line(&created.token);
            }
            Err(e) => return fail(printer, &e),
        },
        TokenCommand::Ls => match client.get::<Vec<TokenView>>("/api/v1/tokens").await {
            Ok(list) if args.json => print_json(&list),
            Ok(list) => {
                data_line(&format!(
                    "{:<12}  {:<7}  {:<16}  {:<25}  REVOKED",
                    "ID", "ROLE", "PROJECT", "CREATED"
                ));
                for t in list {
                    data_line(&format!(
                        "{:<12}  {:<7}  {:<16}  {:<25}  {}",
                        t.id,
                        t.role,
                        t.project.unwrap_or_else(|| "-".into()),
                        t.created_at,
                        t.revoked_at.unwrap_or_else(|| "-".into())
                    ));
                }
            }
            Err(e) => return fail(printer, &e),
        },
        TokenCommand::Revoke { id } => match client.delete(&format!("/api/v1/tokens/{id}")).await {
            Ok(()) => printer.info(&format!("revoked token {id}")),
            Err(e) => return fail(printer, &e),
        },
    }
    ExitStatus::Success
}

pub async fn project(args: ProjectArgs, printer: Printer) -> ExitStatus {
    let client = client_or_fail!(printer, &args.remote, Some(&args.state_dir));
    match args.command {
        ProjectCommand::Create {
            name,
            workspace_root,
            allowed_paths,
            egress_ceiling,
        } => {
            match client
                .post::<_, ProjectView>(
                    "/api/v1/projects",
                    &CreateProject {
                        name,
                        workspace_root,
                        allowed_paths,
                        egress_ceiling: (!egress_ceiling.is_empty()).then_some(egress_ceiling),
                    },
                )
                .await
            {
                Ok(p) if args.json => print_json(&p),
                Ok(p) => printer.info(&format!(
                    "created project {} (workspace root {})",
                    p.name, p.workspace_root
                )),
                Err(e) => return fail(printer, &e),
            }
        }
        ProjectCommand::Ls => match client.get::<Vec<ProjectView>>("/api/v1/projects").await {
            Ok(list) if args.json => print_json(&list),
            Ok(list) => {
                data_line(&format!(
                    "{:<20}  {:<40}  ALLOWED",
                    "NAME", "WORKSPACE ROOT"
                ));
                for p in list {
                    data_line(&format!(
                        "{:<20}  {:<40}  {}",
                        p.name,
                        p.workspace_root,
                        p.allowed_paths.join(",")
                    ));
                }
            }
            Err(e) => return fail(printer, &e),
        },
    }
    ExitStatus::Success
}

/// A flag of `berth submit` whose value cannot go into the request.
#[derive(Debug, thiserror::Error)]
pub enum SubmitFlagError {
    #[error("--mount: {0}")]
    Mount(berth_core::spec::SpecError),
    #[error("{flag}: `{entry}` is not KEY=VALUE")]
    KeyValue { flag: &'static str, entry: String },
}

fn key_values(
    flag: &'static str,
    entries: &[String],
) -> Result<BTreeMap<String, String>, SubmitFlagError> {
    entries
        .iter()
        .map(|e| {
            e.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| SubmitFlagError::KeyValue {
                    flag,
                    entry: e.clone(),
                })
        })
        .collect()
}

pub async fn submit(args: SubmitArgs, printer: Printer) -> ExitStatus {
    let client = client_or_fail!(printer, &args.remote, None);
    if args.workflow.is_some() {
        return workflow::submit(&client, args, printer).await;
    }
    let parsed = (|| -> Result<SubmitRun, SubmitFlagError> {
        let mounts = if args.mounts.is_empty() {
            None
        } else {
            Some(
                args.mounts
                    .iter()
                    .map(|m| {
                        let r = berth_core::spec::MountRequest::parse(m)
                            .map_err(SubmitFlagError::Mount)?;
                        Ok(MountSpec {
                            source: r.source.display().to_string(),
                            target: r.target,
                            read_only: r.read_only,
                        })
                    })
                    .collect::<Result<Vec<_>, SubmitFlagError>>()?,
            )
        };
        let execution_mode = args.execution_mode.into();
        let limits = args.memory.is_some() || args.cpus.is_some() || args.pids.is_some();
        let resources = (limits || args.disk.is_some()).then(|| ResourcesSpec {
            memory: args.memory.clone(),
            cpus: args.cpus,
            pids: args.pids,
            disk: args.disk.clone(),
        });
        Ok(SubmitRun {
            project: args.project.clone(),
            execution_mode,
            sandbox: SandboxRequest {
                image: args.image.clone(),
                workdir: args.workdir.clone(),
                command: args.command.clone(),
                env: key_values("--env", &args.env)?,
                secrets: args.secrets.clone(),
                mounts,
                resources,
                network: args.network.clone(),
                timeout: args.timeout.clone(),
                grace: args.grace.clone(),
                read_only: args.read_only,
                user: args.user.clone(),
                artifacts: args.artifacts.clone(),
                profile: args.profile.clone(),
                prompt: None,
                lifecycle: args.lifecycle.map(|l| l.as_str().to_string()),
                name: args.name.clone(),
                workspace_mode: args.workspace_mode.map(|m| m.to_string()),
                include_dirty: args.include_dirty,
                git_ref: args.git_ref.clone(),
                fetch: args.fetch,
                workflow: None,
                egress: egress_request(&args.egress),
                isolation: args.isolation.map(|i| i.to_string()),
            },
            tags: args.tags.clone(),
            labels: key_values("--label", &args.labels)?,
        })
    })();
    let request = match parsed {
        Ok(r) => r,
        Err(e) => {
            printer.error(&e.to_string(), None);
            return ExitStatus::Error;
        }
    };
    let run = match client.post::<_, RunView>("/api/v1/runs", &request).await {
        Ok(run) => run,
        Err(e) => return fail(printer, &e),
    };
    for warning in &run.warnings {
        printer.warning(&format!("run {}: {warning}", run.id));
    }
    if !args.follow {
        if args.json {
            print_json(&run);
        } else {
            data_line(&run.id);
        }
        return ExitStatus::Success;
    }
    printer.info(&format!("submitted run {}", run.id));
    follow_logs(&client, &run.id, true, args.json, printer).await
}

/// The submission's egress from `--egress`, `--allow-host`, `--allow-preset` and `--allow-tcp`;
/// `None` when none is given (the profile's default applies).
pub fn egress_request(args: &crate::args::EgressArgs) -> Option<berth_api::EgressRequest> {
    let given = args.mode.is_some()
        || !args.allow_hosts.is_empty()
        || !args.allow_presets.is_empty()
        || !args.allow_tcp.is_empty();
    given.then(|| berth_api::EgressRequest {
        mode: args.mode.map(|m| m.as_str().to_string()),
        allow: args.allow_hosts.clone(),
        presets: args.allow_presets.clone(),
        tcp: args.allow_tcp.clone(),
    })
}

pub async fn logs(args: LogsArgs, printer: Printer) -> ExitStatus {
    let client = client_or_fail!(printer, &args.remote, None);
    follow_logs(&client, &args.run, args.follow, args.json, printer).await
}

/// How long after a first Ctrl-C a second one cancels the run.
const SECOND_INTERRUPT: std::time::Duration = std::time::Duration::from_secs(2);

/// Streams a run's events, as [`stream_logs`], until the run ends or the user presses Ctrl-C.
/// The first Ctrl-C detaches: the run goes on, and berth says how to follow or cancel it. A
/// second one within [`SECOND_INTERRUPT`] asks the server to cancel the run.
async fn follow_logs(
    client: &Client,
    run_id: &str,
    follow: bool,
    json: bool,
    printer: Printer,
) -> ExitStatus {
    if !follow {
        return stream_logs(client, run_id, follow, json, printer).await;
    }
    use tokio::signal::unix::{signal, SignalKind};
    // One listener for both presses, so a second one that comes quickly is not missed.
    let Ok(mut interrupts) = signal(SignalKind::interrupt()) else {
        return stream_logs(client, run_id, follow, json, printer).await;
    };
    tokio::select! {
        status = stream_logs(client, run_id, follow, json, printer) => return status,
        _ = interrupts.recv() => {}
    }
    let server = client.base().trim_end_matches('/');
    let from_env =
        std::env::var(crate::env::BERTH_SERVER).is_ok_and(|v| v.trim_end_matches('/') == server);
    let flag = if from_env {
        String::new()
    } else {
        format!(" --server {server}")
    };
    printer.info(&format!("detached: run {run_id} goes on on the server"));
    printer.info(&format!("follow it: berth logs -f {run_id}{flag}"));
    printer.info(&format!("cancel it: berth cancel {run_id}{flag}"));
    printer.info(&format!(
        "press Ctrl-C again within {}s to cancel it now",
        SECOND_INTERRUPT.as_secs()
    ));
    if tokio::time::timeout(SECOND_INTERRUPT, interrupts.recv())
        .await
        .is_err()
    {
        return ExitStatus::External(130);
    }
    match client
        .post::<_, RunView>(
            &format!("/api/v1/runs/{run_id}/cancel"),
            &serde_json::json!({}),
        )
        .await
    {
        Ok(run) => {
            printer.info(&format!(
                "run {}: {}",
                run.id,
                if run.state == "cancelled" {
                    "cancelled"
                } else {
                    "cancel requested; it stops within its grace period"
                }
            ));
            ExitStatus::External(130)
        }
        Err(e) => fail(printer, &e),
    }
}

/// Streams a run's events (SSE), reconnecting with Last-Event-ID if the connection drops; when
/// following, exits with the run's status as `berth run` would.
async fn stream_logs(
    client: &Client,
    run_id: &str,
    follow: bool,
    json: bool,
    printer: Printer,
) -> ExitStatus {
    let path = format!("/api/v1/runs/{run_id}/events?follow={follow}");
    let mut last: Option<i64> = None;
    let mut failures = 0;
    loop {
        let mut events = match client.get_events(&path, last).await {
            Ok(r) => r,
            Err(e) if e.status().is_none() && follow && failures < 30 => {
                failures += 1;
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                continue;
            }
            Err(e) => return fail(printer, &e),
        };
        let mut ended = false;
        while let Some(next) = events.next().await {
            let event = match next {
                Ok(event) => event,
                // Left out for its size, with memory bounded; the events after it still come.
                Err(e) => {
                    printer.warning(&e.to_string());
                    continue;
                }
            };
            if let Some(id) = event.id.as_deref().and_then(|id| id.parse().ok()) {
                last = Some(id);
            }
            if event.kind == "end" {
                ended = true;
                continue;
            }
            show_event(&event, json);
        }
        if ended || !follow {
            break;
        }
        failures += 1;
        if failures > 30 {
            printer.error(
                "lost the connection to the server while following the run",
                Some("run `berth logs -f RUN` again; it resumes where it stopped"),
            );
            return ExitStatus::Error;
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    if !follow {
        return ExitStatus::Success;
    }
    match client
        .get::<RunView>(&format!("/api/v1/runs/{run_id}"))
        .await
    {
        Ok(run) => {
            if run.state != "succeeded" {
                printer.info(&format!(
                    "run {} {}: {}",
                    run.id,
                    run.state,
                    run.reason.clone().unwrap_or_default()
                ));
            }
            status_of(&run)
        }
        Err(e) => fail(printer, &e),
    }
}

/// The exit status `berth run` would have given.
fn status_of(run: &RunView) -> ExitStatus {
    use berth_core::RunState as S;
    let state = match run.state.as_str() {
        "succeeded" => S::Succeeded,
        "failed" => S::Failed,
        "timed_out" => S::TimedOut,
        "cancelled" => S::Cancelled,
        _ => S::Error,
    };
    ExitStatus::for_run(state, run.exit_code)
}

fn show_event(event: &SseEvent, json: bool) {
    if json {
        data_line(&event.data);
        return;
    }
    let Ok(view) = serde_json::from_str::<EventView>(&event.data) else {
        return;
    };
    // Lines that are not UTF-8 text, or hold a NUL, travel base64-encoded: their bytes as sent.
    let decoded = |data: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .unwrap_or_default()
    };
    let (stdout, bytes) = match view.kind.as_str() {
        "stdout" => (true, view.data.into_bytes()),
        "stderr" => (false, view.data.into_bytes()),
        "stdout_base64" => (true, decoded(&view.data)),
        "stderr_base64" => (false, decoded(&view.data)),
        _ => return,
    };
    if stdout {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(&bytes).and_then(|()| out.flush());
    } else {
        let _ = std::io::stderr().lock().write_all(&bytes);
    }
}

pub async fn cancel(args: CancelArgs, printer: Printer) -> ExitStatus {
    let client = client_or_fail!(printer, &args.remote, None);
    if workflow::is_workflow_id(&args.run) {
        return workflow::cancel(&client, &args.run, args.json, printer).await;
    }
    match client
        .post::<_, RunView>(
            &format!("/api/v1/runs/{}/cancel", args.run),
            &serde_json::json!({}),
        )
        .await
    {
        Ok(run) if args.json => print_json(&run),
        Ok(run) => printer.info(&format!(
            "run {}: {}{}",
            run.id,
            run.state,
            if run.cancel_requested && run.state != "cancelled" {
                " (cancel requested)"
            } else {
                ""
            }
        )),
        Err(e) => return fail(printer, &e),
    }
    ExitStatus::Success
}

pub async fn runners(args: RunnersArgs, printer: Printer) -> ExitStatus {
    let client = client_or_fail!(printer, &args.remote, None);
    match client.get::<Vec<RunnerView>>("/api/v1/runners").await {
        Ok(list) if args.json => print_json(&list),
        Ok(list) => {
            data_line(&format!(
                "{:<20}  {:<7}  {:<20}  {:>8}  RUNNING",
                "RUNNER", "ONLINE", "TAGS", "CAPACITY"
            ));
            for r in list {
                data_line(&format!(
                    "{:<20}  {:<7}  {:<20}  {:>8}  {}",
                    r.id,
                    r.online,
                    r.tags.join(","),
                    r.capacity,
                    r.running.join(",")
                ));
            }
        }
        Err(e) => return fail(printer, &e),
    }
    ExitStatus::Success
}

pub async fn remote_ls(
    server: String,
    token: Option<String>,
    transport: TransportArgs,
    state: Option<berth_core::RunState>,
    workflows: bool,
    json: bool,
    printer: Printer,
) -> ExitStatus {
    let client = client_or_fail!(
        printer,
        &RemoteArgs {
            server: Some(server),
            token,
            transport,
        },
        None
    );
    if workflows {
        return workflow::list(&client, json, printer).await;
    }
    let path = match state {
        Some(s) => format!("/api/v1/runs?state={s}"),
        None => "/api/v1/runs".to_string(),
    };
    match client.get::<RunList>(&path).await {
        Ok(list) if json => print_json(&super::run_json::list(
            list.runs.iter().map(super::run_json::server).collect(),
            list.next,
        )),
        Ok(list) => {
            data_line(&format!(
                "{:<16}  {:<10}  {:>4}  {:<12}  {:<25}  COMMAND",
                "RUN", "STATE", "EXIT", "PROJECT", "CREATED"
            ));
            for r in list.runs {
                let exit = r
                    .exit_code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "-".into());
                data_line(&format!(
                    "{:<16}  {:<10}  {:>4}  {:<12}  {:<25}  {}",
                    r.id,
                    r.state,
                    exit,
                    r.project,
                    r.created_at,
                    r.sandbox.command.join(" ")
                ));
            }
        }
        Err(e) => return fail(printer, &e),
    }
    ExitStatus::Success
}

pub async fn remote_show(
    server: String,
    token: Option<String>,
    transport: TransportArgs,
    run: String,
    looked_here: String,
    json: bool,
    printer: Printer,
) -> ExitStatus {
    let client = client_or_fail!(
        printer,
        &RemoteArgs {
            server: Some(server),
            token,
            transport,
        },
        None
    );
    if workflow::is_workflow_id(&run) {
        return workflow::show(&client, &run, json, printer).await;
    }
    let view = match client.get::<RunView>(&format!("/api/v1/runs/{run}")).await {
        Ok(v) => v,
        Err(ApiError::Status { status: 404, .. }) => {
            return in_neither(printer, &run, &looked_here, &client)
        }
        Err(e) => return fail(printer, &e),
    };
    server_answered(printer, &view.id, &looked_here, &client);
    let audit = client
        .get::<Vec<AuditView>>(&format!("/api/v1/runs/{}/audit", view.id))
        .await
        .unwrap_or_default();
    if json {
        print_json(&super::run_json::shown(
            super::run_json::server(&view),
            Some(&audit),
        ));
        return ExitStatus::Success;
    }
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    for (k, v) in [
        ("run", view.id.clone()),
        ("project", view.project.clone()),
        ("state", view.state.clone()),
        ("reason", opt(&view.reason)),
        (
            "exit code",
            view.exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
        ),
        ("runner", opt(&view.runner_id)),
        ("container", opt(&view.container_id)),
        ("ref", opt(&view.sandbox.git_ref)),
        ("commit", opt(&view.commit)),
        ("image", view.sandbox.image.clone().unwrap_or_default()),
        ("command", format!("{:?}", view.sandbox.command)),
        ("tags", view.tags.join(",")),
        ("created", view.created_at.clone()),
        ("finished", opt(&view.finished_at)),
    ] {
        data_line(&format!("{k:>10}: {v}"));
    }
    for warning in &view.warnings {
        data_line(&format!("{:>10}: {warning}", "waiting"));
    }
    data_line("     audit:");
    for a in audit {
        data_line(&format!(
            "            {}  {} -> {}  by {}{}",
            a.ts,
            a.from_state.unwrap_or_else(|| "-".into()),
            a.to_state,
            a.actor,
            a.reason.map(|r| format!(" ({r})")).unwrap_or_default()
        ));
    }
    ExitStatus::Success
}
