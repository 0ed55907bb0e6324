"""The intake's accept-error policy for errors the kernel cannot safely be made to return here.

ENFILE needs fs.file-max lowered for the whole machine, and ENOBUFS/ENOMEM need memory pressure,
so these use a scripted listening socket; EMFILE, FD_SETSIZE and thread failures are tested on
real sockets in test_contract.py.
"""

from __future__ import annotations

import errno
import socket

from servers.gauges import Counters
from servers.intake import BACKOFF_S, Intake, RateLimitedLog


class ScriptedListener:
    """accept() returns or raises the scripted outcomes in turn, then EAGAIN."""

    def __init__(self, *outcomes) -> None:
        self.outcomes = list(outcomes)
        self.closed_conns = 0

    def setblocking(self, flag: bool) -> None:
        pass

    def fileno(self) -> int:
        return 0

    def accept(self):
        if not self.outcomes:
            raise BlockingIOError(errno.EAGAIN, "empty")
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, int):
            raise OSError(outcome, errno.errorcode[outcome])
        return outcome, ("127.0.0.1", 1)


class Conn:
    def __init__(self, listener: ScriptedListener) -> None:
        self.listener = listener

    def fileno(self) -> int:
        return 5

    def setblocking(self, flag: bool) -> None:
        pass

    def close(self) -> None:
        self.listener.closed_conns += 1


def make(listener):
    counters = Counters()
    log = RateLimitedLog("test", lambda: "status")
    return Intake(listener, counters, log), counters, log


def test_enfile_sheds_the_waiting_client_with_the_reserve_fd():
    listener = ScriptedListener(errno.ENFILE)
    listener.outcomes.append(Conn(listener))  # what the reserve fd lets us accept, then close
    intake, counters, log = make(listener)
    taken, pause = intake.take()
    assert taken == [] and pause == 0.0
    assert counters.refused["ENFILE"] == 1 and listener.closed_conns == 1
    assert log.lines == 1


def test_enobufs_backs_off_and_doubles():
    listener = ScriptedListener(errno.ENOBUFS)
    intake, counters, _ = make(listener)
    assert intake.take() == ([], BACKOFF_S)
    listener.outcomes.append(errno.ENOMEM)
    assert intake.take() == ([], 2 * BACKOFF_S)
    assert counters.refused["ENOBUFS"] == 1 and counters.refused["ENOMEM"] == 1


def test_aborted_clients_are_skipped_and_the_rest_taken():
    listener = ScriptedListener(errno.ECONNABORTED)
    conn = Conn(listener)
    listener.outcomes.append(conn)
    intake, counters, _ = make(listener)
    taken, pause = intake.take()
    assert taken == [conn] and pause == 0.0 and counters.accepted == 1
    assert sum(counters.refused.values()) == 0


def test_log_is_rate_limited_to_one_line_per_interval():
    log = RateLimitedLog("test", lambda: "status", interval=60)
    for _ in range(1000):
        log.note("EMFILE")
    assert log.lines == 1 and log.pending == {"EMFILE": 999}
    log.flush(force=True)
    assert log.lines == 2 and log.pending == {}


def test_real_listener_with_nobody_waiting_takes_nothing():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        intake, counters, _ = make(listener)
        assert intake.take() == ([], 0.0) and counters.accepted == 0
