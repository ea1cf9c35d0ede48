#!/usr/bin/env python3
"""Benchmark: the coordinator (`berth server`) on SQLite and on PostgreSQL.

Usage: python3 bench/coordinator.py [--json] [--stores sqlite,postgres] [--only a,b,c,d,e]
                                    [--runs N] [--runners K] [--latency-runs M] [--follow-runs R]
                                    [--depths 1000,10000,100000] [--depth-claims N]
                                    [--cross-runs N] [--cross-cancels N]
                                    [--image IMG] [--berth PATH] [--pg-bin DIR]

For each store the benchmark starts its own `berth server` (release binary) on a free port with a
temporary state directory; for PostgreSQL it first creates a throwaway cluster (initdb + pg_ctl as
the `postgres` OS user, default durability settings, trust auth on 127.0.0.1 only), which is
stopped and removed at the end whatever happens. Then, against the HTTP API:

  (a) claim throughput, synthetic runners, no containers. N runs are submitted first (timed on
      its own), then K runner threads, each registered under its own name and holding one
      keep-alive connection, claim with wait_ms=0 in a loop:
        claim+finish  each claimed run is finished (succeeded) at once;  claims/s = N / wall
        claim only    a second batch of N runs is only claimed; finishing them is timed after
      Every run must be claimed exactly once and end `succeeded`.        target >= 500 claims/s
      CPU seconds of the server, PostgreSQL and this process are read from /proc around each
      phase, to show where the time goes.
  (b) submit -> claimed latency: one runner thread long-polls (wait_ms=20000); the main thread
      submits one run at a time, ~20 ms apart; latency = arrival of the claim response in the
      runner thread - the moment just before the submit request was sent.  target p50 <= 20 ms
  (c) submit -> first output through server and a real `berth runner` (Docker), i.e. from
      spawning `berth submit --follow` to the line `ready` on its stdout, against
      `berth run --workspace-mode none` for the same command; medians of R interleaved runs
      after one warm-up round. The run's own timestamps (queued, claimed, container created,
      started, stdout line seen by the runner; for `berth run` its events.jsonl) are reported as
      milliseconds after the spawn.                                         reported, no target
  (d) claim cost by queue depth: the queue of one project is filled to each depth in turn
      (default 1,000, 10,000, 100,000 queued runs, submitted through the API from 8 threads),
      then one synthetic runner claims and finishes M runs (default 200) with wait_ms=0;
      claim request p50 / p99 at each depth.                          target p50 <= 2 ms
  (e) PostgreSQL only: a second `berth server` on the same database. A runner thread
      long-polls server 2 while runs are submitted through server 1 (submit -> claimed), and a
      runner holding a lease keeps a heartbeat open on server 2 while the run is cancelled
      through server 1 (cancel -> the heartbeat answers with the cancel).  target p50 <= 20 ms

Exits 0 when every step worked (even if a target is missed), non-zero on any error: a failed
request, a run claimed twice or never, a run not `succeeded`, a container left behind.
Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import platform
import queue
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PG_BIN_DEFAULT = Path("/usr/lib/postgresql/15/bin")
HTTP_TIMEOUT = 60.0  # seconds for one ordinary request
PHASE_TIMEOUT = 300.0  # seconds for one whole phase
RUN_TIMEOUT = 120.0  # seconds for one `berth submit --follow` or `berth run`
CLAIMS_TARGET = 500.0  # claims/s
LATENCY_P50_TARGET = 0.020  # s
DEPTH_P50_TARGET = 0.002  # s
COMMAND = ["sh", "-c", "echo ready"]


class BenchError(Exception):
    pass


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], p: float) -> float:
    """Linear interpolation between closest ranks, p in [0, 100]."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def parse_ts(text: str) -> float:
    """An RFC 3339 UTC timestamp (`...T12:34:56.789Z`, any number of fraction digits) -> epoch s."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(?:Z|\+00:00)", text)
    if not m:
        raise ValueError(f"not an RFC 3339 UTC timestamp: {text!r}")
    whole = datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc)
    return whole.timestamp() + (float("0." + m.group(2)) if m.group(2) else 0.0)


def tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + l for l in text[-lines:])


# -- HTTP ---------------------------------------------------------------------


class Api:
    """One keep-alive HTTP/1.1 connection with a bearer token. Not shared between threads."""

    def __init__(self, port: int, token: str, timeout: float = HTTP_TIMEOUT):
        self.port = port
        self.token = token
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            self.conn.connect()
            self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self.conn

    def request(self, method: str, path: str, body=None, ok=(200, 201, 204)) -> tuple[int, object]:
        headers = {"Authorization": f"Bearer {self.token}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn = self._connect()
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException) as e:
            self.close()
            raise BenchError(f"{method} {path}: {type(e).__name__}: {e}") from None
        if resp.will_close:
            self.close()
        if resp.status not in ok:
            raise BenchError(f"{method} {path}: HTTP {resp.status}: {raw[:500].decode(errors='replace')}")
        if not raw:
            return resp.status, None
        ctype = resp.getheader("Content-Type", "")
        return resp.status, json.loads(raw) if "json" in ctype else raw.decode(errors="replace")

    def post(self, path: str, body=None, ok=(200, 201, 204)):
        return self.request("POST", path, body if body is not None else {}, ok)

    def get(self, path: str, ok=(200,)):
        return self.request("GET", path, None, ok)

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except OSError:
                pass
            self.conn = None


def run_threads(targets: list, timeout: float, what: str, started: threading.Barrier | None = None,
                meter: "CpuMeter | None" = None) -> float:
    """Runs the callables in threads; if `started` is given, the clock starts when every thread
    has reached it (they pass it themselves, after their own setup). Returns the wall time from
    the start to the last thread's end; re-raises the first error."""
    errors: list[BaseException] = []

    def wrap(fn):
        def inner():
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)
                if started is not None:
                    started.abort()
        return inner

    threads = [threading.Thread(target=wrap(fn), daemon=True) for fn in targets]
    for t in threads:
        t.start()
    if started is not None:
        try:
            started.wait(timeout=60)
        except threading.BrokenBarrierError:
            pass
    t0 = time.perf_counter()
    if meter is not None:
        meter.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    wall = time.perf_counter() - t0
    if meter is not None:
        meter.stop()
    if any(t.is_alive() for t in threads):
        raise BenchError(f"{what}: threads still busy after {timeout:.0f} s")
    real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
    if real or errors:
        raise (real or errors)[0]
    return wall


# -- CPU accounting -----------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


class CpuMeter:
    """CPU seconds spent during a phase by the server, this benchmark process (the synthetic
    clients) and PostgreSQL (postmaster and its children), to see where time goes."""

    def __init__(self, server_pid: int, pg_pid: int | None):
        self.server_pid = server_pid
        self.pg_pid = pg_pid
        self.result: dict[str, float] = {}

    def _pg(self) -> dict[int, float]:
        if self.pg_pid is None:
            return {}
        return {p: proc_cpu(p) for p in [self.pg_pid, *children(self.pg_pid)]}

    def start(self) -> None:
        self.t0 = time.perf_counter()
        self.server0 = proc_cpu(self.server_pid)
        self.self0 = sum(os.times()[:2])
        self.pg0 = self._pg()

    def stop(self) -> None:
        wall = time.perf_counter() - self.t0
        pg1 = self._pg()
        self.result = dict(
            wall=wall,
            server=proc_cpu(self.server_pid) - self.server0,
            client=sum(os.times()[:2]) - self.self0,
        )
        if self.pg_pid is not None:
            self.result["postgres"] = sum(v - self.pg0.get(p, 0.0) for p, v in pg1.items())


# -- processes ------------------------------------------------------------------


class Proc:
    """A long-running child process with its output in a log file."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict | None = None):
        self.name = name
        self.log = log
        self.log_file = open(log, "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log_file,
                                     stderr=subprocess.STDOUT, env=env)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float = 15.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                progress(f"{self.name} did not stop within {grace:.0f} s of SIGTERM; killing it")
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()


class PgCluster:
    """A throwaway PostgreSQL cluster owned by the `postgres` OS user."""

    def __init__(self, bin_dir: Path, tmp: Path):
        self.bin = bin_dir
        self.dir = Path(tempfile.mkdtemp(prefix="berth-bench-pg-", dir=tmp))
        self.data = self.dir / "data"
        self.port = free_port()
        self.started = False
        shutil.chown(self.dir, "postgres", "postgres")
        os.chmod(self.dir, 0o700)

    def _as_postgres(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = ["runuser", "-u", "postgres", "--", *argv]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.dir)
        if r.returncode != 0:
            raise BenchError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
        return r

    def start(self) -> str:
        self._as_postgres(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                          "-A", "trust", "-E", "UTF8", "--no-sync")
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir}"
        self.started = True
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "server.log"),
                          "-o", opts, "-w", "-t", "60", "start")
        self._as_postgres(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "berth")
        return f"postgres://postgres@127.0.0.1:{self.port}/berth"

    def settings(self) -> dict:
        r = self._as_postgres(str(self.bin / "psql") if (self.bin / "psql").exists() else "psql",
                              "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-At", "-c",
                              "select name||'='||current_setting(name) from pg_settings where name in "
                              "('server_version','fsync','synchronous_commit','shared_buffers','max_connections')")
        return dict(l.split("=", 1) for l in r.stdout.splitlines() if "=" in l)

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop_and_remove(self) -> None:
        try:
            if self.started:
                self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


# -- the benchmark ----------------------------------------------------------------


class StoreBench:
    """One server on one store, and the workloads run against it."""

    def __init__(self, args, store: str, tmp: Path, token: str, image: str | None):
        self.args = args
        self.store = store
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{store}-", dir=tmp))
        os.chmod(self.tmp, 0o755)  # the postgres user reaches its cluster directory inside
        self.token = token
        self.image = image
        self.pg: PgCluster | None = None
        self.server: Proc | None = None
        self.peer: Proc | None = None  # (e): a second server on the same PostgreSQL database
        self.runner: Proc | None = None
        self.db: str | None = None
        self.port = 0
        self.meta: dict = {}
        self.env = dict(os.environ)
        self.env["BERTH_CONFIG"] = str(self.tmp / "no-such-config.toml")
        for k in ("BERTH_STATE_DIR", "BERTH_LOG", "BERTH_SERVER", "BERTH_TOKEN"):
            self.env.pop(k, None)

    # setup / teardown

    def start(self) -> None:
        db = None
        if self.store == "postgres":
            self.pg = PgCluster(self.args.pg_bin, self.tmp)
            db = self.pg.start()
            try:
                self.meta["postgres"] = self.pg.settings()
            except BenchError:
                pass
        self.db = db
        state = self.tmp / "server-state"
        self.server, self.port = self.start_server("berth server", state)
        admin_token = (state / "admin-token").read_text().strip()
        self.admin = Api(self.port, admin_token)
        self.workspace = self.tmp / "workspace"
        self.workspace.mkdir()
        os.chmod(self.workspace, 0o777)
        for project in ("bench-a1", "bench-a2", "bench-b", "bench-c", "bench-d", "bench-e"):
            self.admin.post("/api/v1/projects", {"name": project, "workspace_root": str(self.workspace)})
        _, t = self.admin.post("/api/v1/tokens", {"role": "client"})
        self.client_token = t["token"]
        _, t = self.admin.post("/api/v1/tokens", {"role": "runner"})
        self.runner_token = t["token"]

    def start_server(self, name: str, state: Path) -> tuple[Proc, int]:
        """`berth server` on this store's database with its own state directory, once healthy."""
        port = free_port()
        argv = [str(self.args.berth), "server", "--listen", f"127.0.0.1:{port}", "--state-dir", str(state)]
        if self.db:
            argv += ["--db", self.db]
        server = Proc(name, argv, self.tmp / f"{name.replace(' ', '-')}.log", env=self.env)
        deadline = time.monotonic() + 60
        while True:
            if not server.alive():
                raise BenchError(f"{name} exited with {server.proc.returncode}:\n{tail(server.log)}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/healthz")
                if c.getresponse().status == 200:
                    c.close()
                    break
                c.close()
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"{name} did not answer /healthz within 60 s:\n{tail(server.log)}")
            time.sleep(0.05)
        return server, port

    def stop(self) -> list[str]:
        """Stops everything this store started; returns errors (cleanup goes on regardless)."""
        problems = []
        for p in (self.runner, self.peer, self.server):
            if p is not None:
                try:
                    p.stop()
                except Exception as e:  # noqa: BLE001
                    problems.append(f"stopping {p.name}: {e}")
        if self.pg is not None:
            try:
                self.pg.stop_and_remove()
            except Exception as e:  # noqa: BLE001
                problems.append(f"stopping PostgreSQL: {e}")
        return problems

    # helpers

    def meter(self) -> CpuMeter:
        return CpuMeter(self.server.proc.pid, self.pg.postmaster_pid() if self.pg else None)

    def submit_body(self, project: str) -> dict:
        return {"project": project, "sandbox": {"image": self.image or "berth-bench:none", "command": ["true"]}}

    def register(self, api: Api, name: str) -> str:
        _, r = api.post("/api/v1/runners/register", {"name": name})
        return r["runner_id"]

    def submit_many(self, project: str, n: int, threads: int) -> tuple[list[str], float]:
        ids: list[str] = []
        lock = threading.Lock()
        counter = iter(range(n))
        body = self.submit_body(project)

        def worker():
            api = Api(self.port, self.client_token)
            api.get("/healthz")
            mine = []
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    break
                _, run = api.post("/api/v1/runs", body)
                mine.append(run["id"])
            api.close()
            with lock:
                ids.extend(mine)

        wall = run_threads([worker] * threads, PHASE_TIMEOUT, "submitting")
        if len(ids) != n or len(set(ids)) != n:
            raise BenchError(f"submitted {n} runs but got {len(ids)} ids ({len(set(ids))} distinct)")
        return ids, wall

    def project_states(self, project: str) -> dict[str, str]:
        """run id -> state for every run of the project."""
        api = Api(self.port, self.client_token)
        states: dict[str, str] = {}
        after = None
        while True:
            path = f"/api/v1/runs?project={project}&limit=500" + (f"&after={after}" if after else "")
            _, page = api.get(path)
            for r in page["runs"]:
                states[r["id"]] = r["state"]
            after = page.get("next")
            if not after:
                break
        api.close()
        return states

    def verify(self, project: str, submitted: list[str], claimed: list[str]) -> None:
        dup = len(claimed) - len(set(claimed))
        if dup:
            raise BenchError(f"{self.store}/{project}: {dup} runs were claimed more than once")
        if set(claimed) != set(submitted):
            missing = set(submitted) - set(claimed)
            extra = set(claimed) - set(submitted)
            raise BenchError(f"{self.store}/{project}: {len(missing)} submitted runs never claimed, "
                             f"{len(extra)} claimed runs not submitted here")
        states = self.project_states(project)
        bad = {i: s for i, s in states.items() if s != "succeeded"}
        if set(states) != set(submitted) or bad:
            raise BenchError(f"{self.store}/{project}: {len(states)} runs listed for {len(submitted)} submitted; "
                             f"not succeeded: {dict(list(bad.items())[:5])}")

    # (a) claim throughput

    def claim_round(self, project: str, n: int, k: int, finish_now: bool, tag: str) -> dict:
        submitted, submit_wall = self.submit_many(project, n, k)
        claimed: list[tuple[str, str]] = []
        claim_lat: list[float] = []
        finish_lat: list[float] = []
        count = [0, 0]  # runs claimed so far, empty polls before the end
        lock = threading.Lock()
        barrier = threading.Barrier(k + 1)

        def runner(i: int):
            api = Api(self.port, self.runner_token)
            rid = self.register(api, f"synthetic-{self.token}-{tag}-{i}")
            path = f"/api/v1/runners/{rid}/claim"
            mine, cl, fl = [], [], []
            barrier.wait(timeout=60)
            deadline = time.monotonic() + PHASE_TIMEOUT
            while True:
                if time.monotonic() > deadline:
                    raise BenchError(f"{self.store}: claiming took longer than {PHASE_TIMEOUT:.0f} s")
                t0 = time.perf_counter()
                status, body = api.post(path, {"wait_ms": 0})
                cl.append(time.perf_counter() - t0)
                if status == 204:
                    # Nothing claimable. Done once all N are claimed; before that another runner
                    # may merely hold the last rows (PostgreSQL SKIP LOCKED), so poll again.
                    with lock:
                        if count[0] >= n:
                            break
                        count[1] += 1
                    continue
                with lock:
                    count[0] += 1
                run_id, lease = body["run"]["id"], body["lease_token"]
                mine.append((run_id, lease))
                if finish_now:
                    t1 = time.perf_counter()
                    api.post(f"/api/v1/runs/{run_id}/finish", {"lease_token": lease, "state": "succeeded"})
                    fl.append(time.perf_counter() - t1)
            api.close()
            with lock:
                claimed.extend(mine)
                claim_lat.extend(cl)
                finish_lat.extend(fl)

        meter = self.meter()
        wall = run_threads([lambda i=i: runner(i) for i in range(k)], PHASE_TIMEOUT + 60, "claiming", barrier, meter)
        if len(claimed) != n:
            raise BenchError(f"{self.store}: {len(claimed)} runs claimed, {n} submitted")
        result = dict(
            n=n, k=k, submit_wall=submit_wall, submits_per_s=n / submit_wall,
            wall=wall, claims_per_s=n / wall, empty_polls=count[1], cpu_s=meter.result,
            claim_p50_ms=percentile(claim_lat, 50) * 1000, claim_p99_ms=percentile(claim_lat, 99) * 1000,
        )
        if finish_now:
            result.update(finish_p50_ms=percentile(finish_lat, 50) * 1000,
                          finish_p99_ms=percentile(finish_lat, 99) * 1000)
        else:
            # Finish the claimed runs in a separate timed phase, K connections again.
            chunks = [claimed[i::k] for i in range(k)]
            fl_all: list[float] = []
            barrier2 = threading.Barrier(k + 1)

            def finisher(chunk):
                api = Api(self.port, self.runner_token)
                api.get("/healthz")
                fl = []
                barrier2.wait(timeout=60)
                for run_id, lease in chunk:
                    t1 = time.perf_counter()
                    api.post(f"/api/v1/runs/{run_id}/finish", {"lease_token": lease, "state": "succeeded"})
                    fl.append(time.perf_counter() - t1)
                api.close()
                with lock:
                    fl_all.extend(fl)

            fmeter = self.meter()
            fwall = run_threads([lambda c=c: finisher(c) for c in chunks], PHASE_TIMEOUT, "finishing", barrier2, fmeter)
            result.update(finish_wall=fwall, finishes_per_s=n / fwall, finish_cpu_s=fmeter.result,
                          finish_p50_ms=percentile(fl_all, 50) * 1000, finish_p99_ms=percentile(fl_all, 99) * 1000)
        self.verify(project, submitted, [r for r, _ in claimed])
        return result

    # (b) submit -> claimed latency

    def latency(self, runs: int, warmup: int, gap: float) -> dict:
        project = "bench-b"
        arrivals: queue.Queue[tuple[str, str, float]] = queue.Queue()
        stop = threading.Event()
        errors: list[BaseException] = []
        ready = threading.Event()

        def runner():
            try:
                api = Api(self.port, self.runner_token, timeout=40)
                rid = self.register(api, f"latency-{self.token}")
                path = f"/api/v1/runners/{rid}/claim"
                ready.set()
                while True:
                    status, body = api.post(path, {"wait_ms": 20000})
                    t = time.perf_counter()
                    if status == 200:
                        arrivals.put((body["run"]["id"], body["lease_token"], t))
                        if stop.is_set():
                            break
                api.close()
            except BaseException as e:  # noqa: BLE001
                errors.append(e)
                ready.set()

        thread = threading.Thread(target=runner, daemon=True)
        thread.start()
        ready.wait(60)
        client = Api(self.port, self.client_token)
        finisher = Api(self.port, self.runner_token)
        client.get("/healthz")
        finisher.get("/healthz")
        body = self.submit_body(project)
        samples: list[float] = []
        submitted: list[str] = []
        claimed: list[str] = []
        time.sleep(0.2)  # let the first long poll reach the server

        def one(last: bool = False) -> float:
            if errors:
                raise errors[0]
            if last:
                stop.set()
            t0 = time.perf_counter()
            _, run = client.post("/api/v1/runs", body)
            submitted.append(run["id"])
            try:
                run_id, lease, t = arrivals.get(timeout=30)
            except Exception:
                raise BenchError(f"{self.store}: run {run['id']} not claimed within 30 s"
                                 + (f" ({errors[0]})" if errors else "")) from None
            claimed.append(run_id)
            if run_id != run["id"]:
                raise BenchError(f"{self.store}: submitted {run['id']} but the runner claimed {run_id}")
            finisher.post(f"/api/v1/runs/{run_id}/finish", {"lease_token": lease, "state": "succeeded"})
            return t - t0

        for i in range(warmup + runs):
            lat = one()
            if i >= warmup:
                samples.append(lat)
            time.sleep(gap)
        one(last=True)  # the runner thread stops after this claim
        thread.join(30)
        client.close()
        finisher.close()
        if errors:
            raise errors[0]
        self.verify(project, submitted, claimed)
        return dict(runs=runs, warmup=warmup, gap_ms=gap * 1000,
                    p50_ms=percentile(samples, 50) * 1000, p95_ms=percentile(samples, 95) * 1000,
                    p99_ms=percentile(samples, 99) * 1000, max_ms=max(samples) * 1000,
                    min_ms=min(samples) * 1000, samples_ms=[round(s * 1000, 3) for s in samples])

    # (d) claim cost by queue depth

    def stop_runner(self) -> None:
        """Stops (c)'s real runner: it would claim the synthetic runs of (d) and (e)."""
        if self.runner is not None:
            self.runner.stop()
            self.runner = None

    def depth_sweep(self, depths: list[int], claims: int) -> list[dict]:
        project = "bench-d"
        self.stop_runner()
        api = Api(self.port, self.runner_token)
        rid = self.register(api, f"depth-{self.token}")
        path = f"/api/v1/runners/{rid}/claim"
        queued = 0
        out = []
        for depth in depths:
            if depth > queued:
                progress(f"({self.store}) (d) filling the queue to {depth} runs")
                _, wall = self.submit_many(project, depth - queued, 8)
                queued = depth
            lat = []
            for _ in range(claims):
                t0 = time.perf_counter()
                status, body = api.post(path, {"wait_ms": 0})
                lat.append(time.perf_counter() - t0)
                if status != 200:
                    raise BenchError(f"{self.store}: nothing to claim at depth {depth}")
                api.post(f"/api/v1/runs/{body['run']['id']}/finish",
                         {"lease_token": body["lease_token"], "state": "succeeded"})
            queued -= claims
            out.append(dict(depth=depth, claims=claims, p50_ms=percentile(lat, 50) * 1000,
                            p99_ms=percentile(lat, 99) * 1000))
            progress(f"({self.store}) (d) depth {depth}: claim p50 {out[-1]['p50_ms']:.2f} ms")
        api.close()
        return out

    # (e) wake-ups across two servers (PostgreSQL)

    def cross_server(self, runs: int, cancels: int, gap: float) -> dict:
        self.stop_runner()
        self.peer, port2 = self.start_server("berth server 2", self.tmp / "server2-state")
        project = "bench-e"
        runner = Api(port2, self.runner_token, timeout=40)
        rid = self.register(runner, f"cross-{self.token}")
        client = Api(self.port, self.client_token)
        body = self.submit_body(project)
        arrivals: queue.Queue = queue.Queue()
        errors: list[BaseException] = []

        def claim_one():
            try:
                status, claimed = runner.post(f"/api/v1/runners/{rid}/claim", {"wait_ms": 20000})
                arrivals.put((time.perf_counter(), status, claimed))
            except BaseException as e:  # noqa: BLE001
                errors.append(e)
                arrivals.put((time.perf_counter(), 0, None))

        # submit through server 1 -> claimed through server 2
        claim_lat = []
        leases = []
        for i in range(runs + 5):
            t = threading.Thread(target=claim_one, daemon=True)
            t.start()
            time.sleep(gap)  # the long poll is waiting on server 2
            t0 = time.perf_counter()
            _, run = client.post("/api/v1/runs", body)
            t1, status, claimed = arrivals.get(timeout=60)
            t.join(5)
            if errors:
                raise errors[0]
            if status != 200 or claimed["run"]["id"] != run["id"]:
                raise BenchError(f"{self.store}: server 2 did not hand out the run submitted through server 1 "
                                 f"(status {status})")
            if i >= 5:
                claim_lat.append(t1 - t0)
            leases.append((run["id"], claimed["lease_token"]))
        # cancel through server 1 -> the heartbeat held open on server 2 answers
        cancel_lat = []
        for run_id, lease in leases[:cancels]:
            done: queue.Queue = queue.Queue()

            def heartbeat(run_id=run_id, lease=lease):
                try:
                    _, reply = runner.post(f"/api/v1/runners/{rid}/heartbeat",
                                           {"leases": [{"run_id": run_id, "lease_token": lease}]})
                    done.put((time.perf_counter(), reply))
                except BaseException as e:  # noqa: BLE001
                    errors.append(e)
                    done.put((time.perf_counter(), {}))

            t = threading.Thread(target=heartbeat, daemon=True)
            t.start()
            time.sleep(gap)  # the heartbeat is held on server 2
            t0 = time.perf_counter()
            client.post(f"/api/v1/runs/{run_id}/cancel")
            t1, reply = done.get(timeout=60)
            t.join(5)
            if errors:
                raise errors[0]
            if run_id not in reply.get("cancel", []):
                raise BenchError(f"{self.store}: the heartbeat on server 2 did not carry the cancel: {reply}")
            cancel_lat.append(t1 - t0)
        for run_id, lease in leases:
            runner.post(f"/api/v1/runs/{run_id}/finish",
                        {"lease_token": lease, "state": "cancelled"}, ok=(200, 409))
        runner.close()
        client.close()
        return dict(runs=runs, cancels=cancels, gap_ms=gap * 1000,
                    claim_p50_ms=percentile(claim_lat, 50) * 1000, claim_p95_ms=percentile(claim_lat, 95) * 1000,
                    claim_max_ms=max(claim_lat) * 1000,
                    cancel_p50_ms=percentile(cancel_lat, 50) * 1000, cancel_max_ms=max(cancel_lat) * 1000)

    # (c) submit -> first output, real runner, vs berth run

    def start_runner(self) -> None:
        name = f"bench-runner-{self.token}-{self.store}"
        env = dict(self.env)
        env["BERTH_TOKEN"] = self.runner_token
        argv = [str(self.args.berth), "runner", "--server", f"http://127.0.0.1:{self.port}",
                "--name", name, "--state-dir", str(self.tmp / "runner-state")]
        self.runner = Proc("berth runner", argv, self.tmp / "runner.log", env=env)
        self.runner_name = name
        # Wait until it registered (it shows up in GET /api/v1/runners).
        api = Api(self.port, self.client_token)
        deadline = time.monotonic() + 60
        while True:
            if not self.runner.alive():
                raise BenchError(f"berth runner exited with {self.runner.proc.returncode}:\n{tail(self.runner.log)}")
            _, runners = api.get("/api/v1/runners")
            if any(r["id"] == name and r["online"] for r in runners):
                break
            if time.monotonic() > deadline:
                raise BenchError(f"berth runner did not register within 60 s:\n{tail(self.runner.log)}")
            time.sleep(0.1)
        api.close()

    def first_line(self, tool: str) -> dict:
        """One `berth submit --follow` or `berth run`: time to the line `ready`, to exit, and the
        moments of the run's milestones (from its timestamps), all relative to the spawn."""
        run_state = self.tmp / f"run-state-{uuid.uuid4().hex[:8]}"
        if tool == "submit":
            argv = [str(self.args.berth), "submit", "--server", f"http://127.0.0.1:{self.port}",
                    "--project", "bench-c", "--image", self.image, "--follow", "--", *COMMAND]
            env = dict(self.env)
            env["BERTH_TOKEN"] = self.client_token
        else:
            argv = [str(self.args.berth), "run", "--image", self.image, "--workspace-mode", "none",
                    "--workspace", str(self.workspace), "--state-dir", str(run_state), "--", *COMMAND]
            env = self.env
        err_file = self.tmp / f"stderr-{uuid.uuid4().hex}"
        with open(err_file, "wb") as err:
            t0 = time.perf_counter()
            epoch0 = time.time()
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                                    env=env, bufsize=0)
            timer = threading.Timer(RUN_TIMEOUT, proc.kill)
            timer.start()
            try:
                line = proc.stdout.readline()
                first = time.perf_counter() - t0
                rest = proc.stdout.read()
                code = proc.wait()
                wall = time.perf_counter() - t0
            finally:
                timer.cancel()
                if proc.poll() is None:
                    # SIGTERM first: berth then stops and removes its container itself.
                    proc.terminate()
                    try:
                        proc.wait(timeout=20)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                proc.stdout.close()
        stderr = err_file.read_text(errors="replace").strip()
        err_file.unlink(missing_ok=True)
        if code != 0 or line != b"ready\n" or rest:
            raise BenchError(f"berth {tool} failed: exit {code}, first line {line!r}, then {rest[:200]!r}\n"
                             f"  command: {' '.join(argv)}\n  stderr: {stderr}")
        marks: dict[str, float] = {}
        try:
            if tool == "submit":
                m = re.search(r"submitted run (\S+)", stderr)
                if m:
                    api = Api(self.port, self.client_token)
                    _, run = api.get(f"/api/v1/runs/{m.group(1)}")
                    _, sse = api.get(f"/api/v1/runs/{m.group(1)}/events")
                    api.close()
                    marks["queued"] = parse_ts(run["created_at"])
                    marks["claimed"] = parse_ts(run["claimed_at"])
                    for l in str(sse).splitlines():
                        if l.startswith("data:") and l[5:].strip() != "{}":
                            e = json.loads(l[5:])
                            if e["kind"] in ("container_created", "started", "stdout") and e["kind"] not in marks:
                                marks[e["kind"]] = parse_ts(e["ts"])
            else:
                for f in run_state.glob("runs/*/events.jsonl"):
                    for l in f.read_text().splitlines():
                        e = json.loads(l)
                        if e["event"] in ("run_created", "container_created", "started"):
                            marks.setdefault(e["event"], parse_ts(e["ts"]))
        except (BenchError, OSError, ValueError, KeyError, TypeError):
            pass
        shutil.rmtree(run_state, ignore_errors=True)
        marks = {k: v - epoch0 for k, v in marks.items()}
        return dict(first=first, wall=wall, marks=marks)

    def follow(self, runs: int, warmup: int) -> dict:
        self.start_runner()
        samples: dict[str, list[dict]] = {"submit": [], "run": []}
        for i in range(warmup + runs):
            order = ("submit", "run") if i % 2 == 0 else ("run", "submit")
            for tool in order:
                r = self.first_line(tool)
                if i >= warmup:
                    samples[tool].append(r)
            progress(f"  ({self.store}) (c) {'warm-up' if i < warmup else f'{i - warmup + 1}/{runs}'}")
        s = statistics.median(x["first"] for x in samples["submit"])
        r = statistics.median(x["first"] for x in samples["run"])

        def milestones(v: list[dict]) -> dict[str, float]:
            keys = {k for x in v for k in x["marks"]}
            out = {k: statistics.median(x["marks"][k] for x in v if k in x["marks"]) * 1000 for k in keys}
            out["first_line"] = statistics.median(x["first"] for x in v) * 1000
            out["exit"] = statistics.median(x["wall"] for x in v) * 1000
            return dict(sorted(out.items(), key=lambda kv: kv[1]))

        return dict(runs=runs, submit_ms=s * 1000, run_ms=r * 1000, ratio=s / r,
                    submit_wall_ms=statistics.median(x["wall"] for x in samples["submit"]) * 1000,
                    run_wall_ms=statistics.median(x["wall"] for x in samples["run"]) * 1000,
                    milestones_ms={t: milestones(v) for t, v in samples.items()},
                    samples_ms={t: [round(x["first"] * 1000, 1) for x in v] for t, v in samples.items()})

    def server_metrics(self) -> dict:
        """The server's own counters from /metrics."""
        _, text = self.admin.get("/metrics")
        return {l.rsplit(" ", 1)[0]: float(l.rsplit(" ", 1)[1]) for l in str(text).splitlines()
                if l.strip() and not l.startswith("#")}


def leftover_containers(tmp: Path, token: str) -> tuple[list[str], list[str]]:
    """(containers this benchmark created that still exist, all berth-managed containers)."""
    out = subprocess.run(["docker", "ps", "-a", "--filter", "label=berth.managed=true", "--format",
                          '{{.ID}}\t{{.Label "berth.run-dir"}}\t{{.Label "berth.runner-id"}}'],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise BenchError(f"docker ps failed: {out.stderr.strip()}")
    mine, every = [], []
    for line in out.stdout.splitlines():
        cid, run_dir, runner = (line.split("\t") + ["", ""])[:3]
        every.append(cid)
        if run_dir.startswith(str(tmp)) or token in runner:
            mine.append(cid)
    return mine, every


def main() -> int:
    ap = argparse.ArgumentParser(description="berth coordinator benchmark (SQLite and PostgreSQL)")
    ap.add_argument("--json", action="store_true", help="print machine-readable results instead of the table")
    ap.add_argument("--stores", default="sqlite,postgres", help="comma-separated stores (default sqlite,postgres)")
    ap.add_argument("--only", default="a,b,c,d,e", help="comma-separated workloads (default a,b,c,d,e)")
    ap.add_argument("--runs", type=int, default=2000, help="(a) runs per round (default 2000)")
    ap.add_argument("--runners", type=int, default=8, help="(a) synthetic runner threads (default 8)")
    ap.add_argument("--latency-runs", type=int, default=200, help="(b) measured submissions (default 200)")
    ap.add_argument("--gap-ms", type=float, default=20.0, help="(b) pause between submissions (default 20)")
    ap.add_argument("--follow-runs", type=int, default=7, help="(c) measured runs per tool (default 7)")
    ap.add_argument("--depths", default="1000,10000,100000", help="(d) queue depths (default 1000,10000,100000)")
    ap.add_argument("--depth-claims", type=int, default=200, help="(d) claims measured per depth (default 200)")
    ap.add_argument("--cross-runs", type=int, default=100, help="(e) measured submissions (default 100)")
    ap.add_argument("--cross-cancels", type=int, default=20, help="(e) measured cancels (default 20)")
    ap.add_argument("--image", help="(c) image (default: the one scripts/test-image.sh build prints)")
    ap.add_argument("--berth", type=Path, default=REPO / "target/release/berth", help="berth binary")
    ap.add_argument("--pg-bin", type=Path, default=PG_BIN_DEFAULT, help="PostgreSQL binaries (initdb, pg_ctl)")
    args = ap.parse_args()
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    only = {w.strip() for w in args.only.split(",") if w.strip()}
    if not set(stores) <= {"sqlite", "postgres"} or not stores:
        ap.error(f"unknown store in --stores: {args.stores}")
    depths = sorted({int(d) for d in args.depths.split(",") if d.strip()})
    if not only <= {"a", "b", "c", "d", "e"} or not only:
        ap.error(f"unknown workload in --only: {args.only}")
    if (args.runs < 1 or args.runners < 1 or args.latency_runs < 1 or args.follow_runs < 1
            or args.depth_claims < 1 or not depths or depths[0] <= args.depth_claims
            or args.cross_runs < 1 or not 1 <= args.cross_cancels <= args.cross_runs + 5):
        ap.error("counts must be at least 1")

    # A SIGTERM must still run the cleanup below.
    def on_term(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)

    if not os.access(args.berth, os.X_OK):
        raise BenchError(f"{args.berth} is not an executable; build it with `cargo build --release`")
    if "postgres" in stores:
        if os.geteuid() != 0:
            raise BenchError("the PostgreSQL store needs root (the cluster runs as the postgres user via runuser)")
        for tool in ("initdb", "pg_ctl", "createdb"):
            if not os.access(args.pg_bin / tool, os.X_OK):
                raise BenchError(f"{args.pg_bin / tool} not found; pass --pg-bin DIR")
    image = args.image
    docker_version = None
    if "c" in only or image is None:
        ver = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                             capture_output=True, text=True, timeout=60)
        if ver.returncode != 0:
            raise BenchError(f"docker is not usable: {ver.stderr.strip()}")
        docker_version = ver.stdout.strip()
    if image is None and "c" in only:
        built = subprocess.run([str(REPO / "scripts/test-image.sh"), "build"], capture_output=True, text=True,
                               timeout=600)
        if built.returncode != 0:
            raise BenchError(f"scripts/test-image.sh build failed:\n{built.stderr}")
        image = built.stdout.strip().splitlines()[-1]
    berth_version = subprocess.run([str(args.berth), "--version"], capture_output=True, text=True).stdout.strip()
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or None

    load_before = os.getloadavg()
    if load_before[0] > (os.cpu_count() or 1) * 0.5:
        progress(f"note: load average is {load_before[0]:.1f} on {os.cpu_count()} CPUs; figures will be noisy")
    tmp = Path(tempfile.mkdtemp(prefix="berth-bench-coord-"))
    os.chmod(tmp, 0o755)  # the postgres user must reach its cluster directory inside
    token = uuid.uuid4().hex[:8]
    results: dict[str, dict] = {}
    metas: dict[str, dict] = {}
    error: str | None = None
    try:
        for store in stores:
            sb = StoreBench(args, store, tmp, token, image)
            try:
                progress(f"({store}) starting the server")
                sb.start()
                r: dict = {}
                if "a" in only:
                    progress(f"({store}) (a) claim+finish, {args.runs} runs, {args.runners} runners")
                    r["a_claim_finish"] = sb.claim_round("bench-a1", args.runs, args.runners, True, "cf")
                    progress(f"({store}) (a) claim only, {args.runs} runs, {args.runners} runners")
                    r["a_claim_only"] = sb.claim_round("bench-a2", args.runs, args.runners, False, "co")
                if "b" in only:
                    progress(f"({store}) (b) submit -> claimed, {args.latency_runs} runs")
                    r["b_latency"] = sb.latency(args.latency_runs, 5, args.gap_ms / 1000)
                if "c" in only:
                    progress(f"({store}) (c) submit --follow vs run, {args.follow_runs} runs each")
                    r["c_first_output"] = sb.follow(args.follow_runs, 1)
                if "e" in only and store == "postgres":
                    progress(f"({store}) (e) two servers: {args.cross_runs} submits, {args.cross_cancels} cancels")
                    r["e_cross_server"] = sb.cross_server(args.cross_runs, args.cross_cancels, args.gap_ms / 1000)
                if "d" in only:
                    # Last: it leaves a deep queue behind.
                    r["d_depth"] = sb.depth_sweep(depths, args.depth_claims)
                try:
                    r["server_metrics"] = sb.server_metrics()
                except BenchError:
                    pass
                results[store] = r
                metas[store] = sb.meta
            finally:
                problems = sb.stop()
                if problems:
                    error = (error + "\n" if error else "") + "\n".join(problems)
    except BenchError as e:
        error = (error + "\n" if error else "") + str(e)
    except KeyboardInterrupt:
        error = (error + "\n" if error else "") + "interrupted"
    finally:
        left_all: list[str] = []
        if docker_version is not None:
            try:
                mine, left_all = leftover_containers(tmp, token)
                if mine:
                    subprocess.run(["docker", "rm", "-f", *mine], capture_output=True, timeout=120)
                    error = (error + "\n" if error else "") + f"containers were left behind (now removed): {' '.join(mine)}"
                    left_all = [c for c in left_all if c not in mine]
            except (BenchError, subprocess.SubprocessError) as e:
                error = (error + "\n" if error else "") + f"could not check for leftover containers: {e}"
        shutil.rmtree(tmp, ignore_errors=True)
    if left_all:
        progress(f"note: {len(left_all)} berth-managed container(s) of other processes exist: {' '.join(left_all)}")

    if error:
        print(f"coordinator bench: error: {error}", file=sys.stderr)
        return 1

    meta = dict(
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        berth=berth_version, commit=commit, binary_mtime=datetime.datetime.fromtimestamp(
            args.berth.stat().st_mtime).astimezone().isoformat(timespec="seconds"), docker_server=docker_version, image=image, host=platform.node(),
        cpus=os.cpu_count(), kernel=platform.release(), python=platform.python_version(),
        runs=args.runs, runners=args.runners, latency_runs=args.latency_runs, follow_runs=args.follow_runs,
        loadavg_before=round(load_before[0], 2), loadavg_after=round(os.getloadavg()[0], 2),
        stores=metas,
    )
    rows = table_rows(results)
    if args.json:
        json.dump(dict(meta=meta, results=results, table=rows), sys.stdout, indent=2)
        print()
    else:
        print_table(meta, rows)
    return 0


def cpu_note(cpu: dict, n: int) -> str:
    """CPU ms per run by process, and how many cores were busy on average."""
    if not cpu or not cpu.get("wall"):
        return "-"
    parts = [f"{k} {cpu[k] / n * 1000:.2f}" for k in ("server", "postgres", "client") if k in cpu]
    busy = sum(cpu[k] for k in ("server", "postgres", "client") if k in cpu) / cpu["wall"]
    return f"{', '.join(parts)} ms; {busy:.2f} cores busy"


def table_rows(results: dict) -> list[dict]:
    rows = []
    for store, r in results.items():
        if "a_claim_finish" in r:
            a = r["a_claim_finish"]
            rows.append(dict(store=store, metric=f"(a) submit, {a['k']} threads", value=f"{a['submits_per_s']:.0f} runs/s",
                             target="-", passed=None))
            rows.append(dict(store=store, metric=f"(a) claim+finish, {a['k']} runners, {a['n']} runs",
                             value=f"{a['claims_per_s']:.0f} claims/s", target=f">= {CLAIMS_TARGET:.0f} claims/s",
                             passed=a["claims_per_s"] >= CLAIMS_TARGET))
            rows.append(dict(store=store, metric="    claim / finish request p50, p99",
                             value=f"{a['claim_p50_ms']:.1f}/{a['claim_p99_ms']:.1f}, "
                                   f"{a['finish_p50_ms']:.1f}/{a['finish_p99_ms']:.1f} ms", target="-", passed=None))
            rows.append(dict(store=store, metric="    CPU per claim+finish", value=cpu_note(a["cpu_s"], a["n"]),
                             target="-", passed=None))
        if "a_claim_only" in r:
            a = r["a_claim_only"]
            rows.append(dict(store=store, metric=f"(a) claim only, {a['k']} runners, {a['n']} runs",
                             value=f"{a['claims_per_s']:.0f} claims/s", target=f">= {CLAIMS_TARGET:.0f} claims/s",
                             passed=a["claims_per_s"] >= CLAIMS_TARGET))
            rows.append(dict(store=store, metric="    CPU per claim", value=cpu_note(a["cpu_s"], a["n"]),
                             target="-", passed=None))
            rows.append(dict(store=store, metric="    then finish only", value=f"{a['finishes_per_s']:.0f} finishes/s",
                             target="-", passed=None))
            rows.append(dict(store=store, metric="    CPU per finish", value=cpu_note(a["finish_cpu_s"], a["n"]),
                             target="-", passed=None))
        if "b_latency" in r:
            b = r["b_latency"]
            rows.append(dict(store=store, metric=f"(b) submit -> claimed p50 ({b['runs']} runs)",
                             value=f"{b['p50_ms']:.1f} ms", target=f"<= {LATENCY_P50_TARGET * 1000:.0f} ms",
                             passed=b["p50_ms"] <= LATENCY_P50_TARGET * 1000))
            rows.append(dict(store=store, metric="    p95 / p99 / max", value=f"{b['p95_ms']:.1f} / {b['p99_ms']:.1f} / {b['max_ms']:.1f} ms",
                             target="-", passed=None))
        if "c_first_output" in r:
            c = r["c_first_output"]
            rows.append(dict(store=store, metric=f"(c) first output: submit --follow (median of {c['runs']})",
                             value=f"{c['submit_ms']:.0f} ms", target="-", passed=None))
            rows.append(dict(store=store, metric="    berth run, same command", value=f"{c['run_ms']:.0f} ms",
                             target="-", passed=None))
            rows.append(dict(store=store, metric="    ratio submit/run", value=f"{c['ratio']:.2f}x",
                             target="-", passed=None))
            for tool, label in (("submit", "submit"), ("run", "run")):
                ms = c.get("milestones_ms", {}).get(tool)
                if ms:
                    rows.append(dict(store=store, metric=f"    {label} milestones (median ms after spawn)",
                                     value=" ".join(f"{k} {v:.0f}" for k, v in ms.items()), target="-", passed=None))
        for d in r.get("d_depth", []):
            rows.append(dict(store=store, metric=f"(d) claim p50 at {d['depth']:,} queued ({d['claims']} claims)",
                             value=f"{d['p50_ms']:.2f} ms (p99 {d['p99_ms']:.1f})",
                             target=f"<= {DEPTH_P50_TARGET * 1000:.0f} ms", passed=d["p50_ms"] <= DEPTH_P50_TARGET * 1000))
        if "e_cross_server" in r:
            e = r["e_cross_server"]
            rows.append(dict(store=store, metric=f"(e) submit via 1 -> claimed via 2, p50 ({e['runs']} runs)",
                             value=f"{e['claim_p50_ms']:.1f} ms", target=f"<= {LATENCY_P50_TARGET * 1000:.0f} ms",
                             passed=e["claim_p50_ms"] <= LATENCY_P50_TARGET * 1000))
            rows.append(dict(store=store, metric="    p95 / max", value=f"{e['claim_p95_ms']:.1f} / {e['claim_max_ms']:.1f} ms",
                             target="-", passed=None))
            rows.append(dict(store=store, metric=f"(e) cancel via 1 -> heartbeat on 2 answers, p50 ({e['cancels']})",
                             value=f"{e['cancel_p50_ms']:.1f} ms (max {e['cancel_max_ms']:.1f})", target="-", passed=None))
    return rows


def print_table(meta: dict, rows: list[dict]) -> None:
    print(f"berth coordinator - {meta['date']} - {meta['berth']} (HEAD {meta['commit']}, binary built "
          f"{meta['binary_mtime']}), Docker {meta['docker_server']}, "
          f"{meta['cpus']} CPUs, kernel {meta['kernel']}, Python {meta['python']}")
    print(f"1-min load average {meta['loadavg_before']:.1f} before, {meta['loadavg_after']:.1f} after")
    pg = meta["stores"].get("postgres", {}).get("postgres")
    if pg:
        print("PostgreSQL " + ", ".join(f"{k}={v}" for k, v in sorted(pg.items())))
    print()
    table = [("store", "metric", "value", "target", "result")]
    for r in rows:
        table.append((r["store"], r["metric"], r["value"], r["target"],
                      {True: "PASS", False: "MISS", None: "-"}[r["passed"]]))
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    for n, row in enumerate(table):
        print("  ".join(cell.rjust(w) if i == 2 else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"coordinator bench: error: {e}", file=sys.stderr)
        sys.exit(1)
