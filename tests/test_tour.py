"""`harness tour`: each step asserts on what the kernel reported (rows, errno, counts), not on prose."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import psutil
import pytest

from harness import tour
from harness.core.backends import BACKENDS
from harness.report.page import build
from tests.helpers import ROOT, wait_until


def test_demo_replies_upper_cased():
    step = tour.step_demo(quick=True)
    assert step.evidence["reply"] == "HELLO SOCKET!" and step.ok
    assert any(f":{step.evidence['port']}" in row for row in step.evidence["listen_rows"])


def test_four_tuple_one_local_port_many_remotes_and_duplicate_refused():
    ev = tour.step_four_tuple(quick=True).evidence
    assert ev["server_rows"] == ev["distinct_remote"] == 300 and len(ev["distinct_local"]) == 1
    assert ev["attempts"]["duplicate"]["result"] == "EADDRNOTAVAIL"
    assert ev["attempts"]["other_destination"]["result"] == ev["attempts"]["other_source"]["result"] == "connected"
    assert ev["attempts"]["duplicate"]["local"] == ev["attempts"]["first"]["local"]


def test_fd_each_connection_is_a_socket_inode_in_proc():
    ev = tour.step_fd(quick=True).evidence
    assert len(ev["ss_inodes"]) == 5 and set(ev["ss_inodes"]) <= set(ev["proc_socket_inodes"])


def test_sharing_fork_and_scm_rights_handoff():
    ev = tour.step_sharing(quick=True).evidence
    assert len(ev["fork"]["listen_rows"]) == 1 and ev["fork"]["holders"] == ev["fork"]["children"]
    assert len(ev["fork"]["children"]) == 3
    h = ev["handoff"]
    assert h["reply"] == "handed over" and len(h["in_worker"]) == 1 and h["in_acceptor"] == []


def test_ports_reuseport_and_one_process_two_ports():
    ev = tour.step_ports(quick=True).evidence
    assert len(ev["reuseport"]["listen_rows"]) == 3 and len(ev["reuseport"]["pids"]) == 3
    assert len(ev["one_process"]["listen_rows"]) == 2
    assert ev["one_process"]["replies"] == [f"port {p}" for p in ev["one_process"]["ports"]]


def test_ephemeral_range_exhausts_then_another_source_lifts_it():
    ev = tour.step_ephemeral(quick=True).evidence
    # Every port of the 100-port range gave one connection, but those another socket held meanwhile.
    assert ev["connected"] == ev["distinct_ports"] == 100 - len(ev["held_by_others"]) and ev["ports_in_range"]
    assert len(ev["held_by_others"]) < 10
    assert ev["then"] == "EADDRNOTAVAIL" and ev["other_source"]["result"] == "connected"
    assert ev["other_source"]["local"][0] == "127.0.0.2"


def test_fd_limit_quick_stops_at_limit_minus_held_with_emfile():
    ev = tour.step_fd_limit(quick=True).evidence
    assert ev["held"] == ev["fd_limit"] - ev["held_fds"] == 1024 - BACKENDS["selectors"].held_fds
    assert ev["refused_EMFILE"] == 40 and ev["unanswered"] == 0


def test_capture_three_syns_when_tcpdump_is_installed(tmp_path):
    if shutil.which("tcpdump") is None:
        pytest.skip("tcpdump is not installed (make test installs it with apt-get as root)")
    ev = tour.step_capture(quick=True, out_dir=str(tmp_path)).evidence
    assert ev["syn"] == 3 and ev["packets"] >= 3 * 6 and (tmp_path / ev["pcap"].split("/")[-1]).exists()


def test_quick_tour_under_a_minute_and_nothing_left_running(tmp_path):
    start = time.monotonic()
    # In a session of its own: every process the tour starts inherits its session id, so what is
    # left afterwards is told apart from other tests' processes (the suite runs in parallel).
    tour_run = subprocess.Popen([sys.executable, "-m", "harness.cli", "tour", "--quick", "--out", str(tmp_path)],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    stdout, stderr = tour_run.communicate(timeout=60)
    result = subprocess.CompletedProcess(tour_run.args, tour_run.returncode, stdout, stderr)
    assert result.returncode == 0, result.stdout + result.stderr
    assert time.monotonic() - start < 60
    assert "8 of 8 claims shown live" in result.stdout
    evidence = next(tmp_path.glob("tour-*.json"))
    doc = json.loads(evidence.read_text())
    assert [s["name"] for s in doc["steps"]] == list(tour.STEPS) and all(s["ok"] for s in doc["steps"])
    page = build([evidence], tmp_path / "report").read_text()  # the tour as a section of the report
    assert page.count("<li><b>") == len(tour.STEPS) and "EADDRNOTAVAIL" in page
    def nothing_left() -> bool:
        return not [p for p in psutil.process_iter(["pid"]) if _session(p.pid) == tour_run.pid]

    wait_until(nothing_left, 5, "every process of the tour's session exiting")


def _session(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None
