"""Audit: one record per step, queued for the audit store as the step ends, whichever way.

It sits just outside `record` (which stamps the outcome and end time) and inside `trace`, so
the trace and span ids it reads are those of the span around the step. It also wraps the
step's way back to the agent: every sampling, elicitation or roots request an upstream makes
while serving the step is recorded as a child step (`parent_id` = this step's id).

The step itself stands for the gateway's upstream call (its `upstream` and `upstream_target`
columns say where it went): an agent's request and the gateway's forwarding of it are one
step with one outcome, so `mcpgw audit lineage` shows the agent's call, with the questions
asked while serving it beneath it. When a 2026-07-28 upstream's questions pass through to a
2026-07-28 agent (an input-required result), the agent's retry carrying the answers is recorded
as a child of the call that asked.

Per step this costs a dict and a deque append on the request path; redaction, serialising,
hashing and writing happen in the writer's thread. In fail-closed mode a step is refused while
the store is unreachable (or the queue is full); the refusal is itself queued for the record.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import mcp.types as t
from opentelemetry import trace

from mcpgw.audit.redact import Redactor
from mcpgw.audit.writer import AuditTrail
from mcpgw.config.models import AuditSettings
from mcpgw.pipeline.chain import Next
from mcpgw.pipeline.errors import StepError
from mcpgw.pipeline.step import Asker, Outcome, Step, new_step_id

ERROR_TEXT_MAX = 1000
"""Characters of a tool's own error text kept in the record."""
FIRST_OPEN_WAIT = 10.0
"""Seconds a fail-closed step waits for the store's first opening at start-up before refusing."""


class AuditUnavailable(StepError):
    outcome = Outcome.UNAVAILABLE


def _ids() -> tuple[str | None, str | None]:
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None, None
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


def payload_bytes(result: Any) -> int | None:
    """The size of what a result carries (text, base64 data), without serialising it."""
    if result is None:
        return None
    blocks: Any
    if isinstance(result, t.CallToolResult):
        blocks = result.content
    elif isinstance(result, t.ReadResourceResult):
        blocks = result.contents
    elif isinstance(result, t.GetPromptResult):
        blocks = [m.content for m in result.messages]
    elif isinstance(result, t.CreateMessageResult | t.CreateMessageResultWithTools):
        blocks = result.content if isinstance(result.content, list) else [result.content]
    else:
        return None
    size = 0
    for block in blocks:
        inner = getattr(block, "resource", block)
        for attr in ("text", "data", "blob"):
            value = getattr(inner, attr, None)
            if isinstance(value, str):
                size += len(value)
    return size


class Audit:
    slot = "audit"

    def __init__(self, trail: AuditTrail, settings: AuditSettings, redactor: Redactor) -> None:
        self._trail = trail
        self._redactor = redactor
        self._listings = settings.record_listings
        self._fail_closed = settings.mode == "fail-closed"

    async def __call__(self, step: Step, call_next: Next) -> Any:
        if step.kind.is_listing and not self._listings:
            return await call_next(step)
        wall = time.time_ns()
        trace_id, span_id = _ids()
        trail = self._trail
        if self._fail_closed and (trail.reachable is not True or trail.full):
            if trail.reachable is None:
                await trail.wait_first_attempt(FIRST_OPEN_WAIT)
            if trail.reachable is not True or trail.full:
                step.outcome = Outcome.UNAVAILABLE
                step.error = ("the audit store is unreachable and [audit] mode is fail-closed: calls are refused "
                              "until it is back")
                step.ended_ns = time.perf_counter_ns()
                trail.submit(self._row(step, wall, trace_id, span_id))
                raise AuditUnavailable(f"mcpgw: {step.error}")
        if step.ask is not None:
            step.ask = AuditedAsker(step.ask, self, step, trace_id)
        if step.request_state is not None and step.parent_id is None:
            step.parent_id = trail.answered(step.request_state)
        try:
            return await call_next(step)
        finally:
            result = step.result
            if isinstance(result, t.InputRequiredResult) and result.request_state:
                trail.awaiting_answers(result.request_state, step.id)
            trail.submit(self._row(step, wall, trace_id, span_id))

    def _row(self, step: Step, wall: int, trace_id: str | None, span_id: str | None) -> dict[str, Any]:
        caller, principal, route = step.caller, step.principal, step.route
        ended = step.ended_ns or time.perf_counter_ns()
        arguments: Any = step.arguments
        if arguments is None and isinstance(step.request, t.CompleteRequestParams):
            arguments = {step.request.argument.name: step.request.argument.value}
        outcome, error = (step.outcome or Outcome.ERROR).value, step.error
        result = step.result
        if outcome == "ok" and isinstance(result, t.CallToolResult) and result.is_error:
            # The tool ran and reported a failure: the agent sees an error result, so does the trail.
            outcome = "error"
            first = result.content[0] if result.content else None
            error = first.text[:ERROR_TEXT_MAX] if isinstance(first, t.TextContent) else "the tool reported an error"
        return {
            "_ns": wall, "_redactor": self._redactor,
            "step_id": step.id, "parent_id": step.parent_id, "trace_id": trace_id, "span_id": span_id,
            "session_id": caller.session_id, "ts": None,
            "subject": principal.subject if principal else None,
            "client_id": principal.client_id if principal else None,
            "roles": principal.roles if principal else None,
            "scopes": principal.scopes if principal else None,
            "client_name": caller.client_name, "client_version": caller.client_version,
            "protocol": caller.protocol_version, "transport": caller.transport,
            "kind": step.kind.value,
            "upstream": route.upstream if route else None,
            "target": step.target or None,
            "upstream_target": route.name if route else None,
            "arguments": arguments,
            "outcome": outcome,
            "rule": step.rule, "error": error,
            "latency_us": (ended - step.started_ns) // 1000,
            "request_bytes": None, "response_bytes": payload_bytes(step.result),
            "tokens_in": None, "tokens_out": None, "cost": None,
            "writer": None, "chain_seq": None, "prev_hash": None,
        }

    def child(self, parent: Step, kind: str, trace_id: str | None, params: Any, wall: int, latency_us: int,
              outcome: Outcome, error: str | None, answer: Any) -> None:
        """Queue the record of a request an upstream made back to the agent while serving `parent`."""
        span_trace, span_id = _ids()
        row = self._row(parent, wall, trace_id, span_id if span_trace == trace_id else None)
        row.update(step_id=new_step_id(), parent_id=parent.id, kind=kind, arguments=params, outcome=outcome.value,
                   rule=None, error=error, latency_us=latency_us, response_bytes=payload_bytes(answer))
        self._trail.submit(row)


class AuditedAsker:
    """The step's `Asker`, recording each question and its answer as a child step."""

    def __init__(self, inner: Asker, stage: Audit, step: Step, trace_id: str | None) -> None:
        self._inner = inner
        self._stage = stage
        self._step = step
        self._trace_id = trace_id
        self.agent = inner.agent
        self.modern = inner.modern

    async def __call__(self, request: Any) -> Any:
        wall, started = time.time_ns(), time.perf_counter_ns()
        outcome, error, answer = Outcome.ERROR, None, None
        try:
            answer = await self._inner(request)
            if isinstance(answer, t.ErrorData):
                error = answer.message
                outcome = Outcome.TIMEOUT if "did not answer" in answer.message else Outcome.ERROR
            elif isinstance(answer, t.ElicitResult) and answer.action != "accept":
                outcome = Outcome.DECLINED if answer.action == "decline" else Outcome.CANCELLED
            else:
                outcome = Outcome.OK
            return answer
        except anyio.get_cancelled_exc_class():
            outcome = Outcome.CANCELLED
            raise
        except Exception as exc:
            error = f"internal error: {type(exc).__name__}"
            raise
        finally:
            self._stage.child(self._step, request.method, self._trace_id, getattr(request, "params", None), wall,
                              (time.perf_counter_ns() - started) // 1000, outcome, error, answer)
