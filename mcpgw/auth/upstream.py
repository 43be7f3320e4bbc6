"""Credentials the gateway presents to an upstream: its own, never the caller's.

Each `[servers.NAME.auth]` becomes an `httpx2.Auth` on the HTTP client of that upstream's
connection, so the credential is added to every request the SDK transport makes (POSTs, the
GET stream, SSE) and nowhere else. Secrets live in `Secret` strings that print as `***`, so an
exception or log line that mentions one by mistake shows nothing.

Tokens from an authorization server (client credentials, RFC 8693 exchange) are cached until
shortly before they expire; a 401 from the upstream drops the cached token and retries once.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import anyio
import httpx2

from mcpgw.auth.assertion import ASSERTION_TYPE, client_assertion, load_private_key
from mcpgw.auth.discovery import DiscoveryError, discover
from mcpgw.config.auth import (
    ApiKeyAuth,
    BasicAuth,
    BearerAuth,
    ClientCredentialsAuth,
    HeaderAuth,
    TokenExchangeAuth,
    UpstreamAuth,
)
from mcpgw.pipeline.errors import UpstreamCredentialError
from mcpgw.pipeline.step import Principal, Secret

log = logging.getLogger("mcpgw.auth")

EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


@dataclass(frozen=True)
class _Token:
    value: Secret
    renew_at: float


class TokenEndpoint:
    """One upstream's client at its authorization server, with a token cache.

    The cache key of an exchanged token is (digest of the caller's token, scopes): a caller's
    new token gets a new exchange, and one caller's token is never handed to another caller.
    """

    def __init__(self, upstream: str, config: ClientCredentialsAuth | TokenExchangeAuth, upstream_url: str,
                 http: httpx2.AsyncClient) -> None:
        self.upstream = upstream
        self.config = config
        self.upstream_url = upstream_url
        self.audience = config.audience or upstream_url
        self.resource = config.resource or upstream_url
        self._token_url = config.token_url
        self._issuer: str | None = None
        self._discovery_lock = anyio.Lock()
        self._signing: tuple[Any, str] | None = None
        if config.client_auth == "private_key_jwt" and config.private_key:
            key, alg = load_private_key(config.private_key)
            self._signing = (key, config.signing_alg or alg)
        self._http = http
        self._cache: dict[tuple[bytes, ...], _Token] = {}
        self._locks: dict[tuple[bytes, ...], anyio.Lock] = {}
        self.requests = 0

    async def own_token(self) -> Secret:
        """A client-credentials token: the gateway acting as itself."""
        return await self._cached((b"self",), lambda: {"grant_type": "client_credentials"})

    async def exchanged_token(self, principal: Principal) -> Secret:
        """An RFC 8693 token for this upstream, on behalf of `principal`."""
        if principal.token is None:
            raise UpstreamCredentialError(
                f"upstream {self.upstream!r} acts on behalf of the caller (token_exchange), and caller "
                f"{principal.subject!r} has no access token to exchange (a stdio or unauthenticated client)"
            )
        subject_token = principal.token
        key = (hashlib.sha256(subject_token.reveal().encode()).digest(),)
        return await self._cached(key, lambda: {
            "grant_type": EXCHANGE_GRANT,
            "subject_token": subject_token.reveal(),
            "subject_token_type": ACCESS_TOKEN_TYPE,
            "requested_token_type": ACCESS_TOKEN_TYPE,
        }, on_behalf_of=principal.subject)

    def forget(self, value: Secret) -> None:
        """The upstream refused this token: do not hand it out again."""
        for key, token in list(self._cache.items()):
            if token.value.reveal() == value.reveal():
                del self._cache[key]

    async def _cached(self, key: tuple[bytes, ...], form: Callable[[], dict[str, str]],
                      on_behalf_of: str | None = None) -> Secret:
        token = self._cache.get(key)
        if token is not None and token.renew_at > time.monotonic():
            return token.value
        lock = self._locks.setdefault(key, anyio.Lock())
        async with lock:
            token = self._cache.get(key)
            if token is not None and token.renew_at > time.monotonic():
                return token.value
            token = await self._request(form(), on_behalf_of)
            if len(self._cache) > 10_000:
                self._cache.clear()
                self._locks = {key: lock}
            self._cache[key] = token
            return token.value

    async def token_url(self) -> str:
        """The configured token endpoint, or the one the upstream's metadata leads to (found once)."""
        if self._token_url is not None:
            return self._token_url
        async with self._discovery_lock:
            if self._token_url is None:
                try:
                    found = await discover(self._http, self.upstream_url)
                except DiscoveryError as exc:
                    raise UpstreamCredentialError(f"upstream {self.upstream!r}: cannot find its token endpoint: "
                                                  f"{exc}") from None
                log.info("auth: upstream %s: token endpoint %s (issuer %s), found by discovery", self.upstream,
                         found.token_endpoint, found.issuer)
                if self.config.resource is None and found.resource:
                    self.resource = found.resource
                self._issuer = found.issuer
                self._token_url = found.token_endpoint
            return self._token_url

    async def _request(self, form: dict[str, str], on_behalf_of: str | None) -> _Token:
        config = self.config
        token_url = await self.token_url()
        form = {**form, "audience": self.audience, "resource": self.resource}
        if config.scopes:
            form["scope"] = " ".join(config.scopes)
        headers = {"Accept": "application/json"}
        if self._signing is not None:
            key, alg = self._signing
            audience = config.assertion_audience or self._issuer or token_url
            form |= {"client_id": config.client_id, "client_assertion_type": ASSERTION_TYPE,
                     "client_assertion": client_assertion(key, alg, config.client_id, audience, config.key_id)}
        elif config.client_auth == "client_secret_basic":
            # RFC 6749 §2.3.1: id and secret are form-encoded before they are joined and base64'd.
            pair = f"{quote(config.client_id, safe='')}:{quote(config.client_secret or '', safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form |= {"client_id": config.client_id, "client_secret": config.client_secret or ""}
        what = f"token exchange for {on_behalf_of!r}" if on_behalf_of else "client-credentials token"
        self.requests += 1
        try:
            response = await self._http.post(token_url, data=form, headers=headers)
        except httpx2.HTTPError as exc:
            raise UpstreamCredentialError(
                f"upstream {self.upstream!r}: the {what} failed: cannot reach {token_url} "
                f"({type(exc).__name__}); the call was not forwarded"
            ) from None
        body = _json_object(response)
        if response.status_code != 200 or not isinstance(body.get("access_token"), str):
            reason = body.get("error") or f"HTTP {response.status_code}"
            detail = body.get("error_description")
            detail_text = f": {str(detail)[:200]}" if isinstance(detail, str) and detail else ""
            log.warning("auth: %s for upstream %s refused by %s (%s%s)", what, self.upstream, token_url,
                        reason, detail_text)
            raise UpstreamCredentialError(
                f"upstream {self.upstream!r}: the {what} was refused by the authorization server "
                f"({reason}{detail_text}); the call was not forwarded"
            )
        token_type = str(body.get("token_type", "Bearer"))
        if token_type.lower() not in ("bearer", "n_a"):
            raise UpstreamCredentialError(f"upstream {self.upstream!r}: the authorization server issued a "
                                          f"{token_type!r} token; only Bearer tokens are supported")
        expires_in = body.get("expires_in")
        lifetime = float(expires_in) if isinstance(expires_in, int | float) and expires_in > 0 else 300.0
        renew_at = time.monotonic() + max(lifetime - config.refresh_margin, lifetime / 2)
        return _Token(Secret(body["access_token"]), renew_at)


def _json_object(response: httpx2.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


class StaticCredential(httpx2.Auth):
    """bearer / header / api_key / basic: one secret from the config, on every request."""

    def __init__(self, config: BearerAuth | HeaderAuth | ApiKeyAuth | BasicAuth) -> None:
        self._config = config

    async def async_auth_flow(self, request: httpx2.Request) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        config = self._config
        if isinstance(config, BearerAuth):
            request.headers["Authorization"] = f"Bearer {config.token}"
        elif isinstance(config, HeaderAuth) or (isinstance(config, ApiKeyAuth) and config.in_ == "header"):
            request.headers[config.name] = config.value
        elif isinstance(config, ApiKeyAuth):
            request.url = request.url.copy_merge_params({config.name: config.value})
        else:
            pair = base64.b64encode(f"{config.username}:{config.password}".encode()).decode()
            request.headers["Authorization"] = f"Basic {pair}"
        yield request


class TokenCredential(httpx2.Auth):
    """A token from `fetch()` as a Bearer header; on 401, forget it and fetch a fresh one once."""

    def __init__(self, endpoint: TokenEndpoint, fetch: Callable[[], Any]) -> None:
        self._endpoint = endpoint
        self._fetch = fetch

    async def async_auth_flow(self, request: httpx2.Request) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        token: Secret = await self._fetch()
        request.headers["Authorization"] = f"Bearer {token.reveal()}"
        response = yield request
        if response.status_code == 401:
            self._endpoint.forget(token)
            token = await self._fetch()
            request.headers["Authorization"] = f"Bearer {token.reveal()}"
            yield request


def connection_auth(config: UpstreamAuth | None, endpoint: TokenEndpoint | None) -> httpx2.Auth | None:
    """The credential of the upstream's own (shared) connection."""
    if config is None:
        return None
    if isinstance(config, ClientCredentialsAuth | TokenExchangeAuth):
        assert endpoint is not None
        return TokenCredential(endpoint, endpoint.own_token)
    return StaticCredential(config)


class CallerHolder:
    """The principal a delegated session currently acts for; calls refresh it, so a caller's
    renewed token is what the next exchange uses."""

    def __init__(self, principal: Principal) -> None:
        self.principal = principal


def delegated_auth(endpoint: TokenEndpoint, holder: CallerHolder) -> httpx2.Auth:
    async def fetch() -> Secret:
        return await endpoint.exchanged_token(holder.principal)

    return TokenCredential(endpoint, fetch)
