"""The live progress display of a run: held vs target, connect rate, errors, elapsed time.

On a terminal it is a rich progress bar redrawn in place; elsewhere (CI, a pipe) one plain line
every few seconds and one as each phase begins, so logs stay readable.
"""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

PLAIN_EVERY_S = 5.0


class RunProgress:
    def __init__(self, target: int, label: str, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.target = target
        self.live = self.stream.isatty()
        self._last_plain = 0.0
        self._phase = ""  # a plain line also as each phase begins
        self._start = time.monotonic()
        if self.live:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,}"),
                TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[errors]}"), TimeElapsedColumn(),
                console=Console(file=self.stream), transient=False)
            self._task = self._progress.add_task(label, total=target, rate="", errors="")
            self._progress.start()

    def update(self, held: int, rate: float, errors: dict[str, int], phase: str) -> None:
        errs = ", ".join(f"{k} {v:,}" for k, v in errors.items()) or "no errors"
        if self.live:
            self._progress.update(self._task, completed=min(held, self.target), rate=f"{rate:,.0f} conn/s",
                                  errors=errs, description=phase)
            return
        now = time.monotonic()
        if now - self._last_plain >= PLAIN_EVERY_S or phase != self._phase:
            self._last_plain, self._phase = now, phase
            print(f"  [{now - self._start:5.0f}s] {phase}: held {held:,}/{self.target:,}, {rate:,.0f} conn/s, {errs}",
                  file=self.stream, flush=True)

    def close(self) -> None:
        if self.live:
            self._progress.stop()
