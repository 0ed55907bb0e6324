"""`Refused`: what the harness says when it will not (or cannot) do what was asked, in one line that
names the flag or the cause and the fix. Each layer's own error subclasses it, so the command line
turns every one of them into that line and exit code 2, without knowing them all."""

from __future__ import annotations


class Refused(Exception):
    """Bad input, or a machine that cannot do what was asked; the message names the fix."""
