"""Dispatch: the innermost stage. Hands a resolved step to its upstream, or serves a listing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mcpgw.catalog import Catalog
from mcpgw.pipeline.chain import Next
from mcpgw.pipeline.errors import UpstreamUnavailable
from mcpgw.pipeline.step import Step, StepKind
from mcpgw.upstream.base import Upstream


class Dispatch:
    slot = "dispatch"

    def __init__(self, catalog: Catalog, upstreams: Mapping[str, Upstream]) -> None:
        self._catalog = catalog
        self._upstreams = upstreams

    async def __call__(self, step: Step, call_next: Next) -> Any:
        if step.kind is StepKind.TOOL_LIST:
            step.result = self._catalog.tools
            return step.result
        assert step.route is not None, "resolve runs before dispatch"
        upstream = self._upstreams.get(step.route.upstream)
        if upstream is None:
            raise UpstreamUnavailable(f"upstream {step.route.upstream!r} is not configured any more")
        step.result = await upstream.call_tool(
            step.route.name,
            step.arguments,
            meta=step.meta,
            timeout=step.timeout if step.timeout is not None else float("inf"),
            progress=step.progress,
        )
        return step.result
