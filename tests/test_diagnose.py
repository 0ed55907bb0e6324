"""`harness.core.diagnose`: the rules over hand-written evidence (pure), and the readers of the kernel
and of processes (`harness.system`) over real sockets and this test's own listeners."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys

from harness.core import diagnose
from harness.core.evidence import Evidence, counter_deltas
from harness.core.records import Totals
from harness.system import kernel, listeners
from tests.test_plan_core import THIS_MACHINE


def evidence(connects_failed=None, echo_failed=None, evidence=None, kernel_deltas=None, kernel_after=None,
             **overrides) -> Evidence:
    """Evidence as a run that stopped at 290 held would gather it, with `overrides`."""
    if kernel_deltas is not None:  # counters that grew by these over the run
        kernel_after = {**(kernel_after or {}), "netstat": kernel_deltas}
    fields = dict(stopped_by="EOF", held=290, connections=412, host="127.0.0.1", port=6379, limits=THIS_MACHINE,
                  workers=[{"open": 290, "max_users": 19_900, "fds": 300}], sources=["127.0.1.2", "127.0.1.3"],
                  ports_per_address=28_232, port_range="32768-60999",
                  totals=Totals(connects_failed=connects_failed or {}, echo_failed=echo_failed or {},
                                evidence=evidence or {}),
                  kernel_before={"netstat": {}} if kernel_deltas is not None else None, kernel_after=kernel_after)
    return Evidence(**{**fields, **overrides})


def proc(pid: int, name: str, fds: int, soft: int | None, before: int = 10, ppid: int = 1, gained: int = 0) -> dict:
    return {"pid": pid, "ppid": ppid, "name": name, "fds": fds, "fds_peak": fds, "fds_before": before,
            "fd_soft": soft, "threads": 1, "rss_bytes": 1 << 20, "fds_gained": gained}


def test_the_harness_servers_at_their_fd_limit():
    d = diagnose.diagnose(evidence(server_refused={"EMFILE": 54}, connects_failed={"EOF": 54},
                                servers=[{"pid": 9, "cap": 246, "open": 246, "fd_soft": 256, "base_fds": 10}]))
    assert d.limit == "server fd limit" and "--fd-limit" in d.fix
    assert "holding 246 of a cap of 246 each (fd limit 256 − 10 held)" in d.evidence[1]


def test_select_and_threads_are_named_for_what_they_are():
    assert diagnose.diagnose(evidence(server_refused={"FD_SETSIZE": 3})).fix == "use --selector epoll (or poll)"
    assert diagnose.diagnose(evidence(server_refused={"threads": 3})).limit == "threads"


def test_the_client_sides_limits_come_before_the_targets():
    d = diagnose.diagnose(evidence(connects_failed={"EADDRNOTAVAIL": 3, "EOF": 1}, held=28_230, sources=["127.0.0.9"]))
    assert d.limit == "source ports" and "1 source address(es)" in d.summary
    d = diagnose.diagnose(evidence(connects_failed={"worker-full": 10}))
    assert d.limit == "Locust workers' fd limit" and "--workers" in d.fix
    assert diagnose.diagnose(evidence(connects_failed={"ENFILE": 1})).limit == "fs.file-max"


def test_a_target_process_at_its_fd_limit_names_its_pid_and_numbers():
    nginx = [proc(800, "nginx", 12, 1024), proc(812, "nginx", 1024, 1024, ppid=800, gained=1000),
             proc(813, "nginx", 1020, 1024, ppid=800, gained=1000)]
    d = diagnose.diagnose(evidence(connects_failed={"timeout": 5}, processes=nginx, held=2024))
    assert d.limit == "target fd limit" and d.process["pid"] == 812
    assert d.summary == "nginx (2 processes) holds 1,024 of its 1,024 fds in pid 812: the target's fd limit"
    assert d.predicted_cap == 2 * (1024 - 10)  # the master (the others' parent) takes none


def test_a_target_out_of_threads_or_memory_is_not_given_its_fd_limit_as_the_predicted_cap():
    server = [proc(5, "java", 300, 20_000)]
    d = diagnose.diagnose(evidence(server_refused={"threads": 3}, processes=server))
    assert d.limit == "threads" and d.predicted_cap is None
    d = diagnose.diagnose(evidence(connects_failed={"timeout": 5}, processes=server))
    assert d.limit == "timeouts" and d.predicted_cap is None
    d = diagnose.diagnose(evidence(stopped_by="target", processes=server))  # held all it was asked: its fd room
    assert d.cause == diagnose.REACHED and d.predicted_cap == 20_000 - 10


def test_words_below_the_fd_limit_are_the_targets_own_limit():
    redis = [proc(5, "redis-server", 209, 20_000)]
    d = diagnose.diagnose(evidence(connects_failed={"error-reply": 100}, processes=redis, held=200,
                                evidence={"error-reply": "-ERR max number of clients reached\r\n"}))
    assert d.limit == "target's own connection limit" and d.cause == diagnose.REFUSED
    assert "redis: --maxclients N" in d.fix


def test_a_target_that_closes_answered_connections_to_take_new_ones_is_its_own_limit():
    nginx = [proc(6, "nginx", 101, 4096, gained=90), proc(7, "nginx", 97, 4096, gained=86)]
    # nginx at worker_connections: every connect answered, 220 of them closed afterwards
    d = diagnose.diagnose(evidence(echo_failed={"EOF": 220}, processes=nginx, held=180))
    assert d.limit == "target's own connection limit" and d.cause == diagnose.SHED
    assert "worker_connections" in d.fix
    # a first echo that fails is a failed connect and an echo failure: refused, counted once
    d = diagnose.diagnose(evidence(connects_failed={"EOF": 54}, echo_failed={"EOF": 54}, processes=nginx, held=180))
    assert d.cause == diagnose.REFUSED
    # closes of answered connections in a run stopped for another reason do not make this limit
    d = diagnose.diagnose(evidence(stopped_by="time-bound", echo_failed={"EOF": 220}, processes=nginx, held=180))
    assert d.limit != "target's own connection limit"


def test_redis_at_its_fd_limit_less_its_reserve_is_the_fd_limit():
    redis = [proc(5, "redis-server", 233, 256, before=9)]
    d = diagnose.diagnose(evidence(connects_failed={"error-reply": 100}, processes=redis, held=224,
                                evidence={"error-reply": "-ERR max number of clients reached\r\n"}))
    assert d.limit == "target fd limit" and d.predicted_cap == 224


def test_protected_mode_is_quoted_with_its_fix():
    d = diagnose.diagnose(evidence(connects_failed={"error-reply": 20}, held=0,
                                evidence={"error-reply": "-DENIED Redis is running in protected mode because"}))
    assert d.limit == "target refuses these clients" and "--protected-mode no" in d.fix


def test_an_accept_queue_that_overflowed():
    d = diagnose.diagnose(evidence(connects_failed={"timeout": 80}, held=0,
                                kernel_deltas={"ListenOverflows": 37, "ListenDrops": 37, "SyncookiesSent": 0},
                                kernel_after={"listen": [{"queued": 17, "backlog": 16, "local": "127.0.0.1:80"}]}))
    assert d.limit == "accept queue" and d.cause == diagnose.STOPPED_ACCEPTING
    # machine-wide counters alone (another server's overflow) are not this target's queue
    alone = diagnose.diagnose(evidence(connects_failed={"timeout": 80}, held=0, kernel_deltas={"ListenOverflows": 37},
                                    kernel_after={"listen": [{"queued": 0, "backlog": 16, "local": "127.0.0.1:80"}]}))
    assert alone.limit == "timeouts"
    assert d.evidence[:2] == ["TcpExt ListenOverflows +37, ListenDrops +37 during the run (/proc/net/netstat)",
                                 "accept queue of 127.0.0.1:80 at the end: 17 waiting of a backlog of 16 (ss -ltn)"]


def test_a_target_that_stops_accepting_with_fds_to_spare_is_its_own_limit():
    """HAProxy at its maxconn pauses its listener: the accept queue fills while the ramp goes on
    (read at the run's counts; it drains once the run closes its connections)."""
    haproxy = [proc(40, "haproxy", 609, 20_000, before=9, gained=600)]
    peak = {"queued": 301, "backlog": 300, "local": "127.0.0.1:8080", "t": 2.1}
    d = diagnose.diagnose(evidence(connects_failed={"timeout": 400}, held=300, processes=haproxy, accept_queue=peak,
                                kernel_deltas={"ListenOverflows": 297, "ListenDrops": 297},
                                kernel_after={"listen": [{"queued": 0, "backlog": 300, "local": "127.0.0.1:8080"}]}))
    assert (d.limit, d.cause) == ("target's own connection limit", diagnose.STOPPED_ACCEPTING)
    assert d.summary.startswith("the target's own connection limit (it stopped accepting at 300): haproxy")
    assert "maxconn" in d.fix and "accept queue of 127.0.0.1:8080 at 2.1 s: 301 waiting of a backlog of 300 (ss -ltn)" \
        in d.evidence
    never = diagnose.diagnose(evidence(connects_failed={"timeout": 80}, held=0, processes=haproxy, accept_queue=peak))
    assert never.limit == "accept queue"  # it never accepted: stuck, not a limit of its own


def test_a_proxy_at_its_fd_limit_is_predicted_at_the_fds_a_connection_costs_it():
    haproxy = [proc(40, "haproxy", 593, 600, before=7, gained=586)]  # maxconn from ulimit -n: 7 fds kept back
    serving = {"costs": {"fds": 2.0, "rss_bytes": 3400.0}, "prediction": None}
    d = diagnose.diagnose(evidence(connects_failed={"timeout": 400}, held=293, processes=haproxy, serving=serving))
    assert d.limit == "target fd limit" and "2 fds a connection" in d.summary and d.predicted_cap == (600 - 7) // 2
    one_fd = diagnose.diagnose(evidence(connects_failed={"timeout": 400}, held=293, processes=haproxy))
    assert one_fd.limit != "target fd limit"  # at one fd a connection, 593 of 600 is not its limit


def test_a_full_conntrack_table_is_named_with_its_drops():
    before = {"netstat": {}, "conntrack": {"count": 3, "max": 300, "drop": 0, "early_drop": 0}}
    after = {"netstat": {}, "listen": [], "conntrack": {"count": 300, "max": 300, "drop": 112, "early_drop": 0}}
    d = diagnose.diagnose(evidence(connects_failed={"timeout": 200}, held=297, kernel_before=before,
                                kernel_after=after, server_host="t1-1"))
    assert (d.limit, d.cause) == ("conntrack table", diagnose.CONNTRACK) and "dropped 112" in d.summary
    assert "in server host t1-1" in d.summary and "nf_conntrack_max" in d.fix


def test_a_run_at_its_target_gets_the_next_limit_and_its_distance():
    d = diagnose.diagnose(evidence(stopped_by="target", held=1000, processes=[proc(5, "redis-server", 1009, 4096)],
                                workers=[{"open": 1000, "max_users": 19_900}]))
    assert d.limit == "target" and d.cause == diagnose.REACHED
    assert d.next == {"limit": "target fd limit", "room": 4096 - 1009}
    # the workers' room is from the run's peak: their last reports, sent as their users stopped, say fewer open
    d = diagnose.diagnose(evidence(stopped_by="target", held=1000, workers=[{"open": 0, "max_users": 600},
                                                                          {"open": 10, "max_users": 600}]))
    assert d.next == {"limit": "Locust workers' fd limit", "room": 200}


def test_kernel_pressure_is_added_to_any_verdict():
    after = {"listen": [], "tcp_memory": {"pages": 400_000, "low": 1, "pressure": 383_868, "high": 575_802},
             "conntrack": {"count": 262_000, "max": 262_144}}
    d = diagnose.diagnose(evidence(connects_failed={"timeout": 1}, kernel_after=after))
    assert any("tcp_mem pressure" in line for line in d.evidence)
    assert any("nf_conntrack_max 262,144" in line for line in d.evidence)


# -- the readers, over real sockets ---------------------------------------------------------------
def test_the_listening_socket_is_found_in_this_process_with_its_limits():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        [me] = [p for p in listeners.listeners(port) if p["pid"] == os.getpid()]
        assert listeners.listening_inodes(port) and me["fd_soft"] == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert me["fds"] == len(os.listdir("/proc/self/fd")) and me["threads"] >= 1  # both count the listing fd
        [queue] = kernel.listen_queue(port)
        assert queue["backlog"] == 8 and queue["queued"] == 0
        with socket.create_connection(("127.0.0.1", port)):  # handshake done, never accepted
            assert wait_for_queue(port) == 1
    assert listeners.listeners(port) == []


def test_a_process_whose_memory_is_gone_is_gone_not_a_reading_of_zero():
    """A zombie (as a process the OOM killer is ending) has no memory left to read: a cost read
    from it would be 0 bytes, and its last reading is the one before."""
    from tests.helpers import wait_until

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:  # not reaped until wait(): it stays a zombie
        wait_until(lambda: _state(child.pid) == "Z", 10, "the child's exit")
        assert listeners.describe(child.pid) is None
    finally:
        child.wait()
    me = listeners.describe(os.getpid())
    assert me is not None and me["rss_bytes"] > 0


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def wait_for_queue(port: int) -> int:
    from tests.helpers import wait_until

    return wait_until(lambda: kernel.listen_queue(port)[0]["queued"], 5, "the handshake in the accept queue")


def test_the_kernel_counters_are_read_and_subtracted():
    before = kernel.snapshot(1)
    assert set(before["netstat"]) == set(kernel.COUNTERS) and before["tcp_memory"]["high"] > 0
    after = {**before, "netstat": {**before["netstat"], "ListenOverflows": before["netstat"]["ListenOverflows"] + 3}}
    assert counter_deltas(before, after)["ListenOverflows"] == 3


def test_a_run_at_its_target_with_little_memory_above_the_floor_names_memory_next():
    """--connections max planned to the memory floor and reached it: memory is the next limit,
    counted at the plan's cost per connection (asyncio over TLS: ~305 KB)."""
    d = diagnose.diagnose(evidence(stopped_by="target", held=66_091, workers=[{"open": 11_000, "max_users": 19_900}] * 6,
                                   memory_reserve=1 << 30, mem_available_at_stop=(1 << 30) + 300 * 312_300,
                                   connection_bytes=312_300, sources=[f"127.0.{i}.2" for i in range(1, 13)]))
    assert d.cause == diagnose.REACHED and d.next == {"limit": "memory floor", "room": 300}
    assert "the next limit is the memory floor, 300 connections away" in d.summary
