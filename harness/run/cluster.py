"""Starting and stopping a Locust master and its workers as separate processes.

The harness never imports locust (it monkey-patches the whole process with gevent); it runs
`locust -f scenarios/locustfile.py` as a master and one `locust --worker --processes W`, which
imports everything once and forks the W workers (Locust freezes the GC first, so the workers share
the imported modules: ~7 MB of private memory each instead of ~35 MB as separate processes, which
is ~1.4 KB per connection at a million). Every process is started without a shell and ends with
the harness (PR_SET_PDEATHSIG; the forked workers set it on themselves at init, see
`scenarios.locustfile`), and is stopped by PID: SIGTERM, a grace period, then SIGKILL.

The workers are children of Locust's worker parent, not of the harness, so a worker that dies is
noticed by its pid disappearing; its wait status is read from /proc while it is a zombie (its
parent reaps the workers in order), and is None when that moment was missed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from harness.core.addresses import join_host_port
from harness.system import procctl

LOCUSTFILE = Path(__file__).resolve().parents[2] / "scenarios" / "locustfile.py"
LOCUST = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE)]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _prepare_child(nice: int, parent: int, netns: str | None = None, load: bool = False) -> None:
    procctl.die_with_parent(signal.SIGTERM, parent)
    if netns:
        procctl.enter_netns(netns)  # needs CAP_SYS_ADMIN: before it is dropped
    if load:  # the workers are load: fs.file-max binds them as it binds anyone's (the master keeps it)
        procctl.drop_capability(procctl.CAP_SYS_ADMIN)
    if nice:
        procctl.lower_priority(nice)  # the forked workers inherit it


@dataclass
class WorkerGroup:
    """One `locust --worker --processes count` forker and its workers, on a test host or here."""

    count: int
    netns: str | None = None  # the test host it runs in (None: this machine's own namespace)
    args: list[str] = field(default_factory=list)  # added to the cluster's worker_args (its addresses)

    @property
    def name(self) -> str:
        return f"workers@{self.netns}" if self.netns else "workers"


@dataclass
class LocustCluster:
    """A master (web UI or headless) and `workers` workers against tcp://host:port; the workers
    are one forker here, or one per test host (`groups`), all joining the master at
    master_host:master_port as workers on other machines would."""

    host: str
    port: int
    workers: int
    master_args: list[str] = field(default_factory=list)
    worker_args: list[str] = field(default_factory=list)
    log_dir: Path | None = None
    master_port: int = 0
    master_host: str = "127.0.0.1"
    groups: list[WorkerGroup] = field(default_factory=list)  # default: one group of `workers` here
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)  # "master", "workers" (the forkers)
    worker_pids: list[int] = field(default_factory=list)  # the forked workers, in fork order
    worker_nice: int = 0  # added to the workers' nice value (the master keeps the harness's)
    host_of: dict[int, str] = field(default_factory=dict)  # forked worker pid -> its test host ("" here)
    _gone: dict[int, int | None] = field(default_factory=dict)  # worker pid -> wait status, once dead

    def __post_init__(self) -> None:
        if not self.groups:
            self.groups = [WorkerGroup(self.workers)]
        self.workers = sum(g.count for g in self.groups)

    def start(self) -> "LocustCluster":
        self.master_port = self.master_port or free_port(self.master_host)
        common = ["--host", f"tcp://{join_host_port(self.host, self.port)}"]
        self._spawn("master", [*LOCUST, "--master", "--master-bind-host", self.master_host,
                               "--master-bind-port", str(self.master_port), *common, *self.master_args])
        for group in self.groups:
            if group.count:
                self._spawn(group.name, [*LOCUST, "--worker", "--processes", str(group.count), "--master-host",
                                         self.master_host, "--master-port", str(self.master_port), *common,
                                         *self.worker_args, *group.args], nice=self.worker_nice, netns=group.netns)
        return self

    def _spawn(self, name: str, cmd: list[str], nice: int = 0, netns: str | None = None) -> None:
        out = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"{name}.log", "w")
        self.procs[name] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if out else None,
                                            stdin=subprocess.DEVNULL, preexec_fn=lambda me=os.getpid(): _prepare_child(nice, me, netns, load=name != "master"),
                                            start_new_session=True)  # Ctrl-C is the harness's to handle
        if out is not None:
            out.close()

    def _find_workers(self) -> None:
        """The forked workers' pids, once all of them exist (they are forked within a second)."""
        if len(self.worker_pids) == self.workers:
            return
        found: dict[int, str] = {}
        for group in self.groups:
            forker = self.procs.get(group.name)
            if forker is None or not group.count:
                continue
            try:
                children = psutil.Process(forker.pid).children()
            except psutil.NoSuchProcess:
                return
            if len(children) != group.count:
                return
            found.update((c.pid, group.netns or "") for c in children)
        self.worker_pids = sorted(found)
        self.host_of = found

    def dead(self) -> dict[str, int | None]:
        """Processes that have exited, with their exit codes: "master", "workers" (a forker),
        and "worker pid N" for each forked worker (None where its status could not be read)."""
        out: dict[str, int | None] = {name: p.returncode for name, p in self.procs.items() if p.poll() is not None}
        self._find_workers()
        for pid in self.worker_pids:
            if pid not in self._gone:
                status = _exit_status(pid)
                if status is not False:
                    self._gone[pid] = status
        out.update({f"worker pid {pid}": status for pid, status in self._gone.items()})
        return out

    def pid_of(self, name: str) -> int:
        """The pid behind a name that `dead()` returns."""
        if name.startswith("worker pid "):
            return int(name.rsplit(" ", 1)[1])
        return self.procs[name].pid

    def wait_master(self, timeout: float | None = None) -> int | None:
        try:
            return self.procs["master"].wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the workers, their forker and the master; wait up to `grace` s; SIGKILL the rest."""
        self._find_workers()
        pids = [pid for pid in self.worker_pids if _exit_status(pid) is False]
        for pid in pids:
            procctl.send_signal(pid, signal.SIGTERM)
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in self.procs.values():
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for pid in pids:  # orphaned if the forker was killed first; they die with it (PDEATHSIG)
            while _exit_status(pid) is False and time.monotonic() < deadline:
                time.sleep(0.05)
            if _exit_status(pid) is False:  # still this worker: a gone pid may be another process's by now
                procctl.send_signal(pid, signal.SIGKILL)

    def pids(self) -> list[int]:
        self._find_workers()
        return [p.pid for p in self.procs.values()] + self.worker_pids


def _exit_status(pid: int) -> int | None | bool:
    """False while `pid` runs; its wait status (as an exit code: -9 for SIGKILL) while it is a
    zombie; None once it is gone (reaped by its parent before we looked)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    if fields[0] != b"Z":  # field 3, the state
        return False
    return os.waitstatus_to_exitcode(int(fields[49]))  # field 52, exit_code: the wait status

