"""`harness bench idle`: the idle-connection tax, per backend and per selector mechanism.

For each backend (and for `selectors`, each of epoll, poll and select), one server group on one
port holds 0, 1k, 10k, 100k idle connections in turn (lean hold clients, each connection
echo-verified), and at each point 100 active connections echo on a fixed schedule (the `paced`
client: open loop, latency from the intended send time, an HdrHistogram). Every variant runs with
the same number of server processes, planned for the largest point, so the only thing that
changes along a row is how many idle connections each event loop watches: epoll's cost follows
the ready connections, poll's every watched one, and select cannot watch an fd at or above
FD_SETSIZE (1,024) at all. A point a backend cannot hold ends its row, with the reason the servers
gave (FD_SETSIZE, EMFILE, threads, ...).
"""

from __future__ import annotations

import json
import os
import subprocess
import time

from harness import limits as limits_mod
from harness.bench import CLIENT, read_event, server_rows, start_holders
from servers.contract import ServerConfig
from servers.gauges import refusals
from servers.supervisor import ServerGroup

IDLE_POINTS = (0, 1_000, 10_000, 100_000)
MECHANISMS = ("epoll", "poll", "select")


def variants(backends: list[str]) -> list[tuple[str, str]]:
    return [(b, m) for b in backends for m in (MECHANISMS if b == "selectors" else ("",))]


def bench_idle(backends: list[str], idle_points=IDLE_POINTS, active: int = 100, per_second: float = 50.0,
               seconds: float = 5.0) -> dict:
    limits = limits_mod.read_limits()
    processes = limits_mod.plan(limits, max(idle_points) + active, backend="selectors").server_processes
    print(f"  {processes} server process(es) for every variant (planned for {max(idle_points):,} idle + {active} "
          f"active); {active} active connections × {per_second:g} echoes/s, {seconds:g} s a point", flush=True)
    rows = []
    for backend, mechanism in variants(backends):
        name = f"{backend}/{mechanism}" if mechanism else backend
        points = _variant(backend, mechanism, processes, sorted(idle_points), active, per_second, seconds, limits)
        for p in points:
            print(f"  {name:<16} idle {p['idle']:>7,}: " + (
                f"p50 {p['p50_ms']:7.3f} ms  p99 {p['p99_ms']:7.3f} ms  max {p['max_ms']:8.3f} ms"
                if "stopped" not in p else f"stopped: {p['stopped']} (held {p['held']:,})"), flush=True)
        rows.append({"backend": backend, "selector": mechanism or None, "name": name, "points": points})
    return {"active": active, "per_second": per_second, "seconds": seconds, "server_processes": processes,
            "idle_points": list(idle_points), "rows": rows}


def _variant(backend: str, mechanism: str, processes: int, idle_points: list[int], active: int,
             per_second: float, seconds: float, limits: dict) -> list[dict]:
    config = ServerConfig(backend=backend, port=0, processes=processes, selector=mechanism or "epoll")
    points: list[dict] = []
    holders: list[subprocess.Popen] = []
    addresses = 0
    with ServerGroup(config, log_file=os.devnull) as group:
        try:
            held = 0
            for n in idle_points:
                if n > held:
                    procs, used = start_holders(group.port, n - held, limits, first_address=addresses)
                    holders += procs
                    addresses += len(used)
                    events = [read_event(p, "held", 600) for p in procs]
                    held += sum(e["verified"] for e in events)
                    if any(e["failed"] for e in events):
                        points.append({"idle": n, "held": held, "stopped": _refused(group) or "connect failed"})
                        break
                out = subprocess.run([*CLIENT, "paced", "--port", str(group.port), "--connections", str(active),
                                      "--per-second", str(per_second), "--seconds", str(seconds)],
                                     capture_output=True, text=True, timeout=seconds + 60)
                if out.returncode != 0:  # the servers refused or dropped an active connection
                    points.append({"idle": held, "held": held, "stopped": _refused(group) or out.stderr.strip()[-200:]})
                    break
                result = json.loads(out.stdout.strip().splitlines()[-1])
                points.append({"idle": held, **{k: result[k] for k in ("sent", "answered", "mismatched", "p50_ms",
                                                                       "p90_ms", "p99_ms", "max_ms", "histogram")}})
        finally:
            for p in holders:
                p.kill()
                p.wait()
    return points


def _refused(group: ServerGroup, wait: float = 2.0) -> str:
    """The reason the servers refused most connections for, if they refused any. Waits a little:
    a server publishes its gauges every TICK_S, so a refusal the client saw may not be there yet."""
    deadline = time.monotonic() + wait
    while True:
        counts: dict[str, int] = {}
        for row in server_rows(group):
            for reason, n in refusals(row).items():
                counts[reason] = counts.get(reason, 0) + n
        if counts or time.monotonic() > deadline:
            return max(counts, key=counts.get) if counts else ""
        time.sleep(0.05)
