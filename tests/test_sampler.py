"""`harness.run.sampler`: the kernel's count of a port, taken afresh as each phase, and each test
of the web UI, begins; real sockets on loopback."""

from __future__ import annotations

import json
import socket
import time
from types import SimpleNamespace

from harness.run.sampler import Sampler


def test_a_new_test_is_counted_afresh_even_in_the_phase_the_last_one_ended_in(tmp_path):
    """The web UI's STOP in a hold and a START whose ramp ends before the next sample: the new test's
    first sample is in "hold" as the last one's was, and must not keep the last test's count."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    clients, accepted = [], []

    def connect(n: int) -> None:
        for _ in range(n):
            clients.append(socket.create_connection(("127.0.0.1", port)))
            accepted.append(listener.accept()[0])

    status = tmp_path / "status.json"
    status.write_text(json.dumps({"phase": "hold", "test": 1}))
    sampler = Sampler(SimpleNamespace(port=port, board=None, exited={}), status, time.monotonic())
    sampler._kernel_least = sampler._kernel_every = 3600.0  # no count falls due by time alone here
    try:
        connect(2)
        first = sampler.sample()
        assert first["kernel_counted"] and first["kernel_established"] == 2  # the server side of each
        connect(3)
        status.write_text(json.dumps({"phase": "hold", "test": 2}))
        stale = sampler.sample()  # the same phase, within the least time between two counts
        assert not stale["kernel_counted"] and stale["kernel_established"] == 2
        last_queue = sampler.accept_queue  # the port's accept queue as the last test left it
        assert last_queue is not None
        sampler.begin_test(time.monotonic())
        fresh = sampler.sample()
        assert fresh["kernel_counted"] and fresh["kernel_established"] == 5
        assert sampler.series == [fresh] and sampler.accept_queue is not last_queue  # its own, read afresh
    finally:
        for s in clients + accepted + [listener]:
            s.close()
