"""`harness limits`: the limits that cap connections here, and what they predict."""

from __future__ import annotations

import argparse
import json

from harness.cli.common import Command, UsageError, add_fd_limit, positive
from harness.core import planning
from harness.core.addresses import AddressError, split_host_port
from harness.core.backends import BACKENDS
from harness.core.describe import format_limits, format_target
from harness.core.diagnose import predicted_cap
from harness.run.outside import is_local
from harness.system import listeners
from harness.system.limits import read_limits


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--connections", type=positive, default=100_000, help="plan for this many (default 100,000)")
    p.add_argument("--backend", choices=list(BACKENDS), default="asyncio")
    add_fd_limit(p)
    p.add_argument("--target", default=None, metavar="HOST:PORT",
                   help="a server the harness does not start: its processes' limits and predicted cap")
    p.add_argument("--tls", action="store_true",
                   help="plan TLS connections: each costs the backend and the clients more memory (docs/tls.md)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--hosts", action="store_true", help="also each test host's own limits (harness hosts up)")


def run(args: argparse.Namespace) -> int:
    limits = read_limits()
    if args.target:
        return _of_target(args, limits)
    if args.hosts:
        return _of_hosts(args)
    error = planning.fd_limit_error("--fd-limit", args.fd_limit, limits)
    if error:
        raise UsageError(error)
    plan = planning.plan(limits, args.connections, backend=args.backend, fd_limit=args.fd_limit, tls=args.tls)
    print(json.dumps({"limits": limits, "plan": plan.as_dict()}, indent=2) if args.json else format_limits(limits, plan))
    return 0


def _of_hosts(args: argparse.Namespace) -> int:
    """Each test host's own limits: its ports per source address, its accept queue's bound."""
    from harness.hosts import netns

    labs = netns.status()
    if args.json:
        print(json.dumps(labs, indent=2))
        return 0
    if not labs:
        print("no test hosts on this machine (harness hosts up N)")
    for lab in labs:
        print(f"lab {lab['prefix']} (bridge {lab['bridge_address']}); every host shares this machine's kernel: "
              "fs.file-max and memory are the machine's, counted for both ends")
        for h in lab["hosts"]:
            if not h["namespace"]:
                print(f"  {h['name']}: namespace missing (harness hosts down, then up)")
                continue
            lo, hi = (int(x) for x in h["ip_local_port_range"].split())
            ports = hi - lo + 1
            print(f"  {h['name']}: as a client, {len(h['addresses'])} address(es) × {ports:,} ports "
                  f"(ip_local_port_range {lo}-{hi}) = {len(h['addresses']) * ports:,} connections to one "
                  f"destination (plan {ports // 2:,} per address); as a server, accept queue up to "
                  f"somaxconn {int(h['somaxconn']):,}")
    return 0


def _of_target(args: argparse.Namespace, limits: dict) -> int:
    try:
        host, port = split_host_port(args.target, "--target", "127.0.0.1:6379")
    except AddressError as exc:
        raise UsageError(str(exc)) from None
    procs = listeners.listeners(port) if is_local(host) else []
    predicted = predicted_cap(procs) if procs else None
    plan = planning.plan_target(limits, args.connections, local=is_local(host), target_room=predicted, tls=args.tls)
    if args.json:
        print(json.dumps({"target": {"host": host, "port": port}, "processes": procs, "predicted_cap": predicted,
                          "plan": plan.as_dict()}, indent=2))
    else:
        print(format_target(host, port, procs, predicted, plan))
    return 0


COMMAND = Command("limits", "the limits that cap connections on this machine, and what they predict", add_arguments, run)
