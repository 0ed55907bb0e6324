"""Every result kind the harness writes, its schema version, and what a reader must check.

Like asv and pyperf: each document carries an integer `schema` and (except run.json, the first
kind) a `kind`; a reader refuses a kind or a version it does not know, by name, instead of misreading
it, and migrates a run document of an older schema it knows (`migrate`). `validate` checks a run
document's every required field and its type. Run directories are named by what the run was:
`<UTC time>-<backend>-<target connections>`. Reading files is `harness.system.files`' job.

Schema 2 (schema 1 is migrated on load): `stopped_by: time-bound` where the ramp's time bound
ended it (schema 1 said `timeout`, as for connects that timed out); the diagnosis has a `cause`;
`config` names the server fd limit `fd_limit` and records the planned `echo_timeout` and
`echo_interval`; `connects.stages` counts the stages past connect (TLS handshakes, upgrades).
"""

from __future__ import annotations

from harness.core.records import SERIES_REQUIRED
from harness.core.refusal import Refused
from harness.core.words import WORKER_FULL

SCHEMA = 2
# Every kind of result file and the schema version this harness reads and writes for it.
KINDS = {"run": SCHEMA, "sweep": 1, "tour": 1, "bench-echo": 1, "bench-memory": 1, "bench-hold": 1,
         "bench-idle": 1, "bench-reference": 1, "bench-connect": 1}
STOPPED_BY = ("target", "EMFILE", "ENFILE", "FD_SETSIZE", "EADDRNOTAVAIL", "ECONNREFUSED", "ECONNRESET", "EOF",
              "reply", "threads", "memory", "timeout", "time-bound", "interrupted", "error")
# failure names of a wrong reply (scenarios.protocols): stopped_by "reply", the name in stop_detail
REPLY_FAILURES = ("mismatch", "error-reply", "unexpected-reply", "bad-response", "unasked", "too-long")
REQUIRED: dict[str, type | tuple[type, ...]] = {
    "schema": int, "started_at": str, "duration_s": (int, float), "backend": str, "share": str,
    "host": str, "family": int, "port": int, "server_processes": int, "server_fd_limit": int, "workers": int,
    "user_mode": str, "source_addresses": list, "target_connections": int, "peak_connections": int,
    "peak_connections_servers": int, "peak_connections_by_process": list, "predicted_cap": int,
    "stopped_by": str, "faults": list, "echo": dict, "memory": dict, "limits": dict, "machine": dict, "plan": dict,
    "series": list, "latency_series": list, "files": dict,
}
ECHO_FIELDS = ("sent", "verified", "mismatched")
MEMORY_FIELDS = ("server_rss_per_conn_bytes", "locust_rss_per_conn_bytes", "kernel_slab_per_conn_bytes")


MIGRATED = (1,)  # older run schemas `migrate` reads


class SchemaError(Refused, ValueError):
    pass


def map_stopped_by(reason: str | None) -> str:
    """A stop reason from the run (a server refusal or a client failure name) as a schema value."""
    if reason in STOPPED_BY:
        return reason
    if reason in ("ENOBUFS", "ENOMEM"):
        return "memory"
    if reason == WORKER_FULL:  # the client side's fd limit
        return "EMFILE"
    # a wrong reply, or a refusal in the protocol's own words (http-503, ws-close-1013, mqtt-refused-5, tls-verify)
    if reason in REPLY_FAILURES or (reason or "").startswith(("http-", "ws-", "mqtt-", "tls-")):
        return "reply"
    return "error"


# A schema-1 verdict's limit -> the cause schema 2 records beside it.
CAUSE_OF_LIMIT = {"server fd limit": "fd-limit", "target fd limit": "fd-limit", "Locust workers' fd limit": "fd-limit",
                  "source ports": "source-ports", "fs.file-max": "file-table", "memory": "memory", "threads": "threads",
                  "FD_SETSIZE": "fd-setsize", "accept queue": "stopped-accepting", "timeouts": "timeouts",
                  "target": "reached", "target refuses these clients": "refused",
                  "target's own connection limit": "refused"}


def migrate(doc: dict) -> dict:
    """A run document of an older schema this harness knows, as the current schema says it."""
    if doc.get("schema") == 1:
        doc = {**doc, "schema": 2}
        config = dict(doc.get("config", {}))
        if "server_fd_limit" in config:
            config["fd_limit"] = config.pop("server_fd_limit")
        doc["config"] = config
        if doc.get("diagnosis"):
            cause = CAUSE_OF_LIMIT.get(doc["diagnosis"].get("limit"), "unknown")
            if doc["diagnosis"].get("limit") == "target's own connection limit" and "closed connections it had answered" \
                    in doc["diagnosis"].get("summary", ""):
                cause = "shed"
            doc["diagnosis"] = {"cause": cause, **doc["diagnosis"]}
        doc["connects"] = {"stages": {}, **doc.get("connects", {})}
    if "family" not in doc and "host" in doc:  # written before runs said their address family
        doc = {**doc, "family": 6 if ":" in doc["host"] else 4}
    return doc


def validate(doc: dict) -> dict:
    if not isinstance(doc, dict) or "schema" not in doc:
        raise SchemaError("not a run document: no 'schema' field")
    doc = migrate(doc)
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
        missing = [f for f in SERIES_REQUIRED if f not in point]
        if missing:
            raise SchemaError(f"run.json series point lacks {', '.join(missing)}")
    for name in ("hostname", "cpu", "kernel", "python", "locust"):
        if name not in doc["machine"]:
            raise SchemaError(f"run.json machine lacks {name!r}")
    return doc


def kind_of(doc: dict) -> str:
    """The document's kind, checked with its version: SchemaError names what is not understood."""
    kind = doc.get("kind", "run")
    if kind not in KINDS:
        raise SchemaError(f"result kind {kind!r} is not one this harness reads ({', '.join(KINDS)})")
    if kind == "run" and doc.get("schema") in MIGRATED:
        return kind
    if doc.get("schema") != KINDS[kind]:
        raise SchemaError(f"{kind} schema {doc.get('schema')!r} is not one this harness reads (it reads "
                          f"schema {KINDS[kind]}); use the harness version that wrote it")
    return kind


def run_dir_name(started_at: str, backend: str, target: int) -> str:
    return f"{started_at}-{backend}-{target}"
