"""`harness report` and `harness compare`: results read back from their files alone."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from harness.cli.common import Command, UsageError
from harness.system.files import load


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", help="run directories, sweep directories, bench-*.json files")
    p.add_argument("--out", default=None, help="directory for the report (default: FIRST_PATH/report)")


def report(args: argparse.Namespace) -> int:
    from harness.report.page import (
        build,  # matplotlib: only for the subcommands that draw
    )

    start = time.monotonic()
    out = Path(args.out) if args.out else Path(args.paths[0]).with_suffix("") / "report"
    try:
        page = build(args.paths, out)
    except OSError as exc:
        raise UsageError(f"{exc}; give run directories, sweep directories or result .json files") from None
    print(f"report: {page} ({page.stat().st_size / 1e6:.2f} MB, {time.monotonic() - start:.1f} s)")
    return 0


def add_compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_a")
    p.add_argument("run_b")


def compare_runs(args: argparse.Namespace) -> int:
    from harness.report.compare import compare

    try:
        a, b = load(args.run_a), load(args.run_b)
    except OSError as exc:
        raise UsageError(f"{exc}; give two run directories (or their run.json)") from None
    print(compare(a, b))
    return 0


REPORT = Command("report", "PNG plots and a self-contained report.html from result files alone",
                 add_report_arguments, report)
COMPARE = Command("compare", "two runs' key figures side by side, with what is significant",
                  add_compare_arguments, compare_runs)
