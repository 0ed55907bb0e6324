"""`harness check`: every backend stops exactly at its fd limit."""

from __future__ import annotations

import argparse

from harness.cli.common import Command
from harness.run.check import run_check


def run(args: argparse.Namespace) -> int:
    return 0 if run_check() else 1


COMMAND = Command("check", "short self-check: every backend stops exactly at its fd limit", lambda p: None, run)
