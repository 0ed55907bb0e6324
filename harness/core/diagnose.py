"""The verdict: which limit stopped a run, from what the run read, as a pure function.

`diagnose(evidence)` takes plain dicts (what the workers and servers counted, what the target
processes held at their most, the kernel's counters before and after, the words the target sent)
and returns the limit, a one-sentence summary, the evidence behind it and the one-line fix. The
rules are tried in order (`RULES`); the first that holds names the limit. A run that reached its
target gets the next limit instead, and how far away it is.

Theory of operation, the order: the harness's own servers say why they refused (their errno);
the client side's errors are the client's (source ports, the workers' fds, the file table); then
the target process, read from /proc: at its fd limit, or below it but refusing (its own cap, often
in words); then the kernel's accept queue (a server that stopped calling accept()); then timeouts.
"""

from __future__ import annotations

from collections.abc import Callable

FD_LIMIT_SLACK = 2  # a process within this many fds of its limit is at it (a log file, a lost race)
# Servers that keep fds for themselves below their fd limit, by process name: redis sets maxclients
# to its fd limit less CONFIG_MIN_RESERVED_FDS (32) when the limit is low, and refuses the rest.
RESERVED_FDS = {"redis-server": 32}
# Where a server keeps its own connection limit, by process name, for the fix.
OWN_LIMITS = {"redis-server": "redis: --maxclients N (CONFIG SET maxclients N)",
              "nginx": "nginx: worker_connections in events {}, per worker process",
              "memcached": "memcached: -c N"}


def _n(x: int) -> str:
    return f"{x:,}"


def _verdict(limit: str, summary: str, fix: str, evidence: list[str], **extra) -> dict:
    return {"limit": limit, "summary": summary, "fix": fix, "evidence": evidence, **extra}


def _accepting(procs: list[dict]) -> list[dict]:
    """The processes that take connections: a listed process that is the parent of other listed
    processes (nginx's master, a forking server's parent) is left out when it gained no fds."""
    pids = {p["pid"] for p in procs}
    parents = {p.get("ppid") for p in procs if p.get("ppid") in pids}
    return [p for p in procs if p["pid"] not in parents or p.get("fds_gained", 0) > 0] or procs


def _who(procs: list[dict]) -> str:
    names = sorted({p["name"] for p in procs})
    return f"{'/'.join(names)} ({len(procs)} process{'es' if len(procs) != 1 else ''})"


def predicted_cap(procs: list[dict]) -> int | None:
    """What a local target can hold by its fd limits: each accepting process's soft limit less
    the fds it held before the run. None when a limit is unknown (unlimited)."""
    accepting = _accepting(procs)
    if not accepting or any(p.get("fd_soft") is None for p in accepting):
        return None
    return sum(_room(p) for p in accepting)


def _room(p: dict) -> int:
    """Connections one process can still take by its fd limit (and its own reserve, if known)."""
    room = p["fd_soft"] - p.get("fds_before", p["fds"])
    reserve = RESERVED_FDS.get(p["name"])
    return max(0, min(room, p["fd_soft"] - reserve) if reserve else room)


def memory_floor(ev: dict) -> dict | None:
    """The ramp stopped itself at the floor of MemAvailable it keeps free (no process was refused
    anything: the machine would have run out next)."""
    if ev.get("stopped_by") != "memory" or ev.get("server_refused"):
        return None
    floor, left = ev.get("memory_floor") or 0, ev.get("mem_available_at_stop")
    lines = [f"MemAvailable {_n(left or 0)} bytes ({(left or 0) / 2**30:.2f} GiB) at the stop, against a floor of "
             f"{_n(floor)} ({floor / 2**30:.2f} GiB) kept free"]
    if ev.get("held"):
        lines.append(f"{_n(ev['held'])} held when the ramp stopped")
    return _verdict("memory", "memory: the ramp stopped at the floor of MemAvailable it keeps free, before the machine "
                    "ran out", "hold fewer connections here (--connections), a leaner backend, or a machine with more "
                    "memory (--memory-reserve lowers the floor)", lines)


def own_servers(ev: dict) -> dict | None:
    refused = ev.get("server_refused") or {}
    if not refused:
        return None
    reason = max(refused, key=refused.get)
    servers = ev.get("servers", [])
    caps = ", ".join(sorted({f"{s['cap']:,}" for s in servers})) or "?"
    lines = [f"the servers refused {_n(sum(refused.values()))} connection(s): "
             + ", ".join(f"{k} {_n(v)}" for k, v in refused.items())]
    if servers:
        s = servers[0]
        lines.append(f"{len(servers)} server process(es) holding {', '.join(_n(x['open']) for x in servers)} "
                     f"of a cap of {caps} each (fd limit {_n(s['fd_soft'])} − {s['base_fds']} held)")
    if reason == "FD_SETSIZE":
        return _verdict("FD_SETSIZE", "select() cannot watch fd 1,024 or above (FD_SETSIZE)",
                        "use --selector epoll (or poll)", lines)
    if reason == "threads":
        return _verdict("threads", "no more threads could start in the threaded server",
                        "use an event-loop backend (selectors, asyncio, uvloop), or raise kernel.pid_max and "
                        "kernel.threads-max", lines)
    if reason in ("ENOMEM", "ENOBUFS"):
        return _verdict("memory", f"the kernel refused memory for new connections ({reason})",
                        "free memory, or hold fewer connections per machine", lines)
    if reason == "ENFILE":
        return _verdict("fs.file-max", "the machine's file table is full (ENFILE)",
                        "raise fs.file-max (harness tune --apply)", lines)
    return _verdict("server fd limit", f"every server process reached its fd limit ({reason}); the port did not",
                    "raise --fd-limit (up to the hard limit) or add --processes", lines)


def client_side(ev: dict) -> dict | None:
    failed = ev.get("connects_failed") or {}
    sources, per_address = ev.get("sources", []), ev.get("ports_per_address", 0)
    if failed.get("EADDRNOTAVAIL") and ev.get("client_hosts"):
        out = [h for h in ev["client_hosts"] if h["failed"]] or ev["client_hosts"]
        return _verdict(
            "source ports", f"client host {out[0]['name']} ran out of source ports: {out[0]['addresses']} "
            f"address(es) to {ev['target']['host']}:{ev['target']['port']}, {_n(out[0]['ports_per_address'])} "
            "ephemeral ports each (its own ip_local_port_range)",
            "add client hosts (--hosts N) or addresses per host, or widen the hosts' ip_local_port_range",
            [f"EADDRNOTAVAIL on {_n(failed['EADDRNOTAVAIL'])} connect(s) after {_n(ev['held'])} held"]
            + [f"client host {h['name']}: {h['addresses']} address(es) × {_n(h['ports_per_address'])} ports "
               f"({h['port_range']}), {_n(h['held'])} held, EADDRNOTAVAIL {_n(h['failed'])}" for h in ev["client_hosts"]])
    if failed.get("EADDRNOTAVAIL"):
        return _verdict(
            "source ports", f"the client ran out of source ports: {len(sources)} source address(es) to "
            f"{ev['target']['host']}:{ev['target']['port']}, {_n(per_address)} ephemeral ports each",
            "add source addresses (--source-addresses A,B,...; all of 127/8 is local) or widen "
            "net.ipv4.ip_local_port_range",
            [f"EADDRNOTAVAIL on {_n(failed['EADDRNOTAVAIL'])} connect(s) after {_n(ev['held'])} held",
             f"source addresses: {', '.join(sources[:8])}{' …' if len(sources) > 8 else ''}",
             f"ip_local_port_range {ev.get('port_range', '?')}: {_n(per_address)} ports per (source, destination)"])
    if failed.get("ENFILE"):
        return _verdict("fs.file-max", "the machine's file table is full (ENFILE in a Locust worker)",
                        "raise fs.file-max (harness tune --apply)",
                        [f"ENFILE on {_n(failed['ENFILE'])} connect(s); fs.file-max {_n(ev['limits']['file_max'])}"])
    if failed.get("EMFILE") or failed.get("worker-full"):
        workers = ev.get("workers", [])
        return _verdict("Locust workers' fd limit", "the Locust workers held all the users their fd limits allow",
                        "use more --workers or a higher --worker-fd-limit",
                        [f"{'EMFILE' if failed.get('EMFILE') else 'worker-full'} on "
                         f"{_n(failed.get('EMFILE', 0) + failed.get('worker-full', 0))} connect(s)",
                         f"{len(workers)} worker(s) holding {_n(sum(w.get('open', 0) for w in workers))} of "
                         f"{_n(sum(w.get('max_users', 0) for w in workers))} users"])
    return None


def _words(ev: dict) -> tuple[str, str]:
    """The first failure name that came with words from the target, and the words."""
    for name, words in (ev.get("evidence") or {}).items():
        if words:
            return name, words
    return "", ""


def target_fd_limit(ev: dict) -> dict | None:
    procs = _accepting(ev.get("processes") or [])
    at_limit = [p for p in procs if p.get("fd_soft") and p.get("fds_peak", p["fds"]) >= p["fd_soft"] - FD_LIMIT_SLACK]
    if not at_limit or not _failing(ev):
        return None
    p = max(at_limit, key=lambda q: q.get("fds_peak", q["fds"]))
    predicted = predicted_cap(ev.get("processes") or [])
    lines = [f"pid {p['pid']} ({p['name']}) held {_n(p.get('fds_peak', p['fds']))} fds at its limit of "
             f"{_n(p['fd_soft'])} (Max open files, /proc/{p['pid']}/limits)"]
    lines += [f"pid {q['pid']} ({q['name']}): {_n(q.get('fds_peak', q['fds']))} fds, limit {_n(q['fd_soft'])}"
              for q in procs if q is not p][:8]
    name, words = _words(ev)
    if words:
        lines.append(f"it said ({name}): {words!r}")
    return _verdict("target fd limit",
                    f"{_who(procs)} holds {_n(min(p.get('fds_peak', p['fds']), p['fd_soft']))} of its "
                    f"{_n(p['fd_soft'])} fds in pid {p['pid']}: the target's fd limit",
                    "raise the target's fd limit (ulimit -n, systemd LimitNOFILE=, nginx worker_rlimit_nofile)",
                    lines, process=p, predicted_cap=predicted)


def target_own_limit(ev: dict) -> dict | None:
    name, words = _words(ev)
    procs = _accepting(ev.get("processes") or [])
    failed, echo = ev.get("connects_failed", {}), ev.get("echo_failed", {})
    refused = sum(failed.get(k, 0) for k in ("EOF", "ECONNRESET", "error-reply", "unexpected-reply", "bad-response"))
    # connections it had answered, then closed: an echo failure that was no failed connect (a
    # first echo that fails counts as both)
    shed = sum(max(0, echo.get(k, 0) - failed.get(k, 0)) for k in ("EOF", "ECONNRESET"))
    if ev.get("stopped_by") not in ("EOF", "ECONNRESET"):
        shed = 0  # closes later in a run that stopped for another reason are not why it stopped
    closes = refused + shed
    if not words and not (procs and closes):
        return None
    lines = []
    if words:
        lines.append(f"it answered ({name}): {words!r}")
    if procs:
        lines += [f"pid {p['pid']} ({p['name']}) held {_n(p.get('fds_peak', p['fds']))} of its "
                  f"{_n(p['fd_soft']) if p.get('fd_soft') else 'unlimited'} fds" for p in procs][:8]
    lines.append(f"{_n(ev['held'])} connections held when it began to refuse")
    if "protected mode" in words:
        return _verdict("target refuses these clients",
                        "the target refuses every client in words: redis in protected mode answers only 127.0.0.1",
                        "start redis with --protected-mode no (on a trusted network), or connect from 127.0.0.1 only "
                        "(--source-addresses 127.0.0.1)", lines)
    names = sorted({p["name"] for p in procs})
    where = "; ".join(OWN_LIMITS[n] for n in names if n in OWN_LIMITS)
    fix = "raise the target's own connection limit" + (f" ({where})" if where else "")
    for p in procs:
        reserve = RESERVED_FDS.get(p["name"])
        if reserve and p.get("fd_soft") and ev["held"] >= p["fd_soft"] - reserve - FD_LIMIT_SLACK:
            return _verdict("target fd limit",
                            f"{p['name']} lowered its own connection limit to fit its fd limit of {_n(p['fd_soft'])} "
                            f"(it keeps {reserve} fds for itself) and refused the rest"
                            + (f" with {words.strip()!r}" if words else ""),
                            "raise the target's fd limit (ulimit -n, systemd LimitNOFILE=)", lines, process=p,
                            predicted_cap=predicted_cap(ev.get("processes") or []))
    return _verdict("target's own connection limit",
                    "the target's own connection limit, not the fd limit: "
                    + ("it closed connections it had answered to take new ones" if shed and not refused and not words else
                       "it accepted and then refused new connections"
                       + (f" with {words.strip()!r}" if words else " (closed them)"))
                    + (" while its fds were below its limit" if procs else ""),
                    fix, lines, predicted_cap=predicted_cap(ev.get("processes") or []))


def accept_queue(ev: dict) -> dict | None:
    grew = ev.get("kernel_deltas") or {}
    queues = (ev.get("kernel_after") or {}).get("listen", [])
    full = [q for q in queues if q["backlog"] and q["queued"] >= q["backlog"]]
    # The TcpExt counters are the whole machine's (another server's overflow counts too): the
    # target's own full accept queue is the evidence, the counters support it.
    if not full:
        return None
    lines = [f"TcpExt ListenOverflows +{_n(grew.get('ListenOverflows', 0))}, ListenDrops +{_n(grew.get('ListenDrops', 0))} "
             "during the run (/proc/net/netstat)"]
    where = f" on server host {ev['server_host']}" if ev.get("server_host") else ""
    lines += [f"accept queue of {q['local']}{where}: {_n(q['queued'])} waiting of a backlog of {_n(q['backlog'])} "
              "(ss -ltn)" for q in queues]
    if grew.get("SyncookiesSent"):
        lines.append(f"SYN cookies sent +{_n(grew['SyncookiesSent'])}")
    return _verdict("accept queue", "the target stopped calling accept(): its accept queue filled and the kernel "
                    "dropped the handshakes that followed",
                    "the server must accept (is it stuck, or at a limit it does not log?); a larger backlog "
                    "(listen(), net.core.somaxconn) only delays this", lines)


def timeouts(ev: dict) -> dict | None:
    failed = ev.get("connects_failed") or {}
    if not failed.get("timeout"):
        return None
    return _verdict("timeouts", "connects or first replies timed out: the target did not answer in time",
                    "find what the target waits on; or give it longer (--echo-timeout)",
                    [f"timeout on {_n(failed['timeout'])} connect(s) after {_n(ev['held'])} held"])


def _failing(ev: dict) -> bool:
    return bool(ev.get("connects_failed")) or ev.get("stopped_by") not in ("target", "timeout", "interrupted")


RULES: tuple[Callable[[dict], dict | None], ...] = (memory_floor, own_servers, client_side, target_fd_limit, target_own_limit,
                                                     accept_queue, timeouts)


def next_limit(ev: dict) -> dict:
    """For a run that reached its target: the nearest limit and how many connections away it is."""
    held = ev["held"]
    room: dict[str, int] = {}
    servers = ev.get("servers") or []
    if servers:
        room["server fd limit"] = sum(max(0, s["cap"] - s["open"]) for s in servers)
    procs = _accepting(ev.get("processes") or [])
    if procs and all(p.get("fd_soft") for p in procs):
        room["target fd limit"] = sum(max(0, p["fd_soft"] - p.get("fds_peak", p["fds"])) for p in procs)
    workers = ev.get("workers") or []
    if workers:
        room["Locust workers' fd limit"] = sum(max(0, w.get("max_users", 0) - w.get("open", 0)) for w in workers)
    if ev.get("sources") and ev.get("ports_per_address"):
        room["source ports"] = max(0, len(ev["sources"]) * ev["ports_per_address"] - held)
    limits = ev.get("limits") or {}
    if limits.get("file_max"):
        ends = 2 if ev.get("both_ends_local", True) else 1
        room["fs.file-max"] = max(0, (limits["file_max"] - limits.get("file_nr", 0)) // ends - held)
    if not room:
        return _verdict("target", f"target reached: {_n(held)} held", "", [])
    name = min(room, key=room.get)
    return _verdict("target", f"target reached: {_n(held)} held; the next limit is the {name}, "
                    f"{_n(room[name])} connections away", "", [f"room before {k}: {_n(v)}" for k, v in room.items()],
                    next={"limit": name, "room": room[name]})


def diagnose(ev: dict) -> dict:
    """The verdict for a run, from its evidence (see the module docstring for what it holds)."""
    if ev.get("stopped_by") == "target" and not ev.get("connects_failed"):
        verdict = next_limit(ev)
    else:
        verdict = next((v for rule in RULES if (v := rule(ev)) is not None), None) or _verdict(
            str(ev.get("stopped_by")), f"stopped by {ev.get('stopped_by')} at {_n(ev['held'])} held",
            "see the run's failures and logs", [f"failed connects: {ev.get('connects_failed') or {}}"])
    verdict["measured"] = ev["held"]
    verdict.setdefault("predicted_cap", predicted_cap(ev.get("processes") or []) if ev.get("processes") else None)
    kernel = ev.get("kernel_after") or {}
    notes = []
    mem = kernel.get("tcp_memory")
    if mem and mem["pages"] >= mem["pressure"]:
        notes.append(f"TCP memory {_n(mem['pages'])} pages is at or past tcp_mem pressure {_n(mem['pressure'])}")
    ct = kernel.get("conntrack")
    if ct and ct["max"] and ct["count"] >= 0.9 * ct["max"]:
        notes.append(f"nf_conntrack_count {_n(ct['count'])} of nf_conntrack_max {_n(ct['max'])}")
    if notes:
        verdict["evidence"] = verdict["evidence"] + notes
    return verdict
