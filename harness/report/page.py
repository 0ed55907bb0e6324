"""`harness report`: PNG plots and one self-contained report.html, rebuilt from result files alone.

Inputs are run directories (run.json), sweep directories (sweep.json) and benchmark files
(bench-echo-*.json, bench-memory-*.json). The HTML (templates/report.html.j2, autoescaped) opens
with a verdict box per run (held N on port P, stopped by X, predicted Y, the diagnosis and its
evidence), embeds every image (base64) and references nothing outside itself, so it opens offline
and can be mailed to a colleague.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape

from harness.core.refusal import Refused
from harness.core.rundoc import held_key
from harness.report import plots
from harness.system.files import load_result, write_bytes_atomic

PNG_DPI = 90
# The page is a Jinja2 template (Flask's, installed with Locust), every value autoescaped.
TEMPLATES = Environment(loader=FileSystemLoader(Path(__file__).resolve().parent / "templates"),
                        autoescape=select_autoescape(["html", "j2"]))


@dataclass
class Inputs:
    runs: list[dict] = field(default_factory=list)
    sweeps: list[dict] = field(default_factory=list)
    bench_echo: dict | None = None
    bench_memory: dict | None = None
    tours: list[dict] = field(default_factory=list)


class ReportError(Refused, ValueError):
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
        out.append((f"rate-latency-{tag}.png", "Connect rate and echo latency percentiles over time, the ramp and "
                    "the hold shaded", plots.rate_and_latency(run)))
        if run.get("hosts"):
            out.append((f"hosts-{tag}.png", "Connections held by each client test host over time, beside the server "
                        "host's own count", plots.connections_by_host(run)))
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
    # the count taken every second (the kernel's may be tens of seconds apart while ramping)
    crossed = next((p["t"] for p in run["series"] if p[held_key(run)] > plots.PORT_NUMBERS), None)
    if crossed is not None:
        text += f"; 65,535 crossed at {int(crossed) // 60}:{int(crossed) % 60:02d}"
    return text


def build(paths: list[str | Path], out_dir: Path) -> Path:
    found = collect(paths)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = []
    for name, caption, fig in figures(found):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=PNG_DPI, bbox_inches="tight")
        plots.plt.close(fig)
        data = buf.getvalue()
        write_bytes_atomic(out_dir / name, data)
        images.append({"name": name.removesuffix(".png"), "caption": caption, "data": base64.b64encode(data).decode()})
    page = TEMPLATES.get_template("report.html.j2").render(
        runs=[_run_context(run) for run in found.runs], sweeps=found.sweeps, tours=found.tours,
        bench_echo=found.bench_echo, figures=images)
    report = out_dir / "report.html"
    write_bytes_atomic(report, page.encode())
    return report


def _run_context(run: dict) -> dict:
    m = run["memory"]
    return {"doc": run, "verdict": verdict(run), "memory": memory_sentence(run), "rows": [(k, _fmt(v)) for k, v in [
        ("backend / share", f"{run['backend']} / {run['share']}"), ("server processes", run["server_processes"]),
        ("server fd limit (each)", run["server_fd_limit"]), ("Locust workers", run["workers"]),
        ("user mode", run["user_mode"]), ("protocol", protocol_text(run)),
        ("address family", f"IPv{run.get('family', 4)}"), ("source addresses", len(run["source_addresses"])),
        ("target", run["target_connections"]), ("peak (kernel, accepted)", run["peak_connections"]),
        ("peak (servers)", run["peak_connections_servers"]), ("per process", run["peak_connections_by_process"]),
        ("predicted cap", run["predicted_cap"]), ("stopped by", run["stopped_by"]),
        ("ramp", f"{run.get('ramp_s', 0):.1f} s, {run.get('connect_rate_per_s', 0):,} connections/s"),
        ("stage latency (median / p99)", stage_latency(run)),
        ("echoes sent / verified / mismatched",
         f"{run['echo']['sent']:,} / {run['echo']['verified']:,} / {run['echo']['mismatched']:,}"),
        ("memory per connection", f"server {m['server_rss_per_conn_bytes'] / 1024:.2f} KB, Locust "
         f"{m['locust_rss_per_conn_bytes'] / 1024:.2f} KB, kernel slab {m['kernel_slab_per_conn_bytes'] / 1024:.2f} KB"),
        ("duration", f"{run['duration_s']:.1f} s")]],
        "limits": [(k, _fmt(v)) for k, v in _limits_rows(run)], "hosts": host_rows(run),
        "faults": [fault_sentence(f) for f in run["faults"]]}


STAGES = ("connect", "tls-handshake", "ws-upgrade", "mqtt-connack")


def protocol_text(run: dict) -> str:
    """'websocket over TLSv1.3 (TLS_AES_256_GCM_SHA384, X25519)', or the protocol alone."""
    protocol = (run.get("config") or {}).get("protocol") or "echo"
    tls = run.get("tls") or {}
    if not tls:
        return protocol
    first = {k: max(v, key=v.get) for k, v in tls.items() if isinstance(v, dict) and v}
    return (f"{protocol} over {first.get('version', 'TLS')} ({first.get('cipher', '?')}, {first.get('group', '?')}; "
            f"{tls.get('resumed', 0):,} of {tls.get('handshakes', 0):,} resumed)")


def stage_latency(run: dict) -> str:
    """Each stage of a connection that the run timed: connect, and the TLS handshake and the
    protocol's opening (WebSocket upgrade, MQTT CONNACK) where it has them."""
    rows = run.get("latency_ms") or {}
    return "; ".join(f"{name} {rows[name]['p50']:g} / {rows[name]['p99']:g} ms" for name in STAGES if name in rows) or "-"


def host_rows(run: dict) -> list[dict]:
    """The per-host table of a run across test hosts: what each host held, how fast, at what cost."""
    hosts = run.get("hosts")
    if not hosts:
        return []
    rows = []
    for h in hosts["hosts"]:
        held = h["peak_held"]
        per_conn = f" ({h['rss_bytes'] / held / 1024:.2f} KB/conn)" if held and h["role"] == "client" else ""
        rows.append({"name": h["name"], "role": h["role"], "addresses": ", ".join(h["addresses"]),
                     "ports": h["ip_local_port_range"].replace(" ", "-"), "workers": h["workers"] or "",
                     "held": f"{held:,}", "rate": f"{h['peak_rate_per_s']:,}/s" if h["role"] == "client" else "",
                     "echoes": f"{h['echoes_verified']:,} / {h['mismatched']:,}" if h["role"] == "client" else "",
                     "failed": ", ".join(f"{k} {v:,}" for k, v in h["connects_failed"].items()) or "none",
                     "memory": f"{h['rss_bytes'] / 2**20:,.0f} MB{per_conn}", "cpu": f"{h['cpu_s']:,.1f} s",
                     "retransmits": f"{h['tcp'].get('RetransSegs', 0):,}", "dropped": f"{h.get('loss_dropped', 0):,}"})
    return rows


def fault_sentence(f: dict) -> str:
    text = f"at {f['t']:.1f} s: {f['what']}: {f['connections_lost']:,} connections lost"
    if f.get("injected"):
        text += (f" (set on purpose); echo failures {f.get('echo_failed') or 'none'}, {f.get('retransmits', 0):,} "
                 f"retransmits, {f.get('timeouts', 0):,} timeouts, {f.get('resets', 0):,} resets")
    return text


def memory_sentence(run: dict) -> str:
    """The parts of memory per connection beside the whole, and why they differ when they do."""
    m = run["memory"]
    parts = (m["server_rss_per_conn_bytes"] + m["locust_rss_per_conn_bytes"] + m["kernel_slab_per_conn_bytes"]) / 1024
    whole = (m.get("system_per_conn_bytes") or 0) / 1024
    text = (f"Memory per connection: server {m['server_rss_per_conn_bytes'] / 1024:.2f} KB + Locust "
            f"{m['locust_rss_per_conn_bytes'] / 1024:.2f} KB + kernel slab {m['kernel_slab_per_conn_bytes'] / 1024:.2f} KB "
            f"= {parts:.2f} KB")
    if not whole:
        return text + "."
    text += f"; the whole system (MemAvailable before and at the peak) {whole:.2f} KB"
    if abs(whole - parts) <= 0.05 * max(whole, parts):
        return text + ": the parts and the whole agree."
    processes = run["server_processes"] + run["workers"]
    return text + (f": the {whole - parts:+.2f} KB are what the parts do not count: the {processes} processes' own "
                   "memory (interpreters, page tables, kernel stacks) spread over the connections held, and page "
                   "cache and other processes moving meanwhile" if whole > parts else
                   ": less than the parts, as memory other processes freed during the run counts against the whole")


def _limits_rows(run: dict) -> list[tuple[str, object]]:
    lim = run["limits"]
    return [("host", f"{run['machine']['hostname']}: {run['machine']['cpu']} × {run['machine'].get('cpus')}"),
            ("kernel / Python / Locust", f"{run['machine']['kernel']} / {run['machine']['python']} / {run['machine']['locust']}"),
            ("RLIMIT_NOFILE soft / hard", f"{_fmt(lim['nofile_soft'])} / {_fmt(lim['nofile_hard'])}"),
            ("fs.nr_open", lim["nr_open"]), ("fs.file-max", lim["file_max"]),
            ("ip_local_port_range", "-".join(map(str, lim["ip_local_port_range"]))),
            ("somaxconn", lim["somaxconn"]), ("pid_max / threads-max", f"{lim['pid_max']:,} / {lim['threads_max']:,}"),
            ("memory available", f"{lim['mem_available'] / 2**30:.1f} GiB")]


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
