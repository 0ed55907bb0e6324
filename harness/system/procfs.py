"""A process's own numbers from /proc, read so they keep working at its fd limit: its open fds, its
RSS through an fd opened up front, and other processes' CPU times."""

from __future__ import annotations

import os


def count_open_fds(pid: int | str = "self") -> int:
    """Open fds of a process, as /proc lists them (needs one free fd in the caller)."""
    names = os.listdir(f"/proc/{pid}/fd")
    return len(names) - (1 if pid == "self" else 0)  # listdir's own directory fd


class RssReader:
    """Reads this process's RSS through a /proc/self/statm fd opened up front (works at EMFILE)."""

    def __init__(self) -> None:
        self._fd = os.open("/proc/self/statm", os.O_RDONLY)
        self._page = os.sysconf("SC_PAGE_SIZE")

    def rss_bytes(self) -> int:
        fields = os.pread(self._fd, 128, 0).split()
        return int(fields[1]) * self._page
