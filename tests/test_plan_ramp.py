"""`harness.core.ramp`: the load shape's rule, fed numbers tick by tick."""

from __future__ import annotations

from dataclasses import replace

from harness.core import ramp
from harness.core.ramp import LEAD_STEPS, Seen, Settings, State, tick

SETTINGS = Settings(target=1000, ramp_rate=100, step_seconds=1.0, max_seconds=60, hold_seconds=5)


def test_ramps_one_step_a_second_while_connections_are_answered():
    state = State()
    asked = []
    for second in range(4):
        state, decision = tick(state, second + 0.5, SETTINGS, Seen(connects_ok=100 * second, open=100 * second))
        asked.append(decision)
    assert asked == [(100, 100.0), (200, 100.0), (300, 100.0), (400, 100.0)]  # one step a second
    assert state.phase == "ramp" and state.dispatched == 400


def test_never_more_than_lead_steps_ahead_of_what_was_answered():
    state, decision = tick(State(), 9.5, SETTINGS, Seen(connects_ok=150, failures={}))
    assert decision[0] == 150 + LEAD_STEPS * 100  # not the 1,000 the clock would allow


def test_never_asks_for_fewer_users_than_it_already_asked_for():
    state = State(dispatched=700)
    state, decision = tick(state, 3.5, SETTINGS, Seen(connects_ok=100))
    assert decision[0] == 700


def test_capped_by_what_the_workers_may_hold():
    state, decision = tick(State(), 30, SETTINGS, Seen(connects_ok=1000, max_users=600))
    assert decision[0] == 600
    state, decision = tick(state, 31, SETTINGS, Seen(user_count=600, open=600, connects_ok=600, max_users=600))
    assert state.phase == "hold" and state.stopped_by == "target"


def test_target_reached_holds_for_hold_seconds_then_stops():
    state = State(dispatched=1000)
    state, decision = tick(state, 12, SETTINGS, Seen(user_count=1000, open=1000, connects_ok=1000))
    assert (state.phase, state.stopped_by, state.hold_started, decision) == ("hold", "target", 12, (1000, 100.0))
    state, decision = tick(state, 16.9, SETTINGS, Seen(user_count=1000, open=1000, connects_ok=1000))
    assert decision == (1000, 100.0)
    state, decision = tick(state, 17.0, SETTINGS, Seen())
    assert state.phase == "done" and decision is None


def test_failing_connects_end_the_ramp_named_by_the_servers_errno_first():
    seen = Seen(connects_ok=246, failures={"EOF": 54}, server_refusals={"EMFILE": 54})
    state, _ = tick(State(dispatched=300), 4, SETTINGS, seen)
    assert state.phase == "hold" and state.stopped_by == "EMFILE" and state.held_users == 300 and not state.shed
    state, _ = tick(State(dispatched=300), 4, SETTINGS, Seen(failures={"EADDRNOTAVAIL": 3, "timeout": 1}))
    assert state.stopped_by == "EADDRNOTAVAIL"


def test_verified_connections_closed_by_the_far_end_end_the_ramp_named_by_how_they_closed():
    # nginx at worker_connections answers every connection, then closes idle ones to take new ones:
    # no connect fails, held stays below the target, and without this the ramp ran to its time bound
    seen = Seen(user_count=400, open=180, connects_ok=400, held=180, closed={"EOF": 220})
    state, _ = tick(State(dispatched=400), 4, SETTINGS, seen)
    assert state.phase == "hold" and state.stopped_by == "EOF" and state.held_users == 400 and state.shed
    state, _ = tick(State(dispatched=400), 4, SETTINGS, Seen(connects_ok=400, held=399))
    assert state.stopped_by == "closed"  # one closed, before its worker reported how
    state, _ = tick(State(dispatched=400), 4, SETTINGS, Seen(connects_ok=400, held=400, open=400))
    assert state.phase == "ramp"  # all still held: ramp on


def test_the_time_bound_ends_the_ramp():
    state, decision = tick(State(dispatched=400), 60, SETTINGS, Seen(connects_ok=400, open=400, user_count=400))
    assert state.stopped_by == "time-bound" and decision == (400, 100.0)


def test_the_ramp_stops_at_the_memory_floor_counting_what_is_still_coming():
    floored = Settings(target=1000, ramp_rate=100, memory_floor=1 << 30, bytes_per_connection=10_000)
    # 300 asked for, 200 answered: the 100 still to come take 1 MB of the 5 MB above the floor: go on
    state, decision = tick(State(dispatched=300), 3.5, floored, Seen(connects_ok=200, mem_available=(1 << 30) + 5_000_000))
    assert state.phase == "ramp" and decision[0] == 400
    # the same machine with 0.5 MB above the floor: the 100 coming would pass it
    state, decision = tick(State(dispatched=300), 3.5, floored, Seen(connects_ok=200, mem_available=(1 << 30) + 500_000))
    assert (state.phase, state.stopped_by, decision) == ("hold", "memory", (300, 100.0))
    # a stale report makes the answered count fall: still no more than LEAD_STEPS steps are coming
    big = Settings(target=1_000_000, ramp_rate=100, memory_floor=1 << 30, bytes_per_connection=10_000)
    state, _ = tick(State(dispatched=300_000), 3.5, big, Seen(connects_ok=10, mem_available=(1 << 30) + 3_000_000))
    assert state.phase == "ramp"  # 200 coming (2 MB), not 299,990
    # no floor, or MemAvailable not read: never
    state, _ = tick(State(dispatched=300), 3.5, SETTINGS, Seen(connects_ok=200, mem_available=1))
    assert state.phase == "ramp"
    state, _ = tick(State(dispatched=300), 3.5, floored, Seen(connects_ok=200, mem_available=0))
    assert state.phase == "ramp"


def test_a_step_never_asks_for_more_than_half_the_memory_above_the_floor_holds():
    """One step of 1,000 where 3 MB above the floor holds 300 at 10 KB each: 150 are asked for (the
    other half is the margin for what is in flight and not yet read), and the ramp goes on as they
    are answered, halving its way to the floor (the floor, not the step, decides)."""
    floored = Settings(target=10_000, ramp_rate=1000, memory_floor=1 << 30, bytes_per_connection=10_000)
    state, decision = tick(State(), 0.5, floored, Seen(mem_available=(1 << 30) + 3_000_000))
    assert state.phase == "ramp" and decision[0] == 150
    state, decision = tick(state, 1.5, floored, Seen(connects_ok=300, open=300, mem_available=(1 << 30) + 1_000_000))
    assert state.phase == "ramp" and decision[0] == 350
    # room for 40 more, fewer than a twentieth of a step: the ramp stops there, named memory
    state, decision = tick(state, 2.5, floored, Seen(connects_ok=350, open=350, mem_available=(1 << 30) + 400_000))
    assert (state.phase, state.stopped_by, decision[0]) == ("hold", "memory", 350)


def test_connections_dearer_than_planned_slow_the_ramp_by_what_they_took():
    """The plan said 10 KB a connection; the 1,000 open took 40 MB since the ramp began (a TLS
    handshake's buffers): the room above the floor is counted at 40 KB each."""
    floored = Settings(target=100_000, ramp_rate=10_000, memory_floor=1 << 30, bytes_per_connection=10_000)
    start = (1 << 30) + 100_000_000
    state, _ = tick(State(), 0.1, floored, Seen(mem_available=start))
    assert state.mem_start == start
    seen = Seen(connects_ok=1000, open=1000, mem_available=start - 40_000_000)
    assert ramp.connection_cost(state, floored, seen) == 40_000
    assert ramp.memory_room(state, floored, seen, 1000) == 1000 + 60_000_000 // 40_000 // 2
    _, decision = tick(state, 0.3, floored, seen)
    assert decision[0] == state.dispatched == 5000  # asked for at the start, and never taken back
    # another process took 0.8 GiB meanwhile: no more than MAX_COST_FACTOR times the plan's is read
    neighbour = Seen(connects_ok=500, open=500, mem_available=start - (800 << 20))
    assert ramp.connection_cost(state, floored, neighbour) == ramp.MAX_COST_FACTOR * 10_000
    # room for one more and nothing coming: it is asked for, and then the floor stops the ramp
    one = Seen(connects_ok=1000, open=1000, mem_available=(1 << 30) + 40_000)
    assert ramp.memory_room(state, floored, one, 1000) == 1001
    # too few open to read a cost from: the plan's
    few = Seen(connects_ok=100, open=100, mem_available=start - 40_000_000)
    assert ramp.connection_cost(state, floored, few) == 10_000


def test_a_failure_waits_a_moment_for_the_servers_own_refusal_to_name_the_stop():
    """The harness's servers publish their refusals every 0.25 s; the client's close can come first."""
    settings = ramp.Settings(target=1000, ramp_rate=1000, gauged=True)
    state = ramp.State(dispatched=1000)
    failing = ramp.Seen(user_count=1000, open=990, connects_ok=990, failures={"ECONNRESET": 10})
    state, decision = ramp.tick(state, 3.0, settings, failing)
    assert state.phase == "ramp" and decision == (1000, 1000.0)  # no new users while it waits
    state, _ = ramp.tick(state, 3.2, settings, replace(failing, server_refusals={"FD_SETSIZE": 10}))
    assert (state.phase, state.stopped_by) == ("hold", "FD_SETSIZE")
    waited, _ = ramp.tick(ramp.State(dispatched=1000, failed_at=3.0), 3.0 + ramp.GAUGE_LAG_S, settings, failing)
    assert waited.stopped_by == "ECONNRESET"  # no refusal came: the clients' failure names it
    at_once, _ = ramp.tick(ramp.State(dispatched=1000), 3.0, replace(settings, gauged=False), failing)
    assert at_once.stopped_by == "ECONNRESET"  # a target publishes nothing to wait for
