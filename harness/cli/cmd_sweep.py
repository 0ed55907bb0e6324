"""`harness sweep`: one run per (backend, fd limit), then cap against limit with the fitted line."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.cli.common import Command, UsageError, backends, fd_limits, positive
from harness.core import planning
from harness.core.backends import BACKENDS, SELECTORS
from harness.run.sweep import sweep, table
from harness.system.limits import read_limits


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backends", type=backends, default=list(BACKENDS), help="comma-separated (default: all)")
    p.add_argument("--fd-limits", type=fd_limits, default=[256, 512, 1024], help="comma-separated soft fd limits")
    p.add_argument("--connections", type=positive, default=None, help="per run (default: 1.25 × the limit)")
    p.add_argument("--selector", default="epoll", choices=SELECTORS, help="selectors backend")
    p.add_argument("--out", default="results")


def run(args: argparse.Namespace) -> int:
    limits = read_limits()
    for limit in args.fd_limits:
        error = planning.fd_limit_error("--fd-limits", limit, limits)
        if error:
            raise UsageError(error)
    doc = sweep(args.backends, args.fd_limits, args.connections, Path(args.out), selector=args.selector)
    print(table(doc))
    print(f"results: {doc['path']}")
    return 0


COMMAND = Command("sweep", "one run per (backend, fd limit), then cap against limit with the fitted line",
                  add_arguments, run)
