"""`harness ui`: a server group (or `--target`, a server the harness does not start), a Locust
master with its web UI on 127.0.0.1, and W workers (or, with --server-host/--worker-hosts, the
servers on one test host and W workers on each of the others).

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

from harness.system import listeners
from harness.hosts.faults import FaultError
from harness.core.lab_layout import LayoutError
from harness.hosts.netns import HostsError
from harness.run.hosted import HostedError, HostedRun, check, layout_for
from harness.run.cluster import LocustCluster, scenario_args
from harness.run.execute import LOAD_NICE, RunConfig
from harness.run.sampler import Sampler
from harness.run.outside import OutsideTarget, TargetError, check_target, is_local
from harness.run.ui_runs import UiRuns
from harness.core.backends import ServerConfig
from servers.supervisor import ConfigError, ServerGroup, StartError


def run_ui(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="harness-ui-"))
    stopping: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda s, f: stopping.append(s))
    lab = None
    try:
        lab = _hosts(args)
        group = _servers_or_target(args, workdir, lab)
    except (ConfigError, StartError, TargetError, HostedError, LayoutError, HostsError, FaultError) as exc:
        if lab is not None:
            lab.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"harness ui: error: {exc}", file=sys.stderr)
        return 2
    host = group.host if args.target else (lab.server.address if lab else "127.0.0.1")
    workers = lab.plan.workers if lab else args.workers
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    protocol_args = scenario_args(args.protocol, args.send, args.expect, args.path, args.allow_non_loopback,
                                  test_hosts=lab is not None)
    cluster = LocustCluster(
        host=host, port=group.port, workers=workers, log_dir=workdir,
        worker_nice=LOAD_NICE, **({"master_host": lab.master_host, "groups": lab.groups()} if lab else {}),
        master_args=["--web-host", "127.0.0.1", "--web-port", str(args.web_port), "--expect-workers",
                     str(workers), *(["--server-gauges", group.gauges_path] if group.gauges_path else []),
                     *(["--server-netns", lab.server.name] if lab else []),
                     "--users", str(args.connections), "--spawn-rate", str(args.ramp_rate or min(args.connections, 10_000)),
                     "--echo-interval", str(args.echo_interval),
                     "--status-file", str(workdir / "status.json"), "--ui-results", str(out), *protocol_args],
        worker_args=[*(["--worker-fd-limit", str(args.worker_fd_limit)] if args.worker_fd_limit else []),
                     *protocol_args,
                     *(["--source-addresses", ",".join(args.source_addresses)] if args.source_addresses else [])])
    sampler = Sampler(group, cluster, workdir / "status.json", time.monotonic(), netns=lab.server.name if lab else None,
                      by_host=lab is not None)
    runs = UiRuns(sampler, _base_config(args), out, host,
                  {"host": group.host, "port": group.port, "protocol": args.protocol, "local": group.local,
                   "processes": group.processes} if args.target else None, lab=lab)
    try:
        cluster.start()
        if args.target:
            print(f"target: {host}:{group.port} ({args.protocol}); Locust: 1 master + {args.workers} worker(s)",
                  flush=True)
        else:
            print(f"servers: {args.backend} ×{args.processes} on {host}:{group.port}"
                  + (f" (test host {lab.server.name})" if lab else "")
                  + f" (fd limit {group.fd_limit} each); Locust: 1 master + {workers} worker(s)"
                  + (f" on {', '.join(lab.plan.clients)}" if lab else ""), flush=True)
        print(f"web UI: http://127.0.0.1:{args.web_port}  (the Connections tab shows the harness's gauges; "
              f"Ctrl-C stops everything; logs in {workdir})", flush=True)
        while not stopping:
            dead = cluster.dead()
            if "master" in dead:
                print(f"the Locust master exited (code {dead['master']}); see {workdir / 'master.log'}",
                      file=sys.stderr)
                return 1
            written = runs.poll()
            if written:
                print(f"run written: {written / 'run.json'} (report: {written / 'report' / 'report.html'})",
                      flush=True)
            time.sleep(0.2)
        return 0
    finally:
        try:
            written = runs.finish()
            if written:
                print(f"run written: {written / 'run.json'}", flush=True)
        except Exception as exc:  # noqa: BLE001 - the processes must still be stopped
            print(f"harness ui: the last test's run directory was not written: {exc}", file=sys.stderr)
        cluster.stop()
        group.stop()
        if lab is not None:
            lab.stop()
        print("stopped: Locust workers, master" + ("" if args.target else " and every server process"),
              file=sys.stderr, flush=True)


def _base_config(args: argparse.Namespace) -> RunConfig:
    """What a run started from this UI is, as a headless run's configuration would say it."""
    return RunConfig(backend=args.backend, processes=args.processes, share=args.share, server_fd_limit=args.fd_limit,
                     workers=args.workers, worker_fd_limit=args.worker_fd_limit, port=args.port,
                     echo_interval=args.echo_interval, out=args.out, target=args.target, protocol=args.protocol)


def _hosts(args: argparse.Namespace) -> HostedRun | None:
    """--server-host/--worker-hosts: hosts made by `harness hosts up`, --workers on each client host."""
    if not (args.server_host or args.worker_hosts):
        return None
    cfg = RunConfig(server_host=args.server_host, worker_hosts=args.worker_hosts, target=args.target)
    check(cfg)
    plan = layout_for(cfg, args.workers * len(args.worker_hosts), args.connections)
    return HostedRun(plan).start()


def _servers_or_target(args: argparse.Namespace, workdir: Path, lab: HostedRun | None = None):
    """The harness's own servers, started; or the --target, checked (nothing is started for it)."""
    if args.target:
        host, port = check_target(args.target, args.protocol, args.allow_non_loopback)
        found = listeners.listeners(port) if is_local(host) else []
        return OutsideTarget(host, port, found).start()
    config = ServerConfig(backend=args.backend, port=args.port, processes=args.processes, share=args.share,
                          fd_limit=args.fd_limit, nice=LOAD_NICE,
                          **({"host": lab.server.address, "netns": lab.server.name} if lab else {}))
    return ServerGroup(config, log_file=str(workdir / "servers.log")).start()
