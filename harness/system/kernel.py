"""The kernel's side of a port, read from /proc and ss: the TCP counters that say a server stopped
accepting (TcpExt ListenOverflows, ListenDrops, SyncookiesSent), the listening socket's accept
queue against its backlog, TCP memory against tcp_mem, and conntrack where it is loaded."""

from __future__ import annotations

import subprocess

from harness.system.ss import run_ss

COUNTERS = ("ListenOverflows", "ListenDrops", "SyncookiesSent", "TCPTimeouts", "TCPAbortOnData")


def _in(netns: str | None) -> list[str]:
    """The command prefix that runs a reader in test host `netns` (a process of its own: setns in
    a gevent master would move every greenlet's new sockets too)."""
    return ["ip", "netns", "exec", netns] if netns else []


def netstat(path: str = "/proc/net/netstat", netns: str | None = None) -> dict[str, int]:
    """TcpExt counters by name (the network namespace's own; a run reads them before and after)."""
    if netns:
        lines = subprocess.run([*_in(netns), "cat", path], capture_output=True, text=True, check=True,
                               start_new_session=True).stdout.splitlines()
    else:
        with open(path) as f:
            lines = f.read().splitlines()
    out: dict[str, int] = {}
    for names, values in zip(lines[::2], lines[1::2]):
        prefix, _, names = names.partition(":")
        if prefix == "TcpExt":
            out.update(zip(names.split(), (int(v) for v in values.split(":", 1)[1].split())))
    return {name: out.get(name, 0) for name in COUNTERS}


def listen_queue(port: int, netns: str | None = None) -> list[dict]:
    """Each listening socket on `port`: its accept queue (Recv-Q: handshakes done, not yet
    accepted) and its backlog (Send-Q of a LISTEN socket)."""
    out = run_ss("-Hltn", f"( sport = :{port} )", netns=netns).decode()
    rows = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[0] == "LISTEN":
            rows.append({"queued": int(fields[1]), "backlog": int(fields[2]), "local": fields[3]})
    return rows


def tcp_memory() -> dict:
    """TCP's buffer memory in pages against net.ipv4.tcp_mem (low, pressure, high)."""
    pages = 0
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                fields = line.split()
                pages = int(fields[fields.index("mem") + 1])
    with open("/proc/sys/net/ipv4/tcp_mem") as f:
        low, pressure, high = (int(x) for x in f.read().split())
    return {"pages": pages, "low": low, "pressure": pressure, "high": high}


def conntrack(netns: str | None = None) -> dict | None:
    """nf_conntrack in the network namespace (`netns`: a test host's): its entries, the machine's
    max, and what it refused (/proc/net/stat/nf_conntrack, one row per CPU: `drop` is a new
    connection dropped with the table full, `early_drop` an unanswered entry evicted for room,
    `insert_failed` a clash). None where nf_conntrack is not loaded."""
    try:
        if netns:
            out = subprocess.run([*_in(netns), "cat", "/proc/sys/net/netfilter/nf_conntrack_count",
                                  "/proc/sys/net/netfilter/nf_conntrack_max", "/proc/net/stat/nf_conntrack"],
                                 capture_output=True, text=True, check=True, start_new_session=True).stdout
            count, maximum, *table = out.splitlines()
        else:
            with open("/proc/sys/net/netfilter/nf_conntrack_count") as f:
                count = f.read()
            with open("/proc/sys/net/netfilter/nf_conntrack_max") as f:
                maximum = f.read()
            with open("/proc/net/stat/nf_conntrack") as f:
                table = f.read().splitlines()
    except (OSError, subprocess.CalledProcessError, ValueError):
        return None
    names = table[0].split()
    totals = dict.fromkeys(("drop", "early_drop", "insert_failed"), 0)
    for row in table[1:]:
        for name, value in zip(names, row.split()):
            if name in totals:
                totals[name] += int(value, 16)
    return {"count": int(count), "max": int(maximum), **totals}


def snapshot(port: int, netns: str | None = None) -> dict:
    """Everything above at one moment, for one port; the counters and the queue of the test host
    `netns` where the server runs there (tcp_mem and conntrack's max are the machine's)."""
    return {"netstat": netstat(netns=netns), "listen": listen_queue(port, netns), "tcp_memory": tcp_memory(),
            "conntrack": conntrack(netns), "oom_kills": oom_kills()}


def oom_kills() -> int:
    """How many processes the kernel's OOM killer has ended since boot (/proc/vmstat oom_kill)."""
    with open("/proc/vmstat") as f:
        return next((int(line.split()[1]) for line in f if line.startswith("oom_kill ")), 0)
