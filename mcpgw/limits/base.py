"""The limiter interface and the values that cross it.

The algorithm is a sliding window log: a bucket admits a call when fewer than `limit` calls were
admitted in the `window` seconds before it. "60/minute" then means exactly what it says (never
more than 60 in any minute), which is what an upstream's own quota needs, unlike a token bucket
that lets a full burst and the refill through in the same minute. The price is one timestamp
per admitted call per bucket, held for one window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Bucket:
    """One counter a call is counted against: at most `limit` calls per `window` seconds under `key`."""

    key: str
    limit: int
    window: float


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a call was refused: `index` of the first full bucket, and seconds until it has room."""

    index: int
    retry_after: float


class LimiterUnavailable(Exception):
    """The counters cannot be reached (Redis down, hung or refusing us). The message is for the
    gateway's log: it names the store (never its password) and the failure."""


class Limiter(Protocol):
    async def acquire(self, buckets: Sequence[Bucket]) -> Refusal | None:
        """Admit one call against every bucket, or none: when any bucket is full nothing is
        consumed and the refusal names that bucket. Raises `LimiterUnavailable`."""
        ...

    async def aclose(self) -> None:
        """Release connections (a no-op in process)."""
        ...
