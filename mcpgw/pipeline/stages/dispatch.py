"""Dispatch: the innermost stage. Hands a resolved step to its upstream, or serves a listing."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import mcp.types as t

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
        self._listings: dict[StepKind, Callable[[], tuple[Any, ...]]] = {
            StepKind.TOOL_LIST: lambda: catalog.tools,
            StepKind.PROMPT_LIST: lambda: catalog.prompts,
            StepKind.RESOURCE_LIST: lambda: catalog.resources,
            StepKind.TEMPLATE_LIST: lambda: catalog.templates,
        }

    async def __call__(self, step: Step, call_next: Next) -> Any:
        if step.kind.is_listing:
            step.result = self._listings[step.kind]()
            return step.result
        assert step.route is not None, "resolve runs before dispatch"
        upstream = self._upstreams.get(step.route.upstream)
        if upstream is None:
            raise UpstreamUnavailable(f"upstream {step.route.upstream!r} is not configured any more")
        timeout = step.timeout if step.timeout is not None else float("inf")
        name = step.route.name
        if step.kind is StepKind.TOOL_CALL:
            step.result = await upstream.call_tool(
                name,
                step.arguments,
                meta=step.meta,
                timeout=timeout,
                progress=step.progress,
                ask=step.ask,
                input_responses=step.input_responses,
                request_state=step.request_state,
                principal=step.principal,
            )
        elif step.kind is StepKind.RESOURCE_READ:
            step.result = await upstream.read_resource(name, meta=step.meta, timeout=timeout,
                                                      principal=step.principal)
        elif step.kind is StepKind.RESOURCE_SUBSCRIBE:
            await upstream.subscribe(name, timeout=timeout)
            step.result = t.EmptyResult()
        elif step.kind is StepKind.RESOURCE_UNSUBSCRIBE:
            await upstream.unsubscribe(name, timeout=timeout)
            step.result = t.EmptyResult()
        elif step.kind is StepKind.PROMPT_GET:
            arguments = {k: str(v) for k, v in (step.arguments or {}).items()}
            step.result = await upstream.get_prompt(name, arguments or None, meta=step.meta, timeout=timeout,
                                                   principal=step.principal)
        elif step.kind is StepKind.COMPLETE:
            params: t.CompleteRequestParams = step.request
            ref: t.PromptReference | t.ResourceTemplateReference
            if isinstance(params.ref, t.PromptReference):
                ref = params.ref.model_copy(update={"name": name})
            else:
                ref = params.ref.model_copy(update={"uri": name})
            step.result = await upstream.complete(ref, params.argument, params.context, timeout=timeout,
                                                 principal=step.principal)
        else:  # pragma: no cover - every kind is handled above
            raise AssertionError(f"no dispatch for {step.kind}")
        return step.result
