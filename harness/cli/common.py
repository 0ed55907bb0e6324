"""What every subcommand's parser shares: the one-line error parser, the argument types, the flags
of a run (shared by `run`, `proof`, `ui`), and `fail`, the one way to refuse bad input.

One vocabulary across subcommands: `--fd-limit` is a server process's soft fd limit everywhere
(`--server-fd-limit` is kept as an alias in `run` and `ui`), `--backend` picks one backend and
`--backends` several, and every choice comes from the core's tables. Bad input is one line naming
the flag and the fix, exit code 2; a flag a subcommand does not take is refused.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from harness.core.addresses import is_loopback
from harness.core.backends import BACKENDS, SELECTORS, SHARE_MODES
from harness.core.mqtt import MAX_KEEPALIVE
from harness.core.options import BY_NAME
from harness.core.protocols import PROTOCOLS
from harness.core.refusal import Refused
from harness.core.websocket import WS_MODES
from harness.core.words import ECHO_MODES, USER_MODES
from harness.run.config import MAX


class UsageError(Refused, ValueError):
    """Bad input on the command line; the message names the flag and the fix."""


def fail(flag: str, problem: str, fix: str) -> NoReturn:
    """Refuse the command line in one line: what is wrong with `flag`, and how to put it right."""
    raise UsageError(f"{flag} {problem}; {fix}")


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


class OneLineErrorParser(argparse.ArgumentParser):
    """Bad arguments are one line naming the problem (and exit code 2), not a usage dump. No
    abbreviations: `bench echo --backend x` must not pass for `--backends x`."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message}\n")


def ranged(kind: type, low: float, high: float, advice: str):
    """An argparse type: `kind` between low and high inclusive, else `advice` (formatted with the value)."""
    def parse(text: str):
        value = kind(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(advice.format(value=value))
        return value
    parse.__name__ = kind.__name__  # argparse names the type in "invalid int value"
    return parse


seconds = ranged(float, 0, 86_400, "{value:g} s is out of range; use 0 to 86,400")
positive_float = ranged(float, math.nextafter(0, 1), math.inf, "{value:g} must be above 0")
port = ranged(int, 0, 65535, "{value} is not a TCP port; use 0-65535 (0 picks a free one)")
positive = ranged(int, 1, math.inf, "{value} must be at least 1")
count = ranged(int, 0, math.inf, "{value} must be 0 or more")


def list_of(item, example: str):
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


def backend_name(name: str) -> str:
    if name not in BACKENDS:
        raise argparse.ArgumentTypeError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    return name


backends = list_of(backend_name, ",".join(list(BACKENDS)[:2]))
addresses = list_of(str, "127.0.0.9,127.0.0.10")
fd_limits = list_of(positive, "256,512,1024")
idle_points = list_of(count, "0,1000,10000,100000")


def connections(text: str) -> int | str:
    """--connections: a number, or `max` (ramp until a limit stops the run)."""
    return MAX if text == MAX else positive(text)


connections.__name__ = "int"


def size(text: str) -> int:
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


def hosts_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give test host names such as fdcap-2,fdcap-3")
    return names


def _help(name: str) -> str:
    return BY_NAME[name].help


def add_fd_limit(p: argparse.ArgumentParser, alias: bool = False) -> None:
    names = ["--fd-limit", "--server-fd-limit"] if alias else ["--fd-limit"]
    p.add_argument(*names, dest="fd_limit", type=positive, default=None,
                   help="soft fd limit of each server process (default: the hard limit)")


def loopback_address(text: str) -> str:
    """--host: an address on loopback (127.0.0.0/8, ::1), where the harness's own servers listen."""
    if not is_loopback(text) or text == "localhost":
        raise argparse.ArgumentTypeError(f"{text!r} is not a loopback address; give 127.0.0.1 or ::1 (test hosts: "
                                         "--hosts N or --server-host, with --ipv6 for IPv6)")
    return text


def add_server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=list(BACKENDS), default="asyncio")
    p.add_argument("--host", type=loopback_address, default=None,
                   help="the address the harness's own servers listen on (default 127.0.0.1; ::1 for IPv6)")
    p.add_argument("--ipv6", action="store_true",
                   help="load over IPv6: the servers on ::1 (or on the test hosts' 2001:2::/48 addresses), the "
                        "clients from there")
    p.add_argument("--processes", type=positive, default=None, help="server processes on the port (default: planned)")
    p.add_argument("--share", default="reuseport", choices=SHARE_MODES)
    add_fd_limit(p, alias=True)
    p.add_argument("--port", type=port, default=9999, help="the servers' port")


def add_load_options(p: argparse.ArgumentParser) -> None:
    """The flags of the load a run puts on the port, handed to Locust under the same names."""
    p.add_argument("--worker-fd-limit", type=positive, default=None, help="soft fd limit per Locust worker")
    p.add_argument("--ramp-rate", type=positive_float, default=None,
                   help="connections per second (default: the target up to 10,000; the ramp slows down where the "
                        "machine cannot keep up)")
    p.add_argument("--echo-interval", type=positive_float, default=None,
                   help=_help("echo_interval") + " (default: planned, 5 s up to 100,000 connections here)")
    p.add_argument("--echo-timeout", type=positive_float, default=None,
                   help=_help("echo_timeout") + " (default: planned from the load processes per core, at least 10)")
    p.add_argument("--payload-size", type=ranged(int, 1, 65_536, "{value} bytes: use 1 to 65,536"), default=64,
                   help=_help("payload_size"))
    p.add_argument("--out", default="results", help="directory for run directories")
    p.add_argument("--metrics", default=None, metavar="HOST:PORT",
                   help="the Locust master serves Prometheus metrics at http://HOST:PORT/metrics for the whole run "
                        "(loopback unless --allow-non-loopback; docs/metrics.md)")


def add_run_options(p: argparse.ArgumentParser) -> None:
    """The flags of one headless run, shared by `run` and `proof` (the proof plans --connections itself)."""
    add_server_options(p)
    p.add_argument("--selector", default="epoll", choices=SELECTORS, help="selectors backend")
    p.add_argument("--workers", type=count, default=None,
                   help="Locust workers (default: planned; 0: none here, only --expect-workers from elsewhere)")
    p.add_argument("--user-mode", default="driver", choices=USER_MODES, help=_help("user_mode"))
    p.add_argument("--hold", type=seconds, default=10.0, help=_help("hold"))
    p.add_argument("--echo-mode", default="closed", choices=ECHO_MODES, help=_help("echo_mode"))
    add_load_options(p)
    p.add_argument("--max-seconds", type=positive_float, default=None,
                   help="end the ramp after this long (default: 240 s, or the target at 2,000 connections/s)")
    p.add_argument("--memory-reserve", type=size, default=None, metavar="SIZE",
                   help="MemAvailable the ramp leaves free: below it the ramp stops, stopped_by memory (default 1G)")
    p.add_argument("--json", action="store_true", help="print the result document")


def add_target_options(p: argparse.ArgumentParser) -> None:
    """Loading a server the harness does not start, and what it speaks."""
    p.add_argument("--target", default=None, metavar="HOST:PORT",
                   help="load this server instead of starting the harness's own (loopback unless "
                        "--allow-non-loopback; an IPv6 address in brackets); needs --protocol")
    p.add_argument("--protocol", choices=PROTOCOLS, default=None,
                   help="what the target speaks: echo (byte for byte), hold (connect and hold), line (--send, "
                        "--expect), redis (PING), http (GET --path), websocket (an upgrade, then echoes or pings), "
                        "mqtt (CONNECT, then pings or --mqtt-echo); default echo for the harness's own servers")
    p.add_argument("--send", default="", help=_help("send"))
    p.add_argument("--expect", default="", help="line: what the reply starts with, e.g. 'VERSION '")
    p.add_argument("--path", default="/", help="http, websocket: the path to request (default /)")
    add_protocol_options(p)
    p.add_argument("--source-addresses", type=addresses, default=None,
                   help="every Locust worker binds these (default: 127.0.i+1.2 … per worker, planned)")
    p.add_argument("--allow-non-loopback", action="store_true",
                   help="allow a --target outside 127.0.0.0/8 (only a host that is yours to load)")


def add_protocol_options(p: argparse.ArgumentParser) -> None:
    """WebSocket's and MQTT's own flags (`harness.core.websocket`, `harness.core.mqtt`)."""
    p.add_argument("--header", action="append", default=None, metavar="NAME:VALUE", help=_help("header"))
    p.add_argument("--subprotocol", default="", help=_help("subprotocol"))
    p.add_argument("--ws-mode", choices=WS_MODES, default="echo", help=_help("ws_mode"))
    p.add_argument("--client-id-prefix", default="fdcap-", help=_help("client_id_prefix"))
    p.add_argument("--keepalive", type=ranged(int, 0, MAX_KEEPALIVE, "{value} s: use 0 (none) to 65,535"),
                   default=None, help="mqtt: the keep-alive the CONNECT asks for, seconds (default: planned, longer "
                   "than the ramp and a request interval, so the broker closes no connection idle while the ramp "
                   "goes on; 0: none)")
    p.add_argument("--username", default="", help=_help("username"))
    p.add_argument("--password", default="", help=_help("password"))
    p.add_argument("--mqtt-echo", action="store_true", help=_help("mqtt_echo"))


def add_tls_options(p: argparse.ArgumentParser, server: bool = True) -> None:
    """TLS on every connection, under whatever protocol the run speaks (`harness.core.tls`)."""
    p.add_argument("--tls", action="store_true", help=_help("tls"))
    p.add_argument("--server-name", default=None, metavar="NAME", help=_help("server_name"))
    p.add_argument("--ca", default=None, metavar="FILE", help=_help("ca"))
    p.add_argument("--insecure", action="store_true", help=_help("insecure"))
    p.add_argument("--tls-version", choices=("1.2", "1.3"), default=None, help=_help("tls_version"))
    p.add_argument("--alpn", default=None, metavar="P1,P2", help=_help("alpn"))
    p.add_argument("--tls-resume", action="store_true", help=_help("tls_resume"))
    p.add_argument("--tls-group", default=None, metavar="GROUP", help=_help("tls_group"))
    if server:
        p.add_argument("--cert", default=None, metavar="FILE",
                       help="TLS: the harness's own servers' certificate (PEM; default: one made for the run, "
                            "ECDSA P-256, which the clients are given to trust)")
        p.add_argument("--key", default=None, metavar="FILE", help="TLS: --cert's private key (PEM)")


def add_host_options(p: argparse.ArgumentParser, make: bool = True) -> None:
    """Running on test hosts (network namespaces standing in for other machines) and with
    workers from other machines."""
    if make:
        p.add_argument("--hosts", type=ranged(int, 2, 31, "{value} hosts: use 2 to 31 (one server host, the rest "
                                                             "client hosts)"), default=0,
                       help="make N test hosts for this run (1 server host, N-1 client hosts), removed after")
    p.add_argument("--server-host", default=None, metavar="HOST",
                   help="run the servers on this test host (made by harness hosts up)")
    p.add_argument("--worker-hosts", type=hosts_list, default=None, metavar="H2,H3",
                   help="run Locust workers on these test hosts, the same number on each")
    if not make:
        return
    p.add_argument("--master-bind", default=None, metavar="HOST:PORT",
                   help="where the Locust master listens for workers (default: loopback, or the test hosts' bridge); "
                        "a non-loopback address needs --allow-non-loopback")
    p.add_argument("--expect-workers", type=count, default=0,
                   help="also wait for N workers started elsewhere with harness worker --master")
    p.add_argument("--loss", type=_loss, default=0.0, metavar="PERCENT",
                   help="drop this share of the packets on each client host's link at random (nftables), e.g. 1%%")
    p.add_argument("--rate", type=_rate, default=None, help="shape each client host's link to this rate (tc tbf), "
                   "e.g. 50mbit")
    p.add_argument("--link-down", type=seconds, default=0.0, metavar="SECONDS",
                   help="take the first client host's link down this long in the middle of the hold")


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
