"""`harness run --target`: real servers that no one here wrote (redis-server, nginx) and the
harness's own backends started as outside processes, each on a free port with small limits; the
run must name the limit that stopped it, with the right process and numbers. Then targets that
misbehave (never accept, never read, answer garbage, restart mid-run)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from markupsafe import escape  # what the report's template escapes with

from harness.report.page import build
from harness.system.certs import self_signed
from tests.helpers import (
    HARNESS_RUN,
    QUICK,
    ROOT,
    free_port,
    target_run,
    wait_status,
    wait_until,
    within_1_percent,
)

NGINX, REDIS = shutil.which("nginx") or "/usr/sbin/nginx", shutil.which("redis-server") or "/usr/bin/redis-server"


def redis(port: int, *args: str) -> list[str]:
    return [REDIS, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", *args]


def nginx_conf(tmp_path: Path, port: int, rlimit: int, connections: int, tls: tuple[Path, Path] | None = None,
               tls_protocols: str = "TLSv1.2 TLSv1.3") -> list[str]:
    for name in ("logs", "tmp"):
        (tmp_path / name).mkdir(exist_ok=True)
    temp = " ".join(f"{kind}_temp_path {tmp_path}/tmp/{kind};" for kind in ("client_body", "proxy", "fastcgi",
                                                                             "uwsgi", "scgi"))
    tls_lines = (f"ssl_certificate {tls[0]}; ssl_certificate_key {tls[1]}; ssl_protocols {tls_protocols};"
                 if tls else "")
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"""worker_processes 2;
worker_rlimit_nofile {rlimit};
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/logs/error.log;
daemon off;
events {{ worker_connections {connections}; }}
http {{
  access_log off; {temp}
  keepalive_timeout 300s; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{port}{" ssl" if tls else ""}; {tls_lines} location / {{ return 200 "ok\\n"; }} }}
}}
""")
    return [NGINX, "-p", str(tmp_path), "-c", str(conf)]


# -- the limit that stopped a real server ------------------------------------------------------
def test_a_backend_run_as_an_outside_process_stops_at_its_fd_limit_as_predicted(tmp_path, outside):
    server = outside([sys.executable, "-m", "servers", "asyncio", "--port", "0", "--interval", "3600"],
                     prlimit_nofile=300)
    code, doc, err = target_run(tmp_path, server.port, "--protocol", "echo", "--connections", "max")
    d = doc["diagnosis"]
    assert code == 0, err
    assert d["limit"] == "target fd limit" and d["process"]["fd_soft"] == 300
    assert "servers asyncio" in d["process"]["cmdline"]
    assert d["predicted_cap"] == 290 and within_1_percent(doc["peak_connections"], d["predicted_cap"])
    assert d["summary"].endswith(f"holds 300 of its 300 fds in pid {d['process']['pid']}: the target's fd limit")
    assert doc["echo"]["mismatched"] == 0 and doc["target"]["protocol"] == "echo"
    page = build([next(tmp_path.glob("*/run.json")).parent], tmp_path / "report").read_text()
    assert "<b>Diagnosis:</b> " + str(escape(d["summary"])) in page and str(escape(d["fix"])) in page


def test_redis_maxclients_is_the_targets_own_limit_in_its_words(tmp_path, outside):
    port = free_port()
    outside(redis(port, "--maxclients", "200", "--protected-mode", "no"), port=port)
    code, doc, err = target_run(tmp_path, port, "--protocol", "redis", "--connections", "300")
    d = doc["diagnosis"]
    assert code == 0, err
    assert doc["peak_connections"] == 200 and doc["stopped_by"] == "reply"
    assert d["limit"] == "target's own connection limit" and "--maxclients" in d["fix"]
    assert "-ERR max number of clients reached" in d["summary"]
    assert doc["connects"]["evidence"]["error-reply"] == "-ERR max number of clients reached\r\n"
    assert any("(redis-server) held" in line for line in d["evidence"])


def test_redis_under_a_low_fd_limit_names_the_fd_limit_and_predicts_its_maxclients(tmp_path, outside):
    port = free_port()
    outside(redis(port, "--protected-mode", "no"), port=port, prlimit_nofile=256)
    code, doc, err = target_run(tmp_path, port, "--protocol", "redis", "--connections", "max")
    d = doc["diagnosis"]
    assert code == 0, err
    assert d["limit"] == "target fd limit" and d["process"]["name"] == "redis-server"
    assert d["predicted_cap"] == 256 - 32 == doc["peak_connections"]  # redis keeps 32 fds for itself
    assert "fd limit of 256" in d["summary"] and "ulimit -n" in d["fix"]


def test_redis_in_protected_mode_refuses_every_127_0_x_y_source_in_words(tmp_path, outside):
    port = free_port()
    outside(redis(port), port=port)  # protected mode is on by default
    code, doc, err = target_run(tmp_path, port, "--protocol", "redis", "--connections", "20")
    d = doc["diagnosis"]
    assert code == 0, err
    assert doc["peak_connections"] == 0 and d["limit"] == "target refuses these clients"
    assert doc["connects"]["evidence"]["error-reply"].startswith("-DENIED Redis is running in protected mode")
    assert "--protected-mode no" in d["fix"] and "--source-addresses 127.0.0.1" in d["fix"]


def nginx_run(tmp_path: Path, outside, rlimit: int, worker_connections: int, connections: str,
              tls: bool = False) -> tuple[dict, dict]:
    """nginx with two workers on a free port, loaded over HTTP (or HTTPS, with a certificate made
    now that the clients trust): (run.json, its diagnosis)."""
    port = free_port()
    cert = self_signed(tmp_path, ["127.0.0.1"]) if tls else None
    outside(nginx_conf(tmp_path, port, rlimit=rlimit, connections=worker_connections, tls=cert), port=port)
    code, doc, err = target_run(tmp_path, port, "--protocol", "http", "--connections", connections,
                                *(["--tls", "--ca", str(cert[0])] if tls else []))
    assert code == 0, err
    if tls:  # every connection held was handshaken first
        assert doc["tls"]["handshakes"] >= doc["peak_connections"] and doc["tls"]["version"]
    return doc, doc["diagnosis"]


def test_nginx_over_tls_worker_connections_is_its_own_limit_across_two_workers(tmp_path, outside):
    doc, d = nginx_run(tmp_path, outside, rlimit=4096, worker_connections=100, connections="400", tls=True)
    assert d["limit"] == "target's own connection limit" and "worker_connections" in d["fix"]
    workers = [p for p in doc["target"]["processes"] if p.get("fds_gained", 0) > 0]
    assert len(workers) == 2 and all(p["name"] == "nginx" for p in workers)
    # both workers took connections (more than one worker's 100), and no more than their 100 each less
    # their listeners and events; how evenly the kernel spread them depends on which worker woke first
    assert 100 < doc["peak_connections"] < 2 * 100
    assert doc["echo"]["failed"] == {} or set(doc["echo"]["failed"]) <= {"EOF", "ECONNRESET"}


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_nginx_worker_rlimit_nofile_is_its_fd_limit_within_1_percent(tmp_path, outside, tls):
    doc, d = nginx_run(tmp_path, outside, rlimit=300, worker_connections=4096, connections="max", tls=tls)
    assert d["limit"] == "target fd limit" and d["process"]["name"] == "nginx" and d["process"]["fd_soft"] == 300
    assert "nginx (2 processes) holds 300 of its 300 fds" in d["summary"]  # the master takes no connections
    assert within_1_percent(doc["peak_connections"], d["predicted_cap"]), (doc["peak_connections"], d["predicted_cap"])


def test_a_tls_version_or_certificate_the_client_refuses_is_named(tmp_path, outside):
    """nginx that speaks only TLS 1.2, asked for 1.3: its alert, named; a certificate no CA given
    vouches for: the client's verify failure, named, with OpenSSL's reason kept."""
    port = free_port()
    cert = self_signed(tmp_path, ["127.0.0.1"])
    outside(nginx_conf(tmp_path, port, rlimit=1024, connections=512, tls=cert, tls_protocols="TLSv1.2"), port=port)
    code, doc, err = target_run(tmp_path, port, "--protocol", "http", "--connections", "5", "--tls", "--ca",
                                str(cert[0]), "--tls-version", "1.3")
    assert code == 0, err
    assert doc["peak_connections"] == 0 and list(doc["connects"]["failed"]) == ["tls-alert-protocol-version"]
    code, doc, err = target_run(tmp_path, port, "--protocol", "http", "--connections", "5", "--tls")
    assert list(doc["connects"]["failed"]) == ["tls-verify"]
    assert doc["connects"]["evidence"]["tls-verify"] == "self-signed certificate"  # OpenSSL's reason


# -- the client side and the kernel ------------------------------------------------------------
def test_an_ipv6_target_is_loaded_and_its_processes_found(tmp_path, outside):
    server = outside([sys.executable, "-m", "servers", "asyncio", "--host", "::1", "--port", "0", "--interval", "3600",
                      "--fd-limit", "200"])
    result = subprocess.run([*HARNESS_RUN, "--target", f"[::1]:{server.port}", *QUICK, "--protocol", "echo",
                             "--connections", "max", "--out", str(tmp_path), "--json"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    doc = json.loads(result.stdout)
    d = doc["diagnosis"]
    assert (doc["host"], doc["family"]) == ("::1", 6) and d["limit"] == "target fd limit", result.stderr[-2000:]
    assert doc["peak_connections"] == d["predicted_cap"] == 200 - 10 and doc["echo"]["mismatched"] == 0


def test_one_source_address_runs_out_of_ephemeral_ports(tmp_path, outside):
    server = outside([sys.executable, "-m", "servers", "selectors", "--port", "0", "--processes", "2",
                      "--interval", "3600"])
    code, doc, err = target_run(tmp_path, server.port, "--protocol", "echo", "--connections", "30000",
                                "--source-addresses", "127.0.0.9", "--workers", "2", "--hold", "3",
                                # 10,000-connection steps: first echoes may wait on a busy machine
                                "--echo-timeout", "30")
    # held is the kernel's count (every 2 s) of what the servers accepted: a 3 s hold has one after
    # the last connections leave the accept queue (beside a busy core, 4,000 were still in it as
    # the hold began, and a 1 s hold ended before the next count)
    d = doc["diagnosis"]
    assert code == 0, err
    assert doc["stopped_by"] == "EADDRNOTAVAIL" and d["limit"] == "source ports"
    lo, hi = doc["limits"]["ip_local_port_range"]
    # the range, less the ports other sockets on the machine hold meanwhile (a test beside this one
    # binds its own; the kernel's bind table is kept by port, whatever the address)
    assert 0.9 * (hi - lo + 1) <= doc["peak_connections"] <= hi - lo + 1
    assert doc["source_addresses"] == ["127.0.0.9"] * 2
    assert "1 source address(es)" in d["summary"] and "--source-addresses" in d["fix"]


def test_a_server_that_never_accepts_fills_its_accept_queue(tmp_path, outside):
    server = outside([sys.executable, "tests/fixtures/odd_server.py", "never-accept"])
    code, doc, err = target_run(tmp_path, server.port, "--protocol", "echo", "--connections", "100",
                                "--echo-timeout", "2")
    d = doc["diagnosis"]
    assert code == 0, err
    assert doc["peak_connections"] == 0 and d["limit"] == "accept queue"
    assert any(line.startswith("TcpExt ListenOverflows +") and "+0," not in line for line in d["evidence"])
    assert "accept()" in d["summary"]


# -- faults from a target ----------------------------------------------------------------------
def test_a_target_that_answers_garbage_is_named_by_what_came_back(tmp_path, outside):
    server = outside([sys.executable, "tests/fixtures/odd_server.py", "garbage"])
    code, doc, err = target_run(tmp_path, server.port, "--protocol", "redis", "--connections", "10")
    assert code == 0, err
    assert doc["stopped_by"] == "reply" and doc["stop_detail"] == "unexpected-reply"
    assert doc["connects"]["failed"] == {"unexpected-reply": 10}
    assert doc["connects"]["evidence"]["unexpected-reply"] == "HELLO\r\n"


def test_a_target_that_never_reads_is_bounded_by_the_echo_timeout(tmp_path, outside):
    server = outside([sys.executable, "tests/fixtures/odd_server.py", "never-read"])
    start = time.monotonic()
    code, doc, err = target_run(tmp_path, server.port, "--protocol", "echo", "--connections", "20",
                                "--echo-timeout", "2")
    assert code == 0, err
    assert time.monotonic() - start < 60
    assert doc["connects"]["failed"] == {"timeout": 20} and doc["diagnosis"]["limit"] == "timeouts"


def test_a_target_restarted_mid_run_is_a_fault_with_the_connections_it_dropped(tmp_path, outside):
    server = outside([sys.executable, "-m", "servers", "asyncio", "--port", "0", "--interval", "3600"])
    proc = subprocess.Popen([*HARNESS_RUN, "--target", f"127.0.0.1:{server.port}", "--protocol", "echo",
                             "--connections", "100", "--workers", "1", "--hold", "6", "--echo-interval", "0.5",
                             "--out", str(tmp_path), "--json"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_status(tmp_path, lambda s: s["phase"] == "hold" and s["totals"]["held"] == 100)
        server.stop()  # every connection it held is closed
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    doc = json.loads(out)
    assert proc.returncode == 1 and doc["stopped_by"] == "interrupted"
    lost = sum(f["connections_lost"] for f in doc["faults"])
    assert lost == 100 and all("the target closed" in f["what"] for f in doc["faults"])
    [died] = [f for f in doc["faults"] if f["kind"] == "process-died"]  # one fault, with the closes it caused
    assert re.match(r"target process python \(pid \d+\) died \(exited\): the target closed", died["what"])
    assert "fault at" in err


# -- one protocol object for both user modes -----------------------------------------------------
def test_greenlet_users_speak_the_same_protocols_and_keep_the_same_evidence(tmp_path, outside):
    port = free_port()
    outside(redis(port, "--maxclients", "30", "--protected-mode", "no"), port=port)
    code, doc, err = target_run(tmp_path, port, "--protocol", "redis", "--connections", "40", "--user-mode", "greenlet")
    assert code == 0, err
    assert doc["user_mode"] == "greenlet" and doc["peak_connections"] == 30
    assert doc["connects"]["evidence"]["error-reply"] == "-ERR max number of clients reached\r\n"


def test_the_hold_protocol_holds_with_no_payload_and_notices_the_servers_close(tmp_path):
    from harness.core.backends import BACKENDS

    result = subprocess.run([*HARNESS_RUN, "--backend", "selectors", "--connections", "300", "--fd-limit", "256",
                             "--protocol", "hold", "--processes", "1", "--workers", "1", "--hold", "1", "--port", "0",
                             "--out", str(tmp_path), "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    cap = 256 - BACKENDS["selectors"].held_fds
    assert doc["stopped_by"] == "EMFILE" and doc["peak_connections_servers"] == cap
    # The kernel's count may catch a refused client between its handshake and the server's close.
    assert cap <= doc["peak_connections"] <= cap + 2
    assert doc["echo"]["sent"] == 0 and doc["connects"]["ok"] == cap  # held, nothing sent
    assert doc["connects"]["failed"].get("EOF", 0) > 0  # the refused ones, closed by the server at once
    assert doc["diagnosis"]["limit"] == "server fd limit"


def test_the_web_ui_loads_a_target_too(tmp_path, outside):
    import urllib.parse
    import urllib.request

    from harness.run.cluster import free_port as free

    port, web_port = free_port(), free()
    outside(redis(port, "--protected-mode", "no", "--maxclients", "30"), port=port)
    ui = subprocess.Popen([sys.executable, "-m", "harness.cli", "ui", "--target", f"127.0.0.1:{port}", "--protocol",
                           "redis", "--workers", "1", "--web-port", str(web_port)], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True)
    base = f"http://127.0.0.1:{web_port}"
    try:
        assert ui.stdout.readline().startswith(f"target: 127.0.0.1:{port} (redis)")

        def swarm():
            form = urllib.parse.urlencode({"user_count": "50", "spawn_rate": "50", "host": f"tcp://127.0.0.1:{port}",
                                           "connections": "50", "hold": "30"}).encode()
            return json.loads(urllib.request.urlopen(f"{base}/swarm", form, timeout=5).read())["success"]

        def worker_reports():
            try:
                return json.loads(urllib.request.urlopen(f"{base}/connections/json", timeout=5).read())["totals"]["workers"]
            except OSError:  # the master is still starting
                return 0

        wait_until(worker_reports, 30, "the Locust worker reporting to the web UI's master")
        wait_until(swarm, 30, "the web UI starting a run")

        def diagnosed():  # and every one of the 50 users' connects reported (a report may come mid-burst)
            status = json.loads(urllib.request.urlopen(f"{base}/connections/json", timeout=5).read())
            t = status["totals"]
            return status["diagnosis"] and t["held"] + sum(t["connects_failed"].values()) >= 50 and status

        status = wait_until(diagnosed, 30, "the web UI's diagnosis of the redis run")
        d = status["diagnosis"]
        assert status["totals"]["held"] == 30 and status["totals"]["connects_failed"] == {"error-reply": 20}
        assert d["limit"] == "target's own connection limit" and "-ERR max number of clients reached" in d["summary"]
        rows = json.loads(urllib.request.urlopen(f"{base}/stats/requests", timeout=5).read())["extended_stats"][0]["data"]
        assert any(r["what"] == "diagnosis" and r["name"] == d["limit"] for r in rows)
    finally:
        os.killpg(ui.pid, signal.SIGINT)
        code = ui.wait(30)
    assert code == 0, ui.stderr.read()
