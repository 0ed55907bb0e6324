"""`run.json`: the result document of one run, its schema version and its reader.

Like asv and pyperf: the document carries an integer `schema`; the reader refuses a schema it does
not know instead of misreading it, and checks that every required field is there with its type.
Run directories are named by what the run was: `<UTC time>-<backend>-<target connections>`.
"""

from __future__ import annotations

import json
from pathlib import Path

from scenarios.tally import WORKER_FULL

SCHEMA = 1
STOPPED_BY = ("target", "EMFILE", "ENFILE", "FD_SETSIZE", "EADDRNOTAVAIL", "ECONNREFUSED", "threads",
              "memory", "timeout", "interrupted", "error")
REQUIRED: dict[str, type | tuple[type, ...]] = {
    "schema": int, "started_at": str, "duration_s": (int, float), "backend": str, "share": str,
    "host": str, "port": int, "server_processes": int, "server_fd_limit": int, "workers": int,
    "user_mode": str, "source_addresses": list, "target_connections": int, "peak_connections": int,
    "peak_connections_servers": int, "peak_connections_by_process": list, "predicted_cap": int,
    "stopped_by": str, "faults": list, "echo": dict, "memory": dict, "limits": dict, "machine": dict, "plan": dict,
    "series": list, "latency_series": list, "files": dict,
}
ECHO_FIELDS = ("sent", "verified", "mismatched")
MEMORY_FIELDS = ("server_rss_per_conn_bytes", "locust_rss_per_conn_bytes", "kernel_slab_per_conn_bytes")
SERIES_FIELDS = ("t", "kernel_established", "server_open", "server_open_by_process", "locust_open",
                 "connects_ok", "connects_failed", "server_refused", "echoes_verified", "server_rss_bytes",
                 "locust_rss_bytes", "slab_bytes", "server_cpu_s", "locust_cpu_s")


class SchemaError(ValueError):
    pass


def map_stopped_by(reason: str | None) -> str:
    """A stop reason from the run (a server refusal or a client failure name) as a schema value."""
    if reason in STOPPED_BY:
        return reason
    if reason in ("ENOBUFS", "ENOMEM"):
        return "memory"
    if reason == WORKER_FULL:  # the client side's fd limit
        return "EMFILE"
    return "error"


def validate(doc: dict) -> dict:
    if not isinstance(doc, dict) or "schema" not in doc:
        raise SchemaError("not a run document: no 'schema' field")
    if doc["schema"] != SCHEMA:
        raise SchemaError(f"run.json schema {doc['schema']!r} is not one this harness reads (it reads "
                          f"schema {SCHEMA}); use the harness version that wrote it")
    for name, kind in REQUIRED.items():
        if name not in doc:
            raise SchemaError(f"run.json lacks the field {name!r}")
        if not isinstance(doc[name], kind) or isinstance(doc[name], bool):
            raise SchemaError(f"run.json field {name!r} has type {type(doc[name]).__name__}")
    if doc["stopped_by"] not in STOPPED_BY:
        raise SchemaError(f"run.json stopped_by {doc['stopped_by']!r} is not one of {', '.join(STOPPED_BY)}")
    for group, fields in (("echo", ECHO_FIELDS), ("memory", MEMORY_FIELDS)):
        missing = [f for f in fields if f not in doc[group]]
        if missing:
            raise SchemaError(f"run.json {group} lacks {', '.join(missing)}")
    for point in doc["series"]:
        missing = [f for f in SERIES_FIELDS if f not in point]
        if missing:
            raise SchemaError(f"run.json series point lacks {', '.join(missing)}")
    for name in ("hostname", "cpu", "kernel", "python", "locust"):
        if name not in doc["machine"]:
            raise SchemaError(f"run.json machine lacks {name!r}")
    return doc


def load(path: str | Path) -> dict:
    """Read and validate a run.json (or the run.json inside a run directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / "run.json"
    with open(path) as f:
        return validate(json.load(f))


def run_dir_name(started_at: str, backend: str, target: int) -> str:
    return f"{started_at}-{backend}-{target}"
