"""Which sysctls bind for N connections on this machine, and what they need: pure.

`needed(limits, sysctls, connections)` takes the limits (`read_limits()`), the current values of
the sysctls below (as text, the way /proc/sys has them; a missing one is None, e.g. conntrack not
loaded) and a target, and returns one row per sysctl: its current and needed value, whether it
binds (must change for N), and why, in a sentence. Nothing is read or written here; `harness
tune` (`harness.run.tune`) shows the rows as `sysctl -w` lines and, only with --apply, writes them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from harness.core import planning

SYSCTLS = ("fs.file-max", "fs.nr_open", "net.ipv4.ip_local_port_range", "net.core.somaxconn", "net.ipv4.tcp_mem",
           "net.netfilter.nf_conntrack_max")
FILE_HEADROOM = 1.05  # room above N's files for everything else the machine opens meanwhile
FILES_SPARE = 10_000
BACKLOG = 4096  # the harness's servers listen with this backlog (servers.contract.ServerConfig)


@dataclass
class Row:
    name: str
    current: str | None
    needed: str | None
    binds: bool
    why: str

    def as_dict(self) -> dict:
        return asdict(self)


def needed(limits: dict, sysctls: dict[str, str | None], connections: int) -> list[Row]:
    rows = []
    files = math.ceil((limits["file_nr"] + 2 * connections) * FILE_HEADROOM) + FILES_SPARE
    file_max = int(sysctls["fs.file-max"] or limits["file_max"])
    rows.append(Row("fs.file-max", str(file_max), str(max(file_max, files)), file_max < files,
                    f"both ends of every connection are on this machine: 2 files each, {connections:,} connections "
                    f"and the {limits['file_nr']:,} files open now, with 5% and {FILES_SPARE:,} spare"))
    nr_open = int(sysctls["fs.nr_open"] or limits["nr_open"])
    per_process = planning.usable_fd_limit(limits)
    rows.append(Row("fs.nr_open", str(nr_open), str(nr_open), False,
                    f"the most a process's fd limit may be set to; the hard limit here is {per_process:,} and the "
                    "harness plans server processes and workers within it (raising the hard limit needs "
                    "CAP_SYS_RESOURCE, not this)"))
    ports = sysctls["net.ipv4.ip_local_port_range"] or "{} {}".format(*limits["ip_local_port_range"])
    lo, hi = (int(x) for x in ports.split())
    addresses = math.ceil(connections / ((hi - lo + 1) // 2))
    rows.append(Row("net.ipv4.ip_local_port_range", f"{lo} {hi}", f"{lo} {hi}", False,
                    f"{hi - lo + 1:,} ports per (source address, destination); the workers bind "
                    f"{addresses:,} source addresses of 127/8 for {connections:,} connections, so the range does "
                    "not bind"))
    somaxconn = int(sysctls["net.core.somaxconn"] or limits["somaxconn"])
    rows.append(Row("net.core.somaxconn", str(somaxconn), str(max(somaxconn, BACKLOG)), somaxconn < BACKLOG,
                    f"each server process listens with a backlog of {BACKLOG:,}; the kernel caps it at somaxconn"))
    tcp_mem = sysctls["net.ipv4.tcp_mem"]
    rows.append(Row("net.ipv4.tcp_mem", tcp_mem, tcp_mem, False,
                    "pages TCP may use for buffers: an idle connection holds none (its echo is in flight a few "
                    "milliseconds every --echo-interval), so it does not bind for held connections"))
    conntrack = sysctls["net.netfilter.nf_conntrack_max"]
    if conntrack is None:
        rows.append(Row("net.netfilter.nf_conntrack_max", None, None, False,
                        "nf_conntrack is not loaded: nothing tracks connections"))
    else:
        tracking = limits.get("conntrack_count", 0) > 0
        need = max(int(conntrack), connections) if tracking else int(conntrack)
        rows.append(Row("net.netfilter.nf_conntrack_max", conntrack, str(need), need > int(conntrack),
                        "a rule tracks connections: each one is an entry" if tracking else
                        "loaded, but no rule needs it (count 0): connections are not tracked"))
    return rows


def sysctl_lines(rows: list[Row]) -> list[str]:
    """The `sysctl -w` lines a user would type for the rows that bind."""
    return [f"sysctl -w {r.name}={r.needed!r}" if " " in (r.needed or "") else f"sysctl -w {r.name}={r.needed}"
            for r in rows if r.binds]
