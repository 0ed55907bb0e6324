"""One client connection's life, sans-I/O: the one state machine that driver mode, greenlet mode and
the lean clients drive, so they cannot disagree on when a connection is up, verified, answered or
failed, or on what each of those is called.

Theory of operation. The adapter owns the socket: it connects, sends what a call returns, feeds
what arrives, and tells the machine when a deadline it was given has passed. The machine owns
everything else:

    CONNECTING --connected--> SECURING  (a TLS handshake, when the run speaks TLS)
                           -> OPENING   (an opening exchange: a WebSocket upgrade, an MQTT CONNECT)
                           -> VERIFYING (the first request sent; or, with nothing to send, a wait)
    SECURING   --handshake done------> OPENING or VERIFYING
    OPENING    --opening answered----> VERIFYING
    VERIFYING  --first reply (or open HOLD_VERIFY_S with nothing to send)--> READY (verified: held)
    READY      --request--> READY, replies owed until answered, in order (requests may be pipelined)
    any        --an error, EOF, a wrong reply, a deadline passed--> CLOSED

Each stage that waits for the far end is an "op", numbered in order (connect is op 1); the
adapter is given (op, deadline) for each and calls `expire(op)` when that deadline passes, which
fails the connection only if that op is still unanswered. Ops complete in order, so one counter
of answered ops says which are done.

What happens is reported through the `on_*` hooks, which the adapter's subclass implements (Locust
users fire request events and count in their process's tally; a lean client counts for itself):
`on_stage` for each stage done (connect, tls-handshake, ws-upgrade, mqtt-connack), `on_reply` for
each reply, `on_verified` once, `on_failure` once. Bytes go through the TLS layer when there is one
(`harness.core.tls`), so every protocol's parser sees plaintext in any chunking.
"""

from __future__ import annotations

from collections import deque

from harness.core.protocol_base import HOLD_VERIFY_S, Parser, Protocol
from harness.core.words import EOF_NAME, TIMEOUT

CONNECTING, SECURING, OPENING, VERIFYING, READY, CLOSED = range(6)
CONNECT_STAGE = "connect"
TLS_STAGE = "tls-handshake"


def bind_address(source: str) -> str | None:
    """The address a client binds before connecting, or None: for 0.0.0.0 and :: the kernel picks
    the source by the route (a worker on a machine of its own)."""
    return None if source in ("0.0.0.0", "::") else source


class Connection:
    """A connection's state; subclasses implement the `on_*` hooks (and add the adapter's fields)."""

    __slots__ = ("protocol", "state", "tls", "parser", "marks", "asked", "answered_ops", "started", "stage_at",
                 "verify_at")

    def __init__(self, protocol: Protocol, tls=None) -> None:
        self.protocol = protocol
        self.state = CONNECTING
        self.tls = tls  # a harness.core.tls.TlsClient, or None
        self.parser: Parser | None = None  # the replies still owed, only while some are
        self.marks: deque | None = None  # per reply owed: (its size, sent at, intended at)
        self.asked = 0  # ops asked of the far end (connect is op 1)
        self.answered_ops = 0
        self.started = 0.0  # when connect() was called
        self.stage_at = 0.0  # when the stage under way began
        self.verify_at = 0.0  # nothing to send: when the connection counts as verified if still open

    # -- hooks --------------------------------------------------------------------------------
    def on_deadline(self, op: int, at: float) -> None:
        """Op number `op` must be answered by `at`: call `expire(op)` then."""

    def on_stage(self, name: str, started: float, now: float) -> None:
        """A stage is done: connect, tls-handshake, or the protocol's opening."""

    def on_reply(self, size: int, sent_at: float, intended: float | None, now: float) -> None:
        """A request's reply came whole and right."""

    def on_verified(self) -> None:
        """The connection is up and answered once (or, with nothing to send, stayed open): held."""

    def on_failure(self, request: str, failure: str, started: float, evidence: bytes, verified: bool) -> None:
        """The connection failed (and is CLOSED): `request` is the stage or request it failed in,
        `verified` whether it had been verified (held) before."""

    # -- what the adapter calls ----------------------------------------------------------------
    @property
    def verified(self) -> bool:
        return self.state == READY

    @property
    def closed(self) -> bool:
        return self.state == CLOSED

    def begin(self, now: float, timeout: float, established: bool = False) -> None:
        """connect() was called now: the connect is op 1. `established`: the kernel ran the whole
        handshake inside connect() (loopback does), so there is no deadline to keep for it."""
        self.started = self.stage_at = now
        if established:
            self.asked += 1
        else:
            self._ask(now + timeout)

    def connected(self, now: float, timeout: float) -> bytes:
        """The TCP connection is up: what to send first (a ClientHello, an opening, a request)."""
        self._answer()
        self.on_stage(CONNECT_STAGE, self.started, now)
        if self.tls is not None:
            self.state, self.stage_at = SECURING, now
            self._ask(now + timeout)
            return self.tls.start()
        return self._after_secured(now, timeout)

    def received(self, data: bytes, now: float, timeout: float) -> bytes:
        """Bytes from the far end; returns what to send in answer (often nothing)."""
        if self.tls is not None:
            data, out, failure = self.tls.feed(data)
            if failure:
                self.fail(failure, evidence=self.tls.evidence())
                return b""
            if self.state == SECURING and self.tls.secured:
                self._answer()
                self.on_stage(TLS_STAGE, self.stage_at, now)
                out += self._after_secured(now, timeout)
            if not data:
                return out
            return out + self._plain(data, now, timeout)
        return self._plain(data, now, timeout)

    def request(self, now: float, intended: float | None, timeout: float) -> bytes:
        """A periodic request (the adapter's schedule says when): its bytes, with its reply owed."""
        payload = self.protocol.request(id(self))
        self._owe(payload, now, intended, timeout)
        return self._wrap(payload)

    def expire(self, op: int, now: float) -> None:
        """The deadline of op `op` passed: a timeout if it is still unanswered."""
        if self.state != CLOSED and op > self.answered_ops:
            self.fail(TIMEOUT, started=self.marks[0][1] if self.state == READY and self.marks else self.stage_at)

    def check_held(self, now: float) -> None:
        """Nothing to send: the connection is verified once it has stayed open HOLD_VERIFY_S."""
        if self.state == VERIFYING and now >= self.verify_at:
            self.state = READY
            self.on_verified()

    def lost(self, failure: str = EOF_NAME) -> None:
        """The far end closed or reset the connection (EOF, ECONNRESET), or a send failed."""
        if self.state != CLOSED:
            self.fail(failure)

    def fail(self, failure: str, started: float | None = None, evidence: bytes | None = None) -> None:
        """Close the connection's state with a failure; the adapter then drops the socket."""
        if self.state == CLOSED:
            return
        request = self._request_name()
        if started is None:
            started = self.marks[0][1] if self.marks else self.stage_at
        if evidence is None:
            evidence = self.parser.leftover() if self.parser is not None else b""
        verified = self.state == READY
        self.state = CLOSED
        self.parser = self.marks = None
        self.on_failure(request, failure, started, evidence, verified)

    # -- inside ---------------------------------------------------------------------------------
    def _request_name(self) -> str:
        if self.state == CONNECTING:
            return CONNECT_STAGE
        if self.state == SECURING:
            return TLS_STAGE
        if self.state == OPENING:
            return self.protocol.opening_stage
        return self.protocol.name

    def _ask(self, deadline: float) -> None:
        self.asked += 1
        self.on_deadline(self.asked, deadline)

    def _answer(self, count: int = 1) -> None:
        self.answered_ops += count

    def _wrap(self, payload: bytes) -> bytes:
        return self.tls.wrap(payload) if self.tls is not None else payload

    def _after_secured(self, now: float, timeout: float) -> bytes:
        opening = self.protocol.opening(id(self))  # unique among the process's live connections
        if opening is not None:
            self.state, self.stage_at = OPENING, now
            self.parser = self.protocol.opening_parser(opening)
            self._ask(now + timeout)
            return self._wrap(opening)
        return self._first_request(now, timeout)

    def _first_request(self, now: float, timeout: float) -> bytes:
        self.state, self.stage_at = VERIFYING, now
        if not self.protocol.sends:
            self.verify_at = now + HOLD_VERIFY_S
            return b""
        return self.request(now, None, timeout)

    def _owe(self, payload: bytes, now: float, intended: float | None, timeout: float) -> None:
        if self.marks is None:
            self.marks = deque()
        if self.parser is None:  # an idle connection's parser may be part way through unasked bytes
            self.parser = self.protocol.parser()
        self.parser.sent(payload)
        self.marks.append((len(payload), now, intended))
        self._ask(now + timeout)

    def _plain(self, data: bytes, now: float, timeout: float) -> bytes:
        """Plaintext from the far end, judged by the stage's parser."""
        if self.state == OPENING:
            done, wrong = self.parser.feed(data)
            if wrong:
                self.fail(wrong)
                return b""
            if not done:
                return b""
            self._answer()
            self.on_stage(self.protocol.opening_stage, self.stage_at, now)
            rest = self.parser.rest()
            self.parser = None
            out = self._first_request(now, timeout)
            return out + (self._plain(rest, now, timeout) if rest else b"")
        if self.parser is None:  # bytes while nothing was asked: hold keeps them, the others refuse them
            self.parser = self.protocol.parser()
        done, wrong = self.parser.feed(data)
        out = self._wrap(self.parser.take_outgoing()) if self.parser.outgoing else b""
        marks = self.marks
        for _ in range(done):
            size, sent_at, intended = marks.popleft()
            self._answer()
            self.on_reply(size, sent_at, intended, now)
        if done and self.state == VERIFYING:
            self.state = READY
            self.on_verified()
        if wrong:
            self.fail(wrong)
            return b""
        if not marks and self.protocol.sends and self.parser.idle():
            self.parser = self.marks = None  # an idle connection keeps no parser
        return out
