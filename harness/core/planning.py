"""The plan: what a machine's limits predict for N connections to one port, and how a run is laid out.

Pure: every function here takes the `limits` dict that `harness.plan.limits.read_limits()` returns
(or one written by hand for a laptop, a big server, a 4,096 hard limit) and plain numbers, and
touches nothing. A plan says how many server processes and Locust workers are needed, which
source addresses the workers bind, every cap the machine sets (fd limits, FD_SETSIZE, fs.file-max,
memory, threads), which one binds first, and why, in sentences that go into run.json as they are.

`error` is the one-line refusal a run gives before it starts anything (None when it may run): a
run may go looking for the fd limit (that is what a run finds), but not for the machine's other
limits, and not with too few workers to hold what it asks for.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from harness.core.backends import (
    FD_SETSIZE,
    MEMORY_RESERVE_BYTES,
    SERVER_PROCESS_BYTES,
    connection_bytes,
    held_fds,
)
from harness.core.mqtt import MAX_KEEPALIVE
from harness.core.words import WORKER_FD_RESERVE

# One plain connection to the default backend, both ends (the costs by backend and TLS are
# `harness.core.backends.connection_bytes`), and the spread of SO_REUSEPORT's hash over processes.
BYTES_PER_CONNECTION = connection_bytes("asyncio")
REUSEPORT_HEADROOM = 0.85
PORT_NUMBERS = 65_535
MIN_FD_LIMIT = 64  # below this a server process has no room for its own fds
# A client process (a Locust worker or a lean hold client) keeps this many fds for itself, and
# needs room for some users besides.
CLIENT_FD_RESERVE = WORKER_FD_RESERVE
MIN_WORKER_FD_LIMIT = CLIENT_FD_RESERVE + 28
# The caps a run is allowed to find; any other binding cap makes the plan refuse the run.
RUN_FINDS = ("fd limit", "FD_SETSIZE")
# ...and what `--connections max` goes looking for too: the file table (ENFILE, met cleanly) and
# memory (the ramp stops at a floor of MemAvailable, `harness.plan.ramp`).
FILL_FINDS = RUN_FINDS + ("fs.file-max", "memory", "threads", "source ports")
# A forked Locust worker's own memory before its users (~7 MB measured; the README's figure).
WORKER_PROCESS_BYTES = 8 << 20
THREADS_PER_WORKER = 4  # a Locust worker's threads (gevent's hub and pool, zmq's I/O thread)
# The default proof: at most this many server processes and Locust workers together.
PROOF_TARGET = 100_000
PROOF_MAX_PROCESSES = 32


@dataclass
class Plan:
    """What the limits predict for `connections` connections to one port, and the run's layout."""

    connections: int
    backend: str
    fd_limit: int
    held_fds: int
    per_process: int
    per_source: int
    server_processes: int
    source_addresses: int
    predicted_cap: int
    binding: str  # the limit that stops a run at predicted_cap ("target" when none does)
    workers: int = 1
    worker_fd_limit: int = 0
    users_per_worker: int = 0
    sources_per_worker: int = 1
    caps: dict[str, int] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    server_reasons: list[str] = field(default_factory=list)  # the first of `reasons`: the servers' part
    problems: list[str] = field(default_factory=list)
    error: str | None = None  # why a run with this plan must not start, naming the flag to change
    tls: bool = False
    connection_bytes: int = BYTES_PER_CONNECTION  # what one more connection costs here, both ends

    def as_dict(self) -> dict:
        return asdict(self)


def usable_fd_limit(limits: dict) -> int:
    """The largest soft limit a process may set: the hard limit, or fs.nr_open if unlimited."""
    return limits["nofile_hard"] or limits["nr_open"]


def per_source_address(limits: dict) -> int:
    """Connections per (source address, destination) pair to plan for: half the ephemeral range,
    because the kernel hands out even ports first and connect() slows sharply past that."""
    lo, hi = limits["ip_local_port_range"]
    return (hi - lo + 1) // 2


def source_address(group: int, k: int) -> str:
    """The k-th source address of client group `group` (Locust worker i, or lean hold client i):
    127.0.group+1.k+2, carrying into the second octet past group 253 (127.1.0.k+2, ...). All of
    127/8 is on lo, so no setup is needed."""
    if not 0 <= k <= 252:
        raise ValueError(f"source address {k} of a group is past the 253 a /24 holds")
    block = group + 1
    return f"127.{block // 255}.{block % 255}.{k + 2}"


def sources_for(users: int, limits: dict) -> int:
    """Source addresses one client process needs for `users` connections to one destination."""
    return max(1, math.ceil(users / per_source_address(limits)))


def users_per_client(fd_limit: int) -> int:
    """Connections one client process may hold with soft fd limit `fd_limit`."""
    return max(0, fd_limit - CLIENT_FD_RESERVE)


def plan(limits: dict, connections: int, backend: str = "asyncio", fd_limit: int | None = None,
         processes: int | None = None, selector: str = "epoll", workers: int | None = None,
         worker_fd_limit: int | None = None, fill: bool = False, tls: bool = False,
         reserve: int = MEMORY_RESERVE_BYTES, sources_given: list[str] | None = None) -> Plan:
    """The plan for the harness's own servers on this machine; `sources_given`: the source addresses
    every worker binds where the run names them (IPv6 loopback has one: ::1)."""
    usable = usable_fd_limit(limits)
    cost = connection_bytes(backend, tls)
    given = processes is not None or workers is not None
    fd_limit = fd_limit or usable
    held = held_fds(backend, selector)
    per_process = fd_limit - held
    reasons, problems = [], []
    select_wall = backend == "selectors" and selector == "select"
    if select_wall:
        per_process = min(per_process, FD_SETSIZE - held)
        reasons.append(f"select() watches fds below FD_SETSIZE={FD_SETSIZE} only → {per_process:,} per process")
    if processes is None:
        processes = max(1, math.ceil(connections / per_process))
        if processes > 1:
            processes = math.ceil(connections / int(per_process * REUSEPORT_HEADROOM))
        reasons.append(f"{fd_limit:,} fds per process − {held} held = {per_process:,} connections "
                       f"per server process → {processes} server process(es)"
                       + (f" (with {100 - REUSEPORT_HEADROOM * 100:.0f}% headroom for SO_REUSEPORT's "
                          "uneven spread)" if processes > 1 else ""))

    server_reasons = list(reasons)
    caps = {("FD_SETSIZE" if select_wall else "fd limit"): processes * per_process}
    free_files = limits["file_max"] - limits["file_nr"]
    caps["fs.file-max"] = free_files // 2  # both ends are on this machine
    # memory: what is left beside the reserve and the processes themselves (the workers as planned below)
    per_worker = max(1, users_per_client(worker_fd_limit or usable))
    process_bytes = processes * SERVER_PROCESS_BYTES + (workers or math.ceil(connections / per_worker)) * WORKER_PROCESS_BYTES
    caps["memory"] = max(0, limits["mem_available"] - reserve - process_bytes) // cost
    if backend == "threaded":
        # a thread's map entries: stack, guard page, a 64th of a receive-buffer mapping (threaded.py)
        thread_room = min(limits["threads_max"], limits["pid_max"], limits["max_map_count"] * 64 // 129)
        caps["threads"] = max(0, thread_room - limits.get("threads_in_use", 0))
    if sources_given:  # every worker binds these: each is one address's ports to the one destination
        caps["source ports"] = len(sources_given) * full_port_range(limits)
    binding = min(caps, key=caps.get)
    predicted = min(connections, caps[binding])
    if caps[binding] < connections:
        problems.append(f"{connections:,} connections exceed the {binding} cap of "
                        f"{caps[binding]:,} by {connections - caps[binding]:,}")
    else:
        binding = "target"

    clients = _clients(limits, connections, predicted, workers, worker_fd_limit, sources_given)
    error = clients.pop("error")
    if problems and binding not in (FILL_FINDS if fill else RUN_FINDS):
        too_many = given and process_bytes > limits["mem_available"] - reserve  # say which of those fit
        error = error or (too_many and processes_error(limits, processes, clients["workers"], connections, cost,
                                                       reserve)) or f"{problems[0]} on this machine; lower --connections"
    error = error or processes_error(limits, processes, clients["workers"], predicted, cost, reserve)
    if tls or backend != "asyncio":
        reasons.append(f"{cost / 1024:,.1f} KB of memory per connection, both ends ({backend}"
                       f"{' with TLS' if tls else ''}: server, Locust and kernel, measured)")
    return Plan(connections=connections, backend=backend, fd_limit=fd_limit, held_fds=held,
                per_process=per_process, per_source=per_source_address(limits), server_processes=processes,
                predicted_cap=predicted, binding=binding, caps=caps, reasons=reasons + clients.pop("reasons"),
                server_reasons=server_reasons, problems=problems, error=error, tls=tls, connection_bytes=cost,
                **clients)


def _clients(limits: dict, connections: int, predicted: int, workers: int | None, worker_fd_limit: int | None,
             sources_given: list[str] | None = None) -> dict:
    """The Locust side of a plan: workers, users each, the source addresses they bind, the reasons,
    and the refusal if they cannot hold what the run asks for."""
    worker_fd = worker_fd_limit or usable_fd_limit(limits)
    per_worker = users_per_client(worker_fd)
    if per_worker == 0:
        return {"workers": 0, "worker_fd_limit": worker_fd, "users_per_worker": 0, "sources_per_worker": 0,
                "source_addresses": 0, "reasons": [],
                "error": f"a Locust worker's fd limit of {worker_fd:,} leaves no room for users beside its reserve "
                         f"of {CLIENT_FD_RESERVE}; raise --worker-fd-limit to at least {MIN_WORKER_FD_LIMIT} "
                         "(or the hard limit)"}
    reasons = []
    worker_count = workers or max(1, math.ceil(connections / per_worker))
    if workers is None and worker_count > 1:
        reasons.append(f"{worker_fd:,} fds per Locust worker − {CLIENT_FD_RESERVE} reserve = {per_worker:,} "
                       f"users per worker → {worker_count} workers")
    per_source = per_source_address(limits)
    if sources_given:
        per_worker_sources, sources = len(sources_given), len(sources_given)
        reasons.append(f"every worker binds the {sources} source address(es) given ({', '.join(sources_given[:4])}"
                       f"{' …' if sources > 4 else ''}): {full_port_range(limits):,} ephemeral ports each to the target")
    else:
        # Each worker binds enough addresses of its own for all the users its fd limit allows
        # (scenarios.locustfile.configure_user_process): that, not N alone, sets the count.
        per_worker_sources = sources_for(per_worker, limits)
        sources = worker_count * per_worker_sources
        reasons.append(f"{per_source:,} connections per client source address (half of ip_local_port_range) → "
                       f"{per_worker_sources} address(es) per worker (worker i: 127.0.i+1.2 …), {sources} in all")
    error = None
    if worker_count * per_worker < predicted:
        need = math.ceil(predicted / per_worker)
        error = (f"{worker_count} worker(s) of {per_worker:,} users each cannot hold {connections:,} connections "
                 f"(each worker's fd limit {worker_fd:,} minus {CLIENT_FD_RESERVE} for itself); use --workers {need}")
    return {"workers": worker_count, "worker_fd_limit": worker_fd, "users_per_worker": per_worker,
            "sources_per_worker": per_worker_sources, "source_addresses": sources, "reasons": reasons, "error": error}


def full_port_range(limits: dict) -> int:
    """Ephemeral ports per (source address, destination): the whole of ip_local_port_range."""
    lo, hi = limits["ip_local_port_range"]
    return hi - lo + 1


def plan_target(limits: dict, connections: int, *, local: bool, target_room: int | None = None,
                workers: int | None = None, worker_fd_limit: int | None = None,
                sources_given: list[str] | None = None, tls: bool = False) -> Plan:
    """The plan for loading a server the harness did not start: no server processes; the caps are
    the client side's (source ports when the addresses are given, the file table: both ends when
    the target is on this machine, memory) and, for a local target, the fd room its processes
    have (`target_room`, from `harness.diagnose.process`)."""
    caps: dict[str, int] = {}
    if target_room is not None:
        caps["target fd limit"] = target_room
    if sources_given:
        caps["source ports"] = len(sources_given) * full_port_range(limits)
    caps["fs.file-max"] = (limits["file_max"] - limits["file_nr"]) // (2 if local else 1)
    cost = connection_bytes(None, tls)  # the client's and the kernel's part: the target's own is measured
    caps["memory"] = limits["mem_available"] // cost
    binding = min(caps, key=caps.get)
    predicted = min(connections, caps[binding])
    problems = []
    if caps[binding] < connections:
        problems.append(f"{connections:,} connections exceed the {binding} cap of "
                        f"{caps[binding]:,} by {connections - caps[binding]:,}")
    else:
        binding = "target"
    reasons = ([f"the target's processes have room for {target_room:,} more fds (their fd limits less the fds "
                "they hold)"] if target_room is not None else [])
    clients = _clients(limits, connections, predicted, workers, worker_fd_limit, sources_given)
    error = clients.pop("error")
    if problems and binding in ("fs.file-max", "memory"):
        error = f"{problems[0]} on this machine; lower --connections"
    return Plan(connections=connections, backend="target", fd_limit=0, held_fds=0, per_process=0,
                per_source=per_source_address(limits), server_processes=0, predicted_cap=predicted,
                binding=binding, caps=caps, reasons=reasons + clients.pop("reasons"), problems=problems,
                error=error, tls=tls, connection_bytes=cost, **clients)


def machine_cap(limits: dict, backend: str = "asyncio", tls: bool = False,
                reserve: int = MEMORY_RESERVE_BYTES) -> tuple[int, str]:
    """The connections this machine holds before one of its own limits binds (the file table,
    memory, threads), whatever the harness's process layout: what `--connections max` plans for."""
    caps = plan(limits, PORT_NUMBERS, backend=backend, fill=True, tls=tls, reserve=reserve).caps
    machine = {k: v for k, v in caps.items() if k not in RUN_FINDS}
    # memory: the server processes and workers those connections need cost memory too
    per_connection = (connection_bytes(backend, tls)
                      + SERVER_PROCESS_BYTES / (usable_fd_limit(limits) * REUSEPORT_HEADROOM)
                      + WORKER_PROCESS_BYTES / max(1, users_per_client(usable_fd_limit(limits))))
    machine["memory"] = int(max(0, limits["mem_available"] - reserve) / per_connection)
    for _ in range(20):  # the processes come in whole numbers: step down until they fit beside the connections
        p = plan(limits, max(1, machine["memory"]), backend=backend, fill=True, tls=tls, reserve=reserve)
        if not processes_error(limits, p.server_processes, p.workers, machine["memory"], p.connection_bytes,
                               reserve):
            break
        machine["memory"] = int(machine["memory"] * 0.99)
    name = min(machine, key=machine.get)
    return machine[name], name


def processes_error(limits: dict, servers: int, workers: int, connections: int,
                    cost: int = BYTES_PER_CONNECTION, reserve: int = MEMORY_RESERVE_BYTES) -> str | None:
    """Why this many server processes and Locust workers cannot run here beside `connections`
    connections of `cost` bytes each: the memory they cost (measured per process and per
    connection, with a reserve kept free) or the pids and threads left; None when they fit."""
    room = limits["mem_available"] - reserve - connections * cost
    need = servers * SERVER_PROCESS_BYTES + workers * WORKER_PROCESS_BYTES
    if need > room:
        fit = max(0, (room - workers * WORKER_PROCESS_BYTES) // SERVER_PROCESS_BYTES)
        return (f"{servers:,} server processes and {workers:,} Locust workers need {need / 2**30:.1f} GiB beside "
                f"{connections:,} connections, and {max(0, room) / 2**30:.1f} GiB is left of MemAvailable "
                f"({reserve / 2**30:.1f} GiB kept free): at most {fit:,} server processes fit; lower "
                "--processes or --workers")
    threads = servers + workers * THREADS_PER_WORKER
    free = min(limits["pid_max"], limits["threads_max"]) - limits.get("threads_in_use", 0)
    if threads > free:
        return (f"{servers:,} server processes and {workers:,} Locust workers need ~{threads:,} threads, and "
                f"kernel.pid_max and threads-max leave {free:,}; lower --processes or --workers")
    return None


def fd_limit_error(flag: str, value: int | None, limits: dict, least: int = MIN_FD_LIMIT) -> str | None:
    """Why a soft fd limit given with `flag` cannot be used here, or None."""
    usable = usable_fd_limit(limits)
    if value is None:
        return None
    if value > usable:
        return (f"{flag} {value} exceeds the hard limit {usable} of this process; lower {flag} "
                f"or raise the hard limit (ulimit -Hn, needs CAP_SYS_RESOURCE)")
    if value < least:
        return f"{flag} {value} is too small; use at least {least}"
    return None


def client_split(count: int, limits: dict, clients: int | None = None) -> list[int]:
    """Connections per lean client process for `count` in all: each holds at most what its fd
    limit allows (the same reserve as a Locust worker), and the counts differ by at most one."""
    per_client = max(1, users_per_client(usable_fd_limit(limits)))
    clients = clients or max(1, math.ceil(count / per_client))
    return [count // clients + (1 if i < count % clients else 0) for i in range(clients)]


def proof_target(limits: dict, backend: str) -> tuple[int, str]:
    """The default proof's target: PROOF_TARGET, or what PROOF_MAX_PROCESSES server and worker
    processes (or memory) can hold here, with the reason it was lowered ("" if it was not)."""
    usable = usable_fd_limit(limits)
    per_server = max(1, int((usable - held_fds(backend)) * REUSEPORT_HEADROOM))
    per_worker = max(1, users_per_client(usable))
    by_processes = int(PROOF_MAX_PROCESSES / (1 / per_server + 1 / per_worker))
    by_memory = limits["mem_available"] // (2 * BYTES_PER_CONNECTION)
    target = min(PROOF_TARGET, by_processes, by_memory)
    if target == PROOF_TARGET:
        return target, ""
    why = (f"the hard fd limit {usable:,} would need more than {PROOF_MAX_PROCESSES} processes"
           if target == by_processes else "memory")
    return target, f"target lowered to {target:,} by {why}"


# The requests the load side and the servers answer a second, per core, while they hold many
# connections: the hold's periodic requests are spread so that they stay within it.
REQUESTS_PER_S_PER_CORE = 10_000
DEFAULT_ECHO_INTERVAL = 5.0
DEFAULT_ECHO_TIMEOUT = 10.0
MQTT_KEEPALIVE = 300  # an MQTT run's keep-alive where the ramp is shorter (emqtt-bench's default)
# A connect or a reply waits its turn behind every other load process on its core: the default
# timeout holds up to this many load processes per core, and grows in step beyond.
PROCESSES_PER_CORE_IN_TIMEOUT = 30


@dataclass
class Timing:
    echo_interval: float
    echo_timeout: float
    reasons: list[str] = field(default_factory=list)


def timing(limits: dict, connections: int, load_processes: int, echo_timeout: float | None = None,
           echo_interval: float | None = None) -> Timing:
    """The hold's request interval and the timeout of connects and replies, where not given: the
    interval spreads every connection's requests within REQUESTS_PER_S_PER_CORE; the timeout grows
    with the load processes that share each core (server processes and Locust workers)."""
    cores = max(1, limits.get("cpus", 1))
    reasons = []
    if echo_interval is None:
        echo_interval = max(DEFAULT_ECHO_INTERVAL, round(connections / (REQUESTS_PER_S_PER_CORE * cores), 1))
        if echo_interval > DEFAULT_ECHO_INTERVAL:
            reasons.append(f"--echo-interval {echo_interval:g} s: {connections:,} connections' requests spread to "
                           f"{REQUESTS_PER_S_PER_CORE:,} a second per core on {cores} core(s)")
    if echo_timeout is None:
        per_core = load_processes / cores
        echo_timeout = max(DEFAULT_ECHO_TIMEOUT,
                           round(DEFAULT_ECHO_TIMEOUT * per_core / PROCESSES_PER_CORE_IN_TIMEOUT))
        if echo_timeout > DEFAULT_ECHO_TIMEOUT:
            reasons.append(f"--echo-timeout {echo_timeout:g} s: {load_processes} load processes on {cores} core(s), "
                           f"{per_core:.0f} a core, each waiting its turn; {DEFAULT_ECHO_TIMEOUT:g} s holds "
                           f"{PROCESSES_PER_CORE_IN_TIMEOUT} a core")
    return Timing(echo_interval, echo_timeout, reasons)


def mqtt_keepalive(given: int | None, ramp_seconds: float, echo_interval: float) -> tuple[int | None, str]:
    """The keep-alive an MQTT run's CONNECTs ask for, and why; (None, the refusal) where the one
    given cannot work. A broker closes a connection silent for 1.5 keep-alives (MQTT 3.1.1 section
    3.1.2.10), and a connection made early in the ramp is silent until the hold's first request."""
    if given is None:
        keepalive = min(MAX_KEEPALIVE, max(MQTT_KEEPALIVE, math.ceil(ramp_seconds + 2 * echo_interval)))
        return keepalive, (f"--keepalive {keepalive} s: longer than the ramp's bound ({ramp_seconds:g} s) and two "
                           "request intervals, so the broker closes no connection that waits for the hold"
                           if keepalive > MQTT_KEEPALIVE else "")
    if given and given * 1.5 < echo_interval:
        return None, (f"--keepalive {given}: the broker closes a connection silent for {given * 1.5:g} s, and "
                      f"requests come every {echo_interval:g} s; raise --keepalive or lower --echo-interval")
    return given, ""
