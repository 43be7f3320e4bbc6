"""Auth test parts: a real OAuth authorization server, a real credential-checking MCP upstream, and
hand-made bad tokens.

`oauth_server(...)` runs tests/upstreams/oauth_server.py and yields an `AuthServer` handle;
`protected_upstream(...)` runs tests/upstreams/protected_server.py and yields a `ProtectedUpstream`.
Valid-but-wrong tokens (expired, wrong `iss`/`aud`, missing scope) come from the real AS through
`AuthServer.mint`; tokens no honest signer would make (alg `none`, HS256 keyed with the public key,
a broken signature, an unknown `kid`) are built here by hand, since joserfc refuses some of them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
from joserfc import jwt
from joserfc.jwk import RSAKey

from .conftest import PY, UPSTREAMS, Process, run_process

OAUTH_SERVER = UPSTREAMS / "oauth_server.py"
PROTECTED_SERVER = UPSTREAMS / "protected_server.py"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
# The client the gateway authenticates as, unless a test names its own.
GATEWAY_CLIENT = ("mcpgw", "mcpgw-secret")

ClientSpec = str | tuple[str, Sequence[str]]  # a secret, or (secret, the only scopes it may get)


@dataclass
class AuthServer:
    """A running authorization server: its URLs and its test controls."""

    base: str
    issuer: str
    process: Process

    @property
    def metadata_url(self) -> str:
        path = self.issuer.removeprefix(self.base)
        return f"{self.base}/.well-known/oauth-authorization-server{path}"

    @property
    def jwks_url(self) -> str:
        return f"{self.issuer}/jwks"

    @property
    def token_url(self) -> str:
        return f"{self.issuer}/token"

    @property
    def introspection_url(self) -> str:
        return f"{self.issuer}/introspect"

    async def _post_json(self, path: str, body: Any) -> Any:
        async with httpx2.AsyncClient(timeout=10) as http:
            response = await http.post(f"{self.base}{path}", json=body)
            response.raise_for_status()
            return response.json()

    async def mint(self, claims: Mapping[str, Any] | None = None, *, defaults: bool = True, **header: Any) -> str:
        """A JWT signed with the AS's current key. `defaults` fills `iss`, `iat`, `exp`, `jti` (a claim
        given as None removes that default); keyword arguments override header fields (not `alg`)."""
        body = {"claims": dict(claims or {}), "defaults": defaults, "header": header}
        token: str = (await self._post_json("/test/mint", body))["token"]
        return token

    async def opaque(self, claims: Mapping[str, Any] | None = None) -> str:
        """An opaque token the AS remembers (for introspection); same defaults as `mint`."""
        token: str = (await self._post_json("/test/opaque", {"claims": dict(claims or {})}))["token"]
        return token

    async def rotate(self, *, keep_old: bool = True) -> str:
        """Sign with a new key from now on; returns its kid. `keep_old=False` unpublishes the old keys."""
        kid: str = (await self._post_json("/test/rotate", {"keep_old": keep_old}))["kid"]
        return kid

    async def fail(self, **endpoints: int | None) -> None:
        """Make endpoints (`jwks`, `token`, `introspect`, `metadata`) answer with a status; None heals."""
        await self._post_json("/test/fail", endpoints)

    async def stats(self) -> dict[str, Any]:
        """Counters: metadata, jwks, token_requests, token:client_credentials, token:token_exchange,
        exchanges, exchanges_refused, introspections, error:<code>; and the current `kid`."""
        async with httpx2.AsyncClient(timeout=10) as http:
            response = await http.get(f"{self.base}/test/stats")
            response.raise_for_status()
            stats: dict[str, Any] = response.json()
            return stats

    async def reset_stats(self) -> None:
        async with httpx2.AsyncClient(timeout=10) as http:
            (await http.delete(f"{self.base}/test/stats")).raise_for_status()

    async def public_key(self, kid: str | None = None) -> RSAKey:
        """A published key (the current one by default), as the public world sees it."""
        async with httpx2.AsyncClient(timeout=10) as http:
            keys = (await http.get(self.jwks_url)).json()["keys"]
        chosen = keys[-1] if kid is None else next(k for k in keys if k["kid"] == kid)  # last one signs
        return RSAKey.import_key(chosen)

    async def token_request(self, form: Mapping[str, str | Sequence[str]], *,
                            client: tuple[str, str] = GATEWAY_CLIENT, auth: str = "basic") -> httpx2.Response:
        """POST to the token endpoint as `client` (`auth`: basic, post or none); the raw response."""
        data = {k: (list(v) if not isinstance(v, str) else v) for k, v in form.items()}
        async with httpx2.AsyncClient(timeout=10) as http:
            if auth == "basic":
                return await http.post(self.token_url, data=data, auth=httpx2.BasicAuth(*client))
            if auth == "post":
                return await http.post(self.token_url, data={**data, "client_id": client[0],
                                                             "client_secret": client[1]})
            return await http.post(self.token_url, data=data)

    async def exchange(self, subject_token: str, *, audience: str | None = None, resource: str | None = None,
                       scope: str | None = None, client: tuple[str, str] = GATEWAY_CLIENT) -> httpx2.Response:
        """An RFC 8693 token exchange on behalf of `subject_token`'s subject; the raw response."""
        form = {"grant_type": TOKEN_EXCHANGE, "subject_token": subject_token, "subject_token_type": ACCESS_TOKEN_TYPE}
        form |= {k: v for k, v in (("audience", audience), ("resource", resource), ("scope", scope)) if v}
        return await self.token_request(form, client=client)

    async def introspect(self, token: str, *, client: tuple[str, str] = GATEWAY_CLIENT) -> dict[str, Any]:
        async with httpx2.AsyncClient(timeout=10) as http:
            response = await http.post(self.introspection_url, data={"token": token},
                                       auth=httpx2.BasicAuth(*client))
            response.raise_for_status()
            body: dict[str, Any] = response.json()
            return body


@asynccontextmanager
async def oauth_server(
    *,
    clients: Mapping[str, ClientSpec] | None = None,
    gateway_audience: str | Sequence[str] = (),
    refuse_subjects: Sequence[str] = (),
    refuse_audiences: Sequence[str] = (),
    ttl: int = 300,
    issuer_path: str = "/as",
) -> AsyncIterator[AuthServer]:
    """A real authorization server on 127.0.0.1. `clients` maps id to secret (default: GATEWAY_CLIENT);
    subject tokens are exchanged only if their `aud` holds one of `gateway_audience` (any, if empty)."""
    argv = [PY, str(OAUTH_SERVER), "--issuer-path", issuer_path, "--ttl", str(ttl)]
    for client_id, spec in (clients if clients is not None else dict([GATEWAY_CLIENT])).items():
        argv += ["--client", f"{client_id}:{spec}" if isinstance(spec, str) else f"{client_id}:{spec[0]}:"
                 + ",".join(spec[1])]
    for audience in [gateway_audience] if isinstance(gateway_audience, str) else gateway_audience:
        argv += ["--gateway-audience", audience]
    for subject in refuse_subjects:
        argv += ["--refuse-subject", subject]
    for audience in refuse_audiences:
        argv += ["--refuse-audience", audience]
    async with run_process(argv, read="stdout") as proc:
        port = (await proc.wait_for(r"PORT (\d+)")).group(1)
        base = f"http://127.0.0.1:{port}"
        yield AuthServer(base, base + ("/" + issuer_path.strip("/") if issuer_path.strip("/") else ""), proc)


@dataclass
class ProtectedUpstream:
    """A running credential-checking MCP upstream."""

    base: str
    resource: str  # the audience it accepts
    seen_file: Path | None
    process: Process

    @property
    def url(self) -> str:
        return f"{self.base}/mcp"

    def seen(self) -> list[str]:
        """Every credential header it received so far, as `name: value`."""
        if self.seen_file is None or not self.seen_file.exists():
            return []
        return self.seen_file.read_text().splitlines()

    def seen_tokens(self) -> list[str]:
        """The bearer tokens it received so far."""
        prefix = "authorization: bearer "
        return [line[len(prefix):] for line in self.seen() if line.lower().startswith(prefix)]


@asynccontextmanager
async def protected_upstream(
    *,
    auth: AuthServer | None = None,
    audience: str | None = None,
    static_bearer: str | None = None,
    static_header: tuple[str, str] | None = None,
    seen: Path | None = None,
    required_scopes: Sequence[str] = (),
    record_headers: Sequence[str] = (),
    stateless: bool = False,
) -> AsyncIterator[ProtectedUpstream]:
    """An MCP upstream on 127.0.0.1 that accepts only JWTs from `auth` for its own URL (or `audience`),
    or only `static_bearer`, or only `static_header`; records credential headers into `seen`."""
    argv = [PY, str(PROTECTED_SERVER)]
    if auth is not None:
        argv += ["--issuer", auth.issuer, "--jwks-uri", auth.jwks_url]
    if audience is not None:
        argv += ["--audience", audience]
    if static_bearer is not None:
        argv += ["--static-bearer", static_bearer]
    if static_header is not None:
        argv += ["--static-header", f"{static_header[0]}:{static_header[1]}"]
    if seen is not None:
        argv += ["--seen", str(seen)]
    for scope in required_scopes:
        argv += ["--required-scope", scope]
    for header in record_headers:
        argv += ["--record-header", header]
    if stateless:
        argv.append("--stateless")
    async with run_process(argv, read="stdout") as proc:
        port = (await proc.wait_for(r"PORT (\d+)")).group(1)
        base = f"http://127.0.0.1:{port}"
        yield ProtectedUpstream(base, audience or f"{base}/mcp", seen, proc)


# ---- hand-made bad tokens ----------------------------------------------------------------------

def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(value: Any) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def b64url_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, claims) of a JWT, read without any check."""
    header, payload = token.split(".")[:2]
    return json.loads(b64url_decode(header)), json.loads(b64url_decode(payload))


def alg_none_token(claims: Mapping[str, Any], **header: Any) -> str:
    """An unsigned JWT (`alg: none`, empty signature)."""
    return f"{b64url_json({'alg': 'none', 'typ': 'JWT', **header})}.{b64url_json(dict(claims))}."


def hs256_token(claims: Mapping[str, Any], secret: bytes, **header: Any) -> str:
    """A JWT MAC'd with HS256 under `secret`."""
    signing_input = f"{b64url_json({'alg': 'HS256', 'typ': 'JWT', **header})}.{b64url_json(dict(claims))}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def key_confusion_token(claims: Mapping[str, Any], public_key: RSAKey, **header: Any) -> str:
    """The RS256->HS256 confusion attack: HS256 keyed with the AS's public key in PEM form, the secret
    a verifier that trusts the header's `alg` would use. Carries the real key's `kid`."""
    pem = public_key.as_pem(private=False)
    return hs256_token(claims, pem, **{"kid": public_key.kid, **header})


def tampered_signature(token: str) -> str:
    """The same token with its signature's first byte flipped."""
    head, payload, signature = token.split(".")
    raw = bytearray(b64url_decode(signature))
    raw[0] ^= 0x01
    return f"{head}.{payload}.{b64url(bytes(raw))}"


def tampered_claims(token: str, **changes: Any) -> str:
    """The same header and signature over changed claims (e.g. a widened `scope`)."""
    head, payload, signature = token.split(".")
    claims = {**json.loads(b64url_decode(payload)), **changes}
    return f"{head}.{b64url_json(claims)}.{signature}"


def foreign_key_token(claims: Mapping[str, Any], kid: str = "not-published", **header: Any) -> str:
    """A well-formed RS256 JWT signed by a key the AS never published. With the default `kid` it
    names an unknown key; with the AS's real `kid` it is a wrong signature under a known key."""
    key = RSAKey.generate_key(2048, parameters={"kid": kid}, private=True)
    return jwt.encode({"alg": "RS256", "kid": kid, **header}, dict(claims), key)
