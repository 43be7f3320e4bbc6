"""Identify: decide who the step runs as, before any other stage looks at it.

HTTP callers were authenticated by the resource-server middleware, which left their principal
in `current_principal`; without `[auth]` (loopback only) they are `anonymous`. A local stdio
client has no token: it is the principal configured in `[auth.stdio]` (default `local`).
"""

from __future__ import annotations

from typing import Any

from mcpgw.auth.context import current_principal
from mcpgw.config.auth import AuthSettings
from mcpgw.pipeline.chain import Next
from mcpgw.pipeline.errors import Unauthenticated
from mcpgw.pipeline.step import Principal, Step

ANONYMOUS = Principal(subject="anonymous")


class Identify:
    slot = "identify"

    def __init__(self, settings: AuthSettings | None = None) -> None:
        settings = settings or AuthSettings()
        stdio = settings.stdio
        self._local = Principal(subject=stdio.subject, client_id=stdio.client_id, scopes=stdio.scopes,
                                roles=stdio.roles)
        self._required = settings.enabled

    async def __call__(self, step: Step, call_next: Next) -> Any:
        if step.principal is None:
            if step.caller.transport == "stdio":
                step.principal = self._local
            else:
                principal = current_principal.get()
                if principal is None and self._required:
                    raise Unauthenticated("this gateway requires an OAuth access token")
                step.principal = principal or ANONYMOUS
        return await call_next(step)
