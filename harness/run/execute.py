"""`harness run`: one headless run, from the machine's limits to a run directory.

Plans server processes, Locust workers and source addresses from the limits (saying why), starts
the servers and a headless Locust master and workers, samples every second (kernel count, server
gauges, worker gauges, memory), and writes `run.json` (schema 1) atomically beside Locust's own
CSVs and HTML report. Whatever ends the run (its target, a limit, a timeout, Ctrl-C, SIGTERM, a
crashed worker, an error), every process is stopped and a valid run.json is written.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

import psutil

from harness.plan import core
from harness.plan.limits import meminfo, read_limits
from harness.run.cluster import LocustCluster
from harness.run.progress import RunProgress
from harness.results import locust_files
from harness.results.store import machine, utc_stamp, write_json_atomic
from harness.results.rundoc import build_document
from harness.results.schema import run_dir_name
from servers import proc, registry
from servers.contract import ServerConfig
from servers.gauges import ROLE_ACCEPTOR, total_refusals
from servers.supervisor import ConfigError, ServerGroup, StartError

WORKER_EXIT_GRACE_S = 3.0
DEFAULT_RAMP_RATE = 10_000.0  # the shape slows down by itself where the machine cannot keep up
# The ramp's default time bound: 240 s, or long enough for the target at this many connections a
# second (a million here ramped at ~4,000/s; 240 s stopped it 7,505 short).
SLOWEST_PLANNED_RAMP = 2_000.0
# The load (servers and Locust workers) runs below the control plane (the Locust master and this
# process): at a million connections 110 processes share two cores, and a master with an equal
# share fell behind its workers' heartbeats, marked 73 of them missing and moved their users onto
# the others. At +10 the master gets ~8% of the CPU when it needs it instead of ~1%.
LOAD_NICE = 10
KERNEL_EVERY_S = 2.0  # at least this long between two kernel counts (ss)
KERNEL_CPU_SHARE = 0.1  # ...and long enough that ss takes at most this share of a core (~1 s a call at 1M)


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
    echo_mode: str = "closed"
    echo_timeout: float = 10.0
    ramp_rate: float | None = None
    max_seconds: float | None = None  # the ramp's time bound; None: planned from the target
    out: str = "results"


@dataclass
class Prepared:
    config: RunConfig
    limits: dict
    plan: core.Plan
    workers: int
    worker_fd_limit: int
    ramp_rate: float
    max_seconds: float


def prepare(cfg: RunConfig) -> Prepared:
    """Validate the input and plan the run; raises RunError before anything is started."""
    try:
        registry.get(cfg.backend)
    except registry.UnknownBackend as exc:
        raise RunError(str(exc)) from None
    limits = read_limits()
    for flag, value, least in (("--fd-limit", cfg.server_fd_limit, core.MIN_FD_LIMIT),
                               ("--worker-fd-limit", cfg.worker_fd_limit, core.MIN_WORKER_FD_LIMIT)):
        error = core.fd_limit_error(flag, value, limits, least)
        if error:
            raise RunError(error)
    if cfg.connections < 1:
        raise RunError(f"--connections {cfg.connections} must be at least 1")
    plan = core.plan(limits, cfg.connections, backend=cfg.backend, fd_limit=cfg.server_fd_limit,
                     processes=cfg.processes, selector=cfg.selector, workers=cfg.workers,
                     worker_fd_limit=cfg.worker_fd_limit)
    if plan.error:
        raise RunError(plan.error)
    out = Path(cfg.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()
    except OSError as exc:
        raise RunError(f"cannot write results to {out}: {exc.strerror}; choose another --out") from None
    ramp = cfg.ramp_rate or min(float(cfg.connections), DEFAULT_RAMP_RATE)
    max_seconds = cfg.max_seconds or max(240.0, cfg.connections / SLOWEST_PLANNED_RAMP)
    return Prepared(cfg, limits, plan, plan.workers, plan.worker_fd_limit, ramp, max_seconds)


class Sampler:
    """One point a second: what the kernel, the servers and the workers each count."""

    def __init__(self, group: ServerGroup, cluster: LocustCluster, status_file: Path, t0: float) -> None:
        self.group, self.cluster, self.status_file, self.t0 = group, cluster, status_file, t0
        self.series: list[dict] = []
        self.status: dict = {}
        self._kernel = (0, -KERNEL_EVERY_S)  # (count, when)
        self._kernel_every = KERNEL_EVERY_S
        self._phase = "starting"

    def read_status(self) -> dict:
        try:
            self.status = json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            pass
        return self.status

    def kernel_count(self, fresh: bool) -> tuple[int, bool]:
        """The kernel's count of established connections on the port, and whether it was taken
        now: when `fresh` is asked or when due (ss walks every socket on the machine, so it runs
        less often as they grow); otherwise the last count."""
        now = time.monotonic()
        if fresh or now - self._kernel[1] >= self._kernel_every:
            count = proc.established_on_port(self.group.port)
            took = time.monotonic() - now
            self._kernel = (count, now)
            self._kernel_every = max(KERNEL_EVERY_S, took / KERNEL_CPU_SHARE)
            return count, True
        return self._kernel[0], False

    def sample(self, fresh: bool = False) -> dict:
        status = self.read_status()
        rows = self.group.board.read_all()
        for index in self.group.exited:  # a dead process's slot keeps its last numbers: it holds nothing
            rows[index]["open"] = 0
        servers = [r for r in rows if r["role"] != ROLE_ACCEPTOR]
        totals = status.get("totals", {})
        refused = sum(total_refusals(rows).values())
        phase = status.get("phase", "starting")
        changed, self._phase = phase != self._phase, phase  # counted afresh as each phase begins
        memory = meminfo()
        kernel, counted = self.kernel_count(fresh or changed)
        point = {
            "t": round(time.monotonic() - self.t0, 2), "phase": phase,
            "kernel_established": kernel, "kernel_counted": counted,
            "server_open": sum(r["open"] for r in servers),
            "server_open_by_process": [r["open"] for r in servers],
            "locust_open": totals.get("open", 0), "connects_ok": totals.get("connects_ok", 0),
            "connects_failed": sum(totals.get("connects_failed", {}).values()),
            "server_refused": refused, "echoes_verified": totals.get("echoes_verified", 0),
            "server_rss_bytes": sum(r["rss_bytes"] for r in rows),
            "locust_rss_bytes": totals.get("rss_bytes", 0),
            "slab_bytes": memory["SUnreclaim"], "mem_available_bytes": memory["MemAvailable"],
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
                          fd_limit=plan.fd_limit, selector=cfg.selector, nice=LOAD_NICE)
    group = ServerGroup(config, log_file=str(scratch / "servers.log"))
    memory_before = meminfo()["MemAvailable"]  # what the whole run costs is measured from here
    try:
        group.start()
    except (ConfigError, StartError) as exc:
        _restore(previous)
        raise RunError(str(exc)) from None
    run_dir = Path(cfg.out) / run_dir_name(started_at, cfg.backend, cfg.connections)
    run_dir.mkdir(parents=True)
    status_file = run_dir / "status.json"
    cluster = LocustCluster(
        host="127.0.0.1", port=group.port, workers=prepared.workers, log_dir=run_dir / "logs", worker_nice=LOAD_NICE,
        master_args=["--headless", "--expect-workers", str(prepared.workers),
                     "--target-connections", str(cfg.connections), "--ramp-rate", str(prepared.ramp_rate),
                     "--hold-seconds", str(cfg.hold), "--echo-interval", str(cfg.echo_interval),
                     "--echo-mode", cfg.echo_mode,
                     "--echo-timeout", str(cfg.echo_timeout),
                     "--max-seconds", str(prepared.max_seconds), "--server-gauges", group.gauges_path,
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
        deadline = t0 + prepared.max_seconds + cfg.hold + 90
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
                    faults.append(_worker_fault(sampler, cluster.pid_of(name), dead[name]))
            for index, status in group.reap().items():
                lost = sampler.series[-1]["server_open_by_process"][index] if sampler.series else 0
                faults.append(_fault(sampler, f"server process {index} died ({proc.describe_exit(status)})", lost))
            if time.monotonic() > deadline:
                stop_reason.append("timeout")
                break
            if time.monotonic() >= next_sample:
                point = sampler.sample()
                next_sample += 1.0
                if display:
                    display.update(point["server_open"], _rate(sampler.series),
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
        doc = build_document(
            config=asdict(cfg), plan=plan.as_dict(), limits=prepared.limits,
            machine={**machine(), "locust": version("locust")}, port=group.port, started_at=started_at,
            duration=time.monotonic() - t0, series=sampler.series, status=sampler.status,
            locust_stats=locust_files.stats(run_dir / "locust_stats.csv"),
            latency_series=locust_files.latency_series(run_dir / "locust_stats_history.csv", epoch0),
            files=locust_files.present(run_dir), stop_reason=stop_reason[0] if stop_reason else None,
            master_code=master_code, error=error, faults=faults, memory_before=memory_before)
        write_json_atomic(run_dir / "run.json", doc)
        _restore(previous)  # only now: a Ctrl-C while the results are written must not cut them off
    return doc, run_dir


class _Interrupted(Exception):
    pass


def _fault(sampler: Sampler, what: str, lost: int) -> dict:
    return {"t": round(time.monotonic() - sampler.t0, 2), "what": what, "connections_lost": lost}


def _worker_fault(sampler: Sampler, pid: int, code: int | None) -> dict:
    """A dead Locust process, matched by pid to its last report (Locust numbers workers in the
    order they connect, not the order they were forked); the forker of the workers has none."""
    report = next((w for w in sampler.status.get("workers", []) if w["pid"] == pid), None)
    who = f"Locust worker {report['worker_index']}" if report else "Locust's worker parent"
    how = f"exit {code}" if code is not None else "exit status not seen"
    return _fault(sampler, f"{who} (pid {pid}) died ({how})", report["open"] if report else 0)


def _rate(series: list[dict]) -> float:
    if len(series) < 2:
        return 0.0
    a, b = series[-2], series[-1]
    return max(0.0, (b["server_open"] - a["server_open"]) / max(1e-6, b["t"] - a["t"]))


def _cpu_seconds(pids) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return round(total, 2)


def _move(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.exists():
        os.replace(src, dst)


def _restore(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)
