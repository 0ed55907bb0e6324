"""`harness.limits.plan` for this machine, a laptop with a 1,024 soft limit and a 1M server."""

from __future__ import annotations

import pytest

from harness.plan.limits import plan

THIS_MACHINE = {
    "nofile_soft": 20000, "nofile_hard": 20000, "nr_open": 1048576, "file_max": 2466165,
    "file_nr": 1000, "ip_local_port_range": [32768, 60999], "somaxconn": 4096, "pid_max": 32768,
    "threads_max": 192000, "threads_in_use": 100, "max_map_count": 65530,
    "mem_total": 24 << 30, "mem_available": 23 << 30, "cpus": 2,
}
LAPTOP = {**THIS_MACHINE, "nofile_soft": 1024, "nofile_hard": 1024, "mem_available": 8 << 30}
BIG_SERVER = {**THIS_MACHINE, "nofile_soft": 1024, "nofile_hard": 1048576, "mem_available": 500 << 30,
              "ip_local_port_range": [1024, 65535]}


def test_this_machine_needs_six_processes_and_eight_addresses_for_100k():
    p = plan(THIS_MACHINE, 100_000, backend="asyncio")
    assert p.per_process == 20000 - 10
    assert p.server_processes == 6  # 100,000 / (19,990 × 0.85)
    assert p.per_source == 14116 and p.source_addresses == 8
    assert p.binding == "target" and not p.problems
    assert "20,000 fds per process" in p.reasons[0] and "6 server process" in p.reasons[0]


def test_laptop_plans_many_processes_from_its_hard_limit():
    p = plan(LAPTOP, 100_000, backend="selectors")
    assert p.fd_limit == 1024 and p.per_process == 1014
    assert p.server_processes == 117  # ceil(100,000 / int(1014 × 0.85))


def test_big_server_raises_its_soft_limit_to_the_hard_one():
    p = plan(BIG_SERVER, 1_000_000, backend="uvloop")
    assert p.fd_limit == 1048576 and p.server_processes == 1
    assert p.per_source == (65535 - 1024 + 1) // 2


def test_memory_is_the_binding_limit_when_it_is_smaller():
    p = plan({**THIS_MACHINE, "mem_available": 1 << 30}, 1_000_000)
    assert p.binding == "memory" and p.predicted_cap == (1 << 30) // (9 * 1024)
    assert "memory cap" in p.problems[0]


def test_select_is_capped_at_fd_setsize():
    p = plan(THIS_MACHINE, 5000, backend="selectors", selector="select", processes=1)
    assert p.per_process == 1024 - 9 and p.binding == "FD_SETSIZE" and p.predicted_cap == 1015


@pytest.mark.parametrize("processes", [1, 3])
def test_given_processes_are_kept(processes):
    p = plan(THIS_MACHINE, 1000, processes=processes)
    assert p.server_processes == processes and p.predicted_cap == 1000
