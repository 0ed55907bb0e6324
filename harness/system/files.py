"""Result files: atomic writes and the machine metadata every result carries (pyperf-style)."""

from __future__ import annotations

import json
import os
import platform
import socket
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from harness.core.schema import SchemaError, kind_of, validate


def utc_stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def machine() -> dict:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return {"hostname": socket.gethostname(), "cpu": cpu, "cpus": os.cpu_count(),
            "kernel": platform.release(), "python": sys.version.split()[0]}


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Write to a temporary name in the same directory, then rename: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; results are for sharing
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def write_json_atomic(path: Path, doc: dict) -> Path:
    return write_bytes_atomic(path, (json.dumps(doc, indent=2) + "\n").encode())


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
