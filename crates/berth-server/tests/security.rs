//! What an attacker's pass found on the coordinator, each case on SQLite and PostgreSQL: runner
//! names bound to their token, body limits where they are meant, stored specs that do not parse,
//! artifact names, logged server failures, project scoping, the database file's mode.
#![allow(clippy::unwrap_used)]

mod support;

#[allow(dead_code)]
#[path = "../../berth-store/tests/support/pg_cluster.rs"]
mod pg_cluster;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use berth_server::App;
use berth_store::{NewRun, Role, RunStore, RunnerStore, SqlStore};
use serde_json::{json, Value};
use support::token;
use tower::ServiceExt;

struct Fixture {
    _dir: tempfile::TempDir,
    kind: &'static str,
    app: Arc<App<SqlStore>>,
    admin: String,
    client: String,
    client_other: String,
    runner: String,
    runner_b: String,
}

/// Runs `body` on an app over a fresh SQLite store, then over a fresh PostgreSQL database.
async fn with_apps<F, Fut>(body: F)
where
    F: Fn(Fixture) -> Fut,
    Fut: Future<Output = ()>,
{
    for kind in ["sqlite", "postgres"] {
        let dir = tempfile::tempdir().unwrap();
        let url = match kind {
            "sqlite" => format!("sqlite://{}", dir.path().join("db.sqlite").display()),
            _ => pg_cluster::fresh_database("berth_srv").0,
        };
        let store = SqlStore::connect(&url).await.unwrap();
        let app = support::app_on(store, dir.path(), &["demo", "other"], |_| {}).await;
        body(Fixture {
            kind,
            admin: token(&app, Role::Admin, None).await,
            client: token(&app, Role::Client, Some("demo")).await,
            client_other: token(&app, Role::Client, Some("other")).await,
            runner: token(&app, Role::Runner, None).await,
            runner_b: token(&app, Role::Runner, None).await,
            app,
            _dir: dir,
        })
        .await;
    }
}

async fn call(
    f: &Fixture,
    method: &str,
    path: &str,
    token: &str,
    body: impl Into<Body>,
    lease: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {token}"));
    if let Some(lease) = lease {
        request = request.header("x-berth-lease", lease);
    }
    let response = berth_server::router(f.app.clone())
        .oneshot(request.body(body.into()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn ok(f: &Fixture, method: &str, path: &str, token: &str, body: Value) -> Value {
    let (status, reply) = call(f, method, path, token, body.to_string(), None).await;
    assert!(
        status.is_success(),
        "{}: {method} {path}: {status} {reply}",
        f.kind
    );
    reply
}

async fn submit(f: &Fixture, token: &str, project: &str) -> String {
    let run = ok(
        f,
        "POST",
        "/api/v1/runs",
        token,
        json!({ "project": project, "sandbox": { "image": "img", "command": ["true"] } }),
    )
    .await;
    run["id"].as_str().unwrap().to_string()
}

async fn register(f: &Fixture, token: &str, name: &str) -> (StatusCode, Value) {
    call(
        f,
        "POST",
        "/api/v1/runners/register",
        token,
        json!({ "name": name, "capacity": 4 }).to_string(),
        None,
    )
    .await
}

async fn claim(f: &Fixture, token: &str, runner: &str) -> (StatusCode, Value) {
    call(
        f,
        "POST",
        &format!("/api/v1/runners/{runner}/claim"),
        token,
        "{}",
        None,
    )
    .await
}

/// Registers `host1` with the runner token and claims one run: (run id, lease token).
async fn claimed_run(f: &Fixture) -> (String, String) {
    submit(f, &f.client, "demo").await;
    assert_eq!(register(f, &f.runner, "host1").await.0, StatusCode::OK);
    let (status, claimed) = claim(f, &f.runner, "host1").await;
    assert_eq!(status, StatusCode::OK, "{}: {claimed}", f.kind);
    (
        claimed["run"]["id"].as_str().unwrap().to_string(),
        claimed["lease_token"].as_str().unwrap().to_string(),
    )
}

/// Log lines written while `body` runs (this thread: the tests run on a current-thread runtime).
async fn logged<T>(body: impl Future<Output = T>) -> (T, Vec<String>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let guard = tracing::subscriber::set_default(Capture(lines.clone()));
    let out = body.await;
    drop(guard);
    let lines = lines.lock().unwrap().clone();
    (out, lines)
}

struct Capture(Arc<Mutex<Vec<String>>>);

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut line = event.metadata().level().to_string();
        event.record(&mut Fields(&mut line));
        self.0.lock().unwrap().push(line);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

fn error_lines(lines: &[String]) -> Vec<&String> {
    lines.iter().filter(|l| l.starts_with("ERROR")).collect()
}

#[tokio::test]
async fn a_runner_name_belongs_to_the_token_that_registered_it() {
    with_apps(|f| async move {
        assert_eq!(register(&f, &f.runner, "host1").await.0, StatusCode::OK);
        // A restart: the same token registers the same name again.
        assert_eq!(register(&f, &f.runner, "host1").await.0, StatusCode::OK);
        let (status, reply) = register(&f, &f.runner_b, "host1").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{}: {reply}", f.kind);
        let message = reply["error"].as_str().unwrap();
        assert!(message.contains("runner `host1`"), "{message}");
        // Neither may the other token claim or heartbeat as host1.
        submit(&f, &f.client, "demo").await;
        let (status, reply) = claim(&f, &f.runner_b, "host1").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{}: {reply}", f.kind);
        assert!(reply["error"].as_str().unwrap().contains("runner `host1`"));
        let (status, _) = call(
            &f,
            "POST",
            "/api/v1/runners/host1/heartbeat",
            &f.runner_b,
            "{}",
            None,
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{}", f.kind);
        assert_eq!(
            f.app.store.runner("host1").await.unwrap().unwrap().capacity,
            4
        );
        // The owner still claims (the queued run is still there: nothing was handed out).
        assert_eq!(
            claim(&f, &f.runner, "host1").await.0,
            StatusCode::OK,
            "{}",
            f.kind
        );
        // The other token registers a name of its own.
        assert_eq!(register(&f, &f.runner_b, "host2").await.0, StatusCode::OK);
    })
    .await;
}

#[tokio::test]
async fn event_batches_get_16_mib_and_other_bodies_keep_the_default() {
    with_apps(|f| async move {
        let (run, lease) = claimed_run(&f).await;
        let path = format!("/api/v1/runs/{run}/events");
        let batch = |bytes: usize| {
            let events: Vec<Value> = (0..bytes / (64 * 1024))
                .map(|i| json!({ "ts": i, "kind": "stdout", "data": "x".repeat(64 * 1024) }))
                .collect();
            json!({ "lease_token": lease, "first_seq": 1, "events": events }).to_string()
        };
        let two_mib = batch(2 << 20);
        assert!(two_mib.len() > 2 << 20);
        let (status, reply) = call(&f, "POST", &path, &f.runner, two_mib, None).await;
        assert_eq!(status, StatusCode::OK, "{}: {reply}", f.kind);
        assert_eq!(reply["last_seq"], 32);
        let (status, _) = call(&f, "POST", &path, &f.runner, batch(17 << 20), None).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{}", f.kind);
        // A submission is no event batch: the default limit of 1 MiB applies.
        let huge = json!({ "project": "demo", "sandbox": { "image": "i", "command": ["x".repeat(2 << 20)] } });
        let (status, _) = call(&f, "POST", "/api/v1/runs", &f.client, huge.to_string(), None).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{}", f.kind);
    })
    .await;
}

#[tokio::test]
async fn a_stored_spec_that_does_not_parse_is_never_handed_out() {
    with_apps(|f| async move {
        let run = NewRun {
            id: "r-broken".into(),
            project: "demo".into(),
            execution_mode: berth_store::ExecutionMode::DockerSandbox,
            spec: json!({ "image": "img", "command": "not a list" }),
            tags: vec![],
            labels: BTreeMap::new(),
            created_at: 1,
            actor: "token:test".into(),
            pinned_runner: None,
        };
        f.app.store.insert_run(&run).await.unwrap();
        assert_eq!(register(&f, &f.runner, "host1").await.0, StatusCode::OK);
        let ((status, reply), lines) = logged(claim(&f, &f.runner, "host1")).await;
        assert_eq!(
            status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{}: {reply}",
            f.kind
        );
        assert!(
            reply["error"].as_str().unwrap().contains("r-broken"),
            "{reply}"
        );
        let errors = error_lines(&lines);
        assert!(
            errors
                .iter()
                .any(|l| l.contains("r-broken") && l.contains("does not parse")),
            "{errors:?}"
        );
        // The run ended `error` with the reason, so it does not come back.
        let (_, view) = call(&f, "GET", "/api/v1/runs/r-broken", &f.client, "", None).await;
        assert_eq!(view["state"], "error", "{}: {view}", f.kind);
        assert!(view["reason"].as_str().unwrap().contains("stored spec"));
        assert_eq!(
            claim(&f, &f.runner, "host1").await.0,
            StatusCode::NO_CONTENT,
            "{}",
            f.kind
        );
    })
    .await;
}

#[tokio::test]
async fn artifact_names_no_file_system_holds_are_422_naming_the_problem() {
    with_apps(|f| async move {
        let (run, lease) = claimed_run(&f).await;
        let long_name = "n".repeat(300);
        let long_path = vec!["d".repeat(200); 6].join("/");
        let cases = [
            ("a%00b.txt", "NUL byte"),
            ("..%2F..%2Fescape", "`..`"),
            ("%2Fetc%2Fpasswd", "absolute"),
            (long_name.as_str(), "name of 300 bytes"),
            (long_path.as_str(), "bytes long"),
        ];
        for (name, problem) in cases {
            let path = format!("/api/v1/runs/{run}/artifacts/{name}");
            let (status, reply) = call(&f, "PUT", &path, &f.runner, "data", Some(&lease)).await;
            assert_eq!(
                status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{}: {name}: {reply}",
                f.kind
            );
            let message = reply["errors"][0]["message"].as_str().unwrap();
            assert!(message.contains(problem), "{name}: {message}");
        }
        // An encoded name that is fine is stored under its decoded name.
        let path = format!("/api/v1/runs/{run}/artifacts/out%20dir/r%C3%A9sum%C3%A9%3F.txt");
        let (status, reply) = call(&f, "PUT", &path, &f.runner, "data", Some(&lease)).await;
        assert_eq!(status, StatusCode::CREATED, "{}: {reply}", f.kind);
        let (_, list) = call(
            &f,
            "GET",
            &format!("/api/v1/runs/{run}/artifacts"),
            &f.client,
            "",
            None,
        )
        .await;
        assert_eq!(list[0]["path"], "out dir/résumé?.txt", "{list}");
    })
    .await;
}

#[tokio::test]
async fn every_server_failure_is_logged() {
    with_apps(|f| async move {
        let (run, lease) = claimed_run(&f).await;
        // The run's artifact directory cannot be made: the write fails, and says so.
        let artifacts = f.app.config.state_dir.join("artifacts");
        std::fs::create_dir_all(&artifacts).unwrap();
        std::fs::write(artifacts.join(&run), "in the way").unwrap();
        let path = format!("/api/v1/runs/{run}/artifacts/a.txt");
        let ((status, reply), lines) =
            logged(call(&f, "PUT", &path, &f.runner, "data", Some(&lease))).await;
        assert_eq!(
            status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{}: {reply}",
            f.kind
        );
        let errors = error_lines(&lines);
        assert!(
            errors.iter().any(|l| l.contains("status=500")
                && l.contains(&path)
                && l.contains("storing the artifact")),
            "{}: {errors:?}",
            f.kind
        );
        // The store is gone: 503, logged with the request.
        f.app.store.close().await;
        let ((status, reply), lines) =
            logged(call(&f, "GET", "/readyz", &f.client, "", None)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{}", f.kind);
        // Probes need no token, so the answer says nothing about the store but that it is down.
        assert_eq!(
            reply["error"], "not ready: the store does not answer",
            "{}",
            f.kind
        );
        let errors = error_lines(&lines);
        assert!(
            errors
                .iter()
                .any(|l| l.contains("status=503") && l.contains("/readyz")),
            "{}: {errors:?}",
            f.kind
        );
    })
    .await;
}

#[tokio::test]
async fn clients_see_the_run_ids_of_their_own_projects_only() {
    with_apps(|f| async move {
        let demo = submit(&f, &f.client, "demo").await;
        let other = submit(&f, &f.client_other, "other").await;
        assert_eq!(register(&f, &f.runner, "host1").await.0, StatusCode::OK);
        for _ in 0..2 {
            assert_eq!(claim(&f, &f.runner, "host1").await.0, StatusCode::OK);
        }
        let running = |token: String| {
            let f = &f;
            async move {
                let (status, list) = call(f, "GET", "/api/v1/runners", &token, "", None).await;
                assert_eq!(status, StatusCode::OK);
                let mut ids: Vec<String> = list[0]["running"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_string())
                    .collect();
                ids.sort();
                ids
            }
        };
        assert_eq!(
            running(f.client.clone()).await,
            [demo.as_str()],
            "{}",
            f.kind
        );
        assert_eq!(running(f.client_other.clone()).await, [other.as_str()]);
        let mut both = vec![demo.clone(), other.clone()];
        both.sort();
        assert_eq!(running(f.admin.clone()).await, both);
        // Lists of runs and workflows are scoped too, and another project's run is refused.
        let (_, runs) = call(&f, "GET", "/api/v1/runs", &f.client, "", None).await;
        let ids: Vec<&str> = runs["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, [demo.as_str()]);
        for suffix in ["", "/events", "/audit", "/artifacts"] {
            let path = format!("/api/v1/runs/{other}{suffix}");
            let (status, _) = call(&f, "GET", &path, &f.client, "", None).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        }
    })
    .await;
}

#[tokio::test]
async fn the_database_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    support::app(dir.path(), &[], |_| {}).await;
    for suffix in ["", "-wal", "-shm"] {
        let file = dir.path().join(format!("db.sqlite{suffix}"));
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
    }
}

/// A runner's finish records the commit the run started from, a full commit id only: anything
/// else is a 422 naming `commit`, and the run is left as it was.
#[tokio::test]
async fn a_finish_records_a_full_commit_id_only() {
    with_apps(|f: Fixture| async move {
        let (id, lease) = claimed_run(&f).await;
        let start = json!({ "lease_token": lease }).to_string();
        let (status, _) = call(
            &f,
            "POST",
            &format!("/api/v1/runs/{id}/start"),
            &f.runner,
            start,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{}", f.kind);
        let finish = |commit: &str| {
            json!({ "lease_token": lease, "state": "succeeded", "exit_code": 0, "commit": commit })
                .to_string()
        };
        let path = format!("/api/v1/runs/{id}/finish");
        for bad in [
            "--upload-pack=x",
            "abc123",
            &"A".repeat(40),
            &"a".repeat(41),
        ] {
            let (status, body) = call(&f, "POST", &path, &f.runner, finish(bad), None).await;
            assert_eq!(
                status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{}: {bad}: {body}",
                f.kind
            );
            assert_eq!(body["errors"][0]["field"], "commit", "{body}");
        }
        let run = ok(
            &f,
            "GET",
            &format!("/api/v1/runs/{id}"),
            &f.client,
            Value::Null,
        )
        .await;
        assert_eq!(
            (run["state"].as_str(), &run["commit"]),
            (Some("running"), &Value::Null),
            "{}",
            f.kind
        );
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let (status, body) = call(&f, "POST", &path, &f.runner, finish(commit), None).await;
        assert_eq!(status, StatusCode::OK, "{}: {body}", f.kind);
        let run = ok(
            &f,
            "GET",
            &format!("/api/v1/runs/{id}"),
            &f.client,
            Value::Null,
        )
        .await;
        assert_eq!(
            (run["state"].as_str(), run["commit"].as_str()),
            (Some("succeeded"), Some(commit))
        );
    })
    .await;
}

/// A list filter or cursor holding a NUL character is a 422 naming the parameter; PostgreSQL
/// cannot be asked about one (found by the API fuzzer: a 503 from the store).
#[tokio::test]
async fn list_parameters_with_a_nul_character_are_422_naming_the_parameter() {
    with_apps(|f| async move {
        for (path, field) in [
            ("/api/v1/runs?after=a%00b", "after"),
            ("/api/v1/runs?project=demo%00", "project"),
            ("/api/v1/runs?tag=%00", "tag"),
            ("/api/v1/runs?state=queued%00", "state"),
            ("/api/v1/workflows?project=%00x", "project"),
        ] {
            let (status, reply) = call(&f, "GET", path, &f.admin, "", None).await;
            assert_eq!(
                status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{}: {path}: {reply}",
                f.kind
            );
            assert_eq!(reply["errors"][0]["field"], field, "{path}: {reply}");
        }
        let (status, reply) = call(&f, "GET", "/api/v1/runs?after=a", &f.admin, "", None).await;
        assert_eq!(status, StatusCode::OK, "{}: {reply}", f.kind);
    })
    .await;
}
