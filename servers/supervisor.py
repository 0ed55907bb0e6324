"""Runs a backend as K server processes on one port, and stops them all.

Share modes (`ServerConfig.share`):
- reuseport: every process binds and listens on the port itself with SO_REUSEPORT; the kernel
  spreads new connections over the listeners by hash of the 4-tuple.
- fork: the supervisor binds and listens once; K forked children accept from that one socket.
- handoff: one forked acceptor accepts and passes each fd to K workers over Unix sockets
  (SCM_RIGHTS, see `servers.handoff`).

Every server process is forked, sets its own soft RLIMIT_NOFILE, asks the kernel to SIGTERM it if
the supervisor dies (so nothing is orphaned even by kill -9), closes every fd it inherited but
does not need, and reports through its slot of the gauge board. The supervisor waits until all
slots say "serving" and a real connect-and-echo succeeds, with a deadline, before it says ready.
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import socket
import ssl
import sys
import tempfile
import time
import traceback

from harness.core.backends import (
    MEMORY_RESERVE_BYTES,
    SELECTORS,
    SERVER_PROCESS_BYTES,
    SHARE_MODES,
    ServerConfig,
)
from harness.core.refusal import Refused
from harness.system import procctl
from harness.system.wire import EchoError, echo_once
from servers import registry
from servers.contract import ServeContext
from servers.gauges import ROLE_ACCEPTOR, SERVING, STARTING, GaugeBoard

START_DEADLINE_S = 15.0
READY_PAYLOAD = b"HARNESS-READY-0123456789"  # the same after --upper: readiness is transform-blind
STOP_GRACE_S = 5.0


class ConfigError(Refused, ValueError):
    """Bad server configuration; the message names the problem and the fix."""


class StartError(RuntimeError):
    """The server processes did not come up; the message says why, with their last log line."""


def default_fd_limit() -> int:
    """The hard limit (or fs.nr_open where the hard limit is unlimited)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read())
    return hard


def validate(config: ServerConfig) -> None:
    registry.get(config.backend)  # raises UnknownBackend
    if config.share not in SHARE_MODES:
        raise ConfigError(f"unknown share mode {config.share!r}; choose one of: {', '.join(SHARE_MODES)}")
    if config.selector not in SELECTORS:
        raise ConfigError(f"unknown selector {config.selector!r}; choose one of: {', '.join(SELECTORS)}")
    if config.upper and config.backend != "threaded":
        raise ConfigError("--upper is a transform of the threaded backend only; use `harness serve threaded --upper`")
    if config.processes < 1:
        raise ConfigError(f"--processes {config.processes} must be at least 1")
    error = procctl.processes_error(config.processes, SERVER_PROCESS_BYTES, MEMORY_RESERVE_BYTES)
    if error:
        raise ConfigError(error)
    if not 0 <= config.port <= 65535:
        raise ConfigError(f"port {config.port} is not a TCP port; use 0-65535 (0 picks a free one)")
    if config.fd_limit is not None:
        try:
            procctl.check_fd_limit(config.fd_limit)
        except procctl.FdLimitError as exc:
            raise ConfigError(str(exc)) from None


def _bind(host: str, port: int, reuseport: bool) -> socket.socket:
    """The listening socket on `host` (an IPv4 or IPv6 address; an IPv6 one takes only IPv6)."""
    v6 = ":" in host
    sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_STREAM)
    if v6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} on {host} is already in use; choose another --port "
                              f"or stop the process that holds it (ss -ltnp 'sport = :{port}')") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise ConfigError(f"cannot bind {host}: no such local address; use 127.0.0.1 or ::1") from None
        raise
    return sock


class ServerGroup:
    """K running server processes on one port. Use as a context manager, or call stop()."""

    def __init__(self, config: ServerConfig, gauges_path: str | None = None,
                 log_file: str | None = None) -> None:
        """`log_file`: where the server processes' stderr goes (default: inherited)."""
        validate(config)
        self.config = config
        self.log_file = log_file
        self.fd_limit = config.fd_limit or default_fd_limit()
        self._own_gauges = gauges_path is None
        if gauges_path is None:
            fd, gauges_path = tempfile.mkstemp(prefix="harness-gauges-", dir=_shm_dir())
            os.close(fd)
        self.gauges_path = gauges_path
        self.handoff = config.share == "handoff"
        self.board = GaugeBoard.create(gauges_path, config.processes + (1 if self.handoff else 0))
        self.pids: dict[int, int] = {}  # slot index -> pid
        self.exited: dict[int, int] = {}  # slot index -> wait status
        self.port = config.port

    # -- starting --------------------------------------------------------------------------
    def start(self) -> "ServerGroup":
        try:
            # In a test host, the sockets are made and the processes forked inside its namespace,
            # and the readiness echo goes there too; the supervisor itself comes back out.
            with procctl.in_netns(self.config.netns):
                self._start()
                self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        cfg = self.config
        # The port is checked without SO_REUSEPORT first: with it, bind would silently join
        # another process's group on that port instead of failing.
        probe = _bind(cfg.host, cfg.port, reuseport=False)
        self.port = probe.getsockname()[1]
        if cfg.share == "reuseport":
            probe.close()
            reservation = _bind(cfg.host, self.port, reuseport=True)  # holds the port; never listens
            for i in range(cfg.processes):
                self._fork(i, [reservation], lambda: self._listen_reuseport())
            self._reservation = reservation
            return
        probe.listen(cfg.backlog)
        if cfg.share == "fork":
            for i in range(cfg.processes):
                self._fork(i, [probe], lambda p=probe: p, siblings=True, keep=[probe])
            probe.close()
            return
        pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(cfg.processes)]
        every = [probe] + [s for pair in pairs for s in pair]
        for i, (mine, theirs) in enumerate(pairs):
            self._fork(i, every, lambda s=theirs: s, handoff=True, keep=[theirs])
        acceptor = cfg.processes
        self._fork(acceptor, every, lambda: probe, acceptor={i: pair[0] for i, pair in enumerate(pairs)},
                   keep=[probe] + [pair[0] for pair in pairs])
        for s in every:
            s.close()

    def _listen_reuseport(self) -> socket.socket:
        sock = _bind(self.config.host, self.port, reuseport=True)
        sock.listen(self.config.backlog)
        return sock

    def _fork(self, index, inherited, make_source, *, siblings=False, handoff=False,
              acceptor=None, keep=()) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        parent = os.getpid()
        pid = os.fork()
        if pid:
            self.pids[index] = pid
            return
        code = 1
        try:
            # First of all: the supervisor may die while it is still forking. Its own Python handlers
            # (a foreground supervisor's Ctrl-C and SIGTERM) must not catch the SIGTERM that then
            # comes, or a child still starting would note it and go on serving, orphaned: SIGTERM
            # kills until the backend installs its own stop handler.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's to handle
            procctl.die_with_parent(signal.SIGTERM, parent)
            code = self._child(index, inherited, make_source, siblings, handoff, acceptor, keep)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def _child(self, index, inherited, make_source, siblings, handoff, acceptor, keep) -> int:
        procctl.drop_capability(procctl.CAP_SYS_ADMIN)  # fs.file-max binds a server as it binds anyone's
        if self.config.nice:
            procctl.lower_priority(self.config.nice)
        if self.log_file:
            fd = os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 2)
            os.close(fd)
        for s in inherited:
            if s not in keep:
                s.close()
        procctl.close_fds_except({s.fileno() for s in keep})
        # The inherited mapping's own fd is gone now: map the board afresh (one fd, held from here).
        # The old object stays referenced: freeing it would close its fd number, now reused.
        self._inherited_board, self.board = self.board, GaugeBoard.open(self.gauges_path, writable=True)
        procctl.set_fd_limit(self.fd_limit)
        slot = self.board.slot(index)
        slot.set(pid=os.getpid(), index=index, port=self.port, state=STARTING,
                 role=ROLE_ACCEPTOR if acceptor is not None else 0)
        source = make_source()
        room = None
        if siblings:
            others = [j for j in range(self.config.processes) if j != index]
            room = lambda: any(_has_room(self.board.read(j)) for j in others)
        ctx = ServeContext(self.config, source, slot, handoff=handoff, siblings_have_room=room)
        if acceptor is not None:
            from servers.handoff import run_acceptor
            run_acceptor(ctx, acceptor, self.board)
        else:
            registry.load(self.config.backend).serve(ctx)
        return 0

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_DEADLINE_S
        while True:
            self.reap()
            if self.exited:
                index, status = next(iter(self.exited.items()))
                raise StartError(f"server process {index} exited during start-up "
                                 f"({procctl.describe_exit(status)}){self._log_tail()}")
            if all(g["state"] == SERVING for g in self.board.read_all()):
                break
            if time.monotonic() > deadline:
                raise StartError(f"server processes not ready after {START_DEADLINE_S:.0f} s{self._log_tail()}")
            time.sleep(0.02)
        try:
            echo_once(self.config.host, self.port, READY_PAYLOAD, timeout=max(1.0, deadline - time.monotonic()),
                      tls=self._readiness_tls())
        except (OSError, EchoError) as exc:
            raise StartError(f"the servers on port {self.port} did not answer an echo ({exc}){self._log_tail()}") from None
        reservation = getattr(self, "_reservation", None)
        if reservation is not None:
            reservation.close()
            self._reservation = None

    def _readiness_tls(self) -> ssl.SSLContext | None:
        """The readiness echo's TLS: trusting exactly the servers' own certificate."""
        if not self.config.tls_cert:
            return None
        context = ssl.create_default_context(cafile=self.config.tls_cert)
        context.check_hostname = False  # our own certificate, whatever names it carries
        return context

    def _log_tail(self) -> str:
        """'; its error: LAST LOG LINE (all of it in LOG)', or where the error went."""
        if not self.log_file:
            return "; its error is printed above"
        try:
            with open(self.log_file, errors="replace") as f:
                lines = [line.strip() for line in f if line.strip()]
        except OSError:
            lines = []
        last = lines[-1] if lines else "nothing was logged"
        return f"; its error: {last[:300]} (all of it in {self.log_file})"

    # -- running and stopping --------------------------------------------------------------
    def reap(self) -> dict[int, int]:
        """Collect processes that exited; returns the newly exited ones (slot index -> status)."""
        new = {}
        for index, pid in list(self.pids.items()):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                del self.pids[index]
                self.exited[index] = new[index] = status
        return new

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """SIGTERM every server process, wait up to `grace` s, then SIGKILL what is left."""
        for pid in self.pids.values():
            procctl.send_signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.pids and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.01)
        for pid in self.pids.values():
            procctl.send_signal(pid, signal.SIGKILL)
        while self.pids:
            self.reap()
            time.sleep(0.01)
        reservation = getattr(self, "_reservation", None)
        if reservation is not None:
            reservation.close()
        if self._own_gauges:
            try:
                os.unlink(self.gauges_path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> "ServerGroup":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _has_room(g: dict[str, int]) -> bool:
    return g["state"] == SERVING and g["open"] < g["cap"] - 1


def _shm_dir() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
