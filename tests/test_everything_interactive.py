"""server-everything's sampling, elicitation, roots, logging and subscriptions through the gateway.

Each result through the gateway equals the result of calling server-everything directly with the
same client callbacks; agents of both eras over the stdio and Streamable HTTP fronts (the
2026-07-28 agents exercise the gateway parking a 2025-era upstream's call).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import mcp.types as t
import pytest
from mcp import Client, StdioServerParameters

from .conftest import agent_for, write_config
from .test_reference_servers import EVERYTHING, needs_everything

pytestmark = needs_everything


async def on_elicit(context: Any, params: t.ElicitRequestParams) -> t.ElicitResult:
    return t.ElicitResult(action="accept", content={"name": "Ada Lovelace", "check": True})


async def on_sample(context: Any, params: t.CreateMessageRequestParams) -> t.CreateMessageResult:
    first = params.messages[0].content
    said = first.text if isinstance(first, t.TextContent) else "?"
    return t.CreateMessageResult(role="assistant", content=t.TextContent(type="text", text=f"echo: {said}"),
                                 model="local-test-model")


async def on_roots(context: Any) -> t.ListRootsResult:
    return t.ListRootsResult(roots=[t.Root(uri="file:///work/project", name="project")])


CALLBACKS: dict[str, Any] = {"elicitation_callback": on_elicit, "sampling_callback": on_sample,
                             "list_roots_callback": on_roots}
CALLS: list[tuple[str, dict[str, Any]]] = [
    ("trigger-sampling-request", {"prompt": "hello", "maxTokens": 10}),
    ("trigger-elicitation-request", {}),
    ("get-roots-list", {}),
]


def config(tmp_path: Path) -> Path:
    return write_config(tmp_path, f'[servers.everything]\nkind = "stdio"\ncommand = "node"\n'
                                  f'args = ["{EVERYTHING}", "stdio"]\n')


def dump(result: t.CallToolResult) -> Any:
    return json.loads(json.dumps(result.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"meta"})))


@pytest.mark.anyio
@pytest.mark.parametrize("front", ["stdio-legacy", "stdio-auto", "http-legacy", "http-auto"])
async def test_sampling_elicitation_roots_match_direct(tmp_path: Path, front: str) -> None:
    params = StdioServerParameters(command="node", args=[str(EVERYTHING), "stdio"])
    async with Client(params, mode="legacy", cache=None, **CALLBACKS) as direct:
        expected = [dump(await direct.call_tool(name, args)) for name, args in CALLS]
    async with agent_for(front, config(tmp_path), **CALLBACKS) as agent:
        got = [dump(await agent.call_tool(f"everything__{name}", args)) for name, args in CALLS]
    assert got == expected
    assert "echo: Resource trigger-sampling-request context: hello" in json.dumps(got[0])
    assert "Ada Lovelace" in json.dumps(got[1])
    assert "file:///work/project" in json.dumps(got[2])


@pytest.mark.anyio
async def test_simulated_logging_reaches_a_2025_agent_attributed(tmp_path: Path) -> None:
    logs: list[t.LoggingMessageNotificationParams] = []
    got = anyio.Event()

    async def on_log(params: t.LoggingMessageNotificationParams) -> None:
        logs.append(params)
        if params.logger and params.logger.startswith("everything"):
            got.set()

    async with agent_for("stdio-legacy", config(tmp_path), logging_callback=on_log, **CALLBACKS) as agent:
        await agent.set_logging_level("debug")
        await agent.call_tool("everything__toggle-simulated-logging", {})
        with anyio.fail_after(15):
            await got.wait()
        await agent.call_tool("everything__toggle-simulated-logging", {})
    assert logs and all((p.logger or "").split(".")[0] == "everything" for p in logs), "attributed to their upstream"


@pytest.mark.anyio
async def test_subscriber_updates_reach_a_subscribed_agent(tmp_path: Path) -> None:
    updates: list[str] = []
    got = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, t.ResourceUpdatedNotification):
            updates.append(str(message.params.uri))
            got.set()

    async with agent_for("stdio-legacy", config(tmp_path), message_handler=on_message) as agent:
        resources = (await agent.list_resources()).resources
        uri = str(resources[0].uri)
        assert uri.startswith("mcpgw://everything/")
        await agent.subscribe_resource(uri)
        await agent.call_tool("everything__toggle-subscriber-updates", {})
        with anyio.fail_after(20):
            await got.wait()
        await agent.call_tool("everything__toggle-subscriber-updates", {})
    assert set(updates) == {uri}, "only the subscribed resource, under its exported URI"
