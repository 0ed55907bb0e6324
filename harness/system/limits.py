"""The machine limits that cap connections, read from the kernel and the process.

`read_limits()` is the only part of the planning that touches the system; what the numbers predict
is `harness.core.planning`, a pure function of them.
"""

from __future__ import annotations

import os
import resource

from harness.system import cgroups
from harness.system.sysctl_state import current, saved


def _read_int(path: str, default: int = 0) -> int:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes."""
    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            name, value = line.split(":", 1)
            info[name] = int(value.split()[0]) * 1024
    return info


def memory_available() -> int:
    """What this process and its children may still take: MemAvailable, or less where a cgroup it
    runs in (a container's memory limit) leaves less room."""
    available = meminfo()["MemAvailable"]
    room = cgroups.memory_room()
    return min(available, room["room"]) if room else available


def read_limits() -> dict:
    """Every limit that can cap connections, as this process sees them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinity = resource.RLIM_INFINITY
    with open("/proc/sys/fs/file-nr") as f:
        allocated, _, file_max = (int(x) for x in f.read().split())
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        port_lo, port_hi = (int(x) for x in f.read().split())
    mem, cgroup = meminfo(), cgroups.memory_room()
    return {
        "nofile_soft": None if soft == infinity else soft,
        "nofile_hard": None if hard == infinity else hard,
        "nr_open": _read_int("/proc/sys/fs/nr_open"),
        "file_max": file_max,
        "file_nr": allocated,
        "ip_local_port_range": [port_lo, port_hi],
        "somaxconn": _read_int("/proc/sys/net/core/somaxconn"),
        "pid_max": _read_int("/proc/sys/kernel/pid_max"),
        "threads_max": _read_int("/proc/sys/kernel/threads-max"),
        "threads_in_use": _count_threads(),
        "max_map_count": _read_int("/proc/sys/vm/max_map_count"),
        "mem_total": mem.get("MemTotal", 0),
        "mem_available": min(mem.get("MemAvailable", 0), cgroup["room"]) if cgroup else mem.get("MemAvailable", 0),
        "memory_cgroup": cgroup,  # the tightest cgroup memory limit over this process, where one is set
        "cpus": os.cpu_count() or 1,
        "tuned": _tuned(),
    }


def _tuned() -> dict:
    """The sysctls `harness tune --apply` changed, with the machine's own values it replaced."""
    previous = saved()
    if not previous:
        return {}
    now = current()
    return {name: {"was": was, "now": now.get(name)} for name, was in previous.items()}


def _count_threads() -> int:
    total = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                total += len(os.listdir(f"/proc/{name}/task"))
            except OSError:
                pass
    return total
