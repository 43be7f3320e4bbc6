"""The official reference servers as upstreams: results through the gateway equal direct results.

`@modelcontextprotocol/server-everything` (npm, TypeScript SDK) and `mcp-server-time` (PyPI),
both pinned and installed by `scripts/setup`; neither was written here.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import mcp.types as t
import pytest
from mcp import Client, StdioServerParameters

from .conftest import PY, ROOT, gateway_http, gateway_stdio, namespaced_uris, write_config

EVERYTHING = ROOT / "tests/npm/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
needs_everything = pytest.mark.skipif(
    not EVERYTHING.exists() or shutil.which("node") is None,
    reason="server-everything is not installed (run scripts/setup with node and npm available)",
)

CALLS: list[tuple[str, dict[str, Any]]] = [
    ("echo", {"message": "hello through the gateway"}),
    ("get-sum", {"a": 2, "b": 40}),
    ("get-tiny-image", {}),
    ("get-annotated-message", {"messageType": "error", "includeImage": True}),
    ("get-structured-content", {"location": "Chicago"}),
    ("get-resource-links", {"count": 2}),
    ("get-resource-reference", {"resourceType": "Text", "resourceId": 1}),
]


def everything_params() -> StdioServerParameters:
    return StdioServerParameters(command="node", args=[str(EVERYTHING), "stdio"])


def config_for(tmp_path: Path) -> Path:
    body = f"""
[servers.everything]
kind = "stdio"
command = "node"
args = ["{EVERYTHING}", "stdio"]

[servers.time]
kind = "stdio"
command = "{PY}"
args = ["-m", "mcp_server_time", "--local-timezone", "UTC"]
"""
    return write_config(tmp_path, body)


def dump(result: t.CallToolResult) -> dict[str, Any]:
    out = result.model_dump(mode="json", by_alias=True, exclude_none=True)
    out.pop("_meta", None)
    # server-everything stamps generated resources with the wall-clock second they were made.
    text = re.sub(r"created at \d{1,2}:\d{2}:\d{2}\s?[AP]M", "created at <time>", json.dumps(out))
    return dict(json.loads(text))


@needs_everything
@pytest.mark.anyio
@pytest.mark.parametrize("front", ["stdio-legacy", "stdio-auto", "http-auto"])
async def test_everything_tools_match_direct_calls(tmp_path: Path, front: str) -> None:
    mode = front.split("-")[1]
    async with Client(everything_params(), mode=mode, cache=None) as direct:
        direct_tools = {tool.name: tool for tool in (await direct.list_tools()).tools}
        expected = {name: namespaced_uris(dump(await direct.call_tool(name, args)), "everything")
                    for name, args in CALLS}
    config = config_for(tmp_path)
    if front.startswith("stdio"):
        async with gateway_stdio(config, mode=mode) as agent:
            listed, got = await _through(agent)
    else:
        async with gateway_http(config) as (base, _), Client(f"{base}/mcp", mode=mode, cache=None) as agent:
            listed, got = await _through(agent)
    for name, tool in direct_tools.items():
        mirrored = listed[f"everything__{name}"].model_copy(update={"name": name})
        if mode == "auto":
            # The agent speaks 2026-07-28 with the gateway, a revision without tool `execution`
            # hints (tasks left the protocol); the 2025-11-25 upstream still sends them.
            tool = tool.model_copy(update={"execution": None})
        assert mirrored == tool, f"definition of {name} changed"
    assert got == expected


async def _through(agent: Client) -> tuple[dict[str, t.Tool], dict[str, Any]]:
    listed = {tool.name: tool for tool in (await agent.list_tools()).tools}
    got = {name: dump(await agent.call_tool(f"everything__{name}", args)) for name, args in CALLS}
    return listed, got


@needs_everything
@pytest.mark.anyio
async def test_everything_long_running_operation_relays_progress(tmp_path: Path) -> None:
    progress: list[tuple[float, float | None]] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.append((p, total))

    async with gateway_stdio(config_for(tmp_path), mode="legacy") as agent:
        result = await agent.call_tool("everything__trigger-long-running-operation", {"duration": 1, "steps": 4},
                                       progress_callback=on_progress)
    assert not result.is_error
    assert progress == [(1, 4), (2, 4), (3, 4), (4, 4)]


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_mcp_server_time_through_the_gateway(tmp_path: Path, mode: str) -> None:
    args = {"source_timezone": "Europe/Paris", "time": "09:30", "target_timezone": "Asia/Tokyo"}
    params = StdioServerParameters(command=PY, args=["-m", "mcp_server_time", "--local-timezone", "UTC"])
    async with Client(params, mode=mode, cache=None) as direct:
        expected = dump(await direct.call_tool("convert_time", args))
    async with gateway_stdio(config_for(tmp_path), mode=mode) as agent:
        names = {tool.name for tool in (await agent.list_tools()).tools}
        assert {"time__get_current_time", "time__convert_time"} <= names
        got = dump(await agent.call_tool("time__convert_time", args))
    assert got == expected
    assert "Asia/Tokyo" in str(got)
