"""Upstreams that crash, hang, fail to start, change their tools, or send malformed definitions."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp.types as t
import pytest
from mcp import Client

from .conftest import (
    KIT,
    PY,
    RAW,
    SILENT,
    ToolsChanged,
    gateway_http,
    gateway_stdio,
    stdio_server_toml,
    text,
    wait_until,
    write_config,
)

FAST = """
call_timeout = 10
connect_timeout = 20
restart_backoff = 0.2
restart_backoff_max = 1
health_interval = 1
startup_wait = 60
"""


async def readyz(base: str) -> tuple[int, dict[str, Any]]:
    async with httpx2.AsyncClient(timeout=10) as http:
        response = await http.get(f"{base}/readyz")
        return response.status_code, response.json()



@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_killed_upstream_fails_in_flight_call_restarts_and_returns(tmp_path: Path, mode: str) -> None:
    body = stdio_server_toml("kit", KIT) + stdio_server_toml("other", KIT, "--name", "other")
    config = write_config(tmp_path, body, gateway=FAST)
    changes = anyio.Event()
    notified: list[str] = []

    async def on_message(message: Any) -> None:
        if isinstance(message, t.ToolListChangedNotification):
            notified.append("tools")
            changes.set()

    async with gateway_http(config) as (base, gateway), Client(f"{base}/mcp", mode=mode, cache=None,
                                                                message_handler=on_message) as agent:
        first_pid = (await agent.call_tool("kit__pid", {})).structured_content["pid"]  # type: ignore[index]
        results: list[t.CallToolResult] = []

        async def in_flight() -> None:
            results.append(await agent.call_tool("kit__hang", {}))

        listen_cm = agent.listen(tools_list_changed=True) if mode == "auto" else None
        subscription = await listen_cm.__aenter__() if listen_cm else None
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(in_flight)
                await anyio.sleep(0.3)  # let the call reach the upstream before the kill
                os.kill(first_pid, signal.SIGKILL)
            if subscription is not None:
                with anyio.fail_after(10):
                    await subscription.__anext__()
                    notified.append("tools")
        finally:
            if listen_cm:
                await listen_cm.__aexit__(None, None, None)
        assert results[0].is_error
        assert text(results[0]) == ("upstream 'kit' closed the connection during tools/call 'hang' (it crashed or "
                                    "exited); it is being restarted")
        # The gateway and the other upstream are unaffected.
        assert (await agent.call_tool("other__echo", {"text": "hi"})).structured_content == {
            "text": "hi", "server": "other"}

        async def kit_back() -> bool:
            status, report = await readyz(base)
            return report["upstreams"]["kit"]["status"] == "up" and report["upstreams"]["kit"]["connects"] == 2

        await wait_until(kit_back, timeout=20)
        second_pid = (await agent.call_tool("kit__pid", {})).structured_content["pid"]  # type: ignore[index]
        assert second_pid != first_pid
        names = {tool.name for tool in (await agent.list_tools()).tools}
        assert {"kit__pid", "kit__echo", "other__echo"} <= names
        assert notified, "connected agents were told the tool list changed"
    assert "upstream kit lost: connection closed" in gateway.text


@pytest.mark.anyio
async def test_crash_during_a_call_names_the_upstream(tmp_path: Path) -> None:
    config = write_config(tmp_path, stdio_server_toml("kit", KIT), gateway=FAST)
    async with gateway_stdio(config, mode="legacy") as agent:
        crashed = await agent.call_tool("kit__crash", {})
        assert crashed.is_error and "upstream 'kit' closed the connection during tools/call 'crash'" in text(crashed)
        back = await wait_until(lambda: _try_echo(agent), timeout=20)
        assert back == {"text": "back", "server": "kit"}


async def _try_echo(agent: Client) -> Any:
    result = await agent.call_tool("kit__echo", {"text": "back"})
    return None if result.is_error else result.structured_content


@pytest.mark.anyio
async def test_failed_and_silent_upstreams_do_not_block_the_others(tmp_path: Path) -> None:
    body = (stdio_server_toml("kit", KIT) + stdio_server_toml("silent", SILENT)
            + '\n[servers.missing]\nkind = "stdio"\ncommand = "/nonexistent/mcp-server"\n'
            + '\n[servers.remote]\nkind = "http"\nurl = "http://127.0.0.1:9/mcp"\n')
    settings = FAST.replace("startup_wait = 60", "startup_wait = 10").replace("connect_timeout = 20",
                                                                              "connect_timeout = 6")
    config = write_config(tmp_path, body, gateway=settings)
    async with gateway_http(config) as (base, gateway), Client(f"{base}/mcp", mode="legacy", cache=None) as agent:
        names = {tool.name for tool in (await agent.list_tools()).tools}
        assert names and all(n.startswith("kit__") for n in names)
        assert (await agent.call_tool("kit__echo", {"text": "x"})).structured_content == {"text": "x", "server": "kit"}
        status, report = await readyz(base)
        assert status == 200 and report["status"] == "ready"
        ups = report["upstreams"]
        assert ups["kit"]["status"] == "up" and ups["kit"]["tools"] == len(names)
        assert ups["missing"]["status"] == "down"
        assert ups["missing"]["error"] == "command not found: '/nonexistent/mcp-server'"
        assert ups["silent"]["status"] in ("down", "starting")
        assert ups["remote"]["status"] == "down" and "connection refused" in ups["remote"]["error"]
        async with httpx2.AsyncClient(timeout=10) as http:
            assert (await http.get(f"{base}/readyz?strict=1")).status_code == 503
            assert (await http.get(f"{base}/healthz")).json() == {"status": "alive"}

        async def retried() -> bool:
            _, again = await readyz(base)
            return again["upstreams"]["missing"]["failures"] >= 3 and again["upstreams"]["silent"]["status"] == "down"

        await wait_until(retried, timeout=40)
        _, report = await readyz(base)
        assert "connect_timeout (6s)" in report["upstreams"]["silent"]["error"]
        unavailable = await agent.call_tool("kit__echo", {"text": "still"})
        assert not unavailable.is_error
    assert "upstream missing failed to start: command not found" in gateway.text


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_upstream_list_changed_reaches_the_agent(tmp_path: Path, mode: str) -> None:
    config = write_config(tmp_path, stdio_server_toml("kit", KIT), gateway=FAST.replace("health_interval = 1",
                                                                                         "health_interval = 600"))
    changes = ToolsChanged()
    async with gateway_stdio(config, mode=mode, message_handler=changes.handler) as agent:
        assert "kit__fresh" not in {tool.name for tool in (await agent.list_tools()).tools}
        assert agent.server_capabilities is not None
        assert agent.server_capabilities.tools is not None and agent.server_capabilities.tools.list_changed
        await changes.during(agent, mode, lambda: agent.call_tool("kit__grow", {"name": "fresh"}))
        names = {tool.name for tool in (await agent.list_tools()).tools}
        assert "kit__fresh" in names
        assert text(await agent.call_tool("kit__fresh", {})) == "kit:fresh"


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_malformed_upstream_schemas_are_repaired_not_fatal(tmp_path: Path, mode: str) -> None:
    config = write_config(tmp_path, stdio_server_toml("raw", RAW) + stdio_server_toml("kit", KIT), gateway=FAST)
    async with gateway_stdio(config, mode=mode) as agent:
        tools = {tool.name: tool for tool in (await agent.list_tools()).tools}
        raw = {n for n in tools if n.startswith("raw__")}
        assert raw == {"raw__good", "raw__string_schema", "raw__no_type", "raw__not_a_dict", "raw__bad_output",
                       "raw__weird_name_x"}
        assert all(tool.input_schema["type"] == "object" for tool in tools.values())
        assert tools["raw__no_type"].input_schema["properties"] == {"a": {"type": "integer"}}
        assert tools["raw__bad_output"].output_schema is None
        assert "kit__echo" in tools
        assert text(await agent.call_tool("raw__weird_name_x", {})) == "raw:weird/name x"


@pytest.mark.anyio
async def test_slow_upstream_joins_later_with_list_changed(tmp_path: Path) -> None:
    late = f"""
[servers.late]
kind = "stdio"
command = "/bin/sh"
args = ["-c", "sleep 2; exec {PY} {KIT} --name late"]
"""
    config = write_config(tmp_path, stdio_server_toml("kit", KIT) + late,
                          gateway=FAST.replace("startup_wait = 60", "startup_wait = 0.5"))
    got = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, t.ToolListChangedNotification):
            got.set()

    async with gateway_stdio(config, mode="legacy", message_handler=on_message) as agent:
        first = {tool.name for tool in (await agent.list_tools()).tools}
        assert not any(n.startswith("late__") for n in first), "the first list did not wait for the slow upstream"

        async def has_late() -> bool:
            return any(n.name.startswith("late__") for n in (await agent.list_tools()).tools)

        with anyio.fail_after(20):
            await got.wait()
        await wait_until(has_late, timeout=10)


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_sigterm_leaves_no_orphaned_upstreams(tmp_path: Path, transport: str) -> None:
    """Even an upstream that ignores SIGTERM and outlives its stdin is gone once the gateway exits."""
    import subprocess
    import time

    import psutil

    from .conftest import ROOT

    stubborn = f"""
[servers.stubborn]
kind = "stdio"
command = "/bin/sh"
args = ["-c", "trap '' TERM; {PY} {KIT} --name stubborn; sleep 600"]
"""
    config = write_config(tmp_path, stdio_server_toml("kit", KIT) + stubborn)
    argv = [PY, "-m", "mcpgw", "serve", "--config", str(config), "--transport", transport, "--port", "0"]
    proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        gateway = psutil.Process(proc.pid)
        deadline = time.monotonic() + 20
        while len([c for c in gateway.children(recursive=True) if "kit_server" in " ".join(c.cmdline())]) < 2:
            assert time.monotonic() < deadline, "upstreams did not start"
            time.sleep(0.1)
        descendants = gateway.children(recursive=True)
        proc.terminate()
        proc.wait(30)
        gone, alive = psutil.wait_procs(descendants, timeout=10)
        assert not alive, f"orphans: {[p.cmdline() for p in alive]}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
