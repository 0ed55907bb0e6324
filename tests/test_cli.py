"""`harness serve`, `harness limits` and `harness check` as a user runs them: exit codes, one-line
errors for bad input, Ctrl-C and kill -9 leaving no server process behind."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time

import pytest

from servers.gauges import GaugeBoard
from tests.helpers import ROOT, process_alive

HARNESS = [sys.executable, "-m", "harness.cli"]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*HARNESS, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args, words", [
    (["serve", "nosuch"], ["unknown backend 'nosuch'", "asyncio"]),
    (["serve", "asyncio", "--port", "0", "--fd-limit", str(10**7)], ["exceeds the hard limit", "--fd-limit"]),
    (["serve", "asyncio", "--port", "70000"], ["not a TCP port"]),
    (["serve", "asyncio", "--port", "0", "--processes", "0"], ["at least 1"]),
])
def test_bad_input_is_one_line_and_exit_2(args, words):
    result = run(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    for word in words:
        assert word in lines[0]


def test_port_in_use_is_one_line_and_exit_2():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run("serve", "selectors", "--port", str(port))
    assert result.returncode == 2
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def _start_serve(tmp_path, *extra: str) -> tuple[subprocess.Popen, GaugeBoard]:
    gauges = tmp_path / "gauges"
    proc = subprocess.Popen([*HARNESS, "serve", "asyncio", "--port", "0", "--processes", "3",
                             "--gauges", str(gauges), *extra], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    line = proc.stdout.readline()
    assert line.startswith("listening on 127.0.0.1:"), line + proc.stderr.read()
    return proc, GaugeBoard.open(str(gauges))


def test_ctrl_c_stops_every_server_process(tmp_path):
    proc, board = _start_serve(tmp_path, "--interval", "0.2")
    pids = [g["pid"] for g in board.read_all()]
    assert len(pids) == 3 and all(process_alive(p) for p in pids)
    assert "open 0" in proc.stdout.readline()  # the live gauge line
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    assert proc.wait(10) == 0
    assert not any(process_alive(p) for p in pids)
    assert "every server process has exited" in proc.stderr.read()


def test_kill_9_of_the_supervisor_leaves_no_orphan(tmp_path):
    proc, board = _start_serve(tmp_path)
    pids = [g["pid"] for g in board.read_all()]
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 5
    while any(process_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(process_alive(p) for p in pids), "server processes outlived a killed supervisor"


def test_limits_json_reads_the_kernel():
    result = run("limits", "--json", "--connections", "100000")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    limits, plan = doc["limits"], doc["plan"]
    assert limits["nofile_hard"] == resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        assert limits["ip_local_port_range"] == [int(x) for x in f.read().split()]
    assert plan["server_processes"] * plan["per_process"] >= 100_000
    assert plan["source_addresses"] * plan["per_source"] >= 100_000


def test_limits_text_names_the_plan():
    result = run("limits", "--connections", "100000")
    assert result.returncode == 0
    assert "per server process" in result.stdout and "never a limit" in result.stdout


def test_check_passes_on_this_machine():
    result = run("check", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ok ") == 7 and "FAIL" not in result.stdout
