"""Per-caller upstream sessions, for upstreams that act on the caller's behalf (token exchange).

An upstream that receives RFC 8693 tokens sees a different principal per caller. One shared MCP
session cannot carry them: the transport sends requests from its own task (no per-request
header is possible), and MCP servers bind a session to the principal that opened it (the SDK
refuses a request whose token names someone else). So each caller gets a session of their own,
opened on first use, presenting that caller's exchanged token, and closed when idle.

The shared session of the upstream still exists: it lists the catalog, probes liveness and
carries subscriptions, under the gateway's own client-credentials identity.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
import anyio.abc
from mcp import Client

from mcpgw.auth.upstream import CallerHolder, TokenEndpoint, delegated_auth
from mcpgw.config.auth import TokenExchangeAuth
from mcpgw.pipeline.errors import UpstreamCredentialError, UpstreamUnavailable
from mcpgw.pipeline.step import Principal

if TYPE_CHECKING:
    from mcpgw.upstream.mcp import McpUpstream

log = logging.getLogger("mcpgw.upstream")


@dataclass
class _Session:
    holder: CallerHolder
    ready: anyio.Event = field(default_factory=anyio.Event)
    closed: anyio.Event = field(default_factory=anyio.Event)
    client: Client | None = None
    error: str | None = None
    in_use: int = 0
    last_used: float = field(default_factory=time.monotonic)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)


class DelegatedSessions:
    def __init__(self, upstream: McpUpstream, config: TokenExchangeAuth, endpoint: TokenEndpoint) -> None:
        self._upstream = upstream
        self._config = config
        self._endpoint = endpoint
        self._sessions: dict[tuple[str | None, str], _Session] = {}
        self._tg: anyio.abc.TaskGroup | None = None

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Host the sessions' tasks; they all close when this is cancelled (the shared one went down)."""
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self._tg = None
            self._sessions.clear()

    @contextlib.asynccontextmanager
    async def session(self, principal: Principal | None) -> AsyncIterator[Client]:
        name = self._upstream.name
        if principal is None:
            raise UpstreamCredentialError(f"upstream {name!r} acts on behalf of the caller, and this request "
                                          "has no caller identity")
        # Exchange in the caller's own task first: a refusal is reported here, clearly, rather
        # than surfacing as a broken transport inside the session.
        await self._endpoint.exchanged_token(principal)
        key = (principal.issuer, principal.subject)
        session = self._sessions.get(key)
        if session is None or session.closed.is_set():
            session = self._open(key, principal)
        session.holder.principal = principal
        session.in_use += 1
        try:
            with anyio.move_on_after(self._upstream.settings.connect_timeout):
                await session.ready.wait()
            client = session.client
            if client is None:
                why = session.error or ("it took longer than connect_timeout" if not session.ready.is_set()
                                        else "it closed")
                raise UpstreamUnavailable(f"upstream {name!r}: could not open a session on behalf of "
                                          f"{principal.subject!r}: {why}")
            yield client
        finally:
            session.in_use -= 1
            session.last_used = time.monotonic()

    def _open(self, key: tuple[str | None, str], principal: Principal) -> _Session:
        if self._tg is None:
            raise UpstreamUnavailable(f"upstream {self._upstream.name!r} is not available; try again shortly")
        if len(self._sessions) >= self._config.max_sessions:
            self._evict()
        session = _Session(CallerHolder(principal))
        self._sessions[key] = session
        self._tg.start_soon(self._host, key, session)
        return session

    def _evict(self) -> None:
        idle = [(s.last_used, k) for k, s in self._sessions.items() if s.in_use == 0]
        if not idle:
            raise UpstreamUnavailable(f"upstream {self._upstream.name!r}: all {self._config.max_sessions} "
                                      "delegated sessions are busy (max_sessions); try again shortly")
        _, key = min(idle)
        self._sessions.pop(key).scope.cancel()

    async def _host(self, key: tuple[str | None, str], session: _Session) -> None:
        upstream = self._upstream
        try:
            with session.scope:
                async with AsyncExitStack() as stack:
                    auth = delegated_auth(self._endpoint, session.holder)
                    transport, client = await upstream.open_client(stack, auth)
                    session.client = client
                    session.ready.set()
                    log.info("upstream %s: opened a session on behalf of %s", upstream.name,
                             session.holder.principal.subject)
                    idle = self._config.idle_seconds
                    while not transport.closed.is_set():
                        with anyio.move_on_after(min(idle, 30.0)):
                            await transport.closed.wait()
                        if session.in_use == 0 and time.monotonic() - session.last_used >= idle:
                            break
        except Exception as exc:  # boundary: one caller's session failing never affects the others
            from mcpgw.upstream.mcp import describe_failure

            session.error = describe_failure(exc)
            log.warning("upstream %s: session on behalf of %s failed: %s", upstream.name,
                        session.holder.principal.subject, session.error)
        finally:
            session.client = None
            session.closed.set()
            session.ready.set()
            if self._sessions.get(key) is session:
                del self._sessions[key]
