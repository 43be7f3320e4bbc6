"""Rate limits end to end: `policies/*.toml` limits enforced by real gateway processes on calls
to a real upstream — in process, shared through a real Redis by three gateways, and with Redis
unreachable in both `on_unavailable` modes.
"""

from __future__ import annotations

import json
import socket
import textwrap
from pathlib import Path
from typing import Any

import mcp.types as t
import pytest
from mcp import Client

from tests.conftest import (
    KIT,
    REDIS_URL,
    gateway_http,
    gateway_stdio,
    needs_redis,
    stdio_server_toml,
    text,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.anyio

EVERYONE = """
[[roles]]
name = "everyone"
match = { subjects = ["*"] }
allow = ["*"]
"""


def setup(folder: Path, limits: str, *, servers: str = "", calls: Path | None = None) -> Path:
    """A servers.toml with the kit upstream, and policies/limits.toml beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    env = f'env = {{ KIT_CALLS_FILE = "{calls}" }}\n' if calls else ""
    config = write_config(folder, textwrap.dedent(servers) + stdio_server_toml("kit", KIT, extra=env))
    (folder / "policies").mkdir(exist_ok=True)
    (folder / "policies" / "limits.toml").write_text(EVERYONE + textwrap.dedent(limits))
    return config


def forwarded(calls: Path) -> list[str]:
    return [json.loads(line)["tool"] for line in calls.read_text().splitlines()] if calls.exists() else []


async def test_n_calls_pass_the_next_is_refused_with_which_limit_and_when(tmp_path: Path) -> None:
    calls = tmp_path / "calls.jsonl"
    limits = """
        [[limits]]
        name = "echo-budget"
        tools = ["kit__echo"]
        rate = "3/hour"
        """
    config = setup(tmp_path, limits, calls=calls)
    async with gateway_http(config) as (base, gateway), Client(f"{base}/mcp", cache=None) as agent:
        for i in range(3):
            assert text(await agent.call_tool("kit__echo", {"text": f"hi {i}"})) == f"hi {i}"
        refused = await agent.call_tool("kit__echo", {"text": "one too many"})
        assert refused.is_error
        assert text(refused).startswith("rate limit 'echo-budget' (3/hour per principal on tools kit__echo) "
                                        "reached for 'kit__echo'; retry in ")
        details = refused.structured_content
        assert details is not None and details["limit"] == "echo-budget"
        assert 3590 < details["retry_after"] <= 3600
        assert refused.meta is not None and refused.meta["mcpgw/error"] == "limited"
        assert forwarded(calls) == ["echo"] * 3  # the refused call never reached the upstream
        assert not (await agent.call_tool("kit__pid", {})).is_error  # other tools are not limited

        # A policy reload that leaves the limit as it is keeps its count...
        policy = tmp_path / "policies" / "limits.toml"
        policy.write_text(policy.read_text() + '\n[[roles]]\nname = "extra"\nmatch = { subjects = ["x"] }\n')
        await wait_until(lambda: "policies reloaded" in gateway.text, timeout=15)
        assert (await agent.call_tool("kit__echo", {"text": "still counted"})).is_error
        # ...and an edited limit starts afresh.
        policy.write_text(policy.read_text().replace('"3/hour"', '"5/hour"'))
        await wait_until(lambda: gateway.text.count("policies reloaded") == 2, timeout=15)
        results = [await agent.call_tool("kit__echo", {"text": "x"}) for _ in range(6)]
        assert [r.is_error for r in results] == [False] * 5 + [True]




@needs_redis
async def test_three_gateways_share_one_limit_through_redis(tmp_path: Path, redis_prefix: str) -> None:
    limits = """
        [[limits]]
        tools = ["kit__echo"]
        rate = "10/hour"
        per = "upstream"      # the upstream's own quota, whoever calls

        [[limits]]
        tools = ["kit__pid"]
        rate = "2/hour"
        per = "principal"
        """
    configs = [setup(tmp_path / who, limits, servers=f"""
        [limits]
        url = "{REDIS_URL}"
        key_prefix = "{redis_prefix}"

        [auth.stdio]
        subject = "{who}"
        """) for who in ("alice", "bob", "carol")]
    results: dict[str, list[bool]] = {"alice": [], "bob": [], "carol": []}
    async with gateway_stdio(configs[0]) as alice, gateway_stdio(configs[1]) as bob, \
            gateway_stdio(configs[2]) as carol:
        agents = {"alice": alice, "bob": bob, "carol": carol}
        for _ in range(5):  # 15 calls, spread over the three gateways
            for who, agent in agents.items():
                results[who].append((await agent.call_tool("kit__echo", {"text": who})).is_error)
        assert sum(not failed for calls in results.values() for failed in calls) == 10
        assert results["alice"][:4] == [False] * 4 and results["carol"][-1]
        for who, agent in agents.items():  # per principal: each has a bucket of its own
            pids = [(await agent.call_tool("kit__pid", {})).is_error for _ in range(3)]
            assert pids == [False, False, True], who


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


LIMIT_ECHO = """
    [[limits]]
    tools = ["kit__echo"]
    rate = "2/minute"
    """


async def test_unreachable_redis_fails_closed_by_default(tmp_path: Path) -> None:
    calls = tmp_path / "calls.jsonl"
    config = setup(tmp_path, LIMIT_ECHO, calls=calls, servers=f"""
        [limits]
        url = "redis://:s3cret-pw@127.0.0.1:{closed_port()}/0"
        """)
    async with gateway_http(config) as (base, gateway), Client(f"{base}/mcp", cache=None) as agent:
        refused: list[t.CallToolResult] = [await agent.call_tool("kit__echo", {"text": "x"}) for _ in range(3)]
        assert all(r.is_error for r in refused)
        assert text(refused[0]) == ("rate limits cannot be checked right now, so 'kit__echo' was not called "
                                    "(the gateway fails closed); try again shortly")
        assert refused[0].meta is not None and refused[0].meta["mcpgw/error"] == "unavailable"
        assert forwarded(calls) == []
        assert not (await agent.call_tool("kit__pid", {})).is_error  # no limit applies: nothing to check
        await wait_until(lambda: "are REFUSED until it is back" in gateway.text)
        assert gateway.text.count("rate limits: cannot reach") == 1
        assert "s3cret-pw" not in gateway.text


async def test_unreachable_redis_in_local_mode_counts_in_process_and_says_so(tmp_path: Path) -> None:
    config = setup(tmp_path, LIMIT_ECHO, servers=f"""
        [limits]
        url = "redis://127.0.0.1:{closed_port()}/0"
        on_unavailable = "local"
        """)
    async with gateway_http(config) as (base, gateway), Client(f"{base}/mcp", cache=None) as agent:
        results: list[Any] = [await agent.call_tool("kit__echo", {"text": "x"}) for _ in range(3)]
        assert [r.is_error for r in results] == [False, False, True]
        assert "rate limit (2/minute per principal on tools kit__echo)" in text(results[2])
        await wait_until(lambda: "counting in this process until it is back" in gateway.text)
        line = next(x for x in gateway.lines if "counting in this process" in x)
        assert " ERROR " in line
        assert gateway.text.count("rate limits: cannot reach") == 1
