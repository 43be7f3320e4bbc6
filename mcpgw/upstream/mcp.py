"""An upstream MCP server reached over stdio, Streamable HTTP or SSE, kept connected.

One long-lived SDK client session per upstream, supervised: connect (bounded by
`connect_timeout`), list tools, then wait for the connection to end — the child exiting, the
read stream closing, or a liveness probe failing — and reconnect with exponential backoff.
While it is not up its tools are withdrawn from the catalog and calls fail at once with an
error that names it. Calls are never retried here: a tools/call may have side effects.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, TypeVar, cast

import anyio
import anyio.abc
import httpx2
import mcp.types as t
from mcp import Client, MCPError, StdioServerParameters, stdio_client
from mcp.client.session import ClientRequestContext
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import TypeAdapter, ValidationError

from mcpgw import __version__
from mcpgw.auth.upstream import TokenEndpoint, connection_auth
from mcpgw.catalog import Listing
from mcpgw.config.auth import ClientCredentialsAuth, TokenExchangeAuth
from mcpgw.config.models import GatewaySettings, HttpServer, ServerConfig, SseServer, StdioServer
from mcpgw.pipeline.errors import StepError, UpstreamProtocolError, UpstreamTimeout, UpstreamUnavailable
from mcpgw.pipeline.step import Asker, Principal, ProgressFn
from mcpgw.telemetry import inject_trace_headers
from mcpgw.upstream._streams import TappedTransport
from mcpgw.upstream.base import ListingChanged, LogMessage, ResourceUpdated, Status, StatusChanged, UpstreamState
from mcpgw.upstream.delegated import DelegatedSessions

log = logging.getLogger("mcpgw.upstream")

CONNECTION_CLOSED = -32000
REQUEST_TIMEOUT = -32001
MAX_LIST_PAGES = 1000
MAX_INPUT_ROUNDS = 10
INVALID_REQUEST = -32600
ResultT = TypeVar("ResultT", bound=t.Result)
GATEWAY_CLIENT_INFO = t.Implementation(name="mcpgw", version=__version__)


class _ConnectionLost(Exception):
    """Internal: the supervisor should reconnect."""


def describe_failure(exc: BaseException) -> str:
    """A one-line, secret-free reason for a failed or lost connection."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, FileNotFoundError):
        return f"command not found: {exc.filename!r}" if exc.filename else "command not found"
    if isinstance(exc, PermissionError):
        return f"permission denied: {exc.filename!r}" if exc.filename else "permission denied"
    if isinstance(exc, TimeoutError):
        return str(exc) or "timed out"
    if isinstance(exc, MCPError):
        if exc.code == CONNECTION_CLOSED:
            return "connection closed"
        return f"MCP error {exc.code}: {exc.message}"
    if isinstance(exc, httpx2.ConnectError):
        return "connection refused or host unreachable"
    if isinstance(exc, httpx2.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    if isinstance(exc, httpx2.HTTPError):
        return f"HTTP error: {type(exc).__name__}"
    if isinstance(exc, _ConnectionLost):
        return str(exc)
    if isinstance(exc, StepError):
        return exc.message
    if isinstance(exc, ValidationError):
        return "the server sent a malformed response"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class McpUpstream:
    """Implements `Upstream` for MCP servers over stdio, Streamable HTTP and SSE."""

    def __init__(
        self,
        name: str,
        config: ServerConfig,
        settings: GatewaySettings,
        on_listing_changed: ListingChanged,
        *,
        trace_headers: bool = False,
    ) -> None:
        self.name = name
        self._http_hooks: dict[str, list[Any]] = {"request": [inject_trace_headers]} if trace_headers else {}
        self.config = config
        self.settings = settings
        self.state = UpstreamState()
        self.settled = anyio.Event()
        """Set once the first connection attempt has ended, whichever way."""
        self._on_listing_changed = on_listing_changed
        self._listing = Listing()
        self._lost_reason = "connection closed"
        self._on_resource_updated: ResourceUpdated | None = None
        self._askers: dict[int, Asker] = {}
        self._ask_seq = itertools.count()
        self._on_log_message: LogMessage | None = None
        self._on_status: StatusChanged | None = None
        self._log_level: t.LoggingLevel | None = None
        self._subscriptions: set[str] = set()
        self._retired: str | None = None
        self._probe_now = anyio.Event()
        """Set when a request timed out: probe at once rather than at the next interval, so a
        hung upstream is marked down (and later calls fail fast) after one slow call."""
        self._subscriptions_changed = anyio.Event()
        self._client: Client | None = None
        self._token_endpoint: TokenEndpoint | None = None
        """Where this upstream's OAuth credentials come from, if it uses any (made in `run`)."""
        self._delegated: DelegatedSessions | None = None
        """Per-caller sessions of a token_exchange upstream, while the main connection is up."""
        self._refresh_send, self._refresh_recv = anyio.create_memory_object_stream[None](1)
        self._lost: anyio.Event = anyio.Event()

    @property
    def tools(self) -> Sequence[t.Tool]:
        return self._listing.tools

    @property
    def listing(self) -> Listing:
        return self._listing

    def on_resource_updated(self, callback: ResourceUpdated) -> None:
        self._on_resource_updated = callback

    def retire(self, reason: str) -> None:
        """This upstream is being stopped by a reload; requests in flight will say why."""
        self._retired = reason

    def on_log_message(self, callback: LogMessage) -> None:
        self._on_log_message = callback

    def on_status(self, callback: StatusChanged) -> None:
        """Call `callback(upstream, previous status)` when the connection comes up or goes down."""
        self._on_status = callback

    async def set_log_level(self, level: t.LoggingLevel | None) -> None:
        """Ask the upstream for log messages at `level` and above (now, and after reconnects)."""
        self._log_level = level
        client = self._client
        if level is None or client is None or not (client.server_capabilities and client.server_capabilities.logging):
            return
        with contextlib.suppress(Exception):  # boundary: best effort; the upstream keeps its own default
            with anyio.fail_after(self.settings.connect_timeout):
                await client.session.set_logging_level(level)

    # -- supervision -------------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with AsyncExitStack() as stack:
            auth = getattr(self.config, "auth", None)
            if isinstance(auth, ClientCredentialsAuth | TokenExchangeAuth):
                assert isinstance(self.config, HttpServer | SseServer)
                http = await stack.enter_async_context(
                    httpx2.AsyncClient(timeout=httpx2.Timeout(self.settings.connect_timeout), follow_redirects=False)
                )
                self._token_endpoint = TokenEndpoint(self.name, auth, self.config.url, http)
            await self._supervise(task_status)

    async def _supervise(self, task_status: anyio.abc.TaskStatus[None]) -> None:
        task_status.started()
        backoff = self.settings.restart_backoff
        try:
            while True:
                started = time.monotonic()
                try:
                    await self._connect_and_serve()
                    reason = "connection closed"
                except Exception as exc:  # boundary: any failure of one upstream is reported, never fatal
                    reason = describe_failure(exc)
                    log.debug("upstream %s failure", self.name, exc_info=exc)
                if self.state.status is Status.UP and time.monotonic() - started > 10 * backoff:
                    backoff = self.settings.restart_backoff  # it ran a while: this is a fresh failure
                was = self.state.status
                self.state.failures += 1
                tail = self._stderr_hint()
                self._set(Status.DOWN, reason + tail, next_retry_in=backoff)
                verb = "lost" if was is Status.UP else "failed to start"
                log.warning("upstream %s %s: %s; retrying in %.1fs", self.name, verb, reason + tail, backoff)
                await self._publish(Listing())
                self.settled.set()
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, self.settings.restart_backoff_max)
        finally:
            self._client = None
            self.state.status = Status.STOPPED
            self.settled.set()

    def _set(self, status: Status, error: str | None = None, next_retry_in: float | None = None) -> None:
        was = self.state.status
        self.state.status = status
        self.state.error = error
        self.state.since = time.time()
        self.state.next_retry_in = next_retry_in
        if self._on_status is not None and self._retired is None:
            try:
                self._on_status(self, was)
            except Exception:  # boundary: an observer must not break supervision
                log.exception("upstream %s: status listener failed", self.name)

    def _stderr_hint(self) -> str:
        if self.state.stderr_tail:
            return f" (last stderr line: {self.state.stderr_tail[-1]})"
        return ""

    async def _connect_and_serve(self) -> None:
        self.state.warnings.clear()
        self.state.stderr_tail.clear()
        # The whole connection lives inside one scope whose deadline covers start-up only: a
        # narrower `fail_after` around entering the client would exit before the client's own
        # task group does, which anyio rightly refuses.
        with anyio.CancelScope(deadline=anyio.current_time() + self.settings.connect_timeout) as startup:
            async with AsyncExitStack() as stack:
                transport, client = await self.open_client(stack, self._connection_auth())
                listing = await self._list_all(client)
                startup.deadline = math.inf
                await self._serve(client, transport, listing)
        if startup.cancelled_caught:
            raise TimeoutError(f"no answer within connect_timeout ({self.settings.connect_timeout:g}s)")

    def _connection_auth(self) -> httpx2.Auth | None:
        return connection_auth(getattr(self.config, "auth", None), self._token_endpoint)

    async def open_client(self, stack: AsyncExitStack, auth: httpx2.Auth | None) -> tuple[TappedTransport, Client]:
        """One MCP session to this upstream, presenting `auth`; closed with `stack`."""
        transport = TappedTransport(await stack.enter_async_context(self._raw_transport(auth)), self._warn)
        client = await stack.enter_async_context(
                    Client(
                        transport,
                        mode=self.config.protocol,
                        cache=None,
                        client_info=GATEWAY_CLIENT_INFO,
                        message_handler=self._on_message,
                        logging_callback=self._on_log,
                        log_level=self.settings.upstream_log_level,
                        # Registering these declares the capabilities: the gateway forwards each
                        # request to the agent that caused it (see `_attribute`).
                        sampling_callback=self._on_sampling,
                        elicitation_callback=self._on_elicitation,
                        list_roots_callback=self._on_list_roots,
                    )
                )
        return transport, client

    async def _serve(self, client: Client, transport: TappedTransport, listing: Listing) -> None:
        self._client = client
        self._lost = anyio.Event()
        self.state.connects += 1
        self.state.protocol_version = client.protocol_version
        info = client.server_info
        self.state.server_name = info.name if info else None
        self.state.server_version = info.version if info else None
        self._set(Status.UP)
        log.info("upstream %s up (%s, protocol %s, %d tools, %d prompts, %d resources, %d resource templates)",
                 self.name, self.config.kind, client.protocol_version, len(listing.tools), len(listing.prompts),
                 len(listing.resources), len(listing.templates))
        await self._publish(listing)
        self.settled.set()
        await self.set_log_level(self._log_level)
        await self._resubscribe(client)
        try:
            async with anyio.create_task_group() as tg:
                auth = getattr(self.config, "auth", None)
                if isinstance(auth, TokenExchangeAuth) and self._token_endpoint is not None:
                    self._delegated = DelegatedSessions(self, auth, self._token_endpoint)
                    await tg.start(self._delegated.run)
                if client.protocol_version in MODERN_PROTOCOL_VERSIONS:
                    tg.start_soon(self._listen, client)
                tg.start_soon(self._refresher, client)
                tg.start_soon(self._probe, client)
                tg.start_soon(_set_when, transport.closed, self._lost)
                await self._lost.wait()
                tg.cancel_scope.cancel()
        finally:
            self._client = None
            self._delegated = None
        raise _ConnectionLost(self._lost_reason)

    def _mark_lost(self, reason: str) -> None:
        self._lost_reason = reason
        self._lost.set()

    @asynccontextmanager
    async def _raw_transport(self, auth: httpx2.Auth | None) -> Any:
        config = self.config
        if isinstance(config, StdioServer):
            async with self._stderr_pipe() as errlog:
                params = StdioServerParameters(
                    command=config.command, args=list(config.args), env=dict(config.env) or None, cwd=config.cwd
                )
                yield stdio_client(params, errlog=errlog)
        elif isinstance(config, HttpServer):
            timeout = httpx2.Timeout(self.settings.connect_timeout, read=None)
            async with httpx2.AsyncClient(headers=dict(config.headers), timeout=timeout, auth=auth,
                                          event_hooks=self._http_hooks) as http:
                yield streamable_http_client(config.url, http_client=http)
        elif isinstance(config, SseServer):
            yield sse_client(
                config.url,
                headers=dict(config.headers) or None,
                timeout=self.settings.connect_timeout,
                sse_read_timeout=config.sse_read_timeout,
                auth=auth,
                httpx_client_factory=self._http_client,
            )
        else:  # pragma: no cover - the config model admits nothing else
            raise TypeError(f"unsupported upstream kind {config.kind!r}")

    def _http_client(
        self, headers: dict[str, str] | None = None, timeout: httpx2.Timeout | None = None,
        auth: httpx2.Auth | None = None,
    ) -> httpx2.AsyncClient:
        """The SSE transport's HTTP client: the SDK's default, plus the request hooks."""
        return httpx2.AsyncClient(headers=headers, timeout=timeout or httpx2.Timeout(30, read=300), auth=auth,
                                  event_hooks=self._http_hooks)

    @asynccontextmanager
    async def _stderr_pipe(self) -> Any:
        """The child's stderr goes to our log, line by line, prefixed with the upstream's name.

        It also keeps the last lines, so a server that dies at start-up is reported with
        its own last words rather than a bare "connection closed". The pipe is read by the event
        loop, not a worker thread: one blocked thread per upstream would exhaust anyio's shared
        thread pool (40) and stall everything else that uses it, the stdio front included.
        """
        read_fd, write_fd = os.pipe()
        writer = os.fdopen(write_fd, "w")
        child_log = logging.getLogger(f"mcpgw.upstream.{self.name}")
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1024 * 1024)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", buffering=0)
        )

        async def pump() -> None:
            with contextlib.suppress(ValueError, ConnectionError):  # over-long line, or the pipe closed
                while raw := await reader.readline():
                    line = raw.decode("utf-8", errors="replace").rstrip()
                    if line:
                        self.state.stderr_tail.append(line[:500])
                        child_log.info("%s", line)

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(pump)
                try:
                    yield writer
                finally:
                    writer.close()  # the child holds its own copy; EOF comes when it exits
                    # The pump ends at EOF, once the child (and its children) closed stderr.
                    tg.cancel_scope.deadline = anyio.current_time() + 2.0
        finally:
            transport.close()

    def _warn(self, message: str) -> None:
        if message not in self.state.warnings:
            self.state.warnings.append(message)
            log.warning("upstream %s: %s", self.name, message)

    # -- catalog -----------------------------------------------------------------------------

    async def _list_all(self, client: Client) -> Listing:
        """Everything the upstream offers, each kind only if it advertises the capability."""
        caps = client.server_capabilities or t.ServerCapabilities()
        session = client.session
        tools = await self._pages("tools/list", session.list_tools, "tools") if caps.tools else ()
        prompts = await self._pages("prompts/list", session.list_prompts, "prompts") if caps.prompts else ()
        resources: tuple[Any, ...] = ()
        templates: tuple[Any, ...] = ()
        if caps.resources:
            resources = await self._pages("resources/list", session.list_resources, "resources")
            templates = await self._pages(
                "resources/templates/list", session.list_resource_templates, "resource_templates"
            )
        return Listing(tools=tools, prompts=prompts, resources=resources, templates=templates)

    async def _pages(self, method: str, fetch: Any, attr: str) -> tuple[Any, ...]:
        items: list[Any] = []
        cursor: str | None = None
        for _ in range(MAX_LIST_PAGES):
            page = await fetch(params=t.PaginatedRequestParams(cursor=cursor) if cursor else None)
            items.extend(getattr(page, attr))
            cursor = page.next_cursor
            if not cursor:
                return tuple(items)
        self._warn(f"{method} returned more than {MAX_LIST_PAGES} pages; the rest were ignored")
        return tuple(items)

    async def _publish(self, listing: Listing) -> None:
        self._listing = listing
        await self._on_listing_changed(self)

    def _request_refresh(self) -> None:
        with contextlib.suppress(anyio.WouldBlock):  # a queued refresh will see this change too
            self._refresh_send.send_nowait(None)

    async def _on_message(self, message: Any) -> None:
        if isinstance(message, _LIST_CHANGED):
            self._request_refresh()
        elif isinstance(message, t.ResourceUpdatedNotification) and self._on_resource_updated is not None:
            await self._on_resource_updated(self.name, str(message.params.uri))

    async def _on_log(self, params: t.LoggingMessageNotificationParams) -> None:
        level = {"debug": logging.DEBUG, "info": logging.INFO, "notice": logging.INFO, "warning": logging.WARNING}
        logging.getLogger(f"mcpgw.upstream.{self.name}").log(
            level.get(params.level, logging.ERROR), "%s%s", f"[{params.logger}] " if params.logger else "", params.data
        )
        if self._on_log_message is not None:
            await self._on_log_message(self.name, params)

    async def _refresher(self, client: Client) -> None:
        async for _ in self._refresh_recv:
            try:
                with anyio.fail_after(self.settings.connect_timeout):
                    listing = await self._list_all(client)
            except Exception as exc:  # boundary: a failed refresh means the session is unusable
                self._mark_lost(f"listing after list_changed failed: {describe_failure(exc)}")
                return
            await self._publish(listing)

    async def _listen(self, client: Client) -> None:
        """Modern-era upstreams only announce changes on a listen stream (teed to `_on_message`).

        The stream is reopened whenever the set of subscribed resources changes.
        """
        caps = client.server_capabilities or t.ServerCapabilities()
        while True:
            changed = self._subscriptions_changed = anyio.Event()
            async with anyio.create_task_group() as tg:

                async def listen() -> None:
                    try:
                        async with client.listen(
                            tools_list_changed=bool(caps.tools),
                            prompts_list_changed=bool(caps.prompts),
                            resources_list_changed=bool(caps.resources),
                            resource_subscriptions=sorted(self._subscriptions),
                        ) as subscription:
                            async for _event in subscription:
                                pass
                    except Exception as exc:  # boundary: no listen support just means we rely on probes
                        log.debug("upstream %s: no change subscription (%s)", self.name, describe_failure(exc))

                tg.start_soon(listen)
                await changed.wait()
                tg.cancel_scope.cancel()

    async def _probe(self, client: Client) -> None:
        """Notice a hung or silently dead upstream without waiting for a user's call.

        `ping` is gone at 2026-07-28, so the probe is a listing; it doubles as a safety net
        for a missed list_changed.
        """
        while True:
            interval = self.settings.health_interval
            with anyio.move_on_after(interval):
                await self._probe_now.wait()
            self._probe_now = anyio.Event()
            try:
                with anyio.fail_after(min(self.settings.connect_timeout, max(interval, 1.0))):
                    listing = await self._list_all(client)
            except Exception as exc:  # boundary: any probe failure means reconnect
                self._mark_lost(f"liveness probe failed: {describe_failure(exc)}")
                return
            if listing != self._listing:
                await self._publish(listing)

    # -- requests ----------------------------------------------------------------------------

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
        """Forward a call. Upstream questions go to `ask`; see `mcpgw.front.asking` for the eras."""
        async with self._session_for(principal) as client:
            if client.protocol_version not in MODERN_PROTOCOL_VERSIONS:
                # A 2025-era upstream asks by pushing requests during the call: attribute them.
                request = t.CallToolRequest(
                    params=t.CallToolRequestParams(name=name, arguments=arguments, _meta=cast(Any, meta or None))
                )
                with self._attributable(ask):
                    return await self._send(client, "tools/call", name, request, _CALL_RESULT, timeout, progress)
            responses, state = input_responses, request_state
            for _ in range(MAX_INPUT_ROUNDS):
                request = t.CallToolRequest(params=t.CallToolRequestParams(
                    name=name, arguments=arguments, _meta=cast(Any, meta or None),
                    input_responses=cast(Any, responses), request_state=state,
                ))
                result = await self._send(client, "tools/call", name, request, _CALL_RESULT, timeout, progress)
                if not isinstance(result, t.InputRequiredResult):
                    return result
                if ask is None or ask.modern:
                    return result  # a 2026 agent answers with a retry: pass the question through
                responses, state = await self._answer(name, ask, result), result.request_state
        raise UpstreamProtocolError(
            f"upstream {self.name!r} asked for input more than {MAX_INPUT_ROUNDS} times in tools/call {name!r}"
        )

    async def _answer(self, target: str, ask: Asker, result: t.InputRequiredResult) -> dict[str, Any]:
        answers: dict[str, Any] = {}
        for key, question in (result.input_requests or {}).items():
            answer = await ask(question)
            if isinstance(answer, t.ErrorData):
                raise UpstreamProtocolError(
                    f"upstream {self.name!r} needs {question.method} to complete {target!r}, and it failed: "
                    f"{answer.message}",
                    code=answer.code,
                )
            answers[key] = answer
        return answers

    # -- requests from the upstream ----------------------------------------------------------

    @contextlib.contextmanager
    def _attributable(self, ask: Asker | None) -> Iterator[None]:
        if ask is None:
            yield
            return
        key = next(self._ask_seq)
        self._askers[key] = ask
        try:
            yield
        finally:
            del self._askers[key]

    def _attribute(self, method: str) -> Asker | t.ErrorData:
        """The agent a pushed request is for: the one agent with requests in flight to us.

        The 2025 protocol does not say which request a pushed request belongs to. With requests
        from one agent in flight the answer is certain; with several agents it is not, and the
        request is refused rather than risk asking (or leaking to) the wrong agent.
        """
        latest: dict[object, Asker] = {}
        for asker in self._askers.values():
            latest[asker.agent] = asker
        if not latest:
            return t.ErrorData(code=INVALID_REQUEST, message=f"mcpgw: no agent request is in flight to upstream "
                                                             f"{self.name!r}, so there is nobody to ask ({method})")
        if len(latest) > 1:
            return t.ErrorData(code=INVALID_REQUEST, message=(
                f"mcpgw: {len(latest)} agents have requests in flight to upstream {self.name!r} and its protocol "
                f"version does not say which one this {method} is for; refused rather than risk asking the wrong "
                "agent"))
        return next(iter(latest.values()))

    async def _forward_question(self, request: Any) -> Any:
        asker = self._attribute(request.method)
        if isinstance(asker, t.ErrorData):
            log.warning("upstream %s: %s", self.name, asker.message)
            return asker
        return await asker(request)

    async def _on_sampling(
        self, context: ClientRequestContext, params: t.CreateMessageRequestParams
    ) -> t.CreateMessageResult | t.CreateMessageResultWithTools | t.ErrorData:
        answer: t.CreateMessageResult | t.CreateMessageResultWithTools | t.ErrorData = await self._forward_question(
            t.CreateMessageRequest(params=params)
        )
        return answer

    async def _on_elicitation(
        self, context: ClientRequestContext, params: t.ElicitRequestParams
    ) -> t.ElicitResult | t.ErrorData:
        answer: t.ElicitResult | t.ErrorData = await self._forward_question(t.ElicitRequest(params=params))
        return answer

    async def _on_list_roots(self, context: ClientRequestContext) -> t.ListRootsResult | t.ErrorData:
        answer: t.ListRootsResult | t.ErrorData = await self._forward_question(t.ListRootsRequest())
        return answer

    async def read_resource(
        self, uri: str, *, meta: dict[str, Any] | None, timeout: float, principal: Principal | None = None
    ) -> t.ReadResourceResult:
        request = t.ReadResourceRequest(params=t.ReadResourceRequestParams(uri=uri, _meta=cast(Any, meta or None)))
        async with self._session_for(principal) as client:
            return await self._send(client, "resources/read", uri, request, t.ReadResourceResult, timeout, None)

    async def get_prompt(
        self,
        name: str,
        arguments: dict[str, str] | None,
        *,
        meta: dict[str, Any] | None,
        timeout: float,
        principal: Principal | None = None,
    ) -> t.GetPromptResult:
        request = t.GetPromptRequest(
            params=t.GetPromptRequestParams(name=name, arguments=arguments, _meta=cast(Any, meta or None))
        )
        async with self._session_for(principal) as client:
            return await self._send(client, "prompts/get", name, request, t.GetPromptResult, timeout, None)

    async def complete(
        self,
        ref: t.PromptReference | t.ResourceTemplateReference,
        argument: t.CompletionArgument,
        context: t.CompletionContext | None,
        *,
        timeout: float,
        principal: Principal | None = None,
    ) -> t.CompleteResult:
        caps = self._client.server_capabilities if self._client else None
        if caps is not None and caps.completions is None:
            return t.CompleteResult(completion=t.Completion(values=[]))
        request = t.CompleteRequest(params=t.CompleteRequestParams(ref=ref, argument=argument, context=context))
        target = ref.name if isinstance(ref, t.PromptReference) else ref.uri
        async with self._session_for(principal) as client:
            return await self._send(client, "completion/complete", target, request, t.CompleteResult, timeout, None)

    async def subscribe(self, uri: str, *, timeout: float) -> None:
        """Ask for `notifications/resources/updated` about `uri` (kept across reconnects)."""
        await self._change_subscription(uri, subscribe=True, timeout=timeout)

    async def unsubscribe(self, uri: str, *, timeout: float) -> None:
        await self._change_subscription(uri, subscribe=False, timeout=timeout)

    async def _change_subscription(self, uri: str, *, subscribe: bool, timeout: float) -> None:
        client = self._require_client()
        caps = client.server_capabilities
        if subscribe and not (caps and caps.resources and caps.resources.subscribe):
            raise UpstreamProtocolError(f"upstream {self.name!r} does not support resource subscriptions",
                                        code=INVALID_REQUEST)
        if subscribe:
            self._subscriptions.add(uri)
        else:
            self._subscriptions.discard(uri)
        if client.protocol_version in MODERN_PROTOCOL_VERSIONS:
            self._subscriptions_changed.set()  # the listen stream reopens with the new set
            return
        request: Any = (t.SubscribeRequest(params=t.SubscribeRequestParams(uri=uri)) if subscribe
                        else t.UnsubscribeRequest(params=t.UnsubscribeRequestParams(uri=uri)))
        await self._send(client, "resources/subscribe" if subscribe else "resources/unsubscribe", uri, request,
                         t.EmptyResult, timeout, None)

    async def _resubscribe(self, client: Client) -> None:
        """After a reconnect, a 2025-era upstream has forgotten our subscriptions."""
        if client.protocol_version in MODERN_PROTOCOL_VERSIONS:
            return
        for uri in sorted(self._subscriptions):
            with contextlib.suppress(Exception):  # boundary: best effort, reported by the upstream's own error
                with anyio.fail_after(self.settings.connect_timeout):
                    await client.session.subscribe_resource(uri)

    def _require_client(self) -> Client:
        client = self._client
        if client is None or self.state.status is not Status.UP:
            why = self.state.error or self.state.status.value
            raise UpstreamUnavailable(f"upstream {self.name!r} is not available ({why}); try again shortly")
        return client

    def _session_for(self, principal: Principal | None) -> contextlib.AbstractAsyncContextManager[Client]:
        """The session a request for `principal` goes over: the shared one, or — for an upstream
        that acts on the caller's behalf — that caller's own (see `DelegatedSessions`)."""
        client = self._require_client()
        delegated = self._delegated
        return contextlib.nullcontext(client) if delegated is None else delegated.session(principal)

    async def _send(
        self,
        client: Client,
        method: str,
        target: str,
        request: Any,
        result_type: type[ResultT] | TypeAdapter[ResultT],
        timeout: float,
        progress: ProgressFn | None,
    ) -> ResultT:
        try:
            return await client.session.send_request(
                request,
                result_type,
                request_read_timeout_seconds=timeout if math.isfinite(timeout) else None,
                progress_callback=cast(Any, progress),
            )
        except MCPError as exc:
            if exc.code == REQUEST_TIMEOUT:
                self._probe_now.set()
                raise UpstreamTimeout(
                    f"upstream {self.name!r} did not answer {method} {target!r} within {timeout:g}s; "
                    "the request was cancelled upstream"
                ) from None
            if exc.code == CONNECTION_CLOSED and self._retired is not None:
                raise UpstreamUnavailable(
                    f"upstream {self.name!r} was {self._retired} while {method} {target!r} was in flight"
                ) from None
            if exc.code == CONNECTION_CLOSED and client is not self._client:
                raise UpstreamUnavailable(
                    f"upstream {self.name!r} closed the caller's session during {method} {target!r}; try again"
                ) from None
            if exc.code == CONNECTION_CLOSED:
                self._mark_lost("connection closed during a request")
                raise UpstreamUnavailable(
                    f"upstream {self.name!r} closed the connection during {method} {target!r} "
                    "(it crashed or exited); it is being restarted"
                ) from None
            raise UpstreamProtocolError(f"upstream {self.name!r}: {exc.message}", code=exc.code) from None
        except ValidationError:
            raise UpstreamProtocolError(f"upstream {self.name!r} returned a malformed {method} result") from None


_CALL_RESULT: TypeAdapter[t.CallToolResult | t.InputRequiredResult] = TypeAdapter(
    t.CallToolResult | t.InputRequiredResult
)
_LIST_CHANGED = (t.ToolListChangedNotification, t.PromptListChangedNotification, t.ResourceListChangedNotification)


async def _set_when(source: anyio.Event, target: anyio.Event) -> None:
    await source.wait()
    target.set()

