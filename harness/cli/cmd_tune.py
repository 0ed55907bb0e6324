"""`harness tune`: the sysctls N connections need here; --apply writes them, --restore puts them back."""

from __future__ import annotations

import argparse

from harness.cli.common import Command, positive
from harness.core.tuning import sysctl_lines
from harness.system import sysctl


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--connections", type=positive, default=1_000_000, help="plan for this many (default 1,000,000)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--apply", action="store_true", help="write the ones that bind (root); nothing is changed without it")
    mode.add_argument("--restore", action="store_true", help="put back what --apply changed")


def run(args: argparse.Namespace) -> int:
    if args.restore:
        restored = sysctl.restore()
        print("\n".join(f"restored {k} = {v}" for k, v in restored.items()) or "nothing to restore (no harness "
              "tune --apply is in effect)")
        return 0
    rows = sysctl.rows(args.connections)
    for r in rows:
        print(f"{r.name}: {r.current if r.current is not None else '-'} → needs "
              f"{r.needed if r.needed is not None else '-'} [{'BINDS' if r.binds else 'ok'}]: {r.why}")
    lines = sysctl_lines(rows)
    print("\n".join(["", f"for {args.connections:,} connections:", *lines]) if lines else
          f"\nnothing binds for {args.connections:,} connections here")
    if args.apply and lines:
        done = sysctl.apply(args.connections)
        print(f"applied {len(done)} (previous values saved in {sysctl.STATE}; harness tune --restore puts them back)")
    elif lines:
        print("(nothing was changed: --apply writes these as root, and --restore puts them back)")
    return 0


COMMAND = Command("tune", "the sysctls N connections need here, as sysctl -w lines; --apply writes them "
                  "(saving the old values), --restore puts them back", add_arguments, run)
