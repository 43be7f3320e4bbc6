"""Resolve: namespacing, both ways.

On the way in, map the exported name or URI an agent used to the upstream that serves it and
that upstream's own name or URI. On the way out, rewrite every URI in the result (resource
links, embedded resources, read contents) to its exported form, so whatever URI an agent
receives can be read back through the gateway.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import mcp.types as t

from mcpgw.catalog import Catalog, Kind
from mcpgw.pipeline.chain import Next
from mcpgw.pipeline.errors import Quarantined, UnknownTarget, UpstreamUnavailable, unknown_target_message
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
        if self._startup is not None and await self._startup():
            # During start-up a request waits (bounded by startup_wait) for upstreams still
            # starting: a first listing then sees a complete catalog, and an agent may ask for
            # something it remembers before its upstream is up.
            self._startup = None
        if step.kind.is_listing:
            return await call_next(step)
        route = self._route(step)
        if route is None:
            raise self._not_found(step)
        step.route = route
        step.timeout = self._timeouts.get(route.upstream, self._default_timeout)
        result = await call_next(step)
        return self._export_uris(route.upstream, result)

    def _route(self, step: Step) -> Route | None:
        catalog = self._catalog
        if step.kind is StepKind.TOOL_CALL:
            entry = catalog.lookup(step.target)
            return Route(entry.upstream, entry.name) if entry else None
        if step.kind is StepKind.PROMPT_GET:
            prompt = catalog.lookup_prompt(step.target)
            return Route(prompt.upstream, prompt.name) if prompt else None
        if step.kind in (StepKind.RESOURCE_READ, StepKind.RESOURCE_SUBSCRIBE, StepKind.RESOURCE_UNSUBSCRIBE):
            found = catalog.route_uri(step.target)
            return Route(*found) if found else None
        if step.kind is StepKind.COMPLETE:
            if isinstance(step.request, t.CompleteRequestParams) and isinstance(step.request.ref, t.PromptReference):
                prompt = catalog.lookup_prompt(step.target)
                return Route(prompt.upstream, prompt.name) if prompt else None
            found = catalog.route_template(step.target)
            return Route(*found) if found else None
        return None

    def _not_found(self, step: Step) -> Exception:
        if step.kind is StepKind.TOOL_CALL:
            held = self._catalog.quarantined(Kind.TOOL, step.target)
        elif step.kind is StepKind.PROMPT_GET or (
            step.kind is StepKind.COMPLETE and isinstance(step.request, t.CompleteRequestParams)
            and isinstance(step.request.ref, t.PromptReference)
        ):
            held = self._catalog.quarantined(Kind.PROMPT, step.target)
        else:
            held = None
        if held is not None:
            return Quarantined(held.message())
        owner = self._catalog.owner_while_offline(step.target)
        is_resource = step.kind in (StepKind.RESOURCE_READ, StepKind.RESOURCE_SUBSCRIBE, StepKind.RESOURCE_UNSUBSCRIBE)
        if owner is None and is_resource:
            found = self._catalog.route_uri(step.target)
            owner = found[0] if found else None
        if owner is not None:
            return UpstreamUnavailable(
                f"{step.target!r} belongs to upstream {owner!r}, which is not available right now "
                "(it is being restarted); try again shortly"
            )
        return UnknownTarget(unknown_target_message(step.kind, step.target))

    def _export_uris(self, upstream: str, result: Any) -> Any:
        export = self._catalog.exported_uri
        if isinstance(result, t.CallToolResult):
            content = [_export_block(block, upstream, export) for block in result.content]
            if any(a is not b for a, b in zip(content, result.content, strict=True)):
                return result.model_copy(update={"content": content})
        elif isinstance(result, t.ReadResourceResult):
            contents = [c.model_copy(update={"uri": export(upstream, str(c.uri))}) for c in result.contents]
            return result.model_copy(update={"contents": contents})
        elif isinstance(result, t.GetPromptResult):
            messages = [
                m.model_copy(update={"content": _export_block(m.content, upstream, export)}) for m in result.messages
            ]
            return result.model_copy(update={"messages": messages})
        return result


def _export_block(block: Any, upstream: str, export: Callable[[str, str], str]) -> Any:
    if isinstance(block, t.ResourceLink):
        return block.model_copy(update={"uri": export(upstream, str(block.uri))})
    if isinstance(block, t.EmbeddedResource):
        inner = block.resource.model_copy(update={"uri": export(upstream, str(block.resource.uri))})
        return block.model_copy(update={"resource": inner})
    return block
