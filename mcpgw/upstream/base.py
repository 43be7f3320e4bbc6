"""The one seam between the gateway and the servers behind it.

The pipeline's dispatch stage and the catalog only ever see an `Upstream`: something that
supervises its own connection, publishes the tools it currently offers, and forwards a call.
MCP over stdio, Streamable HTTP and SSE implement it today; REST/OpenAPI connectors will
implement the same protocol.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import anyio.abc
import mcp.types as t

from mcpgw.pipeline.step import Asker, Principal, ProgressFn


class Status(StrEnum):
    STARTING = "starting"  # first connection attempt in progress
    UP = "up"
    DOWN = "down"  # lost or never reached; retrying with backoff
    STOPPED = "stopped"


@dataclass
class UpstreamState:
    """What `/readyz` and `mcpgw check` report about one upstream."""

    status: Status = Status.STARTING
    error: str | None = None
    since: float = field(default_factory=time.time)
    connects: int = 0
    failures: int = 0
    pid: int | None = None
    protocol_version: str | None = None
    server_name: str | None = None
    server_version: str | None = None
    next_retry_in: float | None = None
    warnings: list[str] = field(default_factory=list)
    stderr_tail: deque[str] = field(default_factory=lambda: deque(maxlen=20))

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "error": self.error,
            "since": self.since,
            "connects": self.connects,
            "failures": self.failures,
            "pid": self.pid,
            "protocol_version": self.protocol_version,
            "server": {"name": self.server_name, "version": self.server_version} if self.server_name else None,
            "next_retry_in": self.next_retry_in,
            "warnings": list(self.warnings),
        }


ListingChanged = Callable[[Any], Awaitable[None]]
"""Called with the upstream whose listing (tools, prompts, resources) changed."""
ResourceUpdated = Callable[[str, str], Awaitable[None]]
"""Called with (upstream name, upstream's own URI) when a subscribed resource changed."""
LogMessage = Callable[[str, t.LoggingMessageNotificationParams], Awaitable[None]]
"""Called with (upstream name, log message) for every log notification an upstream sends."""
StatusChanged = Callable[[Any, Status], None]
"""Called with (the upstream, its previous status) when its status changes; must not block."""


class Upstream(Protocol):
    name: str
    state: UpstreamState

    @property
    def tools(self) -> Sequence[t.Tool]:
        """The upstream's own tools (own names), as last listed; empty while it is not up."""
        ...

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Connect, keep connected (reconnect with backoff), until cancelled."""
        ...

    async def call_tool(
        self,
        name: str,
        arguments: dict[str, Any] | None,
        *,
        meta: dict[str, Any] | None,
        timeout: float,
        progress: ProgressFn | None,
        ask: Asker | None = None,
        input_responses: dict[str, Any] | None = None,
        request_state: str | None = None,
        principal: Principal | None = None,
    ) -> t.CallToolResult | t.InputRequiredResult:
        """Forward one call. Raises `StepError` subclasses that name this upstream (so do the others).

        Questions the upstream asks while serving it (sampling, elicitation, roots) go to `ask`.
        `principal` is who the call is made for: an upstream that acts on the caller's behalf
        (token exchange) needs it; others ignore it.
        """
        ...

    async def read_resource(
        self, uri: str, *, meta: dict[str, Any] | None, timeout: float, principal: Principal | None = None
    ) -> t.ReadResourceResult:
        ...

    async def subscribe(self, uri: str, *, timeout: float) -> None:
        ...

    async def unsubscribe(self, uri: str, *, timeout: float) -> None:
        ...

    async def get_prompt(
        self,
        name: str,
        arguments: dict[str, str] | None,
        *,
        meta: dict[str, Any] | None,
        timeout: float,
        principal: Principal | None = None,
    ) -> t.GetPromptResult:
        ...

    async def complete(
        self,
        ref: t.PromptReference | t.ResourceTemplateReference,
        argument: t.CompletionArgument,
        context: t.CompletionContext | None,
        *,
        timeout: float,
        principal: Principal | None = None,
    ) -> t.CompleteResult:
        ...
