"""The evidence of one run, gathered into the plain dict `rules.diagnose` reads: what the workers
counted and the target said (the master's status), the servers' gauges at the peak, the target's
processes at their most, the kernel's counters before and after, the machine's limits. Pure."""

from __future__ import annotations

from harness.core.rundoc import held_count


def gather(*, stopped_by: str | None, held: int, host: str, port: int, totals: dict, server_refused: dict,
           workers: list[dict], sources: list[str], servers: list[dict], processes: list[dict], limits: dict,
           kernel_before: dict | None, kernel_after: dict | None, **more) -> dict:
    """The evidence dict `rules.diagnose` reads, from what a run (or the web UI's master) counted."""
    lo, hi = limits["ip_local_port_range"]
    return {
        "stopped_by": stopped_by, "held": held, "target": {"host": host, "port": port, **more.pop("target", {})},
        "connects_failed": totals.get("connects_failed", {}), "echo_failed": totals.get("echo_failed", {}),
        "server_refused": server_refused, "evidence": totals.get("evidence", {}), "servers": servers,
        "processes": processes,
        "workers": [{"open": w.get("open", 0), "max_users": w.get("max_users", 0), "fds": w.get("fds", 0)}
                    for w in workers],
        "sources": sources, "ports_per_address": hi - lo + 1, "port_range": f"{lo}-{hi}", "limits": limits,
        "both_ends_local": host.startswith("127."), "kernel_before": kernel_before, "kernel_after": kernel_after,
        "kernel_deltas": counter_deltas(kernel_before, kernel_after) if kernel_before and kernel_after else {},
        **more,
    }


def run_evidence(*, config: dict, plan: dict, limits: dict, series: list[dict], status: dict,
                 stopped_by: str | None, host: str, port: int, servers: list[dict], processes: list[dict],
                 kernel_before: dict | None, kernel_after: dict | None, hosts: dict | None = None) -> dict:
    workers = status.get("workers", [])
    sources = list(config.get("source_addresses") or dict.fromkeys(a for w in workers for a in w.get("sources", [])))
    ev = gather(stopped_by=stopped_by or status.get("stopped_by"),
                  held=max(map(held_count(bool(config.get("target"))), series), default=0), host=host, port=port,
                  totals=status.get("totals", {}), server_refused=status.get("server_refusals", {}),
                  workers=workers, sources=sources, servers=servers, processes=processes, limits=limits,
                  kernel_before=kernel_before, kernel_after=kernel_after, plan=plan,
                  target={"protocol": config.get("protocol") or "echo"}, target_connections=config["connections"])
    if hosts:
        ev.update(on_hosts(hosts))
    ev["memory_floor"] = config.get("memory_reserve", 0)
    ev["mem_available_at_stop"] = min((p.get("mem_available_bytes", 0) for p in series), default=None)
    return ev


def on_hosts(hosts: dict) -> dict:
    """A run across test hosts: each client host's source ports are its own (its addresses under
    its own ip_local_port_range), and the server host's accept queue is the one read; all the
    hosts share this machine's kernel, so both ends still count against fs.file-max."""
    clients = [h for h in hosts["hosts"] if h["role"] == "client"]
    rows = []
    for h in clients:
        lo, hi = (int(x) for x in h["ip_local_port_range"].split())
        rows.append({"name": h["name"], "addresses": len(h["addresses"]), "ports_per_address": hi - lo + 1,
                     "port_range": f"{lo}-{hi}", "held": h["held"],
                     "failed": h["connects_failed"].get("EADDRNOTAVAIL", 0)})
    first = rows[0] if rows else {"ports_per_address": 0, "port_range": "?"}
    return {"client_hosts": rows, "server_host": hosts["server"], "both_ends_local": True,
            "sources": [a for h in clients for a in h["addresses"]], "ports_per_address": first["ports_per_address"],
            "port_range": first["port_range"]}


def counter_deltas(before: dict, after: dict) -> dict[str, int]:
    """How much each TcpExt counter grew between two kernel snapshots."""
    return {name: value - before["netstat"].get(name, 0) for name, value in after["netstat"].items()}
