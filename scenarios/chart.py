"""The Connections tab's picture as data: what is held, in all and per server process, one point a
second from the test's start, with the kernel's count where it was taken; kept to at most
MAX_POINTS by halving (a 100,000-connection run is a few hundred points, not one per connection).
`static/connections-chart.js` draws it in the page."""

from __future__ import annotations

from pathlib import Path

from harness.core.planning import PORT_NUMBERS

MAX_POINTS = 300
SCRIPT = Path(__file__).resolve().parent / "static" / "connections-chart.js"


class Series:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.points: list[dict] = []
        self.t0: float | None = None
        self.every = 1  # record one sample in this many
        self.seen = 0
        self.kernel_at = 0.0

    def record(self, board, now: float) -> None:
        """One sample of `board` (scenarios.board.Board) while a test runs."""
        if board.phase == "idle":
            return
        if self.t0 is None:
            self.t0 = now
        self.seen += 1
        if (self.seen - 1) % self.every:
            return
        servers = board.servers()
        kernel = None
        if board.kernel_established is not None and board.kernel_at > self.kernel_at:
            kernel, self.kernel_at = board.kernel_established, board.kernel_at
        held = sum(g["open"] for g in servers) if servers else board.totals().held
        self.points.append({"t": round(now - self.t0, 1), "held": held, "kernel": kernel,
                            "by_process": [g["open"] for g in servers]})
        if len(self.points) > MAX_POINTS:
            self.points = self.points[::2]
            self.every *= 2

    def as_dict(self, board) -> dict:
        return {"points": self.points, "caps": sorted({g["cap"] for g in board.servers()}),
                "port_numbers": PORT_NUMBERS, "test": board.test}
