"""A process's own numbers from /proc, read so they keep working at its fd limit: its open fds, its
RSS through an fd opened up front, and other processes' CPU times."""

from __future__ import annotations

import os

import psutil


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


def files_open() -> int:
    """Open files on the whole machine (the first field of fs.file-nr), against fs.file-max."""
    try:
        with open("/proc/sys/fs/file-nr") as f:
            return int(f.read().split()[0])
    except OSError:  # ENFILE, for a harness without CAP_SYS_ADMIN
        return 0


def cpu_times(pids) -> dict[int, tuple[float, float]]:
    """Each process's user and system CPU seconds (the ones gone are left out)."""
    out = {}
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            out[pid] = (t.user, t.system)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out
