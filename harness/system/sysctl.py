"""`harness tune [--connections N] [--apply] [--restore]`: the sysctls N connections need here.

Without --apply nothing is changed: it prints each sysctl's current and needed value, why, and
the `sysctl -w` lines to type. `--apply` (root only) writes the ones that bind, after saving every
previous value into /run/harness-tune.json (written before the first change, and kept from the
first apply when applied again, so a second apply cannot lose the original values); `--restore`
writes them back and removes the file. Runs record that file's values in run.json
(`limits.tuned`), so a result says which sysctls were not the machine's own.
"""

from __future__ import annotations

from harness.core import tuning
from harness.system.files import write_json_atomic
from harness.system.limits import read_limits
from harness.system.sysctl_state import (
    STATE,
    TuneError,
    current,
    read,
    saved,
    sysctl_path,
)

__all__ = ["STATE", "TuneError", "apply", "current", "restore", "rows"]

def rows(connections: int) -> list[tuning.Row]:
    limits = read_limits()
    count = read("net.netfilter.nf_conntrack_count")
    limits["conntrack_count"] = int(count) if count else 0
    return tuning.needed(limits, current(), connections)


def _write(name: str, value: str) -> None:
    try:
        sysctl_path(name).write_text(value)
    except PermissionError:
        raise TuneError(f"writing {name} needs root (CAP_SYS_ADMIN or CAP_NET_ADMIN); run harness tune --apply "
                        "as root, or type the sysctl -w lines above") from None
    except OSError as exc:
        raise TuneError(f"writing {name}={value} failed: {exc.strerror}") from None


def apply(connections: int) -> list[tuning.Row]:
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
