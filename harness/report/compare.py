"""`harness compare RUN_A RUN_B`: the key figures side by side, and whether a change is real.

Like pyperf, a difference is called "not significant" before it is called faster or slower: each
figure carries its run's own noise, the spread of its per-second samples (connect rate during the
ramp, memory per connection and echo latency during the hold), and a change within two standard
deviations of the combined noise is not significant. A figure with fewer than 3 samples is flagged
"unstable". Different machines or limits are warned about first: such runs compare poorly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from harness.core.rundoc import held_key, hold_samples

MIN_SAMPLES = 3
LIMIT_KEYS = ("nofile_soft", "nofile_hard", "nr_open", "file_max", "ip_local_port_range", "somaxconn", "pid_max")
MACHINE_KEYS = ("hostname", "cpu", "cpus", "kernel", "python", "locust")


@dataclass
class Figure:
    name: str
    value: float
    std: float | None  # None: exact (a count), no noise
    samples: int

    @property
    def unstable(self) -> bool:
        return self.std is not None and self.samples < MIN_SAMPLES


def _stat(name: str, values: list[float]) -> Figure:
    arr = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if not arr.size:
        return Figure(name, float("nan"), None, 0)
    return Figure(name, float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0, int(arr.size))


def figures(run: dict) -> list[Figure]:
    series, hold = run["series"], hold_samples(run["series"], run["peak_connections"], held_key(run))
    first = series[0] if series else None
    counted = [p for p in series if p.get("kernel_counted", True)]  # a point between counts repeats the last
    rates = [(b["kernel_established"] - a["kernel_established"]) / max(1e-6, b["t"] - a["t"])
             for a, b in zip(counted, counted[1:]) if b["kernel_established"] > a["kernel_established"]]
    out = [Figure("peak connections (kernel, accepted)", run["peak_connections"], None, 1),
           Figure("echoes mismatched", run["echo"]["mismatched"], None, 1),
           _stat("connect rate, connections/s", rates)]
    if first:
        for key, label in (("server_rss_bytes", "server memory per connection, KB"),
                           ("slab_bytes", "kernel slab per connection, KB")):
            out.append(_stat(label, [(p[key] - first[key]) / p["kernel_established"] / 1024 for p in hold
                                     if p["kernel_established"]]))
    peak_t = max((p["t"] for p in hold), default=0)
    lat = [p for p in run.get("latency_series", []) if p["held"] >= 0.99 * run["peak_connections"]
           and p["t"] <= peak_t + 1]
    for key in ("p50", "p99"):
        out.append(_stat(f"echo latency {key}, ms", [p[key] for p in lat]))
    return out


def verdict(a: Figure, b: Figure) -> str:
    if math.isnan(a.value) or math.isnan(b.value):
        return "no data"
    if a.std is None and b.std is None:
        return "same" if a.value == b.value else f"{_pct(a.value, b.value)}"
    if a.unstable or b.unstable:
        return f"{_pct(a.value, b.value)} (unstable: fewer than {MIN_SAMPLES} samples)"
    noise = math.sqrt((a.std or 0.0) ** 2 + (b.std or 0.0) ** 2)
    if abs(b.value - a.value) <= 2 * noise:
        return "not significant"
    return _pct(a.value, b.value)


def _pct(a: float, b: float) -> str:
    if a == 0:
        return f"{b - a:+,.2f}"
    return f"{100 * (b - a) / abs(a):+.1f}%"


def warnings(a: dict, b: dict) -> list[str]:
    out = []
    for key in MACHINE_KEYS:
        if a["machine"].get(key) != b["machine"].get(key):
            out.append(f"machines differ in {key}: {a['machine'].get(key)} vs {b['machine'].get(key)}")
    for key in LIMIT_KEYS:
        if a["limits"].get(key) != b["limits"].get(key):
            out.append(f"limits differ in {key}: {a['limits'].get(key)} vs {b['limits'].get(key)}")
    for key in ("backend", "share", "server_processes", "server_fd_limit", "workers", "user_mode", "target_connections"):
        if a.get(key) != b.get(key):
            out.append(f"runs differ in {key}: {a.get(key)} vs {b.get(key)}")
    return out


def compare(a: dict, b: dict) -> str:
    lines = [f"warning: {w}" for w in warnings(a, b)]
    lines.append(f"{'figure':<38} {'A':>16} {'B':>16}   change")
    for fa, fb in zip(figures(a), figures(b)):
        lines.append(f"{fa.name:<38} {_show(fa):>16} {_show(fb):>16}   {verdict(fa, fb)}")
    return "\n".join(lines)


def _show(f: Figure) -> str:
    if math.isnan(f.value):
        return "—"
    if f.std is None:
        return f"{f.value:,.0f}"
    return f"{f.value:,.2f} ± {f.std:,.2f}"
