"""The `selectors` backend: one non-blocking loop over epoll, poll or select (--selector).

Per idle connection it keeps only the socket and its selector key, which is why it is the
leanest backend. Unsent echo is kept per connection only while the client is not reading, and
the connection is then watched for writability instead of readability, so at most one receive
(RECV_BYTES) is ever buffered per connection. With `select`, fds at or above FD_SETSIZE (1024)
cannot be watched: the intake refuses them with a clear log line, which is the FD_SETSIZE wall.
With TLS each connection is a non-blocking `ssl.SSLSocket` whose handshake the loop drives first
(~15 KB of OpenSSL state per idle connection: the leanest TLS server here).
"""

from __future__ import annotations

import selectors
import socket
import ssl

from harness.core.backends import FD_SETSIZE
from servers.contract import RECV_BYTES, IntakeWatch, ServeContext, StopSignal

MECHANISMS = {
    "epoll": getattr(selectors, "EpollSelector", None),
    "poll": getattr(selectors, "PollSelector", None),
    "select": selectors.SelectSelector,
}
EVENT_READ, EVENT_WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


HANDSHAKE = "handshake"  # a TLS connection whose handshake is under way


def serve(ctx: ServeContext) -> None:
    mechanism = ctx.config.selector
    selector_class = MECHANISMS.get(mechanism)
    if selector_class is None:
        raise ValueError(f"selector {mechanism!r} is not available here; use one of "
                         f"{', '.join(m for m, c in MECHANISMS.items() if c)}")
    sel = selector_class()
    stop = StopSignal()
    intake = ctx.make_intake(fd_ceiling=FD_SETSIZE if mechanism == "select" else None)
    sel.register(stop, EVENT_READ, "stop")
    echo = Echo(sel, ctx.counters, ctx.tls)
    ctx.ready()
    watch = IntakeWatch(ctx, sel, intake, "intake")
    while not stop.requested:
        for key, events in sel.select(watch.timeout()):
            if key.data is None:
                echo.ready(key.fileobj, events)
            elif key.data is HANDSHAKE:
                echo.handshake(key.fileobj)
            elif key.data == "intake":
                for conn in watch.take():
                    echo.adopt(conn)
            else:
                stop.drain()
    ctx.stopped()


class Echo:
    """Every connection of the loop: its echo, and with TLS its handshake first."""

    def __init__(self, sel: selectors.BaseSelector, counters, tls: ssl.SSLContext | None) -> None:
        self.sel, self.counters, self.tls = sel, counters, tls
        self.pending: dict[int, bytes] = {}  # fd -> echo not yet sent (only for clients that stopped reading)

    def adopt(self, conn: socket.socket) -> None:
        if self.tls is None:
            self.sel.register(conn, EVENT_READ)
            return
        try:
            conn = self.tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        except OSError:
            conn.close()
            self.counters.closed += 1
            return
        self.sel.register(conn, EVENT_READ, HANDSHAKE)
        self.handshake(conn)

    def handshake(self, conn: ssl.SSLSocket) -> None:
        try:
            conn.do_handshake()
        except ssl.SSLWantReadError:
            self.sel.modify(conn, EVENT_READ, HANDSHAKE)
            return
        except ssl.SSLWantWriteError:
            self.sel.modify(conn, EVENT_WRITE, HANDSHAKE)
            return
        except OSError:  # the client refused our certificate, or went away
            self.close(conn)
            return
        self.sel.modify(conn, EVENT_READ)
        self.ready(conn, EVENT_READ)  # a first request that came with the handshake is decrypted already

    def ready(self, conn: socket.socket, events: int) -> None:
        if not events & EVENT_READ:
            return self.flush(conn)
        try:
            data = conn.recv(RECV_BYTES)
            while self.tls is not None and conn.pending():  # a whole TLS record decrypted at once
                data += conn.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
            return
        except OSError:
            return self.close(conn)
        if not data:
            return self.close(conn)
        try:
            sent = conn.send(data)
        except (BlockingIOError, ssl.SSLWantWriteError):
            sent = 0
        except OSError:
            return self.close(conn)
        self.counters.bytes_echoed += sent
        if sent < len(data):
            self.pending[conn.fileno()] = data[sent:]
            self.sel.modify(conn, EVENT_WRITE)

    def flush(self, conn: socket.socket) -> None:
        data = self.pending[conn.fileno()]
        try:
            sent = conn.send(data)
        except (BlockingIOError, ssl.SSLWantWriteError):
            return
        except OSError:
            return self.close(conn)
        self.counters.bytes_echoed += sent
        if sent < len(data):
            self.pending[conn.fileno()] = data[sent:]
        else:
            del self.pending[conn.fileno()]
            self.sel.modify(conn, EVENT_READ)

    def close(self, conn: socket.socket) -> None:
        self.sel.unregister(conn)
        self.pending.pop(conn.fileno(), None)
        conn.close()
        self.counters.closed += 1
