//! Header injection end to end: the real binary, the real engine, the test image with this
//! host's curl, fake HTTPS upstreams on 127.0.0.2 with a CA made here. berth's proxy terminates
//! TLS to the injection host with the run's CA and adds the header from berth's environment; the
//! sandbox never holds the value.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;

use support::tls::{https_upstream, upstream_ca};
use support::{containers_of_run, stderr, stdout, Workspace};

const VALUE: &str = "Bearer ghp_HOSTSIDE0123456789abcdef";
const VAR: &str = "BERTH_TEST_GIT_TOKEN";

/// Every file below `dir` (not following links) whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return hits;
    };
    for entry in entries {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        let path = entry.path();
        if kind.is_dir() {
            hits.extend(files_containing(&path, needle));
        } else if kind.is_file() {
            let bytes = std::fs::read(&path).unwrap_or_default();
            if bytes.windows(needle.len()).any(|w| w == needle) {
                hits.push(path.display().to_string());
            }
        }
    }
    hits
}

#[test]
fn the_injected_header_reaches_the_host_and_never_the_sandbox() {
    let ws = Workspace::new();
    let (ca, ca_pem) = upstream_ca();
    let (git, git_seen) = https_upstream(&ca);
    let (other, other_seen) = https_upstream(&ca);
    // berth trusts the fake upstreams' CA through the test override; the sandbox gets a copy
    // in its workspace only to show that a plain tunnel reaches the upstream's own TLS.
    let host_ca = ws.data_path().join("upstream-ca.pem");
    std::fs::write(&host_ca, &ca_pem).unwrap();
    std::fs::write(ws.path().join("upstream-ca.pem"), &ca_pem).unwrap();
    let config = ws.data_path().join("config/berth");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("config.toml"),
        format!(
            "[egress.inject.\"127.0.0.2:{git}\"]\nheader = \"Authorization\"\nenv = \"{VAR}\"\nmethods = [\"GET\", \"POST\"]\npaths = [\"/team/repo.git/\"]\n"
        ),
    )
    .unwrap();
    let script = format!(
        r#"
B=https://127.0.0.2:{git}/team/repo.git
curl -sS -H 'Authorization: Bearer sandbox-guess' $B/info/refs; echo "get=$?"
curl -sS -X POST --data-binary 'PACK0000' $B/git-receive-pack; echo "post=$?"
curl -sS -X DELETE $B/refs; echo "delete=$?"
curl -sS https://127.0.0.2:{git}/other.git/info/refs; echo "other=$?"
curl -sS --cacert /workspace/upstream-ca.pem $B/info/refs >/dev/null 2>&1; echo "mitm=$?"
curl -sS --cacert /workspace/upstream-ca.pem https://127.0.0.2:{other}/plain; echo "tunnel=$?"
echo "vars=$SSL_CERT_FILE $GIT_SSL_CAINFO $REQUESTS_CA_BUNDLE $CURL_CA_BUNDLE $NODE_EXTRA_CA_CERTS"
echo "certs=$(grep -c 'BEGIN CERTIFICATE' /berth/egress/ca.pem) bundle=$(grep -c 'BEGIN CERTIFICATE' /berth/egress/ca-bundle.pem)"
echo "keys=$(cat /berth/egress/* 2>/dev/null | grep -c 'PRIVATE KE[Y]')"
echo "env=$(env | grep -c 'HOSTSID[E]')"
echo "proc=$(cat /proc/[0-9]*/environ 2>/dev/null | grep -c 'HOSTSID[E]')"
echo "cmdline=$(cat /proc/[0-9]*/cmdline 2>/dev/null | grep -c 'HOSTSID[E]')"
echo "files=$(grep -rl 'HOSTSID[E]' /workspace /tmp /berth /etc /home 2>/dev/null | wc -l)"
# Last, as it puts the value into the sandbox's own output: a server that reflects it.
curl -sS $B/echo; echo "echo=$?"
"#
    );
    let out = ws
        .berth(&[
            "run",
            "--image",
            support::tls_image(),
            "--keep",
            "--timeout",
            "60s",
            "--allow-host",
            &format!("127.0.0.2:{other}"),
            "--",
            "sh",
            "-c",
            &script,
        ])
        .env(VAR, VALUE)
        .env("BERTH_EGRESS_UPSTREAM_CA", &host_ca)
        .output()
        .unwrap();
    let (so, se) = (stdout(&out), stderr(&out));
    let (record, id, inspect) = support::inspect_kept_run(&ws);
    assert!(out.status.success(), "stdout: {so}\nstderr: {se}");

    // Allowed requests reached the host with the host's value in place of the sandbox's guess.
    assert!(
        so.contains("ok GET /team/repo.git/info/refs\nget=0"),
        "{so}\n{se}"
    );
    assert!(
        so.contains("ok POST /team/repo.git/git-receive-pack\npost=0"),
        "{so}"
    );
    let heads = git_seen.lock().unwrap().clone();
    assert_eq!(heads.len(), 3, "{heads:?}");
    for head in &heads {
        let auth: Vec<&str> = head
            .lines()
            .filter(|l| l.to_ascii_lowercase().starts_with("authorization:"))
            .collect();
        assert_eq!(auth, [format!("authorization: {VALUE}")], "{head}");
    }
    // A value the upstream reflects is masked in what berth shows.
    assert!(so.contains("upstream saw: ***\necho=0"), "{so}");
    // Requests outside the limits get 403 naming the rule and the limit.
    let rule = format!(
        "berth egress policy: denied: inject authorization into 127.0.0.2:{git} (from {VAR}; GET,POST; /team/repo.git/)"
    );
    assert!(
        so.contains(&format!("{rule}: method DELETE is not one of GET, POST")),
        "{so}"
    );
    assert!(
        so.contains(&format!(
            "{rule}: path /other.git/info/refs is not below /team/repo.git/"
        )),
        "{so}"
    );
    // The injection host is answered by berth's proxy, under the run's CA, not the host's own.
    assert!(!so.contains("mitm=0"), "{so}");
    // Any other host is a plain tunnel: the upstream's own certificate, nothing injected.
    assert!(so.contains("ok GET /plain\ntunnel=0"), "{so}");
    let other_heads = other_seen.lock().unwrap().clone();
    assert_eq!(other_heads.len(), 1);
    assert!(!other_heads[0]
        .to_ascii_lowercase()
        .contains("authorization"));
    assert!(
        so.contains("vars=/berth/egress/ca-bundle.pem /berth/egress/ca-bundle.pem /berth/egress/ca-bundle.pem /berth/egress/ca-bundle.pem /berth/egress/ca.pem"),
        "{so}"
    );
    let certs = so.lines().find(|l| l.starts_with("certs=")).unwrap();
    assert!(certs.starts_with("certs=1 bundle="), "{certs}");
    assert_ne!(
        certs, "certs=1 bundle=1",
        "the bundle holds the host's roots too"
    );
    for probe in ["keys=0", "env=0", "proc=0", "cmdline=0", "files=0"] {
        assert!(so.contains(probe), "{probe}: {so}");
    }

    // Nothing of berth's holds the value, or any private key.
    assert!(inspect.status.success());
    let inspected = String::from_utf8_lossy(&inspect.stdout);
    assert!(
        !inspected.contains("HOSTSIDE"),
        "docker inspect holds the value"
    );
    // The run's io/ holds the sandbox's own raw output, which the reflecting server put the
    // value into at the end; everything berth wrote is checked.
    let run_dir = ws.last_run();
    let sandbox_written = run_dir.join("io").display().to_string();
    let leaks: Vec<String> = files_containing(ws.data_path(), b"HOSTSIDE")
        .into_iter()
        .filter(|p| !p.starts_with(&sandbox_written))
        .collect();
    assert!(leaks.is_empty(), "{leaks:?}");
    assert!(
        files_containing(ws.data_path(), b"PRIVATE KEY").is_empty(),
        "a private key was written under berth's state"
    );
    assert!(files_containing(ws.path(), b"PRIVATE KEY").is_empty());
    let ca = std::fs::read_to_string(run_dir.join("egress/ca.pem")).unwrap();
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));

    // The record names the variable, never the value; every request is an event.
    assert_eq!(record["spec"]["egress"]["inject"][0]["env"], VAR);
    assert_eq!(
        record["spec"]["egress"]["inject"][0]["host"],
        format!("127.0.0.2:{git}")
    );
    assert!(record["spec"]["secrets"].as_array().unwrap().is_empty());
    let events: Vec<serde_json::Value> = std::fs::read_to_string(run_dir.join("events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let inject: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["event"] == "egress" && e["kind"] == "inject")
        .collect();
    let allowed: Vec<_> = inject
        .iter()
        .filter(|e| e["allowed"] == true && e["status"] == 200)
        .collect();
    assert_eq!(allowed.len(), 3, "{inject:?}");
    assert!(allowed.iter().any(|e| e["method"] == "POST"
        && e["path"] == "/team/repo.git/git-receive-pack"
        && e["bytes_out"].as_u64().unwrap() >= 8));
    let denied: Vec<_> = inject.iter().filter(|e| e["allowed"] == false).collect();
    assert_eq!(denied.len(), 2, "{inject:?}");
    assert!(denied.iter().all(|e| e["status"] == 403));
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "connect" && e["port"] == other && e["allowed"] == true),
        "the tunnel is an ordinary connect"
    );
    let show = stdout(&ws.berth(&["show", &id]).output().unwrap());
    assert!(show.contains("egress: policy"), "{show}");
    assert!(containers_of_run(&id).is_empty());
}

#[test]
fn injection_flags_and_files_are_checked_and_explained() {
    let ws = Workspace::new();
    for (args, env, needle) in [
        (
            vec!["--inject-header", "git.example.org"],
            None,
            "--inject-header: `git.example.org`: expected HOST[:PORT]=Header-Name:ENV_VAR",
        ),
        (
            vec!["--inject-header", "git.example.org=Host:T"],
            None,
            "does not inject it",
        ),
        (
            vec!["--inject-header", "git.example.org=Authorization:BERTH_TEST_UNSET_VAR"],
            None,
            "BERTH_TEST_UNSET_VAR, which is not set in berth's environment",
        ),
        (
            vec![
                "--egress",
                "open",
                "--inject-header",
                "git.example.org=Authorization:T",
            ],
            Some(("T", "x")),
            "--inject-header: headers are injected by berth's egress proxy, which egress open does not use",
        ),
    ] {
        let mut cmd = ws.berth(&["run", "--image", support::image()]);
        cmd.args(&args).args(["--", "true"]).env_remove("BERTH_TEST_UNSET_VAR");
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(125), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
    // A workspace berth.toml that the user has not trusted cannot send a host variable out.
    std::fs::write(
        ws.path().join("berth.toml"),
        "[egress.inject.\"evil.example\"]\nheader = \"X-Leak\"\nenv = \"HOME\"\n",
    )
    .unwrap();
    let out = ws.run(&[], &["true"]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("egress.inject.\"evil.example\""),
        "{}",
        stderr(&out)
    );
}
