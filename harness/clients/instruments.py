"""Measuring clients for the server benchmarks, run as their own processes by `harness bench`.

They are instruments, like wrk or vmbench's echo client, not a load engine: Locust (`scenarios/`)
is the load engine of the harness's runs. Each prints JSON lines on stdout (progress, then one
result) so the orchestrator can read them without importing anything from here.

- `echo`: ping-pong throughput on uvloop: C connections, each sending a fixed-size message and
  waiting for its full echo before the next, for D seconds.
- `hold`: opens N connections from given source addresses (IP_BIND_ADDRESS_NO_PORT, so the port
  is picked per destination at connect time), echo-verifies each once, holds them until told to
  stop (SIGTERM or a line on stdin), verifies every one again, and closes them with SO_LINGER 0
  so no TIME_WAIT is left behind.
- `paced`: C connections echoing on a fixed schedule (open loop: echoes are pipelined when the
  server is late) at R echoes a second each; every echo's latency from its intended send time
  goes into an HdrHistogram. Latency under a steady load, not at saturation.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import resource
import select
import signal
import socket
import sys
import time

from harness.core import protocols
from harness.core.connection import CONNECTING, Connection, bind_address
from harness.core.words import errno_name
from harness.system.wire import client_socket, close_with_reset

REPLY_TIMEOUT_S = 60.0  # the hold client waits for the whole fill (its --timeout), not per connection


def emit(**fields) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


# -- echo throughput -------------------------------------------------------------------------
def echo_throughput(host: str, port: int, connections: int, size: int, seconds: float) -> dict:
    import asyncio

    import uvloop

    payload = os.urandom(size)
    counts = [0]
    mismatches = [0]

    class PingPong(asyncio.Protocol):
        def connection_made(self, transport):
            transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.transport, self.buf = transport, bytearray()
            transport.write(payload)

        def data_received(self, data):
            self.buf += data
            if len(self.buf) >= size:
                if self.buf[:size] != payload:
                    mismatches[0] += 1
                del self.buf[:size]
                counts[0] += 1
                if not stopping:
                    self.transport.write(payload)

    stopping = False

    async def main():
        nonlocal stopping
        loop = asyncio.get_running_loop()
        transports = [(await loop.create_connection(PingPong, host, port))[0] for _ in range(connections)]
        await asyncio.sleep(0.5)  # warm-up
        emit(event="measuring")  # the caller reads the server's CPU time from here to the result
        start_count, start, cpu0 = counts[0], time.perf_counter(), os.times()
        await asyncio.sleep(seconds)
        done, elapsed, cpu1 = counts[0] - start_count, time.perf_counter() - start, os.times()
        stopping = True
        for t in transports:
            t.close()
        return done, elapsed, (cpu1.user - cpu0.user, cpu1.system - cpu0.system)

    done, elapsed, (user, system) = uvloop.run(main())
    return {"requests": done, "seconds": elapsed, "req_per_s": done / elapsed,
            "mismatched": mismatches[0], "connections": connections, "size": size,
            "client_user_s": user, "client_system_s": system}


# -- paced echo latency (open loop) ----------------------------------------------------------
def paced_latency(host: str, port: int, connections: int, per_second: float, seconds: float,
                  size: int = 64) -> dict:
    """Echo k of connection i is due at start + (k + i / C) / R: one send every 1/(C·R) s overall,
    round-robin. Its latency is answer time minus due time, so a slow server cannot slow the
    schedule down and hide its own delay (coordinated omission)."""
    from collections import deque

    from hdrh.histogram import HdrHistogram

    hist = HdrHistogram(1, 60_000_000, 3)
    payload = os.urandom(size)
    socks = []
    for _ in range(connections):
        s = socket.create_connection((host, port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        socks.append(s)
    ep = select.epoll()
    index = {s.fileno(): i for i, s in enumerate(socks)}
    for s in socks:
        ep.register(s.fileno(), select.EPOLLIN)
    due: list[deque] = [deque() for _ in socks]  # per connection: due times of unanswered echoes
    buffered = [b""] * connections
    gap = 1.0 / (connections * per_second)
    total = round(seconds * connections * per_second)
    emit(event="started", connections=connections)  # connected; the schedule begins now
    start = time.perf_counter() + 0.1
    end = start + seconds
    sent = answered = mismatched = 0
    while True:
        now = time.perf_counter()
        while sent < total and start + sent * gap <= now:
            i = sent % connections
            due[i].append(start + sent * gap)
            socks[i].send(payload)  # 64 B into an idle socket buffer: never short
            sent += 1
        if now >= end and (answered == sent or now >= end + 5):
            break
        if sent < total:
            wait = start + sent * gap - now
        else:  # all sent: to the end of the window, or up to 5 s more for answers still due
            wait = (end if answered == sent else end + 5) - now
        wait = max(0.0, wait)
        for fd, _ in ep.poll(wait):
            i = index[fd]
            data = socks[i].recv(65536)
            if not data:
                raise SystemExit("paced: the server closed a connection")
            buffered[i] += data
            done = time.perf_counter()
            while len(buffered[i]) >= size:
                mismatched += buffered[i][:size] != payload
                buffered[i] = buffered[i][size:]
                hist.record_value(max(1, int((done - due[i].popleft()) * 1e6)))
                answered += 1
    for s in socks:
        s.close()
    return {"connections": connections, "per_second": per_second, "seconds": seconds, "sent": sent,
            "answered": answered, "mismatched": mismatched,
            **{f"p{q:g}_ms": hist.get_value_at_percentile(q) / 1000 for q in (50, 90, 99)},
            "max_ms": hist.get_max_value() / 1000, "histogram": hist.encode().decode()}


# -- holding N connections -------------------------------------------------------------------
class HoldLink(Connection):
    """One held connection, driven by `Holder` through the same state machine as the Locust users."""

    __slots__ = ("holder", "sock")

    def __init__(self, holder: "Holder", sock: socket.socket) -> None:
        super().__init__(holder.protocol, None)
        self.holder, self.sock = holder, sock

    def on_reply(self, size: int, sent_at: float, intended: float | None, now: float) -> None:
        self.holder.answered += 1

    def on_verified(self) -> None:
        self.holder.verified += 1

    def on_failure(self, request: str, failure: str, started: float, evidence: bytes, verified: bool) -> None:
        self.holder.drop(self, failure)


class Holder:
    """Non-blocking connects through one epoll, at most `inflight` at once, each one verified by a
    request of the run's protocol (echo here) and its reply, as the Locust users' are."""

    def __init__(self, host: str, port: int, sources: list[str], payload_size: int = 16,
                 inflight: int = 2000) -> None:
        self.dest = (host, port)
        self.sources = sources
        self.protocol = protocols.Echo(payload_size)
        self.inflight = inflight
        self.ep = select.epoll()
        self.links: dict[int, HoldLink] = {}
        self.verified = 0
        self.answered = 0
        self.failed: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.failed[name] = self.failed.get(name, 0) + 1

    def drop(self, link: HoldLink, failure: str) -> None:
        self._count(failure)
        fd = link.sock.fileno()
        self.ep.unregister(fd)
        del self.links[fd]
        link.sock.close()

    def _open(self, i: int) -> None:
        try:
            s = client_socket(socket.socket, self.dest[0], bind_address(self.sources[i % len(self.sources)]),
                              blocking=False)
        except OSError as exc:  # EMFILE: this client process is at its own fd limit
            return self._count(errno_name(exc.errno))
        link = self.links[s.fileno()] = HoldLink(self, s)
        link.begin(time.perf_counter(), REPLY_TIMEOUT_S)
        self.ep.register(s.fileno(), select.EPOLLOUT)
        err = s.connect_ex(self.dest)
        if err not in (0, errno.EINPROGRESS):
            link.lost(errno_name(err))

    def _send(self, link: HoldLink, data: bytes) -> None:
        try:
            link.sock.send(data)  # a small request into an idle socket buffer: never short
        except OSError as exc:
            link.lost(errno_name(exc.errno))

    def _on_event(self, fd: int, ev: int) -> None:
        link = self.links[fd]
        now = time.perf_counter()
        if link.state == CONNECTING:
            err = link.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                return link.lost(errno_name(err))
            self.ep.modify(fd, select.EPOLLIN)
            return self._send(link, link.connected(now, REPLY_TIMEOUT_S))
        try:
            data = link.sock.recv(4096)
        except BlockingIOError:
            return
        except OSError as exc:
            return link.lost(errno_name(exc.errno))
        if not data:
            return link.lost()
        link.received(data, now, REPLY_TIMEOUT_S)
        if link.verified and not link.marks:
            self.ep.modify(fd, 0)  # held: nothing to watch until it is asked again

    def pending(self) -> int:
        return sum(1 for link in self.links.values() if not link.verified)

    def open_all(self, count: int, deadline: float, progress=None) -> None:
        opened = pending = 0
        next_report = time.monotonic() + 1
        while (opened < count or pending) and time.monotonic() < deadline:
            while opened < count and pending < self.inflight:
                self._open(opened)
                opened += 1
                pending += 1
            for fd, ev in self.ep.poll(0.1):
                self._on_event(fd, ev)
            pending = len(self.links) - self.verified
            if progress and time.monotonic() >= next_report:
                progress(self)
                next_report += 1

    def reverify(self, deadline: float) -> int:
        """One more request on every held connection; returns how many came back intact."""
        self.answered = 0
        for fd, link in list(self.links.items()):
            self.ep.modify(fd, select.EPOLLIN)
            self._send(link, link.request(time.perf_counter(), None, REPLY_TIMEOUT_S))
        while self.answered < len(self.links) and time.monotonic() < deadline:
            for fd, ev in self.ep.poll(0.1):
                self._on_event(fd, ev)
        return self.answered

    def close_all(self) -> None:
        for link in self.links.values():
            close_with_reset(link.sock)
        self.links.clear()


def hold_main(args: argparse.Namespace) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    signal.signal(signal.SIGTERM, lambda *_: None)  # wakes the wait below; we then verify and exit
    holder = Holder(args.host, args.port, args.sources.split(","))
    start = time.monotonic()

    def progress(h: Holder) -> None:
        emit(event="progress", open=len(h.links), verified=h.verified, failed=h.failed,
             elapsed_s=round(time.monotonic() - start, 2))

    holder.open_all(args.count, start + args.timeout, progress)
    ramp_s = time.monotonic() - start
    emit(event="held", open=len(holder.links), verified=holder.verified, failed=holder.failed,
         ramp_s=round(ramp_s, 3))
    select.select([sys.stdin], [], [], args.hold)  # hold until told (a line on stdin), or SIGTERM
    verified_at_connect = holder.verified
    reverified = holder.reverify(time.monotonic() + 30)
    emit(event="result", held=len(holder.links), verified_at_connect=verified_at_connect,
         reverified=reverified, failed=holder.failed, ramp_s=round(ramp_s, 3))
    holder.close_all()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m harness.clients.instruments")
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("echo")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--connections", type=int, default=100)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--seconds", type=float, default=5.0)
    p = sub.add_parser("paced")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--connections", type=int, default=100)
    p.add_argument("--per-second", type=float, default=50.0, help="echoes a second per connection")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--size", type=int, default=64)
    p = sub.add_parser("hold")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--sources", default="127.0.0.1", help="comma-separated source addresses")
    p.add_argument("--timeout", type=float, default=120.0, help="give up opening after this many s")
    p.add_argument("--hold", type=float, default=3600.0, help="hold at most this many s")
    args = parser.parse_args(argv)
    if args.mode == "echo":
        emit(event="result", **echo_throughput(args.host, args.port, args.connections, args.size, args.seconds))
    elif args.mode == "paced":
        emit(event="result", **paced_latency(args.host, args.port, args.connections, args.per_second,
                                             args.seconds, args.size))
    else:
        hold_main(args)


if __name__ == "__main__":
    main()
