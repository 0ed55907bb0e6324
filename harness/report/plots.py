"""The report's plots, one function per question a user asks, each returning a matplotlib Figure
drawn from result documents alone (run.json, sweep.json, bench-*.json). Agg backend: no display.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from harness.core.backends import FD_SETSIZE
from harness.core.planning import PORT_NUMBERS

THOUSANDS = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}")
PARTS = (("server_rss_per_conn_bytes", "server userland"), ("locust_rss_per_conn_bytes", "Locust"),
         ("kernel_slab_per_conn_bytes", "kernel slab (both ends)"),
         ("kernel_stack_per_conn_bytes", "kernel thread stacks"))


def _figure(title: str, ncols: int = 1) -> tuple[Figure, list]:
    fig, axes = plt.subplots(1, ncols, figsize=(9 if ncols == 1 else 12, 4.5), squeeze=False)
    fig.suptitle(title, fontsize=12)
    return fig, list(axes[0])


def connections_over_time(run: dict) -> Figure:
    """Which limit is real? Connections per server process against each process's cap, the
    kernel's total on the port, and 65,535 for reference."""
    fig, (ax,) = _figure(f"Connections held on port {run['port']} ({run['backend']}, "
                         f"{run['server_processes']} server process(es))" if not run.get("target") else
                         f"Connections held to {run['host']}:{run['port']} ({run['target']['protocol']})")
    series = run["series"]
    t = [p["t"] for p in series]
    by_process = np.array([p["server_open_by_process"] for p in series if p["server_open_by_process"]])
    if by_process.size:
        for i in range(by_process.shape[1]):
            ax.plot(t[:len(by_process)], by_process[:, i], lw=1, alpha=0.8, label=f"server process {i}" if i < 8 else None)
    target = run.get("target")
    if target is None:
        ax.plot(t, [p["server_open"] for p in series], color="black", lw=2, label="all (servers' gauges, every second)")
    else:
        ax.plot(t, [p.get("locust_held", p["locust_open"]) for p in series], color="black", lw=2,
                label="held (verified and open, the workers' count every second)")
    # The kernel's own count, where ss was run (less often as connections grow; every sample in
    # files from before this was recorded).
    counted = [p for p in series if p.get("kernel_counted", True)]
    ax.scatter([p["t"] for p in counted], [p["kernel_established"] for p in counted], s=14, color="black",
               marker="x", zorder=3, label="all (kernel count, ss)")
    if target is None:
        cap = run["server_fd_limit"] - run.get("server_held_fds", 0)
        ax.axhline(cap, color="tab:red", ls="--", lw=1.5, label=f"fd limit − held fds = {cap:,} per process")
    else:
        cap = (run.get("diagnosis") or {}).get("predicted_cap") or 0
        if cap:
            ax.axhline(cap, color="tab:red", ls="--", lw=1.5, label=f"the target's predicted cap, {cap:,}")
    ax.axhline(PORT_NUMBERS, color="tab:gray", ls=":", lw=1.5, label="65,535 (port numbers)")
    peak = max([run["peak_connections"], PORT_NUMBERS, cap])
    # The machine's file table, in connections (both ends local: two files each), where it binds
    # or comes near: fs.file-max is then the limit the run meets, beside the per-process caps.
    file_cap = run["limits"]["file_max"] // 2
    near = run["stopped_by"] == "ENFILE" or run["peak_connections"] > 0.25 * file_cap
    if series and "files_open" in series[-1] and near:
        ax.plot(t, [p.get("files_open", 0) / 2 for p in series], color="tab:purple", lw=1.5, ls="-.",
                label="open files on the machine ÷ 2 (fs.file-nr)")
        ax.axhline(file_cap, color="tab:purple", ls="--", lw=1.5, label=f"fs.file-max ÷ 2 = {file_cap:,}")
        peak = max(peak, file_cap)
    ax.set_ylim(0, peak * 1.12)
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("connections")
    ax.yaxis.set_major_formatter(THOUSANDS)
    ax.legend(fontsize=8, loc="upper left", ncol=2)
    ax.grid(alpha=0.3)
    return fig


def connections_by_host(run: dict) -> Figure:
    """Where is the load coming from? Connections each client test host holds over time, their
    sum against the server host's own kernel count, each host's ports per address for reference."""
    hosts = run["hosts"]
    fig, (ax,) = _figure(f"Connections by test host (servers on {hosts['server']}, lab {hosts['prefix']})")
    series = run["series"]
    t = [p["t"] for p in series]
    for h in hosts["hosts"]:
        if h["role"] == "client":
            ax.plot(t, [p.get("held_by_host", {}).get(h["name"], 0) for p in series], lw=1.5,
                    label=f"{h['name']} ({len(h['addresses'])} address(es))")
    counted = [p for p in series if p.get("kernel_counted", True)]
    ax.scatter([p["t"] for p in counted], [p["kernel_established"] for p in counted], s=14, color="black",
               marker="x", zorder=3, label=f"established on {hosts['server']} (its kernel, ss)")
    ax.axhline(PORT_NUMBERS, color="tab:gray", ls=":", lw=1.5, label="65,535 (port numbers)")
    ax.set_ylim(0, max(run["peak_connections"], PORT_NUMBERS) * 1.12)
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("connections")
    ax.yaxis.set_major_formatter(THOUSANDS)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    return fig


def cap_vs_fd_limit(sweep: dict) -> Figure:
    """Does every extra fd buy one connection? Measured caps, the fitted line per backend, and
    select()'s FD_SETSIZE wall."""
    fig, (ax,) = _figure("Connections one server process held, against its soft fd limit")
    limits = sorted({p["fd_limit"] for p in sweep["points"]})
    for backend, fit in sweep["fits"].items():
        points = [p for p in sweep["points"] if p["backend"] == backend]
        x = np.array([p["fd_limit"] for p in points], dtype=float)
        ax.scatter(x, [p["cap"] for p in points], s=30, zorder=3)
        if fit["slope"] is not None:
            xs = np.array([min(limits), max(limits)], dtype=float)
            ax.plot(xs, fit["slope"] * xs - fit["offset"], lw=1.2,
                    label=f"{backend}: cap = {fit['slope']:.3f} × limit − {fit['offset']:g}")
    top = max(max(limits), FD_SETSIZE) * 1.1
    ax.axhline(FD_SETSIZE, color="tab:red", ls=":", lw=1.2, label="select(): FD_SETSIZE = 1,024")
    ax.plot([0, top], [0, top], color="tab:gray", ls="--", lw=0.8, label="cap = limit")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("soft RLIMIT_NOFILE of the server process")
    ax.set_ylabel("connections held")
    ax.xaxis.set_major_formatter(THOUSANDS)
    ax.yaxis.set_major_formatter(THOUSANDS)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    return fig


def memory_per_connection(runs: list[dict], bench_memory: dict | None = None) -> Figure:
    """What does one connection cost, and where? Stacked: server userland, Locust, kernel slab."""
    fig, (ax,) = _figure("Memory per held connection, by part")
    labels, bottoms = [], []
    bars = [(f"{r['backend']}\n{r['peak_connections']:,} held\n{r['user_mode']} users", r["memory"]) for r in runs]
    if bench_memory:
        bars += [(f"{row['backend']}\nserver only\n(bench)", row) for row in bench_memory["rows"]]
    x = np.arange(len(bars))
    bottoms = np.zeros(len(bars))
    for key, name in PARTS:
        values = np.array([m.get(key, 0.0) / 1024 for _, m in bars])
        if values.any():
            ax.bar(x, values, bottom=bottoms, label=name, width=0.6)
            bottoms += values
    for i, total in enumerate(bottoms):
        ax.text(i, total, f"{total:.1f} KB", ha="center", va="bottom", fontsize=8)
    labels = [label for label, _ in bars]
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("KB per connection")
    ax.set_ylim(0, max(bottoms.max() * 1.2, 1))
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return fig


def rate_and_latency(run: dict) -> Figure:
    """How fast did connections come, and how did echo latency move over the run? The ramp and the
    hold are shaded on both, so a latency rise shows where it happened."""
    fig, (ax_rate, ax_lat) = _figure("Connect rate, and echo latency over time (ramp and hold shaded)", ncols=2)
    series = run["series"]
    t = np.array([p["t"] for p in series])
    # The servers' gauges are sampled every second (the kernel's count every 2 s, as ss is slow);
    # a target's connections are counted by the workers.
    key = "server_open" if not run.get("target") else "locust_held"
    held = np.array([p.get(key, 0) for p in series], dtype=float)
    if len(t) > 1:
        rate = np.clip(np.diff(held) / np.maximum(np.diff(t), 1e-6), 0, None)
        ax_rate.plot(t[1:], rate, color="tab:blue")
    ax_rate.set_xlabel("seconds since start")
    ax_rate.set_ylabel("new connections per second")
    lat = run.get("latency_series", [])
    for key in ("p50", "p90", "p99", "max"):
        points = [(p["t"], p[key]) for p in lat if p[key] is not None]
        if points:
            xs, ys = zip(*points)
            ax_lat.plot(xs, ys, marker=".", lw=1, label=key)
    ax_lat.set_xlabel("seconds since start")
    ax_lat.set_ylabel("echo latency, ms (Locust's histogram, last 10 s)")
    for ax in (ax_rate, ax_lat):
        for (start, end), color, label in zip(phases(run), ("tab:orange", "tab:green"), ("ramp", "hold")):
            if end > start:
                ax.axvspan(start, end, color=color, alpha=0.12, label=label)
        ax.grid(alpha=0.3)
        ax.yaxis.set_major_formatter(THOUSANDS)
    if lat:
        ax_lat.legend(fontsize=8)
    return fig


def phases(run: dict) -> tuple[tuple[float, float], tuple[float, float]]:
    """(start, end) of the ramp and of the hold, in seconds since the run started."""
    key = "server_open" if not run.get("target") else "locust_held"
    series = run["series"]
    start = next((p["t"] for p in series if p.get(key, 0) > 0), 0.0)
    ramp_end = start + run.get("ramp_s", 0.0)
    hold = [p["t"] for p in series if p.get("phase") == "hold"]
    if not any("phase" in p for p in series):  # a run.json from before phases were recorded
        peak = max((p.get(key, 0) for p in series), default=0)
        hold = [p["t"] for p in series if p["t"] >= ramp_end and peak and p.get(key, 0) >= 0.99 * peak]
    # a hold seen in one sample lasted at least the second that sample stands for
    return (start, ramp_end), ((min(hold), max(max(hold), min(hold) + 1.0)) if hold else (ramp_end, ramp_end))


def echo_throughput(bench_echo: dict) -> Figure:
    """Which backend echoes fastest? Ping-pong req/s per backend, one server process each."""
    fig, (ax,) = _figure(f"Echo throughput: {bench_echo['size']} B ping-pong, {bench_echo['connections']} connections, "
                         "one server process")
    rows = bench_echo["rows"]
    ax.bar([r["backend"] for r in rows], [r["req_per_s"] for r in rows], color="tab:green", width=0.6)
    for i, r in enumerate(rows):
        ax.text(i, r["req_per_s"], f"{r['req_per_s']:,.0f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("requests per second")
    ax.yaxis.set_major_formatter(THOUSANDS)
    ax.grid(axis="y", alpha=0.3)
    return fig
