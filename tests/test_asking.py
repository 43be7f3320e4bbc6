"""Sampling, elicitation and roots requests from upstreams reach the agent that caused them.

Every combination of agent era and upstream era: a 2025-era agent is asked on its session; a
2026-07-28 agent gets an input-required result (passed through from a 2026 upstream, or made by
the gateway while it parks a 2025 upstream's call) and answers by retrying.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import mcp.types as t
import pytest
from mcp import Client, MCPError

from .conftest import KIT, gateway_http, gateway_stdio, stdio_server_toml, text, write_config

asked: list[str] = []


async def on_elicit(context: Any, params: t.ElicitRequestParams) -> t.ElicitResult:
    asked.append(params.message)
    return t.ElicitResult(action="accept", content={"name": "Ada"})


async def on_sample(context: Any, params: t.CreateMessageRequestParams) -> t.CreateMessageResult:
    first = params.messages[0].content
    asked.append(first.text if isinstance(first, t.TextContent) else "?")
    return t.CreateMessageResult(role="assistant", content=t.TextContent(type="text", text="hi there"),
                                 model="test-model")


async def on_roots(context: Any) -> t.ListRootsResult:
    return t.ListRootsResult(roots=[t.Root(uri="file:///work/project", name="project")])


CALLBACKS = {"elicitation_callback": on_elicit, "sampling_callback": on_sample, "list_roots_callback": on_roots}


def kit_config(tmp_path: Path, upstream: str) -> Path:
    extra = 'protocol = "legacy"\n' if upstream == "legacy" else ""
    return write_config(tmp_path, stdio_server_toml("kit", KIT, extra=extra))



@pytest.mark.anyio
@pytest.mark.parametrize("upstream", ["modern", "legacy"])
@pytest.mark.parametrize("agent", ["stdio-legacy", "stdio-auto", "http-legacy", "http-auto"])
async def test_questions_reach_the_agent_in_every_era_combination(tmp_path: Path, agent: str, upstream: str) -> None:
    config = kit_config(tmp_path, upstream)
    front, mode = agent.split("-")
    asked.clear()

    async def exercise(client: Client) -> None:
        assert text(await client.call_tool("kit__ask_name", {})) == "hello Ada"
        assert text(await client.call_tool("kit__sample", {"prompt": "say hi"})) == "model test-model said: hi there"
        assert text(await client.call_tool("kit__roots", {})) == "roots: file:///work/project"
        assert asked == ["What is your name?", "say hi"]

    if front == "stdio":
        async with gateway_stdio(config, mode=mode, **CALLBACKS) as client:
            await exercise(client)
    else:
        async with gateway_http(config) as (base, _), Client(f"{base}/mcp", mode=mode, cache=None,
                                                              **CALLBACKS) as client:
            await exercise(client)


@pytest.mark.anyio
@pytest.mark.parametrize("upstream", ["modern", "legacy"])
async def test_agent_without_the_capability_gets_a_clear_error(tmp_path: Path, upstream: str) -> None:
    async with gateway_stdio(kit_config(tmp_path, upstream), mode="legacy") as client:
        with pytest.raises(MCPError) as info:
            await client.call_tool("kit__ask_name", {})
        assert "does not support elicitation" in info.value.message
        assert "upstream 'kit'" in info.value.message


@pytest.mark.anyio
async def test_concurrent_agents_are_never_asked_each_others_questions(tmp_path: Path) -> None:
    """Two agents on one HTTP gateway, a 2025-era upstream: each answer reaches its own caller."""
    config = kit_config(tmp_path, "legacy")

    def answering(name: str) -> Any:
        async def on_elicit_named(context: Any, params: t.ElicitRequestParams) -> t.ElicitResult:
            await anyio.sleep(0.2)  # keep both calls in flight together
            return t.ElicitResult(action="accept", content={"name": name})
        return on_elicit_named

    results: dict[str, str | Exception] = {}
    async with gateway_http(config) as (base, _):
        async def one(name: str) -> None:
            async with Client(f"{base}/mcp", mode="legacy", cache=None, elicitation_callback=answering(name)) as c:
                try:
                    results[name] = text(await c.call_tool("kit__ask_name", {}))
                except MCPError as exc:
                    results[name] = exc

        async with anyio.create_task_group() as tg:
            for name in ("Ada", "Bob"):
                tg.start_soon(one, name)
    for name, outcome in results.items():
        # Either the right answer, or a refusal that says why: never the other agent's name.
        if isinstance(outcome, Exception):
            assert "agents have requests in flight" in str(outcome)
        else:
            assert outcome == f"hello {name}"


@pytest.mark.anyio
@pytest.mark.parametrize("upstream", ["modern", "legacy"])
async def test_upstream_log_messages_reach_agents_attributed_and_filtered(tmp_path: Path, upstream: str) -> None:
    received: list[tuple[str, str | None, Any]] = []
    got = anyio.Event()

    async def on_log(params: t.LoggingMessageNotificationParams) -> None:
        received.append((params.level, params.logger, params.data))
        got.set()

    async with gateway_stdio(kit_config(tmp_path, upstream), mode="legacy", logging_callback=on_log) as client:
        caps = client.server_capabilities
        assert caps is not None and caps.logging is not None
        await client.call_tool("kit__log", {"level": "warning", "text": "disk almost full"})
        with anyio.fail_after(10):
            await got.wait()
        assert received == [("warning", "kit.kitlog", {"text": "disk almost full"})]
        await client.set_logging_level("error")
        received.clear()
        await client.call_tool("kit__log", {"level": "warning", "text": "filtered out"})
        got = anyio.Event()
        await client.call_tool("kit__log", {"level": "error", "text": "kept"})
        with anyio.fail_after(10):
            await got.wait()
        assert received == [("error", "kit.kitlog", {"text": "kept"})]
