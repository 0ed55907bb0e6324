"""The contract between the supervisor and an echo backend.

A backend is a module with `serve(ctx: ServeContext) -> None`. It runs in its own server process
and must:
- take new connections only through `ctx.make_intake()` (which handles the fd limit),
- echo every byte back unchanged and in order, reading no more from a connection while its unsent
  output is above `MAX_PENDING` (a client that never reads cannot grow server memory),
- call `ctx.ready()` once it is set up, and `ctx.tick()` about every `TICK_S`,
- return when SIGTERM arrives (`StopSignal` or the event loop's signal handler).
With TLS (`ServerConfig.tls_cert`), `ctx.tls` is the server context, and every backend hands each
connection it takes to it before echoing; a connection refused at a limit is refused by the intake
before that, so it costs no handshake. The supervisor (`servers.supervisor`) owns processes,
sockets and the fd limit; the registry (`servers.registry`) names the backends.
"""

from __future__ import annotations

import os
import resource
import selectors
import signal
import socket
import ssl
import time
from typing import Callable

from harness.core.backends import ServerConfig
from harness.system import procfs
from servers.gauges import SERVING, STOPPED, Counters, Slot
from servers.intake import Intake, RateLimitedLog

TICK_S = 0.25
RECV_BYTES = 64 * 1024
MAX_PENDING = 64 * 1024  # per connection: stop reading above this much unsent echo


def server_tls_context(config: ServerConfig) -> ssl.SSLContext | None:
    """The server side of TLS for a config that asks for it (its certificate and key loaded now)."""
    if not config.tls_cert:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(config.tls_cert, config.tls_key)
    context.num_tickets = config.tls_tickets
    return context


class ServeContext:
    """What a backend gets from its server process."""

    def __init__(
        self,
        config: ServerConfig,
        source: socket.socket,
        slot: Slot,
        *,
        handoff: bool = False,
        siblings_have_room: Callable[[], bool] | None = None,
    ) -> None:
        self.config = config
        self.source = source
        self.slot = slot
        self.handoff = handoff
        self.siblings_have_room = siblings_have_room
        self.counters = Counters()
        self.cap = 0
        self.fd_soft, self.fd_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self._rss = procfs.RssReader()
        self.log = RateLimitedLog(f"{config.backend}[pid {os.getpid()}]", self.status)
        self.tls = server_tls_context(config)  # loaded before the first connection, as every fd is

    def make_intake(self, fd_ceiling: int | None = None) -> Intake:
        self.fd_ceiling = fd_ceiling
        return Intake(self.source, self.counters, self.log, handoff=self.handoff,
                      fd_ceiling=fd_ceiling, siblings_have_room=self.siblings_have_room)

    def ready(self) -> None:
        """Record the fds held before serving and the resulting cap, then mark the slot serving."""
        base = procfs.count_open_fds()
        ceiling = min(self.fd_soft, getattr(self, "fd_ceiling", None) or self.fd_soft)
        self.cap = ceiling - base
        self.slot.set(fd_soft=self.fd_soft, fd_hard=self.fd_hard, base_fds=base, cap=self.cap,
                      state=SERVING)
        self.tick()

    def tick(self) -> None:
        self.slot.publish(self.counters, self._rss.rss_bytes(), time.time_ns())
        self.log.flush()

    def stopped(self) -> None:
        self.log.flush(force=True)
        self.tick()
        self.slot.set(state=STOPPED)

    def status(self) -> str:
        return (f"{self.counters.open} open of cap {self.cap} "
                f"(fd limit {self.fd_soft} minus {self.fd_soft - self.cap} held)")


class IntakeWatch:
    """The part of a selector loop that the threaded, selectors and handoff loops share: tick the
    gauges every TICK_S, take new connections from the intake, and stop watching it for the pause
    the intake asks for (at a limit), then watch it again. Create it after `ctx.ready()`.
    `housekeeping`, if given, runs on every pass of the loop and returns how soon it wants the next
    pass (None: at the next tick)."""

    def __init__(self, ctx: ServeContext, sel: selectors.BaseSelector, intake: Intake, data: object = None,
                 housekeeping: Callable[[], float | None] | None = None) -> None:
        self.ctx, self.sel, self.intake, self.data, self.housekeeping = ctx, sel, intake, data, housekeeping
        self.resume_at = 0.0
        self.next_tick = time.monotonic() + TICK_S
        sel.register(intake, selectors.EVENT_READ, data)

    def timeout(self) -> float:
        """Seconds the loop may wait in select() now; ticks, and resumes the intake, when due."""
        now = time.monotonic()
        if now >= self.next_tick:
            self.ctx.tick()
            self.next_tick = now + TICK_S
            if self.resume_at and now >= self.resume_at:
                self.sel.register(self.intake, selectors.EVENT_READ, self.data)
                self.resume_at = 0.0
        wait = self.next_tick - now
        soon = self.housekeeping() if self.housekeeping else None
        return max(0.0, wait if soon is None else min(wait, soon))

    def take(self) -> list[socket.socket]:
        """The new connections ready now (the intake was readable)."""
        new, pause = self.intake.take()
        if pause:
            self.sel.unregister(self.intake)
            self.resume_at = time.monotonic() + pause
            self.next_tick = min(self.next_tick, self.resume_at)
        return new

    def serve(self, stop: "StopSignal", on_new: Callable[[socket.socket], None]) -> None:
        """The whole loop of a process that waits on nothing but new connections and SIGTERM (the
        threaded backend's main thread, the handoff acceptor); `stop` is registered in the selector."""
        while not stop.requested:
            for key, _ in self.sel.select(self.timeout()):
                if key.fileobj is stop:
                    stop.drain()
                    continue
                for conn in self.take():
                    on_new(conn)


class StopSignal:
    """SIGTERM (and SIGINT) as a flag plus a readable fd, for loops that wait in select/poll."""

    def __init__(self) -> None:
        self.requested = False
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.requested = True

    def fileno(self) -> int:
        return self._r

    def drain(self) -> None:
        try:
            os.read(self._r, 512)
        except BlockingIOError:
            pass
