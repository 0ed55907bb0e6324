"""Filling a server to its cap, one blocking client at a time, to see where it stops and how it
answers the clients it refuses: the self-check and the tour use it. Load is Locust's job
(`scenarios/`), not this module's.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field

from harness.core.words import ShortRead
from harness.system.wire import EchoError, recv_exactly


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
        except (EchoError, ShortRead, ConnectionResetError, BrokenPipeError):
            result.refused += 1
            result.slowest_answer_s = max(result.slowest_answer_s, time.monotonic() - start)
        except socket.timeout:
            result.unanswered += 1
        sock.close()
    return result
