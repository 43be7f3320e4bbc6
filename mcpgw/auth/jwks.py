"""The issuer's signing keys, fetched once and kept, refetched only when it can matter.

A token signed with a key we have not seen may mean the issuer rotated its keys, so an unknown
`kid` triggers a refetch — but at most once per `min_interval`, or anyone could make the
gateway hammer the identity provider by sending tokens with random `kid`s.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
import httpx2
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

log = logging.getLogger("mcpgw.auth")


class JwksUnavailable(Exception):
    """The JWKS could not be fetched and no earlier copy is at hand."""


class Jwks:
    def __init__(self, url: str, http: httpx2.AsyncClient, *, ttl: float, min_interval: float) -> None:
        self.url = url
        self._http = http
        self._ttl = ttl
        self._min_interval = min_interval
        self._keys: KeySet | None = None
        self._fetched_at = -float("inf")
        self._lock = anyio.Lock()
        self.fetches = 0

    async def key_for(self, kid: str | None, kty: str) -> Any | None:
        """The key that should have signed a token with this header, or None if there is none."""
        now = time.monotonic()
        if self._keys is None or now - self._fetched_at > self._ttl:
            await self._refresh(now, force=self._keys is None)
        key = self._find(kid, kty)
        if key is None and time.monotonic() - self._fetched_at >= self._min_interval:
            await self._refresh(time.monotonic(), force=False)
            key = self._find(kid, kty)
        return key

    def _find(self, kid: str | None, kty: str) -> Any | None:
        if self._keys is None:
            return None
        candidates = [k for k in self._keys.keys if k.key_type == kty]
        if kid is not None:
            return next((k for k in candidates if k.kid == kid), None)
        # Without a `kid` the choice is only unambiguous when the issuer publishes one such key.
        return candidates[0] if len(candidates) == 1 else None

    async def _refresh(self, asked_at: float, *, force: bool) -> None:
        async with self._lock:
            if not force and self._fetched_at >= asked_at - 1e-3:
                return  # another request refreshed while this one waited for the lock
            if self._keys is not None and not force and time.monotonic() - self._fetched_at < self._min_interval:
                return
            try:
                self.fetches += 1
                response = await self._http.get(self.url, headers={"Accept": "application/json"})
                response.raise_for_status()
                keys = KeySet.import_key_set(response.json())
            except (httpx2.HTTPError, ValueError, JoseError) as exc:
                self._fetched_at = time.monotonic()  # a failing IdP is rate limited too
                if self._keys is None:
                    raise JwksUnavailable(f"cannot fetch the issuer's keys from {self.url}: "
                                          f"{type(exc).__name__}") from None
                log.warning("auth: refreshing the JWKS from %s failed (%s); keeping the keys we have",
                            self.url, type(exc).__name__)
                return
            self._keys, self._fetched_at = keys, time.monotonic()
