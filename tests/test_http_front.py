"""The HTTP front: one port, loopback by default, DNS-rebinding protection, health and readiness."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx2
import mcp.types as t
import pytest
from mcp import Client

from .conftest import KIT, PY, ROOT, SILENT, gateway_http, stdio_server_toml, write_config

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}}
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@pytest.mark.anyio
async def test_dns_rebinding_protection_on_mcp_and_sse(tmp_path: Path) -> None:
    config = write_config(tmp_path, stdio_server_toml("kit", KIT), gateway='allowed_hosts = ["gw.internal:*"]')
    async with gateway_http(config) as (base, _), httpx2.AsyncClient(timeout=10) as http:
        port = base.rsplit(":", 1)[1]
        ok = await http.post(f"{base}/mcp", json=INIT, headers=HEADERS)
        assert ok.status_code == 200, ok.text
        evil_host = await http.post(f"{base}/mcp", json=INIT, headers={**HEADERS, "Host": "evil.example.com"})
        assert (evil_host.status_code, evil_host.text) == (421, "Invalid Host header")
        evil_origin = await http.post(f"{base}/mcp", json=INIT, headers={**HEADERS, "Origin": "http://evil.example.com"})
        assert (evil_origin.status_code, evil_origin.text) == (403, "Invalid Origin header")
        listed = await http.post(f"{base}/mcp", json=INIT, headers={**HEADERS, "Host": f"gw.internal:{port}"})
        assert listed.status_code == 200, "hosts from [gateway] allowed_hosts are accepted"
        sse = await http.get(f"{base}/sse", headers={"Host": "evil.example.com"})
        assert sse.status_code == 421


@pytest.mark.anyio
async def test_readyz_reports_starting_then_ready(tmp_path: Path) -> None:
    body = stdio_server_toml("kit", KIT) + stdio_server_toml("silent", SILENT)
    config = write_config(tmp_path, body, gateway="connect_timeout = 6\nstartup_wait = 0")
    async with gateway_http(config) as (base, _), httpx2.AsyncClient(timeout=10) as http:
        first = await http.get(f"{base}/readyz")
        assert first.status_code in (200, 503)
        assert first.json()["upstreams_total"] == 2
        # initialize is answered at once even though 'silent' will never answer.
        async with Client(f"{base}/mcp", mode="legacy", cache=None) as agent:
            assert agent.server_info is not None and agent.server_info.name == "mcpgw"
        from .conftest import wait_until

        async def ready() -> bool:
            response = await http.get(f"{base}/readyz")
            return response.status_code == 200 and response.json()["upstreams"]["silent"]["status"] == "down"

        await wait_until(ready, timeout=40)
        report = (await http.get(f"{base}/readyz")).json()
        assert report["status"] == "ready"
        assert report["upstreams"]["kit"]["status"] == "up"
        assert report["upstreams"]["kit"]["protocol_version"] == "2026-07-28"
        assert report["upstreams_up"] == 1 and report["tools"] == report["upstreams"]["kit"]["tools"] >= 10


def test_refuses_a_non_loopback_bind_without_auth(tmp_path: Path) -> None:
    config = write_config(tmp_path, stdio_server_toml("kit", KIT))
    done = subprocess.run([PY, "-m", "mcpgw", "serve", "--config", str(config), "--transport", "http", "--host",
                           "0.0.0.0"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "refusing to serve on 0.0.0.0" in done.stderr


@pytest.mark.anyio
async def test_modern_http_client_sees_namespaced_catalog_and_capabilities(tmp_path: Path) -> None:
    config = write_config(tmp_path, stdio_server_toml("kit", KIT))
    async with gateway_http(config) as (base, _), Client(f"{base}/mcp", cache=None) as agent:
        assert agent.protocol_version == "2026-07-28"
        listed = await agent.list_tools()
        assert {"kit__content", "kit__crash", "kit__echo"} <= {tool.name for tool in listed.tools}
        echo = next(tool for tool in listed.tools if tool.name == "kit__echo")
        assert echo.input_schema["required"] == ["text"]
        result = await agent.call_tool("kit__echo", {"text": "é ✓"})
        assert isinstance(result.content[0], t.TextContent) and result.content[0].text == "é ✓"
        assert json.dumps(result.structured_content) == json.dumps({"text": "é ✓", "server": "kit"})
