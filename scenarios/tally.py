"""The vocabulary the Locust side and the harness share, with no locust import: what a process's
users hold (`WorkerTally`, one `TALLY` per process), failure names, the worker's fd reserve, the
user and echo modes, and the target's address syntax. The harness reads run results in these
words, so it imports them from here instead of declaring them again.
"""

from __future__ import annotations

import errno
import socket

from hdrh.histogram import HdrHistogram

from scenarios.protocols import evidence_text
from servers.wire import ShortRead, errno_name

USER_MODES = ("driver", "greenlet")
ECHO_MODES = ("closed", "open")
# fds a Locust worker needs for itself (zmq, logging, /proc reads of its CPU monitor): users per
# worker stay this far below its fd limit, so Locust's own monitor never meets EMFILE.
WORKER_FD_RESERVE = 100
WORKER_FULL_DETAIL = (f"a Locust worker held all the users its fd limit allows (its limit less a reserve of "
                      f"{WORKER_FD_RESERVE} for Locust); use more --workers or a higher --worker-fd-limit")


class TCPError(Exception):
    """A failure named by one short word, so Locust groups failures by that word alone."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __repr__(self) -> str:
        return self.name

    __str__ = __repr__


def error_name(exc: BaseException) -> str:
    if isinstance(exc, TCPError):
        return exc.name
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(exc, ShortRead):
        return "EOF"
    if isinstance(exc, OSError) and exc.errno:
        return errno_name(exc.errno)
    return type(exc).__name__


class WorkerTally:
    """What this Locust process's users hold and have done (plain counters, read by gauges)."""

    def __init__(self) -> None:
        self.open = 0
        self.connects_ok = 0  # connections established and echo-verified once
        self.held = 0  # ...and still open: what this process holds, as a server would count it
        self.connects_failed: dict[str, int] = {}  # by name: no connection, or no first echo
        self.echo_failed: dict[str, int] = {}
        self.echoes_sent = 0
        self.echoes_verified = 0
        self.bytes_echoed = 0
        self.sources: list[str] = ["127.0.0.1"]
        self.max_users = 0  # the most users this process may hold (fd limit minus a reserve)
        # While the master's shape ramps, periodic echoes wait (every connection is still verified
        # once at connect): the ramp gets the CPU, and steady state is measured apart from it.
        self.ramping = True
        # Echo latency after the ramp, in µs from each echo's intended send time (the actual send
        # time in the closed loop), 3 significant digits; the master merges every worker's.
        self.latency = new_latency_histogram()
        self.evidence: dict[str, str] = {}  # failure name -> the first 200 bytes the target sent with it
        self.test = 0  # the master's test number these counts belong to
        self.host = ""  # the test host (or machine) this process runs on, for per-host results
        self.file_table_full = False  # socket() met ENFILE: fs.file-max is reached
        # Which targets this process may load (set at init from its options); a worker learns its
        # target from the master only when it spawns, so every connect checks it (cached per host).
        self.allow_non_loopback = False
        self.test_hosts = False
        self._targets: dict[str, tuple[str, int, str | None]] = {}

    def reset(self, test: int) -> None:
        """A new test from the web UI (START again): counts start from zero; the connections this
        process still holds (none, once Locust has stopped the last test's users) stay counted."""
        self.test = test
        self.connects_ok, self.connects_failed = 0, {}
        self.file_table_full = False  # a new test tries the file table again
        self.reset_echo_stats()

    def reset_echo_stats(self) -> None:
        """RESET in the web UI: the echo counts, failures and latency start again, as Locust's own
        request stats do; the connections and their connect counts stay (the ramp still needs them)."""
        self.echoes_sent = self.echoes_verified = self.bytes_echoed = 0
        self.echo_failed, self.evidence = {}, {}
        self.latency = new_latency_histogram()

    def target(self, host: str) -> tuple[str, int]:
        """(address, port) of Locust's --host, or TCPError("target-refused") if this process may
        not load it: no packet is sent to a target outside the rule of `scenarios.targets`."""
        known = self._targets.get(host)
        if known is None:
            from scenarios.targets import target_error

            try:
                name, port = parse_host(host)
            except ValueError:  # no --host, or the web form's Host emptied: nothing to connect to
                raise TCPError("no-target") from None
            known = self._targets[host] = (name, port, target_error(name, self.allow_non_loopback, self.test_hosts))
        if known[2]:
            raise TCPError("target-refused")
        return known[0], known[1]

    def full(self) -> bool:
        """At the most users this process may hold: one more socket would eat Locust's own fd
        reserve; or the machine's file table is full (ENFILE once): each further socket() would
        fail too, so connects are refused here at once, as at worker-full."""
        return self.file_table_full or (bool(self.max_users) and self.open >= self.max_users)

    def refusal(self) -> str:
        """The failure name of a connect that full() refuses."""
        return "ENFILE" if self.file_table_full else WORKER_FULL

    def socket_failed(self, err: int | None) -> None:
        if err == errno.ENFILE:
            self.file_table_full = True

    def failed(self, where: dict[str, int], name: str) -> None:
        where[name] = where.get(name, 0) + 1

    def note_evidence(self, failure: str, data: bytes) -> None:
        """What the target sent with the first failure of each name, word for word."""
        if data and failure not in self.evidence:
            self.evidence[failure] = evidence_text(data)


LATENCY_MAX_US = 600_000_000  # 10 minutes: longer than any echo timeout


def new_latency_histogram() -> HdrHistogram:
    return HdrHistogram(1, LATENCY_MAX_US, 3)


# A connect refused by the worker itself: it holds max_users already (Locust's master may hand a
# worker more than its share when it moves users off workers it thinks are missing).
WORKER_FULL = "worker-full"
TALLY = WorkerTally()


def parse_host(host: str | None) -> tuple[str, int]:
    """'tcp://127.0.0.1:9999', '127.0.0.1:9999' -> ('127.0.0.1', 9999)."""
    if not host:
        raise ValueError("no target: pass --host tcp://127.0.0.1:PORT")
    address = host.split("://", 1)[-1].rstrip("/")
    name, _, port = address.rpartition(":")
    return name, int(port)
