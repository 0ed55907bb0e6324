"""`harness bench`: the server-side numbers, each measured against real server processes.

- echo: ping-pong throughput per backend (one server process, a uvloop client process);
  ratios are taken within one run, because timings on a shared 2-core machine are noisy.
- memory: server userland memory per idle connection per backend (RSS from the server's own
  gauges, before and after N echo-verified idle connections), plus kernel memory per connection.
- hold: N echo-verified connections to ONE port, held by a server group and counted three ways
  (client, server gauges, kernel).
Each writes a JSON file under results/ and prints a table.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from harness.core import planning
from harness.core.backends import ServerConfig
from harness.system.files import machine, utc_stamp, write_json_atomic
from harness.system.limits import meminfo, read_limits
from harness.system.ss import established_on_port
from servers.gauges import ROLE_ACCEPTOR
from servers.supervisor import ServerGroup

CLIENT = [sys.executable, "-m", "harness.clients.instruments"]
DEFAULT_ORDER = ("selectors", "uvloop", "asyncio", "threaded")  # the README's tables: fastest first


def read_event(proc: subprocess.Popen, until: str, timeout: float) -> dict:
    """Read a client's JSON lines until an event named `until`; return that line."""
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        doc = json.loads(line)
        if doc.get("event") == until:
            return doc
        if time.monotonic() > deadline:
            break
    raise RuntimeError(f"bench client ended without a {until!r} line (exit {proc.poll()})")


def _kernel_memory() -> dict[str, int]:
    info = meminfo()
    return {"SUnreclaim": info["SUnreclaim"], "KernelStack": info["KernelStack"]}


def server_rows(group: ServerGroup) -> list[dict]:
    return [g for g in group.board.read_all() if g["role"] != ROLE_ACCEPTOR]


def bench_echo(backends: list[str], connections: int, size: int, seconds: float) -> dict:
    """Ping-pong throughput per backend, and the CPU each side spent per request in the measured
    window, split into user and kernel time: with one server process on one core, 1e6 / (server
    µs per request) is the most that server could answer here, whatever the client."""
    import psutil

    rows = []
    for name in backends:
        with ServerGroup(ServerConfig(backend=name, port=0)) as group:
            server = psutil.Process(server_rows(group)[0]["pid"])
            client = subprocess.Popen([*CLIENT, "echo", "--port", str(group.port), "--connections",
                                       str(connections), "--size", str(size), "--seconds", str(seconds)],
                                      stdout=subprocess.PIPE, text=True)
            try:
                read_event(client, "measuring", timeout=60)
                before = server.cpu_times()
                result = read_event(client, "result", timeout=seconds + 60)
                after = server.cpu_times()
                client.wait(timeout=30)
            finally:
                if client.poll() is None:
                    client.kill()
                    client.wait()
        per_req = 1e6 / max(result["requests"], 1)
        row = {"backend": name, **{k: result[k] for k in ("req_per_s", "requests", "seconds", "mismatched")},
               "server_user_us_per_req": (after.user - before.user) * per_req,
               "server_system_us_per_req": (after.system - before.system) * per_req,
               "client_us_per_req": (result["client_user_s"] + result["client_system_s"]) * per_req}
        row["server_us_per_req"] = row["server_user_us_per_req"] + row["server_system_us_per_req"]
        rows.append(row)
        print(f"  {name:<10} {result['req_per_s']:>10,.0f} req/s  ({result['requests']:,} echoes, "
              f"{result['mismatched']} mismatched)  server CPU {row['server_us_per_req']:5.2f} µs/req "
              f"(kernel {row['server_system_us_per_req']:5.2f})  client {row['client_us_per_req']:5.2f} µs/req",
              flush=True)
    return {"connections": connections, "size": size, "seconds": seconds, "rows": rows}


def bench_memory(backends: list[str], connections: int, steps: int = 5) -> dict:
    """Per-connection memory as the slope of a line fitted (numpy) through `steps` points, each
    after another client process has added connections/steps idle, echo-verified connections:
    the marginal cost, without the fixed costs a plain average would spread over N."""
    import numpy as np

    rows = []
    for name in backends:
        with ServerGroup(ServerConfig(backend=name, port=0)) as group:
            time.sleep(0.5)
            points = [(0, server_rows(group)[0]["rss_bytes"], _kernel_memory())]
            clients = []
            try:
                for _ in range(steps):
                    client = subprocess.Popen([*CLIENT, "hold", "--port", str(group.port), "--count",
                                               str(connections // steps)], stdin=subprocess.PIPE,
                                              stdout=subprocess.PIPE, text=True)
                    clients.append(client)
                    read_event(client, "held", 120)
                    time.sleep(0.6)  # let the server publish its gauges
                    g = server_rows(group)[0]
                    points.append((g["open"], g["rss_bytes"], _kernel_memory()))
                reverified = 0
                for client in clients:
                    client.stdin.write("\n")
                    client.stdin.flush()
                    reverified += read_event(client, "result", 60)["reverified"]
            finally:
                for client in clients:
                    client.kill()
                    client.wait()
        n = np.array([p[0] for p in points], dtype=float)

        def slope(values) -> float:
            return float(np.polyfit(n, np.array(values, dtype=float), 1)[0])

        row = {"backend": name, "connections": int(n[-1]), "reverified": reverified,
               "points": [{"open": p[0], "rss_bytes": p[1], **p[2]} for p in points],
               "server_rss_per_conn_bytes": slope([p[1] for p in points]),
               "server_rss_average_bytes": (points[-1][1] - points[0][1]) / n[-1],
               "kernel_slab_per_conn_bytes": slope([p[2]["SUnreclaim"] for p in points]),
               "kernel_stack_per_conn_bytes": slope([p[2]["KernelStack"] for p in points])}
        rows.append(row)
        print(f"  {name:<10} server userland {row['server_rss_per_conn_bytes'] / 1024:6.2f} KB/conn "
              f"(average {row['server_rss_average_bytes'] / 1024:.2f})  kernel slab "
              f"{row['kernel_slab_per_conn_bytes'] / 1024:5.2f} KB/conn (both ends)  kernel stacks "
              f"{row['kernel_stack_per_conn_bytes'] / 1024:5.2f} KB/conn  ({int(n[-1]):,} held, "
              f"{reverified:,} re-verified)", flush=True)
    return {"method": f"slope of RSS over {steps} steps of idle echo-verified connections", "rows": rows}


def start_holders(port: int, count: int, limits: dict, clients: int | None = None,
                  first_client: int = 0) -> tuple[list[subprocess.Popen], list[str]]:
    """Hold-client processes for `count` connections to `port`. Each holds at most its own fd
    limit's worth (`planning.client_split`), from source addresses of its own (client i binds
    127.0.i+1.2 …, counting from `first_client`), each under half the ephemeral range. They print
    a "held" event, then hold until a line on stdin."""
    procs, addresses = [], []
    for i, n in enumerate(planning.client_split(count, limits, clients)):
        mine = [planning.source_address(first_client + i, k) for k in range(planning.sources_for(n, limits))]
        addresses += mine
        procs.append(subprocess.Popen([*CLIENT, "hold", "--port", str(port), "--count", str(n),
                                       "--sources", ",".join(mine)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True))
    return procs, addresses


def bench_hold(backend: str, connections: int, processes: int | None, share: str, clients: int | None,
               hold_s: float = 5.0) -> dict:
    limits = read_limits()
    plan = planning.plan(limits, connections, backend=backend, processes=processes)
    for reason in plan.server_reasons:  # the lean clients are planned below, not as Locust workers
        print(f"  plan: {reason}", flush=True)
    with ServerGroup(ServerConfig(backend=backend, port=0, processes=plan.server_processes, share=share)) as group:
        start = time.monotonic()
        procs, addresses = start_holders(group.port, connections, limits, clients)
        print(f"  plan: {len(procs)} client process(es), {len(addresses)} source addresses", flush=True)
        try:
            held = [read_event(p, "held", 300) for p in procs]
            ramp_s = time.monotonic() - start
            time.sleep(max(1.0, hold_s))
            servers = server_rows(group)
            kernel = established_on_port(group.port)
            for p in procs:
                p.stdin.write("\n")
                p.stdin.flush()
            results = [read_event(p, "result", 120) for p in procs]
        finally:
            for p in procs:
                p.kill()
                p.wait()
    failed = dict(sum((Counter(r["failed"]) for r in results), Counter()))
    doc = {"backend": backend, "share": share, "target": connections, "server_processes": plan.server_processes,
           "client_processes": len(procs), "source_addresses": addresses, "port": group.port,
           "held_by_clients": sum(h["open"] for h in held),
           "verified_at_connect": sum(r["verified_at_connect"] for r in results),
           "reverified_after_hold": sum(r["reverified"] for r in results),
           "server_open": sum(g["open"] for g in servers),
           "server_open_by_process": [g["open"] for g in servers],
           "kernel_established": kernel, "ramp_s": round(ramp_s, 2), "hold_s": hold_s,
           "connect_rate_per_s": round(sum(h["open"] for h in held) / ramp_s), "failed": failed}
    print(f"  held {doc['held_by_clients']:,} connections to 127.0.0.1:{group.port} "
          f"(kernel: {kernel:,} established; servers: {doc['server_open']:,} open in "
          f"{plan.server_processes} processes: {doc['server_open_by_process']})", flush=True)
    print(f"  echo-verified at connect {doc['verified_at_connect']:,}, again after the hold "
          f"{doc['reverified_after_hold']:,}; ramp {ramp_s:.1f} s ({doc['connect_rate_per_s']:,}/s); "
          f"{len(addresses)} source addresses; failures {failed or 0}", flush=True)
    return doc


def save(kind: str, doc: dict, out_dir: Path) -> Path:
    doc = {"schema": 1, "kind": f"bench-{kind}", "started_at": utc_stamp(), "machine": machine(),
           "limits": read_limits(), **doc}
    return write_json_atomic(out_dir / f"bench-{kind}-{doc['started_at']}.json", doc)
