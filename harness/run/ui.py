"""`harness ui`: a server group, a Locust master with its web UI on 127.0.0.1, and W workers.

Prints the URL and waits; Ctrl-C or SIGTERM stops the workers, the master and the servers, in that
order, and nothing is left behind.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from harness.run.cluster import LocustCluster
from harness.run.execute import LOAD_NICE
from servers.contract import ServerConfig
from servers.supervisor import ConfigError, ServerGroup, StartError


def run_ui(args: argparse.Namespace) -> int:
    config = ServerConfig(backend=args.backend, port=args.port, processes=args.processes, share=args.share,
                          fd_limit=args.fd_limit, nice=LOAD_NICE)
    workdir = Path(tempfile.mkdtemp(prefix="harness-ui-"))
    stopping: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda s, f: stopping.append(s))
    try:
        group = ServerGroup(config, log_file=str(workdir / "servers.log")).start()
    except (ConfigError, StartError) as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"harness ui: error: {exc}", file=sys.stderr)
        return 2
    cluster = LocustCluster(
        host="127.0.0.1", port=group.port, workers=args.workers, log_dir=workdir, worker_nice=LOAD_NICE,
        master_args=["--web-host", "127.0.0.1", "--web-port", str(args.web_port), "--expect-workers",
                     str(args.workers), "--server-gauges", group.gauges_path,
                     "--target-connections", str(args.connections), "--echo-interval", str(args.echo_interval),
                     "--status-file", str(workdir / "status.json")],
        worker_args=[*(["--worker-fd-limit", str(args.worker_fd_limit)] if args.worker_fd_limit else [])])
    try:
        cluster.start()
        print(f"servers: {args.backend} ×{args.processes} on 127.0.0.1:{group.port} "
              f"(fd limit {group.fd_limit} each); Locust: 1 master + {args.workers} worker(s)", flush=True)
        print(f"web UI: http://127.0.0.1:{args.web_port}  (the Connections tab shows the harness's gauges; "
              f"Ctrl-C stops everything; logs in {workdir})", flush=True)
        while not stopping:
            dead = cluster.dead()
            if "master" in dead:
                print(f"the Locust master exited (code {dead['master']}); see {workdir / 'master.log'}",
                      file=sys.stderr)
                return 1
            time.sleep(0.2)
        return 0
    finally:
        cluster.stop()
        group.stop()
        print("stopped: Locust workers, master and every server process", file=sys.stderr, flush=True)
