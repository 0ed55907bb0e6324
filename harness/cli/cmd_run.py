"""`harness run`: one headless run (`--connections N|max`); without --connections, the default proof."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harness.cli.common import (
    Command,
    add_host_options,
    add_run_options,
    add_target_options,
    add_tls_options,
    connections,
    fail,
)
from harness.core.rundoc import summary
from harness.run.config import RunConfig
from harness.run.execute import execute
from harness.run.prepare import prepare


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_options(p)
    p.add_argument("--connections", type=connections, default=None,
                   help="target connections, or max: until a limit stops the run (without it, `harness run` is "
                        "`harness proof`)")
    p.add_argument("--report", action="store_true", help="also write RUN_DIR/report/report.html")
    add_target_options(p)
    add_tls_options(p)
    add_host_options(p)


def run(args: argparse.Namespace) -> int:
    if args.connections is None:  # no target given: the default proof, which plans its own
        if args.target:
            fail("--target", "needs --connections", "give --connections N (or max)")
        if not (args.hosts or args.server_host or args.worker_hosts):
            from harness.cli.cmd_proof import run as proof
            return proof(args)
        from harness.core.planning import proof_target
        from harness.system.limits import read_limits

        args.connections = proof_target(read_limits(), args.backend)[0]  # the proof's target, across hosts
    try:
        prepared = prepare(RunConfig.from_args(args))
        for reason in prepared.plan.reasons:
            print(f"plan: {reason}", file=sys.stderr)
        doc, run_dir = execute(prepared, progress=not args.json)
    except KeyboardInterrupt:  # before execute() took over Ctrl-C: nothing was started or written
        print("harness run: interrupted before anything started", file=sys.stderr)
        return 130
    print(json.dumps(doc, indent=2) if args.json else summary(doc, Path(run_dir)))
    if args.report:
        from harness.report.page import build
        print(f"report: {build([run_dir], Path(run_dir) / 'report')}", file=sys.stderr if args.json else sys.stdout)
    return exit_code(doc)


def exit_code(doc: dict) -> int:
    """1 for a fault the run did not plan (--link-down's is its own doing; a target shedding held
    connections as the ramp stopped is the limit found), 130 when interrupted, else 0."""
    unplanned = [f for f in doc["faults"] if not f.get("injected") and not f.get("limit")]
    for fault in doc["faults"]:
        if not fault.get("injected"):
            print(f"fault at {fault['t']:.1f} s: {fault['what']}; {fault['connections_lost']:,} connections lost"
                  + (" (where the ramp stopped)" if fault.get("limit") else ""), file=sys.stderr)
    if unplanned:
        return 1
    return 130 if doc["stopped_by"] == "interrupted" else 0


COMMAND = Command("run", "one headless run: servers + Locust, ramp to N or the cap, hold, write "
                  "results/<time>-<backend>-<N>/run.json (without --connections: the default proof)", add_arguments, run)
