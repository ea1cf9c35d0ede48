//! The web dashboard in a real browser: a real `berth server`, a real `berth runner` on the
//! Docker engine, and Debian's chromium driven by chromedriver through WebDriver (fantoccini).
//!
//! Scenarios: a wrong token is refused; sign-in; a submitted run appears in the runs list without
//! a reload; its log lines appear live; cancelling it from the page ends it `cancelled`; a run's
//! diff and a workflow's steps and diff are rendered; a client of project A cannot open project
//! B's run by URL, nor its artifacts or events; the admin pages; sign-out. Screenshots of the
//! main pages are written to target/dashboard-screenshots/.
//!
//! Needs `chromium` and `chromium-driver` (`apt-get install chromium chromium-driver`); without
//! them the test fails and says so.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod support;

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::Value;
use support::workflow::{make_repo, REVIEWER};
use support::{agents_image, berth_bin, force_remove, image};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn unique(base: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{base}-{}-{nanos:x}", std::process::id())
}

/// A server, a runner, two projects and a client token for each; everything stopped on drop.
struct Cluster {
    dir: tempfile::TempDir,
    url: String,
    admin: String,
    /// (project, client token) for A and B.
    a: (String, String),
    b: (String, String),
    runner: String,
    children: Vec<Child>,
}

impl Cluster {
    fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("berth-dash-")
            .tempdir()
            .unwrap();
        let mut cluster = Self {
            url: String::new(),
            admin: String::new(),
            a: (unique("alpha"), String::new()),
            b: (unique("beta"), String::new()),
            runner: unique("dash"),
            children: Vec::new(),
            dir,
        };
        let log = cluster.log("server");
        let state = cluster.path().join("state");
        let server = cluster
            .berth(&["server", "--listen", "127.0.0.1:0", "--state-dir"])
            .arg(&state)
            .args(["--lease", "3s", "--heartbeat", "500ms"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        cluster.children.push(server);
        cluster.url = wait_for(Duration::from_secs(20), "the server listens", || {
            let log = std::fs::read_to_string(cluster.path().join("server.log")).ok()?;
            let rest = log.split_once("listening on http://")?.1;
            let address = rest.split_whitespace().next()?;
            Some(format!("http://{address}"))
        });
        cluster.admin = std::fs::read_to_string(state.join("admin-token"))
            .unwrap()
            .trim()
            .to_string();
        for which in ["a", "b"] {
            let ws = cluster.path().join(format!("ws-{which}"));
            std::fs::create_dir_all(&ws).unwrap();
            std::fs::set_permissions(&ws, std::fs::Permissions::from_mode(0o777)).unwrap();
            let project = if which == "a" {
                cluster.a.0.clone()
            } else {
                cluster.b.0.clone()
            };
            let ws = ws.display().to_string();
            cluster.ok_as(
                &cluster.admin.clone(),
                &["project", "create", &project, "--workspace-root", &ws],
            );
            let token = cluster.create_token(&["--role", "client", "--project", &project]);
            if which == "a" {
                cluster.a.1 = token;
            } else {
                cluster.b.1 = token;
            }
        }
        let runner_token = cluster.create_token(&["--role", "runner"]);
        let log = cluster.log("runner");
        let runner_state = cluster.path().join("runner");
        let runner = cluster
            .berth(&["runner", "--server", &cluster.url.clone(), "--token"])
            .arg(&runner_token)
            .args(["--name", &cluster.runner.clone(), "--state-dir"])
            .arg(&runner_state)
            // Made-up credentials for the fake agents (agent profiles refuse to start without).
            .env_remove("CLAUDE_CODE_OAUTH_TOKEN")
            .env("ANTHROPIC_API_KEY", "berth-test-not-a-key")
            .env("OPENAI_API_KEY", "berth-test-not-a-key")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        cluster.children.push(runner);
        cluster
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn log(&self, name: &str) -> std::fs::File {
        std::fs::File::create(self.path().join(format!("{name}.log"))).unwrap()
    }

    fn logs(&self) -> String {
        ["server", "runner", "chromedriver"]
            .iter()
            .map(|n| {
                let all = std::fs::read_to_string(self.path().join(format!("{n}.log")))
                    .unwrap_or_default();
                let lines: Vec<&str> = all.lines().collect();
                format!(
                    "--- {n}\n{}\n",
                    lines[lines.len().saturating_sub(30)..].join("\n")
                )
            })
            .collect()
    }

    fn berth(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(berth_bin());
        cmd.args(args)
            .current_dir(self.path())
            .stdin(Stdio::null())
            .env_remove("BERTH_STATE_DIR")
            .env_remove("BERTH_SERVER")
            .env_remove("BERTH_TOKEN")
            .env_remove("DOCKER_HOST")
            .env("NO_COLOR", "1")
            .env("XDG_CACHE_HOME", self.path().join("cache"))
            .env("XDG_CONFIG_HOME", self.path().join("config"));
        cmd
    }

    /// `berth SUBCOMMAND --server URL --token TOKEN ARGS`, which must succeed; its stdout.
    fn ok_as(&self, token: &str, args: &[&str]) -> String {
        let mut all = vec![args[0], "--server", &self.url, "--token", token];
        all.extend_from_slice(&args[1..]);
        let o = self.berth(&all).output().unwrap();
        assert!(
            o.status.success(),
            "berth {args:?}: {}\n{}",
            text(&o.stderr),
            self.logs()
        );
        text(&o.stdout)
    }

    fn create_token(&self, args: &[&str]) -> String {
        let mut all = vec!["token", "create", "--json"];
        all.extend_from_slice(args);
        let v: Value = serde_json::from_str(&self.ok_as(&self.admin, &all)).unwrap();
        v["token"].as_str().unwrap().to_string()
    }

    /// Submits a run to `project` with `token`; its id.
    fn submit(&self, (project, token): &(String, String), extra: &[&str], cmd: &[&str]) -> String {
        let mut args = vec!["submit", "--project", project, "--image", image(), "--json"];
        args.extend_from_slice(extra);
        args.push("--");
        args.extend_from_slice(cmd);
        let v: Value = serde_json::from_str(&self.ok_as(token, &args)).unwrap();
        v["id"].as_str().unwrap().to_string()
    }

    /// GET `path` with a bearer token: the JSON answer.
    fn api(&self, token: &str, path: &str) -> Value {
        let o = Command::new("curl")
            .args(["-sS", "--max-time", "30", "-H"])
            .arg(format!("Authorization: Bearer {token}"))
            .arg(format!("{}{path}", self.url))
            .output()
            .unwrap();
        serde_json::from_slice(&o.stdout).unwrap_or(Value::Null)
    }

    fn wait_run(&self, token: &str, id: &str, pred: impl Fn(&str) -> bool) -> Value {
        wait_for(Duration::from_secs(120), &format!("run {id}"), || {
            let run = self.api(token, &format!("/api/v1/runs/{id}"));
            pred(run["state"].as_str().unwrap_or_default()).then_some(run)
        })
    }

    /// (status, headers and body) of a request with a cookie and form body, by curl.
    fn curl(&self, method: &str, path: &str, cookie: &str, form: Option<&str>) -> (u16, String) {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "10", "-i", "-X", method, "-H"])
            .arg(format!("Cookie: {cookie}"));
        if let Some(form) = form {
            cmd.args(["--data", form]);
        }
        let o = cmd.arg(format!("{}{path}", self.url)).output().unwrap();
        let out = text(&o.stdout);
        let status = out
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, out)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let out = Command::new("docker")
            .args(["ps", "-aq", "--filter"])
            .arg(format!("label=berth.runner-id={}", self.runner))
            .output()
            .unwrap();
        for id in text(&out.stdout).lines() {
            force_remove(id);
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

fn wait_for<T>(limit: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// chromedriver on a free port (killed on drop).
struct Driver {
    child: Child,
    url: String,
    /// The driver's and chromium's TMPDIR: chromium leaves its singleton directory
    /// (`org.chromium.Chromium.*`) there, removed with this.
    _tmp: tempfile::TempDir,
}

impl Driver {
    fn start(log: std::fs::File) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // Its own process group, with the chromium it starts: dropping the driver kills them all,
        // also when a test fails before closing the browser.
        let tmp = tempfile::Builder::new()
            .prefix("berth-chromium-")
            .tempdir()
            .unwrap();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .env("TMPDIR", tmp.path())
            .process_group(0)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("chromedriver (apt-get install chromium chromium-driver)");
        let url = format!("http://127.0.0.1:{port}");
        wait_for(Duration::from_secs(20), "chromedriver", || {
            Command::new("curl")
                .args(["-sf", "--max-time", "2"])
                .arg(format!("{url}/status"))
                .output()
                .ok()
                .filter(|o| o.status.success())
        });
        Self {
            child,
            url,
            _tmp: tmp,
        }
    }

    async fn browser(&self, width: u32, height: u32) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                         "--disable-gpu", format!("--window-size={width},{height}")],
            }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // A closed browser's processes end by themselves (and are reaped by chromedriver): give
        // them a moment, then kill whatever is left of the process group this driver leads (all
        // of it when a test failed before closing the browser).
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let members = Command::new("pgrep")
                .args(["-g", &self.child.id().to_string()])
                .output()
                .map_or(0, |o| text(&o.stdout).lines().count());
            if members <= 1 {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
    }
}

fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shoot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.unwrap();
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

/// Waits until the element `css` exists and its text satisfies `pred`; its text.
async fn wait_text(browser: &Client, css: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    loop {
        if let Ok(el) = browser.find(Locator::Css(css)).await {
            if let Ok(t) = el.text().await {
                if pred(&t) {
                    return t;
                }
                last = t;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{css} never matched; last text: {last:?}; page {}",
            browser.current_url().await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Clicks the element `css`, finding it again if the page replaced it between the find and
/// the click (the run page's summary, the cancel button in it, is refreshed in place).
async fn click_fresh(browser: &Client, css: &str) {
    let mut attempts = 0;
    loop {
        let clicked = match browser.find(Locator::Css(css)).await {
            Ok(el) => el.click().await,
            Err(e) => Err(e),
        };
        match clicked {
            Ok(()) => return,
            Err(fantoccini::error::CmdError::Standard(e))
                if e.error == fantoccini::error::ErrorStatus::StaleElementReference
                    && attempts < 10 =>
            {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("clicking {css}: {e}"),
        }
    }
}

/// Signs in on the sign-in page (the current one if it is, keeping where it leads).
async fn sign_in(browser: &Client, url: &str, token: &str) {
    if path_of(browser).await != "/ui/signin" {
        browser.goto(&format!("{url}/ui/signin")).await.unwrap();
    }
    browser
        .find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(token)
        .await
        .unwrap();
    browser
        .find(Locator::Id("signin"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // The answer is loaded: a refusal, or a page with the sign-out form.
    browser
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("#signin-error, form.signout"))
        .await
        .unwrap();
}

async fn path_of(browser: &Client) -> String {
    browser.current_url().await.unwrap().path().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_real_browser() {
    let c = Cluster::start();
    // Project A's checkout is a git repository with a workflow (for the worktree run's diff and
    // the workflow).
    let ws_a = c.path().join("ws-a");
    make_repo(&ws_a, REVIEWER, 3);
    let driver = Driver::start(c.log("chromedriver"));
    let browser = driver.browser(1280, 900).await;
    let url = c.url.clone();

    // `/` leads to the runs, which need a session: the sign-in page.
    browser.goto(&format!("{url}/")).await.unwrap();
    assert_eq!(path_of(&browser).await, "/ui/signin");

    // A wrong token is refused, and not echoed back.
    sign_in(&browser, &url, "berth_nope_0123456789").await;
    let refusal = wait_text(&browser, "#signin-error", |t| !t.is_empty()).await;
    assert!(refusal.contains("Unknown or revoked token"), "{refusal}");
    assert!(!browser.source().await.unwrap().contains("berth_nope"));
    assert_eq!(path_of(&browser).await, "/ui/signin");
    shoot(&browser, "signin-refused").await;

    // Sign in as project A's client.
    sign_in(&browser, &url, &c.a.1).await;
    wait_text(&browser, "h1", |t| t == "Runs").await;
    assert!(!browser.source().await.unwrap().contains(&c.a.1));

    // A run submitted while the page is open appears in it, with no reload.
    let marker = unique("marker");
    let slow = c.submit(
        &c.a,
        &["--label", &format!("suite={marker}")],
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 600 ]; do i=$((i+1)); echo line-$i; sleep 0.3; done",
        ],
    );
    let row = format!("tr[data-run='{slow}']");
    wait_text(&browser, &row, |t| t.contains(&slow)).await;
    // The label filter keeps it; another label hides it.
    browser
        .goto(&format!("{url}/ui/runs?label=suite%3D{marker}"))
        .await
        .unwrap();
    wait_text(&browser, &row, |t| t.contains(&slow)).await;
    browser
        .goto(&format!("{url}/ui/runs?label=suite%3Dnothing"))
        .await
        .unwrap();
    wait_text(&browser, "#runs-table", |t| t.contains("No runs match")).await;
    browser.goto(&format!("{url}/ui/runs")).await.unwrap();
    wait_text(&browser, &row, |t| t.contains("running")).await;
    shoot(&browser, "runs").await;

    // Its log grows live on the run page.
    browser
        .goto(&format!("{url}/ui/runs/{slow}"))
        .await
        .unwrap();
    wait_text(&browser, "#log", |t| t.contains("line-2")).await;
    let early = browser
        .find(Locator::Id("log"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let later = wait_text(&browser, "#log", |t| t.contains("line-12")).await;
    assert!(
        !early.contains("line-12") && later.contains("line-2"),
        "the log grew without a reload"
    );
    wait_text(&browser, "#log-status", |t| t.contains("live")).await;
    shoot(&browser, "run-live").await;

    // Cancel from the page: the state changes to cancelled.
    click_fresh(&browser, "#cancel").await;
    wait_text(&browser, "#run-state", |t| t == "cancelled").await;
    let run = c.wait_run(&c.a.1, &slow, |s| s == "cancelled");
    assert_eq!(run["state"], "cancelled");
    wait_text(&browser, "#log-status", |t| t.contains("ended")).await;
    wait_text(&browser, "#audit", |t| t.contains("cancelled")).await;
    shoot(&browser, "run-cancelled").await;

    // A worktree run's diff is rendered, and its artifact is offered for download.
    let changed = c.submit(
        &c.a,
        &["--workspace-mode", "worktree"],
        &["sh", "-c", "echo '<b>two</b>' >> calc.txt"],
    );
    let run = c.wait_run(&c.a.1, &changed, |s| {
        !["queued", "claimed", "running"].contains(&s)
    });
    assert_eq!(run["state"], "succeeded", "{run}\n{}", c.logs());
    browser
        .goto(&format!("{url}/ui/runs/{changed}"))
        .await
        .unwrap();
    let diff = wait_text(&browser, "#diff", |t| t.contains("+<b>two</b>")).await;
    assert!(diff.contains("calc.txt"), "{diff}");
    let link = browser
        .find(Locator::Css("#artifacts a[href$='berth/diff.patch']"))
        .await
        .unwrap();
    assert!(link.attr("download").await.unwrap().is_some());
    browser
        .execute("document.getElementById('diff').scrollIntoView();", vec![])
        .await
        .unwrap();
    shoot(&browser, "run-diff").await;

    // A workflow: its steps with their runs, states and verdicts, and its diff.
    let wf: Value = serde_json::from_str(&c.ok_as(
        &c.a.1,
        &[
            "submit",
            "--project",
            &c.a.0,
            "--workflow",
            &ws_a.join("workflow.toml").display().to_string(),
            "--image",
            agents_image(),
            "--agent-image",
            agents_image(),
            "--network",
            "none",
            "--json",
            "--",
            "Fix calc.",
        ],
    ))
    .unwrap();
    let wf = wf["id"].as_str().unwrap().to_string();
    browser.goto(&format!("{url}/ui/workflows")).await.unwrap();
    wait_text(&browser, "#workflows-table", |t| t.contains(&wf)).await;
    browser
        .goto(&format!("{url}/ui/workflows/{wf}"))
        .await
        .unwrap();
    wait_text(&browser, "#wf-state", |t| t == "succeeded").await;
    let steps = wait_text(&browser, "#steps", |t| t.contains("approved")).await;
    assert!(
        steps.contains("changes requested") && steps.contains("review"),
        "{steps}"
    );
    let diff = wait_text(&browser, "#diff", |t| t.contains("+fixed")).await;
    assert!(diff.contains("notes.txt"), "{diff}");
    shoot(&browser, "workflow").await;

    // Runners.
    browser.goto(&format!("{url}/ui/runners")).await.unwrap();
    let runners = wait_text(&browser, "#runners-table", |t| t.contains(&c.runner)).await;
    assert!(runners.contains("online"), "{runners}");
    shoot(&browser, "runners").await;

    // Project B's run, by URL: refused, nothing of it shown; the same for its artifacts and
    // events.
    let secret = unique("secret-of-b");
    let other = c.submit(&c.b, &[], &["echo", &secret]);
    c.wait_run(&c.b.1, &other, |s| s == "succeeded");
    browser
        .goto(&format!("{url}/ui/runs/{other}"))
        .await
        .unwrap();
    let refused = wait_text(&browser, "main", |t| !t.is_empty()).await;
    assert!(
        refused.contains("403") && refused.contains("limited to project"),
        "{refused}"
    );
    assert!(!browser.source().await.unwrap().contains(&secret));
    for path in [
        format!("/ui/runs/{other}/events"),
        format!("/ui/runs/{other}/artifacts/berth/record.json"),
    ] {
        browser.goto(&format!("{url}{path}")).await.unwrap();
        let source = browser.source().await.unwrap();
        assert!(
            source.contains("limited to project") && !source.contains(&secret),
            "{path}: {source}"
        );
    }
    // A client is not an admin.
    browser.goto(&format!("{url}/ui/admin")).await.unwrap();
    wait_text(&browser, "main", |t| t.contains("403")).await;

    // Sign out: the pages ask for a token again.
    browser.goto(&format!("{url}/ui/runs")).await.unwrap();
    browser
        .find(Locator::Css(".signout button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&browser, "h1", |t| t == "Sign in").await;
    browser
        .goto(&format!("{url}/ui/runs/{slow}"))
        .await
        .unwrap();
    assert_eq!(path_of(&browser).await, "/ui/signin");

    // The admin sees both projects' runs and the administration page.
    sign_in(&browser, &url, &c.admin).await;
    assert_eq!(path_of(&browser).await, format!("/ui/runs/{slow}"));
    browser
        .goto(&format!("{url}/ui/runs/{other}"))
        .await
        .unwrap();
    wait_text(&browser, "#log", |t| t.contains(&secret)).await;
    browser.goto(&format!("{url}/ui/admin")).await.unwrap();
    let admin = wait_text(&browser, "main", |t| t.contains("Tokens")).await;
    assert!(admin.contains(&c.a.0) && admin.contains(&c.b.0), "{admin}");
    assert!(!browser.source().await.unwrap().contains(&c.a.1));
    shoot(&browser, "admin").await;

    // The admin creates a project and a client token for it from the page; the token's
    // secret is shown once, and works.
    let project = unique("from-ui");
    let field = |css: &'static str| browser.find(Locator::Css(css));
    field("#create-project input[name=name]")
        .await
        .unwrap()
        .send_keys(&project)
        .await
        .unwrap();
    field("#create-project input[name=workspace_root]")
        .await
        .unwrap()
        .send_keys("/srv/from-ui")
        .await
        .unwrap();
    field("#create-project button")
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&browser, "#projects", |t| t.contains(&project)).await;
    field("#create-token select[name=project]")
        .await
        .unwrap()
        .select_by_value(&project)
        .await
        .unwrap();
    field("#create-token button")
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let created = wait_text(&browser, "#new-token", |t| !t.trim().is_empty()).await;
    let created = created.trim().to_string();
    shoot(&browser, "token-created").await;
    let projects = c.api(&created, "/api/v1/projects");
    assert_eq!(
        projects.as_array().map(|p| p.len()),
        Some(1),
        "the new client token sees its project only: {projects}"
    );
    assert_eq!(projects[0]["name"], project.as_str());
    assert_eq!(projects[0]["workspace_root"], "/srv/from-ui");
    browser.goto(&format!("{url}/ui/admin")).await.unwrap();
    wait_text(&browser, "#tokens", |t| t.contains("client")).await;
    assert!(
        !browser.source().await.unwrap().contains(&created),
        "the secret is shown once"
    );
    // A bad project is refused with the API's message, naming the field.
    field("#create-project input[name=name]")
        .await
        .unwrap()
        .send_keys("no spaces allowed")
        .await
        .unwrap();
    field("#create-project input[name=workspace_root]")
        .await
        .unwrap()
        .send_keys("relative/root")
        .await
        .unwrap();
    field("#create-project button")
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let refused = wait_text(&browser, "main", |t| t.contains("422")).await;
    assert!(
        refused.contains("name:") && refused.contains("workspace_root:"),
        "{refused}"
    );

    // A narrow window: the run page still fits.
    browser.set_window_size(390, 844).await.unwrap();
    browser
        .goto(&format!("{url}/ui/runs/{changed}"))
        .await
        .unwrap();
    wait_text(&browser, "#diff", |t| t.contains("calc.txt")).await;
    let overflow: Value = browser
        .execute(
            "return document.documentElement.scrollWidth - window.innerWidth;",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        overflow.as_i64().unwrap_or(99) <= 1,
        "the page is wider than a narrow window by {overflow}px"
    );
    shoot(&browser, "run-narrow").await;

    browser.close().await.unwrap();

    // Without a browser: a form without the session's CSRF token is refused and changes nothing.
    let running = c.submit(&c.a, &[], &["sleep", "30"]);
    let (status, _) = c.curl(
        "POST",
        &format!("/ui/runs/{running}/cancel"),
        &format!("berth_session={}", c.a.1),
        Some("csrf=wrong"),
    );
    assert_eq!(status, 403);
    let (status, _) = c.curl(
        "POST",
        &format!("/ui/runs/{running}/cancel"),
        &format!("berth_session={}", c.a.1),
        None,
    );
    assert_eq!(status, 403);
    assert_eq!(
        c.api(&c.a.1, &format!("/api/v1/runs/{running}"))["cancel_requested"],
        false
    );
    // Without JavaScript: the run page carries the log and events so far, escaped, and the
    // live stream (for those with it) goes on after the last of them.
    let printed = c.submit(
        &c.a,
        &[],
        &["sh", "-c", "echo '<b>no-js</b> & more'; echo second >&2"],
    );
    c.wait_run(&c.a.1, &printed, |s| s == "succeeded");
    let (status, page) = c.curl(
        "GET",
        &format!("/ui/runs/{printed}"),
        &format!("berth_session={}", c.a.1),
        None,
    );
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains(r#"<span class="stdout">&lt;b&gt;no-js&lt;/b&gt; &amp; more"#),
        "{page}"
    );
    assert!(page.contains(r#"<span class="stderr">second"#), "{page}");
    assert!(page.contains("this is its whole log"), "{page}");
    assert!(
        page.contains("<td>exited</td>"),
        "the events table is filled: {page}"
    );
    assert!(!page.contains("events?follow=true&amp;after=0\""), "{page}");
    // So are the admin's creation forms: no token, no project made.
    let tokens_before = c.api(&c.admin, "/api/v1/tokens").as_array().map(Vec::len);
    for (path, form) in [
        ("/ui/admin/tokens", "csrf=wrong&role=client&project="),
        ("/ui/admin/tokens", "role=client&project="),
        (
            "/ui/admin/projects",
            "csrf=wrong&name=forged&workspace_root=%2Fsrv%2Fforged",
        ),
    ] {
        let (status, body) = c.curl(
            "POST",
            path,
            &format!("berth_session={}", c.admin),
            Some(form),
        );
        assert_eq!(status, 403, "{path} {form}: {body}");
    }
    assert_eq!(
        c.api(&c.admin, "/api/v1/tokens").as_array().map(Vec::len),
        tokens_before
    );
    assert!(!c
        .api(&c.admin, "/api/v1/projects")
        .to_string()
        .contains("forged"));
    // A client's session cannot create either, even with its own CSRF token (as the server
    // derives it from the session's secret).
    let client_csrf = {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(format!("berth-dashboard-csrf\0{}", c.a.1).as_bytes());
        hex::encode(&digest[..16])
    };
    let (status, body) = c.curl(
        "POST",
        "/ui/admin/tokens",
        &format!("berth_session={}", c.a.1),
        Some(&format!("csrf={client_csrf}&role=client&project=")),
    );
    assert_eq!(status, 403, "{body}");
    assert!(!body.contains("CSRF"), "refused for its role: {body}");
    assert_eq!(
        c.api(&c.admin, "/api/v1/tokens").as_array().map(Vec::len),
        tokens_before
    );
    // The pages forbid inline script.
    let (_, head) = c.curl("GET", "/ui/signin", "", None);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{head}"
    );
}
