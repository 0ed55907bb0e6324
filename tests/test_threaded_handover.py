"""The threaded backend's handover of a connection to its new thread, in this process on a real
socket pair: a thread that dies before it takes its connection must not leave the client hanging.

(The whole server under a 64 MiB address-space limit is `test_contract`'s
test_threaded_refuses_promptly_when_no_thread_can_start.)
"""

from __future__ import annotations

import _thread
import socket
import sys
import time
from types import SimpleNamespace

import pytest

from harness.core.backends import ServerConfig
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


def test_a_connection_keeps_its_buffer_until_it_closes(handover, pair):
    """A thread that has answered its client reads into the buffer reserved before it started: it
    needs no new memory to go on (a new connection's thread cannot take it meanwhile)."""
    client, server = pair
    server.setblocking(True)
    assert handover.start(server) == ""
    free = handover.buffers.free.qsize()
    assert free == threaded.BUFFERS_PER_MAPPING - 1 and len(handover.buffers.mappings) == 1
    big = bytes(range(256)) * (threaded.RECV_BYTES // 256) * 3  # three buffers' worth, in pieces
    client.sendall(big)
    got = bytearray()
    while len(got) < len(big):
        got += client.recv(len(big))
    assert got == big and handover.buffers.free.qsize() == free  # still this connection's
    client.shutdown(socket.SHUT_WR)
    assert client.recv(1) == b""  # the thread closed the connection ...
    given_back = handover.buffers.free.get(timeout=5)  # ... and gives its buffer back
    assert len(given_back) == threaded.RECV_BYTES and not given_back.readonly
    assert handover.ctx.counters.closed == 1


def test_buffers_come_from_shared_mappings_and_are_used_again():
    buffers = threaded.Buffers()
    taken = [buffers.take() for _ in range(threaded.BUFFERS_PER_MAPPING)]
    assert len(buffers.mappings) == 1 and {len(b) for b in taken} == {threaded.RECV_BYTES}
    taken[0][:5] = b"first"
    buffers.give(taken[0])
    again = buffers.take()
    assert again[:5] == b"first" and len(buffers.mappings) == 1  # the same memory, no new mapping
    assert len(buffers.take()) == threaded.RECV_BYTES and len(buffers.mappings) == 2


def test_the_sweep_refuses_a_connection_no_thread_took(handover, pair):
    client, server = pair
    handover.file(12345, server, now=100.0)  # a key no thread has: it is never taken
    handover.tick(now=100.0 + threaded.STILLBORN_S - 1)
    assert 12345 in handover.waiting and _refused(handover) == (0, 0)
    handover.tick(now=100.0 + threaded.STILLBORN_S + 1)
    assert client.recv(1) == b""  # the client reads EOF
    assert handover.waiting == {} and _refused(handover) == (1, 1)


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
        handover.file(7, server, time.monotonic(), threaded._Notice(start, handover.notices.put))
        _thread.start_new_thread(start, ())
        del start  # the interpreter drops the thread's callable as the thread ends: the death notice
        handover.notices.put(handover.notices.get(timeout=5))
    assert 7 in handover.waiting and _refused(handover) == (0, 0)  # the main thread's to refuse
    assert handover.tick() is None  # a pass now, long before the sweep would; nothing left waiting
    assert client.recv(1) == b""
    assert handover.waiting == {} and _refused(handover) == (1, 1)
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
