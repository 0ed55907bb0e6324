"""What the Locust master makes of its workers' reports (`scenarios.board`), which faults are the
limit a run found (`harness.run.control`), and when a link-down fault acts (`lab_layout.link_action`):
the parts a whole Locust cluster reaches, here with plain values, in this process (nothing here
imports locust)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from harness.core.lab_layout import LINK_COUNTED, LINK_DOWN, LINK_UP, link_action
from harness.core.records import MasterStatus, Totals, WorkerReport
from harness.run.control import DEATH_MATCH_S, SHED_SETTLE_S, Control
from scenarios.board import STALE_S, Board


def report(node: int, test: int, at: float, **counts) -> WorkerReport:
    base = dict(worker_index=node, pid=1000 + node, host="h", test=test, at=at, open=100, held=100, max_users=900,
                fds=110, sources=["127.0.1.2"], connects_ok=100, connects_failed={}, echoes_sent=300,
                echoes_verified=300, bytes_echoed=19_200, echo_failed={}, evidence={}, stages={}, tls={},
                latency="", rss_bytes=1 << 20, rss_base_bytes=1 << 19)
    return WorkerReport(**{**base, **counts})


def message(node: int, data: dict) -> SimpleNamespace:
    return SimpleNamespace(node_id=f"w{node}", data=data)


def test_a_report_from_before_its_worker_heard_of_the_test_keeps_what_it_holds_not_its_counts():
    board, now = Board(test=2), time.time()
    board.on_message(None, message(1, report(1, test=1, at=now, connects_failed={"EMFILE": 4})))
    board.on_message(None, message(2, report(2, test=2, at=now)))
    totals = board.totals()
    assert (totals.open, totals.held, totals.max_users) == (200, 200, 1800)  # what each holds and may hold
    assert (totals.connects_ok, totals.connects_failed, totals.echoes_verified) == (100, {}, 300)  # the last test's: none


class _Runner:
    """The master's runner as the board uses it: the messages it sends, to whom."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict, str | None]] = []

    def send_message(self, kind: str, data: dict, client_id: str | None = None) -> None:
        self.sent.append((kind, data, client_id))


def test_a_worker_whose_reports_carry_another_test_is_told_the_phase_again_until_they_carry_this_one():
    """A worker that missed the phase message (it came before the worker listened for it) would
    count as holding nothing forever, and the ramp would wait for it until its time bound."""
    board, runner, now = Board(), _Runner(), time.time()
    board.runner = runner
    board.on_message(None, message(1, report(1, test=0, at=now)))  # idle: no test to tell of
    board.new_test()
    board.set_phase(runner, "ramp")
    assert runner.sent == [("harness_phase", {"ramping": True, "test": 1}, None)]  # to every worker
    board.on_message(None, message(1, report(1, test=0, at=now)))
    board.on_message(None, message(2, report(2, test=1, at=now)))
    assert runner.sent[1:] == [("harness_phase", {"ramping": True, "test": 1}, "w1")]  # the one that missed it
    board.on_message(None, message(1, report(1, test=1, at=now)))
    assert len(runner.sent) == 2 and board.totals().connects_ok == 200


def test_a_workers_first_phase_message_keeps_what_it_counted_and_a_new_test_counts_from_zero():
    """A worker told the phase late (it joined as the test ran) keeps the connects it counted: they
    are this test's; a second test (START again in the web UI) counts from zero."""
    from scenarios.reporting import on_phase
    from scenarios.tally import TALLY

    saved = TALLY.test, TALLY.connects_ok, TALLY.ramping
    try:
        TALLY.test, TALLY.connects_ok = 0, 250  # users that connected before the phase came
        on_phase(None, SimpleNamespace(data={"ramping": True, "test": 1}))
        assert (TALLY.test, TALLY.connects_ok, TALLY.ramping) == (1, 250, True)
        on_phase(None, SimpleNamespace(data={"ramping": False, "test": 1}))  # told again: nothing changes
        assert (TALLY.test, TALLY.connects_ok, TALLY.ramping) == (1, 250, False)
        on_phase(None, SimpleNamespace(data={"ramping": True, "test": 2}))
        assert (TALLY.test, TALLY.connects_ok) == (2, 0)
    finally:
        TALLY.test, TALLY.connects_ok, TALLY.ramping = saved


def test_a_tests_first_users_wait_until_every_connected_worker_has_reported():
    """A worker takes a spawn message before its init has run (locust#1730); it reports from its
    init on, so the master dispatches users once every connected worker has reported."""
    import gevent

    board, now = Board(), time.time()
    runner = SimpleNamespace(clients=SimpleNamespace(all=[SimpleNamespace(id="w1", state="ready"),
                                                          SimpleNamespace(id="w2", state="ready"),
                                                          SimpleNamespace(id="w3", state="missing")]))
    board.on_message(None, message(1, report(1, test=0, at=now)))
    late = gevent.spawn(lambda: [gevent.sleep(0) for _ in range(5)] and board.on_message(
        None, message(2, report(2, test=0, at=now))))
    assert board.wait_for_workers(runner) is False  # it had to wait ...
    assert late.dead and set(board.workers) == {"w1", "w2"}  # ... for w2's report; a missing worker is not waited for
    assert board.wait_for_workers(runner) is True  # every one has reported: no wait
    assert board.wait_for_workers(SimpleNamespace()) is True  # a local runner's init has run
    silent = SimpleNamespace(clients=SimpleNamespace(all=[SimpleNamespace(id="w9", state="ready")]))
    started = time.monotonic()
    assert board.wait_for_workers(silent, timeout=0.1) is False and time.monotonic() - started < 5  # bounded


def test_a_silent_worker_is_left_out_of_the_totals():
    board, now = Board(), time.time()
    board.on_message(None, message(1, report(1, test=0, at=now - STALE_S - 1)))
    board.on_message(None, message(2, report(2, test=0, at=now)))
    assert [r["worker_index"] for r in board.live_workers(now)] == [2] and board.totals().workers == 1


def test_a_new_test_counts_from_zero_and_reset_clears_the_echo_counts_only():
    board, now = Board(), time.time()
    board.on_message(None, message(1, report(1, test=0, at=now, echo_failed={"timeout": 3})))
    board.reset_stats()  # RESET in the web UI
    t = board.totals()
    assert (t.echoes_verified, t.echo_failed, t.connects_ok, t.open) == (0, {}, 100, 100)
    board.new_test()
    t = board.totals()
    assert board.test == 1 and (t.connects_ok, t.open, t.max_users) == (0, 100, 900)


def test_totals_add_every_live_report_and_keep_the_first_words_of_each_failure():
    reports = [report(1, 0, 0.0, connects_failed={"EOF": 2}, evidence={"EOF": "-ERR full"}, held=90),
               report(2, 0, 0.0, connects_failed={"EOF": 1, "timeout": 5}, evidence={"EOF": "other"})]
    t = Totals.of(reports)
    assert t.connects_failed == {"EOF": 3, "timeout": 5} and t.evidence == {"EOF": "-ERR full"}
    assert t.connects_ok - t.held == t.lost == 10


def _control(shed: bool, faults: list[dict], series: list[dict]) -> Control:
    sampler = SimpleNamespace(status=MasterStatus(shed=shed), series=series)
    return Control(session=None, sampler=sampler, stop=[], faults=faults)


def test_the_targets_closes_as_the_ramp_stops_are_the_limit_found_and_later_ones_a_fault():
    series = [{"t": 9.0, "phase": "ramp"}, {"t": 10.0, "phase": "hold"}]
    ramp = {"t": 8.0, "kind": "target-drop", "phase": "ramp", "what": "closed 5"}
    settling = {"t": 10.0 + SHED_SETTLE_S, "kind": "target-drop", "phase": "hold", "what": "closed 2"}
    late = {"t": 10.0 + SHED_SETTLE_S + 1, "kind": "target-drop", "phase": "hold", "what": "closed 1"}
    control = _control(True, [ramp, settling], series)
    control.mark_shedding()
    assert ramp["limit"] and settling["limit"] and control.stop == []  # the limit, not a failure of the run
    control = _control(True, [dict(ramp), dict(late)], series)
    control.mark_shedding()
    assert "limit" not in control.faults[1] and control.stop == ["interrupted"]
    control = _control(False, [dict(ramp)], series)  # the ramp did not stop on closes: a fault
    control.mark_shedding()
    assert control.stop == ["interrupted"]


def test_the_closes_a_target_process_death_causes_over_several_reports_are_its_one_fault():
    """The workers report a dead target's closes over a second or two: those that come within
    DEATH_MATCH_S of its death are added to its fault; closes after that are a fault of their own."""
    sampler = SimpleNamespace(t0=time.monotonic())
    control = Control(session=None, sampler=sampler, stop=[])
    control._deaths.append({"t": 0.0, "what": "target process python (pid 7) died (killed by the OOM killer)",
                            "kind": "oom-kill", "connections_lost": 0})

    def hold(lost: int, failed: dict) -> MasterStatus:
        return MasterStatus(phase="hold", totals=Totals(connects_ok=200, held=200 - lost, echo_failed=failed))

    [fault] = control._target_drops(hold(86, {"ECONNRESET": 10, "EOF": 76}))
    assert control._target_drops(hold(100, {"ECONNRESET": 10, "EOF": 94})) == []  # the next report's closes
    assert fault == {"t": fault["t"], "kind": "oom-kill", "phase": "hold", "connections_lost": 100,
                     "what": "target process python (pid 7) died (killed by the OOM killer): the target closed 100 "
                             "held connection(s) (ECONNRESET 10, EOF 94)"}
    sampler.t0 -= DEATH_MATCH_S + 1  # later than the death's window: the target's own doing
    [later] = control._target_drops(hold(103, {"ECONNRESET": 10, "EOF": 97}))
    assert later["kind"] == "target-drop" and later["connections_lost"] == 3 and fault["connections_lost"] == 100
    assert later["what"] == "the target closed 3 held connection(s) (EOF 3)"


@pytest.mark.parametrize("hold,down", [(12.0, 5.0), (3.0, 2.0)])
def test_a_link_goes_down_mid_hold_comes_up_on_time_and_is_counted_before_the_hold_ends(hold, down):
    start = 100.0
    half = start + (hold - down) / 2
    assert link_action(half - 0.01, start, hold, down, "hold", None, None) is None
    assert link_action(half, start, hold, down, "hold", None, None) == LINK_DOWN
    assert link_action(half + down - 0.01, start, hold, down, "hold", half, None) is None
    assert link_action(half + down, start, hold, down, "hold", half, None) == LINK_UP
    counted_at = half + down + max(0.5, (hold - down) / 4)
    assert link_action(counted_at - 0.01, start, hold, down, "hold", half, half + down) is None
    assert link_action(counted_at, start, hold, down, "hold", half, half + down) == LINK_COUNTED
    assert counted_at <= start + hold  # by the end of the hold, before teardown
    assert link_action(half + down, start, hold, down, "done", half, half + down) == LINK_COUNTED  # the hold ended
    # the hold ended while the link was down (its start was seen late): up at once; never down after it
    assert link_action(half + 0.1, start, hold, down, "done", half, None) == LINK_UP
    assert link_action(half, start, hold, down, "done", None, None) is None
