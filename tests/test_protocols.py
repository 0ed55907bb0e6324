"""`scenarios.protocols`: every parser gives the same answer however the bytes are chunked."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.core import protocols
from harness.core.protocol_base import EVIDENCE_BYTES, MAX_REPLY_BYTES
from harness.core.protocols import make


def feed_in_chunks(parser, data: bytes, cuts: list[int]) -> tuple[int, str | None]:
    """Feed `data` cut at `cuts`; stop at the first wrong reply, as a client does."""
    done, at = 0, 0
    for cut in sorted(set(c % (len(data) + 1) for c in cuts)) + [len(data)]:
        if cut <= at:
            continue
        n, why = parser.feed(data[at:cut])
        done += n
        at = cut
        if why:
            return done, why
    return done, None


CHUNKS = st.lists(st.integers(min_value=0, max_value=10_000), max_size=40)
CHUNKED_BODY = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nX-Trailer: 1\r\n\r\n"
HTTP_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: t\r\n\r\nhello"
HTTP_CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + CHUNKED_BODY
HTTP_304 = b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n"


@settings(max_examples=200, deadline=None)
@given(cuts=CHUNKS, count=st.integers(min_value=1, max_value=5))
def test_echo_of_pipelined_payloads_in_any_chunking(cuts, count):
    proto = make("echo", payload_size=37)
    parser = proto.parser()
    sent = [proto.request() for _ in range(count)]
    for request in sent:
        parser.sent(request)
    assert feed_in_chunks(parser, b"".join(sent), cuts) == (count, None)
    assert parser.pending == 0


@settings(max_examples=200, deadline=None)
@given(cuts=CHUNKS, flip=st.integers(min_value=0, max_value=73))
def test_echo_names_a_wrong_byte_wherever_it_is(cuts, flip):
    proto = make("echo", payload_size=37)
    parser = proto.parser()
    a, b = proto.request(), proto.request()
    parser.sent(a)
    parser.sent(b)
    reply = bytearray(a + b)
    reply[flip] ^= 0xFF
    done, why = feed_in_chunks(parser, bytes(reply), cuts)
    assert why == "mismatch" and done == (1 if flip >= 37 else 0) and parser.evidence[:1] == bytes([reply[flip]])


def test_echo_refuses_bytes_nobody_asked_for():
    parser = make("echo").parser()
    assert parser.feed(b"x") == (0, "mismatch") and parser.evidence == b"x"


@settings(max_examples=200, deadline=None)
@given(cuts=CHUNKS, replies=st.lists(st.sampled_from([HTTP_OK, HTTP_CHUNKED, HTTP_304]), min_size=1, max_size=4))
def test_http_whole_responses_in_any_chunking(cuts, replies):
    parser = make("http", host="127.0.0.1", path="/x").parser()
    for _ in replies:
        parser.sent(b"")
    assert feed_in_chunks(parser, b"".join(replies), cuts) == (len(replies), None)


@settings(max_examples=100, deadline=None)
@given(cuts=CHUNKS)
def test_http_error_status_is_named_with_its_words(cuts):
    parser = make("http").parser()
    parser.sent(b"")
    body = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy"
    assert feed_in_chunks(parser, body, cuts) == (0, "http-503")
    assert parser.evidence.startswith(b"HTTP/1.1 503 Service Unavailable")


def test_http_garbage_and_bodies_without_length_are_bad_responses():
    for reply in (b"SSH-2.0-OpenSSH\r\n", b"HTTP/1.1 200 OK\r\n\r\nbody until close"):
        parser = make("http").parser()
        parser.sent(b"")
        assert parser.feed(reply) == (0, "bad-response")


def test_http_request_is_a_keep_alive_get():
    request = make("http", host="127.0.0.1:8080", path="/status").request()
    assert request.startswith(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nConnection: keep-alive\r\n")
    assert request.endswith(b"\r\n\r\n")
    with pytest.raises(ValueError, match="must start with /"):
        make("http", path="status")


@settings(max_examples=200, deadline=None)
@given(cuts=CHUNKS, count=st.integers(min_value=1, max_value=4))
def test_redis_pong_in_any_chunking(cuts, count):
    parser = make("redis").parser()
    for _ in range(count):
        parser.sent(protocols.Redis.PING)
    assert feed_in_chunks(parser, b"+PONG\r\n" * count, cuts) == (count, None)


@settings(max_examples=100, deadline=None)
@given(cuts=CHUNKS)
def test_redis_error_reply_is_kept_word_for_word(cuts):
    parser = make("redis").parser()
    parser.sent(protocols.Redis.PING)
    words = b"-ERR max number of clients reached\r\n"
    assert feed_in_chunks(parser, words, cuts) == (0, "error-reply")
    assert parser.evidence == words


def test_redis_other_replies_and_garbage():
    for reply, why in ((b"$4\r\nPONG\r\n", "unexpected-reply"), (b"*2\r\n:1\r\n$-1\r\n", "unexpected-reply"),
                       (b"HTTP/1.1 400 Bad Request\r\n", "unexpected-reply")):
        parser = make("redis").parser()
        parser.sent(protocols.Redis.PING)
        assert parser.feed(reply) == (0, why), reply
    assert make("redis").request() == b"*1\r\n$4\r\nPING\r\n"


@settings(max_examples=100, deadline=None)
@given(cuts=CHUNKS)
def test_line_reply_starting_with_expect(cuts):
    proto = make("line", send="version\\r\\n", expect="VERSION ")
    assert proto.request() == b"version\r\n"
    parser = proto.parser()
    parser.sent(proto.request())
    parser.sent(proto.request())
    assert feed_in_chunks(parser, b"VERSION 1.6.21\r\nVERSION 1.6.21\r\n", cuts) == (2, None)
    parser = proto.parser()
    parser.sent(proto.request())
    assert feed_in_chunks(parser, b"ERROR Too many open connections\r\n", cuts) == (0, "unexpected-reply")
    assert parser.evidence == b"ERROR Too many open connections\r\n"


def test_line_needs_something_to_send():
    with pytest.raises(ValueError, match="--send"):
        make("line", send="", expect="x")


def test_hold_sends_nothing_and_keeps_what_the_target_says_unasked():
    proto = make("hold")
    parser = proto.parser()
    assert not proto.sends and proto.request() == b""
    assert parser.feed(b"-ERR max number of ") == (0, None)
    assert parser.feed(b"clients reached\r\n" + b"x" * 500) == (0, None)
    assert parser.leftover() == (b"-ERR max number of clients reached\r\n" + b"x" * 500)[:EVIDENCE_BYTES]


def test_a_reply_nobody_asked_for_and_one_that_never_ends_are_named():
    parser = make("redis").parser()
    assert parser.feed(b"+PONG\r\n") == (0, "unasked")
    parser = make("line", send="x", expect="y").parser()
    parser.sent(b"x")
    assert parser.feed(b"y" * (MAX_REPLY_BYTES + 1)) == (0, "too-long")


def test_unknown_protocol_is_refused():
    with pytest.raises(ValueError, match="unknown protocol 'smtp'"):
        make("smtp")
