"""Live per-process server gauges in a shared-memory file (the "gauge board").

Theory of operation: the supervisor creates one small file (in /dev/shm by default) holding one
fixed-size slot of int64 fields per server process and maps it before any connection is accepted.
Each server process writes only its own slot, from plain Python counters, a few times a second;
any other process (the supervisor, `harness`, tests) maps the same file read-only and reads every
slot. The mapping is made before the first connection, so the gauges keep working when the server
is at its fd limit and cannot open anything, which is exactly when they matter.
"""

from __future__ import annotations

import mmap
import os
from collections import Counter
from dataclasses import dataclass, field

# Refusal reasons, in slot order. Each is a counter of connections the server closed or could
# not take, named by the errno (or condition) that caused it.
REFUSALS = ("EMFILE", "ENFILE", "ENOBUFS", "ENOMEM", "threads", "FD_SETSIZE", "other")

FIELDS = (
    "pid", "index", "role", "state", "port", "fd_soft", "fd_hard", "base_fds", "cap",
    "accepted", "closed", "bytes_echoed", "rss_bytes", "updated_ns",
    *(f"refused_{name}" for name in REFUSALS),
)
_INDEX = {name: i for i, name in enumerate(FIELDS)}
_SLOT_BYTES = 8 * 32  # room to add fields without changing the file layout
assert len(FIELDS) * 8 <= _SLOT_BYTES
_MAGIC = b"FDGAUGE1"
_HEADER_BYTES = 64

STARTING, SERVING, STOPPED = 0, 1, 2
STATE_NAMES = {STARTING: "starting", SERVING: "serving", STOPPED: "stopped"}
ROLE_SERVER, ROLE_ACCEPTOR = 0, 1  # an acceptor (handoff mode) hands connections on and holds none


@dataclass
class Counters:
    """What one server process counts, in plain Python ints (cheap on the hot path)."""

    accepted: int = 0
    closed: int = 0
    bytes_echoed: int = 0
    refused: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REFUSALS, 0))

    @property
    def open(self) -> int:
        return self.accepted - self.closed

    def refuse(self, reason: str, count: int = 1) -> None:
        self.refused[reason if reason in self.refused else "other"] += count


class Slot:
    """One process's slot, writable by that process."""

    def __init__(self, view: memoryview) -> None:
        self._view = view

    def set(self, **values: int) -> None:
        for name, value in values.items():
            self._view[_INDEX[name]] = value

    def publish(self, counters: Counters, rss_bytes: int, now_ns: int) -> None:
        v = self._view
        v[_INDEX["accepted"]] = counters.accepted
        v[_INDEX["closed"]] = counters.closed
        v[_INDEX["bytes_echoed"]] = counters.bytes_echoed
        v[_INDEX["rss_bytes"]] = rss_bytes
        for name, count in counters.refused.items():
            v[_INDEX["refused_" + name]] = count
        v[_INDEX["updated_ns"]] = now_ns

    def get(self, name: str) -> int:
        return self._view[_INDEX[name]]


class GaugeBoard:
    """A mapped gauge file with `slots` slots. Create it with `create`, read it with `open`."""

    def __init__(self, path: str, mapping: mmap.mmap, slots: int, writable: bool) -> None:
        self.path = path
        self._map = mapping
        self.slots = slots
        self.writable = writable
        body = memoryview(mapping)[_HEADER_BYTES:]
        self._views = [
            body[i * _SLOT_BYTES:(i + 1) * _SLOT_BYTES].cast("q") for i in range(slots)
        ]

    @classmethod
    def create(cls, path: str, slots: int) -> "GaugeBoard":
        size = _HEADER_BYTES + slots * _SLOT_BYTES
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, size)
            mapping = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        mapping[:len(_MAGIC)] = _MAGIC
        mapping[8:16] = slots.to_bytes(8, "little")
        return cls(path, mapping, slots, writable=True)

    @classmethod
    def open(cls, path: str, writable: bool = False) -> "GaugeBoard":
        """Map an existing gauge file (Python's mmap keeps one dup of the fd while mapped)."""
        fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
            mapping = mmap.mmap(fd, size, mmap.MAP_SHARED, prot)
        finally:
            os.close(fd)
        if mapping[:len(_MAGIC)] != _MAGIC:
            raise ValueError(f"{path} is not a gauge file (no {_MAGIC!r} header)")
        slots = int.from_bytes(mapping[8:16], "little")
        return cls(path, mapping, slots, writable=writable)

    def slot(self, index: int) -> Slot:
        return Slot(self._views[index])

    def read(self, index: int) -> dict[str, int]:
        view = self._views[index]
        values = {name: view[i] for i, name in enumerate(FIELDS)}
        values["open"] = values["accepted"] - values["closed"]
        return values

    def read_all(self) -> list[dict[str, int]]:
        return [self.read(i) for i in range(self.slots)]

    def close(self) -> None:
        self._views.clear()
        try:
            self._map.close()
        except BufferError:  # a caller still holds a view; the mapping goes with the process
            pass


def refusals(values: dict[str, int]) -> dict[str, int]:
    """The non-zero refusal counters of one slot, by reason."""
    return {name: values["refused_" + name] for name in REFUSALS if values["refused_" + name]}


def total_refusals(rows: list[dict[str, int]]) -> Counter:
    """The refusals of every slot in `rows`, added up by reason."""
    total: Counter = Counter()
    for row in rows:
        total.update(refusals(row))
    return total
