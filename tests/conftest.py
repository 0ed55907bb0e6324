"""Shared fixtures (server subprocesses that are always stopped, whatever the test did), and the
rule that no test may skip here: a skipped test fails the run, with its reason, unless
HARNESS_ALLOW_SKIPS=1 says this machine cannot run it (no root, no Chromium, ...)."""

from __future__ import annotations

import os

import pytest

from tests.helpers import Outside, ServerProcess

_skipped: list[str] = []


@pytest.fixture
def start_server(tmp_path):
    started: list[ServerProcess] = []

    def start(backend: str, *args: str, **kwargs) -> ServerProcess:
        server = ServerProcess(tmp_path, backend, *args, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def outside():
    """Start servers the harness does not start; each is stopped after the test, whatever happened."""
    started: list[Outside] = []

    def start(*args, **kwargs) -> Outside:
        server = Outside(*args, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def _note_skip(report) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _skipped.append(f"{report.nodeid}: {reason}")


def pytest_runtest_logreport(report) -> None:
    # Runs in the controller too when the tests run under xdist, with every worker's reports.
    _note_skip(report)


def pytest_collectreport(report) -> None:
    # A whole module skipped while it is collected (importorskip, allow_module_level) is a skip too.
    _note_skip(report)


def pytest_sessionfinish(session, exitstatus) -> None:
    if _skipped and not os.environ.get("HARNESS_ALLOW_SKIPS") and not hasattr(session.config, "workerinput"):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if _skipped and not os.environ.get("HARNESS_ALLOW_SKIPS"):
        terminalreporter.write_line(f"{len(_skipped)} test(s) skipped, and no test may skip here "
                                    "(HARNESS_ALLOW_SKIPS=1 allows it on a machine that cannot run them):", red=True)
        for line in _skipped:
            terminalreporter.write_line(f"  {line}", red=True)


@pytest.fixture
def memory_cgroup():
    """Memory cgroups (v1 or v2) made with the limit asked, removed after: `memory_cgroup(bytes)`
    returns the cgroup's directory; the test puts the processes it starts in it."""
    made: list[str] = []

    def make(limit: int) -> str:
        for base, limit_file in (("/sys/fs/cgroup/memory", "memory.limit_in_bytes"),  # v1
                                 ("/sys/fs/cgroup/unified", "memory.max"), ("/sys/fs/cgroup", "memory.max")):  # v2
            path = f"{base}/fdcap-test-{os.getpid()}-{len(made)}"
            try:
                os.mkdir(path)
                with open(f"{path}/{limit_file}", "w") as f:
                    f.write(str(limit))
                made.append(path)
                return path
            except OSError:
                if os.path.isdir(path):
                    os.rmdir(path)
        pytest.fail("no memory cgroup can be made here (root with a writable /sys/fs/cgroup)")

    yield make
    for path in made:
        os.rmdir(path)
