"""Process-level facts and setup: the fd limit, dying with the parent, cheap RSS reads, the
kernel's count of established connections on a port, and entering a network namespace (a test
host: servers and workers made there listen and connect on that host's interfaces)."""

from __future__ import annotations

import ctypes
import gc
import os
import resource
import signal
import sys
from contextlib import contextmanager

from harness.core.refusal import Refused

_PR_SET_PDEATHSIG = 1
_CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"  # where `ip netns add` mounts a named namespace


class FdLimitError(Refused, ValueError):
    """An fd limit that cannot be applied (e.g. above the hard limit)."""


def check_fd_limit(limit: int) -> None:
    """Refuse a soft fd limit this process could not set, with the fix in the message."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if limit < 16:
        raise FdLimitError(f"fd limit {limit} is too small to run a server; use at least 16")
    if hard != resource.RLIM_INFINITY and limit > hard:
        raise FdLimitError(
            f"fd limit {limit} exceeds the hard limit {hard} of this process; "
            f"lower --fd-limit or raise the hard limit (ulimit -Hn, needs CAP_SYS_RESOURCE)"
        )


def set_fd_limit(limit: int) -> tuple[int, int]:
    """Set the soft RLIMIT_NOFILE of this process to `limit` exactly; never clamp silently."""
    check_fd_limit(limit)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    return limit, hard


def die_with_parent(sig: int = signal.SIGTERM, parent: int | None = None) -> None:
    """Ask the kernel to send `sig` when the parent exits, so a killed supervisor leaves no orphan.

    prctl(2) warns of the race: a parent that died between fork() and this call is already gone,
    and the child, reparented, would never get `sig`. Given the `parent` pid it was forked by, the
    child checks afterwards and sends itself `sig` if that parent is no longer its parent."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the supervisor's own stop path still applies
        return
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), sig)


def close_fds_except(keep: set[int]) -> None:
    """Close every fd but `keep` (and stdio), so inherited fds neither count against the fd limit
    nor keep other processes' sockets alive.

    A forked child still holds the parent's Python objects, some of them sockets and files whose
    fds are closed here behind their backs. The child soon reuses those fd numbers (its listener,
    its connections), and if its cyclic GC then freed such an object, the object would close an fd
    number that is no longer its own: a server lost its listener this way, mid-test. So the GC is
    frozen first: objects inherited from the parent are never collected in this process."""
    gc.freeze()
    keep = keep | {0, 1, 2}
    for fd in sorted(int(name) for name in os.listdir("/proc/self/fd")):
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:  # listdir's own fd, already gone
                pass


def processes_error(count: int, each_bytes: int, reserve_bytes: int, flag: str = "--processes") -> str | None:
    """Why `count` more processes cannot start here, from /proc: memory (each `each_bytes`, with
    `reserve_bytes` kept free) or the pids left under kernel.pid_max and threads-max; or None."""
    with open("/proc/meminfo") as f:
        available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    fit = max(0, (available - reserve_bytes) // each_bytes)
    if count > fit:
        return (f"{flag} {count:,} needs {count * each_bytes / 2**30:.1f} GiB ({each_bytes >> 20} MiB a process) and "
                f"{available / 2**30:.1f} GiB is available, {reserve_bytes >> 30} GiB of it kept free: at most "
                f"{fit:,} fit; lower {flag}")
    limits = []
    for path in ("/proc/sys/kernel/pid_max", "/proc/sys/kernel/threads-max"):
        with open(path) as f:
            limits.append(int(f.read()))
    in_use = sum(1 for name in os.listdir("/proc") if name.isdigit())
    room = min(limits) - in_use
    if count > room:
        return (f"{flag} {count:,} is more than the {room:,} processes kernel.pid_max and threads-max leave "
                f"({in_use:,} in use); lower {flag}")
    return None


def send_signal(pid: int, sig: int) -> None:
    """Signal `pid`, and say nothing if it has already gone."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def describe_exit(status: int) -> str:
    """A wait status as a person reads it: 'killed by SIGKILL' or 'exit code 1'."""
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


MAX_NICE = 19
CAP_SYS_ADMIN = 21
_PR_CAPBSET_DROP = 24
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def drop_capability(cap: int = CAP_SYS_ADMIN) -> bool:
    """Give up one capability for good: from this process's effective and permitted sets (capset)
    and from its bounding set, so no program it executes gets it back. The load (servers and
    Locust workers) drops CAP_SYS_ADMIN, which lets root open files past fs.file-max: with it the
    file table's limit would never be met, and a user's load does not run with it either.
    Returns whether this process had it."""
    libc = ctypes.CDLL(None, use_errno=True)
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        return False
    word, bit = divmod(cap, 32)
    had = bool(data[word].effective >> bit & 1)
    mask = ~(1 << bit) & 0xFFFFFFFF
    data[word].effective &= mask
    data[word].permitted &= mask
    data[word].inheritable &= mask
    dropped = libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) == 0  # needs CAP_SETPCAP (root has it)
    if libc.capset(ctypes.byref(header), data) != 0 or (had and not dropped):
        # say so: a program this process executes would get it back, and fs.file-max not bind it
        print(f"warning: capability {cap} could not be dropped (errno {ctypes.get_errno()}); fs.file-max may not "
              "bind this process", file=sys.stderr)
    return had


def lower_priority(nice: int) -> str:
    """Run this process `nice` levels below its parent, so the load stays below the control plane
    that started it. Where that would pass nice 19 (the whole run started under `nice -n 19`, as
    a big run on a shared machine should be) the levels are gone, and the load would compete with
    its own control plane as an equal: then it runs SCHED_IDLE instead, below every nice level,
    and still takes every cycle the control plane leaves. Returns what it did."""
    current = os.nice(0)
    if current + nice <= MAX_NICE:
        os.nice(nice)
        return f"nice {current + nice}"
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # inherited by the processes it forks
    return "SCHED_IDLE"


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def enter_netns(name: str) -> None:
    """Move this process into the named network namespace for good (a child, before exec)."""
    fd = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(fd)
    finally:
        os.close(fd)


@contextmanager
def in_netns(name: str | None):
    """Run a block inside the named network namespace and come back: sockets made there stay
    there, and so do the processes forked or spawned there. None: stay where we are."""
    if not name:
        yield
        return
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        enter_netns(name)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)
