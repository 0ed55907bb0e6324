"""Client-side checks of the echo contract: one connect-and-echo with a deadline, and filling a
server to its cap to see where it stops and how it answers the clients it refuses.

Used to decide that a server is really up (a listening socket is not enough) and by the
self-check. Load is Locust's job (`scenarios/`), not this module's.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field


class EchoError(RuntimeError):
    pass


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks, got = [], 0
    while got < size:
        chunk = sock.recv(min(65536, size - got))
        if not chunk:
            raise EchoError(f"connection closed after {got} of {size} echoed bytes")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


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
        except (ConnectionRefusedError, ConnectionResetError, EchoError):
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)
            continue
        if echoed != payload:
            raise EchoError(f"echo from {host}:{port} differs from what was sent")
        return elapsed


@dataclass
class Fill:
    held: list[socket.socket] = field(default_factory=list)
    refused: int = 0
    unanswered: int = 0  # refused clients left hanging for more than the answer timeout
    slowest_answer_s: float = 0.0

    def close(self) -> None:
        for sock in self.held:
            sock.close()
        self.held.clear()


def fill(host: str, port: int, attempts: int, answer_timeout: float = 1.0) -> Fill:
    """Open `attempts` connections one by one; each must echo (held) or be closed by the server
    within `answer_timeout` (refused). Returns the held sockets, still open."""
    result = Fill()
    for _ in range(attempts):
        sock = socket.create_connection((host, port), timeout=answer_timeout)
        start = time.monotonic()
        payload = os.urandom(32)
        try:
            sock.sendall(payload)
            if recv_exactly(sock, len(payload)) != payload:
                raise EchoError("echo differs from what was sent")
            result.held.append(sock)
            continue
        except (EchoError, ConnectionResetError, BrokenPipeError):
            result.refused += 1
            result.slowest_answer_s = max(result.slowest_answer_s, time.monotonic() - start)
        except socket.timeout:
            result.unanswered += 1
        sock.close()
    return result
