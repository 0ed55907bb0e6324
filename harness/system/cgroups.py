"""A process's cgroup limits, read from /proc/PID/cgroup and the cgroup filesystem (v1 or v2):
memory and pids limits where set, and the memory room they leave.

A run inside a container, or any cgroup with a memory limit, meets that limit before the machine's
MemAvailable: the kernel's OOM killer acts on the cgroup's usage. Its room is the limit less the
working set (usage less the inactive file cache the kernel reclaims first), the way container
runtimes report a container's memory, at the cgroup and each of its ancestors.
"""

from __future__ import annotations

import os

V1_ROOT = "/sys/fs/cgroup"
V2_ROOTS = ("/sys/fs/cgroup", "/sys/fs/cgroup/unified")
HIERARCHY_ROOTS = (f"{V1_ROOT}/memory", *V2_ROOTS)
NO_LIMIT = 1 << 60  # v1 says "no limit" with a number near 2**63


def _read(path: str) -> str | None:
    """The file's text, or None where it does not exist (a controller not enabled, a process gone).
    Any other failure (EMFILE, ENFILE) is raised: a limit that could not be read is not "no limit"."""
    try:
        with open(path) as f:
            return f.read().strip()
    except (FileNotFoundError, ProcessLookupError):
        return None


def _limit(text: str | None) -> int | None:
    if not text or text == "max":
        return None
    value = int(text)
    return value if value < NO_LIMIT else None


def _groups(pid: int | str) -> list[tuple[str, str]]:
    """(controllers, path) of each hierarchy the process is in."""
    text = _read(f"/proc/{pid}/cgroup") or ""
    return [(c, p) for _, c, p in (line.split(":", 2) for line in text.splitlines() if line.count(":") >= 2)]


def _memory_dirs(pid: int | str) -> list[tuple[str, str]]:
    """(directory, version) of the process's memory cgroup: v1's memory hierarchy or v2's unified one."""
    out = []
    for controllers, path in _groups(pid):
        if "memory" in controllers.split(","):
            out.append((f"{V1_ROOT}/memory{path}".rstrip("/"), "v1"))
        elif controllers == "":  # a leaf without memory.max still has its ancestors' limits
            out += [(f"{root}{path}".rstrip("/"), "v2") for root in V2_ROOTS
                    if os.path.exists(f"{root}/cgroup.controllers") and os.path.isdir(f"{root}{path}")]
    return out


def _stat(directory: str) -> dict[str, int]:
    text = _read(f"{directory}/memory.stat") or ""
    return {k: int(v) for k, v in (line.split() for line in text.splitlines() if len(line.split()) == 2)}


def _room(directory: str, version: str) -> tuple[int, int, int] | None:
    """(limit, used, room) of one cgroup directory where it has a memory limit."""
    limit = _limit(_read(f"{directory}/{'memory.limit_in_bytes' if version == 'v1' else 'memory.max'}"))
    if limit is None:
        return None
    usage = _read(f"{directory}/{'memory.usage_in_bytes' if version == 'v1' else 'memory.current'}")
    if usage is None:
        raise FileNotFoundError(f"{directory}: a memory limit without its usage")
    used = int(usage)
    stat = _stat(directory)
    inactive = stat.get("total_inactive_file" if version == "v1" else "inactive_file", 0)
    return limit, used, max(0, limit - max(0, used - inactive))


def memory_room(pid: int | str = "self") -> dict | None:
    """The tightest memory limit over the process's cgroup and its ancestors: {"path", "limit",
    "used", "room"} in bytes, or None where no memory limit is set. Raises OSError where a file
    could not be read (at the fd limit, say): the caller then has no reading, not a larger room."""
    best = None
    for directory, version in _memory_dirs(pid):
        d = directory
        while d.startswith(V1_ROOT):
            found = _room(d, version)
            if found and (best is None or found[2] < best["room"]):
                best = {"path": d, "limit": found[0], "used": found[1], "room": found[2]}
            if d in HIERARCHY_ROOTS:
                break
            d = os.path.dirname(d)
    return best


def limits_of(pid: int) -> dict:
    """The process's own cgroup's memory limit and use (`memory_max`, `memory_used`) and pids
    limit (`pids_max`), where set: what could be read ({} where the process is gone)."""
    try:
        return _limits_of(pid)
    except (OSError, ValueError):
        return {}


def _limits_of(pid: int) -> dict:
    out: dict = {}
    for directory, version in _memory_dirs(pid):
        found = _room(directory, version)
        if found:
            out["memory_max"], out["memory_used"] = found[0], found[1]
    for controllers, path in _groups(pid):
        files = ([f"{V1_ROOT}/pids{path}/pids.max"] if "pids" in controllers.split(",")
                 else [f"{root}{path}/pids.max" for root in V2_ROOTS] if controllers == "" else [])
        for file in files:
            limit = _limit(_read(file))
            if limit is not None:
                out["pids_max"] = limit
    return out
