"""`harness tour`: the seed article's claims, each shown live on loopback."""

from __future__ import annotations

import argparse

from harness.cli.common import Command
from harness.tour import STEPS, run_tour


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("step", nargs="?", choices=list(STEPS), help="run one step only")
    p.add_argument("--quick", action="store_true", help="keep the fd-limit step small (no 100,000-connection proof)")
    p.add_argument("--out", default="results", help="where to write tour-<time>.json (the report can include it)")


def run(args: argparse.Namespace) -> int:
    names = [args.step] if args.step else list(STEPS)
    steps, path = run_tour(names, args.quick or bool(args.step) and args.step != "fd-limit", args.out)
    shown = sum(s.ok for s in steps)
    print(f"\n{shown} of {len(steps)} claims shown live on this machine" + (f"; evidence in {path}" if path else ""))
    return 0 if shown == len(steps) else 1


COMMAND = Command("tour", "the seed article's claims, each shown live on loopback with the kernel's evidence",
                  add_arguments, run)
