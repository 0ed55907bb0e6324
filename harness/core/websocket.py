"""WebSocket (RFC 6455), the client's side, sans-I/O: the opening handshake (an HTTP/1.1 Upgrade,
its 101 and `Sec-WebSocket-Accept` checked) and the frames after it.

Requests are masked frames (a client's frames are always masked): in `echo` mode a binary message
of random bytes the server must send back byte for byte, in `ping` mode a ping its pong must
answer with the same bytes (for servers that do not echo). Whatever else the server sends is
judged where it arrives: a ping is answered with a pong, a close frame fails the connection as
`ws-close-<code>` with its reason as evidence (1013 "Try Again Later" is what an overloaded server
sends), a refused upgrade is `http-<status>`.

Hand-written, not wsproto: a held connection here keeps no parser at all while nothing is owed
(`Connection` drops it), where wsproto keeps a connection object of ~4 KB per held connection
(docs/protocols.md has the measurement); the tests check these frames against wsproto's.
"""

from __future__ import annotations

import base64
import hashlib
import random
from collections import deque

from harness.core.protocol_base import (
    EVIDENCE_BYTES,
    MAX_REPLY_BYTES,
    OpeningParser,
    Parser,
    Protocol,
    http_head,
)

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
WS_MODES = ("echo", "ping")
UPGRADE_STAGE = "ws-upgrade"
MAX_CONTROL = 125  # a control frame's payload


def accept_for(key: bytes) -> bytes:
    """The Sec-WebSocket-Accept a server must answer the key with."""
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def frame(opcode: int, payload: bytes, mask: bytes | None = None, fin: bool = True) -> bytes:
    """One frame; masked with `mask` (4 bytes) as a client sends, or unmasked as a server does."""
    size = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    bit = 0x80 if mask is not None else 0
    if size < 126:
        head += bytes([bit | size])
    elif size < 1 << 16:
        head += bytes([bit | 126]) + size.to_bytes(2, "big")
    else:
        head += bytes([bit | 127]) + size.to_bytes(8, "big")
    if mask is None:
        return head + payload
    return head + mask + unmask(payload, mask)


def unmask(data: bytes, mask: bytes) -> bytes:
    """`data` XOR the 4-byte mask repeated (its own inverse): one big-integer XOR, not a byte loop."""
    if not data:
        return data
    size = len(data)
    key = (mask * (size // 4 + 1))[:size]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(size, "big")


def read_frame(buf: bytes, at: int = 0) -> tuple[int, bool, int, bytes] | None:
    """(end, fin, opcode, payload) of the frame at `at`, or None if it is not whole yet; ValueError
    for what a server must not send (reserved bits without an extension, an oversized or
    fragmented control frame)."""
    if len(buf) - at < 2:
        return None
    first, second = buf[at], buf[at + 1]
    if first & 0x70:
        raise ValueError("reserved bits set")
    fin, opcode, masked, size = bool(first & 0x80), first & 0x0F, bool(second & 0x80), second & 0x7F
    at += 2
    if size >= 126:
        width = 2 if size == 126 else 8
        if len(buf) - at < width:
            return None
        size, at = int.from_bytes(buf[at:at + width], "big"), at + width
    if opcode >= CLOSE and (size > MAX_CONTROL or not fin):
        raise ValueError("a control frame over 125 bytes or fragmented")
    if size > MAX_REPLY_BYTES:
        raise ValueError("a frame over the reply bound")
    mask = b""
    if masked:  # a server's frames are not masked; taken as sent all the same
        if len(buf) - at < 4:
            return None
        mask, at = buf[at:at + 4], at + 4
    if len(buf) - at < size:
        return None
    payload = buf[at:at + size]
    return at + size, fin, opcode, unmask(payload, mask) if mask else payload


class UpgradeParser(OpeningParser):
    """The reply to the upgrade: a 101 with the right accept (and the subprotocol asked for). The
    bytes after its head are the first frames (`rest`)."""

    __slots__ = ("accept", "subprotocol")

    def __init__(self, accept: bytes, subprotocol: str) -> None:
        super().__init__()
        self.accept, self.subprotocol = accept, subprotocol.encode()

    def feed(self, data: bytes) -> tuple[int, str | None]:
        self.buf += data
        try:
            end, status, headers = http_head(self.buf)
        except ValueError:
            return self._wrong("bad-response")
        if not end:
            return (self._wrong("too-long") if len(self.buf) > MAX_REPLY_BYTES else (0, None))
        if status != 101:
            return self._wrong(f"http-{status}")  # the evidence: its status line, headers and what came along
        if headers.get(b"upgrade", b"").lower() != b"websocket" or headers.get(b"sec-websocket-accept") != self.accept:
            return self._wrong("ws-bad-upgrade")
        if self.subprotocol and headers.get(b"sec-websocket-protocol") != self.subprotocol:
            return self._wrong("ws-subprotocol")
        self.end = end
        return 1, None


class FrameParser(Parser):
    """Frames after the upgrade: the replies owed (echoed messages, or pongs), pings answered,
    a close named. `expected` holds each owed reply's payload."""

    __slots__ = ("expected", "message", "in_message", "outgoing", "mode")

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.expected: deque[bytes] = deque()
        self.message = b""  # a fragmented message's payload so far
        self.in_message = False
        self.outgoing = b""

    def sent(self, request: bytes) -> None:
        _, _, _, payload = read_frame(request)
        self.expected.append(payload)
        self.pending += 1

    def idle(self) -> bool:
        return not self.buf and not self.in_message

    def feed(self, data: bytes) -> tuple[int, str | None]:
        self.buf += data
        done, at = 0, 0
        while True:
            try:
                got = read_frame(self.buf, at)
            except ValueError:
                return self._wrong(done, at, "ws-protocol")
            if got is None:
                break
            end, fin, opcode, payload = got
            why = self._frame(fin, opcode, payload)
            if why == "reply":
                done += 1
            elif why:
                return self._wrong(done, at, why, payload if opcode == CLOSE else None)
            at = end
        self.buf = self.buf[at:]
        return done, None

    def _frame(self, fin: bool, opcode: int, payload: bytes) -> str | None:
        """What one frame is: "reply" (an owed reply came right), None (nothing owed), or why it is wrong."""
        if opcode == PING:
            self.outgoing += frame(PONG, payload, random.randbytes(4))
            return None
        if opcode == CLOSE:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            return f"ws-close-{code}"
        if opcode == PONG:
            return self._owed(payload) if self.mode == "ping" else None
        if opcode in (TEXT, BINARY) and not self.in_message or opcode == CONTINUATION and self.in_message:
            self.message += payload
            self.in_message = not fin
            if fin:
                message, self.message = self.message, b""
                return self._owed(message) if self.mode == "echo" else None  # ping mode: a push, not a reply
            return None
        return "ws-protocol"

    def _owed(self, payload: bytes) -> str | None:
        if not self.expected:
            return "unasked" if self.mode == "echo" else None  # an unasked pong is allowed (RFC 6455 5.5.3)
        if payload != self.expected[0]:
            return "mismatch"
        self.expected.popleft()
        self.pending -= 1
        return "reply"

    def _wrong(self, done: int, at: int, why: str, close: bytes | None = None) -> tuple[int, str]:
        # a close's evidence is its reason; anything else's, the bytes from the frame that was wrong
        self.evidence = close[2:EVIDENCE_BYTES + 2] if close is not None else self.buf[at:at + EVIDENCE_BYTES]
        return done, why


class WebSocket(Protocol):
    name = "websocket"
    opening_stage = UPGRADE_STAGE

    def __init__(self, host: str, path: str = "/", headers: tuple[str, ...] = (), subprotocol: str = "",
                 mode: str = "echo", size: int = 64) -> None:
        if not path.startswith("/"):
            raise ValueError(f"--path {path!r} must start with /")
        if mode not in WS_MODES:
            raise ValueError(f"--ws-mode {mode!r}: choose from {', '.join(WS_MODES)}")
        extra = ""
        for header in headers:
            name, colon, value = header.partition(":")
            if not colon or not name.strip():
                raise ValueError(f"--header {header!r} is not NAME:VALUE")
            extra += f"{name.strip()}: {value.strip()}\r\n"
        if subprotocol:
            extra += f"Sec-WebSocket-Protocol: {subprotocol}\r\n"
        self.head = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     f"Sec-WebSocket-Version: 13\r\nUser-Agent: fdcap-harness\r\n{extra}").encode()
        self.subprotocol, self.mode = subprotocol, mode
        self.size = min(size, MAX_CONTROL) if mode == "ping" else size

    def opening(self, unique: int) -> bytes:
        key = base64.b64encode(random.randbytes(16))
        return self.head + b"Sec-WebSocket-Key: " + key + b"\r\n\r\n"

    def opening_parser(self, opening: bytes) -> Parser:
        at = opening.index(b"Sec-WebSocket-Key: ") + len(b"Sec-WebSocket-Key: ")
        return UpgradeParser(accept_for(opening[at:opening.index(b"\r\n", at)]), self.subprotocol)

    def request(self, unique: int = 0) -> bytes:
        return frame(PING if self.mode == "ping" else BINARY, random.randbytes(self.size), random.randbytes(4))

    def parser(self) -> Parser:
        return FrameParser(self.mode)
