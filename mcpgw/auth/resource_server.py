"""The HTTP fronts as an OAuth 2.1 resource server (MCP authorization spec, RFC 6750/8707/9728).

An ASGI middleware in front of every MCP endpoint: no valid token, no MCP. It answers refusals
itself — 401 with `WWW-Authenticate: Bearer resource_metadata=...` so a client can discover
where to get a token, 403 `insufficient_scope` naming the scopes for step-up — and on success
hands the `Principal` to the pipeline through `current_principal`. It also tells the SDK who
the caller is (`scope["user"]`), which binds a stateful MCP session to the principal that
opened it, so a stolen session id is useless with another token.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx2
from mcp.server.auth.middleware.auth_context import auth_context_var
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from starlette.authentication import AuthCredentials
from starlette.types import ASGIApp, Receive, Scope, Send

from mcpgw.auth.context import current_principal
from mcpgw.auth.verify import AuthError, TokenVerifier
from mcpgw.config.auth import AuthSettings
from mcpgw.gateway import Gateway

log = logging.getLogger("mcpgw.auth")

PUBLIC_PATHS = ("/healthz", "/readyz")
PRM_PATH = "/.well-known/oauth-protected-resource"


def metadata_url(audience: str) -> str:
    """RFC 9728 §3.1: the well-known segment goes between the host and the resource's path."""
    parts = urlsplit(audience)
    return f"{parts.scheme}://{parts.netloc}{PRM_PATH}{parts.path.rstrip('/')}"


def protected_resource_metadata(settings: AuthSettings, name: str) -> dict[str, Any]:
    assert settings.issuer and settings.audience
    return {
        "resource": settings.audience,
        "authorization_servers": list(settings.authorization_servers or (settings.issuer,)),
        "scopes_supported": list(settings.required_scopes),
        "bearer_methods_supported": ["header"],
        "resource_name": name,
    }


class Authenticator:
    """The verifier for the running `[auth]`, rebuilt when a reload changes it.

    A reload may tighten or change `[auth]` but never switch it off under a running server: a
    gateway started with auth (perhaps bound to a public address because of it) keeps
    enforcing the last good settings and says so.
    """

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self._settings: AuthSettings | None = None
        self._verifier: TokenVerifier | None = None
        self._http: httpx2.AsyncClient | None = None
        self._refused: AuthSettings | None = None
        self.required = gateway.config.auth.enabled

    def current(self) -> TokenVerifier | None:
        settings = self._gateway.config.auth
        if settings is self._settings:
            return self._verifier
        if not settings.enabled and self.required:
            if self._refused is not settings:
                self._refused = settings
                log.error("auth: the reloaded config has no [auth] issuer; keeping the previous [auth] settings "
                          "(turning authentication off needs a restart)")
            return self._verifier
        if self._http is None:
            self._http = httpx2.AsyncClient(timeout=httpx2.Timeout(10.0), follow_redirects=False)
        self._settings = settings
        self._verifier = TokenVerifier(settings, self._http) if settings.enabled else None
        return self._verifier

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()


class RequireToken:
    """ASGI middleware: every path but health, readiness and the metadata needs a valid token."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator, name: str) -> None:
        self.app = app
        self.authenticator = authenticator
        self.name = name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        verifier = self.authenticator.current()
        path: str = scope["path"]
        if verifier is None or path in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        settings = verifier.settings
        if path == PRM_PATH or path.startswith(PRM_PATH + "/"):
            await _json(send, 200, protected_resource_metadata(settings, self.name),
                        extra=[(b"cache-control", b"public, max-age=300")])
            return
        try:
            principal = await verifier.verify(_bearer(scope))
            missing = [s for s in settings.required_scopes if s not in principal.scopes]
            if missing:
                raise AuthError(403, "insufficient_scope", f"this gateway requires the scope(s) {' '.join(missing)}",
                                scope=" ".join(settings.required_scopes))
        except AuthError as exc:
            await self._refuse(send, exc, settings)
            return
        access = AccessToken(
            token="", client_id=principal.client_id or principal.subject, scopes=list(principal.scopes),
            expires_at=principal.expires_at, resource=verifier.audience, subject=principal.subject,
            claims={"iss": principal.issuer},
        )
        user = AuthenticatedUser(access)
        scope["user"], scope["auth"] = user, AuthCredentials(list(principal.scopes))
        token_user, token_principal = auth_context_var.set(user), current_principal.set(principal)
        try:
            await self.app(scope, receive, send)
        finally:
            current_principal.reset(token_principal)
            auth_context_var.reset(token_user)

    async def _refuse(self, send: Send, exc: AuthError, settings: AuthSettings) -> None:
        assert settings.audience
        params = [f'resource_metadata="{metadata_url(settings.audience)}"']
        if exc.error != "missing_token":
            params.insert(0, f'error="{exc.error}", error_description="{_quoted(exc.description)}"')
        wanted = exc.scope or " ".join(settings.required_scopes)
        if wanted:
            params.append(f'scope="{wanted}"')
        log.info("auth: refused %s (%s: %s)", exc.status, exc.error, exc.description)
        body = {"error": "invalid_token" if exc.error == "missing_token" else exc.error,
                "error_description": exc.description}
        status = exc.status
        headers = [(b"www-authenticate", ("Bearer " + ", ".join(params)).encode())] if status in (401, 403) else []
        await _json(send, status, body, extra=headers)


def _bearer(scope: Scope) -> str:
    values: list[bytes] = [v for k, v in scope["headers"] if k == b"authorization"]
    if not values:
        raise AuthError(401, "missing_token", "this gateway requires an OAuth access token "
                        "(Authorization: Bearer <token>)")
    if len(values) > 1:
        raise AuthError(401, "invalid_request", "more than one Authorization header")
    scheme, _, token = values[0].decode("latin-1").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise AuthError(401, "invalid_request", "malformed Authorization header; expected 'Bearer <token>'")
    return token


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', "'")


async def _json(send: Send, status: int, body: dict[str, Any], extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
