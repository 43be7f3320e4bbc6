"""Hot reload of servers.toml: on file change and on SIGHUP, keeping agents connected."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import anyio
import mcp.types as t
import pytest

from .conftest import KIT, ToolsChanged, gateway_http, stdio_server_toml, text, wait_until, write_config

GATEWAY = "health_interval = 600\nrestart_backoff = 0.2\n"


def names(listed: t.ListToolsResult) -> set[str]:
    return {tool.name for tool in listed.tools}



async def write_atomically(path: Path, body: str) -> None:
    """As editors do: write a temporary file, then rename it over the config."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(body)
    os.replace(temporary, path)


@pytest.mark.anyio
async def test_file_change_adds_removes_and_keeps_unchanged_upstreams(tmp_path: Path) -> None:
    from mcp import Client

    a = stdio_server_toml("a", KIT, "--name", "a")
    b = stdio_server_toml("b", KIT, "--name", "b")
    config = write_config(tmp_path, a, gateway=GATEWAY)
    changes = ToolsChanged()
    async with gateway_http(config) as (base, gateway), Client(f"{base}/mcp", mode="legacy", cache=None,
                                                                message_handler=changes.handler) as agent:
        assert "a__echo" in names(await agent.list_tools())
        pid_a = (await agent.call_tool("a__pid", {})).structured_content

        # Add b: a keeps running (same process), b's tools arrive with list_changed.
        await changes.during(agent, "legacy", lambda: write_atomically(config, config.read_text() + b))
        await wait_until(lambda: _has(agent, "b__echo"), timeout=15)
        assert (await agent.call_tool("a__pid", {})).structured_content == pid_a

        # A broken file changes nothing and says precisely what is wrong.
        await write_atomically(config, config.read_text() + '\n[servers.c]\nkind = "stdio"\n')
        await wait_until(lambda: "configuration NOT reloaded" in gateway.text, timeout=15)
        assert "servers.toml:" in gateway.text and "servers.c.command: missing required key" in gateway.text
        assert {"a__echo", "b__echo"} <= names(await agent.list_tools())

        # Remove a while a call to it is in flight: the call fails saying why; b is untouched.
        pid_b = (await agent.call_tool("b__pid", {})).structured_content
        results: list[t.CallToolResult] = []

        async def in_flight() -> None:
            results.append(await agent.call_tool("a__hang", {}))

        async with anyio.create_task_group() as tg:
            tg.start_soon(in_flight)
            await anyio.sleep(0.3)  # let the call reach the upstream
            (tmp_path / "x").mkdir()
            await write_atomically(config, write_config(tmp_path / "x", b, gateway=GATEWAY).read_text())
        assert results[0].is_error
        assert text(results[0]) == ("upstream 'a' was removed from the configuration while tools/call 'hang' was "
                                    "in flight")
        await wait_until(lambda: _lacks(agent, "a__echo"), timeout=15)
        assert (await agent.call_tool("b__pid", {})).structured_content == pid_b
        with pytest.raises(Exception, match="Unknown tool: a__echo"):
            await agent.call_tool("a__echo", {"text": "x"})


async def _has(agent: Any, name: str) -> bool:
    return name in names(await agent.list_tools())


async def _lacks(agent: Any, name: str) -> bool:
    return name not in names(await agent.list_tools())


@pytest.mark.anyio
async def test_sighup_reloads_and_changed_servers_restart(tmp_path: Path) -> None:
    from mcp import Client

    config = write_config(tmp_path, stdio_server_toml("a", KIT, "--name", "a"),
                          gateway=GATEWAY + "watch_config = false\n")
    async with gateway_http(config) as (base, gateway), Client(f"{base}/mcp", mode="legacy", cache=None) as agent:
        pid = (await agent.call_tool("a__pid", {})).structured_content
        # A changed table (new args) restarts that upstream; without SIGHUP nothing happens.
        config.write_text(config.read_text().replace('"--name", "a"]', '"--name", "a", "--tools", "1"]'))
        os.kill(gateway.proc.pid, signal.SIGHUP)
        await wait_until(lambda: _has(agent, "a__t00000"), timeout=15)
        assert (await agent.call_tool("a__pid", {})).structured_content != pid
        assert "SIGHUP: reloading" in gateway.text and "restarted a" in gateway.text


def test_a_log_file_beside_the_config_does_not_feed_the_watcher(tmp_path: Path) -> None:
    """The gateway's own log in the config's directory must not count as a config change."""
    import subprocess
    import sys
    import time

    from .conftest import ROOT

    config = write_config(tmp_path, stdio_server_toml("a", KIT, "--name", "a"), gateway=GATEWAY)
    log_path = tmp_path / "gateway.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "mcpgw", "serve", "--config", str(config), "--transport",
                                 "http", "--port", "0", "--log-level", "debug"],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log_file)
        try:
            deadline = time.monotonic() + 30
            while "upstream a up" not in log_path.read_text():
                assert time.monotonic() < deadline, log_path.read_text()[-2000:]
                time.sleep(0.1)
            size = log_path.stat().st_size
            time.sleep(3)  # idle: nothing should be written (a feedback loop writes many lines a second)
            grown = log_path.read_text()[size:]
        finally:
            proc.terminate()
            proc.wait(20)
    assert "change" not in grown and "reloaded" not in grown, grown[-2000:]
