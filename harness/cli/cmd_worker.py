"""`harness worker --master HOST:PORT`: Locust workers here that join a master elsewhere."""

from __future__ import annotations

import argparse

from harness.cli.common import Command, add_tls_options, addresses, positive
from harness.run.worker import run_worker


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--master", required=True, metavar="HOST:PORT", help="the master's address")
    p.add_argument("--processes", type=positive, default=1, help="worker processes (default 1)")
    p.add_argument("--worker-fd-limit", type=positive, default=None, help="soft fd limit per worker (default: the hard limit)")
    p.add_argument("--source-addresses", type=addresses, default=None,
                   help="addresses the workers bind (default: the kernel picks, by the route to the target)")
    p.add_argument("--name", default=None, help="the host name the workers' counts go under (default: hostname)")
    p.add_argument("--allow-non-loopback", action="store_true",
                   help="the master, or the target it names, is outside loopback and the test hosts, and yours")
    p.add_argument("--log", default=None, help="write the workers' log here (default: the terminal)")
    add_tls_options(p, server=False)


COMMAND = Command("worker", "Locust workers here that join a master elsewhere (harness run --master-bind ... "
                  "--expect-workers N)", add_arguments, run_worker)
