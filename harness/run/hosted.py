"""A run across test hosts: the servers in one network namespace, the Locust workers in others,
the master here on the lab's bridge, as on separate machines.

`layout_for` is pure: from the run's flags and plan, which hosts serve and load, how many workers
each client host runs (the same on each: Locust splits users evenly over workers) and how many
source addresses each needs for its share under its own ephemeral range. `HostedRun` is the
adapter: it makes the lab (`--hosts N`, removed with the run, a reaper standing by for kill -9)
or uses one made by `harness hosts up`, gives the client hosts their addresses, sets the faults
(`--loss`, `--rate`, `--link-down`), and reads each host's TCP counters for the per-host results.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field, replace

from harness.core import lab_layout
from harness.core.lab_layout import Lab
from harness.core.records import MasterStatus, Totals
from harness.core.refusal import Refused
from harness.hosts import faults, netns
from harness.run.cluster import WorkerGroup

LINK_DOWN_MAX_S = 60.0


class HostedError(Refused, ValueError):
    """Flags that cannot make a run across test hosts; the message names the flag and the fix."""


@dataclass
class HostLayout:
    prefix: str
    made: bool  # the run makes the lab and removes it
    server: str
    clients: list[str]
    workers_per_host: int
    addresses_per_host: int
    loss: float = 0.0
    rate: str | None = None
    link_down: float = 0.0
    ipv6: bool = False  # the load goes over the hosts' IPv6 twins (2001:2::/48)

    def address(self, ipv4: str) -> str:
        """A host's address as the load uses it: itself, or its IPv6 twin."""
        return lab_layout.v6_of(ipv4) if self.ipv6 else ipv4

    @property
    def workers(self) -> int:
        return self.workers_per_host * len(self.clients)

    def as_dict(self) -> dict:
        return {"prefix": self.prefix, "made_by_run": self.made, "server": self.server, "clients": self.clients,
                "workers_per_host": self.workers_per_host, "addresses_per_host": self.addresses_per_host,
                "loss_percent": self.loss, "rate": self.rate, "link_down_s": self.link_down,
                "family": 6 if self.ipv6 else 4}


def wants_hosts(cfg) -> bool:
    return bool(cfg.hosts or cfg.server_host or cfg.worker_hosts)


def check(cfg) -> None:
    """Flags that do not go together, before anything is planned."""
    wire = [flag for flag, on in (("--loss", cfg.loss), ("--rate", cfg.rate), ("--link-down", cfg.link_down)) if on]
    if not wants_hosts(cfg):
        if wire:
            raise HostedError(f"{wire[0]} is a fault on a test host's link; add --hosts N (or --worker-hosts)")
        return
    if cfg.hosts and (cfg.server_host or cfg.worker_hosts):
        raise HostedError("--hosts N makes its own hosts; drop --server-host/--worker-hosts, or drop --hosts and "
                          "name hosts made by `harness hosts up`")
    if cfg.hosts == 1:
        raise HostedError("--hosts 1 leaves no host for the workers; use --hosts 2 or more (one server host, "
                          "the rest client hosts)")
    if cfg.hosts:
        lab_layout.check_count(cfg.hosts)
    if cfg.target:
        raise HostedError("--target loads a server the harness does not start; test hosts run the harness's own "
                          "servers: drop --target or the host flags")
    if (cfg.server_host is None) != (cfg.worker_hosts is None):
        raise HostedError("--server-host and --worker-hosts go together: the servers on one test host, the "
                          "workers on the others")
    if cfg.worker_hosts and len(set(cfg.worker_hosts)) != len(cfg.worker_hosts):
        raise HostedError(f"--worker-hosts {','.join(cfg.worker_hosts)} names a host twice; name each once")
    if cfg.worker_hosts and cfg.server_host in cfg.worker_hosts:
        raise HostedError(f"--worker-hosts names the server host {cfg.server_host}; a host serves or loads, not both")
    if cfg.link_down and not 0 < cfg.link_down <= LINK_DOWN_MAX_S:
        raise HostedError(f"--link-down {cfg.link_down:g} is out of range; use up to {LINK_DOWN_MAX_S:.0f} s")
    if cfg.link_down and cfg.link_down >= cfg.hold:
        raise HostedError(f"--link-down {cfg.link_down:g} s does not fit in --hold {cfg.hold:g} s; hold longer")


def layout_for(cfg, workers: int, connections: int) -> HostLayout:
    """Which hosts serve and load, with `workers` workers planned for `connections`."""
    if cfg.hosts:
        prefix = f"r{os.getpid() % 1_000_000}"
        names = [lab_layout.host_name(prefix, i) for i in range(1, cfg.hosts + 1)]
        server, clients, made = names[0], names[1:], True
    else:
        prefix = _prefix_of(cfg.server_host)
        for name in cfg.worker_hosts:
            if _prefix_of(name) != prefix:
                raise HostedError(f"--worker-hosts {name} is not of lab {prefix!r} like --server-host "
                                  f"{cfg.server_host}; use hosts of one lab")
        server, clients, made = cfg.server_host, list(cfg.worker_hosts), False
    per_host = max(1, math.ceil(workers / len(clients)))
    addresses = lab_layout.addresses_needed(math.ceil(connections / len(clients)), lab_layout.per_address())
    if addresses > lab_layout.ADDRESSES_PER_HOST:
        raise HostedError(f"{connections:,} connections over {len(clients)} client hosts need {addresses} source "
                          f"addresses each, past the {lab_layout.ADDRESSES_PER_HOST} a host holds; use more hosts")
    return HostLayout(prefix, made, server, clients, per_host, addresses, cfg.loss, cfg.rate, cfg.link_down,
                      cfg.ipv6)


def _prefix_of(name: str) -> str:
    prefix, _, index = name.rpartition("-")
    if not prefix or not index.isdigit():
        raise HostedError(f"{name!r} is not a test host's name (PREFIX-N, as `harness hosts status` lists them)")
    return prefix


@dataclass
class HostedRun:
    plan: HostLayout
    lab: Lab | None = None
    reaper: netns.Reaper | None = None
    counters_before: dict[str, dict] = field(default_factory=dict)
    injected: list[dict] = field(default_factory=list)  # the faults set on purpose, with what they cost
    _link: dict = field(default_factory=dict)  # the link-down fault in progress

    def start(self) -> "HostedRun":
        p = self.plan
        try:
            if p.made:
                self.reaper = netns.Reaper(p.prefix)  # first: a kill -9 from here on still removes the lab
                self.lab = netns.up(1 + len(p.clients), p.prefix, owner=os.getpid())
            else:
                netns.require_net_admin()
                self.lab = netns.load(p.prefix)
                if self.lab is None:
                    raise HostedError(f"no test hosts of lab {p.prefix!r}; make them with harness hosts up N "
                                      f"--prefix {p.prefix}")
                for name in [p.server, *p.clients]:
                    if not netns.exists(self.lab.host(name).name):
                        raise HostedError(f"test host {name} is in the lab's file but not on the machine; run "
                                          f"harness hosts down --prefix {p.prefix}, then hosts up again")
            for name in p.clients:
                netns.ensure_addresses(self.lab, name, p.addresses_per_host)
            self.counters_before = self.counters()
            for name in p.clients:
                if p.loss:
                    faults.add_loss(name, p.loss)
                if p.rate:
                    faults.set_rate(name, name, p.rate)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def server(self) -> lab_layout.Host:
        return self.lab.host(self.plan.server)

    @property
    def server_address(self) -> str:
        """Where the servers listen and the load goes: the server host's address, or its IPv6 twin."""
        return self.plan.address(self.server.address)

    @property
    def master_host(self) -> str:
        return self.lab.bridge_address

    def groups(self) -> list[WorkerGroup]:
        """One Locust forker per client host, binding that host's addresses."""
        return [WorkerGroup(self.plan.workers_per_host, name,
                            ["--source-addresses", ",".join(self.plan.address(a) for a in
                                                            self.lab.host(name).addresses[:self.plan.addresses_per_host]),
                             "--worker-host", name]) for name in self.plan.clients]

    def counters(self) -> dict[str, dict]:
        return {name: faults.tcp_counters(name) for name in [self.plan.server, *self.plan.clients]}

    def tick(self, phase: str, hold_started: float | None, hold: float, totals: Totals, t: float) -> None:
        """Take the first client host's link down mid-hold for --link-down seconds, then up, and
        count its cost (`lab_layout.link_action` says when; called 20 times a second)."""
        down = self.plan.link_down
        if not down or hold_started is None or "after" in self._link:
            return
        now, veth = time.monotonic(), self.plan.clients[0]
        action = lab_layout.link_action(now, hold_started, hold, down, phase, self._link.get("down_at"),
                                        self._link.get("up_at"))
        if action == lab_layout.LINK_DOWN:
            self._link.update(down_at=now, t=t, held=totals.held, echo_failed=dict(totals.echo_failed),
                              counters=faults.tcp_counters(veth))
            faults.set_link(veth, up=False)
        elif action == lab_layout.LINK_UP:
            faults.set_link(veth, up=True)
            self._link.update(up_at=now, up_t=t)
        elif action == lab_layout.LINK_COUNTED:
            self._link.update(after=faults.tcp_counters(veth), totals=replace(totals))

    def link_fault(self, totals: Totals, series: list[dict]) -> dict | None:
        """What the link outage cost, read at the end of the run: connections lost (held before it
        against the most held in the rest of the hold: the workers' reports come back through
        the link a while after it does, and a report that is late is left out of the counts
        meanwhile, while a lost connection never comes back), echoes failed (by name) and the
        host's retransmits and timeouts since it went down."""
        if "down_at" not in self._link:
            return None
        # Lost is counted by the server host's own kernel (no report can be stale there): its count
        # before the outage against its last count of the hold.
        counted = [p for p in series if p.get("kernel_counted", True)]
        before = [p["kernel_established"] for p in counted if p["t"] <= self._link["t"]]
        during = [p["kernel_established"] for p in counted if p["phase"] == "hold" and p["t"] > self._link["t"]]
        lost = max(0, before[-1] - during[-1]) if before and during else max(0, self._link["held"] - totals.held)
        host = self.plan.clients[0]
        totals = self._link.get("totals", totals)
        failed = {k: v - self._link["echo_failed"].get(k, 0) for k, v in totals.echo_failed.items()
                  if v > self._link["echo_failed"].get(k, 0)}
        cost = faults.delta(self._link["counters"], self._link.get("after") or faults.tcp_counters(host))
        return {"t": round(self._link["t"], 2), "what": f"link of {host} down for {self.plan.link_down:g} s", "injected": True,
                "connections_lost": lost, "echo_failed": failed,
                "retransmits": cost.get("RetransSegs", 0), "timeouts": cost.get("TCPTimeouts", 0),
                "resets": cost.get("EstabResets", 0) + cost.get("OutRsts", 0), "tcp": cost}

    def results(self, status: MasterStatus, cpu_by_host: dict[str, float], held_by_host: dict[str, int],
                server_rss: int) -> dict:
        """run.json's `hosts`: each host's role, addresses, counts, memory, CPU and TCP counters."""
        p = self.plan
        after = self.counters()
        by_host: dict[str, list[dict]] = {}
        for w in status.workers:
            by_host.setdefault(w.get("host", ""), []).append(w)
        rows = []
        for name in [p.server, *p.clients]:
            host = self.lab.host(name)
            workers = by_host.get(name, [])
            failed: dict[str, int] = {}
            for w in workers:
                for k, v in w["connects_failed"].items():
                    failed[k] = failed.get(k, 0) + v
            tcp = faults.delta(self.counters_before.get(name, {}), after.get(name, {}))
            rows.append({
                "name": name, "role": "server" if name == p.server else "client",
                "addresses": [p.address(a) for a in (host.addresses if name == p.server
                                                     else host.addresses[:p.addresses_per_host])],
                "ip_local_port_range": netns.sysctl_in(name, "net.ipv4.ip_local_port_range"),
                "somaxconn": int(netns.sysctl_in(name, "net.core.somaxconn")),
                "workers": len(workers), "held": held_by_host.get(name, 0),
                "connects_ok": sum(w["connects_ok"] for w in workers), "connects_failed": failed,
                "echoes_verified": sum(w["echoes_verified"] for w in workers),
                "mismatched": sum(w["echo_failed"].get("mismatch", 0) for w in workers),
                "rss_bytes": server_rss if name == p.server else sum(w["rss_bytes"] for w in workers),
                "cpu_s": round(cpu_by_host.get(name, 0.0), 2), "tcp": tcp,
                "loss_dropped": faults.dropped(name) if p.loss and name != p.server else 0,
                "shaped_bytes": faults.shaped_bytes(name) if p.rate and name != p.server else 0})
        outside = [w for h, ws in by_host.items() if h not in [p.server, *p.clients] for w in ws]
        return {**p.as_dict(), "bridge_address": self.lab.bridge_address, "hosts": rows,
                "outside_workers": len(outside), "outside_held": sum(w.get("held", 0) for w in outside)}

    def link_up(self) -> None:
        """The link the fault took down, up again where it still is down (the run ends before the
        Locust cluster stops, so the master's and the workers' last words go through)."""
        if "down_at" in self._link and "up_at" not in self._link:
            faults.set_link(self.plan.clients[0], up=True)
            self._link.update(up_at=time.monotonic(), up_t=None)

    def stop(self) -> None:
        """Put the link back, remove the faults (hosts the run did not make keep running), and
        remove the lab if the run made it; then the reaper has nothing left and ends."""
        p = self.plan
        try:
            if self.lab is not None and not p.made:  # remove only what this run set
                for name in p.clients:
                    if p.loss:
                        faults.remove_loss(name)
                    if p.rate:
                        faults.clear_rate(name, name)
                if self._link:
                    faults.set_link(p.clients[0], up=True)
            if p.made:
                netns.down(p.prefix)
        finally:
            if self.reaper is not None:
                self.reaper.close()
