"""The running gateway: one config snapshot, its upstreams, its catalog and its pipeline.

This is the object the fronts (stdio, HTTP) and the CLI share. It starts every upstream
concurrently and returns at once — an agent host must get its `initialize` answered while slow
upstreams are still starting; they join the catalog as they come up and connected agents are
told with `list_changed`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import mcp.types as t
from mcp.types.version import MODERN_PROTOCOL_VERSIONS
from opentelemetry.trace import Tracer

from mcpgw.audit.events import upstream_record
from mcpgw.audit.redact import Redactor, configured_secrets
from mcpgw.audit.writer import AuditTrail
from mcpgw.catalog import Catalog, Kind
from mcpgw.config.loader import ConfigError, load_config
from mcpgw.config.models import Config
from mcpgw.limits import Limiter, build_limiter
from mcpgw.pipeline.chain import Pipeline, Stage
from mcpgw.pipeline.stages.approve import Approve
from mcpgw.pipeline.stages.audit import Audit
from mcpgw.pipeline.stages.authorize import Authorize
from mcpgw.pipeline.stages.dispatch import Dispatch
from mcpgw.pipeline.stages.identify import Identify
from mcpgw.pipeline.stages.limit import Limit
from mcpgw.pipeline.stages.record import Record
from mcpgw.pipeline.stages.resolve import Resolve
from mcpgw.pipeline.stages.trace import Trace
from mcpgw.policy.engine import Policy
from mcpgw.policy.loader import PolicyError, default_policies_dir, load_policies
from mcpgw.telemetry import Telemetry
from mcpgw.upstream import McpUpstream, Status, Upstream, build_upstream

log = logging.getLogger("mcpgw")

Listener = Callable[[set[Kind]], Awaitable[None]]
LogListener = Callable[[str, t.LoggingMessageNotificationParams], Awaitable[None]]
UpdatedListener = Callable[[str], Awaitable[None]]


class Gateway:
    """One running gateway. `config`, `catalog`, `upstreams` and `pipeline` are replaced together
    by `reload`; callers read them through the gateway at use time, never keep them.

    `policies` is the policies folder (default: `policies/` beside the config file); a folder
    that does not exist means no policy. A bad policy raises `PolicyError`.

    `telemetry` is given when `[telemetry]` is on (see `mcpgw.telemetry`): every step then gets a
    span, and http/sse upstreams get trace context headers. It is fixed for the process, and
    flushed when `run` is cancelled.

    `audit`: record steps to `config.audit` (what `mcpgw serve` asks for; `check`, `tools` and
    embedded uses do not write an audit trail). Like telemetry, fixed for the process.
    """

    def __init__(self, config: Config, policies: Path | None = None, *, telemetry: Telemetry | None = None,
                 audit: bool = False) -> None:
        self.policies_dir = policies if policies is not None else default_policies_dir(config.source)
        self.policy = Policy(load_policies(self.policies_dir))
        self._approval_key = os.urandom(32)
        """Seals 2026-07-28 retries of approved calls; per process, kept across reloads."""
        self.telemetry = telemetry
        self.tracer: Tracer | None = telemetry.tracer if telemetry is not None else None
        self.trail = AuditTrail(config.audit) if audit and config.audit.enabled else None
        self._redactor: Redactor | None = None
        self._listeners: list[Listener] = []
        self._log_listeners: list[LogListener] = []
        self._updated_listeners: list[UpdatedListener] = []
        self.upstreams: dict[str, McpUpstream] = {}
        self.limiter: Limiter = build_limiter(config.limits)
        """Rate-limit counters: kept across policy reloads (each new limit stage gets this one)."""
        self._scopes: dict[str, anyio.CancelScope] = {}
        self._install(config, reuse={})
        self._startup_deadline: float | None = None
        self.running = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        self._reload_lock = anyio.Lock()
        self.inflight = 0
        self._idle = anyio.Event()
        self._idle.set()
        self.draining = False

    def _install(self, config: Config, reuse: dict[str, McpUpstream]) -> None:
        """Build the catalog, upstream set and pipeline of `config` and swap them in at once."""
        catalog = Catalog(config)
        upstreams: dict[str, McpUpstream] = {}
        for name, server in config.servers.items():
            if not server.enabled:
                continue
            upstream = reuse.get(name)
            if upstream is None:
                upstream = build_upstream(name, server, config.gateway, self._listing_changed,
                                          trace_headers=self.tracer is not None)
                upstream.on_log_message(self._log_message)
                upstream.on_resource_updated(self._resource_updated)
                upstream.on_status(self._upstream_status)
            else:
                upstream.settings = config.gateway
                catalog.update(name, upstream.listing, online=upstream.state.status is Status.UP)
            upstreams[name] = upstream
        if self.trail is not None:
            self._redactor = Redactor(config.audit.redact, configured_secrets(config))
        pipeline = self._pipeline(config, catalog, upstreams)
        self.config, self.catalog, self.upstreams, self.pipeline = config, catalog, upstreams, pipeline

    def _pipeline(self, config: Config, catalog: Catalog, upstreams: dict[str, McpUpstream]) -> Pipeline:
        """The stages for one snapshot: config, catalog and upstreams as given, the current policy."""
        timeouts = {name: config.timeout_of(name) for name in config.servers}
        routes: dict[str, Upstream] = dict(upstreams)
        stages: list[Stage] = [
            Record(),
            Identify(config.auth),
            Authorize(self.policy),
            Approve(config.gateway.approval_timeout, self._approval_key),
            Resolve(catalog, config.gateway.call_timeout, timeouts, startup=self.wait_startup),
            Limit(self.policy, self.limiter, config.limits.key_prefix),
            Dispatch(catalog, routes),
        ]
        if self.tracer is not None:
            stages.append(Trace(self.tracer))
        if self.trail is not None and self._redactor is not None:
            stages.append(Audit(self.trail, config.audit, self._redactor))
        return Pipeline(stages)

    def _upstream_status(self, upstream: McpUpstream, was: Status) -> None:
        """Record an upstream coming up, failing to start, or being lost."""
        now = upstream.state.status
        if self.trail is None or self._redactor is None or now not in (Status.UP, Status.DOWN):
            return
        self.trail.submit(upstream_record(upstream.name, upstream.config.kind, up=now is Status.UP,
                                          was_up=was is Status.UP, protocol=upstream.state.protocol_version,
                                          error=upstream.state.error, redactor=self._redactor))

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
        if self.upstreams.get(upstream.name) is not upstream:
            return  # an upstream retired by a reload, publishing its way out
        online = upstream.state.status is Status.UP
        if changed := self.catalog.update(upstream.name, upstream.listing, online=online):
            await self._notify(changed)

    async def _notify(self, changed: set[Kind]) -> None:
        for listener in list(self._listeners):
            try:
                await listener(changed)
            except Exception:  # boundary: one broken notifier must not stop the others
                log.exception("list_changed listener failed")

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Supervise every upstream until cancelled. `started` fires before any has connected."""
        self._startup_deadline = anyio.current_time() + self.config.gateway.startup_wait
        names = ", ".join(self.upstreams) or "none"
        log.info("starting %d upstream(s): %s", len(self.upstreams), names)
        if self.trail is not None:
            self.trail.start()
            log.info("audit trail: %s (mode %s, writer %s)", self.trail.stats()["url"], self.config.audit.mode,
                     self.trail.writer)
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                for name in self.upstreams:
                    self._start(name)
                if self.config.source is not None:
                    tg.start_soon(self._reload_on_sighup)
                    if self.config.gateway.watch_config:
                        tg.start_soon(self._watch_config)
                if self.trail is not None:
                    tg.start_soon(self._flush_audit_when_stopped)
                self.running.set()
                task_status.started()
                try:
                    if self.telemetry is not None:
                        await self._flush_telemetry_when_stopped()
                    else:
                        await anyio.sleep_forever()
                finally:
                    with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                        await self.limiter.aclose()
        finally:
            if self.trail is not None:
                # Every step has ended by now (the fronts stop serving before they stop the
                # gateway; parked calls were just cancelled and recorded): write what is left.
                with anyio.CancelScope(shield=True):
                    await self.trail.aclose(timeout=max(self.config.gateway.shutdown_grace, 5.0))

    async def _flush_telemetry_when_stopped(self) -> None:
        """Export the buffered spans as soon as the gateway is told to stop, while its upstreams
        are being stopped (which may take seconds): an agent host that closed stdin kills the
        gateway soon after, and uvicorn ends the process with the SIGTERM it caught."""
        assert self.telemetry is not None
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.telemetry.shutdown)

    async def _flush_audit_when_stopped(self) -> None:
        """Write the queued audit records as soon as the gateway is told to stop, for the same
        reason; `run` closes the trail after the upstreams have stopped, with whatever came since."""
        assert self.trail is not None
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await self.trail.flush(timeout=max(self.config.gateway.shutdown_grace, 5.0))

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        """Count one agent request in flight (what a graceful shutdown waits for)."""
        self.inflight += 1
        self._idle = anyio.Event() if self._idle.is_set() else self._idle
        try:
            yield
        finally:
            self.inflight -= 1
            if self.inflight == 0:
                self._idle.set()

    async def drain(self, grace: float) -> bool:
        """Refuse new requests and wait up to `grace` seconds for those in flight. True if all ended."""
        self.draining = True
        if self.inflight:
            log.info("shutting down: waiting up to %gs for %d request(s) in flight", grace, self.inflight)
        with anyio.move_on_after(grace):
            await self._idle.wait()
        if self.inflight:
            log.warning("shutting down with %d request(s) still in flight after %gs", self.inflight, grace)
        return self.inflight == 0

    def _start(self, name: str) -> None:
        assert self._tg is not None
        scope = self._scopes[name] = anyio.CancelScope()
        upstream = self.upstreams[name]

        async def supervise() -> None:
            with scope:
                await upstream.run()

        self._tg.start_soon(supervise)

    # -- hot reload --------------------------------------------------------------------------

    async def reload(self, config: Config) -> dict[str, list[str]]:
        """Swap in `config`: add, remove and restart only the upstreams whose tables changed.

        Agents stay connected; they are told what changed with list_changed. Calls in flight to
        a removed or restarted upstream fail with an error that says so.
        """
        async with self._reload_lock:
            old = self.config
            def table(c: Config, name: str) -> Any:
                server = c.servers.get(name)
                return server if server is not None and server.enabled else None
            names = set(old.servers) | set(config.servers)
            added = sorted(n for n in names if table(old, n) is None and table(config, n) is not None)
            removed = sorted(n for n in names if table(old, n) is not None and table(config, n) is None)
            changed = sorted(n for n in names if None not in (table(old, n), table(config, n))
                             and table(old, n) != table(config, n))
            if old.telemetry != config.telemetry:
                log.warning("[telemetry] changed: the change takes effect when the gateway is restarted")
            retired_limiter = None
            if old.limits != config.limits:
                # New counters: a different store (or key prefix) cannot carry the old ones over.
                retired_limiter, self.limiter = self.limiter, build_limiter(config.limits)
                log.info("[limits] changed: rate-limit counters now %s", "in Redis at "
                         f"{config.limits.display_url}" if config.limits.url else "in this process")
            if old.gateway.separator != config.gateway.separator:
                changed = sorted(set(changed) | {n for n in names if table(old, n) and table(config, n)})
            kept = {n: u for n, u in self.upstreams.items() if n not in removed and n not in changed}
            self._audit_reload_warning(old, config)
            retiring = {n: self.upstreams[n] for n in [*removed, *changed]}
            self._install(config, reuse=kept)
            for name, upstream in retiring.items():
                upstream.retire("removed from the configuration" if name in removed else
                                "restarted by a configuration change")
                if (scope := self._scopes.pop(name, None)) is not None:
                    scope.cancel()
            for name in [*added, *changed]:
                self._start(name)
            if retired_limiter is not None:
                await retired_limiter.aclose()
            summary = {"added": added, "removed": removed, "restarted": changed}
            log.info("configuration reloaded from %s: %s", config.source,
                     "; ".join(f"{k} {', '.join(v)}" for k, v in summary.items() if v) or "no upstream changed")
            await self._notify(set(Kind))
            return summary

    def _audit_reload_warning(self, old: Config, new: Config) -> None:
        """Redaction, `mode` and `record_listings` apply at once; the store and its writer do not
        change under a running gateway (one process, one chain): that needs a restart."""
        fixed = ("enabled", "url", "queue_size", "batch_size", "flush_interval")
        changed = [k for k in fixed if getattr(old.audit, k) != getattr(new.audit, k)]
        if changed:
            log.warning("[audit] %s changed: this takes a restart of the gateway; until then the audit trail keeps "
                        "its settings at start-up%s", ", ".join(changed),
                        f" (writing to {self.trail.stats()['url']})" if self.trail else " (off)")

    async def reload_from_file(self) -> bool:
        """Re-read the config file; an invalid one is logged precisely and the running config kept."""
        source = self.config.source
        assert source is not None
        try:
            config = await anyio.to_thread.run_sync(load_config, source)
        except ConfigError as exc:
            log.error("configuration NOT reloaded; still running the previous one. %s", exc.render())
            return False
        if config.lock != self.config.lock:
            lock = config.lock
            log.info("lock file %s %s", config.lock_path,
                     f"read: {lock.count()} approved definition(s)" if lock is not None else "is gone: pinning is off")
        await self.reload(config)
        return True

    async def reload_policies(self) -> bool:
        """Re-read the policies folder; a bad file is logged precisely and the running policy kept."""
        try:
            policy = await anyio.to_thread.run_sync(load_policies, self.policies_dir)
        except PolicyError as exc:
            log.error("policies NOT reloaded; still enforcing the previous ones.\n%s", exc)
            return False
        async with self._reload_lock:
            # Only the stages change: the catalog and upstreams stay as they are (rebuilding the
            # catalog would re-review and re-scan every listing for nothing).
            self.policy = Policy(policy)
            self.pipeline = self._pipeline(self.config, self.catalog, self.upstreams)
        log.info("policies reloaded from %s: %d role(s), %d rule(s), %d limit(s)", self.policies_dir,
                 len(policy.roles), len(policy.rules), len(policy.limits))
        await self._notify(set(Kind))  # what each agent may see may have changed
        return True

    async def _reload_on_sighup(self) -> None:
        with anyio.open_signal_receiver(signal.SIGHUP) as signals:
            async for _ in signals:
                log.info("SIGHUP: reloading %s and %s", self.config.source, self.policies_dir)
                await self.reload_from_file()
                await self.reload_policies()

    def _watched(self) -> set[str]:
        """The files whose change reloads the config: servers.toml and its lock file."""
        paths = {self.config.source, self.config.lock_path}
        return {str(p.resolve()) for p in paths if p is not None}

    async def _watch_config(self) -> None:
        import watchfiles

        source = self.config.source
        assert source is not None
        target = source.resolve()
        policies = self.policies_dir.resolve()
        # Watch the directories, not the files: editors (and `mcpgw lock`) replace files (write a
        # temp file, rename it over). Only the config file, its lock file and policy files pass the
        # filter: a log file written beside them must not feed the watcher. Neither watch is
        # recursive (the config may sit in a big tree); the policies folder joins the watch when it
        # appears.
        def is_policy(path: str) -> bool:
            return path == str(policies) or (path.endswith(".toml") and Path(path).parent == policies)

        def is_config(change: watchfiles.Change, path: str) -> bool:
            return path in self._watched() or is_policy(path)

        while True:
            watching_policies = policies.is_dir()
            paths = [*(Path(p).parent for p in sorted(self._watched())), *([policies] if watching_policies else [])]
            # rust_timeout bounds how long the watcher thread ignores a cancellation: with the
            # default (5 s) every shutdown waited up to 5 s for it, longer than an agent host
            # gives a stdio gateway before killing it.
            async for changes in watchfiles.awatch(*dict.fromkeys(paths), watch_filter=is_config, debounce=200,
                                                   recursive=False, rust_timeout=250):
                # awatch reports absolute paths of the watched (resolved) directories' entries. A
                # deleted lock file counts (pinning turns off); a deleted config file does not.
                watched = self._watched()
                if any(path in watched and (change is not watchfiles.Change.deleted or path != str(target))
                       for change, path in changes):
                    await self.reload_from_file()
                if any(is_policy(path) for _, path in changes):
                    await self.reload_policies()
                if policies.is_dir() != watching_policies:
                    break  # the policies folder appeared or went: watch it (or stop) from now on

    def spawn(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `fn` in the gateway's own task group: it outlives the request that started it."""
        if self._tg is None:
            raise RuntimeError("the gateway is not running")
        self._tg.start_soon(fn)

    def asks_mid_call(self, tool: str) -> bool:
        """Whether a call of `tool` may put a question to its agent before it completes: its
        upstream is 2025-era (or not known yet), or policy may want a human's approval. A
        2026-07-28 agent can only answer such a question by retrying, so the front parks the call."""
        return self.speaks_modern(tool) is not True or self.policy.may_ask(tool)

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
            info["quarantined"] = [q.as_dict() for q in self.catalog.quarantine.get(name, [])]
            info["scan_findings"] = [f.as_dict() for f in self.catalog.findings.get(name, [])]
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
            "pinning": {"pin": self.catalog.pins.mode, "scan": self.catalog.pins.scan_mode,
                        "lock_file": str(self.config.lock_path) if self.config.lock is not None else None},
            "upstreams": upstreams,
            "audit": self.trail.stats() if self.trail is not None else None,
        }
