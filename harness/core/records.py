"""The records that cross a module or a process boundary, each defined once with its keys.

- `ServerGauge`: one server process's slot of the gauge board (shared memory, `servers.gauges`).
- `WorkerReport`: what a Locust worker sends its master once a second (msgpack: a TypedDict).
- `Totals`: the master's sum of its workers' live reports.
- `MasterStatus`: the master's status file (JSON), which the harness samples and the web UI shows.
- `SeriesPoint`: one sample of a run (`run.json` `series`).
- `Fault`: something that happened to a run that it did not plan (`run.json` `faults`).
A dict must cross msgpack or JSON, so those that do are TypedDicts (or dataclasses with `as_dict`
and `from_dict`); the readers use the names here, and a type checker holds them to it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypedDict

# Refusal reasons a server process counts, in gauge-slot order: the errno (or condition) behind
# each connection it closed or could not take.
REFUSALS = ("EMFILE", "ENFILE", "ENOBUFS", "ENOMEM", "threads", "FD_SETSIZE", "other")


class ServerGauge(TypedDict):
    """One server process's gauges, in slot order (`open` is derived: accepted less closed)."""

    pid: int
    index: int
    role: int
    state: int
    port: int
    fd_soft: int
    fd_hard: int
    base_fds: int
    cap: int
    accepted: int
    closed: int
    bytes_echoed: int
    rss_bytes: int
    updated_ns: int
    refused_EMFILE: int
    refused_ENFILE: int
    refused_ENOBUFS: int
    refused_ENOMEM: int
    refused_threads: int
    refused_FD_SETSIZE: int
    refused_other: int
    open: int


GAUGE_FIELDS = tuple(name for name in ServerGauge.__annotations__ if name != "open")
assert GAUGE_FIELDS[-len(REFUSALS):] == tuple(f"refused_{r}" for r in REFUSALS)


def refusals(gauge: ServerGauge) -> dict[str, int]:
    """The non-zero refusal counters of one server process, by reason."""
    return {name: gauge[f"refused_{name}"] for name in REFUSALS if gauge[f"refused_{name}"]}  # type: ignore[literal-required]


def total_refusals(gauges: list[ServerGauge]) -> Counter:
    """The refusals of every process in `gauges`, added up by reason."""
    total: Counter = Counter()
    for gauge in gauges:
        total.update(refusals(gauge))
    return total


class WorkerReport(TypedDict):
    """A Locust worker's counts, sent to the master once a second."""

    worker_index: int
    pid: int
    host: str  # the test host (or machine) it runs on
    test: int  # the master's test number these counts belong to
    at: float  # time.time() when sent
    open: int  # sockets open
    held: int  # verified and still open
    max_users: int  # the most it may hold (its fd limit less a reserve)
    fds: int
    sources: list[str]
    connects_ok: int
    connects_failed: dict[str, int]  # by failure name: no connection, or no first reply
    echoes_sent: int
    echoes_verified: int
    bytes_echoed: int
    echo_failed: dict[str, int]
    evidence: dict[str, str]  # failure name -> the first 200 bytes the target sent with it
    stages: dict[str, int]  # connection stages done (tls-handshake, ws-upgrade, mqtt-connack)
    tls: dict[str, Any]  # what the TLS handshakes agreed: version, cipher, group, resumed count
    latency: str  # echo latency after the ramp: an encoded HdrHistogram
    rss_bytes: int
    rss_base_bytes: int


# What RESET in the web UI clears in a report, and what a report from before its worker heard of
# the current test has cleared besides (its counts are the last test's).
ECHO_COUNTS: dict[str, Any] = {"echo_failed": {}, "echoes_sent": 0, "echoes_verified": 0, "bytes_echoed": 0,
                               "evidence": {}, "latency": ""}
STALE_COUNTS: dict[str, Any] = {**ECHO_COUNTS, "connects_ok": 0, "connects_failed": {}, "stages": {}}
assert set(STALE_COUNTS) <= set(WorkerReport.__annotations__)


@dataclass
class Totals:
    """What the master's live workers hold and have done, added up."""

    open: int = 0
    held: int = 0
    connects_ok: int = 0
    connects_failed: dict[str, int] = field(default_factory=dict)
    echoes_sent: int = 0
    echoes_verified: int = 0
    echo_failed: dict[str, int] = field(default_factory=dict)
    evidence: dict[str, str] = field(default_factory=dict)
    stages: dict[str, int] = field(default_factory=dict)
    tls: dict[str, dict[str, int]] = field(default_factory=dict)  # what handshakes agreed, counted by value
    bytes_echoed: int = 0
    rss_bytes: int = 0
    rss_base_bytes: int = 0
    max_users: int = 0
    workers: int = 0

    @classmethod
    def of(cls, reports: list[WorkerReport]) -> "Totals":
        failed, echo_failed, stages, evidence, tls = Counter(), Counter(), Counter(), {}, {}
        for r in reports:
            failed.update(r["connects_failed"])
            echo_failed.update(r["echo_failed"])
            stages.update(r.get("stages", {}))
            for name, words in r["evidence"].items():
                evidence.setdefault(name, words)
            for key, counts in r.get("tls", {}).items():
                tls.setdefault(key, Counter()).update(counts)
        return cls(open=sum(r["open"] for r in reports), held=sum(r["held"] for r in reports),
                   connects_ok=sum(r["connects_ok"] for r in reports), connects_failed=dict(failed),
                   echoes_sent=sum(r["echoes_sent"] for r in reports),
                   echoes_verified=sum(r["echoes_verified"] for r in reports), echo_failed=dict(echo_failed),
                   evidence=evidence, stages=dict(stages), tls={k: dict(v) for k, v in tls.items()},
                   bytes_echoed=sum(r["bytes_echoed"] for r in reports),
                   rss_bytes=sum(r["rss_bytes"] for r in reports),
                   rss_base_bytes=sum(r["rss_base_bytes"] for r in reports),
                   max_users=sum(r["max_users"] for r in reports), workers=len(reports))

    @classmethod
    def from_dict(cls, d: dict) -> "Totals":
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    @property
    def lost(self) -> int:
        """Verified connections no longer held: the far end closed them (or shed them)."""
        return max(0, self.connects_ok - self.held)


class EchoLatency(TypedDict, total=False):
    """Echo latency after the ramp, every worker's histogram merged: ms, and the histogram."""

    count: int
    p50: float
    p90: float
    p99: float
    p99_9: float
    max: float
    histogram: str


@dataclass
class MasterStatus:
    """The Locust master's status, written whole every second and as each phase begins."""

    test: int = 0
    locust_state: str | None = None
    connections: int = 0  # the connections the current test ramps to
    options: dict = field(default_factory=dict)  # the current test's options (the web UI's form may set them)
    phase: str = "starting"
    stopped_by: str | None = None
    shed: bool = False  # the ramp stopped because the target closed connections it had answered
    totals: Totals = field(default_factory=Totals)
    workers: list[dict] = field(default_factory=list)  # WorkerReports, without their histograms
    echo_latency: EchoLatency = field(default_factory=lambda: EchoLatency(count=0))
    servers: list[ServerGauge] = field(default_factory=list)
    server_refusals: dict[str, int] = field(default_factory=dict)
    kernel_established: int | None = None
    peak_kernel_established: int = 0
    next_limit: str = ""

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "MasterStatus":
        known = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        known["totals"] = Totals.from_dict(d.get("totals", {}))
        return cls(**known)


class SeriesPoint(TypedDict, total=False):
    """One sample of a run: what the kernel, the servers (or a target's processes) and the workers
    each count, with memory and CPU. Every point has the first block; the rest where it applies."""

    t: float
    phase: str
    kernel_established: int
    kernel_counted: bool  # the kernel was counted afresh for this point (ss is not run every second)
    server_open: int
    server_open_by_process: list[int]
    locust_open: int
    locust_held: int
    connects_ok: int
    connects_failed: int
    server_refused: int
    echoes_verified: int
    server_rss_bytes: int
    locust_rss_bytes: int
    slab_bytes: int
    mem_available_bytes: int
    files_open: int
    server_cpu_s: float
    server_cpu_user_s: float
    server_cpu_system_s: float
    locust_cpu_s: float
    locust_cpu_user_s: float
    locust_cpu_system_s: float
    # a run across test hosts: each host's held connections and CPU seconds
    held_by_host: dict[str, int]
    cpu_by_host: dict[str, float]
    # the processes serving the port (a target's on this machine, or the harness's own), in all, as
    # /proc has them: what the costs per connection are fitted from
    serving_fds: int
    serving_threads: int
    serving_rss_bytes: int
    serving_vsz_bytes: int
    serving_data_bytes: int
    serving_cpu_s: float


SERIES_REQUIRED = ("t", "kernel_established", "server_open", "server_open_by_process", "locust_open",
                   "connects_ok", "connects_failed", "server_refused", "echoes_verified", "server_rss_bytes",
                   "locust_rss_bytes", "slab_bytes", "server_cpu_s", "locust_cpu_s")
assert set(SERIES_REQUIRED) <= set(SeriesPoint.__annotations__)


class Fault(TypedDict, total=False):
    """Something that happened to a run that the run did not do: a process died, the target closed
    held connections; or a fault set on purpose (`injected`), with what it cost."""

    t: float
    what: str
    connections_lost: int
    kind: str  # "target-drop", "process-died", "oom-kill", "link-down"
    phase: str
    limit: bool  # the limit the run found (a target shedding as the ramp stopped), not a failure
    injected: bool
    echo_failed: dict[str, int]
    retransmits: int
    timeouts: int
    resets: int
    tcp: dict[str, int]


class ProcessInfo(TypedDict, total=False):
    """A process behind a target's listening port, as /proc has it (`harness.system.listeners`),
    and, once followed over a run, the most it held and how its costs grew."""

    pid: int
    ppid: int
    name: str
    cmdline: str
    fd_soft: int | None
    fd_hard: int | None
    fds: int
    threads: int
    rss_bytes: int
    vsz_bytes: int  # VmSize: what RLIMIT_AS bounds
    data_bytes: int  # VmData: what RLIMIT_DATA bounds
    memory_max: int  # its cgroup's memory limit, where one is set
    memory_used: int  # ...and what the cgroup uses now
    pids_max: int  # its cgroup's pids limit, where one is set
    as_limit: int | None  # RLIMIT_AS (Max address space), None where unlimited
    data_limit: int | None  # RLIMIT_DATA (Max data size), None where unlimited
    fds_before: int
    fds_peak: int
    fds_gained: int
    threads_before: int
    threads_peak: int
    rss_before: int
    rss_peak: int
    cpu_s: float
    gone: bool  # it exited (or was killed) during the run


class ServerAtPeak(TypedDict):
    """One of the harness's own server processes when the most connections were held."""

    pid: int
    cap: int
    open: int
    fd_soft: int
    base_fds: int
