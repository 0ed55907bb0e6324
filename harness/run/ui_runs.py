"""Each test started from the web UI, written as a run directory like `harness run`'s.

`harness ui` samples while a test runs (the same `Sampler` as a headless run: the master's status,
the servers' gauges, the kernel's count, memory and CPU) and, once the test has stopped (by
itself, by STOP, or because START began the next one), writes `results/<UTC time>-<backend>-<N>/`
with run.json (its diagnosis too), the master's log and report/report.html. The newest run's name
goes into `ui-runs.json` beside them, where the master finds it to link the report from the
Connections tab (served by the web UI itself).
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from importlib.metadata import version
from pathlib import Path

from harness.core import diagnose
from harness.core.evidence import run_evidence
from harness.core import planning
from harness.system.limits import meminfo, read_limits
from harness.report.page import build as build_report
from harness.core.rundoc import build_document
from harness.core.schema import run_dir_name
from harness.system.files import machine, utc_stamp, write_json_atomic
from harness.run.execute import RunConfig, cpu_by_host_of, servers_at_peak
from harness.run.sampler import Sampler

STOPPED = ("stopped", "stopping")  # Locust's own states once STOP was pressed
SETTLE_S = 2.0  # the status of a test's first second may still show the last test's Locust state
INDEX = "ui-runs.json"
SAMPLE_EVERY_S = 1.0


class UiRuns:
    """Follows the master's tests through its status file; `poll()` several times a second (it reads
    the status file each time and samples once a second, or at once when the test's phase changes,
    so a one-second hold is sampled while it holds)."""

    def __init__(self, sampler: Sampler, base: RunConfig, out: Path, host: str, target: dict | None = None,
                 lab=None) -> None:
        """`lab`: the `HostedRun` of a UI on test hosts: each test's run.json breaks it down by host."""
        self.sampler, self.base, self.out, self.host, self.target = sampler, base, out, host, target
        self.lab = lab
        self.test: int | None = None  # the test being recorded
        self.started_at = ""
        self.t0 = 0.0
        self.memory_before = 0
        self.written: list[Path] = []
        self.seen: set[int] = set()  # tests already recorded (or being recorded)
        self.own_status: dict = {}
        self.next_sample = 0.0

    def poll(self) -> Path | None:
        """Sample the running test; write it out once it has ended. Returns a run directory written now."""
        status = self.sampler.read_status()
        test, phase, state = status.get("test"), status.get("phase"), status.get("locust_state")
        if self.test is not None and test == self.test:
            self.own_status = status  # the last status of this test: START may begin the next one first
        if self.test is not None and (test != self.test or phase == "done" or (
                state in STOPPED and time.monotonic() - self.t0 > SETTLE_S)):
            return self._write()
        if self.test is None and test and phase in ("ramp", "hold") and test not in self.seen:
            self.seen.add(test)
            self.test, self.started_at, self.t0 = test, utc_stamp(), time.monotonic()
            self.own_status = status
            self.memory_before = meminfo()["MemAvailable"]
            if self.lab is not None:  # each test's TCP counters from its own start
                self.lab.counters_before = self.lab.counters()
            self.sampler.series.clear()
            self.sampler.t0 = self.t0
            self.next_sample = 0.0  # its first sample now
        if self.test is not None and (phase != self.sampler.phase or time.monotonic() >= self.next_sample):
            self.next_sample = time.monotonic() + SAMPLE_EVERY_S
            self.sampler.sample()
        return None

    def finish(self) -> Path | None:
        """The UI is closing: write the test still running, if any."""
        self.sampler.read_status()
        return self._write() if self.test is not None else None

    def _write(self) -> Path:
        # this test's own last status: the master's current one may already be the next test's
        status, series = self.own_status or self.sampler.status, list(self.sampler.series)
        connections = status.get("target_connections") or max((p["locust_open"] for p in series), default=0) or 1
        cfg = replace(self.base, connections=int(connections))
        limits = read_limits()
        plan = planning.plan(limits, cfg.connections, backend=cfg.backend, fd_limit=cfg.server_fd_limit,
                         processes=cfg.processes, workers=cfg.workers, worker_fd_limit=cfg.worker_fd_limit)
        run_dir = self.out / run_dir_name(self.started_at, cfg.backend if self.target is None else
                                          f"target-{self.target['port']}", cfg.connections)
        run_dir.mkdir(parents=True, exist_ok=True)
        stopped_by = None if status.get("stopped_by") else "interrupted"  # STOP before the ramp ended
        hosts = None
        if self.lab is not None:
            hosts = self.lab.results(status, cpu_by_host_of(series), series[-1]["server_rss_bytes"] if series else 0)
        diagnosis = diagnose.diagnose(run_evidence(
            config=asdict(cfg), plan=plan.as_dict(), limits=limits, series=series, status=status,
            stopped_by=stopped_by, host=self.host, port=self.sampler.group.port,
            servers=servers_at_peak(self.sampler.group, self.sampler),
            processes=(self.target or {}).get("processes", []), kernel_before=None, kernel_after=None,
            hosts=hosts))
        doc = build_document(
            config=asdict(cfg), plan=plan.as_dict(), limits=limits, machine={**machine(), "locust": version("locust")},
            host=self.host, port=self.sampler.group.port, started_at=self.started_at,
            duration=time.monotonic() - self.t0, series=series, status=status, locust_stats={}, latency_series=[],
            files={}, stop_reason=stopped_by, master_code=None, error=None, faults=[],
            memory_before=self.memory_before, target=self.target, diagnosis=diagnosis, hosts=hosts)
        write_json_atomic(run_dir / "run.json", doc)
        build_report([run_dir], run_dir / "report")
        self.written.append(run_dir)
        write_json_atomic(self.out / INDEX, {"runs": [p.name for p in self.written]})
        self.test = None
        return run_dir
