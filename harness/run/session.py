"""What a run holds while it runs, and the one way it lets go of it.

A `Session` enters the test hosts (a lab made for the run, or hosts made before), the servers (or
an outside target, which it only checks) and the Locust cluster in one `contextlib.ExitStack`, and
releases them once, in reverse, on every path: the run's end, a limit, Ctrl-C, SIGTERM, an error
while starting or while running. A step of the teardown that fails is noted (`teardown`) and the
next one still runs. `interruptible()` turns SIGINT and SIGTERM into a stop request the run's loop
sees, and puts the previous handlers back only when the block ends, after the results are written:
a Ctrl-C while they are written cannot cut them off. `harness run` and `harness ui` both use it.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

from harness.core.backends import ServerConfig
from harness.core.lab_layout import LayoutError
from harness.core.options import locust_args
from harness.hosts.faults import FaultError
from harness.hosts.netns import HostsError
from harness.run import hosted
from harness.run.cluster import LocustCluster
from harness.run.hosted import HostedRun
from harness.run.outside import OutsideServer, TargetError
from harness.run.prepare import Prepared, RunError
from harness.system import certs
from servers.supervisor import ConfigError, ServerGroup, StartError

# The load (servers and Locust workers) runs below the control plane (the Locust master and this
# process): with a hundred load processes on two cores, a master with an equal share falls behind
# its workers' heartbeats. At +10 the master gets ~8% of the CPU when it needs it instead of ~1%;
# under `nice -n 19` the load runs SCHED_IDLE (`procctl.lower_priority`).
LOAD_NICE = 10
# What starting a run's hosts and servers can fail with, said in one line (ip, nft or tc missing or refusing too).
START_ERRORS = (ConfigError, StartError, TargetError, hosted.HostedError, LayoutError, HostsError, FaultError,
                OSError, subprocess.SubprocessError)


@contextlib.contextmanager
def interruptible() -> Iterator[list[str]]:
    """SIGINT and SIGTERM append "interrupted" to the yielded list instead of raising; the previous
    handlers come back when the block ends."""
    stop: list[str] = []
    previous = {sig: signal.signal(sig, lambda s, f: stop.append("interrupted")) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Session:
    """The hosts, servers and Locust cluster of one run (or of one web UI and all its tests)."""

    def __init__(self, prepared: Prepared, scratch: Path) -> None:
        self.prepared = prepared
        self.scratch = scratch  # where the servers log until the run has a directory of its own
        self.teardown: list[str] = []  # what failed while letting go (the next step still ran)
        self.lab: HostedRun | None = None
        self.group: ServerGroup | OutsideServer | None = None
        self.cluster: LocustCluster | None = None
        self.tls_ca: str | None = None  # what the clients trust: --ca, or the certificate made for the run
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "Session":
        try:
            self._start_hosts_and_servers()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def _start_hosts_and_servers(self) -> None:
        prepared, cfg = self.prepared, self.prepared.config
        try:
            if prepared.hosts is not None:
                self.lab = HostedRun(prepared.hosts)
                self._release(self.lab.stop)
                self.lab.start()
            self.tls_ca = cfg.ca
            if prepared.target is not None:
                self.group = prepared.target.start()
            else:
                lab = self.lab
                config = ServerConfig(backend=cfg.backend, port=cfg.port, processes=prepared.plan.server_processes,
                                      share=cfg.share, fd_limit=prepared.plan.fd_limit, selector=cfg.selector,
                                      nice=LOAD_NICE, **self._server_tls(),
                                      host=self.host, **({"netns": lab.server.name} if lab else {}))
                self.group = ServerGroup(config, log_file=str(self.scratch / "servers.log"))
                self._release(self.group.stop)
                self.group.start()
        except START_ERRORS as exc:
            raise RunError(str(exc)) from None

    def _server_tls(self) -> dict:
        """The servers' TLS: --cert/--key, or a certificate made now for their address, which the
        clients then trust (and nothing else). Session tickets only where the run resumes sessions:
        a client keeps the tickets it gets (~13 KB a connection)."""
        cfg = self.prepared.config
        if not cfg.tls:
            return {}
        cert, key = cfg.cert, cfg.key
        if not cert:
            made = certs.self_signed(self.scratch, [self.host])
            cert, key = str(made[0]), str(made[1])
            self.tls_ca = self.tls_ca or cert
        return {"tls_cert": cert, "tls_key": key, "tls_tickets": 2 if cfg.tls_resume else 0}

    def start_cluster(self, log_dir: Path, master_args: list[str], worker_args: list[str] = ()) -> LocustCluster:
        """The Locust master and workers, started: the run's options (`harness.core.options`) under
        their own flags, the plumbing, and `master_args`/`worker_args` besides."""
        prepared, lab = self.prepared, self.lab
        values = {**prepared.locust_values(), "ca": self.tls_ca}
        plumbing = ["--test-hosts"] if lab is not None else []
        gauges = ["--server-gauges", self.group.gauges_path] if self.group.gauges_path else []
        netns = ["--server-netns", lab.server.name] if lab is not None else []
        metrics = (["--metrics-bind", prepared.config.metrics, "--predicted-cap", str(prepared.plan.predicted_cap)]
                   if prepared.config.metrics else [])
        self.cluster = LocustCluster(
            host=self.host, port=self.group.port, workers=prepared.workers, log_dir=log_dir, worker_nice=LOAD_NICE,
            master_host=lab.master_host if lab and not prepared.config.master_bind else prepared.master[0],
            master_port=prepared.master[1], groups=lab.groups() if lab else [],
            master_args=[*locust_args(values), *plumbing, *gauges, *netns, *metrics, *master_args],
            worker_args=[*locust_args(values, workers=True), *plumbing, *worker_args])
        self._release(self.cluster.stop)
        if lab is not None:
            self._release(lab.link_up)  # released first: before the cluster stops
        return self.cluster.start()

    @property
    def host(self) -> str:
        """The address the load goes to: the target's, the server host's, or loopback."""
        if self.prepared.target is not None:
            return self.prepared.target.host
        return self.lab.server_address if self.lab is not None else self.prepared.config.host

    @property
    def server_netns(self) -> str | None:
        return self.lab.server.name if self.lab is not None else None

    def _release(self, step: Callable[[], None]) -> None:
        """Let go of something on the way out, in reverse; a failure is noted, not raised."""
        def noted() -> None:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - the next step must still run
                self.teardown.append(f"{getattr(step, '__qualname__', step)}: {type(exc).__name__}: {exc}")
        self._stack.callback(noted)

