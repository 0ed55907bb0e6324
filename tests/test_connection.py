"""`harness.core.connection`: the one connection state machine, driven with plain bytes and times, as
driver mode, greenlet mode and the lean clients drive it."""

from __future__ import annotations

import socket
import time

import pytest

from harness.clients.instruments import Holder
from harness.core import connection, protocols
from harness.core.connection import CLOSED, READY, VERIFYING, Connection
from harness.core.protocol_base import HOLD_VERIFY_S


class Recorder(Connection):
    """What the hooks were told, in order."""

    __slots__ = ("seen", "deadlines")

    def __init__(self, protocol, **kw) -> None:
        super().__init__(protocol, **kw)
        self.seen: list[tuple] = []
        self.deadlines: list[tuple[int, float]] = []

    def on_deadline(self, op, at):
        self.deadlines.append((op, at))

    def on_stage(self, name, started, now):
        self.seen.append(("stage", name))

    def on_reply(self, size, sent_at, intended, now):
        self.seen.append(("reply", size, intended))

    def on_verified(self):
        self.seen.append(("verified",))

    def on_failure(self, request, failure, started, evidence, verified):
        self.seen.append(("failure", request, failure, evidence, verified))


def up(protocol) -> tuple[Recorder, bytes]:
    conn = Recorder(protocol)
    conn.begin(0.0, 10.0)
    return conn, conn.connected(0.1, 10.0)


def test_an_echo_is_verified_by_its_first_reply_in_any_chunking():
    conn, first = up(protocols.Echo(32))
    assert conn.state == VERIFYING and len(first) == 32 and conn.deadlines == [(1, 10.0), (2, 10.1)]
    for i in range(0, 32, 5):
        assert conn.received(first[i:i + 5], 0.2, 10.0) == b""
    assert conn.seen == [("stage", "connect"), ("reply", 32, None), ("verified",)]
    assert conn.state == READY and conn.parser is None and conn.marks is None  # an idle connection keeps no parser


def test_pipelined_requests_are_answered_in_order_and_intended_times_kept():
    conn, first = up(protocols.Echo(8))
    conn.received(first, 0.2, 10.0)
    a, b = conn.request(1.0, 0.98, 10.0), conn.request(1.1, 1.08, 10.0)
    conn.received(a + b[:3], 1.2, 10.0)
    conn.received(b[3:], 1.3, 10.0)
    assert conn.seen[-2:] == [("reply", 8, 0.98), ("reply", 8, 1.08)]


def test_a_wrong_byte_fails_the_request_with_what_came():
    conn, first = up(protocols.Echo(8))
    conn.received(first, 0.2, 10.0)
    sent = conn.request(1.0, None, 10.0)
    wrong = bytes(b ^ 0xFF for b in sent)  # every byte wrong (random bytes could share a first byte with any fixed reply)
    conn.received(wrong, 1.1, 10.0)
    assert conn.state == CLOSED and conn.seen[-1] == ("failure", "echo", "mismatch", wrong, True)


def test_a_deadline_fails_only_an_op_still_unanswered():
    conn, first = up(protocols.Echo(8))
    conn.expire(1, 10.0)  # the connect: answered
    assert conn.state == VERIFYING
    conn.expire(2, 10.1)  # the first echo: not
    assert conn.seen[-1] == ("failure", "echo", "timeout", b"", False)


def test_failures_name_the_stage_they_happened_in():
    conn = Recorder(protocols.Echo(8))
    conn.begin(0.0, 10.0)
    conn.lost("ECONNREFUSED")
    assert conn.seen == [("failure", "connect", "ECONNREFUSED", b"", False)]
    conn, _ = up(protocols.make("redis"))
    conn.received(b"-ERR max number of clients reached\r\n", 0.2, 10.0)
    assert conn.seen[-1] == ("failure", "redis", "error-reply", b"-ERR max number of clients reached\r\n", False)


def test_hold_sends_nothing_and_is_verified_once_open_long_enough():
    conn, first = up(protocols.Hold())
    assert first == b"" and conn.verify_at == pytest.approx(0.1 + HOLD_VERIFY_S)
    conn.check_held(0.2)
    assert conn.state == VERIFYING
    conn.received(b"bye", 0.3, 10.0)  # kept as evidence for the close that usually follows
    conn.lost()
    assert conn.seen[-1] == ("failure", "hold", "EOF", b"bye", False)
    conn, _ = up(protocols.Hold())
    conn.check_held(0.1 + HOLD_VERIFY_S)
    assert conn.state == READY and conn.seen[-1] == ("verified",)


def test_the_source_address_is_bound_unless_the_kernel_picks_it():
    assert connection.bind_address("127.0.1.2") == "127.0.1.2"
    assert connection.bind_address("0.0.0.0") is None and connection.bind_address("::") is None


def test_the_lean_hold_client_drives_the_same_machine_against_a_real_server(start_server):
    server = start_server("selectors")
    holder = Holder("127.0.0.1", server.port, ["127.0.0.1"], inflight=50)
    try:
        holder.open_all(300, time.monotonic() + 30)
        assert holder.verified == len(holder.links) == 300 and holder.failed == {}
        assert all(link.state == READY for link in holder.links.values())
        assert holder.reverify(time.monotonic() + 30) == 300
    finally:
        holder.close_all()
    with socket.socket() as nothing:  # a port nobody listens on: each connect is refused, by name
        nothing.bind(("127.0.0.1", 0))
        refused = Holder("127.0.0.1", nothing.getsockname()[1], ["127.0.0.1"])
        refused.open_all(5, time.monotonic() + 10)
        assert refused.failed == {"ECONNREFUSED": 5} and refused.links == {}
