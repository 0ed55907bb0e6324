"""`harness bench connect`: how far the harness's ramp is from the kernel's own cost of a loopback
connection, both measured in one invocation.

1. The floor: `connect.c`, compiled here with the system's C compiler, connects N times to a forked
   acceptor (blocking, IP_BIND_ADDRESS_NO_PORT, several source addresses) and both keep every
   connection; each side's user and system CPU over its loop, per connection. Repeated; the
   median is the figure. With `--held H`, measured again beside H connections the same helper
   holds (in processes of HOLDER_CONNECTIONS each): what the kernel's own cost becomes late in a
   big ramp, and what the rest of the machine spends meanwhile (`background`: the CPU of every
   process but the holders over a quiet window, and the busiest of them by name).
2. The harness: `harness run --backend selectors --connections N` (Locust master and workers, the
   server processes), its CPU per connection over the ramp by part (`run.json`
   `cpu_per_connection`).
3. The ratio of the two, which the README quotes.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from harness.core.refusal import Refused
from harness.core.rundoc import cpu_between
from harness.system.limits import read_limits

SOURCE = Path(__file__).with_name("connect.c")
CACHE = Path(tempfile.gettempdir()) / "harness-build"
SOURCES = 4
HOLDER_CONNECTIONS = 18_000  # per holder: its connector and its acceptor each keep one fd a connection
HOLD_BYTES_PER_CONNECTION = 7 * 1024  # kernel memory of a held loopback connection, both ends (6.2 KB measured)
MEMORY_RESERVE = 1 << 30
QUIET_S = 5.0  # the window over which the machine's background CPU is read while only holding


class BenchError(Refused, RuntimeError):
    """The helper could not be built or run; the message says why."""


def helper() -> Path:
    """The compiled helper, built once per source version."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    binary = CACHE / f"connect_cost-{digest}"
    if not binary.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = binary.with_suffix(".tmp")
        done = subprocess.run(["cc", "-O2", "-Wall", "-o", str(tmp), str(SOURCE)], capture_output=True, text=True)
        if done.returncode:
            raise BenchError(f"cc could not build {SOURCE.name}: {done.stderr.strip()[:300]} (make installs gcc)")
        tmp.replace(binary)
    return binary


def kernel_cost(connections: int, repeats: int = 3) -> dict:
    """The C helper's CPU per connection, both sides, each repeat and the median (µs)."""
    rows = []
    binary = str(helper())  # built (once) before anything is timed
    for _ in range(repeats):
        busy_before, children_before, t0 = _busy_seconds(), _children_seconds(), time.monotonic()
        try:
            done = subprocess.run([binary, str(connections), str(SOURCES)], capture_output=True, text=True,
                                  timeout=120)
        except subprocess.TimeoutExpired:
            raise BenchError(f"connect_cost did not finish {connections:,} connections in 120 s") from None
        if done.returncode:
            raise BenchError(f"connect_cost failed: {done.stderr.strip()[:300]}")
        row = json.loads(done.stdout)
        n = row["connections"]
        row["us_per_connection"] = round(sum(row[k] for k in ("client_user_us", "client_system_us", "server_user_us",
                                                               "server_system_us")) / n, 2)
        row["kernel_share"] = round((row["client_system_us"] + row["server_system_us"])
                                    / max(1, row["us_per_connection"] * n), 3)
        row["rate_per_s"] = round(n / row["wall_s"])
        # what the rest of the machine ran meanwhile, in cores: all CPU time less the helper's
        # whole (both processes, start to exit: RUSAGE_CHILDREN), so it includes the connections'
        # softirq time, which the kernel charges to no process; it rises where another process
        # competes for the same sockets and cores
        others = _busy_seconds() - busy_before - (_children_seconds() - children_before)
        window = time.monotonic() - t0
        row["others_cores"] = round(max(0.0, others) / window, 2)
        # /proc/stat counts each CPU's time in clock ticks: up to a tick per CPU at each end of the window
        row["others_cores_error"] = round(2 * (os.cpu_count() or 1) / (os.sysconf("SC_CLK_TCK") * window), 2)
        rows.append(row)
    return {"repeats": rows, "median_us": statistics.median(r["us_per_connection"] for r in rows)}


def _busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (every CPU: all but idle and iowait; guest
    time is already inside user time)."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq + t.steal


def _children_seconds() -> float:
    """CPU seconds of this process's waited-for children (the helper, and its acceptor)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def held_error(held: int, connections: int, limits: dict) -> str | None:
    """Why `--held` cannot be held beside the measurement here (files, memory), or None."""
    total = held + connections
    files_free = limits["file_max"] - limits["file_nr"] - 1_000
    if 2 * total > files_free:
        return (f"--held {held:,}: {2 * total:,} files for both ends, and fs.file-max leaves {files_free:,}; "
                f"use --held {max(0, files_free // 2 - connections):,} or less")
    memory = limits["mem_available"] - MEMORY_RESERVE
    if total * HOLD_BYTES_PER_CONNECTION > memory:
        return (f"--held {held:,}: ~{total * HOLD_BYTES_PER_CONNECTION / 2**30:.1f} GiB of kernel memory, and "
                f"MemAvailable less a 1 GiB reserve is {max(0, memory) / 2**30:.1f} GiB; use --held "
                f"{max(0, memory // HOLD_BYTES_PER_CONNECTION - connections):,} or less")
    return None


def kernel_cost_beside(held: int, connections: int, repeats: int, quiet: float = QUIET_S) -> dict:
    """The floor again, with `held` connections kept open by holders of the same helper; and the
    CPU the rest of the machine spends while they only hold."""
    holders: list[subprocess.Popen] = []
    binary = str(helper())
    try:
        remaining = held
        while remaining > 0:
            n = min(HOLDER_CONNECTIONS, remaining)
            holders.append(subprocess.Popen([binary, str(n), str(SOURCES), "hold"], stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, text=True))
            remaining -= n
            done = held - remaining
            if len(holders) % 10 == 0 or remaining == 0:
                print(f"  holding {done:,}/{held:,}", file=sys.stderr, flush=True)
        for h in holders:  # each prints its JSON line once all its connections are up
            if not h.stdout.readline():
                raise BenchError(f"a holder of the helper failed: {h.stderr.read().strip()[:300]}")
        background = _background(quiet, {h.pid for h in holders})
        floor = kernel_cost(connections, repeats)
    finally:
        for h in holders:
            h.terminate()
        for h in holders:
            try:
                h.wait(30)
            except subprocess.TimeoutExpired:  # never seen: SIGTERM ends the helper at once
                h.kill()
                h.wait()
    return {"held": held, **floor, "background": background}


def _background(seconds: float, ours: set[int]) -> dict:
    """CPU used by every process but ours over `seconds` of holding, in cores, and the busiest."""
    def times() -> dict[int, tuple[str, float]]:
        out = {}
        for p in psutil.process_iter(["pid", "name", "cpu_times"]):
            ct = p.info["cpu_times"]
            if ct is not None and p.info["pid"] not in ours and p.info["pid"] != os.getpid():
                out[p.info["pid"]] = (p.info["name"], ct.user + ct.system)
        return out

    before, t0 = times(), time.monotonic()
    time.sleep(seconds)  # the window measured: nothing to wait for but time
    after, dt = times(), time.monotonic() - t0
    used = {pid: (name, c - before[pid][1]) for pid, (name, c) in after.items() if pid in before}
    busiest = max(used.items(), key=lambda kv: kv[1][1], default=(0, ("", 0.0)))
    return {"seconds": round(dt, 2), "cores": round(sum(c for _, c in used.values()) / dt, 3),
            "busiest": {"pid": busiest[0], "name": busiest[1][0], "cores": round(busiest[1][1] / dt, 3)}}


def harness_cost(connections: int, out: Path) -> dict:
    """One `harness run` of the same N; its CPU per connection over the whole ramp, by part."""
    from harness.run.config import RunConfig
    from harness.run.execute import execute
    from harness.run.prepare import prepare

    doc, run_dir = execute(prepare(RunConfig(backend="selectors", connections=connections, hold=1.0,
                                             echo_interval=120.0, out=str(out))), progress=False)
    series = [p for p in doc["series"] if "server_cpu_user_s" in p]
    start = next((p for p in series if p["phase"] == "ramp"), series[0])
    parts = cpu_between(start, max(series, key=lambda p: p["server_open"]))
    total = parts.pop("total_us")
    return {"run": str(run_dir), "held": doc["peak_connections"], "connect_rate_per_s": doc["connect_rate_per_s"],
            "parts_us": parts, "us_per_connection": total, "mismatched": doc["echo"]["mismatched"]}


def bench_connect(connections: int, repeats: int, out: Path, held: int = 0) -> dict:
    if held:
        error = held_error(held, connections, read_limits())
        if error:
            raise BenchError(error)
    floor = kernel_cost(connections, repeats)
    beside = kernel_cost_beside(held, connections, repeats) if held else None
    ours = harness_cost(connections, out)
    doc = {"connections": connections, "kernel": floor, "harness": ours,
           "ratio": round(ours["us_per_connection"] / floor["median_us"], 1) if floor["median_us"] else None}
    if beside is not None:
        doc["kernel_beside_held"] = beside
        doc["held_over_empty"] = round(beside["median_us"] / floor["median_us"], 2) if floor["median_us"] else None
    return doc
