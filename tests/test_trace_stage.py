"""The trace stage on its own: every way a step can end, sampling, and what never becomes an attribute.

A real OpenTelemetry SDK provider (not the process-wide one) with an in-memory exporter; the
stage runs in a real `Pipeline` with the real record stage inside it. The innermost stage is a
stand-in for dispatch that ends the step the way each test needs.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import anyio
import mcp.types as t
import pytest
from opentelemetry import context, trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from mcpgw.pipeline import Caller, Pipeline, Route, Step, StepKind, UnknownTarget
from mcpgw.pipeline.stages.record import Record
from mcpgw.pipeline.stages.trace import Trace, TracedAsker
from mcpgw.telemetry import _step_sampler

TRACE_ID, AGENT_SPAN = secrets.token_hex(16), secrets.token_hex(8)
PARENT = f"00-{TRACE_ID}-{AGENT_SPAN}-01"


class Ends:
    """The innermost stage: routes the step and ends it with `outcome()`."""

    slot = "dispatch"

    def __init__(self, outcome: Callable[[Step], Any], route: str | None = None) -> None:
        self.outcome = outcome
        self.route = route
        self.current: trace.SpanContext | None = None

    async def __call__(self, step: Step, call_next: Any) -> Any:
        self.current = trace.get_current_span().get_span_context()
        step.route = Route("kit", self.route or step.target.split("__")[-1])
        return await self.outcome(step) if callable(self.outcome) else self.outcome


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def pipeline(exporter: InMemorySpanExporter, ends: Ends, ratio: float = 1.0) -> Pipeline:
    provider = TracerProvider(sampler=_step_sampler(ratio))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Pipeline([Trace(provider.get_tracer("test")), Record(), ends])


def tool_step(**kw: Any) -> Step:
    return Step(StepKind.TOOL_CALL, Caller("stdio", "2025-11-25", "agent"), target="kit__echo", **kw)


def only(exporter: InMemorySpanExporter) -> ReadableSpan:
    (span,) = exporter.get_finished_spans()
    return span


async def answer(result: Any) -> Callable[[Step], Any]:
    async def end(step: Step) -> Any:
        return result
    return end


@pytest.mark.anyio
async def test_a_step_span_continues_the_agent_trace_and_is_current_inside(exporter: InMemorySpanExporter) -> None:
    ends = Ends(await answer(t.CallToolResult(content=[])))
    step = tool_step(arguments={"text": "classified"}, meta={"traceparent": PARENT, "acme/x": "1"})
    await pipeline(exporter, ends).run(step)
    span = only(exporter)
    assert span.name == "tools/call kit__echo" and span.kind is SpanKind.SERVER
    assert (f"{span.context.trace_id:032x}", f"{span.parent.span_id:016x}") == (TRACE_ID, AGENT_SPAN)  # type: ignore[union-attr]
    assert ends.current == span.context, "the step's span is current for the stages inside"
    assert step.meta["traceparent"] == f"00-{TRACE_ID}-{span.context.span_id:016x}-01"
    assert step.meta["acme/x"] == "1"
    assert span.status.status_code is StatusCode.UNSET
    assert dict(span.attributes or {}) == {
        "mcp.method.name": "tools/call",
        "mcpgw.step.id": step.id,
        "network.transport": "pipe",
        "mcp.protocol.version": "2025-11-25",
        "mcpgw.client.name": "agent",
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "kit__echo",
        "mcpgw.outcome": "ok",
        "mcpgw.upstream": "kit",
        "mcpgw.upstream.target": "echo",
    }
    attributes = dict(span.attributes or {})
    assert "classified" not in repr(attributes)


@pytest.mark.anyio
async def test_refusals_errors_and_tool_errors_set_error_type(exporter: InMemorySpanExporter) -> None:
    async def refuse(step: Step) -> Any:
        raise UnknownTarget("Unknown tool: kit__echo")

    with pytest.raises(UnknownTarget):
        await pipeline(exporter, Ends(refuse)).run(tool_step())
    span = only(exporter)
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "Unknown tool: kit__echo"
    assert span.attributes is not None
    assert (span.attributes["error.type"], span.attributes["mcpgw.outcome"]) == ("-32602", "not_found")
    exporter.clear()

    async def crash(step: Step) -> Any:
        raise KeyError("/secret/path")

    with pytest.raises(KeyError):
        await pipeline(exporter, Ends(crash)).run(tool_step())
    span = only(exporter)
    assert span.attributes is not None
    assert (span.attributes["error.type"], span.status.description) == ("KeyError", "internal error")
    exporter.clear()

    failed = t.CallToolResult(content=[t.TextContent(type="text", text="no")], is_error=True)
    await pipeline(exporter, Ends(await answer(failed))).run(tool_step())
    span = only(exporter)
    assert span.attributes is not None and span.attributes["error.type"] == "tool_error"
    assert span.status.status_code is StatusCode.ERROR


@pytest.mark.anyio
async def test_a_cancelled_step_ends_its_span(exporter: InMemorySpanExporter) -> None:
    started = anyio.Event()

    async def hang(step: Step) -> Any:
        started.set()
        await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        tg.start_soon(pipeline(exporter, Ends(hang)).run, tool_step())
        await started.wait()
        tg.cancel_scope.cancel()
    span = only(exporter)
    assert span.attributes is not None and span.attributes["mcpgw.outcome"] == "cancelled"
    assert span.status.status_code is StatusCode.UNSET


@pytest.mark.anyio
async def test_sampling_follows_the_agent_and_context_still_propagates(exporter: InMemorySpanExporter) -> None:
    ok = await answer(t.CallToolResult(content=[]))
    unsampled = f"00-{TRACE_ID}-{AGENT_SPAN}-00"
    step = tool_step(meta={"traceparent": unsampled})
    await pipeline(exporter, Ends(ok)).run(step)
    assert exporter.get_finished_spans() == ()
    assert step.meta["traceparent"].startswith(f"00-{TRACE_ID}-") and step.meta["traceparent"].endswith("-00")

    await pipeline(exporter, Ends(ok), ratio=0.0).run(tool_step())  # a trace starting here, ratio 0
    assert exporter.get_finished_spans() == ()
    await pipeline(exporter, Ends(ok), ratio=0.0).run(tool_step(meta={"traceparent": PARENT}))
    assert len(exporter.get_finished_spans()) == 1, "the agent's decision to sample wins over the ratio"


@pytest.mark.anyio
@pytest.mark.parametrize("bad", ["00-zz-yy-01", "00-00000000000000000000000000000000-0000000000000000-01", 42])
async def test_a_malformed_traceparent_starts_a_new_trace(exporter: InMemorySpanExporter, bad: Any) -> None:
    step = tool_step(meta={"traceparent": bad})
    await pipeline(exporter, Ends(await answer(t.CallToolResult(content=[])))).run(step)
    span = only(exporter)
    assert span.parent is None
    assert step.meta["traceparent"].startswith(f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-")


@pytest.mark.anyio
async def test_resource_uris_lose_userinfo_and_query_in_attributes(exporter: InMemorySpanExporter) -> None:
    step = Step(StepKind.RESOURCE_READ, Caller("http", session_id="s-1"),
                target="mcpgw://db/postgres://admin:pw@db.internal/orders?sslkey=k#frag")
    ends = Ends(await answer(t.ReadResourceResult(contents=[])), route="postgres://admin:pw@db.internal/orders?k=v")
    await pipeline(exporter, ends).run(step)
    span = only(exporter)
    assert span.name == "resources/read"
    assert span.attributes is not None
    assert span.attributes["mcp.resource.uri"] == "mcpgw://db/postgres://db.internal/orders"
    assert span.attributes["mcpgw.upstream.target"] == "postgres://db.internal/orders"
    assert (span.attributes["mcp.session.id"], span.attributes["network.transport"]) == ("s-1", "tcp")


@pytest.mark.anyio
async def test_questions_asked_during_a_step_are_its_child_spans(exporter: InMemorySpanExporter) -> None:
    class Agent:
        agent = object()
        modern = True

        async def __call__(self, request: Any) -> Any:
            return t.ErrorData(code=-32600, message="the agent does not support elicitation")

    asker = Agent()
    seen: list[Any] = []

    async def ask(step: Step) -> Any:
        assert isinstance(step.ask, TracedAsker)
        assert (step.ask.agent, step.ask.modern) == (asker.agent, True)
        # Asked from the upstream connection's task, where no span is current: the wrapper
        # carries the step's context.
        token = context.attach(Context())
        try:
            seen.append(await step.ask(t.ElicitRequest(params=t.ElicitRequestFormParams(
                message="name?", requested_schema={"type": "object", "properties": {}}))))
        finally:
            context.detach(token)
        return t.CallToolResult(content=[])

    await pipeline(exporter, Ends(ask)).run(tool_step(ask=asker))
    question, step_span = exporter.get_finished_spans()
    assert question.name == "ask elicitation/create"
    assert question.parent is not None and question.parent.span_id == step_span.context.span_id
    assert question.attributes is not None and question.attributes["error.type"] == "-32600"
    assert isinstance(seen[0], t.ErrorData)
