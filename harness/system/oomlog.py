"""Which processes the kernel's OOM killer ended, by pid, from the kernel's log (/dev/kmsg).

/proc/vmstat's oom_kill counts kills on the whole machine: a process of another program killed in
its own small cgroup while a run's server exits would name that server OOM-killed. The kernel logs
each kill as "Killed process PID (name)", so a run reads its log from where the run began and names
only the pids it saw there. Where the log cannot be read (an unprivileged user under
kernel.dmesg_restrict, a container without /dev/kmsg) the machine's counter is all there is, and a
kill anywhere counts.
"""

from __future__ import annotations

import errno
import os
import re

from harness.system import kernel

KMSG = "/dev/kmsg"
KILLED = re.compile(r"Killed process (\d+) ")
RECORD_BYTES = 8192  # a read of /dev/kmsg returns one record, and fails if the buffer is smaller


class OomLog:
    """The OOM kills since it was made: `killed(pid)` for one process, read as they come."""

    def __init__(self, path: str = KMSG) -> None:
        self.pids: set[int] = set()
        self._count = kernel.oom_kills()
        try:
            self._fd: int | None = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            os.lseek(self._fd, 0, os.SEEK_END)  # from now on: the kills before the run are not its
        except OSError:
            self._fd = None

    @property
    def exact(self) -> bool:
        """Whether kills are known by pid (the kernel's log), not only counted on the machine."""
        return self._fd is not None

    def killed(self, pid: int) -> bool:
        """Whether the OOM killer ended `pid` since this log began; without the kernel's log,
        whether it ended any process since the last call."""
        if self._fd is None:
            now = kernel.oom_kills()
            any_killed, self._count = now > self._count, now
            return any_killed
        self._read()
        return pid in self.pids

    def _read(self) -> None:
        while True:
            try:
                record = os.read(self._fd, RECORD_BYTES)
            except BlockingIOError:
                return  # nothing more logged
            except OSError as exc:
                if exc.errno == errno.EPIPE:
                    continue  # the ring overwrote records we had not read: read on from the oldest kept
                raise
            if not record:
                return
            found = KILLED.search(record.decode(errors="replace"))
            if found:
                self.pids.add(int(found.group(1)))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
