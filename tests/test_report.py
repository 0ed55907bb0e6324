"""Reports and comparisons built from a small recorded run (tests/fixtures: the default proof's
100,000-connection run.json with its series thinned, its sweep, and two benchmark files)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.report import page, plots
from harness.report.page import build, collect
from harness.system.files import load
from tests.helpers import ROOT

FIXTURES = Path(__file__).parent / "fixtures"
INPUTS = [FIXTURES / "run-100k", FIXTURES / "sweep", FIXTURES / "bench-echo.json", FIXTURES / "bench-memory.json"]
EXPECTED_PNGS = {"connections-0-asyncio-100000.png", "rate-latency-0-asyncio-100000.png", "cap-vs-limit-0.png",
                 "memory.png", "echo-throughput.png"}


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    return build(INPUTS, tmp_path_factory.mktemp("report"))


def test_report_has_every_plot_embedded_and_nothing_outside(report):
    assert {p.name for p in report.parent.glob("*.png")} == EXPECTED_PNGS
    page = report.read_text()
    assert page.count('src="data:image/png;base64,') == len(EXPECTED_PNGS)
    assert not re.search(r'(src|href)="(?!data:)', page), "the report references something outside itself"
    assert report.stat().st_size < 2_000_000
    assert "held 100,000 connections on 127.0.0.1:9999: stopped by target; 65,535 crossed at" in page
    assert oct(report.stat().st_mode & 0o777) == "0o644"


def test_report_opens_offline_in_chromium_with_every_image_loaded(report, tmp_path):
    pw = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (make test installs it)")
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(chromium):
        pytest.skip("Debian's chromium is not installed here (make test installs it with apt-get as root)")
    failed = []
    with pw.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu",
                                    "--disable-background-networking", "--disable-component-update"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("requestfailed", lambda request: failed.append(request.url))
        page.goto(report.as_uri())
        widths = page.evaluate("Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        # Each section, as a picture and by the data it shows.
        sections = page.locator("section")
        shots = {}
        for i in range(sections.count()):
            section = sections.nth(i)
            name = section.get_attribute("id") or section.get_attribute("class")
            section.screenshot(path=str(tmp_path / f"{name}.png"))
            shots[name] = ((tmp_path / f"{name}.png").stat().st_size, section.inner_text())
        browser.close()
    assert len(widths) == len(EXPECTED_PNGS) and all(w > 300 for w in widths), widths
    assert failed == []
    assert (tmp_path / "report.png").stat().st_size > 50_000
    size, text = shots["run-0"]
    assert size > 20_000 and "held 100,000 connections on 127.0.0.1:9999" in text and "stopped by target" in text
    assert "Memory per connection: server" in text and "RLIMIT_NOFILE soft / hard" in text
    size, text = shots["sweep"]
    assert size > 5_000 and "asyncio: slope 1.0" in text and "1,014" in text
    plots_shown = {name: size for name, (size, _) in shots.items() if name.startswith("plot-")}
    assert set(plots_shown) == {f"plot-{n.removesuffix('.png')}" for n in EXPECTED_PNGS}
    assert all(size > 20_000 for size in plots_shown.values()), plots_shown


def test_connections_plot_draws_each_process_its_cap_and_65535():
    run = load(FIXTURES / "run-100k")
    fig = plots.connections_over_time(run)
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert len(lines) == run["server_processes"] + 3  # each process, the servers' total, the cap, 65,535
    levels = {line.get_ydata()[0] for line in lines if len(set(line.get_ydata())) == 1}
    assert 65_535 in levels and run["server_fd_limit"] - run["server_held_fds"] in levels
    total = next(line for line in lines if line.get_label().startswith("all (servers"))
    assert max(total.get_ydata()) == run["peak_connections_servers"] == 100_000
    # The kernel's counts are points: every sample of this fixture, which predates kernel_counted.
    [kernel] = [c for c in ax.collections if c.get_label() == "all (kernel count, ss)"]
    assert len(kernel.get_offsets()) == len(run["series"])
    assert max(kernel.get_offsets()[:, 1]) == run["peak_connections"] == 100_000
    assert ax.get_ylim()[1] == pytest.approx(100_000 * 1.12)


def test_cap_plot_draws_the_fit_and_fd_setsize():
    sweep = json.loads((FIXTURES / "sweep" / "sweep.json").read_text())
    fig = plots.cap_vs_fd_limit(sweep)
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert sum("cap = 1.000 × limit" in label for label in labels) == len(sweep["fits"])
    assert any("FD_SETSIZE" in label for label in labels)
    points = sum(len(c.get_offsets()) for c in ax.collections)
    assert points == len(sweep["points"])


def test_memory_and_throughput_bars_hold_the_recorded_figures():
    run = load(FIXTURES / "run-100k")
    bench_memory = json.loads((FIXTURES / "bench-memory.json").read_text())
    ax = plots.memory_per_connection([run], bench_memory).axes[0]
    tops = {}
    for patch in ax.patches:
        x = round(patch.get_x() + patch.get_width() / 2)
        tops[x] = max(tops.get(x, 0), patch.get_y() + patch.get_height())
    m = run["memory"]
    assert tops[0] == pytest.approx(sum(m.values()) / 1024)
    bench_echo = json.loads((FIXTURES / "bench-echo.json").read_text())
    bars = plots.echo_throughput(bench_echo).axes[0].patches
    assert [b.get_height() for b in bars] == [r["req_per_s"] for r in bench_echo["rows"]]


def test_latency_is_drawn_over_time_with_the_ramp_and_hold_shaded():
    run = load(FIXTURES / "run-100k")
    ax_rate, ax_lat = plots.rate_and_latency(run).axes
    assert [line.get_label() for line in ax_lat.get_lines()] == ["p50", "p90", "p99", "max"]
    assert list(ax_lat.get_lines()[0].get_xdata()) == [p["t"] for p in run["latency_series"] if p["p50"] is not None]
    (ramp_start, ramp_end), (hold_start, hold_end) = plots.phases(run)
    assert ramp_end - ramp_start == pytest.approx(run["ramp_s"]) and hold_end > hold_start >= ramp_start
    for ax in (ax_rate, ax_lat):
        spans = {p.get_label(): p for p in ax.patches}
        assert set(spans) == {"ramp", "hold"}
        assert spans["ramp"].get_x() == ramp_start  # an axvspan is a rectangle from x to x + width
    assert ax_rate.yaxis.get_major_formatter()(100_000, 0) == "100,000"  # thousands separated


def test_memory_parts_and_whole_agree_or_say_why():
    from harness.report.page import memory_sentence

    run = load(FIXTURES / "run-100k")
    text = memory_sentence(run)
    m = run["memory"]
    parts = (m["server_rss_per_conn_bytes"] + m["locust_rss_per_conn_bytes"] + m["kernel_slab_per_conn_bytes"]) / 1024
    assert f"= {parts:.2f} KB" in text
    agree = {**run, "memory": {**m, "system_per_conn_bytes": parts * 1024}}
    assert memory_sentence(agree).endswith("the parts and the whole agree.")
    more = {**run, "memory": {**m, "system_per_conn_bytes": (parts + 4) * 1024}}
    assert "+4.00 KB are what the parts do not count" in memory_sentence(more)


def test_every_figure_draws_its_data():
    """A figure with no lines, points or bars (a "no data" plot) fails here, whatever the PNG looks like."""
    for name, caption, fig in page.figures(collect(INPUTS)):
        for ax in fig.axes:
            drawn = ([line for line in ax.get_lines() if len(line.get_xdata())]
                     + [c for c in ax.collections if len(c.get_offsets())] + [b for b in ax.patches if b.get_height()])
            assert drawn, f"{name}: an axis draws nothing"
        plots.plt.close(fig)


def test_cli_report_and_bad_input(tmp_path):
    result = subprocess.run([sys.executable, "-m", "harness.cli", "report", *map(str, INPUTS), "--out",
                             str(tmp_path / "report")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "report.html" in result.stdout
    assert (tmp_path / "report" / "report.html").stat().st_size > 100_000
    bad = subprocess.run([sys.executable, "-m", "harness.cli", "report", "/nonexistent"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "is not a run directory" in bad.stderr
    assert collect([FIXTURES / "sweep"]).sweeps


def test_the_report_says_the_protocol_its_tls_and_each_stages_latency():
    from harness.report.page import protocol_text, stage_latency

    run = {"config": {"protocol": "websocket"}, "latency_ms": {
        "connect": {"p50": 0.2, "p99": 1.0}, "tls-handshake": {"p50": 3.0, "p99": 9.0},
        "ws-upgrade": {"p50": 1.0, "p99": 4.0}, "websocket": {"p50": 0.5, "p99": 2.0}},
        "tls": {"handshakes": 10, "resumed": 0, "version": {"TLSv1.3": 10}, "cipher": {"TLS_AES_256_GCM_SHA384": 10},
                "group": {"X25519": 10}, "alpn": {"": 10}}}
    assert protocol_text(run) == "websocket over TLSv1.3 (TLS_AES_256_GCM_SHA384, X25519; 0 of 10 resumed)"
    assert stage_latency(run) == "connect 0.2 / 1 ms; tls-handshake 3 / 9 ms; ws-upgrade 1 / 4 ms"
    assert protocol_text({"config": {}, "tls": None}) == "echo"
