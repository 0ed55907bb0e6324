"""`harness bench KIND`: the server-side numbers, each kind with only its own flags."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.cli.common import (
    Command,
    OneLineErrorParser,
    backends,
    count,
    idle_points,
    positive,
    positive_float,
    seconds,
)
from harness.core.backends import BACKENDS, SHARE_MODES


def _echo(args: argparse.Namespace) -> dict:
    from harness.bench.servers import bench_echo
    return bench_echo(args.backends, args.connections, args.size, args.seconds)


def _memory(args: argparse.Namespace) -> dict:
    from harness.bench.servers import bench_memory
    return bench_memory(args.backends, args.connections)


def _idle(args: argparse.Namespace) -> dict:
    from harness.bench.idle import bench_idle
    return bench_idle(args.backends, args.idle, args.connections, seconds=args.seconds, repeats=args.repeats)


def _reference(args: argparse.Namespace) -> dict:
    from harness.bench.reference import bench_reference
    return bench_reference(args.backends, args.connections)


def _hold(args: argparse.Namespace) -> dict:
    from harness.bench.servers import bench_hold
    return bench_hold(args.backend, args.connections, args.processes, args.share, args.clients, args.hold)


def _connect(args: argparse.Namespace) -> dict:
    from harness.bench.connect import bench_connect
    return bench_connect(args.connections, args.repeats, Path(args.out), held=args.held)


BENCHES = {"echo": _echo, "memory": _memory, "hold": _hold, "idle": _idle, "reference": _reference, "connect": _connect}


def add_arguments(bench: argparse.ArgumentParser) -> None:
    from harness.bench.idle import IDLE_POINTS
    from harness.bench.servers import DEFAULT_ORDER

    kinds = bench.add_subparsers(dest="kind", required=True, parser_class=OneLineErrorParser)

    def kind(name: str, help_: str, connections: int, connections_help: str, with_backends: bool = True):
        p = kinds.add_parser(name, help=help_)
        p.add_argument("--connections", type=positive, default=connections, help=connections_help)
        p.add_argument("--out", default="results", help="directory for the result JSON")
        if with_backends:
            p.add_argument("--backends", type=backends, default=list(DEFAULT_ORDER),
                           help=f"comma-separated (default: {','.join(DEFAULT_ORDER)})")
        return p

    p = kind("echo", "ping-pong throughput per backend, and each side's CPU per request", 100, "clients")
    p.add_argument("--size", type=positive, default=1024, help="message bytes")
    p.add_argument("--seconds", type=positive_float, default=5.0, help="measured seconds per backend")
    kind("memory", "server memory per idle connection per backend", 18_000, "connections held")
    p = kind("idle", "latency of active connections while 0-100k idle ones are held", 100, "active connections")
    p.add_argument("--idle", type=idle_points, default=list(IDLE_POINTS), help="comma-separated idle connection counts")
    p.add_argument("--seconds", type=positive_float, default=5.0, help="measured seconds per window")
    p.add_argument("--repeats", type=positive, default=3, help="windows per point; each percentile is their median")
    kind("reference", "throughput beside redis-server, the C reference", 100, "clients")
    p = kind("connect", "the kernel's own CPU per loopback connection (a C helper) beside the harness's ramp, "
             "and their ratio", 18_000, "connections per measurement (each side keeps them: under the fd limit)",
             with_backends=False)
    p.add_argument("--repeats", type=positive, default=3, help="runs of the C helper; the median is the figure")
    p.add_argument("--held", type=count, default=0,
                   help="also measure the floor beside this many connections held by the helper (0: not)")
    p = kind("hold", "N echo-verified connections held on one port, counted three ways", 100_000, "connections held",
             with_backends=False)
    p.add_argument("--backend", choices=list(BACKENDS), default="asyncio")
    p.add_argument("--processes", type=positive, default=None, help="server processes (default: planned)")
    p.add_argument("--share", default="reuseport", choices=SHARE_MODES)
    p.add_argument("--clients", type=positive, default=None, help="client processes (default: planned)")
    p.add_argument("--hold", type=seconds, default=5.0, help="seconds to hold before re-verifying")


def run(args: argparse.Namespace) -> int:
    from harness.bench.servers import save

    doc = BENCHES[args.kind](args)
    print(f"written {save(args.kind, doc, Path(args.out))}")
    return 0


COMMAND = Command("bench", "server benchmarks: echo throughput, memory per connection, N held on one port, the "
                  "idle-connection tax, the C reference, the kernel's own cost of a connection", add_arguments, run)
