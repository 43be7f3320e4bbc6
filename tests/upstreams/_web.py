"""Serve a test upstream's ASGI app on a free loopback port and say which (`PORT <n>` on stdout),
the convention `tests/conftest.py` waits for."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import uvicorn


async def serve_on_free_port(app: Any, on_port: Callable[[int], None] | None = None) -> None:
    userver = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))

    async def announce() -> None:
        while not userver.started:
            await anyio.sleep(0.01)
        port: int = userver.servers[0].sockets[0].getsockname()[1]
        if on_port is not None:
            on_port(port)
        print(f"PORT {port}", flush=True)

    async with anyio.create_task_group() as tg:
        tg.start_soon(announce)
        await userver.serve()
        tg.cancel_scope.cancel()
