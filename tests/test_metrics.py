"""`--metrics HOST:PORT`: the Locust master's Prometheus metrics, scraped by a real Prometheus
(Debian's, which the Makefile installs) every second into a temporary store, and read back through
Prometheus's own query API against the run's run.json."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request

import pytest

from scenarios.metrics import latency_histogram
from scenarios.tally import new_latency_histogram
from tests.helpers import ROOT, free_port, wait_until

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


@pytest.fixture
def prometheus(tmp_path, outside):
    """A Prometheus scraping 127.0.0.1:<port> every second: (the port to serve metrics on, its query URL)."""
    metrics_port, web_port = free_port(), free_port()
    conf = tmp_path / "prometheus.yml"
    conf.write_text("global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
                    "scrape_configs:\n"
                    f"  - {{job_name: fdcap, static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]}}\n")
    outside([PROMETHEUS, f"--config.file={conf}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{web_port}", "--log.level=warn"], port=web_port)
    base = f"http://127.0.0.1:{web_port}"
    wait_until(lambda: _get(f"{base}/-/ready") is not None, 30, "prometheus ready", every=0.2)
    # its discovery hands the scrape loop the target a few seconds after it is ready: scraping by then
    wait_until(lambda: query(base, "up"), 30, "prometheus scraping the (still empty) port", every=0.2)
    return metrics_port, base


def _get(url: str) -> bytes | None:
    try:
        return urllib.request.urlopen(url, timeout=5).read()
    except OSError:
        return None


def query(base: str, promql: str) -> dict[str, float]:
    """An instant query's result: each series' value by its labels (as 'k=v,...'; '' for none)."""
    body = json.loads(_get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})))
    assert body["status"] == "success", body
    return {",".join(f"{k}={v}" for k, v in sorted(r["metric"].items()) if k not in ("job", "instance", "__name__")):
            float(r["value"][1]) for r in body["data"]["result"]}


def test_prometheus_scrapes_the_run_and_its_numbers_are_run_jsons(tmp_path, prometheus):
    metrics_port, base = prometheus
    run = subprocess.run([sys.executable, "-m", "harness.cli", "run", "--backend", "selectors", "--connections", "3000",
                          "--fd-limit", "2000", "--processes", "1", "--workers", "1", "--hold", "3",
                          "--echo-interval", "0.5", "--port", "0", "--metrics", f"127.0.0.1:{metrics_port}",
                          "--out", str(tmp_path), "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    doc = json.loads(run.stdout)
    assert doc["stopped_by"] == "EMFILE" and doc["faults"] == []  # the last scrape's wait is no fault
    held = wait_until(lambda: query(base, "max_over_time(fdcap_connections_held[10m])"), 10, "the held gauge stored")
    assert held == {"": doc["peak_connections"]} and doc["peak_connections"] == 2000 - 10
    last = "last_over_time({}[10m])"
    refused = query(base, last.format("fdcap_server_refusals_total"))
    assert refused == {f"reason={k}": v for k, v in doc["connects"]["server_refused"].items()}
    failed = query(base, last.format("fdcap_connect_failures_total"))
    assert failed == {f"reason={k}": v for k, v in doc["connects"]["failed"].items()} and failed
    assert query(base, last.format('fdcap_connects_total{result="ok"}')) == {"result=ok": doc["connects"]["ok"]}
    assert query(base, last.format("fdcap_predicted_cap")) == {"": doc["predicted_cap"]}
    assert query(base, last.format('fdcap_stopped{stopped_by="EMFILE"}')) == {"stopped_by=EMFILE": 1.0}
    count = query(base, last.format("fdcap_request_latency_seconds_count"))[""]
    assert count == doc["echo_latency"]["count"] > 0


def test_the_latency_histogram_is_the_hdrhistograms_in_seconds_cumulative():
    histogram = new_latency_histogram()
    for us, times in ((80, 3), (400, 5), (2_000, 1), (3_000_000, 2)):
        for _ in range(times):
            histogram.record_value(us)
    family = latency_histogram(histogram.encode().decode())
    buckets = {s.labels["le"]: s.value for s in family.samples if s.name.endswith("_bucket")}
    assert buckets["0.0001"] == 3 and buckets["0.0005"] == 8 and buckets["0.0025"] == 9 and buckets["2.5"] == 9
    assert buckets["5"] == buckets["+Inf"] == 11
    assert latency_histogram("").samples[-2].value == 0  # no requests yet: an empty histogram


def test_metrics_outside_loopback_need_the_users_word():
    run = subprocess.run([sys.executable, "-m", "harness.cli", "run", "--connections", "10", "--metrics",
                          "198.51.100.7:9646"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "--allow-non-loopback" in run.stderr and len(run.stderr.splitlines()) == 1
