"""`harness hosts up N | down | status`: test hosts in network namespaces."""

from __future__ import annotations

import argparse
import json

from harness.cli.common import Command, OneLineErrorParser, ranged
from harness.hosts import netns


def add_arguments(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="action", required=True, parser_class=OneLineErrorParser)
    up = actions.add_parser("up", help="make N test hosts (idempotent)")
    up.add_argument("count", type=ranged(int, 1, 31, "{value} hosts: use 1 to 31"), metavar="N")
    up.add_argument("--addresses", type=ranged(int, 1, 253, "{value} addresses: use 1 to 253"), default=1,
                    help="addresses per host (a run adds what its plan needs)")
    for action in (up, actions.add_parser("down", help="remove the test hosts the harness made"),
                   actions.add_parser("status", help="the test hosts as the kernel has them")):
        action.add_argument("--prefix", default="fdcap", help="the lab's name prefix (default fdcap)")
    actions.choices["status"].add_argument("--all", action="store_true", help="every lab, not only --prefix's")
    actions.choices["status"].add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    try:
        return _act(args)
    except OSError as exc:  # ip or /run not there, or refusing
        raise netns.HostsError(str(exc)) from None


def _act(args: argparse.Namespace) -> int:
    if args.action == "up":
        lab = netns.up(args.count, args.prefix, addresses=args.addresses)
        for host in lab.hosts:
            print(f"{host.name}: {', '.join(host.addresses)}")
        print(f"bridge {lab.bridge} {lab.bridge_address} (a Locust master here listens there); "
              f"remove with: harness hosts down --prefix {lab.prefix}")
    elif args.action == "down":
        removed = netns.down(args.prefix)
        print(f"removed {', '.join(removed)}" if removed else f"no test hosts of lab {args.prefix!r}")
    else:
        _status(args)
    return 0


def _status(args: argparse.Namespace) -> None:
    labs = netns.status(None if args.all else args.prefix)
    if args.json:
        print(json.dumps(labs, indent=2))
        return
    for lab in labs:
        print(f"lab {lab['prefix']}: bridge {lab['bridge']} {lab['bridge_address']} "
              f"({'up' if lab['bridge_up'] else 'missing'})")
        for h in lab["hosts"]:
            print(f"  {h['name']}: {', '.join(h['addresses'])}; "
                  + (f"ip_local_port_range {h['ip_local_port_range']}, somaxconn {h['somaxconn']}, "
                     f"{h['processes']} process(es)" if h["namespace"] else "namespace missing"))
    if not labs:
        print(f"no test hosts of lab {args.prefix!r} (harness hosts up N)")


COMMAND = Command("hosts", "test hosts: network namespaces with addresses from 198.18.0.0/15 on one bridge, "
                  "standing in for other machines", add_arguments, run)
