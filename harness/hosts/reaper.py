"""`python -m harness.hosts.reaper PREFIX`: remove lab PREFIX once stdin reaches EOF.

Started by a run that made its own test hosts, with a pipe on stdin whose other end only the run
holds: when the run ends (it closes the pipe) or dies (the kernel closes it, kill -9 included),
the read returns and the lab is removed. It ignores SIGINT and SIGTERM, so a Ctrl-C or a signal
to the run's group cannot stop it before it has cleaned up.
"""

from __future__ import annotations

import signal
import sys

from harness.hosts import netns


def main(prefix: str) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.stdin.buffer.read()
    removed = netns.down(prefix, end_processes=True)  # everything in the run's own lab is the run's
    if removed:
        print(f"harness hosts reaper: removed {', '.join(removed)} (the run that made them ended without)",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
