"""`harness tune`: the sysctls N connections need (pure), and --apply/--restore on a real kernel,
inside a network namespace of the test's own (net.core.somaxconn is the namespace's), so the
machine's own values are never touched."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from harness.core.tuning import needed, sysctl_lines
from tests.helpers import ROOT

LIMITS = {"file_nr": 5_000, "file_max": 2_470_878, "nr_open": 1_048_576, "nofile_hard": 20_000,
          "ip_local_port_range": [32768, 60999], "somaxconn": 4096, "conntrack_count": 0}
SYSCTLS = {"fs.file-max": "2470878", "fs.nr_open": "1048576", "net.ipv4.ip_local_port_range": "32768 60999",
           "net.core.somaxconn": "4096", "net.ipv4.tcp_mem": "287901 383868 575802",
           "net.netfilter.nf_conntrack_max": None}


def test_two_million_here_needs_fs_file_max_for_both_ends_and_nothing_else():
    rows = {r.name: r for r in needed(LIMITS, SYSCTLS, 2_000_000)}
    assert [n for n, r in rows.items() if r.binds] == ["fs.file-max"]
    assert int(rows["fs.file-max"].needed) == round((5_000 + 4_000_000) * 1.05 + 0.5) + 10_000
    assert sysctl_lines(list(rows.values())) == [f"sysctl -w fs.file-max={rows['fs.file-max'].needed}"]
    assert "142 source addresses" in rows["net.ipv4.ip_local_port_range"].why  # 2M / 14,116 per address
    assert not any(r.binds for r in needed(LIMITS, SYSCTLS, 1_000_000))  # 2.1M files fit in 2.47M


def test_a_small_somaxconn_and_a_tracking_conntrack_bind():
    rows = {r.name: r for r in needed({**LIMITS, "conntrack_count": 10},
                                      {**SYSCTLS, "net.core.somaxconn": "128",
                                       "net.netfilter.nf_conntrack_max": "262144"}, 500_000)}
    assert rows["net.core.somaxconn"].binds and rows["net.core.somaxconn"].needed == "4096"
    assert rows["net.netfilter.nf_conntrack_max"].binds and rows["net.netfilter.nf_conntrack_max"].needed == "500000"


def _in_own_netns(script: str, tmp_path, *prefix: str) -> subprocess.CompletedProcess:
    harness = f"{sys.executable} -m harness.cli"
    return subprocess.run([*prefix, "unshare", "--net", "sh", "-ec", script.replace("{harness}", harness)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env={"HARNESS_TUNE_STATE": str(tmp_path / "sysctl.json"), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


def test_apply_writes_only_what_binds_saves_it_first_and_restore_puts_it_back(tmp_path):
    done = _in_own_netns("""
        echo 100 > /proc/sys/net/core/somaxconn
        {harness} tune --connections 1000
        echo "after dry run: $(cat /proc/sys/net/core/somaxconn)"
        {harness} tune --connections 1000 --apply
        echo "after apply: $(cat /proc/sys/net/core/somaxconn) saved: $(cat $HARNESS_TUNE_STATE)"
        {harness} tune --restore
        echo "after restore: $(cat /proc/sys/net/core/somaxconn) state: $(ls $HARNESS_TUNE_STATE 2>/dev/null || echo gone)"
    """, tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "net.core.somaxconn: 100 → needs 4096 [BINDS]" in out and "sysctl -w net.core.somaxconn=4096" in out
    assert "after dry run: 100" in out  # nothing is changed without --apply
    assert "after apply: 4096 saved:" in out and '"net.core.somaxconn": "100"' in out.split("after apply")[1]
    assert "after restore: 100 state: gone" in out


def test_apply_as_a_user_who_may_not_write_sysctls_is_one_line_and_exit_2():
    # a directory `nobody` may write in: the state file could be saved, the sysctl is what is refused
    tmp_path = Path(tempfile.mkdtemp(prefix="harness-tune-test-", dir="/tmp"))
    tmp_path.chmod(0o777)
    done = _in_own_netns("""
        echo 100 > /proc/sys/net/core/somaxconn
        setpriv --reuid=65534 --regid=65534 --clear-groups {harness} tune --connections 1000 --apply
    """, tmp_path)
    assert done.returncode == 2, done.stderr
    assert not (tmp_path / "sysctl.json").exists()  # nothing changed, nothing to restore
    assert done.stderr.strip().splitlines() == [
        "harness tune: error: writing net.core.somaxconn needs root (CAP_SYS_ADMIN or CAP_NET_ADMIN); run harness "
        "tune --apply as root, or type the sysctl -w lines above"]
    shutil.rmtree(tmp_path)


def test_a_state_file_that_cannot_be_read_is_never_overwritten(tmp_path, monkeypatch):
    """It holds the machine's own values: a second --apply must not replace them with {}."""
    from harness.system import sysctl_state

    state = tmp_path / "sysctl.json"
    state.write_text("{not json")
    monkeypatch.setattr(sysctl_state, "STATE", state)
    import pytest

    with pytest.raises(sysctl_state.TuneError, match="cannot be read"):
        sysctl_state.saved()
    assert state.read_text() == "{not json"
