"""`harness limits` as text: the limits read here and what the plan makes of them."""

from __future__ import annotations

from harness.core.planning import CLIENT_FD_RESERVE, Plan


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
        f"  memory                         {limits['mem_total'] / gib:.1f} GiB, {limits['mem_available'] / gib:.1f} GiB available"
        + (f" (cgroup {cg['path']}: {cg['limit'] / gib:.2f} GiB limit, {cg['room'] / gib:.2f} GiB room)"
           if (cg := limits.get("memory_cgroup")) else ""),
        "",
        f"What they predict ({p.backend} backend)",
        f"  per server process             {p.per_process:,} connections = fd limit {p.fd_limit:,} − {p.held_fds} fds held",
        f"  per client source address      {p.per_source:,} (half the ephemeral range)",
        "  the port number                never a limit: each connection is its own 4-tuple on one port",
        "",
        f"For {p.connections:,} connections to one port",
        f"  server processes               {p.server_processes}",
        f"  Locust workers                 {p.workers} ({p.users_per_worker:,} users each: fd limit "
        f"{p.worker_fd_limit:,} − {CLIENT_FD_RESERVE} for Locust)",
        f"  client source addresses        {p.source_addresses} ({p.sources_per_worker} per worker: 127.0.i+1.2 …; "
        "all of 127/8 is local)",
        f"  file handles (both ends)       {2 * p.connections:,} of {limits['file_max'] - limits['file_nr']:,} free",
        f"  memory (~{p.connection_bytes // 1024} KB a connection)    "
        f"{p.connections * p.connection_bytes / gib:.1f} GiB of {limits['mem_available'] / gib:.1f} GiB available",
    ]
    rows += [f"  why: {r}" for r in p.reasons]
    rows.append("  verdict: " + ("; ".join(p.problems) if p.problems else "fits: the fd limit per process, "
                                 "not the port, decides how many processes are needed"))
    return "\n".join(rows)


def format_target(host: str, port: int, procs: list[dict], predicted: int | None, p: Plan) -> str:
    """`harness limits --target`: the processes behind the port, their limits, what they can hold."""
    from harness.core.diagnose import _accepting, _room

    accepting = {q["pid"] for q in _accepting(procs)}
    rows = [f"Target {host}:{port}"]
    if not procs:
        rows.append("  no process on this machine listens there (a remote target, or nothing is listening): "
                    "its limits cannot be read from here")
    for q in procs:
        soft = f"{q['fd_soft']:,}" if q.get("fd_soft") else "unlimited"
        role = (f"room for {_room(q):,} more connections" if q["pid"] in accepting and q.get("fd_soft")
                else "parent of the others: takes no connections" if q["pid"] not in accepting else "no fd limit")
        cgroup = "".join(f", cgroup {k.replace('_', '.')} {v:,}" for k, v in q.items() if k in ("memory_max", "pids_max"))
        rows.append(f"  pid {q['pid']:<7} {q['name']:<14} fd limit {soft:>9}, holds {q['fds']:,} fds, "
                    f"{q['threads']} thread(s), RSS {q['rss_bytes'] / 2**20:,.1f} MiB{cgroup}: {role}")
    if predicted is not None:
        rows.append(f"  predicted cap by its fd limits: {predicted:,} connections (each process's limit less the "
                    "fds it holds now)")
    rows.append(f"For {p.connections:,} connections: {p.workers} Locust worker(s), {p.source_addresses} source "
                f"address(es); binding: {p.binding}" + (f" ({p.problems[0]})" if p.problems else ""))
    rows += [f"  why: {r}" for r in p.reasons]
    return "\n".join(rows)
