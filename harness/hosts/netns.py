"""Making and removing test hosts: network namespaces joined by one bridge, with `ip`.

`up` writes what it is about to make into the lab's state file (/run/harness-hosts/PREFIX.json)
before it makes it, so `down` removes exactly what the harness made (the namespaces, links and
bridge the file names, and only those that exist) even after a crash half-way through `up`. Both
are idempotent. A run that makes its own lab also starts a reaper (`python -m
harness.hosts.reaper`), a small process that waits on a pipe only the run holds and removes the lab
when the pipe closes: the run's own `finally` removes it on every normal path, and the reaper when
the run is killed with SIGKILL.

Inside each host the loopback and `eth0` are up, its addresses are on `eth0`, and its own
`ip_local_port_range` and `somaxconn` are set (a namespace's sysctls are its own).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from harness.core import lab_layout
from harness.core.lab_layout import Host, Lab
from harness.core.refusal import Refused
from harness.system import procctl
from harness.system.files import write_json_atomic

STATE_DIR = Path(os.environ.get("HARNESS_HOSTS_STATE", "/run/harness-hosts"))
CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21  # `ip netns add` mounts, and setns() needs it
DEFAULT_PREFIX = "fdcap"


class HostsError(Refused, RuntimeError):
    """Test hosts could not be made or used; the message names the cause and the fix."""


def require_net_admin() -> None:
    """One line, not a traceback from `ip`, on a machine where this process cannot make namespaces."""
    with open("/proc/self/status") as f:
        caps = next((int(line.split()[1], 16) for line in f if line.startswith("CapEff:")), 0)
    missing = [name for name, bit in (("CAP_NET_ADMIN", CAP_NET_ADMIN), ("CAP_SYS_ADMIN", CAP_SYS_ADMIN))
               if not caps >> bit & 1]
    if missing:
        raise HostsError(f"test hosts need {' and '.join(missing)} (network namespaces, veths, a bridge); run as "
                         "root or with those capabilities")


def has_net_admin() -> bool:
    try:
        require_net_admin()
    except HostsError:
        return False
    return True


def _ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = ["ip", *(["-n", netns] if netns else []), *args]
    # its own session: a second Ctrl-C at the run's teardown must not kill `ip link del` half-way
    done = subprocess.run(cmd, capture_output=True, text=True, start_new_session=True)
    if check and done.returncode:
        raise HostsError(f"`{' '.join(cmd)}` failed: {done.stderr.strip() or done.returncode}")
    return done


def _state_path(prefix: str) -> Path:
    return STATE_DIR / f"{prefix}.json"


@contextmanager
def _locked():
    """One `up` or `down` at a time on this machine (two runs must not pick the same lab)."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(STATE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def load(prefix: str) -> Lab | None:
    try:
        return Lab.from_dict(json.loads(_state_path(prefix).read_text()))
    except FileNotFoundError:
        return None


def labs() -> list[Lab]:
    if not STATE_DIR.is_dir():
        return []
    out = []
    for path in sorted(STATE_DIR.glob("*.json")):
        try:
            out.append(Lab.from_dict(json.loads(path.read_text())))
        except (OSError, ValueError, KeyError):
            continue  # being written, or not ours
    return out


def lab_addresses() -> set[str]:
    """Every address of every test host and bridge the harness made on this machine, with their
    IPv6 twins: the only 198.18.0.0/15 and 2001:2::/48 addresses a run may load or bind (a VPN's
    fake-IP range may be 198.18/16 too)."""
    out: set[str] = set()
    for lab in labs():
        out.add(lab.bridge_address)
        for host in lab.hosts:
            out.update(host.addresses)
    return out | {lab_layout.v6_of(a) for a in out}


def _save(lab: Lab) -> None:
    write_json_atomic(_state_path(lab.prefix), lab.as_dict())


def _free_lab() -> int:
    used = {lab.lab for lab in labs()}
    assigned = _ip("-4", "-o", "addr", "show").stdout
    for index in range(lab_layout.LABS):
        net = lab_layout.lab_network(index)
        if index not in used and f" {net.network_address + 1}/" not in assigned:
            return index
    raise HostsError(f"all {lab_layout.LABS} labs of 198.18.0.0/15 are in use; remove one with harness hosts down --prefix P")


def exists(netns: str) -> bool:
    return os.path.exists(os.path.join(procctl.NETNS_DIR, netns))


def _link_exists(name: str, netns: str | None = None) -> bool:
    return _ip("link", "show", name, netns=netns, check=False).returncode == 0


def up(count: int, prefix: str = DEFAULT_PREFIX, addresses: int = 1, owner: int = 0) -> Lab:
    """Hosts PREFIX-1 .. PREFIX-count, each with at least `addresses` addresses (made where missing)."""
    lab_layout.check_prefix(prefix)
    lab_layout.check_count(count)
    require_net_admin()
    with _locked():
        lab = load(prefix)
        if lab is None:
            _refuse_foreign(prefix, count)
            lab = Lab(prefix, _free_lab(), owner=owner)
        else:
            _refuse_foreign(prefix, count, known={h.name for h in lab.hosts})
        _save(lab)  # before anything is made: down finds it even if up dies half-way
        if not _link_exists(lab.bridge):
            _ip("link", "add", lab.bridge, "type", "bridge")
            _ip("addr", "add", f"{lab.bridge_address}/{lab_layout.LAB_PREFIXLEN}", "dev", lab.bridge)
        _add_v6(lab_layout.v6_of(lab.bridge_address), lab.bridge)
        _ip("link", "set", lab.bridge, "up")
        for index in range(1, count + 1):
            name = lab_layout.host_name(prefix, index)
            host = next((h for h in lab.hosts if h.name == name), None)
            if host is None:
                host = Host(name, index)
                lab.hosts.append(host)
                _save(lab)
            _make_host(lab, host)
            _add_addresses(lab, host, addresses)
            _save(lab)
    return lab


def _refuse_foreign(prefix: str, count: int, known: set[str] | None = None) -> None:
    """Names the lab would make that exist already and are not in its state file are someone
    else's: `down` would remove them, so `up` refuses to take them over."""
    names = [lab_layout.host_name(prefix, i) for i in range(1, count + 1)]
    taken = [n for n in names if n not in (known or set()) and (exists(n) or _link_exists(n))]
    if known is None and _link_exists(lab_layout.bridge_name(prefix)):
        taken.insert(0, lab_layout.bridge_name(prefix))
    if taken:
        raise HostsError(f"{', '.join(taken)} exist(s) already and the harness did not make them; choose another "
                         "--prefix")


def _make_host(lab: Lab, host: Host) -> None:
    if not exists(host.name):
        _ip("netns", "add", host.name)
    if not _link_exists(host.name):
        _ip("link", "add", host.name, "type", "veth", "peer", "name", "eth0", "netns", host.name)
    _ip("link", "set", host.name, "master", lab.bridge, "up")
    _ip("link", "set", "lo", "up", netns=host.name)
    _ip("link", "set", "eth0", "up", netns=host.name)
    lo, hi = lab_layout.HOST_PORT_RANGE
    with procctl.in_netns(host.name):  # a namespace's own sysctls, written from inside it
        Path("/proc/sys/net/ipv4/ip_local_port_range").write_text(f"{lo} {hi}")
        Path("/proc/sys/net/core/somaxconn").write_text(str(lab_layout.HOST_SOMAXCONN))


def _add_addresses(lab: Lab, host: Host, count: int) -> None:
    for k in range(len(host.addresses), count):
        address = lab_layout.host_address(lab.lab, host.index, k)
        host.addresses.append(address)
        _save(lab)
    present = _ip("-o", "addr", "show", "dev", "eth0", netns=host.name).stdout
    for address in host.addresses:
        if f" {address}/" not in present:
            _ip("addr", "add", f"{address}/{lab_layout.LAB_PREFIXLEN}", "dev", "eth0", netns=host.name)
        if f" {lab_layout.v6_of(address)}/" not in present:
            _add_v6(lab_layout.v6_of(address), "eth0", host.name)


def _add_v6(address: str, dev: str, netns: str | None = None) -> None:
    """An IPv6 address usable at once: nodad skips duplicate address detection (a second or two of
    'tentative'), which the lab's own block does not need."""
    present = _ip("-6", "-o", "addr", "show", "dev", dev, netns=netns).stdout
    if f" {address}/" not in present:
        _ip("addr", "add", f"{address}/{lab_layout.LAB_PREFIXLEN6}", "dev", dev, "nodad", netns=netns)


def ensure_addresses(lab: Lab, name: str, count: int) -> Host:
    """Host `name` with at least `count` addresses (the plan's source addresses for it)."""
    with _locked():
        host = lab.host(name)
        _add_addresses(lab, host, count)
    return host


def down(prefix: str = DEFAULT_PREFIX, end_processes: bool = False, grace: float = 5.0) -> list[str]:
    """Remove the lab's hosts, links and bridge (only what its state file names); returns them.

    A process still inside a host would keep its namespace alive, unnamed, after `ip netns del`:
    `down` waits up to `grace` s for them to end (a run's own end with it), then names the ones
    left. `end_processes` (the reaper of a run that made the lab, where everything inside is that
    run's) sends them SIGKILL, by PID, first."""
    lab_layout.check_prefix(prefix)
    if load(prefix) is None:
        return []
    require_net_admin()
    with _locked():
        lab = load(prefix)
        if lab is None:
            return []
        removed = []
        left = _wait_empty([h.name for h in lab.hosts if exists(h.name)], grace, end_processes)
        if left:
            removed.append(f"(still running inside, left alone: {', '.join(f'{n} pids {p}' for n, p in left.items())})")
        for host in lab.hosts:
            if _link_exists(host.name):  # the veth pair goes at once (a namespace dies lazily)
                _ip("link", "del", host.name)
                removed.append(f"link {host.name}")
            if exists(host.name):
                _ip("netns", "del", host.name)
                removed.append(f"netns {host.name}")
        if _link_exists(lab.bridge):
            _ip("link", "del", lab.bridge)
            removed.append(f"bridge {lab.bridge}")
        _state_path(prefix).unlink(missing_ok=True)
    return removed


def pids_in(netns: str) -> list[int]:
    done = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True, start_new_session=True)
    return [int(p) for p in done.stdout.split()] if done.returncode == 0 else []


def _wait_empty(names: list[str], grace: float, end_processes: bool) -> dict[str, list[int]]:
    """Wait for the processes inside these hosts to end; the pids still there after `grace`."""
    if end_processes:
        for name in names:
            for pid in pids_in(name):
                procctl.send_signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + grace
    while True:
        left = {n: pids for n in names if (pids := [p for p in pids_in(n) if _running(p)])}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def sysctl_in(netns: str, name: str) -> str:
    with procctl.in_netns(netns):
        return Path("/proc/sys/" + name.replace(".", "/")).read_text().split("\n")[0].replace("\t", " ")


def status(prefix: str | None = None) -> list[dict]:
    """Each lab (or the one named): its hosts as they are now, read from the kernel."""
    out = []
    if labs():
        require_net_admin()  # reading a host's sysctls means entering it
    for lab in labs():
        if prefix and lab.prefix != prefix:
            continue
        hosts = []
        for host in lab.hosts:
            alive = exists(host.name)
            hosts.append({
                "name": host.name, "addresses": host.addresses, "namespace": alive,
                "link": _link_exists(host.name),
                "ip_local_port_range": sysctl_in(host.name, "net.ipv4.ip_local_port_range") if alive else None,
                "somaxconn": sysctl_in(host.name, "net.core.somaxconn") if alive else None,
                "processes": len(pids_in(host.name)) if alive else 0})
        out.append({**lab.as_dict(), "bridge_up": _link_exists(lab.bridge), "hosts": hosts})
    return out


class Reaper:
    """A process that removes the lab when the run that made it ends, however it ends: it waits
    on a pipe only the run holds, and EOF (the run closed it, or the kernel did as the run died)
    means `down`."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.proc = subprocess.Popen([sys.executable, "-m", "harness.hosts.reaper", prefix], stdin=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, start_new_session=True,  # Ctrl-C is the run's
                                     cwd=Path(__file__).resolve().parents[2])

    def close(self) -> None:
        """The run removes its lab itself; this ends the reaper, which finds nothing left."""
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(30)
