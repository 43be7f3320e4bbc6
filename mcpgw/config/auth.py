"""Typed configuration of identity: `[auth]` (who may call the gateway) and
`[servers.NAME.auth]` (what the gateway presents to an upstream).

The two are deliberately separate types: nothing here can express "pass the caller's token
through", because the MCP authorization spec forbids it (a token is for one audience only).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Asymmetric algorithms only: an HMAC algorithm would let anyone who knows the verification
# key (the public JWKS) mint tokens, which is the classic RS256/HS256 confusion.
ASYMMETRIC_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def http_url(value: str) -> str:
    """Validate a URL a config key holds: http or https, with a host."""
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
    return value


class StdioPrincipal(_Model):
    """`[auth.stdio]`: who a local stdio client is. It has no token; the operator vouches."""

    subject: str = Field(default="local", min_length=1)
    client_id: str | None = None
    scopes: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()


class AuthSettings(_Model):
    """`[auth]`: the gateway as an OAuth 2.1 resource server on its HTTP fronts (when `issuer`
    is set), and `[auth.stdio]`, the principal of a local stdio client (always usable)."""

    issuer: str | None = Field(
        default=None, description="the authorization server's issuer; tokens must carry exactly this `iss`"
    )
    audience: str | None = Field(
        default=None, description="this gateway's resource URL (RFC 8707/9728); tokens must name it in `aud`"
    )
    jwks_url: str | None = Field(default=None, description="JWKS of the issuer, for JWT access tokens")
    introspection_url: str | None = Field(default=None, description="RFC 7662 endpoint, for opaque tokens")
    client_id: str | None = Field(default=None, description="the gateway's client id at the introspection endpoint")
    client_secret: str | None = None
    authorization_servers: tuple[str, ...] = Field(
        default=(), description="advertised in the protected-resource metadata; default: [issuer]"
    )
    required_scopes: tuple[str, ...] = ()
    algorithms: tuple[str, ...] = Field(default=("RS256", "PS256", "ES256", "EdDSA"))
    leeway: float = Field(default=30.0, ge=0, le=300, description="seconds of clock skew tolerated")
    roles_claims: tuple[str, ...] = Field(
        default=("roles", "groups"), description="claims whose values become the principal's roles/groups"
    )
    jwks_cache_seconds: float = Field(default=300.0, gt=0)
    jwks_refresh_min_interval: float = Field(
        default=30.0, ge=0, description="an unknown `kid` refetches the JWKS at most this often"
    )
    introspection_cache_seconds: float = Field(default=60.0, ge=0)
    stdio: StdioPrincipal = StdioPrincipal()

    @field_validator("issuer", "audience", "jwks_url", "introspection_url")
    @classmethod
    def _urls(cls, value: str | None) -> str | None:
        return None if value is None else http_url(value)

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [alg for alg in value if alg not in ASYMMETRIC_ALGS]
        if bad:
            raise ValueError(f"unsupported or unsafe algorithm(s) {', '.join(bad)}; "
                             f"allowed: {', '.join(ASYMMETRIC_ALGS)} ('none' and HMAC are never accepted)")
        if not value:
            raise ValueError("at least one algorithm is needed")
        return value

    @property
    def enabled(self) -> bool:
        """True when HTTP callers must present a token (`issuer` is set)."""
        return self.issuer is not None

    @model_validator(mode="after")
    def _some_verifier(self) -> AuthSettings:
        inbound = (self.issuer, self.audience, self.jwks_url, self.introspection_url)
        if not any(inbound):
            return self  # only [auth.stdio]
        if not self.issuer or not self.audience:
            raise ValueError("an OAuth resource server needs both issuer and audience (this gateway's URL)")
        if not self.jwks_url and not self.introspection_url:
            raise ValueError("set jwks_url (JWT access tokens) and/or introspection_url (opaque tokens)")
        if self.introspection_url and not (self.client_id and self.client_secret):
            raise ValueError("introspection_url needs client_id and client_secret (RFC 7662 requires the "
                             "resource server to authenticate)")
        return self


# -- outbound: what the gateway presents to one upstream -----------------------------------------


class BearerAuth(_Model):
    type: Literal["bearer"]
    token: str = Field(min_length=1)


class HeaderAuth(_Model):
    type: Literal["header"]
    name: str = Field(min_length=1)
    value: str = Field(min_length=1)


class ApiKeyAuth(_Model):
    type: Literal["api_key"]
    name: str = Field(min_length=1)
    value: str = Field(min_length=1)
    in_: Literal["header", "query"] = Field(default="header", alias="in")


class BasicAuth(_Model):
    type: Literal["basic"]
    username: str
    password: str


class _TokenEndpoint(_Model):
    token_url: str | None = Field(
        default=None,
        description="default: discovered from the upstream's protected-resource metadata (RFC 9728) and its "
        "authorization server's metadata (RFC 8414)",
    )
    client_id: str = Field(min_length=1)
    client_secret: str | None = Field(default=None, min_length=1)
    client_auth: Literal["client_secret_basic", "client_secret_post", "private_key_jwt"] = "client_secret_basic"
    private_key: str | None = Field(
        default=None, repr=False, description="PEM private key for private_key_jwt (RFC 7523), e.g. \"${KEY_PEM}\""
    )
    signing_alg: str | None = Field(default=None, description="default: RS256, ES256/384/512 or EdDSA by key type")
    key_id: str | None = Field(default=None, description="`kid` of the assertion's header")
    assertion_audience: str | None = Field(
        default=None, description="`aud` of the assertion; default: the issuer when discovered, else token_url"
    )
    scopes: tuple[str, ...] = ()
    audience: str | None = Field(default=None, description="sent as `audience`; default: the upstream's URL")
    resource: str | None = Field(default=None, description="RFC 8707 `resource`; default: the upstream's URL")
    refresh_margin: float = Field(default=30.0, ge=0, description="renew a token this many seconds before expiry")

    @field_validator("token_url")
    @classmethod
    def _token_url(cls, value: str | None) -> str | None:
        return None if value is None else http_url(value)

    @model_validator(mode="after")
    def _credentials(self) -> _TokenEndpoint:
        if self.client_auth != "private_key_jwt":
            if not self.client_secret:
                raise ValueError(f"client_auth = {self.client_auth!r} needs client_secret")
            return self
        if not self.private_key:
            raise ValueError("client_auth = 'private_key_jwt' needs private_key (a PEM private key)")
        from mcpgw.auth.assertion import load_private_key

        _key, alg = load_private_key(self.private_key)
        if self.signing_alg is not None and self.signing_alg != alg and not (
                alg == "RS256" and self.signing_alg in ("RS384", "RS512", "PS256", "PS384", "PS512")):
            raise ValueError(f"signing_alg {self.signing_alg!r} does not fit this key (it signs {alg})")
        return self


class ClientCredentialsAuth(_TokenEndpoint):
    """The gateway's own identity at the upstream's authorization server."""

    type: Literal["oauth_client_credentials"]


class TokenExchangeAuth(_TokenEndpoint):
    """RFC 8693: trade the caller's token for one issued to this upstream, on the caller's behalf.

    Requests the gateway makes on its own account (listing tools, liveness probes) have no
    caller; they use a client-credentials token of the same client for the same audience.
    """

    type: Literal["token_exchange"]
    max_sessions: int = Field(default=256, ge=1, description="delegated upstream sessions kept open at once")
    idle_seconds: float = Field(default=300.0, gt=0, description="close a caller's upstream session when idle")


UpstreamAuth = Annotated[
    BearerAuth | HeaderAuth | ApiKeyAuth | BasicAuth | ClientCredentialsAuth | TokenExchangeAuth,
    Field(discriminator="type"),
]
AUTH_TYPES = ("bearer", "header", "api_key", "basic", "oauth_client_credentials", "token_exchange")
