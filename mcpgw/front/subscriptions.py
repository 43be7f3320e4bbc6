"""Resource subscriptions: many agents, one upstream subscription per resource.

The first agent to subscribe to a resource makes the gateway subscribe upstream (a step through
the pipeline, so policy sees it); the last one to leave unsubscribes it. Updates fan out to the
agents subscribed: 2025-era agents get `notifications/resources/updated` on their session,
2026-07-28 agents on the `subscriptions/listen` streams that asked for that URI.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import anyio
import mcp.types as t
from mcp.server import ServerRequestContext
from mcp.server.subscriptions import ListenHandler, ResourceUpdated

from mcpgw.front.asking import agent_key
from mcpgw.pipeline.step import StepKind

log = logging.getLogger("mcpgw.front")

RunStep = Callable[[ServerRequestContext[Any], StepKind, str], Awaitable[Any]]


class ResourceSubscribers:
    def __init__(self, run: RunStep, notifier: Any) -> None:
        self._run = run
        self._notifier = notifier
        self._holders: dict[str, set[object]] = {}
        self._lock = anyio.Lock()

    async def subscribe(self, ctx: ServerRequestContext[Any], uri: str, holder: object | None = None) -> None:
        async with self._lock:
            holders = self._holders.get(uri)
            if not holders:
                await self._run(ctx, StepKind.RESOURCE_SUBSCRIBE, uri)
                holders = self._holders[uri] = set()
            holders.add(holder if holder is not None else agent_key(ctx))

    async def unsubscribe(self, ctx: ServerRequestContext[Any] | None, uri: str, holder: object) -> None:
        async with self._lock:
            holders = self._holders.get(uri)
            if holders is None or holder not in holders:
                return
            holders.discard(holder)
            if holders:
                return
            del self._holders[uri]
            if ctx is not None:
                try:
                    await self._run(ctx, StepKind.RESOURCE_UNSUBSCRIBE, uri)
                except Exception as exc:  # boundary: the agent is gone or the upstream is down; nothing to undo
                    log.debug("unsubscribe %s upstream failed: %s", uri, exc)

    def forget(self, holder: object) -> None:
        """An agent disconnected: drop it everywhere (the upstream subscription lapses with the last one)."""
        for holders in self._holders.values():
            holders.discard(holder)

    async def updated(self, uri: str) -> None:
        await self._notifier.bus.publish(ResourceUpdated(uri))
        for key in list(self._holders.get(uri, ())):
            session = self._notifier.legacy.get(key)
            if session is not None:
                await self._notifier.send(key, partial(session.send_resource_updated, uri))


class SubscribingListen:
    """`subscriptions/listen` that also subscribes upstream to the resources the stream asks for."""

    def __init__(self, inner: ListenHandler, subscribers: ResourceSubscribers) -> None:
        self._inner = inner
        self._subscribers = subscribers

    async def __call__(self, ctx: ServerRequestContext[Any], params: t.SubscriptionsListenRequestParams) -> Any:
        holder = object()
        uris = list(params.notifications.resource_subscriptions or ())
        subscribed: list[str] = []
        try:
            for uri in uris:
                await self._subscribers.subscribe(ctx, uri, holder)
                subscribed.append(uri)
            return await self._inner(ctx, params)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                for uri in subscribed:
                    await self._subscribers.unsubscribe(ctx, uri, holder)
