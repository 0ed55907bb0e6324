"""`harness serve` / `python -m servers`: run a server group in the foreground and show its gauges.

Prints one "listening on HOST:PORT" line once the servers answer an echo, then one gauge line per
interval; stops every server process on Ctrl-C or SIGTERM. Exit codes: 0 after a clean stop,
2 for bad input (unknown backend, port in use, fd limit above the hard limit), 1 otherwise.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from harness.core.addresses import join_host_port
from harness.core.backends import SELECTORS, SHARE_MODES, ServerConfig
from harness.core.records import total_refusals
from harness.system import procctl
from servers import registry
from servers.gauges import ROLE_ACCEPTOR, GaugeBoard
from servers.supervisor import ConfigError, ServerGroup, StartError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("backend", help=f"one of: {', '.join(registry.BACKENDS)}")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9999, help="TCP port (0 picks a free one)")
    parser.add_argument("--processes", type=int, default=1, help="server processes on the port")
    parser.add_argument("--share", choices=SHARE_MODES, default="reuseport",
                        help="how processes share the port (default reuseport)")
    parser.add_argument("--fd-limit", type=int, default=None,
                        help="soft RLIMIT_NOFILE of every server process (default: the hard limit)")
    parser.add_argument("--selector", choices=SELECTORS, default="epoll",
                        help="selectors backend only: readiness mechanism (default epoll)")
    parser.add_argument("--allow-non-loopback", action="store_true",
                        help="allow --host outside 127.0.0.0/8 (reachable from other machines)")
    parser.add_argument("--upper", action="store_true", help="threaded only: reply with the upper-cased data")
    parser.add_argument("--gauges", default=None, help="gauge file to create (default: in /dev/shm)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between gauge lines")
    parser.add_argument("--json", action="store_true", help="gauge lines as JSON objects")
    parser.add_argument("--tls", action="store_true", help="serve TLS: with --cert/--key, or a certificate made now "
                        "(ECDSA P-256, self-signed for --host and localhost; its path is printed for clients' --ca)")
    parser.add_argument("--cert", default=None, help="TLS: the server's certificate (PEM)")
    parser.add_argument("--key", default=None, help="TLS: the certificate's private key (PEM)")
    parser.add_argument("--tls-tickets", type=int, default=2,
                        help="TLS 1.3 session tickets sent after each handshake (default 2, OpenSSL's)")


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    cert, key = tls_files(args)
    return ServerConfig(backend=args.backend, host=args.host, port=args.port,
                        processes=args.processes, share=args.share, fd_limit=args.fd_limit,
                        selector=args.selector, upper=args.upper, tls_cert=cert, tls_key=key,
                        tls_tickets=args.tls_tickets)


def tls_files(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """--tls's certificate and key: the ones given, or one made now for --host."""
    if not (args.tls or args.cert or args.key):
        return None, None
    if bool(args.cert) != bool(args.key):
        raise ConfigError("--cert and --key go together: give both, or neither for a certificate made now")
    if args.cert:
        for flag, path in (("--cert", args.cert), ("--key", args.key)):
            if not os.path.isfile(path):
                raise ConfigError(f"{flag} {path} is not a file; give the PEM file, or drop --cert/--key")
        return args.cert, args.key
    from harness.system.certs import self_signed

    cert, key = self_signed(Path(tempfile.mkdtemp(prefix="harness-serve-tls-")), [args.host])
    return str(cert), str(key)


def snapshot(board: GaugeBoard) -> list[dict]:
    """Every slot's gauges plus the fds in use, counted by the kernel in /proc."""
    rows = board.read_all()
    for row in rows:
        try:
            row["fds_in_use"] = len(os.listdir(f"/proc/{row['pid']}/fd")) if row["pid"] else 0
        except OSError:
            row["fds_in_use"] = 0
    return rows


def format_line(elapsed: float, rows: list[dict]) -> str:
    servers = [r for r in rows if r["role"] != ROLE_ACCEPTOR]
    refused = total_refusals(rows)
    per_process = " ".join(f"p{r['index']} {r['open']}/{r['cap']}" for r in servers)
    return (f"[{elapsed:5.0f}s] open {sum(r['open'] for r in servers):,} ({per_process}) | "
            f"accepted {sum(r['accepted'] for r in servers):,} | "
            f"refused {', '.join(f'{k} {v:,}' for k, v in refused.items()) or 0} | "
            f"echoed {sum(r['bytes_echoed'] for r in servers) / 1e6:,.1f} MB | "
            f"rss {sum(r['rss_bytes'] for r in rows) / 2**20:,.0f} MiB | "
            f"fds {sum(r['fds_in_use'] for r in rows):,}")


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
        if not ipaddress.ip_address(config.host).is_loopback:
            if not args.allow_non_loopback:
                raise ConfigError(f"--host {config.host} would expose the echo server beyond this machine; "
                                  "use 127.0.0.1, or pass --allow-non-loopback to do it anyway")
            print(f"warning: binding {config.host}, which is reachable from other machines",
                  file=sys.stderr)
        group = ServerGroup(config, gauges_path=args.gauges)
    except (ConfigError, registry.UnknownBackend, ValueError) as exc:
        print(f"harness serve: error: {exc}", file=sys.stderr)
        return 2
    stopping: list[int] = []
    previous = {sig: signal.signal(sig, lambda s, f: stopping.append(s))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        group.start()  # stops whatever it started if it fails
    except ConfigError as exc:
        print(f"harness serve: error: {exc}", file=sys.stderr)
        return 2
    except StartError as exc:
        print(f"harness serve: error: {exc}", file=sys.stderr)
        return 1
    try:
        print(f"listening on {join_host_port(config.host, group.port)} ({config.backend}, {config.processes} "
              f"process(es), share={config.share}, fd limit {group.fd_limit} each, "
              f"gauges {group.gauges_path})" + (f"; TLS with {config.tls_cert} (clients: --tls --ca "
                                                f"{config.tls_cert})" if config.tls_cert else ""), flush=True)
        _show_gauges(group, args.interval, args.json, stopping)
        return 0
    finally:
        group.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print("stopped: every server process has exited", file=sys.stderr, flush=True)


def _show_gauges(group: ServerGroup, interval: float, as_json: bool, stopping: list[int]) -> None:
    """One gauge line per interval until a stop signal arrives; report processes that die."""
    start = time.monotonic()
    next_line = start + interval
    while not stopping:
        time.sleep(min(0.1, max(0.0, next_line - time.monotonic())))
        for index, status in group.reap().items():
            print(f"server process {index} exited ({procctl.describe_exit(status)}); the others keep serving",
                  file=sys.stderr, flush=True)
        now = time.monotonic()
        if now >= next_line:
            rows = snapshot(group.board)
            print(json.dumps({"elapsed_s": round(now - start, 1), "processes": rows})
                  if as_json else format_line(now - start, rows), flush=True)
            next_line = now + interval


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m servers", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
