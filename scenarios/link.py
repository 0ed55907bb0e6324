"""A Locust user's connection: the core's state machine (`harness.core.connection`), counted in this
process's tally and fired as Locust request events. Driver mode and greenlet mode both subclass it,
so what a connect, a stage, a reply or a failure counts as is written once.

Every stage and request is a Locust `request` event of type "TCP", named by what it was: `connect`,
`tls-handshake`, the protocol's opening (`ws-upgrade`, `mqtt-connack`) and its request (`echo`,
`redis`, `http`, `websocket`, `mqtt`); a failure carries one short word (`scenarios.tally`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from harness.core import protocols
from harness.core.addresses import split_host_port
from harness.core.connection import CONNECT_STAGE, Connection
from harness.core.protocol_base import Protocol
from harness.core.tls import TlsSessions, TlsSettings, client_context
from harness.core.words import TCPError
from scenarios.tally import TALLY

_fire = None  # this process's environment.events.request.fire, set by `bind` at init
_tls: dict[str, TlsSessions | None] = {}  # by Locust's --host: this process's TLS client side, made once
_protocols: dict[str | None, Protocol] = {}  # by Locust's --host: what this process's connections speak


def bind(environment) -> None:
    global _fire
    if _fire is None:
        environment.events.test_start.add_listener(new_test)
    _fire = environment.events.request.fire


def protocol_for(opts, host: str | None) -> Protocol:
    """The protocol this process's connections speak to --host, made once a test."""
    if host not in _protocols:
        # an MQTT client id must be unique at the broker: this process's host and pid tell it apart
        _protocols[host] = protocols.from_options(opts, host, identity=f"{TALLY.host}-{os.getpid():x}")
    return _protocols[host]


def new_test(**_) -> None:
    """A test starts (on a worker, once the master's options have come): the web UI's start form
    may have changed the protocol or TLS, so both are made again."""
    _protocols.clear()
    _tls.clear()


def tls_sessions(opts, host: str | None) -> TlsSessions | None:
    """The TLS client side of this process for --host, where the run speaks TLS (`--tls`)."""
    if not getattr(opts, "tls", False):
        return None
    if host not in _tls:
        ca = Path(opts.ca).read_text() if opts.ca else None
        settings = TlsSettings(server_name=opts.server_name or None, ca_pem=ca, insecure=opts.insecure,
                               version=opts.tls_version or None,
                               alpn=tuple(a for a in opts.alpn.split(",") if a), resume=opts.tls_resume,
                               group=opts.tls_group or "")
        address = split_host_port(host or "", "--host")[0] if host else "localhost"
        _tls[host] = TlsSessions(client_context(settings), settings.server_name or address, settings)
    return _tls[host]


def fire(name: str, seconds: float, length: int, failure: str | None) -> None:
    _fire(request_type="TCP", name=name, response_time=seconds * 1000, response_length=length,
          exception=TCPError(failure) if failure else None, context={})


class LocustLink(Connection):
    __slots__ = ()

    def on_stage(self, name: str, started: float, now: float) -> None:
        if name != CONNECT_STAGE:
            TALLY.stages[name] = TALLY.stages.get(name, 0) + 1
            if self.tls is not None and name == "tls-handshake":
                TALLY.note_tls(self.tls.agreed())
        fire(name, now - started, 0, None)

    def on_reply(self, size: int, sent_at: float, intended: float | None, now: float) -> None:
        TALLY.echoes_verified += 1
        TALLY.bytes_echoed += size
        if intended is not None:
            TALLY.latency.record_value(max(1, int((now - intended) * 1e6)))
        fire(self.protocol.name, now - sent_at, size, None)

    def on_verified(self) -> None:
        TALLY.connects_ok += 1
        TALLY.held += 1

    def on_failure(self, request: str, failure: str, started: float, evidence: bytes, verified: bool) -> None:
        TALLY.note_evidence(failure, evidence)
        if not verified:
            TALLY.failed(TALLY.connects_failed, failure)  # never held: a failed connection
        if request == self.protocol.name:
            TALLY.failed(TALLY.echo_failed, failure)
        self.drop(verified)
        fire(request, time.perf_counter() - started, 0, failure)

    def request(self, now: float, intended: float | None, timeout: float) -> bytes:
        TALLY.echoes_sent += 1
        return super().request(now, intended, timeout)

    def drop(self, verified: bool) -> None:
        """Close the socket (the adapter's): counted as no longer open, nor held if it was."""
        raise NotImplementedError

