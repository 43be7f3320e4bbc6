"""tools/call through the gateway, over every front transport and both protocol eras.

Each test talks to a real gateway process (stdio, Streamable HTTP or SSE front) in front of the
real kit upstream over stdio, and where it matters compares with calling the kit directly.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp.types as t
import pytest
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.sse import sse_client

from .conftest import KIT, PY, ROOT, gateway_stdio, namespaced_uris, stdio_server_toml, wait_until, write_config

FRONTS = ["stdio-auto", "stdio-legacy", "http-auto", "http-legacy", "sse"]
CALL_TIMEOUT = 3


@pytest.fixture(scope="module")
def markers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("markers")


@pytest.fixture(scope="module")
def kit_config(tmp_path_factory: pytest.TempPathFactory, markers: Path) -> Path:
    body = f"""
[servers.kit]
kind = "stdio"
command = "{PY}"
args = ["{KIT}"]
env = {{ KIT_MARKER_DIR = "{markers}" }}
"""
    return write_config(tmp_path_factory.mktemp("cfg"), body, gateway=f"call_timeout = {CALL_TIMEOUT}")


@pytest.fixture(scope="module")
def http_gateway(kit_config: Path) -> Iterator[str]:
    """One HTTP gateway process for the module; clients of both eras and SSE connect to it."""
    proc = subprocess.Popen(
        [PY, "-m", "mcpgw", "serve", "--config", str(kit_config), "--transport", "http", "--port", "0"],
        cwd=ROOT, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    assert proc.stderr is not None
    found = threading.Event()
    url: list[str] = []
    lines: list[str] = []

    def drain() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if not found.is_set() and "serving MCP at " in line:
                url.append(line.split("serving MCP at ", 1)[1].split("/mcp", 1)[0])
                found.set()

    threading.Thread(target=drain, daemon=True).start()
    try:
        assert found.wait(30), "gateway did not start:\n" + "".join(lines)
        yield url[0]
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@asynccontextmanager
async def connect(front: str, config: Path, http_base: str | None, **kw: Any) -> AsyncIterator[Client]:
    kind, _, mode = front.partition("-")
    if kind == "stdio":
        async with gateway_stdio(config, mode=mode, **kw) as client:
            yield client
    elif kind == "http":
        async with Client(f"{http_base}/mcp", mode=mode, cache=None, **kw) as client:
            yield client
    else:
        async with Client(sse_client(f"{http_base}/sse"), cache=None, **kw) as client:
            yield client


@pytest.fixture(params=FRONTS)
def front(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def base(front: str, request: pytest.FixtureRequest) -> str | None:
    return str(request.getfixturevalue("http_gateway")) if not front.startswith("stdio") else None


def _comparable(result: t.CallToolResult) -> dict[str, Any]:
    dumped = result.model_dump(mode="json", by_alias=True, exclude_none=True)
    meta = {k: v for k, v in (dumped.pop("_meta", None) or {}).items() if not k.startswith("io.modelcontextprotocol/")}
    if meta:
        dumped["_meta"] = meta
    return dumped


@pytest.mark.anyio
async def test_every_content_type_arrives_intact(front: str, base: str | None, kit_config: Path) -> None:
    mode = "legacy" if front.endswith("legacy") else "auto"
    async with Client(StdioServerParameters(command=PY, args=[str(KIT)]), mode=mode, cache=None) as direct:
        expected = namespaced_uris(_comparable(await direct.call_tool("content", {})), "kit")
    async with connect(front, kit_config, base) as client:
        got = await client.call_tool("kit__content", {})
    assert _comparable(got) == expected
    assert [c.type for c in got.content] == ["text", "image", "audio", "resource", "resource", "resource_link"]
    link = got.content[5]
    assert isinstance(link, t.ResourceLink) and str(link.uri) == "mcpgw://kit/kit://doc/2"
    assert got.structured_content == {"kinds": 6, "nested": {"a": [1, 2, 3]}}
    assert got.meta == {"kit/trace": "abc"} or (got.meta or {}).get("kit/trace") == "abc"


@pytest.mark.anyio
async def test_is_error_result_and_upstream_protocol_error(front: str, base: str | None, kit_config: Path) -> None:
    async with connect(front, kit_config, base) as client:
        failed = await client.call_tool("kit__fail", {})
        assert failed.is_error and failed.content[0].text == "it failed on purpose"  # type: ignore[union-attr]
        with pytest.raises(MCPError) as info:
            await client.call_tool("kit__rpc_error", {})
        assert info.value.code == t.INVALID_PARAMS
        assert info.value.message == "upstream 'kit': kit refuses these arguments"
        with pytest.raises(MCPError) as info:
            await client.call_tool("nope__nothing", {})
        assert info.value.code == t.INVALID_PARAMS
        assert info.value.message == "Unknown tool: nope__nothing"
        echoed = await client.call_tool("kit__echo", {"text": "still fine"})
        assert echoed.structured_content == {"text": "still fine", "server": "kit"}


@pytest.mark.anyio
async def test_progress_is_relayed_and_meta_forwarded(front: str, base: str | None, kit_config: Path) -> None:
    events: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        events.append((progress, total, message))

    async with connect(front, kit_config, base) as client:
        done = await client.call_tool("kit__slow", {"steps": 3}, progress_callback=on_progress)
        assert done.content[0].text == "done 3"  # type: ignore[union-attr]
        seen = await client.call_tool("kit__meta", {}, meta={"acme/tenant": "t1"})  # type: ignore[typeddict-unknown-key]
    assert events == [(1, 3, "step 1"), (2, 3, "step 2"), (3, 3, "step 3")]
    upstream_meta = (seen.structured_content or {})["meta"]
    assert upstream_meta.get("acme/tenant") == "t1"
    client_info = upstream_meta.get("io.modelcontextprotocol/clientInfo")
    assert client_info is None or client_info["name"] == "mcpgw", "the upstream sees the gateway, not the agent"


@pytest.mark.anyio
async def test_cancellation_reaches_the_upstream(front: str, base: str | None, kit_config: Path,
                                                 markers: Path) -> None:
    marker = markers / "cancelled-kit"
    marker.unlink(missing_ok=True)
    async with connect(front, kit_config, base) as client:
        await client.list_tools()  # the upstream is up: the call below reaches it
        with anyio.move_on_after(0.5) as scope:
            await client.call_tool("kit__hang", {})
        assert scope.cancelled_caught
        await wait_until(marker.exists, timeout=CALL_TIMEOUT - 0.5)  # before the gateway's own timeout
        assert (await client.call_tool("kit__echo", {"text": "after"})).structured_content == {
            "text": "after", "server": "kit"}


@pytest.mark.anyio
async def test_call_times_out_at_the_configured_timeout(front: str, base: str | None, kit_config: Path,
                                                        markers: Path) -> None:
    marker = markers / "cancelled-kit"
    marker.unlink(missing_ok=True)
    async with connect(front, kit_config, base) as client:
        started = anyio.current_time()
        result = await client.call_tool("kit__hang", {}, read_timeout_seconds=30)
        elapsed = anyio.current_time() - started
    assert result.is_error
    assert result.content[0].text == (  # type: ignore[union-attr]
        f"upstream 'kit' did not answer tools/call 'hang' within {CALL_TIMEOUT}s; the request was cancelled upstream")
    assert CALL_TIMEOUT - 0.1 <= elapsed < CALL_TIMEOUT + 3
    await wait_until(marker.exists, timeout=5)


def test_stdio_front_writes_only_protocol_to_stdout(kit_config: Path) -> None:
    """Drive the stdio front by hand: every stdout line must be a JSON-RPC message."""

    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}}
    messages: list[Any] = [init, {"jsonrpc": "2.0", "method": "notifications/initialized"},
                "this line is not JSON", {"jsonrpc": "2.0", "id": 9, "method": "no/such/method"},
                {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "kit__echo",
                                                                                "arguments": {"text": "x"}}}]
    proc = subprocess.Popen([PY, "-m", "mcpgw", "serve", "--config", str(kit_config), "--log-level", "debug"],
                            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdin and proc.stdout
    answers: dict[int, Any] = {}
    try:
        for message in messages:
            proc.stdin.write((message if isinstance(message, str) else json.dumps(message)) + "\n")
            proc.stdin.flush()
            if isinstance(message, dict) and "id" in message:
                while message["id"] not in answers:
                    line = proc.stdout.readline()
                    assert line, "gateway closed stdout"
                    decoded = json.loads(line)  # anything that is not JSON fails here
                    assert decoded["jsonrpc"] == "2.0"
                    if "id" in decoded:
                        answers[decoded["id"]] = decoded
        proc.stdin.close()
        proc.stdin = None  # communicate() must not flush the closed pipe
        # An agent host gives a stdio server about 2 s after closing its stdin before killing it
        # (the SDK's client does): the gateway must be done by then, or its last words (audit
        # records, spans) are lost. It takes ~0.15 s; the bound leaves a wide margin for load.
        rest, err = proc.communicate(timeout=4)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    for line in rest.splitlines():
        assert json.loads(line)["jsonrpc"] == "2.0"
    assert answers[3]["result"]["structuredContent"] == {"text": "x", "server": "kit"}
    assert answers[9]["error"]["code"] == -32601, "a bad request fails alone; the session goes on"
    assert {"kit__echo", "kit__content"} <= {tool["name"] for tool in answers[2]["result"]["tools"]}
    assert "upstream kit up" in err, "logs go to stderr"
    assert proc.returncode == 0, err[-2000:]


def test_stdio_gateway_exits_promptly_when_stdin_closes(tmp_path: Path) -> None:
    """An agent host kills a stdio server ~2 s after closing its stdin (the SDK's client does), so
    the gateway must be gone by then or its last audit records and spans are lost. Nothing else
    writes beside the config here (audit off), so a watcher that only wakes on file activity
    would hold the exit back: this is the case that once took ~4.5 s."""
    config = write_config(tmp_path, stdio_server_toml("kit", KIT) + "\n[audit]\nenabled = false\n")
    proc = subprocess.Popen([PY, "-m", "mcpgw", "serve", "--config", str(config)], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdin and proc.stdout
    try:
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}}
        proc.stdin.write(json.dumps(init) + "\n")
        proc.stdin.flush()
        assert json.loads(proc.stdout.readline())["id"] == 1
        proc.stdin.close()
        proc.stdin = None
        proc.communicate(timeout=2.5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0
