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
from harness.system.wire import IP_BIND_ADDRESS_NO_PORT, LINGER_RESET
from harness.core.words import errno_name


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
CONNECTING, ECHOING, VERIFIED = "connecting", "echoing", "verified"


class Holder:
    """Non-blocking connects through one epoll, at most `inflight` at once. Each connection goes
    CONNECTING --writable--> ECHOING (the request sent) --whole good reply--> VERIFIED, its reply
    judged by the run's protocol parser (`scenarios.protocols`, echo here), as the Locust users' are."""

    def __init__(self, host: str, port: int, sources: list[str], payload_size: int = 16,
                 inflight: int = 2000) -> None:
        self.dest = (host, port)
        self.sources = sources
        self.protocol = protocols.Echo(payload_size)
        self.payload = self.protocol.request()  # one payload for every connection: no urandom per connect
        self.inflight = inflight
        self.ep = select.epoll()
        self.socks: dict[int, socket.socket] = {}
        self.state: dict[int, str] = {}
        self.parsers: dict[int, protocols.Parser] = {}  # while a reply is owed
        self.verified = 0
        self.failed: dict[str, int] = {}

    def _count(self, err: int | str | None) -> None:
        name = errno_name(err, "None")
        self.failed[name] = self.failed.get(name, 0) + 1

    def _fail(self, fd: int, err: int | str) -> None:
        self._count(err)
        self.ep.unregister(fd)
        self.socks.pop(fd).close()
        self.state.pop(fd, None)
        self.parsers.pop(fd, None)

    def _open(self, i: int) -> None:
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError as exc:  # EMFILE: this client process is at its own fd limit
            self._count(exc.errno)
            return
        s.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        s.bind((self.sources[i % len(self.sources)], 0))
        err = s.connect_ex(self.dest)
        fd = s.fileno()
        self.socks[fd] = s
        self.state[fd] = CONNECTING
        self.ep.register(fd, select.EPOLLOUT)
        if err not in (0, errno.EINPROGRESS):
            self._fail(fd, err)

    def _request(self, fd: int, s: socket.socket) -> str | int | None:
        """Send the request and owe its reply; the failure, if the send failed."""
        parser = self.parsers[fd] = self.protocol.parser()
        parser.sent(self.payload)
        self.state[fd] = ECHOING
        try:
            s.send(self.payload)
        except OSError as exc:
            return exc.errno
        return None

    def _on_event(self, fd: int, ev: int) -> None:
        s = self.socks[fd]
        if self.state[fd] == CONNECTING:
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) or self._request(fd, s)
            if err:
                return self._fail(fd, err)
            self.ep.modify(fd, select.EPOLLIN)
            return
        try:
            data = s.recv(4096)
        except BlockingIOError:
            return
        except OSError as exc:
            return self._fail(fd, exc.errno)
        if not data:
            return self._fail(fd, "EOF")
        done, wrong = self.parsers[fd].feed(data)
        if wrong:
            return self._fail(fd, wrong)
        if done:
            del self.parsers[fd]
            self.state[fd] = VERIFIED
            self.verified += 1
            self.ep.unregister(fd)

    def open_all(self, count: int, deadline: float, progress=None) -> None:
        opened = 0
        pending = 0
        next_report = time.monotonic() + 1
        while (opened < count or pending) and time.monotonic() < deadline:
            while opened < count and pending < self.inflight:
                self._open(opened)
                opened += 1
                pending = len(self.socks) - self.verified
            for fd, ev in self.ep.poll(0.1):
                self._on_event(fd, ev)
            pending = len(self.socks) - self.verified
            if progress and time.monotonic() >= next_report:
                progress(self)
                next_report += 1

    def reverify(self, deadline: float) -> int:
        """Echo once more on every held connection; returns how many came back intact."""
        self.verified = 0
        for fd, s in self.socks.items():
            self.ep.register(fd, select.EPOLLIN)
            err = self._request(fd, s)
            if err:
                self._count(err)
        while self.verified < len(self.socks) and time.monotonic() < deadline:
            for fd, ev in self.ep.poll(0.1):
                self._on_event(fd, ev)
        return self.verified

    def close_all(self) -> None:
        for s in self.socks.values():
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            s.close()
        self.socks.clear()


def hold_main(args: argparse.Namespace) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    signal.signal(signal.SIGTERM, lambda *_: None)  # wakes the wait below; we then verify and exit
    holder = Holder(args.host, args.port, args.sources.split(","))
    start = time.monotonic()

    def progress(h: Holder) -> None:
        emit(event="progress", open=len(h.socks), verified=h.verified, failed=h.failed,
             elapsed_s=round(time.monotonic() - start, 2))

    holder.open_all(args.count, start + args.timeout, progress)
    ramp_s = time.monotonic() - start
    emit(event="held", open=len(holder.socks), verified=holder.verified, failed=holder.failed,
         ramp_s=round(ramp_s, 3))
    select.select([sys.stdin], [], [], args.hold)  # hold until told (a line on stdin), or SIGTERM
    verified_at_connect = holder.verified
    reverified = holder.reverify(time.monotonic() + 30)
    emit(event="result", held=len(holder.socks), verified_at_connect=verified_at_connect,
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
