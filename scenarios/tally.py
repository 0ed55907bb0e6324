"""What a Locust process's users hold and have done (`WorkerTally`, one `TALLY` per process): plain
counters that the connections count into (`scenarios.link`) and `scenarios.reporting` sends to the
master as a `WorkerReport`."""

from __future__ import annotations

import errno

from hdrh.histogram import HdrHistogram

from harness.core.addresses import AddressError, split_host_port, target_error
from harness.core.protocol_base import evidence_text
from harness.core.words import LATENCY_DIGITS, LATENCY_MAX_US, WORKER_FULL, TCPError
from harness.hosts.netns import lab_addresses


def new_latency_histogram() -> HdrHistogram:
    return HdrHistogram(1, LATENCY_MAX_US, LATENCY_DIGITS)


class WorkerTally:
    """What this Locust process's users hold and have done."""

    def __init__(self) -> None:
        self.open = 0  # sockets open
        self.connects_ok = 0  # connections established and verified once
        self.held = 0  # ...and still open: what this process holds, as a server would count it
        self.connects_failed: dict[str, int] = {}  # by name: no connection, or no first reply
        self.echo_failed: dict[str, int] = {}
        self.echoes_sent = 0
        self.echoes_verified = 0
        self.bytes_echoed = 0
        self.stages: dict[str, int] = {}  # stages done beyond connect: tls-handshake, ws-upgrade, ...
        self.tls: dict[str, dict[str, int] | int] = {}  # what TLS handshakes agreed, counted by value
        self.sources: list[str] = ["127.0.0.1"]
        self.max_users = 0  # the most users this process may hold (fd limit minus a reserve)
        # While the master's shape ramps, periodic requests wait (every connection is still verified
        # once at connect): the ramp gets the CPU, and steady state is measured apart from it.
        self.ramping = True
        # Latency after the ramp, in µs from each request's intended send time (the actual send
        # time in the closed loop); the master merges every worker's.
        self.latency = new_latency_histogram()
        self.evidence: dict[str, str] = {}  # failure name -> the first 200 bytes the target sent with it
        self.test = 0  # the master's test number these counts belong to
        self.host = ""  # the test host (or machine) this process runs on, for per-host results
        self.file_table_full = False  # socket() met ENFILE: fs.file-max is reached
        # Which targets this process may load (set at init from its options); a worker learns its
        # target from the master only when it spawns, so every connect checks it (cached per host).
        self.allow_non_loopback = False
        self.test_hosts = False
        self._destinations: dict[str, tuple[str, int, str | None]] = {}

    def reset(self, test: int) -> None:
        """A new test from the web UI (START again): counts start from zero; the connections this
        process still holds (none, once Locust has stopped the last test's users) stay counted."""
        self.test = test
        self.connects_ok, self.connects_failed, self.stages, self.tls = 0, {}, {}, {}
        self.file_table_full = False  # a new test tries the file table again
        self.reset_echo_stats()

    def reset_echo_stats(self) -> None:
        """RESET in the web UI: the echo counts, failures and latency start again, as Locust's own
        request stats do; the connections and their connect counts stay (the ramp still needs them)."""
        self.echoes_sent = self.echoes_verified = self.bytes_echoed = 0
        self.echo_failed, self.evidence = {}, {}
        self.latency = new_latency_histogram()

    def destination(self, host: str) -> tuple[str, int]:
        """(address, port) of Locust's --host, or TCPError("target-refused") if this process may
        not load it: no packet is sent to an address outside `harness.core.addresses`' rule."""
        known = self._destinations.get(host)
        if known is None:
            try:
                name, port = split_host_port(host or "", "--host", "tcp://127.0.0.1:9999")
            except AddressError:  # no --host, or the web form's Host emptied: nothing to connect to
                raise TCPError("no-target") from None
            labs = lab_addresses() if self.test_hosts else None
            known = self._destinations[host] = (name, port, target_error(name, self.allow_non_loopback, labs))
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

    def note_tls(self, agreed: dict[str, str | bool]) -> None:
        """What one TLS handshake agreed (version, cipher, group, resumed), counted by value."""
        for key, value in agreed.items():
            counts = self.tls.setdefault(key, {})
            counts[str(value)] = counts.get(str(value), 0) + 1


TALLY = WorkerTally()
