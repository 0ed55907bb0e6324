"""Small socket experiments for `harness tour`, each returning what the kernel answered.

They show the seed article's claims on loopback: a connection is a 4-tuple (the kernel refuses a
duplicate, and reuses a source port towards another destination or from another address); the
client pays one ephemeral port per (source, destination) pair; one process can serve several
ports. Nothing here imports locust, and every socket is closed before a function returns.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
from dataclasses import dataclass, field

from harness.core.words import errno_name
from harness.system import procctl, ss
from harness.system.wire import IP_BIND_ADDRESS_NO_PORT, LINGER_RESET

IP_LOCAL_PORT_RANGE = getattr(socket, "IP_LOCAL_PORT_RANGE", 51)  # Linux 6.3+: a per-socket range


def hello(host: str, port: int, text: str = "Hello socket!") -> str:
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(text.encode())
        return sock.recv(1024).decode()


def _errno_name(exc: OSError) -> str:
    return errno_name(exc.errno)


def four_tuples(dst: tuple[str, int], other_dst: tuple[str, int]) -> dict:
    """Try a duplicate 4-tuple, then the same source port towards another destination and from
    another source address. Returns each attempt's outcome as the kernel gave it."""
    socks: list[socket.socket] = []

    def sock_bound(src: tuple[str, int]) -> socket.socket:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # lets a second socket bind the port
        s.bind(src)
        socks.append(s)
        return s

    def attempt(src: tuple[str, int], to: tuple[str, int]) -> str:
        try:
            sock_bound(src).connect(to)
            return "connected"
        except OSError as exc:
            return _errno_name(exc)

    try:
        first = sock_bound(("127.0.0.1", 0))
        first.connect(dst)
        port = first.getsockname()[1]
        return {
            "first": {"local": ["127.0.0.1", port], "remote": list(dst), "result": "connected"},
            "duplicate": {"local": ["127.0.0.1", port], "remote": list(dst), "result": attempt(("127.0.0.1", port), dst)},
            "other_destination": {"local": ["127.0.0.1", port], "remote": list(other_dst),
                                  "result": attempt(("127.0.0.1", port), other_dst)},
            "other_source": {"local": ["127.0.0.2", port], "remote": list(dst), "result": attempt(("127.0.0.2", port), dst)},
        }
    finally:
        for s in socks:
            s.close()


def exhaust_ports(dst: tuple[str, int], source: str, lo: int, hi: int, extra_source: str) -> dict:
    """Connect from `source` with a per-socket ephemeral range of lo..hi until the kernel refuses,
    then once more from `extra_source`. Shows one port per connection per (source, destination).
    Ports of the range that other sockets held when the kernel refused are counted apart: the
    kernel skips a port another socket has bound, so the range gave that many fewer connections."""
    socks: list[socket.socket] = []
    ports: list[int] = []
    refused = ""

    def open_one(src: str) -> socket.socket:
        s = socket.socket()
        socks.append(s)
        s.setsockopt(socket.SOL_IP, IP_LOCAL_PORT_RANGE, (lo | (hi << 16)).to_bytes(4, "little"))
        s.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        s.bind((src, 0))
        s.connect(dst)
        return s

    try:
        for _ in range(hi - lo + 2):
            try:
                ports.append(open_one(source).getsockname()[1])
            except OSError as exc:
                refused = _errno_name(exc)
                break
        held_by_others = sorted(ss.local_ports_in_use(lo, hi) - set(ports))
        try:
            other = open_one(extra_source).getsockname()
            lifted = {"local": list(other), "result": "connected"}
        except OSError as exc:
            lifted = {"result": _errno_name(exc)}
        return {"range": [lo, hi], "connected": len(ports), "distinct_ports": len(set(ports)),
                "ports_in_range": all(lo <= p <= hi for p in ports), "held_by_others": held_by_others,
                "then": refused, "other_source": lifted}
    finally:
        for s in socks:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            s.close()


@dataclass
class TwoPorts:
    """One forked process echoing on two listening ports."""

    pid: int
    ports: list[int] = field(default_factory=list)

    def stop(self) -> None:
        try:
            os.kill(self.pid, signal.SIGTERM)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def serve_two_ports(host: str = "127.0.0.1") -> TwoPorts:
    listeners = []
    for _ in range(2):
        s = socket.socket()
        s.bind((host, 0))
        s.listen()
        listeners.append(s)
    ports = [s.getsockname()[1] for s in listeners]
    pid = os.fork()
    if pid:
        for s in listeners:
            s.close()
        return TwoPorts(pid, ports)
    code = 0
    try:
        procctl.die_with_parent()
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        sel = selectors.DefaultSelector()
        for s in listeners:
            sel.register(s, selectors.EVENT_READ, "listener")
        while True:
            for key, _ in sel.select():
                if key.data == "listener":
                    conn, _ = key.fileobj.accept()
                    sel.register(conn, selectors.EVENT_READ, "conn")
                else:
                    data = key.fileobj.recv(65536)
                    if data:
                        key.fileobj.sendall(data)
                    else:
                        sel.unregister(key.fileobj)
                        key.fileobj.close()
    except BaseException:
        code = 1
    finally:
        os._exit(code)
