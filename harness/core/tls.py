"""TLS under any protocol, sans-I/O: OpenSSL through the standard library's `ssl.MemoryBIO` and
`SSLObject`. A `TlsClient` is handed the ciphertext that arrives, in any chunking, and gives back
the plaintext in it and the ciphertext to send; the connection state machine
(`harness.core.connection`) puts it under every protocol's parser, so echo, HTTP, WebSocket and MQTT
all run over TLS the same way.

A handshake that fails is named in one word, with OpenSSL's reason kept as evidence:
`tls-verify` (the certificate was refused: its reason, e.g. "self-signed certificate"),
`tls-alert-<name>` (the server sent an alert: `tls-alert-protocol-version`,
`tls-alert-handshake-failure`), or `tls-handshake` (anything else, e.g. a server that does not speak
TLS). What a handshake agreed (version, cipher, key exchange group, whether the session was resumed,
ALPN) is `agreed()`. The key exchange group: by default the client offers OpenSSL's own list
(X25519 first, with its one key share, then P-256 and the rest: a TLS 1.2 server whose certificate is
ECDSA P-256 needs P-256 offered), and the standard library cannot say which one a handshake chose,
so `agreed()` records DEFAULT_GROUP_NAME; with `--tls-group` the client offers that group alone
(OpenSSL 3 sets a context's supported groups to the one `set_ecdh_curve` names), so a handshake
agrees on it or fails by name.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
DEFAULT_GROUP_NAME = "default (X25519 first)"  # OpenSSL's list, its one key share X25519
READ_BYTES = 65536
HANDSHAKE = "tls-handshake"
VERIFY = "tls-verify"


@dataclass(frozen=True)
class TlsSettings:
    """What a run's TLS client does: the `--tls...` options."""

    server_name: str | None = None  # SNI and the name verified (default: the target's address)
    ca_pem: str | None = None  # the certificates trusted (default: the system's)
    insecure: bool = False  # no verification at all
    version: str | None = None  # "1.2" or "1.3": exactly that version (default: either)
    alpn: tuple[str, ...] = ()
    resume: bool = False  # offer the session the last handshake got (as reconnecting clients do)
    group: str = ""  # the one group offered (default: OpenSSL's list)


def client_context(settings: TlsSettings) -> ssl.SSLContext:
    """The client context of a run, from its settings (the CA's PEM text, not a file: no I/O here)."""
    context = ssl.create_default_context(cadata=settings.ca_pem) if settings.ca_pem else ssl.create_default_context()
    if settings.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if settings.version:
        context.minimum_version = context.maximum_version = VERSIONS[settings.version]
    if settings.alpn:
        context.set_alpn_protocols(list(settings.alpn))
    if settings.group:
        context.set_ecdh_curve(settings.group)
    return context


def failure_name(exc: ssl.SSLError) -> tuple[str, bytes]:
    """(the failure's one word, OpenSSL's reason as evidence) of a handshake that failed."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return VERIFY, (exc.verify_message or str(exc)).encode()
    reason = exc.reason or ""
    for prefix in ("TLSV1_ALERT_", "SSLV3_ALERT_", "TLSV13_ALERT_"):
        if reason.startswith(prefix):
            return "tls-alert-" + reason[len(prefix):].lower().replace("_", "-"), reason.encode()
    return HANDSHAKE, (reason or str(exc)).encode()


class TlsSessions:
    """The TLS client side of one Locust process: its context, and the session to resume."""

    def __init__(self, context: ssl.SSLContext, server_name: str, settings: TlsSettings) -> None:
        self.context, self.server_name, self.settings = context, server_name, settings
        self.session: ssl.SSLSession | None = None

    def client(self) -> "TlsClient":
        return TlsClient(self, self.session if self.settings.resume else None)


class TlsClient:
    """One connection's TLS, fed ciphertext, giving back plaintext and the ciphertext to send."""

    __slots__ = ("sessions", "obj", "incoming", "outgoing", "secured", "reason")

    def __init__(self, sessions: TlsSessions, session: ssl.SSLSession | None = None) -> None:
        self.sessions = sessions
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = sessions.context.wrap_bio(self.incoming, self.outgoing, server_hostname=sessions.server_name,
                                             session=session)
        self.secured = False
        self.reason = b""  # OpenSSL's words for the failure, once there is one

    def start(self) -> bytes:
        """The ClientHello."""
        return self._handshake()[1]

    def feed(self, data: bytes) -> tuple[bytes, bytes, str | None]:
        """Ciphertext in: (plaintext in it, ciphertext to send, the failure's name or None)."""
        self.incoming.write(data)
        out = b""
        if not self.secured:
            failure, out = self._handshake()
            if failure or not self.secured:
                return b"", out, failure
        chunks = []
        while True:
            try:
                chunks.append(self.obj.read(READ_BYTES))
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # close_notify: the far end closes as TCP will
                break
            except ssl.SSLError as exc:
                name, self.reason = failure_name(exc)
                return b"".join(chunks), out + self.outgoing.read(), name
            if not chunks[-1]:
                break
        if self.sessions.settings.resume and self.sessions.session is None and self.obj.session is not None \
                and self.obj.session.has_ticket:
            self.sessions.session = self.obj.session  # tickets come after the handshake (TLS 1.3)
        return b"".join(chunks), out + self.outgoing.read(), None

    def wrap(self, plain: bytes) -> bytes:
        self.obj.write(plain)
        return self.outgoing.read()

    def agreed(self) -> dict[str, str | bool]:
        cipher = self.obj.cipher()
        return {"version": self.obj.version() or "?", "cipher": cipher[0] if cipher else "?",
                "group": self.sessions.settings.group or DEFAULT_GROUP_NAME, "resumed": self.obj.session_reused,
                "alpn": self.obj.selected_alpn_protocol() or ""}

    def evidence(self) -> bytes:
        return self.reason

    def _handshake(self) -> tuple[str | None, bytes]:
        try:
            self.obj.do_handshake()
            self.secured = True
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as exc:
            name, self.reason = failure_name(exc)
            return name, self.outgoing.read()
        return None, self.outgoing.read()
