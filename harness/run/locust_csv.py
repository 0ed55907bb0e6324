"""Locust's own outputs in a run directory (`--csv` files, its HTML report, the logs), parsed into
the plain rows `harness.core.rundoc` builds run.json from."""

from __future__ import annotations

import csv
from pathlib import Path

FILES = ("locust_stats.csv", "locust_stats_history.csv", "locust_failures.csv", "locust_exceptions.csv",
         "locust.html", "logs")


def present(run_dir: Path) -> dict[str, str]:
    """The files of FILES that the run wrote, by name (relative to the run directory)."""
    return {name: name for name in FILES if (run_dir / name).exists()}


def stats(path: Path) -> dict:
    """Locust's summary row per TCP request name: counts and percentiles in ms."""
    if not path.exists():
        return {}
    with open(path) as f:
        rows = {r["Name"]: r for r in csv.DictReader(f) if r["Type"] == "TCP"}
    return {name: {"requests": int(r["Request Count"]), "failures": int(r["Failure Count"]),
                   "p50": _num(r.get("50%")), "p90": _num(r.get("90%")), "p99": _num(r.get("99%")),
                   "max": _num(r.get("Max Response Time"))} for name, r in rows.items()}


def latency_series(path: Path, epoch0: float) -> list[dict]:
    """Echo latency percentiles per second from Locust's own stats history (its histogram of the
    last 10 s), against the users held at that moment; t is seconds since the run started."""
    if not path.exists():
        return []
    with open(path) as f:
        rows = [r for r in csv.DictReader(f) if r["Name"] == "echo" and r["50%"] not in ("N/A", "")]
    return [{"t": round(int(r["Timestamp"]) - epoch0, 1), "held": int(r["User Count"]),
             "rps": _num(r["Requests/s"]), "p50": _num(r["50%"]), "p90": _num(r["90%"]),
             "p99": _num(r["99%"]), "max": _num(r["100%"])} for r in rows]


def _num(text: str | None) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None
