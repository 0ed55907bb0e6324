"""Shared test helpers: a server group run as a real subprocess, and plain blocking clients."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from harness.core import words
from harness.core.addresses import split_host_port
from harness.system import wire
from harness.system.procctl import die_with_parent
from servers.gauges import ROLE_ACCEPTOR, GaugeBoard

ROOT = Path(__file__).resolve().parent.parent


class ServerProcess:
    """`python -m servers ...` on port 0, with its gauge file in a temporary directory."""

    def __init__(self, tmp_path: Path, backend: str, *args: str, processes: int = 1,
                 share: str = "reuseport", fd_limit: int | None = None, preexec_fn=None) -> None:
        self.gauge_file = tmp_path / f"gauges-{backend}-{share}-{time.monotonic_ns()}"
        cmd = [sys.executable, "-m", "servers", backend, "--port", "0", "--processes", str(processes),
               "--share", share, "--gauges", str(self.gauge_file), "--interval", "3600", *args]
        if fd_limit is not None:
            cmd += ["--fd-limit", str(fd_limit)]
        self.stderr_path = tmp_path / f"stderr-{time.monotonic_ns()}"
        self.stderr = open(self.stderr_path, "w+")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
                                     preexec_fn=preexec_fn)
        line = self.proc.stdout.readline()
        if not line.startswith("listening on"):
            self.proc.wait(5)
            raise RuntimeError(f"server did not start: {line!r}\n{self.stderr_text()}")
        self.port = int(line.split()[2].rsplit(":", 1)[1])
        self.board = GaugeBoard.open(str(self.gauge_file))

    def stderr_text(self) -> str:
        self.stderr.flush()
        return self.stderr_path.read_text()

    def gauges(self) -> list[dict]:
        return self.board.read_all()

    def servers(self) -> list[dict]:
        return [g for g in self.gauges() if g["role"] != ROLE_ACCEPTOR]

    def pids(self) -> list[int]:
        return [g["pid"] for g in self.gauges()]

    def wait_gauges(self, predicate, timeout: float = 3.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            rows = self.servers()
            if predicate(rows) or time.monotonic() > deadline:
                return rows
            time.sleep(0.05)

    def cpu_seconds(self) -> float:
        total = 0.0
        for pid in self.pids():
            try:
                t = psutil.Process(pid).cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            for pid in self.pids():  # never leave a server process behind, even when a test fails
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            self.stderr.close()


def connect(port: int, timeout: float = 2.0, host: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    """`size` bytes, or fewer if the server closes first: the test compares them with what it sent."""
    try:
        return wire.recv_exactly(sock, size)
    except words.ShortRead as short:
        return short.data


def echo(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    return recv_exactly(sock, len(payload))


def answered_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed or reset this connection, or None if it stayed open."""
    sock.settimeout(seconds)
    start = time.monotonic()
    try:
        data = sock.recv(1)
    except (ConnectionResetError, BrokenPipeError):
        return time.monotonic() - start
    except socket.timeout:
        return None
    return time.monotonic() - start if data == b"" else None


def served_or_answered(sock: socket.socket, seconds: float = 1.0) -> bool:
    """True if, within `seconds`, the server either echoed a byte or closed the connection;
    False if it left the client hanging."""
    try:
        sock.sendall(b"?")
    except (ConnectionResetError, BrokenPipeError):
        return True
    sock.settimeout(seconds)
    try:
        return sock.recv(1) in (b"?", b"")
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def process_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_until(predicate, timeout: float, what: str, every: float = 0.02):
    """Poll `predicate` every `every` s until it returns something true, and return that; fail
    naming `what` at the deadline. The way tests wait for a process or a gauge instead of sleeping
    a guess (poll a web UI gently: it serves its page too)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:g} s")
        time.sleep(every)


def wait_status(directory: Path, predicate, timeout: float = 60, pattern: str = "*/status.json") -> dict:
    """The first status file (a Locust master's gauges, rewritten every second) under `directory`
    that satisfies `predicate`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in directory.glob(pattern):
            try:
                status = json.loads(path.read_text())
            except ValueError:  # caught between the master's write and rename
                continue
            if predicate(status):
                return status
        time.sleep(0.1)
    raise AssertionError("the run never reached the expected state")


def assert_gone(pids, within: float = 5.0, what: str = "a process of the run outlived it") -> None:
    """Every process in `pids` exits within `within` s (waited for by condition, not by time)."""
    wait_until(lambda: not any(process_alive(p) for p in pids), within, what)


# -- servers the harness does not start, and runs against them ---------------------------------
HARNESS_RUN = [sys.executable, "-m", "harness.cli", "run"]
QUICK = ["--workers", "1", "--hold", "1", "--echo-timeout", "3", "--echo-interval", "60"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Outside:
    """A server process the harness does not start: started here, stopped in `stop` whatever happened.
    Its output goes to a file (a pipe nobody reads would stop a server that logs each client)."""

    def __init__(self, cmd: list[str], port: int | None = None, prlimit_nofile: int | None = None) -> None:
        if prlimit_nofile:
            cmd = ["prlimit", f"--nofile={prlimit_nofile}:{prlimit_nofile}", *cmd]
        self.log = tempfile.NamedTemporaryFile(prefix="outside-", suffix=".log", delete=False)
        # It dies with this test process even if pytest itself is killed (PR_SET_PDEATHSIG survives exec).
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True, preexec_fn=die_with_parent)
        if port is None:  # it says where it listens
            line = wait_until(lambda: self._said("listening on") or self.proc.poll() is not None and "exited", 10,
                              f"{cmd[0]} saying where it listens")
            assert line.startswith("listening on"), self.output()
            host, port = split_host_port(line.split()[2], "listening on")
        else:
            host = "127.0.0.1"
        self.host, self.port = host, port
        wait_until(lambda: _accepts(host, port), 10, f"{cmd[0]} listening on {port}")

    def _said(self, start: str) -> str | None:
        return next((line for line in self.output().splitlines() if line.startswith(start)), None)

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        finally:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
            self.log.close()
            Path(self.log.name).unlink(missing_ok=True)  # stopped twice: by the test, then its fixture


def _accepts(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def target_run(tmp_path: Path, port: int, *args: str, timeout: float = 150) -> tuple[int, dict, str]:
    result = subprocess.run([*HARNESS_RUN, "--target", f"127.0.0.1:{port}", *QUICK, "--out", str(tmp_path), "--json",
                             *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout), result.stderr


def within_1_percent(measured: int, predicted: int) -> bool:
    return abs(measured - predicted) <= 0.01 * predicted
