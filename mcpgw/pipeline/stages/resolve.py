"""Resolve: map the exported name an agent used to the upstream and name that serve it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from mcpgw.catalog import Catalog
from mcpgw.pipeline.chain import Next
from mcpgw.pipeline.errors import UnknownTarget, UpstreamUnavailable
from mcpgw.pipeline.step import Route, Step, StepKind


class Resolve:
    slot = "resolve"

    def __init__(
        self,
        catalog: Catalog,
        default_timeout: float,
        timeouts: dict[str, float],
        startup: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self._catalog = catalog
        self._default_timeout = default_timeout
        self._timeouts = timeouts
        self._startup = startup
        """Waits (bounded) for upstreams that are still starting; None once they all have."""

    async def __call__(self, step: Step, call_next: Next) -> Any:
        if step.kind is StepKind.TOOL_CALL:
            entry = self._catalog.lookup(step.target)
            if entry is None and self._startup is not None:
                # An agent may call a tool it remembers before its upstream has come up.
                if await self._startup():
                    self._startup = None
                entry = self._catalog.lookup(step.target)
            if entry is None:
                if (owner := self._catalog.owner_while_offline(step.target)) is not None:
                    raise UpstreamUnavailable(
                        f"tool {step.target!r} belongs to upstream {owner!r}, which is not available right now "
                        "(it is being restarted); try again shortly"
                    )
                raise UnknownTarget(f"Unknown tool: {step.target}")
            step.route = Route(entry.upstream, entry.name)
            step.timeout = self._timeouts.get(entry.upstream, self._default_timeout)
        return await call_next(step)
