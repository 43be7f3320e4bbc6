"""A large catalog: 10 upstreams x 100 tools, complete, unique and correctly paginated."""

from __future__ import annotations

from pathlib import Path

import mcp.types as t
import pytest

from .conftest import KIT, gateway_stdio, stdio_server_toml, write_config
from .upstreams.kit_server import base_tools

UPSTREAMS = 10
EXTRA = 100 - len(base_tools())  # generated tools + the kit's own = 100 per upstream


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_ten_upstreams_of_a_hundred_tools(tmp_path: Path, mode: str) -> None:
    body = "".join(stdio_server_toml(f"up{i}", KIT, "--tools", str(EXTRA), "--name", f"up{i}")
                   for i in range(UPSTREAMS))
    config = write_config(tmp_path, body, gateway="page_size = 300\nstartup_wait = 60")
    async with gateway_stdio(config, mode=mode) as agent:
        names: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            page = await agent.session.list_tools(params=t.PaginatedRequestParams(cursor=cursor) if cursor else None)
            pages += 1
            assert len(page.tools) <= 300
            names += [tool.name for tool in page.tools]
            cursor = page.next_cursor
            if cursor is None:
                break
        assert pages == 4
        assert len(names) == UPSTREAMS * 100
        assert len(set(names)) == len(names), "names are unique"
        assert names == sorted(names)
        for i in range(UPSTREAMS):
            assert sum(n.startswith(f"up{i}__") for n in names) == 100
        result = await agent.call_tool("up7__t00042", {"x": 1})
        assert isinstance(result.content[0], t.TextContent) and result.content[0].text == "up7:t00042"
