"""A real OAuth 2.1 authorization server on 127.0.0.1, for the gateway's auth tests.

Run: `python oauth_server.py [--issuer-path /as] [--client ID:SECRET[:SCOPE,...]]... [--clients FILE]
[--gateway-audience AUD]... [--refuse-subject SUB]... [--refuse-audience AUD]... [--ttl SECONDS]`.
It binds a free port and prints `PORT <n>` on stdout. The issuer is `http://127.0.0.1:<n><issuer-path>`:
an issuer with a path, so strict issuer matching is exercised (a path-less issuer gains a trailing
slash in some clients).

What it serves (all under the issuer unless noted):
- RFC 8414 metadata at `/.well-known/oauth-authorization-server<issuer-path>` (and OpenID discovery at
  `/.well-known/openid-configuration<issuer-path>` and `<issuer>/.well-known/openid-configuration`).
- `<issuer>/jwks`: the published RS256 keys.
- `<issuer>/token`: `client_credentials` and RFC 8693 token exchange; clients authenticate with
  `client_secret_basic` or `client_secret_post`; RFC 8707 `resource` and `audience` become `aud`.
- `<issuer>/introspect`: RFC 7662, client-authenticated, for JWTs it issued and for opaque tokens.
- Test controls, under `/test/`: `mint` (sign any claims with the current key), `opaque` (remember
  claims behind a random opaque token), `rotate` (a new current key, optionally dropping the old one
  from the JWKS), `fail` (make an endpoint answer with an error status), `stats` (GET: counters so
  tests can assert how often the IdP was asked; DELETE: reset).

Tokens are JWT access tokens (RFC 9068, `typ: at+jwt`). A token exchange validates the subject token
(signature by this server, `iss`, `exp`/`nbf`, and `aud` containing one of `--gateway-audience`),
then issues a token for the requested audience with `sub` of the subject, `act: {sub: <client>}` and
the requested scopes narrowed to the subject's.

`--clients FILE` is JSON: `{"id": "secret"}` or `{"id": {"secret": "...", "scopes": ["a", "b"]}}`.
A client with scopes may only be granted those; one without is granted what it asks for.
"""

from __future__ import annotations

import argparse
import base64
import json
import secrets
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import anyio
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
GRANT_NAMES = {"client_credentials": "client_credentials", TOKEN_EXCHANGE: "token_exchange"}


class OAuthError(Exception):
    """An RFC 6749 §5.2 error response."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status

    def response(self) -> JSONResponse:
        headers = {"Cache-Control": "no-store"}
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="token"'
        return JSONResponse({"error": self.error, "error_description": self.description}, self.status,
                            headers=headers)


@dataclass
class ClientInfo:
    secret: str
    scopes: frozenset[str] | None = None


@dataclass
class Settings:
    issuer_path: str
    clients: dict[str, ClientInfo]
    gateway_audiences: list[str]
    refuse_subjects: set[str]
    refuse_audiences: set[str]
    ttl: int


@dataclass
class State:
    settings: Settings
    base: str = ""
    keys: list[RSAKey] = field(default_factory=list)  # published keys; the last one signs
    retired: list[RSAKey] = field(default_factory=list)  # no longer published, so no longer accepted
    opaque: dict[str, dict[str, Any]] = field(default_factory=dict)
    failing: dict[str, int] = field(default_factory=dict)
    stats: Counter[str] = field(default_factory=Counter)

    @property
    def issuer(self) -> str:
        return self.base + self.settings.issuer_path

    @property
    def current(self) -> RSAKey:
        return self.keys[-1]

    def new_key(self) -> RSAKey:
        kid = f"k{len(self.keys) + len(self.retired) + 1}-{secrets.token_hex(4)}"
        return RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"}, private=True)

    def sign(self, claims: dict[str, Any], header: dict[str, Any] | None = None) -> str:
        full = {"alg": "RS256", "kid": self.current.kid, "typ": "at+jwt", **(header or {})}
        if full["alg"] != "RS256":
            raise OAuthError("invalid_request", "header alg must be RS256: the server signs with its RSA key")
        return jwt.encode(full, claims, self.current)

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a token this server issued and still stands behind, else OAuthError."""
        if token in self.opaque:
            claims = self.opaque[token]
        else:
            try:
                decoded = jwt.decode(token, KeySet(list(self.keys)), algorithms=["RS256"])
            except (JoseError, ValueError) as exc:
                raise OAuthError("invalid_grant", f"token not verifiable: {type(exc).__name__}") from exc
            claims = decoded.claims
        now = time.time()
        if claims.get("iss") != self.issuer:
            raise OAuthError("invalid_grant", f"token issuer {claims.get('iss')!r} is not {self.issuer!r}")
        if "exp" not in claims or float(claims["exp"]) <= now:
            raise OAuthError("invalid_grant", "token expired")
        if "nbf" in claims and float(claims["nbf"]) > now:
            raise OAuthError("invalid_grant", "token not yet valid")
        return dict(claims)

    def standard_claims(self) -> dict[str, Any]:
        now = int(time.time())
        return {"iss": self.issuer, "iat": now, "exp": now + self.settings.ttl, "jti": uuid.uuid4().hex}


def audiences(values: list[str]) -> str | list[str] | None:
    unique = list(dict.fromkeys(values))
    if not unique:
        return None
    return unique[0] if len(unique) == 1 else unique


def aud_list(claims: dict[str, Any]) -> list[str]:
    aud = claims.get("aud")
    if aud is None:
        return []
    return [aud] if isinstance(aud, str) else list(aud)


def build_app(state: State) -> Starlette:
    settings = state.settings
    path = settings.issuer_path

    def failing(name: str) -> Response | None:
        status = state.failing.get(name)
        if status is None:
            return None
        return JSONResponse({"error": "temporarily_unavailable", "error_description": f"{name} made to fail"},
                            status)

    async def metadata(request: Request) -> Response:
        state.stats["metadata"] += 1
        if (bad := failing("metadata")) is not None:
            return bad
        issuer = state.issuer
        return JSONResponse({
            "issuer": issuer,
            "token_endpoint": f"{issuer}/token",
            "jwks_uri": f"{issuer}/jwks",
            "introspection_endpoint": f"{issuer}/introspect",
            "grant_types_supported": ["client_credentials", TOKEN_EXCHANGE],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "response_types_supported": [],
            "scopes_supported": sorted({s for c in settings.clients.values() for s in (c.scopes or ())}),
            "id_token_signing_alg_values_supported": ["RS256"],
            "subject_types_supported": ["public"],
        })

    async def jwks(request: Request) -> Response:
        state.stats["jwks"] += 1
        if (bad := failing("jwks")) is not None:
            return bad
        return JSONResponse({"keys": [key.as_dict(private=False) for key in state.keys]})

    async def authenticate_client(request: Request, form: dict[str, list[str]]) -> str:
        header = request.headers.get("authorization")
        body_id = form.get("client_id", [None])[0]
        body_secret = form.get("client_secret", [None])[0]
        if header is not None and header.lower().startswith("basic "):
            if body_secret is not None:
                raise OAuthError("invalid_request", "client authenticated by more than one method")
            try:
                raw = base64.b64decode(header[6:], validate=True).decode()
                client_id, _, secret = raw.partition(":")
            except (ValueError, UnicodeDecodeError) as exc:
                raise OAuthError("invalid_client", "malformed Basic credentials", 401) from exc
            client_id, secret = unquote(client_id), unquote(secret)  # RFC 6749 §2.3.1 form-encodes both
        elif body_id is not None and body_secret is not None:
            client_id, secret = body_id, body_secret
        else:
            raise OAuthError("invalid_client", "client authentication required", 401)
        known = settings.clients.get(client_id)
        if known is None or not secrets.compare_digest(known.secret, secret):
            raise OAuthError("invalid_client", "unknown client or wrong secret", 401)
        return client_id

    async def read_form(request: Request) -> dict[str, list[str]]:
        form = await request.form()
        out: dict[str, list[str]] = {}
        for key, value in form.multi_items():
            out.setdefault(key, []).append(str(value))
        return out

    def targets(form: dict[str, list[str]]) -> list[str]:
        return form.get("audience", []) + form.get("resource", [])

    def requested_scopes(form: dict[str, list[str]]) -> list[str] | None:
        raw = form.get("scope", [None])[0]
        return None if raw is None else raw.split()

    def client_credentials(client_id: str, form: dict[str, list[str]]) -> dict[str, Any]:
        allowed = settings.clients[client_id].scopes
        asked = requested_scopes(form)
        if asked is None:
            granted = sorted(allowed) if allowed is not None else []
        else:
            if allowed is not None and (extra := set(asked) - allowed):
                raise OAuthError("invalid_scope", f"client may not have scope(s): {' '.join(sorted(extra))}")
            granted = asked
        target = targets(form)
        if refused := set(target) & settings.refuse_audiences:
            raise OAuthError("invalid_target", f"audience refused: {' '.join(sorted(refused))}")
        claims: dict[str, Any] = {**state.standard_claims(), "sub": client_id, "client_id": client_id}
        if (aud := audiences(target)) is not None:
            claims["aud"] = aud
        if granted:
            claims["scope"] = " ".join(granted)
        return claims

    def token_exchange(client_id: str, form: dict[str, list[str]]) -> dict[str, Any]:
        subject_token = form.get("subject_token", [None])[0]
        subject_type = form.get("subject_token_type", [None])[0]
        if not subject_token or not subject_type:
            raise OAuthError("invalid_request", "subject_token and subject_token_type are required")
        if subject_type not in (ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE):
            raise OAuthError("invalid_request", f"unsupported subject_token_type {subject_type}")
        if form.get("actor_token"):
            raise OAuthError("invalid_request", "actor_token is not supported; the client is the actor")
        subject = state.verify(subject_token)
        if settings.gateway_audiences and not set(aud_list(subject)) & set(settings.gateway_audiences):
            raise OAuthError("invalid_grant", f"subject token audience {subject.get('aud')!r} is not the gateway's")
        sub = subject.get("sub")
        if not isinstance(sub, str):
            raise OAuthError("invalid_grant", "subject token has no sub")
        if sub in settings.refuse_subjects:
            state.stats["exchanges_refused"] += 1
            raise OAuthError("invalid_grant", f"exchange refused for subject {sub}")
        target = targets(form)
        if not target:
            raise OAuthError("invalid_target", "audience or resource is required")
        if refused := set(target) & settings.refuse_audiences:
            state.stats["exchanges_refused"] += 1
            raise OAuthError("invalid_target", f"audience refused: {' '.join(sorted(refused))}")
        held = str(subject.get("scope", "")).split()
        asked = requested_scopes(form)
        granted = held if asked is None else [s for s in asked if s in held]
        if asked and not granted:
            raise OAuthError("invalid_scope", "none of the requested scopes are held by the subject")
        act: dict[str, Any] = {"sub": client_id}
        if isinstance(subject.get("act"), dict):
            act["act"] = subject["act"]
        claims: dict[str, Any] = {**state.standard_claims(), "sub": sub, "client_id": client_id,
                                  "aud": audiences(target), "act": act}
        if granted:
            claims["scope"] = " ".join(granted)
        return claims

    async def token(request: Request) -> Response:
        state.stats["token_requests"] += 1
        if (bad := failing("token")) is not None:
            return bad
        try:
            form = await read_form(request)
            grant = form.get("grant_type", [""])[0]
            state.stats[f"token:{GRANT_NAMES.get(grant, 'unsupported')}"] += 1
            client_id = await authenticate_client(request, form)
            if grant == "client_credentials":
                claims = client_credentials(client_id, form)
                extra: dict[str, Any] = {}
            elif grant == TOKEN_EXCHANGE:
                claims = token_exchange(client_id, form)
                state.stats["exchanges"] += 1
                extra = {"issued_token_type": ACCESS_TOKEN_TYPE}
            else:
                raise OAuthError("unsupported_grant_type", f"grant_type {grant!r} is not supported")
        except OAuthError as exc:
            state.stats[f"error:{exc.error}"] += 1
            return exc.response()
        body = {"access_token": state.sign(claims), "token_type": "Bearer", "expires_in": settings.ttl, **extra}
        if "scope" in claims:
            body["scope"] = claims["scope"]
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    async def introspect(request: Request) -> Response:
        state.stats["introspections"] += 1
        if (bad := failing("introspect")) is not None:
            return bad
        try:
            form = await read_form(request)
            await authenticate_client(request, form)
            value = form.get("token", [None])[0]
            if not value:
                raise OAuthError("invalid_request", "token is required")
        except OAuthError as exc:
            return exc.response()
        try:
            claims = state.verify(value)
        except OAuthError:
            return JSONResponse({"active": False})
        return JSONResponse({"active": True, "token_type": "Bearer", **claims})

    async def mint(request: Request) -> Response:
        body = await request.json()
        claims = dict(body.get("claims", {}))
        if body.get("defaults", True):
            claims = {**state.standard_claims(), **claims}
        claims = {k: v for k, v in claims.items() if v is not None}  # None drops a default
        try:
            return JSONResponse({"token": state.sign(claims, body.get("header"))})
        except OAuthError as exc:
            return exc.response()

    async def opaque(request: Request) -> Response:
        body = await request.json()
        claims = {**state.standard_claims(), **body.get("claims", {})}
        claims = {k: v for k, v in claims.items() if v is not None}
        value = secrets.token_urlsafe(24)
        state.opaque[value] = claims
        return JSONResponse({"token": value})

    async def rotate(request: Request) -> Response:
        body = await request.json() if await request.body() else {}
        key = state.new_key()
        if not body.get("keep_old", True):
            state.retired.extend(state.keys)
            state.keys.clear()
        state.keys.append(key)
        return JSONResponse({"kid": key.kid, "published": [k.kid for k in state.keys]})

    async def fail(request: Request) -> Response:
        body: dict[str, int | None] = await request.json()
        for name, status in body.items():
            if status is None:
                state.failing.pop(name, None)
            else:
                state.failing[name] = int(status)
        return JSONResponse(state.failing)

    async def stats(request: Request) -> Response:
        if request.method == "DELETE":
            state.stats.clear()
        zero = dict.fromkeys(["metadata", "jwks", "token_requests", "token:client_credentials",
                              "token:token_exchange", "exchanges", "exchanges_refused", "introspections"], 0)
        return JSONResponse({**zero, **state.stats, "kid": state.current.kid})

    routes = [
        Route(f"/.well-known/oauth-authorization-server{path}", metadata),
        Route(f"/.well-known/openid-configuration{path}", metadata),
        Route(f"{path}/.well-known/openid-configuration", metadata),
        Route(f"{path}/jwks", jwks),
        Route(f"{path}/token", token, methods=["POST"]),
        Route(f"{path}/introspect", introspect, methods=["POST"]),
        Route("/test/mint", mint, methods=["POST"]),
        Route("/test/opaque", opaque, methods=["POST"]),
        Route("/test/rotate", rotate, methods=["POST"]),
        Route("/test/fail", fail, methods=["POST"]),
        Route("/test/stats", stats, methods=["GET", "DELETE"]),
    ]
    return Starlette(routes=routes)


def parse_client(spec: str) -> tuple[str, ClientInfo]:
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise SystemExit(f"--client {spec!r}: expected ID:SECRET or ID:SECRET:SCOPE,SCOPE")
    scopes = frozenset(s for s in parts[2].split(",") if s) if len(parts) == 3 else None
    return parts[0], ClientInfo(parts[1], scopes)


def load_clients(path: Path) -> dict[str, ClientInfo]:
    data = json.loads(path.read_text())
    out: dict[str, ClientInfo] = {}
    for client_id, value in data.items():
        if isinstance(value, str):
            out[client_id] = ClientInfo(value)
        else:
            scopes = value.get("scopes")
            out[client_id] = ClientInfo(value["secret"], None if scopes is None else frozenset(scopes))
    return out


async def serve(state: State) -> None:
    from _web import serve_on_free_port

    state.keys.append(state.new_key())
    def on_port(port: int) -> None:
        state.base = f"http://127.0.0.1:{port}"

    await serve_on_free_port(build_app(state), on_port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--issuer-path", default="/as", help="path of the issuer URL (no trailing slash)")
    parser.add_argument("--client", action="append", default=[], help="ID:SECRET or ID:SECRET:SCOPE,SCOPE")
    parser.add_argument("--clients", type=Path, help="JSON file of clients")
    parser.add_argument("--gateway-audience", action="append", default=[],
                        help="an audience a subject token must carry to be exchanged")
    parser.add_argument("--refuse-subject", action="append", default=[], help="refuse exchanges for this sub")
    parser.add_argument("--refuse-audience", action="append", default=[], help="refuse tokens for this audience")
    parser.add_argument("--ttl", type=int, default=300, help="lifetime of issued tokens in seconds")
    args = parser.parse_args()
    issuer_path = "/" + args.issuer_path.strip("/") if args.issuer_path.strip("/") else ""
    clients = load_clients(args.clients) if args.clients else {}
    clients.update(parse_client(spec) for spec in args.client)
    settings = Settings(issuer_path, clients, args.gateway_audience, set(args.refuse_subject),
                        set(args.refuse_audience), args.ttl)
    anyio.run(serve, State(settings))


if __name__ == "__main__":
    print("oauth server starting", file=sys.stderr, flush=True)
    main()
