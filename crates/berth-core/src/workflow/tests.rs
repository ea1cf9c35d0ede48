use super::state::{FinishReason, Next, Position, StepOutcome, WorkflowRun};
use super::*;
use crate::exit::RunState;

/// A complete workflow; tests replace one piece of it.
const EXAMPLE: &str = r#"name = "fix-tests"
workspace = "copy"

[[baseline]]
name = "before"
command = ["make", "test"]
continue_on_failure = true

[loop]
max_iterations = 3
until = "review.approved"

[[loop.steps]]
name = "build"
agent = "claude-code"
prompt = """
Task: {{ task }}
Round {{ iteration }}/{{ max_iterations }}. Before: {{ before.exit_code }}.
Review: {{ review.feedback }}
Tests: {{ tests.output }}"""

[[loop.steps]]
name = "tests"
command = ["make", "test"]
where = "sandbox"
continue_on_failure = true

[[loop.steps]]
name = "review"
agent = "codex"
prompt = "Tests {{ tests.status }}. Diff:\n{{ diff }}"
timeout = "20m"
verdict = { fallback = { approve = "^APPROVED", reject = "^CHANGES" } }
"#;

#[test]
fn parses_the_example() {
    let w = parse("wf.toml", EXAMPLE).unwrap();
    assert_eq!(w.name, "fix-tests");
    assert_eq!(w.workspace, WorkspaceKind::Copy);
    assert_eq!(w.max_iterations, 3);
    assert_eq!(w.until, "review");
    assert_eq!(w.baseline.len(), 1);
    assert_eq!(w.steps.len(), 3);
    assert_eq!(w.max_value_chars, template::DEFAULT_VALUE_LIMIT);
    assert_eq!(
        w.steps[1].action,
        Action::Command {
            argv: vec!["make".into(), "test".into()],
            location: Location::Sandbox
        }
    );
    let review = w.step("review").unwrap();
    assert_eq!(review.timeout_secs, Some(1200));
    assert_eq!(review.verdict.as_ref().unwrap().file, "result.json");
    assert_eq!(
        w.profiles().into_iter().collect::<Vec<_>>(),
        ["claude-code", "codex"]
    );
    assert!(w.needs_task() && w.host_steps().is_empty());
    assert_eq!(review.isolation, None);
    // Stored and read back unchanged.
    let json = serde_json::to_string(&w).unwrap();
    assert_eq!(serde_json::from_str::<Workflow>(&json).unwrap(), w);
    // A step may ask for gVisor.
    let w = parse(
        "wf.toml",
        &edit(
            "timeout = \"20m\"",
            "timeout = \"20m\"\nisolation = \"gvisor\"",
        ),
    )
    .unwrap();
    assert_eq!(
        w.step("review").unwrap().isolation,
        Some(crate::spec::Isolation::Gvisor)
    );
}

/// `EXAMPLE` with `from` replaced by `to` (which must occur).
fn edit(from: &str, to: &str) -> String {
    assert!(EXAMPLE.contains(from), "{from}");
    EXAMPLE.replacen(from, to, 1)
}

#[test]
fn errors_name_the_field_what_is_accepted_and_the_line() {
    let review_verdict =
        r#"verdict = { fallback = { approve = "^APPROVED", reject = "^CHANGES" } }"#;
    // (the file, what the error must say)
    let cases: Vec<(String, &[&str])> = vec![
        // toml's own errors: unknown keys, types, missing keys.
        (
            edit("workspace = \"copy\"", "worksapce = \"copy\""),
            &["unknown field `worksapce`", "line 2"],
        ),
        (
            edit(
                "continue_on_failure = true\n\n[loop]",
                "contine = true\n\n[loop]",
            ),
            &["unknown field `contine`", "line 7"],
        ),
        (
            edit("max_iterations = 3", "max_iterations = \"3\""),
            &["loop.max_iterations: invalid type", "line 10"],
        ),
        (
            edit("max_iterations = 3\n", ""),
            &["missing field `max_iterations`"],
        ),
        (
            EXAMPLE.replace("name = \"fix-tests\"\n", ""),
            &["missing field `name`"],
        ),
        // Checks of single values.
        (
            edit("name = \"fix-tests\"", "name = \"Fix Tests\""),
            &["`name`", "not a valid name", "line 1"],
        ),
        (
            edit("workspace = \"copy\"", "workspace = \"clone\""),
            &["`workspace`", "expected worktree or copy", "line 2"],
        ),
        (
            edit("workspace = \"copy\"", "max_value_chars = 10"),
            &["`max_value_chars`", "expected 1000 to 1000000", "line 2"],
        ),
        (
            edit("max_iterations = 3", "max_iterations = 0"),
            &["`loop.max_iterations`", "expected 1 to 20", "line 10"],
        ),
        (
            edit("max_iterations = 3", "max_iterations = 21"),
            &["`loop.max_iterations`", "21 is out of range"],
        ),
        (
            edit("where = \"sandbox\"", "where = \"laptop\""),
            &[
                "`loop.steps[1].where`",
                "expected sandbox or host",
                "line 25",
            ],
        ),
        (
            edit(
                "command = [\"make\", \"test\"]\nwhere",
                "command = []\nwhere",
            ),
            &["`loop.steps[1].command`", "the command is empty", "line 24"],
        ),
        (
            edit(
                "command = [\"make\", \"test\"]\nwhere",
                "command = [\"\"]\nwhere",
            ),
            &["`loop.steps[1].command`", "the command is empty"],
        ),
        (
            edit(
                "command = [\"make\", \"test\"]\ncontinue",
                "command = []\ncontinue",
            ),
            &["`baseline[0].command`", "the command is empty", "line 6"],
        ),
        (
            edit("agent = \"codex\"", "agent = \"\""),
            &["`loop.steps[2].agent`", "not a profile name", "line 30"],
        ),
        (
            edit("agent = \"codex\"", "agent = \"codex\"\nwhere = \"host\""),
            &["`loop.steps[2].where`", "agents run only in the sandbox"],
        ),
        (
            edit(
                "prompt = \"Tests {{ tests.status }}. Diff:\\n{{ diff }}\"",
                "",
            ),
            &["`loop.steps[2].prompt`", "needs a `prompt`"],
        ),
        (
            edit(
                "prompt = \"Tests {{ tests.status }}. Diff:\\n{{ diff }}\"",
                "prompt = \" \"",
            ),
            &["`loop.steps[2].prompt`", "the prompt is empty"],
        ),
        (
            edit("where = \"sandbox\"", "prompt = \"x\""),
            &["`loop.steps[1].prompt`", "a command step has no prompt"],
        ),
        (
            edit("agent = \"codex\"", "agent = \"codex\"\ncommand = [\"x\"]"),
            &["`loop.steps[2].command`", "not both"],
        ),
        (
            edit("agent = \"codex\"\n", ""),
            &["`loop.steps[2]`", "neither `agent`"],
        ),
        (
            edit("timeout = \"20m\"", "timeout = \"soon\""),
            &["`loop.steps[2].timeout`", "line 32"],
        ),
        (
            edit("name = \"tests\"", "name = \"build\""),
            &["`loop.steps[1].name`", "already named `build`", "line 23"],
        ),
        (
            edit("name = \"before\"", "name = \"review\""),
            &["`loop.steps[2].name`", "already named `review`"],
        ),
        (
            edit("name = \"tests\"", "name = \"te.sts\""),
            &["`loop.steps[1].name`", "not a valid name"],
        ),
        // Templates: syntax, with the line inside the multi-line prompt.
        (
            edit(
                "Before: {{ before.exit_code }}",
                "Before: {{ before.exitcode }}",
            ),
            &[
                "`loop.steps[0].prompt`",
                "unknown field `exitcode`",
                "line 18",
            ],
        ),
        (
            edit("Task: {{ task }}", "Task: {{ tsak }}"),
            &[
                "`loop.steps[0].prompt`",
                "unknown variable `{{ tsak }}`",
                "expected task, diff",
                "line 17",
            ],
        ),
        (
            edit("Tests: {{ tests.output }}", "Tests: {{ tests.output }"),
            &["`loop.steps[0].prompt`", "never closed", "line 20"],
        ),
        // Templates: references.
        (
            edit("{{ review.feedback }}", "{{ reviewer.feedback }}"),
            &[
                "`loop.steps[0].prompt`",
                "`{{ reviewer.feedback }}` names no step",
                "before, build, tests, review",
            ],
        ),
        (
            edit("{{ review.feedback }}", "{{ tests.feedback }}"),
            &[
                "`loop.steps[0].prompt`",
                "step `tests` has no `verdict`",
                "output, exit_code and status",
            ],
        ),
        (
            edit("Tests {{ tests.status }}", "Tests {{ build.approved }}"),
            &["`loop.steps[2].prompt`", "step `build` has no `verdict`"],
        ),
        // Loop control.
        (
            edit("until = \"review.approved\"", "until = \"review\""),
            &[
                "`loop.until`",
                "not STEP.approved",
                "`review.approved`",
                "line 11",
            ],
        ),
        (
            edit(
                "until = \"review.approved\"",
                "until = \"reviewer.approved\"",
            ),
            &["`loop.until`", "no loop step is named `reviewer`"],
        ),
        (
            edit("until = \"review.approved\"", "until = \"tests.approved\""),
            &[
                "`loop.until`",
                "step `tests` has no `verdict`",
                "expected one of `review.approved`",
            ],
        ),
        (
            edit(review_verdict, "").replace("{{ review.feedback }}", ""),
            &["`loop.until`", "no loop step has a `verdict`"],
        ),
        (
            edit("timeout = \"20m\"", "isolation = \"kata\""),
            &["`loop.steps[2].isolation`", "runc or gvisor", "line "],
        ),
        (
            edit("timeout = \"20m\"", "continue_on_failure = true"),
            &[
                "`loop.steps[2].continue_on_failure`",
                "cannot continue on failure",
            ],
        ),
        // Verdicts.
        (
            edit("approve = \"^APPROVED\"", "approve = \"(APPROVED\""),
            &[
                "`loop.steps[2].verdict.fallback.approve`",
                "not a regular expression",
                "line 33",
            ],
        ),
        (
            edit("reject = \"^CHANGES\"", "reject = \"\""),
            &["`loop.steps[2].verdict.fallback.reject`", "empty pattern"],
        ),
        (
            edit("reject = \"^CHANGES\" }", "}"),
            &["missing field `reject`"],
        ),
        (
            edit(
                "verdict = { fallback",
                "verdict = { file = \"../result.json\", fallback",
            ),
            &["`loop.steps[2].verdict.file`", "not a plain relative path"],
        ),
        (
            edit(
                "verdict = { fallback",
                "verdict = { file = \"/tmp/r.json\", fallback",
            ),
            &["`loop.steps[2].verdict.file`"],
        ),
        (
            edit(
                "verdict = { fallback",
                "verdict = { flie = \"r.json\", fallback",
            ),
            &["unknown field `flie`", "line 33"],
        ),
        (
            edit(
                "where = \"sandbox\"",
                "verdict = { fallback = { approve = \"a\", reject = \"b\" } }",
            ),
            &[
                "`loop.steps[1].verdict.fallback`",
                "a command step has no final message",
            ],
        ),
        (
            EXAMPLE.replacen("name = \"fix-tests\"", "name = 1", 1),
            &[
                "name: invalid type: integer `1`, expected a string",
                "line 1",
            ],
        ),
        (
            EXAMPLE.replace("[[loop.steps]]", "[[loop.other]]"),
            &["unknown field `other`"],
        ),
    ];
    let mut wrong = Vec::new();
    for (text, wants) in &cases {
        let e = parse("wf.toml", text).unwrap_err().to_string();
        assert!(e.starts_with("wf.toml: "), "{e}");
        for want in *wants {
            if !e.contains(want) {
                wrong.push(format!("want {want:?} in: {e}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn reference_rules() {
    let wf = |baseline: &str, build_prompt: &str| {
        format!(
            "name = \"w\"\n{baseline}\n[loop]\nmax_iterations = 2\nuntil = \"review.approved\"\n\
             [[loop.steps]]\nname = \"build\"\nagent = \"a\"\nprompt = \"{build_prompt}\"\n\
             [[loop.steps]]\nname = \"review\"\nagent = \"b\"\nprompt = \"{{{{ build.output }}}}\"\nverdict = {{}}\n"
        )
    };
    let two_baselines = "[[baseline]]\nname = \"one\"\ncommand = [\"true\"]\n\
                         [[baseline]]\nname = \"two\"\nagent = \"a\"\nprompt = \"PROMPT\"\n";
    // (baseline tables, build's prompt, accepted?)
    let cases = [
        ("", "{{ build.output }}", true),    // itself, previous iteration
        ("", "{{ review.feedback }}", true), // later step, previous iteration
        ("", "{{ review.approved }} {{ review.summary }}", true),
        (
            "",
            "{{ diff }} {{ iteration }} {{ max_iterations }} {{ task }}",
            true,
        ),
        ("", "{{ nobody.output }}", false),
        (two_baselines, "{{ one.output }} {{ two.status }}", true),
        (
            &two_baselines.replace("PROMPT", "{{ one.output }}"),
            "x",
            true,
        ),
        (
            &two_baselines.replace("PROMPT", "{{ two.output }}"),
            "x",
            false,
        ), // itself
        (
            &two_baselines.replace("PROMPT", "{{ build.output }}"),
            "x",
            false,
        ), // the loop
    ];
    for (baseline, prompt, ok) in cases {
        let text = wf(baseline, prompt);
        let got = parse("w.toml", &text);
        assert_eq!(got.is_ok(), ok, "{baseline} / {prompt}: {got:?}");
    }
    let e = parse(
        "w.toml",
        &wf(&two_baselines.replace("PROMPT", "{{ build.output }}"), "x"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("`baseline[1].prompt`")
            && e.contains("only to baseline steps before it")
            && e.contains("here: one"),
        "{e}"
    );
}

#[test]
fn builtin_builder_reviewer() {
    let w = builtin("builder-reviewer", None).unwrap().unwrap();
    assert_eq!(w.name, "builder-reviewer");
    assert_eq!(w.until, "review");
    assert_eq!(
        w.profiles().into_iter().collect::<Vec<_>>(),
        ["claude-code", "codex"]
    );
    assert!(w.needs_task() && w.host_steps().is_empty());
    let argv = vec!["cargo".to_string(), "test".to_string()];
    let w = builtin("builder-reviewer", Some(argv.clone()))
        .unwrap()
        .unwrap();
    for step in ["baseline", "tests"] {
        assert!(
            matches!(&w.step(step).unwrap().action, Action::Command { argv: a, .. } if *a == argv)
        );
    }
    let e = builtin("builder-reviewer", Some(vec![]))
        .unwrap()
        .unwrap_err();
    assert!(e.message.contains("test command"), "{e}");
    assert!(builtin("nope", None).is_none());
    for name in BUILTINS {
        assert!(builtin(name, None).is_some());
    }
}

// The state machine.

fn run_of(text: &str) -> WorkflowRun {
    WorkflowRun::new(parse("wf.toml", text).unwrap(), "make the tests pass")
}

/// The next step's position and, for agents, its prompt (rendered with diff `DIFF`).
fn expect_step(run: &WorkflowRun, iteration: u32, step: &str) -> Option<String> {
    match run.next() {
        Next::Run(r) => {
            assert_eq!(
                (r.position.iteration, r.position.step.as_str()),
                (iteration, step),
                "unexpected step"
            );
            r.prompt("DIFF").unwrap()
        }
        Next::Finished(f) => panic!("finished early: {}", f.message()),
    }
}

fn approve() -> StepOutcome {
    StepOutcome::exited(0, "done").with_verdict_file(br#"{"approved": true, "summary": "good"}"#)
}

fn reject(change: &str) -> StepOutcome {
    StepOutcome::exited(0, "").with_verdict_file(
        format!(
            r#"{{"approved": false, "summary": "not yet", "requested_changes": ["{change}"]}}"#
        )
        .as_bytes(),
    )
}

fn finish(run: &WorkflowRun) -> super::state::Finish {
    match run.next() {
        Next::Finished(f) => f,
        Next::Run(r) => panic!("not finished: next is {}", r.position),
    }
}

#[test]
fn reject_then_iterate_with_feedback_then_approve() {
    let mut run = run_of(EXAMPLE);
    assert_eq!(expect_step(&run, 0, "before"), None);
    run.record(StepOutcome::exited(0, "all green")).unwrap();

    // Iteration 1: what the builder refers to from "the previous iteration" is empty.
    let p = expect_step(&run, 1, "build").unwrap();
    assert_eq!(
        p,
        "Task: make the tests pass\nRound 1/3. Before: 0.\nReview: \nTests: "
    );
    run.record(StepOutcome::exited(0, "I changed it")).unwrap();
    expect_step(&run, 1, "tests");
    run.record(StepOutcome::exited(0, "ok 3 tests")).unwrap();
    let p = expect_step(&run, 1, "review").unwrap();
    assert_eq!(p, "Tests succeeded. Diff:\nDIFF");
    run.record(reject("rename x")).unwrap();

    // Iteration 2: the builder sees iteration 1's review and tests.
    let p = expect_step(&run, 2, "build").unwrap();
    assert!(p.contains("Round 2/3."), "{p}");
    assert!(p.contains("Review: not yet\n- rename x\n"), "{p}");
    assert!(p.ends_with("Tests: ok 3 tests"), "{p}");
    run.record(StepOutcome::exited(0, "renamed")).unwrap();
    expect_step(&run, 2, "tests");
    run.record(StepOutcome::exited(0, "ok")).unwrap();
    expect_step(&run, 2, "review");
    run.record(approve()).unwrap();

    let f = finish(&run);
    assert_eq!(f.state, RunState::Succeeded);
    assert_eq!(f.reason, FinishReason::Approved { iteration: 2 });
    assert_eq!(f.message(), "approved in iteration 2");
    assert_eq!(run.iterations.len(), 2);
    assert!(!run.iterations[0].verdict.as_ref().unwrap().approved);
    assert!(run.iterations[1].verdict.as_ref().unwrap().approved);
    assert_eq!(run.iterations[1].steps[2].position.dir(), "iter-2/review");
    assert_eq!(run.baseline[0].position.dir(), "baseline/before");
    assert!(
        run.record(approve()).is_err(),
        "nothing to record after the end"
    );

    // The whole run is stored and read back unchanged.
    let json = serde_json::to_string(&run).unwrap();
    assert_eq!(serde_json::from_str::<WorkflowRun>(&json).unwrap(), run);
}

#[test]
fn max_iterations_without_approval_fails() {
    let mut run = run_of(&edit("max_iterations = 3", "max_iterations = 2"));
    run.record(StepOutcome::exited(0, "")).unwrap();
    for i in 1..=2 {
        expect_step(&run, i, "build");
        run.record(StepOutcome::exited(0, "")).unwrap();
        run.record(StepOutcome::exited(0, "")).unwrap();
        expect_step(&run, i, "review");
        run.record(reject("more")).unwrap();
    }
    let f = finish(&run);
    assert_eq!(f.state, RunState::Failed);
    assert_eq!(f.reason, FinishReason::MaxIterations { max_iterations: 2 });
    assert_eq!(f.iterations, 2);
    assert!(
        f.message().contains("not approved after 2 iterations"),
        "{}",
        f.message()
    );
}

#[test]
fn a_test_failure_is_fed_back_to_the_builder() {
    let mut run = run_of(EXAMPLE);
    run.record(StepOutcome::exited(0, "")).unwrap();
    run.record(StepOutcome::exited(0, "")).unwrap();
    expect_step(&run, 1, "tests");
    run.record(StepOutcome::exited(2, "FAIL: test_parse expected 3 got 4"))
        .unwrap();
    // The tests may fail (continue_on_failure): the reviewer runs and sees it.
    let p = expect_step(&run, 1, "review").unwrap();
    assert!(p.starts_with("Tests failed."), "{p}");
    run.record(reject("fix test_parse")).unwrap();
    let p = expect_step(&run, 2, "build").unwrap();
    assert!(
        p.contains("Tests: FAIL: test_parse expected 3 got 4"),
        "{p}"
    );
    assert!(p.contains("- fix test_parse"), "{p}");
}

#[test]
fn a_red_baseline_is_reported_not_blamed_on_the_builder() {
    // Allowed to fail: the loop runs, and the end says the baseline was red.
    let mut run = run_of(EXAMPLE);
    run.record(StepOutcome::exited(1, "3 tests fail")).unwrap();
    let p = expect_step(&run, 1, "build").unwrap();
    assert!(p.contains("Before: 1."), "{p}");
    run.record(StepOutcome::exited(0, "")).unwrap();
    run.record(StepOutcome::exited(0, "")).unwrap();
    run.record(approve()).unwrap();
    let f = finish(&run);
    assert_eq!(f.state, RunState::Succeeded);
    assert_eq!(f.baseline_red, ["before"]);
    assert!(
        f.message().contains("baseline was already red"),
        "{}",
        f.message()
    );

    // Not allowed to fail: the workflow ends before any agent runs, as a red baseline.
    let mut run = run_of(&edit("continue_on_failure = true\n\n[loop]", "\n[loop]"));
    run.record(StepOutcome::exited(2, "broken")).unwrap();
    let f = finish(&run);
    assert_eq!(f.state, RunState::Failed);
    assert!(
        matches!(f.reason, FinishReason::BaselineFailed { .. }),
        "{f:?}"
    );
    assert_eq!(
        f.message(),
        "red baseline: baseline step `before` exited with 2 before any change was made; no agent ran"
    );
    assert!(run.iterations.is_empty());
}

#[test]
fn a_malformed_or_missing_verdict_fails_never_approves() {
    let cases: Vec<(StepOutcome, &str)> = vec![
        (
            StepOutcome::exited(0, "APPROVED").with_verdict_file(b"{\"approved\": \"yes\"}"),
            "must be true or false",
        ),
        (
            StepOutcome::exited(0, "APPROVED").with_verdict_file(b""),
            "is empty",
        ),
        (StepOutcome::exited(0, "LGTM"), "matches neither"),
        (StepOutcome::exited(0, ""), "left no final message"),
    ];
    for (outcome, want) in cases {
        let mut run = run_of(EXAMPLE);
        for _ in 0..3 {
            run.record(StepOutcome::exited(0, "")).unwrap();
        }
        expect_step(&run, 1, "review");
        run.record(outcome).unwrap();
        let f = finish(&run);
        assert_eq!(f.state, RunState::Failed);
        assert!(
            matches!(f.reason, FinishReason::VerdictInvalid { .. }),
            "{f:?}"
        );
        let m = f.message();
        assert!(
            m.contains("no valid verdict (not an approval)") && m.contains(want),
            "{m}"
        );
        assert!(run.iterations[0].verdict.is_none());
        assert!(run.iterations[0].steps[2].verdict_error.is_some());
    }
    // The fallback rule on the final message decides when there is no file.
    let mut run = run_of(EXAMPLE);
    for _ in 0..3 {
        run.record(StepOutcome::exited(0, "")).unwrap();
    }
    run.record(StepOutcome::exited(0, "APPROVED, nice"))
        .unwrap();
    assert_eq!(finish(&run).state, RunState::Succeeded);
}

#[test]
fn cancel_mid_iteration_records_where_it_stopped() {
    let mut run = run_of(EXAMPLE);
    run.record(StepOutcome::exited(0, "")).unwrap();
    run.record(StepOutcome::exited(0, "")).unwrap();
    expect_step(&run, 1, "tests");
    assert!(run.cancel());
    let at = Position {
        iteration: 1,
        index: 1,
        step: "tests".into(),
    };
    let f = finish(&run);
    assert_eq!(f.state, RunState::Cancelled);
    assert_eq!(f.reason, FinishReason::Cancelled { at: at.clone() });
    assert_eq!(f.message(), "cancelled during iteration 1, step `tests`");
    assert_eq!(f.iterations, 1);
    // The cancelled step's outcome is still kept, once; the end does not change.
    run.record(StepOutcome::ended(
        RunState::Cancelled,
        "cancelled by the user",
    ))
    .unwrap();
    assert_eq!(run.iterations[0].steps[1].position, at);
    assert_eq!(finish(&run), f);
    assert!(run.record(StepOutcome::exited(0, "")).is_err());
    assert!(!run.cancel(), "already ended");

    // Cancelled before iteration 2's first step was recorded: iteration 2 had started.
    let mut run = run_of(EXAMPLE);
    for outcome in [
        StepOutcome::exited(0, ""),
        StepOutcome::exited(0, ""),
        StepOutcome::exited(0, ""),
        reject("x"),
    ] {
        run.record(outcome).unwrap();
    }
    expect_step(&run, 2, "build");
    run.cancel();
    assert_eq!(finish(&run).iterations, 2);
    assert_eq!(
        finish(&run).message(),
        "cancelled during iteration 2, step `build`"
    );

    // A step's run cancelled from elsewhere cancels the workflow there.
    let mut run = run_of(EXAMPLE);
    run.record(StepOutcome::ended(RunState::Cancelled, "cancelled"))
        .unwrap();
    let f = finish(&run);
    assert_eq!(f.state, RunState::Cancelled);
    assert_eq!(f.message(), "cancelled during baseline step `before`");
}

#[test]
fn a_failing_step_stops_the_workflow_unless_it_may_continue() {
    // (which loop step fails, how, the end's state, its message)
    let without_continue = edit(
        "continue_on_failure = true\n\n[[loop.steps]]",
        "\n[[loop.steps]]",
    );
    let cases: Vec<(&str, usize, StepOutcome, RunState, &str)> = vec![
        (
            EXAMPLE,
            0,
            StepOutcome::exited(1, "gave up"),
            RunState::Failed,
            "iteration 1, step `build` exited with 1",
        ),
        (
            EXAMPLE,
            0,
            StepOutcome {
                reason: Some("after 30m".into()),
                ..StepOutcome::ended(RunState::TimedOut, "")
            },
            RunState::Failed,
            "step `build` timed out: after 30m",
        ),
        (
            EXAMPLE,
            2,
            StepOutcome::exited(3, "crash"),
            RunState::Failed,
            "iteration 1, step `review` exited with 3",
        ),
        (
            EXAMPLE,
            0,
            StepOutcome::ended(RunState::Error, "image missing"),
            RunState::Error,
            "step `build` could not run: image missing",
        ),
        (
            &without_continue,
            1,
            StepOutcome::exited(1, "FAIL"),
            RunState::Failed,
            "iteration 1, step `tests` exited with 1",
        ),
    ];
    for (text, failing, outcome, state, want) in cases {
        let mut run = run_of(text);
        run.record(StepOutcome::exited(0, "")).unwrap();
        for _ in 0..failing {
            run.record(StepOutcome::exited(0, "")).unwrap();
        }
        run.record(outcome).unwrap();
        let f = finish(&run);
        assert_eq!(f.state, state, "{want}");
        assert!(f.message().contains(want), "{}", f.message());
    }
    // With continue_on_failure (the tests in EXAMPLE) the loop goes on.
    let mut run = run_of(EXAMPLE);
    run.record(StepOutcome::exited(0, "")).unwrap();
    run.record(StepOutcome::exited(0, "")).unwrap();
    run.record(StepOutcome::exited(1, "FAIL")).unwrap();
    expect_step(&run, 1, "review");
}

#[test]
fn a_failure_after_a_red_baseline_says_so() {
    let text = edit(
        "continue_on_failure = true\n\n[[loop.steps]]",
        "\n[[loop.steps]]",
    );
    let mut run = run_of(&text);
    run.record(StepOutcome::exited(1, "red")).unwrap();
    run.record(StepOutcome::exited(0, "")).unwrap();
    run.record(StepOutcome::exited(1, "still red")).unwrap();
    let m = finish(&run).message();
    assert_eq!(
        m,
        "iteration 1, step `tests` exited with 1; note: the baseline was already red before any change (`before` failed)"
    );
}

#[test]
fn steps_after_the_reviewer_still_run_and_a_workflow_without_baseline_starts_in_the_loop() {
    let text = "name = \"w\"\n[loop]\nmax_iterations = 1\nuntil = \"review.approved\"\n\
                [[loop.steps]]\nname = \"review\"\nagent = \"codex\"\nprompt = \"look\"\nverdict = {}\n\
                [[loop.steps]]\nname = \"lint\"\ncommand = [\"lint\"]\nwhere = \"host\"\n";
    let mut run = run_of(text);
    assert_eq!(run.workflow.host_steps(), ["lint"]);
    expect_step(&run, 1, "review");
    run.record(approve()).unwrap();
    expect_step(&run, 1, "lint");
    run.record(StepOutcome::exited(0, "")).unwrap();
    assert_eq!(finish(&run).reason, FinishReason::Approved { iteration: 1 });
}

#[test]
fn long_outputs_are_cut_in_prompts_and_records() {
    let text = edit("workspace = \"copy\"", "max_value_chars = 1000");
    let mut run = run_of(&text);
    run.record(StepOutcome::exited(0, &"x".repeat(5000)))
        .unwrap();
    assert!(run.baseline[0].output.contains("berth cut 4000 characters"));
    run.record(StepOutcome::exited(0, "")).unwrap();
    run.record(StepOutcome::exited(0, "")).unwrap();
    let Next::Run(r) = run.next() else {
        panic!("review is next")
    };
    assert!(r.needs_diff());
    let p = r.prompt(&"d".repeat(3000)).unwrap().unwrap();
    assert!(p.contains("berth cut 2000 characters"), "{p}");
}

#[test]
fn outcomes_must_be_final() {
    let mut run = run_of(EXAMPLE);
    let e = run
        .record(StepOutcome::ended(RunState::Running, ""))
        .unwrap_err();
    assert!(e.to_string().contains("not running"), "{e}");
}

#[test]
fn a_stored_run_pointing_past_its_steps_does_not_panic() {
    let run = run_of(EXAMPLE);
    let mut json: serde_json::Value = serde_json::to_value(&run).unwrap();
    json["cursor"]["index"] = 99.into();
    let mut run: WorkflowRun = serde_json::from_value(json).unwrap();
    assert_eq!(finish(&run).state, RunState::Error);
    assert!(!run.cancel());
    assert!(run.record(StepOutcome::exited(0, "")).is_err());
}

#[test]
fn the_readme_example_parses() {
    let readme = include_str!("../../../../README.md");
    let section = readme
        .split("## Workflows\n")
        .nth(1)
        .expect("the README has the workflows section");
    let example = section
        .split("```toml\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("the section has a toml example");
    let w = parse("README.md", example).unwrap();
    assert_eq!(
        (w.baseline.len(), w.steps.len(), w.until.as_str()),
        (1, 3, "review")
    );
}

#[test]
fn the_final_message_is_the_agent_s_final_result() {
    use serde_json::json;
    let answer = json!({"event": "agent", "agent": {"type": "final_result", "is_error": false, "text": "APPROVED"}});
    let failed = json!({"event": "agent", "agent": {"type": "final_result", "is_error": true, "error": "quota"}});
    let text = json!({"event": "agent", "agent": {"type": "text", "text": "thinking"}});
    let output = json!({"event": "output", "stream": "stdout", "text": "final_result"});
    assert_eq!(verdict::final_message(&answer), Some("APPROVED"));
    assert_eq!(verdict::final_message(&failed), Some("quota"));
    assert_eq!(verdict::final_message(&text), None);
    assert_eq!(verdict::final_message(&output), None);
}
