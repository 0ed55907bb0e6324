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

from servers.backends import threaded
from servers.contract import ServerConfig
from servers.gauges import Counters
from servers.intake import RateLimitedLog


@pytest.fixture
def handover():
    ctx = SimpleNamespace(counters=Counters(), config=ServerConfig("threaded"),
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
    assert handover.start(server)
    client.sendall(b"hello")
    assert client.recv(5) == b"hello"  # so the thread has taken it
    assert handover.waiting == {} and _refused(handover) == (0, 0)


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


def test_a_thread_that_dies_before_taking_its_connection_has_it_refused_at_the_next_tick(
        handover, pair, capfd):
    client, server = pair
    previous = sys.unraisablehook
    try:
        threaded._quiet_stillborn()
        start = _DiesBeforeTaking(handover, 7)
        handover.file(7, server, time.monotonic(), threaded._Notice(start, handover.notices.put))
        _thread.start_new_thread(start, ())
        del start  # the interpreter drops the thread's callable as the thread ends: the death notice
        handover.notices.put(handover.notices.get(timeout=5))
    finally:
        sys.unraisablehook = previous
    assert 7 in handover.waiting and _refused(handover) == (0, 0)  # the main thread's to refuse
    handover.tick()  # a tick now, long before the sweep would
    assert client.recv(1) == b""
    assert handover.waiting == {} and _refused(handover) == (1, 1)
    assert "MemoryError" not in capfd.readouterr().err  # the hook kept it quiet
