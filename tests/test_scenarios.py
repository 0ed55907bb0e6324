"""Headless Locust runs (master + 2 workers, as subprocesses) against real server processes.

Each run reads the master's status file during the hold and checks that three independent counts
agree: what the workers hold, what the servers' gauges say, and what the kernel counts on the port.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from harness.core.backends import BACKENDS
from harness.run.cluster import LocustCluster
from harness.system.ss import established_on_port
from tests.helpers import ROOT, ServerProcess, assert_gone, wait_status


def headless_cluster(tmp_path, server: ServerProcess, target: int, workers: int = 2, hold: float = 2.0,
                     ramp_rate: int | None = None, echo_interval: float = 0.5, worker_fd_limit: int = 2000,
                     master_args: tuple[str, ...] = (), worker_args: tuple[str, ...] = ()) -> LocustCluster:
    """A headless master and `workers` workers against `server`, its status file in tmp_path."""
    return LocustCluster(
        host="127.0.0.1", port=server.port, workers=workers, log_dir=tmp_path / "logs",
        master_args=["--headless", "--expect-workers", str(workers), "--connections", str(target),
                     "--ramp-rate", str(ramp_rate or target), "--hold", str(hold),
                     "--echo-interval", str(echo_interval), "--status-file", str(tmp_path / "status.json"),
                     *master_args],
        worker_args=["--worker-fd-limit", str(worker_fd_limit), *worker_args])


def run_cluster(tmp_path, server: ServerProcess, target: int, workers: int = 2, hold: float = 2.0,
                user_mode: str = "driver"):
    """Run the scenario headless; return (status during the hold, kernel count then, servers' gauges
    then, the master's exit code, the Locust CSV stats rows)."""
    status_file = tmp_path / "status.json"
    cluster = headless_cluster(tmp_path, server, target, workers, hold,
                               # the master's kernel count at each status write (each second) in
                               # the 2 s hold, so that one falls after the last connection and before teardown
                               master_args=("--max-seconds", "60", "--server-gauges", str(server.gauge_file),
                                            "--csv", str(tmp_path / "run"), "--kernel-interval", "0.5"),
                               worker_args=("--user-mode", user_mode))
    cluster.start()
    try:
        deadline = time.monotonic() + 60
        status = {}
        while time.monotonic() < deadline:
            if status_file.exists():
                status = json.loads(status_file.read_text())
                t = status["totals"]
                if status["phase"] == "hold" and t["workers"] == workers and \
                        t["connects_ok"] + sum(t["connects_failed"].values()) >= min(target, t["open"]):
                    break
            if cluster.dead():
                break
            time.sleep(0.2)
        # The three counts are sampled at different moments (worker reports and the status file every
        # second, server gauges every 0.25 s): wait until they agree, then the test checks the values.
        settle = time.monotonic() + 6
        while True:
            time.sleep(0.3)
            status = json.loads(status_file.read_text())
            kernel = established_on_port(server.port)
            servers = server.servers()
            if kernel == sum(g["open"] for g in servers) == status["totals"]["open"] == status["kernel_established"] \
                    or time.monotonic() > settle:
                break
        code = cluster.wait_master(60)
    finally:
        cluster.stop()
    assert_gone(cluster.pids(), what="a Locust process outlived the run")
    with open(tmp_path / "run_stats.csv") as f:
        stats = {row["Name"]: row for row in csv.DictReader(f)}
    log = (tmp_path / "logs" / "master.log").read_text()
    return status, kernel, servers, code, stats, log


@pytest.mark.parametrize("backend, user_mode", [(b, "driver") for b in BACKENDS] + [("asyncio", "greenlet")])
def test_two_workers_hold_and_echo_every_connection(tmp_path, start_server, backend, user_mode):
    server = start_server(backend)
    status, kernel, servers, code, stats, log = run_cluster(tmp_path, server, target=300, user_mode=user_mode)
    totals = status["totals"]
    assert status["stopped_by"] == "target", log[-2000:]
    assert totals["open"] == totals["connects_ok"] == 300 and totals["connects_failed"] == {}
    assert sum(g["open"] for g in servers) == 300, "servers' gauges disagree with the workers"
    assert kernel == status["kernel_established"] == 300, "the kernel's count disagrees"
    assert [w["open"] for w in status["workers"]] == [150, 150]
    # Worker i binds its own source addresses 127.0.i+1.x.
    assert status["workers"][0]["sources"][0] == "127.0.1.2" and status["workers"][1]["sources"][0] == "127.0.2.2"
    assert totals["echoes_verified"] >= 300 and totals["echo_failed"] == {}
    assert code == 0, log[-2000:]
    assert int(stats["connect"]["Request Count"]) == 300 and int(stats["connect"]["Failure Count"]) == 0
    assert int(stats["echo"]["Request Count"]) >= 600 and int(stats["echo"]["Failure Count"]) == 0


def test_a_worker_paused_mid_ramp_makes_the_ramp_wait_and_stops_no_user(tmp_path, start_server):
    """A worker that cannot report for 7 s (SIGSTOP) must not make the shape ask for fewer users than
    it already asked for, or Locust stops users and starts them again elsewhere (170k of a million)."""
    server = start_server("selectors")
    cluster = headless_cluster(tmp_path, server, target=1200, ramp_rate=200, echo_interval=5).start()
    try:
        ramping = wait_status(tmp_path, lambda s: s["phase"] == "ramp" and len(s["workers"]) == 2
                              and s["totals"]["open"] >= 200, pattern="status.json")
        paused = ramping["workers"][0]["pid"]
        os.kill(paused, signal.SIGSTOP)
        time.sleep(7)
        os.kill(paused, signal.SIGCONT)
        status = wait_status(tmp_path, lambda s: s["phase"] == "hold" and s["totals"]["connects_ok"] >= 1200,
                             pattern="status.json")
        assert cluster.wait_master(60) == 0
    finally:
        cluster.stop()
    totals = status["totals"]
    assert status["stopped_by"] == "target"
    assert totals["connects_ok"] == totals["open"] == 1200, "users were stopped and started again"


@pytest.mark.parametrize("user_mode", ["driver", "greenlet"])
def test_run_stops_at_the_servers_fd_limit_and_names_emfile(tmp_path, start_server, user_mode):
    server = start_server("selectors", fd_limit=128)
    cap = server.servers()[0]["cap"]
    assert cap == 128 - BACKENDS["selectors"].held_fds
    status, kernel, servers, code, stats, log = run_cluster(tmp_path, server, target=300, user_mode=user_mode)
    assert status["stopped_by"] == "EMFILE", log[-2000:]
    assert servers[0]["open"] == cap and servers[0]["refused_EMFILE"] > 0
    assert status["totals"]["open"] == cap and kernel == cap
    assert status["server_refusals"]["EMFILE"] == servers[0]["refused_EMFILE"]
    assert set(status["totals"]["connects_failed"]) <= {"EOF", "ECONNRESET"}
    assert code == 1  # Locust's exit code on failures


def test_worker_users_stay_below_its_fd_limit(tmp_path, start_server):
    """A worker with fd limit 300 may hold 200 users (a reserve of 100 for Locust itself): asked for
    500 with one worker, the run holds 200 and no Locust process meets EMFILE."""
    server = start_server("asyncio")
    cluster = headless_cluster(tmp_path, server, target=500, workers=1, hold=1, worker_fd_limit=300).start()
    try:
        # Read during the hold: the last status the master writes may catch the users stopping.
        status = wait_status(tmp_path, lambda s: s["phase"] == "hold" and s["totals"]["workers"] == 1
                             and s["totals"]["connects_ok"] >= 200, pattern="status.json")
        assert cluster.wait_master(60) == 0
    finally:
        cluster.stop()
    assert status["totals"]["max_users"] == 200 and status["stopped_by"] == "target"
    assert status["workers"][0]["open"] == 200 and status["totals"]["connects_failed"] == {}
    assert "EMFILE" not in (tmp_path / "logs" / "workers.log").read_text()


WORKER_FULL_SCRIPT = """
import json, sys, time
import gevent
from locust.env import Environment
from scenarios import locust_fixes  # noqa: F401
from scenarios.users import TALLY, EchoUser

class Options:
    echo_timeout, payload_size, echo_interval, user_mode, echo_mode = 5.0, 16, 60.0, sys.argv[2], "closed"

env = Environment(user_classes=[EchoUser], host="tcp://127.0.0.1:" + sys.argv[1], parsed_options=Options())
EchoUser.host = env.host  # what runner.start() would do
runner = env.create_local_runner()
TALLY.max_users, TALLY.sources = 5, ["127.0.0.1"]
runner.spawn_users({"EchoUser": 8})
deadline = time.time() + 10
while TALLY.connects_ok + sum(TALLY.connects_failed.values()) < 8 and time.time() < deadline:
    gevent.sleep(0.05)
print(json.dumps({"open": TALLY.open, "ok": TALLY.connects_ok, "failed": TALLY.connects_failed,
                  "users": runner.user_count}))
"""


@pytest.mark.parametrize("user_mode", ["driver", "greenlet"])
def test_a_worker_never_opens_more_sockets_than_its_fd_limit_allows(start_server, user_mode):
    """Locust's master can hand a worker more users than its share (it moves users off workers it
    thinks are missing); the worker refuses the extra ones itself instead of eating the fds Locust
    keeps for its own monitor."""
    server = start_server("selectors")
    before = server.wait_gauges(lambda rows: rows[0]["accepted"] >= 1)[0]["accepted"]  # the readiness check
    out = subprocess.run([sys.executable, "-c", WORKER_FULL_SCRIPT, str(server.port), user_mode], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"open": 5, "ok": 5, "failed": {"worker-full": 3}, "users": 8}
    accepted = server.wait_gauges(lambda rows: rows[0]["accepted"] - before == 5)[0]["accepted"] - before
    assert accepted == 5  # no socket was opened for the other three
