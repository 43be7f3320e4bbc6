"""Counters in Redis, shared by every gateway replica that points at the same server.

One server-side Lua script checks every bucket of a call and, only if all have room, records the
call in all of them: atomic across replicas (no read-then-write race) and all-or-nothing across
the limits of one call. Each bucket is a sorted set of call times (the sliding window log); the
time is Redis's own (`TIME`), so replicas with skewed clocks agree. Keys expire one window after
their last call, so Redis holds only active callers.

The script is sent once and then called by its SHA (`EVALSHA`); a server that lost it (restart,
`SCRIPT FLUSH`, a failover) answers NOSCRIPT and it is loaded again. Commands are bounded by
`timeout` and never retried, so a hung Redis costs a call at most about twice that.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from typing import Any, cast

import anyio
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError
from redis.retry import Retry

from mcpgw.limits.base import Bucket, LimiterUnavailable, Refusal

# KEYS: one sorted set per bucket. ARGV[1]: a member unique to this call; ARGV[2]: "" (use the
# server's clock) or a time in microseconds (tests); then per bucket: limit, window (µs).
# Returns {0, 0} when admitted, else {1-based index of the first full bucket, µs until it has room}.
SCRIPT = """
local now
if ARGV[2] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[2])
end
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[2 * i + 1])
  local window = tonumber(ARGV[2 * i + 2])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local count = redis.call('ZCARD', key)
  if count >= limit then
    local edge = redis.call('ZRANGE', key, count - limit, count - limit, 'WITHSCORES')
    return {i, tonumber(edge[2]) + window - now}
  end
end
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, ARGV[1])
  redis.call('PEXPIRE', key, math.ceil(tonumber(ARGV[2 * i + 2]) / 1000))
end
return {0, 0}
"""
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()


class RedisLimiter:
    """`clock` is for tests only: it replaces Redis's `TIME` so a window's edge can be reached
    without waiting. `display_url` names the server in errors (it must not hold a password)."""

    def __init__(self, url: str, *, display_url: str, timeout: float = 0.5,
                 clock: Callable[[], float] | None = None) -> None:
        self._client: Redis = Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self._timeout = timeout
        self._clock = clock
        self.display_url = display_url

    async def acquire(self, buckets: Sequence[Bucket]) -> Refusal | None:
        if not buckets:
            return None
        now = "" if self._clock is None else str(round(self._clock() * 1_000_000))
        args: list[Any] = [os.urandom(8).hex(), now]
        for bucket in buckets:
            args += [bucket.limit, round(bucket.window * 1_000_000)]
        keys = [bucket.key for bucket in buckets]
        try:
            with anyio.fail_after(2 * self._timeout):  # a connection, then one command
                reply = await self._run(keys, args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise LimiterUnavailable(f"Redis at {self.display_url}: {_describe(exc)}") from None
        index, retry_us = int(reply[0]), int(reply[1])
        return None if index == 0 else Refusal(index - 1, retry_us / 1_000_000)

    async def _run(self, keys: list[str], args: list[Any]) -> list[Any]:
        client = self._client
        try:
            return cast(list[Any], await cast(Any, client.evalsha(SCRIPT_SHA, len(keys), *keys, *args)))
        except NoScriptError:
            await cast(Any, client.script_load(SCRIPT))
            return cast(list[Any], await cast(Any, client.evalsha(SCRIPT_SHA, len(keys), *keys, *args)))

    async def aclose(self) -> None:
        await self._client.aclose()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    detail = str(exc).strip()
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
