"""`harness tour [--quick] [STEP]`: the seed article's claims, each shown live on loopback.

Each step is a small experiment that returns its evidence (what `ss`, /proc and errno said) and a
one-line verdict; the narration prints them. Tests assert on the evidence, never on the prose.
Steps run in order, or one at a time by name; `--quick` keeps the last one small.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable

from harness.clients.experiments import (
    exhaust_ports,
    four_tuples,
    hello,
    serve_two_ports,
)
from harness.clients.probe import fill
from harness.core.backends import ServerConfig
from harness.run.check import gauges_showing
from harness.system.files import utc_stamp, write_json_atomic
from harness.system.ss import local_ports_in_use, run_ss
from servers.gauges import ROLE_ACCEPTOR
from servers.supervisor import ServerGroup

ARTICLE_PORT = 9999


@dataclass
class Step:
    name: str
    title: str
    evidence: dict
    lines: list[str] = field(default_factory=list)
    verdict: str = ""
    ok: bool = True


def ss(*args: str, flags: str = "-Htn") -> list[str]:
    out = run_ss(flags, *args).decode()
    return [line for line in out.splitlines() if line.strip()]


def _free(port: int) -> int:
    """`port` if nothing listens on it, else a free one (the tour must not fail on a busy 9999)."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            return 0


def step_demo(quick: bool) -> Step:
    config = ServerConfig(backend="threaded", port=_free(ARTICLE_PORT), upper=True)
    with ServerGroup(config) as group:
        reply = hello("127.0.0.1", group.port, "Hello socket!")
        rows = ss("-l", f"( sport = :{group.port} )")
    return Step("demo", "The article's own demo: a SocketServer TCPServer that sends back upper-cased data",
                {"port": group.port, "sent": "Hello socket!", "reply": reply, "listen_rows": rows},
                [f"server: harness serve threaded --upper --port {group.port}  (or try: nc 127.0.0.1 {group.port})",
                 "client sent: Hello socket!", f"server replied: {reply}", *[f"ss: {r}" for r in rows]],
                f"the server answered {reply!r}", reply == "HELLO SOCKET!")


def step_four_tuple(quick: bool) -> Step:
    n = 300
    with ServerGroup(ServerConfig(backend="selectors", port=0)) as a, \
            ServerGroup(ServerConfig(backend="selectors", port=0)) as b:
        held = fill("127.0.0.1", a.port, n)
        # local 127.0.0.1:port exactly: another program's client may have the same number as its
        # ephemeral source port on another 127/8 address, and is not this server's connection
        rows = ss("state", "established", f"( src 127.0.0.1:{a.port} )")
        locals_ = {r.split()[2] for r in rows}
        remotes = {r.split()[3] for r in rows}
        held.close()
        tuples = four_tuples(("127.0.0.1", a.port), ("127.0.0.1", b.port))
    ev = {"connections": n, "server_rows": len(rows), "distinct_local": sorted(locals_),
          "distinct_remote": len(remotes), "attempts": tuples}
    ok = (len(rows) == n and locals_ == {f"127.0.0.1:{a.port}"} and len(remotes) == n
          and tuples["duplicate"]["result"] == "EADDRNOTAVAIL"
          and tuples["other_destination"]["result"] == tuples["other_source"]["result"] == "connected")
    t = tuples
    return Step("4-tuple", "A connection is a 4-tuple: one local port, many remote (address, port)", ev,
                [f"{n} connections to port {a.port}: ss shows {len(rows)} established rows, local side "
                 f"{', '.join(sorted(locals_))} for all, {len(remotes)} distinct remote (address, port)",
                 *[f"ss: {r}" for r in rows[:3]], "ss: ...",
                 f"duplicate 4-tuple {tuple(t['duplicate']['local'])} → {tuple(t['duplicate']['remote'])}: "
                 f"{t['duplicate']['result']}",
                 f"same source port to another destination {tuple(t['other_destination']['remote'])}: "
                 f"{t['other_destination']['result']}",
                 f"same source port from another address {tuple(t['other_source']['local'])}: {t['other_source']['result']}"],
                "every accepted socket shares the listening port; only the whole 4-tuple must be unique", ok)


def _listeners(port: int) -> tuple[list[str], list[int]]:
    """The LISTEN rows on `port` (ss -ltnp) and the pids that hold them."""
    rows = ss(f"( sport = :{port} )", flags="-Hltnp")
    return rows, sorted(set(int(p) for p in re.findall(r"pid=(\d+)", " ".join(rows))))


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        m = re.fullmatch(r"socket:\[(\d+)\]", target)
        if m:
            inodes.add(int(m.group(1)))
    return inodes


def _ss_inodes(port: int) -> set[int]:
    return {int(m.group(1)) for r in ss("-e", "state", "established", f"( src 127.0.0.1:{port} )")
            if (m := re.search(r"ino:(\d+)", r))}


def step_fd(quick: bool) -> Step:
    with ServerGroup(ServerConfig(backend="asyncio", port=0)) as group:
        held = fill("127.0.0.1", group.port, 5)
        pid = group.board.read(0)["pid"]
        time.sleep(0.1)
        in_proc = _socket_inodes(pid)
        in_ss = _ss_inodes(group.port)
        listing = sorted(f"{fd} -> {os.readlink(f'/proc/{pid}/fd/{fd}')}" for fd in os.listdir(f"/proc/{pid}/fd")
                         if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"))
        held.close()
    ok = len(in_ss) == 5 and in_ss <= in_proc
    return Step("fd", "A socket is a file descriptor", {"pid": pid, "ss_inodes": sorted(in_ss),
                "proc_socket_inodes": sorted(in_proc), "proc_fds": listing},
                [f"/proc/{pid}/fd of the server:", *[f"  {line}" for line in listing],
                 f"ss -e (established on port {group.port}): ino {', '.join(map(str, sorted(in_ss)))}"],
                "each accepted connection is one socket:[inode] fd in the server, the same inode ss shows", ok)


def step_sharing(quick: bool) -> Step:
    with ServerGroup(ServerConfig(backend="selectors", port=0, processes=3, share="fork")) as group:
        listen, holders = _listeners(group.port)
        children = sorted(g["pid"] for g in group.board.read_all())
    with ServerGroup(ServerConfig(backend="asyncio", port=0, processes=1, share="handoff")) as group:
        rows_all = group.board.read_all()
        worker = next(g["pid"] for g in rows_all if g["role"] != ROLE_ACCEPTOR)
        acceptor = next(g["pid"] for g in rows_all if g["role"] == ROLE_ACCEPTOR)
        with socket.create_connection(("127.0.0.1", group.port)) as client:
            client.sendall(b"handed over")
            reply = client.recv(64)
            time.sleep(0.1)
            conn_inodes = _ss_inodes(group.port)
            in_worker = conn_inodes & _socket_inodes(worker)
            in_acceptor = conn_inodes & _socket_inodes(acceptor)
    ev = {"fork": {"listen_rows": listen, "holders": holders, "children": children},
          "handoff": {"acceptor": acceptor, "worker": worker, "connection_inodes": sorted(conn_inodes),
                      "in_worker": sorted(in_worker), "in_acceptor": sorted(in_acceptor), "reply": reply.decode()}}
    ok = (len(listen) == 1 and holders == children and len(children) == 3 and reply == b"handed over"
          and len(in_worker) == 1 and not in_acceptor)
    return Step("sharing", "Sharing a socket between processes: inherited by fork, handed over with SCM_RIGHTS", ev,
                [f"fork: one listening socket, held by {len(holders)} processes: ss {listen[0] if listen else ''}",
                 f"handoff: acceptor pid {acceptor} accepted, sent the fd with sendmsg(SCM_RIGHTS) to worker pid "
                 f"{worker}, which echoed {reply!r}",
                 f"  the connection's inode {sorted(conn_inodes)} is in /proc/{worker}/fd and not in /proc/{acceptor}/fd"],
                "a socket is an fd, and fds move between processes (inherited, or passed over a Unix socket)", ok)


def step_ports(quick: bool) -> Step:
    with ServerGroup(ServerConfig(backend="selectors", port=0, processes=3, share="reuseport")) as group:
        rows, pids = _listeners(group.port)
    two = serve_two_ports()
    try:
        replies = [hello("127.0.0.1", p, f"port {p}") for p in two.ports]
        rows2 = [r for r in ss(flags="-Hltnp") if f"pid={two.pid}," in r]
    finally:
        two.stop()
    ev = {"reuseport": {"listen_rows": rows, "pids": pids}, "one_process": {"pid": two.pid, "ports": two.ports,
          "listen_rows": rows2, "replies": replies}}
    ok = len(rows) == 3 and len(pids) == 3 and len(rows2) == 2 and replies == [f"port {p}" for p in two.ports]
    return Step("ports", "Process and port are not tied one to one", ev,
                [f"SO_REUSEPORT: {len(rows)} listening sockets on port {group.port}, in processes {pids}",
                 *[f"ss: {r}" for r in rows],
                 f"one process (pid {two.pid}) listening on ports {two.ports}, echoing on both",
                 *[f"ss: {r}" for r in rows2]],
                "several processes can serve one port, and one process several ports", ok)


def step_ephemeral(quick: bool) -> Step:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        lo_sys, hi_sys = (int(x) for x in f.read().split())
    # A per-socket range (IP_LOCAL_PORT_RANGE) of 100 ports, the one other sockets hold fewest of now
    # (none, on a quiet machine), so the tour exhausts it in a second; the ports another process
    # holds are counted (held_by_others). A machine busy with thousands of connections may hold a
    # port in every block.
    used = local_ports_in_use(lo_sys, hi_sys)
    blocks = range(max(lo_sys, 40000), hi_sys - 99, 100)
    lo = min(blocks, key=lambda p: len(used.intersection(range(p, p + 100))))
    hi = lo + 99
    with ServerGroup(ServerConfig(backend="selectors", port=0, fd_limit=1024)) as group:
        ev = exhaust_ports(("127.0.0.1", group.port), "127.0.0.1", lo, hi, "127.0.0.2")
    ev["system_range"] = [lo_sys, hi_sys]
    ok = ev["connected"] == ev["distinct_ports"] == hi - lo + 1 - len(ev["held_by_others"]) \
        and ev["then"] == "EADDRNOTAVAIL" and ev["other_source"]["result"] == "connected"
    return Step("ephemeral", "The client side pays one port per connection", ev,
                [f"ip_local_port_range {lo_sys}-{hi_sys}: {hi_sys - lo_sys + 1:,} ports per (source address, destination)",
                 f"with a per-socket range of {lo}-{hi} ({hi - lo + 1} ports): {ev['connected']} connections from "
                 f"127.0.0.1, each on its own port, then {ev['then']}"
                 + (f" ({len(ev['held_by_others'])} port(s) of the range held by other sockets)"
                    if ev["held_by_others"] else ""),
                 f"from 127.0.0.2 to the same destination: {ev['other_source']['result']} "
                 f"(port {ev['other_source'].get('local', ['', '?'])[1]})"],
                "ephemeral ports cap a (source, destination) pair, not the server; another source address lifts it", ok)


def step_fd_limit(quick: bool) -> Step:
    if not quick:
        from harness.run.config import RunConfig
        from harness.run.proof import run_proof
        code = run_proof(RunConfig())
        return Step("fd-limit", "The fd limit, not 65,535, caps connections (the default proof)", {"exit": code},
                    [], "see the proof's summary above", code == 0)
    limit = 1024
    with ServerGroup(ServerConfig(backend="selectors", port=0, fd_limit=limit), log_file=os.devnull) as group:
        g = group.board.read(0)
        result = fill("127.0.0.1", group.port, limit + 30)
        [after] = gauges_showing(group, result)
        held = len(result.held)
        result.close()
    ev = {"fd_limit": limit, "held_fds": g["base_fds"], "held": held, "refused_EMFILE": after["refused_EMFILE"],
          "unanswered": result.unanswered}
    ok = held == limit - g["base_fds"] and after["refused_EMFILE"] == result.refused > 0
    return Step("fd-limit", "The fd limit, not 65,535, caps connections", ev,
                [f"a server process with soft RLIMIT_NOFILE {limit} (it holds {g['base_fds']} fds before any client)",
                 f"held {held} connections, then refused {after['refused_EMFILE']} with EMFILE (each closed at once)"],
                f"it stopped at {limit} − {g['base_fds']} = {held}: the fd limit, not the port, set the cap", ok)


def step_capture(quick: bool, out_dir: str | None = None) -> Step:
    """Where tcpdump is installed: capture three connections and their echoes on lo to a pcap."""
    tcpdump = shutil.which("tcpdump")
    if tcpdump is None:
        return Step("capture", "A capture of the first connections (optional)", {"skipped": "no tcpdump"},
                    ["tcpdump is not installed (apt-get install tcpdump): skipped"], "skipped", True)
    pcap = os.path.join(out_dir or "/tmp", f"tour-{utc_stamp()}.pcap")
    with ServerGroup(ServerConfig(backend="selectors", port=0)) as group:
        # -s 512: headers and these short payloads. At tcpdump's default of 262,144 bytes a packet,
        # its 2 MiB capture ring holds ~8 packets, and on a busy machine the kernel dropped 28 of 60.
        dump = subprocess.Popen([tcpdump, "-i", "lo", "-U", "--immediate-mode", "-s", "512", "-n", "-w", pcap,
                                 f"tcp port {group.port}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            _wait_for_line(dump.stderr, "listening on", timeout=10.0)  # tcpdump says when it captures
            for _ in range(3):
                hello("127.0.0.1", group.port, "captured")
            # Stop only once the file holds them: tcpdump writes each packet as it reads it (-U),
            # and on a busy machine it may not have read them yet.
            deadline = time.monotonic() + 5.0
            while len(_syns(lines := _read_pcap(tcpdump, pcap))) < 3 and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            dump.send_signal(2)
            dump.wait(10)
    lines = _read_pcap(tcpdump, pcap)
    syns = _syns(lines)
    ev = {"pcap": pcap, "packets": len(lines), "syn": len(syns), "first": lines[:4]}
    return Step("capture", "A capture of the first connections, as the article does with Wireshark", ev,
                [f"tcpdump -i lo 'tcp port {group.port}' → {pcap}: {len(lines)} packets, {len(syns)} SYNs",
                 *[f"  {line}" for line in lines[:4]]],
                f"three connections on the wire, each from its own source port (open {pcap} in Wireshark)",
                len(syns) == 3)


def _read_pcap(tcpdump: str, pcap: str) -> list[str]:
    return subprocess.run([tcpdump, "-n", "-r", pcap], capture_output=True, text=True).stdout.splitlines()


def _syns(lines: list[str]) -> list[str]:
    return [line for line in lines if "Flags [S]" in line]


def _wait_for_line(stream, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([stream], [], [], max(0.0, deadline - time.monotonic()))[0]:
            line = stream.readline()
            if text in line or not line:
                return
    raise TimeoutError(f"no {text!r} line within {timeout:.0f} s")


STEPS: dict[str, Callable[..., Step]] = {
    "demo": step_demo, "4-tuple": step_four_tuple, "fd": step_fd, "sharing": step_sharing,
    "ports": step_ports, "ephemeral": step_ephemeral, "fd-limit": step_fd_limit, "capture": step_capture,
}


def run_tour(names: list[str], quick: bool, out_dir: str | None, print_=print) -> tuple[list[Step], str | None]:
    steps = []
    for i, name in enumerate(names, 1):
        step = STEPS[name](quick, out_dir) if name == "capture" else STEPS[name](quick)
        print_(f"\n{i}. {step.title}")
        for line in step.lines:
            print_(f"   {line}")
        print_(f"   → {'' if step.ok else 'NOT SHOWN: '}{step.verdict}")
        steps.append(step)
    path = None
    if out_dir:
        doc = {"schema": 1, "kind": "tour", "started_at": utc_stamp(), "quick": quick,
               "steps": [{"name": s.name, "title": s.title, "verdict": s.verdict, "ok": s.ok, "lines": s.lines,
                          "evidence": s.evidence} for s in steps]}
        path = str(write_json_atomic(os.path.join(out_dir, f"tour-{doc['started_at']}.json"), doc))
    return steps, path
