"""The processes behind a listening port on this machine, and the limits each one runs under.

A port is found in /proc/net/tcp (and tcp6) as LISTEN sockets whose inodes are then looked for in
every /proc/PID/fd, so every process that shares the port is found: nginx's master and workers,
forked children, SO_REUSEPORT groups. For each: its name, `Max open files` (/proc/PID/limits), the
fds it holds, threads, RSS, and its cgroup's memory and pids limits where they are set.
"""

from __future__ import annotations

import os

from harness.core.records import ProcessInfo
from harness.system import cgroups

LISTEN = "0A"
TICKS = os.sysconf("SC_CLK_TCK")


def listening_inodes(port: int) -> set[int]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(int(fields[9]))
        except OSError:
            continue
    return inodes


def pids_holding(inodes: set[int]) -> list[int]:
    """Processes with one of these socket inodes among their fds."""
    wanted = {f"socket:[{i}]" for i in inodes}
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{name}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{name}/fd/{fd}") in wanted:
                    found.append(int(name))
                    break
            except OSError:
                continue
    return sorted(found)


LIMITS = {"Max open files": "fd", "Max address space": "as", "Max data size": "data"}


def _limits(pid: int) -> dict[str, int | None]:
    """The soft and hard fd limit and the soft address-space and data-size limits (None: unlimited)."""
    out: dict[str, int | None] = {}
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            for title, key in LIMITS.items():
                if line.startswith(title):
                    soft, hard = line[len(title):].split()[:2]
                    out[key] = None if soft == "unlimited" else int(soft)
                    if key == "fd":
                        out["fd_hard"] = None if hard == "unlimited" else int(hard)
    return out


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime and stime (fields 14 and 15)


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def describe(pid: int) -> ProcessInfo | None:
    """One process's name, limits and costs now, or None if it is gone."""
    try:
        limits = _limits(pid)
        status = _status(pid)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        cpu = _cpu_seconds(pid)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except (OSError, IndexError, ValueError):
        return None
    if "VmRSS" not in status and int(status.get("Threads", "1")) <= 1:
        return None  # a zombie, or a process the OOM killer is ending: its memory is gone

    def kb(name: str) -> int:
        return int(status.get(name, "0 kB").split()[0]) * 1024

    return ProcessInfo(pid=pid, ppid=int(status.get("PPid", "0")), name=status.get("Name", "?"), cmdline=cmdline[:200],
                       fd_soft=limits.get("fd"), fd_hard=limits.get("fd_hard"), fds=fds,
                       threads=int(status.get("Threads", "0")), rss_bytes=kb("VmRSS"), vsz_bytes=kb("VmSize"),
                       data_bytes=kb("VmData"), as_limit=limits.get("as"), data_limit=limits.get("data"), cpu_s=cpu,
                       **cgroups.limits_of(pid))


def listeners(port: int) -> list[dict]:
    """Every process serving `port`, described: those holding a listening socket on it, and their
    children of the same name that do not (a Node cluster's workers, to which the primary hands
    each connection it accepts)."""
    found = [d for d in (describe(pid) for pid in pids_holding(listening_inodes(port))) if d]
    names = {p["pid"]: p["name"] for p in found}
    for pid in _children(set(names)):
        child = describe(pid)
        if child and child["name"] == names.get(child["ppid"]) and pid not in names:
            found.append(child)
    return found


def _children(parents: set[int]) -> list[int]:
    """The processes whose parent is one of `parents` (/proc/PID/stat's fourth field)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid in parents:
            out.append(int(name))
    return sorted(out)


def refresh(procs: list[dict]) -> list[dict]:
    """The same processes described again (those that are still there)."""
    return [d for d in (describe(p["pid"]) for p in procs) if d]


def tracked(procs: list[dict]) -> list[dict]:
    """`procs` marked to be followed by `track`: the fds each held before, and its most so far."""
    return [{**p, "fds_before": p["fds"], "fds_peak": p["fds"], "threads_before": p["threads"],
             "rss_before": p["rss_bytes"]} for p in procs]


def track(procs: list[dict]) -> list[int]:
    """Read the processes again, in place: now, the most fds each has held, and what it gained.
    Returns the pids that are gone (each keeps its last reading, marked `gone`)."""
    by_pid = {p["pid"]: p for p in procs}
    seen_now = set()
    for now in refresh(procs):
        seen = by_pid[now["pid"]]
        seen_now.add(now["pid"])
        peak = max(seen["fds_peak"], now["fds"])
        seen.update(now, fds_peak=peak, fds_gained=peak - seen["fds_before"])
    gone = [p["pid"] for p in procs if p["pid"] not in seen_now and not p.get("gone")]
    for pid in gone:
        by_pid[pid]["gone"] = True
    return gone


def server_state(procs: list[dict], limits: dict) -> dict:
    """What a server's processes have left now, for `harness.core.costs.predict`: fd room (their
    fd limits less the fds they hold), room under their cgroup's memory.max and pids.max, under
    their RLIMIT_AS and RLIMIT_DATA, and the machine's pids; its totals for the cost fit."""
    live = [p for p in procs if not p.get("gone")]
    # a parent of other serving processes (nginx's master, a Node cluster's primary) hands the
    # connections on: its own fd limit is no room for them
    pids = {p["pid"] for p in live}
    parents = {p.get("ppid") for p in live if p.get("ppid") in pids}
    takers = [p for p in live if p["pid"] not in parents] or live

    def total(key: str) -> int:
        return sum(p.get(key) or 0 for p in live)

    def least_room(limit: str, used: str, among: list[dict] = live) -> int | None:
        rooms = [p[limit] - p.get(used, 0) for p in among if p.get(limit)]
        return sum(rooms) if rooms and len(rooms) == len(among) else None

    groups = {p["memory_max"]: p.get("memory_used", 0) for p in live if p.get("memory_max")}
    return {"held_fds": total("fds"), "threads": total("threads"), "rss_bytes": total("rss_bytes"),
            "vsz_bytes": total("vsz_bytes"), "data_bytes": total("data_bytes"), "cpu_s": sum(p.get("cpu_s", 0.0) for p in live),
            "fd_room": least_room("fd_soft", "fds", takers), "as_room": least_room("as_limit", "vsz_bytes"),
            "data_room": least_room("data_limit", "data_bytes"),
            "cgroup_room": min((m - used for m, used in groups.items()), default=None),
            "pids_room": min((p["pids_max"] - p["threads"] for p in live if p.get("pids_max")), default=None),
            "thread_room": min(limits["pid_max"], limits["threads_max"]) - limits.get("threads_in_use", 0)}
