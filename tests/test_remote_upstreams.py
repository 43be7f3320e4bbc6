"""Upstreams over Streamable HTTP and SSE: real kit servers listening on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import httpx2
import mcp.types as t
import psutil
import pytest
from mcp import Client

from .conftest import KIT, PY, ToolsChanged, gateway_http, gateway_stdio, kit_http, wait_until, write_config


def remote(name: str, kind: str, url: str, extra: str = "") -> str:
    return f'\n[servers.{name}]\nkind = "{kind}"\nurl = "{url}"\n{extra}\n'


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["http", "sse"])
@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_remote_upstream_forwarding_and_list_changed(tmp_path: Path, kind: str, mode: str) -> None:
    path = "/mcp" if kind == "http" else "/sse"
    changes = ToolsChanged()
    async with kit_http(kind, "--name", "web") as (base, _pid):
        config = write_config(tmp_path, remote("web", kind, base + path, 'headers = { "X-Tenant" = "t1" }'),
                              gateway="health_interval = 600")
        async with gateway_stdio(config, mode=mode, message_handler=changes.handler) as agent:
            names = {tool.name for tool in (await agent.list_tools()).tools}
            assert {"web__echo", "web__content", "web__slow"} <= names
            echoed = await agent.call_tool("web__echo", {"text": "over " + kind})
            assert echoed.structured_content == {"text": "over " + kind, "server": "web"}
            progress: list[float] = []

            async def on_progress(p: float, total: float | None, message: str | None) -> None:
                progress.append(p)

            await agent.call_tool("web__slow", {"steps": 2}, progress_callback=on_progress)
            assert progress == [1, 2]
            content = await agent.call_tool("web__content", {})
            assert [c.type for c in content.content] == ["text", "image", "audio", "resource", "resource",
                                                         "resource_link"]
            await changes.during(agent, mode, lambda: agent.call_tool("web__grow", {"name": "added"}))
            assert "web__added" in {tool.name for tool in (await agent.list_tools()).tools}


@pytest.mark.anyio
async def test_remote_upstream_that_dies_is_noticed_and_named(tmp_path: Path) -> None:
    async with kit_http("http", "--name", "web") as (base, web_pid):
        body = remote("web", "http", base + "/mcp") + f"""
[servers.local]
kind = "stdio"
command = "{PY}"
args = ["{KIT}", "--name", "local"]
"""
        config = write_config(tmp_path, body, gateway="health_interval = 0.5\nrestart_backoff = 0.2\n"
                                                      "restart_backoff_max = 0.5\nconnect_timeout = 10")
        async with gateway_http(config) as (gw, _), httpx2.AsyncClient(timeout=10) as http, \
                Client(f"{gw}/mcp", mode="legacy", cache=None) as agent:
            assert (await agent.call_tool("web__echo", {"text": "a"})).structured_content == {
                "text": "a", "server": "web"}
            psutil.Process(web_pid).kill()  # the remote upstream dies

            async def down() -> bool:
                report = (await http.get(f"{gw}/readyz")).json()
                return bool(report["upstreams"]["web"]["status"] == "down")

            await wait_until(down, timeout=15)
            failed = await agent.call_tool("web__echo", {"text": "b"})
            assert failed.is_error
            assert isinstance(failed.content[0], t.TextContent)
            assert "upstream 'web'" in failed.content[0].text
            assert (await agent.call_tool("local__echo", {"text": "c"})).structured_content == {
                "text": "c", "server": "local"}
