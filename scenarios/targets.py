"""Which targets Locust may load: loopback only unless told otherwise. No locust import here, so
the rule can be tested without monkey-patching the test process."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def target_error(host: str, allow_non_loopback: bool) -> str | None:
    """Why `host` may not be loaded, or None."""
    if is_loopback(host) or allow_non_loopback:
        return None
    return (f"target {host} is not on loopback: load goes to 127.0.0.0/8 only; "
            "pass --allow-non-loopback if this host is yours to load")
