#!/usr/bin/env python3
"""Benchmark: the egress path (shim forwarder -> unix socket -> berth's proxy -> upstream)
against a direct loopback connection.

Usage: python3 bench/egress.py [--bytes N] [--requests N] [--json] [--copy]

Workloads:
  (a) N bytes (default 1 GiB) uploaded through CONNECT, throughput   target proxy/direct >= 0.8
      (best of 3 each, direct and proxied rounds interleaved)
  (b) N small plain-HTTP requests, one connection each, p50 latency   target added <= 1 ms

The proxy is the real one (crates/berth-egress, the `egress-proxy` example, release build) and
the forwarder the real shim (`--egress`), both on this host; the upstream is a socket server in
this script on 127.0.0.2. Standard library only. Exits non-zero on any error.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHUNK = 1 << 20
REPLY = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sink_server() -> tuple[socket.socket, int]:
    """Counts what each connection sends and answers with the count when it half-closes."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.2", 0))
    srv.listen(64)

    def serve(conn: socket.socket) -> None:
        total = 0
        buf = bytearray(CHUNK)
        while True:
            n = conn.recv_into(buf)
            if n == 0:
                break
            total += n
        conn.sendall(str(total).encode())
        conn.close()

    def loop() -> None:
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    return srv, srv.getsockname()[1]


def http_server() -> tuple[socket.socket, int]:
    """Answers each request (one per connection) with a 2-byte body."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.2", 0))
    srv.listen(256)

    def loop() -> None:
        while True:
            conn, _ = srv.accept()
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            conn.sendall(REPLY)
            conn.close()

    threading.Thread(target=loop, daemon=True).start()
    return srv, srv.getsockname()[1]


def read_all(s: socket.socket) -> bytes:
    out = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return out
        out += chunk


def upload(addr: tuple[str, int], total: int, connect_to: str | None) -> float:
    payload = b"x" * CHUNK
    s = socket.create_connection(addr)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if connect_to:
        s.sendall(f"CONNECT {connect_to} HTTP/1.1\r\nhost: {connect_to}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(1)
        if b" 200 " not in head.split(b"\r\n")[0]:
            raise SystemExit(f"CONNECT refused: {head!r}")
    start = time.perf_counter()
    sent = 0
    while sent < total:
        n = min(CHUNK, total - sent)
        s.sendall(payload[:n])
        sent += n
    s.shutdown(socket.SHUT_WR)
    got = int(read_all(s) or b"0")
    elapsed = time.perf_counter() - start
    s.close()
    if got != total:
        raise SystemExit(f"upstream counted {got} bytes, sent {total}")
    return total / elapsed


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process `pid`, all its threads, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def forwarder_pids() -> list[int]:
    """The shim's forwarder processes (`berth-shim --forward`) of this benchmark."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmd and cmd[0].endswith(b"berth-shim") and b"--forward" in cmd:
                pids.append(int(entry.name))
    return pids


class CpuMeter:
    """CPU time spent by this script (client and upstream) and by the given processes."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.own = self.others = 0.0
        self.each = {p: 0.0 for p in pids}

    def measure(self, work):
        t0 = os.times()
        o0 = {p: cpu_seconds(p) for p in self.pids}
        result = work()
        t1 = os.times()
        self.own += (t1.user - t0.user) + (t1.system - t0.system)
        for p in self.pids:
            used = cpu_seconds(p) - o0[p]
            self.each[p] += used
            self.others += used
        return result


def request(addr: tuple[str, int], target: str) -> float:
    start = time.perf_counter()
    s = socket.create_connection(addr)
    s.sendall(f"GET {target} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
    answer = read_all(s)
    s.close()
    if not answer.endswith(b"ok"):
        raise SystemExit(f"bad answer: {answer!r}")
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bytes", type=int, default=1 << 30)
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--copy", action="store_true",
                    help="the forwarder copies bytes into the proxy's socket instead of handing "
                         "connections over (as under gVisor or over ssh), for comparison")
    args = ap.parse_args()

    for what in (["-p", "berth-egress", "--example", "egress-proxy"], ["-p", "berth-shim"]):
        subprocess.run(["cargo", "build", "--release", "-q", *what], cwd=REPO, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "release"
    _, sink_port = sink_server()
    _, http_port = http_server()
    work = Path(tempfile.mkdtemp(prefix="berth-egress-bench-"))
    procs: list[subprocess.Popen] = []
    try:
        proxy = subprocess.Popen(
            [str(target / "examples/egress-proxy"), str(work),
             f"127.0.0.2:{sink_port}", f"127.0.0.2:{http_port}"],
            stdout=subprocess.PIPE, text=True)
        procs.append(proxy)
        assert proxy.stdout and proxy.stdout.readline().strip() == "ready"
        if args.copy:
            # No handoff socket: the forwarder falls back to copying, as it does where
            # descriptors cannot reach the proxy.
            (work / "proxy.handoff.sock").unlink()
        fport = free_port()
        shim = subprocess.Popen(
            [str(target / "berth-shim"), "--no-setup", f"--egress-dir={work}",
             f"--egress={fport}:proxy", "--", "sleep", "3600"])
        procs.append(shim)
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", fport)).close()
                break
            except OSError:
                time.sleep(0.02)
        fwd = ("127.0.0.1", fport)

        # (a) throughput, best of 3 each, interleaved so that other load on the machine falls on
        # both alike
        # CPU time per GiB of each path as well: unlike the throughput, it hardly depends on
        # what else the machine is doing, and on a machine with fewer cores than the proxied
        # path has processes its ratio bounds the throughput ratio.
        direct_cpu, proxied_cpu = CpuMeter([]), CpuMeter([proxy.pid] + forwarder_pids())
        direct = proxied = 0.0
        for _ in range(3):
            direct = max(direct, direct_cpu.measure(
                lambda: upload(("127.0.0.2", sink_port), args.bytes, None)))
            proxied = max(proxied, proxied_cpu.measure(
                lambda: upload(fwd, args.bytes, f"127.0.0.2:{sink_port}")))
        gib = 3 * args.bytes / (1 << 30)
        direct_cpu_gib = direct_cpu.own / gib
        proxied_cpu_gib = (proxied_cpu.own + proxied_cpu.others) / gib
        proxy_cpu_gib = proxied_cpu.others / gib
        forwarder_cpu_gib = (proxied_cpu.others - proxied_cpu.each[proxy.pid]) / gib
        # (b) latency, interleaved
        d_lat, p_lat = [], []
        for _ in range(args.requests):
            d_lat.append(request(("127.0.0.2", http_port), "/"))
            p_lat.append(request(fwd, f"http://127.0.0.2:{http_port}/"))
        d50, p50 = statistics.median(d_lat), statistics.median(p_lat)
        result = {
            "bytes": args.bytes,
            "direct_MiB_s": round(direct / (1 << 20), 1),
            "proxy_MiB_s": round(proxied / (1 << 20), 1),
            "throughput_ratio": round(proxied / direct, 3),
            "direct_cpu_s_per_GiB": round(direct_cpu_gib, 3),
            "proxied_cpu_s_per_GiB": round(proxied_cpu_gib, 3),
            "proxy_and_forwarder_cpu_s_per_GiB": round(proxy_cpu_gib, 3),
            "forwarder_cpu_s_per_GiB": round(forwarder_cpu_gib, 3),
            "cpu_ratio": round(direct_cpu_gib / proxied_cpu_gib, 3) if proxied_cpu_gib else None,
            "requests": args.requests,
            "direct_p50_ms": round(d50 * 1000, 3),
            "proxy_p50_ms": round(p50 * 1000, 3),
            "added_p50_ms": round((p50 - d50) * 1000, 3),
            "targets_met": proxied / direct >= 0.8 and (p50 - d50) <= 0.001,
        }
        if args.json:
            print(json.dumps(result))
        else:
            print(f"(a) {args.bytes >> 20} MiB through CONNECT: direct {result['direct_MiB_s']} MiB/s, "
                  f"proxy {result['proxy_MiB_s']} MiB/s, ratio {result['throughput_ratio']} (target >= 0.8)")
            print(f"    CPU per GiB: direct {result['direct_cpu_s_per_GiB']} s, proxied "
                  f"{result['proxied_cpu_s_per_GiB']} s (proxy and forwarder "
                  f"{result['proxy_and_forwarder_cpu_s_per_GiB']} s, of which the forwarder "
                  f"{result['forwarder_cpu_s_per_GiB']} s), direct/proxied "
                  f"{result['cpu_ratio']}")
            print(f"(b) {args.requests} requests: direct p50 {result['direct_p50_ms']} ms, proxy p50 "
                  f"{result['proxy_p50_ms']} ms, added {result['added_p50_ms']} ms (target <= 1 ms)")
        return 0
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
