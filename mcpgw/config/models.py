"""Typed configuration: what `servers.toml` means once it has been parsed and checked.

These models are the only place the shape of the file is defined. They are immutable
(`frozen`) because a running gateway swaps whole snapshots rather than editing one in place,
and strict about unknown keys (`extra="forbid"`) because a misspelt key that is silently
ignored is worse than a start-up error.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mcpgw.config.auth import AuthSettings, UpstreamAuth, http_url
from mcpgw.config.limits import LimitsSettings
from mcpgw.pinning.lockfile import LockFile

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
"""Server names become tool-name prefixes, so they obey the MCP tool-name alphabet."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatewaySettings(_Model):
    """The `[gateway]` table: settings that apply to every upstream unless a server overrides them."""

    name: str = "mcpgw"
    separator: str = Field(default="__", min_length=1, max_length=8)
    call_timeout: float = Field(default=60.0, gt=0, description="seconds a tools/call may take upstream")
    connect_timeout: float = Field(default=30.0, gt=0, description="seconds to start and list one upstream")
    startup_wait: float = Field(
        default=5.0,
        ge=0,
        description="seconds a first tools/list waits for upstreams that are still starting",
    )
    page_size: int = Field(default=1000, ge=1, description="tools per tools/list page")
    health_interval: float = Field(default=30.0, gt=0, description="seconds between liveness probes of an upstream")
    restart_backoff: float = Field(default=0.5, gt=0, description="first delay before reconnecting an upstream")
    restart_backoff_max: float = Field(default=30.0, gt=0)
    upstream_log_level: Literal["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"] = (
        Field(default="info", description="log messages requested from 2026-07-28 upstreams (per request)")
    )
    watch_config: bool = Field(default=True, description="reload servers.toml when it changes (also on SIGHUP)")
    shutdown_grace: float = Field(default=10.0, ge=0, description="seconds in-flight requests get on shutdown")
    approval_timeout: float = Field(
        default=300.0, gt=0, description="seconds a human has to answer an approval question (policy `approve`)"
    )
    allowed_hosts: tuple[str, ...] = Field(
        default=(),
        description="extra Host header values the HTTP front accepts (loopback names are always accepted)",
    )
    allowed_origins: tuple[str, ...] = Field(
        default=(),
        description="extra Origin header values the HTTP front accepts (loopback origins are always accepted)",
    )
    pin: Literal["off", "new-ok", "strict"] = Field(
        default="strict",
        description="with a lock file present: quarantine changed tools and prompts, and (strict) ones not in "
        "the lock; without a lock file pinning is off whatever this says",
    )
    scan: Literal["off", "warn", "block"] = Field(
        default="warn", description="scan tool and prompt definitions for poisoning patterns; block quarantines"
    )
    lock_file: Path | None = Field(
        default=None, description="default: the config file's name with .lock (servers.lock), beside it"
    )

    @field_validator("separator")
    @classmethod
    def _separator_alphabet(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", value):
            raise ValueError("separator may only use letters, digits, '_', '.' and '-' (the MCP tool-name alphabet)")
        return value


class ToolFilter(_Model):
    """Glob filters over an upstream's own tool names (before namespacing)."""

    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()


class _ServerBase(_Model):
    prefix: str | None = Field(default=None, description="namespace prefix; default: the server's name")
    timeout: float | None = Field(default=None, gt=0, description="per-call timeout; default: gateway.call_timeout")
    tools: ToolFilter = ToolFilter()
    enabled: bool = True
    protocol: Literal["auto", "legacy", "2026-07-28"] = Field(
        default="auto",
        description="auto: 2026-07-28 if the server speaks it, else the 2025 handshake; legacy: always the "
        "handshake; 2026-07-28: assume it without probing",
    )

    @field_validator("prefix")
    @classmethod
    def _prefix_alphabet(cls, value: str | None) -> str | None:
        if value and not re.fullmatch(r"[A-Za-z0-9_.-]+", value):
            raise ValueError("prefix may only use letters, digits, '_', '.' and '-' (the MCP tool-name alphabet)")
        return value


class StdioServer(_ServerBase):
    """An MCP server the gateway launches and talks to over its stdin/stdout."""

    kind: Literal["stdio"]
    command: str = Field(min_length=1)
    args: tuple[str, ...] = ()
    env: dict[str, str] = Field(default_factory=dict)
    cwd: Path | None = Field(default=None, description="default: the directory that holds servers.toml")


class _RemoteBase(_ServerBase):
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    auth: UpstreamAuth | None = Field(default=None, description="credentials the gateway presents upstream")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return http_url(value)


class HttpServer(_RemoteBase):
    """A remote MCP server over Streamable HTTP (`url` is the MCP endpoint, e.g. https://host/mcp)."""

    kind: Literal["http"]


class SseServer(_RemoteBase):
    """A remote MCP server over the legacy HTTP+SSE transport (`url` is the SSE endpoint)."""

    kind: Literal["sse"]
    sse_read_timeout: float = Field(default=300.0, gt=0)


McpServer = Annotated[StdioServer | HttpServer | SseServer, Field(discriminator="kind")]
ServerConfig = McpServer
"""Every upstream kind. `openapi` and `rest` join this union when their connector lands."""

PLANNED_KINDS = frozenset({"openapi", "rest"})
KNOWN_KINDS = ("stdio", "http", "sse")
PLANNED_TABLES = frozenset({"llm"})


class TelemetrySettings(_Model):
    """The `[telemetry]` table: where the gateway's OpenTelemetry spans go. Off unless an exporter is chosen.

    `headers` are sent to the collector only (they often hold an API key, from `${VAR}`); they
    are kept out of every repr and log line.
    """

    exporter: Literal["none", "otlp", "console"] = Field(
        default="none", description="none (off), otlp (OTLP/HTTP protobuf to `endpoint`), console (JSON on stderr)"
    )
    endpoint: str = Field(default="http://127.0.0.1:4318/v1/traces", description="OTLP/HTTP traces URL")
    headers: dict[str, str] = Field(default_factory=dict, repr=False, description="sent with every export")
    timeout: float = Field(default=10.0, gt=0, description="seconds one export may take")
    service_name: str | None = Field(default=None, description="service.name; default: gateway.name")
    sample_ratio: float = Field(
        default=1.0, ge=0, le=1, description="share of traces started at the gateway that are kept"
    )
    resource: dict[str, str] = Field(default_factory=dict, description="extra resource attributes")

    @property
    def enabled(self) -> bool:
        return self.exporter != "none"

    @field_validator("endpoint")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return http_url(value)


class AuditRedaction(_Model):
    """`[audit.redact]`: what is replaced by `marker` before a record is stored or exported.

    Always on: argument keys that name a secret, values shaped like well-known tokens and keys,
    and the gateway's own configured secrets (see `mcpgw.audit.redact.configured_secrets`). `tools` adds
    argument paths per tool (a glob over exported names, like `"github__*"`): dotted keys, `*`
    for any key or list item, so `"*"` hides every argument of that tool.
    """

    marker: str = "[REDACTED]"
    tools: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    keys: tuple[str, ...] = Field(default=(), description="extra regexes over argument key names")
    patterns: tuple[str, ...] = Field(default=(), description="extra regexes over string values")

    @field_validator("keys", "patterns")
    @classmethod
    def _regexes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None
        return value


class AuditSettings(_Model):
    """`[audit]`: the step-level audit trail (see the README section "Audit trail")."""

    enabled: bool = True
    url: str = Field(default="sqlite:///mcpgw-audit.db",
                     description="sqlite:///relative/or/absolute/path.db or postgresql+psycopg://user@host/db")
    mode: Literal["buffer", "fail-closed"] = "buffer"
    queue_size: int = Field(default=100_000, ge=1, description="records held while the store is unreachable")
    batch_size: int = Field(default=1000, ge=1, description="records written per transaction at most")
    flush_interval: float = Field(default=0.05, gt=0, le=60, description="seconds between writes")
    record_listings: bool = Field(default=False, description="also record tools/list, prompts/list, ...")
    redact: AuditRedaction = AuditRedaction()

    @field_validator("url")
    @classmethod
    def _store_url(cls, value: str) -> str:
        if value.startswith("postgresql://"):
            value = "postgresql+psycopg://" + value.removeprefix("postgresql://")
        if not (value.startswith("sqlite:///") or value.startswith("postgresql+psycopg://")):
            raise ValueError(f"must be sqlite:///PATH or postgresql+psycopg://USER@HOST/DB, got {value!r}")
        return value


class Config(_Model):
    """One immutable snapshot of `servers.toml`."""

    gateway: GatewaySettings = GatewaySettings()
    auth: AuthSettings = AuthSettings()
    servers: dict[str, ServerConfig] = Field(default_factory=dict)
    audit: AuditSettings = AuditSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    limits: LimitsSettings = LimitsSettings()
    source: Path | None = Field(default=None, exclude=True, description="the file this snapshot was read from")
    lock: LockFile | None = Field(default=None, exclude=True, description="the lock file read with this snapshot")

    @property
    def lock_path(self) -> Path | None:
        """Where this config's lock file lives (None for a config not read from a file)."""
        if self.gateway.lock_file is not None:
            if self.gateway.lock_file.is_absolute() or self.source is None:
                return self.gateway.lock_file
            return self.source.resolve().parent / self.gateway.lock_file
        return self.source.with_suffix(".lock") if self.source is not None else None

    def prefix_of(self, name: str) -> str:
        server = self.servers[name]
        return name if server.prefix is None else server.prefix

    def timeout_of(self, name: str) -> float:
        server = self.servers[name]
        return server.timeout if server.timeout is not None else self.gateway.call_timeout
