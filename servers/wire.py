"""What both ends of a TCP connection share here: socket option constants, errno names, reading an
exact number of bytes, and the one connect-and-echo that decides a server is really up.

The supervisor, the lean clients (`harness.clients`) and the Locust users (`scenarios/`) all use
these, so an error has one name everywhere and end of file means one thing. No locust import.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # no name in Python 3.11
LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close sends RST, leaves no TIME_WAIT


def errno_name(err: int | str | None, default: str = "OSError") -> str:
    """A failure's short name: 'EMFILE' for errno 24, a name such as 'timeout' or 'EOF' as it is,
    `default` when there is no errno at all."""
    if err is None:
        return default
    if isinstance(err, int):
        return errno.errorcode.get(err, f"errno{err}")
    return str(err)


class ShortRead(ConnectionError):
    """The peer closed the connection before `size` bytes came; `data` holds what did."""

    def __init__(self, data: bytes, size: int) -> None:
        super().__init__(f"connection closed after {len(data)} of {size} bytes")
        self.data = data


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
