"""Example upstream: time and date tools. Launched by the default servers.toml over stdio."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("clock", instructions="Current time and date arithmetic.")


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ToolError(f"unknown time zone {name!r}; use an IANA name such as 'Europe/Paris'") from None


@server.tool()
def now(timezone: str = "UTC") -> str:
    """The current date and time in an IANA time zone, ISO 8601."""
    return datetime.now(_zone(timezone)).isoformat(timespec="seconds")


@server.tool()
def convert(time: str, from_timezone: str, to_timezone: str) -> str:
    """Convert an ISO 8601 local time (e.g. 2026-11-27T09:30) from one time zone to another."""
    local = datetime.fromisoformat(time).replace(tzinfo=_zone(from_timezone))
    return local.astimezone(_zone(to_timezone)).isoformat(timespec="minutes")


@server.tool()
def add_days(date: str, days: int) -> str:
    """The calendar date `days` after (or before, if negative) an ISO date."""
    return (datetime.fromisoformat(date).replace(tzinfo=UTC) + timedelta(days=days)).date().isoformat()


if __name__ == "__main__":
    server.run("stdio")
