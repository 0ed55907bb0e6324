"""The `harness` command line: one small `cmd_*` function per subcommand, picked from COMMANDS."""

from __future__ import annotations

import argparse
import json
import math
import sys



def cmd_limits(args: argparse.Namespace) -> int:
    from harness.plan import core
    from harness.plan.describe import format_limits
    from harness.plan.limits import read_limits

    limits = read_limits()
    plan = core.plan(limits, args.connections, backend=args.backend, fd_limit=args.fd_limit)
    if args.json:
        print(json.dumps({"limits": limits, "plan": plan.as_dict()}, indent=2))
    else:
        print(format_limits(limits, plan))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from servers.foreground import run
    return run(args)


def cmd_check(args: argparse.Namespace) -> int:
    from harness.run.check import run_check
    return 0 if run_check() else 1


def cmd_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from harness.bench import servers as bench

    backends = args.backends.split(",") if args.backends else None
    if args.kind == "echo":
        doc = bench.bench_echo(backends or ["selectors", "uvloop", "asyncio", "threaded"],
                               args.connections or 100, args.size, args.seconds)
    elif args.kind == "memory":
        doc = bench.bench_memory(backends or ["selectors", "uvloop", "asyncio", "threaded"],
                                 args.connections or 18_000)
    elif args.kind == "idle":
        from harness.bench.idle import IDLE_POINTS, bench_idle
        idle = [int(x) for x in args.idle.split(",")] if args.idle else list(IDLE_POINTS)
        doc = bench_idle(backends or ["selectors", "uvloop", "asyncio", "threaded"], idle,
                         args.connections or 100, seconds=args.seconds, repeats=args.repeats)
    elif args.kind == "reference":
        from harness.bench.reference import ReferenceMissing, bench_reference
        try:
            doc = bench_reference(backends or ["selectors", "uvloop", "asyncio", "threaded"], args.connections or 100)
        except ReferenceMissing as exc:
            print(f"harness bench: error: {exc}", file=sys.stderr)
            return 2
    else:
        doc = bench.bench_hold(args.backend, args.connections or 100_000, args.processes, args.share,
                               args.clients, args.hold)
    print(f"written {bench.save(args.kind, doc, Path(args.out))}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from harness.run.ui import run_ui
    return run_ui(args)


def cmd_run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from harness.run import execute as run_mod

    cfg = run_mod.RunConfig(backend=args.backend, connections=args.connections, processes=args.processes,
                            share=args.share, server_fd_limit=args.server_fd_limit, selector=args.selector,
                            workers=args.workers, worker_fd_limit=args.worker_fd_limit, user_mode=args.user_mode,
                            port=args.port, hold=args.hold, echo_interval=args.echo_interval,
                            echo_mode=args.echo_mode,
                            ramp_rate=args.ramp_rate, max_seconds=args.max_seconds, out=args.out,
                            echo_timeout=args.echo_timeout)
    if args.proof:
        from harness.run.proof import run_proof
        return run_proof(cfg)
    try:
        prepared = run_mod.prepare(cfg)
        for reason in prepared.plan.reasons:
            print(f"plan: {reason}", file=sys.stderr)
        doc, run_dir = run_mod.execute(prepared, progress=not args.json)
    except run_mod.RunError as exc:
        print(f"harness run: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before execute() took over Ctrl-C: nothing was started or written
        print("harness run: interrupted before anything started", file=sys.stderr)
        return 130
    from harness.results.rundoc import summary

    print(json.dumps(doc, indent=2) if args.json else summary(doc, Path(run_dir)))
    if args.report:
        from harness.report.page import build
        print(f"report: {build([run_dir], Path(run_dir) / 'report')}", file=sys.stderr if args.json else sys.stdout)
    if doc["faults"]:
        for fault in doc["faults"]:
            print(f"fault at {fault['t']:.1f} s: {fault['what']}; {fault['connections_lost']:,} connections lost",
                  file=sys.stderr)
        return 1
    return 130 if doc["stopped_by"] == "interrupted" else 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from pathlib import Path

    from harness.run.execute import RunError
    from harness.run.sweep import sweep, table
    from servers.registry import BACKENDS, UnknownBackend, get

    try:
        backends = [get(b).name for b in args.backends.split(",")] if args.backends else list(BACKENDS)
        limits = [int(x) for x in args.fd_limits.split(",")]
    except (UnknownBackend, ValueError) as exc:
        print(f"harness sweep: error: {exc}", file=sys.stderr)
        return 2
    try:
        doc = sweep(backends, limits, args.connections, Path(args.out), selector=args.selector)
    except RunError as exc:
        print(f"harness sweep: error: {exc}", file=sys.stderr)
        return 2
    print(table(doc))
    print(f"results: {doc['path']}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from harness.report.page import ReportError, build
    from harness.results.schema import SchemaError

    start = time.monotonic()
    out = Path(args.out) if args.out else Path(args.paths[0]).with_suffix("") / "report"
    try:
        report = build(args.paths, out)
    except (ReportError, SchemaError, OSError) as exc:
        print(f"harness report: error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {report} ({report.stat().st_size / 1e6:.2f} MB, {time.monotonic() - start:.1f} s)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from harness.report.compare import compare
    from harness.results.schema import SchemaError, load

    try:
        a, b = load(args.run_a), load(args.run_b)
    except (SchemaError, OSError, ValueError) as exc:
        print(f"harness compare: error: {exc}", file=sys.stderr)
        return 2
    print(compare(a, b))
    return 0


def cmd_tour(args: argparse.Namespace) -> int:
    from harness.tour import STEPS, run_tour

    names = [args.step] if args.step else list(STEPS)
    steps, path = run_tour(names, args.quick or bool(args.step) and args.step != "fd-limit", args.out)
    shown = sum(s.ok for s in steps)
    print(f"\n{shown} of {len(steps)} claims shown live on this machine" + (f"; evidence in {path}" if path else ""))
    return 0 if shown == len(steps) else 1


class OneLineErrorParser(argparse.ArgumentParser):
    """Bad arguments are one line naming the problem (and exit code 2), not a usage dump."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from servers.foreground import add_arguments
    from servers.registry import BACKENDS

    parser = OneLineErrorParser(prog="harness", description="Connections per port are capped by "
                                     "file descriptors and memory, not by 65,535 port numbers: prove it here.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineErrorParser)
    p = sub.add_parser("limits", help="the limits that cap connections on this machine, and what they predict")
    p.add_argument("--connections", type=_positive, default=100_000, help="plan for this many (default 100,000)")
    p.add_argument("--backend", choices=list(BACKENDS), default="asyncio")
    p.add_argument("--fd-limit", type=_positive, default=None, help="plan with this soft fd limit per server process")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = sub.add_parser("serve", help="run an echo server backend in the foreground, with live gauges")
    add_arguments(p)
    sub.add_parser("check", help="short self-check: every backend stops exactly at its fd limit")
    p = sub.add_parser("run", help="the proof run (no arguments), or one headless run: servers + Locust, "
                       "ramp to N or the cap, hold, write results/<time>-<backend>-<N>/run.json")
    p.add_argument("--backend", choices=list(BACKENDS), default="asyncio")
    p.add_argument("--connections", type=_positive, default=100_000, help="target connections (default 100,000)")
    p.add_argument("--processes", type=_positive, default=None, help="server processes (default: planned)")
    p.add_argument("--share", default="reuseport", choices=["reuseport", "fork", "handoff"])
    p.add_argument("--server-fd-limit", type=_positive, default=None, help="soft fd limit per server process")
    p.add_argument("--selector", default="epoll", choices=["epoll", "poll", "select"], help="selectors backend")
    p.add_argument("--workers", type=_positive, default=None, help="Locust workers (default: planned)")
    p.add_argument("--worker-fd-limit", type=_positive, default=None, help="soft fd limit per Locust worker")
    p.add_argument("--user-mode", default="driver", choices=["driver", "greenlet"],
                   help="driver: one greenlet per worker serves all its users (lean); greenlet: one per user")
    p.add_argument("--port", type=_port, default=9999)
    p.add_argument("--hold", type=_seconds, default=10.0, help="seconds to hold once the ramp ends")
    p.add_argument("--echo-interval", type=_positive_float, default=5.0, help="seconds between echoes per connection")
    p.add_argument("--echo-mode", default="closed", choices=["closed", "open"],
                   help="closed: the next echo an interval after the last answer; open: echoes on a fixed "
                        "schedule, latency from the intended send time (no coordinated omission)")
    p.add_argument("--echo-timeout", type=_positive_float, default=10.0, help="seconds a connect or echo may take")
    p.add_argument("--ramp-rate", type=_positive_float, default=None, help="connections per second (default 10,000; the ramp slows down where the machine cannot keep up)")
    p.add_argument("--max-seconds", type=_positive_float, default=None,
                   help="end the ramp after this long (default: 240 s, or the target at 2,000 connections/s)")
    p.add_argument("--out", default="results", help="directory for run directories")
    p.add_argument("--json", action="store_true", help="print the result document")
    p.add_argument("--report", action="store_true", help="also write RUN_DIR/report/report.html")
    p.add_argument("--proof", action="store_true", help=argparse.SUPPRESS)
    p = sub.add_parser("sweep", help="one run per (backend, fd limit), then cap against limit with the fitted line")
    p.add_argument("--backends", default=None, help="comma-separated (default: all)")
    p.add_argument("--fd-limits", default="256,512,1024", help="comma-separated soft fd limits")
    p.add_argument("--connections", type=_positive, default=None, help="per run (default: 1.25 × the limit)")
    p.add_argument("--selector", default="epoll", choices=["epoll", "poll", "select"], help="selectors backend")
    p.add_argument("--out", default="results")
    p = sub.add_parser("report", help="PNG plots and a self-contained report.html from result files alone")
    p.add_argument("paths", nargs="+", help="run directories, sweep directories, bench-*.json files")
    p.add_argument("--out", default=None, help="directory for the report (default: FIRST_PATH/report)")
    p = sub.add_parser("compare", help="two runs' key figures side by side, with what is significant")
    p.add_argument("run_a")
    p.add_argument("run_b")
    p = sub.add_parser("tour", help="the seed article's claims, each shown live on loopback with the kernel's evidence")
    p.add_argument("step", nargs="?", choices=["demo", "4-tuple", "fd", "sharing", "ports", "ephemeral", "fd-limit",
                                               "capture"], help="run one step only")
    p.add_argument("--quick", action="store_true", help="keep the fd-limit step small (no 100,000-connection proof)")
    p.add_argument("--out", default="results", help="where to write tour-<time>.json (the report can include it)")
    p = sub.add_parser("ui", help="servers + Locust master (web UI) + workers, until Ctrl-C")
    p.add_argument("--backend", choices=list(BACKENDS), default="asyncio")
    p.add_argument("--processes", type=_positive, default=1, help="server processes on the port")
    p.add_argument("--share", default="reuseport", choices=["reuseport", "fork", "handoff"])
    p.add_argument("--server-fd-limit", type=_positive, default=None, help="soft fd limit of each server process")
    p.add_argument("--workers", type=_positive, default=2, help="Locust worker processes")
    p.add_argument("--worker-fd-limit", type=_positive, default=None, help="soft fd limit of each worker")
    p.add_argument("--port", type=_port, default=9999, help="the servers' port")
    p.add_argument("--web-port", type=_positive, default=8089)
    p.add_argument("--connections", type=_positive, default=1000, help="initial target in the start form")
    p.add_argument("--echo-interval", type=_positive_float, default=5.0)
    p = sub.add_parser("bench", help="server benchmarks: echo throughput, memory per connection, N held on one port")
    p.add_argument("kind", choices=["echo", "memory", "hold", "idle", "reference"])
    p.add_argument("--backends", default=None, help="comma-separated (echo, memory, idle, reference); default all")
    p.add_argument("--idle", default=None, help="idle: comma-separated idle connection counts (default 0,1000,10000,100000)")
    p.add_argument("--backend", choices=list(BACKENDS), default="asyncio", help="hold: the backend")
    p.add_argument("--connections", type=_positive, default=None,
                   help="echo, reference: 100 clients; idle: 100 active; memory: 18,000 held; hold: 100,000 held")
    p.add_argument("--processes", type=_positive, default=None, help="hold: server processes (default: planned)")
    p.add_argument("--share", default="reuseport", choices=["reuseport", "fork", "handoff"])
    p.add_argument("--clients", type=_positive, default=None, help="hold: client processes (default: planned)")
    p.add_argument("--hold", type=_seconds, default=5.0, help="hold: seconds to hold before re-verifying")
    p.add_argument("--size", type=_positive, default=1024, help="echo: message bytes")
    p.add_argument("--seconds", type=_positive_float, default=5.0, help="echo, idle: measured seconds per backend or point")
    p.add_argument("--repeats", type=_positive, default=3,
                   help="idle: measured windows per point; each percentile is their median")
    p.add_argument("--out", default="results", help="directory for the result JSON")
    return parser


def _ranged(kind: type, low: float, high: float, advice: str):
    """An argparse type: `kind` between low and high inclusive, else `advice` (formatted with the value)."""
    def parse(text: str):
        value = kind(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(advice.format(value=value))
        return value
    return parse


_seconds = _ranged(float, 0, 86_400, "{value:g} s is out of range; use 0 to 86,400")
_positive_float = _ranged(float, math.nextafter(0, 1), math.inf, "{value:g} must be above 0")
_port = _ranged(int, 0, 65535, "{value} is not a TCP port; use 0-65535 (0 picks a free one)")
_positive = _ranged(int, 1, math.inf, "{value} must be at least 1")


COMMANDS = {"run": cmd_run, "sweep": cmd_sweep, "report": cmd_report, "compare": cmd_compare, "tour": cmd_tour,
            "limits": cmd_limits, "serve": cmd_serve, "check": cmd_check, "bench": cmd_bench, "ui": cmd_ui}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "run" and len(argv) == 1:
        argv = ["run", "--proof"]  # `harness run` with no arguments is the default proof
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
