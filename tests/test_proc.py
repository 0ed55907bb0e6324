"""servers.proc: what a forked server process does to the fds and objects it inherits."""

from __future__ import annotations

import gc
import os
import socket

from servers import proc


def test_inherited_garbage_never_closes_an_fd_the_child_reuses():
    # A socket left in an uncollected cycle by the parent, as a test suite leaves many.
    gc.collect()
    gc.disable()
    try:
        garbage = socket.socket()
        number = garbage.fileno()
        cycle = [garbage]
        cycle.append(cycle)
        del garbage, cycle
        pid = os.fork()
        if pid == 0:
            code = 3
            try:
                proc.close_fds_except(set())
                mine = [os.open("/dev/null", os.O_RDONLY)]
                while mine[-1] < number:  # the child's own fds take the freed numbers, as a server's do
                    mine.append(os.open("/dev/null", os.O_RDONLY))
                gc.enable()
                gc.collect()  # without the freeze, this frees the inherited socket, which closes `number`
                os.fstat(number)
                code = 0
            except OSError:
                code = 1
            finally:
                os._exit(code)
    finally:
        gc.enable()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "a collected parent object closed the child's fd"
    gc.collect()
