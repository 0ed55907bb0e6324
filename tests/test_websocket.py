"""`harness.core.websocket`: the client's upgrade and frames against wsproto's server side (the
well-kept sans-I/O implementation), driven through the one connection state machine, in any
chunking."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    Request,
)
from wsproto.events import Pong as PongEvent

from harness.core import protocols, websocket
from harness.core.connection import CLOSED, READY
from tests.test_connection import Recorder


class Server:
    """wsproto's server side: accepts (or refuses) the upgrade and echoes what it is sent."""

    def __init__(self, refuse: int | None = None, subprotocol: str | None = None) -> None:
        self.ws = WSConnection(ConnectionType.SERVER)
        self.refuse, self.subprotocol = refuse, subprotocol
        self.requests: list[Request] = []

    def feed(self, data: bytes) -> bytes:
        self.ws.receive_data(data)
        out = b""
        for event in self.ws.events():
            if isinstance(event, Request):
                self.requests.append(event)
                if self.refuse:
                    out += self.ws.send(RejectConnection(status_code=self.refuse, has_body=False))
                else:
                    out += self.ws.send(AcceptConnection(subprotocol=self.subprotocol))
            elif isinstance(event, Message):
                out += self.ws.send(BytesMessage(data=event.data))
            elif isinstance(event, Ping):
                out += self.ws.send(event.response())
        return out


def chunks(data: bytes, sizes: list[int]) -> list[bytes]:
    out, at = [], 0
    for size in sizes:
        if at >= len(data):
            break
        out.append(data[at:at + size])
        at += size
    return out + ([data[at:]] if at < len(data) else [])


def up(protocol, server: Server, sizes: list[int] = (1 << 20,)) -> tuple[Recorder, bytes]:
    """A connection through the upgrade (and its first request's reply), every byte the server
    sends fed in `sizes` pieces; returns it and what it sent last."""
    conn = Recorder(protocol)
    conn.begin(0.0, 10.0)
    out = conn.connected(0.1, 10.0)
    while out and not conn.closed:
        reply = server.feed(out)
        out = b""
        for piece in chunks(reply, list(sizes)):
            out += conn.received(piece, 0.2, 10.0)
    return conn, out


def test_the_upgrade_is_checked_and_the_first_echo_verifies():
    server = Server()
    conn, _ = up(websocket.WebSocket("127.0.0.1:9000", "/chat", ("X-Token: abc",)), server)
    assert conn.state == READY
    assert conn.seen == [("stage", "connect"), ("stage", "ws-upgrade"), ("reply", 2 + 4 + 64, None),
                         ("verified",)]  # a reply counts the bytes on the wire: the frame
    [request] = server.requests
    assert request.target == "/chat" and request.host == "127.0.0.1:9000"
    assert (b"x-token", b"abc") in request.extra_headers


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=30), st.integers(1, 70_000))
def test_echoes_of_any_size_come_back_in_any_chunking(sizes, payload):
    conn, _ = up(websocket.WebSocket("h", size=payload), Server(), sizes)
    assert conn.state == READY and ("reply", len(websocket.frame(2, b"x" * payload, b"mask")), None) in conn.seen


def test_ping_mode_is_answered_by_pongs():
    server = Server()
    conn, _ = up(websocket.WebSocket("h", mode="ping", size=500), server)
    assert conn.state == READY and conn.seen[-1] == ("verified",)
    sent = conn.request(1.0, None, 10.0)
    assert sent[0] == 0x80 | websocket.PING and len(sent) == 2 + 4 + websocket.MAX_CONTROL  # a ping's payload <= 125
    assert conn.received(server.feed(sent), 1.1, 10.0) == b"" and conn.seen[-1][0] == "reply"


def test_a_refused_upgrade_is_named_by_its_status():
    conn, _ = up(websocket.WebSocket("h"), Server(refuse=503))
    assert conn.state == CLOSED
    _, request, failure, evidence, verified = conn.seen[-1]
    assert (request, failure, verified) == ("ws-upgrade", "http-503", False)
    assert evidence.startswith(b"HTTP/1.1 503 ")


def test_a_wrong_accept_or_subprotocol_is_refused():
    proto = websocket.WebSocket("h", subprotocol="mqtt")
    conn, _ = up(proto, Server(subprotocol=None))
    assert conn.seen[-1][2] == "ws-subprotocol"
    conn = Recorder(websocket.WebSocket("h"))
    conn.begin(0.0, 10.0)
    conn.connected(0.1, 10.0)
    conn.received(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Accept: wrong=\r\n\r\n", 0.2, 10.0)
    assert conn.seen[-1][2] == "ws-bad-upgrade"


def test_a_close_frame_is_named_by_its_code_with_its_reason():
    server = Server()
    conn, _ = up(websocket.WebSocket("h"), server)
    closing = server.ws.send(CloseConnection(code=1013, reason="Try Again Later"))
    conn.received(closing, 1.0, 10.0)
    _, request, failure, evidence, verified = conn.seen[-1]
    assert (request, failure, evidence, verified) == ("websocket", "ws-close-1013", b"Try Again Later", True)


def test_the_servers_ping_is_answered_while_idle_and_a_split_frame_waits_for_its_rest():
    server = Server()
    conn, _ = up(websocket.WebSocket("h"), server)
    ping = server.ws.send(Ping(payload=b"are you there"))
    assert conn.received(ping[:3], 1.0, 10.0) == b"" and conn.parser is not None  # a frame part way: kept
    pong = conn.received(ping[3:], 1.0, 10.0)
    server.ws.receive_data(pong)
    assert [type(e) for e in server.ws.events()] == [PongEvent] and conn.parser is None and conn.state == READY


def test_an_echo_that_differs_is_a_mismatch_with_the_frame_as_evidence():
    conn, first = up(websocket.WebSocket("h", size=8), Server())
    sent = conn.request(1.0, None, 10.0)
    payload = websocket.unmask(sent[6:], sent[2:6])
    wrong = websocket.frame(websocket.BINARY, bytes([payload[0] ^ 1]) + payload[1:])
    conn.received(wrong, 1.1, 10.0)
    assert conn.seen[-1][2:4] == ("mismatch", wrong)


def test_frames_agree_with_wsproto_both_ways():
    client = WSConnection(ConnectionType.CLIENT)
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(client.send(Request(host="h", target="/")))
    list(server.events())
    client.receive_data(server.send(AcceptConnection()))
    list(client.events())
    for size in (0, 1, 125, 126, 65_535, 65_536):
        payload = random.randbytes(size)
        ours = websocket.frame(websocket.BINARY, payload, random.randbytes(4))
        server.receive_data(ours)
        [event] = list(server.events())
        assert isinstance(event, BytesMessage) and event.data == payload
        theirs = server.send(BytesMessage(data=payload))
        assert websocket.read_frame(theirs) == (len(theirs), True, websocket.BINARY, payload)
    assert protocols.make("websocket", host="h").name == "websocket"
