"""The harness's locustfile: `locust -f scenarios/locustfile.py --host tcp://127.0.0.1:9999 ...`.

Declares the run's options from the one table the harness hands them from (`harness.core.options`,
the same flags and defaults), and the plumbing only the harness passes; then wires each process at
init: a process that runs users sets its own fd limit and source addresses and reports its tally;
the master (or local runner) collects the reports; the web UI gets its tab.
"""

from __future__ import annotations

import resource
import socket
import time

from locust import events
from locust.runners import LocalRunner, MasterRunner, WorkerRunner

from harness.core.addresses import source_error, split_host_port, target_error
from harness.core.options import OPTIONS
from harness.core.planning import source_address, sources_for, users_per_client
from harness.hosts.netns import lab_addresses
from harness.system.limits import read_limits
from harness.system.procctl import die_with_parent
from scenarios import board, link, locust_fixes, metrics, reporting, webui  # noqa: F401  (locust_fixes patches on import)
from scenarios.shape import StepRampShape  # noqa: F401  (Locust picks shapes up from this module)
from scenarios.tally import TALLY
from scenarios.users import EchoUser  # noqa: F401  (Locust picks users up from this module)

# Plumbing the harness passes and a user never types: (flag, type, default, help).
PLUMBING = (
    ("--test-hosts", bool, False, "the target and sources may also be the harness's test hosts"),
    ("--worker-host", str, "", "the name this process reports its counts under (default: the hostname)"),
    ("--server-gauges", str, "", "the servers' gauge file (master)"),
    ("--server-netns", str, "", "the test host the servers run in (master): the kernel's count is read there"),
    ("--status-file", str, "", "write the master's status here every second"),
    ("--ui-results", str, "", "harness ui: where each test's run directory is written (its report is linked)"),
    ("--kernel-interval", float, 2.0, "seconds between the master's counts of established connections; 0: never"),
    ("--metrics-bind", str, "", "serve Prometheus metrics at HOST:PORT/metrics (master)"),
    ("--predicted-cap", int, 0, "the cap the plan predicted, for the metrics (master)"),
)


@events.init_command_line_parser.add_listener
def add_arguments(parser) -> None:
    # include_in_web_ui is understood by Locust's parser: the start form shows the run's knobs
    for option in OPTIONS:
        if option.kind is bool:
            kwargs = {"action": "store_true"}
        elif option.kind is list:
            kwargs = {"action": "append", "default": option.default}
        else:
            kwargs = {"type": option.kind, "default": option.default}
        if option.choices:
            kwargs["choices"] = option.choices
        parser.add_argument(option.flag, include_in_web_ui=option.web_ui, help=option.help, **kwargs)
    for flag, kind, default, help_ in PLUMBING:
        kwargs = {"action": "store_true"} if kind is bool else {"type": kind, "default": default}
        parser.add_argument(flag, include_in_web_ui=False, help=help_, **kwargs)


def labs_if(test_hosts: bool) -> set[str] | None:
    return lab_addresses() if test_hosts else None


def configure_user_process(opts, worker_index: int) -> None:
    """Set this process's fd limit, the users it may hold, its source addresses and what it may load."""
    TALLY.allow_non_loopback, TALLY.test_hosts = opts.allow_non_loopback, opts.test_hosts
    TALLY.host = opts.worker_host or socket.gethostname()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if opts.worker_fd_limit:
        if hard != resource.RLIM_INFINITY and opts.worker_fd_limit > hard:
            raise SystemExit(f"--worker-fd-limit {opts.worker_fd_limit} exceeds the hard limit {hard}; lower it")
        soft = opts.worker_fd_limit
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    TALLY.max_users = users_per_client(soft)
    if opts.source_addresses == "auto":
        count = sources_for(TALLY.max_users, read_limits())
        TALLY.sources = [source_address(worker_index, k) for k in range(count)]
    else:
        TALLY.sources = [a.strip() for a in opts.source_addresses.split(",") if a.strip()]
    for address in TALLY.sources:
        error = source_error(address, opts.allow_non_loopback, labs_if(opts.test_hosts))
        if error:
            raise SystemExit(error)


@events.init.add_listener
def on_init(environment, runner, web_ui=None, **kwargs) -> None:
    opts = environment.parsed_options
    if opts is None:
        return
    host, port = split_host_port(environment.host, "--host") if environment.host else (None, None)
    if host:
        error = target_error(host, opts.allow_non_loopback, labs_if(opts.test_hosts))
        if error:
            raise SystemExit(error)
    if isinstance(runner, WorkerRunner) and getattr(opts, "processes", None):
        die_with_parent()  # forked by `locust --worker --processes`: end with the forker
    if isinstance(runner, (WorkerRunner, LocalRunner)):
        link.bind(environment)
        configure_user_process(opts, getattr(runner, "worker_index", 0))
        reporting.start_reporting(runner)
    if isinstance(runner, (MasterRunner, LocalRunner)):
        board.start_master(runner, opts.server_gauges or None, port, opts.status_file or None,
                           opts.kernel_interval, host, opts.server_netns)
        board.BOARD.ui_results = opts.ui_results
        if opts.metrics_bind:
            metrics.serve(opts.metrics_bind, opts.predicted_cap)
            # the last numbers are scraped before the master goes (where something scrapes)
            environment.events.quitting.add_listener(lambda **_: metrics.last_scrape(time.monotonic()))
        environment.events.reset_stats.add_listener(board.BOARD.reset_stats)
        if environment.shape_class is not None:
            # test_stopping, not test_stop: the master fires test_stop only once its workers report
            # no users, seconds later, and by then a new test may have started
            environment.events.test_stopping.add_listener(lambda **_: environment.shape_class.stopped())
    if web_ui is not None:
        webui.extend(web_ui)
    if isinstance(runner, MasterRunner) and opts.headless and opts.expect_workers:
        locust_fixes.wait_for_workers(runner, opts.expect_workers)  # its reports are heard by now
