"""The backend contract, checked on every registered backend in every share mode, on real sockets.

One server group per (backend, share mode) with a soft fd limit of 256 runs through the tests of
`TestContract` in order: echo integrity, 200 concurrent clients, behaviour at the fd limit, clean
stop. A backend added to the registry is tested here the moment it is registered.
"""

from __future__ import annotations

import math
import os
import resource
import socket
import threading
import time

import pytest

from harness.clients.probe import fill
from harness.core.backends import BACKENDS, SHARE_MODES
from tests.helpers import (
    ServerProcess,
    assert_gone,
    connect,
    echo,
    recv_exactly,
    served_or_answered,
)

FD_LIMIT = 256
# Two processes in every share mode: each process's cap is checked exactly, and together they must
# hold more than one fd limit. (One process alone is covered by test_run, test_cli and the select test.)
COMBINATIONS = [(b, s, 2) for b in BACKENDS for s in SHARE_MODES]


@pytest.fixture(scope="class", params=COMBINATIONS, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
def group(request, tmp_path_factory):
    backend, share, processes = request.param
    server = ServerProcess(tmp_path_factory.mktemp("srv"), backend, processes=processes, share=share,
                           fd_limit=FD_LIMIT)
    server.backend, server.share, server.processes = backend, share, processes
    yield server
    server.stop()


def _echo_concurrently(sock: socket.socket, payload: bytes) -> bytes:
    """Send and receive at once: a big payload would otherwise fill both ends' buffers."""
    sender = threading.Thread(target=sock.sendall, args=(payload,))
    sender.start()
    got = recv_exactly(sock, len(payload))
    sender.join()
    return got


class TestContract:
    def test_echo_integrity(self, group):
        sizes = [1, 7, 1000, 65_536 + 1, 1 << 20]
        conns = [connect(group.port, timeout=10) for _ in sizes]
        try:
            for sock, size in zip(conns, sizes):
                payload = os.urandom(size)
                assert _echo_concurrently(sock, payload) == payload, f"{size}-byte echo differs"
            # Interleaved small writes on one connection come back in order.
            parts = [os.urandom(n) for n in (3, 1, 500, 2, 40_000)]
            for part in parts:
                conns[0].sendall(part)
            assert recv_exactly(conns[0], sum(map(len, parts))) == b"".join(parts)
        finally:
            for sock in conns:
                sock.close()

    def test_200_concurrent_clients(self, group):
        conns = [connect(group.port) for _ in range(200)]
        try:
            payloads = [os.urandom(64 + i) for i in range(200)]
            for sock, payload in zip(conns, payloads):
                sock.sendall(payload)
            for sock, payload in zip(conns, payloads):
                assert recv_exactly(sock, len(payload)) == payload
            rows = group.wait_gauges(lambda r: sum(g["open"] for g in r) == 200)
            assert sum(g["open"] for g in rows) == 200
        finally:
            for sock in conns:
                sock.close()
        rows = group.wait_gauges(lambda r: sum(g["open"] for g in r) == 0)
        assert sum(g["open"] for g in rows) == 0, "closed clients still counted as open"

    def test_at_fd_limit(self, group):
        rows = group.servers()
        held_fds = BACKENDS[group.backend].held_fds
        assert all(g["cap"] == FD_LIMIT - held_fds for g in rows), [g["cap"] for g in rows]
        cap = sum(g["cap"] for g in rows)
        extra = 30
        result = fill("127.0.0.1", group.port, cap + extra)
        try:
            assert result.unanswered == 0, "refused clients were left hanging"
            assert result.slowest_answer_s < 1.0
            rows = group.wait_gauges(lambda r: sum(g["open"] for g in r) == len(result.held)
                                     and sum(g["refused_EMFILE"] for g in group.gauges()) >= result.refused)
            assert sum(g["open"] for g in rows) == len(result.held)
            if group.share == "reuseport":
                # The kernel hashes each client to one process: a full one refuses, and only then.
                full = [g for g in rows if g["refused_EMFILE"]]
                assert full and all(g["open"] == g["cap"] for g in full)
            else:
                assert len(result.held) == cap and result.refused == extra
            if group.processes > 1:
                assert len(result.held) > FD_LIMIT, "several processes should hold more than one limit"
            all_rows = group.gauges()
            assert sum(g["refused_EMFILE"] for g in all_rows) >= result.refused

            # Existing connections still echo while the server sits at its cap.
            for sock in result.held[::25]:
                sock.settimeout(2)
                assert echo(sock, b"still here") == b"still here"

            # No spinning and no log flood while new clients keep arriving at the cap.
            log_before = len(group.stderr_text().splitlines())
            cpu_before, start, late = group.cpu_seconds(), time.monotonic(), 0
            while time.monotonic() - start < 1.0:
                sock = connect(group.port)
                if not served_or_answered(sock, 1.0):
                    late += 1
                sock.close()
                time.sleep(0.01)
            elapsed = time.monotonic() - start
            cpu_share = (group.cpu_seconds() - cpu_before) / elapsed
            assert late == 0, f"{late} refused clients not answered within 1 s"
            assert cpu_share < 0.10, f"server used {cpu_share:.0%} of a core at its fd limit"
            new_lines = len(group.stderr_text().splitlines()) - log_before
            assert new_lines <= (elapsed + 2) * len(group.gauges()), f"{new_lines} log lines in {elapsed:.1f} s"
        finally:
            result.close()

    def test_clean_stop(self, group):
        pids = group.pids()
        assert group.stop() == 0
        assert_gone(pids, what="a server process outlived its supervisor")
        with socket.socket() as probe:  # the port is free again
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", group.port))


def test_select_stops_at_fd_setsize(start_server):
    server = start_server("selectors", "--selector", "select", fd_limit=1500)
    held_fds = server.servers()[0]["base_fds"]  # select() needs no epoll fd: one fewer than epoll
    assert held_fds == BACKENDS["selectors"].held_fds - 1
    assert server.servers()[0]["cap"] == 1024 - held_fds
    result = fill("127.0.0.1", server.port, 1100)
    try:
        assert len(result.held) == 1024 - held_fds
        assert result.unanswered == 0
        rows = server.wait_gauges(lambda r: r[0]["refused_FD_SETSIZE"] == result.refused)
        assert rows[0]["refused_FD_SETSIZE"] == result.refused == 1100 - len(result.held)
        assert "FD_SETSIZE" in server.stderr_text() and "--selector epoll" in server.stderr_text()
    finally:
        result.close()


def test_poll_goes_past_fd_setsize(start_server):
    server = start_server("selectors", "--selector", "poll", fd_limit=1200)
    result = fill("127.0.0.1", server.port, 1150)
    try:
        assert len(result.held) == 1150 and result.refused == 0
    finally:
        result.close()


STALL_S = 0.5


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_client_that_never_reads_cannot_grow_server_memory(start_server, backend):
    server = start_server(backend)
    pid = server.gauges()[0]["pid"]
    rss_before = _rss(pid)
    sock = connect(server.port)
    sock.setblocking(False)
    chunk, sent, stream = os.urandom(1 << 16), 0, []
    deadline, stalled_since = time.monotonic() + 3, None
    # until the server has stopped reading from us for STALL_S (the kernel buffers are full), or
    # at most 3 s and 64 MiB
    while time.monotonic() < deadline and sent < 64 << 20:
        try:
            n = sock.send(chunk)
        except BlockingIOError:
            stalled_since = stalled_since or time.monotonic()
            if time.monotonic() - stalled_since > STALL_S:
                break
            time.sleep(0.01)
            continue
        stalled_since = None
        stream.append(chunk[:n])
        sent += n
    assert sent < 32 << 20, f"server kept reading ({sent >> 20} MiB) from a client that never reads"
    growth = _rss(pid) - rss_before
    assert growth < 4 << 20, f"server RSS grew {growth >> 20} MiB for one non-reading client"
    sock.setblocking(True)
    sock.settimeout(10)
    assert recv_exactly(sock, sent) == b"".join(stream)
    sock.close()


@pytest.mark.parametrize("mib, reason", [(64, "threads"), (72, "ENOMEM")])
def test_threaded_refuses_promptly_when_no_thread_can_start(start_server, mib, reason):
    # A 64 MiB address-space limit leaves room for about a hundred 256 KiB thread stacks: the
    # kernel then refuses the stack mmap and Python raises "can't start new thread". At 72 MiB here
    # the stacks fit and the next 64 receive buffers cannot be mapped (ENOMEM) instead.
    # A thread that answered its client reads into its own buffer: a later thread cannot take its
    # memory, so every client that got an answer is still held.
    limit = mib << 20
    started = time.monotonic()
    server = start_server("threaded", preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
    result = fill("127.0.0.1", server.port, 400)
    try:
        assert 20 < len(result.held) < 400 and result.unanswered == 0
        # A thread that cannot start is refused as "threads"; one that starts but cannot allocate
        # its buffer, as ENOMEM. Every refused client is one or the other, and none is lost.
        refused = lambda r: r[0]["refused_threads"] + r[0]["refused_ENOMEM"]  # noqa: E731
        rows = server.wait_gauges(lambda r: refused(r) == result.refused)
        assert refused(rows) == result.refused and rows[0][f"refused_{reason}"] > 0
        assert rows[0]["open"] == len(result.held)
        assert "thread" in server.stderr_text()  # "no thread could start" or "thread ran out of memory"
        # at most a log line a second, the interpreter's own reports included
        assert len(server.stderr_text().splitlines()) <= 1 + math.ceil(time.monotonic() - started)
        assert result.slowest_answer_s < 1.0  # a dead thread's client is answered at once
        for sock in result.held[::10]:
            sock.settimeout(2)
            assert echo(sock, b"alive") == b"alive"
    finally:
        result.close()
    assert server.stop() == 0


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
