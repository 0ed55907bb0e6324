"""TLS on every connection: the sans-I/O client (`harness.core.tls`) under the connection state
machine against an in-memory OpenSSL server, fed in any chunking; every backend of the harness's
own serving TLS; and a handshake the client refuses, named, with OpenSSL's reason."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.core import protocols
from harness.core.connection import CLOSED, READY
from harness.core.tls import TlsSessions, TlsSettings, client_context
from harness.system.certs import self_signed
from tests.helpers import ROOT, ServerProcess, recv_exactly
from tests.test_connection import Recorder

BACKENDS = ["selectors", "asyncio", "uvloop", "threaded"]


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    return self_signed(tmp_path_factory.mktemp("tls"), ["127.0.0.1"])


def server_object(cert, maximum: ssl.TLSVersion | None = None) -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*map(str, cert))
    if maximum:
        context.maximum_version = maximum
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    return context.wrap_bio(incoming, outgoing, server_side=True), incoming, outgoing


def client(cert, trust: bool = True, **options) -> Recorder:
    """A connection whose TLS trusts the test's certificate (or, with trust=False, the system's CAs only)."""
    tls_settings = TlsSettings(ca_pem=cert[0].read_text() if trust else None, **options)
    sessions = TlsSessions(client_context(tls_settings), "127.0.0.1", tls_settings)
    conn = Recorder(protocols.Echo(40), tls=sessions.client())
    conn.begin(0.0, 10.0)
    return conn


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:]) if b > a]


def serve_echo(server: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, data: bytes) -> bytes:
    """The in-memory server: take the client's bytes, handshake, echo any plaintext; its bytes out."""
    incoming.write(data)
    try:
        server.do_handshake()
        while True:
            server.write(server.read(65536))
    except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
        pass
    except ssl.SSLError:
        pass  # the server refused the client: its alert is in outgoing
    return outgoing.read()


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=30))
def test_an_echo_over_tls_in_any_chunking(cert, cuts):
    conn = client(cert)
    server = server_object(cert)
    to_server = conn.connected(0.1, 10.0)
    for _ in range(10):  # each round trip: the client's bytes to the server, its answer back in pieces
        to_client = serve_echo(*server, to_server)
        to_server = b"".join(conn.received(piece, 0.2, 10.0) for piece in cut(to_client, cuts))
        if conn.state in (READY, CLOSED) and not to_server:
            break
    assert conn.state == READY, conn.seen
    assert [e[:2] for e in conn.seen] == [("stage", "connect"), ("stage", "tls-handshake"), ("reply", 40),
                                          ("verified",)]
    assert conn.tls.agreed() == {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384",
                                 "group": "default (X25519 first)",
                                 "resumed": False, "alpn": ""}


def test_a_certificate_the_client_does_not_trust_is_named_with_openssls_reason(cert):
    conn = client(cert, trust=False)
    server = server_object(cert)
    conn.received(serve_echo(*server, conn.connected(0.1, 10.0)), 0.2, 10.0)
    [failure] = [e for e in conn.seen if e[0] == "failure"]
    assert failure[1:3] == ("tls-handshake", "tls-verify") and b"self-signed certificate" in failure[3]


def handshake(conn: Recorder, server) -> None:
    to_server = conn.connected(0.1, 10.0)
    for _ in range(6):
        to_server = conn.received(serve_echo(*server, to_server), 0.2, 10.0)
        if conn.state in (READY, CLOSED) or not to_server:
            break


def test_a_tls_12_server_with_an_ecdsa_p256_certificate_is_reached_by_default_and_one_group_is_kept(cert):
    """By default the client offers OpenSSL's groups, P-256 among them, as a TLS 1.2 server with an
    ECDSA P-256 certificate needs; --tls-group offers that one group alone, and fails by name."""
    conn = client(cert)
    handshake(conn, server_object(cert, maximum=ssl.TLSVersion.TLSv1_2))
    assert conn.state == READY and conn.tls.agreed()["version"] == "TLSv1.2"
    conn = client(cert, group="prime256v1")
    handshake(conn, server_object(cert))
    assert conn.state == READY and conn.tls.agreed()["group"] == "prime256v1"
    conn = client(cert, group="X25519")
    handshake(conn, server_object(cert, maximum=ssl.TLSVersion.TLSv1_2))
    assert conn.seen[-1][2] == "tls-alert-handshake-failure"


def test_a_version_the_server_does_not_speak_is_named_by_its_alert(cert):
    conn = client(cert, version="1.3")
    server = server_object(cert, maximum=ssl.TLSVersion.TLSv1_2)
    conn.received(serve_echo(*server, conn.connected(0.1, 10.0)), 0.2, 10.0)
    [failure] = [e for e in conn.seen if e[0] == "failure"]
    assert failure[1:3] == ("tls-handshake", "tls-alert-protocol-version")
    assert failure[3] == b"TLSV1_ALERT_PROTOCOL_VERSION"


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_serves_tls_and_refuses_at_its_cap_before_any_handshake(tmp_path, backend, cert):
    server = ServerProcess(tmp_path, backend, "--cert", str(cert[0]), "--key", str(cert[1]), fd_limit=64)
    context = ssl.create_default_context(cafile=str(cert[0]))
    held = []
    try:
        cap = server.servers()[0]["cap"]
        for i in range(cap):
            tls = context.wrap_socket(socket.create_connection(("127.0.0.1", server.port), timeout=5),
                                      server_hostname="127.0.0.1")
            payload = os.urandom(1 + i * 997 % 70_000)
            tls.sendall(payload)
            assert recv_exactly(tls, len(payload)) == payload
            held.append(tls)
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as refused:
            with pytest.raises((ssl.SSLEOFError, ConnectionResetError, ssl.SSLZeroReturnError)):
                context.wrap_socket(refused, server_hostname="127.0.0.1")  # closed by the intake: no handshake
        rows = server.wait_gauges(lambda r: r[0]["refused_EMFILE"] >= 1 and r[0]["open"] == cap)
        assert rows[0]["open"] == cap and rows[0]["refused_EMFILE"] >= 1
    finally:
        for tls in held:
            tls.close()
        server.stop()


def test_a_run_over_tls_records_what_its_handshakes_agreed(tmp_path):
    out = subprocess.run([sys.executable, "-m", "harness.cli", "run", "--backend", "selectors", "--connections", "300",
                          "--tls", "--hold", "1", "--port", "0", "--workers", "1", "--out", str(tmp_path), "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads(out.stdout)
    assert doc["peak_connections"] == 300 and doc["echo"]["mismatched"] == 0
    assert doc["tls"] == {"handshakes": 300, "resumed": 0, "version": {"TLSv1.3": 300},
                          "cipher": {"TLS_AES_256_GCM_SHA384": 300}, "group": {"default (X25519 first)": 300},
                          "alpn": {"": 300}}
    assert doc["connects"]["stages"] == {"tls-handshake": 300} and "tls-handshake" in doc["latency_ms"]
    assert doc["plan"]["tls"] and doc["plan"]["connection_bytes"] > 20_000


def test_a_target_the_oom_killer_ends_is_a_fault_named_memory(tmp_path, cert, memory_cgroup):
    cgroup = memory_cgroup(160 << 20)
    """asyncio over TLS keeps ~290 KB per connection: in a 160 MiB cgroup the kernel's OOM killer ends
    it a few hundred connections in. The run records the fault with the connections lost, and the
    diagnosis says memory, with what each connection cost."""
    def join_cgroup() -> None:
        with open(f"{cgroup}/cgroup.procs", "w") as f:
            f.write(str(os.getpid()))

    target = subprocess.Popen([sys.executable, "-m", "servers", "asyncio", "--port", "0", "--cert", str(cert[0]), "--key",
                               str(cert[1]), "--interval", "3600"], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, preexec_fn=join_cgroup)
    try:
        port = target.stdout.readline().split()[2].rsplit(":", 1)[1]
        # 80 a second: a target is read once a second, so the seconds before the OOM killer comes give
        # the cost watch several samples to fit
        out = subprocess.run([sys.executable, "-m", "harness.cli", "run", "--target", f"127.0.0.1:{port}", "--protocol",
                              "echo", "--tls", "--ca", str(cert[0]), "--connections", "2000", "--ramp-rate", "80",
                              "--hold", "2", "--workers", "1", "--echo-timeout", "5", "--out", str(tmp_path), "--json"],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
    finally:
        target.terminate()
        target.wait(10)
    doc = json.loads(out.stdout)
    [killed] = [f for f in doc["faults"] if f.get("kind") == "oom-kill"]
    assert "killed by the OOM killer" in killed["what"] and killed["connections_lost"] > 100
    assert doc["diagnosis"]["limit"] == "memory" and doc["diagnosis"]["cause"] == "memory"
    assert out.returncode == 1  # a fault the run did not plan
    # asyncio's TLS, per connection (~290 KB; handshakes in flight as the ramp goes add theirs)
    assert 200_000 < doc["serving"]["costs"]["rss_bytes"] < 600_000
