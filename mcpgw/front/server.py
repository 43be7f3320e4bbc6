"""The MCP server face of the gateway: turns MCP requests into Steps and results back.

Built on the SDK's low-level `Server`, one object for every transport and both protocol eras.
Handlers here do three things only: build a `Step` from the request, run it through the
pipeline, and translate the outcome into MCP. No policy, limits or routing live here.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar, cast

import anyio
import mcp.types as t
from mcp import MCPError
from mcp.server import NotificationOptions, Server, ServerRequestContext
from mcp.server.context import CallNext, HandlerResult
from mcp.server.models import InitializationOptions
from mcp.server.session import ServerSession
from mcp.server.subscriptions import (
    InMemorySubscriptionBus,
    ListenHandler,
    PromptsListChanged,
    ResourcesListChanged,
    ServerEvent,
    ToolsListChanged,
)
from mcp.types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError

from mcpgw import __version__
from mcpgw.catalog import InvalidCursor, Kind, paginate
from mcpgw.front.asking import PARKED_PREFIX, BackChannelAsker, Parking, PassThroughAsker, agent_key
from mcpgw.front.subscriptions import ResourceSubscribers, SubscribingListen
from mcpgw.gateway import Gateway
from mcpgw.pipeline.errors import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    LimitsUnavailable,
    RateLimited,
    StepError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from mcpgw.pipeline.step import Asker, Caller, Step, StepKind

log = logging.getLogger("mcpgw.front")

_NOT_FORWARDED_META = ("progressToken",)
"""`_meta` keys that belong to the agent↔gateway hop: progress is relayed by the gateway with its
own token upstream. Trace context (`traceparent`, `tracestate`) stays in the step's meta: the
trace stage continues it and replaces it with the gateway's own span when tracing is on; when it
is off, the upstream continues the agent's trace directly."""

_TRACE_HEADERS = ("traceparent", "tracestate")


NOTIFY_TIMEOUT = 2.0


class GatewayServer(Server[Any]):
    """A low-level Server that advertises `listChanged`, because the gateway does deliver it."""

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        return super().create_initialization_options(
            notification_options
            or NotificationOptions(tools_changed=True, prompts_changed=True, resources_changed=True),
            experimental_capabilities,
            extensions,
        )


LEVELS: tuple[t.LoggingLevel, ...] = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
DEFAULT_AGENT_LOG_LEVEL: t.LoggingLevel = "info"


class Notifier:
    """Delivers list changes and upstream log messages to every connected agent, in both eras.

    Handshake-era agents get them on their session's standalone stream (captured when they send
    `notifications/initialized`); 2026-07-28 agents get list changes only through a
    `subscriptions/listen` stream, which the SDK's `ListenHandler` serves from `bus`. (MCP
    logging is deprecated at 2026-07-28: upstream log lines reach 2025-era agents only.)
    """

    def __init__(self) -> None:
        self.bus = InMemorySubscriptionBus()
        self.legacy: dict[object, ServerSession] = {}
        self.levels: dict[object, t.LoggingLevel] = {}
        self.subscribers: ResourceSubscribers | None = None

    async def on_initialized(self, ctx: ServerRequestContext[Any], params: t.NotificationParams | None) -> None:
        key = agent_key(ctx)
        self.legacy[key] = ctx.session
        exit_stack = getattr(key, "exit_stack", None)  # the SDK-private connection: prune on close
        if exit_stack is not None:
            exit_stack.callback(self._forget, key)

    def _forget(self, key: object) -> None:
        self.legacy.pop(key, None)
        self.levels.pop(key, None)
        if self.subscribers is not None:
            self.subscribers.forget(key)

    async def changed(self, kinds: set[Kind]) -> None:
        events: list[ServerEvent] = []
        senders: list[str] = []
        if Kind.TOOL in kinds:
            events.append(ToolsListChanged())
            senders.append("send_tool_list_changed")
        if Kind.PROMPT in kinds:
            events.append(PromptsListChanged())
            senders.append("send_prompt_list_changed")
        if kinds & {Kind.RESOURCE, Kind.TEMPLATE}:
            events.append(ResourcesListChanged())
            senders.append("send_resource_list_changed")
        for event in events:
            await self.bus.publish(event)
        for key, session in list(self.legacy.items()):
            await self.send(key, *(getattr(session, sender) for sender in senders))

    async def upstream_log(self, upstream: str, params: t.LoggingMessageNotificationParams) -> None:
        rank = LEVELS.index(params.level)
        logger = f"{upstream}.{params.logger}" if params.logger else upstream
        for key, session in list(self.legacy.items()):
            if rank >= LEVELS.index(self.levels.get(key, DEFAULT_AGENT_LOG_LEVEL)):
                await self.send(key, partial(session.send_log_message, params.level, params.data, logger=logger))

    async def send(self, key: object, *sends: Callable[[], Awaitable[None]]) -> None:
        """Run `sends` to one agent, bounded: an agent that stopped reading must not stall the
        upstream whose change is being announced; a dead session is dropped."""
        with anyio.move_on_after(NOTIFY_TIMEOUT) as scope:
            try:
                for send in sends:
                    await send()
            except Exception:  # boundary: a dead session is dropped, not fatal
                self._forget(key)
        if scope.cancelled_caught:
            log.warning("an agent did not accept a notification within %gs; skipped", NOTIFY_TIMEOUT)


_PROTOCOL_META = "io.modelcontextprotocol/"


def _caller(ctx: ServerRequestContext[Any], transport: str) -> Caller:
    name = version = None
    params = ctx.session.client_params
    if params is not None:
        name, version = params.client_info.name, params.client_info.version
    elif ctx.meta:
        info = cast(dict[str, Any], ctx.meta).get(t.CLIENT_INFO_META_KEY)
        if isinstance(info, dict):
            name, version = info.get("name"), info.get("version")
    request = ctx.request
    session_id = None
    if request is not None:
        transport = "sse" if request.url.path.rstrip("/").endswith("messages") else "http"
        session_id = request.headers.get("mcp-session-id")
    return Caller(transport, ctx.protocol_version, name, version, session_id)


def _forwardable_meta(ctx: ServerRequestContext[Any]) -> dict[str, Any]:
    """The agent's `_meta` for the upstream, with W3C trace context from the HTTP headers when
    `_meta` carries none (`_meta` is per MCP request, so it wins)."""
    raw = (ctx.params or {}).get("_meta")
    meta = {} if not isinstance(raw, dict) else {
        k: v for k, v in raw.items() if k not in _NOT_FORWARDED_META and not k.startswith(_PROTOCOL_META)
    }
    request = ctx.request
    if request is not None and "traceparent" not in meta and (parent := request.headers.get("traceparent")):
        meta["traceparent"] = parent
        if state := request.headers.get("tracestate"):
            meta["tracestate"] = state
    return meta


def _trace_meta(ctx: ServerRequestContext[Any]) -> dict[str, Any]:
    """Only the trace context, for steps whose `_meta` is not forwarded (listings, completions)."""
    meta = _forwardable_meta(ctx)
    return {k: meta[k] for k in _TRACE_HEADERS if k in meta}


def _error_result(message: str, reason: str) -> t.CallToolResult:
    """A model-readable failure: the agent sees why the tool did not run and can decide what to do."""
    return t.CallToolResult(
        content=[t.TextContent(type="text", text=message)], is_error=True, _meta={"mcpgw/error": reason}
    )


def _limited_result(exc: RateLimited, output_schema: bool) -> t.CallToolResult:
    """A refusal by a rate limit, as a tool error the model reads and can act on (wait, or do
    something else) rather than a protocol error its host may only show to the user. The limit
    and the seconds to wait are also machine-readable: in `_meta`, and in `structuredContent`
    unless the tool declares an output schema (which this shape would not match)."""
    details = {"error": "rate_limited", "limit": exc.limit, "retry_after": exc.retry_after}
    return t.CallToolResult(
        content=[t.TextContent(type="text", text=exc.message)], is_error=True,
        structured_content=None if output_schema else details,
        _meta={"mcpgw/error": exc.outcome.value, "mcpgw/limit": exc.limit, "mcpgw/retry_after": exc.retry_after},
    )


def build_server(gateway: Gateway, *, default_transport: str = "stdio") -> tuple[GatewayServer, Notifier]:
    """The MCP server for `gateway`, plus the notifier the gateway uses to announce changes.

    Settings are read from `gateway.config` at use time, never captured: a reload swaps it.
    """
    notifier = Notifier()
    gateway.on_catalog_changed(notifier.changed)

    async def run(step: Step) -> Any:
        try:
            return await gateway.pipeline.run(step)
        except StepError as exc:
            raise MCPError(exc.code, exc.message) from None

    async def listing(ctx: ServerRequestContext[Any], kind: StepKind, params: t.PaginatedRequestParams | None) -> Any:
        items = await run(Step(kind, _caller(ctx, default_transport), meta=_trace_meta(ctx)))
        try:
            return paginate(items, params.cursor if params else None, gateway.config.gateway.page_size)
        except InvalidCursor as exc:
            raise MCPError(INVALID_PARAMS, str(exc)) from None

    async def list_tools(ctx: ServerRequestContext[Any], params: t.PaginatedRequestParams | None) -> t.ListToolsResult:
        page, next_cursor = await listing(ctx, StepKind.TOOL_LIST, params)
        return t.ListToolsResult(tools=page, next_cursor=next_cursor)

    async def list_prompts(
        ctx: ServerRequestContext[Any], params: t.PaginatedRequestParams | None
    ) -> t.ListPromptsResult:
        page, next_cursor = await listing(ctx, StepKind.PROMPT_LIST, params)
        return t.ListPromptsResult(prompts=page, next_cursor=next_cursor)

    async def list_resources(
        ctx: ServerRequestContext[Any], params: t.PaginatedRequestParams | None
    ) -> t.ListResourcesResult:
        page, next_cursor = await listing(ctx, StepKind.RESOURCE_LIST, params)
        return t.ListResourcesResult(resources=page, next_cursor=next_cursor)

    async def list_templates(
        ctx: ServerRequestContext[Any], params: t.PaginatedRequestParams | None
    ) -> t.ListResourceTemplatesResult:
        page, next_cursor = await listing(ctx, StepKind.TEMPLATE_LIST, params)
        return t.ListResourceTemplatesResult(resource_templates=page, next_cursor=next_cursor)

    parking = Parking(gateway.spawn, lambda: gateway.config.gateway.call_timeout)

    async def call_tool(
        ctx: ServerRequestContext[Any], params: t.CallToolRequestParams
    ) -> t.CallToolResult | t.InputRequiredResult:
        session = ctx.session
        caller = _caller(ctx, default_transport)
        modern = ctx.protocol_version in MODERN_PROTOCOL_VERSIONS

        async def relay(progress: float, total: float | None, message: str | None) -> None:
            with contextlib.suppress(Exception):  # the agent's request may be over (a parked call)
                await session.report_progress(progress, total, message)

        def make_step(ask: Asker) -> Step:
            return Step(
                StepKind.TOOL_CALL,
                caller,
                target=params.name,
                arguments=params.arguments,
                meta=_forwardable_meta(ctx),
                progress=relay,
                ask=ask,
                input_responses=cast(dict[str, Any] | None, params.input_responses) if modern else None,
                request_state=params.request_state if modern else None,
            )

        outcome: Any
        try:
            if not modern:
                outcome = await gateway.pipeline.run(make_step(BackChannelAsker(ctx, caller.client_name)))
            elif params.request_state and params.request_state.startswith(PARKED_PREFIX):
                call = parking.resume(params.request_state, cast(dict[str, Any] | None, params.input_responses))
                if call is None:
                    raise MCPError(INVALID_PARAMS, "requestState names no pending call (it expired or completed)")
                outcome = await parking.next_outcome(call)
            elif gateway.asks_mid_call(params.name):
                # A 2026 agent can only answer a mid-call question by retrying: park the call. (When
                # the upstream is not known yet, parking is the safe choice: it serves both.)
                call = parking.start(ctx, caller.client_name, lambda asker: gateway.pipeline.run(make_step(asker)))
                outcome = await parking.next_outcome(call)
            else:
                outcome = await gateway.pipeline.run(make_step(PassThroughAsker(ctx)))
        except RateLimited as exc:
            entry = gateway.catalog.lookup(params.name)
            return _limited_result(exc, entry is not None and entry.item.output_schema is not None)
        except (UpstreamUnavailable, UpstreamTimeout, LimitsUnavailable) as exc:
            return _error_result(exc.message, exc.outcome.value)
        except StepError as exc:
            raise MCPError(exc.code, exc.message) from None
        except TimeoutError:
            return _error_result("mcpgw: the call did not complete in time", "timeout")
        return outcome if isinstance(outcome, t.InputRequiredResult) else _without_protocol_meta(outcome)

    async def read_resource(
        ctx: ServerRequestContext[Any], params: t.ReadResourceRequestParams
    ) -> t.ReadResourceResult:
        step = Step(StepKind.RESOURCE_READ, _caller(ctx, default_transport), target=str(params.uri),
                    meta=_forwardable_meta(ctx))
        result: t.ReadResourceResult = await run(step)
        return _without_protocol_meta(result)

    async def get_prompt(ctx: ServerRequestContext[Any], params: t.GetPromptRequestParams) -> t.GetPromptResult:
        step = Step(StepKind.PROMPT_GET, _caller(ctx, default_transport), target=params.name,
                    arguments=dict(params.arguments or {}), meta=_forwardable_meta(ctx))
        result: t.GetPromptResult = await run(step)
        return _without_protocol_meta(result)

    async def complete(ctx: ServerRequestContext[Any], params: t.CompleteRequestParams) -> t.CompleteResult:
        target = params.ref.name if isinstance(params.ref, t.PromptReference) else params.ref.uri
        step = Step(StepKind.COMPLETE, _caller(ctx, default_transport), target=target, request=params,
                    meta=_trace_meta(ctx))
        result: t.CompleteResult = await run(step)
        return _without_protocol_meta(result)

    async def run_resource_step(ctx: ServerRequestContext[Any], kind: StepKind, uri: str) -> Any:
        return await run(Step(kind, _caller(ctx, default_transport), target=uri, meta=_trace_meta(ctx)))

    subscribers = ResourceSubscribers(run_resource_step, notifier)
    notifier.subscribers = subscribers
    gateway.on_resource_updated(subscribers.updated)

    async def subscribe(ctx: ServerRequestContext[Any], params: t.SubscribeRequestParams) -> t.EmptyResult:
        await subscribers.subscribe(ctx, str(params.uri))
        return t.EmptyResult()

    async def unsubscribe(ctx: ServerRequestContext[Any], params: t.UnsubscribeRequestParams) -> t.EmptyResult:
        await subscribers.unsubscribe(ctx, str(params.uri), agent_key(ctx))
        return t.EmptyResult()

    server = GatewayServer(
        gateway.config.gateway.name,
        version=__version__,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_prompts=list_prompts,
        on_get_prompt=get_prompt,
        on_list_resources=list_resources,
        on_list_resource_templates=list_templates,
        on_read_resource=read_resource,
        on_completion=complete,
        on_subscriptions_listen=SubscribingListen(ListenHandler(notifier.bus), subscribers),
        on_subscribe_resource=subscribe,
        on_unsubscribe_resource=unsubscribe,
        get_tool_input_schema=lambda name: gateway.catalog.input_schema(name),  # the catalog is swapped on reload
    )
    server.add_notification_handler("notifications/initialized", t.NotificationParams, notifier.on_initialized)

    async def set_level(ctx: ServerRequestContext[Any], params: t.SetLevelRequestParams) -> t.EmptyResult:
        notifier.levels[agent_key(ctx)] = params.level
        verbose = min((LEVELS.index(level) for level in notifier.levels.values()), default=LEVELS.index(params.level))
        await gateway.set_upstream_log_level(LEVELS[verbose])
        return t.EmptyResult()

    server.add_request_handler("logging/setLevel", t.SetLevelRequestParams, set_level)
    gateway.on_upstream_log(notifier.upstream_log)

    async def track(ctx: ServerRequestContext[Any], call_next: CallNext) -> HandlerResult:
        """Count requests in flight for a graceful shutdown; refuse new ones once it started."""
        if ctx.request_id is None or ctx.method == "subscriptions/listen":
            return await call_next(ctx)
        if gateway.draining:
            raise MCPError(INTERNAL_ERROR, "the gateway is shutting down; retry against another instance")
        with gateway.track():
            return await call_next(ctx)

    # The SDK opens an OpenTelemetry span per message by default; with no tracer configured it is
    # pure overhead on every call (measured ~6% of the gateway's CPU per tools/call). Tracing
    # belongs to the pipeline's trace stage, built only when [telemetry] is on, where the span
    # carries the step's id, its upstream and its outcome.
    server.middleware[:] = [m for m in server.middleware if type(m).__name__ != "OpenTelemetryMiddleware"]
    server.middleware.append(_contain_errors)
    server.middleware.append(track)
    return server, notifier


ResultT = TypeVar("ResultT", bound=t.Result)


def _without_protocol_meta(result: ResultT) -> ResultT:
    """The upstream hop's protocol envelope (its serverInfo...) is not the agent's business."""
    if result.meta and any(k.startswith(_PROTOCOL_META) for k in result.meta):
        meta = {k: v for k, v in result.meta.items() if not k.startswith(_PROTOCOL_META)}
        return result.model_copy(update={"meta": meta or None})
    return result


async def _contain_errors(ctx: ServerRequestContext[Any], call_next: CallNext) -> HandlerResult:
    """Never let an unexpected exception's text reach an agent.

    In the handshake era the SDK would answer with code 0 and `str(exc)`, which can carry
    paths, upstream URLs or secrets. Expected failures are already `MCPError`s.
    """
    try:
        return await call_next(ctx)
    except (MCPError, ValidationError, anyio.get_cancelled_exc_class()):
        raise
    except Exception:
        log.exception("unexpected error handling %s", ctx.method)
        raise MCPError(INTERNAL_ERROR, "internal gateway error; details are in the gateway's log") from None
