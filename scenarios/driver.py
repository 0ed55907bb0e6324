"""The "driver" user mode: every EchoUser of a Locust process served by one greenlet.

Why: a sleeping gevent greenlet costs ~8 KB of RSS here (a 4 KB page of its own Python frame stack
plus its saved C stack), so a greenlet per user cannot hold a connection for less than ~10.8 KB.
In this mode each user is still one Locust User holding one connection, spawned, counted and
stopped by Locust's runner (its greenlet sits in the runner's group, created but never started, so
it costs no stack); the driver greenlet does the work for all of them over one epoll.

Theory of operation, per connection (`phase` on the user):
  CONNECTING --writable, SO_ERROR 0--> ECHOING (first echo sent) --full echo--> IDLE
  IDLE --due in the echo schedule--> ECHOING --full echo--> IDLE
  any phase --error, EOF, mismatch or timeout--> closed (user idle; the failure is fired)
Connect and echo are fired as the same Locust request events as the greenlet mode. The echo
schedule is a FIFO of (due time, user): every user has the same interval, so appends are in order.
"""

from __future__ import annotations

import errno
import os
import socket as gsocket
import time
from collections import deque

import gevent
from gevent import monkey
from gevent.event import Event

from scenarios.tcp_echo import TALLY, TCPError, parse_host
from servers.proc import IP_BIND_ADDRESS_NO_PORT, LINGER_RESET

_epoll = monkey.get_original("select", "epoll")
_socket = monkey.get_original("socket", "socket")  # no gevent wrapper: 0.18 KB a socket, not 0.53
EPOLLIN, EPOLLOUT, EPOLLERR, EPOLLHUP = 0x001, 0x004, 0x008, 0x010
CONNECTING, ECHOING, IDLE = 1, 2, 3
MAX_WAIT_S = 0.1
ADOPT_BATCH = 200  # users adopted between yields: Locust's spawn loop never yields by itself


class Driver:
    def __init__(self, environment) -> None:
        self.environment = environment
        self.fire = environment.events.request.fire
        self.ep = _epoll()
        # The hub watches the driver's epoll with one watcher, started once and never stopped.
        # Waiting with gevent.select instead re-armed it on every wait, and each re-arm is an
        # EPOLL_CTL_ADD of an epoll fd, for which the kernel first walks every socket in the
        # driver's epoll (its loop check): O(connections) of kernel time per wait, ~300 µs per
        # connection at 16k held per worker.
        self.ready = Event()
        self.watcher = gevent.get_hub().loop.io(self.ep.fileno(), 1)  # 1: readable
        self.watcher.start(self.ready.set)
        self.by_fd: dict[int, object] = {}
        self.schedule: deque = deque()  # (due, user)
        self.inflight: deque = deque()  # (deadline, user, op_number): connects and echoes
        self.sources_turn = 0
        self.adopted = 0
        self.greenlet = gevent.spawn(self.run)

    # -- users arriving and leaving (called from Locust's spawning greenlet) ------------------
    def adopt(self, user, group):
        opts = self.environment.parsed_options
        user._greenlet = g = gevent.Greenlet(_never_runs, user)  # args[0] is the user, as Locust expects
        user._group = group
        group.add(g)  # counted by the runner; never started, so it costs no stack
        g.rawlink(lambda _: self.drop(user))  # Locust stops a user by killing its greenlet
        user.sock = None
        user.verified_once = False
        user.op = 0
        user.payload = b""
        user.got = b""
        user.timeout = getattr(opts, "echo_timeout", 10.0)
        user.payload_size = getattr(opts, "payload_size", 64)
        self._connect(user)
        self.adopted += 1
        if self.adopted % ADOPT_BATCH == 0:
            # A worker spawns its whole share of a step in one loop: yield now and then, so its
            # heartbeats and reports go out and the driver answers the connects already made.
            gevent.sleep(0)
        return g

    def drop(self, user) -> None:
        sock = user.sock
        if sock is None:
            return
        user.sock = None
        self.by_fd.pop(sock.fileno(), None)
        try:
            self.ep.unregister(sock.fileno())
        except OSError:
            pass
        try:  # RST instead of FIN: no TIME_WAIT pile-up between runs
            sock.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_LINGER, LINGER_RESET)
        except OSError:
            pass
        sock.close()
        TALLY.open -= 1

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> None:
        ep = self.ep
        while True:
            self.ready.wait(self._wait())
            self.ready.clear()
            for fd, events in ep.poll(0, 4096):
                user = self.by_fd.get(fd)
                if user is not None:
                    self._on_event(user, events)
            now = time.perf_counter()
            while self.schedule and self.schedule[0][0] <= now and not TALLY.ramping:
                _, user = self.schedule.popleft()
                if user.sock is not None and user.phase == IDLE:
                    self._send_echo(user, now)
            while self.inflight and self.inflight[0][0] <= now:
                _, user, op = self.inflight.popleft()
                if user.sock is not None and user.op == op and user.phase in (CONNECTING, ECHOING):
                    self._fail(user, "connect" if user.phase == CONNECTING else "echo", "timeout")
            gevent.sleep(0)  # let Locust's own greenlets (heartbeats, spawning) run

    def _wait(self) -> float:
        now = time.perf_counter()
        queues = (self.inflight,) if TALLY.ramping else (self.schedule, self.inflight)
        heads = [q[0][0] for q in queues if q]
        return max(0.0, min([MAX_WAIT_S, *(h - now for h in heads)]))

    def _connect(self, user) -> None:
        host, port = parse_host(user.host)
        sources = TALLY.sources
        source = sources[self.sources_turn % len(sources)]
        self.sources_turn += 1
        user.started = time.perf_counter()
        user.phase = CONNECTING
        try:
            sock = _socket(gsocket.AF_INET, gsocket.SOCK_STREAM)
        except OSError as exc:  # EMFILE in this Locust process
            return self._failed_connect(user, exc.errno)
        sock.setblocking(False)
        sock.setsockopt(gsocket.IPPROTO_TCP, gsocket.TCP_NODELAY, 1)
        try:
            sock.setsockopt(gsocket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
        except OSError as exc:
            sock.close()
            return self._failed_connect(user, exc.errno)
        err = sock.connect_ex((host, port))
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            return self._failed_connect(user, err)
        user.sock = sock
        TALLY.open += 1
        self.by_fd[sock.fileno()] = user
        self.ep.register(sock.fileno(), EPOLLOUT | EPOLLIN)
        user.op += 1
        self.inflight.append((user.started + user.timeout, user, user.op))

    def _failed_connect(self, user, err: int | str) -> None:
        name = errno.errorcode.get(err, str(err)) if isinstance(err, int) else err
        user.phase = IDLE
        TALLY.failed(TALLY.connects_failed, name)
        self._fire("connect", user.started, 0, name)

    def _on_event(self, user, events: int) -> None:
        sock = user.sock
        if user.phase == CONNECTING:
            err = sock.getsockopt(gsocket.SOL_SOCKET, gsocket.SO_ERROR)
            if err:
                return self._fail(user, "connect", errno.errorcode.get(err, str(err)))
            self._fire("connect", user.started, 0, None)
            self.ep.modify(sock.fileno(), EPOLLIN)
            return self._send_echo(user, time.perf_counter())
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as exc:
            return self._fail(user, "echo", errno.errorcode.get(exc.errno, "OSError"))
        if not data:
            return self._fail(user, "echo", "EOF")
        if user.phase != ECHOING:
            return self._fail(user, "echo", "mismatch")  # bytes nobody asked for
        got = user.got + data
        want = len(user.payload)
        if got != user.payload[:len(got)]:
            return self._fail(user, "echo", "mismatch")
        if len(got) < want:
            user.got = got
            return
        if not user.verified_once:
            user.verified_once = True
            TALLY.connects_ok += 1
        TALLY.echoes_verified += 1
        TALLY.bytes_echoed += want
        user.phase, user.payload, user.got = IDLE, b"", b""
        self._fire("echo", user.echo_started, want, None)
        self.schedule.append((time.perf_counter() + self.environment.parsed_options.echo_interval, user))

    def _send_echo(self, user, now: float) -> None:
        user.payload = os.urandom(user.payload_size)
        user.got = b""
        user.echo_started = now
        user.phase = ECHOING
        user.op += 1
        self.inflight.append((now + user.timeout, user, user.op))
        TALLY.echoes_sent += 1
        try:
            sent = user.sock.send(user.payload)
        except OSError as exc:
            return self._fail(user, "echo", errno.errorcode.get(exc.errno, "OSError"))
        if sent < len(user.payload):  # small payloads always fit an empty socket buffer
            return self._fail(user, "echo", "short-send")

    def _fail(self, user, name: str, failure: str) -> None:
        started = user.started if name == "connect" else user.echo_started
        if not user.verified_once:
            TALLY.failed(TALLY.connects_failed, failure)  # never held a verified connection
        if name == "echo":
            TALLY.failed(TALLY.echo_failed, failure)
        self.drop(user)
        user.phase = IDLE
        self._fire(name, started, 0, failure)

    def _fire(self, name: str, started: float, length: int, failure: str | None) -> None:
        self.fire(request_type="TCP", name=name, response_time=(time.perf_counter() - started) * 1000,
                  response_length=length, exception=TCPError(failure) if failure else None, context={})


def _never_runs(user) -> None:  # pragma: no cover - the placeholder greenlet is never started
    raise RuntimeError("a driver-mode user's greenlet must not run")


_DRIVER: Driver | None = None


def driver(environment) -> Driver:
    global _DRIVER
    if _DRIVER is None:
        _DRIVER = Driver(environment)
    return _DRIVER
