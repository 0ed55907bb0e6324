"""Test hosts: the pure address plan, `harness hosts up/down/status`, runs with the servers on one
network namespace and Locust workers on others (made by the run or by `hosts up`), a worker
joining from another host with `harness worker --master`, faults on a client host's link, and no
namespace, link or process left after the run ends, is interrupted, or is killed."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import uuid

import psutil
import pytest

from harness.core import lab_layout
from harness.core.addresses import source_error, target_error
from harness.core.lab_layout import LayoutError
from harness.hosts import netns
from harness.run.cluster import free_port
from harness.system import procctl
from harness.system.files import load
from tests.helpers import ROOT, assert_gone, wait_status, wait_until

HARNESS = [sys.executable, "-m", "harness.cli"]
needs_net_admin = pytest.mark.skipif(not netns.has_net_admin(), reason="test hosts need CAP_NET_ADMIN (root)")


def _prefix() -> str:
    return "t" + uuid.uuid4().hex[:6]


def _left(prefix: str) -> list[str]:
    """Namespaces and links of lab `prefix` still on the machine."""
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return [n for n in names if n.startswith(prefix + "-")] + [
        line.split(":")[1].strip().split("@")[0] for line in links.splitlines() if f": {prefix}-" in line]


def _harness(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*HARNESS, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _start(tmp_path, *args: str, session: bool = False) -> subprocess.Popen:
    """`harness run`; with `session`, in a process group of its own, as a terminal runs it."""
    return subprocess.Popen([*HARNESS, "run", "--out", str(tmp_path), *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=session)


# -- the address plan (pure) -------------------------------------------------------------------
def test_every_lab_and_host_address_is_in_198_18_0_0_15_and_labs_do_not_overlap():
    nets = [lab_layout.lab_network(i) for i in range(lab_layout.LABS)]
    assert all(n.subnet_of(lab_layout.TEST_NET) for n in nets)
    assert not any(a.overlaps(b) for i, a in enumerate(nets) for b in nets[i + 1:])
    for lab in (0, lab_layout.LABS - 1):
        addresses = [lab_layout.host_address(lab, h, k) for h in (1, lab_layout.HOSTS_PER_LAB) for k in (0, 252)]
        assert all(ipaddress.ip_address(a) in lab_layout.lab_network(lab) for a in addresses)
        assert lab_layout.bridge_address(lab) not in addresses
    assert lab_layout.is_test_address("198.19.255.254") and not lab_layout.is_test_address("198.20.0.1")
    with pytest.raises(LayoutError, match="253 addresses"):
        lab_layout.host_address(0, 1, 253)
    with pytest.raises(LayoutError, match="1 to 31"):
        lab_layout.check_count(32)
    with pytest.raises(LayoutError, match="--prefix"):
        lab_layout.check_prefix("Bad-Name")


def test_every_ipv6_twin_is_in_2001_2_48_one_to_one():
    twins = {}
    for lab in (0, 5, lab_layout.LABS - 1):
        v4 = [lab_layout.bridge_address(lab)] + [lab_layout.host_address(lab, h, k)
                                                  for h in (1, 2, lab_layout.HOSTS_PER_LAB) for k in (0, 1, 252)]
        for a in v4:
            six = ipaddress.ip_address(lab_layout.v6_of(a))
            assert six in lab_layout.TEST_NET6 and six in lab_layout.lab_network6(lab)
            twins[a] = six
    assert len(set(twins.values())) == len(twins)  # no two addresses share a twin
    assert lab_layout.is_test_address("2001:2:0:f::1f:fd") and not lab_layout.is_test_address("2001:3::1")
    with pytest.raises(LayoutError, match="not a test host"):
        lab_layout.v6_of("10.0.0.1")


def test_addresses_outside_the_harness_labs_are_refused():
    """Outside 198.18.0.0/15, and inside it where no lab of the harness has the address (a VPN's
    fake-IP range may be 198.18.0.0/16): refused as a target and as a source."""
    lab_addresses = netns.lab_addresses()
    unused = next(a for a in ("198.19.255.254", "198.19.255.253", "198.19.255.252") if a not in lab_addresses)
    for outside in ("10.0.0.1", "198.20.0.1", "8.8.8.8", "198.17.255.255", unused):
        assert "test host" in target_error(outside, False, netns.lab_addresses())  # a worker of a test-host run refuses it
        assert source_error(outside, False, netns.lab_addresses())
    assert "not on loopback" in target_error("198.18.1.1", False)  # only a run that says it loads test hosts
    assert source_error("0.0.0.0", False) is None  # the kernel picks by the route
    assert target_error("127.0.0.1", False, netns.lab_addresses()) is None


@pytest.mark.parametrize("args, words", [
    (["worker", "--master", "10.1.2.3:5557"], "--master 10.1.2.3 is neither loopback nor a test host"),
    (["worker", "--master", "127.0.0.1:5557", "--source-addresses", "192.168.1.5"], "source address 192.168.1.5"),
    (["worker", "--master", "198.19.255.254:5557"], "neither loopback nor a test host's bridge"),
    (["run", "--connections", "10", "--expect-workers", "2"], "--expect-workers 2 needs --master-bind"),
    (["run", "--connections", "10", "--hosts", "3", "--master-bind", "127.0.0.1:5557"], "drop --master-bind"),
    (["run", "--connections", "10", "--server-host", "x-1", "--worker-hosts", "x-2,x-2"], "names a host twice"),
    (["run", "--connections", "10", "--master-bind", "10.0.0.1:5557"], "--master-bind 10.0.0.1 is not loopback"),
    (["run", "--connections", "10", "--hosts", "1"], "1 hosts: use 2 to 31"),
    (["run", "--connections", "10", "--loss", "1%"], "--loss is a fault on a test host's link"),
    (["run", "--connections", "10", "--hosts", "3", "--loss", "70%"], "out of range"),
    (["run", "--connections", "10", "--server-host", "fdcap-1"], "--server-host and --worker-hosts go together"),
    (["run", "--connections", "10", "--workers", "0"], "--expect-workers"),
    (["hosts", "up", "2", "--prefix", "Bad"], "--prefix 'Bad'"),
])
def test_bad_host_flags_are_one_line_and_exit_2(args, words):
    done = _harness(*args, timeout=30)
    assert done.returncode == 2, done.stderr
    assert words in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


@needs_net_admin
@pytest.mark.parametrize("args", [["hosts", "up", "1", "--prefix", "tnocap"],
                                  ["run", "--hosts", "2", "--connections", "10"]])
def test_without_cap_net_admin_test_hosts_are_one_line_and_exit_2(tmp_path, args):
    """The same commands with CAP_NET_ADMIN taken away (setpriv drops it from the bounding and
    inheritable sets, so the exec'd harness runs without it)."""
    done = subprocess.run(["setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin", *HARNESS, *args,
                           *(["--out", str(tmp_path)] if args[0] == "run" else [])],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "need CAP_NET_ADMIN" in lines[0], done.stderr
    assert _left("tnocap") == [] and not list(tmp_path.iterdir())


# -- the hosts themselves ----------------------------------------------------------------------
@needs_net_admin
def test_hosts_up_is_idempotent_sets_each_hosts_sysctls_and_down_removes_only_its_own():
    prefix, other = _prefix(), _prefix()
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        machine_range = f.read().split()
    try:
        assert _harness("hosts", "up", "2", "--prefix", prefix, "--addresses", "2").returncode == 0
        assert _harness("hosts", "up", "1", "--prefix", other).returncode == 0
        again = _harness("hosts", "up", "2", "--prefix", prefix, "--addresses", "2")
        assert again.returncode == 0
        [lab] = json.loads(_harness("hosts", "status", "--prefix", prefix, "--json").stdout)
        assert [h["name"] for h in lab["hosts"]] == [f"{prefix}-1", f"{prefix}-2"]
        for h in lab["hosts"]:
            assert len(h["addresses"]) == 2 and all(lab_layout.is_test_address(a) for a in h["addresses"])
            assert h["ip_local_port_range"] == "1024 65535" and h["somaxconn"] == "65535"
        # the host's range is its own: the machine's is unchanged
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            assert f.read().split() == machine_range
        # an address of a made lab is a target a test-host run may load; the same address is
        # refused once the lab is gone (below)
        assert target_error(lab["hosts"][0]["addresses"][0], False, netns.lab_addresses()) is None
        # a host reaches another across the bridge, from its own address
        a, b = lab["hosts"]
        with procctl.in_netns(b["name"]):
            listener = socket.create_server((b["addresses"][1], 0))
        with procctl.in_netns(a["name"]):
            client = socket.create_connection(listener.getsockname(), timeout=5,
                                              source_address=(a["addresses"][1], 0))
        peer = listener.accept()[0].getpeername()
        assert peer[0] == a["addresses"][1]
        client.close()
        listener.close()
        down = _harness("hosts", "down", "--prefix", prefix)
        assert down.returncode == 0 and f"bridge {prefix}-br" in down.stdout
        assert _left(prefix) == [] and len(_left(other)) == 3  # the other lab is untouched
        assert target_error(lab["hosts"][0]["addresses"][0], False, netns.lab_addresses()) is not None
        assert "no test hosts" in _harness("hosts", "down", "--prefix", prefix).stdout
    finally:
        netns.down(prefix)
        netns.down(other)
    assert _left(other) == []


@needs_net_admin
def test_a_run_across_two_worker_hosts_and_a_worker_joining_from_a_third(tmp_path):
    """Servers on host 1, the run's workers on hosts 2 and 3, and one more worker started with
    `harness worker --master` inside host 4: 2,000 echo-verified connections, each host's share
    in run.json, the kernel's count read inside the server host."""
    prefix = _prefix()
    outside = None
    try:
        lab = netns.up(4, prefix)
        master = f"{lab.bridge_address}:{free_port(lab.bridge_address)}"
        outside = subprocess.Popen(["ip", "netns", "exec", f"{prefix}-4", *HARNESS, "worker", "--master", master,
                                    "--name", f"{prefix}-4", "--source-addresses", lab.hosts[3].address,
                                    "--log", str(tmp_path / "outside.log")],
                                   cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        done = _harness("run", "--server-host", f"{prefix}-1", "--worker-hosts", f"{prefix}-2,{prefix}-3",
                        "--master-bind", master, "--expect-workers", "1", "--connections", "2000", "--hold", "3",
                        "--echo-interval", "1", "--loss", "0.5%", "--out", str(tmp_path / "runs"), "--json")
        assert done.returncode == 0, done.stderr[-3000:]
        doc = json.loads(done.stdout)
        assert doc["peak_connections"] == 2000 and doc["host"] == lab.hosts[0].address
        assert doc["echo"]["mismatched"] == 0 and doc["connects"]["failed"] == {}
        hosts = {h["name"]: h for h in doc["hosts"]["hosts"]}
        server = hosts[f"{prefix}-1"]
        assert server["role"] == "server" and server["peak_held"] == 2000  # counted inside the server host
        assert server["tcp"]["PassiveOpens"] >= 2000
        clients = [hosts[f"{prefix}-2"], hosts[f"{prefix}-3"]]
        # Locust splits 2,000 users evenly over every worker: the outside worker holds its share
        share = 2000 / (sum(c["workers"] for c in clients) + 1)
        assert doc["hosts"]["outside_workers"] == 1 and abs(doc["hosts"]["outside_held"] - share) <= 1
        for c in clients:
            assert c["workers"] >= 1 and c["mismatched"] == 0 and c["echoes_verified"] > c["peak_held"]
            assert abs(c["peak_held"] - share * c["workers"]) <= c["workers"]
            assert all(a.startswith(str(lab_layout.lab_network(lab.lab).network_address).rsplit(".", 2)[0])
                       for a in c["addresses"])
            assert c["tcp"]["ActiveOpens"] >= c["peak_held"]
        assert sum(c["peak_held"] for c in clients) + doc["hosts"]["outside_held"] == 2000
        assert outside.wait(30) == 0, outside.stderr.read()  # the master ended the test: the worker ends too
        # the hosts were made by `hosts up`, so they stay; the run's faults on them do not
        for name in (f"{prefix}-2", f"{prefix}-3"):
            tables = subprocess.run(["ip", "netns", "exec", name, "nft", "list", "tables"], capture_output=True,
                                    text=True).stdout
            assert "harness_faults" not in tables and netns.exists(name)
    finally:
        if outside is not None and outside.poll() is None:
            outside.kill()
        netns.down(prefix)
    assert _left(prefix) == []


@needs_net_admin
def test_a_run_over_ipv6_across_test_hosts_uses_their_2001_2_twins(tmp_path):
    """--hosts 3 --ipv6: the servers listen on the server host's 2001:2::/48 address, each client
    host binds its own, and every connection is echo-verified over IPv6."""
    done = _harness("run", "--hosts", "3", "--ipv6", "--connections", "2000", "--hold", "1", "--out", str(tmp_path),
                    "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(done.stdout)
    assert doc["family"] == 6 and ipaddress.ip_address(doc["host"]) in lab_layout.TEST_NET6
    assert doc["peak_connections"] == 2000 and doc["echo"]["mismatched"] == 0 and doc["connects"]["failed"] == {}
    hosts = doc["hosts"]
    assert hosts["family"] == 6 and {h["role"] for h in hosts["hosts"]} == {"server", "client"}
    for h in hosts["hosts"]:
        assert all(ipaddress.ip_address(a) in lab_layout.TEST_NET6 for a in h["addresses"])
    assert sum(h["held"] for h in hosts["hosts"] if h["role"] == "client") == 2000
    assert _left(hosts["prefix"]) == []


CONNTRACK_MAX = "/proc/sys/net/netfilter/nf_conntrack_max"
# A stateful firewall, as a server's machine often has: every connection is a conntrack entry.
STATEFUL_RULES = """table inet fdcap_ct {
  chain input { type filter hook input priority 0; policy accept; ct state established,related,new accept; }
}"""


@needs_net_admin
def test_a_full_conntrack_table_in_the_server_host_is_named_with_its_drops(tmp_path):
    """A stateful rule in the server host, and the table's max at 300: the kernel drops the SYNs
    past it ("nf_conntrack: table full, dropping packet"), the clients' connects time out, and the
    diagnosis names the table, its count and its drops, read in that host."""
    prefix = _prefix()
    with open(CONNTRACK_MAX) as f:
        saved = f.read().strip()
    with open("/proc/sys/net/netfilter/nf_conntrack_count") as f:
        # the max is the machine's: lowered only where nothing outside the test's host tracks connections
        assert int(f.read()) == 0, "connections are tracked outside the test's hosts here; lowering the max is unsafe"
    try:
        netns.up(2, prefix)
        subprocess.run(["ip", "netns", "exec", f"{prefix}-1", "nft", "-f", "-"], input=STATEFUL_RULES, text=True,
                       check=True)
        with open(CONNTRACK_MAX, "w") as f:
            f.write("300")
        done = _harness("run", "--server-host", f"{prefix}-1", "--worker-hosts", f"{prefix}-2", "--connections", "500",
                        "--hold", "1", "--echo-timeout", "3", "--out", str(tmp_path), "--json")
    finally:
        with open(CONNTRACK_MAX, "w") as f:
            f.write(saved)
        netns.down(prefix)
    doc = json.loads(done.stdout)
    d = doc["diagnosis"]
    assert (d["limit"], d["cause"]) == ("conntrack table", "conntrack"), d
    assert f"in server host {prefix}-1" in d["summary"] and "of 300 entries" in d["summary"]
    assert 250 <= doc["peak_connections"] <= 300 and doc["connects"]["failed"].get("timeout", 0) > 0
    assert any(line.startswith("nf_conntrack_count ") and "of nf_conntrack_max 300" in line for line in d["evidence"])
    assert "nf_conntrack_max" in d["fix"] and _left(prefix) == []


@needs_net_admin
def test_a_run_with_hosts_of_its_own_removes_them_and_rides_out_faults_on_the_links(tmp_path):
    """--hosts 3 --loss 1% --rate 50mbit --link-down 3: 1% of each client host's TCP packets
    dropped each way, the links shaped, one link down for 3 s; 500 connections echo for 8 s with
    every echo matching, the retransmits counted from the hosts' own counters, and the hosts gone
    afterwards."""
    proc = _start(tmp_path, "--hosts", "3", "--connections", "500", "--hold", "8", "--echo-interval", "0.5",
                  "--loss", "1%", "--rate", "50mbit", "--link-down", "3", "--json")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]  # the outage is the run's own doing: not a failed run
    doc = json.loads(out)
    assert doc["peak_connections"] == 500 and doc["echo"]["mismatched"] == 0
    assert doc["echo"]["verified"] >= 500 * 10
    clients = [h for h in doc["hosts"]["hosts"] if h["role"] == "client"]
    assert len(clients) == 2 and all(h["loss_dropped"] > 0 for h in clients)
    assert all(h["shaped_bytes"] > 0 for h in clients)  # every byte went through the tbf
    assert sum(h["tcp"]["RetransSegs"] for h in clients) > 0
    assert doc["hosts"]["made_by_run"] and doc["hosts"]["loss_percent"] == 1.0
    # the first client host's link was down 3 s mid-hold: TCP retransmitted through it, and every
    # connection rode it out
    [outage] = [f for f in doc["faults"] if f.get("injected")]
    assert outage["what"] == f"link of {clients[0]['name']} down for 3 s"
    assert outage["retransmits"] > 0 and outage["connections_lost"] == 0
    assert _left(f"r{proc.pid % 1_000_000}") == []


def _hold_status(tmp_path) -> dict:
    return wait_status(tmp_path, lambda s: s["phase"] == "hold", timeout=60)


@needs_net_admin
@pytest.mark.parametrize("fault", ["SIGINT mid-ramp", "kill -9 of a worker", "kill -9 of the run"])
def test_the_runs_hosts_are_gone_after(tmp_path, fault):
    args = ["--hosts", "3", "--hold", "5", "--echo-interval", "1"]
    if fault == "SIGINT mid-ramp":
        args += ["--connections", "40000", "--ramp-rate", "2000"]
    else:
        args += ["--connections", "1000"]
    proc = _start(tmp_path, *args, session=True)
    prefix = f"r{proc.pid % 1_000_000}"
    if fault == "SIGINT mid-ramp":
        wait_status(tmp_path, lambda s: s["phase"] == "ramp" and s["totals"]["held"] > 0, timeout=60)
        pids = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    else:
        # the progress line as the hold begins comes after the run counted the hold in the server
        # host: what the kill then takes away comes after the peak the report shows
        read = []
        for line in proc.stderr:
            read.append(line)
            if "] hold: held " in line:
                break
        assert read and "] hold: held " in read[-1], "".join(read)[-3000:]
        status = _hold_status(tmp_path)
        pids = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        victim = proc.pid if fault == "kill -9 of the run" else status["workers"][0]["pid"]
        os.kill(victim, signal.SIGKILL)
    assert len(pids) >= 4  # servers, the master, a forker and workers on each client host, the reaper
    code = proc.wait(90)
    if fault == "kill -9 of the run":
        assert code == -9
        wait_until(lambda: _left(prefix) == [], 30, "the reaper removing the run's hosts")
    else:
        doc = load(next(tmp_path.glob("*/run.json")).parent)
        # Ctrl-C is an interrupted run (130); a worker killed is a fault the run did not plan (1)
        assert code == (130 if fault == "SIGINT mid-ramp" else 1) and doc["stopped_by"] == "interrupted"
        if fault == "kill -9 of a worker":
            assert any("Locust worker" in f["what"] for f in doc["faults"])
            assert doc["hosts"]["hosts"][0]["peak_held"] == 1000
    assert _left(prefix) == []
    assert_gone(pids, 15, "every process of the run ending")


@needs_net_admin
def test_the_web_ui_on_test_hosts_counts_in_the_server_host_and_writes_each_hosts_share(tmp_path):
    """`harness ui --server-host H1 --worker-hosts H2,H3`: a test started over HTTP (what START
    sends) ramps 300 connections from both client hosts; the live kernel count is the server
    host's; the test's run.json has each host's share."""
    from tests.test_webui import _held, _post, _reachable

    prefix = _prefix()
    ui = None
    try:
        netns.up(3, prefix)
        web_port = free_port()
        ui = subprocess.Popen([*HARNESS, "ui", "--server-host", f"{prefix}-1", "--worker-hosts",
                               f"{prefix}-2,{prefix}-3", "--workers", "1", "--web-port", str(web_port),
                               "--connections", "300", "--out", str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
        base = f"http://127.0.0.1:{web_port}"
        wait_until(lambda: _reachable(base) and _held(base)["totals"]["workers"] == 2, 30, "both workers reporting",
                   every=0.5)
        _post(base, "/swarm", user_count=300, spawn_rate=1000, hold=3)
        status = wait_until(lambda: (s := _held(base))["stopped_by"] == "target" and s, 40, "300 held", every=0.5)
        assert status["totals"]["held"] == 300 and status["totals"]["connects_failed"] == {}
        wait_until(lambda: _held(base)["kernel_established"] == 300, 20, "the server host's kernel counting 300",
                   every=0.5)
        run = wait_until(lambda: next(tmp_path.glob("*/run.json"), None), 40, "the test's run directory", every=0.5)
    finally:
        if ui is not None:
            os.killpg(ui.pid, signal.SIGINT)
            code = ui.wait(30)
        netns.down(prefix)
    assert code == 0, ui.stderr.read()
    doc = load(run.parent)
    assert doc["peak_connections"] == 300 and doc["echo"]["mismatched"] == 0
    shares = {h["name"]: h["peak_held"] for h in doc["hosts"]["hosts"] if h["role"] == "client"}
    assert shares == {f"{prefix}-2": 150, f"{prefix}-3": 150}
    assert _left(prefix) == []
