#!/usr/bin/env python3
"""Benchmark: copy mode's upload and download of a workspace, against `docker cp`.

Usage: python3 bench/workspace.py [--runs N] [--warmup N] [--files N] [--mib N] [--json]
                                  [--image IMG] [--berth PATH] [--no-ssh]

A workspace of --files files (default 10,000) holding --mib MiB (default 200) of random bytes
is generated: 100 directories, each with one 1 MB file and small files making up the rest.
Four ways move it into a created container and back out, each N times, interleaved:
  berth local   `berth run --workspace-mode copy -- true` on the local socket; the upload and
                the download (with its safe extraction) are timed by berth itself and read from
                the run's run.json (`workspace.upload`, `workspace.download`)
  berth ssh     the same with `--engine box`, an engine reached through an sshd on loopback
                started by this script (as crates/berth/tests/support/ssh.rs does)
  docker cp     `docker cp WS CONTAINER:/workspace` into a created container, then
                `docker cp CONTAINER:/workspace OUT` (the reference), each timed from outside
  docker cp ssh the same with DOCKER_HOST=ssh://... through the same sshd
Reported: median MiB/s of file content per direction, and berth's ratio to docker cp (> 1 means
berth is faster). Exits non-zero on any error or when a container is left behind.
Standard library only.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


class BenchError(Exception):
    pass


def sh(argv: list[str], env: dict | None = None, timeout: int = 600) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
    if out.returncode != 0:
        raise BenchError(f"{' '.join(argv)}: exit {out.returncode}: {out.stderr.strip()}")
    return out.stdout.strip()


def generate(root: Path, files: int, mib: int) -> int:
    """Writes the workspace; returns its bytes of file content."""
    dirs = 100
    # Half the bytes in one bigger file per directory (1 MB at the default size).
    big = min(1_000_000, mib * 1024 * 1024 // (2 * dirs))
    small_count = files - dirs
    small = max(1, (mib * 1024 * 1024 - dirs * big) // max(1, small_count))
    total = 0
    for d in range(dirs):
        sub = root / f"dir{d:03}"
        sub.mkdir(parents=True)
        (sub / "big.bin").write_bytes(os.urandom(big))
        total += big
        for f in range(small_count // dirs + (1 if d < small_count % dirs else 0)):
            (sub / f"f{f:04}.dat").write_bytes(os.urandom(small))
            total += small
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sshd:
    """An sshd on 127.0.0.1 accepting a fresh client key for the current user."""

    def __init__(self, dir: Path):
        self.dir = dir
        dir.mkdir(mode=0o700)
        self.key = dir / "id_client"
        self.known_hosts = dir / "known_hosts"
        for key in (dir / "host_key", self.key):
            sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
        shutil.copy(self.key.with_suffix(".pub"), dir / "authorized_keys")
        self.port = free_port()
        config = dir / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {dir / 'host_key'}\n"
            f"AuthorizedKeysFile {dir / 'authorized_keys'}\nStrictModes no\nUsePAM no\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
            "PermitRootLogin prohibit-password\nAllowStreamLocalForwarding yes\nPidFile none\n"
        )
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", exist_ok=True)
        self.proc = subprocess.Popen(
            ["/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(dir / "sshd.log", "wb"),
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise BenchError("sshd never opened its port")
                time.sleep(0.02)
        # The docker CLI runs `ssh` from PATH with no way to name a key: a wrapper adds it.
        self.bin = dir / "bin"
        self.bin.mkdir()
        wrapper = self.bin / "ssh"
        wrapper.write_text(
            f"#!/bin/sh\nexec /usr/bin/ssh -i {self.key} -o UserKnownHostsFile={self.known_hosts}"
            f" -o StrictHostKeyChecking=accept-new \"$@\"\n"
        )
        wrapper.chmod(0o755)

    def url(self) -> str:
        return f"ssh://{getpass.getuser()}@127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description="copy mode's transfers vs docker cp")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--mib", type=int, default=200)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-ssh", action="store_true", help="only the local socket")
    ap.add_argument("--image")
    ap.add_argument("--berth", type=Path, default=REPO / "target/release/berth")
    args = ap.parse_args()
    if not args.berth.exists():
        print(f"error: {args.berth} does not exist\nhint: cargo build --release", file=sys.stderr)
        return 2
    image = args.image or sh([str(REPO / "scripts/test-image.sh"), "build"])

    token = uuid.uuid4().hex[:8]
    tmp = Path(tempfile.mkdtemp(prefix="berth-bench-ws-"))
    ws = tmp / "workspace"
    state = tmp / "state"
    sshd = None
    status = 0
    samples: dict[str, dict[str, list[float]]] = {}
    try:
        print(f"generating {args.files} files, {args.mib} MiB in {ws}", file=sys.stderr)
        total = generate(ws, args.files, args.mib)
        env = dict(os.environ)
        for var in ("BERTH_STATE_DIR", "DOCKER_HOST"):
            env.pop(var, None)
        env.update(NO_COLOR="1", XDG_CONFIG_HOME=str(tmp / "config"),
                   XDG_CACHE_HOME=str(tmp / "cache"))
        ways = {"berth local": None, "docker cp": None}
        if not args.no_ssh:
            sshd = Sshd(tmp / "ssh")
            config = tmp / "config" / "berth"
            config.mkdir(parents=True)
            (config / "config.toml").write_text(
                f'[engines.box]\nhost = "{sshd.url()}"\nidentity = "{sshd.key}"\n'
                f'ssh_options = ["UserKnownHostsFile={sshd.known_hosts}", '
                f'"StrictHostKeyChecking=accept-new"]\n'
            )
            ways["berth ssh"] = None
            ways["docker cp ssh"] = None
        docker_ssh_env = None
        if sshd:
            docker_ssh_env = dict(env)
            docker_ssh_env["DOCKER_HOST"] = sshd.url()
            docker_ssh_env["PATH"] = f"{sshd.bin}:{env.get('PATH', '')}"

        def berth(engine: str | None) -> tuple[float, float]:
            argv = [str(args.berth), "run", "--image", image, "--workspace", str(ws),
                    "--workspace-mode", "copy", "--state-dir", str(state)]
            if engine:
                argv += ["--engine", engine]
            sh(argv + ["--", "true"], env=env)
            runs = state / "runs"
            run = sorted(runs.iterdir())[-1]
            record = json.loads((run / "run.json").read_text())
            shutil.rmtree(run)
            w = record.get("workspace") or {}
            if record.get("state") != "succeeded" or "upload" not in w or "download" not in w:
                raise BenchError(f"berth run: {record.get('state')} {record.get('reason')}")
            if w["upload"]["bytes"] != total or w["download"]["bytes"] != total:
                raise BenchError(f"berth moved {w['upload']['bytes']} / {w['download']['bytes']}"
                                 f" bytes, expected {total}")
            return w["upload"]["millis"] / 1000, w["download"]["millis"] / 1000

        def docker_cp(denv: dict | None) -> tuple[float, float]:
            cid = sh(["docker", "create", "--label", f"berth.bench={token}", image, "true"],
                     env=denv)
            out = tmp / "out"
            try:
                t0 = time.perf_counter()
                sh(["docker", "cp", str(ws), f"{cid}:/workspace"], env=denv)
                t1 = time.perf_counter()
                sh(["docker", "cp", f"{cid}:/workspace", str(out)], env=denv)
                t2 = time.perf_counter()
            finally:
                subprocess.run(["docker", "rm", "-f", cid], capture_output=True, timeout=120)
                shutil.rmtree(out, ignore_errors=True)
            return t1 - t0, t2 - t1

        actions = {
            "berth local": lambda: berth(None),
            "docker cp": lambda: docker_cp(env),
            "berth ssh": lambda: berth("box"),
            "docker cp ssh": lambda: docker_cp(docker_ssh_env),
        }
        keys = list(ways)
        samples = {k: {"up": [], "down": []} for k in keys}
        for i in range(args.warmup + args.runs):
            order = keys if i % 2 == 0 else list(reversed(keys))
            for key in order:
                up, down = actions[key]()
                if i >= args.warmup:
                    samples[key]["up"].append(up)
                    samples[key]["down"].append(down)
            print(f"{'warm-up' if i < args.warmup else f'{i - args.warmup + 1}/{args.runs}'}",
                  file=sys.stderr, flush=True)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        status = 1
    finally:
        if sshd:
            sshd.stop()
        leftovers = cleanup(tmp, token)
    if leftovers:
        print(f"error: containers left behind: {leftovers}", file=sys.stderr)
        status = 1
    if status:
        return status

    mib = total / (1 << 20)
    results = {}
    for key, s in samples.items():
        up, down = statistics.median(s["up"]), statistics.median(s["down"])
        results[key] = {"upload_s": round(up, 2), "download_s": round(down, 2),
                        "upload_mib_s": round(mib / up, 1), "download_mib_s": round(mib / down, 1)}
    for berth_key, ref_key in (("berth local", "docker cp"), ("berth ssh", "docker cp ssh")):
        if berth_key in results:
            b, r = results[berth_key], results[ref_key]
            b["upload_vs_docker_cp"] = round(b["upload_mib_s"] / r["upload_mib_s"], 2)
            b["download_vs_docker_cp"] = round(b["download_mib_s"] / r["download_mib_s"], 2)
    meta = {"runs": args.runs, "files": args.files, "mib": round(mib, 1), "image": image}
    if args.json:
        print(json.dumps({**meta, "results": results}, indent=2))
    else:
        print(f"{args.files} files, {mib:.1f} MiB; median of {args.runs} runs "
              "(ratio > 1: berth is faster than docker cp)")
        print(f"{'way':<14} {'upload':>16} {'download':>16} {'up ratio':>9} {'down ratio':>11}")
        for key, r in results.items():
            ratio_up = f"{r['upload_vs_docker_cp']:.2f}x" if "upload_vs_docker_cp" in r else "-"
            ratio_down = (f"{r['download_vs_docker_cp']:.2f}x"
                          if "download_vs_docker_cp" in r else "-")
            print(f"{key:<14} {r['upload_mib_s']:>7.1f} MiB/s {r['upload_s']:>4.1f}s"
                  f" {r['download_mib_s']:>7.1f} MiB/s {r['download_s']:>4.1f}s"
                  f" {ratio_up:>9} {ratio_down:>11}")
    return 0


def cleanup(tmp: Path, token: str) -> list[str]:
    """Removes the reference containers and any berth container of this benchmark's runs."""

    def ours() -> list[str]:
        ids = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label=berth.bench={token}"],
            capture_output=True, text=True, timeout=60,
        ).stdout.split()
        out = subprocess.run(
            ["docker", "ps", "-a", "--filter", "label=berth.managed=true",
             "--format", '{{.ID}} {{.Label "berth.run-dir"}}'],
            capture_output=True, text=True, timeout=60,
        ).stdout
        return ids + [line.split()[0] for line in out.splitlines() if str(tmp) in line]

    left = ours()
    if left:
        subprocess.run(["docker", "rm", "-f", *left], capture_output=True, timeout=120)
    shutil.rmtree(tmp, ignore_errors=True)
    return left


if __name__ == "__main__":
    sys.exit(main())
