//! `berth workflow run FILE|BUILT-IN [TASK]`: a builder → tests → reviewer loop on the git
//! repository (or, with `workspace = "copy"`, any directory) in the current directory, each step
//! a `berth run` (or a host command) in one worktree or copy shared by all steps, driven by the
//! pure state machine in `berth_core::workflow`.
//!
//! Layout: `<state dir>/workflows/<id>/` holds `workflow.json` (the state, after every step),
//! `worktree/` (or, with `workspace = "copy"`, `copy/` and its private repository `copy.git/`;
//! removed at the end unless `--keep`), `baseline/<step>/` and `iter-N/<step>/`
//! (each step's own state directory with its run: record, logs, events, artifacts, verdict),
//! and `diff.patch`, the workflow's output.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use berth_core::event::{Event, EventLine, Stream};
use berth_core::exit::RunState;
use berth_core::spec::PullPolicy;
use berth_core::workflow::output::{OutputTail, OUTPUT_TAIL};
use berth_core::workflow::state::{Finish, Next, StepOutcome, StepRequest, WorkflowRun};
use berth_core::workflow::{self, Action, Location, Workflow, WorkspaceKind};
use berth_core::ExitStatus;
use berth_sandbox::workspace::{self, WorkspaceError, Worktree};
use berth_sandbox::{Interrupts, Reporter, SandboxError};
use clap::Parser;

use crate::args::{Cli, Command, WorkflowArgs, WorkflowCommand, WorkflowRunArgs};
use crate::printer::{data_line, HumanReporter, JsonReporter, Printer};

pub async fn workflow(args: WorkflowArgs, printer: Printer) -> ExitStatus {
    match args.command {
        WorkflowCommand::Run(args) => match run(*args, printer).await {
            Ok(status) => status,
            Err(Failure { message, hint }) => {
                printer.error(&message, hint.as_deref());
                ExitStatus::Error
            }
        },
    }
}

/// A workflow that could not start or go on, with what to do about it.
struct Failure {
    message: String,
    hint: Option<String>,
}

fn fail(message: impl Into<String>, hint: &str) -> Failure {
    Failure {
        message: message.into(),
        hint: (!hint.is_empty()).then(|| hint.to_string()),
    }
}

/// The workflow to run: a file, or a built-in by name.
fn load(args: &WorkflowRunArgs) -> Result<Workflow, Failure> {
    let test_command = args
        .test_command
        .as_deref()
        .map(|c| c.split_whitespace().map(str::to_string).collect::<Vec<_>>());
    if let Some(builtin) = workflow::builtin(&args.workflow, test_command.clone()) {
        return builtin.map_err(|e| fail(e.to_string(), ""));
    }
    let path = Path::new(&args.workflow);
    let text = std::fs::read_to_string(path).map_err(|e| {
        fail(
            format!("cannot read workflow {}: {e}", path.display()),
            &format!(
                "give a workflow file (TOML) or a built-in workflow: {}",
                workflow::BUILTINS.join(", ")
            ),
        )
    })?;
    let mut parsed = workflow::parse(&path.display().to_string(), &text).map_err(|e| {
        fail(
            e.to_string(),
            "the README's Workflows section describes the format",
        )
    })?;
    if let Some(argv) = test_command {
        parsed
            .set_test_command(&argv)
            .map_err(|e| fail(format!("--test-command: {e}"), ""))?;
    }
    Ok(parsed)
}

async fn run(args: WorkflowRunArgs, printer: Printer) -> Result<ExitStatus, Failure> {
    let workflow = load(&args)?;
    let task = args.task.join(" ");
    if workflow.needs_task() && task.trim().is_empty() {
        return Err(fail(
            format!("workflow {} needs a task", workflow.name),
            &format!("berth workflow run {} \"what to do\"", args.workflow),
        ));
    }
    let host_steps = workflow.host_steps();
    if !host_steps.is_empty() && !args.allow_host_steps {
        return Err(fail(
            format!(
                "workflow {} runs {} on this host without a sandbox",
                workflow.name,
                host_steps.join(", ")
            ),
            "read the file, then pass --allow-host-steps if that is what you want",
        ));
    }
    let settings =
        super::settings_here().map_err(|e| fail(e.to_string(), &e.hint().unwrap_or_default()))?;
    let profiles = super::profiles::all_profiles(&settings).map_err(|e| fail(e.to_string(), ""))?;
    // Each agent step's profile, credentials and image, before anything is created.
    let probe_env = super::probe_env();
    for name in workflow.profiles() {
        let profile = berth_core::profile::find(&profiles, name)
            .map_err(|e| fail(e.to_string(), "berth profiles lists them"))?;
        profile
            .check_credentials(&[], |name| {
                std::env::var_os(name).is_some_and(|v| !v.is_empty())
            })
            .map_err(|e| {
                fail(
                    e.to_string(),
                    &super::run::credentials_hint(&profile.credentials),
                )
            })?;
        if let Some(image) = args.agent_image.as_ref().or(profile.image.as_ref()) {
            super::run::image_present(&probe_env, image, PullPolicy::Missing)
                .await
                .map_err(|e| fail(e.to_string(), &e.hint().unwrap_or_default()))?;
        }
    }

    let cwd = std::env::current_dir().map_err(|e| fail(e.to_string(), ""))?;
    // The same state directory `berth run` here would use.
    let state_root = berth_sandbox::rundir::StateDir::resolve(
        args.state
            .state_dir
            .clone()
            .map(|d| if d.is_absolute() { d } else { cwd.join(d) }),
        crate::env::var(crate::env::BERTH_STATE_DIR).map(Into::into),
        settings.file.state_dir.clone().map(|d| cwd.join(d)),
        &cwd,
        &crate::env::data_dir(),
    );
    let id = berth_sandbox::clock::new_run_id();
    let dir = state_root.root().join("workflows").join(&id);
    std::fs::create_dir_all(&dir).map_err(|e| fail(format!("{}: {e}", dir.display()), ""))?;
    // berth run's worktree: the sandbox user owns it when berth runs as root, and git reads
    // only its recorded git directory, never a `.git` a step might plant in the tree.
    let (uid, gid) = berth_sandbox::launch::invoking_user();
    let sandbox = berth_core::plan::sandbox_user(None, uid, gid);
    let owner = workspace::tree_owner(sandbox, uid);
    let tree = if workflow.workspace == WorkspaceKind::Copy {
        // A copy of the current directory (copy mode's ignore rules and size limit), with a
        // private repository for its diff; no git checkout needed.
        let exclude = std::fs::canonicalize(state_root.root()).ok();
        workspace::create_copy_snapshot(
            &cwd,
            &dir.join("copy"),
            &dir.join("copy.git"),
            exclude.as_deref(),
            berth_core::spec::DEFAULT_COPY_LIMIT,
            owner,
        )
        .map_err(|e| match e {
            berth_sandbox::SandboxError::WithHint { message, hint } => fail(message, &hint),
            other => fail(other.to_string(), ""),
        })?
    } else {
        workspace::create_worktree(&cwd, &dir.join("worktree"), &id, false, owner).map_err(
            |e| match e {
                berth_sandbox::SandboxError::WithHint { message, .. } => fail(
                    message,
                    "run berth workflow run inside a git checkout with at least one commit, or use workspace = \"copy\"",
                ),
                other => fail(other.to_string(), ""),
            },
        )?
    };
    if tree.snapshot {
        printer.info(&format!(
            "workflow {} ({id}) on a copy of {} at {}",
            workflow.name,
            cwd.display(),
            tree.path.display()
        ));
    } else {
        printer.info(&format!(
            "workflow {} ({id}) on {} at {}; worktree {}",
            workflow.name,
            tree.repo.display(),
            &tree.base[..tree.base.len().min(12)],
            tree.path.display()
        ));
    }

    let mut interrupts = super::run::forward_interrupts();
    let mut state = WorkflowRun::new(workflow, &task);
    let finish = loop {
        save(&dir, &state);
        let request = match state.next() {
            Next::Finished(finish) => break finish,
            Next::Run(request) => request,
        };
        let outcome = run_step(
            &args,
            &request,
            &state,
            &dir,
            &tree,
            &mut interrupts,
            printer,
        )
        .await;
        let cancelled = outcome.state == RunState::Cancelled;
        if cancelled {
            state.cancel();
        }
        if let Err(e) = state.record(outcome) {
            return Err(fail(format!("recording the step failed: {e}"), ""));
        }
        if let Some(step) = state.last_step() {
            say_verdict(step, printer);
        }
    };
    save(&dir, &state);

    let diff = diff_text(&tree).unwrap_or_else(|e| {
        printer.warning(&format!("computing the final diff failed: {e}"));
        String::new()
    });
    let patch = dir.join("diff.patch");
    if let Err(e) = std::fs::write(&patch, &diff) {
        printer.warning(&format!("{}: {e}", patch.display()));
    }
    if args.keep && tree.snapshot {
        printer.info(&format!("copy kept at {}", tree.path.display()));
    } else if args.keep {
        printer.info(&format!(
            "worktree kept at {} (branch {})",
            tree.path.display(),
            tree.branch
        ));
    } else {
        for problem in tree.remove() {
            printer.warning(&format!("removing the worktree failed: {problem}"));
        }
    }
    report(&args, &finish, &id, &dir, &patch, &diff, printer);
    Ok(ExitStatus::for_run(finish.state, None))
}

/// Says a step's verdict as soon as the step has ended: approved, or the changes requested
/// (each on its own line), or why no verdict could be read.
fn say_verdict(step: &workflow::state::StepRecord, printer: Printer) {
    let name = &step.position.step;
    if let Some(verdict) = &step.verdict {
        let summary = verdict.summary.trim();
        if verdict.approved {
            printer.info(&format!("{name}: approved: {summary}"));
        } else {
            printer.info(&format!("{name}: changes requested: {summary}"));
            for change in &verdict.requested_changes {
                printer.info(&format!("  - {}", change.trim()));
            }
        }
    } else if let Some(error) = &step.verdict_error {
        printer.warning(&format!("{name}: no verdict: {error}"));
    }
}

/// Prints how the workflow ended: the summary on stderr, the data (JSON, or the diff's path)
/// on stdout.
fn report(
    args: &WorkflowRunArgs,
    finish: &Finish,
    id: &str,
    dir: &Path,
    patch: &Path,
    diff: &str,
    printer: Printer,
) {
    if args.json {
        crate::printer::print_json(&serde_json::json!({
            "id": id,
            "state": finish.state,
            "reason": finish.message(),
            "baseline_red": finish.baseline_red,
            "iterations": finish.iterations,
            "dir": dir,
            "diff": patch,
        }));
        return;
    }
    let line = format!("workflow {id} {}: {}", finish.state, finish.message());
    if finish.state == RunState::Succeeded {
        printer.info(&line);
    } else {
        printer.error(
            &line,
            Some(&format!("each step's records are in {}", dir.display())),
        );
    }
    if diff.is_empty() {
        printer.info("no change");
    } else {
        data_line(&patch.display().to_string());
    }
}

/// Runs one step and says how it ended.
#[allow(clippy::too_many_arguments)]
async fn run_step(
    args: &WorkflowRunArgs,
    request: &StepRequest,
    state: &WorkflowRun,
    dir: &Path,
    tree: &Worktree,
    interrupts: &mut Interrupts,
    printer: Printer,
) -> StepOutcome {
    let worktree = tree.mount.as_path();
    let position = &request.position;
    let step_dir = dir.join(position.dir());
    if let Err(e) = std::fs::create_dir_all(&step_dir) {
        return StepOutcome::ended(RunState::Error, &format!("{}: {e}", step_dir.display()));
    }
    let round = if position.is_baseline() {
        "baseline".to_string()
    } else {
        format!(
            "iteration {}/{}",
            position.iteration, state.workflow.max_iterations
        )
    };
    let what = match &request.step.action {
        Action::Agent { profile, .. } => profile.clone(),
        Action::Command { argv, location } => format!(
            "{}{}",
            argv.join(" "),
            if *location == Location::Host {
                " (on the host)"
            } else {
                ""
            }
        ),
    };
    printer.info(&format!("── {round} · {} · {what}", request.step.name));
    match &request.step.action {
        Action::Command {
            argv,
            location: Location::Host,
        } => {
            run_on_host(
                argv,
                worktree,
                &step_dir,
                request.step.timeout_secs,
                interrupts,
            )
            .await
        }
        Action::Command { argv, .. } => {
            let mut run_args = sandbox_args(args, &request.step, worktree, &step_dir, None);
            run_args.push("--".into());
            run_args.extend(argv.iter().cloned());
            let before = tree.snapshot();
            let outcome =
                run_in_sandbox(args, run_args, request, &step_dir, interrupts, printer).await;
            keep_step_patch(tree, before, &step_dir, printer);
            outcome
        }
        Action::Agent { profile, .. } => {
            let diff = if request.needs_diff() {
                diff_text(tree).unwrap_or_default()
            } else {
                String::new()
            };
            let prompt = match request.prompt(&diff) {
                Ok(Some(prompt)) => prompt,
                Ok(None) => String::new(),
                Err(e) => {
                    return StepOutcome::ended(
                        RunState::Error,
                        &format!("rendering the prompt failed: {e}"),
                    )
                }
            };
            let mut run_args =
                sandbox_args(args, &request.step, worktree, &step_dir, Some(profile));
            run_args.push("--".into());
            run_args.push(prompt);
            let before = tree.snapshot();
            let outcome =
                run_in_sandbox(args, run_args, request, &step_dir, interrupts, printer).await;
            keep_step_patch(tree, before, &step_dir, printer);
            outcome
        }
    }
}

/// Keeps what one step changed in the shared workspace as its run's own patch (`diff.patch`
/// in the run's directory, named in its record), so that `berth diff STEP_RUN` shows it and
/// `berth apply` takes just that step. The step's run has ended: no process of it is left.
fn keep_step_patch(
    tree: &Worktree,
    before: Result<String, WorkspaceError>,
    step_dir: &Path,
    printer: Printer,
) {
    let Some(run_dir) = step_run_dir(step_dir) else {
        return;
    };
    let run_dir = berth_sandbox::rundir::RunDir::open(run_dir);
    let kept = before
        .and_then(|before| Ok((before, tree.snapshot()?)))
        .and_then(|(before, after)| tree.patch_between(&before, &after))
        .map_err(SandboxError::from)
        .and_then(|patch| {
            let path = run_dir.path().join("diff.patch");
            std::fs::write(&path, patch).map_err(|e| SandboxError::io(&path, e))
        })
        .and_then(|()| {
            let mut record = run_dir.read_record()?;
            // The patch's paths are relative to the checkout's top (a worktree), or to the
            // directory the copy was made of (a snapshot): `tree.repo` either way.
            record.workspace = Some(berth_core::record::WorkspaceResult {
                mode: record.spec.workspace_mode,
                repo: Some(tree.repo.display().to_string()),
                base_commit: Some(tree.base.clone()).filter(|b| !b.is_empty()),
                diff: Some("diff.patch".into()),
                tree: None,
                worktree: None,
                branch: None,
                upload: None,
                download: None,
            });
            run_dir.write_record(&record)
        });
    if let Err(e) = kept {
        printer.warning(&format!("keeping the step's own patch failed: {e}"));
    }
}

/// The directory of the run a step made (its only one).
fn step_run_dir(step_dir: &Path) -> Option<std::path::PathBuf> {
    std::fs::read_dir(step_dir.join("runs"))
        .ok()
        .and_then(|entries| entries.flatten().map(|e| e.path()).max())
}

/// `berth run` arguments for a step in the sandbox (before `--` and the command or prompt).
fn sandbox_args(
    args: &WorkflowRunArgs,
    step: &workflow::Step,
    worktree: &Path,
    step_dir: &Path,
    profile: Option<&str>,
) -> Vec<String> {
    let mut run = vec![
        "berth".to_string(),
        "run".into(),
        "--workspace".into(),
        worktree.display().to_string(),
        "--state-dir".into(),
        step_dir.display().to_string(),
        "--no-pool".into(),
    ];
    if let Some(profile) = profile {
        run.extend(["--profile".into(), profile.to_string()]);
        if let Some(image) = &args.agent_image {
            run.extend(["--image".into(), image.clone()]);
        }
    } else if let Some(image) = &args.image {
        run.extend(["--image".into(), image.clone()]);
    }
    if let Some(secs) = step.timeout_secs {
        run.extend(["--timeout".into(), format!("{secs}s")]);
    }
    if let Some(isolation) = step.isolation {
        run.extend(["--isolation".into(), isolation.to_string()]);
    }
    for env in &args.env {
        run.extend(["--env".into(), env.clone()]);
    }
    if let Some(network) = &args.network {
        run.extend(["--network".into(), network.clone()]);
    }
    let egress = &args.egress;
    if let Some(mode) = &egress.mode {
        run.extend(["--egress".into(), mode.to_string()]);
    }
    for (flag, values) in [
        ("--allow-host", &egress.allow_hosts),
        ("--allow-preset", &egress.allow_presets),
        ("--allow-tcp", &egress.allow_tcp),
    ] {
        for value in values {
            run.extend([flag.to_string(), value.clone()]);
        }
    }
    if args.json {
        run.push("--json".into());
    }
    run
}

/// Runs `berth run ARGS` in this process, passing interrupts on; reads the run back.
async fn run_in_sandbox(
    args: &WorkflowRunArgs,
    run_args: Vec<String>,
    request: &StepRequest,
    step_dir: &Path,
    interrupts: &mut Interrupts,
    printer: Printer,
) -> StepOutcome {
    let parsed = match Cli::try_parse_from(&run_args) {
        Ok(Cli {
            command: Command::Run(run),
        }) => run,
        Ok(_) => return StepOutcome::ended(RunState::Error, "internal: not a run"),
        Err(e) => {
            return StepOutcome::ended(
                RunState::Error,
                &format!("the step's berth run arguments are invalid: {e}"),
            )
        }
    };
    let shown: Arc<dyn Reporter> = if args.json {
        Arc::new(JsonReporter)
    } else {
        Arc::new(HumanReporter::new(printer))
    };
    let reporter = Arc::new(StepOutputReporter {
        shown,
        tail: Mutex::default(),
    });
    let (tx, step_interrupts) = tokio::sync::mpsc::unbounded_channel();
    let step = super::run::prepare_and_run(*parsed, reporter.clone(), step_interrupts, printer);
    tokio::pin!(step);
    let result = loop {
        tokio::select! {
            result = &mut step => break result,
            Some(signal) = interrupts.recv() => { let _ = tx.send(signal); }
        }
    };
    if let Err(e) = result {
        return StepOutcome::ended(RunState::Error, &e.to_string());
    }
    let output = reporter
        .tail
        .lock()
        .map(|mut tail| std::mem::take(&mut *tail).finish())
        .unwrap_or_default();
    read_run(step_dir, request, output)
}

/// Passes a sandboxed step's run on to the reporter that shows it, and keeps the command's
/// output for `{{ STEP.output }}` by the core's rule (`workflow::output`). It takes the output
/// line by line, as the runner does for the server, so a step's output is the same in both;
/// a reporter that shows raw output gets each line as it is complete.
struct StepOutputReporter {
    shown: Arc<dyn Reporter>,
    tail: Mutex<OutputTail>,
}

impl Reporter for StepOutputReporter {
    fn event(&self, line: &EventLine) {
        let Event::Output {
            stream,
            text,
            data_base64,
        } = &line.event
        else {
            return self.shown.event(line);
        };
        let bytes = berth_core::event::output_bytes(text.as_deref(), data_base64.as_deref())
            .unwrap_or_default();
        if let Ok(mut tail) = self.tail.lock() {
            tail.push(&bytes);
        }
        if self.shown.wants_lines() {
            self.shown.event(line);
        } else {
            self.shown.output(*stream, &bytes);
        }
    }

    /// Not called: this reporter takes lines.
    fn output(&self, stream: Stream, data: &[u8]) {
        self.shown.output(stream, data);
    }

    fn wants_lines(&self) -> bool {
        true
    }

    fn pull_progress(&self, progress: &berth_engine::PullProgress) {
        self.shown.pull_progress(progress);
    }

    fn transfer_progress(&self, what: &str, done: u64, total: u64) {
        self.shown.transfer_progress(what, done, total);
    }
}

/// The step's run as its records say: state, exit code, reason, output (an agent's final
/// message, or `command_output`) and verdict file.
fn read_run(step_dir: &Path, request: &StepRequest, command_output: String) -> StepOutcome {
    let runs = step_dir.join("runs");
    let run_dir = std::fs::read_dir(&runs)
        .ok()
        .and_then(|entries| entries.flatten().map(|e| e.path()).max());
    let Some(run_dir) = run_dir else {
        return StepOutcome::ended(RunState::Error, "the step left no run record");
    };
    let record: serde_json::Value = match std::fs::read(run_dir.join("run.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
    {
        Some(r) => r,
        None => return StepOutcome::ended(RunState::Error, "the step's run record is unreadable"),
    };
    let state =
        serde_json::from_value::<RunState>(record["state"].clone()).unwrap_or(RunState::Error);
    let output = match &request.step.action {
        Action::Agent { .. } => final_message(&run_dir.join("events.jsonl")),
        Action::Command { .. } => command_output,
    };
    let mut outcome = StepOutcome {
        state,
        exit_code: record["exit_code"].as_i64(),
        reason: record["reason"].as_str().map(str::to_string),
        output,
        verdict_file: None,
        run_id: record["id"].as_str().map(str::to_string),
    };
    if let Some(rule) = &request.step.verdict {
        let file = run_dir.join("artifacts/berth/out").join(&rule.file);
        if let Ok(bytes) = std::fs::File::open(&file).and_then(workflow::verdict::read_verdict_file)
        {
            outcome.verdict_file = Some(bytes);
        }
    }
    outcome
}

/// The agent's final message, from the run's parsed agent events.
fn final_message(events: &Path) -> String {
    let text = std::fs::read_to_string(events).unwrap_or_default();
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|e| workflow::verdict::final_message(&e).map(str::to_string))
        .unwrap_or_default()
}

/// `{{ STEP.output }}` of a host step, whose stdout and stderr share one log: its last
/// `OUTPUT_TAIL` bytes by the core's rule.
fn tail(path: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(OUTPUT_TAIL as u64)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let mut tail = OutputTail::default();
    tail.push(&bytes);
    tail.finish()
}

/// A host step: the command in the worktree, without a sandbox, its output kept in the step's
/// directory.
async fn run_on_host(
    argv: &[String],
    worktree: &Path,
    step_dir: &Path,
    timeout_secs: Option<u64>,
    interrupts: &mut Interrupts,
) -> StepOutcome {
    let log = step_dir.join("output.log");
    let file = match std::fs::File::create(&log) {
        Ok(f) => f,
        Err(e) => return StepOutcome::ended(RunState::Error, &format!("{}: {e}", log.display())),
    };
    let err = match file.try_clone() {
        Ok(f) => f,
        Err(e) => return StepOutcome::ended(RunState::Error, &e.to_string()),
    };
    let Some((program, rest)) = argv.split_first() else {
        return StepOutcome::ended(RunState::Error, "the command is empty");
    };
    let mut child = match tokio::process::Command::new(program)
        .args(rest)
        .current_dir(worktree)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            return StepOutcome {
                exit_code: Some(127),
                ..StepOutcome::ended(
                    RunState::Failed,
                    &format!("cannot run {program} on the host: {e}"),
                )
            }
        }
    };
    let limit = std::time::Duration::from_secs(timeout_secs.unwrap_or(3600));
    let ended = tokio::select! {
        status = child.wait() => status.map_err(|e| e.to_string()),
        () = tokio::time::sleep(limit) => {
            let _ = child.kill().await;
            return StepOutcome::ended(RunState::TimedOut, &format!("timed out after {}s", limit.as_secs()));
        }
        Some(signal) = interrupts.recv() => {
            let _ = child.kill().await;
            return StepOutcome::ended(RunState::Cancelled, &format!("cancelled by {signal}"));
        }
    };
    match ended {
        Ok(status) => {
            use std::os::unix::process::ExitStatusExt;
            let code = status
                .code()
                .map(i64::from)
                .unwrap_or_else(|| 128 + i64::from(status.signal().unwrap_or(0)));
            StepOutcome::exited(code, &tail(&log))
        }
        Err(e) => StepOutcome::ended(RunState::Error, &e),
    }
}

/// The worktree's change against its base: new, modified and deleted files, binaries included.
fn diff_text(tree: &Worktree) -> Result<String, WorkspaceError> {
    tree.diff()
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

/// Saves the workflow's state; failing to is a warning's worth, not the workflow's end.
fn save(dir: &Path, state: &WorkflowRun) {
    if let Ok(json) = serde_json::to_vec_pretty(state) {
        let tmp = dir.join(".workflow.json.tmp");
        if std::fs::write(&tmp, json).is_ok() {
            let _ = std::fs::rename(&tmp, dir.join("workflow.json"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shows raw output, as the terminal's reporter does.
    #[derive(Default)]
    struct Shown(Mutex<Vec<u8>>);

    impl Reporter for Shown {
        fn event(&self, _line: &EventLine) {}
        fn output(&self, _stream: Stream, data: &[u8]) {
            self.0.lock().unwrap().extend_from_slice(data);
        }
    }

    fn output(stream: Stream, text: Option<&str>, data_base64: Option<&str>) -> EventLine {
        EventLine {
            ts: String::new(),
            run_id: "r".into(),
            event: Event::Output {
                stream,
                text: text.map(str::to_string),
                data_base64: data_base64.map(str::to_string),
            },
        }
    }

    /// The server's test of the same rule is `berth-server/tests/workflows.rs`
    /// (`a_command_step_s_output_is_the_interleaved_tail_cut_at_a_character`), over the same
    /// lines stored as events.
    #[test]
    fn a_command_step_s_output_is_the_interleaved_tail_cut_at_a_character() {
        let shown = Arc::new(Shown::default());
        let reporter = StepOutputReporter {
            shown: shown.clone(),
            tail: Mutex::default(),
        };
        // Cut off, then "é" across the cut, then stdout and stderr lines in turn.
        reporter.event(&output(Stream::Stdout, Some("gone\n"), None));
        reporter.event(&output(Stream::Stderr, Some("é\n"), None));
        let mut kept = String::from("\n");
        let mut stream = Stream::Stdout;
        // The bytes after "é": OUTPUT_TAIL less its second byte.
        while kept.len() < OUTPUT_TAIL - 1 - 8 {
            let room = (OUTPUT_TAIL - 1 - 8 - kept.len()).min(1024);
            let line = format!("{}\n", "o".repeat(room - 1));
            reporter.event(&output(stream, Some(&line), None));
            kept.push_str(&line);
            stream = match stream {
                Stream::Stdout => Stream::Stderr,
                Stream::Stderr => Stream::Stdout,
            };
        }
        reporter.event(&output(Stream::Stderr, Some("tail\n"), None));
        reporter.event(&output(Stream::Stdout, None, Some("//4K")));

        let got = std::mem::take(&mut *reporter.tail.lock().unwrap()).finish();
        assert_eq!(got, format!("{kept}tail\n\u{FFFD}\u{FFFD}\n"));
        // The terminal was shown every byte, base64 decoded.
        let shown = shown.0.lock().unwrap();
        assert!(shown.starts_with("gone\né\n".as_bytes()));
        assert!(shown.ends_with(b"tail\n\xFF\xFE\n"));
    }
}
