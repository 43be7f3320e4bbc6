"""What happens while the shared counters cannot be reached: `[limits] on_unavailable`.

`fail-closed` (the default) refuses every call that a limit applies to: a limit that cannot be
checked is not enforced by letting everything through. `local` counts in this process meanwhile
(each replica then allows the full rate on its own). Either way the outage is logged as an
ERROR once when it starts and once more when Redis is back, not once per call; while it lasts,
Redis is tried again every `retry_interval` seconds, and calls in between do not wait for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from mcpgw.limits.base import Bucket, Limiter, LimiterUnavailable, Refusal

log = logging.getLogger("mcpgw.limits")


class Guarded:
    def __init__(self, shared: Limiter, *, fallback: Limiter | None, where: str, retry_interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._shared = shared
        self._fallback = fallback
        self._where = where
        self._retry_interval = retry_interval
        self._clock = clock
        self._retry_at: float | None = None
        self.down = False

    async def acquire(self, buckets: Sequence[Bucket]) -> Refusal | None:
        if self._retry_at is not None and self._clock() < self._retry_at:
            return await self._meanwhile(buckets, None)
        try:
            refusal = await self._shared.acquire(buckets)
        except LimiterUnavailable as exc:
            self._retry_at = self._clock() + self._retry_interval
            return await self._meanwhile(buckets, exc)
        self._retry_at = None
        if self.down:
            self.down = False
            log.error("rate limits: %s is reachable again; limits are shared across replicas again", self._where)
        return refusal

    async def _meanwhile(self, buckets: Sequence[Bucket], exc: LimiterUnavailable | None) -> Refusal | None:
        if exc is not None and not self.down:
            self.down = True
            if self._fallback is None:
                log.error("rate limits: cannot reach %s; calls subject to a rate limit are REFUSED until it is "
                          "back ([limits] on_unavailable = \"fail-closed\")", exc)
            else:
                log.error("rate limits: cannot reach %s; counting in this process until it is back, so each "
                          "replica allows the full rate ([limits] on_unavailable = \"local\")", exc)
        if self._fallback is None:
            raise exc or LimiterUnavailable(f"{self._where} is unreachable (retrying)")
        return await self._fallback.acquire(buckets)

    async def aclose(self) -> None:
        await self._shared.aclose()
        if self._fallback is not None:
            await self._fallback.aclose()
