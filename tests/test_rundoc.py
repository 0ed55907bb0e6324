"""`harness.core.rundoc`: run.json built from plain numbers, with nothing running."""

from __future__ import annotations

import pytest

from harness.core.planning import plan
from harness.core.records import MasterStatus
from harness.core.rundoc import build_document, steady_state
from harness.core.schema import validate
from tests.test_plan_core import THIS_MACHINE

CONFIG = {"backend": "asyncio", "share": "reuseport", "selector": "epoll", "user_mode": "driver",
          "connections": 300, "echo_mode": "closed"}
MACHINE = {"hostname": "h", "cpu": "c", "cpus": 2, "kernel": "k", "python": "3.11", "locust": "2.47.0"}


def point(t: float, held: int, phase: str, **extra) -> dict:
    return {"t": t, "phase": phase, "kernel_established": held, "kernel_counted": True, "server_open": held,
            "server_open_by_process": [held], "locust_open": held, "connects_ok": held, "connects_failed": 0,
            "server_refused": 0, "echoes_verified": held, "server_rss_bytes": 10_000_000 + 1000 * held,
            "locust_rss_bytes": 0, "slab_bytes": 50_000_000 + 6000 * held, "mem_available_bytes": 1 << 34,
            "server_cpu_s": 0.0, "locust_cpu_s": 0.0, **extra}


def document(**overrides) -> dict:
    series = [point(0, 0, "ramp"), point(1, 120, "ramp"), point(2, 246, "hold"), point(3, 246, "hold"),
              point(4, 246, "hold")]
    status = MasterStatus.from_dict({"stopped_by": "EMFILE", "server_refusals": {"EMFILE": 54},
                                     "totals": {"echoes_sent": 500, "echoes_verified": 500, "connects_ok": 246,
                                                "connects_failed": {"EOF": 54}, "rss_base_bytes": 0},
                                     "workers": [{"sources": ["127.0.1.2"]}]})
    args = dict(config=CONFIG, plan=plan(THIS_MACHINE, 300, fd_limit=256, processes=1, workers=1).as_dict(),
                limits=THIS_MACHINE, machine=MACHINE, port=9999, started_at="20261201T000000Z", duration=5.0,
                series=series, status=status, locust_stats={}, latency_series=[], files={}, stop_reason=None,
                master_code=None, error=None, faults=[], memory_before=(1 << 34) + 246 * 9000)
    return build_document(**{**args, **overrides})


def test_the_document_comes_from_the_numbers_given():
    doc = validate(document())
    assert doc["stopped_by"] == "EMFILE" and doc["peak_connections"] == 246 == doc["predicted_cap"]
    assert doc["server_fd_limit"] == 256 and doc["workers"] == 1 and doc["source_addresses"] == ["127.0.1.2"]
    assert doc["memory"]["server_rss_per_conn_bytes"] == 1000 and doc["memory"]["kernel_slab_per_conn_bytes"] == 6000
    assert doc["memory"]["system_per_conn_bytes"] == pytest.approx(9000)
    assert doc["ramp_s"] == 1.0 and doc["connect_rate_per_s"] == 246
    assert doc["connects"]["failed"] == {"EOF": 54} and doc["echo"]["mismatched"] == 0


def test_held_is_no_more_than_the_servers_accepted():
    """At a full server the kernel also counts the clients waiting in its accept queue to be
    refused (established, not held): the peak is what the servers accepted, and the kernel saw."""
    queued = point(3, 246, "hold", kernel_established=260)
    doc = document(series=[point(0, 0, "ramp"), point(1, 120, "ramp"), point(2, 246, "hold"), queued,
                           point(4, 240, "hold", kernel_established=235)])
    assert doc["peak_connections"] == 246
    fewer = document(series=[point(0, 0, "ramp"), point(2, 240, "hold", kernel_established=230)])
    assert fewer["peak_connections"] == 230


def test_a_stop_reason_of_the_run_overrides_the_shapes():
    assert document(stop_reason="interrupted")["stopped_by"] == "interrupted"
    assert document(status=MasterStatus(stopped_by="worker-full"))["stop_detail"].startswith("a Locust worker held all")


def test_steady_state_leaves_out_ramp_and_teardown():
    series = [point(0, 100, "ramp"), point(1, 200, "hold"), point(3, 200, "hold"), point(4, 50, "done")]
    state = steady_state(series, 200)
    assert state["seconds"] == 2.0 and state["server_rss_change_pct"] == 0.0


def test_cpu_per_connection_is_each_parts_cpu_over_the_connections_made_per_band():
    from harness.core.rundoc import cpu_per_connection

    def point(t, held, su, ss, lu, ls, phase="ramp"):
        return {"t": t, "phase": phase, "server_open": held, "server_cpu_user_s": su, "server_cpu_system_s": ss,
                "locust_cpu_user_s": lu, "locust_cpu_system_s": ls}

    series = [point(0, 0, 0, 0, 0, 0), point(10, 100_000, 1, 2, 3, 4), point(15, 150_000, 1.5, 3, 4.5, 6),
              point(22, 200_000, 3, 6, 9, 12), point(30, 200_000, 3.1, 6.1, 9.1, 12.1, phase="hold")]
    rows = cpu_per_connection(series)
    assert rows == [
        {"from": 0, "to": 100_000, "seconds": 10, "server_user_us": 10.0, "server_system_us": 20.0,
         "locust_user_us": 30.0, "locust_system_us": 40.0, "total_us": 100.0},
        {"from": 100_000, "to": 200_000, "seconds": 12, "server_user_us": 20.0, "server_system_us": 40.0,
         "locust_user_us": 60.0, "locust_system_us": 80.0, "total_us": 200.0}]
    # under two bands, bands of a fifth of the peak; the hold is not the ramp's cost
    small = cpu_per_connection([point(0, 0, 0, 0, 0, 0), point(1, 500, 0.01, 0.01, 0.01, 0.01),
                                point(2, 1000, 0.02, 0.02, 0.02, 0.02)])
    assert [r["to"] for r in small] == [500, 1000] and small[0]["total_us"] == 80.0
