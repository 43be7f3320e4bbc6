"""Trace: the outermost stage. One OpenTelemetry SERVER span per step, current while the step runs.

The span continues the agent's trace (W3C context from the request's `_meta`, or the HTTP
headers the front copied there), follows the MCP and GenAI semantic conventions, and is current
for every later stage: the record stage can store its ids with the step, and the upstream
request made by dispatch becomes its child (the SDK's CLIENT span, whose context reaches the
upstream in `_meta` and, for http/sse upstreams, in HTTP headers). Requests an upstream puts to
the agent while the step runs (sampling, elicitation, roots) get child spans too.

Only built when `[telemetry]` is on. Attributes never carry arguments, results, tokens or
header values: only names, ids and outcomes.
"""

from __future__ import annotations

import re
from typing import Any

import anyio
import mcp.types as t
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, StatusCode, Tracer

from mcpgw.pipeline.chain import Next
from mcpgw.pipeline.errors import StepError
from mcpgw.pipeline.step import Asker, Step, StepKind
from mcpgw.telemetry import PROPAGATOR

_NAMED = (StepKind.TOOL_CALL, StepKind.PROMPT_GET)
_RESOURCE = (StepKind.RESOURCE_READ, StepKind.RESOURCE_SUBSCRIBE, StepKind.RESOURCE_UNSUBSCRIBE)
_NETWORK = {"stdio": "pipe", "http": "tcp", "sse": "tcp"}
_QUERY = re.compile(r"[?#]")
_USERINFO = re.compile(r"(://)[^/?#@]*@")


class Trace:
    slot = "trace"

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    async def __call__(self, step: Step, call_next: Next) -> Any:
        parent = PROPAGATOR.extract(step.meta) if isinstance(step.meta.get("traceparent"), str) else None
        name = f"{step.kind.value} {step.target}" if step.kind in _NAMED and step.target else step.kind.value
        span = self._tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=_attributes(step))
        context = trace.set_span_in_context(span, parent)
        # The upstream continues from the gateway's span (the SDK re-injects its CLIENT span over this).
        PROPAGATOR.inject(step.meta, context)
        if step.ask is not None:
            step.ask = TracedAsker(step.ask, self._tracer, context)
        with trace.use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False):
            try:
                result = await call_next(step)
            except StepError as exc:
                code = str(exc.code)
                span.set_attributes({"error.type": code, "rpc.response.status_code": code})
                span.set_status(StatusCode.ERROR, exc.message)
                raise
            except anyio.get_cancelled_exc_class():
                span.set_attribute("mcpgw.outcome", "cancelled")
                raise
            except Exception as exc:
                span.set_attribute("error.type", type(exc).__qualname__)
                span.set_status(StatusCode.ERROR, "internal error")  # details are in the gateway log
                raise
            else:
                if isinstance(result, t.CallToolResult) and result.is_error:
                    span.set_attribute("error.type", "tool_error")
                    span.set_status(StatusCode.ERROR)
                return result
            finally:
                _finish(span, step)


def _attributes(step: Step) -> dict[str, Any]:
    caller = step.caller
    attributes: dict[str, Any] = {
        "mcp.method.name": step.kind.value,
        "mcpgw.step.id": step.id,
        "network.transport": _NETWORK.get(caller.transport, caller.transport),
    }
    if caller.transport in ("http", "sse"):
        attributes["network.protocol.name"] = "http"
    if caller.protocol_version:
        attributes["mcp.protocol.version"] = caller.protocol_version
    if caller.session_id:
        attributes["mcp.session.id"] = caller.session_id
    if caller.client_name:
        attributes["mcpgw.client.name"] = caller.client_name
    if step.parent_id:
        attributes["mcpgw.parent_step.id"] = step.parent_id
    if step.kind is StepKind.TOOL_CALL:
        attributes["gen_ai.operation.name"] = "execute_tool"
        attributes["gen_ai.tool.name"] = step.target
    elif step.kind is StepKind.PROMPT_GET:
        attributes["gen_ai.prompt.name"] = step.target
    elif step.kind in _RESOURCE:
        attributes["mcp.resource.uri"] = _safe_uri(step.target)
    return attributes


def _finish(span: trace.Span, step: Step) -> None:
    """What the inner stages decided: where the step went, who ran it, how it ended."""
    if not span.is_recording():
        return
    attributes: dict[str, Any] = {}
    if step.outcome is not None:
        attributes["mcpgw.outcome"] = step.outcome.value
    if step.route is not None:
        attributes["mcpgw.upstream"] = step.route.upstream
        attributes["mcpgw.upstream.target"] = (
            _safe_uri(step.route.name) if step.kind in _RESOURCE else step.route.name
        )
    if step.principal is not None:
        attributes["enduser.id"] = step.principal.subject
        if step.principal.client_id:
            attributes["mcpgw.client.id"] = step.principal.client_id
    if step.rule:
        attributes["mcpgw.rule"] = step.rule
    span.set_attributes(attributes)


def _safe_uri(uri: str) -> str:
    """A URI without query, fragment or userinfo: those are where credentials hide in URIs.

    Exported URIs nest the upstream's (`mcpgw://db/postgres://user:pw@host/x`), so userinfo is
    removed after every `://`, not only the outer one.
    """
    return _USERINFO.sub(r"\1", _QUERY.split(uri, 1)[0])


class TracedAsker:
    """An `Asker` whose questions (an upstream's sampling, elicitation or roots request) are
    child spans of the step's span. They are asked from the upstream connection's own task,
    where the step's span is not current, so the step's context is carried here."""

    __slots__ = ("_context", "_inner", "_tracer", "agent", "modern")

    def __init__(self, inner: Asker, tracer: Tracer, context: Context) -> None:
        self._inner = inner
        self._tracer = tracer
        self._context = context
        self.agent = inner.agent
        self.modern = inner.modern

    async def __call__(self, request: Any) -> Any:
        method: str = request.method
        with self._tracer.start_as_current_span(
            f"ask {method}", context=self._context, kind=SpanKind.INTERNAL, attributes={"mcp.method.name": method}
        ) as span:
            answer = await self._inner(request)
            if isinstance(answer, t.ErrorData):
                code = str(answer.code)
                span.set_attributes({"error.type": code, "rpc.response.status_code": code})
                span.set_status(StatusCode.ERROR, answer.message)
            return answer
