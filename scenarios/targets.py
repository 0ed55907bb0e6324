"""Which targets Locust may load: loopback, the harness's own test hosts (198.18.0.0/15, when the
run made them and says so), or what the user says is theirs. No locust import here, so the rule
can be tested without monkey-patching the test process."""

from __future__ import annotations

import ipaddress

from harness.hosts.layout import is_test_address


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def is_lab_address(host: str) -> bool:
    """An address of a test host (or bridge) the harness made on this machine: in 198.18.0.0/15
    and in a lab's state file. The block alone is not enough: a VPN's fake-IP range may be
    198.18.0.0/16, and it routes those addresses to the internet."""
    if not is_test_address(host):
        return False
    from harness.hosts.netns import lab_addresses

    return host in lab_addresses()


def target_error(host: str, allow_non_loopback: bool, test_hosts: bool = False) -> str | None:
    """Why `host` may not be loaded, or None. `test_hosts`: the run loads the harness's own test
    hosts, so their addresses (and no others) are allowed besides loopback."""
    if is_loopback(host) or allow_non_loopback or (test_hosts and is_lab_address(host)):
        return None
    if test_hosts:
        return (f"target {host} is neither on loopback nor a test host the harness made (harness hosts status); "
                "pass --allow-non-loopback if this host is yours to load")
    return (f"target {host} is not on loopback: load goes to 127.0.0.0/8 only; "
            "pass --allow-non-loopback if this host is yours to load")


def source_error(address: str, allow_non_loopback: bool, test_hosts: bool = False) -> str | None:
    """Why a worker may not bind `address` as a source, or None (0.0.0.0: the kernel picks)."""
    if address == "0.0.0.0" or target_error(address, allow_non_loopback, test_hosts) is None:
        return None
    where = "127.0.0.0/8 or a test host's addresses" if test_hosts else "127.0.0.0/8"
    return f"source address {address} is not in {where}; load stays there"
