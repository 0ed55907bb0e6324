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
from tests.helpers import ROOT, assert_gone, process_alive, wait_until

HARNESS = [sys.executable, "-m", "harness.cli"]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*HARNESS, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args, words", [
    (["serve", "nosuch"], ["unknown backend 'nosuch'", "asyncio"]),
    (["serve", "asyncio", "--port", "0", "--fd-limit", str(10**7)], ["exceeds the hard limit", "--fd-limit"]),
    (["serve", "asyncio", "--port", "70000"], ["not a TCP port"]),
    (["serve", "asyncio", "--port", "0", "--processes", "0"], ["at least 1"]),
    (["serve", "asyncio", "--port", "0", "--processes", "50000"], ["--processes 50,000 needs", "GiB (9 MiB a process)",
                                                                     "fit; lower --processes"]),
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
    assert_gone(pids, what="server processes outlived a killed supervisor")


@pytest.mark.parametrize("after", [0.05, 0.3, 0.8, 1.5])
def test_kill_9_of_the_supervisor_while_it_starts_its_processes_leaves_none(tmp_path, after):
    """Killed while still forking (prctl's race: a child forked just before its parent died never
    gets PDEATHSIG unless it checks its parent) or while its children start: nothing is left."""
    proc = subprocess.Popen([*HARNESS, "serve", "asyncio", "--port", "0", "--processes", "60",
                             "--gauges", str(tmp_path / "gauges")], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    session = proc.pid
    wait_until(lambda: len(_in_session(session)) > 1 or proc.poll() is not None, 10, "the first server process")
    time.sleep(after)  # the moment of the kill is the variable under test, not a synchronisation
    proc.kill()
    proc.wait()
    try:
        wait_until(lambda: not _in_session(session), 10, f"every server process exiting (killed after {after} s)")
    finally:  # a failure must not leave the orphans it found running
        for pid in _in_session(session):
            os.kill(pid, signal.SIGKILL)


def _in_session(sid: int) -> list[int]:
    import psutil

    found = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p.pid)
        except (OSError, psutil.NoSuchProcess):
            continue
    return found


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


def test_limits_text_gives_the_plans_numbers():
    from harness.core import planning
    from harness.system.limits import read_limits

    result = run("limits", "--connections", "100000", "--fd-limit", "4096")
    assert result.returncode == 0, result.stderr
    p = planning.plan(read_limits(), 100_000, fd_limit=4096)
    lines = {line.split("  ")[1].strip(): line.strip() for line in result.stdout.splitlines() if line.startswith("  ")
             and len(line.split("  ")) > 2}
    assert lines["per server process"].endswith(f"{p.per_process:,} connections = fd limit 4,096 − {p.held_fds} fds held")
    assert lines["server processes"].endswith(f" {p.server_processes}") and p.server_processes == 29
    assert lines["Locust workers"].startswith(f"Locust workers                 {p.workers} ({p.users_per_worker:,} users")
    assert f" {p.source_addresses} ({p.sources_per_worker} per worker" in lines["client source addresses"]


@pytest.mark.parametrize("args, message", [
    (["ui", "--server-fd-limit", "99999999"],
     "harness ui: error: --fd-limit 99999999 exceeds the hard limit {hard} of this process; lower --fd-limit"),
    (["ui", "--fd-limit", "99999999"], "harness ui: error: --fd-limit 99999999 exceeds the hard limit {hard}"),
    (["limits", "--fd-limit", "99999999"], "harness limits: error: --fd-limit 99999999 exceeds the hard limit {hard}"),
    (["sweep", "--fd-limits", "256,abc"], "harness sweep: error: argument --fd-limits: 'abc' is not a number; give "
     "a comma-separated list such as 256,512,1024"),
    (["sweep", "--backends", "asyncio,nosuch"], "harness sweep: error: argument --backends: unknown backend 'nosuch'"),
    (["bench", "hold", "--backends", "selectors"], "harness bench hold: error: unrecognized arguments: --backends "
     "selectors (harness bench hold does not take them"),
    (["bench", "echo", "--backend", "selectors"], "harness bench echo: error: unrecognized arguments: --backend"),
    (["bench", "idle", "--idle", "0,-5"], "harness bench idle: error: argument --idle: -5 must be 0 or more"),
    (["run", "--connections", "10", "--share", "nosuch"], "harness run: error: argument --share: invalid choice"),
])
def test_bad_flags_are_one_line_naming_the_flag_and_exit_2(args, message):
    result = run(*args)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(message.format(hard=hard)), result.stderr


def test_a_server_that_cannot_start_is_one_line_with_its_own_error(tmp_path):
    """A backend that raises while it starts (as a user's own backend might): `harness run` says
    what the server said and where its log is, instead of a traceback pointing at a log file."""
    code = ("import sys; "
            "from harness.core import backends; backends.BACKENDS['broken'] = backends.Backend('broken', 'tests.fixtures.broken_backend', 10, 'x'); "
            "from harness.cli import main; "
            f"sys.exit(main(['run', '--backend', 'broken', '--connections', '10', '--port', '0', '--out', '{tmp_path}']))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    *plan, line = result.stderr.strip().splitlines()
    assert all(p.startswith("plan: ") for p in plan) and "Traceback" not in result.stderr
    assert line.startswith("harness run: error: server process 0 exited during start-up (exit code 1); its error: "
                           "RuntimeError: this backend cannot start (tests/fixtures/broken_backend.py) (all of it in ")
    log = line.rsplit("(all of it in ", 1)[1].rstrip(")")
    assert "Traceback" in open(log).read()
    assert list(tmp_path.iterdir()) == []


def test_report_of_a_truncated_run_json_is_one_line(tmp_path):
    run_dir = tmp_path / "cut"
    run_dir.mkdir()
    whole = (ROOT / "tests" / "fixtures" / "run-100k" / "run.json").read_text()
    (run_dir / "run.json").write_text(whole[: len(whole) // 2])
    result = run("report", str(run_dir), "--out", str(tmp_path / "report"))
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"harness report: error: {run_dir / 'run.json'} is not whole JSON (")
    assert "it was cut off or is not a result file; re-run, or restore it" in line
    assert not (tmp_path / "report").exists()


def test_an_unknown_result_kind_or_version_is_refused_by_name(tmp_path):
    (tmp_path / "future.json").write_text(json.dumps({"schema": 3, "kind": "sweep"}))
    (tmp_path / "other.json").write_text(json.dumps({"schema": 1, "kind": "flamegraph"}))
    for name, words in (("future.json", "sweep schema 3 is not one this harness reads (it reads schema 1)"),
                        ("other.json", "result kind 'flamegraph' is not one this harness reads")):
        result = run("report", str(tmp_path / name), "--out", str(tmp_path / "r"))
        assert result.returncode == 2 and words in result.stderr, result.stderr


def test_check_passes_on_this_machine():
    result = run("check", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ok ") == 7 and "FAIL" not in result.stdout
