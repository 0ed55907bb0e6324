"""MQTT 3.1.1, the client's side, sans-I/O: CONNECT and its CONNACK as the opening, then either
PINGREQ/PINGRESP or (`--mqtt-echo`) a PUBLISH to the connection's own topic that the broker must
send back byte for byte: a real end-to-end check through the broker's routing.

Each connection's client id is `identity` (the run's prefix, this process's host and pid) and the
connection's own number, so no two connections anywhere in a run take over each other's session;
its topic is the same id under `fdcap/`. With `--mqtt-echo` the SUBSCRIBE goes with the CONNECT (a
client may send before the CONNACK comes, MQTT 3.1.1 section 3.1.4), and the broker handles the two
in order, so the first PUBLISH is routed back. A PUBLISH at QoS 0 comes back as the very bytes that
went out (same flags, topic and payload), which is what the parser checks.

A refused CONNECT is named by its return code (`mqtt-refused-3` server unavailable, `-4` bad user
name or password, `-5` not authorised); a refused subscription is `mqtt-subscribe-refused`.
"""

from __future__ import annotations

import random
import struct
from collections import deque

from harness.core.protocol_base import EVIDENCE_BYTES, MAX_REPLY_BYTES, OpeningParser, Parser, Protocol

CONNECT_STAGE = "mqtt-connack"
CONNECT, CONNACK, PUBLISH, SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 1, 2, 3, 8, 9, 12, 13, 14
PING = bytes([PINGREQ << 4, 0])
PONG = bytes([PINGRESP << 4, 0])
TOPIC_ROOT = "fdcap/"
MAX_KEEPALIVE = 65_535


def remaining_length(size: int) -> bytes:
    """MQTT's variable-length integer: 7 bits a byte, the top bit says more follow."""
    out = bytearray()
    while True:
        size, byte = divmod(size, 128)
        out.append(byte | (0x80 if size else 0))
        if not size:
            return bytes(out)


def text(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return struct.pack("!H", len(data)) + data


def packet(kind: int, flags: int, body: bytes) -> bytes:
    return bytes([kind << 4 | flags]) + remaining_length(len(body)) + body


def connect(client_id: str, keepalive: int, username: str = "", password: str = "") -> bytes:
    flags = 0x02 | (0x80 if username else 0) | (0x40 if password else 0)  # 0x02: a clean session
    body = text("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + text(client_id)
    body += (text(username) if username else b"") + (text(password) if password else b"")
    return packet(CONNECT, 0, body)


def subscribe(topic: str, packet_id: int = 1) -> bytes:
    return packet(SUBSCRIBE, 0b0010, struct.pack("!H", packet_id) + text(topic) + b"\x00")  # QoS 0


def publish(topic: str, payload: bytes) -> bytes:
    return packet(PUBLISH, 0, text(topic) + payload)  # QoS 0, no retain


def read_packet(buf: bytes, at: int = 0) -> tuple[int, int, int, bytes] | None:
    """(end, type, flags, body) of the packet at `at`, or None if it is not whole yet; ValueError
    for a length no broker sends."""
    if len(buf) - at < 2:
        return None
    size, shift, i = 0, 0, at + 1
    while True:
        if i >= len(buf):
            return None
        byte = buf[i]
        size |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            break
        shift += 7
        if shift > 21:
            raise ValueError("a remaining length over four bytes")
    if size > MAX_REPLY_BYTES:
        raise ValueError("a packet over the reply bound")
    if len(buf) - i < size:
        return None
    return i + size, buf[at] >> 4, buf[at] & 0x0F, buf[i:i + size]


class ConnackParser(OpeningParser):
    """The CONNACK: return code 0, or the refusal named by its code."""

    __slots__ = ()

    def feed(self, data: bytes) -> tuple[int, str | None]:
        self.buf += data
        try:
            got = read_packet(self.buf)
        except ValueError:
            return self._wrong("mqtt-protocol")
        if got is None:
            return 0, None
        end, kind, _, body = got
        if kind != CONNACK or len(body) != 2:
            return self._wrong("unexpected-reply")
        if body[1]:
            return self._wrong(f"mqtt-refused-{body[1]}")
        self.end = end
        return 1, None


class MqttParser(Parser):
    """Packets after the CONNACK: the replies owed (PINGRESP, or the PUBLISH that went out),
    the SUBACK checked, anything else named."""

    __slots__ = ("expected",)

    def __init__(self) -> None:
        super().__init__()
        self.expected: deque[bytes] = deque()  # each owed reply's bytes, whole

    def sent(self, request: bytes) -> None:
        self.expected.append(PONG if request == PING else request)
        self.pending += 1

    def feed(self, data: bytes) -> tuple[int, str | None]:
        self.buf += data
        done, at = 0, 0
        while True:
            try:
                got = read_packet(self.buf, at)
            except ValueError:
                return self._wrong(done, at, "mqtt-protocol")
            if got is None:
                break
            end, kind, _, body = got
            why = self._packet(kind, self.buf[at:end], body)
            if why == "reply":
                done += 1
            elif why:
                return self._wrong(done, at, why)
            at = end
        self.buf = self.buf[at:]
        return done, None

    def _packet(self, kind: int, whole: bytes, body: bytes) -> str | None:
        if kind == SUBACK:
            return "mqtt-subscribe-refused" if body[2:3] == b"\x80" else None
        if kind == DISCONNECT:
            return "mqtt-disconnect"
        if kind not in (PUBLISH, PINGRESP):
            return "unexpected-reply"
        if not self.expected:
            return "unasked"
        if whole != self.expected[0]:
            return "mismatch"
        self.expected.popleft()
        self.pending -= 1
        return "reply"

    def _wrong(self, done: int, at: int, why: str) -> tuple[int, str]:
        self.evidence = self.buf[at:at + EVIDENCE_BYTES]
        return done, why


class Mqtt(Protocol):
    name = "mqtt"
    opening_stage = CONNECT_STAGE

    def __init__(self, identity: str, keepalive: int = 0, username: str = "", password: str = "",
                 echo: bool = False, size: int = 64) -> None:
        if not 0 <= keepalive <= MAX_KEEPALIVE:
            raise ValueError(f"--keepalive {keepalive}: give 0 (none) to {MAX_KEEPALIVE:,} seconds")
        self.identity, self.keepalive, self.username, self.password = identity, keepalive, username, password
        self.echo, self.size = echo, size

    def client_id(self, unique: int) -> str:
        return f"{self.identity}-{unique:x}"

    def opening(self, unique: int) -> bytes:
        client = self.client_id(unique)
        hello = connect(client, self.keepalive, self.username, self.password)
        return hello + subscribe(TOPIC_ROOT + client) if self.echo else hello

    def opening_parser(self, opening: bytes) -> Parser:
        return ConnackParser()

    def request(self, unique: int = 0) -> bytes:
        if not self.echo:
            return PING
        return publish(TOPIC_ROOT + self.client_id(unique), random.randbytes(self.size))

    def parser(self) -> Parser:
        return MqttParser()
