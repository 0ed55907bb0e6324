"""`harness compare`: the same run is "same" or "not significant"; real changes and different
machines are called out (the default proof's 100,000-connection run.json, series thinned)."""

from __future__ import annotations

import copy
from pathlib import Path

from harness.report.compare import compare, figures, verdict
from harness.system.files import load

FIXTURES = Path(__file__).parent / "fixtures"


def test_compare_same_run_is_same_or_not_significant():
    run = load(FIXTURES / "run-100k")
    text = compare(run, copy.deepcopy(run))
    assert "warning" not in text
    changes = [line.rsplit("   ", 1)[-1] for line in text.splitlines()[1:]]
    assert set(changes) <= {"same", "not significant", "no data"}, text


def test_compare_flags_real_changes_and_different_machines():
    a = load(FIXTURES / "run-100k")
    b = copy.deepcopy(a)
    b["machine"]["hostname"] = "elsewhere"
    b["limits"]["nofile_hard"] = 1024
    b["peak_connections"] = 50_000
    for point in b["series"]:
        point["server_rss_bytes"] = a["series"][0]["server_rss_bytes"] + 2 * (point["server_rss_bytes"] - a["series"][0]["server_rss_bytes"])
    text = compare(a, b)
    assert "warning: machines differ in hostname" in text and "warning: limits differ in nofile_hard" in text
    assert "-50.0%" in text
    fa = {f.name: f for f in figures(a)}
    fb = {f.name: f for f in figures(b)}
    name = "server memory per connection, KB"
    assert verdict(fa[name], fb[name]) not in ("not significant", "same")
