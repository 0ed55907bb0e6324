"""The `threaded` backend: one thread per connection, socketserver style.

Every thread of a server process runs on one core (see `_pin_to_one_cpu`). The main thread waits in poll() on the intake and the stop signal (not in a blocking accept, so
SIGTERM and the fd limit are handled there); each connection gets a thread doing blocking
recv/sendall, which bounds per-connection buffering by itself: a client that does not read
blocks its thread in sendall, and nothing more is read from it. A thread that cannot start
(pid_max, threads-max, vm.max_map_count, memory) refuses that connection with a logged reason.

Threads are started with `_thread.start_new_thread`, not `threading.Thread`: `Thread.start()` waits
until the new thread says it has started, and a new thread that runs out of memory before saying
so (seen under RLIMIT_AS) left the accept loop waiting forever while clients queued unanswered.
A thread that dies of MemoryError before its first line runs is counted by `_count_stillborn`.
`--upper` sends the data back upper-cased, as the seed article's SocketServer demo does.
"""

from __future__ import annotations

import _thread
import os
import selectors
import socket
import sys
import threading

from servers.contract import RECV_BYTES, IntakeWatch, ServeContext, StopSignal

THREAD_STACK_BYTES = 256 * 1024  # the handler is shallow; a small stack leaves room for more threads


def serve(ctx: ServeContext) -> None:
    threading.stack_size(THREAD_STACK_BYTES)
    _pin_to_one_cpu(ctx.slot.get("index"))
    stop = StopSignal()
    intake = ctx.make_intake()
    sel = selectors.DefaultSelector()
    sel.register(stop, selectors.EVENT_READ)
    counters = ctx.counters
    lock = threading.Lock()
    _count_stillborn(ctx, lock)

    def start_thread(conn: socket.socket) -> None:
        conn.setblocking(True)
        try:
            _thread.start_new_thread(_echo, (conn, ctx, lock))
        except (RuntimeError, MemoryError):  # "can't start new thread", or no memory for its state
            conn.close()
            with lock:
                counters.closed += 1
            counters.refuse("threads")
            ctx.log.note("threads", hint="no thread could start (memory or RLIMIT_AS, "
                         "kernel.threads-max, kernel.pid_max, vm.max_map_count: see `harness limits`)")

    ctx.ready()
    IntakeWatch(ctx, sel, intake).serve(stop, start_thread)
    ctx.stopped()


def _pin_to_one_cpu(index: int) -> None:
    """Run every thread of this process on one core (process i on allowed core i mod n).

    The GIL lets one thread run at a time anyway; spread over cores, each GIL handoff also
    crosses cores. Measured here (`harness bench echo`, 100 connections): 41k req/s unpinned,
    120k pinned."""
    allowed = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {allowed[index % len(allowed)]})


def _count_stillborn(ctx: ServeContext, lock: threading.Lock) -> None:
    """A connection thread can die of MemoryError before `_echo`'s own handler is entered (its
    first frame needs memory too). Python then reports it through sys.unraisablehook and frees the
    thread's arguments, closing the connection: count that as the refusal it is, quietly."""
    previous = sys.unraisablehook

    def hook(unraisable) -> None:
        if unraisable.object is _echo and issubclass(unraisable.exc_type, MemoryError):
            with lock:
                ctx.counters.closed += 1
                _refuse_out_of_memory(ctx)
            return
        previous(unraisable)

    sys.unraisablehook = hook


def _refuse_out_of_memory(ctx: ServeContext) -> None:
    ctx.counters.refuse("ENOMEM")
    ctx.log.note("ENOMEM", hint="a connection's thread ran out of memory (memory or RLIMIT_AS)")


def _echo(conn: socket.socket, ctx: ServeContext, lock: threading.Lock) -> None:
    counters, upper = ctx.counters, ctx.config.upper
    try:
        while data := conn.recv(RECV_BYTES):
            conn.sendall(data.upper() if upper else data)
            with lock:
                counters.bytes_echoed += len(data)
    except OSError:
        pass
    except MemoryError:  # the thread started but cannot allocate (memory, RLIMIT_AS): refuse it
        with lock:        # as quietly as a failed start, not with a traceback per connection
            _refuse_out_of_memory(ctx)
    finally:
        conn.close()
        with lock:
            counters.closed += 1
