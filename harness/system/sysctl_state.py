"""The sysctls as the kernel has them now, and the values `harness tune --apply` replaced (its state
file, /run/harness-tune.json): read by `harness tune` and by every run, which records them."""

from __future__ import annotations

import json
import os
from pathlib import Path

from harness.core import tuning
from harness.core.refusal import Refused

STATE = Path(os.environ.get("HARNESS_TUNE_STATE", "/run/harness-tune.json"))
PROC_SYS = Path("/proc/sys")


class TuneError(Refused, RuntimeError):
    """Cannot apply or restore; the message names the cause and the fix."""


def sysctl_path(name: str) -> Path:
    return PROC_SYS / name.replace(".", "/")


def read(name: str) -> str | None:
    try:
        return " ".join(sysctl_path(name).read_text().split())
    except OSError:
        return None


def current() -> dict[str, str | None]:
    return {name: read(name) for name in tuning.SYSCTLS}


def saved() -> dict[str, str]:
    """The values --apply replaced (the machine's own), or {} when nothing is applied."""
    try:
        return json.loads(STATE.read_text())["previous"]
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError) as exc:  # the machine's own values may be in it: never overwrite
        raise TuneError(f"{STATE} cannot be read ({exc}); it holds the values --restore puts back: fix it, or "
                        "restore them by hand and remove it") from None
