"""The auth test parts themselves: the authorization server issues, exchanges, refuses, introspects
and mints as the gateway's tests rely on, and the protected upstream accepts exactly the right
credentials."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx2
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client

from .auth_support import (
    GATEWAY_CLIENT,
    AuthServer,
    ClientSpec,
    alg_none_token,
    foreign_key_token,
    key_confusion_token,
    oauth_server,
    protected_upstream,
    tampered_claims,
    tampered_signature,
    unverified,
)

GATEWAY_AUD = "http://gateway.test/mcp"
UP_AUD = "http://upstream.test/mcp"


async def verified_claims(auth: AuthServer, token: str) -> dict[str, Any]:
    """Claims of `token` after checking its RS256 signature against the AS's published JWKS."""
    async with httpx2.AsyncClient(timeout=10) as http:
        keys = KeySet.import_key_set((await http.get(auth.jwks_url)).json())
    return dict(jwt.decode(token, keys, algorithms=["RS256"]).claims)


@pytest.mark.anyio
async def test_metadata_and_client_credentials() -> None:
    clients: dict[str, ClientSpec] = {"mcpgw": "mcpgw-secret", "narrow": ("n-secret", ["read"])}
    async with oauth_server(clients=clients, ttl=120) as auth:
        async with httpx2.AsyncClient(timeout=10) as http:
            meta = (await http.get(auth.metadata_url)).json()
        assert auth.issuer == auth.base + "/as"
        assert meta["issuer"] == auth.issuer  # exactly: no trailing slash
        assert (meta["token_endpoint"], meta["jwks_uri"], meta["introspection_endpoint"]) == (
            auth.token_url, auth.jwks_url, auth.introspection_url)

        for method in ("basic", "post"):
            response = await auth.token_request(
                {"grant_type": "client_credentials", "scope": "read write", "resource": UP_AUD}, auth=method)
            assert response.status_code == 200, response.text
            body = response.json()
            assert (body["token_type"], body["expires_in"], body["scope"]) == ("Bearer", 120, "read write")
            claims = await verified_claims(auth, body["access_token"])
            assert claims["iss"] == auth.issuer
            assert (claims["sub"], claims["client_id"], claims["aud"], claims["scope"]) == (
                "mcpgw", "mcpgw", UP_AUD, "read write")
            assert claims["exp"] - claims["iat"] == 120
            assert unverified(body["access_token"])[0]["typ"] == "at+jwt"

        both = await auth.token_request({"grant_type": "client_credentials", "audience": "a", "resource": "b"})
        assert (await verified_claims(auth, both.json()["access_token"]))["aud"] == ["a", "b"]

        wrong = await auth.token_request({"grant_type": "client_credentials"}, client=("mcpgw", "nope"))
        assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
        anonymous = await auth.token_request({"grant_type": "client_credentials"}, auth="none")
        assert anonymous.status_code == 401 and anonymous.json()["error"] == "invalid_client"
        too_wide = await auth.token_request({"grant_type": "client_credentials", "scope": "read write"},
                                            client=("narrow", "n-secret"))
        assert too_wide.status_code == 400 and too_wide.json()["error"] == "invalid_scope"
        stats = await auth.stats()
        assert stats["token:client_credentials"] == 6 and stats["metadata"] == 1


@pytest.mark.anyio
async def test_token_exchange_issues_a_narrowed_token_on_behalf_of_the_subject() -> None:
    async with oauth_server(gateway_audience=GATEWAY_AUD, ttl=60) as auth:
        subject = await auth.mint({"sub": "alice", "aud": GATEWAY_AUD, "scope": "read write", "client_id": "agent"})
        response = await auth.exchange(subject, audience=UP_AUD, scope="write admin")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
        claims = await verified_claims(auth, body["access_token"])
        assert (claims["sub"], claims["aud"], claims["client_id"], claims["scope"]) == (
            "alice", UP_AUD, GATEWAY_CLIENT[0], "write")
        assert claims["act"] == {"sub": GATEWAY_CLIENT[0]}
        assert claims["exp"] - claims["iat"] == 60 and claims["exp"] <= time.time() + 61

        unscoped = (await auth.exchange(subject, resource=UP_AUD)).json()
        assert (await verified_claims(auth, unscoped["access_token"]))["scope"] == "read write"
        assert (await auth.stats())["exchanges"] == 2


@pytest.mark.anyio
async def test_token_exchange_refusals() -> None:
    async with oauth_server(gateway_audience=GATEWAY_AUD, refuse_subjects=["mallory"],
                            refuse_audiences=["http://forbidden.test/mcp"]) as auth:
        now = int(time.time())
        cases = {
            "refused subject": (await auth.mint({"sub": "mallory", "aud": GATEWAY_AUD}), UP_AUD, "invalid_grant"),
            "not for the gateway": (await auth.mint({"sub": "alice", "aud": "http://other.test"}), UP_AUD,
                                    "invalid_grant"),
            "expired": (await auth.mint({"sub": "alice", "aud": GATEWAY_AUD, "exp": now - 5}), UP_AUD,
                        "invalid_grant"),
            "foreign signer": (foreign_key_token({"iss": auth.issuer, "sub": "alice", "aud": GATEWAY_AUD,
                                                  "exp": now + 60}), UP_AUD, "invalid_grant"),
            "refused audience": (await auth.mint({"sub": "alice", "aud": GATEWAY_AUD}), "http://forbidden.test/mcp",
                                 "invalid_target"),
        }
        for name, (subject, audience, error) in cases.items():
            response = await auth.exchange(subject, audience=audience)
            assert response.status_code == 400, name
            assert response.json()["error"] == error, (name, response.json())
            assert response.json()["error_description"], name
        stats = await auth.stats()
        assert stats["exchanges_refused"] == 2 and stats["exchanges"] == 0


@pytest.mark.anyio
async def test_introspection_mint_and_rotation() -> None:
    async with oauth_server() as auth:
        opaque = await auth.opaque({"sub": "alice", "scope": "read", "aud": UP_AUD})
        active = await auth.introspect(opaque)
        assert active["active"] is True and (active["sub"], active["scope"], active["aud"]) == ("alice", "read", UP_AUD)
        assert (await auth.introspect("never-issued")) == {"active": False}
        assert (await auth.introspect(await auth.opaque({"exp": int(time.time()) - 1}))) == {"active": False}
        async with httpx2.AsyncClient(timeout=10) as http:
            unauthenticated = await http.post(auth.introspection_url, data={"token": opaque})
        assert unauthenticated.status_code == 401

        minted = await auth.mint({"sub": "bob", "iss": "http://evil.test", "nbf": int(time.time()) + 600}, kid="odd")
        header, claims = unverified(minted)
        assert (header["kid"], claims["iss"], claims["sub"]) == ("odd", "http://evil.test", "bob")
        bare = await auth.mint({"sub": "carol", "exp": None}, defaults=True)
        assert "exp" not in unverified(bare)[1] and "iss" in unverified(bare)[1]

        first = await auth.mint({"sub": "alice"})
        old_kid = unverified(first)[0]["kid"]
        jwks_before = (await auth.stats())["jwks"]
        new_kid = await auth.rotate()
        second = await auth.mint({"sub": "alice"})
        assert new_kid != old_kid and unverified(second)[0]["kid"] == new_kid
        assert (await verified_claims(auth, first))["sub"] == (await verified_claims(auth, second))["sub"] == "alice"
        assert (await auth.stats())["jwks"] == jwks_before + 2
        assert (await auth.introspect(first))["active"] is True
        await auth.rotate(keep_old=False)
        assert (await auth.introspect(first))["active"] is False

        await auth.fail(jwks=503)
        async with httpx2.AsyncClient(timeout=10) as http:
            assert (await http.get(auth.jwks_url)).status_code == 503
            await auth.fail(jwks=None)
            assert (await http.get(auth.jwks_url)).status_code == 200


async def whoami(url: str, token: str | None = None, headers: dict[str, str] | None = None,
                 mode: str = "legacy") -> dict[str, Any]:
    all_headers = {**(headers or {}), **({"Authorization": f"Bearer {token}"} if token else {})}
    async with httpx2.AsyncClient(headers=all_headers, timeout=httpx2.Timeout(10)) as http, \
            Client(streamable_http_client(url, http_client=http), mode=mode, cache=None) as client:
        result = await client.call_tool("whoami", {})
        assert isinstance(result.structured_content, dict)
        return dict(result.structured_content)


async def status_of(url: str, headers: dict[str, str]) -> httpx2.Response:
    """A bare initialize POST: what the upstream answers a credential before any MCP happens."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                       "clientInfo": {"name": "probe", "version": "0"}}}
    async with httpx2.AsyncClient(timeout=10) as http:
        return await http.post(url, json=body, headers={"Accept": "application/json, text/event-stream", **headers})


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_protected_upstream_accepts_exchanged_tokens_and_rejects_the_rest(tmp_path: Path, mode: str) -> None:
    seen = tmp_path / "seen.txt"
    async with oauth_server(gateway_audience=GATEWAY_AUD) as auth, \
            protected_upstream(auth=auth, seen=seen) as up:
        caller = await auth.mint({"sub": "alice", "aud": GATEWAY_AUD, "scope": "read", "client_id": "agent"})
        exchanged = (await auth.exchange(caller, resource=up.resource)).json()["access_token"]
        who = await whoami(up.url, exchanged, mode=mode)
        assert who == {"sub": "alice", "client_id": GATEWAY_CLIENT[0], "aud": up.resource, "scope": "read",
                       "act": {"sub": GATEWAY_CLIENT[0]}, "iss": auth.issuer, "mode": "oauth"}
        assert set(up.seen_tokens()) == {exchanged}
        assert caller not in up.seen_tokens()

        now = int(time.time())
        good = {"iss": auth.issuer, "sub": "alice", "aud": up.resource, "exp": now + 60}
        public = await auth.public_key()
        bad = {  # each with the reason it must be refused for
            "no token": (None, "bearer token required"),
            "the caller's own token (gateway audience)": (caller, "audience"),
            "wrong aud": (await auth.mint({"sub": "alice", "aud": UP_AUD}), "audience"),
            "wrong iss": (await auth.mint({**good, "iss": auth.base}), "issuer"),
            "expired": (await auth.mint({**good, "exp": now - 5}), "expired"),
            "not yet valid": (await auth.mint({**good, "nbf": now + 300}), "not yet valid"),
            "alg none": (alg_none_token(good), "not verifiable"),
            "HS256 keyed with the public key": (key_confusion_token(good, public), "not verifiable"),
            "tampered signature": (tampered_signature(await auth.mint(good)), "not verifiable"),
            "tampered claims": (tampered_claims(await auth.mint({**good, "aud": UP_AUD}), aud=up.resource),
                                "not verifiable"),
            "unknown kid": (foreign_key_token(good), "not verifiable"),
            "known kid, foreign key": (foreign_key_token(good, kid=str(public.kid)), "not verifiable"),
        }
        for name, (token, reason) in bad.items():
            response = await status_of(up.url, {"Authorization": f"Bearer {token}"} if token else {})
            assert response.status_code == 401, (name, response.status_code)
            assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token"'), name
            assert reason in response.json()["error_description"], (name, response.json())
        ok = await status_of(up.url, {"Authorization": f"Bearer {await auth.mint(good)}"})
        assert ok.status_code == 200, ok.text


@pytest.mark.anyio
async def test_protected_upstream_sessions_are_bound_to_their_principal() -> None:
    async with oauth_server() as auth:
        async with protected_upstream(auth=auth) as up:
            alice = await auth.mint({"sub": "alice", "aud": up.resource, "client_id": "gw"})
            bob = await auth.mint({"sub": "bob", "aud": up.resource, "client_id": "gw"})
            async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {alice}"}, timeout=10) as http, \
                    Client(streamable_http_client(up.url, http_client=http), mode="legacy", cache=None) as client:
                assert (await client.call_tool("whoami", {})).structured_content["sub"] == "alice"
                http.headers["Authorization"] = f"Bearer {bob}"
                with pytest.raises(MCPError, match="Session not found"):
                    await client.call_tool("whoami", {})
        async with protected_upstream(auth=auth, stateless=True) as up:
            alice = await auth.mint({"sub": "alice", "aud": up.resource, "client_id": "gw"})
            bob = await auth.mint({"sub": "bob", "aud": up.resource, "client_id": "gw"})
            async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {alice}"}, timeout=10) as http, \
                    Client(streamable_http_client(up.url, http_client=http), mode="legacy", cache=None) as client:
                assert (await client.call_tool("whoami", {})).structured_content["sub"] == "alice"
                http.headers["Authorization"] = f"Bearer {bob}"
                assert (await client.call_tool("whoami", {})).structured_content["sub"] == "bob"


@pytest.mark.anyio
async def test_protected_upstream_static_credentials(tmp_path: Path) -> None:
    seen = tmp_path / "seen.txt"
    async with protected_upstream(static_bearer="s3cret-token", seen=seen) as up:
        assert (await whoami(up.url, "s3cret-token"))["mode"] == "static-bearer"
        assert (await status_of(up.url, {"Authorization": "Bearer other"})).status_code == 401
        assert (await status_of(up.url, {})).status_code == 401
        assert up.seen()[:2] == ["authorization: Bearer s3cret-token"] * 2
        assert up.seen()[-1] == "authorization: Bearer other"
    seen2 = tmp_path / "seen2.txt"
    async with protected_upstream(static_header=("X-Api-Key", "k-123"), seen=seen2) as up:
        assert (await whoami(up.url, headers={"X-Api-Key": "k-123"}))["mode"] == "static-header"
        assert (await status_of(up.url, {"X-Api-Key": "k-999"})).status_code == 401
        assert (await status_of(up.url, {"Authorization": "Bearer k-123"})).status_code == 401
        assert "x-api-key: k-999" in up.seen() and "authorization: Bearer k-123" in up.seen()
