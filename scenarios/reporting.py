"""A Locust process that runs users reports its tally to the master once a second (`WorkerReport`,
a custom message), and follows the master's phase and test number (`harness_phase`) and RESET."""

from __future__ import annotations

import os
import time

import gevent

from harness.core.records import WorkerReport
from harness.system.procfs import RssReader, count_open_fds
from scenarios.tally import TALLY

MESSAGE = "harness_gauges"
PHASE_MESSAGE = "harness_phase"  # master -> workers: {"ramping": bool, "test": the test's number}
RESET_MESSAGE = "harness_reset_stats"  # master -> workers: RESET in the web UI
REPORT_INTERVAL_S = 1.0
# ...and while ramping: the shape moves on (to the next step, or to the hold) as soon as it sees the
# connections answered, so it sees them sooner (a report is counters and a nearly empty histogram)
RAMP_REPORT_INTERVAL_S = 0.25


def worker_report(worker_index: int, rss: RssReader, rss_base: int, base_fds: int) -> WorkerReport:
    return WorkerReport(
        worker_index=worker_index, pid=os.getpid(), host=TALLY.host, test=TALLY.test, at=time.time(),
        open=TALLY.open, held=TALLY.held, max_users=TALLY.max_users, fds=base_fds + TALLY.open,
        sources=TALLY.sources, connects_ok=TALLY.connects_ok, connects_failed=dict(TALLY.connects_failed),
        echoes_sent=TALLY.echoes_sent, echoes_verified=TALLY.echoes_verified, bytes_echoed=TALLY.bytes_echoed,
        echo_failed=dict(TALLY.echo_failed), evidence=dict(TALLY.evidence), stages=dict(TALLY.stages),
        tls={k: dict(v) for k, v in TALLY.tls.items()}, latency=TALLY.latency.encode(),
        rss_bytes=rss.rss_bytes(), rss_base_bytes=rss_base)


def on_phase(environment, msg, **kwargs) -> None:
    test = msg.data.get("test", 0)
    if TALLY.test == 0:  # this process's first test: what it counted so far is this test's
        TALLY.test = test
    elif test != TALLY.test:  # START again in the web UI: this test counts from zero
        TALLY.reset(test)
    TALLY.ramping = bool(msg.data["ramping"])


def start_reporting(runner) -> None:
    """In a process that runs users: report to the master every REPORT_INTERVAL_S (while ramping,
    RAMP_REPORT_INTERVAL_S), and follow the master's phase (periodic requests wait while it ramps).
    The master tells the phase once this process has reported (`Board.wait_for_workers`), so it is
    listened for before the first report goes."""
    runner.register_message(PHASE_MESSAGE, on_phase)
    runner.register_message(RESET_MESSAGE, lambda environment, msg, **kw: TALLY.reset_echo_stats())
    rss = RssReader()  # opened now, before any connection: works at EMFILE later
    base = rss.rss_bytes()  # before any user: what the users cost is measured from here
    # fds in use = those held before any user + one socket per open connection. Listed once:
    # listing /proc/self/fd takes 15 ms at 19,000 fds, every second in each of 51 workers.
    base_fds = count_open_fds()

    def report() -> None:
        runner.send_message(MESSAGE, worker_report(getattr(runner, "worker_index", 0), rss, base, base_fds))

    def loop() -> None:
        while True:
            report()
            gevent.sleep(RAMP_REPORT_INTERVAL_S if TALLY.ramping else REPORT_INTERVAL_S)

    gevent.spawn(loop)
    # the test is stopping (the master's quit, or STOP): a last report of what was held and done,
    # before the users are stopped and before the worker's own quit message
    runner.environment.events.test_stopping.add_listener(lambda **_: report())
