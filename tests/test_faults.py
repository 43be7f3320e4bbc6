"""Faults around long and interactive calls: crashes mid round-trip, disconnects, shutdowns."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import anyio
import mcp.types as t
import psutil
import pytest
from mcp import Client

from .conftest import KIT, PY, ROOT, gateway_http, gateway_stdio, stdio_server_toml, text, wait_until, write_config

FAST = "restart_backoff = 0.2\nrestart_backoff_max = 0.5\nhealth_interval = 600\n"



@pytest.mark.anyio
@pytest.mark.parametrize("upstream", ["modern", "legacy"])
async def test_upstream_crash_during_a_sampling_round_trip(tmp_path: Path, upstream: str) -> None:
    extra = 'protocol = "legacy"\n' if upstream == "legacy" else ""
    config = write_config(tmp_path, stdio_server_toml("kit", KIT, extra=extra), gateway=FAST)
    kit_pid: list[int] = []

    async def on_sample(context: Any, params: t.CreateMessageRequestParams) -> t.CreateMessageResult:
        os.kill(kit_pid[0], signal.SIGKILL)  # the upstream dies while the agent is answering
        await anyio.sleep(0.2)
        return t.CreateMessageResult(role="assistant", content=t.TextContent(type="text", text="late"), model="m")

    async with gateway_stdio(config, mode="legacy", sampling_callback=on_sample) as agent:
        kit_pid.append((await agent.call_tool("kit__pid", {})).structured_content["pid"])  # type: ignore[index]
        outcome = await agent.call_tool("kit__sample", {"prompt": "hi"})
        assert outcome.is_error
        assert "upstream 'kit'" in text(outcome)
        back = await wait_until(lambda: _pid(agent), timeout=20)
        assert back != kit_pid[0], "the upstream was restarted and the gateway kept serving"


async def _pid(agent: Client) -> int | None:
    result = await agent.call_tool("kit__pid", {})
    return None if result.is_error else int((result.structured_content or {})["pid"])


@pytest.mark.anyio
async def test_agent_disconnect_cancels_the_upstream_call(tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    body = stdio_server_toml("kit", KIT, extra=f'env = {{ KIT_MARKER_DIR = "{markers}" }}\n')
    config = write_config(tmp_path, body, gateway=FAST)
    async with gateway_http(config) as (base, _):
        async with Client(f"{base}/mcp", mode="legacy", cache=None) as agent:
            await agent.list_tools()
            async with anyio.create_task_group() as tg:
                tg.start_soon(agent.call_tool, "kit__hang", {})
                await anyio.sleep(0.5)
                tg.cancel_scope.cancel()
        # The agent is gone (session closed); the upstream's handler was cancelled.
        await wait_until((markers / "cancelled-kit").exists, timeout=10)


def test_sigterm_lets_calls_in_flight_finish_then_stops_everything(tmp_path: Path) -> None:
    import json

    config = write_config(tmp_path, stdio_server_toml("kit", KIT), gateway="shutdown_grace = 10\n")
    proc = subprocess.Popen([PY, "-m", "mcpgw", "serve", "--config", str(config)], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdin and proc.stdout
    try:
        def send(message: dict[str, Any]) -> None:
            assert proc.stdin
            proc.stdin.write(json.dumps(message) + "\n")
            proc.stdin.flush()

        send({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}})
        assert json.loads(proc.stdout.readline())["id"] == 1
        send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        send({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
        listed = json.loads(proc.stdout.readline())
        while "id" not in listed:
            listed = json.loads(proc.stdout.readline())
        assert listed["id"] == 2
        children = psutil.Process(proc.pid).children(recursive=True)
        send({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
              "params": {"name": "kit__slow", "arguments": {"steps": 10, "delay": 0.15}}})
        time.sleep(0.3)  # the call is under way upstream
        proc.send_signal(signal.SIGTERM)
        answer = json.loads(proc.stdout.readline())
        while "id" not in answer:  # notifications (list_changed...) may come first
            answer = json.loads(proc.stdout.readline())
        assert answer["id"] == 3 and answer["result"]["content"][0]["text"] == "done 10"
        proc.wait(30)
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


@pytest.mark.anyio
async def test_a_hung_upstream_fails_fast_after_one_timeout(tmp_path: Path) -> None:
    """The first call that times out triggers a probe; once the upstream is marked down, calls
    fail at once instead of each waiting out the timeout (the circuit is open)."""
    body = stdio_server_toml("kit", KIT)
    config = write_config(tmp_path, body, gateway="call_timeout = 1\nconnect_timeout = 5\nhealth_interval = 600\n"
                                                  "restart_backoff = 30\nrestart_backoff_max = 30\n")
    async with gateway_stdio(config, mode="legacy") as agent:
        kit = (await agent.call_tool("kit__pid", {})).structured_content["pid"]  # type: ignore[index]
        os.kill(kit, signal.SIGSTOP)  # alive but frozen: it will never answer
        try:
            first = await agent.call_tool("kit__echo", {"text": "x"})
            assert first.is_error and "did not answer tools/call 'echo' within 1s" in text(first)

            async def fast_failure() -> bool:
                started = anyio.current_time()
                result = await agent.call_tool("kit__echo", {"text": "y"})
                return result.is_error and anyio.current_time() - started < 0.5

            await wait_until(fast_failure, timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(kit, signal.SIGCONT)
