"""The "driver" user mode: every EchoUser of a Locust process served by one greenlet.

Why: a sleeping gevent greenlet costs ~8 KB of RSS here (a 4 KB page of its own Python frame stack
plus its saved C stack), so a greenlet per user cannot hold a connection for less than ~10.8 KB.
In this mode each user is still one Locust User holding one connection, spawned, counted and
stopped by Locust's runner; the driver greenlet does the work for all of them over one epoll.
Locust's runner keeps one greenlet per user in a gevent Group and stops a user by killing it; a
driver-mode user's "greenlet" is its `Conn`, a slotted object that keeps that contract (args,
rawlink, kill, join) and holds the connection's state, for ~0.2 KB instead of ~1.4 KB for an
unstarted gevent.Greenlet with its link and the same state in the user's __dict__.

Theory of operation, per connection (`phase` on the Conn). A request and its reply are those of
the run's protocol (`scenarios.protocols`: echo by default; "echo" below is any request):
  CONNECTING --writable, SO_ERROR 0 (or at once: the first send succeeds)--> ECHOING (first echo
  sent) --every echo answered--> IDLE
  IDLE --due in the echo schedule--> ECHOING --every echo answered--> IDLE
  any phase --error, EOF, a wrong reply or timeout--> closed (user idle; the failure is fired,
  with what the target said word for word where it said anything)
With the `hold` protocol nothing is sent: CONNECTING --writable--> IDLE, and the connection counts
as verified once it has stayed open HOLD_VERIFY_S (a target at its limit often accepts and then
closes at once); a close at any time is a failure with what the target sent before it.
Periodic echoes start when the hold begins, every connection's first one staggered over one
interval. Echo modes (--echo-mode): `closed` schedules a connection's next echo an interval after
its last answer (Locust's usual closed loop). `open` sends on a fixed schedule of intended times
whether or not earlier echoes were answered (they are pipelined: an echo stream comes back in
order), and measures each echo's latency from its intended send time, so a stalled server shows as
latency instead of as fewer requests (coordinated omission). Echoes are due on a 20 ms grid
(`SLOT_S`), so a worker and the servers handle them in batches; the open loop's intended send
times are grid times. Either way the latency of every echo
sent after the ramp goes into the process's HdrHistogram (`TALLY.latency`), which the master
merges across workers; Locust's own stats get the service time (actual send to answer). Both
schedules are FIFOs of (due, conn): every connection has the same interval, so appends are in due
order.
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

from harness.core import protocols
from scenarios.tally import TALLY
from harness.core.words import TCPError
from harness.system.wire import IP_BIND_ADDRESS_NO_PORT, LINGER_RESET
from harness.core.words import errno_name

_epoll = monkey.get_original("select", "epoll")
_socket = monkey.get_original("socket", "socket")  # no gevent wrapper: 0.18 KB a socket, not 0.53
EPOLLIN, EPOLLOUT, EPOLLERR, EPOLLHUP = 0x001, 0x004, 0x008, 0x010
CONNECTING, ECHOING, IDLE = 1, 2, 3
MAX_WAIT_S = 0.1
# Echoes are due on a grid of SLOT_S: a wake-up with one echo to send cost a worker ~300 µs and the
# server ~100 µs, one with many ~30 µs and ~14 µs an echo (10k held, one echo a second vs a minute).
SLOT_S = 0.02
ADOPT_BATCH = 50  # users adopted between yields: Locust's spawn loop never yields by itself
CONNECT = 0  # the op number of a connect in the inflight queue


class Conn:
    """One driver-mode user's connection, standing in for its greenlet in Locust's runner group."""

    __slots__ = ("user", "links", "dead", "sock", "phase", "sent", "answered", "parser", "marks",
                 "started", "verified")

    def __init__(self, user) -> None:
        self.user = user
        self.links: list | None = None
        self.dead = False
        self.sock: gsocket.socket | None = None
        self.phase = CONNECTING
        self.sent = 0  # echoes sent; the inflight queue names each by this number
        self.answered = 0  # echoes answered in full
        # The replies still owed (a protocol parser), only while some are: an idle connection holds none.
        self.parser: protocols.Parser | None = None
        self.marks: deque | None = None  # per unanswered echo: (its size, sent at, intended at)
        self.started = 0.0
        self.verified = False

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
        if _DRIVER is not None:
            _DRIVER.drop(self)
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
        self.by_fd: dict[int, Conn] = {}
        self.schedule: deque = deque()  # (due, conn): each connection's next echo, in due order
        self.inflight: deque = deque()  # (deadline, conn, op): connects (CONNECT) and echoes (their number)
        self.verifying: deque = deque()  # (when, conn): hold protocol connections held once still open then
        self.sources_turn = 0
        self.adopted = 0
        self.holding = False
        self.open_loop = getattr(self.opts, "echo_mode", "closed") == "open"
        self.protocol = protocols.from_options(self.opts, environment.host)
        self.request_name = self.protocol.name
        self.greenlet = gevent.spawn(self.run)

    # -- users arriving and leaving (called from Locust's spawning greenlet) ------------------
    def adopt(self, user, group) -> Conn:
        conn = Conn(user)
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

    def drop(self, conn: Conn) -> None:
        sock = conn.sock
        if sock is None:
            return
        conn.sock = None
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
        if conn.verified:
            TALLY.held -= 1

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> None:
        ep = self.ep
        while True:
            self.ready.wait(self._wait())
            self.ready.clear()
            for fd, events in ep.poll(0, 4096):
                conn = self.by_fd.get(fd)
                if conn is not None:
                    self._on_event(conn, events)
            now = time.perf_counter()
            if not TALLY.ramping and not self.holding:
                self._start_holding(now)
            while self.holding and self.schedule and self.schedule[0][0] <= now:
                due, conn = self.schedule.popleft()
                if conn.sock is None:
                    continue
                if self.open_loop:
                    self.schedule.append((_on_grid(due + self.opts.echo_interval), conn))
                    self._send_echo(conn, now, intended=due)
                elif conn.phase == IDLE:
                    self._send_echo(conn, now, intended=now)
            while self.inflight and self.inflight[0][0] <= now:
                _, conn, op = self.inflight.popleft()
                if conn.sock is None:
                    continue
                if op == CONNECT and conn.phase == CONNECTING:
                    self._fail(conn, "connect", "timeout", conn.started)
                elif op != CONNECT and op > conn.answered:
                    self._fail(conn, "echo", "timeout", conn.marks[0][1])
            while self.verifying and self.verifying[0][0] <= now:  # hold: still open, so held
                _, conn = self.verifying.popleft()
                if conn.sock is not None and not conn.verified:
                    conn.verified = True
                    TALLY.connects_ok += 1
                    TALLY.held += 1
            gevent.sleep(0)  # let Locust's own greenlets (heartbeats, spawning) run

    def _start_holding(self, now: float) -> None:
        """The ramp is over: periodic echoes begin, each connection's first one staggered over one
        interval. Without that, every connection verified during the ramp was due at once, and
        the latency measured that burst (p50 565 ms at 100k) instead of the steady state."""
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
        conn.started = time.perf_counter()
        try:
            host, port = TALLY.target(conn.user.host)
        except TCPError as exc:
            return self._failed_connect(conn, exc.name)
        sources = TALLY.sources
        source = sources[self.sources_turn % len(sources)]
        self.sources_turn += 1
        if TALLY.full():
            return self._failed_connect(conn, TALLY.refusal())
        try:
            # non-blocking from socket() itself: no ioctl(FIONBIO) per connection (strace: 13.5
            # syscalls per connection on a worker before this and the two below, 9.4 after, the C floor 4)
            sock = _socket(gsocket.AF_INET, gsocket.SOCK_STREAM | gsocket.SOCK_NONBLOCK)
        except OSError as exc:  # EMFILE in this Locust process, ENFILE on the machine
            TALLY.socket_failed(exc.errno)
            return self._failed_connect(conn, exc.errno)
        sock.setsockopt(gsocket.IPPROTO_TCP, gsocket.TCP_NODELAY, 1)
        try:
            sock.setsockopt(gsocket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
        except OSError as exc:
            sock.close()
            return self._failed_connect(conn, exc.errno)
        err = sock.connect_ex((host, port))
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            return self._failed_connect(conn, err)
        conn.sock = sock
        TALLY.open += 1
        self.by_fd[sock.fileno()] = conn
        if self.protocol.sends and self._send_first(conn):
            return
        self.ep.register(sock.fileno(), EPOLLOUT | EPOLLIN)
        self.inflight.append((conn.started + self.opts.echo_timeout, conn, CONNECT))

    def _send_first(self, conn: Conn) -> bool:
        """Send the first echo at once: on loopback (and a test host's veth) the kernel has run the
        whole handshake inside connect(), so the socket is already established and the send
        succeeds; that saves the writable event, its wake-up and an epoll_ctl per connection.
        False (nothing sent) while the handshake is still under way: the connect is then
        watched for writability as usual. A connect the kernel already refused fails here."""
        sock = conn.sock
        payload = self.protocol.request()
        try:
            sent = sock.send(payload)
        except BlockingIOError:
            return False
        except OSError as exc:
            self._fail(conn, "connect", errno_name(exc.errno), conn.started)
            return True
        self.ep.register(sock.fileno(), EPOLLIN)
        self._fire("connect", conn.started, 0, None)
        now = time.perf_counter()
        self._echo_sent(conn, payload, now, now)
        if sent < len(payload):
            self._fail(conn, "echo", "short-send")
        return True

    def _failed_connect(self, conn: Conn, err: int | str) -> None:
        name = errno_name(err)
        conn.phase = IDLE
        TALLY.failed(TALLY.connects_failed, name)
        self._fire("connect", conn.started, 0, name)

    def _on_event(self, conn: Conn, events: int) -> None:
        sock = conn.sock
        if conn.phase == CONNECTING:
            # writable without an error event is a connect that succeeded: SO_ERROR is read only
            # when the kernel flags one (a getsockopt per connection saved)
            err = sock.getsockopt(gsocket.SOL_SOCKET, gsocket.SO_ERROR) if events & (EPOLLERR | EPOLLHUP) else 0
            if err:
                return self._fail(conn, "connect", errno_name(err), conn.started)
            self._fire("connect", conn.started, 0, None)
            self.ep.modify(sock.fileno(), EPOLLIN)
            now = time.perf_counter()
            if not self.protocol.sends:
                conn.phase = IDLE
                self.verifying.append((now + protocols.HOLD_VERIFY_S, conn))
                return None
            return self._send_echo(conn, now, intended=now)
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as exc:
            return self._fail(conn, "echo", errno_name(exc.errno))
        if not data:
            return self._fail(conn, "echo", "EOF")
        if conn.parser is None:  # bytes while nothing was asked: hold keeps them, the others refuse them
            conn.parser = self.protocol.parser()
        done, wrong = conn.parser.feed(data)
        now = time.perf_counter()
        marks = conn.marks
        for _ in range(done):
            size, sent_at, intended = marks.popleft()
            conn.answered += 1
            TALLY.echoes_verified += 1
            TALLY.bytes_echoed += size
            if intended is not None:
                TALLY.latency.record_value(max(1, int((now - intended) * 1e6)))
            self._fire(self.request_name, sent_at, size, None)
        if not conn.verified and conn.answered:
            conn.verified = True
            TALLY.connects_ok += 1
            TALLY.held += 1
        if wrong:
            return self._fail(conn, "echo", wrong)
        if marks or not self.protocol.sends:
            return
        conn.phase, conn.parser, conn.marks = IDLE, None, None
        if self.holding and (not self.open_loop or conn.answered == 1):
            # closed loop: the next echo an interval after this answer; open loop: a connection
            # that came up after the schedule was laid out joins it now
            self.schedule.append((_on_grid(now + self.opts.echo_interval), conn))

    def _send_echo(self, conn: Conn, now: float, intended: float) -> None:
        """Send one echo; its latency is recorded (from `intended`) only once the ramp is over."""
        payload = self.protocol.request()
        self._echo_sent(conn, payload, now, intended)
        try:
            sent = conn.sock.send(payload)
        except OSError as exc:
            return self._fail(conn, "echo", errno_name(exc.errno))
        if sent < len(payload):  # small payloads always fit a socket buffer the server keeps draining
            return self._fail(conn, "echo", "short-send")

    def _echo_sent(self, conn: Conn, payload: bytes, now: float, intended: float) -> None:
        """The bookkeeping of one echo request: what the parser expects back, its marks, its deadline."""
        if conn.marks is None:
            conn.marks = deque()
            conn.parser = self.protocol.parser()
        conn.parser.sent(payload)
        conn.marks.append((len(payload), now, intended if self.holding else None))
        conn.phase = ECHOING
        conn.sent += 1
        self.inflight.append((now + self.opts.echo_timeout, conn, conn.sent))
        TALLY.echoes_sent += 1

    def _fail(self, conn: Conn, name: str, failure: str, started: float | None = None) -> None:
        if started is None:
            started = conn.marks[0][1] if conn.marks else conn.started
        if conn.parser is not None:
            TALLY.note_evidence(failure, conn.parser.leftover())
        if name == "echo":
            name = self.request_name
        if not conn.verified:
            TALLY.failed(TALLY.connects_failed, failure)  # never held a verified connection
        if name == self.request_name:
            TALLY.failed(TALLY.echo_failed, failure)
        self.drop(conn)
        conn.phase, conn.parser, conn.marks = IDLE, None, None
        self._fire(name, started, 0, failure)

    def _fire(self, name: str, started: float, length: int, failure: str | None) -> None:
        self.fire(request_type="TCP", name=name, response_time=(time.perf_counter() - started) * 1000,
                  response_length=length, exception=TCPError(failure) if failure else None, context={})


def _on_grid(t: float) -> float:
    """`t` rounded up to the echo grid (so the intended send times of the open loop are grid times)."""
    return math.ceil(t / SLOT_S) * SLOT_S


_DRIVER: Driver | None = None


def driver(environment) -> Driver:
    global _DRIVER
    if _DRIVER is None:
        _DRIVER = Driver(environment)
    return _DRIVER
