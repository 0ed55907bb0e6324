"""The threaded backend's handover of a connection to its new thread, in this process on a real
socket pair: a thread that dies before it takes its connection must not leave the client hanging.

(The whole server under a 64 MiB address-space limit is `test_contract`'s
test_threaded_refuses_promptly_when_no_thread_can_start.)
"""

from __future__ import annotations

import _thread
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from harness.core.backends import ServerConfig
from tests.helpers import ROOT
from servers.backends import threaded
from servers.gauges import Counters
from servers.intake import RateLimitedLog


@pytest.fixture
def handover():
    ctx = SimpleNamespace(counters=Counters(), config=ServerConfig("threaded"), tls=None,
                          log=RateLimitedLog("threaded[test]", lambda: "status"))
    return threaded.Handover(ctx)


@pytest.fixture
def pair():
    client, server = socket.socketpair()
    client.settimeout(5)
    yield client, server
    client.close()
    server.close()


def _refused(handover, reason: str = "ENOMEM") -> tuple[int, int]:
    return handover.ctx.counters.closed, handover.ctx.counters.refused[reason]


def test_a_live_thread_takes_its_connection_and_echoes_it(handover, pair):
    client, server = pair
    server.setblocking(True)
    assert handover.start(server) == ""
    client.sendall(b"hello")
    assert client.recv(5) == b"hello"  # so the thread has taken it
    assert handover.waiting == {} and _refused(handover) == (0, 0)


def test_a_connection_reads_into_its_own_buffer_and_gives_it_back_as_it_closes(handover, pair):
    """A thread that has answered its client reads into the buffer reserved before it started: it
    needs no new buffer to go on (a new connection's thread cannot take that memory meanwhile)."""
    client, server = pair
    server.setblocking(True)
    reserved: list[memoryview] = []
    take = handover.buffers.take
    handover.buffers.take = lambda: reserved.append(take()) or reserved[-1]
    assert handover.start(server) == ""
    assert len(reserved) == 1 and len(handover.buffers.free) == threaded.BUFFERS_PER_MAPPING - 1
    for piece in (bytes([i]) * threaded.RECV_BYTES for i in range(3)):  # a buffer's worth at a time
        client.sendall(piece)
        got = bytearray()
        while len(got) < len(piece):
            got += client.recv(len(piece) - len(got))
        assert got == piece
    client.sendall(b"last")
    assert client.recv(4) == b"last"
    assert bytes(reserved[0][:4]) == b"last"  # read into the reserved buffer, not a new one
    assert len(handover.buffers.free) == threaded.BUFFERS_PER_MAPPING - 1  # still this connection's
    client.shutdown(socket.SHUT_WR)
    assert client.recv(1) == b""  # the thread gave the buffer back before it closed the connection
    assert handover.buffers.free[-1] is reserved[0] and len(handover.buffers.free) == threaded.BUFFERS_PER_MAPPING
    assert handover.ctx.counters.closed == 1 and len(handover.buffers.mappings) == 1


def test_buffers_come_from_shared_mappings_and_the_last_given_back_is_used_first():
    buffers = threaded.Buffers()
    taken = [buffers.take() for _ in range(threaded.BUFFERS_PER_MAPPING)]
    assert len(buffers.mappings) == 1 and {len(b) for b in taken} == {threaded.RECV_BYTES}
    assert len({id(b.obj) for b in taken}) == 1 and not taken[0].readonly
    buffers.give(taken[5])
    buffers.give(taken[0])
    assert buffers.take() is taken[0] and buffers.take() is taken[5]  # pages already written first
    assert len(buffers.take()) == threaded.RECV_BYTES and len(buffers.mappings) == 2


def test_a_buffer_that_cannot_be_mapped_is_a_memory_error():
    """Under an address-space limit the kernel refuses the mapping (ENOMEM): MemoryError, which the
    server counts as an ENOMEM refusal."""
    code = """if True:
        import resource
        from servers.backends.threaded import Buffers
        with open("/proc/self/statm") as f:
            size = int(f.read().split()[0]) * resource.getpagesize()
        room = size + (16 << 20)
        resource.setrlimit(resource.RLIMIT_AS, (room, resource.RLIM_INFINITY))
        buffers = Buffers()
        try:
            while True:
                buffers.take()
        except MemoryError:
            print(len(buffers.mappings))
    """
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert 1 <= int(out.stdout) <= 4  # 16 MiB of room: four 4 MiB mappings at most

def test_the_sweep_refuses_a_connection_no_thread_took(handover, pair):
    client, server = pair
    buffer = handover.buffers.take()
    handover.file(12345, server, now=100.0, buffer=buffer)  # a key no thread has: it is never taken
    handover.tick(now=100.0 + threaded.STILLBORN_S - 1)
    assert 12345 in handover.waiting and _refused(handover) == (0, 0)
    handover.tick(now=100.0 + threaded.STILLBORN_S + 1)
    assert client.recv(1) == b""  # the client reads EOF
    assert handover.waiting == {} and _refused(handover) == (1, 1)
    assert handover.buffers.free[-1] is buffer  # its buffer given back


class _DiesBeforeTaking(threaded._Start):
    """A connection's thread whose first frame finds no memory."""

    __slots__ = ()

    def __call__(self) -> None:
        raise MemoryError


def test_a_thread_that_dies_before_taking_its_connection_has_it_refused_at_the_next_pass(
        handover, pair, capfd):
    client, server = pair
    with threaded._interpreter_reports_quiet():
        start = _DiesBeforeTaking(handover, 7)
        buffer = handover.buffers.take()
        handover.file(7, server, time.monotonic(), threaded._Notice(start, handover.notices.put), buffer)
        _thread.start_new_thread(start, ())
        del start  # the interpreter drops the thread's callable as the thread ends: the death notice
        handover.notices.put(handover.notices.get(timeout=5))
    assert 7 in handover.waiting and _refused(handover) == (0, 0)  # the main thread's to refuse
    assert handover.tick() is None  # a pass now, long before the sweep would; nothing left waiting
    assert client.recv(1) == b""
    assert handover.waiting == {} and _refused(handover) == (1, 1) and handover.buffers.free[-1] is buffer
    # the interpreter said nothing of the thread's death: the one line is the server's own
    assert capfd.readouterr().err.splitlines() == [
        "threaded[test]: refused 1 connection(s) (ENOMEM x1); status; a connection's thread ran out of memory "
        "(memory or RLIMIT_AS)"]


def test_the_interpreters_own_report_cannot_fail_into_stderr(handover, capfd):
    """The hook itself raising (as it does when no frame can be allocated for it) leaves stderr
    empty: the report's last resort writes only to a sys.stderr that is not None."""
    def hook_that_cannot_run(unraisable) -> None:
        raise MemoryError

    with threaded._interpreter_reports_quiet():
        sys.unraisablehook = hook_that_cannot_run
        start = _DiesBeforeTaking(handover, 8)
        notice = threaded._Notice(start, handover.notices.put)
        _thread.start_new_thread(start, ())
        del start
        assert handover.notices.get(timeout=5) is notice  # posted after the report, as the thread ends
    assert capfd.readouterr().err == ""


def test_a_filed_connection_keeps_the_main_thread_looking_until_it_is_taken(handover, pair):
    client, server = pair
    handover.file(99, server, now=time.monotonic())
    assert handover.tick() == threaded.WAITING_POLL_S
