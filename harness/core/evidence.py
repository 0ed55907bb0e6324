"""The evidence of one run, gathered into the one record the diagnosis reads: what the workers
counted and the target said (the master's totals), the servers' gauges at the peak, the target's
processes at their most, the kernel's counters before and after, the machine's limits. Pure: the
run and the web UI's master read the system and hand what they read to `gather`."""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.core.addresses import is_loopback
from harness.core.records import ProcessInfo, ServerAtPeak, Totals


@dataclass
class ClientHost:
    """A test host that ran workers: its source addresses under its own ephemeral range."""

    name: str
    addresses: int
    ports_per_address: int
    port_range: str
    held: int
    failed: int  # EADDRNOTAVAIL on its connects


@dataclass
class Evidence:
    stopped_by: str | None
    held: int
    host: str
    port: int
    limits: dict
    protocol: str = "echo"
    connections: int = 0  # what the run asked for
    totals: Totals = field(default_factory=Totals)
    server_refused: dict[str, int] = field(default_factory=dict)  # the harness's own servers, by errno
    servers: list[ServerAtPeak] = field(default_factory=list)
    processes: list[ProcessInfo] = field(default_factory=list)  # a target's, on this machine
    workers: list[dict] = field(default_factory=list)  # each worker's open, max_users and fds
    sources: list[str] = field(default_factory=list)
    ports_per_address: int = 0
    port_range: str = "?"
    both_ends_local: bool = True
    kernel_before: dict | None = None
    kernel_after: dict | None = None
    client_hosts: list[ClientHost] = field(default_factory=list)
    server_host: str | None = None
    memory_reserve: int = 0
    mem_available_at_stop: int | None = None
    connection_bytes: int = 0  # what the plan says a connection costs this machine, both ends
    tls: bool = False
    backend: str | None = None  # the harness's own servers' backend (None: a target)
    serving: dict | None = None  # the serving processes' costs per connection and the prediction made from them
    faults: list[dict] = field(default_factory=list)  # what happened that the run did not plan
    accept_queue: dict | None = None  # the port's accept queue at its fullest during the run (ss -ltn)
    connect_rate: float = 0.0  # connections a second while ramping

    @property
    def connects_failed(self) -> dict[str, int]:
        return self.totals.connects_failed

    @property
    def echo_failed(self) -> dict[str, int]:
        return self.totals.echo_failed

    @property
    def words(self) -> dict[str, str]:
        """What the target sent with each kind of failure, word for word."""
        return self.totals.evidence

    @property
    def kernel_deltas(self) -> dict[str, int]:
        if not (self.kernel_before and self.kernel_after):
            return {}
        return counter_deltas(self.kernel_before, self.kernel_after)


def gather(*, stopped_by: str | None, held: int, host: str, port: int, totals: Totals, limits: dict,
           workers: list[dict], sources: list[str], **more) -> Evidence:
    """The evidence of a run (or of the web UI's live test) from what it counted and read."""
    lo, hi = limits["ip_local_port_range"]
    return Evidence(stopped_by=stopped_by, held=held, host=host, port=port, totals=totals, limits=limits,
                    workers=[{"open": w.get("open", 0), "max_users": w.get("max_users", 0), "fds": w.get("fds", 0)}
                             for w in workers],
                    sources=sources, ports_per_address=hi - lo + 1, port_range=f"{lo}-{hi}",
                    both_ends_local=is_loopback(host), **more)


def sources_of(workers: list[dict]) -> list[str]:
    """Every source address the workers bound, once each, in order."""
    return list(dict.fromkeys(a for w in workers for a in w.get("sources", [])))


def on_hosts(evidence: Evidence, hosts: dict) -> None:
    """A run across test hosts: each client host's source ports are its own (its addresses under
    its own ip_local_port_range), and the server host's accept queue is the one read; all the
    hosts share this machine's kernel, so both ends still count against fs.file-max."""
    clients = [h for h in hosts["hosts"] if h["role"] == "client"]
    for h in clients:
        lo, hi = (int(x) for x in h["ip_local_port_range"].split())
        evidence.client_hosts.append(ClientHost(h["name"], len(h["addresses"]), hi - lo + 1, f"{lo}-{hi}", h["held"],
                                                h["connects_failed"].get("EADDRNOTAVAIL", 0)))
    evidence.server_host, evidence.both_ends_local = hosts["server"], True
    evidence.sources = [a for h in clients for a in h["addresses"]]
    if evidence.client_hosts:
        evidence.ports_per_address = evidence.client_hosts[0].ports_per_address
        evidence.port_range = evidence.client_hosts[0].port_range


def counter_deltas(before: dict, after: dict) -> dict[str, int]:
    """How much each TcpExt counter grew between two kernel snapshots."""
    return {name: value - before["netstat"].get(name, 0) for name, value in after["netstat"].items()}
