"""The registry of echo backends: the one place that names them.

Backends are imported lazily, so naming `uvloop` costs nothing where it is not used. `held_fds`
is how many fds a server process of that backend holds before its first connection (stdio,
listener, reserve fd, /proc/self/statm, the gauge mapping, the stop pipe, event-loop fds; a server
process closes everything else it inherits): its cap is the fd limit minus this. The contract test
checks it against what each server reports, so a change that costs an fd shows up there.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Backend:
    name: str
    module: str
    held_fds: int
    summary: str

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)


BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("threaded", "servers.backends.threaded", 10, "one thread per connection (socketserver style)"),
    Backend("selectors", "servers.backends.selector_loop", 10, "one non-blocking loop: epoll, poll or select"),
    Backend("asyncio", "servers.backends.asyncio_loop", 10, "stdlib asyncio event loop, Protocol-based echo"),
    Backend("uvloop", "servers.backends.uvloop_loop", 17, "asyncio echo on libuv (uvloop)"),
)}


class UnknownBackend(ValueError):
    pass


def get(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise UnknownBackend(
            f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}") from None
