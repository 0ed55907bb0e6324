"""The kernel's count of TCP sockets, through ss(8): established connections on a port or to an
address, and the local ports in use. ss walks every socket on the machine, so callers take care how
often they ask."""

from __future__ import annotations

import subprocess

from harness.core.addresses import join_host_port


def run_ss(*args: str, netns: str | None = None) -> bytes:
    """ss's output (bytes: a million lines are counted, not decoded), in the test host `netns` if
    given. It runs in a session of its own: a terminal's Ctrl-C goes to the harness's whole process
    group, and an ss killed by it mid-sample would fail the sample instead of the harness stopping
    in order. A signal sent in the instant between fork and setsid still reaches it: then it runs once more."""
    command = [*(["ip", "netns", "exec", netns] if netns else []), "ss", *args]
    done = subprocess.run(command, capture_output=True, start_new_session=True)
    if done.returncode < 0:  # killed by a signal
        done = subprocess.run(command, capture_output=True, start_new_session=True)
    if done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, command, done.stdout, done.stderr)
    return done.stdout


def local_ports_in_use(lo: int, hi: int) -> set[int]:
    """Local TCP ports in lo..hi that some socket on this machine holds, in any state (ss)."""
    out = run_ss("-Htan", f"( sport >= :{lo} and sport <= :{hi} )").decode()
    return {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines() if line.strip()}


def established_on_port(port: int, netns: str | None = None) -> int:
    """Established TCP connections whose local port is `port`, counted by the kernel (ss); in the
    test host `netns` where the server runs there."""
    return run_ss("-Htn", "state", "established", f"( sport = :{port} )", netns=netns).count(b"\n")


def established_to(host: str, port: int) -> int:
    """Established TCP connections from this machine to host:port (our side of them, ss)."""
    return run_ss("-Htn", "state", "established", "dst", join_host_port(host, port)).count(b"\n")
