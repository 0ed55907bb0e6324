"""The machine limits that cap connections, read from the kernel, and what they predict.

`read_limits()` is the only part that touches the system; `plan()` is a pure function of those
numbers, so it can be checked for a laptop (soft limit 1,024) or a big server (1M) as well as for
this machine.
"""

from __future__ import annotations

import math
import os
import resource
from dataclasses import asdict, dataclass, field

from servers.registry import BACKENDS

# Measured on this kind of machine (shared/FACTS.md): all-in kernel + userland cost of one
# connection with both ends local, and the spread of SO_REUSEPORT's hash over processes.
BYTES_PER_CONNECTION = 9 * 1024
REUSEPORT_HEADROOM = 0.85
FD_SETSIZE = 1024


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


def read_limits() -> dict:
    """Every limit that can cap connections, as this process sees them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinity = resource.RLIM_INFINITY
    with open("/proc/sys/fs/file-nr") as f:
        allocated, _, file_max = (int(x) for x in f.read().split())
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        port_lo, port_hi = (int(x) for x in f.read().split())
    mem = meminfo()
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
        "mem_available": mem.get("MemAvailable", 0),
        "cpus": os.cpu_count() or 1,
    }


def _count_threads() -> int:
    total = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                total += len(os.listdir(f"/proc/{name}/task"))
            except OSError:
                pass
    return total


@dataclass
class Plan:
    """What the limits predict for `connections` connections to one port."""

    connections: int
    backend: str
    fd_limit: int
    held_fds: int
    per_process: int
    per_source: int
    server_processes: int
    source_addresses: int
    predicted_cap: int
    binding: str  # the limit that stops a run at predicted_cap
    reasons: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def usable_fd_limit(limits: dict) -> int:
    """The largest soft limit a process may set: the hard limit, or fs.nr_open if unlimited."""
    return limits["nofile_hard"] or limits["nr_open"]


def per_source_address(limits: dict) -> int:
    """Connections per (source address, destination) pair to plan for: half the ephemeral range,
    because the kernel hands out even ports first and connect() slows sharply past that."""
    lo, hi = limits["ip_local_port_range"]
    return (hi - lo + 1) // 2


def plan(limits: dict, connections: int, backend: str = "asyncio", fd_limit: int | None = None,
         processes: int | None = None, selector: str = "epoll") -> Plan:
    fd_limit = fd_limit or usable_fd_limit(limits)
    held = BACKENDS[backend].held_fds
    if backend == "selectors" and selector != "epoll":
        held -= 1  # poll and select need no epoll fd
    per_process = fd_limit - held
    reasons, problems = [], []
    if backend == "selectors" and selector == "select":
        per_process = min(per_process, FD_SETSIZE - held)
        reasons.append(f"select() watches fds below FD_SETSIZE={FD_SETSIZE} only → {per_process:,} per process")
    if processes is None:
        processes = max(1, math.ceil(connections / per_process))
        if processes > 1:
            processes = math.ceil(connections / int(per_process * REUSEPORT_HEADROOM))
        reasons.append(f"{fd_limit:,} fds per process − {held} held = {per_process:,} connections "
                       f"per server process → {processes} server process(es)"
                       + (f" (with {100 - REUSEPORT_HEADROOM * 100:.0f}% headroom for SO_REUSEPORT's "
                          "uneven spread)" if processes > 1 else ""))
    per_source = per_source_address(limits)
    sources = max(1, math.ceil(connections / per_source))
    reasons.append(f"{per_source:,} connections per client source address (half of "
                   f"ip_local_port_range) → {sources} source address(es)")

    caps = {"fd limit": processes * per_process}
    if backend == "selectors" and selector == "select":
        caps = {"FD_SETSIZE": processes * per_process}
    free_files = limits["file_max"] - limits["file_nr"]
    caps["fs.file-max"] = free_files // 2  # both ends are on this machine
    caps["memory"] = limits["mem_available"] // BYTES_PER_CONNECTION
    if backend == "threaded":
        thread_room = min(limits["threads_max"], limits["pid_max"], limits["max_map_count"] // 2)
        caps["threads"] = max(0, thread_room - limits.get("threads_in_use", 0))
    binding = min(caps, key=caps.get)
    predicted = min(connections, caps[binding])
    if caps[binding] < connections:
        problems.append(f"{connections:,} connections exceed the {binding} cap of "
                        f"{caps[binding]:,} by {connections - caps[binding]:,}")
    else:
        binding = "target"
    return Plan(connections=connections, backend=backend, fd_limit=fd_limit, held_fds=held,
                per_process=per_process, per_source=per_source, server_processes=processes,
                source_addresses=sources, predicted_cap=predicted, binding=binding,
                reasons=reasons, problems=problems)


def format_limits(limits: dict, p: Plan) -> str:
    lo, hi = limits["ip_local_port_range"]
    gib = 2**30
    hard = f"{limits['nofile_hard']:,}" if limits["nofile_hard"] else "unlimited"
    soft = f"{limits['nofile_soft']:,}" if limits["nofile_soft"] else "unlimited"
    rows = [
        "Limits that cap connections on this machine",
        f"  RLIMIT_NOFILE (per process)    soft {soft}, hard {hard}",
        f"  fs.nr_open                     {limits['nr_open']:,} (ceiling for any hard limit)",
        f"  fs.file-max / file-nr          {limits['file_max']:,} / {limits['file_nr']:,} in use",
        f"  ip_local_port_range            {lo}-{hi} ({hi - lo + 1:,} ports per source address and destination)",
        f"  net.core.somaxconn             {limits['somaxconn']:,} (accept queue length)",
        f"  kernel.pid_max / threads-max   {limits['pid_max']:,} / {limits['threads_max']:,}",
        f"  vm.max_map_count               {limits['max_map_count']:,}",
        f"  memory                         {limits['mem_total'] / gib:.1f} GiB, {limits['mem_available'] / gib:.1f} GiB available",
        "",
        f"What they predict ({p.backend} backend)",
        f"  per server process             {p.per_process:,} connections = fd limit {p.fd_limit:,} − {p.held_fds} fds held",
        f"  per client source address      {p.per_source:,} (half the ephemeral range)",
        "  the port number                never a limit: each connection is its own 4-tuple on one port",
        "",
        f"For {p.connections:,} connections to one port",
        f"  server processes               {p.server_processes}",
        f"  client source addresses        {p.source_addresses} (127.0.0.2 and up: all of 127/8 is local)",
        f"  file handles (both ends)       {2 * p.connections:,} of {limits['file_max'] - limits['file_nr']:,} free",
        f"  memory (~{BYTES_PER_CONNECTION // 1024} KB a connection)    "
        f"{p.connections * BYTES_PER_CONNECTION / gib:.1f} GiB of {limits['mem_available'] / gib:.1f} GiB available",
    ]
    rows += [f"  why: {r}" for r in p.reasons]
    rows.append("  verdict: " + ("; ".join(p.problems) if p.problems else "fits: the fd limit per process, "
                                 "not the port, decides how many processes are needed"))
    return "\n".join(rows)
