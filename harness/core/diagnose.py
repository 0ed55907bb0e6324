"""The verdict: which limit stopped a run, from what the run read, as a pure function.

`diagnose(evidence)` takes the `Evidence` of a run (what the workers and servers counted, what the
target's processes held at their most, the kernel's counters before and after, the words the
target sent) and returns a `Verdict`: the limit, how it showed (`cause`, one word), a one-sentence
summary, the evidence behind it and the one-line fix. The rules are tried in order (`RULES`); the
first that holds names the limit. A run that reached its target gets the next limit instead, and
how far away it is.

Theory of operation, the order: the ramp's own memory floor; the harness's own servers say why they
refused (their errno); the client side's errors are the client's (source ports, the workers' fds,
the file table); then the target process, read from /proc: at its fd limit, or below it but
refusing (its own cap, often in words); then the kernel's accept queue (a server that stopped
calling accept()); then timeouts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from harness.core.costs import Costs, whole
from harness.core.costs import describe as describe_costs
from harness.core.evidence import Evidence
from harness.core.records import ProcessInfo
from harness.core.words import EOF_NAME, TIMEOUT, WORKER_FULL

# How a limit showed, one word each: what a test or a dashboard reads instead of the prose.
FD_LIMIT = "fd-limit"  # a process met its fd limit (EMFILE)
REFUSED = "refused"  # the target accepted new connections and closed (or answered no to) them
SHED = "shed"  # the target closed connections it had answered, to take new ones
STOPPED_ACCEPTING = "stopped-accepting"  # the accept queue filled: nobody called accept()
SOURCE_PORTS = "source-ports"
FILE_TABLE = "file-table"
MEMORY = "memory"
THREADS = "threads"
FD_SETSIZE_CAUSE = "fd-setsize"
TIMEOUTS = "timeouts"
CONNTRACK = "conntrack"  # the kernel's connection tracking table was full: new connections dropped
REACHED = "reached"  # the run held what it asked for
UNKNOWN = "unknown"
# The verdicts whose predicted cap is the target's fd room where no cost prediction named one
FD_ROOM_VERDICTS = ("target", "target fd limit", "target's own connection limit")

FD_LIMIT_SLACK = 2  # a process within this many fds of its limit is at it (a log file, a lost race)
FD_ROOM_FILLED = 0.97  # ...or, holding more than one fd a connection, filled this share of its room
# Servers that keep fds for themselves below their fd limit, by process name: redis sets maxclients
# to its fd limit less CONFIG_MIN_RESERVED_FDS (32) when the limit is low, and refuses the rest.
RESERVED_FDS = {"redis-server": 32}
# Where a server keeps its own connection limit, by process name, for the fix.
OWN_LIMITS = {"redis-server": "redis: --maxclients N (CONFIG SET maxclients N)",
              "nginx": "nginx: worker_connections in events {}, per worker process",
              "memcached": "memcached: -c N",
              "haproxy": "haproxy: maxconn in global and in each frontend",
              "mosquitto": "mosquitto: max_connections in mosquitto.conf, per listener"}
CLOSES = (EOF_NAME, "ECONNRESET")
REFUSALS_IN_WORDS = (EOF_NAME, "ECONNRESET", "error-reply", "unexpected-reply", "bad-response")


@dataclass
class Verdict:
    limit: str  # the limit that stopped the run ("target" when it reached its target)
    cause: str  # how it showed: one of the words above
    summary: str
    fix: str
    evidence: list[str]
    measured: int = 0  # connections held
    predicted_cap: int | None = None
    process: ProcessInfo | None = None  # the target process at its limit
    next: dict | None = field(default=None)  # a run that reached its target: {"limit", "room"}

    def as_dict(self) -> dict:
        return asdict(self)


def _n(x: int) -> str:
    return f"{x:,}"


def _accepting(procs: list[ProcessInfo]) -> list[ProcessInfo]:
    """The processes that take connections: a listed process that is the parent of other listed
    processes (nginx's master, a forking server's parent) is left out when it gained no fds."""
    pids = {p["pid"] for p in procs}
    parents = {p.get("ppid") for p in procs if p.get("ppid") in pids}
    return [p for p in procs if p["pid"] not in parents or p.get("fds_gained", 0) > 0] or procs


def _who(procs: list[ProcessInfo]) -> str:
    names = sorted({p["name"] for p in procs})
    return f"{'/'.join(names)} ({len(procs)} process{'es' if len(procs) != 1 else ''})"


def predicted_cap(procs: list[ProcessInfo], fds_per_connection: float = 1.0) -> int | None:
    """What a local target can hold by its fd limits: each accepting process's soft limit less
    the fds it held before the run, over the fds a connection costs it (a TCP proxy holds two).
    None when a limit is unknown (unlimited)."""
    accepting = _accepting(procs)
    if not accepting or any(p.get("fd_soft") is None for p in accepting):
        return None
    return sum(int(_room(p) / fds_per_connection) for p in accepting)


def fds_per_connection(ev: Evidence) -> float:
    """The fds a connection costs the serving processes, as the run measured it (1 where it did not)."""
    fds = whole(_serving(ev)[0].get("fds"), within=0.1)
    return round(fds, 2) if fds and fds >= 1 else 1.0


def _target_cap(ev: Evidence) -> int | None:
    return predicted_cap(ev.processes, fds_per_connection(ev))


def _room(p: ProcessInfo) -> int:
    """Connections one process can still take by its fd limit (and its own reserve, if known)."""
    room = p["fd_soft"] - p.get("fds_before", p["fds"])
    reserve = RESERVED_FDS.get(p["name"])
    return max(0, min(room, p["fd_soft"] - reserve) if reserve else room)


def _peak_fds(p: ProcessInfo) -> int:
    return p.get("fds_peak", p["fds"])


def memory_floor(ev: Evidence) -> Verdict | None:
    """The ramp stopped itself at the floor of MemAvailable it keeps free (no process was refused
    anything: the machine would have run out next)."""
    if ev.stopped_by != "memory" or ev.server_refused:
        return None
    floor, left = ev.memory_reserve, ev.mem_available_at_stop or 0
    cgroup = (ev.limits.get("memory_cgroup") or {}).get("path")
    what = f"memory available (MemAvailable, or cgroup {cgroup}'s room under its limit)" if cgroup else "MemAvailable"
    lines = [f"{what} {_n(left)} bytes ({left / 2**30:.2f} GiB) at the stop, against a floor of "
             f"{_n(floor)} ({floor / 2**30:.2f} GiB) kept free"]
    if ev.held:
        lines.append(f"{_n(ev.held)} held when the ramp stopped")
    summary = "memory: the ramp stopped at the floor of MemAvailable it keeps free, before the machine ran out"
    costs, prediction = _serving(ev)
    if costs.get("rss_bytes"):
        who = f"{ev.backend} ({len(ev.servers)} process{'es' if len(ev.servers) != 1 else ''})" if ev.backend \
            else _who(_accepting(ev.processes))
        caps = (prediction or {}).get("caps", {})
        fd_cap = caps.get("fd limit") or sum(s["cap"] for s in ev.servers) or None
        memory_cap = caps.get("memory (MemAvailable)") or ev.held  # predicted early, or where the floor was met
        summary = (f"memory: {who} costs {costs['rss_bytes'] / 1024:,.0f} KB per {'TLS ' if ev.tls else ''}"
                   f"connection: memory binds at ~{_n(memory_cap)}"
                   + (f", before its fd limit at {_n(fd_cap)}" if fd_cap and fd_cap > memory_cap else ""))
    return Verdict("memory", MEMORY, summary, "hold fewer connections here (--connections), a leaner backend, or a "
                   "machine with more memory (--memory-reserve lowers the floor)", lines)


def oom_killed(ev: Evidence) -> Verdict | None:
    """A server process the kernel's OOM killer ended while it held connections: memory."""
    killed = [f for f in ev.faults if f.get("kind") == "oom-kill"]
    if not killed:
        return None
    gone = [p for p in ev.processes if p.get("gone")]
    p = max(gone, key=lambda q: q.get("rss_bytes", 0)) if gone else None
    costs, _ = _serving(ev)
    lines = [f"{f['what']} at {f['t']:.1f} s: {_n(f['connections_lost'])} connections lost" for f in killed]
    if p:
        lines.append(f"its last RSS {p.get('rss_bytes', 0) / 2**20:,.0f} MiB"
                     + (f", its cgroup's memory.max {p['memory_max'] / 2**20:,.0f} MiB" if p.get("memory_max") else ""))
    if costs.get("rss_bytes"):
        lines.append(f"each connection cost it {costs['rss_bytes'] / 1024:,.1f} KB of RSS")
    who = f"{p['name']} (pid {p['pid']})" if p else killed[0]["what"].split(" died")[0]
    return Verdict("memory", MEMORY, f"memory: the OOM killer ended {who} at {_n(ev.held)} held",
                   "give the server more memory (its cgroup's memory.max, the machine's), or make each connection "
                   "cost it less", lines, process=p)


def own_servers(ev: Evidence) -> Verdict | None:
    refused = ev.server_refused
    if not refused:
        return None
    reason = max(refused, key=refused.get)
    caps = ", ".join(sorted({f"{s['cap']:,}" for s in ev.servers})) or "?"
    lines = [f"the servers refused {_n(sum(refused.values()))} connection(s): "
             + ", ".join(f"{k} {_n(v)}" for k, v in refused.items())]
    if ev.servers:
        s = ev.servers[0]
        lines.append(f"{len(ev.servers)} server process(es) holding {', '.join(_n(x['open']) for x in ev.servers)} "
                     f"of a cap of {caps} each (fd limit {_n(s['fd_soft'])} − {s['base_fds']} held)")
    if reason == "FD_SETSIZE":
        return Verdict("FD_SETSIZE", FD_SETSIZE_CAUSE, "select() cannot watch fd 1,024 or above (FD_SETSIZE)",
                       "use --selector epoll (or poll)", lines)
    if reason == "threads":
        return Verdict("threads", THREADS, "no more threads could start in the threaded server",
                       "use an event-loop backend (selectors, asyncio, uvloop), or raise kernel.pid_max and "
                       "kernel.threads-max", lines)
    if reason in ("ENOMEM", "ENOBUFS"):
        return Verdict("memory", MEMORY, f"the kernel refused memory for new connections ({reason})",
                       "free memory, or hold fewer connections per machine", lines)
    if reason == "ENFILE":
        return Verdict("fs.file-max", FILE_TABLE, "the machine's file table is full (ENFILE)",
                       "raise fs.file-max (harness tune --apply)", lines)
    return Verdict("server fd limit", FD_LIMIT, f"every server process reached its fd limit ({reason}); the port did "
                   "not", "raise --fd-limit (up to the hard limit) or add --processes", lines)


def client_side(ev: Evidence) -> Verdict | None:
    failed = ev.connects_failed
    where = f"{ev.host}:{ev.port}"
    if failed.get("EADDRNOTAVAIL") and ev.client_hosts:
        out = [h for h in ev.client_hosts if h.failed] or ev.client_hosts
        return Verdict(
            "source ports", SOURCE_PORTS, f"client host {out[0].name} ran out of source ports: {out[0].addresses} "
            f"address(es) to {where}, {_n(out[0].ports_per_address)} ephemeral ports each (its own "
            "ip_local_port_range)",
            "add client hosts (--hosts N) or addresses per host, or widen the hosts' ip_local_port_range",
            [f"EADDRNOTAVAIL on {_n(failed['EADDRNOTAVAIL'])} connect(s) after {_n(ev.held)} held"]
            + [f"client host {h.name}: {h.addresses} address(es) × {_n(h.ports_per_address)} ports "
               f"({h.port_range}), {_n(h.held)} held, EADDRNOTAVAIL {_n(h.failed)}" for h in ev.client_hosts])
    if failed.get("EADDRNOTAVAIL"):
        sources = ev.sources
        return Verdict(
            "source ports", SOURCE_PORTS, f"the client ran out of source ports: {len(sources)} source address(es) to "
            f"{where}, {_n(ev.ports_per_address)} ephemeral ports each",
            "add source addresses (--source-addresses A,B,...; all of 127/8 is local) or widen "
            "net.ipv4.ip_local_port_range",
            [f"EADDRNOTAVAIL on {_n(failed['EADDRNOTAVAIL'])} connect(s) after {_n(ev.held)} held",
             f"source addresses: {', '.join(sources[:8])}{' …' if len(sources) > 8 else ''}",
             f"ip_local_port_range {ev.port_range}: {_n(ev.ports_per_address)} ports per (source, destination)"])
    if failed.get("ENFILE"):
        return Verdict("fs.file-max", FILE_TABLE, "the machine's file table is full (ENFILE in a Locust worker)",
                       "raise fs.file-max (harness tune --apply)",
                       [f"ENFILE on {_n(failed['ENFILE'])} connect(s); fs.file-max {_n(ev.limits['file_max'])}"])
    if failed.get("EMFILE") or failed.get(WORKER_FULL):
        return Verdict("Locust workers' fd limit", FD_LIMIT, "the Locust workers held all the users their fd limits "
                       "allow", "use more --workers or a higher --worker-fd-limit",
                       [f"{'EMFILE' if failed.get('EMFILE') else WORKER_FULL} on "
                        f"{_n(failed.get('EMFILE', 0) + failed.get(WORKER_FULL, 0))} connect(s)",
                        f"{len(ev.workers)} worker(s) holding {_n(sum(w['open'] for w in ev.workers))} of "
                        f"{_n(sum(w['max_users'] for w in ev.workers))} users"])
    return None


def _words(ev: Evidence) -> tuple[str, str]:
    """The first failure name that came with words from the target, and the words."""
    for name, words in ev.words.items():
        if words:
            return name, words
    return "", ""


def target_fd_limit(ev: Evidence) -> Verdict | None:
    procs = _accepting(ev.processes)
    per = fds_per_connection(ev)

    def at_limit(p: ProcessInfo) -> bool:
        if not p.get("fd_soft"):
            return False
        if _peak_fds(p) >= p["fd_soft"] - FD_LIMIT_SLACK:
            return True
        # a proxy sizes its own limit to its fds and keeps a few of them in reserve (HAProxy's
        # maxconn from ulimit -n): it filled nearly all the room its fd limit gave it
        room = _room(p)
        return per > 1 and room > 0 and p.get("fds_gained", 0) >= FD_ROOM_FILLED * room

    at_limit = [p for p in procs if at_limit(p)]
    if not at_limit or not _failing(ev):
        return None
    p = max(at_limit, key=_peak_fds)
    lines = [f"pid {p['pid']} ({p['name']}) held {_n(_peak_fds(p))} fds at its limit of "
             f"{_n(p['fd_soft'])} (Max open files, /proc/{p['pid']}/limits)"]
    lines += [f"pid {q['pid']} ({q['name']}): {_n(_peak_fds(q))} fds, limit {_n(q['fd_soft'])}"
              for q in procs if q is not p][:8]
    name, words = _words(ev)
    if words:
        lines.append(f"it said ({name}): {words!r}")
    return Verdict("target fd limit", FD_LIMIT,
                   f"{_who(procs)} holds {_n(min(_peak_fds(p), p['fd_soft']))} of its {_n(p['fd_soft'])} fds in pid "
                   f"{p['pid']}" + (f", {per:g} fds a connection" if per > 1 else "") + ": the target's fd limit",
                   "raise the target's fd limit (ulimit -n, systemd LimitNOFILE=, nginx worker_rlimit_nofile)",
                   lines, process=p, predicted_cap=_target_cap(ev))


def target_own_limit(ev: Evidence) -> Verdict | None:
    name, words = _words(ev)
    procs = _accepting(ev.processes)
    failed, echo = ev.connects_failed, ev.echo_failed
    refused = sum(failed.get(k, 0) for k in REFUSALS_IN_WORDS)
    # connections it had answered, then closed: an echo failure that was no failed connect (a
    # first echo that fails counts as both); only closes as the ramp stopped are why it stopped
    shed = sum(max(0, echo.get(k, 0) - failed.get(k, 0)) for k in CLOSES) if ev.stopped_by in CLOSES else 0
    if not words and not (procs and refused + shed):
        return None
    lines = [f"it answered ({name}): {words!r}"] if words else []
    lines += [f"pid {p['pid']} ({p['name']}) held {_n(_peak_fds(p))} of its "
              f"{_n(p['fd_soft']) if p.get('fd_soft') else 'unlimited'} fds" for p in procs][:8]
    lines.append(f"{_n(ev.held)} connections held when it began to refuse")
    if "protected mode" in words:
        return Verdict("target refuses these clients", REFUSED,
                       "the target refuses every client in words: redis in protected mode answers only 127.0.0.1",
                       "start redis with --protected-mode no (on a trusted network), or connect from 127.0.0.1 "
                       "only (--source-addresses 127.0.0.1)", lines)
    names = sorted({p["name"] for p in procs})
    where = "; ".join(OWN_LIMITS[n] for n in names if n in OWN_LIMITS)
    fix = "raise the target's own connection limit" + (f" ({where})" if where else "")
    for p in procs:
        reserve = RESERVED_FDS.get(p["name"])
        if reserve and p.get("fd_soft") and ev.held >= p["fd_soft"] - reserve - FD_LIMIT_SLACK:
            return Verdict("target fd limit", REFUSED,
                           f"{p['name']} lowered its own connection limit to fit its fd limit of {_n(p['fd_soft'])} "
                           f"(it keeps {reserve} fds for itself) and refused the rest"
                           + (f" with {words.strip()!r}" if words else ""),
                           "raise the target's fd limit (ulimit -n, systemd LimitNOFILE=)", lines, process=p,
                           predicted_cap=_target_cap(ev))
    cause = SHED if shed and not refused and not words else REFUSED
    how = ("it closed connections it had answered to take new ones" if cause == SHED else
           "it accepted and then refused new connections" + (f" with {words.strip()!r}" if words else " (closed them)"))
    return Verdict("target's own connection limit", cause,
                   "the target's own connection limit, not the fd limit: " + how
                   + (" while its fds were below its limit" if procs else ""),
                   fix, lines, predicted_cap=_target_cap(ev))


def accept_queue(ev: Evidence) -> Verdict | None:
    """The target's accept queue filled: it stopped calling accept(). Where it had accepted
    connections first while its fds had room, that is a limit of its own (HAProxy's maxconn pauses
    its listener); where it never accepted, it is stuck."""
    grew = ev.kernel_deltas
    queues = (ev.kernel_after or {}).get("listen", [])
    peak = ev.accept_queue
    full = [q for q in queues if q["backlog"] and q["queued"] >= q["backlog"]]
    # The TcpExt counters are the whole machine's (another server's overflow counts too): the
    # target's own full accept queue is the evidence, the counters support it.
    if not full and not (peak and peak["backlog"] and peak["queued"] >= peak["backlog"]):
        return None
    lines = [f"TcpExt ListenOverflows +{_n(grew.get('ListenOverflows', 0))}, ListenDrops "
             f"+{_n(grew.get('ListenDrops', 0))} during the run (/proc/net/netstat)"]
    where = f" on server host {ev.server_host}" if ev.server_host else ""
    if peak:
        lines.append(f"accept queue of {peak['local']}{where} at {peak['t']:.1f} s: {_n(peak['queued'])} waiting of a "
                     f"backlog of {_n(peak['backlog'])} (ss -ltn)")
    lines += [f"accept queue of {q['local']}{where} at the end: {_n(q['queued'])} waiting of a backlog of "
              f"{_n(q['backlog'])} (ss -ltn)" for q in queues]
    if grew.get("SyncookiesSent"):
        lines.append(f"SYN cookies sent +{_n(grew['SyncookiesSent'])}")
    procs = _accepting(ev.processes)
    with_room = [p for p in procs if not p.get("fd_soft") or _peak_fds(p) < p["fd_soft"] - FD_LIMIT_SLACK]
    if ev.held and procs and len(with_room) == len(procs):
        lines += [f"pid {p['pid']} ({p['name']}) held {_n(_peak_fds(p))} of its "
                  f"{_n(p['fd_soft']) if p.get('fd_soft') else 'unlimited'} fds" for p in procs][:8]
        names = sorted({p["name"] for p in procs})
        where_limit = "; ".join(OWN_LIMITS[n] for n in names if n in OWN_LIMITS)
        return Verdict("target's own connection limit", STOPPED_ACCEPTING,
                       f"the target's own connection limit (it stopped accepting at {_n(ev.held)}): {_who(procs)} "
                       "left new connections in its accept queue while its fds had room",
                       "raise the target's own connection limit" + (f" ({where_limit})" if where_limit else ""),
                       lines, process=procs[0] if len(procs) == 1 else None, predicted_cap=_target_cap(ev))
    return Verdict("accept queue", STOPPED_ACCEPTING, "the target stopped calling accept(): its accept queue filled "
                   "and the kernel dropped the handshakes that followed",
                   "the server must accept (is it stuck, or at a limit it does not log?); a larger backlog "
                   "(listen(), net.core.somaxconn) only delays this", lines)


def conntrack_full(ev: Evidence) -> Verdict | None:
    """A stateful firewall rule tracks every connection, and the table was full: the kernel drops
    each new connection's SYN ("nf_conntrack: table full, dropping packet"), so the clients see
    connects time out. Read where the server runs (a test host's own table)."""
    after = (ev.kernel_after or {}).get("conntrack")
    before = (ev.kernel_before or {}).get("conntrack") or {}
    if not after:
        return None
    dropped = after.get("drop", 0) - before.get("drop", 0)
    if dropped <= 0:
        return None
    where = f" in server host {ev.server_host}" if ev.server_host else ""
    lines = [f"nf_conntrack_count {_n(after['count'])} of nf_conntrack_max {_n(after['max'])}{where} "
             "(/proc/sys/net/netfilter)",
             f"{_n(dropped)} new connection(s) dropped with the table full, {_n(after.get('early_drop', 0) - before.get('early_drop', 0))} "
             "entries evicted early (/proc/net/stat/nf_conntrack: drop, early_drop)"]
    if ev.connects_failed.get(TIMEOUT):
        lines.append(f"timeout on {_n(ev.connects_failed[TIMEOUT])} connect(s) after {_n(ev.held)} held")
    return Verdict("conntrack table", CONNTRACK,
                   f"the kernel's connection tracking table was full{where}: {_n(after['count'])} of "
                   f"{_n(after['max'])} entries, and it dropped {_n(dropped)} new connection(s) at {_n(ev.held)} held",
                   "raise net.netfilter.nf_conntrack_max (sysctl -w net.netfilter.nf_conntrack_max=N), or keep the port "
                   "out of tracking (an nft 'notrack' rule in a raw-priority prerouting chain)", lines)


def timeouts(ev: Evidence) -> Verdict | None:
    failed = ev.connects_failed
    if not failed.get(TIMEOUT):
        return None
    return Verdict("timeouts", TIMEOUTS, "connects or first replies timed out: the target did not answer in time",
                   "find what the target waits on; or give it longer (--echo-timeout)",
                   [f"timeout on {_n(failed[TIMEOUT])} connect(s) after {_n(ev.held)} held"])


def _failing(ev: Evidence) -> bool:
    return bool(ev.connects_failed) or ev.stopped_by not in ("target", "time-bound", "interrupted")


RULES: tuple[Callable[[Evidence], Verdict | None], ...] = (
    oom_killed, memory_floor, own_servers, client_side, conntrack_full, target_fd_limit, target_own_limit, accept_queue,
    timeouts)


def next_limit(ev: Evidence) -> Verdict:
    """For a run that reached its target: the nearest limit and how many connections away it is."""
    held = ev.held
    room: dict[str, int] = {}
    if ev.servers:
        room["server fd limit"] = sum(max(0, s["cap"] - s["open"]) for s in ev.servers)
    procs = _accepting(ev.processes)
    if procs and all(p.get("fd_soft") for p in procs):
        room["target fd limit"] = sum(max(0, p["fd_soft"] - _peak_fds(p)) for p in procs)
    if ev.workers:
        # the run's peak, not the workers' own last `open`: a report sent as their users stop says fewer
        room["Locust workers' fd limit"] = max(0, sum(w["max_users"] for w in ev.workers) - held)
    if ev.sources and ev.ports_per_address:
        room["source ports"] = max(0, len(ev.sources) * ev.ports_per_address - held)
    if ev.limits.get("file_max"):
        ends = 2 if ev.both_ends_local else 1
        room["fs.file-max"] = max(0, (ev.limits["file_max"] - ev.limits.get("file_nr", 0)) // ends - held)
    if ev.connection_bytes and ev.mem_available_at_stop is not None:
        room["memory floor"] = max(0, ev.mem_available_at_stop - ev.memory_reserve) // ev.connection_bytes
    if not room:
        return Verdict("target", REACHED, f"target reached: {_n(held)} held", "", [])
    name = min(room, key=room.get)
    return Verdict("target", REACHED, f"target reached: {_n(held)} held; the next limit is the {name}, "
                   f"{_n(room[name])} connections away", "", [f"room before {k}: {_n(v)}" for k, v in room.items()],
                   next={"limit": name, "room": room[name]})


def diagnose(ev: Evidence) -> Verdict:
    """The verdict for a run, from its evidence (see the module docstring for the order)."""
    if ev.stopped_by == "target" and not ev.connects_failed:
        verdict = next_limit(ev)
    else:
        verdict = next((v for rule in RULES if (v := rule(ev)) is not None), None) or Verdict(
            str(ev.stopped_by), UNKNOWN, f"stopped by {ev.stopped_by} at {_n(ev.held)} held",
            "see the run's failures and logs", [f"failed connects: {ev.connects_failed or {}}"])
    verdict.measured = ev.held
    _, prediction = _serving(ev)
    # made before the cap was met, and of the limit that stopped the run ('fd limit' of a 'target fd limit')
    if (prediction and prediction.get("cap") and verdict.cause != REACHED
            and prediction["binding"].split()[0] in verdict.limit.split()):
        verdict.predicted_cap = prediction["cap"]
    # the target's fd room, where the target's own limits stopped the run or it reached its count: no
    # memory, thread, timeout or client-side cap's prediction
    if verdict.predicted_cap is None and ev.processes and verdict.limit in FD_ROOM_VERDICTS:
        verdict.predicted_cap = _target_cap(ev)
    verdict.evidence += cost_lines(ev) + kernel_notes(ev.kernel_after or {})
    return verdict


def _serving(ev: Evidence) -> tuple[dict, dict | None]:
    serving = ev.serving or {}
    return serving.get("costs") or {}, serving.get("prediction")


def cost_lines(ev: Evidence) -> list[str]:
    """What a connection cost the serving processes, and what that predicted before the cap."""
    costs, prediction = _serving(ev)
    lines = []
    if costs:
        lines.append(f"the processes serving the port cost {describe_costs(Costs(**costs))} (/proc, from the "
                     "first sample to the hold)")
    ramp_cpu = ((ev.serving or {}).get("ramp_costs") or {}).get("cpu_s")
    if ev.tls and (ramp_cpu or costs.get("cpu_s")):
        lines += handshake_lines(ev, ramp_cpu or costs["cpu_s"])
    if prediction and prediction.get("binding"):
        line = (f"predicted at {_n(prediction['held'])} held ({prediction['t']:.0f} s in): the {prediction['binding']}"
                f" binds at {_n(prediction['cap'])}")
        if ev.stopped_by != "target":  # the run met a limit: how far off the prediction was
            off = (100.0 * (ev.held - prediction["cap"]) / prediction["cap"]) if prediction["cap"] else 0.0
            line += f"; measured {_n(ev.held)} ({off:+.1f}%)"
        lines.append(line)
    return lines


HANDSHAKES_BIND = 0.8  # a ramp this close to the handshakes' ceiling was held back by them


def handshake_lines(ev: Evidence, cpu_s: float) -> list[str]:
    """A TLS server's CPU per connection is its handshake's: the most handshakes a second its
    processes can make (one core each: a single-threaded event loop, or Python's GIL), and whether
    that, not the connects, set the ramp's rate."""
    processes = len(_accepting(ev.processes)) or len(ev.servers) or 1
    cores = min(processes, ev.limits.get("cpus", 1) or 1)
    ceiling = cores / cpu_s
    lines = [f"the target spends {cpu_s * 1000:.2f} ms of CPU per handshake: at most {ceiling:,.0f} a second on its "
             f"{cores} core(s)"]
    if ev.connect_rate >= HANDSHAKES_BIND * ceiling:
        lines.append(f"handshakes, not connects, set the ramp's rate: {ev.connect_rate:,.0f} connections a second "
                     f"against that ceiling")
    return lines


def kernel_notes(kernel: dict) -> list[str]:
    """What the kernel was close to, whatever stopped the run: TCP memory, the conntrack table."""
    notes = []
    mem = kernel.get("tcp_memory")
    if mem and mem["pages"] >= mem["pressure"]:
        notes.append(f"TCP memory {_n(mem['pages'])} pages is at or past tcp_mem pressure {_n(mem['pressure'])}")
    ct = kernel.get("conntrack")
    if ct and ct["max"] and ct["count"] >= 0.9 * ct["max"]:
        notes.append(f"nf_conntrack_count {_n(ct['count'])} of nf_conntrack_max {_n(ct['max'])}")
    return notes
