#!/usr/bin/env python3
"""Benchmark: start-to-first-output of a run in a held container, against `docker exec`.

Usage: python3 bench/held.py [--runs N] [--warmup N] [--json] [--image IMG] [--berth PATH]

Three ways of running `sh -c 'echo ready'` in a container that is already started, each N times,
interleaved, medians reported:
  pool        `berth run` with a warm pool ([pool."IMG"] size = 2): takes a ready container,
              execs into it, refills the pool in the background, removes the used container
  persistent  `berth run --name NAME`: execs into the one persistent container
  docker exec `docker exec CONTAINER sh -c 'echo ready'` into a running container (reference)

Time is measured from spawning the process to reading the line `ready` on its stdout.
Targets: berth's median <= 50 ms and <= 0.5 x docker exec's.

Exits 0 when every run worked (even if a target is missed), non-zero on any error: a failed run,
wrong output, a container left behind. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET_MS = 50.0
TARGET_RATIO = 0.5
COMMAND = ["sh", "-c", "echo ready"]


class BenchError(Exception):
    pass


def first_line_time(argv: list[str], env: dict | None) -> float:
    """Seconds from spawn to the line `ready` on stdout; the process must then exit 0."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, bufsize=0)
    line = proc.stdout.readline()
    elapsed = time.perf_counter() - start
    out, err = proc.communicate(timeout=120)
    if line != b"ready\n" or proc.returncode != 0:
        raise BenchError(f"{' '.join(argv)}: first line {line!r}, exit {proc.returncode}\n"
                         f"{err.decode(errors='replace')}")
    return elapsed


def docker(*args: str) -> str:
    out = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise BenchError(f"docker {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout.strip()


def main() -> int:
    ap = argparse.ArgumentParser(description="held containers vs docker exec")
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--image")
    ap.add_argument("--berth", type=Path, default=REPO / "target/release/berth")
    args = ap.parse_args()
    if not args.berth.exists():
        print(f"error: {args.berth} does not exist\nhint: cargo build --release", file=sys.stderr)
        return 2
    image = args.image or subprocess.run(
        [str(REPO / "scripts/test-image.sh"), "build"], capture_output=True, text=True, check=True
    ).stdout.strip()

    token = uuid.uuid4().hex[:8]
    tmp = Path(tempfile.mkdtemp(prefix="berth-bench-held-"))
    workspace = tmp / "workspace"
    workspace.mkdir()
    (workspace / "berth.toml").write_text(f'[pool."{image}"]\nsize = 2\n')
    env = dict(os.environ)
    env.pop("BERTH_STATE_DIR", None)
    env["XDG_CONFIG_HOME"] = str(tmp / "config")
    env["NO_COLOR"] = "1"
    name = f"bench{token}"
    reference = f"berth-bench-exec-{token}"

    def berth(*extra: str) -> list[str]:
        return [str(args.berth), "run", "--image", image, "--workspace", str(workspace),
                "--workspace-mode", "none", *extra, "--", *COMMAND]

    ways = {
        "pool": lambda: first_line_time(berth(), env),
        "persistent": lambda: first_line_time(berth("--name", name), env),
        "docker exec": lambda: first_line_time(["docker", "exec", reference, *COMMAND], None),
    }
    samples: dict[str, list[float]] = {k: [] for k in ways}
    status = 0
    try:
        docker("run", "-d", "--rm", "--network", "none", "--name", reference,
               "--label", f"berth.bench={token}", image, "sleep", "3600")
        keys = list(ways)
        for i in range(args.warmup + args.runs):
            order = keys if i % 2 == 0 else list(reversed(keys))
            for key in order:
                t = ways[key]()
                if i >= args.warmup:
                    samples[key].append(t)
            print(f"{'warm-up' if i < args.warmup else f'{i - args.warmup + 1}/{args.runs}'}",
                  file=sys.stderr, flush=True)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        status = 1
    finally:
        leftovers = cleanup(tmp, token, reference)
    if leftovers:
        print(f"error: containers left behind: {leftovers}", file=sys.stderr)
        status = 1
    if status:
        return status

    med = {k: statistics.median(v) * 1000 for k, v in samples.items()}
    ref = med["docker exec"]
    results = {
        k: {"median_ms": round(med[k], 1), "ratio_vs_docker_exec": round(med[k] / ref, 2),
            "meets_target": k == "docker exec" or (med[k] <= TARGET_MS and med[k] / ref <= TARGET_RATIO)}
        for k in ways
    }
    if args.json:
        print(json.dumps({"runs": args.runs, "image": image, "results": results}, indent=2))
    else:
        print(f"start to first output, median of {args.runs} (target <= {TARGET_MS:.0f} ms and "
              f"<= {TARGET_RATIO} x docker exec)")
        print(f"{'way':<12} {'median':>9} {'vs docker exec':>15}  target")
        for k, r in results.items():
            mark = "-" if k == "docker exec" else ("met" if r["meets_target"] else "MISSED")
            print(f"{k:<12} {r['median_ms']:>6.1f} ms {r['ratio_vs_docker_exec']:>14.2f}x  {mark}")
    return 0


def cleanup(tmp: Path, token: str, reference: str) -> list[str]:
    """Removes the reference container and every held container of this run's workspace."""
    subprocess.run(["docker", "rm", "-f", reference], capture_output=True, timeout=60)
    out = subprocess.run(
        ["docker", "ps", "-a", "--filter", "label=berth.held",
         "--format", '{{.ID}} {{.Label "berth.held-dir"}}'],
        capture_output=True, text=True, timeout=60,
    ).stdout
    ids = [line.split()[0] for line in out.splitlines() if str(tmp) in line]
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, timeout=120)
    subprocess.run(["rm", "-rf", str(tmp)], timeout=60)
    left = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=berth.bench={token}"],
        capture_output=True, text=True, timeout=60,
    ).stdout.split()
    out = subprocess.run(
        ["docker", "ps", "-a", "--filter", "label=berth.held",
         "--format", '{{.ID}} {{.Label "berth.held-dir"}}'],
        capture_output=True, text=True, timeout=60,
    ).stdout
    return left + [line.split()[0] for line in out.splitlines() if str(tmp) in line]


if __name__ == "__main__":
    sys.exit(main())
