"""The registry of echo backends: loads the modules `harness.core.backends` names.

Backends are imported lazily, so naming `uvloop` costs nothing where it is not used. The contract
test checks each backend's `held_fds` against what its server reports, so a change that costs an
fd shows up there.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from harness.core.backends import BACKENDS, UnknownBackend, backend

__all__ = ["BACKENDS", "UnknownBackend", "get", "load"]

get = backend


def load(name: str) -> ModuleType:
    """The module of backend `name`, imported now."""
    return importlib.import_module(backend(name).module)
