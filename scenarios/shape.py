"""The load shape: ramp in steps to a target number of connections, hold, stop by itself.

Theory of operation, as a table of phases (`PHASES`): the shape ramps by `--ramp-rate` users a
second in steps of `--step-seconds`, never past the target or past what the workers may hold
(each worker's fd limit minus a reserve, as the workers report it). It leaves the ramp when the
target is reached ("target"), when connects start failing (the failure's name, e.g. "EMFILE" or
"EADDRNOTAVAIL": the run found a cap), or at the time bound ("timeout"); it then holds the users it
has for `--hold-seconds` and stops. `BOARD.stopped_by` records why.
"""

from __future__ import annotations

import math

from locust import LoadTestShape

from scenarios.gauges import BOARD

# Workers report what was answered once a second, so the shape sees it about a step late: with one
# step of lead a step could start only once the one before was reported, not when it was answered.
LEAD_STEPS = 2

PHASES = {
    "ramp": "adding users step by step",
    "hold": "holding the users reached; echoing every --echo-interval (workers are told by message)",
    "done": "stopped",
}


class StepRampShape(LoadTestShape):
    use_common_options = False

    def __init__(self) -> None:
        super().__init__()
        self.held_users = 0
        self.dispatched = 0  # the most users this shape has asked for
        self.hold_started = 0.0
        self.phase = "ramp"

    def _opts(self):
        return self.runner.environment.parsed_options

    def _capacity(self, target: int) -> int:
        """The target, lowered to what the workers' fd limits allow (once they have reported)."""
        allowed = BOARD.totals()["max_users"]
        return min(target, allowed) if allowed else target

    def tick(self):
        opts = self._opts()
        now = self.get_run_time()
        BOARD.set_phase(self.runner, self.phase)
        if self.phase == "ramp":
            failures = BOARD.totals()["connects_failed"]
            target = self._capacity(opts.target_connections)
            if failures:
                # The servers' own errno (EMFILE, FD_SETSIZE, ...) says more than the EOF a refused
                # client sees; the client's failure name stands where the servers refused nothing.
                refused = BOARD.server_refusals() or failures
                return self._hold(max(refused, key=refused.get), now)
            totals = BOARD.totals()
            if self.runner.user_count >= target and min(totals["open"], totals["connects_ok"]) >= target:
                return self._hold("target", now)
            if now >= opts.max_seconds:
                return self._hold("timeout", now)
            step = max(1, int(opts.ramp_rate * opts.step_seconds))
            # Never more than LEAD_STEPS steps ahead of the connections already answered (verified
            # or failed): on a busy machine the ramp slows down instead of piling up connects that
            # time out. The target is never passed.
            answered = totals["connects_ok"] + sum(failures.values())
            users = min(target, step * (math.floor(now / opts.step_seconds) + 1), answered + LEAD_STEPS * step)
            # Never ramp down: not below what was already asked for. (The master's user_count is
            # what workers have reported, a step behind; a target below it made Locust stop and
            # restart ~170k users of a million.)
            self.dispatched = max(users, self.dispatched)
            return self.dispatched, min(opts.ramp_rate * 2, max(1.0, float(step)))
        if self.phase == "hold" and now - self.hold_started < opts.hold_seconds:
            return self.held_users, max(1.0, float(opts.ramp_rate))
        self.phase = "done"
        BOARD.set_phase(self.runner, self.phase)
        return None

    def _hold(self, reason: str, now: float):
        BOARD.stopped_by = reason
        self.phase = "hold"
        BOARD.set_phase(self.runner, self.phase)
        self.hold_started = now
        self.held_users = self.dispatched  # every user asked for (a failed one idles; none is stopped)
        return self.held_users, max(1.0, float(self._opts().ramp_rate))
