//! Remote engines for real: an sshd on loopback as the remote host (Debian's openssh-server,
//! started unprivileged by the test with its own host key and authorized_keys), and a
//! TLS-terminating stunnel in front of this machine's Docker socket with certificates made by
//! openssl here. Runs go end to end through the real binary; every diagnosis is provoked.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::ssh::*;
use support::*;

/// A workspace whose berth.toml names engines, with ssh's known hosts kept in the test's dir.
fn workspace_with(engines: &str) -> Workspace {
    let ws = Workspace::new();
    std::fs::write(ws.path().join("berth.toml"), engines).unwrap();
    // Engines widen what a run may do: the file applies once trusted.
    let o = ws.berth(&["trust"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    ws
}

fn doctor(ws: &Workspace, engine: &str) -> serde_json::Value {
    let out = ws
        .berth(&["doctor", "--json", "--engine", engine])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("doctor --json: {} {}", stdout(&out), stderr(&out)));
    println!("doctor --engine {engine}: {report}");
    report
}

/// No ssh process of this test's forwards is left: their sockets live in berth-ssh-* dirs.
fn assert_no_tunnel_left(port: u16) {
    let out = Command::new("pgrep")
        .args(["-f", &format!("-p {port} ")])
        .output()
        .unwrap();
    let pids = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // sshd itself is started with -f, not -p; only ssh clients carry `-p PORT`.
    assert!(
        pids.is_empty(),
        "ssh processes left for port {port}: {pids}"
    );
}

fn run_id_of(ws: &Workspace) -> String {
    ws.last_record()["id"].as_str().unwrap().to_string()
}

/// A private directory with a client key (`id_client`) and an sshd that accepts it, with
/// `extra` lines in its configuration.
fn sshd_in_dir(extra: &str) -> (tempfile::TempDir, PathBuf, Sshd) {
    let dir = tempfile::Builder::new()
        .prefix("berth-sshd-")
        .tempdir()
        .unwrap();
    let key = dir.path().join("id_client");
    keygen(&key);
    let sshd = start_sshd_with(dir.path(), &key, extra);
    (dir, key, sshd)
}

#[test]
fn ssh_engine_runs_end_to_end_and_names_each_failure() {
    let (dir, key, sshd) = sshd_in_dir("");
    let known_hosts = dir.path().join("known_hosts");
    let wrong_key = dir.path().join("id_other");
    keygen(&wrong_key);
    // Refuses connections for the whole test (a port merely free a moment ago may not).
    let closed = ClosedPort::bind();
    let unused_port = closed.port;
    let config = [
        ssh_engine("box", sshd.port, &key, &known_hosts, ""),
        ssh_engine("wrongkey", sshd.port, &wrong_key, &known_hosts, ""),
        ssh_engine("wrongport", unused_port, &key, &known_hosts, ""),
        ssh_engine(
            "nodocker",
            sshd.port,
            &key,
            &known_hosts,
            "remote_socket = \"/nonexistent/docker.sock\"",
        ),
    ]
    .concat();
    let ws = workspace_with(&config);

    // Doctor: ok through the tunnel, with the remote engine's facts.
    let ok = doctor(&ws, "box");
    assert_eq!(ok["diagnosis"], "ok", "{ok}");
    assert_eq!(
        ok["engine"]["endpoint"],
        format!("ssh://{}@127.0.0.1:{}", current_user(), sshd.port)
    );

    // A run: output, exit status, $BERTH_OUT and an artifact come back; the container is gone.
    let out = ws.run(
        &["--engine", "box", "--workspace-mode", "none", "--artifact", "/tmp/made.txt"],
        &[
            "sh",
            "-c",
            "echo out-line; echo err-line >&2; echo result > $BERTH_OUT/r.txt; echo made > /tmp/made.txt; exit 7",
        ],
    );
    println!("stdout: {}\nstderr: {}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(stdout(&out).contains("out-line"));
    assert!(stderr(&out).contains("err-line"));
    let run = ws.last_run();
    assert_eq!(
        std::fs::read_to_string(run.join("stdout.log")).unwrap(),
        "out-line\n"
    );
    assert_eq!(
        std::fs::read_to_string(run.join("artifacts/berth/out/r.txt")).unwrap(),
        "result\n"
    );
    assert_eq!(
        std::fs::read_to_string(run.join("artifacts/tmp/made.txt")).unwrap(),
        "made\n"
    );
    let record = ws.last_record();
    assert_eq!(record["state"], "failed");
    assert_eq!(record["exit_code"], 7);
    assert!(containers_of_run(&run_id_of(&ws)).is_empty());

    // A read-only root works too: the shim arrives on the volume, not the root file system.
    let out = ws.run(
        &["--engine", "box", "--workspace-mode", "none", "--read-only"],
        &["sh", "-c", "echo ro-ok > $BERTH_OUT/ro.txt; echo ro-ok"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("ro-ok"));
    assert!(ws.last_run().join("artifacts/berth/out/ro.txt").exists());
    assert!(containers_of_run(&run_id_of(&ws)).is_empty());

    // The workspace cannot be mounted on a remote engine: refused before anything starts.
    let out = ws.run(&["--engine", "box"], &["true"]);
    assert_eq!(out.status.code(), Some(125));
    let err = stderr(&out);
    assert!(
        err.contains("--workspace-mode rw: a remote engine cannot mount this host's workspace; use --workspace-mode copy")
            && err.contains("hint:"),
        "{err}"
    );

    // Held containers are local only: a persistent one is refused before anything starts.
    let out = ws.run(
        &[
            "--engine",
            "box",
            "--workspace-mode",
            "none",
            "--name",
            "keeper",
        ],
        &["true"],
    );
    assert_eq!(out.status.code(), Some(125));
    let err = stderr(&out);
    assert!(
        err.contains("persistent containers are not supported on a remote engine")
            && err.contains("hint:"),
        "{err}"
    );

    // Every failure is one named diagnosis.
    let d = doctor(&ws, "wrongport");
    assert_eq!(d["diagnosis"], "engine_unreachable", "{d}");
    assert!(
        d["message"]
            .as_str()
            .unwrap()
            .contains("Connection refused"),
        "{d}"
    );
    let d = doctor(&ws, "wrongkey");
    assert_eq!(d["diagnosis"], "ssh_auth_refused", "{d}");
    assert!(
        d["message"].as_str().unwrap().contains("Permission denied"),
        "{d}"
    );
    let d = doctor(&ws, "nodocker");
    assert_eq!(d["diagnosis"], "remote_no_docker", "{d}");
    assert!(
        d["message"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/docker.sock"),
        "{d}"
    );
    assert!(d["hint"].as_str().unwrap().contains("remote_socket"), "{d}");

    // `berth run` on an unusable remote engine ends in `error` with the same diagnosis.
    let out = ws.run(
        &["--engine", "wrongkey", "--workspace-mode", "none"],
        &["true"],
    );
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("ssh authentication"),
        "{}",
        stderr(&out)
    );

    // An unknown name lists the known ones, with a hint.
    let out = ws.berth(&["doctor", "--engine", "nope"]).output().unwrap();
    let err = stderr(&out);
    assert!(
        err.contains(
            "no engine named `nope`; configured engines: box, nodocker, wrongkey, wrongport"
        ) && err.contains("hint:"),
        "{err}"
    );

    // No ssh is left behind, and no private socket directory either.
    std::thread::sleep(Duration::from_millis(200));
    for port in [sshd.port, unused_port] {
        assert_no_tunnel_left(port);
    }
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Self {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        let p = |f: &str| d.join(f).display().to_string();
        sh(
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN={name} CA"),
                "-keyout",
                &p("ca-key.pem"),
                "-out",
                &p("ca.pem"),
            ],
        );
        for (who, ext) in [
            (
                "server",
                "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
            ),
            ("client", "extendedKeyUsage=clientAuth\n"),
        ] {
            std::fs::write(d.join(format!("{who}.ext")), ext).unwrap();
            sh(
                "openssl",
                &[
                    "req",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-subj",
                    &format!("/CN={who}"),
                    "-keyout",
                    &p(&format!("{who}-key.pem")),
                    "-out",
                    &p(&format!("{who}.csr")),
                ],
            );
            sh(
                "openssl",
                &[
                    "x509",
                    "-req",
                    "-in",
                    &p(&format!("{who}.csr")),
                    "-CA",
                    &p("ca.pem"),
                    "-CAkey",
                    &p("ca-key.pem"),
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-extfile",
                    &p(&format!("{who}.ext")),
                    "-out",
                    &p(&format!("{who}.pem")),
                ],
            );
        }
        Self { dir: d }
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

/// stunnel terminating TLS (client certificates required, signed by the CA) in front of the
/// local Docker socket. (socat cannot serve resumed sessions with client verification.)
fn start_tls_proxy(pki: &Pki, dir: &Path) -> (Daemon, u16) {
    let config = dir.join("stunnel.conf");
    let log = dir.join("stunnel.log");
    // `debug = info` makes stunnel log "bound to" once it listens.
    start_on_free_port(
        "stunnel",
        &log,
        |port| format!("bound to 127.0.0.1:{port}"),
        |port| {
            std::fs::write(
                &config,
                format!(
                    "foreground = yes\npid =\ndebug = info\n[docker]\naccept = 127.0.0.1:{port}\nconnect = /var/run/docker.sock\ncert = {}\nkey = {}\nCAfile = {}\nverifyChain = yes\nrequireCert = yes\n",
                    pki.file("server.pem"),
                    pki.file("server-key.pem"),
                    pki.file("ca.pem")
                ),
            )
            .unwrap();
            Command::new("stunnel")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("stunnel (Debian's stunnel4) is needed for these tests")
        },
    )
}

#[test]
fn tls_engine_runs_end_to_end_and_names_each_failure() {
    let dir = tempfile::Builder::new()
        .prefix("berth-tls-")
        .tempdir()
        .unwrap();
    let pki = Pki::new(dir.path(), "good");
    let other = Pki::new(dir.path(), "other");
    let (_proxy, port) = start_tls_proxy(&pki, dir.path());
    let closed = ClosedPort::bind();
    let unused = closed.port;
    let engine = |name: &str, port: u16, ca: &str, client: Option<(&str, &str)>| {
        let mut t = format!("[engines.{name}]\nhost = \"tcp://127.0.0.1:{port}\"\nca = \"{ca}\"\n");
        if let Some((c, k)) = client {
            t.push_str(&format!("cert = \"{c}\"\nkey = \"{k}\"\n"));
        }
        t
    };
    let good_client = Some((pki.file("client.pem"), pki.file("client-key.pem")));
    let good_client = good_client.as_ref().map(|(c, k)| (c.as_str(), k.as_str()));
    let config = [
        engine("tls", port, &pki.file("ca.pem"), good_client),
        engine("wrongca", port, &other.file("ca.pem"), good_client),
        engine("nocert", port, &pki.file("ca.pem"), None),
        engine(
            "foreigncert",
            port,
            &pki.file("ca.pem"),
            Some((&other.file("client.pem"), &other.file("client-key.pem"))),
        ),
        engine("wrongport", unused, &pki.file("ca.pem"), good_client),
        "[engines.plain]\nhost = \"tcp://127.0.0.1:1\"\ninsecure_plain_tcp = true\n".to_string(),
    ]
    .concat();
    let ws = workspace_with(&config);

    let ok = doctor(&ws, "tls");
    assert_eq!(ok["diagnosis"], "ok", "{ok}");
    let out = ws.run(
        &["--engine", "tls", "--workspace-mode", "none"],
        &[
            "sh",
            "-c",
            "echo over-tls; echo t > $BERTH_OUT/t.txt; exit 3",
        ],
    );
    println!("stdout: {}\nstderr: {}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stdout(&out).contains("over-tls"));
    assert!(ws.last_run().join("artifacts/berth/out/t.txt").exists());
    assert!(containers_of_run(&run_id_of(&ws)).is_empty());

    let d = doctor(&ws, "wrongca");
    assert_eq!(d["diagnosis"], "tls_certificate_rejected", "{d}");
    assert!(
        d["message"]
            .as_str()
            .unwrap()
            .starts_with("TLS certificate rejected"),
        "{d}"
    );
    for name in ["nocert", "foreigncert"] {
        let d = doctor(&ws, name);
        assert_eq!(
            d["diagnosis"], "tls_client_certificate_refused",
            "{name}: {d}"
        );
    }
    let d = doctor(&ws, "wrongport");
    assert_eq!(d["diagnosis"], "engine_unreachable", "{d}");

    // Plain TCP is refused unless asked for, and then warned about.
    let out = ws
        .berth(&["doctor", "--engine", &format!("tcp://127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("plain TCP without TLS"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("--engine-insecure"),
        "{}",
        stderr(&out)
    );
    let out = ws.berth(&["doctor", "--engine", "plain"]).output().unwrap();
    assert!(stderr(&out).contains("warning"), "{}", stderr(&out));

    // A missing CA file is named.
    let out = ws
        .berth(&[
            "doctor",
            "--json",
            "--engine",
            &format!("tcp://127.0.0.1:{port}"),
        ])
        .env("DOCKER_TLS_VERIFY", "1")
        .env("DOCKER_CERT_PATH", dir.path().join("absent"))
        .output()
        .unwrap();
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(d["diagnosis"], "engine_file_unusable", "{d}");
    assert!(
        d["message"].as_str().unwrap().contains("absent/ca.pem"),
        "{d}"
    );

    // DOCKER_TLS_VERIFY with DOCKER_CERT_PATH, as the docker CLI reads them.
    let certs = dir.path().join("docker-certs");
    std::fs::create_dir(&certs).unwrap();
    for (from, to) in [
        ("ca.pem", "ca.pem"),
        ("client.pem", "cert.pem"),
        ("client-key.pem", "key.pem"),
    ] {
        std::fs::copy(pki.dir.join(from), certs.join(to)).unwrap();
    }
    let out = ws
        .berth(&["doctor", "--json"])
        .env("DOCKER_HOST", format!("tcp://127.0.0.1:{port}"))
        .env("DOCKER_TLS_VERIFY", "1")
        .env("DOCKER_CERT_PATH", &certs)
        .output()
        .unwrap();
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(d["diagnosis"], "ok", "{d}");
}

/// A fake HTTP upstream on 127.0.0.2 that answers every request with `hello-over-ssh`, and
/// counts them.
fn hello_upstream() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, Write};
    let listener = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = served.clone();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                line.clear();
            }
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let body = "hello-over-ssh\n";
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, served)
}

/// Entries of the sshd sessions' TMPDIR, where the forwards' directories are made.
fn remote_dirs(tmp: &Path) -> Vec<String> {
    std::fs::read_dir(tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// No ssh process carries sockets into `tmp` any more.
fn assert_no_forward_left(tmp: &Path) {
    let out = Command::new("pgrep")
        .args(["-f", &format!("{}/berth-egress", tmp.display())])
        .output()
        .unwrap();
    let pids = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(pids.is_empty(), "egress forwards left: {pids}");
}

/// Egress policy on an ssh engine: the proxy's sockets travel to the engine's host by `ssh -R`
/// into a private directory there (the sshd gives its sessions their own TMPDIR, so the test
/// can watch it), the sandbox reaches the allowed host through them and is refused the rest,
/// every decision is recorded, and the directory and the forward are gone after the run, also
/// when berth is killed. A tcp:// engine refuses egress policy with a hint.
#[test]
fn ssh_engine_carries_the_egress_proxy_and_tcp_refuses_it() {
    // The sshd's sessions get a TMPDIR of the test's, made before the first session.
    let remote_tmp_name = tempfile::Builder::new()
        .prefix("berth-rtmp-")
        .tempdir()
        .unwrap();
    let remote_tmp = remote_tmp_name.path().to_path_buf();
    let (dir, key, sshd) = sshd_in_dir(&format!("SetEnv TMPDIR={}\n", remote_tmp.display()));
    let known_hosts = dir.path().join("known_hosts");
    let config = [
        ssh_engine("box", sshd.port, &key, &known_hosts, ""),
        "[engines.plain]\nhost = \"tcp://127.0.0.1:1\"\ninsecure_plain_tcp = true\n".to_string(),
    ]
    .concat();
    let ws = workspace_with(&config);
    let (port, served) = hello_upstream();
    let allowed = format!("127.0.0.2:{port}");
    let script = format!(
        r#"
wget -q -O - http://{allowed}/hello; echo "allowed=$?"
wget -q -O - http://denied.example/ ; echo "denied=$?"
{{ printf 'GET http://denied.example/x HTTP/1.0\r\n\r\n'; sleep 2; }} | nc 127.0.0.1 41080
grep ' /berth/egress ' /proc/self/mountinfo
ls /sys/class/net
"#
    );
    let out = ws.run(
        &[
            "--engine",
            "box",
            "--workspace-mode",
            "none",
            "--allow-host",
            &allowed,
        ],
        &["sh", "-c", &script],
    );
    let (so, se) = (stdout(&out), stderr(&out));
    println!("stdout: {so}\nstderr: {se}");
    assert_eq!(out.status.code(), Some(0), "{se}");
    assert!(so.contains("hello-over-ssh\nallowed=0"), "{so}");
    assert!(!so.contains("denied=0"), "{so}");
    assert!(so.contains("HTTP/1.0 403 Forbidden"), "{so}");
    assert!(so.contains("--allow-host denied.example:80"), "{so}");
    // The sandbox's sockets are the forward's, in the directory on the engine's host.
    assert!(
        so.lines().any(|l| l.contains(" /berth/egress ")
            && l.contains("berth-rtmp-")
            && l.contains("/berth-egress.")),
        "{so}"
    );
    assert_eq!(so.lines().last(), Some("lo"), "only loopback: {so}");
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 1);
    let events: Vec<serde_json::Value> =
        std::fs::read_to_string(ws.last_run().join("events.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|e: &serde_json::Value| e["event"] == "egress")
            .collect();
    let allowed_events: Vec<_> = events.iter().filter(|e| e["allowed"] == true).collect();
    assert_eq!(allowed_events.len(), 1, "{events:?}");
    assert_eq!(allowed_events[0]["rule"], allowed.as_str());
    let denied: Vec<_> = events.iter().filter(|e| e["allowed"] == false).collect();
    assert_eq!(denied.len(), 2, "{events:?}");
    assert!(denied.iter().all(|e| e["host"] == "denied.example"));
    let record = ws.last_record();
    assert_eq!(record["egress"]["allowed"], 1);
    assert_eq!(record["egress"]["denied"], 2);
    assert!(containers_of_run(&run_id_of(&ws)).is_empty());
    // After the run: no remote directory, no forward.
    assert!(
        remote_dirs(&remote_tmp).is_empty(),
        "{:?}",
        remote_dirs(&remote_tmp)
    );
    assert_no_forward_left(&remote_tmp);

    // berth killed mid-run: the kernel ends its ssh, and the directory goes with the session.
    // The temporary files a killed berth cannot remove go to a directory of this test's.
    let killed_tmp = tempfile::Builder::new()
        .prefix("bt")
        .tempdir_in("/tmp")
        .unwrap();
    let mut child = ws
        .berth(&[
            "run",
            "--image",
            image(),
            "--engine",
            "box",
            "--workspace-mode",
            "none",
            "--allow-host",
            &allowed,
            "--",
            "sleep",
            "60",
        ])
        .env("TMPDIR", killed_tmp.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while remote_dirs(&remote_tmp).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no forward made"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    child.kill().unwrap();
    child.wait().unwrap();
    // Its link for ssh's -R was made in TMPDIR (removed with `killed_tmp`), never in /tmp.
    let left: Vec<String> = std::fs::read_dir(killed_tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        left.iter().any(|n| n.starts_with("berth-egress-")),
        "{left:?}"
    );
    let id = run_id_of(&ws);
    let started = std::time::Instant::now();
    while !remote_dirs(&remote_tmp).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the remote directory outlived berth: {:?}",
            remote_dirs(&remote_tmp)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_no_forward_left(&remote_tmp);
    for container in containers_of_run(&id) {
        force_remove(&container);
    }

    // tcp:// cannot carry the sockets: refused before anything starts, never opened up.
    let out = ws.run(
        &[
            "--engine",
            "plain",
            "--workspace-mode",
            "none",
            "--allow-host",
            "example.org",
        ],
        &["true"],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains("egress policy needs an ssh:// engine when the engine is remote")
            && err.contains("hint: reach the engine through ssh"),
        "{err}"
    );
    assert_no_tunnel_left(sshd.port);
}
