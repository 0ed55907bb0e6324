"""Which processes the kernel's OOM killer ended, by pid, from the kernel's log (/dev/kmsg).

/proc/vmstat's oom_kill counts kills on the whole machine: a process of another program killed in
its own small cgroup while a run's server exits would name that server OOM-killed. The kernel logs
each kill as "Killed process PID (name)", so a run reads its log from where the run began and names
only the pids it saw there. The pid logged is the machine's (the first pid namespace's), so the log
is read only from that namespace. Elsewhere, and where the log cannot be read (kernel.dmesg_restrict
for a user without CAP_SYSLOG, a container without /dev/kmsg), the machine's counter is all there
is, and a kill anywhere counts.
"""

from __future__ import annotations

import errno
import os
import re

from harness.system import kernel

KMSG = "/dev/kmsg"
KILLED = re.compile(r"Killed process (\d+) ")
RECORD_BYTES = 8192  # a read of /dev/kmsg returns one record, and fails if the buffer is smaller
INIT_PID_NS = 0xEFFFFFFC  # the first pid namespace's inode number (PROC_PID_INIT_INO)
KERNEL_FACILITY = 0  # a record's "prio" is facility << 3 | level; anyone may write user records


def in_first_pid_namespace() -> bool:
    try:
        return os.stat("/proc/self/ns/pid").st_ino == INIT_PID_NS
    except OSError:
        return False


class OomLog:
    """The OOM kills since it was opened: `killed(pid)` for one process, read as they come."""

    def __init__(self, path: str = KMSG) -> None:
        self.pids: set[int] = set()
        self._count = kernel.oom_kills()
        self._fd: int | None = None
        if not in_first_pid_namespace():
            return
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            os.lseek(self._fd, 0, os.SEEK_END)  # from now on: the kills before the run are not its
        except OSError:
            self.close()

    def __enter__(self) -> "OomLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def exact(self) -> bool:
        """Whether kills are known by pid (the kernel's log), not only counted on the machine."""
        return self._fd is not None

    def killed(self, pid: int) -> bool:
        """Whether the OOM killer ended `pid` since this log began; without the kernel's log,
        whether it ended any process since the last call."""
        if self._fd is not None:
            try:
                self._read()
                return pid in self.pids
            except OSError:
                self.close()  # the log stopped answering: the counter, from here on
        now = kernel.oom_kills()
        any_killed, self._count = now > self._count, now
        return any_killed or pid in self.pids

    def _read(self) -> None:
        while True:
            try:
                record = os.read(self._fd, RECORD_BYTES).decode(errors="replace")
            except BlockingIOError:
                return  # nothing more logged
            except OSError as exc:
                if exc.errno == errno.EPIPE:
                    continue  # the ring overwrote records not read yet: on from the oldest it keeps
                raise
            if not record:
                return
            prefix, _, message = record.partition(";")
            found = KILLED.search(message)
            if found and prefix.split(",")[0].isdigit() and int(prefix.split(",")[0]) >> 3 == KERNEL_FACILITY:
                self.pids.add(int(found.group(1)))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
