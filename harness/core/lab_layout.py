"""The address plan of the test hosts, pure: which names and addresses a lab of N hosts gets.

Every address comes from 198.18.0.0/15, the block RFC 2544 sets aside for network benchmarks, and
nothing outside it is ever assigned or loaded. The /15 is cut into LABS labs of one /19 each, so
two labs (two runs, or two tests in parallel) never share a subnet: lab L's bridge (the machine
itself, where the Locust master listens) is the first address of its /19, and host i of the lab
(1-based) owns the i-th /24 after it, addresses .1, .2, ... as the plan needs source addresses.

The hosts are dual-stack: each IPv4 address has an IPv6 twin in 2001:2::/48, the block RFC 5180 sets
aside for IPv6 benchmarks (and nothing else): lab L is the /64 2001:2:0:L::/64, its bridge ::1, and
address k of host i is ::i:(k+1) (`v6_of`), so a run with --ipv6 loads the same hosts over IPv6.

Names: the lab's prefix (a few letters) names everything it makes: namespaces and host-side
veths `PREFIX-i`, the bridge `PREFIX-br`; inside each namespace the host's end is `eth0`.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass, field

from harness.core.refusal import Refused

TEST_NET = ipaddress.ip_network("198.18.0.0/15")
TEST_NET6 = ipaddress.ip_network("2001:2::/48")
LAB_PREFIXLEN6 = 64
LAB_PREFIXLEN = 19
LABS = 2 ** (LAB_PREFIXLEN - TEST_NET.prefixlen)  # 16 labs of 8,192 addresses
HOSTS_PER_LAB = 2 ** (24 - LAB_PREFIXLEN) - 1  # the /24s of a lab after the bridge's
ADDRESSES_PER_HOST = 253
PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")  # PREFIX-br and PREFIX-31 fit IFNAMSIZ (15)
# Each host's own ephemeral range and accept backlog: a host is a load generator or a server, and
# needs nothing else of the range (its own sysctls, not the machine's).
HOST_PORT_RANGE = (1024, 65535)
HOST_SOMAXCONN = 65535


class LayoutError(Refused, ValueError):
    """A lab that cannot be laid out; the message names the flag and the fix."""


def check_prefix(prefix: str) -> None:
    if not PREFIX_RE.match(prefix):
        raise LayoutError(f"--prefix {prefix!r} must be 1-8 lowercase letters and digits, starting with a letter "
                          "(it names namespaces and links)")


def check_count(count: int) -> None:
    if not 1 <= count <= HOSTS_PER_LAB:
        raise LayoutError(f"{count} hosts: a lab holds 1 to {HOSTS_PER_LAB}; use fewer hosts")


def is_test_address(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return ip in (TEST_NET if ip.version == 4 else TEST_NET6)


def lab_network6(lab: int) -> ipaddress.IPv6Network:
    lab_network(lab)  # the same labs, the same bounds
    return ipaddress.ip_network(f"2001:2:0:{lab:x}::/{LAB_PREFIXLEN6}")


def v6_of(address: str) -> str:
    """The IPv6 twin of a lab's IPv4 address (its bridge's, or a host's)."""
    ip = ipaddress.ip_address(address)
    if ip.version == 6:
        return address
    lab = next((n for n in range(LABS) if ip in lab_network(n)), None)
    if lab is None:
        raise LayoutError(f"{address} is not a test host's address (198.18.0.0/15)")
    offset = int(ip) - int(lab_network(lab).network_address)
    if offset == 1:  # the bridge
        return str(lab_network6(lab).network_address + 1)
    host, k = divmod(offset - 1, 256)
    return str(lab_network6(lab).network_address + (host << 16) + k + 1)


def lab_network(lab: int) -> ipaddress.IPv4Network:
    if not 0 <= lab < LABS:
        raise LayoutError(f"lab {lab} is outside 0-{LABS - 1}")
    return list(TEST_NET.subnets(new_prefix=LAB_PREFIXLEN))[lab]


def bridge_address(lab: int) -> str:
    return str(lab_network(lab).network_address + 1)


def host_address(lab: int, host: int, k: int) -> str:
    """Address k (0-based) of host `host` (1-based) of lab `lab`."""
    if not 1 <= host <= HOSTS_PER_LAB:
        raise LayoutError(f"host {host} is outside 1-{HOSTS_PER_LAB}")
    if not 0 <= k < ADDRESSES_PER_HOST:
        raise LayoutError(f"a host holds at most {ADDRESSES_PER_HOST} addresses; use more hosts")
    return str(lab_network(lab).network_address + host * 256 + k + 1)


def host_name(prefix: str, host: int) -> str:
    return f"{prefix}-{host}"


def bridge_name(prefix: str) -> str:
    return f"{prefix}-br"


@dataclass
class Host:
    name: str  # the namespace, and the host-side veth
    index: int
    addresses: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return self.addresses[0]


@dataclass
class Lab:
    prefix: str
    lab: int
    hosts: list[Host] = field(default_factory=list)
    owner: int = 0  # the pid of the process that made it (a run's lab goes with the run)

    @property
    def bridge(self) -> str:
        return bridge_name(self.prefix)

    @property
    def bridge_address(self) -> str:
        return bridge_address(self.lab)

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise LayoutError(f"no test host {name!r}; the hosts up are "
                          f"{', '.join(h.name for h in self.hosts) or 'none'} (harness hosts up N)")

    def as_dict(self) -> dict:
        return {"prefix": self.prefix, "lab": self.lab, "owner": self.owner, "bridge": self.bridge,
                "bridge_address": self.bridge_address,
                "hosts": [{"name": h.name, "index": h.index, "addresses": h.addresses} for h in self.hosts]}

    @classmethod
    def from_dict(cls, d: dict) -> "Lab":
        return cls(d["prefix"], d["lab"], [Host(h["name"], h["index"], list(h["addresses"])) for h in d["hosts"]],
                   d.get("owner", 0))


def addresses_needed(connections: int, per_address: int) -> int:
    """Source addresses one client host needs for `connections` to one destination."""
    return max(1, math.ceil(connections / per_address))


def per_address(port_range: tuple[int, int] = HOST_PORT_RANGE) -> int:
    """Connections to plan per (source address, destination) on a host: the plan's own rule
    (`harness.plan.core.per_source_address`) under the host's ephemeral range."""
    from harness.core.planning import per_source_address

    return per_source_address({"ip_local_port_range": list(port_range)})


def split(total: int, parts: int) -> list[int]:
    """`total` split over `parts` as evenly as Locust splits users (differing by at most one)."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


# What a --link-down fault does next, from where it is: the link goes down halfway through the
# hold's time left around the outage, comes up `down` seconds later, and its cost is counted until
# a quarter of that time after (at least half a second), before the hold ends and teardown's resets.
LINK_DOWN, LINK_UP, LINK_COUNTED = "down", "up", "counted"


def link_action(now: float, hold_started: float, hold: float, down: float, phase: str,
                down_at: float | None, up_at: float | None) -> str | None:
    """The next step of a link-down fault at `now` (`down_at`/`up_at`: when those steps were taken)."""
    if up_at is not None:
        return LINK_COUNTED if now >= up_at + max(0.5, (hold - down) / 4) or phase != "hold" else None
    if down_at is None:
        return LINK_DOWN if phase == "hold" and now >= hold_started + max(0.0, (hold - down) / 2) else None
    # up on time, or at once where the hold ended first (a busy machine saw it begin late): the
    # master's last words to the host's workers go through it
    return LINK_UP if now >= down_at + down or phase != "hold" else None
