//! The same behaviour on SQLite and PostgreSQL: each test runs against both stores.
#![allow(clippy::unwrap_used)] // helpers too: a panic is the failure report

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use berth_store::{
    AuthStore, ClaimRequest, ExecutionMode, Finish, NewEvent, NewRun, NewWorkflow, Project, Role,
    RunFilter, RunState, RunStore, RunnerRecord, RunnerStore, SqlStore, Store, StoreError,
    TokenRecord, WorkflowChange, WorkflowNote, WorkflowStore,
};
use support::{with_stores, TestDb};

const T0: i64 = 1_700_000_000_000;
const LEASE: i64 = 30_000;

fn new_run(id: &str, project: &str, tags: &[&str]) -> NewRun {
    NewRun {
        id: id.to_owned(),
        project: project.to_owned(),
        execution_mode: ExecutionMode::DockerSandbox,
        spec: serde_json::json!({ "command": ["echo", id], "secrets": ["API_KEY"] }),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        labels: BTreeMap::from([("team".to_owned(), "infra".to_owned())]),
        created_at: T0,
        actor: "token:tok1".to_owned(),
        pinned_runner: None,
    }
}

fn claim_req(runner: &str, tags: &[&str], require_matching_tags: bool, now: i64) -> ClaimRequest {
    ClaimRequest {
        runner_id: runner.to_owned(),
        runner_tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        require_matching_tags,
        lease_token: format!("lease-{runner}-{now}"),
        now,
        lease_ms: LEASE,
    }
}

fn event(ts: i64, kind: &str, data: &str) -> NewEvent {
    NewEvent {
        ts,
        kind: kind.to_owned(),
        data: data.to_owned(),
    }
}

fn finish(state: RunState, exit_code: Option<i64>, now: i64) -> Finish {
    Finish {
        state,
        exit_code,
        reason: None,
        now,
        commit: None,
    }
}

fn assert_rejected<T: std::fmt::Debug>(result: Result<T, StoreError>, kind: &str) {
    match result {
        Err(StoreError::Rejected { .. }) => {}
        other => panic!("{kind}: expected Rejected, got {other:?}"),
    }
}

async fn claim_id(store: &SqlStore, request: &ClaimRequest) -> Option<String> {
    store.claim(request).await.unwrap().map(|run| run.id)
}

#[tokio::test]
async fn connect_rejects_unknown_urls_without_leaking_passwords() {
    match SqlStore::connect("mysql://user:hunter2@db.example/berth").await {
        Err(StoreError::UnsupportedUrl(url)) => assert!(!url.contains("hunter2"), "{url}"),
        Err(other) => panic!("expected UnsupportedUrl, got {other:?}"),
        Ok(_) => panic!("expected UnsupportedUrl, got a store"),
    }
}

#[tokio::test]
async fn connect_is_idempotent_and_sqlite_uses_wal() {
    with_stores(|db: TestDb| async move {
        db.store.ping().await.unwrap();
        // A second connect runs the migrations again: nothing to do, nothing breaks.
        let again = db.another().await;
        again.ping().await.unwrap();
        assert_eq!(again.backend_name(), db.kind);
        if db.kind == "sqlite" {
            let path = db.url.trim_start_matches("sqlite://");
            assert!(
                std::path::Path::new(&format!("{path}-wal")).exists(),
                "no WAL file beside {path}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn insert_get_and_list_with_filters_and_pages() {
    with_stores(|db: TestDb| async move {
        let s = &db.store;
        let inserted = s
            .insert_run(&new_run("r01", "alpha", &["gpu"]))
            .await
            .unwrap();
        assert_eq!(inserted.state, RunState::Queued);
        assert_eq!(inserted.tags, vec!["gpu".to_owned()]);
        assert_eq!(inserted.spec["secrets"][0], "API_KEY");
        assert_eq!(inserted.labels["team"], "infra");
        assert!(!inserted.cancel_requested);
        assert_eq!(inserted.lease_expires_at, None);
        assert_eq!(s.run("r01").await.unwrap(), Some(inserted.clone()));
        assert_eq!(s.run("nope").await.unwrap(), None);

        match s.insert_run(&new_run("r01", "alpha", &[])).await {
            Err(StoreError::Conflict { what: "run", id }) => assert_eq!(id, "r01"),
            other => panic!("expected Conflict, got {other:?}"),
        }

        for i in 2..=9 {
            let project = if i % 2 == 0 { "beta" } else { "alpha" };
            let tags: &[&str] = if i % 3 == 0 { &["linux", "gpu"] } else { &[] };
            s.insert_run(&new_run(&format!("r{i:02}"), project, tags))
                .await
                .unwrap();
        }
        let ids =
            |rows: Vec<berth_store::RunRow>| rows.into_iter().map(|r| r.id).collect::<Vec<_>>();
        // Prefixes of ids; LIKE's wildcards are no prefix.
        assert_eq!(
            ids(s.runs_with_prefix("r0", 3).await.unwrap()),
            ["r01", "r02", "r03"]
        );
        assert_eq!(ids(s.runs_with_prefix("r05", 10).await.unwrap()), ["r05"]);
        assert!(s.runs_with_prefix("x", 10).await.unwrap().is_empty());
        assert!(s.runs_with_prefix("r%", 10).await.unwrap().is_empty());
        assert!(s.runs_with_prefix("r_1", 10).await.unwrap().is_empty());
        assert!(s.runs_with_prefix("", 10).await.unwrap().is_empty());

        let all = ids(s.list_runs(&RunFilter::default()).await.unwrap());
        assert_eq!(all, (1..=9).map(|i| format!("r{i:02}")).collect::<Vec<_>>());

        let alpha = RunFilter {
            project: Some("alpha".into()),
            ..RunFilter::default()
        };
        assert_eq!(
            ids(s.list_runs(&alpha).await.unwrap()),
            ["r01", "r03", "r05", "r07", "r09"]
        );

        let gpu = RunFilter {
            tag: Some("gpu".into()),
            ..RunFilter::default()
        };
        assert_eq!(
            ids(s.list_runs(&gpu).await.unwrap()),
            ["r01", "r03", "r06", "r09"]
        );

        let scoped = RunFilter {
            projects_in: Some(vec!["beta".into(), "gamma".into()]),
            ..RunFilter::default()
        };
        assert_eq!(
            ids(s.list_runs(&scoped).await.unwrap()),
            ["r02", "r04", "r06", "r08"]
        );
        let nothing = RunFilter {
            projects_in: Some(vec![]),
            ..RunFilter::default()
        };
        assert!(s.list_runs(&nothing).await.unwrap().is_empty());

        // Pages of 4.
        let mut pages = Vec::new();
        let mut after = None;
        loop {
            let page = ids(s
                .list_runs(&RunFilter {
                    after: after.clone(),
                    limit: 4,
                    ..RunFilter::default()
                })
                .await
                .unwrap());
            if page.is_empty() {
                break;
            }
            after = page.last().cloned();
            pages.push(page);
        }
        assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 1]);
        assert_eq!(pages.concat(), all);

        // State filter, combined with others.
        s.claim(&claim_req("w1", &[], false, T0 + 1))
            .await
            .unwrap()
            .unwrap();
        let queued_beta = RunFilter {
            state: Some(RunState::Queued),
            project: Some("beta".into()),
            ..RunFilter::default()
        };
        assert_eq!(
            ids(s.list_runs(&queued_beta).await.unwrap()),
            ["r04", "r06", "r08"],
            "r02 was claimed (the first untagged run)"
        );
        let claimed = RunFilter {
            state: Some(RunState::Claimed),
            ..RunFilter::default()
        };
        assert_eq!(ids(s.list_runs(&claimed).await.unwrap()), ["r02"]);
    })
    .await;
}

#[tokio::test]
async fn claims_are_first_in_first_out_with_lease_and_audit() {
    with_stores(|db: TestDb| async move {
        let s = &db.store;
        // Ids that do not sort in insertion order: the queue follows insertion.
        for id in ["c", "a", "b"] {
            s.insert_run(&new_run(id, "p", &[])).await.unwrap();
        }
        let request = claim_req("w1", &[], false, T0 + 10);
        let first = s.claim(&request).await.unwrap().unwrap();
        assert_eq!(first.id, "c");
        assert_eq!(first.state, RunState::Claimed);
        assert_eq!(first.runner_id.as_deref(), Some("w1"));
        assert_eq!(first.claimed_at, Some(T0 + 10));
        assert_eq!(first.lease_expires_at, Some(T0 + 10 + LEASE));
        assert_eq!(
            claim_id(s, &claim_req("w2", &[], false, T0 + 11))
                .await
                .as_deref(),
            Some("a")
        );
        assert_eq!(
            claim_id(s, &claim_req("w1", &[], false, T0 + 12))
                .await
                .as_deref(),
            Some("b")
        );
        assert_eq!(
            claim_id(s, &claim_req("w1", &[], false, T0 + 13)).await,
            None
        );

        let audit = s.audit("c").await.unwrap();
        assert_eq!(audit.len(), 2);
        assert_eq!(
            (audit[0].seq, audit[0].from_state, audit[0].to_state),
            (1, None, RunState::Queued)
        );
        assert_eq!(audit[0].actor, "token:tok1");
        assert_eq!(
            (audit[1].seq, audit[1].from_state, audit[1].to_state),
            (2, Some(RunState::Queued), RunState::Claimed)
        );
        assert_eq!(audit[1].actor, "runner:w1");
        assert_eq!(audit[1].ts, T0 + 10);

        let mine: Vec<String> = s
            .runs_of_runner("w1")
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(mine, ["c", "b"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_run_is_claimed_exactly_once_under_concurrency() {
    with_stores(|db: TestDb| async move {
        const RUNS: usize = 50;
        const CLAIMERS: usize = 8;
        for i in 0..RUNS {
            db.store
                .insert_run(&new_run(&format!("run{i:03}"), "p", &[]))
                .await
                .unwrap();
        }
        // Two independent stores (pools), like two coordinator processes.
        let stores = [db.store.clone(), db.another().await];
        let started = Instant::now();
        let mut tasks = Vec::new();
        for worker in 0..CLAIMERS {
            let store = stores[worker % 2].clone();
            tasks.push(tokio::spawn(async move {
                let mut won = Vec::new();
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    let mut request = claim_req(&format!("w{worker}"), &[], false, T0 + 1);
                    request.lease_token = format!("lease-{worker}-{attempt}");
                    match store.claim(&request).await.unwrap() {
                        Some(run) => {
                            assert_eq!(run.runner_id, Some(format!("w{worker}")));
                            won.push(run.id);
                        }
                        None => {
                            let counts = store.count_by_state().await.unwrap();
                            if counts
                                .iter()
                                .any(|&(state, n)| state == RunState::Queued && n > 0)
                            {
                                continue; // rows held by other claimers at that instant
                            }
                            break won;
                        }
                    }
                }
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap());
        }
        let elapsed = started.elapsed();
        let unique: BTreeSet<&String> = all.iter().collect();
        assert_eq!(all.len(), RUNS, "{} claims for {RUNS} runs", all.len());
        assert_eq!(unique.len(), RUNS, "a run was claimed twice");
        println!(
            "{}: {RUNS} runs claimed by {CLAIMERS} concurrent claimers in {:.1} ms: {:.0} claims/s",
            db.kind,
            elapsed.as_secs_f64() * 1000.0,
            RUNS as f64 / elapsed.as_secs_f64()
        );
        for id in &all {
            let audit = db.store.audit(id).await.unwrap();
            assert_eq!(
                audit
                    .iter()
                    .filter(|e| e.to_state == RunState::Claimed)
                    .count(),
                1,
                "{id}"
            );
        }
        let counts: HashMap<RunState, i64> = db
            .store
            .count_by_state()
            .await
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(counts[&RunState::Claimed], RUNS as i64);
        assert_eq!(counts[&RunState::Queued], 0);
        stores[1].close().await;
    })
    .await;
}

/// A longer run of the same race, for a throughput figure: `cargo test -p berth-store -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark"]
async fn claim_throughput() {
    with_stores(|db: TestDb| async move {
        const RUNS: usize = 2000;
        for i in 0..RUNS {
            db.store
                .insert_run(&new_run(&format!("run{i:05}"), "p", &[]))
                .await
                .unwrap();
        }
        let started = Instant::now();
        let mut tasks = Vec::new();
        for worker in 0..8 {
            let store = db.store.clone();
            tasks.push(tokio::spawn(async move {
                let mut n = 0usize;
                while store
                    .claim(&claim_req(&format!("w{worker}"), &[], false, T0))
                    .await
                    .unwrap()
                    .is_some()
                {
                    n += 1;
                }
                n
            }));
        }
        let mut total = 0;
        for task in tasks {
            total += task.await.unwrap();
        }
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "{}: {total} claims in {elapsed:.2} s: {:.0} claims/s",
            db.kind,
            total as f64 / elapsed
        );
    })
    .await;
}

#[tokio::test]
async fn claims_follow_tags() {
    with_stores(|db: TestDb| async move {
        let s = &db.store;
        s.insert_run(&new_run("gpu-linux", "p", &["gpu", "linux"]))
            .await
            .unwrap();
        s.insert_run(&new_run("untagged", "p", &[])).await.unwrap();
        s.insert_run(&new_run("linux", "p", &["linux"]))
            .await
            .unwrap();
        s.insert_run(&new_run("arm", "p", &["arm"])).await.unwrap();

        // A runner without tags only gets untagged runs.
        assert_eq!(
            claim_id(s, &claim_req("plain", &[], false, T0))
                .await
                .as_deref(),
            Some("untagged")
        );
        assert_eq!(claim_id(s, &claim_req("plain", &[], false, T0)).await, None);
        // A `linux` runner cannot take a run that also needs `gpu`.
        assert_eq!(
            claim_id(s, &claim_req("lin", &["linux"], false, T0))
                .await
                .as_deref(),
            Some("linux")
        );
        assert_eq!(
            claim_id(s, &claim_req("lin", &["linux"], false, T0)).await,
            None
        );
        // Run tags must be a subset of the runner's.
        assert_eq!(
            claim_id(s, &claim_req("big", &["linux", "gpu", "x86"], false, T0))
                .await
                .as_deref(),
            Some("gpu-linux")
        );
        assert_eq!(
            claim_id(s, &claim_req("big", &["linux", "gpu", "x86"], false, T0)).await,
            None
        );

        // Untagged runs go to tagged runners too, unless they require matching tags.
        s.insert_run(&new_run("untagged2", "p", &[])).await.unwrap();
        assert_eq!(
            claim_id(s, &claim_req("strict", &["arm"], true, T0))
                .await
                .as_deref(),
            Some("arm")
        );
        assert_eq!(
            claim_id(s, &claim_req("strict", &["arm"], true, T0)).await,
            None
        );
        assert_eq!(claim_id(s, &claim_req("strict", &[], true, T0)).await, None);
        assert_eq!(
            claim_id(s, &claim_req("loose", &["arm"], false, T0))
                .await
                .as_deref(),
            Some("untagged2")
        );
    })
    .await;
}

#[tokio::test]
async fn runner_lifecycle_with_events_and_audit() {
    with_stores(|db: TestDb| async move {
        let s = &db.store;
        s.insert_run(&new_run("r1", "p", &[])).await.unwrap();
        let req = claim_req("w1", &[], false, T0 + 100);
        let token = req.lease_token.clone();
        s.claim(&req).await.unwrap().unwrap();

        assert_rejected(
            s.mark_started("r1", "wrong", Some("ctr"), T0 + 200, LEASE)
                .await,
            "wrong token start",
        );
        let started = s
            .mark_started("r1", &token, Some("ctr-1"), T0 + 200, LEASE)
            .await
            .unwrap();
        assert_eq!(started.state, RunState::Running);
        assert_eq!(started.started_at, Some(T0 + 200));
        assert_eq!(started.container_id.as_deref(), Some("ctr-1"));
        assert_eq!(started.lease_expires_at, Some(T0 + 200 + LEASE));
        // A resent start (its answer was lost) of the same container is accepted once more,
        // renewing the lease and writing no second audit entry; another container is refused.
        let again = s
            .mark_started("r1", &token, Some("ctr-1"), T0 + 250, LEASE)
            .await
            .unwrap();
        assert_eq!(again.started_at, Some(T0 + 200));
        assert_eq!(again.lease_expires_at, Some(T0 + 250 + LEASE));
        assert_eq!(s.audit("r1").await.unwrap().len(), 3);
        assert_rejected(
            s.mark_started("r1", &token, Some("ctr-2"), T0 + 250, LEASE)
                .await,
            "second start",
        );
        assert_rejected(
            s.mark_started("r1", &token, None, T0 + 250, LEASE).await,
            "second start without a container",
        );

        let renewed = s
            .renew_lease("r1", &token, T0 + 10_000, LEASE)
            .await
            .unwrap();
        assert_eq!(renewed.lease_expires_at, Some(T0 + 10_000 + LEASE));
        assert_rejected(
            s.renew_lease("r1", "wrong", T0 + 10_000, LEASE).await,
            "wrong token renew",
        );
        assert!(matches!(
            s.renew_lease("nope", &token, T0, LEASE).await,
            Err(StoreError::NotFound { .. })
        ));

        // Events: numbered per run from 1, batches included.
        let last = s
            .append_events(
                "r1",
                &token,
                T0 + 300,
                1,
                &[
                    event(T0 + 300, "stdout", "hello\n"),
                    event(T0 + 301, "stderr", "oops\n"),
                ],
            )
            .await
            .unwrap();
        assert_eq!(last, 2);
        let batch: Vec<NewEvent> = (0..2500)
            .map(|i| event(T0 + 400 + i, "stdout", &format!("line {i}\n")))
            .collect();
        assert_eq!(
            s.append_events("r1", &token, T0 + 400, 3, &batch)
                .await
                .unwrap(),
            2502
        );
        assert_eq!(
            s.append_events("r1", &token, T0 + 400, 2503, &[])
                .await
                .unwrap(),
            2502
        );
        // A batch resent after a lost reply is not stored again; only its new tail is.
        let resent: Vec<NewEvent> = (2500..2503)
            .map(|i| event(T0 + 400 + i, "stdout", &format!("line {i}\n")))
            .collect();
        assert_eq!(
            s.append_events("r1", &token, T0 + 400, 2501, &resent)
                .await
                .unwrap(),
            2503,
            "2501 and 2502 were stored already; only 2503 is new"
        );
        let tail = s.events_after("r1", 2502, 10).await.unwrap();
        assert_eq!(
            tail.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(),
            ["line 2502\n"]
        );
        assert_eq!(
            s.append_server_event("r1", &event(T0 + 500, "state", "{\"state\":\"running\"}"))
                .await
                .unwrap(),
            2504
        );
        assert_rejected(
            s.append_events("r1", "wrong", T0 + 500, 2504, &[event(T0, "stdout", "x")])
                .await,
            "wrong token events",
        );

        let first = s.events_after("r1", 0, 2).await.unwrap();
        assert_eq!(
            first
                .iter()
                .map(|e| (e.seq, e.kind.as_str(), e.data.as_str()))
                .collect::<Vec<_>>(),
            [(1, "stdout", "hello\n"), (2, "stderr", "oops\n")]
        );
        assert_eq!(first[0].run_id, "r1");
        assert_eq!(first[0].ts, T0 + 300);
        let tail = s.events_after("r1", 2500, 100).await.unwrap();
        assert_eq!(
            tail.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [2501, 2502, 2503, 2504]
        );
        assert_eq!(tail[3].kind, "state");
        assert!(s.events_after("r1", 2504, 100).await.unwrap().is_empty());

        // Another run numbers its own events from 1.
        s.insert_run(&new_run("r2", "p", &[])).await.unwrap();
        assert_eq!(
            s.append_server_event("r2", &event(T0, "state", "queued"))
                .await
                .unwrap(),
            1
        );
        assert!(matches!(
            s.append_server_event("nope", &event(T0, "state", "x"))
                .await,
            Err(StoreError::NotFound { .. })
        ));

        // Finish: final states only, the right token only.
        assert_rejected(
            s.finish_run(
                "r1",
                &token,
                &finish(RunState::Running, None, T0 + 600),
                "runner:w1",
            )
            .await,
            "non-final",
        );
        assert_rejected(
            s.finish_run(
                "r1",
                "wrong",
                &finish(RunState::Succeeded, Some(0), T0 + 600),
                "runner:w1",
            )
            .await,
            "wrong token",
        );
        assert_eq!(
            s.run("r1").await.unwrap().unwrap().state,
            RunState::Running,
            "a rejected finish changes nothing"
        );
        assert_eq!(
            s.run("r1").await.unwrap().unwrap().resolved_commit,
            None,
            "no commit before the end"
        );
        let mut done = finish(RunState::Failed, Some(3), T0 + 600);
        done.reason = Some("exit code 3".into());
        done.commit = Some("0123456789abcdef0123456789abcdef01234567".into());
        let finished = s
            .finish_run("r1", &token, &done, "runner:w1")
            .await
            .unwrap();
        assert_eq!(
            finished.resolved_commit.as_deref(),
            Some("0123456789abcdef0123456789abcdef01234567"),
            "{}: the commit the runner reported is the run's",
            db.kind
        );
        assert_eq!(
            s.run("r1").await.unwrap().unwrap().resolved_commit,
            finished.resolved_commit
        );
        assert_eq!(finished.state, RunState::Failed);
        assert_eq!(finished.exit_code, Some(3));
        assert_eq!(finished.finished_at, Some(T0 + 600));
        assert_eq!(finished.lease_expires_at, None);
        assert_eq!(finished.runner_id.as_deref(), Some("w1"));
        // The lease is gone: no more runner writes.
        assert_rejected(
            s.renew_lease("r1", &token, T0 + 700, LEASE).await,
            "renew after finish",
        );
        assert_rejected(
            s.append_events("r1", &token, T0 + 700, 9999, &[event(T0, "stdout", "x")])
                .await,
            "events after finish",
        );
        assert_rejected(
            s.finish_run(
                "r1",
                &token,
                &finish(RunState::Succeeded, Some(0), T0 + 700),
                "runner:w1",
            )
            .await,
            "finish twice",
        );
        assert!(s.runs_of_runner("w1").await.unwrap().is_empty());

        let audit = s.audit("r1").await.unwrap();
        let steps: Vec<_> = audit
            .iter()
            .map(|e| (e.seq, e.from_state, e.to_state, e.actor.as_str()))
            .collect();
        assert_eq!(
            steps,
            [
                (1, None, RunState::Queued, "token:tok1"),
                (2, Some(RunState::Queued), RunState::Claimed, "runner:w1"),
                (3, Some(RunState::Claimed), RunState::Running, "runner:w1"),
                (4, Some(RunState::Running), RunState::Failed, "runner:w1"),
            ]
        );
        assert_eq!(audit[2].container_id.as_deref(), Some("ctr-1"));
        assert_eq!(audit[3].container_id.as_deref(), Some("ctr-1"));
        assert_eq!(audit[3].exit_code, Some(3));
        assert_eq!(audit[3].reason.as_deref(), Some("exit code 3"));
        assert_eq!(audit[3].ts, T0 + 600);
    })
    .await;
}

#[tokio::test]
async fn expired_leases_lose_running_runs_and_requeue_claimed_ones() {
    with_stores(|db: TestDb| async move {
        let s = &db.store;
        s.insert_run(&new_run("running", "p", &[])).await.unwrap();
        s.insert_run(&new_run("claimed", "p", &[])).await.unwrap();
        s.insert_run(&new_run("fresh", "p", &[])).await.unwrap();
        let a = claim_req("wa", &[], false, T0);
        s.claim(&a).await.unwrap().unwrap();
        s.mark_started("running", &a.lease_token, Some("ctr"), T0, LEASE)
            .await
            .unwrap();
        let b = claim_req("wb", &[], false, T0);
        s.claim(&b).await.unwrap().unwrap();
        let c = claim_req("wc", &[], false, T0 + 20_000);
        s.claim(&c).await.unwrap().unwrap();

        // At the expiry instant the lease still holds; nothing expires.
        assert!(s.expire_leases(T0 + LEASE).await.unwrap().is_empty());
        s.renew_lease("running", &a.lease_token, T0 + LEASE, 0)
            .await
            .unwrap();

        // A write exactly at expiry is accepted, one after it is not (and changes nothing).
        let later = T0 + LEASE + 1;
        assert_rejected(
            s.append_events(
                "claimed",
                &b.lease_token,
                later,
                1,
                &[event(later, "stdout", "x")],
            )
            .await,
            "expired",
        );
        assert!(s.events_after("claimed", 0, 10).await.unwrap().is_empty());

        let changed = s.expire_leases(later).await.unwrap();
        let by_id: BTreeMap<&str, &berth_store::RunRow> =
            changed.iter().map(|r| (r.id.as_str(), r)).collect();
        assert_eq!(
            by_id.keys().copied().collect::<Vec<_>>(),
            ["claimed", "running"]
        );

        let lost = by_id["running"];
        assert_eq!(lost.state, RunState::Lost);
        assert_eq!(lost.finished_at, Some(later));
        assert_eq!(lost.lease_expires_at, None);
        let reason = lost.reason.as_deref().unwrap();
        assert!(
            reason.contains("runner wa stopped renewing its lease"),
            "{reason}"
        );
        assert!(
            reason.contains("expired at 2023-11-14T22:13:50"),
            "{reason}"
        );

        let requeued = by_id["claimed"];
        assert_eq!(requeued.state, RunState::Queued);
        assert_eq!(
            (
                requeued.runner_id.as_deref(),
                requeued.lease_expires_at,
                requeued.claimed_at
            ),
            (None, None, None)
        );

        // The old tokens write nothing any more.
        assert_rejected(
            s.renew_lease("running", &a.lease_token, later, LEASE).await,
            "lost renew",
        );
        assert_rejected(
            s.append_events(
                "running",
                &a.lease_token,
                T0 + 1,
                1,
                &[event(T0, "stdout", "x")],
            )
            .await,
            "lost events",
        );
        assert_rejected(
            s.finish_run(
                "running",
                &a.lease_token,
                &finish(RunState::Succeeded, Some(0), T0 + 1),
                "runner:wa",
            )
            .await,
            "lost finish",
        );
        assert_rejected(
            s.mark_started("claimed", &b.lease_token, None, T0 + 1, LEASE)
                .await,
            "requeued start",
        );
        assert_rejected(
            s.renew_lease("claimed", &b.lease_token, T0 + 1, LEASE)
                .await,
            "requeued renew",
        );
        assert_eq!(
            s.run("running").await.unwrap().unwrap().state,
            RunState::Lost
        );
        assert!(s.events_after("running", 0, 10).await.unwrap().is_empty());

        // The re-queued run is claimable again, and keeps its place at the head of the queue.
        // (A refused write's transaction is rolled back when its connection is next used, so
        // on PostgreSQL its row lock can outlive the refusal for a moment, and SKIP LOCKED
        // passes the row over until then.)
        let d = claim_req("wd", &[], false, later + 1);
        let mut claimed = None;
        for _ in 0..50 {
            claimed = claim_id(s, &d).await;
            if claimed.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(claimed.as_deref(), Some("claimed"));
        assert_rejected(
            s.mark_started("claimed", &b.lease_token, None, later + 2, LEASE)
                .await,
            "old token after re-claim",
        );
        s.mark_started("claimed", &d.lease_token, None, later + 2, LEASE)
            .await
            .unwrap();

        // The fresh claim was untouched.
        assert_eq!(
            s.run("fresh").await.unwrap().unwrap().state,
            RunState::Claimed
        );
        assert!(
            s.expire_leases(later).await.unwrap().is_empty(),
            "idempotent"
        );

        let audit = s.audit("running").await.unwrap();
        let last = audit.last().unwrap();
        assert_eq!(
            (last.from_state, last.to_state, last.actor.as_str()),
            (Some(RunState::Running), RunState::Lost, "server")
        );
        assert_eq!(last.container_id.as_deref(), Some("ctr"));
        assert_eq!(last.reason.as_deref(), Some(reason));
        let steps: Vec<_> = s
            .audit("claimed")
            .await
            .unwrap()
            .iter()
            .map(|e| (e.to_state, e.actor.clone()))
            .collect();
        assert_eq!(
            steps,
            [
                (RunState::Queued, "token:tok1".to_owned()),
                (RunState::Claimed, "runner:wb".to_owned()),
                (RunState::Queued, "server".to_owned()),
                (RunState::Claimed, "runner:wd".to_owned()),
                (RunState::Running, "runner:wd".to_owned()),
            ]
        );
    })
    .await;
}

#[tokio::test]
async fn cancel_queued_running_and_finished_runs() {
    with_stores(|db: TestDb| async move {
        let s = &db.store;
        s.insert_run(&new_run("q", "p", &["never"])).await.unwrap();
        s.insert_run(&new_run("r", "p", &[])).await.unwrap();
        s.insert_run(&new_run("c", "p", &[])).await.unwrap();

        // Queued: cancelled at once, and never claimed afterwards.
        let cancelled = s.request_cancel("q", "token:tok2", T0 + 5).await.unwrap();
        assert_eq!(cancelled.state, RunState::Cancelled);
        assert_eq!(cancelled.finished_at, Some(T0 + 5));
        assert_eq!(
            cancelled.reason.as_deref(),
            Some("cancelled before it started")
        );
        assert_eq!(
            s.request_cancel("q", "token:tok2", T0 + 6).await.unwrap(),
            cancelled,
            "idempotent"
        );
        let audit = s.audit("q").await.unwrap();
        assert_eq!(audit.len(), 2);
        assert_eq!(
            (
                audit[1].from_state,
                audit[1].to_state,
                audit[1].actor.as_str()
            ),
            (Some(RunState::Queued), RunState::Cancelled, "token:tok2")
        );
        assert_eq!(
            audit[1].reason.as_deref(),
            Some("cancelled before it started")
        );

        // Running: only flagged; the runner learns it when it renews.
        let req = claim_req("w", &[], false, T0);
        assert_eq!(claim_id(s, &req).await.as_deref(), Some("r"));
        s.mark_started("r", &req.lease_token, None, T0 + 1, LEASE)
            .await
            .unwrap();
        let flagged = s.request_cancel("r", "token:tok2", T0 + 7).await.unwrap();
        assert_eq!(flagged.state, RunState::Running);
        assert!(flagged.cancel_requested);
        assert!(
            s.request_cancel("r", "token:tok2", T0 + 8)
                .await
                .unwrap()
                .cancel_requested,
            "idempotent"
        );
        assert!(
            s.renew_lease("r", &req.lease_token, T0 + 9, LEASE)
                .await
                .unwrap()
                .cancel_requested
        );
        assert_eq!(
            s.audit("r").await.unwrap().len(),
            3,
            "a cancel request is not a state change"
        );
        let events = s.events_after("r", 0, 10).await.unwrap();
        assert_eq!(events.len(), 1, "one event, not one per request");
        assert_eq!(
            (events[0].kind.as_str(), events[0].ts),
            ("cancel_requested", T0 + 7)
        );
        let done = s
            .finish_run(
                "r",
                &req.lease_token,
                &finish(RunState::Cancelled, Some(137), T0 + 10),
                "runner:w",
            )
            .await
            .unwrap();
        assert_eq!(done.state, RunState::Cancelled);

        // Finished: left as it is.
        assert_eq!(
            s.request_cancel("r", "token:tok2", T0 + 11).await.unwrap(),
            done
        );
        assert_eq!(s.audit("r").await.unwrap().len(), 4);

        // Claimed with a cancel pending and a dead runner: cancelled, not handed on.
        let req = claim_req("w2", &[], false, T0);
        assert_eq!(claim_id(s, &req).await.as_deref(), Some("c"));
        assert!(
            s.request_cancel("c", "token:tok2", T0 + 1)
                .await
                .unwrap()
                .cancel_requested
        );
        let expired = s.expire_leases(T0 + LEASE + 1).await.unwrap();
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].state, RunState::Cancelled);

        assert!(matches!(
            s.request_cancel("nope", "token:tok2", T0).await,
            Err(StoreError::NotFound { .. })
        ));
    })
    .await;
}

#[tokio::test]
async fn tokens_by_hash_and_revocation() {
    with_stores(|db: TestDb| async move {
        let s = &db.store;
        assert!(!s.has_admin_token().await.unwrap());
        let admin = TokenRecord {
            id: "t-admin".into(),
            role: Role::Admin,
            project: None,
            created_at: T0,
            revoked_at: None,
        };
        let client = TokenRecord {
            id: "t-client".into(),
            role: Role::Client,
            project: Some("alpha".into()),
            created_at: T0 + 1,
            revoked_at: None,
        };
        s.create_token(&admin, "hash-admin").await.unwrap();
        s.create_token(&client, "hash-client").await.unwrap();
        assert!(s.has_admin_token().await.unwrap());
        assert!(matches!(
            s.create_token(&admin, "other-hash").await,
            Err(StoreError::Conflict { what: "token", .. })
        ));
        let dup_hash = TokenRecord {
            id: "t-other".into(),
            ..client.clone()
        };
        assert!(matches!(
            s.create_token(&dup_hash, "hash-client").await,
            Err(StoreError::Conflict { .. })
        ));

        assert_eq!(
            s.token_by_hash("hash-client").await.unwrap(),
            Some(client.clone())
        );
        assert_eq!(
            s.token_by_hash("hash-admin").await.unwrap(),
            Some(admin.clone())
        );
        assert_eq!(s.token_by_hash("nope").await.unwrap(), None);

        s.revoke_token("t-client", T0 + 50).await.unwrap();
        s.revoke_token("t-client", T0 + 60).await.unwrap(); // keeps the first revocation time
        assert_eq!(s.token_by_hash("hash-client").await.unwrap(), None);
        assert!(matches!(
            s.revoke_token("nope", T0).await,
            Err(StoreError::NotFound { what: "token", .. })
        ));
        let listed = s.list_tokens().await.unwrap();
        assert_eq!(
            listed,
            [
                admin,
                TokenRecord {
                    revoked_at: Some(T0 + 50),
                    ..client
                }
            ]
        );
    })
    .await;
}

#[tokio::test]
async fn projects_create_get_list_and_conflict() {
    with_stores(|db: TestDb| async move {
        let s = &db.store;
        let beta = Project {
            name: "beta".into(),
            workspace_root: "/srv/beta".into(),
            allowed_paths: vec![],
            egress_ceiling: None,
            created_at: T0,
        };
        let alpha = Project {
            name: "alpha".into(),
            workspace_root: "/srv/alpha".into(),
            allowed_paths: vec!["/data/in".into(), "/data/out".into()],
            egress_ceiling: Some(vec!["pypi.org".into(), "*.pythonhosted.org:443".into()]),
            created_at: T0 + 1,
        };
        s.create_project(&beta).await.unwrap();
        s.create_project(&alpha).await.unwrap();
        match s
            .create_project(&Project {
                workspace_root: "/elsewhere".into(),
                ..alpha.clone()
            })
            .await
        {
            Err(StoreError::Conflict {
                what: "project",
                id,
            }) => assert_eq!(id, "alpha"),
            other => panic!("expected Conflict, got {other:?}"),
        }
        assert_eq!(s.project("alpha").await.unwrap(), Some(alpha.clone()));
        assert_eq!(s.project("gamma").await.unwrap(), None);
        assert_eq!(s.list_projects().await.unwrap(), [alpha, beta]);
    })
    .await;
}

#[tokio::test]
async fn runners_register_heartbeat_and_go_offline() {
    with_stores(|db: TestDb| async move {
        let s = &db.store;
        let runner = |id: &str, at: i64| RunnerRecord {
            id: id.into(),
            name: format!("host-{id}"),
            tags: vec!["linux".into()],
            require_matching_tags: false,
            capacity: 2,
            registered_at: at,
            last_heartbeat: at,
            online: true,
            token_id: None,
            secrets: vec!["API_KEY".into()],
        };
        s.register_runner(&runner("b", T0)).await.unwrap();
        s.register_runner(&runner("a", T0)).await.unwrap();
        // Registering again updates in place.
        let mut again = runner("a", T0 + 10);
        again.tags = vec!["gpu".into()];
        again.require_matching_tags = true;
        again.capacity = 4;
        assert_eq!(
            s.runner("a").await.unwrap().unwrap().secrets,
            ["API_KEY"],
            "{}: the secrets a runner declared are kept",
            db.kind
        );
        again.secrets = vec!["GH_TOKEN".into(), "NPM_TOKEN".into()];
        s.register_runner(&again).await.unwrap();
        let a = s.runner("a").await.unwrap().unwrap();
        assert_eq!(
            a.secrets,
            ["GH_TOKEN", "NPM_TOKEN"],
            "{}: registering again replaces them",
            db.kind
        );
        assert!(s
            .list_runners()
            .await
            .unwrap()
            .iter()
            .any(|r| r.id == "a" && r.secrets == ["GH_TOKEN", "NPM_TOKEN"]));
        assert_eq!(
            (
                a.tags.clone(),
                a.require_matching_tags,
                a.capacity,
                a.last_heartbeat
            ),
            (vec!["gpu".to_owned()], true, 4, T0 + 10)
        );
        assert_eq!(s.runner("zz").await.unwrap(), None);

        s.runner_heartbeat("a", T0 + 1000).await.unwrap();
        assert!(matches!(
            s.runner_heartbeat("zz", T0).await,
            Err(StoreError::NotFound { what: "runner", .. })
        ));
        assert_eq!(s.mark_stale_runners_offline(T0 + 500).await.unwrap(), ["b"]);
        assert!(
            s.mark_stale_runners_offline(T0 + 500)
                .await
                .unwrap()
                .is_empty(),
            "already offline"
        );
        let listed = s.list_runners().await.unwrap();
        assert_eq!(
            listed
                .iter()
                .map(|r| (r.id.as_str(), r.online))
                .collect::<Vec<_>>(),
            [("a", true), ("b", false)]
        );
        // A heartbeat brings it back.
        s.runner_heartbeat("b", T0 + 2000).await.unwrap();
        assert!(s.runner("b").await.unwrap().unwrap().online);
        assert_eq!(
            s.mark_stale_runners_offline(T0 + 1500).await.unwrap(),
            ["a"]
        );
    })
    .await;
}

#[tokio::test]
async fn a_runner_name_belongs_to_the_token_that_registered_it() {
    with_stores(|db: TestDb| async move {
        let s = &db.store;
        for id in ["tok-a", "tok-b"] {
            let token = TokenRecord {
                id: id.into(),
                role: Role::Runner,
                project: None,
                created_at: T0,
                revoked_at: None,
            };
            s.create_token(&token, &format!("hash-{id}")).await.unwrap();
        }
        let runner = |token: Option<&str>, capacity: i64| RunnerRecord {
            id: "host1".into(),
            name: "host1".into(),
            tags: vec![],
            require_matching_tags: false,
            capacity,
            registered_at: T0,
            last_heartbeat: T0,
            online: true,
            token_id: token.map(str::to_owned),
            secrets: vec![],
        };
        s.register_runner(&runner(Some("tok-a"), 1)).await.unwrap();
        // The same token registers again (a restart).
        s.register_runner(&runner(Some("tok-a"), 2)).await.unwrap();
        // Another token cannot take the name, nor can a registration without a token.
        for other in [Some("tok-b"), None] {
            match s.register_runner(&runner(other, 9)).await {
                Err(StoreError::RunnerTaken { runner }) => assert_eq!(runner, "host1"),
                got => panic!("{}: expected RunnerTaken, got {got:?}", db.kind),
            }
        }
        match s.bind_runner("host1", "tok-b").await {
            Err(e @ StoreError::RunnerTaken { .. }) => {
                assert!(e.to_string().contains("runner `host1`"), "{e}")
            }
            got => panic!("{}: expected RunnerTaken, got {got:?}", db.kind),
        }
        s.bind_runner("host1", "tok-a").await.unwrap();
        assert!(matches!(
            s.bind_runner("nope", "tok-a").await,
            Err(StoreError::NotFound { what: "runner", .. })
        ));
        let stored = s.runner("host1").await.unwrap().unwrap();
        assert_eq!(
            (stored.capacity, stored.token_id.as_deref()),
            (2, Some("tok-a")),
            "{}: the refused registrations changed nothing",
            db.kind
        );
        // Once its token is revoked, the name is free for another token.
        s.revoke_token("tok-a", T0 + 1).await.unwrap();
        s.register_runner(&runner(Some("tok-b"), 3)).await.unwrap();
        assert_eq!(
            s.runner("host1")
                .await
                .unwrap()
                .unwrap()
                .token_id
                .as_deref(),
            Some("tok-b")
        );
        // A runner registered before names were bound is taken by the first token to use it.
        s.register_runner(&RunnerRecord {
            id: "legacy".into(),
            ..runner(None, 1)
        })
        .await
        .unwrap();
        s.bind_runner("legacy", "tok-b").await.unwrap();
        assert_eq!(
            s.runner("legacy")
                .await
                .unwrap()
                .unwrap()
                .token_id
                .as_deref(),
            Some("tok-b")
        );
    })
    .await;
}

#[tokio::test]
async fn the_sqlite_file_and_its_wal_are_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.db");
    #[allow(unsafe_code)]
    // SAFETY: umask only swaps the process's file-creation mask.
    let previous = unsafe { libc::umask(0o022) };
    let store = SqlStore::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    #[allow(unsafe_code)]
    // SAFETY: as above.
    unsafe {
        libc::umask(previous)
    };
    // A write, so the WAL and the shared memory exist.
    store.insert_run(&new_run("r1", "p", &[])).await.unwrap();
    let mode = |suffix: &str| {
        let file = dir.path().join(format!("berth.db{suffix}"));
        std::fs::metadata(&file)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
    };
    for suffix in ["", "-wal", "-shm"] {
        assert_eq!(mode(suffix), 0o600, "berth.db{suffix}");
    }
    store.close().await;
    // A file an older berth left readable by others is made private when opened.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let store = SqlStore::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    assert_eq!(mode(""), 0o600);
    store.close().await;
}

#[tokio::test]
async fn counts_by_state_cover_every_state() {
    with_stores(|db: TestDb| async move {
        let s = &db.store;
        assert_eq!(
            s.count_by_state().await.unwrap(),
            RunState::ON_COORDINATOR.map(|st| (st, 0)).to_vec()
        );
        for i in 0..4 {
            s.insert_run(&new_run(&format!("r{i}"), "p", &[]))
                .await
                .unwrap();
        }
        let req = claim_req("w", &[], false, T0);
        s.claim(&req).await.unwrap().unwrap();
        s.request_cancel("r3", "token:t", T0).await.unwrap();
        let counts: HashMap<RunState, i64> =
            s.count_by_state().await.unwrap().into_iter().collect();
        assert_eq!(counts.len(), RunState::ON_COORDINATOR.len());
        assert_eq!(
            (
                counts[&RunState::Queued],
                counts[&RunState::Claimed],
                counts[&RunState::Cancelled]
            ),
            (2, 1, 1)
        );
        assert_eq!(counts[&RunState::Succeeded], 0);
    })
    .await;
}

#[tokio::test]
async fn pinned_runs_go_only_to_their_runner() {
    with_stores(|db: TestDb| async move {
        let s = &db.store;
        let mut pinned = new_run("pinned", "p", &[]);
        pinned.pinned_runner = Some("home".into());
        s.insert_run(&pinned).await.unwrap();
        s.insert_run(&new_run("free", "p", &[])).await.unwrap();
        // The other runner skips the pinned run (older in the queue) and takes the free one.
        assert_eq!(
            claim_id(s, &claim_req("other", &[], false, T0))
                .await
                .as_deref(),
            Some("free")
        );
        assert_eq!(claim_id(s, &claim_req("other", &[], false, T0)).await, None);
        assert_eq!(
            claim_id(s, &claim_req("home", &[], false, T0))
                .await
                .as_deref(),
            Some("pinned")
        );
        let row = s.run("pinned").await.unwrap().unwrap();
        assert_eq!(row.pinned_runner.as_deref(), Some("home"));
    })
    .await;
}

fn change(id: &str, version: i64, step: u32) -> WorkflowChange {
    WorkflowChange {
        id: id.to_owned(),
        expected_version: version,
        state: RunState::Running,
        progress: serde_json::json!({ "step": step }),
        runner_id: None,
        reason: None,
        finished_at: None,
        now: T0 + i64::from(step),
        actor: "server".to_owned(),
        notes: vec![WorkflowNote {
            event: "step_queued".into(),
            detail: format!("step {step}"),
        }],
        new_run: Some(new_run(&format!("{id}-step{step}"), "p", &[])),
    }
}

#[tokio::test]
async fn workflows_advance_once_per_version_with_their_step_runs_and_audit() {
    with_stores(|db: TestDb| async move {
        let s = &db.store;
        let wf = s
            .insert_workflow(&NewWorkflow {
                id: "wf-1".into(),
                project: "p".into(),
                name: "loop".into(),
                spec: serde_json::json!({ "task": "fix it" }),
                progress: serde_json::json!({ "step": 0 }),
                created_at: T0,
                actor: "tok1".into(),
            })
            .await
            .unwrap();
        assert_eq!((wf.state, wf.version), (RunState::Running, 1));
        assert_eq!(s.active_workflows().await.unwrap(), ["wf-1"]);

        // The first change wins; a second writer that read the same version changes nothing,
        // and its step run is not inserted.
        let first = s
            .update_workflow(&change("wf-1", 1, 1))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.version, 2);
        assert_eq!(first.progress, serde_json::json!({ "step": 1 }));
        let step_run = s.run("wf-1-step1").await.unwrap().unwrap();
        assert_eq!(step_run.pinned_runner, None);
        let mut racer = change("wf-1", 1, 9);
        racer.new_run = Some(new_run("racer-run", "p", &[]));
        assert_eq!(s.update_workflow(&racer).await.unwrap(), None);
        assert!(s.run("racer-run").await.unwrap().is_none());

        // Cancel is recorded once and bumps the version.
        let cancelled = s
            .request_workflow_cancel("wf-1", "tok2", T0 + 5)
            .await
            .unwrap();
        assert!(cancelled.cancel_requested);
        assert_eq!(cancelled.version, 3);
        let again = s
            .request_workflow_cancel("wf-1", "tok2", T0 + 6)
            .await
            .unwrap();
        assert_eq!(again.version, 3);

        // The end: no longer active, and no change applies after it.
        let mut end = change("wf-1", 3, 2);
        end.state = RunState::Cancelled;
        end.reason = Some("cancelled while step 1 ran".into());
        end.finished_at = Some(T0 + 7);
        end.new_run = None;
        let ended = s.update_workflow(&end).await.unwrap().unwrap();
        assert_eq!(ended.state, RunState::Cancelled);
        assert!(s.active_workflows().await.unwrap().is_empty());
        assert_eq!(
            s.update_workflow(&change("wf-1", 4, 3)).await.unwrap(),
            None
        );
        assert_eq!(
            s.ended_workflows(&["wf-1".into(), "unknown".into()])
                .await
                .unwrap(),
            ["wf-1", "unknown"]
        );

        let audit: Vec<(String, String)> = s
            .workflow_audit("wf-1")
            .await
            .unwrap()
            .into_iter()
            .map(|a| (a.event, a.actor))
            .collect();
        assert_eq!(
            audit,
            [
                ("submitted".to_string(), "token:tok1".to_string()),
                ("step_queued".into(), "server".into()),
                ("cancel_requested".into(), "token:tok2".into()),
                ("step_queued".into(), "server".into()),
            ]
        );
        let listed = s.list_workflows(Some("p"), None, 10).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert!(s
            .list_workflows(None, Some(&["q".to_string()]), 10)
            .await
            .unwrap()
            .is_empty());
    })
    .await;
}

#[tokio::test]
async fn a_started_server_gives_every_lease_one_full_period() {
    with_stores(|db: TestDb| async move {
        let s = &db.store;
        s.insert_run(&new_run("running", "p", &[])).await.unwrap();
        s.insert_run(&new_run("claimed", "p", &[])).await.unwrap();
        s.insert_run(&new_run("fresh", "p", &[])).await.unwrap();
        s.insert_run(&new_run("queued", "p", &[])).await.unwrap();
        let a = claim_req("wa", &[], false, T0);
        s.claim(&a).await.unwrap().unwrap();
        s.mark_started("running", &a.lease_token, Some("ctr"), T0, LEASE)
            .await
            .unwrap();
        let b = claim_req("wb", &[], false, T0);
        s.claim(&b).await.unwrap().unwrap();
        // Claimed later: its lease already reaches past the new start's period.
        let c = claim_req("wc", &[], false, T0 + 3 * LEASE);
        s.claim(&c).await.unwrap().unwrap();

        // The server was away for two lease periods and starts again.
        let start = T0 + 2 * LEASE;
        assert_eq!(s.extend_leases(start + LEASE).await.unwrap(), 2);
        assert!(s.expire_leases(start + 1).await.unwrap().is_empty());
        assert!(s.expire_leases(start + LEASE).await.unwrap().is_empty());
        // The runners can write again, and renew.
        s.append_events(
            "running",
            &a.lease_token,
            start + 10,
            1,
            &[event(start, "stdout", "x")],
        )
        .await
        .unwrap();
        s.renew_lease("claimed", &b.lease_token, start + 10, LEASE)
            .await
            .unwrap();
        assert_eq!(
            s.run("fresh").await.unwrap().unwrap().lease_expires_at,
            Some(T0 + 4 * LEASE)
        );
        assert_eq!(
            s.run("queued").await.unwrap().unwrap().lease_expires_at,
            None
        );
        // A runner that stays silent is written off one period after the start.
        let changed = s.expire_leases(start + LEASE + 1).await.unwrap();
        assert_eq!(
            changed.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["running"]
        );
    })
    .await;
}

/// Adds `n` untagged runs in `state` in one statement, numbered from `from`.
async fn bulk_runs(db: &TestDb, state: &str, from: u32, n: u32) {
    use sqlx::Connection;
    let to = from + n - 1;
    if db.kind == "sqlite" {
        let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
        sqlx::query(&format!(
            "WITH RECURSIVE n(i) AS (SELECT {from} UNION ALL SELECT i + 1 FROM n WHERE i < {to}) \
             INSERT INTO runs (id, project, state, execution_mode, spec, tags, labels, created_at) \
             SELECT printf('bulk%08d', i), 'p', '{state}', 'docker-sandbox', '{{}}', '[]', '{{}}', 0 FROM n"
        ))
        .execute(&mut conn)
        .await
        .unwrap();
    } else {
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::query(&format!(
            "INSERT INTO runs (id, project, state, execution_mode, spec, tags, labels, created_at) \
             SELECT 'bulk' || lpad(i::text, 8, '0'), 'p', '{state}', 'docker-sandbox', '{{}}', '[]', '{{}}', 0 \
             FROM generate_series({from}, {to}) AS i"
        ))
        .execute(&mut conn)
        .await
        .unwrap();
    }
}

/// The median time of `n` claims, in milliseconds.
async fn claim_p50(store: &SqlStore, n: usize) -> f64 {
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let request = claim_req("deep", &[], false, T0 + i as i64);
        let start = Instant::now();
        assert!(store.claim(&request).await.unwrap().is_some());
        times.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    times[n / 2]
}

/// Runs `sql` on the test database directly, past the store.
async fn raw_sql(db: &TestDb, sql: &str) {
    use sqlx::Connection;
    if db.kind == "sqlite" {
        let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
        sqlx::query(sql).execute(&mut conn).await.unwrap();
    } else {
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::query(sql).execute(&mut conn).await.unwrap();
    }
}

#[tokio::test]
async fn execution_modes_are_stored_as_the_api_s_words_and_others_are_refused() {
    with_stores(|db: TestDb| async move {
        let s = &db.store;
        let mut local = new_run("r-local", "p", &[]);
        local.execution_mode = ExecutionMode::Local;
        s.insert_run(&local).await.unwrap();
        s.insert_run(&new_run("r-sandbox", "p", &[])).await.unwrap();
        let read = |id: &'static str| async move { s.run(id).await.unwrap().unwrap() };
        assert_eq!(read("r-local").await.execution_mode, ExecutionMode::Local);
        assert_eq!(
            read("r-sandbox").await.execution_mode,
            ExecutionMode::DockerSandbox
        );
        raw_sql(
            &db,
            "UPDATE runs SET execution_mode = 'elsewhere' WHERE id = 'r-local'",
        )
        .await;
        match s.run("r-local").await {
            Err(StoreError::Backend(message)) => assert!(
                message.contains("execution mode") && message.contains("elsewhere"),
                "{message}"
            ),
            other => panic!("{}: {other:?}", db.kind),
        }
    })
    .await;
}

// Issue 17.3: a claim costs the same whatever the queue's depth, without fresh statistics (the
// statistics here are those of a history with nothing queued; the queue came in bursts after).
#[tokio::test]
async fn claims_stay_flat_as_the_queue_deepens() {
    with_stores(|db: TestDb| async move {
        let s = &db.store;
        bulk_runs(&db, "succeeded", 1, 1_000).await;
        s.maintain().await.unwrap();
        bulk_runs(&db, "queued", 1_001, 1_000).await;
        let shallow = claim_p50(s, 50).await;
        bulk_runs(&db, "queued", 2_001, 59_000).await;
        let deep = claim_p50(s, 50).await;
        println!(
            "{}: claim p50 {shallow:.2} ms at 1k queued, {deep:.2} ms at 60k",
            db.kind
        );
        assert!(
            deep <= 2.0_f64.max(3.0 * shallow),
            "{}: claim p50 {deep:.2} ms at 60k queued against {shallow:.2} ms at 1k",
            db.kind
        );
    })
    .await;
}
