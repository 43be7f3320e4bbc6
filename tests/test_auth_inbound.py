"""The gateway as an OAuth resource server, against a real authorization server.

Every refusal must be a clear 401/403 with the RFC 6750/9728 `WWW-Authenticate` header, and
nothing may reach an upstream: the kit upstream appends every call it receives to a file, which
stays empty through the whole negative suite.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from .auth_support import (
    AuthServer,
    alg_none_token,
    foreign_key_token,
    key_confusion_token,
    oauth_server,
    tampered_signature,
)
from .conftest import KIT, Process, gateway_http, stdio_server_toml, text, write_config

pytestmark = pytest.mark.anyio

GW_AUDIENCE = "http://gw.test/mcp"
"""The gateway's resource identifier. It need not be where the test reaches the gateway: tokens
name the resource, and the metadata URL is derived from it (as behind a reverse proxy)."""


@dataclass
class Protected:
    url: str
    auth: AuthServer
    calls: Path
    gateway: Process

    def forwarded(self) -> list[dict[str, Any]]:
        if not self.calls.exists():
            return []
        return [json.loads(line) for line in self.calls.read_text().splitlines()]

    async def good_claims(self, **changes: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {"iss": self.auth.issuer, "aud": GW_AUDIENCE, "sub": "alice", "client_id": "agent-1",
                  "scope": "mcp tools", "roles": ["support"], "iat": now, "exp": now + 300}
        claims.update(changes)
        return {k: v for k, v in claims.items() if v is not None}


@asynccontextmanager
async def protected_gateway(tmp_path: Path, *, refresh_interval: int = 60, introspection: bool = False
                            ) -> AsyncIterator[Protected]:
    calls = tmp_path / "calls.jsonl"
    async with oauth_server(clients={"mcpgw": "mcpgw-secret", "agent-1": "agent-secret"},
                            gateway_audience=GW_AUDIENCE) as auth:
        verifier = (f'introspection_url = "{auth.introspection_url}"\nclient_id = "mcpgw"\n'
                    f'client_secret = "mcpgw-secret"\n') if introspection else f'jwks_url = "{auth.jwks_url}"\n'
        config = write_config(tmp_path, f"""
            [auth]
            issuer = "{auth.issuer}"
            audience = "{GW_AUDIENCE}"
            {verifier}
            required_scopes = ["mcp"]
            jwks_refresh_min_interval = {refresh_interval}
            """ + stdio_server_toml("kit", KIT, extra=f'env = {{ KIT_CALLS_FILE = "{calls}" }}\n'))
        async with gateway_http(config) as (url, proc):
            yield Protected(url, auth, calls, proc)


async def post_mcp(url: str, headers: dict[str, str]) -> httpx2.Response:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "kit__echo", "arguments": {"text": "should never arrive"}}}
    async with httpx2.AsyncClient(timeout=10) as http:
        return await http.post(f"{url}/mcp", json=body, headers={
            "Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25", **headers})


async def call_echo(url: str, token: str, mode: str = "legacy") -> str:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30)) as http, \
            Client(streamable_http_client(f"{url}/mcp", http_client=http), mode=mode, cache=None) as agent:
        return text(await agent.call_tool("kit__echo", {"text": "hello"}))


def www_authenticate(response: httpx2.Response) -> str:
    value = response.headers.get("www-authenticate", "")
    assert value.startswith("Bearer "), value
    assert 'resource_metadata="http://gw.test/.well-known/oauth-protected-resource/mcp"' in value
    return value


async def test_valid_token_is_served_in_both_eras_and_metadata_is_published(tmp_path: Path) -> None:
    async with protected_gateway(tmp_path) as gw:
        token = await gw.auth.mint(await gw.good_claims())
        assert await call_echo(gw.url, token, "legacy") == "hello"
        assert await call_echo(gw.url, token, "auto") == "hello"
        assert [c["tool"] for c in gw.forwarded()] == ["echo", "echo"]
        async with httpx2.AsyncClient(timeout=10) as http:
            for path in ("/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource"):
                meta = (await http.get(gw.url + path)).json()
                assert meta["resource"] == GW_AUDIENCE
                assert meta["authorization_servers"] == [gw.auth.issuer]
                assert meta["scopes_supported"] == ["mcp"]
            # Health and readiness stay open: orchestrators probe without tokens.
            assert (await http.get(gw.url + "/healthz")).status_code == 200


async def test_negative_suite_each_refused_clearly_and_nothing_forwarded(tmp_path: Path) -> None:
    async with protected_gateway(tmp_path) as gw:
        good = await gw.good_claims()
        public = await gw.auth.public_key()
        cases: list[tuple[str, dict[str, str], int, str]] = [
            ("no token", {}, 401, "requires an OAuth access token"),
            ("malformed header", {"Authorization": "Token abc"}, 401, "malformed Authorization header"),
            ("bearer without token", {"Authorization": "Bearer"}, 401, "malformed Authorization header"),
            ("alg none", {"Authorization": f"Bearer {alg_none_token(good, kid=public.kid)}"}, 401,
             "algorithm 'none' is not accepted"),
            ("HS256 keyed with the public key", {"Authorization": f"Bearer {key_confusion_token(good, public)}"},
             401, "algorithm 'HS256' is not accepted"),
            ("wrong signature", {"Authorization": "Bearer " + tampered_signature(await gw.auth.mint(good))}, 401,
             "signature or format is invalid"),
            ("signed by a key of the right kid but not the issuer's",
             {"Authorization": "Bearer " + foreign_key_token(good, kid=public.kid or "")}, 401,
             "signature or format is invalid"),
            ("unknown kid", {"Authorization": "Bearer " + foreign_key_token(good)}, 401,
             "signing key 'not-published' is not among"),
            ("expired", {"Authorization": "Bearer " + await gw.auth.mint(await gw.good_claims(
                exp=int(time.time()) - 3600, iat=int(time.time()) - 7200))}, 401, "token expired"),
            ("not yet valid", {"Authorization": "Bearer " + await gw.auth.mint(await gw.good_claims(
                nbf=int(time.time()) + 3600))}, 401, "not valid yet"),
            ("issued in the future", {"Authorization": "Bearer " + await gw.auth.mint(await gw.good_claims(
                iat=int(time.time()) + 3600))}, 401, "issued in the future"),
            ("wrong iss", {"Authorization": "Bearer " + await gw.auth.mint(await gw.good_claims(
                iss="http://evil.test/as"))}, 401, "is not the configured issuer"),
            ("wrong aud (a token for another resource)", {"Authorization": "Bearer " + await gw.auth.mint(
                await gw.good_claims(aud="http://other.test/mcp"))}, 401, "was issued for another resource"),
            ("no exp", {"Authorization": "Bearer " + await gw.auth.mint(await gw.good_claims(exp=None),
                                                                        defaults=False)}, 401, "no expiry"),
            ("missing required scope", {"Authorization": "Bearer " + await gw.auth.mint(await gw.good_claims(
                scope="tools"))}, 403, "requires the scope(s) mcp"),
        ]
        for name, headers, status, message in cases:
            response = await post_mcp(gw.url, headers)
            assert response.status_code == status, (name, response.status_code, response.text)
            challenge = www_authenticate(response)
            body = response.json()
            assert message in body["error_description"], (name, body)
            if status == 403:
                assert body["error"] == "insufficient_scope" and 'scope="mcp"' in challenge, name
            elif name == "no token":
                assert "error=" not in challenge, "RFC 6750 §3: no error code when no credentials were sent"
            else:
                assert body["error"] in ("invalid_token", "invalid_request"), name
                assert f'error="{body["error"]}"' in challenge, name
        assert gw.forwarded() == [], "a refused request reached the upstream"
        # The refusals cost the IdP at most one JWKS refetch (the unknown kid), not one per request.
        assert (await gw.auth.stats())["jwks"] <= 2


async def test_unknown_kid_flood_does_not_hammer_the_idp_and_rotation_is_followed(tmp_path: Path) -> None:
    async with protected_gateway(tmp_path) as gw:
        good = await gw.good_claims()
        assert await call_echo(gw.url, await gw.auth.mint(good)) == "hello"
        before = (await gw.auth.stats())["jwks"]
        for i in range(30):
            response = await post_mcp(gw.url, {"Authorization": "Bearer " + foreign_key_token(good, kid=f"rnd-{i}")})
            assert response.status_code == 401
        assert (await gw.auth.stats())["jwks"] - before <= 1, "random kids must not each refetch the JWKS"


async def test_rotated_key_is_fetched_when_first_seen(tmp_path: Path) -> None:
    # Refresh interval 0: the first token under the new kid triggers one refetch and is accepted.
    async with protected_gateway(tmp_path, refresh_interval=0) as gw:
        assert await call_echo(gw.url, await gw.auth.mint(await gw.good_claims())) == "hello"
        await gw.auth.rotate()
        assert await call_echo(gw.url, await gw.auth.mint(await gw.good_claims())) == "hello"


async def test_opaque_tokens_are_introspected(tmp_path: Path) -> None:
    async with protected_gateway(tmp_path, introspection=True) as gw:
        token = await gw.auth.opaque(await gw.good_claims())
        assert await call_echo(gw.url, token) == "hello"
        wrong_aud = await gw.auth.opaque(await gw.good_claims(aud="http://other.test/mcp"))
        response = await post_mcp(gw.url, {"Authorization": f"Bearer {wrong_aud}"})
        assert response.status_code == 401 and "another resource" in response.json()["error_description"]
        response = await post_mcp(gw.url, {"Authorization": "Bearer never-issued-opaque-token"})
        assert response.status_code == 401 and "not active" in response.json()["error_description"]
        assert [c["tool"] for c in gw.forwarded()] == ["echo"]


async def test_a_session_is_bound_to_the_principal_that_opened_it(tmp_path: Path) -> None:
    async with protected_gateway(tmp_path) as gw:
        alice = await gw.auth.mint(await gw.good_claims())
        bob = await gw.auth.mint(await gw.good_claims(sub="bob"))
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
        headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        async with httpx2.AsyncClient(timeout=10) as http:
            opened = await http.post(f"{gw.url}/mcp", json=init,
                                     headers={**headers, "Authorization": f"Bearer {alice}"})
            session = opened.headers["mcp-session-id"]
            call = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}
            hijack = await http.post(f"{gw.url}/mcp", json=call, headers={
                **headers, "Authorization": f"Bearer {bob}", "Mcp-Session-Id": session,
                "MCP-Protocol-Version": "2025-11-25"})
        assert hijack.status_code in (403, 404), hijack.text
        assert gw.forwarded() == []


async def test_legacy_sse_front_requires_the_token_too(tmp_path: Path) -> None:
    async with protected_gateway(tmp_path) as gw:
        token = await gw.auth.mint(await gw.good_claims())
        async with Client(sse_client(f"{gw.url}/sse", headers={"Authorization": f"Bearer {token}"}),
                          mode="legacy", cache=None) as agent:
            assert text(await agent.call_tool("kit__echo", {"text": "over sse"})) == "over sse"
        async with httpx2.AsyncClient(timeout=10) as http:
            refused = await http.get(f"{gw.url}/sse")
            posted = await http.post(f"{gw.url}/messages/?session_id=00000000000000000000000000000000", json={})
        assert refused.status_code == 401 and posted.status_code == 401
        www_authenticate(refused)
        assert [c["tool"] for c in gw.forwarded()] == ["echo"]
