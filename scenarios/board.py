"""The Locust master's view of a test: its workers' reports, joined with the servers' gauges and the
kernel's count, as the load shape, the status file and the web UI read it.

Every Locust process that runs users reports its tally once a second (`scenarios.reporting`). The
master keeps the latest report of each worker in `BOARD` and adds up the live ones (`Totals`); it
maps the servers' gauge file (`--server-gauges`) and counts the kernel's established connections on
the port (`ss`). `MasterStatus` is what it writes to `--status-file` for the harness. Once the ramp
has ended it can say why, with the same diagnosis as `run.json` (`harness.core.diagnose`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field

import gevent

from harness.core import diagnose
from harness.core.evidence import gather, sources_of
from harness.core.records import (
    ECHO_COUNTS,
    STALE_COUNTS,
    EchoLatency,
    MasterStatus,
    ServerGauge,
    Totals,
    WorkerReport,
    total_refusals,
)
from harness.system import kernel, listeners
from harness.system.limits import read_limits
from harness.system.ss import established_on_port
from scenarios.chart import Series
from scenarios.reporting import MESSAGE, PHASE_MESSAGE, REPORT_INTERVAL_S, RESET_MESSAGE
from scenarios.tally import new_latency_histogram
from servers.gauges import ROLE_ACCEPTOR, GaugeBoard

STALE_S = 5.0  # a worker silent this long is left out of the totals (the shape never lowers its target for it)
KERNEL_INTERVAL_S = 2.0
DIAGNOSIS_EVERY_S = 2.0
WORKERS_READY_S = 30.0  # a test's first users wait this long at most for a connected worker's first report


@dataclass
class Board:
    """The master's view: latest report per worker, the servers' gauges, the kernel's count."""

    workers: dict[str, WorkerReport] = field(default_factory=dict)
    server_board: GaugeBoard | None = None
    port: int | None = None
    kernel_established: int | None = None
    kernel_at: float = 0.0
    netns: str | None = None  # the test host the servers run in (--server-netns), where the kernel counts
    peak_kernel: int = 0
    stopped_by: str | None = None
    shed: bool = False  # the ramp stopped because the target closed connections it had answered
    phase: str = "idle"
    host: str = "127.0.0.1"
    runner: object = None  # the master's runner: its state goes into the status
    connections: int = 0  # what the current test ramps to
    options: dict = field(default_factory=dict)  # the current test's options from the start form
    ui_results: str = ""  # where harness ui writes each test's run directory (ui-runs.json)
    status_file: str = ""  # --status-file: written every REPORT_INTERVAL_S and as each phase begins
    test: int = 0  # each START (or headless run) is a new test; workers' reports carry its number
    _before: dict = field(default_factory=dict)  # at the ramp's start: kernel counters, target processes
    _refusals_base: dict = field(default_factory=dict)  # the servers' refusal counters as the test began
    _diagnosis: tuple = (0.0, None)  # (when, verdict): the last live diagnosis

    def on_message(self, environment, msg, **kwargs) -> None:
        report = msg.data
        if report.get("test", 0) != self.test:
            # From before the worker heard of this test: what it holds and may hold is current,
            # its counts are the last test's.
            report = {**report, **STALE_COUNTS}
            if self.phase != "idle" and self.runner is not None:
                # Told again until its reports carry this test: a worker drops a message that comes
                # before it listens for its type, and the phase came as its users were spawned.
                self.runner.send_message(PHASE_MESSAGE, self._phase_message(), client_id=msg.node_id)
        self.workers[msg.node_id] = report

    def new_test(self) -> None:
        """A test starts (the shape's reset_time): forget the last one's counts, verdict and
        peak; the servers' refusals count from here. Workers reset when the phase message with the
        new number reaches them."""
        self.test += 1
        SERIES.reset()
        # keep what each worker holds and may hold (the first tick needs it); not its counts
        self.workers = {node: {**report, **STALE_COUNTS} for node, report in self.workers.items()}
        self.stopped_by, self.shed, self.phase, self._before, self.peak_kernel = None, False, "idle", {}, 0
        self._refusals_base = self._all_refusals()

    def set_phase(self, runner, phase: str) -> None:
        """The shape's phase; workers are told whether it is ramping. The status file says it at
        once: a one-second hold must not fall between two of its periodic writes."""
        if phase != self.phase:
            if phase == "ramp":
                self._note_start()
            self.phase = phase
            runner.send_message(PHASE_MESSAGE, self._phase_message())
            if self.status_file:
                write_status(self.status_file)

    def wait_for_workers(self, runner, timeout: float = WORKERS_READY_S) -> bool:
        """Until every worker connected to the master has reported, or `timeout`; True if none had
        to be waited for. A worker takes users from a spawn message that can come before its init
        has run (locust#1730): a user would connect from a process not yet set up (no source address
        yet: EINVAL), and a phase message would be dropped. A worker reports from its init on."""
        clients = getattr(runner, "clients", None)  # a master's; a local runner has its init done
        deadline = time.monotonic() + timeout
        waited = False
        while clients is not None and (silent := [c.id for c in clients.all
                                                  if c.state != "missing" and c.id not in self.workers]):
            if time.monotonic() > deadline:
                logging.getLogger(__name__).warning("worker(s) %s sent no report in %g s: the test starts without "
                                                    "waiting for them", ", ".join(silent), timeout)
                break
            waited = True
            gevent.sleep(0.02)
        return not waited

    def _phase_message(self) -> dict:
        return {"ramping": self.phase == "ramp", "test": self.test}

    def live_workers(self, now: float | None = None) -> list[WorkerReport]:
        now = time.time() if now is None else now
        return [r for r in self.workers.values() if now - r["at"] < STALE_S]

    def totals(self) -> Totals:
        return Totals.of(self.live_workers())

    def echo_latency(self) -> EchoLatency:
        """Latency after the ramp, every live worker's HdrHistogram merged: count, percentiles in
        ms, and the merged histogram (base64) so results can be re-read at any precision."""
        merged = new_latency_histogram()
        for report in self.live_workers():
            if report["latency"]:
                merged.decode_and_add(report["latency"])
        count = merged.get_total_count()
        summary = EchoLatency(count=count)
        if count:
            for q in (50, 90, 99, 99.9):
                summary[f"p{q:g}".replace(".", "_")] = merged.get_value_at_percentile(q) / 1000
            summary["max"] = merged.get_max_value() / 1000
        summary["histogram"] = merged.encode().decode()
        return summary

    def servers(self) -> list[ServerGauge]:
        if self.server_board is None:
            return []
        return [g for g in self.server_board.read_all() if g["role"] != ROLE_ACCEPTOR]

    def server_refusals(self) -> dict[str, int]:
        now = self._all_refusals()
        return {k: v - self._refusals_base.get(k, 0) for k, v in now.items() if v > self._refusals_base.get(k, 0)}

    def _all_refusals(self) -> dict[str, int]:
        if self.server_board is None:
            return {}
        return dict(total_refusals(self.server_board.read_all()))

    def refresh_kernel(self) -> None:
        if self.port is not None:
            self.kernel_established = established_on_port(self.port, self.netns)
            self.peak_kernel = max(self.peak_kernel, self.kernel_established)
            self.kernel_at = time.time()

    def next_limit(self, totals: Totals) -> str:
        """The limit predicted to stop the run next, from the gauges."""
        candidates = []
        servers = self.servers()
        if servers:
            room = sum(max(0, g["cap"] - g["open"]) for g in servers)
            candidates.append((room, f"server fd limits ({sum(g['cap'] for g in servers):,} in all)"))
        if totals.max_users:
            candidates.append((max(0, totals.max_users - totals.open),
                               f"Locust workers' fd limits ({totals.max_users:,} users in all)"))
        if not candidates:
            return "unknown"
        room, name = min(candidates)
        return f"{name}: room for {room:,} more"

    def reset_stats(self) -> None:
        """RESET in the web UI (Locust's reset_stats event): the workers start their echo counts
        again, and until they report, the last reports' echo counts are not shown."""
        if self.runner is not None:
            self.runner.send_message(RESET_MESSAGE, {})
        self.workers = {node: {**report, **ECHO_COUNTS} for node, report in self.workers.items()}

    def _note_start(self) -> None:
        """What the diagnosis compares with: the kernel's counters and, for a target on this
        machine, its processes, as the ramp begins."""
        if self.port is None:
            return
        try:
            procs = [] if self.server_board is not None else listeners.listeners(self.port)
            self._before = {"kernel": kernel.snapshot(self.port, self.netns), "processes": listeners.tracked(procs)}
        except (OSError, ValueError):
            self._before = {}

    def diagnosis(self) -> dict | None:
        """Once the ramp has ended: the same verdict as run.json's, from the gauges (the web UI).
        Worked out at most every DIAGNOSIS_EVERY_S (it runs ss and reads /proc): the UI polls
        often, and the master must keep up with its workers."""
        if self.stopped_by is None or self.port is None:
            return None
        cached_at, cached = self._diagnosis
        if time.monotonic() - cached_at < DIAGNOSIS_EVERY_S and cached and cached.get("test") == self.test:
            return cached
        verdict = {**self._diagnose().as_dict(), "test": self.test}
        self._diagnosis = (time.monotonic(), verdict)
        return verdict

    def _diagnose(self) -> diagnose.Verdict:
        procs = self._before.get("processes", [])
        listeners.track(procs)
        workers = self.live_workers()
        return diagnose.diagnose(gather(
            stopped_by=self.stopped_by, held=self.totals().held, host=self.host, port=self.port,
            totals=self.totals(), limits=read_limits(), workers=workers, sources=sources_of(workers),
            server_refused=self.server_refusals(),
            servers=[{"pid": g["pid"], "cap": g["cap"], "open": g["open"], "fd_soft": g["fd_soft"],
                      "base_fds": g["base_fds"]} for g in self.servers()],
            processes=procs, kernel_before=self._before.get("kernel"),
            kernel_after=kernel.snapshot(self.port, self.netns)))

    def status(self) -> MasterStatus:
        totals = self.totals()
        workers = [{k: v for k, v in r.items() if k != "latency"} for r in self.live_workers()]
        return MasterStatus(
            test=self.test, locust_state=getattr(self.runner, "state", None), connections=self.connections,
            options=self.options,
            phase=self.phase, stopped_by=self.stopped_by, shed=self.shed, totals=totals,
            workers=sorted(workers, key=lambda r: r["worker_index"]), echo_latency=self.echo_latency(),
            servers=self.servers(), server_refusals=self.server_refusals(),
            kernel_established=self.kernel_established, peak_kernel_established=self.peak_kernel,
            next_limit=self.next_limit(totals))


BOARD = Board()
SERIES = Series()  # the web UI's picture of the test, reset with it


def start_master(runner, server_gauges: str | None, port: int | None, status_file: str | None,
                 kernel_interval: float = KERNEL_INTERVAL_S, host: str | None = None,
                 netns: str | None = None) -> None:
    """On the master (or local runner): collect reports, poll the kernel every `kernel_interval`
    (ss is slow at 100k connections), write the status file every REPORT_INTERVAL_S."""
    runner.register_message(MESSAGE, BOARD.on_message)
    BOARD.port, BOARD.runner, BOARD.netns, BOARD.status_file = port, runner, netns or None, status_file or ""
    if host:
        BOARD.host = host
    if server_gauges:
        BOARD.server_board = GaugeBoard.open(server_gauges)

    def loop() -> None:
        last_kernel = 0.0
        while True:
            if kernel_interval and time.monotonic() - last_kernel >= kernel_interval:
                BOARD.refresh_kernel()
                last_kernel = time.monotonic()
            if status_file:
                write_status(status_file)
            SERIES.record(BOARD, time.monotonic())
            gevent.sleep(REPORT_INTERVAL_S)

    gevent.spawn(loop)
    if status_file:  # the workers' last reports came before they quit: the status says them
        runner.environment.events.quitting.add_listener(lambda **_: write_status(status_file))


def write_status(path: str) -> None:
    """The master's status, replaced whole. At the machine's file-table limit (ENFILE, where a ramp
    to `--connections max` stops) the open fails: this write is skipped, the next one comes."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(BOARD.status().as_dict(), f)
        os.replace(tmp, path)
    except OSError:
        pass
