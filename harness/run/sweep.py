"""`harness sweep`: one run per (backend, fd limit), then cap against limit per backend.

Each run has one server process with the given soft fd limit and asks for more connections than
it can hold, so it stops at its cap. numpy fits cap = slope × limit − offset per backend: a slope
of 1.00 says every extra fd is one more connection, and the offset is the fds the process holds.
"""

from __future__ import annotations

from pathlib import Path

from harness.core.fits import fit
from harness.run.config import RunConfig
from harness.run.execute import execute
from harness.run.prepare import prepare
from harness.system.files import machine, utc_stamp, write_json_atomic

OVERSHOOT = 1.25  # ask for this much more than the limit, so every run meets its cap


def sweep(backends: list[str], fd_limits: list[int], connections: int | None, out: Path,
          selector: str = "epoll", progress=print) -> dict:
    sweep_dir = out / f"sweep-{utc_stamp()}"
    points = []
    for backend in backends:
        for limit in fd_limits:
            cfg = RunConfig(backend=backend, connections=connections or int(limit * OVERSHOOT) + 50, processes=1,
                            fd_limit=limit, selector=selector, workers=1, hold=1.0, echo_interval=60.0,
                            ramp_rate=float(limit * 2), max_seconds=60.0, port=0, out=str(sweep_dir))
            doc, run_dir = execute(prepare(cfg), progress=False)
            point = {"backend": backend, "fd_limit": limit, "cap": doc["peak_connections"],
                     "predicted_cap": doc["predicted_cap"], "stopped_by": doc["stopped_by"],
                     "server_refused": doc["connects"]["server_refused"], "run": run_dir.name}
            point["error_pct"] = 100.0 * abs(point["cap"] - point["predicted_cap"]) / max(1, point["predicted_cap"])
            points.append(point)
            progress(f"  {backend:<10} fd limit {limit:>6,}: held {point['cap']:>6,} (predicted "
                     f"{point['predicted_cap']:,}, {point['error_pct']:.2f}% off), stopped by {point['stopped_by']}")
    fits = {b: fit([p for p in points if p["backend"] == b]) for b in backends}
    doc = {"schema": 1, "kind": "sweep", "started_at": sweep_dir.name.split("-", 1)[1], "machine": machine(),
           "selector": selector, "fd_limits": fd_limits, "points": points, "fits": fits}
    write_json_atomic(sweep_dir / "sweep.json", doc)
    doc["path"] = str(sweep_dir / "sweep.json")
    return doc


def table(doc: dict) -> str:
    rows = [f"  {'backend':<10} {'slope':>6} {'offset':>7}   cap = slope × fd limit − offset"]
    for backend, f in doc["fits"].items():
        slope = f"{f['slope']:.3f}" if f["slope"] is not None else "—"
        rows.append(f"  {backend:<10} {slope:>6} {f['offset']:>7}")
    return "\n".join(rows)
