"""Workarounds for Locust 2.47 costs that only show with many users per worker; imported by the
locustfile, so they apply in every Locust process of a run and nowhere else.

- `default_args_dict()` builds Locust's whole argument parser (~2.7 ms). WorkerRunner calls it once
  per option for every spawn message (runners.py: `k not in argument_parser.default_args_dict()`
  inside a comprehension over ~56 options): ~0.15 s of CPU per message per worker, one message a
  second while ramping: with six workers on two cores it throttles the ramp to ~2,200
  connections/s and starves workers past their heartbeat. The defaults are the same for the life
  of a process, so they are computed once.
- `Runner.user_classes_count` walks every user greenlet to count users by class, and a worker
  reads it about six times per spawn message: ~20% of a worker's CPU while ramping at 16k users
  (py-spy), and more than the machine has at a million users. With one user class, every user
  greenlet is of that class, and Locust's own `user_count` (the group's length) is the answer.
- The master marks a worker missing after HEARTBEAT_LIVENESS (3) heartbeat seconds of silence and
  moves its users onto the other workers. That suits workers on their own machines; where a hundred
  workers share two cores with the servers, a worker connecting its share of a step can go more
  than 10 s without running its heartbeat, and the master would hand the users of starved workers
  to the others (some many times their share). 30 s here; the harness finds dead workers by their
  pids, not through this.
- A worker coming back from "missing" makes the master start a rebalancing dispatch, which sleeps
  inside the dispatcher's generator between batches; the shape's next tick then calls start()
  and next() on that same generator, and the master dies (`ValueError: generator already
  executing`, locustio/locust#2141). MasterRunner.start is serialized:
  a rebalance waits for the shape's dispatch to finish, and the other way round.
- `Runner.monitor_cpu_and_memory` opens /proc/self/stat every few seconds (psutil); at the
  machine's file-table limit (`--connections max`, ENFILE) that open fails and the greenlet dies
  with a CRITICAL log. The monitor now skips that reading and tries again at its next interval.
- A shape test that ends by itself calls `MasterRunner.stop()` from its own greenlet, and stop()
  waits for the workers' user counts in one-second sleeps before that greenlet lets go of
  `runner.shape_greenlet`. The web UI already shows STOPPED (the workers reported), but a START
  in that second is dropped ("There is an ongoing shape test running. Editing is disabled"). Once
  the runner is stopped, START now waits (at most SHAPE_END_WAIT_S) for the ending shape greenlet.
- A headless master polls for its `--expect-workers` once a second (main.py), and its first poll
  comes before the workers started beside it have connected: a second lost at every run's start.
  `wait_for_workers` (called at init) waits for them in WORKERS_POLL_S steps, for up to
  WORKERS_WAIT_S, so Locust's own poll finds them ready.
- `MasterRunner.quit` sleeps half a second "for final stats report from all workers", and a headless
  shape test calls it twice (when the shape ends, and again at shutdown): it now waits (at most
  FINAL_REPORTS_WAIT_S) until every worker has said it quit, which each does after its final stats;
  the second call, on a runner that has already quit, returns at once.
- The shape is asked for its next tick once a second (`Runner.shape_worker`), so a ramp whose
  connections were all answered in a tenth of a second still waits most of a second to hold, and
  a hold that ends waits up to a second to stop. It is asked every SHAPE_TICK_S here: the ramp rule
  is a function of the time, not of the ticks (`harness.core.ramp`), and a tick that changes
  nothing dispatches nothing.
- The `--csv` files are rewritten by a greenlet once a second and never at shutdown, so a run's
  last second (its final stats, which the workers send as they quit) may be missing from them. They
  are written once more as they are closed.
"""

from __future__ import annotations

import functools
import time

import gevent
from gevent.lock import RLock
from locust import argument_parser, runners, stats
from locust.runners import STATE_STOPPED, MasterRunner, Runner

runners.HEARTBEAT_LIVENESS = 30
SHAPE_END_WAIT_S = 5.0
WORKERS_POLL_S = 0.05
WORKERS_WAIT_S = 10.0
SHAPE_TICK_S = 0.2
FINAL_REPORTS_WAIT_S = 0.5

if not hasattr(argument_parser.default_args_dict, "cache_info"):
    argument_parser.default_args_dict = functools.cache(argument_parser.default_args_dict)

_count_by_walking = Runner.user_classes_count.fget


def _user_classes_count(runner: Runner) -> dict[str, int]:
    if len(runner.user_classes) == 1:
        return {runner.user_classes[0].__name__: len(runner.user_greenlets)}
    return _count_by_walking(runner)


if Runner.user_classes_count.fget is _count_by_walking:
    Runner.user_classes_count = property(_user_classes_count)


_start_unserialized = MasterRunner.start


def _start_serialized(runner: MasterRunner, *args, **kwargs):
    lock = runner.__dict__.setdefault("_harness_start_lock", RLock())
    with lock:
        return _start_unserialized(runner, *args, **kwargs)


if MasterRunner.start is _start_unserialized:
    MasterRunner.start = _start_serialized


_monitor = Runner.monitor_cpu_and_memory


def _monitor_through_enfile(self) -> None:
    while True:
        try:
            _monitor(self)
        except OSError:  # ENFILE (or EMFILE): /proc/self/stat could not be opened this time
            gevent.sleep(runners.CPU_MONITOR_INTERVAL)


if Runner.monitor_cpu_and_memory is _monitor:
    Runner.monitor_cpu_and_memory = _monitor_through_enfile


_start_shape = Runner.start_shape


def _start_shape_after_the_last(self) -> None:
    ending = self.shape_greenlet
    if ending is not None and self.state == STATE_STOPPED and ending is not gevent.getcurrent():
        ending.join(timeout=SHAPE_END_WAIT_S)
    _start_shape(self)


if Runner.start_shape is _start_shape:
    Runner.start_shape = _start_shape_after_the_last


def wait_for_workers(runner: MasterRunner, expected: int) -> None:
    deadline = time.monotonic() + WORKERS_WAIT_S
    while len(runner.clients.ready) < expected and time.monotonic() < deadline:
        gevent.sleep(WORKERS_POLL_S)


_quit = MasterRunner.quit


def _quit_once(self) -> None:
    """Locust's MasterRunner.quit, once; it waits for the workers' final reports until each has
    said it quit (its last message, after its final stats), not a fixed half second."""
    if getattr(self, "_harness_quit", False):
        return
    self._harness_quit = True
    self.stop(send_stop_to_client=False)
    for client in self.clients.all:
        self.server.send_to_client(runners.Message("quit", None, client.id))
    deadline = time.monotonic() + FINAL_REPORTS_WAIT_S
    while self.clients.all and time.monotonic() < deadline:
        gevent.sleep(WORKERS_POLL_S)
    self.greenlet.kill(block=True)


if MasterRunner.quit is _quit:
    MasterRunner.quit = _quit_once


_close_files = stats.StatsCSVFileWriter.close_files


def _close_files_after_a_last_write(self) -> None:
    for handle, writer, columns, rows in (
            (self.requests_csv_filehandle, self.requests_csv_writer, self.requests_csv_columns, self._requests_data_rows),
            (self.failures_csv_filehandle, self.failures_csv_writer, self.failures_columns, self._failures_data_rows),
            (self.exceptions_csv_filehandle, self.exceptions_csv_writer, self.exceptions_columns,
             self._exceptions_data_rows)):
        handle.seek(0)
        writer.writerow(columns)
        rows(writer)
        handle.truncate()
    self._stats_history_data_rows(self.stats_history_csv_writer, time.time())
    _close_files(self)


if stats.StatsCSVFileWriter.close_files is _close_files:
    stats.StatsCSVFileWriter.close_files = _close_files_after_a_last_write


_shape_worker = Runner.shape_worker


def _shape_worker_quicker(self) -> None:
    """Locust's shape_worker (runners.py, 2.47), ticking every SHAPE_TICK_S instead of every second."""
    while self.state in (runners.STATE_INIT, runners.STATE_SPAWNING, runners.STATE_RUNNING):
        started = time.time()
        current_tick = self.environment.shape_class.tick() if self.environment.shape_class is not None else None
        if current_tick is None:
            if self.environment.parsed_options and self.environment.parsed_options.headless:
                self.quit()
            else:
                self.stop()
            self.shape_greenlet = None
            self.shape_last_tick = None
            return
        if self.shape_last_tick != current_tick:
            user_count, spawn_rate, *classes = current_tick
            self.start(user_count=user_count, spawn_rate=spawn_rate, user_classes=classes[0] if classes else None)
            self.shape_last_tick = current_tick
        gevent.sleep(max(SHAPE_TICK_S - (time.time() - started), 0))


if Runner.shape_worker is _shape_worker:
    Runner.shape_worker = _shape_worker_quicker
