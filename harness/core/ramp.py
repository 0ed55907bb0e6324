"""The ramp rule the load shape follows, as a pure function of what the shape sees each tick.

Theory of operation, in three phases (ramp, hold, done): the ramp adds `ramp_rate` users a second in
steps of `step_seconds`, never past the target or past what the workers may hold (each worker's fd
limit minus a reserve, as the workers report it), and never more than LEAD_STEPS steps ahead of the
connections already answered (verified or failed), so a busy machine slows the ramp down instead
of piling up connects that time out. It never asks for fewer users than it already asked for: the
master's user count is what workers reported, a step behind, and a target below it would make
Locust stop users and start them again. The ramp ends when the target is reached ("target"),
when connects start failing (the servers' own errno where they refused any, e.g. EMFILE or
FD_SETSIZE, else the client's failure name, e.g. EADDRNOTAVAIL: the run found a cap), when
connections already verified are closed (a server sheds held connections to take new ones, as
nginx closes idle keep-alive connections at worker_connections: named by how they closed, e.g.
EOF), or at the time bound ("time-bound"); then the users reached are held for `hold_seconds`, and
the test stops.

`scenarios.shape.StepRampShape` feeds it Locust's and the gauges' numbers; tests feed it numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

# Workers report what was answered once a second, so the shape sees it about a step late: with one
# step of lead a step could start only once the one before was reported, not when it was answered.
LEAD_STEPS = 2
TIME_BOUND = "time-bound"  # why a ramp ends at --max-seconds (a connect that timed out is "timeout")

@dataclass(frozen=True)
class Settings:
    target: int
    ramp_rate: float
    step_seconds: float = 1.0
    max_seconds: float = 600.0
    hold_seconds: float = 10.0
    memory_floor: int = 0  # bytes of MemAvailable the ramp leaves free (0: no floor)
    bytes_per_connection: int = 9 * 1024  # what a connection still to come will take


@dataclass(frozen=True)
class Seen:
    """What the shape sees at a tick: Locust's user count and the workers' and servers' gauges."""

    user_count: int = 0
    open: int = 0
    connects_ok: int = 0
    failures: dict[str, int] = field(default_factory=dict)  # failed connects by name
    server_refusals: dict[str, int] = field(default_factory=dict)  # by errno
    max_users: int = 0  # what the workers' fd limits allow in all (0: not reported yet)
    held: int | None = None  # verified connections still open (None: not counted)
    closed: dict[str, int] = field(default_factory=dict)  # echo failures by name: how held ones closed
    mem_available: int = 0  # this machine's MemAvailable in bytes (0: not read)


@dataclass(frozen=True)
class State:
    phase: str = "ramp"
    dispatched: int = 0  # the most users asked for
    held_users: int = 0
    hold_started: float = 0.0
    stopped_by: str | None = None
    shed: bool = False  # stopped because the far end closed connections it had answered


Decision = tuple[int, float] | None  # (users, spawn rate) for Locust, or None: stop the test


def tick(state: State, now: float, settings: Settings, seen: Seen) -> tuple[State, Decision]:
    """The next state and what to tell Locust, `now` seconds into the test."""
    if state.phase == "ramp":
        target = min(settings.target, seen.max_users) if seen.max_users else settings.target
        if seen.failures:
            refused = seen.server_refusals or seen.failures
            return _hold(state, max(refused, key=refused.get), now, settings)
        if seen.held is not None and seen.connects_ok > seen.held:  # verified, then closed by the far end
            closed = seen.server_refusals or seen.closed or {"closed": seen.connects_ok - seen.held}
            return _hold(replace(state, shed=True), max(closed, key=closed.get), now, settings)
        if seen.user_count >= target and min(seen.open, seen.connects_ok) >= target:
            return _hold(state, "target", now, settings)
        if now >= settings.max_seconds:
            return _hold(state, TIME_BOUND, now, settings)
        if memory_low(state, settings, seen):
            return _hold(state, "memory", now, settings)
        step = max(1, int(settings.ramp_rate * settings.step_seconds))
        answered = seen.connects_ok + sum(seen.failures.values())
        users = min(target, step * (math.floor(now / settings.step_seconds) + 1), answered + LEAD_STEPS * step,
                    memory_room(settings, seen, answered))
        state = replace(state, dispatched=max(users, state.dispatched))
        return state, (state.dispatched, min(settings.ramp_rate * 2, max(1.0, float(step))))
    if state.phase == "hold" and now - state.hold_started < settings.hold_seconds:
        return state, (state.held_users, max(1.0, float(settings.ramp_rate)))
    return replace(state, phase="done"), None


def memory_room(settings: Settings, seen: Seen, answered: int) -> int:
    """With a memory floor: the users that fit, those answered and as many more as MemAvailable
    above the floor holds at their cost, so one big step cannot pass the floor before it is seen."""
    if not settings.memory_floor or not seen.mem_available:
        return math.inf  # type: ignore[return-value]
    return answered + max(0, seen.mem_available - settings.memory_floor) // settings.bytes_per_connection


def memory_low(state: State, settings: Settings, seen: Seen) -> bool:
    """MemAvailable is below the floor, counting what the connections asked for and not yet
    answered will take: ramping on would eat the machine's last memory, so the ramp stops here
    (`stopped_by: memory`) and what it holds is held."""
    if not settings.memory_floor or not seen.mem_available:
        return False
    # Never more than LEAD_STEPS steps are in flight (the rule above dispatches no further ahead);
    # the workers' answered count can fall for a while (a starved worker's report goes stale and
    # is left out of the totals for a few seconds), and that must not read as that many
    # connections still to come.
    step = max(1, int(settings.ramp_rate * settings.step_seconds))
    coming = min(max(0, state.dispatched - seen.connects_ok - sum(seen.failures.values())), LEAD_STEPS * step)
    return seen.mem_available < settings.memory_floor + coming * settings.bytes_per_connection


def _hold(state: State, reason: str, now: float, settings: Settings) -> tuple[State, Decision]:
    # every user asked for is held: a failed one idles, none is stopped
    state = replace(state, phase="hold", stopped_by=reason, hold_started=now, held_users=state.dispatched)
    return state, (state.held_users, max(1.0, float(settings.ramp_rate)))
