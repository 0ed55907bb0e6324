"""The options a run hands to Locust, defined once: the same flag, type and default in `harness run`
(and `ui`, `worker`), in the locustfile's own parser, and in the web UI's start form.

`harness.run.config.RunConfig` is built once from the command line; `locust_args` turns it into the
flags below for the master and the workers; the locustfile declares the same flags from this table
(`scenarios.locustfile`), so a name or a default cannot differ on the way. The harness plans some of
them before a run (`--ramp-rate`, `--max-seconds`, `--echo-timeout`): the defaults here are what
Locust uses when it is run by hand.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.core.backends import MEMORY_RESERVE_BYTES, connection_bytes
from harness.core.protocols import PROTOCOLS
from harness.core.websocket import WS_MODES
from harness.core.words import ECHO_MODES, USER_MODES


@dataclass(frozen=True)
class Option:
    name: str  # the config's field and the flag (--name with dashes)
    kind: type
    default: object
    help: str
    web_ui: bool = False  # shown in the web UI's start form
    workers: bool = False  # on the workers' command line too (they need it before the first spawn)
    choices: tuple[str, ...] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


OPTIONS: tuple[Option, ...] = (
    Option("connections", int, 1000, "connections to ramp to (in the web UI: its Number of users)"),
    Option("ramp_rate", float, 1000.0, "new connections a second while ramping (in the web UI: its Ramp up)"),
    Option("hold", float, 10.0, "seconds to hold once the ramp ends", web_ui=True),
    Option("echo_interval", float, 5.0, "seconds between requests on each connection once the ramp ends",
           web_ui=True, workers=True),
    Option("echo_mode", str, "closed", "closed: the next request an interval after the last answer; open: on a "
           "fixed schedule, latency from the intended send time", web_ui=True, workers=True, choices=ECHO_MODES),
    Option("echo_timeout", float, 10.0, "seconds a connect, a handshake or a reply may take", workers=True),
    Option("payload_size", int, 64, "bytes per echo", web_ui=True, workers=True),
    Option("protocol", str, "echo", "what the target speaks", web_ui=True, workers=True, choices=PROTOCOLS),
    Option("send", str, "", "line: the request, with backslash escapes (e.g. 'version\\r\\n')", workers=True),
    Option("expect", str, "", "line: what the reply starts with", workers=True),
    Option("path", str, "/", "http, websocket: the path to request", web_ui=True, workers=True),
    Option("header", list, None, "websocket: a header for the upgrade request, NAME:VALUE (repeat the flag for more)",
           workers=True),
    Option("subprotocol", str, "", "websocket: the subprotocol asked for (Sec-WebSocket-Protocol)", web_ui=True,
           workers=True),
    Option("ws_mode", str, "echo", "websocket: echo (binary messages echoed byte for byte) or ping (pings answered "
           "by pongs, for servers that do not echo)", web_ui=True, workers=True, choices=WS_MODES),
    Option("client_id_prefix", str, "fdcap-", "mqtt: each client id begins so (then this process's host and pid, "
           "and the connection's number)", web_ui=True, workers=True),
    Option("keepalive", int, 0, "mqtt: the keep-alive the CONNECT asks for, seconds (0: none; harness run plans one "
           "longer than the ramp)", web_ui=True, workers=True),
    Option("username", str, "", "mqtt: the user name the CONNECT gives", web_ui=True, workers=True),
    Option("password", str, "", "mqtt: the password the CONNECT gives", workers=True),
    Option("mqtt_echo", bool, False, "mqtt: each request a PUBLISH to the connection's own topic, which the broker "
           "must send back byte for byte (default: PINGREQ)", web_ui=True, workers=True),
    Option("user_mode", str, "driver", "driver: one greenlet serves every user of a process; greenlet: one "
           "greenlet per user", workers=True, choices=USER_MODES),
    Option("step_seconds", float, 1.0, "the ramp's step"),
    Option("max_seconds", float, 240.0, "the ramp's time bound"),
    Option("memory_reserve", int, MEMORY_RESERVE_BYTES, "bytes of MemAvailable the ramp leaves free"),
    Option("connection_bytes", int, connection_bytes("asyncio"), "bytes one more connection costs, both ends: "
           "the ramp's memory floor counts the connections still to come at this"),
    Option("source_addresses", str, "auto", "'auto' (worker i binds 127.0.i+1.2, ...) or a comma list", workers=True),
    Option("worker_fd_limit", int, 0, "soft RLIMIT_NOFILE of each worker (0: keep Locust's)", workers=True),
    Option("allow_non_loopback", bool, False, "the target is outside loopback and yours to load", workers=True),
    Option("tls", bool, False, "speak TLS on every connection, under the protocol", web_ui=True, workers=True),
    Option("server_name", str, "", "TLS: the name sent (SNI) and verified (default: the target's address)",
           web_ui=True, workers=True),
    Option("ca", str, "", "TLS: a PEM file of the certificates to trust (default: the system's; the harness's "
           "own servers: the certificate it made)", workers=True),
    Option("insecure", bool, False, "TLS: do not verify the server's certificate", web_ui=True, workers=True),
    Option("tls_version", str, "", "TLS: exactly this version (default: 1.2 or 1.3)", web_ui=True, workers=True,
           choices=("", "1.2", "1.3")),
    Option("alpn", str, "", "TLS: the ALPN protocols offered, comma-separated (e.g. h2,http/1.1)", web_ui=True, workers=True),
    Option("tls_resume", bool, False, "TLS: offer the session of an earlier handshake, as reconnecting clients do",
           web_ui=True, workers=True),
    Option("tls_group", str, "", "TLS: offer this key exchange group alone (e.g. X25519, prime256v1; default: "
           "OpenSSL's list, X25519 first)",
           web_ui=True, workers=True),
)
BY_NAME = {o.name: o for o in OPTIONS}


def locust_args(values: dict, workers: bool = False) -> list[str]:
    """The flags for the options in `values` (by name) that the master, or the workers, take."""
    out: list[str] = []
    for option in OPTIONS:
        if option.name not in values or (workers and not option.workers):
            continue
        value = values[option.name]
        if option.kind is bool:
            out += [option.flag] if value else []
        elif option.kind is list:
            out += [part for item in value or () for part in (option.flag, str(item))]
        elif value is not None:
            out += [option.flag, str(value)]
    return out
