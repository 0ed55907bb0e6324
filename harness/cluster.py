"""Starting and stopping a Locust master and its workers as separate processes.

The harness never imports locust (it monkey-patches the whole process with gevent); it runs
`locust -f scenarios/locustfile.py` as a master and W workers. Each is started without a shell,
asks the kernel to end it if the harness dies (PR_SET_PDEATHSIG), and is stopped by PID: SIGTERM,
a grace period, then SIGKILL.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from servers import proc

LOCUSTFILE = Path(__file__).resolve().parent.parent / "scenarios" / "locustfile.py"
LOCUST = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE)]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    proc.die_with_parent(signal.SIGTERM)


@dataclass
class LocustCluster:
    """A master (web UI or headless) and `workers` workers against tcp://host:port."""

    host: str
    port: int
    workers: int
    master_args: list[str] = field(default_factory=list)
    worker_args: list[str] = field(default_factory=list)
    log_dir: Path | None = None
    master_port: int = 0
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self) -> "LocustCluster":
        self.master_port = self.master_port or free_port()
        common = ["--host", f"tcp://{self.host}:{self.port}"]
        self._spawn("master", [*LOCUST, "--master", "--master-bind-host", "127.0.0.1",
                               "--master-bind-port", str(self.master_port), *common, *self.master_args])
        for i in range(self.workers):
            self._spawn(f"worker{i}", [*LOCUST, "--worker", "--master-host", "127.0.0.1",
                                       "--master-port", str(self.master_port), *common, *self.worker_args])
        return self

    def _spawn(self, name: str, cmd: list[str]) -> None:
        out = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"{name}.log", "w")
        self.procs[name] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if out else None,
                                            stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,
                                            start_new_session=True)  # Ctrl-C is the harness's to handle
        if out is not None:
            out.close()

    def dead(self) -> dict[str, int]:
        """Processes that have exited, with their exit codes."""
        return {name: p.returncode for name, p in self.procs.items() if p.poll() is not None}

    def wait_master(self, timeout: float | None = None) -> int | None:
        try:
            return self.procs["master"].wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the workers and the master, wait up to `grace` s, SIGKILL what is left."""
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

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs.values()]

