"""The raw-TCP echo User: one socket per user, opened in on_start, held, echo-checked byte for byte.

Connects and echoes are fired as Locust `request` events (type "TCP", names "connect" and
"echo"), so they appear in Locust's stats, CSVs and HTML report. Failures carry a short,
low-cardinality name (EMFILE, EADDRNOTAVAIL, ECONNREFUSED, ECONNRESET, EOF, timeout, mismatch):
Locust groups failures by the exception's repr. A user whose connect failed records it once and
then stays idle; it never retries in a loop. Every process also keeps a `WorkerTally` of what its
users hold, which `scenarios.gauges` reports to the master.
"""

from __future__ import annotations

import itertools
import socket
import time

from locust import User, task

from harness.core import protocols
from scenarios.driver import driver
from scenarios.tally import TALLY
from harness.core.words import TCPError, error_name
from harness.system.wire import IP_BIND_ADDRESS_NO_PORT, LINGER_RESET

_user_numbers = itertools.count()


class EchoUser(User):
    """Holds one TCP connection to the target and echoes a random payload every interval.

    `--user-mode greenlet` runs each user in its own greenlet, as Locust users usually run (the
    methods below). `--user-mode driver` (the default) hands the user to the process's driver
    (`scenarios.driver`), which does the same work for all users in one greenlet, at a quarter
    of the memory per user."""

    def start(self, group):
        if getattr(self.environment.parsed_options, "user_mode", "greenlet") == "driver":
            return driver(self.environment).adopt(self, group)
        return super().start(group)

    def wait_time(self) -> float:
        """Closed loop: the interval (read each time: the web UI's start form can change it).
        Open loop: until the next intended send time, an interval after the last one, however
        long the last echo took: a late answer shortens the wait. This user has one echo in flight,
        so an answer more than an interval late drops the slots it missed (the driver mode
        pipelines and drops none)."""
        opts = self.environment.parsed_options
        if getattr(opts, "echo_mode", "closed") != "open" or TALLY.ramping:
            return opts.echo_interval
        now = time.perf_counter()
        self._intended = max(self._intended, now - opts.echo_interval) + opts.echo_interval
        return max(0.0, self._intended - now)

    def on_start(self) -> None:
        self.sock: socket.socket | None = None
        self._verified = False
        self._held = False  # counted in TALLY.held: verified and still open
        self._intended = 0.0  # open loop: the intended send time of the next echo
        opts = self.environment.parsed_options
        self.timeout = getattr(opts, "echo_timeout", 10.0)
        self.protocol = protocols.from_options(opts, self.host)
        source = TALLY.sources[next(_user_numbers) % len(TALLY.sources)]
        start = time.perf_counter()
        try:
            host, port = TALLY.target(self.host)
        except TCPError as exc:
            return self._fire_failure("connect", start, exc, TALLY.connects_failed)
        if TALLY.full():
            return self._fire_failure("connect", start, TCPError(TALLY.refusal()), TALLY.connects_failed)
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except OSError as exc:  # EMFILE in this Locust process, ENFILE on the machine
            TALLY.socket_failed(exc.errno)
            return self._fire_failure("connect", start, exc, TALLY.connects_failed)
        TALLY.open += 1  # counted from now: other users check full() while this one waits in connect()
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if source != "0.0.0.0":
                sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((source, 0))
            sock.settimeout(self.timeout)
            sock.connect((host, port))
        except OSError as exc:
            sock.close()
            TALLY.open -= 1
            return self._fire_failure("connect", start, exc, TALLY.connects_failed)
        self.sock = sock
        self._fire("connect", start, 0, None)
        # Every connection is echo-verified once, right away (hold: seen to stay open). A server at
        # its fd limit completes the handshake (the kernel does) and then closes: the client sees
        # EOF here, so a failed first echo counts as a failed connection.
        self._verified = False
        failure = self.echo() if self.protocol.sends else self._watch(protocols.HOLD_VERIFY_S)
        self._verified = True
        if failure is None:
            TALLY.connects_ok += 1
            TALLY.held += 1
            self._held = True
        else:
            TALLY.failed(TALLY.connects_failed, failure)

    @task
    def echo(self) -> str | None:
        """One request of the run's protocol, its reply checked; returns the failure's name, or None."""
        if self.sock is None:
            return None  # connect failed: stay idle; the load shape decides what happens next
        if TALLY.ramping and self._verified:
            # no echo while ramping, but a close by the target is seen (it may shed held
            # connections to take new ones: the ramp stops on that, as in the driver mode)
            return self._watch(0.0)
        if not self.protocol.sends:
            return self._watch(0.0)
        request = self.protocol.request()
        parser = self.protocol.parser()
        parser.sent(request)
        start = time.perf_counter()
        open_loop = getattr(self.environment.parsed_options, "echo_mode", "closed") == "open"
        intended = self._intended if open_loop and self._intended else start
        record = not TALLY.ramping
        TALLY.echoes_sent += 1
        try:
            self.sock.sendall(request)
            done = 0
            while not done:
                data = self.sock.recv(65536)
                if not data:
                    raise TCPError("EOF")
                done, wrong = parser.feed(data)
                if wrong:
                    raise TCPError(wrong)
        except (OSError, TCPError) as exc:
            TALLY.note_evidence(error_name(exc), parser.leftover())
            self._drop()
            return self._fire_failure(self.protocol.name, start, exc, TALLY.echo_failed)
        TALLY.echoes_verified += 1
        TALLY.bytes_echoed += len(request)
        if record:
            TALLY.latency.record_value(max(1, int((time.perf_counter() - intended) * 1e6)))
        self._fire(self.protocol.name, start, len(request), None)
        return None

    def _watch(self, seconds: float) -> str | None:
        """hold: whether the target closed the connection within `seconds` (0: has it closed);
        what it sent meanwhile is kept as evidence. Returns the failure's name, or None."""
        parser = self.protocol.parser()
        deadline = time.monotonic() + seconds
        try:
            while True:
                self.sock.settimeout(max(0.0, deadline - time.monotonic()))
                try:
                    data = self.sock.recv(65536)
                except (socket.timeout, BlockingIOError):
                    return None  # still open
                if not data:
                    raise TCPError("EOF")
                parser.feed(data)
        except (OSError, TCPError) as exc:
            TALLY.note_evidence(error_name(exc), parser.leftover())
            self._drop()
            start = time.perf_counter()
            return self._fire_failure(self.protocol.name, start, exc, TALLY.echo_failed)
        finally:
            if self.sock is not None:
                self.sock.settimeout(self.timeout)

    def on_stop(self) -> None:
        self._drop()

    def _drop(self) -> None:
        if self.sock is not None:
            try:  # RST instead of FIN: no TIME_WAIT pile-up between runs
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            except OSError:
                pass
            self.sock.close()
            self.sock = None
            TALLY.open -= 1
            if self._held:
                TALLY.held -= 1
                self._held = False

    def _fire(self, name: str, start: float, length: int, exc: BaseException | None) -> None:
        self.environment.events.request.fire(
            request_type="TCP", name=name, response_time=(time.perf_counter() - start) * 1000,
            response_length=length, exception=exc, context={})

    def _fire_failure(self, name: str, start: float, exc: BaseException, where: dict[str, int]) -> str:
        failure = TCPError(error_name(exc))
        TALLY.failed(where, failure.name)
        self._fire(name, start, 0, failure)
        return failure.name
