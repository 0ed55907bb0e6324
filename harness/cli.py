"""The `harness` command line: one small `cmd_*` function per subcommand, picked from COMMANDS.

One vocabulary across subcommands: `--fd-limit` is a server process's soft fd limit everywhere
(`--server-fd-limit` is kept as an alias in `run` and `ui`), `--backend` picks one backend and
`--backends` several, and every choice comes from the registry and the contract. Bad input is one
line naming the flag and the fix, exit code 2; a flag a subcommand does not take is refused.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from harness.core.protocols import PROTOCOLS
from harness.core.words import ECHO_MODES, USER_MODES
from harness.core.backends import SELECTORS, SHARE_MODES
from harness.core.backends import BACKENDS


def cmd_limits(args: argparse.Namespace) -> int:
    from harness.core import planning
    from harness.core.describe import format_limits
    from harness.system.limits import read_limits

    limits = read_limits()
    if args.target:
        return _limits_of_target(args, limits)
    if args.hosts:
        return _limits_of_hosts(args)
    error = planning.fd_limit_error("--fd-limit", args.fd_limit, limits)
    if error:
        print(f"harness limits: error: {error}", file=sys.stderr)
        return 2
    plan = planning.plan(limits, args.connections, backend=args.backend, fd_limit=args.fd_limit)
    if args.json:
        print(json.dumps({"limits": limits, "plan": plan.as_dict()}, indent=2))
    else:
        print(format_limits(limits, plan))
    return 0


def _limits_of_hosts(args: argparse.Namespace) -> int:
    """Each test host's own limits: its ports per source address, its accept queue's bound."""
    from harness.hosts import netns

    try:
        labs = netns.status()
    except (netns.HostsError, OSError) as exc:
        print(f"harness limits: error: {exc}", file=sys.stderr)
        return 2
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


def _limits_of_target(args: argparse.Namespace, limits: dict) -> int:
    from harness.system import listeners
    from harness.core import diagnose
    from harness.core import planning
    from harness.core.describe import format_target
    from harness.run.outside import TargetError, is_local, parse_target

    try:
        host, port = parse_target(args.target)
    except TargetError as exc:
        print(f"harness limits: error: {exc}", file=sys.stderr)
        return 2
    procs = listeners.listeners(port) if is_local(host) else []
    predicted = diagnose.predicted_cap(procs) if procs else None
    plan = planning.plan_target(limits, args.connections, local=is_local(host), target_room=predicted)
    if args.json:
        print(json.dumps({"target": {"host": host, "port": port}, "processes": procs, "predicted_cap": predicted,
                          "plan": plan.as_dict()}, indent=2))
    else:
        print(format_target(host, port, procs, predicted, plan))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from servers.foreground import run
    return run(args)


def cmd_check(args: argparse.Namespace) -> int:
    from harness.run.check import run_check
    return 0 if run_check() else 1


def bench_echo(args: argparse.Namespace) -> dict:
    from harness.bench.servers import bench_echo
    return bench_echo(args.backends, args.connections, args.size, args.seconds)


def bench_memory(args: argparse.Namespace) -> dict:
    from harness.bench.servers import bench_memory
    return bench_memory(args.backends, args.connections)


def bench_idle(args: argparse.Namespace) -> dict:
    from harness.bench.idle import bench_idle
    return bench_idle(args.backends, args.idle, args.connections, seconds=args.seconds, repeats=args.repeats)


def bench_reference(args: argparse.Namespace) -> dict:
    from harness.bench.reference import bench_reference
    return bench_reference(args.backends, args.connections)


def bench_hold(args: argparse.Namespace) -> dict:
    from harness.bench.servers import bench_hold
    return bench_hold(args.backend, args.connections, args.processes, args.share, args.clients, args.hold)


def bench_connect(args: argparse.Namespace) -> dict:
    from harness.bench.connect import bench_connect
    return bench_connect(args.connections, args.repeats, Path(args.out), held=args.held)


BENCHES = {"echo": bench_echo, "memory": bench_memory, "hold": bench_hold, "idle": bench_idle,
           "reference": bench_reference, "connect": bench_connect}


def cmd_bench(args: argparse.Namespace) -> int:
    from harness.bench.connect import BenchError
    from harness.bench.reference import ReferenceMissing
    from harness.bench.servers import save

    try:
        doc = BENCHES[args.kind](args)
    except (ReferenceMissing, BenchError) as exc:
        print(f"harness bench {args.kind}: error: {exc}", file=sys.stderr)
        return 2
    print(f"written {save(args.kind, doc, Path(args.out))}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from harness.run.ui import run_ui
    return run_ui(args)


def run_config(args: argparse.Namespace):
    from harness.run.execute import RunConfig

    connections = getattr(args, "connections", None)
    return RunConfig(backend=args.backend, connections=0 if connections in (None, MAX) else connections,
                     fill=connections == MAX, target=getattr(args, "target", None),
                     protocol=getattr(args, "protocol", None), send=getattr(args, "send", ""),
                     expect=getattr(args, "expect", ""), path=getattr(args, "path", "/"),
                     source_addresses=getattr(args, "source_addresses", None),
                     allow_non_loopback=getattr(args, "allow_non_loopback", False),
                     processes=args.processes,
                     share=args.share, server_fd_limit=args.fd_limit, selector=args.selector,
                     workers=args.workers, worker_fd_limit=args.worker_fd_limit, user_mode=args.user_mode,
                     port=args.port, hold=args.hold, echo_interval=args.echo_interval, echo_mode=args.echo_mode,
                     ramp_rate=args.ramp_rate, max_seconds=args.max_seconds, out=args.out,
                     echo_timeout=args.echo_timeout, hosts=getattr(args, "hosts", 0) or 0,
                     server_host=getattr(args, "server_host", None), worker_hosts=getattr(args, "worker_hosts", None),
                     master_bind=getattr(args, "master_bind", None), expect_workers=getattr(args, "expect_workers", 0),
                     loss=getattr(args, "loss", 0.0) or 0.0, rate=getattr(args, "rate", None),
                     link_down=getattr(args, "link_down", 0.0) or 0.0,
                     **({"memory_reserve": args.memory_reserve} if getattr(args, "memory_reserve", None) is not None
                        else {}))


def cmd_proof(args: argparse.Namespace) -> int:
    from harness.run.proof import run_proof

    return run_proof(run_config(args), as_json=args.json, prog=f"harness {args.command}")


def cmd_run(args: argparse.Namespace) -> int:
    from harness.run import execute as run_mod

    if args.connections is None:  # no target given: the default proof, which plans its own
        if args.target:
            print("harness run: error: --target needs --connections N (or max)", file=sys.stderr)
            return 2
        if not (args.hosts or args.server_host or args.worker_hosts):
            return cmd_proof(args)
        from harness.core.planning import proof_target
        from harness.system.limits import read_limits

        args.connections = proof_target(read_limits(), args.backend)[0]  # the proof's target, across hosts
    try:
        prepared = run_mod.prepare(run_config(args))
        for reason in prepared.plan.reasons:
            print(f"plan: {reason}", file=sys.stderr)
        doc, run_dir = run_mod.execute(prepared, progress=not args.json)
    except run_mod.RunError as exc:
        print(f"harness run: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before execute() took over Ctrl-C: nothing was started or written
        print("harness run: interrupted before anything started", file=sys.stderr)
        return 130
    from harness.core.rundoc import summary

    print(json.dumps(doc, indent=2) if args.json else summary(doc, Path(run_dir)))
    if args.report:
        from harness.report.page import build
        print(f"report: {build([run_dir], Path(run_dir) / 'report')}", file=sys.stderr if args.json else sys.stdout)
    # --link-down's is the run's own doing; a target shedding held connections is the limit found
    unplanned = [f for f in doc["faults"] if not f.get("injected") and not f.get("limit")]
    for fault in doc["faults"]:
        if not fault.get("injected"):
            print(f"fault at {fault['t']:.1f} s: {fault['what']}; {fault['connections_lost']:,} connections lost"
                  + (" (where the ramp stopped)" if fault.get("limit") else ""), file=sys.stderr)
    if unplanned:
        return 1
    return 130 if doc["stopped_by"] == "interrupted" else 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from harness.core import planning
    from harness.system.limits import read_limits
    from harness.run.execute import RunError
    from harness.run.sweep import sweep, table

    limits = read_limits()
    for limit in args.fd_limits:
        error = planning.fd_limit_error("--fd-limits", limit, limits)
        if error:
            print(f"harness sweep: error: {error}", file=sys.stderr)
            return 2
    try:
        doc = sweep(args.backends, args.fd_limits, args.connections, Path(args.out), selector=args.selector)
    except RunError as exc:
        print(f"harness sweep: error: {exc}", file=sys.stderr)
        return 2
    print(table(doc))
    print(f"results: {doc['path']}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import time

    from harness.report.page import ReportError, build
    from harness.core.schema import SchemaError

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
    from harness.core.schema import SchemaError, load

    try:
        a, b = load(args.run_a), load(args.run_b)
    except (SchemaError, OSError) as exc:
        print(f"harness compare: error: {exc}", file=sys.stderr)
        return 2
    print(compare(a, b))
    return 0


def cmd_hosts(args: argparse.Namespace) -> int:
    from harness.hosts import netns
    from harness.core.lab_layout import LayoutError

    try:
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
            labs = netns.status(None if args.all else args.prefix)
            if args.json:
                print(json.dumps(labs, indent=2))
            for lab in [] if args.json else labs:
                print(f"lab {lab['prefix']}: bridge {lab['bridge']} {lab['bridge_address']} "
                      f"({'up' if lab['bridge_up'] else 'missing'})")
                for h in lab["hosts"]:
                    print(f"  {h['name']}: {', '.join(h['addresses'])}; "
                          + (f"ip_local_port_range {h['ip_local_port_range']}, somaxconn {h['somaxconn']}, "
                             f"{h['processes']} process(es)" if h["namespace"] else "namespace missing"))
            if not labs and not args.json:
                print(f"no test hosts of lab {args.prefix!r} (harness hosts up N)")
    except (netns.HostsError, LayoutError, OSError) as exc:
        print(f"harness hosts {args.action}: error: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from harness.run.worker import WorkerError, run_worker

    try:
        return run_worker(args)
    except WorkerError as exc:
        print(f"harness worker: error: {exc}", file=sys.stderr)
        return 2


def cmd_tune(args: argparse.Namespace) -> int:
    from harness.core.tuning import sysctl_lines
    from harness.system import sysctl

    try:
        if args.restore:
            restored = sysctl.restore()
            print("\n".join(f"restored {k} = {v}" for k, v in restored.items()) or "nothing to restore (no harness "
                  "tune --apply is in effect)")
            return 0
        rows = sysctl.rows(args.connections)
        for r in rows:
            state = "BINDS" if r.binds else "ok"
            print(f"{r.name}: {r.current if r.current is not None else '-'} → needs "
                  f"{r.needed if r.needed is not None else '-'} [{state}]: {r.why}")
        lines = sysctl_lines(rows)
        print("\n".join(["", f"for {args.connections:,} connections:", *lines]) if lines else
              f"\nnothing binds for {args.connections:,} connections here")
        if args.apply and lines:
            done = sysctl.apply(args.connections)
            print(f"applied {len(done)} (previous values saved in {sysctl.STATE}; harness tune --restore puts them back)")
        elif lines:
            print("(nothing was changed: --apply writes these as root, and --restore puts them back)")
    except sysctl.TuneError as exc:
        print(f"harness tune: error: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_tour(args: argparse.Namespace) -> int:
    from harness.tour import STEPS, run_tour

    names = [args.step] if args.step else list(STEPS)
    steps, path = run_tour(names, args.quick or bool(args.step) and args.step != "fd-limit", args.out)
    shown = sum(s.ok for s in steps)
    print(f"\n{shown} of {len(steps)} claims shown live on this machine" + (f"; evidence in {path}" if path else ""))
    return 0 if shown == len(steps) else 1


class OneLineErrorParser(argparse.ArgumentParser):
    """Bad arguments are one line naming the problem (and exit code 2), not a usage dump. No
    abbreviations: `bench echo --backend x` must not pass for `--backends x`."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _ranged(kind: type, low: float, high: float, advice: str):
    """An argparse type: `kind` between low and high inclusive, else `advice` (formatted with the value)."""
    def parse(text: str):
        value = kind(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(advice.format(value=value))
        return value
    parse.__name__ = kind.__name__  # argparse names the type in "invalid int value"
    return parse


_seconds = _ranged(float, 0, 86_400, "{value:g} s is out of range; use 0 to 86,400")
_positive_float = _ranged(float, math.nextafter(0, 1), math.inf, "{value:g} must be above 0")
_port = _ranged(int, 0, 65535, "{value} is not a TCP port; use 0-65535 (0 picks a free one)")
_positive = _ranged(int, 1, math.inf, "{value} must be at least 1")
_count = _ranged(int, 0, math.inf, "{value} must be 0 or more")


def _list_of(item, example: str):
    """An argparse type: a comma-separated list, each item parsed by `item`."""
    def parse(text: str) -> list:
        values = []
        for part in text.split(","):
            try:
                values.append(item(part.strip()))
            except (ValueError, argparse.ArgumentTypeError) as exc:
                why = str(exc) if isinstance(exc, argparse.ArgumentTypeError) else f"{part.strip()!r} is not a number"
                raise argparse.ArgumentTypeError(f"{why}; give a comma-separated list such as {example}") from None
        return values
    return parse


def _backend_name(name: str) -> str:
    if name not in BACKENDS:
        raise argparse.ArgumentTypeError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    return name


_backends = _list_of(_backend_name, ",".join(list(BACKENDS)[:2]))
_addresses = _list_of(str, "127.0.0.9,127.0.0.10")
MAX = "max"


def _connections(text: str) -> int | str:
    """--connections: a number, or `max` (ramp until a limit stops the run)."""
    return MAX if text == MAX else _positive(text)


_connections.__name__ = "int"
_fd_limits = _list_of(_positive, "256,512,1024")
_idle_points = _list_of(_count, "0,1000,10000,100000")


def _add_fd_limit(p: argparse.ArgumentParser, alias: bool = False) -> None:
    names = ["--fd-limit", "--server-fd-limit"] if alias else ["--fd-limit"]
    p.add_argument(*names, dest="fd_limit", type=_positive, default=None,
                   help="soft fd limit of each server process (default: the hard limit)")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """The flags of one run, shared by `run` and `proof` (the proof plans --connections itself)."""
    p.add_argument("--backend", choices=list(BACKENDS), default="asyncio")
    p.add_argument("--processes", type=_positive, default=None, help="server processes (default: planned)")
    p.add_argument("--share", default="reuseport", choices=SHARE_MODES)
    _add_fd_limit(p, alias=True)
    p.add_argument("--selector", default="epoll", choices=SELECTORS, help="selectors backend")
    p.add_argument("--workers", type=_count, default=None,
                   help="Locust workers (default: planned; 0: none here, only --expect-workers from elsewhere)")
    p.add_argument("--worker-fd-limit", type=_positive, default=None, help="soft fd limit per Locust worker")
    p.add_argument("--user-mode", default="driver", choices=USER_MODES,
                   help="driver: one greenlet per worker serves all its users (lean); greenlet: one per user")
    p.add_argument("--port", type=_port, default=9999)
    p.add_argument("--hold", type=_seconds, default=10.0, help="seconds to hold once the ramp ends")
    p.add_argument("--echo-interval", type=_positive_float, default=5.0, help="seconds between echoes per connection")
    p.add_argument("--echo-mode", default="closed", choices=ECHO_MODES,
                   help="closed: the next echo an interval after the last answer; open: echoes on a fixed "
                        "schedule, latency from the intended send time (no coordinated omission)")
    p.add_argument("--echo-timeout", type=_positive_float, default=10.0, help="seconds a connect or echo may take")
    p.add_argument("--ramp-rate", type=_positive_float, default=None,
                   help="connections per second (default 10,000; the ramp slows down where the machine cannot keep up)")
    p.add_argument("--max-seconds", type=_positive_float, default=None,
                   help="end the ramp after this long (default: 240 s, or the target at 2,000 connections/s)")
    p.add_argument("--out", default="results", help="directory for run directories")
    p.add_argument("--memory-reserve", type=_size, default=None, metavar="SIZE",
                   help="MemAvailable the ramp leaves free: below it the ramp stops, stopped_by memory (default 1G)")
    p.add_argument("--json", action="store_true", help="print the result document")


def _add_host_options(p: argparse.ArgumentParser, make: bool = True) -> None:
    """Running on test hosts (network namespaces standing in for other machines) and with
    workers from other machines."""
    if make:
        p.add_argument("--hosts", type=_ranged(int, 2, 31, "{value} hosts: use 2 to 31 (one server host, the rest "
                                                               "client hosts)"), default=0,
                       help="make N test hosts for this run (1 server host, N-1 client hosts), removed after")
    p.add_argument("--server-host", default=None, metavar="HOST",
                   help="run the servers on this test host (made by harness hosts up)")
    p.add_argument("--worker-hosts", type=_hosts_list, default=None, metavar="H2,H3",
                   help="run Locust workers on these test hosts, the same number on each")
    if not make:
        return
    p.add_argument("--master-bind", default=None, metavar="HOST:PORT",
                   help="where the Locust master listens for workers (default: loopback, or the test hosts' bridge); "
                        "a non-loopback address needs --allow-non-loopback")
    p.add_argument("--expect-workers", type=_count, default=0,
                   help="also wait for N workers started elsewhere with harness worker --master")
    p.add_argument("--loss", type=_loss, default=0.0, metavar="PERCENT",
                   help="drop this share of the packets on each client host's link at random (nftables), e.g. 1%%")
    p.add_argument("--rate", type=_rate, default=None, help="shape each client host's link to this rate (tc tbf), "
                   "e.g. 50mbit")
    p.add_argument("--link-down", type=_seconds, default=0.0, metavar="SECONDS",
                   help="take the first client host's link down this long in the middle of the hold")


def _size(text: str) -> int:
    """'1G', '512M', '300000000' -> bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    number, unit = (text[:-1], units[text[-1].upper()]) if text and text[-1].upper() in units else (text, 1)
    try:
        value = int(float(number) * unit)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; give bytes, or e.g. 512M, 1G") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be 0 or more")
    return value


def _hosts_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give test host names such as fdcap-2,fdcap-3")
    return names


def _loss(text: str) -> float:
    from harness.hosts.faults import FaultError, parse_loss
    try:
        return parse_loss(text)
    except FaultError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix(f"--loss {text} ")) from None


def _rate(text: str) -> str:
    from harness.hosts.faults import FaultError, parse_rate
    try:
        return parse_rate(text)
    except FaultError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_target_options(p: argparse.ArgumentParser) -> None:
    """Loading a server the harness does not start, and what it speaks."""
    p.add_argument("--target", default=None, metavar="HOST:PORT",
                   help="load this server instead of starting the harness's own (loopback unless "
                        "--allow-non-loopback); needs --protocol")
    p.add_argument("--protocol", choices=PROTOCOLS, default=None,
                   help="what the target speaks: echo (byte for byte), hold (connect and hold), line (--send, "
                        "--expect), redis (PING), http (GET --path); default echo for the harness's own servers")
    p.add_argument("--send", default="", help="line: the request, with backslash escapes, e.g. 'version\\r\\n'")
    p.add_argument("--expect", default="", help="line: what the reply starts with, e.g. 'VERSION '")
    p.add_argument("--path", default="/", help="http: the path to GET (default /)")
    p.add_argument("--source-addresses", type=_addresses, default=None,
                   help="every Locust worker binds these (default: 127.0.i+1.2 … per worker, planned)")
    p.add_argument("--allow-non-loopback", action="store_true",
                   help="allow a --target outside 127.0.0.0/8 (only a host that is yours to load)")


def _add_bench_parsers(bench: argparse.ArgumentParser, idle_points: tuple[int, ...], order: tuple[str, ...]) -> None:
    kinds = bench.add_subparsers(dest="kind", required=True, parser_class=OneLineErrorParser)

    def kind(name: str, help_: str, connections: int, connections_help: str) -> argparse.ArgumentParser:
        p = kinds.add_parser(name, help=help_)
        p.add_argument("--connections", type=_positive, default=connections, help=connections_help)
        p.add_argument("--out", default="results", help="directory for the result JSON")
        return p

    def backends(p: argparse.ArgumentParser) -> None:
        p.add_argument("--backends", type=_backends, default=list(order),
                       help=f"comma-separated (default: {','.join(order)})")

    p = kind("echo", "ping-pong throughput per backend, and each side's CPU per request", 100, "clients")
    backends(p)
    p.add_argument("--size", type=_positive, default=1024, help="message bytes")
    p.add_argument("--seconds", type=_positive_float, default=5.0, help="measured seconds per backend")
    p = kind("memory", "server memory per idle connection per backend", 18_000, "connections held")
    backends(p)
    p = kind("idle", "latency of active connections while 0-100k idle ones are held", 100, "active connections")
    backends(p)
    p.add_argument("--idle", type=_idle_points, default=list(idle_points),
                   help="comma-separated idle connection counts")
    p.add_argument("--seconds", type=_positive_float, default=5.0, help="measured seconds per window")
    p.add_argument("--repeats", type=_positive, default=3, help="windows per point; each percentile is their median")
    p = kind("reference", "throughput beside redis-server, the C reference", 100, "clients")
    backends(p)
    p = kind("connect", "the kernel's own CPU per loopback connection (a C helper) beside the harness's ramp, "
             "and their ratio", 18_000, "connections per measurement (each side keeps them: under the fd limit)")
    p.add_argument("--repeats", type=_positive, default=3, help="runs of the C helper; the median is the figure")
    p.add_argument("--held", type=_count, default=0,
                   help="also measure the floor beside this many connections held by the helper (0: not)")
    p = kind("hold", "N echo-verified connections held on one port, counted three ways", 100_000, "connections held")
    p.add_argument("--backend", choices=list(BACKENDS), default="asyncio")
    p.add_argument("--processes", type=_positive, default=None, help="server processes (default: planned)")
    p.add_argument("--share", default="reuseport", choices=SHARE_MODES)
    p.add_argument("--clients", type=_positive, default=None, help="client processes (default: planned)")
    p.add_argument("--hold", type=_seconds, default=5.0, help="seconds to hold before re-verifying")


def build_parser() -> argparse.ArgumentParser:
    from harness.bench.idle import IDLE_POINTS
    from harness.bench.servers import DEFAULT_ORDER
    from harness.tour import STEPS
    from servers.foreground import add_arguments

    parser = OneLineErrorParser(prog="harness", description="Connections per port are capped by "
                                     "file descriptors and memory, not by 65,535 port numbers: prove it here.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineErrorParser)
    p = sub.add_parser("proof", help="the default proof (make run): >65,535 connections on one port planned "
                       "from this machine's limits, an fd-limit sweep of every backend, a summary and a report")
    _add_run_options(p)
    p = sub.add_parser("run", help="one headless run: servers + Locust, ramp to N or the cap, hold, write "
                       "results/<time>-<backend>-<N>/run.json (without --connections: the default proof)")
    _add_run_options(p)
    p.add_argument("--connections", type=_connections, default=None,
                   help="target connections, or max: until a limit stops the run (without it, `harness run` is "
                        "`harness proof`)")
    p.add_argument("--report", action="store_true", help="also write RUN_DIR/report/report.html")
    _add_target_options(p)
    _add_host_options(p)
    p = sub.add_parser("limits", help="the limits that cap connections on this machine, and what they predict")
    p.add_argument("--connections", type=_positive, default=100_000, help="plan for this many (default 100,000)")
    p.add_argument("--backend", choices=list(BACKENDS), default="asyncio")
    _add_fd_limit(p)
    p.add_argument("--target", default=None, metavar="HOST:PORT",
                   help="a server the harness does not start: its processes' limits and predicted cap")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--hosts", action="store_true", help="also each test host's own limits (harness hosts up)")
    p = sub.add_parser("hosts", help="test hosts: network namespaces with addresses from 198.18.0.0/15 on one "
                       "bridge, standing in for other machines")
    actions = p.add_subparsers(dest="action", required=True, parser_class=OneLineErrorParser)
    up = actions.add_parser("up", help="make N test hosts (idempotent)")
    up.add_argument("count", type=_ranged(int, 1, 31, "{value} hosts: use 1 to 31"), metavar="N")
    up.add_argument("--addresses", type=_ranged(int, 1, 253, "{value} addresses: use 1 to 253"), default=1,
                    help="addresses per host (a run adds what its plan needs)")
    for action in (up, actions.add_parser("down", help="remove the test hosts the harness made"),
                   actions.add_parser("status", help="the test hosts as the kernel has them")):
        action.add_argument("--prefix", default="fdcap", help="the lab's name prefix (default fdcap)")
    actions.choices["status"].add_argument("--all", action="store_true", help="every lab, not only --prefix's")
    actions.choices["status"].add_argument("--json", action="store_true")
    p = sub.add_parser("tune", help="the sysctls N connections need here, as sysctl -w lines; --apply writes them "
                       "(saving the old values), --restore puts them back")
    p.add_argument("--connections", type=_positive, default=1_000_000, help="plan for this many (default 1,000,000)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--apply", action="store_true", help="write the ones that bind (root); nothing is changed without it")
    mode.add_argument("--restore", action="store_true", help="put back what --apply changed")
    p = sub.add_parser("worker", help="Locust workers here that join a master elsewhere (harness run --master-bind "
                       "... --expect-workers N)")
    p.add_argument("--master", required=True, metavar="HOST:PORT", help="the master's address")
    p.add_argument("--processes", type=_positive, default=1, help="worker processes (default 1)")
    p.add_argument("--worker-fd-limit", type=_positive, default=None, help="soft fd limit per worker (default: the hard limit)")
    p.add_argument("--source-addresses", type=_addresses, default=None,
                   help="addresses the workers bind (default: the kernel picks, by the route to the target)")
    p.add_argument("--name", default=None, help="the host name the workers' counts go under (default: hostname)")
    p.add_argument("--allow-non-loopback", action="store_true",
                   help="the master, or the target it names, is outside loopback and the test hosts, and yours")
    p.add_argument("--log", default=None, help="write the workers' log here (default: the terminal)")
    p = sub.add_parser("serve", help="run an echo server backend in the foreground, with live gauges")
    add_arguments(p)
    sub.add_parser("check", help="short self-check: every backend stops exactly at its fd limit")
    p = sub.add_parser("sweep", help="one run per (backend, fd limit), then cap against limit with the fitted line")
    p.add_argument("--backends", type=_backends, default=list(BACKENDS), help="comma-separated (default: all)")
    p.add_argument("--fd-limits", type=_fd_limits, default=[256, 512, 1024], help="comma-separated soft fd limits")
    p.add_argument("--connections", type=_positive, default=None, help="per run (default: 1.25 × the limit)")
    p.add_argument("--selector", default="epoll", choices=SELECTORS, help="selectors backend")
    p.add_argument("--out", default="results")
    p = sub.add_parser("report", help="PNG plots and a self-contained report.html from result files alone")
    p.add_argument("paths", nargs="+", help="run directories, sweep directories, bench-*.json files")
    p.add_argument("--out", default=None, help="directory for the report (default: FIRST_PATH/report)")
    p = sub.add_parser("compare", help="two runs' key figures side by side, with what is significant")
    p.add_argument("run_a")
    p.add_argument("run_b")
    p = sub.add_parser("tour", help="the seed article's claims, each shown live on loopback with the kernel's evidence")
    p.add_argument("step", nargs="?", choices=list(STEPS), help="run one step only")
    p.add_argument("--quick", action="store_true", help="keep the fd-limit step small (no 100,000-connection proof)")
    p.add_argument("--out", default="results", help="where to write tour-<time>.json (the report can include it)")
    p = sub.add_parser("ui", help="servers + Locust master (web UI) + workers, until Ctrl-C")
    p.add_argument("--backend", choices=list(BACKENDS), default="asyncio")
    p.add_argument("--processes", type=_positive, default=1, help="server processes on the port")
    p.add_argument("--share", default="reuseport", choices=SHARE_MODES)
    _add_fd_limit(p, alias=True)
    p.add_argument("--workers", type=_positive, default=2, help="Locust worker processes")
    p.add_argument("--worker-fd-limit", type=_positive, default=None, help="soft fd limit of each worker")
    p.add_argument("--port", type=_port, default=9999, help="the servers' port")
    p.add_argument("--web-port", type=_positive, default=8089)
    p.add_argument("--connections", type=_positive, default=1000,
                   help="the start form's Number of users: the connections to ramp to")
    p.add_argument("--ramp-rate", type=_positive_float, default=None,
                   help="the start form's Ramp up: connections per second (default: --connections, up to 10,000)")
    p.add_argument("--echo-interval", type=_positive_float, default=5.0)
    p.add_argument("--out", default="results", help="where each test started from the UI is written as a run directory")
    _add_target_options(p)
    _add_host_options(p, make=False)
    _add_bench_parsers(sub.add_parser("bench", help="server benchmarks: echo throughput, memory per connection, "
                                      "N held on one port, the idle-connection tax, the C reference"), IDLE_POINTS, DEFAULT_ORDER)
    return parser


COMMANDS = {"proof": cmd_proof, "run": cmd_run, "sweep": cmd_sweep, "report": cmd_report, "compare": cmd_compare,
            "tour": cmd_tour, "limits": cmd_limits, "serve": cmd_serve, "check": cmd_check, "bench": cmd_bench,
            "ui": cmd_ui, "hosts": cmd_hosts, "worker": cmd_worker, "tune": cmd_tune}


def main(argv: list[str] | None = None) -> int:
    args, extra = build_parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    if extra:  # said by the subcommand that does not take them, not by `harness`
        prog = " ".join(["harness", args.command, *([args.kind] if getattr(args, "kind", None) else []),
                         *([args.action] if getattr(args, "action", None) else [])])
        print(f"{prog}: error: unrecognized arguments: {' '.join(extra)} ({prog} does not take them; "
              f"see {prog} --help)", file=sys.stderr)
        return 2
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
