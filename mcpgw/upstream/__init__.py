"""Upstreams: the servers behind the gateway, each behind the small `Upstream` protocol.

Nothing above this package imports a concrete connector except `build_upstream`, the one
place that maps a config `kind` to its connector.
"""

from mcpgw.config.models import GatewaySettings, ServerConfig
from mcpgw.upstream.base import ListingChanged, Status, Upstream, UpstreamState
from mcpgw.upstream.mcp import McpUpstream


def build_upstream(
    name: str, config: ServerConfig, settings: GatewaySettings, on_listing_changed: ListingChanged
) -> McpUpstream:
    """The connector for one `[servers.NAME]` table."""
    return McpUpstream(name, config, settings, on_listing_changed)


__all__ = ["ListingChanged", "McpUpstream", "Status", "Upstream", "UpstreamState", "build_upstream"]
