"""Taking new connections without spinning, flooding the log or leaving clients hanging at a limit.

Theory of operation: every backend takes its new connections through one `Intake`, which wraps
either a listening TCP socket (accept) or, in the handoff share mode, the Unix socket on which the
acceptor process sends accepted fds (SCM_RIGHTS). `take()` drains what is ready, in a bounded
batch, and returns the new sockets plus how long the caller should stop watching the source
(0 = keep watching).

When accept() fails, ACCEPT_ERRORS below decides what to do, by errno:
- SHED (EMFILE, ENFILE): libuv's reserve-fd trick. The intake holds one spare fd; it closes it,
  accepts the waiting client, closes that connection at once (the client reads EOF within
  milliseconds instead of hanging in the accept queue), and reopens the spare. This also drains
  the queue, so the listener stops waking the loop and the process does not spin.
  In the fork share mode, where sibling processes accept from the same queue, a full process
  first yields (stops watching for YIELD_S) if a sibling still has room, so no client is refused
  that another process could serve.
- BACKOFF (ENOBUFS, ENOMEM, or the reserve fd could not be reopened): accepting cannot succeed
  soon; stop watching the source for a growing pause (BACKOFF_S .. BACKOFF_MAX_S).
- SKIP (ECONNABORTED, EPROTO, EPERM): the client is already gone; take the next one.
In the handoff mode a worker at its fd limit cannot receive the fd: the kernel truncates the
control message (MSG_CTRUNC) and closes the fd itself, which answers the client; the intake
counts those as EMFILE refusals.

Every refusal is counted by reason and reported by `RateLimitedLog`: at most one line a second.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from typing import Callable

from servers.gauges import Counters

SHED, BACKOFF, SKIP = "shed", "backoff", "skip"

ACCEPT_ERRORS: dict[int, tuple[str, str]] = {
    errno.EMFILE: ("EMFILE", SHED),
    errno.ENFILE: ("ENFILE", SHED),
    errno.ENOBUFS: ("ENOBUFS", BACKOFF),
    errno.ENOMEM: ("ENOMEM", BACKOFF),
    errno.ECONNABORTED: ("other", SKIP),
    errno.EPROTO: ("other", SKIP),
    errno.EPERM: ("other", SKIP),
}
BACKOFF_S, BACKOFF_MAX_S, YIELD_S = 0.05, 1.0, 0.05


class RateLimitedLog:
    """Counts refusals by reason and writes at most one line per `interval` seconds to stderr."""

    def __init__(self, who: str, status: Callable[[], str], interval: float = 1.0) -> None:
        self.who = who
        self.status = status
        self.interval = interval
        self.pending: dict[str, int] = {}
        self.hints: dict[str, str] = {}
        self.lines = 0
        self._last = 0.0

    def note(self, reason: str, count: int = 1, hint: str = "") -> None:
        self.pending[reason] = self.pending.get(reason, 0) + count
        if hint:
            self.hints[reason] = hint
        self.flush()

    def flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.pending or (not force and now - self._last < self.interval):
            return
        counts = ", ".join(f"{reason} x{n}" for reason, n in self.pending.items())
        hints = "".join(f"; {h}" for h in self.hints.values())
        total = sum(self.pending.values())
        line = f"{self.who}: refused {total} connection(s) ({counts}); {self.status()}{hints}\n"
        try:
            os.write(2, line.encode())  # fd 2 itself: sys.stderr may be None (servers.backends.threaded)
        except OSError:
            pass
        self.pending.clear()
        self.hints.clear()
        self.lines += 1
        self._last = now


class Intake:
    """Takes new connections from a listening socket or a handoff Unix socket."""

    def __init__(
        self,
        source: socket.socket,
        counters: Counters,
        log: RateLimitedLog,
        *,
        handoff: bool = False,
        fd_ceiling: int | None = None,
        siblings_have_room: Callable[[], bool] | None = None,
    ) -> None:
        source.setblocking(False)
        self.source = source
        self.counters = counters
        self.log = log
        self.handoff = handoff
        self.fd_ceiling = fd_ceiling
        self.siblings_have_room = siblings_have_room
        self.source_closed = False
        self._backoff = BACKOFF_S
        self._reserve: int | None = self._open_reserve()

    def fileno(self) -> int:
        return self.source.fileno()

    @staticmethod
    def _open_reserve() -> int | None:
        try:
            return os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None

    def take(self, batch: int = 256) -> tuple[list[socket.socket], float]:
        """New connections ready now, and the pause (s) before watching the source again."""
        taken: list[socket.socket] = []
        for _ in range(batch):
            try:
                new = self._receive() if self.handoff else [self.source.accept()[0]]
            except BlockingIOError:
                break
            except OSError as exc:
                reason, action = ACCEPT_ERRORS.get(exc.errno, ("other", BACKOFF))
                if action == SKIP:
                    continue
                if action == SHED:
                    if self.siblings_have_room is not None and self.siblings_have_room():
                        return taken, YIELD_S
                    if self._shed(reason):
                        continue
                    if self._reserve is not None:
                        break  # queue drained: the listener will not wake us until a client comes
                self.counters.refuse(reason)
                self.log.note(reason, hint=f"pausing accept for {self._backoff:.2f} s")
                pause, self._backoff = self._backoff, min(self._backoff * 2, BACKOFF_MAX_S)
                return taken, pause
            for conn in new:
                if self.fd_ceiling is not None and conn.fileno() >= self.fd_ceiling:
                    conn.close()
                    self.counters.refuse("FD_SETSIZE")
                    self.log.note("FD_SETSIZE", hint=(
                        f"select() cannot watch fd {self.fd_ceiling} or above (FD_SETSIZE); "
                        "use --selector epoll or poll"))
                    continue
                conn.setblocking(False)
                taken.append(conn)
                self.counters.accepted += 1
        self._backoff = BACKOFF_S
        return taken, 0.0

    def _receive(self) -> list[socket.socket]:
        """Handoff mode: one message per fd (one byte each); count fds the kernel had to drop."""
        if self.source_closed:
            raise BlockingIOError
        msg, fds, flags, _ = socket.recv_fds(self.source, 64, 64)
        if not msg:
            self.source_closed = True  # the acceptor is gone; keep serving what we hold
            raise BlockingIOError
        lost = len(msg) - len(fds)
        if lost > 0 or flags & socket.MSG_CTRUNC:
            self.counters.refuse("EMFILE", max(lost, 1))
            self.log.note("EMFILE", max(lost, 1))
        return [socket.socket(fileno=fd) for fd in fds]

    def _shed(self, reason: str) -> bool:
        """Answer one waiting client by closing it, using the reserve fd. False when the queue
        is empty (at EMFILE, accept() fails before it looks at the queue) or there is no reserve."""
        if self._reserve is None:
            self._reserve = self._open_reserve()
            if self._reserve is None:
                return False
        os.close(self._reserve)
        try:
            conn, _ = self.source.accept()
        except OSError:  # BlockingIOError: nobody waiting; anything else: nothing to answer
            conn = None
        else:
            conn.close()
            self.counters.refuse(reason)
            self.log.note(reason)
        self._reserve = self._open_reserve()
        return conn is not None

    def close(self) -> None:
        if self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None
        self.source.close()
