"""What both ends of a TCP connection share here: socket option constants, reading an exact number
of bytes, and the one connect-and-echo that decides a server is really up. The supervisor, the lean
clients (`harness.clients`) and the Locust users (`scenarios/`) all use these."""

from __future__ import annotations

import os
import socket
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


def echo_once(host: str, port: int, payload: bytes | None = None, timeout: float = 5.0) -> float:
    """Connect, send `payload`, check the echo byte for byte; retries refused connects until
    `timeout`. Returns the round-trip seconds of the successful echo."""
    payload = payload or os.urandom(64)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=max(0.1, deadline - time.monotonic())) as sock:
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
