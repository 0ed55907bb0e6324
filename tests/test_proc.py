"""servers.proc: what a forked server process does to the fds and objects it inherits, and the
kernel's counts read through ss."""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys

from harness.system import cgroups, procctl, ss
from tests.helpers import ROOT


def test_inherited_garbage_never_closes_an_fd_the_child_reuses():
    # A socket left in an uncollected cycle by the parent, as a test suite leaves many.
    gc.collect()
    gc.disable()
    try:
        garbage = socket.socket()
        number = garbage.fileno()
        cycle = [garbage]
        cycle.append(cycle)
        del garbage, cycle
        pid = os.fork()
        if pid == 0:
            code = 3
            try:
                procctl.close_fds_except(set())
                mine = [os.open("/dev/null", os.O_RDONLY)]
                while mine[-1] < number:  # the child's own fds take the freed numbers, as a server's do
                    mine.append(os.open("/dev/null", os.O_RDONLY))
                gc.enable()
                gc.collect()  # without the freeze, this frees the inherited socket, which closes `number`
                os.fstat(number)
                code = 0
            except OSError:
                code = 1
            finally:
                os._exit(code)
    finally:
        gc.enable()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "a collected parent object closed the child's fd"
    gc.collect()


def test_a_count_survives_a_ctrl_c_to_the_harness_and_counts_the_kernels_sockets(tmp_path, monkeypatch):
    """ss runs in a session of its own, so a Ctrl-C to the harness's group does not reach it; one
    that came in the instant before its setsid kills it, and it runs once more. Here an ss that
    kills itself with SIGINT the first time stands for that one; the second is the real ss."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    accepted = [listener.accept()[0] for _ in clients]
    try:
        fake = tmp_path / "ss"
        fake.write_text(f"#!/bin/sh\nif [ ! -e {tmp_path}/once ]; then touch {tmp_path}/once; kill -INT $$; fi\n"
                        f"ps -o sid= -p $$ > {tmp_path}/sid\n"
                        f'exec {shutil.which("ss")} "$@"\n')
        fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
        monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
        assert ss.established_on_port(port) == 3
        assert (tmp_path / "once").exists()  # the first ss was killed by the signal
        assert int((tmp_path / "sid").read_text()) != os.getsid(0)  # the second ran in a session of its own
    finally:
        for s in clients + accepted + [listener]:
            s.close()


def test_a_process_in_a_memory_cgroup_has_the_cgroups_room_as_its_memory_available(memory_cgroup):
    """A limit of 300 MiB on the cgroup a process runs in: its memory available is what the limit
    leaves (less than this machine's MemAvailable), read from the cgroup the kernel has it in."""
    cgroup = memory_cgroup(300 << 20)

    def join_cgroup() -> None:
        with open(f"{cgroup}/cgroup.procs", "w") as f:
            f.write(str(os.getpid()))

    code = ("import json; from harness.system import cgroups, limits; "
            "print(json.dumps([cgroups.memory_room(), limits.memory_available(), limits.read_limits()['mem_available']]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30,
                         preexec_fn=join_cgroup, check=True)
    room, available, planned = json.loads(out.stdout)
    assert room["path"] == cgroup and room["limit"] == 300 << 20 and 0 < room["used"] < 300 << 20
    # read one after another: the room moves by what the process itself did between the readings
    assert 0 < room["room"] <= 300 << 20 and 0 < available <= 300 << 20 and 0 < planned <= 300 << 20
    assert abs(available - room["room"]) < 1 << 20 and abs(planned - room["room"]) < 1 << 20
    assert cgroups.memory_room() is None or cgroups.memory_room()["path"] != cgroup  # this process is not in it


def test_the_oom_log_names_the_process_the_oom_killer_ended_and_no_other(memory_cgroup):
    """A process that outgrows a 32 MiB cgroup is ended by the OOM killer: the log of a run begun
    before names its pid, not this process's nor a kill from before it began."""
    from harness.system.oomlog import OomLog

    cgroup = memory_cgroup(32 << 20)

    def join_cgroup() -> None:
        with open(f"{cgroup}/cgroup.procs", "w") as f:
            f.write(str(os.getpid()))

    log = OomLog()
    try:
        assert log.exact  # root here: the kernel's log is readable
        hog = subprocess.Popen([sys.executable, "-c", "b = bytearray(256 << 20)"], preexec_fn=join_cgroup)
        assert hog.wait(60) == -signal.SIGKILL
        later = OomLog()  # begun after the kill: not its
        try:
            assert later.exact and not later.killed(hog.pid)
        finally:
            later.close()
        # another test's kills may come too; each by its own pid
        assert log.killed(hog.pid) and not log.killed(os.getpid())
    finally:
        log.close()
