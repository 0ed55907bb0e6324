"""Each test started from the web UI, written as a run directory like `harness run`'s.

`harness ui` samples while a test runs (the same `Sampler` as a headless run: the master's status,
the servers' gauges, the kernel's count, memory and CPU) and, once the test has stopped (by itself,
by STOP, or because START began the next one), writes `results/<UTC time>-<backend>-<N>/` with
run.json (`harness.run.document`, its diagnosis too) and report/report.html. The newest run's name
goes into `ui-runs.json` beside them, where the master finds it to link the report from the
Connections tab (served by the web UI itself).
"""

from __future__ import annotations

import time
from pathlib import Path

from harness.core.records import MasterStatus
from harness.core.schema import run_dir_name
from harness.report.page import build as build_report
from harness.run.document import cost_watch, document, observe_end
from harness.run.prepare import Prepared, replan
from harness.run.sampler import Sampler
from harness.system.files import utc_stamp, write_json_atomic
from harness.system.limits import memory_available

STOPPED = ("stopped", "stopping")  # Locust's own states once STOP was pressed
SETTLE_S = 2.0  # the status of a test's first second may still show the last test's Locust state
INDEX = "ui-runs.json"
SAMPLE_EVERY_S = 1.0


class UiRuns:
    """Follows the master's tests through its status file; `poll()` several times a second (it reads
    the status file each time and samples once a second, or at once when the test's phase changes,
    so a one-second hold is sampled while it holds)."""

    def __init__(self, prepared: Prepared, session, sampler: Sampler, out: Path) -> None:
        self.prepared, self.session, self.sampler, self.out = prepared, session, sampler, out
        self.test: int | None = None  # the test being recorded
        self.started_at = ""
        self.t0 = 0.0
        self.epoch0 = 0.0
        self.memory_before = 0
        self.written: list[Path] = []
        self.seen: set[int] = set()  # tests already recorded (or being recorded)
        self.own_status = MasterStatus()
        self.next_sample = 0.0

    def poll(self) -> Path | None:
        """Sample the running test; write it out once it has ended. Returns a run directory written now."""
        status = self.sampler.read_status()
        test, phase, state = status.test, status.phase, status.locust_state
        if self.test is not None and test == self.test:
            self.own_status = status  # the last status of this test: START may begin the next one first
        if self.test is not None and (test != self.test or phase == "done" or (
                state in STOPPED and time.monotonic() - self.t0 > SETTLE_S)):
            return self._write()
        if self.test is None and test and phase in ("ramp", "hold") and test not in self.seen:
            self._begin(test, status)
        if self.test is not None and (phase != self.sampler.phase or time.monotonic() >= self.next_sample):
            self.next_sample = time.monotonic() + SAMPLE_EVERY_S
            self.sampler.sample()
        return None

    def finish(self) -> Path | None:
        """The UI is closing: write the test still running, if any."""
        self.sampler.read_status()
        return self._write() if self.test is not None else None

    def _begin(self, test: int, status: MasterStatus) -> None:
        self.seen.add(test)
        self.test, self.started_at, self.t0, self.epoch0 = test, utc_stamp(), time.monotonic(), time.time()
        self.own_status = status
        self.memory_before = memory_available()
        if self.session.lab is not None:  # each test's TCP counters from its own start
            self.session.lab.counters_before = self.session.lab.counters()
        self.sampler.begin_test(self.t0)
        if self.sampler.watch is not None:  # each test's costs from its own first sample, toward its own count
            self.sampler.watch = cost_watch(replan(self.prepared, status.connections or self.prepared.config.connections,
                                                   status.options))
        self.next_sample = 0.0  # its first sample now

    def _write(self) -> Path:
        # this test's own last status: the master's current one may already be the next test's
        status = self.own_status
        series = list(self.sampler.series)
        connections = status.connections or max((p["locust_open"] for p in series), default=0) or 1
        prepared = replan(self.prepared, int(connections), status.options)
        run_dir = self.out / run_dir_name(self.started_at, prepared.config.backend if prepared.target is None
                                          else f"target-{prepared.target.port}", prepared.config.connections)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.sampler.series = series
        end = observe_end(self.session, self.sampler)
        end.kernel_after = None  # a later test's load may be on the port by now: no kernel before/after per test
        doc = document(prepared, run_dir=None, started_at=self.started_at, duration=time.monotonic() - self.t0,
                       epoch0=self.epoch0, sampler=self.sampler, status=status, host=self.session.host,
                       port=self.session.group.port, end=end, kernel_before=None, faults=[],
                       memory_before=self.memory_before,
                       stopped_by=None if status.stopped_by else "interrupted")  # STOP before the ramp ended
        write_json_atomic(run_dir / "run.json", doc)
        build_report([run_dir], run_dir / "report")
        self.written.append(run_dir)
        write_json_atomic(self.out / INDEX, {"runs": [p.name for p in self.written]})
        self.test = None
        return run_dir
