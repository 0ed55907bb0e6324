"""Every result kind the harness writes, its schema version, and the one reader for each.

Like asv and pyperf: each document carries an integer `schema` and (except run.json, the first
kind) a `kind`; the readers refuse a kind or a version they do not know, by name, instead of
misreading it, and a file that is not whole JSON (cut off mid-write by something else) is refused
with where it breaks. `validate` checks a run document's every required field and its type.
Run directories are named by what the run was: `<UTC time>-<backend>-<target connections>`.
"""

from __future__ import annotations

import json
from pathlib import Path

from harness.core.words import WORKER_FULL

SCHEMA = 1
# Every kind of result file and the schema version this harness reads and writes for it.
KINDS = {"run": SCHEMA, "sweep": 1, "tour": 1, "bench-echo": 1, "bench-memory": 1, "bench-hold": 1,
         "bench-idle": 1, "bench-reference": 1, "bench-connect": 1}
STOPPED_BY = ("target", "EMFILE", "ENFILE", "FD_SETSIZE", "EADDRNOTAVAIL", "ECONNREFUSED", "ECONNRESET", "EOF",
              "reply", "threads", "memory", "timeout", "interrupted", "error")
# failure names of a wrong reply (scenarios.protocols): stopped_by "reply", the name in stop_detail
REPLY_FAILURES = ("mismatch", "error-reply", "unexpected-reply", "bad-response", "unasked", "too-long")
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
    if reason in REPLY_FAILURES or (reason or "").startswith("http-"):
        return "reply"
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


def read_json(path: str | Path) -> dict:
    """A result file's JSON, or SchemaError naming the file and where it stops being JSON."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SchemaError(f"{path} is not whole JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}): "
                          "it was cut off or is not a result file; re-run, or restore it") from None
    except UnicodeDecodeError:
        raise SchemaError(f"{path} is not a text file; give a run directory or a result .json file") from None
    if not isinstance(doc, dict):
        raise SchemaError(f"{path} holds JSON but not a result document")
    return doc


def kind_of(doc: dict) -> str:
    """The document's kind, checked with its version: SchemaError names what is not understood."""
    kind = doc.get("kind", "run")
    if kind not in KINDS:
        raise SchemaError(f"result kind {kind!r} is not one this harness reads ({', '.join(KINDS)})")
    if doc.get("schema") != KINDS[kind]:
        raise SchemaError(f"{kind} schema {doc.get('schema')!r} is not one this harness reads (it reads "
                          f"schema {KINDS[kind]}); use the harness version that wrote it")
    return kind


def load(path: str | Path) -> dict:
    """Read and validate a run.json (or the run.json inside a run directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / "run.json"
    return validate(read_json(path))


def load_result(path: str | Path) -> tuple[str, dict]:
    """(kind, document) of a run directory, a sweep directory or any result .json file."""
    path = Path(path)
    if path.is_dir():
        for name in ("run.json", "sweep.json"):
            if (path / name).exists():
                return load_result(path / name)
        raise SchemaError(f"{path} holds no run.json or sweep.json; give a run or sweep directory")
    doc = read_json(path)
    kind = kind_of(doc)
    return kind, validate(doc) if kind == "run" else doc


def run_dir_name(started_at: str, backend: str, target: int) -> str:
    return f"{started_at}-{backend}-{target}"
