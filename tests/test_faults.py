"""Faults during a run: a server process or a Locust worker killed, a server stalled, Ctrl-C in
every phase. Each run must finish by itself, say what happened, and leave no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from harness.system.files import load
from tests.helpers import ROOT, assert_gone, wait_status, wait_until

HARNESS = [sys.executable, "-m", "harness.cli", "run"]


def start_run(tmp_path: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([*HARNESS, "--port", "0", "--out", str(tmp_path), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def family(proc: subprocess.Popen) -> list[int]:
    return [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]


def _master_of(proc: subprocess.Popen) -> psutil.Process | None:
    for child in psutil.Process(proc.pid).children():
        try:
            if "--master" in child.cmdline():
                return child
        except psutil.NoSuchProcess:
            continue
    return None


def test_kill_9_of_a_server_process_is_reported_and_the_others_keep_serving(tmp_path):
    proc = start_run(tmp_path, "--connections", "300", "--processes", "3", "--workers", "1", "--hold", "5",
                     "--echo-interval", "0.5", "--share", "fork")
    # the servers' gauges are published every 0.25 s: the victim is chosen once they show all 300
    status = wait_status(tmp_path, lambda s: s["phase"] == "hold" and sum(g["open"] for g in s["servers"]) == 300)
    victim = next(s for s in status["servers"] if s["open"] > 0)
    pids = family(proc)
    os.kill(victim["pid"], signal.SIGKILL)
    code = proc.wait(60)
    doc = load(next(tmp_path.iterdir()))
    assert code == 1 and doc["stopped_by"] == "interrupted"
    [fault] = doc["faults"]
    assert f"server process {victim['index']} died (killed by SIGKILL)" == fault["what"]
    assert fault["connections_lost"] == victim["open"] > 0
    # the hold after the death (not teardown); the kernel's count only where it was counted afresh
    after = [p for p in doc["series"] if p["phase"] == "hold" and p["t"] > fault["t"] + 0.5]
    assert len(after) >= 2 and all(p["server_open"] == 300 - victim["open"] for p in after), after
    counted = [p for p in after if p["kernel_counted"]]
    assert counted and all(p["kernel_established"] == 300 - victim["open"] for p in counted), counted
    assert after[-1]["echoes_verified"] > after[0]["echoes_verified"], "the other processes stopped echoing"
    assert_gone(pids)


def test_kill_9_of_a_worker_the_master_carries_on(tmp_path):
    proc = start_run(tmp_path, "--connections", "200", "--processes", "1", "--workers", "2", "--hold", "6",
                     "--echo-interval", "0.5")
    status = wait_status(tmp_path, lambda s: s["phase"] == "hold" and len(s["workers"]) == 2)
    pids = family(proc)
    start = time.monotonic()
    victim = status["workers"][0]
    os.kill(victim["pid"], signal.SIGKILL)
    code = proc.wait(60)
    assert time.monotonic() - start > 3, "the run should have gone on after the worker died"
    doc = load(next(tmp_path.iterdir()))
    assert code == 1 and doc["stopped_by"] == "interrupted"
    [fault] = doc["faults"]
    # Workers are forked by Locust's worker parent, which reaps them: their exit status is seen
    # only while they are zombies (cluster.py), so the report may not have it.
    assert fault["what"] in (f"Locust worker {victim['worker_index']} (pid {victim['pid']}) died ({how})"
                             for how in ("exit -9", "exit status not seen"))
    assert fault["connections_lost"] == victim["open"] == 100
    # the survivor held its 100 on through the hold: the kernel's fresh counts and the server's from
    # the fault on (it is stamped after a grace of WORKER_EXIT_GRACE_S; the master's totals keep the
    # dead worker's last report for STALE_S, and teardown follows the hold)
    after = [p for p in doc["series"] if p["phase"] == "hold" and p["kernel_counted"] and p["t"] >= fault["t"]]
    assert after and all(p["kernel_established"] == p["server_open"] == 100 for p in after), after
    assert_gone(pids)


def test_sigstop_of_a_server_shows_in_the_latency_and_clients_time_out_cleanly(tmp_path):
    proc = start_run(tmp_path, "--backend", "selectors", "--connections", "100", "--processes", "1",
                     "--workers", "1", "--hold", "9", "--echo-interval", "0.5", "--echo-timeout", "3")
    status = wait_status(tmp_path, lambda s: s["phase"] == "hold")
    server = status["servers"][0]["pid"]
    os.kill(server, signal.SIGSTOP)
    time.sleep(5)  # the stall itself: the fault under test lasts 5 s, longer than the 3 s echo timeout
    os.kill(server, signal.SIGCONT)
    assert wait_status(tmp_path, lambda s: True, timeout=5)["phase"] == "hold"  # the stall lay inside the hold
    code = proc.wait(60)
    doc = load(next(tmp_path.iterdir()))
    assert code == 0, proc.stderr.read()
    assert doc["echo"]["mismatched"] == 0
    assert doc["echo"]["failed"].get("timeout", 0) > 0  # echoes in flight during the stall timed out
    assert max(p["max"] or 0 for p in doc["latency_series"]) >= 3000, "the stall is hidden in the latency"


def test_open_loop_latency_counts_a_stall_from_each_intended_send_time(tmp_path):
    """A 3 s stall in an 8 s hold, echoes every 0.2 s on a fixed schedule: over a third of all
    echoes were due during the stall and wait for it, a quarter for over a second, so p90 is over a
    second. A closed loop would show the stall in one echo per connection and hide it in its
    percentiles (coordinated omission)."""
    proc = start_run(tmp_path, "--backend", "selectors", "--connections", "100", "--processes", "1",
                     "--workers", "2", "--hold", "8", "--echo-interval", "0.2", "--echo-mode", "open",
                     "--echo-timeout", "10")
    status = wait_status(tmp_path, lambda s: s["phase"] == "hold" and len(s["workers"]) == 2)
    server = status["servers"][0]["pid"]
    # The stall begins once the periodic echoes are flowing (more than the one check per connection).
    wait_status(tmp_path, lambda s: s["totals"]["echoes_verified"] >= 100 + 200)
    os.kill(server, signal.SIGSTOP)
    stopped = time.monotonic()
    time.sleep(3)  # the stall itself: the fault under test lasts 3 s
    os.kill(server, signal.SIGCONT)
    stall_ms = (time.monotonic() - stopped) * 1000
    # the stall lay inside the hold (a machine busy with other tests must not make it miss)
    assert wait_status(tmp_path, lambda s: True, timeout=5)["phase"] == "hold"
    code = proc.wait(60)
    doc = load(next(tmp_path.iterdir()))
    lat = doc["echo_latency"]
    assert code == 0, proc.stderr.read()
    assert doc["echo"]["mismatched"] == 0 and doc["echo"]["failed"] == {}  # pipelined echoes, every byte checked
    assert lat["mode"] == "open" and lat["measured_from"] == "intended send time"
    # the echo due as the stall began waited all of it
    assert lat["p90"] >= 1000 and stall_ms - 100 <= lat["max"] < stall_ms + 2000, (lat, stall_ms)
    # ~500 echoes/s are due over an 8 s hold: ~4,000 (3,993 measured with this stall). A closed loop loses the ~3 s
    # of the stall (~1,500 fewer), so 3,500 tells them apart.
    assert lat["count"] >= 3500, "echoes were skipped instead of sent on schedule"
    # Both workers' histograms merged: every echo after the ramp, none of the one-per-connection checks.
    assert lat["count"] == doc["echo"]["verified"] - doc["connects"]["ok"]


@pytest.mark.parametrize("phase", ["starting", "ramping", "holding", "writing results"])
def test_ctrl_c_in_every_phase_leaves_a_valid_run_json_and_no_process(tmp_path, phase):
    args = ["--connections", "400", "--processes", "1", "--workers", "1", "--hold", "4", "--echo-interval", "1"]
    if phase == "ramping":
        args += ["--ramp-rate", "40"]
    proc = start_run(tmp_path, *args)
    if phase == "starting":  # the harness has begun forking its server processes
        wait_until(lambda: family(proc), 30, "the first server process")
    elif phase == "ramping":
        wait_status(tmp_path, lambda s: s["phase"] == "ramp" and 0 < s["totals"]["open"] < 400)
    elif phase == "holding":
        wait_status(tmp_path, lambda s: s["phase"] == "hold")
    else:
        wait_status(tmp_path, lambda s: s["phase"] == "hold")
        # The end of the hold: once the Locust master has exited, the harness is writing the
        # results; keep pressing Ctrl-C until it is done.
        master = wait_until(lambda: _master_of(proc), 30, "the Locust master")
        master.wait(30)
    pids = family(proc)
    while proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        if phase != "writing results":
            break
        time.sleep(0.05)
    code = proc.wait(60)
    runs = list(tmp_path.iterdir())
    if runs:  # a Ctrl-C before the servers were up writes nothing, which is also whole
        doc = load(runs[0])
        assert doc["stopped_by"] in ("interrupted", "target")
        if phase in ("ramping", "holding"):
            assert doc["stopped_by"] == "interrupted" and code == 130
    else:
        assert phase == "starting" and code == 130
    assert not list(tmp_path.glob("*/.run.json.*")), "a half-written result was left"
    assert_gone(pids)


def test_a_ramp_that_would_pass_the_memory_floor_stops_there_named_memory(tmp_path, memory_cgroup):
    """The run in a 1 GiB memory cgroup (a container's limit, which the kernel meets with its OOM
    killer), asyncio over TLS (~300 KB a connection), --connections max and --memory-reserve 100 MB:
    the plan lets the run look for memory, the ramp slows as it nears the floor and stops itself
    there with stopped_by memory, holds what it has, the cgroup's limit is never reached, and the
    diagnosis says memory with the cgroup's room against the floor."""
    cgroup = memory_cgroup(1 << 30)

    def join_cgroup() -> None:
        with open(f"{cgroup}/cgroup.procs", "w") as f:
            f.write(str(os.getpid()))

    proc = subprocess.Popen([*HARNESS, "--port", "0", "--out", str(tmp_path), "--backend", "asyncio", "--tls",
                             "--connections", "max", "--processes", "1", "--workers", "1", "--hold", "1",
                             "--memory-reserve", str(100 << 20)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=join_cgroup)
    code = proc.wait(120)
    doc = load(next(tmp_path.iterdir()))
    assert code == 0, proc.stderr.read()
    assert doc["stopped_by"] == "memory" and 500 < doc["peak_connections"] < doc["target_connections"]
    assert doc["faults"] == []  # no OOM kill
    with open(f"{cgroup}/memory.max_usage_in_bytes" if "/memory/" in cgroup else f"{cgroup}/memory.peak") as f:
        assert int(f.read()) < 1 << 30
    assert doc["diagnosis"]["limit"] == "memory" and "floor" in doc["diagnosis"]["evidence"][0]
    assert cgroup in doc["diagnosis"]["evidence"][0]
    assert doc["echo"]["mismatched"] == 0 and doc["connects"]["failed"] == {}
