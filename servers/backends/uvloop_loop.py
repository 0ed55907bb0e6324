"""The `uvloop` backend: the asyncio backend's echo protocol and intake on libuv's event loop."""

from __future__ import annotations

import uvloop

from servers.backends import asyncio_loop as aio_backend
from servers.contract import ServeContext


def serve(ctx: ServeContext) -> None:
    aio_backend.serve(ctx, uvloop.new_event_loop)
