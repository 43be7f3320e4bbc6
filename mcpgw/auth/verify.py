"""Turn a bearer token into a `Principal`, or say precisely why not.

JWT access tokens are checked locally against the issuer's JWKS; opaque tokens are asked about
at the RFC 7662 introspection endpoint. Both paths end in the same claim checks (`iss`, `aud`,
`exp`, `nbf`, `iat`), so a token is judged by the same rules whichever way it arrived.

Error descriptions are written for the caller's operator: they name the claim that failed and
the value expected, never the token itself.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx2
from joserfc import jwt
from joserfc.errors import JoseError

from mcpgw.auth.jwks import Jwks, JwksUnavailable
from mcpgw.config.auth import AuthSettings
from mcpgw.pipeline.step import Principal, Secret

log = logging.getLogger("mcpgw.auth")

_KTY = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}


@dataclass(frozen=True)
class AuthError(Exception):
    """A refused request: HTTP `status`, RFC 6750 `error` code, and a description safe to show."""

    status: int
    error: str
    description: str
    scope: str | None = None

    def __str__(self) -> str:
        return f"{self.error}: {self.description}"


def invalid(description: str) -> AuthError:
    return AuthError(401, "invalid_token", description)


def same_resource(a: str, b: str) -> bool:
    """RFC 8707 resources compared as URLs, a trailing slash aside."""
    return a.rstrip("/") == b.rstrip("/")


class TokenVerifier:
    """Verifies inbound tokens for one `[auth]` snapshot. Built once; shared by all requests."""

    def __init__(self, settings: AuthSettings, http: httpx2.AsyncClient) -> None:
        assert settings.enabled and settings.issuer and settings.audience
        self.settings = settings
        self.issuer: str = settings.issuer
        self.audience: str = settings.audience
        self._http = http
        self.jwks = (
            Jwks(settings.jwks_url, http, ttl=settings.jwks_cache_seconds,
                 min_interval=settings.jwks_refresh_min_interval)
            if settings.jwks_url else None
        )
        self._introspected: dict[bytes, tuple[float, dict[str, Any]]] = {}

    async def verify(self, token: str) -> Principal:
        if _looks_like_jwt(token) and self.jwks is not None:
            claims = await self._verify_jwt(token)
        elif self.settings.introspection_url:
            claims = await self._introspect(token)
        else:
            raise invalid("the token is not a JWT and no introspection endpoint is configured")
        self._check_claims(claims)
        return self._principal(claims, token)

    # -- JWT -------------------------------------------------------------------------------------

    async def _verify_jwt(self, token: str) -> dict[str, Any]:
        assert self.jwks is not None
        header = _jwt_header(token)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.settings.algorithms:
            raise invalid(f"token algorithm {alg!r} is not accepted (allowed: {', '.join(self.settings.algorithms)})")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise invalid("token header 'kid' must be a string")
        try:
            key = await self.jwks.key_for(kid, _KTY[alg[:2]])
        except JwksUnavailable as exc:
            log.error("auth: %s", exc)
            raise AuthError(503, "temporarily_unavailable", "the gateway cannot reach its identity provider's "
                            "keys right now; try again shortly") from None
        if key is None:
            raise invalid(f"token signing key {kid!r} is not among the issuer's published keys")
        try:
            decoded = jwt.decode(token, key, algorithms=[alg])
        except JoseError as exc:
            raise invalid(f"token signature or format is invalid ({exc.error})") from None
        claims = decoded.claims
        if not isinstance(claims, dict):
            raise invalid("token claims are not a JSON object")
        return claims

    # -- introspection ---------------------------------------------------------------------------

    async def _introspect(self, token: str) -> dict[str, Any]:
        settings = self.settings
        assert settings.introspection_url and settings.client_id and settings.client_secret
        key = hashlib.sha256(token.encode()).digest()
        now = time.time()
        cached = self._introspected.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            response = await self._http.post(
                settings.introspection_url,
                data={"token": token, "token_type_hint": "access_token"},
                auth=(settings.client_id, settings.client_secret),
                headers={"Accept": "application/json"},
            )
            response.raise_for_status()
            claims = response.json()
        except (httpx2.HTTPError, ValueError) as exc:
            log.error("auth: token introspection at %s failed: %s", settings.introspection_url, type(exc).__name__)
            raise AuthError(503, "temporarily_unavailable", "the gateway cannot reach its token introspection "
                            "endpoint right now; try again shortly") from None
        if not isinstance(claims, dict) or claims.get("active") is not True:
            raise invalid("the token is not active (introspection says it is unknown, expired or revoked)")
        if settings.introspection_cache_seconds > 0:
            until = now + settings.introspection_cache_seconds
            exp = claims.get("exp")
            if isinstance(exp, int | float):
                until = min(until, float(exp))
            if len(self._introspected) > 10_000:
                self._introspected.clear()
            self._introspected[key] = (until, claims)
        return claims

    # -- claims ----------------------------------------------------------------------------------

    def _check_claims(self, claims: dict[str, Any]) -> None:
        now = time.time()
        leeway = self.settings.leeway
        if claims.get("iss") != self.issuer:
            raise invalid(f"token issuer {claims.get('iss')!r} is not the configured issuer {self.issuer!r}")
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if not any(isinstance(a, str) and same_resource(a, self.audience) for a in audiences):
            raise invalid(f"token audience {aud!r} does not include this gateway ({self.audience}); "
                          "it was issued for another resource")
        exp = claims.get("exp")
        if not isinstance(exp, int | float):
            raise invalid("token has no expiry ('exp')")
        if exp + leeway < now:
            raise invalid(f"token expired {int(now - exp)}s ago")
        nbf = claims.get("nbf")
        if nbf is not None and (not isinstance(nbf, int | float) or nbf - leeway > now):
            raise invalid("token is not valid yet ('nbf' is in the future)")
        iat = claims.get("iat")
        if iat is not None and (not isinstance(iat, int | float) or iat - leeway > now):
            raise invalid("token was issued in the future ('iat')")
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise invalid("token has no subject ('sub')")

    def _principal(self, claims: dict[str, Any], token: str) -> Principal:
        client = claims.get("client_id") or claims.get("azp")
        roles: list[str] = []
        for name in self.settings.roles_claims:
            roles += _strings(claims.get(name))
        return Principal(
            subject=claims["sub"],
            client_id=client if isinstance(client, str) else None,
            scopes=tuple(_strings(claims.get("scope", claims.get("scp")))),
            roles=tuple(dict.fromkeys(roles)),
            claims=claims,
            expires_at=int(claims["exp"]),
            issuer=self.issuer,
            token=Secret(token),
        )


def _strings(value: Any) -> list[str]:
    """A claim holding several names: a space-separated string (OAuth `scope`) or a JSON list."""
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def _looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2


def _jwt_header(token: str) -> dict[str, Any]:
    segment = token.split(".", 1)[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (binascii.Error, ValueError):
        raise invalid("token header is not valid base64url JSON") from None
    if not isinstance(header, dict):
        raise invalid("token header is not a JSON object")
    return header
