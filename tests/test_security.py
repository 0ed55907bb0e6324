"""Security: loopback by default, no shell, no secrets in results."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

from harness.core.addresses import target_error
from tests.helpers import ROOT

SOURCES = [p for d in ("harness", "servers", "scenarios") for p in (ROOT / d).rglob("*.py")]


def test_servers_refuse_a_non_loopback_host_without_the_flag():
    result = subprocess.run([sys.executable, "-m", "harness.cli", "serve", "asyncio", "--host", "0.0.0.0",
                             "--port", "0"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "--allow-non-loopback" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_locust_targets_loopback_only_unless_allowed():
    assert target_error("127.0.0.1", False) is None and target_error("127.3.4.5", False) is None
    assert target_error("localhost", False) is None
    assert "not on loopback" in target_error("192.0.2.7", False)  # TEST-NET: never contacted here
    assert target_error("192.0.2.7", True) is None


def test_no_process_is_started_through_a_shell():
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "shell":
                raise AssertionError(f"{path.relative_to(ROOT)}:{node.value.lineno} passes shell=")
            if isinstance(node, ast.Attribute) and node.attr in ("system", "popen") and \
                    isinstance(node.value, ast.Name) and node.value.id == "os":
                raise AssertionError(f"{path.relative_to(ROOT)}:{node.lineno} uses os.{node.attr}")


def test_results_hold_no_environment(tmp_path):
    secret = "hunter2-" + os.urandom(8).hex()
    env = {**os.environ, "HARNESS_TEST_SECRET": secret}
    result = subprocess.run([sys.executable, "-m", "harness.cli", "run", "--connections", "50", "--processes", "1",
                             "--workers", "1", "--hold", "1", "--port", "0", "--out", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "run.json" for p in files)
    for path in files:
        assert secret not in path.read_text(errors="replace"), f"{path.name} holds the environment"
