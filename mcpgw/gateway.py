"""The running gateway: one config snapshot, its upstreams, its catalog and its pipeline.

This is the object the fronts (stdio, HTTP) and the CLI share. It starts every upstream
concurrently and returns at once — an agent host must get its `initialize` answered while slow
upstreams are still starting; they join the catalog as they come up and connected agents are
told with `list_changed`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import anyio
import anyio.abc
import mcp.types as t
from mcp.types.version import MODERN_PROTOCOL_VERSIONS

from mcpgw.catalog import Catalog, Kind
from mcpgw.config.models import Config
from mcpgw.pipeline.chain import Pipeline
from mcpgw.pipeline.stages.dispatch import Dispatch
from mcpgw.pipeline.stages.identify import Identify
from mcpgw.pipeline.stages.record import Record
from mcpgw.pipeline.stages.resolve import Resolve
from mcpgw.upstream import McpUpstream, Status, Upstream, build_upstream

log = logging.getLogger("mcpgw")

Listener = Callable[[set[Kind]], Awaitable[None]]
LogListener = Callable[[str, t.LoggingMessageNotificationParams], Awaitable[None]]
UpdatedListener = Callable[[str], Awaitable[None]]


class Gateway:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.catalog = Catalog(config)
        self.upstreams: dict[str, McpUpstream] = {
            name: build_upstream(name, server, config.gateway, self._listing_changed)
            for name, server in config.servers.items()
            if server.enabled
        }
        timeouts = {name: config.timeout_of(name) for name in config.servers}
        upstreams: dict[str, Upstream] = dict(self.upstreams)
        self.pipeline = Pipeline([
            Record(),
            Identify(),
            Resolve(self.catalog, config.gateway.call_timeout, timeouts, startup=self.wait_startup),
            Dispatch(self.catalog, upstreams),
        ])
        self._listeners: list[Listener] = []
        self._log_listeners: list[LogListener] = []
        self._updated_listeners: list[UpdatedListener] = []
        for upstream in self.upstreams.values():
            upstream.on_log_message(self._log_message)
            upstream.on_resource_updated(self._resource_updated)
        self.started_at: float | None = None
        self._startup_deadline: float | None = None
        self.running = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None

    def on_catalog_changed(self, listener: Listener) -> None:
        """Call `listener(kinds)` whenever exported lists change (to send list_changed)."""
        self._listeners.append(listener)

    def on_upstream_log(self, listener: LogListener) -> None:
        """Call `listener(upstream, message)` for every log message an upstream sends."""
        self._log_listeners.append(listener)

    async def _log_message(self, upstream: str, params: t.LoggingMessageNotificationParams) -> None:
        for listener in list(self._log_listeners):
            try:
                await listener(upstream, params)
            except Exception:  # boundary: relaying a log line must never break the upstream
                log.exception("upstream log listener failed")

    def on_resource_updated(self, listener: UpdatedListener) -> None:
        """Call `listener(exported URI)` when an upstream says a subscribed resource changed."""
        self._updated_listeners.append(listener)

    async def _resource_updated(self, upstream: str, uri: str) -> None:
        exported = self.catalog.exported_uri(upstream, uri)
        for listener in list(self._updated_listeners):
            try:
                await listener(exported)
            except Exception:  # boundary: one agent's failure must not stop the others
                log.exception("resource updated listener failed")

    async def set_upstream_log_level(self, level: t.LoggingLevel) -> None:
        for upstream in self.upstreams.values():
            await upstream.set_log_level(level)

    async def _listing_changed(self, upstream: McpUpstream) -> None:
        online = upstream.state.status is Status.UP
        if changed := self.catalog.update(upstream.name, upstream.listing, online=online):
            for listener in list(self._listeners):
                try:
                    await listener(changed)
                except Exception:  # boundary: one broken notifier must not stop the others
                    log.exception("list_changed listener failed")

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Supervise every upstream until cancelled. `started` fires before any has connected."""
        self.started_at = time.monotonic()
        self._startup_deadline = anyio.current_time() + self.config.gateway.startup_wait
        names = ", ".join(self.upstreams) or "none"
        log.info("starting %d upstream(s): %s", len(self.upstreams), names)
        async with anyio.create_task_group() as tg:
            self._tg = tg
            for upstream in self.upstreams.values():
                tg.start_soon(upstream.run)
            self.running.set()
            task_status.started()

    def spawn(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `fn` in the gateway's own task group: it outlives the request that started it."""
        if self._tg is None:
            raise RuntimeError("the gateway is not running")
        self._tg.start_soon(fn)

    def speaks_modern(self, tool: str) -> bool | None:
        """Whether the upstream serving `tool` speaks 2026-07-28 (None if unknown or down)."""
        entry = self.catalog.lookup(tool)
        upstream = self.upstreams.get(entry.upstream) if entry else None
        if upstream is None or upstream.state.protocol_version is None:
            return None
        return upstream.state.protocol_version in MODERN_PROTOCOL_VERSIONS

    @property
    def settled(self) -> bool:
        """True once every upstream has finished its first connection attempt."""
        return all(u.settled.is_set() for u in self.upstreams.values())

    async def wait_settled(self, timeout: float | None = None) -> bool:
        """Wait (bounded) until every upstream made its first attempt. Returns whether they all did.

        With no timeout, waits until the startup window (`gateway.startup_wait`) closes: the first
        `tools/list` of an agent that connects during start-up sees a complete catalog rather
        than whatever happened to be up after a few milliseconds.
        """
        if timeout is None:
            if self._startup_deadline is None:
                await self.running.wait()
            assert self._startup_deadline is not None
            timeout = self._startup_deadline - anyio.current_time()
        with anyio.move_on_after(max(timeout, 0)):
            for upstream in self.upstreams.values():
                await upstream.settled.wait()
        return self.settled

    async def wait_startup(self) -> bool:
        """Wait out the startup window; True once there is nothing left to wait for."""
        await self.wait_settled()
        assert self._startup_deadline is not None
        return self.settled or anyio.current_time() >= self._startup_deadline

    def readiness(self) -> dict[str, Any]:
        upstreams = {}
        for name, upstream in self.upstreams.items():
            info = upstream.state.as_dict()
            info["kind"] = upstream.config.kind
            info.update(self.catalog.counts_of(name))
            info["catalog_problems"] = self.catalog.problems.get(name, [])
            upstreams[name] = info
        up = sum(1 for u in self.upstreams.values() if u.state.status is Status.UP)
        return {
            "status": "ready" if self.settled else "starting",
            "config": str(self.config.source) if self.config.source else None,
            "upstreams_up": up,
            "upstreams_total": len(self.upstreams),
            "tools": len(self.catalog.tools),
            "prompts": len(self.catalog.prompts),
            "resources": len(self.catalog.resources),
            "resource_templates": len(self.catalog.templates),
            "upstreams": upstreams,
        }
