"""`harness tune [--connections N] [--apply] [--restore]`: the sysctls N connections need here.

Without --apply nothing is changed: it prints each sysctl's current and needed value, why, and
the `sysctl -w` lines to type. `--apply` (root only) writes the ones that bind, after saving every
previous value into /run/harness-tune.json (written before the first change, and kept from the
first apply when applied again, so a second apply cannot lose the original values); `--restore`
writes them back and removes the file. Runs record that file's values in run.json
(`limits.tuned`), so a result says which sysctls were not the machine's own.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from harness.plan import tune
from harness.plan.limits import read_limits
from harness.results.store import write_json_atomic

STATE = Path(os.environ.get("HARNESS_TUNE_STATE", "/run/harness-tune.json"))
PROC_SYS = Path("/proc/sys")


class TuneError(RuntimeError):
    """Cannot apply or restore; the message names the cause and the fix."""


def _path(name: str) -> Path:
    return PROC_SYS / name.replace(".", "/")


def read(name: str) -> str | None:
    try:
        return " ".join(_path(name).read_text().split())
    except OSError:
        return None


def current() -> dict[str, str | None]:
    return {name: read(name) for name in tune.SYSCTLS}


def rows(connections: int) -> list[tune.Row]:
    limits = read_limits()
    count = read("net.netfilter.nf_conntrack_count")
    limits["conntrack_count"] = int(count) if count else 0
    return tune.needed(limits, current(), connections)


def saved() -> dict[str, str]:
    """The values --apply replaced (the machine's own), or {} when nothing is applied."""
    try:
        return json.loads(STATE.read_text())["previous"]
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError) as exc:  # the machine's own values may be in it: never overwrite
        raise TuneError(f"{STATE} cannot be read ({exc}); it holds the values --restore puts back: fix it, or "
                        "restore them by hand and remove it") from None


def _write(name: str, value: str) -> None:
    try:
        _path(name).write_text(value)
    except PermissionError:
        raise TuneError(f"writing {name} needs root (CAP_SYS_ADMIN or CAP_NET_ADMIN); run harness tune --apply "
                        "as root, or type the sysctl -w lines above") from None
    except OSError as exc:
        raise TuneError(f"writing {name}={value} failed: {exc.strerror}") from None


def apply(connections: int) -> list[tune.Row]:
    """Write every sysctl that binds for N; the previous values are saved first."""
    todo = [r for r in rows(connections) if r.binds]
    previous = saved()
    had_state = bool(previous)
    for r in todo:
        previous.setdefault(r.name, r.current)  # an earlier apply's original value stays the one restored
    if not todo:
        return todo
    try:
        write_json_atomic(STATE, {"previous": previous, "connections": connections})
    except OSError as exc:
        raise TuneError(f"saving the previous values in {STATE} failed ({exc.strerror}), so nothing was changed; "
                        "run harness tune --apply as root") from None
    written = []
    try:
        for r in todo:
            _write(r.name, r.needed)
            written.append(r)
    except TuneError:  # all or nothing: what was written goes back
        for r in written:
            _write(r.name, r.current)  # back to what it was before this apply
        if not had_state:
            STATE.unlink(missing_ok=True)
        raise
    return todo


def restore() -> dict[str, str]:
    """Put back every value --apply replaced; returns them."""
    previous = saved()
    for name, value in previous.items():
        _write(name, value)
    STATE.unlink(missing_ok=True)
    return previous
