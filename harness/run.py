"""`harness run`: one headless run, from the machine's limits to a run directory.

Plans server processes, Locust workers and source addresses from the limits (saying why), starts
the servers and a headless Locust master and workers, samples every second (kernel count, server
gauges, worker gauges, memory), and writes `run.json` (schema 1) atomically beside Locust's own
CSVs and HTML report. Whatever ends the run (its target, a limit, a timeout, Ctrl-C, SIGTERM, a
crashed worker, an error), every process is stopped and a valid run.json is written.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

import psutil

from harness import limits as limits_mod
from harness.cluster import LocustCluster
from harness.progress import RunProgress
from harness.results import machine, utc_stamp, write_json_atomic
from harness.runfile import SCHEMA, map_stopped_by, run_dir_name, validate
from servers import proc, registry
from servers.contract import ServerConfig
from servers.gauges import ROLE_ACCEPTOR, refusals
from servers.supervisor import ConfigError, ServerGroup

WORKER_FD_RESERVE = 100  # scenarios.locustfile.FD_RESERVE: fds a Locust worker keeps for itself
WORKER_EXIT_GRACE_S = 3.0
DEFAULT_RAMP_RATE = 10_000.0  # the shape slows down by itself where the machine cannot keep up
KERNEL_EVERY_S = 2.0  # ss costs ~0.2 CPU-s at 100k connections


class RunError(ValueError):
    """Bad input, found before anything starts; the message names the problem and the fix."""


@dataclass
class RunConfig:
    backend: str = "asyncio"
    connections: int = 100_000
    processes: int | None = None
    share: str = "reuseport"
    server_fd_limit: int | None = None
    selector: str = "epoll"
    workers: int | None = None
    worker_fd_limit: int | None = None
    user_mode: str = "driver"
    port: int = 9999
    hold: float = 10.0
    echo_interval: float = 5.0
    echo_timeout: float = 10.0
    ramp_rate: float | None = None
    max_seconds: float = 240.0
    out: str = "results"


@dataclass
class Prepared:
    config: RunConfig
    limits: dict
    plan: limits_mod.Plan
    workers: int
    worker_fd_limit: int
    ramp_rate: float


def prepare(cfg: RunConfig) -> Prepared:
    """Validate the input and plan the run; raises RunError before anything is started."""
    try:
        registry.get(cfg.backend)
    except registry.UnknownBackend as exc:
        raise RunError(str(exc)) from None
    limits = limits_mod.read_limits()
    usable = limits_mod.usable_fd_limit(limits)
    for flag, value in (("--server-fd-limit", cfg.server_fd_limit), ("--worker-fd-limit", cfg.worker_fd_limit)):
        if value is not None and value > usable:
            raise RunError(f"{flag} {value} exceeds the hard limit {usable} of this process; lower {flag} "
                           f"or raise the hard limit (ulimit -Hn, needs CAP_SYS_RESOURCE)")
        if value is not None and value < 64:
            raise RunError(f"{flag} {value} is too small; use at least 64")
    if cfg.connections < 1:
        raise RunError(f"--connections {cfg.connections} must be at least 1")
    plan = limits_mod.plan(limits, cfg.connections, backend=cfg.backend, fd_limit=cfg.server_fd_limit,
                           processes=cfg.processes, selector=cfg.selector)
    if plan.problems and plan.binding not in ("fd limit", "FD_SETSIZE"):
        # The fd limit is what a run is allowed to find; the machine's other limits are not.
        raise RunError(f"{plan.problems[0]} on this machine; lower --connections")
    worker_fd = cfg.worker_fd_limit or usable
    per_worker = worker_fd - WORKER_FD_RESERVE
    workers = cfg.workers or max(1, math.ceil(cfg.connections / per_worker))
    if workers * per_worker < min(cfg.connections, plan.predicted_cap):
        need = math.ceil(min(cfg.connections, plan.predicted_cap) / per_worker)
        raise RunError(f"{workers} worker(s) of {per_worker:,} users each cannot hold {cfg.connections:,} "
                       f"connections (each worker's fd limit {worker_fd:,} minus {WORKER_FD_RESERVE} for itself); "
                       f"use --workers {need}")
    if workers > 1 and cfg.workers is None:
        plan.reasons.append(f"{worker_fd:,} fds per Locust worker − {WORKER_FD_RESERVE} reserve = {per_worker:,} "
                            f"users per worker → {workers} workers")
    # Each worker binds enough addresses of its own for all the users its fd limit allows
    # (scenarios.locustfile.configure_user_process): that, not N alone, sets the count.
    per_worker_sources = math.ceil(per_worker / plan.per_source)
    plan.source_addresses = workers * per_worker_sources
    plan.reasons = [r for r in plan.reasons if "per client source address" not in r] + [
        f"{plan.per_source:,} connections per client source address (half of ip_local_port_range) → "
        f"{per_worker_sources} address(es) per worker (worker i: 127.0.i+1.2 …), {plan.source_addresses} in all"]
    out = Path(cfg.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()
    except OSError as exc:
        raise RunError(f"cannot write results to {out}: {exc.strerror}; choose another --out") from None
    ramp = cfg.ramp_rate or min(float(cfg.connections), DEFAULT_RAMP_RATE)
    return Prepared(cfg, limits, plan, workers, worker_fd, ramp)


class Sampler:
    """One point a second: what the kernel, the servers and the workers each count."""

    def __init__(self, group: ServerGroup, cluster: LocustCluster, status_file: Path, t0: float) -> None:
        self.group, self.cluster, self.status_file, self.t0 = group, cluster, status_file, t0
        self.series: list[dict] = []
        self.status: dict = {}
        self._kernel = (0, -KERNEL_EVERY_S)  # (count, when)

    def read_status(self) -> dict:
        try:
            self.status = json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            pass
        return self.status

    def kernel_count(self, fresh: bool) -> int:
        now = time.monotonic()
        if fresh or now - self._kernel[1] >= KERNEL_EVERY_S:
            self._kernel = (proc.established_on_port(self.group.port), now)
        return self._kernel[0]

    def sample(self, fresh: bool = False) -> dict:
        status = self.read_status()
        rows = self.group.board.read_all()
        for index in self.group.exited:  # a dead process's slot keeps its last numbers: it holds nothing
            rows[index]["open"] = 0
        servers = [r for r in rows if r["role"] != ROLE_ACCEPTOR]
        totals = status.get("totals", {})
        refused = sum(sum(refusals(r).values()) for r in rows)
        point = {
            "t": round(time.monotonic() - self.t0, 2),
            "kernel_established": self.kernel_count(fresh or status.get("phase") == "hold"),
            "server_open": sum(r["open"] for r in servers),
            "server_open_by_process": [r["open"] for r in servers],
            "locust_open": totals.get("open", 0), "connects_ok": totals.get("connects_ok", 0),
            "connects_failed": sum(totals.get("connects_failed", {}).values()),
            "server_refused": refused, "echoes_verified": totals.get("echoes_verified", 0),
            "server_rss_bytes": sum(r["rss_bytes"] for r in rows),
            "locust_rss_bytes": totals.get("rss_bytes", 0),
            "slab_bytes": _meminfo("SUnreclaim"),
            "server_cpu_s": _cpu_seconds(r["pid"] for r in rows),
            "locust_cpu_s": _cpu_seconds(self.cluster.pids()),
        }
        self.series.append(point)
        return point


def execute(prepared: Prepared, progress: bool = True) -> tuple[dict, Path]:
    cfg, plan = prepared.config, prepared.plan
    started_at = utc_stamp()
    t0 = time.monotonic()
    epoch0 = time.time()
    stop_reason: list[str] = []
    previous = {sig: signal.signal(sig, lambda s, f: stop_reason.append("interrupted"))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    scratch = Path(tempfile.mkdtemp(prefix="harness-run-"))
    config = ServerConfig(backend=cfg.backend, port=cfg.port, processes=plan.server_processes, share=cfg.share,
                          fd_limit=plan.fd_limit, selector=cfg.selector)
    group = ServerGroup(config, log_file=str(scratch / "servers.log"))
    try:
        group.start()
    except ConfigError as exc:
        _restore(previous)
        raise RunError(str(exc)) from None
    run_dir = Path(cfg.out) / run_dir_name(started_at, cfg.backend, cfg.connections)
    run_dir.mkdir(parents=True)
    status_file = run_dir / "status.json"
    cluster = LocustCluster(
        host="127.0.0.1", port=group.port, workers=prepared.workers, log_dir=run_dir / "logs",
        master_args=["--headless", "--expect-workers", str(prepared.workers),
                     "--target-connections", str(cfg.connections), "--ramp-rate", str(prepared.ramp_rate),
                     "--hold-seconds", str(cfg.hold), "--echo-interval", str(cfg.echo_interval),
                     "--echo-timeout", str(cfg.echo_timeout),
                     "--max-seconds", str(cfg.max_seconds), "--server-gauges", group.gauges_path,
                     "--status-file", str(status_file), "--kernel-interval", "0", "--csv", str(run_dir / "locust"),
                     "--csv-full-history", "--html", str(run_dir / "locust.html"), "--only-summary"],
        worker_args=["--worker-fd-limit", str(prepared.worker_fd_limit), "--user-mode", cfg.user_mode,
                     "--echo-timeout", str(cfg.echo_timeout)])
    sampler = Sampler(group, cluster, status_file, t0)
    display = RunProgress(cfg.connections, "starting") if progress else None
    master_code = None
    error = None
    faults: list[dict] = []
    reported: set[str] = set()
    try:
        if stop_reason:  # Ctrl-C while the servers were starting: no Locust to start
            raise _Interrupted
        cluster.start()
        deadline = t0 + cfg.max_seconds + cfg.hold + 90
        next_sample = time.monotonic()
        while not stop_reason:
            dead = cluster.dead()
            if "master" in dead:
                master_code = dead["master"]
                break
            new_dead = dead.keys() - reported
            if new_dead:
                # Workers quit just before the master at the end of a run; one that dies while its
                # master carries on with the others is a fault, and the result is marked.
                master_code = cluster.wait_master(WORKER_EXIT_GRACE_S)
                if master_code is not None:
                    break
                for name in sorted(new_dead):
                    reported.add(name)
                    faults.append(_fault(sampler, f"Locust {name} died (exit {dead[name]})",
                                         _worker_open(sampler, name)))
            for index, status in group.reap().items():
                lost = sampler.series[-1]["server_open_by_process"][index] if sampler.series else 0
                faults.append(_fault(sampler, f"server process {index} died ({_status(status)})", lost))
            if time.monotonic() > deadline:
                stop_reason.append("timeout")
                break
            if time.monotonic() >= next_sample:
                point = sampler.sample()
                next_sample += 1.0
                if display:
                    display.update(point["kernel_established"], _rate(sampler.series),
                                   sampler.status.get("totals", {}).get("connects_failed", {}),
                                   sampler.status.get("phase", "starting"))
            time.sleep(0.05)
        sampler.sample()
    except _Interrupted:
        pass
    except Exception as exc:  # noqa: BLE001 - whatever happened, stop everything and record it
        error = f"{type(exc).__name__}: {exc}"
        stop_reason.append("error")
    finally:
        if display:
            display.close()
        cluster.stop()
        group.stop()
        _move(scratch / "servers.log", run_dir / "logs" / "servers.log")
        if faults and not stop_reason:
            stop_reason.append("interrupted")  # the run went on, but not as planned: marked
        doc = build_document(prepared, group, started_at, time.monotonic() - t0, sampler, run_dir,
                             stop_reason[0] if stop_reason else None, master_code, error, epoch0, faults)
        write_json_atomic(run_dir / "run.json", doc)
        _restore(previous)  # only now: a Ctrl-C while the results are written must not cut them off
    return doc, run_dir


def build_document(prepared: Prepared, group: ServerGroup, started_at: str, duration: float, sampler: Sampler,
                   run_dir: Path, stop_reason: str | None, master_code: int | None, error: str | None,
                   epoch0: float, faults: list[dict]) -> dict:
    cfg, plan = prepared.config, prepared.plan
    series = sampler.series
    status = sampler.status
    peak = max(series, key=lambda p: p["kernel_established"]) if series else None
    first = series[0] if series else None
    peak_n = peak["kernel_established"] if peak else 0
    stats = _locust_stats(run_dir / "locust_stats.csv")
    echo_failed = status.get("totals", {}).get("echo_failed", {})

    def per_conn(key: str, base: int | None) -> float:
        if not peak or not peak_n or base is None:
            return 0.0
        return (peak[key] - base) / peak_n

    stopped_by = stop_reason or map_stopped_by(status.get("stopped_by"))
    ramp_s = _ramp_seconds(series, peak_n)
    doc = {
        "schema": SCHEMA, "started_at": started_at, "duration_s": round(duration, 2),
        "backend": cfg.backend, "share": cfg.share, "selector": cfg.selector, "host": "127.0.0.1",
        "port": group.port, "server_processes": plan.server_processes, "server_fd_limit": plan.fd_limit,
        "server_held_fds": plan.held_fds, "workers": prepared.workers, "worker_fd_limit": prepared.worker_fd_limit,
        "user_mode": cfg.user_mode,
        "source_addresses": [a for w in status.get("workers", []) for a in w.get("sources", [])],
        "target_connections": cfg.connections, "peak_connections": peak_n,
        "peak_connections_servers": max((p["server_open"] for p in series), default=0),
        "peak_connections_by_process": peak["server_open_by_process"] if peak else [],
        "predicted_cap": plan.predicted_cap, "stopped_by": stopped_by, "faults": faults,
        "stop_detail": error or (f"Locust master exit code {master_code}" if master_code else None),
        "ramp_s": ramp_s, "connect_rate_per_s": round(peak_n / ramp_s) if ramp_s else 0,
        "steady_state": steady_state(series, peak_n),
        "echo": {"sent": status.get("totals", {}).get("echoes_sent", 0),
                 "verified": status.get("totals", {}).get("echoes_verified", 0),
                 "mismatched": echo_failed.get("mismatch", 0), "failed": echo_failed},
        "connects": {"ok": status.get("totals", {}).get("connects_ok", 0),
                     "failed": status.get("totals", {}).get("connects_failed", {}),
                     "server_refused": status.get("server_refusals", {})},
        "memory": {"server_rss_per_conn_bytes": per_conn("server_rss_bytes", first and first["server_rss_bytes"]),
                   "locust_rss_per_conn_bytes": per_conn("locust_rss_bytes", status.get("totals", {}).get("rss_base_bytes")),
                   "kernel_slab_per_conn_bytes": per_conn("slab_bytes", first and first["slab_bytes"])},
        "latency_ms": {name: {k: v for k, v in row.items() if k != "requests"} for name, row in stats.items()},
        "limits": prepared.limits, "machine": {**machine(), "locust": version("locust")},
        "plan": plan.as_dict(), "config": asdict(cfg), "series": series,
        "latency_series": _latency_series(run_dir / "locust_stats_history.csv", epoch0),
        "files": {name: name for name in ("locust_stats.csv", "locust_stats_history.csv", "locust_failures.csv",
                                          "locust_exceptions.csv", "locust.html", "logs")
                  if (run_dir / name).exists()},
    }
    return validate(doc)


def steady_state(series: list[dict], peak: int) -> dict:
    """The hold, seen from its samples (kernel count within 1% of the peak): how long, how many
    echoes, and how far server and Locust RSS moved from its first sample to its last (a leak
    shows as growth; the soak asks for under 5%)."""
    hold = [p for p in series if peak and p["kernel_established"] >= 0.99 * peak]
    if len(hold) < 2:
        return {"seconds": 0.0, "echoes_verified": 0, "server_rss_change_pct": None, "locust_rss_change_pct": None}
    first, last = hold[0], hold[-1]

    def change(key: str) -> float | None:
        return round(100.0 * (last[key] - first[key]) / first[key], 2) if first[key] else None

    return {"seconds": round(last["t"] - first["t"], 1), "echoes_verified": last["echoes_verified"] - first["echoes_verified"],
            "server_rss_change_pct": change("server_rss_bytes"), "locust_rss_change_pct": change("locust_rss_bytes")}


def summary(doc: dict, run_dir: Path) -> str:
    m = doc["memory"]
    by_process = doc["peak_connections_by_process"]
    lines = [
        f"held {doc['peak_connections']:,} connections on {doc['host']}:{doc['port']} (kernel count; servers "
        f"{doc['peak_connections_servers']:,} in {doc['server_processes']} process(es)"
        + (f": {', '.join(f'{n:,}' for n in by_process)}" if len(by_process) > 1 else "") + ")",
        f"stopped by {doc['stopped_by']} (target {doc['target_connections']:,}, predicted cap "
        f"{doc['predicted_cap']:,}); ramp {doc['ramp_s']:.1f} s ({doc['connect_rate_per_s']:,} connections/s); "
        f"echoes {doc['echo']['verified']:,} verified, {doc['echo']['mismatched']} mismatched",
        f"memory per connection: server {m['server_rss_per_conn_bytes'] / 1024:.2f} KB, Locust "
        f"{m['locust_rss_per_conn_bytes'] / 1024:.2f} KB ({doc['user_mode']} mode), kernel slab "
        f"{m['kernel_slab_per_conn_bytes'] / 1024:.2f} KB (both ends)",
        f"results: {run_dir / 'run.json'}",
    ]
    return "\n".join(lines)


class _Interrupted(Exception):
    pass


def _fault(sampler: Sampler, what: str, lost: int) -> dict:
    return {"t": round(time.monotonic() - sampler.t0, 2), "what": what, "connections_lost": lost}


def _worker_open(sampler: Sampler, name: str) -> int:
    """What a worker held at its last report (worker i is 'worker{i}' to the harness)."""
    index = int(name.removeprefix("worker"))
    return next((w["open"] for w in sampler.status.get("workers", []) if w["worker_index"] == index), 0)


def _status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


def _rate(series: list[dict]) -> float:
    if len(series) < 2:
        return 0.0
    a, b = series[-2], series[-1]
    return max(0.0, (b["kernel_established"] - a["kernel_established"]) / max(1e-6, b["t"] - a["t"]))


def _ramp_seconds(series: list[dict], peak: int) -> float:
    """From the first sample with a connection to the first with 99% of the peak."""
    started = next((p["t"] for p in series if p["kernel_established"] > 0), None)
    reached = next((p["t"] for p in series if p["kernel_established"] >= 0.99 * peak), None)
    if started is None or reached is None or peak == 0:
        return 0.0
    return max(reached - started, 1.0)  # samples are a second apart


def _locust_stats(path: Path) -> dict:
    if not path.exists():
        return {}
    with open(path) as f:
        rows = {r["Name"]: r for r in csv.DictReader(f) if r["Type"] == "TCP"}
    return {name: {"requests": int(r["Request Count"]), "failures": int(r["Failure Count"]),
                   "p50": _num(r.get("50%")), "p90": _num(r.get("90%")), "p99": _num(r.get("99%")),
                   "max": _num(r.get("Max Response Time"))} for name, r in rows.items()}


def _latency_series(path: Path, epoch0: float) -> list[dict]:
    """Echo latency percentiles per second from Locust's own stats history (its histogram of the
    last 10 s), against the users held at that moment; t is seconds since the run started."""
    if not path.exists():
        return []
    with open(path) as f:
        rows = [r for r in csv.DictReader(f) if r["Name"] == "echo" and r["50%"] not in ("N/A", "")]
    return [{"t": round(int(r["Timestamp"]) - epoch0, 1), "held": int(r["User Count"]),
             "rps": _num(r["Requests/s"]), "p50": _num(r["50%"]), "p90": _num(r["90%"]),
             "p99": _num(r["99%"]), "max": _num(r["100%"])} for r in rows]


def _num(text: str | None) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _cpu_seconds(pids) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return round(total, 2)


def _meminfo(name: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _move(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.exists():
        os.replace(src, dst)


def _restore(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)
