"""Faults on a test host's link, which loopback cannot show, and the TCP counters that show what
they cost.

- loss: an nftables table inside the host drops a share of the TCP packets it sends and receives
  at random (`numgen random mod 10000 < N drop`; this kernel has no netem qdisc).
- rate: a token-bucket filter (`tc qdisc ... tbf`) on both ends of the host's veth, so traffic is
  shaped in each direction.
- link down: the host-side veth set down, then up (`ip link set ... down`).
Each is removed with the host (its namespace and veth go with `harness hosts down`), and also on
its own when the run is over, for hosts the run did not make.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from harness.core.refusal import Refused
from harness.system import procctl

TABLE = "harness_faults"
LOSS_SCALE = 10_000  # numgen's modulus: loss in steps of 0.01%
RATE_RE = re.compile(r"^[1-9][0-9]*(\.[0-9]+)?(kbit|mbit|gbit)$")
TBF_BURST = "64kb"
TBF_LATENCY = "200ms"
# /proc/net/snmp Tcp and /proc/net/netstat TcpExt fields a host's results carry
TCP_FIELDS = ("ActiveOpens", "PassiveOpens", "AttemptFails", "EstabResets", "RetransSegs", "InSegs", "OutSegs",
              "OutRsts")
TCPEXT_FIELDS = ("TCPTimeouts", "TCPSynRetrans", "TCPLostRetransmit", "TCPAbortOnTimeout")


class FaultError(Refused, ValueError):
    """A fault that cannot be set; the message names the flag and the fix."""


def parse_loss(text: str) -> float:
    """'1%' or '1' -> 1.0 (percent of packets), between 0.01 and 50."""
    value = text.strip().removesuffix("%")
    try:
        percent = float(value)
    except ValueError:
        raise FaultError(f"--loss {text!r} is not a percentage; give e.g. 1%") from None
    if not 0.01 <= percent <= 50:
        raise FaultError(f"--loss {text} is out of range; use 0.01% to 50%")
    return percent


def parse_rate(text: str) -> str:
    if not RATE_RE.match(text):
        raise FaultError(f"--rate {text!r} is not a rate tc understands here; give e.g. 50mbit (kbit, mbit, gbit)")
    return text


def _run(cmd: list[str], netns: str | None = None, stdin: str | None = None) -> None:
    with procctl.in_netns(netns):
        done = subprocess.run(cmd, input=stdin, capture_output=True, text=True, start_new_session=True)
    if done.returncode:
        raise FaultError(f"`{' '.join(cmd)}` in {netns or 'this host'} failed: {done.stderr.strip()}")


def add_loss(netns: str, percent: float) -> None:
    n = round(percent * LOSS_SCALE / 100)
    rules = "\n".join(f"  chain {hook} {{ type filter hook {hook} priority 0; policy accept; "
                      f"meta l4proto tcp numgen random mod {LOSS_SCALE} < {n} counter drop; }}"
                      for hook in ("input", "output"))
    _run(["nft", "-f", "-"], netns, stdin=f"table inet {TABLE} {{\n{rules}\n}}\n")


def dropped(netns: str) -> int:
    """Packets the loss rule has dropped in this host so far."""
    with procctl.in_netns(netns):
        done = subprocess.run(["nft", "list", "table", "inet", TABLE], capture_output=True, text=True,
                              start_new_session=True)
    return sum(int(m) for m in re.findall(r"counter packets (\d+)", done.stdout)) if done.returncode == 0 else 0


def remove_loss(netns: str) -> None:
    with procctl.in_netns(netns):
        subprocess.run(["nft", "delete", "table", "inet", TABLE], capture_output=True, start_new_session=True)


def set_rate(netns: str, veth: str, rate: str) -> None:
    shape = ["root", "tbf", "rate", rate, "burst", TBF_BURST, "latency", TBF_LATENCY]
    _run(["tc", "qdisc", "replace", "dev", "eth0", *shape], netns)  # what the host sends
    _run(["tc", "qdisc", "replace", "dev", veth, *shape])  # what it receives


def clear_rate(netns: str, veth: str) -> None:
    with procctl.in_netns(netns):
        subprocess.run(["tc", "qdisc", "del", "dev", "eth0", "root"], capture_output=True, start_new_session=True)
    subprocess.run(["tc", "qdisc", "del", "dev", veth, "root"], capture_output=True, start_new_session=True)


def shaped_bytes(netns: str) -> int:
    """Bytes the host's tbf has sent (0 without one)."""
    with procctl.in_netns(netns):
        done = subprocess.run(["tc", "-s", "qdisc", "show", "dev", "eth0"], capture_output=True, text=True,
                              start_new_session=True)
    m = re.search(r"qdisc tbf .*?Sent (\d+) bytes", done.stdout, re.S)
    return int(m.group(1)) if m else 0


def set_link(veth: str, up: bool) -> None:
    _run(["ip", "link", "set", veth, "up" if up else "down"])


def tcp_counters(netns: str | None) -> dict[str, int]:
    """The host's TCP counters (its own namespace's /proc/net/snmp and netstat)."""
    with procctl.in_netns(netns):
        snmp = Path("/proc/net/snmp").read_text().splitlines()
        netstat = Path("/proc/net/netstat").read_text().splitlines()
    out: dict[str, int] = {}
    for lines, prefix, fields in ((snmp, "Tcp:", TCP_FIELDS), (netstat, "TcpExt:", TCPEXT_FIELDS)):
        rows = [line.split()[1:] for line in lines if line.startswith(prefix)]
        if len(rows) >= 2:
            values = dict(zip(rows[0], rows[1]))
            out.update({f: int(values.get(f, 0)) for f in fields})
    return out


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in after}
