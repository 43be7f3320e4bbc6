"""Serve the gateway over HTTP: Streamable HTTP at /mcp, legacy SSE at /sse, health and readiness.

One port, one Starlette app. DNS-rebinding protection (Host and Origin checks) is on for the MCP
endpoints: loopback names are always accepted, anything else must be listed in
`[gateway] allowed_hosts` / `allowed_origins`.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.abc
import uvicorn
from mcp.server.sse import SseServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from mcpgw.auth.resource_server import Authenticator, RequireToken
from mcpgw.front.server import build_server
from mcpgw.gateway import Gateway

log = logging.getLogger("mcpgw.front")

LOOPBACK_HOSTS = ("127.0.0.1:*", "localhost:*", "[::1]:*", "127.0.0.1", "localhost", "[::1]")
LOOPBACK_ORIGINS = ("http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*")


def security_settings(gateway: Gateway) -> TransportSecuritySettings:
    settings = gateway.config.gateway
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[*LOOPBACK_HOSTS, *settings.allowed_hosts],
        allowed_origins=[*LOOPBACK_ORIGINS, *settings.allowed_origins],
    )


def build_app(gateway: Gateway) -> Starlette:
    """The ASGI app. Its lifespan runs the gateway (upstreams) and the MCP session manager."""
    server, _notifier = build_server(gateway, default_transport="http")
    security = security_settings(gateway)
    sessions = StreamableHTTPSessionManager(app=server, security_settings=security)
    sse = SseServerTransport("/messages/", security_settings=security)
    authenticator = Authenticator(gateway)

    async def handle_sse(request: Request) -> Response:
        async with sse.connect_sse(request.scope, request.receive, request._send) as (read, write):
            await server.run(read, write, server.create_initialization_options())
        return Response()

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(request: Request) -> Response:
        report = gateway.readiness()
        strict = request.query_params.get("strict") in ("1", "true")
        ready = gateway.settled and (not strict or report["upstreams_up"] == report["upstreams_total"])
        return JSONResponse(report, status_code=200 if ready else 503)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
            await tg.start(gateway.run)
            try:
                async with sessions.run():
                    yield
            finally:
                await authenticator.aclose()
            tg.cancel_scope.cancel()

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/mcp", StreamableHTTPASGIApp(sessions)),
            Route("/sse", handle_sse, methods=["GET"]),
            Mount("/messages/", app=sse.handle_post_message),
        ],
        lifespan=lifespan,
        middleware=[Middleware(RequireToken, authenticator=authenticator, name=gateway.config.gateway.name)],
    )


async def serve_http(gateway: Gateway, host: str, port: int) -> None:
    app = build_app(gateway)
    config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=math.ceil(gateway.config.gateway.shutdown_grace))
    server = uvicorn.Server(config)

    async def announce(task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        while not server.started:  # noqa: ASYNC110 - uvicorn offers no start-up event
            await anyio.sleep(0.01)
        for listener in server.servers:
            for sock in listener.sockets:
                bound: Any = sock.getsockname()
                shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
                log.info("serving MCP at http://%s:%d/mcp (Streamable HTTP) and /sse (legacy SSE); "
                         "health at /healthz, readiness at /readyz", shown, bound[1])

    async with anyio.create_task_group() as tg:
        tg.start_soon(announce)
        await server.serve()
        tg.cancel_scope.cancel()
