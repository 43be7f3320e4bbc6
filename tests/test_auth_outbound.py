"""Credentials toward upstreams: the gateway's own, never the caller's — and never shown anywhere.

Real parts only: the authorization server and the credential-checking upstream of
tests/upstreams, the gateway as a subprocess, agents over HTTP with real tokens.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client

from mcpgw.auth.upstream import StaticCredential
from mcpgw.config.auth import ApiKeyAuth

from .auth_support import AuthServer, oauth_server, protected_upstream, unverified
from .conftest import PY, Process, gateway_http, gateway_stdio, text, write_config

pytestmark = pytest.mark.anyio

GW_AUDIENCE = "http://gw.test/mcp"
CLIENT_SECRET = "gw-client-secret-4f1c9a"


@asynccontextmanager
async def agent(url: str, token: str | None = None, mode: str = "legacy") -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30)) as http, \
            Client(streamable_http_client(f"{url}/mcp", http_client=http), mode=mode, cache=None) as client:
        yield client


async def whoami(client: Client, tool: str = "prot__whoami") -> dict[str, Any]:
    result = await client.call_tool(tool, {})
    assert not result.is_error, text(result)
    assert isinstance(result.structured_content, dict)
    return dict(result.structured_content)


def remote(url: str, auth: str) -> str:
    return f'[servers.prot]\nkind = "http"\nurl = "{url}"\n{auth}\n'


async def test_static_bearer_and_header_are_injected(tmp_path: Path) -> None:
    seen = tmp_path / "seen.txt"
    env = {"UP_TOKEN": "static-secret-1", "UP_KEY": "static-secret-2"}
    async with protected_upstream(static_bearer="static-secret-1", seen=seen) as up1, \
            protected_upstream(static_header=("X-Api-Key", "static-secret-2")) as up2:
        config = write_config(tmp_path, remote(up1.url, 'auth = { type = "bearer", token = "${UP_TOKEN}" }')
                              + remote(up2.url, 'auth = { type = "header", name = "X-Api-Key", value = "${UP_KEY}" }'
                                       ).replace("[servers.prot]", "[servers.keyed]"))
        async with gateway_stdio(config, env=env) as client:
            assert (await whoami(client))["mode"] == "static-bearer"
            assert (await whoami(client, "keyed__whoami"))["mode"] == "static-header"
    assert set(up1.seen()) == {"authorization: Bearer static-secret-1"}


@pytest.mark.parametrize("token_url", ["configured", "discovered"])
async def test_client_credentials_token_is_cached_and_names_the_upstream(tmp_path: Path, token_url: str) -> None:
    async with oauth_server(clients={"mcpgw": CLIENT_SECRET}) as auth, protected_upstream(auth=auth) as up:
        where = f'token_url = "{auth.token_url}"' if token_url == "configured" else ""
        config = write_config(tmp_path, remote(up.url, f"""
            [servers.prot.auth]
            type = "oauth_client_credentials"
            {where}
            client_id = "mcpgw"
            client_secret = "{CLIENT_SECRET}"
            scopes = ["mcp"]
            """))
        async with gateway_http(config) as (url, _), agent(url) as client:
            for _ in range(3):
                me = await whoami(client)
                assert me["sub"] == "mcpgw" and me["client_id"] == "mcpgw"
                assert me["aud"] in (up.url, [up.url]), "RFC 8707: the token names the upstream as its audience"
        stats = await auth.stats()
        assert stats["token:client_credentials"] == 1, stats  # one token serves every request until near expiry


@asynccontextmanager
async def exchange_setup(tmp_path: Path, *, log_level: str = "info", refuse: tuple[str, ...] = ("mallory",),
                         extra: str = "") -> AsyncIterator[tuple[str, AuthServer, Any, Process]]:
    seen = tmp_path / "seen.txt"
    async with oauth_server(clients={"mcpgw": CLIENT_SECRET}, gateway_audience=GW_AUDIENCE,
                            refuse_subjects=refuse) as auth, protected_upstream(auth=auth, seen=seen) as up:
        config = write_config(tmp_path, f"""
            [auth]
            issuer = "{auth.issuer}"
            audience = "{GW_AUDIENCE}"
            jwks_url = "{auth.jwks_url}"
            required_scopes = ["mcp"]
            """ + remote(up.url, f"""
            [servers.prot.auth]
            type = "token_exchange"
            token_url = "{auth.token_url}"
            client_id = "mcpgw"
            client_secret = "{CLIENT_SECRET}"
            scopes = ["mcp", "crm.read"]
            """) + extra)
        async with gateway_http(config, env={"MCPGW_LOG_LEVEL": log_level}) as (url, proc):
            yield url, auth, up, proc


async def caller_token(auth: AuthServer, subject: str, scope: str = "mcp crm.read crm.write") -> str:
    now = int(time.time())
    return await auth.mint({"sub": subject, "aud": GW_AUDIENCE, "client_id": "agent-app", "scope": scope,
                            "iat": now, "exp": now + 600})


async def test_token_exchange_acts_for_each_caller_and_never_forwards_their_token(tmp_path: Path) -> None:
    async with exchange_setup(tmp_path) as (url, auth, up, _):
        alice, bob = await caller_token(auth, "alice"), await caller_token(auth, "bob", "mcp")
        async with agent(url, alice) as a, agent(url, bob, mode="auto") as b:
            me_a, me_b = await whoami(a), await whoami(b)
            assert await whoami(a) == me_a  # second call: the cached exchange, the same session
        assert me_a["sub"] == "alice" and me_b["sub"] == "bob"
        assert me_a["act"] == {"sub": "mcpgw"}, "RFC 8693: the gateway is named as the actor"
        assert me_a["aud"] in (up.url, [up.url])
        assert set(me_a["scope"].split()) == {"mcp", "crm.read"}, "scopes narrowed to what the config asks"
        assert me_b["scope"] == "mcp", "never more than the caller holds"
        tokens = up.seen_tokens()
        assert alice not in tokens and bob not in tokens, "a caller's own token reached the upstream"
        stats = await auth.stats()
        assert stats["token:token_exchange"] == 2, stats  # one per caller, cached after


async def test_refused_exchange_fails_closed_with_a_clear_error(tmp_path: Path) -> None:
    async with exchange_setup(tmp_path) as (url, auth, up, _):
        mallory = await caller_token(auth, "mallory")
        async with agent(url, mallory) as client:
            with pytest.raises(MCPError) as info:
                await client.call_tool("prot__whoami", {})
        message = info.value.error.message
        assert "token exchange for 'mallory' was refused by the authorization server (invalid_grant" in message
        assert "not forwarded" in message
        subjects = {unverified(token)[1].get("sub") for token in up.seen_tokens()}
        assert "mallory" not in subjects, "nothing reached the upstream on mallory's behalf"
        assert mallory not in up.seen_tokens()


async def test_stdio_caller_has_no_token_to_exchange(tmp_path: Path) -> None:
    async with oauth_server(clients={"mcpgw": CLIENT_SECRET}) as auth, protected_upstream(auth=auth) as up:
        config = write_config(tmp_path, '[auth.stdio]\nsubject = "ops"\n' + remote(up.url, f"""
            [servers.prot.auth]
            type = "token_exchange"
            token_url = "{auth.token_url}"
            client_id = "mcpgw"
            client_secret = "{CLIENT_SECRET}"
            """))
        async with gateway_stdio(config) as client:
            tools = {tool.name for tool in (await client.list_tools()).tools}
            assert "prot__whoami" in tools  # the catalog comes over the gateway's own identity
            with pytest.raises(MCPError, match="caller 'ops' has no access token to exchange"):
                await client.call_tool("prot__whoami", {})


async def test_no_secret_or_token_appears_in_any_output_channel(tmp_path: Path) -> None:
    """Every channel an operator or agent can see, grepped for every secret value in play."""
    telemetry = '\n[telemetry]\nexporter = "console"\n'  # spans as JSON lines on the gateway's stderr
    async with exchange_setup(tmp_path, log_level="debug", extra=telemetry) as (url, auth, up, proc):
        alice, mallory = await caller_token(auth, "alice"), await caller_token(auth, "mallory")
        shown: list[str] = []
        async with agent(url, alice) as client:
            shown.append(json.dumps((await client.list_tools()).model_dump(mode="json")))
            shown.append(json.dumps((await client.call_tool("prot__whoami", {})).model_dump(mode="json")))
            shown.append(json.dumps((await client.call_tool("prot__echo", {"text": "hi"})).model_dump(mode="json")))
            for tool, args in (("prot__nope", {}), ("prot__echo", {"text": 3})):
                try:
                    shown.append(json.dumps((await client.call_tool(tool, args)).model_dump(mode="json")))
                except MCPError as exc:
                    shown.append(exc.error.message)
        async with agent(url, mallory) as client:
            with pytest.raises(MCPError) as info:
                await client.call_tool("prot__whoami", {})
            shown.append(info.value.error.message)
        async with httpx2.AsyncClient(timeout=10) as http:
            shown.append((await http.get(f"{url}/readyz")).text)
            shown.append((await http.post(f"{url}/mcp", json={}, headers={"Authorization": "Bearer " + alice[:-4]
                                                                          + "AAAA"})).text)
    shown.append(proc.text)  # the gateway's whole log, at debug level, with every span's attributes
    assert '"tools/call prot__whoami"' in proc.text, "the OpenTelemetry spans were not in the captured output"
    # The audit trail (on by default, SQLite beside servers.toml), read as raw bytes: the file and its WAL.
    audit = b"".join(path.read_bytes() for path in tmp_path.glob("mcpgw-audit.db*"))
    assert b"prot__whoami" in audit and b"alice" in audit, "the audit trail did not record the calls"
    shown.append(audit.decode("latin-1"))
    secrets = {CLIENT_SECRET, alice, mallory, *up.seen_tokens()}
    assert len(secrets) >= 4  # the client secret, two caller tokens, and at least one upstream token
    for secret in secrets:
        for signature in (secret, secret.split(".")[-1]):  # a JWT's signature alone is a secret too
            leaks = [channel[:200] for channel in shown if signature in channel]
            assert not leaks, f"a secret ({unverified(secret)[1].get('sub') if '.' in secret else 'client secret'})" \
                              f" leaked into: {leaks}"
    assert "alice" in proc.text or "mallory" in proc.text, "the log does say whose session/exchange it was"


async def test_failed_discovery_is_reported_by_check(tmp_path: Path) -> None:
    async with protected_upstream(static_bearer="irrelevant") as up:
        config = write_config(tmp_path, remote(up.url, """
            [servers.prot.auth]
            type = "oauth_client_credentials"
            client_id = "mcpgw"
            client_secret = "s"
            """), gateway="connect_timeout = 20\nrestart_backoff = 30")
        checked = await anyio.run_process([PY, "-m", "mcpgw", "check", "--config", str(config)], check=False)
    out = checked.stdout.decode()
    assert checked.returncode == 1, out
    assert "FAIL prot" in out and "upstream 'prot': cannot find its token endpoint: the protected-resource " \
        "metadata names no authorization_servers; set token_url" in out, out


async def test_api_key_and_basic_credentials(tmp_path: Path) -> None:
    basic = "Basic " + base64.b64encode(b"svc:pa:ss").decode()
    async with protected_upstream(static_header=("X-Api-Key", "k-123")) as keyed, \
            protected_upstream(static_header=("Authorization", basic)) as based:
        config = write_config(tmp_path,
                              remote(keyed.url, 'auth = { type = "api_key", name = "X-Api-Key", value = "k-123" }')
                              + remote(based.url, 'auth = { type = "basic", username = "svc", password = "pa:ss" }'
                                       ).replace("[servers.prot]", "[servers.based]"))
        async with gateway_stdio(config) as client:
            assert (await whoami(client))["mode"] == "static-header"
            assert (await whoami(client, "based__whoami"))["mode"] == "static-header"


async def test_api_key_in_the_query_string() -> None:
    flow = StaticCredential(ApiKeyAuth.model_validate({"type": "api_key", "in": "query", "name": "key",
                                                      "value": "k 1"})).async_auth_flow(
        httpx2.Request("POST", "http://up.test/mcp?x=1"))
    request = await flow.__anext__()
    assert str(request.url) == "http://up.test/mcp?x=1&key=k+1"
    assert "authorization" not in request.headers
