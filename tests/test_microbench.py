"""pytest-benchmark micro-benchmarks: one 1 KiB echo round trip per backend (`make bench`).

Marked `bench`, so the default `make test` run skips them. Compare backends as ratios within one
run: absolute timings on a shared 2-core machine are noisy.
"""

from __future__ import annotations

import os

import pytest

from harness.core.backends import BACKENDS
from tests.helpers import connect, recv_exactly

pytestmark = pytest.mark.bench


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_echo_round_trip_1k(benchmark, start_server, backend):
    server = start_server(backend)
    sock = connect(server.port)
    payload = os.urandom(1024)

    def round_trip() -> bytes:
        sock.sendall(payload)
        return recv_exactly(sock, len(payload))

    assert benchmark(round_trip) == payload
    sock.close()
