"""A run's configuration, built once from the command line (`RunConfig.from_args`) and handed to
Locust under the same flag names (`harness.core.options`). `harness run`, `proof`, `ui` and `sweep`
all make their runs from it."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, fields

from harness.core.backends import MEMORY_RESERVE_BYTES

MAX = "max"  # --connections max: ramp until a limit stops the run


@dataclass
class RunConfig:
    backend: str = "asyncio"
    connections: int = 100_000
    fill: bool = False  # --connections max: ramp until a limit stops the run
    processes: int | None = None
    share: str = "reuseport"
    fd_limit: int | None = None  # each server process's soft fd limit (None: the hard limit)
    selector: str = "epoll"
    workers: int | None = None
    worker_fd_limit: int | None = None
    user_mode: str = "driver"
    port: int = 9999
    host: str = "127.0.0.1"  # where the harness's own servers listen (on test hosts: the server host's)
    ipv6: bool = False  # load over IPv6 (::1, or the test hosts' 2001:2::/48 twins)
    hold: float = 10.0
    echo_interval: float | None = None  # None: planned (the requests the machine can answer a second)
    echo_mode: str = "closed"
    echo_timeout: float | None = None  # None: planned (what the run's connects and first replies need)
    payload_size: int = 64
    ramp_rate: float | None = None  # None: planned
    max_seconds: float | None = None  # the ramp's time bound; None: planned from the target
    out: str = "results"
    metrics: str | None = None  # HOST:PORT where the master serves Prometheus metrics
    target: str | None = None  # HOST:PORT of a server the harness does not start
    protocol: str | None = None  # what the target speaks (default echo for the harness's own servers)
    send: str = ""
    expect: str = ""
    path: str = "/"
    header: list[str] | None = None  # websocket: the upgrade's own headers, NAME:VALUE
    subprotocol: str = ""
    ws_mode: str = "echo"
    client_id_prefix: str = "fdcap-"
    keepalive: int | None = None  # mqtt; None: planned (longer than the ramp and an interval)
    username: str = ""
    password: str = ""
    mqtt_echo: bool = False
    source_addresses: list[str] | None = None  # every worker binds these (default: planned per worker)
    allow_non_loopback: bool = False
    hosts: int = 0  # --hosts N: make N test hosts for this run (1 server host, N-1 client hosts)
    server_host: str | None = None  # ...or use hosts made by `harness hosts up`
    worker_hosts: list[str] | None = None
    master_bind: str | None = None  # HOST:PORT the master listens on (default: loopback, or the lab's bridge)
    expect_workers: int = 0  # workers started elsewhere (`harness worker --master`) to wait for
    loss: float = 0.0  # percent of packets dropped on each client host's link
    rate: str | None = None  # each client host's link shaped to this rate (tc tbf)
    link_down: float = 0.0  # seconds the first client host's link goes down mid-hold
    memory_reserve: int = MEMORY_RESERVE_BYTES  # MemAvailable the ramp leaves free (stopped_by memory)
    tls: bool = False  # TLS on every connection (`harness.core.tls`)
    server_name: str | None = None
    ca: str | None = None
    insecure: bool = False
    tls_version: str | None = None
    alpn: str | None = None
    tls_resume: bool = False
    tls_group: str | None = None
    cert: str | None = None  # the harness's own servers' certificate and key (default: made for the run)
    key: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace, **overrides) -> "RunConfig":
        """The configuration a subcommand's parsed arguments ask for: each field from the flag of
        the same name where the subcommand has it, else its default."""
        values = {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}
        if values.get("cert") or values.get("ca") or values.get("server_name") or values.get("tls_version") \
                or values.get("alpn") or values.get("tls_resume") or values.get("insecure"):
            values["tls"] = True  # a TLS option says the run speaks TLS
        if values.get("ipv6") and "host" not in values:
            values["host"] = "::1"
        elif ":" in values.get("host", ""):
            values["ipv6"] = True
        connections = values.pop("connections", None)
        if connections == MAX:
            values["fill"], values["connections"] = True, 0
        elif connections is not None:
            values["connections"] = connections
        return cls(**{**values, **overrides})

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def wants_hosts(self) -> bool:
        return bool(self.hosts or self.server_host or self.worker_hosts)
