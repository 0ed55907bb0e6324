"""`harness bench idle`: the idle-connection tax, per backend and per selector mechanism.

For each backend (and for `selectors`, each of epoll, poll and select), one server group on one
port holds 0, 1k, 10k, 100k idle connections in turn (lean hold clients, each connection
echo-verified), and at each point 100 active connections echo on a fixed schedule (the `paced`
client: open loop, latency from the intended send time, an HdrHistogram). Every variant runs with
the same number of server processes, planned for the largest point, so the only thing that
changes along a row is how many idle connections each event loop watches: epoll's cost follows
the ready connections, poll's every watched one, and select cannot watch an fd at or above
FD_SETSIZE (1,024) at all. Each point is measured in several windows and each percentile is
the median of the windows, so one window a neighbour on the machine disturbed does not decide it.
A point a backend cannot hold ends its row, with the reason the servers gave (FD_SETSIZE, EMFILE,
threads, ...).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from collections import Counter

from harness.bench.servers import CLIENT, read_event, server_rows, start_holders
from harness.core import planning
from harness.core.backends import SELECTORS, ServerConfig
from harness.core.records import refusals
from harness.system.limits import read_limits
from servers.supervisor import ServerGroup

IDLE_POINTS = (0, 1_000, 10_000, 100_000)


def variants(backends: list[str]) -> list[tuple[str, str]]:
    return [(b, m) for b in backends for m in (SELECTORS if b == "selectors" else ("",))]


def bench_idle(backends: list[str], idle_points=IDLE_POINTS, active: int = 100, per_second: float = 50.0,
               seconds: float = 5.0, repeats: int = 3) -> dict:
    limits = read_limits()
    processes = planning.plan(limits, max(idle_points) + active, backend="selectors").server_processes
    print(f"  {processes} server process(es) for every variant (planned for {max(idle_points):,} idle + {active} "
          f"active); {active} active connections × {per_second:g} echoes/s; at each point {repeats} windows of "
          f"{seconds:g} s, each percentile the median of the windows", flush=True)
    rows = []
    for backend, mechanism in variants(backends):
        name = f"{backend}/{mechanism}" if mechanism else backend
        points = _variant(backend, mechanism, processes, sorted(idle_points), active, per_second, seconds, repeats,
                          limits)
        for p in points:
            print(f"  {name:<16} idle {p['idle']:>7,}: " + (
                f"p50 {p['p50_ms']:7.3f} ms  p99 {p['p99_ms']:7.3f} ms  max {p['max_ms']:8.3f} ms  (p99 of each "
                f"window: {', '.join(f'{x:.2f}' for x in p['p99_windows_ms'])})"
                if "stopped" not in p else f"stopped: {p['stopped']} (held {p['held']:,})"), flush=True)
        rows.append({"backend": backend, "selector": mechanism or None, "name": name, "points": points})
    return {"active": active, "per_second": per_second, "seconds": seconds, "repeats": repeats,
            "server_processes": processes,
            "idle_points": list(idle_points), "rows": rows}


def _variant(backend: str, mechanism: str, processes: int, idle_points: list[int], active: int,
             per_second: float, seconds: float, repeats: int, limits: dict) -> list[dict]:
    config = ServerConfig(backend=backend, port=0, processes=processes, selector=mechanism or "epoll")
    points: list[dict] = []
    holders: list[subprocess.Popen] = []
    clients = 0
    with ServerGroup(config, log_file=os.devnull) as group:
        try:
            held = 0
            for n in idle_points:
                if n > held:
                    procs, _ = start_holders(group.port, n - held, limits, first_client=clients)
                    holders += procs
                    clients += len(procs)
                    events = [read_event(p, "held", 600) for p in procs]
                    held += sum(e["verified"] for e in events)
                    if any(e["failed"] for e in events):
                        points.append({"idle": n, "held": held, "stopped": _refused(group) or "connect failed"})
                        break
                windows = []
                for _ in range(repeats):
                    out = subprocess.run([*CLIENT, "paced", "--port", str(group.port), "--connections", str(active),
                                          "--per-second", str(per_second), "--seconds", str(seconds)],
                                         capture_output=True, text=True, timeout=seconds + 60)
                    if out.returncode != 0:  # the servers refused or dropped an active connection
                        break
                    windows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                if len(windows) < repeats:
                    points.append({"idle": held, "held": held, "stopped": _refused(group) or out.stderr.strip()[-200:]})
                    break
                points.append({"idle": held, **_combine(windows)})
        finally:
            for p in holders:
                p.kill()
                p.wait()
    return points


def _combine(windows: list[dict]) -> dict:
    """One point from its repeated windows, as pyperf does: each percentile is the median over the
    windows (one window that a neighbour on the machine disturbed does not move it), every window's
    p99 is kept to show the spread, and the histograms are pooled."""
    from hdrh.histogram import HdrHistogram

    pooled = HdrHistogram.decode(windows[0]["histogram"])
    for w in windows[1:]:
        pooled.decode_and_add(w["histogram"])
    point = {k: sum(w[k] for w in windows) for k in ("sent", "answered", "mismatched")}
    point.update({k: statistics.median(w[k] for w in windows) for k in ("p50_ms", "p90_ms", "p99_ms")})
    point.update(max_ms=max(w["max_ms"] for w in windows), p99_windows_ms=[w["p99_ms"] for w in windows],
                 histogram=pooled.encode().decode())
    return point


def _refused(group: ServerGroup, wait: float = 2.0) -> str:
    """The reason the servers refused most connections for, if they refused any. Waits a little:
    a server publishes its gauges every TICK_S, so a refusal the client saw may not be there yet."""
    deadline = time.monotonic() + wait
    while True:
        counts = Counter()
        for row in server_rows(group):
            counts.update(refusals(row))
        if counts or time.monotonic() > deadline:
            return counts.most_common(1)[0][0] if counts else ""
        time.sleep(0.05)
