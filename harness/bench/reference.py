"""`harness bench reference`: echo throughput beside a C event loop on the same machine.

Debian's redis-server answering redis-benchmark's PING is the reference: a single-threaded C event
loop doing about the least a request can cost. The same C client measures our backends:
redis-benchmark's PING_MBULK sends the RESP array `*1\\r\\n$4\\r\\nPING\\r\\n`, and an echo server
sends back that same array, which is a valid reply, so redis-benchmark counts it like a PONG. One
client, the same connections and the same pipelining for every server; each backend runs as one
server process, like redis-server; the figures are ratios to the reference, taken in one run
because timings on a shared two-core machine drift between runs. redis-benchmark is itself one
single-threaded process, so it can be the ceiling: each server's own CPU time per request is
reported beside its rate, which says what the server costs whatever the client manages.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import socket
import subprocess
import time

import psutil

from harness.core.backends import ServerConfig
from harness.core.refusal import Refused
from harness.run.cluster import free_port
from servers.supervisor import ServerGroup

INSTALL_HINT = ("install Debian's redis-server and redis-tools "
                "(make reference does: apt-get install redis-server redis-tools)")


class ReferenceMissing(Refused, RuntimeError):
    pass


def find_tools() -> tuple[str, str]:
    server, client = shutil.which("redis-server"), shutil.which("redis-benchmark")
    if not (server and client):
        raise ReferenceMissing(f"redis-server and redis-benchmark are needed for the C reference; {INSTALL_HINT}")
    return server, client


def redis_benchmark(client: str, port: int, connections: int, requests: int, server_pid: int) -> tuple[float, float]:
    """Requests a second of PING_MBULK, as redis-benchmark reports them (CSV), and the server's
    CPU microseconds per request meanwhile."""
    server = psutil.Process(server_pid)
    before = server.cpu_times()
    out = subprocess.run([client, "-h", "127.0.0.1", "-p", str(port), "-c", str(connections), "-n", str(requests),
                          "-t", "ping_mbulk", "-P", "1", "--csv"], capture_output=True, text=True, timeout=300,
                         check=True).stdout
    rows = list(csv.reader(io.StringIO(out)))
    if len(rows) < 2 or "PING_MBULK" not in rows[1][0]:
        raise RuntimeError(f"unexpected redis-benchmark output: {out[:200]!r}")
    after = server.cpu_times()
    cpu = after.user + after.system - before.user - before.system
    return float(rows[1][1]), cpu / requests * 1e6


def _wait_listening(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def bench_reference(backends: list[str], connections: int = 100, requests: int = 500_000) -> dict:
    server_bin, client = find_tools()
    port = free_port()
    redis = subprocess.Popen([server_bin, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                              "--protected-mode", "yes"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_listening(port)
        reference, reference_cpu = redis_benchmark(client, port, connections, requests, redis.pid)
    finally:
        redis.terminate()
        redis.wait(10)
    version = subprocess.run([server_bin, "--version"], capture_output=True, text=True).stdout.strip()
    print(f"  redis-server (C reference)   {reference:>10,.0f} req/s          server CPU {reference_cpu:5.2f} µs/req",
          flush=True)
    rows = [{"server": "redis-server", "req_per_s": reference, "ratio": 1.0, "server_cpu_us_per_req": reference_cpu}]
    for name in backends:
        with ServerGroup(ServerConfig(backend=name, port=0), log_file=os.devnull) as group:
            rate, cpu = redis_benchmark(client, group.port, connections, requests, group.board.read(0)["pid"])
        rows.append({"server": name, "req_per_s": rate, "ratio": rate / reference, "server_cpu_us_per_req": cpu,
                     "cpu_ratio": cpu / reference_cpu})
        print(f"  {name:<28} {rate:>10,.0f} req/s  {rate / reference:.2f}×  server CPU {cpu:5.2f} µs/req "
              f"({cpu / reference_cpu:.1f}× the reference's)", flush=True)
    return {"client": "redis-benchmark -t ping_mbulk -P 1", "connections": connections, "requests": requests,
            "reference": version, "rows": rows}
