"""`harness ui`: servers (or a --target), a Locust master with its web UI, and workers, until Ctrl-C."""

from __future__ import annotations

import argparse

from harness.cli.common import (
    Command,
    add_host_options,
    add_load_options,
    add_server_options,
    add_target_options,
    add_tls_options,
    positive,
)
from harness.run.config import RunConfig
from harness.run.prepare import prepare


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_server_options(p)
    p.add_argument("--workers", type=positive, default=2, help="Locust worker processes (on each worker host)")
    p.add_argument("--web-port", type=positive, default=8089)
    p.add_argument("--connections", type=positive, default=1000,
                   help="the start form's Number of users: the connections to ramp to")
    add_load_options(p)
    add_target_options(p)
    add_tls_options(p)
    add_host_options(p, make=False)


def run(args: argparse.Namespace) -> int:
    from harness.run.ui import run_ui  # each test's report: matplotlib

    cfg = RunConfig.from_args(args)
    if cfg.worker_hosts:  # --workers on each client host
        cfg.workers = args.workers * len(cfg.worker_hosts)
    return run_ui(prepare(cfg), args.web_port)


COMMAND = Command("ui", "servers + Locust master (web UI) + workers, until Ctrl-C", add_arguments, run)
