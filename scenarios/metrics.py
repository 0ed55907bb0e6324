"""Prometheus metrics from the Locust master (`--metrics HOST:PORT`): what the master's board knows,
in Prometheus's text format at /metrics, read afresh at each scrape, with the official
`prometheus-client` (a custom collector over `BOARD`, served by gevent's WSGI server in the
master's own loop).

Names and labels follow Prometheus's conventions: a `fdcap_` prefix, `_total` for counters, base
units (seconds), and few labels: no label per connection or per port.

    fdcap_connections_held                  held now, as run.json counts it (the kernel's count, no
                                            more than the servers, or for a target the workers, hold)
    fdcap_connections{counted_by}           each count: kernel, servers, workers
    fdcap_connects_total{result}            ok / failed
    fdcap_connect_failures_total{reason}    by errno name or failure word (EMFILE, timeout, ws-close-1013)
    fdcap_server_refusals_total{reason}     the harness's own servers' refusals (EMFILE, ENFILE, ...)
    fdcap_requests_total{result}            verified / failed (echoes, pings, PUBLISHes, GETs)
    fdcap_request_failures_total{reason}
    fdcap_request_latency_seconds           a histogram, from the workers' merged HdrHistogram (after the ramp)
    fdcap_target_connections, fdcap_predicted_cap
    fdcap_server_process_connections{process}, fdcap_server_process_cap{process}
    fdcap_client_host_connections{host}     per client host (test hosts, outside workers)
    fdcap_phase{phase}                      1 for the phase the test is in
    fdcap_stopped{stopped_by}               1 once the test has stopped, by what
    fdcap_test                              the test's number (each START in the web UI is one)

Each scrape is a kept-alive HTTP connection (Prometheus keeps it), so the scrapes go on at the
machine's file-table limit, where a new socket would fail.
"""

from __future__ import annotations

import time

import gevent
from gevent.pywsgi import WSGIServer
from hdrh.histogram import HdrHistogram
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from harness.core.addresses import split_host_port
from scenarios.board import BOARD

PHASES = ("idle", "ramp", "hold", "done")
# request latency buckets, seconds: loopback echoes take ~0.1 ms, a loaded target seconds
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# At the end the master waits this long at most for a scrape of its last numbers, where something
# scraped it within SCRAPING_S (the harness gives a master WORKER_EXIT_GRACE_S to follow its workers)
LAST_SCRAPE_WAIT_S = 1.5
SCRAPING_S = 5.0


class BoardCollector:
    """The board's numbers as metric families, read at each scrape."""

    def __init__(self, predicted_cap: int = 0) -> None:
        self.predicted_cap = predicted_cap
        self.scrapes = 0
        self.last_scrape = 0.0

    def collect(self):
        self.scrapes, self.last_scrape = self.scrapes + 1, time.monotonic()
        status = BOARD.status()
        totals = status.totals
        servers = sum(s["open"] for s in status.servers)
        kernel = status.kernel_established
        own = BOARD.server_board is not None
        counted = {"workers": totals.held, **({"servers": servers} if own else {}),
                   **({"kernel": kernel} if kernel is not None else {})}
        held = min(kernel if kernel is not None else totals.held, servers if own else totals.held)
        yield _gauge("fdcap_connections_held", "Connections held now, as run.json counts them", held)
        yield _labelled(GaugeMetricFamily, "fdcap_connections", "Connections held now, by who counted them",
                        "counted_by", counted)
        yield _labelled(CounterMetricFamily, "fdcap_connects", "Connects by result", "result",
                        {"ok": totals.connects_ok, "failed": sum(totals.connects_failed.values())})
        yield _labelled(CounterMetricFamily, "fdcap_connect_failures", "Failed connects by errno name or failure word",
                        "reason", totals.connects_failed)
        yield _labelled(CounterMetricFamily, "fdcap_server_refusals", "The harness's own servers' refusals by reason",
                        "reason", status.server_refusals)
        yield _labelled(CounterMetricFamily, "fdcap_requests", "Requests by result", "result",
                        {"verified": totals.echoes_verified, "failed": sum(totals.echo_failed.values())})
        yield _labelled(CounterMetricFamily, "fdcap_request_failures", "Failed requests by failure word", "reason",
                        totals.echo_failed)
        yield latency_histogram(status.echo_latency.get("histogram", ""))
        yield _gauge("fdcap_target_connections", "The connections the test ramps to", status.connections)
        yield _gauge("fdcap_predicted_cap", "The cap the plan predicted before the run", self.predicted_cap)
        yield _labelled(GaugeMetricFamily, "fdcap_server_process_connections", "Each server process's open connections",
                        "process", {f"p{i}": s["open"] for i, s in enumerate(status.servers)})
        yield _labelled(GaugeMetricFamily, "fdcap_server_process_cap", "Each server process's cap (fd limit less held)",
                        "process", {f"p{i}": s["cap"] for i, s in enumerate(status.servers)})
        by_host: dict[str, int] = {}
        for w in status.workers:
            by_host[w.get("host", "")] = by_host.get(w.get("host", ""), 0) + w.get("held", 0)
        yield _labelled(GaugeMetricFamily, "fdcap_client_host_connections", "Connections held by each client host",
                        "host", by_host)
        yield _labelled(GaugeMetricFamily, "fdcap_phase", "1 for the phase the test is in", "phase",
                        {p: int(p == status.phase) for p in PHASES})
        yield _labelled(GaugeMetricFamily, "fdcap_stopped", "1 once the test has stopped, by what", "stopped_by",
                        {status.stopped_by: 1} if status.stopped_by else {})
        yield _gauge("fdcap_test", "The test's number (each START in the web UI is one)", status.test)


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, value=value)


def _labelled(kind, name: str, text: str, label: str, values: dict):
    family = kind(name, text, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([str(key)], value)
    return family


def latency_histogram(encoded: str) -> HistogramMetricFamily:
    """The merged HdrHistogram (microseconds) as Prometheus buckets (seconds, cumulative)."""
    counts = [0] * len(BUCKETS)
    total, total_us = 0, 0
    if encoded:
        histogram = HdrHistogram.decode(encoded)
        for item in histogram.get_recorded_iterator():
            value_us, count = item.value_iterated_to, item.count_at_value_iterated_to
            total += count
            total_us += value_us * count
            for i, bound in enumerate(BUCKETS):
                if value_us <= bound * 1e6:
                    counts[i] += count
    buckets = [(f"{b:g}", c) for b, c in zip(BUCKETS, counts)] + [("+Inf", total)]
    return HistogramMetricFamily("fdcap_request_latency_seconds", "Request latency after the ramp (from the "
                                 "intended send time in the open loop)", buckets=buckets, sum_value=total_us / 1e6)


COLLECTOR = BoardCollector()


def serve(bind: str, predicted_cap: int = 0) -> WSGIServer:
    """Serve /metrics on `bind` (HOST:PORT) from the master's own gevent loop."""
    host, port = split_host_port(bind, "--metrics", "127.0.0.1:9646")
    COLLECTOR.predicted_cap = predicted_cap
    registry = CollectorRegistry(auto_describe=False)
    registry.register(COLLECTOR)
    server = WSGIServer((host, port), make_wsgi_app(registry), log=None, error_log=None)
    server.start()
    return server


def last_scrape(stopped_at: float, timeout: float = LAST_SCRAPE_WAIT_S) -> bool:
    """At the end: where something is scraping (it did within SCRAPING_S), wait for a scrape after
    `stopped_at`, so the last numbers are read; bounded by `timeout`. Whether one came."""
    if not COLLECTOR.scrapes or time.monotonic() - COLLECTOR.last_scrape > SCRAPING_S:
        return False
    deadline = time.monotonic() + timeout
    while COLLECTOR.last_scrape < stopped_at and time.monotonic() < deadline:
        gevent.sleep(0.05)
    return COLLECTOR.last_scrape >= stopped_at
