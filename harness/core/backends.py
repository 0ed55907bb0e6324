"""The harness's own echo servers as data: the backends by name with the fds each holds before
its first connection, how processes share a port, the server configuration every layer passes
around, and the costs the plan counts per server process. `servers.registry` loads the backends
named here; nothing here imports them.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.core.refusal import Refused


@dataclass(frozen=True)
class Backend:
    name: str
    module: str
    held_fds: int  # stdio, listener, reserve fd, /proc/self/statm, gauge mapping, stop pipe, loop fds
    summary: str


BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("threaded", "servers.backends.threaded", 10, "one thread per connection (socketserver style)"),
    Backend("selectors", "servers.backends.selector_loop", 10, "one non-blocking loop: epoll, poll or select"),
    Backend("asyncio", "servers.backends.asyncio_loop", 10, "stdlib asyncio event loop, Protocol-based echo"),
    Backend("uvloop", "servers.backends.uvloop_loop", 17, "asyncio echo on libuv (uvloop)"),
)}
SHARE_MODES = ("reuseport", "fork", "handoff")
SELECTORS = ("epoll", "poll", "select")
FD_SETSIZE = 1024  # select()'s fixed fd_set size in glibc
# A forked server process's own memory before its first connection (USS of an asyncio server,
# measured here: 9.0 MiB), and what a machine keeps free however many processes it runs.
SERVER_PROCESS_BYTES = 9 << 20
MEMORY_RESERVE_BYTES = 1 << 30


# Memory of one idle connection, by part, in bytes (`harness bench memory`; docs/benchmarks.md): each
# backend's server userland, plain and with TLS; a Locust worker's in driver mode, plain and with its
# TLS client (`harness.core.tls`: ~21 KB of OpenSSL state); the kernel's socket objects, both ends.
SERVER_BYTES = {"threaded": (37_900, 100_600), "selectors": (260, 15_000), "asyncio": (1_700, 284_000),
                "uvloop": (1_400, 23_900)}
CLIENT_BYTES = (1_000, 22_000)
KERNEL_BYTES = 6_300


def connection_bytes(backend: str | None, tls: bool = False) -> int:
    """What one more connection costs this machine, both ends: the server's part only for a backend of
    the harness's own (a target's is measured, not assumed: `harness.core.diagnose`)."""
    server = SERVER_BYTES[backend][tls] if backend in SERVER_BYTES else 0
    return server + CLIENT_BYTES[tls] + KERNEL_BYTES


class UnknownBackend(Refused, ValueError):
    pass


def backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise UnknownBackend(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}") from None


def held_fds(name: str, selector: str = "epoll") -> int:
    """The fds a server process of backend `name` holds before its first connection."""
    held = backend(name).held_fds
    if name == "selectors" and selector != "epoll":
        held -= 1  # poll and select need no epoll fd
    return held


@dataclass(frozen=True)
class ServerConfig:
    backend: str
    host: str = "127.0.0.1"
    port: int = 9999
    processes: int = 1
    share: str = "reuseport"
    fd_limit: int | None = None  # soft RLIMIT_NOFILE of every server process; None = the hard limit
    selector: str = "epoll"
    backlog: int = 4096
    upper: bool = False  # threaded only: send back the upper-cased data (the seed article's demo)
    nice: int = 0  # added to each server process's nice value (a run lowers its load below its control)
    netns: str | None = None  # a test host's network namespace to serve in (None: this one)
    tls_cert: str | None = None  # serve TLS with this certificate (PEM) and key; None: plain TCP
    tls_key: str | None = None
    tls_tickets: int = 2  # TLS 1.3 session tickets sent after each handshake (OpenSSL's default)
