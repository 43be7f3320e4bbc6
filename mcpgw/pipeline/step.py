"""The `Step`: one neutral record of one thing an agent asked the gateway to do.

Every stage reads and writes the same `Step`. It knows nothing of MCP wire types beyond the
result object it carries, so stages (policy, limits, audit) can be written once for every kind
of step. A field belongs here when more than one stage needs it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol


class StepKind(StrEnum):
    TOOL_CALL = "tools/call"
    TOOL_LIST = "tools/list"
    PROMPT_GET = "prompts/get"
    PROMPT_LIST = "prompts/list"
    RESOURCE_READ = "resources/read"
    RESOURCE_LIST = "resources/list"
    RESOURCE_SUBSCRIBE = "resources/subscribe"
    RESOURCE_UNSUBSCRIBE = "resources/unsubscribe"
    TEMPLATE_LIST = "resources/templates/list"
    COMPLETE = "completion/complete"

    @property
    def is_listing(self) -> bool:
        return self.value.endswith("/list")


class Outcome(StrEnum):
    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    UNAVAILABLE = "unavailable"
    NOT_FOUND = "not_found"
    UNAUTHENTICATED = "unauthenticated"
    DENIED = "denied"
    LIMITED = "limited"
    APPROVED = "approved"
    DECLINED = "declined"


def new_step_id() -> str:
    """Sortable, unique id: 48 bits of milliseconds then 80 random bits, hex (a ULID in spirit)."""
    return f"{time.time_ns() // 1_000_000:012x}{os.urandom(10).hex()}"


@dataclass(slots=True, frozen=True)
class Caller:
    """Who is on the other end of the front connection, as far as the transport can tell."""

    transport: str
    protocol_version: str | None = None
    client_name: str | None = None
    client_version: str | None = None
    session_id: str | None = None


class Secret(str):
    """A credential kept as a string that never prints itself.

    `repr`, `str()` and formatting show a marker, so a secret that reaches a log line, an
    exception message or a dataclass repr by accident does not leak. Code that must send the
    value (an Authorization header, a token-exchange form) asks for it with `reveal()`.
    """

    __slots__ = ()

    def reveal(self) -> str:
        return str.__str__(self)

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __format__(self, spec: str) -> str:
        return format("***", spec)


@dataclass(slots=True, frozen=True)
class Principal:
    """The identity a step runs as, decided by the identify stage; every later stage reads it.

    `roles` holds what the configured role/group claims carried (not policy roles: those are
    matched later from scopes, subjects, clients and these groups). `token` is the caller's own
    access token, kept only so an upstream with `token_exchange` can trade it for a token of
    its own; it is never forwarded as is.
    """

    subject: str
    client_id: str | None = None
    scopes: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    claims: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    expires_at: int | None = None
    issuer: str | None = None
    token: Secret | None = field(default=None, repr=False, compare=False, hash=False)


NOBODY = Principal(subject="")
"""Who a step is when no identify stage ran (stages used on their own): matches no role."""


@dataclass(slots=True, frozen=True)
class Route:
    """Where the resolve stage decided a step goes."""

    upstream: str
    name: str


ProgressFn = Callable[[float, float | None, str | None], Awaitable[None]]


class Asker(Protocol):
    """The way back to the agent that made a step: an upstream's sampling, elicitation or roots
    request made while serving the step is put to this agent, and to no other.

    `agent` identifies the agent's connection (two steps of one agent share it); `modern` is
    true for a 2026-07-28 agent, which cannot be asked mid-request: its answers arrive with a
    retry of the original request.
    """

    agent: object
    modern: bool

    async def __call__(self, request: Any) -> Any:
        """Return the agent's result (an `InputResponse`) or an `ErrorData` saying why not."""
        ...


@dataclass(slots=True)
class Step:
    kind: StepKind
    caller: Caller
    target: str = ""
    """The exported name or URI the agent asked for (a tool, prompt, resource, completion ref)."""
    arguments: dict[str, Any] | None = None
    request: Any = None
    """Kind-specific request data the generic fields do not carry (a completion's argument)."""
    meta: dict[str, Any] = field(default_factory=dict)
    progress: ProgressFn | None = None
    ask: Asker | None = None
    input_responses: dict[str, Any] | None = None
    """2026-07-28 retry: the agent's answers to an earlier input-required result."""
    request_state: str | None = None
    """2026-07-28 retry: the opaque state echoed from that result."""
    parent_id: str | None = None
    id: str = field(default_factory=new_step_id)
    started_ns: int = field(default_factory=time.perf_counter_ns)
    ended_ns: int | None = None
    principal: Principal | None = None
    route: Route | None = None
    timeout: float | None = None
    outcome: Outcome | None = None
    error: str | None = None
    rule: str | None = None
    """The policy rule (or limit) that decided the step, when one did."""
    needs_approval: bool = False
    """Policy says a human must approve this call before it is forwarded (the guard_in stage asks)."""
    result: Any = None

    @property
    def latency_ms(self) -> float | None:
        return None if self.ended_ns is None else (self.ended_ns - self.started_ns) / 1e6
