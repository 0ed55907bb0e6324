"""The harness's locustfile: `locust -f scenarios/locustfile.py --host tcp://127.0.0.1:9999 ...`.

Declares the harness's own arguments (shown in the web UI's start form where marked), and wires
each process at init: a process that runs users sets its own fd limit and source addresses and
reports its gauges; the master (or local runner) collects them; the web UI gets its tab.
"""

from __future__ import annotations

import resource
import socket

from locust import events
from locust.runners import LocalRunner, MasterRunner, WorkerRunner

from harness.core.planning import source_address, sources_for, users_per_client
from harness.system.limits import read_limits
from scenarios import board  # noqa: F401  (locust_fixes patches on import)
from scenarios import locust_fixes, webui
from scenarios.shape import StepRampShape  # noqa: F401  (Locust picks shapes up from this module)
from harness.core.addresses import source_error, target_error
from harness.core.protocols import PROTOCOLS
from harness.core.words import ECHO_MODES, USER_MODES
from harness.core.addresses import split_host_port
from harness.hosts.netns import lab_addresses
from scenarios.tally import TALLY
from scenarios.users import EchoUser  # noqa: F401  (Locust picks users up from this module)
from harness.system.procctl import die_with_parent


@events.init_command_line_parser.add_listener
def add_arguments(parser) -> None:
    # include_in_web_ui (True unless said otherwise) is understood by Locust's parser, not by
    # argument groups: the start form shows the run's knobs, not the plumbing.
    group = parser
    group.add_argument("--target-connections", type=int, default=1000, include_in_web_ui=False,
                       help="connections (users) to ramp to, where -u (the form's Number of users) is not given")
    group.add_argument("--echo-interval", type=float, default=5.0, include_in_web_ui=True,
                       help="seconds between echoes on each connection")
    group.add_argument("--echo-mode", choices=ECHO_MODES, default="closed", include_in_web_ui=True,
                       help="closed: the next echo an interval after the last answer (Locust's usual loop); "
                            "open: echoes on a fixed schedule, latency from the intended send time")
    group.add_argument("--payload-size", type=int, default=64, include_in_web_ui=True,
                       help="bytes per echo")
    group.add_argument("--protocol", choices=PROTOCOLS, default="echo", include_in_web_ui=False,
                       help="what the target speaks: echo, hold (connect and hold), line (--send, --expect), "
                            "redis (PING), http (GET --path)")
    group.add_argument("--send", default="", include_in_web_ui=False,
                       help="line: the request, with backslash escapes (e.g. 'version\\r\\n')")
    group.add_argument("--expect", default="", include_in_web_ui=False, help="line: what the reply starts with")
    group.add_argument("--path", default="/", include_in_web_ui=False, help="http: the path to GET")
    group.add_argument("--ramp-rate", type=float, default=1000.0, include_in_web_ui=False,
                       help="new connections per second while ramping, where -r (the form's Ramp up) is not given")
    group.add_argument("--hold-seconds", type=float, default=10.0, include_in_web_ui=True,
                       help="seconds to hold once the ramp ends")
    group.add_argument("--user-mode", choices=USER_MODES, default="driver", include_in_web_ui=False,
                       help="driver: one greenlet per process serves every user (lean, the default); "
                            "greenlet: one greenlet per user, as Locust users usually run")
    group.add_argument("--step-seconds", type=float, default=1.0, include_in_web_ui=False, help="ramp step length")
    group.add_argument("--max-seconds", type=float, default=600.0, include_in_web_ui=False, help="end the ramp after this many seconds")
    group.add_argument("--memory-floor", type=int, default=0, include_in_web_ui=False,
                       help="bytes of MemAvailable the ramp leaves free: below it the ramp stops (stopped_by memory)")
    group.add_argument("--echo-timeout", type=float, default=10.0, include_in_web_ui=False, help="seconds to wait for an echo")
    group.add_argument("--source-addresses", default="auto", include_in_web_ui=False,
                       help="'auto' (worker i binds 127.0.i+1.2, 127.0.i+1.3, ...) or a comma list")
    group.add_argument("--worker-fd-limit", type=int, default=0, include_in_web_ui=False,
                       help="soft RLIMIT_NOFILE of each user-running process (0: keep Locust's)")
    group.add_argument("--allow-non-loopback", action="store_true", include_in_web_ui=False,
                       help="allow a target outside 127.0.0.0/8 (load goes only to loopback otherwise)")
    group.add_argument("--test-hosts", action="store_true", include_in_web_ui=False,
                       help="the target and sources may also be the harness's test hosts (198.18.0.0/15)")
    group.add_argument("--worker-host", default="", include_in_web_ui=False,
                       help="the name this process reports its counts under (default: the machine's hostname)")
    group.add_argument("--server-gauges", default="", include_in_web_ui=False, help="the servers' gauge file (master)")
    group.add_argument("--server-netns", default="", include_in_web_ui=False,
                       help="the test host the servers run in (master): the kernel's count is read there")
    group.add_argument("--status-file", default="", include_in_web_ui=False, help="write the master's gauges here every s")
    group.add_argument("--ui-results", default="", include_in_web_ui=False,
                       help="harness ui: where each test's run directory is written (its report is linked)")
    group.add_argument("--kernel-interval", type=float, default=2.0, include_in_web_ui=False,
                       help="seconds between the master's counts of established connections (ss); 0: never")


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
        error = source_error(address, opts.allow_non_loopback, lab_addresses() if opts.test_hosts else None)
        if error:
            raise SystemExit(error)


@events.init.add_listener
def on_init(environment, runner, web_ui=None, **kwargs) -> None:
    opts = environment.parsed_options
    if opts is None:
        return
    if environment.host:
        host = split_host_port(environment.host, "--host", "tcp://127.0.0.1:9999")[0]
        error = target_error(host, opts.allow_non_loopback, lab_addresses() if opts.test_hosts else None)
        if error:
            raise SystemExit(error)
    if isinstance(runner, WorkerRunner) and getattr(opts, "processes", None):
        die_with_parent()  # forked by `locust --worker --processes`: end with the forker
    if isinstance(runner, (WorkerRunner, LocalRunner)):
        configure_user_process(opts, getattr(runner, "worker_index", 0))
        board.start_reporting(runner)
    if isinstance(runner, (MasterRunner, LocalRunner)):
        host, port = split_host_port(environment.host, "--host") if environment.host else (None, None)
        board.start_master(runner, opts.server_gauges or None, port, opts.status_file or None,
                            opts.kernel_interval, host, opts.server_netns)
        board.BOARD.ui_results = opts.ui_results
    if isinstance(runner, (MasterRunner, LocalRunner)):
        environment.events.reset_stats.add_listener(board.BOARD.reset_stats)
    if isinstance(runner, (MasterRunner, LocalRunner)) and environment.shape_class is not None:
        # test_stopping, not test_stop: the master fires test_stop only once its workers report no
        # users, seconds later, and by then a new test may have started
        environment.events.test_stopping.add_listener(lambda **_: environment.shape_class.stopped())
    if web_ui is not None:
        webui.extend(web_ui)
