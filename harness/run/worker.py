"""`harness worker --master HOST:PORT`: Locust workers on this machine that join a master on
another (a `harness run --master-bind HOST:PORT --expect-workers N` there).

The workers are Locust's own (`locust --worker --processes W`) with the harness's locustfile, so
they run the same users and report the same gauges as the run's own workers; they learn the
target and the ramp from the master. They may load only loopback and the test hosts'
198.18.0.0/15 unless `--allow-non-loopback` says the target is the user's (each connect checks
the target the master names). They end when the master ends the test, or on Ctrl-C.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys

from harness.core.addresses import is_lab_address, is_loopback, source_error
from harness.core.options import locust_args
from harness.core.planning import (
    CLIENT_FD_RESERVE,
    MIN_WORKER_FD_LIMIT,
    usable_fd_limit,
)
from harness.core.refusal import Refused
from harness.hosts.netns import lab_addresses
from harness.run.cluster import LOCUST
from harness.system import procctl
from harness.system.limits import read_limits

TLS_OPTIONS = ("tls", "server_name", "ca", "insecure", "tls_version", "alpn", "tls_resume", "tls_group")


class WorkerError(Refused, ValueError):
    """Bad input; the message names the flag and the fix."""


def worker_command(args: argparse.Namespace, limits: dict) -> list[str]:
    host, _, port = args.master.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise WorkerError(f"--master {args.master!r} is not HOST:PORT; give e.g. 198.18.0.1:5557")
    if not (is_loopback(host) or is_lab_address(host, lab_addresses()) or args.allow_non_loopback):
        raise WorkerError(f"--master {host} is neither loopback nor a test host's bridge (harness hosts status): the "
                          "master tells the workers what to load; add --allow-non-loopback if it and its targets "
                          "are yours")
    fd_limit = args.worker_fd_limit or usable_fd_limit(limits)
    if fd_limit < MIN_WORKER_FD_LIMIT or fd_limit > usable_fd_limit(limits):
        raise WorkerError(f"--worker-fd-limit {fd_limit} must be {MIN_WORKER_FD_LIMIT}-{usable_fd_limit(limits)} "
                          f"(the hard limit; a worker keeps {CLIENT_FD_RESERVE} for itself)")
    sources = args.source_addresses or ["0.0.0.0"]
    for address in sources:
        error = source_error(address, args.allow_non_loopback, lab_addresses())
        if error:
            raise WorkerError(f"--source-addresses: {error}")
    return [*LOCUST, "--worker", "--processes", str(args.processes), "--master-host", host, "--master-port", port,
            "--worker-fd-limit", str(fd_limit), "--source-addresses", ",".join(sources),
            *(["--worker-host", args.name] if args.name else []), "--test-hosts",
            *(["--allow-non-loopback"] if args.allow_non_loopback else []),
            *locust_args({name: getattr(args, name) for name in TLS_OPTIONS}, workers=True)]


def run_worker(args: argparse.Namespace) -> int:
    cmd = worker_command(args, read_limits())
    out = open(args.log, "w") if args.log else None
    print(f"harness worker: {args.processes} Locust worker(s) joining the master at {args.master}", file=sys.stderr,
          flush=True)
    child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if out else None, stdin=subprocess.DEVNULL,
                             preexec_fn=lambda: procctl.die_with_parent(signal.SIGTERM), start_new_session=True)
    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda s, f: stop.append(s))
    try:
        while child.poll() is None and not stop:
            try:
                child.wait(0.5)
            except subprocess.TimeoutExpired:
                pass
    finally:
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if out:
            out.close()
    print(f"harness worker: the workers ended (exit {child.returncode})", file=sys.stderr)
    return 130 if stop else (0 if child.returncode in (0, None) else 1)
