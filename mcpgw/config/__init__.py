"""Configuration: `servers.toml` parsed once into immutable, typed snapshots.

Nothing outside this package reads TOML or the environment for configuration; everything
else receives a `Config`.
"""

from mcpgw.config.loader import ConfigError, Problem, load_config, parse_config
from mcpgw.config.models import (
    AuditRedaction,
    AuditSettings,
    Config,
    GatewaySettings,
    HttpServer,
    ServerConfig,
    SseServer,
    StdioServer,
    TelemetrySettings,
    ToolFilter,
)

__all__ = [
    "AuditRedaction",
    "AuditSettings",
    "Config",
    "ConfigError",
    "GatewaySettings",
    "HttpServer",
    "Problem",
    "ServerConfig",
    "SseServer",
    "StdioServer",
    "TelemetrySettings",
    "ToolFilter",
    "load_config",
    "parse_config",
]
