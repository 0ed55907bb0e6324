"""Bad input to the servers, on every backend: random bytes in random chunkings (hypothesis), 1 MiB
messages, a half-close, a reset in the middle of a message, slowloris. The server must never crash
and never lose or reorder a byte of a live connection's echo. (Clients that never read and floods
past the fd limit are in test_contract.py.)"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.core.backends import BACKENDS
from tests.helpers import ServerProcess, connect, echo, process_alive, recv_exactly


@pytest.fixture(scope="module", params=list(BACKENDS))
def server(request, tmp_path_factory):
    s = ServerProcess(tmp_path_factory.mktemp("inputs"), request.param)
    yield s
    pids = s.pids()
    assert all(process_alive(p) for p in pids), f"{request.param} crashed on bad input:\n{s.stderr_text()}"
    assert s.stop() == 0


def _send_chunks(sock: socket.socket, payload: bytes, sizes: list[int]) -> None:
    offset, i = 0, 0
    while offset < len(payload):
        size = sizes[i % len(sizes)] if sizes else len(payload)
        sock.sendall(payload[offset:offset + size])
        offset += size
        i += 1


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(payload=st.binary(min_size=1, max_size=150_000), sizes=st.lists(st.integers(1, 70_000), max_size=8))
def test_random_bytes_in_random_chunks_come_back_whole_and_in_order(server, payload, sizes):
    with connect(server.port, timeout=10) as sock:
        sender = threading.Thread(target=_send_chunks, args=(sock, payload, sizes))
        sender.start()
        got = recv_exactly(sock, len(payload))
        sender.join()
    assert got == payload


def test_several_1_mib_messages_at_once(server):
    payloads = [os.urandom(1 << 20) for _ in range(4)]
    socks = [connect(server.port, timeout=20) for _ in payloads]
    senders = [threading.Thread(target=s.sendall, args=(p,)) for s, p in zip(socks, payloads)]
    for t in senders:
        t.start()
    try:
        for sock, payload in zip(socks, payloads):
            assert recv_exactly(sock, len(payload)) == payload
    finally:
        for t in senders:
            t.join()
        for sock in socks:
            sock.close()


def test_half_close_still_gets_its_full_echo(server):
    payload = os.urandom(300_000)
    with connect(server.port, timeout=10) as sock:
        sender = threading.Thread(target=lambda: (sock.sendall(payload), sock.shutdown(socket.SHUT_WR)))
        sender.start()
        got = bytearray()
        while chunk := sock.recv(65536):  # until the server closes after the last byte
            got += chunk
        sender.join()
    assert bytes(got) == payload


def test_reset_in_the_middle_of_a_message_harms_no_other_connection(server):
    with connect(server.port) as bystander:
        assert echo(bystander, b"before") == b"before"
        for _ in range(20):
            victim = connect(server.port)
            victim.sendall(os.urandom(40_000))  # half of an 80 KB message, then RST
            victim.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            victim.close()
        payload = os.urandom(100_000)
        sender = threading.Thread(target=bystander.sendall, args=(payload,))
        sender.start()
        assert recv_exactly(bystander, len(payload)) == payload
        sender.join()
    with connect(server.port) as newcomer:
        assert echo(newcomer, b"after") == b"after"


def test_slowloris_one_byte_at_a_time_is_echoed_and_blocks_nobody(server):
    slow = connect(server.port)
    slow_ok = []

    def drip() -> None:
        for byte in b"slowly":
            slow.sendall(bytes([byte]))
            slow_ok.append(recv_exactly(slow, 1) == bytes([byte]))
            time.sleep(0.2)  # the drip's pace (1.2 s in all, past the 0.5 s the fast client may wait)

    dripper = threading.Thread(target=drip)
    dripper.start()
    with connect(server.port) as fast:
        worst = 0.0
        while dripper.is_alive():
            start = time.perf_counter()
            assert echo(fast, b"x" * 512) == b"x" * 512
            worst = max(worst, time.perf_counter() - start)
            time.sleep(0.02)
    dripper.join()
    slow.close()
    assert slow_ok == [True] * len(b"slowly")
    assert worst < 0.5, f"a slowloris client delayed another client's echo by {worst:.2f} s"
