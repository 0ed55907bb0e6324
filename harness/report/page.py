"""`harness report`: PNG plots and one self-contained report.html, rebuilt from result files alone.

Inputs are run directories (run.json), sweep directories (sweep.json) and benchmark files
(bench-echo-*.json, bench-memory-*.json). The HTML embeds every image (base64) and references
nothing outside itself, so it opens offline and can be mailed to a colleague.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

from harness.report import plots
from harness.results.store import write_bytes_atomic
from harness.results.schema import load_result

PNG_DPI = 90


@dataclass
class Inputs:
    runs: list[dict] = field(default_factory=list)
    sweeps: list[dict] = field(default_factory=list)
    bench_echo: dict | None = None
    bench_memory: dict | None = None
    tours: list[dict] = field(default_factory=list)


class ReportError(ValueError):
    pass


def collect(paths: list[str | Path]) -> Inputs:
    found = Inputs()
    for raw in paths:
        path = Path(raw)
        if not path.exists() or not (path.is_dir() or path.suffix == ".json"):
            raise ReportError(f"{path} is not a run directory, sweep directory or result file")
        kind, doc = load_result(path)
        if kind == "run":
            found.runs.append(doc)
        elif kind == "sweep":
            found.sweeps.append(doc)
        elif kind == "bench-echo":
            found.bench_echo = doc
        elif kind == "bench-memory":
            found.bench_memory = doc
        elif kind == "tour":
            found.tours.append(doc)
        else:
            raise ReportError(f"{path}: the report draws no {kind} results yet; give run, sweep, bench-echo, "
                              "bench-memory or tour files")
    if not (found.runs or found.sweeps or found.bench_echo or found.bench_memory or found.tours):
        raise ReportError("nothing to report: give run directories, sweep directories or bench files")
    return found


def figures(found: Inputs) -> list[tuple[str, str, object]]:
    """(file name, caption, Figure) for everything the inputs can show."""
    out = []
    for i, run in enumerate(found.runs):
        tag = f"{i}-{run['backend']}-{run['target_connections']}"
        out.append((f"connections-{tag}.png", f"Connections held over time, per server process, against each "
                    f"process's cap and 65,535 ({run['backend']}, {run['started_at']})", plots.connections_over_time(run)))
        out.append((f"rate-latency-{tag}.png", "Connect rate over time; echo latency percentiles against "
                    "connections held", plots.rate_and_latency(run)))
    for i, sweep in enumerate(found.sweeps):
        out.append((f"cap-vs-limit-{i}.png", "Cap against fd limit per backend, with the fitted line and "
                    "select()'s FD_SETSIZE wall", plots.cap_vs_fd_limit(sweep)))
    if found.runs or found.bench_memory:
        out.append(("memory.png", "Memory per connection by part", plots.memory_per_connection(found.runs, found.bench_memory)))
    if found.bench_echo:
        out.append(("echo-throughput.png", "Echo throughput per backend", plots.echo_throughput(found.bench_echo)))
    return out


def verdict(run: dict) -> str:
    """e.g. 'held 100,000 connections on one port: stopped by target; 65,535 crossed at 0:41'."""
    by_process = run["peak_connections_by_process"]
    text = f"held {run['peak_connections']:,} connections on {run['host']}:{run['port']}"
    if run["stopped_by"] in ("EMFILE", "FD_SETSIZE", "threads", "ENFILE"):
        cap = run["server_fd_limit"] - run.get("server_held_fds", 0)
        text += (f": stopped by {run['stopped_by']} at {max(by_process, default=0):,} per process "
                 f"(fd limit {run['server_fd_limit']:,} − {run.get('server_held_fds', 0)} held = {cap:,})")
    else:
        text += f": stopped by {run['stopped_by']}"
    crossed = next((p["t"] for p in run["series"] if p["kernel_established"] > plots.PORT_NUMBERS), None)
    if crossed is not None:
        text += f"; 65,535 crossed at {int(crossed) // 60}:{int(crossed) % 60:02d}"
    return text


def build(paths: list[str | Path], out_dir: Path) -> Path:
    found = collect(paths)
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = []
    for name, caption, fig in figures(found):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=PNG_DPI, bbox_inches="tight")
        plots.plt.close(fig)
        data = buf.getvalue()
        write_bytes_atomic(out_dir / name, data)
        sections.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,'
                        f'{base64.b64encode(data).decode()}"><figcaption>{html.escape(caption)}</figcaption></figure>')
    page = _page(found, sections)
    report = out_dir / "report.html"
    write_bytes_atomic(report, page.encode())
    return report


def _table(rows: list[tuple[str, object]]) -> str:
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _fmt(value: object) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    return "" if value is None else str(value)


def _page(found: Inputs, sections: list[str]) -> str:
    parts = ["<h1>Connections per port: capped by file descriptors, not by 65,535 port numbers</h1>"]
    for run in found.runs:
        m = run["memory"]
        parts.append(f"<h2>Run {html.escape(run['started_at'])}: {html.escape(run['backend'])}, "
                     f"{run['target_connections']:,} connections</h2>")
        parts.append(f"<p class=verdict>{html.escape(verdict(run))}</p>")
        diagnosis = run.get("diagnosis")
        if diagnosis:
            parts.append("<div class=diagnosis><p><b>Diagnosis:</b> " + html.escape(diagnosis["summary"])
                         + (f"</p><p><b>Fix:</b> {html.escape(diagnosis['fix'])}" if diagnosis["fix"] else "")
                         + "</p><ul>" + "".join(f"<li>{html.escape(e)}</li>" for e in diagnosis["evidence"])
                         + "</ul></div>")
        parts.append(_table([
            ("backend / share", f"{run['backend']} / {run['share']}"), ("server processes", run["server_processes"]),
            ("server fd limit (each)", run["server_fd_limit"]), ("Locust workers", run["workers"]),
            ("user mode", run["user_mode"]), ("source addresses", len(run["source_addresses"])),
            ("target", run["target_connections"]), ("peak (kernel)", run["peak_connections"]),
            ("peak (servers)", run["peak_connections_servers"]), ("per process", run["peak_connections_by_process"]),
            ("predicted cap", run["predicted_cap"]), ("stopped by", run["stopped_by"]),
            ("ramp", f"{run.get('ramp_s', 0):.1f} s, {run.get('connect_rate_per_s', 0):,} connections/s"),
            ("echoes sent / verified / mismatched",
             f"{run['echo']['sent']:,} / {run['echo']['verified']:,} / {run['echo']['mismatched']:,}"),
            ("memory per connection", f"server {m['server_rss_per_conn_bytes'] / 1024:.2f} KB, Locust "
             f"{m['locust_rss_per_conn_bytes'] / 1024:.2f} KB, kernel slab {m['kernel_slab_per_conn_bytes'] / 1024:.2f} KB"),
            ("duration", f"{run['duration_s']:.1f} s"),
        ]))
        lim = run["limits"]
        parts.append("<h3>Machine and limits</h3>" + _table([
            ("host", f"{run['machine']['hostname']}: {run['machine']['cpu']} × {run['machine'].get('cpus')}"),
            ("kernel / Python / Locust", f"{run['machine']['kernel']} / {run['machine']['python']} / {run['machine']['locust']}"),
            ("RLIMIT_NOFILE soft / hard", f"{_fmt(lim['nofile_soft'])} / {_fmt(lim['nofile_hard'])}"),
            ("fs.nr_open", lim["nr_open"]), ("fs.file-max", lim["file_max"]),
            ("ip_local_port_range", "-".join(map(str, lim["ip_local_port_range"]))),
            ("somaxconn", lim["somaxconn"]), ("pid_max / threads-max", f"{lim['pid_max']:,} / {lim['threads_max']:,}"),
            ("memory available", f"{lim['mem_available'] / 2**30:.1f} GiB"),
        ]))
        parts.append("<h3>Plan</h3><ul>" + "".join(f"<li>{html.escape(r)}</li>" for r in run["plan"]["reasons"]) + "</ul>")
    for sweep in found.sweeps:
        rows = "".join(f"<tr><td>{html.escape(p['backend'])}</td><td>{p['fd_limit']:,}</td><td>{p['cap']:,}</td>"
                       f"<td>{p['predicted_cap']:,}</td><td>{p['error_pct']:.2f}%</td><td>{html.escape(p['stopped_by'])}</td></tr>"
                       for p in sweep["points"])
        fits = "; ".join(f"{b}: slope {f['slope']}, offset {f['offset']}" for b, f in sweep["fits"].items())
        parts.append(f"<h2>fd-limit sweep {html.escape(sweep['started_at'])}</h2><p>{html.escape(fits)}</p>"
                     "<table><tr><th>backend</th><th>fd limit</th><th>held</th><th>predicted</th><th>off</th>"
                     f"<th>stopped by</th></tr>{rows}</table>")
    for tour in found.tours:
        parts.append(f"<h2>The seed article's claims, shown live ({html.escape(tour['started_at'])})</h2><ol>")
        for step in tour["steps"]:
            evidence = "\n".join(step["lines"])
            parts.append(f"<li><b>{html.escape(step['title'])}</b><pre>{html.escape(evidence)}</pre>"
                         f"<p>{'✔' if step['ok'] else '✘'} {html.escape(step['verdict'])}</p></li>")
        parts.append("</ol>")
    if not found.bench_echo:
        parts.append("<p class=note>No echo benchmark given: <code>harness bench echo</code> writes one.</p>")
    parts.append("<h2>Plots</h2>" + "".join(sections))
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}"
             "img{max-width:100%}figure{margin:1.5em 0}.verdict{font-size:1.15em;font-weight:bold}.note{color:#666}"
             ".diagnosis{border-left:4px solid #c33;padding:.2em 1em;background:#fdf3f3}")
    return (f"<!doctype html><html><head><meta charset=utf-8><title>harness report</title><style>{style}</style>"
            f"</head><body>{''.join(parts)}</body></html>")

