"""Putting an upstream's sampling, elicitation and roots requests to the agent that caused them.

Two agent eras, two mechanisms:
- A 2025-era agent has a back-channel: the request is sent on the agent's session, tied to the
  agent's own pending request (`related_request_id`), and the answer comes back at once.
- A 2026-07-28 agent has none: the gateway must end the agent's request with an
  input-required result and resume when the agent retries with its answers. When the upstream
  is itself 2026-era that result simply passes through (the upstream keeps the state). When the
  upstream is 2025-era, it is blocked mid-call waiting for the answer, so the gateway *parks*
  the call: the upstream call keeps running in the gateway's own task group, the agent gets an
  input-required result whose `requestState` names the parked call, and the retry delivers the
  answers to the waiting upstream and waits for what comes next.
Whichever way, if the agent lacks the capability the upstream gets an error saying so.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp.types as t
from mcp import MCPError
from mcp.server import ServerRequestContext
from mcp.shared.message import ServerMessageMetadata

log = logging.getLogger("mcpgw.front")

PARKED_PREFIX = "mcpgw-parked:"
INVALID_REQUEST = -32600

_RESULT_TYPES: dict[str, type[t.Result]] = {
    "sampling/createMessage": t.CreateMessageResult,
    "elicitation/create": t.ElicitResult,
    "roots/list": t.ListRootsResult,
}


def _capability(caps: t.ClientCapabilities | None, method: str) -> object | None:
    if caps is None:
        return None
    return {"sampling/createMessage": caps.sampling, "elicitation/create": caps.elicitation,
            "roots/list": caps.roots}.get(method)


def agent_key(ctx: ServerRequestContext[Any]) -> object:
    """The agent's connection: stable across its requests (the session object is per message)."""
    return getattr(ctx.session, "_connection", None) or ctx.session


def _lacks(method: str, client: str | None) -> t.ErrorData:
    what = {"sampling/createMessage": "sampling", "elicitation/create": "elicitation", "roots/list": "roots"}[method]
    return t.ErrorData(code=INVALID_REQUEST, message=f"mcpgw: the agent ({client or 'unnamed client'}) does not "
                                                     f"support {what}, so this {method} request cannot be forwarded")


class BackChannelAsker:
    """A 2025-era agent: ask on its session, tied to the request being served."""

    modern = False

    def __init__(self, ctx: ServerRequestContext[Any], client: str | None) -> None:
        self._ctx = ctx
        self._client = client
        self.agent = agent_key(ctx)

    async def __call__(self, request: Any) -> Any:
        method: str = request.method
        session = self._ctx.session
        if _capability(session.client_capabilities, method) is None:
            return _lacks(method, self._client)
        if not session.can_send_request:
            return t.ErrorData(code=INVALID_REQUEST, message="mcpgw: the agent's connection cannot carry requests "
                                                             f"back to it (stateless HTTP), so {method} is refused")
        result_type: Any = _RESULT_TYPES[method]
        if isinstance(request, t.CreateMessageRequest) and request.params.tools:
            result_type = t.CreateMessageResultWithTools
        try:
            return await session.send_request(
                request, result_type, metadata=ServerMessageMetadata(related_request_id=self._ctx.request_id)
            )
        except MCPError as exc:
            return t.ErrorData(code=exc.code, message=exc.message)


class PassThroughAsker:
    """A 2026-era agent whose upstream is 2026-era too: input-required results pass through."""

    modern = True

    def __init__(self, ctx: ServerRequestContext[Any]) -> None:
        self.agent = agent_key(ctx)

    async def __call__(self, request: Any) -> Any:
        return t.ErrorData(code=INVALID_REQUEST, message=f"mcpgw: {request.method} cannot be put to a 2026-07-28 "
                                                         "agent mid-request")


@dataclass
class _Slot:
    done: anyio.Event = field(default_factory=anyio.Event)
    value: Any = None


@dataclass
class ParkedCall:
    """A request whose upstream is waiting for the agent's answers."""

    token: str
    agent: object
    client_caps: t.ClientCapabilities | None
    client: str | None
    deadline: float
    send: Any
    receive: Any
    pending: dict[str, _Slot] = field(default_factory=dict)
    counter: int = 0


class ParkingAsker:
    """A 2026-era agent: questions are handed to the handler, which returns input-required."""

    modern = True

    def __init__(self, call: ParkedCall, answer_timeout: float) -> None:
        self._call = call
        self._timeout = answer_timeout
        self.agent = call.agent

    async def __call__(self, request: Any) -> Any:
        method: str = request.method
        call = self._call
        if _capability(call.client_caps, method) is None:
            return _lacks(method, call.client)
        call.counter += 1
        key = f"mcpgw-{call.counter}"
        slot = call.pending[key] = _Slot()
        await call.send.send(("ask", key, request))
        with anyio.move_on_after(self._timeout):
            await slot.done.wait()
            return slot.value
        call.pending.pop(key, None)
        return t.ErrorData(code=INVALID_REQUEST, message=f"mcpgw: the agent did not answer {method} within "
                                                         f"{self._timeout:g}s")


class Parking:
    """The parked calls of one gateway, keyed by the token the agent echoes back."""

    def __init__(
        self, spawn: Callable[[Callable[[], Coroutine[Any, Any, None]]], None], answer_timeout: Callable[[], float]
    ) -> None:
        self._spawn = spawn
        self._answer_timeout = answer_timeout
        """Read at use time: a config reload may change it."""
        self._calls: dict[str, ParkedCall] = {}

    def start(
        self, ctx: ServerRequestContext[Any], client: str | None, run: Callable[[ParkingAsker], Awaitable[Any]]
    ) -> ParkedCall:
        self._expire()
        timeout = self._answer_timeout()
        send, receive = anyio.create_memory_object_stream[tuple[Any, ...]](16)
        call = ParkedCall(
            token=PARKED_PREFIX + secrets.token_urlsafe(24),
            agent=agent_key(ctx),
            client_caps=ctx.session.client_capabilities,
            client=client,
            deadline=time.monotonic() + timeout,
            send=send,
            receive=receive,
        )
        asker = ParkingAsker(call, timeout)

        async def body() -> None:
            try:
                outcome: tuple[Any, ...] = ("done", await run(asker))
            except Exception as exc:  # boundary: the outcome is delivered to whoever resumes the call
                outcome = ("error", exc)
            with anyio.move_on_after(timeout):
                await send.send(outcome)

        self._calls[call.token] = call
        self._spawn(body)
        return call

    def resume(self, token: str, answers: dict[str, Any] | None) -> ParkedCall | None:
        self._expire()
        call = self._calls.get(token)
        if call is None:
            return None
        for key, answer in (answers or {}).items():
            slot = call.pending.pop(key, None)
            if slot is not None:
                slot.value = answer
                slot.done.set()
        return call

    async def next_outcome(self, call: ParkedCall) -> Any:
        """The call's result, or an input-required result for the questions it is waiting on."""
        timeout = self._answer_timeout()
        with anyio.fail_after(timeout + 5):  # the upstream call's own timeout fires first
            event = await call.receive.receive()
        if event[0] == "done":
            self._calls.pop(call.token, None)
            return event[1]
        if event[0] == "error":
            self._calls.pop(call.token, None)
            raise event[1]
        requests = {event[1]: event[2]}
        while True:  # everything else already asked goes out in the same round
            try:
                more = call.receive.receive_nowait()
            except anyio.WouldBlock:
                break
            if more[0] != "ask":
                # The call finished right after asking: keep the outcome for the next retry.
                await call.send.send(more)
                break
            requests[more[1]] = more[2]
        call.deadline = time.monotonic() + timeout
        return t.InputRequiredResult(input_requests=requests, request_state=call.token)

    def _expire(self) -> None:
        now = time.monotonic()
        for token in [k for k, c in self._calls.items() if c.deadline < now]:
            del self._calls[token]
