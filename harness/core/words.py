"""The words every layer uses for what happened to a connection, defined once.

A failure is named by one short word, so Locust groups failures by it, `run.json` counts by it and
the diagnosis reads it: an errno's name (`EMFILE`, `EADDRNOTAVAIL`, `ECONNRESET`), or one of the
names below (`timeout`, `EOF`, `worker-full`, a protocol's `mismatch` or `http-503`). The user and
echo modes, the Locust worker's fd reserve and the latency histogram's bounds are here too.
"""

from __future__ import annotations

import errno

USER_MODES = ("driver", "greenlet")
ECHO_MODES = ("closed", "open")
# fds a Locust worker needs for itself (zmq, logging, /proc reads of its CPU monitor): users per
# worker stay this far below its fd limit, so Locust's own monitor never meets EMFILE.
WORKER_FD_RESERVE = 100
# A connect refused by the worker itself: it holds max_users already (Locust's master may hand a
# worker more than its share when it moves users off workers it thinks are missing).
WORKER_FULL = "worker-full"
WORKER_FULL_DETAIL = (f"a Locust worker held all the users its fd limit allows (its limit less a reserve of "
                      f"{WORKER_FD_RESERVE} for Locust); use more --workers or a higher --worker-fd-limit")
TIMEOUT = "timeout"  # a connect or a reply that did not come within --echo-timeout
EOF_NAME = "EOF"  # the far end closed the connection
# Echo latency is recorded in µs up to this (longer than any echo timeout), 3 significant digits.
LATENCY_MAX_US = 600_000_000
LATENCY_DIGITS = 3


class TCPError(Exception):
    """A failure named by one short word, so Locust groups failures by that word alone."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __repr__(self) -> str:
        return self.name

    __str__ = __repr__


class ShortRead(ConnectionError):
    """The peer closed the connection before `size` bytes came; `data` holds what did."""

    def __init__(self, data: bytes, size: int) -> None:
        super().__init__(f"connection closed after {len(data)} of {size} bytes")
        self.data = data


def errno_name(err: int | str | None, default: str = "OSError") -> str:
    """A failure's short name: 'EMFILE' for errno 24, a name such as 'timeout' or 'EOF' as it is,
    `default` when there is no errno at all."""
    if err is None:
        return default
    if isinstance(err, int):
        return errno.errorcode.get(err, f"errno{err}")
    return str(err)


def error_name(exc: BaseException) -> str:
    """The failure name of an exception a connection met."""
    if isinstance(exc, TCPError):
        return exc.name
    if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError
        return TIMEOUT
    if isinstance(exc, ShortRead):
        return EOF_NAME
    if isinstance(exc, OSError) and exc.errno:
        return errno_name(exc.errno)
    return type(exc).__name__
