"""The limiter a `[limits]` table asks for."""

from __future__ import annotations

from mcpgw.config.limits import LimitsSettings
from mcpgw.limits.base import Limiter
from mcpgw.limits.guarded import Guarded
from mcpgw.limits.local import LocalLimiter
from mcpgw.limits.redis_limiter import RedisLimiter


def build_limiter(settings: LimitsSettings) -> Limiter:
    if settings.url is None:
        return LocalLimiter()
    where = settings.display_url or "Redis"
    shared = RedisLimiter(settings.url, display_url=where, timeout=settings.timeout)
    fallback = LocalLimiter() if settings.on_unavailable == "local" else None
    return Guarded(shared, fallback=fallback, where=where, retry_interval=settings.retry_interval)
