"""The `threaded` backend: one thread per connection, socketserver style.

Every thread of a server process runs on one core (see `_pin_to_one_cpu`). The main thread waits
in poll() on the intake and the stop signal (not in a blocking accept, so SIGTERM and the fd limit
are handled there); each connection gets a thread doing blocking recv/sendall, which bounds
per-connection buffering by itself: a client that does not read blocks its thread in sendall, and
nothing more is read from it. A thread that cannot start (pid_max, threads-max, vm.max_map_count,
memory) refuses that connection with a logged reason.

A connection's 64 KiB receive buffer is reserved for it before its thread starts (`Buffers`) and
kept for the connection's life (`recv_into`): out of memory, a new client is refused, and a thread
that has answered its client needs no new buffer to go on, so a later thread cannot take the memory
a held connection reads into (`recv(n)` mallocs n bytes at every read). Its small objects per read
(a memoryview, an int) come from the interpreter's pools; `--upper` copies what it sends back.

Threads are started with `_thread.start_new_thread`, not `threading.Thread`: `Thread.start()` waits
until the new thread says it has started, and a new thread that runs out of memory before saying
so (seen under RLIMIT_AS) left the accept loop waiting forever while clients queued unanswered.
A new thread's connection is not passed to it: the main thread files it in a `Handover` under a
key of the thread's own, before the thread starts, and the thread takes it as its first act. A
thread that dies of MemoryError before that (its first frame needs memory too) leaves it there;
when the interpreter drops that thread's callable, a weak reference to it posts a death notice
(no Python frame needed), and the main thread refuses the connection within `WAITING_POLL_S`. Where even
that callable is kept, the tick's sweep refuses it after `STILLBORN_S`. (A connection passed as
the thread's argument would stay open for good when the thread died before its first line.)
The interpreter's own reports of those deaths are kept off stderr (`_interpreter_reports_quiet`).
`--upper` sends the data back upper-cased, as the seed article's SocketServer demo does.
"""

from __future__ import annotations

import _thread
import itertools
import mmap
import os
import queue
import selectors
import socket
import sys
import threading
import time
import traceback
import weakref
from contextlib import contextmanager

from servers.contract import RECV_BYTES, IntakeWatch, ServeContext, StopSignal

THREAD_STACK_BYTES = 256 * 1024  # the handler is shallow; a small stack leaves room for more threads
STILLBORN_S = 10.0  # a filed connection not taken this long: its thread died (a live one runs in ms)
# While a filed connection is not taken yet, the main thread looks for death notices this often:
# a client whose thread died is answered within this, not at the next tick.
WAITING_POLL_S = 0.01
# Receive buffers per anonymous mapping: one mapping (one VMA) serves this many threads, so a thread
# still costs about two VMAs (its stack and guard page) against vm.max_map_count.
BUFFERS_PER_MAPPING = 64


def serve(ctx: ServeContext) -> None:
    threading.stack_size(THREAD_STACK_BYTES)
    _pin_to_one_cpu(ctx.slot.get("index"))
    stop = StopSignal()
    intake = ctx.make_intake()
    sel = selectors.DefaultSelector()
    sel.register(stop, selectors.EVENT_READ)
    handover = Handover(ctx)

    def start_thread(conn: socket.socket) -> None:
        conn.setblocking(True)
        refused = handover.start(conn)
        if refused == "ENOMEM":
            handover.refuse(conn, "ENOMEM")
            ctx.log.note("ENOMEM", hint="no receive buffer could be mapped (memory or RLIMIT_AS, "
                         "vm.max_map_count: see `harness limits`)")
        elif refused:
            handover.refuse(conn, "threads")
            ctx.log.note("threads", hint="no thread could start (memory or RLIMIT_AS, "
                         "kernel.threads-max, kernel.pid_max, vm.max_map_count: see `harness limits`)")

    ctx.ready()
    with _interpreter_reports_quiet():
        IntakeWatch(ctx, sel, intake, housekeeping=handover.tick).serve(stop, start_thread)
    ctx.stopped()


class _Start:
    """What a connection's thread runs: its key in the handover. Each is dropped by the interpreter
    when its thread ends, which a weak reference to it turns into a death notice."""

    __slots__ = ("handover", "key", "__weakref__")

    def __init__(self, handover: "Handover", key: int) -> None:
        self.handover, self.key = handover, key

    def __call__(self) -> None:
        _echo(self.handover, self.key)


class _Notice(weakref.ref):
    """Posted to the handover's notices when a thread's `_Start` is dropped."""

    __slots__ = ("key",)

    def __init__(self, start: _Start, callback) -> None:
        super().__init__(start, callback)
        self.key = start.key


class Buffers:
    """Receive buffers of RECV_BYTES, cut from private anonymous mappings of BUFFERS_PER_MAPPING each.

    A mapping's pages cost memory once written and stay with the buffer: the buffer given back last
    is taken first, so new connections read into pages already paid for. `take` is the main
    thread's; a connection's thread gives its buffer back as the connection ends (`list.append`
    is C code, atomic under the GIL, and needs no frame)."""

    def __init__(self) -> None:
        self.free: list[memoryview] = []
        self.mappings: list[mmap.mmap] = []  # kept: a buffer is a view into one of them

    def take(self) -> memoryview:
        """A free buffer, mapping more when none is free; MemoryError if none can be mapped."""
        try:
            return self.free.pop()
        except IndexError:
            pass
        try:
            mapping = mmap.mmap(-1, RECV_BYTES * BUFFERS_PER_MAPPING, flags=mmap.MAP_PRIVATE)
        except OSError as e:  # ENOMEM, the only failure of a private anonymous mapping (mmap(2)):
            raise MemoryError from e  # memory, RLIMIT_AS or vm.max_map_count
        self.mappings.append(mapping)
        whole = memoryview(mapping)
        self.free.extend(whole[at:at + RECV_BYTES] for at in range(len(whole) - RECV_BYTES, 0, -RECV_BYTES))
        return whole[:RECV_BYTES]

    def give(self, buffer: memoryview | None) -> None:
        if buffer is not None:
            self.free.append(buffer)


class Handover:
    """The connections filed for new threads that have not taken them yet.

    Whoever pops a connection from `waiting` (its thread, or the main thread on a death notice or
    in the sweep) owns it: a dict's pop is atomic under the GIL, so filing and taking take no lock.
    `lock` guards the counters, which every connection thread updates. Only the main thread writes
    the log (`RateLimitedLog` is not thread-safe): a connection thread that refuses its own
    connection posts a notice for it."""

    def __init__(self, ctx: ServeContext) -> None:
        self.ctx = ctx
        self.lock = threading.Lock()
        self.waiting: dict[int, tuple[socket.socket, float, _Notice | None, memoryview | None]] = {}
        self.notices: queue.SimpleQueue = queue.SimpleQueue()  # put() is C code: safe in a dying thread
        self.buffers = Buffers()
        self._keys = itertools.count()

    def start(self, conn: socket.socket) -> str:
        """File the connection with its buffer and start its thread. Returns "" when a thread took
        it; else why the connection is still the caller's: "ENOMEM" (no buffer) or "threads" (no
        thread started, or none took it)."""
        try:
            buffer = self.buffers.take()
        except MemoryError:
            return "ENOMEM"
        try:
            key = next(self._keys)
            start = _Start(self, key)
            self.file(key, conn, time.monotonic(), _Notice(start, self.notices.put), buffer)
        except MemoryError:
            self.buffers.give(buffer)
            return "threads"
        try:
            _thread.start_new_thread(start, ())
        except (RuntimeError, MemoryError):  # "can't start new thread", no memory for its state
            # The thread may have started (its ident, made after, found no memory): whoever pops
            # the connection first owns it.
            entry = self.waiting.pop(key, None)
            if entry is None:
                return ""
            self.buffers.give(buffer)
            return "threads"
        return ""

    def file(self, key: int, conn: socket.socket, now: float, notice: "_Notice | None" = None,
             buffer: memoryview | None = None) -> None:
        self.waiting[key] = (conn, now, notice, buffer)

    def count(self, closed: int = 0, refused: str = "") -> None:
        self.lock.acquire()  # not `with`: its __exit__ allocates, and the lock must never stay held
        try:
            self.ctx.counters.closed += closed
            if refused:
                self.ctx.counters.refuse(refused)
        finally:
            self.lock.release()

    def refuse(self, conn: socket.socket, reason: str) -> None:
        self.count(closed=1, refused=reason)  # counted first: closing cannot then lose the count
        conn.close()

    def tick(self, now: float | None = None) -> float | None:
        """The main thread's, on every pass of its loop: refuse the connections of the threads that
        died before taking them (their death notices), and of those not taken in STILLBORN_S (a
        thread whose callable the interpreter kept); log the refusals connection threads posted.
        Returns how soon to look again: WAITING_POLL_S while a filed connection is not taken."""
        try:
            now = time.monotonic() if now is None else now
            refused = 0
            while True:
                try:
                    notice = self.notices.get_nowait()
                except queue.Empty:
                    break
                refused += notice is None or self._refuse_waiting(notice.key)
            if self.waiting:
                for key, (_, filed, _, _) in list(self.waiting.items()):
                    if now - filed > STILLBORN_S:
                        refused += self._refuse_waiting(key)
            if refused:
                _note_out_of_memory(self.ctx, refused)
        except (MemoryError, RuntimeError):
            pass  # the next pass tries again: the main loop must not die of it
        return WAITING_POLL_S if self.waiting else None

    def _refuse_waiting(self, key: int) -> bool:
        entry = self.waiting.pop(key, None)
        if entry:
            self.buffers.give(entry[3])
            self.refuse(entry[0], "ENOMEM")
        return entry is not None


def _pin_to_one_cpu(index: int) -> None:
    """Run every thread of this process on one core (process i on allowed core i mod n).

    The GIL lets one thread run at a time anyway; spread over cores, each GIL handoff also
    crosses cores, and the echo rate falls to about a third (docs/benchmarks.md)."""
    allowed = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {allowed[index % len(allowed)]})


@contextmanager
def _interpreter_reports_quiet():
    """While connections are served, what the interpreter reports by itself cannot flood stderr.

    A thread that dies of MemoryError before its first line (its first frame needs memory too) is
    reported through sys.unraisablehook; a Python hook needs a frame of its own to run, so out of
    memory the hook fails too, and the interpreter then prints that failure, once per thread. Every
    path of that report ends in C code that writes to `sys.stderr` and says nothing when it is None
    (CPython's `write_unraisable_exc`), so sys.stderr is None here: a stillborn thread is silent by
    construction, and counted and logged by the main thread from its death notice. The hook still
    writes any other unraisable report (a bug) to fd 2 when it can run; the server's own log
    (`RateLimitedLog`) writes to fd 2 as well."""
    saved_stderr, saved_hook = sys.stderr, sys.unraisablehook

    def hook(unraisable) -> None:
        if isinstance(unraisable.object, _Start) and issubclass(unraisable.exc_type, MemoryError):
            return
        text = "".join(traceback.format_exception(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback))
        os.write(2, f"{unraisable.err_msg or 'Exception ignored in'}: {unraisable.object!r}\n{text}".encode())

    sys.stdout.flush()
    saved_stderr.flush()
    sys.stderr, sys.unraisablehook = None, hook
    try:
        yield
    finally:
        sys.stderr, sys.unraisablehook = saved_stderr, saved_hook


def _note_out_of_memory(ctx: ServeContext, count: int) -> None:
    ctx.log.note("ENOMEM", count, hint="a connection's thread ran out of memory (memory or RLIMIT_AS)")


def _echo(handover: Handover, key: int) -> None:
    entry = handover.waiting.pop(key, None)  # the thread's first act: the connection is its own now
    if entry is None:
        return  # refused by the main thread before this thread ran
    conn, buffer = entry[0], entry[3]
    try:
        if handover.ctx.tls is not None:  # the handshake in this thread, blocking like its echo
            conn = handover.ctx.tls.wrap_socket(conn, server_side=True)
        counters, upper, lock = handover.ctx.counters, handover.ctx.config.upper, handover.lock
        while n := conn.recv_into(buffer):
            conn.sendall(buffer[:n].tobytes().upper() if upper else buffer[:n])
            lock.acquire()
            try:
                counters.bytes_echoed += n
            finally:
                lock.release()
    except OSError:
        pass
    except MemoryError:  # the thread started but cannot allocate (memory, RLIMIT_AS): refuse it
        handover.count(refused="ENOMEM")  # as quietly as a failed start, not with a traceback
        handover.notices.put(None)  # the main thread logs it
    finally:
        try:
            if buffer is not None:
                handover.buffers.free.append(buffer)  # first: C code, and unused from here on
        finally:
            handover.count(closed=1)
            conn.close()
