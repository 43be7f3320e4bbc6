"""Upstreams: the servers behind the gateway, each behind the small `Upstream` protocol.

Nothing above this package imports a concrete connector except `build_upstream`, the one
place that maps a config `kind` to its connector.
"""

from mcpgw.config.models import GatewaySettings, ServerConfig
from mcpgw.upstream.base import ListingChanged, Status, Upstream, UpstreamState
from mcpgw.upstream.mcp import McpUpstream


def build_upstream(
    name: str,
    config: ServerConfig,
    settings: GatewaySettings,
    on_listing_changed: ListingChanged,
    *,
    trace_headers: bool = False,
) -> McpUpstream:
    """The connector for one `[servers.NAME]` table. `trace_headers`: send W3C trace context
    headers on HTTP requests (when tracing is on)."""
    return McpUpstream(name, config, settings, on_listing_changed, trace_headers=trace_headers)


__all__ = ["ListingChanged", "McpUpstream", "Status", "Upstream", "UpstreamState", "build_upstream"]
