"""The handoff share mode's acceptor: accepts on the port and sends each connection's fd to a
worker process over a Unix socket with SCM_RIGHTS (`socket.send_fds`).

This is the seed article's unverified claim made real: a socket accepted by one process is
served by another. The acceptor holds no connection after handing it on (it closes its copy), so
its fd limit does not cap the port; each worker's does. Workers are picked round-robin among those
whose gauges show room; when none has room the acceptor refuses the client itself (EMFILE), at
once, so nobody hangs. A worker that has died is dropped from the rotation.
"""

from __future__ import annotations

import selectors
import socket

from servers.contract import IntakeWatch, ServeContext, StopSignal
from servers.gauges import SERVING, GaugeBoard


def run_acceptor(ctx: ServeContext, workers: dict[int, socket.socket], board: GaugeBoard) -> None:
    """`workers` maps each worker's gauge slot index to the acceptor's end of its Unix socket."""
    stop = StopSignal()
    intake = ctx.make_intake()
    sel = selectors.DefaultSelector()
    sel.register(stop, selectors.EVENT_READ)
    for sock in workers.values():
        sock.setblocking(False)
    rotation = list(workers)
    turn = 0
    counters = ctx.counters

    def has_room(index: int) -> bool:
        g = board.read(index)
        return g["state"] == SERVING and g["open"] < g["cap"]

    def hand_on(conn: socket.socket) -> None:
        nonlocal turn
        for _ in range(len(rotation)):
            index = rotation[turn % len(rotation)]
            turn += 1
            if not has_room(index):
                continue
            try:
                socket.send_fds(workers[index], [b"\x01"], [conn.fileno()])
                return
            except BlockingIOError:
                continue  # that worker is behind; try the next
            except OSError:
                rotation.remove(index)  # that worker is gone
                if not rotation:
                    break
        counters.refuse("EMFILE")
        ctx.log.note("EMFILE", hint="every worker is at its fd limit")

    def take(conn: socket.socket) -> None:
        hand_on(conn)
        conn.close()  # the worker holds its own copy now (or the client is refused)
        counters.closed += 1

    ctx.ready()
    IntakeWatch(ctx, sel, intake).serve(stop, take)
    ctx.stopped()
