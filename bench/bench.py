#!/usr/bin/env python3
"""Benchmark: berth against the plain docker CLI doing the same work.

Usage: python3 bench/bench.py [--runs N] [--json] [--only a,b,c,d] [--image IMG] [--berth PATH]

Workloads (each run N times, berth and docker interleaved, medians reported):
  (a) cold run of `true`, wall time                        target berth/docker <= 1.0
  (b) time from spawn to the first stdout line              reported, no target
  (c) 500 MiB written to stdout, throughput                 target berth/docker >= 2.5
  (d) berth's peak RSS during (c), via GNU time's %M        target <= 32 MiB

Exits 0 when every run worked (even if a target is missed), non-zero on any error:
a failed run, a wrong byte count, a container left behind. Standard library only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GNU_TIME = "/usr/bin/time"
STREAM_BYTES = 524288000  # 500 MiB
MIB = 1024 * 1024
RSS_TARGET_KIB = 32 * 1024
RUN_TIMEOUT = 600.0  # seconds; a run taking longer than this is an error
READ_CHUNK = 1 << 20

CMD_TRUE = ["true"]
CMD_FIRST_LINE = ["sh", "-c", "echo ready; sleep 1"]
CMD_STREAM = ["sh", "-c", f"head -c {STREAM_BYTES} /dev/zero"]


class BenchError(Exception):
    pass


class Bench:
    def __init__(self, berth: Path, image: str, tmp: Path, token: str, measure_rss: bool):
        self.berth = berth
        self.image = image
        self.tmp = tmp
        self.state_dir = tmp / "state"
        self.workspace = tmp / "workspace"
        self.state_dir.mkdir()
        self.workspace.mkdir()
        self.token = token
        self.measure_rss = measure_rss
        self.counter = 0
        # berth must not pick up a user or workspace config that would change what it does.
        self.berth_env = dict(os.environ)
        self.berth_env["BERTH_CONFIG"] = str(tmp / "no-such-config.toml")
        self.berth_env.pop("BERTH_STATE_DIR", None)
        self.berth_env.pop("BERTH_LOG", None)

    # -- command lines -------------------------------------------------------

    def argv(self, tool: str, cmd: list[str]) -> list[str]:
        if tool == "berth":
            return [
                str(self.berth), "run", "--image", self.image,
                "--workspace-mode", "none", "--workspace", str(self.workspace),
                "--state-dir", str(self.state_dir), "--", *cmd,
            ]
        self.counter += 1
        name = f"berth-bench-{self.token}-{self.counter}"
        return [
            "docker", "run", "--rm", "--network", "none",
            "--name", name, "--label", f"berth.bench={self.token}",
            self.image, *cmd,
        ]

    # -- one run -------------------------------------------------------------

    def run(self, tool: str, cmd: list[str], mode: str, rss: bool = False) -> dict:
        """Runs one command. mode: 'wait' (discard stdout), 'first-line' or 'count'.

        Returns {'wall': s, 'first_line': s?, 'bytes': n?, 'rss_kib': n?}."""
        argv = self.argv(tool, cmd)
        rss_file = None
        if rss:
            rss_file = self.tmp / f"rss-{uuid.uuid4().hex}"
            argv = [GNU_TIME, "-f", "%M", "-o", str(rss_file), *argv]
        err_file = self.tmp / f"stderr-{uuid.uuid4().hex}"
        env = self.berth_env if tool == "berth" else None
        result: dict = {}
        with open(err_file, "wb") as err:
            stdout = subprocess.DEVNULL if mode == "wait" else subprocess.PIPE
            start = time.perf_counter()
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=err,
                                    env=env, bufsize=0)
            try:
                if mode == "first-line":
                    line = proc.stdout.readline()
                    result["first_line"] = time.perf_counter() - start
                    if line != b"ready\n":
                        self._drain_and_fail(proc, tool, argv, err_file, f"first line was {line!r}, expected b'ready\\n'")
                    rest = self._drain(proc)
                    if rest:
                        self._drain_and_fail(proc, tool, argv, err_file, f"{rest} unexpected bytes after the first line")
                elif mode == "count":
                    result["bytes"] = self._drain(proc)
                code = proc.wait(timeout=RUN_TIMEOUT)
                result["wall"] = time.perf_counter() - start
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise BenchError(self._failure(tool, argv, err_file, f"timed out after {RUN_TIMEOUT:.0f} s"))
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                if proc.stdout is not None:
                    proc.stdout.close()
        if code != 0:
            raise BenchError(self._failure(tool, argv, err_file, f"exited with status {code}"))
        err_file.unlink(missing_ok=True)
        if rss_file is not None:
            lines = rss_file.read_text().split()
            rss_file.unlink(missing_ok=True)
            try:
                result["rss_kib"] = int(lines[-1])
            except (IndexError, ValueError):
                raise BenchError(f"could not read the peak RSS GNU time wrote: {lines!r}")
        if tool == "berth":
            self._forget_runs()
        return result

    @staticmethod
    def _drain(proc: subprocess.Popen) -> int:
        """Reads the child's stdout to EOF, returning the number of bytes."""
        buf = bytearray(READ_CHUNK)
        view = memoryview(buf)
        total = 0
        readinto = proc.stdout.readinto
        while True:
            n = readinto(view)
            if not n:
                return total
            total += n

    def _drain_and_fail(self, proc, tool, argv, err_file, why):
        proc.kill()
        proc.wait()
        raise BenchError(self._failure(tool, argv, err_file, why))

    @staticmethod
    def _failure(tool: str, argv: list[str], err_file: Path, why: str) -> str:
        try:
            stderr = err_file.read_text(errors="replace").strip()
        except OSError:
            stderr = ""
        msg = f"{tool} run failed: {why}\n  command: {' '.join(argv)}"
        if stderr:
            msg += "\n  stderr:\n" + "\n".join("    " + l for l in stderr.splitlines())
        return msg

    def _forget_runs(self) -> None:
        """Deletes berth's finished run directories (each (c) run leaves a 500 MiB stdout.log)."""
        runs = self.state_dir / "runs"
        if runs.is_dir():
            for child in runs.iterdir():
                shutil.rmtree(child, ignore_errors=True)

    # -- leftovers -----------------------------------------------------------

    def leftover_containers(self) -> list[str]:
        """Containers this benchmark created that still exist (berth's, by run dir, and docker's)."""
        found = []
        out = subprocess.run(
            ["docker", "ps", "-a", "--filter", "label=berth.managed=true",
             "--format", '{{.ID}} {{.Label "berth.run-dir"}}'],
            capture_output=True, text=True, timeout=60,
        )
        if out.returncode != 0:
            raise BenchError(f"docker ps failed: {out.stderr.strip()}")
        for line in out.stdout.splitlines():
            cid, _, run_dir = line.partition(" ")
            if run_dir.startswith(str(self.tmp)):
                found.append(cid)
        out = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label=berth.bench={self.token}"],
            capture_output=True, text=True, timeout=60,
        )
        found += out.stdout.split()
        return found


# -- workloads ---------------------------------------------------------------


def interleaved(runs: int, warmup: int, one, progress) -> dict[str, list[dict]]:
    """Calls one(tool) for both tools, alternating, `runs` times each after `warmup` unrecorded rounds.

    The order within a round flips every round so neither tool always goes first."""
    samples: dict[str, list[dict]] = {"berth": [], "docker": []}
    for i in range(warmup + runs):
        order = ("berth", "docker") if i % 2 == 0 else ("docker", "berth")
        for tool in order:
            r = one(tool)
            if i >= warmup:
                samples[tool].append(r)
        progress(f"{'warm-up' if i < warmup else f'{i - warmup + 1}/{runs}'}")
    return samples


def median(samples: list[dict], key: str) -> float:
    return statistics.median(s[key] for s in samples)


def main() -> int:
    ap = argparse.ArgumentParser(description="berth vs docker CLI benchmark")
    ap.add_argument("--runs", type=int, default=7, help="measured runs per tool and workload (default 7)")
    ap.add_argument("--warmup", type=int, default=1, help="unrecorded rounds before measuring (default 1)")
    ap.add_argument("--json", action="store_true", help="print machine-readable results instead of the table")
    ap.add_argument("--only", default="a,b,c,d", help="comma-separated workloads to run (default a,b,c,d; d needs c's runs)")
    ap.add_argument("--image", help="image to run (default: the one scripts/test-image.sh build prints)")
    ap.add_argument("--berth", type=Path, default=REPO / "target/release/berth", help="berth binary (default target/release/berth)")
    args = ap.parse_args()
    if args.runs < 1 or args.warmup < 0:
        ap.error("--runs must be at least 1 and --warmup at least 0")
    only = {w.strip() for w in args.only.split(",") if w.strip()}
    if not only <= {"a", "b", "c", "d"}:
        ap.error(f"unknown workload in --only: {args.only}")

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    # Prerequisites.
    if not os.access(args.berth, os.X_OK):
        raise BenchError(f"{args.berth} is not an executable; build it with `cargo build --release`")
    if shutil.which("docker") is None:
        raise BenchError("the docker CLI is not on PATH")
    ver = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True, timeout=60)
    if ver.returncode != 0:
        raise BenchError(f"docker is not usable: {ver.stderr.strip()}")
    docker_version = ver.stdout.strip()
    image = args.image
    if image is None:
        built = subprocess.run([str(REPO / "scripts/test-image.sh"), "build"], capture_output=True, text=True, timeout=600)
        if built.returncode != 0:
            raise BenchError(f"scripts/test-image.sh build failed:\n{built.stderr}")
        image = built.stdout.strip().splitlines()[-1]
    measure_rss = "d" in only
    rss_note = None
    if measure_rss:
        probe = subprocess.run([GNU_TIME, "--version"], capture_output=True, text=True) if os.access(GNU_TIME, os.X_OK) else None
        if probe is None or "GNU" not in (probe.stdout + probe.stderr):
            measure_rss = False
            rss_note = f"GNU time not found at {GNU_TIME}"
    if "d" in only:
        only.add("c")  # (d) is measured during (c)
    berth_version = subprocess.run([str(args.berth), "--version"], capture_output=True, text=True).stdout.strip()
    berth_commit = git_describe()

    load_before = os.getloadavg()
    if load_before[0] > (os.cpu_count() or 1) * 0.5:
        progress(f"note: load average is {load_before[0]:.1f} on {os.cpu_count()} CPUs; figures will be noisy")
    tmp = Path(tempfile.mkdtemp(prefix="berth-bench-"))
    token = uuid.uuid4().hex[:12]
    bench = Bench(args.berth, image, tmp, token, measure_rss)
    results: list[dict] = []
    error: str | None = None
    try:
        if "a" in only:
            s = interleaved(args.runs, args.warmup, lambda t: bench.run(t, CMD_TRUE, "wait"),
                            lambda m: progress(f"(a) cold run `true` {m}"))
            b, d = median(s["berth"], "wall"), median(s["docker"], "wall")
            results.append(dict(
                id="a", name="cold run `true`, wall time", unit="s",
                berth=b, docker=d, ratio=b / d, target="berth/docker <= 1.0", passed=b / d <= 1.0,
                samples={t: [x["wall"] for x in v] for t, v in s.items()},
            ))
        if "b" in only:
            s = interleaved(args.runs, args.warmup, lambda t: bench.run(t, CMD_FIRST_LINE, "first-line"),
                            lambda m: progress(f"(b) time to first line {m}"))
            b, d = median(s["berth"], "first_line"), median(s["docker"], "first_line")
            results.append(dict(
                id="b", name="time to first output line", unit="s",
                berth=b, docker=d, ratio=b / d, target=None, passed=None,
                samples={t: [x["first_line"] for x in v] for t, v in s.items()},
                wall_samples={t: [x["wall"] for x in v] for t, v in s.items()},
            ))
        if "c" in only:
            def stream(tool: str) -> dict:
                r = bench.run(tool, CMD_STREAM, "count", rss=measure_rss)
                if r["bytes"] != STREAM_BYTES:
                    raise BenchError(f"{tool} delivered {r['bytes']} bytes on stdout, expected exactly {STREAM_BYTES}")
                r["mib_s"] = STREAM_BYTES / MIB / r["wall"]
                return r

            s = interleaved(args.runs, args.warmup, stream, lambda m: progress(f"(c) 500 MiB to stdout {m}"))
            b, d = median(s["berth"], "mib_s"), median(s["docker"], "mib_s")
            results.append(dict(
                id="c", name="500 MiB to stdout, throughput", unit="MiB/s",
                berth=b, docker=d, ratio=b / d, target="berth/docker >= 2.5", passed=b / d >= 2.5,
                samples={t: [x["mib_s"] for x in v] for t, v in s.items()},
                wall_samples={t: [x["wall"] for x in v] for t, v in s.items()},
            ))
            if "d" in only:
                if measure_rss:
                    rb = [x["rss_kib"] for x in s["berth"]]
                    rd = [x["rss_kib"] for x in s["docker"]]
                    results.append(dict(
                        id="d", name="berth peak RSS during (c)", unit="MiB",
                        berth=statistics.median(rb) / 1024, berth_max=max(rb) / 1024,
                        docker=statistics.median(rd) / 1024, ratio=None,
                        target="max <= 32 MiB", passed=max(rb) <= RSS_TARGET_KIB,
                        samples={"berth": [k / 1024 for k in rb], "docker_cli": [k / 1024 for k in rd]},
                    ))
                else:
                    results.append(dict(id="d", name="berth peak RSS during (c)", unit="MiB", berth=None,
                                        docker=None, ratio=None, target="max <= 32 MiB", passed=None, note=rss_note))
    except BenchError as e:
        error = str(e)
    except KeyboardInterrupt:
        error = "interrupted"
    finally:
        try:
            left = bench.leftover_containers()
        except (BenchError, subprocess.SubprocessError) as e:
            left = []
            error = (error + "\n" if error else "") + f"could not check for leftover containers: {e}"
        if left:
            subprocess.run(["docker", "rm", "-f", *left], capture_output=True, timeout=120)
            error = (error + "\n" if error else "") + f"containers were left behind (now removed): {' '.join(left)}"
        shutil.rmtree(tmp, ignore_errors=True)

    if error:
        print(f"bench: error: {error}", file=sys.stderr)
        return 1

    meta = dict(
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        runs=args.runs, warmup=args.warmup, image=image, berth=berth_version, berth_commit=berth_commit,
        docker_server=docker_version, host=platform.node(), cpus=os.cpu_count(),
        kernel=platform.release(),
        loadavg_before=round(load_before[0], 2), loadavg_after=round(os.getloadavg()[0], 2),
    )
    if args.json:
        json.dump(dict(meta=meta, results=results), sys.stdout, indent=2)
        print()
    else:
        print_table(meta, results)
    return 0


def git_describe() -> str | None:
    """The repository's commit, with -dirty when the work tree has changes (the binary may be newer)."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=30)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def fmt(value, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value * 1000:.0f} ms"
    return f"{value:.1f} {unit}"


def print_table(meta: dict, results: list[dict]) -> None:
    commit = f" ({meta['berth_commit']})" if meta.get("berth_commit") else ""
    print(f"berth vs docker CLI - {meta['date']} - {meta['berth']}{commit}, Docker {meta['docker_server']}, "
          f"{meta['cpus']} CPUs, kernel {meta['kernel']}")
    print(f"image {meta['image']}; medians of {meta['runs']} runs each, interleaved, after {meta['warmup']} warm-up round(s); "
          f"1-min load average {meta['loadavg_before']:.1f} before, {meta['loadavg_after']:.1f} after")
    print()
    rows = [("workload", "berth", "docker", "ratio", "target", "result")]
    for r in results:
        berth = fmt(r["berth"], r["unit"])
        if r.get("berth_max") is not None:
            berth += f" (max {r['berth_max']:.1f})"
        docker = fmt(r["docker"], r["unit"])
        if r["id"] == "d" and r["docker"] is not None:
            docker += " (CLI)"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        result = {True: "PASS", False: "MISS", None: "-"}[r["passed"]]
        if r.get("note"):
            result = f"SKIP ({r['note']})"
        rows.append((f"({r['id']}) {r['name']}", berth, docker, ratio, r["target"] or "-", result))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        print("  ".join(cell.ljust(w) if i in (0, 4, 5) else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        sys.exit(1)
