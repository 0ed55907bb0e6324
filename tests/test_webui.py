"""The web UI, driven in headless Chromium (Debian's, through Playwright; no browser download):
`harness ui` as a user runs it, a small run started from the form, the Connections tab checked
for live counts, then Ctrl-C and nothing left behind."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import ROOT, process_alive

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (make test installs it)")
if not os.path.exists(CHROMIUM):
    pytest.skip("Debian's chromium is not installed here (make test installs it with apt-get as root)",
                allow_module_level=True)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]


def _children(pid: int) -> list[int]:
    import psutil
    return [p.pid for p in psutil.Process(pid).children(recursive=True)]


def test_start_a_run_from_the_form_and_watch_the_connections_tab(tmp_path):
    from harness.run.cluster import free_port

    web_port, port = free_port(), free_port()
    ui = subprocess.Popen([sys.executable, "-m", "harness.cli", "ui", "--port", str(port), "--web-port",
                           str(web_port), "--workers", "2"], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        ui.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+", ui.stdout.readline()).group(0)
        # A server process, the master, Locust's worker parent and the two workers it forks (after
        # importing Locust, so a moment after the URL is printed).
        deadline = time.monotonic() + 15
        while len(children := _children(ui.pid)) < 5 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(children) >= 5
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            deadline = time.monotonic() + 20
            while True:  # the master may still be starting
                try:
                    page.goto(url)
                    break
                except playwright.Error:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
            page.get_by_text("Custom parameters").click()
            page.fill("input[name=targetConnections]", "-5")  # out of range: a visible error, no run
            page.get_by_role("button", name="START").click()
            page.get_by_text("target connections -5 is out of range").wait_for(timeout=10_000)
            page.fill("input[name=targetConnections]", "150")
            page.fill("input[name=echoInterval]", "1")
            page.fill("input[name=holdSeconds]", "60")
            page.get_by_role("button", name="START").click()
            page.get_by_role("tab", name="Connections").click()
            table = page.locator("table")
            # Live counts: the kernel, the server and both workers, as the run holds 150.
            table.get_by_text("established on port").wait_for(timeout=20_000)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                text = table.inner_text()
                rows = {line.split("\t")[0] + line.split("\t")[1]: line.split("\t") for line in text.splitlines()[1:]}
                kernel = next((r for k, r in rows.items() if k.startswith("kernel")), None)
                workers = [r for k, r in rows.items() if k.startswith("locust worker")]
                server = next((r for k, r in rows.items() if k.startswith("server process")), None)
                if kernel and kernel[2] == "150" and server and server[2] == "150" and len(workers) == 2 \
                        and sorted(w[2] for w in workers) == ["75", "75"]:
                    break
                time.sleep(0.5)
            else:
                pytest.fail(f"the Connections tab never showed 150 held:\n{text}")
            assert "stopped by target" in text
            page.screenshot(path=str(tmp_path / "connections.png"))
            browser.close()
        assert (tmp_path / "connections.png").stat().st_size > 10_000
    finally:
        os.killpg(ui.pid, signal.SIGINT)  # Ctrl-C in the terminal
        code = ui.wait(30)
    assert code == 0, ui.stderr.read()
    deadline = time.monotonic() + 5
    while any(process_alive(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(process_alive(c) for c in children), "harness ui left processes behind"
