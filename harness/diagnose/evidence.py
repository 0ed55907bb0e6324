"""The evidence of one run, gathered into the plain dict `rules.diagnose` reads: what the workers
counted and the target said (the master's status), the servers' gauges at the peak, the target's
processes at their most, the kernel's counters before and after, the machine's limits. Pure."""

from __future__ import annotations

from harness.diagnose import kernel
from harness.results.rundoc import held_count


def run_evidence(*, config: dict, plan: dict, limits: dict, series: list[dict], status: dict,
                 stopped_by: str | None, host: str, port: int, servers: list[dict], processes: list[dict],
                 kernel_before: dict | None, kernel_after: dict | None) -> dict:
    totals = status.get("totals", {})
    lo, hi = limits["ip_local_port_range"]
    sources = [a for w in status.get("workers", []) for a in w.get("sources", [])]
    if config.get("source_addresses"):
        sources = list(config["source_addresses"])
    else:
        sources = sorted(set(sources), key=sources.index)
    peak = max(map(held_count(bool(config.get("target"))), series), default=0)
    return {
        "stopped_by": stopped_by or status.get("stopped_by"), "held": peak,
        "target_connections": config["connections"],
        "target": {"host": host, "port": port, "protocol": config.get("protocol") or "echo"},
        "connects_failed": totals.get("connects_failed", {}), "echo_failed": totals.get("echo_failed", {}),
        "server_refused": status.get("server_refusals", {}), "evidence": totals.get("evidence", {}),
        "servers": servers, "processes": processes,
        "workers": [{"open": w.get("open", 0), "max_users": w.get("max_users", 0), "fds": w.get("fds", 0)}
                    for w in status.get("workers", [])],
        "sources": sources, "ports_per_address": hi - lo + 1, "port_range": f"{lo}-{hi}",
        "limits": limits, "plan": plan, "both_ends_local": host.startswith("127."),
        "kernel_before": kernel_before, "kernel_after": kernel_after,
        "kernel_deltas": kernel.deltas(kernel_before, kernel_after) if kernel_before and kernel_after else {},
    }
