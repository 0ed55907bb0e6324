"""`harness check`: a short self-check that every backend stops exactly at its fd limit.

Each backend runs with a small fd limit; the check fills it past its cap and reads back, from the
server's own gauges, where it stopped and how it answered the clients it refused. Then several
processes share one port and together hold more than one process's limit allows.
"""

from __future__ import annotations

import os
import tempfile
import time

from harness.clients.probe import fill
from harness.core.backends import BACKENDS, SHARE_MODES, ServerConfig
from harness.core.records import total_refusals
from servers.gauges import ROLE_ACCEPTOR
from servers.supervisor import ServerGroup

CHECK_FD_LIMIT = 64


def gauges_showing(group: ServerGroup, result, timeout: float = 5.0) -> list[dict]:
    """The servers' gauges once they show what a `fill` saw (its refusals and the connections it
    holds): they are published every TICK_S. After `timeout`, as they are."""
    deadline = time.monotonic() + timeout
    while True:
        rows = group.board.read_all()
        open_now = sum(r["open"] for r in rows if r["role"] != ROLE_ACCEPTOR)
        if (sum(total_refusals(rows).values()) >= result.refused and open_now == len(result.held)) \
                or time.monotonic() > deadline:
            return rows
        time.sleep(0.02)


def check_one(config: ServerConfig, extra: int = 20) -> dict:
    """Fill one server group past its cap; report cap, held, refusals and answer times."""
    fd, log_file = tempfile.mkstemp(prefix="harness-check-", suffix=".log")
    os.close(fd)
    with ServerGroup(config, log_file=log_file) as group:
        servers = [g for g in group.board.read_all() if g["role"] != ROLE_ACCEPTOR]
        cap = sum(g["cap"] for g in servers)
        result = fill(config.host, group.port, cap + extra)
        rows = gauges_showing(group, result)
        reasons = total_refusals(rows)
        outcome = {
            "backend": config.backend, "share": config.share, "processes": config.processes,
            "fd_limit": group.fd_limit, "held_fds": servers[0]["base_fds"], "cap": cap,
            "held": len(result.held),
            "server_open": sum(r["open"] for r in rows if r["role"] != ROLE_ACCEPTOR),
            "refused": result.refused, "unanswered": result.unanswered,
            "slowest_answer_ms": round(result.slowest_answer_s * 1000, 1), "refused_by": dict(reasons),
        }
        result.close()
    with open(log_file) as f:
        outcome["log_lines"] = len(f.readlines())
    os.unlink(log_file)
    outcome["ok"] = (outcome["held"] == outcome["cap"] == outcome["server_open"]
                     and outcome["unanswered"] == 0 and outcome["refused"] == extra)
    return outcome


def run_check(out=print) -> bool:
    out(f"Self-check: each backend with a soft fd limit of {CHECK_FD_LIMIT}, filled past its cap")
    ok = True
    for name in BACKENDS:
        r = check_one(ServerConfig(backend=name, port=0, fd_limit=CHECK_FD_LIMIT))
        ok &= r["ok"]
        out(f"  {'ok  ' if r['ok'] else 'FAIL'} {name:<9} held {r['held']} = fd limit {r['fd_limit']} − "
            f"{r['held_fds']} fds it holds; refused {r['refused']} "
            f"({', '.join(f'{k} {v}' for k, v in r['refused_by'].items())}), each answered in "
            f"≤ {r['slowest_answer_ms']} ms, none left hanging; {r['log_lines']} log line(s)" if r["unanswered"] == 0 else
            f"  FAIL {name}: {r['unanswered']} refused clients left hanging")
    out(f"Several processes on ONE port, each with fd limit {CHECK_FD_LIMIT}:")
    for share in SHARE_MODES:
        r = check_one(ServerConfig(backend="asyncio", port=0, processes=3, share=share,
                                   fd_limit=CHECK_FD_LIMIT))
        # SO_REUSEPORT spreads by hash, so a full process refuses while others have room.
        good = r["held"] > CHECK_FD_LIMIT and r["unanswered"] == 0 and (share == "reuseport" or r["ok"])
        ok &= good
        out(f"  {'ok  ' if good else 'FAIL'} share={share:<9} 3 processes held {r['held']} connections "
            f"on one port (one process's limit: {CHECK_FD_LIMIT}; their caps add up to {r['cap']})")
    out("Verdict: " + ("every backend stopped at its fd limit minus the fds it holds, and more processes "
                       "on the same port held more: file descriptors, not port numbers, set the cap."
                       if ok else "some checks failed (see FAIL above)."))
    return ok
