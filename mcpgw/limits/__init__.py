"""Rate-limit counters: where "how many calls in the last window" is kept, behind one interface.

Below the pipeline's limit stage (which decides *which* limits a call counts against and builds
their keys) and above the storage: a `Limiter` takes the buckets of one call and either admits
it, consuming one unit from every bucket, or refuses it, consuming nothing. Two limiters: in this
process (`LocalLimiter`, the default) and in Redis (`RedisLimiter`, shared by every gateway
replica), the latter wrapped by `Guarded`, which applies `[limits] on_unavailable` when Redis
cannot be reached. This package knows nothing of MCP, principals or policy files.
"""

from mcpgw.limits.base import Bucket, Limiter, LimiterUnavailable, Refusal
from mcpgw.limits.build import build_limiter
from mcpgw.limits.guarded import Guarded
from mcpgw.limits.local import LocalLimiter
from mcpgw.limits.redis_limiter import RedisLimiter

__all__ = [
    "Bucket",
    "Guarded",
    "Limiter",
    "LimiterUnavailable",
    "LocalLimiter",
    "RedisLimiter",
    "Refusal",
    "build_limiter",
]
