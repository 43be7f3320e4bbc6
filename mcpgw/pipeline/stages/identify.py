"""Identify: decide who the step runs as, before any other stage looks at it.

Until the OAuth resource server lands, the principal comes from the transport: a local stdio
client is the configured local user; an HTTP client (only reachable on loopback without
`[auth]`) is `anonymous`.
"""

from __future__ import annotations

from typing import Any

from mcpgw.pipeline.chain import Next
from mcpgw.pipeline.step import Principal, Step

LOCAL = Principal(subject="local")
ANONYMOUS = Principal(subject="anonymous")


class Identify:
    slot = "identify"

    async def __call__(self, step: Step, call_next: Next) -> Any:
        if step.principal is None:
            step.principal = LOCAL if step.caller.transport == "stdio" else ANONYMOUS
        return await call_next(step)
