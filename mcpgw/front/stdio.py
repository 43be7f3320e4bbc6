"""Serve the gateway to one local agent over stdin/stdout (what Claude Desktop launches).

Only protocol goes to stdout; the SDK points fd 1 at stderr while serving, and all logging is
configured to stderr by the CLI. When the agent closes stdin, the gateway shuts down and its
stdio upstreams are terminated with it.
"""

from __future__ import annotations

import anyio
from mcp.server.stdio import stdio_server

from mcpgw.front.server import build_server
from mcpgw.gateway import Gateway


async def serve_stdio(gateway: Gateway) -> None:
    server, _notifier = build_server(gateway, default_transport="stdio")
    async with anyio.create_task_group() as tg:
        await tg.start(gateway.run)
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())
        tg.cancel_scope.cancel()
