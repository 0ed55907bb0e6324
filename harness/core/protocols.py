"""The request-reply protocols a run speaks to its target, sans-I/O (their contract:
`harness.core.protocol_base`). The driver and greenlet user modes (`scenarios/`) and the lean
clients (`harness.clients`) all use these, so "a good reply" means one thing everywhere.

- echo: a random payload, echoed byte for byte ("mismatch" otherwise: wrong bytes or bytes
  nobody asked for).
- hold: no request at all; a connection is held and the parser only keeps what the target sends
  unasked (evidence for the close that usually follows).
- line: `send` (e.g. b"version\\r\\n"); the reply is one line starting with `expect`
  ("unexpected-reply" otherwise).
- redis: PING; the reply must be +PONG ("error-reply" for a RESP error, e.g. -DENIED or
  -ERR max number of clients reached; "unexpected-reply" for anything else).
- http: an HTTP/1.1 keep-alive GET of `path`; a whole response (Content-Length, chunked, or none
  for 1xx/204/304) with a status below 400 ("http-503" and so on otherwise; "bad-response" for
  bytes that are not HTTP).
- websocket: an HTTP/1.1 upgrade, then masked frames echoed back or pings answered by pongs
  (`harness.core.websocket`).
- mqtt: CONNECT and its CONNACK, then PINGREQ/PINGRESP, or a PUBLISH to the connection's own topic
  that the broker sends back (`harness.core.mqtt`).
"""

from __future__ import annotations

import random
from collections import deque

from harness.core import mqtt, websocket
from harness.core.protocol_base import (
    EVIDENCE_BYTES,
    Parser,
    Protocol,
    http_head,
    unescape,
)

PROTOCOLS = ("echo", "hold", "line", "redis", "http", "websocket", "mqtt")

# -- echo --------------------------------------------------------------------------------------
class EchoParser(Parser):
    """Checks every byte as it arrives against the stream of payloads still owed."""

    __slots__ = ("expected", "got", "lengths")

    def __init__(self) -> None:
        super().__init__()
        self.expected = b""  # every unanswered payload, in order
        self.got = 0  # bytes of `expected` already answered
        self.lengths: deque[int] = deque()

    def sent(self, request: bytes) -> None:
        self.expected += request
        self.lengths.append(len(request))
        self.pending += 1

    def feed(self, data: bytes) -> tuple[int, str | None]:
        owed = self.expected[self.got:self.got + len(data)]
        if data == owed:
            self.got += len(data)
            return self._answered(), None
        # wrong bytes, or bytes nobody asked for: the replies whole before the first of them count
        good = next((i for i, (a, b) in enumerate(zip(data, owed)) if a != b), len(owed))
        self.got += good
        self.evidence = data[good:good + EVIDENCE_BYTES]
        return self._answered(), "mismatch"

    def _answered(self) -> int:
        done = 0
        while self.lengths and self.lengths[0] <= self.got:
            size = self.lengths.popleft()
            self.expected, self.got = self.expected[size:], self.got - size
            self.pending -= 1
            done += 1
        return done

    def leftover(self) -> bytes:
        return self.evidence


class Echo(Protocol):
    name = "echo"

    def __init__(self, size: int = 64) -> None:
        self.size = size

    def request(self, unique: int = 0) -> bytes:
        # unpredictable enough to catch a wrong or stale echo, and no getrandom(2) per echo
        return random.randbytes(self.size)

    def parser(self) -> Parser:
        return EchoParser()


# -- hold --------------------------------------------------------------------------------------
class HoldParser(Parser):
    __slots__ = ()

    def feed(self, data: bytes) -> tuple[int, str | None]:
        if len(self.evidence) < EVIDENCE_BYTES:
            self.evidence = (self.evidence + data)[:EVIDENCE_BYTES]
        return 0, None


class Hold(Protocol):
    name = "hold"
    sends = False

    def request(self, unique: int = 0) -> bytes:
        return b""

    def parser(self) -> Parser:
        return HoldParser()


# -- line --------------------------------------------------------------------------------------
class LineParser(Parser):
    __slots__ = ("expect",)

    def __init__(self, expect: bytes) -> None:
        super().__init__()
        self.expect = expect

    def reply(self, buf: bytes) -> tuple[int, str | None]:
        end = buf.find(b"\n")
        if end < 0:
            return 0, None  # judged whole, so the evidence is the whole line
        return end + 1, None if buf.startswith(self.expect) else "unexpected-reply"


class Line(Protocol):
    name = "line"

    def __init__(self, send: bytes, expect: bytes) -> None:
        if not send:
            raise ValueError("the line protocol needs --send, e.g. --send 'version\\r\\n'")
        self.send, self.expect = send, expect

    def request(self, unique: int = 0) -> bytes:
        return self.send

    def parser(self) -> Parser:
        return LineParser(self.expect)


# -- redis -------------------------------------------------------------------------------------
def resp_value(buf: bytes, at: int = 0) -> int:
    """The end offset of the RESP value starting at `at`, 0 if it is not whole yet; ValueError if
    `buf` is not RESP."""
    line_end = buf.find(b"\r\n", at)
    if line_end < 0:
        return 0  # judged once the line is whole, so the evidence is the whole line
    kind, head = buf[at:at + 1], buf[at + 1:line_end]
    if kind in (b"+", b"-", b":"):
        return line_end + 2
    if kind == b"$":
        size = int(head)
        if size < 0:
            return line_end + 2
        end = line_end + 2 + size + 2
        return end if len(buf) >= end else 0
    if kind == b"*":
        count, end = int(head), line_end + 2
        for _ in range(max(count, 0)):
            end = resp_value(buf, end) if end < len(buf) else 0
            if not end:
                return 0
        return end
    raise ValueError("not RESP")


class RedisParser(Parser):
    __slots__ = ()

    def reply(self, buf: bytes) -> tuple[int, str | None]:
        try:
            end = resp_value(buf)
        except ValueError:
            return 0, "unexpected-reply"
        if not end:
            return 0, None
        if buf.startswith(b"-"):
            return end, "error-reply"
        return end, None if buf[:end] == b"+PONG\r\n" else "unexpected-reply"


class Redis(Protocol):
    name = "redis"
    PING = b"*1\r\n$4\r\nPING\r\n"

    def request(self, unique: int = 0) -> bytes:
        return self.PING

    def parser(self) -> Parser:
        return RedisParser()


# -- http --------------------------------------------------------------------------------------
def http_response(buf: bytes) -> tuple[int, int]:
    """(end offset of the whole response, status) of the HTTP/1.1 response starting `buf`; end 0
    if it is not whole yet; ValueError if it is not HTTP."""
    body, status, headers = http_head(buf)
    if not body:
        return 0, status
    if status < 200 or status in (204, 304):
        return body, status
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        return _chunked_end(buf, body), status
    if b"content-length" in headers:
        end = body + int(headers[b"content-length"])
        return (end if len(buf) >= end else 0), status
    raise ValueError("no length: the body runs to the close, so the connection cannot be kept")


def _chunked_end(buf: bytes, at: int) -> int:
    """The end of a chunked body starting at `at` (with its trailer), 0 if it is not whole yet."""
    while True:
        size_end = buf.find(b"\r\n", at)
        if size_end < 0:
            return 0
        size = int(buf[at:size_end].split(b";")[0], 16)
        if size == 0:
            if buf[size_end:size_end + 4] == b"\r\n\r\n":
                return size_end + 4
            trailer_end = buf.find(b"\r\n\r\n", size_end)
            return trailer_end + 4 if trailer_end >= 0 else 0
        at = size_end + 2 + size + 2
        if len(buf) < at:
            return 0


class HttpParser(Parser):
    __slots__ = ()

    def reply(self, buf: bytes) -> tuple[int, str | None]:
        try:
            end, status = http_response(buf)
        except ValueError:
            return 0, "bad-response"
        if not end:
            return 0, None
        return end, None if status < 400 else f"http-{status}"


class Http(Protocol):
    name = "http"

    def __init__(self, host: str, path: str = "/") -> None:
        if not path.startswith("/"):
            raise ValueError(f"--path {path!r} must start with /")
        self.bytes = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n"
                      "User-Agent: fdcap-harness\r\n\r\n").encode()

    def request(self, unique: int = 0) -> bytes:
        return self.bytes

    def parser(self) -> Parser:
        return HttpParser()


def make(name: str, *, payload_size: int = 64, send: str = "", expect: str = "", host: str = "",
         path: str = "/", headers: tuple[str, ...] = (), subprotocol: str = "", ws_mode: str = "echo",
         identity: str = "", keepalive: int = 0, username: str = "", password: str = "",
         mqtt_echo: bool = False) -> Protocol:
    """The protocol `name` with its options (as the command line gives them; `send` and `expect`
    take backslash escapes such as \\r\\n). `identity` tells this process from the others that load
    the same target (an MQTT client id must be unique at the broker)."""
    if name == "echo":
        return Echo(payload_size)
    if name == "hold":
        return Hold()
    if name == "line":
        return Line(unescape(send), unescape(expect))
    if name == "redis":
        return Redis()
    if name == "http":
        return Http(host or "localhost", path)
    if name == "websocket":
        return websocket.WebSocket(host or "localhost", path, headers, subprotocol, ws_mode, payload_size)
    if name == "mqtt":
        return mqtt.Mqtt(identity, keepalive, username, password, mqtt_echo, payload_size)
    raise ValueError(f"unknown protocol {name!r}; choose from {', '.join(PROTOCOLS)}")


def from_options(opts, host: str | None, identity: str = "") -> Protocol:
    """The run's protocol from Locust's parsed options (--protocol, --payload-size, --send,
    --expect, --path, --header, --subprotocol, --ws-mode, --client-id-prefix, --keepalive,
    --username, --password, --mqtt-echo) and the target's address (the HTTP Host header)."""
    address = host.split("://", 1)[-1].rstrip("/") if host else ""
    headers = tuple(getattr(opts, "header", None) or ())
    return make(getattr(opts, "protocol", "echo"), payload_size=getattr(opts, "payload_size", 64),
                send=getattr(opts, "send", ""), expect=getattr(opts, "expect", ""), host=address,
                path=getattr(opts, "path", "/"), headers=headers, subprotocol=getattr(opts, "subprotocol", ""),
                ws_mode=getattr(opts, "ws_mode", "echo"),
                identity=getattr(opts, "client_id_prefix", "fdcap-") + identity,
                keepalive=getattr(opts, "keepalive", 0), username=getattr(opts, "username", ""),
                password=getattr(opts, "password", ""), mqtt_echo=getattr(opts, "mqtt_echo", False))
