"""Counters in this process: exact, cheap, and private to one gateway.

All buckets of a call are checked, then all consumed, with no `await` in between, so a call
that one bucket refuses takes nothing from the others and concurrent calls cannot overshoot.
Idle keys are swept when the table has doubled since the last sweep, so memory follows the
callers that are active within their windows, not every caller ever seen.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence

from mcpgw.limits.base import Bucket, Refusal

MIN_SWEEP = 4096


class LocalLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._logs: dict[str, tuple[deque[float], float]] = {}
        self._sweep_at = MIN_SWEEP

    async def acquire(self, buckets: Sequence[Bucket]) -> Refusal | None:
        return self.acquire_now(buckets)

    def acquire_now(self, buckets: Sequence[Bucket]) -> Refusal | None:
        now = self._clock()
        logs = self._logs
        for index, bucket in enumerate(buckets):
            entry = logs.get(bucket.key)
            if entry is None:
                continue
            times = entry[0]
            horizon = now - bucket.window
            while times and times[0] <= horizon:
                times.popleft()
            if len(times) >= bucket.limit:
                # Room comes back when the oldest of the last `limit` calls leaves the window.
                return Refusal(index, times[len(times) - bucket.limit] + bucket.window - now)
        for bucket in buckets:
            entry = logs.get(bucket.key)
            if entry is None:
                entry = logs[bucket.key] = (deque(), bucket.window)
            entry[0].append(now)
        if len(logs) > self._sweep_at:
            self._sweep(now)
        return None

    def _sweep(self, now: float) -> None:
        self._logs = {key: entry for key, entry in self._logs.items() if entry[0] and entry[0][-1] > now - entry[1]}
        self._sweep_at = max(MIN_SWEEP, 2 * len(self._logs))

    def __len__(self) -> int:
        return len(self._logs)

    async def aclose(self) -> None:
        return None
