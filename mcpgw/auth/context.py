"""The principal of the request being served, handed from the HTTP layer to the pipeline.

The SDK runs each MCP request in a copy of the context of the HTTP request that carried it, so
a context variable set by the auth middleware is what the identify stage sees for that request
(also for stateful sessions, whose handlers run in the session's task).
"""

from __future__ import annotations

from contextvars import ContextVar

from mcpgw.pipeline.step import Principal

current_principal: ContextVar[Principal | None] = ContextVar("mcpgw_principal", default=None)
