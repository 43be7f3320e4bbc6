"""Resources, resource templates, prompts and completions through the gateway, namespaced.

Against the kit upstream (two instances, to prove routing) and server-everything, over the
stdio and Streamable HTTP fronts, in both protocol eras.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mcp.types as t
import pytest
from mcp import Client, MCPError, StdioServerParameters

from .conftest import KIT, PY, agent_for, gateway_stdio, stdio_server_toml, write_config
from .test_reference_servers import EVERYTHING, needs_everything

FRONTS = ["stdio-legacy", "stdio-auto", "http-legacy", "http-auto"]


def two_kits(tmp_path: Path) -> Path:
    body = stdio_server_toml("kit", KIT) + stdio_server_toml("other", KIT, "--name", "other")
    return write_config(tmp_path, body)


def text_of(result: t.ReadResourceResult) -> str:
    first = result.contents[0]
    assert isinstance(first, t.TextResourceContents)
    return first.text


@pytest.mark.anyio
@pytest.mark.parametrize("front", FRONTS)
async def test_resources_round_trip_and_route_by_prefix(tmp_path: Path, front: str) -> None:
    async with agent_for(front, two_kits(tmp_path)) as agent:
        caps = agent.server_capabilities
        assert caps is not None and caps.resources is not None and caps.prompts is not None
        uris = sorted(str(r.uri) for r in (await agent.list_resources()).resources)
        assert uris == sorted(f"mcpgw://{p}/kit://{k}" for p in ("kit", "other") for k in ("doc/1", "doc/2", "blob/1"))
        for uri in uris:
            read = await agent.read_resource(uri)
            assert [str(c.uri) for c in read.contents] == [uri], "contents carry the exported URI"
        assert text_of(await agent.read_resource("mcpgw://other/kit://doc/2")) == "other document 2"
        assert text_of(await agent.read_resource("mcpgw://kit/kit://doc/2")) == "kit document 2"

        templates = (await agent.list_resource_templates()).resource_templates
        assert sorted(x.uri_template for x in templates) == ["mcpgw://kit/kit://items/{id}",
                                                              "mcpgw://other/kit://items/{id}"]
        item = await agent.read_resource("mcpgw://other/kit://items/42")
        assert text_of(item) == '{"id": "42", "server": "other"}'

        # A URI found inside a tool result reads back through the gateway.
        content = await agent.call_tool("other__content", {})
        link = content.content[5]
        assert isinstance(link, t.ResourceLink)
        assert text_of(await agent.read_resource(str(link.uri))) == "other document 2"

        for bad, expected in [("kit://doc/1", "Unknown resource: kit://doc/1 (it belongs to no configured upstream)"),
                              ("mcpgw://nobody/kit://doc/1", "Unknown resource: mcpgw://nobody/kit://doc/1")]:
            with pytest.raises(MCPError) as info:
                await agent.read_resource(bad)
            assert info.value.message.startswith(expected)
        with pytest.raises(MCPError) as info:
            await agent.read_resource("mcpgw://kit/kit://missing")
        assert info.value.message == "upstream 'kit': Resource not found: kit://missing"


@pytest.mark.anyio
@pytest.mark.parametrize("front", FRONTS)
async def test_prompts_and_completions(tmp_path: Path, front: str) -> None:
    async with agent_for(front, two_kits(tmp_path)) as agent:
        prompts = {p.name: p for p in (await agent.list_prompts()).prompts}
        assert set(prompts) == {"kit__greet", "other__greet"}
        assert [a.name for a in prompts["kit__greet"].arguments or []] == ["who", "tone"]
        got = await agent.get_prompt("other__greet", {"who": "Ann"})
        first, second = got.messages
        assert isinstance(first.content, t.TextContent) and first.content.text == "Say hi to Ann"
        assert isinstance(second.content, t.EmbeddedResource)
        assert str(second.content.resource.uri) == "mcpgw://other/kit://doc/1"
        with pytest.raises(MCPError) as info:
            await agent.get_prompt("nobody__greet", {})
        assert info.value.message == "Unknown prompt: nobody__greet"

        caps = agent.server_capabilities
        assert caps is not None and caps.completions is not None
        done = await agent.complete(t.PromptReference(type="ref/prompt", name="kit__greet"),
                                    {"name": "who", "value": "al"})
        assert done.completion.values == ["alice", "albert"]
        done = await agent.complete(
            t.ResourceTemplateReference(type="ref/resource", uri="mcpgw://other/kit://items/{id}"),
            {"name": "id", "value": "1"})
        assert done.completion.values == ["1", "12"]


def _dump(result: Any) -> Any:
    return result.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"meta"})


@needs_everything
@pytest.mark.anyio
@pytest.mark.parametrize("front", ["stdio-legacy", "stdio-auto", "http-legacy", "http-auto"])
async def test_everything_resources_prompts_and_completions_match_direct(tmp_path: Path, front: str) -> None:
    mode = front.split("-")[1]
    params = StdioServerParameters(command="node", args=[str(EVERYTHING), "stdio"])
    async with Client(params, mode=mode, cache=None) as direct:
        resources = (await direct.list_resources()).resources
        templates = (await direct.list_resource_templates()).resource_templates
        prompts = (await direct.list_prompts()).prompts
        first_uri = str(resources[0].uri)
        read_direct = _dump(await direct.read_resource(first_uri))
        prompt_direct = _dump(await direct.get_prompt("simple-prompt", {}))
        args_direct = _dump(await direct.get_prompt("args-prompt", {"city": "Paris", "state": "TX"}))
        completion_direct = _dump(await direct.complete(
            t.PromptReference(type="ref/prompt", name="completable-prompt"), {"name": "department", "value": "E"}))
    config = write_config(tmp_path, f'[servers.everything]\nkind = "stdio"\ncommand = "node"\n'
                                    f'args = ["{EVERYTHING}", "stdio"]\n'
                                    + stdio_server_toml("kit", KIT))
    assert PY
    async with agent_for(front, config) as agent:
        listed = (await agent.list_resources()).resources
        mine = [r for r in listed if str(r.uri).startswith("mcpgw://everything/")]
        assert len(mine) == len(resources)
        assert sorted(str(r.uri) for r in mine) == sorted(f"mcpgw://everything/{r.uri}" for r in resources)
        got_templates = (await agent.list_resource_templates()).resource_templates
        assert {x.uri_template for x in got_templates} >= {f"mcpgw://everything/{x.uri_template}" for x in templates}
        got_prompts = {p.name for p in (await agent.list_prompts()).prompts}
        assert got_prompts >= {f"everything__{p.name}" for p in prompts}

        read = _dump(await agent.read_resource(f"mcpgw://everything/{first_uri}"))
        assert read["contents"][0].pop("uri") == f"mcpgw://everything/{first_uri}"
        read_direct["contents"][0].pop("uri")
        assert read == read_direct
        assert _dump(await agent.get_prompt("everything__simple-prompt", {})) == prompt_direct
        assert _dump(await agent.get_prompt("everything__args-prompt", {"city": "Paris", "state": "TX"})) == args_direct
        completion = _dump(await agent.complete(
            t.PromptReference(type="ref/prompt", name="everything__completable-prompt"),
            {"name": "department", "value": "E"}))
        assert completion == completion_direct
        assert completion["completion"]["values"], "server-everything offered completions"


@pytest.mark.anyio
@pytest.mark.parametrize("upstream", ["modern", "legacy"])
@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_resource_subscriptions_fan_out_with_exported_uris(tmp_path: Path, mode: str, upstream: str) -> None:
    import anyio

    extra = 'protocol = "legacy"\n' if upstream == "legacy" else ""
    config = write_config(tmp_path, stdio_server_toml("kit", KIT, extra=extra))
    updates: list[str] = []
    got = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, t.ResourceUpdatedNotification):
            updates.append(str(message.params.uri))
            got.set()

    uri = "mcpgw://kit/kit://doc/1"
    async with gateway_stdio(config, mode=mode, message_handler=on_message) as agent:
        caps = agent.server_capabilities
        assert caps is not None and caps.resources is not None and caps.resources.subscribe
        if mode == "legacy":
            await agent.subscribe_resource(uri)
            await agent.call_tool("kit__touch", {"uri": "kit://doc/2"})  # not subscribed: no update
            await agent.call_tool("kit__touch", {"uri": "kit://doc/1"})
            with anyio.fail_after(10):
                await got.wait()
            assert updates == [uri]
            await agent.unsubscribe_resource(uri)
        else:
            async with agent.listen(resource_subscriptions=[uri]) as subscription:
                await agent.call_tool("kit__touch", {"uri": "kit://doc/1"})
                with anyio.fail_after(10):
                    event = await subscription.__anext__()
            assert getattr(event, "uri", None) == uri
        with pytest.raises(MCPError) as info:
            if mode == "legacy":
                await agent.subscribe_resource("file:///etc/passwd")
            else:
                async with agent.listen(resource_subscriptions=["file:///etc/passwd"]):
                    pass
        assert "Unknown resource: file:///etc/passwd" in info.value.message
