"""The processes behind a listening port on this machine, and the limits each one runs under.

A port is found in /proc/net/tcp (and tcp6) as LISTEN sockets whose inodes are then looked for in
every /proc/PID/fd, so every process that shares the port is found: nginx's master and workers,
forked children, SO_REUSEPORT groups. For each: its name, `Max open files` (/proc/PID/limits), the
fds it holds, threads, RSS, and its cgroup's memory and pids limits where they are set.
"""

from __future__ import annotations

import os

LISTEN = "0A"


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


def _limits(pid: int) -> tuple[int | None, int | None]:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return (None if soft == "unlimited" else int(soft), None if hard == "unlimited" else int(hard))
    return None, None


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def _cgroup_limits(pid: int) -> dict:
    """memory.max and pids.max of the process's cgroup where set (cgroup v2 or v1)."""
    out: dict = {}
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            groups = [line.strip().split(":", 2) for line in f if line.strip()]
    except OSError:
        return out
    for _, controllers, path in groups:
        candidates = []
        if controllers == "":
            for base in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
                candidates += [("memory_max", f"{base}{path}/memory.max"), ("pids_max", f"{base}{path}/pids.max")]
        if "memory" in controllers.split(","):
            candidates.append(("memory_max", f"/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"))
        if "pids" in controllers.split(","):
            candidates.append(("pids_max", f"/sys/fs/cgroup/pids{path}/pids.max"))
        for key, file in candidates:
            try:
                with open(file) as f:
                    text = f.read().strip()
            except OSError:
                continue
            if text and text != "max" and int(text) < 1 << 60:  # v1 says "no limit" with a huge number
                out[key] = int(text)
    return out


def describe(pid: int) -> dict | None:
    """One process's name and limits, or None if it is gone."""
    try:
        soft, hard = _limits(pid)
        status = _status(pid)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None
    return {"pid": pid, "ppid": int(status.get("PPid", "0")), "name": status.get("Name", "?"),
            "cmdline": cmdline[:200], "fd_soft": soft,
            "fd_hard": hard, "fds": fds, "threads": int(status.get("Threads", "0")),
            "rss_bytes": int(status.get("VmRSS", "0 kB").split()[0]) * 1024, **_cgroup_limits(pid)}


def listeners(port: int) -> list[dict]:
    """Every process holding a listening socket on `port`, described."""
    return [d for d in (describe(pid) for pid in pids_holding(listening_inodes(port))) if d]


def refresh(procs: list[dict]) -> list[dict]:
    """The same processes described again (those that are still there)."""
    return [d for d in (describe(p["pid"]) for p in procs) if d]


def tracked(procs: list[dict]) -> list[dict]:
    """`procs` marked to be followed by `track`: the fds each held before, and its most so far."""
    return [{**p, "fds_before": p["fds"], "fds_peak": p["fds"]} for p in procs]


def track(procs: list[dict]) -> None:
    """Read the processes again, in place: now, the most fds each has held, and what it gained."""
    by_pid = {p["pid"]: p for p in procs}
    for now in refresh(procs):
        seen = by_pid[now["pid"]]
        peak = max(seen["fds_peak"], now["fds"])
        seen.update(now, fds_peak=peak, fds_gained=peak - seen["fds_before"])
