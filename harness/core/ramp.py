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
# The harness's own servers publish their refusals (EMFILE, FD_SETSIZE) every 0.25 s, and a client
# can see the close a refusal makes before that: with failures and no refusal yet, the ramp waits
# this long for one before it names the stop by the clients' failure.
GAUGE_LAG_S = 0.6
# The open connections the memory they took is read over, against the plan's cost per connection
MIN_OPEN_FOR_COST = 500
# ...and no more than this many times the plan's: the memory read is the machine's (or the cgroup's),
# and another process's allocation must not read as the connections' cost
MAX_COST_FACTOR = 4
TIME_BOUND = "time-bound"  # why a ramp ends at --max-seconds (a connect that timed out is "timeout")

@dataclass(frozen=True)
class Settings:
    target: int
    ramp_rate: float
    step_seconds: float = 1.0
    max_seconds: float = 600.0
    hold_seconds: float = 10.0
    memory_floor: int = 0  # bytes of available memory the ramp leaves free (0: no floor)
    bytes_per_connection: int = 9 * 1024  # what a connection still to come will take
    gauged: bool = False  # the servers publish their refusals (the harness's own servers)


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
    mem_available: int = 0  # MemAvailable, or the run's cgroup's room where less, in bytes (0: not read)


@dataclass(frozen=True)
class State:
    phase: str = "ramp"
    dispatched: int = 0  # the most users asked for
    held_users: int = 0
    hold_started: float = 0.0
    stopped_by: str | None = None
    shed: bool = False  # stopped because the far end closed connections it had answered
    failed_at: float | None = None  # when the ramp first saw a failed connect
    mem_start: int = 0  # the memory available at the ramp's first reading (0: not read yet)


Decision = tuple[int, float] | None  # (users, spawn rate) for Locust, or None: stop the test


def tick(state: State, now: float, settings: Settings, seen: Seen) -> tuple[State, Decision]:
    """The next state and what to tell Locust, `now` seconds into the test."""
    if state.phase == "ramp":
        if not state.mem_start and seen.mem_available:
            state = replace(state, mem_start=seen.mem_available)
        target = min(settings.target, seen.max_users) if seen.max_users else settings.target
        if seen.failures:
            failed_at = state.failed_at if state.failed_at is not None else now
            if settings.gauged and not seen.server_refusals and now - failed_at < GAUGE_LAG_S:
                return replace(state, failed_at=failed_at), (state.dispatched, _spawn_rate(settings))
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
                    memory_room(state, settings, seen, answered))
        state = replace(state, dispatched=max(users, state.dispatched))
        return state, (state.dispatched, _spawn_rate(settings))
    if state.phase == "hold" and now - state.hold_started < settings.hold_seconds:
        return state, (state.held_users, max(1.0, float(settings.ramp_rate)))
    return replace(state, phase="done"), None


def _spawn_rate(settings: Settings) -> float:
    """The rate Locust spawns a step at: the whole step within half a step's time."""
    return min(settings.ramp_rate * 2, max(1.0, float(max(1, int(settings.ramp_rate * settings.step_seconds)))))


def connection_cost(state: State, settings: Settings, seen: Seen) -> int:
    """What a connection still to come will take: the plan's cost, or what the open ones have taken
    so far where that is more (the memory gone since the ramp began over the connections open, once
    there are enough of them that the processes' own growth is a small part): a TLS handshake in
    flight, or a server dearer than planned, slows the ramp before it passes the floor."""
    if state.mem_start and seen.open >= MIN_OPEN_FOR_COST:
        taken = (state.mem_start - seen.mem_available) // seen.open
        return min(MAX_COST_FACTOR * settings.bytes_per_connection, max(settings.bytes_per_connection, taken))
    return settings.bytes_per_connection


def memory_room(state: State, settings: Settings, seen: Seen, answered: int) -> int:
    """With a memory floor: the users that fit, those answered and half as many more as the memory
    available above the floor holds at their cost. The other half is the margin for what those in
    flight take before a reading shows it and for a cost above the estimate: a step cannot pass the
    floor before it is seen, and the ramp slows as it nears the floor (a cgroup's limit is met by
    the OOM killer, not by a failed connect)."""
    if not settings.memory_floor or not seen.mem_available:
        return math.inf  # type: ignore[return-value]
    return answered + (_room_for(state, settings, seen) + 1) // 2  # one more where one fits: never a stall


def _room_for(state: State, settings: Settings, seen: Seen) -> int:
    """The connections the memory above the floor holds at their cost."""
    return max(0, seen.mem_available - settings.memory_floor) // connection_cost(state, settings, seen)


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
    # ...and once the room left is a small part of a step, the ramp's halving steps (memory_room)
    # would only crawl on towards the floor
    return _room_for(state, settings, seen) < coming + max(1, step // 20)


def _hold(state: State, reason: str, now: float, settings: Settings) -> tuple[State, Decision]:
    # every user asked for is held: a failed one idles, none is stopped
    state = replace(state, phase="hold", stopped_by=reason, hold_started=now, held_users=state.dispatched)
    return state, (state.held_users, max(1.0, float(settings.ramp_rate)))
