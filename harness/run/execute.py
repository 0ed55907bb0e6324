"""`harness run`: one headless run, from the machine's limits to a run directory.

Plans server processes, Locust workers and source addresses from the limits (saying why), starts
the servers and a headless Locust master and workers, samples every second (kernel count, server
gauges, worker gauges, memory), and writes `run.json` (schema 1) atomically beside Locust's own
CSVs and HTML report. Whatever ends the run (its target, a limit, a timeout, Ctrl-C, SIGTERM, a
crashed worker, an error), every process is stopped and a valid run.json is written.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from importlib.metadata import version
from pathlib import Path


from harness.system import listeners


from harness.core import diagnose


from harness.system import kernel
from harness.core import lab_layout
from harness.hosts import netns
from harness.hosts.faults import FaultError
from harness.core.lab_layout import LayoutError
from harness.hosts.netns import HostsError
from harness.core.evidence import run_evidence
from harness.core import planning
from harness.system.limits import meminfo, read_limits
from harness.run import hosted
from harness.run.cluster import LocustCluster
from harness.run.hosted import HostLayout
from harness.run.progress import RunProgress
from harness.run.sampler import Sampler
from harness.run.cluster import scenario_args
from harness.run.outside import OutsideTarget, TargetError, check_target, is_local
from harness.run import locust_csv
from harness.system.files import machine, utc_stamp, write_json_atomic
from harness.core.rundoc import build_document
from harness.core.schema import run_dir_name
from harness.core import protocols
from harness.core.addresses import is_loopback
from harness.system import procctl
from servers import registry
from harness.core.backends import MEMORY_RESERVE_BYTES, ServerConfig
from servers.gauges import ROLE_ACCEPTOR
from servers.supervisor import ConfigError, ServerGroup, StartError

WORKER_EXIT_GRACE_S = 3.0
# After a ramp stopped because the target shed held connections, the users already asked for (up to
# LEAD_STEPS steps) still arrive and it sheds for those too; worker reports come once a second.
SHED_SETTLE_S = 4.0
DEFAULT_RAMP_RATE = 10_000.0  # the shape slows down by itself where the machine cannot keep up
# The ramp's default time bound: 240 s, or long enough for the target at this many connections a
# second (a million here ramped at ~4,000/s; 240 s stopped it 7,505 short).
SLOWEST_PLANNED_RAMP = 2_000.0
# The load (servers and Locust workers) runs below the control plane (the Locust master and this
# process): at a million connections 110 processes share two cores, and a master with an equal
# share fell behind its workers' heartbeats, marked 73 of them missing and moved their users onto
# the others. At +10 the master gets ~8% of the CPU when it needs it instead of ~1%. Under
# `nice -n 19` there is no room below: the load runs SCHED_IDLE (`servers.proc.lower_priority`).
# Measured: a million across 9 test hosts under nice -n 19 with the load at nice 19 beside the
# master and this process, the sampler went 39 s without a sample and the ramp stopped at 397,380
# with 191 first echoes timed out.
LOAD_NICE = 10


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
    fill: bool = False  # --connections max: ramp until a limit stops the run
    target: str | None = None  # HOST:PORT of a server the harness does not start
    protocol: str | None = None  # what the target speaks (default echo for the harness's own servers)
    send: str = ""
    expect: str = ""
    path: str = "/"
    source_addresses: list[str] | None = None  # every worker binds these (default: planned per worker)
    allow_non_loopback: bool = False
    hosts: int = 0  # --hosts N: make N test hosts for this run (1 server host, N-1 client hosts)
    server_host: str | None = None  # ...or use hosts made by `harness hosts up`
    worker_hosts: list[str] | None = None
    master_bind: str | None = None  # HOST:PORT the master listens on (default: loopback, or the lab's bridge)
    expect_workers: int = 0  # workers started elsewhere (`harness worker --master`) to wait for
    loss: float = 0.0  # percent of packets dropped on each client host's link
    rate: str | None = None  # each client host's link shaped to this rate (tc tbf)
    link_down: float = 0.0  # seconds the first client host's link goes down mid-hold
    memory_reserve: int = MEMORY_RESERVE_BYTES  # MemAvailable the ramp leaves free (stopped_by memory)


@dataclass
class Prepared:
    config: RunConfig
    limits: dict
    plan: planning.Plan
    workers: int
    worker_fd_limit: int
    ramp_rate: float
    max_seconds: float
    target: OutsideTarget | None = None
    hosts: HostLayout | None = None  # the run across test hosts, if it is one
    master: tuple[str, int] = ("127.0.0.1", 0)  # where the master listens (port 0: a free one)


# Flags that shape the servers the harness starts, which a run against --target does not.
SERVER_FLAGS = (("processes", "--processes"), ("server_fd_limit", "--fd-limit"))
FILL_OVERSHOOT = 1.25  # --connections max asks for this much more than the predicted cap, so the run meets it
# ...past a machine-wide limit by less: every server process and worker planned for the overshoot
# costs memory and CPU at the ramp, and the first refusal ends the ramp anyway
FILL_MACHINE_OVERSHOOT = 1.05


def prepare(cfg: RunConfig) -> Prepared:
    """Validate the input and plan the run; raises RunError before anything is started."""
    try:
        registry.get(cfg.backend)
    except registry.UnknownBackend as exc:
        raise RunError(str(exc)) from None
    try:
        protocols.make(cfg.protocol or "echo", send=cfg.send, expect=cfg.expect, path=cfg.path)
    except ValueError as exc:
        raise RunError(str(exc)) from None
    for address in cfg.source_addresses or []:
        if not is_loopback(address):
            raise RunError(f"--source-addresses {address} is not on loopback; use addresses of 127.0.0.0/8")
    try:
        hosted.check(cfg)
    except (hosted.HostedError, LayoutError) as exc:
        raise RunError(str(exc)) from None
    if cfg.workers == 0 and not cfg.expect_workers:
        raise RunError("--workers 0 leaves no worker to run the users; add --expect-workers N for workers "
                       "started elsewhere with `harness worker --master`")
    if cfg.workers == 0 and hosted.wants_hosts(cfg):
        raise RunError("--workers 0 with test hosts leaves their client hosts idle; drop --workers 0")
    if hosted.wants_hosts(cfg):
        try:
            netns.require_net_admin()
        except netns.HostsError as exc:
            raise RunError(str(exc)) from None
    master = master_address(cfg)
    limits = read_limits()
    if cfg.target:
        prepared = _prepare_target(cfg, limits)
        prepared.master = master
        if cfg.workers == 0:
            prepared.workers = 0
        return prepared
    if cfg.protocol not in (None, "echo", "hold"):
        raise RunError(f"--protocol {cfg.protocol} needs a --target that speaks it; the harness's own servers "
                       "echo (--protocol echo or hold)")
    for flag, value, least in (("--fd-limit", cfg.server_fd_limit, planning.MIN_FD_LIMIT),
                               ("--worker-fd-limit", cfg.worker_fd_limit, planning.MIN_WORKER_FD_LIMIT)):
        error = planning.fd_limit_error(flag, value, limits, least)
        if error:
            raise RunError(error)
    if cfg.fill and cfg.processes:  # ask for more than these servers can hold, so the run finds where they stop
        cap = planning.plan(limits, 1, backend=cfg.backend, fd_limit=cfg.server_fd_limit, processes=cfg.processes,
                        selector=cfg.selector).caps
        cfg = replace(cfg, connections=int(min(cap.values()) * FILL_OVERSHOOT) + 50)
    elif cfg.fill:  # no --processes: as many as the machine's own first limit needs, and a little past it
        cap, name = planning.machine_cap(limits, cfg.backend)
        # memory: no further (the processes are planned within it; the floor stops the ramp there)
        cfg = replace(cfg, connections=cap if name == "memory" else int(cap * FILL_MACHINE_OVERSHOOT) + 50)
    if cfg.connections < 1:
        raise RunError(f"--connections {cfg.connections} must be at least 1")
    # --workers 0: every user runs on the outside workers, planned as if they were like ours
    planned_workers = cfg.expect_workers if cfg.workers == 0 else cfg.workers
    plan = planning.plan(limits, cfg.connections, backend=cfg.backend, fd_limit=cfg.server_fd_limit,
                     processes=cfg.processes, selector=cfg.selector, workers=planned_workers,
                     worker_fd_limit=cfg.worker_fd_limit, fill=cfg.fill)
    if plan.error:
        raise RunError(plan.error)
    prepared = _finish(cfg, limits, plan)
    prepared.master = master
    if cfg.workers == 0:
        prepared.workers = 0
    if hosted.wants_hosts(cfg):
        try:
            prepared.hosts = hosted.layout_for(cfg, plan.workers, cfg.connections)
        except (hosted.HostedError, LayoutError) as exc:
            raise RunError(str(exc)) from None
        h = prepared.hosts
        prepared.workers = plan.workers = h.workers
        plan.reasons = [r for r in plan.reasons if "client source address" not in r]  # the hosts bind their own
        plan.reasons.append(f"test hosts: servers on {h.server}; {len(h.clients)} client host(s) × "
                            f"{h.workers_per_host} worker(s), each host binding {h.addresses_per_host} address(es) "
                            f"of its own ({lab_layout.per_address():,} connections per address: half of its "
                            f"ip_local_port_range {lab_layout.HOST_PORT_RANGE[0]}-{lab_layout.HOST_PORT_RANGE[1]})")
    return prepared


def master_address(cfg: RunConfig) -> tuple[str, int]:
    """--master-bind HOST:PORT, checked: loopback, a test hosts' bridge, or (told so) elsewhere."""
    if cfg.expect_workers and not cfg.master_bind:
        raise RunError(f"--expect-workers {cfg.expect_workers} needs --master-bind HOST:PORT: the address the outside "
                       "workers are given (harness worker --master HOST:PORT)")
    if not cfg.master_bind:
        return ("127.0.0.1", 0)
    host, _, port = cfg.master_bind.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise RunError(f"--master-bind {cfg.master_bind!r} is not HOST:PORT; give e.g. 127.0.0.1:5557")
    bridges = {lab.bridge_address for lab in netns.labs()}
    if cfg.hosts:
        raise RunError("--hosts N makes a lab whose bridge the master listens on; drop --master-bind, or make the "
                       "hosts with harness hosts up and bind the bridge harness hosts status shows")
    if hosted.wants_hosts(cfg) and host not in bridges:
        raise RunError(f"--master-bind {host}: the workers on test hosts reach the master only on their lab's bridge "
                       f"({', '.join(sorted(bridges)) or 'harness hosts status'}); bind that")
    if not (is_loopback(host) or host in bridges):
        if not cfg.allow_non_loopback:
            raise RunError(f"--master-bind {host} is not loopback: workers anywhere that reaches it could join "
                           "and be told what to load; add --allow-non-loopback if that network is yours")
        print(f"warning: the Locust master listens on {host}:{port}; any worker that reaches it can join",
              file=sys.stderr)
    return (host, int(port))


def _prepare_target(cfg: RunConfig, limits: dict) -> Prepared:
    """A run against a server the harness does not start: its address, what it speaks, and what
    its processes (when it is on this machine) can hold."""
    try:
        host, port = check_target(cfg.target, cfg.protocol, cfg.allow_non_loopback)
    except TargetError as exc:
        raise RunError(str(exc)) from None
    for field_name, flag in SERVER_FLAGS:
        if getattr(cfg, field_name) is not None:
            raise RunError(f"{flag} shapes the servers the harness starts; with --target none is started: drop {flag}")
    local = is_local(host)
    found = listeners.listeners(port) if local else []
    target = OutsideTarget(host, port, found)
    room = diagnose.predicted_cap(target.processes) if found else None
    if cfg.fill:
        if room is None:
            raise RunError(f"--connections max needs to know what {cfg.target} can hold, and no process on this "
                           "machine listens there with a known fd limit; give --connections N")
        cfg = replace(cfg, connections=int(room * FILL_OVERSHOOT) + 50)
    if cfg.connections < 1:
        raise RunError(f"--connections {cfg.connections} must be at least 1")
    planned_workers = cfg.expect_workers if cfg.workers == 0 else cfg.workers  # --workers 0: all outside
    plan = planning.plan_target(limits, cfg.connections, local=local, target_room=room, workers=planned_workers,
                            worker_fd_limit=cfg.worker_fd_limit, sources_given=cfg.source_addresses)
    if plan.error:
        raise RunError(plan.error)
    prepared = _finish(cfg, limits, plan)
    prepared.target = target
    return prepared


def _finish(cfg: RunConfig, limits: dict, plan: planning.Plan) -> Prepared:
    out = Path(cfg.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()
    except OSError as exc:
        raise RunError(f"cannot write results to {out}: {exc.strerror}; choose another --out") from None
    ramp = cfg.ramp_rate or min(float(cfg.connections), DEFAULT_RAMP_RATE)
    max_seconds = cfg.max_seconds or max(240.0, cfg.connections / SLOWEST_PLANNED_RAMP)
    return Prepared(cfg, limits, plan, plan.workers, plan.worker_fd_limit, ramp, max_seconds)


def execute(prepared: Prepared, progress: bool = True) -> tuple[dict, Path]:
    cfg, plan = prepared.config, prepared.plan
    started_at = utc_stamp()
    t0 = time.monotonic()
    epoch0 = time.time()
    stop_reason: list[str] = []
    previous = {sig: signal.signal(sig, lambda s, f: stop_reason.append("interrupted"))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    scratch = Path(tempfile.mkdtemp(prefix="harness-run-"))
    target = prepared.target
    lab = hosted.HostedRun(prepared.hosts) if prepared.hosts else None
    memory_before = meminfo()["MemAvailable"]  # what the whole run costs is measured from here
    try:
        if lab is not None:
            lab.start()
        if target is None:
            config = ServerConfig(backend=cfg.backend, port=cfg.port, processes=plan.server_processes,
                                  share=cfg.share, fd_limit=plan.fd_limit, selector=cfg.selector, nice=LOAD_NICE,
                                  **({"host": lab.server.address, "netns": lab.server.name} if lab else {}))
            group: ServerGroup | OutsideTarget = ServerGroup(config, log_file=str(scratch / "servers.log"))
        else:
            group = target
        group.start()
    except (ConfigError, StartError, TargetError, hosted.HostedError, LayoutError, HostsError, FaultError,
            OSError, subprocess.SubprocessError) as exc:  # ip, nft or tc missing or refusing: one line too
        if lab is not None:
            _quietly(lab.stop)
        _restore(previous)
        raise RunError(str(exc)) from None
    except BaseException:
        if lab is not None:
            _quietly(lab.stop)
        _restore(previous)
        raise
    server_netns = lab.server.name if lab else None
    host = target.host if target else (lab.server.address if lab else "127.0.0.1")
    try:
        run_dir, cluster, sampler, kernel_before = _set_up(prepared, group, lab, host, server_netns, started_at, t0)
    except BaseException:  # nothing ran yet, but the servers and the hosts are up: take them down
        group.stop()
        if lab is not None:
            _quietly(lab.stop)
        _restore(previous)
        raise
    display = RunProgress(cfg.connections, "starting") if progress else None
    master_code = None
    error = None
    faults: list[dict] = []
    reported: set[str] = set()
    drops = {"lost": 0, "failed": {}}  # a target's held connections closed so far, and the echo failures
    hold_started = None
    hosts_doc, injected = None, []
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
                # master carries on with the others is a fault, and the result is marked. What the
                # dead worker held is read now, before the grace period ages its last report.
                sampler.read_status()
                master_code = cluster.wait_master(WORKER_EXIT_GRACE_S)
                if master_code is not None:
                    break
                for name in sorted(new_dead):
                    reported.add(name)
                    faults.append(_worker_fault(sampler, cluster.pid_of(name), dead[name]))
            for index, status in group.reap().items():
                # its slot keeps the last numbers it published (every 0.25 s), a sample may be a second older
                lost = group.board.read(index)["open"] if group.board is not None else 0
                faults.append(_fault(sampler, f"server process {index} died ({procctl.describe_exit(status)})", lost))
            if time.monotonic() > deadline:
                stop_reason.append("timeout")
                break
            # a sample each second, and one as each phase begins: the hold's first count is taken
            # then, not up to a second later (a fault may come in that second)
            now = time.monotonic()
            due = now >= next_sample
            if due or sampler.phase_began():
                point = sampler.sample()
                if due:  # on the second grid, and no burst of catch-up points after a wait (a worker's grace)
                    next_sample = max(next_sample + 1.0, now)
                if target is not None:
                    faults += _target_drops(sampler, drops)
                if display:
                    display.update(point[sampler.held_key], _rate(sampler.series, sampler.held_key),
                                   sampler.status.get("totals", {}).get("connects_failed", {}),
                                   sampler.status.get("phase", "starting"))
            if lab is not None:
                phase = sampler.status.get("phase")
                if hold_started is None and phase == "hold":
                    hold_started = time.monotonic()
                lab.tick(phase, hold_started, cfg.hold, sampler.status.get("totals", {}), time.monotonic() - t0)
            time.sleep(0.05)
        sampler.sample(fresh=True)
    except _Interrupted:
        pass
    except Exception as exc:  # noqa: BLE001 - whatever happened, stop everything and record it
        error = f"{type(exc).__name__}: {exc}"
        stop_reason.append("error")
    finally:
        if display:
            display.close()
        kernel_after = _quietly(kernel.snapshot, group.port, server_netns)  # before teardown: as the run left it
        peak_servers = servers_at_peak(group, sampler)
        cpu_by_host = cpu_by_host_of(sampler.series) if lab else {}
        # Each step of the teardown on its own: one that fails must not leave the next undone,
        # nor cost the run its run.json (the error is recorded instead).
        teardown = [_quietly_noting(cluster.stop), _quietly_noting(group.stop)]
        if lab is not None:
            totals = sampler.status.get("totals", {})
            hosts_doc = _quietly(lambda: lab.results(sampler.status, cpu_by_host,
                                                     sampler.series[-1]["server_rss_bytes"] if sampler.series else 0))
            injected = [f for f in [_quietly(lab.link_fault, totals, sampler.series)] if f]
            teardown.append(_quietly_noting(lab.stop))
        failed_teardown = [t for t in teardown if t]
        if failed_teardown and error is None:
            error = "teardown: " + "; ".join(failed_teardown)
        _move(scratch / "servers.log", run_dir / "logs" / "servers.log")
        # the run went on, but not as planned: marked. Where the shape stopped because the target
        # closed connections it had answered (it sheds them to take new ones), those closes are
        # the limit the run found, not an interruption: the ones seen while ramping and in the
        # first SHED_SETTLE_S of the hold, while the users already asked for still arrive.
        found = _shedding(faults, sampler) if sampler.status.get("shed") else []
        for fault in found:
            fault["limit"] = True  # the limit the run found: no failure of the run's own
        if any(f not in found for f in faults) and not stop_reason:
            stop_reason.append("interrupted")
        stopped_by = stop_reason[0] if stop_reason else None
        diagnosis = _quietly(lambda: diagnose.diagnose(run_evidence(
            config=asdict(cfg), plan=plan.as_dict(), limits=prepared.limits, series=sampler.series,
            status=sampler.status, stopped_by=stopped_by, host=host, port=group.port, servers=peak_servers,
            hosts=hosts_doc,
            processes=target.processes if target else [], kernel_before=kernel_before, kernel_after=kernel_after)))
        doc = build_document(
            config=asdict(cfg), plan=plan.as_dict(), limits=prepared.limits,
            machine={**machine(), "locust": version("locust")}, host=host, port=group.port, started_at=started_at,
            duration=time.monotonic() - t0, series=sampler.series, status=sampler.status,
            locust_stats=locust_csv.stats(run_dir / "locust_stats.csv"),
            latency_series=locust_csv.latency_series(run_dir / "locust_stats_history.csv", epoch0),
            files=locust_csv.present(run_dir), stop_reason=stopped_by,
            master_code=master_code, error=error, faults=faults + injected, memory_before=memory_before,
            target=_target_doc(target, cfg), diagnosis=diagnosis, hosts=hosts_doc)
        write_json_atomic(run_dir / "run.json", doc)
        _restore(previous)  # only now: a Ctrl-C while the results are written must not cut them off
    return doc, run_dir


def _set_up(prepared: Prepared, group, lab, host: str, server_netns: str | None, started_at: str, t0: float):
    """The run directory, the Locust cluster (not yet started), the sampler and the kernel's
    counters before the load: what a run needs once its servers (and hosts) are up."""
    cfg, target = prepared.config, prepared.target
    label = f"target-{target.port}" if target else (f"{cfg.backend}-hosts" if lab else cfg.backend)
    run_dir = Path(cfg.out) / run_dir_name(started_at, label, cfg.connections)
    run_dir.mkdir(parents=True)
    status_file = run_dir / "status.json"
    kernel_before = _quietly(kernel.snapshot, group.port, server_netns)  # the server host's counters and queue
    protocol_args = scenario_args(cfg.protocol, cfg.send, cfg.expect, cfg.path, cfg.allow_non_loopback,
                                  test_hosts=lab is not None)
    cluster = LocustCluster(
        host=host, port=group.port, workers=prepared.workers, log_dir=run_dir / "logs", worker_nice=LOAD_NICE,
        master_host=lab.master_host if lab and not cfg.master_bind else prepared.master[0],
        master_port=prepared.master[1], groups=lab.groups() if lab else [],
        master_args=["--headless", "--expect-workers", str(prepared.workers + cfg.expect_workers), *protocol_args,
                     "--target-connections", str(cfg.connections), "--ramp-rate", str(prepared.ramp_rate),
                     "--hold-seconds", str(cfg.hold), "--echo-interval", str(cfg.echo_interval),
                     "--echo-mode", cfg.echo_mode,
                     "--echo-timeout", str(cfg.echo_timeout),
                     "--max-seconds", str(prepared.max_seconds), "--memory-floor", str(cfg.memory_reserve),
                     *(["--server-gauges", group.gauges_path] if group.gauges_path else []),
                     "--status-file", str(status_file), "--kernel-interval", "0", "--csv", str(run_dir / "locust"),
                     "--csv-full-history", "--html", str(run_dir / "locust.html"), "--only-summary"],
        worker_args=["--worker-fd-limit", str(prepared.worker_fd_limit), "--user-mode", cfg.user_mode,
                     "--echo-timeout", str(cfg.echo_timeout), *protocol_args,
                     *(["--source-addresses", ",".join(cfg.source_addresses)] if cfg.source_addresses else [])])
    sampler = Sampler(group, cluster, status_file, t0, netns=server_netns, by_host=lab is not None)
    return run_dir, cluster, sampler, kernel_before


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


def _target_drops(sampler: Sampler, seen: dict) -> list[dict]:
    """Held connections a target closed or reset since the last sample (it restarted, or shed
    load), as a fault: verified connections no longer held, by the failure names that came."""
    status = sampler.status
    if status.get("phase") not in ("ramp", "hold"):
        return []  # at the end the users are stopped: that is not the target's doing
    totals = status.get("totals", {})
    lost = totals.get("connects_ok", 0) - totals.get("held", 0)
    failed = totals.get("echo_failed", {})
    if lost <= seen["lost"]:
        return []
    new = {k: v - seen["failed"].get(k, 0) for k, v in failed.items() if v > seen["failed"].get(k, 0)}
    how = ", ".join(f"{k} {v:,}" for k, v in new.items()) or "closed"
    fault = {**_fault(sampler, f"the target closed {lost - seen['lost']:,} held connection(s) ({how})",
                      lost - seen["lost"]), "kind": "target-drop", "phase": status["phase"]}
    seen.update(lost=lost, failed=dict(failed))
    return [fault]


def _shedding(faults: list[dict], sampler: Sampler) -> list[dict]:
    """The target-drop faults that are the target shedding load as the ramp stopped."""
    hold_at = next((p["t"] for p in sampler.series if p["phase"] == "hold"), None)
    return [f for f in faults if f.get("kind") == "target-drop"
            and (f.get("phase") == "ramp" or (hold_at is not None and f["t"] <= hold_at + SHED_SETTLE_S))]


def _rate(series: list[dict], key: str) -> float:
    if len(series) < 2:
        return 0.0
    a, b = series[-2], series[-1]
    return max(0.0, (b[key] - a[key]) / max(1e-6, b["t"] - a["t"]))


def _quietly_noting(step) -> str | None:
    """Run one teardown step; what went wrong, or None."""
    try:
        step()
    except Exception as exc:  # noqa: BLE001
        return f"{getattr(step, '__qualname__', step)}: {type(exc).__name__}: {exc}"
    return None


def _quietly(read, *args):
    """What `read` returns, or None if it fails: the diagnosis must never cost a run its run.json."""
    try:
        return read(*args)
    except Exception:  # noqa: BLE001
        return None


def cpu_by_host_of(series: list[dict]) -> dict[str, float]:
    """CPU seconds of each test host's processes (its workers, or the servers), at their most:
    the workers have exited by the time the run ends."""
    out: dict[str, float] = {}
    for point in series:
        for host, cpu in point.get("cpu_by_host", {}).items():
            out[host] = max(out.get(host, 0.0), cpu)
    return out


def servers_at_peak(group, sampler: Sampler) -> list[dict]:
    """The harness's own server processes' gauges (cap, open at the peak, fd limit), for the diagnosis."""
    if group.board is None:
        return []
    rows = [r for r in group.board.read_all() if r["role"] != ROLE_ACCEPTOR]
    peak = max(sampler.series, key=lambda p: p["kernel_established"], default=None)
    by_process = peak["server_open_by_process"] if peak else []
    return [{"pid": r["pid"], "cap": r["cap"], "open": by_process[i] if i < len(by_process) else r["open"],
             "fd_soft": r["fd_soft"], "base_fds": r["base_fds"]} for i, r in enumerate(rows)]


def _target_doc(target: OutsideTarget | None, cfg: RunConfig) -> dict | None:
    if target is None:
        return None
    return {"host": target.host, "port": target.port, "protocol": cfg.protocol, "local": target.local,
            "processes": target.processes}


def _move(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.exists():
        os.replace(src, dst)


def _restore(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)
