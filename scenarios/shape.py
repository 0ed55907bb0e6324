"""The load shape: Locust's side of the ramp rule (`harness.core.ramp`, where its theory of
operation is). Each tick it reads Locust's user count, the gauges (`BOARD`) and, with a memory
floor, this machine's MemAvailable; asks the rule what to do, tells the workers the phase, and
records why the ramp ended in `BOARD.stopped_by`."""

from __future__ import annotations

from dataclasses import replace

from locust import LoadTestShape

from harness.core import ramp
from harness.core.options import OPTIONS
from harness.system.limits import memory_available
from scenarios.board import BOARD


def _mem_available() -> int:
    """The memory this run may still take (MemAvailable, or its cgroup's room where less), or 0
    (not read) where /proc/meminfo cannot be opened (ENFILE)."""
    try:
        return memory_available()
    except OSError:
        return 0


class StepRampShape(LoadTestShape):
    # Locust's own "Number of users" and "Ramp up" fields are the target and the connection rate.
    use_common_options = True

    def __init__(self) -> None:
        super().__init__()
        self.state = ramp.State()
        self._workers_waited = False  # for this test's workers' first reports

    def reset_time(self) -> None:
        """Every test starts here (Locust's start_shape, for each START in the web UI): a fresh
        ramp, fresh tallies and gauges, no verdict from the last test. Locust calls this again once
        the test's first users are dispatched (MasterRunner.start): that only restarts the clock."""
        super().reset_time()
        if self.state.phase == "ramp" and self.state.dispatched:
            return
        self.state = ramp.State()
        self._workers_waited = False
        BOARD.new_test()

    def stopped(self) -> None:
        """The test was stopped (STOP in the web UI, or the end): the next START is a new test."""
        self.state = replace(self.state, phase="done")

    @property
    def phase(self) -> str:
        return self.state.phase

    def _settings(self) -> ramp.Settings:
        opts = self.runner.environment.parsed_options
        # In the web UI, Locust's own fields (the form's first two, -u/-r at start) are the target
        # and the rate; headless (harness run), the harness's own options are (Locust then sets
        # -u and -r to 1 by itself).
        ui = not getattr(opts, "headless", False)
        BOARD.connections = opts.num_users if ui and opts.num_users else opts.connections
        # what this test speaks and how, as the start form (or the command line) set it
        BOARD.options = {o.name: getattr(opts, o.name, o.default) for o in OPTIONS if o.web_ui}
        return ramp.Settings(target=BOARD.connections,
                             ramp_rate=(opts.spawn_rate if ui and opts.spawn_rate else opts.ramp_rate),
                             step_seconds=opts.step_seconds, max_seconds=opts.max_seconds,
                             hold_seconds=opts.hold, memory_floor=opts.memory_reserve,
                             bytes_per_connection=opts.connection_bytes, gauged=BOARD.server_board is not None)

    def _seen(self) -> ramp.Seen:
        totals = BOARD.totals()
        failures = totals.connects_failed
        return ramp.Seen(user_count=self.runner.user_count, open=totals.open, connects_ok=totals.connects_ok,
                         failures=failures, server_refusals=BOARD.server_refusals() if failures or totals.lost else {},
                         max_users=totals.max_users, held=totals.held, closed=totals.echo_failed,
                         mem_available=_mem_available() if self.runner.environment.parsed_options.memory_reserve else 0)

    def tick(self):
        if not self._workers_waited:  # once a test: a ramp that dispatches none at first must not wait again
            self._workers_waited = True
            if not BOARD.wait_for_workers(self.runner):
                super().reset_time()  # the ramp's clock starts once its workers can take users
        BOARD.set_phase(self.runner, self.state.phase)
        self.state, decision = ramp.tick(self.state, self.get_run_time(), self._settings(), self._seen())
        if self.state.stopped_by is not None:
            BOARD.stopped_by, BOARD.shed = self.state.stopped_by, self.state.shed
        BOARD.set_phase(self.runner, self.state.phase)
        return decision
