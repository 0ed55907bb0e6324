"""`harness bench connect`: how far the harness's ramp is from the kernel's own cost of a loopback
connection, both measured in one invocation.

1. The floor: `connect.c`, compiled here with the system's C compiler, connects N times to a forked
   acceptor (blocking, IP_BIND_ADDRESS_NO_PORT, several source addresses) and both keep every
   connection; each side's user and system CPU over its loop, per connection. Repeated; the
   median is the figure.
2. The harness: `harness run --backend selectors --connections N` (Locust master and workers, the
   server processes), its CPU per connection over the ramp by part (`run.json`
   `cpu_per_connection`).
3. The ratio of the two, which the README quotes.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import subprocess
import tempfile
from pathlib import Path

from harness.results.rundoc import cpu_between

SOURCE = Path(__file__).with_name("connect.c")
CACHE = Path(tempfile.gettempdir()) / "harness-build"
SOURCES = 4


class BenchError(RuntimeError):
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
    for _ in range(repeats):
        try:
            done = subprocess.run([str(helper()), str(connections), str(SOURCES)], capture_output=True, text=True,
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
        rows.append(row)
    return {"repeats": rows, "median_us": statistics.median(r["us_per_connection"] for r in rows)}


def harness_cost(connections: int, out: Path) -> dict:
    """One `harness run` of the same N; its CPU per connection over the whole ramp, by part."""
    from harness.run.execute import RunConfig, execute, prepare

    doc, run_dir = execute(prepare(RunConfig(backend="selectors", connections=connections, hold=1.0,
                                             echo_interval=120.0, out=str(out))), progress=False)
    series = [p for p in doc["series"] if "server_cpu_user_s" in p]
    start = next((p for p in series if p["phase"] == "ramp"), series[0])
    parts = cpu_between(start, max(series, key=lambda p: p["server_open"]))
    total = parts.pop("total_us")
    return {"run": str(run_dir), "held": doc["peak_connections"], "connect_rate_per_s": doc["connect_rate_per_s"],
            "parts_us": parts, "us_per_connection": total, "mismatched": doc["echo"]["mismatched"]}


def bench_connect(connections: int, repeats: int, out: Path) -> dict:
    floor = kernel_cost(connections, repeats)
    ours = harness_cost(connections, out)
    return {"connections": connections, "kernel": floor, "harness": ours,
            "ratio": round(ours["us_per_connection"] / floor["median_us"], 1) if floor["median_us"] else None}
