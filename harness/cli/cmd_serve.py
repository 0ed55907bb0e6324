"""`harness serve BACKEND`: an echo server group in the foreground, with its gauges."""

from __future__ import annotations

from harness.cli.common import Command
from servers.foreground import add_arguments, run

COMMAND = Command("serve", "run an echo server backend in the foreground, with live gauges", add_arguments, run)
