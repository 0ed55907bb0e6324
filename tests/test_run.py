"""`harness run` as a user runs it: small real runs, the result document, interruptions, bad input."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from harness.core.backends import BACKENDS, FD_SETSIZE
from harness.core.planning import held_fds
from harness.core.schema import SCHEMA, SchemaError, validate
from harness.system.files import load
from tests.helpers import ROOT, assert_gone

HARNESS = [sys.executable, "-m", "harness.cli"]
SMALL = ["--processes", "1", "--workers", "1", "--hold", "1", "--port", "0", "--echo-interval", "60"]


def harness_run(tmp_path: Path, *args: str, timeout: float = 120) -> tuple[int, dict | None, str]:
    out = [] if "--out" in args else ["--out", str(tmp_path)]
    result = subprocess.run([*HARNESS, "run", *args, *out, "--json"], cwd=ROOT,
                            capture_output=True, text=True, timeout=timeout)
    doc = json.loads(result.stdout) if result.returncode == 0 else None
    return result.returncode, doc, result.stderr


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_small_run_stops_by_emfile_at_the_predicted_cap(tmp_path, backend):
    code, doc, err = harness_run(tmp_path, "--backend", backend, "--connections", "300",
                                 "--server-fd-limit", "256", *SMALL)
    assert code == 0, err
    cap = 256 - BACKENDS[backend].held_fds
    assert doc["stopped_by"] == "EMFILE"
    assert doc["peak_connections"] == doc["peak_connections_servers"] == doc["predicted_cap"] == cap
    assert doc["connects"]["server_refused"]["EMFILE"] > 0
    run_dir = next(tmp_path.iterdir())
    assert run_dir.name.endswith(f"-{backend}-300")
    assert load(run_dir)["peak_connections"] == cap  # the file, validated against the schema
    for name in ("locust_stats.csv", "locust.html", "logs"):
        assert (run_dir / name).exists()


def test_ipv6_on_loopback_stops_at_the_fd_limit_and_says_its_family(tmp_path):
    """The harness's own servers on ::1, the workers binding ::1 (IPv6 loopback's only address)."""
    code, doc, err = harness_run(tmp_path, "--ipv6", "--backend", "selectors", "--connections", "300",
                                 "--fd-limit", "256", *SMALL)
    assert code == 0, err
    assert (doc["host"], doc["family"], doc["source_addresses"]) == ("::1", 6, ["::1"])
    assert doc["stopped_by"] == "EMFILE" and doc["peak_connections"] == doc["predicted_cap"] == 256 - held_fds("selectors")
    # one address's ports to one port: the plan refuses more, and says where more is found
    code, _, err = harness_run(tmp_path, "--host", "::1", "--connections", "40000", "--port", "0")
    assert code == 2 and "exceed the source ports cap of" in err and "--hosts N --ipv6" in err


def test_run_below_the_cap_stops_by_target_and_verifies_every_echo(tmp_path):
    # Echoes every 0.2 s for a 2 s hold, so the run has echoes after its ramp to check the histogram by.
    code, doc, err = harness_run(tmp_path, "--backend", "uvloop", "--connections", "200", "--report", *SMALL,
                                 "--echo-interval", "0.2", "--hold", "2")
    assert code == 0, err
    report = next(tmp_path.glob("*/report/report.html"))
    assert report.read_text().count("data:image/png;base64,") == 3  # connections, rate/latency, memory
    assert doc["stopped_by"] == "target" and doc["peak_connections"] == 200
    assert doc["echo"]["verified"] >= 200 and doc["echo"]["mismatched"] == 0
    assert doc["echo"]["sent"] >= doc["echo"]["verified"]
    assert len(doc["series"]) >= 2 and doc["machine"]["locust"] == "2.47.0"
    assert doc["source_addresses"][0] == "127.0.1.2"
    # Whole-system memory is measured from before the servers started (its sign at 200 connections
    # is noise: a test beside this one that frees 100 MB meanwhile makes it negative; the recorded
    # runs of 100,000 and more prove the figure); the closed-loop latency histogram holds every
    # echo after the ramp (not the one check per connection).
    assert isinstance(doc["memory"]["system_per_conn_bytes"], float)
    lat = doc["echo_latency"]
    assert lat["mode"] == "closed" and lat["count"] == doc["echo"]["verified"] - doc["connects"]["ok"] > 0
    assert 0 < lat["p50"] <= lat["p99"] <= lat["max"]


def test_select_run_stops_at_fd_setsize(tmp_path):
    code, doc, err = harness_run(tmp_path, "--backend", "selectors", "--selector", "select",
                                 "--server-fd-limit", "1200", "--connections", "1100", *SMALL)
    assert code == 0, err
    fd_setsize_cap = FD_SETSIZE - held_fds("selectors", "select")  # select() needs no epoll fd
    assert doc["stopped_by"] == "FD_SETSIZE" and doc["peak_connections"] == doc["predicted_cap"] == fd_setsize_cap


def _wait_for(path: Path, predicate, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            doc = json.loads(path.read_text())
            if predicate(doc):
                return doc
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"{path} never matched")


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM"])
def test_interrupted_run_leaves_a_valid_run_json_and_no_process(tmp_path, how):
    proc = subprocess.Popen([*HARNESS, "run", "--backend", "asyncio", "--connections", "200", "--processes", "2",
                             "--workers", "2", "--hold", "60", "--port", "0", "--out", str(tmp_path)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not list(tmp_path.glob("*/status.json")) and time.monotonic() < deadline:
            time.sleep(0.2)
        status_file = next(tmp_path.glob("*/status.json"))
        _wait_for(status_file, lambda s: s["phase"] == "hold")
        family = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        assert len(family) >= 5  # 2 servers, a master, 2 workers
        proc.send_signal(getattr(signal, how))
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 130, proc.stderr.read()
    doc = load(status_file.parent)
    assert doc["stopped_by"] == "interrupted" and doc["peak_connections"] == 200
    assert_gone(family, what="the interrupted run left processes behind")


@pytest.mark.parametrize("args, words", [
    (["--backend", "nosuch"], ["invalid choice: 'nosuch'"]),
    (["--fd-limit", str(10**7)], ["exceeds the hard limit", "lower --fd-limit"]),
    (["--server-fd-limit", str(10**7)], ["harness run: error: --fd-limit 10000000 exceeds the hard limit"]),
    (["--connections", "300", "--server-fd-limit", "63"], ["--fd-limit 63 is too small; use at least 64"]),
    (["--connections", "10", "--worker-fd-limit", "80"], ["--worker-fd-limit 80 is too small; use at least 128"]),
    (["--connections", str(10**10)], ["connections exceed the", "cap of", "lower --connections"]),
    (["--workers", "1", "--connections", "50000"], ["use --workers 3"]),
    (["--hold", "-1"], ["--hold", "out of range"]),
    (["--echo-interval", "0"], ["--echo-interval", "must be above 0"]),
    (["--ramp-rate", "-3"], ["--ramp-rate", "must be above 0"]),
    (["--port", "70000"], ["--port", "not a TCP port"]),
    (["--processes", "0"], ["--processes", "at least 1"]),
    (["--workers", "0"], ["--workers 0 leaves no worker", "--expect-workers N"]),
    (["--connections", "many"], ["--connections", "invalid"]),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, args, words):
    code, _, err = harness_run(tmp_path, *args)
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    for word in words:
        assert word in err
    assert list(tmp_path.iterdir()) == []


def test_port_in_use_and_unwritable_out_are_refused(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        code, _, err = harness_run(tmp_path, "--connections", "10", "--port", str(holder.getsockname()[1]))
    assert code == 2 and "already in use" in err and list(tmp_path.iterdir()) == []
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, _, err = harness_run(tmp_path, "--connections", "10", "--out", str(blocker / "sub"))
    assert code == 2 and "cannot write results" in err


def test_reader_refuses_unknown_schema_and_missing_fields(tmp_path):
    with pytest.raises(SchemaError, match="schema 3"):
        validate({"schema": 3})
    with pytest.raises(SchemaError, match="no 'schema'"):
        validate({"peak_connections": 1})
    with pytest.raises(SchemaError, match="lacks the field 'duration_s'"):
        validate({"schema": SCHEMA, "started_at": "20261125T000000Z"})
