"""What both ends of a TCP connection share here: socket option constants, reading an exact number
of bytes, and the one connect-and-echo that decides a server is really up. The supervisor, the lean
clients (`harness.clients`) and the Locust users (`scenarios/`) all use these."""

from __future__ import annotations

import os
import socket
import ssl
import struct
import time

from harness.core.words import ShortRead

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # no name in Python 3.11
LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close sends RST, leaves no TIME_WAIT


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    """Exactly `size` bytes from a blocking socket; ShortRead if the peer closes first."""
    chunks, got = [], 0
    while got < size:
        chunk = sock.recv(min(65536, size - got))
        if not chunk:
            raise ShortRead(b"".join(chunks), size)
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


class EchoError(RuntimeError):
    pass


def echo_once(host: str, port: int, payload: bytes | None = None, timeout: float = 5.0,
              tls: ssl.SSLContext | None = None) -> float:
    """Connect (over TLS with `tls`), send `payload`, check the echo byte for byte; retries refused
    connects until `timeout`. Returns the round-trip seconds of the successful echo."""
    payload = payload or os.urandom(64)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=max(0.1, deadline - time.monotonic())) as plain, \
                    (tls.wrap_socket(plain, server_hostname=host) if tls else plain) as sock:
                start = time.perf_counter()
                sock.sendall(payload)
                echoed = recv_exactly(sock, len(payload))
                elapsed = time.perf_counter() - start
        except (ConnectionRefusedError, ConnectionResetError, ShortRead):
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)
            continue
        if echoed != payload:
            raise EchoError(f"echo from {host}:{port} differs from what was sent")
        return elapsed


def client_socket(make, host: str, source: str | None, blocking: bool = True) -> socket.socket:
    """A TCP socket towards `host` (IPv4 or IPv6), made by `make` (the socket class: the plain one,
    or gevent's), with TCP_NODELAY, and bound to `source` with IP_BIND_ADDRESS_NO_PORT so that the
    port is picked per destination at connect() (without it the bind would reserve a port for any
    destination, and a source address would run out at 28k connections in all). OSError as it came."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = make(family, socket.SOCK_STREAM | (0 if blocking else socket.SOCK_NONBLOCK))
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if source is not None:
            sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
    except OSError:
        sock.close()
        raise
    return sock


def close_with_reset(sock: socket.socket) -> None:
    """Close sending RST instead of FIN: no TIME_WAIT pile-up between runs."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
    except OSError:
        pass
    sock.close()


def is_established(sock: socket.socket) -> bool:
    """Whether a non-blocking connect has completed: on loopback (and a test host's veth) the kernel
    runs the whole handshake inside connect(), so the first bytes can go at once, without waiting
    for a writable event."""
    try:
        sock.getpeername()
    except OSError:
        return False
    return True
