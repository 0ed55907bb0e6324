"""`harness.plan.core`: the pure plan, over machine dicts written by hand: this machine, a laptop
at 1,024, a server at 1M, and a machine whose hard fd limit is 4,096."""

from __future__ import annotations

import pytest

from harness.core import planning
from harness.core.backends import BACKENDS, connection_bytes
from harness.core.planning import plan

THIS_MACHINE = {
    "nofile_soft": 20000, "nofile_hard": 20000, "nr_open": 1048576, "file_max": 2466165,
    "file_nr": 1000, "ip_local_port_range": [32768, 60999], "somaxconn": 4096, "pid_max": 32768,
    "threads_max": 192000, "threads_in_use": 100, "max_map_count": 65530,
    "mem_total": 24 << 30, "mem_available": 23 << 30, "cpus": 2,
}
LAPTOP = {**THIS_MACHINE, "nofile_soft": 1024, "nofile_hard": 1024, "mem_available": 8 << 30}
BIG_SERVER = {**THIS_MACHINE, "nofile_soft": 1024, "nofile_hard": 1048576, "mem_available": 500 << 30,
              "ip_local_port_range": [1024, 65535]}
HARD_4096 = {**THIS_MACHINE, "nofile_soft": 1024, "nofile_hard": 4096}


def test_this_machine_needs_six_processes_six_workers_and_twelve_addresses_for_100k():
    p = plan(THIS_MACHINE, 100_000, backend="asyncio")
    assert p.per_process == 20000 - BACKENDS["asyncio"].held_fds
    assert p.server_processes == 6  # 100,000 / (19,990 × 0.85)
    assert p.workers == 6 and p.users_per_worker == 20000 - planning.CLIENT_FD_RESERVE  # 100,000 / 19,900
    # each worker binds addresses for every user its fd limit allows: ceil(19,900 / 14,116) = 2
    assert p.per_source == 14116 and p.sources_per_worker == 2 and p.source_addresses == 12
    assert p.binding == "target" and not p.problems and p.error is None
    assert [r.split(" → ")[-1].split(" (")[0] for r in p.reasons] == [
        "6 server process(es)", "6 workers", "2 address(es) per worker"]
    assert "20,000 fds per process − 10 held = 19,990" in p.reasons[0]


def test_laptop_plans_many_processes_from_its_hard_limit():
    p = plan(LAPTOP, 100_000, backend="selectors")
    assert p.fd_limit == 1024 and p.per_process == 1024 - BACKENDS["selectors"].held_fds
    assert p.server_processes == 117  # ceil(100,000 / int(1014 × 0.85))
    assert p.workers == 109 and p.users_per_worker == 924  # ceil(100,000 / 924)
    assert p.error is None


def test_big_server_raises_its_soft_limit_to_the_hard_one():
    p = plan(BIG_SERVER, 1_000_000, backend="uvloop")
    assert p.fd_limit == 1048576 and p.server_processes == 1 and p.workers == 1
    assert p.per_source == (65535 - 1024 + 1) // 2
    assert p.sources_per_worker == 33  # ceil(1,048,476 / 32,256)


def test_a_4096_hard_limit_is_planned_from_and_lowers_the_proof():
    p = plan(HARD_4096, 100_000, backend="asyncio")
    assert p.fd_limit == 4096 and p.per_process == 4086
    assert p.server_processes == 29 and p.workers == 26  # ceil(1e5 / int(4086 × 0.85)), ceil(1e5 / 3996)
    target, why = planning.proof_target(HARD_4096, "asyncio")
    assert target == int(32 / (1 / 3473 + 1 / 3996)) == 59_459
    assert "hard fd limit 4,096" in why and "32 processes" in why


@pytest.mark.parametrize("limits, target", [(THIS_MACHINE, 100_000), (BIG_SERVER, 100_000), (LAPTOP, 14_262)])
def test_proof_target(limits, target):
    assert planning.proof_target(limits, "asyncio")[0] == target


def test_memory_is_the_binding_limit_when_it_is_smaller_and_a_run_is_refused():
    p = plan({**THIS_MACHINE, "mem_available": 2 << 30}, 1_000_000)
    # what is left above the reserve that is always kept free and the processes' own memory, at the
    # measured cost a connection
    processes = p.server_processes * planning.SERVER_PROCESS_BYTES + p.workers * planning.WORKER_PROCESS_BYTES
    assert p.binding == "memory"
    assert p.predicted_cap == ((2 << 30) - planning.MEMORY_RESERVE_BYTES - processes) // planning.BYTES_PER_CONNECTION
    assert "memory cap" in p.problems[0]
    assert p.error.endswith("on this machine; lower --connections")


def test_the_fd_limit_binding_is_what_a_run_may_find():
    p = plan(THIS_MACHINE, 300, backend="asyncio", fd_limit=256, processes=1, workers=1)
    assert p.binding == "fd limit" and p.predicted_cap == 256 - BACKENDS["asyncio"].held_fds
    assert p.problems and p.error is None


def test_too_few_workers_are_refused_with_the_number_needed():
    p = plan(THIS_MACHINE, 50_000, workers=1)
    assert p.error.startswith("1 worker(s) of 19,900 users each cannot hold 50,000")
    assert p.error.endswith("use --workers 3")


def test_select_is_capped_at_fd_setsize():
    p = plan(THIS_MACHINE, 5000, backend="selectors", selector="select", processes=1)
    held = planning.held_fds("selectors", "select")
    assert held == BACKENDS["selectors"].held_fds - 1  # no epoll fd
    assert p.per_process == planning.FD_SETSIZE - held and p.binding == "FD_SETSIZE" and p.predicted_cap == p.per_process


@pytest.mark.parametrize("processes", [1, 3])
def test_given_processes_are_kept(processes):
    p = plan(THIS_MACHINE, 1000, processes=processes)
    assert p.server_processes == processes and p.predicted_cap == 1000


def test_threads_cap_the_threaded_backend():
    p = plan({**THIS_MACHINE, "threads_in_use": 30_000}, 10_000, backend="threaded")
    assert p.caps["threads"] == min(32768, 65530 * 64 // 129) - 30_000 and p.binding == "threads"
    assert plan({**THIS_MACHINE, "max_map_count": 1290, "threads_in_use": 0}, 1000,
                backend="threaded").caps["threads"] == 640  # 2 + 1/64 map entries a thread


def test_fd_limit_flags_are_checked_against_the_hard_limit():
    assert planning.fd_limit_error("--fd-limit", None, THIS_MACHINE) is None
    assert planning.fd_limit_error("--fd-limit", 20000, THIS_MACHINE) is None
    assert planning.fd_limit_error("--fd-limit", 20001, THIS_MACHINE) == (
        "--fd-limit 20001 exceeds the hard limit 20000 of this process; lower --fd-limit "
        "or raise the hard limit (ulimit -Hn, needs CAP_SYS_RESOURCE)")
    assert planning.fd_limit_error("--worker-fd-limit", 63, THIS_MACHINE) == "--worker-fd-limit 63 is too small; use at least 64"


def test_lean_clients_split_like_workers_and_bind_their_own_addresses():
    assert planning.client_split(100_000, THIS_MACHINE) == [16_667] * 4 + [16_666] * 2
    assert planning.client_split(10, THIS_MACHINE, clients=3) == [4, 3, 3]
    assert [planning.source_address(0, k) for k in range(2)] == ["127.0.1.2", "127.0.1.3"]
    assert planning.source_address(5, 0) == "127.0.6.2"
    assert planning.source_address(253, 0) == "127.0.254.2" and planning.source_address(254, 0) == "127.1.0.2"
    with pytest.raises(ValueError, match="past the 253"):
        planning.source_address(0, 253)


def test_a_worker_fd_limit_below_the_reserve_is_refused_not_divided_by():
    p = plan(THIS_MACHINE, 10, worker_fd_limit=80)
    assert p.workers == 0 and p.error.endswith("raise --worker-fd-limit to at least 128 (or the hard limit)")
    assert planning.sources_for(16_667, THIS_MACHINE) == 2 and planning.sources_for(0, THIS_MACHINE) == 1


def test_processes_and_workers_the_memory_cannot_hold_are_refused_with_what_fits():
    p = plan(THIS_MACHINE, 1000, processes=5000)
    # 5,000 × 9 MiB + 8 MiB; 23 GiB less 1 GiB kept free and 1,000 × 9 KB
    assert p.error.startswith("5,000 server processes and 1 Locust workers need 44.0 GiB")
    assert "at most 2,501 server processes fit; lower --processes or --workers" in p.error
    assert plan(THIS_MACHINE, 1000, processes=100).error is None
    tight = {**THIS_MACHINE, "pid_max": 32768, "threads_in_use": 32_000}
    assert "threads" in plan(tight, 1000, processes=10, workers=200).error


def test_connections_max_plans_for_the_machines_first_own_limit_and_may_meet_it():
    """fs.file-max here; memory where the file table is unbounded (LONG_MAX by default on recent
    kernels), with the processes' own memory counted; threads for the threaded backend."""
    assert planning.machine_cap(THIS_MACHINE)[1] == "fs.file-max"
    unbounded = {**THIS_MACHINE, "file_max": 2 ** 62}
    cap, name = planning.machine_cap(unbounded, "selectors")
    # the processes' own memory is counted beside the selectors backend's own cost per connection
    assert name == "memory" and cap < (unbounded["mem_available"] - planning.MEMORY_RESERVE_BYTES) // connection_bytes("selectors")
    p = plan(unbounded, cap, backend="selectors", fill=True)
    assert p.error is None  # the processes fit beside the connections
    cap, name = planning.machine_cap(THIS_MACHINE, "threaded")
    assert name == "threads" and plan(THIS_MACHINE, cap + 1000, backend="threaded", fill=True).error is None
    assert plan(THIS_MACHINE, 5_000_000, fill=False).error  # a plain run may not go looking for them


def test_tls_costs_memory_by_backend_and_the_plan_counts_it():
    """With TLS memory binds long before the file table, and earlier still for asyncio, whose SSL
    protocol keeps a 256 KiB buffer for every connection."""
    unbounded = {**THIS_MACHINE, "file_max": 2 ** 62}
    plain, _ = planning.machine_cap(THIS_MACHINE, "selectors")
    selectors, name = planning.machine_cap(THIS_MACHINE, "selectors", tls=True)
    asyncio, _ = planning.machine_cap(unbounded, "asyncio", tls=True)
    assert name == "memory" and asyncio < selectors / 5 < plain
    assert connection_bytes("asyncio", tls=True) > 256 * 1024 > connection_bytes("selectors", tls=True)
    p = plan(THIS_MACHINE, 10_000, backend="asyncio", tls=True)
    assert p.connection_bytes == connection_bytes("asyncio", tls=True) and p.caps["memory"] < 100_000
    reserved = plan(THIS_MACHINE, 10_000, backend="asyncio", tls=True, reserve=THIS_MACHINE["mem_available"] - (1 << 30))
    one_of_each = planning.SERVER_PROCESS_BYTES + planning.WORKER_PROCESS_BYTES
    assert reserved.caps["memory"] == ((1 << 30) - one_of_each) // connection_bytes("asyncio", tls=True)

