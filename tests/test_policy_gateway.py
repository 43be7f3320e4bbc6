"""Policy enforced by a real gateway: filtered lists, no oracle, argument rules, human approval in
both eras, hot reload of the policies folder."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp.types as t
import pytest
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client

from .auth_support import oauth_server
from .conftest import KIT, PY, gateway_http, gateway_stdio, stdio_server_toml, text, wait_until, write_config

pytestmark = pytest.mark.anyio

POLICY = """
    [[roles]]
    name = "support"
    match = { scopes = ["support"] }
    allow = ["kit__*", "mcpgw://kit/*"]
    deny = ["kit__crash", "kit__pid", "mcpgw://kit/secret*"]

    [[rules]]
    name = "shouting is denied"
    tool = "kit__echo"
    when = { text = { pattern = "[A-Z !]+" } }
    effect = "deny"
    message = "keep it down"

    [[rules]]
    name = "refunds need a human"
    tool = "kit__echo"
    when = { text = { pattern = "refund.*" } }
    effect = "approve"
    """


def setup(tmp_path: Path, policy: str = POLICY, principal: str = 'subject = "alice"\nscopes = ["support"]') -> Path:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "main.toml").write_text(textwrap.dedent(policy))
    return write_config(tmp_path, f"[auth.stdio]\n{principal}\n" + stdio_server_toml("kit", KIT))


async def error_of(client: Client, tool: str, arguments: dict[str, Any] | None = None) -> str:
    with pytest.raises(MCPError) as info:
        await client.call_tool(tool, arguments or {})
    return info.value.error.message


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_lists_are_filtered_and_hidden_tools_look_unknown(tmp_path: Path, mode: str) -> None:
    config = setup(tmp_path)
    async with gateway_stdio(config, mode=mode) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert "kit__echo" in names and "kit__slow" in names
        assert "kit__crash" not in names and "kit__pid" not in names
        hidden, unknown = await error_of(client, "kit__pid"), await error_of(client, "kit__nope")
        assert hidden == "Unknown tool: kit__pid" and unknown == "Unknown tool: kit__nope"
        assert text(await client.call_tool("kit__echo", {"text": "hello"})) == "hello"


async def test_a_principal_with_no_role_sees_nothing(tmp_path: Path) -> None:
    config = setup(tmp_path, principal='subject = "mallory"\nscopes = ["guest"]')
    async with gateway_stdio(config) as client:
        assert (await client.list_tools()).tools == []
        assert (await client.list_resources()).resources == []
        assert await error_of(client, "kit__echo", {"text": "hi"}) == "Unknown tool: kit__echo"


async def test_argument_rule_denies_with_its_reason(tmp_path: Path) -> None:
    config = setup(tmp_path)
    async with gateway_stdio(config) as client:
        message = await error_of(client, "kit__echo", {"text": "HELLO!"})
        assert message == "'kit__echo' was denied by policy (shouting is denied): keep it down"


def answering(action: str, approve: bool = True, seen: list[str] | None = None) -> Any:
    async def on_elicit(context: Any, params: t.ElicitRequestParams) -> t.ElicitResult:
        if seen is not None:
            seen.append(params.message)
        return t.ElicitResult(action=action, content={"approve": approve} if action == "accept" else None)
    return on_elicit


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_approval_accept_forwards_and_names_tool_and_arguments(tmp_path: Path, mode: str) -> None:
    config = setup(tmp_path)
    seen: list[str] = []
    async with gateway_stdio(config, mode=mode, elicitation_callback=answering("accept", seen=seen)) as client:
        assert text(await client.call_tool("kit__echo", {"text": "refund 42"})) == "refund 42"
        assert text(await client.call_tool("kit__echo", {"text": "no question"})) == "no question"
    assert len(seen) == 1, "only the call the rule names needs approval"
    assert "'kit__echo' by 'alice'" in seen[0] and '"text": "refund 42"' in seen[0]
    assert "refunds need a human" in seen[0]


@pytest.mark.parametrize("mode", ["legacy", "auto"])
@pytest.mark.parametrize(("action", "approve", "said"), [
    ("decline", False, "the human declined the call of 'kit__echo'"),
    ("cancel", False, "the human cancelled the call of 'kit__echo'"),
    ("accept", False, "the human declined the call of 'kit__echo'"),
])
async def test_approval_refused_is_not_forwarded(tmp_path: Path, mode: str, action: str, approve: bool,
                                                 said: str) -> None:
    config = setup(tmp_path)
    calls = tmp_path / "calls.jsonl"
    config.write_text(config.read_text() + f'env = {{ KIT_CALLS_FILE = "{calls}" }}\n')
    async with gateway_stdio(config, mode=mode, elicitation_callback=answering(action, approve)) as client:
        message = await error_of(client, "kit__echo", {"text": "refund 1000"})
    assert said in message and "not forwarded" in message
    assert not calls.exists(), "a call the human did not approve reached the upstream"


async def test_agent_without_elicitation_cannot_approve(tmp_path: Path) -> None:
    config = setup(tmp_path)
    async with gateway_stdio(config, mode="legacy") as client:
        message = await error_of(client, "kit__echo", {"text": "refund 5"})
    assert "needs a human's approval, and the agent could not be asked" in message
    assert "does not support elicitation" in message


async def test_policy_reload_keeps_running_policy_on_a_bad_file_then_applies_a_good_one(tmp_path: Path) -> None:
    policy = POLICY.replace('match = { scopes = ["support"] }', 'match = { subjects = ["anonymous"] }')
    config = setup(tmp_path, policy)
    folder = tmp_path / "policies"
    async with gateway_http(config) as (url, proc), Client(f"{url}/mcp", mode="legacy", cache=None) as client:
        assert "kit__echo" in {tool.name for tool in (await client.list_tools()).tools}
        (folder / "main.toml").write_text(textwrap.dedent(policy).replace('effect = "deny"', 'effect = "nope"', 1))
        await proc.wait_for(r"policies NOT reloaded")
        assert f"{folder}/main.toml:" in proc.text and "rules[0].effect" in proc.text
        assert "kit__echo" in {tool.name for tool in (await client.list_tools()).tools}
        (folder / "main.toml").write_text(textwrap.dedent(policy).replace('"kit__*", ', ""))
        await proc.wait_for(r"policies reloaded from")

        async def echo_hidden() -> bool:
            return "kit__echo" not in {tool.name for tool in (await client.list_tools()).tools}
        await wait_until(echo_hidden)
        assert await error_of(client, "kit__echo", {"text": "x"}) == "Unknown tool: kit__echo"


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_approval_then_the_upstreams_own_question_asks_the_human_once(tmp_path: Path, mode: str) -> None:
    config = setup(tmp_path, POLICY + '\n[[rules]]\ntool = "kit__ask_name"\neffect = "approve"\n')
    seen: list[str] = []

    async def on_elicit(context: Any, params: t.ElicitRequestParams) -> t.ElicitResult:
        seen.append(params.message)
        return t.ElicitResult(action="accept", content={"approve": True, "name": "Ada"})

    async with gateway_stdio(config, mode=mode, elicitation_callback=on_elicit) as client:
        assert "Ada" in text(await client.call_tool("kit__ask_name", {}))
    assert len(seen) == 2, seen  # the approval, then the upstream's question; no second approval
    assert seen[0].startswith("Approve the call of tool 'kit__ask_name'")


async def test_check_as_prints_each_tools_decision_and_rule(tmp_path: Path) -> None:
    config = setup(tmp_path)
    done = await anyio.run_process([PY, "-m", "mcpgw", "check", "--config", str(config), "--as",
                                    "sub=alice,scopes=support"], check=False)
    out = done.stdout.decode()
    assert done.returncode == 0, out + done.stderr.decode()
    assert "policy is valid (1 role(s), 2 rule(s), 0 limit(s); default deny)" in out
    assert "as 'alice' (client None, scopes ['support'], groups []): roles ['support']" in out
    lines = {line.split()[1]: line for line in out.splitlines() if line.startswith("  ") and len(line.split()) > 2
             and line.split()[0] in ("allow", "deny", "approve")}
    assert lines["kit__pid"].split()[0] == "deny" and "role 'support' deny 'kit__pid'" in lines["kit__pid"]
    assert lines["kit__slow"].split()[0] == "allow" and "role 'support' allow 'kit__*'" in lines["kit__slow"]
    assert "+ approve when text {'pattern': 'refund.*'} (refunds need a human)" in out
    guest = await anyio.run_process([PY, "-m", "mcpgw", "check", "--config", str(config), "--as", "sub=eve"],
                                    check=False)
    assert "roles none" in guest.stdout.decode() and "allow " not in guest.stdout.decode()


async def test_no_answer_in_time_is_a_refusal(tmp_path: Path) -> None:
    config = setup(tmp_path)
    config.write_text(config.read_text().replace("[gateway]\n", "[gateway]\napproval_timeout = 0.5\n", 1))
    never = anyio.Event()

    async def on_elicit(context: Any, params: t.ElicitRequestParams) -> t.ElicitResult:
        await never.wait()
        raise AssertionError("unreachable")

    async with gateway_stdio(config, mode="legacy", elicitation_callback=on_elicit) as client:
        message = await error_of(client, "kit__echo", {"text": "refund 3"})
        never.set()
    assert "needs a human's approval, and none came within 0.5s; the call was not forwarded" in message


async def test_lists_differ_per_authenticated_principal_on_one_gateway(tmp_path: Path) -> None:
    """Two callers with real tokens on one HTTP gateway: each sees only what its roles allow, and
    one caller's cached listing is never served to the other."""
    audience = "http://gw.test/mcp"
    policy = POLICY + """
        [[roles]]
        name = "ops"
        match = { groups = ["ops"] }
        allow = ["kit__pid"]
        """
    async with oauth_server(gateway_audience=audience) as auth:
        config = setup(tmp_path, policy)
        config.write_text(config.read_text().replace("[auth.stdio]", f"""[auth]
issuer = "{auth.issuer}"
audience = "{audience}"
jwks_url = "{auth.jwks_url}"

[auth.stdio]"""))
        now = int(time.time())

        async def tools_of(claims: dict[str, Any]) -> set[str]:
            token = await auth.mint({"aud": audience, "iat": now, "exp": now + 300, **claims})
            async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http, \
                    Client(streamable_http_client(f"{url}/mcp", http_client=http), mode="legacy", cache=None) as c:
                return {tool.name for tool in (await c.list_tools()).tools}

        async with gateway_http(config) as (url, _):
            alice = await tools_of({"sub": "alice", "scope": "support"})
            olga = await tools_of({"sub": "olga", "roles": ["ops"]})
            alice_again = await tools_of({"sub": "alice", "scope": "support"})
    assert "kit__echo" in alice and "kit__pid" not in alice
    assert olga == {"kit__pid"}
    assert alice_again == alice
