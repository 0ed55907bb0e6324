"""`harness ui`: a server group (or `--target`, a server the harness does not start), a Locust
master with its web UI on 127.0.0.1, and W workers (or, with --server-host/--worker-hosts, the
servers on one test host and W workers on each of the others), held by one `Session` for every
test started from the form.

Prints the URL and waits; each test is written as a run directory (`harness.run.ui_runs`); Ctrl-C or
SIGTERM stops the workers, the master and the servers, in that order, and nothing is left behind.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from harness.run.document import cost_watch
from harness.run.prepare import Prepared
from harness.run.sampler import Sampler
from harness.run.session import Session, interruptible
from harness.run.ui_runs import UiRuns

POLL_S = 0.2


def run_ui(prepared: Prepared, web_port: int) -> int:
    cfg = prepared.config
    workdir = Path(tempfile.mkdtemp(prefix="harness-ui-"))
    out = Path(cfg.out)
    with interruptible() as stop, Session(prepared, workdir) as session:
        sampler = Sampler(session.group, workdir / "status.json", time.monotonic(), netns=session.server_netns,
                          by_host=session.lab is not None)
        sampler.watch = cost_watch(prepared)
        runs = UiRuns(prepared, session, sampler, out)
        try:
            sampler.cluster = session.start_cluster(workdir, master_args=[
                "--web-host", "127.0.0.1", "--web-port", str(web_port), "--expect-workers", str(prepared.workers),
                "--users", str(cfg.connections), "--spawn-rate", str(prepared.ramp_rate),
                "--status-file", str(workdir / "status.json"), "--ui-results", str(out)])
            _say_where(prepared, session, web_port, workdir)
            while not stop:
                dead = session.cluster.dead()
                if "master" in dead:
                    print(f"the Locust master exited (code {dead['master']}); see {workdir / 'master.log'}",
                          file=sys.stderr)
                    return 1
                written = runs.poll()
                if written:
                    print(f"run written: {written / 'run.json'} (report: {written / 'report' / 'report.html'})",
                          flush=True)
                time.sleep(POLL_S)
            return 0
        finally:
            try:
                written = runs.finish()
                if written:
                    print(f"run written: {written / 'run.json'}", flush=True)
            except Exception as exc:  # noqa: BLE001 - the processes must still be stopped
                print(f"harness ui: the last test's run directory was not written: {exc}", file=sys.stderr)
            print("stopping: Locust workers, master" + ("" if cfg.target else " and every server process"),
                  file=sys.stderr, flush=True)


def _say_where(prepared: Prepared, session: Session, web_port: int, workdir: Path) -> None:
    cfg, lab, group = prepared.config, session.lab, session.group
    if cfg.target:
        print(f"target: {session.host}:{group.port} ({cfg.protocol}); Locust: 1 master + {prepared.workers} "
              "worker(s)", flush=True)
    else:
        print(f"servers: {cfg.backend} ×{prepared.plan.server_processes} on {session.host}:{group.port}"
              + (f" (test host {lab.server.name})" if lab else "")
              + f" (fd limit {group.fd_limit} each); Locust: 1 master + {prepared.workers} worker(s)"
              + (f" on {', '.join(lab.plan.clients)}" if lab else ""), flush=True)
    print(f"web UI: http://127.0.0.1:{web_port}  (the Connections tab shows the harness's gauges; "
          f"Ctrl-C stops everything; logs in {workdir})", flush=True)
