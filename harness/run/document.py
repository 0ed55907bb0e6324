"""A run's result document (`run.json`), from what the run counted and read: the same for a headless
run (`harness.run.execute`) and for each test started from the web UI (`harness.run.ui_runs`).

`observe_end` reads what only the running system can tell (the kernel's counters and queues, the
servers' gauges at the peak, each test host's counts) before anything is stopped; `document` then
turns it, the samples and the master's status into the evidence, the diagnosis and the document
(`harness.core.rundoc`). Nothing here may cost a run its run.json: a read that fails is left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

from harness.core import diagnose
from harness.core.backends import connection_bytes
from harness.core.evidence import Evidence, gather, on_hosts, sources_of
from harness.core.records import Fault, MasterStatus, SeriesPoint
from harness.core.rundoc import build_document, connect_rate, held_count
from harness.run import locust_csv
from harness.run.prepare import Prepared
from harness.run.sampler import Sampler
from harness.run.watch import CostWatch
from harness.system import kernel
from harness.system.files import machine
from servers.gauges import ROLE_ACCEPTOR


@dataclass
class End:
    """The system as the run left it, read before its processes and hosts are stopped."""

    kernel_after: dict | None = None
    servers: list[dict] = field(default_factory=list)  # the harness's own servers at the peak
    hosts: dict | None = None  # each test host's counts
    injected: list[Fault] = field(default_factory=list)  # faults set on purpose, with what they cost


def quietly(read, *args):
    """What `read` returns, or None if it fails: the diagnosis must never cost a run its run.json."""
    try:
        return read(*args)
    except Exception:  # noqa: BLE001
        return None


def cost_watch(prepared: Prepared) -> CostWatch | None:
    """A watch of what each connection costs the processes serving the port, where they are on this
    machine (the harness's own servers, or a target on loopback)."""
    cfg = prepared.config
    if prepared.target is not None and not prepared.target.local:
        return None
    return CostWatch(target=cfg.connections, client_bytes=connection_bytes(None, cfg.tls), reserve=cfg.memory_reserve,
                     limits=prepared.limits)


def observe_end(session, sampler: Sampler) -> End:
    end = End(kernel_after=quietly(kernel.snapshot, session.group.port, session.server_netns),
              servers=servers_at_peak(session.group, sampler))
    lab = session.lab
    if lab is not None:
        status, series = sampler.status, sampler.series
        end.hosts = quietly(lambda: lab.results(status, cpu_by_host_of(series), held_by_host_of(series),
                                                series[-1]["server_rss_bytes"] if series else 0))
        end.injected = [f for f in [quietly(lab.link_fault, status.totals, series)] if f]
    return end


def servers_at_peak(group, sampler: Sampler) -> list[dict]:
    """The harness's own server processes' gauges (cap, open at the peak, fd limit), for the diagnosis."""
    if group.board is None:
        return []
    rows = [r for r in group.board.read_all() if r["role"] != ROLE_ACCEPTOR]
    peak = max(sampler.series, key=lambda p: p["kernel_established"], default=None)
    by_process = peak["server_open_by_process"] if peak else []
    return [{"pid": r["pid"], "cap": r["cap"], "open": by_process[i] if i < len(by_process) else r["open"],
             "fd_soft": r["fd_soft"], "base_fds": r["base_fds"]} for i, r in enumerate(rows)]


def cpu_by_host_of(series: list[SeriesPoint]) -> dict[str, float]:
    """CPU seconds of each test host's processes (its workers, or the servers), at their most:
    the workers have exited by the time the run ends."""
    out: dict[str, float] = {}
    for point in series:
        for host, cpu in point.get("cpu_by_host", {}).items():
            out[host] = max(out.get(host, 0.0), cpu)
    return out


def held_by_host_of(series: list[SeriesPoint]) -> dict[str, int]:
    """Each test host's connections held at the last hold sample that counts it (or, where the run
    never held, at their most): the workers' last reports come as their users stop, after the hold."""
    out: dict[str, int] = {}
    for point in series:
        for host, held in point.get("held_by_host", {}).items():
            out[host] = max(out.get(host, 0), held)
    # a host whose workers went silent (a link down) is left out of a sample: its last hold sample
    for point in series:
        if point["phase"] == "hold":
            out.update(point.get("held_by_host", {}))
    return out


def run_evidence(prepared: Prepared, *, series: list[SeriesPoint], status: MasterStatus, stopped_by: str | None,
                 host: str, port: int, end: End, kernel_before: dict | None, processes: list[dict],
                 watch: CostWatch | None = None, faults: list[Fault] = (), accept_queue: dict | None = None) -> Evidence:
    cfg = prepared.config
    workers = status.workers
    evidence = gather(stopped_by=stopped_by or status.stopped_by,
                      held=max(map(held_count(cfg.target is not None), series), default=0), host=host, port=port,
                      totals=status.totals, limits=prepared.limits, workers=workers,
                      sources=list(cfg.source_addresses or sources_of(workers)),
                      server_refused=status.server_refusals, servers=end.servers, processes=processes,
                      kernel_before=kernel_before, kernel_after=end.kernel_after, protocol=cfg.protocol or "echo",
                      connections=cfg.connections, memory_reserve=cfg.memory_reserve,
                      mem_available_at_stop=min((p.get("mem_available_bytes", 0) for p in series), default=None),
                      connection_bytes=prepared.plan.connection_bytes,
                      tls=cfg.tls, serving=watch.as_dict() if watch else None, faults=faults,
                      backend=None if cfg.target else cfg.backend, accept_queue=accept_queue,
                      connect_rate=connect_rate(series, "locust_held" if cfg.target else "server_open"))
    if end.hosts:
        on_hosts(evidence, end.hosts)
    return evidence


def document(prepared: Prepared, *, run_dir: Path | None, started_at: str, duration: float, epoch0: float,
             sampler: Sampler, stopped_by: str | None, host: str, port: int, end: End, kernel_before: dict | None,
             faults: list[Fault], memory_before: int | None, master_code: int | None = None,
             error: str | None = None, status: MasterStatus | None = None) -> dict:
    """The run's document; `run_dir`: where Locust wrote its CSVs (None: a web UI test, which has
    none of its own); `status`: the test's own last status (the web UI may already show the next)."""
    cfg, target = prepared.config, prepared.target
    status = status or sampler.status
    processes = target.processes if target is not None else []
    verdict = quietly(lambda: diagnose.diagnose(run_evidence(
        prepared, series=sampler.series, status=status, stopped_by=stopped_by, host=host, port=port, end=end,
        kernel_before=kernel_before, processes=processes, watch=sampler.watch, faults=list(faults),
        accept_queue=sampler.accept_queue)))
    return build_document(
        config={**cfg.as_dict(), "echo_timeout": prepared.echo_timeout, "echo_interval": prepared.echo_interval},
        plan=prepared.plan.as_dict(), limits=prepared.limits, machine={**machine(), "locust": version("locust")},
        host=host, port=port, started_at=started_at, duration=duration, series=sampler.series, status=status,
        locust_stats=locust_csv.stats(run_dir / "locust_stats.csv") if run_dir else {},
        latency_series=locust_csv.latency_series(run_dir / "locust_stats_history.csv", epoch0) if run_dir else [],
        files=locust_csv.present(run_dir) if run_dir else {}, stop_reason=stopped_by, master_code=master_code, error=error,
        faults=faults + end.injected, memory_before=memory_before,
        target=None if target is None else {"host": target.host, "port": target.port, "protocol": cfg.protocol,
                                            "local": target.local, "processes": target.processes},
        diagnosis=verdict.as_dict() if verdict else None, hosts=end.hosts,
        serving=sampler.watch.as_dict() if sampler.watch else None)
