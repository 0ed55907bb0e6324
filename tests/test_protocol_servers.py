"""Real servers no one here wrote, loaded over WebSocket and MQTT and through a TCP proxy: a Node.js
echo server on the `ws` package, mosquitto, HAProxy in front of an echo server. Each runs on a free
port with small limits, is stopped whatever happens, and the diagnosis must name the limit that
stopped it, the process, and the numbers (Debian packages the Makefile installs)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.helpers import free_port, target_run, within_1_percent

NODE = shutil.which("node") or "/usr/bin/node"
MOSQUITTO, HAPROXY = shutil.which("mosquitto") or "/usr/sbin/mosquitto", shutil.which("haproxy") or "/usr/sbin/haproxy"
NODE_PATH = "/usr/share/nodejs"  # where Debian's node-ws lives
WS_ECHO = "tests/fixtures/ws_echo.js"


@pytest.fixture(autouse=True)
def node_path(monkeypatch):
    monkeypatch.setenv("NODE_PATH", NODE_PATH)


def within_2_percent(measured: int, predicted: int) -> bool:
    return abs(measured - predicted) <= 0.02 * predicted


# -- WebSocket: Node.js and ws ------------------------------------------------------------------
def test_node_ws_under_an_fd_limit_holds_what_was_predicted_every_upgrade_and_echo_checked(tmp_path, outside):
    server = outside([NODE, WS_ECHO, "127.0.0.1", "0"], prlimit_nofile=300)
    code, doc, err = target_run(tmp_path, server.port, "--protocol", "websocket", "--path", "/chat",
                                "--connections", "max")
    d = doc["diagnosis"]
    assert code == 0, err
    assert d["limit"] == "target fd limit" and d["process"]["name"] == "node" and d["process"]["fd_soft"] == 300
    assert within_1_percent(doc["peak_connections"], d["predicted_cap"]), (doc["peak_connections"], d["predicted_cap"])
    assert doc["connects"]["stages"]["ws-upgrade"] >= doc["peak_connections"] and doc["echo"]["mismatched"] == 0
    assert doc["echo"]["verified"] >= doc["peak_connections"] and "ws-upgrade" in doc["latency_ms"]
    assert 5_000 < doc["serving"]["costs"]["rss_bytes"] < 100_000  # what a ws connection costs node, measured


def test_a_ws_server_that_closes_with_1013_is_its_own_limit_in_its_words(tmp_path, outside):
    server = outside([NODE, WS_ECHO, "127.0.0.1", "0", "1", "150"])
    code, doc, err = target_run(tmp_path, server.port, "--protocol", "websocket", "--ws-mode", "ping",
                                "--connections", "400")
    d = doc["diagnosis"]
    assert code == 0, err
    assert doc["peak_connections"] == 150 and doc["connects"]["failed"].get("ws-close-1013", 0) > 0
    assert (d["limit"], d["cause"]) == ("target's own connection limit", "refused")
    assert "Try Again Later" in d["summary"] and doc["connects"]["evidence"]["ws-close-1013"] == "Try Again Later"


# -- MQTT: mosquitto ----------------------------------------------------------------------------
def mosquitto(tmp_path: Path, port: int, *lines: str) -> list[str]:
    conf = tmp_path / "mosquitto.conf"
    # `user root`: as root it would drop to the mosquitto user, who cannot read a test's own folder
    conf.write_text("\n".join([f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false", "user root",
                               "log_dest stderr", *lines]) + "\n")
    return [MOSQUITTO, "-c", str(conf)]


def test_mosquitto_at_its_fd_limit_holds_what_was_predicted(tmp_path, outside):
    port = free_port()
    outside(mosquitto(tmp_path, port), port=port, prlimit_nofile=300)
    code, doc, err = target_run(tmp_path, port, "--protocol", "mqtt", "--connections", "400")
    d = doc["diagnosis"]
    assert code == 0, err
    assert d["limit"] == "target fd limit" and d["process"]["name"] == "mosquitto" and d["process"]["fd_soft"] == 300
    assert within_1_percent(doc["peak_connections"], d["predicted_cap"]), (doc["peak_connections"], d["predicted_cap"])
    assert doc["connects"]["stages"]["mqtt-connack"] >= doc["peak_connections"] and "mqtt-connack" in doc["latency_ms"]


def test_mosquitto_max_connections_is_its_own_limit_and_each_echo_went_through_the_broker(tmp_path, outside):
    port = free_port()
    outside(mosquitto(tmp_path, port, "max_connections 200"), port=port)
    code, doc, err = target_run(tmp_path, port, "--protocol", "mqtt", "--mqtt-echo", "--connections", "300",
                                "--echo-interval", "0.5", "--client-id-prefix", "t-")
    d = doc["diagnosis"]
    assert code == 0, err
    # mosquitto counts a client against max_connections once its CONNECT is read: a few more get in
    assert within_2_percent(doc["peak_connections"], 200) and doc["echo"]["mismatched"] == 0
    assert doc["echo"]["verified"] > 2 * doc["peak_connections"]  # the hold's PUBLISHes came back too
    assert (d["limit"], d["cause"]) == ("target's own connection limit", "refused")
    assert "max_connections" in d["fix"] and any("(mosquitto)" in line for line in d["evidence"])


def test_a_refused_connect_is_named_by_its_return_code(tmp_path, outside):
    port = free_port()
    (tmp_path / "empty.passwd").write_text("")  # no user may connect
    outside(mosquitto(tmp_path, port, "allow_anonymous false", f"password_file {tmp_path / 'empty.passwd'}"), port=port)
    code, doc, err = target_run(tmp_path, port, "--protocol", "mqtt", "--connections", "20", "--username", "u",
                                "--password", "p")
    assert code == 0, err
    assert doc["peak_connections"] == 0 and list(doc["connects"]["failed"]) == ["mqtt-refused-5"]  # not authorised
    assert doc["connects"]["evidence"]["mqtt-refused-5"] == "\x20\x02\x00\x05"


# -- a TCP proxy: HAProxy, two fds a connection ------------------------------------------------
def haproxy(tmp_path: Path, port: int, backend_port: int, *frontend: str) -> list[str]:
    conf = tmp_path / "haproxy.cfg"
    conf.write_text("\n".join([
        "global", "  nbthread 1", "defaults", "  mode tcp", "  timeout connect 5s", "  timeout client 300s",
        "  timeout server 300s", "frontend fe", f"  bind 127.0.0.1:{port}", *(f"  {line}" for line in frontend),
        "  default_backend be", "backend be", f"  server echo 127.0.0.1:{backend_port}"]) + "\n")
    return [HAPROXY, "-f", str(conf), "-db"]


@pytest.fixture
def echo_behind(outside):
    return outside([sys.executable, "-m", "servers", "selectors", "--port", "0", "--interval", "3600"])


def test_haproxy_under_an_fd_limit_is_predicted_at_two_fds_a_connection(tmp_path, outside, echo_behind):
    port = free_port()
    outside(haproxy(tmp_path, port, echo_behind.port), port=port, prlimit_nofile=600)
    code, doc, err = target_run(tmp_path, port, "--protocol", "echo", "--connections", "700")
    d = doc["diagnosis"]
    assert code == 0, err
    assert d["limit"] == "target fd limit" and d["process"]["name"] == "haproxy" and "2 fds a connection" in d["summary"]
    assert doc["serving"]["costs"]["fds"] == pytest.approx(2.0, abs=0.05)
    assert within_2_percent(doc["peak_connections"], d["predicted_cap"]), (doc["peak_connections"], d["predicted_cap"])


def test_haproxy_maxconn_is_its_own_limit_with_the_accept_queue_as_evidence(tmp_path, outside, echo_behind):
    port = free_port()
    outside(haproxy(tmp_path, port, echo_behind.port, "maxconn 300"), port=port)
    code, doc, err = target_run(tmp_path, port, "--protocol", "echo", "--connections", "700")
    d = doc["diagnosis"]
    assert code == 0, err
    assert doc["peak_connections"] == 300 and (d["limit"], d["cause"]) == ("target's own connection limit",
                                                                             "stopped-accepting")
    assert "(it stopped accepting at 300)" in d["summary"] and "maxconn" in d["fix"]
    assert any(line.startswith("accept queue of 127.0.0.1:") and "of a backlog of 300" in line for line in d["evidence"])


def test_the_servers_are_the_debian_packages():
    for path in (NODE, MOSQUITTO, HAPROXY, f"{NODE_PATH}/ws/package.json"):
        assert os.path.exists(path), f"{path} is missing: make test installs it (Makefile PACKAGES)"
