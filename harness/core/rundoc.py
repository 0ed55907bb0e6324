"""Turning a run's samples into its result document (`run.json`, its schema in `harness.core.schema`)
and its summary.

Everything here is a pure function of what the run recorded and was given: the configuration and
the plan as dicts, the machine's limits and metadata, the sampler's series, the master's status
and Locust's own CSV rows already parsed (`harness.results.locust_files`). So a document can be
rebuilt or checked from files and numbers, without running anything.
"""

from __future__ import annotations

from harness.core.records import MasterStatus
from harness.core.schema import SCHEMA, map_stopped_by, validate
from harness.core.words import WORKER_FULL, WORKER_FULL_DETAIL


def build_document(*, config: dict, plan: dict, limits: dict, machine: dict, port: int, started_at: str,
                   duration: float, series: list[dict], status: MasterStatus, locust_stats: dict,
                   latency_series: list[dict], files: dict, stop_reason: str | None, master_code: int | None,
                   error: str | None, faults: list[dict], memory_before: int | None = None,
                   host: str = "127.0.0.1", target: dict | None = None, diagnosis: dict | None = None,
                   hosts: dict | None = None, serving: dict | None = None) -> dict:
    held = held_count(target is not None)
    peak = max(series, key=held) if series else None
    first = series[0] if series else None
    peak_n = held(peak) if peak else 0
    totals = status.totals
    echo_failed = totals.echo_failed

    def per_conn(key: str, base: int | None) -> float:
        if not peak or not peak_n or base is None:
            return 0.0
        return (peak[key] - base) / peak_n

    stopped_by = stop_reason or map_stopped_by(status.stopped_by)
    count_key = "server_open" if target is None else "locust_held"  # counted every second
    ramp_s = _ramp_seconds(series, peak_n, count_key)
    doc = {
        "schema": SCHEMA, "started_at": started_at, "duration_s": round(duration, 2),
        "backend": config["backend"] if target is None else "target", "share": config["share"],
        "selector": config["selector"], "host": host, "family": 6 if ":" in host else 4,
        "port": port, "server_processes": plan["server_processes"], "server_fd_limit": plan["fd_limit"],
        "server_held_fds": plan["held_fds"], "workers": plan["workers"], "worker_fd_limit": plan["worker_fd_limit"],
        "user_mode": config["user_mode"],
        "source_addresses": [a for w in status.workers for a in w.get("sources", [])],
        "target_connections": config["connections"], "peak_connections": peak_n,
        "peak_connections_servers": max((p["server_open"] for p in series), default=0),
        "peak_connections_by_process": peak["server_open_by_process"] if peak else [],
        "predicted_cap": plan["predicted_cap"], "stopped_by": stopped_by, "faults": faults,
        "target": target, "diagnosis": diagnosis, "hosts": _hosts(hosts, series),
        "workers_by_host": workers_by_host(status.workers),
        "stop_detail": error or (WORKER_FULL_DETAIL if status.stopped_by == WORKER_FULL else None)
        or (status.stopped_by if stopped_by in ("reply", "error") else None)
        or (f"Locust master exit code {master_code}" if master_code else None),
        "ramp_s": ramp_s, "connect_rate_per_s": round(peak_n / ramp_s) if ramp_s else 0,
        "steady_state": steady_state(series, peak_n, count_key),
        "cpu_per_connection": cpu_per_connection(series, count_key),
        "echo": {"sent": totals.echoes_sent, "verified": totals.echoes_verified,
                 "mismatched": echo_failed.get("mismatch", 0), "failed": echo_failed},
        "connects": {"ok": totals.connects_ok, "failed": totals.connects_failed,
                     "server_refused": status.server_refusals, "evidence": totals.evidence,
                     "stages": totals.stages},
        "tls": tls_summary(config, totals.tls),
        "serving": serving,
        "memory": {"server_rss_per_conn_bytes": per_conn("server_rss_bytes", first and first["server_rss_bytes"]),
                   "locust_rss_per_conn_bytes": per_conn("locust_rss_bytes", totals.rss_base_bytes),
                   "kernel_slab_per_conn_bytes": per_conn("slab_bytes", first and first["slab_bytes"]),
                   # everything: servers, Locust, the kernel, per-process costs (MemAvailable before
                   # the servers started, less MemAvailable at the peak)
                   "system_per_conn_bytes": (memory_before - peak["mem_available_bytes"]) / peak_n
                   if memory_before and peak_n and "mem_available_bytes" in peak else None},
        "echo_latency": {"mode": config["echo_mode"],
                         "measured_from": "intended send time" if config["echo_mode"] == "open" else "send time",
                         **status.echo_latency},
        "latency_ms": {name: {k: v for k, v in row.items() if k != "requests"} for name, row in locust_stats.items()},
        "limits": limits, "machine": machine, "plan": plan, "config": config, "series": series,
        "latency_series": latency_series, "files": files,
    }
    return validate(doc)


def tls_summary(config: dict, agreed: dict[str, dict[str, int]]) -> dict | None:
    """What a TLS run's handshakes agreed: each value seen (version, cipher, group, ALPN) and how
    many handshakes agreed on it, and how many resumed a session; None for a plain run."""
    if not config.get("tls"):
        return None
    resumed = agreed.get("resumed", {})
    return {"handshakes": sum(resumed.values()), "resumed": resumed.get("True", 0),
            **{key: counts for key, counts in agreed.items() if key != "resumed"}}


# each part's CPU seconds in a sample, and its name per connection in µs
CPU_PARTS = {"server_cpu_user_s": "server_user_us", "server_cpu_system_s": "server_system_us",
             "locust_cpu_user_s": "locust_user_us", "locust_cpu_system_s": "locust_system_us"}


def cpu_between(start: dict, end: dict, key: str = "server_open") -> dict[str, float]:
    """CPU per connection made (µs) by part from sample `start` to sample `end`, and in all."""
    made = max(1, end[key] - start[key])
    row = {name: round((end[field] - start[field]) / made * 1e6, 1) for field, name in CPU_PARTS.items()}
    row["total_us"] = round(sum(row.values()), 1)
    return row


def cpu_per_connection(series: list[dict], key: str = "server_open", band: int = 100_000) -> list[dict]:
    """The ramp's CPU per connection by part (µs), per band of connections held: from the first
    sample at or past k × band to the first at or past (k + 1) × band (bands of a fifth of the
    peak for runs under two bands). The cost of the ramp, measured rather than argued."""
    ramp = [p for p in series if p.get("phase") == "ramp" and "server_cpu_user_s" in p]
    peak = max((p[key] for p in ramp), default=0)
    if peak < 2 * band:
        band = max(1, peak // 5)
    out, start = [], ramp[0] if ramp else None
    for point in ramp[1:]:
        if start is None or point[key] < start[key] + band:
            continue
        out.append({"from": start[key], "to": point[key], "seconds": round(point["t"] - start["t"], 2),
                    **cpu_between(start, point, key)})
        start = point
    return out


def workers_by_host(workers: list[dict]) -> dict[str, dict]:
    """The workers' last reports grouped by the host each runs on (its test host, its --name, or
    the machine's hostname): on several machines, each one's share."""
    out: dict[str, dict] = {}
    for w in workers:
        row = out.setdefault(w.get("host") or "", {"workers": 0, "held": 0, "connects_ok": 0, "echoes_verified": 0})
        row["workers"] += 1
        for key in ("held", "connects_ok", "echoes_verified"):
            row[key] += w.get(key, 0)
    return out


def _hosts(hosts: dict | None, series: list[dict]) -> dict | None:
    """The per-host picture of a run across test hosts: each client host's peak held and fastest
    connect rate (from the points' per-host counts) beside what `HostedRun.results` read."""
    if not hosts:
        return None
    rows = []
    server_held = held_count(False)
    for h in hosts["hosts"]:
        counts = [{"t": p["t"], "held": server_held(p) if h["role"] == "server"
                   else p.get("held_by_host", {}).get(h["name"], 0)} for p in series]
        peak = max((c["held"] for c in counts), default=0)
        ramp_s = _ramp_seconds(counts, peak, "held")  # as the run's own rate: the peak over the ramp's length
        rows.append({**h, "peak_held": peak, "peak_rate_per_s": round(peak / ramp_s) if ramp_s else 0,
                     "rss_per_conn_bytes": round(h["rss_bytes"] / peak) if peak and h["role"] == "client" else None})
    # Workers from outside the lab (harness worker --master), at their most: the last status may
    # come after their users stopped
    names = {h["name"] for h in hosts["hosts"]}
    outside = max((sum(n for host, n in p.get("held_by_host", {}).items() if host not in names) for p in series),
                  default=0)
    return {**hosts, "hosts": rows, "outside_held": max(outside, hosts.get("outside_held", 0))}


def held_count(target: bool):
    """How a sample counts the connections held: the kernel's count on the port, and no more than
    the servers accepted and hold (a handshake the kernel finished into the accept queue is
    established, not held: at a full server it waits there to be refused); for a target, our
    side's count, and no more than the connections verified and still open."""
    if not target:
        return lambda p: min(p["kernel_established"], p["server_open"])
    return lambda p: min(p["kernel_established"], p.get("locust_held", p["locust_open"]))


def hold_samples(series: list[dict], peak: int, key: str = "server_open") -> list[dict]:
    """Samples taken while the master said "hold" and both the kernel's count (sampled every 2 s)
    and the servers' (every second; for a target, the workers' `locust_held`) were within 1% of
    the peak: the steady state, teardown excluded."""
    return [p for p in series if peak and min(p["kernel_established"], p.get(key, 0)) >= 0.99 * peak
            and p.get("phase", "hold") == "hold"]


def held_key(run: dict) -> str:
    """The series field that counts a run's connections every second."""
    return "server_open" if not run.get("target") else "locust_held"


def steady_state(series: list[dict], peak: int, key: str = "server_open") -> dict:
    """The hold, seen from its samples (`hold_samples`; closing connections moves RSS, so teardown
    is left out): how long, how many
    echoes, and how far server and Locust RSS moved from its first sample to its last (a leak
    shows as growth; the soak asks for under 5%)."""
    hold = hold_samples(series, peak, key)
    if len(hold) < 2:
        return {"seconds": 0.0, "echoes_verified": 0, "server_rss_change_pct": None, "locust_rss_change_pct": None}
    first, last = hold[0], hold[-1]

    def change(key: str) -> float | None:
        return round(100.0 * (last[key] - first[key]) / first[key], 2) if first[key] else None

    return {"seconds": round(last["t"] - first["t"], 1), "echoes_verified": last["echoes_verified"] - first["echoes_verified"],
            "server_rss_change_pct": change("server_rss_bytes"), "locust_rss_change_pct": change("locust_rss_bytes")}


def summary(doc: dict, run_dir) -> str:
    m = doc["memory"]
    by_process = doc["peak_connections_by_process"]
    target = doc.get("target")
    lines = [
        f"held {doc['peak_connections']:,} connections on {doc['host']}:{doc['port']} (the kernel's count of "
        f"what the servers accepted; servers {doc['peak_connections_servers']:,} in {doc['server_processes']} process(es)"
        + (f": {', '.join(f'{n:,}' for n in by_process)}" if len(by_process) > 1 else "") + ")"
        if target is None else
        f"held {doc['peak_connections']:,} connections to {doc['host']}:{doc['port']} ({target['protocol']}; "
        "the kernel's count of ours)",
        f"stopped by {doc['stopped_by']} (target {doc['target_connections']:,}, predicted cap "
        f"{doc['predicted_cap']:,}); ramp {doc['ramp_s']:.1f} s ({doc['connect_rate_per_s']:,} connections/s); "
        f"echoes {doc['echo']['verified']:,} verified, {doc['echo']['mismatched']} mismatched",
        f"memory per connection: server {m['server_rss_per_conn_bytes'] / 1024:.2f} KB, Locust "
        f"{m['locust_rss_per_conn_bytes'] / 1024:.2f} KB ({doc['user_mode']} mode), kernel slab "
        f"{m['kernel_slab_per_conn_bytes'] / 1024:.2f} KB (both ends)"
        + (f"; whole system {m['system_per_conn_bytes'] / 1024:.2f} KB" if m.get("system_per_conn_bytes") else ""),
    ]
    lat = doc.get("echo_latency", {})
    if lat.get("count"):
        lines.append(f"echo latency after the ramp ({lat['mode']} loop, from the {lat['measured_from']}; "
                     f"{lat['count']:,} echoes): p50 {lat['p50']:g} ms, p90 {lat['p90']:g} ms, "
                     f"p99 {lat['p99']:g} ms, p99.9 {lat['p99_9']:g} ms, max {lat['max']:g} ms")
    lines += host_lines(doc.get("hosts"))
    lines += [f"fault (set on purpose) at {f['t']:.1f} s: {f['what']}: {f['connections_lost']:,} connections lost, "
              f"echo failures {f.get('echo_failed') or 'none'}, {f.get('retransmits', 0):,} retransmits, "
              f"{f.get('timeouts', 0):,} timeouts, {f.get('resets', 0):,} resets"
              for f in doc["faults"] if f.get("injected")]
    diagnosis = doc.get("diagnosis")
    if diagnosis:
        lines.append(f"diagnosis: {diagnosis['summary']}" + (f"; fix: {diagnosis['fix']}" if diagnosis["fix"] else ""))
        lines += [f"  evidence: {line}" for line in diagnosis["evidence"][:6]]
    lines.append(f"results: {run_dir}/run.json")
    return "\n".join(lines)


def host_lines(hosts: dict | None) -> list[str]:
    """One line per test host: role, addresses, held, rate, memory and CPU, retransmits."""
    if not hosts:
        return []
    out = []
    for h in hosts["hosts"]:
        tcp = h.get("tcp", {})
        if h["role"] == "server":
            out.append(f"  server host {h['name']} ({', '.join(h['addresses'])}): {h['peak_held']:,} established at most "
                       f"(its kernel's count), servers {h['rss_bytes'] / 2**20:,.0f} MB "
                       f"RSS, {h['cpu_s']:,.1f} CPU s, {tcp.get('PassiveOpens', 0):,} accepted, "
                       f"{tcp.get('RetransSegs', 0):,} retransmits")
        else:
            out.append(f"  client host {h['name']} ({len(h['addresses'])} address(es), ports {h['ip_local_port_range'].replace(' ', '-')}): "
                       f"{h['peak_held']:,} held by {h['workers']} worker(s), ramp {h['peak_rate_per_s']:,}/s, "
                       f"{h['echoes_verified']:,} echoes ({h['mismatched']} mismatched), failed "
                       f"{h['connects_failed'] or 'none'}, Locust {h['rss_bytes'] / 2**20:,.0f} MB, {h['cpu_s']:,.1f} CPU s, "
                       f"{tcp.get('RetransSegs', 0):,} retransmits"
                       + (f", {h['loss_dropped']:,} packets dropped by --loss" if h.get("loss_dropped") else ""))
    if hosts.get("outside_workers"):
        out.append(f"  outside workers (harness worker --master): {hosts['outside_workers']} holding "
                   f"{hosts['outside_held']:,}")
    return [f"across test hosts (lab {hosts['prefix']}, master on {hosts['bridge_address']}):", *out]


def connect_rate(series: list[dict], key: str) -> float:
    """Connections a second while ramping: the peak over the ramp's length (0 if it never held)."""
    peak = max((p[key] for p in series), default=0)
    seconds = _ramp_seconds(series, peak, key)
    return peak / seconds if seconds else 0.0


def _ramp_seconds(series: list[dict], peak: int, key: str = "server_open") -> float:
    """From the first sample with a connection to the first with 99% of the peak, by the servers'
    own count (or the workers', for a target; both sampled every second; the kernel's is sampled
    less often as connections grow)."""
    started = next((p["t"] for p in series if p[key] > 0), None)
    reached = next((p["t"] for p in series if p[key] >= 0.99 * peak), None)
    if started is None or reached is None or peak == 0:
        return 0.0
    return max(reached - started, 1.0)  # samples are a second apart
