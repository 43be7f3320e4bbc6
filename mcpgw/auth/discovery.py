"""Find an upstream's token endpoint from the upstream itself, as MCP clients do.

RFC 9728: the upstream publishes which authorization server issues its tokens at
`/.well-known/oauth-protected-resource[/<path>]` (also named by `resource_metadata` in its 401
challenge); RFC 8414: that server publishes its token endpoint at
`/.well-known/oauth-authorization-server[/<issuer path>]` (or OpenID Connect discovery). The
metadata's `issuer` must be exactly the server the resource named, or the answer is refused: a
mismatch is how a hijacked discovery shows itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx2


class DiscoveryError(Exception):
    """The token endpoint could not be found; the message says which step failed."""


@dataclass(frozen=True)
class Discovered:
    token_endpoint: str
    issuer: str
    resource: str | None


def _well_known(url: str, name: str) -> list[str]:
    parts = urlsplit(url)
    base, path = f"{parts.scheme}://{parts.netloc}", parts.path.rstrip("/")
    return [f"{base}/.well-known/{name}{path}", f"{base}/.well-known/{name}"] if path else [
        f"{base}/.well-known/{name}"]


async def _first_json(http: httpx2.AsyncClient, urls: list[str]) -> tuple[str, dict[str, Any]] | None:
    for url in dict.fromkeys(urls):
        try:
            response = await http.get(url, headers={"Accept": "application/json"})
        except httpx2.HTTPError:
            continue
        if response.status_code == 200:
            try:
                body = response.json()
            except ValueError:
                continue
            if isinstance(body, dict):
                return url, body
    return None


async def _challenge_metadata_url(http: httpx2.AsyncClient, resource_url: str) -> str | None:
    try:
        response = await http.post(resource_url, json={}, headers={"Accept": "application/json, text/event-stream"})
    except httpx2.HTTPError:
        return None
    match = re.search(r'resource_metadata="([^"]+)"', response.headers.get("www-authenticate", ""))
    return match.group(1) if match else None


async def discover(http: httpx2.AsyncClient, resource_url: str) -> Discovered:
    candidates = _well_known(resource_url, "oauth-protected-resource")
    found = await _first_json(http, candidates)
    if found is None:  # not at the well-known place: the upstream's 401 challenge may say where
        challenged = await _challenge_metadata_url(http, resource_url)
        found = await _first_json(http, [challenged]) if challenged else None
    if found is None:
        raise DiscoveryError(f"no protected-resource metadata (RFC 9728) at {candidates[0]}; set token_url")
    _, resource_meta = found
    servers = resource_meta.get("authorization_servers")
    if not isinstance(servers, list) or not servers or not isinstance(servers[0], str):
        raise DiscoveryError("the protected-resource metadata names no authorization_servers; set token_url")
    issuer = servers[0]
    parts = urlsplit(issuer)
    base, path = f"{parts.scheme}://{parts.netloc}", parts.path.rstrip("/")
    as_urls = [f"{base}/.well-known/oauth-authorization-server{path}",
               f"{base}/.well-known/openid-configuration{path}",
               f"{issuer.rstrip('/')}/.well-known/openid-configuration"]
    found = await _first_json(http, as_urls)
    if found is None:
        raise DiscoveryError(f"no authorization server metadata (RFC 8414) for {issuer}; set token_url")
    _, as_meta = found
    if str(as_meta.get("issuer", "")).rstrip("/") != issuer.rstrip("/"):
        raise DiscoveryError(f"the authorization server metadata names issuer {as_meta.get('issuer')!r}, "
                             f"not {issuer!r}; refused")
    token_endpoint = as_meta.get("token_endpoint")
    if not isinstance(token_endpoint, str) or not re.match(r"^https?://", token_endpoint):
        raise DiscoveryError(f"the metadata of {issuer} has no token_endpoint")
    resource = resource_meta.get("resource")
    return Discovered(token_endpoint, issuer, resource if isinstance(resource, str) else None)
