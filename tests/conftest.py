"""Shared fixtures: server subprocesses that are always stopped, whatever the test did."""

from __future__ import annotations

import pytest

from tests.helpers import ServerProcess


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
