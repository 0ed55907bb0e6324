"""What every protocol is, sans-I/O: a `Protocol` says what bytes one request is and what a
connection sends first (an opening: a WebSocket upgrade, an MQTT CONNECT); its `parser()` is fed
the bytes that come back, in any chunking, and says after each feed how many replies were completed
(in order: requests may be pipelined) and, if the next one is wrong, why, in one short word that
Locust can group failures by. The bytes a wrong reply began with, or bytes that came unasked for,
are kept word for word (the first EVIDENCE_BYTES) as `parser.evidence`: "-ERR max number of clients
reached" says more than EOF. The protocols themselves: `harness.core.protocols` (echo, hold, line,
redis, http), `harness.core.websocket`, `harness.core.mqtt`.
"""

from __future__ import annotations

EVIDENCE_BYTES = 200
# hold: a connection counts as verified once it has stayed open this long (a target at its limit
# often accepts and closes at once)
HOLD_VERIFY_S = 0.5
MAX_REPLY_BYTES = 1 << 20  # a reply longer than this is refused as "too-long" (nothing grows unbounded)


class Parser:
    """Replies to the requests `sent` so far, fed the bytes that come back."""

    __slots__ = ("buf", "pending", "evidence")
    # Bytes the protocol must send back unasked (a WebSocket pong to the server's ping); a parser
    # that ever has some keeps them in an `outgoing` slot of its own.
    outgoing = b""

    def __init__(self) -> None:
        self.buf = b""  # received, not yet a whole reply
        self.pending = 0  # requests sent and not yet answered
        self.evidence = b""

    def sent(self, request: bytes) -> None:
        self.pending += 1

    def feed(self, data: bytes) -> tuple[int, str | None]:
        """(replies completed by `data`, why the next reply is wrong or None)."""
        self.buf += data
        done = 0
        while self.buf:
            size, why = self.reply(self.buf)
            if why is not None:
                self.evidence = self.buf[:EVIDENCE_BYTES]
                return done, why
            if size == 0:
                if len(self.buf) > MAX_REPLY_BYTES:
                    self.evidence = self.buf[:EVIDENCE_BYTES]
                    return done, "too-long"
                break
            if self.pending == 0:  # a whole reply that nobody asked for
                self.evidence = self.buf[:EVIDENCE_BYTES]
                return done, "unasked"
            self.buf = self.buf[size:]
            self.pending -= 1
            done += 1
        return done, None

    def reply(self, buf: bytes) -> tuple[int, str | None]:
        """The first reply in `buf`: (0, None) if it is not whole yet, (size, None) if whole and
        good, (_, why) if wrong."""
        raise NotImplementedError

    def leftover(self) -> bytes:
        """What came and was not a whole reply: evidence when the target closes."""
        return self.evidence or self.buf[:EVIDENCE_BYTES]

    def rest(self) -> bytes:
        """An opening's parser: the bytes that came after the whole opening reply."""
        return self.buf

    def idle(self) -> bool:
        """Whether it holds nothing a later feed needs (an idle connection then keeps no parser)."""
        return not self.buf

    def take_outgoing(self) -> bytes:
        out, self.outgoing = self.outgoing, b""
        return out


class OpeningParser(Parser):
    """A parser of one opening reply (a WebSocket upgrade's 101, MQTT's CONNACK): `feed` reads it
    whole, a wrong one keeps its first bytes as evidence, and `rest` is what came after it."""

    __slots__ = ("end",)

    def __init__(self) -> None:
        super().__init__()
        self.end = 0  # where the opening reply ends in `buf`, once whole

    def _wrong(self, why: str) -> tuple[int, str]:
        self.evidence = self.buf[:EVIDENCE_BYTES]
        return 0, why

    def rest(self) -> bytes:
        return self.buf[self.end:]


class Protocol:
    name = ""
    sends = True  # False: the connection is held without requests
    opening_stage = ""  # the name of the opening exchange's stage, where the protocol has one

    def request(self, unique: int = 0) -> bytes:
        """One request's bytes; `unique` is the connection's (as in `opening`)."""
        raise NotImplementedError

    def parser(self) -> Parser:
        raise NotImplementedError

    def opening(self, unique: int) -> bytes | None:
        """What a connection sends before its first request (an upgrade, a CONNECT), or None;
        `unique` tells it from the process's other live connections (an MQTT client id)."""
        return None

    def opening_parser(self, opening: bytes) -> Parser:
        """The parser of the reply to `opening`: done (1) once it came whole and right."""
        raise NotImplementedError



def http_head(buf: bytes) -> tuple[int, int, dict[bytes, bytes]]:
    """(where the body starts, status, headers by lower-case name) of the HTTP/1.1 response head
    starting `buf`; 0 where the head is not whole yet (the status once its line is); ValueError if
    it is not HTTP."""
    first_end = buf.find(b"\r\n")
    if first_end < 0:
        return 0, 0, {}  # judged once the status line is whole, so the evidence is the whole line
    parts = buf[:first_end].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ValueError("not HTTP")
    status = int(parts[1])
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return 0, status, {}
    headers = {}
    for line in buf[first_end + 2:head_end].split(b"\r\n"):
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return head_end + 4, status, headers


def unescape(text: str) -> bytes:
    """'version\\r\\n' as typed on a command line -> b'version\\r\\n'."""
    return text.encode("latin-1", "backslashreplace").decode("unicode_escape").encode("latin-1")


def evidence_text(data: bytes) -> str:
    """Evidence bytes as text a person can read (and JSON can hold), word for word."""
    return data[:EVIDENCE_BYTES].decode("utf-8", "backslashreplace")
