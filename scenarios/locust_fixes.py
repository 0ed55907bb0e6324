"""Workarounds for Locust 2.47 costs that only show with many users per worker; imported by the
locustfile, so they apply in every Locust process of a run and nowhere else.

- `default_args_dict()` builds Locust's whole argument parser (~2.7 ms). WorkerRunner calls it once
  per option for every spawn message (runners.py: `k not in argument_parser.default_args_dict()`
  inside a comprehension over ~56 options): ~0.15 s of CPU per message per worker, one message a
  second while ramping. With six workers on two cores that throttled the ramp to ~2,200
  connections/s and starved workers past their heartbeat, and the master then died rebalancing
  (`ValueError: generator already executing`, locustio/locust#2141). The defaults are the same
  for the life of a process, so they are computed once.
- `Runner.user_classes_count` walks every user greenlet to count users by class, and a worker
  reads it about six times per spawn message: ~20% of a worker's CPU while ramping at 16k users
  (py-spy), and more than the machine has at a million users. With one user class, every user
  greenlet is of that class, and Locust's own `user_count` (the group's length) is the answer.
"""

from __future__ import annotations

import functools

from locust import argument_parser
from locust.runners import Runner

if not hasattr(argument_parser.default_args_dict, "cache_info"):
    argument_parser.default_args_dict = functools.cache(argument_parser.default_args_dict)

_count_by_walking = Runner.user_classes_count.fget


def _user_classes_count(runner: Runner) -> dict[str, int]:
    if len(runner.user_classes) == 1:
        return {runner.user_classes[0].__name__: len(runner.user_greenlets)}
    return _count_by_walking(runner)


if Runner.user_classes_count.fget is _count_by_walking:
    Runner.user_classes_count = property(_user_classes_count)
