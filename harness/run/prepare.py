"""Before anything starts: the input checked and the run planned from this machine's limits.

`prepare(config)` returns a `Prepared` run (the plan with its reasons, the workers, the ramp, the
timeouts it chose and why) or raises `RunError` with one line naming the flag and the fix. Nothing
is started here: a run that cannot work is refused before it costs anything.
"""

from __future__ import annotations

import ssl
import sys
import tempfile
from dataclasses import dataclass, fields, replace
from pathlib import Path

from harness.core import planning, protocols
from harness.core.addresses import AddressError, is_loopback, split_host_port
from harness.core.backends import UnknownBackend, backend
from harness.core.diagnose import predicted_cap
from harness.core.lab_layout import HOST_PORT_RANGE, LayoutError, per_address
from harness.core.refusal import Refused
from harness.core.tls import TlsSettings, client_context
from harness.hosts import netns
from harness.run import hosted
from harness.run.config import RunConfig
from harness.run.hosted import HostLayout
from harness.run.outside import OutsideServer, TargetError, check_target, is_local
from harness.system import listeners
from harness.system.limits import read_limits

DEFAULT_RAMP_RATE = 10_000.0  # the shape slows down by itself where the machine cannot keep up
# The ramp's default time bound: 240 s, or long enough for the target at this many connections a
# second (a ramp that the machine slows to this rate still reaches its target).
SLOWEST_PLANNED_RAMP = 2_000.0
# Flags that shape the servers the harness starts, which a run against --target does not.
SERVER_FLAGS = (("processes", "--processes"), ("fd_limit", "--fd-limit"))
FILL_OVERSHOOT = 1.25  # --connections max asks for this much more than the predicted cap, so the run meets it
# ...past a machine-wide limit by less: every server process and worker planned for the overshoot
# costs memory and CPU at the ramp, and the first refusal ends the ramp anyway
FILL_MACHINE_OVERSHOOT = 1.05


class RunError(Refused, ValueError):
    """Bad input, found before anything starts; the message names the problem and the fix."""


@dataclass
class Prepared:
    config: RunConfig
    limits: dict
    plan: planning.Plan
    workers: int  # Locust workers this run starts (0: every user runs on outside workers)
    worker_fd_limit: int
    ramp_rate: float
    max_seconds: float
    echo_timeout: float
    echo_interval: float
    keepalive: int = 0  # mqtt: the keep-alive each CONNECT asks for
    target: OutsideServer | None = None
    hosts: HostLayout | None = None  # the run across test hosts, if it is one
    master: tuple[str, int] = ("127.0.0.1", 0)  # where the master listens (port 0: a free one)

    def locust_values(self) -> dict:
        """The options Locust gets (`harness.core.options`), as this run resolved them."""
        cfg = self.config
        return {"connections": cfg.connections, "ramp_rate": self.ramp_rate, "hold": cfg.hold,
                "echo_interval": self.echo_interval, "echo_mode": cfg.echo_mode, "echo_timeout": self.echo_timeout,
                "payload_size": cfg.payload_size, "protocol": cfg.protocol or "echo", "send": cfg.send,
                "expect": cfg.expect, "path": cfg.path, "user_mode": cfg.user_mode, "max_seconds": self.max_seconds,
                "memory_reserve": cfg.memory_reserve, "connection_bytes": self.plan.connection_bytes,
                "worker_fd_limit": self.worker_fd_limit,
                "source_addresses": ",".join(cfg.source_addresses) if cfg.source_addresses else None,
                "allow_non_loopback": cfg.allow_non_loopback, "tls": cfg.tls, "server_name": cfg.server_name,
                "ca": cfg.ca, "insecure": cfg.insecure, "tls_version": cfg.tls_version, "alpn": cfg.alpn,
                "tls_resume": cfg.tls_resume, "tls_group": cfg.tls_group, "header": cfg.header,
                "subprotocol": cfg.subprotocol, "ws_mode": cfg.ws_mode, "client_id_prefix": cfg.client_id_prefix,
                "keepalive": self.keepalive, "username": cfg.username, "password": cfg.password,
                "mqtt_echo": cfg.mqtt_echo}


def prepare(cfg: RunConfig) -> Prepared:
    """Validate the input and plan the run; raises RunError before anything is started."""
    check_flags(cfg)
    master = master_address(cfg)
    limits = read_limits()
    if cfg.target:
        prepared = _prepare_target(cfg, limits)
    else:
        prepared = _prepare_own_servers(cfg, limits)
    prepared.master = master
    if cfg.workers == 0:  # every user runs on the outside workers (planned as if they were like ours)
        prepared.workers = 0
    return prepared


def check_flags(cfg: RunConfig) -> None:
    """Flags that are wrong, or do not go together, whatever the machine."""
    try:
        backend(cfg.backend)
        protocols.make(cfg.protocol or "echo", send=cfg.send, expect=cfg.expect, path=cfg.path,
                       headers=tuple(cfg.header or ()), subprotocol=cfg.subprotocol, ws_mode=cfg.ws_mode,
                       keepalive=cfg.keepalive or 0, username=cfg.username, password=cfg.password,
                       mqtt_echo=cfg.mqtt_echo)
        hosted.check(cfg)
    except (UnknownBackend, ValueError, hosted.HostedError, LayoutError) as exc:
        raise RunError(str(exc)) from None
    check_tls_flags(cfg)
    check_metrics(cfg)
    if cfg.target and (cfg.ipv6 or cfg.host != "127.0.0.1"):
        raise RunError("--ipv6 and --host are where the harness's own servers listen; a --target's address says its "
                       "family ([::1]:PORT for IPv6): drop them")
    if cfg.wants_hosts and cfg.host not in ("127.0.0.1", "::1"):
        raise RunError(f"--host {cfg.host}: on test hosts the servers listen on the server host's address; drop --host "
                       "(--ipv6 for its IPv6 address)")
    for address in cfg.source_addresses or []:
        if not is_loopback(address):
            raise RunError(f"--source-addresses {address} is not on loopback; use addresses of 127.0.0.0/8 or ::1")
    if cfg.workers == 0 and not cfg.expect_workers:
        raise RunError("--workers 0 leaves no worker to run the users; add --expect-workers N for workers "
                       "started elsewhere with `harness worker --master`")
    if cfg.workers == 0 and cfg.wants_hosts:
        raise RunError("--workers 0 with test hosts leaves their client hosts idle; drop --workers 0")
    if cfg.wants_hosts:
        try:
            netns.require_net_admin()
        except netns.HostsError as exc:
            raise RunError(str(exc)) from None


def check_tls_flags(cfg: RunConfig) -> None:
    if bool(cfg.cert) != bool(cfg.key):
        raise RunError("--cert and --key go together: give both, or neither for a certificate made for the run")
    if cfg.cert and cfg.target:
        raise RunError("--cert is the harness's own servers' certificate; a --target has its own: drop --cert")
    for flag, path in (("--cert", cfg.cert), ("--key", cfg.key), ("--ca", cfg.ca)):
        if path and not Path(path).is_file():
            raise RunError(f"{flag} {path} is not a file; give a PEM file")
    if cfg.tls and cfg.tls_group:
        try:
            client_context(TlsSettings(group=cfg.tls_group or "", version=cfg.tls_version))
        except (ValueError, ssl.SSLError) as exc:
            raise RunError(f"--tls-group {cfg.tls_group}: {exc}; give a group OpenSSL knows, e.g. X25519 or "
                           "prime256v1") from None


def check_metrics(cfg: RunConfig) -> None:
    """--metrics HOST:PORT: an address to listen on, loopback unless the user says otherwise."""
    if not cfg.metrics:
        return
    try:
        host, _ = split_host_port(cfg.metrics, "--metrics", "127.0.0.1:9646")
    except AddressError as exc:
        raise RunError(str(exc)) from None
    if not is_loopback(host) and not cfg.allow_non_loopback:
        raise RunError(f"--metrics {cfg.metrics} is not loopback: anyone who reaches it reads the run; add "
                       "--allow-non-loopback if that network is yours")


def master_address(cfg: RunConfig) -> tuple[str, int]:
    """--master-bind HOST:PORT, checked: loopback, a test hosts' bridge, or (told so) elsewhere."""
    if cfg.expect_workers and not cfg.master_bind:
        raise RunError(f"--expect-workers {cfg.expect_workers} needs --master-bind HOST:PORT: the address the outside "
                       "workers are given (harness worker --master HOST:PORT)")
    if not cfg.master_bind:
        return ("127.0.0.1", 0)
    try:
        host, port = split_host_port(cfg.master_bind, "--master-bind", "127.0.0.1:5557")
    except AddressError as exc:
        raise RunError(str(exc)) from None
    bridges = {lab.bridge_address for lab in netns.labs()}
    if cfg.hosts:
        raise RunError("--hosts N makes a lab whose bridge the master listens on; drop --master-bind, or make the "
                       "hosts with harness hosts up and bind the bridge harness hosts status shows")
    if cfg.wants_hosts and host not in bridges:
        raise RunError(f"--master-bind {host}: the workers on test hosts reach the master only on their lab's bridge "
                       f"({', '.join(sorted(bridges)) or 'harness hosts status'}); bind that")
    if not (is_loopback(host) or host in bridges):
        if not cfg.allow_non_loopback:
            raise RunError(f"--master-bind {host} is not loopback: workers anywhere that reaches it could join "
                           "and be told what to load; add --allow-non-loopback if that network is yours")
        print(f"warning: the Locust master listens on {host}:{port}; any worker that reaches it can join",
              file=sys.stderr)
    return (host, port)


def _loopback_v6_sources(cfg: RunConfig) -> RunConfig:
    """IPv6 loopback has one address: every worker binds ::1 (the plan counts its ports)."""
    if cfg.ipv6 and not cfg.wants_hosts and not cfg.source_addresses:
        return replace(cfg, source_addresses=["::1"])
    return cfg


def _prepare_own_servers(cfg: RunConfig, limits: dict) -> Prepared:
    if cfg.protocol not in (None, "echo", "hold"):
        raise RunError(f"--protocol {cfg.protocol} needs a --target that speaks it; the harness's own servers "
                       "echo (--protocol echo or hold)")
    for flag, value, least in (("--fd-limit", cfg.fd_limit, planning.MIN_FD_LIMIT),
                               ("--worker-fd-limit", cfg.worker_fd_limit, planning.MIN_WORKER_FD_LIMIT)):
        error = planning.fd_limit_error(flag, value, limits, least)
        if error:
            raise RunError(error)
    cfg = _loopback_v6_sources(cfg)
    cfg = _fill(cfg, limits) if cfg.fill else cfg
    if cfg.connections < 1:
        raise RunError(f"--connections {cfg.connections} must be at least 1")
    plan = planning.plan(limits, cfg.connections, backend=cfg.backend, fd_limit=cfg.fd_limit,
                         processes=cfg.processes, selector=cfg.selector, workers=_planned_workers(cfg),
                         worker_fd_limit=cfg.worker_fd_limit, fill=cfg.fill, tls=cfg.tls,
                         reserve=cfg.memory_reserve, sources_given=None if cfg.wants_hosts else cfg.source_addresses)
    if plan.error:
        hint = ("; IPv6 loopback has one address (::1): for more, load the test hosts over IPv6 (--hosts N --ipv6)"
                if cfg.ipv6 and "source ports" in plan.error else "")
        raise RunError(plan.error + hint)
    prepared = _finish(cfg, limits, plan)
    if cfg.wants_hosts:
        _on_hosts(prepared)
    return prepared


def _fill(cfg: RunConfig, limits: dict) -> RunConfig:
    """--connections max: ask for more than the servers (or the machine) can hold, so the run finds
    where they stop."""
    if cfg.processes:  # those processes' fd limit
        caps = planning.plan(limits, 1, backend=cfg.backend, fd_limit=cfg.fd_limit, processes=cfg.processes,
                             selector=cfg.selector, tls=cfg.tls, reserve=cfg.memory_reserve).caps
        return replace(cfg, connections=int(min(caps.values()) * FILL_OVERSHOOT) + 50)
    cap, name = planning.machine_cap(limits, cfg.backend, tls=cfg.tls, reserve=cfg.memory_reserve)  # a little past it
    if cfg.source_addresses and not cfg.wants_hosts:  # the addresses every worker binds: their ports
        ports = len(cfg.source_addresses) * planning.full_port_range(limits)
        cap, name = (ports, "source ports") if ports < cap else (cap, name)
    # memory too: the floor stops the ramp where memory runs short (stopped_by memory), whether a
    # connection costs more than planned or less
    return replace(cfg, connections=int(cap * FILL_MACHINE_OVERSHOOT) + 50)


def _planned_workers(cfg: RunConfig) -> int | None:
    """--workers 0: every user runs on the outside workers, planned as if they were like ours."""
    return cfg.expect_workers if cfg.workers == 0 else cfg.workers


def _on_hosts(prepared: Prepared) -> None:
    cfg, plan = prepared.config, prepared.plan
    try:
        prepared.hosts = hosted.layout_for(cfg, plan.workers, cfg.connections)
    except (hosted.HostedError, LayoutError) as exc:
        raise RunError(str(exc)) from None
    h = prepared.hosts
    prepared.workers = plan.workers = h.workers
    plan.reasons = [r for r in plan.reasons if "client source address" not in r]  # the hosts bind their own
    plan.reasons.append(f"test hosts: servers on {h.server}; {len(h.clients)} client host(s) × "
                        f"{h.workers_per_host} worker(s), each host binding {h.addresses_per_host} address(es) "
                        f"of its own ({per_address():,} connections per address: half of its "
                        f"ip_local_port_range {HOST_PORT_RANGE[0]}-{HOST_PORT_RANGE[1]})")


def _prepare_target(cfg: RunConfig, limits: dict) -> Prepared:
    """A run against a server the harness does not start: its address, what it speaks, and what
    its processes (when it is on this machine) can hold."""
    try:
        host, port = check_target(cfg.target, cfg.protocol, cfg.allow_non_loopback)
    except TargetError as exc:
        raise RunError(str(exc)) from None
    for field_name, flag in SERVER_FLAGS:
        if getattr(cfg, field_name) is not None:
            raise RunError(f"{flag} shapes the servers the harness starts; with --target none is started: drop {flag}")
    local = is_local(host)
    if ":" in host and not cfg.source_addresses:  # the workers' own 127.0.i+1.2 cannot reach an IPv6 target
        cfg = replace(cfg, source_addresses=["::1"] if local else ["::"])
    found = listeners.listeners(port) if local else []
    target = OutsideServer(host, port, found)
    room = predicted_cap(target.processes) if found else None
    if cfg.fill:
        if room is None:
            raise RunError(f"--connections max needs to know what {cfg.target} can hold, and no process on this "
                           "machine listens there with a known fd limit; give --connections N")
        cfg = replace(cfg, connections=int(room * FILL_OVERSHOOT) + 50)
    if cfg.connections < 1:
        raise RunError(f"--connections {cfg.connections} must be at least 1")
    plan = planning.plan_target(limits, cfg.connections, local=local, target_room=room,
                                workers=_planned_workers(cfg), worker_fd_limit=cfg.worker_fd_limit,
                                sources_given=cfg.source_addresses, tls=cfg.tls)
    if plan.error:
        raise RunError(plan.error)
    prepared = _finish(cfg, limits, plan)
    prepared.target = target
    return prepared


def _finish(cfg: RunConfig, limits: dict, plan: planning.Plan) -> Prepared:
    out = Path(cfg.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()
    except OSError as exc:
        raise RunError(f"cannot write results to {out}: {exc.strerror}; choose another --out") from None
    ramp = cfg.ramp_rate or min(float(cfg.connections), DEFAULT_RAMP_RATE)
    max_seconds = cfg.max_seconds or max(240.0, cfg.connections / SLOWEST_PLANNED_RAMP)
    timing = planning.timing(limits, cfg.connections, plan.server_processes + plan.workers,
                             echo_timeout=cfg.echo_timeout, echo_interval=cfg.echo_interval)
    plan.reasons += timing.reasons  # the plan says which timeout and interval it chose, and why
    keepalive = 0
    if cfg.protocol == "mqtt":
        keepalive, why = planning.mqtt_keepalive(cfg.keepalive, max_seconds, timing.echo_interval)
        if keepalive is None:
            raise RunError(why)
        plan.reasons += [why] if why else []
    return Prepared(cfg, limits, plan, plan.workers, plan.worker_fd_limit, ramp, max_seconds,
                    timing.echo_timeout, timing.echo_interval, keepalive)


def replan(prepared: Prepared, connections: int, options: dict | None = None) -> Prepared:
    """The same run planned for another number of connections and the start form's options (a web
    UI test's own): what its run.json predicts for it. The plan's refusals do not apply: the test
    has run."""
    known = {f.name for f in fields(RunConfig)}
    cfg = replace(prepared.config, connections=connections, fill=False,
                  **{k: v for k, v in (options or {}).items() if k in known})
    if prepared.target is not None:
        plan = planning.plan_target(prepared.limits, connections, local=prepared.target.local,
                                    target_room=predicted_cap(prepared.target.processes),
                                    workers=prepared.workers, worker_fd_limit=prepared.worker_fd_limit,
                                    sources_given=cfg.source_addresses, tls=cfg.tls)
    else:
        plan = planning.plan(prepared.limits, connections, backend=cfg.backend, fd_limit=prepared.plan.fd_limit,
                             processes=prepared.plan.server_processes, selector=cfg.selector,
                             workers=prepared.workers or None, worker_fd_limit=prepared.worker_fd_limit,
                             tls=cfg.tls, reserve=cfg.memory_reserve)
    return replace(prepared, config=cfg, plan=plan)
