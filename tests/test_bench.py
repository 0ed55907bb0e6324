"""The benchmark instruments themselves (harness/bench/, harness/clients/instruments.py), small and fast:
what they measure must be what they say, whatever numbers a real run then gives."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest
from hdrh.histogram import HdrHistogram

from harness.bench.idle import bench_idle
from harness.bench.reference import redis_benchmark
from tests.helpers import ROOT, wait_until

PACED = [sys.executable, "-m", "harness.clients.instruments", "paced"]


def paced(port: int, *args: str, timeout: float = 30) -> dict:
    out = subprocess.run([*PACED, "--port", str(port), *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_paced_client_answers_every_scheduled_echo(start_server):
    server = start_server("selectors")
    result = paced(server.port, "--connections", "10", "--per-second", "50", "--seconds", "1")
    assert result["sent"] == result["answered"] == 500 and result["mismatched"] == 0
    assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"] < 500


def test_paced_client_keeps_its_schedule_through_a_stall(start_server):
    """Open loop: a 0.6 s stall does not slow the sends down, and the echoes due during it carry it
    in their latency (measured from when they were due)."""
    server = start_server("selectors")
    pid = server.servers()[0]["pid"]
    client = subprocess.Popen([*PACED, "--port", str(server.port), "--connections", "10", "--per-second", "50",
                               "--seconds", "2"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert json.loads(client.stdout.readline())["event"] == "started"
        # Mid-window: a third of the 1,000 echoes answered (64 bytes each), then a 0.6 s stall.
        server.wait_gauges(lambda rows: rows[0]["bytes_echoed"] >= 300 * 64, timeout=10)
        os.kill(pid, signal.SIGSTOP)
        time.sleep(0.6)  # the stall itself: the fault under test lasts 0.6 s
        os.kill(pid, signal.SIGCONT)
        result = json.loads(client.stdout.read().strip().splitlines()[-1])
        assert client.wait(30) == 0
    finally:
        client.kill()
    assert result["sent"] == result["answered"] == 1000 and result["mismatched"] == 0
    assert result["max_ms"] >= 500 and result["p90_ms"] >= 100  # ~30% of the echoes were due in the stall


def test_bench_idle_shows_select_stopping_at_fd_setsize_and_epoll_going_on():
    doc = bench_idle(["selectors"], idle_points=(0, 1_100), active=10, per_second=20, seconds=1, repeats=2)
    rows = {row["name"]: row["points"] for row in doc["rows"]}
    assert doc["server_processes"] == 1 and set(rows) == {"selectors/epoll", "selectors/poll", "selectors/select"}
    for name in ("selectors/epoll", "selectors/poll"):
        assert [p["idle"] for p in rows[name]] == [0, 1_100]
        for p in rows[name]:  # two windows of 10 connections × 20 echoes/s × 1 s, pooled
            assert p["answered"] == p["sent"] == 400 and p["mismatched"] == 0
            assert HdrHistogram.decode(p["histogram"]).get_total_count() == 400
            assert len(p["p99_windows_ms"]) == 2 and min(p["p99_windows_ms"]) <= p["p99_ms"] <= max(p["p99_windows_ms"])
    select = rows["selectors/select"]
    assert select[0]["idle"] == 0 and select[0]["answered"] == 400
    assert select[1]["stopped"] == "FD_SETSIZE" and select[1]["held"] < 1_024


@pytest.mark.skipif(shutil.which("redis-benchmark") is None,
                    reason="redis-benchmark is not installed (make test installs redis-tools as root)")
def test_redis_benchmark_counts_an_echo_of_ping_mbulk_as_a_reply(start_server):
    """The C reference's method: the RESP array of PING_MBULK, echoed back, is a valid reply, so the
    same C client measures redis-server and every backend."""
    server = start_server("selectors")
    # 30,000 requests: ~0.3 s of server CPU, well above the 10 ms the kernel counts CPU time in
    # (at 2,000 a window could show 0.0 s).
    rate, cpu_us = redis_benchmark(shutil.which("redis-benchmark"), server.port, 10, 30_000,
                                   server.servers()[0]["pid"])
    assert rate > 0 and cpu_us > 0
    rows = server.wait_gauges(lambda rows: rows[0]["bytes_echoed"] >= 30_000 * 14)
    assert rows[0]["bytes_echoed"] >= 30_000 * 14


def test_bench_echo_counts_every_echo_and_splits_the_server_cpu_it_took():
    """Throughput and the CPU per request behind it: a server that answers N requests in the window
    spent user and kernel time on them, and the client too."""
    from harness.bench.servers import bench_echo

    row, = bench_echo(["selectors"], connections=4, size=64, seconds=0.5)["rows"]
    assert row["requests"] > 100 and row["mismatched"] == 0
    # the rate is over the window the client measured: the 0.5 s asked (uvloop's timers wake to the ms),
    # or more on a busy machine
    assert 0.49 < row["seconds"] < 2 and row["req_per_s"] == pytest.approx(row["requests"] / row["seconds"], rel=1e-9)
    assert row["server_user_us_per_req"] > 0 and row["server_system_us_per_req"] > 0
    assert row["server_us_per_req"] == pytest.approx(row["server_user_us_per_req"] + row["server_system_us_per_req"])
    assert row["client_us_per_req"] > 0


def test_the_kernels_own_cost_of_a_connection_is_measured_by_the_c_helper():
    """`harness bench connect`'s floor: the C helper builds with the system's cc, and its
    connections cost CPU that is nearly all the kernel's (the C code does nothing else). The
    kernel splits a process's CPU into user and system by where its clock ticks (4 ms here) land:
    10,000 connections (about 60 ms of the connecting loop) take enough ticks for the split to say so."""
    from harness.bench.connect import kernel_cost

    n = min(10_000, resource.getrlimit(resource.RLIMIT_NOFILE)[1] - 100)  # each side holds them all
    floor = kernel_cost(n, repeats=1)
    [row] = floor["repeats"]
    assert row["connections"] == n and row["sources"] == 4
    assert floor["median_us"] == row["us_per_connection"] > 0
    assert row["client_system_us"] > row["client_user_us"]
    # the rest of the machine used at most every core, within the clock-tick resolution of /proc/stat
    assert 0 <= row["others_cores"] <= os.cpu_count() + row["others_cores_error"]


def test_the_floor_beside_held_connections_is_measured_and_the_holders_end_with_it():
    """`--held`: the helper's holders keep their connections while the floor is measured again,
    the machine's other CPU is read meanwhile, and every holder is gone afterwards."""
    from harness.bench.connect import SOURCES, helper, kernel_cost_beside

    def holders() -> list[int]:
        return [p.pid for p in psutil.process_iter(["exe"]) if p.info["exe"] == str(helper())]

    sources = {f"127.0.0.{2 + i}" for i in range(SOURCES)}  # the helper's, and no other test's

    def established() -> int:
        return sum(1 for c in psutil.net_connections("tcp") if c.status == psutil.CONN_ESTABLISHED
                   and sources & {c.laddr.ip, c.raddr.ip if c.raddr else ""})

    before = established()
    beside = kernel_cost_beside(3_000, 500, repeats=1, quiet=0.3)
    assert beside["held"] == 3_000 and beside["median_us"] > 0 and beside["repeats"][0]["connections"] == 500
    background = beside["background"]
    assert background["seconds"] >= 0.3 and 0 <= background["busiest"]["cores"] <= background["cores"]
    assert beside["background"]["busiest"]["name"]  # some process on the machine is named as the busiest
    # each connector is waited for; its acceptor ends by its death signal a moment later
    wait_until(lambda: holders() == [], 10, "every holder of the helper gone")
    assert established() < before + 3_000  # the held connections were reset with their holders


def test_held_is_refused_past_the_file_table_and_memory_naming_the_largest_that_fits():
    from harness.bench.connect import held_error

    limits = {"file_max": 100_000, "file_nr": 0, "mem_available": 8 << 30}
    assert held_error(40_000, 1_000, limits) is None
    assert held_error(60_000, 1_000, limits) == ("--held 60,000: 122,000 files for both ends, and fs.file-max leaves "
                                                 "99,000; use --held 48,500 or less")
    error = held_error(1_100_000, 0, {**limits, "file_max": 10**8})
    assert error.startswith("--held 1,100,000: ~7.3 GiB of kernel memory") and "use --held 1,048,576 or less" in error
