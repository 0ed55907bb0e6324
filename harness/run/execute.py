"""`harness run`: one headless run, from a prepared plan to a run directory.

A short sequence over a `Session` (hosts, servers, Locust cluster, released in reverse on every
path): make the run directory, count the kernel's counters, start Locust, run the loop
(`harness.run.control`), read how the system was left, let everything go, then write `run.json`
(schema 2) atomically beside Locust's own CSVs and HTML report. Whatever ends the run (its target,
a limit, a timeout, Ctrl-C, SIGTERM, a crashed worker, an error), every process is stopped and a
valid run.json is written before the signal handlers come back.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from harness.core.schema import run_dir_name
from harness.run.control import Control
from harness.run.document import cost_watch, document, observe_end, quietly
from harness.run.prepare import Prepared
from harness.run.progress import RunProgress
from harness.run.sampler import Sampler
from harness.run.session import Session, interruptible
from harness.system import kernel
from harness.system.files import utc_stamp, write_json_atomic
from harness.system.limits import memory_available

# Locust's own outputs in a headless run: CSVs with the full history, its HTML report, no per-second lines.
HEADLESS = ["--headless", "--csv-full-history", "--only-summary"]


def execute(prepared: Prepared, progress: bool = True) -> tuple[dict, Path]:
    started_at, t0, epoch0 = utc_stamp(), time.monotonic(), time.time()
    scratch = Path(tempfile.mkdtemp(prefix="harness-run-"))
    with interruptible() as stop:
        memory_before = memory_available()  # what the whole run costs is measured from here
        with Session(prepared, scratch) as session:
            run_dir = Path(prepared.config.out) / run_dir_name(started_at, _label(prepared, session),
                                                               prepared.config.connections)
            run_dir.mkdir(parents=True)
            kernel_before = quietly(kernel.snapshot, session.group.port, session.server_netns)
            sampler = Sampler(session.group, run_dir / "status.json", t0, netns=session.server_netns,
                              by_host=session.lab is not None)
            sampler.watch = cost_watch(prepared)
            control = Control(session, sampler, stop,
                              RunProgress(prepared.config.connections, "starting") if progress else None)
            if not stop:  # Ctrl-C while the servers were starting: no Locust to start
                sampler.cluster = _start_locust(prepared, session, run_dir)
                control.run()
            end = observe_end(session, sampler)
        control.mark_shedding()
        _move(scratch / "servers.log", run_dir / "logs" / "servers.log")
        error = control.error or ("teardown: " + "; ".join(session.teardown) if session.teardown else None)
        doc = document(prepared, run_dir=run_dir, started_at=started_at, duration=time.monotonic() - t0,
                       epoch0=epoch0, sampler=sampler, stopped_by=stop[0] if stop else None, host=session.host,
                       port=session.group.port, end=end, kernel_before=kernel_before, faults=control.faults,
                       memory_before=memory_before, master_code=control.master_code, error=error)
        write_json_atomic(run_dir / "run.json", doc)
    return doc, run_dir


def _start_locust(prepared: Prepared, session: Session, run_dir: Path):
    expected = prepared.workers + prepared.config.expect_workers
    return session.start_cluster(run_dir / "logs", master_args=[
        *HEADLESS, "--expect-workers", str(expected), "--status-file", str(run_dir / "status.json"),
        "--kernel-interval", "0", "--csv", str(run_dir / "locust"), "--html", str(run_dir / "locust.html")])


def _label(prepared: Prepared, session: Session) -> str:
    if prepared.target is not None:
        return f"target-{prepared.target.port}"
    return f"{prepared.config.backend}-hosts" if session.lab is not None else prepared.config.backend


def _move(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.exists():
        os.replace(src, dst)
