"""Addresses: how HOST:PORT is written (IPv4, `[IPv6]`, `localhost`), and which addresses load may
go to. The rule: loopback (127.0.0.0/8, ::1); the harness's own test hosts, when a run made them
and says so (an address of 198.18.0.0/15 or 2001:2::/48 that is also in a lab's state file: the
block alone is not enough, a VPN's fake-IP range may be 198.18.0.0/16 and route to the internet);
or what the user says is theirs (`--allow-non-loopback`). Pure: the labs' addresses are passed in.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection

from harness.core.lab_layout import is_test_address
from harness.core.refusal import Refused


class AddressError(Refused, ValueError):
    """An address that does not parse or may not be used; the message names the flag and the fix."""


def split_host_port(text: str, flag: str, example: str = "127.0.0.1:9999") -> tuple[str, int]:
    """'127.0.0.1:9999', '[::1]:9999', 'localhost:80', 'tcp://127.0.0.1:9999/' -> (address, port),
    the address an IP literal (`localhost` is 127.0.0.1); AddressError names `flag` otherwise."""
    address = text.split("://", 1)[-1].rstrip("/")
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise AddressError(f"{flag} {text!r} is not HOST:PORT; give e.g. {flag} {example}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise AddressError(f"{flag} {text!r}: write an IPv6 address in brackets, e.g. {flag} [::1]:{port}")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise AddressError(f"{flag} {text!r}: {host!r} is not an IP address; give the address, e.g. "
                           f"{flag} {example}") from None
    return host, int(port)


def join_host_port(host: str, port: int) -> str:
    """(address, port) as HOST:PORT, an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def family(host: str) -> int:
    """4 or 6: the address family of an IP literal."""
    return ipaddress.ip_address(host).version


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def is_lab_address(host: str, lab_addresses: Collection[str]) -> bool:
    """An address of a test host (or bridge) the harness made: in a test block and in a lab."""
    return is_test_address(host) and host in lab_addresses


def target_error(host: str, allow_non_loopback: bool, lab_addresses: Collection[str] | None = None) -> str | None:
    """Why `host` may not be loaded, or None. `lab_addresses`: the run loads the harness's own
    test hosts, whose addresses (and no others) are allowed besides loopback."""
    if is_loopback(host) or allow_non_loopback or (lab_addresses is not None and is_lab_address(host, lab_addresses)):
        return None
    if lab_addresses is not None:
        return (f"target {host} is neither on loopback nor a test host the harness made (harness hosts status); "
                "pass --allow-non-loopback if this host is yours to load")
    return (f"target {host} is not on loopback: load goes to 127.0.0.0/8 and ::1 only; "
            "pass --allow-non-loopback if this host is yours to load")


def source_error(address: str, allow_non_loopback: bool, lab_addresses: Collection[str] | None = None) -> str | None:
    """Why a client may not bind `address` as a source, or None (0.0.0.0 and ::: the kernel picks)."""
    if address in ("0.0.0.0", "::") or target_error(address, allow_non_loopback, lab_addresses) is None:
        return None
    where = "loopback or a test host's addresses" if lab_addresses is not None else "loopback (127.0.0.0/8, ::1)"
    return f"source address {address} is not in {where}; load stays there"
