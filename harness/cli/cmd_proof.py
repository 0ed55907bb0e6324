"""`harness proof` (what `make run` runs): the default proof."""

from __future__ import annotations

import argparse

from harness.cli.common import Command, add_run_options, add_tls_options
from harness.run.config import RunConfig


def run(args: argparse.Namespace) -> int:
    from harness.run.proof import run_proof  # it draws the report: matplotlib

    return run_proof(RunConfig.from_args(args), as_json=args.json, prog=f"harness {args.command}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_options(p)
    add_tls_options(p)


COMMAND = Command("proof", "the default proof (make run): >65,535 connections on one port planned from this "
                  "machine's limits, an fd-limit sweep of every backend, a summary and a report", add_arguments, run)
