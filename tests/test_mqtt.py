"""`harness.core.mqtt`: MQTT 3.1.1's packets as the standard spells them, and the client's CONNECT,
pings and echoes through the one connection state machine, in any chunking (mosquitto itself
answers in tests/test_protocol_servers.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.core import mqtt
from harness.core.connection import CLOSED, READY
from tests.test_connection import Recorder


@pytest.mark.parametrize("size, encoded", [(0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (16_383, b"\xff\x7f"),
                                           (16_384, b"\x80\x80\x01"), (268_435_455, b"\xff\xff\xff\x7f")])
def test_remaining_length_is_the_standards_variable_integer(size, encoded):
    assert mqtt.remaining_length(size) == encoded  # MQTT 3.1.1, table 2.4
    if size <= mqtt.MAX_REPLY_BYTES:
        assert mqtt.read_packet(b"\x30" + encoded + b"x" * size)[0] == 1 + len(encoded) + size
    else:
        with pytest.raises(ValueError):
            mqtt.read_packet(b"\x30" + encoded + b"x" * size)


def test_connect_carries_a_clean_session_keepalive_and_credentials():
    packet = mqtt.connect("fdcap-a", 300, "user", "pw")
    assert packet == (b"\x10\x1d" + b"\x00\x04MQTT\x04" + bytes([0x02 | 0x80 | 0x40]) + b"\x01\x2c"
                      + b"\x00\x07fdcap-a" + b"\x00\x04user" + b"\x00\x02pw")


def broker(packets_in: bytes, refuse: int = 0) -> bytes:
    """A broker's answers, as the standard has them: CONNACK, SUBACK, PINGRESP, and each PUBLISH sent
    back (the client subscribed to its own topic)."""
    out, at = b"", 0
    while (got := mqtt.read_packet(packets_in, at)) is not None:
        end, kind, _, body = got
        if kind == mqtt.CONNECT:
            out += bytes([0x20, 2, 0, refuse])
        elif kind == mqtt.SUBSCRIBE:
            out += bytes([0x90, 3]) + body[:2] + b"\x00"
        elif kind == mqtt.PINGREQ:
            out += mqtt.PONG
        elif kind == mqtt.PUBLISH:
            out += packets_in[at:end]
        at = end
    return out


def up(protocol, sizes=(1 << 20,), refuse: int = 0) -> Recorder:
    conn = Recorder(protocol)
    conn.begin(0.0, 10.0)
    out = conn.connected(0.1, 10.0)
    while out and not conn.closed:
        reply, out, at = broker(out, refuse), b"", 0
        for size in sizes:
            out += conn.received(reply[at:at + size], 0.2, 10.0)
            at += size
            if at >= len(reply):
                break
        else:
            out += conn.received(reply[at:], 0.2, 10.0) if at < len(reply) else b""
    return conn


def test_a_ping_verifies_the_connection():
    conn = up(mqtt.Mqtt("fdcap-h-1", 60))
    assert conn.state == READY
    assert conn.seen == [("stage", "connect"), ("stage", "mqtt-connack"), ("reply", 2, None), ("verified",)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=1, max_size=40), st.integers(1, 20_000))
def test_an_echo_through_the_connections_own_topic_in_any_chunking(sizes, payload):
    proto = mqtt.Mqtt("fdcap-h-1", 60, echo=True, size=payload)
    conn = up(proto, sizes)
    assert conn.state == READY and conn.seen[-1] == ("verified",)
    topic = mqtt.TOPIC_ROOT + proto.client_id(id(conn))
    _, kind, _, body = mqtt.read_packet(proto.request(id(conn)))
    assert kind == mqtt.PUBLISH and body[2:2 + len(topic)] == topic.encode() and len(body) == 2 + len(topic) + payload


@pytest.mark.parametrize("code", [3, 4, 5])
def test_a_refused_connect_is_named_by_its_return_code(code):
    conn = up(mqtt.Mqtt("fdcap-h-1"), refuse=code)
    assert conn.state == CLOSED
    _, request, failure, evidence, verified = conn.seen[-1]
    assert (request, failure, evidence, verified) == ("mqtt-connack", f"mqtt-refused-{code}",
                                                      bytes([0x20, 2, 0, code]), False)


def test_a_publish_that_differs_is_a_mismatch_and_a_refused_subscription_is_named():
    proto = mqtt.Mqtt("fdcap-h-1", echo=True, size=4)
    conn = up(proto)
    sent = conn.request(1.0, None, 10.0)
    wrong = sent[:-1] + bytes([sent[-1] ^ 0xFF])  # a flipped byte (a fixed one equals the random payload's 1 time in 256)
    conn.received(wrong, 1.1, 10.0)
    assert conn.seen[-1][2:4] == ("mismatch", wrong)
    conn = Recorder(proto)
    conn.begin(0.0, 10.0)
    conn.connected(0.1, 10.0)
    conn.received(bytes([0x20, 2, 0, 0, 0x90, 3, 0, 1, 0x80]), 0.2, 10.0)
    assert conn.seen[-1][2] == "mqtt-subscribe-refused"


def test_client_ids_differ_by_process_and_connection():
    a, b = mqtt.Mqtt("fdcap-host-1a"), mqtt.Mqtt("fdcap-host-2b")
    ids = {a.client_id(1), a.client_id(2), b.client_id(1)}
    assert len(ids) == 3 and all(i.startswith("fdcap-host-") for i in ids)
    with pytest.raises(ValueError, match="--keepalive"):
        mqtt.Mqtt("x", keepalive=70_000)
