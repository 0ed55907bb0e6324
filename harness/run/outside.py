"""A server the harness did not start, as a run sees it: `harness run --target HOST:PORT`.

It stands where a `ServerGroup` stands in a run (start, port, reap, stop) but starts and stops
nothing: `start()` only checks that something accepts on the address, and a target on this machine
is watched through /proc (`harness.system.listeners`): every process holding its listening
socket, the fds each holds at its most, and its limits, for the diagnosis.
"""

from __future__ import annotations

import ipaddress
import socket

from harness.core.addresses import AddressError, split_host_port, target_error
from harness.core.protocols import PROTOCOLS
from harness.core.refusal import Refused
from harness.system import listeners

CONNECT_CHECK_S = 5.0


class TargetError(Refused, ValueError):
    """A target that cannot be loaded; the message names the flag and the fix."""


def parse_target(text: str) -> tuple[str, int]:
    """'127.0.0.1:6379' -> ('127.0.0.1', 6379); 'localhost:80' -> ('127.0.0.1', 80)."""
    try:
        return split_host_port(text, "--target", "127.0.0.1:6379")
    except AddressError as exc:
        raise TargetError(str(exc)) from None


def check_target(text: str, protocol: str | None, allow_non_loopback: bool) -> tuple[str, int]:
    """(host, port) of a --target that may be loaded with --protocol, else TargetError."""
    host, port = parse_target(text)
    error = target_error(host, allow_non_loopback)
    if error:
        raise TargetError(error.replace("target ", "--target ", 1))
    if protocol is None:
        raise TargetError(f"--target {text} needs --protocol: say what it speaks ({', '.join(PROTOCOLS)})")
    return host, port


def is_local(host: str) -> bool:
    """Whether the target's processes can be read here: loopback (all of 127/8 is this machine)."""
    return ipaddress.ip_address(host).is_loopback


class OutsideServer:
    board = None
    gauges_path = None

    def __init__(self, host: str, port: int, processes: list[dict] | None = None) -> None:
        self.host, self.port = host, port
        self.local = is_local(host)
        self.exited: dict[int, int] = {}
        # the processes behind the port, as found before the run, with the most fds each held since
        self.processes = listeners.tracked(processes or [])

    def start(self) -> "OutsideServer":
        try:
            socket.create_connection((self.host, self.port), timeout=CONNECT_CHECK_S).close()
        except OSError as exc:
            raise TargetError(f"nothing accepts on --target {self.host}:{self.port} ({exc.strerror or exc}); "
                              "start the server first, or check the address") from None
        return self

    def begin_test(self) -> None:
        """A new test from the web UI: the processes read again, their most fds counted from now."""
        if self.local:
            self.processes = listeners.tracked(listeners.refresh(self.processes))
            self.exited.clear()

    def sample(self) -> None:
        """Read the target's processes again; keep each one's most fds."""
        if self.local:
            listeners.track(self.processes)

    def reap(self) -> dict[int, None]:
        """The target's processes that /proc no longer has since the last call (pid: no status: they
        are not ours to wait for)."""
        gone = {p["pid"]: None for p in self.processes if p.get("gone") and p["pid"] not in self.exited}
        self.exited.update(gone)
        return gone

    def stop(self) -> None:
        pass
