"""The `selectors` backend: one non-blocking loop over epoll, poll or select (--selector).

Per idle connection it keeps only the socket and its selector key, which is why it is the
leanest backend. Unsent echo is kept per connection only while the client is not reading, and
the connection is then watched for writability instead of readability, so at most one receive
(RECV_BYTES) is ever buffered per connection. With `select`, fds at or above FD_SETSIZE (1024)
cannot be watched: the intake refuses them with a clear log line, which is the FD_SETSIZE wall.
"""

from __future__ import annotations

import selectors
import socket

from harness.core.backends import FD_SETSIZE
from servers.contract import RECV_BYTES, IntakeWatch, ServeContext, StopSignal

MECHANISMS = {
    "epoll": getattr(selectors, "EpollSelector", None),
    "poll": getattr(selectors, "PollSelector", None),
    "select": selectors.SelectSelector,
}
EVENT_READ, EVENT_WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


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
    pending: dict[int, bytes] = {}  # fd -> echo not yet sent (only for clients that stopped reading)
    counters = ctx.counters
    ctx.ready()
    watch = IntakeWatch(ctx, sel, intake, "intake")

    def close(conn: socket.socket) -> None:
        sel.unregister(conn)
        pending.pop(conn.fileno(), None)
        conn.close()
        counters.closed += 1

    while not stop.requested:
        for key, events in sel.select(watch.timeout()):
            conn = key.fileobj
            if key.data is None:
                if events & EVENT_READ:
                    try:
                        data = conn.recv(RECV_BYTES)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        close(conn)
                        continue
                    if not data:
                        close(conn)
                        continue
                    try:
                        sent = conn.send(data)
                    except BlockingIOError:
                        sent = 0
                    except OSError:
                        close(conn)
                        continue
                    counters.bytes_echoed += sent
                    if sent < len(data):
                        pending[conn.fileno()] = data[sent:]
                        sel.modify(conn, EVENT_WRITE)
                else:
                    _flush(conn, pending, sel, counters, close)
            elif key.data == "intake":
                for conn in watch.take():
                    sel.register(conn, EVENT_READ)
            else:
                stop.drain()
    ctx.stopped()


def _flush(conn, pending, sel, counters, close) -> None:
    data = pending[conn.fileno()]
    try:
        sent = conn.send(data)
    except BlockingIOError:
        return
    except OSError:
        close(conn)
        return
    counters.bytes_echoed += sent
    if sent < len(data):
        pending[conn.fileno()] = data[sent:]
    else:
        del pending[conn.fileno()]
        sel.modify(conn, EVENT_READ)
