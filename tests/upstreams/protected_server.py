"""A real MCP upstream over Streamable HTTP that demands credentials, for the gateway's outbound auth.

Run: `python protected_server.py (--issuer URL --jwks-uri URL [--audience URL] [--required-scope S]...
| --static-bearer TOKEN | --static-header NAME:VALUE) [--seen FILE] [--record-header NAME]... [--stateless]`.
It binds 127.0.0.1 on a free port, serves MCP at `/mcp` and prints `PORT <n>` on stdout.

Modes:
- OAuth (`--issuer`): a bearer JWT checked against the issuer's JWKS (RS256 only; the JWKS is fetched
  once and again only for an unknown `kid`), `iss`, `aud` containing this server's resource URL
  (`--audience`, default `http://127.0.0.1:<port>/mcp`), `exp` and `nbf`, and any `--required-scope`.
  Serves RFC 9728 metadata at `/.well-known/oauth-protected-resource/mcp`.
- `--static-bearer TOKEN`: only `Authorization: Bearer TOKEN` is accepted.
- `--static-header NAME:VALUE`: only that header with that value is accepted.
- none of these: no credential is required (still records what arrives).

Every credential header received (Authorization, the static header, any `--record-header`) is
appended to `--seen FILE` as `name: value`, one per line, before any check, so a test can prove
which tokens reached this server and which never did.

Tools: `whoami` returns the claims the accepted credential carried ({sub, client_id, aud, scope,
act, iss, mode}); `echo` returns its `text`.

Sessions: by default stateful, and, like an upstream built on the SDK's own auth, a session is
bound to the principal (client_id, iss, sub) that opened it: a request on that session with
another principal's token gets `404 Session not found`. `--stateless` serves each POST on its own
so every request may carry a different principal's token.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp.types as t
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from mcp import MCPError
from mcp.server import Server, ServerRequestContext
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from starlette.types import ASGIApp, Receive, Scope, Send

TOOLS: dict[str, dict[str, Any]] = {
    "whoami": {"type": "object"},
    "echo": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
}
PRM_PATH = "/.well-known/oauth-protected-resource/mcp"


class Rejected(Exception):
    def __init__(self, description: str, status: int = 401, error: str = "invalid_token") -> None:
        super().__init__(description)
        self.description = description
        self.status = status
        self.error = error


@dataclass
class Guard:
    """Who may call: checks the credential of every HTTP request before MCP sees it."""

    issuer: str | None
    jwks_uri: str | None
    audience: str | None
    required_scopes: list[str]
    static_bearer: str | None
    static_header: tuple[str, str] | None
    seen: Path | None
    recorded: set[str]
    base: str = ""
    keys: KeySet | None = None
    jwks_lock: anyio.Lock = field(default_factory=anyio.Lock)

    @property
    def mode(self) -> str:
        if self.issuer:
            return "oauth"
        if self.static_bearer is not None:
            return "static-bearer"
        if self.static_header is not None:
            return "static-header"
        return "open"

    @property
    def resource(self) -> str:
        return self.audience or f"{self.base}/mcp"

    def record(self, headers: dict[str, str]) -> None:
        if self.seen is None:
            return
        lines = [f"{name}: {headers[name]}\n" for name in sorted(self.recorded) if name in headers]
        if lines:
            with self.seen.open("a") as out:
                out.writelines(lines)

    async def fetch_keys(self, known: KeySet | None) -> KeySet:
        async with self.jwks_lock:
            if self.keys is not known and self.keys is not None:
                return self.keys  # another request refreshed them meanwhile
            assert self.jwks_uri is not None
            try:
                async with httpx2.AsyncClient(timeout=10) as http:
                    response = await http.get(self.jwks_uri)
                    response.raise_for_status()
                self.keys = KeySet.import_key_set(response.json())
            except (httpx2.HTTPError, ValueError, JoseError) as exc:
                raise Rejected(f"issuer keys unavailable: {type(exc).__name__}", 503, "temporarily_unavailable") \
                    from exc
            return self.keys

    async def verify_jwt(self, token: str) -> dict[str, Any]:
        keys = self.keys or await self.fetch_keys(None)
        kid = unverified_kid(token)
        if kid is not None and kid not in {key.kid for key in keys}:
            keys = await self.fetch_keys(keys)
        try:
            claims = dict(jwt.decode(token, keys, algorithms=["RS256"]).claims)
        except (JoseError, ValueError) as exc:
            raise Rejected(f"token not verifiable: {type(exc).__name__}") from exc
        now = time.time()
        if claims.get("iss") != self.issuer:
            raise Rejected(f"issuer {claims.get('iss')!r} is not {self.issuer!r}")
        aud = claims.get("aud")
        auds = [aud] if isinstance(aud, str) else list(aud or [])
        if self.resource not in auds:
            raise Rejected(f"audience {aud!r} does not include {self.resource!r}")
        if not isinstance(claims.get("exp"), int | float) or claims["exp"] <= now:
            raise Rejected("token expired")
        if isinstance(claims.get("nbf"), int | float) and claims["nbf"] > now:
            raise Rejected("token not yet valid")
        missing = [s for s in self.required_scopes if s not in str(claims.get("scope", "")).split()]
        if missing:
            raise Rejected(f"missing scope(s): {' '.join(missing)}", 403, "insufficient_scope")
        return claims

    async def check(self, headers: dict[str, str]) -> dict[str, Any]:
        authorization = headers.get("authorization", "")
        if self.mode == "open":
            return {}
        if self.mode == "static-header":
            assert self.static_header is not None
            name, value = self.static_header
            if headers.get(name) != value:
                raise Rejected(f"header {name} missing or wrong")
            return {"sub": "static", "client_id": "static"}
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Rejected("bearer token required")
        if self.mode == "static-bearer":
            if token != self.static_bearer:
                raise Rejected("wrong static bearer token")
            return {"sub": "static", "client_id": "static"}
        return await self.verify_jwt(token.strip())


def unverified_kid(token: str) -> str | None:
    """The `kid` a token claims, read before any check: only to know whether to refresh the JWKS."""
    segment = token.split(".")[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except ValueError:
        return None
    kid = header.get("kid") if isinstance(header, dict) else None
    return kid if isinstance(kid, str) else None


class GuardMiddleware:
    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/.well-known/"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        self.guard.record(headers)
        try:
            claims = await self.guard.check(headers)
        except Rejected as exc:
            print(f"rejected {scope['method']} {scope['path']}: {exc.description}", file=sys.stderr, flush=True)
            challenge = (f'Bearer error="{exc.error}", error_description="{exc.description}", '
                         f'resource_metadata="{self.guard.base}{PRM_PATH}"')
            body = json.dumps({"error": exc.error, "error_description": exc.description}).encode()
            await send({"type": "http.response.start", "status": exc.status,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"www-authenticate", challenge.encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        if claims:
            scope["user"] = AuthenticatedUser(AccessToken(
                token="", client_id=str(claims.get("client_id", "")), scopes=str(claims.get("scope", "")).split(),
                expires_at=claims.get("exp"), subject=claims.get("sub"), claims=claims))
        scope["credential_claims"] = {**claims, "mode": self.guard.mode}
        await self.app(scope, receive, send)


async def list_tools(ctx: ServerRequestContext[Any], params: Any) -> t.ListToolsResult:
    return t.ListToolsResult(tools=[t.Tool(name=n, input_schema=s) for n, s in TOOLS.items()])


async def call_tool(ctx: ServerRequestContext[Any], params: t.CallToolRequestParams) -> t.CallToolResult:
    args = params.arguments or {}
    if params.name == "echo":
        text = str(args.get("text", ""))
        return t.CallToolResult(content=[t.TextContent(type="text", text=text)], structured_content={"text": text})
    if params.name == "whoami":
        claims: dict[str, Any] = ctx.request.scope.get("credential_claims", {}) if ctx.request else {}
        info = {key: claims.get(key) for key in ("sub", "client_id", "aud", "scope", "act", "iss", "mode")}
        return t.CallToolResult(content=[t.TextContent(type="text", text=json.dumps(info))], structured_content=info)
    raise MCPError(t.INVALID_PARAMS, f"Unknown tool: {params.name}")


async def serve(guard: Guard, stateless: bool) -> None:
    from _web import serve_on_free_port
    from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    server: Server[Any] = Server("protected", version="1.0", on_list_tools=list_tools, on_call_tool=call_tool)
    manager = StreamableHTTPSessionManager(app=server, stateless=stateless)

    async def metadata(request: Request) -> JSONResponse:
        body: dict[str, Any] = {"resource": guard.resource, "bearer_methods_supported": ["header"]}
        if guard.issuer:
            body["authorization_servers"] = [guard.issuer]
        if guard.required_scopes:
            body["scopes_supported"] = guard.required_scopes
        return JSONResponse(body)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with manager.run():
            yield

    app = Starlette(routes=[Route("/mcp", StreamableHTTPASGIApp(manager)), Route(PRM_PATH, metadata)],
                    lifespan=lifespan)
    def on_port(port: int) -> None:
        guard.base = f"http://127.0.0.1:{port}"

    await serve_on_free_port(GuardMiddleware(app, guard), on_port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--issuer", help="accept JWTs from this issuer (needs --jwks-uri)")
    parser.add_argument("--jwks-uri", help="the issuer's JWKS")
    parser.add_argument("--audience", help="this server's resource URL (default http://127.0.0.1:<port>/mcp)")
    parser.add_argument("--required-scope", action="append", default=[])
    parser.add_argument("--static-bearer", help="accept only this bearer token")
    parser.add_argument("--static-header", help="accept only this NAME:VALUE header")
    parser.add_argument("--seen", type=Path, help="append every credential header received to this file")
    parser.add_argument("--record-header", action="append", default=[], help="another header to record")
    parser.add_argument("--stateless", action="store_true", help="no MCP sessions: every POST stands alone")
    args = parser.parse_args()
    modes = [m for m in (args.issuer, args.static_bearer, args.static_header) if m is not None]
    if len(modes) > 1:
        parser.error("choose one of --issuer, --static-bearer, --static-header")
    if args.issuer and not args.jwks_uri:
        parser.error("--issuer needs --jwks-uri")
    static_header = None
    if args.static_header is not None:
        name, sep, value = args.static_header.partition(":")
        if not sep or not name.strip():
            parser.error("--static-header must be NAME:VALUE")
        static_header = (name.strip().lower(), value.strip())
    recorded = {"authorization", *(h.lower() for h in args.record_header)}
    if static_header:
        recorded.add(static_header[0])
    guard = Guard(args.issuer, args.jwks_uri, args.audience, args.required_scope, args.static_bearer,
                  static_header, args.seen, recorded)
    anyio.run(serve, guard, args.stateless)


if __name__ == "__main__":
    print("protected server starting", file=sys.stderr, flush=True)
    main()
