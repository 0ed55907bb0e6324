"""The "driver" user mode: every EchoUser of a Locust process served by one greenlet.

Why: a sleeping gevent greenlet costs ~8 KB of RSS here (a 4 KB page of its own Python frame stack
plus its saved C stack), so a greenlet per user cannot hold a connection for less than ~10.8 KB.
In this mode each user is still one Locust User holding one connection, spawned, counted and
stopped by Locust's runner; the driver greenlet does the work for all of them over one epoll.
Locust's runner keeps one greenlet per user in a gevent Group and stops a user by killing it; a
driver-mode user's "greenlet" is its `Conn`, a slotted object that keeps that contract (args,
rawlink, kill, join) and is the connection's state machine (`scenarios.link`).

The driver is the state machine's adapter: it makes the socket, sends what the machine returns,
feeds it what arrives, and keeps its deadlines. Three queues, each in due order because every
connection has the same timeout and interval: `inflight` (deadline, conn, op) for what the far end
owes, `verifying` (when, conn) for connections held with nothing to send, and `schedule` (due, conn)
for the periodic requests, which start when the hold begins, each connection's first one staggered
over one interval. Echo modes (--echo-mode): `closed` schedules a connection's next request an
interval after its last answer; `open` sends on a fixed schedule of intended times whether or not
earlier requests were answered (pipelined), and measures each one's latency from its intended send
time, so a stalled server shows as latency instead of as fewer requests (coordinated omission).
Requests are due on a 20 ms grid (`SLOT_S`), so a worker and the servers handle them in batches.
"""

from __future__ import annotations

import errno
import math
import socket as gsocket
import time
from collections import deque

import gevent
from gevent import GreenletExit, monkey
from gevent.event import Event

from harness.core.connection import CONNECTING, READY, VERIFYING, bind_address
from harness.core.protocol_base import Protocol
from harness.core.words import TCPError, errno_name
from harness.system.wire import client_socket, close_with_reset, is_established
from scenarios import link
from scenarios.tally import TALLY

_epoll = monkey.get_original("select", "epoll")
_socket = monkey.get_original("socket", "socket")  # no gevent wrapper: 0.18 KB a socket, not 0.53
EPOLLIN, EPOLLOUT, EPOLLERR, EPOLLHUP = 0x001, 0x004, 0x008, 0x010
MAX_WAIT_S = 0.1
# Requests are due on a grid of SLOT_S: a wake-up with one request to send cost a worker ~300 µs and
# the server ~100 µs, one with many ~30 µs and ~14 µs a request.
SLOT_S = 0.02
ADOPT_BATCH = 50  # users adopted between yields: Locust's spawn loop never yields by itself


class Conn(link.LocustLink):
    """One driver-mode user's connection, standing in for its greenlet in Locust's runner group."""

    __slots__ = ("user", "links", "dead", "sock")

    def __init__(self, user, protocol, tls) -> None:
        super().__init__(protocol, tls)
        self.user = user
        self.links: list | None = None
        self.dead = False
        self.sock: gsocket.socket | None = None

    # -- the state machine's hooks ---------------------------------------------------------------
    def on_deadline(self, op: int, at: float) -> None:
        _DRIVER.inflight.append((at, self, op))

    def drop(self, verified: bool) -> None:
        _DRIVER.drop(self, verified)

    # -- the greenlet contract Locust's runner and gevent's Group use -------------------------
    @property
    def args(self) -> tuple:
        return (self.user,)

    @property
    def name(self) -> str:
        return f"driver-user-{id(self.user):x}"

    exception = None
    value = None

    def ready(self) -> bool:
        return self.dead

    successful = ready

    def rawlink(self, callback) -> None:
        if self.dead:  # as gevent does: a link to a finished greenlet is called soon, not now
            gevent.get_hub().loop.run_callback(callback, self)
        elif self.links is None:
            self.links = [callback]
        else:
            self.links.append(callback)

    def unlink(self, callback) -> None:
        if self.links and callback in self.links:
            self.links.remove(callback)

    def kill(self, exception=GreenletExit, block=True, timeout=None) -> None:
        """Locust stops a user by killing its greenlet: close the connection. Links are called
        from the hub afterwards, as for a gevent greenlet (gevent's Group relies on that order)."""
        if self.dead:
            return
        self.dead = True
        _DRIVER.drop(self, self.state == READY)
        links, self.links = self.links, None
        for callback in links or ():
            gevent.get_hub().loop.run_callback(callback, self)

    def join(self, timeout=None) -> None:
        if not self.dead:
            gevent.joinall([self], timeout=timeout)


class Driver:
    def __init__(self, environment) -> None:
        self.environment = environment
        self.opts = environment.parsed_options
        self.ep = _epoll()
        # The hub watches the driver's epoll with one watcher, started once and never stopped:
        # waiting with gevent.select instead re-armed it on every wait, an EPOLL_CTL_ADD of an epoll
        # fd, for which the kernel walks every socket in the driver's epoll (its loop check).
        self.ready = Event()
        self.watcher = gevent.get_hub().loop.io(self.ep.fileno(), 1)  # 1: readable
        self.watcher.start(self.ready.set)
        self.by_fd: dict[int, Conn] = {}
        self.schedule: deque = deque()  # (due, conn): each connection's next request, in due order
        self.inflight: deque = deque()  # (deadline, conn, op): what the far end owes
        self.verifying: deque = deque()  # (when, conn): held with nothing to send, verified if still open then
        self.sources_turn = 0
        self.adopted = 0
        self.holding = False
        self.greenlet = gevent.spawn(self.run)

    # The options as this test has them: a test started from the web UI's form may change them.
    @property
    def protocol(self) -> Protocol:
        return link.protocol_for(self.opts, self.environment.host)

    @property
    def open_loop(self) -> bool:
        return getattr(self.opts, "echo_mode", "closed") == "open"

    # -- users arriving and leaving (called from Locust's spawning greenlet) ------------------
    def adopt(self, user, group) -> Conn:
        tls = link.tls_sessions(self.opts, self.environment.host)
        conn = Conn(user, self.protocol, tls.client() if tls else None)
        user._greenlet = conn  # Locust finds the user as greenlet.args[0] and stops it with kill()
        user._group = group
        group.add(conn)  # counted by the runner: its user count is this group's length
        self._connect(conn)
        self.adopted += 1
        if self.adopted % ADOPT_BATCH == 0:
            # A worker spawns its whole share of a step in one loop: yield now and then, so its
            # heartbeats and reports go out and the driver answers the connects already made.
            gevent.sleep(0)
        return conn

    def drop(self, conn: Conn, verified: bool) -> None:
        sock = conn.sock
        if sock is None:
            return
        conn.sock = None
        self.by_fd.pop(sock.fileno(), None)
        try:
            self.ep.unregister(sock.fileno())
        except OSError:
            pass
        close_with_reset(sock)
        TALLY.open -= 1
        if verified:
            TALLY.held -= 1

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> None:
        while True:
            self.ready.wait(self._wait())
            self.ready.clear()
            for fd, events in self.ep.poll(0, 4096):
                conn = self.by_fd.get(fd)
                if conn is not None:
                    self._on_event(conn, events)
            now = time.perf_counter()
            if not TALLY.ramping and not self.holding:
                self._start_holding(now)
            self._send_due(now)
            while self.inflight and self.inflight[0][0] <= now:
                _, conn, op = self.inflight.popleft()
                if conn.sock is not None:
                    conn.expire(op, now)
            while self.verifying and self.verifying[0][0] <= now:
                _, conn = self.verifying.popleft()
                if conn.sock is not None:
                    conn.check_held(now)
            gevent.sleep(0)  # let Locust's own greenlets (heartbeats, spawning) run

    def _send_due(self, now: float) -> None:
        interval = self.opts.echo_interval
        while self.holding and self.schedule and self.schedule[0][0] <= now:
            due, conn = self.schedule.popleft()
            if conn.sock is None:
                continue
            if self.open_loop:
                self.schedule.append((_on_grid(due + interval), conn))
                self._send(conn, conn.request(now, due, self.opts.echo_timeout))
            elif conn.state == READY and not conn.marks:
                self._send(conn, conn.request(now, now, self.opts.echo_timeout))

    def _start_holding(self, now: float) -> None:
        """The ramp is over: periodic requests begin, each connection's first one staggered over one
        interval. Without that, every connection verified during the ramp was due at once, and
        the latency measured that burst instead of the steady state."""
        self.holding = True
        if not self.protocol.sends:
            return  # hold: nothing to send, ever
        conns = list(self.by_fd.values())
        step = self.opts.echo_interval / max(1, len(conns))
        self.schedule = deque((_on_grid(now + i * step), conn) for i, conn in enumerate(conns))

    def _wait(self) -> float:
        now = time.perf_counter()
        queues = (self.schedule, self.inflight, self.verifying) if self.holding else (self.inflight, self.verifying)
        heads = [q[0][0] for q in queues if q]
        return max(0.0, min([MAX_WAIT_S, *(h - now for h in heads)]))

    def _connect(self, conn: Conn) -> None:
        started = time.perf_counter()
        try:
            host, port = TALLY.destination(conn.user.host)
        except TCPError as exc:
            return self._refused(conn, started, exc.name)
        if TALLY.full():
            return self._refused(conn, started, TALLY.refusal())
        sources = TALLY.sources
        source = sources[self.sources_turn % len(sources)]
        self.sources_turn += 1
        try:
            sock = client_socket(_socket, host, bind_address(source), blocking=False)
        except OSError as exc:  # EMFILE in this Locust process, ENFILE on the machine, a bind refused
            TALLY.socket_failed(exc.errno)
            return self._refused(conn, started, errno_name(exc.errno))
        err = sock.connect_ex((host, port))
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            return self._refused(conn, started, errno_name(err))
        conn.sock = sock
        TALLY.open += 1
        self.by_fd[sock.fileno()] = conn
        established = is_established(sock)
        conn.begin(started, self.opts.echo_timeout, established)
        if established:  # the first bytes go at once: no writable event, wake-up or epoll_ctl
            self.ep.register(sock.fileno(), EPOLLIN)
            self._connected(conn, started)
        else:
            self.ep.register(sock.fileno(), EPOLLOUT | EPOLLIN)

    def _refused(self, conn: Conn, started: float, failure: str) -> None:
        """A connect that made no socket (worker-full, EMFILE, a target it may not load): a failed
        connect; the user stays idle."""
        conn.stage_at = started
        conn.fail(failure, started=started)

    def _connected(self, conn: Conn, now: float) -> None:
        self._send(conn, conn.connected(now, self.opts.echo_timeout))
        if conn.state == VERIFYING and not conn.protocol.sends and conn.sock is not None:
            self.verifying.append((conn.verify_at, conn))

    def _on_event(self, conn: Conn, events: int) -> None:
        sock = conn.sock
        if conn.state == CONNECTING:
            # writable without an error event is a connect that succeeded: SO_ERROR is read only
            # when the kernel flags one
            err = sock.getsockopt(gsocket.SOL_SOCKET, gsocket.SO_ERROR) if events & (EPOLLERR | EPOLLHUP) else 0
            if err:
                return conn.lost(errno_name(err))
            self.ep.modify(sock.fileno(), EPOLLIN)
            return self._connected(conn, time.perf_counter())
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as exc:
            return conn.lost(errno_name(exc.errno))
        if not data:
            return conn.lost()
        now = time.perf_counter()
        was_ready = conn.state == READY
        self._send(conn, conn.received(data, now, self.opts.echo_timeout))
        if conn.sock is None or not conn.protocol.sends:
            return
        if conn.state == READY and not conn.marks and self.holding and (not self.open_loop or not was_ready):
            # closed loop: the next request an interval after this answer; open loop: a connection
            # verified after the schedule was laid out joins it now
            self.schedule.append((_on_grid(now + self.opts.echo_interval), conn))

    def _send(self, conn: Conn, data: bytes) -> None:
        if not data or conn.sock is None:
            return
        try:
            sent = conn.sock.send(data)
        except OSError as exc:
            return conn.lost(errno_name(exc.errno))
        if sent < len(data):  # small requests always fit a socket buffer the server keeps draining
            conn.fail("short-send")


def _on_grid(t: float) -> float:
    """`t` rounded up to the request grid (so the intended send times of the open loop are grid times)."""
    return math.ceil(t / SLOT_S) * SLOT_S


_DRIVER: Driver | None = None


def driver(environment) -> Driver:
    global _DRIVER
    if _DRIVER is None:
        link.bind(environment)
        _DRIVER = Driver(environment)
    return _DRIVER
