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
use std::sync::Arc;

use berth_core::exit::RunState;
use berth_core::spec::PullPolicy;
use berth_core::workflow::state::{Finish, Next, StepOutcome, StepRequest, WorkflowRun};
use berth_core::workflow::{self, Action, Location, Workflow, WorkspaceKind};
use berth_core::ExitStatus;
use berth_sandbox::workspace::{self, Worktree};
use berth_sandbox::{Interrupts, Reporter};
use clap::Parser;

use crate::args::{Cli, Command, WorkflowArgs, WorkflowCommand, WorkflowRunArgs};
use crate::printer::{data_line, HumanReporter, JsonReporter, Printer};

/// The most of a step's output read back for `{{ STEP.output }}` (the template cuts further).
const OUTPUT_TAIL: u64 = 256 * 1024;

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
    let (uid, gid) = crate::invoking_user();
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
            run_in_sandbox(args, run_args, request, &step_dir, interrupts, printer).await
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
            run_in_sandbox(args, run_args, request, &step_dir, interrupts, printer).await
        }
    }
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
        run.extend(["--egress".into(), mode.clone()]);
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
    let reporter: Arc<dyn Reporter> = if args.json {
        Arc::new(JsonReporter)
    } else {
        Arc::new(HumanReporter::new(printer))
    };
    let (tx, step_interrupts) = tokio::sync::mpsc::unbounded_channel();
    let step = super::run::prepare_and_run(*parsed, reporter, step_interrupts, printer);
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
    read_run(step_dir, request)
}

/// The step's run as its records say: state, exit code, reason, output and verdict file.
fn read_run(step_dir: &Path, request: &StepRequest) -> StepOutcome {
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
        Action::Command { .. } => {
            tail(&run_dir.join("stdout.log")) + &tail(&run_dir.join("stderr.log"))
        }
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
        if let Ok(bytes) = read_limited(&file, workflow::verdict::MAX_VERDICT_BYTES as u64 + 1) {
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

/// The last `OUTPUT_TAIL` bytes of a log.
fn tail(path: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(OUTPUT_TAIL)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

fn read_limited(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(limit)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
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
fn diff_text(tree: &Worktree) -> Result<String, String> {
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
