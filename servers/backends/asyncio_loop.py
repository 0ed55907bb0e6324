"""The `asyncio` backend (stdlib event loop); `uvloop_loop` runs the same code on uvloop.

Connections are adopted from our own intake (`loop.add_reader` + `connect_accepted_socket`)
rather than `loop.create_server`, because the stock accept loop retries EMFILE `backlog` times per
wake-up and logs a traceback each time (~19k a second at 99% CPU: docs/servers.md). Echo uses a Protocol
with transport flow control: when a client stops reading and unsent data passes MAX_PENDING,
`pause_writing` pauses reading from it until its output drains. With TLS, asyncio's own SSL
protocol (`asyncio/sslproto.py`) runs under the echo, and keeps a 256 KiB read buffer for every
connection: the cost docs/benchmarks.md measures.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from typing import Callable

from servers.contract import MAX_PENDING, TICK_S, ServeContext
from servers.gauges import Counters


class EchoProtocol(asyncio.Protocol):
    """One per connection, so it holds only its transport; the counters are per process."""

    __slots__ = ("transport",)
    counters: Counters  # set once per server process, in serve()

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=MAX_PENDING)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)
        self.counters.bytes_echoed += len(data)

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.counters.closed += 1
        self.transport = None


def serve(ctx: ServeContext, loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop) -> None:
    loop = loop_factory()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(_serve(ctx, loop))
    finally:
        loop.close()
    ctx.stopped()


async def _serve(ctx: ServeContext, loop: asyncio.AbstractEventLoop) -> None:
    stopped = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    intake = ctx.make_intake()
    counters = EchoProtocol.counters = ctx.counters

    def adopt(conn) -> None:
        protocol = EchoProtocol()
        task = loop.create_task(loop.connect_accepted_socket(lambda: protocol, conn, ssl=ctx.tls))
        task.add_done_callback(_adopted(conn, counters))

    def on_readable() -> None:
        new, pause = intake.take()
        for conn in new:
            adopt(conn)
        if pause:
            loop.remove_reader(intake.fileno())
            loop.call_later(pause, loop.add_reader, intake.fileno(), on_readable)

    def tick() -> None:
        ctx.tick()
        loop.call_later(TICK_S, tick)

    await _warm_up(loop)
    loop.add_reader(intake.fileno(), on_readable)
    ctx.ready()
    loop.call_later(TICK_S, tick)
    await stopped.wait()
    loop.remove_reader(intake.fileno())


async def _warm_up(loop: asyncio.AbstractEventLoop) -> None:
    """Adopt one throwaway loopback connection, so fds the loop opens lazily on its first
    connection (uvloop opens one) are held before `ready()` counts the fds and sets the cap."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        with socket.create_connection(listener.getsockname()):
            conn, _ = listener.accept()
            conn.setblocking(False)
            transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, conn)
            transport.close()
            await asyncio.sleep(0)


def _adopted(conn, counters: Counters):
    def done(task: asyncio.Task) -> None:
        if task.cancelled() or task.exception() is not None:  # e.g. reset before it was adopted
            conn.close()
            counters.closed += 1
    return done
