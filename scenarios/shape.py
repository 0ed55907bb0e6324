"""The load shape: Locust's side of the ramp rule (`harness.plan.ramp`, where its theory of
operation is). Each tick it reads Locust's user count and the gauges (`BOARD`), asks the rule what
to do, tells the workers the phase, and records why the ramp ended in `BOARD.stopped_by`."""

from __future__ import annotations

from locust import LoadTestShape

from harness.plan import ramp
from scenarios.gauges import BOARD


class StepRampShape(LoadTestShape):
    use_common_options = False

    def __init__(self) -> None:
        super().__init__()
        self.state = ramp.State()

    @property
    def phase(self) -> str:
        return self.state.phase

    def _settings(self) -> ramp.Settings:
        opts = self.runner.environment.parsed_options
        return ramp.Settings(target=opts.target_connections, ramp_rate=opts.ramp_rate,
                             step_seconds=opts.step_seconds, max_seconds=opts.max_seconds,
                             hold_seconds=opts.hold_seconds)

    def _seen(self) -> ramp.Seen:
        totals = BOARD.totals()
        failures = totals["connects_failed"]
        return ramp.Seen(user_count=self.runner.user_count, open=totals["open"], connects_ok=totals["connects_ok"],
                         failures=failures, server_refusals=BOARD.server_refusals() if failures else {},
                         max_users=totals["max_users"])

    def tick(self):
        BOARD.set_phase(self.runner, self.state.phase)
        self.state, decision = ramp.tick(self.state, self.get_run_time(), self._settings(), self._seen())
        if self.state.stopped_by is not None:
            BOARD.stopped_by = self.state.stopped_by
        BOARD.set_phase(self.runner, self.state.phase)
        return decision
