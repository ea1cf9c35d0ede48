#!/usr/bin/env python3
"""Benchmark: what gVisor costs, against runc, in one run.

Usage: python3 bench/gvisor.py [--runs N] [--json] [--image IMG] [--berth PATH]

For each isolation (runc, gvisor), interleaved, N times each, medians reported:
  cold run      `berth run --isolation I -- true`: spawn to exit (create, start, run, remove)
  first output  `berth run --isolation I -- sh -c 'echo ready; sleep 0.2'`: spawn to the line
  syscalls      `berth run` of a loop of 20,000 `stat` system calls (busybox `test -e`), minus
                the cold run: the cost of system calls under gVisor's user-space kernel
  file I/O      writing and reading back 64 MiB in the container's /home (dd), minus the cold run
and the ratio gvisor / runc for each.

Needs gVisor registered with the engine (`berth doctor` says how). Exits non-zero on any failed
run. Standard library only.
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
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ISOLATIONS = ["runc", "gvisor"]
SYSCALLS = "i=0; while [ $i -lt 20000 ]; do test -e /; i=$((i+1)); done"
FILE_IO = ("dd if=/dev/zero of=$HOME/f bs=1M count=64 2>/dev/null && "
           "dd if=$HOME/f of=/dev/null bs=1M 2>/dev/null && rm $HOME/f")


class BenchError(Exception):
    pass


def timed(argv: list[str], env: dict, first_line: bytes | None = None) -> float:
    """Seconds from spawn to exit, or to `first_line` on stdout; the process must exit 0."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, bufsize=0)
    elapsed = None
    if first_line is not None:
        line = proc.stdout.readline()
        elapsed = time.perf_counter() - start
        if line != first_line:
            proc.kill()
            raise BenchError(f"{' '.join(argv)}: first line {line!r}")
    _, err = proc.communicate(timeout=300)
    if elapsed is None:
        elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(argv)}: exit {proc.returncode}\n"
                         f"{err.decode(errors='replace')}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--image")
    parser.add_argument("--berth", default=str(REPO / "target/release/berth"))
    args = parser.parse_args()
    berth = os.path.abspath(args.berth)
    if not os.path.exists(berth):
        berth = str(REPO / "target/debug/berth")
    image = args.image or subprocess.run(
        [str(REPO / "scripts/test-image.sh"), "build"], capture_output=True, text=True,
        check=True).stdout.strip()

    with tempfile.TemporaryDirectory(prefix="berth-bench-gvisor-") as tmp:
        env = dict(os.environ, NO_COLOR="1", XDG_DATA_HOME=f"{tmp}/data",
                   XDG_CACHE_HOME=f"{tmp}/cache", XDG_CONFIG_HOME=f"{tmp}/config")
        env.pop("DOCKER_HOST", None)
        workspace = Path(tmp) / "ws"
        workspace.mkdir()
        os.chdir(workspace)

        def run(isolation: str, command: list[str], first: bytes | None = None) -> float:
            argv = [berth, "run", "--isolation", isolation, "--image", image,
                    "--workspace-mode", "none", "--", *command]
            return timed(argv, env, first)

        cases = {
            "cold run": lambda i: run(i, ["true"]),
            "first output": lambda i: run(i, ["sh", "-c", "echo ready; sleep 0.2"], b"ready\n"),
            "syscalls": lambda i: run(i, ["sh", "-c", SYSCALLS]),
            "file I/O": lambda i: run(i, ["sh", "-c", FILE_IO]),
        }
        times: dict[str, dict[str, list[float]]] = {c: {i: [] for i in ISOLATIONS} for c in cases}
        for isolation in ISOLATIONS:  # warm-up: the shim installed, the page cache filled
            run(isolation, ["true"])
        for _ in range(args.runs):
            for case, fn in cases.items():
                for isolation in ISOLATIONS:
                    times[case][isolation].append(fn(isolation))

    medians = {c: {i: statistics.median(v) * 1000 for i, v in t.items()} for c, t in times.items()}
    # The work itself: syscall loop and file I/O less the cold run around them.
    for case in ["syscalls", "file I/O"]:
        for isolation in ISOLATIONS:
            medians[case][isolation] -= medians["cold run"][isolation]
    result = {c: dict(m, ratio=m["gvisor"] / m["runc"] if m["runc"] > 0 else None)
              for c, m in medians.items()}
    if args.json:
        print(json.dumps({"runs": args.runs, "medians_ms": result}, indent=2))
    else:
        print(f"{args.runs} runs each, medians (syscalls and file I/O: less the cold run)")
        print(f"{'':14} {'runc':>10} {'gvisor':>10} {'ratio':>7}")
        for case, m in result.items():
            print(f"{case:14} {m['runc']:8.0f}ms {m['gvisor']:8.0f}ms {m['ratio']:6.2f}x")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
