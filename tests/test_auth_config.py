"""`[auth]` and `[servers.NAME.auth]`: what is accepted, and the precise errors for what is not."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from mcpgw.config import ConfigError, parse_config
from mcpgw.config.auth import BearerAuth, TokenExchangeAuth


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(text), Path("/etc/mcpgw/servers.toml"), env or {})
    return info.value.render().splitlines()


def test_resource_server_and_upstream_credentials_parse() -> None:
    config = parse_config(textwrap.dedent("""
        [auth]
        issuer = "https://idp.example.com/as"
        audience = "https://gw.example.com/mcp"
        jwks_url = "https://idp.example.com/jwks"
        required_scopes = ["mcp"]

        [auth.stdio]
        subject = "alice"
        roles = ["dev"]

        [servers.crm]
        kind = "http"
        url = "https://crm.example.com/mcp"
        auth = { type = "bearer", token = "${CRM_TOKEN}" }

        [servers.hr]
        kind = "http"
        url = "https://hr.example.com/mcp"
        [servers.hr.auth]
        type = "token_exchange"
        token_url = "https://idp.example.com/token"
        client_id = "gw"
        client_secret = "${GW_SECRET}"
        scopes = ["hr.read"]
        """), Path("/etc/mcpgw/servers.toml"), {"CRM_TOKEN": "t0k", "GW_SECRET": "s3c"})
    assert config.auth.enabled and config.auth.stdio.subject == "alice"
    crm, hr = config.servers["crm"], config.servers["hr"]
    assert crm.kind == "http" and isinstance(crm.auth, BearerAuth) and crm.auth.token == "t0k"
    assert hr.kind == "http" and isinstance(hr.auth, TokenExchangeAuth) and hr.auth.scopes == ("hr.read",)


def test_stdio_only_auth_table_needs_no_issuer() -> None:
    config = parse_config('[auth.stdio]\nsubject = "bob"\n', Path("/x/servers.toml"), {})
    assert not config.auth.enabled and config.auth.stdio.subject == "bob"


@pytest.mark.parametrize(("body", "expected"), [
    ('[auth]\nissuer = "https://idp/as"\njwks_url = "https://idp/jwks"\n',
     "servers.toml:1: auth: an OAuth resource server needs both issuer and audience"),
    ('[auth]\nissuer = "https://idp/as"\naudience = "https://gw/mcp"\n',
     "servers.toml:1: auth: set jwks_url (JWT access tokens) and/or introspection_url"),
    ('[auth]\nissuer = "https://idp/as"\naudience = "https://gw/mcp"\nintrospection_url = "https://idp/i"\n',
     "auth: introspection_url needs client_id and client_secret"),
    ('[auth]\nissuer = "https://idp/as"\naudience = "https://gw/mcp"\njwks_url = "https://idp/j"\n'
     'algorithms = ["RS256", "HS256", "none"]\n',
     "servers.toml:5: auth.algorithms: unsupported or unsafe algorithm(s) HS256, none"),
    ('[servers.a]\nkind = "stdio"\ncommand = "x"\nauth = { type = "bearer", token = "t" }\n',
     "servers.toml:4: servers.a.auth: a stdio upstream gets its secrets through `env`"),
    ('[servers.a]\nkind = "http"\nurl = "http://h/mcp"\nauth = { type = "passthrough" }\n',
     "servers.a.auth.type: passing the caller's token upstream is not offered"),
    ('[servers.a]\nkind = "http"\nurl = "http://h/mcp"\nauth = { type = "kerberos" }\n',
     "servers.a.auth.type: unknown auth type 'kerberos'; expected one of bearer, header"),
    ('[servers.a]\nkind = "http"\nurl = "http://h/mcp"\nauth = { type = "bearer" }\n',
     "servers.toml:4: servers.a.auth.token: missing required key"),
    ('[servers.a]\nkind = "sse"\nurl = "http://h/sse"\n[servers.a.auth]\ntype = "oauth_client_credentials"\n'
     'token_url = "ftp://idp/token"\nclient_id = "gw"\nclient_secret = "s"\n',
     "servers.toml:6: servers.a.auth.token_url: must be an http:// or https:// URL"),
])
def test_auth_mistakes_are_named(body: str, expected: str) -> None:
    out = problems(body)
    assert any(expected in line for line in out), out


def test_a_secret_is_never_echoed_in_a_config_error() -> None:
    out = problems('[servers.a]\nkind = "http"\nurl = "http://h/mcp"\n'
                   'auth = { type = "bearer", token = "${T}", extra = "x" }\n', {"T": "very-secret-value"})
    assert out and not any("very-secret-value" in line for line in out)


def _pem(kind: str, private: bool = True) -> str:
    from joserfc.jwk import ECKey, RSAKey

    key = ECKey.generate_key("P-256", private=True) if kind == "ec" else RSAKey.generate_key(2048, private=True)
    return key.as_pem(private=private).decode()


def _cc_config(extra: str, env: dict[str, str]) -> list[str] | object:
    body = ('[servers.a]\nkind = "http"\nurl = "http://h/mcp"\n[servers.a.auth]\ntype = "oauth_client_credentials"\n'
            'client_id = "gw"\n' + extra)
    try:
        return parse_config(body, Path("/etc/mcpgw/servers.toml"), env)
    except ConfigError as exc:
        return exc.render().splitlines()


def test_private_key_jwt_takes_a_pem_key_from_the_environment() -> None:
    pem = _pem("ec")
    config = _cc_config('client_auth = "private_key_jwt"\nprivate_key = "${KEY}"\n', {"KEY": pem})
    assert not isinstance(config, list), config
    for extra, env, expected in [
        ('client_auth = "private_key_jwt"\n', {}, "needs private_key (a PEM private key)"),
        ('client_auth = "private_key_jwt"\nprivate_key = "${KEY}"\n', {"KEY": _pem("ec", private=False)},
         "private_key holds a public key"),
        ('client_auth = "private_key_jwt"\nprivate_key = "${KEY}"\n', {"KEY": "-----BEGIN nonsense"},
         "private_key is not a PEM private key"),
        ('client_auth = "private_key_jwt"\nprivate_key = "${KEY}"\nsigning_alg = "RS256"\n', {"KEY": pem},
         "signing_alg 'RS256' does not fit this key (it signs ES256)"),
        ("", {}, "client_auth = 'client_secret_basic' needs client_secret"),
    ]:
        out = _cc_config(extra, env)
        assert isinstance(out, list) and any(expected in line for line in out), (expected, out)
        secret = env.get("KEY", "")[30:60]
        assert not secret or not any(secret in line for line in out), "the key was echoed"
