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
from dataclasses import dataclass, field

from harness.core.records import GAUGE_FIELDS, REFUSALS, ServerGauge

FIELDS = GAUGE_FIELDS
_INDEX = {name: i for i, name in enumerate(FIELDS)}
_SLOT_BYTES = 8 * 32  # room to add fields without changing the file layout
assert len(FIELDS) * 8 <= _SLOT_BYTES
_MAGIC = b"FDGAUGE1"
_HEADER_BYTES = 64

STARTING, SERVING, STOPPED = 0, 1, 2
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

    def read(self, index: int) -> ServerGauge:
        view = self._views[index]
        values = {name: view[i] for i, name in enumerate(FIELDS)}
        values["open"] = values["accepted"] - values["closed"]
        return values  # type: ignore[return-value]

    def read_all(self) -> list[ServerGauge]:
        return [self.read(i) for i in range(self.slots)]

    def close(self) -> None:
        self._views.clear()
        try:
            self._map.close()
        except BufferError:  # a caller still holds a view; the mapping goes with the process
            pass
