"""The User: one TCP connection per user, opened in on_start, held, and asked a request of the run's
protocol every interval, its reply checked.

`--user-mode driver` (the default) hands the user to its process's driver (`scenarios.driver`), which
serves every user over one epoll at a quarter of the memory. `--user-mode greenlet` runs each user
in its own greenlet, as Locust users usually run: the methods below drive the same connection state
machine (`scenarios.link`) over a blocking gevent socket, so both modes bind, connect, verify, count
and fail the same way. A user whose connect failed records it once and then stays idle; it never
retries in a loop.
"""

from __future__ import annotations

import itertools
import socket
import time

from locust import User, task

from harness.core.connection import CLOSED, READY, VERIFYING, bind_address
from harness.core.protocol_base import Protocol
from harness.core.words import TCPError, errno_name, error_name
from harness.system.wire import client_socket, close_with_reset
from scenarios import link
from scenarios.driver import driver
from scenarios.tally import TALLY

_user_numbers = itertools.count()


class GreenletLink(link.LocustLink):
    """A greenlet-mode user's connection: it waits on one deadline at a time, the latest asked."""

    __slots__ = ("user", "deadline")

    def __init__(self, user: "EchoUser", protocol: Protocol, tls) -> None:
        super().__init__(protocol, tls)
        self.user = user
        self.deadline = (0, 0.0)  # (op, when)

    def on_deadline(self, op: int, at: float) -> None:
        self.deadline = (op, at)

    def drop(self, verified: bool) -> None:
        self.user.drop(verified)


class EchoUser(User):
    """Holds one connection to the target and sends a request every interval once the ramp ends."""

    def start(self, group):
        if getattr(self.environment.parsed_options, "user_mode", "driver") == "driver":
            return driver(self.environment).adopt(self, group)
        return super().start(group)

    def wait_time(self) -> float:
        """Closed loop: the interval (read each time: the web UI's start form can change it).
        Open loop: until the next intended send time, an interval after the last one, however
        long the last request took: a late answer shortens the wait. This user has one request in
        flight, so an answer more than an interval late drops the slots it missed (the driver mode
        pipelines and drops none)."""
        opts = self.environment.parsed_options
        if getattr(opts, "echo_mode", "closed") != "open" or TALLY.ramping:
            return opts.echo_interval
        now = time.perf_counter()
        self._intended = max(self._intended, now - opts.echo_interval) + opts.echo_interval
        return max(0.0, self._intended - now)

    def on_start(self) -> None:
        link.bind(self.environment)
        opts = self.environment.parsed_options
        self.sock: socket.socket | None = None
        self._intended = 0.0  # open loop: the intended send time of the next request
        self.timeout = opts.echo_timeout
        tls = link.tls_sessions(opts, self.host)
        self.link = GreenletLink(self, link.protocol_for(opts, self.host), tls.client() if tls else None)
        started = time.perf_counter()
        try:
            host, port = TALLY.destination(self.host)
        except TCPError as exc:
            return self._refused(started, exc.name)
        if TALLY.full():
            return self._refused(started, TALLY.refusal())
        source = TALLY.sources[next(_user_numbers) % len(TALLY.sources)]
        try:
            sock = client_socket(socket.socket, host, bind_address(source))
        except OSError as exc:  # EMFILE in this Locust process, ENFILE on the machine, a bind refused
            TALLY.socket_failed(exc.errno)
            return self._refused(started, errno_name(exc.errno))
        TALLY.open += 1  # counted from now: other users check full() while this one waits in connect()
        self.sock = sock
        self.link.begin(started, self.timeout)
        sock.settimeout(self.timeout)
        try:
            sock.connect((host, port))
        except OSError as exc:
            return self.link.lost(error_name(exc))
        self._send(self.link.connected(time.perf_counter(), self.timeout))
        self._pump(lambda: self.link.state in (READY, CLOSED))  # verified once, right away

    @task
    def echo(self) -> None:
        """One request of the run's protocol, its reply checked; while ramping (and with nothing to
        send), only whether the target closed the connection (it may shed held ones)."""
        if self.sock is None:
            return  # connect failed: stay idle; the load shape decides what happens next
        if TALLY.ramping or not self.link.protocol.sends:
            return self._watch()
        opts = self.environment.parsed_options
        now = time.perf_counter()
        intended = self._intended if getattr(opts, "echo_mode", "closed") == "open" and self._intended else now
        self._send(self.link.request(now, intended, self.timeout))
        self._pump(lambda: not self.link.marks)

    def on_stop(self) -> None:
        self.drop(self.link.state == READY if hasattr(self, "link") else False)

    def drop(self, verified: bool) -> None:
        if self.sock is not None:
            close_with_reset(self.sock)
            self.sock = None
            TALLY.open -= 1
            if verified:
                TALLY.held -= 1

    def _refused(self, started: float, failure: str) -> None:
        """A connect that made no socket (worker-full, EMFILE, a target it may not load)."""
        self.link.stage_at = started
        self.link.fail(failure, started=started)

    def _send(self, data: bytes) -> None:
        if data and self.sock is not None:
            try:
                self.sock.sendall(data)
            except OSError as exc:
                self.link.lost(error_name(exc))

    def _pump(self, done) -> None:
        """Feed the connection what arrives until `done()`, it fails, or a deadline passes."""
        link_ = self.link
        while self.sock is not None and not done():
            holding = link_.state == VERIFYING and not link_.protocol.sends
            op, deadline = link_.deadline
            until = link_.verify_at if holding else deadline
            self.sock.settimeout(max(0.0, until - time.perf_counter()))
            try:
                data = self.sock.recv(65536)
            except (socket.timeout, BlockingIOError):
                if holding:
                    link_.check_held(time.perf_counter())
                else:
                    link_.expire(op, time.perf_counter())
                continue
            except OSError as exc:
                link_.lost(error_name(exc))
                return
            if not data:
                link_.lost()
                return
            self._send(link_.received(data, time.perf_counter(), self.timeout))

    def _watch(self) -> None:
        """Whether the target closed the connection (what it sent meanwhile is kept as evidence)."""
        self.sock.settimeout(0.0)
        try:
            data = self.sock.recv(65536)
        except (socket.timeout, BlockingIOError):
            return  # still open
        except OSError as exc:
            return self.link.lost(error_name(exc))
        finally:
            if self.sock is not None:
                self.sock.settimeout(self.timeout)
        if not data:
            return self.link.lost()
        self._send(self.link.received(data, time.perf_counter(), self.timeout))
